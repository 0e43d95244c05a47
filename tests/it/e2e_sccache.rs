//! End to end with the real sccache 0.19 client: a small Rust workspace is built through hearth's
//! WebDAV front-end twice, and the second build (fresh target dir, fresh local sccache state)
//! must be served entirely from hearth.
//!
//! sccache is found as `$HEARTH_TEST_SCCACHE`, else `sccache` on `PATH`, else where
//! `./scripts/test.sh` installs it (`${HEARTH_TOOLS_DIR:-~/.cache/hearth-tools}/sccache-0.19.0`).
//! A missing client fails the test: it is never skipped.
use crate::common;

use common::process::{copy_dir, fixture_dir, remove_dir};
use common::sccache::{find_sccache, Sccache, CACHEABLE_CRATES, EXPECTED_LINE, FIXTURE};
use common::{start_server, stats_total, Db};
use std::time::Instant;
use tokio::process::Command;

/// What sccache writes into `.sccache_check` at every start (its write probe).
const PROBE_BODY: &str = "Hello, World!";

async fn build_twice_second_build_hits(db: Db) {
    scenario(db, "rust-e2e", None, false).await;
}

async fn build_twice_with_key_prefix(db: Db) {
    // sccache joins endpoint and prefix verbatim: requests go to `/rust-e2e//team/proj/…`.
    scenario(db, "rust-e2e", Some("team/proj"), false).await;
}

/// The same with hearth keeping its blobs in S3 (the test S3-compatible server).
async fn build_twice_on_s3_storage(db: Db) {
    scenario(db, "rust-e2e", None, true).await;
}

on_both_databases!(
    build_twice_second_build_hits,
    build_twice_with_key_prefix,
    build_twice_on_s3_storage
);

async fn scenario(db: Db, namespace: &str, key_prefix: Option<&str>, on_s3: bool) {
    let started = Instant::now();
    let exe = find_sccache();
    let bucket = if on_s3 { Some(common::s3::bucket().await) } else { None };
    let mut t = match &bucket {
        Some(bucket) => common::start_server_with(db, |c| common::s3::configure(c, bucket)).await,
        None => start_server(db).await,
    };
    let work = tempfile::tempdir().expect("temp dir");
    let workspace = work.path().join("workspace");
    copy_dir(&fixture_dir(FIXTURE), &workspace);
    let target_dir = work.path().join("target");
    let sccache_dir = work.path().join("sccache-dir");
    let key_prefix_env = key_prefix.map(|prefix| ("SCCACHE_WEBDAV_KEY_PREFIX", prefix));
    let mut sc = Sccache::new(&exe, work.path(), &sccache_dir, &t, namespace, key_prefix_env);

    // Round 1: everything misses and is written to hearth.
    sc.start_server().await;
    sc.cargo_build(&workspace, &target_dir).await;
    let first = sc.stats("first build").await;
    sc.check_read_write(&first, key_prefix);
    sc.ensure_eq(first.hits(), 0, "first build: cache hits");
    sc.ensure_eq(first.misses(), CACHEABLE_CRATES, "first build: cache misses");
    sc.ensure_eq(
        first.stats.cache_writes,
        first.misses(),
        "first build: cache writes (one per miss)",
    );
    sc.ensure_eq(
        first.stats.compilations,
        first.misses(),
        "first build: compilations (one per miss)",
    );
    sc.check_no_errors(&first, "first build");
    sc.check_binary_not_cached(&first, "first build");
    sc.stop_server().await;

    // Round 2: no local state at all, so every cacheable compilation must come from hearth.
    remove_dir(&target_dir);
    remove_dir(&sccache_dir);
    sc.start_server().await;
    sc.cargo_build(&workspace, &target_dir).await;
    let second = sc.stats("second build").await;
    sc.check_read_write(&second, key_prefix);
    sc.ensure_eq(second.hits(), first.misses(), "second build: cache hits");
    sc.ensure_eq(second.misses(), 0, "second build: cache misses");
    sc.ensure_eq(second.stats.cache_writes, 0, "second build: cache writes");
    sc.ensure_eq(second.stats.compilations, 0, "second build: compilations");
    sc.check_no_errors(&second, "second build");
    sc.check_binary_not_cached(&second, "second build");
    sc.stop_server().await;

    let app = target_dir.join("debug").join("app");
    let ran = sc.run(Command::new(&app), "the built binary").await;
    sc.ensure(
        ran.status.success(),
        format!("{} failed: {}", app.display(), ran.describe()),
    );
    sc.ensure_eq(ran.stdout.trim_end(), EXPECTED_LINE, "output of the built binary");

    // hearth's side: the probe is where sccache put it (`//` collapsed) ...
    let prefix = key_prefix.map(|p| format!("{p}/")).unwrap_or_default();
    let probe = format!("/{namespace}/{prefix}.sccache_check");
    let got = t.client.get(t.url(&probe)).send().await.expect("GET the probe");
    sc.ensure_eq(got.status().as_u16(), 200, &format!("GET {probe}"));
    sc.ensure_eq(got.text().await.expect("probe body").as_str(), PROBE_BODY, "probe body");

    // ... and its counters saw at least what sccache saw. A graceful restart flushes them.
    t.restart().await;
    let hearth = stats_total(t.meta(), namespace).await;
    eprintln!("hearth counters for {namespace}: {hearth:?}");
    sc.check_hearth_counters(
        &hearth,
        [
            ("sccache hits", second.hits() as i64),
            ("sccache misses", first.misses() as i64),
            ("sccache writes", first.stats.cache_writes as i64),
        ],
    );

    drop(sc);
    t.stop().await;
    eprintln!(
        "{db:?} {namespace} prefix {key_prefix:?}: passed in {:.1?}",
        started.elapsed()
    );
    if let Some(bucket) = &bucket {
        let objects = common::s3::keys(bucket).await;
        assert!(
            objects.len() as u64 > CACHEABLE_CRATES,
            "sccache's entries are not in the bucket: {objects:?}"
        );
    }
}
