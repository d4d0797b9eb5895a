//! The handshake of a connection: the first frame must be a `Hello`; it is
//! answered with a `HelloAck` (the replica's view of its copy, the
//! negotiated version) or refused with an error reply, after a version,
//! authentication, authorization (the peer's identity may open this
//! session: `access::open`, checked before the volume is looked up, so a
//! stranger learns nothing of which volumes exist), volume or epoch claim
//! check fails. A refusal is sent before the connection ends.

use std::sync::Arc;

use cstor_engine::Error as EngineError;
use cstor_proto::{Auth, Frame, Hello, HelloAck, Message, Packet, Status, VersionRange};
use cstor_tls::{Peer, Security};
use futures::{SinkExt, StreamExt};
use tracing::{info, warn};

use super::access;
use super::reply::error_reply;
use super::report::{complete_through, replica_state};
use super::{Conn, Session, SessionError};
use crate::limits::HANDSHAKE_TIMEOUT;
use crate::metrics::Refusal;
use crate::registry::{ClaimError, Registry, VolumeEntry};
use crate::status::proto_status;

/// Reads the `Hello`, answers it, and returns the session, or `None` when
/// the connection ended before a handshake or the handshake was refused
/// (after the refusal was sent).
pub(super) async fn handshake(
    conn: &mut Conn,
    conn_id: u64,
    registry: &Arc<Registry>,
    peer: Peer,
    security: Security,
) -> Result<Option<Session>, SessionError> {
    let frame = match tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.next()).await {
        Err(_) => return Err(SessionError::HandshakeTimeout(HANDSHAKE_TIMEOUT)),
        Ok(None) => return Ok(None),
        Ok(Some(Err(e))) => return Err(SessionError::FrameBeforeHandshake(e)),
        Ok(Some(Ok(frame))) => frame,
    };
    let packet = decode(conn, frame).await?;
    let Message::Hello(hello) = &packet.message else {
        refuse(
            conn,
            &packet,
            Status::NotAuthenticated,
            "the first message of a connection must be Hello".into(),
        )
        .await?;
        return Ok(None);
    };
    let Some(version) = hello.versions.negotiate(VersionRange::SUPPORTED) else {
        send(
            conn,
            packet.reply(Message::VersionMismatch(VersionRange::SUPPORTED)),
        )
        .await?;
        return Err(SessionError::NoCommonVersion {
            target: hello.versions,
        });
    };
    if let Err(detail) = authenticate(hello) {
        return Err(refused(conn, &packet, Status::NotAuthenticated, detail).await);
    }
    let access = match access::open(&peer, hello.volume.as_str(), packet.epoch) {
        Ok(access) => access,
        Err(detail) => {
            registry.metrics().refused(Refusal::Unauthorized);
            warn!(
                %peer,
                volume = %hello.volume.as_str(),
                epoch = packet.epoch,
                %detail,
                "session refused"
            );
            return Err(refused(conn, &packet, Status::NotAuthenticated, detail).await);
        }
    };
    let entry = match registry.entry(hello.volume.as_str()) {
        Ok(entry) => entry,
        Err(e) => {
            let detail = format!("volume {}: {e}", hello.volume.as_str());
            return Err(refused(conn, &packet, proto_status(&e), detail).await);
        }
    };
    let fenced = if packet.epoch == 0 {
        None
    } else {
        match entry.claim(packet.epoch, conn_id).await {
            Ok(token) => Some(token),
            Err(e) => {
                let status = match &e {
                    // Fenced for good either way: the target must not retry.
                    ClaimError::Stale { .. } | ClaimError::Exhausted { .. } => Status::StaleEpoch,
                    ClaimError::Busy { .. } => Status::Busy,
                    ClaimError::Engine(err) => proto_status(err),
                };
                return Err(refused(conn, &packet, status, e.to_string()).await);
            }
        }
    };
    let ack = match hello_ack(&entry, version) {
        Ok(ack) => ack,
        Err(e) => {
            entry.release(conn_id);
            let detail = format!("volume {}: {e}", entry.name);
            return Err(refused(conn, &packet, proto_status(&e), detail).await);
        }
    };
    send(conn, packet.reply(Message::HelloAck(ack))).await?;
    info!(
        volume = %entry.name,
        epoch = packet.epoch,
        probe = fenced.is_none(),
        %peer,
        "session opened"
    );
    Ok(Some(Session {
        conn_id,
        session_id: packet.session_id,
        epoch: packet.epoch,
        io: registry.metrics().volume(&entry.name),
        entry,
        fenced,
        peer,
        access,
        security,
        registry: Arc::clone(registry),
    }))
}

/// The `Hello`'s own authentication field. Links are authenticated by
/// mutual TLS (the peer's certificate, `access`); a pre-shared-key proof
/// in the `Hello` is not configured and is refused rather than silently
/// ignored.
fn authenticate(hello: &Hello) -> Result<(), String> {
    match hello.auth {
        Auth::None => Ok(()),
        Auth::PreSharedKey { .. } => {
            Err("pre-shared-key authentication is not configured on this replica".into())
        }
    }
}

fn hello_ack(entry: &VolumeEntry, version: u16) -> Result<HelloAck, EngineError> {
    let volume = &entry.volume;
    let stats = volume.stats()?;
    Ok(HelloAck {
        version,
        replica_id: volume.replica_id()?,
        pool_guid: entry.pool.guid(),
        state: replica_state(entry)?,
        last_durable_io_seq: complete_through(entry, stats.last_durable_io_seq)?,
        volume_size_bytes: stats.size_bytes,
        block_size_bytes: stats.block_bytes,
        highest_epoch_seen: volume.epoch()?,
    })
}

/// Decodes the first frame; a message error is answered (when the frame
/// was a request) and ends the connection.
async fn decode(conn: &mut Conn, frame: Frame) -> Result<Packet, SessionError> {
    let header = frame.header;
    match Packet::decode(frame) {
        Ok(packet) => Ok(packet),
        Err(e) => {
            if let Some(reply) = e.reply_to(&header) {
                send(conn, reply).await?;
            }
            Err(SessionError::BadHandshakeMessage(e))
        }
    }
}

/// Sends the refusal and returns the error that ends the connection: the
/// refusal itself, or the failure to send it.
async fn refused(conn: &mut Conn, packet: &Packet, status: Status, detail: String) -> SessionError {
    match refuse(conn, packet, status, detail.clone()).await {
        Ok(()) => SessionError::Refused { status, detail },
        Err(e) => e,
    }
}

async fn refuse(
    conn: &mut Conn,
    packet: &Packet,
    status: Status,
    detail: String,
) -> Result<(), SessionError> {
    send(conn, error_reply(packet, status, detail)).await
}

async fn send(conn: &mut Conn, packet: Packet) -> Result<(), SessionError> {
    conn.send(packet).await.map_err(SessionError::Send)
}
