//! Faults a shared cache meets in production: the database going away, the disk filling up,
//! blob files damaged underneath it. A cache must never break or hang a build: it answers
//! misses or clear errors, changes nothing it cannot finish, and recovers by itself.

mod common;

use common::postgres::PrivatePostgres;
use common::*;
use std::time::{Duration, Instant};

/// Requests during an outage must answer within this (the pool's acquire timeout is 1 s);
/// generous so that a loaded CI machine does not flake. The point is: never hang.
const ANSWER_BOUND: Duration = Duration::from_secs(3);

async fn timed(request: reqwest::RequestBuilder) -> (u16, Duration, Option<String>) {
    let started = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(30), request.send())
        .await
        .expect("the request hung for 30 s")
        .expect("a response, not a transport error");
    let elapsed = started.elapsed();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (response.status().as_u16(), elapsed, retry_after)
}

async fn metric(t: &TestServer, name: &str) -> Option<f64> {
    let text = t.client.get(t.url("/metrics")).send().await.ok()?.text().await.ok()?;
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_fails_fast_and_recovers_without_restart() {
    let pg = PrivatePostgres::start();
    // Statistics stay buffered across the outage: flushed only at shutdown.
    let t = start_server_on(&pg.url(), |c| {
        c.stats_flush_interval = Duration::from_secs(3600);
        c.db_max_connections = 8;
    })
    .await;
    let bodies: Vec<Vec<u8>> = (0..10).map(|i| incompressible(20_000 + i, i as u64)).collect();
    for (i, body) in bodies.iter().enumerate() {
        let status = t
            .client
            .put(t.url(&format!("/team/k{i}")))
            .body(body.clone())
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 201);
    }
    let mut hits = 0;
    for (i, body) in bodies.iter().enumerate() {
        let response = t.client.get(t.url(&format!("/team/k{i}"))).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.bytes().await.unwrap(), body);
        hits += 1;
    }

    pg.stop_immediately();

    // Sequential GETs, HEADs and PUTs: each answers a miss or a 503 quickly.
    let mut latencies = Vec::new();
    for round in 0..30 {
        let i = round % 10;
        let (status, elapsed, retry_after) = timed(t.client.get(t.url(&format!("/team/k{i}")))).await;
        assert!(status == 404 || status == 503, "GET during the outage: {status}");
        if status == 503 {
            assert_eq!(retry_after.as_deref(), Some("1"), "503 carries Retry-After");
        }
        latencies.push(elapsed);
        let (status, elapsed, _) = timed(t.client.head(t.url(&format!("/team/k{i}")))).await;
        assert!(status == 404 || status == 503, "HEAD during the outage: {status}");
        latencies.push(elapsed);
    }
    let (status, elapsed, retry_after) = timed(
        t.client
            .put(t.url("/team/during-outage"))
            .body(incompressible(50_000, 99)),
    )
    .await;
    assert_eq!(status, 503, "PUT during the outage");
    assert_eq!(retry_after.as_deref(), Some("1"));
    latencies.push(elapsed);

    // Concurrent GETs: none waits behind another.
    let concurrent: Vec<_> = (0..32)
        .map(|i| {
            let request = t.client.get(t.url(&format!("/team/k{}", i % 10)));
            tokio::spawn(timed(request))
        })
        .collect();
    for handle in concurrent {
        let (status, elapsed, _) = handle.await.unwrap();
        assert!(
            status == 404 || status == 503,
            "concurrent GET during the outage: {status}"
        );
        latencies.push(elapsed);
    }
    let (ready, _, _) = timed(t.client.get(t.url("/readyz"))).await;
    assert_eq!(ready, 503, "not ready while the database is down");
    assert_eq!(metric(&t, "hearth_database_available").await, Some(0.0));

    latencies.sort();
    let worst = *latencies.last().unwrap();
    let median = latencies[latencies.len() / 2];
    eprintln!(
        "outage: {} requests, median {:?}, worst {:?} (the first one waits out the acquire timeout)",
        latencies.len(),
        median,
        worst
    );
    assert!(worst < ANSWER_BOUND, "a request took {worst:?} during the outage");

    // PostgreSQL returns: hearth recovers by itself, no restart.
    pg.start_again();
    let recovered = eventually(30, || async {
        matches!(t.client.get(t.url("/team/k0")).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    assert!(recovered, "hearth did not recover within 30 s of the database's return");
    hits += 1;
    let response = t.client.get(t.url("/team/k1")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap(), bodies[1]);
    hits += 1;
    let status = t
        .client
        .put(t.url("/team/after"))
        .body(vec![7u8; 1000])
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 201, "uploads work again");
    assert_eq!(t.client.get(t.url("/readyz")).send().await.unwrap().status(), 200);
    assert_eq!(metric(&t, "hearth_database_available").await, Some(1.0));

    // Statistics buffered through the outage reach the database at shutdown: no hit is lost,
    // and the outage's failed requests are counted as errors.
    let url = t.db.url.clone();
    t.stop().await;
    let meta = hearth::meta::MetaStore::connect(
        &url,
        &hearth::meta::PoolSettings {
            max_connections: 1,
            acquire_timeout: Duration::from_secs(5),
        },
    )
    .await
    .unwrap();
    let total = stats_total(&meta, "team").await;
    assert_eq!(total.hits, hits, "hits: {total:?}");
    assert_eq!(total.writes, 11, "writes: {total:?}");
    assert!(total.errors >= 1, "the refused PUT is an error: {total:?}");
}
