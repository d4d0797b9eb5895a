//! Model-based test: random READ / WRITE / WRITE SAME / UNMAP / COMPARE AND
//! WRITE sequences run through the logical unit and an in-memory volume
//! must agree, status and data, with a plain byte-array model of the disk.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod scsi_support;

use cstor_target::scsi::{opcodes, Asc, SenseKey, Status};
use proptest::prelude::*;
use scsi_support::*;

const BLOCKS: u64 = 48;

#[derive(Debug, Clone)]
enum Op {
    Read {
        lba: u64,
        blocks: u32,
    },
    Write {
        lba: u64,
        blocks: u32,
        fill: u8,
        big: bool,
    },
    WriteSame {
        lba: u64,
        blocks: u32,
        fill: u8,
        unmap: bool,
    },
    Unmap {
        lba: u64,
        blocks: u32,
    },
    CompareAndWrite {
        lba: u64,
        blocks: u8,
        flip: Option<usize>,
        fill: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    // LBAs reach a little past the end so that range errors are exercised.
    let lba = 0..BLOCKS + 4;
    prop_oneof![
        (lba.clone(), 0u32..9).prop_map(|(lba, blocks)| Op::Read { lba, blocks }),
        (lba.clone(), 0u32..9, any::<u8>(), any::<bool>()).prop_map(|(lba, blocks, fill, big)| {
            Op::Write {
                lba,
                blocks,
                fill,
                big,
            }
        }),
        (
            lba.clone(),
            1u32..9,
            prop_oneof![Just(0u8), any::<u8>()],
            any::<bool>()
        )
            .prop_map(|(lba, blocks, fill, unmap)| Op::WriteSame {
                lba,
                blocks,
                fill,
                unmap
            }),
        (lba.clone(), 0u32..9).prop_map(|(lba, blocks)| Op::Unmap { lba, blocks }),
        (
            lba,
            0u8..4,
            proptest::option::of(0usize..4 * BS),
            any::<u8>()
        )
            .prop_map(|(lba, blocks, flip, fill)| Op::CompareAndWrite {
                lba,
                blocks,
                flip,
                fill
            }),
    ]
}

fn in_range(lba: u64, blocks: u64) -> bool {
    lba + blocks <= BLOCKS
}

fn span(lba: u64, blocks: u64) -> std::ops::Range<usize> {
    lba as usize * BS..(lba + blocks) as usize * BS
}

fn expect_out_of_range(r: &cstor_target::scsi::Response) {
    let s = sense_of(r);
    assert_eq!(
        (s.key, s.asc),
        (SenseKey::IllegalRequest, Asc::LBA_OUT_OF_RANGE)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn logical_unit_matches_a_byte_array_model(ops in proptest::collection::vec(op(), 1..40)) {
        let (mut lu, mut vol) = ready_unit(BLOCKS);
        let n = nexus(1);
        let mut model = vec![0u8; BLOCKS as usize * BS];
        for op in ops {
            match op {
                Op::Read { lba, blocks } => {
                    let r = run(&mut lu, &mut vol, &n, &rw16(0x88, 0, lba, blocks), &[]);
                    if in_range(lba, u64::from(blocks)) {
                        assert_good(&r);
                        prop_assert_eq!(&r.data_in[..], &model[span(lba, u64::from(blocks))]);
                    } else {
                        expect_out_of_range(&r);
                    }
                }
                Op::Write { lba, blocks, fill, big } => {
                    let cdb = if big {
                        rw16(0x8a, 0, lba, blocks)
                    } else {
                        write10(lba as u32, blocks as u16)
                    };
                    let data = vec![fill; blocks as usize * BS];
                    let r = run(&mut lu, &mut vol, &n, &cdb, &data);
                    if in_range(lba, u64::from(blocks)) {
                        assert_good(&r);
                        model[span(lba, u64::from(blocks))].fill(fill);
                    } else {
                        expect_out_of_range(&r);
                    }
                }
                Op::WriteSame { lba, blocks, fill, unmap } => {
                    let flags = if unmap { 0x08 } else { 0 };
                    let r = run(&mut lu, &mut vol, &n, &rw16(0x93, flags, lba, blocks), &[fill; BS]);
                    if in_range(lba, u64::from(blocks)) {
                        assert_good(&r);
                        model[span(lba, u64::from(blocks))].fill(fill);
                    } else {
                        expect_out_of_range(&r);
                    }
                }
                Op::Unmap { lba, blocks } => {
                    let list = unmap_list(&[(lba, blocks)]);
                    let r = run(&mut lu, &mut vol, &n, &unmap_cdb(list.len() as u16), &list);
                    if in_range(lba, u64::from(blocks)) {
                        assert_good(&r);
                        model[span(lba, u64::from(blocks))].fill(0);
                    } else {
                        expect_out_of_range(&r);
                    }
                }
                Op::CompareAndWrite { lba, blocks, flip, fill } => {
                    let len = usize::from(blocks) * BS;
                    let range_ok = in_range(lba, u64::from(blocks));
                    let mut verify = if range_ok {
                        model[span(lba, u64::from(blocks))].to_vec()
                    } else {
                        vec![0; len]
                    };
                    let flip = flip.filter(|&f| f < len);
                    if let Some(at) = flip {
                        verify[at] ^= 0x5a;
                    }
                    let mut data = verify;
                    data.extend(vec![fill; len]);
                    let r = run(&mut lu, &mut vol, &n, &compare_and_write(lba, blocks), &data);
                    if !range_ok {
                        expect_out_of_range(&r);
                    } else if let Some(at) = flip {
                        let s = sense_of(&r);
                        prop_assert_eq!(s.key, SenseKey::Miscompare);
                        prop_assert_eq!(s.information, Some(at as u64));
                    } else {
                        prop_assert_eq!(r.status, Status::Good);
                        model[span(lba, u64::from(blocks))].fill(fill);
                    }
                }
            }
            prop_assert!(vol.data == model, "volume diverged from model");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any CDB the table allows, with the data-out it asks for, gets an
    /// answer (never a panic) whose data-in respects `data_in_len`.
    #[test]
    fn any_allowed_cdb_is_answered_within_its_data_in_bound(
        pick in 0usize..opcodes::SUPPORTED.len(),
        raw in proptest::collection::vec(any::<u8>(), 16),
        small_numbers in any::<bool>(),
    ) {
        let row = &opcodes::SUPPORTED[pick];
        let mut cdb: Vec<u8> = row.usage.iter().zip(&raw).map(|(m, b)| m & b).collect();
        if small_numbers {
            // Keep LBAs and lengths small so that medium commands get to IO.
            for b in cdb.iter_mut().skip(2).take(row.usage.len().saturating_sub(4)) {
                *b &= 0x03;
            }
        }
        cdb[0] = row.opcode;
        if let Some(sa) = row.service_action {
            cdb[1] = (cdb[1] & !0x1f) | sa;
        }
        let (mut lu, mut vol) = ready_unit(BLOCKS);
        let n = nexus(1);
        let data = vec![0u8; lu.data_out_len(&cdb) as usize];
        let bound = lu.data_in_len(&cdb);
        let r = run(&mut lu, &mut vol, &n, &cdb, &data);
        prop_assert!(r.data_in.len() as u64 <= bound, "{} returned {} > {}", row.name, r.data_in.len(), bound);
        prop_assert_eq!(r.status == Status::CheckCondition, r.sense.is_some());
    }
}
