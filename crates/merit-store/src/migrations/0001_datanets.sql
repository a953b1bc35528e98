CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    is_admin BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);
CREATE TABLE tokens (
    hash TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users(id),
    created_at BIGINT NOT NULL
);
CREATE TABLE datanets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    owner_id BIGINT NOT NULL REFERENCES users(id),
    kind TEXT NOT NULL,
    policy TEXT NOT NULL,
    policy_hash TEXT NOT NULL,
    summary TEXT NOT NULL,
    description TEXT NOT NULL,
    tags TEXT NOT NULL,
    published BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE members (
    datanet_id BIGINT NOT NULL REFERENCES datanets(id),
    user_id BIGINT NOT NULL REFERENCES users(id),
    role TEXT NOT NULL,
    PRIMARY KEY (datanet_id, user_id)
);
CREATE TABLE contributions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    datanet_id BIGINT NOT NULL REFERENCES datanets(id),
    contributor_id BIGINT NOT NULL REFERENCES users(id),
    filename TEXT NOT NULL,
    format TEXT,
    bytes BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    status TEXT NOT NULL,
    reasons TEXT NOT NULL,
    score DOUBLE PRECISION NOT NULL,
    row_count BIGINT NOT NULL,
    submitted_at BIGINT NOT NULL,
    decided_at BIGINT,
    reviewer_id BIGINT REFERENCES users(id),
    review_reason TEXT,
    version BIGINT
);
CREATE INDEX contributions_by_datanet ON contributions(datanet_id, status);
CREATE INDEX contributions_by_contributor ON contributions(contributor_id);
CREATE TABLE rows (
    datanet_id BIGINT NOT NULL REFERENCES datanets(id),
    idx BIGINT NOT NULL,
    contribution_id BIGINT NOT NULL REFERENCES contributions(id),
    content TEXT NOT NULL,
    text_hash TEXT NOT NULL,
    minhash BLOB NOT NULL,
    score DOUBLE PRECISION NOT NULL,
    near_duplicate BIGINT NOT NULL,
    PRIMARY KEY (datanet_id, idx)
);
CREATE INDEX rows_by_hash ON rows(datanet_id, text_hash);
CREATE TABLE row_bands (
    datanet_id BIGINT NOT NULL,
    band_key BIGINT NOT NULL,
    idx BIGINT NOT NULL
);
CREATE INDEX row_bands_by_key ON row_bands(datanet_id, band_key);
CREATE TABLE versions (
    datanet_id BIGINT NOT NULL REFERENCES datanets(id),
    number BIGINT NOT NULL,
    row_count BIGINT NOT NULL,
    byte_count BIGINT NOT NULL,
    root TEXT NOT NULL,
    frontier TEXT NOT NULL,
    contribution_id BIGINT NOT NULL REFERENCES contributions(id),
    created_at BIGINT NOT NULL,
    PRIMARY KEY (datanet_id, number)
);
CREATE TABLE usage (
    scope TEXT NOT NULL,
    day BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    files BIGINT NOT NULL,
    PRIMARY KEY (scope, day)
);
