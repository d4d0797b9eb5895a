//! Opening a volume ([`Volume::open`]): probe the replicas, find the
//! members and the CF, choose the epoch and the first io_seq, build the
//! controller and start the links and the driver.
//!
//! Rules (module doc of `super`, docs/architecture.md "io_seq is the order
//! of truth", invariant 5):
//! - every replica is probed with epoch 0 (claims nothing); the command
//!   line's replicas and the members of the newest record found are probed
//!   again until a read quorum of the members answered
//!   ([`membership::open_step`]) or the open timeout passed
//!   ([`OpenError::NoQuorum`]);
//! - the members are those of the newest membership record, the command
//!   line only for a new volume, whose first record the driver then writes
//!   as a barrier once a quorum is healthy;
//! - the epoch is one above the highest any of them accepted ([`next_epoch`]:
//!   never above [`limits::MAX_EPOCH`], else [`OpenError::EpochExhausted`]),
//!   the first io_seq [`IO_SEQ_MARGIN`] above the highest any of them
//!   received;
//! - the size and block size are the most advanced replicas', which must
//!   agree ([`OpenError::Geometry`]);
//! - who is degraded from the start is the controller's call: each probe
//!   is judged as a hello is ([`Controller::on_probe`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cstor_proto::limits::MAX_MEMBERS;
use cstor_proto::{HelloAck, Membership, ReplicaState, StatusReport};
use foldhash::HashMap;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::controller::{Controller, ControllerConfig, MemberChange};
use super::driver::Driver;
use super::glue::{hello_facts, Roster};
use super::link::{self, SessionParams};
use super::membership::{self, OpenStep};
use super::status::VolumeStatus;
use super::{Volume, VolumeSpec, IO_SEQ_MARGIN, REQUEST_QUEUE};
use crate::limits;

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
    #[error(
        "the replicas accepted epoch {highest}: no epoch above it is left to claim \
         (the highest is {max}), so this target could not fence the last one",
        max = limits::MAX_EPOCH
    )]
    EpochExhausted { highest: u64 },
}

/// The epoch a target opening the volume claims: one above `highest`, the
/// highest any replica accepted. Checked, never wrapped or reused: refused
/// when it would pass [`limits::MAX_EPOCH`].
pub fn next_epoch(highest: u64) -> Result<u64, OpenError> {
    highest
        .checked_add(1)
        .filter(|epoch| *epoch <= limits::MAX_EPOCH)
        .ok_or(OpenError::EpochExhausted { highest })
}

/// Members, CF, the newest record (`None`: a new volume) and every answer.
pub(super) type Probed = (
    Vec<SocketAddr>,
    usize,
    Option<Membership>,
    BTreeMap<SocketAddr, link::Probe>,
);

/// Probes the command line's replicas and the members of the newest record
/// found, until enough members answered ([`membership::open_step`]) or the
/// open timeout passed.
pub(super) async fn probe_quorum(spec: &VolumeSpec, cli_cf: usize) -> Result<Probed, OpenError> {
    let deadline = tokio::time::Instant::now() + spec.open_timeout;
    let mut answers: BTreeMap<SocketAddr, link::Probe> = BTreeMap::new();
    let mut errors: BTreeMap<SocketAddr, String> = BTreeMap::new();
    let mut targets: Vec<SocketAddr> = spec.replicas.clone();
    loop {
        let mut probes = Vec::new();
        for addr in targets.iter().filter(|a| !answers.contains_key(a)) {
            let name = spec.name.clone();
            let security = spec.security.clone();
            let addr = *addr;
            probes.push(tokio::spawn(async move {
                let probe = link::probe(addr, &name, &security);
                let r = tokio::time::timeout(link::CONNECT_TIMEOUT, probe)
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
/// reached only some of the others; the largest size among them); among
/// them, those without an
/// unfinished rebuild when there are any (a replica being rebuilt takes
/// live writes, so it may be as advanced, yet be short of a grow it is
/// still to get).
pub fn geometry(
    members: &[SocketAddr],
    probes: &[Option<(HelloAck, StatusReport)>],
    max_received: u64,
) -> Result<(u64, u32), OpenError> {
    let advanced = |complete: bool| {
        probes.iter().enumerate().filter_map(move |(i, p)| {
            p.as_ref()
                .filter(|(ack, st)| {
                    st.last_received_io_seq.max(ack.last_durable_io_seq) == max_received
                        && (!complete
                            || !matches!(
                                st.state,
                                ReplicaState::Degraded | ReplicaState::Rebuilding
                            ))
                })
                .map(|(ack, _)| (i, ack.volume_size_bytes, ack.block_size_bytes))
        })
    };
    let any_complete = advanced(true).next().is_some();
    let mut current = advanced(any_complete);
    let Some((_, mut size, block)) = current.next() else {
        return Err(OpenError::Geometry("no replica answered".into()));
    };
    for (i, s, b) in current {
        if b != block {
            let addr = members.get(i).map_or_else(String::new, |a| a.to_string());
            return Err(OpenError::Geometry(format!(
                "{addr} has {b}-byte blocks, another {block}-byte blocks"
            )));
        }
        // A grow that failed short of quorum may have reached some of them
        // before its undo did (or the target stopped first): the volume
        // keeps it, the others are grown when they link (a volume never
        // shrinks below what a replica of its newest state holds).
        size = size.max(s);
    }
    Ok((size, block))
}

/// What an open decides from the probes' answers, without any IO: the one
/// place these rules are written (the target's open and a simulator's both
/// call it).
#[derive(Debug, Clone)]
pub struct OpenPlan {
    /// Per member: its probe's handshake answer and status, if it answered.
    pub probes: Vec<Option<(HelloAck, StatusReport)>>,
    /// The highest io_seq any member received.
    pub max_received: u64,
    /// The volume's size and block size ([`geometry`]).
    pub size_bytes: u64,
    pub block_size: u32,
    /// The epoch to claim ([`next_epoch`]) and the first io_seq to use.
    pub epoch: u64,
    pub first_io_seq: u64,
    /// Per member: the replica id the membership record knows.
    pub recorded_ids: Vec<Option<u128>>,
    /// Per member: the id it answered with, else the record's.
    pub replica_ids: Vec<Option<u128>>,
    /// The membership record to serve, and whether it is new (a new
    /// volume: written once a quorum is healthy).
    pub record: Membership,
    pub write_record: bool,
    /// The highest record generation seen.
    pub generation: u64,
    /// The consistency factor it opens with.
    pub cf: usize,
}

impl OpenPlan {
    /// The controller of this open: the record's ids known, and each
    /// probe judged as a hello is (behind the others, an unfinished
    /// rebuild, another id than the record's: degraded from the start).
    pub fn controller(
        &self,
        session_id: u64,
        ack_timeout: Duration,
        hold: Duration,
        now: Instant,
    ) -> Controller {
        let config = ControllerConfig {
            replicas: self.probes.len(),
            cf: self.cf,
            ack_timeout,
            hold,
            session_id,
            epoch: self.epoch,
            first_io_seq: self.first_io_seq,
            size_bytes: self.size_bytes,
            max_received_at_open: self.max_received,
            max_owed_requests: limits::MAX_OWED_REQUESTS,
            max_owed_bytes: limits::MAX_OWED_BYTES,
        };
        let mut controller = Controller::new(config, &vec![None; self.probes.len()], now)
            .with_replica_ids(&self.recorded_ids);
        for (replica, probe) in self.probes.iter().enumerate() {
            if let Some((ack, status)) = probe {
                controller.on_probe(replica, hello_facts(0, ack, status));
            }
        }
        controller
    }
}

/// Plans the open of `members` (with `cf`, the newest `record` the
/// replicas hold if any) from the probes' `answers`.
pub fn plan_open(
    members: &[SocketAddr],
    cf: usize,
    record: Option<Membership>,
    answers: &BTreeMap<SocketAddr, link::Probe>,
) -> Result<OpenPlan, OpenError> {
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
    let (size_bytes, block_size) = geometry(members, &probes, max_received)?;
    // The ids the record knows: a member answering with another id had its
    // pool replaced.
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
    let epoch = next_epoch(highest_epoch)?;
    let replica_ids: Vec<Option<u128>> = probes
        .iter()
        .zip(&recorded_ids)
        .map(|(p, recorded)| p.as_ref().map(|(ack, _)| ack.replica_id).or(*recorded))
        .collect();
    let (record, write_record) = match record {
        Some(record) => (record, false),
        None => (
            membership::initial(members, &replica_ids, cf)
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
    Ok(OpenPlan {
        probes,
        max_received,
        size_bytes,
        block_size,
        epoch,
        first_io_seq: max_received.saturating_add(IO_SEQ_MARGIN),
        recorded_ids,
        replica_ids,
        record,
        write_record,
        generation,
        cf,
    })
}

pub(super) fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // Only distinguishes sessions in logs and frames; time will do.
        return std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
    }
    u64::from_le_bytes(bytes)
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
        let plan = plan_open(&members, cf, record, &answers)?;
        let params = SessionParams {
            volume: spec.name.clone(),
            epoch: plan.epoch,
            session_id: random_u64(),
            first_io_seq: plan.first_io_seq,
            security: spec.security.clone(),
        };
        let size_bytes = plan.size_bytes;
        let block_size = plan.block_size;
        info!(
            volume = %spec.name,
            epoch = params.epoch,
            first_io_seq = params.first_io_seq,
            size_bytes,
            cf,
            members = ?members,
            generation = plan.record.generation,
            "opening volume"
        );
        // Who is degraded from the start is the controller's call, as for
        // every later hello: behind the others, an unfinished rebuild,
        // another id than the record's.
        let controller = plan.controller(
            params.session_id,
            spec.ack_timeout,
            spec.hold,
            Instant::now(),
        );
        let OpenPlan {
            replica_ids,
            record,
            write_record,
            generation,
            ..
        } = plan;
        let stop = CancellationToken::new();
        let (events_tx, events) = mpsc::unbounded_channel();
        let (requests, request_rx) = mpsc::channel(REQUEST_QUEUE);
        let mut driver = Driver {
            controller,
            roster: Roster::new(record, generation),
            links: Vec::with_capacity(members.len()),
            waiters: HashMap::default(),
            changes: HashMap::default(),
            next_tag: 1,
            rebuild_clock: Vec::with_capacity(members.len()),
            rebuilt_bytes: Vec::with_capacity(members.len()),
            rebuild_throttle: 0,
            params,
            events: events_tx,
            stop: stop.clone(),
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
            let record = driver.roster.record.clone();
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
            security: spec.security,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(state: ReplicaState, received: u64, size: u64) -> Option<(HelloAck, StatusReport)> {
        let ack = HelloAck {
            version: 1,
            replica_id: 1,
            pool_guid: 1,
            state,
            last_durable_io_seq: received,
            volume_size_bytes: size,
            block_size_bytes: 4096,
            highest_epoch_seen: 1,
        };
        let status = StatusReport {
            state,
            last_durable_io_seq: received,
            last_received_io_seq: received,
            volume_size_bytes: size,
            highest_epoch_seen: 1,
            rebuild: cstor_proto::RebuildProgress {
                done_bytes: 0,
                total_bytes: 0,
            },
        };
        Some((ack, status))
    }

    #[test]
    fn the_geometry_comes_from_the_most_advanced_replicas_without_an_unfinished_rebuild() {
        let members: Vec<SocketAddr> = (1..=3)
            .map(|i| format!("10.0.0.{i}:7600").parse().unwrap())
            .collect();
        // An added replica still being rebuilt took every live write but
        // not yet the grow (seed 5363 of the simulator: the open refused).
        let probes = [
            probe(ReplicaState::Healthy, 900, 2 << 20),
            probe(ReplicaState::Degraded, 930, 1 << 20),
            probe(ReplicaState::Healthy, 930, 2 << 20),
        ];
        assert_eq!(geometry(&members, &probes, 930).unwrap(), (2 << 20, 4096));
        // Only replicas being rebuilt are that advanced: they decide.
        let probes = [
            probe(ReplicaState::Healthy, 900, 2 << 20),
            probe(ReplicaState::Degraded, 930, 1 << 20),
            None,
        ];
        assert_eq!(geometry(&members, &probes, 930).unwrap(), (1 << 20, 4096));
        // A grow that failed short of quorum reached one of them (seed 7198
        // of the simulator: the open refused): the volume keeps it.
        let probes = [
            probe(ReplicaState::Healthy, 930, 1 << 20),
            None,
            probe(ReplicaState::Healthy, 930, 2 << 20),
        ];
        assert_eq!(geometry(&members, &probes, 930).unwrap(), (2 << 20, 4096));
        // Other block sizes: refused, naming one.
        let mut other = probe(ReplicaState::Healthy, 930, 2 << 20);
        if let Some((ack, _)) = other.as_mut() {
            ack.block_size_bytes = 512;
        }
        let probes = [probe(ReplicaState::Healthy, 930, 2 << 20), other, None];
        assert!(matches!(
            geometry(&members, &probes, 930),
            Err(OpenError::Geometry(detail)) if detail.contains("10.0.0.2")
        ));
    }

    #[test]
    fn the_next_epoch_is_one_above_the_highest_and_refused_at_the_top() {
        assert_eq!(next_epoch(0).unwrap(), 1);
        assert_eq!(next_epoch(41).unwrap(), 42);
        assert_eq!(next_epoch(u64::MAX - 2).unwrap(), limits::MAX_EPOCH);
        for highest in [u64::MAX - 1, u64::MAX] {
            assert!(
                matches!(
                    next_epoch(highest),
                    Err(OpenError::EpochExhausted { highest: h }) if h == highest
                ),
                "highest {highest}"
            );
        }
    }
}
