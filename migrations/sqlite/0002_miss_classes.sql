-- Misses classified as cold (key never stored) or evicted (stored once, then evicted), so a
-- team can tell whether its cache is too small. Keep in lockstep with migrations/postgres.

-- Compact record of evicted keys: 64 bits of the key's blake3, not the key itself.
CREATE TABLE evicted_keys (
    namespace  TEXT   NOT NULL,
    key_hash   BIGINT NOT NULL,
    evicted_at BIGINT NOT NULL,
    PRIMARY KEY (namespace, key_hash)
);
CREATE INDEX evicted_keys_evicted_at ON evicted_keys (evicted_at);

-- Misses whose key is in evicted_keys; cold misses are misses - misses_evicted.
ALTER TABLE stats_hourly ADD COLUMN misses_evicted BIGINT NOT NULL DEFAULT 0;
