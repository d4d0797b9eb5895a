//! NodeStageVolume and NodeUnstageVolume (CSI spec §"NodeStageVolume",
//! §"NodeUnstageVolume").
//!
//! Stage: record → interface → discovery → node record (+CHAP) → login →
//! wait for the by-path device → (mount access) probe; mkfs only when
//! blank; fsck; mount. Each step is skipped when already done, so a retry
//! after any failure or crash converges.
//!
//! Unstage: refuse while the device is mounted anywhere but the staging
//! path → unmount staging → logout → delete the node record (it holds the
//! CHAP secret) → delete our record.

use std::collections::HashMap;
use std::path::Path;

use super::fs::FsType;
use super::fs::{self, FsckVerdict, Probe};
use super::host::{Cmd, Host};
use super::iscsi;
use super::ops::{check_path, check_volume_id, NodeError, NodeOps, Result};
use super::volume::{parse_chap, parse_context, Access, Staged, DEFAULT_FS};

/// How the CO wants the volume (a CSI `VolumeCapability`, flattened).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessRequest {
    /// `fs_type` empty: the context's `fsType`, else ext4. `flags` are
    /// mount options; a read-only access mode adds `ro`.
    Mount {
        fs_type: String,
        flags: Vec<String>,
    },
    Block,
}

#[derive(Debug, Clone)]
pub struct StageRequest {
    pub volume_id: String,
    pub staging_path: String,
    pub access: AccessRequest,
    pub context: HashMap<String, String>,
    pub secrets: HashMap<String, String>,
}

impl<H: Host> NodeOps<H> {
    pub fn stage(&self, req: &StageRequest) -> Result<()> {
        check_volume_id(&req.volume_id)?;
        let staging_path = check_path("staging target path", &req.staging_path)?;
        let ctx = parse_context(&req.context).map_err(NodeError::invalid)?;
        let chap = parse_chap(&req.secrets).map_err(NodeError::invalid)?;
        let access = match &req.access {
            AccessRequest::Block => Access::Block,
            AccessRequest::Mount { fs_type, flags } => {
                let fs = if fs_type.is_empty() {
                    ctx.fs_type.unwrap_or(DEFAULT_FS)
                } else {
                    FsType::parse(fs_type).ok_or_else(|| {
                        NodeError::invalid(format!("unsupported fs_type {fs_type:?}"))
                    })?
                };
                if let Some(f) = flags
                    .iter()
                    .find(|f| f.is_empty() || f.contains(['\n', '\r']))
                {
                    return Err(NodeError::invalid(format!("bad mount flag {f:?}")));
                }
                Access::Mount {
                    fs,
                    flags: flags.clone(),
                }
            }
        };
        let staged = Staged {
            volume_id: req.volume_id.clone(),
            staging_path,
            lun: ctx.lun,
            access,
            target_mgmt: ctx.target_mgmt,
        };

        match self.record(&staged.volume_id)? {
            Some(old) if old != staged => {
                return Err(NodeError::exists(format!(
                    "volume {} is already staged at {} with other parameters",
                    old.volume_id,
                    old.staging_path.display()
                )))
            }
            Some(_) => {}
            None => {
                if let Some(m) = self.mount_at(&staged.staging_path)? {
                    return Err(NodeError::exists(format!(
                        "{} already has {} mounted",
                        staged.staging_path.display(),
                        m.source
                    )));
                }
                self.save_record(&staged)?;
            }
        }

        self.refused_remounts().remove(&staged.volume_id);
        self.attach(&staged, chap.as_ref())?;
        let dev = self.wait_for_device(&staged)?;
        if let Access::Mount { fs, flags } = &staged.access {
            self.mount_staging(&staged, *fs, flags, dev)?;
        }
        tracing::info!(volume = %staged.volume_id, path = %staged.staging_path.display(), "staged");
        Ok(())
    }

    /// Interface, discovery, node record and login; a logged-in session
    /// is left alone (its record may carry CHAP we would rewrite the same).
    fn attach(&self, staged: &Staged, chap: Option<&iscsi::ChapSecrets>) -> Result<()> {
        if self.host.block_device(&staged.device()).is_some() {
            return Ok(());
        }
        iscsi::ensure_iface(&self.host, &self.initiator_name)?;
        iscsi::discover(&self.host, &staged.lun)?;
        iscsi::ensure_node_record(&self.host, &staged.lun, chap)?;
        iscsi::login(&self.host, &staged.lun)?;
        Ok(())
    }

    fn mount_staging(
        &self,
        staged: &Staged,
        fs: FsType,
        flags: &[String],
        dev: (u32, u32),
    ) -> Result<()> {
        let path = &staged.staging_path;
        if let Some(m) = self.mount_at(path)? {
            return if m.device() == dev {
                Ok(())
            } else {
                Err(NodeError::exists(format!(
                    "{} has another device mounted ({})",
                    path.display(),
                    m.source
                )))
            };
        }
        let device = staged.device();
        let out = self.host.run(&fs::blkid(&device))?;
        let probe = fs::parse_blkid(out.code, &out.stdout).ok_or_else(|| {
            NodeError::internal(format!(
                "blkid {} failed (exit {:?}): {}",
                device.display(),
                out.code,
                out.stderr.trim()
            ))
        })?;
        match probe {
            Probe::Blank => {
                tracing::info!(volume = %staged.volume_id, fs = fs.as_str(), "making a filesystem on a blank volume");
                self.must(fs.mkfs(&device))?;
            }
            Probe::Filesystem(t) if t == fs.as_str() => self.check_fs(fs, &device)?,
            Probe::Filesystem(t) => {
                return Err(NodeError::precondition(format!(
                    "volume {} holds a {t} filesystem, not {}",
                    staged.volume_id,
                    fs.as_str()
                )))
            }
            Probe::Other(what) => {
                return Err(NodeError::precondition(format!(
                    "volume {} holds {what}; refusing to format it",
                    staged.volume_id
                )))
            }
        }
        self.host.create_dir_all(path)?;
        let options: Vec<&str> = fs
            .default_mount_options()
            .iter()
            .copied()
            .chain(flags.iter().map(String::as_str))
            .collect();
        self.must(
            Cmd::new("mount")
                .args(["-t", fs.as_str(), "-o", &options.join(",")])
                .arg(device.display().to_string())
                .arg(path.display().to_string()),
        )?;
        match self.mount_at(path)? {
            Some(m) if m.device() == dev => Ok(()),
            _ => Err(NodeError::internal(format!(
                "mount reported success but {} is not mounted at {}",
                device.display(),
                path.display()
            ))),
        }
    }

    fn check_fs(&self, fs: FsType, device: &Path) -> Result<()> {
        let Some(cmd) = fs.fsck(device) else {
            return Ok(());
        };
        let out = self.host.run(&cmd)?;
        match fs::fsck_verdict(out.code) {
            FsckVerdict::Mountable => Ok(()),
            FsckVerdict::NeedsRepair => Err(NodeError::internal(format!(
                "{} (exit {:?}): the filesystem on {} has errors it cannot fix unattended: {}",
                cmd.display(),
                out.code,
                device.display(),
                out.stdout.trim()
            ))),
        }
    }

    pub fn unstage(&self, volume_id: &str, staging_path: &str) -> Result<()> {
        check_volume_id(volume_id)?;
        let staging_path = check_path("staging target path", staging_path)?;
        let Some(staged) = self.record(volume_id)? else {
            return Ok(());
        };
        if staged.staging_path != staging_path {
            // Not staged at this path: nothing to do here (CSI idempotency).
            return Ok(());
        }
        self.refuse_if_published(&staged)?;
        if matches!(staged.access, Access::Mount { .. }) {
            self.unmount_all(&staged.staging_path)?;
        }
        iscsi::logout(&self.host, &staged.lun)?;
        iscsi::delete_node_record(&self.host, &staged.lun)?;
        self.delete_record(volume_id)?;
        self.refused_remounts().remove(volume_id);
        tracing::info!(volume = volume_id, "unstaged");
        Ok(())
    }

    fn refuse_if_published(&self, staged: &Staged) -> Result<()> {
        let elsewhere: Vec<_> = match staged.access {
            Access::Block => self.block_binds(staged)?,
            Access::Mount { .. } => match self.host.block_device(&staged.device()) {
                None => Vec::new(),
                Some(dev) => self
                    .mounts()?
                    .into_iter()
                    .filter(|m| m.device() == dev && m.mount_point != staged.staging_path)
                    .collect(),
            },
        };
        match elsewhere.first() {
            None => Ok(()),
            Some(m) => Err(NodeError::precondition(format!(
                "volume {} is still mounted at {}; unpublish it first",
                staged.volume_id,
                m.mount_point.display()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::*;
    use super::super::ops::Code;
    use super::*;

    #[test]
    fn stage_logs_in_through_the_node_iface_makes_ext4_and_mounts() {
        let (ops, host) = setup();
        ops.stage(&stage_req("ext4", &["noatime"])).unwrap();
        let s = host.state();
        assert_eq!(s.iface_initiator.as_deref(), Some(NODE_INITIATOR));
        assert_eq!(s.node_records[IQN]["node.session.auth.authmethod"], "None");
        assert_eq!(s.node_records[IQN]["node.startup"], "manual");
        assert_eq!(s.luns[IQN].fs.as_deref(), Some("ext4"));
        let m = s
            .mounts
            .iter()
            .find(|m| m.mount_point == Path::new(STAGING))
            .unwrap();
        assert_eq!(m.fs_type, "ext4");
        drop(s);
        let cmds = host.take_commands();
        let mount = cmds.iter().find(|c| c.starts_with("mount ")).unwrap();
        assert!(mount.contains("errors=remount-ro,noatime"), "{mount}");
        // Discovery happens before the login, through our interface.
        let disc = cmds.iter().position(|c| c.contains("discovery")).unwrap();
        let login = cmds.iter().position(|c| c.contains("--login")).unwrap();
        assert!(disc < login && cmds[disc].contains("-I cstor-csi"));
    }

    #[test]
    fn stage_again_with_same_parameters_changes_nothing() {
        let (ops, host) = setup();
        ops.stage(&stage_req("ext4", &[])).unwrap();
        host.take_commands();
        ops.stage(&stage_req("ext4", &[])).unwrap();
        assert_eq!(host.take_changes(), Vec::<String>::new());
    }

    #[test]
    fn stage_with_other_fs_or_flags_or_path_is_already_exists() {
        let (ops, _host) = setup();
        ops.stage(&stage_req("ext4", &[])).unwrap();
        for req in [
            stage_req("xfs", &[]),
            stage_req("ext4", &["noatime"]),
            StageRequest {
                staging_path: "/other".into(),
                ..stage_req("ext4", &[])
            },
            StageRequest {
                access: AccessRequest::Block,
                ..stage_req("ext4", &[])
            },
        ] {
            assert_eq!(
                ops.stage(&req).unwrap_err().code,
                Code::AlreadyExists,
                "{req:?}"
            );
        }
    }

    #[test]
    fn an_existing_filesystem_is_checked_and_never_reformatted() {
        let (ops, host) = setup();
        ops.stage(&stage_req("xfs", &[])).unwrap();
        ops.unstage("pv1", STAGING).unwrap();
        host.take_commands();
        ops.stage(&stage_req("xfs", &[])).unwrap();
        assert!(!host.take_commands().iter().any(|c| c.starts_with("mkfs")));
        // A different type on the disk: refused, not formatted.
        ops.unstage("pv1", STAGING).unwrap();
        let err = ops.stage(&stage_req("ext4", &[])).unwrap_err();
        assert_eq!(err.code, Code::FailedPrecondition, "{err}");
        assert_eq!(host.state().luns[IQN].fs.as_deref(), Some("xfs"));
    }

    #[test]
    fn ext4_with_errors_fsck_cannot_fix_is_not_mounted() {
        let (ops, host) = setup();
        ops.stage(&stage_req("ext4", &[])).unwrap();
        ops.unstage("pv1", STAGING).unwrap();
        host.state().fsck_code = 4;
        assert_eq!(
            ops.stage(&stage_req("ext4", &[])).unwrap_err().code,
            Code::Internal
        );
        assert!(host.state().mounts.is_empty());
        host.state().fsck_code = 1; // fixed: mountable
        ops.stage(&stage_req("ext4", &[])).unwrap();
    }

    #[test]
    fn chap_secrets_go_into_the_node_record_before_login() {
        let (ops, host) = setup();
        let mut req = stage_req("ext4", &[]);
        req.secrets = [
            ("node.session.auth.username", "user"),
            ("node.session.auth.password", "secretsecret12"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        ops.stage(&req).unwrap();
        let rec = host.state().node_records[IQN].clone();
        assert_eq!(rec["node.session.auth.authmethod"], "CHAP");
        assert_eq!(rec["node.session.auth.password"], "secretsecret12");
        assert!(!host
            .take_commands()
            .iter()
            .any(|c| c.contains("secretsecret12")));
    }

    #[test]
    fn a_node_with_another_initiator_name_is_refused_at_login() {
        let (mut ops, host) = setup();
        ops.initiator_name = "iqn.2016-09.com.openebs.cstor:node.intruder".into();
        let err = ops.stage(&stage_req("ext4", &[])).unwrap_err();
        assert_eq!(err.code, Code::PermissionDenied, "{err}");
        assert!(host.state().sessions.is_empty());
    }

    #[test]
    fn a_device_that_never_appears_is_a_deadline_not_a_hang() {
        let (ops, host) = setup();
        host.state().device_never_appears = true;
        assert_eq!(
            ops.stage(&stage_req("ext4", &[])).unwrap_err().code,
            Code::DeadlineExceeded
        );
    }

    #[test]
    fn argument_errors_are_invalid_argument_before_touching_the_host() {
        let (ops, host) = setup();
        let mut no_portal = stage_req("ext4", &[]);
        no_portal.context.remove("portal");
        for req in [
            StageRequest {
                volume_id: String::new(),
                ..stage_req("ext4", &[])
            },
            StageRequest {
                staging_path: String::new(),
                ..stage_req("ext4", &[])
            },
            StageRequest {
                staging_path: "relative".into(),
                ..stage_req("ext4", &[])
            },
            stage_req("ntfs", &[]),
            no_portal,
        ] {
            assert_eq!(
                ops.stage(&req).unwrap_err().code,
                Code::InvalidArgument,
                "{req:?}"
            );
        }
        assert!(host.take_commands().is_empty());
        assert_eq!(
            ops.unstage("", STAGING).unwrap_err().code,
            Code::InvalidArgument
        );
        assert_eq!(
            ops.unstage("pv1", "").unwrap_err().code,
            Code::InvalidArgument
        );
    }

    #[test]
    fn unstage_logs_out_deletes_the_record_and_is_idempotent() {
        let (ops, host) = setup();
        ops.stage(&stage_req("ext4", &[])).unwrap();
        ops.unstage("pv1", STAGING).unwrap();
        {
            let s = host.state();
            assert!(s.mounts.is_empty() && s.sessions.is_empty() && s.node_records.is_empty());
        }
        assert!(ops.record("pv1").unwrap().is_none());
        ops.unstage("pv1", STAGING).unwrap();
        // Unknown volume: not staged, so OK (CSI idempotency rule).
        ops.unstage("never-seen", STAGING).unwrap();
    }

    #[test]
    fn unstage_while_published_is_refused_and_keeps_the_session() {
        let (ops, host) = setup();
        ops.stage(&stage_req("ext4", &[])).unwrap();
        ops.publish(&publish_req(false)).unwrap();
        let err = ops.unstage("pv1", STAGING).unwrap_err();
        assert_eq!(err.code, Code::FailedPrecondition, "{err}");
        assert_eq!(host.state().sessions.len(), 1);
        ops.unpublish("pv1", TARGET).unwrap();
        ops.unstage("pv1", STAGING).unwrap();
    }

    #[test]
    fn block_volumes_log_in_without_a_filesystem() {
        let (ops, host) = setup();
        let req = StageRequest {
            access: AccessRequest::Block,
            ..stage_req("", &[])
        };
        ops.stage(&req).unwrap();
        ops.stage(&req).unwrap();
        let s = host.state();
        assert_eq!(s.luns[IQN].fs, None);
        assert!(s.mounts.is_empty());
        assert_eq!(s.sessions.len(), 1);
    }

    #[test]
    fn a_crash_between_login_and_mount_converges_on_retry() {
        let (ops, host) = setup();
        host.state().device_never_appears = true;
        assert!(ops.stage(&stage_req("ext4", &[])).is_err());
        host.state().device_never_appears = false;
        ops.stage(&stage_req("ext4", &[])).unwrap();
        assert_eq!(host.state().mounts.len(), 1);
        // And an unstage after a failed stage cleans up the session too.
        let (ops, host) = setup();
        host.state().device_never_appears = true;
        assert!(ops.stage(&stage_req("ext4", &[])).is_err());
        ops.unstage("pv1", STAGING).unwrap();
        assert!(host.state().sessions.is_empty());
    }
}
