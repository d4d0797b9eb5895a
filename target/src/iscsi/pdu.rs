//! iSCSI PDU framing and typed PDUs, sans-IO (RFC 7143 §11).
//!
//! A PDU on the wire is (RFC 7143 §11.2):
//!
//! ```text
//! BHS (48) | AHS (TotalAHSLength*4) | HeaderDigest (0|4)
//!          | Data segment (DataSegmentLength) | pad to 4 | DataDigest (0|4)
//! ```
//!
//! The data digest is present only when the data segment is not empty.
//! Decoding follows mini-redis: [`check`] finds the length of the next PDU
//! without allocating (`Ok(None)` while incomplete), then [`parse`] builds
//! the typed value from exactly that many bytes.
//!
//! Invariants:
//! - the header digest is verified before any header field is trusted, so a
//!   corrupted DataSegmentLength is reported as a digest error;
//! - a DataSegmentLength above the receiver's MaxRecvDataSegmentLength is
//!   refused before waiting for (or buffering) the data, and without a
//!   header digest before waiting for the AHS too;
//! - every error after framing carries the offending header, so the
//!   connection can answer with a Reject (RFC 7143 §11.17) and go on; only
//!   header digest and length errors mean "close the connection".

mod initiator;
#[cfg(test)]
pub(crate) mod strategy;
mod target;

pub use initiator::{
    DataOut, LoginRequest, LogoutRequest, NopOut, ScsiCommand, SnackRequest, TaskAttr,
    TaskMgmtRequest, TextRequest, TmfFunction,
};
pub use target::tmf_response;
pub use target::{
    AsyncMessage, DataIn, LoginResponse, LogoutResponse, NopIn, R2t, Reject, Residual,
    ScsiResponse, TaskMgmtResponse, TextResponse,
};

use bytes::{BufMut, Bytes, BytesMut};

use super::bhs::Bhs;
use super::digest;
use super::limits::{BHS_LEN, DIGEST_LEN, MAX_AHS_BYTES, MAX_DATA_SEGMENT_FIELD};

/// Opcodes of RFC 7143 §11.2.1.2.
pub mod opcode {
    pub const NOP_OUT: u8 = 0x00;
    pub const SCSI_COMMAND: u8 = 0x01;
    pub const TASK_MGMT_REQUEST: u8 = 0x02;
    pub const LOGIN_REQUEST: u8 = 0x03;
    pub const TEXT_REQUEST: u8 = 0x04;
    pub const DATA_OUT: u8 = 0x05;
    pub const LOGOUT_REQUEST: u8 = 0x06;
    pub const SNACK_REQUEST: u8 = 0x10;
    pub const NOP_IN: u8 = 0x20;
    pub const SCSI_RESPONSE: u8 = 0x21;
    pub const TASK_MGMT_RESPONSE: u8 = 0x22;
    pub const LOGIN_RESPONSE: u8 = 0x23;
    pub const TEXT_RESPONSE: u8 = 0x24;
    pub const DATA_IN: u8 = 0x25;
    pub const LOGOUT_RESPONSE: u8 = 0x26;
    pub const R2T: u8 = 0x31;
    pub const ASYNC_MESSAGE: u8 = 0x32;
    pub const REJECT: u8 = 0x3f;
}

/// Reject reasons, RFC 7143 §11.17.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RejectReason {
    DataDigestError = 0x02,
    SnackReject = 0x03,
    ProtocolError = 0x04,
    CommandNotSupported = 0x05,
    ImmediateCommandReject = 0x06,
    TaskInProgress = 0x07,
    InvalidDataAck = 0x08,
    InvalidPduField = 0x09,
    LongOpReject = 0x0a,
    NegotiationReset = 0x0b,
    WaitingForLogout = 0x0c,
}

/// Which digests are on for one direction of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

/// What a receiver accepts: its digests and its MaxRecvDataSegmentLength.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameConfig {
    pub digests: Digests,
    /// Largest data segment accepted (receive) or allowed (send), in bytes.
    pub max_data_segment_bytes: u32,
}

impl FrameConfig {
    /// The login-phase configuration: no digests, 8192-byte segments
    /// (RFC 7143 §13.12).
    pub fn login() -> Self {
        Self {
            digests: Digests::default(),
            max_data_segment_bytes: super::limits::LOGIN_MAX_RECV_DATA_SEGMENT,
        }
    }
}

/// A decoding error, each saying what the connection must do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    #[error("header digest mismatch: computed {computed:#010x}, received {received:#010x}")]
    HeaderDigest { computed: u32, received: u32 },
    #[error("data segment of {len} bytes exceeds MaxRecvDataSegmentLength {max} ({header:?})")]
    DataSegmentTooLong { header: Bhs, len: u32, max: u32 },
    #[error(
        "data digest mismatch: computed {computed:#010x}, received {received:#010x} ({header:?})"
    )]
    DataDigest {
        header: Bhs,
        computed: u32,
        received: u32,
    },
    #[error("unsupported opcode {opcode:#04x}")]
    UnknownOpcode { header: Bhs, opcode: u8 },
    #[error("invalid PDU field {field} ({header:?})")]
    InvalidField { header: Bhs, field: &'static str },
}

/// What a connection does after a [`PduError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The stream can no longer be trusted: drop the connection.
    Close,
    /// The PDU was consumed; answer with a Reject carrying `header` and keep
    /// the connection.
    Reject { reason: RejectReason, header: Bhs },
}

impl PduError {
    /// The RFC's answer to this error (RFC 7143 §7.8, §11.17).
    pub fn disposition(&self) -> Disposition {
        match *self {
            // A header we cannot trust means we cannot find the next PDU.
            PduError::HeaderDigest { .. } => Disposition::Close,
            // Refused before reading the data, so the stream is out of sync.
            PduError::DataSegmentTooLong { .. } => Disposition::Close,
            PduError::DataDigest { header, .. } => Disposition::Reject {
                reason: RejectReason::DataDigestError,
                header,
            },
            PduError::UnknownOpcode { header, .. } => Disposition::Reject {
                reason: RejectReason::CommandNotSupported,
                header,
            },
            PduError::InvalidField { header, .. } => Disposition::Reject {
                reason: RejectReason::InvalidPduField,
                header,
            },
        }
    }
}

/// An encoding error: the session asked for a PDU the peer may not receive.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("data segment of {len} bytes exceeds the peer's MaxRecvDataSegmentLength {max}")]
    DataSegmentTooLong { len: usize, max: u32 },
    #[error("additional header segments of {len} bytes exceed {MAX_AHS_BYTES}")]
    AhsTooLong { len: usize },
    #[error("CDB of {len} bytes is shorter than 16")]
    CdbTooShort { len: usize },
}

/// Any iSCSI PDU, initiator or target side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pdu {
    NopOut(NopOut),
    ScsiCommand(ScsiCommand),
    TaskMgmtRequest(TaskMgmtRequest),
    LoginRequest(LoginRequest),
    TextRequest(TextRequest),
    DataOut(DataOut),
    LogoutRequest(LogoutRequest),
    SnackRequest(SnackRequest),
    NopIn(NopIn),
    ScsiResponse(ScsiResponse),
    TaskMgmtResponse(TaskMgmtResponse),
    LoginResponse(LoginResponse),
    TextResponse(TextResponse),
    DataIn(DataIn),
    LogoutResponse(LogoutResponse),
    R2t(R2t),
    AsyncMessage(AsyncMessage),
    Reject(Reject),
}

/// Padding needed after `len` bytes to reach a 4-byte boundary.
pub fn pad_len(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// Byte offsets of one framed PDU, computed from its BHS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    ahs_end: usize,
    header_end: usize,
    data_len: usize,
    padded_data_end: usize,
    total: usize,
}

fn layout(bhs: &Bhs, digests: Digests) -> Layout {
    let ahs_end = BHS_LEN + bhs.total_ahs_bytes();
    let header_end = ahs_end + if digests.header { DIGEST_LEN } else { 0 };
    // DataSegmentLength is 24 bits, so these sums stay far below usize::MAX.
    let data_len = bhs.data_segment_len() as usize;
    let padded_data_end = header_end + data_len + pad_len(data_len);
    let total = padded_data_end
        + if digests.data && data_len > 0 {
            DIGEST_LEN
        } else {
            0
        };
    Layout {
        ahs_end,
        header_end,
        data_len,
        padded_data_end,
        total,
    }
}

fn digest_at(buf: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; DIGEST_LEN] = buf.get(at..at.checked_add(DIGEST_LEN)?)?.try_into().ok()?;
    Some(digest::from_wire(bytes))
}

fn bhs_of(buf: &[u8]) -> Option<Bhs> {
    let bytes: [u8; BHS_LEN] = buf.get(..BHS_LEN)?.try_into().ok()?;
    Some(Bhs(bytes))
}

/// Length of the complete PDU at the start of `buf`, `Ok(None)` if more bytes
/// are needed. Verifies the header digest and the data segment bound; does
/// not look at the data.
pub fn check(buf: &[u8], cfg: &FrameConfig) -> Result<Option<usize>, PduError> {
    let Some(bhs) = bhs_of(buf) else {
        return Ok(None);
    };
    let at = layout(&bhs, cfg.digests);
    let len = bhs.data_segment_len();
    let too_long = len > cfg.max_data_segment_bytes;
    let refuse = || PduError::DataSegmentTooLong {
        header: bhs,
        len,
        max: cfg.max_data_segment_bytes,
    };
    // Without a header digest the BHS is all there is to trust: refuse at
    // once rather than wait for the (up to 1020-byte) AHS garbage may claim.
    if too_long && !cfg.digests.header {
        return Err(refuse());
    }
    if buf.len() < at.header_end {
        return Ok(None);
    }
    if cfg.digests.header {
        let header = buf.get(..at.ahs_end).unwrap_or_default();
        let computed = digest::crc32c_of(&[header]);
        let received = digest_at(buf, at.ahs_end).unwrap_or(!computed);
        if computed != received {
            return Err(PduError::HeaderDigest { computed, received });
        }
    }
    if too_long {
        return Err(refuse());
    }
    Ok((buf.len() >= at.total).then_some(at.total))
}

/// Parses one complete PDU; `frame` must be exactly the length [`check`]
/// returned. Verifies the data digest and every field.
pub fn parse(frame: Bytes, cfg: &FrameConfig) -> Result<Pdu, PduError> {
    let bhs = bhs_of(&frame).ok_or(PduError::InvalidField {
        header: Bhs::default(),
        field: "BHS length",
    })?;
    let at = layout(&bhs, cfg.digests);
    let invalid = |field| PduError::InvalidField { header: bhs, field };
    if frame.len() != at.total {
        return Err(invalid("frame length"));
    }
    if cfg.digests.data && at.data_len > 0 {
        let covered = frame
            .get(at.header_end..at.padded_data_end)
            .ok_or(invalid("data segment"))?;
        let computed = digest::crc32c_of(&[covered]);
        let received = digest_at(&frame, at.padded_data_end).ok_or(invalid("data digest"))?;
        if computed != received {
            return Err(PduError::DataDigest {
                header: bhs,
                computed,
                received,
            });
        }
    }
    let ahs = frame.get(BHS_LEN..at.ahs_end).ok_or(invalid("AHS"))?;
    let data_end = at.header_end + at.data_len;
    if frame.get(at.header_end..data_end).is_none() {
        return Err(invalid("data segment"));
    }
    let data = frame.slice(at.header_end..data_end);
    let typed = match bhs.opcode_raw() {
        opcode::NOP_OUT => NopOut::read(&bhs, ahs, data).map(Pdu::NopOut),
        opcode::SCSI_COMMAND => ScsiCommand::read(&bhs, ahs, data).map(Pdu::ScsiCommand),
        opcode::TASK_MGMT_REQUEST => {
            TaskMgmtRequest::read(&bhs, ahs, data).map(Pdu::TaskMgmtRequest)
        }
        opcode::LOGIN_REQUEST => LoginRequest::read(&bhs, ahs, data).map(Pdu::LoginRequest),
        opcode::TEXT_REQUEST => TextRequest::read(&bhs, ahs, data).map(Pdu::TextRequest),
        opcode::DATA_OUT => DataOut::read(&bhs, ahs, data).map(Pdu::DataOut),
        opcode::LOGOUT_REQUEST => LogoutRequest::read(&bhs, ahs, data).map(Pdu::LogoutRequest),
        opcode::SNACK_REQUEST => SnackRequest::read(&bhs, ahs, data).map(Pdu::SnackRequest),
        opcode::NOP_IN => NopIn::read(&bhs, ahs, data).map(Pdu::NopIn),
        opcode::SCSI_RESPONSE => ScsiResponse::read(&bhs, ahs, data).map(Pdu::ScsiResponse),
        opcode::TASK_MGMT_RESPONSE => {
            TaskMgmtResponse::read(&bhs, ahs, data).map(Pdu::TaskMgmtResponse)
        }
        opcode::LOGIN_RESPONSE => LoginResponse::read(&bhs, ahs, data).map(Pdu::LoginResponse),
        opcode::TEXT_RESPONSE => TextResponse::read(&bhs, ahs, data).map(Pdu::TextResponse),
        opcode::DATA_IN => DataIn::read(&bhs, ahs, data).map(Pdu::DataIn),
        opcode::LOGOUT_RESPONSE => LogoutResponse::read(&bhs, ahs, data).map(Pdu::LogoutResponse),
        opcode::R2T => R2t::read(&bhs, ahs, data).map(Pdu::R2t),
        opcode::ASYNC_MESSAGE => AsyncMessage::read(&bhs, ahs, data).map(Pdu::AsyncMessage),
        opcode::REJECT => Reject::read(&bhs, ahs, data).map(Pdu::Reject),
        other => {
            return Err(PduError::UnknownOpcode {
                header: bhs,
                opcode: other,
            })
        }
    };
    typed.map_err(invalid)
}

/// Takes one PDU off the front of `buf`: `Ok(None)` while incomplete. On a
/// [`Disposition::Reject`] error the offending PDU has been consumed.
pub fn decode(buf: &mut BytesMut, cfg: &FrameConfig) -> Result<Option<Pdu>, PduError> {
    match check(buf, cfg)? {
        None => Ok(None),
        Some(len) => parse(buf.split_to(len).freeze(), cfg).map(Some),
    }
}

/// Rejects an AHS on PDUs that define none (RFC 7143 §11.2.1.4: only the
/// SCSI Command carries AHS).
pub(crate) fn no_ahs(ahs: &[u8]) -> Result<(), &'static str> {
    if ahs.is_empty() {
        Ok(())
    } else {
        Err("TotalAHSLength")
    }
}

/// Rejects a data segment on PDUs that define none.
pub(crate) fn no_data(data: &Bytes) -> Result<(), &'static str> {
    if data.is_empty() {
        Ok(())
    } else {
        Err("DataSegmentLength")
    }
}

impl Pdu {
    /// Fills the BHS fields of this PDU and returns (AHS, data) to append.
    fn header(&self) -> Result<(Bhs, Vec<u8>, &Bytes), EncodeError> {
        static EMPTY: Bytes = Bytes::new();
        let mut h = Bhs::default();
        let mut ahs = Vec::new();
        let data = match self {
            Pdu::NopOut(p) => p.write(&mut h),
            Pdu::ScsiCommand(p) => {
                ahs = p.write(&mut h)?;
                &p.data
            }
            Pdu::TaskMgmtRequest(p) => {
                p.write(&mut h);
                &EMPTY
            }
            Pdu::LoginRequest(p) => p.write(&mut h),
            Pdu::TextRequest(p) => p.write(&mut h),
            Pdu::DataOut(p) => p.write(&mut h),
            Pdu::LogoutRequest(p) => {
                p.write(&mut h);
                &EMPTY
            }
            Pdu::SnackRequest(p) => {
                p.write(&mut h);
                &EMPTY
            }
            Pdu::NopIn(p) => p.write(&mut h),
            Pdu::ScsiResponse(p) => p.write(&mut h),
            Pdu::TaskMgmtResponse(p) => {
                p.write(&mut h);
                &EMPTY
            }
            Pdu::LoginResponse(p) => p.write(&mut h),
            Pdu::TextResponse(p) => p.write(&mut h),
            Pdu::DataIn(p) => p.write(&mut h),
            Pdu::LogoutResponse(p) => {
                p.write(&mut h);
                &EMPTY
            }
            Pdu::R2t(p) => {
                p.write(&mut h);
                &EMPTY
            }
            Pdu::AsyncMessage(p) => p.write(&mut h),
            Pdu::Reject(p) => p.write(&mut h),
        };
        Ok((h, ahs, data))
    }

    /// The BHS this PDU encodes to, with its lengths filled in (the header
    /// a Reject of this PDU echoes). Cheap: the data segment is not copied.
    pub fn bhs(&self) -> Bhs {
        let Ok((mut h, ahs, data)) = self.header() else {
            return Bhs::default();
        };
        h.set_total_ahs_words(u8::try_from(ahs.len() / 4).unwrap_or(u8::MAX));
        h.set_data_segment_len(
            u32::try_from(data.len())
                .unwrap_or(MAX_DATA_SEGMENT_FIELD)
                .min(MAX_DATA_SEGMENT_FIELD),
        );
        h
    }

    /// Appends the wire form of this PDU to `dst`. `cfg` is the peer's
    /// receive configuration: its digests and its MaxRecvDataSegmentLength.
    pub fn encode(&self, dst: &mut BytesMut, cfg: &FrameConfig) -> Result<(), EncodeError> {
        let (mut h, ahs, data) = self.header()?;
        let max = cfg.max_data_segment_bytes.min(MAX_DATA_SEGMENT_FIELD);
        let data_len = u32::try_from(data.len())
            .ok()
            .filter(|len| *len <= max)
            .ok_or(EncodeError::DataSegmentTooLong {
                len: data.len(),
                max,
            })?;
        if ahs.len() > MAX_AHS_BYTES || ahs.len() % 4 != 0 {
            return Err(EncodeError::AhsTooLong { len: ahs.len() });
        }
        let ahs_words =
            u8::try_from(ahs.len() / 4).map_err(|_| EncodeError::AhsTooLong { len: ahs.len() })?;
        h.set_total_ahs_words(ahs_words);
        h.set_data_segment_len(data_len);

        let start = dst.len();
        dst.reserve(BHS_LEN + ahs.len() + 2 * DIGEST_LEN + data.len() + 3);
        dst.put_slice(&h.0);
        dst.put_slice(&ahs);
        if cfg.digests.header {
            let crc = digest::crc32c_of(&[dst.get(start..).unwrap_or_default()]);
            dst.put_slice(&digest::to_wire(crc));
        }
        if !data.is_empty() {
            let pad = [0u8; 3];
            let pad = pad.get(..pad_len(data.len())).unwrap_or_default();
            dst.put_slice(data);
            dst.put_slice(pad);
            if cfg.digests.data {
                let crc = digest::crc32c_of(&[data, pad]);
                dst.put_slice(&digest::to_wire(crc));
            }
        }
        Ok(())
    }

    /// Fills StatSN, ExpCmdSN and MaxCmdSN of a target PDU with the
    /// connection's and session's current numbers, and says whether the
    /// PDU consumes `stat_sn` (the caller then advances it). RFC 7143
    /// §4.2.2.2 / §11: every status-bearing response takes a StatSN; an R2T
    /// and an unsolicited NOP-In (ITT 0xffffffff) carry the next one without
    /// taking it; a Data-In without status has no StatSN at all. Initiator
    /// PDUs are left alone.
    pub fn stamp(&mut self, stat_sn: u32, exp_cmd_sn: u32, max_cmd_sn: u32) -> bool {
        let (slot, takes): (Option<&mut u32>, bool) = match self {
            Pdu::NopIn(p) => {
                let takes = p.itt != u32::MAX;
                p.exp_cmd_sn = exp_cmd_sn;
                p.max_cmd_sn = max_cmd_sn;
                (Some(&mut p.stat_sn), takes)
            }
            Pdu::ScsiResponse(p) => {
                p.exp_cmd_sn = exp_cmd_sn;
                p.max_cmd_sn = max_cmd_sn;
                (Some(&mut p.stat_sn), true)
            }
            Pdu::TaskMgmtResponse(p) => {
                p.exp_cmd_sn = exp_cmd_sn;
                p.max_cmd_sn = max_cmd_sn;
                (Some(&mut p.stat_sn), true)
            }
            Pdu::LoginResponse(p) => {
                p.exp_cmd_sn = exp_cmd_sn;
                p.max_cmd_sn = max_cmd_sn;
                (Some(&mut p.stat_sn), true)
            }
            Pdu::TextResponse(p) => {
                p.exp_cmd_sn = exp_cmd_sn;
                p.max_cmd_sn = max_cmd_sn;
                (Some(&mut p.stat_sn), true)
            }
            Pdu::DataIn(p) => {
                p.exp_cmd_sn = exp_cmd_sn;
                p.max_cmd_sn = max_cmd_sn;
                if p.status.is_some() {
                    (Some(&mut p.stat_sn), true)
                } else {
                    p.stat_sn = 0;
                    (None, false)
                }
            }
            Pdu::LogoutResponse(p) => {
                p.exp_cmd_sn = exp_cmd_sn;
                p.max_cmd_sn = max_cmd_sn;
                (Some(&mut p.stat_sn), true)
            }
            Pdu::R2t(p) => {
                p.exp_cmd_sn = exp_cmd_sn;
                p.max_cmd_sn = max_cmd_sn;
                (Some(&mut p.stat_sn), false)
            }
            Pdu::AsyncMessage(p) => {
                p.exp_cmd_sn = exp_cmd_sn;
                p.max_cmd_sn = max_cmd_sn;
                (Some(&mut p.stat_sn), true)
            }
            Pdu::Reject(p) => {
                p.exp_cmd_sn = exp_cmd_sn;
                p.max_cmd_sn = max_cmd_sn;
                (Some(&mut p.stat_sn), true)
            }
            _ => (None, false),
        };
        if let Some(slot) = slot {
            *slot = stat_sn;
        }
        takes
    }

    /// The Initiator Task Tag this PDU carries (0xffffffff where the PDU
    /// has none).
    pub fn itt(&self) -> u32 {
        match self {
            Pdu::NopOut(p) => p.itt,
            Pdu::ScsiCommand(p) => p.itt,
            Pdu::TaskMgmtRequest(p) => p.itt,
            Pdu::LoginRequest(p) => p.itt,
            Pdu::TextRequest(p) => p.itt,
            Pdu::DataOut(p) => p.itt,
            Pdu::LogoutRequest(p) => p.itt,
            Pdu::SnackRequest(p) => p.itt,
            Pdu::NopIn(p) => p.itt,
            Pdu::ScsiResponse(p) => p.itt,
            Pdu::TaskMgmtResponse(p) => p.itt,
            Pdu::LoginResponse(p) => p.itt,
            Pdu::TextResponse(p) => p.itt,
            Pdu::DataIn(p) => p.itt,
            Pdu::LogoutResponse(p) => p.itt,
            Pdu::R2t(p) => p.itt,
            Pdu::AsyncMessage(_) | Pdu::Reject(_) => u32::MAX,
        }
    }
}

#[cfg(test)]
mod tests;
