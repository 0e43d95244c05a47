//! Hit/miss recording off the hot path. Requests only touch an in-memory accumulator; the
//! flusher task writes it to `stats_hourly` and `entries` in one transaction every
//! `stats-flush-interval` and once more at shutdown. A crash loses at most one interval.
//! When the database is down, batches are kept and merged into the next attempt (the per-key
//! access map is bounded; overflow is counted and dropped, counters are always kept).

use crate::meta::{AccessUpdate, Counters, MetaStore, MetadataStore, StatsBatch, StatsRow};
use crate::time::{hour_bucket, unix_now};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Most distinct entries whose access times wait for a flush; beyond it only counters are kept.
pub const MAX_PENDING_ACCESSES: usize = 200_000;

type CounterKey = (String, i64, String);

#[derive(Default)]
struct Pending {
    counters: HashMap<CounterKey, Counters>,
    accesses: HashMap<(String, String), (i64, i64)>,
}

/// The in-memory accumulator shared by every request.
#[derive(Default)]
pub struct StatsRecorder {
    /// A discarding recorder records nothing (for traffic that is not cache use).
    discard: bool,
    pending: Mutex<Pending>,
    dropped_accesses: AtomicU64,
    failed_flushes: AtomicU64,
    last_flush_unix: AtomicU64,
}

impl StatsRecorder {
    pub fn new() -> Arc<StatsRecorder> {
        Arc::new(StatsRecorder::default())
    }

    /// A recorder that drops everything it is given.
    pub fn discarding() -> StatsRecorder {
        StatsRecorder {
            discard: true,
            ..StatsRecorder::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding this lock cannot leave counters half-updated in a harmful way.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(pending: &mut Pending, namespace: &str, label: &str, f: impl FnOnce(&mut Counters)) {
        let key = (namespace.to_string(), hour_bucket(unix_now()), label.to_string());
        f(pending.counters.entry(key).or_default());
    }

    /// A GET served `bytes` from `key`.
    pub fn hit(&self, namespace: &str, label: &str, key: &str, bytes: u64) {
        if self.discard {
            return;
        }
        let mut pending = self.lock();
        Self::bump(&mut pending, namespace, label, |c| {
            c.hits += 1;
            c.bytes_served += bytes as i64;
        });
        let now = unix_now();
        let full = pending.accesses.len() >= MAX_PENDING_ACCESSES;
        match pending.accesses.get_mut(&(namespace.to_string(), key.to_string())) {
            Some(access) => {
                access.0 = access.0.max(now);
                access.1 += 1;
            }
            None if full => {
                self.dropped_accesses.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                pending
                    .accesses
                    .insert((namespace.to_string(), key.to_string()), (now, 1));
            }
        }
    }

    /// A GET found nothing.
    pub fn miss(&self, namespace: &str, label: &str) {
        if self.discard {
            return;
        }
        Self::bump(&mut self.lock(), namespace, label, |c| c.misses += 1);
    }

    /// A PUT stored `bytes`; `conflicting` when the key held different content before.
    pub fn write(&self, namespace: &str, label: &str, bytes: u64, conflicting: bool) {
        if self.discard {
            return;
        }
        Self::bump(&mut self.lock(), namespace, label, |c| {
            c.writes += 1;
            c.bytes_received += bytes as i64;
            c.conflicting_writes += conflicting as i64;
        });
    }

    /// A request failed on hearth's side (storage, database, corrupt blob).
    pub fn error(&self, namespace: &str, label: &str) {
        if self.discard {
            return;
        }
        Self::bump(&mut self.lock(), namespace, label, |c| c.errors += 1);
    }

    /// Takes everything accumulated so far.
    pub fn take(&self) -> StatsBatch {
        let pending = std::mem::take(&mut *self.lock());
        StatsBatch {
            counters: pending
                .counters
                .into_iter()
                .map(|((namespace, hour, token_label), counters)| StatsRow {
                    namespace,
                    hour,
                    token_label,
                    counters,
                })
                .collect(),
            accesses: pending
                .accesses
                .into_iter()
                .map(|((namespace, key), (last_access_at, hits))| AccessUpdate {
                    namespace,
                    key,
                    last_access_at,
                    hits,
                })
                .collect(),
        }
    }

    /// Puts back a batch that could not be written, merging it with what arrived meanwhile.
    pub fn restore(&self, batch: StatsBatch) {
        let mut pending = self.lock();
        for row in batch.counters {
            pending
                .counters
                .entry((row.namespace, row.hour, row.token_label))
                .or_default()
                .add(&row.counters);
        }
        for a in batch.accesses {
            let full = pending.accesses.len() >= MAX_PENDING_ACCESSES;
            match pending.accesses.get_mut(&(a.namespace.clone(), a.key.clone())) {
                Some(access) => {
                    access.0 = access.0.max(a.last_access_at);
                    access.1 += a.hits;
                }
                None if full => {
                    self.dropped_accesses.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    pending
                        .accesses
                        .insert((a.namespace, a.key), (a.last_access_at, a.hits));
                }
            }
        }
    }

    /// Access records dropped because the database was unreachable for too long.
    pub fn dropped_accesses(&self) -> u64 {
        self.dropped_accesses.load(Ordering::Relaxed)
    }

    /// Flushes that failed (and were retried later).
    pub fn failed_flushes(&self) -> u64 {
        self.failed_flushes.load(Ordering::Relaxed)
    }

    /// Unix time of the last successful flush (0 before the first).
    pub fn last_flush_unix(&self) -> u64 {
        self.last_flush_unix.load(Ordering::Relaxed)
    }

    /// Writes the accumulated batch; on failure keeps it for the next attempt.
    pub async fn flush(&self, meta: &MetaStore) -> crate::Result<()> {
        let batch = self.take();
        if !batch.is_empty() {
            if let Err(e) = meta.apply_stats(&batch).await {
                self.failed_flushes.fetch_add(1, Ordering::Relaxed);
                self.restore(batch);
                return Err(e);
            }
        }
        self.last_flush_unix.store(unix_now() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Flushes every `interval` until `shutdown`, then once more.
pub async fn run_flusher(
    recorder: Arc<StatsRecorder>,
    meta: MetaStore,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if let Err(e) = recorder.flush(&meta).await {
                    tracing::warn!(error = %e, "statistics flush failed; will retry");
                }
            }
            _ = shutdown.cancelled() => break,
        }
    }
    match recorder.flush(&meta).await {
        Ok(()) => tracing::debug!("final statistics flush done"),
        Err(e) => tracing::error!(error = %e, "final statistics flush failed; these statistics are lost"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accumulates_and_restores() {
        let r = StatsRecorder::default();
        r.hit("ns", "", "k", 10);
        r.hit("ns", "", "k", 5);
        r.miss("ns", "");
        r.write("ns", "ci", 7, true);
        let batch = r.take();
        assert!(r.take().is_empty());
        let total = |b: &StatsBatch| {
            let mut c = Counters::default();
            b.counters.iter().for_each(|row| c.add(&row.counters));
            c
        };
        let c = total(&batch);
        assert_eq!(
            (c.hits, c.misses, c.writes, c.bytes_served, c.conflicting_writes),
            (2, 1, 1, 15, 1)
        );
        assert_eq!(batch.accesses.len(), 1);
        assert_eq!(batch.accesses[0].hits, 2);
        r.hit("ns", "", "k", 1);
        r.restore(batch);
        let merged = r.take();
        assert_eq!(total(&merged).hits, 3);
        assert_eq!(merged.accesses[0].hits, 3);
    }
}
