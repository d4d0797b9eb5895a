//! Error replies: a request refused or failed is answered with its own
//! io_seq, opcode, a status and a detail.

use cstor_engine::Error as EngineError;
use cstor_proto::{ChecksumError, ErrorReply, Extent, Message, Packet, Status};

use crate::status::proto_status;

pub(super) fn error_reply(packet: &Packet, status: Status, detail: String) -> Packet {
    packet.reply(Message::Error(ErrorReply::new(
        packet.message.wire_opcode(),
        status,
        detail,
    )))
}

pub(super) fn engine_error_reply(packet: &Packet, err: &EngineError) -> Packet {
    error_reply(packet, proto_status(err), err.to_string())
}

/// The answer to a read of `extent` that failed its checksum: the bad
/// blocks (`Message::ChecksumError`), never data. Ranges that name no
/// block of the read cannot be reported so: an IO error then.
pub(super) fn checksum_reply(packet: &Packet, extent: Extent, err: &EngineError) -> Packet {
    match ChecksumError::new(extent, err.bad_ranges().iter().copied()) {
        Ok(reply) => packet.reply(Message::ChecksumError(reply)),
        Err(e) => error_reply(
            packet,
            Status::IoError,
            format!("{err} (its bad ranges {:?}: {e})", err.bad_ranges()),
        ),
    }
}
