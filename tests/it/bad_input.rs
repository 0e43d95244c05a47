//! Bad input gets a clear 4xx and changes nothing: traversal, garbage keys, oversized and
//! broken uploads. Raw TCP is used where HTTP client libraries would normalise the request.
use crate::common;
use common::{eventually, put_status, raw_http, start_server, start_server_with, Db, TestServer};
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
    assert_eq!(put_status(&t, &max, "x").await, 201);
    let over = format!("/ns/{}", "k".repeat(hearth::path::MAX_KEY_LEN + 1));
    let response = t.client.put(t.url(&over)).body("x").send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("longer than"));
    // An empty key is the namespace itself: a collection, which cannot be PUT.
    assert_eq!(put_status(&t, "/ns/", "x").await, 405);
    let long_ns = format!("/{}/k", "n".repeat(65));
    assert_eq!(put_status(&t, &long_ns, "x").await, 400);
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
    assert_eq!(put_status(&t, "/ns/ok", vec![1u8; 10_000]).await, 201);
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
    assert_eq!(put_status(&t, "/ns/second", "x").await, 201);
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

/// Reads until the server closes the connection; `None` if it is still open after 15 s.
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> Option<(usize, std::time::Duration)> {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut total = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(15), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some((total, started.elapsed())),
            Ok(Ok(n)) => total += n,
        }
    }
}

/// Clients that stall or trickle are cut off after `client-timeout`, and what they held
/// (an upload slot, a temp file) is released; well-behaved clients are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    use tokio::io::AsyncWriteExt;
    let timeout = std::time::Duration::from_secs(1);
    let t = start_server_with(Db::Sqlite, |c| {
        c.client_timeout = timeout;
        c.max_concurrent_uploads = 1;
    })
    .await;
    let addr = t.running().addr();

    // Headers that never end.
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    stalled.write_all(b"GET /ns/x HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // Headers trickling in, a byte at a time, each within the stall limit.
    let trickle = tokio::spawn(async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        for byte in b"GET /ns/x HTTP/1.1\r\nX-Slow: ".iter().chain([b'a'; 200].iter()) {
            if stream.write_all(&[*byte]).await.is_err() {
                return Some(started.elapsed());
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        None
    });
    // A body that stops half-way, holding the only upload slot.
    let mut half_body = tokio::net::TcpStream::connect(addr).await.unwrap();
    half_body
        .write_all(b"PUT /ns/stalled HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    half_body.write_all(&common::incompressible(1000, 3)).await.unwrap();

    let (_, elapsed) = read_until_closed(&mut stalled)
        .await
        .expect("stalled headers: connection left open");
    assert!(elapsed >= timeout / 2, "closed too early: {elapsed:?}");
    let (_, _) = read_until_closed(&mut half_body)
        .await
        .expect("stalled body: connection left open");
    let cut = trickle.await.unwrap();
    assert!(cut.is_some(), "trickled headers were accepted for 6 s");

    // The slot and the temp file are released; nothing half-written is visible.
    assert_eq!(put_status(&t, "/ns/after", "ok").await, 201);
    assert_eq!(t.client.get(t.url("/ns/stalled")).send().await.unwrap().status(), 404);
    assert!(
        eventually(5, || async { t.temp_files().is_empty() }).await,
        "temp file left"
    );

    // An idle keep-alive connection is closed after the timeout, after a normal exchange.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /ns/after HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (read, _) = read_until_closed(&mut idle).await.expect("idle connection left open");
    assert!(read > 0, "the request was answered before the idle close");

    // A response nobody reads: the connection is dropped, the object is not sent in full.
    let large = common::incompressible(24 << 20, 9);
    assert_eq!(put_status(&t, "/ns/large", large.clone()).await, 201);
    let mut reader = tokio::net::TcpStream::connect(addr).await.unwrap();
    reader
        .write_all(b"GET /ns/large HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(timeout * 4).await;
    let (read, _) = read_until_closed(&mut reader)
        .await
        .expect("unread response: connection left open");
    assert!(read < large.len(), "the whole response was buffered ({read} bytes)");
    t.stop().await;
}

/// Request headers beyond hyper's limits are refused with 431, before any handler runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_refused() {
    let t = start_server(Db::Sqlite).await;
    let addr = t.running().addr();
    let huge_value = format!(
        "GET /ns/x HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let (status, _) = raw_http(addr, huge_value.as_bytes()).await;
    assert!(status == 431 || status == 0, "a 1 MiB header: {status}");
    let many: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (status, _) = raw_http(addr, format!("GET /ns/x HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes()).await;
    assert!(status == 431 || status == 0, "500 headers: {status}");
    assert_nothing_stored(&t).await;
    t.stop().await;
}
