//! The S3 blob store against a real S3-compatible server (moto, started by scripts/test.sh):
//! exact round trips (single PUT and multipart), dedup, compression, verification and healing,
//! uploads that break off, GC by key, readiness, and two replicas sharing PostgreSQL + a bucket.
use crate::common;
use common::{
    blake3_hex, compressible, eventually, incompressible, put_status, s3, start_server_with, stats_total, Db,
    TestServer,
};
use hearth::meta::MetadataStore;
use std::time::Duration;

async fn s3_server(db: Db) -> (TestServer, String) {
    let bucket = s3::bucket().await;
    let b = bucket.clone();
    let t = start_server_with(db, move |c| {
        s3::configure(c, &b);
        c.gc_interval = Duration::from_secs(3600);
    })
    .await;
    (t, bucket)
}

async fn get(t: &TestServer, path: &str) -> (u16, Vec<u8>) {
    let response = t.client.get(t.url(path)).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.bytes().await.map(|b| b.to_vec()).unwrap_or_default())
}

/// Small and multipart-sized blobs come back exactly; identical content is one object;
/// compressible content is stored zstd-compressed under the same fan-out as locally.
async fn round_trips_dedup_and_compression(db: Db) {
    let (t, bucket) = s3_server(db).await;
    let small = incompressible(50_000, 1);
    let object_file = compressible(300_000, 2);
    let large = incompressible(20 << 20, 3); // three parts of 8 MiB
    for (path, body) in [
        ("/ns/a", &small),
        ("/other/b", &small),
        ("/ns/obj", &object_file),
        ("/ns/large", &large),
    ] {
        assert_eq!(put_status(&t, path, body.clone()).await, 201, "{path}");
    }
    for (path, body) in [
        ("/ns/a", &small),
        ("/other/b", &small),
        ("/ns/obj", &object_file),
        ("/ns/large", &large),
    ] {
        let (status, served) = get(&t, path).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(blake3_hex(&served), blake3_hex(body), "{path}");
    }
    let keys = s3::keys(&bucket).await;
    assert_eq!(keys.len(), 3, "{keys:?}");
    let h = blake3_hex(&small);
    assert!(
        keys.contains(&format!("blobs/{}/{}/{h}", &h[0..2], &h[2..4])),
        "{keys:?}"
    );
    let z = blake3_hex(&object_file);
    assert!(
        keys.contains(&format!("blobs/{}/{}/{z}.zst", &z[0..2], &z[2..4])),
        "{keys:?}"
    );
    assert_eq!(s3::open_multipart_uploads(&bucket).await, 0);
    assert!(t.temp_files().is_empty(), "staging files left: {:?}", t.temp_files());
    t.stop().await;
}

/// A damaged object is never served as a complete body and is dropped; a vanished one heals.
async fn corrupt_and_missing_objects_heal(db: Db) {
    let (mut t, bucket) = s3_server(db).await;
    let client = s3::client().await;
    let small = incompressible(40_000, 4);
    let large = incompressible(3 << 20, 5);
    t.client
        .put(t.url("/ns/small"))
        .body(small.clone())
        .send()
        .await
        .unwrap();
    t.client
        .put(t.url("/ns/large"))
        .body(large.clone())
        .send()
        .await
        .unwrap();
    // The small upload is in the memory cache; the damage is met by a later process.
    t.restart().await;
    for body in [&small, &large] {
        let h = blake3_hex(body);
        let mut damaged = body.clone();
        let at = damaged.len() - 10;
        damaged[at] ^= 0x55;
        client
            .put_object()
            .bucket(&bucket)
            .key(format!("blobs/{}/{}/{h}", &h[0..2], &h[2..4]))
            .body(damaged.into())
            .send()
            .await
            .unwrap();
    }
    assert_eq!(get(&t, "/ns/small").await.0, 404);
    let response = t.client.get(t.url("/ns/large")).send().await.unwrap();
    if response.status() == 200 {
        if let Ok(served) = response.bytes().await {
            assert!(served.len() < large.len(), "a corrupt body was served whole");
        }
    }
    let meta = t.meta().clone();
    for key in ["small", "large"] {
        assert!(
            eventually(5, || async { meta.lookup("ns", key).await.unwrap().is_none() }).await,
            "{key} kept"
        );
    }
    // A vanished object: a miss, then a new upload stores it again.
    t.client
        .put(t.url("/ns/again"))
        .body(small.clone())
        .send()
        .await
        .unwrap();
    t.restart().await;
    let meta = t.meta().clone();
    let h = blake3_hex(&small);
    client
        .delete_object()
        .bucket(&bucket)
        .key(format!("blobs/{}/{}/{h}", &h[0..2], &h[2..4]))
        .send()
        .await
        .unwrap();
    assert_eq!(get(&t, "/ns/again").await.0, 404);
    assert!(eventually(5, || async { meta.blob(&h).await.unwrap().is_none() }).await);
    t.client
        .put(t.url("/ns/again"))
        .body(small.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(get(&t, "/ns/again").await.1, small);
    t.stop().await;
}

/// A client that hangs up mid-upload leaves no object, no entry and no multipart upload.
async fn broken_uploads_leave_nothing(db: Db) {
    use tokio::io::AsyncWriteExt;
    let (t, bucket) = s3_server(db).await;
    let mut stream = tokio::net::TcpStream::connect(t.running().addr()).await.unwrap();
    let head = format!(
        "PUT /ns/big HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        30 << 20
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&incompressible(12 << 20, 6)).await.unwrap();
    drop(stream);
    assert!(
        eventually(5, || async { t.temp_files().is_empty() }).await,
        "staging files left"
    );
    assert!(s3::keys(&bucket).await.is_empty());
    assert_eq!(s3::open_multipart_uploads(&bucket).await, 0);
    assert_eq!(get(&t, "/ns/big").await.0, 404);
    t.stop().await;
}

/// Garbage collection deletes objects by key from the metadata (the bucket is never listed).
async fn gc_deletes_objects_by_key(db: Db) {
    let (t, bucket) = s3_server(db).await;
    for i in 0..4 {
        t.client
            .put(t.url(&format!("/ns/k{i}")))
            .body(incompressible(10_000, 10 + i))
            .send()
            .await
            .unwrap();
    }
    assert_eq!(s3::keys(&bucket).await.len(), 4);
    let blobs = t.running().state().cache.blobs().clone();
    let settings = hearth::gc::GcSettings {
        max_size: 25_000,
        grace: Duration::from_secs(3600),
        dry_run: false,
    };
    let report = hearth::gc::collect(t.meta(), &blobs, &settings).await.unwrap();
    assert_eq!(report.freed_blobs, 2);
    assert_eq!(s3::keys(&bucket).await.len(), 2);
    t.stop().await;
}

/// `/readyz` reflects whether the bucket answers.
async fn readiness_follows_the_bucket(db: Db) {
    let t = start_server_with(db, |c| s3::configure(c, "no-such-bucket-for-hearth")).await;
    assert_eq!(t.client.get(t.url("/readyz")).send().await.unwrap().status(), 503);
    t.stop().await;
    let (t, _) = s3_server(db).await;
    assert_eq!(t.client.get(t.url("/readyz")).send().await.unwrap().status(), 200);
    t.stop().await;
}

on_both_databases!(
    round_trips_dedup_and_compression,
    corrupt_and_missing_objects_heal,
    broken_uploads_leave_nothing,
    gc_deletes_objects_by_key,
    readiness_follows_the_bucket,
);

/// Two hearth replicas sharing one PostgreSQL database and one bucket behave as one cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_postgres_and_a_bucket() {
    let bucket = s3::bucket().await;
    let b = bucket.clone();
    let a = start_server_with(Db::Postgres, move |c| {
        s3::configure(c, &b);
        c.stats_flush_interval = Duration::from_secs(3600);
    })
    .await;
    // The second replica: same database, same bucket, its own data dir.
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path(), &a.db.url, |c| {
        s3::configure(c, &bucket);
        c.stats_flush_interval = Duration::from_secs(3600);
    });
    config.gc_interval = Duration::from_secs(3600);
    let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
    let b_server = hearth::server::start(&config, listener).await.unwrap();
    let b_url = |path: &str| format!("http://{}{path}", b_server.addr());

    let body = incompressible(100_000, 20);
    assert_eq!(put_status(&a, "/team/k", body.clone()).await, 201);
    let on_b = a.client.get(b_url("/team/k")).send().await.unwrap();
    assert_eq!(on_b.status(), 200, "a PUT on one replica is a hit on the other");
    assert_eq!(on_b.bytes().await.unwrap(), body);

    // Both replicas upload the same key and content at once, many times.
    let shared = incompressible(60_000, 21);
    for round in 0..10 {
        let path = format!("/team/race{round}");
        let (ra, rb) = tokio::join!(
            a.client.put(a.url(&path)).body(shared.clone()).send(),
            a.client.put(b_url(&path)).body(shared.clone()).send()
        );
        let mut codes = [ra.unwrap().status().as_u16(), rb.unwrap().status().as_u16()];
        codes.sort();
        assert_eq!(codes, [201, 204], "exactly one replica created {path}");
    }
    for round in 0..10 {
        assert_eq!(
            a.client
                .get(b_url(&format!("/team/race{round}")))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap(),
            shared
        );
    }
    assert_eq!(
        s3::keys(&bucket).await.len(),
        2,
        "identical content stored once across replicas"
    );

    // Statistics from both replicas add up.
    b_server.stop().await.unwrap();
    let mut a = a;
    a.server.take().unwrap().stop().await.unwrap();
    let check = hearth::meta::MetaStore::connect(
        &a.db.url,
        &hearth::meta::PoolSettings {
            max_connections: 1,
            acquire_timeout: Duration::from_secs(5),
        },
    )
    .await
    .unwrap();
    let c = stats_total(&check, "team").await;
    assert_eq!((c.writes, c.hits), (21, 11), "{c:?}");
    a.db.drop_database().await;
}
