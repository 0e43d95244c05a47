//! The embedded SQLite store: zero set-up for one person. WAL mode lets GETs read while the
//! stats flusher writes; `synchronous=NORMAL` may lose the last commits on power loss, which
//! for a cache means a few misses (blob files are fsynced before their rows exist).

use super::PoolSettings;
use crate::{Error, Result};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use std::str::FromStr;
use std::time::Duration;

/// How long a writer waits for SQLite's single write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Metadata in an SQLite file.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pub(super) pool: SqlitePool,
    /// SQLite has one write lock. Writers that wait for it in SQLite's busy handler sleep with
    /// a coarse backoff (up to 100 ms a wait), which made PUT tail latency; queueing this
    /// process's writers here instead hands the lock over at once, in order. Other processes
    /// (the CLI) still meet the busy timeout.
    write_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
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
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options)
            .await
            .map_err(Error::db("opening the SQLite database"))?;
        Ok(SqliteStore {
            outage: super::outage::guard_for(&pool),
            pool,
            write_lock: Default::default(),
        })
    }

    /// Taken by every write transaction of this process.
    pub(super) async fn writer(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        Some(self.write_lock.lock().await)
    }

    async fn run_migrations(&self) -> Result<()> {
        sqlx::migrate!("migrations/sqlite").run(&self.pool).await?;
        Ok(())
    }

    /// Connections currently open.
    pub fn pool_size(&self) -> u32 {
        self.pool.size()
    }

    /// Connections currently checked out.
    pub fn pool_in_use(&self) -> u32 {
        self.pool.size().saturating_sub(self.pool.num_idle() as u32)
    }

    /// The underlying pool (tests use it to hold locks).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

super::sql::impl_metadata_store!(
    SqliteStore,
    lock_entry = "",
    newest_access = "MAX(last_access_at, $3)",
    newest_used = "MAX(COALESCE(last_used_at, 0), $2)"
);
