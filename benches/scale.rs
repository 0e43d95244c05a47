//! How hearth's costs grow with the number of entries (a benchmark, not a test; `harness =
//! false`). `scripts/bench-scale.sh` builds hearth and runs this once per database.
//!
//! ```text
//! cargo bench --bench scale -- --hearth target/release/hearth --data-dir DIR \
//!     [--database-url URL] [--checkpoints 10000,100000,1000000] [--evict-percent 10]
//! ```
//!
//! It starts `hearth serve` itself (no memory cache, unsynced writes, no periodic GC) and fills
//! it through HTTP PUTs of unique small objects (0.5-2 KiB, like C/C++ object files in a
//! compiler cache), 32 at a time. At each checkpoint it measures, with the fill paused:
//! GET hits on random keys of all N entries (one at a time, so latency is the server's) and
//! misses; a `/metrics` scrape (checked exact against N), `hearth stats`, and `hearth gc` with
//! nothing to evict, each with GETs running beside it (their slowest answer is what a build
//! sees during background work); database and WAL size; the server's RSS and CPU per GET.
//! After the last checkpoint: a restart (until the first hit), and eviction of
//! `--evict-percent` of the entries (dry run, then the real run). The table gives each
//! figure per checkpoint and its growth from the first checkpoint to the last; `--json FILE`
//! appends every figure as a JSON line. On PostgreSQL every fill is followed by
//! `VACUUM ANALYZE`.
//!
//! Two ways to fill (`--fill`): `http`, every entry a PUT; `bulk` (the default), with the
//! server stopped, every entry but the last 10,000 of each stretch through hearth's cache
//! core in this process (`Cache::put`, the call an HTTP PUT ends in: the blob staged, hashed
//! and published, the entry committed, the write statistics flushed), several times faster;
//! the last 10,000 always go through HTTP, and they (but their first 2,000, a warm-up after
//! the server's restart) give the PUT latencies. Every latency
//! figure comes from HTTP; the table names the fill each rate came from.

use clap::Parser;
use reqwest::Client;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(name = "scale", about = "hearth's costs as the number of entries grows")]
struct Args {
    /// The hearth binary (a release build).
    #[arg(long)]
    hearth: PathBuf,
    /// Data directory (created; its blobs and SQLite database are what is measured).
    #[arg(long)]
    data_dir: PathBuf,
    /// Metadata database; default: SQLite in the data directory.
    #[arg(long)]
    database_url: Option<String>,
    /// Entry counts at which to measure, ascending.
    #[arg(long, value_delimiter = ',', default_values = ["10000", "100000", "1000000"])]
    checkpoints: Vec<u64>,
    /// Share of the entries the eviction run removes at the end.
    #[arg(long, default_value_t = 10)]
    evict_percent: u64,
    /// GETs per latency measurement.
    #[arg(long, default_value_t = 3000)]
    gets: u64,
    /// Concurrent uploads while filling.
    #[arg(long, default_value_t = 32)]
    fill_concurrency: u64,
    /// Name of this run in the table (e.g. the database).
    #[arg(long, default_value = "hearth")]
    name: String,
    /// Also write every figure as a JSON line to this file (appended), for comparing runs.
    #[arg(long)]
    json: Option<PathBuf>,
    /// How entries get in: `bulk` (through the cache core in this process, then the last
    /// 10,000 of each stretch through HTTP) or `http` (every one a PUT).
    #[arg(long, value_enum, default_value_t = FillMode::Bulk)]
    fill: FillMode,
    /// Leave the 65,536 fan-out directories of the blob store to the first upload into each,
    /// as on a new server. By default they are made before the fill: the first upload into a
    /// directory also syncs its parent, which nine in ten uploads of the first 10,000 pay and
    /// none at 10^6, a cost of a young store that hid how PUTs grow with its size.
    #[arg(long)]
    fresh_fan_out: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum FillMode {
    Bulk,
    Http,
}

/// Uploads at the end of each stretch that go through HTTP whatever the fill: the PUT
/// latencies at this size.
const HTTP_TAIL: u64 = 10_000;

/// The first uploads of each HTTP stretch, left out of its PUT latencies: the server was
/// (re)started just before, and at 10^4 its database and WAL were created just before, so the
/// first seconds measure a start, not a size.
const PUT_WARM_UP: usize = 2_000;

const NAMESPACE: &str = "scale";

/// The object stored under key number `i`: 0.5-2 KiB, unique.
fn body(i: u64) -> Vec<u8> {
    let len = 512 + (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 53) as usize % 1536;
    let mut x = i.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// sccache-like key of entry `i`.
fn key(i: u64) -> String {
    let h = blake3::hash(&i.to_le_bytes()).to_hex();
    format!("{}/{}/{}/{h}", &h[0..1], &h[1..2], &h[2..3])
}

struct Server {
    args: Vec<String>,
    child: Option<Child>,
    base: String,
    pid: u32,
}

fn hearth(args: &Args, subcommand: &str) -> Command {
    let mut cmd = Command::new(&args.hearth);
    cmd.arg(subcommand).arg("--data-dir").arg(&args.data_dir);
    if let Some(url) = &args.database_url {
        cmd.arg("--database-url").arg(url);
    }
    cmd
}

impl Server {
    async fn start(args: &Args, client: &Client) -> (Server, Duration) {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let extra: Vec<String> = [
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--sync-writes",
            "false",
            "--memory-cache-size",
            "0",
            "--gc-interval",
            "24h",
            "--max-size",
            "1TiB",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut server = Server {
            args: extra,
            child: None,
            base: format!("http://127.0.0.1:{port}"),
            pid: 0,
        };
        let took = server.spawn(args, client).await;
        (server, took)
    }

    async fn spawn(&mut self, args: &Args, client: &Client) -> Duration {
        let started = Instant::now();
        // Appended across restarts; SCALE_RUST_LOG=hearth=debug says more (the checkpoints).
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(args.data_dir.with_extension("log"))
            .unwrap();
        let child = hearth(args, "serve")
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("SCALE_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start hearth");
        self.pid = child.id();
        self.child = Some(child);
        loop {
            if let Ok(r) = client.get(format!("{}/readyz", self.base)).send().await {
                if r.status() == 200 {
                    return started.elapsed();
                }
            }
            assert!(started.elapsed() < Duration::from_secs(600), "hearth did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }

    fn url(&self, i: u64) -> String {
        format!("{}/{NAMESPACE}/{}", self.base, key(i))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The share of `sorted` above `limit`.
fn over(sorted: &[f64], limit: f64) -> f64 {
    sorted.iter().filter(|&&v| v > limit).count() as f64 / sorted.len().max(1) as f64
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// What a fill measured.
struct Filled {
    /// Entries per second through the cache core (bulk fill only).
    bulk_rate: Option<f64>,
    /// Entries per second through HTTP PUTs.
    http_rate: f64,
    put_p50: f64,
    put_p99: f64,
    /// The largest the SQLite WAL was seen during the fill (MiB; sampled every 100 ms).
    largest_wal: f64,
    /// A 4 KiB write and sync beside the HTTP uploads.
    syncs: Syncs,
}

/// Fills entries `from..to`: through the cache core in this process (bulk, the server
/// stopped meanwhile) up to the last [`HTTP_TAIL`], then through HTTP.
async fn fill(server: &mut Server, client: &Client, args: &Args, from: u64, to: u64) -> Filled {
    let done = Arc::new(AtomicBool::new(false));
    let wal_watch = {
        let (done, wal) = (done.clone(), args.data_dir.join("hearth.db-wal"));
        tokio::spawn(async move {
            let mut largest = 0f64;
            while !done.load(Ordering::Relaxed) {
                largest = largest.max(file_mib(wal.clone()));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            largest.max(file_mib(wal))
        })
    };
    let http_from = match args.fill {
        FillMode::Http => from,
        FillMode::Bulk => to.saturating_sub(HTTP_TAIL).max(from),
    };
    let bulk_rate = if http_from > from {
        server.stop();
        let rate = bulk_fill(args, from, http_from).await;
        server.spawn(args, client).await;
        Some(rate)
    } else {
        None
    };
    let probe = SyncProbe::start(&args.data_dir);
    let (http_rate, mut latencies) = http_fill(server, client, args, http_from, to).await;
    let syncs = probe.finish();
    done.store(true, Ordering::Relaxed);
    // The last 10,000 uploads but their first PUT_WARM_UP: the latency at this size, not
    // averaged over the fill, and not that of a server just (re)started.
    let tail = latencies
        .len()
        .saturating_sub(HTTP_TAIL as usize)
        .max(PUT_WARM_UP.min(latencies.len()));
    let mut recent = latencies.split_off(tail);
    recent.sort_by(f64::total_cmp);
    Filled {
        bulk_rate,
        http_rate,
        put_p50: percentile(&recent, 0.5),
        put_p99: percentile(&recent, 0.99),
        largest_wal: wal_watch.await.unwrap_or(f64::NAN),
        syncs,
    }
}

/// Stores entries `from..to` through hearth's cache core, as the server would (its
/// configuration: unsynced writes, no memory cache), `fill_concurrency` at a time, and
/// flushes the write statistics. Returns entries per second.
async fn bulk_fill(args: &Args, from: u64, to: u64) -> f64 {
    use hearth::cache::{Cache, Caller, WriteSettings};
    use hearth::config::{Config, ConfigLayer};
    use hearth::meta::MetadataStore;
    use hearth::path::{CacheKey, Namespace};
    let layer = ConfigLayer {
        data_dir: Some(args.data_dir.clone()),
        database_url: args.database_url.clone(),
        sync_writes: Some(false),
        memory_cache_size: Some(hearth::size::ByteSize(0)),
        ..ConfigLayer::default()
    };
    let config = Config::from_layers(&[layer]).expect("configuration");
    let meta = hearth::server::open_metadata(&config).await.expect("open the database");
    let blobs = hearth::server::open_blobs(&config).await.expect("open the blob store");
    let stats = hearth::stats::StatsRecorder::new();
    let write = WriteSettings {
        max_body_size: config.max_body_size.0,
        compression_level: config.compression_level,
        memory_cache_bytes: 0,
    };
    let cache = Arc::new(Cache::new(meta.clone(), blobs, stats.clone(), write));
    let namespace = Namespace::new(NAMESPACE).unwrap();
    let next = Arc::new(AtomicU64::new(from));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.fill_concurrency)
        .map(|_| {
            let (cache, next, namespace) = (cache.clone(), next.clone(), namespace.clone());
            tokio::spawn(async move {
                let caller = Caller::anonymous();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= to {
                        return;
                    }
                    let key = CacheKey::new(&key(i)).unwrap();
                    let chunk = Ok::<_, std::io::Error>(bytes::Bytes::from(body(i)));
                    let stored = cache
                        .put(&namespace, &key, futures_util::stream::iter([chunk]), &caller, true)
                        .await;
                    assert!(stored.is_ok(), "bulk put {i}: {:?}", stored.err());
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    stats.flush(&meta).await.expect("flush the write statistics");
    let rate = (to - from) as f64 / started.elapsed().as_secs_f64();
    meta.close().await;
    rate
}

/// Fills entries `from..to` through HTTP PUTs, `fill_concurrency` at a time; returns entries
/// per second and every PUT's latency (ms) in the order they finished. With
/// `SCALE_PUT_TRACE=FILE`, appends each PUT's finish (s since the stretch began) and latency
/// (ms) to FILE, to see when the slow ones came.
async fn http_fill(server: &Server, client: &Client, args: &Args, from: u64, to: u64) -> (f64, Vec<f64>) {
    let next = Arc::new(AtomicU64::new(from));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.fill_concurrency)
        .map(|_| {
            let (next, client, base) = (next.clone(), client.clone(), server.base.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= to {
                        return latencies;
                    }
                    let took = timed_put(&client, &base, i).await;
                    latencies.push((started.elapsed().as_secs_f64(), took));
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    let rate = (to - from) as f64 / started.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    if let Some(trace) = std::env::var_os("SCALE_PUT_TRACE") {
        use std::io::Write;
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(trace)
            .unwrap();
        for (at, took) in &all {
            writeln!(out, "{to} {at:.4} {took:.3}").unwrap();
        }
    }
    (rate, all.into_iter().map(|(_, took)| took).collect())
}

/// PUTs entry `i` (it must be stored: 201); returns how long it took (ms).
async fn timed_put(client: &Client, base: &str, i: u64) -> f64 {
    let t = Instant::now();
    let status = client
        .put(format!("{base}/{NAMESPACE}/{}", key(i)))
        .body(body(i))
        .send()
        .await
        .map(|r| r.status().as_u16());
    assert!(matches!(status, Ok(201)), "PUT {i}: {status:?}");
    t.elapsed().as_secs_f64() * 1000.0
}

/// On PostgreSQL, `VACUUM ANALYZE` after a fill: a bulk insert leaves the planner statistics
/// and the visibility map behind until autovacuum catches up, which a long-lived server's
/// tables would have had; the figures are those of a vacuumed database.
fn vacuum_analyze(args: &Args) {
    if let Some(url) = args.database_url.as_deref().filter(|u| u.starts_with("postgres")) {
        let done = Command::new("psql").arg(url).args(["-qc", "VACUUM ANALYZE"]).status();
        assert!(done.is_ok_and(|s| s.success()), "VACUUM ANALYZE failed");
    }
}

/// GET latencies (ms, sorted) of `count` requests one at a time: random existing keys below
/// `n`, or keys never written.
async fn gets(server: &Server, client: &Client, n: u64, count: u64, hits: bool, stop: Option<&AtomicBool>) -> Vec<f64> {
    let mut latencies = Vec::new();
    let mut x: u64 = 0x1234_5678 ^ n;
    for j in 0..count {
        if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            break;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let i = if hits { x % n } else { u64::MAX - j };
        let t = Instant::now();
        let response = client.get(server.url(i)).send().await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap();
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
        if hits {
            assert_eq!(status, 200, "GET {i}");
            assert_eq!(bytes.len(), body(i).len(), "GET {i}");
        } else {
            assert_eq!(status, 404);
        }
    }
    latencies.sort_by(f64::total_cmp);
    latencies
}

/// Runs `work` while GET hits go on one at a time; returns its duration and the slowest GET.
async fn beside_gets<F: std::future::Future<Output = ()>>(
    server: &Server,
    client: &Client,
    n: u64,
    work: F,
) -> (Duration, f64) {
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let reads = gets(server, client, n, u64::MAX, true, Some(&stop));
    let work = async {
        work.await;
        let took = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        took
    };
    let (latencies, took) = tokio::join!(reads, work);
    (took, latencies.last().copied().unwrap_or(f64::NAN))
}

/// The blob store's fan-out directories, `xx/yy` under `blobs`, as a store in use has them.
fn make_fan_out(blobs: &std::path::Path) {
    for high in 0..=255u8 {
        for low in 0..=255u8 {
            std::fs::create_dir_all(blobs.join(format!("{high:02x}")).join(format!("{low:02x}"))).unwrap();
        }
    }
    Command::new("sync").status().unwrap();
}

/// What a sync costs on the data directory's disk while something else runs: a thread
/// rewrites one 4 KiB page of a file and syncs it every 10 ms, by turns with `fsync` (what
/// SQLite as built here calls for its WAL and database file: on ext4 it commits the
/// filesystem's journal, with every file the uploads created since the last commit) and with
/// `fdatasync` (which skips the journal when only the modification time changed). It is the
/// floor under anything that must sync while uploads run: the checkpointer's paused pass
/// syncs twice.
struct SyncProbe {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Syncs>,
}

/// Latencies (ms, sorted) of a page's write and sync.
#[derive(Default)]
struct Syncs {
    fsync: Vec<f64>,
    fdatasync: Vec<f64>,
}

impl SyncProbe {
    fn start(dir: &std::path::Path) -> SyncProbe {
        use std::os::unix::fs::FileExt;
        let stop = Arc::new(AtomicBool::new(false));
        let path = dir.join("sync-probe");
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            let mut page = vec![0u8; 4096];
            let mut syncs = Syncs::default();
            while !stopped.load(Ordering::Relaxed) {
                for data_only in [false, true] {
                    page[0] = page[0].wrapping_add(1);
                    let t = Instant::now();
                    file.write_all_at(&page, 0).unwrap();
                    if data_only {
                        file.sync_data().unwrap();
                        syncs.fdatasync.push(t.elapsed().as_secs_f64() * 1000.0);
                    } else {
                        file.sync_all().unwrap();
                        syncs.fsync.push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            let _ = std::fs::remove_file(&path);
            syncs.fsync.sort_by(f64::total_cmp);
            syncs.fdatasync.sort_by(f64::total_cmp);
            syncs
        });
        SyncProbe { stop, thread }
    }

    fn finish(self) -> Syncs {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    // utime and stime: fields 14 and 15, the 12th and 13th after the command name.
    fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn file_mib(path: PathBuf) -> f64 {
    std::fs::metadata(path).map_or(0.0, |m| m.len() as f64 / (1 << 20) as f64)
}

/// Database size in MiB: the SQLite file, or PostgreSQL's own figure (through psql).
fn database_mib(args: &Args) -> f64 {
    match &args.database_url {
        Some(url) if url.starts_with("postgres") => Command::new("psql")
            .arg(url)
            .args(["-Atc", "SELECT pg_database_size(current_database())"])
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok())
            .map_or(f64::NAN, |b| b / (1 << 20) as f64),
        _ => file_mib(args.data_dir.join("hearth.db")),
    }
}

fn timed_command(mut cmd: Command) -> (Duration, String) {
    let started = Instant::now();
    let out = cmd.output().expect("run hearth");
    let took = started.elapsed();
    if !out.status.success() {
        // A command that gives up (a query past its timeout) is a finding: its time is what a
        // user waited, and the table says it failed.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let reason = stderr.lines().last().unwrap_or_default();
        eprintln!("FAILED after {:.1} s: {cmd:?}: {reason}", took.as_secs_f64());
    }
    (took, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// [`timed_command`] off the async task, so that GETs joined with it go on meanwhile (a
/// blocking wait inside the joined future would hold them for the command's whole run).
async fn run_command(cmd: Command) -> (Duration, String) {
    tokio::task::spawn_blocking(move || timed_command(cmd))
        .await
        .expect("command thread")
}

async fn scrape(server: &Server, client: &Client) -> (Duration, String) {
    let started = Instant::now();
    let text = client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    (started.elapsed(), text)
}

fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

type Table = BTreeMap<(usize, &'static str), Vec<f64>>;

fn record(table: &mut Table, order: &mut Vec<&'static str>, name: &'static str, value: f64) {
    if !order.contains(&name) {
        order.push(name);
    }
    let idx = order.iter().position(|n| *n == name).unwrap();
    table.entry((idx, name)).or_default().push(value);
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    std::fs::create_dir_all(&args.data_dir).unwrap();
    if !args.fresh_fan_out {
        make_fan_out(&args.data_dir.join("blobs"));
    }
    let client = Client::builder().no_proxy().pool_max_idle_per_host(64).build().unwrap();
    let (mut server, _) = Server::start(&args, &client).await;
    let mut table = Table::new();
    let mut order = Vec::new();
    let mut filled = 0;
    for &n in &args.checkpoints {
        let fill_result = fill(&mut server, &client, &args, filled, n).await;
        vacuum_analyze(&args);
        filled = n;
        eprintln!("{}: {n} entries", args.name);
        if args.fill == FillMode::Bulk {
            // None at a checkpoint reached by the HTTP tail alone: "–" in the table.
            record(
                &mut table,
                &mut order,
                "fill rate through the cache core (entries/s)",
                fill_result.bulk_rate.unwrap_or(f64::NAN),
            );
        }
        record(
            &mut table,
            &mut order,
            "fill rate through HTTP, c=32 (entries/s)",
            fill_result.http_rate,
        );
        record(&mut table, &mut order, "PUT p50, c=32 (ms)", fill_result.put_p50);
        record(&mut table, &mut order, "PUT p99, c=32 (ms)", fill_result.put_p99);
        record(
            &mut table,
            &mut order,
            "largest WAL during the fill (MiB)",
            fill_result.largest_wal,
        );
        for (name, latencies) in [
            ("4 KiB write+fsync beside the PUTs, p50 (ms)", &fill_result.syncs.fsync),
            (
                "4 KiB write+fdatasync beside the PUTs, p50 (ms)",
                &fill_result.syncs.fdatasync,
            ),
        ] {
            record(&mut table, &mut order, name, percentile(latencies, 0.5));
        }

        let cpu_before = cpu_ticks(server.pid);
        let hits = gets(&server, &client, n, args.gets, true, None).await;
        let cpu_ms = (cpu_ticks(server.pid) - cpu_before) as f64 * 10.0 / args.gets as f64;
        record(&mut table, &mut order, "GET hit p50, c=1 (ms)", percentile(&hits, 0.5));
        record(&mut table, &mut order, "GET hit p99 (ms)", percentile(&hits, 0.99));
        record(&mut table, &mut order, "GET hit max (ms)", percentile(&hits, 1.0));
        record(&mut table, &mut order, "server CPU per GET hit (ms)", cpu_ms);
        let misses = gets(&server, &client, n, args.gets / 3, false, None).await;
        record(&mut table, &mut order, "GET miss p50 (ms)", percentile(&misses, 0.5));
        record(&mut table, &mut order, "GET miss p99 (ms)", percentile(&misses, 0.99));
        record(&mut table, &mut order, "GET miss max (ms)", percentile(&misses, 1.0));

        let mut scrape_ms = Vec::new();
        let mut during = 0f64;
        let mut exact = 0;
        for _ in 0..5 {
            let mut text = String::new();
            let (took, slowest) = beside_gets(&server, &client, n, async {
                text = scrape(&server, &client).await.1;
            })
            .await;
            // Not asserted: a server whose totals query times out serves stale gauges, which
            // is a finding, not a reason to stop measuring.
            if gauge(&text, "hearth_entries") == Some(n as f64) {
                exact += 1;
            }
            scrape_ms.push(took.as_secs_f64() * 1000.0);
            during = during.max(slowest);
        }
        record(
            &mut table,
            &mut order,
            "scrapes with exact hearth_entries (of 5)",
            exact as f64,
        );
        scrape_ms.sort_by(f64::total_cmp);
        record(
            &mut table,
            &mut order,
            "/metrics scrape p50 of 5 (ms)",
            percentile(&scrape_ms, 0.5),
        );
        record(
            &mut table,
            &mut order,
            "/metrics scrape, slowest of 5 (ms)",
            percentile(&scrape_ms, 1.0),
        );
        let (stats, slowest) = beside_gets(&server, &client, n, async {
            run_command(hearth(&args, "stats")).await;
        })
        .await;
        during = during.max(slowest);
        record(&mut table, &mut order, "hearth stats (s)", stats.as_secs_f64());
        let (gc, slowest) = beside_gets(&server, &client, n, async {
            let mut gc = hearth(&args, "gc");
            gc.args(["--max-size", "1TiB"]);
            run_command(gc).await;
        })
        .await;
        during = during.max(slowest);
        record(
            &mut table,
            &mut order,
            "hearth gc, nothing to evict (s)",
            gc.as_secs_f64(),
        );
        record(
            &mut table,
            &mut order,
            "GET hit max beside scrape/stats/gc (ms)",
            during,
        );
        record(&mut table, &mut order, "database (MiB)", database_mib(&args));
        record(
            &mut table,
            &mut order,
            "WAL (MiB)",
            file_mib(args.data_dir.join("hearth.db-wal")),
        );
        record(&mut table, &mut order, "server RSS (MiB)", rss_mib(server.pid));
    }

    // Restart: until ready, then until the first hit.
    server.stop();
    let restart = server.spawn(&args, &client).await;
    let first = gets(&server, &client, filled, 1, true, None).await;
    let restart_s = restart.as_secs_f64() + first[0] / 1000.0;

    // Eviction: a budget that leaves (100 - evict_percent) % of the entries' stored bytes. The
    // bodies are random, so stored raw: their total is the bench's own sum, not a gauge (which
    // may be stale at this size).
    server.stop();
    let stored: u64 = (0..filled).map(|i| body(i).len() as u64).sum();
    let budget = format!("{}", stored * (100 - args.evict_percent) / 100);
    let mut dry = hearth(&args, "gc");
    dry.args(["--dry-run", "--format", "json", "--max-size", &budget]);
    let (dry_took, dry_report) = timed_command(dry);
    let mut real = hearth(&args, "gc");
    real.args(["--format", "json", "--max-size", &budget]);
    let (real_took, real_report) = timed_command(real);
    let evicted_entries = |report: &str| {
        serde_json::from_str::<serde_json::Value>(report)
            .ok()
            .and_then(|v| v["evicted_entries"].as_f64())
            .unwrap_or(f64::NAN)
    };
    let (dry_evicted, evicted) = (evicted_entries(&dry_report), evicted_entries(&real_report));
    server.spawn(&args, &client).await;
    let stored_after = serde_json::from_str::<serde_json::Value>(&real_report)
        .ok()
        .and_then(|v| v["stored_bytes_after"].as_f64())
        .unwrap_or(f64::NAN);
    let live = evict_in_the_server(&mut server, &client, &args, filled, stored, stored_after).await;

    if let Some(path) = &args.json {
        write_json(
            path,
            &args,
            &table,
            filled,
            restart_s,
            (evicted, dry_evicted),
            dry_took,
            real_took,
            &live,
        );
    }

    println!("\n{} — checkpoints in entries\n", args.name);
    let header: Vec<String> = args.checkpoints.iter().map(|n| format!("{n:>10}")).collect();
    println!("| {:<42} | {} | growth |", "", header.join(" | "));
    println!(
        "|{}|{}---------|",
        "-".repeat(44),
        "------------|".repeat(args.checkpoints.len())
    );
    for ((_, name), values) in &table {
        let cells: Vec<String> = values.iter().map(|v| format!("{:>10}", fmt(*v))).collect();
        let measured = || values.iter().filter(|v| !v.is_nan());
        let growth = measured().next_back().unwrap_or(&f64::NAN) / measured().next().unwrap_or(&f64::NAN);
        println!("| {name:<42} | {} | {:>6.2}× |", cells.join(" | "), growth);
    }
    println!();
    println!("restart until the first hit, at {filled} entries: {restart_s:.2} s");
    println!(
        "eviction to a budget of {} % of the stored bytes ({evicted} entries went, the dry run named \
         {dry_evicted}: GC evicts down to 85 % of a budget it exceeds): dry run {:.1} s, real run \
         {:.1} s = {:.0} entries/s",
        100 - args.evict_percent,
        dry_took.as_secs_f64(),
        real_took.as_secs_f64(),
        evicted / real_took.as_secs_f64()
    );
    println!(
        "eviction in the server beside uploads (c=32) and GETs (c=1): {:.0} entries in {:.1} s; \
         PUT p99 {:.1} ms, GET max {:.1} ms meanwhile",
        live.evicted, live.seconds, live.put_p99, live.get_max
    );
    for (sync, latencies) in [("fsync", &live.syncs.fsync), ("fdatasync", &live.syncs.fdatasync)] {
        println!(
            "  a 4 KiB write+{sync} meanwhile: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {:.0} % over 5 ms",
            percentile(latencies, 0.5),
            percentile(latencies, 0.99),
            percentile(latencies, 1.0),
            over(latencies, 5.0) * 100.0,
        );
    }
    for hold in &live.holds {
        println!(
            "  writer holds for {}: {:.0}, {:.0} over 10 ms, longest under {} s; held {:.1} s in all, \
             mean {:.2} ms, {:.1} over 10 ms per second held",
            hold.work,
            hold.count,
            hold.over_10ms,
            fmt(hold.longest_below),
            hold.seconds,
            hold.seconds / hold.count * 1e3,
            hold.over_10ms / hold.seconds,
        );
    }
}

/// What the server's own collector did while uploads and reads went on.
struct LiveEviction {
    evicted: f64,
    /// The collection's own duration (the server's gauge).
    seconds: f64,
    put_p99: f64,
    get_max: f64,
    holds: Vec<Holds>,
    /// A 4 KiB write and sync meanwhile.
    syncs: Syncs,
}

/// `hearth_db_writer_hold_seconds` of one kind of work, over the server's whole run.
struct Holds {
    work: &'static str,
    count: f64,
    over_10ms: f64,
    /// Upper bound of the lowest bucket that holds every observation.
    longest_below: f64,
    /// The holds' summed length: slow holds per second held compare kinds of work whose holds
    /// differ in number and length (does a longer hold meet more stalls than its length?).
    seconds: f64,
}

/// Restarts the server with a budget that makes its collector evict another `evict_percent`
/// of the filled entries, and keeps uploads (c=32, new keys) and GETs (c=1, hits or, once
/// evicted, misses) going until that collection has finished: eviction as a team's server
/// does it, beside its traffic. Reads the writer-hold histogram the server exports.
async fn evict_in_the_server(
    server: &mut Server,
    client: &Client,
    args: &Args,
    filled: u64,
    stored: u64,
    stored_after: f64,
) -> LiveEviction {
    let goal = stored_after - (stored * args.evict_percent / 100) as f64;
    let budget = (goal / hearth::gc::LOW_WATER).max(1.0) as u64;
    server.stop();
    let saved = server.args.clone();
    set_flag(&mut server.args, "--max-size", &budget.to_string());
    set_flag(&mut server.args, "--gc-interval", "2s");
    server.spawn(args, client).await;

    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(filled + 1_000_000));
    let uploads: Vec<_> = (0..args.fill_concurrency)
        .map(|_| {
            let (stop, next, client, base) = (stop.clone(), next.clone(), client.clone(), server.base.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    latencies.push(timed_put(&client, &base, i).await);
                }
                latencies
            })
        })
        .collect();
    let reads = {
        let (stop, client, base) = (stop.clone(), client.clone(), server.base.clone());
        tokio::spawn(async move {
            let mut slowest = 0f64;
            let mut x: u64 = 0x9e37_79b9 ^ filled;
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = x % filled;
                let t = Instant::now();
                let response = client
                    .get(format!("{base}/{NAMESPACE}/{}", key(i)))
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let bytes = response.bytes().await.unwrap();
                slowest = slowest.max(t.elapsed().as_secs_f64() * 1000.0);
                match status {
                    200 => assert_eq!(bytes.len(), body(i).len(), "GET {i}"),
                    404 => {}
                    other => panic!("GET {i}: {other}"),
                }
            }
            slowest
        })
    };
    let probe = SyncProbe::start(&args.data_dir);
    let started = Instant::now();
    let metrics = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let text = scrape(server, client).await.1;
        if gauge(&text, "hearth_gc_runs_total").unwrap_or(0.0) >= 1.0 {
            break text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "the server's collection did not finish"
        );
    };
    stop.store(true, Ordering::Relaxed);
    let syncs = probe.finish();
    let mut puts = Vec::new();
    for u in uploads {
        puts.extend(u.await.unwrap());
    }
    puts.sort_by(f64::total_cmp);
    let get_max = reads.await.unwrap();
    let holds = hearth::meta::Work::ALL
        .into_iter()
        .map(|work| writer_holds(&metrics, work.as_str()))
        .collect();
    server.stop();
    server.args = saved;
    server.spawn(args, client).await;
    LiveEviction {
        evicted: gauge(&metrics, "hearth_evicted_entries_total").unwrap_or(f64::NAN),
        seconds: gauge(&metrics, "hearth_gc_duration_seconds").unwrap_or(f64::NAN),
        put_p99: percentile(&puts, 0.99),
        get_max,
        holds,
        syncs,
    }
}

/// Replaces the value of `flag` in a server's arguments.
fn set_flag(server_args: &mut [String], flag: &str, value: &str) {
    let at = server_args.iter().position(|a| a == flag).expect("the flag is set");
    server_args[at + 1] = value.to_string();
}

/// The writer holds of `work` from the exported histogram.
fn writer_holds(metrics: &str, work: &'static str) -> Holds {
    let series = format!("hearth_db_writer_hold_seconds_bucket{{work=\"{work}\",le=\"");
    let buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix(&series))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            Some((le.parse().unwrap_or(f64::INFINITY), count.parse().ok()?))
        })
        .collect();
    let count = buckets.last().map_or(f64::NAN, |b| b.1);
    let within_10ms = buckets.iter().find(|b| b.0 >= 0.01).map_or(f64::NAN, |b| b.1);
    let sum = format!("hearth_db_writer_hold_seconds_sum{{work=\"{work}\"}} ");
    let seconds = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&sum)?.parse().ok())
        .unwrap_or(f64::NAN);
    Holds {
        work,
        count,
        over_10ms: count - within_10ms,
        longest_below: buckets.iter().find(|b| b.1 >= count).map_or(f64::NAN, |b| b.0),
        seconds,
    }
}

/// One JSON object per line: every figure at every checkpoint, then the restart and the
/// eviction.
#[allow(clippy::too_many_arguments)]
fn write_json(
    path: &std::path::Path,
    args: &Args,
    table: &Table,
    filled: u64,
    restart_s: f64,
    (evicted, dry_evicted): (f64, f64),
    dry: Duration,
    real: Duration,
    live: &LiveEviction,
) {
    use std::io::Write;
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let run = &args.name;
    for ((_, figure), values) in table {
        for (entries, value) in args.checkpoints.iter().zip(values) {
            let line = serde_json::json!({"run": run, "entries": entries, "figure": figure, "value": value});
            writeln!(out, "{line}").unwrap();
        }
    }
    let end = [
        ("restart until the first hit (s)", restart_s),
        ("entries evicted", evicted),
        ("entries the dry run would evict", dry_evicted),
        ("eviction dry run (s)", dry.as_secs_f64()),
        ("eviction real run (s)", real.as_secs_f64()),
        ("eviction (entries/s)", evicted / real.as_secs_f64()),
        ("eviction in the server: entries", live.evicted),
        ("eviction in the server (s)", live.seconds),
        ("PUT p99 beside the server's eviction (ms)", live.put_p99),
        ("GET max beside the server's eviction (ms)", live.get_max),
        (
            "fsync beside the server's eviction, p50 (ms)",
            percentile(&live.syncs.fsync, 0.5),
        ),
        (
            "fsync beside the server's eviction, p99 (ms)",
            percentile(&live.syncs.fsync, 0.99),
        ),
        (
            "fdatasync beside the server's eviction, p50 (ms)",
            percentile(&live.syncs.fdatasync, 0.5),
        ),
        (
            "fdatasync beside the server's eviction, p99 (ms)",
            percentile(&live.syncs.fdatasync, 0.99),
        ),
    ];
    let holds = live.holds.iter().flat_map(|h| {
        [
            (format!("writer holds for {}", h.work), h.count),
            (format!("writer holds for {} over 10 ms", h.work), h.over_10ms),
            (format!("longest writer hold for {} below (s)", h.work), h.longest_below),
            (format!("writer held for {} (s)", h.work), h.seconds),
        ]
    });
    let end = end.into_iter().map(|(f, v)| (f.to_string(), v)).chain(holds);
    for (figure, value) in end {
        let line = serde_json::json!({"run": run, "entries": filled, "figure": figure, "value": value});
        writeln!(out, "{line}").unwrap();
    }
}

fn fmt(v: f64) -> String {
    if v.is_nan() {
        "–".to_string()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}
