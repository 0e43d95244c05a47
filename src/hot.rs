//! In-process caches of the read path, so that a hot GET costs no database round trip and no
//! file read. Each SQLite query crosses to sqlx's connection thread and back, and each file
//! read to the blocking pool: the profile of a 64 KiB GET-hit was dominated by those thread
//! hand-offs, not by the work itself.
//!
//! - **Blobs** (content hash → verified bytes, up to 1 MiB each, within a byte budget): blobs
//!   are content-addressed and immutable, so this cache is never stale.
//! - **Entries** ((namespace, key) → entry): a key can be rewritten or removed by this process
//!   (invalidated at once) or by another one (the CLI, or a replica sharing PostgreSQL). The
//!   other processes' changes arrive through the change feed ([`crate::feed`]), which drops
//!   the entries they touched within about a second. While the feed is live (its last poll
//!   started within [`FEED_MAX_LAG`]) an entry is trusted for [`FED_ENTRY_TTL`], a backstop
//!   for what the feed does not carry (evictions elsewhere, whose blobs outlive them by the GC
//!   grace period); when it is not (no feed, database down), for [`ENTRY_TTL`] only. Either
//!   way, what is served is the exact content some PUT stored under the key.
//!   An entry past its refresh age ([`FED_REFRESH_AFTER`] or [`ENTRY_REFRESH_AFTER`]) is still
//!   served, and the one request that finds it so gets a [`RefreshTicket`] to re-read it in the
//!   background: a key in steady use is renewed before it expires, so its readers never wait
//!   for the database. Without the feed that meant re-reading every hot key every 1.5 s (about
//!   1300 queries a second in the 64 KiB benchmark, 15 % of its throughput).
//!   Misses are never cached: an upload elsewhere is visible at once.

use crate::meta::EntryRecord;
use bytes::Bytes;
use quick_cache::sync::{Cache, EntryAction};
use quick_cache::Weighter;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a cached entry is trusted without asking the database again, when the change
/// feed is not live.
pub const ENTRY_TTL: Duration = Duration::from_secs(2);
/// From this age on, a cached entry is re-read in the background while it is still served.
pub const ENTRY_REFRESH_AFTER: Duration = Duration::from_millis(1500);
/// How long a cached entry is trusted while the change feed is live.
pub const FED_ENTRY_TTL: Duration = Duration::from_secs(60);
/// The refresh age of an entry while the change feed is live.
pub const FED_REFRESH_AFTER: Duration = Duration::from_secs(45);
/// The change feed is live while its last successful poll started at most this long ago: a
/// change made elsewhere before that start has been applied, so this bounds the staleness the
/// feed allows, as [`ENTRY_TTL`] does without it.
pub const FEED_MAX_LAG: Duration = ENTRY_TTL;
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

/// How long an entry is trusted, and from what age on it is refreshed.
#[derive(Clone, Copy, Debug)]
struct Lifetimes {
    ttl: Duration,
    refresh_after: Duration,
}

impl Lifetimes {
    fn new(ttl: Duration, refresh_after: Duration) -> Lifetimes {
        Lifetimes {
            ttl,
            refresh_after: refresh_after.min(ttl),
        }
    }
}

/// The two caches; both off when the configured budget is zero.
pub struct HotCache {
    entries: Option<Cache<String, CachedEntry>>,
    blobs: Option<Cache<String, Bytes, ByLength>>,
    /// Without a live change feed.
    unfed: Lifetimes,
    /// With a live change feed.
    fed: Lifetimes,
    /// The origin of `feed_polled_ms`.
    created: Instant,
    /// When the last successful feed poll started, in milliseconds after `created` plus one;
    /// zero before the first.
    feed_polled_ms: AtomicU64,
    /// [`FEED_MAX_LAG`], but for tests.
    feed_max_lag: Duration,
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
    let mut joined = String::with_capacity(namespace.len() + 1 + key.len());
    joined.push_str(namespace);
    joined.push('/');
    joined.push_str(key);
    joined
}

impl HotCache {
    /// Caches within `budget_bytes` of blob content; `0` turns both caches off.
    pub fn new(budget_bytes: u64) -> HotCache {
        let (entries, blobs) = if budget_bytes == 0 {
            (None, None)
        } else {
            let estimated_blobs = (budget_bytes / (64 * 1024)).clamp(16, 1 << 20) as usize;
            (
                Some(Cache::new(ENTRY_CAPACITY)),
                Some(Cache::with_weighter(estimated_blobs, budget_bytes, ByLength)),
            )
        };
        HotCache {
            entries,
            blobs,
            unfed: Lifetimes::new(ENTRY_TTL, ENTRY_REFRESH_AFTER),
            fed: Lifetimes::new(FED_ENTRY_TTL, FED_REFRESH_AFTER),
            created: Instant::now(),
            feed_polled_ms: AtomicU64::new(0),
            feed_max_lag: FEED_MAX_LAG,
        }
    }

    /// Other entry lifetimes than [`ENTRY_TTL`] and [`ENTRY_REFRESH_AFTER`] (tests).
    pub fn with_entry_lifetimes(mut self, ttl: Duration, refresh_after: Duration) -> HotCache {
        self.unfed = Lifetimes::new(ttl, refresh_after);
        self
    }

    /// Other entry lifetimes than [`FED_ENTRY_TTL`] and [`FED_REFRESH_AFTER`] (tests).
    pub fn with_fed_entry_lifetimes(mut self, ttl: Duration, refresh_after: Duration) -> HotCache {
        self.fed = Lifetimes::new(ttl, refresh_after);
        self
    }

    /// Another lag than [`FEED_MAX_LAG`] (tests).
    pub fn with_feed_max_lag(mut self, lag: Duration) -> HotCache {
        self.feed_max_lag = lag;
        self
    }

    /// The change feed applied every change logged before `started` (the start of its poll).
    pub fn feed_polled(&self, started: Instant) {
        let ms = started.saturating_duration_since(self.created).as_millis() as u64 + 1;
        self.feed_polled_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// True while the last successful feed poll started within [`FEED_MAX_LAG`].
    pub fn feed_live(&self) -> bool {
        match self.feed_polled_ms.load(Ordering::Relaxed) {
            0 => false,
            ms => {
                let polled = self.created + Duration::from_millis(ms - 1);
                polled.elapsed() <= self.feed_max_lag
            }
        }
    }

    /// The entry, if read from the database within the TTL; with a ticket to refresh it if
    /// it is old enough for that and nobody else holds that reading's ticket.
    pub fn entry(&self, namespace: &str, key: &str) -> Option<(EntryRecord, Option<RefreshTicket>)> {
        let entries = self.entries.as_ref()?;
        let cache_key = entry_key(namespace, key);
        let cached = entries.get(&cache_key)?;
        let age = cached.read_at.elapsed();
        let lifetimes = if self.feed_live() { self.fed } else { self.unfed };
        if age >= lifetimes.ttl {
            entries.remove(&cache_key);
            return None;
        }
        let ticket =
            (age >= lifetimes.refresh_after && !cached.refresh_taken.swap(true, Ordering::Relaxed)).then(|| {
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

    /// Every key of a namespace may have changed (it was deleted elsewhere).
    pub fn forget_namespace(&self, namespace: &str) {
        if let Some(entries) = &self.entries {
            entries.retain(|_, cached| cached.entry.namespace != namespace);
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
                meaning: None,
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
    fn a_live_feed_extends_the_trust_and_a_stale_one_withdraws_it() {
        let hot = HotCache::new(1 << 20)
            .with_entry_lifetimes(Duration::ZERO, Duration::ZERO)
            .with_fed_entry_lifetimes(Duration::from_secs(60), Duration::from_secs(60));
        hot.remember_entry(&entry("a"));
        assert!(!hot.feed_live(), "no poll yet");
        assert!(hot.entry("ns", "a").is_none(), "the short TTL without a feed");

        hot.remember_entry(&entry("a"));
        hot.feed_polled(Instant::now());
        assert!(hot.feed_live());
        let (_, ticket) = hot.entry("ns", "a").expect("trusted while the feed is live");
        assert!(ticket.is_none(), "and not yet due for a refresh");

        // A poll that started longer ago than the allowed lag no longer vouches for anything.
        let hot = hot.with_feed_max_lag(Duration::from_millis(10));
        std::thread::sleep(Duration::from_millis(20));
        assert!(!hot.feed_live());
        assert!(hot.entry("ns", "a").is_none());
    }

    #[test]
    fn a_namespace_is_forgotten_alone() {
        let hot = HotCache::new(1 << 20);
        hot.remember_entry(&entry("a"));
        let mut elsewhere = entry("a");
        elsewhere.namespace = "other".into();
        hot.remember_entry(&elsewhere);
        hot.forget_namespace("ns");
        assert!(hot.entry("ns", "a").is_none());
        assert!(hot.entry("other", "a").is_some());
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
