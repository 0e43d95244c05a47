//! The WebDAV front-end, shaped by what sccache 0.19 (through OpenDAL) and ccache send:
//!
//! | request                          | answer                                              |
//! |----------------------------------|-----------------------------------------------------|
//! | `GET`/`HEAD /<ns>/<key>`         | 200 + exact bytes (`Content-Length`), or 404        |
//! | `PUT /<ns>/<key>`                | 201 new / 204 replaced; 413 over the size limit     |
//! | `PROPFIND` on a directory path   | 207 collection with `getlastmodified` (virtual dirs)|
//! | `PROPFIND` on an object          | 207 with size and etag, or 404                      |
//! | `MKCOL`                          | 201 (directories are virtual: nothing to create)    |
//! | `DELETE /<ns>/<key>`             | 204 or 404                                          |
//! | `OPTIONS`                        | `DAV: 1` and `Allow`                                |
//! | anything else                    | 405                                                 |
//!
//! Every directory-shaped path exists, so an sccache write costs two requests (PROPFIND +
//! PUT) where a real WebDAV server needs up to seven.

use super::propfind::{multistatus, Resource};
use super::AppState;
use crate::auth::{self, Access, Denied};
use crate::blob::BlobRead;
use crate::cache::Caller;
use crate::meta::PutOutcome;
use crate::path::{CacheKey, DavPath, Namespace};
use crate::time::http_date;
use crate::Error;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use std::sync::Arc;

const ALLOW: &str = "OPTIONS, GET, HEAD, PUT, DELETE, PROPFIND, MKCOL";
/// PROPFIND bodies are tiny (sccache sends 91 bytes); anything bigger is not a client of ours.
const MAX_PROPFIND_BODY: usize = 64 * 1024;

/// Entry point for every path that is not one of hearth's own endpoints.
pub async fn handle(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let method = request.method().clone();
    if !ALLOW.split(", ").any(|m| m == method.as_str()) {
        return method_not_allowed();
    }
    if method == Method::OPTIONS {
        return options();
    }
    let path = match DavPath::parse(request.uri().path()) {
        Ok(path) => path,
        Err(e) => return e.into_response(),
    };
    let access = match method.as_str() {
        "PUT" | "MKCOL" | "DELETE" => Access::Write,
        _ => Access::Read,
    };
    let authorization = request.headers().get(header::AUTHORIZATION).cloned();
    let admitted = match admit(&state, authorization.as_ref(), &path, access).await {
        Ok(admitted) => admitted,
        Err(refusal) if has_body(&request) => return close_connection(refusal),
        Err(refusal) => return refusal,
    };
    if admitted.namespace_missing {
        let ns = path.namespace().map(Namespace::as_str).unwrap_or_default();
        let text = format!("namespace {ns:?} does not exist; create it with `hearth namespace create {ns}`\n");
        let response = (StatusCode::NOT_FOUND, text).into_response();
        return if has_body(&request) {
            close_connection(response)
        } else {
            response
        };
    }
    let caller = admitted.caller;
    match (method.as_str(), path) {
        ("GET" | "HEAD", DavPath::Object { namespace, key }) => {
            get(&state, &namespace, &key, &caller, method == Method::HEAD).await
        }
        ("GET" | "HEAD", DavPath::Root) => banner(),
        ("GET" | "HEAD", DavPath::Collection { .. }) => plain(StatusCode::NOT_FOUND, "collections are not listed\n"),
        ("PUT", DavPath::Object { namespace, key }) => {
            // Boxed (as PROPFIND is): an upload's state is kilobytes, which would otherwise be
            // part of every request's future, GETs included.
            Box::pin(put(&state, &namespace, &key, &caller, !admitted.secured, request)).await
        }
        ("PUT", _) => plain(StatusCode::METHOD_NOT_ALLOWED, "cannot PUT a collection\n"),
        ("DELETE", DavPath::Object { namespace, key }) => delete(&state, &namespace, &key).await,
        ("DELETE", _) => plain(StatusCode::FORBIDDEN, "deleting collections is not supported\n"),
        ("PROPFIND", path) => Box::pin(propfind(&state, path, request)).await,
        ("MKCOL", _) => StatusCode::CREATED.into_response(),
        _ => method_not_allowed(),
    }
}

/// A request that passed authentication and authorization.
struct Admitted {
    caller: Caller,
    /// Tokens exist: namespaces must be created explicitly.
    secured: bool,
    /// Secured mode and the namespace does not exist.
    namespace_missing: bool,
}

/// Authenticates the caller and checks the namespace's rules; the refusal is the response.
async fn admit(
    state: &AppState,
    authorization: Option<&HeaderValue>,
    path: &DavPath,
    access: Access,
) -> Result<Admitted, Response> {
    let secret = auth::presented_secret(authorization.map(HeaderValue::as_bytes))
        .map_err(|reason| (StatusCode::BAD_REQUEST, format!("{reason}\n")).into_response())?;
    let secured = state.access.secured().await.map_err(IntoResponse::into_response)?;
    // Open mode has no tokens to check: credentials a client still sends are ignored.
    let principal = match state.access.principal(secret.as_deref().filter(|_| secured)).await {
        Ok(Ok(principal)) => principal,
        Ok(Err(denied)) => return Err(refusal(denied)),
        Err(e) => return Err(e.into_response()),
    };
    let namespace = path.namespace().map(Namespace::as_str);
    let row = match (secured, namespace) {
        (true, Some(ns)) => state.access.namespace(ns).await.map_err(IntoResponse::into_response)?,
        _ => None,
    };
    let anonymous_read = row.as_ref().is_some_and(|r| r.anonymous_read);
    auth::authorize(principal.as_ref(), namespace, access, secured, anonymous_read).map_err(refusal)?;
    Ok(Admitted {
        namespace_missing: secured && namespace.is_some() && row.is_none(),
        caller: Caller::from(principal),
        secured,
    })
}

/// 401 asks for credentials (both schemes clients use); 403 refuses the ones given.
pub fn refusal(denied: Denied) -> Response {
    match denied {
        Denied::Unauthenticated(reason) => {
            let mut response = (StatusCode::UNAUTHORIZED, format!("{reason}\n")).into_response();
            let headers = response.headers_mut();
            headers.append(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"hearth\""),
            );
            headers.append(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"hearth\""),
            );
            response
        }
        Denied::Forbidden(reason) => (StatusCode::FORBIDDEN, format!("{reason}\n")).into_response(),
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (status, text).into_response()
}

fn method_not_allowed() -> Response {
    let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(ALLOW));
    response
}

fn options() -> Response {
    let mut response = StatusCode::OK.into_response();
    let headers = response.headers_mut();
    headers.insert(header::ALLOW, HeaderValue::from_static(ALLOW));
    headers.insert("dav", HeaderValue::from_static("1"));
    response
}

fn banner() -> Response {
    let text = concat!(
        "hearth ",
        env!("CARGO_PKG_VERSION"),
        ": a shared compilation cache.\n",
        "Point sccache at it with SCCACHE_WEBDAV_ENDPOINT=http://<this host>/<namespace>/\n"
    );
    plain(StatusCode::OK, text)
}

fn etag(hash: &str) -> HeaderValue {
    let mut quoted = Vec::with_capacity(hash.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(hash.as_bytes());
    quoted.push(b'"');
    HeaderValue::from_maybe_shared(bytes::Bytes::from(quoted)).expect("hex is a valid header value")
}

async fn get(state: &AppState, ns: &Namespace, key: &CacheKey, caller: &Caller, head_only: bool) -> Response {
    if head_only {
        return match state.cache.head(ns, key).await {
            Ok(Some(entry)) => object_headers(StatusCode::OK, entry.blob.raw_size, entry.created_at, &entry.blob.hash)
                .body(Body::empty())
                .expect("valid response"),
            Ok(None) => StatusCode::NOT_FOUND.into_response(),
            Err(e) => e.into_response(),
        };
    }
    match state.cache.get(ns, key, caller).await {
        Ok(Some(hit)) => {
            let body = match hit.body {
                BlobRead::Whole(bytes) => Body::from(bytes),
                BlobRead::Stream(stream) => Body::from_stream(stream),
            };
            object_headers(StatusCode::OK, hit.blob.raw_size, hit.modified, &hit.blob.hash)
                .body(body)
                .expect("valid response")
        }
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => e.into_response(),
    }
}

fn object_headers(status: StatusCode, size: u64, modified: i64, hash: &str) -> axum::http::response::Builder {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, size)
        .header(header::LAST_MODIFIED, http_date(modified))
        .header(header::ETAG, etag(hash))
}

fn declared_length(request: &Request) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// An answer sent before the request body was read to its end: the connection cannot carry
/// another request, and saying so keeps clients from reusing it (they would see a reset).
fn close_connection(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn refuse_and_close(error: Error) -> Response {
    close_connection(error.into_response())
}

/// The request announces a body (which a refusal leaves unread).
fn has_body(request: &Request) -> bool {
    request.headers().contains_key(header::TRANSFER_ENCODING) || declared_length(request).is_some_and(|n| n > 0)
}

async fn put(
    state: &AppState,
    ns: &Namespace,
    key: &CacheKey,
    caller: &Caller,
    create_namespace: bool,
    request: Request,
) -> Response {
    let limit = state.cache.max_body_size();
    // Refuse before reading a byte when the client announces too much.
    if declared_length(&request).is_some_and(|len| len > limit) {
        return refuse_and_close(Error::PayloadTooLarge { limit });
    }
    // Held until the upload is stored or refused.
    let Ok(_permit) = state.uploads.clone().try_acquire_owned() else {
        let mut busy =
            close_connection((StatusCode::SERVICE_UNAVAILABLE, "too many uploads at once\n").into_response());
        busy.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return busy;
    };
    let body = request.into_body().into_data_stream();
    match state.cache.put(ns, key, body, caller, create_namespace).await {
        Ok(stored) => {
            let status = match stored.outcome {
                PutOutcome::Created => StatusCode::CREATED,
                PutOutcome::Replaced(_) => StatusCode::NO_CONTENT,
            };
            let mut response = status.into_response();
            response.headers_mut().insert(header::ETAG, etag(&stored.blob.hash));
            response
        }
        Err(e @ (Error::PayloadTooLarge { .. } | Error::IncompleteUpload(_) | Error::DatabaseUnavailable(_))) => {
            refuse_and_close(e)
        }
        Err(e) => e.into_response(),
    }
}

async fn delete(state: &AppState, ns: &Namespace, key: &CacheKey) -> Response {
    match state.cache.delete(ns, key).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => e.into_response(),
    }
}

/// Reads (and discards) a PROPFIND body: every client asks for the same few properties.
async fn drain_small_body(request: Request) -> Result<(), Response> {
    let mut body = request.into_body().into_data_stream();
    let mut seen = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| Error::IncompleteUpload(e.to_string()).into_response())?;
        seen += chunk.len();
        if seen > MAX_PROPFIND_BODY {
            return Err(refuse_and_close(Error::PayloadTooLarge {
                limit: MAX_PROPFIND_BODY as u64,
            }));
        }
    }
    Ok(())
}

/// Depth is not enumerated: a collection's members are not listable, and answering for the
/// resource itself is what every client of a cache needs.
async fn propfind(state: &AppState, path: DavPath, request: Request) -> Response {
    let href = request.uri().path().to_string();
    if let Err(response) = drain_small_body(request).await {
        return response;
    }
    let body = match &path {
        DavPath::Root | DavPath::Collection { .. } => multistatus(
            &href,
            &Resource::Collection {
                modified: state.started_at,
            },
        ),
        DavPath::Object { namespace, key } => match state.cache.head(namespace, key).await {
            Ok(Some(entry)) => multistatus(
                &href,
                &Resource::Object {
                    modified: entry.created_at,
                    size: entry.blob.raw_size,
                    etag: &entry.blob.hash,
                },
            ),
            Ok(None) => return StatusCode::NOT_FOUND.into_response(),
            Err(e) => return e.into_response(),
        },
    };
    Response::builder()
        .status(StatusCode::MULTI_STATUS)
        .header(header::CONTENT_TYPE, "application/xml; charset=utf-8")
        .body(Body::from(body))
        .expect("valid response")
}
