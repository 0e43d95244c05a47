//! End to end with the real sccache 0.19 client: a small Rust workspace is built through hearth's
//! WebDAV front-end twice, and the second build (fresh target dir, fresh local sccache state)
//! must be served entirely from hearth.
//!
//! sccache is found as `$HEARTH_TEST_SCCACHE`, else `sccache` on `PATH`, else where
//! `./scripts/test.sh` installs it (`${HEARTH_TOOLS_DIR:-~/.cache/hearth-tools}/sccache-0.19.0`).
//! A missing client fails the test: it is never skipped.
mod common;

use common::{start_server, stats_total, Db, TestServer};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::process::Command;

/// What the fixture's binary prints: computed through all four crates.
const EXPECTED_LINE: &str = "hello, hearth: sum of squares 1..=10 is 385";
/// Compilations sccache can cache in the fixture: the libraries `alpha`, `beta` and `gamma`.
/// The binary `app` is linked, which sccache never caches ("crate-type (bin)").
const CACHEABLE_CRATES: u64 = 3;
/// Upper bound for any one child process (a build of the fixture takes about a second).
const STEP_TIMEOUT: Duration = Duration::from_secs(180);
/// What sccache writes into `.sccache_check` at every start (its write probe).
const PROBE_BODY: &str = "Hello, World!";

async fn build_twice_second_build_hits(db: Db) {
    scenario(db, "rust-e2e", None).await;
}

async fn build_twice_with_key_prefix(db: Db) {
    // sccache joins endpoint and prefix verbatim: requests go to `/rust-e2e//team/proj/…`.
    scenario(db, "rust-e2e", Some("team/proj")).await;
}

on_both_databases!(build_twice_second_build_hits, build_twice_with_key_prefix);

async fn scenario(db: Db, namespace: &str, key_prefix: Option<&str>) {
    let started = Instant::now();
    let exe = find_sccache();
    let mut t = start_server(db).await;
    let work = tempfile::tempdir().expect("temp dir");
    let workspace = work.path().join("workspace");
    copy_dir(&fixture_dir(), &workspace);
    let target_dir = work.path().join("target");
    let sccache_dir = work.path().join("sccache-dir");
    let mut sc = Sccache::new(exe, work.path(), &t, namespace, key_prefix, &sccache_dir);

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
    let context = format!("hearth counters {hearth:?}");
    let (hits, misses, writes) = (
        second.hits() as i64,
        first.misses() as i64,
        first.stats.cache_writes as i64,
    );
    sc.ensure(
        hearth.hits >= hits,
        format!("hearth hits >= sccache hits ({hits}); {context}"),
    );
    sc.ensure(
        hearth.misses >= misses,
        format!("hearth misses >= sccache misses ({misses}); {context}"),
    );
    sc.ensure(
        hearth.writes >= writes,
        format!("hearth writes >= sccache writes ({writes}); {context}"),
    );
    sc.ensure_eq(hearth.errors, 0, "hearth errors");
    sc.ensure_eq(hearth.conflicting_writes, 0, "hearth conflicting writes");

    drop(sc);
    t.stop().await;
    eprintln!(
        "{db:?} {namespace} prefix {key_prefix:?}: passed in {:.1?}",
        started.elapsed()
    );
}

/// `sccache --show-stats --stats-format json`, as printed by sccache 0.19.0 (unknown fields
/// are ignored; a missing one fails the test, since it means the format changed).
#[derive(Debug, Deserialize)]
struct StatsJson {
    stats: ServerStats,
    cache_location: String,
    effective_cache_mode: String,
    version: String,
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
    not_cached: BTreeMap<String, u64>,
}

/// `{"counts": {"Rust": 3}, "adv_counts": {"rust": 3}}`; an empty `counts` means zero.
#[derive(Debug, Deserialize)]
struct PerLanguage {
    counts: BTreeMap<String, u64>,
}

impl PerLanguage {
    fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

/// Both views of one moment's statistics.
struct Stats {
    json: StatsJson,
    /// `--show-adv-stats` as text.
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
    /// The value of a `Name   value` line of the text output.
    fn text_field(&self, name: &str) -> Option<&str> {
        self.adv_text
            .lines()
            .find_map(|line| line.strip_prefix(name).filter(|rest| rest.starts_with(' ')))
            .map(str::trim)
    }
}

/// One sccache configuration (server port, local dir, endpoint) and the server it may run.
/// Dropping it stops that server, so a failed assertion leaves no process behind.
struct Sccache {
    exe: PathBuf,
    set: Vec<(OsString, OsString)>,
    remove: Vec<OsString>,
    error_log: PathBuf,
    logs: PathBuf,
    endpoint: String,
    server_running: bool,
    /// What every step printed, shown when something fails.
    notes: Vec<String>,
    steps: u32,
}

impl Sccache {
    fn new(
        exe: PathBuf,
        work: &Path,
        t: &TestServer,
        namespace: &str,
        key_prefix: Option<&str>,
        dir: &Path,
    ) -> Sccache {
        let logs = work.join("logs");
        std::fs::create_dir_all(&logs).expect("create log dir");
        let config = work.join("sccache-config.toml");
        std::fs::write(&config, "").expect("write empty sccache config");
        let error_log = logs.join("sccache-server.log");
        let endpoint = format!("{}/{namespace}/", t.base);
        let port = free_port();
        let mut set: Vec<(OsString, OsString)> = vec![
            ("SCCACHE_SERVER_PORT".into(), port.to_string().into()),
            ("SCCACHE_DIR".into(), dir.into()),
            ("SCCACHE_IDLE_TIMEOUT".into(), "0".into()),
            ("SCCACHE_ERROR_LOG".into(), error_log.clone().into()),
            // An empty config file, so a developer's own sccache config cannot interfere.
            ("SCCACHE_CONF".into(), config.into()),
            ("SCCACHE_WEBDAV_ENDPOINT".into(), endpoint.clone().into()),
            ("NO_PROXY".into(), "127.0.0.1,localhost".into()),
            ("no_proxy".into(), "127.0.0.1,localhost".into()),
        ];
        if let Some(prefix) = key_prefix {
            set.push(("SCCACHE_WEBDAV_KEY_PREFIX".into(), prefix.into()));
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
                    // The outer `cargo test` sets CARGO_* for this process; none may leak into
                    // the fixture's build (wrappers, target dir, incremental, package metadata).
                    || (name.starts_with("CARGO_") && name != "CARGO_HOME")
                    || name == "RUSTC_WRAPPER"
                    || name == "RUSTC_WORKSPACE_WRAPPER"
                    || proxies.contains(&name.as_ref())
            })
            .collect();
        Sccache {
            exe,
            set,
            remove,
            error_log,
            logs,
            endpoint,
            server_running: false,
            notes: Vec::new(),
            steps: 0,
        }
    }

    /// `program` with this configuration's environment.
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

    /// Runs `cmd` to completion (at most [`STEP_TIMEOUT`]). Output goes to files, never pipes:
    /// `sccache --start-server` leaves a daemon that would hold a pipe open forever.
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

    async fn start_server(&mut self) {
        let mut cmd = self.sccache(&["--start-server"]);
        cmd.env("SCCACHE_LOG", "debug");
        let ran = self.run(cmd, "sccache --start-server").await;
        self.server_running = true;
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
        eprintln!("sccache {} stats after the {when}: {json:?}", json.version);
        Stats {
            json,
            adv_text: ran.stdout,
        }
    }

    /// The startup check passed: sccache reads and writes hearth at the expected place.
    fn check_read_write(&self, stats: &Stats, key_prefix: Option<&str>) {
        self.ensure_eq(
            stats.effective_cache_mode.as_str(),
            "ReadWrite",
            "effective_cache_mode (JSON)",
        );
        self.ensure_eq(
            stats.text_field("Effective cache mode"),
            Some("ReadWrite"),
            "Effective cache mode (text)",
        );
        let prefix = match key_prefix {
            Some(p) => format!("/{p}/"),
            None => "/".to_string(),
        };
        let location = format!("webdav, name: , prefix: {prefix}");
        self.ensure_eq(
            stats.cache_location.as_str(),
            location.as_str(),
            "cache_location (JSON)",
        );
        self.ensure_eq(
            stats.text_field("Cache location"),
            Some(location.as_str()),
            "Cache location (text)",
        );
    }

    fn check_no_errors(&self, stats: &Stats, when: &str) {
        let s = &stats.stats;
        self.ensure_eq(s.cache_errors.total(), 0, &format!("{when}: cache errors"));
        self.ensure_eq(s.cache_read_errors, 0, &format!("{when}: cache read errors"));
        self.ensure_eq(s.cache_write_errors, 0, &format!("{when}: cache write errors"));
        self.ensure_eq(s.cache_timeouts, 0, &format!("{when}: cache timeouts"));
        self.ensure_eq(s.compile_fails, 0, &format!("{when}: compile failures"));
        // Sanity of the shape: every executed request is a hit, a miss or an error.
        self.ensure(
            s.requests_executed == stats.hits() + stats.misses() && s.compile_requests >= s.requests_executed,
            format!("{when}: executed requests vs hits + misses ({s:?})"),
        );
        self.ensure(
            s.not_cached.get("crate-type (bin)") == Some(&1),
            format!(
                "{when}: the binary crate is reported as not cacheable ({:?})",
                s.not_cached
            ),
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

    /// Panics with `message` and everything that helps to understand it.
    fn fail(&self, message: String) -> ! {
        let log = std::fs::read_to_string(&self.error_log).unwrap_or_else(|e| format!("(unreadable: {e})"));
        let log_tail: Vec<&str> = log.lines().rev().take(300).collect();
        let log_tail: Vec<&str> = log_tail.into_iter().rev().collect();
        panic!(
            "{message}\n\nendpoint: {}\nsccache: {}\n\n{}\n\n--- sccache server log {} (last 300 lines):\n{}",
            self.endpoint,
            self.exe.display(),
            self.notes.join("\n"),
            self.error_log.display(),
            log_tail.join("\n"),
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

/// A finished child process.
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

/// `$HEARTH_TEST_SCCACHE`, else `sccache` on `PATH`, else the copy `./scripts/test.sh` builds
/// into `${HEARTH_TOOLS_DIR:-~/.cache/hearth-tools}/sccache-0.19.0/bin/sccache`.
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

/// A TCP port nothing listens on right now (for the sccache server).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
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

fn remove_dir(dir: &Path) {
    if dir.exists() {
        std::fs::remove_dir_all(dir).unwrap_or_else(|e| panic!("remove {}: {e}", dir.display()));
    }
}
