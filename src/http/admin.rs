//! The admin API, JSON over HTTP under `/_hearth/api/`.

use super::AppState;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// Query of `GET /_hearth/api/stats`.
#[derive(Debug, Deserialize)]
pub struct StatsQuery {
    /// Only this namespace (empty = all).
    namespace: Option<String>,
    /// Window such as `1h`, `24h`, `7d`; default 24h.
    since: Option<String>,
}

fn api_error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(serde_json::json!({ "error": message.to_string() }))).into_response()
}

/// `GET /_hearth/api/stats?namespace=&since=`: the same reports as `hearth stats --format json`.
pub async fn stats(State(state): State<Arc<AppState>>, Query(query): Query<StatsQuery>) -> Response {
    let since = match query.since.as_deref().filter(|s| !s.is_empty()) {
        None => Duration::from_secs(24 * 3600),
        Some(text) => match humantime::parse_duration(text) {
            Ok(d) => d,
            Err(e) => return api_error(StatusCode::BAD_REQUEST, format!("invalid since {text:?}: {e}")),
        },
    };
    let namespace = query.namespace.as_deref().filter(|s| !s.is_empty());
    match crate::report::namespace_reports(state.cache.meta(), namespace, since).await {
        Ok(reports) => Json(reports).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "stats report failed");
            api_error(e.status(), e)
        }
    }
}
