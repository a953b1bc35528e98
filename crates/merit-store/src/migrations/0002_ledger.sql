CREATE TABLE ledger_head (
    id BIGINT PRIMARY KEY,
    size BIGINT NOT NULL
);
INSERT INTO ledger_head (id, size) VALUES (1, 0);
CREATE TABLE ledger_entries (
    idx BIGINT PRIMARY KEY,
    leaf BLOB NOT NULL,
    subject TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX ledger_entries_by_subject ON ledger_entries(subject);
CREATE TABLE ledger_nodes (
    level BIGINT NOT NULL,
    idx BIGINT NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)
);
