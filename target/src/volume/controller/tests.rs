//! A deterministic simulation of the controller with N in-memory replicas:
//! the tests drive every delivery, disconnect and clock tick by hand, and a
//! property test drives them at random while checking the invariants.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use proptest::prelude::*;

use super::*;
use cstor_proto::{RebuildProgress, Status};

const BLOCK: u64 = 4096;

struct Sim {
    ctl: Controller,
    now: Instant,
    /// Per replica: block offset → data.
    disks: Vec<BTreeMap<u64, Bytes>>,
    /// Per replica: packets sent and not yet delivered (the link).
    links: Vec<VecDeque<Packet>>,
    up: Vec<bool>,
    /// Per replica: its link's current connection (as a link counts them).
    gens: Vec<Generation>,
    /// Per replica: io_seqs of packets decided for a connection that was
    /// gone (the link drops them and reports them not sent).
    not_sent: Vec<Vec<u64>>,
    /// Per replica: io_seq of the last mutating packet it got on its current
    /// link (checks per-link ordering).
    last_seq: Vec<u64>,
    results: BTreeMap<Tag, Result<Completion, VolumeError>>,
    next_tag: Tag,
    /// Per replica: the rebuild it accepted, as its daemon would run it.
    rebuilding: Vec<Option<SimRebuild>>,
    /// Per replica: snapshot name → the disk as it was.
    snapshots: Vec<BTreeMap<String, BTreeMap<u64, Bytes>>>,
    /// Per replica: it fails snapshots and resizes (e.g. its pool is full).
    refuse_barriers: Vec<bool>,
    /// Per replica: it takes a snapshot, then fails it as poisoned (its
    /// journal's sync failed; the snapshot is found after a restart).
    poison_snapshots: Vec<bool>,
    /// Per replica: its pool is full: a write to a block it does not hold
    /// yet (one that needs a new chunk) fails with `NoSpace`, and so does a
    /// rebuild that would have to add blocks.
    full: Vec<bool>,
    /// Per replica: its volume's size (a replica that refuses barriers
    /// keeps its own).
    sizes: Vec<u64>,
    /// Per replica: blocks (offsets) whose data fails its checksum there:
    /// a read of them answers `ChecksumError`, a write of the block makes
    /// it good (rule 7, `repair` tests).
    corrupt: Vec<BTreeSet<u64>>,
}

/// A sink's rebuild in the simulation: live writes since `RebuildStart`
/// win over the source's data (the replica's rule).
#[derive(Debug, Clone)]
struct SimRebuild {
    source: usize,
    io_seq: u64,
    live: std::collections::BTreeSet<u64>,
}

fn config(replicas: usize, cf: usize) -> ControllerConfig {
    ControllerConfig {
        replicas,
        cf,
        ack_timeout: Duration::from_secs(5),
        hold: Duration::from_secs(20),
        session_id: 7,
        epoch: 3,
        first_io_seq: 1000,
        size_bytes: 1 << 20,
        max_received_at_open: 0,
        max_owed_requests: MAX_OWED_REQUESTS,
        max_owed_bytes: MAX_OWED_BYTES,
    }
}

impl Sim {
    fn new(replicas: usize, cf: usize) -> Sim {
        let now = Instant::now();
        let mut sim = Sim {
            ctl: Controller::new(config(replicas, cf), &vec![None; replicas], now),
            now,
            disks: vec![BTreeMap::new(); replicas],
            links: vec![VecDeque::new(); replicas],
            up: vec![false; replicas],
            gens: vec![0; replicas],
            not_sent: vec![Vec::new(); replicas],
            last_seq: vec![0; replicas],
            results: BTreeMap::new(),
            next_tag: 1,
            rebuilding: vec![None; replicas],
            snapshots: vec![BTreeMap::new(); replicas],
            refuse_barriers: vec![false; replicas],
            poison_snapshots: vec![false; replicas],
            full: vec![false; replicas],
            sizes: vec![1 << 20; replicas],
            corrupt: vec![BTreeSet::new(); replicas],
        };
        for r in 0..replicas {
            sim.connect(r);
        }
        sim
    }

    fn apply(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send {
                    replica,
                    generation,
                    packet,
                } => {
                    if generation != self.gens[replica] {
                        // The link drops it: that connection is gone.
                        self.not_sent[replica].push(packet.io_seq);
                        continue;
                    }
                    assert!(self.up[replica], "sent to a replica that is down");
                    if !matches!(packet.message, Message::Read(_) | Message::RebuildStart(_)) {
                        assert!(
                            packet.io_seq > self.last_seq[replica],
                            "replica {replica} got io_seq {} after {}",
                            packet.io_seq,
                            self.last_seq[replica]
                        );
                        self.last_seq[replica] = packet.io_seq;
                    }
                    self.links[replica].push_back(packet);
                }
                Action::Complete { tag, result } => {
                    assert!(
                        self.results.insert(tag, result).is_none(),
                        "completed twice"
                    );
                }
                Action::Drop {
                    replica,
                    generation,
                    ..
                } => {
                    if generation == self.gens[replica] {
                        self.down(replica);
                    }
                }
                Action::StartRebuild {
                    replica,
                    generation,
                    source,
                    from_io_seq,
                    first_live_io_seq,
                } => {
                    assert_eq!(
                        generation, self.gens[replica],
                        "rebuild for an old connection"
                    );
                    assert!(self.up[replica], "rebuild of a replica that is down");
                    // Only what needs no rebuild may come first: a grow
                    // of a replica that missed one, the shell's preamble.
                    assert!(
                        self.links[replica].iter().all(|p| matches!(
                            p.message,
                            Message::Resize { .. } | Message::RebuildThrottle { .. }
                        )),
                        "a rebuild must be the first thing on a fresh link"
                    );
                    assert_ne!(replica, source);
                    self.links[replica].push_back(Packet {
                        session_id: 7,
                        epoch: 3,
                        io_seq: first_live_io_seq,
                        message: Message::RebuildStart(cstor_proto::RebuildStart {
                            peer_address: source.to_string(),
                            volume: cstor_proto::Name::new("v").unwrap(),
                            from_io_seq,
                            source: cstor_proto::RebuildSource::Live,
                        }),
                    });
                }
            }
        }
    }

    fn down(&mut self, r: usize) {
        self.up[r] = false;
        self.links[r].clear();
        self.rebuilding[r] = None;
    }

    /// The sink's daemon finishes its rebuild: every block no live write
    /// touched takes the source's current content; the target hears Done.
    fn finish_rebuild(&mut self, r: usize) {
        let Some(run) = self.rebuilding[r].take() else {
            return;
        };
        let source = self.disks[run.source].clone();
        let blocks: std::collections::BTreeSet<u64> =
            source.keys().chain(self.disks[r].keys()).copied().collect();
        let needs_space = blocks
            .difference(&run.live)
            .any(|b| source.contains_key(b) && !self.disks[r].contains_key(b));
        if self.full[r] && needs_space {
            let abort = Message::RebuildAbort(cstor_proto::RebuildAbort {
                status: Status::NoSpace,
                detail: "pool full".into(),
            });
            self.rebuild_report(r, run.io_seq, abort);
            return;
        }
        for block in blocks.difference(&run.live) {
            match source.get(block) {
                Some(data) => self.disks[r].insert(*block, data.clone()),
                None => self.disks[r].remove(block),
            };
        }
        self.rebuild_report(
            r,
            run.io_seq,
            Message::RebuildDone(cstor_proto::RebuildDone { through_io_seq: 0 }),
        );
    }

    /// The sink's daemon gives its rebuild up.
    fn abort_rebuild(&mut self, r: usize) {
        let Some(run) = self.rebuilding[r].take() else {
            return;
        };
        let abort = Message::RebuildAbort(cstor_proto::RebuildAbort {
            status: Status::IoError,
            detail: "source gone".into(),
        });
        self.rebuild_report(r, run.io_seq, abort);
    }

    fn rebuild_report(&mut self, r: usize, io_seq: u64, message: Message) {
        let packet = Packet {
            session_id: 7,
            epoch: 3,
            io_seq,
            message,
        };
        let actions = self.ctl.on_reply(self.now, r, self.gens[r], packet);
        self.apply(actions);
    }

    fn connect(&mut self, r: usize) {
        self.up[r] = true;
        self.last_seq[r] = 0;
        self.gens[r] += 1;
        let actions = self.ctl.on_connected(self.now, r, self.gens[r]);
        self.apply(actions);
    }

    fn disconnect(&mut self, r: usize) {
        self.down(r);
        let actions = self.ctl.on_disconnected(self.now, r, self.gens[r]);
        self.apply(actions);
    }

    fn submit(&mut self, op: Op) -> Tag {
        let tag = self.next_tag;
        self.next_tag += 1;
        let actions = self.ctl.submit(self.now, tag, op);
        self.apply(actions);
        tag
    }

    fn write(&mut self, block: u64, fill: u8) -> Tag {
        self.submit(Op::Write {
            offset: block * BLOCK,
            data: Bytes::from(vec![fill; BLOCK as usize]),
            fua: false,
        })
    }

    fn read(&mut self, block: u64) -> Tag {
        self.submit(Op::Read {
            offset: block * BLOCK,
            len_bytes: BLOCK as u32,
        })
    }

    /// The replica handles every packet on its link, and its replies reach
    /// the controller.
    fn deliver(&mut self, r: usize) {
        while self.deliver_one(r) {}
    }

    /// The replica handles the first packet on its link, if any; false
    /// when there was none or the replica is down after it.
    fn deliver_one(&mut self, r: usize) -> bool {
        {
            let Some(packet) = self.links[r].pop_front() else {
                return false;
            };
            if let (Some(run), Message::Write(Write { offset, .. }))
            | (Some(run), Message::Unmap(Extent { offset, .. }))
            | (Some(run), Message::WriteZeroes(Extent { offset, .. })) =
                (self.rebuilding[r].as_mut(), &packet.message)
            {
                run.live.insert(*offset);
            }
            let reply = match &packet.message {
                Message::RebuildStart(start) => {
                    self.rebuilding[r] = Some(SimRebuild {
                        source: start.peer_address.parse().unwrap(),
                        io_seq: packet.io_seq,
                        live: Default::default(),
                    });
                    Message::Ack(Opcode::RebuildStart)
                }
                Message::Write(w) if self.full[r] && !self.disks[r].contains_key(&w.offset) => {
                    Message::Error(cstor_proto::ErrorReply::new(
                        Opcode::Write.to_u16(),
                        Status::NoSpace,
                        "no free chunk",
                    ))
                }
                Message::Write(w) => {
                    self.write_blocks(r, w.offset, &w.data);
                    Message::Ack(Opcode::Write)
                }
                Message::Read(e) => self.read_reply(r, *e),
                Message::Digest(e) => Message::RangeDigest(cstor_proto::DigestReply {
                    digest: self.digest(r, e.offset, u64::from(e.len_bytes)),
                    mapped_blocks: 0,
                    bad: Vec::new(),
                }),
                Message::Flush => Message::Ack(Opcode::Flush),
                Message::Unmap(e) => {
                    self.disks[r].remove(&e.offset);
                    Message::Ack(Opcode::Unmap)
                }
                Message::WriteZeroes(e) => {
                    self.disks[r].remove(&e.offset);
                    Message::Ack(Opcode::WriteZeroes)
                }
                Message::SnapshotCreate(_) | Message::Resize { .. } | Message::MembershipSet(_)
                    if self.refuse_barriers[r] =>
                {
                    Message::Error(cstor_proto::ErrorReply::new(
                        packet.message.wire_opcode(),
                        Status::NoSpace,
                        "pool full",
                    ))
                }
                Message::SnapshotCreate(name) => {
                    self.snapshots[r].insert(name.as_str().to_owned(), self.disks[r].clone());
                    if self.poison_snapshots[r] {
                        Message::Error(cstor_proto::ErrorReply::new(
                            packet.message.wire_opcode(),
                            Status::VolumePoisoned,
                            "journal fdatasync failed",
                        ))
                    } else {
                        Message::Ack(Opcode::SnapshotCreate)
                    }
                }
                Message::SnapshotDestroy(name) => {
                    if self.snapshots[r].remove(name.as_str()).is_some() {
                        Message::Ack(Opcode::SnapshotDestroy)
                    } else {
                        Message::Error(cstor_proto::ErrorReply::new(
                            packet.message.wire_opcode(),
                            Status::NotFound,
                            "no such snapshot",
                        ))
                    }
                }
                Message::Resize { new_size_bytes } => {
                    self.sizes[r] = *new_size_bytes;
                    Message::Ack(Opcode::Resize)
                }
                Message::MembershipSet(_) => Message::Ack(Opcode::MembershipSet),
                Message::SnapshotList(_) => Message::SnapshotListing(SnapshotListing {
                    snapshots: self.snapshots[r]
                        .keys()
                        .map(|name| cstor_proto::SnapshotInfo {
                            name: Name::new(name.clone()).unwrap(),
                            io_seq: 0,
                            created_unix_secs: 0,
                            size_bytes: 0,
                        })
                        .collect(),
                    more: false,
                }),
                other => panic!("unexpected {other:?}"),
            };
            let actions = self
                .ctl
                .on_reply(self.now, r, self.gens[r], packet.reply(reply));
            self.apply(actions);
        }
        self.up[r]
    }

    /// A write as the replica stores it: one entry per block it covers
    /// (a write of one block, the tests' usual, is one entry); the blocks
    /// it writes whole are good again.
    fn write_blocks(&mut self, r: usize, offset: u64, data: &Bytes) {
        if data.len() as u64 <= BLOCK || !offset.is_multiple_of(BLOCK) {
            self.disks[r].insert(offset, data.clone());
        } else {
            for (i, block) in data.chunks(BLOCK as usize).enumerate() {
                let at = offset + i as u64 * BLOCK;
                self.disks[r].insert(at, data.slice_ref(block));
            }
        }
        let end = offset + data.len() as u64;
        let mut at = offset.next_multiple_of(BLOCK);
        while at + BLOCK <= end {
            self.corrupt[r].remove(&at);
            at += BLOCK;
        }
    }

    /// The replica's answer to a read: `ChecksumError` naming the bad
    /// blocks it covers, else the data (the entry at its offset when it
    /// has that length, else assembled block by block, zeros where
    /// nothing was written).
    fn read_reply(&self, r: usize, e: Extent) -> Message {
        let end = e.offset + u64::from(e.len_bytes);
        let first = e.offset / BLOCK * BLOCK;
        let bad: Vec<(u64, u64)> = self.corrupt[r]
            .range(first..end)
            .map(|b| (*b, BLOCK))
            .collect();
        if !bad.is_empty() {
            return Message::ChecksumError(cstor_proto::ChecksumError::new(e, bad).unwrap());
        }
        if let Some(data) = self.disks[r]
            .get(&e.offset)
            .filter(|d| d.len() == e.len_bytes as usize)
        {
            return Message::ReadData(data.clone());
        }
        let mut out = Vec::with_capacity(e.len_bytes as usize);
        let mut at = e.offset;
        while at < end {
            let block = at / BLOCK * BLOCK;
            let upto = (block + BLOCK).min(end);
            match self.disks[r].get(&block) {
                Some(d) if d.len() as u64 >= upto - block => {
                    out.extend_from_slice(&d[(at - block) as usize..(upto - block) as usize]);
                }
                _ => out.resize(out.len() + (upto - at) as usize, 0),
            }
            at = upto;
        }
        Message::ReadData(Bytes::from(out))
    }

    /// A digest of `[offset, offset + len)` of replica `r`'s disk by
    /// content (FNV-1a over the blocks, zeros where none).
    fn digest(&self, r: usize, offset: u64, len: u64) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        let zeros = Bytes::from(vec![0u8; BLOCK as usize]);
        for block in (offset..offset + len).step_by(BLOCK as usize) {
            for b in self.disks[r].get(&block).unwrap_or(&zeros).iter() {
                h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
            }
        }
        h
    }

    fn deliver_all(&mut self) {
        for r in 0..self.links.len() {
            self.deliver(r);
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        let actions = self.ctl.tick(self.now);
        self.apply(actions);
    }

    fn result(&self, tag: Tag) -> Option<&Result<Completion, VolumeError>> {
        self.results.get(&tag)
    }

    /// Replica `r`'s link comes back on a fresh connection, its daemon
    /// reporting a volume of `size_bytes`: the controller's actions, not
    /// yet applied.
    fn reconnect_sized(&mut self, r: usize, size_bytes: u64) -> Vec<Action> {
        self.up[r] = true;
        self.last_seq[r] = 0;
        self.gens[r] += 1;
        self.ctl
            .on_connected_sized(self.now, r, self.gens[r], size_bytes, Vec::new())
    }

    /// Room for a replica the controller added (empty disk, no link yet).
    fn grow(&mut self) {
        self.disks.push(BTreeMap::new());
        self.links.push(VecDeque::new());
        self.up.push(false);
        self.gens.push(0);
        self.not_sent.push(Vec::new());
        self.last_seq.push(0);
        self.rebuilding.push(None);
        self.snapshots.push(BTreeMap::new());
        self.refuse_barriers.push(false);
        self.full.push(false);
        self.sizes.push(1 << 20);
        self.corrupt.push(BTreeSet::new());
    }
}

mod repair;

#[test]
fn a_write_completes_once_cf_healthy_replicas_acked_it_not_before() {
    let mut sim = Sim::new(3, 2);
    let tag = sim.write(1, 0xAA);
    sim.deliver(0);
    assert_eq!(sim.result(tag), None);
    sim.deliver(2);
    assert_eq!(sim.result(tag), Some(&Ok(Completion::Done)));
    // The third replica acks late; nothing changes, it stays healthy.
    sim.deliver(1);
    assert_eq!(sim.ctl.replica_states(), vec![ReplicaState::Healthy; 3]);
    assert_eq!(sim.ctl.in_flight(), 0);
}

#[test]
fn a_slow_replica_is_dropped_after_the_ack_timeout_and_writes_go_on() {
    let mut sim = Sim::new(3, 2);
    let first = sim.write(1, 1);
    sim.deliver(0);
    sim.deliver(1);
    assert_eq!(sim.result(first), Some(&Ok(Completion::Done)));
    // Replica 2 never answers (SIGSTOP): dropped at the bound, not before.
    sim.advance(Duration::from_secs(4));
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Healthy);
    sim.advance(Duration::from_secs(1));
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Offline);
    let second = sim.write(2, 2);
    sim.deliver_all();
    assert_eq!(sim.result(second), Some(&Ok(Completion::Done)));
    // It missed writes: back, it is degraded (no reads, no quorum).
    sim.connect(2);
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Degraded);
    assert_eq!(sim.ctl.missed_from(2), Some(1000));
    for _ in 0..10 {
        let tag = sim.read(1);
        sim.deliver_all();
        assert_eq!(
            sim.result(tag),
            Some(&Ok(Completion::Data(Bytes::from(vec![1; 4096]))))
        );
    }
}

#[test]
fn below_quorum_writes_are_held_then_fail_read_only_while_reads_go_on() {
    let mut sim = Sim::new(3, 2);
    let before = sim.write(0, 9);
    sim.deliver_all();
    assert_eq!(sim.result(before), Some(&Ok(Completion::Done)));
    sim.disconnect(1);
    sim.disconnect(2);
    let held = sim.write(3, 3);
    sim.deliver_all();
    sim.advance(Duration::from_secs(19));
    assert_eq!(sim.result(held), None, "held during the grace period");
    sim.advance(Duration::from_secs(1));
    assert_eq!(
        sim.result(held),
        Some(&Err(VolumeError::ReadOnly { cf: 2 }))
    );
    assert!(sim.ctl.is_read_only(sim.now));
    let refused = sim.write(4, 4);
    assert_eq!(
        sim.result(refused),
        Some(&Err(VolumeError::ReadOnly { cf: 2 }))
    );
    let read = sim.read(0);
    sim.deliver_all();
    assert_eq!(
        sim.result(read),
        Some(&Ok(Completion::Data(Bytes::from(vec![9; 4096]))))
    );
}

#[test]
fn a_restart_shorter_than_the_grace_period_is_invisible() {
    let mut sim = Sim::new(1, 1);
    let first = sim.write(0, 1);
    sim.disconnect(0);
    let second = sim.write(1, 2);
    let flush = sim.submit(Op::Flush);
    sim.advance(Duration::from_secs(10));
    assert_eq!(sim.result(first), None);
    sim.connect(0);
    assert_eq!(sim.ctl.replica_states(), vec![ReplicaState::Healthy]);
    sim.deliver_all();
    for tag in [first, second, flush] {
        assert_eq!(sim.result(tag), Some(&Ok(Completion::Done)));
    }
    assert_eq!(sim.disks[0].get(&BLOCK), Some(&Bytes::from(vec![2; 4096])));
    assert!(!sim.ctl.is_read_only(sim.now));
}

#[test]
fn quorum_coming_back_within_the_grace_period_completes_held_writes() {
    let mut sim = Sim::new(3, 2);
    sim.disconnect(1);
    sim.disconnect(2);
    let held = sim.write(5, 5);
    sim.deliver(0);
    sim.advance(Duration::from_secs(15));
    assert_eq!(sim.result(held), None);
    sim.connect(1);
    sim.deliver(1);
    assert_eq!(sim.result(held), Some(&Ok(Completion::Done)));
    // Replica 2 was away while a write completed without it.
    sim.connect(2);
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Degraded);
}

#[test]
fn a_read_error_drops_the_replica_and_the_read_is_retried_elsewhere() {
    let mut sim = Sim::new(2, 1);
    let w = sim.write(0, 7);
    sim.deliver_all();
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
    let tag = sim.read(0);
    let (bad, packet) = (0..2)
        .find_map(|r| sim.links[r].pop_front().map(|p| (r, p)))
        .unwrap();
    let error = packet.reply(Message::Error(cstor_proto::ErrorReply::new(
        Opcode::Read.to_u16(),
        Status::IoError,
        "EIO",
    )));
    let actions = sim.ctl.on_reply(sim.now, bad, sim.gens[bad], error);
    sim.apply(actions);
    // A read error is the replica's failure: it backs off (rule 6).
    assert_eq!(sim.ctl.replica_states()[bad], ReplicaState::Failed);
    sim.deliver_all();
    assert_eq!(
        sim.result(tag),
        Some(&Ok(Completion::Data(Bytes::from(vec![7; 4096]))))
    );
}

#[test]
fn a_stale_epoch_reply_fences_the_target_for_good() {
    let mut sim = Sim::new(2, 1);
    let tag = sim.write(0, 1);
    let packet = sim.links[0].pop_front().unwrap();
    let stale = packet.reply(Message::Error(cstor_proto::ErrorReply::new(
        Opcode::Write.to_u16(),
        Status::StaleEpoch,
        "epoch 3 is older than 4",
    )));
    let actions = sim.ctl.on_reply(sim.now, 0, sim.gens[0], stale);
    sim.apply(actions);
    assert_eq!(sim.result(tag), Some(&Err(VolumeError::Fenced)));
    assert!(sim.ctl.is_fenced());
    let later = sim.write(1, 1);
    assert_eq!(sim.result(later), Some(&Err(VolumeError::Fenced)));
}

#[test]
fn out_of_range_requests_fail_before_reaching_any_replica() {
    let mut sim = Sim::new(1, 1);
    let past = sim.submit(Op::Read {
        offset: 1 << 20,
        len_bytes: 4096,
    });
    let wrap = sim.submit(Op::Unmap {
        offset: u64::MAX - 10,
        len_bytes: 4096,
    });
    assert_eq!(sim.result(past), Some(&Err(VolumeError::OutOfRange)));
    assert_eq!(sim.result(wrap), Some(&Err(VolumeError::OutOfRange)));
    assert!(sim.links[0].is_empty());
}

#[test]
fn reads_never_go_to_a_degraded_replica() {
    let mut sim = Sim::new(2, 1);
    sim.disconnect(1);
    let w = sim.write(0, 4);
    sim.deliver_all();
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
    sim.connect(1);
    assert_eq!(sim.ctl.replica_states()[1], ReplicaState::Degraded);
    for _ in 0..8 {
        sim.read(0);
        assert!(
            !sim.links[1]
                .iter()
                .any(|p| matches!(p.message, Message::Read(_))),
            "read sent to the degraded replica"
        );
        sim.deliver_all();
    }
}

/// The first packet on replica `r`'s link, if it is a `RebuildStart`:
/// (source, from_io_seq, io_seq).
fn rebuild_start(sim: &Sim, r: usize) -> Option<(usize, u64, u64)> {
    sim.links[r].front().and_then(|p| match &p.message {
        Message::RebuildStart(start) => Some((
            start.peer_address.parse().unwrap(),
            start.from_io_seq,
            p.io_seq,
        )),
        _ => None,
    })
}

#[test]
fn a_rebuild_completes_and_the_replica_becomes_healthy_and_serves_reads() {
    let mut sim = Sim::new(3, 2);
    sim.disconnect(2);
    let missed = sim.write(1, 0x11);
    sim.deliver_all();
    assert_eq!(sim.result(missed), Some(&Ok(Completion::Done)));
    let next = sim.ctl.next_io_seq();
    sim.connect(2);
    // Degraded until it accepts; the rebuild is the first thing it gets and
    // starts right after its last durable write.
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Degraded);
    let (source, from, io_seq) = rebuild_start(&sim, 2).expect("no RebuildStart");
    assert!(source < 2);
    assert_eq!((from, io_seq), (999, next));
    sim.deliver(2);
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Rebuilding);
    assert_eq!(
        sim.ctl.healthy(),
        2,
        "a rebuilding replica counts for no quorum"
    );
    // Progress is followed.
    sim.rebuild_report(
        2,
        io_seq,
        Message::RebuildProgress(RebuildProgress {
            done_bytes: 4096,
            total_bytes: 8192,
        }),
    );
    assert_eq!(sim.ctl.rebuild(2).unwrap().progress.done_bytes, 4096);
    sim.finish_rebuild(2);
    assert_eq!(sim.ctl.replica_states(), vec![ReplicaState::Healthy; 3]);
    assert_eq!(sim.ctl.missed_from(2), None);
    assert_eq!(sim.disks[2], sim.disks[0]);
    // It counts again: replica 2 alone with one other makes quorum.
    sim.disconnect(0);
    let w = sim.write(2, 0x22);
    sim.deliver_all();
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
}

#[test]
fn a_write_during_a_rebuild_reaches_the_rebuilding_replica_and_wins() {
    let mut sim = Sim::new(3, 2);
    sim.disconnect(2);
    let old = sim.write(5, 1);
    sim.deliver_all();
    assert_eq!(sim.result(old), Some(&Ok(Completion::Done)));
    sim.connect(2);
    sim.deliver(2);
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Rebuilding);
    let new = sim.write(5, 2);
    assert!(
        sim.links[2]
            .iter()
            .any(|p| matches!(&p.message, Message::Write(w) if w.data[0] == 2)),
        "the live write was not sent to the rebuilding replica"
    );
    // The sink applies it before the (older) rebuilt data arrives.
    sim.deliver(2);
    sim.finish_rebuild(2);
    sim.deliver_all();
    assert_eq!(sim.result(new), Some(&Ok(Completion::Done)));
    for r in 0..3 {
        assert_eq!(sim.disks[r].get(&(5 * BLOCK)).unwrap()[0], 2, "replica {r}");
    }
}

#[test]
fn a_rebuild_never_starts_from_a_source_that_owes_a_completed_write() {
    // cf 1: a write completes with one ack while another healthy replica
    // still owes it.
    let mut sim = Sim::new(3, 1);
    sim.disconnect(2);
    let w = sim.write(3, 3);
    sim.deliver(1);
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
    sim.connect(2);
    let (source, _, _) = rebuild_start(&sim, 2).expect("no RebuildStart");
    assert_eq!(source, 1, "replica 0 has not acknowledged the write yet");

    // No healthy replica has it but the one that went away: no rebuild;
    // dropped at once (a live write before a RebuildStart would raise its
    // completion watermark over the write it missed, invariant 6) and
    // retried on a fresh link after the backoff.
    let mut sim = Sim::new(3, 1);
    sim.disconnect(2);
    let w = sim.write(3, 3);
    sim.deliver(1);
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
    sim.disconnect(1);
    sim.connect(2);
    assert_eq!(rebuild_start(&sim, 2), None);
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Offline);
    sim.write(4, 4);
    assert!(
        sim.links[2].is_empty(),
        "a degraded replica without a rebuild got {:?}",
        sim.links[2]
    );
    sim.deliver_all();
    sim.advance(REBUILD_RETRY);
    sim.connect(1);
    sim.connect(2);
    let (source, _, _) = rebuild_start(&sim, 2).expect("no RebuildStart on retry");
    assert!(source < 2, "replica 0 has caught up, replica 1 is back");
}

#[test]
fn a_replica_a_rebuild_made_whole_stays_healthy_when_a_slower_replica_acknowledges_later() {
    // cf 1: the write completes with replica 2's ack while replica 0 still
    // owes it; replica 1, away, is rebuilt from replica 2 and never gets
    // the write live (it was completed before its first live io_seq).
    let mut sim = Sim::new(3, 1);
    sim.disconnect(1);
    let w = sim.write(3, 3);
    sim.deliver(2);
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
    assert_eq!(sim.ctl.owed_by(0), 1, "replica 0 still owes the write");
    sim.connect(1);
    let (source, _, _) = rebuild_start(&sim, 1).expect("no RebuildStart");
    assert_eq!(source, 2);
    sim.deliver(1);
    assert_eq!(sim.ctl.replica_states()[1], ReplicaState::Rebuilding);
    sim.finish_rebuild(1);
    assert_eq!(sim.ctl.replica_states()[1], ReplicaState::Healthy);
    // The slower replica answers and the entry goes: the rebuild copied the
    // write, so replica 1 is not found lacking it.
    sim.deliver(0);
    assert_eq!(sim.ctl.in_flight(), 0);
    assert_eq!(sim.ctl.replica_states(), vec![ReplicaState::Healthy; 3]);
    assert_eq!(sim.ctl.missed_from(1), None);
    sim.advance(REBUILD_RETRY);
    assert_eq!(sim.ctl.replica_states(), vec![ReplicaState::Healthy; 3]);
    assert!(sim.up[1], "a replica the rebuild made whole was dropped");
    assert_eq!(sim.disks[1], sim.disks[0]);
}

#[test]
fn a_linked_replica_found_lacking_a_request_without_a_rebuild_is_redialled_to_start_one() {
    // Replica 2 is away when a snapshot starts and comes back healthy (it
    // missed nothing yet) while it waits: the snapshot a quorum took
    // degrades it on its link, where nothing will rebuild it.
    let mut sim = Sim::new(3, 2);
    sim.disconnect(2);
    let snap = sim.submit(snapshot("s"));
    sim.connect(2);
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Healthy);
    sim.deliver_all();
    assert_eq!(sim.result(snap), Some(&Ok(Completion::Done)));
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Degraded);
    assert!(sim.up[2]);
    assert_eq!(sim.ctl.rebuild(2), None);
    // The next tick drops its link; the next one rebuilds it.
    sim.advance(Duration::from_millis(1));
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Offline);
    assert!(
        !sim.up[2],
        "a degraded replica without a rebuild stayed linked"
    );
    sim.connect(2);
    assert!(rebuild_start(&sim, 2).is_some());
    sim.deliver(2);
    sim.finish_rebuild(2);
    assert_eq!(sim.ctl.replica_states(), vec![ReplicaState::Healthy; 3]);
}

#[test]
fn a_linked_replica_found_lacking_a_request_gets_no_later_one_before_its_rebuild() {
    // Replica 2 comes back while a snapshot it was not sent waits; a write
    // held behind the snapshot goes out when it is done. Replica 2, now
    // lacking the snapshot, must not get that write on this link: it would
    // report more received than a member that holds the snapshot, and a
    // target restarted meanwhile would rebuild that member from it.
    let mut sim = Sim::new(3, 2);
    sim.disconnect(2);
    let snap = sim.submit(snapshot("s"));
    sim.connect(2);
    let held = sim.write(7, 9);
    sim.deliver(0);
    sim.deliver(1);
    assert_eq!(sim.result(snap), Some(&Ok(Completion::Done)));
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Degraded);
    assert!(
        !sim.links[2]
            .iter()
            .any(|p| matches!(p.message, Message::Write(_))),
        "a write went to a replica that lacks a completed snapshot, before its rebuild"
    );
    sim.deliver_all();
    assert_eq!(sim.result(held), Some(&Ok(Completion::Done)));
    sim.advance(Duration::from_millis(1));
    sim.connect(2);
    assert!(rebuild_start(&sim, 2).is_some());
    sim.deliver(2);
    sim.finish_rebuild(2);
    assert_eq!(sim.ctl.replica_states(), vec![ReplicaState::Healthy; 3]);
}

#[test]
fn an_aborted_rebuild_is_retried_on_a_fresh_link_and_old_reports_are_ignored() {
    let mut sim = Sim::new(3, 2);
    sim.disconnect(2);
    sim.write(1, 1);
    sim.deliver_all();
    sim.connect(2);
    let (_, _, first) = rebuild_start(&sim, 2).unwrap();
    sim.deliver(2);
    sim.abort_rebuild(2);
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Degraded);
    assert_eq!(sim.ctl.rebuild(2), None);
    sim.advance(REBUILD_RETRY);
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Offline);
    sim.write(2, 2);
    sim.deliver_all();
    sim.connect(2);
    let (_, _, second) = rebuild_start(&sim, 2).unwrap();
    assert_ne!(first, second);
    sim.deliver(2);
    // A late Done of the first run changes nothing.
    sim.rebuild_report(
        2,
        first,
        Message::RebuildDone(cstor_proto::RebuildDone { through_io_seq: 0 }),
    );
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Rebuilding);
    sim.finish_rebuild(2);
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Healthy);
    assert_eq!(sim.disks[2], sim.disks[0]);
}

#[test]
fn a_replica_that_disconnects_mid_rebuild_starts_over_when_it_returns() {
    let mut sim = Sim::new(3, 2);
    sim.disconnect(2);
    sim.write(1, 1);
    sim.deliver_all();
    sim.connect(2);
    sim.deliver(2);
    sim.disconnect(2);
    assert_eq!(sim.ctl.rebuild(2), None);
    sim.connect(2);
    assert!(rebuild_start(&sim, 2).is_some());
    assert_eq!(sim.ctl.missed_from(2), Some(1000));
}

#[derive(Debug, Clone)]
enum Step {
    Write(u8, u8),
    Read(u8),
    Flush,
    Deliver(u8),
    Disconnect(u8),
    Connect(u8),
    Advance(u8),
    FinishRebuild(u8),
    AbortRebuild(u8),
    /// The replica's pool becomes full (true) or gets room again (false).
    Full(u8, bool),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..8, any::<u8>()).prop_map(|(b, f)| Step::Write(b, f)),
        2 => (0u8..8).prop_map(Step::Read),
        1 => Just(Step::Flush),
        6 => (0u8..3).prop_map(Step::Deliver),
        1 => (0u8..3).prop_map(Step::Disconnect),
        2 => (0u8..3).prop_map(Step::Connect),
        1 => (0u8..30).prop_map(Step::Advance),
        2 => (0u8..3).prop_map(Step::FinishRebuild),
        1 => (0u8..3).prop_map(Step::AbortRebuild),
        1 => (0u8..3, any::<bool>()).prop_map(|(r, f)| Step::Full(r, f)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Invariants under any interleaving: an acknowledged write is on at
    /// least `cf` replicas; a read returns the newest acknowledged data of
    /// its block (no write to it in flight); per-link io_seq order (checked
    /// in `apply`); healthy replicas hold every acknowledged write; and, pools
    /// filling up and emptying at random, healthy replicas never disagree on
    /// a block whose writes were all answered (a failed write included), so
    /// no read can see a different answer than the one before it.
    #[test]
    fn acknowledged_writes_are_replicated_and_reads_see_them(steps in prop::collection::vec(step(), 1..120)) {
        let mut sim = Sim::new(3, 2);
        // block → (tag, fill) of writes in submission order
        let mut writes: BTreeMap<u64, Vec<(Tag, u8)>> = BTreeMap::new();
        let mut reads: Vec<(Tag, u64, Option<u8>, bool)> = Vec::new();
        for step in steps {
            match step {
                Step::Write(b, fill) => {
                    let tag = sim.write(u64::from(b), fill);
                    writes.entry(u64::from(b)).or_default().push((tag, fill));
                }
                Step::Read(b) => {
                    let block = u64::from(b);
                    // Expected: the newest completed-OK write, if no write to
                    // the block is unanswered.
                    let history = writes.get(&block).cloned().unwrap_or_default();
                    let quiet = history.iter().all(|(t, _)| sim.result(*t).is_some());
                    let expected = history
                        .iter()
                        .rev()
                        .find(|(t, _)| matches!(sim.result(*t), Some(Ok(_))))
                        .map(|(_, f)| *f);
                    let failed_any = history
                        .iter()
                        .any(|(t, _)| matches!(sim.result(*t), Some(Err(_))));
                    let tag = sim.read(block);
                    reads.push((tag, block, expected, quiet && !failed_any));
                }
                Step::Flush => {
                    sim.submit(Op::Flush);
                }
                Step::Deliver(r) => sim.deliver(usize::from(r)),
                Step::Disconnect(r) => {
                    if sim.up[usize::from(r)] {
                        sim.disconnect(usize::from(r));
                    }
                }
                Step::Connect(r) => {
                    if !sim.up[usize::from(r)] {
                        sim.connect(usize::from(r));
                    }
                }
                Step::Advance(s) => sim.advance(Duration::from_secs(u64::from(s))),
                Step::FinishRebuild(r) => sim.finish_rebuild(usize::from(r)),
                Step::AbortRebuild(r) => sim.abort_rebuild(usize::from(r)),
                Step::Full(r, full) => sim.full[usize::from(r)] = full,
            }
            // No divergence: healthy replicas that have been sent everything
            // agree on every block whose writes were all answered.
            let states = sim.ctl.replica_states();
            let settled: Vec<usize> = (0..3)
                .filter(|r| states[*r] == ReplicaState::Healthy && sim.links[*r].is_empty())
                .collect();
            for (block, history) in &writes {
                if !history.iter().all(|(t, _)| sim.result(*t).is_some()) {
                    continue;
                }
                let at = block * BLOCK;
                for pair in settled.windows(2) {
                    prop_assert_eq!(
                        sim.disks[pair[0]].get(&at).map(|d| d[0]),
                        sim.disks[pair[1]].get(&at).map(|d| d[0]),
                        "healthy replicas {} and {} differ on block {}", pair[0], pair[1], block
                    );
                }
            }
            // Invariant 6: a healthy replica that has been sent everything
            // holds the newest acknowledged data of every block whose writes
            // were all answered OK (a rebuilt one included).
            let states = sim.ctl.replica_states();
            for (block, history) in &writes {
                let answered_ok = history.iter().all(|(t, _)| matches!(sim.result(*t), Some(Ok(_))));
                let Some((_, fill)) = history.last() else { continue };
                if !answered_ok {
                    continue;
                }
                for (r, state) in states.iter().enumerate() {
                    if *state == ReplicaState::Healthy && sim.links[r].is_empty() {
                        let have = sim.disks[r].get(&(block * BLOCK)).map(|d| d[0]);
                        prop_assert_eq!(have, Some(*fill), "healthy replica {} block {}", r, block);
                    }
                }
            }
            // Invariant 1: every acknowledged write is on >= cf disks, unless
            // a newer write to the same block replaced it.
            for (block, history) in &writes {
                let Some(pos) = history.iter().rposition(|(t, _)| matches!(sim.result(*t), Some(Ok(_)))) else { continue };
                let (_, fill) = history[pos];
                if pos + 1 < history.len() {
                    continue; // a newer write (answered or not) may have replaced it
                }
                let copies = sim.disks.iter().filter(|d| d.get(&(block * BLOCK)).is_some_and(|x| x[0] == fill)).count();
                prop_assert!(copies >= 2, "acked write to block {} on {} replicas", block, copies);
            }
        }
        for (tag, block, expected, quiet) in reads {
            // A read may be retried behind later writes: only reads of a
            // block no later write touched are checked.
            let later_write = writes.get(&block).is_some_and(|h| h.iter().any(|(t, _)| *t > tag));
            if let (Some(Ok(Completion::Data(data))), true) = (sim.result(tag), quiet && !later_write) {
                let want = expected.unwrap_or(0);
                prop_assert_eq!(data[0], want, "read of block {} returned stale data", block);
            }
        }
    }
}

fn snapshot(name: &str) -> Op {
    Op::SnapshotCreate {
        name: Name::new(name).unwrap(),
    }
}

fn sent_anywhere(sim: &Sim, pred: impl Fn(&Message) -> bool) -> bool {
    sim.links.iter().flatten().any(|p| pred(&p.message))
}

/// Invariant 4: the snapshot holds every write acknowledged before it was
/// asked for and none asked for after it.
#[test]
fn a_snapshot_waits_for_earlier_writes_and_holds_later_ones() {
    let mut sim = Sim::new(3, 2);
    let before = sim.write(0, 1);
    let snap = sim.submit(snapshot("s"));
    assert!(
        !sent_anywhere(&sim, |m| matches!(m, Message::SnapshotCreate(_))),
        "the snapshot went out before an earlier write was answered"
    );
    let after = sim.write(1, 2);
    assert!(
        !sent_anywhere(
            &sim,
            |m| matches!(m, Message::Write(w) if w.offset == BLOCK)
        ),
        "a write asked for after the snapshot went out before it"
    );
    assert!(sim.ctl.barrier_in_progress());
    sim.deliver_all();
    sim.deliver_all();
    for tag in [before, snap, after] {
        assert_eq!(sim.result(tag), Some(&Ok(Completion::Done)));
    }
    for r in 0..3 {
        let taken = &sim.snapshots[r]["s"];
        assert_eq!(taken.get(&0), Some(&Bytes::from(vec![1; 4096])));
        assert_eq!(
            taken.get(&BLOCK),
            None,
            "replica {r} snapshot has a later write"
        );
        assert_eq!(sim.disks[r].get(&BLOCK), Some(&Bytes::from(vec![2; 4096])));
    }
    assert!(!sim.ctl.barrier_in_progress());
    assert_eq!(sim.ctl.replica_states(), vec![ReplicaState::Healthy; 3]);
}

#[test]
fn a_snapshot_fewer_than_cf_replicas_took_fails_and_is_destroyed_where_taken() {
    let mut sim = Sim::new(3, 2);
    sim.refuse_barriers[1] = true;
    sim.refuse_barriers[2] = true;
    let snap = sim.submit(snapshot("s"));
    let held = sim.write(0, 5);
    sim.deliver_all();
    sim.deliver_all();
    match sim.result(snap) {
        Some(Err(VolumeError::Refused(detail))) => {
            assert!(detail.contains("snapshot \"s\" failed"), "{detail}");
            assert!(detail.contains("1 of the 2"), "{detail}");
            assert!(detail.contains("NoSpace"), "{detail}");
        }
        other => panic!("snapshot answered {other:?}"),
    }
    assert!(sim.snapshots.iter().all(|s| s.is_empty()), "left behind");
    // Replicas that refused stay: the request was wrong, not the replica.
    assert_eq!(sim.ctl.replica_states(), vec![ReplicaState::Healthy; 3]);
    assert_eq!(sim.result(held), Some(&Ok(Completion::Done)));
}

#[test]
fn a_replica_that_failed_a_snapshot_a_quorum_took_is_dropped_and_must_rebuild() {
    let mut sim = Sim::new(3, 2);
    sim.refuse_barriers[2] = true;
    let snap = sim.submit(snapshot("s"));
    let snapshot_seq = sim.links[0].front().unwrap().io_seq;
    sim.deliver_all();
    assert_eq!(sim.result(snap), Some(&Ok(Completion::Done)));
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Offline);
    sim.connect(2);
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Degraded);
    assert_eq!(sim.ctl.missed_from(2), Some(snapshot_seq));
}

#[test]
fn a_replica_that_failed_a_failed_snapshot_with_an_io_error_is_dropped_and_must_rebuild() {
    // Replicas 1 and 2 wrote the snapshot, then their journal sync failed:
    // the snapshot fails (1 of 2), is undone on replica 0, and the two may
    // hold it after a restart: they must be rebuilt from its io_seq.
    let mut sim = Sim::new(3, 2);
    sim.poison_snapshots[1] = true;
    sim.poison_snapshots[2] = true;
    let snap = sim.submit(snapshot("s"));
    let snapshot_seq = sim.links[0].front().unwrap().io_seq;
    sim.deliver_all();
    sim.deliver_all();
    match sim.result(snap) {
        Some(Err(VolumeError::Refused(detail))) => {
            assert!(detail.contains("1 of the 2"), "{detail}")
        }
        other => panic!("snapshot answered {other:?}"),
    }
    assert!(sim.snapshots[0].is_empty(), "undone where taken");
    let states = sim.ctl.replica_states();
    assert_eq!(states[0], ReplicaState::Healthy);
    assert_eq!(states[1], ReplicaState::Failed);
    assert_eq!(states[2], ReplicaState::Failed);
    sim.poison_snapshots = vec![false; 3];
    sim.advance(Duration::from_secs(120));
    sim.connect(1);
    assert_eq!(sim.ctl.replica_states()[1], ReplicaState::Degraded);
    assert_eq!(sim.ctl.missed_from(1), Some(snapshot_seq));
}

#[test]
fn a_destroy_retried_after_some_replicas_took_it_completes() {
    // A destroy that replicas 0 and 1 took before it failed: they answer
    // the retry `NotFound`, which counts as done.
    let mut sim = Sim::new(3, 2);
    sim.submit(snapshot("a"));
    sim.deliver_all();
    sim.snapshots[0].clear();
    sim.snapshots[1].clear();
    let destroy = sim.submit(Op::SnapshotDestroy {
        name: Name::new("a").unwrap(),
    });
    sim.deliver_all();
    assert_eq!(sim.result(destroy), Some(&Ok(Completion::Done)));
    assert!(sim.snapshots.iter().all(|s| s.is_empty()));
    assert_eq!(sim.ctl.replica_states(), vec![ReplicaState::Healthy; 3]);
}

#[test]
fn without_quorum_a_snapshot_waits_the_grace_period_then_fails() {
    let mut sim = Sim::new(3, 2);
    sim.disconnect(1);
    sim.disconnect(2);
    let snap = sim.submit(snapshot("s"));
    sim.advance(Duration::from_secs(19));
    sim.deliver_all();
    assert_eq!(sim.result(snap), None, "gave up before the grace period");
    assert!(!sent_anywhere(&sim, |m| matches!(
        m,
        Message::SnapshotCreate(_)
    )));
    sim.advance(Duration::from_secs(1));
    assert_eq!(
        sim.result(snap),
        Some(&Err(VolumeError::ReadOnly { cf: 2 }))
    );
    assert!(!sim.ctl.barrier_in_progress());
}

#[test]
fn a_snapshot_waiting_for_quorum_goes_on_when_quorum_returns() {
    let mut sim = Sim::new(3, 2);
    sim.disconnect(1);
    sim.disconnect(2);
    let snap = sim.submit(snapshot("s"));
    sim.advance(Duration::from_secs(19));
    sim.connect(1);
    sim.deliver_all();
    assert_eq!(sim.result(snap), Some(&Ok(Completion::Done)));
    assert!(sim.snapshots[0].contains_key("s") && sim.snapshots[1].contains_key("s"));
}

#[test]
fn a_resize_acked_at_quorum_grows_the_volume_and_shrinking_is_refused() {
    let mut sim = Sim::new(3, 2);
    let old = 1u64 << 20;
    let beyond = sim.write(old / BLOCK, 1);
    assert_eq!(sim.result(beyond), Some(&Err(VolumeError::OutOfRange)));
    let grow = sim.submit(Op::Resize {
        size_bytes: 2 * old,
    });
    assert_eq!(sim.ctl.size_bytes(), old, "grew before any replica did");
    sim.deliver(0);
    assert_eq!(
        sim.ctl.size_bytes(),
        old,
        "grew before the other replicas answered"
    );
    sim.deliver(1);
    sim.deliver(2);
    assert_eq!(sim.result(grow), Some(&Ok(Completion::Done)));
    assert_eq!(sim.ctl.size_bytes(), 2 * old);
    let now_inside = sim.write(old / BLOCK, 1);
    sim.deliver_all();
    assert_eq!(sim.result(now_inside), Some(&Ok(Completion::Done)));
    let shrink = sim.submit(Op::Resize { size_bytes: old });
    assert!(matches!(
        sim.result(shrink),
        Some(Err(VolumeError::Refused(_)))
    ));
    assert_eq!(sim.ctl.size_bytes(), 2 * old);
}

#[test]
fn a_resize_fewer_than_cf_replicas_took_leaves_the_size_alone() {
    let mut sim = Sim::new(2, 2);
    sim.refuse_barriers[1] = true;
    let grow = sim.submit(Op::Resize {
        size_bytes: 4 << 20,
    });
    sim.deliver_all();
    assert!(matches!(
        sim.result(grow),
        Some(Err(VolumeError::Refused(_)))
    ));
    assert_eq!(sim.ctl.size_bytes(), 1 << 20);
}

#[test]
fn a_grow_that_failed_short_of_quorum_is_shrunk_back_where_taken() {
    // Replica 0 takes the grow, 1 and 2 refuse it: it fails and replica 0
    // is shrunk back at once, so a later snapshot has one size everywhere.
    let mut sim = Sim::new(3, 2);
    sim.refuse_barriers[1] = true;
    sim.refuse_barriers[2] = true;
    let grow = sim.submit(Op::Resize {
        size_bytes: 4 << 20,
    });
    sim.deliver_all();
    assert!(matches!(
        sim.result(grow),
        Some(Err(VolumeError::Refused(_)))
    ));
    assert_eq!(sim.sizes[0], 4 << 20, "replica 0 took it");
    sim.deliver_all();
    assert_eq!(sim.ctl.size_bytes(), 1 << 20);
    assert_eq!(sim.sizes, vec![1 << 20; 3]);

    // A replica that took a failed grow and was away for its undo is
    // shrunk back when it connects.
    sim.refuse_barriers[1] = false;
    sim.disconnect(0);
    let grow = sim.submit(Op::Resize {
        size_bytes: 4 << 20,
    });
    sim.deliver_all();
    assert!(matches!(
        sim.result(grow),
        Some(Err(VolumeError::Refused(_)))
    ));
    sim.deliver_all();
    assert_eq!(sim.sizes[1], 1 << 20, "undone on the linked one");
    let actions = sim.reconnect_sized(0, 4 << 20);
    match actions.first() {
        Some(Action::Send {
            replica: 0, packet, ..
        }) => assert_eq!(
            packet.message,
            Message::Resize {
                new_size_bytes: 1 << 20
            }
        ),
        other => panic!("first action {other:?}"),
    }
}

#[test]
fn a_replica_back_during_a_grow_it_took_keeps_the_new_size() {
    let mut sim = Sim::new(3, 2);
    let grow = sim.submit(Op::Resize {
        size_bytes: 4 << 20,
    });
    sim.deliver(0);
    assert_eq!(sim.sizes[0], 4 << 20);
    // Its link drops and comes back before the grow is decided.
    sim.disconnect(0);
    let actions = sim.reconnect_sized(0, 4 << 20);
    assert!(
        !actions.iter().any(|a| matches!(
            a,
            Action::Send { packet, .. } if matches!(packet.message, Message::Resize { .. })
        )),
        "shrunk back while the grow it took was still in progress: {actions:?}"
    );
    sim.apply(actions);
    sim.deliver_all();
    sim.deliver_all();
    assert_eq!(sim.result(grow), Some(&Ok(Completion::Done)));
    assert_eq!(sim.ctl.size_bytes(), 4 << 20);
    assert_eq!(sim.sizes, vec![4 << 20; 3]);
}

#[test]
fn a_second_barrier_is_refused_while_one_is_in_progress() {
    let mut sim = Sim::new(1, 1);
    let first = sim.submit(snapshot("a"));
    let second = sim.submit(Op::Resize {
        size_bytes: 2 << 20,
    });
    assert!(matches!(
        sim.result(second),
        Some(Err(VolumeError::Refused(_)))
    ));
    sim.deliver_all();
    assert_eq!(sim.result(first), Some(&Ok(Completion::Done)));
}

#[test]
fn snapshots_are_listed_by_a_healthy_replica_and_destroyed_at_quorum() {
    let mut sim = Sim::new(2, 1);
    sim.submit(snapshot("a"));
    sim.deliver_all();
    let list = sim.submit(Op::ListSnapshots { after: None });
    sim.deliver_all();
    match sim.result(list) {
        Some(Ok(Completion::Snapshots(listing))) => {
            assert_eq!(listing.snapshots.len(), 1);
            assert_eq!(listing.snapshots[0].name.as_str(), "a");
        }
        other => panic!("list answered {other:?}"),
    }
    let destroy = sim.submit(Op::SnapshotDestroy {
        name: Name::new("a").unwrap(),
    });
    sim.deliver_all();
    assert_eq!(sim.result(destroy), Some(&Ok(Completion::Done)));
    assert!(sim.snapshots.iter().all(|s| s.is_empty()));
}

#[test]
fn a_fenced_target_fails_a_waiting_barrier_and_the_writes_it_held() {
    let mut sim = Sim::new(2, 2);
    let before = sim.write(0, 1);
    let snap = sim.submit(snapshot("s"));
    let held = sim.write(1, 1);
    let actions = sim.ctl.on_fenced(sim.now);
    sim.apply(actions);
    for tag in [before, snap, held] {
        assert_eq!(sim.result(tag), Some(&Err(VolumeError::Fenced)));
    }
}

/// Block → (tag, fill) of the writes to it, in submission order.
type History = BTreeMap<u64, Vec<(Tag, u8)>>;

#[derive(Debug, Clone)]
enum SnapStep {
    Write(u8, u8),
    Snapshot,
    Deliver(u8),
    Disconnect(u8),
    Connect(u8),
    Advance(u8),
    FinishRebuild(u8),
}

fn snap_step() -> impl Strategy<Value = SnapStep> {
    prop_oneof![
        5 => (0u8..6, any::<u8>()).prop_map(|(b, f)| SnapStep::Write(b, f)),
        1 => Just(SnapStep::Snapshot),
        6 => (0u8..3).prop_map(SnapStep::Deliver),
        1 => (0u8..3).prop_map(SnapStep::Disconnect),
        2 => (0u8..3).prop_map(SnapStep::Connect),
        1 => (0u8..30).prop_map(SnapStep::Advance),
        1 => (0u8..3).prop_map(SnapStep::FinishRebuild),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Invariant 4 under any interleaving: a snapshot answered OK was taken
    /// by at least `cf` replicas, and on every replica that holds it each
    /// block is exactly the newest write asked for before the snapshot (all
    /// of them answered OK), never one asked for after it.
    #[test]
    fn a_snapshot_holds_exactly_the_writes_asked_for_before_it(steps in prop::collection::vec(snap_step(), 1..100)) {
        let mut sim = Sim::new(3, 2);
        // block → (tag, fill) of writes in submission order
        let mut writes: History = BTreeMap::new();
        // (tag, name, the write history when it was asked for)
        let mut snapshots: Vec<(Tag, String, History)> = Vec::new();
        for step in steps {
            match step {
                SnapStep::Write(b, fill) => {
                    let tag = sim.write(u64::from(b), fill);
                    writes.entry(u64::from(b)).or_default().push((tag, fill));
                }
                SnapStep::Snapshot => {
                    let name = format!("s{}", snapshots.len());
                    let tag = sim.submit(snapshot(&name));
                    snapshots.push((tag, name, writes.clone()));
                }
                SnapStep::Deliver(r) => sim.deliver(usize::from(r)),
                SnapStep::Disconnect(r) => {
                    if sim.up[usize::from(r)] {
                        sim.disconnect(usize::from(r));
                    }
                }
                SnapStep::Connect(r) => {
                    if !sim.up[usize::from(r)] {
                        sim.connect(usize::from(r));
                    }
                }
                SnapStep::Advance(s) => sim.advance(Duration::from_secs(u64::from(s))),
                SnapStep::FinishRebuild(r) => sim.finish_rebuild(usize::from(r)),
            }
        }
        for (tag, name, before) in &snapshots {
            if !matches!(sim.result(*tag), Some(Ok(_))) {
                continue;
            }
            let holders: Vec<usize> = (0..3).filter(|r| sim.snapshots[*r].contains_key(name)).collect();
            prop_assert!(holders.len() >= 2, "snapshot {} on {} replicas", name, holders.len());
            for r in holders {
                let taken = &sim.snapshots[r][name];
                for block in 0..6u64 {
                    let history = before.get(&block).cloned().unwrap_or_default();
                    if !history.iter().all(|(t, _)| matches!(sim.result(*t), Some(Ok(_)))) {
                        continue;
                    }
                    let want = history.last().map(|(_, f)| *f);
                    let have = taken.get(&(block * BLOCK)).map(|d| d[0]);
                    prop_assert_eq!(have, want, "replica {} snapshot {} block {}", r, name, block);
                }
            }
        }
    }
}

#[test]
fn a_replica_that_drops_an_answered_write_comes_back_degraded_while_others_still_owe_it() {
    let mut sim = Sim::new(3, 1);
    let w = sim.write(0, 1);
    sim.deliver(0);
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
    // Replica 1 still owes the write; replica 2 loses it and comes back
    // before the entry is forgotten: it must not count as complete.
    sim.disconnect(2);
    sim.connect(2);
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Degraded);
    let snap = sim.submit(snapshot("s"));
    assert!(
        !sim.links[2]
            .iter()
            .any(|p| matches!(p.message, Message::SnapshotCreate(_))),
        "a snapshot went to a replica lacking an acknowledged write"
    );
    sim.deliver_all();
    assert_eq!(sim.result(snap), Some(&Ok(Completion::Done)));
}

#[test]
fn a_replica_too_small_for_an_in_range_write_is_dropped_and_the_write_goes_on() {
    let mut sim = Sim::new(3, 2);
    let w = sim.write(3, 1);
    let packet = sim.links[2].pop_front().unwrap();
    let too_small = packet.reply(Message::Error(cstor_proto::ErrorReply::new(
        Opcode::Write.to_u16(),
        Status::OutOfRange,
        "beyond the end of a 1 MiB volume",
    )));
    let actions = sim.ctl.on_reply(sim.now, 2, sim.gens[2], too_small);
    sim.apply(actions);
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Failed);
    sim.deliver_all();
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
}

#[test]
fn a_replica_that_missed_a_grow_is_grown_first_when_it_connects() {
    let mut sim = Sim::new(3, 2);
    sim.disconnect(2);
    let grow = sim.submit(Op::Resize {
        size_bytes: 2 << 20,
    });
    sim.deliver_all();
    assert_eq!(sim.result(grow), Some(&Ok(Completion::Done)));
    let actions = sim.reconnect_sized(2, 1 << 20);
    match actions.first() {
        Some(Action::Send {
            replica: 2, packet, ..
        }) => assert_eq!(
            packet.message,
            Message::Resize {
                new_size_bytes: 2 << 20
            }
        ),
        other => panic!("first action {other:?}"),
    }
    // It lacks the grow's io_seq on: degraded until rebuilt.
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Degraded);
    // A replica of the right size gets no resize.
    sim.disconnect(1);
    let actions = sim.reconnect_sized(1, 2 << 20);
    assert!(!actions.iter().any(|a| matches!(
        a,
        Action::Send { packet, .. } if matches!(packet.message, Message::Resize { .. })
    )));
}

// Membership changes (module doc, rule 5; `super::membership`).

fn set_membership(change: MemberChange, new_cf: usize) -> Op {
    Op::SetMembership {
        record: Membership::none(),
        change,
        new_cf,
    }
}

#[test]
fn an_added_replica_counts_for_quorum_only_once_its_full_rebuild_is_done() {
    let mut sim = Sim::new(1, 1);
    let before = sim.write(1, 0x11);
    sim.deliver_all();
    assert_eq!(sim.result(before), Some(&Ok(Completion::Done)));
    let add = sim.submit(set_membership(MemberChange::Add, 2));
    sim.deliver_all();
    assert_eq!(sim.result(add), Some(&Ok(Completion::Done)));
    assert_eq!(sim.ctl.config().cf, 2);
    assert_eq!(
        sim.ctl.replica_states(),
        vec![ReplicaState::Healthy, ReplicaState::Offline]
    );
    sim.grow();
    sim.connect(1);
    // A full rebuild from the only healthy replica, first thing on the link.
    let (source, from, _) = rebuild_start(&sim, 1).expect("no RebuildStart");
    assert_eq!((source, from), (0, 0));
    sim.deliver(1);
    assert_eq!(sim.ctl.replica_states()[1], ReplicaState::Rebuilding);
    // Both acknowledge, but the rebuilding one does not count: with CF 2
    // the write must wait.
    let during = sim.write(2, 0x22);
    sim.deliver_all();
    assert_eq!(sim.result(during), None);
    assert!(!sim.ctl.has_quorum());
    sim.finish_rebuild(1);
    assert_eq!(sim.ctl.replica_states(), vec![ReplicaState::Healthy; 2]);
    assert_eq!(sim.result(during), Some(&Ok(Completion::Done)));
    assert_eq!(sim.disks[1], sim.disks[0]);
}

#[test]
fn a_removed_replica_is_dropped_gets_nothing_and_counts_for_nothing() {
    let mut sim = Sim::new(3, 2);
    let remove = sim.submit(set_membership(MemberChange::Remove(2), 2));
    sim.deliver_all();
    assert_eq!(sim.result(remove), Some(&Ok(Completion::Done)));
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Removed);
    assert!(!sim.up[2], "its link was dropped");
    let w = sim.write(1, 0x33);
    assert!(sim.links[2].is_empty());
    sim.deliver(0);
    assert_eq!(sim.result(w), None);
    sim.deliver(1);
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
    // Coming back changes nothing: it is dropped again.
    sim.connect(2);
    assert!(!sim.up[2]);
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Removed);
    assert_eq!(sim.ctl.healthy(), 2);
}

#[test]
fn a_removal_commits_only_on_members_that_stay() {
    // CF 1, two replicas: replica 1 does not answer the record (slow, then
    // gone); replica 0, the one leaving, took every write before. The
    // record does not go to it (a later target could adopt it from there),
    // and nothing but replica 1's answer may commit it: replica 1 may lack
    // what only replica 0 holds.
    let mut sim = Sim::new(2, 1);
    let remove = sim.submit(set_membership(MemberChange::Remove(0), 1));
    assert!(
        !sim.links[0]
            .iter()
            .any(|p| matches!(p.message, Message::MembershipSet(_))),
        "the record went to the leaving member"
    );
    sim.deliver(0);
    assert_eq!(
        sim.result(remove),
        None,
        "decided on the leaving member's word"
    );
    sim.disconnect(1);
    match sim.result(remove) {
        Some(Err(VolumeError::Refused(_))) => {}
        other => panic!("removal answered {other:?}"),
    }
    assert_eq!(sim.ctl.replica_states()[0], ReplicaState::Healthy);
    // With the member that stays answering, it goes.
    sim.connect(1);
    sim.deliver_all();
    let remove = sim.submit(set_membership(MemberChange::Remove(0), 1));
    sim.deliver_all();
    assert_eq!(sim.result(remove), Some(&Ok(Completion::Done)));
    assert_eq!(sim.ctl.replica_states()[0], ReplicaState::Removed);
}

#[test]
fn lowering_the_cf_commits_at_the_lower_cf_and_then_applies() {
    let mut sim = Sim::new(2, 2);
    sim.disconnect(1);
    let lower = sim.submit(set_membership(MemberChange::None, 1));
    sim.deliver_all();
    assert_eq!(sim.result(lower), Some(&Ok(Completion::Done)));
    assert_eq!(sim.ctl.config().cf, 1);
    let w = sim.write(1, 0x44);
    sim.deliver_all();
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
    // The absent replica missed that write: it must rebuild to count.
    assert!(sim.ctl.missed_from(1).is_some());
}

#[test]
fn a_membership_record_fewer_than_cf_took_changes_nothing() {
    let mut sim = Sim::new(3, 2);
    sim.refuse_barriers[1] = true;
    sim.refuse_barriers[2] = true;
    let remove = sim.submit(set_membership(MemberChange::Remove(0), 2));
    sim.deliver_all();
    assert!(matches!(
        sim.result(remove),
        Some(Err(VolumeError::Refused(_)))
    ));
    assert_eq!(sim.ctl.config().cf, 2);
    assert_ne!(sim.ctl.replica_states()[0], ReplicaState::Removed);
}

#[derive(Debug, Clone)]
enum MemberStep {
    Write(u8, u8),
    Deliver(u8),
    Disconnect(u8),
    Connect(u8),
    FinishRebuild(u8),
    Add,
    Remove(u8),
    SetCf(u8),
}

fn member_step() -> impl Strategy<Value = MemberStep> {
    prop_oneof![
        4 => (0u8..8, any::<u8>()).prop_map(|(b, f)| MemberStep::Write(b, f)),
        6 => (0u8..5).prop_map(MemberStep::Deliver),
        1 => (0u8..5).prop_map(MemberStep::Disconnect),
        2 => (0u8..5).prop_map(MemberStep::Connect),
        2 => (0u8..5).prop_map(MemberStep::FinishRebuild),
        1 => Just(MemberStep::Add),
        1 => (0u8..5).prop_map(MemberStep::Remove),
        1 => (1u8..4).prop_map(MemberStep::SetCf),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Rule 5 under any interleaving of writes, link failures, rebuilds and
    /// membership changes: a healthy replica (an added one once rebuilt
    /// included) that has been sent everything holds the newest
    /// acknowledged data of every block; a removed replica is never sent
    /// anything again and never counts; the CF changes only by a committed
    /// record and stays within the member count.
    #[test]
    fn membership_changes_keep_healthy_replicas_complete(steps in prop::collection::vec(member_step(), 1..100)) {
        let mut sim = Sim::new(2, 1);
        let mut writes: BTreeMap<u64, Vec<(Tag, u8)>> = BTreeMap::new();
        let mut changes: Vec<(Tag, MemberChange, usize)> = Vec::new();
        for step in steps {
            let states = sim.ctl.replica_states();
            let members = states.iter().filter(|s| **s != ReplicaState::Removed).count();
            let valid = |r: u8| usize::from(r) < states.len();
            match step {
                MemberStep::Write(b, fill) => {
                    let tag = sim.write(u64::from(b), fill);
                    writes.entry(u64::from(b)).or_default().push((tag, fill));
                }
                MemberStep::Deliver(r) if valid(r) => sim.deliver(usize::from(r)),
                MemberStep::Disconnect(r) if valid(r) && sim.up[usize::from(r)] => {
                    sim.disconnect(usize::from(r));
                }
                MemberStep::Connect(r) if valid(r) && !sim.up[usize::from(r)] => {
                    sim.connect(usize::from(r));
                }
                MemberStep::FinishRebuild(r) if valid(r) => sim.finish_rebuild(usize::from(r)),
                MemberStep::Add if members < 4 => {
                    let cf = sim.ctl.config().cf;
                    let tag = sim.submit(set_membership(MemberChange::Add, cf));
                    changes.push((tag, MemberChange::Add, cf));
                }
                MemberStep::Remove(r)
                    if valid(r)
                        && states[usize::from(r)] != ReplicaState::Removed
                        && members > sim.ctl.config().cf =>
                {
                    let cf = sim.ctl.config().cf;
                    let change = MemberChange::Remove(usize::from(r));
                    let tag = sim.submit(set_membership(change, cf));
                    changes.push((tag, change, cf));
                }
                MemberStep::SetCf(cf) if usize::from(cf) <= members => {
                    let tag = sim.submit(set_membership(MemberChange::None, usize::from(cf)));
                    changes.push((tag, MemberChange::None, usize::from(cf)));
                }
                _ => {}
            }
            // Room for replicas an Add committed.
            while sim.disks.len() < sim.ctl.replica_states().len() {
                sim.grow();
            }
            let states = sim.ctl.replica_states();
            let members = states.iter().filter(|s| **s != ReplicaState::Removed).count();
            prop_assert!((1..=members).contains(&sim.ctl.config().cf));
            for (r, state) in states.iter().enumerate() {
                if *state == ReplicaState::Removed {
                    prop_assert!(!sim.up[r] && sim.links[r].is_empty(), "removed replica {} still linked", r);
                }
            }
            // The CF is the last committed record's.
            if let Some((_, _, cf)) = changes.iter().rev().find(|(t, _, _)| matches!(sim.result(*t), Some(Ok(_)))) {
                prop_assert_eq!(sim.ctl.config().cf, *cf);
            }
            for (block, history) in &writes {
                let answered_ok = history.iter().all(|(t, _)| matches!(sim.result(*t), Some(Ok(_))));
                let Some((_, fill)) = history.last() else { continue };
                if !answered_ok {
                    continue;
                }
                for (r, state) in states.iter().enumerate() {
                    if *state == ReplicaState::Healthy && sim.links[r].is_empty() {
                        let have = sim.disks[r].get(&(block * BLOCK)).map(|d| d[0]);
                        prop_assert_eq!(have, Some(*fill), "healthy replica {} block {}", r, block);
                    }
                }
            }
        }
    }
}

#[test]
fn a_snapshot_taken_during_a_rebuild_makes_the_replica_rebuild_again_before_healthy() {
    let (mut sim, _, _) = replica_2_rebuilding();
    // A snapshot at quorum while replica 2 rebuilds: it goes to the healthy
    // replicas only, and the rebuild's listing of the peer's snapshots may
    // predate it.
    let snap_seq = sim.ctl.next_io_seq();
    let taken = sim.submit(snapshot("during"));
    sim.deliver(0);
    sim.deliver(1);
    assert_eq!(sim.result(taken), Some(&Ok(Completion::Done)));
    sim.finish_rebuild(2);
    assert_eq!(
        sim.ctl.replica_states()[2],
        ReplicaState::Degraded,
        "healthy although its rebuild may lack the snapshot"
    );
    assert_eq!(sim.ctl.healthy(), 2);
    // Redialled at once and rebuilt from the snapshot's io_seq.
    sim.advance(TICK_FOR_TESTS);
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Offline);
    sim.connect(2);
    let (_, from, _) = rebuild_start(&sim, 2).expect("no second RebuildStart");
    assert!(
        from <= snap_seq,
        "rebuilt from {from}, after the snapshot {snap_seq}"
    );
    sim.deliver(2);
    sim.finish_rebuild(2);
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Healthy);
}

/// Seed 5841 of the simulator: a new target rebuilt a replica from a
/// member that a member reached later showed to lack requests; the sink
/// became healthy with the source's gap. It is rebuilt once more, from the
/// first request the source was found to lack.
#[test]
fn a_rebuild_whose_source_is_found_lacking_meanwhile_is_done_again_before_healthy() {
    let (mut sim, source, _) = replica_2_rebuilding();
    // The shell learns the source lacks requests from `gap` on.
    let gap = 3;
    sim.ctl.mark_missed(source, gap);
    sim.finish_rebuild(2);
    assert_eq!(
        sim.ctl.replica_states()[2],
        ReplicaState::Degraded,
        "healthy although its source lacked requests"
    );
    sim.advance(TICK_FOR_TESTS);
    sim.connect(2);
    let (again, from, _) = rebuild_start(&sim, 2).expect("no second RebuildStart");
    assert_ne!(again, source, "rebuilt again from the lacking member");
    assert!(from < gap, "rebuilt from {from}, not before {gap}");
    sim.deliver(2);
    sim.finish_rebuild(2);
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Healthy);
}

#[test]
fn a_rebuild_whose_source_went_offline_meanwhile_is_done_again_before_healthy() {
    // The source's link went down while the sink pulled: the rest may have
    // come from a restarted process that lost acknowledged writes.
    let (mut sim, source, first_from) = replica_2_rebuilding();
    sim.disconnect(source);
    sim.finish_rebuild(2);
    assert_eq!(
        sim.ctl.replica_states()[2],
        ReplicaState::Degraded,
        "healthy although its source went away during the rebuild"
    );
    sim.connect(source);
    sim.advance(TICK_FOR_TESTS);
    sim.connect(2);
    let (_, from, _) = rebuild_start(&sim, 2).expect("no second RebuildStart");
    assert!(
        from <= first_from,
        "rebuilt again from {from}, not {first_from}"
    );
    sim.deliver(2);
    sim.finish_rebuild(2);
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Healthy);
}

#[test]
fn a_rebuild_that_starts_after_a_snapshot_is_not_repeated_for_it() {
    let mut sim = Sim::new(3, 2);
    sim.disconnect(2);
    let taken = sim.submit(snapshot("before"));
    sim.deliver_all();
    assert_eq!(sim.result(taken), Some(&Ok(Completion::Done)));
    sim.connect(2);
    sim.deliver(2);
    sim.finish_rebuild(2);
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Healthy);
}

/// Replica 2 missed a write and rebuilds (its run accepted): the
/// simulation, the run's source and its `from_io_seq`.
fn replica_2_rebuilding() -> (Sim, usize, u64) {
    let mut sim = Sim::new(3, 2);
    sim.disconnect(2);
    sim.write(1, 1);
    sim.deliver_all();
    sim.connect(2);
    let (source, from, _) = rebuild_start(&sim, 2).expect("no RebuildStart");
    sim.deliver(2);
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Rebuilding);
    (sim, source, from)
}

const TICK_FOR_TESTS: Duration = Duration::from_millis(100);

// ------------------------------------------- out of space, failing replicas

/// A reply of `Status` to the first packet on replica `r`'s link.
fn refuse_next(sim: &mut Sim, r: usize, status: Status, detail: &str) {
    let packet = sim.links[r].pop_front().expect("nothing sent");
    let opcode = packet.message.wire_opcode();
    let error = packet.reply(Message::Error(cstor_proto::ErrorReply::new(
        opcode, status, detail,
    )));
    let actions = sim.ctl.on_reply(sim.now, r, sim.gens[r], error);
    sim.apply(actions);
}

fn data(fill: u8) -> Result<Completion, VolumeError> {
    Ok(Completion::Data(Bytes::from(vec![fill; BLOCK as usize])))
}

#[test]
fn a_replica_out_of_space_leaves_the_healthy_set_and_the_write_completes_at_quorum() {
    let mut sim = Sim::new(3, 2);
    sim.full[2] = true;
    let w = sim.write(1, 0xAB);
    // The full replica answers first: nothing is decided yet.
    sim.deliver(2);
    assert_eq!(sim.result(w), None);
    sim.deliver(0);
    sim.deliver(1);
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
    assert_ne!(sim.ctl.replica_states()[2], ReplicaState::Healthy);
    assert_eq!(sim.ctl.healthy(), 2);
    assert!(sim.ctl.missed_from(2).is_some(), "it must be rebuilt");
    // Later writes go on at quorum without it.
    let next = sim.write(2, 0xCD);
    sim.deliver_all();
    assert_eq!(sim.result(next), Some(&Ok(Completion::Done)));
}

#[test]
fn reads_after_a_write_one_replica_could_not_allocate_always_return_it() {
    let mut sim = Sim::new(3, 2);
    sim.full[1] = true;
    let w = sim.write(4, 0x5A);
    sim.deliver_all();
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
    for _ in 0..40 {
        let tag = sim.read(4);
        sim.deliver_all();
        assert_eq!(sim.result(tag), Some(&data(0x5A)));
        assert!(
            sim.links[1]
                .iter()
                .all(|p| !matches!(p.message, Message::Read(_))),
            "a read went to the replica that lacks the write"
        );
    }
}

/// Seed 6974 of the simulator: a replica whose answer to a completed
/// write has not come yet may fail it (here: out of space) and read the
/// older data back, so reads of the block go to replicas that answered.
#[test]
fn reads_of_a_completed_write_skip_a_replica_that_has_not_answered_it() {
    let mut sim = Sim::new(3, 2);
    sim.full[1] = true;
    let w = sim.write(4, 0x5A);
    sim.deliver(0);
    sim.deliver(2);
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
    assert_eq!(sim.ctl.healthy(), 3, "replica 1 has not answered yet");
    for _ in 0..12 {
        let tag = sim.read(4);
        assert!(
            sim.links[1]
                .iter()
                .all(|p| !matches!(p.message, Message::Read(_))),
            "a read went to the replica that owes the write"
        );
        sim.deliver(0);
        sim.deliver(2);
        assert_eq!(sim.result(tag), Some(&data(0x5A)));
    }
    // Other blocks are read from every healthy replica as before.
    let mut readers = BTreeSet::new();
    for _ in 0..6 {
        sim.read(9);
        for (r, link) in sim.links.iter().enumerate() {
            if link.iter().any(|p| matches!(p.message, Message::Read(_))) {
                readers.insert(r);
            }
        }
        sim.deliver(0);
        sim.deliver(2);
    }
    assert!(readers.contains(&1), "replica 1 serves other blocks");
}

#[test]
fn a_write_fewer_than_cf_replicas_could_allocate_fails_no_space_and_reads_stay_stable() {
    let mut sim = Sim::new(3, 2);
    let old = sim.write(0, 1);
    sim.deliver_all();
    assert_eq!(sim.result(old), Some(&Ok(Completion::Done)));
    sim.full[1] = true;
    sim.full[2] = true;
    let w = sim.write(3, 0x33);
    sim.deliver_all();
    assert_eq!(sim.result(w), Some(&Err(VolumeError::NoSpace)));
    // Replica 0 wrote it, the others could not: they leave the healthy
    // set, so every read of the block gives the same answer.
    assert_eq!(sim.ctl.healthy(), 1);
    let first = sim.read(3);
    sim.deliver_all();
    let seen = sim.result(first).cloned().expect("read answered");
    for _ in 0..20 {
        let tag = sim.read(3);
        sim.deliver_all();
        assert_eq!(sim.result(tag), Some(&seen));
    }
    // The volume cannot allocate: writes fail at once (no hold), even an
    // overwrite, while reads go on.
    let again = sim.write(0, 2);
    assert_eq!(sim.result(again), Some(&Err(VolumeError::NoSpace)));
    let flush = sim.submit(Op::Flush);
    assert_eq!(sim.result(flush), Some(&Err(VolumeError::NoSpace)));
    let read = sim.read(0);
    sim.deliver_all();
    assert_eq!(sim.result(read), Some(&data(1)));
    // Past the hold it is still out of space, not read-only below quorum.
    sim.advance(Duration::from_secs(21));
    assert!(!sim.ctl.is_read_only(sim.now));
    let late = sim.write(0, 3);
    assert_eq!(sim.result(late), Some(&Err(VolumeError::NoSpace)));
}

#[test]
fn a_write_no_replica_could_allocate_fails_no_space_and_every_replica_stays_healthy() {
    let mut sim = Sim::new(3, 2);
    let old = sim.write(0, 1);
    sim.deliver_all();
    assert_eq!(sim.result(old), Some(&Ok(Completion::Done)));
    sim.full = vec![true; 3];
    let w = sim.write(5, 5);
    sim.deliver_all();
    assert_eq!(sim.result(w), Some(&Err(VolumeError::NoSpace)));
    assert_eq!(sim.ctl.replica_states(), vec![ReplicaState::Healthy; 3]);
    // Nobody holds it, so nobody missed it: an overwrite of an allocated
    // block still succeeds.
    let overwrite = sim.write(0, 2);
    sim.deliver_all();
    assert_eq!(sim.result(overwrite), Some(&Ok(Completion::Done)));
}

#[test]
fn a_replica_that_fails_a_write_with_any_error_leaves_the_healthy_set() {
    for status in [Status::BadRequest, Status::IoError, Status::VolumePoisoned] {
        let mut sim = Sim::new(3, 2);
        let w = sim.write(2, 2);
        refuse_next(&mut sim, 2, status, "refused");
        sim.deliver(0);
        sim.deliver(1);
        assert_eq!(sim.result(w), Some(&Ok(Completion::Done)), "{status:?}");
        assert_ne!(
            sim.ctl.replica_states()[2],
            ReplicaState::Healthy,
            "{status:?}"
        );
        assert!(sim.ctl.missed_from(2).is_some(), "{status:?}");
    }
}

#[test]
fn a_replica_that_keeps_failing_is_dialled_again_only_after_a_backoff_that_doubles_up_to_the_cap() {
    let mut sim = Sim::new(3, 2);
    sim.full[2] = true;
    let w = sim.write(1, 1);
    sim.deliver_all();
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
    let mut waits = Vec::new();
    for _ in 0..9 {
        assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Failed);
        let at = sim
            .ctl
            .redial_at(2)
            .expect("a failed replica has a redial time");
        waits.push(at - sim.now);
        // Dialled too early (a link racing its reset): not taken back.
        sim.advance(at - sim.now - Duration::from_millis(1));
        sim.connect(2);
        assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Failed);
        assert!(!sim.up[2]);
        // On time: degraded, offered a rebuild that fails for lack of space.
        sim.advance(Duration::from_millis(1));
        sim.connect(2);
        assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Degraded);
        sim.deliver(2);
        assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Rebuilding);
        assert_eq!(sim.ctl.healthy(), 2);
        sim.finish_rebuild(2);
    }
    let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
    assert_eq!(secs, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
    assert_eq!(waits[0], FAILED_RETRY_MIN);
    assert_eq!(*waits.last().unwrap(), FAILED_RETRY_MAX);
    // Writes went on at quorum throughout.
    let w = sim.write(2, 2);
    sim.deliver_all();
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
}

#[test]
fn a_failed_replica_given_room_again_rebuilds_and_is_healthy_with_its_backoff_reset() {
    let mut sim = Sim::new(3, 2);
    sim.full[2] = true;
    for block in 0..3 {
        sim.write(block, 7);
        sim.deliver_all();
        if let Some(at) = sim.ctl.redial_at(2) {
            sim.advance(at - sim.now);
            sim.connect(2);
            sim.deliver(2);
            sim.finish_rebuild(2);
        }
    }
    assert!(sim.ctl.failures(2) >= 2);
    // The operator grows its pool.
    sim.full[2] = false;
    let at = sim.ctl.redial_at(2).unwrap();
    sim.advance(at - sim.now);
    sim.connect(2);
    sim.deliver(2);
    sim.finish_rebuild(2);
    assert_eq!(sim.ctl.replica_states(), vec![ReplicaState::Healthy; 3]);
    assert_eq!(sim.ctl.failures(2), 0);
    assert_eq!(sim.ctl.redial_at(2), None);
    assert_eq!(sim.disks[2], sim.disks[0]);
}

#[test]
fn below_quorum_with_one_replica_out_of_space_and_one_restarting_writes_are_held_not_failed() {
    let mut sim = Sim::new(3, 2);
    sim.full[2] = true;
    let w = sim.write(1, 1);
    sim.deliver_all();
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Failed);
    // Replica 1 restarts: the volume could still allocate once it is back.
    sim.disconnect(1);
    assert!(!sim.ctl.cannot_allocate());
    let held = sim.write(2, 2);
    sim.deliver_all();
    sim.advance(Duration::from_secs(5));
    assert_eq!(sim.result(held), None, "held, not failed");
    sim.connect(1);
    sim.deliver_all();
    assert_eq!(sim.result(held), Some(&Ok(Completion::Done)));
}

#[test]
fn a_volume_that_cannot_allocate_writes_again_once_a_replica_has_room_and_is_rebuilt() {
    let mut sim = Sim::new(3, 2);
    sim.full[1] = true;
    sim.full[2] = true;
    let w = sim.write(3, 3);
    sim.deliver_all();
    assert_eq!(sim.result(w), Some(&Err(VolumeError::NoSpace)));
    assert!(sim.ctl.cannot_allocate());
    let refused = sim.write(0, 1);
    assert_eq!(sim.result(refused), Some(&Err(VolumeError::NoSpace)));
    sim.full[1] = false;
    let at = sim.ctl.redial_at(1).unwrap();
    sim.advance(at - sim.now);
    sim.connect(1);
    sim.deliver(1);
    sim.finish_rebuild(1);
    assert_eq!(sim.ctl.replica_states()[1], ReplicaState::Healthy);
    assert!(!sim.ctl.cannot_allocate());
    let w = sim.write(0, 1);
    sim.deliver_all();
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
    // The block whose write failed reads the same from both healthy ones.
    for _ in 0..10 {
        let tag = sim.read(3);
        sim.deliver_all();
        assert_eq!(sim.result(tag), Some(&data(3)));
    }
}

// Connection generations (module doc; `super::super::link`).

#[test]
fn every_action_for_a_replica_carries_the_connection_it_was_decided_for() {
    let mut sim = Sim::new(3, 2);
    let first = sim.gens[2];
    let before = sim.ctl.submit(sim.now, 100, write_op(1, 1));
    assert!(before.iter().all(|a| match a {
        Action::Send {
            replica,
            generation,
            ..
        } => *generation == sim.gens[*replica],
        _ => true,
    }));
    sim.apply(before);
    // Replica 2 misses a write and reconnects: its rebuild and the resent
    // writes are for the new connection only.
    sim.disconnect(2);
    sim.write(2, 2);
    sim.deliver_all();
    sim.up[2] = true;
    sim.last_seq[2] = 0;
    sim.gens[2] += 1;
    let actions = sim.ctl.on_connected(sim.now, 2, sim.gens[2]);
    assert!(matches!(
        actions.first(),
        Some(Action::StartRebuild { replica: 2, generation, .. }) if *generation == first + 1
    ));
    assert!(actions.iter().all(|a| match a {
        Action::Send { generation, .. } | Action::Drop { generation, .. } =>
            *generation == first + 1,
        _ => true,
    }));
}

fn write_op(block: u64, fill: u8) -> Op {
    Op::Write {
        offset: block * BLOCK,
        data: Bytes::from(vec![fill; BLOCK as usize]),
        fua: false,
    }
}

#[test]
fn a_packet_the_link_could_not_send_on_the_current_connection_drops_the_replica_and_is_resent_on_the_next(
) {
    let mut sim = Sim::new(3, 2);
    let w = sim.write(1, 7);
    // The link lost its connection as the write got there.
    let seq = sim.links[2].back().map(|p| p.io_seq).unwrap();
    sim.links[2].clear();
    let actions = sim.ctl.on_not_sent(sim.now, 2, sim.gens[2], seq);
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Drop { replica: 2, .. })));
    sim.apply(actions);
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Offline);
    sim.connect(2);
    assert!(sim.links[2].iter().any(|p| p.io_seq == seq));
    sim.deliver_all();
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Healthy);
}

#[test]
fn a_not_sent_or_down_report_of_an_older_connection_leaves_the_current_one_alone() {
    let mut sim = Sim::new(3, 2);
    let old = sim.gens[1];
    sim.disconnect(1);
    sim.connect(1);
    assert!(sim.ctl.on_not_sent(sim.now, 1, old, 5).is_empty());
    assert!(sim.ctl.on_disconnected(sim.now, 1, old).is_empty());
    assert_eq!(sim.ctl.replica_states()[1], ReplicaState::Healthy);
    let w = sim.write(3, 3);
    sim.deliver_all();
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
    assert_eq!(sim.ctl.healthy(), 3);
}

#[test]
fn a_reply_from_an_older_connection_is_ignored() {
    let mut sim = Sim::new(2, 2);
    let w = sim.write(0, 1);
    let packet = sim.links[1].pop_front().unwrap();
    let old = sim.gens[1];
    sim.disconnect(1);
    sim.connect(1);
    // The old connection's ack arrives late: it does not count.
    let actions = sim
        .ctl
        .on_reply(sim.now, 1, old, packet.reply(Message::Ack(Opcode::Write)));
    sim.apply(actions);
    sim.deliver(0);
    assert_eq!(sim.result(w), None);
    sim.deliver(1);
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
}

#[test]
fn a_reconnect_without_a_down_report_resends_what_the_old_connection_owed() {
    let mut sim = Sim::new(3, 2);
    let w = sim.write(4, 4);
    sim.links[2].clear();
    // The link's down report of connection 1 is lost; connection 2 is up.
    sim.last_seq[2] = 0;
    sim.gens[2] += 1;
    let actions = sim.ctl.on_connected(sim.now, 2, sim.gens[2]);
    sim.apply(actions);
    assert_eq!(sim.links[2].len(), 1);
    sim.deliver_all();
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Healthy);
}

// Readmission (module doc, "Who may count again"): the facts of a hello,
// the controller's decision.

impl Sim {
    /// Replica `r` comes back on a fresh connection and says `hello`.
    fn hello(&mut self, r: usize, hello: impl FnOnce(ReplicaHello) -> ReplicaHello) {
        self.up[r] = true;
        self.last_seq[r] = 0;
        self.gens[r] += 1;
        let facts = hello(ReplicaHello {
            generation: self.gens[r],
            replica_id: 100 + r as u128,
            size_bytes: self.ctl.size_bytes(),
            last_durable_io_seq: self.ctl.acked_max(r),
            last_received_io_seq: self.ctl.acked_max(r),
            state: cstor_proto::ReplicaState::Healthy,
        });
        let actions = self.ctl.on_hello(self.now, r, facts, Vec::new());
        self.apply(actions);
    }

    /// Replica `r` comes back saying it is complete through `durable` and
    /// received through `received`.
    fn hello_through(&mut self, r: usize, durable: u64, received: u64) {
        self.hello(r, |h| ReplicaHello {
            last_durable_io_seq: durable,
            last_received_io_seq: received,
            ..h
        });
    }

    /// A volume whose replicas all said hello with their ids.
    fn with_hellos(replicas: usize, cf: usize) -> Sim {
        let mut sim = Sim::new(replicas, cf);
        for r in 0..replicas {
            sim.disconnect(r);
            sim.hello(r, |h| h);
        }
        sim
    }
}

#[test]
fn a_replica_that_missed_nothing_is_readmitted_healthy() {
    let mut sim = Sim::with_hellos(3, 2);
    sim.write(0, 1);
    sim.deliver_all();
    sim.disconnect(2);
    sim.hello(2, |h| h);
    assert_eq!(sim.ctl.admission(2), Some(Admission::Healthy));
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Healthy);
}

#[test]
fn a_replica_that_lost_nothing_is_readmitted_healthy_after_a_flush_or_a_membership_record() {
    // Neither a flush nor a membership record counts in what a replica
    // reports as received: acknowledging one must not make it look behind.
    for after in [Op::Flush, set_membership(MemberChange::None, 2)] {
        let mut sim = Sim::new(3, 2);
        let write_seq = sim.ctl.next_io_seq();
        let w = sim.write(0, 1);
        let later = sim.submit(after.clone());
        // A barrier is sent once the write is answered everywhere.
        sim.deliver_all();
        sim.deliver_all();
        assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
        assert_eq!(sim.result(later), Some(&Ok(Completion::Done)), "{after:?}");
        sim.disconnect(2);
        sim.hello_through(2, write_seq, write_seq);
        assert_eq!(
            sim.ctl.admission(2),
            Some(Admission::Healthy),
            "after {after:?}"
        );
        assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Healthy);
    }
}

#[test]
fn a_replica_whose_id_changed_is_rebuilt_in_full() {
    let mut sim = Sim::with_hellos(3, 2);
    sim.write(0, 1);
    sim.deliver_all();
    sim.disconnect(2);
    sim.hello(2, |h| ReplicaHello {
        replica_id: 999,
        ..h
    });
    assert_eq!(
        sim.ctl.admission(2),
        Some(Admission::IdentityChanged { was: 102, now: 999 })
    );
    assert_eq!(rebuild_start(&sim, 2).map(|(_, from, _)| from), Some(0));
    assert_eq!(sim.ctl.replica_id(2), Some(999));
}

#[test]
fn a_replica_smaller_than_the_volume_is_grown_first_and_rebuilt_from_its_durable_io_seq() {
    let mut sim = Sim::with_hellos(3, 2);
    sim.write(0, 1);
    sim.deliver_all();
    sim.disconnect(2);
    sim.hello(2, |h| ReplicaHello {
        size_bytes: h.size_bytes / 2,
        ..h
    });
    assert_eq!(
        sim.ctl.admission(2),
        Some(Admission::Undersized {
            size_bytes: 1 << 19
        })
    );
    assert!(matches!(
        sim.links[2].front().map(|p| &p.message),
        Some(Message::Resize { new_size_bytes }) if *new_size_bytes == 1 << 20
    ));
    let from = sim.ctl.rebuild(2).map(|r| r.from_io_seq);
    assert!(from > Some(0), "a full rebuild for a missed grow: {from:?}");
    assert_eq!(from, sim.ctl.missed_from(2).map(|m| m - 1));
}

#[test]
fn members_all_smaller_than_the_volume_the_open_saw_are_not_stuck() {
    // A grow that failed short of quorum reached one member, which the
    // open saw first (so the volume keeps it); that member then lost it
    // (its undo, then a restart). Every member is smaller than the volume:
    // the best copy is grown and carries on, the others rebuild from it.
    let mut sim = Sim::with_hellos(3, 2);
    sim.write(0, 1);
    sim.deliver_all();
    for r in 0..3 {
        sim.disconnect(r);
    }
    for r in 0..3 {
        sim.hello(r, |h| ReplicaHello {
            size_bytes: h.size_bytes / 2,
            ..h
        });
    }
    let states = sim.ctl.replica_states();
    assert!(
        states.contains(&ReplicaState::Healthy),
        "every member waits for a full rebuild nobody can source: {states:?}"
    );
    sim.deliver_all();
    for r in 0..3 {
        if sim.ctl.replica_states()[r] != ReplicaState::Healthy {
            sim.advance(REBUILD_RETRY);
            sim.connect(r);
            sim.deliver(r);
            sim.finish_rebuild(r);
        }
    }
    assert_eq!(sim.ctl.replica_states(), vec![ReplicaState::Healthy; 3]);
}

#[test]
fn a_replica_that_lost_writes_it_acknowledged_is_rebuilt_from_its_durable_io_seq() {
    let mut sim = Sim::with_hellos(3, 2);
    sim.write(0, 1);
    sim.write(1, 2);
    sim.deliver_all();
    let acked = sim.ctl.acked_max(2);
    sim.disconnect(2);
    sim.hello_through(2, acked - 1, acked - 1);
    assert_eq!(
        sim.ctl.admission(2),
        Some(Admission::Rebuild { from_io_seq: acked })
    );
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Degraded);
    assert!(rebuild_start(&sim, 2).is_some());
}

#[test]
fn a_replica_reporting_an_unfinished_rebuild_is_rebuilt_from_its_durable_io_seq() {
    let mut sim = Sim::with_hellos(3, 2);
    sim.disconnect(2);
    sim.hello(2, |h| ReplicaHello {
        state: cstor_proto::ReplicaState::Rebuilding,
        last_durable_io_seq: 500,
        ..h
    });
    assert_eq!(
        sim.ctl.admission(2),
        Some(Admission::Rebuild { from_io_seq: 501 })
    );
    assert!(rebuild_start(&sim, 2).is_some());
}

#[test]
fn a_replica_first_reached_after_the_open_and_behind_it_is_rebuilt() {
    let mut sim = Sim::new(3, 2);
    sim.ctl.config.max_received_at_open = 900;
    sim.disconnect(2);
    sim.hello_through(2, 800, 850);
    assert_eq!(
        sim.ctl.admission(2),
        Some(Admission::Rebuild { from_io_seq: 801 })
    );
    // The second hello of the same replica is no first contact.
    sim.disconnect(1);
    sim.hello(1, |h| ReplicaHello {
        last_received_io_seq: 900,
        ..h
    });
    assert_eq!(sim.ctl.admission(1), Some(Admission::Healthy));
}

#[test]
fn the_only_member_that_lost_unflushed_writes_carries_on_healthy() {
    let mut sim = Sim::with_hellos(1, 1);
    let w = sim.write(0, 1);
    sim.deliver_all();
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
    let acked = sim.ctl.acked_max(0);
    sim.disconnect(0);
    sim.hello_through(0, acked - 1, acked - 1);
    assert_eq!(sim.ctl.admission(0), Some(Admission::AloneLostUnflushed));
    assert_eq!(sim.ctl.replica_states()[0], ReplicaState::Healthy);
}

#[test]
fn a_member_that_lost_unflushed_writes_beside_members_holding_nothing_carries_on_healthy() {
    // Replica 1 was added and awaits its full rebuild (it holds nothing):
    // what replica 0 lost exists nowhere else, as if it were alone (seed
    // 442 of the simulator: both stayed degraded, dropped at every connect;
    // seed 1078: three members that all lacked writes).
    let mut sim = Sim::with_hellos(2, 1);
    sim.disconnect(1);
    sim.ctl.mark_missed(1, 0);
    let w = sim.write(0, 1);
    sim.deliver_all();
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
    let acked = sim.ctl.acked_max(0);
    sim.disconnect(0);
    sim.hello_through(0, acked - 1, acked - 1);
    assert_eq!(sim.ctl.admission(0), Some(Admission::AloneLostUnflushed));
    assert_eq!(sim.ctl.replica_states()[0], ReplicaState::Healthy);
    // Beside a member that holds the write it lost, it is degraded.
    let mut sim = Sim::with_hellos(2, 1);
    let w = sim.write(0, 1);
    sim.deliver_all();
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
    let acked = sim.ctl.acked_max(0);
    sim.disconnect(0);
    sim.hello_through(0, acked - 1, acked - 1);
    assert_eq!(sim.ctl.missed_from(0), Some(acked));
    assert_eq!(sim.ctl.replica_states()[0], ReplicaState::Degraded);
}

#[test]
fn a_member_that_lost_what_the_others_missed_carries_on_and_they_rebuild_from_it() {
    // Replica 0 missed write w2 while away; replica 1, the only one that
    // took it, lost it in a power cut. Nobody holds w2: replica 1 is the
    // best copy there is (seed 1605 of the simulator: both stayed degraded,
    // each dropped at connect for want of a source).
    let mut sim = Sim::with_hellos(2, 1);
    sim.write(0, 1);
    sim.deliver_all();
    sim.disconnect(0);
    let w2 = sim.write(1, 2);
    sim.deliver_all();
    assert_eq!(sim.result(w2), Some(&Ok(Completion::Done)));
    let lost = sim.ctl.acked_max(1);
    assert_eq!(sim.ctl.missed_from(0), Some(lost));
    sim.disconnect(1);
    sim.hello(0, |h| h);
    // No source to rebuild from yet: dropped at connect, redialled later.
    assert_ne!(sim.ctl.replica_states()[0], ReplicaState::Healthy);
    sim.hello_through(1, lost - 1, lost - 1);
    assert_eq!(sim.ctl.admission(1), Some(Admission::AloneLostUnflushed));
    assert_eq!(sim.ctl.replica_states()[1], ReplicaState::Healthy);
    assert_eq!(
        sim.ctl.missed_from(0),
        Some(lost),
        "rebuilt from the survivor"
    );
}

#[test]
fn a_member_that_comes_back_with_less_than_it_first_said_it_held_is_rebuilt() {
    // Replica 1 said it held through 120 when this target first saw it
    // (a previous target's writes, not yet durable on it), then restarted
    // and lost them: it must not count as complete (seed 709 of the
    // simulator: replicas differed at a block).
    let mut sim = Sim::new(3, 2);
    for r in 0..3 {
        sim.disconnect(r);
    }
    for r in 0..3 {
        sim.hello_through(r, 100, 120);
    }
    assert_eq!(sim.ctl.replica_states(), vec![ReplicaState::Healthy; 3]);
    sim.disconnect(1);
    sim.hello_through(1, 100, 100);
    assert_eq!(sim.ctl.missed_from(1), Some(101));
    assert_ne!(sim.ctl.replica_states()[1], ReplicaState::Healthy);
}

#[test]
fn members_seen_before_one_that_received_more_are_rebuilt_from_where_they_were() {
    // A new target reaches replicas 0 and 1 first (they lost acknowledged
    // writes in a power cut), then replica 2, which holds them: 0 and 1
    // must not serve what they lack (seed 966 of the simulator read a
    // torn block from such a replica).
    let mut sim = Sim::new(3, 2);
    for r in 0..3 {
        sim.disconnect(r);
    }
    for r in 0..2 {
        sim.hello_through(r, 100, 100);
    }
    assert_eq!(sim.ctl.replica_states()[0], ReplicaState::Healthy);
    sim.hello_through(2, 120, 120);
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Healthy);
    for r in 0..2 {
        assert_eq!(sim.ctl.missed_from(r), Some(101), "replica {r}");
        assert_ne!(sim.ctl.replica_states()[r], ReplicaState::Healthy);
    }
    // A member that comes back within this target's life with more (this
    // target's own writes) shows nothing of the kind.
    let mut sim = Sim::with_hellos(3, 2);
    let w = sim.write(0, 1);
    sim.deliver_all();
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
    sim.disconnect(2);
    sim.hello(2, |h| h);
    assert_eq!(sim.ctl.missed_from(0), None);
    assert_eq!(sim.ctl.missed_from(2), None);
    assert_eq!(sim.ctl.replica_states(), vec![ReplicaState::Healthy; 3]);
}

#[test]
fn a_replica_that_missed_writes_while_away_is_rebuilt_from_the_first_it_missed() {
    let mut sim = Sim::with_hellos(3, 2);
    sim.disconnect(2);
    let before = sim.ctl.next_io_seq();
    sim.write(0, 1);
    sim.deliver_all();
    sim.hello(2, |h| h);
    assert_eq!(
        sim.ctl.admission(2),
        Some(Admission::Rebuild {
            from_io_seq: before
        })
    );
}

#[test]
fn a_removed_or_backing_off_replica_is_refused() {
    let mut sim = Sim::with_hellos(3, 2);
    let m = sim.submit(set_membership(MemberChange::Remove(2), 2));
    sim.deliver_all();
    assert_eq!(sim.result(m), Some(&Ok(Completion::Done)));
    sim.hello(2, |h| h);
    assert_eq!(sim.ctl.admission(2), Some(Admission::Refused));
    assert!(!sim.up[2]);
}

// Rule 9 by size: what a lagging replica owes is bounded.

#[test]
fn a_replica_that_owes_more_than_the_request_bound_leaves_the_healthy_set_before_the_ack_timeout() {
    let mut sim = Sim::new(3, 2);
    // A small bound, for speed: the shell's is MAX_OWED_REQUESTS.
    const BOUND: usize = 64;
    sim.ctl.config.max_owed_requests = BOUND;
    let mut last = 0;
    for _ in 0..BOUND {
        last = sim.submit(Op::Flush);
        sim.deliver(0);
        sim.deliver(1);
    }
    assert_eq!(sim.result(last), Some(&Ok(Completion::Done)));
    assert_eq!(sim.ctl.owed_by(2), BOUND);
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Healthy);
    let one_more = sim.submit(Op::Flush);
    assert!(!sim.up[2], "dropped");
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Offline);
    assert_eq!(sim.ctl.owed_by(2), 0);
    sim.deliver_all();
    assert_eq!(sim.result(one_more), Some(&Ok(Completion::Done)));
    // Back, it is behind the writes it never took: rebuilt before it counts.
    sim.connect(2);
    assert!(sim.ctl.missed_from(2).is_some());
}

#[test]
fn a_replica_that_owes_more_than_the_byte_bound_leaves_the_healthy_set_before_the_ack_timeout() {
    let mut sim = Sim::new(3, 2);
    let data = Bytes::from(vec![7u8; 1 << 20]);
    let write = |sim: &mut Sim| {
        sim.submit(Op::Write {
            offset: 0,
            data: data.clone(),
            fua: false,
        })
    };
    let fits = (MAX_OWED_BYTES / (1 << 20)) as usize;
    for _ in 0..fits {
        write(&mut sim);
        sim.deliver(0);
        sim.deliver(1);
    }
    assert_eq!(sim.ctl.owed_bytes_by(2), MAX_OWED_BYTES);
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Healthy);
    let over = write(&mut sim);
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Offline);
    assert_eq!(sim.ctl.owed_bytes_by(2), 0);
    sim.deliver_all();
    assert_eq!(sim.result(over), Some(&Ok(Completion::Done)));
}

#[test]
fn replicas_that_keep_up_are_never_dropped_for_their_backlog() {
    let mut sim = Sim::new(3, 2);
    let data = Bytes::from(vec![1u8; 1 << 20]);
    for i in 0..(2 * MAX_OWED_BYTES / (1 << 20)) {
        sim.submit(Op::Write {
            offset: 0,
            data: data.clone(),
            fua: i % 2 == 0,
        });
        sim.deliver_all();
    }
    assert_eq!(sim.ctl.healthy(), 3);
}

// The open's probes are judged like hellos.

fn probed(replica_id: u128, durable: u64, received: u64) -> ReplicaHello {
    ReplicaHello {
        generation: 0,
        replica_id,
        size_bytes: 1 << 20,
        last_durable_io_seq: durable,
        last_received_io_seq: received,
        state: cstor_proto::ReplicaState::Healthy,
    }
}

/// A controller opened on three probes, all offline.
fn opened(probes: [ReplicaHello; 3], recorded: [Option<u128>; 3]) -> Controller {
    let mut cfg = config(3, 2);
    cfg.max_received_at_open = probes
        .iter()
        .map(|p| p.last_received_io_seq)
        .max()
        .unwrap_or(0);
    let mut ctl =
        Controller::new(cfg, &[None, None, None], Instant::now()).with_replica_ids(&recorded);
    for (i, p) in probes.into_iter().enumerate() {
        ctl.on_probe(i, p);
    }
    ctl
}

#[test]
fn at_open_a_replica_behind_the_others_is_degraded_from_its_durable_io_seq() {
    let ctl = opened(
        [probed(1, 90, 100), probed(2, 90, 100), probed(3, 40, 50)],
        [None; 3],
    );
    assert_eq!(ctl.missed_from(0), None);
    assert_eq!(ctl.missed_from(1), None);
    assert_eq!(ctl.missed_from(2), Some(41));
}

#[test]
fn at_open_a_member_whose_id_differs_from_the_record_is_rebuilt_in_full() {
    let ctl = opened(
        [probed(1, 90, 100), probed(2, 90, 100), probed(9, 90, 100)],
        [Some(1), Some(2), Some(3)],
    );
    assert_eq!(ctl.missed_from(2), Some(0));
    assert_eq!(ctl.replica_id(2), Some(9));
    assert_eq!(ctl.missed_from(0), None);
}

#[test]
fn at_open_a_replica_with_an_unfinished_rebuild_is_degraded() {
    let mut third = probed(3, 60, 100);
    third.state = cstor_proto::ReplicaState::Degraded;
    let ctl = opened([probed(1, 90, 100), probed(2, 90, 100), third], [None; 3]);
    assert_eq!(ctl.missed_from(2), Some(61));
}

// ------------------------------------------------------------------ scrub

fn digests(
    result: Option<&Result<Completion, VolumeError>>,
) -> (u64, Vec<(usize, u64)>, Vec<usize>) {
    match result {
        Some(Ok(Completion::Digests {
            io_seq,
            replies,
            errors,
        })) => (
            *io_seq,
            replies.iter().map(|(r, d)| (*r, d.digest)).collect(),
            errors.iter().map(|(r, _)| *r).collect(),
        ),
        other => panic!("not digests: {other:?}"),
    }
}

#[test]
fn a_digest_goes_to_every_healthy_replica_after_the_writes_before_it() {
    let mut sim = Sim::new(3, 2);
    sim.write(1, 7);
    // The digest goes out behind the write on every link, before anyone
    // answered it: each replica digests the write.
    let tag = sim.submit(Op::Digest {
        offset: 0,
        len_bytes: 16 * BLOCK as u32,
    });
    assert!(sim.result(tag).is_none());
    sim.deliver_all();
    let (_, replies, errors) = digests(sim.result(tag));
    assert_eq!(replies.len(), 3);
    assert!(errors.is_empty());
    assert!(replies.iter().all(|(_, d)| *d == replies[0].1));
    assert_eq!(replies[0].1, sim.digest(0, 0, 16 * BLOCK));
    assert_ne!(replies[0].1, Sim::new(1, 1).digest(0, 0, 16 * BLOCK));

    // A replica that goes down before answering: the digest completes with
    // the others.
    let tag = sim.submit(Op::Digest {
        offset: 0,
        len_bytes: 16 * BLOCK as u32,
    });
    sim.deliver(0);
    sim.deliver(2);
    assert!(sim.result(tag).is_none(), "waits for replica 1");
    sim.disconnect(1);
    let (_, replies, errors) = digests(sim.result(tag));
    assert_eq!(
        replies.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
        vec![0, 2]
    );
    assert!(errors.is_empty());
    // Only healthy replicas are asked; none: unavailable at once.
    let tag = sim.submit(Op::Digest {
        offset: 0,
        len_bytes: BLOCK as u32,
    });
    sim.deliver_all();
    assert_eq!(digests(sim.result(tag)).1.len(), 2);
    // Larger than a digest may be: refused before anything is sent.
    let tag = sim.submit(Op::Digest {
        offset: 0,
        len_bytes: cstor_proto::limits::MAX_DIGEST_BYTES + 4096,
    });
    assert!(matches!(
        sim.result(tag),
        Some(Err(VolumeError::Refused(_)))
    ));
}

#[test]
fn a_digest_refused_by_a_replica_that_does_not_know_it_keeps_the_replica() {
    let mut sim = Sim::new(2, 1);
    let tag = sim.submit(Op::Digest {
        offset: 0,
        len_bytes: BLOCK as u32,
    });
    // Replica 1 is of an older version.
    let packet = sim.links[1].pop_front().unwrap();
    let reply = packet.reply(Message::Error(cstor_proto::ErrorReply::new(
        Opcode::Digest.to_u16(),
        Status::UnknownOpcode,
        "unknown opcode 0x0050",
    )));
    let actions = sim.ctl.on_reply(sim.now, 1, sim.gens[1], reply);
    sim.apply(actions);
    sim.deliver_all();
    let (_, replies, errors) = digests(sim.result(tag));
    assert_eq!((replies.len(), errors), (1, vec![1]));
    assert_eq!(sim.ctl.replica_states()[1], ReplicaState::Healthy);
}

#[test]
fn a_repair_is_moot_once_a_write_overlapped_its_digest_since() {
    let mut sim = Sim::new(3, 2);
    sim.write(1, 7);
    sim.deliver_all();
    // Replica 2's copy differs behind the controller's back.
    sim.disks[2].insert(BLOCK, Bytes::from(vec![9; BLOCK as usize]));
    let range = 16 * BLOCK;
    let tag = sim.submit(Op::Digest {
        offset: 0,
        len_bytes: range as u32,
    });
    sim.deliver_all();
    let (guard, replies, _) = digests(sim.result(tag));
    assert_ne!(replies[2].1, replies[0].1);
    // The read comes from the replica named, never another.
    let tag = sim.submit(Op::ReadFrom {
        replica: 0,
        offset: BLOCK,
        len_bytes: BLOCK as u32,
    });
    assert!(sim.links[1].is_empty() && sim.links[2].is_empty());
    sim.deliver_all();
    let Some(Ok(Completion::Data(good))) = sim.result(tag).cloned() else {
        panic!("{:?}", sim.result(tag));
    };
    assert_eq!(good, Bytes::from(vec![7; BLOCK as usize]));
    // An application write to the range lands meanwhile: the repair would
    // put older data over it, so it is refused as moot.
    sim.write(3, 5);
    sim.deliver_all();
    let tag = sim.submit(Op::Repair {
        offset: BLOCK,
        data: good.clone(),
        guard,
    });
    assert!(matches!(
        sim.result(tag),
        Some(Err(VolumeError::Refused(_)))
    ));
    assert!(sim.links.iter().all(VecDeque::is_empty), "nothing sent");

    // Compared again; a write elsewhere does not make it moot.
    let tag = sim.submit(Op::Digest {
        offset: 0,
        len_bytes: range as u32,
    });
    sim.deliver_all();
    let (guard, _, _) = digests(sim.result(tag));
    sim.write(100, 1);
    let tag = sim.submit(Op::Repair {
        offset: BLOCK,
        data: good.clone(),
        guard,
    });
    sim.deliver_all();
    assert_eq!(sim.result(tag), Some(&Ok(Completion::Done)));
    for r in 0..3 {
        assert_eq!(sim.disks[r].get(&BLOCK), Some(&good), "replica {r}");
    }
    // A stale guard (another digest since), or outside the watched range.
    let stale = sim.submit(Op::Repair {
        offset: BLOCK,
        data: good.clone(),
        guard: guard - 1,
    });
    assert!(matches!(
        sim.result(stale),
        Some(Err(VolumeError::Refused(_)))
    ));
    let outside = sim.submit(Op::Repair {
        offset: range,
        data: good,
        guard,
    });
    assert!(matches!(
        sim.result(outside),
        Some(Err(VolumeError::Refused(_)))
    ));
}

#[test]
fn a_read_from_a_replica_that_is_not_healthy_fails_and_is_not_retried() {
    let mut sim = Sim::new(3, 2);
    sim.disconnect(1);
    let tag = sim.submit(Op::ReadFrom {
        replica: 1,
        offset: 0,
        len_bytes: BLOCK as u32,
    });
    assert_eq!(sim.result(tag), Some(&Err(VolumeError::Unavailable)));
    // Dropped while it reads: fails, no other replica is asked.
    let tag = sim.submit(Op::ReadFrom {
        replica: 2,
        offset: 0,
        len_bytes: BLOCK as u32,
    });
    sim.disconnect(2);
    assert_eq!(sim.result(tag), Some(&Err(VolumeError::Unavailable)));
    assert!(sim.links[0].is_empty());
}
