//! A replication-protocol load generator: drives one running replica daemon
//! the way a target does (one session, pipelined frames), without iSCSI and
//! without a target in between, to tell the replica's share of a volume's
//! IO latency from the rest of the path (docs/benchmarks.md, iSCSI section).
//!
//! ```sh
//! cstor certs ca --out /var/tmp/ca
//! cstor certs issue --ca /var/tmp/ca --out /var/tmp/replica --role replica --pool p
//! cstor certs issue --ca /var/tmp/ca --out /var/tmp/load --role target --volume vol
//! cstor certs issue --ca /var/tmp/ca --out /var/tmp/admin --role admin
//! cstor replica init --pool p --file /var/tmp/p.img --size 2GiB
//! cstor replica run --pool p --pool-path /var/tmp/p.img --tls-dir /var/tmp/replica --listen 127.0.0.1:9600 --mgmt-listen 127.0.0.1:9601 &
//! cstor ctl --tls-dir /var/tmp/admin --mgmt 127.0.0.1:9601 volume create vol --size 1GiB
//! cargo run --release -p cstor-replica --example replica_load -- 127.0.0.1:9600 vol --tls-dir /var/tmp/load --prefill-mib 1024
//! ```
//!
//! Arguments: ADDR VOLUME, then the link security — `--tls-dir DIR` (a
//! target certificate naming VOLUME; the daemon must present a replica
//! certificate) or `--insecure-plaintext` (for a daemon run with it) —,
//! then any of `--prefill-mib M` (write the first M
//! MiB once, 256 KiB sequential writes, before measuring; default 0),
//! `--span-mib M` (random offsets within the first M MiB; default 256),
//! `--secs S` (per measurement; default 5), `--depth D` (default 32),
//! `--write` (measure 4 KiB random writes too), `--skip-qd1` (only depth
//! D). Prints IOPS, the mean latency and the IO count at depth 1 and at
//! depth D.
//!
//! It claims the volume with an epoch taken from the clock (so a later run
//! fences an earlier one); never point it at a volume a target serves.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cstor_proto::{Auth, Extent, FrameCodec, Hello, Message, Name, Packet, VersionRange, Write};
use cstor_tls::{Role, Security, Stream};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

macro_rules! bail {
    ($($arg:tt)*) => { return Err(format!($($arg)*).into()) };
}

const BLOCK: u64 = 4096;
const PREFILL_BYTES: u64 = 256 * 1024;
const PREFILL_DEPTH: usize = 8;

struct Args {
    addr: String,
    volume: String,
    tls_dir: Option<std::path::PathBuf>,
    insecure_plaintext: bool,
    prefill_mib: u64,
    span_mib: u64,
    secs: u64,
    depth: usize,
    write: bool,
    skip_qd1: bool,
}

fn args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let addr = it.next().ok_or("ADDR missing")?;
    let volume = it.next().ok_or("VOLUME missing")?;
    let mut a = Args {
        addr,
        volume,
        tls_dir: None,
        insecure_plaintext: false,
        prefill_mib: 0,
        span_mib: 256,
        secs: 5,
        depth: 32,
        write: false,
        skip_qd1: false,
    };
    while let Some(flag) = it.next() {
        let mut value = || -> Result<u64> { Ok(it.next().ok_or("value missing")?.parse()?) };
        match flag.as_str() {
            "--tls-dir" => a.tls_dir = Some(it.next().ok_or("value missing")?.into()),
            "--insecure-plaintext" => a.insecure_plaintext = true,
            "--prefill-mib" => a.prefill_mib = value()?,
            "--span-mib" => a.span_mib = value()?,
            "--secs" => a.secs = value()?,
            "--depth" => a.depth = usize::try_from(value()?)?,
            "--write" => a.write = true,
            "--skip-qd1" => a.skip_qd1 = true,
            other => bail!("unknown option {other}"),
        }
    }
    if a.depth == 0 || a.depth > 128 || a.span_mib == 0 || a.secs == 0 {
        bail!("bounds: 1 <= depth <= 128, span and secs > 0");
    }
    Ok(a)
}

struct Client {
    conn: Framed<Stream, FrameCodec>,
    session_id: u64,
    epoch: u64,
    next_seq: u64,
}

impl Client {
    async fn open(addr: &str, volume: &str, security: &Security) -> Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (stream, _) = security.connect(tcp, &[Role::Replica]).await?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
        let mut client = Self {
            conn: Framed::new(stream, FrameCodec::new()),
            session_id: u64::from(now.subsec_nanos()) | 1,
            epoch: now.as_secs(),
            next_seq: 0,
        };
        let hello = Message::Hello(Hello {
            versions: VersionRange::SUPPORTED,
            volume: Name::new(volume.to_owned())?,
            next_io_seq: 1,
            auth: Auth::None,
        });
        let ack = client.packet(hello);
        client.conn.send(ack).await?;
        match client.reply().await?.message {
            Message::HelloAck(ack) => client.next_seq = ack.last_durable_io_seq + 1_000_000,
            other => bail!("handshake refused: {other:?}"),
        }
        Ok(client)
    }

    fn packet(&mut self, message: Message) -> Packet {
        self.next_seq += 1;
        Packet {
            session_id: self.session_id,
            epoch: self.epoch,
            io_seq: self.next_seq,
            message,
        }
    }

    async fn reply(&mut self) -> Result<Packet> {
        let frame = self.conn.next().await.ok_or("connection closed")??;
        Ok(Packet::decode(frame)?)
    }

    /// Keeps `depth` requests made by `make` in flight until `count` are
    /// done or `until` passes; returns how many were done.
    async fn run(
        &mut self,
        depth: usize,
        count: Option<u64>,
        until: Option<Instant>,
        mut make: impl FnMut(u64) -> Message,
    ) -> Result<u64> {
        let mut in_flight = HashSet::new();
        let (mut sent, mut done) = (0u64, 0u64);
        loop {
            let more = count.is_none_or(|c| sent < c) && until.is_none_or(|t| Instant::now() < t);
            while more && in_flight.len() < depth && count.is_none_or(|c| sent < c) {
                let packet = self.packet(make(sent));
                in_flight.insert(packet.io_seq);
                self.conn.feed(packet).await?;
                sent += 1;
            }
            SinkExt::<Packet>::flush(&mut self.conn).await?;
            if in_flight.is_empty() {
                return Ok(done);
            }
            let reply = self.reply().await?;
            if let Message::Error(e) = &reply.message {
                bail!("io_seq {}: {:?}: {}", reply.io_seq, e.status, e.detail);
            }
            if !in_flight.remove(&reply.io_seq) {
                bail!("reply to unknown io_seq {}", reply.io_seq);
            }
            done += 1;
        }
    }
}

/// xorshift64*: offsets, not security.
fn random(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = args()?;
    let security = Security::from_flags(a.tls_dir.as_deref(), a.insecure_plaintext)?;
    let mut client = Client::open(&a.addr, &a.volume, &security).await?;
    if a.prefill_mib > 0 {
        let data = Bytes::from(vec![0x5a; PREFILL_BYTES as usize]);
        let count = a.prefill_mib * 1024 * 1024 / PREFILL_BYTES;
        let started = Instant::now();
        client
            .run(PREFILL_DEPTH, Some(count), None, |i| {
                Message::Write(Write {
                    offset: i * PREFILL_BYTES,
                    data: data.clone(),
                    fua: false,
                })
            })
            .await?;
        println!("prefill {} MiB in {:?}", a.prefill_mib, started.elapsed());
    }
    let blocks = a.span_mib * 1024 * 1024 / BLOCK;
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let block = Bytes::from(vec![0xa5; BLOCK as usize]);
    let mut kinds = vec!["read"];
    if a.write {
        kinds.push("write");
    }
    for kind in kinds {
        let depths: &[usize] = if a.skip_qd1 {
            &[a.depth]
        } else {
            &[1, a.depth]
        };
        for &depth in depths {
            let secs = Duration::from_secs(a.secs);
            let started = Instant::now();
            let done = client
                .run(depth, None, Some(started + secs), |_| {
                    let offset = (random(&mut seed) % blocks) * BLOCK;
                    if kind == "read" {
                        Message::Read(Extent {
                            offset,
                            len_bytes: BLOCK as u32,
                        })
                    } else {
                        Message::Write(Write {
                            offset,
                            data: block.clone(),
                            fua: false,
                        })
                    }
                })
                .await?;
            let elapsed = started.elapsed().as_secs_f64();
            let iops = done as f64 / elapsed;
            println!(
                "4K random {kind} qd{depth}: {iops:.0} IOPS, mean latency {:.0} us, {done} IOs",
                depth as f64 / iops * 1e6
            );
        }
    }
    Ok(())
}
