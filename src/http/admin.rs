//! The admin API, JSON over HTTP under `/_hearth/api/`: statistics, namespaces, tokens.
//! In secured mode every call needs an admin token valid for all namespaces.

use super::webdav::refusal;
use super::AppState;
use crate::auth::Denied;
use crate::auth::{self, Access, Scope};
use crate::meta::MetadataStore;
use crate::Error;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

fn api_error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(serde_json::json!({ "error": message.to_string() }))).into_response()
}

fn failed(e: Error) -> Response {
    if e.status().is_server_error() {
        tracing::error!(error = %e, "admin request failed");
    }
    api_error(e.status(), e)
}

/// Lets the request through if the caller may administer hearth.
async fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    let secret = auth::presented_secret(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()))
        .map_err(|reason| api_error(StatusCode::BAD_REQUEST, reason))?;
    let secured = state.access.secured().await.map_err(failed)?;
    let principal = match state.access.principal(secret.as_deref().filter(|_| secured)).await {
        Ok(Ok(p)) => p,
        Ok(Err(denied)) => return Err(json_refusal(denied)),
        Err(e) => return Err(failed(e)),
    };
    auth::authorize(principal.as_ref(), None, Access::Admin, secured, false).map_err(json_refusal)
}

/// Route layer of the admin API: every call needs an admin token (in secured mode).
pub async fn guard(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    match require_admin(&state, request.headers()).await {
        Ok(()) => next.run(request).await,
        Err(refused) => refused,
    }
}

/// The WebDAV refusal (status and challenge headers) with a JSON body.
fn json_refusal(denied: Denied) -> Response {
    let reason = match &denied {
        Denied::Unauthenticated(reason) | Denied::Forbidden(reason) => *reason,
    };
    let plain = refusal(denied);
    let mut response = api_error(plain.status(), reason);
    for value in plain.headers().get_all(header::WWW_AUTHENTICATE) {
        response.headers_mut().append(header::WWW_AUTHENTICATE, value.clone());
    }
    response
}

/// Query of `GET /_hearth/api/stats`.
#[derive(Debug, Deserialize)]
pub struct StatsQuery {
    /// Only this namespace (empty = all).
    namespace: Option<String>,
    /// Window such as `1h`, `24h`, `7d`; default 24h.
    since: Option<String>,
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
        Err(e) => failed(e),
    }
}

/// `GET /_hearth/api/namespaces`.
pub async fn list_namespaces(State(state): State<Arc<AppState>>) -> Response {
    match state.cache.meta().list_namespaces().await {
        Ok(rows) => Json(rows).into_response(),
        Err(e) => failed(e),
    }
}

/// Body of `POST /_hearth/api/namespaces`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewNamespace {
    name: String,
    #[serde(default)]
    quota_bytes: Option<u64>,
    #[serde(default)]
    anonymous_read: bool,
}

/// `POST /_hearth/api/namespaces` → 201.
pub async fn create_namespace(
    State(state): State<Arc<AppState>>,
    body: Result<Json<NewNamespace>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(body) => body,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    match crate::admin::create_namespace(state.cache.meta(), &body.name, body.quota_bytes, body.anonymous_read).await {
        Ok(row) => {
            state.access.invalidate();
            (StatusCode::CREATED, Json(row)).into_response()
        }
        Err(e) => failed(e),
    }
}

/// `DELETE /_hearth/api/namespaces/{name}` → 204.
pub async fn delete_namespace(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    match crate::admin::delete_namespace(state.cache.meta(), &name).await {
        Ok(()) => {
            state.access.invalidate();
            state.cache.forget_namespaces();
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => failed(e),
    }
}

/// `GET /_hearth/api/tokens`: labels, scopes, last use — never secrets.
pub async fn list_tokens(State(state): State<Arc<AppState>>) -> Response {
    match state.cache.meta().list_tokens().await {
        Ok(tokens) => Json(tokens).into_response(),
        Err(e) => failed(e),
    }
}

/// Body of `POST /_hearth/api/tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTokenRequest {
    /// `null` or absent: every namespace.
    #[serde(default)]
    namespace: Option<String>,
    scope: String,
    label: String,
}

/// `POST /_hearth/api/tokens` → 201 with the token and its secret (shown only here).
pub async fn create_token(
    State(state): State<Arc<AppState>>,
    body: Result<Json<NewTokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(body) => body,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let scope: Scope = match body.scope.parse() {
        Ok(scope) => scope,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, e),
    };
    match crate::admin::create_token(state.cache.meta(), body.namespace.as_deref(), scope, &body.label).await {
        Ok(created) => {
            state.access.invalidate();
            (StatusCode::CREATED, Json(created)).into_response()
        }
        Err(e) => failed(e),
    }
}

/// Query of `DELETE /_hearth/api/tokens/{id or label}`.
#[derive(Debug, Deserialize)]
pub struct RevokeQuery {
    #[serde(default)]
    purge: bool,
}

/// `DELETE /_hearth/api/tokens/{id or label}?purge=true` → the revoked token and what was purged.
pub async fn revoke_token(
    State(state): State<Arc<AppState>>,
    Path(token): Path<String>,
    Query(query): Query<RevokeQuery>,
) -> Response {
    match crate::admin::revoke_token(state.cache.meta(), &token, query.purge).await {
        Ok(revoked) => {
            state.access.invalidate();
            if query.purge {
                state.cache.forget_hot_entries();
            }
            Json(revoked).into_response()
        }
        Err(e) => failed(e),
    }
}
