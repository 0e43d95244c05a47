//! Where the work that holds SQLite's one writer runs: on a thread that waits for nothing but
//! that work, never in the runtime's queue behind requests.
//!
//! A statement crosses to the connection's thread and back, and the task that sends the next
//! statement of a transaction must then be polled again. On a busy runtime that task waits
//! behind every other ready task (uploads hashing and compressing their bodies) while it holds
//! the writer, and the writer idles. At 10^6 entries beside 32 uploads on 2 cores, transactions
//! of five statements held the writer 10–250 ms for a few milliseconds of SQLite's work, while
//! the uploads' batches, one script each, stayed under 10 ms. Tokio's mutex does the same to a
//! waiter: the writer is granted to it at release and sits idle until it is polled. So:
//! - [`spawn`]: a task that lives for the writer (the uploads' batching) runs on a thread of
//!   its own, with a runtime of its own;
//! - [`run`]: a background transaction runs on the worker thread that calls it, released from
//!   the runtime's other tasks for as long as it takes (`block_in_place`). On PostgreSQL the
//!   same keeps a background transaction's row locks no longer than its work.

use std::future::Future;
use tokio::runtime::{Builder, Handle, RuntimeFlavor};

/// Runs `work` on a new thread named `name`, with a single-threaded runtime of its own, until
/// it ends.
pub fn spawn<F>(name: &str, work: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let runtime = Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a single-threaded runtime can be built");
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || runtime.block_on(work))
        .expect("a thread can be spawned");
}

/// Runs `work` to completion on the calling worker thread, which hands its other tasks to
/// another worker meanwhile. On a single-threaded runtime (tests, tools), where there is no
/// other worker to hand them to, it is simply awaited.
pub async fn run<F: Future>(work: F) -> F::Output {
    let handle = Handle::current();
    match handle.runtime_flavor() {
        RuntimeFlavor::MultiThread => tokio::task::block_in_place(|| handle.block_on(work)),
        _ => work.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn work_goes_on_while_every_worker_is_busy() {
        use std::sync::mpsc;
        let (entered_tx, entered) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        let (go, go_rx) = tokio::sync::oneshot::channel::<()>();
        let work = tokio::spawn(async move {
            run(async move {
                entered_tx.send(()).unwrap();
                go_rx.await.unwrap();
                done_tx.send(()).unwrap();
            })
            .await
        });
        entered.recv().unwrap();
        // The runtime's only worker now blocks until the work has finished: awaited in
        // place, the work could never be polled again.
        let blocker = tokio::spawn(async move { done.recv_timeout(Duration::from_secs(10)).is_ok() });
        go.send(()).unwrap();
        assert!(
            blocker.await.unwrap(),
            "the work did not go on while the worker was blocked"
        );
        work.await.unwrap();
    }

    #[tokio::test]
    async fn on_a_single_threaded_runtime_work_is_awaited() {
        assert_eq!(run(async { 7 }).await, 7);
    }

    #[test]
    fn a_spawned_task_runs_to_its_end_on_its_own_thread() {
        let (done, finished) = std::sync::mpsc::channel();
        spawn("lane-test", async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let name = std::thread::current().name().map(str::to_owned);
            done.send(name).unwrap();
        });
        let name = finished.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(name.as_deref(), Some("lane-test"));
    }
}
