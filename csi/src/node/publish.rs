//! NodePublishVolume and NodeUnpublishVolume (CSI spec §"NodePublishVolume",
//! §"NodeUnpublishVolume").
//!
//! Publish is a bind mount: of the staging mount onto the target directory
//! (mount access), or of the device node onto a target file (block access);
//! read-only is a second `mount -o remount,bind,ro` of that bind (the
//! kernel ignores `ro` on the first bind call). The target path is ours to
//! create and, on unpublish, to remove.
//!
//! Unpublish of a volume that is not published at the target path (not
//! staged here at all, or another volume's mount is there) is `Ok` and
//! touches nothing: "This operation MUST be idempotent", and "This RPC
//! MUST undo the work by the corresponding `NodePublishVolume`" (CSI spec
//! §"NodeUnpublishVolume"): where there was none there is nothing to undo.
//! Kubelet retries an unpublish that fails until it succeeds, so NOT_FOUND
//! here would wedge a pod's teardown after a plugin lost its state.

use std::path::{Path, PathBuf};

use super::host::{Cmd, Host};
use super::mountinfo::MountEntry;
use super::ops::{check_path, check_volume_id, NodeError, NodeOps, Result};
use super::volume::{Access, Staged};

#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub volume_id: String,
    pub staging_path: String,
    pub target_path: String,
    /// Whether the CO asked for block access (else mount).
    pub block: bool,
    pub read_only: bool,
}

/// What a publish bind-mounts.
enum Source {
    /// The staging mount (mount access), of device `dev`.
    Staging { path: PathBuf, dev: (u32, u32) },
    /// The device node (block access); a bind of a devtmpfs node shows in
    /// mountinfo with the node's name (`/sdb`) as root.
    Device { path: PathBuf, root: PathBuf },
}

impl Source {
    fn path(&self) -> &PathBuf {
        match self {
            Source::Staging { path, .. } | Source::Device { path, .. } => path,
        }
    }

    /// Whether mount `m` is a bind of this source.
    fn shows_as(&self, m: &MountEntry) -> bool {
        match self {
            Source::Staging { dev, .. } => m.device() == *dev,
            Source::Device { root, .. } => Path::new(&m.root) == root,
        }
    }
}

impl<H: Host> NodeOps<H> {
    pub fn publish(&self, req: &PublishRequest) -> Result<()> {
        check_volume_id(&req.volume_id)?;
        let staging = check_path("staging target path", &req.staging_path)?;
        let target = check_path("target path", &req.target_path)?;
        let staged = self.record(&req.volume_id)?.ok_or_else(|| {
            NodeError::not_found(format!(
                "volume {} is not staged on this node",
                req.volume_id
            ))
        })?;
        if staged.staging_path != staging {
            return Err(NodeError::precondition(format!(
                "volume {} is staged at {}, not {}",
                req.volume_id,
                staged.staging_path.display(),
                staging.display()
            )));
        }
        let source = match staged.access {
            Access::Mount { .. } if !req.block => {
                let m = self.mount_at(&staging)?.ok_or_else(|| {
                    NodeError::precondition(format!(
                        "volume {} is not mounted at its staging path; stage it again",
                        req.volume_id
                    ))
                })?;
                Source::Staging {
                    path: staging.clone(),
                    dev: m.device(),
                }
            }
            Access::Block if req.block => {
                let device = staged.device();
                let real = self.host.resolve(&device).ok_or_else(|| {
                    NodeError::precondition(format!(
                        "{} is gone; stage volume {} again",
                        device.display(),
                        req.volume_id
                    ))
                })?;
                let root = real
                    .strip_prefix("/dev")
                    .map(|r| PathBuf::from("/").join(r))
                    .unwrap_or(real);
                Source::Device { path: device, root }
            }
            _ => {
                return Err(NodeError::exists(format!(
                    "volume {} was staged for {} access",
                    req.volume_id,
                    if req.block { "mount" } else { "block" }
                )))
            }
        };

        if let Some(m) = self.mount_at(&target)? {
            return if source.shows_as(&m) && m.mount_ro() == req.read_only {
                Ok(())
            } else {
                Err(NodeError::exists(format!(
                    "{} is already mounted ({}, {})",
                    target.display(),
                    m.source,
                    if m.mount_ro() { "ro" } else { "rw" }
                )))
            };
        }
        if req.block {
            self.host.create_file(&target)?;
        } else {
            self.host.create_dir_all(&target)?;
        }
        let target_arg = target.display().to_string();
        self.must(
            Cmd::new("mount")
                .arg("--bind")
                .arg(source.path().display().to_string())
                .arg(&target_arg),
        )?;
        if req.read_only {
            self.must(Cmd::new("mount").args(["-o", "remount,bind,ro", &target_arg]))?;
        }
        tracing::info!(volume = %req.volume_id, target = %target_arg, ro = req.read_only, "published");
        Ok(())
    }

    /// Undoes a publish at `target_path`. A volume not published there is
    /// `Ok` with nothing touched: unknown here (a published volume always
    /// has a record: unstage refuses while it is published), or the mount
    /// at the path is another volume's, which this call must not tear down.
    pub fn unpublish(&self, volume_id: &str, target_path: &str) -> Result<()> {
        check_volume_id(volume_id)?;
        let target = check_path("target path", target_path)?;
        let Some(staged) = self.record(volume_id)? else {
            tracing::debug!(volume = volume_id, target = %target.display(), "unpublish: volume not staged here, nothing to undo");
            return Ok(());
        };
        if let Some(m) = self.mount_at(&target)? {
            if !self.may_unmount(&staged, &m)? {
                tracing::warn!(volume = volume_id, target = %target.display(), source = %m.source, "unpublish: another volume is mounted there; left alone");
                return Ok(());
            }
        }
        self.unmount_all(&target)?;
        self.host.remove_path(&target)?;
        tracing::info!(volume = volume_id, target = %target.display(), "unpublished");
        Ok(())
    }

    /// Whether unpublishing `staged` may unmount `m`: it is a mount of the
    /// volume, or the volume's marks are gone (its device vanished and
    /// nothing is mounted at its staging path), when the CO's word that the
    /// volume was published there is all there is.
    fn may_unmount(&self, staged: &Staged, m: &MountEntry) -> Result<bool> {
        let marks = self.marks(staged)?;
        Ok(marks.is_empty() || marks.iter().any(|k| k.matches(m)))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::fake::*;
    use super::super::ops::Code;
    use super::super::stage::{AccessRequest, StageRequest};
    use super::*;

    fn target_mount(host: &FakeHost) -> Option<MountEntry> {
        host.state()
            .mounts
            .iter()
            .rev()
            .find(|m| m.mount_point == Path::new(TARGET))
            .cloned()
    }

    #[test]
    fn publish_bind_mounts_the_staging_mount_and_is_idempotent() {
        let (ops, host) = setup();
        ops.stage(&stage_req("ext4", &[])).unwrap();
        ops.publish(&publish_req(false)).unwrap();
        let m = target_mount(&host).unwrap();
        assert_eq!((m.device(), m.mount_ro()), ((8, 0), false));
        host.take_commands();
        ops.publish(&publish_req(false)).unwrap();
        assert_eq!(host.take_changes(), Vec::<String>::new());
    }

    #[test]
    fn read_only_publish_is_a_read_only_bind_and_a_different_mode_already_exists() {
        let (ops, host) = setup();
        ops.stage(&stage_req("ext4", &[])).unwrap();
        ops.publish(&publish_req(true)).unwrap();
        assert!(target_mount(&host).unwrap().mount_ro());
        ops.publish(&publish_req(true)).unwrap();
        assert_eq!(
            ops.publish(&publish_req(false)).unwrap_err().code,
            Code::AlreadyExists
        );
    }

    #[test]
    fn publish_of_an_unstaged_volume_is_not_found_and_of_another_path_a_precondition() {
        let (ops, _host) = setup();
        assert_eq!(
            ops.publish(&publish_req(false)).unwrap_err().code,
            Code::NotFound
        );
        ops.stage(&stage_req("ext4", &[])).unwrap();
        let other = PublishRequest {
            staging_path: "/elsewhere".into(),
            ..publish_req(false)
        };
        assert_eq!(
            ops.publish(&other).unwrap_err().code,
            Code::FailedPrecondition
        );
        let block = PublishRequest {
            block: true,
            ..publish_req(false)
        };
        assert_eq!(ops.publish(&block).unwrap_err().code, Code::AlreadyExists);
        for bad in [
            PublishRequest {
                target_path: String::new(),
                ..publish_req(false)
            },
            PublishRequest {
                staging_path: String::new(),
                ..publish_req(false)
            },
            PublishRequest {
                volume_id: String::new(),
                ..publish_req(false)
            },
        ] {
            assert_eq!(ops.publish(&bad).unwrap_err().code, Code::InvalidArgument);
        }
    }

    #[test]
    fn unpublish_unmounts_removes_the_target_and_is_idempotent() {
        let (ops, host) = setup();
        ops.stage(&stage_req("ext4", &[])).unwrap();
        ops.publish(&publish_req(false)).unwrap();
        ops.unpublish("pv1", TARGET).unwrap();
        assert!(target_mount(&host).is_none());
        assert!(!host.exists(Path::new(TARGET)));
        ops.unpublish("pv1", TARGET).unwrap();
        for bad in ["", "relative", "/var/lib/kubelet/pods/../../.."] {
            assert_eq!(
                ops.unpublish("pv1", bad).unwrap_err().code,
                Code::InvalidArgument,
                "{bad:?}"
            );
        }
    }

    /// CSI spec §"NodeUnpublishVolume": "This operation MUST be
    /// idempotent", and "This RPC MUST undo the work by the corresponding
    /// `NodePublishVolume`": a volume not published at the target path
    /// has nothing to undo, so the answer is `0 OK`, and nothing else
    /// there is torn down.
    #[test]
    fn unpublish_of_a_volume_not_published_at_the_path_is_ok_and_touches_nothing() {
        let (ops, host) = setup();
        ops.stage(&stage_req("ext4", &[])).unwrap();
        ops.publish(&publish_req(false)).unwrap();
        host.state().mounts.push(foreign_mount("/mnt/other"));
        host.take_commands();
        // Not staged here at all: pv1's mount at TARGET is not its to undo.
        ops.unpublish("ghost", TARGET).unwrap();
        ops.unpublish("ghost", "/never/published").unwrap();
        // Staged here, but what is mounted at the path is another volume's.
        ops.unpublish("pv1", "/mnt/other").unwrap();
        assert_eq!(host.take_changes(), Vec::<String>::new());
        assert!(target_mount(&host).is_some());
        assert!(host
            .state()
            .mounts
            .iter()
            .any(|m| m.mount_point == Path::new("/mnt/other")));
        // Published nowhere near the path: OK as well.
        ops.unpublish("pv1", "/never/published").unwrap();
        ops.unpublish("pv1", TARGET).unwrap();
        ops.unpublish("pv1", TARGET).unwrap();
        assert!(target_mount(&host).is_none());
    }

    #[test]
    fn block_publish_binds_the_device_onto_a_file() {
        let (ops, host) = setup();
        ops.stage(&StageRequest {
            access: AccessRequest::Block,
            ..stage_req("", &[])
        })
        .unwrap();
        let req = PublishRequest {
            block: true,
            ..publish_req(false)
        };
        ops.publish(&req).unwrap();
        ops.publish(&req).unwrap();
        let m = target_mount(&host).unwrap();
        assert_eq!((m.fs_type.as_str(), m.root.as_str()), ("devtmpfs", "/sdb"));
        assert!(host.state().files.contains_key(Path::new(TARGET)));
        assert_eq!(
            ops.unstage("pv1", STAGING).unwrap_err().code,
            Code::FailedPrecondition
        );
        ops.unpublish("pv1", TARGET).unwrap();
        assert!(!host.exists(Path::new(TARGET)));
        ops.unstage("pv1", STAGING).unwrap();
    }
}
