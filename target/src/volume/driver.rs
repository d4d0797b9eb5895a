//! The driver task: the one owner of a volume's [`Controller`]. It feeds
//! the controller the SCSI layer's requests, the links' events and the
//! clock, and carries out the actions it returns.
//!
//! Rules (module doc of `super`):
//! - a request is answered once, through the waiter of its tag; a
//!   membership change is checked here ([`membership`]), committed by the
//!   controller as a barrier, then applied: the new member's link started,
//!   the removed one's stopped; barrier requests that come while the
//!   target's own first record is being written wait for it (at most
//!   [`MAX_DEFERRED_BARRIERS`]) instead of being refused;
//! - a link that comes up is judged on the facts of its hello
//!   ([`ReplicaHello`]) and sent first the committed record and the
//!   volume's rebuild throttle; a `StartRebuild` becomes a `RebuildStart`
//!   naming the source's data address;
//! - a command goes to its link's bounded queue (`crate::limits::LINK_QUEUE`):
//!   a full queue is a packet not sent, which the controller answers by
//!   dropping the replica; resets travel on a watch beside the queue;
//! - the rebuild throttle is sent to every linked replica when it changes.
//!
//! What the driver decides without IO is in `glue` (the link that comes
//! up, the `RebuildStart` packet, the membership change's plan), so that a
//! simulator runs it too.

use std::net::SocketAddr;
use std::time::Instant;

use cstor_proto::{Membership, Packet};
// Looked up on every request: a fast seeded hash, not SipHash.
use foldhash::HashMap;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::controller::{
    self, Action, Completion, Controller, MemberChange, Op, ReplicaIndex, Tag, VolumeError,
};
use super::glue::{self, LinkUp, Roster};
use super::link::{self, LinkCommand, LinkEvent, SessionParams};
use super::membership;
use super::status::{rebuilt_growth, RebuildClock, VolumeStatus};
use super::{Request, MAX_DEFERRED_BARRIERS, TICK};
use crate::limits;

/// Where a membership change's outcome goes, and what it is.
pub(super) type ChangeReply = (
    oneshot::Sender<Result<Membership, VolumeError>>,
    Result<Membership, VolumeError>,
);

/// A membership change waiting for its record to commit.
pub(super) struct PendingChange {
    pub(super) record: Membership,
    pub(super) change: MemberChange,
    /// The address and id of an added replica.
    pub(super) added: Option<(SocketAddr, u128)>,
    pub(super) reply: Option<oneshot::Sender<Result<Membership, VolumeError>>>,
}

/// The driver's end of one link.
pub(super) struct LinkHandle {
    /// Its command queue (bounded: `limits::LINK_QUEUE`).
    pub(super) commands: mpsc::Sender<LinkCommand>,
    /// Resets, beside the queue so that a full queue never holds one up.
    pub(super) resets: watch::Sender<Option<link::Reset>>,
    pub(super) stop: CancellationToken,
}

pub(super) struct Driver {
    pub(super) controller: Controller,
    /// The committed record, the highest generation, and per replica
    /// index (never reused) its address and replica id.
    pub(super) roster: Roster,
    /// Per replica index: its link's commands and stop token.
    pub(super) links: Vec<LinkHandle>,
    pub(super) waiters: HashMap<Tag, oneshot::Sender<Result<Completion, VolumeError>>>,
    pub(super) changes: HashMap<Tag, PendingChange>,
    pub(super) next_tag: Tag,
    pub(super) rebuild_clock: Vec<Option<RebuildClock>>,
    /// Per replica index: bytes its rebuild runs reported (module doc).
    pub(super) rebuilt_bytes: Vec<u64>,
    /// The volume's rebuild throttle, as last sent to the replicas.
    pub(super) rebuild_throttle: u64,
    pub(super) params: SessionParams,
    pub(super) events: mpsc::UnboundedSender<LinkEvent>,
    pub(super) stop: CancellationToken,
    pub(super) status: watch::Sender<VolumeStatus>,
    /// The shape of the status last published, and when it was published.
    pub(super) published: (u64, Instant),
    /// Barrier requests (snapshot, resize, membership) that arrived while
    /// the target's own record write was in progress: an operator's
    /// request waits for it rather than being refused for it.
    pub(super) deferred: std::collections::VecDeque<Request>,
}

impl Driver {
    /// Starts the link of a new replica index.
    pub(super) fn link(&mut self, addr: SocketAddr, replica_id: Option<u128>) {
        let (tx, rx) = mpsc::channel(limits::LINK_QUEUE);
        let (resets, resets_rx) = watch::channel(None);
        let stop = self.stop.child_token();
        let index = self.roster.push(addr, replica_id);
        tokio::spawn(link::run(
            index,
            addr,
            self.params.clone(),
            rx,
            resets_rx,
            self.events.clone(),
            stop.clone(),
        ));
        self.links.push(LinkHandle {
            commands: tx,
            resets,
            stop,
        });
        self.rebuild_clock.push(None);
        self.rebuilt_bytes.push(0);
    }

    pub(super) async fn run(
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
    pub(super) fn on_request(&mut self, request: Request) -> Vec<Action> {
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
    pub(super) fn on_throttle(&mut self, bytes_per_second: u64) -> Vec<Action> {
        self.rebuild_throttle = bytes_per_second;
        info!(volume = %self.params.volume, bytes_per_second, "rebuild throttle set");
        glue::throttle_actions(&mut self.controller, bytes_per_second)
    }

    /// Is a record write the target started by itself (no caller waits
    /// for it) in progress?
    pub(super) fn internal_change_pending(&self) -> bool {
        self.changes.values().any(|c| c.reply.is_none())
    }

    pub(super) fn take_tag(&mut self) -> Tag {
        let tag = self.next_tag;
        self.next_tag += 1;
        tag
    }

    /// Validates a change against the committed record
    /// ([`glue::plan_change`]) and submits the new record as a barrier.
    pub(super) fn on_membership_request(
        &mut self,
        change: membership::Change,
        reply: oneshot::Sender<Result<Membership, VolumeError>>,
    ) -> Vec<Action> {
        let states = self.controller.replica_states();
        let plan = match glue::plan_change(&self.roster, &states, &change) {
            Ok(plan) => plan,
            Err(e) => {
                let _ = reply.send(Err(e));
                return Vec::new();
            }
        };
        info!(volume = %self.params.volume, ?change, generation = plan.record.generation, "membership change requested");
        self.submit_record(
            plan.record,
            plan.change,
            plan.new_cf,
            plan.added,
            Some(reply),
        )
    }

    /// Submits `record` as a barrier; `perform` finishes the change when
    /// it completes.
    pub(super) fn submit_record(
        &mut self,
        record: Membership,
        change: MemberChange,
        new_cf: usize,
        added: Option<(SocketAddr, u128)>,
        reply: Option<oneshot::Sender<Result<Membership, VolumeError>>>,
    ) -> Vec<Action> {
        self.roster.note_sent(&record);
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
    pub(super) fn finish_change(
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
                self.roster.commit(pending.record.clone());
                Ok(pending.record)
            }
            Err(e) => {
                warn!(volume = %self.params.volume, error = %e, "membership record not committed");
                Err(e)
            }
        };
        pending.reply.map(|reply| (reply, outcome))
    }

    pub(super) fn on_event(&mut self, event: LinkEvent) -> Vec<Action> {
        let now = Instant::now();
        match event {
            LinkEvent::Up {
                replica,
                generation,
                ack,
                status,
                membership,
            } => glue::on_link_up(
                &mut self.controller,
                &mut self.roster,
                now,
                LinkUp {
                    replica,
                    generation,
                    ack: &ack,
                    status: &status,
                    membership: &membership,
                },
                self.rebuild_throttle,
            ),
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

    pub(super) fn perform(&mut self, actions: Vec<Action>) {
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
                    let Some(source_addr) = self.roster.addrs.get(source) else {
                        continue;
                    };
                    let Some(packet) = glue::rebuild_start_packet(
                        self.params.session_id,
                        self.params.epoch,
                        &self.params.volume,
                        source_addr.to_string(),
                        from_io_seq,
                        first_live_io_seq,
                    ) else {
                        warn!(volume = %self.params.volume, "volume name cannot travel: no rebuild");
                        continue;
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
    pub(super) fn queue_to_link(
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
}
