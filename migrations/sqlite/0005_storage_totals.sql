-- Storage totals kept as the data changes, so that /metrics, `hearth stats`, the admin API and
-- garbage collection read them in O(namespaces) instead of scanning entries and blobs (at 10^6
-- entries such a scan took 6 s on SQLite). Triggers keep them exact in the transaction of every
-- change, whatever statement makes it. Keep in lockstep with migrations/postgres (there the
-- triggers are PL/pgSQL functions that spread the totals over stripes).

-- Entries pointing at the blob, in every namespace: 0 = unreferenced, for garbage collection.
ALTER TABLE blobs ADD COLUMN refs BIGINT NOT NULL DEFAULT 0;

-- Summed over stripes on read (PostgreSQL writes each connection's changes to a stripe of its
-- own, so that concurrent uploads never queue on one row; SQLite has one writer: stripe 0).
-- namespace '' holds what belongs to the whole store: every blob row (blobs, physical_bytes)
-- and the blobs some entry points at (unique_bytes, compressed_bytes). A namespace's row holds
-- its entries and the distinct blobs they point at; its physical_bytes stay 0.
CREATE TABLE storage_totals (
    namespace        TEXT   NOT NULL,
    stripe           BIGINT NOT NULL,
    entries          BIGINT NOT NULL DEFAULT 0,
    logical_bytes    BIGINT NOT NULL DEFAULT 0,
    blobs            BIGINT NOT NULL DEFAULT 0,
    unique_bytes     BIGINT NOT NULL DEFAULT 0,
    compressed_bytes BIGINT NOT NULL DEFAULT 0,
    physical_bytes   BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (namespace, stripe)
);

-- "Does the namespace hold another entry with this blob?" is an index seek (the old index on
-- blob_hash alone served forget_blob, and still does through the prefix).
DROP INDEX entries_blob_hash;
CREATE INDEX entries_blob_namespace ON entries (blob_hash, namespace);
-- Eviction pages through each namespace in least-recently-used order, continuing after the
-- last row it saw (keyset); the index on last_access_at alone made every page a sort.
DROP INDEX entries_last_access;
CREATE INDEX entries_lru ON entries (namespace, last_access_at, key);
-- Garbage collection looks at unreferenced blobs only, however many blobs are stored.
DROP INDEX blobs_state_referenced;
CREATE INDEX blobs_unreferenced ON blobs (state, last_referenced_at) WHERE refs = 0;

-- What is stored now.
UPDATE blobs SET refs = (SELECT COUNT(*) FROM entries WHERE entries.blob_hash = blobs.hash);
INSERT INTO storage_totals (namespace, stripe, entries, logical_bytes, blobs, unique_bytes, compressed_bytes)
SELECT namespace, 0, SUM(entries), SUM(logical_bytes), SUM(blobs), SUM(unique_bytes), SUM(compressed_bytes) FROM (
    SELECT namespace, COUNT(*) AS entries, SUM(size) AS logical_bytes, 0 AS blobs, 0 AS unique_bytes,
           0 AS compressed_bytes
    FROM entries GROUP BY namespace
    UNION ALL
    SELECT d.namespace, 0, 0, COUNT(*), SUM(b.raw_size), SUM(b.stored_size)
    FROM (SELECT DISTINCT namespace, blob_hash FROM entries) d JOIN blobs b ON b.hash = d.blob_hash
    GROUP BY d.namespace
) GROUP BY namespace;
INSERT INTO storage_totals (namespace, stripe, blobs, unique_bytes, compressed_bytes, physical_bytes)
SELECT '', 0, COUNT(*), COALESCE(SUM(CASE WHEN refs > 0 THEN raw_size END), 0),
       COALESCE(SUM(CASE WHEN refs > 0 THEN stored_size END), 0), COALESCE(SUM(stored_size), 0)
FROM blobs;

-- Inserting into this view adds to the totals (one upsert, written once for every trigger).
CREATE VIEW storage_changes (namespace, entries, logical_bytes, blobs, unique_bytes, compressed_bytes, physical_bytes)
AS SELECT namespace, entries, logical_bytes, blobs, unique_bytes, compressed_bytes, physical_bytes FROM storage_totals;
CREATE TRIGGER storage_changes_added INSTEAD OF INSERT ON storage_changes
BEGIN
    INSERT INTO storage_totals (namespace, stripe, entries, logical_bytes, blobs, unique_bytes, compressed_bytes, physical_bytes)
    VALUES (NEW.namespace, 0, NEW.entries, NEW.logical_bytes, NEW.blobs, NEW.unique_bytes, NEW.compressed_bytes,
            NEW.physical_bytes)
    ON CONFLICT (namespace, stripe) DO UPDATE SET
        entries = entries + excluded.entries,
        logical_bytes = logical_bytes + excluded.logical_bytes,
        blobs = blobs + excluded.blobs,
        unique_bytes = unique_bytes + excluded.unique_bytes,
        compressed_bytes = compressed_bytes + excluded.compressed_bytes,
        physical_bytes = physical_bytes + excluded.physical_bytes;
END;

-- A new entry counts in its namespace; its blob counts in the namespace when no other entry of
-- the namespace points at it, and in the store when no entry at all did.
CREATE TRIGGER entries_counted AFTER INSERT ON entries
BEGIN
    INSERT INTO storage_changes SELECT '', 0, 0, 0, raw_size, stored_size, 0
    FROM blobs WHERE hash = NEW.blob_hash AND refs = 0;
    UPDATE blobs SET refs = refs + 1 WHERE hash = NEW.blob_hash;
    INSERT INTO storage_changes SELECT NEW.namespace, 1, NEW.size, f.first, f.first * b.raw_size, f.first * b.stored_size, 0
    FROM blobs b, (SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM entries
        WHERE blob_hash = NEW.blob_hash AND namespace = NEW.namespace LIMIT 2)) = 1 AS first) f
    WHERE b.hash = NEW.blob_hash;
END;

CREATE TRIGGER entries_uncounted AFTER DELETE ON entries
BEGIN
    UPDATE blobs SET refs = refs - 1 WHERE hash = OLD.blob_hash;
    INSERT INTO storage_changes SELECT '', 0, 0, 0, -raw_size, -stored_size, 0
    FROM blobs WHERE hash = OLD.blob_hash AND refs = 0;
    INSERT INTO storage_changes SELECT OLD.namespace, -1, -OLD.size, -l.last, -l.last * b.raw_size, -l.last * b.stored_size, 0
    FROM blobs b, (SELECT NOT EXISTS (SELECT 1 FROM entries
        WHERE blob_hash = OLD.blob_hash AND namespace = OLD.namespace) AS last) l
    WHERE b.hash = OLD.blob_hash;
END;

-- A rewrite with other content: the old blob as by a deletion, the new one as by an insert. An
-- entry's size is its blob's raw size, so it changes only with the blob.
CREATE TRIGGER entries_recounted AFTER UPDATE OF blob_hash ON entries
WHEN OLD.blob_hash <> NEW.blob_hash
BEGIN
    UPDATE blobs SET refs = refs - 1 WHERE hash = OLD.blob_hash;
    INSERT INTO storage_changes SELECT '', 0, 0, 0, -raw_size, -stored_size, 0
    FROM blobs WHERE hash = OLD.blob_hash AND refs = 0;
    INSERT INTO storage_changes SELECT OLD.namespace, -1, -OLD.size, -l.last, -l.last * b.raw_size, -l.last * b.stored_size, 0
    FROM blobs b, (SELECT NOT EXISTS (SELECT 1 FROM entries
        WHERE blob_hash = OLD.blob_hash AND namespace = OLD.namespace) AS last) l
    WHERE b.hash = OLD.blob_hash;
    INSERT INTO storage_changes SELECT '', 0, 0, 0, raw_size, stored_size, 0
    FROM blobs WHERE hash = NEW.blob_hash AND refs = 0;
    UPDATE blobs SET refs = refs + 1 WHERE hash = NEW.blob_hash;
    INSERT INTO storage_changes SELECT NEW.namespace, 1, NEW.size, f.first, f.first * b.raw_size, f.first * b.stored_size, 0
    FROM blobs b, (SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM entries
        WHERE blob_hash = NEW.blob_hash AND namespace = NEW.namespace LIMIT 2)) = 1 AS first) f
    WHERE b.hash = NEW.blob_hash;
END;

CREATE TRIGGER blobs_counted AFTER INSERT ON blobs
BEGIN
    INSERT INTO storage_changes VALUES ('', 0, 0, 1, 0, 0, NEW.stored_size);
END;

CREATE TRIGGER blobs_uncounted AFTER DELETE ON blobs
BEGIN
    INSERT INTO storage_changes VALUES ('', 0, 0, -1, 0, 0, -OLD.stored_size);
END;

-- A blob's name is the hash of its content: its sizes never change (the totals rely on it).
CREATE TRIGGER blobs_sizes_fixed BEFORE UPDATE OF raw_size, stored_size ON blobs
WHEN OLD.raw_size <> NEW.raw_size OR OLD.stored_size <> NEW.stored_size
BEGIN
    SELECT RAISE(ABORT, 'the sizes of a blob never change');
END;
