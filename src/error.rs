//! The library's one error type. Each protocol front-end maps it to a status in one place
//! (`http::error` for WebDAV); server-side failures are logged there once, with their chain.

use std::io;

/// Everything that can go wrong below the HTTP layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request names something that can never be a valid namespace or key.
    #[error("invalid path: {0}")]
    InvalidPath(String),

    /// The body is larger than `max-body-size`.
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: u64 },

    /// The client stopped sending before the body was complete: nothing was stored.
    #[error("upload incomplete: {0}")]
    IncompleteUpload(String),

    /// The metadata database failed or is unreachable.
    #[error("metadata store: {context}")]
    Database {
        context: &'static str,
        #[source]
        source: sqlx::Error,
    },

    /// The database was found unreachable moments ago; calls fail fast until it answers.
    #[error("metadata store: {0}")]
    DatabaseUnavailable(String),

    /// Applying the schema migrations failed.
    #[error("metadata store: migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    /// Reading or writing the blob store failed.
    #[error("blob store: {context}")]
    Storage {
        context: String,
        #[source]
        source: io::Error,
    },

    /// The blob an upload wanted to reference is missing or being garbage-collected; the
    /// client may retry.
    #[error("blob {0} is not available for new references")]
    BlobUnavailable(String),

    /// A stored blob does not hash to its name: it is never served.
    #[error("blob {hash} is corrupt: {detail}")]
    CorruptBlob { hash: String, detail: String },

    /// The request contradicts what exists (a duplicate label, a missing namespace, …).
    #[error("{0}")]
    Conflict(String),

    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),

    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
}

/// Shorthand used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps a database error with what hearth was doing.
    pub fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
        move |source| Error::Database { context, source }
    }

    /// Wraps an I/O error of the blob store with what hearth was doing.
    pub fn storage(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let context = context.into();
        move |source| Error::Storage { context, source }
    }

    /// The `kind` label of `hearth_errors_total` for this error.
    pub fn metric_kind(&self) -> &'static str {
        match self {
            Error::Database { .. } | Error::DatabaseUnavailable(_) => "database",
            Error::Storage { .. } => "storage",
            Error::CorruptBlob { .. } => "corrupt_blob",
            Error::BlobUnavailable(_) => "unavailable",
            _ => "internal",
        }
    }

    /// True when the blob store's file system is read-only (answered 503: writes may return).
    pub fn is_read_only_storage(&self) -> bool {
        matches!(self, Error::Storage { source, .. } if source.kind() == io::ErrorKind::ReadOnlyFilesystem
            || source.raw_os_error() == Some(30 /* EROFS */))
    }

    /// True when the blob store ran out of space (answered 507 rather than 503).
    pub fn is_out_of_space(&self) -> bool {
        matches!(self, Error::Storage { source, .. } if source.kind() == io::ErrorKind::StorageFull
            || source.raw_os_error() == Some(28 /* ENOSPC */)
            || source.raw_os_error() == Some(122 /* EDQUOT */))
    }
}
