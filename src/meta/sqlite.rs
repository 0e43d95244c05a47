//! The embedded SQLite store: zero set-up for one person. WAL mode lets GETs read while the
//! stats flusher writes; `synchronous=NORMAL` may lose the last commits on power loss, which
//! for a cache means a few misses (blob files are fsynced before their rows exist).

use super::sqlite_batch::PutWrites;
use super::sqlite_checkpoint::{self, Checkpointer};
use super::sqlite_readers::{Reader, ReaderPool};
use super::sqlite_writer::{Writer, WriterSlot};
use super::statement::Statement;
use super::stats_writes::Numbering;
use super::transaction_size::TransactionSize;
use super::writer_holds::{Held, Work, WriterHolds};
use super::{Evicted, NewEntry, PoolSettings, PutOutcome};
use crate::blob::BlobInfo;
use crate::{Error, Result};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::str::FromStr;
use std::time::Duration;

/// How long a writer waits for SQLite's single write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes the WAL file keeps once it starts over (64 MiB).
const JOURNAL_SIZE_LIMIT: u64 = 64 << 20;

/// Metadata in an SQLite file.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// Connections for migrations, the readiness ping and tests.
    pub(super) pool: SqlitePool,
    /// Connections for reads: those of requests, or in a [`Self::background`] clone those of
    /// background work.
    readers: std::sync::Arc<ReaderPool>,
    /// Connections for the reads of background work (metrics, garbage collection, the entry
    /// feed), so that a slow one never holds a connection a request waits for.
    background_readers: std::sync::Arc<ReaderPool>,
    /// The one connection every write of this process goes through, held outside the pool.
    /// SQLite has one write lock. Writers that wait for it in SQLite's busy handler sleep with
    /// a coarse backoff (up to 100 ms a wait), which made PUT tail latency; queueing this
    /// process's writers on this mutex instead hands the lock over at once, in order (other
    /// processes, the CLI, still meet the busy timeout). Outside the pool, a write costs no
    /// pings, and the connection's page cache is never invalidated by another one's writes.
    /// `None` once closed.
    writer: Writer,
    /// Batches the writes of concurrent PUTs on the writer connection.
    put_writes: std::sync::Arc<PutWrites>,
    pub(super) outage: std::sync::Arc<super::outage::OutageGuard>,
    /// How long each write held the writer.
    pub(super) holds: WriterHolds,
    /// Checkpoints the WAL in the background, so that commits need not.
    _checkpointer: std::sync::Arc<Checkpointer>,
    /// Entries a background transaction deletes (eviction, a purge, a namespace's deletion).
    pub(super) deletions: std::sync::Arc<TransactionSize>,
    /// Access times a transaction of the statistics flush writes.
    pub(super) accesses: std::sync::Arc<TransactionSize>,
    /// Blobs a statement of the collector claims or deletes the rows of.
    pub(super) blob_rows: std::sync::Arc<TransactionSize>,
}

impl SqliteStore {
    /// Entries a background transaction deletes at first, and at least and most: one costs
    /// ~0.1 ms of an idle writer at 10^6 entries (four indexes, the storage totals, on eviction
    /// the blob's row and the remembered key), several times that on a busy machine.
    const DELETIONS: (usize, usize, usize) = (64, 4, 1_024);
    /// Access times a statistics transaction writes at first, and at least and most: one is
    /// an update of an entry found by its key.
    const ACCESSES: (usize, usize, usize) = (128, 8, 2_048);
    /// Blob rows a statement of the collector claims or deletes at first, and at least and
    /// most: a row found by its hash, changed in two indexes. The collector hands over up to
    /// 500 at once (a sweep's batch); at 10^6 entries beside 32 uploads, 128 in one statement
    /// held the writer 10-14 ms.
    const BLOB_ROWS: (usize, usize, usize) = (64, 4, 512);
    /// Rows a pruning statement deletes: a remembered eviction or a logged change is a row
    /// and one index entry, ~20 µs of the writer each at 10^6 entries.
    pub(super) const PRUNED_PER_STATEMENT: usize = 256;
    /// Up to `$2` remembered evictions from before `$1`.
    pub(super) const PRUNE_EVICTED_KEYS: &'static str = "DELETE FROM evicted_keys WHERE rowid IN \
         (SELECT rowid FROM evicted_keys WHERE evicted_at < $1 LIMIT $2)";
    /// Up to `$2` logged entry changes from before `$1`.
    pub(super) const PRUNE_ENTRY_CHANGES: &'static str = "DELETE FROM entry_changes WHERE rowid IN \
         (SELECT rowid FROM entry_changes WHERE changed_at < $1 LIMIT $2)";
    /// Up to `$2` entries written by the token `$1`, found through `entries_writer`.
    pub(super) const DELETE_TOKEN_ENTRIES: &'static str =
        "DELETE FROM entries WHERE rowid IN (SELECT rowid FROM entries WHERE writer_token_id = $1 LIMIT $2)";
    /// Up to `$2` entries of the namespace `$1`, found through the primary key.
    pub(super) const DELETE_NAMESPACE_ENTRIES: &'static str =
        "DELETE FROM entries WHERE rowid IN (SELECT rowid FROM entries WHERE namespace = $1 LIMIT $2)";

    /// Opens (creating if missing) the database file named by `url`.
    pub async fn connect(url: &str, settings: &PoolSettings) -> Result<SqliteStore> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(Error::db("parsing the SQLite URL"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            // A WAL that grew during a burst (or behind a long reader) is truncated back to
            // this once a checkpoint lets writers start it over, instead of keeping its size.
            .pragma("journal_size_limit", JOURNAL_SIZE_LIMIT.to_string());
        if let Some(dir) = options.get_filename().parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(Error::storage(format!("creating {}", dir.display())))?;
        }
        let path = options.get_filename();
        if path != std::path::Path::new(":memory:") {
            super::sqlite_shm::prepare(path);
        }
        // The writer opens the file (creating it, switching it to WAL) and runs the migrations:
        // start-up is not bound by `acquire_timeout`, the bound of a request's wait, which a
        // first open on a busy machine can exceed. Room for the batch scripts of every size
        // next to the other statements.
        let writer = WriterSlot::open(
            options
                .clone()
                .statement_cache_capacity(512)
                // A statement's rows wait for no one: with the default of 50, a `RETURNING` of
                // an eviction's 64 entries stopped midway until its task was polled again.
                .row_buffer_size(256)
                .pragma("wal_autocheckpoint", sqlite_checkpoint::BACKSTOP_PAGES.to_string()),
        )
        .await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .acquire_timeout(settings.acquire_timeout)
            .connect_lazy_with(options.clone());
        let holds = WriterHolds::new();
        let adaptive = |(initial, min, max)| std::sync::Arc::new(TransactionSize::adaptive(initial, min, max));
        Ok(SqliteStore {
            deletions: adaptive(Self::DELETIONS),
            accesses: adaptive(Self::ACCESSES),
            blob_rows: adaptive(Self::BLOB_ROWS),
            outage: super::outage::guard_for(options.clone()),
            _checkpointer: std::sync::Arc::new(Checkpointer::start(
                pool.clone(),
                writer.clone(),
                holds.clone(),
                (path != std::path::Path::new(":memory:")).then(|| path.to_path_buf()),
            )),
            pool,
            put_writes: std::sync::Arc::new(PutWrites::start(writer.clone(), holds.clone())),
            writer,
            holds,
            readers: std::sync::Arc::new(ReaderPool::new(
                options.clone(),
                settings.max_connections.max(1) as usize,
                settings.acquire_timeout,
            )),
            background_readers: std::sync::Arc::new(ReaderPool::new(
                options,
                super::BACKGROUND_CONNECTIONS as usize,
                super::BACKGROUND_ACQUIRE_TIMEOUT,
            )),
        })
    }

    /// This store, reading through the connections of background work.
    pub(super) fn background(&self) -> SqliteStore {
        SqliteStore {
            readers: self.background_readers.clone(),
            ..self.clone()
        }
    }

    /// A connection for a read.
    pub(super) async fn reader(&self) -> Result<Reader<'_>> {
        self.readers.acquire().await
    }

    /// Whether writes queue for the writer: background transactions then take smaller parts.
    pub(super) fn writer_contended(&self) -> bool {
        self.writer.contended()
    }

    /// The writer connection for `work`, once the writes queued before have finished.
    pub(super) async fn writer(&self, work: Work) -> Result<Held<tokio::sync::MappedMutexGuard<'_, SqliteConnection>>> {
        let mut slot = self.writer.lock().await;
        slot.ready().await?;
        let conn = tokio::sync::MutexGuard::try_map(slot, WriterSlot::current).map_err(|_| Error::Database {
            context: "writing",
            source: sqlx::Error::PoolClosed,
        })?;
        Ok(Held::new(conn, &self.holds, work))
    }

    /// Closes the writer connection and the pool.
    pub(super) async fn close_connections(&self) {
        self.writer.lock().await.close().await;
        self.readers.close().await;
        self.background_readers.close().await;
        self.pool.close().await;
    }

    /// [`super::MetadataStore::evict_entries`]: transactions sized by what the last ones took,
    /// each whole (entries gone, keys remembered, blobs claimed) and one script.
    pub(super) async fn evict_in_parts(&self, entries: &[(String, String)], now: i64) -> Result<Evicted> {
        let mut evicted = Evicted::default();
        let mut rest = entries;
        while !rest.is_empty() {
            let part = self.deletions.take(&mut rest, self.writer_contended());
            let mut slot = self.writer.lock().await;
            let _held = self.holds.start(Work::Collection);
            let started = std::time::Instant::now();
            let done = super::sqlite_evict::evict_part(&mut slot, part, now).await?;
            self.deletions.took(part.len(), started.elapsed());
            evicted.entries += done.entries;
            evicted.claimed.extend(done.claimed);
        }
        Ok(evicted)
    }

    /// The statements of a statistics part make one script.
    pub(super) const STATS_NUMBERING: Numbering = Numbering::Continued;

    /// The statements of a statistics part as one script, one trip to the connection's thread
    /// while the writer is held (each trip a wake-up that may wait for a core); a lone
    /// statement (the access times of every part after a flush's first) is a transaction of
    /// its own. How long it held the writer.
    pub(super) async fn write_stats(&self, mut statements: Vec<Statement<'_>>) -> Result<Duration> {
        let script = match statements.len() {
            0 => return Ok(Duration::ZERO),
            1 => statements.remove(0),
            _ => Statement::transaction(statements),
        };
        let mut slot = self.writer.lock().await;
        let _held = self.holds.start(Work::Statistics);
        let started = std::time::Instant::now();
        slot.run_script(&script, "flushing statistics").await?;
        Ok(started.elapsed())
    }

    /// [`super::MetadataStore::insert_pending_blob`], batched with concurrent uploads' claims.
    pub(super) async fn claim_blob(&self, info: &BlobInfo, now: i64) -> Result<bool> {
        self.put_writes.claim(info, now).await
    }

    /// [`super::MetadataStore::commit_entry`], batched with concurrent uploads' commits.
    pub(super) async fn write_entry(&self, entry: &NewEntry<'_>) -> Result<PutOutcome> {
        self.put_writes.commit(entry).await
    }

    async fn run_migrations(&self) -> Result<()> {
        let mut writer = self.writer(Work::Admin).await?;
        // `run(&mut *writer)` fails to compile here ("`Acquire` is not general enough");
        // `run_direct` is what `run` calls with the connection it acquired.
        sqlx::migrate!("migrations/sqlite")
            .run_direct(None, &mut *writer, false)
            .await?;
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
    clock_ms = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
);

#[cfg(test)]
mod tests {
    use sqlx::sqlite::SqliteConnectOptions;
    use sqlx::ConnectOptions;
    use std::str::FromStr;

    /// SQLite 3.7.0 to 3.51.2 can corrupt a WAL database when a checkpoint starts right after
    /// one that copied everything while another connection's commit starts the WAL over (the
    /// WAL-reset bug, fixed in 3.51.3). That is this store's pattern: a checkpointer on its
    /// own connection, passes in quick succession, uploads committing all the while (a 10^6
    /// fill with bundled 3.46.0 ended in "database disk image is malformed").
    #[tokio::test]
    async fn the_linked_sqlite_has_the_wal_reset_fix() {
        let mut conn = SqliteConnectOptions::from_str("sqlite::memory:")
            .unwrap()
            .connect()
            .await
            .unwrap();
        let version: String = sqlx::query_scalar("SELECT sqlite_version()")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let parts: Vec<u32> = version.split('.').map(|p| p.parse().unwrap()).collect();
        assert!(parts >= vec![3, 51, 3], "SQLite {version} has the WAL-reset bug");
    }
}
