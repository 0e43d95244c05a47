//! The one connection every write of this process goes through, kept usable after a failed
//! transaction.
//!
//! A write that fails with "database or disk is full" (SQLITE_FULL) or an I/O error may make
//! SQLite roll back the whole transaction by itself. sqlx does not see that: it still counts
//! the transaction open, its rollback then fails ("no transaction is active"), and its next
//! `begin` on the connection issues a `SAVEPOINT` instead of a `BEGIN`. Such a savepoint is a
//! transaction no one commits properly: a later failure rolls back to it and leaves it open,
//! holding SQLite's write lock, and every write after it fails ("cannot start a transaction
//! within a transaction"). So the connection is checked before each use, and replaced by a
//! fresh one when its transaction state is in doubt; closing the old one ends whatever
//! transaction it still had.

use super::statement::Statement;
use crate::{Error, Result};
use sqlx::query::Query;
use sqlx::sqlite::{Sqlite, SqliteArguments, SqliteConnectOptions, SqliteConnection, SqliteRow};
use sqlx::{ConnectOptions, Connection};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{Mutex, MutexGuard, TryLockError};

/// The writer connection, shared by the batching task and the other writes.
pub type Writer = Arc<WriterTurns>;

/// Turns on the writer connection, and whether writes queue for them: a background
/// transaction sizes itself smaller while they do (see `transaction_size`).
#[derive(Debug)]
pub struct WriterTurns {
    slot: Mutex<WriterSlot>,
    /// Writes waiting for their turn now.
    waiting: AtomicUsize,
    /// Whether the last turn taken had to wait for the one before.
    last_waited: AtomicBool,
}

impl WriterTurns {
    fn new(slot: WriterSlot) -> WriterTurns {
        WriterTurns {
            slot: Mutex::new(slot),
            waiting: AtomicUsize::new(0),
            last_waited: AtomicBool::new(false),
        }
    }

    /// The writer, once the turns queued before this one have ended.
    pub async fn lock(&self) -> MutexGuard<'_, WriterSlot> {
        if let Ok(slot) = self.slot.try_lock() {
            self.last_waited.store(false, Ordering::Relaxed);
            return slot;
        }
        let _waiting = Waiting::count(&self.waiting);
        let slot = self.slot.lock().await;
        self.last_waited.store(true, Ordering::Relaxed);
        slot
    }

    /// The writer, if no one holds it.
    pub fn try_lock(&self) -> std::result::Result<MutexGuard<'_, WriterSlot>, TryLockError> {
        self.slot.try_lock()
    }

    /// Whether writes queue for the writer: one waits now, or the last turn had to wait.
    pub fn contended(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0 || self.last_waited.load(Ordering::Relaxed)
    }
}

/// One write counted as waiting for its turn, until it gets it or gives up (its future dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn count(waiting: &'a AtomicUsize) -> Waiting<'a> {
        waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The writer connection and what it takes to open it again.
#[derive(Debug)]
pub struct WriterSlot {
    /// `None` once closed, or while a replacement could not be opened.
    conn: Option<SqliteConnection>,
    options: SqliteConnectOptions,
    /// Set by [`Self::close`]: no connection is opened again.
    closed: bool,
    /// A write left the connection in a state this process cannot vouch for.
    in_doubt: bool,
}

impl WriterSlot {
    /// Opens the writer connection with `options`.
    pub async fn open(options: SqliteConnectOptions) -> Result<Writer> {
        let conn = options
            .connect()
            .await
            .map_err(Error::db("opening the SQLite database"))?;
        Ok(Arc::new(WriterTurns::new(WriterSlot {
            conn: Some(conn),
            options,
            closed: false,
            in_doubt: false,
        })))
    }

    /// The connection, outside any transaction; a fresh one if the last was in doubt.
    pub async fn ready(&mut self) -> Result<&mut SqliteConnection> {
        if self.closed {
            return Err(Error::Database {
                context: "writing",
                source: sqlx::Error::PoolClosed,
            });
        }
        let kept = match self.conn.take() {
            Some(mut conn) => {
                if !self.in_doubt && conn.is_in_transaction() {
                    // A dropped transaction queues its rollback on the connection's thread: a
                    // round trip lets it run, after which the count must be back to zero.
                    self.in_doubt = conn.ping().await.is_err() || conn.is_in_transaction();
                }
                if self.in_doubt {
                    tracing::warn!(
                        "reopening the SQLite writer connection: a failed write left its transaction in doubt"
                    );
                    let _ = conn.close().await;
                    None
                } else {
                    Some(conn)
                }
            }
            None => None,
        };
        let conn = match kept {
            Some(conn) => conn,
            None => self
                .options
                .connect()
                .await
                .map_err(Error::db("reopening the SQLite writer connection"))?,
        };
        self.in_doubt = false;
        Ok(self.conn.insert(conn))
    }

    /// Runs `script` (statements that make their own transaction) on the connection; the
    /// rows it returned. A script that fails stops inside its transaction, unless SQLite
    /// rolled it back already (it does on a full disk): it is ended before the next write.
    pub async fn run_script(&mut self, script: &Statement<'_>, context: &'static str) -> Result<Vec<SqliteRow>> {
        self.fetch_script(script.query()).await?.map_err(Error::db(context))
    }

    /// [`Self::run_script`] for a query built by hand, with the script's own error (inner) apart
    /// from the connection's (outer), for callers that tell its kinds apart (a full disk).
    pub async fn fetch_script(
        &mut self,
        script: Query<'_, Sqlite, SqliteArguments>,
    ) -> Result<std::result::Result<Vec<SqliteRow>, sqlx::Error>> {
        let conn = self.ready().await?;
        let failed = match script.fetch_all(&mut *conn).await {
            Ok(rows) => return Ok(Ok(rows)),
            Err(e) => e,
        };
        if let Err(rollback) = sqlx::query("ROLLBACK").execute(&mut *conn).await {
            if !rollback.to_string().contains("no transaction is active") {
                self.mark_in_doubt();
            }
        }
        Ok(Err(failed))
    }

    /// The connection [`Self::ready`] returned last, if still open.
    pub fn current(&mut self) -> Option<&mut SqliteConnection> {
        self.conn.as_mut()
    }

    /// Says that the connection may still be inside a transaction (a rollback failed).
    pub fn mark_in_doubt(&mut self) {
        self.in_doubt = true;
    }

    /// Closes the connection for good.
    pub async fn close(&mut self) {
        self.closed = true;
        if let Some(conn) = self.conn.take() {
            let _ = conn.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    /// A database that fills up after a few pages: "database or disk is full" on demand.
    async fn small_database(dir: &std::path::Path) -> Writer {
        let url = format!("sqlite://{}", dir.join("small.db").display());
        let options = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .pragma("max_page_count", "64");
        let writer = WriterSlot::open(options).await.unwrap();
        let mut slot = writer.lock().await;
        let conn = slot.ready().await.unwrap();
        sqlx::raw_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB); INSERT INTO t VALUES (1, x'00')")
            .execute(&mut *conn)
            .await
            .unwrap();
        drop(slot);
        writer
    }

    /// A task queued for the writer's next turn, once it counts as waiting.
    async fn queue_for(writer: &Writer) -> tokio::task::JoinHandle<()> {
        let waiter = tokio::spawn({
            let writer = writer.clone();
            async move { drop(writer.lock().await) }
        });
        while !writer.contended() {
            tokio::task::yield_now().await;
        }
        waiter
    }

    #[tokio::test]
    async fn turns_say_whether_writes_queue_for_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let writer = small_database(dir.path()).await;
        drop(writer.lock().await);
        assert!(!writer.contended(), "a turn taken at once");

        let held = writer.lock().await;
        let waiter = queue_for(&writer).await;
        drop(held);
        waiter.await.unwrap();
        assert!(writer.contended(), "the last turn had to wait");
        drop(writer.lock().await);
        assert!(!writer.contended(), "a turn taken at once again");

        // A write that gives up waiting no longer counts.
        let held = writer.lock().await;
        let waiter = queue_for(&writer).await;
        waiter.abort();
        assert!(waiter.await.unwrap_err().is_cancelled());
        assert!(!writer.contended(), "no one waits any more");
        drop(held);
    }

    #[tokio::test]
    async fn a_transaction_sqlite_rolled_back_on_a_full_disk_leaves_the_writer_usable() {
        let dir = tempfile::tempdir().unwrap();
        let writer = small_database(dir.path()).await;
        let mut slot = writer.lock().await;

        // Fill the database inside a transaction until SQLite gives up (and rolls it back).
        let conn = slot.ready().await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        let mut full = None;
        for id in 2..1_000 {
            let insert = sqlx::query("INSERT INTO t VALUES ($1, zeroblob(4000))")
                .bind(id)
                .execute(&mut *tx)
                .await;
            if let Err(e) = insert {
                full = Some(e.to_string());
                break;
            }
        }
        assert!(full.as_deref().is_some_and(|e| e.contains("full")), "{full:?}");
        drop(tx);

        // A transaction whose statement fails (a duplicate key) is rolled back...
        let conn = slot.ready().await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        let duplicate = sqlx::query("INSERT INTO t VALUES (1, x'01')").execute(&mut *tx).await;
        assert!(duplicate.is_err());
        drop(tx);

        // ...entirely: the next write starts a transaction of its own, as the batch script does.
        let conn = slot.ready().await.unwrap();
        sqlx::raw_sql("BEGIN IMMEDIATE; DELETE FROM t WHERE id = 1; COMMIT;")
            .execute(&mut *conn)
            .await
            .expect("the writer is outside any transaction");
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(left, 0);
    }
}
