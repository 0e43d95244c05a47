//! How long each write holds its connection, by what it was for. On SQLite every write of
//! the process takes turns on one writer connection, so a long background transaction is
//! time every upload waits: `hearth_db_writer_hold_seconds` shows whether statistics,
//! garbage collection or an admin call ever holds it longer than a small batch. On
//! PostgreSQL the same figure is how long one write kept a pool connection (and its row locks).
//! A hold over 10 ms is also logged (at debug, with its work), so that it can be set beside
//! what the disk and the scheduler did at that moment.

use prometheus::{Histogram, HistogramOpts, HistogramVec};
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

/// What a write was for: the `work` label of `hearth_db_writer_hold_seconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// The batched claims and entry commits of PUTs.
    Uploads,
    /// Other writes a request makes: a namespace's first upload, a DELETE, a corrupt blob.
    Requests,
    /// The statistics flush: counters, access times, token use.
    Statistics,
    /// Garbage collection: eviction, claims, the sweep and pruning of old rows.
    Collection,
    /// Namespaces, tokens and purges through the admin API or the CLI; migrations; repairs.
    Admin,
    /// SQLite only: the last pages of a grown WAL copied with writes paused, so that the
    /// next commit starts the WAL over.
    Checkpoints,
}

impl Work {
    pub const ALL: [Work; 6] = [
        Work::Uploads,
        Work::Requests,
        Work::Statistics,
        Work::Collection,
        Work::Admin,
        Work::Checkpoints,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Work::Uploads => "uploads",
            Work::Requests => "requests",
            Work::Statistics => "statistics",
            Work::Collection => "collection",
            Work::Admin => "admin",
            Work::Checkpoints => "checkpoints",
        }
    }
}

/// Seconds. The target of a background transaction is 10 ms; a batch of uploads takes a
/// millisecond or two.
const BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// A hold longer than this is logged: longer than one small batch of background work.
const SLOW: Duration = Duration::from_millis(10);

/// The histogram of one store (shared by its clones), registered by the server next to its
/// other metrics.
#[derive(Clone, Debug)]
pub struct WriterHolds {
    histogram: HistogramVec,
}

impl WriterHolds {
    pub fn new() -> WriterHolds {
        let histogram = HistogramVec::new(
            HistogramOpts::new(
                "hearth_db_writer_hold_seconds",
                "How long one write held the database writer (SQLite) or its write connection (PostgreSQL)",
            )
            .buckets(BUCKETS.to_vec()),
            &["work"],
        )
        .expect("valid metric");
        // Pre-created, so that every kind shows up (at zero) before its first write.
        for work in Work::ALL {
            histogram.with_label_values(&[work.as_str()]);
        }
        WriterHolds { histogram }
    }

    /// Starts timing a hold for `work`; observed when the timer is dropped.
    pub fn start(&self, work: Work) -> HoldTimer {
        HoldTimer {
            histogram: self.histogram.with_label_values(&[work.as_str()]),
            work,
            started: Instant::now(),
        }
    }

    /// The histogram, to register with a Prometheus registry.
    pub fn collector(&self) -> HistogramVec {
        self.histogram.clone()
    }
}

impl Default for WriterHolds {
    fn default() -> Self {
        WriterHolds::new()
    }
}

/// One hold being timed: observed, and logged when slow, as it is dropped.
pub struct HoldTimer {
    histogram: Histogram,
    work: Work,
    started: Instant,
}

impl Drop for HoldTimer {
    fn drop(&mut self) {
        let held = self.started.elapsed();
        self.histogram.observe(held.as_secs_f64());
        if held > SLOW {
            tracing::debug!(
                work = self.work.as_str(),
                held_ms = held.as_secs_f64() * 1000.0,
                "slow hold of the writer"
            );
        }
    }
}

/// A write connection, timed from when it was handed out until it is given back.
pub struct Held<C> {
    conn: C,
    _timer: HoldTimer,
}

impl<C> Held<C> {
    pub fn new(conn: C, holds: &WriterHolds, work: Work) -> Held<C> {
        Held {
            conn,
            _timer: holds.start(work),
        }
    }
}

impl<C: Deref> Deref for Held<C> {
    type Target = C::Target;

    fn deref(&self) -> &C::Target {
        &self.conn
    }
}

impl<C: DerefMut> DerefMut for Held<C> {
    fn deref_mut(&mut self) -> &mut C::Target {
        &mut self.conn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_is_observed_under_its_work_when_given_back() {
        let holds = WriterHolds::new();
        let count = |work: Work| holds.collector().with_label_values(&[work.as_str()]).get_sample_count();
        let held = Held::new(Box::new(1u8), &holds, Work::Collection);
        assert_eq!(*held, 1);
        assert_eq!(count(Work::Collection), 0);
        drop(held);
        assert_eq!(count(Work::Collection), 1);
        assert_eq!(count(Work::Uploads), 0);
    }
}
