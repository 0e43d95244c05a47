//! Room kept free on the data volume. Blobs and (by default) the SQLite database share it; a
//! volume filled to the last block by uploads would leave no room for the database to record
//! deletions, statistics or garbage collection, the very writes that give space back. So
//! uploads are refused (507) while less than a reserve is free: by default a small share of
//! the volume, capped, so that small volumes stay usable and large ones lose little.
//!
//! On Btrfs free metadata space ([`super::btrfs_space`]) counts too, with a quarter of the
//! reserve: either kind running out fails new files, and `statvfs` shows data space only.

use std::io;
use std::path::{Path, PathBuf};

/// The largest default reserve, whatever the volume's size.
const MAX_DEFAULT_RESERVE: u64 = 64 << 20;
/// The default reserve on smaller volumes: this fraction of the volume.
const DEFAULT_RESERVE_DIVISOR: u64 = 20;

/// On Btrfs, the share of the reserve kept in metadata space: beyond the global reserve Btrfs
/// already keeps for deletions, the database's commits need a few tree blocks each, while
/// whole metadata chunks (a tenth of a small volume) would be held back by the full reserve.
const METADATA_SHARE: u64 = 4;

/// The free-space check of one directory's volume.
#[derive(Clone, Debug)]
pub struct FreeSpace {
    dir: PathBuf,
    reserve: u64,
    btrfs: bool,
}

impl FreeSpace {
    /// The check for the volume holding `dir`, keeping `reserve` bytes free (0: no check), or
    /// by default 5 % of the volume, at most 64 MiB (no check where the volume cannot be
    /// measured).
    pub fn of(dir: &Path, reserve: Option<u64>) -> FreeSpace {
        let reserve = reserve.unwrap_or_else(|| {
            data_space(dir).map_or(0, |v| (v.total / DEFAULT_RESERVE_DIVISOR).min(MAX_DEFAULT_RESERVE))
        });
        let btrfs = on_btrfs(dir);
        tracing::debug!(dir = %dir.display(), reserve, btrfs, "uploads are refused below this many free bytes");
        FreeSpace {
            dir: dir.to_path_buf(),
            reserve,
            btrfs,
        }
    }

    /// Fails with "storage full" (answered 507) when less than the reserve is free. A
    /// `statvfs`, and on Btrfs three ioctls: microseconds, next to an upload's file creation
    /// and fsync.
    pub fn check(&self) -> io::Result<()> {
        if self.reserve == 0 {
            return Ok(());
        }
        let Some(data) = data_space(&self.dir) else {
            return Ok(());
        };
        let metadata_reserve = self.reserve / METADATA_SHARE;
        let (free, kind, kept) = match self.metadata_available() {
            Some(metadata) if metadata < metadata_reserve => (metadata, "metadata", metadata_reserve),
            _ => (data.available, "data", self.reserve),
        };
        if free < kept {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("{free} bytes of {kind} space free on the data volume, {kept} kept for the database (min-free-space)"),
            ));
        }
        Ok(())
    }

    fn metadata_available(&self) -> Option<u64> {
        if !self.btrfs {
            return None;
        }
        match btrfs_metadata_available(&self.dir) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                tracing::debug!(error = %e, "could not read Btrfs metadata space");
                None
            }
        }
    }
}

#[cfg(target_os = "linux")]
use super::btrfs_space::{is_btrfs as on_btrfs, metadata_available as btrfs_metadata_available};

#[cfg(not(target_os = "linux"))]
fn on_btrfs(_: &Path) -> bool {
    false
}

#[cfg(not(target_os = "linux"))]
fn btrfs_metadata_available(_: &Path) -> io::Result<u64> {
    Err(io::ErrorKind::Unsupported.into())
}

struct DataSpace {
    total: u64,
    available: u64,
}

fn data_space(dir: &Path) -> Option<DataSpace> {
    let fs = rustix::fs::statvfs(dir).ok()?;
    Some(DataSpace {
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
        let room = FreeSpace::of(dir.path(), None);
        assert!(room.reserve > 0 && room.reserve <= MAX_DEFAULT_RESERVE);
        room.check().expect("a fresh temp dir has room");
        let full = FreeSpace::of(dir.path(), Some(u64::MAX));
        let err = full.check().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert!(err.to_string().contains("min-free-space"), "{err}");
        FreeSpace::of(dir.path(), Some(0))
            .check()
            .expect("0 turns the check off");
    }
}
