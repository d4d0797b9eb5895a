//! Securing one TCP connection: [`Security`] is what a process was started
//! with (its credentials, or plaintext by the operator's explicit choice);
//! [`Security::accept`] and [`Security::connect`] turn a TCP stream into a
//! [`Stream`] and tell who the peer is ([`Peer`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::credentials::Credentials;
use crate::identity::{Identity, Right, Role};
use crate::TlsError;

/// A TLS handshake must finish within this (either side), so that a peer
/// that connects and says nothing holds no task for long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The name a client puts in its handshake. Servers present role
/// certificates, not names, and the verifier checks the role (see
/// `credentials`), so this is a constant; SNI is off.
const SERVER_NAME: &str = "cstor.invalid";

/// How a process's links are secured.
#[derive(Clone, Debug)]
pub enum Security {
    /// Mutual TLS 1.3 with these credentials.
    Tls(Arc<Credentials>),
    /// No authentication, no encryption: only when the operator asked for it
    /// (`--insecure-plaintext`). Every peer is taken at its word.
    Plaintext,
}

/// Who is at the other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Authenticated by its certificate.
    Authenticated(Identity),
    /// Not authenticated: this process runs in plaintext, by choice.
    Plaintext,
}

impl Peer {
    /// Whether the peer may act as the target of `volume` (claim it,
    /// write, change membership, snapshot, start rebuilds).
    pub fn may_serve(&self, volume: &str) -> bool {
        match self {
            Peer::Authenticated(identity) => identity.may_serve(volume),
            Peer::Plaintext => true,
        }
    }

    /// Whether the peer is a replica daemon of the cluster (may pull a
    /// rebuild stream).
    pub fn is_replica(&self) -> bool {
        match self {
            Peer::Authenticated(identity) => identity.role() == Role::Replica,
            Peer::Plaintext => true,
        }
    }

    /// Whether the peer holds the management right `needed`.
    pub fn has_right(&self, needed: Right) -> bool {
        match self {
            Peer::Authenticated(identity) => identity.right().is_some_and(|r| r >= needed),
            Peer::Plaintext => true,
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Authenticated(identity) => identity.fmt(f),
            Peer::Plaintext => f.write_str("unauthenticated (plaintext)"),
        }
    }
}

impl Security {
    /// From a process's flags: a TLS directory, or plaintext when asked
    /// for explicitly; neither (or both) is an error that says what to do.
    pub fn from_flags(
        tls_dir: Option<&std::path::Path>,
        insecure_plaintext: bool,
    ) -> Result<Security, TlsError> {
        match (tls_dir, insecure_plaintext) {
            (Some(dir), false) => Ok(Security::Tls(Credentials::load(dir)?)),
            (None, true) => Ok(Security::Plaintext),
            (Some(_), true) => Err(TlsError::Flags(
                "--tls-dir and --insecure-plaintext exclude each other",
            )),
            (None, false) => Err(TlsError::Flags(
                "links are authenticated by default: give --tls-dir DIR (ca.crt, tls.crt, tls.key; \
                 `cstor certs` issues them), or --insecure-plaintext to run without authentication",
            )),
        }
    }

    /// Whether this is the plaintext escape hatch.
    pub fn is_plaintext(&self) -> bool {
        matches!(self, Security::Plaintext)
    }

    /// The credentials, when TLS.
    pub fn credentials(&self) -> Option<&Arc<Credentials>> {
        match self {
            Security::Tls(c) => Some(c),
            Security::Plaintext => None,
        }
    }

    /// One line for logs and status: "mutual TLS as …" or "PLAINTEXT".
    pub fn describe(&self) -> String {
        match self {
            Security::Tls(c) => format!("mutual TLS 1.3 as {}", c.identity()),
            Security::Plaintext => {
                "PLAINTEXT: unauthenticated and unencrypted (--insecure-plaintext)".into()
            }
        }
    }

    /// Starts reloading the credentials when their files change (no-op in
    /// plaintext).
    pub fn watch(&self, shutdown: tokio_util::sync::CancellationToken) {
        if let Security::Tls(c) = self {
            c.watch(shutdown);
        }
    }

    /// The server side of a new connection: the TLS handshake (client
    /// certificate required) within [`HANDSHAKE_TIMEOUT`], then the client's
    /// identity.
    pub async fn accept(&self, tcp: TcpStream) -> Result<(Stream, Peer), TlsError> {
        let credentials = match self {
            Security::Plaintext => return Ok((Stream::Plain(tcp), Peer::Plaintext)),
            Security::Tls(c) => c,
        };
        let acceptor = TlsAcceptor::from(credentials.server_config());
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
            .await
            .map_err(|_| TlsError::HandshakeTimeout(HANDSHAKE_TIMEOUT))?
            .map_err(TlsError::Handshake)?;
        let identity = peer_identity(tls.get_ref().1)?;
        Ok((Stream::Server(Box::new(tls)), Peer::Authenticated(identity)))
    }

    /// The client side: the TLS handshake presenting this process's
    /// certificate, accepting only a server whose identity has one of the
    /// `expect` roles; then the server's identity.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        expect: &[Role],
    ) -> Result<(Stream, Peer), TlsError> {
        let credentials = match self {
            Security::Plaintext => return Ok((Stream::Plain(tcp), Peer::Plaintext)),
            Security::Tls(c) => c,
        };
        let connector = TlsConnector::from(credentials.client_config(expect)?);
        let name =
            ServerName::try_from(SERVER_NAME).map_err(|_| TlsError::Flags("bad server name"))?;
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| TlsError::HandshakeTimeout(HANDSHAKE_TIMEOUT))?
            .map_err(TlsError::Handshake)?;
        let identity = peer_identity(tls.get_ref().1)?;
        Ok((Stream::Client(Box::new(tls)), Peer::Authenticated(identity)))
    }
}

/// The identity of the verified certificate the peer presented.
fn peer_identity(conn: &rustls::CommonState) -> Result<Identity, TlsError> {
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or(TlsError::NoPeerCertificate)?;
    Identity::from_der(leaf).map_err(TlsError::PeerIdentity)
}

/// A connection, secured or (by choice) not.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP stream underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Server(s) => s.get_ref().0,
            Stream::Client(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Server(s) => s.is_write_vectored(),
            Stream::Client(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
