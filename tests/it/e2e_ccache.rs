//! End to end with the real ccache client (Debian's 4.7.5) and its `http` remote storage: a few
//! C files are compiled through hearth twice, and the second round (object files deleted, a fresh
//! local ccache dir, `remote_only`) must be served entirely from hearth, byte for byte.
//!
//! ccache is found as `$HEARTH_TEST_CCACHE`, else `ccache` on `PATH` (gcc likewise as
//! `$HEARTH_TEST_GCC`, else `gcc`). A missing client fails the test: it is never skipped.
use crate::common;

use common::process::{copy_dir, fixture_dir, Client, Env};
use common::{start_server, stats_total, Db};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
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

/// Two CI runners compile the fixture cold at the same paths, each into a namespace of its own:
/// the same keys, entries a second apart in their creation time. The second runner's entries
/// written again under the first's keys, as when both race on one namespace, are same-meaning
/// writes: no conflict.
async fn a_second_runners_cold_compile_is_no_conflict(db: Db) {
    let (ccache, gcc) = (
        find_tool("HEARTH_TEST_CCACHE", "ccache"),
        find_tool("HEARTH_TEST_GCC", "gcc"),
    );
    let mut t = start_server(db).await;
    let work = tempfile::tempdir().expect("temp dir");
    let project = work.path().join("project");
    copy_dir(&fixture_dir("c-project"), &project);
    let n = SOURCES.len() as u64;
    let mut stored = Vec::new();
    for runner in ["runner-0", "runner-1"] {
        let dir = work.path().join(runner);
        std::fs::create_dir_all(&dir).expect("runner dir");
        let remote = format!("{}/{runner}", t.base);
        let mut cc = Ccache::new(ccache.clone(), gcc.clone(), &dir, &project, &remote);
        let stats = cc.compile_all(&project, &dir.join("ccache-dir"), runner).await;
        cc.ensure_eq(
            stats.get("remote_storage_write"),
            2 * n,
            &format!("{runner}: remote writes"),
        );
        cc.check_no_errors(&stats, runner);
        stored.push(cc.stored_keys());
        // ccache's creation time counts seconds: the next runner's entries are younger.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let sorted = |keys: &[String]| keys.iter().cloned().collect::<std::collections::BTreeSet<_>>();
    assert_eq!(
        sorted(&stored[0]),
        sorted(&stored[1]),
        "the same paths give the same keys"
    );
    for key in &stored[1] {
        let get = |runner: &str| t.client.get(t.url(&Layout::Subdirs.path(runner, key))).send();
        let first = get("runner-0").await.unwrap().bytes().await.unwrap();
        let second = get("runner-1").await.unwrap().bytes().await.unwrap();
        assert_ne!(first, second, "{key}: entries of two runs differ in their bytes");
        let path = Layout::Subdirs.path("runner-0", key);
        let put = t.client.put(t.url(&path)).body(second).send().await.unwrap();
        assert_eq!(put.status(), 204, "{path}");
    }
    t.restart().await;
    let c = stats_total(t.meta(), "runner-0").await;
    assert_eq!(
        (c.same_meaning_writes, c.conflicting_writes),
        (2 * n as i64, 0),
        "{c:?}"
    );
    t.stop().await;
}

on_both_databases!(
    compile_twice_subdirs_layout,
    compile_twice_flat_layout,
    a_second_runners_cold_compile_is_no_conflict
);

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
    copy_dir(&fixture_dir("c-project"), &project);
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
    cc.check_hearth_counters(
        &hearth,
        [
            ("ccache remote read hits", second.get("remote_storage_read_hit") as i64),
            (
                "ccache remote read misses",
                first.get("remote_storage_read_miss") as i64,
            ),
            ("ccache remote writes", first.get("remote_storage_write") as i64),
        ],
    );

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
/// Steps, checks and failures are those of its [`Client`].
struct Ccache {
    client: Client,
    /// The compiler ccache wraps.
    gcc: PathBuf,
    remote: String,
}

crate::deref_to_client!(Ccache);

impl Ccache {
    fn new(exe: PathBuf, gcc: PathBuf, work: &Path, project: &Path, remote: &str) -> Ccache {
        let logs = work.join("logs");
        let config = work.join("ccache.conf");
        let log_file = logs.join("ccache.log");
        let set: Vec<(OsString, OsString)> = vec![
            // An empty config file, so a developer's own ccache.conf cannot interfere.
            ("CCACHE_CONFIGPATH".into(), config.clone().into()),
            ("CCACHE_REMOTE_STORAGE".into(), remote.into()),
            ("CCACHE_REMOTE_ONLY".into(), "true".into()),
            ("CCACHE_BASEDIR".into(), project.into()),
            ("CCACHE_NOHASHDIR".into(), "true".into()),
            ("CCACHE_LOGFILE".into(), log_file.clone().into()),
        ];
        let env = Env::new(set, |name| name.starts_with("CCACHE_"));
        let context = format!("remote_storage: {remote}\nccache: {}", exe.display());
        let client = Client::new(exe, env, logs, STEP_TIMEOUT, log_file, "ccache log", context);
        std::fs::write(&config, "").expect("write empty ccache config");
        Ccache {
            client,
            gcc,
            remote: remote.to_string(),
        }
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
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let remote_url = self.remote.split('|').next().unwrap_or_default().to_string();
        log.lines()
            .filter_map(|line| {
                let rest = &line[line.find("] Stored ")? + "] Stored ".len()..];
                let (key, place) = rest.split_once(" in ")?;
                place.starts_with(&remote_url).then(|| key.to_string())
            })
            .collect()
    }
}

/// `$<env>` if set, else `name` on `PATH`; a missing tool fails the test.
fn find_tool(env: &str, name: &str) -> PathBuf {
    common::process::find_tool(env, name, None).unwrap_or_else(|| {
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
