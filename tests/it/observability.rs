//! What operators see: `/metrics`, the statistics report (admin API), miss classification,
//! and how much a crash may lose.
use crate::common;
use common::{compressible, eventually, get_body, incompressible, sample, start_server_with, stats_total, Db};
use hearth::meta::MetadataStore;
use std::time::Duration;

async fn json(response: reqwest::Response) -> serde_json::Value {
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

async fn metrics_count_cache_traffic_without_leaking_keys(db: Db) {
    let t = start_server_with(db, |_| {}).await;
    let key = "0/a/7/0a7a256559d9d3f9ed0df4ac87d3809e86ec2395c9c27daed766078cc5258d9b";
    let a = incompressible(1000, 1);
    t.client
        .put(t.url(&format!("/proj/{key}")))
        .body(a.clone())
        .send()
        .await
        .unwrap();
    t.client
        .put(t.url(&format!("/proj/{key}")))
        .body(incompressible(2000, 2))
        .send()
        .await
        .unwrap();
    for _ in 0..2 {
        get_body(&t, &format!("/proj/{key}")).await;
    }
    t.client.get(t.url("/proj/missing-key")).send().await.unwrap();
    t.client.get(t.url("/proj/.sccache_check")).send().await.unwrap(); // probe: not counted
    t.client
        .put(t.url("/other/x"))
        .body(compressible(100_000, 3))
        .send()
        .await
        .unwrap();

    let text = t.metrics().await;
    let ns = |metric: &str, namespace: &str| sample(&text, &format!("{metric}{{namespace=\"{namespace}\"}}"));
    assert_eq!(ns("hearth_cache_hits_total", "proj"), Some(2.0), "{text}");
    assert_eq!(ns("hearth_cache_misses_total", "proj"), Some(1.0));
    assert_eq!(ns("hearth_cache_writes_total", "proj"), Some(2.0));
    assert_eq!(ns("hearth_cache_conflicting_writes_total", "proj"), Some(1.0));
    assert_eq!(ns("hearth_cache_served_bytes_total", "proj"), Some(4000.0));
    assert_eq!(ns("hearth_cache_received_bytes_total", "proj"), Some(3000.0));
    let requests = |op: &str, status: &str| {
        sample(
            &text,
            &format!("hearth_http_requests_total{{operation=\"{op}\",protocol=\"webdav\",status=\"{status}\"}}"),
        )
    };
    assert_eq!(requests("get", "200"), Some(2.0));
    assert_eq!(requests("get", "404"), Some(2.0)); // the miss and the probe
    assert_eq!(requests("put", "201"), Some(2.0));
    assert_eq!(requests("put", "204"), Some(1.0));
    // Stored bytes are measured at scrape time. Entries: 2000 (proj) + 100 000 (other); blobs
    // also hold the overwritten 1000 bytes until garbage collection removes them.
    let layer = |name: &str| sample(&text, &format!("hearth_stored_bytes{{layer=\"{name}\"}}")).unwrap();
    assert_eq!(layer("logical"), 102_000.0);
    assert_eq!(layer("unique"), 102_000.0);
    assert!(
        layer("compressed") < 20_000.0,
        "compressible blob not compressed: {}",
        layer("compressed")
    );
    assert_eq!(
        layer("physical"),
        layer("compressed") + 1000.0,
        "the overwritten blob is still stored"
    );
    assert_eq!(sample(&text, "hearth_entries"), Some(2.0));
    assert_eq!(sample(&text, "hearth_blobs"), Some(3.0));
    assert_eq!(sample(&text, "hearth_storage_budget_bytes"), Some((10u64 << 30) as f64));
    assert!(sample(&text, "hearth_stats_flush_lag_seconds").is_some());
    assert!(text.contains("hearth_build_info{version=\""));
    assert!(text
        .contains("hearth_http_request_duration_seconds_bucket{operation=\"get\",protocol=\"webdav\",le=\"0.0005\"}"));
    // Keys and paths never become labels.
    assert!(!text.contains("0a7a2565"), "a key leaked into the metrics");
    assert!(!text.contains("missing-key"));
    assert!(!text.contains("sccache_check"));
    t.stop().await;
}

/// Misses on keys that were evicted are told apart from cold misses, at flush time.
async fn misses_are_classified_cold_or_evicted(db: Db) {
    let mut t = start_server_with(db, |c| c.stats_flush_interval = Duration::from_secs(3600)).await;
    t.meta()
        .record_evictions("ns", &["was-here", "also-gone"], hearth::time::unix_now())
        .await
        .unwrap();
    for path in ["/ns/was-here", "/ns/was-here", "/ns/never-stored", "/ns/also-gone"] {
        assert_eq!(t.client.get(t.url(path)).send().await.unwrap().status(), 404);
    }
    t.meta()
        .record_evictions("other", &["never-stored"], hearth::time::unix_now())
        .await
        .unwrap(); // other namespace
    t.restart().await;
    let c = stats_total(t.meta(), "ns").await;
    assert_eq!((c.misses, c.misses_evicted), (4, 3));
    t.stop().await;
}

/// `GET /_hearth/api/stats`: the same report as `hearth stats --format json`.
async fn stats_api_reports_traffic_and_savings(db: Db) {
    let mut t = start_server_with(db, |c| c.stats_flush_interval = Duration::from_secs(3600)).await;
    let shared = incompressible(10_000, 4);
    let object = compressible(200_000, 5);
    t.client
        .put(t.url("/team/a"))
        .body(shared.clone())
        .send()
        .await
        .unwrap();
    t.client
        .put(t.url("/team/b"))
        .body(shared.clone())
        .send()
        .await
        .unwrap(); // dedup
    t.client
        .put(t.url("/team/obj"))
        .body(object.clone())
        .send()
        .await
        .unwrap();
    for _ in 0..3 {
        get_body(&t, "/team/a").await;
    }
    t.client.get(t.url("/team/nope")).send().await.unwrap();
    t.client.get(t.url("/quiet/nope")).send().await.unwrap();
    t.restart().await;

    let reports: serde_json::Value = t
        .client
        .get(t.url("/_hearth/api/stats?namespace=team&since=2h"))
        .send()
        .await
        .map(json)
        .unwrap()
        .await;
    let reports = reports.as_array().unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let r = &reports[0];
    assert_eq!(r["namespace"], "team");
    assert_eq!(
        (r["hits"].as_i64(), r["misses"].as_i64(), r["writes"].as_i64()),
        (Some(3), Some(1), Some(3))
    );
    assert_eq!(r["misses_cold"], 1);
    assert_eq!(r["requests"], 7);
    assert!((r["hit_rate"].as_f64().unwrap() - 0.75).abs() < 1e-9);
    assert_eq!(r["bytes_served"], 30_000);
    assert_eq!(r["bytes_received"], 220_000);
    assert_eq!(r["entries"], 3);
    assert_eq!(r["stored_logical_bytes"], 220_000);
    assert_eq!(r["dedup_savings_bytes"], 10_000);
    assert!(r["compression_savings_bytes"].as_i64().unwrap() > 150_000, "{r}");
    assert_eq!(r["by_token_label"][""]["hits"], 3);

    let all: serde_json::Value = t
        .client
        .get(t.url("/_hearth/api/stats"))
        .send()
        .await
        .map(json)
        .unwrap()
        .await;
    let names: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["quiet", "team"]);
    let bad = t
        .client
        .get(t.url("/_hearth/api/stats?since=yesterday"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("invalid since"));
    t.stop().await;
}

on_both_databases!(
    metrics_count_cache_traffic_without_leaking_keys,
    misses_are_classified_cold_or_evicted,
    stats_api_reports_traffic_and_savings,
);

/// kill -9 loses at most the last flush interval: everything older is in the database.
#[tokio::test]
async fn a_crash_loses_at_most_one_flush_interval() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--stats-flush-interval",
            "200ms",
            "--data-dir",
        ])
        .arg(dir.path())
        .env_remove("HEARTH_CONFIG")
        .env_remove("HEARTH_DATABASE_URL")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let addr = stderr
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.split("listening on http://")
                .nth(1)
                .map(|r| r.split_whitespace().next().unwrap().to_string())
        })
        .expect("hearth logged its address");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = format!("http://{addr}");
    client.put(format!("{base}/ns/k")).body("v").send().await.unwrap();
    for _ in 0..10 {
        client.get(format!("{base}/ns/k")).send().await.unwrap();
    }
    let url = format!("sqlite://{}", dir.path().join("hearth.db").display());
    let meta = common::open_meta(&url).await;
    // Older than one interval: must be in the database, crash or not.
    assert!(eventually(5, || async { stats_total(&meta, "ns").await.hits == 10 }).await);
    for _ in 0..5 {
        client.get(format!("{base}/ns/k")).send().await.unwrap();
    }
    child.kill().unwrap(); // SIGKILL: no graceful flush
    child.wait().unwrap();
    let c = stats_total(&meta, "ns").await;
    assert!((10..=15).contains(&c.hits), "{c:?}");
    assert_eq!(c.writes, 1);
}
