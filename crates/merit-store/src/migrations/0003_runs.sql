CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    owner_id BIGINT NOT NULL REFERENCES users(id),
    status TEXT NOT NULL,
    config TEXT NOT NULL,
    worker TEXT,
    stop_requested BIGINT NOT NULL DEFAULT 0,
    summary TEXT,
    error TEXT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT
);
CREATE INDEX runs_by_status ON runs(status, id);
CREATE INDEX runs_by_owner ON runs(owner_id, id);
