//! Content identity by meaning: a key rewritten with an sccache entry whose members come in
//! another order is a same-meaning write, not a conflict; a GET serves the last PUT's bytes.
use crate::common;
use common::get_body;
use common::process::{copy_dir, fixture_dir, remove_dir};
use common::sccache::{find_sccache, Sccache, CACHEABLE_CRATES, FIXTURE};
use common::{sample, sccache_entry, start_server, start_server_with, stats_total, Db, TestServer};
use hearth::meta::MetaStore;
use std::collections::BTreeMap;
use std::time::Duration;

/// Cold builds tried until two runners' entries differ in their bytes (sccache writes members
/// in hash-map order, so each build has even odds or better per entry).
const MAX_BUILDS: usize = 8;

async fn members_in_another_order_are_a_same_meaning_write(db: Db) {
    let mut t = start_server_with(db, |c| c.stats_flush_interval = Duration::from_secs(3600)).await;
    let rlib = vec![7u8; 20_000];
    let first = sccache_entry(&[
        ("libdemo.rlib", &rlib[..]),
        ("libdemo.rmeta", b"meta"),
        ("stderr", b"warning"),
    ]);
    let reordered = sccache_entry(&[
        ("stderr", b"warning"),
        ("libdemo.rmeta", b"meta"),
        ("libdemo.rlib", &rlib[..]),
    ]);
    let other = sccache_entry(&[
        ("libdemo.rlib", &rlib[..]),
        ("libdemo.rmeta", b"other meta"),
        ("stderr", b"warning"),
    ]);
    assert_ne!(first, reordered);
    let key = "/ci/4/2/a/42a0c0ffee";
    let put = |body: Vec<u8>| t.client.put(t.url(key)).body(body).send();
    let get = || async { get_body(&t, key).await };

    assert_eq!(put(first.clone()).await.unwrap().status(), 201);
    assert_eq!(put(reordered.clone()).await.unwrap().status(), 204);
    assert_eq!(get().await, reordered, "the last PUT is served");
    assert_eq!(put(first.clone()).await.unwrap().status(), 204);
    assert_eq!(get().await, first);
    assert_eq!(put(other.clone()).await.unwrap().status(), 204);
    assert_eq!(get().await, other);

    let metrics = t.metrics().await;
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

/// Two CI runners build the fixture cold at the same paths with the real sccache, each into a
/// namespace of its own: the same keys, some entries with other bytes. The second runner's
/// entries written again under the first's keys, as when both race on one namespace, are all
/// identical or same-meaning writes: no conflict.
async fn a_second_runners_cold_build_is_no_conflict(db: Db) {
    let exe = find_sccache();
    let mut t = start_server(db).await;
    let work = tempfile::tempdir().expect("temp dir");
    let workspace = work.path().join("workspace");
    copy_dir(&fixture_dir(FIXTURE), &workspace);
    let (target_dir, sccache_dir) = (work.path().join("target"), work.path().join("sccache-dir"));
    let mut first: Option<BTreeMap<String, Vec<u8>>> = None;
    let mut notes = Vec::new();
    for build in 0..MAX_BUILDS {
        let namespace = format!("runner-{build}");
        let dir = work.path().join(&namespace);
        std::fs::create_dir_all(&dir).unwrap();
        remove_dir(&target_dir);
        remove_dir(&sccache_dir);
        let none: [(&str, &str); 0] = [];
        let mut sc = Sccache::new(&exe, &dir, &sccache_dir, &t, &namespace, none).round(&namespace);
        sc.start_server().await;
        sc.cargo_build(&workspace, &target_dir).await;
        let stats = sc.stats("cold build").await;
        sc.ensure_eq(stats.stats.cache_writes, CACHEABLE_CRATES, "cold build: cache writes");
        sc.check_no_errors(&stats, "cold build");
        sc.stop_server().await;
        notes.push(sc.finish());

        let entries = entries(&t, &namespace).await;
        assert_eq!(
            entries.len() as u64,
            CACHEABLE_CRATES,
            "{entries:?}\n{}",
            notes.join("\n")
        );
        let Some(first) = &first else {
            first = Some(entries);
            continue;
        };
        assert_eq!(
            first.keys().collect::<Vec<_>>(),
            entries.keys().collect::<Vec<_>>(),
            "the same paths give the same keys"
        );
        let differing = entries.iter().filter(|(key, bytes)| first[*key] != **bytes).count();
        eprintln!(
            "build {build}: {differing} of {} entries differ from the first build's bytes",
            entries.len()
        );
        if differing == 0 {
            continue;
        }
        for (key, bytes) in &entries {
            let status = t
                .client
                .put(t.url(&format!("/runner-0/{key}")))
                .body(bytes.clone())
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, 204, "{key}");
        }
        t.restart().await;
        let c = stats_total(t.meta(), "runner-0").await;
        assert_eq!(
            (c.same_meaning_writes, c.conflicting_writes),
            (differing as i64, 0),
            "{c:?}"
        );
        t.stop().await;
        return;
    }
    panic!("{MAX_BUILDS} cold builds wrote byte-identical entries: sccache's member order was never another");
}

/// The keys of `namespace` but sccache's write probe, and the bytes a GET serves for each.
async fn entries(t: &TestServer, namespace: &str) -> BTreeMap<String, Vec<u8>> {
    let sql = "SELECT key FROM entries WHERE namespace = $1 AND key NOT LIKE '%.sccache_check'";
    let keys: Vec<String> = match t.meta() {
        MetaStore::Sqlite(s) => sqlx::query_scalar(sql).bind(namespace).fetch_all(s.pool()).await,
        MetaStore::Postgres(s) => sqlx::query_scalar(sql).bind(namespace).fetch_all(s.pool()).await,
    }
    .unwrap();
    let mut entries = BTreeMap::new();
    for key in keys {
        let response = t
            .client
            .get(t.url(&format!("/{namespace}/{key}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{key}");
        entries.insert(key, response.bytes().await.unwrap().to_vec());
    }
    entries
}

on_both_databases!(
    members_in_another_order_are_a_same_meaning_write,
    a_second_runners_cold_build_is_no_conflict
);
