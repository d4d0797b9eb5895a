//! One iSCSI connection: the thin async shell around the sans-IO cores.
//!
//! Login ([`LoginMachine`]) until full feature phase, then a loop over three
//! sources: PDUs from the initiator ([`FullFeature::on_pdu`]), finished SCSI
//! tasks ([`FullFeature::complete`]), and the keepalive clock. Every action
//! the cores return is carried out in order: PDUs are queued to the socket
//! (and flushed once the batch is done), tasks go to the logical unit, and
//! block IO runs in its own tokio task so that many commands are in flight
//! (bounded by the session's command window). Each task goes out with the
//! [`TaskId`] the session core gave it and its completion comes back with
//! it: which completions are dropped is the cores' decision (the session
//! core's for tasks a task management function aborted, the logical
//! unit's for tasks another initiator's PREEMPT AND ABORT aborted, on
//! whichever connection they run), and this shell keeps no task state.
//!
//! Bounds (docs/architecture.md, invariant 9; values in [`crate::limits`]):
//! the first Login PDU must come within `FIRST_PDU_TIMEOUT` and the whole
//! login within `LOGIN_TIMEOUT`; a PDU the initiator does not take off the
//! socket within `SEND_TIMEOUT` closes the connection. The IO data the
//! connection holds is bounded by the session core's byte budgets
//! ([`crate::iscsi::budget`]): this shell reports each Data-In it queued to
//! the socket ([`FullFeature::data_in_sent`]) and, while the core's
//! commands wait for the target's budget, wakes it when budget is given
//! back anywhere ([`FullFeature::budget_freed`]). Past the sink's
//! backpressure boundary a send waits for the socket, and meanwhile no
//! PDU is read: TCP pushes back.
//!
//! A session whose initiator leaves the allowlist
//! ([`crate::iscsi::access`]) is closed at once: no command of it is
//! accepted after that (tasks already sent to the volume still finish).
//!
//! Why a connection ended, other than by the initiator closing it or
//! logging out (or a refused login, after its response was sent), is a
//! [`ConnError`], logged by its `Display`.

use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::block;
use super::task::{self, Started, TaskIo};
use super::Shared;
use crate::iscsi::access::{self, Allowlist};
use crate::iscsi::codec::{CodecError, IscsiCodec, Rejected};
use crate::iscsi::keepalive::{Keepalive, KeepaliveAction};
use crate::iscsi::login::{LoginAction, LoginMachine, SessionType};
use crate::iscsi::pdu::Pdu;
use crate::iscsi::session::{Action, FullFeature, Task, TaskId, TaskResult};
use crate::limits::{EVENTS_PER_FLUSH, FIRST_PDU_TIMEOUT, SEND_TIMEOUT};
use crate::scsi::Nexus;

pub use crate::limits::{KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, LOGIN_TIMEOUT};

type Conn = Framed<TcpStream, IscsiCodec>;

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// No Login PDU came within [`FIRST_PDU_TIMEOUT`] of connecting.
    #[error("no Login PDU within {0:?} of connecting")]
    FirstPduTimeout(Duration),
    /// The login did not finish within [`LOGIN_TIMEOUT`].
    #[error("login did not finish within {0:?}")]
    LoginTimeout(Duration),
    /// The socket failed, or the stream could not be framed, during login.
    #[error("during login: {0}")]
    DuringLogin(#[source] CodecError),
    /// A PDU that could not be parsed during login.
    #[error("malformed PDU during login: {0}")]
    MalformedLoginPdu(#[source] Box<Rejected>),
    /// A PDU other than a Login Request before full feature phase
    /// (RFC 7143 §6.3).
    #[error("a PDU other than Login Request during login")]
    NotLoginRequest,
    /// A PDU could not be written to the socket.
    #[error("cannot send: {0}")]
    Send(#[source] CodecError),
    /// The initiator took nothing off the socket for [`SEND_TIMEOUT`].
    #[error("the initiator took nothing off the socket for {0:?}")]
    SendTimeout(Duration),
    /// The socket failed, or the stream could not be framed, in full
    /// feature phase.
    #[error(transparent)]
    Receive(CodecError),
    /// The initiator answered no ping within [`KEEPALIVE_TIMEOUT`].
    #[error("no answer to a ping within {0:?}")]
    KeepaliveTimeout(Duration),
    /// The initiator was removed from the allowlist (fencing).
    #[error("initiator no longer allowed")]
    Revoked,
    /// The target is stopping.
    #[error("target shutting down")]
    Shutdown,
}

/// A task that finished its block IO.
struct Finished {
    io: TaskIo,
    result: crate::scsi::IoResult,
}

/// Serves one accepted connection until it ends.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    tsih: NonZeroU16,
    shutdown: CancellationToken,
) {
    let local = match stream.local_addr() {
        Ok(addr) => addr,
        Err(e) => {
            warn!(%peer, error = %e, "cannot read the local address");
            return;
        }
    };
    if let Err(e) = stream.set_nodelay(true) {
        debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let mut conn = Framed::new(stream, IscsiCodec::new());
    // Watched from before the login reads it, so that a change while the
    // login runs is not missed.
    let access = shared.config.allowed_initiators.subscribe();
    let logged_in =
        match tokio::time::timeout(LOGIN_TIMEOUT, login(&mut conn, &shared, tsih, local)).await {
            Ok(Ok(Some(session))) => session,
            Ok(Ok(None)) => return,
            Ok(Err(reason)) => {
                info!(%peer, %reason, "login failed");
                return;
            }
            Err(_) => {
                info!(%peer, "{}", ConnError::LoginTimeout(LOGIN_TIMEOUT));
                return;
            }
        };
    let nexus = Nexus::iscsi(
        &logged_in.initiator_name,
        logged_in.isid,
        shared.config.portal_group_tag,
    );
    let discovery = logged_in.session_type == SessionType::Discovery;
    info!(
        %peer,
        initiator = %logged_in.initiator_name,
        discovery,
        "logged in"
    );
    let result = full_feature(conn, &shared, *logged_in, &nexus, access, shutdown).await;
    if !discovery {
        shared.lu.lock().nexus_lost(&nexus);
    }
    match result {
        Ok(()) => info!(%peer, "connection closed"),
        Err(reason) => info!(%peer, %reason, "connection closed"),
    }
}

/// Runs the login phase; `None` when it failed (after the failure response
/// was sent) or the initiator went away.
async fn login(
    conn: &mut Conn,
    shared: &Shared,
    tsih: NonZeroU16,
    local: SocketAddr,
) -> Result<Option<Box<crate::iscsi::login::LoggedIn>>, ConnError> {
    let mut machine = LoginMachine::new(&shared.config, tsih, local);
    let mut first = true;
    loop {
        let next = if first {
            first = false;
            match tokio::time::timeout(FIRST_PDU_TIMEOUT, conn.next()).await {
                Ok(next) => next,
                Err(_) => return Err(ConnError::FirstPduTimeout(FIRST_PDU_TIMEOUT)),
            }
        } else {
            conn.next().await
        };
        let pdu = match next {
            None => return Ok(None),
            Some(Err(e)) => return Err(ConnError::DuringLogin(e)),
            Some(Ok(Err(rejected))) => {
                return Err(ConnError::MalformedLoginPdu(Box::new(rejected)));
            }
            Some(Ok(Ok(pdu))) => pdu,
        };
        let Pdu::LoginRequest(request) = pdu else {
            // RFC 7143 §6.3: only Login Requests before full feature phase.
            return Err(ConnError::NotLoginRequest);
        };
        match machine.on_request(&request) {
            LoginAction::Continue(response) => send(conn, Pdu::LoginResponse(response)).await?,
            LoginAction::Fail(response, failure) => {
                send(conn, Pdu::LoginResponse(response)).await?;
                info!(?failure, "login refused");
                return Ok(None);
            }
            LoginAction::Complete(response, session) => {
                conn.codec_mut()
                    .arm_full_feature(session.full_feature_config());
                send(conn, Pdu::LoginResponse(response)).await?;
                return Ok(Some(session));
            }
        }
    }
}

async fn send(conn: &mut Conn, pdu: Pdu) -> Result<(), ConnError> {
    within_send_timeout(conn.send(pdu)).await
}

/// `sink`'s `op` (a feed or a flush), failing once the initiator took
/// nothing off the socket for [`SEND_TIMEOUT`]: it stopped reading, and
/// what it holds must not stay held.
async fn within_send_timeout<F>(op: F) -> Result<(), ConnError>
where
    F: std::future::Future<Output = Result<(), CodecError>>,
{
    match tokio::time::timeout(SEND_TIMEOUT, op).await {
        Ok(done) => done.map_err(ConnError::Send),
        Err(_) => Err(ConnError::SendTimeout(SEND_TIMEOUT)),
    }
}

/// Resolves when buffer budget was given back somewhere in the target,
/// if the core's commands wait for it; never otherwise.
async fn budget_freed(freed: &mut watch::Receiver<u64>, waiting: bool) {
    if !waiting || freed.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn full_feature(
    mut conn: Conn,
    shared: &Arc<Shared>,
    session: crate::iscsi::login::LoggedIn,
    nexus: &Nexus,
    access: watch::Receiver<Allowlist>,
    shutdown: CancellationToken,
) -> Result<(), ConnError> {
    let initiator = session.initiator_name.clone();
    let revoked = access::revoked(access, &initiator);
    tokio::pin!(revoked);
    conn.set_backpressure_boundary(cstor_proto::WRITE_BATCH_BYTES);
    let (mut sink, mut stream) = conn.split();
    let mut ff = FullFeature::new(&shared.config, session);
    let mut freed = shared.config.buffers.target.subscribe();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Finished>();
    let epoch = Instant::now();
    let now_ms = || u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut keepalive = Keepalive::new(
        KEEPALIVE_INTERVAL.as_millis() as u64,
        KEEPALIVE_TIMEOUT.as_millis() as u64,
        now_ms(),
    );
    let mut clock = tokio::time::interval(Duration::from_secs(1));
    clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let waiting = ff.waits_for_target_budget();
        let first = tokio::select! {
            () = shutdown.cancelled() => return Err(ConnError::Shutdown),
            // Fencing: the initiator was removed from the allowlist.
            () = &mut revoked => return Err(ConnError::Revoked),
            frame = stream.next() => Event::Frame(frame),
            finished = done_rx.recv() => Event::Finished(finished),
            () = budget_freed(&mut freed, waiting) => Event::BudgetFreed,
            _ = clock.tick() => Event::Tick,
        };
        // Every give-back from here on wakes the next wait: the core
        // retries below, after this point.
        freed.borrow_and_update();
        // Every event that is ready now is handled before one flush: at
        // queue depth its answers leave in one write, not one each.
        let mut next = Some(first);
        let mut handled = 0;
        let mut close = false;
        while let Some(event) = next.take() {
            let actions = match event {
                // The initiator closed: what is queued still goes out.
                Event::Frame(None) => {
                    close = true;
                    Vec::new()
                }
                Event::Frame(Some(Err(e))) => return Err(ConnError::Receive(e)),
                Event::Frame(Some(Ok(Ok(pdu)))) => {
                    keepalive.heard(now_ms());
                    ff.on_pdu(pdu)
                }
                Event::Frame(Some(Ok(Err(rejected)))) => {
                    keepalive.heard(now_ms());
                    warn!(error = %rejected, "rejecting a PDU");
                    ff.on_rejected(rejected.reason, &rejected.header)
                }
                Event::Finished(Some(f)) => finish(shared, &mut ff, f),
                Event::Finished(None) => Vec::new(),
                Event::BudgetFreed => ff.budget_freed(),
                Event::Tick => match keepalive.poll(now_ms()) {
                    KeepaliveAction::Wait { .. } => Vec::new(),
                    KeepaliveAction::Ping { ttt } => ff.ping(ttt),
                    KeepaliveAction::Dead => {
                        return Err(ConnError::KeepaliveTimeout(KEEPALIVE_TIMEOUT))
                    }
                },
            };
            let mut pending_actions = std::collections::VecDeque::from(actions);
            while let Some(action) = pending_actions.pop_front() {
                match action {
                    Action::Send(pdu) => {
                        let data_in = match &pdu {
                            Pdu::DataIn(d) => d.data.len(),
                            _ => 0,
                        };
                        within_send_timeout(sink.feed(pdu)).await?;
                        if data_in > 0 {
                            pending_actions.extend(ff.data_in_sent(data_in));
                        }
                    }
                    Action::Execute(task) => {
                        if let Some((id, result)) = execute(shared, nexus, task, &done_tx) {
                            pending_actions.extend(ff.complete(id, result));
                        }
                    }
                    Action::Reset { kind, lun } => task::reset(&mut shared.lu.lock(), kind, lun),
                    Action::Close => close = true,
                }
            }
            handled += 1;
            if !close && handled < EVENTS_PER_FLUSH {
                next = ready_event(&mut done_rx, &mut stream);
            }
        }
        within_send_timeout(sink.flush()).await?;
        if close {
            return Ok(());
        }
    }
}

/// What woke a full-feature connection. Lives on the stack for one turn
/// of the loop; boxing the completion would cost an allocation per command.
#[allow(clippy::large_enum_variant)]
enum Event<F> {
    Frame(Option<F>),
    Finished(Option<Finished>),
    /// Buffer budget was given back while commands waited for it.
    BudgetFreed,
    Tick,
}

/// A completion or a received PDU that is ready without waiting, if any
/// (completions first: they free window and buffer space).
fn ready_event<S: futures::Stream + Unpin>(
    done: &mut mpsc::UnboundedReceiver<Finished>,
    stream: &mut S,
) -> Option<Event<S::Item>> {
    use futures::FutureExt;
    if let Ok(f) = done.try_recv() {
        return Some(Event::Finished(Some(f)));
    }
    stream.next().now_or_never().map(Event::Frame)
}

/// A task's block IO is done: the logical unit finishes its command and
/// the session core answers it, or ends it silently when the logical unit
/// says it was aborted meanwhile (another initiator's PREEMPT AND ABORT).
fn finish(shared: &Shared, ff: &mut FullFeature<'_>, f: Finished) -> Vec<Action> {
    task::finish(&mut shared.lu.lock(), ff, f.io, f.result)
}

/// Starts a task: answered at once (`Some`), or its block IO spawned and
/// answered through `done` later (`None`).
fn execute(
    shared: &Arc<Shared>,
    nexus: &Nexus,
    task: Task,
    done: &mpsc::UnboundedSender<Finished>,
) -> Option<(TaskId, TaskResult)> {
    let (started, refused) = task::start(&mut shared.lu.lock(), nexus, task);
    if refused {
        // Refused by the unit (the volume is read-only): counted as the
        // volume's own DATA PROTECT answers are.
        let refusal: crate::scsi::IoResult = Err(crate::scsi::IoError::WriteProtected);
        shared
            .metrics
            .record(crate::metrics::IoOp::Write, 0, Duration::ZERO, &refusal);
    }
    match started {
        Started::Done(id, result) => Some((id, result)),
        Started::Io(io) => {
            let shared = Arc::clone(shared);
            let done = done.clone();
            tokio::spawn(async move {
                let result = block::perform_measured(
                    &shared.metrics,
                    &shared.volume,
                    &shared.gate,
                    shared.block_size,
                    io.pending.request(),
                )
                .await;
                let _ = done.send(Finished { io, result });
            });
            None
        }
    }
}
