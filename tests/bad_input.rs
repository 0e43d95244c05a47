//! Bad input gets a clear 4xx and changes nothing: traversal, garbage keys, oversized and
//! broken uploads. Raw TCP is used where HTTP client libraries would normalise the request.
mod common;
use common::{eventually, raw_http, start_server, start_server_with, Db, TestServer};
use hearth::meta::MetadataStore;

async fn assert_nothing_stored(t: &TestServer) {
    assert!(t.blob_files().is_empty(), "blobs: {:?}", t.blob_files());
    assert!(
        t.meta().list_namespaces().await.unwrap().is_empty(),
        "a namespace was created"
    );
    let ok = eventually(5, || async { t.temp_files().is_empty() }).await;
    assert!(ok, "temp files left: {:?}", t.temp_files());
}

async fn traversal_and_garbage_paths_are_refused(db: Db) {
    let t = start_server(db).await;
    let addr = t.running().addr();
    let bad_paths = [
        "/ns/../etc/passwd",
        "/ns/a/../../x",
        "/ns/./x",
        "/ns/%2e%2e/x",
        "/ns/%2E%2e/%2e%2E/etc/passwd",
        "/ns/a%2fb",
        "/ns/..%2f..%2fetc",
        "/ns/a%5c..%5cb",
        "/ns/a%00b",
        "/ns/a%0d%0ab",
        "/ns/a%09b",
        "/ns/%ff%fe",
        "/ns/a%20b",
        "/../ns/x",
        "/-ns/x",
        "/_hearth/x",
        "/n%2fs/x",
    ];
    for path in bad_paths {
        for method in ["GET", "PUT", "HEAD", "DELETE", "PROPFIND"] {
            let request =
                format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello");
            let (status, response) = raw_http(addr, request.as_bytes()).await;
            assert_eq!(status, 400, "{method} {path}: {response}");
            if method == "GET" {
                assert!(
                    response.contains("invalid path"),
                    "{method} {path}: unclear message: {response}"
                );
            }
        }
    }
    // Raw control characters and spaces never get past the HTTP parser.
    for path in ["/ns/a\tb", "/ns/a\x01b", "/ns/a b"] {
        let request = format!("PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx");
        let (status, response) = raw_http(addr, request.as_bytes()).await;
        assert!((400..500).contains(&status), "{path:?}: {response}");
    }
    assert_nothing_stored(&t).await;
    t.stop().await;
}

async fn key_length_limits(db: Db) {
    let t = start_server(db).await;
    let max = format!("/ns/{}", "k".repeat(hearth::path::MAX_KEY_LEN));
    assert_eq!(t.client.put(t.url(&max)).body("x").send().await.unwrap().status(), 201);
    let over = format!("/ns/{}", "k".repeat(hearth::path::MAX_KEY_LEN + 1));
    let response = t.client.put(t.url(&over)).body("x").send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("longer than"));
    // An empty key is the namespace itself: a collection, which cannot be PUT.
    assert_eq!(
        t.client.put(t.url("/ns/")).body("x").send().await.unwrap().status(),
        405
    );
    let long_ns = format!("/{}/k", "n".repeat(65));
    assert_eq!(
        t.client.put(t.url(&long_ns)).body("x").send().await.unwrap().status(),
        400
    );
    t.stop().await;
}

/// Keys are names in the database, never file paths: an "absolute" key stays inside hearth.
async fn absolute_looking_keys_stay_keys(db: Db) {
    let t = start_server(db).await;
    let marker = format!("/tmp/hearth-should-not-exist-{}", std::process::id());
    let put = t
        .client
        .put(t.url(&format!("/ns/{marker}")))
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    assert!(!std::path::Path::new(&marker).exists());
    let stored = t.meta().lookup("ns", marker.trim_start_matches('/')).await.unwrap();
    assert!(stored.is_some());
    t.stop().await;
}

async fn oversized_bodies_get_413(db: Db) {
    let t = start_server_with(db, |c| c.max_body_size = hearth::size::ByteSize(10_000)).await;
    // Announced too large: refused before reading.
    let response = t
        .client
        .put(t.url("/ns/big"))
        .body(vec![0u8; 10_001])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    // The body was not read: the connection must not be reused.
    assert_eq!(response.headers()["connection"], "close");
    // Chunked, no length announced: refused once the limit is crossed.
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> =
        (0..20).map(|i| Ok(bytes::Bytes::from(vec![i as u8; 1000]))).collect();
    let response = t
        .client
        .put(t.url("/ns/big"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await;
    if let Ok(response) = response {
        assert_eq!(response.status(), 413);
    } // else: the server closed the connection while the client was still sending: also a refusal
    assert_eq!(t.client.get(t.url("/ns/big")).send().await.unwrap().status(), 404);
    assert_nothing_stored(&t).await;
    // Exactly at the limit is fine.
    assert_eq!(
        t.client
            .put(t.url("/ns/ok"))
            .body(vec![1u8; 10_000])
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    t.stop().await;
}

/// The client announces 100 000 bytes, sends 5 000 and hangs up: nothing may be stored.
async fn truncated_uploads_store_nothing(db: Db) {
    use tokio::io::AsyncWriteExt;
    let t = start_server(db).await;
    for _ in 0..3 {
        let mut stream = tokio::net::TcpStream::connect(t.running().addr()).await.unwrap();
        stream
            .write_all(b"PUT /ns/0/a/7/partial HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
            .await
            .unwrap();
        stream.write_all(&common::incompressible(5000, 1)).await.unwrap();
        stream.flush().await.unwrap();
        drop(stream);
    }
    assert!(
        eventually(5, || async { t.temp_files().is_empty() }).await,
        "temp files left behind"
    );
    assert_eq!(
        t.client.get(t.url("/ns/0/a/7/partial")).send().await.unwrap().status(),
        404
    );
    assert_nothing_stored(&t).await;
    t.stop().await;
}

async fn malformed_requests_get_4xx(db: Db) {
    let t = start_server(db).await;
    let addr = t.running().addr();
    for request in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /ns/x HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
        b"PUT /ns/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"PUT /ns/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    ] {
        let (status, response) = raw_http(addr, request).await;
        assert!(
            status == 0 || (400..500).contains(&status),
            "{:?} -> {response}",
            String::from_utf8_lossy(request)
        );
    }
    assert_nothing_stored(&t).await;
    t.stop().await;
}

/// Beyond `max-concurrent-uploads`, uploads are refused with 503 and Retry-After instead of
/// piling up; once one finishes, the next is accepted.
async fn uploads_beyond_the_cap_get_503(db: Db) {
    let t = start_server_with(db, |c| c.max_concurrent_uploads = 1).await;
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let mut started_tx = Some(started_tx);
    let chunks: Vec<bytes::Bytes> = (0..10).map(|i| bytes::Bytes::from(vec![i as u8; 10_000])).collect();
    let slow = futures_util::stream::unfold((chunks.into_iter(), 0), move |(mut it, n)| {
        if n == 1 {
            if let Some(tx) = started_tx.take() {
                let _ = tx.send(());
            }
        }
        async move {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            it.next().map(|c| (Ok::<_, std::io::Error>(c), (it, n + 1)))
        }
    });
    let first = tokio::spawn(
        t.client
            .put(t.url("/ns/slow"))
            .header("content-length", 100_000)
            .body(reqwest::Body::wrap_stream(slow))
            .send(),
    );
    started_rx.await.unwrap();
    let busy = t.client.put(t.url("/ns/second")).body("x").send().await.unwrap();
    assert_eq!(busy.status(), 503);
    assert_eq!(busy.headers()["retry-after"], "1");
    assert_eq!(busy.headers()["connection"], "close");
    assert_eq!(first.await.unwrap().unwrap().status(), 201);
    assert_eq!(
        t.client
            .put(t.url("/ns/second"))
            .body("x")
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    // Reads are never capped.
    assert_eq!(t.client.get(t.url("/ns/slow")).send().await.unwrap().status(), 200);
    t.stop().await;
}

on_both_databases!(
    uploads_beyond_the_cap_get_503,
    traversal_and_garbage_paths_are_refused,
    key_length_limits,
    absolute_looking_keys_stay_keys,
    oversized_bodies_get_413,
    truncated_uploads_store_nothing,
    malformed_requests_get_4xx,
);
