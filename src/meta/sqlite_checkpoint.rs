//! WAL checkpoints off the write path. By default SQLite checkpoints inside the commit that
//! takes the WAL past 1,000 pages: that commit copies the WAL into the database file and
//! syncs both, milliseconds during which the writer, and every upload queued behind it,
//! waits (at one upload at a time, that made the slowest 1 % of PUTs ~6 ms instead of 2-4 ms).
//! Here a task checkpoints every [`INTERVAL`] on a pool connection in `PASSIVE` mode, which
//! never blocks the writer or readers; commits checkpoint only past [`BACKSTOP_PAGES`], should
//! this task fall behind or not run. The interval is short so that each checkpoint stays
//! small: once a second, the sync of a second's worth of pages held up the uploads' own
//! fsyncs at 16 concurrent uploads.
//!
//! A passive checkpoint copies pages but never starts the WAL over: a commit does that only
//! when it begins after every frame was copied, which under continuous uploads never happens,
//! since frames keep arriving while a checkpoint runs. The WAL then grew to the backstop, and
//! the commit past it copied and synced all that was left while every upload queued behind
//! it waited. So once the WAL holds [`RESTART_PAGES`], the task copies what is left with
//! writes paused (it takes the writer for one short pass over the few frames that arrived
//! since its last one), and the next commit starts the WAL over.
//!
//! Only a checkpoint that copies every frame syncs the database file, so the paused pass
//! flushed to disk all the pages the passes before it had copied, tens of milliseconds with
//! every upload waiting. The task syncs the database file itself (an extra sync changes
//! nothing SQLite relies on) and passes again, round after round, each copying what arrived
//! during the one before, until a pass copies a few frames; only then does it pause writes,
//! for a pass that copies and syncs about as few. At 10^6 entries beside 32 uploads, the WAL
//! gains ~4,000 frames per tick and a sync of a pass's pages took 30-60 ms: one pass and one
//! sync before the pause left 2,000-4,000 frames to the paused pass, which held the writer
//! 10-60 ms.
//!
//! The paused pass is a `RESTART` checkpoint that waits up to [`READERS_WAIT`] for readers
//! still on an older snapshot: such a reader keeps the frames after its snapshot from being
//! copied and the WAL from starting over, and at 10^6 entries the WAL gains up to ~40 MiB
//! between two ticks, so one pass that let a reader of a millisecond stop it took the WAL past
//! 64 MiB. A read ends within milliseconds; readers that begin after the pass read the
//! database file and stop nothing.

use super::sqlite_writer::Writer;
use super::writer_holds::{Work, WriterHolds};
use sqlx::{SqliteConnection, SqlitePool};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often the WAL is copied into the database file.
pub const INTERVAL: Duration = Duration::from_millis(200);
/// WAL pages (4 KiB each) after which a commit checkpoints anyway: 40 MiB.
pub const BACKSTOP_PAGES: u32 = 10_000;
/// WAL pages (4 KiB each) from which the task makes the WAL start over: 8 MiB, a few
/// hundred milliseconds of uploads at 10^6 entries.
pub const RESTART_PAGES: i64 = 2_048;
/// Frames a pass may have copied for the next one to run with writes paused: about a
/// millisecond of copying, and as many pages to sync.
const FEW_FRAMES: i64 = 256;
/// How long the paused pass waits for readers still on an older snapshot to end: a read's
/// few milliseconds, not a long one's.
const READERS_WAIT: Duration = Duration::from_millis(5);
/// Rounds of a sync and a pass before writes are paused whatever is left, should writes
/// outpace them (each round copies what arrived during the round before; at 10^6 entries
/// beside 32 uploads, 2-6 rounds of 10-30 ms each). A pass that copied every frame does not
/// end the rounds: a commit already under way appends to the WAL instead of starting it over,
/// and under continuous writes one always is.
const MAX_ROUNDS: u32 = 6;

/// The running task; stops when the last clone of its store is dropped or closed.
#[derive(Debug)]
pub struct Checkpointer {
    stop: CancellationToken,
}

impl Checkpointer {
    /// Starts checkpointing the database behind `pool`, whose writes go through `writer`,
    /// in the file `database` (`None` in memory).
    pub fn start(pool: SqlitePool, writer: Writer, holds: WriterHolds, database: Option<PathBuf>) -> Checkpointer {
        let passes = Passes {
            restart_pages: RESTART_PAGES,
            readers_wait: READERS_WAIT,
            writer,
            holds,
            database,
        };
        Checkpointer::every(INTERVAL, passes, pool)
    }

    /// Makes `passes` on a connection of `pool` every `interval`.
    fn every(interval: Duration, passes: Passes, pool: SqlitePool) -> Checkpointer {
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // A failing checkpoint (a full disk) fails every tick: say so once, and when it recovers.
            let mut failing = false;
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stopped.cancelled() => break,
                }
                if pool.is_closed() {
                    break;
                }
                let copied = passes.tick(&pool).await;
                match copied {
                    Ok(()) if failing => {
                        tracing::info!("WAL checkpoints work again");
                        failing = false;
                    }
                    Ok(()) => {}
                    Err(_) if pool.is_closed() => break,
                    Err(e) if failing => tracing::debug!(error = %e, "WAL checkpoint failed again"),
                    Err(e) => {
                        tracing::warn!(error = %e, "WAL checkpoint failed; retrying every {INTERVAL:?}, commits take it over past the backstop");
                        failing = true;
                    }
                }
            }
        });
        Checkpointer { stop }
    }
}

/// What a tick's passes need: when to make the WAL start over, how long the paused pass waits
/// for readers, the writer it pauses, and the database file it syncs (`None` in memory).
struct Passes {
    /// WAL frames from which a tick makes the WAL start over.
    restart_pages: i64,
    /// How long the paused pass waits for readers on an older snapshot.
    readers_wait: Duration,
    writer: Writer,
    holds: WriterHolds,
    database: Option<PathBuf>,
}

impl Passes {
    /// One tick on a connection of `pool` (see [`Passes::checkpoint`]).
    async fn tick(&self, pool: &SqlitePool) -> sqlx::Result<()> {
        let mut conn = pool.acquire().await?;
        let copied = self.checkpoint(&mut conn).await;
        if copied.is_err() {
            // It may have failed with the paused pass's short busy timeout still set: the
            // pool gets no connection back in that state.
            conn.close_on_drop();
        }
        copied
    }

    /// One tick: a passive pass; when the WAL has grown to `restart_pages`, rounds of a sync of
    /// the database file and another pass, until a pass has copied at most [`FEW_FRAMES`] (what
    /// arrived during the round before), and a last pass with writes paused, after which every
    /// frame is copied and the next commit starts the WAL over. That pass waits up to
    /// `readers_wait` for readers on an older snapshot; one that reads longer only delays the
    /// WAL's new start to a later tick.
    async fn checkpoint(&self, conn: &mut SqliteConnection) -> sqlx::Result<()> {
        let started = Instant::now();
        let (_, frames, mut backfilled) = passive(conn).await?;
        if frames < self.restart_pages {
            return Ok(());
        }
        let mut rounds = 0;
        while rounds < MAX_ROUNDS {
            rounds += 1;
            if let Some(path) = &self.database {
                sync_data(path).await?;
            }
            let (_, _, now) = passive(conn).await?;
            if now < backfilled {
                // A commit began after a complete pass and started the WAL over by itself.
                return Ok(());
            }
            let copied = now - backfilled;
            backfilled = now;
            if copied <= FEW_FRAMES {
                break;
            }
        }
        let caught_up = started.elapsed();
        // SQLite waits for readers through the connection's busy handler: a short one for this
        // pass only.
        let busy_timeout: i64 = sqlx::query_scalar("PRAGMA busy_timeout").fetch_one(&mut *conn).await?;
        set_busy_timeout(conn, self.readers_wait.as_millis() as i64).await?;
        let paused_pass = super::writer_lane::run(async {
            let _paused = self.writer.lock().await;
            let _held = self.holds.start(Work::Checkpoints);
            let paused = Instant::now();
            let pass = restart(conn).await?;
            Ok::<_, sqlx::Error>((paused.elapsed(), pass))
        })
        .await;
        // The pass's own error, should both fail, is the one that says what went wrong.
        let restored = set_busy_timeout(conn, busy_timeout).await;
        let (paused, (blocked, _, copied)) = paused_pass?;
        restored?;
        tracing::debug!(
            frames,
            rounds,
            caught_up = ?caught_up,
            paused = ?paused,
            paused_copied = copied - backfilled,
            complete = blocked == 0,
            "WAL checkpointed to its end"
        );
        Ok(())
    }
}

/// Flushes the database file's pages the passes copied: a pass syncs it only when it copies
/// every frame, which under continuous writes only the paused one does.
async fn sync_data(path: &Path) -> sqlx::Result<()> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || held_open(&path)?.sync_data())
        .await
        .map_err(|e| sqlx::Error::Io(std::io::Error::other(e)))?
        .map_err(sqlx::Error::Io)
}

/// Descriptors of the database files this process syncs, opened once and never closed:
/// closing any descriptor of a file drops every POSIX lock the process holds on it, those of
/// SQLite's own connections included (see `sqlite_shm`), and another process (a `hearth
/// stats` ending) that then found the database unlocked would take itself for its last user
/// and checkpoint and delete the WAL under this one.
static HELD: Mutex<Vec<(PathBuf, Arc<File>)>> = Mutex::new(Vec::new());

/// The held descriptor of the database file at `path`, opened on first use.
fn held_open(path: &Path) -> std::io::Result<Arc<File>> {
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, file)) = held.iter().find(|(p, _)| p == path) {
        return Ok(file.clone());
    }
    let file = Arc::new(File::open(path)?);
    held.push((path.to_owned(), file.clone()));
    Ok(file)
}

/// `PRAGMA wal_checkpoint(PASSIVE)`: (whether it was blocked, frames in the WAL, frames copied).
async fn passive(conn: &mut SqliteConnection) -> sqlx::Result<(i64, i64, i64)> {
    sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(conn).await
}

/// `PRAGMA wal_checkpoint(RESTART)`: every frame copied, then a wait (the busy handler's) for
/// readers still on the WAL, so that the next commit starts it over; blocked (1) if the wait
/// ran out. The same columns as [`passive`].
async fn restart(conn: &mut SqliteConnection) -> sqlx::Result<(i64, i64, i64)> {
    sqlx::query_as("PRAGMA wal_checkpoint(RESTART)").fetch_one(conn).await
}

async fn set_busy_timeout(conn: &mut SqliteConnection, ms: i64) -> sqlx::Result<()> {
    sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA busy_timeout = {ms}")))
        .execute(conn)
        .await
        .map(drop)
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::sqlite_writer::WriterSlot;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
    use sqlx::ConnectOptions;

    /// Syncing the database file never closes a descriptor of it: each close would drop the
    /// process's POSIX locks on it, SQLite's included.
    #[test]
    fn the_database_file_is_opened_once_and_kept_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("held.db");
        std::fs::write(&path, b"").unwrap();
        let first = held_open(&path).unwrap();
        let again = held_open(&path).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "the file was opened again");
    }

    /// A new database at `path` in WAL mode, synced as the store syncs it.
    fn wal_database(path: &Path) -> SqliteConnectOptions {
        SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
    }

    /// Passes over the database file at `path` whose writes go through `writer`, with holds of
    /// their own.
    fn passes(restart_pages: i64, readers_wait: Duration, writer: &Writer, path: Option<&Path>) -> Passes {
        Passes {
            restart_pages,
            readers_wait,
            writer: writer.clone(),
            holds: WriterHolds::new(),
            database: path.map(Path::to_owned),
        }
    }

    /// The writer of a new database with a table `t (id, v)`.
    async fn writer_of_a_table(options: SqliteConnectOptions) -> Writer {
        let writer = WriterSlot::open(options).await.unwrap();
        sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
            .execute(writer.lock().await.ready().await.unwrap())
            .await
            .unwrap();
        writer
    }

    /// A reader on an older snapshot when writes are paused: the pass waits for its read to
    /// end, and the next commit starts the WAL over. A passive pass stopped at the reader's
    /// snapshot and left the WAL to grow until a later tick.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_paused_pass_waits_for_a_reader_on_an_older_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reader.db");
        let options = wal_database(&path).busy_timeout(Duration::from_millis(1234));
        let writer = writer_of_a_table(options.clone()).await;
        let write = |rows: std::ops::Range<i64>| {
            let writer = writer.clone();
            async move {
                for id in rows {
                    let mut slot = writer.lock().await;
                    sqlx::query("INSERT INTO t (id, v) VALUES (?1, randomblob(4000))")
                        .bind(id)
                        .execute(slot.ready().await.unwrap())
                        .await
                        .unwrap();
                }
            }
        };
        write(0..8).await;
        let mut reader = options.connect().await.unwrap();
        sqlx::raw_sql("BEGIN; SELECT count(*) FROM t")
            .execute(&mut reader)
            .await
            .unwrap();
        write(8..16).await;

        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap();
        let mut conn = pool.acquire().await.unwrap();
        let read_ends = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            sqlx::query("COMMIT").execute(&mut reader).await.unwrap();
        });
        passes(1, Duration::from_secs(10), &writer, Some(&path))
            .checkpoint(&mut conn)
            .await
            .unwrap();
        read_ends.await.unwrap();

        write(16..17).await;
        let (_, frames, _) = passive(&mut conn).await.unwrap();
        assert!(frames <= 4, "the WAL did not start over: {frames} frames");
        let busy_timeout: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(busy_timeout, 1234, "the connection's own wait is back");
    }

    /// A tick that fails closes its connection: it may fail with the paused pass's short busy
    /// timeout still set, and readers of the same pool would then give up on a lock in 5 ms.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_tick_returns_no_connection_to_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("failing.db");
        let options = wal_database(&path);
        let writer = writer_of_a_table(options.clone()).await;
        sqlx::query("INSERT INTO t (id, v) VALUES (1, randomblob(40000))")
            .execute(writer.lock().await.ready().await.unwrap())
            .await
            .unwrap();
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap();
        // The sync before the paused pass fails: no such database file to sync.
        let missing = dir.path().join("missing.db");
        let failed = passes(1, READERS_WAIT, &writer, Some(&missing)).tick(&pool).await;
        assert!(failed.is_err(), "the tick did not fail");
        for _ in 0..100 {
            if pool.size() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the failed tick's connection went back to the pool");
    }

    /// Two writers that never leave the writer idle, as busy uploads do: without a pause no
    /// commit ever begins after a complete checkpoint, and the WAL grows to the backstop.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn continuous_writes_start_the_wal_over_long_before_the_backstop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.db");
        let options = wal_database(&path);
        let writer = writer_of_a_table(options.clone().pragma("wal_autocheckpoint", BACKSTOP_PAGES.to_string())).await;
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap();
        let passes = passes(256, READERS_WAIT, &writer, Some(&path));
        let holds = passes.holds.clone();
        let checkpointer = Checkpointer::every(Duration::from_millis(20), passes, pool);

        // 64 MiB in transactions of 256 KiB (64 pages) each, more than the backstop's 40 MiB.
        let write = |first: i64| {
            let writer = writer.clone();
            tokio::spawn(async move {
                for id in (first..128).step_by(2) {
                    let mut slot = writer.lock().await;
                    sqlx::query("INSERT OR REPLACE INTO t (id, v) VALUES (?1 % 16, randomblob(262144))")
                        .bind(id)
                        .execute(slot.ready().await.unwrap())
                        .await
                        .unwrap();
                }
            })
        };
        let (a, b) = (write(0), write(1));
        a.await.unwrap();
        b.await.unwrap();
        drop(checkpointer);

        // Without paused passes the WAL would grow past the backstop; with them it starts over
        // every few transactions, unless the disk is busy enough to make a pass's syncs slow
        // (another build beside the suite once let it reach 54 % of the backstop).
        let wal_pages = std::fs::metadata(dir.path().join("wal.db-wal")).unwrap().len() / 4096;
        assert!(
            wal_pages < u64::from(BACKSTOP_PAGES) * 3 / 4,
            "the WAL grew to {wal_pages} pages"
        );
        let paused = holds
            .collector()
            .with_label_values(&[Work::Checkpoints.as_str()])
            .get_sample_count();
        assert!(paused > 0, "writes were never paused for a checkpoint");
    }
}
