//! PDUs an initiator sends (RFC 7143 §11.3, §11.5, §11.8, §11.10, §11.12,
//! §11.14, §11.16, §11.18). The target decodes them; encoding exists for
//! tests and tools.
//!
//! Byte offsets below are those of the RFC's figures; reserved fields are
//! written as zero and ignored when read (RFC 7143 §11.2: "reserved fields
//! ... MUST be set to 0 by senders").

use bytes::Bytes;

use super::{no_ahs, no_data, opcode, Bhs, EncodeError};
use crate::iscsi::limits::MAX_AHS_BYTES;

const F_BIT: u8 = 0x80;
const C_BIT: u8 = 0x40;

/// NOP-Out, RFC 7143 §11.18.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NopOut {
    pub immediate: bool,
    pub lun: u64,
    /// 0xffffffff when answering a target's NOP-In ping.
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    /// Ping data, echoed by the NOP-In answer.
    pub data: Bytes,
}

impl NopOut {
    pub(super) fn read(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, &'static str> {
        no_ahs(ahs)?;
        Ok(Self {
            immediate: h.immediate(),
            lun: h.u64_at(8),
            itt: h.itt(),
            ttt: h.u32_at(20),
            cmd_sn: h.u32_at(24),
            exp_stat_sn: h.u32_at(28),
            data,
        })
    }

    pub(super) fn write(&self, h: &mut Bhs) -> &Bytes {
        h.set_opcode(opcode::NOP_OUT, self.immediate);
        h.set_flags(F_BIT);
        h.set_u64(8, self.lun);
        h.set_u32(16, self.itt);
        h.set_u32(20, self.ttt);
        h.set_u32(24, self.cmd_sn);
        h.set_u32(28, self.exp_stat_sn);
        &self.data
    }
}

/// Task attribute of a SCSI Command, RFC 7143 §11.3.1 (SAM task
/// attributes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TaskAttr {
    Untagged = 0,
    Simple = 1,
    Ordered = 2,
    HeadOfQueue = 3,
    Aca = 4,
}

impl TaskAttr {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0 => Self::Untagged,
            1 => Self::Simple,
            2 => Self::Ordered,
            3 => Self::HeadOfQueue,
            4 => Self::Aca,
            _ => return None,
        })
    }
}

/// AHS types, RFC 7143 §11.2.2.
const AHS_EXTENDED_CDB: u8 = 1;
const AHS_BIDI_READ_LENGTH: u8 = 2;
/// AHSLength of the bidirectional read length AHS: reserved byte + 4.
const AHS_BIDI_LEN: u16 = 5;
/// The CDB bytes carried in the BHS.
pub const BHS_CDB_LEN: usize = 16;

/// SCSI Command, RFC 7143 §11.3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiCommand {
    pub immediate: bool,
    /// F: no unsolicited Data-Out follows.
    pub final_: bool,
    pub read: bool,
    pub write: bool,
    pub attr: TaskAttr,
    pub lun: u64,
    pub itt: u32,
    pub expected_data_len: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    /// The whole CDB: 16 bytes from the BHS plus any Extended CDB AHS.
    pub cdb: Bytes,
    /// Bidirectional Read Expected Data Transfer Length AHS, if present.
    pub bidi_read_len: Option<u32>,
    /// Immediate data.
    pub data: Bytes,
}

impl ScsiCommand {
    pub(super) fn read(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, &'static str> {
        let flags = h.flags();
        let attr = TaskAttr::from_bits(flags & 0x07).ok_or("ATTR")?;
        let mut cdb = h.bytes_at::<BHS_CDB_LEN>(32).to_vec();
        let mut bidi_read_len = None;
        let mut extended = false;
        let mut rest = ahs;
        while !rest.is_empty() {
            let (len_bytes, tail) = rest.split_first_chunk::<2>().ok_or("AHSLength")?;
            let (&ahs_type, tail) = tail.split_first().ok_or("AHSType")?;
            let len = usize::from(u16::from_be_bytes(*len_bytes));
            // AHSLength counts the type-specific byte and what follows.
            let body = tail.get(..len).ok_or("AHSLength")?;
            let padded = len + super::pad_len(len + 3);
            rest = tail.get(padded..).ok_or("AHS padding")?;
            match ahs_type {
                AHS_EXTENDED_CDB if !extended => {
                    extended = true;
                    cdb.extend_from_slice(body.get(1..).ok_or("Extended CDB AHS")?);
                }
                AHS_BIDI_READ_LENGTH if bidi_read_len.is_none() => {
                    let v: [u8; 4] = body
                        .get(1..)
                        .and_then(|b| b.try_into().ok())
                        .ok_or("Bidirectional Read AHS")?;
                    bidi_read_len = Some(u32::from_be_bytes(v));
                }
                _ => return Err("AHSType"),
            }
        }
        Ok(Self {
            immediate: h.immediate(),
            final_: flags & F_BIT != 0,
            read: flags & 0x40 != 0,
            write: flags & 0x20 != 0,
            attr,
            lun: h.u64_at(8),
            itt: h.itt(),
            expected_data_len: h.u32_at(20),
            cmd_sn: h.u32_at(24),
            exp_stat_sn: h.u32_at(28),
            cdb: Bytes::from(cdb),
            bidi_read_len,
            data,
        })
    }

    /// Fills the BHS and returns the AHS bytes (already padded).
    pub(super) fn write(&self, h: &mut Bhs) -> Result<Vec<u8>, EncodeError> {
        let (head, ext) =
            self.cdb
                .split_first_chunk::<BHS_CDB_LEN>()
                .ok_or(EncodeError::CdbTooShort {
                    len: self.cdb.len(),
                })?;
        h.set_opcode(opcode::SCSI_COMMAND, self.immediate);
        let mut flags = self.attr as u8;
        if self.final_ {
            flags |= F_BIT;
        }
        if self.read {
            flags |= 0x40;
        }
        if self.write {
            flags |= 0x20;
        }
        h.set_flags(flags);
        h.set_u64(8, self.lun);
        h.set_u32(16, self.itt);
        h.set_u32(20, self.expected_data_len);
        h.set_u32(24, self.cmd_sn);
        h.set_u32(28, self.exp_stat_sn);
        h.set_bytes(32, head);
        let mut ahs = Vec::new();
        if !ext.is_empty() {
            let too_long = EncodeError::AhsTooLong {
                len: ext.len().saturating_add(4),
            };
            if ext.len() + 4 > MAX_AHS_BYTES {
                return Err(too_long);
            }
            let len = u16::try_from(ext.len() + 1).map_err(|_| too_long)?;
            ahs.extend_from_slice(&len.to_be_bytes());
            ahs.push(AHS_EXTENDED_CDB);
            ahs.push(0);
            ahs.extend_from_slice(ext);
            ahs.resize(ahs.len() + super::pad_len(ahs.len()), 0);
        }
        if let Some(len) = self.bidi_read_len {
            ahs.extend_from_slice(&AHS_BIDI_LEN.to_be_bytes());
            ahs.push(AHS_BIDI_READ_LENGTH);
            ahs.push(0);
            ahs.extend_from_slice(&len.to_be_bytes());
        }
        Ok(ahs)
    }
}

/// Task management functions, RFC 7143 §11.5.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmfFunction {
    AbortTask,
    AbortTaskSet,
    ClearAca,
    ClearTaskSet,
    LogicalUnitReset,
    TargetWarmReset,
    TargetColdReset,
    TaskReassign,
    /// A code the RFC does not define: answered "Task management function
    /// not supported".
    Other(u8),
}

impl TmfFunction {
    /// From the 7-bit function field.
    pub fn from_code(code: u8) -> Self {
        match code {
            1 => Self::AbortTask,
            2 => Self::AbortTaskSet,
            3 => Self::ClearAca,
            4 => Self::ClearTaskSet,
            5 => Self::LogicalUnitReset,
            6 => Self::TargetWarmReset,
            7 => Self::TargetColdReset,
            8 => Self::TaskReassign,
            other => Self::Other(other & 0x7f),
        }
    }

    /// The 7-bit function field.
    pub fn code(self) -> u8 {
        match self {
            Self::AbortTask => 1,
            Self::AbortTaskSet => 2,
            Self::ClearAca => 3,
            Self::ClearTaskSet => 4,
            Self::LogicalUnitReset => 5,
            Self::TargetWarmReset => 6,
            Self::TargetColdReset => 7,
            Self::TaskReassign => 8,
            Self::Other(code) => code & 0x7f,
        }
    }
}

/// Task Management Function Request, RFC 7143 §11.5.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskMgmtRequest {
    pub immediate: bool,
    pub function: TmfFunction,
    pub lun: u64,
    pub itt: u32,
    pub referenced_task_tag: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub ref_cmd_sn: u32,
    pub exp_data_sn: u32,
}

impl TaskMgmtRequest {
    pub(super) fn read(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, &'static str> {
        no_ahs(ahs)?;
        no_data(&data)?;
        Ok(Self {
            immediate: h.immediate(),
            function: TmfFunction::from_code(h.flags() & 0x7f),
            lun: h.u64_at(8),
            itt: h.itt(),
            referenced_task_tag: h.u32_at(20),
            cmd_sn: h.u32_at(24),
            exp_stat_sn: h.u32_at(28),
            ref_cmd_sn: h.u32_at(32),
            exp_data_sn: h.u32_at(36),
        })
    }

    pub(super) fn write(&self, h: &mut Bhs) {
        h.set_opcode(opcode::TASK_MGMT_REQUEST, self.immediate);
        h.set_flags(F_BIT | self.function.code());
        h.set_u64(8, self.lun);
        h.set_u32(16, self.itt);
        h.set_u32(20, self.referenced_task_tag);
        h.set_u32(24, self.cmd_sn);
        h.set_u32(28, self.exp_stat_sn);
        h.set_u32(32, self.ref_cmd_sn);
        h.set_u32(36, self.exp_data_sn);
    }
}

/// Login Request, RFC 7143 §11.12. Always sent as an immediate PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRequest {
    /// T: the initiator is ready to move to `nsg`.
    pub transit: bool,
    /// C: the text continues in the next Login Request.
    pub continue_: bool,
    /// Current stage (2 bits): 0 security, 1 operational.
    pub csg: u8,
    /// Next stage (2 bits), meaningful when `transit`.
    pub nsg: u8,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub data: Bytes,
}

impl LoginRequest {
    pub(super) fn read(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, &'static str> {
        no_ahs(ahs)?;
        let flags = h.flags();
        if flags & F_BIT != 0 && flags & C_BIT != 0 {
            // RFC 7143 §11.12.2: T and C MUST NOT both be set.
            return Err("T and C bits");
        }
        Ok(Self {
            transit: flags & F_BIT != 0,
            continue_: flags & C_BIT != 0,
            csg: (flags >> 2) & 0x03,
            nsg: flags & 0x03,
            version_max: h.u8_at(2),
            version_min: h.u8_at(3),
            isid: h.bytes_at::<6>(8),
            tsih: h.u16_at(14),
            itt: h.itt(),
            cid: h.u16_at(20),
            cmd_sn: h.u32_at(24),
            exp_stat_sn: h.u32_at(28),
            data,
        })
    }

    pub(super) fn write(&self, h: &mut Bhs) -> &Bytes {
        h.set_opcode(opcode::LOGIN_REQUEST, true);
        h.set_flags(stage_flags(
            self.transit,
            self.continue_,
            self.csg,
            self.nsg,
        ));
        h.set_u8(2, self.version_max);
        h.set_u8(3, self.version_min);
        h.set_bytes(8, &self.isid);
        h.set_u16(14, self.tsih);
        h.set_u32(16, self.itt);
        h.set_u16(20, self.cid);
        h.set_u32(24, self.cmd_sn);
        h.set_u32(28, self.exp_stat_sn);
        &self.data
    }
}

/// Byte 1 of Login Request/Response: T, C, CSG, NSG.
pub(super) fn stage_flags(transit: bool, continue_: bool, csg: u8, nsg: u8) -> u8 {
    let mut flags = ((csg & 0x03) << 2) | (nsg & 0x03);
    if transit {
        flags |= F_BIT;
    }
    if continue_ {
        flags |= C_BIT;
    }
    flags
}

/// Text Request, RFC 7143 §11.10.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextRequest {
    pub immediate: bool,
    pub final_: bool,
    pub continue_: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub data: Bytes,
}

impl TextRequest {
    pub(super) fn read(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, &'static str> {
        no_ahs(ahs)?;
        let flags = h.flags();
        if flags & F_BIT != 0 && flags & C_BIT != 0 {
            // RFC 7143 §11.10.2: F and C MUST NOT both be set.
            return Err("F and C bits");
        }
        Ok(Self {
            immediate: h.immediate(),
            final_: flags & F_BIT != 0,
            continue_: flags & C_BIT != 0,
            lun: h.u64_at(8),
            itt: h.itt(),
            ttt: h.u32_at(20),
            cmd_sn: h.u32_at(24),
            exp_stat_sn: h.u32_at(28),
            data,
        })
    }

    pub(super) fn write(&self, h: &mut Bhs) -> &Bytes {
        h.set_opcode(opcode::TEXT_REQUEST, self.immediate);
        h.set_flags(if self.final_ { F_BIT } else { 0 } | if self.continue_ { C_BIT } else { 0 });
        h.set_u64(8, self.lun);
        h.set_u32(16, self.itt);
        h.set_u32(20, self.ttt);
        h.set_u32(24, self.cmd_sn);
        h.set_u32(28, self.exp_stat_sn);
        &self.data
    }
}

/// SCSI Data-Out, RFC 7143 §11.7.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataOut {
    pub final_: bool,
    pub lun: u64,
    pub itt: u32,
    /// 0xffffffff for unsolicited data, else the R2T's tag.
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
    pub data: Bytes,
}

impl DataOut {
    pub(super) fn read(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, &'static str> {
        no_ahs(ahs)?;
        Ok(Self {
            final_: h.flags() & F_BIT != 0,
            lun: h.u64_at(8),
            itt: h.itt(),
            ttt: h.u32_at(20),
            exp_stat_sn: h.u32_at(28),
            data_sn: h.u32_at(36),
            buffer_offset: h.u32_at(40),
            data,
        })
    }

    pub(super) fn write(&self, h: &mut Bhs) -> &Bytes {
        h.set_opcode(opcode::DATA_OUT, false);
        h.set_flags(if self.final_ { F_BIT } else { 0 });
        h.set_u64(8, self.lun);
        h.set_u32(16, self.itt);
        h.set_u32(20, self.ttt);
        h.set_u32(28, self.exp_stat_sn);
        h.set_u32(36, self.data_sn);
        h.set_u32(40, self.buffer_offset);
        &self.data
    }
}

/// Logout Request, RFC 7143 §11.14.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutRequest {
    pub immediate: bool,
    /// 0 close the session, 1 close the connection, 2 remove the connection
    /// for recovery (7 bits).
    pub reason: u8,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

impl LogoutRequest {
    pub(super) fn read(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, &'static str> {
        no_ahs(ahs)?;
        no_data(&data)?;
        Ok(Self {
            immediate: h.immediate(),
            reason: h.flags() & 0x7f,
            itt: h.itt(),
            cid: h.u16_at(20),
            cmd_sn: h.u32_at(24),
            exp_stat_sn: h.u32_at(28),
        })
    }

    pub(super) fn write(&self, h: &mut Bhs) {
        h.set_opcode(opcode::LOGOUT_REQUEST, self.immediate);
        h.set_flags(F_BIT | (self.reason & 0x7f));
        h.set_u32(16, self.itt);
        h.set_u16(20, self.cid);
        h.set_u32(24, self.cmd_sn);
        h.set_u32(28, self.exp_stat_sn);
    }
}

/// SNACK Request, RFC 7143 §11.16. Meaningful only at ErrorRecoveryLevel > 0,
/// which we never negotiate; decoded so it can be rejected precisely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnackRequest {
    /// Type (4 bits).
    pub snack_type: u8,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub beg_run: u32,
    pub run_length: u32,
}

impl SnackRequest {
    pub(super) fn read(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, &'static str> {
        no_ahs(ahs)?;
        no_data(&data)?;
        Ok(Self {
            snack_type: h.flags() & 0x0f,
            lun: h.u64_at(8),
            itt: h.itt(),
            ttt: h.u32_at(20),
            exp_stat_sn: h.u32_at(28),
            beg_run: h.u32_at(40),
            run_length: h.u32_at(44),
        })
    }

    pub(super) fn write(&self, h: &mut Bhs) {
        h.set_opcode(opcode::SNACK_REQUEST, false);
        h.set_flags(F_BIT | (self.snack_type & 0x0f));
        h.set_u64(8, self.lun);
        h.set_u32(16, self.itt);
        h.set_u32(20, self.ttt);
        h.set_u32(28, self.exp_stat_sn);
        h.set_u32(40, self.beg_run);
        h.set_u32(44, self.run_length);
    }
}
