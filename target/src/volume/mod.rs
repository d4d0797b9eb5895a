//! The volume layer of the target: replicates every request to the
//! volume's replicas and answers at quorum.
//!
//! - [`controller`]: the quorum state machine (pure, no IO);
//! - [`link`]: one task per replica, dialling, claiming and pumping frames;
//! - this module: [`Volume::open`] (probe the replicas, choose the epoch and
//!   the first io_seq, start the links) and the driver task that owns the
//!   controller and turns its actions into link commands and completions.
//!
//! Opening a volume (docs/architecture.md, "io_seq is the order of truth",
//! invariant 5):
//! every replica is probed (epoch 0, claims nothing); once a read quorum of
//! the members answered, the target takes the epoch one above the highest any of them
//! accepted and starts numbering writes [`IO_SEQ_MARGIN`] above the highest
//! io_seq any of them received, so nothing written but unreported can be
//! outnumbered. The controller judges each probe as it judges a hello
//! ([`controller::Controller::on_probe`]): replicas that reported less than
//! the most advanced one are degraded from the start.
//!
//! Membership ([`membership`] has the design): the members are those of
//! the newest membership record the replicas hold, the command line only
//! for a new volume; the open waits for a read quorum of them
//! ([`membership::open_quorum`]). Adding, removing and the CF go through
//! [`Volume::add_replica`], [`Volume::remove_replica`] and
//! [`Volume::set_consistency_factor`]: the driver checks the change, the
//! controller commits the new record at quorum as a barrier, then the
//! driver starts the new member's link or stops the removed one's. Every
//! member is sent the committed record when its link comes up.
//!
//! Readmission and rebuild: the controller decides (see [`controller`]).
//! When a link claims a replica the driver hands the controller the facts
//! of its hello ([`controller::ReplicaHello`]: connection generation,
//! replica id, size, durable and received io_seq, state) and the
//! controller decides how it is taken back ([`controller::Admission`]:
//! healthy, rebuilt from an io_seq, rebuilt in full because its id changed,
//! grown and rebuilt in full because it is undersized, refused); the
//! driver turns its `StartRebuild` into a `RebuildStart` naming the
//! source's data address. The driver also
//! - counts, per replica, the bytes every rebuild run into it reported
//!   (`VolumeStatus::rebuilt_bytes`: the growth of the controller's run
//!   progress at each reply, so each reported byte once, across runs);
//! - holds the volume's rebuild throttle ([`Volume::set_rebuild_throttle`])
//!   and sends it (`RebuildThrottle`) to every linked replica when it
//!   changes and to each replica whose link comes up, before its rebuild
//!   starts; a sink paces itself to the lower of it and its daemon's own
//!   limit (replica `rebuild::state`). The rate lives in this process: a
//!   new target starts with none and says so to the replicas it claims.

pub mod controller;
pub mod link;
pub mod membership;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cstor_proto::limits::MAX_MEMBERS;
use cstor_proto::{
    HelloAck, Membership, Message, Name, Packet, RebuildProgress, RebuildSource, RebuildStart,
    SnapshotInfo, StatusReport,
};
// Looked up on every request: a fast seeded hash, not SipHash.
use foldhash::HashMap;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::limits;
use controller::{
    Action, Controller, ControllerConfig, MemberChange, ReplicaHello, ReplicaIndex, Tag,
};
pub use controller::{Completion, Op, RebuildRun, ReplicaState, VolumeError};
use link::{LinkCommand, LinkEvent, SessionParams};
pub use membership::MemberRef;
use membership::OpenStep;
use tokio::sync::mpsc::error::TrySendError;

/// The first io_seq of a new target is this far above the highest io_seq
/// any replica reported.
pub const IO_SEQ_MARGIN: u64 = 1 << 32;
/// Requests waiting for the driver, per volume (the SCSI layer's command
/// window bounds what is in flight beyond this).
pub const REQUEST_QUEUE: usize = 512;
/// Pages of a snapshot listing read at most (each holds up to
/// `cstor_proto::limits::MAX_SNAPSHOTS_PER_LISTING`).
pub const MAX_LISTING_PAGES: usize = 64;
/// How often the driver checks timeouts.
pub const TICK: Duration = Duration::from_millis(100);
/// The status's IO counters lag the IO by at most about this (see
/// [`VolumeStatus`]).
pub const STATUS_COUNTERS_EVERY: Duration = TICK;

/// Snapshot, resize and membership requests that may wait for the
/// target's own membership record write (a new volume's first record) to
/// finish, instead of being refused as "in progress"; more are refused.
pub const MAX_DEFERRED_BARRIERS: usize = 16;

/// What a volume is made of and how it behaves.
#[derive(Debug, Clone)]
pub struct VolumeSpec {
    pub name: String,
    /// The command line's replicas: the members of a new volume; once the
    /// replicas hold a membership record, only where to look for it (the
    /// record's members are dialled, others ignored).
    pub replicas: Vec<SocketAddr>,
    /// Consistency factor of a new volume; `None`: a majority of the
    /// replicas. A volume with a record keeps the record's.
    pub cf: Option<usize>,
    /// A healthy replica slower than this to acknowledge is dropped.
    pub ack_timeout: Duration,
    /// Below quorum, writes are held this long before they fail.
    pub hold: Duration,
    /// How long `open` waits for `cf` replicas to answer the probe.
    pub open_timeout: Duration,
}

impl VolumeSpec {
    /// A spec with the default timings: drop a replica after 5 s without an
    /// acknowledgement, hold writes 20 s below quorum (both well under the
    /// Linux initiator's 30 s SCSI command timeout).
    pub fn new(name: impl Into<String>, replicas: Vec<SocketAddr>) -> Self {
        Self {
            name: name.into(),
            replicas,
            cf: None,
            ack_timeout: Duration::from_secs(5),
            hold: Duration::from_secs(20),
            open_timeout: Duration::from_secs(60),
        }
    }
}

/// Why a volume could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("a volume needs 1 to 5 replicas, not {0}")]
    ReplicaCount(usize),
    #[error("consistency factor {cf} is outside 1..={replicas}")]
    ConsistencyFactor { cf: usize, replicas: usize },
    #[error(
        "only {answered} of the {needed} replicas needed answered within {timeout:?}: {errors}"
    )]
    NoQuorum {
        answered: usize,
        needed: usize,
        timeout: Duration,
        errors: String,
    },
    #[error("membership: {0}")]
    Membership(String),
    #[error("replicas disagree on the volume's geometry: {0}")]
    Geometry(String),
}

/// What the volume looks like now. Per-replica vectors list the members,
/// in the same order.
///
/// Published by the driver at once when anything but the IO counters
/// changes (a replica's state, the size, a barrier, a rebuild run starting
/// or ending, ...); the counters that move with every IO (`next_io_seq`,
/// `in_flight`, `acked_io_seqs`, `owed`, rebuild progress and bytes) are
/// brought up to date at most every [`STATUS_COUNTERS_EVERY`], so that IO
/// does not rebuild the status and wake its watchers twice per command.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VolumeStatus {
    pub replicas: Vec<(SocketAddr, ReplicaState)>,
    /// Per replica: its replica id (0 while never reached).
    pub replica_ids: Vec<u128>,
    pub cf: usize,
    pub healthy: usize,
    pub read_only: bool,
    pub fenced: bool,
    pub epoch: u64,
    pub next_io_seq: u64,
    /// Per replica: its rebuild, while one runs (progress included; its
    /// `source` is an index in `replicas`).
    pub rebuilds: Vec<Option<RebuildRun>>,
    /// Per replica: time left of its rebuild at the rate seen so far.
    pub rebuild_etas: Vec<Option<Duration>>,
    /// Per replica: the highest io_seq of a mutating request it
    /// acknowledged on this target.
    pub acked_io_seqs: Vec<u64>,
    /// Per replica: mutating requests sent to it and not yet answered.
    pub owed: Vec<usize>,
    /// Requests the SCSI layer waits for.
    pub in_flight: usize,
    /// The volume's size now (grows with an acknowledged resize).
    pub size_bytes: u64,
    /// A snapshot, resize or membership change is in progress (writes
    /// are held).
    pub barrier: bool,
    /// Generation of the committed membership record.
    pub membership_generation: u64,
    /// Per replica: bytes its rebuilds reported copying, summed over every
    /// run this target saw (only grows).
    pub rebuilt_bytes: Vec<u64>,
    /// The volume's rebuild throttle the replicas were sent (bytes per
    /// second; 0: none of the volume's own).
    pub rebuild_throttle_bytes_per_sec: u64,
}

/// An open volume. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Volume {
    requests: mpsc::Sender<Request>,
    status: watch::Receiver<VolumeStatus>,
    /// The rebuild throttle; the driver forwards every change.
    throttle: Arc<watch::Sender<u64>>,
    stop: CancellationToken,
    block_size: u32,
    name: String,
}

enum Request {
    Io {
        op: Op,
        reply: oneshot::Sender<Result<Completion, VolumeError>>,
    },
    Membership {
        change: membership::Change,
        reply: oneshot::Sender<Result<Membership, VolumeError>>,
    },
}

impl Volume {
    /// Probes the replicas, claims the volume and starts serving it. The
    /// members are those of the newest membership record the replicas
    /// hold, or `spec.replicas` for a new volume (`membership` module doc).
    pub async fn open(spec: VolumeSpec) -> Result<Volume, OpenError> {
        let n = spec.replicas.len();
        if !(1..=MAX_MEMBERS).contains(&n) {
            return Err(OpenError::ReplicaCount(n));
        }
        let cli_cf = spec.cf.unwrap_or(ControllerConfig::majority(n));
        if !(1..=n).contains(&cli_cf) {
            return Err(OpenError::ConsistencyFactor {
                cf: cli_cf,
                replicas: n,
            });
        }
        let (members, cf, record, answers) = probe_quorum(&spec, cli_cf).await?;
        for ignored in spec.replicas.iter().filter(|a| !members.contains(a)) {
            warn!(
                volume = %spec.name,
                replica = %ignored,
                "not a member of the volume (membership record): ignored; add it with `cstor ctl replica add`"
            );
        }
        let probes: Vec<Option<(HelloAck, StatusReport)>> = members
            .iter()
            .map(|a| answers.get(a).map(|p| (p.ack, p.status)))
            .collect();
        let answered: Vec<_> = probes.iter().flatten().collect();
        let highest_epoch = answered
            .iter()
            .map(|p| p.0.highest_epoch_seen.max(p.1.highest_epoch_seen))
            .max()
            .unwrap_or(0);
        let max_received = answered
            .iter()
            .map(|p| p.1.last_received_io_seq.max(p.0.last_durable_io_seq))
            .max()
            .unwrap_or(0);
        let (size_bytes, block_size) = geometry(&members, &probes, max_received)?;
        // The ids the record knows: a member answering with another id had
        // its pool replaced.
        let recorded_ids: Vec<Option<u128>> = members
            .iter()
            .map(|a| {
                record
                    .as_ref()
                    .and_then(|r| r.member(&a.to_string()))
                    .map(|m| m.replica_id)
                    .filter(|id| *id != 0)
            })
            .collect();
        let params = SessionParams {
            volume: spec.name.clone(),
            epoch: highest_epoch.saturating_add(1),
            session_id: random_u64(),
            first_io_seq: max_received.saturating_add(IO_SEQ_MARGIN),
        };
        let replica_ids: Vec<Option<u128>> = probes
            .iter()
            .zip(&recorded_ids)
            .map(|(p, recorded)| p.as_ref().map(|(ack, _)| ack.replica_id).or(*recorded))
            .collect();
        let (record, write_record) = match record {
            Some(record) => (record, false),
            None => (
                membership::initial(&members, &replica_ids, cf)
                    .map_err(|e| OpenError::Membership(e.to_string()))?,
                true,
            ),
        };
        let generation = answers
            .values()
            .map(|p| p.membership.generation)
            .max()
            .unwrap_or(0)
            .max(record.generation);
        info!(
            volume = %spec.name,
            epoch = params.epoch,
            first_io_seq = params.first_io_seq,
            size_bytes,
            cf,
            members = ?members,
            generation = record.generation,
            "opening volume"
        );
        let config = ControllerConfig {
            replicas: members.len(),
            cf,
            ack_timeout: spec.ack_timeout,
            hold: spec.hold,
            session_id: params.session_id,
            epoch: params.epoch,
            first_io_seq: params.first_io_seq,
            size_bytes,
            max_received_at_open: max_received,
            max_owed_requests: limits::MAX_OWED_REQUESTS,
            max_owed_bytes: limits::MAX_OWED_BYTES,
        };
        // Who is degraded from the start is the controller's call, as for
        // every later hello: behind the others, an unfinished rebuild,
        // another id than the record's.
        let mut controller = Controller::new(config, &vec![None; members.len()], Instant::now())
            .with_replica_ids(&recorded_ids);
        for (replica, probe) in probes.iter().enumerate() {
            if let Some((ack, status)) = probe {
                controller.on_probe(replica, hello_facts(0, ack, status));
            }
        }
        let stop = CancellationToken::new();
        let (events_tx, events) = mpsc::unbounded_channel();
        let (requests, request_rx) = mpsc::channel(REQUEST_QUEUE);
        let mut driver = Driver {
            controller,
            addrs: Vec::with_capacity(members.len()),
            links: Vec::with_capacity(members.len()),
            waiters: HashMap::default(),
            changes: HashMap::default(),
            next_tag: 1,
            replica_ids: Vec::with_capacity(members.len()),
            rebuild_clock: Vec::with_capacity(members.len()),
            rebuilt_bytes: Vec::with_capacity(members.len()),
            rebuild_throttle: 0,
            params,
            events: events_tx,
            stop: stop.clone(),
            record,
            generation,
            status: watch::channel(VolumeStatus::default()).0,
            published: (0, Instant::now()),
            deferred: std::collections::VecDeque::new(),
        };
        for (addr, id) in members.iter().zip(&replica_ids) {
            driver.link(*addr, *id);
        }
        let (status_tx, status) = watch::channel(driver.status_of());
        driver.published = (driver.status_shape(Instant::now()), Instant::now());
        driver.status = status_tx;
        if write_record {
            // A new volume: its command line becomes the first record,
            // written once a quorum is healthy (a barrier like any change).
            let record = driver.record.clone();
            let actions = driver.submit_record(record, MemberChange::None, cf, None, None);
            driver.perform(actions);
        }
        let (throttle, throttle_rx) = watch::channel(0);
        tokio::spawn(driver.run(request_rx, events, throttle_rx, stop.clone()));
        Ok(Volume {
            requests,
            status,
            throttle: Arc::new(throttle),
            stop,
            block_size,
            name: spec.name,
        })
    }

    /// Adds a replica to the volume (scale up, or the second half of a
    /// replace): probes it (reachable, same block size), then commits a
    /// membership record listing it at quorum; it then joins with a full
    /// rebuild and counts for quorum once that is done. Returns the record.
    pub async fn add_replica(&self, address: SocketAddr) -> Result<Membership, VolumeError> {
        let probe = tokio::time::timeout(link::CONNECT_TIMEOUT, link::probe(address, &self.name))
            .await
            .unwrap_or(Err(link::LinkError::ProbeTimeout))
            .map_err(|e| VolumeError::Refused(format!("replica {address} unreachable: {e}")))?;
        if probe.ack.block_size_bytes != self.block_size {
            return Err(VolumeError::Refused(format!(
                "replica {address} has {}-byte blocks, the volume {}",
                probe.ack.block_size_bytes, self.block_size
            )));
        }
        self.change_membership(membership::Change::Add {
            address,
            replica_id: probe.ack.replica_id,
        })
        .await
    }

    /// Removes a member (scale down, or the first half of a replace): once
    /// a record without it committed at quorum, its link closes. Refused
    /// if fewer members than the CF would stay.
    pub async fn remove_replica(&self, which: MemberRef) -> Result<Membership, VolumeError> {
        self.change_membership(membership::Change::Remove(which))
            .await
    }

    /// Sets the consistency factor (1 ..= members), at quorum of the lower
    /// of the old and the new one.
    pub async fn set_consistency_factor(&self, cf: usize) -> Result<Membership, VolumeError> {
        self.change_membership(membership::Change::SetCf(cf)).await
    }

    async fn change_membership(
        &self,
        change: membership::Change,
    ) -> Result<Membership, VolumeError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Membership { change, reply })
            .await
            .map_err(|_| VolumeError::Unavailable)?;
        answer.await.unwrap_or(Err(VolumeError::Unavailable))
    }

    /// Performs one request.
    pub async fn submit(&self, op: Op) -> Result<Completion, VolumeError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Io { op, reply })
            .await
            .map_err(|_| VolumeError::Unavailable)?;
        answer.await.unwrap_or(Err(VolumeError::Unavailable))
    }

    /// The size now: it grows once a resize was acknowledged at quorum.
    pub fn size_bytes(&self) -> u64 {
        self.status.borrow().size_bytes
    }

    /// Takes a snapshot holding every write acknowledged before this call
    /// and none submitted after it (controller module doc, invariant 4).
    pub async fn create_snapshot(&self, name: &str) -> Result<(), VolumeError> {
        let name = snapshot_name(name)?;
        self.submit(Op::SnapshotCreate { name }).await.map(drop)
    }

    /// Destroys a snapshot on the replicas, at quorum.
    pub async fn destroy_snapshot(&self, name: &str) -> Result<(), VolumeError> {
        let name = snapshot_name(name)?;
        self.submit(Op::SnapshotDestroy { name }).await.map(drop)
    }

    /// Every snapshot, as a healthy replica lists them (name order).
    pub async fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>, VolumeError> {
        let mut all = Vec::new();
        let mut after = None;
        for _ in 0..MAX_LISTING_PAGES {
            let listing = match self.submit(Op::ListSnapshots { after }).await? {
                Completion::Snapshots(listing) => listing,
                other => {
                    return Err(VolumeError::Refused(format!(
                        "unexpected answer to a snapshot listing: {other:?}"
                    )))
                }
            };
            after = listing.snapshots.last().map(|s| s.name.clone());
            all.extend(listing.snapshots);
            if !listing.more || after.is_none() {
                return Ok(all);
            }
        }
        Err(VolumeError::Refused(format!(
            "more than {MAX_LISTING_PAGES} pages of snapshots"
        )))
    }

    /// Grows the volume to `size_bytes` on a quorum of replicas; the new
    /// size shows in [`Volume::size_bytes`] and the status once done.
    pub async fn resize(&self, size_bytes: u64) -> Result<(), VolumeError> {
        let block = u64::from(self.block_size);
        if block == 0 || !size_bytes.is_multiple_of(block) {
            return Err(VolumeError::Refused(format!(
                "{size_bytes} bytes is not a multiple of the {block}-byte block"
            )));
        }
        self.submit(Op::Resize { size_bytes }).await.map(drop)
    }

    /// Limits every rebuild into a replica of this volume to
    /// `bytes_per_second` (0: no limit of the volume's own; each replica
    /// daemon's limit still caps it). Forwarded to the linked replicas at
    /// once and to every replica that (re)connects; running rebuilds follow
    /// from their next chunk.
    pub fn set_rebuild_throttle(&self, bytes_per_second: u64) {
        self.throttle.send_replace(bytes_per_second);
    }

    /// The volume's rebuild throttle (bytes per second; 0: none).
    pub fn rebuild_throttle(&self) -> u64 {
        *self.throttle.borrow()
    }

    /// The status, as a receiver that sees every change (the server
    /// follows the size with it).
    pub fn subscribe(&self) -> watch::Receiver<VolumeStatus> {
        self.status.clone()
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    pub fn status(&self) -> VolumeStatus {
        self.status.borrow().clone()
    }

    /// Waits until the status satisfies `pred` (tests, `cstor up`).
    pub async fn wait_for(&self, pred: impl Fn(&VolumeStatus) -> bool) {
        let mut rx = self.status.clone();
        let _ = rx.wait_for(|s| pred(s)).await;
    }

    /// Stops the links and the driver; requests in flight fail.
    pub fn close(&self) {
        self.stop.cancel();
    }
}

/// Members, CF, the newest record (`None`: a new volume) and every answer.
type Probed = (
    Vec<SocketAddr>,
    usize,
    Option<Membership>,
    BTreeMap<SocketAddr, link::Probe>,
);

/// Probes the command line's replicas and the members of the newest record
/// found, until enough members answered ([`membership::open_step`]) or the
/// open timeout passed.
async fn probe_quorum(spec: &VolumeSpec, cli_cf: usize) -> Result<Probed, OpenError> {
    let deadline = tokio::time::Instant::now() + spec.open_timeout;
    let mut answers: BTreeMap<SocketAddr, link::Probe> = BTreeMap::new();
    let mut errors: BTreeMap<SocketAddr, String> = BTreeMap::new();
    let mut targets: Vec<SocketAddr> = spec.replicas.clone();
    loop {
        let mut probes = Vec::new();
        for addr in targets.iter().filter(|a| !answers.contains_key(a)) {
            let name = spec.name.clone();
            let addr = *addr;
            probes.push(tokio::spawn(async move {
                let r = tokio::time::timeout(link::CONNECT_TIMEOUT, link::probe(addr, &name))
                    .await
                    .unwrap_or(Err(link::LinkError::ProbeTimeout));
                (addr, r)
            }));
        }
        for probe in probes {
            if let Ok((addr, r)) = probe.await {
                match r {
                    Ok(answer) => {
                        errors.remove(&addr);
                        answers.insert(addr, answer);
                    }
                    Err(e) => {
                        errors.insert(addr, format!("{addr}: {e}"));
                    }
                }
            }
        }
        let records: BTreeMap<SocketAddr, Membership> = answers
            .iter()
            .map(|(a, p)| (*a, p.membership.clone()))
            .collect();
        let step = membership::open_step(&spec.replicas, cli_cf, &records)
            .map_err(|e| OpenError::Membership(e.to_string()))?;
        let missing = match step {
            OpenStep::Open {
                members,
                cf,
                record,
            } => return Ok((members, cf, record, answers)),
            OpenStep::Probe(missing) => missing,
        };
        // Probe the command line too until something answers: the newest
        // record may be on any of them.
        targets = missing;
        targets.extend(spec.replicas.iter().filter(|a| !answers.contains_key(a)));
        targets.sort();
        targets.dedup();
        if tokio::time::Instant::now() >= deadline {
            let record = membership::newest(records.values());
            let (members, cf) = if record.generation == 0 {
                (spec.replicas.clone(), cli_cf)
            } else {
                (
                    membership::addresses(&record).unwrap_or_default(),
                    usize::from(record.consistency_factor),
                )
            };
            return Err(OpenError::NoQuorum {
                answered: members.iter().filter(|a| answers.contains_key(a)).count(),
                needed: membership::open_quorum(members.len(), cf),
                timeout: spec.open_timeout,
                errors: errors.into_values().collect::<Vec<_>>().join("; "),
            });
        }
        tokio::time::sleep(link::BACKOFF_MAX).await;
    }
}

/// Size and block size, from the most advanced replicas (a grow may have
/// reached only some of the others).
fn geometry(
    members: &[SocketAddr],
    probes: &[Option<(HelloAck, StatusReport)>],
    max_received: u64,
) -> Result<(u64, u32), OpenError> {
    let mut current = probes.iter().enumerate().filter_map(|(i, p)| {
        p.as_ref()
            .filter(|(ack, st)| {
                st.last_received_io_seq.max(ack.last_durable_io_seq) == max_received
            })
            .map(|(ack, _)| (i, ack.volume_size_bytes, ack.block_size_bytes))
    });
    let Some((_, size, block)) = current.next() else {
        return Err(OpenError::Geometry("no replica answered".into()));
    };
    for (i, s, b) in current {
        if s != size || b != block {
            let addr = members.get(i).map_or_else(String::new, |a| a.to_string());
            return Err(OpenError::Geometry(format!(
                "{addr} has {s} bytes in {b}-byte blocks, another {size} in {block}"
            )));
        }
    }
    Ok((size, block))
}

/// Where a membership change's outcome goes, and what it is.
type ChangeReply = (
    oneshot::Sender<Result<Membership, VolumeError>>,
    Result<Membership, VolumeError>,
);

/// A membership change waiting for its record to commit.
struct PendingChange {
    record: Membership,
    change: MemberChange,
    /// The address and id of an added replica.
    added: Option<(SocketAddr, u128)>,
    reply: Option<oneshot::Sender<Result<Membership, VolumeError>>>,
}

/// When a rebuild run was first seen making progress (for its ETA).
#[derive(Debug, Clone, Copy)]
struct RebuildClock {
    first_live_io_seq: u64,
    started: Instant,
    done_at_start: u64,
}

/// The driver's end of one link.
struct LinkHandle {
    /// Its command queue (bounded: `limits::LINK_QUEUE`).
    commands: mpsc::Sender<LinkCommand>,
    /// Resets, beside the queue so that a full queue never holds one up.
    resets: watch::Sender<Option<link::Reset>>,
    stop: CancellationToken,
}

struct Driver {
    controller: Controller,
    /// Per replica index (never reused): its data address.
    addrs: Vec<SocketAddr>,
    /// Per replica index: its link's commands and stop token.
    links: Vec<LinkHandle>,
    waiters: HashMap<Tag, oneshot::Sender<Result<Completion, VolumeError>>>,
    changes: HashMap<Tag, PendingChange>,
    next_tag: Tag,
    /// Per replica: the replica id it last reported (or the record's).
    replica_ids: Vec<Option<u128>>,
    rebuild_clock: Vec<Option<RebuildClock>>,
    /// Per replica index: bytes its rebuild runs reported (module doc).
    rebuilt_bytes: Vec<u64>,
    /// The volume's rebuild throttle, as last sent to the replicas.
    rebuild_throttle: u64,
    params: SessionParams,
    events: mpsc::UnboundedSender<LinkEvent>,
    stop: CancellationToken,
    /// The committed membership record.
    record: Membership,
    /// The highest generation seen or sent: the next record gets one more.
    generation: u64,
    status: watch::Sender<VolumeStatus>,
    /// The shape of the status last published, and when it was published.
    published: (u64, Instant),
    /// Barrier requests (snapshot, resize, membership) that arrived while
    /// the target's own record write was in progress: an operator's
    /// request waits for it rather than being refused for it.
    deferred: std::collections::VecDeque<Request>,
}

impl Driver {
    /// Starts the link of a new replica index.
    fn link(&mut self, addr: SocketAddr, replica_id: Option<u128>) {
        let index = self.addrs.len();
        let (tx, rx) = mpsc::channel(limits::LINK_QUEUE);
        let (resets, resets_rx) = watch::channel(None);
        let stop = self.stop.child_token();
        tokio::spawn(link::run(
            index,
            addr,
            self.params.clone(),
            rx,
            resets_rx,
            self.events.clone(),
            stop.clone(),
        ));
        self.addrs.push(addr);
        self.links.push(LinkHandle {
            commands: tx,
            resets,
            stop,
        });
        self.replica_ids.push(replica_id);
        self.rebuild_clock.push(None);
        self.rebuilt_bytes.push(0);
    }

    async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut events: mpsc::UnboundedReceiver<LinkEvent>,
        mut throttle: watch::Receiver<u64>,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let actions = tokio::select! {
                () = stop.cancelled() => break,
                request = requests.recv() => match request {
                    Some(request) => self.on_request(request),
                    None => break,
                },
                event = events.recv() => match event {
                    Some(event) => self.on_event(event),
                    None => break,
                },
                Ok(()) = throttle.changed() => {
                    let rate = *throttle.borrow_and_update();
                    self.on_throttle(rate)
                }
                _ = tick.tick() => self.controller.tick(Instant::now()),
            };
            self.perform(actions);
            while !self.internal_change_pending() {
                let Some(request) = self.deferred.pop_front() else {
                    break;
                };
                let actions = self.on_request(request);
                self.perform(actions);
            }
        }
        for request in self.deferred.drain(..) {
            match request {
                Request::Io { reply, .. } => {
                    let _ = reply.send(Err(VolumeError::Unavailable));
                }
                Request::Membership { reply, .. } => {
                    let _ = reply.send(Err(VolumeError::Unavailable));
                }
            }
        }
        for (_, waiter) in self.waiters.drain() {
            let _ = waiter.send(Err(VolumeError::Unavailable));
        }
        for (_, change) in self.changes.drain() {
            if let Some(reply) = change.reply {
                let _ = reply.send(Err(VolumeError::Unavailable));
            }
        }
    }

    /// A request from the Volume handle. A barrier request that arrives
    /// while the target's own record write runs waits for it (bounded).
    fn on_request(&mut self, request: Request) -> Vec<Action> {
        let barrier = match &request {
            Request::Io { op, .. } => op.is_barrier(),
            Request::Membership { .. } => true,
        };
        if barrier && self.internal_change_pending() {
            if self.deferred.len() < MAX_DEFERRED_BARRIERS {
                self.deferred.push_back(request);
                return Vec::new();
            }
            let busy = "too many snapshot, resize or membership requests waiting";
            match request {
                Request::Io { reply, .. } => {
                    let _ = reply.send(Err(VolumeError::Refused(busy.into())));
                }
                Request::Membership { reply, .. } => {
                    let _ = reply.send(Err(VolumeError::Refused(busy.into())));
                }
            }
            return Vec::new();
        }
        match request {
            Request::Io { op, reply } => {
                let tag = self.take_tag();
                self.waiters.insert(tag, reply);
                self.controller.submit(Instant::now(), tag, op)
            }
            Request::Membership { change, reply } => self.on_membership_request(change, reply),
        }
    }

    /// A new rebuild throttle: every linked replica is told at once.
    fn on_throttle(&mut self, bytes_per_second: u64) -> Vec<Action> {
        self.rebuild_throttle = bytes_per_second;
        info!(volume = %self.params.volume, bytes_per_second, "rebuild throttle set");
        let linked: Vec<ReplicaIndex> = self
            .controller
            .replica_states()
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_linked())
            .map(|(i, _)| i)
            .collect();
        linked
            .into_iter()
            .map(|replica| self.throttle_message(replica))
            .collect()
    }

    /// The volume's rebuild throttle, for `replica` (unawaited: an old
    /// replica that does not know the message answers an error nobody
    /// waits for).
    fn throttle_message(&mut self, replica: ReplicaIndex) -> Action {
        let message = Message::RebuildThrottle {
            bytes_per_second: self.rebuild_throttle,
        };
        self.controller.unawaited(replica, message)
    }

    /// Is a record write the target started by itself (no caller waits
    /// for it) in progress?
    fn internal_change_pending(&self) -> bool {
        self.changes.values().any(|c| c.reply.is_none())
    }

    fn take_tag(&mut self) -> Tag {
        let tag = self.next_tag;
        self.next_tag += 1;
        tag
    }

    /// Validates a change against the committed record and submits the new
    /// record as a barrier.
    fn on_membership_request(
        &mut self,
        change: membership::Change,
        reply: oneshot::Sender<Result<Membership, VolumeError>>,
    ) -> Vec<Action> {
        let next_generation = self.generation.saturating_add(1);
        let record = match membership::apply(&self.record, &change, next_generation) {
            Ok(record) => self.with_known_ids(record),
            Err(e) => {
                let _ = reply.send(Err(VolumeError::Refused(e.to_string())));
                return Vec::new();
            }
        };
        let (member_change, added) = match &change {
            membership::Change::Add {
                address,
                replica_id,
            } => (MemberChange::Add, Some((*address, *replica_id))),
            membership::Change::Remove(which) => {
                let index = which.position(&self.record).and_then(|p| {
                    let address = self.record.members.get(p)?.address.clone();
                    (0..self.addrs.len()).find(|i| {
                        self.addrs[*i].to_string() == address
                            && self.controller.replica_states().get(*i)
                                != Some(&ReplicaState::Removed)
                    })
                });
                match index {
                    Some(i) => (MemberChange::Remove(i), None),
                    None => {
                        let _ = reply.send(Err(VolumeError::Refused(
                            "the member has no link on this target".into(),
                        )));
                        return Vec::new();
                    }
                }
            }
            membership::Change::SetCf(_) => (MemberChange::None, None),
        };
        let new_cf = usize::from(record.consistency_factor);
        info!(volume = %self.params.volume, ?change, generation = record.generation, "membership change requested");
        self.submit_record(record, member_change, new_cf, added, Some(reply))
    }

    /// Fills in replica ids learnt since a member was recorded without one.
    fn with_known_ids(&self, mut record: Membership) -> Membership {
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

    /// Submits `record` as a barrier; `perform` finishes the change when
    /// it completes.
    fn submit_record(
        &mut self,
        record: Membership,
        change: MemberChange,
        new_cf: usize,
        added: Option<(SocketAddr, u128)>,
        reply: Option<oneshot::Sender<Result<Membership, VolumeError>>>,
    ) -> Vec<Action> {
        self.generation = self.generation.max(record.generation);
        let tag = self.take_tag();
        self.changes.insert(
            tag,
            PendingChange {
                record: record.clone(),
                change,
                added,
                reply,
            },
        );
        let op = Op::SetMembership {
            record,
            change,
            new_cf,
        };
        self.controller.submit(Instant::now(), tag, op)
    }

    /// The record committed (or not): the links follow it. Returns the
    /// reply to deliver once the status shows the change.
    fn finish_change(
        &mut self,
        tag: Tag,
        result: Result<Completion, VolumeError>,
    ) -> Option<ChangeReply> {
        let pending = self.changes.remove(&tag)?;
        let outcome = match result {
            Ok(_) => {
                info!(
                    volume = %self.params.volume,
                    generation = pending.record.generation,
                    "membership record committed"
                );
                match (pending.change, pending.added) {
                    (MemberChange::Add, Some((addr, id))) => self.link(addr, Some(id)),
                    (MemberChange::Remove(index), _) => {
                        if let Some(link) = self.links.get(index) {
                            link.stop.cancel();
                        }
                    }
                    _ => {}
                }
                self.record = pending.record.clone();
                Ok(pending.record)
            }
            Err(e) => {
                warn!(volume = %self.params.volume, error = %e, "membership record not committed");
                Err(e)
            }
        };
        pending.reply.map(|reply| (reply, outcome))
    }

    fn on_event(&mut self, event: LinkEvent) -> Vec<Action> {
        let now = Instant::now();
        match event {
            LinkEvent::Up {
                replica,
                generation,
                ack,
                status,
                membership,
            } => {
                // A record this target never saw (a change of an earlier
                // target that reached only this replica): never reuse its
                // generation.
                self.generation = self.generation.max(membership.generation);
                // The record and the status show the id it reports now;
                // whether it changed is the controller's call.
                if let Some(id) = self.replica_ids.get_mut(replica) {
                    *id = Some(ack.replica_id);
                }
                let hello = hello_facts(generation, &ack, &status);
                // Before its rebuild starts (if it needs one): the rate it
                // is to pull at.
                let throttle = Message::RebuildThrottle {
                    bytes_per_second: self.rebuild_throttle,
                };
                let mut actions = self
                    .controller
                    .on_hello(now, replica, hello, vec![throttle]);
                // After the rebuild start and the resent writes: the record,
                // so that every member holds it, unless it does already.
                if membership != self.record
                    && self
                        .controller
                        .replica_states()
                        .get(replica)
                        .is_some_and(|s| s.is_linked())
                {
                    actions.push(
                        self.controller
                            .unawaited(replica, Message::MembershipSet(self.record.clone())),
                    );
                }
                actions
            }
            LinkEvent::Reply {
                replica,
                generation,
                packet,
            } => {
                let before = self.controller.rebuild(replica);
                let actions = self.controller.on_reply(now, replica, generation, packet);
                let grown = rebuilt_growth(before, self.controller.rebuild(replica));
                if let Some(total) = self.rebuilt_bytes.get_mut(replica) {
                    *total = total.saturating_add(grown);
                }
                actions
            }
            LinkEvent::Down {
                replica,
                generation,
                ..
            } => self.controller.on_disconnected(now, replica, generation),
            LinkEvent::NotSent {
                replica,
                generation,
                io_seq,
            } => self
                .controller
                .on_not_sent(now, replica, generation, io_seq),
            LinkEvent::Fenced { replica, detail } => {
                warn!(replica, %detail, "fenced by a newer target");
                self.controller.on_fenced(now)
            }
        }
    }

    fn perform(&mut self, actions: Vec<Action>) {
        // Status first: whoever a completion wakes sees its effect (a grown
        // size, a new member) in the status.
        let mut completions = Vec::new();
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Send {
                    replica,
                    generation,
                    packet,
                } => queue.extend(self.queue_to_link(replica, generation, packet)),
                Action::Complete { tag, result } => completions.push((tag, result)),
                Action::Drop {
                    replica,
                    generation,
                    redial_after,
                    ..
                } => {
                    if let Some(link) = self.links.get(replica) {
                        link.resets.send_replace(Some(link::Reset {
                            generation,
                            pause: redial_after,
                        }));
                    }
                }
                Action::StartRebuild {
                    replica,
                    generation,
                    source,
                    from_io_seq,
                    first_live_io_seq,
                } => {
                    let Some(source_addr) = self.addrs.get(source) else {
                        continue;
                    };
                    let Ok(volume) = Name::new(self.params.volume.clone()) else {
                        warn!(volume = %self.params.volume, "volume name cannot travel: no rebuild");
                        continue;
                    };
                    let packet = Packet {
                        session_id: self.params.session_id,
                        epoch: self.params.epoch,
                        io_seq: first_live_io_seq,
                        message: Message::RebuildStart(RebuildStart {
                            peer_address: source_addr.to_string(),
                            volume,
                            from_io_seq,
                            source: RebuildSource::Live,
                        }),
                    };
                    queue.extend(self.queue_to_link(replica, generation, packet));
                }
            }
        }
        let mut change_replies = Vec::new();
        for (tag, result) in &completions {
            if self.changes.contains_key(tag) {
                change_replies.extend(self.finish_change(*tag, result.clone()));
            }
        }
        self.publish_status();
        for (tag, result) in completions {
            if let Some(waiter) = self.waiters.remove(&tag) {
                let _ = waiter.send(result);
            }
        }
        for (reply, outcome) in change_replies {
            let _ = reply.send(outcome);
        }
    }

    /// Queues `packet` to `replica`'s link. A full queue (a link stuck on
    /// its socket) is a packet not sent: the controller drops the replica
    /// (`limits::LINK_QUEUE`); returns what it decided.
    fn queue_to_link(
        &mut self,
        replica: ReplicaIndex,
        generation: controller::Generation,
        packet: Packet,
    ) -> Vec<Action> {
        let Some(link) = self.links.get(replica) else {
            return Vec::new();
        };
        let io_seq = packet.io_seq;
        match link
            .commands
            .try_send(LinkCommand::Send { generation, packet })
        {
            Ok(()) | Err(TrySendError::Closed(_)) => Vec::new(),
            Err(TrySendError::Full(_)) => {
                warn!(
                    replica,
                    io_seq,
                    queue = limits::LINK_QUEUE,
                    "link queue full"
                );
                self.controller
                    .on_not_sent(Instant::now(), replica, generation, io_seq)
            }
        }
    }

    /// Publishes the status if its shape changed, or if the IO counters
    /// are older than [`STATUS_COUNTERS_EVERY`] (the driver's tick comes
    /// through here too, so they never lag longer than about that).
    fn publish_status(&mut self) {
        let now = Instant::now();
        let shape = self.status_shape(now);
        let (published_shape, published_at) = self.published;
        if shape == published_shape
            && now.saturating_duration_since(published_at) < STATUS_COUNTERS_EVERY
        {
            return;
        }
        self.published = (shape, now);
        let new = self.status_of();
        self.status.send_if_modified(|s| {
            let changed = *s != new;
            *s = new;
            changed
        });
    }

    /// A digest of everything in the status but the IO counters: what
    /// must reach the status's watchers without delay.
    fn status_shape(&self, now: Instant) -> u64 {
        use std::hash::{BuildHasher, Hash, Hasher};
        let controller = &self.controller;
        // Computed after every batch of requests: a fast hash (only ever
        // compared with its own earlier values in this process).
        let mut h = foldhash::fast::FixedState::with_seed(0).build_hasher();
        for (i, state) in controller.replica_states().iter().enumerate() {
            state.hash(&mut h);
            self.addrs.get(i).hash(&mut h);
            self.replica_ids.get(i).hash(&mut h);
            controller
                .rebuild(i)
                .map(|r| (r.source, r.from_io_seq, r.first_live_io_seq, r.accepted))
                .hash(&mut h);
        }
        let config = controller.config();
        (config.cf, config.epoch, controller.healthy()).hash(&mut h);
        (controller.is_read_only(now), controller.is_fenced()).hash(&mut h);
        (controller.size_bytes(), controller.barrier_in_progress()).hash(&mut h);
        (self.record.generation, self.rebuild_throttle).hash(&mut h);
        h.finish()
    }

    /// The status: every member (removed replicas are left out).
    fn status_of(&mut self) -> VolumeStatus {
        let now = Instant::now();
        let controller = &self.controller;
        let states = controller.replica_states();
        let members: Vec<usize> = (0..self.addrs.len())
            .filter(|i| states.get(*i).is_some_and(|s| *s != ReplicaState::Removed))
            .collect();
        for i in 0..self.addrs.len() {
            let run = controller.rebuild(i).filter(|r| r.accepted);
            let clock = self.rebuild_clock.get_mut(i);
            if let Some(clock) = clock {
                match run {
                    Some(run)
                        if clock.is_none_or(|c| c.first_live_io_seq != run.first_live_io_seq) =>
                    {
                        *clock = Some(RebuildClock {
                            first_live_io_seq: run.first_live_io_seq,
                            started: now,
                            done_at_start: run.progress.done_bytes,
                        });
                    }
                    Some(_) => {}
                    None => *clock = None,
                }
            }
        }
        let position = |index: usize| members.iter().position(|m| *m == index);
        VolumeStatus {
            replicas: members
                .iter()
                .map(|i| (self.addrs[*i], states[*i]))
                .collect(),
            replica_ids: members
                .iter()
                .map(|i| self.replica_ids.get(*i).copied().flatten().unwrap_or(0))
                .collect(),
            cf: controller.config().cf,
            healthy: controller.healthy(),
            read_only: controller.is_read_only(now),
            fenced: controller.is_fenced(),
            epoch: controller.config().epoch,
            next_io_seq: controller.next_io_seq(),
            rebuilds: members
                .iter()
                .map(|i| {
                    controller.rebuild(*i).map(|mut run| {
                        run.source = position(run.source).unwrap_or(usize::MAX);
                        run
                    })
                })
                .collect(),
            rebuild_etas: members
                .iter()
                .map(|i| {
                    let run = controller.rebuild(*i)?;
                    let clock = self.rebuild_clock.get(*i).copied().flatten()?;
                    eta(clock, run.progress, now)
                })
                .collect(),
            acked_io_seqs: members.iter().map(|i| controller.acked_max(*i)).collect(),
            owed: members.iter().map(|i| controller.owed_by(*i)).collect(),
            in_flight: controller.in_flight(),
            size_bytes: controller.size_bytes(),
            barrier: controller.barrier_in_progress(),
            membership_generation: self.record.generation,
            rebuilt_bytes: members
                .iter()
                .map(|i| self.rebuilt_bytes.get(*i).copied().unwrap_or(0))
                .collect(),
            rebuild_throttle_bytes_per_sec: self.rebuild_throttle,
        }
    }
}

/// Bytes a reply made a replica's rebuild report beyond what it had
/// reported (`before` and `after` are its run around the reply): the
/// growth within a run, or all of a new run's progress. A run that ended
/// adds nothing: its last progress report came before its done.
fn rebuilt_growth(before: Option<RebuildRun>, after: Option<RebuildRun>) -> u64 {
    match (before, after) {
        (_, None) => 0,
        (Some(b), Some(a))
            if (b.source, b.from_io_seq, b.first_live_io_seq)
                == (a.source, a.from_io_seq, a.first_live_io_seq) =>
        {
            a.progress.done_bytes.saturating_sub(b.progress.done_bytes)
        }
        (_, Some(a)) => a.progress.done_bytes,
    }
}

/// Time left of a rebuild at the rate seen since its clock started, once
/// it moved.
fn eta(clock: RebuildClock, progress: RebuildProgress, now: Instant) -> Option<Duration> {
    let moved = progress.done_bytes.checked_sub(clock.done_at_start)?;
    if moved == 0 {
        return None;
    }
    let left = progress.total_bytes.saturating_sub(progress.done_bytes);
    let elapsed = now.saturating_duration_since(clock.started).as_secs_f64();
    let seconds = elapsed * (left as f64) / (moved as f64);
    Duration::try_from_secs_f64(seconds).ok()
}

fn snapshot_name(name: &str) -> Result<Name, VolumeError> {
    Name::new(name.to_owned())
        .map_err(|e| VolumeError::Refused(format!("snapshot name {name:?}: {e}")))
}

/// The facts of a replica's handshake the controller judges it on.
fn hello_facts(
    generation: controller::Generation,
    ack: &HelloAck,
    status: &StatusReport,
) -> ReplicaHello {
    ReplicaHello {
        generation,
        replica_id: ack.replica_id,
        size_bytes: ack.volume_size_bytes,
        last_durable_io_seq: ack.last_durable_io_seq,
        last_received_io_seq: status.last_received_io_seq,
        state: ack.state,
    }
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // Only distinguishes sessions in logs and frames; time will do.
        return std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
    }
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(done_bytes: u64, total_bytes: u64) -> RebuildProgress {
        RebuildProgress {
            done_bytes,
            total_bytes,
        }
    }

    fn run(first_live_io_seq: u64, done_bytes: u64) -> Option<RebuildRun> {
        Some(RebuildRun {
            source: 0,
            from_io_seq: 7,
            first_live_io_seq,
            accepted: true,
            progress: progress(done_bytes, 1000),
        })
    }

    #[test]
    fn rebuilt_bytes_grow_by_each_report_once_across_runs() {
        // Progress within a run counts its growth only.
        assert_eq!(rebuilt_growth(run(1, 100), run(1, 350)), 250);
        assert_eq!(rebuilt_growth(run(1, 350), run(1, 350)), 0);
        // A new run counts from zero; a replaced run's next report too.
        assert_eq!(rebuilt_growth(None, run(2, 40)), 40);
        assert_eq!(rebuilt_growth(run(1, 900), run(2, 40)), 40);
        // The end of a run (done or abort) adds nothing.
        assert_eq!(rebuilt_growth(run(1, 1000), None), 0);
        assert_eq!(rebuilt_growth(None, None), 0);
        // Summed over the replies of two runs: every reported byte once.
        let replies = [
            (None, run(1, 0)),
            (run(1, 0), run(1, 300)),
            (run(1, 300), run(1, 600)),
            (run(1, 600), None),
            (None, run(2, 0)),
            (run(2, 0), run(2, 1000)),
            (run(2, 1000), None),
        ];
        let total: u64 = replies.into_iter().map(|(b, a)| rebuilt_growth(b, a)).sum();
        assert_eq!(total, 1600);
    }

    #[test]
    fn a_rebuild_eta_extrapolates_the_rate_seen_since_its_clock_started() {
        let started = Instant::now();
        let clock = RebuildClock {
            first_live_io_seq: 1,
            started,
            done_at_start: 100,
        };
        let now = started + Duration::from_secs(10);
        // 400 bytes in 10 s, 1200 left: 30 s.
        assert_eq!(
            eta(clock, progress(500, 1700), now),
            Some(Duration::from_secs(30))
        );
        // Nothing moved yet (or the report went backwards): unknown.
        assert_eq!(eta(clock, progress(100, 1700), now), None);
        assert_eq!(eta(clock, progress(50, 1700), now), None);
        // Done: nothing left.
        assert_eq!(eta(clock, progress(1700, 1700), now), Some(Duration::ZERO));
    }
}
