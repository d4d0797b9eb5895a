//! PDUs the target sends (RFC 7143 §11.4, §11.6, §11.7.1, §11.8, §11.9,
//! §11.11, §11.13, §11.15, §11.17, §11.19). Decoding exists for tests and
//! for the fuzz target's round trips.
//!
//! Byte offsets are those of the RFC's figures; reserved fields are written
//! as zero and ignored when read.

use bytes::{BufMut, Bytes, BytesMut};

use super::initiator::stage_flags;
use super::{no_ahs, no_data, opcode, Bhs, RejectReason};
use crate::iscsi::limits::BHS_LEN;

const F_BIT: u8 = 0x80;
const C_BIT: u8 = 0x40;

/// Residual of a SCSI Response / final Data-In (RFC 7143 §11.4.5): the U and
/// O flags with their count, which can never both be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Residual {
    #[default]
    None,
    /// Less data moved than the Expected Data Transfer Length.
    Underflow(u32),
    /// More data was wanted than the Expected Data Transfer Length allowed.
    Overflow(u32),
}

impl Residual {
    /// From an (O, U) flag pair and the residual count field.
    fn from_flags(overflow: bool, underflow: bool, count: u32) -> Result<Self, &'static str> {
        match (overflow, underflow) {
            (false, false) => Ok(Self::None),
            (false, true) => Ok(Self::Underflow(count)),
            (true, false) => Ok(Self::Overflow(count)),
            (true, true) => Err("O and U bits"),
        }
    }

    /// (O, U, count) for the wire.
    fn flags(self) -> (bool, bool, u32) {
        match self {
            Self::None => (false, false, 0),
            Self::Underflow(n) => (false, true, n),
            Self::Overflow(n) => (true, false, n),
        }
    }
}

/// NOP-In, RFC 7143 §11.19.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NopIn {
    pub lun: u64,
    /// The NOP-Out's ITT when answering, 0xffffffff when pinging.
    pub itt: u32,
    /// 0xffffffff when answering, a fresh tag when the target pings.
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data: Bytes,
}

impl NopIn {
    pub(super) fn read(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, &'static str> {
        no_ahs(ahs)?;
        Ok(Self {
            lun: h.u64_at(8),
            itt: h.itt(),
            ttt: h.u32_at(20),
            stat_sn: h.u32_at(24),
            exp_cmd_sn: h.u32_at(28),
            max_cmd_sn: h.u32_at(32),
            data,
        })
    }

    pub(super) fn write(&self, h: &mut Bhs) -> &Bytes {
        h.set_opcode(opcode::NOP_IN, false);
        h.set_flags(F_BIT);
        h.set_u64(8, self.lun);
        h.set_u32(16, self.itt);
        h.set_u32(20, self.ttt);
        h.set_u32(24, self.stat_sn);
        h.set_u32(28, self.exp_cmd_sn);
        h.set_u32(32, self.max_cmd_sn);
        &self.data
    }
}

/// SCSI Response, RFC 7143 §11.4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiResponse {
    /// iSCSI service response: 0x00 command completed at target, 0x01 target
    /// failure (§11.4.3).
    pub response: u8,
    /// SCSI status (SAM), valid when `response` is 0.
    pub status: u8,
    pub residual: Residual,
    pub bidi_read_residual: Residual,
    pub itt: u32,
    pub snack_tag: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub exp_data_sn: u32,
    /// SenseLength (2 bytes) + sense data + response data (§11.4.7); build
    /// it with [`ScsiResponse::sense_segment`].
    pub data: Bytes,
}

impl ScsiResponse {
    /// The data segment carrying `sense` (RFC 7143 §11.4.7.2). Sense data
    /// is at most 252 bytes (SPC-4), so its length always fits.
    pub fn sense_segment(sense: &[u8]) -> Bytes {
        let len = u16::try_from(sense.len()).unwrap_or(u16::MAX);
        let sense = sense.get(..usize::from(len)).unwrap_or(sense);
        let mut b = BytesMut::with_capacity(2 + sense.len());
        b.put_u16(len);
        b.put_slice(sense);
        b.freeze()
    }

    /// The sense bytes of the data segment, if any.
    pub fn sense(&self) -> Option<&[u8]> {
        let (len, rest) = self.data.split_first_chunk::<2>()?;
        rest.get(..usize::from(u16::from_be_bytes(*len)))
            .filter(|s| !s.is_empty())
    }

    pub(super) fn read(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, &'static str> {
        no_ahs(ahs)?;
        let flags = h.flags();
        Ok(Self {
            response: h.u8_at(2),
            status: h.u8_at(3),
            residual: Residual::from_flags(flags & 0x04 != 0, flags & 0x02 != 0, h.u32_at(44))?,
            bidi_read_residual: Residual::from_flags(
                flags & 0x10 != 0,
                flags & 0x08 != 0,
                h.u32_at(40),
            )?,
            itt: h.itt(),
            snack_tag: h.u32_at(20),
            stat_sn: h.u32_at(24),
            exp_cmd_sn: h.u32_at(28),
            max_cmd_sn: h.u32_at(32),
            exp_data_sn: h.u32_at(36),
            data,
        })
    }

    pub(super) fn write(&self, h: &mut Bhs) -> &Bytes {
        h.set_opcode(opcode::SCSI_RESPONSE, false);
        let (o, u, count) = self.residual.flags();
        let (bo, bu, bidi_count) = self.bidi_read_residual.flags();
        let flags = F_BIT
            | if bo { 0x10 } else { 0 }
            | if bu { 0x08 } else { 0 }
            | if o { 0x04 } else { 0 }
            | if u { 0x02 } else { 0 };
        h.set_flags(flags);
        h.set_u8(2, self.response);
        h.set_u8(3, self.status);
        h.set_u32(16, self.itt);
        h.set_u32(20, self.snack_tag);
        h.set_u32(24, self.stat_sn);
        h.set_u32(28, self.exp_cmd_sn);
        h.set_u32(32, self.max_cmd_sn);
        h.set_u32(36, self.exp_data_sn);
        h.set_u32(40, bidi_count);
        h.set_u32(44, count);
        &self.data
    }
}

/// Task Management Function responses, RFC 7143 §11.6.1.
pub mod tmf_response {
    pub const FUNCTION_COMPLETE: u8 = 0;
    pub const TASK_DOES_NOT_EXIST: u8 = 1;
    pub const LUN_DOES_NOT_EXIST: u8 = 2;
    pub const TASK_STILL_ALLEGIANT: u8 = 3;
    pub const REASSIGNMENT_NOT_SUPPORTED: u8 = 4;
    pub const NOT_SUPPORTED: u8 = 5;
    pub const AUTHORIZATION_FAILED: u8 = 6;
    pub const REJECTED: u8 = 255;
}

/// Task Management Function Response, RFC 7143 §11.6.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskMgmtResponse {
    pub response: u8,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

impl TaskMgmtResponse {
    pub(super) fn read(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, &'static str> {
        no_ahs(ahs)?;
        no_data(&data)?;
        Ok(Self {
            response: h.u8_at(2),
            itt: h.itt(),
            stat_sn: h.u32_at(24),
            exp_cmd_sn: h.u32_at(28),
            max_cmd_sn: h.u32_at(32),
        })
    }

    pub(super) fn write(&self, h: &mut Bhs) {
        h.set_opcode(opcode::TASK_MGMT_RESPONSE, false);
        h.set_flags(F_BIT);
        h.set_u8(2, self.response);
        h.set_u32(16, self.itt);
        h.set_u32(24, self.stat_sn);
        h.set_u32(28, self.exp_cmd_sn);
        h.set_u32(32, self.max_cmd_sn);
    }
}

/// Login Response, RFC 7143 §11.13.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginResponse {
    pub transit: bool,
    pub continue_: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_active: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub status_class: u8,
    pub status_detail: u8,
    pub data: Bytes,
}

impl LoginResponse {
    pub(super) fn read(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, &'static str> {
        no_ahs(ahs)?;
        let flags = h.flags();
        if flags & F_BIT != 0 && flags & C_BIT != 0 {
            return Err("T and C bits");
        }
        Ok(Self {
            transit: flags & F_BIT != 0,
            continue_: flags & C_BIT != 0,
            csg: (flags >> 2) & 0x03,
            nsg: flags & 0x03,
            version_max: h.u8_at(2),
            version_active: h.u8_at(3),
            isid: h.bytes_at::<6>(8),
            tsih: h.u16_at(14),
            itt: h.itt(),
            stat_sn: h.u32_at(24),
            exp_cmd_sn: h.u32_at(28),
            max_cmd_sn: h.u32_at(32),
            status_class: h.u8_at(36),
            status_detail: h.u8_at(37),
            data,
        })
    }

    pub(super) fn write(&self, h: &mut Bhs) -> &Bytes {
        h.set_opcode(opcode::LOGIN_RESPONSE, false);
        h.set_flags(stage_flags(
            self.transit,
            self.continue_,
            self.csg,
            self.nsg,
        ));
        h.set_u8(2, self.version_max);
        h.set_u8(3, self.version_active);
        h.set_bytes(8, &self.isid);
        h.set_u16(14, self.tsih);
        h.set_u32(16, self.itt);
        h.set_u32(24, self.stat_sn);
        h.set_u32(28, self.exp_cmd_sn);
        h.set_u32(32, self.max_cmd_sn);
        h.set_u8(36, self.status_class);
        h.set_u8(37, self.status_detail);
        &self.data
    }
}

/// Text Response, RFC 7143 §11.11.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextResponse {
    pub final_: bool,
    pub continue_: bool,
    pub lun: u64,
    pub itt: u32,
    /// 0xffffffff on the final response, a tag while more text follows.
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data: Bytes,
}

impl TextResponse {
    pub(super) fn read(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, &'static str> {
        no_ahs(ahs)?;
        let flags = h.flags();
        if flags & F_BIT != 0 && flags & C_BIT != 0 {
            return Err("F and C bits");
        }
        Ok(Self {
            final_: flags & F_BIT != 0,
            continue_: flags & C_BIT != 0,
            lun: h.u64_at(8),
            itt: h.itt(),
            ttt: h.u32_at(20),
            stat_sn: h.u32_at(24),
            exp_cmd_sn: h.u32_at(28),
            max_cmd_sn: h.u32_at(32),
            data,
        })
    }

    pub(super) fn write(&self, h: &mut Bhs) -> &Bytes {
        h.set_opcode(opcode::TEXT_RESPONSE, false);
        h.set_flags(if self.final_ { F_BIT } else { 0 } | if self.continue_ { C_BIT } else { 0 });
        h.set_u64(8, self.lun);
        h.set_u32(16, self.itt);
        h.set_u32(20, self.ttt);
        h.set_u32(24, self.stat_sn);
        h.set_u32(28, self.exp_cmd_sn);
        h.set_u32(32, self.max_cmd_sn);
        &self.data
    }
}

/// SCSI Data-In, RFC 7143 §11.7.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataIn {
    /// F: last Data-In of the sequence (always set with `status`).
    pub final_: bool,
    /// A: acknowledge requested (ErrorRecoveryLevel > 0 only).
    pub ack: bool,
    /// S bit with the SCSI status: the command's status travels in this PDU,
    /// no SCSI Response follows (§11.7.3).
    pub status: Option<u8>,
    /// Residual, only with `status` (§11.7.5).
    pub residual: Residual,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    /// Valid only with `status`.
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
    pub data: Bytes,
}

impl DataIn {
    pub(super) fn read(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, &'static str> {
        no_ahs(ahs)?;
        let flags = h.flags();
        let final_ = flags & F_BIT != 0;
        let has_status = flags & 0x01 != 0;
        if has_status && !final_ {
            // §11.7.3: S may be set only with F.
            return Err("S bit without F bit");
        }
        let residual = Residual::from_flags(flags & 0x04 != 0, flags & 0x02 != 0, h.u32_at(44))?;
        if !has_status && residual != Residual::None {
            return Err("residual without S bit");
        }
        Ok(Self {
            final_,
            ack: flags & C_BIT != 0,
            status: has_status.then(|| h.u8_at(3)),
            residual,
            lun: h.u64_at(8),
            itt: h.itt(),
            ttt: h.u32_at(20),
            stat_sn: h.u32_at(24),
            exp_cmd_sn: h.u32_at(28),
            max_cmd_sn: h.u32_at(32),
            data_sn: h.u32_at(36),
            buffer_offset: h.u32_at(40),
            data,
        })
    }

    pub(super) fn write(&self, h: &mut Bhs) -> &Bytes {
        h.set_opcode(opcode::DATA_IN, false);
        let (o, u, count) = match self.status {
            Some(_) => self.residual.flags(),
            None => (false, false, 0),
        };
        let flags = if self.final_ || self.status.is_some() {
            F_BIT
        } else {
            0
        } | if self.ack { C_BIT } else { 0 }
            | if o { 0x04 } else { 0 }
            | if u { 0x02 } else { 0 }
            | if self.status.is_some() { 0x01 } else { 0 };
        h.set_flags(flags);
        h.set_u8(3, self.status.unwrap_or(0));
        h.set_u64(8, self.lun);
        h.set_u32(16, self.itt);
        h.set_u32(20, self.ttt);
        h.set_u32(24, self.stat_sn);
        h.set_u32(28, self.exp_cmd_sn);
        h.set_u32(32, self.max_cmd_sn);
        h.set_u32(36, self.data_sn);
        h.set_u32(40, self.buffer_offset);
        h.set_u32(44, count);
        &self.data
    }
}

/// Logout Response, RFC 7143 §11.15.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutResponse {
    /// 0 closed successfully, 1 CID not found, 2 recovery not supported,
    /// 3 cleanup failed (§11.15.1).
    pub response: u8,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub time2wait: u16,
    pub time2retain: u16,
}

impl LogoutResponse {
    pub(super) fn read(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, &'static str> {
        no_ahs(ahs)?;
        no_data(&data)?;
        Ok(Self {
            response: h.u8_at(2),
            itt: h.itt(),
            stat_sn: h.u32_at(24),
            exp_cmd_sn: h.u32_at(28),
            max_cmd_sn: h.u32_at(32),
            time2wait: h.u16_at(40),
            time2retain: h.u16_at(42),
        })
    }

    pub(super) fn write(&self, h: &mut Bhs) {
        h.set_opcode(opcode::LOGOUT_RESPONSE, false);
        h.set_flags(F_BIT);
        h.set_u8(2, self.response);
        h.set_u32(16, self.itt);
        h.set_u32(24, self.stat_sn);
        h.set_u32(28, self.exp_cmd_sn);
        h.set_u32(32, self.max_cmd_sn);
        h.set_u16(40, self.time2wait);
        h.set_u16(42, self.time2retain);
    }
}

/// Ready To Transfer, RFC 7143 §11.8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct R2t {
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub r2t_sn: u32,
    pub buffer_offset: u32,
    pub desired_len: u32,
}

impl R2t {
    pub(super) fn read(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, &'static str> {
        no_ahs(ahs)?;
        no_data(&data)?;
        Ok(Self {
            lun: h.u64_at(8),
            itt: h.itt(),
            ttt: h.u32_at(20),
            stat_sn: h.u32_at(24),
            exp_cmd_sn: h.u32_at(28),
            max_cmd_sn: h.u32_at(32),
            r2t_sn: h.u32_at(36),
            buffer_offset: h.u32_at(40),
            desired_len: h.u32_at(44),
        })
    }

    pub(super) fn write(&self, h: &mut Bhs) {
        h.set_opcode(opcode::R2T, false);
        h.set_flags(F_BIT);
        h.set_u64(8, self.lun);
        h.set_u32(16, self.itt);
        h.set_u32(20, self.ttt);
        h.set_u32(24, self.stat_sn);
        h.set_u32(28, self.exp_cmd_sn);
        h.set_u32(32, self.max_cmd_sn);
        h.set_u32(36, self.r2t_sn);
        h.set_u32(40, self.buffer_offset);
        h.set_u32(44, self.desired_len);
    }
}

/// Asynchronous Message, RFC 7143 §11.9.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsyncMessage {
    pub lun: u64,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    /// AsyncEvent (§11.9.1): 0 SCSI async event, 1 logout request, 2 drop
    /// connection, 3 drop all connections, 4 request renegotiation.
    pub event: u8,
    pub vcode: u8,
    pub parameter1: u16,
    pub parameter2: u16,
    pub parameter3: u16,
    /// SenseLength + sense data + iSCSI event data.
    pub data: Bytes,
}

impl AsyncMessage {
    pub(super) fn read(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, &'static str> {
        no_ahs(ahs)?;
        Ok(Self {
            lun: h.u64_at(8),
            stat_sn: h.u32_at(24),
            exp_cmd_sn: h.u32_at(28),
            max_cmd_sn: h.u32_at(32),
            event: h.u8_at(36),
            vcode: h.u8_at(37),
            parameter1: h.u16_at(38),
            parameter2: h.u16_at(40),
            parameter3: h.u16_at(42),
            data,
        })
    }

    pub(super) fn write(&self, h: &mut Bhs) -> &Bytes {
        h.set_opcode(opcode::ASYNC_MESSAGE, false);
        h.set_flags(F_BIT);
        h.set_u64(8, self.lun);
        h.set_u32(16, u32::MAX);
        h.set_u32(24, self.stat_sn);
        h.set_u32(28, self.exp_cmd_sn);
        h.set_u32(32, self.max_cmd_sn);
        h.set_u8(36, self.event);
        h.set_u8(37, self.vcode);
        h.set_u16(38, self.parameter1);
        h.set_u16(40, self.parameter2);
        h.set_u16(42, self.parameter3);
        &self.data
    }
}

/// Reject, RFC 7143 §11.17.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// Reason code (§11.17.1); see [`RejectReason`].
    pub reason: u8,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data_sn: u32,
    /// The complete header of the rejected PDU.
    pub header: Bytes,
}

impl Reject {
    /// A Reject of the PDU whose header is `rejected`. Reject never advances
    /// StatSN state of its own; the caller passes the connection's numbers.
    pub fn of(reason: RejectReason, rejected: &Bhs) -> Self {
        Self {
            reason: reason as u8,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            data_sn: 0,
            header: Bytes::copy_from_slice(&rejected.0),
        }
    }

    pub(super) fn read(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, &'static str> {
        no_ahs(ahs)?;
        if data.len() < BHS_LEN {
            return Err("rejected header");
        }
        Ok(Self {
            reason: h.u8_at(2),
            stat_sn: h.u32_at(24),
            exp_cmd_sn: h.u32_at(28),
            max_cmd_sn: h.u32_at(32),
            data_sn: h.u32_at(36),
            header: data,
        })
    }

    pub(super) fn write(&self, h: &mut Bhs) -> &Bytes {
        h.set_opcode(opcode::REJECT, false);
        h.set_flags(F_BIT);
        h.set_u8(2, self.reason);
        h.set_u32(16, u32::MAX);
        h.set_u32(24, self.stat_sn);
        h.set_u32(28, self.exp_cmd_sn);
        h.set_u32(32, self.max_cmd_sn);
        h.set_u32(36, self.data_sn);
        &self.header
    }
}
