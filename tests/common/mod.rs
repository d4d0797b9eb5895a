//! Shared pieces of the cross-process tests: a replica daemon run as a real
//! `cstor replica run` child process on loopback, and a small target-side
//! client built on `cstor-proto`.
//!
//! Every link is mutual TLS, as in production: each test directory has its
//! own CA ([`TestPki`]), and the processes started here, the test's own
//! target-side [`Client`], its management clients and its `cstor ctl`
//! runs get certificates of that CA for their role. A test opts into
//! plaintext explicitly ([`Links::Plaintext`], `--insecure-plaintext`).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::{Arc, Mutex, PoisonError, RwLock};

use bytes::{Bytes, BytesMut};
use cstor_mgmt::v1::replica_manager_client::ReplicaManagerClient;
use cstor_mgmt::v1::target_manager_client::TargetManagerClient;
use cstor_proto::{Auth, Frame, FrameCodec, Hello, HelloAck, Message, Name, Packet, VersionRange};
use cstor_tls::{Ca, Credentials, Identity, Role, Security, Validity};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use tonic::transport::Channel;

pub fn cstor_bin() -> &'static str {
    env!("CARGO_BIN_EXE_cstor")
}

/// A loopback address with a port nothing listens on right now, below the
/// kernel's ephemeral range (32768-60999): a port from that range can be
/// taken by any outgoing connection (of this or a parallel test) while a
/// killed daemon waits to be restarted on it.
pub fn free_addr() -> SocketAddr {
    loop {
        let port = 10_000 + (rand_u64() % 22_000) as u16;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr().unwrap();
        }
    }
}

/// Runs `cstor` with arguments; panics with its stderr if it fails.
pub fn cstor(args: &[&str]) -> String {
    let out = Command::new(cstor_bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "cstor {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ------------------------------------------------------------------ PKI

/// Certificates of a test: a CA of its own (in `DIR/pki/ca`) and a TLS
/// directory per identity (`DIR/pki/<identity>`), issued on first use.
/// Cheap to clone (the clones share the CA).
#[derive(Clone)]
pub struct TestPki {
    dir: PathBuf,
    ca: Arc<RwLock<Ca>>,
}

/// Serialises creating CAs and issuing between the tests of a binary (each
/// test has its own directory; this only keeps two helpers of one test
/// from racing on the same files).
static PKI_LOCK: Mutex<()> = Mutex::new(());

/// Validity of the test certificates.
const TEST_CERT_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// How the processes a helper starts secure their links.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Links {
    /// Mutual TLS with certificates of the test's CA (the default).
    Tls,
    /// `--insecure-plaintext`, chosen explicitly by the test.
    Plaintext,
}

impl TestPki {
    /// The PKI of `dir`: its CA is created in `dir/pki/ca` on first use and
    /// loaded afterwards. Two directories have two unrelated CAs.
    pub fn new(dir: &Path) -> TestPki {
        let _guard = PKI_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        let pki = dir.join("pki");
        let ca_dir = pki.join("ca");
        let ca = if ca_dir.join(cstor_tls::issue::CA_KEY_FILE).exists() {
            Ca::load(&ca_dir).unwrap()
        } else {
            let ca = Ca::generate(
                &format!("cstor test CA {}", rand_u64()),
                Validity::from_now(TEST_CERT_VALIDITY),
            )
            .unwrap();
            ca.save(&ca_dir).unwrap();
            ca
        };
        TestPki {
            dir: pki,
            ca: Arc::new(RwLock::new(ca)),
        }
    }

    /// The PKI of the test that owns `path`: the one of its top directory
    /// (the temporary directory directly under the system's temp dir that
    /// `path` lies in; `path` itself when it is not under it). Every helper
    /// of a test finds the same CA this way, whichever subdirectory it was
    /// given.
    pub fn of_test(path: &Path) -> TestPki {
        let tmp = std::env::temp_dir();
        let tmp = tmp.canonicalize().unwrap_or(tmp);
        let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
        let root = path
            .ancestors()
            .find(|a| a.parent() == Some(tmp.as_path()))
            .unwrap_or(&path);
        TestPki::new(root)
    }

    /// The CA's directory (`ca.crt`, `ca.key`), e.g. for the CSI
    /// controller's `--tls-ca-dir`.
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.join("ca")
    }

    /// The TLS directory of `identity`, issued if it does not exist yet.
    pub fn dir_of(&self, identity: &Identity) -> PathBuf {
        let name: String = identity
            .uris()
            .join("+")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let dir = self.dir.join(name);
        let _guard = PKI_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        if !dir.join(cstor_tls::issue::CERT_FILE).exists() {
            let ca = self.ca.read().unwrap_or_else(PoisonError::into_inner);
            ca.issue_dir(identity, Validity::from_now(TEST_CERT_VALIDITY), &dir)
                .unwrap();
        }
        dir
    }

    pub fn target_dir(&self, volume: &str) -> PathBuf {
        self.dir_of(&Identity::Target {
            volumes: vec![volume.to_owned()],
        })
    }

    pub fn replica_dir(&self, pool: &str) -> PathBuf {
        self.dir_of(&Identity::Replica {
            pool: pool.to_owned(),
        })
    }

    pub fn admin_dir(&self) -> PathBuf {
        self.dir_of(&Identity::Admin)
    }

    pub fn reader_dir(&self) -> PathBuf {
        self.dir_of(&Identity::Reader)
    }

    /// The credentials of `identity`, as a process would load them.
    pub fn security(&self, identity: &Identity) -> Security {
        Security::Tls(Credentials::load(&self.dir_of(identity)).unwrap())
    }

    pub fn admin(&self) -> Security {
        self.security(&Identity::Admin)
    }

    pub fn reader(&self) -> Security {
        self.security(&Identity::Reader)
    }

    /// A target's credentials for `volume` (what the test's [`Client`]
    /// presents to a replica).
    pub fn target(&self, volume: &str) -> Security {
        self.security(&Identity::Target {
            volumes: vec![volume.to_owned()],
        })
    }

    /// A replica daemon's management API, as admin.
    pub async fn replica_mgmt(&self, addr: SocketAddr) -> ReplicaManagerClient<Channel> {
        ReplicaManagerClient::new(mgmt_channel(&self.admin(), addr, Role::Replica).await)
    }

    /// A target's management API, as admin.
    pub async fn target_mgmt(&self, addr: SocketAddr) -> TargetManagerClient<Channel> {
        TargetManagerClient::new(mgmt_channel(&self.admin(), addr, Role::Target).await)
    }

    /// `cstor ctl --tls-dir <admin> ARGS`; panics with its stderr if it
    /// fails.
    pub fn ctl(&self, args: &[&str]) -> String {
        let admin = self.admin_dir();
        let mut all = vec!["ctl", "--tls-dir", admin.to_str().unwrap()];
        all.extend_from_slice(args);
        cstor(&all)
    }

    /// `cstor ctl --tls-dir <admin> ARGS` as it ended.
    pub fn ctl_output(&self, args: &[&str]) -> std::process::Output {
        Command::new(cstor_bin())
            .arg("ctl")
            .arg("--tls-dir")
            .arg(self.admin_dir())
            .args(args)
            .output()
            .unwrap()
    }

    /// Replaces every certificate: a new CA, and every TLS directory issued
    /// so far gets the new CA as its only trusted one and a new certificate
    /// and key from it (the same identity). Processes reading these
    /// directories reload them at their next poll.
    pub fn rotate_ca(&self) {
        let _guard = PKI_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        let new = Ca::generate(
            &format!("cstor test CA {}", rand_u64()),
            Validity::from_now(TEST_CERT_VALIDITY),
        )
        .unwrap();
        for entry in std::fs::read_dir(&self.dir).unwrap() {
            let dir = entry.unwrap().path();
            if dir == self.ca_dir() || !dir.join(cstor_tls::issue::CERT_FILE).exists() {
                continue;
            }
            let identity = Credentials::load(&dir).unwrap().identity();
            new.issue_dir(&identity, Validity::from_now(TEST_CERT_VALIDITY), &dir)
                .unwrap();
        }
        let ca_dir = self.ca_dir();
        for f in [cstor_tls::issue::CA_FILE, cstor_tls::issue::CA_KEY_FILE] {
            let _ = std::fs::remove_file(ca_dir.join(f));
        }
        new.save(&ca_dir).unwrap();
        *self.ca.write().unwrap_or_else(PoisonError::into_inner) = new;
    }
}

/// A management channel secured by `security` to a server of `role`;
/// retried while the server starts (a hang guard of 30 s).
pub async fn mgmt_channel(security: &Security, addr: SocketAddr, role: Role) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match cstor_tls::grpc::channel(&addr.to_string(), security, &[role]).await {
            Ok(channel) => return channel,
            Err(e) => assert!(
                Instant::now() < deadline,
                "no management channel to {addr}: {e:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The pool name every [`ReplicaProcess`] serves (and its certificate
/// names).
pub const TEST_POOL: &str = "test";

/// A replica daemon child process over a pool file in a temp dir.
pub struct ReplicaProcess {
    pub dir: PathBuf,
    pub pool_file: PathBuf,
    pub data: SocketAddr,
    pub mgmt: SocketAddr,
    /// The test's certificates (the daemon's and its clients').
    pub pki: TestPki,
    pub links: Links,
    /// Devices added to the pool after `pool_file` (`cstor replica
    /// add-device`), served after it in this order.
    pub added_devices: Vec<PathBuf>,
    child: Option<Child>,
    log: PathBuf,
}

impl ReplicaProcess {
    /// Creates a pool of `size` (e.g. "256MiB") in `dir` and starts serving
    /// it, with mutual TLS (a replica certificate of the test's CA).
    pub fn create(dir: &Path, size: &str) -> Self {
        Self::create_with(dir, size, Links::Tls)
    }

    /// `create`, with the link security chosen.
    pub fn create_with(dir: &Path, size: &str, links: Links) -> Self {
        let pool_file = dir.join("pool.img");
        cstor(&[
            "replica",
            "init",
            "--pool",
            "test",
            "--file",
            pool_file.to_str().unwrap(),
            "--size",
            size,
        ]);
        let mut replica = ReplicaProcess {
            dir: dir.to_owned(),
            pool_file,
            data: free_addr(),
            mgmt: free_addr(),
            pki: TestPki::of_test(dir),
            links,
            added_devices: Vec::new(),
            child: None,
            log: dir.join("replica.log"),
        };
        replica.start();
        replica
    }

    /// (Re)starts the daemon on the same pool and addresses and waits
    /// until both ports accept connections.
    pub fn start(&mut self) {
        self.start_with_env(&[]);
    }

    /// Kills the daemon, replaces its pool by a new empty one of `size` at
    /// the same path holding an empty volume `volume` of `volume_size`, and
    /// starts it again on the same addresses (a replaced disk).
    pub fn replace_pool(&mut self, size: &str, volume: &str, volume_size: &str) {
        if self.child.is_some() {
            self.kill9();
        }
        std::fs::remove_file(&self.pool_file).unwrap();
        cstor(&[
            "replica",
            "init",
            "--pool",
            "test",
            "--file",
            self.pool_file.to_str().unwrap(),
            "--size",
            size,
        ]);
        self.start();
        self.ctl(&["volume", "create", volume, "--size", volume_size]);
    }

    /// `start` with extra environment variables.
    pub fn start_with_env(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let security: Vec<String> = match self.links {
            Links::Tls => vec![
                "--tls-dir".into(),
                self.pki.replica_dir(TEST_POOL).display().to_string(),
            ],
            Links::Plaintext => vec!["--insecure-plaintext".into()],
        };
        let added: Vec<String> = self
            .added_devices
            .iter()
            .flat_map(|p| ["--pool-path".to_owned(), p.display().to_string()])
            .collect();
        let child = Command::new(cstor_bin())
            .args([
                "replica",
                "run",
                "--pool",
                TEST_POOL,
                "--pool-path",
                self.pool_file.to_str().unwrap(),
            ])
            .args(&added)
            .args([
                "--listen",
                &self.data.to_string(),
                "--mgmt-listen",
                &self.mgmt.to_string(),
            ])
            .args(&security)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(self.data).is_ok()
                && std::net::TcpStream::connect(self.mgmt).is_ok()
            {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("replica exited with {status}: {}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "replica did not start: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's view of one of its volumes (GetVolume): state, the
    /// last rebuild into it, its rebuild throttle.
    pub async fn volume_info(&self, name: &str) -> cstor_mgmt::v1::VolumeReplica {
        let mut client = self.mgmt_client().await;
        client
            .get_volume(cstor_mgmt::v1::GetVolumeRequest { name: name.into() })
            .await
            .unwrap()
            .into_inner()
    }

    /// The last rebuild into `volume`, which must have run to its end.
    pub async fn finished_rebuild(&self, volume: &str) -> cstor_mgmt::v1::RebuildProgress {
        let info = self.volume_info(volume).await;
        let Some(rebuild) = info.rebuild.clone() else {
            panic!("no rebuild into {volume} on {}: {info:?}", self.data)
        };
        assert!(!rebuild.running, "the rebuild still runs: {rebuild:?}");
        assert_eq!(rebuild.done_bytes, rebuild.total_bytes, "{rebuild:?}");
        rebuild
    }

    /// The daemon's management API, as admin (plaintext when the daemon
    /// runs so).
    pub async fn mgmt_client(&self) -> ReplicaManagerClient<Channel> {
        ReplicaManagerClient::new(
            mgmt_channel(&self.client_security(), self.mgmt, Role::Replica).await,
        )
    }

    /// What a client of this daemon presents: the admin identity, or
    /// plaintext.
    pub fn client_security(&self) -> Security {
        match self.links {
            Links::Tls => self.pki.admin(),
            Links::Plaintext => Security::Plaintext,
        }
    }

    /// A target-side session of `volume` at `epoch` with this daemon (as
    /// [`Client::open`], with the matching credentials).
    pub async fn open(&self, volume: &str, epoch: u64) -> (Client, HelloAck) {
        Client::open_with(&self.target_security(volume), self.data, volume, epoch).await
    }

    /// A target-side connection without a `Hello` yet, presenting a target
    /// certificate for `volume`.
    pub async fn connect(&self, volume: &str) -> Client {
        Client::connect_with(&self.target_security(volume), self.data).await
    }

    fn target_security(&self, volume: &str) -> Security {
        match self.links {
            Links::Tls => self.pki.target(volume),
            Links::Plaintext => Security::Plaintext,
        }
    }

    pub fn mgmt_arg(&self) -> String {
        self.mgmt.to_string()
    }

    /// The link-security flag of `cstor ctl` for this daemon.
    pub fn ctl_security_args(&self) -> Vec<String> {
        match self.links {
            Links::Tls => vec![
                "--tls-dir".into(),
                self.pki.admin_dir().display().to_string(),
            ],
            Links::Plaintext => vec!["--insecure-plaintext".into()],
        }
    }

    /// `cstor ctl --mgmt <this daemon> ARGS` as admin, as it ended.
    pub fn ctl_output(&self, args: &[&str]) -> std::process::Output {
        Command::new(cstor_bin())
            .args(["ctl", "--mgmt", &self.mgmt_arg()])
            .args(self.ctl_security_args())
            .args(args)
            .output()
            .unwrap()
    }

    /// `cstor ctl --mgmt <this daemon> ARGS`, as admin.
    pub fn ctl(&self, args: &[&str]) -> String {
        let mgmt = self.mgmt_arg();
        let security = self.ctl_security_args();
        let mut all = vec!["ctl", "--mgmt", &mgmt];
        all.extend(security.iter().map(String::as_str));
        all.extend_from_slice(args);
        cstor(&all)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL: no chance to flush or close anything.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit; returns whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("replica ignored SIGTERM: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ReplicaProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A `cstor target` child process serving one volume.
pub struct TargetProcess {
    pub portal: SocketAddr,
    pub iqn: String,
    /// The test's certificates (the target's and its clients').
    pub pki: TestPki,
    child: Option<Child>,
    log: PathBuf,
}

impl TargetProcess {
    /// Starts a target for `volume` over `replicas` on `portal` and waits
    /// until it accepts iSCSI connections.
    pub fn start(dir: &Path, portal: SocketAddr, volume: &str, replicas: &[SocketAddr]) -> Self {
        Self::start_with(dir, portal, volume, replicas, &[], &[])
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The process id (0 once killed).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }
}

impl Drop for TargetProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A target-side connection to a replica, speaking `cstor-proto` over
/// mutual TLS (or plaintext, when the test chose it).
pub struct Client {
    pub conn: Framed<cstor_tls::Stream, FrameCodec>,
    pub session_id: u64,
    pub epoch: u64,
    pub next_io_seq: u64,
}

/// Outcome of a `Hello`.
#[derive(Debug)]
pub enum HelloOutcome {
    Accepted(HelloAck),
    Refused(Message),
}

impl Client {
    /// Connects to the replica at `addr` as a target of `volume`, with a
    /// certificate of `pki`.
    pub async fn connect(pki: &TestPki, addr: SocketAddr, volume: &str) -> Client {
        Self::connect_with(&pki.target(volume), addr).await
    }

    /// Connects to the replica at `addr` secured by `security` (expecting a
    /// replica at the other end); panics if the handshake fails.
    pub async fn connect_with(security: &Security, addr: SocketAddr) -> Client {
        Self::try_connect(security, addr).await.unwrap()
    }

    /// Connects to the replica at `addr` secured by `security`; the
    /// handshake's error, if any.
    pub async fn try_connect(
        security: &Security,
        addr: SocketAddr,
    ) -> Result<Client, cstor_tls::TlsError> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let (stream, _peer) = security.connect(tcp, &[Role::Replica]).await?;
        Ok(Client {
            conn: Framed::new(stream, FrameCodec::new()),
            session_id: 0,
            epoch: 0,
            next_io_seq: 1,
        })
    }

    /// Opens a session on `volume` at `epoch`.
    pub async fn hello(&mut self, volume: &str, epoch: u64, first_io_seq: u64) -> HelloOutcome {
        self.session_id = rand_u64();
        self.epoch = epoch;
        self.next_io_seq = first_io_seq;
        let hello = Message::Hello(Hello {
            versions: VersionRange::SUPPORTED,
            volume: Name::new(volume).unwrap(),
            next_io_seq: first_io_seq,
            auth: Auth::None,
        });
        let reply = self
            .call(hello)
            .await
            .expect("connection closed during hello");
        match reply.message {
            Message::HelloAck(ack) => HelloOutcome::Accepted(ack),
            other => HelloOutcome::Refused(other),
        }
    }

    /// Connects as a target of `volume` (a certificate of `pki`) and
    /// opens a session at `epoch`; panics if refused.
    pub async fn open(
        pki: &TestPki,
        addr: SocketAddr,
        volume: &str,
        epoch: u64,
    ) -> (Client, HelloAck) {
        Self::open_with(&pki.target(volume), addr, volume, epoch).await
    }

    /// [`Client::open`] secured by `security`.
    pub async fn open_with(
        security: &Security,
        addr: SocketAddr,
        volume: &str,
        epoch: u64,
    ) -> (Client, HelloAck) {
        let mut client = Client::connect_with(security, addr).await;
        match client.hello(volume, epoch, 1).await {
            HelloOutcome::Accepted(ack) => (client, ack),
            HelloOutcome::Refused(m) => panic!("hello refused: {m:?}"),
        }
    }

    /// Sends a request with the next io_seq; returns that io_seq.
    pub async fn send(&mut self, message: Message) -> std::io::Result<u64> {
        let io_seq = self.next_io_seq;
        self.next_io_seq += 1;
        let packet = Packet {
            session_id: self.session_id,
            epoch: self.epoch,
            io_seq,
            message,
        };
        self.conn
            .send(packet)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(io_seq)
    }

    /// Sends raw bytes (malformed-input tests).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.conn.get_mut().write_all(bytes).await
    }

    /// Sends a frame as given (valid checksums, any header).
    pub async fn send_frame(&mut self, frame: Frame) -> std::io::Result<()> {
        self.conn
            .send(frame)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
    }

    /// The next reply, or `None` when the replica closed the connection (or
    /// sent garbage). Gives up after 20 s.
    pub async fn recv(&mut self) -> Option<Packet> {
        let next = tokio::time::timeout(Duration::from_secs(20), self.conn.next())
            .await
            .expect("no reply within 20 s");
        match next {
            Some(Ok(frame)) => Some(Packet::decode(frame).expect("undecodable reply")),
            _ => None,
        }
    }

    /// One request, one reply.
    pub async fn call(&mut self, message: Message) -> Option<Packet> {
        let io_seq = self.send(message).await.ok()?;
        let reply = self.recv().await?;
        assert_eq!(reply.io_seq, io_seq, "reply to another request");
        Some(reply)
    }

    pub async fn write(&mut self, offset: u64, data: Bytes) -> Message {
        self.call(Message::Write(cstor_proto::Write {
            offset,
            data,
            fua: false,
        }))
        .await
        .expect("connection closed")
        .message
    }

    pub async fn read(&mut self, offset: u64, len: u32) -> Bytes {
        match self
            .call(Message::Read(cstor_proto::Extent {
                offset,
                len_bytes: len,
            }))
            .await
            .expect("connection closed")
            .message
        {
            Message::ReadData(data) => data,
            other => panic!("read at {offset}: {other:?}"),
        }
    }

    pub async fn flush(&mut self) -> Message {
        self.call(Message::Flush)
            .await
            .expect("connection closed")
            .message
    }
}

/// A block of `len` bytes that names its LBA and generation, so that a
/// misplaced or stale block is recognised.
pub fn pattern(lba: u64, generation: u64, len: usize) -> Bytes {
    let mut buf = BytesMut::with_capacity(len);
    let mut x =
        lba.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ generation.wrapping_mul(0xD1B5_4A32_D192_ED03);
    while buf.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.extend_from_slice(&x.to_le_bytes());
    }
    buf.truncate(len);
    buf[..8].copy_from_slice(&lba.to_le_bytes());
    buf[8..16].copy_from_slice(&generation.to_le_bytes());
    buf.freeze()
}

/// `blocks` blocks from `lba`, block `lba + i` holding
/// `pattern(lba + i, generation, block_size)`.
pub fn pattern_run(lba: u64, blocks: u64, generation: u64, block_size: usize) -> Bytes {
    let mut data = BytesMut::new();
    for b in lba..lba + blocks {
        data.extend_from_slice(&pattern(b, generation, block_size));
    }
    data.freeze()
}

pub fn rand_u64() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish()
}

impl TargetProcess {
    /// `start` with extra command-line arguments and environment variables
    /// (CHAP, initiator allowlist, …). The target gets `--tls-dir` with a
    /// target certificate of the test's CA for `volume`, unless
    /// `extra_args` choose (`--tls-dir DIR` or `--insecure-plaintext`).
    pub fn start_with(
        dir: &Path,
        portal: SocketAddr,
        volume: &str,
        replicas: &[SocketAddr],
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let log = dir.join(format!("target-{}.log", portal.port()));
        let log_file = std::fs::File::create(&log).unwrap();
        let pki = TestPki::of_test(dir);
        let chosen = extra_args
            .iter()
            .any(|a| *a == "--tls-dir" || *a == "--insecure-plaintext");
        let security: Vec<String> = if chosen {
            Vec::new()
        } else {
            vec![
                "--tls-dir".into(),
                pki.target_dir(volume).display().to_string(),
            ]
        };
        let mut command = Command::new(cstor_bin());
        command
            .args([
                "target",
                "--listen",
                &portal.to_string(),
                "--volume",
                volume,
            ])
            .args(extra_args)
            .args(&security)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log_file);
        for r in replicas {
            command.args(["--replica", &r.to_string()]);
        }
        let mut target = TargetProcess {
            portal,
            iqn: format!("iqn.2016-09.com.openebs.cstor:{volume}"),
            pki,
            child: Some(command.spawn().unwrap()),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(portal).is_err() {
            if let Some(status) = target.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("target exited with {status}: {}", target.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "target did not start: {}",
                target.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        target
    }

    /// Whether the target process is still alive (it has not crashed).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().unwrap().is_none(),
            None => false,
        }
    }
}

// ------------------------------------------------------------ iSCSI client

/// What a SCSI command ended with, as an initiator sees it.
#[derive(Debug)]
pub struct ScsiOutcome {
    pub status: u8,
    pub data: Vec<u8>,
    pub sense: Option<Vec<u8>>,
}

impl ScsiOutcome {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;

    pub fn is_good(&self) -> bool {
        self.status == Self::GOOD
    }

    /// The sense key (SPC-5 §4.4.2, fixed or descriptor format).
    pub fn sense_key(&self) -> Option<u8> {
        let sense = self.sense.as_deref()?;
        let at = if sense.first()? & 0x7f >= 0x72 { 1 } else { 2 };
        sense.get(at).map(|k| k & 0x0f)
    }
}

/// A minimal iSCSI initiator for failure tests: one connection, no digests,
/// no CHAP, queue depth 1, every write carried whole as immediate data (so
/// at most FirstBurstLength, 64 KiB). Unlike the hand-made initiator of
/// tests/iscsi_wire.rs it never panics on a lost connection: every call
/// returns an `io::Error` once the target is gone (killed, restarted), so a
/// test can log in again with a new session and go on.
///
/// PDUs are laid out and parsed by `cstor_target::iscsi::pdu` (what is
/// under test here is durability, not framing; tests/iscsi_wire.rs checks
/// the framing independently).
pub struct IscsiSession {
    stream: TcpStream,
    next_itt: u32,
    cmd_sn: u32,
    exp_stat_sn: u32,
    pub block_size: u32,
    pub blocks: u64,
}

/// Hang guard of one iSCSI exchange: not a timing assertion, it only turns
/// a hung target into an error. Longer than a target's hold below quorum.
pub const ISCSI_IO_GUARD: Duration = Duration::from_secs(40);

impl IscsiSession {
    /// Connects to `portal`, logs in to `iqn` as `initiator` (RFC 7143
    /// §6.3: operational stage straight to full feature phase) and takes
    /// the new nexus' unit attention (SAM-5 §5.14) and the capacity.
    pub async fn login(
        portal: SocketAddr,
        iqn: &str,
        initiator: &str,
    ) -> std::io::Result<IscsiSession> {
        let (mut me, response) = Self::login_exchange(portal, iqn, initiator).await?;
        match response {
            Some((0, _)) => {}
            other => return Err(std::io::Error::other(format!("login refused: {other:?}"))),
        }
        me.ready().await?;
        Ok(me)
    }

    /// The status (class, detail) the target answers a login of
    /// `initiator` with (RFC 7143 §11.13.5): (0, 0) when it admits it.
    pub async fn login_status(
        portal: SocketAddr,
        iqn: &str,
        initiator: &str,
    ) -> std::io::Result<(u8, u8)> {
        let (_, response) = Self::login_exchange(portal, iqn, initiator).await?;
        response.ok_or_else(|| std::io::Error::other("no login response"))
    }

    /// Sends the login request; the response's (class, detail), or None
    /// for a success response that does not go to full feature phase.
    async fn login_exchange(
        portal: SocketAddr,
        iqn: &str,
        initiator: &str,
    ) -> std::io::Result<(IscsiSession, Option<(u8, u8)>)> {
        use cstor_target::iscsi::pdu::{LoginRequest, Pdu};
        let stream = TcpStream::connect(portal).await?;
        stream.set_nodelay(true)?;
        let tag = rand_u64().to_be_bytes();
        let mut me = IscsiSession {
            stream,
            next_itt: 1,
            cmd_sn: u32::from_be_bytes([tag[5], tag[6], tag[7], 0]),
            exp_stat_sn: 0,
            block_size: 0,
            blocks: 0,
        };
        let keys: [(&str, &str); 16] = [
            ("InitiatorName", initiator),
            ("SessionType", "Normal"),
            ("TargetName", iqn),
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("MaxRecvDataSegmentLength", "262144"),
            ("InitialR2T", "Yes"),
            ("ImmediateData", "Yes"),
            ("MaxBurstLength", "262144"),
            ("FirstBurstLength", "65536"),
            ("MaxOutstandingR2T", "1"),
            ("ErrorRecoveryLevel", "0"),
            ("MaxConnections", "1"),
            ("DataPDUInOrder", "Yes"),
            ("DataSequenceInOrder", "Yes"),
            ("DefaultTime2Wait", "0"),
        ];
        let mut text = Vec::new();
        for (k, v) in keys {
            text.extend_from_slice(format!("{k}={v}\0").as_bytes());
        }
        let request = Pdu::LoginRequest(LoginRequest {
            transit: true,
            continue_: false,
            csg: 1,
            nsg: 3,
            version_max: 0,
            version_min: 0,
            // Type 0x80 (random) ISID, RFC 7143 §11.12.5: a new session.
            isid: [0x80, tag[0], tag[1], tag[2], tag[3], tag[4]],
            tsih: 0,
            itt: me.itt(),
            cid: 1,
            cmd_sn: me.cmd_sn,
            exp_stat_sn: 0,
            data: Bytes::from(text),
        });
        me.send(&request).await?;
        let status = match me.recv().await? {
            Pdu::LoginResponse(r) if r.status_class == 0 && !(r.transit && r.nsg == 3) => None,
            Pdu::LoginResponse(r) => Some((r.status_class, r.status_detail)),
            other => {
                return Err(std::io::Error::other(format!(
                    "not a login response: {other:?}"
                )))
            }
        };
        Ok((me, status))
    }

    /// `login`, retried until it succeeds or `guard` passes (a target that
    /// is restarting).
    pub async fn login_retrying(
        portal: SocketAddr,
        iqn: &str,
        initiator: &str,
        guard: Duration,
    ) -> IscsiSession {
        let deadline = Instant::now() + guard;
        loop {
            match Self::login(portal, iqn, initiator).await {
                Ok(session) => return session,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "no iSCSI session with {portal} within {guard:?}: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn itt(&mut self) -> u32 {
        let itt = self.next_itt;
        self.next_itt = self.next_itt.wrapping_add(1).max(1);
        itt
    }

    async fn send(&mut self, pdu: &cstor_target::iscsi::pdu::Pdu) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let mut buf = BytesMut::new();
        pdu.encode(&mut buf, &Self::frame_config())
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.stream.write_all(&buf).await
    }

    fn frame_config() -> cstor_target::iscsi::pdu::FrameConfig {
        cstor_target::iscsi::pdu::FrameConfig {
            digests: cstor_target::iscsi::pdu::Digests::default(),
            max_data_segment_bytes: cstor_target::iscsi::limits::MAX_DATA_SEGMENT_FIELD,
        }
    }

    async fn read_pdu(&mut self) -> std::io::Result<cstor_target::iscsi::pdu::Pdu> {
        use tokio::io::AsyncReadExt;
        const BHS_LEN: usize = 48;
        let mut frame = vec![0u8; BHS_LEN];
        self.stream.read_exact(&mut frame).await?;
        let ahs_len = usize::from(frame[4]) * 4;
        let data_len =
            usize::from(frame[5]) << 16 | usize::from(frame[6]) << 8 | usize::from(frame[7]);
        let total = BHS_LEN + ahs_len + data_len + cstor_target::iscsi::pdu::pad_len(data_len);
        frame.resize(total, 0);
        self.stream.read_exact(&mut frame[BHS_LEN..]).await?;
        cstor_target::iscsi::pdu::parse(Bytes::from(frame), &Self::frame_config())
            .map_err(|e| std::io::Error::other(format!("undecodable target PDU: {e}")))
    }

    /// The next PDU for us; target pings (NOP-In, RFC 7143 §11.19) are
    /// answered and skipped.
    async fn recv(&mut self) -> std::io::Result<cstor_target::iscsi::pdu::Pdu> {
        use cstor_target::iscsi::pdu::{NopOut, Pdu};
        loop {
            let pdu = tokio::time::timeout(ISCSI_IO_GUARD, self.read_pdu())
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            let stat_sn = match &pdu {
                Pdu::NopIn(p) => Some(p.stat_sn),
                Pdu::ScsiResponse(p) => Some(p.stat_sn),
                Pdu::LoginResponse(p) => Some(p.stat_sn),
                Pdu::DataIn(p) => p.status.map(|_| p.stat_sn),
                _ => None,
            };
            if let Some(sn) = stat_sn {
                self.exp_stat_sn = sn.wrapping_add(1);
            }
            if let Pdu::NopIn(ping) = &pdu {
                if ping.itt == u32::MAX {
                    if ping.ttt != u32::MAX {
                        let answer = Pdu::NopOut(NopOut {
                            immediate: true,
                            lun: ping.lun,
                            itt: u32::MAX,
                            ttt: ping.ttt,
                            cmd_sn: self.cmd_sn,
                            exp_stat_sn: self.exp_stat_sn,
                            data: Bytes::new(),
                        });
                        self.send(&answer).await?;
                    }
                    continue;
                }
            }
            return Ok(pdu);
        }
    }

    /// Runs one SCSI command on LUN 0 and waits for its completion.
    pub async fn run(
        &mut self,
        cdb: [u8; 16],
        read_len: u32,
        data: Bytes,
    ) -> std::io::Result<ScsiOutcome> {
        use cstor_target::iscsi::pdu::{Pdu, ScsiCommand, TaskAttr};
        let write = !data.is_empty();
        let itt = self.itt();
        let command = ScsiCommand {
            immediate: false,
            final_: true,
            read: read_len > 0,
            write,
            attr: TaskAttr::Simple,
            lun: 0,
            itt,
            expected_data_len: if write {
                u32::try_from(data.len()).map_err(std::io::Error::other)?
            } else {
                read_len
            },
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb: Bytes::copy_from_slice(&cdb),
            bidi_read_len: None,
            data,
        };
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        self.send(&Pdu::ScsiCommand(command)).await?;
        let mut buf = vec![0u8; read_len as usize];
        loop {
            match self.recv().await? {
                Pdu::DataIn(d) if d.itt == itt => {
                    let at = d.buffer_offset as usize;
                    let Some(dst) = buf.get_mut(at..at + d.data.len()) else {
                        return Err(std::io::Error::other("Data-In beyond the buffer"));
                    };
                    dst.copy_from_slice(&d.data);
                    if let Some(status) = d.status {
                        return Ok(ScsiOutcome {
                            status,
                            data: buf,
                            sense: None,
                        });
                    }
                }
                Pdu::ScsiResponse(r) if r.itt == itt => {
                    if r.response != 0 {
                        return Err(std::io::Error::other(format!("target failure: {r:?}")));
                    }
                    return Ok(ScsiOutcome {
                        status: r.status,
                        data: buf,
                        sense: r.sense().map(<[u8]>::to_vec),
                    });
                }
                Pdu::AsyncMessage(_) => {}
                other => {
                    return Err(std::io::Error::other(format!(
                        "waiting for ITT {itt:#x}, got {other:?}"
                    )))
                }
            }
        }
    }

    /// TEST UNIT READY until GOOD (the first one after login may report
    /// the power-on unit attention), then READ CAPACITY(16).
    async fn ready(&mut self) -> std::io::Result<()> {
        let mut ok = false;
        for _ in 0..3 {
            if self.run([0; 16], 0, Bytes::new()).await?.is_good() {
                ok = true;
                break;
            }
        }
        if !ok {
            return Err(std::io::Error::other("TEST UNIT READY never GOOD"));
        }
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9e; // SERVICE ACTION IN(16)
        cdb[1] = 0x10; // READ CAPACITY(16), SBC-4 §5.20
        cdb[13] = 32;
        let cap = self.run(cdb, 32, Bytes::new()).await?;
        if !cap.is_good() {
            return Err(std::io::Error::other(format!("READ CAPACITY: {cap:?}")));
        }
        let last_lba = u64::from_be_bytes(cap.data[0..8].try_into().unwrap());
        self.block_size = u32::from_be_bytes(cap.data[8..12].try_into().unwrap());
        self.blocks = last_lba + 1;
        Ok(())
    }

    /// WRITE(16) of `data` (whole blocks, at most 64 KiB) at `lba`.
    pub async fn write(&mut self, lba: u64, data: Bytes) -> std::io::Result<ScsiOutcome> {
        let blocks = u32::try_from(data.len() / self.block_size as usize).unwrap();
        self.run(rw16(0x8a, lba, blocks), 0, data).await
    }

    /// Sends READ(16) of `blocks` blocks at `lba` without waiting for
    /// (or ever reading) its Data-In: what an abusive initiator does.
    pub async fn send_read(&mut self, lba: u64, blocks: u32) -> std::io::Result<()> {
        use cstor_target::iscsi::pdu::{Pdu, ScsiCommand, TaskAttr};
        let itt = self.itt();
        let command = ScsiCommand {
            immediate: false,
            final_: true,
            read: true,
            write: false,
            attr: TaskAttr::Simple,
            lun: 0,
            itt,
            expected_data_len: blocks * self.block_size,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb: Bytes::copy_from_slice(&rw16(0x88, lba, blocks)),
            bidi_read_len: None,
            data: Bytes::new(),
        };
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        self.send(&Pdu::ScsiCommand(command)).await
    }

    /// READ(16) of `blocks` blocks at `lba`.
    pub async fn read(&mut self, lba: u64, blocks: u32) -> std::io::Result<ScsiOutcome> {
        let len = blocks * self.block_size;
        self.run(rw16(0x88, lba, blocks), len, Bytes::new()).await
    }

    /// SYNCHRONIZE CACHE(16) of the whole LU (SBC-4 §5.27).
    pub async fn sync_cache(&mut self) -> std::io::Result<ScsiOutcome> {
        self.run(rw16(0x91, 0, 0), 0, Bytes::new()).await
    }
}

/// READ(16) / WRITE(16) / SYNCHRONIZE CACHE(16) CDB (SBC-4 §5.17, §5.43,
/// §5.27): opcode, LBA, number of blocks.
pub fn rw16(opcode: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[0] = opcode;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

/// `cstor ctl --target MGMT --json status` as admin of `pki`, or `None`
/// while the target's management API does not answer (starting, killed).
pub fn target_status(pki: &TestPki, mgmt: SocketAddr) -> Option<serde_json::Value> {
    let out = Command::new(cstor_bin())
        .args(["ctl", "--target", &mgmt.to_string(), "--json", "status"])
        .arg("--tls-dir")
        .arg(pki.admin_dir())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// The target-side state names of the replicas in a `target_status`.
pub fn replica_states(status: &serde_json::Value) -> Vec<String> {
    status["replicas"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|x| x["state"].as_str().unwrap_or("?").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `target_status` until `ok` holds for it; panics with the last
/// status after `guard` (a hang guard, not a timing assertion).
pub fn wait_target_status(
    pki: &TestPki,
    mgmt: SocketAddr,
    what: &str,
    guard: Duration,
    mut ok: impl FnMut(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + guard;
    let mut last = None;
    loop {
        if let Some(status) = target_status(pki, mgmt) {
            if ok(&status) {
                return status;
            }
            last = Some(status);
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last status: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends `signal` (e.g. "-STOP", "-CONT", "-9") to `pid` with kill(1).
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid} failed");
}

/// Whether `pid` is stopped by a signal (state T in /proc/PID/stat).
pub fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('T')))
        .unwrap_or(false)
}

/// A `cstor up --base-port` whose ports are free: for replica i BASE+10i to
/// BASE+10i+2 (data, management, metrics), for the target BASE+100 and
/// BASE+101 (management, metrics).
pub fn free_up_base_port(replicas: u16) -> u16 {
    loop {
        let base = free_addr().port();
        let free = |port: u16| TcpListener::bind(("127.0.0.1", port)).is_ok();
        if base < 32_000
            && free(base + 100)
            && free(base + 101)
            && (0..replicas).all(|i| (0..3).all(|k| free(base + 10 * i + k)))
        {
            return base;
        }
    }
}

/// Writers that keep overwriting single 4 KiB blocks of `0..blocks` of an
/// in-process target [`cstor_target::volume::Volume`] until told to stop;
/// writer `k` owns the blocks `lba % writers == k`, so the last generation
/// acknowledged for a block (recorded in `acked`) is the block's truth.
pub struct VolumeLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    writes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl VolumeLoad {
    /// `blocks / writers` must be a power of two (every block of a writer
    /// is then visited); generations start after `first_generation`.
    pub fn start(
        volume: &cstor_target::volume::Volume,
        blocks: u64,
        writers: u64,
        first_generation: u64,
        acked: &std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
    ) -> VolumeLoad {
        use cstor_target::volume::{Completion, Op};
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        const BLOCK: u64 = 4096;
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let tasks = (0..writers)
            .map(|k| {
                let (volume, stop, writes, acked) = (
                    volume.clone(),
                    Arc::clone(&stop),
                    Arc::clone(&writes),
                    Arc::clone(acked),
                );
                tokio::spawn(async move {
                    let own = blocks / writers;
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        // 97 is coprime with `own` (a power of two): every
                        // block of this writer is visited.
                        let lba = (i * 97 % own) * writers + k;
                        let generation = first_generation + i;
                        let result = volume
                            .submit(Op::Write {
                                offset: lba * BLOCK,
                                data: pattern(lba, generation, BLOCK as usize),
                                fua: false,
                            })
                            .await;
                        assert_eq!(result, Ok(Completion::Done), "write of block {lba}");
                        acked.lock().unwrap()[lba as usize] = generation;
                        writes.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        VolumeLoad {
            stop,
            writes,
            tasks,
        }
    }

    /// Waits for `more` acknowledged writes (a hang guard, not a timing
    /// assertion).
    pub async fn wait_writes(&self, more: u64) {
        use std::sync::atomic::Ordering;
        let target = self.writes.load(Ordering::Relaxed) + more;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.writes.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "writes stalled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the writers and waits for them; returns how many writes were
    /// acknowledged.
    pub async fn finish(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        self.writes.load(std::sync::atomic::Ordering::Relaxed)
    }
}
