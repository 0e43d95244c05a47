//! Starting a file's write-back early, so that the fsync that makes an upload durable waits
//! for the last part of it only.
//!
//! A synced upload used to write everything into the page cache and then wait in `fsync` for
//! all of it to reach the disk: on the VM this was measured on, the final fsync of a 16 MiB
//! file took 7.5 ms, against 0.2 ms when write-back had been started every 256 KiB while the
//! data still arrived (1 MiB: 0.9 ms against 0.15 ms). RocksDB's `bytes_per_sync` and
//! PostgreSQL's `backend_flush_after` do the same.

use std::fs::File;

/// Starts writing the file's dirty pages to disk and returns without waiting for them.
/// Failures are ignored: the fsync that follows is what guarantees durability, this only gets
/// it going sooner. A no-op where Linux's `sync_file_range` does not exist.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn start(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: `sync_file_range` takes no pointers, and the descriptor is borrowed from a live
    // `File`, so it stays open (and means this file) for the duration of the call.
    let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
}

#[cfg(not(target_os = "linux"))]
pub fn start(_file: &File) {}
