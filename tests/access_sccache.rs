//! Access control with the real sccache 0.19 client, on both databases. A write token (label
//! `ci`) fills the cache read-write; a read token (label `dev`) then starts sccache cleanly in
//! ReadOnly mode and gets every cacheable compilation from hearth, over Bearer
//! (`SCCACHE_WEBDAV_TOKEN`) and Basic (`SCCACHE_WEBDAV_USERNAME`/`PASSWORD`) alike. Wrong
//! tokens keep sccache from starting, and hearth's statistics attribute the traffic to labels.
//!
//! sccache is found like in `e2e_sccache.rs`: `$HEARTH_TEST_SCCACHE`, else `sccache` on
//! `PATH`, else `${HEARTH_TOOLS_DIR:-~/.cache/hearth-tools}/sccache-0.19.0/bin/sccache`.
//! A missing client fails the test: it is never skipped.
mod common;

use common::{start_server, Db, TestServer};
use hearth::meta::MetadataStore;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::process::Command;

/// What the fixture's binary prints: computed through all four crates.
const EXPECTED_LINE: &str = "hello, hearth: sum of squares 1..=10 is 385";
/// Compilations sccache can cache in the fixture: the libraries `alpha`, `beta` and `gamma`.
const CACHEABLE_CRATES: u64 = 3;
/// Upper bound for any one child process.
const STEP_TIMEOUT: Duration = Duration::from_secs(180);
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
    copy_dir(&fixture_dir(), &workspace);
    // One target path for every round (emptied in between): sccache's Rust hash covers the
    // dependency paths, so another path would be another key.
    let target = work.path().join("target");

    // Round 1, write token over Bearer: read-write, everything misses and is written.
    let mut sc = Sccache::new(&exe, work.path(), "1-ci-bearer", &t, Credentials::Bearer(&ci));
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
        let mut sc = Sccache::new(&exe, work.path(), name, &t, credentials);
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
        let log = std::fs::read_to_string(&sc.error_log).unwrap_or_default();
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
        let mut sc = Sccache::new(&exe, work.path(), name, &t, credentials);
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
        let log = std::fs::read_to_string(&sc.error_log).unwrap_or_default();
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

// ---------------------------------------------------------------------------------------------
// The sccache harness (after tests/e2e_sccache.rs).

/// `sccache --show-stats --stats-format json` of sccache 0.19.0.
#[derive(Debug, Deserialize)]
struct StatsJson {
    stats: ServerStats,
    effective_cache_mode: String,
}

#[derive(Debug, Deserialize)]
struct ServerStats {
    compile_requests: u64,
    requests_executed: u64,
    cache_hits: PerLanguage,
    cache_misses: PerLanguage,
    cache_errors: PerLanguage,
    cache_timeouts: u64,
    cache_read_errors: u64,
    cache_write_errors: u64,
    cache_writes: u64,
    compilations: u64,
    compile_fails: u64,
}

#[derive(Debug, Deserialize)]
struct PerLanguage {
    counts: BTreeMap<String, u64>,
}

impl PerLanguage {
    fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

struct Stats {
    json: StatsJson,
    adv_text: String,
}

impl std::ops::Deref for Stats {
    type Target = StatsJson;
    fn deref(&self) -> &StatsJson {
        &self.json
    }
}

impl Stats {
    fn hits(&self) -> u64 {
        self.stats.cache_hits.total()
    }
    fn misses(&self) -> u64 {
        self.stats.cache_misses.total()
    }
    fn text_field(&self, name: &str) -> Option<&str> {
        self.adv_text
            .lines()
            .find_map(|line| line.strip_prefix(name).filter(|rest| rest.starts_with(' ')))
            .map(str::trim)
    }
}

/// One sccache configuration (own port, local dir, credentials) and the server it may run.
/// Dropping it stops that server, so a failed assertion leaves no process behind.
struct Sccache {
    exe: PathBuf,
    name: String,
    set: Vec<(OsString, OsString)>,
    remove: Vec<OsString>,
    error_log: PathBuf,
    logs: PathBuf,
    server_running: bool,
    notes: Vec<String>,
    steps: u32,
}

impl Sccache {
    fn new(exe: &Path, work: &Path, name: &str, t: &TestServer, credentials: Credentials<'_>) -> Sccache {
        let base = work.join(name);
        let logs = base.join("logs");
        std::fs::create_dir_all(&logs).expect("create log dir");
        let config = base.join("sccache-config.toml");
        std::fs::write(&config, "").expect("write empty sccache config");
        let error_log = logs.join("sccache-server.log");
        let mut set: Vec<(OsString, OsString)> = vec![
            ("SCCACHE_SERVER_PORT".into(), free_port().to_string().into()),
            ("SCCACHE_DIR".into(), base.join("sccache-dir").into()),
            ("SCCACHE_IDLE_TIMEOUT".into(), "0".into()),
            ("SCCACHE_ERROR_LOG".into(), error_log.clone().into()),
            ("SCCACHE_CONF".into(), config.into()),
            (
                "SCCACHE_WEBDAV_ENDPOINT".into(),
                format!("{}/{NAMESPACE}/", t.base).into(),
            ),
            ("NO_PROXY".into(), "127.0.0.1,localhost".into()),
            ("no_proxy".into(), "127.0.0.1,localhost".into()),
        ];
        for (k, v) in credentials.env() {
            set.push((k.into(), v.into()));
        }
        let proxies = [
            "HTTP_PROXY",
            "http_proxy",
            "HTTPS_PROXY",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
        ];
        let remove = std::env::vars_os()
            .map(|(name, _)| name)
            .filter(|name| {
                let name = name.to_string_lossy();
                name.starts_with("SCCACHE_")
                    || (name.starts_with("CARGO_") && name != "CARGO_HOME")
                    || name == "RUSTC_WRAPPER"
                    || name == "RUSTC_WORKSPACE_WRAPPER"
                    || proxies.contains(&name.as_ref())
            })
            .collect();
        Sccache {
            exe: exe.to_path_buf(),
            name: name.to_string(),
            set,
            remove,
            error_log,
            logs,
            server_running: false,
            notes: Vec::new(),
            steps: 0,
        }
    }

    fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        for name in &self.remove {
            cmd.env_remove(name);
        }
        cmd.envs(self.set.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn sccache(&self, args: &[&str]) -> Command {
        let mut cmd = self.command(&self.exe);
        cmd.args(args);
        cmd
    }

    /// Runs `cmd` to completion; output goes to files (a daemon would hold a pipe open).
    async fn run(&mut self, mut cmd: Command, what: &str) -> Ran {
        self.steps += 1;
        let stdout_path = self.logs.join(format!("{:02}-stdout.txt", self.steps));
        let stderr_path = self.logs.join(format!("{:02}-stderr.txt", self.steps));
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => self.fail(format!("cannot run {what} ({cmd:?}): {e}")),
        };
        let status = match tokio::time::timeout(STEP_TIMEOUT, child.wait()).await {
            Ok(status) => status.expect("wait for child"),
            Err(_) => {
                let _ = child.kill().await;
                self.fail(format!("{what} did not finish within {STEP_TIMEOUT:?}"))
            }
        };
        let ran = Ran {
            status,
            stdout: std::fs::read_to_string(&stdout_path).unwrap_or_default(),
            stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
        };
        self.notes.push(format!("--- {what}: {}", ran.describe()));
        ran
    }

    /// `sccache --start-server`, whatever its outcome.
    async fn try_start_server(&mut self) -> Ran {
        let mut cmd = self.sccache(&["--start-server"]);
        cmd.env("SCCACHE_LOG", "debug");
        let ran = self.run(cmd, "sccache --start-server").await;
        // Stop it at the end even if it claims to have failed.
        self.server_running = true;
        ran
    }

    async fn start_server(&mut self) {
        let ran = self.try_start_server().await;
        self.ensure(ran.status.success(), "sccache --start-server failed");
    }

    async fn stop_server(&mut self) {
        let ran = self
            .run(self.sccache(&["--stop-server"]), "sccache --stop-server")
            .await;
        self.server_running = false;
        self.ensure(ran.status.success(), "sccache --stop-server failed");
    }

    async fn cargo_build(&mut self, workspace: &Path, target_dir: &Path) {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = self.command(cargo);
        cmd.args(["build", "--offline"])
            .current_dir(workspace)
            .env("RUSTC_WRAPPER", &self.exe)
            .env("CARGO_TARGET_DIR", target_dir)
            .env("CARGO_INCREMENTAL", "0");
        let ran = self.run(cmd, "cargo build --offline").await;
        self.ensure(ran.status.success(), "cargo build of the fixture failed");
    }

    async fn stats(&mut self, when: &str) -> Stats {
        let json = self.sccache(&["--show-stats", "--stats-format", "json"]);
        let ran = self
            .run(json, &format!("sccache --show-stats --stats-format json ({when})"))
            .await;
        self.ensure(ran.status.success(), "sccache --show-stats failed");
        let json: StatsJson = match serde_json::from_str(ran.stdout.trim()) {
            Ok(json) => json,
            Err(e) => self.fail(format!("unexpected --show-stats JSON ({e}): {}", ran.stdout)),
        };
        let ran = self
            .run(
                self.sccache(&["--show-adv-stats"]),
                &format!("sccache --show-adv-stats ({when})"),
            )
            .await;
        self.ensure(ran.status.success(), "sccache --show-adv-stats failed");
        eprintln!("sccache stats after {when}: {json:?}");
        Stats {
            json,
            adv_text: ran.stdout,
        }
    }

    fn check_no_errors(&self, stats: &Stats, when: &str) {
        let s = &stats.stats;
        self.ensure_eq(s.cache_errors.total(), 0, &format!("{when}: cache errors"));
        self.ensure_eq(s.cache_read_errors, 0, &format!("{when}: cache read errors"));
        self.ensure_eq(s.cache_write_errors, 0, &format!("{when}: cache write errors"));
        self.ensure_eq(s.cache_timeouts, 0, &format!("{when}: cache timeouts"));
        self.ensure_eq(s.compile_fails, 0, &format!("{when}: compile failures"));
        self.ensure(
            s.requests_executed == stats.hits() + stats.misses() && s.compile_requests >= s.requests_executed,
            format!("{when}: executed requests vs hits + misses ({s:?})"),
        );
    }

    fn ensure(&self, ok: bool, what: impl std::fmt::Display) {
        if !ok {
            self.fail(format!("assertion failed: {what}"));
        }
    }

    fn ensure_eq<T: PartialEq + std::fmt::Debug>(&self, actual: T, expected: T, what: &str) {
        if actual != expected {
            self.fail(format!("{what}: expected {expected:?}, got {actual:?}"));
        }
    }

    /// Everything this configuration printed, for failure messages later on.
    fn finish(self) -> String {
        format!("=== sccache round {}\n{}", self.name, self.notes.join("\n"))
    }

    fn fail(&self, message: String) -> ! {
        let log = std::fs::read_to_string(&self.error_log).unwrap_or_else(|e| format!("(unreadable: {e})"));
        let tail: Vec<&str> = log.lines().rev().take(300).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "round {}: {message}\n\nsccache: {}\n\n{}\n\n--- sccache server log {} (last 300 lines):\n{}",
            self.name,
            self.exe.display(),
            self.notes.join("\n"),
            self.error_log.display(),
            tail.join("\n"),
        )
    }
}

impl Drop for Sccache {
    fn drop(&mut self) {
        if !self.server_running {
            return;
        }
        let mut cmd = std::process::Command::new(&self.exe);
        cmd.arg("--stop-server")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for name in &self.remove {
            cmd.env_remove(name);
        }
        cmd.envs(self.set.iter().map(|(k, v)| (k, v)));
        let _ = cmd.status();
    }
}

struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn describe(&self) -> String {
        format!(
            "{}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rust-workspace")
}

fn find_sccache() -> PathBuf {
    if let Some(path) = std::env::var_os("HEARTH_TEST_SCCACHE") {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "HEARTH_TEST_SCCACHE={} is not a file", path.display());
        return path;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("sccache"))
            .find(|p| p.is_file())
    });
    let tools_dir = std::env::var_os("HEARTH_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/hearth-tools")));
    let installed = tools_dir
        .map(|dir| dir.join("sccache-0.19.0/bin/sccache"))
        .filter(|p| p.is_file());
    on_path.or(installed).unwrap_or_else(|| {
        panic!(
            "sccache not found: set HEARTH_TEST_SCCACHE to its path or put it on PATH. \
             Run ./scripts/test.sh, which builds sccache 0.19.0 (feature webdav) and runs the tests."
        )
    })
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

fn remove_dir(dir: &Path) {
    if dir.exists() {
        std::fs::remove_dir_all(dir).unwrap_or_else(|e| panic!("remove {}: {e}", dir.display()));
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display())) {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy fixture file");
        }
    }
}
