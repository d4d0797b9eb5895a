//! One simulated run: the cluster, the scheduler, the faults and the
//! oracles (docs/simulation.md).
//!
//! Job: wire the real cores together the way the async shells do — the
//! target's iSCSI session core ([`FullFeature`]) and logical unit
//! (through `cstor_target::server::task`), its block requests
//! (`cstor_target::server::block::perform`), the volume controller and the
//! driver's decisions (`cstor_target::volume::glue`), the link's generation
//! gate (`cstor_target::volume::carries`); on each replica the session core
//! (`cstor_replica::session::core`: handshake, epoch claim, ordering,
//! execution against a real pool), the rebuild sink and source — through a
//! simulated network and clock, with faults chosen by the seed, and check
//! the oracles on every step.
//!
//! The scheduler is a queue of events ordered by (simulated time, sequence
//! number); between two events the executor polls every woken task to a
//! standstill and the scheduler carries out what the tasks asked for
//! ([`Out`]). Nothing reads the wall clock; the one random source is the
//! seed's [`Rng`]. So a seed always gives the same run, and the trace hash
//! (every event, in order) shows it.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cstor_engine::io::{CrashDevice, CrashPolicy, FaultyDevice};
use cstor_engine::{DeviceRef, Pool, PoolOptions, Provisioning};
use cstor_proto::{
    Hello, HelloAck, Membership, Message, Name, Packet, Status, StatusReport, VersionRange,
};
use cstor_replica::registry::Registry;
use cstor_replica::session::core::{self as rcore, Opening, Routed, SessionCore};
use cstor_target::iscsi::login::{LoginAction, LoginMachine, TargetConfig};
use cstor_target::iscsi::pdu::Pdu;
use cstor_target::iscsi::session::{Action as IscsiAction, FullFeature};
use cstor_target::scsi::lu::{BlockSize, LuConfig, VolumeState};
use cstor_target::scsi::{IoResult, LogicalUnit, Nexus};
use cstor_target::server::block::{perform as block_perform, BlockVolume, WriteGate};
use cstor_target::server::task::{self, Started, TaskIo};
use cstor_target::volume::controller::{
    Action, Completion, Controller, ControllerConfig, MemberChange, Op, ReplicaState, Tag,
    VolumeError,
};
use cstor_target::volume::glue::{self, LinkUp, PlannedChange, Roster};
use cstor_target::volume::membership::{self, OpenStep};
use cstor_target::volume::{carries, plan_open, OpenPlan, IO_SEQ_MARGIN, TICK};
use cstor_tls::{Identity, Peer};
use futures::channel::oneshot;
use futures::FutureExt;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::exec::{Clock, Executor, NodeId};
use crate::initiator::{Command, Finished, Initiator, Outcome, Phase, COMMAND_TIMEOUT_US};
use crate::model::{block_content, Model, BLOCK, SAME_LBA};
use crate::net::{ConnId, End, Host, Latency, Net};
use crate::rebuild_io::{link_pair, LinkHandle, Requests, SimRebuildIo};
use crate::rng::Rng;

/// The simulated volume's name.
pub const VOLUME: &str = "simvol";
const CHUNK_BYTES: u32 = 64 * 1024;
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
const HOLD: Duration = Duration::from_secs(20);
/// A link's dial backoff (as `cstor_target::volume::link`).
const BACKOFF_MIN_US: u64 = 100_000;
const BACKOFF_MAX_US: u64 = 5_000_000;
/// A link's dial and claim (or a probe) must finish within this
/// (`cstor_target::volume::link::CONNECT_TIMEOUT`).
const CONNECT_TIMEOUT_US: u64 = 5_000_000;
/// The driver → link and link → driver channel hop.
const HOP_MAX_US: u64 = 200;
/// Liveness: with quorum and no faults, a command completes within this.
pub const LIVENESS_BOUND_US: u64 = 60_000_000;
/// After the faults stop, every replica is healthy within this.
pub const CONVERGENCE_BOUND_US: u64 = 300_000_000;
/// Executor tasks and queued events bounded (memory).
const MAX_TASKS: usize = 20_000;
const MAX_EVENTS: usize = 200_000;

/// A run's shape, chosen by its seed.
#[derive(Debug, Clone)]
pub struct Plan {
    pub replicas: usize,
    pub cf: usize,
    pub initiators: u32,
    pub volume_bytes: u64,
    /// Device size of each initial replica's pool.
    pub pool_bytes: Vec<u64>,
    /// How long faults and operator actions go on.
    pub fault_phase_us: u64,
    pub faults: bool,
    pub operator: bool,
    /// Queue depth of each initiator.
    pub qd: usize,
    /// Mean pause between two commands of an initiator.
    pub think_us: u64,
}

impl Plan {
    pub fn draw(rng: &mut Rng) -> Plan {
        let replicas = *rng.pick(&[1usize, 2, 3, 3, 3, 3]).unwrap_or(&3);
        let cf = if replicas == 3 && rng.chance(15) {
            3
        } else if replicas > 1 && rng.chance(10) {
            1
        } else {
            ControllerConfig::majority(replicas)
        };
        let volume_bytes = 1 << 20;
        let mut pool_bytes = vec![16u64 << 20; replicas];
        // Out of space: one pool (or all) too small to hold the volume
        // (1.5 MiB: about 1 MiB of data chunks beside the metadata) or its
        // snapshots (3 MiB).
        if rng.chance(20) {
            let small = if rng.chance(50) {
                3u64 << 19
            } else {
                3u64 << 20
            };
            if rng.chance(30) {
                pool_bytes.iter_mut().for_each(|p| *p = small);
            } else if let Some(p) = pool_bytes.get_mut(rng.below(replicas as u64) as usize) {
                *p = small;
            }
        }
        Plan {
            replicas,
            cf,
            initiators: if rng.chance(30) { 2 } else { 1 },
            volume_bytes,
            pool_bytes,
            fault_phase_us: rng.range(5_000_000, 20_000_000),
            faults: rng.chance(90),
            operator: rng.chance(70),
            qd: rng.range(1, 8) as usize,
            think_us: rng.range(200, 5_000),
        }
    }
}

/// Counts of a run.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub commands: u64,
    pub ops_by_kind: BTreeMap<&'static str, u64>,
    pub faults_by_kind: BTreeMap<&'static str, u64>,
    pub operator_by_kind: BTreeMap<&'static str, u64>,
    pub events: u64,
    pub sim_us: u64,
    pub reads_checked: u64,
}

/// What tasks ask of the scheduler.
enum Out {
    /// A replica sends `packet` on connection `conn` (towards the target).
    Frame { conn: ConnId, packet: Packet },
    /// A replica's handshake of `conn` finished.
    Opened {
        host: u32,
        life: u64,
        conn: ConnId,
        opening: Opening,
    },
    /// An IO of `conn` finished (its slot is free).
    IoDone { host: u32, life: u64, conn: ConnId },
    /// A block request of the target finished.
    Performed {
        instance: u64,
        conn: ConnId,
        perform: u64,
        io: TaskIo,
        result: IoResult,
    },
    /// The target's volume handle submits an operation.
    Submit {
        instance: u64,
        op: Op,
        reply: oneshot::Sender<Result<Completion, VolumeError>>,
    },
}

type Outbox = Rc<RefCell<Vec<Out>>>;

/// The block layer's view of the simulated volume: what
/// `server::block::perform` submits goes to the controller.
struct SimVolume {
    instance: u64,
    outbox: Outbox,
    size_bytes: Rc<std::cell::Cell<u64>>,
}

impl BlockVolume for SimVolume {
    fn submit(&self, op: Op) -> impl std::future::Future<Output = Result<Completion, VolumeError>> {
        let (tx, rx) = oneshot::channel();
        self.outbox.borrow_mut().push(Out::Submit {
            instance: self.instance,
            op,
            reply: tx,
        });
        async move { rx.await.unwrap_or(Err(VolumeError::Unavailable)) }
    }

    fn size_bytes(&self) -> u64 {
        self.size_bytes.get()
    }
}

#[derive(Debug)]
enum Ev {
    /// An iSCSI PDU arrives at `to` of `conn`.
    Pdu {
        conn: ConnId,
        to: End,
        pdu: Pdu,
    },
    /// A replication frame arrives at `to` of `conn`.
    Frame {
        conn: ConnId,
        to: End,
        packet: Packet,
    },
    /// `end` of `conn` learns that the connection closed.
    Closed {
        conn: ConnId,
        end: End,
    },
    /// A packet the driver queued reaches the link of `replica`.
    LinkCommand {
        instance: u64,
        replica: usize,
        generation: u64,
        packet: Packet,
    },
    /// A link event reaches the driver.
    LinkUp {
        instance: u64,
        replica: usize,
        generation: u64,
        ack: Box<HelloAck>,
        status: Box<StatusReport>,
        membership: Box<Membership>,
    },
    LinkDown {
        instance: u64,
        replica: usize,
        generation: u64,
    },
    LinkReply {
        instance: u64,
        replica: usize,
        generation: u64,
        packet: Packet,
    },
    NotSent {
        instance: u64,
        replica: usize,
        generation: u64,
        io_seq: u64,
    },
    Fenced {
        instance: u64,
    },
    /// The controller's clock tick.
    Tick {
        instance: u64,
    },
    /// A link's claim on `conn` times out unless it finished.
    ClaimTimeout {
        instance: u64,
        replica: usize,
        conn: ConnId,
    },
    /// A link dials (again).
    Dial {
        instance: u64,
        replica: usize,
    },
    /// The opening target probes again.
    Probe {
        instance: u64,
    },
    /// An initiator's next step.
    Work {
        initiator: u32,
    },
    /// The command timeout of an initiator's command `itt` (CmdSN
    /// `cmd_sn`) expires.
    CommandTimeout {
        initiator: u32,
        itt: u32,
        cmd_sn: u32,
    },
    /// The next fault.
    Fault,
    /// The next operator action.
    Operator,
    /// A crashed or stopped process starts again.
    StartReplica {
        host: u32,
    },
    /// A daemon whose disk failed is restarted (process restart).
    RestartReplica {
        host: u32,
    },
    StartTarget,
    /// A partition or slowness ends.
    Heal {
        host: Host,
    },
    /// The faults stop: the quiet phase begins.
    Quiet,
    /// The workload stops issuing; the run ends once all settled.
    Drain,
}

impl Ev {
    /// A code and key of the event for the trace hash.
    fn trace_key(&self) -> (u64, u64) {
        match self {
            Ev::Pdu { conn, .. } => (1, *conn),
            Ev::Frame { conn, packet, .. } => (2, conn ^ packet.io_seq.rotate_left(20)),
            Ev::Closed { conn, .. } => (3, *conn),
            Ev::LinkCommand {
                replica, packet, ..
            } => (4, *replica as u64 ^ packet.io_seq.rotate_left(8)),
            Ev::LinkUp {
                replica,
                generation,
                ..
            } => (5, (*replica as u64) << 32 | generation),
            Ev::LinkDown {
                replica,
                generation,
                ..
            } => (6, (*replica as u64) << 32 | generation),
            Ev::NotSent { io_seq, .. } => (7, *io_seq),
            Ev::Fenced { instance } => (8, *instance),
            Ev::Tick { instance } => (9, *instance),
            Ev::Dial { replica, .. } => (10, *replica as u64),
            Ev::Probe { instance } => (11, *instance),
            Ev::Work { initiator } => (12, u64::from(*initiator)),
            Ev::Fault => (13, 0),
            Ev::Operator => (14, 0),
            Ev::StartReplica { host } => (15, u64::from(*host)),
            Ev::StartTarget => (16, 0),
            Ev::Heal { .. } => (17, 0),
            Ev::Quiet => (18, 0),
            Ev::Drain => (19, 0),
            Ev::ClaimTimeout { conn, .. } => (22, *conn),
            Ev::RestartReplica { host } => (20, u64::from(*host)),
            Ev::LinkReply {
                replica, packet, ..
            } => (21, (*replica as u64) << 48 ^ packet.io_seq),
            Ev::CommandTimeout {
                initiator, cmd_sn, ..
            } => (22, u64::from(*initiator) << 32 | u64::from(*cmd_sn)),
        }
    }
}

/// A replica's connection, replica side.
enum RConn {
    /// The `Hello` is being answered; later packets wait.
    Opening(VecDeque<Packet>),
    Open {
        session: Rc<SessionCore>,
        replies: tokio::sync::mpsc::Sender<Packet>,
        stop: CancellationToken,
        /// Requests waiting for a slot (the read loop stopped reading).
        waiting: VecDeque<Packet>,
        in_flight: usize,
    },
}

struct Running {
    life: u64,
    node: NodeId,
    registry: Arc<Registry>,
    conns: BTreeMap<ConnId, RConn>,
    /// IO tasks running, whether or not their connection is still open
    /// (a write taken before the target went away still lands).
    ios: usize,
    /// Cancelled when the process dies (its sinks stop).
    stop: CancellationToken,
}

/// A replica daemon and its pool's device.
struct Replica {
    host: u32,
    addr: SocketAddr,
    pool_name: String,
    device: Arc<FaultyDevice<CrashDevice>>,
    running: Option<Running>,
    lives: u64,
    /// Removed from the volume by the operator: never started again.
    retired: bool,
    /// A disk fault is armed on its device (until the daemon restarts).
    disk_armed: bool,
    /// Its last answer to the target that was not an ack said `NoSpace`
    /// (a write or a rebuild found no free chunk in its pool).
    out_of_space: bool,
}

/// A link of the target to one replica index.
struct Link {
    host: u32,
    state: LinkState,
    generation: u64,
    backoff_us: u64,
    /// Not before: the controller's pause of a failed replica.
    not_before: u64,
    stopped: bool,
    dial_scheduled: bool,
    /// When the last command queued to this link arrives (FIFO).
    last_command: u64,
    /// A slow link task (fault "slow_link_task"): until `lag_until`, each
    /// command the controller queues reaches the link `lag_us` late, while
    /// the link's connections come and go on time.
    lag_us: u64,
    lag_until: u64,
}

enum LinkState {
    Idle,
    Claiming {
        conn: ConnId,
        ack: Option<Box<HelloAck>>,
        status: Option<Box<StatusReport>>,
    },
    Up {
        conn: ConnId,
    },
}

/// A probe of the opening target.
struct Probe {
    addr: SocketAddr,
    /// When it was dialled.
    started: u64,
    ack: Option<HelloAck>,
    status: Option<StatusReport>,
}

/// A probe's answer: the target's own type (`volume::plan_open` reads it).
type Probed = cstor_target::volume::link::Probe;

/// The volume, once open.
struct OpenVolume {
    controller: Controller,
    roster: Roster,
    session_id: u64,
    epoch: u64,
    /// The first io_seq of this target (every `Hello` names it).
    first_io_seq: u64,
    links: Vec<Link>,
    waiters: BTreeMap<Tag, oneshot::Sender<Result<Completion, VolumeError>>>,
    changes: BTreeMap<Tag, PlannedChange>,
    operator: BTreeMap<Tag, OperatorOp>,
    next_tag: Tag,
    /// Links that have been up at least once since the open.
    claimed: BTreeSet<usize>,
    fenced: bool,
}

/// The range a `--scrub` step compares (`Options::scrub`).
const SCRUB_SIM_RANGE: u64 = 64 * 1024;

#[derive(Debug, Clone)]
enum OperatorOp {
    Snapshot {
        name: String,
        submitted: u64,
    },
    DestroySnapshot {
        name: String,
    },
    Resize,
    Membership {
        retiring: Option<u32>,
    },
    FirstRecord,
    /// Scrub (`--scrub`): the digest of a range, the read of it from one
    /// replica, and its write back guarded by the digest.
    ScrubDigest {
        offset: u64,
    },
    ScrubRead {
        guard: u64,
        offset: u64,
    },
    ScrubRepair,
}

enum TargetState {
    Probing {
        probes: BTreeMap<ConnId, Probe>,
        answers: BTreeMap<SocketAddr, Probed>,
    },
    Open(Box<OpenVolume>),
}

/// One connection of an initiator, target side.
struct ISession<'c> {
    login: Option<LoginMachine<'c>>,
    ff: Option<FullFeature<'c>>,
    nexus: Option<Nexus>,
}

struct Target<'c> {
    instance: u64,
    node: NodeId,
    state: TargetState,
    /// The logical unit, once the volume is open (no iSCSI before).
    lu: Option<LogicalUnit>,
    gate: Rc<WriteGate>,
    size: Rc<std::cell::Cell<u64>>,
    sessions: BTreeMap<ConnId, ISession<'c>>,
    /// Block requests running: id → connection.
    performs: BTreeMap<u64, ConnId>,
    /// Per link: when its last event reaches the driver (FIFO).
    link_events_last: BTreeMap<usize, u64>,
    /// iSCSI connections whose close the target has seen.
    closed_conns: BTreeSet<ConnId>,
    next_tsih: u16,
}

/// A write whose outcome the initiator does not know, waiting to learn
/// when it can no longer land.
struct Ambiguous {
    id: u64,
    /// Resolved once every block request started up to this id finished
    /// (and, if the target died, once a new one claimed every member).
    perform_mark: u64,
    instance: u64,
    /// The initiator connection it was lost with, if any: the target must
    /// have seen that close first.
    conn: Option<ConnId>,
}

/// One initiator and its connection.
struct Ini {
    ini: Initiator,
    conn: Option<ConnId>,
    /// Commands issued and not finished: (issue time).
    stalled_check: BTreeMap<u32, u64>,
    relogin_at: Option<u64>,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub seed: u64,
    pub failure: Option<String>,
    pub trace_hash: u64,
    pub stats: Stats,
    pub plan: Plan,
}

/// Knobs of a run that are not the seed's (fixes reverted for testing the
/// simulator itself are not knobs: they are code changes).
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Stop the run at this simulated time at the latest (safety).
    pub max_sim_us: u64,
    /// Print every event to stderr (replaying one seed).
    pub verbose: bool,
    /// At every operator event, also scrub a range as the target's scrub
    /// does (digest, read from a replica, repair guarded by the digest),
    /// with no mismatch planted: the healthy replicas' digests must agree,
    /// and the repair (an ordinary write of data read back) must never put
    /// older data over a newer write (docs/simulation.md, "Scrub"). Off by
    /// default: it changes what each seed runs.
    pub scrub: bool,
    /// A replica the operator adds already holds stale data (a reused
    /// disk: random blocks written before it joins), so its full rebuild
    /// goes by digest (replica/src/rebuild.rs, "By digest") and must leave
    /// nothing of that data where the volume's differs. Off by default: it
    /// changes what each seed runs.
    pub stale_adds: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_sim_us: 600_000_000,
            verbose: false,
            scrub: false,
            stale_adds: false,
        }
    }
}

pub struct World<'c> {
    cfg: &'c TargetConfig,
    rng: Rng,
    clock: Clock,
    exec: Executor,
    base: Instant,
    queue: BTreeMap<(u64, u64), Ev>,
    seq: u64,
    net: Net,
    model: Model,
    trace: u64,
    plan: Plan,
    target: Option<Target<'c>>,
    instances: u64,
    target_down_since: Option<u64>,
    replicas: Vec<Replica>,
    initiators: Vec<Ini>,
    outbox: Outbox,
    requests: Arc<Mutex<Requests>>,
    rebuild_links: Vec<(NodeId, NodeId, LinkHandle)>,
    failure: Option<String>,
    stats: Stats,
    quiet: bool,
    quiet_since: u64,
    /// Acknowledged snapshots: when asked for and when taken.
    snapshots: BTreeMap<String, (u64, u64)>,
    /// Snapshots in doubt: a create or destroy that failed (or whose
    /// target crashed) may have been taken by some replicas. Where one
    /// exists it must hold the content of when it was taken (if it was
    /// acknowledged once); the operator retries the destroy until it
    /// succeeds, as CSI does, before the final checks.
    doubtful_snapshots: BTreeMap<String, Option<(u64, u64)>>,
    ambiguous: Vec<Ambiguous>,
    next_perform: u64,
    next_node: NodeId,
    next_snapshot: u64,
    /// The target's command line: the initial replicas and every one the
    /// operator added.
    cli: Vec<SocketAddr>,
    opts: Options,
    draining: bool,
    drain_since: u64,
    /// Faults may hit any replica, the last healthy one included (some
    /// seeds): only the safety oracles hold then.
    beyond_tolerance: bool,
}

fn fnv(h: u64, v: u64) -> u64 {
    let mut h = h;
    for b in v.to_le_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Runs a future that needs no waiting (in-memory devices) to its end.
fn at_once<T>(f: impl std::future::Future<Output = T>) -> Result<T, String> {
    f.now_or_never()
        .ok_or_else(|| "an engine call waited although nothing else runs".to_string())
}

fn replica_addr(host: u32) -> SocketAddr {
    SocketAddr::from(([10, 0, 1, (host + 1) as u8], 7600))
}

impl<'c> World<'c> {
    pub fn new(seed: u64, cfg: &'c TargetConfig, opts: Options) -> Result<World<'c>, String> {
        let mut rng = Rng::new(seed);
        let plan = Plan::draw(&mut rng);
        let latency = Latency {
            min_us: 20,
            max_us: rng.range(100, 2_000),
            slow_percent: rng.range(0, 5),
        };
        let mut w = World {
            cfg,
            rng,
            clock: Clock::default(),
            exec: Executor::new(),
            base: Instant::now(),
            queue: BTreeMap::new(),
            seq: 0,
            net: Net::new(latency),
            model: Model::new(),
            trace: 0xcbf2_9ce4_8422_2325,
            plan: plan.clone(),
            target: None,
            instances: 0,
            target_down_since: None,
            replicas: Vec::new(),
            initiators: Vec::new(),
            outbox: Rc::new(RefCell::new(Vec::new())),
            requests: Arc::new(Mutex::new(Requests::default())),
            rebuild_links: Vec::new(),
            failure: None,
            stats: Stats::default(),
            quiet: false,
            quiet_since: 0,
            snapshots: BTreeMap::new(),
            doubtful_snapshots: BTreeMap::new(),
            ambiguous: Vec::new(),
            next_perform: 1,
            next_node: 1,
            next_snapshot: 1,
            cli: Vec::new(),
            opts,
            draining: false,
            drain_since: 0,
            beyond_tolerance: false,
        };
        for (i, bytes) in plan.pool_bytes.iter().enumerate() {
            let host = w.new_replica(*bytes, i == 0, false)?;
            w.cli.push(replica_addr(host));
        }
        for i in 0..plan.initiators {
            w.initiators.push(Ini {
                ini: Initiator::new(i),
                conn: None,
                stalled_check: BTreeMap::new(),
                relogin_at: None,
            });
        }
        w.start_target();
        for i in 0..plan.initiators {
            let at = w.rng.range(1_000, 100_000);
            w.schedule(at, Ev::Work { initiator: i });
        }
        if plan.faults {
            let at = w.rng.range(100_000, 2_000_000);
            w.schedule(at, Ev::Fault);
        }
        if plan.operator {
            let at = w.rng.range(500_000, 3_000_000);
            w.schedule(at, Ev::Operator);
        }
        w.schedule(plan.fault_phase_us, Ev::Quiet);
        Ok(w)
    }

    fn now(&self) -> u64 {
        self.clock.now_us()
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_micros(self.now())
    }

    fn schedule(&mut self, delay_us: u64, ev: Ev) {
        let at = self.now() + delay_us;
        self.schedule_at(at, ev);
    }

    fn schedule_at(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at.max(self.now()), self.seq), ev);
    }

    fn fail(&mut self, reason: String) {
        if self.failure.is_none() {
            self.failure = Some(format!("at {:.6} s: {reason}", self.now() as f64 / 1e6));
        }
    }

    fn node(&mut self) -> NodeId {
        self.next_node += 1;
        self.next_node
    }

    // ---------------------------------------------------------------- run

    pub fn run(mut self) -> RunResult {
        loop {
            self.settle();
            if self.failure.is_some() {
                break;
            }
            if self.draining && self.drained() {
                self.final_checks();
                break;
            }
            let next_event = self.queue.keys().next().map(|k| k.0);
            let next_timer = self.clock.next_deadline();
            let next = match (next_event, next_timer) {
                (Some(e), Some(t)) => e.min(t),
                (Some(e), None) => e,
                (None, Some(t)) => t,
                (None, None) => {
                    self.fail("nothing left to happen, yet the run is not over".into());
                    break;
                }
            };
            if next > self.opts.max_sim_us {
                self.fail("the run did not finish within the simulated time limit".into());
                break;
            }
            self.clock.advance_to(next);
            if self.clock.fire_due() > 0 {
                self.trace = fnv(self.trace, next ^ 0xfeed);
                continue;
            }
            let Some(((at, _), ev)) = self.queue.pop_first() else {
                continue;
            };
            if self.opts.verbose {
                let text = format!("{ev:?}");
                let cut: String = text.chars().take(240).collect();
                eprintln!("{:>12} {cut}", at);
            }
            let (code, key) = ev.trace_key();
            self.trace = fnv(fnv(fnv(self.trace, at), code), key);
            self.stats.events += 1;
            self.handle(ev);
            self.check_bounds();
        }
        self.stats.sim_us = self.now();
        RunResult {
            seed: 0,
            failure: self.failure.take(),
            trace_hash: self.trace,
            stats: std::mem::take(&mut self.stats),
            plan: self.plan.clone(),
        }
    }

    /// Polls tasks and carries out what they asked until nothing moves.
    fn settle(&mut self) {
        loop {
            self.exec.run_ready();
            let outs: Vec<Out> = std::mem::take(&mut *self.outbox.borrow_mut());
            let (spawns, dials) = {
                let mut r = self.requests.lock();
                (std::mem::take(&mut r.spawns), std::mem::take(&mut r.dials))
            };
            if outs.is_empty() && spawns.is_empty() && dials.is_empty() {
                return;
            }
            for (node, task) in spawns {
                if self.node_alive(node) {
                    self.exec.spawn(node, task);
                }
            }
            for dial in dials {
                self.rebuild_dial(dial);
            }
            for out in outs {
                self.carry_out(out);
            }
        }
    }

    fn node_alive(&self, node: NodeId) -> bool {
        self.replicas
            .iter()
            .any(|r| r.running.as_ref().is_some_and(|run| run.node == node))
    }

    fn check_bounds(&mut self) {
        if self.exec.len() > MAX_TASKS {
            let n = self.exec.len();
            self.fail(format!("{n} tasks alive: memory not bounded"));
        }
        if self.queue.len() > MAX_EVENTS {
            let n = self.queue.len();
            self.fail(format!("{n} events queued: memory not bounded"));
        }
        if let Some(t) = &self.target {
            if let TargetState::Open(v) = &t.state {
                let owed = v.controller.in_flight();
                if owed > 4 * cstor_target::limits::MAX_OWED_REQUESTS {
                    self.fail(format!("the controller holds {owed} requests"));
                }
            }
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Pdu { conn, to, pdu } => match to {
                End::Server => self.target_pdu(conn, pdu),
                End::Client => self.initiator_pdu(conn, pdu),
            },
            Ev::Frame { conn, to, packet } => match to {
                End::Server => self.replica_frame(conn, packet),
                End::Client => self.target_frame(conn, packet),
            },
            Ev::Closed { conn, end } => self.closed(conn, end),
            Ev::LinkCommand {
                instance,
                replica,
                generation,
                packet,
            } => self.link_command(instance, replica, generation, packet),
            Ev::LinkUp {
                instance,
                replica,
                generation,
                ack,
                status,
                membership,
            } => self.driver_link_up(instance, replica, generation, &ack, &status, &membership),
            Ev::LinkDown {
                instance,
                replica,
                generation,
            } => self.driver_event(instance, |c, now| {
                c.on_disconnected(now, replica, generation)
            }),
            Ev::LinkReply {
                instance,
                replica,
                generation,
                packet,
            } => {
                self.note_space(instance, replica, &packet.message);
                self.driver_event(instance, |c, now| {
                    c.on_reply(now, replica, generation, packet)
                })
            }
            Ev::NotSent {
                instance,
                replica,
                generation,
                io_seq,
            } => self.driver_event(instance, |c, now| {
                c.on_not_sent(now, replica, generation, io_seq)
            }),
            Ev::Fenced { instance } => {
                if let Some(v) = self.open_volume(instance) {
                    v.fenced = true;
                }
                self.driver_event(instance, |c, now| c.on_fenced(now));
            }
            Ev::Tick { instance } => {
                if self.open_volume(instance).is_some() {
                    self.driver_event(instance, |c, now| c.tick(now));
                    self.schedule(TICK.as_micros() as u64, Ev::Tick { instance });
                }
            }
            Ev::Dial { instance, replica } => self.link_dial(instance, replica),
            Ev::ClaimTimeout {
                instance,
                replica,
                conn,
            } => self.claim_timeout(instance, replica, conn),
            Ev::Probe { instance } => self.probe_round(instance),
            Ev::Work { initiator } => self.work(initiator),
            Ev::CommandTimeout {
                initiator,
                itt,
                cmd_sn,
            } => self.command_timeout(initiator, itt, cmd_sn),
            Ev::Fault => self.fault(),
            Ev::Operator => self.operator(),
            Ev::StartReplica { host } => {
                if let Err(e) = self.start_replica(host) {
                    self.fail(format!("replica {host} cannot restart: {e}"));
                }
            }
            Ev::RestartReplica { host } => {
                if self
                    .replicas
                    .get(host as usize)
                    .is_some_and(|r| r.running.is_some())
                {
                    self.crash_replica(host, false, false);
                }
                let back = self.rng.range(10_000, 500_000);
                self.schedule(back, Ev::StartReplica { host });
            }
            Ev::StartTarget => {
                if self.target.is_none() {
                    self.start_target();
                }
            }
            Ev::Heal { host } => {
                self.net.heal(host);
                self.net.set_slow(host, 0);
            }
            Ev::Quiet => self.begin_quiet(),
            Ev::Drain => self.begin_drain(),
        }
    }
}

mod faults;
mod replica;
mod target;
mod workload;
