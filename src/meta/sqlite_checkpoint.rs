//! WAL checkpoints off the write path. By default SQLite checkpoints inside the commit that
//! takes the WAL past 1,000 pages: that commit copies the WAL into the database file and
//! syncs both, milliseconds during which the writer, and every upload queued behind it,
//! waits (at one upload at a time, that made the slowest 1 % of PUTs ~6 ms instead of 2-4 ms).
//! Here a task checkpoints every [`INTERVAL`] on a pool connection in `PASSIVE` mode, which
//! never blocks the writer or readers; commits checkpoint only past [`BACKSTOP_PAGES`], should
//! this task fall behind or not run. The interval is short so that each checkpoint stays
//! small: once a second, the sync of a second's worth of pages held up the uploads' own
//! fsyncs at 16 concurrent uploads.

use sqlx::SqlitePool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the WAL is copied into the database file.
pub const INTERVAL: Duration = Duration::from_millis(200);
/// WAL pages (4 KiB each) after which a commit checkpoints anyway: 40 MiB.
pub const BACKSTOP_PAGES: u32 = 10_000;

/// The running task; stops when the last clone of its store is dropped or closed.
#[derive(Debug)]
pub struct Checkpointer {
    stop: CancellationToken,
}

impl Checkpointer {
    /// Starts checkpointing the database behind `pool`.
    pub fn start(pool: SqlitePool) -> Checkpointer {
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(INTERVAL);
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
                match sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool).await {
                    Ok(_) if failing => {
                        tracing::info!("WAL checkpoints work again");
                        failing = false;
                    }
                    Ok(_) => {}
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

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
