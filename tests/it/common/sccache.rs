//! The real sccache 0.19 client: where it is, its statistics, and a private sccache server
//! (own port, local dir, configuration and environment) that uses a hearth as WebDAV cache.
use super::process::{find_tool, Client, Env, Ran};
use super::TestServer;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

/// The fixture sccache builds: `tests/fixtures/rust-workspace`.
pub const FIXTURE: &str = "rust-workspace";
/// What the fixture's binary prints: computed through all four crates.
pub const EXPECTED_LINE: &str = "hello, hearth: sum of squares 1..=10 is 385";
/// Compilations sccache can cache in the fixture: the libraries `alpha`, `beta` and `gamma`.
/// The binary `app` is linked, which sccache never caches ("crate-type (bin)").
pub const CACHEABLE_CRATES: u64 = 3;
/// Upper bound for any one child process (a build of the fixture takes about a second).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(180);

/// `$HEARTH_TEST_SCCACHE`, else `sccache` on `PATH`, else the copy `./scripts/test.sh` builds
/// into `${HEARTH_TOOLS_DIR:-~/.cache/hearth-tools}/sccache-0.19.0/bin/sccache`.
pub fn find_sccache() -> PathBuf {
    let tools_dir = std::env::var_os("HEARTH_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/hearth-tools")));
    let installed = tools_dir.map(|dir| dir.join("sccache-0.19.0/bin/sccache"));
    find_tool("HEARTH_TEST_SCCACHE", "sccache", installed).unwrap_or_else(|| {
        panic!(
            "sccache not found: set HEARTH_TEST_SCCACHE to its path or put it on PATH. \
             Run ./scripts/test.sh, which builds sccache 0.19.0 (feature webdav) and runs the tests."
        )
    })
}

/// A TCP port nothing listens on right now (for the sccache server).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// `sccache --show-stats --stats-format json`, as printed by sccache 0.19.0 (unknown fields
/// are ignored; a missing one fails the test, since it means the format changed).
#[derive(Debug, Deserialize)]
pub struct StatsJson {
    pub stats: ServerStats,
    pub cache_location: String,
    pub effective_cache_mode: String,
    pub version: String,
}

#[derive(Debug, Deserialize)]
pub struct ServerStats {
    pub compile_requests: u64,
    pub requests_executed: u64,
    pub cache_hits: PerLanguage,
    pub cache_misses: PerLanguage,
    pub cache_errors: PerLanguage,
    pub cache_timeouts: u64,
    pub cache_read_errors: u64,
    pub cache_write_errors: u64,
    pub cache_writes: u64,
    pub compilations: u64,
    pub compile_fails: u64,
    pub not_cached: BTreeMap<String, u64>,
}

/// `{"counts": {"Rust": 3}, "adv_counts": {"rust": 3}}`; an empty `counts` means zero.
#[derive(Debug, Deserialize)]
pub struct PerLanguage {
    pub counts: BTreeMap<String, u64>,
}

impl PerLanguage {
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

/// Both views of one moment's statistics.
pub struct Stats {
    pub json: StatsJson,
    /// `--show-adv-stats` as text.
    pub adv_text: String,
}

impl Deref for Stats {
    type Target = StatsJson;
    fn deref(&self) -> &StatsJson {
        &self.json
    }
}

impl Stats {
    pub fn hits(&self) -> u64 {
        self.stats.cache_hits.total()
    }
    pub fn misses(&self) -> u64 {
        self.stats.cache_misses.total()
    }
    /// The value of a `Name   value` line of the text output.
    pub fn text_field(&self, name: &str) -> Option<&str> {
        self.adv_text
            .lines()
            .find_map(|line| line.strip_prefix(name).filter(|rest| rest.starts_with(' ')))
            .map(str::trim)
    }
}

/// One sccache configuration (server port, local dir, endpoint, extra variables such as
/// credentials) and the server it may run. Dropping it stops that server, so a failed assertion
/// leaves no process behind. Steps, checks and failures are those of its [`Client`].
pub struct Sccache {
    client: Client,
    /// Set by [`Sccache::round`].
    round: Option<String>,
    server_running: bool,
}

crate::deref_to_client!(Sccache);

impl Sccache {
    /// sccache `exe` with its logs and configuration in `dir`, its local cache in `sccache_dir`,
    /// and `/<namespace>/` of `t` as WebDAV endpoint; `extra_env` adds variables (a key
    /// prefix, credentials).
    pub fn new<K: Into<OsString>, V: Into<OsString>>(
        exe: &Path,
        dir: &Path,
        sccache_dir: &Path,
        t: &TestServer,
        namespace: &str,
        extra_env: impl IntoIterator<Item = (K, V)>,
    ) -> Sccache {
        let logs = dir.join("logs");
        let config = dir.join("sccache-config.toml");
        let error_log = logs.join("sccache-server.log");
        let endpoint = format!("{}/{namespace}/", t.base);
        let set: Vec<(OsString, OsString)> = vec![
            ("SCCACHE_SERVER_PORT".into(), free_port().to_string().into()),
            ("SCCACHE_DIR".into(), sccache_dir.into()),
            ("SCCACHE_IDLE_TIMEOUT".into(), "0".into()),
            ("SCCACHE_ERROR_LOG".into(), error_log.clone().into()),
            // An empty config file, so a developer's own sccache config cannot interfere.
            ("SCCACHE_CONF".into(), config.clone().into()),
            ("SCCACHE_WEBDAV_ENDPOINT".into(), endpoint.clone().into()),
        ];
        let mut env = Env::new(set, |name| {
            name.starts_with("SCCACHE_")
                // The outer `cargo test` sets CARGO_* for this process; none may leak into
                // the fixture's build (wrappers, target dir, incremental, package metadata).
                || (name.starts_with("CARGO_") && name != "CARGO_HOME")
                || name == "RUSTC_WRAPPER"
                || name == "RUSTC_WORKSPACE_WRAPPER"
        });
        for (name, value) in extra_env {
            env.set(name, value);
        }
        let context = format!("endpoint: {endpoint}\nsccache: {}", exe.display());
        let client = Client::new(
            exe.to_path_buf(),
            env,
            logs,
            STEP_TIMEOUT,
            error_log,
            "sccache server log",
            context,
        );
        std::fs::write(&config, "").expect("write empty sccache config");
        Sccache {
            client,
            round: None,
            server_running: false,
        }
    }

    /// Names this configuration `round <name>` in failures and in [`Sccache::finish`].
    pub fn round(mut self, name: &str) -> Sccache {
        self.client.prefix = format!("round {name}: ");
        self.round = Some(name.to_string());
        self
    }

    /// Runs `cmd` like [`Client::run`] (here too, so `sc.run(sc.sccache(…), …)` borrows).
    pub async fn run(&mut self, cmd: Command, what: &str) -> Ran {
        self.client.run(cmd, what).await
    }

    /// `sccache <args>` in this configuration.
    pub fn sccache(&self, args: &[&str]) -> Command {
        let mut cmd = self.command(&self.exe);
        cmd.args(args);
        cmd
    }

    /// `sccache --start-server`, whatever its outcome.
    pub async fn try_start_server(&mut self) -> Ran {
        let mut cmd = self.sccache(&["--start-server"]);
        cmd.env("SCCACHE_LOG", "debug");
        let ran = self.run(cmd, "sccache --start-server").await;
        // Stop it at the end even if it claims to have failed.
        self.server_running = true;
        ran
    }

    pub async fn start_server(&mut self) {
        let ran = self.try_start_server().await;
        self.ensure(ran.status.success(), "sccache --start-server failed");
    }

    pub async fn stop_server(&mut self) {
        let ran = self
            .run(self.sccache(&["--stop-server"]), "sccache --stop-server")
            .await;
        self.server_running = false;
        self.ensure(ran.status.success(), "sccache --stop-server failed");
    }

    pub async fn cargo_build(&mut self, workspace: &Path, target_dir: &Path) {
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

    pub async fn stats(&mut self, when: &str) -> Stats {
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
    pub fn check_read_write(&self, stats: &Stats, key_prefix: Option<&str>) {
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

    pub fn check_no_errors(&self, stats: &Stats, when: &str) {
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
    }

    /// The fixture's one binary crate is reported as not cacheable.
    pub fn check_binary_not_cached(&self, stats: &Stats, when: &str) {
        let s = &stats.stats;
        self.ensure(
            s.not_cached.get("crate-type (bin)") == Some(&1),
            format!(
                "{when}: the binary crate is reported as not cacheable ({:?})",
                s.not_cached
            ),
        );
    }

    /// Everything this configuration printed, for failure messages later on.
    pub fn finish(self) -> String {
        let name = self.round.as_deref().unwrap_or_default();
        format!("=== sccache round {name}\n{}", self.notes())
    }
}

impl Drop for Sccache {
    fn drop(&mut self) {
        if !self.server_running {
            return;
        }
        let mut cmd = self.env.std_command(&self.exe);
        cmd.arg("--stop-server")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = cmd.status();
    }
}
