//! `hearth verify [--repair]`: reconciles the blob store (directory or bucket) with the
//! database on demand.
//! Start-up never scans (the database knows the store's contents); this is the explicit check
//! after a crash, a disk problem or files deleted by hand.
//!
//! It finds orphan files (no row points at them), missing files (a row whose file is gone) and
//! corrupt blobs (content that does not hash to its name). `--repair` deletes orphans and stale
//! temp files, and forgets missing or corrupt blobs together with the entries that point at
//! them (later GETs are clean misses, and the next upload stores them again).

use crate::blob::{BlobInfo, BlobRead, BlobStore, LocalStore};
use crate::meta::{BlobState, MetaStore, MetadataStore};
use crate::{Error, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;
use tokio::task::spawn_blocking;

/// Blob rows read per database round trip.
const PAGE: i64 = 1000;

/// What `verify` found (and, with `repair`, fixed).
#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub repaired: bool,
    /// Blob rows checked against their files.
    pub checked_blobs: u64,
    /// Files (local) or object keys (S3) no blob row accounts for.
    pub orphan_files: Vec<String>,
    /// Blobs whose file is gone.
    pub missing_blobs: Vec<String>,
    /// Blobs whose content does not hash to their name.
    pub corrupt_blobs: Vec<String>,
    /// Upload temp files left by a crash.
    pub stale_temp_files: Vec<PathBuf>,
    /// Entries removed with missing or corrupt blobs.
    pub forgotten_entries: u64,
    /// The kept storage totals and blob reference counts against a recount.
    pub totals: crate::meta::TotalsCheck,
}

impl VerifyReport {
    /// Nothing to repair.
    pub fn is_clean(&self) -> bool {
        self.orphan_files.is_empty()
            && self.missing_blobs.is_empty()
            && self.corrupt_blobs.is_empty()
            && self.stale_temp_files.is_empty()
            && self.totals.is_exact()
    }
}

fn blocking_failed(e: tokio::task::JoinError) -> Error {
    Error::storage("verify worker")(std::io::Error::other(e.to_string()))
}

/// Where a blob or an orphan lives: a path (local) or an object key (S3).
fn location(store: &BlobStore, info: &BlobInfo) -> String {
    match store {
        BlobStore::Local(local) => local.blob_path(&info.hash, info.encoding).display().to_string(),
        BlobStore::S3(s3) => s3.key(info),
    }
}

async fn list(store: &BlobStore) -> Result<Vec<String>> {
    match store {
        BlobStore::Local(local) => {
            let lister = local.clone();
            let files = spawn_blocking(move || lister.list_files())
                .await
                .map_err(blocking_failed)?
                .map_err(Error::storage("listing the blob directory"))?;
            Ok(files.into_iter().map(|(path, _)| path.display().to_string()).collect())
        }
        BlobStore::S3(s3) => s3.list_blob_keys().await,
    }
}

fn staging(store: &BlobStore) -> &LocalStore {
    match store {
        BlobStore::Local(local) => local,
        BlobStore::S3(s3) => s3.staging_store(),
    }
}

/// `Some(true)`: intact; `Some(false)`: content does not match the name; `None`: missing.
async fn check(store: &BlobStore, info: &BlobInfo) -> Result<Option<bool>> {
    use futures_util::StreamExt;
    if let BlobStore::Local(local) = store {
        let (checker, info) = (local.clone(), info.clone());
        let hash = info.hash.clone();
        return spawn_blocking(move || checker.check(&info))
            .await
            .map_err(blocking_failed)?
            .map_err(Error::storage(format!("reading blob {hash}")));
    }
    match store.read(info).await {
        Ok(None) => Ok(None),
        Ok(Some(BlobRead::Whole(_))) => Ok(Some(true)),
        Ok(Some(BlobRead::Stream(mut chunks))) => {
            while let Some(chunk) = chunks.next().await {
                match chunk {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => return Ok(Some(false)),
                    Err(e) => return Err(Error::storage(format!("reading blob {}", info.hash))(e)),
                }
            }
            Ok(Some(true))
        }
        Err(Error::CorruptBlob { .. }) => Ok(Some(false)),
        Err(e) => Err(e),
    }
}

async fn remove_orphan(store: &BlobStore, orphan: &str) -> Result<()> {
    match store {
        BlobStore::Local(_) => tokio::fs::remove_file(orphan)
            .await
            .map_err(Error::storage(format!("removing {orphan}"))),
        BlobStore::S3(s3) => s3.delete_key(orphan).await,
    }
}

/// Checks every blob row against the store and every stored file or object against the rows.
pub async fn verify(meta: &MetaStore, store: &BlobStore, repair: bool) -> Result<VerifyReport> {
    let mut report = VerifyReport {
        repaired: repair,
        ..Default::default()
    };
    let stored = list(store).await?;
    let mut unaccounted: HashMap<String, ()> = stored.iter().map(|s| (s.clone(), ())).collect();

    let mut after = String::new();
    loop {
        let rows = meta.blobs_after(&after, PAGE).await?;
        let Some(last) = rows.last() else { break };
        after = last.info.hash.clone();
        for row in rows {
            unaccounted.remove(&location(store, &row.info));
            if row.state != BlobState::Valid {
                continue; // uploads in flight and collections in progress are GC's business
            }
            report.checked_blobs += 1;
            match check(store, &row.info).await? {
                Some(true) => {}
                Some(false) => report.corrupt_blobs.push(row.info.hash.clone()),
                None => report.missing_blobs.push(row.info.hash.clone()),
            }
        }
    }
    report.orphan_files = stored.into_iter().filter(|s| unaccounted.contains_key(s)).collect();
    report.stale_temp_files = staging(store).stale_temp_files();
    report.totals = meta.check_totals().await?;

    if repair {
        for orphan in &report.orphan_files {
            remove_orphan(store, orphan).await?;
        }
        for path in &report.stale_temp_files {
            tokio::fs::remove_file(path)
                .await
                .map_err(Error::storage(format!("removing {}", path.display())))?;
        }
        for hash in report.corrupt_blobs.iter().chain(&report.missing_blobs) {
            if let Some(row) = meta.blob(hash).await? {
                store.delete(&row.info).await?;
            }
            report.forgotten_entries += meta.forget_blob(hash).await?;
        }
        if !report.totals.is_exact() {
            meta.repair_totals().await?;
        }
    }
    Ok(report)
}
