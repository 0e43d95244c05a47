//! Content identity by meaning: a key rewritten with an sccache entry whose members come in
//! another order is a same-meaning write, not a conflict; a GET serves the last PUT's bytes.
use crate::common;
use common::{start_server_with, stats_total, Db};
use std::io::Write;
use std::time::Duration;

/// An entry as sccache 0.19 writes it (`src/cache/cache_io.rs`): zip 0.6, members stored,
/// each a zstd frame, with their Unix mode.
fn sccache_entry(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, content) in members {
        let options = zip::write::FileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .unix_permissions(0o644);
        zip.start_file(*name, options).unwrap();
        zip.write_all(&zstd::bulk::compress(content, 3).unwrap()).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn members_in_another_order_are_a_same_meaning_write(db: Db) {
    let mut t = start_server_with(db, |c| c.stats_flush_interval = Duration::from_secs(3600)).await;
    let rlib = vec![7u8; 20_000];
    let first = sccache_entry(&[
        ("libdemo.rlib", &rlib),
        ("libdemo.rmeta", b"meta"),
        ("stderr", b"warning"),
    ]);
    let reordered = sccache_entry(&[
        ("stderr", b"warning"),
        ("libdemo.rmeta", b"meta"),
        ("libdemo.rlib", &rlib),
    ]);
    let other = sccache_entry(&[
        ("libdemo.rlib", &rlib),
        ("libdemo.rmeta", b"other meta"),
        ("stderr", b"warning"),
    ]);
    assert_ne!(first, reordered);
    let key = "/ci/4/2/a/42a0c0ffee";
    let put = |body: Vec<u8>| t.client.put(t.url(key)).body(body).send();
    let get = || async { t.client.get(t.url(key)).send().await.unwrap().bytes().await.unwrap() };

    assert_eq!(put(first.clone()).await.unwrap().status(), 201);
    assert_eq!(put(reordered.clone()).await.unwrap().status(), 204);
    assert_eq!(get().await, reordered, "the last PUT is served");
    assert_eq!(put(first.clone()).await.unwrap().status(), 204);
    assert_eq!(get().await, first);
    assert_eq!(put(other.clone()).await.unwrap().status(), 204);
    assert_eq!(get().await, other);

    let metrics = t
        .client
        .get(t.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ns = |metric: &str| sample(&metrics, &format!("{metric}{{namespace=\"ci\"}}"));
    assert_eq!(ns("hearth_cache_same_meaning_writes_total"), Some(2.0), "{metrics}");
    assert_eq!(ns("hearth_cache_conflicting_writes_total"), Some(1.0));
    assert_eq!(ns("hearth_cache_writes_total"), Some(4.0));

    t.restart().await;
    let c = stats_total(t.meta(), "ci").await;
    assert_eq!((c.writes, c.same_meaning_writes, c.conflicting_writes), (4, 2, 1));
    let response = t
        .client
        .get(t.url("/_hearth/api/stats?namespace=ci"))
        .send()
        .await
        .unwrap();
    let reports: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(reports[0]["same_meaning_writes"], 2, "{reports}");
    assert_eq!(reports[0]["conflicting_writes"], 1);
    t.stop().await;
}

on_both_databases!(members_in_another_order_are_a_same_meaning_write);
