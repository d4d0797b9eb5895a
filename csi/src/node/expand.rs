//! NodeExpandVolume and NodeGetVolumeStats (CSI spec §"NodeExpandVolume",
//! §"NodeGetVolumeStats").
//!
//! Expand: the controller has grown the LUN at the target (which reports
//! CAPACITY DATA HAS CHANGED); the node rescans the session, waits until
//! the device shows at least the required size, then grows the filesystem
//! online. Idempotent: growing a filesystem to the size it has is a no-op.
//!
//! Stats: bytes and inodes from `stat -f` on the volume path; the volume
//! condition is abnormal when the filesystem went read-only without being
//! asked to (ext4 `errors=remount-ro` after IO errors), or when the
//! filesystem cannot be queried at all.
//!
//! Both find the volume by the node's records, not by the path existing
//! ([`super::locate`]): a volume not staged here, or not at the given
//! path (a relative one, one with `..`, an absent one, an unrelated
//! directory or mount), is NOT_FOUND, "Indicates that a volume
//! corresponding to the specified `volume_id` does not exist on specified
//! `volume_path`"; only an empty path is INVALID_ARGUMENT ("This is a
//! REQUIRED field").

use std::path::Path;
use std::time::Duration;

use super::fs::{self, FsUsage};
use super::host::Host;
use super::iscsi;
use super::locate::Place;
use super::ops::{
    check_volume_id, check_volume_path, Code, NodeError, NodeOps, Result, DEVICE_POLL,
};
use super::volume::{Access, Staged};

/// How often a NodeExpandVolume waiting for a larger device rescans.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(1);

/// What NodeGetVolumeStats reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeStats {
    /// Filesystem usage (mount access).
    pub usage: Option<FsUsage>,
    /// Device size (block access).
    pub block_total_bytes: Option<u64>,
    /// `Some(message)` when the volume is abnormal.
    pub abnormal: Option<String>,
}

impl<H: Host> NodeOps<H> {
    /// Returns the device's size after the expansion, in bytes.
    pub fn expand(
        &self,
        volume_id: &str,
        volume_path: &str,
        required_bytes: Option<u64>,
    ) -> Result<u64> {
        check_volume_id(volume_id)?;
        check_volume_path(volume_path)?;
        let staged = self.known(volume_id)?;
        self.located(&staged, volume_path)?;
        let size = self.wait_for_size(&staged, required_bytes.unwrap_or(0))?;
        if let Access::Mount { fs, .. } = staged.access {
            if self.mount_at(&staged.staging_path)?.is_none() {
                return Err(NodeError::precondition(format!(
                    "volume {volume_id} is not mounted at {}",
                    staged.staging_path.display()
                )));
            }
            self.must(fs.grow(&staged.device(), &staged.staging_path))?;
        }
        tracing::info!(volume = volume_id, size_bytes = size, "expanded");
        Ok(size)
    }

    /// Rescans until the device shows `required_bytes` (bounded by the
    /// device timeout). The kernel learns a new capacity only from a
    /// rescan (the target's CAPACITY DATA HAS CHANGED unit attention only
    /// makes udev rescan, where there is udev), so a NodeExpandVolume that
    /// races the controller's resize must rescan again, not just re-read.
    fn wait_for_size(&self, staged: &Staged, required_bytes: u64) -> Result<u64> {
        let mut waited = Duration::ZERO;
        let mut since_rescan = Duration::ZERO;
        iscsi::rescan(&self.host, &staged.lun)?;
        loop {
            let size = self.device_size(staged)?;
            if size >= required_bytes {
                return Ok(size);
            }
            if waited >= self.device_timeout {
                return Err(NodeError::new(
                    Code::Unavailable,
                    format!(
                        "{} is {size} bytes after rescans for {} s, not the {required_bytes} \
                         requested; has the controller grown the volume?",
                        staged.device().display(),
                        self.device_timeout.as_secs()
                    ),
                ));
            }
            if since_rescan >= RESCAN_INTERVAL {
                iscsi::rescan(&self.host, &staged.lun)?;
                since_rescan = Duration::ZERO;
            }
            self.host.sleep(DEVICE_POLL);
            waited = waited.saturating_add(DEVICE_POLL);
            since_rescan = since_rescan.saturating_add(DEVICE_POLL);
        }
    }

    fn known(&self, volume_id: &str) -> Result<Staged> {
        self.record(volume_id)?.ok_or_else(|| {
            NodeError::not_found(format!("volume {volume_id} is not staged on this node"))
        })
    }

    /// Where `volume_path` shows the volume; NOT_FOUND when it does not.
    fn located(&self, staged: &Staged, volume_path: &str) -> Result<Place> {
        self.place(staged, volume_path)?.ok_or_else(|| {
            NodeError::not_found(format!(
                "volume {} is not staged or published at {volume_path:?} on this node",
                staged.volume_id
            ))
        })
    }

    pub fn stats(&self, volume_id: &str, volume_path: &str) -> Result<VolumeStats> {
        check_volume_id(volume_id)?;
        check_volume_path(volume_path)?;
        let staged = self.known(volume_id)?;
        let place = self.located(&staged, volume_path)?;
        match &staged.access {
            Access::Block => Ok(match self.device_size(&staged) {
                Ok(size) => VolumeStats {
                    usage: None,
                    block_total_bytes: Some(size),
                    abnormal: None,
                },
                Err(e) => VolumeStats {
                    usage: None,
                    block_total_bytes: None,
                    abnormal: Some(e.message),
                },
            }),
            Access::Mount { flags, .. } => {
                let m = place.mount().cloned().ok_or_else(|| {
                    NodeError::not_found(format!(
                        "volume {volume_id} is not mounted at {volume_path:?}"
                    ))
                })?;
                let path = m.mount_point.clone();
                let asked_ro = flags.iter().any(|f| f == "ro");
                let refused = self.refused_remounts().contains(volume_id);
                let abnormal = (self.fs_failed(&m) && !asked_ro).then(|| {
                    if refused {
                        "the filesystem turned read-only after IO errors and the kernel \
                         refused to remount it read-write: it needs a check; unstage and \
                         stage it again (stage runs fsck)"
                    } else {
                        "the filesystem turned read-only (IO errors, or the target lost \
                         quorum); it is remounted read-write once the target has quorum"
                    }
                    .to_owned()
                });
                Ok(match self.statfs(&path) {
                    Ok(usage) => VolumeStats {
                        usage: Some(usage),
                        block_total_bytes: None,
                        abnormal,
                    },
                    Err(e) => VolumeStats {
                        usage: None,
                        block_total_bytes: None,
                        abnormal: Some(e.message),
                    },
                })
            }
        }
    }

    fn statfs(&self, path: &Path) -> Result<FsUsage> {
        let out = self.must(fs::statfs(path))?;
        fs::parse_statfs(&out.stdout).ok_or_else(|| {
            NodeError::internal(format!(
                "stat -f {} printed {:?}",
                path.display(),
                out.stdout
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::*;
    use super::super::ops::Code;
    use super::super::publish::PublishRequest;
    use super::super::stage::{AccessRequest, StageRequest};

    #[test]
    fn expand_rescans_waits_for_the_size_and_grows_the_filesystem() {
        for fs in ["ext4", "xfs"] {
            let (ops, host) = setup();
            ops.stage(&stage_req(fs, &[])).unwrap();
            ops.publish(&publish_req(false)).unwrap();
            host.state().luns.get_mut(IQN).unwrap().target_size = 2 * GIB;
            host.take_commands();
            assert_eq!(ops.expand("pv1", TARGET, Some(2 * GIB)).unwrap(), 2 * GIB);
            let cmds = host.take_changes();
            assert!(cmds[0].contains("--rescan"), "{cmds:?}");
            let grow = if fs == "ext4" {
                "resize2fs /dev/disk"
            } else {
                "xfs_growfs /var"
            };
            assert!(cmds[1].starts_with(grow), "{cmds:?}");
            assert_eq!(host.state().luns[IQN].fs_size, 2 * GIB);
            // Again: same answer, nothing breaks.
            assert_eq!(ops.expand("pv1", TARGET, Some(2 * GIB)).unwrap(), 2 * GIB);
        }
    }

    #[test]
    fn expand_racing_the_controllers_resize_rescans_until_the_device_grows() {
        let (mut ops, host) = setup();
        ops.device_timeout = std::time::Duration::from_secs(5);
        ops.stage(&stage_req("ext4", &[])).unwrap();
        ops.publish(&publish_req(false)).unwrap();
        // The target grows only after the node's third rescan.
        host.state().grow_at_rescan = Some((3, 2 * GIB));
        host.take_commands();
        assert_eq!(ops.expand("pv1", TARGET, Some(2 * GIB)).unwrap(), 2 * GIB);
        let rescans = host
            .take_commands()
            .iter()
            .filter(|c| c.contains("--rescan"))
            .count();
        assert_eq!(rescans, 3);
        assert_eq!(host.state().luns[IQN].fs_size, 2 * GIB);
    }

    #[test]
    fn expand_beyond_what_the_target_has_is_unavailable_and_unknown_is_not_found() {
        let (ops, _host) = setup();
        assert_eq!(
            ops.expand("pv1", TARGET, None).unwrap_err().code,
            Code::NotFound
        );
        ops.stage(&stage_req("ext4", &[])).unwrap();
        ops.publish(&publish_req(false)).unwrap();
        let err = ops.expand("pv1", TARGET, Some(3 * GIB)).unwrap_err();
        assert_eq!(err.code, Code::Unavailable, "{err}");
        assert_eq!(
            ops.expand("pv1", "/not/there", None).unwrap_err().code,
            Code::NotFound
        );
        assert_eq!(
            ops.expand("pv1", "", None).unwrap_err().code,
            Code::InvalidArgument
        );
    }

    #[test]
    fn stats_report_bytes_and_inodes_and_read_only_as_abnormal() {
        let (ops, host) = setup();
        ops.stage(&stage_req("ext4", &[])).unwrap();
        ops.publish(&publish_req(false)).unwrap();
        let stats = ops.stats("pv1", TARGET).unwrap();
        let usage = stats.usage.unwrap();
        assert_eq!((usage.total_bytes, usage.total_inodes), (4_096_000, 256));
        assert_eq!(stats.abnormal, None);
        // errors=remount-ro fired: the superblock is read-only.
        for m in host.state().mounts.iter_mut() {
            m.super_options[0] = "ro".into();
        }
        assert!(ops.stats("pv1", TARGET).unwrap().abnormal.is_some());
        assert_eq!(ops.stats("pv1", "/nope").unwrap_err().code, Code::NotFound);
        assert_eq!(ops.stats("ghost", TARGET).unwrap_err().code, Code::NotFound);
        assert_eq!(
            ops.stats("pv1", "").unwrap_err().code,
            Code::InvalidArgument
        );
    }

    /// Paths where pv1 is not: absent, relative, with `..` (even one that
    /// resolves to the target), an unrelated directory, another
    /// filesystem's mount point.
    const ODD_PATHS: [&str; 6] = [
        "/not/there",
        "var/lib/kubelet/pods/p1/volumes/pv1/mount",
        "/var/lib/kubelet/pods/p1/volumes/pv1/../pv1/mount",
        "/var/lib/kubelet/pods/p1/volumes/pv1/mount/..",
        "/srv/unrelated",
        "/mnt/other",
    ];

    /// CSI spec §"NodeGetVolumeStats Errors" and §"NodeExpandVolume
    /// Errors": "Volume does not exist | 5 NOT_FOUND | Indicates that a
    /// volume corresponding to the specified `volume_id` does not exist on
    /// specified `volume_path`"; `volume_path` "is a REQUIRED field"
    /// (missing: INVALID_ARGUMENT). Decided by the node's records, not by
    /// whether the path exists.
    #[test]
    fn stats_and_expand_where_the_volume_is_not_are_not_found_whatever_the_path() {
        let (ops, host) = setup();
        {
            let mut s = host.state();
            s.dirs.insert("/srv/unrelated".into());
            s.dirs.insert("/mnt/other".into());
            s.mounts.push(foreign_mount("/mnt/other"));
        }
        // Not staged on this node: every path, even pv1's own staging path.
        for path in ODD_PATHS.iter().chain(&[STAGING, TARGET]) {
            assert_eq!(
                ops.stats("pv1", path).unwrap_err().code,
                Code::NotFound,
                "{path}"
            );
            assert_eq!(
                ops.expand("pv1", path, None).unwrap_err().code,
                Code::NotFound,
                "{path}"
            );
        }
        ops.stage(&stage_req("ext4", &[])).unwrap();
        ops.publish(&publish_req(false)).unwrap();
        for path in ODD_PATHS {
            let err = ops.stats("pv1", path).unwrap_err();
            assert_eq!(err.code, Code::NotFound, "{path}: {err}");
            assert_eq!(
                ops.expand("pv1", path, None).unwrap_err().code,
                Code::NotFound,
                "{path}"
            );
        }
        // Another volume's id at pv1's own paths: not found either.
        assert_eq!(ops.stats("pv2", TARGET).unwrap_err().code, Code::NotFound);
        for id in ["pv1", "ghost"] {
            assert_eq!(ops.stats(id, "").unwrap_err().code, Code::InvalidArgument);
            assert_eq!(
                ops.expand(id, "", None).unwrap_err().code,
                Code::InvalidArgument
            );
        }
        // Where it is, both answer: the published path and the staging path.
        for path in [TARGET, STAGING] {
            assert!(ops.stats("pv1", path).unwrap().usage.is_some(), "{path}");
            assert_eq!(ops.expand("pv1", path, None).unwrap(), GIB, "{path}");
        }
    }

    #[test]
    fn block_stats_are_found_only_at_the_staging_path_or_a_bind_of_the_device() {
        let (ops, host) = setup();
        ops.stage(&StageRequest {
            access: AccessRequest::Block,
            ..stage_req("", &[])
        })
        .unwrap();
        let publish = PublishRequest {
            block: true,
            ..publish_req(false)
        };
        ops.publish(&publish).unwrap();
        assert_eq!(
            ops.stats("pv1", TARGET).unwrap().block_total_bytes,
            Some(GIB)
        );
        assert_eq!(
            ops.stats("pv1", STAGING).unwrap().block_total_bytes,
            Some(GIB)
        );
        // A devtmpfs bind of some other device node is not pv1.
        let mut other = foreign_mount("/mnt/other");
        other.root = "/sdz".into();
        other.fs_type = "devtmpfs".into();
        host.state().mounts.push(other);
        assert_eq!(
            ops.stats("pv1", "/mnt/other").unwrap_err().code,
            Code::NotFound
        );
    }

    #[test]
    fn a_volume_staged_read_only_is_not_abnormal_for_being_read_only() {
        let (ops, host) = setup();
        ops.stage(&stage_req("ext4", &["ro"])).unwrap();
        assert!(host.state().mounts[0].fs_ro());
        assert_eq!(ops.stats("pv1", STAGING).unwrap().abnormal, None);
    }
}
