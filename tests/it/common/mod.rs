//! Test harness: a real hearth server on `127.0.0.1:0` with a temp data dir and a fresh
//! database per test — an SQLite file, or a uniquely named PostgreSQL database on the server
//! named by `HEARTH_TEST_POSTGRES_URL` (default: the local one at 127.0.0.1:5432).
#![allow(dead_code)]

pub mod postgres;
pub mod process;
pub mod s3;
pub mod sccache;

use hearth::config::{Config, ConfigLayer};
use hearth::server::{start, RunningServer};
use sqlx::Connection;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use tempfile::TempDir;

/// Which metadata database a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("HEARTH_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database made for one test, dropped by [`TestDb::drop_database`].
pub struct TestDb {
    pub url: String,
    postgres_name: Option<String>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestDb {
    /// A fresh, empty database of kind `db` (SQLite files go into `dir`).
    pub async fn create(db: Db, dir: &Path) -> TestDb {
        match db {
            Db::Sqlite => TestDb {
                url: format!("sqlite://{}", dir.join("hearth.db").display()),
                postgres_name: None,
            },
            Db::Postgres => {
                let name = format!(
                    "hearth_test_{}_{}_{:08x}",
                    std::process::id(),
                    COUNTER.fetch_add(1, Ordering::Relaxed),
                    rand::random::<u32>()
                );
                let admin = postgres_admin_url();
                let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
                    panic!(
                        "PostgreSQL is required for this test but {admin} is unreachable ({e}); \
                         run ./scripts/test.sh, which starts it, or set HEARTH_TEST_POSTGRES_URL"
                    )
                });
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let mut url = url::Url::parse(&admin).expect("admin url");
                url.set_path(&name);
                TestDb {
                    url: url.to_string(),
                    postgres_name: Some(name),
                }
            }
        }
    }

    /// Drops the PostgreSQL database (SQLite files go with the temp dir).
    pub async fn drop_database(&self) {
        if let Some(name) = &self.postgres_name {
            if let Ok(mut conn) = sqlx::PgConnection::connect(&postgres_admin_url()).await {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await;
            }
        }
    }
}

/// A running server and everything it owns.
pub struct TestServer {
    pub server: Option<RunningServer>,
    pub base: String,
    pub config: Config,
    pub db: TestDb,
    pub dir: TempDir,
    pub client: reqwest::Client,
}

/// Configuration for a test server on port 0 in `dir`, with tweaks applied.
pub fn test_config(dir: &Path, database_url: &str, tweak: impl FnOnce(&mut Config)) -> Config {
    let layer = ConfigLayer {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: Some(dir.join("data")),
        database_url: Some(database_url.to_string()),
        ..Default::default()
    };
    let mut config = Config::from_layers(&[layer]).expect("test config");
    config.db_max_connections = 4;
    tweak(&mut config);
    config
}

/// Starts a server with the default test configuration.
pub async fn start_server(db: Db) -> TestServer {
    start_server_with(db, |_| {}).await
}

/// Starts a server after applying `tweak` to its configuration.
pub async fn start_server_with(db: Db, tweak: impl FnOnce(&mut Config)) -> TestServer {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = TestDb::create(db, dir.path()).await;
    let config = test_config(dir.path(), &db.url, tweak);
    let server = launch(&config).await;
    TestServer {
        base: format!("http://{}", server.addr()),
        server: Some(server),
        config,
        db,
        dir,
        client: reqwest::Client::builder().no_proxy().build().unwrap(),
    }
}

/// Starts a server on a database that already exists at `url` (a private PostgreSQL, say).
pub async fn start_server_on(url: &str, tweak: impl FnOnce(&mut Config)) -> TestServer {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = test_config(dir.path(), url, tweak);
    let server = launch(&config).await;
    TestServer {
        base: format!("http://{}", server.addr()),
        server: Some(server),
        config,
        db: TestDb {
            url: url.to_string(),
            postgres_name: None,
        },
        dir,
        client: reqwest::Client::builder().no_proxy().build().unwrap(),
    }
}

async fn launch(config: &Config) -> RunningServer {
    let listener = tokio::net::TcpListener::bind(config.listen).await.expect("bind");
    start(config, listener).await.expect("server starts")
}

impl TestServer {
    /// Full URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// What `/metrics` serves now.
    pub async fn metrics(&self) -> String {
        let response = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        response.text().await.expect("metrics text")
    }

    pub fn running(&self) -> &RunningServer {
        self.server.as_ref().expect("server running")
    }

    /// The metadata store the server uses.
    pub fn meta(&self) -> &hearth::meta::MetaStore {
        self.running().state().cache.meta()
    }

    /// Directory of the local blob store.
    pub fn blob_dir(&self) -> std::path::PathBuf {
        self.config.data_dir.join("blobs")
    }

    /// Every blob file currently stored.
    pub fn blob_files(&self) -> Vec<std::path::PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for entry in entries.flatten() {
                    let path = entry.path();
                    if path.is_dir() {
                        walk(&path, out);
                    } else {
                        out.push(path);
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.blob_dir(), &mut out);
        out.sort();
        out
    }

    /// Upload temp files left in the temp dir, in any process's session (lock files and
    /// session directories themselves are not uploads).
    pub fn temp_files(&self) -> Vec<std::path::PathBuf> {
        temp_files_in(&self.config.data_dir)
    }

    /// Stops gracefully (flushing statistics) and starts again on the same data and database.
    pub async fn restart(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await.expect("clean stop");
        }
        let server = launch(&self.config).await;
        self.base = format!("http://{}", server.addr());
        self.server = Some(server);
    }

    /// Stops gracefully and drops the test database.
    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await.expect("clean stop");
        }
        self.db.drop_database().await;
    }

    /// Sends a request with an arbitrary method (PROPFIND, MKCOL, …).
    pub fn request(&self, method: &str, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), self.url(path))
    }
}

/// Runs each listed `async fn name(db: Db)` once against SQLite and once against PostgreSQL,
/// as `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Db::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Db::Postgres).await
                }
            )*
        }
    };
}

/// A raw HTTP/1.1 exchange over TCP, for requests a well-behaved client library would refuse
/// to send (dot segments, broken bodies). Returns the status code and the raw response.
pub async fn raw_http(addr: std::net::SocketAddr, request: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

/// Upload temp files under `data_dir/tmp`, in any session.
pub fn temp_files_in(data_dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![data_dir.join("tmp")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if !path.to_string_lossy().ends_with(".lock") {
                found.push(path);
            }
        }
    }
    found
}

/// The content address hearth gives `bytes`.
pub fn blake3_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// The value of one sample line `name{labels} value` in Prometheus text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// An entry as sccache 0.19 writes it (`src/cache/cache_io.rs`): zip 0.6, members stored,
/// each a zstd frame, with their Unix mode.
pub fn sccache_entry(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, content) in members {
        let options = zip::write::FileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .unix_permissions(0o644);
        zip.start_file(*name, options).unwrap();
        std::io::Write::write_all(&mut zip, &zstd::bulk::compress(content, 3).unwrap()).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// Deterministic bytes that zstd cannot shrink (like sccache's already-compressed entries).
pub fn incompressible(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Deterministic bytes that compress well (like raw object files).
pub fn compressible(len: usize, seed: u64) -> Vec<u8> {
    let text = format!("mov rax, [rbp-{seed}]\ncall _ZN4core3fmt5write17h{seed:016x}E\n");
    text.as_bytes().iter().cycle().take(len).copied().collect()
}

/// Polls `check` every 50 ms until it returns true or `secs` pass.
pub async fn eventually<F, Fut>(secs: u64, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if check().await {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The metadata store at `url`, opened from outside the server (one connection).
pub async fn open_meta(url: &str) -> hearth::meta::MetaStore {
    let pool = hearth::meta::PoolSettings {
        max_connections: 1,
        acquire_timeout: std::time::Duration::from_secs(5),
    };
    hearth::meta::MetaStore::connect(url, &pool)
        .await
        .expect("open the metadata store")
}

/// The status of a PUT of `body` at `path`.
pub async fn put_status(t: &TestServer, path: &str, body: impl Into<reqwest::Body>) -> u16 {
    t.client
        .put(t.url(path))
        .body(body)
        .send()
        .await
        .expect("PUT")
        .status()
        .as_u16()
}

/// The body of a GET of `path`, whatever its status.
pub async fn get_body(t: &TestServer, path: &str) -> Vec<u8> {
    let response = t.client.get(t.url(path)).send().await.expect("GET");
    response.bytes().await.expect("GET's body").to_vec()
}

/// Sum of the statistics counters hearth has written for `namespace`.
pub async fn stats_total(meta: &hearth::meta::MetaStore, namespace: &str) -> hearth::meta::Counters {
    use hearth::meta::MetadataStore;
    let mut total = hearth::meta::Counters::default();
    for row in meta.stats(Some(namespace), 0).await.expect("stats") {
        total.add(&row.counters);
    }
    total
}
