//! A deterministic simulation of the controller with N in-memory replicas:
//! the tests drive every delivery, disconnect and clock tick by hand, and a
//! property test drives them at random while checking the invariants.

use std::collections::{BTreeMap, VecDeque};

use proptest::prelude::*;

use super::*;

const BLOCK: u64 = 4096;

struct Sim {
    ctl: Controller,
    now: Instant,
    /// Per replica: block offset → data.
    disks: Vec<BTreeMap<u64, Bytes>>,
    /// Per replica: packets sent and not yet delivered (the link).
    links: Vec<VecDeque<Packet>>,
    up: Vec<bool>,
    /// Per replica: io_seq of the last mutating packet it got on its current
    /// link (checks per-link ordering).
    last_seq: Vec<u64>,
    results: BTreeMap<Tag, Result<Completion, VolumeError>>,
    next_tag: Tag,
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
            last_seq: vec![0; replicas],
            results: BTreeMap::new(),
            next_tag: 1,
        };
        for r in 0..replicas {
            sim.connect(r);
        }
        sim
    }

    fn apply(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { replica, packet } => {
                    assert!(self.up[replica], "sent to a replica that is down");
                    if !matches!(packet.message, Message::Read(_)) {
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
                Action::Drop { replica, .. } => self.down(replica),
            }
        }
    }

    fn down(&mut self, r: usize) {
        self.up[r] = false;
        self.links[r].clear();
    }

    fn connect(&mut self, r: usize) {
        self.up[r] = true;
        self.last_seq[r] = 0;
        let actions = self.ctl.on_connected(self.now, r);
        self.apply(actions);
    }

    fn disconnect(&mut self, r: usize) {
        self.down(r);
        let actions = self.ctl.on_disconnected(self.now, r);
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
        while let Some(packet) = self.links[r].pop_front() {
            let reply = match &packet.message {
                Message::Write(w) => {
                    self.disks[r].insert(w.offset, w.data.clone());
                    Message::Ack(Opcode::Write)
                }
                Message::Read(e) => Message::ReadData(
                    self.disks[r]
                        .get(&e.offset)
                        .cloned()
                        .unwrap_or_else(|| Bytes::from(vec![0; e.len_bytes as usize])),
                ),
                Message::Flush => Message::Ack(Opcode::Flush),
                Message::Unmap(e) => {
                    self.disks[r].remove(&e.offset);
                    Message::Ack(Opcode::Unmap)
                }
                Message::WriteZeroes(e) => {
                    self.disks[r].remove(&e.offset);
                    Message::Ack(Opcode::WriteZeroes)
                }
                other => panic!("unexpected {other:?}"),
            };
            let actions = self.ctl.on_reply(self.now, r, packet.reply(reply));
            self.apply(actions);
            if !self.up[r] {
                break;
            }
        }
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
}

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
    let actions = sim.ctl.on_reply(sim.now, bad, error);
    sim.apply(actions);
    assert_eq!(sim.ctl.replica_states()[bad], ReplicaState::Offline);
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
    let actions = sim.ctl.on_reply(sim.now, 0, stale);
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
        assert!(sim.links[1].is_empty(), "read sent to the degraded replica");
        sim.deliver_all();
    }
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
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Invariants under any interleaving: an acknowledged write is on at
    /// least `cf` replicas; a read returns the newest acknowledged data of
    /// its block (no write to it in flight); per-link io_seq order (checked
    /// in `apply`); healthy replicas hold every acknowledged write.
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
