//! Node side of the CSI driver (CSI spec v1 §"Node Service RPC"): iSCSI
//! login, filesystem and mount operations on the host kubelet runs on.
//!
//! # Wiring
//!
//! ```text
//! use cstor_csi::node::{NodeConfig, NodeService};
//! // NodeConfig { node_id, state_dir, device_timeout, remount_interval, security };
//! // NodeConfig::new(id, security) fills in the defaults; `security` (a
//! // reader identity, or plaintext) is how the remount check reaches targets.
//! let node = NodeService::new(NodeConfig::new("worker-1", security));
//! tokio::spawn(node.clone().run_remount_check(shutdown.clone()));
//! Server::builder().add_service(NodeServer::new(node));
//! ```
//!
//! # Volume context (from the controller) and secrets
//!
//! | key | meaning |
//! | --- | --- |
//! | `portal` | the target's iSCSI portal, `IP:PORT` (required) |
//! | `iqn` | the target's IQN (required) |
//! | `lun` | LUN number, default `0` |
//! | `fsType` | filesystem when the capability names none: `ext4` (default) or `xfs` |
//! | `targetMgmt` | the target's management API, `host:port` (optional; enables the remount check) |
//!
//! NodeStageVolume secrets (`csi.storage.k8s.io/node-stage-secret-*`), with
//! open-iscsi's own key names, as Kubernetes' in-tree iSCSI plugin uses:
//! `node.session.auth.username` + `node.session.auth.password` (CHAP), and
//! for mutual CHAP also `node.session.auth.username_in` +
//! `node.session.auth.password_in`. No secrets: no authentication.
//!
//! # What it does
//!
//! - The node logs in through its own open-iscsi interface `cstor-csi`
//!   whose initiator name is [`crate::initiator_name`]`(node_id)`, the
//!   name the controller admits at the target (fencing).
//! - Stage: discovery (SendTargets, to check the target offers the IQN to
//!   us), node record with the context's portal, CHAP, login, wait for
//!   `/dev/disk/by-path/ip-PORTAL-iscsi-IQN-lun-N` (bounded), then for
//!   mount access: mkfs only when `blkid` finds no signature, `e2fsck -p`
//!   (ext4), mount with the requested flags ([`fs`] documents the options
//!   we add). Publish: bind mount, read-only when asked. Unpublish: unmount
//!   and remove the target path. Unstage: unmount, logout, delete the node
//!   record. Expand: rescan, wait for the new size, `resize2fs` /
//!   `xfs_growfs`. Stats: bytes, inodes, condition.
//! - A staged volume is recorded in `state_dir` ([`volume`]) so unstage,
//!   expand and stats (which carry only a volume id and a path) find its
//!   session, and [`locate`] finds where it shows from that record and the
//!   mount table; [`ops`] gives the idempotency and error-code rules. A
//!   stage that fails undoes what it did and leaves no record ([`stage`]).
//! - [`remount`]: a filesystem that turned read-only on its own is
//!   remounted read-write once its target reports quorum again, if the
//!   kernel allows it. After a failed ext4 journal commit it does not (and
//!   must not: the filesystem needs a check); the volume then reports
//!   VOLUME_CONDITION abnormal, saying so, until an unstage and a stage
//!   (which runs `e2fsck -p`) bring it back. The VM test shows the kernel
//!   taking that path.
//!
//! Host requirements: `iscsid` running; `iscsiadm`, `blkid`, `blockdev`,
//! `mount`/`umount` (util-linux), `mkfs.ext4`/`e2fsck`/`resize2fs`,
//! `mkfs.xfs`/`xfs_growfs`, `stat`; udev's `/dev/disk/by-path` links (the
//! VM harness has no udev and runs its `e2e-disk-links` in a loop instead).
//!
//! Everything touching the machine goes through [`host::Host`]; unit tests
//! drive the operations against a recorded model of the host (`fake`), so
//! they run without root. The VM test (`tests/csi_node_vm.rs`) runs them for
//! real against the kernel's initiator.

pub mod expand;
pub mod fs;
pub mod host;
pub mod iscsi;
pub mod locate;
pub mod mountinfo;
pub mod ops;
pub mod publish;
pub mod remount;
pub mod service;
pub mod stage;
pub mod volume;

#[cfg(test)]
mod fake;

pub use expand::VolumeStats;
pub use host::{Host, RealHost};
pub use ops::{Code, NodeError, NodeOps};
pub use publish::PublishRequest;
pub use service::{NodeConfig, NodeService};
pub use stage::{AccessRequest, StageRequest};
