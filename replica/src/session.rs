//! One target connection: handshake, then pipelined requests.
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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cstor_engine::Error as EngineError;
use cstor_proto::limits::MAX_SNAPSHOTS_PER_LISTING;
use cstor_proto::{
    Auth, ErrorReply, Frame, FrameCodec, Hello, HelloAck, Message, Name, Opcode, Packet,
    RebuildProgress, RebuildStart, ReplicaState, SnapshotInfo, SnapshotListRequest,
    SnapshotListing, Status, StatusReport, VersionRange,
};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::limits::{
    HANDSHAKE_TIMEOUT, MAX_IN_FLIGHT_PER_CONNECTION, REPLY_QUEUE, SESSION_IDLE_TIMEOUT,
};
use crate::metrics::VolumeIo;
use crate::ordering::IoKind;
use crate::rebuild;
use crate::registry::{ClaimError, Registry, VolumeEntry};
use crate::status::proto_status;

/// Serves one accepted connection until it ends, is fenced, or `shutdown`.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) {
    let conn_id = registry.next_conn_id();
    let span = tracing::info_span!("conn", conn = conn_id, %peer);
    async move {
        if let Err(e) = stream.set_nodelay(true) {
            debug!(error = %e, "cannot set TCP_NODELAY");
        }
        match serve_inner(stream, conn_id, &registry, &shutdown).await {
            Ok(()) => debug!("connection closed"),
            Err(reason) => info!(%reason, "connection closed"),
        }
    }
    .instrument(span)
    .await
}

type Conn = Framed<TcpStream, FrameCodec>;

async fn serve_inner(
    stream: TcpStream,
    conn_id: u64,
    registry: &Arc<Registry>,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let mut conn = Framed::new(stream, FrameCodec::new());
    conn.set_backpressure_boundary(cstor_proto::WRITE_BATCH_BYTES);
    let Some(session) = handshake(&mut conn, conn_id, registry).await? else {
        return Ok(());
    };
    let entry = Arc::clone(&session.entry);
    let span = tracing::info_span!(
        "session",
        volume = %entry.name,
        epoch = session.epoch,
        session = session.session_id
    );
    let result = run_session(conn, session, shutdown).instrument(span).await;
    entry.release(conn_id);
    result
}

/// A session after its handshake.
struct Session {
    conn_id: u64,
    session_id: u64,
    epoch: u64,
    entry: Arc<VolumeEntry>,
    /// Cancelled when a newer target takes the volume over; `None` for a
    /// probe session (epoch 0), which owns nothing.
    fenced: Option<CancellationToken>,
    /// The volume's IO counters (metrics).
    io: Arc<VolumeIo>,
}

/// Reads the `Hello`, answers it, and returns the session, or `None` when
/// the connection ended before a handshake or the handshake was refused
/// (after the refusal was sent).
async fn handshake(
    conn: &mut Conn,
    conn_id: u64,
    registry: &Registry,
) -> Result<Option<Session>, String> {
    let frame = match tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.next()).await {
        Err(_) => return Err(format!("no handshake within {HANDSHAKE_TIMEOUT:?}")),
        Ok(None) => return Ok(None),
        Ok(Some(Err(e))) => return Err(format!("bad frame before handshake: {e}")),
        Ok(Some(Ok(frame))) => frame,
    };
    let packet = match decode(conn, frame).await? {
        Some(packet) => packet,
        None => return Err("undecodable first message".into()),
    };
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
        return Err(format!(
            "no common protocol version: target speaks {}..={}, we speak {}..={}",
            hello.versions.min,
            hello.versions.max,
            VersionRange::SUPPORTED.min,
            VersionRange::SUPPORTED.max
        ));
    };
    if let Err(detail) = authenticate(hello) {
        refuse(conn, &packet, Status::NotAuthenticated, detail.clone()).await?;
        return Err(detail);
    }
    let entry = match registry.entry(hello.volume.as_str()) {
        Ok(entry) => entry,
        Err(e) => {
            let detail = format!("volume {}: {e}", hello.volume.as_str());
            refuse(conn, &packet, proto_status(&e), detail.clone()).await?;
            return Err(detail);
        }
    };
    let fenced = if packet.epoch == 0 {
        None
    } else {
        match entry.claim(packet.epoch, conn_id).await {
            Ok(token) => Some(token),
            Err(e) => {
                let status = match &e {
                    ClaimError::Stale { .. } => Status::StaleEpoch,
                    ClaimError::Busy { .. } => Status::Busy,
                    ClaimError::Engine(err) => proto_status(err),
                };
                let detail = e.to_string();
                refuse(conn, &packet, status, detail.clone()).await?;
                return Err(detail);
            }
        }
    };
    let ack = match hello_ack(&entry, version) {
        Ok(ack) => ack,
        Err(e) => {
            entry.release(conn_id);
            let detail = format!("volume {}: {e}", entry.name);
            refuse(conn, &packet, proto_status(&e), detail.clone()).await?;
            return Err(detail);
        }
    };
    send(conn, packet.reply(Message::HelloAck(ack))).await?;
    info!(
        volume = %entry.name,
        epoch = packet.epoch,
        probe = fenced.is_none(),
        "session opened"
    );
    Ok(Some(Session {
        conn_id,
        session_id: packet.session_id,
        epoch: packet.epoch,
        io: registry.metrics().volume(&entry.name),
        entry,
        fenced,
    }))
}

/// The authentication hook. Authenticated replica links are planned
/// (docs/architecture.md, "Planned"); until then, only unauthenticated
/// targets are accepted and a proof is refused rather than silently
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

/// The io_seq through which the copy is complete: the durable one, or
/// while a rebuild is unfinished the io_seq it started from (rebuilt blocks
/// carry newer io_seqs that say nothing about the blocks not copied yet).
fn complete_through(entry: &VolumeEntry, durable: u64) -> Result<u64, EngineError> {
    Ok(rebuild::sink::unfinished(&entry.volume)?.map_or(durable, |p| p.from_io_seq.min(durable)))
}

/// The replica's own view of its copy. It cannot know alone whether it
/// missed writes (the target decides that from io_seqs); it knows whether it
/// ever held any, and whether a rebuild of it is unfinished.
fn replica_state(entry: &VolumeEntry) -> Result<ReplicaState, EngineError> {
    if rebuild::sink::unfinished(&entry.volume)?.is_some() {
        let running = entry.rebuild.status().is_some_and(|s| s.running);
        return Ok(if running {
            ReplicaState::Rebuilding
        } else {
            ReplicaState::Degraded
        });
    }
    let stats = entry.volume.stats()?;
    Ok(
        if stats.last_durable_io_seq == 0 && stats.allocated_bytes == 0 {
            ReplicaState::NewEmpty
        } else {
            ReplicaState::Healthy
        },
    )
}

async fn run_session(
    conn: Conn,
    session: Session,
    shutdown: &CancellationToken,
) -> Result<(), String> {
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
    let session = Arc::new(session);
    let fenced = session.fenced.clone().unwrap_or_default();
    // Ends with the read loop: stops a rebuild this session started.
    let session_end = fenced.child_token();
    let mut source_request = None;
    let outcome = loop {
        let next = tokio::select! {
            () = fenced.cancelled() => break Err("fenced: a newer target took the volume over".to_string()),
            () = shutdown.cancelled() => break Err("daemon shutting down".to_string()),
            next = tokio::time::timeout(SESSION_IDLE_TIMEOUT, stream.next()) => next,
        };
        let frame = match next {
            Err(_) => break Err(format!("idle for {SESSION_IDLE_TIMEOUT:?}")),
            Ok(None) => break Ok(()),
            Ok(Some(Err(e))) => break Err(format!("bad frame: {e}")),
            Ok(Some(Ok(frame))) => frame,
        };
        let header = frame.header;
        let packet = match Packet::decode(frame) {
            Ok(packet) => packet,
            Err(e) => {
                warn!(error = %e, io_seq = header.io_seq, "refusing a malformed request");
                if let Some(reply) = e.reply_to(&header) {
                    if replies.send(reply).await.is_err() {
                        break Err("writer gone".into());
                    }
                }
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break Err("request slots closed".into());
        };
        match classify(&session, &packet) {
            Route::RebuildSource(start) => {
                drop(permit);
                source_request = Some((packet, start));
                break Ok(());
            }
            Route::RebuildSink(start) => {
                drop(permit);
                let reports = rebuild::sink::Reports {
                    request: packet.clone(),
                    replies: replies.clone(),
                };
                let settings = Arc::clone(&session.entry.rebuild_settings);
                let reply = match rebuild::sink::start(
                    &session.entry,
                    settings,
                    start,
                    reports,
                    &session_end,
                ) {
                    Ok(()) => packet.reply(Message::Ack(Opcode::RebuildStart)),
                    Err(e) => {
                        warn!(error = %e, "refusing a rebuild");
                        error_reply(&packet, e.status(), e.to_string())
                    }
                };
                if replies.send(reply).await.is_err() {
                    break Err("writer gone".into());
                }
            }
            Route::Immediate(reply) => {
                drop(permit);
                if let Some(reply) = reply {
                    if replies.send(reply).await.is_err() {
                        break Err("writer gone".into());
                    }
                }
            }
            Route::Io(kind) => {
                if mutates(&packet.message) {
                    session.entry.note_received(packet.io_seq);
                }
                let mut ticket = if writes_data(&packet.message) {
                    let ticket = session.entry.order.admit_mutation(kind, packet.io_seq);
                    // Before it runs: from the first write on, the engine
                    // records the watermark, not the highest io_seq.
                    publish_watermark(&session.entry);
                    ticket
                } else {
                    session.entry.order.admit(kind)
                };
                let session = Arc::clone(&session);
                let replies = replies.clone();
                tokio::spawn(async move {
                    ticket.ready().await;
                    let reply = if session.entry.is_owner(session.conn_id) {
                        execute(&session.entry, &packet).await
                    } else {
                        error_reply(
                            &packet,
                            Status::StaleEpoch,
                            "the session was fenced by a newer target".into(),
                        )
                    };
                    if matches!(reply.message, Message::Ack(_)) {
                        ticket.succeeded();
                    }
                    drop(ticket);
                    if writes_data(&packet.message) {
                        publish_watermark(&session.entry);
                    }
                    session.io.record(&packet.message, &reply.message);
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
        (Some((request, start)), Some(mut sink)) => {
            rebuild::source::serve(&mut sink, &session.entry, &request, &start, shutdown)
                .await
                .map_err(|e| e.to_string())
        }
        _ => outcome,
    }
}

/// Where a request goes.
enum Route {
    /// Answered by the read loop (or not at all, for a stray reply).
    Immediate(Option<Packet>),
    /// Runs as an admitted IO.
    Io(IoKind),
    /// A peer asks this replica to stream a rebuild (probe session): the
    /// read loop ends and the connection carries the stream.
    RebuildSource(RebuildStart),
    /// The owning target asks this replica to rebuild itself.
    RebuildSink(RebuildStart),
}

fn classify(session: &Session, packet: &Packet) -> Route {
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
                None => Route::RebuildSource(start.clone()),
                Some(_) => Route::RebuildSink(start.clone()),
            }
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
        | Message::SnapshotListing(_)
        | Message::StatusReport(_)
        | Message::Membership(_)
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

/// The owning target sets the volume's rebuild rate limit
/// (`rebuild::state` module doc); a probe or fenced session may not.
fn rebuild_throttle(session: &Session, packet: &Packet, bytes_per_second: u64) -> Packet {
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

fn mutates(message: &Message) -> bool {
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
fn writes_data(message: &Message) -> bool {
    matches!(
        message,
        Message::Write(_) | Message::Unmap(_) | Message::WriteZeroes(_)
    )
}

/// Hands the volume's completion watermark to the engine, which records it
/// at its next commit as the durable io_seq.
pub(crate) fn publish_watermark(entry: &VolumeEntry) {
    if let Err(e) = entry
        .volume
        .set_complete_io_seq(entry.order.complete_io_seq())
    {
        debug!(volume = %entry.name, error = %e, "cannot record the completion watermark");
    }
}

async fn execute(entry: &VolumeEntry, packet: &Packet) -> Packet {
    let volume = &entry.volume;
    let io_seq = packet.io_seq;
    let result: Result<Message, EngineError> = async {
        Ok(match &packet.message {
            Message::Write(w) => {
                entry.rebuild.note_live(w.offset, w.data.len() as u64);
                volume.write(w.offset, &w.data, io_seq).await?;
                if w.fua {
                    volume.flush().await?;
                }
                Message::Ack(Opcode::Write)
            }
            Message::Read(e) => {
                let mut buf = vec![0u8; e.len_bytes as usize];
                volume.read(e.offset, &mut buf).await?;
                Message::ReadData(Bytes::from(buf))
            }
            Message::Flush => {
                volume.flush().await?;
                Message::Ack(Opcode::Flush)
            }
            Message::Unmap(e) => {
                entry.rebuild.note_live(e.offset, u64::from(e.len_bytes));
                volume
                    .unmap(e.offset, u64::from(e.len_bytes), io_seq)
                    .await?;
                Message::Ack(Opcode::Unmap)
            }
            Message::WriteZeroes(e) => {
                entry.rebuild.note_live(e.offset, u64::from(e.len_bytes));
                volume
                    .write_zeroes(e.offset, u64::from(e.len_bytes), io_seq)
                    .await?;
                Message::Ack(Opcode::WriteZeroes)
            }
            Message::SnapshotCreate(name) => {
                volume.create_snapshot(name.as_str()).await?;
                Message::Ack(Opcode::SnapshotCreate)
            }
            Message::SnapshotDestroy(name) => {
                volume.delete_snapshot(name.as_str()).await?;
                Message::Ack(Opcode::SnapshotDestroy)
            }
            Message::MembershipSet(record) => {
                entry.store_membership(record).await?;
                Message::Ack(Opcode::MembershipSet)
            }
            Message::Resize { new_size_bytes } => {
                let current = volume.size_bytes()?;
                if *new_size_bytes < current {
                    return Err(EngineError::new(
                        cstor_engine::ErrorKind::InvalidArgument,
                        format!(
                            "volume {} cannot shrink from {current} to {new_size_bytes} bytes",
                            entry.name
                        ),
                    ));
                }
                if *new_size_bytes > current {
                    entry.pool.grow_volume(&entry.name, *new_size_bytes).await?;
                }
                Message::Ack(Opcode::Resize)
            }
            other => {
                return Err(EngineError::new(
                    cstor_engine::ErrorKind::InvalidArgument,
                    format!("opcode {:#06x} is not an IO", other.wire_opcode()),
                ))
            }
        })
    }
    .await;
    match result {
        Ok(message) => packet.reply(message),
        Err(e) => {
            warn!(io_seq, error = %e, "request failed");
            engine_error_reply(packet, &e)
        }
    }
}

fn status_report(entry: &VolumeEntry) -> Result<StatusReport, EngineError> {
    let stats = entry.volume.stats()?;
    Ok(StatusReport {
        state: replica_state(entry)?,
        last_durable_io_seq: complete_through(entry, stats.last_durable_io_seq)?,
        last_received_io_seq: entry.last_received_io_seq(),
        volume_size_bytes: stats.size_bytes,
        highest_epoch_seen: entry.volume.epoch()?,
        rebuild: entry.rebuild.status().filter(|s| s.running).map_or_else(
            RebuildProgress::default,
            |s| RebuildProgress {
                done_bytes: s.done_bytes.min(s.total_bytes),
                total_bytes: s.total_bytes,
            },
        ),
    })
}

fn snapshot_listing(
    entry: &VolumeEntry,
    request: &SnapshotListRequest,
) -> Result<SnapshotListing, EngineError> {
    let mut all = entry.volume.list_snapshots()?;
    all.sort_by(|a, b| a.name.cmp(&b.name));
    let after = request.after.as_ref().map(Name::as_str);
    let mut page = all
        .into_iter()
        .filter(|s| after.is_none_or(|a| s.name.as_str() > a))
        .map(|s| {
            Name::new(s.name.clone())
                .map(|name| SnapshotInfo {
                    name,
                    io_seq: s.io_seq,
                    created_unix_secs: 0,
                })
                .map_err(|e| {
                    EngineError::new(
                        cstor_engine::ErrorKind::Corrupt,
                        format!("snapshot name {:?}: {e}", s.name),
                    )
                })
        })
        .take(MAX_SNAPSHOTS_PER_LISTING + 1)
        .collect::<Result<Vec<_>, _>>()?;
    let more = page.len() > MAX_SNAPSHOTS_PER_LISTING;
    page.truncate(MAX_SNAPSHOTS_PER_LISTING);
    Ok(SnapshotListing {
        snapshots: page,
        more,
    })
}

fn error_reply(packet: &Packet, status: Status, detail: String) -> Packet {
    packet.reply(Message::Error(ErrorReply::new(
        packet.message.wire_opcode(),
        status,
        detail,
    )))
}

fn engine_error_reply(packet: &Packet, err: &EngineError) -> Packet {
    error_reply(packet, proto_status(err), err.to_string())
}

/// Decodes a frame; a message error is answered (when the frame was a
/// request) and `None` returned.
async fn decode(conn: &mut Conn, frame: Frame) -> Result<Option<Packet>, String> {
    let header = frame.header;
    match Packet::decode(frame) {
        Ok(packet) => Ok(Some(packet)),
        Err(e) => {
            if let Some(reply) = e.reply_to(&header) {
                send(conn, reply).await?;
            }
            Err(format!("bad handshake message: {e}"))
        }
    }
}

async fn refuse(
    conn: &mut Conn,
    packet: &Packet,
    status: Status,
    detail: String,
) -> Result<(), String> {
    send(conn, error_reply(packet, status, detail)).await
}

async fn send(conn: &mut Conn, packet: Packet) -> Result<(), String> {
    conn.send(packet)
        .await
        .map_err(|e| format!("cannot send reply: {e}"))
}
