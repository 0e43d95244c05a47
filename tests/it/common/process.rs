//! Real client binaries (sccache, ccache, gcc, …) driven by the end-to-end tests: finding them,
//! their fixtures, and a [`Client`] that runs each step with a time limit, its output in files,
//! and fails with everything that helps to understand the failure.
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::process::Command;

/// A finished child process.
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn describe(&self) -> String {
        format!(
            "{}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// The environment of a client's commands: its own variables set, inherited ones that could
/// interfere removed, and no proxy between it and the local hearth.
pub struct Env {
    set: Vec<(OsString, OsString)>,
    remove: Vec<OsString>,
}

impl Env {
    /// `set` plus `NO_PROXY`/`no_proxy` for localhost. Every inherited variable for which
    /// `interferes` holds is removed, and so is every proxy setting.
    pub fn new(mut set: Vec<(OsString, OsString)>, interferes: impl Fn(&str) -> bool) -> Env {
        set.push(("NO_PROXY".into(), "127.0.0.1,localhost".into()));
        set.push(("no_proxy".into(), "127.0.0.1,localhost".into()));
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
                interferes(&name) || proxies.contains(&name.as_ref())
            })
            .collect();
        Env { set, remove }
    }

    /// Sets one more variable.
    pub fn set(&mut self, name: impl Into<OsString>, value: impl Into<OsString>) {
        self.set.push((name.into(), value.into()));
    }

    /// `program` with this environment, for blocking use (in `Drop`).
    pub fn std_command(&self, program: impl AsRef<OsStr>) -> std::process::Command {
        let mut cmd = std::process::Command::new(program);
        for name in &self.remove {
            cmd.env_remove(name);
        }
        cmd.envs(self.set.iter().map(|(k, v)| (k, v)));
        cmd
    }
}

/// One client configuration: its binary, environment and log file, and the steps it ran.
pub struct Client {
    pub exe: PathBuf,
    pub env: Env,
    /// The client's own log, whose tail every failure shows.
    pub log: PathBuf,
    /// What the log is called in failures (`sccache server log`).
    log_title: &'static str,
    /// Lines that identify the configuration in failures (`endpoint: …\nsccache: …`).
    context: String,
    /// Starts every failure message (`round 2-dev-bearer: `); empty by default.
    pub prefix: String,
    /// Where every step's stdout and stderr go.
    logs: PathBuf,
    /// Upper bound for any one step.
    timeout: Duration,
    /// What every step printed, shown when something fails.
    notes: Vec<String>,
    steps: u32,
}

impl Client {
    /// A client whose step output goes into `logs` (created here).
    pub fn new(
        exe: PathBuf,
        env: Env,
        logs: PathBuf,
        timeout: Duration,
        log: PathBuf,
        log_title: &'static str,
        context: String,
    ) -> Client {
        std::fs::create_dir_all(&logs).expect("create log dir");
        Client {
            exe,
            env,
            log,
            log_title,
            context,
            prefix: String::new(),
            logs,
            timeout,
            notes: Vec::new(),
            steps: 0,
        }
    }

    /// `program` with this configuration's environment.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        Command::from(self.env.std_command(program))
    }

    /// Runs `cmd` to completion (at most the step timeout). Output goes to files, never pipes:
    /// `sccache --start-server` leaves a daemon that would hold a pipe open forever.
    pub async fn run(&mut self, mut cmd: Command, what: &str) -> Ran {
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
        let status = match tokio::time::timeout(self.timeout, child.wait()).await {
            Ok(status) => status.expect("wait for child"),
            Err(_) => {
                let _ = child.kill().await;
                self.fail(format!("{what} did not finish within {:?}", self.timeout))
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

    /// What every step so far printed.
    pub fn notes(&self) -> String {
        self.notes.join("\n")
    }

    pub fn ensure(&self, ok: bool, what: impl std::fmt::Display) {
        if !ok {
            self.fail(format!("assertion failed: {what}"));
        }
    }

    pub fn ensure_eq<T: PartialEq + std::fmt::Debug>(&self, actual: T, expected: T, what: &str) {
        if actual != expected {
            self.fail(format!("{what}: expected {expected:?}, got {actual:?}"));
        }
    }

    /// hearth's counters saw at least what the client saw: `seen` holds the client's hits,
    /// misses and writes, each with the client's name for it (`sccache hits`).
    pub fn check_hearth_counters(&self, hearth: &hearth::meta::Counters, seen: [(&str, i64); 3]) {
        let context = format!("hearth counters {hearth:?}");
        let [(hits_name, hits), (misses_name, misses), (writes_name, writes)] = seen;
        self.ensure(
            hearth.hits >= hits,
            format!("hearth hits >= {hits_name} ({hits}); {context}"),
        );
        self.ensure(
            hearth.misses >= misses,
            format!("hearth misses >= {misses_name} ({misses}); {context}"),
        );
        self.ensure(
            hearth.writes >= writes,
            format!("hearth writes >= {writes_name} ({writes}); {context}"),
        );
        self.ensure_eq(hearth.errors, 0, "hearth errors");
        self.ensure_eq(hearth.conflicting_writes, 0, "hearth conflicting writes");
    }

    /// Panics with `message` and everything that helps to understand it.
    pub fn fail(&self, message: String) -> ! {
        let log = std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(unreadable: {e})"));
        let log_tail: Vec<&str> = log.lines().rev().take(300).collect();
        let log_tail: Vec<&str> = log_tail.into_iter().rev().collect();
        panic!(
            "{}{message}\n\n{}\n\n{}\n\n--- {} {} (last 300 lines):\n{}",
            self.prefix,
            self.context,
            self.notes(),
            self.log_title,
            self.log.display(),
            log_tail.join("\n"),
        )
    }
}

/// `Deref` and `DerefMut` from `$wrapper` (a struct with a field `client: Client`) to that
/// [`Client`], so the wrapper runs steps and checks like the client itself.
#[macro_export]
macro_rules! deref_to_client {
    ($wrapper:ty) => {
        impl std::ops::Deref for $wrapper {
            type Target = $crate::common::process::Client;
            fn deref(&self) -> &Self::Target {
                &self.client
            }
        }

        impl std::ops::DerefMut for $wrapper {
            fn deref_mut(&mut self) -> &mut Self::Target {
                &mut self.client
            }
        }
    };
}

/// `tests/fixtures/<name>`.
pub fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// `$<env>` if set (it must be a file), else `name` on `PATH`, else `fallback` if it is a file.
pub fn find_tool(env: &str, name: &str, fallback: Option<PathBuf>) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "{env}={} is not a file", path.display());
        return Some(path);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    on_path.or(fallback.filter(|p| p.is_file()))
}

pub fn copy_dir(from: &Path, to: &Path) {
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

pub fn remove_dir(dir: &Path) {
    if dir.exists() {
        std::fs::remove_dir_all(dir).unwrap_or_else(|e| panic!("remove {}: {e}", dir.display()));
    }
}
