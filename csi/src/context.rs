//! Keys of the string maps the controller hands to the node plugin
//! (CSI `volume_context` and `publish_context`): the one place both sides
//! take them from.

/// `publish_context`: the iSCSI portal, `host:port`.
pub const PORTAL: &str = "portal";
/// `publish_context`: the target's IQN.
pub const IQN: &str = "iqn";
/// `publish_context`: the LUN of the volume at the target (always 0).
pub const LUN: &str = "lun";
/// `volume_context`: the filesystem the StorageClass asked for (`ext4` or
/// `xfs`), used when the mount capability names none.
pub const FS_TYPE: &str = "fsType";
/// `publish_context`: the target's management API, `host:port` (the node
/// asks it whether a read-only filesystem may be remounted).
pub const TARGET_MGMT: &str = "targetMgmt";
