//! CDB parsing: bytes in, a fully validated typed [`Command`] out.
//!
//! Validation happens here, before any IO (SBC-3 §4.5, SPC-4 §4.2.5):
//! - every bit outside the command's usage bitmap ([`super::opcodes`]) is
//!   rejected with INVALID FIELD IN CDB and a field pointer — this covers
//!   RDPROTECT/WRPROTECT/VRPROTECT ≠ 0 (we offer no protection information),
//!   ANCHOR (ANC_SUP = 0), NACA and linked commands;
//! - transfer lengths above the Block Limits VPD maxima ([`super::limits`])
//!   are INVALID FIELD IN CDB;
//! - `lba + blocks` is computed with `checked_add` and compared with the
//!   capacity: beyond it is LBA OUT OF RANGE (also for zero-length
//!   transfers that start past the end);
//! - an unknown operation code is `Command::Unsupported(op)`, an unknown
//!   service action of a known operation code is INVALID FIELD IN CDB;
//! - a CDB shorter than its command is an error, never a panic.

use super::limits;
use super::opcodes as op;
use super::pr::PR_OUT_PARAM_LEN;
use super::sense::{Asc, Sense};

/// Capacity the parser checks LBAs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Number of logical blocks (READ CAPACITY's last LBA + 1).
    pub blocks: u64,
    pub block_size: u32,
}

impl Geometry {
    /// MAXIMUM TRANSFER LENGTH of the Block Limits VPD, in blocks.
    pub fn max_transfer_blocks(&self) -> u32 {
        limits::blocks_for_bytes(limits::MAX_TRANSFER_BYTES, self.block_size)
    }

    /// LBA OUT OF RANGE unless `[lba, lba + blocks)` lies within capacity.
    pub fn check_range(&self, lba: u64, blocks: u64) -> Result<(), Sense> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.blocks => Ok(()),
            _ => Err(Sense::lba_out_of_range()),
        }
    }
}

/// MODE SENSE page control (SPC-4 §6.13, PC field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageControl {
    Current,
    Changeable,
    Default,
    Saved,
}

/// VERIFY's BYTCHK field (SBC-4 §5.29).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteCheck {
    /// Medium verification only: no data-out.
    None,
    /// Compare `blocks` blocks of data-out with the medium.
    Full,
    /// Compare one block of data-out with each of `blocks` blocks.
    SingleBlock,
}

/// MODE SENSE(6) or (10) (SPC-4 §6.13, §6.14).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeSense {
    /// MODE SENSE(10): 8-byte header, long LBA descriptors possible.
    pub ten: bool,
    /// Disable block descriptors.
    pub dbd: bool,
    /// Long LBA block descriptor accepted (MODE SENSE(10) only).
    pub llbaa: bool,
    pub pc: PageControl,
    pub page: u8,
    pub subpage: u8,
    pub alloc_len: u32,
}

/// A decoded, validated command. LBAs and lengths are in logical blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    TestUnitReady,
    RequestSense {
        descriptor: bool,
        alloc_len: u32,
    },
    Inquiry {
        evpd: bool,
        page: u8,
        alloc_len: u32,
    },
    ReportLuns {
        select: u8,
        alloc_len: u32,
    },
    ReadCapacity10,
    ReadCapacity16 {
        alloc_len: u32,
    },
    ModeSense(ModeSense),
    ModeSelect {
        ten: bool,
        param_len: u32,
    },
    /// SPC-2 RESERVE(6) / RELEASE(6) of the whole logical unit.
    Reserve6,
    Release6,
    StartStopUnit {
        start: bool,
        no_flush: bool,
    },
    Read {
        lba: u64,
        blocks: u32,
    },
    Write {
        lba: u64,
        blocks: u32,
        fua: bool,
    },
    Verify {
        lba: u64,
        blocks: u32,
        bytchk: ByteCheck,
    },
    WriteAndVerify {
        lba: u64,
        blocks: u32,
    },
    SynchronizeCache {
        lba: u64,
        blocks: u32,
    },
    PreFetch {
        lba: u64,
        blocks: u32,
    },
    WriteSame {
        lba: u64,
        blocks: u64,
        unmap: bool,
        ndob: bool,
    },
    Unmap {
        param_len: u32,
    },
    CompareAndWrite {
        lba: u64,
        blocks: u8,
        fua: bool,
    },
    GetLbaStatus {
        lba: u64,
        alloc_len: u32,
    },
    PersistentReserveIn {
        action: u8,
        alloc_len: u32,
    },
    PersistentReserveOut {
        action: u8,
        scope: u8,
        pr_type: u8,
        param_len: u32,
    },
    ReportSupportedOpcodes {
        rctd: bool,
        options: u8,
        opcode: u8,
        service_action: u16,
        alloc_len: u32,
    },
    /// An operation code we do not implement: ILLEGAL REQUEST / INVALID
    /// COMMAND OPERATION CODE.
    Unsupported(u8),
}

/// How a command touches the medium, for persistent reservation conflicts
/// (SPC-4 §5.12.1 table 42, SBC-3 §4.17 table 13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Allowed whatever the reservation.
    Always,
    /// Reads medium or state: conflicts under Exclusive Access types.
    Read,
    /// Modifies medium or state: conflicts under every type.
    Write,
}

impl Command {
    /// Bytes of data-out the command needs (the iSCSI layer collects this
    /// much, through immediate/unsolicited data and R2Ts).
    pub fn data_out_len(&self, block_size: u32) -> u64 {
        let bs = u64::from(block_size);
        match *self {
            Command::Write { blocks, .. } | Command::WriteAndVerify { blocks, .. } => {
                u64::from(blocks) * bs
            }
            Command::Verify { blocks, bytchk, .. } => match bytchk {
                ByteCheck::None => 0,
                ByteCheck::Full => u64::from(blocks) * bs,
                ByteCheck::SingleBlock => bs,
            },
            Command::CompareAndWrite { blocks, .. } => 2 * u64::from(blocks) * bs,
            Command::WriteSame { ndob, .. } => {
                if ndob {
                    0
                } else {
                    bs
                }
            }
            Command::Unmap { param_len }
            | Command::ModeSelect { param_len, .. }
            | Command::PersistentReserveOut { param_len, .. } => u64::from(param_len),
            _ => 0,
        }
    }

    /// Most bytes of data-in the command can return (the data-in of its
    /// response is never longer).
    pub fn data_in_len(&self, block_size: u32) -> u64 {
        match *self {
            Command::Read { blocks, .. } => u64::from(blocks) * u64::from(block_size),
            Command::ReadCapacity10 => 8,
            Command::RequestSense { alloc_len, .. }
            | Command::Inquiry { alloc_len, .. }
            | Command::ReportLuns { alloc_len, .. }
            | Command::ReadCapacity16 { alloc_len }
            | Command::ModeSense(ModeSense { alloc_len, .. })
            | Command::GetLbaStatus { alloc_len, .. }
            | Command::PersistentReserveIn { alloc_len, .. }
            | Command::ReportSupportedOpcodes { alloc_len, .. } => u64::from(alloc_len),
            _ => 0,
        }
    }

    /// Access class for reservation checks.
    pub fn access(&self) -> Access {
        match self {
            Command::TestUnitReady
            | Command::RequestSense { .. }
            | Command::Inquiry { .. }
            | Command::ReportLuns { .. }
            | Command::ReadCapacity10
            | Command::ReadCapacity16 { .. }
            | Command::ReportSupportedOpcodes { .. }
            | Command::PersistentReserveIn { .. }
            | Command::PersistentReserveOut { .. }
            | Command::Reserve6
            | Command::Release6
            | Command::Unsupported(_) => Access::Always,
            // Spinning up is allowed; stopping is not (SBC-3 table 13).
            Command::StartStopUnit { start: true, .. } => Access::Always,
            Command::Read { .. }
            | Command::PreFetch { .. }
            | Command::Verify { .. }
            | Command::GetLbaStatus { .. }
            | Command::ModeSense(_) => Access::Read,
            Command::StartStopUnit { start: false, .. }
            | Command::Write { .. }
            | Command::WriteAndVerify { .. }
            | Command::SynchronizeCache { .. }
            | Command::WriteSame { .. }
            | Command::Unmap { .. }
            | Command::CompareAndWrite { .. }
            | Command::ModeSelect { .. } => Access::Write,
        }
    }

    /// Whether another nexus's SPC-2 reservation lets this command through
    /// (SPC-2 §5.5.1).
    pub fn allowed_under_others_reserve6(&self) -> bool {
        matches!(
            self,
            Command::Inquiry { .. }
                | Command::ReportLuns { .. }
                | Command::RequestSense { .. }
                | Command::Release6
        )
    }

    /// Whether the command modifies the medium (refused while read-only).
    pub fn writes_medium(&self) -> bool {
        matches!(
            self,
            Command::Write { .. }
                | Command::WriteAndVerify { .. }
                | Command::WriteSame { .. }
                | Command::Unmap { .. }
                | Command::CompareAndWrite { .. }
        )
    }

    /// Whether the command needs the unit started (SBC-3 §4.19: medium
    /// access commands report NOT READY while stopped).
    pub fn needs_medium(&self) -> bool {
        matches!(
            self,
            Command::Read { .. }
                | Command::Write { .. }
                | Command::Verify { .. }
                | Command::WriteAndVerify { .. }
                | Command::SynchronizeCache { .. }
                | Command::PreFetch { .. }
                | Command::WriteSame { .. }
                | Command::Unmap { .. }
                | Command::CompareAndWrite { .. }
                | Command::GetLbaStatus { .. }
                | Command::TestUnitReady
        )
    }
}

/// `N` bytes of the CDB at `at`; the usage check has already proven the
/// CDB long enough, but a short slice is still an error, not a panic.
fn bytes<const N: usize>(cdb: &[u8], at: usize) -> Result<[u8; N], Sense> {
    cdb.get(at..at.saturating_add(N))
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or(Sense::invalid_cdb_field(at as u16, None))
}

fn byte(cdb: &[u8], at: usize) -> Result<u8, Sense> {
    bytes::<1>(cdb, at).map(|[b]| b)
}
fn be16(cdb: &[u8], at: usize) -> Result<u16, Sense> {
    bytes(cdb, at).map(u16::from_be_bytes)
}
fn be32(cdb: &[u8], at: usize) -> Result<u32, Sense> {
    bytes(cdb, at).map(u32::from_be_bytes)
}
fn be64(cdb: &[u8], at: usize) -> Result<u64, Sense> {
    bytes(cdb, at).map(u64::from_be_bytes)
}

/// Where LBA and transfer length sit in a 10/12/16-byte READ/WRITE-like CDB.
#[derive(Clone, Copy)]
struct Layout {
    lba_at: usize,
    lba_len: usize,
    len_at: usize,
    len_len: usize,
}

const LAYOUT_10: Layout = Layout {
    lba_at: 2,
    lba_len: 4,
    len_at: 7,
    len_len: 2,
};
const LAYOUT_12: Layout = Layout {
    lba_at: 2,
    lba_len: 4,
    len_at: 6,
    len_len: 4,
};
const LAYOUT_16: Layout = Layout {
    lba_at: 2,
    lba_len: 8,
    len_at: 10,
    len_len: 4,
};

fn lba_and_len(cdb: &[u8], layout: Layout) -> Result<(u64, u32), Sense> {
    let lba = match layout.lba_len {
        4 => u64::from(be32(cdb, layout.lba_at)?),
        _ => be64(cdb, layout.lba_at)?,
    };
    let len = match layout.len_len {
        2 => u32::from(be16(cdb, layout.len_at)?),
        _ => be32(cdb, layout.len_at)?,
    };
    Ok((lba, len))
}

/// Transfer length within the Block Limits maximum, then LBA range.
fn check_transfer(geo: &Geometry, lba: u64, blocks: u32, len_at: usize) -> Result<(), Sense> {
    if blocks > geo.max_transfer_blocks() {
        return Err(Sense::invalid_cdb_field(len_at as u16, None));
    }
    geo.check_range(lba, u64::from(blocks))
}

/// Layout of a 10/12/16-byte CDB from its length.
fn layout_for(cdb_len: usize) -> Layout {
    match cdb_len {
        10 => LAYOUT_10,
        12 => LAYOUT_12,
        _ => LAYOUT_16,
    }
}

/// Parses and validates one CDB against the unit's geometry.
pub fn parse(cdb: &[u8], geo: &Geometry) -> Result<Command, Sense> {
    let Some(&opcode) = cdb.first() else {
        return Err(Sense::invalid_cdb_field(0, None));
    };
    let service_action = if op::has_service_actions(opcode) {
        Some(byte(cdb, 1)? & 0x1f)
    } else {
        None
    };
    let Some(info) = op::lookup(opcode, service_action) else {
        return match service_action {
            Some(_) => Err(Sense::invalid_cdb_field(1, Some(4))),
            None => Ok(Command::Unsupported(opcode)),
        };
    };
    op::check_usage(cdb, info.usage)?;
    let b1 = byte(cdb, 1)?;
    let fua = b1 & 0x08 != 0;
    let layout = layout_for(info.usage.len());

    let command = match opcode {
        op::TEST_UNIT_READY => Command::TestUnitReady,
        op::REQUEST_SENSE => Command::RequestSense {
            descriptor: b1 & 0x01 != 0,
            alloc_len: u32::from(byte(cdb, 4)?),
        },
        op::INQUIRY => {
            let evpd = b1 & 0x01 != 0;
            let page = byte(cdb, 2)?;
            if !evpd && page != 0 {
                return Err(Sense::invalid_cdb_field(2, None));
            }
            Command::Inquiry {
                evpd,
                page,
                alloc_len: u32::from(be16(cdb, 3)?),
            }
        }
        op::REPORT_LUNS => {
            let select = byte(cdb, 2)?;
            if select > 0x02 {
                return Err(Sense::invalid_cdb_field(2, None));
            }
            let alloc_len = be32(cdb, 6)?;
            // SPC-4 §6.33: an allocation length below 16 is an error.
            if alloc_len < 16 {
                return Err(Sense::invalid_cdb_field(6, None));
            }
            Command::ReportLuns { select, alloc_len }
        }
        op::READ_CAPACITY_10 => Command::ReadCapacity10,
        op::SERVICE_ACTION_IN_16 => match service_action {
            Some(op::SA_READ_CAPACITY_16) => Command::ReadCapacity16 {
                alloc_len: be32(cdb, 10)?,
            },
            _ => {
                let lba = be64(cdb, 2)?;
                if lba >= geo.blocks {
                    return Err(Sense::lba_out_of_range());
                }
                Command::GetLbaStatus {
                    lba,
                    alloc_len: be32(cdb, 10)?,
                }
            }
        },
        op::MODE_SENSE_6 | op::MODE_SENSE_10 => {
            let b2 = byte(cdb, 2)?;
            let pc = match b2 >> 6 {
                0 => PageControl::Current,
                1 => PageControl::Changeable,
                2 => PageControl::Default,
                _ => PageControl::Saved,
            };
            let ten = opcode == op::MODE_SENSE_10;
            Command::ModeSense(ModeSense {
                ten,
                dbd: b1 & 0x08 != 0,
                llbaa: b1 & 0x10 != 0,
                pc,
                page: b2 & 0x3f,
                subpage: byte(cdb, 3)?,
                alloc_len: if ten {
                    u32::from(be16(cdb, 7)?)
                } else {
                    u32::from(byte(cdb, 4)?)
                },
            })
        }
        op::MODE_SELECT_6 | op::MODE_SELECT_10 => {
            let ten = opcode == op::MODE_SELECT_10;
            let param_len = if ten {
                u32::from(be16(cdb, 7)?)
            } else {
                u32::from(byte(cdb, 4)?)
            };
            // SP: no saved pages (SPC-4 §6.11).
            if b1 & 0x01 != 0 {
                return Err(Sense::invalid_cdb_field(1, Some(0)));
            }
            // PF = 0 would mean a vendor-specific parameter format.
            if b1 & 0x10 == 0 && param_len != 0 {
                return Err(Sense::invalid_cdb_field(1, Some(4)));
            }
            if param_len > u32::from(limits::MAX_MODE_SELECT_BYTES) {
                return Err(Sense::invalid_cdb_field(if ten { 7 } else { 4 }, None));
            }
            Command::ModeSelect { ten, param_len }
        }
        op::RESERVE_6 => Command::Reserve6,
        op::RELEASE_6 => Command::Release6,
        op::START_STOP_UNIT => {
            let b4 = byte(cdb, 4)?;
            Command::StartStopUnit {
                start: b4 & 0x01 != 0,
                no_flush: b4 & 0x04 != 0,
            }
        }
        op::READ_6 | op::WRITE_6 => {
            let [b1, b2, b3, b4] = bytes::<4>(cdb, 1)?;
            let lba = u64::from(u32::from_be_bytes([0, b1 & 0x1f, b2, b3]));
            // SBC-3 §5.7: a TRANSFER LENGTH of 0 means 256 blocks.
            let blocks = if b4 == 0 { 256 } else { u32::from(b4) };
            check_transfer(geo, lba, blocks, 4)?;
            if opcode == op::READ_6 {
                Command::Read { lba, blocks }
            } else {
                Command::Write {
                    lba,
                    blocks,
                    fua: false,
                }
            }
        }
        op::READ_10 | op::READ_12 | op::READ_16 => {
            let (lba, blocks) = lba_and_len(cdb, layout)?;
            check_transfer(geo, lba, blocks, layout.len_at)?;
            Command::Read { lba, blocks }
        }
        op::WRITE_10 | op::WRITE_12 | op::WRITE_16 => {
            let (lba, blocks) = lba_and_len(cdb, layout)?;
            check_transfer(geo, lba, blocks, layout.len_at)?;
            Command::Write { lba, blocks, fua }
        }
        op::WRITE_AND_VERIFY_10 | op::WRITE_AND_VERIFY_12 | op::WRITE_AND_VERIFY_16 => {
            let (lba, blocks) = lba_and_len(cdb, layout)?;
            check_transfer(geo, lba, blocks, layout.len_at)?;
            Command::WriteAndVerify { lba, blocks }
        }
        op::VERIFY_10 | op::VERIFY_12 | op::VERIFY_16 => {
            let (lba, blocks) = lba_and_len(cdb, layout)?;
            let bytchk = match (b1 >> 1) & 0x03 {
                0 => ByteCheck::None,
                1 => ByteCheck::Full,
                3 => ByteCheck::SingleBlock,
                _ => return Err(Sense::invalid_cdb_field(1, Some(2))),
            };
            if bytchk == ByteCheck::Full {
                check_transfer(geo, lba, blocks, layout.len_at)?;
            } else {
                geo.check_range(lba, u64::from(blocks))?;
            }
            Command::Verify {
                lba,
                blocks,
                bytchk,
            }
        }
        op::SYNCHRONIZE_CACHE_10 | op::SYNCHRONIZE_CACHE_16 => {
            let (lba, blocks) = lba_and_len(cdb, layout)?;
            geo.check_range(lba, u64::from(blocks))?;
            Command::SynchronizeCache { lba, blocks }
        }
        op::PRE_FETCH_10 | op::PRE_FETCH_16 => {
            let (lba, blocks) = lba_and_len(cdb, layout)?;
            geo.check_range(lba, u64::from(blocks))?;
            Command::PreFetch { lba, blocks }
        }
        op::WRITE_SAME_10 | op::WRITE_SAME_16 => {
            let (lba, blocks) = lba_and_len(cdb, layout)?;
            let blocks = u64::from(blocks);
            // WSNZ = 1 in the Block Limits VPD: zero blocks is refused
            // rather than meaning "to the end of the medium".
            if blocks == 0 || blocks > limits::MAX_WRITE_SAME_BLOCKS {
                return Err(Sense::invalid_cdb_field(layout.len_at as u16, None));
            }
            geo.check_range(lba, blocks)?;
            Command::WriteSame {
                lba,
                blocks,
                unmap: b1 & 0x08 != 0,
                ndob: b1 & 0x01 != 0,
            }
        }
        op::UNMAP => Command::Unmap {
            param_len: u32::from(be16(cdb, 7)?),
        },
        op::COMPARE_AND_WRITE => {
            let lba = be64(cdb, 2)?;
            let blocks = byte(cdb, 13)?;
            if blocks > limits::MAX_COMPARE_AND_WRITE_BLOCKS {
                return Err(Sense::invalid_cdb_field(13, None));
            }
            geo.check_range(lba, u64::from(blocks))?;
            Command::CompareAndWrite { lba, blocks, fua }
        }
        op::PERSISTENT_RESERVE_IN => Command::PersistentReserveIn {
            action: b1 & 0x1f,
            alloc_len: u32::from(be16(cdb, 7)?),
        },
        op::PERSISTENT_RESERVE_OUT => {
            let b2 = byte(cdb, 2)?;
            let param_len = be32(cdb, 5)?;
            // Every service action we support takes exactly 24 bytes (no
            // SPEC_I_PT): refuse others before any data-out is solicited.
            if param_len != PR_OUT_PARAM_LEN {
                return Err(Sense::parameter_list_length());
            }
            Command::PersistentReserveOut {
                action: b1 & 0x1f,
                scope: b2 >> 4,
                pr_type: b2 & 0x0f,
                param_len,
            }
        }
        op::MAINTENANCE_IN => {
            let b2 = byte(cdb, 2)?;
            let options = b2 & 0x07;
            if options > 3 {
                return Err(Sense::invalid_cdb_field(2, Some(2)));
            }
            Command::ReportSupportedOpcodes {
                rctd: b2 & 0x80 != 0,
                options,
                opcode: byte(cdb, 3)?,
                service_action: be16(cdb, 4)?,
                alloc_len: be32(cdb, 6)?,
            }
        }
        // Every row of the table is matched above; a row without a decoder
        // would be a bug, reported as an unsupported command, not a panic.
        _ => return Err(Sense::illegal(Asc::INVALID_COMMAND_OPERATION_CODE)),
    };
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::sense::SenseKey;
    use proptest::prelude::*;

    const GEO: Geometry = Geometry {
        blocks: 1000,
        block_size: 512,
    };

    fn read10(lba: u32, len: u16) -> Vec<u8> {
        let mut c = vec![op::READ_10, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        c[2..6].copy_from_slice(&lba.to_be_bytes());
        c[7..9].copy_from_slice(&len.to_be_bytes());
        c
    }

    #[test]
    fn read10_decodes_lba_and_length() {
        assert_eq!(
            parse(&read10(10, 8), &GEO),
            Ok(Command::Read { lba: 10, blocks: 8 })
        );
    }

    #[test]
    fn zero_length_read_past_the_end_is_out_of_range() {
        assert_eq!(
            parse(&read10(1000, 0), &GEO),
            Ok(Command::Read {
                lba: 1000,
                blocks: 0
            })
        );
        assert_eq!(
            parse(&read10(1001, 0), &GEO),
            Err(Sense::lba_out_of_range())
        );
        assert_eq!(
            parse(&read10(u32::MAX, 0), &GEO),
            Err(Sense::lba_out_of_range())
        );
    }

    #[test]
    fn read16_lba_overflow_is_out_of_range_not_a_wrap() {
        let mut c = vec![0u8; 16];
        c[0] = op::READ_16;
        c[2..10].copy_from_slice(&u64::MAX.to_be_bytes());
        c[13] = 2;
        assert_eq!(parse(&c, &GEO), Err(Sense::lba_out_of_range()));
    }

    #[test]
    fn rdprotect_is_an_invalid_field() {
        let mut c = read10(0, 1);
        c[1] = 0x60;
        assert_eq!(parse(&c, &GEO), Err(Sense::invalid_cdb_field(1, Some(6))));
    }

    #[test]
    fn transfer_above_block_limits_is_an_invalid_field() {
        let max = GEO.max_transfer_blocks();
        let big = Geometry {
            blocks: u64::MAX,
            block_size: 512,
        };
        let c = read10(0, u16::try_from(max + 1).unwrap_or(u16::MAX));
        assert_eq!(parse(&c, &big), Err(Sense::invalid_cdb_field(7, None)));
    }

    #[test]
    fn read6_zero_length_means_256_blocks() {
        let c = [op::READ_6, 0, 0, 5, 0, 0];
        assert_eq!(
            parse(&c, &GEO),
            Ok(Command::Read {
                lba: 5,
                blocks: 256
            })
        );
    }

    #[test]
    fn unknown_opcode_is_typed_unsupported() {
        assert_eq!(
            parse(&[0xc0, 0, 0, 0, 0, 0], &GEO),
            Ok(Command::Unsupported(0xc0))
        );
    }

    #[test]
    fn unknown_service_action_is_an_invalid_field() {
        let mut c = [0u8; 16];
        c[0] = op::SERVICE_ACTION_IN_16;
        c[1] = 0x11;
        assert_eq!(parse(&c, &GEO), Err(Sense::invalid_cdb_field(1, Some(4))));
        let c = [op::PERSISTENT_RESERVE_IN, 0x04, 0, 0, 0, 0, 0, 0, 8, 0];
        assert_eq!(
            parse(&c, &GEO).map_err(|s| s.asc),
            Err(Asc::INVALID_FIELD_IN_CDB)
        );
    }

    #[test]
    fn short_cdb_is_an_error() {
        let e = parse(&[op::READ_10, 0, 0], &GEO).unwrap_err();
        assert_eq!(e.key, SenseKey::IllegalRequest);
        assert_eq!(
            parse(&[], &GEO).map_err(|s| s.asc),
            Err(Asc::INVALID_FIELD_IN_CDB)
        );
    }

    #[test]
    fn write_same_zero_blocks_and_anchor_are_refused() {
        let mut c = [0u8; 10];
        c[0] = op::WRITE_SAME_10;
        assert_eq!(parse(&c, &GEO), Err(Sense::invalid_cdb_field(7, None)));
        c[8] = 1;
        c[1] = 0x10; // ANCHOR
        assert_eq!(parse(&c, &GEO), Err(Sense::invalid_cdb_field(1, Some(4))));
        c[1] = 0x08;
        assert_eq!(
            parse(&c, &GEO),
            Ok(Command::WriteSame {
                lba: 0,
                blocks: 1,
                unmap: true,
                ndob: false
            })
        );
    }

    #[test]
    fn compare_and_write_above_limit_is_an_invalid_field() {
        let mut c = [0u8; 16];
        c[0] = op::COMPARE_AND_WRITE;
        c[13] = limits::MAX_COMPARE_AND_WRITE_BLOCKS + 1;
        assert_eq!(parse(&c, &GEO), Err(Sense::invalid_cdb_field(13, None)));
    }

    #[test]
    fn verify_bytchk_two_is_reserved() {
        let mut c = [0u8; 10];
        c[0] = op::VERIFY_10;
        c[1] = 0x04;
        assert_eq!(parse(&c, &GEO), Err(Sense::invalid_cdb_field(1, Some(2))));
    }

    #[test]
    fn data_out_lengths_follow_the_command() {
        let w = Command::Write {
            lba: 0,
            blocks: 3,
            fua: false,
        };
        assert_eq!(w.data_out_len(512), 1536);
        let caw = Command::CompareAndWrite {
            lba: 0,
            blocks: 2,
            fua: false,
        };
        assert_eq!(caw.data_out_len(4096), 4 * 4096);
        let ws = Command::WriteSame {
            lba: 0,
            blocks: 9,
            unmap: true,
            ndob: true,
        };
        assert_eq!(ws.data_out_len(512), 0);
    }

    #[test]
    fn every_bit_outside_a_usage_bitmap_is_refused_where_it_is() {
        // The parser and REPORT SUPPORTED OPERATION CODES read one table;
        // this pins that the parser really rejects what the table omits.
        for row in op::SUPPORTED {
            let mut base = vec![0u8; row.usage.len()];
            base[0] = row.opcode;
            if let Some(sa) = row.service_action {
                base[1] = sa;
            }
            for (byte, &mask) in row.usage.iter().enumerate().skip(1) {
                for bit in 0..8u8 {
                    let value = 1u8 << bit;
                    if mask & value != 0 || (byte == 1 && row.service_action.is_some()) {
                        continue;
                    }
                    let mut c = base.clone();
                    c[byte] |= value;
                    assert_eq!(
                        parse(&c, &GEO),
                        Err(Sense::invalid_cdb_field(byte as u16, Some(bit))),
                        "{} byte {byte} bit {bit}",
                        row.name
                    );
                }
            }
        }
    }

    /// A READ/WRITE CDB of any size with its expected decoding.
    fn rw_cdb() -> impl Strategy<Value = (Vec<u8>, u64, u32, bool)> {
        (
            0usize..4,
            any::<bool>(),
            any::<u64>(),
            any::<u32>(),
            0u64..2000,
        )
            .prop_map(|(size, write, lba_raw, len_raw, near)| {
                // Half the LBAs near the end of the disk, half anywhere.
                let lba_raw = if lba_raw & 1 == 0 { near } else { lba_raw };
                match size {
                    0 => {
                        let lba = lba_raw & 0x1f_ffff;
                        let len = (len_raw & 0xff) as u8;
                        let code = if write { op::WRITE_6 } else { op::READ_6 };
                        let l = lba.to_be_bytes();
                        let blocks = if len == 0 { 256 } else { u32::from(len) };
                        (vec![code, l[5], l[6], l[7], len, 0], lba, blocks, write)
                    }
                    1 => {
                        let lba = lba_raw & 0xffff_ffff;
                        let len = len_raw & 0xffff;
                        let code = if write { op::WRITE_10 } else { op::READ_10 };
                        let mut c = vec![code, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                        c[2..6].copy_from_slice(&(lba as u32).to_be_bytes());
                        c[7..9].copy_from_slice(&(len as u16).to_be_bytes());
                        (c, lba, len, write)
                    }
                    2 => {
                        let lba = lba_raw & 0xffff_ffff;
                        let code = if write { op::WRITE_12 } else { op::READ_12 };
                        let mut c = vec![0u8; 12];
                        c[0] = code;
                        c[2..6].copy_from_slice(&(lba as u32).to_be_bytes());
                        c[6..10].copy_from_slice(&(len_raw % 4096).to_be_bytes());
                        (c, lba, len_raw % 4096, write)
                    }
                    _ => {
                        let code = if write { op::WRITE_16 } else { op::READ_16 };
                        let mut c = vec![0u8; 16];
                        c[0] = code;
                        c[2..10].copy_from_slice(&lba_raw.to_be_bytes());
                        c[10..14].copy_from_slice(&(len_raw % 4096).to_be_bytes());
                        (c, lba_raw, len_raw % 4096, write)
                    }
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn parser_never_panics(cdb in proptest::collection::vec(any::<u8>(), 0..20),
                               blocks in any::<u64>()) {
            let geo = Geometry { blocks, block_size: 512 };
            let _ = parse(&cdb, &geo);
        }

        #[test]
        fn data_out_is_bounded_whatever_the_cdb(
            pick in 0usize..op::SUPPORTED.len(),
            rest in proptest::collection::vec(any::<u8>(), 16),
            block_size in prop_oneof![Just(512u32), Just(4096u32)],
        ) {
            let geo = Geometry { blocks: u64::MAX, block_size };
            // Only bits the usage bitmap allows, so that most CDBs parse.
            let row = &op::SUPPORTED[pick];
            let mut cdb: Vec<u8> = row.usage.iter().zip(rest).map(|(m, b)| m & b).collect();
            cdb[0] = row.opcode;
            if let Some(sa) = row.service_action {
                cdb[1] = sa;
            }
            if let Ok(command) = parse(&cdb, &geo) {
                let bound = u64::from(limits::MAX_TRANSFER_BYTES).max(u64::from(u16::MAX));
                prop_assert!(command.data_out_len(block_size) <= bound, "{:?}", command);
            }
        }

        #[test]
        fn parser_never_panics_on_known_opcodes(
            pick in 0usize..op::SUPPORTED.len(),
            rest in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let mut cdb = vec![op::SUPPORTED[pick].opcode];
            cdb.extend(rest);
            let _ = parse(&cdb, &GEO);
        }

        #[test]
        fn read_write_decode_matches_model((cdb, lba, blocks, write) in rw_cdb()) {
            let got = parse(&cdb, &GEO);
            let in_range = lba.checked_add(u64::from(blocks)).is_some_and(|e| e <= GEO.blocks);
            if blocks > GEO.max_transfer_blocks() {
                prop_assert!(matches!(got, Err(s) if s.asc == Asc::INVALID_FIELD_IN_CDB));
            } else if !in_range {
                prop_assert_eq!(got, Err(Sense::lba_out_of_range()));
            } else if write {
                prop_assert_eq!(got, Ok(Command::Write { lba, blocks, fua: false }));
            } else {
                prop_assert_eq!(got, Ok(Command::Read { lba, blocks }));
            }
        }
    }
}
