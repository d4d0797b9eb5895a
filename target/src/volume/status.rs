//! The volume's status ([`VolumeStatus`]) as the driver publishes it, and
//! the rebuild figures it carries.
//!
//! Rules (module doc of `super`):
//! - the status is published at once when its shape changes (anything but
//!   the IO counters), the IO counters at most every
//!   [`STATUS_COUNTERS_EVERY`], so that IO does not rebuild it and wake its
//!   watchers for every command;
//! - removed replicas are left out; a rebuild's source is given as a
//!   position in the status's replica list;
//! - the bytes rebuilt into a replica are the growth of its runs' reported
//!   progress at each reply, so each reported byte counts once, across
//!   runs; a run's ETA extrapolates the rate seen since the driver first
//!   saw it accepted.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cstor_proto::RebuildProgress;

use super::controller::{RebuildRun, ReplicaState};
use super::driver::Driver;
use super::STATUS_COUNTERS_EVERY;

/// What the volume looks like now. Per-replica vectors list the members,
/// in the same order.
///
/// Published by the driver at once when anything but the IO counters
/// changes (a replica's state, the size, a barrier, a rebuild run starting
/// or ending, ...); the counters that move with every IO (`next_io_seq`,
/// `in_flight`, `acked_io_seqs`, `owed`, rebuild progress and bytes) are
/// brought up to date at most every [`STATUS_COUNTERS_EVERY`], so that IO
/// does not rebuild the status and wake its watchers twice per command; so
/// are the checksum error counts and the blocks repaired, while a
/// replica's checksum warning turning on or off is a change of shape.
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
    /// Per replica: 4 KiB blocks its reads found failing their checksum
    /// (`ChecksumError`) since this target started (only grows).
    pub checksum_errors: Vec<u64>,
    /// Per replica: those of the last `limits::CHECKSUM_ERROR_WINDOW`.
    pub checksum_errors_recent: Vec<u64>,
    /// Per replica: more than `limits::CHECKSUM_WARN_BLOCKS` of them in
    /// that window (a disk going bad; the replica stays healthy).
    pub checksum_warnings: Vec<bool>,
    /// 4 KiB blocks written back after a replica found them bad and
    /// acknowledged at quorum, since this target started (only grows).
    pub blocks_repaired: u64,
}

/// When a rebuild run was first seen making progress (for its ETA).
#[derive(Debug, Clone, Copy)]
pub(super) struct RebuildClock {
    pub(super) first_live_io_seq: u64,
    pub(super) started: Instant,
    pub(super) done_at_start: u64,
}

/// Bytes a reply made a replica's rebuild report beyond what it had
/// reported (`before` and `after` are its run around the reply): the
/// growth within a run, or all of a new run's progress. A run that ended
/// adds nothing: its last progress report came before its done.
pub(super) fn rebuilt_growth(before: Option<RebuildRun>, after: Option<RebuildRun>) -> u64 {
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
pub(super) fn eta(
    clock: RebuildClock,
    progress: RebuildProgress,
    now: Instant,
) -> Option<Duration> {
    let moved = progress.done_bytes.checked_sub(clock.done_at_start)?;
    if moved == 0 {
        return None;
    }
    let left = progress.total_bytes.saturating_sub(progress.done_bytes);
    let elapsed = now.saturating_duration_since(clock.started).as_secs_f64();
    let seconds = elapsed * (left as f64) / (moved as f64);
    Duration::try_from_secs_f64(seconds).ok()
}

impl Driver {
    /// Publishes the status if its shape changed, or if the IO counters
    /// are older than [`STATUS_COUNTERS_EVERY`] (the driver's tick comes
    /// through here too, so they never lag longer than about that).
    pub(super) fn publish_status(&mut self) {
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
    pub(super) fn status_shape(&self, now: Instant) -> u64 {
        use std::hash::{BuildHasher, Hash, Hasher};
        let controller = &self.controller;
        // Computed after every batch of requests: a fast hash (only ever
        // compared with its own earlier values in this process).
        let mut h = foldhash::fast::FixedState::with_seed(0).build_hasher();
        for (i, state) in controller.replica_states().iter().enumerate() {
            state.hash(&mut h);
            self.roster.addrs.get(i).hash(&mut h);
            self.roster.replica_ids.get(i).hash(&mut h);
            controller
                .rebuild(i)
                .map(|r| (r.source, r.from_io_seq, r.first_live_io_seq, r.accepted))
                .hash(&mut h);
            controller.checksum_warning(i, now).hash(&mut h);
        }
        let config = controller.config();
        (config.cf, config.epoch, controller.healthy()).hash(&mut h);
        (controller.is_read_only(now), controller.is_fenced()).hash(&mut h);
        (controller.size_bytes(), controller.barrier_in_progress()).hash(&mut h);
        (self.roster.record.generation, self.rebuild_throttle).hash(&mut h);
        h.finish()
    }

    /// The status: every member (removed replicas are left out).
    pub(super) fn status_of(&mut self) -> VolumeStatus {
        let now = Instant::now();
        let controller = &self.controller;
        let states = controller.replica_states();
        let members: Vec<usize> = (0..self.roster.addrs.len())
            .filter(|i| states.get(*i).is_some_and(|s| *s != ReplicaState::Removed))
            .collect();
        for i in 0..self.roster.addrs.len() {
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
                .map(|i| (self.roster.addrs[*i], states[*i]))
                .collect(),
            replica_ids: members
                .iter()
                .map(|i| {
                    self.roster
                        .replica_ids
                        .get(*i)
                        .copied()
                        .flatten()
                        .unwrap_or(0)
                })
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
            membership_generation: self.roster.record.generation,
            rebuilt_bytes: members
                .iter()
                .map(|i| self.rebuilt_bytes.get(*i).copied().unwrap_or(0))
                .collect(),
            rebuild_throttle_bytes_per_sec: self.rebuild_throttle,
            checksum_errors: members
                .iter()
                .map(|i| controller.checksum_errors(*i))
                .collect(),
            checksum_errors_recent: members
                .iter()
                .map(|i| controller.recent_checksum_errors(*i, now))
                .collect(),
            checksum_warnings: members
                .iter()
                .map(|i| controller.checksum_warning(*i, now))
                .collect(),
            blocks_repaired: controller.blocks_repaired(),
        }
    }
}
