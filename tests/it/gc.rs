//! Size budgets, LRU eviction, quotas and garbage collection, on both databases, including
//! the race between uploads of shared content and a collector deleting blobs.
use crate::common;
use common::{eventually, incompressible, sample, start_server_with, Db, TestServer};
use hearth::gc::{collect, GcSettings};
use hearth::meta::{AccessUpdate, MetaStore, MetadataStore};
use std::time::Duration;

const ENTRY: usize = 10_000;

/// A server on the local store or, with `on_s3`, on a fresh bucket of the test S3 server.
async fn server_on(db: Db, on_s3: bool) -> TestServer {
    if !on_s3 {
        return server(db).await;
    }
    let bucket = common::s3::bucket().await;
    start_server_with(db, move |c| {
        c.gc_interval = Duration::from_secs(3600);
        c.compression_level = 0;
        common::s3::configure(c, &bucket);
    })
    .await
}

/// Blobs in the server's store, whichever backend it uses.
async fn stored_objects(t: &TestServer) -> usize {
    match &t.config.s3_bucket {
        Some(bucket) if t.config.storage == hearth::config::StorageKind::S3 => common::s3::keys(bucket).await.len(),
        _ => t.blob_files().len(),
    }
}

async fn server(db: Db) -> TestServer {
    // No background collection: each test runs it when it wants.
    start_server_with(db, |c| {
        c.gc_interval = Duration::from_secs(3600);
        c.compression_level = 0;
    })
    .await
}

fn settings(max_size: u64, grace: Duration, dry_run: bool) -> GcSettings {
    GcSettings {
        max_size,
        grace,
        dry_run,
    }
}

/// Stores `count` distinct entries of 10 000 bytes as `ns/k<i>`, then sets their access
/// times to `first_access + i` (so `k0` is the least recently used).
async fn fill(t: &TestServer, ns: &str, count: usize, first_access: i64) {
    let mut accesses = Vec::new();
    for i in 0..count {
        let body = incompressible(ENTRY, (ns.len() * 1000 + i) as u64 + first_access as u64);
        let status = t
            .client
            .put(t.url(&format!("/{ns}/k{i}")))
            .body(body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 201);
        accesses.push(AccessUpdate {
            namespace: ns.into(),
            key: format!("k{i}"),
            last_access_at: first_access + i as i64,
            hits: 0,
        });
    }
    // Access times far in the past win over the write time only if the write time is older.
    set_access_times(t.meta(), &accesses).await;
}

async fn set_access_times(meta: &MetaStore, accesses: &[AccessUpdate]) {
    let sql = "UPDATE entries SET last_access_at = $1 WHERE namespace = $2 AND key = $3";
    for a in accesses {
        match meta {
            MetaStore::Sqlite(s) => {
                sqlx::query(sql)
                    .bind(a.last_access_at)
                    .bind(&a.namespace)
                    .bind(&a.key)
                    .execute(s.pool())
                    .await
                    .unwrap();
            }
            MetaStore::Postgres(s) => {
                sqlx::query(sql)
                    .bind(a.last_access_at)
                    .bind(&a.namespace)
                    .bind(&a.key)
                    .execute(s.pool())
                    .await
                    .unwrap();
            }
        }
    }
}

async fn status(t: &TestServer, path: &str) -> u16 {
    t.client.get(t.url(path)).send().await.unwrap().status().as_u16()
}

async fn physical(meta: &MetaStore) -> i64 {
    meta.storage_usage().await.unwrap().physical_bytes
}

/// Filling past the budget evicts the least recently used first and lands under the
/// low-water mark (85 %), evicting no more than needed.
async fn eviction_is_lru_and_lands_under_low_water_on(db: Db, on_s3: bool) {
    let t = server_on(db, on_s3).await;
    fill(&t, "ns", 20, 1000).await;
    let blobs = t.running().state().cache.blobs().clone();
    assert_eq!(physical(t.meta()).await, 200_000);

    let dry = collect(t.meta(), &blobs, &settings(100_000, Duration::from_secs(3600), true))
        .await
        .unwrap();
    assert_eq!(
        (dry.evicted_entries, dry.freed_bytes, dry.stored_bytes_after),
        (12, 120_000, 80_000)
    );
    assert_eq!(stored_objects(&t).await, 20, "a dry run changed the store");
    assert_eq!(physical(t.meta()).await, 200_000);

    let report = collect(t.meta(), &blobs, &settings(100_000, Duration::from_secs(3600), false))
        .await
        .unwrap();
    assert_eq!(
        (report.evicted_entries, report.freed_blobs, report.freed_bytes),
        (12, 12, 120_000)
    );
    assert_eq!(report.stored_bytes_after, 80_000);
    assert!(report.stored_bytes_after as f64 <= 100_000.0 * hearth::gc::LOW_WATER);
    assert_eq!(stored_objects(&t).await, 8);
    for i in 0..20 {
        assert_eq!(
            status(&t, &format!("/ns/k{i}")).await,
            if i < 12 { 404 } else { 200 },
            "k{i}"
        );
    }
    // Under the high-water mark nothing more goes.
    let again = collect(t.meta(), &blobs, &settings(100_000, Duration::from_secs(3600), false))
        .await
        .unwrap();
    assert_eq!(again.evicted_entries, 0);
    t.stop().await;
}

async fn eviction_is_lru_and_lands_under_low_water(db: Db) {
    eviction_is_lru_and_lands_under_low_water_on(db, false).await
}

async fn eviction_is_lru_and_lands_under_low_water_s3(db: Db) {
    eviction_is_lru_and_lands_under_low_water_on(db, true).await
}

/// Misses on evicted keys are told apart from cold ones.
async fn misses_on_evicted_keys_are_classified(db: Db) {
    let mut t = start_server_with(db, |c| {
        c.gc_interval = Duration::from_secs(3600);
        c.stats_flush_interval = Duration::from_secs(3600);
    })
    .await;
    fill(&t, "ns", 3, 10).await;
    let blobs = t.running().state().cache.blobs().clone();
    collect(t.meta(), &blobs, &settings(15_000, Duration::from_secs(3600), false))
        .await
        .unwrap();
    assert_eq!(status(&t, "/ns/k0").await, 404); // evicted
    assert_eq!(status(&t, "/ns/never").await, 404); // cold
    t.restart().await;
    let c = common::stats_total(t.meta(), "ns").await;
    assert_eq!((c.misses, c.misses_evicted), (2, 1));
    t.stop().await;
}

/// One project cannot evict another's warm set while that one stays within its quota, and
/// a namespace over its own quota is cut down to it.
async fn quotas_isolate_namespaces_on(db: Db, on_s3: bool) {
    let t = server_on(db, on_s3).await;
    for (ns, quota) in [("quiet", 50_000), ("over", 20_000)] {
        hearth::admin::create_namespace(t.meta(), ns, Some(quota), false)
            .await
            .unwrap();
    }
    fill(&t, "quiet", 3, 100).await; // oldest of all, but within its quota
    fill(&t, "over", 4, 200).await; // 40 000 bytes against a 20 000 quota
    fill(&t, "busy", 15, 300).await; // no quota
    let blobs = t.running().state().cache.blobs().clone();
    let report = collect(t.meta(), &blobs, &settings(100_000, Duration::from_secs(3600), false))
        .await
        .unwrap();
    // "over": down to 85 % of its quota (one entry left); then the budget: only "busy" gives.
    assert_eq!(report.evicted_by_namespace.get("over"), Some(&3));
    assert_eq!(report.evicted_by_namespace.get("quiet"), None);
    assert_eq!(report.evicted_by_namespace.get("busy"), Some(&11));
    assert_eq!(report.stored_bytes_after, 80_000);
    for i in 0..3 {
        assert_eq!(status(&t, &format!("/quiet/k{i}")).await, 200);
    }
    assert_eq!(status(&t, "/over/k3").await, 200);
    assert_eq!(status(&t, "/over/k2").await, 404);
    assert_eq!(status(&t, "/busy/k10").await, 404);
    assert_eq!(status(&t, "/busy/k11").await, 200);
    t.stop().await;
}

async fn quotas_isolate_namespaces(db: Db) {
    quotas_isolate_namespaces_on(db, false).await
}

async fn quotas_isolate_namespaces_s3(db: Db) {
    quotas_isolate_namespaces_on(db, true).await
}

/// Blobs no entry points at, and uploads that never finished, go after the grace period.
async fn unreferenced_blobs_are_swept_after_grace_on(db: Db, on_s3: bool) {
    let t = server_on(db, on_s3).await;
    let body = incompressible(5000, 1);
    t.client.put(t.url("/ns/gone")).body(body.clone()).send().await.unwrap();
    t.client
        .put(t.url("/ns/kept"))
        .body(incompressible(5000, 2))
        .send()
        .await
        .unwrap();
    assert_eq!(t.client.delete(t.url("/ns/gone")).send().await.unwrap().status(), 204);
    let abandoned = hearth::blob::BlobInfo {
        meaning: None,
        hash: blake3::hash(b"never finished").to_hex().to_string(),
        raw_size: 14,
        stored_size: 14,
        encoding: hearth::blob::Encoding::Raw,
    };
    assert!(t.meta().insert_pending_blob(&abandoned, 1).await.unwrap());
    let blobs = t.running().state().cache.blobs().clone();

    // Within the grace period nothing is swept.
    let early = collect(t.meta(), &blobs, &settings(0, Duration::from_secs(3600), false))
        .await
        .unwrap();
    assert_eq!(
        early.swept_blobs, 1,
        "only the abandoned upload from 1970 is old enough"
    );
    assert_eq!(stored_objects(&t).await, 2);

    tokio::time::sleep(Duration::from_millis(1100)).await; // timestamps have one-second resolution
    let late = collect(t.meta(), &blobs, &settings(0, Duration::ZERO, false))
        .await
        .unwrap();
    assert_eq!((late.swept_blobs, late.swept_bytes), (1, 5000));
    assert_eq!(stored_objects(&t).await, 1);
    assert!(t.meta().blob(&blake3::hash(&body).to_hex()).await.unwrap().is_none());
    assert!(t.meta().blob(&abandoned.hash).await.unwrap().is_none());
    assert_eq!(status(&t, "/ns/kept").await, 200);
    t.stop().await;
}

async fn unreferenced_blobs_are_swept_after_grace(db: Db) {
    unreferenced_blobs_are_swept_after_grace_on(db, false).await
}

async fn unreferenced_blobs_are_swept_after_grace_s3(db: Db) {
    unreferenced_blobs_are_swept_after_grace_on(db, true).await
}

/// Uploads of shared content race a collector that keeps evicting everything and freeing
/// blobs: at the end every entry points at a valid blob whose file exists, and every upload
/// succeeded.
async fn uploads_never_lose_blobs_to_a_racing_collector_on(db: Db, on_s3: bool) {
    let t = server_on(db, on_s3).await;
    let blobs = t.running().state().cache.blobs().clone();
    let contents: Vec<Vec<u8>> = (0..96).map(|i| incompressible(3000, 500 + i)).collect();
    // Uploads go on until the collector has freed enough blobs under them (bounded in time
    // and count), so that the two overlap however fast or slow the machine is.
    const WANTED_FREES: u64 = 5;
    let freed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let collector = {
        let (meta, blobs, stop, freed) = (t.meta().clone(), blobs.clone(), stop.clone(), freed.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                // A budget of 1 byte: every run evicts every entry and frees its blob at once,
                // whatever its age (eviction, unlike the sweep, has no grace period).
                let report = collect(&meta, &blobs, &settings(1, Duration::from_secs(3600), false))
                    .await
                    .unwrap();
                freed.fetch_add(report.freed_blobs, std::sync::atomic::Ordering::Relaxed);
                // Back to back, a 1-byte budget would evict each entry the instant it is
                // written, starving every upload; a real collector runs minutes apart.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let started = std::time::Instant::now();
    let stored = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut uploads = Vec::new();
    for task in 0..8 {
        let (client, base, contents, freed, stored) = (
            t.client.clone(),
            t.url(""),
            contents.clone(),
            freed.clone(),
            stored.clone(),
        );
        uploads.push(tokio::spawn(async move {
            let mut i = 0;
            while i < 5
                || (freed.load(std::sync::atomic::Ordering::Relaxed) < WANTED_FREES
                    && started.elapsed() < Duration::from_secs(8)
                    && i < 3000)
            {
                let body = contents[(task * 13 + i * 5) % contents.len()].clone();
                let response = client
                    .put(format!("{base}/ns/t{task}/k{i}"))
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let code = response.status().as_u16();
                let text = response.text().await.unwrap();
                // Against a collector that evicts everything back to back, an upload may run
                // out of its bounded retries: then it must be refused cleanly (503, nothing
                // stored), never half-stored.
                let refused = code == 503 && text.contains("not available for new references");
                assert!(matches!(code, 201 | 204) || refused, "upload failed: {code} {text}");
                if !refused {
                    stored.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    for upload in uploads {
        upload.await.unwrap();
    }
    stop.cancel();
    collector.await.unwrap();
    let freed = freed.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("race: {freed} blobs freed in {:?}", started.elapsed());
    assert!(freed > 0, "the collector never freed a blob while uploads ran");
    assert!(
        stored.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "no upload got through"
    );
    assert_every_entry_has_its_blob(&t).await;
    t.stop().await;
}

async fn uploads_never_lose_blobs_to_a_racing_collector(db: Db) {
    uploads_never_lose_blobs_to_a_racing_collector_on(db, false).await
}

async fn uploads_never_lose_blobs_to_a_racing_collector_s3(db: Db) {
    uploads_never_lose_blobs_to_a_racing_collector_on(db, true).await
}

async fn assert_every_entry_has_its_blob(t: &TestServer) {
    type Row = (
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<i64>,
        Option<i64>,
    );
    let sql = "SELECT e.key, b.hash, b.state, b.encoding, b.raw_size, b.stored_size \
               FROM entries e LEFT JOIN blobs b ON b.hash = e.blob_hash";
    let rows: Vec<Row> = match t.meta() {
        MetaStore::Sqlite(s) => sqlx::query_as(sql).fetch_all(s.pool()).await.unwrap(),
        MetaStore::Postgres(s) => sqlx::query_as(sql).fetch_all(s.pool()).await.unwrap(),
    };
    let blobs = t.running().state().cache.blobs().clone();
    for (key, hash, state, encoding, raw_size, stored_size) in rows {
        let hash = hash.unwrap_or_else(|| panic!("{key}: no blob row"));
        assert_eq!(state.as_deref(), Some("valid"), "{key}");
        let info = hearth::blob::BlobInfo {
            meaning: None,
            hash: hash.clone(),
            raw_size: raw_size.unwrap() as u64,
            stored_size: stored_size.unwrap() as u64,
            encoding: encoding.unwrap().parse().unwrap(),
        };
        assert!(
            blobs.read(&info).await.unwrap().is_some(),
            "{key}: blob {hash} is missing from the store"
        );
    }
}

/// The operator's command: a dry run reports and changes nothing; a real run frees.
async fn gc_command_dry_run_then_real(db: Db) {
    let t = server(db).await;
    fill(&t, "ns", 5, 10).await;
    let (url, dir) = (t.db.url.clone(), t.config.data_dir.clone());
    let run = move |dry: bool| {
        let (url, dir) = (url.clone(), dir.clone());
        tokio::task::spawn_blocking(move || {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hearth"));
            cmd.args(["gc", "--max-size", "30000", "--database-url", &url, "--data-dir"])
                .arg(&dir);
            if dry {
                cmd.arg("--dry-run");
            }
            cmd.output().unwrap()
        })
    };
    let out = run(true).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("would free 29.3 KiB in 3 blobs by evicting 3 entries"),
        "{text}"
    );
    assert_eq!(t.blob_files().len(), 5);
    let out = run(false).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("freed 29.3 KiB in 3 blobs by evicting 3 entries"),
        "{text}"
    );
    assert_eq!(t.blob_files().len(), 2);
    t.stop().await;
}

/// `hearth verify` finds planted orphans, missing files and corrupt blobs; `--repair` fixes
/// them; afterwards the store and the database agree.
async fn verify_finds_and_repairs_planted_damage(db: Db) {
    let t = server(db).await;
    let (missing, corrupt, fine) = (
        incompressible(4000, 1),
        incompressible(4000, 2),
        incompressible(4000, 3),
    );
    for (key, body) in [("missing", &missing), ("corrupt", &corrupt), ("fine", &fine)] {
        t.client
            .put(t.url(&format!("/ns/{key}")))
            .body(body.clone())
            .send()
            .await
            .unwrap();
    }
    let store = hearth::blob::LocalStore::open(&t.config.data_dir).unwrap();
    let path_of = |body: &[u8]| store.blob_path(&blake3::hash(body).to_hex(), hearth::blob::Encoding::Raw);
    std::fs::remove_file(path_of(&missing)).unwrap();
    let mut damaged = std::fs::read(path_of(&corrupt)).unwrap();
    damaged[100] ^= 0xff;
    std::fs::write(path_of(&corrupt), damaged).unwrap();
    let orphan = path_of(&incompressible(10, 9));
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, b"nobody points at me").unwrap();
    let junk = t.config.data_dir.join("blobs/not-a-blob.txt");
    std::fs::write(&junk, b"x").unwrap();

    let blob_store = hearth::blob::BlobStore::Local(store.clone());
    let found = hearth::reconcile::verify(t.meta(), &blob_store, false).await.unwrap();
    assert_eq!(found.checked_blobs, 3);
    assert_eq!(found.missing_blobs, [blake3::hash(&missing).to_hex().to_string()]);
    assert_eq!(found.corrupt_blobs, [blake3::hash(&corrupt).to_hex().to_string()]);
    let mut orphans = found.orphan_files.clone();
    orphans.sort();
    let mut expected = vec![orphan.display().to_string(), junk.display().to_string()];
    expected.sort();
    assert_eq!(orphans, expected);
    assert!(orphan.exists(), "a check without --repair changed something");

    let dir = t.config.data_dir.clone();
    let url = t.db.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
            .args(["verify", "--repair", "--database-url", &url, "--data-dir"])
            .arg(&dir)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("corrupt blob: ") && text.contains("missing blob: ") && text.contains("repaired"),
        "{text}"
    );
    assert!(!orphan.exists() && !junk.exists());
    assert!(t.meta().lookup("ns", "missing").await.unwrap().is_none());
    assert!(t.meta().lookup("ns", "corrupt").await.unwrap().is_none());
    assert_eq!(status(&t, "/ns/fine").await, 200);

    let clean = hearth::reconcile::verify(t.meta(), &blob_store, false).await.unwrap();
    assert!(clean.is_clean(), "{clean:?}");
    assert_eq!(clean.checked_blobs, 1);
    t.stop().await;
}

/// One collection at a time: another replica (PostgreSQL: another session) holding the lock
/// makes a run step aside instead of doing the same work twice.
async fn one_collection_at_a_time(db: Db) {
    let t = server(db).await;
    let blobs = t.running().state().cache.blobs().clone();
    let other = match t.meta() {
        // A second process's pool, as another replica would have.
        MetaStore::Postgres(_) => MetaStore::connect(
            &t.db.url,
            &hearth::meta::PoolSettings {
                max_connections: 2,
                acquire_timeout: Duration::from_secs(5),
            },
        )
        .await
        .unwrap(),
        MetaStore::Sqlite(_) => t.meta().clone(),
    };
    let held = other.try_collection_lock().await.unwrap().expect("the lock is free");
    let skipped = hearth::gc::collect_exclusively(t.meta(), &blobs, &settings(0, Duration::from_secs(3600), false))
        .await
        .unwrap();
    assert!(skipped.is_none(), "ran while another collection held the lock");
    held.release().await;
    let ran = hearth::gc::collect_exclusively(t.meta(), &blobs, &settings(0, Duration::from_secs(3600), false))
        .await
        .unwrap();
    assert!(ran.is_some(), "the lock was not released");
    t.stop().await;
}

/// Uploads that store a share of the budget wake the collector long before its interval:
/// under heavy writes the store stays near its budget instead of growing by everything one
/// interval receives.
async fn heavy_uploads_wake_the_collector_early(db: Db) {
    let t = start_server_with(db, |c| {
        c.gc_interval = Duration::from_secs(3600);
        c.compression_level = 0;
        c.max_size = hearth::size::ByteSize(100_000);
    })
    .await;
    for i in 0..30 {
        let status = t
            .client
            .put(t.url(&format!("/ns/k{i}")))
            .body(incompressible(ENTRY, 7000 + i))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 201);
    }
    // The last upload fired the trigger; the run after it may wait out the spacing between runs.
    let mut stored = physical(t.meta()).await;
    for _ in 0..100 {
        if stored as f64 <= 100_000.0 * hearth::gc::HIGH_WATER {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        stored = physical(t.meta()).await;
    }
    assert!(
        stored <= 95_000,
        "collector never ran: {stored} bytes stored for a 100 000 byte budget"
    );
    let kept = stored / ENTRY as i64;
    assert_eq!(stored_objects(&t).await as i64, kept);
    let mut served = 0;
    for i in 0..30 {
        served += i64::from(status(&t, &format!("/ns/k{i}")).await == 200);
    }
    assert_eq!(served, kept, "every blob left is served, every evicted key is a miss");
    // The server's metrics tell what its collector did (the runs are recorded as they end).
    let evicted = (30 - kept) as f64;
    let recorded = || async {
        let text = t.metrics().await;
        let figure = |series| sample(&text, series).unwrap_or(f64::NAN);
        figure("hearth_gc_runs_total") >= 1.0
            && figure("hearth_evicted_entries_total") == evicted
            && figure("hearth_evicted_bytes_total") == evicted * ENTRY as f64
            && figure("hearth_gc_freed_bytes_total") == evicted * ENTRY as f64
    };
    assert!(
        eventually(5, recorded).await,
        "the collector's runs are not in the metrics:\n{}",
        t.metrics().await
    );
    t.stop().await;
}

/// `hearth verify` on S3: a planted orphan object, a deleted object and a damaged one.
async fn verify_finds_and_repairs_planted_damage_s3(db: Db) {
    let t = server_on(db, true).await;
    let bucket = t.config.s3_bucket.clone().unwrap();
    let client = common::s3::client().await;
    let (missing, corrupt, fine) = (
        incompressible(4000, 1),
        incompressible(4000, 2),
        incompressible(4000, 3),
    );
    for (key, body) in [("missing", &missing), ("corrupt", &corrupt), ("fine", &fine)] {
        t.client
            .put(t.url(&format!("/ns/{key}")))
            .body(body.clone())
            .send()
            .await
            .unwrap();
    }
    let key_of = |body: &[u8]| {
        let h = blake3::hash(body).to_hex().to_string();
        format!("blobs/{}/{}/{h}", &h[0..2], &h[2..4])
    };
    client
        .delete_object()
        .bucket(&bucket)
        .key(key_of(&missing))
        .send()
        .await
        .unwrap();
    let mut damaged = corrupt.clone();
    damaged[100] ^= 0xff;
    client
        .put_object()
        .bucket(&bucket)
        .key(key_of(&corrupt))
        .body(damaged.into())
        .send()
        .await
        .unwrap();
    let orphan = key_of(&incompressible(10, 9));
    client
        .put_object()
        .bucket(&bucket)
        .key(&orphan)
        .body(b"nobody points at me".to_vec().into())
        .send()
        .await
        .unwrap();

    let blobs = t.running().state().cache.blobs().clone();
    let found = hearth::reconcile::verify(t.meta(), &blobs, false).await.unwrap();
    assert_eq!(found.checked_blobs, 3);
    assert_eq!(found.missing_blobs, [blake3::hash(&missing).to_hex().to_string()]);
    assert_eq!(found.corrupt_blobs, [blake3::hash(&corrupt).to_hex().to_string()]);
    assert_eq!(found.orphan_files, std::slice::from_ref(&orphan));
    let repaired = hearth::reconcile::verify(t.meta(), &blobs, true).await.unwrap();
    assert_eq!(repaired.forgotten_entries, 2);
    assert!(!common::s3::keys(&bucket).await.contains(&orphan));
    assert_eq!(status(&t, "/ns/fine").await, 200);
    let clean = hearth::reconcile::verify(t.meta(), &blobs, false).await.unwrap();
    assert!(clean.is_clean(), "{clean:?}");
    t.stop().await;
}

on_both_databases!(
    verify_finds_and_repairs_planted_damage_s3,
    eviction_is_lru_and_lands_under_low_water_s3,
    quotas_isolate_namespaces_s3,
    unreferenced_blobs_are_swept_after_grace_s3,
    uploads_never_lose_blobs_to_a_racing_collector_s3,
    one_collection_at_a_time,
    heavy_uploads_wake_the_collector_early,
    verify_finds_and_repairs_planted_damage,
    eviction_is_lru_and_lands_under_low_water,
    misses_on_evicted_keys_are_classified,
    quotas_isolate_namespaces,
    unreferenced_blobs_are_swept_after_grace,
    uploads_never_lose_blobs_to_a_racing_collector,
    gc_command_dry_run_then_real,
);
