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
//!   Misses are never cached: an upload elsewhere is visible at once.

use crate::meta::EntryRecord;
use bytes::Bytes;
use quick_cache::sync::Cache;
use quick_cache::Weighter;
use std::time::{Duration, Instant};

/// How long a cached entry is trusted without asking the database again.
pub const ENTRY_TTL: Duration = Duration::from_secs(2);
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

/// The two caches; both off when the configured budget is zero.
pub struct HotCache {
    entries: Option<Cache<String, (EntryRecord, Instant)>>,
    blobs: Option<Cache<String, Bytes, ByLength>>,
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
            };
        }
        let estimated_blobs = (budget_bytes / (64 * 1024)).clamp(16, 1 << 20) as usize;
        HotCache {
            entries: Some(Cache::new(ENTRY_CAPACITY)),
            blobs: Some(Cache::with_weighter(estimated_blobs, budget_bytes, ByLength)),
        }
    }

    /// The entry, if seen within [`ENTRY_TTL`].
    pub fn entry(&self, namespace: &str, key: &str) -> Option<EntryRecord> {
        let entries = self.entries.as_ref()?;
        let cache_key = entry_key(namespace, key);
        let (entry, seen) = entries.get(&cache_key)?;
        if seen.elapsed() < ENTRY_TTL {
            Some(entry)
        } else {
            entries.remove(&cache_key);
            None
        }
    }

    /// Remembers an entry just read from the database.
    pub fn remember_entry(&self, entry: &EntryRecord) {
        if let Some(entries) = &self.entries {
            entries.insert(entry_key(&entry.namespace, &entry.key), (entry.clone(), Instant::now()));
        }
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
