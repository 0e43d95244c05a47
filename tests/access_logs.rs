//! Secrets never reach the logs. A global tracing subscriber captures everything at TRACE level
//! (compact and JSON formats, span events included) while a server sees valid, invalid,
//! malformed and revoked secrets over Bearer and Basic, and the admin API creates, lists and
//! revokes tokens. None of the secrets, nor their Basic encodings, may appear in the output.
//!
//! Its own test binary, because it installs the process-wide subscriber.
#[path = "it/common/mod.rs"]
mod common;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use common::{start_server, Db, TestServer};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex, OnceLock};
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;

/// Everything every subscriber layer wrote.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

/// Installs the capturing subscriber once for the whole binary (both tests share it).
fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = Capture::default();
        // No filter: every level (TRACE included) of every target reaches both layers.
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(capture.clone())
                    .with_ansi(false)
                    .with_span_events(FmtSpan::FULL),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(true)
                    .with_writer(capture.clone())
                    .with_span_events(FmtSpan::FULL),
            );
        tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber");
        capture
    })
}

struct Caller<'a> {
    t: &'a TestServer,
}

impl Caller<'_> {
    async fn call(&self, method: &str, path: &str, auth: Option<&str>, body: Option<Value>) -> (u16, String) {
        let mut request = self.t.request(method, path);
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(body.to_string());
        } else if method == "PUT" {
            request = request.body("payload");
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    async fn token(&self, admin: Option<&str>, namespace: Option<&str>, scope: &str, label: &str) -> String {
        let auth = admin.map(|s| format!("Bearer {s}"));
        let (status, body) = self
            .call(
                "POST",
                "/_hearth/api/tokens",
                auth.as_deref(),
                Some(json!({ "namespace": namespace, "scope": scope, "label": label })),
            )
            .await;
        assert_eq!(status, 201, "create token {label}");
        let body: Value = serde_json::from_str(&body).expect("JSON");
        body["secret"].as_str().expect("secret").to_string()
    }
}

/// Every way a secret could show up in a log: itself, its random part, and the Basic header
/// values that carry it (every alphabet and padding, with each user name used below).
fn needles(secret: &str) -> Vec<String> {
    let mut out = vec![
        secret.to_string(),
        secret[hearth::auth::SECRET_PREFIX.len()..].to_string(),
    ];
    for user in ["ci", "dev", "", "x"] {
        for pair in [format!("{user}:{secret}"), format!("{secret}:")] {
            for encoded in [
                STANDARD.encode(&pair),
                STANDARD_NO_PAD.encode(&pair),
                URL_SAFE.encode(&pair),
                URL_SAFE_NO_PAD.encode(&pair),
            ] {
                out.push(encoded);
            }
        }
    }
    out
}

fn basic(user: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{secret}")))
}

async fn secrets_never_reach_the_logs(db: Db) {
    let capture = capture();
    let mut t = start_server(db).await;
    let c = Caller { t: &t };
    // Open mode: the first token, anonymously. Then namespaces and tokens in secured mode.
    let root = c.token(None, None, "admin", "root").await;
    let (status, _) = c
        .call(
            "POST",
            "/_hearth/api/namespaces",
            Some(&format!("Bearer {root}")),
            Some(json!({"name": "team"})),
        )
        .await;
    assert_eq!(status, 201);
    let ci = c.token(Some(&root), Some("team"), "write", "ci").await;
    let dev = c.token(Some(&root), Some("team"), "read", "dev").await;
    let library = hearth::admin::create_token(t.meta(), None, hearth::auth::Scope::Read, "library")
        .await
        .expect("library token")
        .secret;
    // Never-issued secrets that look real.
    let unknown = hearth::auth::new_secret();
    let unknown_basic = hearth::auth::new_secret();

    // Valid use, Bearer and Basic (both alphabets).
    let ci_bearer = format!("Bearer {ci}");
    assert_eq!(c.call("PUT", "/team/k", Some(&ci_bearer), None).await.0, 201);
    assert_eq!(c.call("GET", "/team/k", Some(&ci_bearer), None).await.0, 200);
    assert_eq!(c.call("GET", "/team/k", Some(&basic("dev", &dev)), None).await.0, 200);
    let url_safe = format!("Basic {}", URL_SAFE.encode(format!("dev:{dev}")));
    assert_eq!(c.call("PROPFIND", "/team/", Some(&url_safe), None).await.0, 207);
    assert_eq!(c.call("PUT", "/team/k", Some(&basic("dev", &dev)), None).await.0, 403);
    assert_eq!(c.call("GET", "/team/k", Some(&basic(&dev, "")), None).await.0, 200);
    // Invalid and malformed, some carrying a valid secret.
    for (auth, expected) in [
        (format!("Bearer {unknown}"), 401),
        (basic("x", &unknown_basic), 401),
        (format!("Bearer {ci} junk"), 400),
        (format!("Basic {}", STANDARD.encode(&ci)), 400),
        (format!("Digest {ci}"), 400),
        (format!("Bearer {dev}"), 403), // read token writing
    ] {
        assert_eq!(c.call("PUT", "/team/k2", Some(&auth), None).await.0, expected, "{auth}");
    }
    assert_eq!(
        c.call("GET", "/team/k", Some(&format!("Bearer {library}")), None)
            .await
            .0,
        200
    );
    // Admin API: listings, statistics, a namespace round trip, revocation with purge.
    let r = format!("Bearer {root}");
    for path in ["/_hearth/api/tokens", "/_hearth/api/namespaces", "/_hearth/api/stats"] {
        assert_eq!(c.call("GET", path, Some(&r), None).await.0, 200, "{path}");
    }
    assert_eq!(
        c.call("GET", "/_hearth/api/tokens", Some(&format!("Bearer {ci}")), None)
            .await
            .0,
        403
    );
    let (status, _) = c
        .call(
            "POST",
            "/_hearth/api/namespaces",
            Some(&r),
            Some(json!({"name": "tmp"})),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        c.call("DELETE", "/_hearth/api/namespaces/tmp", Some(&r), None).await.0,
        204
    );
    assert_eq!(
        c.call("DELETE", "/_hearth/api/tokens/ci?purge=true", Some(&r), None)
            .await
            .0,
        200
    );
    // Revoked secrets.
    assert_eq!(c.call("GET", "/team/k", Some(&ci_bearer), None).await.0, 401);
    assert_eq!(c.call("GET", "/team/k", Some(&basic("ci", &ci)), None).await.0, 401);
    assert_eq!(c.call("PUT", "/team/k", Some(&basic(&ci, "")), None).await.0, 401);
    // A restart flushes last-used times; then stop for good.
    t.restart().await;
    let c = Caller { t: &t };
    assert_eq!(c.call("GET", "/team/k", Some(&basic("dev", &dev)), None).await.0, 404);
    t.stop().await;

    let output = capture.text();
    // The capture works, and saw this server's requests and its database work.
    assert!(output.len() > 10_000, "suspiciously little output: {output}");
    for marker in [
        "/_hearth/api/tokens",
        "/team/k",
        "tokens",
        "\"level\":\"DEBUG\"",
        " DEBUG ",
    ] {
        assert!(output.contains(marker), "capture misses {marker:?}");
    }
    for (name, secret) in [
        ("root", &root),
        ("ci", &ci),
        ("dev", &dev),
        ("library", &library),
        ("unknown", &unknown),
        ("unknown (Basic)", &unknown_basic),
    ] {
        for needle in needles(secret) {
            if let Some(at) = output.find(&needle) {
                let start = output[..at].rfind('\n').map_or(0, |i| i + 1);
                let end = output[at..].find('\n').map_or(output.len(), |i| at + i);
                panic!("the {name} secret is logged (as {needle:?}):\n{}", &output[start..end]);
            }
        }
        let hash = hearth::auth::secret_hash(secret);
        if output.contains(&hash) {
            eprintln!("note: the hash of the {name} secret is logged (not a secret, but noted)");
        }
    }
    eprintln!("{db:?}: {} bytes of log output checked", output.len());
}

on_both_databases!(secrets_never_reach_the_logs);
