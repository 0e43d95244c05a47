//! The threads uploads are written on: each upload's body is hashed, read for its meaning,
//! compressed and written to its file by a thread of its own, and those threads give way to
//! every other thread of the process.
//!
//! Uploads are where hearth's CPU goes: on 2 cores, 32 of them keep both busy. A thread that
//! holds SQLite's one writer (a batch of uploads' commits, the statistics flush, an eviction,
//! the checkpointer's paused pass) then waits for a core like any other, and every upload
//! queued for the writer waits with it; so does a GET. At a lower scheduling priority (a
//! higher nice value, which any thread may take) the uploads' threads still get every core
//! nobody else wants, and a thread that wakes for the writer or for a request gets one first.
//! At 10^6 entries beside 32 uploads, background holds of the writer over 10 ms spent waiting
//! for a core fell by half, upload batches over 10 ms from 51 to 4-10 (docs/performance.md).

use std::sync::OnceLock;
use tokio::runtime::{Builder, Runtime};
use tokio::task::JoinHandle;

/// How far below the rest of the process the uploads' threads run: at nice 10, a thread of
/// nice 0 weighs about 9 times as much with the kernel's scheduler.
pub const NICE: i32 = 10;

/// Runs `work` on an upload thread.
pub fn spawn<F, R>(work: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    threads().spawn_blocking(work)
}

/// A runtime used for nothing but its pool of blocking threads, created on first use.
fn threads() -> &'static Runtime {
    static THREADS: OnceLock<Runtime> = OnceLock::new();
    THREADS.get_or_init(|| {
        Builder::new_current_thread()
            .thread_name("hearth-upload")
            .on_thread_start(give_way)
            .build()
            .expect("a runtime for the upload threads can be built")
    })
}

/// Lowers the calling thread's scheduling priority by [`NICE`] (on Linux the nice value is
/// the thread's own); where that is refused, the thread runs as every other does.
fn give_way() {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        let lowered = getpriority_process(None).and_then(|nice| setpriority_process(None, (nice + NICE).min(19)));
        if let Err(e) = lowered {
            tracing::debug!(error = %e, "upload threads keep the process's priority");
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn upload_threads_run_below_the_rest_of_the_process() {
        let nice = || rustix::process::getpriority_process(None).unwrap();
        let here = nice();
        let there = spawn(nice).await.unwrap();
        assert_eq!(there, (here + NICE).min(19));
        assert_eq!(nice(), here, "the calling thread keeps its priority");
    }
}
