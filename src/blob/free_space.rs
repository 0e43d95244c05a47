//! Room kept free on the data volume. Blobs and (by default) the SQLite database share it; a
//! volume filled to the last block by uploads would leave no room for the database to record
//! deletions, statistics or garbage collection, the very writes that give space back. So
//! uploads are refused (507) while less than a reserve is free: a small share of the volume,
//! capped, so that small volumes stay usable and large ones lose little.

use std::io;
use std::path::{Path, PathBuf};

/// The largest reserve, whatever the volume's size.
const MAX_RESERVE: u64 = 64 << 20;
/// The reserve on smaller volumes: this fraction of the volume.
const RESERVE_DIVISOR: u64 = 20;

/// The free-space check of one directory's volume.
#[derive(Clone, Debug)]
pub struct FreeSpace {
    dir: PathBuf,
    reserve: u64,
}

impl FreeSpace {
    /// The reserve of the volume holding `dir`: 5 % of it, at most 64 MiB. No reserve where the
    /// volume cannot be measured.
    pub fn of(dir: &Path) -> FreeSpace {
        let reserve = volume(dir).map_or(0, |v| (v.total / RESERVE_DIVISOR).min(MAX_RESERVE));
        tracing::debug!(dir = %dir.display(), reserve, "uploads are refused below this many free bytes");
        FreeSpace {
            dir: dir.to_path_buf(),
            reserve,
        }
    }

    /// Fails with "storage full" (ENOSPC, answered 507) when less than the reserve is free.
    /// One `statvfs`: microseconds, next to an upload's file creation and fsync.
    pub fn check(&self) -> io::Result<()> {
        if self.reserve == 0 {
            return Ok(());
        }
        match volume(&self.dir) {
            Some(v) if v.available < self.reserve => Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "{} bytes free on the data volume, {} kept for the database",
                    v.available, self.reserve
                ),
            )),
            _ => Ok(()),
        }
    }
}

struct Volume {
    total: u64,
    available: u64,
}

fn volume(dir: &Path) -> Option<Volume> {
    let fs = rustix::fs::statvfs(dir).ok()?;
    Some(Volume {
        total: fs.f_blocks.saturating_mul(fs.f_frsize),
        available: fs.f_bavail.saturating_mul(fs.f_frsize),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_volume_with_room_passes_and_one_without_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let room = FreeSpace::of(dir.path());
        assert!(room.reserve > 0 && room.reserve <= MAX_RESERVE);
        room.check().expect("a fresh temp dir has room");
        let full = FreeSpace {
            dir: dir.path().to_path_buf(),
            reserve: u64::MAX,
        };
        let err = full.check().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
    }
}
