//! Scenario tests of the SCSI logical unit through its public API, with an
//! in-memory volume performing the block requests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod scsi_support;

use bytes::Bytes;
use cstor_target::scsi::{
    Asc, BlockRequest, Completed, IoError, LogicalUnit, Outcome, SenseKey, Status, VolumeState,
};
use scsi_support::*;

#[test]
fn power_on_unit_attention_is_reported_once_and_inquiry_is_exempt() {
    let mut lu = LogicalUnit::new(config(100)).unwrap();
    let mut vol = MemVolume::new(100);
    let n = nexus(1);
    let inq = [0x12, 0, 0, 0, 96, 0];
    assert_good(&run(&mut lu, &mut vol, &n, &inq, &[]));
    let r = run(&mut lu, &mut vol, &n, &tur(), &[]);
    let s = sense_of(&r);
    assert_eq!(
        (s.key, s.asc),
        (SenseKey::UnitAttention, Asc::POWER_ON_RESET)
    );
    assert_good(&run(&mut lu, &mut vol, &n, &tur(), &[]));
}

#[test]
fn request_sense_returns_and_clears_the_unit_attention() {
    let mut lu = LogicalUnit::new(config(100)).unwrap();
    let mut vol = MemVolume::new(100);
    let n = nexus(1);
    let r = run(&mut lu, &mut vol, &n, &[0x03, 0, 0, 0, 252, 0], &[]);
    assert_good(&r);
    let s = cstor_target::scsi::Sense::decode(&r.data_in).unwrap();
    assert_eq!(s.asc, Asc::POWER_ON_RESET);
    let r = run(&mut lu, &mut vol, &n, &[0x03, 0, 0, 0, 252, 0], &[]);
    let s = cstor_target::scsi::Sense::decode(&r.data_in).unwrap();
    assert_eq!(
        (s.key, s.asc),
        (SenseKey::NoSense, Asc::NO_ADDITIONAL_SENSE)
    );
    assert_good(&run(&mut lu, &mut vol, &n, &tur(), &[]));
}

#[test]
fn write_then_read_round_trips_through_the_volume() {
    let (mut lu, mut vol) = ready_unit(100);
    let n = nexus(1);
    let data: Vec<u8> = (0..2 * BS).map(|i| i as u8).collect();
    assert_good(&run(&mut lu, &mut vol, &n, &write10(10, 2), &data));
    let r = run(&mut lu, &mut vol, &n, &rw16(0x88, 0, 10, 2), &[]);
    assert_good(&r);
    assert_eq!(&r.data_in[..], &data[..]);
    // WCE is on by default: a plain write is not forced durable.
    assert!(matches!(
        vol.log[0],
        BlockRequest::Write {
            lba: 10,
            fua: false,
            ..
        }
    ));
}

#[test]
fn fua_write_and_sync_cache_reach_the_volume_as_durability_requests() {
    let (mut lu, mut vol) = ready_unit(100);
    let n = nexus(1);
    assert_good(&run(
        &mut lu,
        &mut vol,
        &n,
        &rw10(0x2a, 0x08, 0, 1),
        &[1; BS],
    ));
    assert!(matches!(vol.log[0], BlockRequest::Write { fua: true, .. }));
    assert_good(&run(&mut lu, &mut vol, &n, &rw10(0x35, 0, 0, 0), &[]));
    assert_eq!(vol.log[1], BlockRequest::Flush);
    let r = run(&mut lu, &mut vol, &n, &rw10(0x35, 0, 99, 2), &[]);
    assert_eq!(sense_of(&r).asc, Asc::LBA_OUT_OF_RANGE);
}

#[test]
fn short_data_out_writes_only_the_whole_blocks_received() {
    let (mut lu, mut vol) = ready_unit(100);
    let n = nexus(1);
    assert_good(&run(&mut lu, &mut vol, &n, &write10(0, 2), &[b'a'; 2 * BS]));
    assert_good(&run(&mut lu, &mut vol, &n, &write10(0, 2), &[b'b'; BS]));
    assert!(vol.data[..BS].iter().all(|&b| b == b'b'));
    assert!(vol.data[BS..2 * BS].iter().all(|&b| b == b'a'));
    // No whole block at all: nothing written, still GOOD.
    let before = vol.log.len();
    assert_good(&run(&mut lu, &mut vol, &n, &write10(0, 1), &[b'c'; 200]));
    assert_eq!(vol.log.len(), before);
}

#[test]
fn out_of_range_and_protection_fields_are_refused_before_io() {
    let (mut lu, mut vol) = ready_unit(100);
    let n = nexus(1);
    let r = run(&mut lu, &mut vol, &n, &read10(99, 2), &[]);
    assert_eq!(sense_of(&r).asc, Asc::LBA_OUT_OF_RANGE);
    let r = run(&mut lu, &mut vol, &n, &rw10(0x2a, 0x20, 0, 1), &[0; BS]);
    let s = sense_of(&r);
    assert_eq!(
        (s.key, s.asc),
        (SenseKey::IllegalRequest, Asc::INVALID_FIELD_IN_CDB)
    );
    let r = run(&mut lu, &mut vol, &n, &[0xc7, 0, 0, 0, 0, 0], &[]);
    assert_eq!(sense_of(&r).asc, Asc::INVALID_COMMAND_OPERATION_CODE);
    assert!(vol.log.is_empty());
}

#[test]
fn unmap_deallocates_and_reads_back_zeros_with_lba_status() {
    let (mut lu, mut vol) = ready_unit(64);
    let n = nexus(1);
    assert_good(&run(
        &mut lu,
        &mut vol,
        &n,
        &write10(0, 16),
        &[0xff; 16 * BS],
    ));
    let list = unmap_list(&[(4, 4), (12, 0)]);
    assert_good(&run(
        &mut lu,
        &mut vol,
        &n,
        &unmap_cdb(list.len() as u16),
        &list,
    ));
    let r = run(&mut lu, &mut vol, &n, &read10(4, 4), &[]);
    assert!(r.data_in.iter().all(|&b| b == 0));
    // GET LBA STATUS from LBA 0: mapped 0..4, deallocated 4..8, mapped 8..16, ...
    let mut cdb = rw16(0x9e, 0x12, 0, 0);
    cdb[10..14].copy_from_slice(&1024u32.to_be_bytes());
    let r = run(&mut lu, &mut vol, &n, &cdb, &[]);
    assert_good(&r);
    let d = &r.data_in;
    let desc = |i: usize| {
        let at = 8 + 16 * i;
        (
            u64::from_be_bytes(d[at..at + 8].try_into().unwrap()),
            u32::from_be_bytes(d[at + 8..at + 12].try_into().unwrap()),
            d[at + 12] & 0x0f,
        )
    };
    assert_eq!(desc(0), (0, 4, 0));
    assert_eq!(desc(1), (4, 4, 1));
    assert_eq!(desc(2), (8, 8, 0));
    let r = run(&mut lu, &mut vol, &n, &rw16(0x9e, 0x12, 64, 1024), &[]);
    assert_eq!(sense_of(&r).asc, Asc::LBA_OUT_OF_RANGE);
}

#[test]
fn unmap_parameter_list_errors_are_illegal_requests() {
    let (mut lu, mut vol) = ready_unit(64);
    let n = nexus(1);
    let list = unmap_list(&[(60, 8)]);
    let r = run(&mut lu, &mut vol, &n, &unmap_cdb(list.len() as u16), &list);
    assert_eq!(sense_of(&r).asc, Asc::LBA_OUT_OF_RANGE);
    let r = run(&mut lu, &mut vol, &n, &unmap_cdb(6), &[0; 6]);
    assert_eq!(sense_of(&r).asc, Asc::PARAMETER_LIST_LENGTH_ERROR);
    assert!(vol.log.is_empty());
}

#[test]
fn write_same_with_unmap_and_zero_block_unmaps_otherwise_writes() {
    let (mut lu, mut vol) = ready_unit(64);
    let n = nexus(1);
    let ws10 = |flags, lba, blocks| rw10(0x41, flags, lba, blocks);
    assert_good(&run(&mut lu, &mut vol, &n, &ws10(0, 0, 8), &[0xab; BS]));
    assert!(vol.data[..8 * BS].iter().all(|&b| b == 0xab));
    assert_good(&run(&mut lu, &mut vol, &n, &ws10(0x08, 2, 4), &[0; BS]));
    assert!(matches!(vol.log[1], BlockRequest::Unmap { .. }));
    assert!(vol.data[2 * BS..6 * BS].iter().all(|&b| b == 0));
    assert_good(&run(&mut lu, &mut vol, &n, &ws10(0x08, 2, 1), &[1; BS]));
    assert!(matches!(vol.log[2], BlockRequest::WriteSame { .. }));
    // WRITE SAME(16) with NDOB: no data-out, zeros, unmapped.
    let c = rw16(0x93, 0x09, 0, 8);
    assert_eq!(lu.data_out_len(&c), 0);
    assert_good(&run(&mut lu, &mut vol, &n, &c, &[]));
    assert!(vol.data[..8 * BS].iter().all(|&b| b == 0));
    let r = run(&mut lu, &mut vol, &n, &ws10(0x10, 0, 1), &[0; BS]);
    assert_eq!(sense_of(&r).asc, Asc::INVALID_FIELD_IN_CDB); // ANCHOR
}

#[test]
fn compare_and_write_writes_on_match_and_reports_miscompare_offset() {
    let (mut lu, mut vol) = ready_unit(64);
    let n = nexus(1);
    let c = compare_and_write(3, 1);
    assert_eq!(lu.data_out_len(&c), 2 * BS as u64);
    let mut data = vec![0u8; BS];
    data.extend(vec![7u8; BS]);
    assert_good(&run(&mut lu, &mut vol, &n, &c, &data));
    assert!(vol.data[3 * BS..4 * BS].iter().all(|&b| b == 7));
    // Now the verify half (zeros) differs from the medium (sevens) at 0...
    let r = run(&mut lu, &mut vol, &n, &c, &data);
    let s = sense_of(&r);
    assert_eq!(
        (s.key, s.asc, s.information),
        (SenseKey::Miscompare, Asc::MISCOMPARE_DURING_VERIFY, Some(0))
    );
    // ...and at byte 100 when only that byte differs; nothing is written.
    let mut data = vec![7u8; BS];
    data[100] = 8;
    data.extend(vec![9u8; BS]);
    let s = sense_of(&run(&mut lu, &mut vol, &n, &c, &data));
    assert_eq!(s.information, Some(100));
    assert!(vol.data[3 * BS..4 * BS].iter().all(|&b| b == 7));
}

#[test]
fn verify_with_bytchk_compares_and_without_checks_range_only() {
    let (mut lu, mut vol) = ready_unit(64);
    let n = nexus(1);
    assert_good(&run(&mut lu, &mut vol, &n, &write10(0, 2), &[5; 2 * BS]));
    assert_good(&run(&mut lu, &mut vol, &n, &rw10(0x2f, 0, 0, 2), &[]));
    assert_good(&run(
        &mut lu,
        &mut vol,
        &n,
        &rw10(0x2f, 0x02, 0, 2),
        &[5; 2 * BS],
    ));
    let mut other = vec![5u8; 2 * BS];
    other[BS + 3] = 6;
    let s = sense_of(&run(&mut lu, &mut vol, &n, &rw10(0x2f, 0x02, 0, 2), &other));
    assert_eq!(
        (s.key, s.information),
        (SenseKey::Miscompare, Some(BS as u64 + 3))
    );
    let s = sense_of(&run(&mut lu, &mut vol, &n, &rw10(0x2f, 0, 63, 2), &[]));
    assert_eq!(s.asc, Asc::LBA_OUT_OF_RANGE);
}

#[test]
fn read_only_volume_refuses_writes_but_serves_reads() {
    let (mut lu, mut vol) = ready_unit(64);
    let n = nexus(1);
    lu.follow_volume(VolumeState {
        blocks: 64,
        read_only: true,
    });
    for (cdb, data) in [
        (write10(0, 1), vec![0u8; BS]),
        (rw10(0x41, 0x08, 0, 1), vec![0u8; BS]),
        (compare_and_write(0, 1), vec![0u8; 2 * BS]),
    ] {
        let s = sense_of(&run(&mut lu, &mut vol, &n, &cdb, &data));
        assert_eq!(
            (s.key, s.asc),
            (SenseKey::DataProtect, Asc::WRITE_PROTECTED)
        );
    }
    assert_good(&run(&mut lu, &mut vol, &n, &read10(0, 1), &[]));
    let r = run(&mut lu, &mut vol, &n, &[0x1a, 0, 0x3f, 0, 255, 0], &[]);
    assert_eq!(r.data_in[2] & 0x80, 0x80, "MODE SENSE shows WP");
    lu.follow_volume(VolumeState {
        blocks: 64,
        read_only: false,
    });
    assert_good(&run(&mut lu, &mut vol, &n, &write10(0, 1), &[0; BS]));
}

#[test]
fn volume_errors_map_to_their_sense_keys() {
    let (mut lu, mut vol) = ready_unit(64);
    let n = nexus(1);
    let cases = [
        (
            IoError::ReadError,
            SenseKey::MediumError,
            Asc::UNRECOVERED_READ_ERROR,
        ),
        (
            IoError::WriteProtected,
            SenseKey::DataProtect,
            Asc::WRITE_PROTECTED,
        ),
        (IoError::NotReady, SenseKey::NotReady, Asc::NOT_READY),
        (
            IoError::Internal,
            SenseKey::HardwareError,
            Asc::INTERNAL_TARGET_FAILURE,
        ),
    ];
    for (error, key, asc) in cases {
        vol.fail_with = Some(error);
        let s = sense_of(&run(&mut lu, &mut vol, &n, &read10(0, 1), &[]));
        assert_eq!((s.key, s.asc), (key, asc), "{error:?}");
    }
}

#[test]
fn a_read_answer_of_the_wrong_size_is_an_internal_error_not_data() {
    let (mut lu, _vol) = ready_unit(64);
    let n = nexus(1);
    let Outcome::Io(pending) = lu.execute(&n, &read10(0, 2), Bytes::new()) else {
        panic!("read should need IO");
    };
    let r = lu.complete(
        pending,
        Ok(cstor_target::scsi::IoData::Read(Bytes::from(vec![0; BS]))),
    );
    let Completed::Respond(r) = r else {
        panic!("{r:?}");
    };
    assert_eq!(sense_of(&r).key, SenseKey::HardwareError);
}

#[test]
fn grow_raises_capacity_changed_and_read_capacity_follows() {
    let (mut lu, mut vol) = ready_unit(64);
    let n = nexus(1);
    lu.grow(128).unwrap();
    assert!(lu.grow(100).is_err());
    let s = sense_of(&run(&mut lu, &mut vol, &n, &read10(0, 1), &[]));
    assert_eq!(s.asc, Asc::CAPACITY_DATA_HAS_CHANGED);
    let r = run(
        &mut lu,
        &mut vol,
        &n,
        &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        &[],
    );
    assert_eq!(&r.data_in[..], &[0, 0, 0, 127, 0, 0, 2, 0]);
    let mut rc16 = rw16(0x9e, 0x10, 0, 32);
    rc16[2..10].fill(0);
    let r = run(&mut lu, &mut vol, &n, &rc16, &[]);
    assert_eq!(&r.data_in[..8], &127u64.to_be_bytes());
    assert_eq!(r.data_in[14] & 0xc0, 0xc0, "LBPME and LBPRZ");
}

#[test]
fn mode_select_disables_write_cache_and_notifies_other_nexuses() {
    let (mut lu, mut vol) = ready_unit(64);
    let (a, b) = (nexus(1), nexus(2));
    let r = run(&mut lu, &mut vol, &a, &[0x1a, 0, 0x08, 0, 255, 0], &[]);
    let mut list = r.data_in.to_vec();
    list[0] = 0; // MODE DATA LENGTH is reserved in MODE SELECT
    list[2] = 0;
    list[4 + 8 + 2] &= !0x04; // caching page, WCE off
    let select = [0x15, 0x10, 0, 0, list.len() as u8, 0];
    assert_eq!(lu.data_out_len(&select), list.len() as u64);
    assert_good(&run(&mut lu, &mut vol, &a, &select, &list));
    assert!(!lu.write_cache_enabled());
    assert_good(&run(&mut lu, &mut vol, &a, &write10(0, 1), &[1; BS]));
    assert!(matches!(
        vol.log.last(),
        Some(BlockRequest::Write { fua: true, .. })
    ));
    let s = sense_of(&run(&mut lu, &mut vol, &b, &tur(), &[]));
    assert_eq!(s.asc, Asc::MODE_PARAMETERS_CHANGED);
}

#[test]
fn descriptor_sense_when_d_sense_is_set() {
    let (mut lu, mut vol) = ready_unit(64);
    let n = nexus(1);
    let r = run(&mut lu, &mut vol, &n, &[0x1a, 0, 0x0a, 0, 255, 0], &[]);
    let mut list = r.data_in.to_vec();
    list[0] = 0;
    list[2] = 0;
    list[4 + 8 + 2] |= 0x04; // control page, D_SENSE
    assert_good(&run(
        &mut lu,
        &mut vol,
        &n,
        &[0x15, 0x10, 0, 0, list.len() as u8, 0],
        &list,
    ));
    let r = run(&mut lu, &mut vol, &n, &read10(64, 1), &[]);
    assert_eq!(r.sense.as_ref().unwrap()[0], 0x72);
    assert_eq!(sense_of(&r).asc, Asc::LBA_OUT_OF_RANGE);
}

#[test]
fn software_write_protect_refuses_writes_until_cleared() {
    let (mut lu, mut vol) = ready_unit(64);
    let (n, other) = (nexus(1), nexus(2));
    assert_good(&run(&mut lu, &mut vol, &other, &tur(), &[]));
    let r = run(&mut lu, &mut vol, &n, &[0x1a, 0, 0x0a, 0, 255, 0], &[]);
    let mut list = r.data_in.to_vec();
    list[0] = 0;
    list[2] = 0;
    list[4 + 8 + 4] |= 0x08; // control page, SWP
    let select = [0x15, 0x10, 0, 0, list.len() as u8, 0];
    assert_good(&run(&mut lu, &mut vol, &n, &select, &list));
    // Every nexus is refused writes; the other one first hears of the change.
    let r = run(&mut lu, &mut vol, &n, &write10(0, 1), &[7; BS]);
    let s = sense_of(&r);
    assert_eq!(
        (s.key, s.asc),
        (SenseKey::DataProtect, Asc::SOFTWARE_WRITE_PROTECTED)
    );
    let r = run(&mut lu, &mut vol, &other, &tur(), &[]);
    assert_eq!(sense_of(&r).asc, Asc::MODE_PARAMETERS_CHANGED);
    let r = run(&mut lu, &mut vol, &other, &write10(0, 1), &[7; BS]);
    assert_eq!(sense_of(&r).key, SenseKey::DataProtect);
    assert!(vol
        .log
        .iter()
        .all(|r| !matches!(r, BlockRequest::Write { .. })));
    // MODE SENSE shows WP; reads go on; clearing SWP lets writes in again.
    let r = run(&mut lu, &mut vol, &n, &[0x1a, 0, 0x0a, 0, 255, 0], &[]);
    assert_eq!(r.data_in[2] & 0x80, 0x80);
    assert_good(&run(&mut lu, &mut vol, &n, &read10(0, 1), &[]));
    list[4 + 8 + 4] &= !0x08;
    assert_good(&run(&mut lu, &mut vol, &n, &select, &list));
    assert_good(&run(&mut lu, &mut vol, &n, &write10(0, 1), &[7; BS]));
}

#[test]
fn stopped_unit_is_not_ready_until_started() {
    let (mut lu, mut vol) = ready_unit(64);
    let n = nexus(1);
    assert_good(&run(&mut lu, &mut vol, &n, &[0x1b, 0, 0, 0, 0x00, 0], &[]));
    assert_eq!(vol.log, vec![BlockRequest::Flush], "stop flushes first");
    let s = sense_of(&run(&mut lu, &mut vol, &n, &tur(), &[]));
    assert_eq!(
        (s.key, s.asc),
        (
            SenseKey::NotReady,
            Asc::NOT_READY_INITIALIZING_COMMAND_REQUIRED
        )
    );
    assert_good(&run(&mut lu, &mut vol, &n, &[0x12, 0, 0, 0, 36, 0], &[]));
    let r = run(&mut lu, &mut vol, &n, &[0x03, 0, 0, 0, 18, 0], &[]);
    assert_good(&r);
    let s = cstor_target::scsi::Sense::decode(&r.data_in).unwrap();
    assert_eq!(
        s.key,
        SenseKey::NotReady,
        "REQUEST SENSE reports the stopped state"
    );
    assert_good(&run(&mut lu, &mut vol, &n, &[0x1b, 0, 0, 0, 0x01, 0], &[]));
    assert_good(&run(&mut lu, &mut vol, &n, &tur(), &[]));
    // LOEJ on a non-removable unit is refused.
    let s = sense_of(&run(&mut lu, &mut vol, &n, &[0x1b, 0, 0, 0, 0x02, 0], &[]));
    assert_eq!(s.asc, Asc::INVALID_FIELD_IN_CDB);
}

#[test]
fn lun_reset_raises_unit_attention_on_every_nexus() {
    let (mut lu, mut vol) = ready_unit(64);
    lu.lun_reset();
    for i in [1, 2] {
        let s = sense_of(&run(&mut lu, &mut vol, &nexus(i), &tur(), &[]));
        assert_eq!(s.asc, Asc::BUS_DEVICE_RESET);
        assert_good(&run(&mut lu, &mut vol, &nexus(i), &tur(), &[]));
    }
}

#[test]
fn write_exclusive_reservation_blocks_other_writers_not_readers() {
    let (mut lu, mut vol) = ready_unit(64);
    let (a, b) = (nexus(1), nexus(2));
    let (c, p) = pr_out(0, 0, 0, 0xaa);
    assert_good(&run(&mut lu, &mut vol, &a, &c, &p));
    let (c, p) = pr_out(1, 0x01, 0xaa, 0);
    assert_good(&run(&mut lu, &mut vol, &a, &c, &p));
    assert_good(&run(&mut lu, &mut vol, &a, &write10(0, 1), &[1; BS]));
    let r = run(&mut lu, &mut vol, &b, &write10(0, 1), &[2; BS]);
    assert_eq!(r.status, Status::ReservationConflict);
    assert!(r.sense.is_none());
    assert_good(&run(&mut lu, &mut vol, &b, &read10(0, 1), &[]));
    // The unregistered nexus cannot reserve or release.
    let (c, p) = pr_out(2, 0x01, 0xbb, 0);
    assert_eq!(
        run(&mut lu, &mut vol, &b, &c, &p).status,
        Status::ReservationConflict
    );
    // READ RESERVATION shows the holder's key and type.
    let r = run(
        &mut lu,
        &mut vol,
        &b,
        &[0x5e, 0x01, 0, 0, 0, 0, 0, 0, 64, 0],
        &[],
    );
    assert_good(&r);
    assert_eq!(&r.data_in[8..16], &0xaau64.to_be_bytes());
    assert_eq!(r.data_in[21], 0x01);
}

#[test]
fn preempt_and_abort_takes_the_reservation_and_preempts_the_victims_registration() {
    let (mut lu, mut vol) = ready_unit(64);
    let (a, b) = (nexus(1), nexus(2));
    for (n, key) in [(&a, 0xa), (&b, 0xb)] {
        let (c, p) = pr_out(0, 0, 0, key);
        assert_good(&run(&mut lu, &mut vol, n, &c, &p));
    }
    let (c, p) = pr_out(1, 0x03, 0xa, 0);
    assert_good(&run(&mut lu, &mut vol, &a, &c, &p));
    assert_eq!(
        run(&mut lu, &mut vol, &b, &read10(0, 1), &[]).status,
        Status::ReservationConflict
    );
    let (c, p) = pr_out(5, 0x03, 0xb, 0xa);
    assert_good(&run(&mut lu, &mut vol, &b, &c, &p));
    let s = sense_of(&run(&mut lu, &mut vol, &a, &tur(), &[]));
    assert_eq!(s.asc, Asc::REGISTRATIONS_PREEMPTED);
    assert_eq!(
        run(&mut lu, &mut vol, &a, &read10(0, 1), &[]).status,
        Status::ReservationConflict
    );
    assert_good(&run(&mut lu, &mut vol, &b, &read10(0, 1), &[]));
}

/// Registers `nexus(1)` with key 0xa and `nexus(2)` with key 0xb, and lets
/// `nexus(1)` hold a Write Exclusive reservation.
fn a_reserves_b_registered(lu: &mut LogicalUnit, vol: &mut MemVolume) {
    for (n, key) in [(nexus(1), 0xa), (nexus(2), 0xb)] {
        let (c, p) = pr_out(0, 0, 0, key);
        assert_good(&run(lu, vol, &n, &c, &p));
    }
    let (c, p) = pr_out(1, 0x01, 0xa, 0);
    assert_good(&run(lu, vol, &nexus(1), &c, &p));
}

#[test]
fn preempt_and_abort_aborts_the_commands_the_preempted_nexus_has_in_flight() {
    // SPC-4 §5.13.11.2.7: the preempted nexus's tasks are aborted (TAS = 0:
    // no status for them), it gets REGISTRATIONS PREEMPTED, and the
    // preempting nexus's own commands go on.
    let (mut lu, mut vol) = ready_unit(64);
    let (a, b) = (nexus(1), nexus(2));
    a_reserves_b_registered(&mut lu, &mut vol);
    let a_write = start_io(&mut lu, &a, &write10(0, 1), &[0xaa; BS]);
    let a_read = start_io(&mut lu, &a, &read10(0, 1), &[]);
    let b_read = start_io(&mut lu, &b, &read10(1, 1), &[]);
    let (c, p) = pr_out(5, 0x01, 0xb, 0xa);
    assert_good(&run(&mut lu, &mut vol, &b, &c, &p));
    assert_eq!(
        finish_io(&mut lu, &mut vol, a_write),
        None,
        "A's write answered"
    );
    assert_eq!(
        finish_io(&mut lu, &mut vol, a_read),
        None,
        "A's read answered"
    );
    assert_good(&finish_io(&mut lu, &mut vol, b_read).unwrap());
    let s = sense_of(&run(&mut lu, &mut vol, &a, &tur(), &[]));
    assert_eq!(
        (s.key, s.asc),
        (SenseKey::UnitAttention, Asc::REGISTRATIONS_PREEMPTED)
    );
    // What A sends after the preemption is a new task: it is answered.
    let later = start_io(&mut lu, &a, &read10(0, 1), &[]);
    assert_good(&finish_io(&mut lu, &mut vol, later).unwrap());
}

#[test]
fn plain_preempt_aborts_nothing() {
    let (mut lu, mut vol) = ready_unit(64);
    let (a, b) = (nexus(1), nexus(2));
    a_reserves_b_registered(&mut lu, &mut vol);
    let a_read = start_io(&mut lu, &a, &read10(0, 1), &[]);
    let (c, p) = pr_out(4, 0x01, 0xb, 0xa);
    assert_good(&run(&mut lu, &mut vol, &b, &c, &p));
    assert_good(&finish_io(&mut lu, &mut vol, a_read).unwrap());
}

#[test]
fn inquiry_allocation_length_truncates_data_in() {
    let (mut lu, mut vol) = ready_unit(64);
    let n = nexus(1);
    let r = run(&mut lu, &mut vol, &n, &[0x12, 0, 0, 0, 5, 0], &[]);
    assert_eq!(r.data_in.len(), 5);
    let r = run(&mut lu, &mut vol, &n, &[0x12, 0x01, 0x80, 0, 255, 0], &[]);
    assert_eq!(&r.data_in[4..], b"pvc-0001");
    let s = sense_of(&run(
        &mut lu,
        &mut vol,
        &n,
        &[0x12, 0, 0x80, 0, 255, 0],
        &[],
    ));
    assert_eq!(s.asc, Asc::INVALID_FIELD_IN_CDB);
}

#[test]
fn report_luns_and_supported_opcodes_answer_without_io() {
    let (mut lu, mut vol) = ready_unit(64);
    let n = nexus(1);
    let r = run(
        &mut lu,
        &mut vol,
        &n,
        &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0],
        &[],
    );
    assert_eq!(&r.data_in[..4], &[0, 0, 0, 8]);
    let rsoc = [0xa3, 0x0c, 0x01, 0x28, 0, 0, 0, 0, 1, 0, 0, 0];
    let r = run(&mut lu, &mut vol, &n, &rsoc, &[]);
    assert_good(&r);
    assert_eq!(r.data_in[1] & 0x07, 3);
    assert_eq!(&r.data_in[4..6], &[0x28, 0x1a]);
    assert!(vol.log.is_empty());
}

#[test]
fn compare_and_write_refuses_data_out_of_the_wrong_size() {
    let (mut lu, mut vol) = ready_unit(64);
    let n = nexus(1);
    for blocks in [1, 3, 4] {
        let r = run(
            &mut lu,
            &mut vol,
            &n,
            &compare_and_write(0, 1),
            &vec![0; blocks * BS],
        );
        assert_eq!(sense_of(&r).key, SenseKey::IllegalRequest);
    }
    assert!(vol.log.is_empty());
}

#[test]
fn dpo_fua_and_obsolete_fua_nv_are_accepted_on_reads_and_writes() {
    let (mut lu, mut vol) = ready_unit(64);
    let n = nexus(1);
    for flags in [0x10, 0x08, 0x0a, 0x02, 0x1a] {
        assert_good(&run(&mut lu, &mut vol, &n, &rw10(0x28, flags, 0, 1), &[]));
        assert_good(&run(
            &mut lu,
            &mut vol,
            &n,
            &rw16(0x8a, flags, 0, 1),
            &[0; BS],
        ));
    }
}

#[test]
fn pre_fetch_is_range_checked_and_answers_good_without_io() {
    let (mut lu, mut vol) = ready_unit(64);
    let n = nexus(1);
    assert_good(&run(&mut lu, &mut vol, &n, &rw10(0x34, 0x02, 60, 4), &[]));
    assert_good(&run(&mut lu, &mut vol, &n, &rw16(0x90, 0, 0, 64), &[]));
    let s = sense_of(&run(&mut lu, &mut vol, &n, &rw16(0x90, 0, 61, 4), &[]));
    assert_eq!(s.asc, Asc::LBA_OUT_OF_RANGE);
    assert!(vol.log.is_empty());
}

#[test]
fn reserve6_excludes_other_nexuses_until_released_reset_or_lost() {
    let (mut lu, mut vol) = ready_unit(64);
    let (a, b) = (nexus(1), nexus(2));
    let (reserve, release) = ([0x16, 0, 0, 0, 0, 0], [0x17, 0, 0, 0, 0, 0]);
    let mode_sense = [0x1a, 0, 0x3f, 0, 255, 0];
    assert_good(&run(&mut lu, &mut vol, &a, &reserve, &[]));
    assert_good(&run(&mut lu, &mut vol, &a, &reserve, &[]));
    assert_eq!(
        run(&mut lu, &mut vol, &b, &reserve, &[]).status,
        Status::ReservationConflict
    );
    assert_good(&run(&mut lu, &mut vol, &b, &release, &[])); // no-op
    assert_eq!(
        run(&mut lu, &mut vol, &b, &mode_sense, &[]).status,
        Status::ReservationConflict
    );
    assert_good(&run(&mut lu, &mut vol, &b, &[0x12, 0, 0, 0, 36, 0], &[]));
    assert_good(&run(&mut lu, &mut vol, &a, &mode_sense, &[]));
    assert_good(&run(&mut lu, &mut vol, &a, &release, &[]));
    assert_good(&run(&mut lu, &mut vol, &b, &reserve, &[]));
    lu.nexus_lost(&b);
    assert_good(&run(&mut lu, &mut vol, &a, &reserve, &[]));
    lu.lun_reset();
    let _ua = run(&mut lu, &mut vol, &b, &tur(), &[]);
    assert_good(&run(&mut lu, &mut vol, &b, &reserve, &[]));
}

#[test]
fn reserve6_conflicts_with_persistent_registrations() {
    let (mut lu, mut vol) = ready_unit(64);
    let a = nexus(1);
    let (c, p) = pr_out(0, 0, 0, 0x1);
    assert_good(&run(&mut lu, &mut vol, &a, &c, &p));
    let r = run(&mut lu, &mut vol, &a, &[0x16, 0, 0, 0, 0, 0], &[]);
    assert_eq!(r.status, Status::ReservationConflict);
}
