//! Encoding side of the message layer: each message's header shape
//! (opcode, flags, status, offset, length), after checking every rule the
//! decoder enforces, and its payload.

use bytes::{BufMut, BytesMut};

use super::{check_read_data, ErrorReply, Extent, Message};
use crate::limits::{MAX_DETAIL_BYTES, MAX_DIGEST_BYTES, MAX_IO_BYTES};
use crate::opcode::{Opcode, ReplyKind, REPLY_BIT};
use crate::status::Status;
use crate::wire::{check_text, put_prefixed, PayloadError};

/// Header fields a message decides.
pub(super) struct Shape {
    pub(super) opcode: u16,
    pub(super) flags: u16,
    pub(super) status: Status,
    pub(super) offset: u64,
    pub(super) length: u32,
}

impl Shape {
    fn plain(opcode: Opcode) -> Shape {
        Shape {
            opcode: opcode.to_u16(),
            flags: 0,
            status: Status::Ok,
            offset: 0,
            length: 0,
        }
    }

    fn reply(opcode: Opcode) -> Shape {
        Shape {
            opcode: opcode.to_u16() | REPLY_BIT,
            ..Shape::plain(opcode)
        }
    }

    fn extent(opcode: Opcode, extent: Extent) -> Shape {
        Shape {
            offset: extent.offset,
            length: extent.len_bytes,
            ..Shape::plain(opcode)
        }
    }
}

impl Message {
    /// Validates the message and returns its header shape.
    pub(super) fn shape(&self) -> Result<Shape, PayloadError> {
        Ok(match self {
            Message::Hello(hello) => {
                hello.check()?;
                Shape::plain(Opcode::Hello)
            }
            Message::Write(write) => Shape {
                flags: write.flags(),
                ..Shape::extent(Opcode::Write, write.extent()?)
            },
            Message::Read(extent) => {
                extent.check(MAX_IO_BYTES)?;
                Shape::extent(Opcode::Read, *extent)
            }
            Message::Flush => Shape::plain(Opcode::Flush),
            Message::Unmap(extent) => {
                extent.check(u32::MAX)?;
                Shape::extent(Opcode::Unmap, *extent)
            }
            Message::WriteZeroes(extent) => {
                extent.check(u32::MAX)?;
                Shape::extent(Opcode::WriteZeroes, *extent)
            }
            Message::SnapshotCreate(_) => Shape::plain(Opcode::SnapshotCreate),
            Message::SnapshotDestroy(_) => Shape::plain(Opcode::SnapshotDestroy),
            Message::SnapshotList(_) => Shape::plain(Opcode::SnapshotList),
            Message::Resize { .. } => Shape::plain(Opcode::Resize),
            Message::Status => Shape::plain(Opcode::Status),
            Message::MembershipSet(membership) => {
                membership.check()?;
                Shape::plain(Opcode::MembershipSet)
            }
            Message::MembershipGet => Shape::plain(Opcode::MembershipGet),
            Message::Heartbeat => Shape::plain(Opcode::Heartbeat),
            Message::RebuildStart(start) => {
                start.check()?;
                Shape::plain(Opcode::RebuildStart)
            }
            Message::RebuildChunk(chunk) => Shape::extent(Opcode::RebuildChunk, chunk.extent()?),
            Message::RebuildProgress(progress) => {
                progress.check()?;
                Shape::plain(Opcode::RebuildProgress)
            }
            Message::RebuildDone(_) => Shape::plain(Opcode::RebuildDone),
            Message::RebuildAbort(abort) => {
                abort.check()?;
                Shape::plain(Opcode::RebuildAbort)
            }
            Message::RebuildThrottle { .. } => Shape::plain(Opcode::RebuildThrottle),
            Message::Digest(extent) => {
                extent.check(MAX_DIGEST_BYTES)?;
                Shape::extent(Opcode::Digest, *extent)
            }
            Message::RangeDigest(reply) => {
                reply.check()?;
                Shape::reply(Opcode::Digest)
            }
            Message::HelloAck(ack) => {
                ack.check()?;
                Shape::reply(Opcode::Hello)
            }
            Message::VersionMismatch(range) => {
                range.check()?;
                Shape {
                    status: Status::VersionMismatch,
                    ..Shape::reply(Opcode::Hello)
                }
            }
            Message::ReadData(data) => {
                check_read_data(data)?;
                Shape::reply(Opcode::Read)
            }
            Message::ChecksumError(reply) => {
                reply.check()?;
                Shape {
                    status: Status::ChecksumError,
                    offset: reply.extent.offset,
                    length: reply.extent.len_bytes,
                    ..Shape::reply(Opcode::Read)
                }
            }
            Message::SnapshotListing(listing) => {
                listing.check()?;
                Shape::reply(Opcode::SnapshotList)
            }
            Message::StatusReport(report) => {
                report.check()?;
                Shape::reply(Opcode::Status)
            }
            Message::Membership(membership) => {
                membership.check()?;
                Shape::reply(Opcode::MembershipGet)
            }
            Message::Ack(opcode) => {
                if opcode.reply_kind() != ReplyKind::Ack {
                    return Err(PayloadError::Invalid {
                        field: "opcode",
                        reason: "this opcode is not answered by an Ack",
                    });
                }
                Shape::reply(*opcode)
            }
            Message::Error(error) => {
                check_error_reply(error)?;
                Shape {
                    opcode: error.request_opcode | REPLY_BIT,
                    flags: 0,
                    status: error.status,
                    offset: 0,
                    length: 0,
                }
            }
        })
    }

    /// The raw header opcode of the message (for error reports; does not
    /// validate).
    pub fn wire_opcode(&self) -> u16 {
        let request = |opcode: Opcode| opcode.to_u16();
        let reply = |opcode: Opcode| opcode.to_u16() | REPLY_BIT;
        match self {
            Message::Hello(_) => request(Opcode::Hello),
            Message::Write(_) => request(Opcode::Write),
            Message::Read(_) => request(Opcode::Read),
            Message::Flush => request(Opcode::Flush),
            Message::Unmap(_) => request(Opcode::Unmap),
            Message::WriteZeroes(_) => request(Opcode::WriteZeroes),
            Message::SnapshotCreate(_) => request(Opcode::SnapshotCreate),
            Message::SnapshotDestroy(_) => request(Opcode::SnapshotDestroy),
            Message::SnapshotList(_) => request(Opcode::SnapshotList),
            Message::Resize { .. } => request(Opcode::Resize),
            Message::Status => request(Opcode::Status),
            Message::MembershipSet(_) => request(Opcode::MembershipSet),
            Message::MembershipGet => request(Opcode::MembershipGet),
            Message::Heartbeat => request(Opcode::Heartbeat),
            Message::RebuildStart(_) => request(Opcode::RebuildStart),
            Message::RebuildChunk(_) => request(Opcode::RebuildChunk),
            Message::RebuildProgress(_) => request(Opcode::RebuildProgress),
            Message::RebuildDone(_) => request(Opcode::RebuildDone),
            Message::RebuildAbort(_) => request(Opcode::RebuildAbort),
            Message::RebuildThrottle { .. } => request(Opcode::RebuildThrottle),
            Message::Digest(_) => request(Opcode::Digest),
            Message::RangeDigest(_) => reply(Opcode::Digest),
            Message::HelloAck(_) | Message::VersionMismatch(_) => reply(Opcode::Hello),
            Message::ReadData(_) | Message::ChecksumError(_) => reply(Opcode::Read),
            Message::SnapshotListing(_) => reply(Opcode::SnapshotList),
            Message::StatusReport(_) => reply(Opcode::Status),
            Message::Membership(_) => reply(Opcode::MembershipGet),
            Message::Ack(opcode) => reply(*opcode),
            Message::Error(error) => error.request_opcode | REPLY_BIT,
        }
    }

    /// Whether this is a reply to a request (its wire opcode has the
    /// reply bit).
    pub fn is_reply(&self) -> bool {
        self.wire_opcode() & REPLY_BIT != 0
    }

    /// Payload size, exact for data-carrying messages (so a write reserves
    /// once), a small guess for the rest.
    pub(super) fn payload_hint(&self) -> usize {
        match self {
            Message::Write(write) => write.data.len(),
            Message::ReadData(data) => data.len(),
            Message::RebuildChunk(chunk) => chunk.wire_len(),
            Message::SnapshotListing(listing) => listing.wire_len(),
            Message::ChecksumError(reply) => reply.wire_len(),
            Message::RangeDigest(reply) => reply.wire_len(),
            _ => 128,
        }
    }

    pub(super) fn put_payload(&self, dst: &mut BytesMut) {
        match self {
            Message::Hello(hello) => hello.put(dst),
            Message::Write(write) => dst.extend_from_slice(&write.data),
            Message::Read(_)
            | Message::Flush
            | Message::Unmap(_)
            | Message::WriteZeroes(_)
            | Message::Status
            | Message::MembershipGet
            | Message::Heartbeat
            | Message::Digest(_)
            | Message::Ack(_) => {}
            Message::SnapshotCreate(name) | Message::SnapshotDestroy(name) => name.put(dst),
            Message::SnapshotList(request) => request.put(dst),
            Message::Resize { new_size_bytes } => dst.put_u64_le(*new_size_bytes),
            Message::RebuildStart(start) => start.put(dst),
            Message::RebuildChunk(chunk) => {
                chunk.put_table(dst);
                dst.extend_from_slice(&chunk.data);
            }
            Message::RebuildProgress(progress) => progress.put(dst),
            Message::RebuildDone(done) => dst.put_u64_le(done.through_io_seq),
            Message::RebuildAbort(abort) => abort.put(dst),
            Message::RebuildThrottle { bytes_per_second } => dst.put_u64_le(*bytes_per_second),
            Message::HelloAck(ack) => ack.put(dst),
            Message::VersionMismatch(range) => range.put(dst),
            Message::ReadData(data) => dst.extend_from_slice(data),
            Message::ChecksumError(reply) => reply.put(dst),
            Message::RangeDigest(reply) => reply.put(dst),
            Message::SnapshotListing(listing) => listing.put(dst),
            Message::StatusReport(report) => report.put(dst),
            Message::MembershipSet(membership) | Message::Membership(membership) => {
                membership.put(dst)
            }
            Message::Error(error) => put_prefixed(dst, error.detail.as_bytes()),
        }
    }
}

/// The rules that keep an error reply's encoding unambiguous.
fn check_error_reply(error: &ErrorReply) -> Result<(), PayloadError> {
    if error.status.is_ok() {
        return Err(PayloadError::Invalid {
            field: "status",
            reason: "an error reply cannot carry status Ok",
        });
    }
    if error.request_opcode & REPLY_BIT != 0 {
        return Err(PayloadError::Invalid {
            field: "request_opcode",
            reason: "the reply bit is set by the encoding",
        });
    }
    if error.request_opcode == Opcode::Hello.to_u16() && error.status == Status::VersionMismatch {
        return Err(PayloadError::Invalid {
            field: "status",
            reason: "a version mismatch on Hello is Message::VersionMismatch",
        });
    }
    if error.request_opcode == Opcode::Read.to_u16() && error.status == Status::ChecksumError {
        return Err(PayloadError::Invalid {
            field: "status",
            reason: "a checksum error on Read is Message::ChecksumError",
        });
    }
    check_text("detail", &error.detail, MAX_DETAIL_BYTES)
}
