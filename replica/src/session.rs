//! One target connection: TLS handshake, `Hello`, then pipelined requests.
//!
//! Security (docs/security.md): the connection is secured first, on its
//! shard ([`cstor_tls::Security::accept`], bounded by its handshake
//! timeout); a failure closes it before any frame is read or sent and is
//! counted (`cstor_replica_connections_refused_total`, reason `tls` or
//! `identity`). The peer's identity then decides which session its
//! `Hello` may open and, for a peer replica, which requests it may make
//! ([`access`]).
//!
//! The read loop is the only reader of the socket and a writer task the only
//! writer. Each request is admitted in arrival order (`ordering`), then runs
//! in its own task once every earlier conflicting request has finished;
//! replies go back in completion order, matched by io_seq. At most
//! [`MAX_IN_FLIGHT_PER_CONNECTION`] requests run at once: past that the read
//! loop stops reading and TCP pushes back on the target.
//!
//! Rebuild (`rebuild`): a `RebuildStart` on a probe session (epoch 0) ends
//! the read loop and turns the connection into a rebuild stream this
//! replica serves as the source; on the owning session it starts this
//! replica's own rebuild (sink), whose reports go out with the replies. Every
//! live mutating request marks its blocks for a running sink before it
//! touches the engine.
//!
//! Membership: `MembershipGet` is answered at once, also on a probe
//! session (a starting target reads the record before it claims anything);
//! `MembershipSet` runs as a barrier of the owning session and is kept only
//! with a higher generation (`registry`, `VolumeEntry::store_membership`).
//!
//! Errors: a frame error (bad magic, checksum, oversize length) closes the
//! connection — the stream is out of sync; a message error (unknown opcode,
//! malformed payload, wrong version) is answered with an error reply carrying
//! the request's io_seq and the connection goes on (docs/architecture.md,
//! invariant 8).
//!
//! Parts: [`core`] (the session's decisions, runtime-free: what a `Hello`
//! opens, where a request goes, an admitted IO run to its reply, a sink
//! started), [`access`] (who may do what), [`handshake`] (the `Hello` read
//! and answered), [`route`] (where a request goes), [`execute`] (an
//! admitted IO against the engine), [`report`] (the replica's view of its
//! copy), [`reply`] (error replies); this module holds the connection's
//! read loop and writer (the async shell around [`core`]), and
//! [`SessionError`], why a connection ended.

pub mod access;
pub mod core;
mod execute;
mod handshake;
mod reply;
mod report;
mod route;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cstor_proto::{
    EncodeError, FrameCodec, FrameError, MessageError, Packet, Status, VersionRange,
};
use cstor_tls::{Peer, Security, Stream, TlsError};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use self::core::{Routed, SessionCore};
pub(crate) use self::execute::publish_watermark;
use self::handshake::handshake;
use crate::limits::{MAX_IN_FLIGHT_PER_CONNECTION, REPLY_QUEUE, SESSION_IDLE_TIMEOUT};
use crate::metrics::Refusal;
use crate::rebuild::io::{TokioClock, TokioIo};
use crate::rebuild::{self, RebuildError};
use crate::registry::Registry;

/// Why a connection ended (other than by the target closing it cleanly).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The peer sent no frame within the handshake timeout.
    #[error("no handshake within {0:?}")]
    HandshakeTimeout(Duration),
    /// The stream was out of sync before the handshake.
    #[error("bad frame before handshake: {0}")]
    FrameBeforeHandshake(#[source] FrameError),
    /// The first message could not be decoded (it was answered when it
    /// was a request).
    #[error("bad handshake message: {0}")]
    BadHandshakeMessage(#[source] MessageError),
    /// The target speaks no version this replica speaks (answered with
    /// `VersionMismatch`).
    #[error(
        "no common protocol version: target speaks {}..={}, we speak {}..={}",
        target.min,
        target.max,
        VersionRange::SUPPORTED.min,
        VersionRange::SUPPORTED.max
    )]
    NoCommonVersion { target: VersionRange },
    /// The handshake was refused (authentication, unknown volume, stale or
    /// busy epoch, engine error) with `status`; the refusal was sent.
    #[error("{detail}")]
    Refused { status: Status, detail: String },
    /// A handshake reply could not be sent.
    #[error("cannot send reply: {0}")]
    Send(#[source] EncodeError),
    /// A newer target claimed the volume.
    #[error("fenced: a newer target took the volume over")]
    Fenced,
    /// The daemon is stopping.
    #[error("daemon shutting down")]
    Shutdown,
    /// No frame arrived within the session idle timeout.
    #[error("idle for {0:?}")]
    Idle(Duration),
    /// The stream was out of sync (bad magic, checksum, oversize length).
    #[error("bad frame: {0}")]
    Frame(#[source] FrameError),
    /// The writer task ended (the socket cannot be written).
    #[error("writer gone")]
    WriterGone,
    /// The in-flight request slots were closed.
    #[error("request slots closed")]
    SlotsClosed,
    /// The rebuild stream this connection served as the source failed.
    #[error(transparent)]
    RebuildSource(#[from] RebuildError),
}

/// Serves one accepted connection: secures it with `security` (module
/// doc), then serves its session until it ends, is fenced, or `shutdown`.
/// `security` is also what a rebuild this session starts dials its source
/// with.
pub async fn serve(
    tcp: TcpStream,
    remote: SocketAddr,
    security: Security,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) {
    let conn_id = registry.next_conn_id();
    let span = tracing::info_span!("conn", conn = conn_id, %remote);
    async move {
        if let Err(e) = tcp.set_nodelay(true) {
            debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let secured = tokio::select! {
            () = shutdown.cancelled() => return,
            secured = security.accept(tcp) => secured,
        };
        let (stream, peer) = match secured {
            Ok(secured) => secured,
            Err(e) => {
                registry.metrics().refused(refusal_of(&e));
                warn!(error = %e, "connection refused");
                return;
            }
        };
        debug!(%peer, "connection secured");
        match serve_inner(stream, peer, security, conn_id, &registry, &shutdown).await {
            Ok(()) => debug!("connection closed"),
            Err(reason) => info!(%reason, "connection closed"),
        }
    }
    .instrument(span)
    .await
}

/// The reason a failed TLS handshake is counted under.
fn refusal_of(error: &TlsError) -> Refusal {
    match error {
        TlsError::NoPeerCertificate | TlsError::PeerIdentity(_) => Refusal::Identity,
        _ => Refusal::Tls,
    }
}

type Conn = Framed<Stream, FrameCodec>;

async fn serve_inner(
    stream: Stream,
    peer: Peer,
    security: Security,
    conn_id: u64,
    registry: &Arc<Registry>,
    shutdown: &CancellationToken,
) -> Result<(), SessionError> {
    let mut conn = Framed::new(stream, FrameCodec::new());
    conn.set_backpressure_boundary(cstor_proto::WRITE_BATCH_BYTES);
    let Some(session) = handshake(&mut conn, conn_id, registry, peer).await? else {
        return Ok(());
    };
    let span = tracing::info_span!(
        "session",
        volume = %session.entry().name,
        epoch = session.epoch(),
        session = session.session_id()
    );
    let session = Arc::new(session);
    let result = run_session(conn, Arc::clone(&session), security, shutdown)
        .instrument(span)
        .await;
    session.close();
    result
}

/// The read loop and writer of an open session; `security` is what a
/// rebuild it starts (sink) dials its source with.
async fn run_session(
    conn: Conn,
    session: Arc<SessionCore>,
    security: Security,
    shutdown: &CancellationToken,
) -> Result<(), SessionError> {
    let (mut sink, mut stream) = conn.split();
    let (replies, mut queue) = mpsc::channel::<Packet>(REPLY_QUEUE);
    // The writer hands the socket back when every reply sender is gone, so
    // that a rebuild source can stream on it directly.
    let writer = tokio::spawn(async move {
        while let Some(packet) = queue.recv().await {
            sink.feed(packet).await?;
            while let Ok(packet) = queue.try_recv() {
                sink.feed(packet).await?;
            }
            sink.flush().await?;
        }
        Ok::<_, cstor_proto::EncodeError>(sink)
    });
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_CONNECTION));
    let fenced = session.fence().cloned().unwrap_or_default();
    // Ends with the read loop: stops a rebuild this session started.
    let session_end = fenced.child_token();
    let mut source_request = None;
    let outcome = loop {
        let next = tokio::select! {
            () = fenced.cancelled() => break Err(SessionError::Fenced),
            () = shutdown.cancelled() => break Err(SessionError::Shutdown),
            next = tokio::time::timeout(SESSION_IDLE_TIMEOUT, stream.next()) => next,
        };
        let frame = match next {
            Err(_) => break Err(SessionError::Idle(SESSION_IDLE_TIMEOUT)),
            Ok(None) => break Ok(()),
            Ok(Some(Err(e))) => break Err(SessionError::Frame(e)),
            Ok(Some(Ok(frame))) => frame,
        };
        let header = frame.header;
        let packet = match Packet::decode(frame) {
            Ok(packet) => packet,
            Err(e) => {
                warn!(error = %e, io_seq = header.io_seq, "refusing a malformed request");
                if let Some(reply) = e.reply_to(&header) {
                    if replies.send(reply).await.is_err() {
                        break Err(SessionError::WriterGone);
                    }
                }
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break Err(SessionError::SlotsClosed);
        };
        match session.route(packet) {
            Routed::RebuildSource { request, start } => {
                drop(permit);
                source_request = Some((request, start));
                break Ok(());
            }
            Routed::RebuildSink { request, start } => {
                drop(permit);
                let reply = session.start_sink(
                    TokioIo::new(security.clone()),
                    &request,
                    start,
                    replies.clone(),
                    &session_end,
                );
                if replies.send(reply).await.is_err() {
                    break Err(SessionError::WriterGone);
                }
            }
            Routed::Reply(reply) => {
                drop(permit);
                if let Some(reply) = reply {
                    if replies.send(reply).await.is_err() {
                        break Err(SessionError::WriterGone);
                    }
                }
            }
            Routed::Io(task) => {
                let replies = replies.clone();
                tokio::spawn(async move {
                    let reply = task.run().await;
                    // The connection may be gone; the IO is done either way.
                    let _ = replies.send(reply).await;
                    drop(permit);
                });
            }
        }
    };
    session_end.cancel();
    drop(replies);
    // Requests already running finish and their replies are flushed (or
    // dropped with the socket if it is gone).
    let sink = match tokio::time::timeout(Duration::from_secs(5), writer).await {
        Ok(Ok(Err(e))) => {
            debug!(error = %e, "writer stopped");
            None
        }
        Ok(Err(e)) => {
            warn!(error = %e, "writer task failed");
            None
        }
        Err(_) => {
            debug!("writer did not drain in time");
            None
        }
        Ok(Ok(Ok(sink))) => Some(sink),
    };
    match (source_request, sink) {
        (Some((request, start)), Some(mut sink)) => rebuild::source::serve(
            &mut sink,
            &TokioClock::new(),
            session.entry(),
            &request,
            &start,
            shutdown,
        )
        .await
        .map_err(SessionError::from),
        _ => outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_handshake_is_counted_as_tls_or_identity() {
        use cstor_tls::IdentityError;
        assert_eq!(refusal_of(&TlsError::NoPeerCertificate), Refusal::Identity);
        assert_eq!(
            refusal_of(&TlsError::PeerIdentity(IdentityError::Missing)),
            Refusal::Identity
        );
        assert_eq!(
            refusal_of(&TlsError::HandshakeTimeout(Duration::from_secs(5))),
            Refusal::Tls
        );
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, "bad certificate");
        assert_eq!(refusal_of(&TlsError::Handshake(io)), Refusal::Tls);
    }
}
