//! Taking a replica back when its link claims it: the connect, and the
//! readmission decision ([`Admission`]).
//!
//! Rules (module doc of `super`, "Who may count again" and "Connection
//! generations"):
//! - a connect of a connection older than one already seen changes
//!   nothing; a connect while the controller still sends on an older
//!   connection takes that one as gone first;
//! - refused: not a member, or failed and backing off (told again how long
//!   to wait);
//! - from what the replica says of itself ([`ReplicaHello`], the first
//!   that applies): its replica id changed, rebuilt in full; smaller than
//!   the volume, grown first then rebuilt from its durable io_seq (every
//!   request past its size failed on it and held that below it); an
//!   unfinished rebuild,
//!   first reached after the open and behind what it saw, or reporting
//!   less than it acknowledged, rebuilt from its durable io_seq; the only
//!   member and it lost unflushed writes, healthy as it is; otherwise
//!   healthy if it missed nothing, degraded (and rebuilt) if it did. The
//!   open's probes are judged the same way ([`Controller::on_probe`]);
//! - taken back, it gets the shell's preamble, a rebuild start if degraded,
//!   then every pending mutating request it has not acknowledged, again,
//!   in io_seq order, before any new request.

use std::time::{Duration, Instant};

use cstor_proto::Message;

use super::{Action, Controller, Generation, Op, ReplicaIndex, ReplicaState};

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
    /// rebuilt from its durable io_seq (or, the best copy there is, taken
    /// as it is once grown).
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

impl Controller {
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
    pub(super) fn judge(
        &mut self,
        replica: ReplicaIndex,
        hello: &ReplicaHello,
        contact: bool,
    ) -> (Option<Admission>, bool) {
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
        let seen_before = r.first_seen.map(|(seen, _)| seen);
        let newly_seen = seen_before.is_none();
        r.first_seen.get_or_insert((received, resume));
        // Reached for the first time and behind what the open saw, or
        // restarted and lost writes it had acknowledged (not flushed), or
        // that it said it held when this target first saw it (a previous
        // target's writes, not yet durable on it).
        let behind = (first_contact && received < at_open)
            || received < r.acked_max
            || seen_before.is_some_and(|seen| received < seen);
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
            // It missed a grow, and so every request from the grow's io_seq
            // on that went past its size: each failed on it (out of range)
            // and held its durable io_seq below it. Grown first, it lacks
            // nothing before that io_seq.
            tracing::warn!(
                replica,
                have = hello.size_bytes,
                want = volume_size,
                "replica is smaller than the volume: grown, then rebuilt from its durable io_seq"
            );
            self.mark_missed(replica, resume);
            decision.get_or_insert(Admission::Undersized {
                size_bytes: hello.size_bytes,
            });
        }
        let unfinished = matches!(
            hello.state,
            cstor_proto::ReplicaState::Degraded | cstor_proto::ReplicaState::Rebuilding
        );
        if unfinished {
            // Complete only through its durable io_seq, whatever else it holds.
            tracing::warn!(replica, "replica has an unfinished rebuild");
            self.mark_missed(replica, resume);
        }
        if newly_seen && received > at_open {
            // Ahead of every member seen so far (one the open did not
            // reach): those seen with less lack what it holds beyond them
            // (acknowledged by it and a peer, lost by that peer in a power
            // cut before the target restarted), however far they got since.
            self.config.max_received_at_open = received;
            let behind_it: Vec<(ReplicaIndex, u64)> = (self.replicas.iter().enumerate())
                .filter(|(i, r)| *i != replica && r.state != ReplicaState::Removed)
                .filter_map(|(i, r)| {
                    r.first_seen
                        .filter(|(seen, _)| *seen < received)
                        .map(|(_, from)| (i, from))
                })
                .collect();
            for (other, from) in behind_it {
                tracing::warn!(
                    replica = other,
                    ahead = replica,
                    received,
                    "a member reached later received more: rebuilt from its durable io_seq"
                );
                self.mark_missed(other, from);
            }
        }
        // The first io_seq it may lack: what it missed, or lost.
        let missed = self.replicas.get(replica).and_then(|r| r.missed_from);
        let lacks_from = missed.into_iter().chain(behind.then_some(resume)).min();
        // Another member that may hold what it lacks: one that missed
        // nothing, or only requests after that. Without one, what it lacks
        // exists nowhere (the others lack it too, or hold nothing yet:
        // added, awaiting their full rebuild), and it is the best copy
        // there is (not one with an unfinished rebuild, a new pool or a
        // missed grow).
        let other_copy = lacks_from.is_some_and(|from| {
            self.replicas.iter().enumerate().any(|(i, r)| {
                i != replica
                    && r.state != ReplicaState::Removed
                    && r.missed_from.is_none_or(|m| m > from)
            })
        });
        // (A missed grow does not rule it out: it is grown first. A new
        // pool does: it holds nothing.)
        let alone = lacks_from.is_some()
            && !other_copy
            && !unfinished
            && !matches!(decision, Some(Admission::IdentityChanged { .. }));
        if alone {
            // The only copy: what it lost was never flushed (a flushed write
            // is durable on it) and exists nowhere else; what it missed
            // while away, nobody else holds either. It carries on from what
            // it holds; the others are rebuilt from it.
            tracing::warn!(
                replica,
                received,
                acked_max,
                ?missed,
                "no other member holds what this one lacks: it carries on from what it holds"
            );
            if let Some(r) = self.replicas.get_mut(replica) {
                r.missed_from = None;
            }
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

    /// The shell learnt that `replica` lacks writes from `io_seq` on (e.g.
    /// it was unreachable at start and reports less than the others did).
    pub fn mark_missed(&mut self, replica: ReplicaIndex, io_seq: u64) {
        if let Some(r) = self.replicas.get_mut(replica) {
            r.missed_from = Some(r.missed_from.map_or(io_seq, |m| m.min(io_seq)));
            if r.state == ReplicaState::Healthy {
                r.state = ReplicaState::Degraded;
            }
        }
        // A rebuild from it may have copied its copy without those
        // requests: its sink is rebuilt once more from there when done.
        for r in self
            .replicas
            .iter_mut()
            .filter(|r| r.rebuild.is_some_and(|run| run.source == replica))
        {
            r.rebuild_again_from(io_seq);
        }
    }

    /// A replica's link is up and its session claimed; it reported
    /// `size_bytes`. One smaller than the volume (it missed a grow) is
    /// grown first: a `Resize` with its own io_seq, answer not awaited (if
    /// it fails, the replica's out-of-range answers drop it again). One
    /// larger (it took a grow that failed short of quorum and missed its
    /// undo) is shrunk back the same way; the replica refuses that over
    /// data (none is written beyond the volume's size), and if it does, it
    /// stays larger, harmlessly but for the size of its later snapshots.
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
        // A grow in progress may have reached it: it keeps that size, and
        // the grow's end decides (done: the volume's; failed: undone on
        // every linked replica).
        let growing_to = self
            .barrier
            .as_ref()
            .filter(|b| b.io_seq.is_some())
            .and_then(|b| match b.op {
                Op::Resize { size_bytes } => Some(size_bytes),
                _ => None,
            });
        if size_bytes != self.config.size_bytes
            && Some(size_bytes) != growing_to
            && replica < self.replicas.len()
            && !backing_off
        {
            tracing::info!(
                replica,
                have = size_bytes,
                want = self.config.size_bytes,
                "resizing a replica that missed a resize or its undo"
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
    pub(super) fn set_generation(&mut self, replica: ReplicaIndex, generation: Generation) -> bool {
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
            if self
                .replicas
                .get(replica)
                .is_none_or(|r| !r.state.is_linked())
            {
                // No source: dropped, it gets nothing on this connection.
                self.settle(now, &mut actions);
                return actions;
            }
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
}
