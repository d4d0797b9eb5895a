//! What a rebuild needs from the outside world, as traits: a clock
//! ([`Clock`]: the time, and sleeps for pacing and timeouts) and, for a
//! sink, links to a source and a task of its own ([`RebuildIo`]). The
//! daemon runs them on tokio ([`TokioIo`]: TCP, TLS, the frame codec,
//! `tokio::spawn`, `tokio::time`); a simulator can run the same sink and
//! source code on its own executor, network and time.
//!
//! Invariants: the rebuild code reads the time only through [`Clock::now`]
//! and waits only through [`Clock::sleep`] (never the wall clock), so
//! given the same clock and the same packets a run makes the same
//! decisions; [`deadline`] polls the work before the timer, as
//! `tokio::time::timeout` does.

use std::fmt;
use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::Duration;

use cstor_proto::{FrameCodec, Packet};
use cstor_tls::{Role, Security, Stream as TlsStream};
use futures::future::{self, BoxFuture, Either};
use futures::{FutureExt, Sink, Stream};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use super::RebuildError;

/// Time as a rebuild sees it.
pub trait Clock: Clone + Send + Sync + 'static {
    /// Monotonic time since an origin fixed for this value and its clones
    /// (only differences are used).
    fn now(&self) -> Duration;

    /// Resolves `d` from now.
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()>;
}

/// A sink's outside world: its clock, links to a source, and its task.
pub trait RebuildIo: Clock {
    /// A link to a source replica carrying whole packets: a packet sent is
    /// encoded and written, one received was read and decoded (an error is
    /// the link failing: the stream is out of sync or undecodable).
    type Conn: Sink<Packet, Error = LinkError>
        + Stream<Item = Result<Packet, LinkError>>
        + Unpin
        + Send
        + 'static;

    /// Connects to the source at `peer_address` (secured: the source must
    /// be a replica); returns the link and this end's own address, which
    /// the sink names in its `RebuildStart`. Errors are
    /// [`RebuildError::Peer`].
    fn dial(
        &self,
        peer_address: &str,
    ) -> BoxFuture<'static, Result<(Self::Conn, String), RebuildError>>;

    /// Runs `task` (the sink's run) in the background.
    fn spawn(&self, task: BoxFuture<'static, ()>);
}

/// A link failed: why, in words (the rebuild error's detail).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LinkError(pub String);

/// `work` did not finish in time ([`deadline`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// Runs `work` for at most `limit` of `clock`'s time. The work is polled
/// first: a result ready when the time is up still counts.
pub async fn deadline<C: Clock, F: Future>(
    clock: &C,
    limit: Duration,
    work: F,
) -> Result<F::Output, Elapsed> {
    let work = pin!(work);
    match future::select(work, clock.sleep(limit)).await {
        Either::Left((output, _)) => Ok(output),
        Either::Right(((), _)) => Err(Elapsed),
    }
}

/// The daemon's clock: tokio's (`tokio::time`).
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        tokio::time::sleep(d).boxed()
    }
}

/// The daemon's rebuild IO: TCP with `security` (the daemon's link
/// security), the frame codec, `tokio::spawn` and tokio's clock.
#[derive(Clone)]
pub struct TokioIo {
    security: Security,
    clock: TokioClock,
}

impl TokioIo {
    pub fn new(security: Security) -> Self {
        Self {
            security,
            clock: TokioClock::new(),
        }
    }
}

impl fmt::Debug for TokioIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokioIo").finish_non_exhaustive()
    }
}

impl Clock for TokioIo {
    fn now(&self) -> Duration {
        self.clock.now()
    }

    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        self.clock.sleep(d)
    }
}

impl RebuildIo for TokioIo {
    type Conn = FramedLink;

    fn dial(
        &self,
        peer_address: &str,
    ) -> BoxFuture<'static, Result<(FramedLink, String), RebuildError>> {
        let security = self.security.clone();
        let peer = peer_address.to_owned();
        async move {
            let failed = |detail: String| RebuildError::Peer {
                peer: peer.clone(),
                detail,
            };
            let tcp = TcpStream::connect(peer.as_str())
                .await
                .map_err(|e| failed(format!("cannot connect: {e}")))?;
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
            let local = tcp
                .local_addr()
                .map_or_else(|_| "sink".to_owned(), |a| a.to_string());
            let (stream, _) = security
                .connect(tcp, &[Role::Replica])
                .await
                .map_err(|e| failed(format!("cannot secure the connection: {e}")))?;
            Ok((FramedLink(Framed::new(stream, FrameCodec::new())), local))
        }
        .boxed()
    }

    fn spawn(&self, task: BoxFuture<'static, ()>) {
        tokio::spawn(task);
    }
}

/// A secured connection with the frame codec, as a link of packets.
#[derive(Debug)]
pub struct FramedLink(Framed<TlsStream, FrameCodec>);

impl Sink<Packet> for FramedLink {
    type Error = LinkError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), LinkError>> {
        Sink::<Packet>::poll_ready(Pin::new(&mut self.0), cx).map_err(link_error)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Packet) -> Result<(), LinkError> {
        Sink::<Packet>::start_send(Pin::new(&mut self.0), item).map_err(link_error)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), LinkError>> {
        Sink::<Packet>::poll_flush(Pin::new(&mut self.0), cx).map_err(link_error)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), LinkError>> {
        Sink::<Packet>::poll_close(Pin::new(&mut self.0), cx).map_err(link_error)
    }
}

impl Stream for FramedLink {
    type Item = Result<Packet, LinkError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.0).poll_next(cx).map(|next| {
            next.map(|frame| match frame {
                Err(e) => Err(LinkError(format!("bad frame: {e}"))),
                Ok(frame) => Packet::decode(frame)
                    .map_err(|e| LinkError(format!("undecodable message: {e}"))),
            })
        })
    }
}

fn link_error(e: impl fmt::Display) -> LinkError {
    LinkError(e.to_string())
}
