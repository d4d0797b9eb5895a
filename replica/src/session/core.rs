//! A session's decisions without its socket, tasks or timers: what the
//! first packet opens ([`open`]), where each later request goes
//! ([`SessionCore::route`]), an admitted IO run to its reply
//! ([`IoTask::run`]), and a rebuild this session starts as the sink
//! ([`SessionCore::start_sink`]). The daemon's connection
//! (`session::serve`) reads frames, times out idle peers, runs each
//! [`IoTask`] in a task of its own and writes the replies; a simulator
//! can drive the same functions with its own executor and network.
//!
//! Nothing here spawns, sleeps or reads a clock: the engine, tokio's sync
//! primitives (the claim lock, the ordering's watches) and cancellation
//! tokens are all it awaits.
//!
//! Invariants (the caller's part):
//! - [`SessionCore::route`] is called in arrival order, one request at a
//!   time: it admits IOs into the volume's order, which is the order they
//!   conflict in;
//! - every [`IoTask`] is run (or dropped: its ticket then frees the IOs
//!   behind it);
//! - [`SessionCore::close`] is called when the connection ends, so the
//!   volume is free for the next session of the same epoch.

use std::fmt;
use std::sync::Arc;

use cstor_engine::Error as EngineError;
use cstor_proto::{
    Auth, Hello, HelloAck, Message, Opcode, Packet, RebuildStart, Status, VersionRange,
};
use cstor_tls::Peer;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::access::{self, Access};
use super::execute::{execute, publish_watermark};
use super::reply::{engine_error_reply, error_reply};
use super::report::{complete_through, replica_state};
use super::route::{classify, mutates, writes_data, Route};
use super::SessionError;
use crate::metrics::{Refusal, VolumeIo};
use crate::ordering::Ticket;
use crate::rebuild::io::RebuildIo;
use crate::rebuild::sink;
use crate::registry::{ClaimError, Registry, VolumeEntry};
use crate::status::proto_status;

/// What the first packet of a connection opened.
#[derive(Debug)]
pub enum Opening {
    /// A session: `reply` (the `HelloAck`) goes back to the peer.
    Open { session: SessionCore, reply: Packet },
    /// No session: `reply` (an error reply, or `VersionMismatch`) goes back
    /// and the connection ends, for `reason` — `None` when the first
    /// packet was not a `Hello` at all.
    Refused {
        reply: Packet,
        reason: Option<SessionError>,
    },
}

/// Answers the first packet of connection `conn_id` from `peer` (its
/// certificate's identity, or `Peer::Plaintext`): checks the version, the
/// `Hello`'s authentication field, whether the peer may open this session
/// (`access::open`, before the volume is looked up), the volume, and for
/// an epoch above 0 claims it (`VolumeEntry::claim`: durable, cuts an older
/// owner, drains its IO).
pub async fn open(registry: &Arc<Registry>, conn_id: u64, peer: Peer, first: Packet) -> Opening {
    let refused = |packet: &Packet, status: Status, detail: String| Opening::Refused {
        reply: error_reply(packet, status, detail.clone()),
        reason: Some(SessionError::Refused { status, detail }),
    };
    let Message::Hello(hello) = &first.message else {
        return Opening::Refused {
            reply: error_reply(
                &first,
                Status::NotAuthenticated,
                "the first message of a connection must be Hello".into(),
            ),
            reason: None,
        };
    };
    let Some(version) = hello.versions.negotiate(VersionRange::SUPPORTED) else {
        return Opening::Refused {
            reply: first.reply(Message::VersionMismatch(VersionRange::SUPPORTED)),
            reason: Some(SessionError::NoCommonVersion {
                target: hello.versions,
            }),
        };
    };
    if let Err(detail) = authenticate(hello) {
        return refused(&first, Status::NotAuthenticated, detail);
    }
    let access = match access::open(&peer, hello.volume.as_str(), first.epoch) {
        Ok(access) => access,
        Err(detail) => {
            registry.metrics().refused(Refusal::Unauthorized);
            warn!(
                %peer,
                volume = %hello.volume.as_str(),
                epoch = first.epoch,
                %detail,
                "session refused"
            );
            return refused(&first, Status::NotAuthenticated, detail);
        }
    };
    let entry = match registry.entry(hello.volume.as_str()) {
        Ok(entry) => entry,
        Err(e) => {
            let detail = format!("volume {}: {e}", hello.volume.as_str());
            return refused(&first, proto_status(&e), detail);
        }
    };
    let fenced = if first.epoch == 0 {
        None
    } else {
        match entry.claim(first.epoch, conn_id).await {
            Ok(token) => Some(token),
            Err(e) => {
                let status = match &e {
                    // Fenced for good either way: the target must not retry.
                    ClaimError::Stale { .. } | ClaimError::Exhausted { .. } => Status::StaleEpoch,
                    ClaimError::Busy { .. } => Status::Busy,
                    ClaimError::Engine(err) => proto_status(err),
                };
                return refused(&first, status, e.to_string());
            }
        }
    };
    let ack = match hello_ack(&entry, version) {
        Ok(ack) => ack,
        Err(e) => {
            entry.release(conn_id);
            let detail = format!("volume {}: {e}", entry.name);
            return refused(&first, proto_status(&e), detail);
        }
    };
    info!(
        volume = %entry.name,
        epoch = first.epoch,
        probe = fenced.is_none(),
        %peer,
        "session opened"
    );
    Opening::Open {
        reply: first.reply(Message::HelloAck(ack)),
        session: SessionCore {
            conn_id,
            session_id: first.session_id,
            epoch: first.epoch,
            io: registry.metrics().volume(&entry.name),
            entry,
            fenced,
            peer,
            access,
            registry: Arc::clone(registry),
        },
    }
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

/// An open session (after its `Hello`).
pub struct SessionCore {
    pub(super) conn_id: u64,
    pub(super) session_id: u64,
    pub(super) epoch: u64,
    pub(super) entry: Arc<VolumeEntry>,
    /// Cancelled when a newer target takes the volume over; `None` for a
    /// probe session (epoch 0), which owns nothing.
    pub(super) fenced: Option<CancellationToken>,
    /// The volume's IO counters (metrics).
    pub(super) io: Arc<VolumeIo>,
    /// Who the peer is (its certificate), and what it may do.
    pub(super) peer: Peer,
    pub(super) access: Access,
    /// The daemon's metrics (refusals of requests).
    pub(super) registry: Arc<Registry>,
}

impl fmt::Debug for SessionCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionCore")
            .field("conn_id", &self.conn_id)
            .field("session_id", &self.session_id)
            .field("epoch", &self.epoch)
            .field("volume", &self.entry.name)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// Where a request of an open session goes.
#[derive(Debug)]
pub enum Routed {
    /// Answered at once (or, for a stray reply, not at all).
    Reply(Option<Packet>),
    /// An IO admitted into the volume's order: run it (in a task of its
    /// own, so later requests are admitted meanwhile) for its reply.
    Io(IoTask),
    /// The owning target asks this replica to rebuild itself: start the
    /// sink with [`SessionCore::start_sink`], at once (live writes are
    /// tracked from there on).
    RebuildSink {
        request: Packet,
        start: RebuildStart,
    },
    /// A peer asks this replica, on a probe session, to stream a rebuild:
    /// no further request is read, and the connection carries
    /// `rebuild::source::serve` once every reply before was written.
    RebuildSource {
        request: Packet,
        start: RebuildStart,
    },
}

impl SessionCore {
    /// Routes one request (call in arrival order). An IO is admitted here:
    /// a mutating one is noted as received, a data write holds the
    /// completion watermark below its io_seq (published to the engine
    /// before it runs).
    pub fn route(&self, packet: Packet) -> Routed {
        match classify(self, &packet) {
            Route::Immediate(reply) => Routed::Reply(reply),
            Route::RebuildSink(start) => Routed::RebuildSink {
                request: packet,
                start,
            },
            Route::RebuildSource(start) => Routed::RebuildSource {
                request: packet,
                start,
            },
            Route::ProbeDigest(kind) => Routed::Io(IoTask {
                ticket: self.entry.order.admit(kind),
                packet,
                entry: Arc::clone(&self.entry),
                conn_id: self.conn_id,
                io: Arc::clone(&self.io),
                probe: true,
            }),
            Route::Io(kind) => {
                if mutates(&packet.message) {
                    self.entry.note_received(packet.io_seq);
                }
                let ticket = if writes_data(&packet.message) {
                    let ticket = self.entry.order.admit_mutation(kind, packet.io_seq);
                    // Before it runs: from the first write on, the engine
                    // records the watermark, not the highest io_seq.
                    publish_watermark(&self.entry);
                    ticket
                } else {
                    self.entry.order.admit(kind)
                };
                Routed::Io(IoTask {
                    packet,
                    ticket,
                    entry: Arc::clone(&self.entry),
                    conn_id: self.conn_id,
                    io: Arc::clone(&self.io),
                    probe: false,
                })
            }
        }
    }

    /// Starts this replica's rebuild (sink) from `start`, with `io` (links
    /// to the source, the task, the time); its reports, replies to
    /// `request`, go to `replies`; `stop` ends it (cancel it when the
    /// session ends). Returns the answer to `request`: `Ack`, or the
    /// refusal.
    pub fn start_sink<I: RebuildIo>(
        &self,
        io: I,
        request: &Packet,
        start: RebuildStart,
        replies: mpsc::Sender<Packet>,
        stop: &CancellationToken,
    ) -> Packet {
        let reports = sink::Reports {
            request: request.clone(),
            replies,
        };
        let settings = Arc::clone(&self.entry.rebuild_settings);
        match sink::start(&self.entry, settings, io, start, reports, stop) {
            Ok(()) => request.reply(Message::Ack(Opcode::RebuildStart)),
            Err(e) => {
                warn!(error = %e, "refusing a rebuild");
                error_reply(request, e.status(), e.to_string())
            }
        }
    }

    /// Has a newer target taken the volume over (or the session been
    /// closed, or the volume deleted)? Never for a probe session.
    pub fn is_fenced(&self) -> bool {
        self.fenced
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
    }

    /// Cancelled when the session is fenced ([`SessionCore::is_fenced`]);
    /// `None` for a probe session.
    pub fn fence(&self) -> Option<&CancellationToken> {
        self.fenced.as_ref()
    }

    /// Whether this is a probe session (epoch 0): it owns nothing.
    pub fn is_probe(&self) -> bool {
        self.fenced.is_none()
    }

    /// The connection ended: frees the volume if this session owns it.
    pub fn close(&self) {
        self.entry.release(self.conn_id);
    }

    /// The session's volume.
    pub fn entry(&self) -> &Arc<VolumeEntry> {
        &self.entry
    }

    pub fn conn_id(&self) -> u64 {
        self.conn_id
    }

    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Who the peer is.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }
}

/// An admitted IO ([`Routed::Io`]).
pub struct IoTask {
    packet: Packet,
    ticket: Ticket,
    entry: Arc<VolumeEntry>,
    conn_id: u64,
    io: Arc<VolumeIo>,
    /// A rebuild sink's `Digest` on a probe session: runs while a target
    /// session owns the volume (any), not only this session's.
    probe: bool,
}

impl fmt::Debug for IoTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoTask")
            .field("request", &self.packet)
            .field("volume", &self.entry.name)
            .finish_non_exhaustive()
    }
}

impl IoTask {
    /// The request.
    pub fn request(&self) -> &Packet {
        &self.packet
    }

    /// Waits for every earlier conflicting IO, runs this one against the
    /// engine unless the session was fenced meanwhile, frees the IOs
    /// behind it, publishes the completion watermark, counts it (metrics),
    /// and returns the reply.
    pub async fn run(self) -> Packet {
        let IoTask {
            packet,
            mut ticket,
            entry,
            conn_id,
            io,
            probe,
        } = self;
        ticket.ready().await;
        let reply = if probe {
            if entry.has_owner() {
                execute(&entry, &packet).await
            } else {
                error_reply(
                    &packet,
                    Status::Busy,
                    format!(
                        "volume {} lost its target session on this replica: no digest for a rebuild",
                        entry.name
                    ),
                )
            }
        } else if !entry.is_owner(conn_id) {
            error_reply(
                &packet,
                Status::StaleEpoch,
                "the session was fenced by a newer target".into(),
            )
        } else if ticket.reruns() {
            // The watermark went below this write when it was admitted;
            // that must be durable before the rerun can put older data
            // back (after a crash the replica then says it lacks it).
            match entry.volume.flush().await {
                Ok(()) => execute(&entry, &packet).await,
                Err(e) => engine_error_reply(&packet, &e),
            }
        } else {
            execute(&entry, &packet).await
        };
        if matches!(reply.message, Message::Ack(_)) {
            ticket.succeeded();
        }
        drop(ticket);
        if writes_data(&packet.message) {
            publish_watermark(&entry);
        }
        io.record(&packet.message, &reply.message);
        reply
    }
}
