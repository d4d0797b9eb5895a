//! Names and identifiers: how a CSI volume or snapshot name becomes the
//! name the replicas and the target know, and how snapshot ids are made.
//!
//! Invariants:
//! - A volume id is a DNS-1123 label (at most 63 of `[a-z0-9-]`, starting
//!   and ending alphanumeric): it is the replicas' volume name, the last
//!   part of the target's IQN and names Kubernetes objects.
//! - [`volume_id`] is a pure function of the CSI name, so CreateVolume is
//!   idempotent without any state: a name that already is a label is its
//!   own id; any other name maps to a sanitized prefix plus 64 bits of its
//!   SHA-256, so two different names get two different ids.
//! - The same mapping gives a CSI snapshot's name on the replicas; a
//!   snapshot id is `VOLUME_ID@SNAPSHOT`, the replicas' `clone_of` syntax.
//! - Snapshots the driver makes for itself (volume-to-volume clones) carry
//!   a name outside the label alphabet ([`internal_snapshot`]), so they
//!   never collide with, nor are listed as, CSI snapshots.
//!
//! CSI spec §CreateVolume (name: any Unicode but control characters).

use sha2::{Digest, Sha256};

use crate::limits::{MAX_CSI_NAME_BYTES, MAX_VOLUME_ID_BYTES};

/// Why a name or id is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} is longer than {max} bytes")]
    TooLong { what: &'static str, max: usize },
    #[error("{what} contains a control character")]
    Control { what: &'static str },
    #[error("{what} {text:?} is not a cstor id")]
    Malformed { what: &'static str, text: String },
}

/// Hex digits of the name hash appended to a sanitized name.
const HASH_HEX_DIGITS: usize = 16;

/// Checks a CO-chosen name (volume or snapshot) as CSI allows it.
pub fn check_csi_name(what: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { what });
    }
    if name.len() > MAX_CSI_NAME_BYTES {
        return Err(NameError::TooLong {
            what,
            max: MAX_CSI_NAME_BYTES,
        });
    }
    // The spec bans U+0000-U+0008, U+000B, U+000C, U+000E-U+001F and
    // U+007F-U+009F; the other controls (tab, newline, CR) it allows, but
    // our replicas refuse every control character in a name.
    if name.chars().any(char::is_control) {
        return Err(NameError::Control { what });
    }
    Ok(())
}

/// Whether `text` is a DNS-1123 label.
pub fn is_dns_label(text: &str) -> bool {
    let bytes = text.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= MAX_VOLUME_ID_BYTES
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes.iter().all(|b| alnum(b) || *b == b'-')
}

/// The label a CSI name maps to (see the module doc).
pub fn label_for(name: &str) -> String {
    if is_dns_label(name) {
        return name.to_owned();
    }
    let digest = Sha256::digest(name.as_bytes());
    let hash: String = digest
        .iter()
        .take(HASH_HEX_DIGITS / 2)
        .map(|b| format!("{b:02x}"))
        .collect();
    let keep = MAX_VOLUME_ID_BYTES - HASH_HEX_DIGITS - 1;
    let mut prefix: String = name
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .take(keep)
        .collect();
    while prefix.ends_with('-') {
        prefix.pop();
    }
    let prefix = prefix.trim_start_matches('-');
    if prefix.is_empty() {
        format!("v-{hash}")
    } else {
        format!("{prefix}-{hash}")
    }
}

/// The volume id of CSI volume `name`.
pub fn volume_id(name: &str) -> String {
    label_for(name)
}

/// Checks a volume id handed back by the CO.
pub fn check_volume_id(id: &str) -> Result<(), NameError> {
    if id.is_empty() {
        return Err(NameError::Empty { what: "volume id" });
    }
    if is_dns_label(id) {
        Ok(())
    } else {
        Err(NameError::Malformed {
            what: "volume id",
            text: id.to_owned(),
        })
    }
}

/// A snapshot as the replicas name it: its volume and its own name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotId {
    pub volume: String,
    pub snapshot: String,
}

impl SnapshotId {
    /// The id of CSI snapshot `name` of volume `volume`.
    pub fn new(volume: &str, name: &str) -> Self {
        SnapshotId {
            volume: volume.to_owned(),
            snapshot: label_for(name),
        }
    }

    /// Parses `VOLUME@SNAPSHOT`, both labels.
    pub fn parse(text: &str) -> Result<Self, NameError> {
        let malformed = || NameError::Malformed {
            what: "snapshot id",
            text: text.to_owned(),
        };
        let (volume, snapshot) = text.split_once('@').ok_or_else(malformed)?;
        if !is_dns_label(volume) || !is_dns_label(snapshot) {
            return Err(malformed());
        }
        Ok(SnapshotId {
            volume: volume.to_owned(),
            snapshot: snapshot.to_owned(),
        })
    }

    /// The replicas' `clone_of` form, also the CSI snapshot id.
    pub fn to_id(&self) -> String {
        format!("{}@{}", self.volume, self.snapshot)
    }
}

/// Prefix of the snapshots the driver takes for volume-to-volume clones:
/// `_` is outside the label alphabet.
const INTERNAL_SNAPSHOT_PREFIX: &str = "_clone.";

/// The snapshot of a source volume that clone `clone_id` is made from.
pub fn internal_snapshot(clone_id: &str) -> String {
    format!("{INTERNAL_SNAPSHOT_PREFIX}{clone_id}")
}

/// Whether a replica snapshot name is one of ours rather than a CSI
/// snapshot.
pub fn is_internal_snapshot(name: &str) -> bool {
    !is_dns_label(name)
}

/// The node id an initiator name of the node plugin stands for (exact for
/// node ids that are DNS names, as Kubernetes node names are).
pub fn node_of_initiator(initiator: &str) -> Option<String> {
    let prefix = crate::NODE_INITIATOR_PREFIX;
    let head = initiator.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    initiator.get(prefix.len()..).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_label_is_its_own_id() {
        assert_eq!(volume_id("pvc-0b5c9d"), "pvc-0b5c9d");
    }

    #[test]
    fn other_names_get_a_sanitized_prefix_and_a_hash() {
        let id = volume_id("CreateSnapshot-volume-1_x");
        assert!(id.starts_with("createsnapshot-volume-1-x-"), "{id}");
        assert!(is_dns_label(&id));
        assert_ne!(volume_id("A"), volume_id("a-"));
        assert!(volume_id("---").starts_with("v-"));
    }

    #[test]
    fn long_names_are_cut_to_a_label() {
        let id = volume_id(&"x".repeat(128));
        assert_eq!(id.len(), MAX_VOLUME_ID_BYTES);
        assert!(is_dns_label(&id));
        assert_ne!(id, volume_id(&"x".repeat(129)));
    }

    #[test]
    fn csi_names_refuse_control_characters_and_emptiness() {
        assert!(check_csi_name("name", "ok name ü").is_ok());
        assert!(check_csi_name("name", "").is_err());
        assert!(check_csi_name("name", "a\u{7}b").is_err());
        assert!(check_csi_name("name", &"a".repeat(MAX_CSI_NAME_BYTES + 1)).is_err());
    }

    #[test]
    fn snapshot_ids_round_trip_and_refuse_garbage() {
        let id = SnapshotId::new("vol-1", "Snap 1");
        assert_eq!(SnapshotId::parse(&id.to_id()), Ok(id));
        for bad in [
            "",
            "vol",
            "@s",
            "v@",
            "v@s@t",
            "V@s",
            "reallyfakesnapshotid",
        ] {
            assert!(SnapshotId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn internal_snapshots_are_not_labels() {
        assert!(is_internal_snapshot(&internal_snapshot("pvc-1")));
        assert!(!is_internal_snapshot(&label_for("_clone.pvc-1")));
    }

    #[test]
    fn node_ids_come_back_from_initiator_names() {
        let name = crate::initiator_name("worker-1");
        assert_eq!(node_of_initiator(&name).as_deref(), Some("worker-1"));
        assert_eq!(node_of_initiator("iqn.1993-08.org.debian:01:abc"), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn every_name_maps_to_a_label_deterministically(name in "\\PC{1,200}") {
            let id = volume_id(&name);
            prop_assert!(is_dns_label(&id), "{id}");
            prop_assert_eq!(&id, &volume_id(&name));
            prop_assert!(check_volume_id(&id).is_ok());
        }

        #[test]
        fn distinct_names_get_distinct_ids(a in "[a-zA-Z0-9_ -]{1,80}", b in "[a-zA-Z0-9_ -]{1,80}") {
            prop_assume!(a != b);
            prop_assert_ne!(volume_id(&a), volume_id(&b));
        }
    }
}
