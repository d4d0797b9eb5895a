//! Error replies: a request refused or failed is answered with its own
//! io_seq, opcode, a status and a detail.

use cstor_engine::Error as EngineError;
use cstor_proto::{ErrorReply, Message, Packet, Status};

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
