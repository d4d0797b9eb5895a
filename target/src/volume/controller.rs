//! The volume controller: quorum replication as a pure state machine.
//!
//! It does no IO (docs/architecture.md, "Sans-IO cores and async
//! shells"): the async shell feeds it requests from the SCSI layer and
//! events from the replica links, with the current time, and performs the
//! [`Action`]s it returns (send a packet to a replica, complete a request,
//! drop a link). That makes every rule below testable by a deterministic
//! simulation (`tests` at the bottom).
//!
//! Rules (1 to 4 and 9 are the invariants of docs/architecture.md with
//! the same numbers; rules 5 and 6 are this controller's own):
//! 1. **Acknowledged means replicated.** Every mutating request gets the
//!    next io_seq and goes to every connected replica, in io_seq order per
//!    replica; it completes once `cf` *healthy* replicas acknowledged it
//!    (a flush or FUA write: made it durable, which the replica does before
//!    it acknowledges).
//! 2. **Reads come from healthy replicas only**, spread round-robin; a read
//!    error drops that replica and the read is retried on another.
//! 3. **Below quorum** mutating requests are held; once quorum has been
//!    lost for longer than the grace period they fail with
//!    [`VolumeError::ReadOnly`] (the SCSI layer reports DATA PROTECT /
//!    WRITE PROTECTED) and new ones fail at once, while reads go on from any
//!    healthy replica. Quorum back → read-write again, by itself.
//! 4. **Snapshots only at quorum** (and resize, the same shape): a
//!    snapshot, snapshot destroy or grow is a *barrier*. One at a time (a
//!    second one is refused while one is in progress). From its submission,
//!    new mutating requests are held (at most [`MAX_HELD`]); it starts once
//!    every earlier mutating request has been answered to the SCSI layer
//!    and a quorum is healthy, so "acknowledged before the snapshot" is
//!    exactly "io_seq below the snapshot's": it gets its own io_seq and goes
//!    to every *healthy* replica, behind the earlier requests on each link
//!    (a replica runs a barrier after everything that arrived before it).
//!    It is resolved once every replica it went to answered or was dropped
//!    (a slow one is dropped at `ack_timeout`):
//!    - `cf` or more healthy successes: done. Healthy replicas that failed
//!      it are dropped; every replica without it (failed, offline,
//!      degraded) must be rebuilt from its io_seq. Its rebuild
//!      (`cstor_replica::rebuild`) copies the snapshots it lacks from the
//!      peer before it is healthy again. A grow changes the volume's size here; a replica that
//!      missed it is grown first thing when it connects
//!      ([`Controller::on_connected_sized`]), and one that still answers
//!      an in-range request with OutOfRange is dropped, not the request.
//!    - fewer: the request fails with a message naming each replica's
//!      error; a snapshot that some replicas took is destroyed on them
//!      (best effort, its own io_seq, answers ignored). A grow cannot be
//!      undone: replicas that grew stay larger than the volume, harmlessly.
//!    - without quorum it waits up to the grace period from its
//!      submission, then fails with [`VolumeError::ReadOnly`].
//!
//!    Held requests then go on in their order.
//!
//! 5. **Membership changes are barriers too** ([`Op::SetMembership`],
//!    design in `super::membership`): the record goes to every healthy
//!    replica and commits with `min(cf, new_cf)` healthy acknowledgements;
//!    only then does its [`MemberChange`] apply: an added replica gets the
//!    next index and starts offline with `missed_from = 0` (a full rebuild:
//!    it counts for no quorum and serves no reads until that rebuild is
//!    done, rule 1); a removed one is dropped and becomes
//!    [`ReplicaState::Removed`] for good (indices are never reused); the CF
//!    becomes `new_cf`. A replica that lacks the record is not degraded for
//!    it (it is not data; the shell sends it the record on connect).
//!
//! 6. **A replica that fails a request leaves the healthy set; the volume
//!    answers for lack of space only when it cannot allocate.** A replica
//!    that answers a mutating request with an error is judged once the
//!    request is resolved: if another replica holds it, the refuser lacks
//!    it and leaves the healthy set as having missed it (a rebuild from that
//!    io_seq before it serves reads or counts again); if none does, nothing
//!    diverged and it stays. `NoSpace` and `BadRequest` (about the request,
//!    possibly the same everywhere) wait for that judgement; any other error
//!    (IO error, poisoned, out of range, busy...) drops the replica at once.
//!    The request completes once `cf` healthy replicas acknowledged it, as
//!    always; if healthy replicas refused it and too few healthy ones are
//!    left to take it, it fails with [`VolumeError::NoSpace`] (any healthy
//!    replica answered `NoSpace`) or [`VolumeError::Refused`], without
//!    waiting for the hold. A replica that failed (this, a read error, a
//!    rebuild aborted for `NoSpace` or `VolumePoisoned`) is
//!    [`ReplicaState::Failed`]: its link is dropped with a pause of
//!    [`failed_retry`] of its failures in a row ([`FAILED_RETRY_MIN`]
//!    doubling up to [`FAILED_RETRY_MAX`]) and it is not taken back
//!    earlier; an acknowledgement while healthy or a finished rebuild
//!    resets the count. Other rebuild failures leave it degraded and retry
//!    after the longer of [`REBUILD_RETRY`] and that backoff. The volume
//!    *cannot allocate* ([`Controller::cannot_allocate`]) when it is below
//!    quorum and, even with every member not out of space back, fewer than
//!    `cf` would be healthy: mutating requests then fail at once with
//!    [`VolumeError::NoSpace`] (the SCSI layer reports DATA PROTECT) instead
//!    of being held, while reads go on; a replica that failed for lack of
//!    space counts as able to allocate again once a rebuild made it healthy.
//!
//! 9. **A slow replica is dropped**: a healthy replica that has not
//!    acknowledged a request within `ack_timeout` leaves the healthy set
//!    (its link is dropped) instead of stalling the volume; and so does any
//!    linked replica that owes more than [`MAX_OWED_REQUESTS`] requests or
//!    [`MAX_OWED_BYTES`] bytes of data, before the ack timeout, instead of
//!    the volume holding ever more for it (the shell's queue to each link
//!    is bounded above that, `crate::limits::LINK_QUEUE`).
//!
//! Who may count again after a disconnect: a replica that comes back is
//! healthy again only if it missed nothing, i.e. no mutating request it did
//! not acknowledge was acknowledged by another replica, and what it says of
//! itself when its link claims it ([`Controller::on_hello`], the shell
//! passes the facts of its handshake as a [`ReplicaHello`]) shows nothing
//! lost. The decision ([`Admission`], the first that applies): refused (not
//! a member, or failed and backing off); its replica id changed (its pool
//! was replaced): rebuilt in full; smaller than the volume (it missed a
//! grow): grown first, then rebuilt in full; an unfinished rebuild, first
//! reached after the open and behind what the open saw
//! ([`ControllerConfig::max_received_at_open`]), or reporting less than the
//! highest io_seq it acknowledged (it lost unflushed writes): rebuilt from
//! its durable io_seq; the only member and it lost unflushed writes: those
//! exist nowhere else, it carries on healthy; otherwise healthy. Requests still
//! pending when it comes back are sent to it again (same io_seq, same data:
//! idempotent), so a replica restart shorter than the grace period is
//! invisible. A replica that missed writes is [`ReplicaState::Degraded`]:
//! it gets live writes but serves no reads and counts for no quorum until a
//! rebuild makes it whole.
//!
//! Connection generations: each connection of a replica's link has a
//! [`Generation`], learnt with the connect event ([`Controller::on_connected`]).
//! Every action for a replica carries the generation it was decided for,
//! and the link carries out only those of its current connection
//! (`super::link`): a send decided for a connection that is gone is
//! dropped and reported back ([`Controller::on_not_sent`]: for the current
//! connection the replica is dropped and gets it again on the next; for an
//! older one nothing happens), so nothing meant for an old connection
//! reaches a new one before what the controller decided the new one gets
//! first (its `RebuildStart`). Replies and down reports of an older
//! connection are ignored; a connect while the controller still sends on
//! an older connection takes that one as gone first.
//!
//! Rebuild orchestration (invariant 6; the replica side is documented in
//! `cstor_replica::rebuild`):
//! - a rebuild starts only as the *first* thing on a fresh link
//!   ([`Action::StartRebuild`] comes before the resent pending writes and
//!   before any new write), because the sink tracks live writes from that
//!   frame on and keeps them over rebuilt data. Its io_seq `J` is the
//!   controller's next io_seq at connect: the first io_seq sent live;
//! - the source must be healthy and have acknowledged every pending
//!   mutating request that is completed or that the sink already holds:
//!   the sink keeps only what it gets live from the `RebuildStart` on, so
//!   the source's copy must be at least as new everywhere else. Requests
//!   neither completed nor held by the sink are resent to it live, and a
//!   completed write is older than any pending write to the same block;
//! - no such source at connect, or a rebuild aborted: the replica stays
//!   degraded and its link is dropped after [`REBUILD_RETRY`] so that the
//!   next connect tries again (a retry needs a fresh link, see the first
//!   rule);
//! - the replica is [`ReplicaState::Rebuilding`] once it accepted
//!   (`Ack(RebuildStart)`), follows `RebuildProgress`, and on `RebuildDone`
//!   becomes healthy: `missed_from` is cleared, it counts for quorum and
//!   serves reads. Rebuild reports carry `J` as io_seq: a report of another
//!   run is ignored.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use cstor_proto::{
    Extent, Membership, Message, Name, Opcode, Packet, RebuildProgress, SnapshotListRequest,
    SnapshotListing, Status, Write,
};

pub use crate::limits::{
    failed_retry, FAILED_RETRY_MAX, FAILED_RETRY_MIN, MAX_HELD, MAX_OWED_BYTES, MAX_OWED_REQUESTS,
    REBUILD_RETRY,
};

/// Index of a replica in the volume's replica list.
pub type ReplicaIndex = usize;

/// Identifies a request of the SCSI layer.
pub type Tag = u64;

/// Number of one connection of a replica's link: 1 for its first, one
/// more for each after (0: none yet). Learnt with the connect event; every
/// action for a replica carries the generation it was decided for, and the
/// link carries out only those of its current connection (module doc,
/// "Connection generations").
pub type Generation = u64;

/// Settings of a volume controller.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Number of replicas.
    pub replicas: usize,
    /// Consistency factor: healthy acknowledgements a mutating request
    /// needs (1..=replicas).
    pub cf: usize,
    /// A healthy replica slower than this to acknowledge is dropped.
    pub ack_timeout: Duration,
    /// How long mutating requests are held below quorum before they fail.
    pub hold: Duration,
    /// Session id sent in every frame (chosen by the target at start).
    pub session_id: u64,
    /// The target's epoch (fencing).
    pub epoch: u64,
    /// First io_seq to use: above anything any replica may have seen.
    pub first_io_seq: u64,
    /// Volume size in bytes (from the replicas' handshakes).
    pub size_bytes: u64,
    /// The highest io_seq any replica that answered the open reported
    /// received: a replica first reached later and reporting less is behind.
    pub max_received_at_open: u64,
    /// A linked replica owing more requests than this is dropped (rule 9;
    /// the shell uses [`MAX_OWED_REQUESTS`]).
    pub max_owed_requests: usize,
    /// A linked replica owing more data bytes than this is dropped (rule 9;
    /// the shell uses [`MAX_OWED_BYTES`]).
    pub max_owed_bytes: u64,
}

impl ControllerConfig {
    /// The default consistency factor for `replicas`: a majority.
    pub fn majority(replicas: usize) -> usize {
        replicas / 2 + 1
    }
}

/// A request of the SCSI layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Read {
        offset: u64,
        len_bytes: u32,
    },
    Write {
        offset: u64,
        data: Bytes,
        fua: bool,
    },
    Flush,
    Unmap {
        offset: u64,
        len_bytes: u32,
    },
    WriteZeroes {
        offset: u64,
        len_bytes: u32,
    },
    /// Take a snapshot of every write acknowledged before (a barrier).
    SnapshotCreate {
        name: Name,
    },
    /// Destroy a snapshot (a barrier).
    SnapshotDestroy {
        name: Name,
    },
    /// Grow the volume (a barrier); smaller than now is refused.
    Resize {
        size_bytes: u64,
    },
    /// One page of the snapshots of a healthy replica.
    ListSnapshots {
        after: Option<Name>,
    },
    /// Store a membership record on the replicas (a barrier); once
    /// `min(cf, new_cf)` healthy replicas stored it, `change` and `new_cf`
    /// take effect (module doc, rule 5).
    SetMembership {
        record: Membership,
        change: MemberChange,
        new_cf: usize,
    },
}

impl Op {
    fn mutates(&self) -> bool {
        !matches!(self, Op::Read { .. } | Op::ListSnapshots { .. })
    }

    /// Data bytes it carries to a replica (a write's payload).
    fn data_bytes(&self) -> u64 {
        match self {
            Op::Write { data, .. } => data.len() as u64,
            _ => 0,
        }
    }

    /// Runs alone, between the requests before and after it (module doc).
    pub(crate) fn is_barrier(&self) -> bool {
        matches!(
            self,
            Op::SnapshotCreate { .. }
                | Op::SnapshotDestroy { .. }
                | Op::Resize { .. }
                | Op::SetMembership { .. }
        )
    }

    fn message(&self) -> Message {
        match self {
            Op::Read { offset, len_bytes } => Message::Read(Extent {
                offset: *offset,
                len_bytes: *len_bytes,
            }),
            Op::Write { offset, data, fua } => Message::Write(Write {
                offset: *offset,
                data: data.clone(),
                fua: *fua,
            }),
            Op::Flush => Message::Flush,
            Op::Unmap { offset, len_bytes } => Message::Unmap(Extent {
                offset: *offset,
                len_bytes: *len_bytes,
            }),
            Op::WriteZeroes { offset, len_bytes } => Message::WriteZeroes(Extent {
                offset: *offset,
                len_bytes: *len_bytes,
            }),
            Op::SnapshotCreate { name } => Message::SnapshotCreate(name.clone()),
            Op::SnapshotDestroy { name } => Message::SnapshotDestroy(name.clone()),
            Op::Resize { size_bytes } => Message::Resize {
                new_size_bytes: *size_bytes,
            },
            Op::ListSnapshots { after } => Message::SnapshotList(SnapshotListRequest {
                after: after.clone(),
            }),
            Op::SetMembership { record, .. } => Message::MembershipSet(record.clone()),
        }
    }

    fn opcode(&self) -> Opcode {
        match self {
            Op::Read { .. } => Opcode::Read,
            Op::Write { .. } => Opcode::Write,
            Op::Flush => Opcode::Flush,
            Op::Unmap { .. } => Opcode::Unmap,
            Op::WriteZeroes { .. } => Opcode::WriteZeroes,
            Op::SnapshotCreate { .. } => Opcode::SnapshotCreate,
            Op::SnapshotDestroy { .. } => Opcode::SnapshotDestroy,
            Op::Resize { .. } => Opcode::Resize,
            Op::ListSnapshots { .. } => Opcode::SnapshotList,
            Op::SetMembership { .. } => Opcode::MembershipSet,
        }
    }
}

/// Why a request failed, as the SCSI layer maps it to sense data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeError {
    /// Below quorum for longer than the grace period: DATA PROTECT / WRITE
    /// PROTECTED.
    #[error("volume is read-only: fewer than {cf} healthy replicas")]
    ReadOnly { cf: usize },
    /// No healthy replica to read from within the grace period.
    #[error("no healthy replica can serve the read")]
    Unavailable,
    /// Outside the volume.
    #[error("offset/length outside the volume")]
    OutOfRange,
    /// Fewer than CF replicas could allocate space for the request (module
    /// doc, rule 6): DATA PROTECT / SPACE ALLOCATION FAILED WRITE PROTECT.
    #[error("no space: fewer than the consistency factor of replicas could allocate")]
    NoSpace,
    /// A newer target took the volume over.
    #[error("fenced: a newer target owns the volume")]
    Fenced,
    /// The replicas refused the request (e.g. a malformed extent).
    #[error("replicas refused the request: {0}")]
    Refused(String),
}

/// What a completed request yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    Done,
    Data(Bytes),
    Snapshots(SnapshotListing),
}

/// An effect for the shell to carry out, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send a packet on the replica's connection `generation` (links keep
    /// FIFO order); not sent at all if that connection is gone.
    Send {
        replica: ReplicaIndex,
        generation: Generation,
        packet: Packet,
    },
    /// Complete a request of the SCSI layer.
    Complete {
        tag: Tag,
        result: Result<Completion, VolumeError>,
    },
    /// Close the replica's connection `generation` (nothing if it is gone
    /// already); the shell dials it again, not before `redial_after` (zero
    /// but for a failed replica, module doc rule 6).
    Drop {
        replica: ReplicaIndex,
        generation: Generation,
        reason: String,
        redial_after: Duration,
    },
    /// Send `RebuildStart` on the replica's link: pull every block written
    /// after `from_io_seq` from `source`'s data address; the packet's io_seq
    /// is `first_live_io_seq` (module doc).
    StartRebuild {
        replica: ReplicaIndex,
        /// The connection it is the first thing on.
        generation: Generation,
        source: ReplicaIndex,
        from_io_seq: u64,
        first_live_io_seq: u64,
    },
}

/// What a replica said about itself when its link claimed it (its
/// `HelloAck` and `Status` answers): the facts readmission is decided on
/// ([`Controller::on_hello`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaHello {
    /// The connection it came on.
    pub generation: Generation,
    /// Its replica id: another one than before means another pool.
    pub replica_id: u128,
    /// Its volume size.
    pub size_bytes: u64,
    /// Every write up to this io_seq is durable on it.
    pub last_durable_io_seq: u64,
    /// The highest io_seq it received (maybe not durable).
    pub last_received_io_seq: u64,
    /// The state it reports.
    pub state: cstor_proto::ReplicaState,
}

/// How a replica that (re)connected is taken back
/// ([`Controller::on_hello`]; the first that applies, in this order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Not taken: not a member, or failed and backing off.
    Refused,
    /// Its replica id changed (its pool was replaced): rebuilt in full.
    IdentityChanged { was: u128, now: u128 },
    /// Smaller than the volume (it missed a grow): grown first, then
    /// rebuilt in full.
    Undersized { size_bytes: u64 },
    /// Lacks writes from `from_io_seq` on (behind the others, lost writes
    /// it had acknowledged, an unfinished rebuild, or missed while away):
    /// rebuilt from there; 0 is a full rebuild.
    Rebuild { from_io_seq: u64 },
    /// The only member, and it lost unflushed writes: they exist nowhere
    /// else, so it carries on from what it holds (as a disk after a power
    /// loss), healthy.
    AloneLostUnflushed,
    /// Missed nothing: healthy.
    Healthy,
}

/// A replica as the controller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaState {
    /// No link.
    Offline,
    /// Linked and complete: counts for quorum, serves reads.
    Healthy,
    /// Linked but missed writes: gets live writes, needs a rebuild.
    Degraded,
    /// Degraded and pulling the missing range from a healthy peer: gets
    /// live writes, serves no reads, counts for no quorum.
    Rebuilding,
    /// No longer a member (a committed membership record left it out): no
    /// link, gets nothing, counts for nothing. Its index is never reused.
    Removed,
    /// No link because it failed (module doc, rule 6): it answered an error
    /// to a request others took, a read error, or its rebuild failed for
    /// lack of space or a poisoned volume. Dialled again only after a
    /// backoff that doubles with each failure in a row ([`failed_retry`]);
    /// back, it is degraded until a rebuild makes it whole.
    Failed,
}

impl ReplicaState {
    /// Has a link the controller sends on.
    pub fn is_linked(self) -> bool {
        matches!(
            self,
            ReplicaState::Healthy | ReplicaState::Degraded | ReplicaState::Rebuilding
        )
    }
}

/// What a committed membership record changes in the controller (the
/// record itself is the shell's business, `super::membership`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange {
    /// Nothing but the CF (or nothing at all: a record rewritten).
    None,
    /// A new replica joins with the next index: offline, and once linked
    /// degraded from io_seq 0 (a full rebuild) until its rebuild is done.
    Add,
    /// The replica leaves: its link is dropped and it becomes `Removed`.
    Remove(ReplicaIndex),
}

/// A rebuild the controller asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildRun {
    pub source: ReplicaIndex,
    pub from_io_seq: u64,
    /// io_seq of the `RebuildStart` (and of every report of this run).
    pub first_live_io_seq: u64,
    /// The sink accepted it.
    pub accepted: bool,
    pub progress: RebuildProgress,
}

#[derive(Debug)]
struct Replica {
    state: ReplicaState,
    /// Its link's current (or last) connection.
    generation: Generation,
    /// The replica id it last reported (or the membership record's).
    replica_id: Option<u128>,
    /// It answered a hello on this target already.
    contacted: bool,
    /// How it was last taken back.
    admission: Option<Admission>,
    /// The current rebuild, while degraded or rebuilding.
    rebuild: Option<RebuildRun>,
    /// A degraded replica without a rebuild is redialled at this time.
    retry_at: Option<Instant>,
    /// Highest io_seq of a mutating request it acknowledged: if it comes
    /// back reporting less, it lost acknowledged (unflushed) writes.
    acked_max: u64,
    /// Lowest io_seq of a mutating request that another replica
    /// acknowledged and this one did not: it must be rebuilt from there.
    missed_from: Option<u64>,
    /// Lowest io_seq of a snapshot create or destroy that a quorum took
    /// while this replica's rebuild ran: the rebuild's snapshot listing may
    /// predate it, so the replica is rebuilt once more (from there) before
    /// it is healthy.
    snapshot_missed_in_rebuild: Option<u64>,
    /// Failures in a row, without a success since (rule 6): sets the
    /// backoff before it is dialled again.
    failures: u32,
    /// A failed replica is not taken back before this time.
    redial_at: Option<Instant>,
    /// It failed for lack of space, and has not been healthy since: it
    /// cannot be counted on to allocate (rule 6).
    no_space: bool,
}

impl Replica {
    fn new(state: ReplicaState, missed_from: Option<u64>) -> Replica {
        Replica {
            state,
            generation: 0,
            replica_id: None,
            contacted: false,
            admission: None,
            rebuild: None,
            retry_at: None,
            acked_max: 0,
            missed_from,
            snapshot_missed_in_rebuild: None,
            failures: 0,
            redial_at: None,
            no_space: false,
        }
    }
}

#[derive(Debug)]
struct Pending {
    tag: Tag,
    op: Op,
    submitted: Instant,
    /// Replica → when the request was sent to it.
    sent: BTreeMap<ReplicaIndex, Instant>,
    /// Replicas that acknowledged it (whatever their state at the time).
    acked: BTreeSet<ReplicaIndex>,
    /// Replicas that failed it (and were dropped for it, or were gone).
    failed: BTreeSet<ReplicaIndex>,
    /// Replicas that answered it with an error and have not been judged for
    /// it yet (rule 6): once another replica holds it, each leaves the
    /// healthy set as having missed it.
    refused: BTreeMap<ReplicaIndex, Status>,
    /// What a healthy replica's refusal makes of the request if too few
    /// healthy replicas can still take it: [`VolumeError::NoSpace`] (it
    /// wins over any other) or [`VolumeError::Refused`].
    refusal: Option<VolumeError>,
    /// The SCSI layer has its answer; the entry stays until every replica
    /// it was sent to acknowledged it or was dropped, so that a replica that
    /// never does is known to have missed it.
    completed: bool,
}

impl Pending {
    /// Replicas it was sent to that still owe an answer.
    fn owed(&self) -> impl Iterator<Item = &ReplicaIndex> {
        self.sent
            .keys()
            .filter(|r| !self.acked.contains(r) && !self.failed.contains(r))
    }
}

/// The snapshot, snapshot destroy or resize in progress.
#[derive(Debug)]
struct Barrier {
    tag: Tag,
    op: Op,
    submitted: Instant,
    /// Its io_seq, once sent (its `Pending` is then in `pending`).
    io_seq: Option<u64>,
    /// What the replicas that failed it said.
    errors: Vec<String>,
}

/// The controller of one volume. See the module doc for its rules.
#[derive(Debug)]
pub struct Controller {
    config: ControllerConfig,
    replicas: Vec<Replica>,
    next_io_seq: u64,
    pending: BTreeMap<u64, Pending>,
    /// Data bytes of every entry of `pending` (rule 9: no replica may owe
    /// more than [`MAX_OWED_BYTES`], and none can while this is below).
    pending_bytes: u64,
    /// When the number of healthy replicas fell below `cf`.
    quorum_lost_at: Option<Instant>,
    next_reader: usize,
    fenced: bool,
    barrier: Option<Barrier>,
    /// Mutating requests submitted after the barrier, in order.
    held: VecDeque<(Tag, Op)>,
}

impl Controller {
    /// A controller whose replicas are all offline. `missed_from[i]` is
    /// `None` for a replica known (from the handshakes, by the shell) to
    /// hold every acknowledged write — it is healthy as soon as it connects
    /// — and the io_seq it must be rebuilt from otherwise.
    pub fn new(config: ControllerConfig, missed_from: &[Option<u64>], now: Instant) -> Self {
        let replicas = (0..config.replicas)
            .map(|i| {
                Replica::new(
                    ReplicaState::Offline,
                    missed_from.get(i).copied().unwrap_or(Some(0)),
                )
            })
            .collect();
        Controller {
            next_io_seq: config.first_io_seq,
            config,
            replicas,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            quorum_lost_at: Some(now),
            next_reader: 0,
            fenced: false,
            barrier: None,
            held: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    /// The state of every replica.
    pub fn replica_states(&self) -> Vec<ReplicaState> {
        self.replicas.iter().map(|r| r.state).collect()
    }

    /// Where a degraded replica must be rebuilt from (io_seq), if it is.
    pub fn missed_from(&self, replica: ReplicaIndex) -> Option<u64> {
        self.replicas.get(replica).and_then(|r| r.missed_from)
    }

    /// Healthy replicas.
    pub fn healthy(&self) -> usize {
        self.replicas
            .iter()
            .filter(|r| r.state == ReplicaState::Healthy)
            .count()
    }

    /// Is a quorum of healthy replicas present?
    pub fn has_quorum(&self) -> bool {
        self.healthy() >= self.config.cf
    }

    /// Is the volume refusing writes (quorum lost for longer than the
    /// grace period)? Not when it [cannot allocate](Self::cannot_allocate):
    /// that is answered as such (rule 6), and the SCSI layer does not turn
    /// the LU write protected for it.
    pub fn is_read_only(&self, now: Instant) -> bool {
        self.quorum_lost_at
            .is_some_and(|t| now.saturating_duration_since(t) >= self.config.hold)
            && !self.cannot_allocate()
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced
    }

    /// Can the volume not allocate (rule 6)? Below quorum, and even if
    /// every member that did not fail for lack of space came back, fewer
    /// than `cf` would be healthy: mutating requests then fail at once with
    /// [`VolumeError::NoSpace`] instead of being held.
    pub fn cannot_allocate(&self) -> bool {
        if self.has_quorum() || !self.replicas.iter().any(|r| r.no_space) {
            return false;
        }
        let may_count = self
            .replicas
            .iter()
            .filter(|r| {
                r.state == ReplicaState::Healthy
                    || (r.state != ReplicaState::Removed && !r.no_space)
            })
            .count();
        may_count < self.config.cf
    }

    /// Failures in a row of `replica` (rule 6; 0 once it succeeded).
    pub fn failures(&self, replica: ReplicaIndex) -> u32 {
        self.replicas.get(replica).map_or(0, |r| r.failures)
    }

    /// When a failed replica may be dialled again.
    pub fn redial_at(&self, replica: ReplicaIndex) -> Option<Instant> {
        self.replicas.get(replica).and_then(|r| r.redial_at)
    }

    /// Requests the SCSI layer still waits for.
    pub fn in_flight(&self) -> usize {
        self.pending.values().filter(|p| !p.completed).count()
    }

    /// The next io_seq the controller will assign.
    pub fn next_io_seq(&self) -> u64 {
        self.next_io_seq
    }

    /// A new request from the SCSI layer.
    pub fn submit(&mut self, now: Instant, tag: Tag, op: Op) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.fenced {
            actions.push(complete(tag, Err(VolumeError::Fenced)));
            return actions;
        }
        if let Some(err) = self.check_range(&op) {
            actions.push(complete(tag, Err(err)));
            return actions;
        }
        if op.is_barrier() {
            if self.barrier.is_some() {
                let busy =
                    "another snapshot, resize or membership change of the volume is in progress";
                actions.push(complete(tag, Err(VolumeError::Refused(busy.into()))));
                return actions;
            }
            self.barrier = Some(Barrier {
                tag,
                op,
                submitted: now,
                io_seq: None,
                errors: Vec::new(),
            });
            self.settle(now, &mut actions);
            return actions;
        }
        if op.mutates() && self.barrier.is_some() {
            if self.held.len() >= MAX_HELD {
                actions.push(complete(tag, Err(VolumeError::Unavailable)));
            } else {
                self.held.push_back((tag, op));
            }
            return actions;
        }
        self.dispatch(now, tag, op, &mut actions);
        actions
    }

    /// Sends a request that may go now: numbered, to every linked replica
    /// (mutating) or to one healthy replica (reads).
    fn dispatch(&mut self, now: Instant, tag: Tag, op: Op, actions: &mut Vec<Action>) {
        if op.mutates() && self.cannot_allocate() {
            actions.push(complete(tag, Err(VolumeError::NoSpace)));
            return;
        }
        if op.mutates() && self.is_read_only(now) {
            actions.push(complete(
                tag,
                Err(VolumeError::ReadOnly { cf: self.config.cf }),
            ));
            return;
        }
        let io_seq = self.next_io_seq;
        self.next_io_seq += 1;
        let mut pending = Pending {
            tag,
            op,
            submitted: now,
            sent: BTreeMap::new(),
            acked: BTreeSet::new(),
            failed: BTreeSet::new(),
            refused: BTreeMap::new(),
            refusal: None,
            completed: false,
        };
        if pending.op.mutates() {
            for (index, replica) in self.replicas.iter().enumerate() {
                if replica.state.is_linked() {
                    pending.sent.insert(index, now);
                    actions.push(self.send(index, io_seq, &pending.op));
                }
            }
        } else if let Some(reader) = self.pick_reader(&pending.failed) {
            pending.sent.insert(reader, now);
            actions.push(self.send(reader, io_seq, &pending.op));
        }
        let mutates = pending.op.mutates();
        self.insert_pending(io_seq, pending);
        if mutates {
            self.bound_backlogs(now, actions);
        }
    }

    fn insert_pending(&mut self, io_seq: u64, pending: Pending) {
        self.pending_bytes = self.pending_bytes.saturating_add(pending.op.data_bytes());
        self.pending.insert(io_seq, pending);
    }

    fn remove_pending(&mut self, io_seq: u64) -> Option<Pending> {
        let pending = self.pending.remove(&io_seq)?;
        self.pending_bytes = self.pending_bytes.saturating_sub(pending.op.data_bytes());
        Some(pending)
    }

    /// Rule 9, by size: a linked replica that owes more than
    /// `max_owed_requests` requests or `max_owed_bytes` bytes of data is
    /// dropped, like one slower than the ack timeout, instead of having the
    /// volume hold ever more for it. Counted only when everything pending
    /// could exceed a bound (no replica owes more than that).
    fn bound_backlogs(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let (max_requests, max_bytes) = (self.config.max_owed_requests, self.config.max_owed_bytes);
        if self.pending.len() <= max_requests && self.pending_bytes <= max_bytes {
            return;
        }
        let mut owed: BTreeMap<ReplicaIndex, (usize, u64)> = BTreeMap::new();
        for p in self.pending.values() {
            for r in p.owed() {
                let entry = owed.entry(*r).or_default();
                entry.0 += 1;
                entry.1 = entry.1.saturating_add(p.op.data_bytes());
            }
        }
        for (replica, (requests, bytes)) in owed {
            if requests > max_requests || bytes > max_bytes {
                self.drop_replica(
                    now,
                    replica,
                    format!(
                        "owes {requests} requests ({bytes} bytes): more than {max_requests} or {max_bytes} bytes"
                    ),
                    actions,
                );
            }
        }
    }

    /// Data bytes of the mutating requests `replica` was sent and has not
    /// answered yet (rule 9 bounds it by [`MAX_OWED_BYTES`]).
    pub fn owed_bytes_by(&self, replica: ReplicaIndex) -> u64 {
        self.pending
            .values()
            .filter(|p| p.owed().any(|r| *r == replica))
            .map(|p| p.op.data_bytes())
            .sum()
    }

    /// The volume's size now (grows with an acknowledged resize).
    pub fn size_bytes(&self) -> u64 {
        self.config.size_bytes
    }

    /// Is a snapshot or resize in progress?
    pub fn barrier_in_progress(&self) -> bool {
        self.barrier.is_some()
    }

    /// Mutating requests `replica` was sent and has not answered yet.
    pub fn owed_by(&self, replica: ReplicaIndex) -> usize {
        self.pending
            .values()
            .filter(|p| p.owed().any(|r| *r == replica))
            .count()
    }

    /// Highest io_seq of a mutating request `replica` acknowledged.
    pub fn acked_max(&self, replica: ReplicaIndex) -> u64 {
        self.replicas.get(replica).map_or(0, |r| r.acked_max)
    }

    /// The shell learnt that `replica` lacks writes from `io_seq` on (e.g.
    /// it was unreachable at start and reports less than the others did).
    pub fn mark_missed(&mut self, replica: ReplicaIndex, io_seq: u64) {
        if let Some(r) = self.replicas.get_mut(replica) {
            r.missed_from = Some(r.missed_from.map_or(io_seq, |m| m.min(io_seq)));
            if r.state == ReplicaState::Healthy {
                r.state = ReplicaState::Degraded;
            }
        }
    }

    /// A replica's link is up and its session claimed; it reported
    /// `size_bytes`. One smaller than the volume (it missed a grow) is
    /// grown first: a `Resize` with its own io_seq, answer not awaited (if
    /// it fails, the replica's out-of-range answers drop it again).
    ///
    /// `preamble`: messages the shell wants first on the new connection
    /// (unawaited, each its own io_seq), sent if the replica is taken.
    pub fn on_connected_sized(
        &mut self,
        now: Instant,
        replica: ReplicaIndex,
        generation: Generation,
        size_bytes: u64,
        preamble: Vec<Message>,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        if !self.set_generation(replica, generation) {
            return actions;
        }
        let taken = self.replicas.get(replica).is_some_and(|r| {
            r.state != ReplicaState::Removed
                && !(r.state == ReplicaState::Failed && r.redial_at.is_some_and(|at| at > now))
        });
        if taken {
            for message in preamble {
                actions.push(self.unawaited(replica, message));
            }
        }
        let backing_off = self.replicas.get(replica).is_some_and(|r| {
            r.state == ReplicaState::Failed && r.redial_at.is_some_and(|at| at > now)
        });
        if size_bytes < self.config.size_bytes && replica < self.replicas.len() && !backing_off {
            tracing::info!(
                replica,
                have = size_bytes,
                want = self.config.size_bytes,
                "growing a replica that missed a resize"
            );
            let io_seq = self.next_io_seq;
            self.next_io_seq += 1;
            let grow = Op::Resize {
                size_bytes: self.config.size_bytes,
            };
            actions.push(self.send(replica, io_seq, &grow));
        }
        actions.extend(self.on_connected(now, replica, generation));
        actions
    }

    /// Records that `replica`'s link is on connection `generation`; false
    /// (and nothing changes) if that is older than one already seen.
    fn set_generation(&mut self, replica: ReplicaIndex, generation: Generation) -> bool {
        let Some(r) = self.replicas.get_mut(replica) else {
            return false;
        };
        if generation < r.generation {
            tracing::debug!(
                replica,
                generation,
                current = r.generation,
                "connect of an old connection ignored"
            );
            return false;
        }
        r.generation = generation;
        true
    }

    /// The replica ids known before any hello (the membership record's, or
    /// the open's probes); `None` where unknown.
    pub fn with_replica_ids(mut self, ids: &[Option<u128>]) -> Self {
        for (r, id) in self.replicas.iter_mut().zip(ids) {
            r.replica_id = *id;
        }
        self
    }

    /// What `replica` answered the open's probe (no connection yet; the
    /// generation is not used): judged as a hello is ([`Self::on_hello`]),
    /// so that a replica behind the others, with an unfinished rebuild or
    /// another id than the membership record's is degraded from the start.
    pub fn on_probe(&mut self, replica: ReplicaIndex, hello: ReplicaHello) {
        // Not a contact: its first hello is judged against the open again.
        let _ = self.judge(replica, &hello, false);
    }

    /// The replica id `replica` last reported (or the record's).
    pub fn replica_id(&self, replica: ReplicaIndex) -> Option<u128> {
        self.replicas.get(replica).and_then(|r| r.replica_id)
    }

    /// How `replica` was last taken back, once it said hello.
    pub fn admission(&self, replica: ReplicaIndex) -> Option<Admission> {
        self.replicas.get(replica).and_then(|r| r.admission)
    }

    /// A replica's link claimed it on connection `hello.generation`, and it
    /// said `hello`: decides how it is taken back ([`Admission`]) and
    /// returns what to send it. `preamble` as for
    /// [`Self::on_connected_sized`].
    pub fn on_hello(
        &mut self,
        now: Instant,
        replica: ReplicaIndex,
        hello: ReplicaHello,
        preamble: Vec<Message>,
    ) -> Vec<Action> {
        let generation = hello.generation;
        let refused = self.replicas.get(replica).is_none_or(|r| {
            r.state == ReplicaState::Removed
                || (r.state == ReplicaState::Failed && r.redial_at.is_some_and(|at| at > now))
        });
        if refused || generation < self.generation(replica) {
            // Nothing learnt from a replica not taken: on_connected says why.
            return self.on_connected_sized(now, replica, generation, hello.size_bytes, preamble);
        }
        let (decision, alone) = self.judge(replica, &hello, true);
        let actions = self.on_connected_sized(now, replica, generation, hello.size_bytes, preamble);
        if let Some(r) = self.replicas.get_mut(replica) {
            if let Some(decision) = decision {
                r.admission = Some(decision);
            } else if alone && r.missed_from.is_none() {
                r.admission = Some(Admission::AloneLostUnflushed);
            }
        }
        actions
    }

    /// Readmission (module doc, "Who may count again"): marks what
    /// `replica` lacks from what it says of itself; returns the decision
    /// that overrides the connect's own, if any, and whether it is the only
    /// member that lost unflushed writes. `contact`: a hello (the next one
    /// is no first contact), not the open's probe.
    fn judge(
        &mut self,
        replica: ReplicaIndex,
        hello: &ReplicaHello,
        contact: bool,
    ) -> (Option<Admission>, bool) {
        let members = self
            .replicas
            .iter()
            .filter(|r| r.state != ReplicaState::Removed)
            .count();
        let volume_size = self.config.size_bytes;
        let at_open = self.config.max_received_at_open;
        let Some(r) = self.replicas.get_mut(replica) else {
            return (None, false);
        };
        let received = hello.last_received_io_seq.max(hello.last_durable_io_seq);
        let resume = hello.last_durable_io_seq.saturating_add(1);
        let previous_id = r.replica_id.replace(hello.replica_id);
        let first_contact = !r.contacted;
        r.contacted |= contact;
        // Reached for the first time and behind what the open saw, or
        // restarted and lost writes it had acknowledged (not flushed).
        let behind = (first_contact && received < at_open) || received < r.acked_max;
        let acked_max = r.acked_max;
        let mut decision = None;
        if let Some(was) = previous_id.filter(|id| *id != hello.replica_id) {
            tracing::warn!(
                replica,
                was = %format!("{was:032x}"),
                now = %format!("{:032x}", hello.replica_id),
                "replica id changed (new pool?): full rebuild"
            );
            self.mark_missed(replica, 0);
            decision = Some(Admission::IdentityChanged {
                was,
                now: hello.replica_id,
            });
        }
        if hello.size_bytes < volume_size {
            tracing::warn!(
                replica,
                have = hello.size_bytes,
                want = volume_size,
                "replica is smaller than the volume: grown, then a full rebuild"
            );
            self.mark_missed(replica, 0);
            decision.get_or_insert(Admission::Undersized {
                size_bytes: hello.size_bytes,
            });
        }
        if matches!(
            hello.state,
            cstor_proto::ReplicaState::Degraded | cstor_proto::ReplicaState::Rebuilding
        ) {
            // Complete only through its durable io_seq, whatever else it holds.
            tracing::warn!(replica, "replica has an unfinished rebuild");
            self.mark_missed(replica, resume);
        }
        let alone = behind && members == 1;
        if alone {
            // The only copy: what it lost was never flushed (a flushed write
            // is durable on it) and exists nowhere else.
            tracing::warn!(
                replica,
                received,
                acked_max,
                "the only replica restarted and lost unflushed writes"
            );
        } else if behind {
            tracing::warn!(
                replica,
                received,
                acked_max,
                at_open,
                "replica came back without writes it should hold"
            );
            self.mark_missed(replica, resume);
        }
        (decision, alone)
    }

    /// The connection of `replica` the controller decides for now.
    pub fn generation(&self, replica: ReplicaIndex) -> Generation {
        self.replicas.get(replica).map_or(0, |r| r.generation)
    }

    /// A request to `replica` whose answer nobody waits for (the record a
    /// member is sent on connect): its own io_seq, and a reply that matches
    /// no pending request is ignored.
    pub fn unawaited(&mut self, replica: ReplicaIndex, message: Message) -> Action {
        let io_seq = self.next_io_seq;
        self.next_io_seq += 1;
        self.send_message(replica, io_seq, message)
    }

    /// A replica's link is up on connection `generation` and its session
    /// claimed.
    pub fn on_connected(
        &mut self,
        now: Instant,
        replica: ReplicaIndex,
        generation: Generation,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        if !self.set_generation(replica, generation) {
            return actions;
        }
        let Some(r) = self.replicas.get_mut(replica) else {
            return actions;
        };
        if r.state.is_linked() {
            // A new connection while the controller still sends on the old
            // one (its down report is lost or yet to come): the old one is
            // gone, and what it owed is sent again below.
            let old = r.state;
            self.mark_offline(now, replica, &mut actions);
            tracing::debug!(
                replica,
                ?old,
                generation,
                "reconnected without a down report"
            );
        }
        let Some(r) = self.replicas.get_mut(replica) else {
            return actions;
        };
        if r.state == ReplicaState::Removed {
            r.admission = Some(Admission::Refused);
            actions.push(Action::Drop {
                replica,
                generation,
                reason: "not a member of the volume".into(),
                redial_after: Duration::ZERO,
            });
            return actions;
        }
        if let Some(wait) = r
            .redial_at
            .filter(|_| r.state == ReplicaState::Failed)
            .map(|at| at.saturating_duration_since(now))
            .filter(|wait| !wait.is_zero())
        {
            // Back before its backoff ran out (the shell should not have
            // dialled yet): not taken, told again how long to wait.
            r.admission = Some(Admission::Refused);
            actions.push(Action::Drop {
                replica,
                generation,
                reason: format!("failed {} times in a row: backing off", r.failures),
                redial_after: wait,
            });
            return actions;
        }
        r.redial_at = None;
        (r.state, r.admission) = match r.missed_from {
            None => (ReplicaState::Healthy, Some(Admission::Healthy)),
            Some(from_io_seq) => (
                ReplicaState::Degraded,
                Some(Admission::Rebuild { from_io_seq }),
            ),
        };
        tracing::info!(replica, state = ?r.state, "replica connected");
        if r.state == ReplicaState::Degraded {
            self.start_rebuild(now, replica, &mut actions);
        }
        // Everything still pending that it has not acknowledged goes to it
        // again, in io_seq order, before any new request.
        let resend: Vec<(u64, Op)> = self
            .pending
            .iter()
            .filter(|(_, p)| {
                p.op.mutates() && !p.op.is_barrier() && !p.completed && !p.acked.contains(&replica)
            })
            .map(|(seq, p)| (*seq, p.op.clone()))
            .collect();
        for (seq, op) in resend {
            if let Some(p) = self.pending.get_mut(&seq) {
                p.sent.insert(replica, now);
            }
            actions.push(self.send(replica, seq, &op));
        }
        // Reads waiting for a healthy replica can go now.
        self.dispatch_waiting_reads(now, &mut actions);
        self.update_quorum(now);
        self.settle(now, &mut actions);
        actions
    }

    /// Connection `generation` of a replica's link is gone (or, with the
    /// generation of its last connection, a redial failed). The report of
    /// a connection older than the current one changes nothing.
    pub fn on_disconnected(
        &mut self,
        now: Instant,
        replica: ReplicaIndex,
        generation: Generation,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        if generation < self.generation(replica) {
            return actions;
        }
        self.mark_offline(now, replica, &mut actions);
        self.settle(now, &mut actions);
        actions
    }

    /// The shell could not (re)claim a replica because a newer target owns
    /// the volume: stop for good.
    pub fn on_fenced(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        self.fence(now, &mut actions);
        actions
    }

    /// The link did not send a packet decided for its connection
    /// `generation` (that connection was gone when the packet got there).
    /// For the current connection the replica lacks it: the link is dropped
    /// (what it owes is sent again on the next connection); for an older
    /// one, nothing to do (its down report did or will do that).
    pub fn on_not_sent(
        &mut self,
        now: Instant,
        replica: ReplicaIndex,
        generation: Generation,
        io_seq: u64,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        if generation != self.generation(replica) {
            return actions;
        }
        self.drop_replica(
            now,
            replica,
            format!("io_seq {io_seq} could not be sent on its connection"),
            &mut actions,
        );
        self.settle(now, &mut actions);
        actions
    }

    /// A reply from a replica on its connection `generation` (a reply of
    /// another connection is ignored).
    pub fn on_reply(
        &mut self,
        now: Instant,
        replica: ReplicaIndex,
        generation: Generation,
        packet: Packet,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        if packet.epoch != self.config.epoch
            || packet.session_id != self.config.session_id
            || generation != self.generation(replica)
        {
            return actions;
        }
        if is_rebuild_report(&packet.message) {
            self.on_rebuild_report(now, replica, packet, &mut actions);
            self.settle(now, &mut actions);
            return actions;
        }
        let io_seq = packet.io_seq;
        let Some(pending) = self.pending.get_mut(&io_seq) else {
            // A late reply to something completed already (e.g. a slow
            // replica's ack): nothing to do.
            return actions;
        };
        if !pending.sent.contains_key(&replica) {
            return actions;
        }
        match packet.message {
            Message::Ack(opcode) if opcode == pending.op.opcode() => {
                pending.acked.insert(replica);
                pending.refused.remove(&replica);
                if let Some(r) = self.replicas.get_mut(replica) {
                    r.acked_max = r.acked_max.max(io_seq);
                    if r.state == ReplicaState::Healthy {
                        // Proven sound again: the next failure starts the
                        // backoff over.
                        r.failures = 0;
                    }
                }
            }
            Message::ReadData(data) if matches!(pending.op, Op::Read { .. }) => {
                let expected = match pending.op {
                    Op::Read { len_bytes, .. } => len_bytes as usize,
                    _ => 0,
                };
                if data.len() == expected {
                    let tag = pending.tag;
                    self.remove_pending(io_seq);
                    actions.push(complete(tag, Ok(Completion::Data(data))));
                } else {
                    pending.failed.insert(replica);
                    self.drop_replica(
                        now,
                        replica,
                        format!("read reply of {} bytes, expected {expected}", data.len()),
                        &mut actions,
                    );
                }
            }
            Message::SnapshotListing(listing) if matches!(pending.op, Op::ListSnapshots { .. }) => {
                let tag = pending.tag;
                self.remove_pending(io_seq);
                actions.push(complete(tag, Ok(Completion::Snapshots(listing))));
            }
            Message::Error(error) => {
                self.on_error_reply(
                    now,
                    replica,
                    io_seq,
                    error.status,
                    error.detail,
                    &mut actions,
                );
            }
            other => {
                self.drop_replica(
                    now,
                    replica,
                    format!("unexpected reply {:#06x}", other.wire_opcode()),
                    &mut actions,
                );
            }
        }
        self.settle(now, &mut actions);
        actions
    }

    /// Time passes: drop slow replicas, fail requests held too long.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        let timeout = self.config.ack_timeout;
        let slow: BTreeSet<ReplicaIndex> = self
            .pending
            .values()
            .flat_map(|p| {
                p.sent.iter().filter(move |(r, at)| {
                    !p.acked.contains(r)
                        && !p.failed.contains(r)
                        && now.saturating_duration_since(**at) >= timeout
                })
            })
            .map(|(r, _)| *r)
            .filter(|r| self.replicas.get(*r).is_some_and(|x| x.state.is_linked()))
            .collect();
        for replica in slow {
            self.drop_replica(
                now,
                replica,
                format!("no acknowledgement within {timeout:?}"),
                &mut actions,
            );
        }
        let retry: Vec<ReplicaIndex> = (0..self.replicas.len())
            .filter(|i| {
                self.replicas[*i].state == ReplicaState::Degraded
                    && self.replicas[*i].rebuild.is_none()
                    && self.replicas[*i].retry_at.is_some_and(|t| now >= t)
            })
            .collect();
        for replica in retry {
            self.drop_replica(
                now,
                replica,
                "degraded without a rebuild: reconnecting to start one".into(),
                &mut actions,
            );
        }
        self.settle(now, &mut actions);
        actions
    }

    /// The current rebuild of `replica`, if one was started.
    pub fn rebuild(&self, replica: ReplicaIndex) -> Option<RebuildRun> {
        self.replicas.get(replica).and_then(|r| r.rebuild)
    }

    /// On connect of a degraded replica: start its rebuild from an
    /// eligible source, or schedule a retry (module doc).
    fn start_rebuild(&mut self, now: Instant, replica: ReplicaIndex, actions: &mut Vec<Action>) {
        let Some(missed_from) = self.replicas.get(replica).and_then(|r| r.missed_from) else {
            return;
        };
        let source = (0..self.replicas.len()).find(|s| {
            *s != replica
                && self.replicas[*s].state == ReplicaState::Healthy
                && self
                    .pending
                    .values()
                    .filter(|p| p.op.mutates() && (p.completed || p.acked.contains(&replica)))
                    .all(|p| p.acked.contains(s))
        });
        let Some(r) = self.replicas.get_mut(replica) else {
            return;
        };
        let Some(source) = source else {
            tracing::info!(replica, "no rebuild source yet: retrying later");
            r.retry_at = Some(now + REBUILD_RETRY);
            return;
        };
        let run = RebuildRun {
            source,
            from_io_seq: missed_from.saturating_sub(1),
            first_live_io_seq: self.next_io_seq,
            accepted: false,
            progress: RebuildProgress::default(),
        };
        tracing::info!(
            replica,
            source,
            from_io_seq = run.from_io_seq,
            "starting a rebuild"
        );
        r.rebuild = Some(run);
        // This run lists the peer's snapshots after every snapshot taken so far.
        r.snapshot_missed_in_rebuild = None;
        r.retry_at = None;
        actions.push(Action::StartRebuild {
            replica,
            generation: r.generation,
            source,
            from_io_seq: run.from_io_seq,
            first_live_io_seq: run.first_live_io_seq,
        });
    }

    fn on_rebuild_report(
        &mut self,
        now: Instant,
        replica: ReplicaIndex,
        packet: Packet,
        actions: &mut Vec<Action>,
    ) {
        let Some(r) = self.replicas.get_mut(replica) else {
            return;
        };
        let Some(run) = r.rebuild.as_mut() else {
            return;
        };
        if run.first_live_io_seq != packet.io_seq || !r.state.is_linked() {
            return;
        }
        match packet.message {
            Message::Ack(Opcode::RebuildStart) => {
                run.accepted = true;
                r.state = ReplicaState::Rebuilding;
            }
            Message::RebuildProgress(progress) => run.progress = progress,
            Message::RebuildDone(done) => {
                if let Some(seq) = r.snapshot_missed_in_rebuild.take() {
                    tracing::info!(
                        replica,
                        through_io_seq = done.through_io_seq,
                        snapshot_io_seq = seq,
                        "rebuild done, but a snapshot changed meanwhile: rebuilding again"
                    );
                    r.state = ReplicaState::Degraded;
                    r.rebuild = None;
                    r.missed_from = Some(r.missed_from.map_or(seq, |m| m.min(seq)));
                    r.retry_at = Some(now);
                    return;
                }
                tracing::info!(
                    replica,
                    through_io_seq = done.through_io_seq,
                    "rebuild done: replica healthy"
                );
                r.state = ReplicaState::Healthy;
                r.rebuild = None;
                r.missed_from = None;
                r.failures = 0;
                r.no_space = false;
                r.redial_at = None;
                self.update_quorum(now);
                self.dispatch_waiting_reads(now, actions);
            }
            Message::RebuildAbort(abort) => {
                tracing::warn!(replica, status = ?abort.status, detail = %abort.detail, "rebuild aborted");
                self.rebuild_failed(now, replica, abort.status, abort.detail, actions);
            }
            Message::Error(error) => {
                tracing::warn!(replica, status = ?error.status, detail = %error.detail, "rebuild refused");
                self.rebuild_failed(now, replica, error.status, error.detail, actions);
            }
            _ => {}
        }
    }

    /// A rebuild of `replica` was aborted or refused. For lack of space or a
    /// poisoned volume the replica itself failed (rule 6): dropped, it backs
    /// off. Otherwise (the source went away, the session was cut...) it stays
    /// degraded and is offered a new rebuild on a fresh link after
    /// [`REBUILD_RETRY`], or after its failure backoff if that is longer:
    /// a rebuild that keeps failing is retried less and less often.
    fn rebuild_failed(
        &mut self,
        now: Instant,
        replica: ReplicaIndex,
        status: Status,
        detail: String,
        actions: &mut Vec<Action>,
    ) {
        if matches!(status, Status::NoSpace | Status::VolumePoisoned) {
            let reason = format!("rebuild failed: {status:?}: {detail}");
            self.fail_replica(now, replica, status, reason, actions);
            return;
        }
        let Some(r) = self.replicas.get_mut(replica) else {
            return;
        };
        r.failures = r.failures.saturating_add(1);
        r.state = ReplicaState::Degraded;
        r.rebuild = None;
        r.retry_at = Some(now + REBUILD_RETRY.max(failed_retry(r.failures)));
    }

    fn on_error_reply(
        &mut self,
        now: Instant,
        replica: ReplicaIndex,
        io_seq: u64,
        status: Status,
        detail: String,
        actions: &mut Vec<Action>,
    ) {
        if status != Status::StaleEpoch && self.barrier_io_seq() == Some(io_seq) {
            // Judged when every replica has answered (module doc).
            if let Some(p) = self.pending.get_mut(&io_seq) {
                p.failed.insert(replica);
            }
            if let Some(b) = self.barrier.as_mut() {
                b.errors
                    .push(format!("replica {replica}: {status:?}: {detail}"));
            }
            return;
        }
        if status == Status::StaleEpoch {
            self.fence(now, actions);
            return;
        }
        let healthy = self
            .replicas
            .get(replica)
            .is_some_and(|r| r.state == ReplicaState::Healthy);
        let Some(p) = self.pending.get_mut(&io_seq) else {
            return;
        };
        if !p.op.mutates() {
            if status == Status::BadRequest {
                // The request itself is wrong (the same on every replica):
                // fail it, keep the replica.
                if let Some(p) = self.remove_pending(io_seq) {
                    actions.push(complete(p.tag, Err(VolumeError::Refused(detail))));
                }
            } else {
                // A read error: the replica leaves the healthy set, the read
                // is retried on another.
                p.failed.insert(replica);
                self.fail_replica(
                    now,
                    replica,
                    status,
                    format!("{status:?}: {detail}"),
                    actions,
                );
            }
            return;
        }
        // A mutating request: the replica failed it (rule 6). It is judged
        // once the request is resolved: if another replica holds it, this
        // one leaves the healthy set as having missed it; if none does,
        // nothing diverged.
        p.failed.insert(replica);
        p.refused.insert(replica, status);
        let refusal = match status {
            Status::NoSpace => Some(VolumeError::NoSpace),
            Status::BadRequest => Some(VolumeError::Refused(detail.clone())),
            _ => None,
        };
        if healthy && !matches!(p.refusal, Some(VolumeError::NoSpace)) {
            if let Some(refusal) = refusal.clone() {
                p.refusal = Some(refusal);
            }
        }
        if refusal.is_none() {
            // The replica is in trouble (IO error, poisoned, smaller than
            // the volume because it missed a grow, busy...): it leaves the
            // healthy set now; the request goes on with the others.
            p.refused.remove(&replica);
            self.fail_replica(
                now,
                replica,
                status,
                format!("{status:?}: {detail}"),
                actions,
            );
        }
    }

    /// `replica` failed (rule 6): its link is dropped, it is
    /// [`ReplicaState::Failed`] and dialled again only after
    /// [`failed_retry`] of its failures in a row. Counted once per link: a
    /// replica already without one is left alone.
    fn fail_replica(
        &mut self,
        now: Instant,
        replica: ReplicaIndex,
        status: Status,
        reason: String,
        actions: &mut Vec<Action>,
    ) {
        let Some(r) = self.replicas.get_mut(replica) else {
            return;
        };
        if !r.state.is_linked() {
            return;
        }
        r.failures = r.failures.saturating_add(1);
        if status == Status::NoSpace {
            r.no_space = true;
        }
        let wait = failed_retry(r.failures);
        let failures = r.failures;
        tracing::warn!(replica, %reason, failures, ?wait, "replica failed: backing off");
        self.drop_link(now, replica, reason, wait, actions);
        if let Some(r) = self.replicas.get_mut(replica) {
            if r.state == ReplicaState::Offline {
                r.state = ReplicaState::Failed;
                r.redial_at = Some(now + wait);
            }
        }
        self.update_quorum(now);
    }

    /// Completes whatever can complete, retries reads, fails what waited
    /// too long, and forgets what every replica has answered. Called after
    /// every event.
    fn settle(&mut self, now: Instant, actions: &mut Vec<Action>) {
        self.update_quorum(now);
        let cf = self.config.cf;
        let read_only = self.is_read_only(now);
        let cannot_allocate = self.cannot_allocate();
        let is_healthy = |r: &ReplicaIndex| {
            self.replicas
                .get(*r)
                .is_some_and(|x| x.state == ReplicaState::Healthy)
        };
        let mut answers = Vec::new();
        for (seq, p) in &self.pending {
            if p.completed || p.op.is_barrier() {
                continue;
            }
            if p.op.mutates() {
                let healthy_acks = p.acked.iter().filter(|r| is_healthy(r)).count();
                let healthy_owed = p.owed().filter(|r| is_healthy(r)).count();
                if healthy_acks >= cf {
                    answers.push((*seq, Ok(Completion::Done)));
                } else if let Some(refusal) = p
                    .refusal
                    .clone()
                    .filter(|_| healthy_acks + healthy_owed < cf)
                {
                    // Healthy replicas refused it and too few are left to
                    // take it (rule 6).
                    answers.push((*seq, Err(refusal)));
                } else if cannot_allocate {
                    answers.push((*seq, Err(VolumeError::NoSpace)));
                } else if read_only {
                    answers.push((*seq, Err(VolumeError::ReadOnly { cf })));
                }
            } else if p.sent.keys().all(|r| p.failed.contains(r))
                && self.healthy() == 0
                && now.saturating_duration_since(p.submitted) >= self.config.hold
            {
                answers.push((*seq, Err(VolumeError::Unavailable)));
            }
        }
        for (seq, result) in answers {
            let Some(p) = self.pending.get_mut(&seq) else {
                continue;
            };
            p.completed = true;
            actions.push(complete(p.tag, result));
            if !p.op.mutates() {
                self.remove_pending(seq);
                continue;
            }
            // Offline replicas will never get it (it is not resent once
            // answered).
            let acked = p.acked.clone();
            let unreached: Vec<ReplicaIndex> = (0..self.replicas.len())
                .filter(|r| !p.acked.contains(r) && !p.sent.contains_key(r))
                .collect();
            self.note_missed(seq, &acked, &unreached);
        }
        self.fail_refusers(now, actions);
        let finished: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.completed && p.owed().next().is_none())
            .map(|(seq, _)| *seq)
            .collect();
        for seq in finished {
            if let Some(p) = self.remove_pending(seq) {
                let lacking: Vec<ReplicaIndex> = (0..self.replicas.len())
                    .filter(|r| !p.acked.contains(r))
                    .collect();
                self.note_missed(seq, &p.acked, &lacking);
            }
        }
        self.dispatch_waiting_reads(now, actions);
        self.advance_barrier(now, actions);
    }

    /// Replicas that refused a mutating request that is answered and that
    /// another replica holds: they lack it, so they leave the healthy set
    /// as having missed it, and back off (rule 6).
    fn fail_refusers(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let mut failed = Vec::new();
        for (seq, p) in self.pending.iter_mut() {
            if p.completed && !p.acked.is_empty() && !p.refused.is_empty() {
                for (replica, status) in std::mem::take(&mut p.refused) {
                    failed.push((*seq, replica, status));
                }
            }
        }
        for (seq, replica, status) in failed {
            self.fail_replica(
                now,
                replica,
                status,
                format!("answered {status:?} to io_seq {seq}, which another replica took"),
                actions,
            );
        }
    }

    fn barrier_io_seq(&self) -> Option<u64> {
        self.barrier.as_ref().and_then(|b| b.io_seq)
    }

    /// Starts the barrier when it may go, fails it when quorum stayed away
    /// too long, and resolves it once every replica it went to answered.
    fn advance_barrier(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let Some(barrier) = self.barrier.as_ref() else {
            return;
        };
        match barrier.io_seq {
            None => {
                let earlier_unanswered = self
                    .pending
                    .values()
                    .any(|p| p.op.mutates() && !p.completed);
                let quorum = self.healthy() >= self.barrier_cf(&barrier.op);
                if quorum && !earlier_unanswered {
                    self.start_barrier(now, actions);
                } else if !quorum
                    && now.saturating_duration_since(barrier.submitted) >= self.config.hold
                {
                    let tag = barrier.tag;
                    tracing::warn!(op = ?barrier.op, "no quorum within the grace period: failing");
                    self.barrier = None;
                    actions.push(complete(
                        tag,
                        Err(VolumeError::ReadOnly { cf: self.config.cf }),
                    ));
                    self.release_held(now, actions);
                }
            }
            Some(seq) => {
                let answered = self
                    .pending
                    .get(&seq)
                    .is_none_or(|p| p.owed().next().is_none());
                if answered {
                    self.resolve_barrier(now, seq, actions);
                }
            }
        }
    }

    fn start_barrier(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let Some(barrier) = self.barrier.as_mut() else {
            return;
        };
        let io_seq = self.next_io_seq;
        self.next_io_seq += 1;
        barrier.io_seq = Some(io_seq);
        let pending = Pending {
            tag: barrier.tag,
            op: barrier.op.clone(),
            submitted: now,
            sent: self
                .replicas
                .iter()
                .enumerate()
                .filter(|(_, r)| r.state == ReplicaState::Healthy)
                .map(|(i, _)| (i, now))
                .collect(),
            acked: BTreeSet::new(),
            failed: BTreeSet::new(),
            refused: BTreeMap::new(),
            refusal: None,
            completed: false,
        };
        tracing::info!(io_seq, op = ?pending.op, replicas = pending.sent.len(), "barrier sent");
        for replica in pending.sent.keys() {
            actions.push(self.send(*replica, io_seq, &pending.op));
        }
        self.insert_pending(io_seq, pending);
    }

    fn resolve_barrier(&mut self, now: Instant, seq: u64, actions: &mut Vec<Action>) {
        let Some(barrier) = self.barrier.take() else {
            return;
        };
        let Some(p) = self.remove_pending(seq) else {
            // Failed already (fenced).
            self.release_held(now, actions);
            return;
        };
        let healthy_acks = p
            .acked
            .iter()
            .filter(|r| {
                self.replicas
                    .get(**r)
                    .is_some_and(|x| x.state == ReplicaState::Healthy)
            })
            .count();
        let cf = self.barrier_cf(&p.op);
        if healthy_acks >= cf {
            tracing::info!(io_seq = seq, op = ?p.op, acks = healthy_acks, "barrier done at quorum");
            for replica in &p.failed {
                self.drop_replica(
                    now,
                    *replica,
                    format!("failed {:?} that a quorum took", p.op.opcode()),
                    actions,
                );
            }
            // A membership record is not data: a replica without it gets it
            // when its link comes up, and is not degraded for it.
            if !matches!(p.op, Op::SetMembership { .. }) {
                let lacking: Vec<ReplicaIndex> = (0..self.replicas.len())
                    .filter(|r| !p.acked.contains(r))
                    .collect();
                self.note_missed(seq, &p.acked, &lacking);
            }
            if matches!(p.op, Op::SnapshotCreate { .. } | Op::SnapshotDestroy { .. }) {
                for r in self.replicas.iter_mut().filter(|r| r.rebuild.is_some()) {
                    r.snapshot_missed_in_rebuild =
                        Some(r.snapshot_missed_in_rebuild.map_or(seq, |m| m.min(seq)));
                }
            }
            if let Op::Resize { size_bytes } = p.op {
                self.config.size_bytes = size_bytes;
            }
            if let Op::SetMembership { change, new_cf, .. } = p.op {
                self.commit_membership(now, change, new_cf, actions);
            }
            actions.push(complete(p.tag, Ok(Completion::Done)));
        } else {
            let what = match &p.op {
                Op::SnapshotCreate { name } => format!("snapshot {:?}", name.as_str()),
                Op::SnapshotDestroy { name } => {
                    format!("destroying snapshot {:?}", name.as_str())
                }
                Op::Resize { size_bytes } => format!("resize to {size_bytes} bytes"),
                Op::SetMembership { record, .. } => {
                    format!("membership generation {}", record.generation)
                }
                other => format!("{other:?}"),
            };
            let errors = if barrier.errors.is_empty() {
                "no other answer".to_owned()
            } else {
                barrier.errors.join("; ")
            };
            let detail = format!(
                "{what} failed: {healthy_acks} of the {cf} healthy replicas needed took it ({errors})"
            );
            tracing::warn!(io_seq = seq, %detail, "barrier failed");
            if let Op::SnapshotCreate { name } = &p.op {
                let undo = Op::SnapshotDestroy { name: name.clone() };
                let undo_seq = self.next_io_seq;
                self.next_io_seq += 1;
                for replica in &p.acked {
                    if self
                        .replicas
                        .get(*replica)
                        .is_some_and(|r| r.state.is_linked())
                    {
                        actions.push(self.send(*replica, undo_seq, &undo));
                    }
                }
            }
            actions.push(complete(p.tag, Err(VolumeError::Refused(detail))));
        }
        self.release_held(now, actions);
    }

    /// Healthy acknowledgements a barrier needs: the CF, or for a
    /// membership record the lower of the old and new CF (rule 5).
    fn barrier_cf(&self, op: &Op) -> usize {
        match op {
            Op::SetMembership { new_cf, .. } => self.config.cf.min(*new_cf).max(1),
            _ => self.config.cf,
        }
    }

    /// A membership record committed: the member set and CF follow it.
    fn commit_membership(
        &mut self,
        now: Instant,
        change: MemberChange,
        new_cf: usize,
        actions: &mut Vec<Action>,
    ) {
        match change {
            MemberChange::None => {}
            MemberChange::Add => {
                tracing::info!(replica = self.replicas.len(), "member added: full rebuild");
                self.replicas
                    .push(Replica::new(ReplicaState::Offline, Some(0)));
                self.config.replicas = self.replicas.len();
            }
            MemberChange::Remove(replica) => {
                if self.replicas.get(replica).is_some() {
                    tracing::info!(replica, "member removed");
                    self.drop_replica(now, replica, "removed from the volume".into(), actions);
                    if let Some(r) = self.replicas.get_mut(replica) {
                        r.state = ReplicaState::Removed;
                        r.missed_from = Some(0);
                    }
                }
            }
        }
        self.config.cf = new_cf.max(1);
        self.update_quorum(now);
    }

    /// The barrier is over: held requests go on, in order.
    fn release_held(&mut self, now: Instant, actions: &mut Vec<Action>) {
        while let Some((tag, op)) = self.held.pop_front() {
            self.dispatch(now, tag, op, actions);
        }
    }

    /// Request `seq` is held by the replicas in `acked`; those in `lacking`
    /// do not have it: they must be rebuilt from `seq` before they may
    /// count again.
    fn note_missed(&mut self, seq: u64, acked: &BTreeSet<ReplicaIndex>, lacking: &[ReplicaIndex]) {
        if acked.is_empty() {
            return;
        }
        for index in lacking {
            let Some(replica) = self.replicas.get_mut(*index) else {
                continue;
            };
            replica.missed_from = Some(replica.missed_from.map_or(seq, |m| m.min(seq)));
            if replica.state == ReplicaState::Healthy {
                tracing::warn!(
                    replica = index,
                    io_seq = seq,
                    "replica missed a write: degraded"
                );
                replica.state = ReplicaState::Degraded;
            }
        }
    }

    /// Sends reads that have no live attempt to a healthy replica.
    fn dispatch_waiting_reads(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let waiting: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| !p.op.mutates() && p.sent.keys().all(|r| p.failed.contains(r)))
            .map(|(seq, _)| *seq)
            .collect();
        for seq in waiting {
            let Some(failed) = self.pending.get(&seq).map(|p| p.failed.clone()) else {
                continue;
            };
            let Some(reader) = self.pick_reader(&failed) else {
                continue;
            };
            if let Some(p) = self.pending.get_mut(&seq) {
                p.sent.insert(reader, now);
                let op = p.op.clone();
                actions.push(self.send(reader, seq, &op));
            }
        }
    }

    fn pick_reader(&mut self, exclude: &BTreeSet<ReplicaIndex>) -> Option<ReplicaIndex> {
        let n = self.replicas.len();
        for step in 0..n {
            let index = (self.next_reader + step) % n;
            if self.replicas[index].state == ReplicaState::Healthy && !exclude.contains(&index) {
                self.next_reader = (index + 1) % n;
                return Some(index);
            }
        }
        // Every healthy replica failed this read once: try them again.
        (0..n).find(|i| self.replicas[*i].state == ReplicaState::Healthy)
    }

    /// Drops `replica`'s link; the shell dials it again at once.
    fn drop_replica(
        &mut self,
        now: Instant,
        replica: ReplicaIndex,
        reason: String,
        actions: &mut Vec<Action>,
    ) {
        self.drop_link(now, replica, reason, Duration::ZERO, actions);
    }

    fn drop_link(
        &mut self,
        now: Instant,
        replica: ReplicaIndex,
        reason: String,
        redial_after: Duration,
        actions: &mut Vec<Action>,
    ) {
        if self
            .replicas
            .get(replica)
            .is_none_or(|r| !r.state.is_linked())
        {
            return;
        }
        tracing::warn!(replica, %reason, "dropping replica");
        actions.push(Action::Drop {
            replica,
            generation: self.generation(replica),
            reason,
            redial_after,
        });
        self.mark_offline(now, replica, actions);
    }

    fn mark_offline(&mut self, now: Instant, replica: ReplicaIndex, actions: &mut Vec<Action>) {
        let Some(r) = self.replicas.get_mut(replica) else {
            return;
        };
        if !matches!(r.state, ReplicaState::Removed | ReplicaState::Failed) {
            r.state = ReplicaState::Offline;
        }
        r.rebuild = None;
        r.retry_at = None;
        let mut lacks = Vec::new();
        for (seq, p) in self.pending.iter_mut() {
            if !p.sent.contains_key(&replica) || p.acked.contains(&replica) {
                continue;
            }
            if p.op.mutates() && !p.completed {
                // Sent again when it reconnects, if still unanswered.
                p.sent.remove(&replica);
            } else {
                // A read to retry elsewhere, or an answered write this
                // replica now certainly lacks.
                p.failed.insert(replica);
                if p.op.mutates() {
                    lacks.push((*seq, p.acked.clone()));
                }
            }
        }
        // Noted now, not when the entry goes (others may still owe it): a
        // quick reconnect must not find it complete.
        for (seq, acked) in lacks {
            self.note_missed(seq, &acked, &[replica]);
        }
        self.update_quorum(now);
        self.dispatch_waiting_reads(now, actions);
    }

    fn fence(&mut self, now: Instant, actions: &mut Vec<Action>) {
        if !self.fenced {
            tracing::error!("a newer target owns the volume: this target is fenced");
        }
        self.fenced = true;
        self.pending_bytes = 0;
        for (_, p) in std::mem::take(&mut self.pending) {
            actions.push(complete(p.tag, Err(VolumeError::Fenced)));
        }
        if let Some(b) = self.barrier.take() {
            // Once sent, its entry was in `pending`, answered above.
            if b.io_seq.is_none() {
                actions.push(complete(b.tag, Err(VolumeError::Fenced)));
            }
        }
        for (tag, _) in std::mem::take(&mut self.held) {
            actions.push(complete(tag, Err(VolumeError::Fenced)));
        }
        for index in 0..self.replicas.len() {
            if self.replicas[index].state.is_linked() {
                actions.push(Action::Drop {
                    replica: index,
                    generation: self.replicas[index].generation,
                    reason: "fenced".into(),
                    redial_after: Duration::ZERO,
                });
                self.replicas[index].state = ReplicaState::Offline;
            }
        }
        self.update_quorum(now);
    }

    fn update_quorum(&mut self, now: Instant) {
        if self.has_quorum() {
            if self.quorum_lost_at.take().is_some() {
                tracing::info!(healthy = self.healthy(), "quorum: volume is read-write");
            }
        } else if self.quorum_lost_at.is_none() {
            tracing::warn!(
                healthy = self.healthy(),
                cf = self.config.cf,
                "quorum lost: writes are held"
            );
            self.quorum_lost_at = Some(now);
        }
    }

    fn check_range(&self, op: &Op) -> Option<VolumeError> {
        let (offset, len) = match op {
            Op::Read { offset, len_bytes }
            | Op::Unmap { offset, len_bytes }
            | Op::WriteZeroes { offset, len_bytes } => (*offset, u64::from(*len_bytes)),
            Op::Write { offset, data, .. } => (*offset, data.len() as u64),
            Op::Resize { size_bytes } if *size_bytes < self.config.size_bytes => {
                return Some(VolumeError::Refused(format!(
                    "a volume cannot shrink: {} bytes now, {size_bytes} asked",
                    self.config.size_bytes
                )))
            }
            Op::Flush
            | Op::SnapshotCreate { .. }
            | Op::SnapshotDestroy { .. }
            | Op::Resize { .. }
            | Op::ListSnapshots { .. }
            | Op::SetMembership { .. } => return None,
        };
        match offset.checked_add(len) {
            Some(end) if end <= self.config.size_bytes && len > 0 => None,
            _ => Some(VolumeError::OutOfRange),
        }
    }

    fn send(&self, replica: ReplicaIndex, io_seq: u64, op: &Op) -> Action {
        self.send_message(replica, io_seq, op.message())
    }

    /// Sends `message` to `replica` in this target's session as `io_seq`.
    fn send_message(&self, replica: ReplicaIndex, io_seq: u64, message: Message) -> Action {
        Action::Send {
            replica,
            generation: self.generation(replica),
            packet: Packet {
                session_id: self.config.session_id,
                epoch: self.config.epoch,
                io_seq,
                message,
            },
        }
    }
}

/// Replies about a rebuild, matched by the run's io_seq rather than by a
/// pending request.
fn is_rebuild_report(message: &Message) -> bool {
    match message {
        Message::Ack(Opcode::RebuildStart)
        | Message::RebuildProgress(_)
        | Message::RebuildDone(_)
        | Message::RebuildAbort(_) => true,
        Message::Error(e) => e.request_opcode == Opcode::RebuildStart.to_u16(),
        _ => false,
    }
}

fn complete(tag: Tag, result: Result<Completion, VolumeError>) -> Action {
    Action::Complete { tag, result }
}

#[cfg(test)]
mod tests;
