ALTER TABLE users ADD COLUMN credit_allowance_micros BIGINT NOT NULL DEFAULT 0;
CREATE TABLE credit_holds (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT NOT NULL REFERENCES users(id),
    micros BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX credit_holds_user ON credit_holds (user_id);
