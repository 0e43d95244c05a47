-- What a blob's content means, where hearth can read it (src/meaning): the hex identity of an
-- sccache entry's members, whatever their order. NULL: the bytes are all there is to compare.
-- A key rewritten with other bytes of the same meaning counts as same_meaning_writes, not as a
-- conflicting write (a deterministic build whose tool writes members in hash-map order).
ALTER TABLE blobs ADD COLUMN meaning TEXT;
ALTER TABLE stats_hourly ADD COLUMN same_meaning_writes BIGINT NOT NULL DEFAULT 0;
