//! The `hearth` binary as operators use it: layered configuration, one-line failures with a
//! non-zero exit, migrations, and a real `serve` process stopped by SIGTERM.
use crate::common;
use common::get_body;
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn hearth() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hearth"));
    for (name, _) in std::env::vars() {
        if name.starts_with("HEARTH_") || name == "RUST_LOG" {
            cmd.env_remove(name);
        }
    }
    cmd
}

fn run(cmd: &mut Command) -> (Output, String, String) {
    let output = cmd.output().expect("run hearth");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    (output, stdout, stderr)
}

#[test]
fn print_config_shows_zero_config_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let (out, stdout, _) = run(hearth().arg("print-config").current_dir(dir.path()));
    assert!(out.status.success());
    let config: toml::Value = toml::from_str(&stdout).unwrap();
    assert_eq!(config["listen"].as_str(), Some("127.0.0.1:8080"));
    assert_eq!(config["data-dir"].as_str(), Some("./hearth-data"));
    assert_eq!(
        config["database-url"].as_str(),
        Some("sqlite://./hearth-data/hearth.db")
    );
}

#[test]
fn config_layers_file_then_env_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hearth.toml");
    std::fs::write(
        &file,
        "listen = \"0.0.0.0:9000\"\nmax-body-size = \"2GiB\"\ncompression-level = 5\nstats-flush-interval = \"30s\"\n",
    )
    .unwrap();
    let (out, stdout, stderr) = run(hearth()
        .args(["print-config", "--listen", "127.0.0.1:7000"])
        .env("HEARTH_CONFIG", &file)
        .env("HEARTH_LISTEN", "127.0.0.1:8000")
        .env("HEARTH_COMPRESSION_LEVEL", "7")
        .env("HEARTH_DATABASE_URL", "postgres://hearth:s3cr3t-pw@db.example/hearth"));
    assert!(out.status.success(), "{stderr}");
    let config: toml::Value = toml::from_str(&stdout).unwrap();
    assert_eq!(
        config["listen"].as_str(),
        Some("127.0.0.1:7000"),
        "flag beats env beats file"
    );
    assert_eq!(config["compression-level"].as_integer(), Some(7), "env beats file");
    assert_eq!(config["max-body-size"].as_str(), Some("2GiB"), "file beats default");
    assert_eq!(config["stats-flush-interval"].as_str(), Some("30s"));
    assert!(!stdout.contains("s3cr3t-pw"), "secret printed: {stdout}");
    assert_eq!(
        config["database-url"].as_str(),
        Some("postgres://hearth:***@db.example/hearth")
    );
}

/// Bad configuration: exit code 2 and exactly one line naming the problem.
#[test]
fn bad_config_fails_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, "lisen = \"127.0.0.1:1\"\n").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--config".into(), dir.path().join("missing.toml").display().to_string()],
            "cannot read",
        ),
        (vec!["--config".into(), unknown.display().to_string()], "lisen"),
        (vec!["--compression-level".into(), "42".into()], "compression-level"),
        (vec!["--database-url".into(), "mysql://x/y".into()], "database-url"),
    ];
    for (args, needle) in cases {
        let (out, _, stderr) = run(hearth().arg("serve").args(&args));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    let (out, _, stderr) = run(hearth().args(["serve", "--max-body-size", "lots"]));
    assert!(!out.status.success());
    assert!(stderr.contains("invalid size"), "{stderr}");
}

#[test]
fn port_in_use_fails_with_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let (out, _, stderr) = run(hearth()
        .args(["serve", "--listen", &addr, "--data-dir"])
        .arg(dir.path()));
    assert!(!out.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&format!("cannot listen on {addr}")), "{stderr}");
}

#[test]
fn unreachable_database_fails_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1.
    let (out, _, stderr) = run(hearth()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            "postgres://hearth@127.0.0.1:1/hearth",
        ])
        .arg("--data-dir")
        .arg(dir.path()));
    assert!(!out.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("connecting to PostgreSQL"), "{stderr}");
}

#[tokio::test]
async fn migrate_is_idempotent_on_both_databases() {
    for db in [common::Db::Sqlite, common::Db::Postgres] {
        let dir = tempfile::tempdir().unwrap();
        let test_db = common::TestDb::create(db, dir.path()).await;
        for _ in 0..2 {
            let (out, _, stderr) = run(hearth().args(["migrate", "--database-url", &test_db.url]));
            assert!(out.status.success(), "{db:?}: {stderr}");
            assert!(stderr.contains("up to date"), "{stderr}");
        }
        test_db.drop_database().await;
    }
}

/// The real process: logs its address, serves, and on SIGTERM exits 0 after flushing stats.
#[tokio::test]
async fn serve_then_sigterm_flushes_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = hearth()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--stats-flush-interval",
            "1h",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let logs = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = addr_tx.send(rest.split_whitespace().next().unwrap_or_default().to_string());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("hearth logged its address");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = format!("http://{addr}");
    assert_eq!(
        client
            .put(format!("{base}/ns/k"))
            .body("v")
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    assert_eq!(client.get(format!("{base}/ns/k")).send().await.unwrap().status(), 200);
    assert_eq!(
        client.get(format!("{base}/ns/missing")).send().await.unwrap().status(),
        404
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    let logs = logs.join().unwrap();
    assert!(status.success(), "exit {status:?}: {logs}");
    assert!(logs.contains("shutting down"), "{logs}");

    let url = format!("sqlite://{}", dir.path().join("data/hearth.db").display());
    let meta = common::open_meta(&url).await;
    let c = common::stats_total(&meta, "ns").await;
    assert_eq!((c.hits, c.misses, c.writes), (1, 1, 1), "statistics lost at SIGTERM");
}

/// The commented example in deploy/ is a valid configuration and documents every default.
#[test]
fn shipped_example_config_is_valid_and_complete() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/hearth.toml");
    let dir = tempfile::tempdir().unwrap();
    let (out, with_example, stderr) = run(hearth()
        .args(["print-config", "--config", example])
        .current_dir(dir.path()));
    assert!(out.status.success(), "{stderr}");
    let (_, defaults, _) = run(hearth().arg("print-config").current_dir(dir.path()));
    assert_eq!(with_example, defaults, "deploy/hearth.toml drifted from the defaults");
    let documented = std::fs::read_to_string(example).unwrap();
    let keys: toml::Table = toml::from_str(&defaults).unwrap();
    for key in keys.keys() {
        assert!(
            documented.contains(&format!("{key} =")),
            "deploy/hearth.toml does not document {key}"
        );
    }
}

/// `hearth stats` reads the database directly (a server may be running or not).
#[tokio::test]
async fn stats_prints_json_and_table() {
    for db in [common::Db::Sqlite, common::Db::Postgres] {
        let t = common::start_server_with(db, |c| c.stats_flush_interval = Duration::from_secs(3600)).await;
        t.client
            .put(t.url("/web/k"))
            .body(vec![7u8; 5000])
            .send()
            .await
            .unwrap();
        get_body(&t, "/web/k").await;
        t.client.get(t.url("/web/missing")).send().await.unwrap();
        t.client.get(t.url("/api/missing")).send().await.unwrap();
        let url = t.db.url.clone();
        let server = t.server.as_ref().unwrap();
        server.shutdown_token().cancel(); // graceful: flushes the statistics
        let mut t = t;
        t.server.take().unwrap().wait().await.unwrap();

        let (out, stdout, stderr) =
            run(hearth().args(["stats", "--since", "2h", "--format", "json", "--database-url", &url]));
        assert!(out.status.success(), "{stderr}");
        let reports: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let web = reports
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["namespace"] == "web")
            .expect("web");
        for field in [
            "namespace",
            "hits",
            "misses",
            "writes",
            "bytes_served",
            "bytes_received",
            "hit_rate",
        ] {
            assert!(web.get(field).is_some(), "{field} missing: {web}");
        }
        assert_eq!(
            (web["hits"].as_i64(), web["misses"].as_i64(), web["writes"].as_i64()),
            (Some(1), Some(1), Some(1))
        );
        assert_eq!(
            (web["bytes_served"].as_i64(), web["bytes_received"].as_i64()),
            (Some(5000), Some(5000))
        );
        assert_eq!(web["hit_rate"].as_f64(), Some(0.5));

        let (out, stdout, _) = run(hearth().args(["stats", "--namespace", "api", "--database-url", &url]));
        assert!(out.status.success());
        assert!(stdout.starts_with("NAMESPACE"), "{stdout}");
        assert!(stdout.contains("HIT RATE"));
        assert!(stdout.lines().any(|l| l.starts_with("api ")), "{stdout}");
        assert!(!stdout.lines().any(|l| l.starts_with("web ")), "{stdout}");
        t.db.drop_database().await;
    }
}

/// The probe container images use in their HEALTHCHECK.
#[tokio::test]
async fn healthcheck_probes_readiness() {
    let t = common::start_server(common::Db::Sqlite).await;
    let url = t.url("/readyz");
    let ok = tokio::task::spawn_blocking(move || run(hearth().args(["healthcheck", "--url", &url])))
        .await
        .unwrap();
    assert!(ok.0.status.success(), "{}", ok.2);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (out, _, stderr) = run(hearth().args(["healthcheck", "--url", &format!("http://{closed}/readyz")]));
    assert!(!out.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("unhealthy"), "{stderr}");
    t.stop().await;
}
