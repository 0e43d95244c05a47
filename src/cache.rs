//! The protocol-agnostic cache core: get / head / put / delete of `(namespace, key)`, with
//! content-addressed dedup and statistics hooks. Front-ends parse and authorize; this module
//! decides what is stored and what is served.

use crate::blob::{BlobInfo, BlobRead, BlobStore};
use crate::gc::WriteTrigger;
use crate::hot::{HotCache, RefreshTicket};
use crate::meta::{BlobState, EntryRecord, MetaStore, MetadataStore, NewEntry, PutOutcome, Rewrite};
use crate::path::{CacheKey, Namespace};
use crate::stats::StatsRecorder;
use crate::time::unix_now;
use crate::{Error, Result};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use std::collections::HashSet;
use std::fmt;
use std::io;
use std::sync::{Arc, RwLock};

/// How often a PUT looks again at a blob that garbage collection is removing, before giving
/// up with 503; with [`retry_delay`] that is about five seconds.
const BLOB_RETRIES: u32 = 40;

fn retry_delay(attempt: u32) -> std::time::Duration {
    std::time::Duration::from_millis((10 * (attempt as u64 + 1)).min(200))
}

/// Who is making a request: the token's id (stored as the writer of entries) and label
/// (statistics attribution). Anonymous until tokens exist.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    pub token_id: Option<i64>,
    pub label: String,
}

impl Caller {
    pub fn anonymous() -> Caller {
        Caller::default()
    }
}

impl From<Option<crate::auth::Principal>> for Caller {
    fn from(principal: Option<crate::auth::Principal>) -> Caller {
        match principal {
            Some(p) => Caller {
                token_id: Some(p.token_id),
                label: p.label,
            },
            None => Caller::anonymous(),
        }
    }
}

/// Limits and tuning of the write path.
#[derive(Clone, Debug)]
pub struct WriteSettings {
    pub max_body_size: u64,
    pub compression_level: i32,
    /// Budget of the in-memory blob cache (`memory-cache-size`); 0 turns hot caching off.
    pub memory_cache_bytes: u64,
}

/// A cache hit, ready to serve.
pub struct Hit {
    pub blob: BlobInfo,
    /// When the entry was written (Unix seconds): `Last-Modified`.
    pub modified: i64,
    pub body: BlobRead,
}

/// What a PUT did.
#[derive(Clone, Debug)]
pub struct Stored {
    pub outcome: PutOutcome,
    pub blob: BlobInfo,
}

/// The cache: metadata + blobs + statistics.
pub struct Cache {
    meta: MetaStore,
    blobs: BlobStore,
    stats: Arc<StatsRecorder>,
    /// Sink for the statistics of client probes, never flushed.
    probe_stats: StatsRecorder,
    write: WriteSettings,
    /// Namespaces known to exist, so that PUTs do not re-create them every time.
    known_namespaces: RwLock<HashSet<String>>,
    /// Hot entries and blobs in memory (see [`crate::hot`]).
    hot: Arc<HotCache>,
    /// Told the size of every new blob, so that garbage collection keeps up with uploads.
    gc_trigger: Arc<WriteTrigger>,
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("meta", &self.meta.kind())
            .field("blobs", &self.blobs)
            .finish()
    }
}

impl Cache {
    pub fn new(meta: MetaStore, blobs: BlobStore, stats: Arc<StatsRecorder>, write: WriteSettings) -> Cache {
        Cache {
            meta,
            blobs,
            stats,
            probe_stats: StatsRecorder::discarding(),
            hot: Arc::new(HotCache::new(write.memory_cache_bytes)),
            write,
            known_namespaces: RwLock::default(),
            gc_trigger: Arc::new(WriteTrigger::new(0)),
        }
    }

    /// The memory cache of hot entries and blobs (fed by [`crate::feed`]).
    pub fn hot(&self) -> &Arc<HotCache> {
        &self.hot
    }

    /// Reports new blobs to `trigger` (the server's collector).
    pub fn with_gc_trigger(mut self, trigger: Arc<WriteTrigger>) -> Cache {
        self.gc_trigger = trigger;
        self
    }

    pub fn meta(&self) -> &MetaStore {
        &self.meta
    }

    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    pub fn stats(&self) -> &Arc<StatsRecorder> {
        &self.stats
    }

    pub fn max_body_size(&self) -> u64 {
        self.write.max_body_size
    }

    /// Looks a key up and opens its blob. Records the hit or miss in memory only.
    pub async fn get(&self, ns: &Namespace, key: &CacheKey, caller: &Caller) -> Result<Option<Hit>> {
        let stats = self.stats_for(key);
        let entry = match self.lookup(ns, key).await {
            Ok(Some(entry)) => entry,
            Ok(None) => {
                stats.miss(ns.as_str(), &caller.label, key.as_str());
                return Ok(None);
            }
            Err(e) => {
                stats.error(ns.as_str(), &caller.label, e.metric_kind());
                return Err(e);
            }
        };
        let read = match self.hot.blob(&entry.blob.hash) {
            Some(bytes) => Ok(Some(BlobRead::Whole(bytes))),
            None => self.blobs.read(&entry.blob).await,
        };
        let body = match read {
            Ok(Some(BlobRead::Whole(bytes))) => {
                self.hot.remember_blob(&entry.blob.hash, &bytes);
                BlobRead::Whole(bytes)
            }
            Ok(Some(BlobRead::Stream(stream))) => BlobRead::Stream(self.watch_stream(stream, &entry)),
            Ok(None) => {
                tracing::warn!(namespace = %ns, key = %key, blob = %entry.blob.hash, "blob file missing; healing entry as a miss");
                self.heal(entry.blob.clone());
                stats.miss(ns.as_str(), &caller.label, key.as_str());
                return Ok(None);
            }
            Err(e @ Error::CorruptBlob { .. }) => {
                tracing::error!(namespace = %ns, key = %key, error = %e, "corrupt blob not served; dropping it");
                self.heal(entry.blob.clone());
                stats.error(ns.as_str(), &caller.label, e.metric_kind());
                stats.miss(ns.as_str(), &caller.label, key.as_str());
                return Ok(None);
            }
            Err(e) => {
                stats.error(ns.as_str(), &caller.label, e.metric_kind());
                return Err(e);
            }
        };
        stats.hit(ns.as_str(), &caller.label, key.as_str(), entry.blob.raw_size);
        Ok(Some(Hit {
            blob: entry.blob,
            modified: entry.created_at,
            body,
        }))
    }

    /// Passes a streamed body through, healing the store if it turns out corrupt mid-way.
    fn watch_stream(&self, stream: crate::blob::BlobBody, entry: &EntryRecord) -> crate::blob::BlobBody {
        let meta = self.meta.clone();
        let blobs = self.blobs.clone();
        let stats = self.stats.clone();
        let blob = entry.blob.clone();
        let namespace = entry.namespace.clone();
        Box::pin(stream.inspect(move |item| {
            if let Err(e) = item {
                if e.kind() == io::ErrorKind::InvalidData {
                    tracing::error!(namespace = %namespace, error = %e, "corrupt blob detected while streaming; response aborted");
                    stats.error(&namespace, "", "corrupt_blob");
                    spawn_heal(meta.clone(), blobs.clone(), blob.clone());
                }
            }
        }))
    }

    /// Where a request on `key` is counted. sccache reads and rewrites its `.sccache_check`
    /// probe at every start: counting those would report a warm cache that is not.
    fn stats_for(&self, key: &CacheKey) -> &StatsRecorder {
        if key.is_client_probe() {
            &self.probe_stats
        } else {
            &self.stats
        }
    }

    fn heal(&self, blob: BlobInfo) {
        self.hot.forget_blob(&blob.hash);
        self.hot.forget_all_entries();
        spawn_heal(self.meta.clone(), self.blobs.clone(), blob);
    }

    /// The entry: from the hot cache, or from the database (and then remembered).
    async fn lookup(&self, ns: &Namespace, key: &CacheKey) -> Result<Option<EntryRecord>> {
        if let Some((entry, refresh)) = self.hot.entry(ns.as_str(), key.as_str()) {
            if let Some(ticket) = refresh {
                spawn_refresh(self.meta.clone(), self.hot.clone(), ticket);
            }
            return Ok(Some(entry));
        }
        let entry = self.meta.lookup(ns.as_str(), key.as_str()).await?;
        if let Some(entry) = &entry {
            self.hot.remember_entry(entry);
        }
        Ok(entry)
    }

    /// The entry, without opening its blob (HEAD, PROPFIND). Not counted as a hit.
    pub async fn head(&self, ns: &Namespace, key: &CacheKey) -> Result<Option<EntryRecord>> {
        self.lookup(ns, key).await
    }

    /// Stores `body` under the key. Nothing becomes visible unless the whole body arrived,
    /// hashed, and was synced to the blob store. `create_namespace`: create the namespace on
    /// first use (open mode).
    pub async fn put<S, E>(
        &self,
        ns: &Namespace,
        key: &CacheKey,
        body: S,
        caller: &Caller,
        create_namespace: bool,
    ) -> Result<Stored>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: fmt::Display,
    {
        let result = self.put_inner(ns, key, body, caller, create_namespace).await;
        // Even a failed PUT may have committed (a lost answer): never trust the old entry.
        self.hot.forget_entry(ns.as_str(), key.as_str());
        let stats = self.stats_for(key);
        match &result {
            Ok(stored) => stats.write(ns.as_str(), &caller.label, stored.blob.raw_size, stored.outcome),
            Err(Error::PayloadTooLarge { .. } | Error::IncompleteUpload(_)) => {}
            Err(e) => stats.error(ns.as_str(), &caller.label, e.metric_kind()),
        }
        result
    }

    async fn put_inner<S, E>(
        &self,
        ns: &Namespace,
        key: &CacheKey,
        body: S,
        caller: &Caller,
        create_namespace: bool,
    ) -> Result<Stored>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: fmt::Display,
    {
        // Refused before the body is read: the client learns at once, not after its upload.
        if !self.meta.available() {
            return Err(Error::DatabaseUnavailable("unreachable; upload refused".into()));
        }
        let mut staged = self
            .blobs
            .stage(body, self.write.max_body_size, self.write.compression_level)
            .await?;
        if create_namespace {
            self.ensure_namespace(ns).await?;
        }
        let content = staged.content.take();
        let hash = staged.info.hash.clone();
        // Keep the staged copy until an entry points at a blob: garbage collection may take the
        // existing copy of the same content at any moment before that.
        let mut staged = Some(staged);
        for attempt in 0..=BLOB_RETRIES {
            let now = unix_now();
            let Some(ours) = staged.take() else {
                return Err(Error::BlobUnavailable(hash));
            };
            // New content is the common case: claim it at once, and look at the existing row
            // only when the claim fails.
            let blob = if self.meta.insert_pending_blob(&ours.info, now).await? {
                let info = ours.info.clone();
                self.blobs.publish(ours).await?;
                self.gc_trigger.stored(info.stored_size);
                info
            } else {
                staged = Some(ours);
                match self.meta.blob(&hash).await? {
                    // Same content stored before, under any key: keep one copy.
                    Some(existing) if existing.state == BlobState::Valid => existing.info,
                    // The collector is removing it: wait until it is gone, then store ours.
                    Some(existing) if existing.state == BlobState::Deleting => {
                        tokio::time::sleep(retry_delay(attempt)).await;
                        continue;
                    }
                    // Gone, or pending again, meanwhile: claim again.
                    _ => continue,
                }
            };
            let entry = NewEntry {
                namespace: ns.as_str(),
                key: key.as_str(),
                blob: &blob,
                writer_token_id: caller.token_id,
                now,
            };
            let mut committed = self.meta.commit_entry(&entry).await;
            if create_namespace && matches!(committed, Err(Error::NotFound(_))) {
                // Deleted since we last created it (by the admin API or the CLI): again.
                self.forget_namespaces();
                self.ensure_namespace(ns).await?;
                committed = self.meta.commit_entry(&entry).await;
            }
            match committed {
                Ok(outcome) => {
                    match outcome {
                        PutOutcome::Replaced(Rewrite::Conflicting) => {
                            tracing::info!(namespace = %ns, key = %key, "key overwritten with different content")
                        }
                        PutOutcome::Replaced(Rewrite::SameMeaning) => {
                            tracing::debug!(namespace = %ns, key = %key, "key overwritten with other bytes of the same meaning")
                        }
                        _ => {}
                    }
                    // What was just hashed is verified content: readers of a fresh upload
                    // (another developer, CI) are served from memory.
                    if let Some(bytes) = &content {
                        self.hot.remember_blob(&blob.hash, bytes);
                    }
                    return Ok(Stored { outcome, blob });
                }
                // Collected between our look and our commit; we still hold the content.
                Err(Error::BlobUnavailable(_)) if staged.is_some() => {
                    tokio::time::sleep(retry_delay(attempt)).await;
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::BlobUnavailable(hash))
    }

    /// Drops the in-memory entries: many keys changed at once (a purge, a deleted namespace).
    pub fn forget_hot_entries(&self) {
        self.hot.forget_all_entries();
    }

    /// Forgets which namespaces exist (after one was deleted).
    pub fn forget_namespaces(&self) {
        self.known_namespaces.write().unwrap_or_else(|e| e.into_inner()).clear();
        self.hot.forget_all_entries();
    }

    async fn ensure_namespace(&self, ns: &Namespace) -> Result<()> {
        let known = self
            .known_namespaces
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(ns.as_str());
        if !known {
            self.meta.ensure_namespace(ns.as_str(), unix_now()).await?;
            self.known_namespaces
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(ns.as_str().to_string());
        }
        Ok(())
    }

    /// Removes a key; `false` if it did not exist. The blob stays for other keys (or GC).
    pub async fn delete(&self, ns: &Namespace, key: &CacheKey) -> Result<bool> {
        let deleted = self.meta.delete_entry(ns.as_str(), key.as_str()).await;
        self.hot.forget_entry(ns.as_str(), key.as_str());
        deleted
    }

    /// Database and blob store both reachable.
    pub async fn check_ready(&self) -> Result<()> {
        self.meta.ping().await?;
        self.blobs.check_ready().await
    }
}

/// Re-reads an ageing hot entry off the request path (see [`crate::hot`]). On failure the
/// entry is left to expire, and the next request asks the database itself. (Gathering these
/// into one query per batch took fewer round trips but lengthened the benchmark's latency tail.)
fn spawn_refresh(meta: MetaStore, hot: Arc<HotCache>, ticket: RefreshTicket) {
    tokio::spawn(async move {
        match meta.lookup(&ticket.namespace, &ticket.key).await {
            Ok(found) => hot.complete_refresh(ticket, found.as_ref()),
            Err(e) => tracing::debug!(namespace = %ticket.namespace, error = %e, "could not refresh a hot entry"),
        }
    });
}

/// Drops a missing or corrupt blob and every entry pointing at it, off the request path.
/// The file goes first: a PUT racing with this either dedups against the old row (and its
/// entry is forgotten with it) or arrives after the row is gone and publishes a fresh file.
fn spawn_heal(meta: MetaStore, blobs: BlobStore, blob: BlobInfo) {
    tokio::spawn(async move {
        if let Err(e) = blobs.delete(&blob).await {
            tracing::warn!(blob = %blob.hash, error = %e, "could not delete unusable blob file");
        }
        match meta.forget_blob(&blob.hash).await {
            Ok(entries) => tracing::info!(blob = %blob.hash, entries, "forgot unusable blob"),
            Err(e) => tracing::warn!(blob = %blob.hash, error = %e, "could not forget unusable blob"),
        }
    });
}
