//! The driver's own decisions, as functions that do no IO and read no
//! clock: what a link coming up gets, what a `StartRebuild` becomes on the
//! wire, and how a membership change request becomes a record to commit.
//! The driver task (`driver`) calls them; so does a simulator that plays
//! the driver's shell (crate `cstor-sim`), so that both run this one code.
//!
//! Rules (module doc of `super`):
//! - [`Roster`] is what the driver knows besides the controller: the
//!   committed record, the highest record generation seen or sent (a new
//!   record takes one more, so no generation is ever reused), and per
//!   replica index (never reused) its data address and replica id;
//! - a link that comes up ([`on_link_up`]) is judged by the controller on
//!   its hello's facts ([`hello_facts`]) and sent, in this order, the
//!   volume's rebuild throttle (before its rebuild starts), whatever the
//!   controller decided (its `RebuildStart`, the writes it missed), then the
//!   committed record unless it holds it already;
//! - a change request ([`plan_change`]) is checked against the committed
//!   record ([`membership::apply`]); the record to commit names every
//!   replica id learnt since a member was recorded without one; removing a
//!   member needs its live link on this target.

use std::net::SocketAddr;
use std::time::Instant;

use cstor_proto::{
    HelloAck, Membership, Message, Name, Packet, RebuildSource, RebuildStart, StatusReport,
};

use super::controller::{
    Action, Controller, Generation, MemberChange, ReplicaHello, ReplicaIndex, ReplicaState,
    VolumeError,
};
use super::membership;

/// What the driver knows of the volume's replicas besides the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    /// The committed membership record.
    pub record: Membership,
    /// The highest record generation seen or sent: the next record gets
    /// one more.
    pub generation: u64,
    /// Per replica index (never reused): its data address.
    pub addrs: Vec<SocketAddr>,
    /// Per replica index: the replica id it last reported (or the
    /// record's).
    pub replica_ids: Vec<Option<u128>>,
}

impl Roster {
    /// A roster of no replica yet: `record` committed, `generation` the
    /// highest seen.
    pub fn new(record: Membership, generation: u64) -> Self {
        Self {
            generation: generation.max(record.generation),
            record,
            addrs: Vec::new(),
            replica_ids: Vec::new(),
        }
    }

    /// A new replica index, for `addr` (its id if known).
    pub fn push(&mut self, addr: SocketAddr, replica_id: Option<u128>) -> ReplicaIndex {
        self.addrs.push(addr);
        self.replica_ids.push(replica_id);
        self.addrs.len() - 1
    }

    /// `record` is being written: its generation is taken.
    pub fn note_sent(&mut self, record: &Membership) {
        self.generation = self.generation.max(record.generation);
    }

    /// `record` committed at quorum.
    pub fn commit(&mut self, record: Membership) {
        self.note_sent(&record);
        self.record = record;
    }

    /// Fills in replica ids learnt since a member was recorded without one
    /// (unless the record would no longer check).
    pub fn with_known_ids(&self, mut record: Membership) -> Membership {
        let before = record.clone();
        for member in record.members.iter_mut().filter(|m| m.replica_id == 0) {
            let known = (0..self.addrs.len())
                .filter(|i| self.addrs[*i].to_string() == member.address)
                .find_map(|i| self.replica_ids.get(i).copied().flatten());
            if let Some(id) = known {
                member.replica_id = id;
            }
        }
        if record.check().is_ok() {
            record
        } else {
            before
        }
    }
}

/// The facts of a replica's handshake the controller judges it on.
pub fn hello_facts(generation: Generation, ack: &HelloAck, status: &StatusReport) -> ReplicaHello {
    ReplicaHello {
        generation,
        replica_id: ack.replica_id,
        size_bytes: ack.volume_size_bytes,
        last_durable_io_seq: ack.last_durable_io_seq,
        last_received_io_seq: status.last_received_io_seq,
        state: ack.state,
    }
}

/// A link's claim of its replica (`LinkEvent::Up`).
#[derive(Debug, Clone, Copy)]
pub struct LinkUp<'a> {
    pub replica: ReplicaIndex,
    /// The new connection's generation.
    pub generation: Generation,
    pub ack: &'a HelloAck,
    pub status: &'a StatusReport,
    /// The membership record the replica holds.
    pub membership: &'a Membership,
}

/// A link came up: the roster learns the replica's id and record
/// generation, the controller judges its hello, and it is sent the
/// volume's rebuild throttle first and the committed record last (module
/// doc). Returns the controller's actions, in order.
pub fn on_link_up(
    controller: &mut Controller,
    roster: &mut Roster,
    now: Instant,
    up: LinkUp<'_>,
    rebuild_throttle: u64,
) -> Vec<Action> {
    let LinkUp {
        replica,
        generation,
        ack,
        status,
        membership,
    } = up;
    // A record this target never saw (a change of an earlier target that
    // reached only this replica): never reuse its generation.
    roster.note_sent(membership);
    // The record and the status show the id it reports now; whether it
    // changed is the controller's call.
    if let Some(id) = roster.replica_ids.get_mut(replica) {
        *id = Some(ack.replica_id);
    }
    let hello = hello_facts(generation, ack, status);
    // Before its rebuild starts (if it needs one): the rate it is to pull
    // at.
    let throttle = Message::RebuildThrottle {
        bytes_per_second: rebuild_throttle,
    };
    let mut actions = controller.on_hello(now, replica, hello, vec![throttle]);
    // After the rebuild start and the resent writes: the record, so that
    // every member holds it, unless it does already.
    if *membership != roster.record
        && controller
            .replica_states()
            .get(replica)
            .is_some_and(|s| s.is_linked())
    {
        actions.push(controller.unawaited(replica, Message::MembershipSet(roster.record.clone())));
    }
    actions
}

/// The volume's rebuild throttle, for every linked replica (unawaited: an
/// old replica that does not know the message answers an error nobody
/// waits for).
pub fn throttle_actions(controller: &mut Controller, bytes_per_second: u64) -> Vec<Action> {
    let linked: Vec<ReplicaIndex> = controller
        .replica_states()
        .iter()
        .enumerate()
        .filter(|(_, s)| s.is_linked())
        .map(|(i, _)| i)
        .collect();
    linked
        .into_iter()
        .map(|replica| {
            let message = Message::RebuildThrottle { bytes_per_second };
            controller.unawaited(replica, message)
        })
        .collect()
}

/// The `RebuildStart` an `Action::StartRebuild` becomes: sent with the
/// first live io_seq as its io_seq, naming the source's data address.
/// `None` if the volume's name cannot travel (no rebuild then).
pub fn rebuild_start_packet(
    session_id: u64,
    epoch: u64,
    volume: &str,
    source_addr: String,
    from_io_seq: u64,
    first_live_io_seq: u64,
) -> Option<Packet> {
    let volume = Name::new(volume.to_owned()).ok()?;
    Some(Packet {
        session_id,
        epoch,
        io_seq: first_live_io_seq,
        message: Message::RebuildStart(RebuildStart {
            peer_address: source_addr,
            volume,
            from_io_seq,
            source: RebuildSource::Live,
        }),
    })
}

/// A checked membership change: what to submit as the barrier
/// (`Op::SetMembership { record, change, new_cf }`) and the added
/// replica's address and id (its link starts once the record committed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedChange {
    pub record: Membership,
    pub change: MemberChange,
    pub new_cf: usize,
    pub added: Option<(SocketAddr, u128)>,
}

/// Checks `change` against the committed record and plans the record to
/// commit (generation one above the highest seen). `states` are the
/// controller's replica states, by index. A refusal is the error to answer.
pub fn plan_change(
    roster: &Roster,
    states: &[ReplicaState],
    change: &membership::Change,
) -> Result<PlannedChange, VolumeError> {
    let next_generation = roster.generation.saturating_add(1);
    let record = membership::apply(&roster.record, change, next_generation)
        .map(|record| roster.with_known_ids(record))
        .map_err(|e| VolumeError::Refused(e.to_string()))?;
    let (member_change, added) = match change {
        membership::Change::Add {
            address,
            replica_id,
        } => (MemberChange::Add, Some((*address, *replica_id))),
        membership::Change::Remove(which) => {
            let index = which.position(&roster.record).and_then(|p| {
                let address = roster.record.members.get(p)?.address.clone();
                (0..roster.addrs.len()).find(|i| {
                    roster.addrs[*i].to_string() == address
                        && states.get(*i) != Some(&ReplicaState::Removed)
                })
            });
            match index {
                Some(i) => {
                    // The record only counts members; the acknowledged
                    // writes are certainly only on the healthy ones (an
                    // added member is not one until its full rebuild is
                    // done; one that is offline now may hold the newest
                    // data). So a removal must leave CF healthy members.
                    let healthy_left = states
                        .iter()
                        .enumerate()
                        .filter(|(j, s)| *j != i && **s == ReplicaState::Healthy)
                        .count();
                    let cf = usize::from(record.consistency_factor);
                    if healthy_left < cf {
                        return Err(VolumeError::Refused(format!(
                            "removing it would leave {healthy_left} healthy replicas, below the consistency factor {cf}: wait for the rebuilds or lower it first"
                        )));
                    }
                    (MemberChange::Remove(i), None)
                }
                None => {
                    return Err(VolumeError::Refused(
                        "the member has no link on this target".into(),
                    ))
                }
            }
        }
        membership::Change::SetCf(_) => (MemberChange::None, None),
    };
    let new_cf = usize::from(record.consistency_factor);
    Ok(PlannedChange {
        record,
        change: member_change,
        new_cf,
        added,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cstor_proto::Member;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 3261))
    }

    fn roster() -> Roster {
        let members = [addr(1), addr(2), addr(3)];
        let record = membership::initial(&members, &[Some(11), None, Some(13)], 2).unwrap();
        let mut roster = Roster::new(record, 4);
        for (i, a) in members.iter().enumerate() {
            roster.push(*a, [Some(11), Some(12), Some(13)][i]);
        }
        roster
    }

    #[test]
    fn a_change_takes_the_next_generation_and_the_ids_learnt_since() {
        let roster = roster();
        let states = [ReplicaState::Healthy; 3];
        let plan = plan_change(&roster, &states, &membership::Change::SetCf(3)).unwrap();
        assert_eq!(plan.record.generation, 5);
        assert_eq!(
            (plan.change, plan.new_cf, plan.added),
            (MemberChange::None, 3, None)
        );
        assert_eq!(plan.record.members[1].replica_id, 12);

        let add = membership::Change::Add {
            address: addr(4),
            replica_id: 14,
        };
        let plan = plan_change(&roster, &states, &add).unwrap();
        assert_eq!(plan.change, MemberChange::Add);
        assert_eq!(plan.added, Some((addr(4), 14)));
        assert!(plan.record.members.contains(&Member {
            replica_id: 14,
            address: addr(4).to_string(),
        }));
    }

    #[test]
    fn removing_needs_a_live_link_and_refusals_are_the_answers() {
        let roster = roster();
        let remove = membership::Change::Remove(membership::MemberRef::Address(addr(2)));
        let healthy = [ReplicaState::Healthy; 3];
        let plan = plan_change(&roster, &healthy, &remove).unwrap();
        assert_eq!(plan.change, MemberChange::Remove(1));
        let removed = [
            ReplicaState::Healthy,
            ReplicaState::Removed,
            ReplicaState::Healthy,
        ];
        assert!(matches!(
            plan_change(&roster, &removed, &remove),
            Err(VolumeError::Refused(_))
        ));
        assert!(matches!(
            plan_change(&roster, &healthy, &membership::Change::SetCf(9)),
            Err(VolumeError::Refused(_))
        ));
    }

    #[test]
    fn a_removal_must_leave_cf_healthy_members() {
        // CF 2; replica 2 (index 1) is not rebuilt yet (e.g. just added).
        let roster = roster();
        let states = [
            ReplicaState::Healthy,
            ReplicaState::Degraded,
            ReplicaState::Healthy,
        ];
        let healthy_one = membership::Change::Remove(membership::MemberRef::Address(addr(1)));
        assert!(matches!(
            plan_change(&roster, &states, &healthy_one),
            Err(VolumeError::Refused(_))
        ));
        // Removing the one that is not healthy leaves the two that are.
        let degraded_one = membership::Change::Remove(membership::MemberRef::Address(addr(2)));
        let plan = plan_change(&roster, &states, &degraded_one).unwrap();
        assert_eq!(plan.change, MemberChange::Remove(1));
        // With a healthy one offline, the other healthy one is not enough.
        let offline = [
            ReplicaState::Offline,
            ReplicaState::Degraded,
            ReplicaState::Healthy,
        ];
        assert!(matches!(
            plan_change(&roster, &offline, &degraded_one),
            Err(VolumeError::Refused(_))
        ));
    }

    #[test]
    fn a_rebuild_start_names_the_source_and_starts_at_the_first_live_io_seq() {
        let packet = rebuild_start_packet(7, 3, "vol1", addr(1).to_string(), 100, 200).unwrap();
        assert_eq!(
            (packet.session_id, packet.epoch, packet.io_seq),
            (7, 3, 200)
        );
        match packet.message {
            Message::RebuildStart(start) => {
                assert_eq!(start.peer_address, addr(1).to_string());
                assert_eq!(start.from_io_seq, 100);
                assert_eq!(start.source, RebuildSource::Live);
            }
            other => panic!("not a RebuildStart: {other:?}"),
        }
        assert!(rebuild_start_packet(7, 3, "", addr(1).to_string(), 100, 200).is_none());
    }
}
