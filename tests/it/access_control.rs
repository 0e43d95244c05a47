//! Access control end to end, on both databases: open mode, the switch to secured mode, every
//! scope and namespace rule, both credential schemes, revocation (admin API and CLI), "who
//! wrote what" with `--purge`, last-used times and per-label statistics, secrets stored only
//! as hashes, and a bad-input suite on the `Authorization` header.
use crate::common;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use common::{eventually, raw_http, start_server, start_server_with, Db, TestServer};
use hearth::meta::MetadataStore;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// How long a change made outside the server (CLI, direct database) may take to be seen:
/// hearth's cache TTL plus a generous margin for a loaded 2-core machine.
const OUT_OF_BAND_SECS: u64 = hearth::access::CACHE_TTL.as_secs() + 15;

/// A token as the admin API or the CLI returned it.
#[derive(Clone, Debug)]
struct Token {
    id: i64,
    secret: String,
}

impl Token {
    fn bearer(&self) -> String {
        bearer(&self.secret)
    }
}

fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

/// `method path` with an optional `Authorization` value and body.
async fn send(t: &TestServer, method: &str, path: &str, auth: Option<&str>, body: Option<&[u8]>) -> reqwest::Response {
    let mut request = t.request(method, path);
    if let Some(auth) = auth {
        request = request.header(AUTHORIZATION, auth);
    }
    if method == "PROPFIND" {
        request = request.header("Depth", "0");
    }
    if let Some(body) = body {
        request = request.body(body.to_vec());
    }
    request.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

async fn status_of(t: &TestServer, method: &str, path: &str, auth: Option<&str>, body: Option<&[u8]>) -> u16 {
    send(t, method, path, auth, body).await.status().as_u16()
}

/// Asserts `method path` answers `expected`, naming the request on failure.
async fn expect(t: &TestServer, method: &str, path: &str, auth: Option<&str>, body: Option<&[u8]>, expected: u16) {
    let response = send(t, method, path, auth, body).await;
    let got = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    assert_eq!(
        got,
        expected,
        "{method} {path} with {:?}: {text}",
        auth.map(|a| a.split(' ').next().unwrap_or(""))
    );
}

/// The body of a GET that must succeed.
async fn get_bytes(t: &TestServer, path: &str, auth: Option<&str>) -> Vec<u8> {
    let response = send(t, "GET", path, auth, None).await;
    assert_eq!(response.status(), 200, "GET {path}");
    response.bytes().await.expect("body").to_vec()
}

/// A 401 that asks for both schemes clients use.
fn assert_challenge(response: &reqwest::Response, what: &str) {
    assert_eq!(response.status(), 401, "{what}");
    let challenges: Vec<String> = response
        .headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .map(|v| v.to_str().expect("ASCII challenge").to_string())
        .collect();
    assert_eq!(challenges.len(), 2, "{what}: {challenges:?}");
    assert!(
        challenges.iter().any(|c| c.starts_with("Bearer ")),
        "{what}: {challenges:?}"
    );
    assert!(
        challenges.iter().any(|c| c.starts_with("Basic ")),
        "{what}: {challenges:?}"
    );
}

async fn expect_challenge(t: &TestServer, method: &str, path: &str, auth: Option<&str>, body: Option<&[u8]>) {
    let response = send(t, method, path, auth, body).await;
    assert_challenge(&response, &format!("{method} {path}"));
}

/// A 403: the credentials are fine but not enough, so no challenge.
async fn expect_forbidden(t: &TestServer, method: &str, path: &str, auth: &str, body: Option<&[u8]>) {
    let response = send(t, method, path, Some(auth), body).await;
    assert_eq!(response.status(), 403, "{method} {path}");
    assert!(
        response.headers().get(WWW_AUTHENTICATE).is_none(),
        "{method} {path}: a 403 must not ask for other credentials"
    );
}

/// A JSON admin API call; returns the status and the parsed body (`Null` when empty).
async fn api(t: &TestServer, method: &str, path: &str, auth: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let mut request = t.request(method, path);
    if let Some(auth) = auth {
        request = request.header(AUTHORIZATION, auth);
    }
    if let Some(body) = body {
        request = request
            .header(CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&body).unwrap());
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = response.status().as_u16();
    let bytes = response.bytes().await.expect("body");
    // Refusals by the access rules (401/403) are plain text, everything else JSON.
    let value = if bytes.is_empty() {
        Value::Null
    } else if status == 401 || status == 403 {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
    };
    (status, value)
}

/// Creates a token through the admin API (`admin` = None: anonymous, for open mode).
async fn api_token(t: &TestServer, admin: Option<&Token>, namespace: Option<&str>, scope: &str, label: &str) -> Token {
    let auth = admin.map(Token::bearer);
    let (status, body) = api(
        t,
        "POST",
        "/_hearth/api/tokens",
        auth.as_deref(),
        Some(json!({ "namespace": namespace, "scope": scope, "label": label })),
    )
    .await;
    assert_eq!(status, 201, "create token {label}: {body}");
    assert_eq!(body["token"]["label"], label, "{body}");
    assert_eq!(body["token"]["scope"], scope, "{body}");
    assert_eq!(body["token"]["namespace"], json!(namespace), "{body}");
    assert!(body["token"].get("secret_hash").is_none(), "{body}");
    let secret = body["secret"].as_str().expect("secret").to_string();
    assert!(secret.starts_with(hearth::auth::SECRET_PREFIX), "{secret}");
    Token {
        id: body["token"]["id"].as_i64().expect("id"),
        secret,
    }
}

async fn api_namespace(t: &TestServer, admin: Option<&Token>, name: &str, anonymous_read: bool) {
    let auth = admin.map(Token::bearer);
    let (status, body) = api(
        t,
        "POST",
        "/_hearth/api/namespaces",
        auth.as_deref(),
        Some(json!({ "name": name, "anonymous_read": anonymous_read })),
    )
    .await;
    assert_eq!(status, 201, "create namespace {name}: {body}");
    assert_eq!(body["name"], name);
    assert_eq!(body["anonymous_read"], anonymous_read);
}

/// A server switched to secured mode by an admin token for all namespaces (label `root`),
/// created anonymously while the server was still open, with namespaces `team` and `other`.
async fn secured_with(db: Db, tweak: impl FnOnce(&mut hearth::config::Config)) -> (TestServer, Token) {
    let t = start_server_with(db, tweak).await;
    let root = api_token(&t, None, None, "admin", "root").await;
    api_namespace(&t, Some(&root), "team", false).await;
    api_namespace(&t, Some(&root), "other", false).await;
    (t, root)
}

async fn secured(db: Db) -> (TestServer, Token) {
    secured_with(db, |_| {}).await
}

async fn writer_of(t: &TestServer, namespace: &str, key: &str) -> Option<Option<i64>> {
    t.meta()
        .lookup(namespace, key)
        .await
        .expect("lookup")
        .map(|e| e.writer_token_id)
}

/// Runs the `hearth` binary against the test server's database, with tracing at its most
/// verbose so that stderr would show any secret the CLI logs. Returns (success, stdout, stderr).
async fn hearth_cli(t: &TestServer, args: &[&str]) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_hearth"));
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if text.starts_with("HEARTH_") || text == "RUST_LOG" {
            cmd.env_remove(&name);
        }
    }
    cmd.args(args)
        .arg("--database-url")
        .arg(&t.db.url)
        .arg("--data-dir")
        .arg(&t.config.data_dir)
        .env("HEARTH_LOG", "trace")
        .stdin(std::process::Stdio::null());
    let out = cmd.output().await.expect("run hearth");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// `hearth token create …`: the secret is alone on the last line of stdout, appears nowhere
/// else in stdout and never on stderr.
async fn cli_token(t: &TestServer, args: &[&str]) -> Token {
    let mut all = vec!["token", "create"];
    all.extend_from_slice(args);
    let (ok, stdout, stderr) = hearth_cli(t, &all).await;
    assert!(ok, "hearth {all:?} failed:\n{stdout}\n{stderr}");
    let last = stdout
        .trim_end_matches('\n')
        .lines()
        .last()
        .expect("output")
        .to_string();
    assert!(
        last.starts_with(hearth::auth::SECRET_PREFIX) && last.len() == 47 && !last.contains(' '),
        "last line is not a secret alone: {stdout:?}"
    );
    assert_eq!(stdout.matches(&last).count(), 1, "secret printed twice: {stdout}");
    assert!(!stderr.contains(&last), "secret on stderr: {stderr}");
    assert!(!stderr.contains(&last[4..]), "secret on stderr: {stderr}");
    let id = t
        .meta()
        .list_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.id)
        .max()
        .expect("a token");
    Token { id, secret: last }
}

// ---------------------------------------------------------------------------------------------
// Open mode and the switch to secured mode.

async fn open_mode_is_unchanged(db: Db) {
    let t = start_server(db).await;
    expect(&t, "PUT", "/fresh/a/b/k", None, Some(b"payload"), 201).await;
    assert_eq!(get_bytes(&t, "/fresh/a/b/k", None).await, b"payload");
    expect(&t, "PROPFIND", "/fresh/a/b/", None, None, 207).await;
    expect(&t, "MKCOL", "/fresh/a/", None, None, 201).await;
    expect(&t, "GET", "/fresh/.sccache_check", None, None, 404).await;
    let names: Vec<String> = t
        .meta()
        .list_namespaces()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["fresh"], "open mode creates namespaces on first write");
    assert_eq!(writer_of(&t, "fresh", "a/b/k").await, Some(None), "anonymous writer");
    expect(&t, "DELETE", "/fresh/a/b/k", None, None, 204).await;
    // The admin API is open too (so that the first token can be created), and lists nothing.
    let (status, tokens) = api(&t, "GET", "/_hearth/api/tokens", None, None).await;
    assert_eq!((status, tokens), (200, json!([])));
    t.stop().await;
}

async fn first_token_via_api_secures_the_server(db: Db) {
    let t = start_server(db).await;
    expect(&t, "PUT", "/early/k", None, Some(b"written while open"), 201).await;
    let root = api_token(&t, None, None, "admin", "root").await;
    // At once (the server's own API invalidates its caches): anonymous requests need a token.
    for (method, path, body) in [
        ("GET", "/early/k", None),
        ("HEAD", "/early/k", None),
        ("PROPFIND", "/early/", None),
        ("GET", "/early/.sccache_check", None),
        ("PUT", "/early/k2", Some(&b"x"[..])),
        ("PUT", "/brand-new/k", Some(&b"x"[..])),
        ("MKCOL", "/early/d/", None),
        ("DELETE", "/early/k", None),
    ] {
        expect_challenge(&t, method, path, None, body).await;
    }
    let response = send(&t, "GET", "/_hearth/api/tokens", None, None).await;
    assert_challenge(&response, "anonymous admin API");
    let (status, _) = api(
        &t,
        "POST",
        "/_hearth/api/tokens",
        None,
        Some(json!({"namespace": null, "scope": "admin", "label": "intruder"})),
    )
    .await;
    assert_eq!(status, 401, "a second token needs an admin token");
    // Nothing was created by the refused requests; what was written while open stays.
    let names: Vec<String> = t
        .meta()
        .list_namespaces()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["early"]);
    assert_eq!(t.meta().list_tokens().await.unwrap().len(), 1);
    assert_eq!(
        get_bytes(&t, "/early/k", Some(&root.bearer())).await,
        b"written while open"
    );
    t.stop().await;
}

/// A token created behind the server's back (another process, here the library on the same
/// database) secures the server within the cache TTL.
async fn token_created_out_of_band_secures_within_the_ttl(db: Db) {
    let t = start_server(db).await;
    expect(&t, "PUT", "/ns/k", None, Some(b"v"), 201).await;
    expect(&t, "GET", "/ns/k", None, None, 200).await; // primes the "open" cache
    let created = hearth::admin::create_token(t.meta(), None, hearth::auth::Scope::Write, "oob")
        .await
        .unwrap();
    let started = Instant::now();
    let secured = eventually(OUT_OF_BAND_SECS, || async {
        status_of(&t, "GET", "/ns/k", None, None).await == 401
    })
    .await;
    assert!(
        secured,
        "still open {:?} after the token was created",
        started.elapsed()
    );
    eprintln!("out-of-band token seen after {:?}", started.elapsed());
    expect(&t, "GET", "/ns/k", Some(&bearer(&created.secret)), None, 200).await;
    expect(&t, "PUT", "/ns/k2", Some(&bearer(&created.secret)), Some(b"w"), 201).await;
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Scopes and namespaces.

async fn anonymous_read_namespace(db: Db) {
    let (t, root) = secured(db).await;
    api_namespace(&t, Some(&root), "public", true).await;
    let r = root.bearer();
    expect(&t, "PUT", "/public/a/obj", Some(&r), Some(b"shared"), 201).await;
    expect(&t, "PUT", "/team/a/obj", Some(&r), Some(b"private"), 201).await;
    // Anonymous reads work on the anonymous-read namespace ...
    assert_eq!(get_bytes(&t, "/public/a/obj", None).await, b"shared");
    expect(&t, "HEAD", "/public/a/obj", None, None, 200).await;
    expect(&t, "GET", "/public/a/missing", None, None, 404).await;
    expect(&t, "GET", "/public/.sccache_check", None, None, 404).await;
    expect(&t, "PROPFIND", "/public/", None, None, 207).await;
    expect(&t, "PROPFIND", "/public/a/obj", None, None, 207).await;
    // ... writes never do ...
    expect_challenge(&t, "PUT", "/public/a/obj", None, Some(b"poison")).await;
    expect_challenge(&t, "PUT", "/public/.sccache_check", None, Some(b"Hello, World!")).await;
    expect_challenge(&t, "MKCOL", "/public/b/", None, None).await;
    expect_challenge(&t, "DELETE", "/public/a/obj", None, None).await;
    assert_eq!(get_bytes(&t, "/public/a/obj", None).await, b"shared");
    // ... and other namespaces stay closed.
    expect_challenge(&t, "GET", "/team/a/obj", None, None).await;
    expect_challenge(&t, "PROPFIND", "/team/", None, None).await;
    // An invalid token is refused even where anonymous reads are allowed.
    expect_challenge(&t, "GET", "/public/a/obj", Some("Bearer hth_not-a-real-token"), None).await;
    t.stop().await;
}

async fn read_token_reads_and_gets_403_on_writes(db: Db) {
    let (t, root) = secured(db).await;
    let ci = api_token(&t, Some(&root), Some("team"), "write", "ci").await;
    let dev = api_token(&t, Some(&root), Some("team"), "read", "dev").await;
    let (w, r) = (ci.bearer(), dev.bearer());
    expect(&t, "PUT", "/team/a/b/obj", Some(&w), Some(b"payload"), 201).await;
    // Reads behave exactly as for anyone else: hit, miss, absent probe, PROPFIND.
    assert_eq!(get_bytes(&t, "/team/a/b/obj", Some(&r)).await, b"payload");
    expect(&t, "HEAD", "/team/a/b/obj", Some(&r), None, 200).await;
    expect(&t, "GET", "/team/a/b/missing", Some(&r), None, 404).await;
    expect(&t, "GET", "/team/.sccache_check", Some(&r), None, 404).await;
    expect(&t, "PROPFIND", "/team/", Some(&r), None, 207).await;
    expect(&t, "PROPFIND", "/team/a/b/", Some(&r), None, 207).await;
    expect(&t, "PROPFIND", "/team/a/b/obj", Some(&r), None, 207).await;
    expect(&t, "PROPFIND", "/team/a/b/missing", Some(&r), None, 404).await;
    expect(&t, "OPTIONS", "/team/", Some(&r), None, 200).await;
    // Every write is a clean 403 (sccache's write probe included), and changes nothing.
    expect_forbidden(&t, "PUT", "/team/.sccache_check", &r, Some(b"Hello, World!")).await;
    expect_forbidden(&t, "PUT", "/team/a/b/obj", &r, Some(b"poison")).await;
    expect_forbidden(&t, "PUT", "/team/a/b/new", &r, Some(b"new")).await;
    expect_forbidden(&t, "MKCOL", "/team/a/", &r, None).await;
    expect_forbidden(&t, "MKCOL", "/team/z/", &r, None).await;
    expect_forbidden(&t, "DELETE", "/team/a/b/obj", &r, None).await;
    expect_forbidden(&t, "DELETE", "/team/a/b/missing", &r, None).await;
    assert_eq!(get_bytes(&t, "/team/a/b/obj", Some(&r)).await, b"payload");
    assert_eq!(writer_of(&t, "team", "a/b/obj").await, Some(Some(ci.id)));
    assert_eq!(writer_of(&t, "team", "a/b/new").await, None);
    assert_eq!(writer_of(&t, "team", ".sccache_check").await, None);
    // The same rules through Basic auth.
    let r_basic = basic("dev", &dev.secret);
    expect(&t, "GET", "/team/a/b/obj", Some(&r_basic), None, 200).await;
    expect_forbidden(&t, "PUT", "/team/a/b/obj", &r_basic, Some(b"poison")).await;
    t.stop().await;
}

async fn write_token_reads_and_writes(db: Db) {
    let (t, root) = secured(db).await;
    let ci = api_token(&t, Some(&root), Some("team"), "write", "ci").await;
    let w = ci.bearer();
    expect(&t, "GET", "/team/.sccache_check", Some(&w), None, 404).await;
    expect(&t, "PROPFIND", "/team/", Some(&w), None, 207).await;
    expect(&t, "PUT", "/team/.sccache_check", Some(&w), Some(b"Hello, World!"), 201).await;
    expect(&t, "PUT", "/team/.sccache_check", Some(&w), Some(b"Hello, World!"), 204).await;
    expect(&t, "MKCOL", "/team/a/", Some(&w), None, 201).await;
    expect(&t, "PUT", "/team/a/k", Some(&w), Some(b"one"), 201).await;
    expect(&t, "PUT", "/team/a/k", Some(&w), Some(b"two"), 204).await;
    assert_eq!(get_bytes(&t, "/team/a/k", Some(&w)).await, b"two");
    expect(&t, "HEAD", "/team/a/k", Some(&w), None, 200).await;
    expect(&t, "DELETE", "/team/a/k", Some(&w), None, 204).await;
    expect(&t, "DELETE", "/team/a/k", Some(&w), None, 404).await;
    expect(&t, "GET", "/team/a/k", Some(&w), None, 404).await;
    // A write token is no admin token.
    let (status, _) = api(&t, "GET", "/_hearth/api/tokens", Some(&w), None).await;
    assert_eq!(status, 403);
    t.stop().await;
}

async fn tokens_are_limited_to_their_namespace(db: Db) {
    let (t, root) = secured(db).await;
    let ci = api_token(&t, Some(&root), Some("team"), "write", "ci").await;
    let dev = api_token(&t, Some(&root), Some("team"), "read", "dev").await;
    let ops = api_token(&t, Some(&root), Some("other"), "admin", "ops").await;
    expect(&t, "PUT", "/other/k", Some(&root.bearer()), Some(b"theirs"), 201).await;
    expect(&t, "PUT", "/team/k", Some(&ci.bearer()), Some(b"ours"), 201).await;
    for (who, token) in [("write", &ci), ("read", &dev)] {
        for scheme in [token.bearer(), basic(who, &token.secret)] {
            let a = scheme.as_str();
            expect_forbidden(&t, "GET", "/other/k", a, None).await;
            expect_forbidden(&t, "HEAD", "/other/k", a, None).await;
            expect_forbidden(&t, "GET", "/other/.sccache_check", a, None).await;
            expect_forbidden(&t, "PROPFIND", "/other/", a, None).await;
            expect_forbidden(&t, "PUT", "/other/k", a, Some(b"poison")).await;
            expect_forbidden(&t, "PUT", "/other/new", a, Some(b"poison")).await;
            expect_forbidden(&t, "MKCOL", "/other/d/", a, None).await;
            expect_forbidden(&t, "DELETE", "/other/k", a, None).await;
            // A namespace that does not exist is just as foreign (and is not created).
            expect_forbidden(&t, "PUT", "/ghost/k", a, Some(b"poison")).await;
        }
    }
    // A namespace-limited admin token is a write token for its own namespace only.
    expect_forbidden(&t, "GET", "/team/k", &ops.bearer(), None).await;
    expect_forbidden(&t, "PUT", "/team/k", &ops.bearer(), Some(b"poison")).await;
    expect(&t, "PUT", "/other/k2", Some(&ops.bearer()), Some(b"ops"), 201).await;
    assert_eq!(get_bytes(&t, "/other/k", Some(&root.bearer())).await, b"theirs");
    assert_eq!(get_bytes(&t, "/team/k", Some(&root.bearer())).await, b"ours");
    assert_eq!(writer_of(&t, "other", "new").await, None);
    assert!(t.meta().namespace("ghost").await.unwrap().is_none());
    t.stop().await;
}

async fn all_namespace_tokens_work_everywhere(db: Db) {
    let (t, root) = secured(db).await;
    let fleet = api_token(&t, Some(&root), None, "write", "fleet").await;
    let audit = api_token(&t, Some(&root), None, "read", "audit").await;
    for ns in ["team", "other"] {
        let key = format!("/{ns}/k");
        expect(&t, "PUT", &key, Some(&fleet.bearer()), Some(ns.as_bytes()), 201).await;
        assert_eq!(get_bytes(&t, &key, Some(&fleet.bearer())).await, ns.as_bytes());
        assert_eq!(get_bytes(&t, &key, Some(&audit.bearer())).await, ns.as_bytes());
        expect(&t, "PROPFIND", &format!("/{ns}/"), Some(&audit.bearer()), None, 207).await;
        expect_forbidden(&t, "PUT", &key, &audit.bearer(), Some(b"poison")).await;
        assert_eq!(writer_of(&t, ns, "k").await, Some(Some(fleet.id)));
    }
    t.stop().await;
}

async fn admin_api_needs_an_admin_token_for_all_namespaces(db: Db) {
    let (t, root) = secured(db).await;
    let fleet = api_token(&t, Some(&root), None, "write", "fleet").await;
    let audit = api_token(&t, Some(&root), None, "read", "audit").await;
    let team_admin = api_token(&t, Some(&root), Some("team"), "admin", "team-admin").await;
    let calls: Vec<(&str, &str, Option<Value>)> = vec![
        ("GET", "/_hearth/api/stats", None),
        ("GET", "/_hearth/api/namespaces", None),
        ("POST", "/_hearth/api/namespaces", Some(json!({"name": "sneaky"}))),
        ("DELETE", "/_hearth/api/namespaces/other", None),
        ("GET", "/_hearth/api/tokens", None),
        (
            "POST",
            "/_hearth/api/tokens",
            Some(json!({"namespace": null, "scope": "admin", "label": "sneaky"})),
        ),
        ("DELETE", "/_hearth/api/tokens/root", None),
        ("DELETE", "/_hearth/api/tokens/fleet?purge=true", None),
    ];
    for (method, path, body) in &calls {
        // No token, or an unknown one: 401 with the challenge.
        for auth in [None, Some("Bearer hth_unknown".to_string())] {
            let mut request = t.request(method, path);
            if let Some(a) = &auth {
                request = request.header(AUTHORIZATION, a);
            }
            if let Some(b) = body {
                request = request.header(CONTENT_TYPE, "application/json").body(b.to_string());
            }
            let response = request.send().await.unwrap();
            assert_challenge(&response, &format!("{method} {path} with {auth:?}"));
        }
        // Valid tokens without the right: 403.
        for (who, token) in [("write", &fleet), ("read", &audit), ("namespace admin", &team_admin)] {
            for a in [token.bearer(), basic(who, &token.secret)] {
                let (status, answer) = api(&t, method, path, Some(&a), body.clone()).await;
                assert_eq!(status, 403, "{method} {path} as {who}: {answer}");
            }
        }
        // A malformed header: 400.
        let (status, _) = api(&t, method, path, Some("Bearer two words"), body.clone()).await;
        assert_eq!(status, 400, "{method} {path} with a malformed header");
    }
    // Nothing happened.
    assert!(t.meta().namespace("sneaky").await.unwrap().is_none());
    assert!(t.meta().namespace("other").await.unwrap().is_some());
    let tokens = t.meta().list_tokens().await.unwrap();
    assert_eq!(tokens.len(), 4);
    assert!(tokens.iter().all(|t| t.revoked_at.is_none()), "{tokens:?}");
    // The admin token for all namespaces can do all of it.
    let a = root.bearer();
    for path in ["/_hearth/api/stats", "/_hearth/api/namespaces", "/_hearth/api/tokens"] {
        let (status, body) = api(&t, "GET", path, Some(&a), None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, _) = api(
        &t,
        "GET",
        "/_hearth/api/tokens",
        Some(&basic("root", &root.secret)),
        None,
    )
    .await;
    assert_eq!(status, 200, "admin API with Basic auth");
    // Its validation errors are 4xx with a JSON message.
    let bad_tokens = [
        (json!({"namespace": null, "scope": "root", "label": "x"}), 400),
        (json!({"namespace": null, "scope": "read", "label": "has space"}), 400),
        (json!({"namespace": null, "scope": "read", "label": ""}), 400),
        (json!({"namespace": "ghost", "scope": "read", "label": "x"}), 404),
        (json!({"namespace": "../x", "scope": "read", "label": "x"}), 400),
        (json!({"namespace": null, "scope": "read", "label": "fleet"}), 409),
        (json!({"scope": "read", "label": "x", "secret": "hth_chosen"}), 400),
    ];
    for (body, expected) in bad_tokens {
        let (status, answer) = api(&t, "POST", "/_hearth/api/tokens", Some(&a), Some(body.clone())).await;
        assert_eq!(status, expected, "{body}: {answer}");
        assert!(answer["error"].is_string(), "{body}: {answer}");
    }
    let (status, _) = api(
        &t,
        "POST",
        "/_hearth/api/namespaces",
        Some(&a),
        Some(json!({"name": "team"})),
    )
    .await;
    assert_eq!(status, 409);
    let (status, _) = api(
        &t,
        "POST",
        "/_hearth/api/namespaces",
        Some(&a),
        Some(json!({"name": "../x"})),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = api(&t, "DELETE", "/_hearth/api/tokens/999999", Some(&a), None).await;
    assert_eq!(status, 404);
    let (status, _) = api(&t, "DELETE", "/_hearth/api/namespaces/ghost", Some(&a), None).await;
    assert_eq!(status, 404);
    t.stop().await;
}

async fn secured_mode_missing_namespace_is_404_with_a_hint(db: Db) {
    let (t, root) = secured(db).await;
    let fleet = api_token(&t, Some(&root), None, "write", "fleet").await;
    let blobs_before = t.blob_files();
    for token in [&root, &fleet] {
        for (method, path, body) in [
            ("GET", "/ghost/k", None),
            ("HEAD", "/ghost/k", None),
            ("GET", "/ghost/.sccache_check", None),
            ("PUT", "/ghost/k", Some(&b"payload"[..])),
            ("PUT", "/ghost/.sccache_check", Some(&b"Hello, World!"[..])),
            ("PROPFIND", "/ghost/", None),
            ("MKCOL", "/ghost/d/", None),
            ("DELETE", "/ghost/k", None),
        ] {
            let response = send(&t, method, path, Some(&token.bearer()), body).await;
            assert_eq!(response.status(), 404, "{method} {path}");
            if method != "HEAD" {
                let text = response.text().await.unwrap();
                assert!(
                    text.contains("hearth namespace create ghost"),
                    "{method} {path}: no hint in {text:?}"
                );
            }
        }
    }
    // Anonymous callers learn nothing about which namespaces exist.
    expect_challenge(&t, "PUT", "/ghost/k", None, Some(b"x")).await;
    assert!(
        t.meta().namespace("ghost").await.unwrap().is_none(),
        "namespace created"
    );
    assert_eq!(t.blob_files(), blobs_before, "blob stored for a missing namespace");
    let names: Vec<String> = t
        .meta()
        .list_namespaces()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["other", "team"]);
    // Created explicitly, it works at once.
    api_namespace(&t, Some(&root), "ghost", false).await;
    expect(&t, "PUT", "/ghost/k", Some(&fleet.bearer()), Some(b"payload"), 201).await;
    t.stop().await;
}

/// Bearer and every Basic form clients produce: standard and URL-safe base64, padded or not,
/// token as password, token as user name with an empty password, ccache's URL userinfo.
async fn bearer_and_basic_forms_are_accepted(db: Db) {
    let (t, root) = secured(db).await;
    let ci = api_token(&t, Some(&root), Some("team"), "write", "ci").await;
    let s = &ci.secret;
    // A user name whose standard encoding has '+' and '/', so that the alphabets differ.
    let user = "ci??>>~~";
    let pair = format!("{user}:{s}");
    assert_ne!(STANDARD.encode(&pair), URL_SAFE.encode(&pair), "test precondition");
    assert!(STANDARD.encode(&pair).contains(['+', '/']), "test precondition");
    let forms = [
        ("Bearer", format!("Bearer {s}")),
        ("bearer (lowercase)", format!("bearer {s}")),
        ("BEARER (uppercase)", format!("BEARER {s}")),
        ("Bearer, extra spaces", format!("Bearer   {s}  ")),
        ("Basic standard", format!("Basic {}", STANDARD.encode(&pair))),
        (
            "Basic standard unpadded",
            format!("Basic {}", STANDARD_NO_PAD.encode(&pair)),
        ),
        ("Basic URL-safe", format!("Basic {}", URL_SAFE.encode(&pair))),
        (
            "Basic URL-safe unpadded",
            format!("Basic {}", URL_SAFE_NO_PAD.encode(&pair)),
        ),
        ("basic (lowercase)", format!("basic {}", STANDARD.encode(&pair))),
        ("BASIC (uppercase)", format!("BASIC {}", STANDARD.encode(&pair))),
        ("Basic, empty user", basic("", s)),
        ("Basic, token as user, empty password", basic(s, "")),
    ];
    expect(&t, "PUT", "/team/shared", Some(&ci.bearer()), Some(b"v"), 201).await;
    for (i, (what, auth)) in forms.iter().enumerate() {
        let response = send(&t, "GET", "/team/shared", Some(auth), None).await;
        assert_eq!(response.status(), 200, "{what}: {auth}");
        let key = format!("/team/form-{i}");
        expect(&t, "PUT", &key, Some(auth), Some(what.as_bytes()), 201).await;
        assert_eq!(
            writer_of(&t, "team", &key[6..]).await,
            Some(Some(ci.id)),
            "{what}: writer"
        );
    }
    // The password is the token: a token as user name with another password is not used.
    expect_challenge(&t, "GET", "/team/shared", Some(&basic(s, "something")), None).await;
    // URL userinfo, as ccache sends it (reqwest turns it into Basic auth).
    let addr = t.running().addr();
    for userinfo in [format!("ccache:{s}"), format!("{s}:")] {
        let url = format!("http://{userinfo}@{addr}/team/shared");
        let response = t.client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200, "userinfo {}", userinfo.replace(s, "<secret>"));
    }
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Revocation, namespace deletion.

async fn revoked_via_api_is_refused_at_once(db: Db) {
    let (t, root) = secured(db).await;
    let ci = api_token(&t, Some(&root), Some("team"), "write", "ci").await;
    let dev = api_token(&t, Some(&root), Some("team"), "read", "dev").await;
    expect(&t, "PUT", "/team/k", Some(&ci.bearer()), Some(b"v"), 201).await;
    expect(&t, "GET", "/team/k", Some(&dev.bearer()), None, 200).await; // both are cached now
                                                                        // By label, without purge.
    let (status, body) = api(&t, "DELETE", "/_hearth/api/tokens/ci", Some(&root.bearer()), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token"]["id"], ci.id);
    assert!(body["token"]["revoked_at"].is_i64(), "{body}");
    assert_eq!(body["purged_entries"], 0);
    // By id.
    let (status, body) = api(
        &t,
        "DELETE",
        &format!("/_hearth/api/tokens/{}", dev.id),
        Some(&root.bearer()),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token"]["id"], dev.id);
    for token in [&ci, &dev] {
        for auth in [token.bearer(), basic("x", &token.secret), basic(&token.secret, "")] {
            expect_challenge(&t, "GET", "/team/k", Some(&auth), None).await;
            expect_challenge(&t, "PUT", "/team/k2", Some(&auth), Some(b"x")).await;
            expect_challenge(&t, "GET", "/team/.sccache_check", Some(&auth), None).await;
        }
    }
    // Revoked is not deleted: the entry keeps its writer, the list shows the revocation.
    assert_eq!(writer_of(&t, "team", "k").await, Some(Some(ci.id)));
    let tokens = t.meta().list_tokens().await.unwrap();
    for id in [ci.id, dev.id] {
        let row = tokens.iter().find(|r| r.id == id).expect("still listed");
        assert!(row.revoked_at.is_some(), "{row:?}");
    }
    // The label is free again, and the new token works while the old stays refused.
    let ci2 = api_token(&t, Some(&root), Some("team"), "write", "ci").await;
    expect(&t, "GET", "/team/k", Some(&ci2.bearer()), None, 200).await;
    expect_challenge(&t, "GET", "/team/k", Some(&ci.bearer()), None).await;
    t.stop().await;
}

async fn revoked_via_cli_is_refused_within_the_ttl(db: Db) {
    let (t, root) = secured(db).await;
    let ci = api_token(&t, Some(&root), Some("team"), "write", "ci").await;
    expect(&t, "PUT", "/team/k", Some(&ci.bearer()), Some(b"v"), 201).await;
    expect(&t, "GET", "/team/k", Some(&ci.bearer()), None, 200).await; // cached as valid
    let (ok, stdout, stderr) = hearth_cli(&t, &["token", "revoke", "ci"]).await;
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stderr.contains(&format!("revoked token {} (ci)", ci.id)), "{stderr}");
    let started = Instant::now();
    let refused = eventually(OUT_OF_BAND_SECS, || async {
        status_of(&t, "GET", "/team/k", Some(&ci.bearer()), None).await == 401
    })
    .await;
    assert!(refused, "revoked token still accepted after {:?}", started.elapsed());
    eprintln!("CLI revocation seen after {:?}", started.elapsed());
    expect_challenge(&t, "PUT", "/team/k2", Some(&ci.bearer()), Some(b"x")).await;
    // A token created by the CLI while the server runs is accepted (within the TTL too).
    let cli_dev = cli_token(&t, &["--namespace", "team", "--scope", "read", "--label", "cli-dev"]).await;
    let accepted = eventually(OUT_OF_BAND_SECS, || async {
        status_of(&t, "GET", "/team/k", Some(&cli_dev.bearer()), None).await == 200
    })
    .await;
    assert!(accepted, "token created by the CLI never accepted");
    expect_forbidden(&t, "PUT", "/team/k", &cli_dev.bearer(), Some(b"x")).await;
    t.stop().await;
}

/// Deleting a namespace takes its tokens with it.
async fn deleting_a_namespace_removes_its_tokens(db: Db) {
    let (t, root) = secured(db).await;
    let ci = api_token(&t, Some(&root), Some("team"), "write", "ci").await;
    let ops = api_token(&t, Some(&root), Some("other"), "write", "ops").await;
    expect(&t, "PUT", "/team/k", Some(&ci.bearer()), Some(b"v"), 201).await;
    expect(&t, "PUT", "/other/k", Some(&ops.bearer()), Some(b"w"), 201).await;
    let (status, _) = api(&t, "DELETE", "/_hearth/api/namespaces/team", Some(&root.bearer()), None).await;
    assert_eq!(status, 204);
    expect_challenge(&t, "GET", "/team/k", Some(&ci.bearer()), None).await;
    let ids: Vec<i64> = t.meta().list_tokens().await.unwrap().iter().map(|r| r.id).collect();
    assert!(!ids.contains(&ci.id), "token of the deleted namespace kept: {ids:?}");
    assert!(ids.contains(&ops.id) && ids.contains(&root.id), "{ids:?}");
    assert!(t.meta().lookup("team", "k").await.unwrap().is_none());
    expect(&t, "GET", "/team/k", Some(&root.bearer()), None, 404).await;
    assert_eq!(get_bytes(&t, "/other/k", Some(&ops.bearer())).await, b"w");
    t.stop().await;
}

/// Open mode: a namespace deleted through the admin API is created again by the next write,
/// like any namespace that does not exist.
async fn deleted_namespace_comes_back_on_the_next_open_write(db: Db) {
    let t = start_server(db).await;
    expect(&t, "PUT", "/ns/k", None, Some(b"v"), 201).await;
    let (status, _) = api(&t, "DELETE", "/_hearth/api/namespaces/ns", None, None).await;
    assert_eq!(status, 204);
    assert!(t.meta().namespace("ns").await.unwrap().is_none());
    for attempt in 1..=2 {
        let response = send(&t, "PUT", &format!("/ns/new{attempt}"), None, Some(b"w")).await;
        let got = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        assert_eq!(got, 201, "PUT #{attempt} into the deleted namespace: {got} {text}");
    }
    assert!(t.meta().namespace("ns").await.unwrap().is_some());
    t.stop().await;
}

/// Secured mode: a namespace deleted behind the server's back (CLI, here the library on the
/// same database) while the server still has it cached must give a 4xx, never a 5xx.
/// (This can only pass wrongly, never fail wrongly, on a slow machine: past the cache TTL the
/// answer is the 404 with a hint.)
async fn namespace_deleted_out_of_band_is_never_a_server_error(db: Db) {
    let (t, root) = secured(db).await;
    let w = root.bearer();
    expect(&t, "PUT", "/team/k", Some(&w), Some(b"v"), 201).await; // caches "team exists"
    hearth::admin::delete_namespace(t.meta(), "team").await.unwrap();
    let response = send(&t, "PUT", "/team/k2", Some(&w), Some(b"w")).await;
    let got = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    assert!(
        (400..500).contains(&got),
        "PUT into a namespace deleted by another process: {got} {text}"
    );
    t.stop().await;
}

/// Revoking tokens must never reopen the server: once secured, a server without any active
/// token must not fall back to open mode (anonymous writes, anonymous admin API).
async fn revoking_every_token_keeps_the_server_secured(db: Db) {
    let (t, root) = secured(db).await;
    let ci = api_token(&t, Some(&root), Some("team"), "write", "ci").await;
    expect(&t, "PUT", "/team/k", Some(&ci.bearer()), Some(b"genuine"), 201).await;
    // A leak: the operator revokes ci (with purge), then rotates the admin token by revoking it.
    let (status, _) = api(
        &t,
        "DELETE",
        "/_hearth/api/tokens/ci?purge=true",
        Some(&root.bearer()),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = api(&t, "DELETE", "/_hearth/api/tokens/root", Some(&root.bearer()), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        t.meta().list_tokens().await.unwrap().len(),
        2,
        "revoked tokens stay defined"
    );
    let anonymous_put = status_of(&t, "PUT", "/team/k", None, Some(b"poisoned")).await;
    let (anonymous_mint, minted) = api(
        &t,
        "POST",
        "/_hearth/api/tokens",
        None,
        Some(json!({"namespace": null, "scope": "admin", "label": "intruder"})),
    )
    .await;
    assert_eq!(
        (anonymous_put, anonymous_mint),
        (401, 401),
        "with every token revoked the server fell back to open mode: anonymous PUT /team/k \
         -> {anonymous_put}, anonymous POST /_hearth/api/tokens -> {anonymous_mint} ({minted})"
    );
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Who wrote what, and purge.

async fn purge_removes_exactly_that_tokens_entries(db: Db) {
    let (t, root) = secured(db).await;
    let ci = api_token(&t, Some(&root), Some("team"), "write", "ci").await;
    let dev = api_token(&t, Some(&root), Some("team"), "write", "dev").await;
    let fleet = api_token(&t, Some(&root), None, "write", "fleet").await;
    let (c, d, f) = (ci.bearer(), dev.bearer(), fleet.bearer());
    let x = common::incompressible(20_000, 1);
    let y = common::compressible(30_000, 2);
    // ci's entries.
    expect(&t, "PUT", "/team/ci/1", Some(&c), Some(&x), 201).await;
    expect(&t, "PUT", "/team/ci/2", Some(&c), Some(&y), 201).await;
    expect(&t, "PUT", "/team/rewritten", Some(&c), Some(b"by ci"), 201).await;
    expect(&t, "PUT", "/team/taken-over", Some(&d), Some(b"by dev"), 201).await;
    expect(&t, "PUT", "/team/taken-over", Some(&c), Some(b"then by ci"), 204).await;
    // Others' entries, some with the very same content as ci's.
    expect(&t, "PUT", "/team/dev/1", Some(&d), Some(&x), 201).await;
    expect(&t, "PUT", "/team/dev/2", Some(&d), Some(b"dev only"), 201).await;
    expect(&t, "PUT", "/team/rewritten", Some(&d), Some(b"by dev"), 204).await;
    expect(&t, "PUT", "/other/fleet/1", Some(&f), Some(&y), 201).await;
    expect(&t, "PUT", "/team/fleet/1", Some(&f), Some(&x), 201).await;
    // Each entry records its (last) writer.
    for (ns, key, writer) in [
        ("team", "ci/1", &ci),
        ("team", "ci/2", &ci),
        ("team", "taken-over", &ci),
        ("team", "rewritten", &dev),
        ("team", "dev/1", &dev),
        ("team", "dev/2", &dev),
        ("other", "fleet/1", &fleet),
        ("team", "fleet/1", &fleet),
    ] {
        assert_eq!(writer_of(&t, ns, key).await, Some(Some(writer.id)), "{ns}/{key}");
    }
    // Purge through the admin API.
    let (status, body) = api(
        &t,
        "DELETE",
        "/_hearth/api/tokens/ci?purge=true",
        Some(&root.bearer()),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["purged_entries"], 3, "{body}");
    assert_eq!(body["token"]["id"], ci.id);
    for key in ["ci/1", "ci/2", "taken-over"] {
        assert_eq!(writer_of(&t, "team", key).await, None, "{key} survived the purge");
        expect(&t, "GET", &format!("/team/{key}"), Some(&root.bearer()), None, 404).await;
    }
    // Everything else is untouched, including other keys holding the same blobs.
    assert_eq!(get_bytes(&t, "/team/dev/1", Some(&d)).await, x);
    assert_eq!(get_bytes(&t, "/team/fleet/1", Some(&d)).await, x);
    assert_eq!(get_bytes(&t, "/other/fleet/1", Some(&f)).await, y);
    assert_eq!(get_bytes(&t, "/team/dev/2", Some(&d)).await, b"dev only");
    assert_eq!(get_bytes(&t, "/team/rewritten", Some(&d)).await, b"by dev");
    expect_challenge(&t, "GET", "/team/dev/1", Some(&c), None).await;

    // Purge through the CLI, while the server runs.
    let (ok, stdout, stderr) = hearth_cli(&t, &["token", "revoke", "dev", "--purge"]).await;
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stderr.contains("purged 3 entries"), "{stderr}");
    for key in ["dev/1", "dev/2", "rewritten"] {
        assert_eq!(writer_of(&t, "team", key).await, None, "{key} survived the CLI purge");
        // Another process's change: the server's hot-entry cache may serve it for 2 s more.
        let path = format!("/team/{key}");
        let gone = eventually(OUT_OF_BAND_SECS, || async {
            status_of(&t, "GET", &path, Some(&root.bearer()), None).await == 404
        })
        .await;
        assert!(gone, "{key} still served after the CLI purge");
    }
    assert_eq!(get_bytes(&t, "/team/fleet/1", Some(&f)).await, x);
    assert_eq!(get_bytes(&t, "/other/fleet/1", Some(&f)).await, y);
    let left = t.meta().namespace_usage(None).await.unwrap();
    let entries: Vec<(String, i64)> = left.iter().map(|u| (u.namespace.clone(), u.usage.entries)).collect();
    assert_eq!(entries, [("other".to_string(), 1), ("team".to_string(), 1)]);
    let refused = eventually(OUT_OF_BAND_SECS, || async {
        status_of(&t, "GET", "/team/fleet/1", Some(&d), None).await == 401
    })
    .await;
    assert!(refused, "token revoked by the CLI still accepted");
    // Purging an already revoked token again is allowed and finds nothing more.
    let (status, body) = api(
        &t,
        "DELETE",
        &format!("/_hearth/api/tokens/{}?purge=true", ci.id),
        Some(&root.bearer()),
        None,
    )
    .await;
    assert_eq!((status, body["purged_entries"].clone()), (200, json!(0)), "{body}");
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Last use and statistics.

async fn last_used_is_recorded_in_batches(db: Db) {
    let (t, root) = secured_with(db, |c| c.stats_flush_interval = Duration::from_millis(200)).await;
    let bearer_user = api_token(&t, Some(&root), Some("team"), "write", "bearer-user").await;
    let basic_user = api_token(&t, Some(&root), Some("team"), "read", "basic-user").await;
    let refused_user = api_token(&t, Some(&root), Some("other"), "read", "refused-user").await;
    let unused = api_token(&t, Some(&root), Some("team"), "write", "unused").await;
    expect(&t, "PUT", "/team/k", Some(&bearer_user.bearer()), Some(b"v"), 201).await;
    expect(&t, "GET", "/team/k", Some(&basic("u", &basic_user.secret)), None, 200).await;
    // Authenticated but refused is still a use of the token.
    expect_forbidden(&t, "GET", "/team/k", &refused_user.bearer(), None).await;
    let used = [bearer_user.id, basic_user.id, refused_user.id, root.id];
    let flushed = eventually(20, || async {
        let tokens = t.meta().list_tokens().await.unwrap();
        used.iter()
            .all(|id| tokens.iter().any(|r| r.id == *id && r.last_used_at.is_some()))
    })
    .await;
    let tokens = t.meta().list_tokens().await.unwrap();
    assert!(flushed, "last use never recorded: {tokens:?}");
    for row in &tokens {
        if row.id == unused.id {
            assert_eq!(row.last_used_at, None, "unused token has a last use: {row:?}");
        } else {
            let at = row.last_used_at.expect("used");
            assert!(at >= row.created_at && at <= hearth::time::unix_now() + 1, "{row:?}");
        }
    }
    t.stop().await;
}

/// Last use is not written per request: with a long flush interval it appears only after the
/// flush at a graceful stop.
async fn last_used_waits_for_the_flush(db: Db) {
    let (mut t, root) = secured_with(db, |c| c.stats_flush_interval = Duration::from_secs(3600)).await;
    let ci = api_token(&t, Some(&root), Some("team"), "write", "ci").await;
    expect(&t, "PUT", "/team/k", Some(&ci.bearer()), Some(b"v"), 201).await;
    expect(&t, "GET", "/team/k", Some(&ci.bearer()), None, 200).await;
    let row = |tokens: Vec<hearth::meta::TokenRow>| tokens.into_iter().find(|r| r.id == ci.id).unwrap();
    assert_eq!(row(t.meta().list_tokens().await.unwrap()).last_used_at, None);
    t.restart().await;
    assert!(row(t.meta().list_tokens().await.unwrap()).last_used_at.is_some());
    t.stop().await;
}

async fn statistics_per_token_label(db: Db) {
    let (t, root) = secured_with(db, |c| c.stats_flush_interval = Duration::from_millis(200)).await;
    api_namespace(&t, Some(&root), "public", true).await;
    let ci = api_token(&t, Some(&root), None, "write", "ci").await;
    let dev = api_token(&t, Some(&root), None, "read", "dev").await;
    let (c, d) = (ci.bearer(), dev.bearer());
    expect(&t, "PUT", "/team/.sccache_check", Some(&c), Some(b"Hello, World!"), 201).await;
    expect(&t, "PUT", "/team/a", Some(&c), Some(b"aaaa"), 201).await;
    expect(&t, "PUT", "/team/b", Some(&c), Some(b"bb"), 201).await;
    expect(&t, "PUT", "/public/p", Some(&c), Some(b"ppp"), 201).await;
    expect(&t, "GET", "/team/a", Some(&d), None, 200).await;
    expect(&t, "GET", "/team/a", Some(&d), None, 200).await;
    expect(&t, "GET", "/team/b", Some(&basic("dev", &dev.secret)), None, 200).await;
    expect(&t, "GET", "/team/nope", Some(&d), None, 404).await;
    expect(&t, "GET", "/team/.sccache_check", Some(&d), None, 200).await; // a probe: not counted
    expect(&t, "GET", "/team/a", Some(&c), None, 200).await;
    expect(&t, "GET", "/public/p", None, None, 200).await; // anonymous: label ""
    let want_team = |rows: &[hearth::meta::StatsRow], label: &str| {
        let mut total = hearth::meta::Counters::default();
        rows.iter()
            .filter(|r| r.namespace == "team" && r.token_label == label)
            .for_each(|r| total.add(&r.counters));
        (
            total.hits,
            total.misses,
            total.writes,
            total.bytes_served,
            total.bytes_received,
        )
    };
    let done = eventually(20, || async {
        let rows = t.meta().stats(None, 0).await.unwrap();
        want_team(&rows, "ci") == (1, 0, 2, 4, 6) && want_team(&rows, "dev") == (3, 1, 0, 10, 0)
    })
    .await;
    let rows = t.meta().stats(None, 0).await.unwrap();
    assert!(done, "per-label statistics: {rows:#?}");
    let labels: std::collections::BTreeSet<(String, String)> = rows
        .iter()
        .map(|r| (r.namespace.clone(), r.token_label.clone()))
        .collect();
    let expected: std::collections::BTreeSet<(String, String)> =
        [("public", ""), ("public", "ci"), ("team", "ci"), ("team", "dev")]
            .iter()
            .map(|(n, l)| (n.to_string(), l.to_string()))
            .collect();
    assert_eq!(labels, expected, "{rows:#?}");
    // The admin API reports the same attribution.
    let (status, reports) = api(
        &t,
        "GET",
        "/_hearth/api/stats?namespace=team",
        Some(&root.bearer()),
        None,
    )
    .await;
    assert_eq!(status, 200, "{reports}");
    let by_label = &reports[0]["by_token_label"];
    assert_eq!(by_label["ci"]["writes"], 2, "{reports}");
    assert_eq!(by_label["ci"]["hits"], 1, "{reports}");
    assert_eq!(by_label["dev"]["hits"], 3, "{reports}");
    assert_eq!(by_label["dev"]["misses"], 1, "{reports}");
    assert_eq!(by_label["dev"]["writes"], 0, "{reports}");
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Secrets: only hashes in the database, never in listings; the CLI prints them once.

/// Every text value of every table: (table.column, value).
async fn every_text_value(db: Db, url: &str) -> Vec<(String, String)> {
    use sqlx::{Column, Connection, Row};
    let mut out = Vec::new();
    macro_rules! scan {
        ($conn:expr, $tables_query:expr) => {{
            let mut conn = $conn;
            let tables: Vec<String> = sqlx::query_scalar($tables_query).fetch_all(&mut conn).await.unwrap();
            assert!(tables.iter().any(|t| t == "tokens"), "{tables:?}");
            for table in tables {
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT * FROM \"{table}\"")))
                    .fetch_all(&mut conn)
                    .await
                    .unwrap();
                for row in rows {
                    for (i, column) in row.columns().iter().enumerate() {
                        if let Ok(Some(value)) = row.try_get::<Option<String>, _>(i) {
                            out.push((format!("{table}.{}", column.name()), value));
                        }
                    }
                }
            }
            conn.close().await.unwrap();
        }};
    }
    match db {
        Db::Sqlite => scan!(
            sqlx::SqliteConnection::connect(url).await.unwrap(),
            "SELECT name FROM sqlite_master WHERE type = 'table'"
        ),
        Db::Postgres => scan!(
            sqlx::PgConnection::connect(url).await.unwrap(),
            "SELECT tablename::TEXT FROM pg_tables WHERE schemaname = 'public'"
        ),
    }
    out
}

async fn the_database_holds_only_hashes(db: Db) {
    let (t, root) = secured_with(db, |c| c.stats_flush_interval = Duration::from_millis(200)).await;
    let ci = api_token(&t, Some(&root), Some("team"), "write", "ci").await;
    let cli = cli_token(&t, &["--all", "--scope", "read", "--label", "cli-reader"]).await;
    let revoked = api_token(&t, Some(&root), None, "read", "gone").await;
    let (status, _) = api(&t, "DELETE", "/_hearth/api/tokens/gone", Some(&root.bearer()), None).await;
    assert_eq!(status, 200);
    // Use them, so that statistics and last-used times are written too.
    expect(&t, "PUT", "/team/k", Some(&ci.bearer()), Some(b"v"), 201).await;
    let seen = eventually(OUT_OF_BAND_SECS, || async {
        status_with(&t, &cli.bearer()).await == 200
    })
    .await;
    assert!(seen, "CLI token never accepted");
    expect_challenge(&t, "GET", "/team/k", Some(&revoked.bearer()), None).await;
    let flushed = eventually(20, || async {
        let tokens = t.meta().list_tokens().await.unwrap();
        tokens.iter().filter(|r| r.last_used_at.is_some()).count() >= 3
    })
    .await;
    assert!(flushed, "last use not flushed");

    let tokens = [&root, &ci, &cli, &revoked];
    let values = every_text_value(db, &t.db.url).await;
    assert!(
        values.iter().any(|(c, _)| c == "tokens.label"),
        "scan found no text: {values:?}"
    );
    let hashes: Vec<&String> = values
        .iter()
        .filter(|(c, _)| c == "tokens.secret_hash")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(hashes.len(), tokens.len(), "{values:?}");
    for token in tokens {
        let random_part = &token.secret[hearth::auth::SECRET_PREFIX.len()..];
        for (column, value) in &values {
            assert!(
                !value.contains(random_part),
                "secret of token {} stored in {column}: {value}",
                token.id
            );
        }
        let expected_hash = hearth::auth::secret_hash(&token.secret);
        assert!(hashes.contains(&&expected_hash), "no hash for token {}", token.id);
        assert_eq!(expected_hash.len(), 64);
    }
    // SQLite: not even in the raw files (main database, WAL, shared memory).
    if db == Db::Sqlite {
        let path = t.db.url.trim_start_matches("sqlite://").to_string();
        let mut scanned = 0;
        for suffix in ["", "-wal", "-shm"] {
            if let Ok(bytes) = std::fs::read(format!("{path}{suffix}")) {
                scanned += 1;
                for token in tokens {
                    let needle = &token.secret.as_bytes()[4..];
                    assert!(
                        !bytes.windows(needle.len()).any(|w| w == needle),
                        "secret of token {} in {path}{suffix}",
                        token.id
                    );
                }
            }
        }
        assert!(scanned >= 1, "no SQLite file at {path}");
    }
    // Listings show neither secrets nor their hashes.
    let (status, listed) = api(&t, "GET", "/_hearth/api/tokens", Some(&root.bearer()), None).await;
    assert_eq!(status, 200);
    let listed_text = listed.to_string();
    let (ok, json_list, stderr) = hearth_cli(&t, &["token", "list", "--format", "json"]).await;
    assert!(ok, "{stderr}");
    let (ok, table_list, stderr2) = hearth_cli(&t, &["token", "list"]).await;
    assert!(ok, "{stderr2}");
    let cli_json: Value = serde_json::from_str(&json_list).expect("token list JSON");
    assert_eq!(cli_json.as_array().map(Vec::len), Some(4), "{json_list}");
    assert_eq!(listed.as_array().map(Vec::len), Some(4), "{listed_text}");
    for text in [&listed_text, &json_list] {
        assert!(!text.contains("secret"), "a listing has a secret field: {text}");
    }
    for token in tokens {
        let random_part = &token.secret[4..];
        let hash = hearth::auth::secret_hash(&token.secret);
        for (what, text) in [
            ("admin API list", &listed_text),
            ("CLI list --format json", &json_list),
            ("CLI list", &table_list),
            ("CLI list stderr", &stderr),
            ("CLI list stderr", &stderr2),
        ] {
            assert!(!text.contains(random_part), "{what} shows a secret: {text}");
            assert!(!text.contains(&hash), "{what} shows a hash: {text}");
        }
    }
    t.stop().await;
}

async fn status_with(t: &TestServer, auth: &str) -> u16 {
    status_of(t, "GET", "/team/k", Some(auth), None).await
}

async fn cli_token_create_prints_the_secret_last(db: Db) {
    let t = start_server(db).await;
    let (ok, _, stderr) = hearth_cli(
        &t,
        &["namespace", "create", "clins", "--anonymous-read", "--quota", "1GiB"],
    )
    .await;
    assert!(ok, "{stderr}");
    let admin = cli_token(&t, &["--all", "--scope", "admin", "--label", "cli-admin"]).await;
    let writer = cli_token(&t, &["--namespace", "clins", "--scope", "write", "--label", "cli-ci"]).await;
    // Both CLI tokens work as Bearer tokens (the server sees them within the TTL), and the
    // server is secured by them.
    // (GET of a namespace that does not exist: 404 while open, 401 once secured.)
    let secured = eventually(OUT_OF_BAND_SECS, || async {
        status_of(&t, "GET", "/nowhere/k", None, None).await == 401
    })
    .await;
    assert!(secured, "CLI tokens did not secure the server");
    expect(&t, "PUT", "/clins/k", Some(&writer.bearer()), Some(b"cli"), 201).await;
    assert_eq!(writer_of(&t, "clins", "k").await, Some(Some(writer.id)));
    // The namespace settings from the CLI apply: anonymous reads only.
    assert_eq!(get_bytes(&t, "/clins/k", None).await, b"cli");
    let row = t.meta().namespace("clins").await.unwrap().expect("namespace");
    assert!(row.anonymous_read);
    assert_eq!(row.quota_bytes, Some(1 << 30));
    let (status, names) = api(&t, "GET", "/_hearth/api/namespaces", Some(&admin.bearer()), None).await;
    assert_eq!(status, 200, "{names}");
    assert_eq!(names[0]["name"], "clins");
    // A bad request to the CLI fails with one line and creates nothing.
    let (ok, stdout, stderr) = hearth_cli(
        &t,
        &[
            "token",
            "create",
            "--namespace",
            "ghost",
            "--scope",
            "read",
            "--label",
            "x",
        ],
    )
    .await;
    assert!(!ok, "{stdout}");
    assert!(!stdout.contains(hearth::auth::SECRET_PREFIX), "{stdout}");
    assert!(stderr.contains("ghost"), "{stderr}");
    assert_eq!(t.meta().list_tokens().await.unwrap().len(), 2);
    t.stop().await;
}

/// Sends the head of a PUT announcing `announced` bytes plus the first `sent` of them, and
/// returns the response head (status line and headers, lowercased), without ever sending the
/// rest of the body.
async fn refused_upload_head(
    addr: std::net::SocketAddr,
    path: &str,
    auth: Option<&str>,
    announced: usize,
    sent: usize,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut head = format!("PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {announced}\r\n");
    if let Some(auth) = auth {
        head.push_str(&format!("Authorization: {auth}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream.write_all(&vec![b'x'; sent]).await.expect("write some body");
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    let read_head = async {
        while !response.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => response.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read_head).await;
    let text = String::from_utf8_lossy(&response).to_ascii_lowercase();
    text.split("\r\n\r\n").next().unwrap_or_default().to_string()
}

/// A PUT refused before its body was read (401, 403, 400 for a malformed header, 404 for a
/// missing namespace) leaves a connection that cannot carry another request. Like hearth's
/// other early refusals (413), the answer must say `Connection: close`, or keep-alive clients
/// (ccache's curl, reqwest) reuse the connection and their next request fails with a reset.
async fn refused_uploads_close_the_connection(db: Db) {
    let (t, root) = secured(db).await;
    let dev = api_token(&t, Some(&root), Some("team"), "read", "dev").await;
    let ops = api_token(&t, Some(&root), Some("other"), "write", "ops").await;
    let addr = t.running().addr();
    let cases = [
        ("read token", "/team/big", Some(dev.bearer()), 403),
        ("token for another namespace", "/team/big", Some(ops.bearer()), 403),
        ("no token", "/team/big", None, 401),
        (
            "unknown token",
            "/team/big",
            Some("Bearer hth_unknown".to_string()),
            401,
        ),
        ("malformed header", "/team/big", Some("Bearer a b".to_string()), 400),
        ("missing namespace", "/ghost/big", Some(root.bearer()), 404),
    ];
    let mut failures = Vec::new();
    for (what, path, auth, expected) in cases {
        let head = refused_upload_head(addr, path, auth.as_deref(), 10_000_000, 1000).await;
        let status_line = head.lines().next().unwrap_or_default().to_string();
        assert!(
            status_line.starts_with(&format!("http/1.1 {expected}")),
            "{what}: {status_line:?}"
        );
        if !head.lines().any(|l| l.trim() == "connection: close") {
            failures.push(format!(
                "{what}: PUT {path} -> {status_line} without `Connection: close`"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Bad input on the Authorization header: 400, 401 or 431, never 5xx, never a panic.

/// Header values that must be refused, each with the statuses it may get.
fn bad_authorization_values(valid_secret: &str) -> Vec<(String, Vec<u8>, &'static [u16])> {
    let b64 = |bytes: &[u8]| STANDARD.encode(bytes);
    let mut cases: Vec<(String, Vec<u8>, &'static [u16])> = vec![
        ("empty value".into(), b"".to_vec(), &[400]),
        ("Bearer alone".into(), b"Bearer".to_vec(), &[400]),
        ("Bearer, trailing space".into(), b"Bearer ".to_vec(), &[400]),
        ("Bearer, spaces only".into(), b"Bearer     ".to_vec(), &[400]),
        ("Bearer a b".into(), b"Bearer a b".to_vec(), &[400]),
        (
            "Bearer secret plus junk".into(),
            format!("Bearer {valid_secret} junk").into_bytes(),
            &[400],
        ),
        (
            "Bearer with a tab".into(),
            format!("Bearer\t{valid_secret}").into_bytes(),
            &[400],
        ),
        ("Basic !!!".into(), b"Basic !!!".to_vec(), &[400]),
        ("Basic =".into(), b"Basic =".to_vec(), &[400]),
        (
            "Basic, no colon".into(),
            format!("Basic {}", b64(b"nocolon")).into_bytes(),
            &[400],
        ),
        (
            "Basic, invalid UTF-8".into(),
            format!("Basic {}", b64(b"\xff\xfe:\xfd\xfc")).into_bytes(),
            &[400],
        ),
        (
            "Basic, just a colon".into(),
            format!("Basic {}", b64(b":")).into_bytes(),
            &[400],
        ),
        (
            "Basic, unknown user only".into(),
            format!("Basic {}", b64(b"user:")).into_bytes(),
            &[401],
        ),
        (
            "Digest".into(),
            b"Digest username=\"x\", response=\"y\"".to_vec(),
            &[400],
        ),
        ("Negotiate".into(), b"Negotiate YIIB".to_vec(), &[400]),
        ("scheme only, unknown".into(), b"Token".to_vec(), &[400]),
        ("non-UTF-8 bearer".into(), b"Bearer \xff\xfe\xfd".to_vec(), &[400]),
        ("non-UTF-8 value".into(), b"\xc3\x28\xa0\xa1".to_vec(), &[400]),
        (
            "non-UTF-8 around a secret".into(),
            [b"Bearer \xff".as_slice(), valid_secret.as_bytes()].concat(),
            &[400],
        ),
        (
            "well-formed unknown token".into(),
            format!("Bearer hth_{}", "A".repeat(43)).into_bytes(),
            &[401],
        ),
        ("lowercase unknown".into(), b"bearer hth_nope".to_vec(), &[401]),
        ("uppercase unknown".into(), b"BEARER hth_nope".to_vec(), &[401]),
        (
            "mixed-case Basic unknown".into(),
            format!("bAsIc {}", b64(b"u:hth_nope")).into_bytes(),
            &[401],
        ),
        (
            "10 KB Bearer".into(),
            format!("Bearer {}", "a".repeat(10 * 1024)).into_bytes(),
            &[400, 431],
        ),
        (
            "10 KB Basic".into(),
            format!("Basic {}", "QUFB".repeat(10 * 1024 / 4)).into_bytes(),
            &[400, 431],
        ),
        (
            "70 KB Bearer".into(),
            format!("Bearer {}", "b".repeat(70 * 1024)).into_bytes(),
            &[400, 401, 431],
        ),
    ];
    // The valid secret with one character too many or too few is just unknown.
    cases.push((
        "truncated secret".into(),
        format!("Bearer {}", &valid_secret[..valid_secret.len() - 1]).into_bytes(),
        &[401],
    ));
    cases.push((
        "secret with a suffix".into(),
        format!("Bearer {valid_secret}x").into_bytes(),
        &[401],
    ));
    cases
}

/// Requests each bad header is tried on: WebDAV reads and writes, and the admin API.
const TARGETS: [(&str, &str); 4] = [
    ("GET", "/team/k"),
    ("PUT", "/team/bad"),
    ("PROPFIND", "/team/"),
    ("GET", "/_hearth/api/tokens"),
];

fn raw_request(method: &str, path: &str, headers: &[Vec<u8>]) -> Vec<u8> {
    let body: &[u8] = if method == "PUT" { b"hello" } else { b"" };
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    for value in headers {
        request.extend_from_slice(b"Authorization: ");
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(body);
    request
}

/// After every bad request: the server still serves, and nothing was written.
async fn still_healthy(t: &TestServer, ci: &Token, what: &str) {
    let response = send(t, "GET", "/team/k", Some(&ci.bearer()), None).await;
    assert_eq!(response.status(), 200, "after {what}");
    assert_eq!(response.bytes().await.unwrap().as_ref(), b"stored");
    assert!(
        t.meta().lookup("team", "bad").await.unwrap().is_none(),
        "after {what}: a refused PUT stored something"
    );
}

async fn bad_authorization_headers_over_raw_tcp(db: Db) {
    let (t, root) = secured(db).await;
    let ci = api_token(&t, Some(&root), Some("team"), "write", "ci").await;
    expect(&t, "PUT", "/team/k", Some(&ci.bearer()), Some(b"stored"), 201).await;
    let addr = t.running().addr();
    for (what, value, allowed) in bad_authorization_values(&ci.secret) {
        for (method, path) in TARGETS {
            let (status, response) = raw_http(addr, &raw_request(method, path, std::slice::from_ref(&value))).await;
            assert!(
                allowed.contains(&status),
                "{what}: {method} {path} -> {status}, expected one of {allowed:?}:\n{}",
                &response[..response.len().min(2000)]
            );
            assert!(
                !response.contains(&ci.secret[4..]),
                "{what}: {method} {path} echoes the secret:\n{response}"
            );
            if status == 401 {
                let challenges = response.to_ascii_lowercase().matches("www-authenticate:").count();
                assert_eq!(challenges, 2, "{what}: {method} {path}:\n{response}");
            }
        }
        still_healthy(&t, &ci, &what).await;
    }
    // Many Authorization headers: all bogus.
    let bogus: Vec<Vec<u8>> = (0..50).map(|i| format!("Bearer hth_bogus{i}").into_bytes()).collect();
    for (method, path) in TARGETS {
        let (status, response) = raw_http(addr, &raw_request(method, path, &bogus)).await;
        assert!(
            [400, 401].contains(&status),
            "50 bogus headers: {method} {path} -> {status}:\n{response}"
        );
    }
    still_healthy(&t, &ci, "50 Authorization headers").await;
    // More headers than hyper accepts.
    let flood: Vec<Vec<u8>> = (0..200).map(|i| format!("Bearer hth_flood{i}").into_bytes()).collect();
    for (method, path) in TARGETS {
        let (status, response) = raw_http(addr, &raw_request(method, path, &flood)).await;
        assert!(
            [400, 401, 431].contains(&status),
            "200 headers: {method} {path} -> {status}:\n{response}"
        );
    }
    still_healthy(&t, &ci, "200 Authorization headers").await;
    // A valid header followed by bogus ones: whatever the answer, it is no server error and the
    // bogus ones grant nothing beyond the valid token's rights.
    let mixed = vec![ci.bearer().into_bytes(), b"Bearer a b".to_vec(), b"Digest x".to_vec()];
    for (method, path) in TARGETS {
        let (status, response) = raw_http(addr, &raw_request(method, path, &mixed)).await;
        assert!(
            (200..500).contains(&status) && status != 0,
            "valid + bogus headers: {method} {path} -> {status}:\n{response}"
        );
        eprintln!("valid header followed by bogus ones: {method} {path} -> {status}");
    }
    let _ = t.meta().delete_entry("team", "bad").await;
    still_healthy(&t, &ci, "mixed Authorization headers").await;
    t.stop().await;
}

async fn bad_authorization_headers_over_reqwest(db: Db) {
    let (t, root) = secured(db).await;
    let ci = api_token(&t, Some(&root), Some("team"), "write", "ci").await;
    expect(&t, "PUT", "/team/k", Some(&ci.bearer()), Some(b"stored"), 201).await;
    for (what, value, allowed) in bad_authorization_values(&ci.secret) {
        let Ok(header) = HeaderValue::from_bytes(&value) else {
            panic!("{what}: reqwest refuses the header value");
        };
        for (method, path) in TARGETS {
            let mut request = t.request(method, path).header(AUTHORIZATION, header.clone());
            if method == "PUT" {
                request = request.body("hello");
            }
            let response = request
                .send()
                .await
                .unwrap_or_else(|e| panic!("{what}: {method} {path}: {e}"));
            let status = response.status().as_u16();
            let challenges = response.headers().get_all(WWW_AUTHENTICATE).iter().count();
            let text = response.text().await.unwrap_or_default();
            assert!(
                allowed.contains(&status),
                "{what}: {method} {path} -> {status}, expected one of {allowed:?}: {text}"
            );
            assert!(
                !text.contains(&ci.secret[4..]),
                "{what}: {method} {path} echoes the secret"
            );
            if status == 401 {
                assert_eq!(challenges, 2, "{what}: {method} {path}");
            }
        }
        still_healthy(&t, &ci, &what).await;
    }
    // Many Authorization headers through the client library.
    let mut request = t.request("GET", "/team/k");
    for i in 0..60 {
        request = request.header(AUTHORIZATION, format!("Bearer hth_bogus{i}"));
    }
    let status = request.send().await.unwrap().status().as_u16();
    assert!(
        [400, 401, 431].contains(&status),
        "60 Authorization headers -> {status}"
    );
    still_healthy(&t, &ci, "60 Authorization headers").await;
    t.stop().await;
}

on_both_databases!(
    open_mode_is_unchanged,
    first_token_via_api_secures_the_server,
    token_created_out_of_band_secures_within_the_ttl,
    anonymous_read_namespace,
    read_token_reads_and_gets_403_on_writes,
    write_token_reads_and_writes,
    tokens_are_limited_to_their_namespace,
    all_namespace_tokens_work_everywhere,
    admin_api_needs_an_admin_token_for_all_namespaces,
    secured_mode_missing_namespace_is_404_with_a_hint,
    bearer_and_basic_forms_are_accepted,
    revoked_via_api_is_refused_at_once,
    revoked_via_cli_is_refused_within_the_ttl,
    deleting_a_namespace_removes_its_tokens,
    revoking_every_token_keeps_the_server_secured,
    purge_removes_exactly_that_tokens_entries,
    last_used_is_recorded_in_batches,
    last_used_waits_for_the_flush,
    statistics_per_token_label,
    the_database_holds_only_hashes,
    cli_token_create_prints_the_secret_last,
    bad_authorization_headers_over_raw_tcp,
    bad_authorization_headers_over_reqwest,
    deleted_namespace_comes_back_on_the_next_open_write,
    namespace_deleted_out_of_band_is_never_a_server_error,
    refused_uploads_close_the_connection,
);
