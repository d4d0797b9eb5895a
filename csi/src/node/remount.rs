//! Background remount: a staged filesystem that turned read-only by itself
//! goes back to read-write once its target has quorum again.
//!
//! Why a filesystem turns read-only: below quorum the target fails writes
//! with DATA PROTECT (docs/architecture.md, invariant 3); ext4, mounted by us with
//! `errors=remount-ro`, then marks its superblock read-only. The target
//! returns to read-write by itself; the filesystem does not.
//!
//! What we do, every `remount_interval`, per staged mount volume whose
//! superblock is read-only although nobody asked for `ro`:
//! 1. ask its target (`targetMgmt` in the volume context) for its status;
//!    without a `targetMgmt` we never remount (we cannot know the writes
//!    would succeed, and a remount into a still read-only LUN only turns
//!    the next write into another error);
//! 2. if the target is writable and has quorum ([`has_quorum`]), run
//!    `mount -o remount,rw STAGING`. Bind mounts published to pods share
//!    the superblock and become writable with it (their own `ro` flag, if
//!    published read-only, stays).
//!
//! What the kernel allows: a superblock made read-only without an error
//! (e.g. `mount -o remount,ro`) comes back. An ext4 that hit a write error
//! does not: with `errors=remount-ro` every error aborts the journal and
//! marks the filesystem aborted/shut down, and the kernel refuses to make
//! it writable again (older kernels answer the remount with EROFS; Linux
//! 6.1 stable and later never set the superblock read-only, so the remount
//! "succeeds" and changes nothing). Rightly: the on-disk state needs
//! `e2fsck`. We check the result (`NodeOps::fs_failed` after the remount),
//! and when it did not help the volume stays as it is, NodeGetVolumeStats
//! reports it abnormal saying that it needs an unstage and a stage, and the
//! next NodeStageVolume (after the pod is moved or restarted) runs
//! `e2fsck -p` before mounting. xfs shuts down on IO errors rather than
//! going read-only; its `statfs` fails, which stats reports as abnormal.
//!
//! What we never do: fsck a mounted filesystem, or unmount a filesystem
//! pods have bind-mounted behind kubelet's back.

use std::path::PathBuf;
use std::time::Duration;

use cstor_mgmt::v1::TargetStatus;
use cstor_tls::{Role, Security};

use super::host::{Cmd, Host};
use super::ops::{NodeOps, Result};
use super::volume::Access;

/// Default interval between two checks.
pub const DEFAULT_REMOUNT_INTERVAL: Duration = Duration::from_secs(10);
/// Bound on one target status query.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// A staged volume whose filesystem is read-only against our wish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub volume_id: String,
    pub staging_path: PathBuf,
    /// The target's management API; `None`: cannot tell, never remounted.
    pub target_mgmt: Option<String>,
}

/// Whether writes to the volume would succeed now: the target is not
/// read-only or fenced and at least the consistency factor of replicas is
/// healthy.
pub fn has_quorum(status: &TargetStatus) -> bool {
    !status.read_only
        && !status.fenced
        && status.consistency_factor > 0
        && status.healthy >= status.consistency_factor
}

impl<H: Host> NodeOps<H> {
    /// Staged mount volumes whose filesystem is read-only though not
    /// staged with `ro`, leaving out those the kernel already refused to
    /// remount (it keeps refusing until the next stage).
    pub fn read_only_volumes(&self) -> Result<Vec<Candidate>> {
        let mounts = self.mounts()?;
        let refused = self.refused_remounts().clone();
        Ok(self
            .records()?
            .into_iter()
            .filter(|r| !refused.contains(&r.volume_id))
            .filter(|r| match &r.access {
                Access::Mount { flags, .. } => {
                    !flags.iter().any(|f| f == "ro")
                        && super::mountinfo::find(&mounts, &r.staging_path)
                            .is_some_and(|m| self.fs_failed(m))
                }
                Access::Block => false,
            })
            .map(|r| Candidate {
                volume_id: r.volume_id,
                staging_path: r.staging_path,
                target_mgmt: r.target_mgmt,
            })
            .collect())
    }

    /// `mount -o remount,rw` of the staging mount; `Ok(true)` when the
    /// filesystem is writable afterwards, `Ok(false)` when the kernel
    /// refused (see the module doc).
    pub fn remount_rw(&self, c: &Candidate) -> Result<bool> {
        let out = self.host.run(
            &Cmd::new("mount")
                .args(["-o", "remount,rw"])
                .arg(c.staging_path.display().to_string()),
        )?;
        let writable = self
            .mount_at(&c.staging_path)?
            .is_some_and(|m| !self.fs_failed(&m));
        if writable {
            self.refused_remounts().remove(&c.volume_id);
            tracing::info!(volume = %c.volume_id, "filesystem remounted read-write: the target has quorum again");
        } else {
            self.refused_remounts().insert(c.volume_id.clone());
            tracing::warn!(
                volume = %c.volume_id,
                stderr = out.stderr.trim(),
                "the kernel refused to remount the filesystem read-write; it needs a check: unstage and stage it again"
            );
        }
        Ok(writable)
    }
}

/// Asks the target at `addr` (`host:port` or a URL) for its status, over
/// `security` (the target must present a target certificate).
pub async fn target_status(
    security: &Security,
    addr: &str,
) -> std::result::Result<TargetStatus, String> {
    use cstor_mgmt::v1::target_manager_client::TargetManagerClient;
    use cstor_mgmt::v1::GetTargetStatusRequest;
    let dial = cstor_tls::grpc::channel(addr, security, &[Role::Target]);
    let channel = match tokio::time::timeout(STATUS_TIMEOUT, dial).await {
        Ok(Ok(channel)) => channel,
        Ok(Err(e)) => return Err(format!("cannot reach the target at {addr}: {e}")),
        Err(_) => {
            return Err(format!(
                "cannot reach the target at {addr} within {STATUS_TIMEOUT:?}"
            ))
        }
    };
    let mut client = TargetManagerClient::new(channel);
    let call = client.get_status(GetTargetStatusRequest {});
    match tokio::time::timeout(STATUS_TIMEOUT, call).await {
        Ok(Ok(status)) => Ok(status.into_inner()),
        Ok(Err(e)) => Err(format!("target {addr}: {}", e.message())),
        Err(_) => Err(format!(
            "target {addr} did not answer within {STATUS_TIMEOUT:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::*;
    use super::*;

    fn status(healthy: u32, cf: u32, read_only: bool) -> TargetStatus {
        TargetStatus {
            healthy,
            consistency_factor: cf,
            read_only,
            ..TargetStatus::default()
        }
    }

    #[test]
    fn quorum_needs_cf_healthy_replicas_and_a_writable_unfenced_target() {
        assert!(has_quorum(&status(2, 2, false)));
        assert!(has_quorum(&status(3, 2, false)));
        assert!(!has_quorum(&status(1, 2, false)));
        assert!(!has_quorum(&status(2, 2, true)));
        assert!(!has_quorum(&status(0, 0, false)));
        let fenced = TargetStatus {
            fenced: true,
            ..status(2, 2, false)
        };
        assert!(!has_quorum(&fenced));
    }

    fn go_read_only(host: &FakeHost) {
        for m in host.state().mounts.iter_mut() {
            m.super_options[0] = "ro".into();
        }
    }

    #[test]
    fn a_filesystem_read_only_by_itself_is_a_candidate_and_remounts_rw() {
        let (ops, host) = setup();
        let mut req = stage_req("ext4", &[]);
        req.context
            .insert("targetMgmt".into(), "10.0.2.2:7700".into());
        ops.stage(&req).unwrap();
        ops.publish(&publish_req(false)).unwrap();
        assert_eq!(ops.read_only_volumes().unwrap(), vec![]);
        go_read_only(&host);
        let c = ops.read_only_volumes().unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].target_mgmt.as_deref(), Some("10.0.2.2:7700"));
        assert!(ops.remount_rw(&c[0]).unwrap());
        // The published bind shares the superblock: writable again too.
        assert!(host.state().mounts.iter().all(|m| !m.is_read_only()));
        assert_eq!(ops.read_only_volumes().unwrap(), vec![]);
    }

    #[test]
    fn a_refused_remount_leaves_the_volume_read_only_and_abnormal() {
        let (ops, host) = setup();
        ops.stage(&stage_req("ext4", &[])).unwrap();
        go_read_only(&host);
        host.state().refuse_remount_rw = true;
        let c = ops.read_only_volumes().unwrap();
        assert!(!ops.remount_rw(&c[0]).unwrap());
        let abnormal = ops.stats("pv1", STAGING).unwrap().abnormal.unwrap();
        assert!(abnormal.contains("refused"), "{abnormal}");
        // Not tried again until the volume is staged again.
        assert_eq!(ops.read_only_volumes().unwrap(), vec![]);
        // A fresh stage (which runs fsck) forgets the refusal.
        ops.unstage("pv1", STAGING).unwrap();
        host.state().refuse_remount_rw = false;
        ops.stage(&stage_req("ext4", &[])).unwrap();
        assert!(!ops.refused_remounts().contains("pv1"));
    }

    #[test]
    fn an_ext4_error_count_marks_the_filesystem_failed_even_when_mountinfo_says_rw() {
        // Linux 6.1 stable and later: no SB_RDONLY, only the error count.
        let (ops, host) = setup();
        ops.stage(&stage_req("ext4", &[])).unwrap();
        assert_eq!(ops.stats("pv1", STAGING).unwrap().abnormal, None);
        let count = PathBuf::from("/sys/fs/ext4/sdb/errors_count");
        host.state().files.insert(count.clone(), "3\n".into());
        assert!(ops.stats("pv1", STAGING).unwrap().abnormal.is_some());
        let c = ops.read_only_volumes().unwrap();
        assert_eq!(c.len(), 1);
        // The remount "succeeds" (rw to rw) but the filesystem stays failed.
        assert!(!ops.remount_rw(&c[0]).unwrap());
        // e2fsck at the next stage clears the count.
        ops.unstage("pv1", STAGING).unwrap();
        host.state().files.remove(&count);
        ops.stage(&stage_req("ext4", &[])).unwrap();
        assert_eq!(ops.stats("pv1", STAGING).unwrap().abnormal, None);
    }

    #[test]
    fn volumes_staged_read_only_are_never_candidates() {
        let (ops, _host) = setup();
        ops.stage(&stage_req("ext4", &["ro"])).unwrap();
        assert_eq!(ops.read_only_volumes().unwrap(), vec![]);
    }
}
