//! Decoding side of the message layer: maps a verified header and payload
//! to a [`Message`], strictly. Unknown opcodes are reported before anything
//! else is looked at; header fields an opcode does not use must be zero.

use bytes::Bytes;

use super::{
    check_read_data, ChecksumError, DigestReply, ErrorReply, Extent, Hello, HelloAck, Membership,
    Message, MessageError, RebuildAbort, RebuildChunk, RebuildDone, RebuildProgress, RebuildStart,
    SnapshotListRequest, SnapshotListing, StatusReport, VersionRange, Write,
};
use crate::header::FrameHeader;
use crate::limits::{MAX_DETAIL_BYTES, MAX_DIGEST_BYTES, MAX_IO_BYTES};
use crate::opcode::{Opcode, ReplyKind, REPLY_BIT};
use crate::status::Status;
use crate::wire::{PayloadError, Reader};

impl Message {
    /// Decodes the message of a frame header and payload.
    pub(super) fn decode(header: &FrameHeader, payload: Bytes) -> Result<Message, MessageError> {
        let is_reply = header.opcode & REPLY_BIT != 0;
        let opcode = Opcode::from_u16(header.opcode & !REPLY_BIT);
        let malformed = |source| MessageError::Malformed {
            opcode: header.opcode,
            source,
        };
        let mut src = Reader::new(payload);
        let message = if is_reply && !header.status.is_ok() {
            decode_failure(header, opcode, &mut src).map_err(malformed)?
        } else {
            let opcode = opcode.ok_or(MessageError::UnknownOpcode {
                opcode: header.opcode,
            })?;
            if !header.status.is_ok() {
                return Err(malformed(PayloadError::Invalid {
                    field: "status",
                    reason: "requests must carry status Ok",
                }));
            }
            if is_reply {
                decode_reply(opcode, header, &mut src).map_err(malformed)?
            } else {
                decode_request(opcode, header, &mut src).map_err(malformed)?
            }
        };
        src.finish().map_err(malformed)?;
        Ok(message)
    }
}

/// Checks that a message without flags or extent has none in its header.
fn plain(header: &FrameHeader) -> Result<(), PayloadError> {
    if header.offset != 0 || header.length != 0 {
        return Err(PayloadError::Invalid {
            field: "offset/length",
            reason: "set on a message that addresses no extent",
        });
    }
    no_flags(header)
}

fn no_flags(header: &FrameHeader) -> Result<(), PayloadError> {
    if header.flags != 0 {
        return Err(PayloadError::Invalid {
            field: "flags",
            reason: "unknown flag",
        });
    }
    Ok(())
}

fn extent_of(header: &FrameHeader) -> Extent {
    Extent {
        offset: header.offset,
        len_bytes: header.length,
    }
}

/// A checked extent of a flagless request.
fn checked_extent(header: &FrameHeader, max_len_bytes: u32) -> Result<Extent, PayloadError> {
    no_flags(header)?;
    let extent = extent_of(header);
    extent.check(max_len_bytes)?;
    Ok(extent)
}

/// A reply with a status other than `Ok`.
fn decode_failure(
    header: &FrameHeader,
    opcode: Option<Opcode>,
    src: &mut Reader,
) -> Result<Message, PayloadError> {
    if opcode == Some(Opcode::Read) && header.status == Status::ChecksumError {
        // The read's extent travels in the header, as the request's.
        let extent = checked_extent(header, MAX_IO_BYTES)?;
        return Ok(Message::ChecksumError(ChecksumError::decode(extent, src)?));
    }
    plain(header)?;
    if opcode == Some(Opcode::Hello) && header.status == Status::VersionMismatch {
        return Ok(Message::VersionMismatch(VersionRange::decode(src)?));
    }
    Ok(Message::Error(ErrorReply {
        request_opcode: header.opcode & !REPLY_BIT,
        status: header.status,
        detail: src.string("detail", MAX_DETAIL_BYTES)?,
    }))
}

fn decode_request(
    opcode: Opcode,
    header: &FrameHeader,
    src: &mut Reader,
) -> Result<Message, PayloadError> {
    let message = match opcode {
        Opcode::Write => {
            return Ok(Message::Write(Write::from_parts(
                extent_of(header),
                header.flags,
                src.rest(),
            )?))
        }
        Opcode::Read => return Ok(Message::Read(checked_extent(header, MAX_IO_BYTES)?)),
        Opcode::Unmap => return Ok(Message::Unmap(checked_extent(header, u32::MAX)?)),
        Opcode::WriteZeroes => return Ok(Message::WriteZeroes(checked_extent(header, u32::MAX)?)),
        Opcode::Digest => return Ok(Message::Digest(checked_extent(header, MAX_DIGEST_BYTES)?)),
        Opcode::RebuildChunk => {
            no_flags(header)?;
            return Ok(Message::RebuildChunk(RebuildChunk::decode(
                extent_of(header),
                src,
            )?));
        }
        // Everything below addresses no extent.
        Opcode::Hello => Message::Hello(Hello::decode(src)?),
        Opcode::Flush => Message::Flush,
        Opcode::SnapshotCreate => Message::SnapshotCreate(src.name("snapshot")?),
        Opcode::SnapshotDestroy => Message::SnapshotDestroy(src.name("snapshot")?),
        Opcode::SnapshotList => Message::SnapshotList(SnapshotListRequest::decode(src)?),
        Opcode::Resize => Message::Resize {
            new_size_bytes: src.u64("new_size_bytes")?,
        },
        Opcode::Status => Message::Status,
        Opcode::MembershipSet => Message::MembershipSet(Membership::decode(src)?),
        Opcode::MembershipGet => Message::MembershipGet,
        Opcode::Heartbeat => Message::Heartbeat,
        Opcode::RebuildStart => Message::RebuildStart(RebuildStart::decode(src)?),
        Opcode::RebuildProgress => Message::RebuildProgress(RebuildProgress::decode(src)?),
        Opcode::RebuildDone => Message::RebuildDone(RebuildDone {
            through_io_seq: src.u64("through_io_seq")?,
        }),
        Opcode::RebuildAbort => Message::RebuildAbort(RebuildAbort::decode(src)?),
        Opcode::RebuildThrottle => Message::RebuildThrottle {
            bytes_per_second: src.u64("bytes_per_second")?,
        },
    };
    plain(header)?;
    Ok(message)
}

/// A reply with status `Ok`.
fn decode_reply(
    opcode: Opcode,
    header: &FrameHeader,
    src: &mut Reader,
) -> Result<Message, PayloadError> {
    plain(header)?;
    match opcode.reply_kind() {
        ReplyKind::Ack => Ok(Message::Ack(opcode)),
        ReplyKind::OneWay => Err(PayloadError::Invalid {
            field: "opcode",
            reason: "a one-way message has no reply",
        }),
        ReplyKind::Typed => match opcode {
            Opcode::Hello => Ok(Message::HelloAck(HelloAck::decode(src)?)),
            Opcode::Read => {
                let data = src.rest();
                check_read_data(&data)?;
                Ok(Message::ReadData(data))
            }
            Opcode::SnapshotList => Ok(Message::SnapshotListing(SnapshotListing::decode(src)?)),
            Opcode::Status => Ok(Message::StatusReport(StatusReport::decode(src)?)),
            Opcode::MembershipGet => Ok(Message::Membership(Membership::decode(src)?)),
            Opcode::Digest => Ok(Message::RangeDigest(DigestReply::decode(src)?)),
            _ => Err(PayloadError::Invalid {
                field: "opcode",
                reason: "no typed reply for this opcode",
            }),
        },
    }
}
