//! The handshake of a connection: the first frame must be a `Hello`; it is
//! answered with a `HelloAck` (the replica's view of its copy, the
//! negotiated version) or refused with an error reply, after a version,
//! authentication, authorization (the peer's identity may open this
//! session: `access::open`, checked before the volume is looked up, so a
//! stranger learns nothing of which volumes exist), volume or epoch claim
//! check fails (all decided by `core::open`). A refusal is sent before the
//! connection ends.

use std::sync::Arc;

use cstor_proto::{Frame, Packet};
use cstor_tls::Peer;
use futures::{SinkExt, StreamExt};

use super::core::{open, Opening, SessionCore};
use super::{Conn, SessionError};
use crate::limits::HANDSHAKE_TIMEOUT;
use crate::registry::Registry;

/// Reads the `Hello`, answers it, and returns the session, or `None` when
/// the connection ended before a handshake or its first message was not a
/// `Hello` (after the refusal was sent).
pub(super) async fn handshake(
    conn: &mut Conn,
    conn_id: u64,
    registry: &Arc<Registry>,
    peer: Peer,
) -> Result<Option<SessionCore>, SessionError> {
    let frame = match tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.next()).await {
        Err(_) => return Err(SessionError::HandshakeTimeout(HANDSHAKE_TIMEOUT)),
        Ok(None) => return Ok(None),
        Ok(Some(Err(e))) => return Err(SessionError::FrameBeforeHandshake(e)),
        Ok(Some(Ok(frame))) => frame,
    };
    let packet = decode(conn, frame).await?;
    match open(registry, conn_id, peer, packet).await {
        Opening::Open { session, reply } => {
            if let Err(e) = send(conn, reply).await {
                session.close();
                return Err(e);
            }
            Ok(Some(session))
        }
        Opening::Refused { reply, reason } => {
            send(conn, reply).await?;
            match reason {
                None => Ok(None),
                Some(reason) => Err(reason),
            }
        }
    }
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

async fn send(conn: &mut Conn, packet: Packet) -> Result<(), SessionError> {
    conn.send(packet).await.map_err(SessionError::Send)
}
