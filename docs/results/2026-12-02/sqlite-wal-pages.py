import sqlite3, os, time, random, sys
without = sys.argv[1] == "without"
path = f"/tmp/exp/w-{sys.argv[1]}.db"
for s in ("", "-wal", "-shm"):
    try: os.remove(path + s)
    except FileNotFoundError: pass
db = sqlite3.connect(path, isolation_level=None)
db.execute("PRAGMA journal_mode=WAL"); db.execute("PRAGMA synchronous=NORMAL"); db.execute("PRAGMA foreign_keys=ON")
db.execute("PRAGMA wal_autocheckpoint=0")
wr = " WITHOUT ROWID" if without else ""
db.executescript(f"""
CREATE TABLE namespaces (name TEXT NOT NULL PRIMARY KEY, quota_bytes BIGINT, anonymous_read BOOLEAN NOT NULL DEFAULT FALSE, created_at BIGINT NOT NULL);
CREATE TABLE tokens (id INTEGER PRIMARY KEY AUTOINCREMENT, namespace TEXT);
CREATE TABLE blobs (hash TEXT NOT NULL PRIMARY KEY, raw_size BIGINT NOT NULL, stored_size BIGINT NOT NULL, encoding TEXT NOT NULL, state TEXT NOT NULL, created_at BIGINT NOT NULL, last_referenced_at BIGINT NOT NULL){wr};
CREATE INDEX blobs_state_referenced ON blobs (state, last_referenced_at);
CREATE TABLE entries (namespace TEXT NOT NULL REFERENCES namespaces (name) ON DELETE CASCADE, key TEXT NOT NULL, blob_hash TEXT NOT NULL REFERENCES blobs (hash), size BIGINT NOT NULL, writer_token_id BIGINT REFERENCES tokens (id) ON DELETE SET NULL, created_at BIGINT NOT NULL, last_access_at BIGINT NOT NULL, hit_count BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (namespace, key)){wr};
CREATE INDEX entries_blob_hash ON entries (blob_hash);
CREATE INDEX entries_last_access ON entries (last_access_at);
CREATE INDEX entries_writer ON entries (writer_token_id);
INSERT INTO namespaces VALUES ('default', NULL, 0, 0);
""")
def h(): return "%064x" % random.getrandbits(256)
def key(): return "a/b/c/" + "%040x" % random.getrandbits(160)
now = 1_700_000_000
# preload 200k
db.execute("BEGIN")
for i in range(200_000):
    hh = h()
    db.execute("INSERT INTO blobs VALUES (?,?,?,?,?,?,?)", (hh, 65536, 65536, 'raw', 'valid', now, now))
    db.execute("INSERT INTO entries VALUES (?,?,?,?,?,?,?,0)", ('default', key(), hh, 65536, None, now, now))
db.execute("COMMIT")
db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
N = 2000
t0 = time.perf_counter()
for i in range(N):
    now += 1
    hh, k = h(), key()
    db.execute("INSERT INTO blobs (hash, raw_size, stored_size, encoding, state, created_at, last_referenced_at) VALUES (?,?,?,'raw','pending',?,?) ON CONFLICT (hash) DO UPDATE SET created_at = excluded.created_at WHERE blobs.state = 'pending' RETURNING hash", (hh, 65536, 65536, now, now)).fetchall()
    db.execute("BEGIN IMMEDIATE")
    db.execute("SELECT 'previous', namespace, key, blob_hash FROM entries WHERE (namespace, key) IN (VALUES (?, ?))", ('default', k)).fetchall()
    db.execute("UPDATE blobs SET state = 'valid', last_referenced_at = ? WHERE hash IN (?) AND state <> 'deleting' RETURNING 'valid', hash", (now, hh)).fetchall()
    db.execute("""INSERT INTO entries (namespace, key, blob_hash, size, writer_token_id, created_at, last_access_at, hit_count)
      SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6, v.column6, 0 FROM (VALUES (?,?,?,?,?,?)) AS v
      WHERE EXISTS (SELECT 1 FROM blobs WHERE hash = v.column3 AND state = 'valid')
      ON CONFLICT (namespace, key) DO UPDATE SET blob_hash = excluded.blob_hash""", ('default', k, hh, 65536, None, now))
    db.execute("COMMIT")
dt = time.perf_counter() - t0
wal = os.path.getsize(path + "-wal")
print(f"{sys.argv[1]:8s} {dt/N*1e6:6.1f} us/put (2 txns), WAL {wal/N/4120:5.2f} frames/put, db {os.path.getsize(path)/1e6:.1f} MB")
