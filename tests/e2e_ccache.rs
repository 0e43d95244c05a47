//! End to end with the real ccache client (Debian's 4.7.5) and its `http` remote storage: a few
//! C files are compiled through hearth twice, and the second round (object files deleted, a fresh
//! local ccache dir, `remote_only`) must be served entirely from hearth, byte for byte.
//!
//! ccache is found as `$HEARTH_TEST_CCACHE`, else `ccache` on `PATH` (gcc likewise as
//! `$HEARTH_TEST_GCC`, else `gcc`). A missing client fails the test: it is never skipped.
mod common;

use common::{start_server, stats_total, Db};
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::process::Command;

/// The translation units of the fixture; all include `mathx.h`, `main.c` also `<stdio.h>`.
const SOURCES: &[&str] = &["square.c", "scaled.c", "name.c", "main.c"];
/// What the linked fixture prints: `mathx_name()` and `mathx_square(6) * MATHX_SCALE`.
const EXPECTED_LINE: &str = "hearth: 252";
/// Upper bound for any one child process.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

async fn compile_twice_subdirs_layout(db: Db) {
    scenario(db, "ccache-e2e", Layout::Subdirs).await;
}

async fn compile_twice_flat_layout(db: Db) {
    scenario(db, "ccache-e2e", Layout::Flat).await;
}

on_both_databases!(compile_twice_subdirs_layout, compile_twice_flat_layout);

/// ccache's `layout` attribute of `remote_storage` (`bazel` is for a Bazel front-end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// The default: `<url>/<first 2 chars>/<other 31 chars>`.
    Subdirs,
    /// `<url>/<33 chars>`.
    Flat,
}

impl Layout {
    /// The request path of `key` under `/<namespace>`.
    fn path(self, namespace: &str, key: &str) -> String {
        match self {
            Layout::Subdirs => format!("/{namespace}/{}/{}", &key[..2], &key[2..]),
            Layout::Flat => format!("/{namespace}/{key}"),
        }
    }

    fn other(self) -> Layout {
        match self {
            Layout::Subdirs => Layout::Flat,
            Layout::Flat => Layout::Subdirs,
        }
    }
}

async fn scenario(db: Db, namespace: &str, layout: Layout) {
    let started = Instant::now();
    let ccache = find_tool("HEARTH_TEST_CCACHE", "ccache");
    let gcc = find_tool("HEARTH_TEST_GCC", "gcc");
    let mut t = start_server(db).await;
    let work = tempfile::tempdir().expect("temp dir");
    let project = work.path().join("project");
    copy_dir(&fixture_dir(), &project);
    let attributes = match layout {
        Layout::Subdirs => "",
        Layout::Flat => "|layout=flat",
    };
    let remote = format!("{}/{namespace}{attributes}", t.base);
    let mut cc = Ccache::new(ccache, gcc, work.path(), &project, &remote);
    let n = SOURCES.len() as u64;

    // Round 1: every compilation misses and stores a manifest and a result remotely.
    let first = cc
        .compile_all(&project, &work.path().join("ccache-dir-1"), "round 1")
        .await;
    let objects_1 = read_objects(&project);
    cc.ensure_eq(first.get("cache_miss"), n, "round 1: cache_miss");
    cc.ensure_eq(
        first.get("direct_cache_hit") + first.get("preprocessed_cache_hit"),
        0,
        "round 1: hits",
    );
    cc.ensure_eq(first.get("remote_storage_miss"), n, "round 1: remote_storage_miss");
    // Direct mode (the default): one manifest and one result per compilation.
    cc.ensure_eq(
        first.get("remote_storage_read_miss"),
        2 * n,
        "round 1: remote_storage_read_miss",
    );
    cc.ensure_eq(
        first.get("remote_storage_write"),
        2 * n,
        "round 1: remote_storage_write",
    );
    cc.check_no_errors(&first, "round 1");
    let stored = cc.stored_keys();
    cc.ensure_eq(stored.len() as u64, 2 * n, "round 1: keys logged as stored");

    // Round 2: no object files and an empty local cache, so only hearth can answer.
    for name in objects_1.keys() {
        std::fs::remove_file(project.join(name)).expect("remove object file");
    }
    let second = cc
        .compile_all(&project, &work.path().join("ccache-dir-2"), "round 2")
        .await;
    cc.ensure_eq(second.get("remote_storage_hit"), n, "round 2: remote_storage_hit");
    cc.ensure_eq(second.get("direct_cache_hit"), n, "round 2: direct_cache_hit");
    cc.ensure_eq(second.get("cache_miss"), 0, "round 2: cache_miss");
    cc.ensure_eq(second.get("remote_storage_miss"), 0, "round 2: remote_storage_miss");
    // Every object written in round 1 (manifest + result per file) is read back.
    cc.ensure_eq(
        second.get("remote_storage_read_hit"),
        2 * n,
        "round 2: remote_storage_read_hit",
    );
    cc.ensure_eq(
        second.get("remote_storage_read_miss"),
        0,
        "round 2: remote_storage_read_miss",
    );
    cc.ensure_eq(second.get("remote_storage_write"), 0, "round 2: remote_storage_write");
    cc.check_no_errors(&second, "round 2");
    let objects_2 = read_objects(&project);
    let names = |objects: &BTreeMap<String, Vec<u8>>| objects.keys().cloned().collect::<Vec<_>>();
    cc.ensure_eq(names(&objects_2), names(&objects_1), "object files of round 2");
    for (name, bytes) in &objects_1 {
        cc.ensure(
            objects_2[name] == *bytes,
            format!("{name} of round 2 is byte-identical to round 1"),
        );
    }

    // The objects link into the expected program.
    let exe = project.join("mathx");
    let mut link = cc.command(&cc.gcc);
    link.current_dir(&project).arg("-o").arg(&exe).args(objects_2.keys());
    let ran = cc.run(link, "gcc (link)").await;
    cc.ensure(ran.status.success(), "linking the round 2 objects");
    let ran = cc.run(Command::new(&exe), "the linked program").await;
    cc.ensure(ran.status.success(), "running the linked program");
    cc.ensure_eq(ran.stdout.trim_end(), EXPECTED_LINE, "output of the linked program");

    // hearth's side: every stored key sits where the layout says, and nowhere else.
    for key in &stored {
        let path = layout.path(namespace, key);
        let head = t.client.head(t.url(&path)).send().await.expect("HEAD a ccache entry");
        cc.ensure_eq(head.status().as_u16(), 200, &format!("HEAD {path}"));
        let elsewhere = layout.other().path(namespace, key);
        let head = t
            .client
            .head(t.url(&elsewhere))
            .send()
            .await
            .expect("HEAD a ccache entry");
        cc.ensure_eq(
            head.status().as_u16(),
            404,
            &format!("HEAD {elsewhere} (the other layout)"),
        );
    }

    // ... and its counters saw at least what ccache saw. A graceful restart flushes them.
    t.restart().await;
    let hearth = stats_total(t.meta(), namespace).await;
    eprintln!("hearth counters for {namespace} ({layout:?}): {hearth:?}");
    let context = format!("hearth counters {hearth:?}");
    let hits = second.get("remote_storage_read_hit") as i64;
    let misses = first.get("remote_storage_read_miss") as i64;
    let writes = first.get("remote_storage_write") as i64;
    cc.ensure(
        hearth.hits >= hits,
        format!("hearth hits >= ccache remote read hits ({hits}); {context}"),
    );
    cc.ensure(
        hearth.misses >= misses,
        format!("hearth misses >= ccache remote read misses ({misses}); {context}"),
    );
    cc.ensure(
        hearth.writes >= writes,
        format!("hearth writes >= ccache remote writes ({writes}); {context}"),
    );
    cc.ensure_eq(hearth.errors, 0, "hearth errors");
    cc.ensure_eq(hearth.conflicting_writes, 0, "hearth conflicting writes");

    t.stop().await;
    eprintln!("{db:?} {namespace} {layout:?}: passed in {:.1?}", started.elapsed());
}

/// `ccache --print-stats`: one `name<TAB>value` line per counter.
struct PrintStats(BTreeMap<String, u64>);

impl PrintStats {
    /// A counter that ccache 4.7.5 prints; its absence fails the test (the format changed).
    fn get(&self, name: &str) -> u64 {
        *self
            .0
            .get(name)
            .unwrap_or_else(|| panic!("ccache --print-stats has no {name}: {:?}", self.0))
    }
}

/// One ccache configuration: remote storage, log file, and the environment of every command.
struct Ccache {
    exe: PathBuf,
    /// The compiler ccache wraps.
    gcc: PathBuf,
    set: Vec<(OsString, OsString)>,
    remove: Vec<OsString>,
    log_file: PathBuf,
    logs: PathBuf,
    remote: String,
    /// What every step printed, shown when something fails.
    notes: Vec<String>,
    steps: u32,
}

impl Ccache {
    fn new(exe: PathBuf, gcc: PathBuf, work: &Path, project: &Path, remote: &str) -> Ccache {
        let logs = work.join("logs");
        std::fs::create_dir_all(&logs).expect("create log dir");
        let config = work.join("ccache.conf");
        std::fs::write(&config, "").expect("write empty ccache config");
        let log_file = logs.join("ccache.log");
        let set: Vec<(OsString, OsString)> = vec![
            // An empty config file, so a developer's own ccache.conf cannot interfere.
            ("CCACHE_CONFIGPATH".into(), config.into()),
            ("CCACHE_REMOTE_STORAGE".into(), remote.into()),
            ("CCACHE_REMOTE_ONLY".into(), "true".into()),
            ("CCACHE_BASEDIR".into(), project.into()),
            ("CCACHE_NOHASHDIR".into(), "true".into()),
            ("CCACHE_LOGFILE".into(), log_file.clone().into()),
            ("NO_PROXY".into(), "127.0.0.1,localhost".into()),
            ("no_proxy".into(), "127.0.0.1,localhost".into()),
        ];
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
                name.starts_with("CCACHE_") || proxies.contains(&name.as_ref())
            })
            .collect();
        Ccache {
            exe,
            gcc,
            set,
            remove,
            log_file,
            logs,
            remote: remote.to_string(),
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

    /// Compiles every source with `ccache gcc -c` using the local cache dir `ccache_dir`
    /// (fresh), and returns ccache's counters for the round.
    async fn compile_all(&mut self, project: &Path, ccache_dir: &Path, round: &str) -> PrintStats {
        for source in SOURCES {
            let object = source.replace(".c", ".o");
            let mut cmd = self.command(&self.exe);
            cmd.current_dir(project)
                .env("CCACHE_DIR", ccache_dir)
                .arg(&self.gcc)
                .args(["-c", "-O2", "-Wall", source, "-o", &object]);
            let ran = self.run(cmd, &format!("ccache gcc -c {source} ({round})")).await;
            self.ensure(ran.status.success(), format!("ccache gcc -c {source} ({round})"));
        }
        let mut cmd = self.command(&self.exe);
        cmd.env("CCACHE_DIR", ccache_dir).arg("--print-stats");
        let ran = self.run(cmd, &format!("ccache --print-stats ({round})")).await;
        self.ensure(ran.status.success(), "ccache --print-stats");
        let mut stats = BTreeMap::new();
        for line in ran.stdout.lines() {
            let parsed = line
                .split_once('\t')
                .and_then(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)));
            match parsed {
                Some((name, value)) => stats.insert(name, value),
                None => self.fail(format!("unexpected --print-stats line {line:?}")),
            };
        }
        let nonzero: BTreeMap<_, _> = stats
            .iter()
            .filter(|(k, v)| **v != 0 && !k.ends_with("_timestamp"))
            .collect();
        eprintln!("ccache --print-stats after {round} (non-zero counters): {nonzero:?}");
        PrintStats(stats)
    }

    fn check_no_errors(&self, stats: &PrintStats, round: &str) {
        for name in [
            "remote_storage_error",
            "remote_storage_timeout",
            "internal_error",
            "compile_failed",
        ] {
            self.ensure_eq(stats.get(name), 0, &format!("{round}: {name}"));
        }
        // remote_only: the local storage is never touched.
        for name in [
            "local_storage_read_hit",
            "local_storage_read_miss",
            "local_storage_write",
        ] {
            self.ensure_eq(stats.get(name), 0, &format!("{round}: {name}"));
        }
    }

    /// Keys ccache logged as stored remotely (`Stored <key> in http://…`), in order.
    fn stored_keys(&self) -> Vec<String> {
        let log = std::fs::read_to_string(&self.log_file).unwrap_or_default();
        let remote_url = self.remote.split('|').next().unwrap_or_default().to_string();
        log.lines()
            .filter_map(|line| {
                let rest = &line[line.find("] Stored ")? + "] Stored ".len()..];
                let (key, place) = rest.split_once(" in ")?;
                place.starts_with(&remote_url).then(|| key.to_string())
            })
            .collect()
    }

    /// Runs `cmd` to completion (at most [`STEP_TIMEOUT`]), output captured in files.
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
        let log = std::fs::read_to_string(&self.log_file).unwrap_or_else(|e| format!("(unreadable: {e})"));
        let log_tail: Vec<&str> = log.lines().rev().take(300).collect();
        let log_tail: Vec<&str> = log_tail.into_iter().rev().collect();
        panic!(
            "{message}\n\nremote_storage: {}\nccache: {}\n\n{}\n\n--- ccache log {} (last 300 lines):\n{}",
            self.remote,
            self.exe.display(),
            self.notes.join("\n"),
            self.log_file.display(),
            log_tail.join("\n"),
        )
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
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/c-project")
}

/// `$<env>` if set, else `name` on `PATH`; a missing tool fails the test.
fn find_tool(env: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "{env}={} is not a file", path.display());
        return path;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    on_path.unwrap_or_else(|| {
        panic!(
            "{name} not found: set {env} to its path or put it on PATH. \
             Run ./scripts/test.sh, which installs ccache (Debian's 4.7.5, with http-storage) \
             and runs the tests."
        )
    })
}

/// Every `*.o` in `dir`, by file name.
fn read_objects(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut objects = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("read project dir").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".o") {
            objects.insert(name, std::fs::read(entry.path()).expect("read object file"));
        }
    }
    objects
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
