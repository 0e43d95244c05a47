//! `GET /metrics` and the middleware that counts and times every request.

use super::AppState;
use crate::meta::MetadataStore;
use crate::time::unix_now;
use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A scrape never waits longer than this for the storage measurement.
const STORAGE_QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// `(protocol, operation)` labels of a request: a fixed, small set whatever the path.
fn classify(method: &Method, path: &str) -> (&'static str, &'static str) {
    match path {
        "/metrics" => return ("internal", "metrics"),
        "/healthz" => return ("internal", "healthz"),
        "/readyz" => return ("internal", "readyz"),
        _ if path.starts_with("/_hearth/") => return ("admin", "api"),
        _ => {}
    }
    let operation = match method.as_str() {
        "GET" => "get",
        "HEAD" => "head",
        "PUT" => "put",
        "DELETE" => "delete",
        "PROPFIND" => "propfind",
        "MKCOL" => "mkcol",
        "OPTIONS" => "options",
        _ => "other",
    };
    ("webdav", operation)
}

/// Counts and times every request (latency until the response headers are ready).
pub async fn track(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let (protocol, operation) = classify(request.method(), request.uri().path());
    let started = Instant::now();
    let response = next.run(request).await;
    let m = &state.metrics;
    m.http_request_duration
        .with_label_values(&[protocol, operation])
        .observe(started.elapsed().as_secs_f64());
    m.http_requests
        .with_label_values(&[protocol, operation, response.status().as_str()])
        .inc();
    response
}

/// `GET /metrics`: Prometheus text format. Point-in-time values are read at scrape time.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let m = &state.metrics;
    let stats = state.cache.stats();
    let last_flush = match stats.last_flush_unix() {
        0 => state.started_at,
        t => t as i64,
    };
    m.stats_flush_lag.set((unix_now() - last_flush).max(0) as f64);
    let meta = state.cache.meta();
    // Kept totals: a few rows per namespace, read on background connections at every scrape.
    match tokio::time::timeout(STORAGE_QUERY_TIMEOUT, meta.background().storage_usage()).await {
        Ok(Ok(usage)) => m.set_storage(&usage),
        Ok(Err(e)) => {
            m.errors.with_label_values(&[e.metric_kind()]).inc();
            tracing::warn!(error = %e, "could not read storage totals");
        }
        Err(_) => tracing::warn!("reading storage totals timed out"),
    }
    m.database_available.set(meta.available() as i64);
    m.entry_feed_live.set(state.cache.hot().feed_live() as i64);
    let in_use = meta.pool_in_use() as i64;
    m.db_pool_connections.with_label_values(&["in_use"]).set(in_use);
    m.db_pool_connections
        .with_label_values(&["idle"])
        .set(meta.pool_size() as i64 - in_use);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        m.render(),
    )
        .into_response()
}
