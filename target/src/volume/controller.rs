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
//! the same numbers; rules 5 to 7 are this controller's own):
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
//!      (best effort, its own io_seq, answers ignored), and a grow is
//!      undone the same way: the replicas that took it are shrunk back
//!      (one not linked then is shrunk when it connects); the replica
//!      refuses a shrink over data, and nothing was written there.
//!    - without quorum it waits up to the grace period from its
//!      submission, then fails with [`VolumeError::ReadOnly`].
//!
//!    Held requests then go on in their order.
//!
//! 5. **Membership changes are barriers too** ([`Op::SetMembership`],
//!    design in `super::membership`): the record goes to every healthy
//!    replica and commits with `min(cf, new_cf)` healthy acknowledgements
//!    (for a removal, of members that stay: each holds, behind the record
//!    on its link, every request before it);
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
//! 7. **A checksum error is repaired, not a failure** (`repair`;
//!    docs/checksums-design.md, "Reads"). A replica that answers a read
//!    with `ChecksumError` (blocks that failed their checksum there, never
//!    data) stays healthy; its bad blocks are counted
//!    ([`Controller::checksum_errors`]) and, past [`CHECKSUM_WARN_BLOCKS`]
//!    within [`CHECKSUM_ERROR_WINDOW`], reported
//!    ([`Controller::checksum_warning`]). The read is assembled from
//!    pieces of its own: what the replica vouched for from any healthy
//!    replica, each bad range from a healthy replica that has not found it
//!    bad, in turn until one has a good copy. With none, the read fails
//!    with [`VolumeError::Unrecoverable`] (MEDIUM ERROR). Once it is
//!    answered, the good copies are written back as ordinary writes (own
//!    io_seq, every linked replica, tag [`REPAIR_TAG`], never completed to
//!    the shell) except where a write dispatched after the read, held, or
//!    still pending makes that moot; each acknowledged at quorum counts
//!    its blocks ([`Controller::blocks_repaired`]).
//!
//! 8. **Scrub compares what the same writes left** (`scrub`; the task that
//!    walks the volume is `crate::volume::scrub`): an [`Op::Digest`] gets
//!    the next io_seq like any request and goes to every *healthy* replica,
//!    behind the earlier requests on each link; a replica orders it like a
//!    read of its extent (after every earlier overlapping write, before
//!    every later one), so every healthy replica digests the content of
//!    exactly the writes numbered below it, whatever IO runs meanwhile. It
//!    completes once each replica it went to answered, failed it or was
//!    dropped ([`Completion::Digests`]); an error about the request
//!    (unknown opcode, bad request) leaves the replica as it is, an IO
//!    error fails it like a read error. An [`Op::ReadFrom`] reads one named
//!    healthy replica, never another. An [`Op::Repair`] is an ordinary
//!    write (next io_seq, every linked replica) dispatched only if no other
//!    mutating request overlapping the extent of its digest (`guard`) was
//!    dispatched since that digest, so a repair never puts older data
//!    over a newer write: otherwise it is refused as moot and the scrub
//!    compares the range again. Scrub takes no range lock and holds no
//!    write: it costs IO only what its own requests cost.
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
//! grow): grown first, then rebuilt from its durable io_seq; an unfinished rebuild, first
//! reached after the open and behind what the open saw
//! ([`ControllerConfig::max_received_at_open`]) or what a member reached
//! later reports (it is behind that one: degraded from when it was first
//! seen), or reporting less than the
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
//! - no such source at connect: its link is dropped at once and redialled
//!   after [`REBUILD_RETRY`] (a live write sent before its `RebuildStart`
//!   would raise its completion watermark over what it missed); a rebuild
//!   aborted: the replica stays degraded (its watermark held by the
//!   aborted run) and its link is dropped after [`REBUILD_RETRY`] so that
//!   the next connect tries again (a retry needs a fresh link, see the
//!   first rule);
//! - the replica is [`ReplicaState::Rebuilding`] once it accepted
//!   (`Ack(RebuildStart)`), follows `RebuildProgress`, and on `RebuildDone`
//!   becomes healthy: `missed_from` is cleared, it counts for quorum and
//!   serves reads. Rebuild reports carry `J` as io_seq: a report of another
//!   run is ignored.
//!
//! Where each part lives: this file holds the types, the controller's state
//! and its queries; the sub-machines are in submodules, each an
//! `impl Controller` of its own: `ops` (submitting requests, sending them,
//! taking replies in), `pending` (the pending table, completion at quorum,
//! slow replicas), `repair` (reads a replica found bad, rule 7), `barrier` (snapshots, resizes, membership records),
//! `rebuild` (rebuild orchestration), `admission` (connects, hellos and
//! probes: who is taken back and how), `links` (links going down, drops,
//! fencing) and `failed` (failed replicas, their backoff, lack of space).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use cstor_proto::{
    DigestReply, Extent, Membership, Message, Name, Opcode, Packet, SnapshotListRequest,
    SnapshotListing, Write,
};

pub use crate::limits::{
    failed_retry, CHECKSUM_ERROR_WINDOW, CHECKSUM_WARN_BLOCKS, FAILED_RETRY_MAX, FAILED_RETRY_MIN,
    MAX_CHECKSUM_ERROR_EVENTS, MAX_HELD, MAX_OWED_BYTES, MAX_OWED_REQUESTS, REBUILD_RETRY,
};

mod admission;
mod barrier;
mod failed;
mod links;
mod ops;
mod pending;
mod rebuild;
mod repair;
mod scrub;

pub use admission::{Admission, ReplicaHello};
use barrier::Barrier;
pub use barrier::MemberChange;
use pending::Pending;
pub use rebuild::RebuildRun;
use scrub::ScrubWatch;

/// Index of a replica in the volume's replica list.
pub type ReplicaIndex = usize;

/// Identifies a request of the SCSI layer.
pub type Tag = u64;

/// The tag of the controller's own writes (the write-back of blocks a
/// replica found bad, rule 7): never completed to the shell, so no shell
/// tag may be this value (shells count theirs up from 0 or 1).
pub const REPAIR_TAG: Tag = Tag::MAX;

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
    /// Scrub: the digest of an extent from every healthy replica, each in
    /// io_seq order like a read of it (rule 8).
    Digest {
        offset: u64,
        len_bytes: u32,
    },
    /// Scrub: read an extent from this healthy replica only (a copy in the
    /// majority); not retried on another (rule 8).
    ReadFrom {
        replica: ReplicaIndex,
        offset: u64,
        len_bytes: u32,
    },
    /// Scrub: write back data read from a good copy, an ordinary write to
    /// every linked replica, but only if no other mutating request
    /// overlapping the extent of the digest numbered `guard` was dispatched
    /// since that digest; else it is moot and refused (rule 8).
    Repair {
        offset: u64,
        data: Bytes,
        guard: u64,
    },
}

impl Op {
    fn mutates(&self) -> bool {
        !matches!(
            self,
            Op::Read { .. } | Op::ListSnapshots { .. } | Op::Digest { .. } | Op::ReadFrom { .. }
        )
    }

    /// A replica counts it in the highest io_seq it reports received
    /// (`cstor_replica`'s session routing: data and snapshot, snapshot
    /// destroy and grow requests). A flush or a membership record is not
    /// counted there and leaves nothing a restart could lose, so its
    /// acknowledgement must not make a replica that reconnects look behind.
    fn noted_received(&self) -> bool {
        matches!(
            self,
            Op::Write { .. }
                | Op::Repair { .. }
                | Op::Unmap { .. }
                | Op::WriteZeroes { .. }
                | Op::SnapshotCreate { .. }
                | Op::SnapshotDestroy { .. }
                | Op::Resize { .. }
        )
    }

    /// The bytes it reads or changes: `(offset, len)`; `None` for the
    /// requests that touch no block range.
    fn extent(&self) -> Option<(u64, u64)> {
        match self {
            Op::Read { offset, len_bytes }
            | Op::Unmap { offset, len_bytes }
            | Op::WriteZeroes { offset, len_bytes }
            | Op::Digest { offset, len_bytes }
            | Op::ReadFrom {
                offset, len_bytes, ..
            } => Some((*offset, u64::from(*len_bytes))),
            Op::Write { offset, data, .. } | Op::Repair { offset, data, .. } => {
                Some((*offset, data.len() as u64))
            }
            _ => None,
        }
    }

    /// Data bytes it carries to a replica (a write's payload).
    fn data_bytes(&self) -> u64 {
        match self {
            Op::Write { data, .. } | Op::Repair { data, .. } => data.len() as u64,
            _ => 0,
        }
    }

    /// The member a membership record removes, if it removes one.
    pub(crate) fn leaving_member(&self) -> Option<ReplicaIndex> {
        match self {
            Op::SetMembership {
                change: MemberChange::Remove(r),
                ..
            } => Some(*r),
            _ => None,
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
            Op::Digest { offset, len_bytes } => Message::Digest(Extent {
                offset: *offset,
                len_bytes: *len_bytes,
            }),
            Op::ReadFrom {
                offset, len_bytes, ..
            } => Message::Read(Extent {
                offset: *offset,
                len_bytes: *len_bytes,
            }),
            Op::Repair { offset, data, .. } => Message::Write(Write {
                offset: *offset,
                data: data.clone(),
                fua: false,
            }),
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
            Op::Digest { .. } => Opcode::Digest,
            Op::ReadFrom { .. } => Opcode::Read,
            Op::Repair { .. } => Opcode::Write,
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
    /// Every healthy replica found the block at this byte offset failing
    /// its checksum (rule 7): no good copy is left to read. MEDIUM ERROR /
    /// UNRECOVERED READ ERROR; never the bad bytes.
    #[error("no replica holds a good copy of the block at byte {offset}")]
    Unrecoverable { offset: u64 },
}

/// What a completed request yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    Done,
    Data(Bytes),
    Snapshots(SnapshotListing),
    /// The answers to an [`Op::Digest`] numbered `io_seq` (the `guard` of
    /// its repairs): the digest of every healthy replica it went to that
    /// answered one, and the error replies of those that could not (a
    /// replica dropped meanwhile is in neither).
    Digests {
        io_seq: u64,
        replies: Vec<(ReplicaIndex, DigestReply)>,
        errors: Vec<(ReplicaIndex, String)>,
    },
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

#[derive(Debug)]
struct Replica {
    state: ReplicaState,
    /// Its link's current (or last) connection.
    generation: Generation,
    /// The replica id it last reported (or the membership record's).
    replica_id: Option<u128>,
    /// It answered a hello on this target already.
    contacted: bool,
    /// What it first said of itself to this target (probe or hello): the
    /// highest io_seq it had received and the one it would be rebuilt from
    /// (its durable io_seq + 1). A member that turns up later having
    /// received more shows it lacks the difference.
    first_seen: Option<(u64, u64)>,
    /// How it was last taken back.
    admission: Option<Admission>,
    /// The current rebuild, while degraded or rebuilding.
    rebuild: Option<RebuildRun>,
    /// A degraded replica without a rebuild is redialled at this time.
    retry_at: Option<Instant>,
    /// Highest io_seq of a request it acknowledged that it notes as
    /// received ([`Op::noted_received`]): if it comes back reporting less,
    /// it lost acknowledged (unflushed) writes.
    acked_max: u64,
    /// Lowest io_seq of a mutating request that another replica
    /// acknowledged and this one did not: it must be rebuilt from there.
    missed_from: Option<u64>,
    /// Lowest io_seq this replica's running rebuild may not have brought:
    /// a snapshot create or destroy a quorum took while it ran (its
    /// snapshot listing may predate it), or the first request its source
    /// was found to lack meanwhile (`mark_missed` of the source). The
    /// replica is rebuilt once more (from there) before it is healthy.
    missed_in_rebuild: Option<u64>,
    /// Failures in a row, without a success since (rule 6): sets the
    /// backoff before it is dialled again.
    failures: u32,
    /// A failed replica is not taken back before this time.
    redial_at: Option<Instant>,
    /// It failed for lack of space, and has not been healthy since: it
    /// cannot be counted on to allocate (rule 6).
    no_space: bool,
    /// 4 KiB blocks its reads named bad (`ChecksumError`, rule 7) since
    /// this target started.
    checksum_errors: u64,
    /// Those of the last [`CHECKSUM_ERROR_WINDOW`]: (when, blocks), oldest
    /// first, at most [`MAX_CHECKSUM_ERROR_EVENTS`] entries.
    checksum_recent: VecDeque<(Instant, u64)>,
}

impl Replica {
    /// Its running rebuild may not have brought what came from `io_seq`
    /// on: it is rebuilt once more from there before it is healthy.
    fn rebuild_again_from(&mut self, io_seq: u64) {
        self.missed_in_rebuild = Some(self.missed_in_rebuild.map_or(io_seq, |m| m.min(io_seq)));
    }

    fn new(state: ReplicaState, missed_from: Option<u64>) -> Replica {
        Replica {
            state,
            generation: 0,
            replica_id: None,
            contacted: false,
            first_seen: None,
            admission: None,
            rebuild: None,
            retry_at: None,
            acked_max: 0,
            missed_from,
            missed_in_rebuild: None,
            failures: 0,
            redial_at: None,
            no_space: false,
            checksum_errors: 0,
            checksum_recent: VecDeque::new(),
        }
    }
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
    /// The extent of the last [`Op::Digest`] and whether a mutating
    /// request overlapping it was dispatched since (rule 8).
    scrub_watch: Option<ScrubWatch>,
    pending_bytes: u64,
    /// When the number of healthy replicas fell below `cf`.
    quorum_lost_at: Option<Instant>,
    next_reader: usize,
    fenced: bool,
    barrier: Option<Barrier>,
    /// Mutating requests submitted after the barrier, in order.
    held: VecDeque<(Tag, Op)>,
    /// io_seqs of the pending reads of the SCSI layer (not their pieces,
    /// rule 7): the writes dispatched while they are pending make the
    /// write-back of what they overlap moot.
    reads: std::collections::BTreeSet<u64>,
    /// 4 KiB blocks written back after a replica found them bad (rule 7),
    /// acknowledged at quorum, since this target started.
    blocks_repaired: u64,
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
            reads: std::collections::BTreeSet::new(),
            blocks_repaired: 0,
            scrub_watch: None,
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

    /// The next io_seq the controller will assign.
    pub fn next_io_seq(&self) -> u64 {
        self.next_io_seq
    }

    /// The volume's size now (grows with an acknowledged resize).
    pub fn size_bytes(&self) -> u64 {
        self.config.size_bytes
    }

    /// Highest io_seq of a request `replica` acknowledged that it notes as
    /// received (a flush or a membership record is not).
    pub fn acked_max(&self, replica: ReplicaIndex) -> u64 {
        self.replicas.get(replica).map_or(0, |r| r.acked_max)
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

fn complete(tag: Tag, result: Result<Completion, VolumeError>) -> Action {
    Action::Complete { tag, result }
}

#[cfg(test)]
mod tests;
