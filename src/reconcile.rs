//! `hearth verify [--repair]`: reconciles the blob directory with the database on demand.
//! Start-up never scans (the database knows the store's contents); this is the explicit check
//! after a crash, a disk problem or files deleted by hand.
//!
//! It finds orphan files (no row points at them), missing files (a row whose file is gone) and
//! corrupt blobs (content that does not hash to its name). `--repair` deletes orphans and stale
//! temp files, and forgets missing or corrupt blobs together with the entries that point at
//! them (later GETs are clean misses, and the next upload stores them again).

use crate::blob::LocalStore;
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
    /// Files no blob row accounts for.
    pub orphan_files: Vec<PathBuf>,
    /// Blobs whose file is gone.
    pub missing_blobs: Vec<String>,
    /// Blobs whose content does not hash to their name.
    pub corrupt_blobs: Vec<String>,
    /// Upload temp files left by a crash.
    pub stale_temp_files: Vec<PathBuf>,
    /// Entries removed with missing or corrupt blobs.
    pub forgotten_entries: u64,
}

impl VerifyReport {
    /// Nothing to repair.
    pub fn is_clean(&self) -> bool {
        self.orphan_files.is_empty()
            && self.missing_blobs.is_empty()
            && self.corrupt_blobs.is_empty()
            && self.stale_temp_files.is_empty()
    }
}

fn blocking_failed(e: tokio::task::JoinError) -> Error {
    Error::storage("verify worker")(std::io::Error::other(e.to_string()))
}

/// Checks every blob row against the store and every file against the rows.
pub async fn verify(meta: &MetaStore, store: &LocalStore, repair: bool) -> Result<VerifyReport> {
    let mut report = VerifyReport {
        repaired: repair,
        ..Default::default()
    };
    let lister = store.clone();
    let files = spawn_blocking(move || lister.list_files())
        .await
        .map_err(blocking_failed)?
        .map_err(Error::storage("listing the blob directory"))?;
    let mut unaccounted: HashMap<PathBuf, ()> = files.iter().map(|(path, _)| (path.clone(), ())).collect();

    let mut after = String::new();
    loop {
        let rows = meta.blobs_after(&after, PAGE).await?;
        let Some(last) = rows.last() else { break };
        after = last.info.hash.clone();
        for row in rows {
            unaccounted.remove(&store.blob_path(&row.info.hash, row.info.encoding));
            if row.state != BlobState::Valid {
                continue; // uploads in flight and collections in progress are GC's business
            }
            report.checked_blobs += 1;
            let (checker, info) = (store.clone(), row.info.clone());
            let verdict = spawn_blocking(move || checker.check(&info))
                .await
                .map_err(blocking_failed)?
                .map_err(Error::storage(format!("reading blob {}", row.info.hash)))?;
            match verdict {
                Some(true) => {}
                Some(false) => report.corrupt_blobs.push(row.info.hash.clone()),
                None => report.missing_blobs.push(row.info.hash.clone()),
            }
        }
    }
    report.orphan_files = files
        .into_iter()
        .map(|(path, _)| path)
        .filter(|p| unaccounted.contains_key(p))
        .collect();
    report.stale_temp_files = store.stale_temp_files();

    if repair {
        for path in report.orphan_files.iter().chain(&report.stale_temp_files) {
            tokio::fs::remove_file(path)
                .await
                .map_err(Error::storage(format!("removing {}", path.display())))?;
        }
        for hash in report.corrupt_blobs.iter().chain(&report.missing_blobs) {
            if let Some(row) = meta.blob(hash).await? {
                crate::blob::BlobStore::Local(store.clone()).delete(&row.info).await?;
            }
            report.forgotten_entries += meta.forget_blob(hash).await?;
        }
    }
    Ok(report)
}
