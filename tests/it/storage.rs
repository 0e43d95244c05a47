//! The content-addressed store seen through the HTTP surface: dedup, compression choice,
//! streaming of large blobs, verification on read and healing, concurrent writers.
use crate::common;
use common::{
    blake3_hex, compressible, eventually, get_body, incompressible, put_status, start_server, stats_total, Db,
};
use hearth::meta::MetadataStore;

async fn identical_content_is_stored_once(db: Db) {
    let t = start_server(db).await;
    let body = incompressible(100_000, 7);
    for path in ["/a/0/1/2/k1", "/a/0/1/2/k2", "/b/x/y", "/b/.sccache_check"] {
        assert_eq!(put_status(&t, path, body.clone()).await, 201, "{path}");
    }
    let files = t.blob_files();
    assert_eq!(files.len(), 1, "{files:?}");
    let hash = blake3_hex(&body);
    assert!(
        files[0].ends_with(format!("{}/{}/{hash}", &hash[0..2], &hash[2..4])),
        "{files:?}"
    );
    assert!(t.temp_files().is_empty());
    for path in ["/a/0/1/2/k1", "/b/x/y"] {
        assert_eq!(get_body(&t, path).await, body);
    }
    t.stop().await;
}

async fn compression_is_chosen_by_content(db: Db) {
    let t = start_server(db).await;
    let object_file = compressible(400_000, 1);
    let sccache_entry = incompressible(400_000, 2);
    t.client
        .put(t.url("/ns/obj"))
        .body(object_file.clone())
        .send()
        .await
        .unwrap();
    t.client
        .put(t.url("/ns/entry"))
        .body(sccache_entry.clone())
        .send()
        .await
        .unwrap();

    let obj = t
        .meta()
        .blob(&blake3_hex(&object_file))
        .await
        .unwrap()
        .expect("blob row");
    assert_eq!(obj.info.encoding, hearth::blob::Encoding::Zstd);
    assert!(obj.info.stored_size * 2 < obj.info.raw_size, "{obj:?}");
    let entry = t
        .meta()
        .blob(&blake3_hex(&sccache_entry))
        .await
        .unwrap()
        .expect("blob row");
    assert_eq!(entry.info.encoding, hearth::blob::Encoding::Raw);
    assert_eq!(entry.info.stored_size, entry.info.raw_size);

    let files = t.blob_files();
    let zst = files
        .iter()
        .find(|f| f.extension().is_some_and(|e| e == "zst"))
        .expect("a .zst file");
    assert_eq!(std::fs::metadata(zst).unwrap().len(), obj.info.stored_size);
    assert_eq!(get_body(&t, "/ns/obj").await, object_file);
    assert_eq!(get_body(&t, "/ns/entry").await, sccache_entry);
    t.stop().await;
}

async fn compression_can_be_turned_off(db: Db) {
    let t = common::start_server_with(db, |c| c.compression_level = 0).await;
    let object_file = compressible(100_000, 1);
    t.client
        .put(t.url("/ns/obj"))
        .body(object_file.clone())
        .send()
        .await
        .unwrap();
    let row = t.meta().blob(&blake3_hex(&object_file)).await.unwrap().unwrap();
    assert_eq!(row.info.encoding, hearth::blob::Encoding::Raw);
    t.stop().await;
}

/// Blobs above the whole-read limit (1 MiB) stream; bytes must still be exact.
async fn large_blobs_stream_exactly(db: Db) {
    let t = start_server(db).await;
    for (path, body) in [
        ("/ns/big-raw", incompressible(5 << 20, 3)),
        ("/ns/big-zstd", compressible(6 << 20, 4)),
    ] {
        let stream = futures_util::stream::iter(
            body.chunks(100_000)
                .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        );
        // Chunked upload: no Content-Length, like a client streaming from disk.
        let put = t
            .client
            .put(t.url(path))
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 201);
        let got = t.client.get(t.url(path)).send().await.unwrap();
        assert_eq!(got.headers()["content-length"], body.len().to_string().as_str());
        let served = got.bytes().await.unwrap();
        assert_eq!(served.len(), body.len());
        assert_eq!(blake3_hex(&served), blake3_hex(&body), "{path}");
    }
    t.stop().await;
}

fn flip_byte(path: &std::path::Path, offset_from_end: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() - offset_from_end as usize;
    bytes[at] ^= 0x55;
    std::fs::write(path, bytes).unwrap();
}

/// A corrupt small blob is a clean miss; the entry is dropped and the error counted.
async fn corrupt_small_blob_is_a_miss(db: Db) {
    let mut t = common::start_server_with(db, |c| c.stats_flush_interval = std::time::Duration::from_millis(100)).await;
    let body = incompressible(50_000, 5);
    t.client.put(t.url("/ns/k")).body(body.clone()).send().await.unwrap();
    // The upload is in the memory cache; the damage is met by a later process, from disk.
    t.restart().await;
    flip_byte(&t.blob_files()[0], 10);
    assert_eq!(t.client.get(t.url("/ns/k")).send().await.unwrap().status(), 404);
    let meta = t.meta().clone();
    assert!(
        eventually(5, || async { meta.lookup("ns", "k").await.unwrap().is_none() }).await,
        "entry not dropped"
    );
    assert!(
        eventually(5, || async { t.blob_files().is_empty() }).await,
        "corrupt file kept"
    );
    assert!(
        eventually(5, || async { stats_total(&meta, "ns").await.errors >= 1 }).await,
        "error not counted"
    );
    // A fresh upload of the same content heals the key.
    assert_eq!(put_status(&t, "/ns/k", body.clone()).await, 201);
    assert_eq!(get_body(&t, "/ns/k").await, body);
    t.stop().await;
}

/// A corrupt large blob has already started streaming when the damage shows: the response
/// must end short (aborted), never as a complete-looking body.
async fn corrupt_large_blob_aborts_the_response(db: Db) {
    let t = start_server(db).await;
    for (i, body) in [incompressible(3 << 20, 6), compressible(4 << 20, 7)]
        .into_iter()
        .enumerate()
    {
        let path = format!("/ns/big{i}");
        t.client.put(t.url(&path)).body(body.clone()).send().await.unwrap();
        let file = t.blob_files().into_iter().next().unwrap();
        flip_byte(&file, 100);
        let got = t.client.get(t.url(&path)).send().await.unwrap();
        match got.status().as_u16() {
            // Either an error mid-body (the abort a client must see) or a short body.
            200 => {
                if let Ok(served) = got.bytes().await {
                    assert!(served.len() < body.len(), "corrupt body served whole");
                }
            }
            // Raw blobs can only be checked at their end: they must take the abort path.
            404 if i > 0 => {} // a damaged zstd frame may fail before the headers

            other => panic!("unexpected status {other}"),
        }
        let meta = t.meta().clone();
        assert!(
            eventually(5, || async {
                meta.lookup("ns", &format!("big{i}")).await.unwrap().is_none()
            })
            .await
        );
        assert!(eventually(5, || async { t.blob_files().is_empty() }).await);
    }
    t.stop().await;
}

/// A blob file deleted by hand: the entry heals as a miss, and a new PUT stores it again.
async fn missing_blob_file_heals_as_a_miss(db: Db) {
    let mut t = start_server(db).await;
    let body = incompressible(10_000, 8);
    t.client.put(t.url("/ns/k1")).body(body.clone()).send().await.unwrap();
    t.client.put(t.url("/ns/k2")).body(body.clone()).send().await.unwrap();
    // The upload is in the memory cache; the loss is met by a later process, from disk.
    t.restart().await;
    std::fs::remove_file(&t.blob_files()[0]).unwrap();
    assert_eq!(t.client.get(t.url("/ns/k1")).send().await.unwrap().status(), 404);
    let meta = t.meta().clone();
    // Every key sharing the vanished blob is forgotten, and so is the blob row.
    assert!(eventually(5, || async { meta.lookup("ns", "k2").await.unwrap().is_none() }).await);
    assert!(eventually(5, || async { meta.blob(&blake3_hex(&body)).await.unwrap().is_none() }).await);
    assert_eq!(put_status(&t, "/ns/k1", body.clone()).await, 201);
    assert_eq!(get_body(&t, "/ns/k1").await, body);
    assert_eq!(t.blob_files().len(), 1);
    t.stop().await;
}

/// Many builders miss on the same key at once and all upload it.
async fn concurrent_writers(db: Db) {
    let t = start_server(db).await;
    let same = incompressible(200_000, 9);
    let puts = (0..16).map(|_| t.client.put(t.url("/ns/shared")).body(same.clone()).send());
    for response in futures_util::future::join_all(puts).await {
        assert!(matches!(response.unwrap().status().as_u16(), 201 | 204));
    }
    assert_eq!(get_body(&t, "/ns/shared").await, same);
    assert_eq!(t.blob_files().len(), 1);

    let variants: Vec<Vec<u8>> = (0..8).map(|i| incompressible(50_000, 100 + i)).collect();
    let puts = variants
        .iter()
        .map(|v| t.client.put(t.url("/ns/racy")).body(v.clone()).send());
    for response in futures_util::future::join_all(puts).await {
        assert!(matches!(response.unwrap().status().as_u16(), 201 | 204));
    }
    let final_body = t
        .client
        .get(t.url("/ns/racy"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(
        variants.iter().any(|v| v[..] == final_body[..]),
        "GET returned a mix of uploads"
    );
    assert!(t.temp_files().is_empty());
    t.stop().await;
}

/// Runs a statement of test-controlled SQL on the server's database, as another process would.
async fn exec(meta: &hearth::meta::MetaStore, sql: &str) -> u64 {
    let done = match meta {
        hearth::meta::MetaStore::Sqlite(s) => sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(s.pool())
            .await
            .map(|r| r.rows_affected()),
        hearth::meta::MetaStore::Postgres(s) => sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(s.pool())
            .await
            .map(|r| r.rows_affected()),
    };
    done.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// A key read without pause stays in memory past the short TTL while the change feed is
/// live; a change made elsewhere (here: straight in the database, a rewrite to other content
/// and then a delete) still shows within seconds, through the feed, long before the entry's
/// backstop TTL would drop it.
async fn a_key_in_steady_use_still_sees_changes_made_elsewhere(db: Db) {
    use std::time::{Duration, Instant};
    let t = start_server(db).await;
    let (body, other) = (incompressible(30_000, 11), incompressible(20_000, 12));
    assert_eq!(put_status(&t, "/ns/k", body.clone()).await, 201);
    assert_eq!(put_status(&t, "/ns/other", other.clone()).await, 201);
    let get = || async {
        let response = t.client.get(t.url("/ns/k")).send().await.unwrap();
        (response.status().as_u16(), response.bytes().await.unwrap())
    };
    let started = Instant::now();
    while started.elapsed() < hearth::hot::ENTRY_TTL + Duration::from_millis(500) {
        let (status, bytes) = get().await;
        assert_eq!(status, 200);
        assert_eq!(bytes, body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Generous for a loaded machine, and far below the backstop: only the feed can do it.
    let limit = hearth::hot::ENTRY_TTL + Duration::from_secs(10);
    assert!(limit < hearth::hot::FED_ENTRY_TTL);
    let rewritten = exec(
        t.meta(),
        "UPDATE entries SET (blob_hash, size) = (SELECT blob_hash, size FROM entries WHERE key = 'other') \
         WHERE namespace = 'ns' AND key = 'k'",
    )
    .await;
    assert_eq!(rewritten, 1);
    let changed = Instant::now();
    loop {
        let (status, bytes) = get().await;
        assert_eq!(status, 200);
        if bytes == other {
            break;
        }
        assert_eq!(bytes, body, "the old bytes or the new ones");
        assert!(
            changed.elapsed() < limit,
            "old content served {:?} after the rewrite",
            changed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    assert!(t.meta().delete_entry("ns", "k").await.unwrap());
    let deleted = Instant::now();
    loop {
        let (status, bytes) = get().await;
        if status == 404 {
            break;
        }
        assert_eq!((status, &bytes[..]), (200, &other[..]), "the last bytes or a miss");
        assert!(
            deleted.elapsed() < limit,
            "still served {:?} after the delete",
            deleted.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get().await.0, 404, "and it stays a miss");
    t.stop().await;
}

/// A small upload lands in the memory cache: its first reader needs no file read (shown by
/// removing the file behind hearth's back, which a read from disk would turn into a miss).
async fn a_fresh_small_upload_is_served_from_memory(db: Db) {
    let t = start_server(db).await;
    let body = incompressible(64 * 1024, 12);
    assert_eq!(put_status(&t, "/ns/fresh", body.clone()).await, 201);
    for file in t.blob_files() {
        std::fs::remove_file(file).unwrap();
    }
    let response = t.client.get(t.url("/ns/fresh")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap(), body);
    t.stop().await;
}

on_both_databases!(
    a_fresh_small_upload_is_served_from_memory,
    a_key_in_steady_use_still_sees_changes_made_elsewhere,
    identical_content_is_stored_once,
    compression_is_chosen_by_content,
    compression_can_be_turned_off,
    large_blobs_stream_exactly,
    corrupt_small_blob_is_a_miss,
    corrupt_large_blob_aborts_the_response,
    missing_blob_file_heals_as_a_miss,
    concurrent_writers,
);
