//! The HTTP surface: the WebDAV front-end (sccache's `webdav` backend, ccache's `http`
//! storage) on every path, plus `/healthz`, `/readyz` and `/metrics`. Responses are never content-encoded:
//! neither sccache nor ccache decodes them.

mod admin;
mod connection;
mod error;
mod health;
mod observe;
pub mod propfind;
mod webdav;

pub use connection::serve;

use crate::cache::Cache;
use crate::metrics::Metrics;
use axum::routing::{delete, get};
use axum::Router;
use std::sync::Arc;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    pub cache: Cache,
    pub access: crate::access::AccessControl,
    pub metrics: Arc<Metrics>,
    /// Permits for uploads in progress (`max-concurrent-uploads`).
    pub uploads: Arc<tokio::sync::Semaphore>,
    /// Unix time the server started: the `getlastmodified` of virtual collections.
    pub started_at: i64,
}

/// The admin API, every route behind the admin check.
fn admin_api(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/stats", get(admin::stats))
        .route("/namespaces", get(admin::list_namespaces).post(admin::create_namespace))
        .route("/namespaces/{name}", delete(admin::delete_namespace))
        .route("/tokens", get(admin::list_tokens).post(admin::create_token))
        .route("/tokens/{token}", delete(admin::revoke_token))
        .route_layer(axum::middleware::from_fn_with_state(state, admin::guard))
}

/// The complete router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(observe::metrics))
        .nest("/_hearth/api", admin_api(state.clone()))
        .fallback(webdav::handle)
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe::track))
        .layer(TraceLayer::new_for_http())
        .layer(CatchPanicLayer::new())
        .with_state(state)
}
