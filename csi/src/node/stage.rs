//! NodeStageVolume and NodeUnstageVolume (CSI spec §"NodeStageVolume",
//! §"NodeUnstageVolume").
//!
//! Stage: check every argument ([`StageRequest::plan`], pure) → record →
//! interface → discovery → node record (+CHAP) → login → wait for the
//! by-path device → (mount access) probe; mkfs only when blank; fsck;
//! mount. Each step is skipped when already done, so a retry after any
//! failure or crash converges.
//!
//! A stage that fails undoes what that call changed ([`Changes`], undone in
//! reverse order by [`Changes::undo`]): unmount, the staging directory if
//! it made it, logout and the node record if it logged in, and last the
//! staged-volume record, so the node is as if the stage never happened —
//! NodeGetVolumeStats answers NOT_FOUND and NodeUnstageVolume has nothing
//! to do (CSI spec: "If this RPC failed, or the CO does not know if it
//! failed or not, it MAY choose to call `NodeStageVolume` again, or choose
//! to call `NodeUnstageVolume`"). A new filesystem is not undone (the next
//! stage finds it and does not format again). If an undo step fails (say
//! the logout), the record stays: it is what lets the next
//! NodeUnstageVolume, which carries only the volume id and the staging
//! path, find the session and finish the job ([`super::volume`]). What a
//! call did not change (a session or record of an earlier stage it
//! repeats) it leaves alone.
//!
//! Unstage: refuse while the device is mounted anywhere but the staging
//! path → unmount staging → logout → delete the node record (it holds the
//! CHAP secret) → delete our record. A volume not staged at the given
//! path is `Ok` with nothing touched: "If the volume corresponding to the
//! `volume_id` is not staged to the `staging_target_path`, the Plugin MUST
//! reply `0 OK`".

use std::collections::HashMap;
use std::path::Path;

use super::fs::FsType;
use super::fs::{self, FsckVerdict, Probe};
use super::host::{Cmd, Host};
use super::iscsi::{self, ChapSecrets, Login};
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

/// A checked NodeStageVolume request: the record to keep and the CHAP
/// secrets to log in with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagePlan {
    pub staged: Staged,
    pub chap: Option<ChapSecrets>,
}

impl StageRequest {
    /// Checks every argument without touching anything: INVALID_ARGUMENT
    /// for a missing or malformed one.
    pub fn plan(&self) -> Result<StagePlan> {
        check_volume_id(&self.volume_id)?;
        let staging_path = check_path("staging target path", &self.staging_path)?;
        let ctx = parse_context(&self.context).map_err(NodeError::invalid)?;
        let chap = parse_chap(&self.secrets).map_err(NodeError::invalid)?;
        let access = match &self.access {
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
        Ok(StagePlan {
            staged: Staged {
                volume_id: self.volume_id.clone(),
                staging_path,
                lun: ctx.lun,
                access,
                target_mgmt: ctx.target_mgmt,
            },
            chap,
        })
    }
}

/// What one NodeStageVolume call changed on the host. A flag is set just
/// before the step runs: a step that failed may have half happened, and
/// undoing something that is not there succeeds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Changes {
    /// Wrote the staged-volume record.
    pub record: bool,
    /// Wrote the open-iscsi node record (it holds the CHAP secret).
    pub node_record: bool,
    /// Logged in: a session that was not there before.
    pub session: bool,
    /// Made the staging directory.
    pub staging_dir: bool,
    /// Mounted the filesystem at the staging path.
    pub mount: bool,
}

/// One step of undoing a failed stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undo {
    Unmount,
    RemoveStagingDir,
    Logout,
    DeleteNodeRecord,
    DeleteRecord,
}

impl Changes {
    /// The undo steps, in the reverse order of the stage; the record last,
    /// so that it outlives any step that fails.
    pub fn undo(&self) -> Vec<Undo> {
        [
            (self.mount, Undo::Unmount),
            (self.staging_dir, Undo::RemoveStagingDir),
            (self.session, Undo::Logout),
            (self.node_record, Undo::DeleteNodeRecord),
            (self.record, Undo::DeleteRecord),
        ]
        .into_iter()
        .filter_map(|(done, step)| done.then_some(step))
        .collect()
    }
}

impl<H: Host> NodeOps<H> {
    pub fn stage(&self, req: &StageRequest) -> Result<()> {
        self.stage_plan(&req.plan()?)
    }

    /// Stages a checked request; on failure undoes what this call changed.
    pub fn stage_plan(&self, plan: &StagePlan) -> Result<()> {
        let staged = &plan.staged;
        let mut changes = Changes::default();
        match self.stage_steps(plan, &mut changes) {
            Ok(()) => {
                self.refused_remounts().remove(&staged.volume_id);
                tracing::info!(volume = %staged.volume_id, path = %staged.staging_path.display(), "staged");
                Ok(())
            }
            Err(e) => Err(self.undo(staged, &changes, e)),
        }
    }

    fn stage_steps(&self, plan: &StagePlan, changes: &mut Changes) -> Result<()> {
        let staged = &plan.staged;
        match self.record(&staged.volume_id)? {
            Some(old) if old != *staged => {
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
                changes.record = true;
                self.save_record(staged)?;
            }
        }
        self.attach(staged, plan.chap.as_ref(), changes)?;
        let dev = self.wait_for_device(staged)?;
        if let Access::Mount { fs, flags } = &staged.access {
            self.mount_staging(staged, *fs, flags, dev, changes)?;
        }
        Ok(())
    }

    /// Undoes `changes` after `error` failed the stage; answers with
    /// `error`, naming the undo step that failed too if one did.
    fn undo(&self, staged: &Staged, changes: &Changes, error: NodeError) -> NodeError {
        for step in changes.undo() {
            match self.undo_step(staged, step) {
                Ok(()) => {}
                // An empty directory left behind harms nobody.
                Err(e) if step == Undo::RemoveStagingDir => {
                    tracing::warn!(volume = %staged.volume_id, error = %e, "failed stage: cannot remove the staging directory it made");
                }
                Err(e) => {
                    tracing::warn!(volume = %staged.volume_id, ?step, error = %e, "failed stage: cannot undo it");
                    return NodeError::new(
                        error.code,
                        format!(
                            "{}; undoing the stage failed too ({step:?}: {}), so the record of \
                             volume {} stays for NodeUnstageVolume to finish with",
                            error.message, e.message, staged.volume_id
                        ),
                    );
                }
            }
        }
        if *changes != Changes::default() {
            tracing::info!(volume = %staged.volume_id, ?changes, "failed stage undone");
        }
        error
    }

    fn undo_step(&self, staged: &Staged, step: Undo) -> Result<()> {
        match step {
            Undo::Unmount => self.unmount_all(&staged.staging_path),
            Undo::RemoveStagingDir => Ok(self.host.remove_path(&staged.staging_path)?),
            Undo::Logout => Ok(iscsi::logout(&self.host, &staged.lun)?),
            Undo::DeleteNodeRecord => Ok(iscsi::delete_node_record(&self.host, &staged.lun)?),
            Undo::DeleteRecord => self.delete_record(&staged.volume_id),
        }
    }

    /// Interface, discovery, node record and login; a logged-in session
    /// is left alone (its record may carry CHAP we would rewrite the same).
    fn attach(
        &self,
        staged: &Staged,
        chap: Option<&ChapSecrets>,
        changes: &mut Changes,
    ) -> Result<()> {
        if self.host.block_device(&staged.device()).is_some() {
            return Ok(());
        }
        iscsi::ensure_iface(&self.host, &self.initiator_name)?;
        iscsi::discover(&self.host, &staged.lun)?;
        changes.node_record = true;
        iscsi::ensure_node_record(&self.host, &staged.lun, chap)?;
        changes.session = true;
        if iscsi::login(&self.host, &staged.lun)? == Login::Existing {
            // An earlier stage's session (its device still coming up):
            // neither it nor its node record is this call's to undo.
            changes.session = false;
            changes.node_record = false;
        }
        Ok(())
    }

    fn mount_staging(
        &self,
        staged: &Staged,
        fs: FsType,
        flags: &[String],
        dev: (u32, u32),
        changes: &mut Changes,
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
        if !self.host.exists(path) {
            changes.staging_dir = true;
            self.host.create_dir_all(path)?;
        }
        let options: Vec<&str> = fs
            .default_mount_options()
            .iter()
            .copied()
            .chain(flags.iter().map(String::as_str))
            .collect();
        changes.mount = true;
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
            StageRequest {
                staging_path: "/var/lib/../../etc".into(),
                ..stage_req("ext4", &[])
            },
            no_portal,
        ] {
            assert_eq!(
                ops.stage(&req).unwrap_err().code,
                Code::InvalidArgument,
                "{req:?}"
            );
        }
        assert_eq!(host.state().host_calls, 0);
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
    fn a_crash_between_login_and_mount_converges_on_retry_or_unstage() {
        // A crash: the steps ran up to a failure and nothing undid them.
        let crash = |ops: &NodeOps<FakeHost>, host: &FakeHost| {
            host.state().device_never_appears = true;
            let plan = stage_req("ext4", &[]).plan().unwrap();
            assert!(ops.stage_steps(&plan, &mut Changes::default()).is_err());
            host.state().device_never_appears = false;
            assert_eq!(host.state().sessions.len(), 1);
        };
        let (ops, host) = setup();
        crash(&ops, &host);
        ops.stage(&stage_req("ext4", &[])).unwrap();
        assert_eq!(host.state().mounts.len(), 1);
        // The record written before the login lets unstage find the session.
        let (ops, host) = setup();
        crash(&ops, &host);
        ops.unstage("pv1", STAGING).unwrap();
        assert!(host.state().sessions.is_empty());
        assert!(ops.record("pv1").unwrap().is_none());
    }

    /// Nothing of the volume is left on the host, and the calls that find
    /// a volume by its record see none.
    fn assert_no_trace(ops: &NodeOps<FakeHost>, host: &FakeHost, case: &str) {
        assert!(ops.record("pv1").unwrap().is_none(), "{case}: record left");
        {
            let s = host.state();
            assert!(
                !s.files
                    .keys()
                    .any(|p| p.to_string_lossy().ends_with(".staged")),
                "{case}: record file left"
            );
            assert!(s.sessions.is_empty(), "{case}: session left");
            assert!(s.node_records.is_empty(), "{case}: node record left");
            assert!(s.mounts.is_empty(), "{case}: mount left");
        }
        assert!(!ops.refused_remounts().contains("pv1"), "{case}");
        assert_eq!(
            ops.stats("pv1", STAGING).unwrap_err().code,
            Code::NotFound,
            "{case}"
        );
        host.take_commands();
        ops.unstage("pv1", STAGING).unwrap();
        assert_eq!(host.take_commands(), Vec::<String>::new(), "{case}");
    }

    /// CSI spec §"NodeStageVolume": "If this RPC failed, or the CO does not
    /// know if it failed or not, it MAY choose to call `NodeStageVolume`
    /// again, or choose to call `NodeUnstageVolume`." A failed stage is
    /// undone, so either call finds the node as if it never happened.
    #[test]
    fn a_stage_failing_at_any_step_undoes_what_it_did_and_leaves_no_record() {
        type Breaker = fn(&mut NodeOps<FakeHost>, &FakeHost, &mut StageRequest);
        let cases: [(&str, Code, Breaker); 7] = [
            (
                "target does not offer the iqn",
                Code::NotFound,
                |_, _, req| {
                    req.context
                        .insert("iqn".into(), "iqn.2016-09.com.openebs.cstor:gone".into());
                },
            ),
            ("login fails", Code::Unavailable, |_, host, _| {
                host.fail_commands_with("--login");
            }),
            ("login refused", Code::PermissionDenied, |ops, _, _| {
                ops.initiator_name = "iqn.2016-09.com.openebs.cstor:node.intruder".into();
            }),
            ("no device", Code::DeadlineExceeded, |_, host, _| {
                host.state().device_never_appears = true;
            }),
            ("mkfs fails", Code::Internal, |_, host, _| {
                host.fail_commands_with("mkfs.ext4");
            }),
            ("fsck cannot repair", Code::Internal, |_, host, _| {
                let mut s = host.state();
                s.luns.get_mut(IQN).unwrap().fs = Some("ext4".into());
                s.fsck_code = 4;
            }),
            ("mount fails", Code::Internal, |_, host, _| {
                host.fail_commands_with("mount -t ext4");
            }),
        ];
        for (case, code, brk) in cases {
            let (mut ops, host) = setup();
            let mut req = stage_req("ext4", &[]);
            brk(&mut ops, &host, &mut req);
            let err = ops.stage(&req).unwrap_err();
            assert_eq!(err.code, code, "{case}: {err}");
            assert!(!err.message.contains("undoing"), "{case}: {err}");
            assert!(
                host.exists(Path::new(STAGING)),
                "{case}: the CO's directory"
            );
            assert_no_trace(&ops, &host, case);
        }
        // The staging directory, when the stage made it, goes too.
        let (ops, host) = setup();
        host.state().dirs.clear();
        host.fail_commands_with("mount -t ext4");
        assert!(ops.stage(&stage_req("ext4", &[])).is_err());
        assert!(!host.exists(Path::new(STAGING)));
        assert_no_trace(&ops, &host, "mount fails, directory made");
    }

    #[test]
    fn a_stage_whose_undo_fails_keeps_its_record_so_unstage_can_finish() {
        let (ops, host) = setup();
        host.state().device_never_appears = true;
        host.fail_commands_with("--logout");
        let err = ops.stage(&stage_req("ext4", &[])).unwrap_err();
        assert_eq!(err.code, Code::DeadlineExceeded, "{err}");
        assert!(
            err.message.contains("undoing the stage failed too"),
            "{err}"
        );
        assert!(ops.record("pv1").unwrap().is_some());
        assert_eq!(host.state().sessions.len(), 1);
        host.state().fail_matching.clear();
        ops.unstage("pv1", STAGING).unwrap();
        assert!(ops.record("pv1").unwrap().is_none());
        assert!(host.state().sessions.is_empty() && host.state().node_records.is_empty());
    }

    #[test]
    fn a_repeated_stage_that_fails_leaves_the_earlier_stage_alone() {
        let (ops, host) = setup();
        ops.stage(&stage_req("ext4", &[])).unwrap();
        // The device vanishes: the repeat logs in again, finds the earlier
        // session, and times out waiting; none of that was this call's.
        host.state().device_never_appears = true;
        assert_eq!(
            ops.stage(&stage_req("ext4", &[])).unwrap_err().code,
            Code::DeadlineExceeded
        );
        assert!(ops.record("pv1").unwrap().is_some());
        let s = host.state();
        assert_eq!(
            (s.sessions.len(), s.node_records.len(), s.mounts.len()),
            (1, 1, 1)
        );
    }

    #[test]
    fn undo_runs_in_reverse_stage_order_with_the_record_last() {
        assert_eq!(Changes::default().undo(), Vec::<Undo>::new());
        let all = Changes {
            record: true,
            node_record: true,
            session: true,
            staging_dir: true,
            mount: true,
        };
        assert_eq!(
            all.undo(),
            [
                Undo::Unmount,
                Undo::RemoveStagingDir,
                Undo::Logout,
                Undo::DeleteNodeRecord,
                Undo::DeleteRecord
            ]
        );
        let repeat = Changes {
            session: true,
            ..Changes::default()
        };
        assert_eq!(repeat.undo(), [Undo::Logout]);
    }
}
