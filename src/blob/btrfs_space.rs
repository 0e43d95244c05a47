//! Free metadata space on a Btrfs volume, which `statvfs` does not report.
//!
//! Btrfs allocates its space in chunks, some for data and some for metadata (inodes, extent
//! and checksum trees; small files live there whole). `statvfs` reports data space: a volume
//! can show gigabytes free and still fail every new file with ENOSPC because its metadata
//! chunks are full and no unallocated space is left to add one. So the metadata space left is
//! what the metadata chunks still hold, less the global reserve Btrfs keeps for itself, plus
//! the unallocated space of the devices (halved when metadata is mirrored, as by default).
//! The figures come from the same ioctls `btrfs filesystem usage` uses.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// `f_type` of a Btrfs file system (linux/magic.h).
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;

/// Whether `dir` is on a Btrfs volume.
pub fn is_btrfs(dir: &Path) -> bool {
    // `f_type`'s type varies by target.
    #[allow(clippy::unnecessary_cast)]
    rustix::fs::statfs(dir).is_ok_and(|fs| fs.f_type as i64 == BTRFS_SUPER_MAGIC)
}

/// Bytes of metadata that can still be written on the Btrfs volume holding `dir`.
pub fn metadata_available(dir: &Path) -> io::Result<u64> {
    let file = File::open(dir)?;
    let spaces = space_info(&file)?;
    let mut free_in_chunks: u64 = 0;
    let mut copies = 1;
    let mut global_reserve: u64 = 0;
    for space in &spaces {
        if space.flags & SPACE_INFO_GLOBAL_RSV != 0 {
            global_reserve = space.total_bytes;
        } else if space.flags & BLOCK_GROUP_METADATA != 0 {
            free_in_chunks += space.total_bytes.saturating_sub(space.used_bytes);
            if space.flags & MIRRORED_PROFILES != 0 {
                copies = 2;
            }
        }
    }
    let unallocated = unallocated(&file)?;
    Ok(free_in_chunks.saturating_sub(global_reserve) + unallocated / copies)
}

// linux/btrfs.h and linux/btrfs_tree.h.
const IOCTL_MAGIC: u32 = 0x94;
const BLOCK_GROUP_METADATA: u64 = 1 << 2;
/// RAID1, DUP, RAID10, RAID1C3, RAID1C4: at least two copies of each block.
const MIRRORED_PROFILES: u64 = (1 << 4) | (1 << 5) | (1 << 6) | (1 << 9) | (1 << 10);
const SPACE_INFO_GLOBAL_RSV: u64 = 1 << 49;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SpaceInfo {
    flags: u64,
    total_bytes: u64,
    used_bytes: u64,
}

/// `btrfs_ioctl_space_args` with room for the answers: data, metadata, system and the
/// global reserve, each once per profile (two while a balance converts one).
#[repr(C)]
struct SpaceArgs {
    space_slots: u64,
    total_spaces: u64,
    spaces: [SpaceInfo; 16],
}

#[repr(C)]
struct FsInfoArgs {
    max_id: u64,
    num_devices: u64,
    rest: [u8; 1008],
}

#[repr(C)]
struct DevInfoArgs {
    devid: u64,
    uuid: [u8; 16],
    bytes_used: u64,
    total_bytes: u64,
    rest: [u8; 4056],
}

/// `_IOC(dir, 0x94, nr, size)` on the architectures Linux runs Btrfs on (x86, arm, riscv...).
const fn ioc(dir: u32, nr: u32, size: usize) -> libc::c_ulong {
    ((dir << 30) | ((size as u32) << 16) | (IOCTL_MAGIC << 8) | nr) as libc::c_ulong
}
const IOC_READ: u32 = 2;
const IOC_READ_WRITE: u32 = 3;
/// The kernel's request numbers carry the size of the fixed part of `btrfs_ioctl_space_args`.
const IOC_SPACE_INFO: libc::c_ulong = ioc(IOC_READ_WRITE, 20, 16);
const IOC_DEV_INFO: libc::c_ulong = ioc(IOC_READ_WRITE, 30, std::mem::size_of::<DevInfoArgs>());
const IOC_FS_INFO: libc::c_ulong = ioc(IOC_READ, 31, std::mem::size_of::<FsInfoArgs>());

/// Runs one Btrfs ioctl that fills `args`.
#[allow(unsafe_code)]
fn ioctl<T>(file: &File, request: libc::c_ulong, args: &mut T) -> io::Result<()> {
    // SAFETY: `args` is a `repr(C)` struct of the layout and size `request` names, valid for
    // writes for the duration of the call; the descriptor is open.
    let done = unsafe { libc::ioctl(file.as_raw_fd(), request as _, args as *mut T) };
    if done == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn space_info(file: &File) -> io::Result<Vec<SpaceInfo>> {
    let mut args = SpaceArgs {
        space_slots: 16,
        total_spaces: 0,
        spaces: [SpaceInfo::default(); 16],
    };
    ioctl(file, IOC_SPACE_INFO, &mut args)?;
    let filled = (args.total_spaces as usize).min(args.spaces.len());
    Ok(args.spaces[..filled].to_vec())
}

/// Raw bytes of the volume's devices not yet allocated to any chunk.
fn unallocated(file: &File) -> io::Result<u64> {
    let mut fs = FsInfoArgs {
        max_id: 0,
        num_devices: 0,
        rest: [0; 1008],
    };
    ioctl(file, IOC_FS_INFO, &mut fs)?;
    let mut free = 0u64;
    let mut found = 0;
    // Device ids run from 1 to max_id, with holes where devices were removed.
    for devid in 1..=fs.max_id {
        if found == fs.num_devices {
            break;
        }
        let mut dev = DevInfoArgs {
            devid,
            uuid: [0; 16],
            bytes_used: 0,
            total_bytes: 0,
            rest: [0; 4056],
        };
        match ioctl(file, IOC_DEV_INFO, &mut dev) {
            Ok(()) => {
                found += 1;
                free += dev.total_bytes.saturating_sub(dev.bytes_used);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(free)
}

#[cfg(test)]
mod tests {
    #[test]
    fn argument_structs_have_the_kernels_sizes() {
        assert_eq!(std::mem::size_of::<super::FsInfoArgs>(), 1024);
        assert_eq!(std::mem::size_of::<super::DevInfoArgs>(), 4096);
        assert_eq!(std::mem::size_of::<super::SpaceArgs>(), 16 + 16 * 24);
    }
}

#[cfg(test)]
mod on_a_volume {
    /// Runs only where a Btrfs volume can be mounted (root, btrfs-progs, loop devices; the
    /// fault-tolerance suite requires that much of CI and runs the full-volume scenario).
    #[test]
    fn metadata_space_shrinks_as_small_files_are_written() {
        let image_dir = tempfile::tempdir().unwrap();
        let mount = tempfile::tempdir().unwrap();
        let image = image_dir.path().join("btrfs.img");
        std::fs::File::create(&image).unwrap().set_len(300 << 20).unwrap();
        let run = |cmd: &mut std::process::Command| cmd.status().is_ok_and(|s| s.success());
        let mounted = run(std::process::Command::new("mkfs.btrfs").args(["-q", "-f"]).arg(&image))
            && run(std::process::Command::new("mount")
                .arg("-o")
                .arg("loop")
                .arg(&image)
                .arg(mount.path()));
        if !mounted {
            eprintln!("skipped: cannot mount a Btrfs volume here");
            return;
        }
        let dir = mount.path();
        let result = std::panic::catch_unwind(|| {
            assert!(super::is_btrfs(dir));
            let before = super::metadata_available(dir).unwrap();
            assert!(before > 0 && before < 300 << 20, "{before}");
            // Small files live in metadata whole (inline extents).
            for i in 0..3000 {
                std::fs::write(dir.join(format!("f{i}")), [7u8; 1500]).unwrap();
            }
            assert!(run(&mut std::process::Command::new("sync")));
            let after = super::metadata_available(dir).unwrap();
            eprintln!("metadata space available: {before} before, {after} after 3000 small files");
            assert!(after + (1 << 20) < before, "{before} → {after}");
        });
        let _ = std::process::Command::new("umount").arg(dir).status();
        result.unwrap();
    }
}
