//! The volume layer of the target: replicates every request to the
//! volume's replicas and answers at quorum.
//!
//! - [`controller`]: the quorum state machine (pure, no IO);
//! - [`link`]: one task per replica, dialling, claiming and pumping frames;
//! - `open`: [`Volume::open`] (probe the replicas, choose the epoch and
//!   the first io_seq, start the links and the driver);
//! - `driver`: the driver task that owns the controller and turns its
//!   actions into link commands and completions;
//! - [`glue`]: the driver's decisions without IO (a link coming up, the
//!   `RebuildStart` packet, a membership change's plan), which the driver
//!   and a simulator both call;
//! - [`scrub`]: the scrub task (digests, majority repair, cursor);
//! - `status`: the [`VolumeStatus`] the driver publishes (rebuilt bytes,
//!   rebuild ETAs);
//! - this module: the [`Volume`] handle the SCSI layer and the management
//!   interface call, and the volume's bounds.
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
mod driver;
pub mod glue;
pub mod link;
pub mod membership;
mod open;
pub mod scrub;
mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cstor_proto::{Membership, Name, SnapshotInfo};
use cstor_tls::Security;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

pub use controller::{Completion, Op, RebuildRun, ReplicaState, VolumeError};
pub use glue::{
    hello_facts, on_link_up, plan_change, rebuild_start_packet, throttle_actions, LinkUp,
    PlannedChange, Roster,
};
pub use link::carries;
pub use membership::MemberRef;
pub use open::{geometry, next_epoch, plan_open, OpenError, OpenPlan};
pub use status::VolumeStatus;

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
    /// How every connection to a replica (probes, claims, an added
    /// replica's probe) is secured: mutual TLS expecting the replica role,
    /// or plaintext by the operator's choice (`link` module doc).
    pub security: Security,
}

impl VolumeSpec {
    /// A spec with the default timings: drop a replica after 5 s without an
    /// acknowledgement, hold writes 20 s below quorum (both well under the
    /// Linux initiator's 30 s SCSI command timeout). `security` has no
    /// default: plaintext is only ever the caller's explicit choice.
    pub fn new(name: impl Into<String>, replicas: Vec<SocketAddr>, security: Security) -> Self {
        Self {
            name: name.into(),
            replicas,
            cf: None,
            ack_timeout: Duration::from_secs(5),
            hold: Duration::from_secs(20),
            open_timeout: Duration::from_secs(60),
            security,
        }
    }
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
    /// How a replica to add is probed.
    security: Security,
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
    /// Adds a replica to the volume (scale up, or the second half of a
    /// replace): probes it (reachable, same block size), then commits a
    /// membership record listing it at quorum; it then joins with a full
    /// rebuild and counts for quorum once that is done. Returns the record.
    pub async fn add_replica(&self, address: SocketAddr) -> Result<Membership, VolumeError> {
        let probe = tokio::time::timeout(
            link::CONNECT_TIMEOUT,
            link::probe(address, &self.name, &self.security),
        )
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

fn snapshot_name(name: &str) -> Result<Name, VolumeError> {
    Name::new(name.to_owned())
        .map_err(|e| VolumeError::Refused(format!("snapshot name {name:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use cstor_proto::RebuildProgress;

    use super::status::{eta, rebuilt_growth, RebuildClock};
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
