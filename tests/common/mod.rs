//! Shared pieces of the cross-process tests: a replica daemon run as a real
//! `cstor replica run` child process on loopback, and a small target-side
//! client built on `cstor-proto`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cstor_proto::{Auth, Frame, FrameCodec, Hello, HelloAck, Message, Name, Packet, VersionRange};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

pub fn cstor_bin() -> &'static str {
    env!("CARGO_BIN_EXE_cstor")
}

/// A loopback address with a port nothing listens on right now.
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
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

/// A replica daemon child process over a pool file in a temp dir.
pub struct ReplicaProcess {
    pub dir: PathBuf,
    pub pool_file: PathBuf,
    pub data: SocketAddr,
    pub mgmt: SocketAddr,
    child: Option<Child>,
    log: PathBuf,
}

impl ReplicaProcess {
    /// Creates a pool of `size` (e.g. "256MiB") in `dir` and starts serving it.
    pub fn create(dir: &Path, size: &str) -> Self {
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
        let child = Command::new(cstor_bin())
            .args([
                "replica",
                "run",
                "--pool",
                "test",
                "--pool-path",
                self.pool_file.to_str().unwrap(),
                "--listen",
                &self.data.to_string(),
                "--mgmt-listen",
                &self.mgmt.to_string(),
            ])
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

    pub fn mgmt_arg(&self) -> String {
        self.mgmt.to_string()
    }

    /// `cstor ctl --mgmt <this daemon> ARGS`.
    pub fn ctl(&self, args: &[&str]) -> String {
        let mgmt = self.mgmt_arg();
        let mut all = vec!["ctl", "--mgmt", &mgmt];
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

/// A tool of the team's `../shared/tools` (or `$CSTOR_SHARED_DIR/tools`).
pub fn shared_tool(relative: &str) -> PathBuf {
    std::env::var_os("CSTOR_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"))
        .join("tools")
        .join(relative)
}

/// A `cstor target` child process serving one volume.
pub struct TargetProcess {
    pub portal: SocketAddr,
    pub iqn: String,
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
}

impl Drop for TargetProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A target-side connection to a replica, speaking `cstor-proto`.
pub struct Client {
    pub conn: Framed<TcpStream, FrameCodec>,
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
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            conn: Framed::new(stream, FrameCodec::new()),
            session_id: 0,
            epoch: 0,
            next_io_seq: 1,
        }
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

    pub async fn open(addr: SocketAddr, volume: &str, epoch: u64) -> (Client, HelloAck) {
        let mut client = Client::connect(addr).await;
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

pub fn rand_u64() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish()
}

impl TargetProcess {
    /// `start` with extra command-line arguments and environment variables
    /// (CHAP, initiator allowlist, …).
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
