//! The local file-system backend.
//!
//! Layout under the data dir: `blobs/<aa>/<bb>/<blake3-hex>` (raw) or `….zst` (zstd), and
//! `tmp/` for uploads in progress, on the same file system so that publishing is a rename.
//! An upload is written to `tmp/`, fsynced, renamed into place and the directory fsynced:
//! a crash leaves the old state or the new one, plus at most a stale temp file.
//!
//! Each process that opens the store writes its temp files into its own `tmp/<session>/`,
//! next to a `tmp/<session>.lock` it holds locked while it lives. A session whose lock can be
//! taken belongs to a dead process (killed, crashed): the next process to open the store
//! removes it at once. Processes sharing a data dir never touch each other's uploads.
//!
//! File I/O runs on tokio's blocking pool; the async side only moves `Bytes` through a
//! small bounded channel, so memory per upload or download stays a few chunks.

use super::free_space::FreeSpace;
use super::pipeline::EncodingWriter;
use super::verify::{read_verified, VerifiedChunks};
use super::{BlobInfo, BlobRead, Encoding};
use crate::{Error, Result};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio::task::spawn_blocking;

/// Blobs up to this size are read and verified whole before the response starts (a corrupt
/// one becomes a clean miss); larger ones stream. Bounds memory at 1 MiB per request.
const WHOLE_READ_LIMIT: u64 = 1 << 20;
/// Chunk size of streamed reads.
const READ_CHUNK: usize = 256 * 1024;
/// Chunks of a download in flight between the file worker and the response.
const CHANNEL_DEPTH: usize = 4;
/// Batches of an upload in flight between the request and the file worker.
const UPLOAD_DEPTH: usize = 2;
/// Body bytes gathered before they cross to the blocking pool. Every crossing wakes a thread,
/// which on a small VM costs more than writing the bytes: a body up to this size is hashed,
/// encoded and written in one blocking call. Bounds an upload's memory at about three times
/// this (one batch gathering, two in flight).
const BATCH_BYTES: usize = 128 * 1024;
/// Loose temp files (outside any session) older than this are removed at start-up.
const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);
/// Suffix of a session's lock file in `tmp/`.
const LOCK_SUFFIX: &str = ".lock";
/// Write buffer between the encoder and the temp file: it gathers the encoder's small writes;
/// larger ones pass straight through. Allocated per upload, so kept small.
const WRITE_BUFFER: usize = 64 * 1024;

/// A file of the blob directory, with the content address (hash, encoding) its name claims.
pub type StoredFile = (PathBuf, Option<(String, Encoding)>);

/// Content-addressed blobs in a directory.
#[derive(Clone)]
pub struct LocalStore {
    blobs: PathBuf,
    /// `tmp/`, holding every process's session.
    tmp_root: PathBuf,
    /// This process's session directory, where its uploads are staged.
    tmp: PathBuf,
    /// Held locked while this store lives: the session is in use.
    _session_lock: std::sync::Arc<File>,
    /// fsync blobs and their directory before they become visible (`sync-writes`).
    sync: bool,
    /// Uploads are refused while the volume has less than its reserve free.
    room: FreeSpace,
}

impl fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalStore").field("blobs", &self.blobs).finish()
    }
}

/// An upload written and synced to a temp file, not yet visible. Dropping it removes the file.
pub struct StagedBlob {
    pub info: BlobInfo,
    /// The raw content, when the body was small enough to arrive in one batch: it can warm the
    /// memory cache, so that the first read after an upload needs no file read.
    pub content: Option<Bytes>,
    temp: Option<PathBuf>,
}

impl StagedBlob {
    /// Hands the temp file over (to a backend that uploads it and removes it).
    pub(super) fn take_temp(&mut self) -> Option<PathBuf> {
        self.temp.take()
    }
}

impl Drop for StagedBlob {
    fn drop(&mut self) {
        if let Some(path) = self.temp.take() {
            let _ = fs::remove_file(path);
        }
    }
}

enum Message {
    Data(Vec<Bytes>),
    Finish,
}

/// Body chunks gathered on the async side before they cross to the blocking pool.
#[derive(Default)]
struct Batch {
    chunks: Vec<Bytes>,
    len: usize,
}

impl Batch {
    fn push(&mut self, bytes: Bytes) {
        self.len += bytes.len();
        self.chunks.push(bytes);
    }
}

/// Reads and drops the rest of a body that will not be stored, up to `limit` bytes: a client
/// still sending when the error answer goes out would see its connection reset instead of
/// the answer. Memory stays one chunk; a body over the limit is left unread (the connection
/// closes then, as for any body over the limit).
async fn drain<S, E>(body: &mut std::pin::Pin<&mut S>, limit: u64)
where
    S: Stream<Item = std::result::Result<Bytes, E>>,
{
    let mut read: u64 = 0;
    while let Some(Ok(chunk)) = body.next().await {
        read += chunk.len() as u64;
        if read > limit {
            break;
        }
    }
}

/// The batch's bytes in one allocation of their own.
fn concatenate(batch: &Batch) -> Bytes {
    let mut whole = Vec::with_capacity(batch.len);
    for chunk in &batch.chunks {
        whole.extend_from_slice(chunk);
    }
    whole.into()
}

/// Creates a directory and its missing parents. With `sync`, the parent of each directory
/// created is fsynced: the directory fsync after a rename makes the blob's entry durable, not
/// a new fan-out directory's own entry in its parent, and on a file system without a journal
/// a power cut could lose a new directory with the blobs in it. Only the first upload into
/// each of the 65,536 fan-out directories pays for it. (An upload into a directory that
/// another one created a moment before does not wait for that one's fsync: a window of about
/// a millisecond, once per directory.) Returns the directories created, outermost first.
fn create_dir_durably(dir: &Path, sync: bool) -> io::Result<Vec<PathBuf>> {
    let mut created = Vec::new();
    let mut result = fs::create_dir(dir);
    if matches!(&result, Err(e) if e.kind() == io::ErrorKind::NotFound) {
        if let Some(parent) = dir.parent() {
            created = create_dir_durably(parent, sync)?;
            result = fs::create_dir(dir);
        }
    }
    match result {
        Ok(()) => {
            if sync {
                sync_parent(dir)?;
            }
            created.push(dir.to_path_buf());
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    Ok(created)
}

/// fsyncs the directory holding `path`, making `path`'s entry in it durable.
fn sync_parent(path: &Path) -> io::Result<()> {
    // A relative path's parent may be "" (the working directory).
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(parent)?.sync_all()
}

/// The blocking half of one upload, fed batches through a bounded channel.
struct UploadWorker {
    tx: mpsc::Sender<Message>,
    task: tokio::task::JoinHandle<io::Result<BlobInfo>>,
}

impl UploadWorker {
    fn spawn(temp: &Path, level: i32, sync: bool) -> UploadWorker {
        let (tx, rx) = mpsc::channel(UPLOAD_DEPTH);
        let path = temp.to_path_buf();
        let task = super::upload_threads::spawn(move || write_temp(&path, rx, level, sync));
        UploadWorker { tx, task }
    }

    /// `false` when the worker has stopped (failed).
    async fn send(&self, message: Message) -> bool {
        self.tx.send(message).await.is_ok()
    }

    /// Hands over the last chunks and waits for the staged blob.
    async fn finish(self, last: Vec<Bytes>) -> io::Result<BlobInfo> {
        if !last.is_empty() {
            self.send(Message::Data(last)).await;
        }
        self.send(Message::Finish).await;
        drop(self.tx);
        self.task
            .await
            .map_err(|e| io::Error::other(format!("upload worker: {e}")))?
    }

    /// The body broke off or was too large: the worker removes its temp file.
    async fn abandon(self) {
        drop(self.tx);
        let _ = self.task.await;
    }
}

/// Takes `lock` if its owner is gone; the returned file holds it until dropped.
fn take_abandoned_lock(lock: &Path) -> Option<File> {
    let file = File::open(lock).ok()?;
    file.try_lock().ok()?;
    Some(file)
}

/// Temp files of dead sessions, and loose temp files older than [`STALE_TEMP_AGE`].
fn stale_temp_files(tmp_root: &Path) -> Vec<PathBuf> {
    let now = SystemTime::now();
    let mut stale = Vec::new();
    for entry in fs::read_dir(tmp_root).into_iter().flatten().flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_dir() {
            let lock = path.with_extension("lock");
            if take_abandoned_lock(&lock).is_some() || !lock.exists() {
                stale.extend(fs::read_dir(&path).into_iter().flatten().flatten().map(|e| e.path()));
            }
        } else if !path.to_string_lossy().ends_with(LOCK_SUFFIX) {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > STALE_TEMP_AGE);
            if old {
                stale.push(path);
            }
        }
    }
    stale.sort();
    stale
}

/// Removes the session directories and lock files of dead processes. A session creates its
/// lock before its directory, so a directory without a lock is dead too.
fn remove_dead_sessions(tmp_root: &Path) {
    for entry in fs::read_dir(tmp_root).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            let lock = path.with_extension("lock");
            let abandoned = take_abandoned_lock(&lock);
            if abandoned.is_some() || !lock.exists() {
                tracing::info!(dir = %path.display(), "removing the uploads of a dead process");
                let _ = fs::remove_dir_all(&path);
                let _ = fs::remove_file(&lock);
            }
        } else if path.to_string_lossy().ends_with(LOCK_SUFFIX) && !path.with_extension("").is_dir() {
            if let Some(_held) = take_abandoned_lock(&path) {
                let _ = fs::remove_file(&path);
            }
        }
    }
}

impl LocalStore {
    /// Opens (creating if needed) the store under `data_dir`, removes the temp files of dead
    /// processes and starts this process's session.
    pub fn open(data_dir: &Path) -> Result<LocalStore> {
        let blobs = data_dir.join("blobs");
        let tmp_root = data_dir.join("tmp");
        create_dir_durably(&blobs, true).map_err(Error::storage(format!("creating {}", blobs.display())))?;
        fs::create_dir_all(&tmp_root).map_err(Error::storage(format!("creating {}", tmp_root.display())))?;
        for path in stale_temp_files(&tmp_root) {
            tracing::info!(path = %path.display(), "removing a temp file left by a dead process");
            let _ = fs::remove_file(&path);
        }
        remove_dead_sessions(&tmp_root);
        let session = format!("{:016x}", rand::random::<u64>());
        let lock_path = tmp_root.join(format!("{session}{LOCK_SUFFIX}"));
        // Held open read-only: a file open for writing would keep the volume from being
        // remounted read-only.
        File::create(&lock_path).map_err(Error::storage(format!("creating {}", lock_path.display())))?;
        let lock = File::open(&lock_path).map_err(Error::storage(format!("opening {}", lock_path.display())))?;
        lock.try_lock()
            .map_err(|e| Error::storage(format!("locking {}", lock_path.display()))(io::Error::other(e.to_string())))?;
        let tmp = tmp_root.join(&session);
        fs::create_dir(&tmp).map_err(Error::storage(format!("creating {}", tmp.display())))?;
        Ok(LocalStore {
            tmp_root,
            tmp,
            _session_lock: std::sync::Arc::new(lock),
            sync: true,
            room: FreeSpace::of(&blobs, None),
            blobs,
        })
    }

    /// Keeps `reserve` bytes free on the data volume (uploads get 507 below it; 0 turns the
    /// check off); `None`: 5 % of the volume, at most 64 MiB.
    pub fn with_min_free_space(mut self, reserve: Option<u64>) -> LocalStore {
        self.room = FreeSpace::of(&self.blobs, reserve);
        self
    }

    /// Publishes blobs without fsync: much faster uploads; after a power cut (not a process
    /// crash) the newest blobs may be lost or damaged, which verified reads turn into misses.
    /// Also right for a staging area whose files go elsewhere (S3) and are then removed.
    pub fn without_sync(mut self) -> LocalStore {
        self.sync = false;
        self
    }

    /// Where a blob lives: `blobs/<aa>/<bb>/<hash>[.zst]`.
    pub fn blob_path(&self, hash: &str, encoding: Encoding) -> PathBuf {
        let name = match encoding {
            Encoding::Raw => hash.to_string(),
            Encoding::Zstd => format!("{hash}.zst"),
        };
        self.blobs.join(&hash[0..2]).join(&hash[2..4]).join(name)
    }

    /// Every file under `blobs/`, with the content address its name claims (`None` for a
    /// name that is not one). Blocking: for `hearth verify`, never the request path.
    pub fn list_files(&self) -> io::Result<Vec<StoredFile>> {
        let mut found = Vec::new();
        let mut dirs = vec![self.blobs.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in fs::read_dir(&dir)? {
                let entry = entry?;
                let path = entry.path();
                if entry.file_type()?.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let name = entry.file_name().to_string_lossy().to_string();
                let (hash, encoding) = match name.strip_suffix(".zst") {
                    Some(hash) => (hash.to_string(), Encoding::Zstd),
                    None => (name.clone(), Encoding::Raw),
                };
                let valid = hash.len() == 64
                    && hash.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                    && self.blob_path(&hash, encoding) == path;
                found.push((path, valid.then_some((hash, encoding))));
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(found)
    }

    /// Reads a blob through its decoder and hash: `None` if the file is missing, `Some(false)`
    /// if its content does not match its name. Blocking; memory bounded (streamed).
    pub fn check(&self, info: &BlobInfo) -> io::Result<Option<bool>> {
        let file = match File::open(self.blob_path(&info.hash, info.encoding)) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        for chunk in VerifiedChunks::new(io::BufReader::new(file), info.clone(), READ_CHUNK)? {
            match chunk {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::InvalidData => return Ok(Some(false)),
                Err(e) => return Err(e),
            }
        }
        Ok(Some(true))
    }

    /// Upload temp files no live process owns: those of dead sessions, and loose ones older
    /// than the stale age.
    pub fn stale_temp_files(&self) -> Vec<PathBuf> {
        stale_temp_files(&self.tmp_root)
    }

    pub(super) async fn stage<S, E>(&self, body: S, limit: u64, level: i32) -> Result<StagedBlob>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: fmt::Display,
    {
        let mut body = std::pin::pin!(body);
        if let Err(full) = self.room.check() {
            drain(&mut body, limit).await;
            return Err(Error::storage("refusing an upload on a nearly full volume")(full));
        }
        let temp = self.tmp.join(format!("{:032x}.part", rand::random::<u128>()));
        let sync = self.sync;
        // Started at the first full batch, or at the end of a body smaller than one batch.
        let mut worker: Option<UploadWorker> = None;
        let mut batch = Batch::default();
        let mut received: u64 = 0;
        let mut failure = None;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(bytes) => {
                    received += bytes.len() as u64;
                    if received > limit {
                        failure = Some(Error::PayloadTooLarge { limit });
                        break;
                    }
                    batch.push(bytes);
                    if batch.len >= BATCH_BYTES {
                        let worker = worker.get_or_insert_with(|| UploadWorker::spawn(&temp, level, sync));
                        if !worker.send(Message::Data(std::mem::take(&mut batch).chunks)).await {
                            // The worker failed (a full disk, say); its error is reported below.
                            drain(&mut body, limit.saturating_sub(received)).await;
                            break;
                        }
                    }
                }
                Err(e) => {
                    failure = Some(Error::IncompleteUpload(e.to_string()));
                    break;
                }
            }
        }
        if let Some(err) = failure {
            if let Some(worker) = worker {
                worker.abandon().await;
            }
            return Err(err);
        }
        // A copy, not the chunks: they may be slices of larger buffers that must not stay alive.
        let content = worker.is_none().then(|| concatenate(&batch));
        let worker = worker.unwrap_or_else(|| UploadWorker::spawn(&temp, level, sync));
        let outcome = worker.finish(batch.chunks).await;
        match outcome {
            Ok(info) => Ok(StagedBlob {
                info,
                content,
                temp: Some(temp),
            }),
            Err(e) => Err(Error::storage("writing upload to temp file")(e)),
        }
    }

    pub(super) async fn publish(&self, mut staged: StagedBlob) -> Result<()> {
        let Some(temp) = staged.temp.take() else { return Ok(()) };
        let target = self.blob_path(&staged.info.hash, staged.info.encoding);
        let sync = self.sync;
        spawn_blocking(move || {
            let dir = target.parent().expect("fan-out parent");
            create_dir_durably(dir, sync)?;
            let result = fs::rename(&temp, &target);
            if result.is_err() {
                let _ = fs::remove_file(&temp);
            }
            result?;
            // The rename itself must survive a power cut, not just the file's bytes.
            if sync {
                sync_parent(&target)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::storage("publish worker")(io::Error::other(e.to_string())))?
        .map_err(Error::storage("publishing blob"))
    }

    pub(super) async fn read(&self, info: &BlobInfo) -> Result<Option<BlobRead>> {
        let path = self.blob_path(&info.hash, info.encoding);
        let info = info.clone();
        if info.raw_size <= WHOLE_READ_LIMIT {
            let hash = info.hash.clone();
            let read = spawn_blocking(move || match File::open(&path) {
                Ok(file) => read_verified(io::BufReader::new(file), &info).map(Some),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            })
            .await
            .map_err(|e| Error::storage("read worker")(io::Error::other(e.to_string())))?;
            return match read {
                Ok(found) => Ok(found.map(BlobRead::Whole)),
                Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(Error::CorruptBlob {
                    hash,
                    detail: e.to_string(),
                }),
                Err(e) => Err(Error::storage("reading blob")(e)),
            };
        }
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let (opened_tx, opened_rx) = tokio::sync::oneshot::channel::<io::Result<bool>>();
        // One blocking task opens the file, reports whether it exists, then feeds the response.
        spawn_blocking(move || {
            let chunks = match File::open(&path).and_then(|file| VerifiedChunks::new(file, info, READ_CHUNK)) {
                Ok(chunks) => chunks,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return drop(opened_tx.send(Ok(false))),
                Err(e) => return drop(opened_tx.send(Err(e))),
            };
            if opened_tx.send(Ok(true)).is_err() {
                return;
            }
            for chunk in chunks {
                if tx.blocking_send(chunk).is_err() {
                    break; // the client went away
                }
            }
        });
        let opened = opened_rx
            .await
            .map_err(|_| Error::storage("read worker")(io::Error::other("worker ended early")))?
            .map_err(Error::storage("opening blob"))?;
        if !opened {
            return Ok(None);
        }
        let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
        Ok(Some(BlobRead::Stream(Box::pin(stream))))
    }

    pub(super) async fn delete(&self, info: &BlobInfo) -> Result<()> {
        let path = self.blob_path(&info.hash, info.encoding);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::storage(format!("deleting {}", path.display()))(e)),
        }
    }

    pub(super) async fn check_ready(&self) -> Result<()> {
        let probe = self.tmp.join(format!("readyz-{:016x}", rand::random::<u64>()));
        tokio::fs::write(&probe, b"ok")
            .await
            .map_err(Error::storage("writing readiness probe"))?;
        let _ = tokio::fs::remove_file(&probe).await;
        tokio::fs::metadata(&self.blobs)
            .await
            .map_err(Error::storage("reading blob directory"))?;
        Ok(())
    }
}

/// Bytes a synced upload writes between two starts of its write-back.
const WRITEBACK_STEP: u64 = 256 * 1024;

/// The temp file under the pipeline. Counts the bytes that reach it (the stored size) and, for
/// an upload that will be fsynced, starts the write-back of every further [`WRITEBACK_STEP`]
/// bytes while the rest of the body still arrives (see [`super::writeback`]).
struct FileSink {
    inner: BufWriter<File>,
    written: u64,
    /// Stored size at which the next write-back starts; `None` when the upload is not synced.
    next_writeback: Option<u64>,
}

impl FileSink {
    fn new(file: File, sync: bool) -> FileSink {
        FileSink {
            inner: BufWriter::with_capacity(WRITE_BUFFER, file),
            written: 0,
            next_writeback: sync.then_some(WRITEBACK_STEP),
        }
    }
}

impl Write for FileSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        if let Some(next) = self.next_writeback.as_mut() {
            if self.written >= *next {
                super::writeback::start(self.inner.get_ref());
                *next = self.written + WRITEBACK_STEP;
            }
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The blocking half of an upload: pipeline into the temp file, fsync. Removes the file
/// unless the async side says the body ended normally.
fn write_temp(path: &Path, mut rx: mpsc::Receiver<Message>, level: i32, sync: bool) -> io::Result<BlobInfo> {
    let result = (|| {
        let file = File::create(path)?;
        let sink = FileSink::new(file, sync);
        let mut writer = EncodingWriter::new(sink, level);
        loop {
            match rx.blocking_recv() {
                Some(Message::Data(chunks)) => {
                    for bytes in chunks {
                        writer.write_all(&bytes)?;
                    }
                }
                Some(Message::Finish) => break,
                None => return Err(io::Error::new(io::ErrorKind::Interrupted, "upload abandoned")),
            }
        }
        let (mut sink, digest) = writer.finish()?;
        sink.flush()?;
        let stored_size = sink.written;
        let file = sink.inner.into_inner().map_err(|e| e.into_error())?;
        if sync {
            file.sync_all()?;
        }
        Ok(BlobInfo {
            hash: digest.hash,
            raw_size: digest.raw_size,
            stored_size,
            encoding: digest.encoding,
            meaning: digest.meaning,
        })
    })();
    if result.is_err() {
        let _ = fs::remove_file(path);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session_files(data_dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(data_dir.join("tmp"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .flat_map(|e| fs::read_dir(e.path()).unwrap().flatten().map(|f| f.path()))
            .collect();
        files.sort();
        files
    }

    #[test]
    fn new_directories_are_created_with_their_parents_and_only_once() {
        let root = tempfile::tempdir().unwrap();
        let blobs = root.path().join("blobs");
        fs::create_dir(&blobs).unwrap();
        let (aa, bb, cc) = (blobs.join("aa"), blobs.join("aa/bb"), blobs.join("aa/cc"));
        assert_eq!(create_dir_durably(&bb, true).unwrap(), vec![aa.clone(), bb.clone()]);
        assert!(bb.is_dir());
        // Existing directories are neither created nor synced again.
        assert_eq!(create_dir_durably(&bb, true).unwrap(), Vec::<PathBuf>::new());
        assert_eq!(create_dir_durably(&cc, false).unwrap(), vec![cc.clone()]);
        // A file in the way is an error, not a directory.
        fs::write(blobs.join("ff"), b"").unwrap();
        assert!(create_dir_durably(&blobs.join("ff/00"), true).is_err());
    }

    #[test]
    fn the_parent_of_a_relative_name_is_the_working_directory() {
        // `hearth serve --data-dir data` in a new directory: "data"'s parent is "".
        sync_parent(Path::new("data")).unwrap();
    }

    #[test]
    fn a_synced_upload_starts_its_write_back_every_step() {
        let dir = tempfile::tempdir().unwrap();
        let chunk = vec![7u8; 64 * 1024];
        let chunks = (2 * WRITEBACK_STEP + WRITEBACK_STEP / 2) as usize / chunk.len();
        // Started after one step and after two: the next one is due after three.
        for (sync, next) in [(true, Some(3 * WRITEBACK_STEP)), (false, None)] {
            let mut sink = FileSink::new(File::create(dir.path().join(format!("{sync}"))).unwrap(), sync);
            for _ in 0..chunks {
                sink.write_all(&chunk).unwrap();
            }
            sink.flush().unwrap();
            assert_eq!(sink.next_writeback, next, "sync {sync}");
            assert_eq!(sink.written, (chunks * chunk.len()) as u64);
        }
    }

    #[test]
    fn a_live_session_is_kept_and_a_dead_one_removed() {
        let dir = tempfile::tempdir().unwrap();
        let first = LocalStore::open(dir.path()).unwrap();
        let upload = first.tmp.join("upload.part");
        fs::write(&upload, b"in progress").unwrap();
        // A second process (here: a second store) leaves a live session alone.
        let second = LocalStore::open(dir.path()).unwrap();
        assert!(upload.exists());
        assert!(second.stale_temp_files().is_empty());
        // Its owner gone, the session is stale, and the next open removes it.
        drop(first);
        assert_eq!(second.stale_temp_files(), vec![upload.clone()]);
        let _third = LocalStore::open(dir.path()).unwrap();
        assert!(!upload.exists());
        assert!(session_files(dir.path()).is_empty());
        let locks = fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().to_string_lossy().ends_with(LOCK_SUFFIX))
            .count();
        assert_eq!(locks, 2, "the two live sessions' locks remain");
    }
}
