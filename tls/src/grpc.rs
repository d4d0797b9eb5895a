//! The management APIs (tonic) over [`Security`]: [`incoming`] turns a
//! listener into authenticated connections for
//! `Server::serve_with_incoming_shutdown`, each carrying its [`PeerInfo`]
//! into every request's extensions; [`RequireRights`] refuses a call the
//! peer has no right to with PERMISSION_DENIED before it reaches the
//! service; [`channel`] is the client side.
//!
//! Rights: each service maps its method paths to [`Right::Read`] or
//! [`Right::Admin`]; a path it does not list needs admin (fail closed).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{ready, Either, Ready};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Uri};
use tracing::{debug, warn};

use crate::identity::{Right, Role};
use crate::stream::{Peer, Security, Stream};

/// Management connections open at once (each holds a slot from the TCP
/// accept to its close); more are closed at once.
pub const MAX_CONNECTIONS: usize = 64;

/// How long a client waits for the TCP connection and the TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Who made a management call: the peer and its address. In every
/// request's extensions.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub peer: Peer,
    pub remote: Option<SocketAddr>,
}

/// One accepted, authenticated management connection.
pub struct GrpcIo {
    stream: Stream,
    info: PeerInfo,
    _slot: OwnedSemaphorePermit,
}

impl Connected for GrpcIo {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for GrpcIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for GrpcIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Accepts on `listener` and hands out connections whose handshake
/// succeeded; handshakes run concurrently (a slow one blocks no other),
/// failures are logged and dropped. Ends when the returned stream is
/// dropped.
pub fn incoming(
    listener: TcpListener,
    security: Security,
) -> impl futures::Stream<Item = Result<GrpcIo, io::Error>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<GrpcIo>(16);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "management accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                warn!(%remote, limit = MAX_CONNECTIONS, "too many management connections; closing a new one");
                continue;
            };
            let (security, tx) = (security.clone(), tx.clone());
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                match security.accept(tcp).await {
                    Ok((stream, peer)) => {
                        debug!(%remote, %peer, "management connection");
                        let io = GrpcIo {
                            stream,
                            info: PeerInfo {
                                peer,
                                remote: Some(remote),
                            },
                            _slot: slot,
                        };
                        let _ = tx.send(io).await;
                    }
                    Err(e) => warn!(%remote, error = %e, "management connection refused"),
                }
            });
        }
    });
    tokio_stream_from(rx)
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<GrpcIo>,
) -> impl futures::Stream<Item = Result<GrpcIo, io::Error>> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|io| io.map(Ok)))
}

/// A service's map from method path (`/package.Service/Method`) to the
/// right it needs.
pub type RightsOf = fn(&str) -> Right;

/// The layer that checks every call's right (see the module doc).
#[derive(Clone, Copy)]
pub struct RequireRights {
    rights: RightsOf,
}

impl RequireRights {
    pub fn new(rights: RightsOf) -> RequireRights {
        RequireRights { rights }
    }
}

impl<S> tower_layer::Layer<S> for RequireRights {
    type Service = Rights<S>;

    fn layer(&self, inner: S) -> Rights<S> {
        Rights {
            inner,
            rights: self.rights,
        }
    }
}

/// [`RequireRights`] around a service.
#[derive(Clone)]
pub struct Rights<S> {
    inner: S,
    rights: RightsOf,
}

/// Whether `info` may make a call needing `needed`; the refusal says why.
pub fn check(info: Option<&PeerInfo>, method: &str, needed: Right) -> Result<(), tonic::Status> {
    match info {
        None => Err(tonic::Status::permission_denied(format!(
            "{method}: the caller is not authenticated"
        ))),
        Some(info) if info.peer.has_right(needed) => Ok(()),
        Some(info) => Err(tonic::Status::permission_denied(format!(
            "{method} needs the {needed} right; {} does not hold it",
            info.peer
        ))),
    }
}

impl<S, B> tower_service::Service<http::Request<B>> for Rights<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let needed = (self.rights)(&method);
        match check(request.extensions().get::<PeerInfo>(), &method, needed) {
            Ok(()) => Either::Left(self.inner.call(request)),
            Err(status) => {
                warn!(%method, error = %status.message(), "management call refused");
                Either::Right(ready(Ok(status.into_http())))
            }
        }
    }
}

/// Why a management client could not connect.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("bad address {0:?}")]
    Address(String),
    #[error("cannot connect to {addr}: {source}")]
    Transport {
        addr: String,
        source: tonic::transport::Error,
    },
}

/// A channel to a management API at `addr` (`host:port` or
/// `http://host:port`), secured by `security`; the server must present one
/// of the `expect` roles. Connects at once (an unreachable or refusing
/// server is an error here, not at the first call).
pub async fn channel(
    addr: &str,
    security: &Security,
    expect: &[Role],
) -> Result<Channel, ConnectError> {
    let (endpoint, connector) = endpoint(addr, security, expect)?;
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|source| ConnectError::Transport {
            addr: addr.to_owned(),
            source,
        })
}

/// Like [`channel`], but connects at the first call (and again after a
/// lost connection).
pub fn channel_lazy(
    addr: &str,
    security: &Security,
    expect: &[Role],
) -> Result<Channel, ConnectError> {
    let (endpoint, connector) = endpoint(addr, security, expect)?;
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// The endpoint of `addr` (`host:port` or a URL) and the connector that
/// secures its connections.
fn endpoint(
    addr: &str,
    security: &Security,
    expect: &[Role],
) -> Result<(Endpoint, Connector), ConnectError> {
    let url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let endpoint = Endpoint::from_shared(url)
        .map_err(|_| ConnectError::Address(addr.to_owned()))?
        .connect_timeout(CONNECT_TIMEOUT);
    let connector = Connector {
        security: security.clone(),
        expect: Arc::from(expect),
    };
    Ok((endpoint, connector))
}

/// Dials TCP, then secures the connection.
#[derive(Clone)]
struct Connector {
    security: Security,
    expect: Arc<[Role]>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TokioIo<Stream>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (security, expect) = (self.security.clone(), Arc::clone(&self.expect));
        Box::pin(async move {
            let host = uri.host().ok_or("no host in the address")?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = uri.port_u16().ok_or("no port in the address")?;
            let tcp = TcpStream::connect((host, port)).await?;
            let _ = tcp.set_nodelay(true);
            let (stream, _peer) = security.connect(tcp, &expect).await?;
            Ok(TokioIo::new(stream))
        })
    }
}
