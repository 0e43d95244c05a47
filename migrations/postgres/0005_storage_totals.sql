-- Storage totals kept as the data changes, so that /metrics, `hearth stats`, the admin API and
-- garbage collection read them in O(namespaces) instead of scanning entries and blobs (at
-- 5 * 10^5 entries such a scan took over 2 s on PostgreSQL). Triggers keep them exact in the
-- transaction of every change, whatever statement makes it. Keep in lockstep with
-- migrations/sqlite (there the triggers work row by row under SQLite's single writer).

-- Entries pointing at the blob, in every namespace: 0 = unreferenced, for garbage collection.
ALTER TABLE blobs ADD COLUMN refs BIGINT NOT NULL DEFAULT 0;

-- Summed over stripes on read: each connection adds its changes to a stripe of its own
-- (its backend pid modulo 64), so that concurrent uploads never queue on one totals row.
-- namespace '' holds what belongs to the whole store: every blob row (blobs, physical_bytes)
-- and the blobs some entry points at (unique_bytes, compressed_bytes). A namespace's rows hold
-- its entries and the distinct blobs they point at; their physical_bytes stay 0.
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
UPDATE blobs SET refs = r.n FROM (SELECT blob_hash, COUNT(*) AS n FROM entries GROUP BY blob_hash) r
WHERE blobs.hash = r.blob_hash;
INSERT INTO storage_totals (namespace, stripe, entries, logical_bytes, blobs, unique_bytes, compressed_bytes)
SELECT namespace, 0, SUM(entries), SUM(logical_bytes), SUM(blobs), SUM(unique_bytes), SUM(compressed_bytes) FROM (
    SELECT namespace, COUNT(*) AS entries, SUM(size) AS logical_bytes, 0 AS blobs, 0 AS unique_bytes,
           0 AS compressed_bytes
    FROM entries GROUP BY namespace
    UNION ALL
    SELECT d.namespace, 0, 0, COUNT(*), SUM(b.raw_size), SUM(b.stored_size)
    FROM (SELECT DISTINCT namespace, blob_hash FROM entries) d JOIN blobs b ON b.hash = d.blob_hash
    GROUP BY d.namespace
) t GROUP BY namespace;
INSERT INTO storage_totals (namespace, stripe, blobs, unique_bytes, compressed_bytes, physical_bytes)
SELECT '', 0, COUNT(*), COALESCE(SUM(CASE WHEN refs > 0 THEN raw_size END), 0),
       COALESCE(SUM(CASE WHEN refs > 0 THEN stored_size END), 0), COALESCE(SUM(stored_size), 0)
FROM blobs;

-- Adds a change to this connection's stripe of the namespace's totals. NUMERIC parameters
-- take SUM()s of BIGINT columns as they come.
CREATE FUNCTION add_storage_change(p_namespace TEXT, p_entries NUMERIC, p_logical NUMERIC, p_blobs NUMERIC,
                                   p_unique NUMERIC, p_compressed NUMERIC, p_physical NUMERIC)
RETURNS VOID LANGUAGE sql AS $$
    INSERT INTO storage_totals (namespace, stripe, entries, logical_bytes, blobs, unique_bytes, compressed_bytes,
                                physical_bytes)
    VALUES (p_namespace, pg_backend_pid() % 64, p_entries::BIGINT, p_logical::BIGINT, p_blobs::BIGINT,
            p_unique::BIGINT, p_compressed::BIGINT, p_physical::BIGINT)
    ON CONFLICT (namespace, stripe) DO UPDATE SET
        entries = storage_totals.entries + excluded.entries,
        logical_bytes = storage_totals.logical_bytes + excluded.logical_bytes,
        blobs = storage_totals.blobs + excluded.blobs,
        unique_bytes = storage_totals.unique_bytes + excluded.unique_bytes,
        compressed_bytes = storage_totals.compressed_bytes + excluded.compressed_bytes,
        physical_bytes = storage_totals.physical_bytes + excluded.physical_bytes
$$;

-- New entries (per statement: an upload inserts one, nothing inserts many yet). Their blob rows
-- are locked first, in one order: every change to a blob's entries queues on that lock, so the
-- namespace check below (a fresh snapshot under READ COMMITTED) sees what the others committed.
CREATE FUNCTION count_inserted_entries() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_first BIGINT;
    v_unique BIGINT;
    v_compressed BIGINT;
BEGIN
    PERFORM 1 FROM blobs WHERE hash IN (SELECT blob_hash FROM new_entries) ORDER BY hash FOR UPDATE;
    -- Blobs no entry pointed at before.
    WITH added AS (SELECT blob_hash, COUNT(*) AS n FROM new_entries GROUP BY blob_hash),
         counted AS (UPDATE blobs b SET refs = b.refs + a.n FROM added a WHERE b.hash = a.blob_hash
                     RETURNING b.refs = a.n AS first, b.raw_size, b.stored_size)
    SELECT COUNT(*), COALESCE(SUM(raw_size), 0), COALESCE(SUM(stored_size), 0)
    INTO v_first, v_unique, v_compressed FROM counted WHERE first;
    IF v_first > 0 THEN
        PERFORM add_storage_change('', 0, 0, 0, v_unique, v_compressed, 0);
    END IF;
    -- Per namespace: the entries, and the blobs the namespace points at only through them.
    PERFORM add_storage_change(g.namespace, g.entries, g.logical_bytes, COALESCE(f.blobs, 0),
                               COALESCE(f.unique_bytes, 0), COALESCE(f.compressed_bytes, 0), 0)
    FROM (SELECT namespace, COUNT(*) AS entries, SUM(size) AS logical_bytes FROM new_entries GROUP BY namespace) g
    LEFT JOIN (
        SELECT n.namespace, COUNT(*) AS blobs, SUM(b.raw_size) AS unique_bytes, SUM(b.stored_size) AS compressed_bytes
        FROM (SELECT namespace, blob_hash, COUNT(*) AS n FROM new_entries GROUP BY namespace, blob_hash) n
        JOIN blobs b ON b.hash = n.blob_hash
        WHERE (SELECT COUNT(*) FROM (SELECT 1 FROM entries e WHERE e.blob_hash = n.blob_hash
               AND e.namespace = n.namespace LIMIT n.n + 1) x) = n.n
        GROUP BY n.namespace
    ) f ON f.namespace = g.namespace
    ORDER BY g.namespace;
    RETURN NULL;
END
$$;

-- Deleted entries (uploads' rewrites aside, deletions come many at a time: eviction, purges,
-- a namespace's deletion): counted per statement, blob rows locked first as above.
CREATE FUNCTION count_deleted_entries() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_last BIGINT;
    v_unique BIGINT;
    v_compressed BIGINT;
BEGIN
    PERFORM 1 FROM blobs WHERE hash IN (SELECT blob_hash FROM old_entries) ORDER BY hash FOR UPDATE;
    -- Blobs no entry points at any more.
    WITH removed AS (SELECT blob_hash, COUNT(*) AS n FROM old_entries GROUP BY blob_hash),
         counted AS (UPDATE blobs b SET refs = b.refs - r.n FROM removed r WHERE b.hash = r.blob_hash
                     RETURNING b.refs = 0 AS last, b.raw_size, b.stored_size)
    SELECT COUNT(*), COALESCE(SUM(raw_size), 0), COALESCE(SUM(stored_size), 0)
    INTO v_last, v_unique, v_compressed FROM counted WHERE last;
    IF v_last > 0 THEN
        PERFORM add_storage_change('', 0, 0, 0, -v_unique, -v_compressed, 0);
    END IF;
    PERFORM add_storage_change(g.namespace, -g.entries, -g.logical_bytes, -COALESCE(l.blobs, 0),
                               -COALESCE(l.unique_bytes, 0), -COALESCE(l.compressed_bytes, 0), 0)
    FROM (SELECT namespace, COUNT(*) AS entries, SUM(size) AS logical_bytes FROM old_entries GROUP BY namespace) g
    LEFT JOIN (
        SELECT d.namespace, COUNT(*) AS blobs, SUM(b.raw_size) AS unique_bytes, SUM(b.stored_size) AS compressed_bytes
        FROM (SELECT DISTINCT namespace, blob_hash FROM old_entries) d
        JOIN blobs b ON b.hash = d.blob_hash
        WHERE NOT EXISTS (SELECT 1 FROM entries e WHERE e.blob_hash = d.blob_hash AND e.namespace = d.namespace)
        GROUP BY d.namespace
    ) l ON l.namespace = g.namespace
    ORDER BY g.namespace;
    RETURN NULL;
END
$$;

-- A rewrite with other content (one row at a time: an upload replacing its key). An entry's
-- size is its blob's raw size, so it changes only with the blob.
CREATE FUNCTION count_rewritten_entry() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_old RECORD;
    v_new RECORD;
    v_last INTEGER;
    v_first INTEGER;
BEGIN
    PERFORM 1 FROM blobs WHERE hash IN (OLD.blob_hash, NEW.blob_hash) ORDER BY hash FOR UPDATE;
    UPDATE blobs SET refs = refs - 1 WHERE hash = OLD.blob_hash RETURNING refs, raw_size, stored_size INTO v_old;
    UPDATE blobs SET refs = refs + 1 WHERE hash = NEW.blob_hash RETURNING refs, raw_size, stored_size INTO v_new;
    PERFORM add_storage_change('', 0, 0, 0,
        CASE WHEN v_new.refs = 1 THEN v_new.raw_size ELSE 0 END - CASE WHEN v_old.refs = 0 THEN v_old.raw_size ELSE 0 END,
        CASE WHEN v_new.refs = 1 THEN v_new.stored_size ELSE 0 END - CASE WHEN v_old.refs = 0 THEN v_old.stored_size ELSE 0 END,
        0);
    SELECT CASE WHEN EXISTS (SELECT 1 FROM entries WHERE blob_hash = OLD.blob_hash AND namespace = OLD.namespace)
           THEN 0 ELSE 1 END INTO v_last;
    SELECT CASE WHEN (SELECT COUNT(*) FROM (SELECT 1 FROM entries WHERE blob_hash = NEW.blob_hash
                      AND namespace = NEW.namespace LIMIT 2) x) = 1 THEN 1 ELSE 0 END INTO v_first;
    PERFORM add_storage_change(NEW.namespace, 0, NEW.size - OLD.size, v_first - v_last,
        v_first * v_new.raw_size - v_last * v_old.raw_size,
        v_first * v_new.stored_size - v_last * v_old.stored_size, 0);
    RETURN NULL;
END
$$;

CREATE FUNCTION count_inserted_blobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM add_storage_change('', 0, 0, COUNT(*), 0, 0, SUM(stored_size)) FROM new_blobs HAVING COUNT(*) > 0;
    RETURN NULL;
END
$$;

CREATE FUNCTION count_deleted_blobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM add_storage_change('', 0, 0, -COUNT(*), 0, 0, -SUM(stored_size)) FROM old_blobs HAVING COUNT(*) > 0;
    RETURN NULL;
END
$$;

-- A blob's name is the hash of its content: its sizes never change (the totals rely on it).
CREATE FUNCTION refuse_blob_resize() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the sizes of a blob never change';
END
$$;

CREATE TRIGGER entries_counted AFTER INSERT ON entries
REFERENCING NEW TABLE AS new_entries FOR EACH STATEMENT EXECUTE FUNCTION count_inserted_entries();
CREATE TRIGGER entries_uncounted AFTER DELETE ON entries
REFERENCING OLD TABLE AS old_entries FOR EACH STATEMENT EXECUTE FUNCTION count_deleted_entries();
CREATE TRIGGER entries_recounted AFTER UPDATE OF blob_hash ON entries
FOR EACH ROW WHEN (OLD.blob_hash <> NEW.blob_hash) EXECUTE FUNCTION count_rewritten_entry();
CREATE TRIGGER blobs_counted AFTER INSERT ON blobs
REFERENCING NEW TABLE AS new_blobs FOR EACH STATEMENT EXECUTE FUNCTION count_inserted_blobs();
CREATE TRIGGER blobs_uncounted AFTER DELETE ON blobs
REFERENCING OLD TABLE AS old_blobs FOR EACH STATEMENT EXECUTE FUNCTION count_deleted_blobs();
CREATE TRIGGER blobs_sizes_fixed BEFORE UPDATE OF raw_size, stored_size ON blobs
FOR EACH ROW WHEN (OLD.raw_size <> NEW.raw_size OR OLD.stored_size <> NEW.stored_size)
EXECUTE FUNCTION refuse_blob_resize();
