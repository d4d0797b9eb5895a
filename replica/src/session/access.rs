//! Who may do what on the data port (docs/security.md, "What each port
//! accepts"), decided from the peer's certificate identity — at its
//! `Hello` ([`open`]: which sessions) and at each request of a peer
//! replica ([`request`]: which requests). Refusals are `NotAuthenticated`
//! with a detail naming the identity and the volume, counted in
//! `cstor_replica_connections_refused_total{reason="unauthorized"}`.
//!
//! - A **target** certificate opens sessions (any epoch: claims, IO,
//!   snapshots, membership, rebuild orders, probes) on the volumes it
//!   names, and on no other.
//! - A **replica** certificate (a peer pulling a rebuild) opens probe
//!   sessions (epoch 0) only — a claim is refused at the `Hello` — and on
//!   them makes only heartbeats and the requests of a rebuild sink: the
//!   `RebuildStart` of a stream this replica serves as the source, the
//!   `SnapshotList` a sink reads before it pulls the snapshots it lacks,
//!   and the `Digest`s a sink of a full rebuild compares its own copy
//!   with (`rebuild` module doc, "By digest").
//!   Those three read volume data or its shape, so they are allowed only for
//!   a volume in a replica set: its stored membership record exists and
//!   has at least [`MIN_REPLICATED_MEMBERS`] members (the target writes
//!   it, on every healthy member, when it opens the volume and before any
//!   rebuild it orders). Everything else (writes, reads, membership,
//!   snapshots taken or destroyed, status, rebuild throttle) is refused.
//! - **Admin** and **reader** certificates are management identities: no
//!   data session at all.
//! - A daemon in **plaintext** (`--insecure-plaintext`) takes every peer
//!   at its word: the whole protocol, as before authentication existed.

use cstor_proto::{Message, Opcode};
use cstor_tls::{Identity, Peer};

use crate::registry::VolumeEntry;

/// The fewest members a volume's membership record names for a peer
/// replica to pull its data: a volume with one replica (or none recorded)
/// is never the source of a rebuild.
pub const MIN_REPLICATED_MEMBERS: usize = 2;

/// What the peer of a session may do, decided at its `Hello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// The volume's target, or any peer of a plaintext daemon: the whole
    /// protocol, as the session's epoch allows.
    Target,
    /// A peer replica on a probe session: see the module doc.
    Replica,
}

/// Whether `peer` may open a session on `volume` at `epoch`; `Err` is
/// the detail of the refusal.
pub(crate) fn open(peer: &Peer, volume: &str, epoch: u64) -> Result<Access, String> {
    let identity = match peer {
        Peer::Plaintext => return Ok(Access::Target),
        Peer::Authenticated(identity) => identity,
    };
    match identity {
        Identity::Target { .. } if identity.may_serve(volume) => Ok(Access::Target),
        Identity::Target { .. } => Err(format!(
            "the certificate of {identity} does not name volume {volume}: \
             no session on it"
        )),
        Identity::Replica { .. } if epoch == 0 => Ok(Access::Replica),
        Identity::Replica { .. } => Err(format!(
            "{identity} may open only probe sessions (epoch 0) of volume {volume}, \
             not claim it at epoch {epoch}"
        )),
        Identity::Admin | Identity::Reader => Err(format!(
            "{identity} is a management identity: no data session (volume {volume})"
        )),
    }
}

/// Whether a session of `access` (peer `peer`, volume `entry`) may make
/// the request `message`; `Err` is the detail of the refusal. Replies the
/// peer sends are let through (the session ignores them).
pub(crate) fn request(
    access: Access,
    peer: &Peer,
    entry: &VolumeEntry,
    message: &Message,
) -> Result<(), String> {
    if access == Access::Target {
        return Ok(());
    }
    match message {
        Message::Heartbeat => Ok(()),
        reply if reply.is_reply() => Ok(()),
        Message::RebuildStart(_) | Message::SnapshotList(_) | Message::Digest(_) => {
            replicated(peer, entry)
        }
        other => Err(format!(
            "{peer} may only pull a rebuild stream on a probe of volume {}, not {}",
            entry.name,
            opcode_name(other)
        )),
    }
}

/// Whether `entry` is a volume in a replica set (module doc).
fn replicated(peer: &Peer, entry: &VolumeEntry) -> Result<(), String> {
    let record = entry.membership().map_err(|e| {
        format!(
            "{peer} may not pull volume {}: its membership record cannot be read: {e}",
            entry.name
        )
    })?;
    if record.generation > 0 && record.members.len() >= MIN_REPLICATED_MEMBERS {
        Ok(())
    } else {
        Err(format!(
            "{peer} may not pull volume {}: it is not in a replica set \
             (its membership record names {} members, a rebuild source needs {})",
            entry.name,
            record.members.len(),
            MIN_REPLICATED_MEMBERS
        ))
    }
}

fn opcode_name(message: &Message) -> String {
    let wire = message.wire_opcode();
    match Opcode::from_u16(wire) {
        Some(op) => format!("{op:?}"),
        None => format!("opcode {wire:#06x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(volume: &str) -> Peer {
        Peer::Authenticated(Identity::Target {
            volumes: vec![volume.into(), "other".into()],
        })
    }

    fn replica() -> Peer {
        Peer::Authenticated(Identity::Replica { pool: "p".into() })
    }

    #[test]
    fn a_target_opens_sessions_of_its_own_volumes_only() {
        for epoch in [0, 1, 7] {
            assert_eq!(open(&target("v"), "v", epoch), Ok(Access::Target));
            let refused = open(&target("w"), "v", epoch).unwrap_err();
            assert!(refused.contains("target of w, other") && refused.contains("volume v"));
        }
    }

    #[test]
    fn a_replica_opens_probes_only_and_management_identities_nothing() {
        assert_eq!(open(&replica(), "v", 0), Ok(Access::Replica));
        let refused = open(&replica(), "v", 3).unwrap_err();
        assert!(refused.contains("replica of pool p") && refused.contains("volume v"));
        for identity in [Identity::Admin, Identity::Reader] {
            let peer = Peer::Authenticated(identity);
            assert!(open(&peer, "v", 0).is_err());
            assert!(open(&peer, "v", 1).is_err());
        }
    }

    #[test]
    fn a_plaintext_daemon_takes_every_peer_at_its_word() {
        assert_eq!(open(&Peer::Plaintext, "v", 0), Ok(Access::Target));
        assert_eq!(open(&Peer::Plaintext, "v", 9), Ok(Access::Target));
    }
}
