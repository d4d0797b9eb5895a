//! Pure decisions of the controller: which volume capabilities cstor
//! volumes support, whether a publish is new, a repeat or a conflict, and
//! a volume's condition as its target reports it.
//!
//! - Capabilities (CSI spec §VolumeCapability): block or mount (`ext4`,
//!   `xfs` or unspecified); access modes SINGLE_NODE_WRITER and
//!   SINGLE_NODE_READER_ONLY — one node at a time, which is what publish
//!   fencing enforces at the target.
//! - Publish (CSI spec §ControllerPublishVolume): the target admits
//!   exactly the initiator of the node the volume is published to; a
//!   second node is refused (FAILED_PRECONDITION) while the first holds it.
//! - Condition (§ControllerGetVolume, VOLUME_CONDITION): abnormal when the
//!   target is unreachable, fenced, read-only, or has fewer healthy
//!   replicas than its consistency factor.

use cstor_mgmt::v1::{AllowedInitiators, TargetStatus};

use crate::params::FS_TYPES;
use crate::pb::csi::v1::volume_capability::access_mode::Mode;
use crate::pb::csi::v1::volume_capability::AccessType;
use crate::pb::csi::v1::{VolumeCapability, VolumeCondition};

/// Why a capability is not supported (the message of INVALID_ARGUMENT, or
/// of an unconfirmed ValidateVolumeCapabilities).
pub fn unsupported(cap: &VolumeCapability) -> Option<String> {
    match &cap.access_type {
        None => return Some("capability names neither block nor mount access".into()),
        Some(AccessType::Block(_)) => {}
        Some(AccessType::Mount(m)) => {
            if !m.fs_type.is_empty() && !FS_TYPES.contains(&m.fs_type.as_str()) {
                return Some(format!(
                    "filesystem {:?} is not supported (ext4, xfs)",
                    m.fs_type
                ));
            }
        }
    }
    let mode = cap
        .access_mode
        .as_ref()
        .map(|m| Mode::try_from(m.mode).unwrap_or(Mode::Unknown));
    match mode {
        Some(Mode::SingleNodeWriter | Mode::SingleNodeReaderOnly) => None,
        None => Some("capability has no access mode".into()),
        Some(other) => Some(format!(
            "access mode {} is not supported (SINGLE_NODE_WRITER, SINGLE_NODE_READER_ONLY)",
            other.as_str_name()
        )),
    }
}

/// The first unsupported capability of a list, or why the list is empty.
pub fn check_all(caps: &[VolumeCapability]) -> Result<(), String> {
    if caps.is_empty() {
        return Err("no volume capabilities given".into());
    }
    caps.iter().find_map(unsupported).map_or(Ok(()), Err)
}

/// Whether the node must expand a filesystem after the target grew.
pub fn needs_node_expansion(cap: Option<&VolumeCapability>) -> bool {
    !matches!(
        cap.and_then(|c| c.access_type.as_ref()),
        Some(AccessType::Block(_))
    )
}

/// What publishing to an initiator means given the target's allowlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publish {
    /// Already admitted alone: nothing to do.
    Already,
    /// Admit it (nobody else is).
    Admit,
    /// Other initiators hold the volume.
    Conflict(Vec<String>),
}

/// Decides a publish of `initiator` (names compare case-insensitively).
pub fn publish(current: &AllowedInitiators, initiator: &str) -> Publish {
    let others: Vec<String> = current
        .initiators
        .iter()
        .filter(|i| !i.eq_ignore_ascii_case(initiator))
        .cloned()
        .collect();
    if current.allow_any || !others.is_empty() {
        let mut holders = others;
        if current.allow_any {
            holders.push("any initiator".into());
        }
        return Publish::Conflict(holders);
    }
    if current.initiators.is_empty() {
        Publish::Admit
    } else {
        Publish::Already
    }
}

/// The allowlist after unpublishing `initiator` (`None`: every one).
pub fn unpublish(current: &AllowedInitiators, initiator: Option<&str>) -> Vec<String> {
    match initiator {
        None => Vec::new(),
        Some(gone) => current
            .initiators
            .iter()
            .filter(|i| !i.eq_ignore_ascii_case(gone))
            .cloned()
            .collect(),
    }
}

/// The condition of a volume whose target answered `status` (`Err`: why
/// it did not).
pub fn condition(status: Result<&TargetStatus, &str>) -> VolumeCondition {
    let abnormal = |message: String| VolumeCondition {
        abnormal: true,
        message,
    };
    let s = match status {
        Err(why) => return abnormal(format!("target unreachable: {why}")),
        Ok(s) => s,
    };
    let summary = format!(
        "{} of {} replicas healthy, consistency factor {}",
        s.healthy,
        s.replicas.len(),
        s.consistency_factor
    );
    if s.fenced {
        abnormal(format!("target fenced by a newer one; {summary}"))
    } else if s.read_only || s.healthy < s.consistency_factor {
        abnormal(format!("read-only below quorum; {summary}"))
    } else {
        VolumeCondition {
            abnormal: false,
            message: summary,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::csi::v1::volume_capability::{AccessMode, BlockVolume, MountVolume};

    fn cap(access: Option<AccessType>, mode: Mode) -> VolumeCapability {
        VolumeCapability {
            access_type: access,
            access_mode: Some(AccessMode { mode: mode as i32 }),
        }
    }

    fn mount(fs: &str) -> Option<AccessType> {
        Some(AccessType::Mount(MountVolume {
            fs_type: fs.into(),
            ..MountVolume::default()
        }))
    }

    #[test]
    fn single_node_block_and_ext4_xfs_mounts_are_supported() {
        let block = Some(AccessType::Block(BlockVolume {}));
        for ok in [
            cap(block.clone(), Mode::SingleNodeWriter),
            cap(mount(""), Mode::SingleNodeWriter),
            cap(mount("xfs"), Mode::SingleNodeReaderOnly),
            cap(mount("ext4"), Mode::SingleNodeWriter),
        ] {
            assert_eq!(unsupported(&ok), None, "{ok:?}");
        }
        for bad in [
            cap(block.clone(), Mode::MultiNodeMultiWriter),
            cap(mount(""), Mode::MultiNodeReaderOnly),
            cap(mount("btrfs"), Mode::SingleNodeWriter),
            cap(None, Mode::SingleNodeWriter),
            cap(block, Mode::Unknown),
            VolumeCapability {
                access_type: mount(""),
                access_mode: None,
            },
        ] {
            assert!(unsupported(&bad).is_some(), "{bad:?}");
        }
        assert!(check_all(&[]).is_err());
    }

    #[test]
    fn block_volumes_need_no_node_expansion() {
        let block = cap(
            Some(AccessType::Block(BlockVolume {})),
            Mode::SingleNodeWriter,
        );
        assert!(!needs_node_expansion(Some(&block)));
        assert!(needs_node_expansion(Some(&cap(
            mount(""),
            Mode::SingleNodeWriter
        ))));
        assert!(needs_node_expansion(None));
    }

    fn allowed(names: &[&str], allow_any: bool) -> AllowedInitiators {
        AllowedInitiators {
            initiators: names.iter().map(|n| (*n).to_owned()).collect(),
            allow_any,
        }
    }

    #[test]
    fn publish_admits_one_node_at_a_time() {
        assert_eq!(publish(&allowed(&[], false), "iqn.a"), Publish::Admit);
        assert_eq!(
            publish(&allowed(&["IQN.A"], false), "iqn.a"),
            Publish::Already
        );
        assert_eq!(
            publish(&allowed(&["iqn.b"], false), "iqn.a"),
            Publish::Conflict(vec!["iqn.b".into()])
        );
        assert!(matches!(
            publish(&allowed(&[], true), "iqn.a"),
            Publish::Conflict(_)
        ));
    }

    #[test]
    fn unpublish_removes_one_or_all() {
        let both = allowed(&["iqn.a", "iqn.b"], false);
        assert_eq!(unpublish(&both, Some("IQN.A")), ["iqn.b"]);
        assert!(unpublish(&both, None).is_empty());
        assert_eq!(unpublish(&both, Some("iqn.c")).len(), 2);
    }

    #[test]
    fn condition_is_abnormal_below_quorum_or_fenced_or_unreachable() {
        let status = |healthy, read_only, fenced| TargetStatus {
            healthy,
            consistency_factor: 2,
            read_only,
            fenced,
            ..TargetStatus::default()
        };
        assert!(!condition(Ok(&status(3, false, false))).abnormal);
        assert!(condition(Ok(&status(1, false, false))).abnormal);
        assert!(condition(Ok(&status(3, true, false))).abnormal);
        assert!(condition(Ok(&status(3, false, true))).abnormal);
        assert!(condition(Err("refused")).abnormal);
    }
}
