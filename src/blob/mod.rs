//! Content-addressed blob storage: a blob is named by the blake3 hash of its raw bytes, so
//! identical outputs under any key, in any namespace, are stored once.
//!
//! Backends sit behind [`BlobStore`], an enum so that handlers carry no type parameters.
//! Bodies are streams both ways; memory stays bounded whatever the artifact size.

#[cfg(target_os = "linux")]
mod btrfs_space;
mod free_space;
mod local;
mod pipeline;
mod s3;
mod upload_threads;
mod verify;
mod writeback;

#[cfg(target_os = "linux")]
pub(crate) use btrfs_space::is_btrfs;
pub use local::LocalStore;
pub use pipeline::{choose_encoding, EncodingWriter, SAMPLE_SIZE};
pub use s3::{S3Settings, S3Store, PART_SIZE};
pub use verify::{read_verified, VerifiedChunks};

use crate::Result;
use bytes::Bytes;
use futures_util::Stream;
use std::fmt;
use std::str::FromStr;

/// How a blob's bytes sit in the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// As uploaded: already-compressed content (sccache's and ccache's entries).
    Raw,
    /// One zstd frame: content that compresses, such as raw object files.
    Zstd,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Raw => "raw",
            Encoding::Zstd => "zstd",
        }
    }
}

impl FromStr for Encoding {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "raw" => Ok(Encoding::Raw),
            "zstd" => Ok(Encoding::Zstd),
            other => Err(format!("unknown blob encoding {other:?}")),
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything needed to find, decode and verify one stored blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    /// blake3 of the raw content, 64 lowercase hex digits.
    pub hash: String,
    /// Size of the raw content, as served.
    pub raw_size: u64,
    /// Size as stored (after compression).
    pub stored_size: u64,
    pub encoding: Encoding,
    /// What the content means, where it is an entry hearth can read ([`crate::meaning`]).
    pub meaning: Option<crate::meaning::Meaning>,
}

/// A verified body: chunks end with an error instead of a last chunk if the blob is corrupt.
pub type BlobBody = std::pin::Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// A blob read from the store.
pub enum BlobRead {
    /// Small blobs are read, decoded and verified whole before the response starts, so a
    /// corrupt one is a clean miss.
    Whole(Bytes),
    /// Large blobs stream; the last chunk is held back until the hash checks out.
    Stream(BlobBody),
}

/// Upload staged in the store but not yet visible under its content address.
pub use local::StagedBlob;

/// The configured blob store backend.
#[derive(Clone, Debug)]
pub enum BlobStore {
    Local(LocalStore),
    S3(S3Store),
}

/// Each backend's future is boxed, for the reason given at `crate::meta`'s `dispatch!`: the
/// S3 client's futures are large, and every future above would carry their size.
impl BlobStore {
    /// Streams `body` through hashing and (if it pays) compression into a temporary object.
    /// Fails with 413-class [`crate::Error::PayloadTooLarge`] past `limit` bytes, and with
    /// [`crate::Error::IncompleteUpload`] if the body breaks off; nothing is left behind.
    pub async fn stage<S, E>(&self, body: S, limit: u64, compression_level: i32) -> Result<StagedBlob>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: fmt::Display,
    {
        match self {
            BlobStore::Local(store) => Box::pin(store.stage(body, limit, compression_level)).await,
            BlobStore::S3(store) => Box::pin(store.staging().stage(body, limit, compression_level)).await,
        }
    }

    /// Makes a staged blob visible under its content address (atomically, after fsync).
    pub async fn publish(&self, staged: StagedBlob) -> Result<()> {
        match self {
            BlobStore::Local(store) => Box::pin(store.publish(staged)).await,
            BlobStore::S3(store) => Box::pin(store.publish(staged)).await,
        }
    }

    /// Opens a blob for reading. `Ok(None)` when it is gone from the store.
    pub async fn read(&self, info: &BlobInfo) -> Result<Option<BlobRead>> {
        match self {
            BlobStore::Local(store) => Box::pin(store.read(info)).await,
            BlobStore::S3(store) => Box::pin(store.read(info)).await,
        }
    }

    /// Removes a blob (missing is fine).
    pub async fn delete(&self, info: &BlobInfo) -> Result<()> {
        match self {
            BlobStore::Local(store) => Box::pin(store.delete(info)).await,
            BlobStore::S3(store) => Box::pin(store.delete(info)).await,
        }
    }

    /// Checks that the store is reachable and writable, for `/readyz`.
    pub async fn check_ready(&self) -> Result<()> {
        match self {
            BlobStore::Local(store) => Box::pin(store.check_ready()).await,
            BlobStore::S3(store) => Box::pin(store.check_ready()).await,
        }
    }
}
