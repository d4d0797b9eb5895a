//! The volume layer of the target: replicates every request to the
//! volume's replicas and answers at quorum.
//!
//! - [`controller`]: the quorum state machine (pure, no IO);
//! - [`link`]: one task per replica, dialling, claiming and pumping frames;
//! - this module: [`Volume::open`] (probe the replicas, choose the epoch and
//!   the first io_seq, start the links) and the driver task that owns the
//!   controller and turns its actions into link commands and completions.
//!
//! Opening a volume (DESIGN.md "io_seq is the order of truth", invariant 5):
//! every replica is probed (epoch 0, claims nothing); once `cf` of them
//! answered, the target takes the epoch one above the highest any of them
//! accepted and starts numbering writes [`IO_SEQ_MARGIN`] above the highest
//! io_seq any of them received, so nothing written but unreported can be
//! outnumbered. Replicas that reported less than the most advanced one are
//! degraded from the start.
//!
//! Rebuild: the controller decides (see [`controller`]); the driver turns
//! its `StartRebuild` into a `RebuildStart` naming the source's data
//! address. A replica whose replica id changed since the driver last saw it
//! (its pool was replaced) is rebuilt in full.

pub mod controller;
pub mod link;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cstor_proto::{Message, Name, Packet, RebuildSource, RebuildStart, SnapshotInfo};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use controller::{Action, Controller, ControllerConfig, Tag};
pub use controller::{Completion, Op, RebuildRun, ReplicaState, VolumeError};
use link::{LinkCommand, LinkEvent, SessionParams};

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

/// What a volume is made of and how it behaves.
#[derive(Debug, Clone)]
pub struct VolumeSpec {
    pub name: String,
    pub replicas: Vec<SocketAddr>,
    /// Consistency factor; `None`: a majority of the replicas.
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
    #[error("only {answered} of the {cf} replicas needed answered within {timeout:?}: {errors}")]
    NoQuorum {
        answered: usize,
        cf: usize,
        timeout: Duration,
        errors: String,
    },
    #[error("replicas disagree on the volume's geometry: {0}")]
    Geometry(String),
}

/// What the volume looks like now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeStatus {
    pub replicas: Vec<(SocketAddr, ReplicaState)>,
    pub cf: usize,
    pub healthy: usize,
    pub read_only: bool,
    pub fenced: bool,
    pub epoch: u64,
    pub next_io_seq: u64,
    /// Per replica: its rebuild, while one runs (progress included).
    pub rebuilds: Vec<Option<RebuildRun>>,
    /// Per replica: the highest io_seq of a mutating request it
    /// acknowledged on this target.
    pub acked_io_seqs: Vec<u64>,
    /// Per replica: mutating requests sent to it and not yet answered.
    pub owed: Vec<usize>,
    /// Requests the SCSI layer waits for.
    pub in_flight: usize,
    /// The volume's size now (grows with an acknowledged resize).
    pub size_bytes: u64,
    /// A snapshot or resize is in progress (writes are held).
    pub barrier: bool,
}

/// An open volume. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Volume {
    requests: mpsc::Sender<Request>,
    status: watch::Receiver<VolumeStatus>,
    stop: CancellationToken,
    block_size: u32,
}

struct Request {
    op: Op,
    reply: oneshot::Sender<Result<Completion, VolumeError>>,
}

impl Volume {
    /// Probes the replicas, claims the volume and starts serving it.
    pub async fn open(spec: VolumeSpec) -> Result<Volume, OpenError> {
        let n = spec.replicas.len();
        if !(1..=5).contains(&n) {
            return Err(OpenError::ReplicaCount(n));
        }
        let cf = spec.cf.unwrap_or(ControllerConfig::majority(n));
        if !(1..=n).contains(&cf) {
            return Err(OpenError::ConsistencyFactor { cf, replicas: n });
        }
        let probes = probe_quorum(&spec, cf).await?;
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
        let (size_bytes, block_size) = geometry(&spec, &probes, max_received)?;
        let missed_from: Vec<Option<u64>> = probes
            .iter()
            .map(|p| match p {
                Some((ack, status))
                    if status.last_received_io_seq.max(ack.last_durable_io_seq) < max_received
                        || rebuild_unfinished(ack) =>
                {
                    Some(ack.last_durable_io_seq.saturating_add(1))
                }
                _ => None,
            })
            .collect();
        let params = SessionParams {
            volume: spec.name.clone(),
            epoch: highest_epoch.saturating_add(1),
            session_id: random_u64(),
            first_io_seq: max_received.saturating_add(IO_SEQ_MARGIN),
        };
        info!(
            volume = %spec.name,
            epoch = params.epoch,
            first_io_seq = params.first_io_seq,
            size_bytes,
            cf,
            "opening volume"
        );
        let config = ControllerConfig {
            replicas: n,
            cf,
            ack_timeout: spec.ack_timeout,
            hold: spec.hold,
            session_id: params.session_id,
            epoch: params.epoch,
            first_io_seq: params.first_io_seq,
            size_bytes,
        };
        let controller = Controller::new(config, &missed_from, Instant::now());
        let stop = CancellationToken::new();
        let (events_tx, events) = mpsc::unbounded_channel();
        let mut links = Vec::with_capacity(n);
        for (index, addr) in spec.replicas.iter().enumerate() {
            let (tx, rx) = mpsc::unbounded_channel();
            links.push(tx);
            tokio::spawn(link::run(
                index,
                *addr,
                params.clone(),
                rx,
                events_tx.clone(),
                stop.clone(),
            ));
        }
        let (requests, request_rx) = mpsc::channel(REQUEST_QUEUE);
        let (status_tx, status) = watch::channel(status_of(&controller, &spec.replicas));
        let driver = Driver {
            controller,
            addrs: spec.replicas.clone(),
            links,
            waiters: HashMap::new(),
            next_tag: 1,
            start_max_received: max_received,
            seen: vec![false; n],
            replica_ids: probes
                .iter()
                .map(|p| p.as_ref().map(|(ack, _)| ack.replica_id))
                .collect(),
            volume: spec.name.clone(),
            session_id: params.session_id,
            epoch: params.epoch,
            status: status_tx,
        };
        tokio::spawn(driver.run(request_rx, events, stop.clone()));
        Ok(Volume {
            requests,
            status,
            stop,
            block_size,
        })
    }

    /// Performs one request.
    pub async fn submit(&self, op: Op) -> Result<Completion, VolumeError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request { op, reply })
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

/// Probes every replica until `cf` answered or the open timeout passed.
/// Replicas that did not answer are `None`.
async fn probe_quorum(
    spec: &VolumeSpec,
    cf: usize,
) -> Result<Vec<Option<(cstor_proto::HelloAck, cstor_proto::StatusReport)>>, OpenError> {
    let deadline = tokio::time::Instant::now() + spec.open_timeout;
    let mut results: Vec<Option<_>> = vec![None; spec.replicas.len()];
    let mut errors: Vec<String> = vec![String::new(); spec.replicas.len()];
    loop {
        let mut probes = Vec::new();
        for (i, addr) in spec.replicas.iter().enumerate() {
            if results[i].is_none() {
                let name = spec.name.clone();
                let addr = *addr;
                probes.push(tokio::spawn(async move {
                    let r = tokio::time::timeout(link::CONNECT_TIMEOUT, link::probe(addr, &name))
                        .await
                        .unwrap_or_else(|_| Err("probe timed out".into()));
                    (i, r)
                }));
            }
        }
        for probe in probes {
            if let Ok((i, r)) = probe.await {
                match r {
                    Ok(answer) => results[i] = Some(answer),
                    Err(e) => errors[i] = format!("{}: {e}", spec.replicas[i]),
                }
            }
        }
        let answered = results.iter().filter(|r| r.is_some()).count();
        if answered >= cf {
            return Ok(results);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(OpenError::NoQuorum {
                answered,
                cf,
                timeout: spec.open_timeout,
                errors: errors
                    .into_iter()
                    .filter(|e| !e.is_empty())
                    .collect::<Vec<_>>()
                    .join("; "),
            });
        }
        tokio::time::sleep(link::BACKOFF_MAX).await;
    }
}

/// Size and block size, from the most advanced replicas (a grow may have
/// reached only some of the others).
fn geometry(
    spec: &VolumeSpec,
    probes: &[Option<(cstor_proto::HelloAck, cstor_proto::StatusReport)>],
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
            return Err(OpenError::Geometry(format!(
                "{} has {s} bytes in {b}-byte blocks, another {size} in {block}",
                spec.replicas[i]
            )));
        }
    }
    Ok((size, block))
}

struct Driver {
    controller: Controller,
    addrs: Vec<SocketAddr>,
    links: Vec<mpsc::UnboundedSender<LinkCommand>>,
    waiters: HashMap<Tag, oneshot::Sender<Result<Completion, VolumeError>>>,
    next_tag: Tag,
    start_max_received: u64,
    seen: Vec<bool>,
    /// Per replica: the replica id it last reported.
    replica_ids: Vec<Option<u128>>,
    volume: String,
    session_id: u64,
    epoch: u64,
    status: watch::Sender<VolumeStatus>,
}

impl Driver {
    async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut events: mpsc::UnboundedReceiver<LinkEvent>,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let actions = tokio::select! {
                () = stop.cancelled() => break,
                request = requests.recv() => match request {
                    Some(Request { op, reply }) => {
                        let tag = self.next_tag;
                        self.next_tag += 1;
                        self.waiters.insert(tag, reply);
                        self.controller.submit(Instant::now(), tag, op)
                    }
                    None => break,
                },
                event = events.recv() => match event {
                    Some(event) => self.on_event(event),
                    None => break,
                },
                _ = tick.tick() => self.controller.tick(Instant::now()),
            };
            // Status first: whoever a completion wakes sees its effect
            // (a grown size) in the status.
            self.status.send_if_modified(|s| {
                let new = status_of(&self.controller, &self.addrs);
                let changed = *s != new;
                *s = new;
                changed
            });
            self.perform(actions);
        }
        for (_, waiter) in self.waiters.drain() {
            let _ = waiter.send(Err(VolumeError::Unavailable));
        }
    }

    fn on_event(&mut self, event: LinkEvent) -> Vec<Action> {
        let now = Instant::now();
        match event {
            LinkEvent::Up {
                replica,
                ack,
                status,
            } => {
                let size = self.controller.config().size_bytes;
                if ack.volume_size_bytes < size {
                    warn!(
                        replica,
                        have = ack.volume_size_bytes,
                        want = size,
                        "replica is smaller than the volume"
                    );
                    self.controller.mark_missed(replica, 0);
                }
                let previous_id = self
                    .replica_ids
                    .get_mut(replica)
                    .and_then(|id| id.replace(ack.replica_id));
                if previous_id.is_some_and(|id| id != ack.replica_id) {
                    warn!(replica, "replica id changed (new pool?): full rebuild");
                    self.controller.mark_missed(replica, 0);
                }
                if rebuild_unfinished(&ack) {
                    warn!(replica, "replica has an unfinished rebuild");
                    self.controller
                        .mark_missed(replica, ack.last_durable_io_seq.saturating_add(1));
                }
                let received = status.last_received_io_seq.max(ack.last_durable_io_seq);
                let first_contact = !std::mem::replace(&mut self.seen[replica], true);
                // Unreachable at open and behind the others, or restarted and
                // lost writes it had acknowledged (they were not flushed).
                let behind = (first_contact && received < self.start_max_received)
                    || received < self.controller.acked_max(replica);
                if behind && self.addrs.len() == 1 {
                    // The only copy: what it lost was never flushed (a
                    // flushed write is durable on it), and exists nowhere
                    // else. Carry on from what it has, as a disk would
                    // after a power loss.
                    warn!(
                        replica,
                        received, "the only replica restarted and lost unflushed writes"
                    );
                } else if behind {
                    warn!(
                        replica,
                        received, "replica came back without writes it should hold"
                    );
                    self.controller
                        .mark_missed(replica, ack.last_durable_io_seq.saturating_add(1));
                }
                self.controller
                    .on_connected_sized(now, replica, ack.volume_size_bytes)
            }
            LinkEvent::Reply { replica, packet } => self.controller.on_reply(now, replica, packet),
            LinkEvent::Down { replica, .. } => self.controller.on_disconnected(now, replica),
            LinkEvent::Fenced { replica, detail } => {
                warn!(replica, %detail, "fenced by a newer target");
                self.controller.on_fenced(now)
            }
        }
    }

    fn perform(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { replica, packet } => {
                    if let Some(link) = self.links.get(replica) {
                        let _ = link.send(LinkCommand::Send(packet));
                    }
                }
                Action::Complete { tag, result } => {
                    if let Some(waiter) = self.waiters.remove(&tag) {
                        let _ = waiter.send(result);
                    }
                }
                Action::Drop { replica, .. } => {
                    if let Some(link) = self.links.get(replica) {
                        let _ = link.send(LinkCommand::Reset);
                    }
                }
                Action::StartRebuild {
                    replica,
                    source,
                    from_io_seq,
                    first_live_io_seq,
                } => {
                    let (Some(link), Some(source_addr)) =
                        (self.links.get(replica), self.addrs.get(source))
                    else {
                        continue;
                    };
                    let Ok(volume) = Name::new(self.volume.clone()) else {
                        warn!(volume = %self.volume, "volume name cannot travel: no rebuild");
                        continue;
                    };
                    let packet = Packet {
                        session_id: self.session_id,
                        epoch: self.epoch,
                        io_seq: first_live_io_seq,
                        message: Message::RebuildStart(RebuildStart {
                            peer_address: source_addr.to_string(),
                            volume,
                            from_io_seq,
                            source: RebuildSource::Live,
                        }),
                    };
                    let _ = link.send(LinkCommand::Send(packet));
                }
            }
        }
    }
}

fn status_of(controller: &Controller, addrs: &[SocketAddr]) -> VolumeStatus {
    let now = Instant::now();
    VolumeStatus {
        replicas: addrs
            .iter()
            .copied()
            .zip(controller.replica_states())
            .collect(),
        cf: controller.config().cf,
        healthy: controller.healthy(),
        read_only: controller.is_read_only(now),
        fenced: controller.is_fenced(),
        epoch: controller.config().epoch,
        next_io_seq: controller.next_io_seq(),
        rebuilds: (0..addrs.len()).map(|i| controller.rebuild(i)).collect(),
        acked_io_seqs: (0..addrs.len()).map(|i| controller.acked_max(i)).collect(),
        owed: (0..addrs.len()).map(|i| controller.owed_by(i)).collect(),
        in_flight: controller.in_flight(),
        size_bytes: controller.size_bytes(),
        barrier: controller.barrier_in_progress(),
    }
}

fn snapshot_name(name: &str) -> Result<Name, VolumeError> {
    Name::new(name.to_owned())
        .map_err(|e| VolumeError::Refused(format!("snapshot name {name:?}: {e}")))
}

/// The replica says a rebuild of it did not finish: it is complete only
/// through its reported durable io_seq, whatever else it holds.
fn rebuild_unfinished(ack: &cstor_proto::HelloAck) -> bool {
    matches!(
        ack.state,
        cstor_proto::ReplicaState::Degraded | cstor_proto::ReplicaState::Rebuilding
    )
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
