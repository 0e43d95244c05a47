//! The WebDAV surface exactly as sccache 0.19 and ccache use it (replaying the captured traces
//! in shared/protocol/traces.txt), on both databases.
use crate::common;
use common::{get_body, put_status, start_server, Db, TestServer};

const PROPFIND_BODY: &str =
    r#"<?xml version="1.0" encoding="utf-8" ?><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>"#;
const KEY: &str = "0a7a256559d9d3f9ed0df4ac87d3809e86ec2395c9c27daed766078cc5258d9b";

async fn propfind(t: &TestServer, path: &str) -> reqwest::Response {
    t.request("PROPFIND", path)
        .header("depth", "0")
        .header("content-type", "application/xml")
        .body(PROPFIND_BODY)
        .send()
        .await
        .unwrap()
}

/// What opendal requires of a PROPFIND answer: 207, an href, a propstat with a status < 400
/// and a getlastmodified that parses as an HTTP date.
async fn assert_collection(response: reqwest::Response, href: &str) {
    assert_eq!(response.status(), 207);
    let xml = response.text().await.unwrap();
    assert!(xml.contains(&format!("<D:href>{href}</D:href>")), "{xml}");
    assert!(xml.contains("<D:collection/>"), "{xml}");
    assert!(xml.contains("<D:status>HTTP/1.1 200 OK</D:status>"), "{xml}");
    let date = xml
        .split("<D:getlastmodified>")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .expect("getlastmodified");
    httpdate::parse_http_date(date).expect("getlastmodified is an HTTP date");
}

/// sccache's start-up check then its first write: GET probe 404, PROPFIND root 207, PUT probe
/// 201; GET key 404, PROPFIND parent 207, PUT key 201 — two requests per write, not seven.
async fn sccache_check_and_first_write(db: Db) {
    let t = start_server(db).await;
    let probe = "/team/.sccache_check";
    assert_eq!(t.client.get(t.url(probe)).send().await.unwrap().status(), 404);
    assert_collection(propfind(&t, "/team/").await, "/team/").await;
    assert_eq!(put_status(&t, probe, "Hello, World!").await, 201);

    let key_path = format!("/team/0/a/7/{KEY}");
    assert_eq!(t.client.get(t.url(&key_path)).send().await.unwrap().status(), 404);
    assert_collection(propfind(&t, "/team/0/a/7/").await, "/team/0/a/7/").await;
    let entry = common::incompressible(559, 1);
    let put = t.client.put(t.url(&key_path)).body(entry.clone()).send().await.unwrap();
    assert_eq!(put.status(), 201);
    assert!(put.headers().contains_key("etag"));

    let got = t.client.get(t.url(&key_path)).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.headers()["content-length"], "559");
    assert!(got.headers().get("content-encoding").is_none());
    httpdate::parse_http_date(got.headers()["last-modified"].to_str().unwrap()).expect("Last-Modified is an HTTP date");
    assert_eq!(got.bytes().await.unwrap(), entry);

    // The second sccache start: probe is there, and overwriting it is allowed (204).
    let again = t.client.get(t.url(probe)).send().await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.bytes().await.unwrap(), "Hello, World!");
    assert_collection(propfind(&t, "/team/").await, "/team/").await;
    assert_eq!(put_status(&t, probe, "Hello, World!").await, 204);
    t.stop().await;
}

/// `SCCACHE_WEBDAV_ENDPOINT=…/team/` + `SCCACHE_WEBDAV_KEY_PREFIX=proj/x` yields `//` paths.
async fn double_slashes_collapse(db: Db) {
    let t = start_server(db).await;
    assert_collection(propfind(&t, "/team//proj/x/").await, "/team//proj/x/").await;
    let put = t
        .client
        .put(t.url("/team//proj/x/0/a/7/k1"))
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    for path in [
        "/team/proj/x/0/a/7/k1",
        "//team///proj//x/0/a/7/k1",
        "/team//proj/x/0/a/7/k1",
    ] {
        let got = t.client.get(t.url(path)).send().await.unwrap();
        assert_eq!(got.status(), 200, "{path}");
        assert_eq!(got.bytes().await.unwrap(), "abc");
    }
    t.stop().await;
}

/// ccache 4.7.5's subdirs, flat and bazel layouts, HEAD before PUT (reshare) and DELETE.
async fn ccache_layouts_head_and_delete(db: Db) {
    let t = start_server(db).await;
    let entry = common::incompressible(1189, 2);
    for path in [
        "/cc/45/78ksg2utcunjpos8moq8lbr7jussam4",
        "/cc/4578ksg2utcunjpos8moq8lbr7jussam4",
        "/cc/ac/4578a7202f759ebcf38e22d8d22abd9e7ee715624578a7202f759ebcf38e22d8",
    ] {
        assert_eq!(t.client.head(t.url(path)).send().await.unwrap().status(), 404);
        let put = t
            .client
            .put(t.url(path))
            .header("content-type", "application/octet-stream")
            .body(entry.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 201, "{path}");
        let head = t.client.head(t.url(path)).send().await.unwrap();
        assert_eq!(head.status(), 200);
        assert_eq!(head.headers()["content-length"], "1189");
        assert!(head.bytes().await.unwrap().is_empty());
        assert_eq!(get_body(&t, path).await, entry);
    }
    let path = "/cc/45/78ksg2utcunjpos8moq8lbr7jussam4";
    assert_eq!(t.client.delete(t.url(path)).send().await.unwrap().status(), 204);
    assert_eq!(t.client.get(t.url(path)).send().await.unwrap().status(), 404);
    assert_eq!(t.client.delete(t.url(path)).send().await.unwrap().status(), 404);
    // The other keys sharing that content are untouched.
    let flat = t
        .client
        .get(t.url("/cc/4578ksg2utcunjpos8moq8lbr7jussam4"))
        .send()
        .await
        .unwrap();
    assert_eq!(flat.bytes().await.unwrap(), entry);
    t.stop().await;
}

async fn mkcol_options_and_collections(db: Db) {
    let t = start_server(db).await;
    for path in ["/team/0/", "/team/0/a/", "/team/0/a/7/", "/", "/team"] {
        assert_eq!(t.request("MKCOL", path).send().await.unwrap().status(), 201, "{path}");
    }
    let options = t.request("OPTIONS", "/team/").send().await.unwrap();
    assert_eq!(options.status(), 200);
    assert_eq!(options.headers()["dav"], "1");
    let allow = options.headers()["allow"].to_str().unwrap().to_string();
    for method in ["GET", "HEAD", "PUT", "DELETE", "PROPFIND", "MKCOL", "OPTIONS"] {
        assert!(allow.contains(method), "{allow}");
    }
    assert_collection(propfind(&t, "/").await, "/").await;
    assert_eq!(t.client.get(t.url("/")).send().await.unwrap().status(), 200);
    assert_eq!(t.client.get(t.url("/team/0/")).send().await.unwrap().status(), 404);
    assert_eq!(put_status(&t, "/team/dir/", "x").await, 405);
    assert_eq!(t.client.delete(t.url("/team/")).send().await.unwrap().status(), 403);
    t.stop().await;
}

async fn propfind_objects(db: Db) {
    let t = start_server(db).await;
    assert_eq!(propfind(&t, "/team/0/a/7/missing").await.status(), 404);
    t.client
        .put(t.url("/team/0/a/7/present"))
        .body("12345")
        .send()
        .await
        .unwrap();
    let found = propfind(&t, "/team/0/a/7/present").await;
    assert_eq!(found.status(), 207);
    let xml = found.text().await.unwrap();
    assert!(xml.contains("<D:getcontentlength>5</D:getcontentlength>"), "{xml}");
    assert!(xml.contains("<D:getlastmodified>"), "{xml}");
    assert!(!xml.contains("<D:collection/>"), "{xml}");
    t.stop().await;
}

async fn unknown_methods_get_405(db: Db) {
    let t = start_server(db).await;
    for method in ["PATCH", "POST", "LOCK", "UNLOCK", "COPY", "MOVE", "PROPPATCH", "BREW"] {
        let response = t.request(method, "/team/key").send().await.unwrap();
        assert_eq!(response.status(), 405, "{method}");
        assert!(response.headers().contains_key("allow"), "{method}");
    }
    t.stop().await;
}

/// sccache does not decode Content-Encoding: hearth must never compress on the wire.
async fn responses_are_never_compressed(db: Db) {
    let t = start_server(db).await;
    let body = common::compressible(300_000, 3);
    t.client
        .put(t.url("/team/big"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let got = t
        .client
        .get(t.url("/team/big"))
        .header("accept-encoding", "gzip, deflate, br, zstd")
        .send()
        .await
        .unwrap();
    assert!(got.headers().get("content-encoding").is_none());
    assert_eq!(got.headers()["content-length"], "300000");
    assert_eq!(got.bytes().await.unwrap(), body);
    t.stop().await;
}

async fn health_endpoints(db: Db) {
    let t = start_server(db).await;
    assert_eq!(t.client.get(t.url("/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(t.client.get(t.url("/readyz")).send().await.unwrap().status(), 200);
    t.stop().await;
}

on_both_databases!(
    sccache_check_and_first_write,
    double_slashes_collapse,
    ccache_layouts_head_and_delete,
    mkcol_options_and_collections,
    propfind_objects,
    unknown_methods_get_405,
    responses_are_never_compressed,
    health_endpoints,
);
