//! The one table of supported commands: operation code, service action and
//! CDB usage bitmap.
//!
//! The bitmap of each row marks the CDB bits the device server looks at
//! (SPC-4 §6.35.3, CDB USAGE DATA). Two consumers read it, so they cannot
//! drift apart: the CDB parser rejects any bit outside it with ILLEGAL
//! REQUEST / INVALID FIELD IN CDB and a field pointer ([`check_usage`]), and
//! REPORT SUPPORTED OPERATION CODES returns it verbatim. Byte 0 holds the
//! operation code; for commands with a service action byte 1 marks the
//! 5-bit SERVICE ACTION field; the CONTROL byte (last) is all zero because
//! we support neither NACA nor linked commands.
//!
//! Fields that are used but only accept some values (e.g. BYTCHK = 10b) are
//! marked used here and checked further by the parser.

use super::sense::Sense;

/// One supported command (or one service action of a command).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpcodeInfo {
    pub opcode: u8,
    /// Service action, for operation codes that have them.
    pub service_action: Option<u8>,
    pub name: &'static str,
    /// CDB usage bitmap; its length is the CDB length.
    pub usage: &'static [u8],
}

// Field masks shared by many rows, so a change reaches every row.
/// GROUP NUMBER (SBC-3 §4.22): accepted as a hint and ignored.
const GRP: u8 = 0x1f;
/// DPO | FUA | FUA_NV of READ/WRITE/COMPARE AND WRITE. FUA_NV (obsolete
/// since SBC-3) is accepted and has no effect: we have no non-volatile
/// cache. RDPROTECT/WRPROTECT are not: we keep no protection information.
const DPO_FUA: u8 = 0x1a;
/// DPO | BYTCHK (2 bits, SBC-4) of VERIFY.
const VERIFY_FLAGS: u8 = 0x16;
/// DPO | BYTCHK (1 bit) of WRITE AND VERIFY.
const WRITE_VERIFY_FLAGS: u8 = 0x12;
/// IMMED of SYNCHRONIZE CACHE and PRE-FETCH.
const IMMED: u8 = 0x02;
/// SERVICE ACTION field.
const SA: u8 = 0x1f;

const fn rw10(op: u8, flags: u8) -> [u8; 10] {
    [op, flags, 0xff, 0xff, 0xff, 0xff, GRP, 0xff, 0xff, 0]
}
const fn rw12(op: u8, flags: u8) -> [u8; 12] {
    [
        op, flags, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, GRP, 0,
    ]
}
const fn rw16(op: u8, flags: u8) -> [u8; 16] {
    [
        op, flags, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, GRP, 0,
    ]
}

pub const TEST_UNIT_READY: u8 = 0x00;
pub const REQUEST_SENSE: u8 = 0x03;
pub const READ_6: u8 = 0x08;
pub const WRITE_6: u8 = 0x0a;
pub const INQUIRY: u8 = 0x12;
pub const MODE_SELECT_6: u8 = 0x15;
pub const RESERVE_6: u8 = 0x16;
pub const RELEASE_6: u8 = 0x17;
pub const MODE_SENSE_6: u8 = 0x1a;
pub const START_STOP_UNIT: u8 = 0x1b;
pub const READ_CAPACITY_10: u8 = 0x25;
pub const READ_10: u8 = 0x28;
pub const WRITE_10: u8 = 0x2a;
pub const WRITE_AND_VERIFY_10: u8 = 0x2e;
pub const VERIFY_10: u8 = 0x2f;
pub const PRE_FETCH_10: u8 = 0x34;
pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
pub const WRITE_SAME_10: u8 = 0x41;
pub const UNMAP: u8 = 0x42;
pub const MODE_SELECT_10: u8 = 0x55;
pub const MODE_SENSE_10: u8 = 0x5a;
pub const PERSISTENT_RESERVE_IN: u8 = 0x5e;
pub const PERSISTENT_RESERVE_OUT: u8 = 0x5f;
pub const READ_16: u8 = 0x88;
pub const COMPARE_AND_WRITE: u8 = 0x89;
pub const WRITE_16: u8 = 0x8a;
pub const WRITE_AND_VERIFY_16: u8 = 0x8e;
pub const VERIFY_16: u8 = 0x8f;
pub const PRE_FETCH_16: u8 = 0x90;
pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
pub const WRITE_SAME_16: u8 = 0x93;
pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
pub const REPORT_LUNS: u8 = 0xa0;
pub const MAINTENANCE_IN: u8 = 0xa3;
pub const READ_12: u8 = 0xa8;
pub const WRITE_12: u8 = 0xaa;
pub const WRITE_AND_VERIFY_12: u8 = 0xae;
pub const VERIFY_12: u8 = 0xaf;

/// SERVICE ACTION IN(16) service actions.
pub const SA_READ_CAPACITY_16: u8 = 0x10;
pub const SA_GET_LBA_STATUS: u8 = 0x12;
/// MAINTENANCE IN service action.
pub const SA_REPORT_SUPPORTED_OPCODES: u8 = 0x0c;

const PR_IN_USAGE: [u8; 10] = [PERSISTENT_RESERVE_IN, SA, 0, 0, 0, 0, 0, 0xff, 0xff, 0];
const PR_OUT_USAGE: [u8; 10] = [
    PERSISTENT_RESERVE_OUT,
    SA,
    0xff,
    0,
    0,
    0xff,
    0xff,
    0xff,
    0xff,
    0,
];

const fn row(opcode: u8, name: &'static str, usage: &'static [u8]) -> OpcodeInfo {
    OpcodeInfo {
        opcode,
        service_action: None,
        name,
        usage,
    }
}

const fn sa_row(opcode: u8, sa: u8, name: &'static str, usage: &'static [u8]) -> OpcodeInfo {
    OpcodeInfo {
        opcode,
        service_action: Some(sa),
        name,
        usage,
    }
}

/// Every command the logical unit executes, in operation-code order.
pub static SUPPORTED: &[OpcodeInfo] = &[
    row(
        TEST_UNIT_READY,
        "TEST UNIT READY",
        &[TEST_UNIT_READY, 0, 0, 0, 0, 0],
    ),
    row(
        REQUEST_SENSE,
        "REQUEST SENSE",
        &[REQUEST_SENSE, 0x01, 0, 0, 0xff, 0],
    ),
    row(READ_6, "READ(6)", &[READ_6, 0x1f, 0xff, 0xff, 0xff, 0]),
    row(WRITE_6, "WRITE(6)", &[WRITE_6, 0x1f, 0xff, 0xff, 0xff, 0]),
    row(INQUIRY, "INQUIRY", &[INQUIRY, 0x01, 0xff, 0xff, 0xff, 0]),
    row(
        MODE_SELECT_6,
        "MODE SELECT(6)",
        &[MODE_SELECT_6, 0x11, 0, 0, 0xff, 0],
    ),
    // SPC-2 reservations: no third-party or extent reservations.
    row(RESERVE_6, "RESERVE(6)", &[RESERVE_6, 0, 0, 0, 0, 0]),
    row(RELEASE_6, "RELEASE(6)", &[RELEASE_6, 0, 0, 0, 0, 0]),
    row(
        MODE_SENSE_6,
        "MODE SENSE(6)",
        &[MODE_SENSE_6, 0x08, 0xff, 0xff, 0xff, 0],
    ),
    row(
        START_STOP_UNIT,
        "START STOP UNIT",
        &[START_STOP_UNIT, 0x01, 0, 0, 0x05, 0],
    ),
    row(
        READ_CAPACITY_10,
        "READ CAPACITY(10)",
        &[READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ),
    row(READ_10, "READ(10)", &rw10(READ_10, DPO_FUA)),
    row(WRITE_10, "WRITE(10)", &rw10(WRITE_10, DPO_FUA)),
    row(
        WRITE_AND_VERIFY_10,
        "WRITE AND VERIFY(10)",
        &rw10(WRITE_AND_VERIFY_10, WRITE_VERIFY_FLAGS),
    ),
    row(VERIFY_10, "VERIFY(10)", &rw10(VERIFY_10, VERIFY_FLAGS)),
    row(PRE_FETCH_10, "PRE-FETCH(10)", &rw10(PRE_FETCH_10, IMMED)),
    row(
        SYNCHRONIZE_CACHE_10,
        "SYNCHRONIZE CACHE(10)",
        &rw10(SYNCHRONIZE_CACHE_10, IMMED),
    ),
    // UNMAP bit only: ANCHOR is not supported (ANC_SUP = 0).
    row(WRITE_SAME_10, "WRITE SAME(10)", &rw10(WRITE_SAME_10, 0x08)),
    row(UNMAP, "UNMAP", &[UNMAP, 0, 0, 0, 0, 0, GRP, 0xff, 0xff, 0]),
    row(
        MODE_SELECT_10,
        "MODE SELECT(10)",
        &[MODE_SELECT_10, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff, 0],
    ),
    row(
        MODE_SENSE_10,
        "MODE SENSE(10)",
        &[MODE_SENSE_10, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0],
    ),
    sa_row(
        PERSISTENT_RESERVE_IN,
        0x00,
        "PERSISTENT RESERVE IN / READ KEYS",
        &PR_IN_USAGE,
    ),
    sa_row(
        PERSISTENT_RESERVE_IN,
        0x01,
        "PERSISTENT RESERVE IN / READ RESERVATION",
        &PR_IN_USAGE,
    ),
    sa_row(
        PERSISTENT_RESERVE_IN,
        0x02,
        "PERSISTENT RESERVE IN / REPORT CAPABILITIES",
        &PR_IN_USAGE,
    ),
    sa_row(
        PERSISTENT_RESERVE_IN,
        0x03,
        "PERSISTENT RESERVE IN / READ FULL STATUS",
        &PR_IN_USAGE,
    ),
    sa_row(
        PERSISTENT_RESERVE_OUT,
        0x00,
        "PERSISTENT RESERVE OUT / REGISTER",
        &PR_OUT_USAGE,
    ),
    sa_row(
        PERSISTENT_RESERVE_OUT,
        0x01,
        "PERSISTENT RESERVE OUT / RESERVE",
        &PR_OUT_USAGE,
    ),
    sa_row(
        PERSISTENT_RESERVE_OUT,
        0x02,
        "PERSISTENT RESERVE OUT / RELEASE",
        &PR_OUT_USAGE,
    ),
    sa_row(
        PERSISTENT_RESERVE_OUT,
        0x03,
        "PERSISTENT RESERVE OUT / CLEAR",
        &PR_OUT_USAGE,
    ),
    sa_row(
        PERSISTENT_RESERVE_OUT,
        0x04,
        "PERSISTENT RESERVE OUT / PREEMPT",
        &PR_OUT_USAGE,
    ),
    sa_row(
        PERSISTENT_RESERVE_OUT,
        0x05,
        "PERSISTENT RESERVE OUT / PREEMPT AND ABORT",
        &PR_OUT_USAGE,
    ),
    sa_row(
        PERSISTENT_RESERVE_OUT,
        0x06,
        "PERSISTENT RESERVE OUT / REGISTER AND IGNORE EXISTING KEY",
        &PR_OUT_USAGE,
    ),
    row(READ_16, "READ(16)", &rw16(READ_16, DPO_FUA)),
    row(
        COMPARE_AND_WRITE,
        "COMPARE AND WRITE",
        &[
            COMPARE_AND_WRITE,
            DPO_FUA,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0,
            0,
            0,
            0xff,
            GRP,
            0,
        ],
    ),
    row(WRITE_16, "WRITE(16)", &rw16(WRITE_16, DPO_FUA)),
    row(
        WRITE_AND_VERIFY_16,
        "WRITE AND VERIFY(16)",
        &rw16(WRITE_AND_VERIFY_16, WRITE_VERIFY_FLAGS),
    ),
    row(VERIFY_16, "VERIFY(16)", &rw16(VERIFY_16, VERIFY_FLAGS)),
    row(PRE_FETCH_16, "PRE-FETCH(16)", &rw16(PRE_FETCH_16, IMMED)),
    row(
        SYNCHRONIZE_CACHE_16,
        "SYNCHRONIZE CACHE(16)",
        &rw16(SYNCHRONIZE_CACHE_16, IMMED),
    ),
    // UNMAP | NDOB; ANCHOR is not supported.
    row(WRITE_SAME_16, "WRITE SAME(16)", &rw16(WRITE_SAME_16, 0x09)),
    sa_row(
        SERVICE_ACTION_IN_16,
        SA_READ_CAPACITY_16,
        "READ CAPACITY(16)",
        &[
            SERVICE_ACTION_IN_16,
            SA,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0xff,
            0xff,
            0xff,
            0xff,
            0,
            0,
        ],
    ),
    sa_row(
        SERVICE_ACTION_IN_16,
        SA_GET_LBA_STATUS,
        "GET LBA STATUS",
        &[
            SERVICE_ACTION_IN_16,
            SA,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0,
            0,
        ],
    ),
    row(
        REPORT_LUNS,
        "REPORT LUNS",
        &[REPORT_LUNS, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0],
    ),
    sa_row(
        MAINTENANCE_IN,
        SA_REPORT_SUPPORTED_OPCODES,
        "REPORT SUPPORTED OPERATION CODES",
        &[
            MAINTENANCE_IN,
            SA,
            0x87,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0,
            0,
        ],
    ),
    row(READ_12, "READ(12)", &rw12(READ_12, DPO_FUA)),
    row(WRITE_12, "WRITE(12)", &rw12(WRITE_12, DPO_FUA)),
    row(
        WRITE_AND_VERIFY_12,
        "WRITE AND VERIFY(12)",
        &rw12(WRITE_AND_VERIFY_12, WRITE_VERIFY_FLAGS),
    ),
    row(VERIFY_12, "VERIFY(12)", &rw12(VERIFY_12, VERIFY_FLAGS)),
];

/// Whether `opcode` selects its command by a service action in byte 1.
pub fn has_service_actions(opcode: u8) -> bool {
    SUPPORTED
        .iter()
        .any(|r| r.opcode == opcode && r.service_action.is_some())
}

/// The row for `opcode` (and `service_action`, for opcodes that have them).
pub fn lookup(opcode: u8, service_action: Option<u8>) -> Option<&'static OpcodeInfo> {
    SUPPORTED
        .iter()
        .find(|r| r.opcode == opcode && r.service_action == service_action)
}

/// Rejects any CDB bit the usage bitmap does not mark as used, pointing at
/// the first offending byte and its highest offending bit. A CDB shorter
/// than the bitmap is rejected at its first missing byte.
pub fn check_usage(cdb: &[u8], usage: &[u8]) -> Result<(), Sense> {
    for (index, &mask) in usage.iter().enumerate() {
        let byte = u16::try_from(index).unwrap_or(u16::MAX);
        let Some(&value) = cdb.get(index) else {
            return Err(Sense::invalid_cdb_field(byte, None));
        };
        let stray = value & !mask;
        if stray != 0 {
            // 7 - leading_zeros is the highest set bit, in 0..=7.
            let bit = 7u8.saturating_sub(stray.leading_zeros() as u8);
            return Err(Sense::invalid_cdb_field(byte, Some(bit)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_starts_with_its_opcode_and_ends_with_a_zero_control_byte() {
        for r in SUPPORTED {
            assert_eq!(r.usage.first(), Some(&r.opcode), "{}", r.name);
            assert_eq!(r.usage.last(), Some(&0), "{}", r.name);
            assert!(matches!(r.usage.len(), 6 | 10 | 12 | 16), "{}", r.name);
            if r.service_action.is_some() {
                assert_eq!(r.usage.get(1), Some(&SA), "{}", r.name);
            }
        }
    }

    #[test]
    fn rows_are_in_operation_code_order() {
        let keys: Vec<(u8, Option<u8>)> = SUPPORTED
            .iter()
            .map(|r| (r.opcode, r.service_action))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }

    #[test]
    fn rows_are_unique() {
        for (i, a) in SUPPORTED.iter().enumerate() {
            for b in SUPPORTED.iter().skip(i + 1) {
                assert!(
                    (a.opcode, a.service_action) != (b.opcode, b.service_action),
                    "{} twice",
                    a.name
                );
            }
        }
    }

    #[test]
    fn cdb_length_follows_the_opcode_group() {
        for r in SUPPORTED {
            let expected = match r.opcode >> 5 {
                0 => 6,
                1 | 2 => 10,
                4 => 16,
                5 => 12,
                _ => 0,
            };
            assert_eq!(r.usage.len(), expected, "{}", r.name);
        }
    }

    #[test]
    fn stray_bit_is_reported_with_byte_and_bit() {
        let usage = &[READ_10, DPO_FUA, 0xff, 0xff, 0xff, 0xff, GRP, 0xff, 0xff, 0];
        let mut cdb = [0u8; 10];
        cdb[0] = READ_10;
        assert_eq!(check_usage(&cdb, usage), Ok(()));
        cdb[1] = 0x20; // RDPROTECT = 001b
        assert_eq!(
            check_usage(&cdb, usage),
            Err(Sense::invalid_cdb_field(1, Some(5)))
        );
        cdb[1] = 0;
        cdb[9] = 0x04; // NACA
        assert_eq!(
            check_usage(&cdb, usage),
            Err(Sense::invalid_cdb_field(9, Some(2)))
        );
        assert_eq!(
            check_usage(&cdb[..4], usage),
            Err(Sense::invalid_cdb_field(4, None))
        );
    }

    #[test]
    fn service_action_opcodes_are_known() {
        assert!(has_service_actions(PERSISTENT_RESERVE_IN));
        assert!(has_service_actions(SERVICE_ACTION_IN_16));
        assert!(!has_service_actions(READ_10));
        assert!(lookup(SERVICE_ACTION_IN_16, Some(SA_READ_CAPACITY_16)).is_some());
        assert!(lookup(PERSISTENT_RESERVE_OUT, Some(7)).is_none());
    }
}
