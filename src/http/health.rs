//! Liveness and readiness for load balancers and compose health checks.

use super::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use std::sync::Arc;
use std::time::Duration;

/// Readiness must answer quickly even when a dependency hangs.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// `/healthz`: the process is up and serving HTTP.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `/readyz`: the database and the blob store are reachable.
pub async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, String) {
    match tokio::time::timeout(READY_TIMEOUT, state.cache.check_ready()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n".into()),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: dependency check timed out\n".into(),
        ),
    }
}
