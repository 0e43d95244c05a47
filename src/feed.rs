//! The entry change feed: how a server learns that another process sharing its database (a
//! replica, the CLI) rewrote or deleted keys, so that its memory cache of entries
//! ([`crate::hot`]) can trust them for long instead of re-reading every hot key every couple
//! of seconds.
//!
//! Such changes are logged in `entry_changes` with the database's clock (the migrations say
//! which). Every [`POLL_INTERVAL`] the feed reads the changes logged since its previous poll,
//! less [`OVERLAP`]: a transaction commits a little after it logged its change, and an entry
//! read just before a change can be remembered just after the poll that dropped it, so every
//! change is applied on each poll for that long. Dropping an entry twice only costs a read.
//! Each poll also tells the memory cache that the feed is live; if polls fail (the database is
//! down) it stops being so, and entries are trusted for the short TTL only. After a gap longer
//! than the log is kept ([`RETENTION`]) the memory cache forgets every entry.

use crate::hot::HotCache;
use crate::meta::{EntryChange, MetaStore, MetadataStore};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often the feed asks for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How far back each poll reaches before the previous one (see the module documentation).
pub const OVERLAP: Duration = Duration::from_secs(5);
/// How long changes are kept in the log.
pub const RETENTION: Duration = Duration::from_secs(600);
/// Polls between two prunings of the log.
const PRUNE_EVERY: u32 = 60;

/// What the feed remembers between polls.
#[derive(Debug, Default)]
pub struct Feed {
    /// The database's clock at the start of the last successful poll.
    last_clock_ms: Option<i64>,
    polls: u32,
}

impl Feed {
    /// One poll: applies the changes to `hot` and marks the feed live.
    pub async fn poll(&mut self, meta: &MetaStore, hot: &HotCache) -> crate::Result<()> {
        let started = Instant::now();
        let clock = meta.clock_ms().await?;
        let overlap = OVERLAP.as_millis() as i64;
        let since = self.last_clock_ms.unwrap_or(clock) - overlap;
        let changes = meta.entry_changes(since).await?;
        let gap = self
            .last_clock_ms
            .is_some_and(|last| clock - last > (RETENTION - OVERLAP).as_millis() as i64);
        if gap {
            tracing::info!("the entry change feed was interrupted for longer than its log is kept; forgetting every entry held in memory");
            hot.forget_all_entries();
        }
        apply(&changes, hot);
        hot.feed_polled(started);
        self.last_clock_ms = Some(clock);
        self.polls += 1;
        if self.polls.is_multiple_of(PRUNE_EVERY) {
            // The poll itself worked; a failed pruning is tried again next time.
            if let Err(e) = meta.prune_entry_changes(clock - RETENTION.as_millis() as i64).await {
                tracing::debug!(error = %e, "pruning the entry change log failed");
            }
        }
        Ok(())
    }
}

/// Drops what the changes touched from the memory cache.
fn apply(changes: &[EntryChange], hot: &HotCache) {
    for change in changes {
        match (&change.namespace, &change.key) {
            (Some(namespace), Some(key)) => hot.forget_entry(namespace, key),
            (Some(namespace), None) => hot.forget_namespace(namespace),
            (None, _) => hot.forget_all_entries(),
        }
    }
}

/// Polls every [`POLL_INTERVAL`] until `shutdown`.
pub async fn run_feed(meta: MetaStore, hot: Arc<HotCache>, shutdown: CancellationToken) {
    let mut feed = Feed::default();
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        match feed.poll(&meta, &hot).await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("the entry change feed works again");
            }
            Ok(()) => {}
            // Once per outage: the database's own errors are reported where they happen.
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "the entry change feed failed; entries in memory are trusted for {:?} only until it works again", crate::hot::ENTRY_TTL);
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::{BlobInfo, Encoding};
    use crate::meta::{EntryRecord, NewEntry, PoolSettings};

    async fn store(dir: &std::path::Path) -> MetaStore {
        let url = format!("sqlite://{}", dir.join("hearth.db").display());
        let settings = PoolSettings {
            max_connections: 2,
            acquire_timeout: Duration::from_secs(10),
        };
        let meta = MetaStore::connect(&url, &settings).await.unwrap();
        meta.migrate().await.unwrap();
        meta
    }

    fn blob() -> BlobInfo {
        BlobInfo {
            meaning: None,
            hash: "a".repeat(64),
            encoding: Encoding::Raw,
            raw_size: 1,
            stored_size: 1,
        }
    }

    /// Stores `namespace/key` and remembers it in `hot`, as a GET would.
    async fn stored_and_remembered(meta: &MetaStore, hot: &HotCache, namespace: &str, key: &str) {
        let blob = blob();
        meta.ensure_namespace(namespace, 1).await.unwrap();
        meta.insert_pending_blob(&blob, 1).await.unwrap();
        let entry = NewEntry {
            namespace,
            key,
            blob: &blob,
            writer_token_id: None,
            now: 1,
        };
        meta.commit_entry(&entry).await.unwrap();
        let found: EntryRecord = meta.lookup(namespace, key).await.unwrap().unwrap();
        hot.remember_entry(&found);
    }

    #[tokio::test]
    async fn a_poll_drops_what_changed_elsewhere_and_makes_the_feed_live() {
        let dir = tempfile::tempdir().unwrap();
        let meta = store(dir.path()).await;
        let hot = HotCache::new(1 << 20);
        for (namespace, key) in [("ns", "deleted"), ("ns", "kept"), ("gone", "k")] {
            stored_and_remembered(&meta, &hot, namespace, key).await;
        }
        assert!(meta.delete_entry("ns", "deleted").await.unwrap());
        assert!(meta.delete_namespace("gone").await.unwrap());
        assert!(!hot.feed_live());

        Feed::default().poll(&meta, &hot).await.unwrap();
        assert!(hot.feed_live());
        assert!(hot.entry("ns", "deleted").is_none());
        assert!(hot.entry("gone", "k").is_none());
        assert!(hot.entry("ns", "kept").is_some(), "untouched keys stay");
        meta.close().await;
    }

    #[tokio::test]
    async fn after_a_gap_longer_than_the_log_every_entry_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let meta = store(dir.path()).await;
        let hot = HotCache::new(1 << 20);
        stored_and_remembered(&meta, &hot, "ns", "k").await;
        let clock = meta.clock_ms().await.unwrap();
        let mut feed = Feed {
            last_clock_ms: Some(clock - RETENTION.as_millis() as i64),
            polls: 0,
        };
        feed.poll(&meta, &hot).await.unwrap();
        assert!(hot.entry("ns", "k").is_none(), "changes may have been pruned unseen");

        stored_and_remembered(&meta, &hot, "ns", "k").await;
        feed.poll(&meta, &hot).await.unwrap();
        assert!(hot.entry("ns", "k").is_some(), "no gap between two polls");
        meta.close().await;
    }
}
