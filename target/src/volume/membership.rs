//! Volume membership: which replicas make the volume and how many healthy
//! acknowledgements a write needs (the consistency factor, CF). Pure: the
//! rules below as functions over [`Membership`] records; the driver
//! (`volume`) and the controller (`controller`, `Op::SetMembership`) carry
//! them out. See docs/architecture.md, "RF=2 is honest", invariants 1, 5
//! and 6.
//!
//! # The record
//!
//! `{generation, consistency_factor, members: [(replica_id, address)]}`
//! (wire form: `cstor_proto::Membership`, opcodes `MembershipSet` /
//! `MembershipGet`), persisted by every replica daemon in its pool next to
//! the volume's epoch. A replica keeps only a record with a higher
//! generation than the one it holds, and refuses a *different* record of
//! the same generation, so a generation names one record forever.
//!
//! # Who writes it, and when
//!
//! Only the target that owns the volume (the highest epoch): a record write
//! is a barrier of the controller, like a snapshot: it waits for every
//! earlier write, goes to every healthy replica with its own io_seq, and
//! commits once `min(old CF, new CF)` healthy replicas stored it (so that
//! lowering CF to 1 with one healthy replica left is possible, and is then
//! recorded on that replica). Only a committed record changes what the
//! target does: the member set, the CF. A replica that did not store it
//! gets it again (the whole record, idempotent) every time its link comes
//! up. Changes:
//! - **add** (scale up): the new replica is probed first (reachable, same
//!   block size, its replica id); once the record listing it committed it
//!   is linked as a *new* replica: offline, then degraded from io_seq 0,
//!   i.e. a full rebuild, and it counts for quorum and serves reads only
//!   once the rebuild is done (controller rule). Adding a member again is
//!   refused; a removed replica that is added back is rebuilt in full.
//! - **remove** (scale down): refused if fewer members than CF would stay;
//!   the record goes to the members that stay only and commits on their
//!   acknowledgements (each holds, behind it on its link, every request
//!   before it); once it committed, the leaving replica's link closes and
//!   it counts for nothing. Not stored on the leaving replica, a failed
//!   removal cannot be taken from there by a later target, which would
//!   leave behind the data only that replica held. CF changes only when
//!   asked.
//! - **set CF**: 1 ..= member count.
//! - **replace** = remove the lost one, then add the new one.
//!
//! # Opening a volume (a target start)
//!
//! The target probes the replicas on its command line and every member of
//! the newest record any of them holds (epoch 0: claims nothing), and
//! takes the newest record as the truth: addresses on its command line
//! that are not members are ignored (logged), members that are not on its
//! command line are dialled. So `cstor up` restarting a target with its
//! original arguments keeps a member added since, and never dials one
//! removed since. With no record anywhere (a new volume) the command line
//! is the membership (generation 1, written once the volume is open).
//!
//! It opens once [`open_quorum`] members answered: `max(CF, N − CF + 1)`.
//! Every acknowledged write is on CF replicas, so any `N − CF + 1` of them
//! include one that holds it: the target starts above the highest io_seq
//! of a set that certainly saw every acknowledged write, and the replicas
//! behind it are degraded. With the default majority CF this is CF; with
//! RF=2 and CF=1 it is both: a replica that stayed alone at CF=1 holds the
//! newest data, and a target cannot open from the other one alone — it
//! waits for the survivor, then rebuilds the other from it.
//!
//! A member whose replica id differs from the record's (its pool was
//! replaced: new pool, same address) is rebuilt in full.
//!
//! # Safety answers
//!
//! - *A record write reaches only a minority*: the change fails (the
//!   operator sees the error) and the target keeps the old membership; the
//!   minority holds generation g+1. The target never reuses g+1 (its next
//!   record is g+2), and a later target that reads g+1 from the minority
//!   adopts it: like a failed write, a failed change may or may not take
//!   effect, never half. Add and remove are idempotent to retry (adding a
//!   member that is one, or removing one that is not, is refused without
//!   effect, and says so).
//! - *Two targets*: only the owner of the highest epoch can write a record
//!   (the replicas fence older sessions, invariant 5); a fenced target's
//!   change fails.
//! - *A removed replica comes back*: no target dials it (it is not in the
//!   newest record, and a command line naming it is overruled). If it is
//!   the only replica a restarting target reaches, its own record (which
//!   may still list it, when the removal did not reach it) cannot satisfy
//!   the open quorum of the newest record, which the target finds on the
//!   other members it then probes. Added back, it is rebuilt in full.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use cstor_proto::limits::MAX_MEMBERS;
use cstor_proto::{Member, Membership};

/// Why a membership change or record is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    #[error("{0} is already a member of the volume")]
    AlreadyMember(SocketAddr),
    #[error("{0} is not a member of the volume")]
    NotMember(String),
    #[error("a volume has at most {MAX_MEMBERS} replicas")]
    TooMany,
    #[error("removing a member would leave {left} replicas, below the consistency factor {cf}: lower it first")]
    BelowCf { left: usize, cf: usize },
    #[error("consistency factor {cf} is outside 1..={members}")]
    CfOutOfRange { cf: usize, members: usize },
    #[error("membership record names {0:?}, which is not an address")]
    BadAddress(String),
    #[error("membership record: {0}")]
    Invalid(String),
}

/// One change of the membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new member (scale up or the second half of a replace).
    Add {
        address: SocketAddr,
        replica_id: u128,
    },
    /// A member leaves, named by address or by replica id.
    Remove(MemberRef),
    /// A new consistency factor.
    SetCf(usize),
}

/// A member named by the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberRef {
    Address(SocketAddr),
    ReplicaId(u128),
}

impl MemberRef {
    /// Parses an address (`host:port`) or a replica id (32 hex digits, as
    /// the status shows it).
    pub fn parse(text: &str) -> Result<MemberRef, MembershipError> {
        if let Ok(address) = text.parse::<SocketAddr>() {
            return Ok(MemberRef::Address(address));
        }
        u128::from_str_radix(text, 16)
            .ok()
            .filter(|id| *id != 0 && text.len() == 32)
            .map(MemberRef::ReplicaId)
            .ok_or_else(|| MembershipError::NotMember(text.to_owned()))
    }

    /// Its index in `record`, if it is a member.
    pub fn position(&self, record: &Membership) -> Option<usize> {
        record.members.iter().position(|m| match self {
            MemberRef::Address(a) => m.address == a.to_string(),
            MemberRef::ReplicaId(id) => m.replica_id == *id,
        })
    }

    fn describe(&self) -> String {
        match self {
            MemberRef::Address(a) => a.to_string(),
            MemberRef::ReplicaId(id) => format!("replica {id:032x}"),
        }
    }
}

/// The record of a new volume: the command line's replicas, their ids
/// where a probe learnt them (0 otherwise), generation 1.
pub fn initial(
    addresses: &[SocketAddr],
    ids: &[Option<u128>],
    cf: usize,
) -> Result<Membership, MembershipError> {
    let record = Membership {
        generation: 1,
        consistency_factor: cf_byte(cf, addresses.len())?,
        members: addresses
            .iter()
            .enumerate()
            .map(|(i, a)| Member {
                replica_id: ids.get(i).copied().flatten().unwrap_or(0),
                address: a.to_string(),
            })
            .collect(),
    };
    checked(record)
}

/// The record after `change`, with generation `generation` (the caller's
/// next, above any it ever sent or saw).
pub fn apply(
    record: &Membership,
    change: &Change,
    generation: u64,
) -> Result<Membership, MembershipError> {
    let mut next = record.clone();
    next.generation = generation;
    let cf = usize::from(record.consistency_factor);
    match change {
        Change::Add {
            address,
            replica_id,
        } => {
            if record.member(&address.to_string()).is_some() {
                return Err(MembershipError::AlreadyMember(*address));
            }
            if record.members.len() >= MAX_MEMBERS {
                return Err(MembershipError::TooMany);
            }
            // An id already listed under another address: that pool moved;
            // it is a new member all the same (rebuilt in full), and the
            // stale entry must go first.
            if *replica_id != 0 && record.members.iter().any(|m| m.replica_id == *replica_id) {
                return Err(MembershipError::Invalid(format!(
                    "replica {replica_id:032x} is already a member under another address: remove that one first"
                )));
            }
            next.members.push(Member {
                replica_id: *replica_id,
                address: address.to_string(),
            });
        }
        Change::Remove(which) => {
            let Some(index) = which.position(record) else {
                return Err(MembershipError::NotMember(which.describe()));
            };
            let left = record.members.len().saturating_sub(1);
            if left < cf || left == 0 {
                return Err(MembershipError::BelowCf { left, cf });
            }
            next.members.remove(index);
        }
        Change::SetCf(new_cf) => {
            next.consistency_factor = cf_byte(*new_cf, record.members.len())?;
        }
    }
    checked(next)
}

/// The newest of the records (highest generation), or "no record".
pub fn newest<'a>(records: impl IntoIterator<Item = &'a Membership>) -> Membership {
    records
        .into_iter()
        .max_by_key(|r| r.generation)
        .cloned()
        .unwrap_or_else(Membership::none)
}

/// How many of `members` replicas must answer before a target may open a
/// volume whose CF is `cf`: `max(cf, members − cf + 1)` (module doc).
pub fn open_quorum(members: usize, cf: usize) -> usize {
    let read = members.saturating_sub(cf).saturating_add(1);
    cf.max(read).min(members)
}

/// The members' addresses, in record order.
pub fn addresses(record: &Membership) -> Result<Vec<SocketAddr>, MembershipError> {
    record
        .members
        .iter()
        .map(|m| {
            m.address
                .parse()
                .map_err(|_| MembershipError::BadAddress(m.address.clone()))
        })
        .collect()
}

/// The next step of opening a volume, from the records the probes
/// returned so far (address → record; a replica without one reports
/// generation 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenStep {
    /// Probe these (still unanswered) addresses and decide again.
    Probe(Vec<SocketAddr>),
    /// Enough members answered: open with these members and this CF;
    /// `record` is `None` for a new volume (no record anywhere yet).
    Open {
        members: Vec<SocketAddr>,
        cf: usize,
        record: Option<Membership>,
    },
}

/// Decides whether enough replicas answered (module doc, "Opening").
/// `cli` and `cli_cf` are the command line's replicas and CF, used only
/// when no replica holds a record.
pub fn open_step(
    cli: &[SocketAddr],
    cli_cf: usize,
    answers: &BTreeMap<SocketAddr, Membership>,
) -> Result<OpenStep, MembershipError> {
    let record = newest(answers.values());
    let (members, cf, record) = if record.generation == 0 {
        (cli.to_vec(), cli_cf, None)
    } else {
        let members = addresses(&record)?;
        (
            members,
            usize::from(record.consistency_factor),
            Some(record),
        )
    };
    let answered = members.iter().filter(|a| answers.contains_key(a)).count();
    if answered >= open_quorum(members.len(), cf) {
        return Ok(OpenStep::Open {
            members,
            cf,
            record,
        });
    }
    Ok(OpenStep::Probe(
        members
            .into_iter()
            .filter(|a| !answers.contains_key(a))
            .collect(),
    ))
}

fn cf_byte(cf: usize, members: usize) -> Result<u8, MembershipError> {
    if !(1..=members).contains(&cf) {
        return Err(MembershipError::CfOutOfRange { cf, members });
    }
    u8::try_from(cf).map_err(|_| MembershipError::CfOutOfRange { cf, members })
}

fn checked(record: Membership) -> Result<Membership, MembershipError> {
    record
        .check()
        .map_err(|e| MembershipError::Invalid(e.to_string()))?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn three() -> Membership {
        initial(&[addr(1), addr(2), addr(3)], &[Some(11), Some(12), None], 2).unwrap()
    }

    #[test]
    fn a_new_volume_record_lists_the_command_line_with_the_ids_known() {
        let r = three();
        assert_eq!(r.generation, 1);
        assert_eq!(r.consistency_factor, 2);
        let ids: Vec<u128> = r.members.iter().map(|m| m.replica_id).collect();
        assert_eq!(ids, vec![11, 12, 0]);
        assert_eq!(addresses(&r).unwrap(), vec![addr(1), addr(2), addr(3)]);
    }

    #[test]
    fn adding_a_member_twice_or_a_sixth_is_refused() {
        let r = three();
        let add = |port, id| Change::Add {
            address: addr(port),
            replica_id: id,
        };
        assert_eq!(
            apply(&r, &add(1, 99), 2),
            Err(MembershipError::AlreadyMember(addr(1)))
        );
        // Replica 11 is member 1 already: moved pools leave first.
        assert!(matches!(
            apply(&r, &add(7, 11), 2),
            Err(MembershipError::Invalid(_))
        ));
        let r = apply(&r, &add(4, 14), 2).unwrap();
        let r = apply(&r, &add(5, 15), 3).unwrap();
        assert_eq!(apply(&r, &add(6, 16), 4), Err(MembershipError::TooMany));
    }

    #[test]
    fn removing_below_the_cf_is_refused_until_the_cf_is_lowered() {
        let r = initial(&[addr(1), addr(2)], &[Some(1), Some(2)], 2).unwrap();
        let remove = Change::Remove(MemberRef::Address(addr(2)));
        assert_eq!(
            apply(&r, &remove, 2),
            Err(MembershipError::BelowCf { left: 1, cf: 2 })
        );
        let r = apply(&r, &Change::SetCf(1), 2).unwrap();
        let r = apply(&r, &remove, 3).unwrap();
        assert_eq!(addresses(&r).unwrap(), vec![addr(1)]);
        // The last member never leaves.
        let last = Change::Remove(MemberRef::ReplicaId(1));
        assert!(matches!(
            apply(&r, &last, 4),
            Err(MembershipError::BelowCf { left: 0, .. })
        ));
    }

    #[test]
    fn a_cf_above_the_member_count_is_refused() {
        assert_eq!(
            apply(&three(), &Change::SetCf(4), 2),
            Err(MembershipError::CfOutOfRange { cf: 4, members: 3 })
        );
        assert!(apply(&three(), &Change::SetCf(0), 2).is_err());
    }

    #[test]
    fn members_are_named_by_address_or_by_32_hex_digit_id() {
        let r = three();
        let by_id = MemberRef::parse(&format!("{:032x}", 12u128)).unwrap();
        assert_eq!(by_id.position(&r), Some(1));
        assert_eq!(
            MemberRef::parse("127.0.0.1:3").unwrap().position(&r),
            Some(2)
        );
        assert!(MemberRef::parse("12").is_err());
        assert!(MemberRef::parse("nonsense").is_err());
    }

    #[test]
    fn open_waits_for_a_read_quorum_that_meets_every_write_quorum() {
        assert_eq!(open_quorum(1, 1), 1);
        assert_eq!(open_quorum(2, 2), 2);
        // RF=2, CF=1: the survivor of a CF=1 period must be among them.
        assert_eq!(open_quorum(2, 1), 2);
        assert_eq!(open_quorum(3, 2), 2);
        assert_eq!(open_quorum(3, 1), 3);
        assert_eq!(open_quorum(5, 3), 3);
    }

    #[test]
    fn open_follows_the_newest_record_over_the_command_line() {
        // The command line names 1 only; 1's record lists 1, 2, 3 at CF 2.
        let mut answers = BTreeMap::new();
        answers.insert(addr(1), three());
        assert_eq!(
            open_step(&[addr(1)], 1, &answers).unwrap(),
            OpenStep::Probe(vec![addr(2), addr(3)])
        );
        // 3 answers with a newer record that removed 2.
        let newer = apply(&three(), &Change::Remove(MemberRef::Address(addr(2))), 2).unwrap();
        answers.insert(addr(3), newer.clone());
        assert_eq!(
            open_step(&[addr(1)], 1, &answers).unwrap(),
            OpenStep::Open {
                members: vec![addr(1), addr(3)],
                cf: 2,
                record: Some(newer),
            }
        );
    }

    #[test]
    fn a_removed_replica_alone_cannot_open_the_volume() {
        // 3 was removed (generation 2 on 1 and 2); 3 still holds
        // generation 1, which lists it. Reaching 3 alone is not enough.
        let mut answers = BTreeMap::new();
        answers.insert(addr(3), three());
        let step = open_step(&[addr(1), addr(2), addr(3)], 2, &answers).unwrap();
        assert_eq!(step, OpenStep::Probe(vec![addr(1), addr(2)]));
    }

    #[test]
    fn without_a_record_the_command_line_is_the_membership() {
        let mut answers = BTreeMap::new();
        answers.insert(addr(1), Membership::none());
        answers.insert(addr(2), Membership::none());
        assert_eq!(
            open_step(&[addr(1), addr(2), addr(3)], 2, &answers).unwrap(),
            OpenStep::Open {
                members: vec![addr(1), addr(2), addr(3)],
                cf: 2,
                record: None,
            }
        );
    }

    fn arb_change() -> impl Strategy<Value = Change> {
        prop_oneof![
            (1u16..8, 0u128..8).prop_map(|(port, id)| Change::Add {
                address: addr(port),
                replica_id: id,
            }),
            (1u16..8).prop_map(|port| Change::Remove(MemberRef::Address(addr(port)))),
            (0usize..7).prop_map(Change::SetCf),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Against a model (a set of addresses and a CF): every change is
        /// applied exactly when the model allows it, the result is always
        /// a valid record, and generations only grow.
        #[test]
        fn changes_follow_the_model_and_keep_records_valid(
            changes in proptest::collection::vec(arb_change(), 1..40)
        ) {
            let mut record = initial(&[addr(1)], &[Some(100)], 1).unwrap();
            let mut model: BTreeSet<SocketAddr> = [addr(1)].into();
            let mut ids: BTreeMap<SocketAddr, u128> = [(addr(1), 100)].into();
            let mut cf = 1usize;
            for change in changes {
                let generation = record.generation + 1;
                let allowed = match &change {
                    Change::Add { address, replica_id } => {
                        !model.contains(address)
                            && model.len() < MAX_MEMBERS
                            && (*replica_id == 0 || !ids.values().any(|id| id == replica_id))
                    }
                    Change::Remove(MemberRef::Address(a)) => {
                        model.contains(a) && model.len() > cf.max(1)
                    }
                    Change::Remove(MemberRef::ReplicaId(_)) => unreachable!(),
                    Change::SetCf(c) => (1..=model.len()).contains(c),
                };
                match apply(&record, &change, generation) {
                    Ok(next) => {
                        prop_assert!(allowed, "{change:?} applied to {record:?}");
                        prop_assert!(next.check().is_ok());
                        prop_assert_eq!(next.generation, generation);
                        match change {
                            Change::Add { address, replica_id } => {
                                model.insert(address);
                                ids.insert(address, replica_id);
                            }
                            Change::Remove(MemberRef::Address(a)) => {
                                model.remove(&a);
                                ids.remove(&a);
                            }
                            Change::Remove(MemberRef::ReplicaId(_)) => {}
                            Change::SetCf(c) => cf = c,
                        }
                        record = next;
                    }
                    Err(_) => prop_assert!(!allowed, "{change:?} refused on {record:?}"),
                }
                let listed: BTreeSet<SocketAddr> = addresses(&record).unwrap().into_iter().collect();
                prop_assert_eq!(&listed, &model);
                prop_assert_eq!(usize::from(record.consistency_factor), cf);
            }
        }
    }
}
