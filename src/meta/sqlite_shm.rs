//! SQLite's shared-memory index (`hearth.db-shm`) made safe on a full copy-on-write volume.
//!
//! In WAL mode every connection maps the `-shm` file into memory and updates it with plain
//! stores. On Btrfs, a store to a mapped page that was written back before needs new space
//! (copy on write); when the volume is full the kernel cannot fail that store the way it fails
//! a `write` (ENOSPC), and sends SIGBUS instead: the whole server dies (reproduced with 64
//! concurrent uploads filling a 300 MB Btrfs volume). A file with the NOCOW attribute is
//! overwritten in place, so its pages, once allocated (SQLite writes to every page when it
//! grows the file, and that write fails cleanly), never need new space. The attribute only
//! takes on an empty file, so it is set before SQLite uses the file: on a fresh file, or on a
//! leftover one that no connection has open (which SQLite's first opener empties anyway).
//! The index only mirrors the WAL, so it loses nothing by skipping Btrfs' checksums; the
//! database and its WAL keep them (they are written with `write`, which reports ENOSPC).

use std::path::Path;

/// Makes the `-shm` file of the database at `db` NOCOW when it sits on Btrfs; does nothing
/// elsewhere. Never fails: the database works without it, as it always did.
pub fn prepare(db: &Path) {
    #[cfg(target_os = "linux")]
    linux::prepare(db);
    #[cfg(not(target_os = "linux"))]
    let _ = db;
}

#[cfg(target_os = "linux")]
mod linux {
    use rustix::fs::IFlags;
    use std::fs::{File, OpenOptions};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    /// Every `-shm` file this process opened. They stay open: closing any descriptor of a file
    /// drops every POSIX lock this process holds on it, including those of SQLite's own
    /// connections to the same database, which would let another process believe it is the
    /// first to open the database and reset the index under them.
    static HELD: Mutex<Vec<(PathBuf, File)>> = Mutex::new(Vec::new());

    pub fn prepare(db: &Path) {
        let dir = match db.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        if !crate::blob::is_btrfs(dir) {
            return;
        }
        let mut shm = db.as_os_str().to_owned();
        shm.push("-shm");
        let shm = PathBuf::from(shm);
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(now) = std::fs::metadata(&shm) {
            let same = |f: &File| f.metadata().is_ok_and(|m| m.ino() == now.ino() && m.dev() == now.dev());
            if held.iter().any(|(path, f)| path == &shm && same(f)) {
                return; // prepared by this process, and still the file SQLite uses
            }
        }
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&shm)
        {
            // Not truncated here: another process may be using it (see `make_nocow`).
            Ok(file) => file,
            Err(e) => {
                tracing::warn!(path = %shm.display(), error = %e, "could not prepare SQLite's shared-memory file");
                return;
            }
        };
        match make_nocow(&file) {
            Ok(true) => tracing::debug!(path = %shm.display(), "SQLite's shared-memory file is NOCOW"),
            Ok(false) => tracing::warn!(
                path = %shm.display(),
                "SQLite's shared-memory file is in use by another process and copy-on-write: \
                 should this Btrfs volume fill up, the server may be killed (SIGBUS); \
                 restart every process using the database to fix it"
            ),
            Err(e) => {
                tracing::warn!(path = %shm.display(), error = %e, "could not make SQLite's shared-memory file NOCOW")
            }
        }
        held.push((shm, file));
    }

    /// Sets NOCOW on the file unless a connection has it open (SQLite holds a lock on it while
    /// it does); `Ok(false)` when one has.
    fn make_nocow(file: &File) -> std::io::Result<bool> {
        if rustix::fs::ioctl_getflags(file)?.contains(IFlags::NOCOW) {
            return Ok(true);
        }
        // An open-file-description lock on the whole file conflicts with the locks of every
        // connection, this process's included, and keeps a connection from opening it
        // meanwhile (it would find the file locked and retry).
        match whole_file_lock(file, libc::F_WRLCK) {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => return Ok(false),
            Err(e) => return Err(e),
        }
        let done = (|| {
            // What SQLite's first opener does to a leftover index; NOCOW needs an empty file.
            rustix::fs::ftruncate(file, 0)?;
            let flags = rustix::fs::ioctl_getflags(file)?;
            rustix::fs::ioctl_setflags(file, flags | IFlags::NOCOW)
        })();
        let _ = whole_file_lock(file, libc::F_UNLCK);
        done.map(|()| true).map_err(Into::into)
    }

    /// Takes (or with `F_UNLCK` releases) an open-file-description lock on the whole file,
    /// without waiting. Not a traditional POSIX lock: those never conflict within a process,
    /// and releasing one would release SQLite's. Neither std nor rustix offers OFD locks: the
    /// one `fcntl` call of the crate.
    #[allow(unsafe_code)]
    fn whole_file_lock(file: &File, kind: libc::c_int) -> std::io::Result<()> {
        // SAFETY: a zeroed `flock` is a valid value (plain integers); OFD locks want l_pid 0.
        let mut lock: libc::flock = unsafe { std::mem::zeroed() };
        lock.l_type = kind as libc::c_short;
        lock.l_whence = libc::SEEK_SET as libc::c_short;
        // SAFETY: the descriptor is open for the duration of the call, and `lock` outlives it.
        let done = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) };
        if done == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}
