//! Size budgets, LRU eviction and blob garbage collection.
//!
//! One run:
//! 1. **Quotas**: a namespace storing more than its quota loses its least recently used
//!    entries until it is under [`LOW_WATER`] of it.
//! 2. **Budget**: when the whole store exceeds [`HIGH_WATER`] of `max-size`, least recently
//!    used entries go until it is under [`LOW_WATER`]; namespaces within their quota are spared
//!    while anything else can go, so one project cannot evict another's warm set.
//! 3. **Sweep**: blobs no entry points at any more, and uploads that never finished, are
//!    deleted once older than the grace period.
//!
//! Evicted keys are remembered (64-bit hashes) so later misses on them count as *evicted*.
//!
//! Racing uploads are safe by construction: a blob is taken only by a conditional update
//! (`valid` and unreferenced → `deleting`) that a concurrent commit of a reference defeats;
//! its file is deleted only in that state, and its row only after the file. Uploads that
//! meet a `deleting` blob wait for the row to go and store their own copy (see
//! `cache::Cache::put`). On PostgreSQL, replicas take an advisory lock so that one collects at
//! a time.

use crate::blob::{BlobInfo, BlobStore};
use crate::meta::{BlobState, Evicted, EvictionCandidate, MetaStore, MetadataStore};
use crate::metrics::Metrics;
use crate::time::unix_now;
use crate::Result;
use futures_util::StreamExt;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Eviction starts above this share of the budget…
pub const HIGH_WATER: f64 = 0.95;
/// …and stops below this one, so that it does not run on every write.
pub const LOW_WATER: f64 = 0.85;
/// Entries evicted per transaction.
const BATCH: i64 = 500;
/// Blob files deleted concurrently (unlinks on a local volume, requests to S3).
const FILE_DELETES_IN_FLIGHT: usize = 16;
/// Evicted keys are remembered this long for miss classification.
const EVICTED_KEY_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// What a run may do.
#[derive(Clone, Debug)]
pub struct GcSettings {
    /// Budget of the whole store in stored bytes; 0 = unlimited.
    pub max_size: u64,
    /// Unreferenced blobs and unfinished uploads younger than this are left alone.
    pub grace: Duration,
    /// Report what would be freed without changing anything.
    pub dry_run: bool,
}

/// What a run did (or, dry, would do).
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct GcReport {
    pub dry_run: bool,
    /// Physical bytes stored before and after.
    pub stored_bytes_before: i64,
    pub stored_bytes_after: i64,
    pub budget_bytes: u64,
    pub evicted_entries: u64,
    /// Logical bytes of the evicted entries.
    pub evicted_bytes: i64,
    /// Blobs (and their stored bytes) freed because their last entry was evicted.
    pub freed_blobs: u64,
    pub freed_bytes: i64,
    /// Unreferenced blobs and abandoned uploads swept after the grace period.
    pub swept_blobs: u64,
    pub swept_bytes: i64,
    pub evicted_by_namespace: HashMap<String, u64>,
}

/// Runs one collection.
pub async fn collect(meta: &MetaStore, blobs: &BlobStore, settings: &GcSettings) -> Result<GcReport> {
    let usage = meta.storage_usage().await?;
    let mut run = Run {
        meta,
        blobs,
        dry_run: settings.dry_run,
        report: GcReport {
            dry_run: settings.dry_run,
            stored_bytes_before: usage.physical_bytes,
            budget_bytes: settings.max_size,
            ..Default::default()
        },
        planned: HashMap::new(),
    };
    run.enforce_quotas().await?;
    if settings.max_size > 0 {
        run.enforce_budget(settings.max_size, usage.physical_bytes).await?;
    }
    let cutoff = unix_now() - settings.grace.as_secs() as i64;
    run.sweep(cutoff).await?;
    if !settings.dry_run {
        meta.prune_evicted_keys(unix_now() - EVICTED_KEY_RETENTION.as_secs() as i64)
            .await?;
    }
    run.report.stored_bytes_after = if settings.dry_run {
        usage.physical_bytes - run.report.freed_bytes - run.report.swept_bytes
    } else {
        meta.storage_usage().await?.physical_bytes
    };
    Ok(run.report)
}

struct Run<'a> {
    meta: &'a MetaStore,
    blobs: &'a BlobStore,
    dry_run: bool,
    report: GcReport,
    /// Entries planned for eviction per blob (in a dry run, for the whole run).
    planned: HashMap<String, i64>,
}

/// Entries read ahead per namespace.
const LRU_PAGE: i64 = 128;

/// The entries of several namespaces in one least-recently-used order (last access, then
/// namespace, then key): a merge of each namespace's own order, read a page at a time through
/// an index, so that a run reads about as many entries as it evicts, however many are stored.
struct LruOrder {
    cursors: Vec<NamespaceCursor>,
    /// The next entry of each cursor that has one, earliest first.
    heads: BinaryHeap<Reverse<Head>>,
    started: bool,
}

struct NamespaceCursor {
    namespace: String,
    prefetched: VecDeque<EvictionCandidate>,
    /// The last entry taken (where reading resumes once the prefetched ones are forgotten),
    /// and the last one read.
    taken: Option<EvictionCandidate>,
    read: Option<EvictionCandidate>,
    exhausted: bool,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Head {
    last_access_at: i64,
    namespace: String,
    key: String,
    cursor: usize,
}

impl LruOrder {
    fn new(mut namespaces: Vec<String>) -> LruOrder {
        namespaces.sort();
        namespaces.dedup();
        LruOrder {
            cursors: namespaces
                .into_iter()
                .map(|namespace| NamespaceCursor {
                    namespace,
                    prefetched: VecDeque::new(),
                    taken: None,
                    read: None,
                    exhausted: false,
                })
                .collect(),
            heads: BinaryHeap::new(),
            started: false,
        }
    }

    /// The next entry in the merged order, or `None` when every namespace is done.
    async fn next(&mut self, meta: &MetaStore) -> Result<Option<EvictionCandidate>> {
        if !self.started {
            self.started = true;
            for i in 0..self.cursors.len() {
                self.push_head(meta, i).await?;
            }
        }
        let Some(Reverse(head)) = self.heads.pop() else {
            return Ok(None);
        };
        let cursor = &mut self.cursors[head.cursor];
        let candidate = cursor.prefetched.pop_front().expect("a head is prefetched");
        cursor.taken = Some(candidate.clone());
        self.push_head(meta, head.cursor).await?;
        Ok(Some(candidate))
    }

    /// Puts cursor `i`'s next entry among the heads, reading a page when none is prefetched.
    async fn push_head(&mut self, meta: &MetaStore, i: usize) -> Result<()> {
        let cursor = &mut self.cursors[i];
        if cursor.prefetched.is_empty() && !cursor.exhausted {
            let page = meta
                .lru_entries(&cursor.namespace, cursor.read.as_ref(), LRU_PAGE)
                .await?;
            cursor.exhausted = (page.len() as i64) < LRU_PAGE;
            cursor.read = page.last().cloned().or(cursor.read.take());
            cursor.prefetched.extend(page);
        }
        if let Some(next) = cursor.prefetched.front() {
            self.heads.push(Reverse(Head {
                last_access_at: next.last_access_at,
                namespace: next.namespace.clone(),
                key: next.key.clone(),
                cursor: i,
            }));
        }
        Ok(())
    }

    /// Drops what was read ahead: the next call reads it again, with its current reference
    /// counts (after entries were deleted).
    fn forget_prefetched(&mut self) {
        self.heads.clear();
        self.started = false;
        for cursor in &mut self.cursors {
            cursor.prefetched.clear();
            cursor.read = cursor.taken.clone();
            cursor.exhausted = false;
        }
    }
}

impl Run<'_> {
    async fn enforce_quotas(&mut self) -> Result<()> {
        let quotas: Vec<(String, i64)> = self
            .meta
            .list_namespaces()
            .await?
            .into_iter()
            .filter_map(|ns| ns.quota_bytes.map(|q| (ns.name, q)))
            .collect();
        for (namespace, quota) in quotas {
            let used = self.namespace_stored(&namespace).await?;
            if used > quota {
                let target = (quota as f64 * LOW_WATER) as i64;
                self.evict_until(vec![namespace], used - target).await?;
            }
        }
        Ok(())
    }

    async fn namespace_stored(&self, namespace: &str) -> Result<i64> {
        Ok(self
            .meta
            .namespace_usage(Some(namespace))
            .await?
            .first()
            .map_or(0, |u| u.usage.compressed_bytes))
    }

    async fn enforce_budget(&mut self, max_size: u64, physical: i64) -> Result<()> {
        let current = physical - self.report.freed_bytes;
        if (current as f64) <= max_size as f64 * HIGH_WATER {
            return Ok(());
        }
        let excess = current - (max_size as f64 * LOW_WATER) as i64;
        // Spare namespaces that stay within their quota, as long as others can give.
        let usage: HashMap<String, i64> = self
            .meta
            .namespace_usage(None)
            .await?
            .into_iter()
            .map(|u| (u.namespace, u.usage.compressed_bytes))
            .collect();
        let (mut spared, mut giving) = (Vec::new(), Vec::new());
        for ns in self.meta.list_namespaces().await? {
            let within_quota = ns
                .quota_bytes
                .is_some_and(|quota| usage.get(&ns.name).copied().unwrap_or(0) <= quota);
            if within_quota {
                spared.push(ns.name);
            } else {
                giving.push(ns.name);
            }
        }
        let freed = self.evict_until(giving.clone(), excess).await?;
        if freed < excess && !spared.is_empty() {
            giving.extend(spared);
            self.evict_until(giving, excess - freed).await?;
        }
        Ok(())
    }

    /// Evicts the least recently used entries of `namespaces` until `goal` stored bytes are
    /// freed or none are left. Each candidate's share is estimated first (its blob's stored
    /// size once every entry pointing at it is planned), so that no more is evicted than needed.
    ///
    /// The files of one batch's blobs are deleted while the next batch is evicted: the
    /// database and the volume work side by side, and neither waits for the other.
    async fn evict_until(&mut self, namespaces: Vec<String>, goal: i64) -> Result<i64> {
        let mut order = LruOrder::new(namespaces);
        let mut freed = 0;
        let mut claimed_before = Vec::new();
        loop {
            let mut batch = Vec::new();
            let mut estimate = 0;
            while freed + estimate < goal && batch.len() < BATCH as usize {
                let Some(candidate) = order.next(self.meta).await? else {
                    break;
                };
                estimate += self.estimate_freed(&candidate);
                batch.push(candidate);
            }
            for c in &batch {
                *self.report.evicted_by_namespace.entry(c.namespace.clone()).or_default() += 1;
                self.report.evicted_bytes += c.size;
            }
            if self.dry_run {
                if batch.is_empty() {
                    return Ok(freed);
                }
                self.report.evicted_entries += batch.len() as u64;
                self.report.freed_bytes += estimate;
                freed += estimate;
                continue;
            }
            let removing = std::mem::take(&mut claimed_before);
            if batch.is_empty() {
                self.record_removal(self.remove(removing).await?)?;
                return Ok(freed);
            }
            // The batch's entries go, and the blobs they leave unreferenced are claimed (blobs
            // still referenced elsewhere, or claimed back by an upload, are not ours to free).
            let keys: Vec<(String, String)> = batch.iter().map(|c| (c.namespace.clone(), c.key.clone())).collect();
            let (evicted, removed) = tokio::join!(self.meta.evict_entries(&keys, unix_now()), self.remove(removing));
            let Evicted { entries, claimed } = evicted?;
            self.report.evicted_entries += entries;
            freed += claimed.iter().map(|b| b.stored_size as i64).sum::<i64>();
            claimed_before = claimed;
            // On a failure the blobs just claimed stay `deleting`: the next sweep removes them.
            removed.and_then(|removed| self.record_removal(removed))?;
            // Deleted entries no longer count as references: read the rest afresh.
            self.planned.clear();
            order.forget_prefetched();
        }
    }

    /// Counts removed blobs as freed; the first failure to delete a file, if any, is the error.
    fn record_removal(&mut self, (removed, failure): (Vec<BlobInfo>, Option<crate::Error>)) -> Result<()> {
        self.report.freed_blobs += removed.len() as u64;
        self.report.freed_bytes += removed.iter().map(|b| b.stored_size as i64).sum::<i64>();
        failure.map_or(Ok(()), Err)
    }

    /// Stored bytes evicting `candidate` frees, given the candidates planned before it.
    fn estimate_freed(&mut self, candidate: &EvictionCandidate) -> i64 {
        let planned = self.planned.entry(candidate.blob_hash.clone()).or_default();
        *planned += 1;
        if candidate.blob_references > *planned {
            return 0;
        }
        if self.dry_run && candidate.blob_stored_size > 0 {
            self.report.freed_blobs += 1;
        }
        candidate.blob_stored_size
    }

    /// Deletes claimed (`deleting`) blobs: their files first (several at a time), then the rows
    /// of those whose file is gone. Returns the blobs removed, and the first failure: a blob
    /// whose file could not be deleted stays `deleting`, for the next sweep.
    async fn remove(&self, claimed: Vec<BlobInfo>) -> Result<(Vec<BlobInfo>, Option<crate::Error>)> {
        let deleted: Vec<(BlobInfo, Result<()>)> = futures_util::stream::iter(claimed)
            .map(|info| async move {
                let done = self.blobs.delete(&info).await;
                (info, done)
            })
            .buffer_unordered(FILE_DELETES_IN_FLIGHT)
            .collect()
            .await;
        let mut removed = Vec::with_capacity(deleted.len());
        let mut failure = None;
        for (info, done) in deleted {
            match done {
                Ok(()) => removed.push(info),
                Err(e) => {
                    tracing::warn!(blob = %info.hash, error = %e, "could not delete blob file; will retry");
                    failure.get_or_insert(e);
                }
            }
        }
        let hashes: Vec<String> = removed.iter().map(|b| b.hash.clone()).collect();
        self.meta.delete_blob_rows(&hashes).await?;
        Ok((removed, failure))
    }

    async fn sweep(&mut self, cutoff: i64) -> Result<()> {
        loop {
            let candidates = self.meta.sweep_candidates(cutoff, BATCH).await?;
            if candidates.is_empty() {
                return Ok(());
            }
            if self.dry_run {
                for row in &candidates {
                    self.report.swept_blobs += 1;
                    self.report.swept_bytes += row.info.stored_size as i64;
                }
                return Ok(());
            }
            let mut claimed = Vec::new();
            let mut pending = Vec::new();
            let mut unreferenced = Vec::new();
            for row in candidates {
                match row.state {
                    BlobState::Deleting => claimed.push(row.info),
                    BlobState::Pending => pending.push(row.info.hash),
                    BlobState::Valid => unreferenced.push(row.info.hash),
                }
            }
            claimed.extend(self.meta.claim_abandoned_blobs(&pending, cutoff).await?);
            claimed.extend(self.meta.claim_unreferenced_blobs(&unreferenced, Some(cutoff)).await?);
            let (removed, failure) = self.remove(claimed).await?;
            self.report.swept_blobs += removed.len() as u64;
            self.report.swept_bytes += removed.iter().map(|b| b.stored_size as i64).sum::<i64>();
            if let Some(e) = failure {
                return Err(e);
            }
            if removed.is_empty() {
                return Ok(());
            }
        }
    }
}

/// Wakes the collector before its interval is over once uploads have stored this share of
/// the budget since its last run: under heavy writes the store then overshoots its budget by
/// about that much, not by everything written in one interval.
const EARLY_RUN_SHARE: f64 = 0.02;
/// Collections are at least this far apart, however fast uploads arrive.
const MIN_SPACING: Duration = Duration::from_secs(1);

/// Counts the bytes uploads add to the store, and wakes the collector when they amount to
/// [`EARLY_RUN_SHARE`] of the budget.
#[derive(Debug)]
pub struct WriteTrigger {
    written: AtomicU64,
    threshold: u64,
    wake: Notify,
}

impl WriteTrigger {
    /// A trigger for a store of `max_size` bytes; never fires without a budget (0).
    pub fn new(max_size: u64) -> WriteTrigger {
        let threshold = if max_size == 0 {
            u64::MAX
        } else {
            ((max_size as f64 * EARLY_RUN_SHARE) as u64).max(1)
        };
        WriteTrigger {
            written: AtomicU64::new(0),
            threshold,
            wake: Notify::new(),
        }
    }

    /// A new blob of `stored_bytes` was published.
    pub fn stored(&self, stored_bytes: u64) {
        let before = self.written.fetch_add(stored_bytes, Ordering::Relaxed);
        if before < self.threshold && before.saturating_add(stored_bytes) >= self.threshold {
            self.wake.notify_one();
        }
    }

    /// A collection starts: what is written from now on counts towards the next one.
    fn restart(&self) {
        self.written.store(0, Ordering::Relaxed);
    }
}

/// Runs [`collect`] every `interval`, and early when `trigger` fires, until `shutdown`,
/// recording metrics. Errors are logged and retried at the next run.
pub async fn run_collector(
    meta: MetaStore,
    blobs: BlobStore,
    settings: GcSettings,
    interval: Duration,
    trigger: Arc<WriteTrigger>,
    metrics: Arc<Metrics>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = trigger.wake.notified() => ticker.reset(),
            _ = shutdown.cancelled() => return,
        }
        trigger.restart();
        let started = Instant::now();
        match collect_exclusively(&meta, &blobs, &settings).await {
            Ok(Some(report)) => {
                metrics.record_gc(
                    started.elapsed(),
                    report.evicted_entries,
                    report.evicted_bytes.max(0) as u64,
                    (report.freed_bytes + report.swept_bytes).max(0) as u64,
                );
                if report.evicted_entries > 0 || report.swept_blobs > 0 {
                    tracing::info!(
                        evicted = report.evicted_entries,
                        freed_bytes = report.freed_bytes + report.swept_bytes,
                        stored_bytes = report.stored_bytes_after,
                        "garbage collection"
                    );
                }
            }
            Ok(None) => tracing::debug!("another instance is collecting"),
            Err(e) => {
                metrics.errors.with_label_values(&[e.metric_kind()]).inc();
                tracing::warn!(error = %e, "garbage collection failed; will retry");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(MIN_SPACING) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// [`collect`] under the store's collection lock; `None` if another process holds it.
pub async fn collect_exclusively(
    meta: &MetaStore,
    blobs: &BlobStore,
    settings: &GcSettings,
) -> Result<Option<GcReport>> {
    let Some(lock) = meta.try_collection_lock().await? else {
        return Ok(None);
    };
    let report = collect(meta, blobs, settings).await;
    lock.release().await;
    report.map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn fired(trigger: &WriteTrigger) -> bool {
        trigger.wake.notified().now_or_never().is_some()
    }

    #[test]
    fn trigger_fires_once_uploads_reach_the_share_of_the_budget() {
        let trigger = WriteTrigger::new(100_000); // fires at 2,000 bytes
        trigger.stored(1_500);
        assert!(!fired(&trigger));
        trigger.stored(600);
        assert!(fired(&trigger));
        // Past the threshold it does not fire again until a collection restarts the count.
        trigger.stored(5_000);
        assert!(!fired(&trigger));
        trigger.restart();
        trigger.stored(1_999);
        assert!(!fired(&trigger));
        trigger.stored(1);
        assert!(fired(&trigger));
    }

    #[test]
    fn trigger_never_fires_without_a_budget() {
        let trigger = WriteTrigger::new(0);
        trigger.stored(u64::MAX / 2);
        trigger.stored(u64::MAX / 2);
        assert!(!fired(&trigger));
    }
}
