//! Load generator for a running hearth (a benchmark, not a test; `harness = false`).
//!
//! ```text
//! cargo bench --bench loadgen -- --url http://127.0.0.1:PORT/<namespace>/ \
//!     [--concurrency 1,16,64] [--sizes 64KiB,1MiB,mix] [--content incompressible,compressible] \
//!     [--workloads put,get-hit,get-miss,mixed] [--duration 5s] [--ops N] [--server-pid PID] [--json]
//! ```
//!
//! Every (size, content, workload, concurrency) cell is measured separately: N tokio tasks
//! share one keep-alive `reqwest::Client` and issue requests back to back until the duration
//! (or the `--ops` cap) is reached. Keys are laid out like sccache's, `a/b/c/<64 hex>`, and
//! every key gets distinct content (a 32-byte key-derived prefix over a shared body), so the
//! server never dedups. GET hits are checked byte for byte, misses must be 404, PUTs 201 or
//! 204; anything else is counted as an error, reported, and makes the exit status non-zero.
//! `scripts/bench.sh` builds and starts a server and runs this against it.

use bytes::Bytes;
use clap::{CommandFactory, Parser, ValueEnum};
use hearth::size::ByteSize;
use reqwest::header::CONTENT_LENGTH;
use reqwest::{Body, Client, StatusCode};
use serde_json::json;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "Load generator for a running hearth server (PUT / GET-hit / GET-miss / mixed)",
    args_override_self = true
)]
struct Args {
    /// Namespace URL the keys are written under, e.g. http://127.0.0.1:8080/bench/ (required).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Concurrent requests (one tokio task each), comma-separated.
    #[arg(long, value_delimiter = ',', default_values = ["1", "16", "64"])]
    concurrency: Vec<usize>,
    /// Artifact sizes, comma-separated: byte sizes (64KiB, 1MiB, 4096) or `mix` (weighted
    /// buckets from 1 KiB to 32 MiB, median 64 KiB, mean ~400 KiB).
    #[arg(long, value_delimiter = ',', default_values = ["64KiB", "1MiB", "mix"])]
    sizes: Vec<SizeSpec>,
    /// Artifact content, comma-separated.
    #[arg(long, value_delimiter = ',', default_values = ["incompressible"])]
    content: Vec<Content>,
    /// Workloads, comma-separated. mixed = 70% GET hit, 20% GET miss, 10% PUT.
    #[arg(long, value_delimiter = ',', default_values = ["put", "get-hit", "get-miss", "mixed"])]
    workloads: Vec<Workload>,
    /// Measured time per cell, e.g. 5s, 500ms.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Stop a cell after this many requests (whichever of --ops and --duration comes first).
    #[arg(long, value_name = "N")]
    ops: Option<u64>,
    /// The server's process ids, comma-separated: their RSS (VmRSS, VmHWM) and CPU time are
    /// read from /proc and summed.
    #[arg(long, value_name = "PID", value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Name of the server at --url in the tables.
    #[arg(long, default_value = "hearth")]
    name: String,
    /// A peer server (e.g. nginx's WebDAV module) measured in the same run: every cell runs
    /// against both, in alternating order, on the same object set, and ratios are printed.
    #[arg(long, value_name = "URL")]
    peer_url: Option<String>,
    /// The peer's process ids (its workers), comma-separated.
    #[arg(long, value_name = "PID", value_delimiter = ',')]
    peer_pid: Vec<u32>,
    /// Name of the peer in the tables.
    #[arg(long, default_value = "nginx")]
    peer_name: String,
    /// Runs of every cell on every server, alternating which goes first. With a peer, the
    /// closing table gives the median of the per-round ratios (each round's two runs are
    /// back to back, so they share the machine's conditions) and their range.
    #[arg(long, default_value_t = 1, value_name = "N")]
    rounds: usize,
    /// Keep what PUT cells wrote instead of deleting it after each cell (untimed); for
    /// scripts that count the server's work per request, where the DELETEs would count too.
    #[arg(long)]
    keep_written: bool,
    /// Print one JSON object per cell on stdout (the table then goes to stderr).
    #[arg(long)]
    json: bool,
    /// Bytes of objects PUT before get-hit / mixed cells (one set per size and content).
    #[arg(long, default_value = "128MiB", value_name = "SIZE")]
    set_bytes: ByteSize,
    /// At most this many keys in that object set (at least 16).
    #[arg(long, default_value_t = 2000, value_name = "N")]
    max_keys: usize,
    /// Token for a server in secured mode, sent as `Authorization: Bearer` (needs write scope
    /// for PUT workloads). A server without tokens is open and needs none.
    #[arg(long, env = "HEARTH_BENCH_TOKEN", hide_env_values = true, value_name = "SECRET")]
    token: Option<String>,
    /// Per-request timeout; a request that takes longer is an error.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Also compare the servers at an equal offered load: after each round's closed-loop runs
    /// of a cell, both servers get requests paced at this percentage of the slower one's
    /// throughput in that round (open loop, same concurrency), latency counted from when each
    /// request was due. Closed-loop latency compares servers at different loads (the faster
    /// one is driven harder); this compares them at the same one.
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent, requires = "peer_url")]
    paced: Option<f64>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// `80%` or `80` as the fraction 0.8; between 1 % and 100 %.
fn parse_percent(raw: &str) -> Result<f64, String> {
    let number = raw.trim().trim_end_matches('%');
    match number.parse::<f64>() {
        Ok(p) if (1.0..=100.0).contains(&p) => Ok(p / 100.0),
        _ => Err(format!("{raw:?} is not a percentage between 1% and 100%")),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Content {
    /// xorshift random bytes, like sccache's zstd-compressed entries (stored raw).
    Incompressible,
    /// Text-ish bytes zstd shrinks ~3x, like raw object files (stored zstd).
    Compressible,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Workload {
    Put,
    GetHit,
    GetMiss,
    Mixed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Put = 0,
    GetHit = 1,
    GetMiss = 2,
}

const OPS: [Op; 3] = [Op::Put, Op::GetHit, Op::GetMiss];

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::GetHit => "get-hit",
            Op::GetMiss => "get-miss",
        }
    }
}

fn workload_name(w: Workload) -> &'static str {
    match w {
        Workload::Put => "put",
        Workload::GetHit => "get-hit",
        Workload::GetMiss => "get-miss",
        Workload::Mixed => "mixed",
    }
}

fn content_name(c: Content) -> &'static str {
    match c {
        Content::Incompressible => "incompressible",
        Content::Compressible => "compressible",
    }
}

// ---------------------------------------------------------------------------------------
// Sizes

/// `mix`: (bucket size, weight in ‰). Within a bucket the size is log-uniform in
/// [size/√2, size·√2). 40% of the weight lies below the 64 KiB bucket and it holds 20%, so
/// the median is 64 KiB; the tail reaches 45 MiB and the mean is ~400 KiB per artifact.
const MIX: &[(u64, u32)] = &[
    (1 << 10, 60),
    (4 << 10, 100),
    (16 << 10, 120),
    (32 << 10, 120),
    (64 << 10, 200),
    (128 << 10, 130),
    (256 << 10, 100),
    (512 << 10, 70),
    (1 << 20, 50),
    (2 << 20, 25),
    (4 << 20, 15),
    (8 << 20, 6),
    (16 << 20, 3),
    (32 << 20, 1),
];

#[derive(Clone, Debug)]
enum SizeSpec {
    Fixed { bytes: usize, label: String },
    Mix,
}

impl FromStr for SizeSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("mix") {
            return Ok(SizeSpec::Mix);
        }
        let ByteSize(bytes) = s.parse::<ByteSize>()?;
        if bytes == 0 || bytes > 1 << 30 {
            return Err(format!("size {s:?} must be between 1 byte and 1GiB"));
        }
        Ok(SizeSpec::Fixed {
            bytes: bytes as usize,
            label: s.to_string(),
        })
    }
}

impl SizeSpec {
    fn label(&self) -> &str {
        match self {
            SizeSpec::Fixed { label, .. } => label,
            SizeSpec::Mix => "mix",
        }
    }

    /// Largest size this spec can draw: the length of the shared base body.
    fn max(&self) -> usize {
        match self {
            SizeSpec::Fixed { bytes, .. } => *bytes,
            SizeSpec::Mix => {
                let top = MIX.iter().map(|(s, _)| *s).max().unwrap_or(1);
                (top as f64 * std::f64::consts::SQRT_2).ceil() as usize
            }
        }
    }

    fn mean(&self) -> f64 {
        match self {
            SizeSpec::Fixed { bytes, .. } => *bytes as f64,
            SizeSpec::Mix => {
                // E[2^(u - 1/2)] for u uniform in [0, 1).
                let jitter = (std::f64::consts::SQRT_2 - std::f64::consts::FRAC_1_SQRT_2) / std::f64::consts::LN_2;
                let total: u32 = MIX.iter().map(|(_, w)| w).sum();
                MIX.iter().map(|(s, w)| *s as f64 * f64::from(*w)).sum::<f64>() / f64::from(total) * jitter
            }
        }
    }

    fn draw(&self, rng: &mut XorShift) -> usize {
        match self {
            SizeSpec::Fixed { bytes, .. } => *bytes,
            SizeSpec::Mix => {
                let total: u32 = MIX.iter().map(|(_, w)| w).sum();
                let mut r = rng.below(u64::from(total)) as u32;
                let mut bucket = MIX[MIX.len() - 1].0;
                for (size, weight) in MIX {
                    if r < *weight {
                        bucket = *size;
                        break;
                    }
                    r -= weight;
                }
                let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
                ((bucket as f64 * (u - 0.5).exp2()).round() as usize).clamp(1, self.max())
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Content

/// xorshift64: deterministic, fast, and nothing zstd can use.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        // splitmix64 of the seed, so that neighbouring seeds give unrelated streams.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        XorShift((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const ALNUM: &[u8; 64] = b"0123456789abcdefghijklmnopqrstuvwxyz_ABCDEFGHIJKLMNOPQRSTUVWXYZ.";
const SYMBOLS: &[&str] = &[
    "mov",
    "rax",
    "rbx",
    "rcx",
    "rdx",
    "rsi",
    "rdi",
    "rbp",
    "rsp",
    "call",
    "push",
    "pop",
    "lea",
    "jmp",
    "cmp",
    "test",
    "_ZN4core3fmt9Formatter",
    "_ZN5alloc3vec",
    "drop_in_place",
    "__rust_alloc",
    ".text",
    ".rodata",
    "memcpy",
    "panic_bounds_check",
];
/// Compressible content: 12 random identifier characters, then 36 bytes copied from a 4 KiB
/// symbol table. zstd -3 shrinks it ~3x (rlibs of this repository: 2.3-3.5x).
const RANDOM_RUN: usize = 12;
const COPY_RUN: usize = 36;

/// The shared body every artifact of a (size, content) group is sliced from.
fn generate(content: Content, len: usize) -> Bytes {
    let mut rng = XorShift::new(0x5EED);
    let mut out = Vec::with_capacity(len + 64);
    match content {
        Content::Incompressible => {
            while out.len() < len {
                out.extend_from_slice(&rng.next().to_le_bytes());
            }
        }
        Content::Compressible => {
            let mut table = Vec::with_capacity(4096 + 32);
            while table.len() < 4096 {
                table.extend_from_slice(SYMBOLS[rng.below(SYMBOLS.len() as u64) as usize].as_bytes());
                table.push(b' ');
            }
            table.truncate(4096);
            while out.len() < len {
                let words = [rng.next(), rng.next()];
                for i in 0..RANDOM_RUN {
                    out.push(ALNUM[(words[i / 8] >> (i % 8 * 8)) as usize % 64]);
                }
                let offset = rng.below((table.len() - COPY_RUN) as u64) as usize;
                out.extend_from_slice(&table[offset..offset + COPY_RUN]);
            }
        }
    }
    out.truncate(len);
    Bytes::from(out)
}

/// zstd level-3 ratio of (up to 4 MiB of) a body: what the server's compression sees.
fn zstd_ratio(body: &Bytes) -> f64 {
    let sample = &body[..body.len().min(4 << 20)];
    match zstd::bulk::compress(sample, 3) {
        Ok(packed) if !packed.is_empty() => sample.len() as f64 / packed.len() as f64,
        _ => f64::NAN,
    }
}

// ---------------------------------------------------------------------------------------
// Objects and requests

const PREFIX: usize = 32;

/// One cache artifact: its URL and its content (a key-derived prefix over the shared body).
#[derive(Clone)]
struct Object {
    url: String,
    prefix: [u8; PREFIX],
    size: usize,
}

impl Object {
    /// `<url>a/b/c/<abc…64 hex>`, like sccache's keys; `id` makes key and content unique.
    fn new(base_url: &str, id: &str, size: usize) -> Object {
        let hash = blake3::hash(id.as_bytes());
        let hex = hash.to_hex();
        let h = hex.as_str();
        let url = format!("{base_url}{}/{}/{}/{h}", &h[0..1], &h[1..2], &h[2..3]);
        Object {
            url,
            prefix: *hash.as_bytes(),
            size,
        }
    }

    fn prefix_len(&self) -> usize {
        PREFIX.min(self.size)
    }

    /// The request body: two chunks, neither copying the shared body.
    fn body(&self, base: &Bytes) -> Body {
        let plen = self.prefix_len();
        let mut chunks = vec![Ok::<Bytes, std::io::Error>(Bytes::copy_from_slice(
            &self.prefix[..plen],
        ))];
        if self.size > plen {
            chunks.push(Ok(base.slice(plen..self.size)));
        }
        Body::wrap_stream(futures_util::stream::iter(chunks))
    }

    /// Whether `chunk`, found at `offset` of a response, is what was stored.
    fn matches(&self, base: &Bytes, offset: usize, chunk: &[u8]) -> bool {
        let end = offset + chunk.len();
        if end > self.size {
            return false;
        }
        let plen = self.prefix_len();
        let mut rest = chunk;
        let mut at = offset;
        if at < plen {
            let n = (plen - at).min(rest.len());
            if rest[..n] != self.prefix[at..at + n] {
                return false;
            }
            rest = &rest[n..];
            at += n;
        }
        rest == &base[at..end]
    }
}

enum Failure {
    /// No HTTP response at all (connection, timeout, body cut off).
    Transport(String),
    /// An unexpected status; the text is the start of the body.
    Status(StatusCode, String),
    Length {
        expected: usize,
        got: usize,
    },
    Content,
    /// A paced request never sent: its task was still behind a cell's length past the end.
    Behind,
}

impl Failure {
    fn kind(&self) -> String {
        match self {
            Failure::Transport(_) => "transport".into(),
            Failure::Status(s, _) => format!("status {}", s.as_u16()),
            Failure::Length { .. } => "short/long body".into(),
            Failure::Content => "wrong content".into(),
            Failure::Behind => "not sent (far behind the pace)".into(),
        }
    }

    fn describe(&self, op: Op, url: &str) -> String {
        let what = match self {
            Failure::Transport(e) => e.clone(),
            Failure::Status(s, body) => format!("{s}: {}", body.trim()),
            Failure::Length { expected, got } => format!("body of {got} bytes, expected {expected}"),
            Failure::Content => "body differs from what was PUT".into(),
            Failure::Behind => "still not sent a cell's length after the cell's end".into(),
        };
        format!("{} {url}: {what}", op.name())
    }
}

/// The HTTP status (if any) and either the payload bytes moved or a failure.
struct Outcome {
    status: Option<StatusCode>,
    result: Result<u64, Failure>,
}

fn transport(e: reqwest::Error) -> Failure {
    // `{:#}`-like: include the source chain, reqwest's own message is terse.
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    Failure::Transport(text)
}

async fn unexpected(response: reqwest::Response) -> Outcome {
    let status = response.status();
    let body = match response.text().await {
        Ok(text) => text.chars().take(200).collect(),
        Err(e) => format!("(body unreadable: {e})"),
    };
    Outcome {
        status: Some(status),
        result: Err(Failure::Status(status, body)),
    }
}

async fn put(client: &Client, object: &Object, base: &Bytes) -> Outcome {
    let request = client
        .put(&object.url)
        .header(CONTENT_LENGTH, object.size as u64)
        .body(object.body(base));
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            return Outcome {
                status: None,
                result: Err(transport(e)),
            }
        }
    };
    let status = response.status();
    if status != StatusCode::CREATED && status != StatusCode::NO_CONTENT {
        return unexpected(response).await;
    }
    // Drain the (empty) body so that the connection goes back to the pool.
    let result = response.bytes().await.map(|_| object.size as u64).map_err(transport);
    Outcome {
        status: Some(status),
        result,
    }
}

async fn get_hit(client: &Client, object: &Object, base: &Bytes) -> Outcome {
    let mut response = match client.get(&object.url).send().await {
        Ok(r) => r,
        Err(e) => {
            return Outcome {
                status: None,
                result: Err(transport(e)),
            }
        }
    };
    let status = response.status();
    if status != StatusCode::OK {
        return unexpected(response).await;
    }
    let mut received = 0usize;
    let mut same = true;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                same = same && object.matches(base, received, &chunk);
                received += chunk.len();
            }
            Ok(None) => break,
            Err(e) => {
                return Outcome {
                    status: Some(status),
                    result: Err(transport(e)),
                }
            }
        }
    }
    let result = if received != object.size {
        Err(Failure::Length {
            expected: object.size,
            got: received,
        })
    } else if !same {
        Err(Failure::Content)
    } else {
        Ok(received as u64)
    };
    Outcome {
        status: Some(status),
        result,
    }
}

async fn get_miss(client: &Client, object: &Object) -> Outcome {
    let response = match client.get(&object.url).send().await {
        Ok(r) => r,
        Err(e) => {
            return Outcome {
                status: None,
                result: Err(transport(e)),
            }
        }
    };
    let status = response.status();
    if status != StatusCode::NOT_FOUND {
        return unexpected(response).await;
    }
    let result = response.bytes().await.map(|_| 0).map_err(transport);
    Outcome {
        status: Some(status),
        result,
    }
}

// ---------------------------------------------------------------------------------------
// Statistics

/// Error messages kept per cell (the rest are only counted).
const MAX_SAMPLES: usize = 5;

#[derive(Default)]
struct OpStats {
    latency_us: Vec<u32>,
    bytes: u64,
    errors: u64,
}

#[derive(Default)]
struct Tally {
    ops: [OpStats; 3],
    statuses: BTreeMap<String, u64>,
    error_kinds: BTreeMap<String, u64>,
    samples: Vec<String>,
    /// URLs the cell PUT, deleted after it (see [`delete_written`]).
    written: Vec<String>,
}

impl Tally {
    fn record(&mut self, op: Op, url: &str, micros: u32, outcome: Outcome) {
        let stats = &mut self.ops[op as usize];
        stats.latency_us.push(micros);
        let status = outcome
            .status
            .map_or_else(|| "none".to_string(), |s| s.as_u16().to_string());
        *self.statuses.entry(status).or_default() += 1;
        match outcome.result {
            Ok(bytes) => stats.bytes += bytes,
            Err(failure) => {
                stats.errors += 1;
                *self.error_kinds.entry(failure.kind()).or_default() += 1;
                if self.samples.len() < MAX_SAMPLES {
                    self.samples.push(failure.describe(op, url));
                }
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        for (mine, theirs) in self.ops.iter_mut().zip(other.ops) {
            mine.latency_us.extend(theirs.latency_us);
            mine.bytes += theirs.bytes;
            mine.errors += theirs.errors;
        }
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        for (k, v) in other.error_kinds {
            *self.error_kinds.entry(k).or_default() += v;
        }
        let room = MAX_SAMPLES.saturating_sub(self.samples.len());
        self.samples.extend(other.samples.into_iter().take(room));
        self.written.extend(other.written);
    }

    fn errors(&self) -> u64 {
        self.ops.iter().map(|o| o.errors).sum()
    }
}

/// Latency and throughput of a set of requests over `elapsed`.
struct Summary {
    ops: u64,
    errors: u64,
    ops_per_s: f64,
    mib_per_s: f64,
    bytes: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    mean_ms: f64,
}

fn summarize(mut latency_us: Vec<u32>, bytes: u64, errors: u64, elapsed: Duration) -> Summary {
    latency_us.sort_unstable();
    let n = latency_us.len();
    let rank = |p: f64| -> f64 {
        if n == 0 {
            return f64::NAN;
        }
        let i = ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
        f64::from(latency_us[i]) / 1000.0
    };
    let secs = elapsed.as_secs_f64().max(1e-9);
    let mean_ms = if n == 0 {
        f64::NAN
    } else {
        latency_us.iter().map(|&u| u64::from(u)).sum::<u64>() as f64 / n as f64 / 1000.0
    };
    Summary {
        ops: n as u64,
        errors,
        ops_per_s: n as f64 / secs,
        mib_per_s: bytes as f64 / secs / (1024.0 * 1024.0),
        bytes,
        p50_ms: rank(0.50),
        p99_ms: rank(0.99),
        max_ms: rank(1.0),
        mean_ms,
    }
}

// ---------------------------------------------------------------------------------------
// Server process (Linux /proc)

/// USER_HZ: the unit of utime/stime in /proc/PID/stat (100 on every mainstream Linux).
const CLOCK_TICKS: f64 = 100.0;

/// VmRSS and VmHWM in KiB.
fn read_rss(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Resets VmHWM to the current RSS (`echo 5 > clear_refs`), so the next reading is the peak
/// of one cell. Returns false where that is not permitted.
fn reset_hwm(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// utime + stime in clock ticks.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); after the comm, the state is field 3, at index 0.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Busy ticks of the whole machine (all CPUs): everything but idle and iowait in /proc/stat.
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let idle = fields.get(3)? + fields.get(4)?;
    Some(fields.iter().sum::<u64>() - idle)
}

fn cpu_percent(before: Option<u64>, after: Option<u64>, elapsed: Duration) -> Option<f64> {
    let ticks = after?.checked_sub(before?)?;
    Some(ticks as f64 / CLOCK_TICKS / elapsed.as_secs_f64().max(1e-9) * 100.0)
}

/// CPU time of one cell, in percent of one core: server, loadgen, and everything else running.
#[derive(Clone, Copy, Default)]
struct CpuUse {
    server: Option<f64>,
    loadgen: Option<f64>,
    other: Option<f64>,
}

struct CpuClock {
    server_pids: Vec<u32>,
    server: Option<u64>,
    loadgen: Option<u64>,
    machine: Option<u64>,
}

/// CPU ticks of all `pids` together (`None` without pids, or when one is gone).
fn servers_ticks(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|pid| cpu_ticks(&pid.to_string())).sum()
}

impl CpuClock {
    fn start(server_pids: &[u32]) -> CpuClock {
        CpuClock {
            server: servers_ticks(server_pids),
            loadgen: cpu_ticks("self"),
            machine: machine_busy_ticks(),
            server_pids: server_pids.to_vec(),
        }
    }

    fn stop(&self, elapsed: Duration) -> CpuUse {
        let server = cpu_percent(self.server, servers_ticks(&self.server_pids), elapsed);
        let loadgen = cpu_percent(self.loadgen, cpu_ticks("self"), elapsed);
        let machine = cpu_percent(self.machine, machine_busy_ticks(), elapsed);
        // Without a server pid the server's share is part of "other".
        let other = machine
            .zip(loadgen)
            .map(|(m, l)| (m - l - server.unwrap_or(0.0)).max(0.0));
        CpuUse { server, loadgen, other }
    }
}

/// Memory of a server's processes, summed.
#[derive(Default)]
struct ServerWatch {
    pids: Vec<u32>,
    /// Whether VmHWM can be reset per cell (otherwise it is the peak since server start).
    resettable: bool,
    peak_hwm_kib: u64,
}

impl ServerWatch {
    /// Folds the current VmHWM into the overall peak, then starts a new per-cell peak.
    fn start_cell(&mut self) {
        self.observe();
        self.resettable = !self.pids.is_empty() && self.pids.iter().all(|pid| reset_hwm(*pid));
    }

    /// (VmRSS, VmHWM) summed over the processes, in KiB.
    fn observe(&mut self) -> Option<(u64, u64)> {
        if self.pids.is_empty() {
            return None;
        }
        let (mut rss, mut hwm) = (0, 0);
        for pid in &self.pids {
            let (r, h) = read_rss(*pid)?;
            rss += r;
            hwm += h;
        }
        self.peak_hwm_kib = self.peak_hwm_kib.max(hwm);
        Some((rss, hwm))
    }

    fn end_cell(&mut self) -> Option<(u64, u64)> {
        self.observe()
    }
}

// ---------------------------------------------------------------------------------------
// Cells

/// What every task of one measured cell shares.
struct Cell {
    client: Client,
    url: String,
    tag: String,
    workload: Workload,
    sizes: SizeSpec,
    base: Bytes,
    set: Arc<Vec<Object>>,
    deadline: Instant,
    ops_cap: Option<u64>,
    issued: AtomicU64,
    seed: u64,
    pacing: Option<Pacing>,
}

/// Open-loop pacing of a cell: requests are due at a fixed total rate, task `i` of `tasks`
/// sending its `k`-th at `start + (k·tasks + i) / rate`. A pacer thread hands each task a
/// permit when its request is due: a thread's sleep wakes within tens of microseconds, while
/// tokio's timer wheel ticks in milliseconds and would release the tasks in bursts on the tick.
struct Pacing {
    start: Instant,
    rate: f64,
    permits: Vec<Arc<Semaphore>>,
}

impl Pacing {
    fn new(rate: f64, tasks: usize) -> Self {
        Self {
            start: Instant::now(),
            rate,
            permits: (0..tasks).map(|_| Arc::new(Semaphore::new(0))).collect(),
        }
    }

    fn due(&self, task: usize, k: u64) -> Instant {
        let slot = k as f64 * self.permits.len() as f64 + task as f64;
        self.start + Duration::from_secs_f64(slot / self.rate)
    }

    /// How late, at `now`, each of a task's requests from its `k`-th on that was due before
    /// `deadline` is.
    fn lateness_of_unsent(
        &self,
        task: usize,
        k: u64,
        deadline: Instant,
        now: Instant,
    ) -> impl Iterator<Item = Duration> + '_ {
        (k..)
            .map(move |k| self.due(task, k))
            .take_while(move |&due| due < deadline)
            .map(move |due| now.saturating_duration_since(due))
    }

    /// Releases every request due before `deadline`. Runs on its own thread.
    fn release_until(&self, deadline: Instant) {
        let tasks = self.permits.len();
        for slot in 0u64.. {
            let (k, task) = (slot / tasks as u64, (slot % tasks as u64) as usize);
            let due = self.due(task, k);
            if due >= deadline {
                break;
            }
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            self.permits[task].add_permits(1);
        }
    }
}

/// A paced task's requests on the timeline they would have had if each had been sent exactly
/// when due or, when the task was still busy, exactly when its previous one ended. A request's
/// latency is its wait on that timeline plus its measured service time: a server that falls
/// behind is charged for the queue it builds (it is not flattered by being sent less,
/// "coordinated omission"), while the pacer's own lateness is charged to neither server.
#[derive(Default)]
struct Timeline {
    busy_until: Option<Instant>,
}

impl Timeline {
    /// The latency of a request due at `due` whose service took `service`.
    fn latency(&mut self, due: Instant, service: Duration) -> Duration {
        let start = self.busy_until.map_or(due, |busy| busy.max(due));
        let end = start + service;
        self.busy_until = Some(end);
        end - due
    }
}

impl Cell {
    /// The next operation of a task, or `None` when the cell is over. A paced cell is over for
    /// a task when its next request would be due past the deadline (see [`worker`]), so that a
    /// server that fell behind still answers, and is timed on, every request due before it.
    fn next_op(&self, rng: &mut XorShift) -> Option<Op> {
        if self.pacing.is_none() && Instant::now() >= self.deadline {
            return None;
        }
        if self
            .ops_cap
            .is_some_and(|cap| self.issued.fetch_add(1, Ordering::Relaxed) >= cap)
        {
            return None;
        }
        Some(match self.workload {
            Workload::Put => Op::Put,
            Workload::GetHit => Op::GetHit,
            Workload::GetMiss => Op::GetMiss,
            Workload::Mixed => match rng.below(100) {
                0..70 => Op::GetHit,
                70..90 => Op::GetMiss,
                _ => Op::Put,
            },
        })
    }
}

async fn worker(cell: Arc<Cell>, task: usize) -> Tally {
    let mut rng = XorShift::new(cell.seed ^ (task as u64).wrapping_mul(0x1000_0000_01B3));
    let mut tally = Tally::default();
    let mut seq = 0u64;
    let mut timeline = Timeline::default();
    while let Some(op) = cell.next_op(&mut rng) {
        let due = match &cell.pacing {
            None => None,
            Some(pacing) => {
                // The pacer releases exactly the requests due before the deadline.
                let due = pacing.due(task, seq);
                if due >= cell.deadline {
                    break;
                }
                // A server that stalls for good must not hold the run for hours: a cell's
                // length after its end, what is still due fails, as late as it already is.
                let now = Instant::now();
                if now >= cell.deadline + cell.deadline.duration_since(pacing.start) {
                    for late in pacing.lateness_of_unsent(task, seq, cell.deadline, now) {
                        let failed = Outcome {
                            status: None,
                            result: Err(Failure::Behind),
                        };
                        tally.record(op, &cell.url, micros_of(late), failed);
                    }
                    break;
                }
                let permit = pacing.permits[task]
                    .acquire()
                    .await
                    .expect("the pacer never closes its permits");
                permit.forget();
                Some(due)
            }
        };
        let started = Instant::now();
        seq += 1;
        let (url, outcome) = match op {
            Op::Put => {
                let object = Object::new(
                    &cell.url,
                    &format!("{}/put/{task}/{seq}", cell.tag),
                    cell.sizes.draw(&mut rng),
                );
                tally.written.push(object.url.clone());
                (object.url.clone(), put(&cell.client, &object, &cell.base).await)
            }
            Op::GetHit => {
                let object = &cell.set[rng.below(cell.set.len() as u64) as usize];
                (object.url.clone(), get_hit(&cell.client, object, &cell.base).await)
            }
            Op::GetMiss => {
                let object = Object::new(&cell.url, &format!("{}/miss/{task}/{seq}", cell.tag), 0);
                (object.url.clone(), get_miss(&cell.client, &object).await)
            }
        };
        let service = started.elapsed();
        let latency = match due {
            Some(due) => timeline.latency(due, service),
            None => service,
        };
        tally.record(op, &url, micros_of(latency), outcome);
    }
    tally
}

fn micros_of(latency: Duration) -> u32 {
    latency.as_micros().min(u128::from(u32::MAX)) as u32
}

/// Deletes what a cell PUT, 8 at a time, outside the measured time: a long run would otherwise
/// fill the disk (a peer like nginx keeps every file). hearth drops the entries at once and
/// its blobs at the next garbage collection past the grace period.
async fn delete_written(client: &Client, urls: Vec<String>) {
    let urls = Arc::new(urls);
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (client, urls, next) = (client.clone(), urls.clone(), next.clone());
            tokio::spawn(async move {
                while let Some(url) = urls.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if let Ok(response) = client.delete(url).send().await {
                        let _ = response.bytes().await;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
}

/// PUTs the object set that get-hit and mixed cells read, 8 at a time.
async fn prepare_set(
    client: &Client,
    url: &str,
    tag: &str,
    sizes: &SizeSpec,
    base: &Bytes,
    keys: usize,
) -> (Vec<Object>, Tally, Duration) {
    let mut rng = XorShift::new(0xC0FFEE);
    let set: Arc<Vec<Object>> = Arc::new(
        (0..keys)
            .map(|i| Object::new(url, &format!("{tag}/set/{i}"), sizes.draw(&mut rng)))
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..keys.clamp(1, 8))
        .map(|_| {
            let (client, set, next, base) = (client.clone(), set.clone(), next.clone(), base.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(object) = set.get(i) else { break };
                    let t = Instant::now();
                    let outcome = put(&client, object, &base).await;
                    tally.record(Op::Put, &object.url, t.elapsed().as_micros() as u32, outcome);
                }
                tally
            })
        })
        .collect();
    let mut tally = Tally::default();
    for task in tasks {
        tally.merge(task.await.expect("prepare task panicked"));
    }
    let elapsed = started.elapsed();
    let set = Arc::try_unwrap(set).unwrap_or_else(|arc| (*arc).clone());
    (set, tally, elapsed)
}

/// One GET miss per task before the clock starts, so that every connection is open.
async fn warm_up(client: &Client, url: &str, tag: &str, concurrency: usize) {
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let client = client.clone();
            let object = Object::new(url, &format!("{tag}/warm/{i}"), 0);
            tokio::spawn(async move { get_miss(&client, &object).await })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
}

/// Everything measured about one cell.
struct CellReport {
    server: String,
    workload: Workload,
    size: String,
    content: Content,
    concurrency: usize,
    /// The offered rate (requests/s) of a paced run; `None` for closed loop.
    paced: Option<f64>,
    elapsed: Duration,
    total: Summary,
    by_op: Vec<(Op, Summary)>,
    statuses: BTreeMap<String, u64>,
    error_kinds: BTreeMap<String, u64>,
    samples: Vec<String>,
    cpu: CpuUse,
    rss: Option<(u64, u64)>,
}

#[allow(clippy::too_many_arguments)]
fn build_report(
    server: &str,
    cell: &Cell,
    content: Content,
    concurrency: usize,
    tally: Tally,
    elapsed: Duration,
    cpu: CpuUse,
    rss: Option<(u64, u64)>,
) -> CellReport {
    let all_latency: Vec<u32> = tally.ops.iter().flat_map(|o| o.latency_us.iter().copied()).collect();
    let bytes = tally.ops.iter().map(|o| o.bytes).sum();
    let total = summarize(all_latency, bytes, tally.errors(), elapsed);
    let by_op = if cell.workload == Workload::Mixed {
        OPS.iter()
            .zip(tally.ops)
            .map(|(op, stats)| (*op, summarize(stats.latency_us, stats.bytes, stats.errors, elapsed)))
            .collect()
    } else {
        Vec::new()
    };
    CellReport {
        server: server.to_string(),
        workload: cell.workload,
        size: cell.sizes.label().to_string(),
        content,
        concurrency,
        paced: cell.pacing.as_ref().map(|p| p.rate),
        elapsed,
        total,
        by_op,
        statuses: tally.statuses,
        error_kinds: tally.error_kinds,
        samples: tally.samples,
        cpu,
        rss,
    }
}

// ---------------------------------------------------------------------------------------
// Output

const HEADER: &str = concat!(
    "server   workload       size     content         conc      ops     ops/s    MiB/s   p50 ms   p99 ms   max ms",
    "  errors  srv cpu%  gen cpu%  oth cpu%  rss MiB  hwm MiB"
);

fn opt(value: Option<f64>, width: usize, precision: usize) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:>width$.precision$}"),
        _ => format!("{:>width$}", "-"),
    }
}

#[allow(clippy::too_many_arguments)]
fn row(server: &str, name: &str, size: &str, content: &str, conc: usize, s: &Summary, extra: &str) -> String {
    format!(
        "{server:<8} {name:<14} {size:<8} {content:<14} {conc:>5} {:>8} {:>9.1} {:>8.1} {} {} {} {:>7}{extra}",
        s.ops,
        s.ops_per_s,
        s.mib_per_s,
        opt(Some(s.p50_ms), 8, 2),
        opt(Some(s.p99_ms), 8, 2),
        opt(Some(s.max_ms), 8, 1),
        s.errors,
    )
}

fn table_rows(r: &CellReport) -> Vec<String> {
    let kib_to_mib = |k: u64| k as f64 / 1024.0;
    let extra = format!(
        " {} {} {} {} {}",
        opt(r.cpu.server, 9, 0),
        opt(r.cpu.loadgen, 9, 0),
        opt(r.cpu.other, 9, 0),
        opt(r.rss.map(|(rss, _)| kib_to_mib(rss)), 8, 1),
        opt(r.rss.map(|(_, hwm)| kib_to_mib(hwm)), 8, 1),
    );
    let content = content_name(r.content);
    let name = match r.paced {
        Some(_) => format!("{} paced", workload_name(r.workload)),
        None => workload_name(r.workload).to_string(),
    };
    let mut rows = vec![row(&r.server, &name, &r.size, content, r.concurrency, &r.total, &extra)];
    for (op, s) in &r.by_op {
        rows.push(row("", &format!("  .{}", op.name()), "", "", r.concurrency, s, ""));
    }
    rows
}

fn summary_json(s: &Summary) -> serde_json::Value {
    let num = |v: f64| {
        if v.is_finite() {
            json!((v * 1000.0).round() / 1000.0)
        } else {
            json!(null)
        }
    };
    json!({
        "ops": s.ops,
        "errors": s.errors,
        "bytes": s.bytes,
        "ops_per_s": num(s.ops_per_s),
        "mib_per_s": num(s.mib_per_s),
        "p50_ms": num(s.p50_ms),
        "p99_ms": num(s.p99_ms),
        "max_ms": num(s.max_ms),
        "mean_ms": num(s.mean_ms),
    })
}

fn report_json(r: &CellReport) -> serde_json::Value {
    let mut value = summary_json(&r.total);
    let by_op: serde_json::Map<String, serde_json::Value> = r
        .by_op
        .iter()
        .map(|(op, s)| (op.name().to_string(), summary_json(s)))
        .collect();
    let extra = json!({
        "server": r.server,
        "workload": workload_name(r.workload),
        "size": r.size,
        "content": content_name(r.content),
        "concurrency": r.concurrency,
        "paced_rate": r.paced,
        "elapsed_s": r.elapsed.as_secs_f64(),
        "statuses": r.statuses,
        "error_kinds": r.error_kinds,
        "error_samples": r.samples,
        "server_cpu_pct": r.cpu.server,
        "loadgen_cpu_pct": r.cpu.loadgen,
        "other_cpu_pct": r.cpu.other,
        "server_rss_kib": r.rss.map(|(rss, _)| rss),
        "server_hwm_kib": r.rss.map(|(_, hwm)| hwm),
        "by_op": by_op,
    });
    if let (Some(map), serde_json::Value::Object(more)) = (value.as_object_mut(), extra) {
        map.extend(more);
    }
    value
}

/// The table goes to stdout, or to stderr when stdout carries JSON.
struct Out {
    json: bool,
}

impl Out {
    fn line(&self, text: &str) {
        if self.json {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }
}

// ---------------------------------------------------------------------------------------

fn normalize_url(raw: &str) -> Result<String, String> {
    let mut url = raw.trim().to_string();
    if !url.ends_with('/') {
        url.push('/');
    }
    let parsed = reqwest::Url::parse(&url).map_err(|e| format!("invalid --url {raw:?}: {e}"))?;
    if parsed.scheme() != "http" && parsed.scheme() != "https" {
        return Err(format!("--url {raw:?} must be http:// or https://"));
    }
    if parsed.path() == "/" {
        return Err(format!(
            "--url {raw:?} must name a namespace, e.g. http://127.0.0.1:8080/bench/"
        ));
    }
    Ok(url)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let Some(raw_url) = args.url.clone() else {
        if !args.bench {
            // `cargo test --benches` runs bench targets without arguments: nothing to load.
            eprintln!("loadgen: no --url given; nothing to do outside `cargo bench --bench loadgen -- --url URL`");
            return ExitCode::SUCCESS;
        }
        Args::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "--url <URL> is required",
            )
            .exit();
    };
    let mut targets = Vec::new();
    let peer = args
        .peer_url
        .clone()
        .map(|u| (args.peer_name.clone(), u, args.peer_pid.clone()));
    for (name, raw, pids) in std::iter::once((args.name.clone(), raw_url, args.server_pid.clone())).chain(peer) {
        match normalize_url(&raw) {
            Ok(url) => targets.push(Target {
                name,
                url,
                watch: ServerWatch {
                    pids,
                    ..Default::default()
                },
                set: Arc::new(Vec::new()),
            }),
            Err(e) => {
                eprintln!("loadgen: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if args.concurrency.contains(&0) {
        eprintln!("loadgen: --concurrency values must be at least 1");
        return ExitCode::from(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(args, targets))
}

/// A server under load: hearth, or the peer it is compared with.
struct Target {
    name: String,
    url: String,
    watch: ServerWatch,
    /// The object set of the current size and content group, on this server.
    set: Arc<Vec<Object>>,
}

/// One cell's hearth ÷ peer ratios (ops/s, p50, p99), one per round, for the closing table.
struct Compared {
    label: String,
    ratios: Vec<(f64, f64, f64)>,
    /// Failed requests in any round on any server: such a cell's ratios are not to be trusted
    /// (a get-hit that misses is cheap).
    errors: u64,
}

impl Compared {
    fn new(label: String) -> Compared {
        Compared {
            label,
            ratios: Vec::new(),
            errors: 0,
        }
    }

    /// Takes in a round's ratio and failures, counting the failures in the run's too.
    fn add(&mut self, seen: Seen, run: &mut Failures) {
        self.ratios.extend(seen.ratios);
        self.errors += seen.errors;
        run.requests += seen.errors;
        run.cells += seen.failed_cells;
    }
}

/// The failures of a whole run.
#[derive(Default)]
struct Failures {
    requests: u64,
    /// Cells (one server, one round) with a failed request.
    cells: usize,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// Runs one cell against one target.
#[allow(clippy::too_many_arguments)]
async fn run_cell(
    client: &Client,
    target: &mut Target,
    tag: String,
    workload: Workload,
    sizes: &SizeSpec,
    content: Content,
    base: &Bytes,
    concurrency: usize,
    args: &Args,
    seed: u64,
    paced_rate: Option<f64>,
) -> CellReport {
    target.watch.start_cell();
    warm_up(client, &target.url, &tag, concurrency).await;
    let cell = Arc::new(Cell {
        client: client.clone(),
        url: target.url.clone(),
        tag,
        workload,
        sizes: sizes.clone(),
        base: base.clone(),
        set: target.set.clone(),
        deadline: Instant::now() + args.duration,
        ops_cap: args.ops,
        issued: AtomicU64::new(0),
        seed,
        pacing: paced_rate.map(|rate| Pacing::new(rate, concurrency)),
    });
    let pacer = cell.pacing.is_some().then(|| {
        let cell = cell.clone();
        std::thread::spawn(move || {
            if let Some(pacing) = &cell.pacing {
                pacing.release_until(cell.deadline);
            }
        })
    });
    let clock = CpuClock::start(&target.watch.pids);
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|task| tokio::spawn(worker(cell.clone(), task)))
        .collect();
    let mut tally = Tally::default();
    for task in tasks {
        tally.merge(task.await.expect("worker panicked"));
    }
    let elapsed = started.elapsed();
    if let Some(pacer) = pacer {
        pacer.join().expect("pacer panicked");
    }
    let cpu = clock.stop(elapsed);
    let rss = target.watch.end_cell();
    let written = std::mem::take(&mut tally.written);
    if !args.keep_written {
        delete_written(client, written).await;
    }
    build_report(&target.name, &cell, content, concurrency, tally, elapsed, cpu, rss)
}

/// One round of one cell: a run on every target, in turn.
struct RoundCell<'a> {
    client: &'a Client,
    tag: String,
    workload: Workload,
    sizes: &'a SizeSpec,
    content: Content,
    base: &'a Bytes,
    concurrency: usize,
    args: &'a Args,
    seed: u64,
    /// Runs the targets last to first (alternated between rounds and cells).
    reverse: bool,
}

impl RoundCell<'_> {
    /// The reports in the targets' order; `paced_rate` paces every run at that rate.
    async fn run(&self, targets: &mut [Target], paced_rate: Option<f64>) -> Vec<CellReport> {
        let mut order: Vec<usize> = (0..targets.len()).collect();
        if self.reverse {
            order.reverse();
        }
        let mut reports: Vec<Option<CellReport>> = targets.iter().map(|_| None).collect();
        for i in order {
            let report = run_cell(
                self.client,
                &mut targets[i],
                self.tag.clone(),
                self.workload,
                self.sizes,
                self.content,
                self.base,
                self.concurrency,
                self.args,
                self.seed,
                paced_rate,
            )
            .await;
            reports[i] = Some(report);
        }
        reports.into_iter().flatten().collect()
    }
}

/// What [`account`] saw in one round's reports.
struct Seen {
    errors: u64,
    failed_cells: usize,
    /// First ÷ second target (ops/s, p50, p99), when there are two.
    ratios: Option<(f64, f64, f64)>,
}

/// Prints a round's reports (and their ratio) and counts their failures.
fn account(out: &Out, reports: &[CellReport], json: bool) -> Seen {
    let mut seen = Seen {
        errors: 0,
        failed_cells: 0,
        ratios: None,
    };
    for report in reports {
        for line in table_rows(report) {
            out.line(&line);
        }
        for sample in &report.samples {
            eprintln!("  error ({}): {sample}", report.server);
        }
        if json {
            println!("{}", report_json(report));
        }
        if report.total.errors > 0 {
            seen.errors += report.total.errors;
            seen.failed_cells += 1;
            let kinds: Vec<String> = report.error_kinds.iter().map(|(k, v)| format!("{k} x{v}")).collect();
            eprintln!("  errors by kind ({}): {}", report.server, kinds.join(", "));
        }
    }
    if let [ours, theirs] = reports {
        let r = (
            ratio_of(ours.total.ops_per_s, theirs.total.ops_per_s),
            ratio_of(ours.total.p50_ms, theirs.total.p50_ms),
            ratio_of(ours.total.p99_ms, theirs.total.p99_ms),
        );
        out.line(&format!(
            "{:<8} {} ÷ {}: ops/s {}, p50 {}, p99 {}",
            "ratio",
            ours.server,
            theirs.server,
            shown(r.0),
            shown(r.1),
            shown(r.2),
        ));
        seen.ratios = Some(r);
    }
    seen
}

/// The closing table of per-cell ratios: medians over the rounds, and the ops/s range.
fn print_comparison(out: &Out, compared: &[Compared], rounds: usize) {
    if rounds > 1 {
        out.line(&format!(
            "median of {rounds} rounds' ratios; [lowest–highest] ops/s ratio of a round"
        ));
    }
    out.line("workload  size     content        conc   ops/s ratio   p50 ratio   p99 ratio");
    for c in compared {
        let pick = |f: fn(&(f64, f64, f64)) -> f64| median(c.ratios.iter().map(f).collect());
        let spread = if rounds > 1 {
            let ops: Vec<f64> = c.ratios.iter().map(|r| r.0).filter(|r| r.is_finite()).collect();
            let low = ops.iter().copied().fold(f64::INFINITY, f64::min);
            let high = ops.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("   [{}–{}]", shown(low), shown(high))
        } else {
            String::new()
        };
        let failed = if c.errors > 0 {
            format!("   FAILED REQUESTS: {}", c.errors)
        } else {
            String::new()
        };
        out.line(&format!(
            "{} {:>13} {:>11} {:>11}{spread}{failed}",
            c.label,
            shown(pick(|r| r.0)),
            shown(pick(|r| r.1)),
            shown(pick(|r| r.2)),
        ));
    }
}

fn ratio_of(ours: f64, theirs: f64) -> f64 {
    if theirs > 0.0 && ours.is_finite() && theirs.is_finite() {
        ours / theirs
    } else {
        f64::NAN
    }
}

fn shown(ratio: f64) -> String {
    if ratio.is_finite() {
        format!("{ratio:.2}")
    } else {
        "-".into()
    }
}

async fn run(args: Args, mut targets: Vec<Target>) -> ExitCode {
    let out = Out { json: args.json };
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = &args.token {
        let Ok(mut value) = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim())) else {
            eprintln!("loadgen: --token is not a valid header value");
            return ExitCode::from(2);
        };
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let client = Client::builder()
        .default_headers(headers)
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(usize::MAX)
        .timeout(args.timeout)
        .build()
        .expect("HTTP client");
    let nonce: u64 = rand::random();
    let run_tag = format!("{nonce:016x}");

    // Fail early and clearly when nothing is listening.
    for target in &targets {
        let probe = Object::new(&target.url, &format!("{run_tag}/probe"), 0);
        if let Err(failure) = get_miss(&client, &probe).await.result {
            eprintln!(
                "loadgen: {} does not answer as expected: {}",
                target.name,
                failure.describe(Op::GetMiss, &probe.url)
            );
            return ExitCode::FAILURE;
        }
    }

    let ops_text = args.ops.map_or(String::new(), |n| format!(", at most {n} requests"));
    let names: Vec<String> = targets.iter().map(|t| format!("{} {}", t.name, t.url)).collect();
    out.line(&format!(
        "hearth loadgen: {} | {} per cell{ops_text} | run {run_tag} | {} loadgen threads",
        names.join(" vs "),
        humantime::format_duration(args.duration),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    ));
    for target in &mut targets {
        if let Some((rss, hwm)) = target.watch.observe() {
            out.line(&format!(
                "{} pids {:?}: VmRSS {:.1} MiB, VmHWM {:.1} MiB before the run",
                target.name,
                target.watch.pids,
                rss as f64 / 1024.0,
                hwm as f64 / 1024.0
            ));
        }
    }
    out.line("MiB/s counts payload bytes (PUT bodies up, GET-hit bodies down); latency is per request, body included");
    out.line(concat!(
        "cpu% = percent of one core during the cell: srv = the server, gen = this loadgen, ",
        "oth = everything else on the machine (should be ~0 for clean numbers)"
    ));
    if targets.len() > 1 {
        out.line("each cell runs on every server in turn (alternating which goes first), on the same object set");
    }

    let mut failures = Failures::default();
    let mut cell_index = 0usize;
    let mut compared: Vec<Compared> = Vec::new();
    let mut compared_paced: Vec<Compared> = Vec::new();
    for sizes in &args.sizes {
        for &content in &args.content {
            let base = generate(content, sizes.max());
            let needs_set = args
                .workloads
                .iter()
                .any(|w| matches!(w, Workload::GetHit | Workload::Mixed));
            out.line("");
            out.line(&format!(
                "== size {} (mean {:.0} KiB), {} content (zstd -3 ratio {:.2}) ==",
                sizes.label(),
                sizes.mean() / 1024.0,
                content_name(content),
                zstd_ratio(&base),
            ));
            for target in &mut targets {
                target.set = Arc::new(Vec::new());
                if !needs_set {
                    continue;
                }
                let keys = ((args.set_bytes.0 as f64 / sizes.mean()) as usize).clamp(16, args.max_keys.max(16));
                target.watch.start_cell();
                let tag = format!("{run_tag}/{}-{}", sizes.label(), content_name(content));
                let (objects, tally, elapsed) = prepare_set(&client, &target.url, &tag, sizes, &base, keys).await;
                let stored: u64 = objects.iter().map(|o| o.size as u64).sum();
                let errors = tally.errors();
                out.line(&format!(
                    "{}: object set of {keys} keys, {:.1} MiB PUT in {:.2}s ({:.1} MiB/s, 8 at a time), {errors} errors",
                    target.name,
                    stored as f64 / (1024.0 * 1024.0),
                    elapsed.as_secs_f64(),
                    stored as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64().max(1e-9),
                ));
                for sample in &tally.samples {
                    eprintln!("  prepare error: {sample}");
                }
                failures.requests += errors;
                target.set = Arc::new(objects);
            }
            if needs_set {
                // The sets' writes would otherwise be written back during the first cells, on
                // whichever server runs first.
                let started = Instant::now();
                let synced = std::process::Command::new("sync").status().is_ok_and(|s| s.success());
                out.line(&format!(
                    "object sets flushed to disk before the cells (sync: {}, {:.2}s)",
                    if synced { "ok" } else { "failed" },
                    started.elapsed().as_secs_f64()
                ));
            }
            out.line(HEADER);
            for &workload in &args.workloads {
                for &concurrency in &args.concurrency {
                    cell_index += 1;
                    let label = format!(
                        "{:<9} {:<8} {:<14} {:>4}",
                        workload_name(workload),
                        sizes.label(),
                        content_name(content),
                        concurrency
                    );
                    let mut closed_loop = Compared::new(label.clone());
                    let mut paced = Compared::new(label);
                    for round in 0..args.rounds.max(1) {
                        let mut cell = RoundCell {
                            client: &client,
                            tag: format!("{run_tag}/c{cell_index}r{round}"),
                            workload,
                            sizes,
                            content,
                            base: &base,
                            concurrency,
                            args: &args,
                            seed: nonce ^ cell_index as u64 ^ ((round as u64) << 32),
                            reverse: (cell_index + round).is_multiple_of(2),
                        };
                        let reports = cell.run(&mut targets, None).await;
                        closed_loop.add(account(&out, &reports, args.json), &mut failures);
                        // The same cell again, both servers offered the same load.
                        let slower = reports.iter().map(|r| r.total.ops_per_s).fold(f64::INFINITY, f64::min);
                        let compared_pair = reports.len() == 2 && slower.is_finite() && slower > 0.0;
                        if let Some(fraction) = args.paced.filter(|_| compared_pair) {
                            cell.tag.push('p');
                            let reports = cell.run(&mut targets, Some(fraction * slower)).await;
                            paced.add(account(&out, &reports, args.json), &mut failures);
                        }
                    }
                    if args.paced.is_some() {
                        compared_paced.push(paced);
                    }
                    compared.push(closed_loop);
                }
            }
            // The object sets and the shared body of this group are dropped here.
        }
    }

    if targets.len() == 2 {
        out.line("");
        out.line(&format!(
            "== {} ÷ {} (throughput: higher is better for {}; latency: lower is better) ==",
            targets[0].name, targets[1].name, targets[0].name
        ));
        print_comparison(&out, &compared, args.rounds.max(1));
        if let Some(fraction) = args.paced {
            out.line("");
            out.line(&format!(
                "== {} ÷ {} at an equal offered load: paced at {:.0}% of the slower server's throughput in the round (open loop; latency from when each request was due) ==",
                targets[0].name,
                targets[1].name,
                fraction * 100.0
            ));
            print_comparison(&out, &compared_paced, args.rounds.max(1));
        }
    }

    out.line("");
    for target in &mut targets {
        if target.watch.pids.is_empty() {
            continue;
        }
        let last = target.watch.observe();
        let scope = if target.watch.resettable {
            "peak of any cell"
        } else {
            "peak since server start"
        };
        match last {
            Some((rss, _)) => out.line(&format!(
                "{} peak RSS (VmHWM, {scope}): {:.1} MiB; RSS now {:.1} MiB",
                target.name,
                target.watch.peak_hwm_kib as f64 / 1024.0,
                rss as f64 / 1024.0,
            )),
            None => out.line(&format!("{}: a process is gone, no final RSS reading", target.name)),
        }
    }
    if failures.requests > 0 {
        out.line(&format!(
            "FAILED: {} failed requests ({} cells with errors; details on stderr)",
            failures.requests, failures.cells
        ));
        ExitCode::FAILURE
    } else {
        out.line("no failed requests");
        ExitCode::SUCCESS
    }
}
