//! In-process caches of the read path, so that a hot GET costs no database round trip and no
//! file read. Each SQLite query crosses to sqlx's connection thread and back, and each file
//! read to the blocking pool: the profile of a 64 KiB GET-hit was dominated by those thread
//! hand-offs, not by the work itself.
//!
//! - **Blobs** (content hash → verified bytes, up to 1 MiB each, within a byte budget): blobs
//!   are content-addressed and immutable, so this cache is never stale.
//! - **Entries** ((namespace, key) → entry): a key can be rewritten or removed by this process
//!   (invalidated at once) or by another one (the CLI, or a replica sharing PostgreSQL), so an
//!   entry is trusted for [`ENTRY_TTL`] only. For that long another process's change may go
//!   unseen here; what is served is still the exact content some PUT stored under the key.
//!   An entry older than [`ENTRY_REFRESH_AFTER`] is still served, and the one request that
//!   finds it so gets a [`RefreshTicket`] to re-read it in the background: a key in steady use
//!   is renewed before it expires, so its readers never wait for the database, while the bound
//!   on staleness stays [`ENTRY_TTL`].
//!   Misses are never cached: an upload elsewhere is visible at once.

use crate::meta::EntryRecord;
use bytes::Bytes;
use quick_cache::sync::{Cache, EntryAction};
use quick_cache::Weighter;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a cached entry is trusted without asking the database again.
pub const ENTRY_TTL: Duration = Duration::from_secs(2);
/// From this age on, a cached entry is re-read in the background while it is still served.
pub const ENTRY_REFRESH_AFTER: Duration = Duration::from_millis(1500);
/// Entries remembered (each ~300 bytes).
const ENTRY_CAPACITY: usize = 100_000;
/// Blobs larger than this are streamed from the store, never cached.
pub const MAX_CACHED_BLOB: usize = 1 << 20;

#[derive(Clone)]
struct ByLength;

impl Weighter<String, Bytes> for ByLength {
    fn weight(&self, key: &String, bytes: &Bytes) -> u64 {
        (key.len() + bytes.len()) as u64
    }
}

/// An entry as read from the database, and when.
#[derive(Clone)]
struct CachedEntry {
    entry: EntryRecord,
    read_at: Instant,
    /// Set by the request that takes the refresh; shared by the clones the cache hands out,
    /// and identifies this reading: a refresh only replaces the reading it was issued for.
    refresh_taken: Arc<AtomicBool>,
}

impl CachedEntry {
    fn new(entry: EntryRecord) -> CachedEntry {
        CachedEntry {
            entry,
            read_at: Instant::now(),
            refresh_taken: Arc::default(),
        }
    }
}

/// The right, held by one caller at a time, to re-read an ageing entry and hand the result to
/// [`HotCache::complete_refresh`].
#[derive(Debug)]
pub struct RefreshTicket {
    pub namespace: String,
    pub key: String,
    reading: Arc<AtomicBool>,
}

/// The two caches; both off when the configured budget is zero.
pub struct HotCache {
    entries: Option<Cache<String, CachedEntry>>,
    blobs: Option<Cache<String, Bytes, ByLength>>,
    entry_ttl: Duration,
    entry_refresh_after: Duration,
}

impl std::fmt::Debug for HotCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotCache")
            .field("enabled", &self.entries.is_some())
            .finish()
    }
}

fn entry_key(namespace: &str, key: &str) -> String {
    // Namespaces never contain '/', so this is unambiguous.
    format!("{namespace}/{key}")
}

impl HotCache {
    /// Caches within `budget_bytes` of blob content; `0` turns both caches off.
    pub fn new(budget_bytes: u64) -> HotCache {
        if budget_bytes == 0 {
            return HotCache {
                entries: None,
                blobs: None,
                entry_ttl: ENTRY_TTL,
                entry_refresh_after: ENTRY_REFRESH_AFTER,
            };
        }
        let estimated_blobs = (budget_bytes / (64 * 1024)).clamp(16, 1 << 20) as usize;
        HotCache {
            entries: Some(Cache::new(ENTRY_CAPACITY)),
            blobs: Some(Cache::with_weighter(estimated_blobs, budget_bytes, ByLength)),
            entry_ttl: ENTRY_TTL,
            entry_refresh_after: ENTRY_REFRESH_AFTER,
        }
    }

    /// Other entry lifetimes than [`ENTRY_TTL`] and [`ENTRY_REFRESH_AFTER`] (tests).
    pub fn with_entry_lifetimes(mut self, ttl: Duration, refresh_after: Duration) -> HotCache {
        self.entry_ttl = ttl;
        self.entry_refresh_after = refresh_after.min(ttl);
        self
    }

    /// The entry, if read from the database within the TTL; with a ticket to refresh it if
    /// it is old enough for that and nobody else holds that reading's ticket.
    pub fn entry(&self, namespace: &str, key: &str) -> Option<(EntryRecord, Option<RefreshTicket>)> {
        let entries = self.entries.as_ref()?;
        let cache_key = entry_key(namespace, key);
        let cached = entries.get(&cache_key)?;
        let age = cached.read_at.elapsed();
        if age >= self.entry_ttl {
            entries.remove(&cache_key);
            return None;
        }
        let ticket =
            (age >= self.entry_refresh_after && !cached.refresh_taken.swap(true, Ordering::Relaxed)).then(|| {
                RefreshTicket {
                    namespace: namespace.to_string(),
                    key: key.to_string(),
                    reading: cached.refresh_taken.clone(),
                }
            });
        Some((cached.entry, ticket))
    }

    /// Remembers an entry just read from the database.
    pub fn remember_entry(&self, entry: &EntryRecord) {
        if let Some(entries) = &self.entries {
            entries.insert(entry_key(&entry.namespace, &entry.key), CachedEntry::new(entry.clone()));
        }
    }

    /// Hands in what the database said for a ticket's key. It replaces the reading the ticket
    /// was issued for, and nothing else: if the key was forgotten (written or deleted here) or
    /// read afresh meanwhile, the refresh may predate that change and is dropped.
    pub fn complete_refresh(&self, ticket: RefreshTicket, found: Option<&EntryRecord>) {
        let Some(entries) = &self.entries else { return };
        // A vacant key yields a placeholder guard, dropped unfilled: nothing is inserted.
        let _ = entries.entry(&entry_key(&ticket.namespace, &ticket.key), None, |_, cached| {
            if !Arc::ptr_eq(&cached.refresh_taken, &ticket.reading) {
                return EntryAction::Retain(());
            }
            match found {
                Some(entry) => {
                    *cached = CachedEntry::new(entry.clone());
                    EntryAction::Retain(())
                }
                None => EntryAction::Remove,
            }
        });
    }

    /// The key was written or deleted by this process.
    pub fn forget_entry(&self, namespace: &str, key: &str) {
        if let Some(entries) = &self.entries {
            entries.remove(&entry_key(namespace, key));
        }
    }

    /// Many keys may have changed (a namespace deleted, a blob forgotten).
    pub fn forget_all_entries(&self) {
        if let Some(entries) = &self.entries {
            entries.clear();
        }
    }

    /// The verified content of a blob.
    pub fn blob(&self, hash: &str) -> Option<Bytes> {
        self.blobs.as_ref()?.get(hash)
    }

    /// Remembers verified content (only small blobs: large ones stream).
    pub fn remember_blob(&self, hash: &str, bytes: &Bytes) {
        if let Some(blobs) = &self.blobs {
            if bytes.len() <= MAX_CACHED_BLOB {
                blobs.insert(hash.to_string(), bytes.clone());
            }
        }
    }

    /// The blob turned out missing or corrupt in the store.
    pub fn forget_blob(&self, hash: &str) {
        if let Some(blobs) = &self.blobs {
            blobs.remove(hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::{BlobInfo, Encoding};

    fn entry(key: &str) -> EntryRecord {
        EntryRecord {
            namespace: "ns".into(),
            key: key.into(),
            blob: BlobInfo {
                hash: "h".repeat(64),
                encoding: Encoding::Raw,
                raw_size: 3,
                stored_size: 3,
            },
            writer_token_id: None,
            created_at: 0,
            last_access_at: 0,
            hit_count: 0,
        }
    }

    #[test]
    fn entries_expire_and_can_be_forgotten() {
        let hot = HotCache::new(1 << 20);
        hot.remember_entry(&entry("a"));
        assert!(hot.entry("ns", "a").is_some());
        assert!(hot.entry("other", "a").is_none());
        hot.forget_entry("ns", "a");
        assert!(hot.entry("ns", "a").is_none());
        hot.remember_entry(&entry("b"));
        hot.forget_all_entries();
        assert!(hot.entry("ns", "b").is_none());
    }

    #[test]
    fn an_ageing_entry_is_served_and_refreshed_by_one_caller() {
        // Refresh age zero: every reading is old enough at once.
        let hot = HotCache::new(1 << 20).with_entry_lifetimes(Duration::from_secs(60), Duration::ZERO);
        hot.remember_entry(&entry("a"));
        let (served, ticket) = hot.entry("ns", "a").unwrap();
        assert_eq!(served.key, "a");
        let ticket = ticket.expect("the first caller refreshes");
        let (_, second) = hot.entry("ns", "a").unwrap();
        assert!(second.is_none(), "one refresh per reading");

        let mut renewed = entry("a");
        renewed.hit_count = 7;
        hot.complete_refresh(ticket, Some(&renewed));
        let (served, ticket) = hot.entry("ns", "a").unwrap();
        assert_eq!(served.hit_count, 7, "the refresh replaced the reading");
        assert!(ticket.is_some(), "a new reading, refreshable again");
    }

    #[test]
    fn a_refresh_that_finds_nothing_drops_the_entry() {
        let hot = HotCache::new(1 << 20).with_entry_lifetimes(Duration::from_secs(60), Duration::ZERO);
        hot.remember_entry(&entry("a"));
        let (_, ticket) = hot.entry("ns", "a").unwrap();
        hot.complete_refresh(ticket.unwrap(), None);
        assert!(hot.entry("ns", "a").is_none());
    }

    #[test]
    fn a_refresh_never_overrides_a_later_change() {
        let hot = HotCache::new(1 << 20).with_entry_lifetimes(Duration::from_secs(60), Duration::ZERO);
        let mut old = entry("a");
        old.hit_count = 1;
        // Forgotten (a PUT here) while the refresh was out: it must not come back.
        hot.remember_entry(&entry("a"));
        let (_, ticket) = hot.entry("ns", "a").unwrap();
        hot.forget_entry("ns", "a");
        hot.complete_refresh(ticket.unwrap(), Some(&old));
        assert!(hot.entry("ns", "a").is_none(), "a forgotten key is not resurrected");

        // Read afresh meanwhile: the newer reading stays.
        hot.remember_entry(&entry("a"));
        let (_, ticket) = hot.entry("ns", "a").unwrap();
        let mut newer = entry("a");
        newer.hit_count = 2;
        hot.remember_entry(&newer);
        hot.complete_refresh(ticket.unwrap(), Some(&old));
        assert_eq!(hot.entry("ns", "a").unwrap().0.hit_count, 2);
    }

    #[test]
    fn an_entry_past_its_ttl_is_not_served() {
        let hot = HotCache::new(1 << 20).with_entry_lifetimes(Duration::ZERO, Duration::ZERO);
        hot.remember_entry(&entry("a"));
        assert!(hot.entry("ns", "a").is_none());
    }

    #[test]
    fn blobs_stay_within_the_budget_and_large_ones_are_not_kept() {
        let hot = HotCache::new(256 * 1024);
        for i in 0..16 {
            hot.remember_blob(&format!("{i:064}"), &Bytes::from(vec![0u8; 64 * 1024]));
        }
        let kept = (0..16).filter(|i| hot.blob(&format!("{i:064}")).is_some()).count();
        assert!((1..=4).contains(&kept), "{kept} blobs of 64 KiB kept in 256 KiB");
        hot.remember_blob("big", &Bytes::from(vec![0u8; MAX_CACHED_BLOB + 1]));
        assert!(hot.blob("big").is_none());
    }

    #[test]
    fn a_zero_budget_turns_caching_off() {
        let hot = HotCache::new(0);
        hot.remember_entry(&entry("a"));
        hot.remember_blob("x", &Bytes::from_static(b"abc"));
        assert!(hot.entry("ns", "a").is_none());
        assert!(hot.blob("x").is_none());
    }
}
