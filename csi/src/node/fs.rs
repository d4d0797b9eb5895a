//! Filesystems the node service makes, checks, mounts and grows: ext4 and
//! xfs. Builds the command lines and interprets their results; the
//! decisions (make only when blank, check before mount) live in
//! [`super::ops`].
//!
//! - Blank test: `blkid -p -o export` (low-level probe, no cache); exit 2
//!   means no signature at all. A partition table counts as "not blank":
//!   we never format over something we do not understand.
//! - mkfs without discard (`-E nodiscard`, `-K`): a new thin volume already
//!   reads as zeros, and discarding it all would be pure UNMAP traffic.
//! - Check before mount: ext4 gets `e2fsck -p` (fsck(8) exit codes: 0 clean,
//!   1 fixed, 2 fixed + reboot, which only matters for a root fs; 4 and up:
//!   not fixed or failed). xfs is not checked: it replays its log at mount,
//!   and `xfs_repair` refuses a dirty log anyway (this is what kubelet's
//!   mount library does too).
//! - Mount options we add: ext4 `errors=remount-ro` (an IO error turns the
//!   filesystem read-only instead of continuing on a broken journal; see
//!   [`super::remount`]), xfs `nouuid` (a clone has its parent's UUID and
//!   must still mount on the same node).
//! - Grow: `resize2fs DEVICE` (online), `xfs_growfs MOUNT_POINT`.

use std::path::Path;

use super::host::Cmd;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    Ext4,
    Xfs,
}

impl FsType {
    /// `ext4` / `xfs`; anything else is unsupported.
    pub fn parse(s: &str) -> Option<FsType> {
        match s {
            "ext4" => Some(FsType::Ext4),
            "xfs" => Some(FsType::Xfs),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
        }
    }

    pub fn mkfs(self, device: &Path) -> Cmd {
        let dev = device.display().to_string();
        match self {
            FsType::Ext4 => Cmd::new("mkfs.ext4").args(["-q", "-E", "nodiscard", &dev]),
            FsType::Xfs => Cmd::new("mkfs.xfs").args(["-q", "-K", &dev]),
        }
    }

    /// The pre-mount check, if this filesystem gets one.
    pub fn fsck(self, device: &Path) -> Option<Cmd> {
        match self {
            FsType::Ext4 => Some(Cmd::new("e2fsck").args(["-p", &device.display().to_string()])),
            FsType::Xfs => None,
        }
    }

    /// Options we always mount with, ahead of the user's.
    pub fn default_mount_options(self) -> &'static [&'static str] {
        match self {
            FsType::Ext4 => &["errors=remount-ro"],
            FsType::Xfs => &["nouuid"],
        }
    }

    /// Online grow to the device's size.
    pub fn grow(self, device: &Path, mount_point: &Path) -> Cmd {
        match self {
            FsType::Ext4 => Cmd::new("resize2fs").arg(device.display().to_string()),
            FsType::Xfs => Cmd::new("xfs_growfs").arg(mount_point.display().to_string()),
        }
    }
}

/// What `e2fsck -p` left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsckVerdict {
    /// Clean, or errors fixed: safe to mount.
    Mountable,
    /// Errors left that need a human (`e2fsck` interactively), or fsck failed.
    NeedsRepair,
}

/// fsck(8) exit status, a bit mask: 1 fixed, 2 reboot, 4 left uncorrected,
/// 8 operational error, 16 usage, 32 cancelled, 128 library error.
pub fn fsck_verdict(code: Option<i32>) -> FsckVerdict {
    match code {
        Some(c) if (0..4).contains(&c) => FsckVerdict::Mountable,
        _ => FsckVerdict::NeedsRepair,
    }
}

/// What is on a device, per `blkid -p -o export`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// No signature at all: safe to format.
    Blank,
    /// A filesystem of this type (as blkid names it: `ext4`, `xfs`, …).
    Filesystem(String),
    /// Something else (a partition table, a RAID member, …).
    Other(String),
}

pub fn blkid(device: &Path) -> Cmd {
    Cmd::new("blkid").args(["-p", "-o", "export", &device.display().to_string()])
}

/// Interprets blkid's exit code and `KEY=VALUE` lines; `None` when blkid
/// itself failed (exit codes other than 0 and 2).
pub fn parse_blkid(code: Option<i32>, stdout: &str) -> Option<Probe> {
    match code {
        Some(2) => Some(Probe::Blank),
        Some(0) => {
            let value = |key: &str| {
                stdout
                    .lines()
                    .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                    .map(str::to_owned)
            };
            Some(match (value("TYPE"), value("PTTYPE")) {
                (Some(t), _) => Probe::Filesystem(t),
                (None, Some(pt)) => Probe::Other(format!("partition table {pt}")),
                (None, None) => Probe::Other("an unknown signature".into()),
            })
        }
        _ => None,
    }
}

/// Space and inode counts of a mounted filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FsUsage {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub used_bytes: u64,
    pub total_inodes: u64,
    pub free_inodes: u64,
    pub used_inodes: u64,
}

/// `statvfs` through `stat -f` (coreutils and busybox alike), in a child
/// process so a hung filesystem costs a bounded wait: fundamental block
/// size, blocks, free blocks, blocks available to users, inodes, free inodes.
pub fn statfs(path: &Path) -> Cmd {
    Cmd::new("stat").args(["-f", "-c", "%S %b %f %a %c %d", &path.display().to_string()])
}

/// Parses [`statfs`]'s output with checked arithmetic; `None` if it is not
/// six numbers or the products overflow.
pub fn parse_statfs(stdout: &str) -> Option<FsUsage> {
    let n: Vec<u64> = stdout
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let [bsize, blocks, bfree, bavail, files, ffree] = n.as_slice() else {
        return None;
    };
    Some(FsUsage {
        total_bytes: blocks.checked_mul(*bsize)?,
        available_bytes: bavail.checked_mul(*bsize)?,
        used_bytes: blocks.checked_sub(*bfree)?.checked_mul(*bsize)?,
        total_inodes: *files,
        free_inodes: *ffree,
        used_inodes: files.checked_sub(*ffree)?,
    })
}

/// `blockdev --getsize64 DEVICE`: the device's size in bytes.
pub fn device_size(device: &Path) -> Cmd {
    Cmd::new("blockdev").args(["--getsize64", &device.display().to_string()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blkid_blank_filesystem_and_partition_table_are_told_apart() {
        assert_eq!(parse_blkid(Some(2), ""), Some(Probe::Blank));
        assert_eq!(
            parse_blkid(Some(0), "DEVNAME=/dev/sdb\nUUID=x\nTYPE=xfs\n"),
            Some(Probe::Filesystem("xfs".into()))
        );
        assert_eq!(
            parse_blkid(Some(0), "DEVNAME=/dev/sdb\nPTTYPE=gpt\n"),
            Some(Probe::Other("partition table gpt".into()))
        );
        assert_eq!(parse_blkid(Some(4), ""), None);
        assert_eq!(parse_blkid(None, ""), None);
    }

    #[test]
    fn fsck_exit_codes_below_four_mean_mountable() {
        for c in 0..4 {
            assert_eq!(fsck_verdict(Some(c)), FsckVerdict::Mountable);
        }
        for c in [4, 8, 12, 16, 32, 128] {
            assert_eq!(fsck_verdict(Some(c)), FsckVerdict::NeedsRepair);
        }
        assert_eq!(fsck_verdict(None), FsckVerdict::NeedsRepair);
    }

    #[test]
    fn statfs_output_becomes_bytes_and_inodes() {
        let u = parse_statfs("4096 1000 600 500 256 200\n").unwrap();
        assert_eq!(u.total_bytes, 4_096_000);
        assert_eq!(u.available_bytes, 2_048_000);
        assert_eq!(u.used_bytes, 1_638_400);
        assert_eq!(
            (u.total_inodes, u.free_inodes, u.used_inodes),
            (256, 200, 56)
        );
        assert_eq!(parse_statfs("4096 1000 600 500 256"), None);
        assert_eq!(parse_statfs("4096 1000 2000 500 256 200"), None);
        assert_eq!(parse_statfs(&format!("{} 2 0 0 0 0", u64::MAX)), None);
        assert_eq!(parse_statfs("a b c d e f"), None);
    }

    #[test]
    fn fs_types_are_ext4_and_xfs_only() {
        assert_eq!(FsType::parse("ext4"), Some(FsType::Ext4));
        assert_eq!(FsType::parse("xfs"), Some(FsType::Xfs));
        assert_eq!(FsType::parse("ext3"), None);
        assert_eq!(
            FsType::Ext4.fsck(Path::new("/dev/sdb")).unwrap().program,
            "e2fsck"
        );
        assert!(FsType::Xfs.fsck(Path::new("/dev/sdb")).is_none());
    }
}
