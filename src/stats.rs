//! Hit/miss recording off the hot path. Requests only touch an in-memory accumulator; the
//! flusher task writes it to `stats_hourly` and `entries` in one transaction every
//! `stats-flush-interval` and once more at shutdown. A crash loses at most one interval.
//! When the database is down, batches are kept and merged into the next attempt (the per-key
//! access map is bounded; overflow is counted and dropped, counters are always kept).

use crate::meta::{
    key_hash, AccessUpdate, Counters, MetaStore, MetadataStore, MissedKeys, PutOutcome, Rewrite, StatsBatch, StatsRow,
};
use crate::metrics::Metrics;
use crate::time::{hour_bucket, unix_now};
use hashbrown::Equivalent;
use std::collections::hash_map::RandomState;
use std::collections::HashMap as StdHashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Most distinct entries whose access times wait for a flush; beyond it only counters are kept.
pub const MAX_PENDING_ACCESSES: usize = 200_000;
/// Most missed keys kept for classification per flush; beyond it misses count as cold.
pub const MAX_PENDING_MISSES: usize = 200_000;

/// `(namespace, hour, token label)`.
type CounterKey = (String, i64, String);
/// `(namespace, key)`.
type AccessKey = (String, String);
/// Looked up by borrowed keys, so that a request adding to an existing row allocates nothing.
type HashMap<K, V> = hashbrown::HashMap<K, V, RandomState>;

/// A [`CounterKey`] borrowed: hashes as the owned tuple does (field by field, in order).
#[derive(Hash)]
struct CounterRef<'a>(&'a str, i64, &'a str);

impl Equivalent<CounterKey> for CounterRef<'_> {
    fn equivalent(&self, key: &CounterKey) -> bool {
        self.0 == key.0 && self.1 == key.1 && self.2 == key.2
    }
}

impl CounterRef<'_> {
    fn to_key(&self) -> CounterKey {
        (self.0.to_string(), self.1, self.2.to_string())
    }
}

/// An [`AccessKey`] borrowed.
#[derive(Hash)]
struct AccessRef<'a>(&'a str, &'a str);

impl Equivalent<AccessKey> for AccessRef<'_> {
    fn equivalent(&self, key: &AccessKey) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

#[derive(Default)]
struct Pending {
    counters: HashMap<CounterKey, Counters>,
    accesses: HashMap<AccessKey, (i64, i64)>,
    missed: HashMap<CounterKey, Vec<i64>>,
    missed_count: usize,
    token_uses: StdHashMap<i64, i64>,
}

/// The in-memory accumulator shared by every request.
#[derive(Default)]
pub struct StatsRecorder {
    /// A discarding recorder records nothing (for traffic that is not cache use).
    discard: bool,
    pending: Mutex<Pending>,
    /// Prometheus counters fed at the same points as the database statistics.
    metrics: Option<Arc<Metrics>>,
    dropped_accesses: AtomicU64,
    failed_flushes: AtomicU64,
    last_flush_unix: AtomicU64,
}

impl StatsRecorder {
    pub fn new() -> Arc<StatsRecorder> {
        Arc::new(StatsRecorder::default())
    }

    /// A recorder that also feeds the Prometheus counters of `metrics`.
    pub fn with_metrics(metrics: Arc<Metrics>) -> Arc<StatsRecorder> {
        Arc::new(StatsRecorder {
            metrics: Some(metrics),
            ..StatsRecorder::default()
        })
    }

    fn metric(&self, namespace: &str, f: impl FnOnce(&Metrics, &str)) {
        if let Some(m) = &self.metrics {
            f(m, m.namespace_label(namespace));
        }
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

    fn bump<'a>(
        pending: &mut Pending,
        namespace: &'a str,
        label: &'a str,
        f: impl FnOnce(&mut Counters),
    ) -> CounterRef<'a> {
        let bucket = CounterRef(namespace, hour_bucket(unix_now()), label);
        match pending.counters.get_mut(&bucket) {
            Some(counters) => f(counters),
            None => f(pending.counters.entry(bucket.to_key()).or_default()),
        }
        bucket
    }

    fn remember_misses(pending: &mut Pending, bucket: CounterRef<'_>, hashes: &[i64]) {
        let room = MAX_PENDING_MISSES.saturating_sub(pending.missed_count);
        let kept = &hashes[..hashes.len().min(room)];
        if kept.is_empty() {
            return;
        }
        pending.missed_count += kept.len();
        match pending.missed.get_mut(&bucket) {
            Some(missed) => missed.extend_from_slice(kept),
            None => pending
                .missed
                .entry(bucket.to_key())
                .or_default()
                .extend_from_slice(kept),
        }
    }

    /// A GET served `bytes` from `key`.
    pub fn hit(&self, namespace: &str, label: &str, key: &str, bytes: u64) {
        if self.discard {
            return;
        }
        self.metric(namespace, |m, ns| {
            m.cache_hits.with_label_values(&[ns]).inc();
            m.cache_served_bytes.with_label_values(&[ns]).inc_by(bytes);
        });
        let mut pending = self.lock();
        Self::bump(&mut pending, namespace, label, |c| {
            c.hits += 1;
            c.bytes_served += bytes as i64;
        });
        self.merge_access(&mut pending, AccessRef(namespace, key), unix_now(), 1);
    }

    /// Adds accesses to one entry; past [`MAX_PENDING_ACCESSES`] entries, new ones are dropped.
    fn merge_access(&self, pending: &mut Pending, entry: AccessRef<'_>, at: i64, hits: i64) {
        let full = pending.accesses.len() >= MAX_PENDING_ACCESSES;
        match pending.accesses.get_mut(&entry) {
            Some(access) => {
                access.0 = access.0.max(at);
                access.1 += hits;
            }
            None if full => {
                self.dropped_accesses.fetch_add(1, Ordering::Relaxed);
                if let Some(m) = &self.metrics {
                    m.stats_dropped_accesses.inc();
                }
            }
            None => {
                pending
                    .accesses
                    .insert((entry.0.to_string(), entry.1.to_string()), (at, hits));
            }
        }
    }

    /// A request authenticated with token `id` (its last-used time is written in batches).
    pub fn token_used(&self, id: i64) {
        let now = unix_now();
        let mut pending = self.lock();
        let last = pending.token_uses.entry(id).or_insert(now);
        *last = (*last).max(now);
    }

    /// A GET of `key` found nothing.
    pub fn miss(&self, namespace: &str, label: &str, key: &str) {
        if self.discard {
            return;
        }
        self.metric(namespace, |m, ns| m.cache_misses.with_label_values(&[ns]).inc());
        let mut pending = self.lock();
        let bucket = Self::bump(&mut pending, namespace, label, |c| c.misses += 1);
        Self::remember_misses(&mut pending, bucket, &[key_hash(key)]);
    }

    /// A PUT stored `bytes`, with `outcome` for the key.
    pub fn write(&self, namespace: &str, label: &str, bytes: u64, outcome: PutOutcome) {
        if self.discard {
            return;
        }
        let conflicting = outcome == PutOutcome::Replaced(Rewrite::Conflicting);
        let same_meaning = outcome == PutOutcome::Replaced(Rewrite::SameMeaning);
        self.metric(namespace, |m, ns| {
            m.cache_writes.with_label_values(&[ns]).inc();
            m.cache_received_bytes.with_label_values(&[ns]).inc_by(bytes);
            if conflicting {
                m.cache_conflicting_writes.with_label_values(&[ns]).inc();
            }
            if same_meaning {
                m.cache_same_meaning_writes.with_label_values(&[ns]).inc();
            }
        });
        Self::bump(&mut self.lock(), namespace, label, |c| {
            c.writes += 1;
            c.bytes_received += bytes as i64;
            c.conflicting_writes += conflicting as i64;
            c.same_meaning_writes += same_meaning as i64;
        });
    }

    /// A request failed on hearth's side; `kind` is the `hearth_errors_total` label
    /// (see [`crate::Error::metric_kind`]).
    pub fn error(&self, namespace: &str, label: &str, kind: &str) {
        if self.discard {
            return;
        }
        if let Some(m) = &self.metrics {
            m.errors.with_label_values(&[kind]).inc();
        }
        Self::bump(&mut self.lock(), namespace, label, |c| c.errors += 1);
    }

    /// Takes everything accumulated so far.
    pub fn take(&self) -> StatsBatch {
        let pending = std::mem::take(&mut *self.lock());
        StatsBatch {
            token_uses: pending.token_uses.into_iter().collect(),
            missed: pending
                .missed
                .into_iter()
                .map(|((namespace, hour, token_label), key_hashes)| MissedKeys {
                    namespace,
                    hour,
                    token_label,
                    key_hashes,
                })
                .collect(),
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
            self.merge_access(&mut pending, AccessRef(&a.namespace, &a.key), a.last_access_at, a.hits);
        }
        for (id, at) in batch.token_uses {
            let last = pending.token_uses.entry(id).or_insert(at);
            *last = (*last).max(at);
        }
        for m in batch.missed {
            Self::remember_misses(
                &mut pending,
                CounterRef(&m.namespace, m.hour, &m.token_label),
                &m.key_hashes,
            );
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

    /// Writes the accumulated batch, in transactions of as many access records as the store
    /// asks for; on failure keeps what was not written for the next attempt.
    pub async fn flush(&self, meta: &MetaStore) -> crate::Result<()> {
        let mut batch = self.take();
        while let Some(part) = batch.take_part(meta.accesses_per_transaction()) {
            if let Err(e) = meta.apply_stats(&part).await {
                self.failed_flushes.fetch_add(1, Ordering::Relaxed);
                if let Some(m) = &self.metrics {
                    m.stats_flush_failures.inc();
                }
                // Each part is one transaction: those written stay written, exactly once.
                self.restore(part);
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
    fn a_batch_is_taken_in_parts_each_of_the_size_asked_then_with_everything_once() {
        let r = StatsRecorder::default();
        for i in 0..300 {
            r.hit("ns", "", &format!("k{i}"), 1);
        }
        r.miss("ns", "", "gone");
        let whole = r.take();
        let mut batch = whole.clone();
        // The size may change between parts: a slow transaction shrinks the next.
        let mut parts = Vec::new();
        for size in [128, 32, 200, 200] {
            parts.extend(batch.take_part(size));
        }
        assert_eq!(
            parts.iter().map(|p| p.accesses.len()).collect::<Vec<_>>(),
            [128, 32, 140]
        );
        assert!(batch.is_empty() && batch.take_part(128).is_none());
        assert_eq!(parts[0].counters, whole.counters);
        assert_eq!(parts[0].missed, whole.missed);
        assert!(parts[1..].iter().all(|p| p.counters.is_empty() && p.missed.is_empty()));
        let rejoined: Vec<_> = parts.into_iter().flat_map(|p| p.accesses).collect();
        assert_eq!(rejoined, whole.accesses);
        assert!(StatsBatch::default().take_part(128).is_none());
    }

    #[test]
    fn accumulates_and_restores() {
        let r = StatsRecorder::default();
        r.hit("ns", "", "k", 10);
        r.hit("ns", "", "k", 5);
        r.miss("ns", "", "gone");
        r.write("ns", "ci", 7, PutOutcome::Replaced(Rewrite::Conflicting));
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
