-- hearth schema, version 1 (SQLite). Keep in lockstep with migrations/postgres: a test
-- compares the migrated schemas column by column. Times are Unix seconds.

-- A team's or project's cache: owns its keys, quota, tokens and statistics.
CREATE TABLE namespaces (
    name           TEXT    NOT NULL PRIMARY KEY,
    quota_bytes    BIGINT,
    anonymous_read BOOLEAN NOT NULL DEFAULT FALSE,
    created_at     BIGINT  NOT NULL
);

-- Access tokens: only a hash of the secret is ever stored. namespace NULL = all namespaces.
CREATE TABLE tokens (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace    TEXT REFERENCES namespaces (name) ON DELETE CASCADE,
    scope        TEXT   NOT NULL CHECK (scope IN ('read', 'write', 'admin')),
    secret_hash  TEXT   NOT NULL UNIQUE,
    label        TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at   BIGINT
);

-- Content-addressed blobs. state: pending (being uploaded) -> valid -> deleting (GC).
CREATE TABLE blobs (
    hash               TEXT   NOT NULL PRIMARY KEY,
    raw_size           BIGINT NOT NULL,
    stored_size        BIGINT NOT NULL,
    encoding           TEXT   NOT NULL CHECK (encoding IN ('raw', 'zstd')),
    state              TEXT   NOT NULL CHECK (state IN ('pending', 'valid', 'deleting')),
    created_at         BIGINT NOT NULL,
    last_referenced_at BIGINT NOT NULL
);
CREATE INDEX blobs_state_referenced ON blobs (state, last_referenced_at);

-- (namespace, key) -> blob. last_access_at and hit_count are written in batches.
CREATE TABLE entries (
    namespace       TEXT   NOT NULL REFERENCES namespaces (name) ON DELETE CASCADE,
    key             TEXT   NOT NULL,
    blob_hash       TEXT   NOT NULL REFERENCES blobs (hash),
    size            BIGINT NOT NULL,
    writer_token_id BIGINT REFERENCES tokens (id) ON DELETE SET NULL,
    created_at      BIGINT NOT NULL,
    last_access_at  BIGINT NOT NULL,
    hit_count       BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (namespace, key)
);
CREATE INDEX entries_blob_hash ON entries (blob_hash);
CREATE INDEX entries_last_access ON entries (last_access_at);
CREATE INDEX entries_writer ON entries (writer_token_id);

-- Per namespace, hour and token label ('' = anonymous); upserted by the stats flusher.
CREATE TABLE stats_hourly (
    namespace          TEXT   NOT NULL,
    hour               BIGINT NOT NULL,
    token_label        TEXT   NOT NULL DEFAULT '',
    hits               BIGINT NOT NULL DEFAULT 0,
    misses             BIGINT NOT NULL DEFAULT 0,
    writes             BIGINT NOT NULL DEFAULT 0,
    bytes_served       BIGINT NOT NULL DEFAULT 0,
    bytes_received     BIGINT NOT NULL DEFAULT 0,
    errors             BIGINT NOT NULL DEFAULT 0,
    conflicting_writes BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (namespace, hour, token_label)
);
CREATE INDEX stats_hourly_hour ON stats_hourly (hour);
