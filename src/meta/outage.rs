//! The database circuit breaker. A cache must never hang a build: once a call fails because
//! the database is unreachable, every call fails at once (503, or a miss where the caller
//! chooses so) instead of each waiting out the pool's acquire timeout, and calls already
//! waiting are released. A background probe pings the database until it answers, then
//! closes the breaker: recovery needs no restart and costs no client request a timeout.
//!
//! A call that merely waited too long (no free connection, or no answer before the deadline)
//! may be a busy database, not a lost one: the probe, on a connection of its own, decides
//! before the breaker trips. A slow scan must not turn a working cache into failing fast.

use crate::{Error, Result};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often the probe pings an unreachable database.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// Backstop for a call that never answers (a database host gone silent drops no
/// connection): longer than PostgreSQL's statement timeout plus the acquire timeout.
const CALL_DEADLINE: Duration = Duration::from_secs(15);

/// One ping of the database: `true` when it answered.
pub type Probe = Box<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// Open (failing fast) or closed (passing calls through), shared by every clone of a store.
pub struct OutageGuard {
    open: watch::Sender<bool>,
    probe: Probe,
    closed: AtomicBool,
}

impl std::fmt::Debug for OutageGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutageGuard").field("open", &self.is_open()).finish()
    }
}

fn unavailable() -> Error {
    Error::DatabaseUnavailable("unreachable; hearth retries in the background".into())
}

/// How long the probe may take to say whether the database answers.
const PROBE_DEADLINE: Duration = Duration::from_secs(3);

/// What a failed call says about the database.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// The statement failed; the database answered.
    Statement,
    /// The call waited too long: a busy database, or a lost one.
    Waited,
    /// The database is unreachable.
    Outage,
}

fn classify(error: &Error) -> Failure {
    let Error::Database { source, .. } = error else {
        return Failure::Statement;
    };
    match source {
        sqlx::Error::PoolTimedOut => Failure::Waited,
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => {
            Failure::Outage
        }
        // Class 08: connection exceptions; 57P01-57P03: the server is shutting down or starting.
        sqlx::Error::Database(db) => {
            let outage = db
                .code()
                .is_some_and(|code| code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03"));
            if outage {
                Failure::Outage
            } else {
                Failure::Statement
            }
        }
        _ => Failure::Statement,
    }
}

impl OutageGuard {
    /// A closed breaker whose probe is `probe`.
    pub fn new(probe: Probe) -> Arc<OutageGuard> {
        Arc::new(OutageGuard {
            open: watch::Sender::new(false),
            probe,
            closed: AtomicBool::new(false),
        })
    }

    /// True while the database is considered unreachable.
    pub fn is_open(&self) -> bool {
        *self.open.borrow()
    }

    /// Stops probing (the store is closing).
    pub fn shut_down(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Runs `call` unless the breaker is open; trips it when `call` finds the database
    /// unreachable, and gives up on `call` as soon as another call trips it.
    pub async fn guard<T>(self: &Arc<Self>, call: impl Future<Output = Result<T>>) -> Result<T> {
        let mut opened = self.open.subscribe();
        if *opened.borrow_and_update() {
            return Err(unavailable());
        }
        let result = tokio::select! {
            result = tokio::time::timeout(CALL_DEADLINE, call) => result.unwrap_or_else(|_| {
                Err(Error::Database { context: "no answer from the database", source: sqlx::Error::PoolTimedOut })
            }),
            _ = opened.wait_for(|open| *open) => return Err(unavailable()),
        };
        if let Err(error) = &result {
            match classify(error) {
                Failure::Statement => {}
                Failure::Outage => self.trip(error),
                Failure::Waited => {
                    if !self.answers().await {
                        self.trip(error);
                    }
                }
            }
        }
        result
    }

    /// Whether the probe gets an answer in time.
    async fn answers(&self) -> bool {
        tokio::time::timeout(PROBE_DEADLINE, (self.probe)())
            .await
            .unwrap_or(false)
    }

    fn trip(self: &Arc<Self>, cause: &Error) {
        if self.open.send_replace(true) || self.closed.load(Ordering::Acquire) {
            return;
        }
        tracing::error!(error = %cause, "database unreachable: failing fast until it answers again");
        let guard = self.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(PROBE_INTERVAL).await;
                if guard.closed.load(Ordering::Acquire) {
                    return;
                }
                if guard.answers().await {
                    guard.open.send_replace(false);
                    tracing::info!(after = ?started.elapsed(), "database reachable again");
                    return;
                }
            }
        });
    }
}

/// A guard whose probe opens a connection of its own with `options` and pings: it answers
/// whether the database does, however busy the pools are.
pub fn guard_for<O>(options: O) -> Arc<OutageGuard>
where
    O: sqlx::ConnectOptions,
    O::Connection: Sized,
{
    OutageGuard::new(Box::new(move || {
        let options = options.clone();
        Box::pin(async move {
            match options.connect().await {
                Ok(mut conn) => {
                    let answered = sqlx::Connection::ping(&mut conn).await.is_ok();
                    let _ = sqlx::Connection::close(conn).await;
                    answered
                }
                Err(_) => false,
            }
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn outage() -> Error {
        Error::Database {
            context: "test",
            source: sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        }
    }

    fn waited() -> Error {
        Error::Database {
            context: "test",
            source: sqlx::Error::PoolTimedOut,
        }
    }

    fn guard_answering(up: Arc<AtomicBool>) -> Arc<OutageGuard> {
        OutageGuard::new(Box::new(move || {
            let up = up.clone();
            Box::pin(async move { up.load(Ordering::SeqCst) })
        }))
    }

    #[tokio::test]
    async fn trips_on_unreachable_and_recovers_when_the_probe_answers() {
        let up = Arc::new(AtomicBool::new(false));
        let guard = guard_answering(up.clone());
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = |result: Result<()>| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                result
            }
        };
        assert!(guard.guard(counted(Ok(()))).await.is_ok());
        assert!(guard.guard(counted(Err(outage()))).await.is_err());
        assert!(guard.is_open());
        // Open: the call is not even started.
        let refused = guard.guard(counted(Ok(()))).await;
        assert!(matches!(refused, Err(Error::DatabaseUnavailable(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        up.store(true, Ordering::SeqCst);
        for _ in 0..100 {
            if !guard.is_open() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!guard.is_open(), "the probe closes the breaker");
        assert!(guard.guard(counted(Ok(()))).await.is_ok());
    }

    #[tokio::test]
    async fn a_failed_statement_does_not_trip() {
        let guard = guard_answering(Arc::new(AtomicBool::new(true)));
        let failed = Error::Database {
            context: "test",
            source: sqlx::Error::RowNotFound,
        };
        assert!(guard.guard(async { Err::<(), _>(failed) }).await.is_err());
        assert!(!guard.is_open());
    }

    #[tokio::test]
    async fn a_long_wait_trips_only_when_the_probe_gets_no_answer() {
        let up = Arc::new(AtomicBool::new(true));
        let guard = guard_answering(up.clone());
        assert!(guard.guard(async { Err::<(), _>(waited()) }).await.is_err());
        assert!(!guard.is_open(), "a busy database is not an outage");
        up.store(false, Ordering::SeqCst);
        assert!(guard.guard(async { Err::<(), _>(waited()) }).await.is_err());
        assert!(guard.is_open(), "a database that does not answer the probe is");
    }

    #[tokio::test]
    async fn waiting_calls_are_released_when_another_call_trips() {
        let guard = guard_answering(Arc::new(AtomicBool::new(false)));
        let stuck = tokio::spawn({
            let guard = guard.clone();
            async move { guard.guard(std::future::pending::<Result<()>>()).await }
        });
        tokio::task::yield_now().await;
        assert!(guard.guard(async { Err::<(), _>(outage()) }).await.is_err());
        let released = tokio::time::timeout(Duration::from_secs(5), stuck).await;
        assert!(matches!(released, Ok(Ok(Err(Error::DatabaseUnavailable(_))))));
    }
}
