//! One replica link: the target's TCP connection to one replica, redialled
//! with backoff for as long as the volume is open.
//!
//! The link task dials, claims the volume with the target's epoch (`Hello`),
//! reads the replica's status and membership record, then forwards packets
//! from the controller to the replica and replies back as [`LinkEvent`]s,
//! in order. It sends a heartbeat when the connection has
//! been idle so that the replica does not close it. On any error it reports
//! `Down`, waits, and dials again.
//!
//! **Connection generations.** Each claimed connection gets the next
//! [`Generation`] (1, 2, ...), reported with `Up` and carried by every
//! event of that connection. Every command carries the generation the
//! controller decided it for, and the link carries out only commands of its
//! current connection: a `Send` decided for an earlier connection (a driver
//! that had not yet seen the reconnect) is dropped and reported as
//! [`LinkEvent::NotSent`], a `Reset` for an earlier connection is ignored.
//! So nothing meant for an old connection reaches a new one before the
//! controller has decided what the new one gets first (e.g. its
//! `RebuildStart`); the controller sends what is still pending again once it
//! learnt of the new connection. The wait is the dial backoff ([`BACKOFF_MIN`] doubling up to
//! [`BACKOFF_MAX`], back to the minimum after a claim), or longer when the
//! controller dropped a failed replica with a pause ([`Reset`],
//! `crate::limits::failed_retry`). A claim refused for a stale epoch is
//! final: `Fenced`; so is an epoch the link must not claim with
//! ([`LinkError::EpochOutOfRange`]: it never dials).
//!
//! What can go wrong while dialling, claiming or probing is a
//! [`LinkError`]: its message is the `reason` of the `Down` that follows.
//!
//! **Security.** Every dial (claims, probes) is secured by the volume's
//! [`Security`] ([`SessionParams::security`]): TCP, `TCP_NODELAY`, then
//! mutual TLS 1.3 in which the replica must present a certificate of the
//! cluster's CA with the replica role ([`Role::Replica`]), all within
//! [`CONNECT_TIMEOUT`]. A refused handshake is [`LinkError::Tls`]: a
//! failed dial like any other (`Down`, redialled after the backoff),
//! never a fencing. In plaintext (the operator's explicit choice) the TCP
//! stream is used as it is.

use std::net::SocketAddr;
use std::time::Duration;

use cstor_proto::{
    Auth, EncodeError, FrameCodec, FrameError, Hello, HelloAck, Membership, Message, MessageError,
    Name, Opcode, Packet, PayloadError, Status, StatusReport, VersionRange,
};
use cstor_tls::{Role, Security, Stream, TlsError};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use super::controller::{Generation, ReplicaIndex};

/// Dialling and handshake must finish within this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two dials of a replica that is down (doubles up to the max).
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A heartbeat goes out after this long without traffic (the replica closes
/// a session silent for 15 s).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);

/// Why a replica could not be dialled, claimed or probed. The messages
/// carry the underlying error's text; they are the `reason` of a
/// [`LinkEvent::Down`] or of a refused probe.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The TCP connection could not be made.
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    /// The socket refused `TCP_NODELAY`.
    #[error("cannot set TCP_NODELAY: {0}")]
    NoDelay(std::io::Error),
    /// The TLS handshake failed: the replica presented no certificate of
    /// our CA, not a replica's, an expired one, or refused ours.
    #[error("cannot secure the link: {0}")]
    Tls(TlsError),
    /// The volume's name is not a valid protocol name.
    #[error("volume name {volume:?}: {error}")]
    VolumeName { volume: String, error: PayloadError },
    /// A request could not be sent.
    #[error("cannot send: {0}")]
    Send(EncodeError),
    /// A frame came back that is not a valid packet.
    #[error("bad answer: {0}")]
    Decode(MessageError),
    /// The stream broke (or its framing did).
    #[error("bad frame: {0}")]
    Receive(FrameError),
    /// The replica closed the connection before answering.
    #[error("connection closed")]
    Closed,
    /// The replica speaks no protocol version we do.
    #[error("no common protocol version: replica speaks {}..={}", .0.min, .0.max)]
    VersionMismatch(VersionRange),
    /// The replica has accepted a newer epoch: the claim is refused for
    /// good (the target is fenced).
    #[error("{0}")]
    StaleEpoch(String),
    /// The session's epoch is not one a target may claim (0 is a probe,
    /// above `crate::limits::MAX_EPOCH` no successor could fence it): the
    /// link never claims with it, for good.
    #[error("epoch {0} is outside the claimable 1..={max}", max = crate::limits::MAX_EPOCH)]
    EpochOutOfRange(u64),
    /// The replica refused the handshake.
    #[error("{status:?}: {detail}")]
    HelloRefused { status: Status, detail: String },
    /// The replica answered `Status` with an error.
    #[error("status: {status:?}: {detail}")]
    StatusRefused { status: Status, detail: String },
    /// The replica answered `MembershipGet` with an error.
    #[error("membership: {status:?}: {detail}")]
    MembershipRefused { status: Status, detail: String },
    /// The replica answered `request` with a message of another kind.
    #[error("unexpected answer to {request}: {opcode:#06x}")]
    Unexpected { request: &'static str, opcode: u16 },
    /// Dial and claim did not finish within the connect timeout.
    #[error("no handshake within {0:?}")]
    HandshakeTimeout(Duration),
    /// A probe did not finish within the connect timeout.
    #[error("probe timed out")]
    ProbeTimeout,
}

/// What a link tells the volume driver.
#[derive(Debug)]
pub enum LinkEvent {
    /// Claimed: IO may flow, on connection `generation`.
    Up {
        replica: ReplicaIndex,
        generation: Generation,
        ack: HelloAck,
        status: StatusReport,
        /// The membership record it holds.
        membership: Membership,
    },
    /// A reply on connection `generation`.
    Reply {
        replica: ReplicaIndex,
        generation: Generation,
        packet: Packet,
    },
    /// Connection `generation` is gone (or no new one could be made: the
    /// last one's generation, 0 if there never was one).
    Down {
        replica: ReplicaIndex,
        generation: Generation,
        reason: String,
    },
    /// A packet decided for connection `generation` was not sent: that
    /// connection is gone (the link is on another one, or on none).
    NotSent {
        replica: ReplicaIndex,
        generation: Generation,
        io_seq: u64,
    },
    /// The replica has accepted a newer epoch: this target is fenced.
    Fenced {
        replica: ReplicaIndex,
        detail: String,
    },
}

/// What the driver queues to a link (a bounded queue,
/// `crate::limits::LINK_QUEUE`).
#[derive(Debug)]
pub enum LinkCommand {
    /// Send on connection `generation`; if that is not the current one,
    /// the packet is dropped and reported [`LinkEvent::NotSent`].
    Send {
        generation: Generation,
        packet: Packet,
    },
}

/// The controller dropped the replica: close connection `generation` and
/// dial again after the backoff, and not before `pause`. Ignored if the
/// link is no longer on that connection. It travels on a watch of its own,
/// so that a full command queue never holds it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reset {
    pub generation: Generation,
    pub pause: Duration,
}

/// The session parameters every connection of the volume uses.
#[derive(Debug, Clone)]
pub struct SessionParams {
    pub volume: String,
    pub epoch: u64,
    pub session_id: u64,
    pub first_io_seq: u64,
    /// How every connection is secured (module doc, "Security").
    pub security: Security,
}

/// Runs the link of `replica` until `stop` is cancelled or the target is
/// fenced.
pub async fn run(
    replica: ReplicaIndex,
    addr: SocketAddr,
    params: SessionParams,
    mut commands: mpsc::Receiver<LinkCommand>,
    mut resets: watch::Receiver<Option<Reset>>,
    events: mpsc::UnboundedSender<LinkEvent>,
    stop: CancellationToken,
) {
    let span = tracing::info_span!("link", replica, %addr, volume = %params.volume);
    async move {
        let mut backoff = BACKOFF_MIN;
        let mut generation: Generation = 0;
        // The last TLS refusal logged: a misconfigured certificate is
        // logged when it starts (or changes), not at every redial.
        let mut last_refusal: Option<String> = None;
        loop {
            if stop.is_cancelled() {
                return;
            }
            // No connection: whatever is queued was decided for one that is
            // gone.
            while let Ok(command) = commands.try_recv() {
                if !not_sent(replica, command, &events) {
                    return;
                }
            }
            let outcome = tokio::select! {
                () = stop.cancelled() => return,
                outcome = tokio::time::timeout(CONNECT_TIMEOUT, claim(addr, &params)) => outcome,
            };
            match outcome {
                Ok(Ok((conn, ack, status, membership))) => {
                    generation += 1;
                    info!(generation, state = ?ack.state, durable = ack.last_durable_io_seq, "replica claimed");
                    backoff = BACKOFF_MIN;
                    last_refusal = None;
                    if events
                        .send(LinkEvent::Up {
                            replica,
                            generation,
                            ack,
                            status,
                            membership,
                        })
                        .is_err()
                    {
                        return;
                    }
                    let ends = Ends {
                        commands: &mut commands,
                        resets: &mut resets,
                        events: &events,
                    };
                    let (reason, pause) =
                        pump(replica, generation, conn, &params, ends, &stop).await;
                    if stop.is_cancelled() {
                        return;
                    }
                    warn!(generation, %reason, ?pause, "replica link down");
                    backoff = backoff.max(pause);
                    let down = LinkEvent::Down {
                        replica,
                        generation,
                        reason,
                    };
                    if events.send(down).is_err() {
                        return;
                    }
                }
                Ok(Err(LinkError::StaleEpoch(detail))) => {
                    let _ = events.send(LinkEvent::Fenced { replica, detail });
                    return;
                }
                Ok(Err(e @ LinkError::EpochOutOfRange(_))) => {
                    let detail = e.to_string();
                    let _ = events.send(LinkEvent::Fenced { replica, detail });
                    return;
                }
                Ok(Err(e)) => {
                    let reason = e.to_string();
                    if matches!(e, LinkError::Tls(_)) {
                        if last_refusal.as_ref() != Some(&reason) {
                            warn!(%reason, "replica link refused by TLS; redialling");
                            last_refusal = Some(reason.clone());
                        }
                    } else {
                        debug!(%reason, "cannot claim the replica");
                    }
                    let down = LinkEvent::Down {
                        replica,
                        generation,
                        reason,
                    };
                    if events.send(down).is_err() {
                        return;
                    }
                }
                Err(_) => {
                    let reason = LinkError::HandshakeTimeout(CONNECT_TIMEOUT).to_string();
                    let down = LinkEvent::Down {
                        replica,
                        generation,
                        reason,
                    };
                    if events.send(down).is_err() {
                        return;
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
    .instrument(span)
    .await
}

type Conn = Framed<Stream, FrameCodec>;

/// Dials and opens a session; also asks for the replica's status and
/// membership record.
async fn claim(
    addr: SocketAddr,
    params: &SessionParams,
) -> Result<(Conn, HelloAck, StatusReport, Membership), LinkError> {
    if !(1..=crate::limits::MAX_EPOCH).contains(&params.epoch) {
        return Err(LinkError::EpochOutOfRange(params.epoch));
    }
    let mut conn = dial(addr, &params.security).await?;
    let ack = hello(&mut conn, params, params.epoch).await?;
    let status = status(&mut conn, params, params.epoch).await?;
    let membership = membership(&mut conn, params, params.epoch).await?;
    Ok((conn, ack, status, membership))
}

/// What a probe learns of a replica.
#[derive(Debug, Clone)]
pub struct Probe {
    pub ack: HelloAck,
    pub status: StatusReport,
    /// The membership record it holds (generation 0: none).
    pub membership: Membership,
}

/// Asks a replica for its state and membership record without claiming
/// anything (epoch 0), over a connection secured by `security`.
pub async fn probe(
    addr: SocketAddr,
    volume: &str,
    security: &Security,
) -> Result<Probe, LinkError> {
    let params = SessionParams {
        volume: volume.to_owned(),
        epoch: 0,
        session_id: 0,
        first_io_seq: 0,
        security: security.clone(),
    };
    let mut conn = dial(addr, security).await?;
    let ack = hello(&mut conn, &params, 0).await?;
    let status = status(&mut conn, &params, 0).await?;
    let membership = membership(&mut conn, &params, 0).await?;
    Ok(Probe {
        ack,
        status,
        membership,
    })
}

/// TCP, `TCP_NODELAY`, then the TLS handshake expecting a replica
/// (module doc, "Security").
async fn dial(addr: SocketAddr, security: &Security) -> Result<Conn, LinkError> {
    let tcp = TcpStream::connect(addr).await.map_err(LinkError::Connect)?;
    tcp.set_nodelay(true).map_err(LinkError::NoDelay)?;
    let (stream, _replica) = security
        .connect(tcp, &[Role::Replica])
        .await
        .map_err(LinkError::Tls)?;
    let mut conn = Framed::new(stream, FrameCodec::new());
    conn.set_backpressure_boundary(cstor_proto::WRITE_BATCH_BYTES);
    Ok(conn)
}

async fn hello(conn: &mut Conn, params: &SessionParams, epoch: u64) -> Result<HelloAck, LinkError> {
    let volume = Name::new(params.volume.clone()).map_err(|error| LinkError::VolumeName {
        volume: params.volume.clone(),
        error,
    })?;
    let request = Packet {
        session_id: params.session_id,
        epoch,
        io_seq: 0,
        message: Message::Hello(Hello {
            versions: VersionRange::SUPPORTED,
            volume,
            next_io_seq: params.first_io_seq,
            auth: Auth::None,
        }),
    };
    match call(conn, request).await? {
        Message::HelloAck(ack) => Ok(ack),
        Message::VersionMismatch(range) => Err(LinkError::VersionMismatch(range)),
        Message::Error(e) if e.status == Status::StaleEpoch => Err(LinkError::StaleEpoch(e.detail)),
        Message::Error(e) => Err(LinkError::HelloRefused {
            status: e.status,
            detail: e.detail,
        }),
        m => Err(LinkError::Unexpected {
            request: "Hello",
            opcode: m.wire_opcode(),
        }),
    }
}

async fn status(
    conn: &mut Conn,
    params: &SessionParams,
    epoch: u64,
) -> Result<StatusReport, LinkError> {
    let request = Packet {
        session_id: params.session_id,
        epoch,
        io_seq: 0,
        message: Message::Status,
    };
    match call(conn, request).await? {
        Message::StatusReport(report) => Ok(report),
        Message::Error(e) => Err(LinkError::StatusRefused {
            status: e.status,
            detail: e.detail,
        }),
        m => Err(LinkError::Unexpected {
            request: "Status",
            opcode: m.wire_opcode(),
        }),
    }
}

async fn membership(
    conn: &mut Conn,
    params: &SessionParams,
    epoch: u64,
) -> Result<Membership, LinkError> {
    let request = Packet {
        session_id: params.session_id,
        epoch,
        io_seq: 0,
        message: Message::MembershipGet,
    };
    match call(conn, request).await? {
        Message::Membership(record) => Ok(record),
        Message::Error(e) => Err(LinkError::MembershipRefused {
            status: e.status,
            detail: e.detail,
        }),
        m => Err(LinkError::Unexpected {
            request: "MembershipGet",
            opcode: m.wire_opcode(),
        }),
    }
}

async fn call(conn: &mut Conn, request: Packet) -> Result<Message, LinkError> {
    conn.send(request).await.map_err(LinkError::Send)?;
    match conn.next().await {
        Some(Ok(frame)) => Packet::decode(frame)
            .map(|p| p.message)
            .map_err(LinkError::Decode),
        Some(Err(e)) => Err(LinkError::Receive(e)),
        None => Err(LinkError::Closed),
    }
}

/// Reports a command that will not be carried out because its connection
/// is gone; false once the driver is gone.
fn not_sent(
    replica: ReplicaIndex,
    command: LinkCommand,
    events: &mpsc::UnboundedSender<LinkEvent>,
) -> bool {
    match command {
        LinkCommand::Send { generation, packet } => {
            debug!(
                generation,
                io_seq = packet.io_seq,
                "dropping a packet meant for a closed connection"
            );
            events
                .send(LinkEvent::NotSent {
                    replica,
                    generation,
                    io_seq: packet.io_seq,
                })
                .is_ok()
        }
    }
}

/// Does the link, on connection `current`, carry out a command (a `Send`
/// or a [`Reset`]) the controller decided for connection `decided_for`?
/// Only if it was decided for this very connection (module doc,
/// "Connection generations"): what was meant for an earlier one is dropped
/// (a `Send` reported [`LinkEvent::NotSent`], a `Reset` ignored), so that
/// nothing meant for an old connection reaches a new one before what the
/// controller decided the new one gets first (its `RebuildStart`). The one
/// place the rule is written: the link task and a simulator's link both
/// ask it.
pub fn carries(current: Generation, decided_for: Generation) -> bool {
    decided_for == current
}

/// What one command does to connection `current`.
enum Step {
    /// Feed this packet.
    Feed(Packet),
    /// Not for this connection: dropped (and reported).
    Skip,
    /// Close the connection: why, and the pause the controller asked for.
    Close(String, Duration),
}

fn step(
    replica: ReplicaIndex,
    current: Generation,
    command: LinkCommand,
    events: &mpsc::UnboundedSender<LinkEvent>,
) -> Step {
    match command {
        LinkCommand::Send { generation, packet } if carries(current, generation) => {
            Step::Feed(packet)
        }
        stale => {
            if not_sent(replica, stale, events) {
                Step::Skip
            } else {
                Step::Close("volume closed".into(), Duration::ZERO)
            }
        }
    }
}

/// The link's ends of its channels to the driver.
struct Ends<'a> {
    commands: &'a mut mpsc::Receiver<LinkCommand>,
    resets: &'a mut watch::Receiver<Option<Reset>>,
    events: &'a mpsc::UnboundedSender<LinkEvent>,
}

/// Moves packets both ways on connection `generation` until it fails, a
/// reset, or stop; returns why, and how long the controller wants the next
/// dial delayed. Commands of other generations are dropped (module doc).
async fn pump(
    replica: ReplicaIndex,
    generation: Generation,
    conn: Conn,
    params: &SessionParams,
    ends: Ends<'_>,
    stop: &CancellationToken,
) -> (String, Duration) {
    let Ends {
        commands,
        resets,
        events,
    } = ends;
    // A reset decided for an earlier connection does not touch this one.
    resets.mark_unchanged();
    let (mut sink, mut stream) = conn.split();
    let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return ("volume closed".into(), Duration::ZERO),
            changed = resets.changed() => {
                if changed.is_err() {
                    return ("volume closed".into(), Duration::ZERO);
                }
                let reset = *resets.borrow_and_update();
                if let Some(Reset { pause, .. }) = reset.filter(|r| carries(generation, r.generation)) {
                    return ("reset by the controller".into(), pause);
                }
            },
            command = commands.recv() => {
                let Some(command) = command else {
                    return ("volume closed".into(), Duration::ZERO);
                };
                let mut fed = false;
                let mut next = Some(command);
                // Batch whatever else is queued into one flush.
                while let Some(command) = next.take() {
                    match step(replica, generation, command, events) {
                        Step::Feed(packet) => {
                            if let Err(e) = sink.feed(packet).await {
                                return (format!("cannot send: {e}"), Duration::ZERO);
                            }
                            fed = true;
                        }
                        Step::Skip => {}
                        Step::Close(reason, pause) => return (reason, pause),
                    }
                    next = commands.try_recv().ok();
                }
                if fed {
                    if let Err(e) = sink.flush().await {
                        return (format!("cannot send: {e}"), Duration::ZERO);
                    }
                    heartbeat.reset();
                }
            },
            frame = stream.next() => match frame {
                Some(Ok(frame)) => match Packet::decode(frame) {
                    Ok(packet) if packet.message == Message::Ack(Opcode::Heartbeat) => {}
                    Ok(packet) => {
                        let reply = LinkEvent::Reply { replica, generation, packet };
                        if events.send(reply).is_err() {
                            return ("volume closed".into(), Duration::ZERO);
                        }
                    }
                    Err(e) => return (format!("undecodable reply: {e}"), Duration::ZERO),
                },
                Some(Err(e)) => return (format!("bad frame: {e}"), Duration::ZERO),
                None => return ("connection closed by the replica".into(), Duration::ZERO),
            },
            _ = heartbeat.tick() => {
                let ping = Packet {
                    session_id: params.session_id,
                    epoch: params.epoch,
                    io_seq: 0,
                    message: Message::Heartbeat,
                };
                if let Err(e) = sink.send(ping).await {
                    return (format!("cannot send heartbeat: {e}"), Duration::ZERO);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
