//! Routing of a request read on an open session: refused when the peer's
//! identity may not make it (`access::request`), answered at once by the
//! read loop (heartbeat, status, membership record, snapshot listing,
//! rebuild throttle, refusals), run as an admitted IO (with its ordering
//! kind; a digest is ordered like a read of its extent), or turned into a
//! rebuild (source on a probe session, sink on the owning one). A probe
//! session does no IO but one: the `Digest` a rebuild sink compares its
//! copy with, served like `RebuildStart` only while a target session owns
//! the volume on this process (`Busy` otherwise), inside the volume's IO
//! order like the owner's. Also which requests mutate the volume and which
//! change block data (the ones the completion watermark follows).

use cstor_proto::{Message, Opcode, Packet, RebuildStart, Status};
use tracing::{info, warn};

use super::access;
use super::core::SessionCore;
use super::reply::{engine_error_reply, error_reply};
use super::report::{snapshot_listing, status_report};
use crate::metrics::Refusal;
use crate::ordering::IoKind;

/// Where a request goes.
pub(super) enum Route {
    /// Answered by the read loop (or not at all, for a stray reply).
    Immediate(Option<Packet>),
    /// Runs as an admitted IO.
    Io(IoKind),
    /// A `Digest` on a probe session (a rebuild sink's): runs as an
    /// admitted IO while a target session owns the volume.
    ProbeDigest(IoKind),
    /// A peer asks this replica to stream a rebuild (probe session): the
    /// read loop ends and the connection carries the stream.
    RebuildSource(RebuildStart),
    /// The owning target asks this replica to rebuild itself.
    RebuildSink(RebuildStart),
}

pub(super) fn classify(session: &SessionCore, packet: &Packet) -> Route {
    if packet.session_id != session.session_id || packet.epoch != session.epoch {
        return Route::Immediate(Some(error_reply(
            packet,
            Status::BadRequest,
            format!(
                "frame of session {} epoch {} on session {} epoch {}",
                packet.session_id, packet.epoch, session.session_id, session.epoch
            ),
        )));
    }
    if let Err(detail) = access::request(
        session.access,
        &session.peer,
        &session.entry,
        &packet.message,
    ) {
        session.registry.metrics().refused(Refusal::Unauthorized);
        warn!(peer = %session.peer, %detail, "request refused");
        return Route::Immediate(Some(error_reply(packet, Status::NotAuthenticated, detail)));
    }
    let kind = match &packet.message {
        Message::Heartbeat => {
            return Route::Immediate(Some(packet.reply(Message::Ack(Opcode::Heartbeat))))
        }
        Message::Status => {
            return Route::Immediate(Some(match status_report(&session.entry) {
                Ok(report) => packet.reply(Message::StatusReport(report)),
                Err(e) => engine_error_reply(packet, &e),
            }))
        }
        Message::MembershipGet => {
            return Route::Immediate(Some(match session.entry.membership() {
                Ok(record) => packet.reply(Message::Membership(record)),
                Err(e) => engine_error_reply(packet, &e),
            }))
        }
        Message::SnapshotList(request) => {
            return Route::Immediate(Some(match snapshot_listing(&session.entry, request) {
                Ok(listing) => packet.reply(Message::SnapshotListing(listing)),
                Err(e) => engine_error_reply(packet, &e),
            }))
        }
        Message::Hello(_) => {
            return Route::Immediate(Some(error_reply(
                packet,
                Status::BadRequest,
                "the session is already open".into(),
            )))
        }
        Message::RebuildThrottle { bytes_per_second } => {
            return Route::Immediate(Some(rebuild_throttle(session, packet, *bytes_per_second)))
        }
        Message::RebuildStart(start) => {
            return match session.fenced {
                // A source only while a target session owns the volume on
                // this process: the target chose it as healthy on a link to
                // this process, not to one before a restart that may have
                // lost acknowledged writes (until the target claims it
                // again and judges it, it serves no rebuild).
                None if !session.entry.has_owner() => {
                    Route::Immediate(Some(not_owned(session, packet)))
                }
                None => Route::RebuildSource(start.clone()),
                Some(_) => Route::RebuildSink(start.clone()),
            };
        }
        Message::RebuildChunk(_)
        | Message::RebuildProgress(_)
        | Message::RebuildDone(_)
        | Message::RebuildAbort(_) => {
            return Route::Immediate(Some(error_reply(
                packet,
                Status::BadRequest,
                "rebuild stream messages are only valid on a rebuild stream".into(),
            )))
        }
        // Replies from the target are never answered (no error ping-pong).
        Message::HelloAck(_)
        | Message::VersionMismatch(_)
        | Message::ReadData(_)
        | Message::ChecksumError(_)
        | Message::SnapshotListing(_)
        | Message::StatusReport(_)
        | Message::Membership(_)
        | Message::RangeDigest(_)
        | Message::Ack(_)
        | Message::Error(_) => {
            warn!(
                opcode = packet.message.wire_opcode(),
                "ignoring a reply sent to the replica"
            );
            return Route::Immediate(None);
        }
        Message::Write(w) => IoKind::Write(byte_range(w.offset, w.data.len() as u64)),
        Message::Read(e) => IoKind::Read(byte_range(e.offset, u64::from(e.len_bytes))),
        // Ordered like a read of its extent: after every earlier write to
        // it, before every later one, so replicas that took the same writes
        // digest the same content (`cstor_proto` integrity module doc).
        Message::Digest(e) => {
            let kind = IoKind::Read(byte_range(e.offset, u64::from(e.len_bytes)));
            if session.fenced.is_some() {
                kind
            } else if !session.entry.has_owner() {
                // Like `RebuildStart` below: only a volume its target
                // claimed on this process is a source.
                return Route::Immediate(Some(not_owned(session, packet)));
            } else {
                return Route::ProbeDigest(kind);
            }
        }
        Message::Unmap(e) | Message::WriteZeroes(e) => {
            IoKind::Write(byte_range(e.offset, u64::from(e.len_bytes)))
        }
        Message::Flush => IoKind::Flush,
        Message::SnapshotCreate(_)
        | Message::SnapshotDestroy(_)
        | Message::Resize { .. }
        | Message::MembershipSet(_) => IoKind::Barrier,
    };
    if session.fenced.is_none() {
        return Route::Immediate(Some(error_reply(
            packet,
            Status::StaleEpoch,
            "a probe session (epoch 0) cannot do IO".into(),
        )));
    }
    Route::Io(kind)
}

/// The refusal of a rebuild source's request (a stream or a digest) on a
/// volume no target session owns on this process.
fn not_owned(session: &SessionCore, packet: &Packet) -> Packet {
    error_reply(
        packet,
        Status::Busy,
        format!(
            "volume {} has no target session on this replica: it serves a rebuild only once its target claimed it",
            session.entry.name
        ),
    )
}

/// The owning target sets the volume's rebuild rate limit
/// (`rebuild::state` module doc); a probe or fenced session may not.
fn rebuild_throttle(session: &SessionCore, packet: &Packet, bytes_per_second: u64) -> Packet {
    if session.fenced.is_none() || !session.entry.is_owner(session.conn_id) {
        return error_reply(
            packet,
            Status::StaleEpoch,
            "only the volume's owning session sets its rebuild throttle".into(),
        );
    }
    if session.entry.rebuild.limit_bytes_per_sec() != bytes_per_second {
        info!(
            bytes_per_second,
            "volume rebuild throttle set by the target"
        );
    }
    session
        .entry
        .rebuild
        .set_limit_bytes_per_sec(bytes_per_second);
    packet.reply(Message::Ack(Opcode::RebuildThrottle))
}

/// `offset..offset+len`, saturating: the engine rejects out-of-range IO;
/// here the range only orders requests.
fn byte_range(offset: u64, len: u64) -> std::ops::Range<u64> {
    offset..offset.saturating_add(len)
}

pub(super) fn mutates(message: &Message) -> bool {
    matches!(
        message,
        Message::Write(_)
            | Message::Unmap(_)
            | Message::WriteZeroes(_)
            | Message::SnapshotCreate(_)
            | Message::SnapshotDestroy(_)
            | Message::Resize { .. }
    )
}

/// Requests that change block data: the ones the completion watermark
/// (`ordering::watermark`) follows.
pub(super) fn writes_data(message: &Message) -> bool {
    matches!(
        message,
        Message::Write(_) | Message::Unmap(_) | Message::WriteZeroes(_)
    )
}
