//! The whole router, in process, on arbitrary requests.
//!
//! Two servers are built once, the way `hearth::server::start` builds one, each with its own
//! SQLite database and blob directory: one in open mode, one secured (namespaces `team`, and
//! `public` with anonymous reads; an admin token, a writer and a reader for `team`). They keep
//! their state from one input to the next.
//!
//! An input is up to four requests separated by a line `####`. Each is written like HTTP/1.1:
//!
//! ```text
//! <flags> <METHOD> <request-target>
//! Name: value
//!
//! body
//! ```
//!
//! `<flags>` is one character: bit 0 picks the secured server, bits 1-2 the credentials it
//! gets unless it has an `Authorization` header (none, admin, writer, reader); as digits: `0`
//! open, `1` secured and anonymous, `3` admin, `5` writer, `7` reader. Requests that hyper
//! would refuse before hearth saw them (bad method, target, header) are skipped; the body is
//! what hyper would hand over: nothing without `Content-Length` or `Transfer-Encoding`, and
//! an error after the declared length if the body is shorter. Admin API requests always go to
//! the secured server, and those that would delete its fixtures are skipped.
//!
//! Invariants: no panic (libFuzzer aborts on any, even one `CatchPanicLayer` would turn into a
//! 500), no 5xx status, a `207` body is well-formed XML, and an object stored with `PUT` (2xx)
//! reads back byte for byte with `GET`. Set `HEARTH_FUZZ_STATE_DIR` to choose where the two
//! servers keep their data (`scripts/fuzz.sh` does, and removes it afterwards), and
//! `HEARTH_FUZZ_VERBOSE` to print every request and its answer when replaying an input.

#![no_main]

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use axum::Router;
use hearth::auth::Scope;
use hearth::cache::{Cache, WriteSettings};
use hearth::config::Config;
use hearth::http::{router, AppState};
use hearth::meta::MetadataStore;
use hearth::metrics::Metrics;
use hearth::size::ByteSize;
use hearth::stats::StatsRecorder;
use libfuzzer_sys::fuzz_target;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use tower::ServiceExt;

/// Small, so that fuzz-sized bodies reach the 413 paths.
const MAX_BODY_SIZE: u64 = 1024;
const MAX_REQUESTS_PER_INPUT: usize = 4;

struct Server {
    state: Arc<AppState>,
    router: Router,
}

struct Fuzzing {
    runtime: tokio::runtime::Runtime,
    open: Server,
    secured: Server,
    /// Admin, writer and reader secrets of the secured server.
    secrets: [String; 3],
    inputs: AtomicU64,
    /// `HEARTH_FUZZ_VERBOSE` set: print every request and its status (to replay an input).
    verbose: bool,
}

static FUZZING: OnceLock<Fuzzing> = OnceLock::new();

fn state_dir() -> PathBuf {
    match std::env::var_os("HEARTH_FUZZ_STATE_DIR") {
        Some(dir) => PathBuf::from(dir),
        // libFuzzer ends the process with exit(): nothing would delete a TempDir, so keep it.
        None => tempfile::Builder::new()
            .prefix("hearth-fuzz-")
            .tempdir()
            .expect("temporary directory")
            .keep(),
    }
}

async fn server(dir: &Path) -> Server {
    let config = Config {
        data_dir: dir.to_path_buf(),
        database_url: format!("sqlite://{}", dir.join("hearth.db").display()),
        max_body_size: ByteSize(MAX_BODY_SIZE),
        max_concurrent_uploads: 4,
        ..Config::default()
    };
    // As hearth::server::start does, less the listener and the background tasks.
    let meta = hearth::server::open_metadata(&config).await.expect("metadata store");
    meta.migrate().await.expect("migrations");
    let blobs = hearth::server::open_blobs(&config).await.expect("blob store");
    let metrics = Arc::new(Metrics::new());
    metrics.storage_budget_bytes.set(config.max_size.0 as i64);
    let stats = StatsRecorder::with_metrics(metrics.clone());
    let write = WriteSettings {
        max_body_size: config.max_body_size.0,
        compression_level: config.compression_level,
        memory_cache_bytes: config.memory_cache_size.0,
    };
    let state = Arc::new(AppState {
        cache: Cache::new(meta.clone(), blobs, stats.clone(), write),
        access: hearth::access::AccessControl::new(meta, stats),
        metrics,
        uploads: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_uploads as usize)),
        started_at: hearth::time::unix_now(),
    });
    Server {
        router: router(state.clone()),
        state,
    }
}

fn fuzzing() -> &'static Fuzzing {
    FUZZING.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let root = state_dir();
        let (open, secured, secrets) = runtime.block_on(async {
            let open = server(&root.join("open")).await;
            let secured = server(&root.join("secured")).await;
            let meta = secured.state.cache.meta();
            hearth::admin::create_namespace(meta, "team", None, false)
                .await
                .expect("namespace");
            hearth::admin::create_namespace(meta, "public", None, true)
                .await
                .expect("namespace");
            let mut secrets = Vec::new();
            for (namespace, scope, label) in [
                (None, Scope::Admin, "admin"),
                (Some("team"), Scope::Write, "writer"),
                (Some("team"), Scope::Read, "reader"),
            ] {
                let created = hearth::admin::create_token(meta, namespace, scope, label)
                    .await
                    .expect("token");
                secrets.push(created.secret);
            }
            (open, secured, secrets.try_into().expect("three secrets"))
        });
        Fuzzing {
            runtime,
            open,
            secured,
            secrets,
            inputs: AtomicU64::new(0),
            verbose: std::env::var_os("HEARTH_FUZZ_VERBOSE").is_some(),
        }
    })
}

/// One request as hyper would have handed it to hearth, or `None` if hyper would have refused it.
struct Parsed {
    secured: bool,
    request: Request<Body>,
    /// The bytes the handler can read, when the body is complete.
    body: Option<Bytes>,
}

fn parse(text: &[u8], secrets: &[String; 3]) -> Option<Parsed> {
    let (head, body) = match find(text, b"\n\n").or_else(|| find(text, b"\r\n\r\n").map(|at| at + 1)) {
        Some(at) => (&text[..at], &text[at + 2..]),
        None => (text, &b""[..]),
    };
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let first = lines.next()?;
    let mut words = first.splitn(3, |&b| b == b' ');
    let flags = *words.next()?.first()?;
    let method = Method::from_bytes(words.next()?).ok()?;
    let uri = Uri::try_from(words.next()?).ok()?;
    // An origin-form target, as a client sends it to a server.
    if uri.scheme().is_some() || uri.authority().is_some() || !uri.path().starts_with('/') {
        return None;
    }
    if removes_fixture(&method, &uri) {
        return None;
    }
    let secured = flags & 1 == 1 || is_admin_api(&uri);
    let mut builder = Request::builder().method(method).uri(uri);
    let mut has_authorization = false;
    for line in lines.filter(|line| !line.is_empty()) {
        let colon = line.iter().position(|&b| b == b':')?;
        let name = HeaderName::from_bytes(&line[..colon]).ok()?;
        let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).ok()?;
        has_authorization |= name == header::AUTHORIZATION;
        builder = builder.header(name, value);
    }
    let credential = usize::from((flags >> 1) & 3);
    if !has_authorization && credential > 0 {
        let value = format!("Bearer {}", secrets[credential - 1]);
        builder = builder.header(header::AUTHORIZATION, value);
    }
    let headers = builder.headers_ref()?;
    let lengths: Vec<&HeaderValue> = headers.get_all(header::CONTENT_LENGTH).iter().collect();
    let chunked = headers.contains_key(header::TRANSFER_ENCODING);
    let (request_body, complete) = if chunked {
        // hyper refuses Content-Length next to Transfer-Encoding.
        if !lengths.is_empty() {
            return None;
        }
        let bytes = Bytes::copy_from_slice(body);
        (Body::from(bytes.clone()), Some(bytes))
    } else if let Some(first) = lengths.first() {
        if lengths.iter().any(|v| v != first) {
            return None;
        }
        let declared: usize = first.to_str().ok()?.trim().parse().ok()?;
        if body.len() >= declared {
            let bytes = Bytes::copy_from_slice(&body[..declared]);
            (Body::from(bytes.clone()), Some(bytes))
        } else {
            // The client hung up before sending everything it announced.
            let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(Bytes::copy_from_slice(body)),
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed",
                )),
            ];
            (Body::from_stream(futures_stream(chunks)), None)
        }
    } else {
        (Body::empty(), Some(Bytes::new()))
    };
    Some(Parsed {
        secured,
        request: builder.body(request_body).ok()?,
        body: complete,
    })
}

fn futures_stream(
    items: Vec<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    futures_util::stream::iter(items)
}

/// Requests to the admin API go to the secured server: in open mode anyone may create the
/// first token, which would secure the open server for the rest of the run.
fn is_admin_api(uri: &Uri) -> bool {
    uri.path().contains("_hearth")
}

/// Revoking the fixture tokens or deleting the fixture namespaces would leave the rest of the
/// run without them; every other admin request is fair game.
fn removes_fixture(method: &Method, uri: &Uri) -> bool {
    if method != Method::DELETE || !is_admin_api(uri) {
        return false;
    }
    let last = uri.path().rsplit('/').next().unwrap_or_default();
    let last = percent_encoding::percent_decode_str(last).decode_utf8_lossy();
    // Tokens are named by label or by id (1-3 here, however the number is written).
    ["admin", "writer", "reader", "team", "public"].contains(&&*last) || last.parse::<i64>().is_ok_and(|id| id <= 3)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Splits the input into requests at lines `####`.
fn requests(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while out.len() < MAX_REQUESTS_PER_INPUT {
        match find(rest, b"\n####\n") {
            Some(at) => {
                out.push(&rest[..at]);
                rest = &rest[at + 6..];
            }
            None => {
                out.push(rest);
                break;
            }
        }
    }
    out
}

async fn send(router: &Router, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Bytes) {
    let response = router.clone().oneshot(request).await.expect("infallible");
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.expect("response body");
    (parts.status, parts.headers, body)
}

fn describe(request: &Request<Body>) -> String {
    format!("{} {} {:?}", request.method(), request.uri(), request.headers())
}

async fn run(fuzzing: &Fuzzing, parsed: Parsed) {
    let server = if parsed.secured {
        &fuzzing.secured
    } else {
        &fuzzing.open
    };
    let what = describe(&parsed.request);
    let method = parsed.request.method().clone();
    let uri = parsed.request.uri().clone();
    let authorization = parsed.request.headers().get(header::AUTHORIZATION).cloned();
    let (status, headers, body) = send(&server.router, parsed.request).await;
    if fuzzing.verbose {
        let server = if parsed.secured { "secured" } else { "open" };
        eprintln!("{server}: {what} → {status} {:?}", String::from_utf8_lossy(&body));
    }
    assert!(
        !status.is_server_error(),
        "{status} for {what}: {}",
        String::from_utf8_lossy(&body)
    );
    if status == StatusCode::MULTI_STATUS {
        let text = std::str::from_utf8(&body).expect("207 body is UTF-8");
        if let Err(e) = roxmltree::Document::parse(text) {
            panic!("207 body is not well-formed XML ({e}) for {what}:\n{text}");
        }
    }
    if status == StatusCode::OK && method == Method::GET {
        if let Some(length) = headers.get(header::CONTENT_LENGTH) {
            let length: usize = length.to_str().expect("ASCII").parse().expect("a number");
            assert_eq!(length, body.len(), "Content-Length of {what}");
        }
    }
    // What was stored reads back the same.
    if method == Method::PUT && status.is_success() {
        let sent = parsed.body.expect("a PUT with an incomplete body cannot succeed");
        let mut get = Request::builder().method(Method::GET).uri(uri);
        if let Some(authorization) = authorization {
            get = get.header(header::AUTHORIZATION, authorization);
        }
        let (status, _, got) = send(&server.router, get.body(Body::empty()).expect("request")).await;
        if fuzzing.verbose {
            eprintln!("  read back: {status}, {} bytes", got.len());
        }
        assert_eq!(status, StatusCode::OK, "GET after a successful {what}");
        assert!(got == sent, "GET after {what} returned other bytes");
    }
}

fuzz_target!(|data: &[u8]| {
    let fuzzing = fuzzing();
    let requests: Vec<Parsed> = requests(data)
        .into_iter()
        .filter_map(|text| parse(text, &fuzzing.secrets))
        .collect();
    fuzzing.runtime.block_on(async {
        for parsed in requests {
            run(fuzzing, parsed).await;
        }
        // What the stats flusher does every few seconds in a server.
        if fuzzing.inputs.fetch_add(1, Ordering::Relaxed) % 256 == 255 {
            for server in [&fuzzing.open, &fuzzing.secured] {
                server
                    .state
                    .cache
                    .stats()
                    .flush(server.state.cache.meta())
                    .await
                    .expect("statistics flush");
            }
        }
    });
});
