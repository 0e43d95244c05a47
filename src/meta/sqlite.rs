//! The embedded SQLite store: zero set-up for one person. WAL mode lets GETs read while the
//! stats flusher writes; `synchronous=NORMAL` may lose the last commits on power loss, which
//! for a cache means a few misses (blob files are fsynced before their rows exist).

use super::sqlite_readers::{Reader, ReaderPool};
use super::{entry_write_error, NewEntry, PoolSettings, PutOutcome};
use crate::{Error, Result};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Row};
use std::str::FromStr;
use std::time::Duration;

/// [`super::MetadataStore::commit_entry`] as one script, so that it costs one round trip to the
/// connection's thread instead of one per statement (each a pair of thread wake-ups, which
/// dominated the cost of a PUT). The transaction is immediate: the process's writers are
/// queued already, and a reader upgrading to a writer could deadlock. `$1` namespace, `$2` key,
/// `$3` blob hash, `$4` size, `$5` writer token, `$6` now. Every row it returns is tagged:
/// `previous` (the hash the key held), `blob` (the blob was marked valid), `entry` (written).
/// When the blob is missing or being deleted, nothing is written.
const COMMIT_ENTRY_SCRIPT: &str = "\
    BEGIN IMMEDIATE;
    SELECT 'previous', blob_hash FROM entries WHERE namespace = $1 AND key = $2;
    UPDATE blobs SET state = 'valid', last_referenced_at = $6 WHERE hash = $3 AND state <> 'deleting'
        RETURNING 'blob', hash;
    INSERT INTO entries (namespace, key, blob_hash, size, writer_token_id, created_at, last_access_at, hit_count)
        SELECT $1, $2, $3, $4, $5, $6, $6, 0 WHERE EXISTS (SELECT 1 FROM blobs WHERE hash = $3 AND state = 'valid')
        ON CONFLICT (namespace, key) DO UPDATE SET blob_hash = excluded.blob_hash, size = excluded.size,
            writer_token_id = excluded.writer_token_id, created_at = excluded.created_at,
            last_access_at = excluded.last_access_at
        RETURNING 'entry', blob_hash;
    COMMIT;";

/// How long a writer waits for SQLite's single write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Metadata in an SQLite file.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// Connections for migrations, the readiness ping and tests.
    pub(super) pool: SqlitePool,
    /// Connections for reads.
    readers: std::sync::Arc<ReaderPool>,
    /// The one connection every write of this process goes through, held outside the pool.
    /// SQLite has one write lock. Writers that wait for it in SQLite's busy handler sleep with
    /// a coarse backoff (up to 100 ms a wait), which made PUT tail latency; queueing this
    /// process's writers on this mutex instead hands the lock over at once, in order (other
    /// processes, the CLI, still meet the busy timeout). Outside the pool, a write costs no
    /// pings, and the connection's page cache is never invalidated by another one's writes.
    /// `None` once closed.
    writer: std::sync::Arc<tokio::sync::Mutex<Option<SqliteConnection>>>,
    pub(super) outage: std::sync::Arc<super::outage::OutageGuard>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database file named by `url`.
    pub async fn connect(url: &str, settings: &PoolSettings) -> Result<SqliteStore> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(Error::db("parsing the SQLite URL"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        if let Some(dir) = options.get_filename().parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(Error::storage(format!("creating {}", dir.display())))?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options.clone())
            .await
            .map_err(Error::db("opening the SQLite database"))?;
        let writer = options
            .connect()
            .await
            .map_err(Error::db("opening the SQLite database"))?;
        Ok(SqliteStore {
            outage: super::outage::guard_for(&pool),
            pool,
            writer: std::sync::Arc::new(tokio::sync::Mutex::new(Some(writer))),
            readers: std::sync::Arc::new(ReaderPool::new(
                options,
                settings.max_connections.max(1) as usize,
                settings.acquire_timeout,
            )),
        })
    }

    /// A connection for a read.
    pub(super) async fn reader(&self) -> Result<Reader<'_>> {
        self.readers.acquire().await
    }

    /// The writer connection, once the writes queued before have finished.
    pub(super) async fn writer(&self) -> Result<tokio::sync::MappedMutexGuard<'_, SqliteConnection>> {
        tokio::sync::MutexGuard::try_map(self.writer.lock().await, Option::as_mut).map_err(|_| Error::Database {
            context: "writing",
            source: sqlx::Error::PoolClosed,
        })
    }

    /// Closes the writer connection and the pool.
    pub(super) async fn close_connections(&self) {
        if let Some(writer) = self.writer.lock().await.take() {
            let _ = writer.close().await;
        }
        self.readers.close().await;
        self.pool.close().await;
    }

    /// [`super::MetadataStore::commit_entry`] in one round trip ([`COMMIT_ENTRY_SCRIPT`]). Runs
    /// in a task of its own: a request dropped half-way must not leave the script's
    /// transaction open on a pooled connection.
    pub(super) async fn write_entry(&self, entry: &NewEntry<'_>) -> Result<PutOutcome> {
        let store = self.clone();
        let args = (
            entry.namespace.to_owned(),
            entry.key.to_owned(),
            entry.blob.hash.clone(),
            entry.blob.raw_size as i64,
            entry.writer_token_id,
            entry.now,
        );
        match tokio::spawn(async move { store.run_commit_script(args).await }).await {
            Ok(outcome) => outcome,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    async fn run_commit_script(
        &self,
        (namespace, key, hash, size, writer, now): (String, String, String, i64, Option<i64>, i64),
    ) -> Result<PutOutcome> {
        let mut conn = self.writer().await?;
        let rows = sqlx::query(COMMIT_ENTRY_SCRIPT)
            .bind(&namespace)
            .bind(&key)
            .bind(&hash)
            .bind(size)
            .bind(writer)
            .bind(now)
            .fetch_all(&mut *conn)
            .await;
        let rows: Vec<SqliteRow> = match rows {
            Ok(rows) => rows,
            Err(e) => {
                // The script stopped inside its transaction: end it, or retire the connection.
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                return Err(entry_write_error(e, &namespace));
            }
        };
        let tagged = |tag: &str| {
            rows.iter()
                .find(|row| row.try_get::<&str, _>(0).is_ok_and(|t| t == tag))
                .map(|row| row.try_get::<String, _>(1).unwrap_or_default())
        };
        if tagged("entry").is_none() {
            return Err(Error::BlobUnavailable(hash));
        }
        Ok(match tagged("previous") {
            None => PutOutcome::Created,
            Some(old) => PutOutcome::Replaced {
                conflicting: old != hash,
            },
        })
    }

    async fn run_migrations(&self) -> Result<()> {
        sqlx::migrate!("migrations/sqlite").run(&self.pool).await?;
        Ok(())
    }

    /// Read connections currently open, and the writer.
    pub fn pool_size(&self) -> u32 {
        self.readers.size() + 1
    }

    /// Read connections currently handed out, and the writer while it writes.
    pub fn pool_in_use(&self) -> u32 {
        self.readers.in_use() + u32::from(self.writer.try_lock().is_err())
    }

    /// A pool of its own (tests use it to hold locks and run SQL).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

super::sql::impl_metadata_store!(
    SqliteStore,
    newest_access = "MAX(last_access_at, $3)",
    newest_used = "MAX(COALESCE(last_used_at, 0), $2)"
);
