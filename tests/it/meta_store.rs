//! Conformance of the two `MetadataStore` implementations: every operation, run against a
//! fresh SQLite file and a fresh PostgreSQL database with the same exact assertions; a
//! concurrency test; and a check that the two migration folders stay in lockstep.
use crate::common;

use common::{Db, TestDb};
use hearth::blob::{BlobInfo, Encoding};
use hearth::meaning::Meaning;
use hearth::meta::{
    AccessUpdate, BlobRow, BlobState, Counters, EntryRecord, Evicted, MetaStore, MetadataStore, NamespaceRow, NewEntry,
    PoolSettings, PutOutcome, Rewrite, StatsBatch, StatsRow,
};
use hearth::Error;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn pool_settings() -> PoolSettings {
    PoolSettings {
        max_connections: 4,
        acquire_timeout: Duration::from_secs(30),
    }
}

/// A migrated store on a fresh database.
struct Fixture {
    _dir: TempDir,
    db: TestDb,
    store: MetaStore,
}

impl Fixture {
    async fn new(db: Db) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = TestDb::create(db, dir.path()).await;
        let store = MetaStore::connect(&db.url, &pool_settings()).await.expect("connect");
        store.migrate().await.expect("migrate");
        Fixture { _dir: dir, db, store }
    }

    async fn finish(self) {
        self.store.close().await;
        self.db.drop_database().await;
    }
}

/// A realistic content address.
fn hash(tag: &str) -> String {
    blake3::hash(tag.as_bytes()).to_hex().to_string()
}

fn blob(tag: &str, raw_size: u64, stored_size: u64, encoding: Encoding) -> BlobInfo {
    BlobInfo {
        meaning: None,
        hash: hash(tag),
        raw_size,
        stored_size,
        encoding,
    }
}

fn entry<'a>(namespace: &'a str, key: &'a str, blob: &'a BlobInfo, now: i64) -> NewEntry<'a> {
    NewEntry {
        namespace,
        key,
        blob,
        writer_token_id: None,
        now,
    }
}

/// Runs a statement of test-controlled SQL on the store's own pool; returns rows affected.
async fn exec(store: &MetaStore, sql: &str) -> u64 {
    let done = match store {
        MetaStore::Sqlite(s) => sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(s.pool())
            .await
            .map(|r| r.rows_affected()),
        MetaStore::Postgres(s) => sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(s.pool())
            .await
            .map(|r| r.rows_affected()),
    };
    done.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Runs a query returning one BIGINT.
async fn scalar(store: &MetaStore, sql: &str) -> i64 {
    let value = match store {
        MetaStore::Sqlite(s) => {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
                .fetch_one(s.pool())
                .await
        }
        MetaStore::Postgres(s) => {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
                .fetch_one(s.pool())
                .await
        }
    };
    value.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn set_blob_state(store: &MetaStore, hash: &str, state: &str) {
    assert_eq!(
        exec(
            store,
            &format!("UPDATE blobs SET state = '{state}' WHERE hash = '{hash}'")
        )
        .await,
        1
    );
}

/// Inserts a token row (columns per the migration) and returns its id.
async fn insert_token(store: &MetaStore, namespace: Option<&str>, secret_hash: &str, label: &str) -> i64 {
    let namespace = namespace.map_or("NULL".to_string(), |n| format!("'{n}'"));
    exec(
        store,
        &format!(
            "INSERT INTO tokens (namespace, scope, secret_hash, label, created_at) \
             VALUES ({namespace}, 'write', '{secret_hash}', '{label}', 1)"
        ),
    )
    .await;
    scalar(
        store,
        &format!("SELECT id FROM tokens WHERE secret_hash = '{secret_hash}'"),
    )
    .await
}

/// Every connection is back in the pool (they are returned by a spawned task: allow a moment).
/// How many times `store`'s writer has been held for `work` (`hearth_db_writer_hold_seconds`).
fn writer_holds(store: &MetaStore, work: &str) -> u64 {
    store
        .writer_holds()
        .collector()
        .with_label_values(&[work])
        .get_sample_count()
}

async fn assert_pool_idle(store: &MetaStore) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.pool_in_use() != 0 {
        assert!(
            Instant::now() < deadline,
            "{} connections never returned to the pool",
            store.pool_in_use()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn counters(seed: i64) -> Counters {
    Counters {
        hits: seed,
        misses: seed * 2 + 1,
        writes: seed * 3 + 2,
        bytes_served: seed * 1_000_000_007,
        bytes_received: seed * 5_000_000_011,
        errors: seed + 3,
        conflicting_writes: seed + 4,
        same_meaning_writes: seed + 5,
        misses_evicted: 0,
    }
}

fn sum(a: Counters, b: Counters) -> Counters {
    let mut total = a;
    total.add(&b);
    total
}

fn stats_row(namespace: &str, hour: i64, token_label: &str, counters: Counters) -> StatsRow {
    StatsRow {
        namespace: namespace.into(),
        hour,
        token_label: token_label.into(),
        counters,
    }
}

fn access(namespace: &str, key: &str, last_access_at: i64, hits: i64) -> AccessUpdate {
    AccessUpdate {
        namespace: namespace.into(),
        key: key.into(),
        last_access_at,
        hits,
    }
}

const HOUR: i64 = 3600;
/// Some hour in 2024, as the stats flusher would write it.
const H0: i64 = 1_718_000_000 / HOUR * HOUR;

// ---------------------------------------------------------------------------------------------
// Conformance story
// ---------------------------------------------------------------------------------------------

/// migrate() twice, ping(), close().
async fn lifecycle(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let test_db = TestDb::create(db, dir.path()).await;
    let store = MetaStore::connect(&test_db.url, &pool_settings())
        .await
        .expect("connect");
    assert_eq!(store.kind(), if db == Db::Sqlite { "sqlite" } else { "postgres" });

    store.migrate().await.expect("first migrate");
    store.migrate().await.expect("second migrate is a no-op");
    let applied = scalar(&store, "SELECT COUNT(*) FROM _sqlx_migrations WHERE success").await;
    assert_eq!(applied as usize, migration_files("sqlite").len());

    // A second store on the same database also migrates cleanly (a restarted server).
    let other = MetaStore::connect(&test_db.url, &pool_settings())
        .await
        .expect("connect again");
    other.migrate().await.expect("migrate from a second pool");
    other.close().await;
    assert_eq!(scalar(&store, "SELECT COUNT(*) FROM _sqlx_migrations").await, applied);

    store.ping().await.expect("ping");
    store.ensure_namespace("still-there", 1).await.unwrap();
    assert_pool_idle(&store).await;

    store.close().await;
    assert!(store.ping().await.is_err(), "a closed store refuses work");
    assert!(store.namespace("still-there").await.is_err());

    // The data survives the pool.
    let reopened = MetaStore::connect(&test_db.url, &pool_settings()).await.unwrap();
    reopened.migrate().await.unwrap();
    assert!(reopened.namespace("still-there").await.unwrap().is_some());
    reopened.close().await;
    test_db.drop_database().await;
}

async fn namespaces(db: Db) {
    let f = Fixture::new(db).await;
    let s = &f.store;

    assert_eq!(s.namespace("alpha").await.unwrap(), None);
    assert_eq!(s.list_namespaces().await.unwrap(), vec![]);

    // ensure_namespace: defaults, idempotent, never overwrites.
    s.ensure_namespace("alpha", 100).await.unwrap();
    s.ensure_namespace("alpha", 200).await.unwrap();
    let alpha = NamespaceRow {
        name: "alpha".into(),
        quota_bytes: None,
        anonymous_read: false,
        created_at: 100,
    };
    assert_eq!(s.namespace("alpha").await.unwrap(), Some(alpha.clone()));

    // create_namespace: true then false, first settings kept.
    let beta = NamespaceRow {
        name: "beta".into(),
        quota_bytes: Some(5 << 40), // beyond 32 bits
        anonymous_read: true,
        created_at: 300,
    };
    assert!(s.create_namespace(&beta).await.unwrap());
    let beta_again = NamespaceRow {
        quota_bytes: Some(1),
        anonymous_read: false,
        created_at: 999,
        ..beta.clone()
    };
    assert!(!s.create_namespace(&beta_again).await.unwrap());
    assert!(
        !s.create_namespace(&alpha).await.unwrap(),
        "ensure_namespace created alpha"
    );
    s.ensure_namespace("beta", 400).await.unwrap();
    assert_eq!(s.namespace("beta").await.unwrap(), Some(beta.clone()));

    // Another one with quota 0 (not NULL) to check both distinct from None.
    let zero = NamespaceRow {
        name: "a.b_c-0".into(),
        quota_bytes: Some(0),
        anonymous_read: false,
        created_at: 1,
    };
    assert!(s.create_namespace(&zero).await.unwrap());
    s.ensure_namespace("0-first", 7).await.unwrap();
    s.ensure_namespace("gamma", 8).await.unwrap();

    // list_namespaces: sorted by name.
    let names: Vec<String> = s.list_namespaces().await.unwrap().into_iter().map(|n| n.name).collect();
    assert_eq!(names, ["0-first", "a.b_c-0", "alpha", "beta", "gamma"]);
    let listed = s.list_namespaces().await.unwrap();
    assert_eq!(listed[1], zero);
    assert_eq!(listed[2], alpha);
    assert_eq!(listed[3], beta);

    // delete_namespace removes the namespace, its entries and its tokens; blobs stay.
    let shared = blob("shared", 10, 10, Encoding::Raw);
    let own = blob("beta only", 20, 7, Encoding::Zstd);
    s.insert_pending_blob(&shared, 1).await.unwrap();
    s.insert_pending_blob(&own, 1).await.unwrap();
    s.commit_entry(&entry("alpha", "k1", &shared, 2)).await.unwrap();
    s.commit_entry(&entry("beta", "k1", &shared, 2)).await.unwrap();
    s.commit_entry(&entry("beta", "k2", &own, 2)).await.unwrap();
    insert_token(s, Some("beta"), "secret-beta", "ci").await;
    let global = insert_token(s, None, "secret-global", "admin").await;

    assert!(s.delete_namespace("beta").await.unwrap());
    assert_eq!(s.namespace("beta").await.unwrap(), None);
    assert_eq!(s.lookup("beta", "k1").await.unwrap(), None);
    assert_eq!(s.lookup("beta", "k2").await.unwrap(), None);
    assert_eq!(
        scalar(s, "SELECT COUNT(*) FROM entries WHERE namespace = 'beta'").await,
        0
    );
    assert_eq!(
        scalar(s, "SELECT COUNT(*) FROM tokens WHERE namespace = 'beta'").await,
        0,
        "tokens cascade"
    );
    assert_eq!(scalar(s, "SELECT COUNT(*) FROM tokens").await, 1);
    assert_eq!(scalar(s, "SELECT id FROM tokens").await, global);
    assert_eq!(
        s.lookup("alpha", "k1").await.unwrap().map(|e| e.blob),
        Some(shared.clone()),
        "other namespaces intact"
    );
    assert_eq!(
        s.blob(&own.hash).await.unwrap().map(|b| b.state),
        Some(BlobState::Valid),
        "GC's job, not ours"
    );
    assert!(!s.delete_namespace("beta").await.unwrap());
    assert!(!s.delete_namespace("never-existed").await.unwrap());
    let names: Vec<String> = s.list_namespaces().await.unwrap().into_iter().map(|n| n.name).collect();
    assert_eq!(names, ["0-first", "a.b_c-0", "alpha", "gamma"]);

    // A deleted namespace can be re-created from scratch.
    s.ensure_namespace("beta", 500).await.unwrap();
    assert_eq!(
        s.namespace("beta").await.unwrap(),
        Some(NamespaceRow {
            name: "beta".into(),
            quota_bytes: None,
            anonymous_read: false,
            created_at: 500
        })
    );
    assert_eq!(s.lookup("beta", "k1").await.unwrap(), None);
    f.finish().await;
}

async fn blobs(db: Db) {
    let f = Fixture::new(db).await;
    let s = &f.store;

    assert_eq!(s.blob(&hash("unknown")).await.unwrap(), None);

    let raw = blob("raw", 1234, 1234, Encoding::Raw);
    let zstd = blob("zstd", 6_000_000_000, 4_500_000_001, Encoding::Zstd); // > 32 bits
    let empty = blob("", 0, 0, Encoding::Raw);
    s.insert_pending_blob(&raw, 10).await.unwrap();
    s.insert_pending_blob(&zstd, 11).await.unwrap();
    s.insert_pending_blob(&empty, 12).await.unwrap();
    assert_eq!(
        s.blob(&raw.hash).await.unwrap(),
        Some(BlobRow {
            info: raw.clone(),
            state: BlobState::Pending,
            created_at: 10,
            last_referenced_at: 10
        })
    );
    assert_eq!(
        s.blob(&zstd.hash).await.unwrap(),
        Some(BlobRow {
            info: zstd.clone(),
            state: BlobState::Pending,
            created_at: 11,
            last_referenced_at: 11
        })
    );
    assert_eq!(
        s.blob(&empty.hash).await.unwrap(),
        Some(BlobRow {
            info: empty.clone(),
            state: BlobState::Pending,
            created_at: 12,
            last_referenced_at: 12
        })
    );

    // A second claim of a pending blob keeps what was recorded but resets its age, so that
    // garbage collection (which takes only old pending rows) leaves the new upload alone.
    let imposter = BlobInfo {
        meaning: None,
        hash: raw.hash.clone(),
        raw_size: 1,
        stored_size: 1,
        encoding: Encoding::Zstd,
    };
    assert!(s.insert_pending_blob(&imposter, 99).await.unwrap());
    assert!(s.insert_pending_blob(&raw, 99).await.unwrap());
    assert_eq!(
        s.blob(&raw.hash).await.unwrap(),
        Some(BlobRow {
            info: raw.clone(),
            state: BlobState::Pending,
            created_at: 99,
            last_referenced_at: 10
        })
    );

    // ... nor does it demote a valid blob back to pending, or revive a deleting one.
    s.ensure_namespace("ns", 1).await.unwrap();
    s.commit_entry(&entry("ns", "k", &zstd, 20)).await.unwrap();
    assert!(
        !s.insert_pending_blob(&zstd, 30).await.unwrap(),
        "a valid blob is not claimable"
    );
    assert_eq!(
        s.blob(&zstd.hash).await.unwrap(),
        Some(BlobRow {
            info: zstd.clone(),
            state: BlobState::Valid,
            created_at: 11,
            last_referenced_at: 20
        })
    );
    set_blob_state(s, &empty.hash, "deleting").await;
    assert!(
        !s.insert_pending_blob(&empty, 30).await.unwrap(),
        "a deleting blob is not claimable"
    );
    assert_eq!(s.blob(&empty.hash).await.unwrap().unwrap().state, BlobState::Deleting);

    assert_eq!(scalar(s, "SELECT COUNT(*) FROM blobs").await, 3);
    f.finish().await;
}

async fn commit_entry(db: Db) {
    let f = Fixture::new(db).await;
    let s = &f.store;
    s.ensure_namespace("ns", 1).await.unwrap();
    let b1 = blob("one", 100, 100, Encoding::Raw);
    let b2 = blob("two", 20_000, 3_000, Encoding::Zstd);
    s.insert_pending_blob(&b1, 5).await.unwrap();
    s.insert_pending_blob(&b2, 5).await.unwrap();

    // First write: created, blob valid and referenced now.
    assert_eq!(
        s.commit_entry(&entry("ns", "k", &b1, 10)).await.unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        s.blob(&b1.hash).await.unwrap(),
        Some(BlobRow {
            info: b1.clone(),
            state: BlobState::Valid,
            created_at: 5,
            last_referenced_at: 10
        })
    );
    assert_eq!(
        s.blob(&b2.hash).await.unwrap().unwrap().state,
        BlobState::Pending,
        "other blobs untouched"
    );
    let record = EntryRecord {
        namespace: "ns".into(),
        key: "k".into(),
        blob: b1.clone(),
        writer_token_id: None,
        created_at: 10,
        last_access_at: 10,
        hit_count: 0,
    };
    assert_eq!(s.lookup("ns", "k").await.unwrap(), Some(record.clone()));

    // Hits accumulate, then the same content is written again.
    s.apply_stats(&StatsBatch {
        counters: vec![],
        accesses: vec![access("ns", "k", 15, 4)],
        missed: vec![],
        token_uses: vec![],
    })
    .await
    .unwrap();
    assert_eq!(
        s.commit_entry(&entry("ns", "k", &b1, 20)).await.unwrap(),
        PutOutcome::Replaced(Rewrite::Identical)
    );
    // A rewrite refreshes the entry's times and keeps its hit count.
    let rewritten = EntryRecord {
        created_at: 20,
        last_access_at: 20,
        hit_count: 4,
        ..record.clone()
    };
    assert_eq!(s.lookup("ns", "k").await.unwrap(), Some(rewritten.clone()));
    assert_eq!(s.blob(&b1.hash).await.unwrap().unwrap().last_referenced_at, 20);

    // Different content under the same key: conflicting.
    assert_eq!(
        s.commit_entry(&entry("ns", "k", &b2, 30)).await.unwrap(),
        PutOutcome::Replaced(Rewrite::Conflicting)
    );
    let replaced = EntryRecord {
        blob: b2.clone(),
        created_at: 30,
        last_access_at: 30,
        ..rewritten.clone()
    };
    assert_eq!(s.lookup("ns", "k").await.unwrap(), Some(replaced));
    assert_eq!(s.blob(&b2.hash).await.unwrap().unwrap().state, BlobState::Valid);
    assert_eq!(
        s.blob(&b1.hash).await.unwrap().unwrap().state,
        BlobState::Valid,
        "still valid, now unreferenced"
    );
    assert_eq!(
        scalar(s, "SELECT size FROM entries WHERE key = 'k'").await,
        20_000,
        "entry size is the raw size"
    );
    // And back: conflicting again.
    assert_eq!(
        s.commit_entry(&entry("ns", "k", &b1, 40)).await.unwrap(),
        PutOutcome::Replaced(Rewrite::Conflicting)
    );

    // Same blob under another key (dedup) and in another namespace: each is a new entry.
    s.ensure_namespace("other", 1).await.unwrap();
    assert_eq!(
        s.commit_entry(&entry("ns", "k-dup", &b1, 41)).await.unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        s.commit_entry(&entry("other", "k", &b1, 42)).await.unwrap(),
        PutOutcome::Created
    );
    assert_eq!(s.lookup("other", "k").await.unwrap().unwrap().blob, b1);
    assert_eq!(scalar(s, "SELECT COUNT(*) FROM entries").await, 3);

    // writer_token_id round-trips, and is replaced (not merged) by the next writer.
    let token = insert_token(s, Some("ns"), "secret-1", "ci").await;
    let by_token = NewEntry {
        writer_token_id: Some(token),
        ..entry("ns", "written", &b2, 50)
    };
    assert_eq!(s.commit_entry(&by_token).await.unwrap(), PutOutcome::Created);
    assert_eq!(
        s.lookup("ns", "written").await.unwrap().unwrap().writer_token_id,
        Some(token)
    );
    assert_eq!(
        s.commit_entry(&entry("ns", "written", &b2, 51)).await.unwrap(),
        PutOutcome::Replaced(Rewrite::Identical)
    );
    assert_eq!(s.lookup("ns", "written").await.unwrap().unwrap().writer_token_id, None);
    assert_eq!(
        s.commit_entry(&by_token).await.unwrap(),
        PutOutcome::Replaced(Rewrite::Identical)
    );
    // Deleting the token keeps the entry, forgetting who wrote it.
    assert_eq!(exec(s, &format!("DELETE FROM tokens WHERE id = {token}")).await, 1);
    let after = s.lookup("ns", "written").await.unwrap().unwrap();
    assert_eq!((after.writer_token_id, after.blob), (None, b2.clone()));

    // No blob row: unavailable, nothing written.
    let ghost = blob("ghost", 1, 1, Encoding::Raw);
    match s.commit_entry(&entry("ns", "ghost", &ghost, 60)).await {
        Err(Error::BlobUnavailable(h)) => assert_eq!(h, ghost.hash),
        other => panic!("expected BlobUnavailable, got {other:?}"),
    }
    assert_eq!(s.lookup("ns", "ghost").await.unwrap(), None);
    assert_eq!(s.blob(&ghost.hash).await.unwrap(), None);
    assert_eq!(scalar(s, "SELECT COUNT(*) FROM entries WHERE key = 'ghost'").await, 0);

    // A blob being deleted: unavailable, state kept, existing key not repointed.
    let doomed = blob("doomed", 2, 2, Encoding::Raw);
    s.insert_pending_blob(&doomed, 61).await.unwrap();
    set_blob_state(s, &doomed.hash, "deleting").await;
    match s.commit_entry(&entry("ns", "k", &doomed, 62)).await {
        Err(Error::BlobUnavailable(h)) => assert_eq!(h, doomed.hash),
        other => panic!("expected BlobUnavailable, got {other:?}"),
    }
    assert_eq!(
        s.blob(&doomed.hash).await.unwrap(),
        Some(BlobRow {
            info: doomed.clone(),
            state: BlobState::Deleting,
            created_at: 61,
            last_referenced_at: 61
        })
    );
    assert_eq!(s.lookup("ns", "k").await.unwrap().unwrap().blob, b1);

    // A valid blob being re-committed after GC marked it: also unavailable.
    set_blob_state(s, &b2.hash, "deleting").await;
    assert!(matches!(
        s.commit_entry(&entry("ns", "new", &b2, 63)).await,
        Err(Error::BlobUnavailable(_))
    ));
    set_blob_state(s, &b2.hash, "valid").await;

    // An unknown namespace is NotFound (a clear 404, not a 503), and the whole transaction
    // rolls back (the pending blob stays pending).
    let orphan = blob("orphan", 3, 3, Encoding::Raw);
    s.insert_pending_blob(&orphan, 70).await.unwrap();
    match s.commit_entry(&entry("no-such-namespace", "k", &orphan, 71)).await {
        Err(Error::NotFound(message)) => assert!(message.contains("no-such-namespace"), "{message}"),
        other => panic!("expected NotFound for the namespace, got {other:?}"),
    }
    assert_eq!(
        s.blob(&orphan.hash).await.unwrap(),
        Some(BlobRow {
            info: orphan.clone(),
            state: BlobState::Pending,
            created_at: 70,
            last_referenced_at: 70
        })
    );
    assert_pool_idle(s).await; // failed transactions return their connection too
    f.finish().await;
}

async fn lookup(db: Db) {
    let f = Fixture::new(db).await;
    let s = &f.store;
    s.ensure_namespace("ns", 1).await.unwrap();
    let b = blob("content", 777, 333, Encoding::Zstd);
    s.insert_pending_blob(&b, 5).await.unwrap();
    let token = insert_token(s, None, "secret", "admin").await;
    let new = NewEntry {
        writer_token_id: Some(token),
        ..entry("ns", "path/with/slashes and spaces", &b, 10)
    };
    s.commit_entry(&new).await.unwrap();
    s.apply_stats(&StatsBatch {
        counters: vec![],
        accesses: vec![access("ns", new.key, 12, 3)],
        missed: vec![],
        token_uses: vec![],
    })
    .await
    .unwrap();

    let expected = EntryRecord {
        namespace: "ns".into(),
        key: new.key.into(),
        blob: b.clone(),
        writer_token_id: Some(token),
        created_at: 10,
        last_access_at: 12,
        hit_count: 3,
    };
    assert_eq!(s.lookup("ns", new.key).await.unwrap(), Some(expected.clone()));

    // Misses: other key, other namespace, case matters.
    assert_eq!(s.lookup("ns", "path/with/slashes").await.unwrap(), None);
    assert_eq!(s.lookup("other", new.key).await.unwrap(), None);
    assert_eq!(s.lookup("NS", new.key).await.unwrap(), None);
    assert_eq!(s.lookup("ns", &new.key.to_uppercase()).await.unwrap(), None);

    // Only valid blobs are served.
    set_blob_state(s, &b.hash, "deleting").await;
    assert_eq!(s.lookup("ns", new.key).await.unwrap(), None);
    set_blob_state(s, &b.hash, "pending").await;
    assert_eq!(s.lookup("ns", new.key).await.unwrap(), None);
    set_blob_state(s, &b.hash, "valid").await;
    assert_eq!(s.lookup("ns", new.key).await.unwrap(), Some(expected));
    f.finish().await;
}

async fn delete_entry(db: Db) {
    let f = Fixture::new(db).await;
    let s = &f.store;
    s.ensure_namespace("ns", 1).await.unwrap();
    s.ensure_namespace("other", 1).await.unwrap();
    let b = blob("content", 1, 1, Encoding::Raw);
    s.insert_pending_blob(&b, 1).await.unwrap();
    s.commit_entry(&entry("ns", "k", &b, 2)).await.unwrap();
    s.commit_entry(&entry("other", "k", &b, 2)).await.unwrap();

    assert!(s.delete_entry("ns", "k").await.unwrap());
    assert_eq!(s.lookup("ns", "k").await.unwrap(), None);
    assert!(!s.delete_entry("ns", "k").await.unwrap());
    assert!(!s.delete_entry("ns", "never").await.unwrap());
    assert!(!s.delete_entry("nowhere", "k").await.unwrap());
    assert!(
        s.lookup("other", "k").await.unwrap().is_some(),
        "same key elsewhere untouched"
    );
    assert_eq!(
        s.blob(&b.hash).await.unwrap().unwrap().state,
        BlobState::Valid,
        "the blob is GC's business"
    );

    // The key can be written again: a fresh entry.
    assert_eq!(
        s.commit_entry(&entry("ns", "k", &b, 3)).await.unwrap(),
        PutOutcome::Created
    );
    f.finish().await;
}

async fn forget_blob(db: Db) {
    let f = Fixture::new(db).await;
    let s = &f.store;
    for ns in ["a", "b", "c"] {
        s.ensure_namespace(ns, 1).await.unwrap();
    }
    let bad = blob("corrupt", 10, 10, Encoding::Raw);
    let good = blob("fine", 20, 5, Encoding::Zstd);
    s.insert_pending_blob(&bad, 1).await.unwrap();
    s.insert_pending_blob(&good, 1).await.unwrap();
    for (ns, key, b) in [
        ("a", "k1", &bad),
        ("a", "k2", &bad),
        ("b", "k1", &bad),
        ("c", "k9", &bad),
        ("a", "k3", &good),
        ("b", "k2", &good),
    ] {
        s.commit_entry(&entry(ns, key, b, 2)).await.unwrap();
    }

    assert_eq!(s.forget_blob(&bad.hash).await.unwrap(), 4);
    assert_eq!(s.blob(&bad.hash).await.unwrap(), None);
    for (ns, key) in [("a", "k1"), ("a", "k2"), ("b", "k1"), ("c", "k9")] {
        assert_eq!(s.lookup(ns, key).await.unwrap(), None, "{ns}/{key}");
    }
    assert_eq!(s.lookup("a", "k3").await.unwrap().unwrap().blob, good);
    assert_eq!(s.lookup("b", "k2").await.unwrap().unwrap().blob, good);
    assert_eq!(s.blob(&good.hash).await.unwrap().unwrap().state, BlobState::Valid);
    assert_eq!(scalar(s, "SELECT COUNT(*) FROM entries").await, 2);
    assert_eq!(scalar(s, "SELECT COUNT(*) FROM blobs").await, 1);
    assert_eq!(s.list_namespaces().await.unwrap().len(), 3, "namespaces are kept");

    // Again: nothing left to forget.
    assert_eq!(s.forget_blob(&bad.hash).await.unwrap(), 0);
    // A blob without entries (pending, or deleting) loses its row.
    let pending = blob("pending", 1, 1, Encoding::Raw);
    s.insert_pending_blob(&pending, 3).await.unwrap();
    assert_eq!(s.forget_blob(&pending.hash).await.unwrap(), 0);
    assert_eq!(s.blob(&pending.hash).await.unwrap(), None);
    // Unknown hash: fine.
    assert_eq!(s.forget_blob(&hash("never")).await.unwrap(), 0);

    // The hash can be stored again afterwards.
    s.insert_pending_blob(&bad, 4).await.unwrap();
    assert_eq!(
        s.commit_entry(&entry("a", "k1", &bad, 5)).await.unwrap(),
        PutOutcome::Created
    );
    f.finish().await;
}

async fn apply_stats(db: Db) {
    let f = Fixture::new(db).await;
    let s = &f.store;

    s.apply_stats(&StatsBatch::default()).await.expect("empty batch");
    assert_eq!(s.stats(None, 0).await.unwrap(), vec![]);

    // Counters: the namespaces need not exist (stats outlive namespaces).
    let first = StatsBatch {
        counters: vec![
            stats_row("team", H0, "", counters(1)),
            stats_row("team", H0, "ci", counters(2)),
            stats_row("team", H0 + HOUR, "", counters(3)),
            stats_row("alpha", H0 + HOUR, "", counters(4)),
            // The same bucket twice within one batch adds up too.
            stats_row("team", H0, "ci", counters(5)),
        ],
        accesses: vec![],
        missed: vec![],
        token_uses: vec![],
    };
    s.apply_stats(&first).await.unwrap();
    let second = StatsBatch {
        counters: vec![
            stats_row("team", H0, "", counters(10)),
            stats_row("team", H0, "bob", counters(11)),
            stats_row("team", H0 - HOUR, "ci", counters(12)),
        ],
        accesses: vec![],
        missed: vec![],
        token_uses: vec![],
    };
    s.apply_stats(&second).await.unwrap();

    // Ordered by namespace, hour, label.
    let all = vec![
        stats_row("alpha", H0 + HOUR, "", counters(4)),
        stats_row("team", H0 - HOUR, "ci", counters(12)),
        stats_row("team", H0, "", sum(counters(1), counters(10))),
        stats_row("team", H0, "bob", counters(11)),
        stats_row("team", H0, "ci", sum(counters(2), counters(5))),
        stats_row("team", H0 + HOUR, "", counters(3)),
    ];
    assert_eq!(s.stats(None, 0).await.unwrap(), all);
    assert_eq!(s.stats(None, H0 - HOUR).await.unwrap(), all, "since_hour is inclusive");
    assert_eq!(s.stats(None, H0).await.unwrap(), all.pick(&[0, 2, 3, 4, 5]));
    assert_eq!(s.stats(None, H0 + 1).await.unwrap(), all.pick(&[0, 5]));
    assert_eq!(s.stats(None, H0 + 2 * HOUR).await.unwrap(), vec![]);
    assert_eq!(s.stats(Some("team"), 0).await.unwrap(), all[1..].to_vec());
    assert_eq!(s.stats(Some("team"), H0 + HOUR).await.unwrap(), all.pick(&[5]));
    assert_eq!(s.stats(Some("alpha"), 0).await.unwrap(), all.pick(&[0]));
    assert_eq!(s.stats(Some("tea"), 0).await.unwrap(), vec![], "no prefix matching");
    assert_eq!(s.stats(Some("nobody"), 0).await.unwrap(), vec![]);

    // Access updates: max of times, sum of hits.
    s.ensure_namespace("team", 1).await.unwrap();
    let b = blob("content", 5, 5, Encoding::Raw);
    s.insert_pending_blob(&b, 1).await.unwrap();
    s.commit_entry(&entry("team", "k", &b, 100)).await.unwrap();
    s.commit_entry(&entry("team", "other", &b, 100)).await.unwrap();
    let read = |key: &'static str| async move {
        let e = s.lookup("team", key).await.unwrap().expect("entry");
        (e.last_access_at, e.hit_count, e.created_at)
    };

    s.apply_stats(&StatsBatch {
        counters: vec![],
        accesses: vec![access("team", "k", 200, 3)],
        missed: vec![],
        token_uses: vec![],
    })
    .await
    .unwrap();
    assert_eq!(read("k").await, (200, 3, 100));
    // Older time (a batch from a slower replica): time stays, hits still add.
    s.apply_stats(&StatsBatch {
        counters: vec![],
        accesses: vec![access("team", "k", 150, 2)],
        missed: vec![],
        token_uses: vec![],
    })
    .await
    .unwrap();
    assert_eq!(read("k").await, (200, 5, 100));
    // Same time: unchanged time.
    s.apply_stats(&StatsBatch {
        counters: vec![],
        accesses: vec![access("team", "k", 200, 1)],
        missed: vec![],
        token_uses: vec![],
    })
    .await
    .unwrap();
    assert_eq!(read("k").await, (200, 6, 100));
    // Newer, with counters in the same batch and an update for a missing key (harmless).
    let mixed = StatsBatch {
        counters: vec![stats_row("team", H0, "", counters(100))],
        accesses: vec![
            access("team", "gone", 999, 50),
            access("nowhere", "k", 999, 50),
            access("team", "k", 300, 4),
            access("team", "k", 250, 1),
        ],
        missed: vec![],
        token_uses: vec![],
    };
    s.apply_stats(&mixed).await.unwrap();
    assert_eq!(read("k").await, (300, 11, 100));
    assert_eq!(read("other").await, (100, 0, 100), "other entries untouched");
    assert_eq!(s.lookup("team", "gone").await.unwrap(), None, "no entry conjured up");
    assert_eq!(scalar(s, "SELECT COUNT(*) FROM entries").await, 2);
    assert_eq!(
        s.stats(Some("team"), H0).await.unwrap()[0],
        stats_row("team", H0, "", sum(sum(counters(1), counters(10)), counters(100)))
    );

    // Token uses, with counters and accesses in the same batch: a token's last use is the
    // latest of its uses and never moves back.
    let (ci, bob) = (
        insert_token(s, None, "ci-secret", "ci").await,
        insert_token(s, None, "bob-secret", "bob").await,
    );
    let last_used = || async move {
        let tokens = s.list_tokens().await.unwrap();
        let at = |id: i64| tokens.iter().find(|t| t.id == id).unwrap().last_used_at;
        (at(ci), at(bob))
    };
    s.apply_stats(&StatsBatch {
        counters: vec![stats_row("team", H0, "ci", counters(1))],
        accesses: vec![access("team", "k", 400, 1)],
        missed: vec![],
        token_uses: vec![(ci, 500), (bob, 450), (ci, 480)],
    })
    .await
    .unwrap();
    assert_eq!(last_used().await, (Some(500), Some(450)));
    assert_eq!(read("k").await, (400, 12, 100));
    s.apply_stats(&StatsBatch {
        token_uses: vec![(ci, 490), (bob, 600)],
        ..StatsBatch::default()
    })
    .await
    .unwrap();
    assert_eq!(last_used().await, (Some(500), Some(600)));

    s.apply_stats(&StatsBatch::default()).await.expect("empty batch again");
    assert_eq!(s.stats(None, 0).await.unwrap().len(), all.len());
    f.finish().await;
}

/// Indexing a slice by a list of positions.
trait Pick<T> {
    fn pick(&self, at: &[usize]) -> Vec<T>;
}

impl<T: Clone> Pick<T> for Vec<T> {
    fn pick(&self, at: &[usize]) -> Vec<T> {
        at.iter().map(|&i| self[i].clone()).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------------

const TASKS: usize = 16;
const ROUNDS: usize = 12;

/// 16 tasks through one store (4 connections): every round, all of them commit the same key
/// with the same blob, the same key with differing blobs, and a key of their own; they look
/// entries up and flush statistics in between. Nothing may fail, and the end state must be
/// exactly what the writes imply.
async fn concurrent_commits(db: Db) {
    let f = Fixture::new(db).await;
    let store = Arc::new(f.store.clone());
    for ns in ["team", "other"] {
        store.ensure_namespace(ns, 1).await.unwrap();
    }
    let shared: Arc<Vec<BlobInfo>> = Arc::new(
        (0..4)
            .map(|i| blob(&format!("shared {i}"), 100 + i, 50 + i, Encoding::Zstd))
            .collect(),
    );
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let started = Instant::now();

    let mut handles = Vec::new();
    for t in 0..TASKS {
        let (store, shared, barrier) = (store.clone(), shared.clone(), barrier.clone());
        handles.push(tokio::spawn(async move {
            let result = async {
                let own_ns = if t % 2 == 0 { "team" } else { "other" };
                let mut same = Vec::new();
                let mut mixed = Vec::new();
                for round in 0..ROUNDS {
                    let now = 1_000 + round as i64;
                    // A task that failed never arrives: fail with its error instead of waiting.
                    tokio::time::timeout(Duration::from_secs(60), barrier.wait())
                        .await
                        .expect("a task stopped early (its error is printed above)");
                    // Everyone records the blobs they are about to reference (races on the row).
                    let mine = &shared[(t + round) % shared.len()];
                    store.insert_pending_blob(mine, now).await?;
                    store.insert_pending_blob(&shared[0], now).await?;

                    let key = format!("same-{round}");
                    same.push(store.commit_entry(&entry("team", &key, &shared[0], now)).await?);
                    let key = format!("mixed-{round}");
                    mixed.push(store.commit_entry(&entry("team", &key, mine, now)).await?);
                    let key = format!("task-{t}-{}", round % 3);
                    store.commit_entry(&entry(own_ns, &key, mine, now)).await?;

                    let found = store
                        .lookup("team", &format!("same-{round}"))
                        .await?
                        .expect("just committed");
                    assert_eq!(found.blob, shared[0]);
                    store
                        .apply_stats(&StatsBatch {
                            counters: vec![stats_row(
                                "team",
                                H0,
                                if t % 2 == 0 { "even" } else { "odd" },
                                counters(1),
                            )],
                            accesses: vec![access("team", &format!("same-{round}"), now - 1, 1)],
                            missed: vec![],
                            token_uses: vec![],
                        })
                        .await?;
                }
                Ok::<_, Error>((same, mixed))
            }
            .await;
            if let Err(e) = &result {
                eprintln!("task {t} failed: {e:?}");
            }
            result
        }));
    }
    let mut same_outcomes = vec![Vec::new(); ROUNDS];
    let mut mixed_outcomes = vec![Vec::new(); ROUNDS];
    for handle in handles {
        let (same, mixed) = handle
            .await
            .expect("task panicked")
            .expect("no store error under contention");
        for round in 0..ROUNDS {
            same_outcomes[round].push(same[round]);
            mixed_outcomes[round].push(mixed[round]);
        }
    }
    let elapsed = started.elapsed();
    eprintln!("{db:?}: {} commits in {elapsed:?}", TASKS * ROUNDS * 3);

    let s = &f.store;
    for round in 0..ROUNDS {
        // Exactly one writer created each shared key; all others replaced it.
        let created = same_outcomes[round]
            .iter()
            .filter(|o| **o == PutOutcome::Created)
            .count();
        assert_eq!(created, 1, "same-{round}: {:?}", same_outcomes[round]);
        let identical = same_outcomes[round]
            .iter()
            .filter(|o| **o == PutOutcome::Replaced(Rewrite::Identical))
            .count();
        assert_eq!(identical, TASKS - 1, "same-{round}: identical content never conflicts");
        let created = mixed_outcomes[round]
            .iter()
            .filter(|o| **o == PutOutcome::Created)
            .count();
        assert_eq!(created, 1, "mixed-{round}: {:?}", mixed_outcomes[round]);

        let same = s.lookup("team", &format!("same-{round}")).await.unwrap().unwrap();
        assert_eq!(same.blob, shared[0]);
        assert_eq!(same.hit_count, TASKS as i64, "every access counted");
        // Commits set the access time to their `now`; the older batched accesses never lower it.
        assert_eq!(same.last_access_at, 1_000 + round as i64, "newest access wins");
        let mixed = s.lookup("team", &format!("mixed-{round}")).await.unwrap().unwrap();
        assert!(shared.contains(&mixed.blob));
    }
    // Each task's own keys hold what that task wrote last.
    for t in 0..TASKS {
        let own_ns = if t % 2 == 0 { "team" } else { "other" };
        for k in 0..3 {
            let last_round = (0..ROUNDS).filter(|r| r % 3 == k).max().unwrap();
            let e = s
                .lookup(own_ns, &format!("task-{t}-{k}"))
                .await
                .unwrap()
                .expect("own key");
            assert_eq!(e.blob, shared[(t + last_round) % shared.len()], "task-{t}-{k}");
            assert_eq!(e.created_at, 1_000 + last_round as i64);
        }
    }
    let expected_entries = (2 * ROUNDS + TASKS * 3) as i64;
    assert_eq!(scalar(s, "SELECT COUNT(*) FROM entries").await, expected_entries);
    assert_eq!(scalar(s, "SELECT COUNT(*) FROM blobs").await, shared.len() as i64);
    assert_eq!(
        scalar(s, "SELECT COUNT(*) FROM blobs WHERE state = 'valid'").await,
        shared.len() as i64
    );
    let per_label = TASKS / 2 * ROUNDS;
    let mut expected = Counters::default();
    for _ in 0..per_label {
        expected.add(&counters(1));
    }
    assert_eq!(
        s.stats(Some("team"), 0).await.unwrap(),
        vec![
            stats_row("team", H0, "even", expected),
            stats_row("team", H0, "odd", expected)
        ]
    );
    assert_pool_idle(s).await;
    f.finish().await;
}

/// Commits made at the same moment (on SQLite they share one batch) fail only where they are
/// at fault: a blob being deleted or a missing namespace fails its own write, never another's.
async fn simultaneous_commits_fail_alone(db: Db) {
    let f = Fixture::new(db).await;
    let store = Arc::new(f.store.clone());
    store.ensure_namespace("team", 1).await.unwrap();
    let fine = blob("fine", 10, 10, Encoding::Raw);
    let doomed = blob("doomed", 20, 20, Encoding::Raw);
    for b in [&fine, &doomed] {
        assert!(store.insert_pending_blob(b, 1).await.unwrap());
    }
    set_blob_state(&store, &doomed.hash, "deleting").await;

    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let handles: Vec<_> = (0..TASKS)
        .map(|t| {
            let (store, fine, doomed, barrier) = (store.clone(), fine.clone(), doomed.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let key = format!("k{t}");
                match t % 4 {
                    0 => store.commit_entry(&entry("team", &key, &doomed, 5)).await,
                    1 => store.commit_entry(&entry("gone", &key, &fine, 5)).await,
                    _ => store.commit_entry(&entry("team", &key, &fine, 5)).await,
                }
            })
        })
        .collect();
    for (t, handle) in handles.into_iter().enumerate() {
        let result = handle.await.expect("task panicked");
        match t % 4 {
            0 => assert!(matches!(result, Err(Error::BlobUnavailable(_))), "k{t}: {result:?}"),
            1 => assert!(matches!(result, Err(Error::NotFound(_))), "k{t}: {result:?}"),
            _ => assert_eq!(result.unwrap(), PutOutcome::Created, "k{t}"),
        }
    }
    let s = &f.store;
    assert_eq!(
        scalar(s, "SELECT COUNT(*) FROM entries").await,
        (TASKS / 2) as i64,
        "exactly the blameless writes"
    );
    assert_eq!(s.blob(&doomed.hash).await.unwrap().unwrap().state, BlobState::Deleting);
    assert_pool_idle(s).await;
    f.finish().await;
}

/// Eviction records and their use in classifying misses at flush time.
async fn evictions_classify_misses(db: Db) {
    let f = Fixture::new(db).await;
    let s = &f.store;
    s.record_evictions("ns", &[], 1).await.unwrap();
    s.record_evictions("ns", &["gone-1", "gone-2"], 5).await.unwrap();
    s.record_evictions("ns", &["gone-1"], 9).await.unwrap(); // again: refreshed, not duplicated
    assert_eq!(scalar(s, "SELECT COUNT(*) FROM evicted_keys").await, 2);
    assert_eq!(scalar(s, "SELECT MAX(evicted_at) FROM evicted_keys").await, 9);
    let hashes = |keys: &[&str]| keys.iter().map(|k| hearth::meta::key_hash(k)).collect::<Vec<_>>();
    let misses = Counters {
        misses: 5,
        ..Default::default()
    };
    s.apply_stats(&StatsBatch {
        counters: vec![stats_row("ns", H0, "", misses), stats_row("other", H0, "", misses)],
        accesses: vec![],
        token_uses: vec![],
        missed: vec![
            hearth::meta::MissedKeys {
                namespace: "ns".into(),
                hour: H0,
                token_label: "".into(),
                key_hashes: hashes(&["gone-1", "gone-1", "cold", "gone-2", "also-cold"]),
            },
            hearth::meta::MissedKeys {
                namespace: "other".into(),
                hour: H0,
                token_label: "".into(),
                key_hashes: hashes(&["gone-1", "gone-2", "x", "y", "z"]), // evicted elsewhere only
            },
        ],
    })
    .await
    .unwrap();
    let rows = s.stats(None, 0).await.unwrap();
    let evicted: Vec<(String, i64, i64)> = rows
        .iter()
        .map(|r| (r.namespace.clone(), r.counters.misses, r.counters.misses_evicted))
        .collect();
    assert_eq!(evicted, [("ns".to_string(), 5, 3), ("other".to_string(), 5, 0)]);
    // More than one IN-list chunk.
    let many: Vec<String> = (0..1200).map(|i| format!("k{i}")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    s.record_evictions("big", &refs[..700], 10).await.unwrap();
    s.apply_stats(&StatsBatch {
        counters: vec![stats_row(
            "big",
            H0,
            "",
            Counters {
                misses: 1200,
                ..Default::default()
            },
        )],
        accesses: vec![],
        token_uses: vec![],
        missed: vec![hearth::meta::MissedKeys {
            namespace: "big".into(),
            hour: H0,
            token_label: "".into(),
            key_hashes: hashes(&refs),
        }],
    })
    .await
    .unwrap();
    let big = s.stats(Some("big"), 0).await.unwrap();
    assert_eq!(big[0].counters.misses_evicted, 700);

    // Pruned by age, in statements of a bounded size (700 is more than one on both).
    assert_eq!(s.prune_evicted_keys(10).await.unwrap(), 2, "those of 5 and 9");
    assert_eq!(scalar(s, "SELECT COUNT(*) FROM evicted_keys").await, 700);
    assert_eq!(s.prune_evicted_keys(11).await.unwrap(), 700);
    assert_eq!(scalar(s, "SELECT COUNT(*) FROM evicted_keys").await, 0);
    f.finish().await;
}

/// The three layers of stored bytes, for the whole store and per namespace.
async fn storage_usage(db: Db) {
    let f = Fixture::new(db).await;
    let s = &f.store;
    assert_eq!(s.storage_usage().await.unwrap(), hearth::meta::StorageUsage::default());
    assert!(s.namespace_usage(None).await.unwrap().is_empty());
    for ns in ["a", "b"] {
        s.ensure_namespace(ns, 1).await.unwrap();
    }
    let shared = blob("shared", 100, 100, Encoding::Raw);
    let packed = blob("packed", 1000, 250, Encoding::Zstd);
    let orphan = blob("orphan", 7, 7, Encoding::Raw);
    for b in [&shared, &packed, &orphan] {
        s.insert_pending_blob(b, 1).await.unwrap();
    }
    for (ns, key, b) in [
        ("a", "1", &shared),
        ("a", "2", &shared),
        ("a", "3", &packed),
        ("b", "1", &shared),
    ] {
        s.commit_entry(&entry(ns, key, b, 2)).await.unwrap();
    }
    let total = s.storage_usage().await.unwrap();
    assert_eq!(
        total,
        hearth::meta::StorageUsage {
            entries: 4,
            blobs: 3,
            logical_bytes: 1300,
            unique_bytes: 1100,
            compressed_bytes: 350,
            physical_bytes: 357, // the unreferenced blob still occupies the store
        }
    );
    let per_ns = s.namespace_usage(None).await.unwrap();
    let a = &per_ns[0];
    assert_eq!((a.namespace.as_str(), a.usage.entries, a.usage.blobs), ("a", 3, 2));
    assert_eq!(
        (a.usage.logical_bytes, a.usage.unique_bytes, a.usage.compressed_bytes),
        (1200, 1100, 350)
    );
    assert_eq!(a.usage.physical_bytes, a.usage.compressed_bytes);
    let only_b = s.namespace_usage(Some("b")).await.unwrap();
    assert_eq!(only_b.len(), 1);
    assert_eq!(
        (only_b[0].usage.logical_bytes, only_b[0].usage.unique_bytes),
        (100, 100)
    );
    f.finish().await;
}

/// The totals as a full scan counts them (what `/metrics` computed before the totals were kept):
/// the store's row first (namespace `""`), then each namespace holding entries.
async fn recount(store: &MetaStore) -> Vec<(String, [i64; 6])> {
    const STORE: &str = "SELECT '' AS namespace, \
         (SELECT COUNT(*) FROM entries), \
         (SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM entries), \
         (SELECT COUNT(*) FROM blobs), \
         (SELECT CAST(COALESCE(SUM(raw_size), 0) AS BIGINT) FROM blobs WHERE hash IN (SELECT blob_hash FROM entries)), \
         (SELECT CAST(COALESCE(SUM(stored_size), 0) AS BIGINT) FROM blobs WHERE hash IN (SELECT blob_hash FROM entries)), \
         (SELECT CAST(COALESCE(SUM(stored_size), 0) AS BIGINT) FROM blobs)";
    const NAMESPACES: &str = "SELECT l.namespace, l.entries, l.logical, u.blobs, u.unique_bytes, u.compressed \
         FROM (SELECT namespace, COUNT(*) AS entries, CAST(SUM(size) AS BIGINT) AS logical \
               FROM entries GROUP BY namespace) l \
         JOIN (SELECT d.namespace, COUNT(*) AS blobs, CAST(SUM(b.raw_size) AS BIGINT) AS unique_bytes, \
               CAST(SUM(b.stored_size) AS BIGINT) AS compressed \
               FROM (SELECT DISTINCT namespace, blob_hash FROM entries) d JOIN blobs b ON b.hash = d.blob_hash \
               GROUP BY d.namespace) u ON u.namespace = l.namespace ORDER BY l.namespace";
    type Row = (String, i64, i64, i64, i64, i64, i64);
    type NsRow = (String, i64, i64, i64, i64, i64);
    let (store_row, ns_rows): (Row, Vec<NsRow>) = match store {
        MetaStore::Sqlite(s) => (
            sqlx::query_as(STORE).fetch_one(s.pool()).await.unwrap(),
            sqlx::query_as(NAMESPACES).fetch_all(s.pool()).await.unwrap(),
        ),
        MetaStore::Postgres(s) => (
            sqlx::query_as(STORE).fetch_one(s.pool()).await.unwrap(),
            sqlx::query_as(NAMESPACES).fetch_all(s.pool()).await.unwrap(),
        ),
    };
    let mut all = vec![(
        store_row.0,
        [
            store_row.1,
            store_row.2,
            store_row.3,
            store_row.4,
            store_row.5,
            store_row.6,
        ],
    )];
    all.extend(
        ns_rows
            .into_iter()
            // A namespace stores each of its blobs once: its physical bytes are its compressed ones.
            .map(|(ns, entries, logical, blobs, unique, compressed)| {
                (ns, [entries, logical, blobs, unique, compressed, compressed])
            }),
    );
    all
}

/// The totals as the store keeps them, in the shape of [`recount`].
async fn kept_totals(store: &MetaStore) -> Vec<(String, [i64; 6])> {
    let figures = |u: &hearth::meta::StorageUsage| {
        [
            u.entries,
            u.logical_bytes,
            u.blobs,
            u.unique_bytes,
            u.compressed_bytes,
            u.physical_bytes,
        ]
    };
    let mut all = vec![(String::new(), figures(&store.storage_usage().await.unwrap()))];
    for ns in store.namespace_usage(None).await.unwrap() {
        let one = store.namespace_usage(Some(&ns.namespace)).await.unwrap();
        assert_eq!(one.len(), 1, "{} read alone", ns.namespace);
        assert_eq!(one[0].usage, ns.usage, "{} read alone", ns.namespace);
        all.push((ns.namespace.clone(), figures(&ns.usage)));
    }
    all
}

/// Every way entries and blobs change (puts, overwrites with the same and other content,
/// dedup within and across namespaces, deletes, evictions, a blob forgotten, purges by writer,
/// namespaces deleted, abandoned uploads and garbage collection) in a random order: after each
/// step the kept totals equal a full recount.
async fn totals_match_a_recount(db: Db) {
    use rand::{Rng, SeedableRng};
    let f = Fixture::new(db).await;
    let s = &f.store;
    let seed: u64 = std::env::var("HEARTH_TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let namespaces = ["a", "b", "c"];
    let blobs: Vec<BlobInfo> = (0..10u64)
        .map(|i| {
            let raw = 100 + i * 37;
            if i % 3 == 0 {
                blob(&format!("blob-{i}"), raw, raw / 4, Encoding::Zstd)
            } else {
                blob(&format!("blob-{i}"), raw, raw, Encoding::Raw)
            }
        })
        .collect();
    let token = insert_token(s, None, "totals-secret", "writer").await;
    for ns in namespaces {
        s.ensure_namespace(ns, 1).await.unwrap();
    }
    assert_eq!(kept_totals(s).await, recount(s).await, "empty store");
    let mut now = 10;
    for step in 0..300 {
        now += 1;
        let ns = namespaces[rng.gen_range(0..namespaces.len())];
        let key = format!("k{}", rng.gen_range(0..12));
        let b = &blobs[rng.gen_range(0..blobs.len())];
        let what = match rng.gen_range(0..100) {
            0..=49 => {
                s.ensure_namespace(ns, now).await.unwrap();
                s.insert_pending_blob(b, now).await.unwrap();
                let writer = rng.gen_bool(0.3).then_some(token);
                let put = NewEntry {
                    writer_token_id: writer,
                    ..entry(ns, &key, b, now)
                };
                match s.commit_entry(&put).await {
                    // A blob being collected refuses new references: the upload retries later.
                    Ok(_) | Err(Error::BlobUnavailable(_)) => {}
                    Err(e) => panic!("step {step}: {e}"),
                }
                "put"
            }
            50..=59 => {
                s.delete_entry(ns, &key).await.unwrap();
                "delete"
            }
            60..=69 => {
                let victims: Vec<(String, String)> = (0..rng.gen_range(1..4))
                    .map(|_| (ns.to_string(), format!("k{}", rng.gen_range(0..12))))
                    .collect();
                s.evict_entries(&victims, now).await.unwrap();
                "evict"
            }
            70..=74 => {
                s.forget_blob(&b.hash).await.unwrap();
                "forget a blob"
            }
            75..=77 => {
                s.purge_token_entries(token).await.unwrap();
                "purge a writer"
            }
            78..=79 => {
                s.delete_namespace(ns).await.unwrap();
                "delete a namespace"
            }
            80..=84 => {
                // An upload that never finishes.
                s.insert_pending_blob(b, now).await.unwrap();
                "abandoned upload"
            }
            _ => {
                let candidates = s.sweep_candidates(now + 1, 100).await.unwrap();
                let hashes: Vec<String> = candidates.iter().map(|c| c.info.hash.clone()).collect();
                let mut claimed: Vec<String> = s
                    .claim_unreferenced_blobs(&hashes, Some(now + 1))
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|b| b.hash)
                    .collect();
                claimed.extend(
                    s.claim_abandoned_blobs(&hashes, now + 1)
                        .await
                        .unwrap()
                        .into_iter()
                        .map(|b| b.hash),
                );
                // Some collections stop after claiming: the rows wait as `deleting`.
                if rng.gen_bool(0.7) {
                    s.delete_blob_rows(&claimed).await.unwrap();
                }
                "garbage collection"
            }
        };
        assert_eq!(
            kept_totals(s).await,
            recount(s).await,
            "after step {step} ({what}), seed {seed} (HEARTH_TEST_SEED reruns it)"
        );
    }
    let check = s.check_totals().await.unwrap();
    assert!(
        check.is_exact(),
        "hearth verify's recount agrees: {check:?}, seed {seed}"
    );
    f.finish().await;
}

/// Runs a statement behind the store's back (to plant drift).
async fn execute(store: &MetaStore, statement: &str) {
    match store {
        MetaStore::Sqlite(s) => sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(s.pool())
            .await
            .map(|_| ()),
        MetaStore::Postgres(s) => sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(s.pool())
            .await
            .map(|_| ()),
    }
    .unwrap_or_else(|e| panic!("{statement}: {e}"));
}

/// The migrations before the kept totals (0001-0004), from the folder `dialect`.
fn migrations_before_totals(mut migrator: sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
    migrator.migrations = migrator
        .migrations
        .iter()
        .filter(|m| m.version < 5)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    migrator
}

/// A store of the schema before the kept totals, with entries, a blob shared by two
/// namespaces and one pending upload, upgraded by `migrate`: the totals and reference counts
/// start from what is stored.
async fn upgrading_fills_the_totals_from_existing_data(db: Db) {
    const ROWS: &[&str] = &[
        "INSERT INTO namespaces (name, created_at) VALUES ('a', 1), ('b', 1)",
        "INSERT INTO blobs (hash, raw_size, stored_size, encoding, state, created_at, last_referenced_at) \
         VALUES ('h1', 100, 40, 'zstd', 'valid', 1, 1), ('h2', 30, 30, 'raw', 'valid', 1, 1), \
         ('h3', 10, 10, 'raw', 'pending', 1, 1)",
        "INSERT INTO entries (namespace, key, blob_hash, size, created_at, last_access_at) \
         VALUES ('a', 'k1', 'h1', 100, 1, 1), ('a', 'k2', 'h1', 100, 1, 1), ('b', 'k1', 'h1', 100, 1, 1), \
         ('a', 'k3', 'h2', 30, 1, 1)",
    ];
    let dir = tempfile::tempdir().unwrap();
    let test_db = TestDb::create(db, dir.path()).await;
    match db {
        Db::Sqlite => {
            let options: sqlx::sqlite::SqliteConnectOptions = test_db.url.parse().unwrap();
            let pool = sqlx::SqlitePool::connect_with(options.create_if_missing(true))
                .await
                .unwrap();
            migrations_before_totals(sqlx::migrate!("migrations/sqlite"))
                .run(&pool)
                .await
                .unwrap();
            for rows in ROWS {
                sqlx::query(*rows).execute(&pool).await.unwrap();
            }
            pool.close().await;
        }
        Db::Postgres => {
            let pool = sqlx::PgPool::connect(&test_db.url).await.unwrap();
            migrations_before_totals(sqlx::migrate!("migrations/postgres"))
                .run(&pool)
                .await
                .unwrap();
            for rows in ROWS {
                sqlx::query(*rows).execute(&pool).await.unwrap();
            }
            pool.close().await;
        }
    }
    let store = MetaStore::connect(&test_db.url, &pool_settings()).await.unwrap();
    store.migrate().await.unwrap();
    let check = store.check_totals().await.unwrap();
    assert!(check.is_exact(), "{check:?}");
    let usage =
        |entries, blobs, logical_bytes, unique_bytes, compressed_bytes, physical_bytes| hearth::meta::StorageUsage {
            entries,
            blobs,
            logical_bytes,
            unique_bytes,
            compressed_bytes,
            physical_bytes,
        };
    assert_eq!(store.storage_usage().await.unwrap(), usage(4, 3, 330, 130, 70, 80));
    let namespaces: Vec<_> = store
        .namespace_usage(None)
        .await
        .unwrap()
        .into_iter()
        .map(|n| (n.namespace, n.usage))
        .collect();
    assert_eq!(
        namespaces,
        [
            ("a".to_string(), usage(3, 2, 230, 130, 70, 70)),
            ("b".to_string(), usage(1, 1, 100, 100, 40, 40)),
        ]
    );
    // Only the pending upload is unreferenced.
    let unreferenced: Vec<String> = store
        .sweep_candidates(i64::MAX, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.info.hash)
        .collect();
    assert_eq!(unreferenced, ["h3"]);
    store.close().await;
    test_db.drop_database().await;
}

/// `hearth verify` recounts the kept totals, names each figure that drifted (and blobs whose
/// reference count did), and `--repair` rewrites them from the recount.
async fn verify_recounts_and_repairs_drifted_totals(db: Db) {
    let f = Fixture::new(db).await;
    let s = &f.store;
    let (a, b) = (blob("a", 100, 40, Encoding::Zstd), blob("b", 30, 30, Encoding::Raw));
    for ns in ["one", "two"] {
        s.ensure_namespace(ns, 1).await.unwrap();
    }
    for x in [&a, &b] {
        s.insert_pending_blob(x, 1).await.unwrap();
    }
    s.commit_entry(&entry("one", "k1", &a, 2)).await.unwrap();
    s.commit_entry(&entry("one", "k2", &b, 2)).await.unwrap();
    s.commit_entry(&entry("two", "k1", &a, 2)).await.unwrap();
    assert_eq!(s.check_totals().await.unwrap(), hearth::meta::TotalsCheck::default());

    execute(
        s,
        "UPDATE storage_totals SET entries = entries + 5 WHERE namespace = 'two'",
    )
    .await;
    execute(
        s,
        &format!("UPDATE blobs SET refs = refs + 1 WHERE hash = '{}'", b.hash),
    )
    .await;
    let check = s.check_totals().await.unwrap();
    assert_eq!(
        check.drift,
        [
            hearth::meta::Drift {
                namespace: String::new(),
                figure: "entries",
                kept: 8,
                counted: 3,
            },
            hearth::meta::Drift {
                namespace: "two".into(),
                figure: "entries",
                kept: 6,
                counted: 1,
            },
        ]
    );
    assert_eq!(check.miscounted_blobs, 1);

    s.repair_totals().await.unwrap();
    assert!(s.check_totals().await.unwrap().is_exact());
    assert_eq!(kept_totals(s).await, recount(s).await);
    // The repaired counts are the ones the triggers go on from: b's last entry frees it.
    s.delete_entry("one", "k2").await.unwrap();
    let unreferenced = s.sweep_candidates(i64::MAX, 10).await.unwrap();
    assert_eq!(unreferenced.len(), 1, "{unreferenced:?}");
    assert_eq!(unreferenced[0].info.hash, b.hash);
    assert!(s.check_totals().await.unwrap().is_exact());
    f.finish().await;
}

/// Rewrites with other content and deletions are logged for the change feed, with the
/// database's clock; new keys, rewrites with the same content and evictions are not.
async fn entry_changes(db: Db) {
    let f = Fixture::new(db).await;
    let s = &f.store;
    let wall_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let start = s.clock_ms().await.unwrap();
    assert!(
        (start - wall_ms).abs() < 5_000,
        "database clock {start} ms, wall clock {wall_ms} ms"
    );
    let all = |since: i64| async move {
        let changes = s.entry_changes(since).await.unwrap();
        changes
            .into_iter()
            .map(|c| (c.namespace, c.key))
            .collect::<BTreeSet<_>>()
    };
    let since = start - 1_000;

    for ns in ["ns", "gone"] {
        s.ensure_namespace(ns, 1).await.unwrap();
    }
    let (a, b) = (blob("a", 1, 1, Encoding::Raw), blob("b", 1, 1, Encoding::Raw));
    for x in [&a, &b] {
        s.insert_pending_blob(x, 1).await.unwrap();
    }
    s.commit_entry(&entry("ns", "k", &a, 2)).await.unwrap();
    s.commit_entry(&entry("ns", "same", &a, 2)).await.unwrap();
    s.commit_entry(&entry("ns", "same", &a, 3)).await.unwrap();
    s.commit_entry(&entry("ns", "old", &a, 2)).await.unwrap();
    s.commit_entry(&entry("gone", "k", &a, 2)).await.unwrap();
    s.evict_entries(&[("ns".to_string(), "old".to_string())], 4)
        .await
        .unwrap();
    assert_eq!(all(since).await, BTreeSet::new(), "nothing a memory cache must drop");

    let token = insert_token(s, None, "secret", "ci").await;
    let by_token = NewEntry {
        writer_token_id: Some(token),
        ..entry("ns", "written-by-ci", &a, 5)
    };
    s.commit_entry(&by_token).await.unwrap();
    assert_eq!(
        s.commit_entry(&entry("ns", "k", &b, 5)).await.unwrap(),
        PutOutcome::Replaced(Rewrite::Conflicting)
    );
    assert!(s.delete_entry("ns", "same").await.unwrap());
    assert!(!s.delete_entry("ns", "never").await.unwrap());
    assert!(s.delete_namespace("gone").await.unwrap());
    assert_eq!(s.purge_token_entries(token).await.unwrap(), 1);
    let some = |x: &str| Some(x.to_string());
    let expected = BTreeSet::from([
        (some("ns"), some("k")),
        (some("ns"), some("same")),
        (some("gone"), None),
        (None, None),
    ]);
    assert_eq!(all(since).await, expected);

    let end = s.clock_ms().await.unwrap();
    assert!(end >= start);
    assert_eq!(all(end + 1).await, BTreeSet::new(), "only changes since the given time");
    assert_eq!(s.prune_entry_changes(since).await.unwrap(), 0);
    assert_eq!(s.prune_entry_changes(end + 1).await.unwrap(), 4);
    assert_eq!(all(since).await, BTreeSet::new());
    f.finish().await;
}

/// Runs `statements` in one transaction on a connection of the store's own pool and holds it
/// open (its row locks taken, on SQLite the write lock) until `release` fires, then commits.
/// Returns once the statements have run; the task ends with the commit.
async fn hold_transaction(
    store: &MetaStore,
    statements: Vec<String>,
    release: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<()> {
    let (held, running) = tokio::sync::oneshot::channel();
    macro_rules! hold {
        ($pool:expr) => {{
            let pool = $pool.clone();
            tokio::spawn(async move {
                let mut tx = pool.begin().await.unwrap();
                for sql in &statements {
                    sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                        .execute(&mut *tx)
                        .await
                        .unwrap_or_else(|e| panic!("{sql}: {e}"));
                }
                held.send(()).unwrap();
                release.await.unwrap();
                tx.commit().await.unwrap();
            })
        }};
    }
    let task = match store {
        MetaStore::Sqlite(s) => hold!(s.pool()),
        MetaStore::Postgres(s) => hold!(s.pool()),
    };
    running.await.expect("the transaction ran its statements");
    task
}

/// Garbage collection claims a blob by its reference count, and an upload references a blob
/// whatever its count: the two race on the blob's row. Each order is held open here while the
/// other side runs: a reference committed while the claim waits defeats the claim (the claim
/// sees the count the upload left), and a claim committed while the upload waits refuses the
/// upload (the blob is `deleting`; the upload stores its own copy). Never an entry pointing at
/// a blob being deleted.
async fn claim_races_a_new_reference(db: Db) {
    let f = Fixture::new(db).await;
    let s = &f.store;
    s.ensure_namespace("ns", 1).await.unwrap();
    let shared = blob("shared", 100, 100, Encoding::Raw);
    s.insert_pending_blob(&shared, 1).await.unwrap();
    s.commit_entry(&entry("ns", "old", &shared, 2)).await.unwrap();
    // Eviction claims, in its own transaction, exactly the blobs it leaves unreferenced.
    let twice = blob("twice", 50, 50, Encoding::Raw);
    s.insert_pending_blob(&twice, 1).await.unwrap();
    s.commit_entry(&entry("ns", "t1", &twice, 2)).await.unwrap();
    s.commit_entry(&entry("ns", "t2", &twice, 2)).await.unwrap();
    let victims = [
        ("ns".to_string(), "t1".to_string()),
        ("ns".to_string(), "none".to_string()),
    ];
    assert_eq!(
        s.evict_entries(&victims, 3).await.unwrap(),
        Evicted {
            entries: 1,
            claimed: vec![]
        }
    );
    let last = s.evict_entries(&[("ns".into(), "t2".into())], 3).await.unwrap();
    assert_eq!(
        last,
        Evicted {
            entries: 1,
            claimed: vec![twice.clone()]
        }
    );
    assert_eq!(s.blob(&twice.hash).await.unwrap().unwrap().state, BlobState::Deleting);

    assert!(s.delete_entry("ns", "old").await.unwrap());
    let refs = format!("SELECT refs FROM blobs WHERE hash = '{}'", shared.hash);
    assert_eq!(scalar(s, &refs).await, 0, "unreferenced: a candidate for collection");

    // 1. An upload's reference, uncommitted, while the collector claims.
    let (release, released) = tokio::sync::oneshot::channel();
    let upload = hold_transaction(
        s,
        vec![
            format!(
                "UPDATE blobs SET state = 'valid', last_referenced_at = 4 WHERE hash = '{}'",
                shared.hash
            ),
            format!(
                "INSERT INTO entries (namespace, key, blob_hash, size, created_at, last_access_at) \
                 VALUES ('ns', 'new', '{}', 100, 4, 4)",
                shared.hash
            ),
        ],
        released,
    )
    .await;
    let claim = {
        let s = s.clone();
        let hashes = vec![shared.hash.clone()];
        tokio::spawn(async move { s.claim_unreferenced_blobs(&hashes, None).await })
    };
    // Let the claim reach the blob's row (it waits there for the upload: a row lock on
    // PostgreSQL, the write lock on SQLite); whichever way the timing falls, the outcome must
    // be the same.
    tokio::time::sleep(Duration::from_millis(200)).await;
    release.send(()).unwrap();
    upload.await.unwrap();
    assert_eq!(
        claim.await.unwrap().unwrap(),
        Vec::new(),
        "a referenced blob was claimed"
    );
    let row = s.blob(&shared.hash).await.unwrap().unwrap();
    assert_eq!(row.state, BlobState::Valid);
    assert_eq!(scalar(s, &refs).await, 1);
    assert_eq!(s.lookup("ns", "new").await.unwrap().unwrap().blob, shared);

    // 2. The collector's claim, uncommitted, while an upload references the blob.
    assert!(s.delete_entry("ns", "new").await.unwrap());
    assert_eq!(scalar(s, &refs).await, 0);
    let (release, released) = tokio::sync::oneshot::channel();
    let collector = hold_transaction(
        s,
        vec![format!(
            "UPDATE blobs SET state = 'deleting' WHERE state = 'valid' AND refs = 0 AND hash = '{}'",
            shared.hash
        )],
        released,
    )
    .await;
    let upload = {
        let s = s.clone();
        let shared = shared.clone();
        tokio::spawn(async move { s.commit_entry(&entry("ns", "late", &shared, 6)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    release.send(()).unwrap();
    collector.await.unwrap();
    match upload.await.unwrap() {
        Err(Error::BlobUnavailable(hash)) => assert_eq!(hash, shared.hash),
        other => panic!("an upload referenced a blob being deleted: {other:?}"),
    }
    assert_eq!(s.lookup("ns", "late").await.unwrap(), None);
    assert_eq!(s.blob(&shared.hash).await.unwrap().unwrap().state, BlobState::Deleting);
    assert_eq!(scalar(s, &refs).await, 0);
    f.finish().await;
}

/// A purge and a namespace's deletion larger than one transaction's worth: everything goes,
/// nothing else does, the totals stay exact, and the writer was taken several times (on
/// SQLite uploads queue for it in between) rather than once for the whole deletion.
async fn large_deletions_take_the_writer_in_turns(db: Db) {
    let f = Fixture::new(db).await;
    let s = &f.store;
    const MANY: usize = 1_100;
    let admin_holds = || writer_holds(s, "admin");
    let token = insert_token(s, None, "bulk-secret", "ci").await;
    for ns in ["bulk", "kept"] {
        s.ensure_namespace(ns, 1).await.unwrap();
    }
    let shared = blob("shared", 10, 10, Encoding::Raw);
    s.insert_pending_blob(&shared, 1).await.unwrap();
    let keys: Vec<String> = (0..MANY).map(|i| format!("k{i}")).collect();
    for part in keys.chunks(50) {
        let puts: Vec<NewEntry> = part
            .iter()
            .flat_map(|key| {
                let by_token = NewEntry {
                    writer_token_id: Some(token),
                    ..entry("kept", key, &shared, 2)
                };
                [entry("bulk", key, &shared, 2), by_token]
            })
            .collect();
        for done in futures_util::future::join_all(puts.iter().map(|put| s.commit_entry(put))).await {
            done.unwrap();
        }
    }
    s.commit_entry(&entry("kept", "anonymous", &shared, 2)).await.unwrap();

    let before = admin_holds();
    assert_eq!(s.purge_token_entries(token).await.unwrap(), MANY as u64);
    let purge_holds = admin_holds() - before;
    assert!(purge_holds >= 3, "the purge took the writer {purge_holds} times");
    assert_eq!(s.purge_token_entries(token).await.unwrap(), 0);
    assert!(s.lookup("kept", "k0").await.unwrap().is_none());
    assert!(s.lookup("kept", "anonymous").await.unwrap().is_some());
    assert!(s.lookup("bulk", "k0").await.unwrap().is_some());

    let before = admin_holds();
    assert!(s.delete_namespace("bulk").await.unwrap());
    let delete_holds = admin_holds() - before;
    assert!(
        delete_holds >= 3,
        "deleting the namespace took the writer {delete_holds} times"
    );
    assert_eq!(
        scalar(s, "SELECT COUNT(*) FROM entries WHERE namespace = 'bulk'").await,
        0
    );
    assert!(s.namespace("bulk").await.unwrap().is_none());
    assert!(!s.delete_namespace("bulk").await.unwrap());
    assert_eq!(kept_totals(s).await, recount(s).await);
    f.finish().await;
}

/// The collector's statements over a sweep's whole batch of blobs go in several parts on
/// SQLite (each a turn of the writer), and every blob is claimed and its row deleted.
async fn a_sweep_batch_is_claimed_and_deleted_in_parts(db: Db) {
    let f = Fixture::new(db).await;
    let s = &f.store;
    const MANY: usize = 600;
    let collection_holds = || writer_holds(s, "collection");
    let blobs: Vec<BlobInfo> = (0..MANY)
        .map(|i| blob(&format!("swept {i}"), 10, 10, Encoding::Raw))
        .collect();
    for b in &blobs {
        s.insert_pending_blob(b, 1).await.unwrap();
    }
    let hashes: Vec<String> = blobs.iter().map(|b| b.hash.clone()).collect();
    let (abandoned, valid) = hashes.split_at(MANY / 2);
    for hash in valid {
        set_blob_state(s, hash, "valid").await;
    }
    exec(s, "UPDATE blobs SET last_referenced_at = 1").await;

    let before = collection_holds();
    let mut claimed: Vec<String> = s
        .claim_abandoned_blobs(abandoned, 2)
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.hash)
        .collect();
    claimed.extend(
        s.claim_unreferenced_blobs(valid, Some(2))
            .await
            .unwrap()
            .into_iter()
            .map(|b| b.hash),
    );
    claimed.sort();
    let mut expected = hashes.clone();
    expected.sort();
    assert_eq!(claimed, expected, "every blob of the batch is claimed once");
    assert_eq!(s.delete_blob_rows(&hashes).await.unwrap(), MANY as u64);
    assert_eq!(scalar(s, "SELECT COUNT(*) FROM blobs").await, 0);
    let turns = collection_holds() - before;
    if db == Db::Sqlite {
        assert!(
            turns >= 6,
            "claims and deletions of {MANY} blobs took the writer {turns} times"
        );
    }
    assert_eq!(kept_totals(s).await, recount(s).await);
    f.finish().await;
}

/// A rewrite with other bytes of the same meaning is told from a conflicting one; without a
/// meaning, the bytes decide. Concurrent rewrites (on SQLite often one transaction) are each
/// compared with what the key held just before.
async fn rewrites_compare_meanings(db: Db) {
    let f = Fixture::new(db).await;
    let s = &f.store;
    s.ensure_namespace("ns", 1).await.unwrap();
    let stored = |tag: &str, meaning: Option<&str>| BlobInfo {
        meaning: meaning.map(|m| Meaning::from_hex(&hash(m)).unwrap()),
        ..blob(tag, 10, 10, Encoding::Raw)
    };
    let first = stored("members in one order", Some("members"));
    let reordered = stored("members in another order", Some("members"));
    let other = stored("other members", Some("other members"));
    let opaque = stored("opaque bytes", None);
    let other_opaque = stored("other opaque bytes", None);
    for b in [&first, &reordered, &other, &opaque, &other_opaque] {
        assert!(s.insert_pending_blob(b, 1).await.unwrap());
    }
    use Rewrite::*;
    let steps = [
        (&first, PutOutcome::Created),
        (&reordered, PutOutcome::Replaced(SameMeaning)),
        (&first, PutOutcome::Replaced(SameMeaning)),
        (&first, PutOutcome::Replaced(Identical)),
        (&other, PutOutcome::Replaced(Conflicting)),
        (&opaque, PutOutcome::Replaced(Conflicting)),
        (&other_opaque, PutOutcome::Replaced(Conflicting)),
        (&other_opaque, PutOutcome::Replaced(Identical)),
        (&reordered, PutOutcome::Replaced(Conflicting)),
    ];
    for (i, (b, outcome)) in steps.into_iter().enumerate() {
        let written = s.commit_entry(&entry("ns", "k", b, 10 + i as i64)).await.unwrap();
        assert_eq!(written, outcome, "step {i}");
        assert_eq!(
            s.lookup("ns", "k").await.unwrap().unwrap().blob,
            *b,
            "the last write is served"
        );
    }
    let row = s.blob(&reordered.hash).await.unwrap().unwrap();
    assert_eq!(row.info.meaning, reordered.meaning, "stored with the blob");

    let rewrites: Vec<NewEntry> = (0..16)
        .map(|i| entry("ns", "k", if i % 2 == 0 { &first } else { &reordered }, 100))
        .collect();
    for outcome in futures_util::future::join_all(rewrites.iter().map(|e| s.commit_entry(e))).await {
        let outcome = outcome.unwrap();
        assert!(
            matches!(outcome, PutOutcome::Replaced(SameMeaning | Identical)),
            "{outcome:?}"
        );
    }
    f.finish().await;
}

on_both_databases!(
    a_sweep_batch_is_claimed_and_deleted_in_parts,
    rewrites_compare_meanings,
    large_deletions_take_the_writer_in_turns,
    claim_races_a_new_reference,
    totals_match_a_recount,
    verify_recounts_and_repairs_drifted_totals,
    upgrading_fills_the_totals_from_existing_data,
    entry_changes,
    evictions_classify_misses,
    storage_usage,
    lifecycle,
    namespaces,
    blobs,
    commit_entry,
    lookup,
    delete_entry,
    forget_blob,
    apply_stats,
    concurrent_commits,
    simultaneous_commits_fail_alone
);

// ---------------------------------------------------------------------------------------------
// Migrations lockstep
// ---------------------------------------------------------------------------------------------

fn migration_files(dialect: &str) -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(dialect);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// A column as both databases can describe it.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone)]
struct Column {
    name: String,
    /// Integer width in bits, `text` or `boolean`: what sqlx decodes it as.
    kind: String,
    not_null: bool,
}

/// An index created with CREATE INDEX.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone)]
struct Index {
    name: String,
    table: String,
    columns: Vec<String>,
    unique: bool,
}

/// A foreign key.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone)]
struct ForeignKey {
    table: String,
    columns: Vec<String>,
    references: String,
    referenced_columns: Vec<String>,
    on_delete: String,
}

#[derive(Debug, PartialEq, Eq, Default)]
struct Schema {
    /// table -> columns in declaration order.
    tables: BTreeMap<String, Vec<Column>>,
    /// table -> primary key columns in key order.
    primary_keys: BTreeMap<String, Vec<String>>,
    /// (table, columns) of UNIQUE constraints.
    unique: BTreeSet<(String, Vec<String>)>,
    indexes: BTreeSet<Index>,
    foreign_keys: BTreeSet<ForeignKey>,
}

fn sqlite_kind(declared: &str) -> String {
    match declared.to_ascii_uppercase().as_str() {
        // SQLite integers are 64-bit whatever the declaration says.
        "INTEGER" | "BIGINT" | "INT" => "int64".into(),
        "TEXT" => "text".into(),
        "BOOLEAN" => "boolean".into(),
        other => panic!("unexpected SQLite column type {other}: add it to the test's mapping"),
    }
}

fn postgres_kind(data_type: &str) -> String {
    match data_type {
        "bigint" => "int64".into(),
        "integer" => "int32".into(),
        "smallint" => "int16".into(),
        "text" => "text".into(),
        "boolean" => "boolean".into(),
        other => panic!("unexpected PostgreSQL column type {other}: add it to the test's mapping"),
    }
}

async fn sqlite_schema(pool: &sqlx::SqlitePool) -> Schema {
    let mut schema = Schema::default();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' \
         AND name NOT LIKE 'sqlite_%' AND name <> '_sqlx_migrations' ORDER BY name",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for table in tables {
        let rows: Vec<(String, String, bool, i64)> =
            sqlx::query_as("SELECT name, type, \"notnull\", pk FROM pragma_table_info($1) ORDER BY cid")
                .bind(&table)
                .fetch_all(pool)
                .await
                .unwrap();
        let pk_count = rows.iter().filter(|r| r.3 > 0).count();
        let mut pk: Vec<(i64, String)> = Vec::new();
        let mut columns = Vec::new();
        for (name, declared, not_null, pk_pos) in rows {
            // A lone INTEGER PRIMARY KEY is the rowid: it can never be NULL.
            let rowid = pk_pos > 0 && pk_count == 1 && declared.eq_ignore_ascii_case("INTEGER");
            columns.push(Column {
                name: name.clone(),
                kind: sqlite_kind(&declared),
                not_null: not_null || rowid,
            });
            if pk_pos > 0 {
                pk.push((pk_pos, name));
            }
        }
        pk.sort();
        schema
            .primary_keys
            .insert(table.clone(), pk.into_iter().map(|p| p.1).collect());
        schema.tables.insert(table.clone(), columns);

        let indexes: Vec<(String, bool, String)> =
            sqlx::query_as("SELECT name, \"unique\", origin FROM pragma_index_list($1)")
                .bind(&table)
                .fetch_all(pool)
                .await
                .unwrap();
        for (name, unique, origin) in indexes {
            let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_index_info($1) ORDER BY seqno")
                .bind(&name)
                .fetch_all(pool)
                .await
                .unwrap();
            match origin.as_str() {
                "c" => {
                    schema.indexes.insert(Index {
                        name,
                        table: table.clone(),
                        columns,
                        unique,
                    });
                }
                "u" => {
                    schema.unique.insert((table.clone(), columns));
                }
                "pk" => {} // compared through primary_keys
                other => panic!("unknown index origin {other}"),
            }
        }

        let fks: Vec<(i64, i64, String, String, String, String)> = sqlx::query_as(
            "SELECT id, seq, \"table\", \"from\", \"to\", on_delete FROM pragma_foreign_key_list($1) ORDER BY id, seq",
        )
        .bind(&table)
        .fetch_all(pool)
        .await
        .unwrap();
        let mut by_id: BTreeMap<i64, ForeignKey> = BTreeMap::new();
        for (id, _seq, references, from, to, on_delete) in fks {
            let fk = by_id.entry(id).or_insert_with(|| ForeignKey {
                table: table.clone(),
                columns: vec![],
                references,
                referenced_columns: vec![],
                on_delete,
            });
            fk.columns.push(from);
            fk.referenced_columns.push(to);
        }
        schema.foreign_keys.extend(by_id.into_values());
    }
    // Every CREATE INDEX was seen through its table.
    let all_indexes: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_autoindex_%' \
         AND tbl_name <> '_sqlx_migrations'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(all_indexes as usize, schema.indexes.len());
    schema
}

/// contype, conname, table, columns, referenced table, referenced columns, confdeltype.
type ConstraintRow = (String, String, String, Vec<String>, Option<String>, Vec<String>, String);

async fn postgres_schema(pool: &sqlx::PgPool) -> Schema {
    let mut schema = Schema::default();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::TEXT FROM information_schema.tables WHERE table_schema = current_schema() \
         AND table_type = 'BASE TABLE' AND table_name <> '_sqlx_migrations' ORDER BY table_name",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for table in tables {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT column_name::TEXT, data_type::TEXT, is_nullable::TEXT FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(&table)
        .fetch_all(pool)
        .await
        .unwrap();
        let columns = rows
            .into_iter()
            .map(|(name, data_type, nullable)| Column {
                name,
                kind: postgres_kind(&data_type),
                not_null: nullable == "NO",
            })
            .collect();
        schema.tables.insert(table.clone(), columns);

        let pk: Vec<String> = sqlx::query_scalar(
            "SELECT a.attname::TEXT FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
             WHERE i.indrelid = (quote_ident(current_schema()) || '.' || quote_ident($1))::regclass \
             AND i.indisprimary ORDER BY array_position(i.indkey::INT2[], a.attnum)",
        )
        .bind(&table)
        .fetch_all(pool)
        .await
        .unwrap();
        schema.primary_keys.insert(table.clone(), pk);
    }

    // Constraints: unique and foreign keys, with columns in constraint order.
    let constraints: Vec<ConstraintRow> = sqlx::query_as(
        "SELECT k.contype::TEXT, k.conname::TEXT, t.relname::TEXT, \
             ARRAY(SELECT a.attname::TEXT FROM unnest(k.conkey) WITH ORDINALITY AS c(attnum, ord) \
                   JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = c.attnum ORDER BY c.ord), \
             r.relname::TEXT, \
             ARRAY(SELECT a.attname::TEXT FROM unnest(k.confkey) WITH ORDINALITY AS c(attnum, ord) \
                   JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = c.attnum ORDER BY c.ord), \
             k.confdeltype::TEXT \
             FROM pg_constraint k JOIN pg_class t ON t.oid = k.conrelid \
             LEFT JOIN pg_class r ON r.oid = k.confrelid \
             WHERE t.relnamespace = current_schema()::REGNAMESPACE AND t.relname <> '_sqlx_migrations' \
             AND k.contype IN ('u', 'f')",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for (kind, _name, table, columns, references, referenced_columns, on_delete) in constraints {
        if kind == "u" {
            schema.unique.insert((table, columns));
        } else {
            let on_delete = match on_delete.as_str() {
                "a" => "NO ACTION",
                "r" => "RESTRICT",
                "c" => "CASCADE",
                "n" => "SET NULL",
                "d" => "SET DEFAULT",
                other => panic!("unknown confdeltype {other}"),
            };
            schema.foreign_keys.insert(ForeignKey {
                table,
                columns,
                references: references.expect("referenced table"),
                referenced_columns,
                on_delete: on_delete.into(),
            });
        }
    }

    // Indexes made by CREATE INDEX: not those backing a primary key or unique constraint.
    let indexes: Vec<(String, String, bool, Vec<String>)> = sqlx::query_as(
        "SELECT c.relname::TEXT, t.relname::TEXT, i.indisunique, \
         ARRAY(SELECT a.attname::TEXT FROM unnest(i.indkey::INT2[]) WITH ORDINALITY AS k(attnum, ord) \
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum ORDER BY k.ord) \
         FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid \
         WHERE t.relnamespace = current_schema()::REGNAMESPACE AND t.relname <> '_sqlx_migrations' \
         AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.contype IN ('p', 'u'))",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for (name, table, unique, columns) in indexes {
        schema.indexes.insert(Index {
            name,
            table,
            columns,
            unique,
        });
    }
    // Cross-check with pg_indexes: the same names once primary keys and unique constraints
    // (named after their constraint) are left out.
    let names: BTreeSet<String> = sqlx::query_scalar(
        "SELECT indexname::TEXT FROM pg_indexes WHERE schemaname = current_schema() \
         AND tablename <> '_sqlx_migrations' AND indexname NOT LIKE '%\\_pkey' \
         AND indexname NOT IN (SELECT conname FROM pg_constraint WHERE contype = 'u')",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(names, schema.indexes.iter().map(|i| i.name.clone()).collect());
    schema
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_in_lockstep() {
    // Same files, same versions, same order.
    let sqlite_files = migration_files("sqlite");
    let postgres_files = migration_files("postgres");
    assert!(!sqlite_files.is_empty());
    assert_eq!(sqlite_files, postgres_files);
    for name in &sqlite_files {
        let version = name.split('_').next().unwrap();
        assert!(
            name.ends_with(".sql") && version.parse::<u64>().is_ok(),
            "{name}: expected <version>_<name>.sql"
        );
    }
    let versions = |m: &sqlx::migrate::Migrator| -> Vec<(i64, String)> {
        m.iter().map(|m| (m.version, m.description.to_string())).collect()
    };
    let sqlite_migrator = sqlx::migrate!("./migrations/sqlite");
    let postgres_migrator = sqlx::migrate!("./migrations/postgres");
    assert_eq!(versions(&sqlite_migrator), versions(&postgres_migrator));
    assert_eq!(sqlite_migrator.iter().count(), sqlite_files.len());

    // Same schema after migrating a fresh database of each kind.
    let dir = tempfile::tempdir().unwrap();
    let sqlite_db = TestDb::create(Db::Sqlite, dir.path()).await;
    let postgres_db = TestDb::create(Db::Postgres, dir.path()).await;
    let sqlite = MetaStore::connect(&sqlite_db.url, &pool_settings()).await.unwrap();
    let postgres = MetaStore::connect(&postgres_db.url, &pool_settings()).await.unwrap();
    sqlite.migrate().await.unwrap();
    postgres.migrate().await.unwrap();
    let (MetaStore::Sqlite(s), MetaStore::Postgres(p)) = (&sqlite, &postgres) else {
        panic!("wrong store kinds");
    };
    let left = sqlite_schema(s.pool()).await;
    let right = postgres_schema(p.pool()).await;

    let table_names = |s: &Schema| s.tables.keys().cloned().collect::<Vec<_>>();
    assert_eq!(table_names(&left), table_names(&right), "tables");
    assert!(left.tables.contains_key("entries"), "{left:?}");
    for (table, columns) in &left.tables {
        let other = &right.tables[table];
        let names = |c: &[Column]| c.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(columns), names(other), "columns of {table}");
        for (a, b) in columns.iter().zip(other) {
            assert_eq!(a.not_null, b.not_null, "NOT NULL of {table}.{}", a.name);
            assert_eq!(a.kind, b.kind, "type of {table}.{}", a.name);
        }
    }
    assert_eq!(left.primary_keys, right.primary_keys, "primary keys");
    assert_eq!(left.unique, right.unique, "unique constraints");
    let index_names = |s: &Schema| s.indexes.iter().map(|i| i.name.clone()).collect::<Vec<_>>();
    assert_eq!(index_names(&left), index_names(&right), "index names");
    assert!(!left.indexes.is_empty());
    assert_eq!(left.indexes, right.indexes, "index definitions");
    assert_eq!(left.foreign_keys, right.foreign_keys, "foreign keys");
    assert_eq!(left, right);

    sqlite.close().await;
    postgres.close().await;
    postgres_db.drop_database().await;
}

/// Opening and migrating a SQLite database is start-up, not a request: it must not be bound
/// by `acquire_timeout`, the longest a request waits for a connection (once 1 s, which a
/// first open on a busy machine exceeded). Here the bound is shorter than any open can take.
#[tokio::test]
async fn sqlite_opens_and_migrates_whatever_the_acquire_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let test_db = TestDb::create(Db::Sqlite, dir.path()).await;
    let settings = PoolSettings {
        max_connections: 4,
        acquire_timeout: Duration::from_nanos(1),
    };
    let store = MetaStore::connect(&test_db.url, &settings).await.expect("connect");
    store.migrate().await.expect("migrate");
    store.close().await;
}

/// Commits leave the WAL to a background checkpointer (a commit that checkpoints holds up the
/// uploads behind it): rows written reach the main database file without any commit or
/// close doing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_wal_is_checkpointed_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let test_db = TestDb::create(Db::Sqlite, dir.path()).await;
    let store = MetaStore::connect(&test_db.url, &pool_settings()).await.unwrap();
    store.migrate().await.unwrap();
    let main_file = dir.path().join("hearth.db");
    // Settled: whatever the migrations wrote has been checkpointed.
    let mut settled = std::fs::read(&main_file).unwrap();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = std::fs::read(&main_file).unwrap();
        if now == settled {
            break;
        }
        settled = now;
    }

    // A few commits: far below SQLite's own checkpoint threshold, so only the background
    // checkpointer can carry them into the main file.
    for i in 0..5 {
        store.ensure_namespace(&format!("checkpointed-{i}"), 1).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read(&main_file).unwrap() == settled {
        assert!(
            Instant::now() < deadline,
            "the WAL was not checkpointed into {main_file:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store.close().await;
}
