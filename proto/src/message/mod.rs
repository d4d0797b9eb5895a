//! The message layer: typed messages over verified frames.
//!
//! A [`Packet`] is a [`Message`] plus the header fields every frame carries
//! (session, epoch, io_seq). Each message maps to exactly one header shape
//! and one payload encoding, and decoding is strict: header fields a message
//! does not use must be zero, unknown flags and trailing bytes are refused.
//! So every packet has one encoding and `decode(encode(p)) == p`.
//!
//! Replies set [`REPLY_BIT`] on the request's opcode and echo its session,
//! epoch and io_seq. A reply whose status is not `Ok` is an [`ErrorReply`]
//! (its payload a detail string), whatever its opcode, even one unknown
//! here; the two exceptions are the reply to `Hello` with status
//! `VersionMismatch`, which is [`Message::VersionMismatch`] naming the
//! replier's supported versions, and the reply to `Read` with status
//! `ChecksumError`, which is [`Message::ChecksumError`] naming the bad
//! blocks.
//!
//! [`MessageError`]s are not fatal, unlike frame errors: the frame was
//! intact, so the stream is still in sync. [`MessageError::reply_to`] builds
//! the error reply (`UnknownOpcode`, `BadRequest`, `VersionMismatch`) with
//! the request's io_seq, and the connection goes on.

mod admin;
mod checksum;
mod decode;
mod encode;
mod handshake;
mod integrity;
mod io;
mod membership;
mod rebuild;

pub use admin::{SnapshotInfo, SnapshotListRequest, SnapshotListing, StatusReport};
pub use checksum::ChecksumError;
pub use handshake::{Auth, Hello, HelloAck, ReplicaState, VersionRange};
pub use integrity::DigestReply;
pub use io::{Extent, Write, FLAG_FUA};
pub use membership::{Member, Membership};
pub use rebuild::{
    ByteRange, RebuildAbort, RebuildChunk, RebuildDone, RebuildProgress, RebuildSource,
    RebuildStart,
};

use bytes::{Bytes, BytesMut};

use crate::frame::{encode_frame, EncodeError, Frame};
use crate::header::{FrameHeader, PROTOCOL_VERSION};
use crate::limits::{MAX_DETAIL_BYTES, MAX_IO_BYTES};
use crate::opcode::{Opcode, REPLY_BIT};
use crate::status::Status;
use crate::wire::{Name, PayloadError};

/// Every message of protocol version 1. Requests first, then replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Open the session (target → replica).
    Hello(Hello),
    /// Write data.
    Write(Write),
    /// Read an extent of at most [`MAX_IO_BYTES`].
    Read(Extent),
    /// Make every acknowledged write durable.
    Flush,
    /// Deallocate an extent.
    Unmap(Extent),
    /// Zero an extent.
    WriteZeroes(Extent),
    /// Create a snapshot at this request's io_seq.
    SnapshotCreate(Name),
    /// Destroy a snapshot.
    SnapshotDestroy(Name),
    /// List snapshots (one page).
    SnapshotList(SnapshotListRequest),
    /// Grow the volume to this size, or undo a grow that failed short of
    /// quorum: a smaller size is taken only when nothing but zeros lies
    /// beyond it (else `InvalidArgument`).
    Resize {
        /// New size in bytes.
        new_size_bytes: u64,
    },
    /// Ask for a [`StatusReport`].
    Status,
    /// Persist this membership record (a higher generation than held).
    MembershipSet(Membership),
    /// Ask for the membership record held.
    MembershipGet,
    /// Liveness probe (either direction).
    Heartbeat,
    /// Start a rebuild.
    RebuildStart(RebuildStart),
    /// Rebuild data (one-way).
    RebuildChunk(RebuildChunk),
    /// Rebuild progress (one-way).
    RebuildProgress(RebuildProgress),
    /// Rebuild finished (one-way).
    RebuildDone(RebuildDone),
    /// Rebuild given up (one-way).
    RebuildAbort(RebuildAbort),
    /// The volume's rebuild rate limit on this replica (owning session).
    RebuildThrottle {
        /// Bytes per second its rebuilds may pull; 0: no limit of the
        /// volume's own (the replica daemon's limit still applies).
        bytes_per_second: u64,
    },
    /// The digest of an extent of the live volume, at most
    /// [`MAX_DIGEST_BYTES`](crate::limits::MAX_DIGEST_BYTES) (scrub).
    Digest(Extent),
    /// Reply to `Hello`: accepted.
    HelloAck(HelloAck),
    /// Reply to `Hello`: no version in common; the replier's range.
    VersionMismatch(VersionRange),
    /// Reply to `Read`: 1 byte to [`MAX_IO_BYTES`] of data.
    ReadData(Bytes),
    /// Reply to `Read` (status `ChecksumError`): blocks of the read failed
    /// their checksum on the replier; which ones, never data.
    ChecksumError(ChecksumError),
    /// Reply to `SnapshotList`.
    SnapshotListing(SnapshotListing),
    /// Reply to `Status`.
    StatusReport(StatusReport),
    /// Reply to `MembershipGet` (generation 0: none held).
    Membership(Membership),
    /// Reply to `Digest`.
    RangeDigest(DigestReply),
    /// Empty success reply to an opcode whose [`Opcode::reply_kind`] is
    /// [`ReplyKind::Ack`].
    Ack(Opcode),
    /// Failure reply to any request.
    Error(ErrorReply),
}

/// A failed request's reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    /// The request's raw opcode (without [`REPLY_BIT`]); may be one the
    /// replier did not know.
    pub request_opcode: u16,
    /// Why; never [`Status::Ok`].
    pub status: Status,
    /// For logs; at most [`MAX_DETAIL_BYTES`] bytes.
    pub detail: String,
}

impl ErrorReply {
    /// An error reply, with `detail` cut to [`MAX_DETAIL_BYTES`] on a
    /// character boundary.
    pub fn new(request_opcode: u16, status: Status, detail: impl Into<String>) -> ErrorReply {
        let mut detail = detail.into();
        if detail.len() > MAX_DETAIL_BYTES {
            let mut cut = MAX_DETAIL_BYTES;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
        }
        ErrorReply {
            request_opcode: request_opcode & !REPLY_BIT,
            status,
            detail,
        }
    }
}

/// A message with the header fields every frame carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Session chosen by the target's `Hello`.
    pub session_id: u64,
    /// Target epoch (fencing).
    pub epoch: u64,
    /// Request order and tag; echoed by the reply.
    pub io_seq: u64,
    /// The message.
    pub message: Message,
}

/// Why a verified frame is not a message this side can act on. Not fatal:
/// answer with [`MessageError::reply_to`] and keep the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Framed with a protocol version this side does not speak.
    #[error("frame version {version} not supported (opcode {opcode:#06x})")]
    UnsupportedVersion {
        /// The frame's version.
        version: u16,
        /// The frame's raw opcode.
        opcode: u16,
    },
    /// An opcode this side does not know.
    #[error("unknown opcode {opcode:#06x}")]
    UnknownOpcode {
        /// The raw opcode (with [`REPLY_BIT`] if it was a reply).
        opcode: u16,
    },
    /// A known opcode with a header or payload that breaks its rules.
    #[error("malformed message, opcode {opcode:#06x}: {source}")]
    Malformed {
        /// The raw opcode.
        opcode: u16,
        /// What is wrong.
        #[source]
        source: PayloadError,
    },
}

impl MessageError {
    /// The status to answer with.
    pub fn status(&self) -> Status {
        match self {
            MessageError::UnsupportedVersion { .. } => Status::VersionMismatch,
            MessageError::UnknownOpcode { .. } => Status::UnknownOpcode,
            MessageError::Malformed { .. } => Status::BadRequest,
        }
    }

    /// The error reply to the frame whose header is `request`, or `None` if
    /// that frame was itself a reply (never answer a reply: two peers would
    /// bounce errors forever).
    pub fn reply_to(&self, request: &FrameHeader) -> Option<Packet> {
        if request.opcode & REPLY_BIT != 0 {
            return None;
        }
        let message = if request.opcode == Opcode::Hello.to_u16()
            && self.status() == Status::VersionMismatch
        {
            Message::VersionMismatch(VersionRange::SUPPORTED)
        } else {
            Message::Error(ErrorReply::new(
                request.opcode,
                self.status(),
                self.to_string(),
            ))
        };
        Some(Packet {
            session_id: request.session_id,
            epoch: request.epoch,
            io_seq: request.io_seq,
            message,
        })
    }
}

impl Packet {
    /// A reply to this packet: same session, epoch and io_seq.
    pub fn reply(&self, message: Message) -> Packet {
        Packet {
            session_id: self.session_id,
            epoch: self.epoch,
            io_seq: self.io_seq,
            message,
        }
    }

    /// Appends the encoded packet to `dst` (one reservation; data payloads
    /// copied once). On error `dst` is unchanged.
    pub fn encode(&self, dst: &mut BytesMut, max_payload_bytes: u32) -> Result<(), EncodeError> {
        let shape = self
            .message
            .shape()
            .map_err(|source| EncodeError::Invalid {
                opcode: self.message.wire_opcode(),
                source,
            })?;
        let header = FrameHeader {
            version: PROTOCOL_VERSION,
            opcode: shape.opcode,
            flags: shape.flags,
            status: shape.status,
            session_id: self.session_id,
            epoch: self.epoch,
            io_seq: self.io_seq,
            offset: shape.offset,
            length: shape.length,
        };
        encode_frame(
            &header,
            dst,
            max_payload_bytes,
            self.message.payload_hint(),
            |dst| self.message.put_payload(dst),
        )
    }

    /// Decodes the packet carried by a verified frame.
    pub fn decode(frame: Frame) -> Result<Packet, MessageError> {
        let header = frame.header;
        if header.version != PROTOCOL_VERSION {
            return Err(MessageError::UnsupportedVersion {
                version: header.version,
                opcode: header.opcode,
            });
        }
        let message = Message::decode(&header, frame.payload)?;
        Ok(Packet {
            session_id: header.session_id,
            epoch: header.epoch,
            io_seq: header.io_seq,
            message,
        })
    }
}

/// Read data is 1 byte to [`MAX_IO_BYTES`].
fn check_read_data(data: &Bytes) -> Result<(), PayloadError> {
    let max = usize::try_from(MAX_IO_BYTES).unwrap_or(usize::MAX);
    if data.is_empty() || data.len() > max {
        return Err(PayloadError::TooLong {
            field: "data",
            len: data.len(),
            max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
