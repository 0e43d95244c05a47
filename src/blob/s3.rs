//! The S3 backend (AWS S3 or any S3-compatible store: MinIO, Ceph RGW, Garage, R2), through
//! `aws-sdk-s3`.
//!
//! ```text
//!  body ─► local staging (hash + compress, temp file) ─► PutObject (< 8 MiB)
//!                                                      └► multipart upload (≥ 8 MiB), aborted on error
//!         then the object appears under <prefix>blobs/<aa>/<bb>/<blake3>[.zst]
//! ```
//!
//! A blob is named by the hash of its content, known only once the whole body has arrived,
//! so uploads are spooled through the same local staging as the file-system backend (bounded
//! disk, bounded memory) and then sent to their final key. A client that disconnects never
//! reaches S3; an upload to S3 that fails is aborted, so no multipart upload is left behind.
//! Reads stream `GetObject` through the same decoder and hash check as local blobs. Blobs
//! are deleted by key (from the metadata), never by listing the bucket.

use super::local::{LocalStore, StagedBlob};
use super::verify::{read_verified, VerifiedChunks};
use super::{BlobInfo, BlobRead, Encoding};
use crate::{Error, Result};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use std::fmt;
use std::io;
use std::time::Duration;
use tokio::sync::mpsc;

/// Objects up to this size go up in one PutObject; larger ones in parts of this size.
/// S3 requires parts of at least 5 MiB (but the last).
pub const PART_SIZE: u64 = 8 << 20;
/// Blobs up to this size are read whole and verified before the response starts.
const WHOLE_READ_LIMIT: u64 = 1 << 20;
/// Chunk size of streamed reads.
const READ_CHUNK: usize = 256 * 1024;

/// Where and how to reach the bucket.
#[derive(Clone, Debug)]
pub struct S3Settings {
    pub bucket: String,
    /// Key prefix, e.g. `hearth/` (a trailing `/` is added when missing).
    pub prefix: String,
    /// Endpoint URL of an S3-compatible store; `None` for AWS.
    pub endpoint: Option<String>,
    /// Region; `None` takes it from the AWS environment/profile chain.
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most self-hosted stores need.
    pub path_style: bool,
    /// Longest a single S3 operation (with its retries) may take: a slow store turns into
    /// misses and 503s, never a hung client.
    pub operation_timeout: Duration,
}

/// Content-addressed blobs in a bucket.
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    /// Staging area for uploads (the data dir's `tmp/`).
    staging: LocalStore,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn s3_error(context: String) -> impl FnOnce(String) -> Error {
    move |detail| Error::Storage {
        context,
        source: io::Error::other(detail),
    }
}

/// The error chain of an SDK error on one line (its Display alone says little).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl S3Store {
    /// Builds the client from the settings and the standard AWS credential chain
    /// (environment, profile, web identity, instance role).
    pub async fn connect(settings: &S3Settings, staging: LocalStore) -> Result<S3Store> {
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_timeout(settings.operation_timeout)
            .build();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .timeout_config(timeouts)
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3));
        if let Some(region) = &settings.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(endpoint) = &settings.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let shared = loader.load().await;
        let config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(settings.path_style)
            .build();
        let mut prefix = settings.prefix.trim_start_matches('/').to_string();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(S3Store {
            client: Client::from_conf(config),
            bucket: settings.bucket.clone(),
            prefix,
            staging,
        })
    }

    /// The object key of a blob: the same fan-out as the local store.
    pub fn key(&self, info: &BlobInfo) -> String {
        let hash = &info.hash;
        let suffix = match info.encoding {
            Encoding::Raw => "",
            Encoding::Zstd => ".zst",
        };
        format!("{}blobs/{}/{}/{hash}{suffix}", self.prefix, &hash[0..2], &hash[2..4])
    }

    pub(super) fn staging(&self) -> &LocalStore {
        &self.staging
    }

    /// Uploads a staged blob to its key: one PutObject, or a multipart upload that is aborted
    /// if any part fails. The temp file goes either way.
    pub(super) async fn publish(&self, mut staged: StagedBlob) -> Result<()> {
        let Some(path) = staged.take_temp() else { return Ok(()) };
        let key = self.key(&staged.info);
        let size = staged.info.stored_size;
        let result = if size < PART_SIZE {
            self.put_single(&key, &path).await
        } else {
            self.put_multipart(&key, &path, size).await
        };
        let _ = tokio::fs::remove_file(&path).await;
        result
    }

    async fn put_single(&self, key: &str, path: &std::path::Path) -> Result<()> {
        let body = ByteStream::from_path(path)
            .await
            .map_err(|e| s3_error(format!("reading staged blob {}", path.display()))(chain(&e)))?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(body)
            .send()
            .await
            .map_err(|e| s3_error(format!("uploading {key}"))(chain(&e)))?;
        Ok(())
    }

    async fn put_multipart(&self, key: &str, path: &std::path::Path, size: u64) -> Result<()> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| s3_error(format!("starting the upload of {key}"))(chain(&e)))?;
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        let uploaded = self.upload_parts(key, path, size, &upload_id).await;
        let completed = match uploaded {
            Ok(parts) => self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
                .map(drop)
                .map_err(|e| s3_error(format!("completing the upload of {key}"))(chain(&e))),
            Err(e) => Err(e),
        };
        if completed.is_err() {
            // No half-uploaded parts may stay behind (they cost money and are invisible).
            let abort = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
            if let Err(e) = abort {
                tracing::error!(key, error = %chain(&e), "could not abort a failed multipart upload");
            }
        }
        completed
    }

    async fn upload_parts(
        &self,
        key: &str,
        path: &std::path::Path,
        size: u64,
        upload_id: &str,
    ) -> Result<Vec<CompletedPart>> {
        let mut parts = Vec::new();
        let mut offset = 0;
        let mut number = 1;
        while offset < size {
            let length = PART_SIZE.min(size - offset);
            let body = ByteStream::read_from()
                .path(path)
                .offset(offset)
                .length(Length::Exact(length))
                .build()
                .await
                .map_err(|e| s3_error(format!("reading staged blob {}", path.display()))(chain(&e)))?;
            let part = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .body(body)
                .send()
                .await
                .map_err(|e| s3_error(format!("uploading part {number} of {key}"))(chain(&e)))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(part.e_tag().map(String::from))
                    .build(),
            );
            offset += length;
            number += 1;
        }
        Ok(parts)
    }

    /// Every object key under this store's `blobs/` prefix. Only `hearth verify` lists the
    /// bucket; garbage collection deletes by key from the metadata.
    pub async fn list_blob_keys(&self) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(format!("{}blobs/", self.prefix))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| s3_error(format!("listing bucket {}", self.bucket))(chain(&e)))?;
            keys.extend(page.contents().iter().filter_map(|o| o.key().map(String::from)));
        }
        keys.sort();
        Ok(keys)
    }

    /// Deletes an object by key (for `hearth verify --repair`).
    pub async fn delete_key(&self, key: &str) -> Result<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| s3_error(format!("deleting {key}"))(chain(&e)))?;
        Ok(())
    }

    /// The staging store (its temp files are checked by `hearth verify` too).
    pub fn staging_store(&self) -> &LocalStore {
        &self.staging
    }

    /// Opens a blob for reading; `Ok(None)` if the object does not exist.
    pub(super) async fn read(&self, info: &BlobInfo) -> Result<Option<BlobRead>> {
        let key = self.key(info);
        let object = match self.client.get_object().bucket(&self.bucket).key(&key).send().await {
            Ok(object) => object,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(s3_error(format!("reading {key}"))(chain(&e))),
        };
        if info.raw_size <= WHOLE_READ_LIMIT {
            let bytes = object
                .body
                .collect()
                .await
                .map_err(|e| s3_error(format!("reading {key}"))(chain(&e)))?
                .into_bytes();
            return match read_verified(&bytes[..], info) {
                Ok(content) => Ok(Some(BlobRead::Whole(content))),
                Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(Error::CorruptBlob {
                    hash: info.hash.clone(),
                    detail: e.to_string(),
                }),
                Err(e) => Err(Error::storage(format!("reading {key}"))(e)),
            };
        }
        // Large blobs: a blocking thread reads the body through the decoder and hash check,
        // holding back the last chunk until the content is verified.
        let reader = tokio_util::io::SyncIoBridge::new(object.body.into_async_read());
        let (tx, rx) = mpsc::channel(4);
        let info = info.clone();
        tokio::task::spawn_blocking(move || {
            let chunks = match VerifiedChunks::new(reader, info, READ_CHUNK) {
                Ok(chunks) => chunks,
                Err(e) => return drop(tx.blocking_send(Err(e))),
            };
            for chunk in chunks {
                if tx.blocking_send(chunk).is_err() {
                    break; // the client went away
                }
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
        Ok(Some(BlobRead::Stream(Box::pin(stream))))
    }

    /// Deletes a blob by key (absent is fine).
    pub(super) async fn delete(&self, info: &BlobInfo) -> Result<()> {
        let key = self.key(info);
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| s3_error(format!("deleting {key}"))(chain(&e)))?;
        Ok(())
    }

    /// The bucket answers (for `/readyz`), and the staging directory is writable.
    pub(super) async fn check_ready(&self) -> Result<()> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| s3_error(format!("reaching bucket {}", self.bucket))(chain(&e)))?;
        self.staging.check_ready().await
    }
}
