//! The node operations, independent of gRPC: each takes a validated
//! request, looks at the host (mountinfo, device nodes, the staged-volume
//! record) and does only what is missing, so every call is idempotent
//! (CSI spec §"NodeStageVolume" … "NodeGetVolumeStats": "This operation
//! MUST be idempotent").
//!
//! Decisions, per the CSI spec's error tables:
//! - argument errors → `InvalidArgument`, checked before any host access
//!   (the gRPC service checks them before it even marks the volume busy);
//! - a volume this node has no record of → `NotFound` for publish; for
//!   expand and stats also a path the volume does not show at, by the
//!   node's records and the mount table ([`super::locate`]), however odd
//!   the path;
//! - unstage of a volume not staged at the given path, and unpublish of a
//!   volume not published at the given path (unknown here, or another
//!   volume's mount there), are `Ok` with nothing touched: "This operation
//!   MUST be idempotent" (CSI spec §"NodeUnstageVolume": "If the volume
//!   corresponding to the `volume_id` is not staged to the
//!   `staging_target_path`, the Plugin MUST reply `0 OK`"; for
//!   §"NodeUnpublishVolume" there is nothing to undo);
//! - a failed stage undoes what it did and leaves no record ([`super::stage`]);
//! - staged/published already with the same parameters → `Ok`; with
//!   different ones (fs type, flags, read-only, access type, LUN) →
//!   `AlreadyExists`;
//! - unstage while the device is still mounted elsewhere (published) →
//!   `FailedPrecondition`: logging out would pull the disk from a pod.
//!
//! Blocking: these functions run commands and sleep while polling for the
//! device; the gRPC service calls them on `spawn_blocking`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::fs;
use super::host::{Cmd, Host, HostError, Output};
use super::iscsi::IscsiError;
use super::mountinfo::{self, MountEntry};
use super::volume::{valid_volume_id, Staged};

/// Poll interval while waiting for a device to appear or grow.
pub const DEVICE_POLL: Duration = Duration::from_millis(100);
/// Default bound on waiting for the LUN's device after login / rescan.
pub const DEFAULT_DEVICE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most mounts stacked on one path we unmount before giving up.
pub const MAX_STACKED_MOUNTS: usize = 8;

/// gRPC status codes the node service answers with (CSI spec error tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    PermissionDenied,
    Aborted,
    Unavailable,
    DeadlineExceeded,
    Internal,
}

/// A failed node operation: a code for the CO and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct NodeError {
    pub code: Code,
    pub message: String,
}

impl NodeError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        NodeError {
            code,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }
    pub fn exists(message: impl Into<String>) -> Self {
        Self::new(Code::AlreadyExists, message)
    }
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(Code::FailedPrecondition, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }
}

impl From<HostError> for NodeError {
    fn from(e: HostError) -> Self {
        let code = match e {
            HostError::Timeout { .. } => Code::DeadlineExceeded,
            _ => Code::Internal,
        };
        NodeError::new(code, e.to_string())
    }
}

impl From<IscsiError> for NodeError {
    fn from(e: IscsiError) -> Self {
        let code = match &e {
            IscsiError::Host(HostError::Timeout { .. }) => Code::DeadlineExceeded,
            IscsiError::Host(_) => Code::Internal,
            IscsiError::Failed { .. } => Code::Unavailable,
            IscsiError::AuthFailed { .. } => Code::PermissionDenied,
            IscsiError::NotOffered { .. } => Code::NotFound,
        };
        NodeError::new(code, e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, NodeError>;

/// The node operations over a [`Host`].
pub struct NodeOps<H: Host> {
    pub host: H,
    /// Initiator name the node logs in with (`crate::initiator_name`).
    pub initiator_name: String,
    /// Directory of staged-volume records.
    pub state_dir: PathBuf,
    /// Bound on waiting for a LUN's device after login or rescan.
    pub device_timeout: Duration,
    /// Volumes whose read-only filesystem the kernel refused to remount
    /// read-write (see `remount`); cleared when the volume is staged or
    /// unstaged. In memory only: after a restart the check simply tries
    /// again.
    pub(super) refused_remounts: Mutex<HashSet<String>>,
}

impl<H: Host> NodeOps<H> {
    pub fn new(
        host: H,
        initiator_name: String,
        state_dir: PathBuf,
        device_timeout: Duration,
    ) -> Self {
        NodeOps {
            host,
            initiator_name,
            state_dir,
            device_timeout,
            refused_remounts: Mutex::new(HashSet::new()),
        }
    }

    pub(super) fn refused_remounts(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.refused_remounts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    // ---------------------------------------------------------------- helpers

    pub(super) fn mounts(&self) -> Result<Vec<MountEntry>> {
        let text = self.host.mountinfo()?;
        mountinfo::parse(&text).map_err(|e| NodeError::internal(e.to_string()))
    }

    pub(super) fn mount_at(&self, path: &Path) -> Result<Option<MountEntry>> {
        Ok(mountinfo::find(&self.mounts()?, path).cloned())
    }

    pub(super) fn record(&self, volume_id: &str) -> Result<Option<Staged>> {
        let path = Staged::record_path(&self.state_dir, volume_id);
        match self.host.read_file(&path)? {
            None => Ok(None),
            Some(text) => Staged::decode(&text).map(Some).map_err(|e| {
                NodeError::internal(format!("staged-volume record {}: {e}", path.display()))
            }),
        }
    }

    pub(super) fn save_record(&self, staged: &Staged) -> Result<()> {
        let path = Staged::record_path(&self.state_dir, &staged.volume_id);
        Ok(self.host.write_file(&path, &staged.encode())?)
    }

    pub(super) fn delete_record(&self, volume_id: &str) -> Result<()> {
        Ok(self
            .host
            .remove_path(&Staged::record_path(&self.state_dir, volume_id))?)
    }

    /// Every staged-volume record on this node (unreadable ones skipped
    /// with a warning: one bad file must not hide the others).
    pub fn records(&self) -> Result<Vec<Staged>> {
        let mut out = Vec::new();
        for name in self.host.list_dir(&self.state_dir)? {
            let Some(id) = name.strip_suffix(".staged") else {
                continue;
            };
            match self.record(id) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => {}
                Err(e) => tracing::warn!(volume = id, error = %e, "skipping staged record"),
            }
        }
        Ok(out)
    }

    /// Runs a command that must succeed.
    pub(super) fn must(&self, cmd: Cmd) -> Result<Output> {
        let out = self.host.run(&cmd)?;
        if out.success() {
            Ok(out)
        } else {
            Err(NodeError::internal(format!(
                "{} failed (exit {:?}): {}",
                cmd.display(),
                out.code,
                out.stderr.trim()
            )))
        }
    }

    /// Unmounts `path` until nothing is mounted there.
    pub(super) fn unmount_all(&self, path: &Path) -> Result<()> {
        for _ in 0..MAX_STACKED_MOUNTS {
            if self.mount_at(path)?.is_none() {
                return Ok(());
            }
            self.must(Cmd::new("umount").arg(path.display().to_string()))?;
        }
        Err(NodeError::internal(format!(
            "{} still mounted after {MAX_STACKED_MOUNTS} unmounts",
            path.display()
        )))
    }

    /// Whether the filesystem mounted by `m` stopped taking writes after
    /// an error. Kernels disagree on how that shows: older ones set the
    /// superblock read-only (`ro` in mountinfo's super options), the newest
    /// add ext4's `emergency_ro` option, and those in between (Linux 6.1
    /// stable since the 2024 "don't set SB_RDONLY after filesystem errors"
    /// backport) show nothing at all in mountinfo. What every ext4 keeps is
    /// its error count in sysfs; we mount ext4 with `errors=remount-ro`, so
    /// an error recorded while mounted means it no longer writes. (`e2fsck`
    /// at the next stage clears the count.) An xfs that shut down fails
    /// `statfs` with EIO, which stats reports on its own.
    pub(super) fn fs_failed(&self, m: &MountEntry) -> bool {
        if m.fs_ro() {
            return true;
        }
        if m.fs_type != "ext4" {
            return false;
        }
        let Some(dev) = Path::new(&m.source).file_name() else {
            return false;
        };
        let count = Path::new("/sys/fs/ext4").join(dev).join("errors_count");
        matches!(
            self.host.read_file(&count),
            Ok(Some(n)) if n.trim().parse::<u64>().is_ok_and(|n| n > 0)
        )
    }

    /// Waits for the record's LUN to appear as a block device.
    pub(super) fn wait_for_device(&self, staged: &Staged) -> Result<(u32, u32)> {
        let dev = staged.device();
        let mut waited = Duration::ZERO;
        loop {
            if let Some(n) = self.host.block_device(&dev) {
                return Ok(n);
            }
            if waited >= self.device_timeout {
                return Err(NodeError::new(
                    Code::DeadlineExceeded,
                    format!(
                        "{} did not appear within {} s of login",
                        dev.display(),
                        self.device_timeout.as_secs()
                    ),
                ));
            }
            self.host.sleep(DEVICE_POLL);
            waited = waited.saturating_add(DEVICE_POLL);
        }
    }

    /// Size of the record's device in bytes.
    pub(super) fn device_size(&self, staged: &Staged) -> Result<u64> {
        let out = self.must(fs::device_size(&staged.device()))?;
        out.stdout
            .trim()
            .parse()
            .map_err(|_| NodeError::internal(format!("blockdev printed {:?}", out.stdout.trim())))
    }

    /// The mounts through which a block device bind-mounted onto a file
    /// shows: devtmpfs with the device node's name as root.
    pub(super) fn block_binds(&self, staged: &Staged) -> Result<Vec<MountEntry>> {
        let Some(real) = self.host.resolve(&staged.device()) else {
            return Ok(Vec::new());
        };
        let Ok(rel) = real.strip_prefix("/dev") else {
            return Ok(Vec::new());
        };
        let root = Path::new("/").join(rel);
        Ok(self
            .mounts()?
            .into_iter()
            .filter(|m| Path::new(&m.root) == root)
            .collect())
    }
}

/// Checks shared by every request: a usable volume id and an absolute,
/// one-line path.
pub fn check_volume_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(NodeError::invalid("volume id missing"));
    }
    if !valid_volume_id(id) {
        return Err(NodeError::invalid(format!(
            "volume id {id:?} is not a valid cstor volume id"
        )));
    }
    Ok(())
}

/// A path argument the node mounts on or unmounts: required, absolute
/// ("It MUST be an absolute path in the root filesystem of the process
/// serving this request"), one line, and without `..` (mountinfo shows
/// resolved paths, so one with `..` would never match what we mounted).
pub fn check_path(what: &str, path: &str) -> Result<PathBuf> {
    if path.is_empty() {
        return Err(NodeError::invalid(format!("{what} missing")));
    }
    super::locate::exact_path(path).ok_or_else(|| {
        NodeError::invalid(format!(
            "{what} {path:?} is not an absolute path without `..`"
        ))
    })
}

/// The `volume_path` of NodeGetVolumeStats and NodeExpandVolume: only
/// required ("This is a REQUIRED field"). Whether the volume is there is
/// the node's records' question, answered NOT_FOUND when it is not.
pub fn check_volume_path(path: &str) -> Result<()> {
    if path.is_empty() {
        return Err(NodeError::invalid("volume path missing"));
    }
    Ok(())
}
