//! Access control with the real sccache 0.19 client, on both databases. A write token (label
//! `ci`) fills the cache read-write; a read token (label `dev`) then starts sccache cleanly in
//! ReadOnly mode and gets every cacheable compilation from hearth, over Bearer
//! (`SCCACHE_WEBDAV_TOKEN`) and Basic (`SCCACHE_WEBDAV_USERNAME`/`PASSWORD`) alike. Wrong
//! tokens keep sccache from starting, and hearth's statistics attribute the traffic to labels.
//!
//! sccache is found by `common::sccache::find_sccache`: `$HEARTH_TEST_SCCACHE`, else `sccache` on
//! `PATH`, else `${HEARTH_TOOLS_DIR:-~/.cache/hearth-tools}/sccache-0.19.0/bin/sccache`.
//! A missing client fails the test: it is never skipped.
use crate::common;

use common::process::{copy_dir, fixture_dir, remove_dir};
use common::sccache::{find_sccache, Sccache, CACHEABLE_CRATES, EXPECTED_LINE, FIXTURE};
use common::{start_server, Db, TestServer};
use hearth::meta::MetadataStore;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Instant;
use tokio::process::Command;

const NAMESPACE: &str = "secured-e2e";

/// How a round authenticates.
#[derive(Clone, Copy, Debug)]
enum Credentials<'a> {
    /// `SCCACHE_WEBDAV_TOKEN`: `Authorization: Bearer`.
    Bearer(&'a str),
    /// `SCCACHE_WEBDAV_USERNAME` / `SCCACHE_WEBDAV_PASSWORD`: `Authorization: Basic`.
    Basic { user: &'a str, password: &'a str },
}

impl Credentials<'_> {
    fn env(self) -> Vec<(&'static str, String)> {
        match self {
            Credentials::Bearer(token) => vec![("SCCACHE_WEBDAV_TOKEN", token.to_string())],
            Credentials::Basic { user, password } => vec![
                ("SCCACHE_WEBDAV_USERNAME", user.to_string()),
                ("SCCACHE_WEBDAV_PASSWORD", password.to_string()),
            ],
        }
    }
}

/// The sccache configuration of one round: its own dir `<work>/<name>`, the endpoint
/// `/<NAMESPACE>/`, and `credentials`.
fn round(exe: &Path, work: &Path, name: &str, t: &TestServer, credentials: Credentials<'_>) -> Sccache {
    let dir = work.join(name);
    Sccache::new(exe, &dir, &dir.join("sccache-dir"), t, NAMESPACE, credentials.env()).round(name)
}

async fn read_token_gives_read_only_sccache_with_hits(db: Db) {
    let started = Instant::now();
    let exe = find_sccache();
    let mut t = start_server(db).await;
    let root = create_token(&t, None, None, "admin", "root").await;
    let (status, body) = api(
        &t,
        "POST",
        "/_hearth/api/namespaces",
        Some(&root),
        json!({ "name": NAMESPACE }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let ci = create_token(&t, Some(&root), Some(NAMESPACE), "write", "ci").await;
    let dev = create_token(&t, Some(&root), Some(NAMESPACE), "read", "dev").await;
    let (status, body) = api(
        &t,
        "POST",
        "/_hearth/api/namespaces",
        Some(&root),
        json!({ "name": "elsewhere" }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let elsewhere = create_token(&t, Some(&root), Some("elsewhere"), "write", "elsewhere").await;

    let work = tempfile::tempdir().expect("temp dir");
    let workspace = work.path().join("workspace");
    copy_dir(&fixture_dir(FIXTURE), &workspace);
    // One target path for every round (emptied in between): sccache's Rust hash covers the
    // dependency paths, so another path would be another key.
    let target = work.path().join("target");

    // Round 1, write token over Bearer: read-write, everything misses and is written.
    let mut sc = round(&exe, work.path(), "1-ci-bearer", &t, Credentials::Bearer(&ci));
    sc.start_server().await;
    sc.cargo_build(&workspace, &target).await;
    let first = sc.stats("ci build").await;
    sc.ensure_eq(first.effective_cache_mode.as_str(), "ReadWrite", "mode (JSON)");
    sc.ensure_eq(
        first.text_field("Effective cache mode"),
        Some("ReadWrite"),
        "mode (text)",
    );
    sc.ensure_eq(first.hits(), 0, "ci build: hits");
    sc.ensure_eq(first.misses(), CACHEABLE_CRATES, "ci build: misses");
    sc.ensure_eq(first.stats.cache_writes, CACHEABLE_CRATES, "ci build: cache writes");
    sc.check_no_errors(&first, "ci build");
    sc.stop_server().await;
    let ci_rounds = sc.finish();

    // Rounds 2 and 3, read token over Bearer then Basic, each with a fresh local state and
    // target dir: sccache starts, reports ReadOnly, and every cacheable compilation is a hit.
    let rounds = [
        ("2-dev-bearer", Credentials::Bearer(&dev)),
        (
            "3-dev-basic",
            Credentials::Basic {
                user: "dev",
                password: &dev,
            },
        ),
    ];
    for (name, credentials) in rounds {
        let mut sc = round(&exe, work.path(), name, &t, credentials);
        sc.start_server().await;
        remove_dir(&target);
        sc.cargo_build(&workspace, &target).await;
        let stats = sc.stats(name).await;
        sc.ensure_eq(stats.effective_cache_mode.as_str(), "ReadOnly", "mode (JSON)");
        sc.ensure_eq(
            stats.text_field("Effective cache mode"),
            Some("ReadOnly"),
            "mode (text)",
        );
        sc.ensure_eq(stats.hits(), CACHEABLE_CRATES, &format!("{name}: hits"));
        sc.ensure_eq(stats.misses(), 0, &format!("{name}: misses"));
        sc.ensure_eq(stats.stats.compilations, 0, &format!("{name}: compilations"));
        // Nothing to write on hits, so even the read-only cache reports no write errors.
        sc.ensure_eq(stats.stats.cache_writes, 0, &format!("{name}: cache writes"));
        sc.check_no_errors(&stats, name);
        // sccache noticed the refused write probe (and said so in its log).
        let log = std::fs::read_to_string(&sc.log).unwrap_or_default();
        sc.ensure(
            log.contains("storage write check failed") || log.contains("ReadOnly") || log.contains("read-only"),
            format!("{name}: the log does not mention the failed write check"),
        );
        sc.stop_server().await;
        let app = target.join("debug").join("app");
        let ran = sc.run(Command::new(&app), "the built binary").await;
        sc.ensure(
            ran.status.success(),
            format!("{name}: the binary failed: {}", ran.describe()),
        );
        sc.ensure_eq(ran.stdout.trim_end(), EXPECTED_LINE, "output of the built binary");
        sc.finish();
    }

    // Rounds 4 to 6, credentials hearth refuses. sccache's startup read probe
    // (GET .sccache_check) then gets 401 (unknown token) or 403 (token for another namespace),
    // which sccache 0.19 treats as fatal (only 200/404 let it start; wire-protocols.md §1.4).
    // What really happens: `sccache --start-server` prints "Starting the server...", then exits
    // with status 2 and, on stderr, "sccache: error: Server startup failed: cache storage
    // failed to read: Unexpected (permanent) at read => invalid or revoked token" (401) or
    // "… PermissionDenied (temporary) at read => this token is for another namespace" (403),
    // followed by the probe's URI: hearth's one-line reason reaches the user. No sccache
    // server keeps running.
    let refused = [
        (
            "4-unknown-token",
            Credentials::Bearer("hth_this-token-does-not-exist"),
            "401",
            "invalid or revoked token",
        ),
        (
            "5-other-namespace",
            Credentials::Bearer(&elsewhere),
            "403",
            "this token is for another namespace",
        ),
        (
            "6-unknown-basic",
            Credentials::Basic {
                user: "dev",
                password: "hth_wrong",
            },
            "401",
            "invalid or revoked token",
        ),
    ];
    for (name, credentials, code, reason) in refused {
        let mut sc = round(&exe, work.path(), name, &t, credentials);
        let ran = sc.try_start_server().await;
        eprintln!("{name}: sccache --start-server: {}", ran.describe());
        sc.ensure(
            !ran.status.success(),
            format!("{name}: sccache started with credentials hearth refuses"),
        );
        let output = format!("{}\n{}", ran.stdout, ran.stderr);
        sc.ensure(
            output.contains("Server startup failed")
                && output.contains("cache storage failed to read")
                && output.contains(reason),
            format!("{name}: unexpected failure: {}", ran.describe()),
        );
        let log = std::fs::read_to_string(&sc.log).unwrap_or_default();
        sc.ensure(
            log.contains(code) || output.contains(code),
            format!("{name}: neither the output nor the log names HTTP {code}"),
        );
        // Nothing answers on its port: the daemon gave up.
        let stats = sc.run(sc.sccache(&["--show-stats"]), "sccache --show-stats").await;
        sc.ensure(
            !stats.status.success() || !stats.stdout.contains("Effective cache mode"),
            format!("{name}: an sccache server is running: {}", stats.describe()),
        );
        sc.finish();
    }

    // hearth's side, after a graceful restart flushed the statistics: writes are ci's, hits
    // dev's (Bearer and Basic rounds), and nothing is anonymous.
    t.restart().await;
    let rows = t.meta().stats(Some(NAMESPACE), 0).await.expect("stats");
    let by_label = |label: &str| {
        let mut c = hearth::meta::Counters::default();
        rows.iter()
            .filter(|r| r.token_label == label)
            .for_each(|r| c.add(&r.counters));
        c
    };
    let (ci_c, dev_c) = (by_label("ci"), by_label("dev"));
    let context = format!("{rows:#?}\n{ci_rounds}");
    assert_eq!(ci_c.writes, CACHEABLE_CRATES as i64, "writes by ci: {context}");
    assert_eq!(ci_c.misses, CACHEABLE_CRATES as i64, "misses by ci: {context}");
    assert_eq!(ci_c.hits, 0, "hits by ci: {context}");
    assert_eq!(dev_c.hits, 2 * CACHEABLE_CRATES as i64, "hits by dev: {context}");
    assert_eq!((dev_c.writes, dev_c.misses), (0, 0), "dev: {context}");
    assert_eq!(ci_c.errors + dev_c.errors, 0, "{context}");
    assert!(
        rows.iter().all(|r| r.token_label == "ci" || r.token_label == "dev"),
        "traffic attributed to other labels: {context}"
    );
    // The same through the admin API.
    let (status, reports) = api_get(&t, &format!("/_hearth/api/stats?namespace={NAMESPACE}"), &root).await;
    assert_eq!(status, 200, "{reports}");
    assert_eq!(
        reports[0]["by_token_label"]["dev"]["hits"],
        2 * CACHEABLE_CRATES,
        "{reports}"
    );
    assert_eq!(
        reports[0]["by_token_label"]["ci"]["writes"], CACHEABLE_CRATES,
        "{reports}"
    );
    // Every stored entry (the probe included) was written by ci.
    let ci_id = t
        .meta()
        .list_tokens()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.label == "ci")
        .expect("ci")
        .id;
    let probe = t
        .meta()
        .lookup(NAMESPACE, ".sccache_check")
        .await
        .unwrap()
        .expect("probe");
    assert_eq!(probe.writer_token_id, Some(ci_id));
    let usage = t.meta().namespace_usage(Some(NAMESPACE)).await.unwrap();
    assert_eq!(usage[0].usage.entries, CACHEABLE_CRATES as i64 + 1, "{usage:?}");
    // Purging ci removes all of it, probe included.
    let (status, body) = api(
        &t,
        "DELETE",
        "/_hearth/api/tokens/ci?purge=true",
        Some(&root),
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["purged_entries"], CACHEABLE_CRATES + 1, "{body}");
    t.stop().await;
    eprintln!("{db:?}: passed in {:.1?}", started.elapsed());
}

on_both_databases!(read_token_gives_read_only_sccache_with_hits);

// ---------------------------------------------------------------------------------------------
// Admin API helpers.

async fn api(t: &TestServer, method: &str, path: &str, auth: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = t.request(method, path);
    if let Some(secret) = auth {
        request = request.header("Authorization", format!("Bearer {secret}"));
    }
    if !body.is_null() {
        request = request
            .header("Content-Type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.expect("admin API");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn api_get(t: &TestServer, path: &str, auth: &str) -> (u16, Value) {
    api(t, "GET", path, Some(auth), Value::Null).await
}

/// A new token's secret (`admin` None: anonymously, while the server is open).
async fn create_token(
    t: &TestServer,
    admin: Option<&str>,
    namespace: Option<&str>,
    scope: &str,
    label: &str,
) -> String {
    let (status, body) = api(
        t,
        "POST",
        "/_hearth/api/tokens",
        admin,
        json!({ "namespace": namespace, "scope": scope, "label": label }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["secret"].as_str().expect("secret").to_string()
}
