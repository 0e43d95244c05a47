//! The one place where library errors become HTTP statuses for the WebDAV front-end.
//! Server-side failures are logged here, once, with their cause chain; clients get one line.

use crate::Error;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

impl Error {
    /// The status a WebDAV client sees for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::InvalidPath(_) | Error::IncompleteUpload(_) => StatusCode::BAD_REQUEST,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Database { .. } | Error::DatabaseUnavailable(_) | Error::BlobUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::Storage { .. } if self.is_out_of_space() => StatusCode::INSUFFICIENT_STORAGE,
            Error::Storage { .. } if self.is_read_only_storage() => StatusCode::SERVICE_UNAVAILABLE,
            Error::Storage { .. } | Error::CorruptBlob { .. } | Error::Migrate(_) | Error::Config(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

/// The error and its causes on one line.
fn chain(error: &Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %chain(&self), status = status.as_u16(), "request failed");
        } else {
            tracing::debug!(error = %self, status = status.as_u16(), "request refused");
        }
        let mut response = (status, format!("{self}\n")).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}
