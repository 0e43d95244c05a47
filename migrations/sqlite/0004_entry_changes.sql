-- Keys whose content changed on purpose (rewritten with other content, deleted, their
-- namespace or writer's entries removed), so that every server sharing this database drops
-- its in-memory copy of them within about a second (src/feed.rs) and can trust the rest for
-- long. Evictions are not logged: an evicted key's blob outlives it by the GC grace period,
-- so a copy served meanwhile is still exactly what was stored. A NULL key stands for every key
-- of the namespace, a NULL namespace for every namespace. Rows are pruned after minutes.
-- Keep in lockstep with the other migrations folder.
CREATE TABLE entry_changes (
    changed_at BIGINT NOT NULL, -- the database's clock, milliseconds since the Unix epoch
    namespace  TEXT,
    key        TEXT
);
CREATE INDEX entry_changes_changed_at ON entry_changes (changed_at);

-- Rewrites come through the batched PUT path; a trigger logs them at no cost to the common
-- write of a new key.
CREATE TRIGGER entries_rewritten AFTER UPDATE OF blob_hash ON entries
WHEN OLD.blob_hash <> NEW.blob_hash
BEGIN
    INSERT INTO entry_changes (changed_at, namespace, key)
    VALUES (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER), NEW.namespace, NEW.key);
END;
