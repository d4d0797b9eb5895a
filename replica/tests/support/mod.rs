//! Shared fixtures of the replica daemon's integration tests: a test CA
//! that issues identities ([`Pki`]), in-process daemons on loopback ports
//! ([`replica`]), and clients of both ports: the replication protocol over
//! a [`Security`] ([`dial`], [`hello`]) or over TLS without a client
//! certificate ([`dial_without_certificate`]), the management API
//! ([`mgmt`]), and the metrics endpoint ([`refused`]).

// Each test binary uses a part of it.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use cstor_engine::{Pool, Provisioning};
use cstor_mgmt::v1::replica_manager_client::ReplicaManagerClient;
use cstor_proto::{
    Auth, FrameCodec, Hello, Member, Membership, Message, Name, Packet, VersionRange,
};
use cstor_replica::daemon::{init, Daemon, InitConfig, IoMode, RunConfig};
use cstor_tls::{Ca, Credentials, Identity, Role, Security, Stream, Validity};
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint, Uri};

pub const BLOCK: u64 = 4096;
pub const VOLUME_BYTES: u64 = 16 << 20;
/// A generous bound on waits that must end (never a timing assertion).
pub const WAIT: Duration = Duration::from_secs(20);
/// Validity of the certificates the tests issue.
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

pub fn target(volume: &str) -> Identity {
    Identity::Target {
        volumes: vec![volume.into()],
    }
}

pub fn replica_of(pool: &str) -> Identity {
    Identity::Replica { pool: pool.into() }
}

/// A test cluster's CA, and TLS directories it issues on demand.
pub struct Pki {
    ca: Ca,
    dir: tempfile::TempDir,
    next: AtomicUsize,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    pub fn new() -> Pki {
        Pki {
            ca: Ca::generate("test cluster", Validity::from_now(YEAR)).unwrap(),
            dir: tempfile::tempdir().unwrap(),
            next: AtomicUsize::new(0),
        }
    }

    fn fresh_dir(&self) -> PathBuf {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.dir.path().join(format!("tls-{n}"))
    }

    /// A TLS directory for `identity`, of this CA, valid for a year.
    pub fn dir(&self, identity: &Identity) -> PathBuf {
        let dir = self.fresh_dir();
        self.ca
            .issue_dir(identity, Validity::from_now(YEAR), &dir)
            .unwrap();
        dir
    }

    /// Credentials for `identity`, of this CA.
    pub fn security(&self, identity: &Identity) -> Security {
        Security::Tls(Credentials::load(&self.dir(identity)).unwrap())
    }

    /// A stranger that trusts this CA (so it could talk to our daemons
    /// if they let it) but presents a certificate of another CA.
    pub fn foreign(&self, identity: &Identity) -> Security {
        let theirs = Ca::generate("intruder", Validity::from_now(YEAR)).unwrap();
        let issued = theirs.issue(identity, Validity::from_now(YEAR)).unwrap();
        self.with_certificate(&issued)
    }

    /// A certificate of this CA that expired an hour ago (the files load:
    /// only a peer can tell).
    pub fn expired(&self, identity: &Identity) -> Security {
        let now = SystemTime::now();
        let validity = Validity {
            not_before: now - Duration::from_secs(7200),
            not_after: now - Duration::from_secs(3600),
        };
        let issued = self.ca.issue(identity, validity).unwrap();
        self.with_certificate(&issued)
    }

    fn with_certificate(&self, issued: &cstor_tls::Issued) -> Security {
        let dir = self.fresh_dir();
        cstor_tls::issue::write_tls_dir(&dir, self.ca.cert_pem(), issued).unwrap();
        Security::Tls(Credentials::load(&dir).unwrap())
    }

    /// The CA certificate (PEM), for raw TLS clients.
    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }
}

/// An in-process daemon on loopback ports.
pub struct Replica {
    pub data: SocketAddr,
    pub mgmt: SocketAddr,
    pub metrics: SocketAddr,
    pub pool: Arc<Pool>,
    _dir: tempfile::TempDir,
    stop: CancellationToken,
}

impl Replica {
    /// The file backing its pool.
    pub fn image(&self) -> PathBuf {
        self._dir.path().join("pool.img")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A daemon of pool `pool_name` secured by `security`, serving the
/// (thin, 4 KiB-block) volumes `volumes`.
pub async fn replica(security: Security, pool_name: &str, volumes: &[&str]) -> Replica {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.img");
    init(&InitConfig {
        files: vec![(path.clone(), 128 << 20)],
        devices: vec![],
        chunk_bytes: None,
        block_checksums: true,
    })
    .await
    .unwrap();
    let daemon = Daemon::start(&RunConfig {
        pool_name: pool_name.into(),
        devices: vec![path],
        listen: "127.0.0.1:0".parse().unwrap(),
        mgmt_listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        rebuild_limit_bytes_per_sec: 0,
        checksum_cache_bytes: cstor_engine::limits::DEFAULT_CHECKSUM_CACHE_BYTES,
        shards: 2,
        io_mode: IoMode::Direct,
        security,
    })
    .await
    .unwrap();
    let data = daemon.data_addr().unwrap();
    let mgmt = daemon.mgmt_addr().unwrap();
    let metrics = daemon.metrics_addr().unwrap();
    let pool = Arc::clone(daemon.pool());
    for name in volumes {
        pool.create_volume(name, VOLUME_BYTES, BLOCK as u32, Provisioning::Thin)
            .await
            .unwrap();
    }
    let stop = CancellationToken::new();
    tokio::spawn(daemon.serve(stop.clone()));
    Replica {
        data,
        mgmt,
        metrics,
        pool,
        _dir: dir,
        stop,
    }
}

/// Stores a membership record naming two members on `volume` of `pool`,
/// as a target does when it opens a replicated volume: the volume is in a
/// replica set, so a peer replica may pull it.
pub async fn make_replicated(pool: &Pool, volume: &str) {
    let record = Membership {
        generation: 1,
        consistency_factor: 2,
        members: vec![
            Member {
                replica_id: 1,
                address: "127.0.0.1:1".into(),
            },
            Member {
                replica_id: 2,
                address: "127.0.0.1:2".into(),
            },
        ],
    };
    pool.volume(volume)
        .unwrap()
        .set_membership(&record.to_bytes().unwrap())
        .await
        .unwrap();
}

pub type Conn<S = Stream> = Framed<S, FrameCodec>;

/// Dials a data port and secures the connection as `security` (the
/// server must present a replica certificate).
pub async fn dial(addr: SocketAddr, security: &Security) -> Result<Conn, cstor_tls::TlsError> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (stream, _) = security.connect(tcp, &[Role::Replica]).await?;
    Ok(Framed::new(stream, FrameCodec::new()))
}

pub fn packet(epoch: u64, io_seq: u64, message: Message) -> Packet {
    Packet {
        session_id: 9,
        epoch,
        io_seq,
        message,
    }
}

pub fn hello_message(volume: &str) -> Message {
    Message::Hello(Hello {
        versions: VersionRange::SUPPORTED,
        volume: Name::new(volume).unwrap(),
        next_io_seq: 1,
        auth: Auth::None,
    })
}

/// The next packet, or `None` when the connection ended (closed or
/// broken) first.
pub async fn next<S: AsyncRead + AsyncWrite + Unpin>(conn: &mut Conn<S>) -> Option<Packet> {
    let frame = tokio::time::timeout(WAIT, conn.next())
        .await
        .expect("a frame or the end of the connection in time")?
        .ok()?;
    Some(Packet::decode(frame).unwrap())
}

/// Sends `message` and returns the answer's message (`None`: the
/// connection ended instead).
pub async fn call<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    epoch: u64,
    io_seq: u64,
    message: Message,
) -> Option<Message> {
    conn.send(packet(epoch, io_seq, message)).await.ok()?;
    next(conn).await.map(|p| p.message)
}

/// Dials as `security` and sends a `Hello` for `volume` at `epoch`: the
/// connection and the answer (`None`: no answer, the connection ended;
/// also when the TLS handshake itself failed).
pub async fn hello(
    addr: SocketAddr,
    security: &Security,
    volume: &str,
    epoch: u64,
) -> (Option<Conn>, Option<Message>) {
    let Ok(mut conn) = dial(addr, security).await else {
        return (None, None);
    };
    let answer = call(&mut conn, epoch, 0, hello_message(volume)).await;
    (Some(conn), answer)
}

/// A session on `volume` at `epoch` (0: probe) opened as `security`.
pub async fn session(addr: SocketAddr, security: &Security, volume: &str, epoch: u64) -> Conn {
    match hello(addr, security, volume, epoch).await {
        (Some(conn), Some(Message::HelloAck(_))) => conn,
        (_, other) => panic!("hello refused: {other:?}"),
    }
}

/// TLS to `addr` without a client certificate; `None` when the server
/// refused it during the handshake already.
pub async fn dial_without_certificate(
    addr: SocketAddr,
) -> Option<Conn<tokio_rustls::client::TlsStream<TcpStream>>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = cstor_tls::testing::connect_without_certificate(tcp)
        .await
        .ok()?;
    Some(Framed::new(tls, FrameCodec::new()))
}

/// A management client as `security` (the server must present a replica
/// certificate); an error when the connection cannot be made.
pub async fn mgmt(
    addr: SocketAddr,
    security: &Security,
) -> Result<ReplicaManagerClient<Channel>, cstor_tls::grpc::ConnectError> {
    let channel = cstor_tls::grpc::channel(&addr.to_string(), security, &[Role::Replica]).await?;
    Ok(ReplicaManagerClient::new(channel))
}

/// A management client over TLS without a client certificate; an error
/// when the connection cannot be made.
pub async fn mgmt_without_certificate(
    addr: SocketAddr,
) -> Result<ReplicaManagerClient<Channel>, tonic::transport::Error> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(WAIT)
        .connect_with_connector(NoCertificate)
        .await?;
    Ok(ReplicaManagerClient::new(channel))
}

/// Dials TCP and makes a TLS connection without a client certificate.
#[derive(Clone)]
struct NoCertificate;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Connecting = Pin<
    Box<
        dyn Future<Output = Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>, BoxError>>
            + Send,
    >,
>;

impl tower_service::Service<Uri> for NoCertificate {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Connecting {
        Box::pin(async move {
            let host = uri.host().ok_or("no host")?.to_owned();
            let port = uri.port_u16().ok_or("no port")?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            Ok(TokioIo::new(
                cstor_tls::testing::connect_without_certificate(tcp).await?,
            ))
        })
    }
}

/// GET /metrics of `addr`: the samples.
pub async fn scrape(addr: SocketAddr) -> Vec<cstor_mgmt::exposition::Sample> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let (_, body) = raw.split_once("\r\n\r\n").unwrap();
    cstor_mgmt::exposition::parse(body).unwrap()
}

/// `cstor_replica_connections_refused_total{reason}` of the daemon of
/// pool `pool` whose metrics are at `addr`.
pub async fn refused(addr: SocketAddr, pool: &str, reason: &str) -> u64 {
    let samples = scrape(addr).await;
    let value = cstor_mgmt::exposition::find(
        &samples,
        "cstor_replica_connections_refused_total",
        &[("pool", pool), ("reason", reason)],
    )
    .expect("the refusal counter is exported");
    value as u64
}

/// Waits (bounded) until the refusals counted for `reason` reach `want`
/// (a refusal is counted as the server closes the connection, so right
/// after the client saw the close it may not be yet); then asserts the
/// count is exactly `want`.
pub async fn assert_refused(replica: &Replica, pool: &str, reason: &str, want: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = refused(replica.metrics, pool, reason).await;
        if got >= want || tokio::time::Instant::now() > deadline {
            assert_eq!(got, want, "refusals counted for reason {reason}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
