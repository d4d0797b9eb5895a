//! Rule 7: reads a replica found bad are read elsewhere, answered with
//! good data or MEDIUM ERROR, and written back unless a write made that
//! moot; the replica stays healthy and its errors are counted.

use super::*;

/// The replicas a read is queued to.
fn read_goes_to(sim: &Sim) -> Vec<usize> {
    (0..sim.links.len())
        .filter(|r| {
            sim.links[*r]
                .iter()
                .any(|p| matches!(p.message, Message::Read(_)))
        })
        .collect()
}

/// Writes queued to replica `r`: (offset, first byte, length).
fn writes_to(sim: &Sim, r: usize) -> Vec<(u64, u8, usize)> {
    sim.links[r]
        .iter()
        .filter_map(|p| match &p.message {
            Message::Write(w) => Some((w.offset, w.data[0], w.data.len())),
            _ => None,
        })
        .collect()
}

/// Replica `r` handles only the first packet on its link.
fn deliver_first(sim: &mut Sim, r: usize) {
    sim.deliver_one(r);
}

fn block_of(fill: u8) -> Bytes {
    Bytes::from(vec![fill; BLOCK as usize])
}

/// Three healthy replicas, block 1 written with 0xAA everywhere.
fn three_with_block_1() -> Sim {
    let mut sim = Sim::new(3, 2);
    let w = sim.write(1, 0xAA);
    sim.deliver_all();
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
    sim
}

#[test]
fn a_block_one_replica_found_bad_is_read_from_another_and_written_back() {
    let mut sim = three_with_block_1();
    let tag = sim.read(1);
    let bad = read_goes_to(&sim)[0];
    sim.corrupt[bad].insert(BLOCK);
    sim.deliver(bad);
    // Not the replica's failure: healthy, counted, not answered yet.
    assert_eq!(sim.ctl.replica_states(), vec![ReplicaState::Healthy; 3]);
    assert_eq!(sim.ctl.checksum_errors(bad), 1);
    assert!(!sim.ctl.checksum_warning(bad, sim.now));
    assert_eq!(sim.result(tag), None);
    let other = read_goes_to(&sim);
    assert_eq!(other.len(), 1);
    assert_ne!(
        other[0], bad,
        "never read again from the replica that found it bad"
    );
    assert_eq!(
        sim.ctl.in_flight(),
        1,
        "a piece is not a request of the SCSI layer"
    );
    deliver_first(&mut sim, other[0]);
    assert_eq!(sim.result(tag), Some(&Ok(Completion::Data(block_of(0xAA)))));
    // The good copy goes back to every linked replica as an ordinary write.
    for r in 0..3 {
        assert_eq!(writes_to(&sim, r), vec![(BLOCK, 0xAA, 4096)], "replica {r}");
    }
    assert_eq!(sim.ctl.blocks_repaired(), 0, "counted once acknowledged");
    sim.deliver_all();
    assert_eq!(sim.ctl.blocks_repaired(), 1);
    assert!(sim.corrupt[bad].is_empty());
    assert_eq!(sim.ctl.in_flight(), 0);
    assert!(sim.results.keys().all(|t| *t != REPAIR_TAG));
    // Reads of it, wherever they go, are clean now: nothing more counted.
    for _ in 0..6 {
        let tag = sim.read(1);
        sim.deliver_all();
        assert_eq!(sim.result(tag), Some(&Ok(Completion::Data(block_of(0xAA)))));
    }
    assert_eq!(sim.ctl.checksum_errors(bad), 1);
    assert_eq!(sim.ctl.blocks_repaired(), 1);
}

#[test]
fn a_block_every_healthy_replica_found_bad_fails_the_read_never_with_data() {
    let mut sim = three_with_block_1();
    for r in 0..3 {
        sim.corrupt[r].insert(BLOCK);
    }
    let tag = sim.read(1);
    for _ in 0..3 {
        sim.deliver_all();
    }
    assert_eq!(
        sim.result(tag),
        Some(&Err(VolumeError::Unrecoverable { offset: BLOCK }))
    );
    assert_eq!(
        crate::server::block::map_error(VolumeError::Unrecoverable { offset: BLOCK }),
        crate::scsi::IoError::ReadError,
        "MEDIUM ERROR, UNRECOVERED READ ERROR"
    );
    assert_eq!(sim.ctl.replica_states(), vec![ReplicaState::Healthy; 3]);
    for r in 0..3 {
        assert_eq!(sim.ctl.checksum_errors(r), 1, "replica {r}");
        assert!(writes_to(&sim, r).is_empty(), "nothing to write back");
    }
    assert_eq!(sim.ctl.blocks_repaired(), 0);
    assert_eq!(sim.ctl.in_flight(), 0);
    // Writes go on, and a write of the block makes it readable again.
    let w = sim.write(1, 0xBB);
    sim.deliver_all();
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
    let tag = sim.read(1);
    sim.deliver_all();
    assert_eq!(sim.result(tag), Some(&Ok(Completion::Data(block_of(0xBB)))));
}

#[test]
fn replicas_that_are_not_healthy_are_never_asked_for_a_good_copy() {
    let mut sim = three_with_block_1();
    sim.disconnect(2);
    let w = sim.write(5, 5);
    sim.deliver_all();
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
    sim.connect(2);
    assert_eq!(sim.ctl.replica_states()[2], ReplicaState::Degraded);
    sim.corrupt[0].insert(BLOCK);
    sim.corrupt[1].insert(BLOCK);
    let tag = sim.read(1);
    for _ in 0..3 {
        sim.deliver(0);
        sim.deliver(1);
    }
    // The degraded replica may lack newer data: no read goes to it.
    assert_eq!(
        sim.result(tag),
        Some(&Err(VolumeError::Unrecoverable { offset: BLOCK }))
    );
    assert!(!sim.links[2]
        .iter()
        .any(|p| matches!(p.message, Message::Read(_))));
}

#[test]
fn each_bad_block_is_read_from_a_replica_that_holds_a_good_copy() {
    let mut sim = Sim::new(3, 2);
    // Four blocks, a fill each, written in one request.
    let data: Vec<u8> = (0..4u8)
        .flat_map(|b| vec![0x10 + b; BLOCK as usize])
        .collect();
    let data = Bytes::from(data);
    let w = sim.submit(Op::Write {
        offset: 0,
        data: data.clone(),
        fua: false,
    });
    sim.deliver_all();
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
    let tag = sim.submit(Op::Read {
        offset: 0,
        len_bytes: 4 * BLOCK as u32,
    });
    let first = read_goes_to(&sim)[0];
    let (second, third) = ((first + 1) % 3, (first + 2) % 3);
    // The first reader finds blocks 1 and 2 bad, the second block 2, the
    // third block 1: every block has a good copy somewhere, and whichever
    // replica the bad blocks are asked of next finds one of them bad too.
    sim.corrupt[first].extend([BLOCK, 2 * BLOCK]);
    sim.corrupt[second].insert(2 * BLOCK);
    sim.corrupt[third].insert(BLOCK);
    for _ in 0..4 {
        sim.deliver_all();
    }
    assert_eq!(sim.result(tag), Some(&Ok(Completion::Data(data.clone()))));
    assert_eq!(sim.ctl.replica_states(), vec![ReplicaState::Healthy; 3]);
    assert_eq!(sim.ctl.checksum_errors(first), 2);
    assert!(sim.ctl.checksum_errors(second) + sim.ctl.checksum_errors(third) >= 1);
    // Both bad blocks were written back, once each, to every replica.
    assert_eq!(sim.ctl.blocks_repaired(), 2);
    assert!(
        sim.corrupt.iter().all(BTreeSet::is_empty),
        "{:?}",
        sim.corrupt
    );
    for r in 0..3 {
        for b in 0..4u64 {
            assert_eq!(
                sim.disks[r].get(&(b * BLOCK)).map(|d| d[0]),
                Some(0x10 + b as u8),
                "replica {r} block {b}"
            );
        }
    }
    assert_eq!(sim.ctl.in_flight(), 0);
}

#[test]
fn a_read_of_part_of_a_bad_block_gets_its_bytes_and_the_whole_block_is_written_back() {
    let mut sim = Sim::new(2, 1);
    let content: Vec<u8> = (0..BLOCK).map(|i| (i % 251) as u8).collect();
    let content = Bytes::from(content);
    let w = sim.submit(Op::Write {
        offset: BLOCK,
        data: content.clone(),
        fua: false,
    });
    sim.deliver_all();
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
    let tag = sim.submit(Op::Read {
        offset: BLOCK + 512,
        len_bytes: 1024,
    });
    let bad = read_goes_to(&sim)[0];
    sim.corrupt[bad].insert(BLOCK);
    sim.deliver(bad);
    let other = 1 - bad;
    assert!(matches!(
        sim.links[other].front().map(|p| &p.message),
        Some(Message::Read(Extent { offset, len_bytes: 4096 })) if *offset == BLOCK
    ));
    sim.deliver_all();
    assert_eq!(
        sim.result(tag),
        Some(&Ok(Completion::Data(content.slice(512..1536))))
    );
    sim.deliver_all();
    assert_eq!(sim.ctl.blocks_repaired(), 1);
    assert!(sim.corrupt[bad].is_empty());
    assert_eq!(sim.disks[bad].get(&BLOCK), Some(&content));
}

#[test]
fn a_write_dispatched_after_the_read_makes_its_write_back_moot() {
    let mut sim = three_with_block_1();
    let tag = sim.read(1);
    let bad = read_goes_to(&sim)[0];
    sim.corrupt[bad].insert(BLOCK);
    // A write of the block comes after the read, before its answer.
    let w = sim.write(1, 0xBB);
    // The bad replica answers the read only (the write waits behind it).
    let packet = sim.links[bad].pop_front().unwrap();
    let reply = sim.read_reply(
        bad,
        match packet.message {
            Message::Read(e) => e,
            ref other => panic!("{other:?}"),
        },
    );
    let actions = sim
        .ctl
        .on_reply(sim.now, bad, sim.gens[bad], packet.reply(reply));
    sim.apply(actions);
    sim.deliver_all();
    assert!(matches!(sim.result(tag), Some(Ok(Completion::Data(_)))));
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
    // No write-back: the write replaced the block.
    for r in 0..3 {
        assert!(writes_to(&sim, r).is_empty());
        assert_eq!(sim.disks[r].get(&BLOCK), Some(&block_of(0xBB)));
    }
    assert_eq!(sim.ctl.blocks_repaired(), 0);
    assert!(sim.corrupt[bad].is_empty(), "the write made it good");
}

#[test]
fn a_write_held_behind_a_snapshot_is_never_overwritten_by_an_older_good_copy() {
    let mut sim = three_with_block_1();
    let snap = sim.submit(snapshot("s1"));
    // Submitted before the read, held behind the snapshot: it is
    // dispatched after the read's pieces answered, and a write-back of
    // the old copy would land after it.
    let w = sim.write(1, 0xBB);
    let tag = sim.read(1);
    let bad = read_goes_to(&sim)[0];
    sim.corrupt[bad].insert(BLOCK);
    for _ in 0..3 {
        sim.deliver_all();
    }
    assert_eq!(sim.result(snap), Some(&Ok(Completion::Done)));
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
    assert!(matches!(sim.result(tag), Some(Ok(Completion::Data(_)))));
    for r in 0..3 {
        assert_eq!(
            sim.disks[r].get(&BLOCK),
            Some(&block_of(0xBB)),
            "replica {r}: the acknowledged write was lost"
        );
    }
    assert_eq!(sim.ctl.blocks_repaired(), 0);
    let again = sim.read(1);
    sim.deliver_all();
    assert_eq!(
        sim.result(again),
        Some(&Ok(Completion::Data(block_of(0xBB))))
    );
}

#[test]
fn a_write_still_pending_somewhere_makes_the_write_back_moot() {
    let mut sim = three_with_block_1();
    // A write of the block completes at quorum; the third replica has not
    // answered it yet (and may never take it).
    let w = sim.write(1, 0xBB);
    sim.deliver(0);
    sim.deliver(1);
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
    let tag = sim.read(1);
    let bad = read_goes_to(&sim)[0];
    assert_ne!(
        bad, 2,
        "a replica that owes a completed write serves no read of it"
    );
    sim.corrupt[bad].insert(BLOCK);
    sim.deliver(bad);
    let other = read_goes_to(&sim)[0];
    sim.deliver(other);
    assert_eq!(sim.result(tag), Some(&Ok(Completion::Data(block_of(0xBB)))));
    // Replica 2 still owes the write: no write-back while it is pending.
    for r in 0..3 {
        assert!(writes_to(&sim, r).iter().all(|(_, fill, _)| *fill == 0xBB));
    }
    assert!(writes_to(&sim, 0).is_empty() && writes_to(&sim, 1).is_empty());
    sim.deliver_all();
    assert_eq!(sim.ctl.blocks_repaired(), 0);
}

#[test]
fn a_piece_whose_replica_fails_is_read_from_the_next_and_never_from_a_bad_one() {
    let mut sim = three_with_block_1();
    let tag = sim.read(1);
    let bad = read_goes_to(&sim)[0];
    sim.corrupt[bad].insert(BLOCK);
    sim.deliver(bad);
    let second = read_goes_to(&sim)[0];
    // That one fails the piece with an IO error: it leaves the healthy set
    // (rule 6), and the piece goes to the last healthy one.
    let packet = sim.links[second].pop_front().unwrap();
    let error = packet.reply(Message::Error(cstor_proto::ErrorReply::new(
        Opcode::Read.to_u16(),
        Status::IoError,
        "EIO",
    )));
    let actions = sim.ctl.on_reply(sim.now, second, sim.gens[second], error);
    sim.apply(actions);
    assert_eq!(sim.ctl.replica_states()[second], ReplicaState::Failed);
    assert_eq!(sim.ctl.replica_states()[bad], ReplicaState::Healthy);
    let third = read_goes_to(&sim);
    assert_eq!(third.len(), 1);
    assert!(third[0] != bad && third[0] != second);
    sim.deliver_all();
    assert_eq!(sim.result(tag), Some(&Ok(Completion::Data(block_of(0xAA)))));
    sim.deliver_all();
    assert_eq!(sim.ctl.blocks_repaired(), 1);
}

#[test]
fn without_any_healthy_replica_a_piece_waits_the_grace_period_then_fails() {
    let mut sim = Sim::new(2, 1);
    let w = sim.write(1, 0xAA);
    sim.deliver_all();
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
    let tag = sim.read(1);
    let bad = read_goes_to(&sim)[0];
    sim.corrupt[bad].insert(BLOCK);
    let other = 1 - bad;
    sim.disconnect(other);
    sim.deliver(bad);
    // The only healthy replica found it bad: MEDIUM ERROR at once.
    assert_eq!(
        sim.result(tag),
        Some(&Err(VolumeError::Unrecoverable { offset: BLOCK }))
    );
    // A piece waiting with nobody healthy fails as an unavailable read.
    sim.connect(other);
    let tag = sim.read(1);
    let bad = read_goes_to(&sim)[0];
    sim.corrupt[bad].insert(BLOCK);
    sim.corrupt[1 - bad].remove(&BLOCK);
    sim.deliver(bad);
    let piece_to = read_goes_to(&sim)[0];
    sim.disconnect(bad);
    sim.disconnect(piece_to);
    sim.advance(Duration::from_secs(19));
    assert_eq!(sim.result(tag), None);
    sim.advance(Duration::from_secs(1));
    assert_eq!(sim.result(tag), Some(&Err(VolumeError::Unavailable)));
    assert_eq!(sim.ctl.in_flight(), 0);
}

#[test]
fn a_replica_past_the_bound_within_the_window_is_flagged_and_stays_healthy() {
    let mut sim = Sim::new(3, 2);
    let n = CHECKSUM_WARN_BLOCKS + 1;
    let data = Bytes::from(vec![7u8; (n * BLOCK) as usize]);
    let w = sim.submit(Op::Write {
        offset: 0,
        data: data.clone(),
        fua: false,
    });
    sim.deliver_all();
    assert_eq!(sim.result(w), Some(&Ok(Completion::Done)));
    let read = |sim: &mut Sim, blocks: u64| {
        sim.submit(Op::Read {
            offset: 0,
            len_bytes: (blocks * BLOCK) as u32,
        })
    };
    // Exactly the bound: counted, not flagged.
    let tag = read(&mut sim, n - 1);
    let bad = read_goes_to(&sim)[0];
    sim.corrupt[bad].extend((0..n - 1).map(|b| b * BLOCK));
    sim.deliver_all();
    sim.deliver_all();
    assert!(matches!(sim.result(tag), Some(Ok(_))));
    assert_eq!(sim.ctl.checksum_errors(bad), n - 1);
    assert!(!sim.ctl.checksum_warning(bad, sim.now));
    // One more bad block within the window: flagged.
    sim.advance(CHECKSUM_ERROR_WINDOW / 2);
    sim.corrupt[bad].insert((n - 1) * BLOCK);
    let mut tries = 0;
    while sim.ctl.checksum_errors(bad) < n && tries < 6 {
        let tag = read(&mut sim, n);
        sim.deliver_all();
        sim.deliver_all();
        assert_eq!(sim.result(tag), Some(&Ok(Completion::Data(data.clone()))));
        tries += 1;
    }
    assert_eq!(sim.ctl.checksum_errors(bad), n);
    assert!(sim.ctl.checksum_warning(bad, sim.now));
    assert_eq!(sim.ctl.recent_checksum_errors(bad, sim.now), n);
    assert_eq!(sim.ctl.replica_states(), vec![ReplicaState::Healthy; 3]);
    // The first ones leave the window: no longer flagged; the total stays.
    sim.advance(CHECKSUM_ERROR_WINDOW / 2);
    assert!(!sim.ctl.checksum_warning(bad, sim.now));
    assert_eq!(sim.ctl.recent_checksum_errors(bad, sim.now), 1);
    assert_eq!(sim.ctl.checksum_errors(bad), n);
}

#[test]
fn a_fenced_target_fails_a_read_being_repaired_once_and_nothing_of_its_own() {
    let mut sim = three_with_block_1();
    let tag = sim.read(1);
    let bad = read_goes_to(&sim)[0];
    sim.corrupt[bad].insert(BLOCK);
    sim.deliver(bad);
    let actions = sim.ctl.on_fenced(sim.now);
    sim.apply(actions);
    assert_eq!(sim.result(tag), Some(&Err(VolumeError::Fenced)));
    assert!(!sim.results.contains_key(&REPAIR_TAG));
}

#[derive(Debug, Clone)]
enum RepairStep {
    Write(u8, u8),
    Read(u8),
    Deliver(u8),
    /// A block goes bad on a replica (only where no other copy is bad).
    Rot(u8, u8),
}

fn repair_step() -> impl Strategy<Value = RepairStep> {
    prop_oneof![
        3 => (0u8..6, 0u8..0xE0).prop_map(|(b, f)| RepairStep::Write(b, f)),
        3 => (0u8..6).prop_map(RepairStep::Read),
        6 => (0u8..3).prop_map(RepairStep::Deliver),
        2 => (0u8..3, 0u8..6).prop_map(|(r, b)| RepairStep::Rot(r, b)),
    ]
}

const POISON: u8 = 0xEE;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Blocks rotting on one replica at a time, under any interleaving of
    /// writes, reads and deliveries: every replica stays healthy, every
    /// read answers data (never the rotten bytes, never MEDIUM ERROR, the
    /// newest acknowledged data when no write to it is in flight), and
    /// once every block was read from every replica nothing rotten is left
    /// and the replicas agree.
    #[test]
    fn blocks_rotting_on_one_replica_are_always_read_good_and_repaired(
        steps in prop::collection::vec(repair_step(), 1..100)
    ) {
        let mut sim = Sim::new(3, 2);
        let mut writes: BTreeMap<u64, Vec<(Tag, u8)>> = BTreeMap::new();
        // (tag, block, writes to it before the read, all of them answered)
        let mut reads: Vec<(Tag, u64, usize, bool)> = Vec::new();
        for step in steps {
            match step {
                RepairStep::Write(b, fill) => {
                    let tag = sim.write(u64::from(b), fill);
                    writes.entry(u64::from(b)).or_default().push((tag, fill));
                }
                RepairStep::Read(b) => {
                    let history = writes.get(&u64::from(b)).cloned().unwrap_or_default();
                    let quiet = history.iter().all(|(t, _)| sim.result(*t).is_some());
                    let tag = sim.read(u64::from(b));
                    reads.push((tag, u64::from(b), history.len(), quiet));
                }
                RepairStep::Deliver(r) => sim.deliver(usize::from(r)),
                RepairStep::Rot(r, b) => {
                    let at = u64::from(b) * BLOCK;
                    if sim.corrupt.iter().all(|c| !c.contains(&at)) {
                        let r = usize::from(r);
                        sim.corrupt[r].insert(at);
                        sim.disks[r].insert(at, Bytes::from(vec![POISON; BLOCK as usize]));
                    }
                }
            }
            prop_assert_eq!(sim.ctl.replica_states(), vec![ReplicaState::Healthy; 3]);
        }
        // Every block read from every replica (three reads in a row go to
        // the three, round-robin, unless a piece found the bad one first):
        // what rotted is found and written back.
        for _ in 0..3 {
            sim.deliver_all();
        }
        for b in 0..6 {
            for _ in 0..3 {
                let tag = sim.read(b);
                reads.push((tag, b, 0, false));
                for _ in 0..3 {
                    sim.deliver_all();
                }
            }
        }
        for _ in 0..3 {
            sim.deliver_all();
        }
        for (tag, block, before, quiet) in reads {
            let result = sim.result(tag);
            let Some(Ok(Completion::Data(data))) = result else {
                return Err(TestCaseError::fail(format!("read {tag}: {result:?}")));
            };
            prop_assert!(data.iter().all(|b| *b != POISON), "rotten bytes served");
            if quiet {
                // The newest write before it, or one submitted while it
                // was in flight.
                let history = writes.get(&block).cloned().unwrap_or_default();
                let mut allowed: Vec<u8> = history[before..].iter().map(|(_, f)| *f).collect();
                allowed.push(before.checked_sub(1).map_or(0, |i| history[i].1));
                prop_assert!(allowed.contains(&data[0]), "read {}: {} not in {:?}", tag, data[0], allowed);
            }
        }
        prop_assert!(sim.corrupt.iter().all(BTreeSet::is_empty), "left rotten: {:?}", sim.corrupt);
        for b in 0..6u64 {
            let at = b * BLOCK;
            let copies: Vec<Option<u8>> = (0..3).map(|r| sim.disks[r].get(&at).map(|d| d[0])).collect();
            prop_assert!(copies.windows(2).all(|w| w[0] == w[1]), "block {}: {:?}", b, copies);
        }
        prop_assert_eq!(sim.ctl.in_flight(), 0);
    }
}
