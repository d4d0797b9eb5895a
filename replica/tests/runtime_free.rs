//! The replica's session core and rebuild, driven without a tokio runtime
//! (as the whole-cluster simulator drives them): two registries on
//! in-memory pools, a single-threaded `futures` executor, links that are
//! channels of packets, and a clock that is a counter. A target session
//! writes to replica A and reads it back; replica B's owning session is
//! told to rebuild from A, its sink dials A (a probe session served by
//! `session::core` and `rebuild::source::serve`), and its reports arrive;
//! B then reads A's data, and has A's snapshot with its older content.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use cstor_engine::io::MemDevice;
use cstor_engine::{DeviceRef, Pool, PoolOptions, Provisioning};
use cstor_proto::{
    Auth, Extent, Hello, Member, Membership, Message, Name, Opcode, Packet, RebuildSource,
    RebuildStart, VersionRange, Write,
};
use cstor_replica::rebuild::io::{Clock, LinkError, RebuildIo};
use cstor_replica::rebuild::source;
use cstor_replica::registry::Registry;
use cstor_replica::session::core::{open, Opening, Routed, SessionCore};
use cstor_tls::{Identity, Peer};
use futures::channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use futures::executor::LocalPool;
use futures::future::{self, BoxFuture};
use futures::task::LocalSpawnExt;
use futures::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use tokio_util::sync::CancellationToken;

const VOLUME: &str = "v";
const BLOCK: u32 = 4096;
const SIZE: u64 = 4 << 20;
/// Where the sink's source "listens".
const SOURCE_ADDRESS: &str = "replica-a:7000";

/// One end of an in-memory link of packets.
struct Link {
    tx: UnboundedSender<Packet>,
    rx: UnboundedReceiver<Packet>,
}

fn link_pair() -> (Link, Link) {
    let (a_tx, b_rx) = unbounded();
    let (b_tx, a_rx) = unbounded();
    (Link { tx: a_tx, rx: a_rx }, Link { tx: b_tx, rx: b_rx })
}

impl Sink<Packet> for Link {
    type Error = LinkError;

    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), LinkError>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, item: Packet) -> Result<(), LinkError> {
        self.tx
            .unbounded_send(item)
            .map_err(|_| LinkError("connection closed".into()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), LinkError>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), LinkError>> {
        self.tx.close_channel();
        Poll::Ready(Ok(()))
    }
}

impl Stream for Link {
    type Item = Result<Packet, LinkError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_next_unpin(cx).map(|p| p.map(Ok))
    }
}

/// The outside world of replica B's sink: tasks go to the test's
/// executor, time is a counter (a tenth of a second per reading; sleeps
/// never end, so no timeout fires), and dialling `SOURCE_ADDRESS` opens a
/// connection served by replica A.
#[derive(Clone)]
struct SimIo {
    tasks: UnboundedSender<BoxFuture<'static, ()>>,
    ticks: Arc<AtomicU64>,
    source: Arc<Registry>,
}

impl Clock for SimIo {
    fn now(&self) -> Duration {
        Duration::from_millis(100 * self.ticks.fetch_add(1, Ordering::Relaxed))
    }

    fn sleep(&self, _: Duration) -> BoxFuture<'static, ()> {
        future::pending().boxed()
    }
}

impl RebuildIo for SimIo {
    type Conn = Link;

    fn dial(
        &self,
        peer_address: &str,
    ) -> BoxFuture<'static, Result<(Link, String), cstor_replica::rebuild::RebuildError>> {
        assert_eq!(peer_address, SOURCE_ADDRESS);
        let (sink_end, source_end) = link_pair();
        let conn_id = self.source.next_conn_id();
        // The sink dials with its replica certificate.
        let peer = Peer::Authenticated(Identity::Replica { pool: "b".into() });
        self.spawn(
            serve_connection(
                Arc::clone(&self.source),
                conn_id,
                peer,
                source_end,
                self.clone(),
            )
            .boxed(),
        );
        future::ready(Ok((sink_end, "replica-b:7000".to_owned()))).boxed()
    }

    fn spawn(&self, task: BoxFuture<'static, ()>) {
        self.tasks.unbounded_send(task).unwrap();
    }
}

/// A replica's side of one connection, as the simulator would run it:
/// the first packet opens the session, later ones are routed (IO run in
/// order here: this test pipelines nothing), a `RebuildSource` turns the
/// link into the stream.
async fn serve_connection(
    registry: Arc<Registry>,
    conn_id: u64,
    peer: Peer,
    mut link: Link,
    clock: SimIo,
) {
    let Some(Ok(first)) = link.next().await else {
        return;
    };
    let session = match open(&registry, conn_id, peer, first).await {
        Opening::Open { session, reply } => {
            link.send(reply).await.unwrap();
            session
        }
        Opening::Refused { reply, reason } => {
            let _ = link.send(reply).await;
            panic!("the source refused the sink: {reason:?}");
        }
    };
    while let Some(Ok(packet)) = link.next().await {
        match session.route(packet) {
            Routed::Reply(reply) => {
                if let Some(reply) = reply {
                    link.send(reply).await.unwrap();
                }
            }
            Routed::Io(task) => link.send(task.run().await).await.unwrap(),
            Routed::RebuildSource { request, start } => {
                let stop = CancellationToken::new();
                source::serve(&mut link, &clock, session.entry(), &request, &start, &stop)
                    .await
                    .unwrap();
                break;
            }
            Routed::RebuildSink { .. } => panic!("a probe session cannot rebuild itself"),
        }
    }
    session.close();
}

async fn registry() -> Arc<Registry> {
    registry_on(Arc::new(MemDevice::new(64 << 20))).await
}

async fn registry_on(device: DeviceRef) -> Arc<Registry> {
    let options = PoolOptions {
        commit_interval: None,
        ..PoolOptions::default()
    };
    let pool = Pool::create(vec![device], &options).await.unwrap();
    pool.create_volume(VOLUME, SIZE, BLOCK, Provisioning::Thin)
        .await
        .unwrap();
    Arc::new(Registry::new(Arc::new(pool)))
}

fn packet(epoch: u64, io_seq: u64, message: Message) -> Packet {
    Packet {
        session_id: 7,
        epoch,
        io_seq,
        message,
    }
}

/// The volume's target opens an owning session of `registry` at `epoch`.
async fn target_session(registry: &Arc<Registry>, epoch: u64) -> SessionCore {
    let hello = Message::Hello(Hello {
        versions: VersionRange::SUPPORTED,
        volume: Name::new(VOLUME.to_owned()).unwrap(),
        next_io_seq: 1,
        auth: Auth::None,
    });
    let peer = Peer::Authenticated(Identity::Target {
        volumes: vec![VOLUME.into()],
    });
    match open(
        registry,
        registry.next_conn_id(),
        peer,
        packet(epoch, 0, hello),
    )
    .await
    {
        Opening::Open { session, reply } => {
            assert!(matches!(reply.message, Message::HelloAck(_)), "{reply:?}");
            session
        }
        Opening::Refused { reply, reason } => panic!("refused: {reply:?} {reason:?}"),
    }
}

/// Routes one IO request and runs it.
async fn io(session: &SessionCore, request: Packet) -> Message {
    match session.route(request) {
        Routed::Io(task) => task.run().await.message,
        Routed::Reply(reply) => panic!("not an IO: answered {reply:?}"),
        _ => panic!("not an IO"),
    }
}

async fn write(session: &SessionCore, io_seq: u64, offset: u64, data: Bytes) {
    let write = Message::Write(Write {
        offset,
        data,
        fua: false,
    });
    assert_eq!(
        io(session, packet(1, io_seq, write)).await,
        Message::Ack(Opcode::Write)
    );
}

async fn read(session: &SessionCore, offset: u64, len: usize) -> Bytes {
    let extent = Extent {
        offset,
        len_bytes: u32::try_from(len).unwrap(),
    };
    match io(session, packet(1, 30, Message::Read(extent))).await {
        Message::ReadData(data) => data,
        other => panic!("read failed: {other:?}"),
    }
}

fn data(tag: u8, len: usize) -> Bytes {
    Bytes::from((0..len).map(|i| tag ^ (i % 251) as u8).collect::<Vec<_>>())
}

#[test]
fn a_session_and_a_rebuild_run_without_a_tokio_runtime() {
    let mut pool = LocalPool::new();
    let spawner = pool.spawner();
    let (tasks, mut spawned) = unbounded::<BoxFuture<'static, ()>>();
    let forwarder = spawner.clone();
    spawner
        .spawn_local(async move {
            while let Some(task) = spawned.next().await {
                forwarder.spawn_local(task).unwrap();
            }
        })
        .unwrap();

    pool.run_until(async move {
        let a = registry().await;
        let b = registry().await;
        let written = [
            (0u64, data(1, 64 << 10)),
            (1 << 20, data(2, 8 << 10)),
            (3 << 20, data(3, 4096)),
        ];

        // The target makes A a member of a replica set (so a peer replica
        // may pull it), writes, takes a snapshot, overwrites the first
        // write's first blocks, and reads it all back.
        let on_a = target_session(&a, 1).await;
        let membership = Membership {
            generation: 1,
            consistency_factor: 2,
            members: vec![
                Member {
                    replica_id: 1,
                    address: SOURCE_ADDRESS.into(),
                },
                Member {
                    replica_id: 2,
                    address: "replica-b:7000".into(),
                },
            ],
        };
        let set = Message::MembershipSet(membership);
        assert_eq!(
            io(&on_a, packet(1, 1, set)).await,
            Message::Ack(Opcode::MembershipSet)
        );
        for (i, (offset, bytes)) in written.iter().enumerate() {
            write(&on_a, 2 + i as u64, *offset, bytes.clone()).await;
        }
        let snapshot = Message::SnapshotCreate(Name::new("s1".to_owned()).unwrap());
        assert_eq!(
            io(&on_a, packet(1, 5, snapshot)).await,
            Message::Ack(Opcode::SnapshotCreate)
        );
        write(&on_a, 6, 0, data(4, 16 << 10)).await;
        let flush = io(&on_a, packet(1, 10, Message::Flush)).await;
        assert_eq!(flush, Message::Ack(Opcode::Flush));
        let mut live = written.to_vec();
        let mut first = live[0].1.to_vec();
        first[..16 << 10].copy_from_slice(&data(4, 16 << 10));
        live[0].1 = Bytes::from(first);
        for (offset, bytes) in &live {
            assert_eq!(&read(&on_a, *offset, bytes.len()).await, bytes);
        }

        // B's target tells it to rebuild from A.
        let on_b = target_session(&b, 1).await;
        let sim = SimIo {
            tasks,
            ticks: Arc::default(),
            source: Arc::clone(&a),
        };
        let start = RebuildStart {
            peer_address: SOURCE_ADDRESS.into(),
            volume: Name::new(VOLUME.to_owned()).unwrap(),
            from_io_seq: 0,
            source: RebuildSource::Live,
        };
        let request = packet(1, 20, Message::RebuildStart(start));
        let (request, start) = match on_b.route(request) {
            Routed::RebuildSink { request, start } => (request, start),
            other => panic!("not a rebuild: {other:?}"),
        };
        let (replies, mut reports) = tokio::sync::mpsc::channel(64);
        let session_end = CancellationToken::new();
        let ack = on_b.start_sink(sim, &request, start, replies, &session_end);
        assert_eq!(ack.message, Message::Ack(Opcode::RebuildStart));

        let mut progress = 0;
        let through_io_seq = loop {
            let report = reports
                .recv()
                .await
                .expect("the sink reports until it is done");
            assert_eq!(report.io_seq, 20, "a report answers the RebuildStart");
            match report.message {
                Message::RebuildProgress(p) => {
                    assert!(p.done_bytes <= p.total_bytes, "{p:?}");
                    progress += 1;
                }
                Message::RebuildDone(done) => break done.through_io_seq,
                other => panic!("rebuild failed: {other:?}"),
            }
        };
        assert!(progress >= 1, "progress was reported");
        assert!(
            through_io_seq >= 4,
            "the stream covered every write: {through_io_seq}"
        );

        // B holds A's data, and its snapshot with the older content.
        for (offset, bytes) in &live {
            assert_eq!(&read(&on_b, *offset, bytes.len()).await, bytes);
        }
        let volume = &on_b.entry().volume;
        let listed = |v: &cstor_engine::Volume| {
            let all = v.list_snapshots().unwrap();
            all.into_iter()
                .map(|s| (s.name, s.io_seq))
                .collect::<Vec<_>>()
        };
        assert_eq!(listed(volume), listed(&on_a.entry().volume));
        assert_eq!(listed(volume).len(), 1);
        for (offset, bytes) in &written {
            let mut buf = vec![0u8; bytes.len()];
            volume.read_snapshot("s1", *offset, &mut buf).await.unwrap();
            assert_eq!(buf, bytes.to_vec(), "snapshot s1 at {offset}");
        }
        on_a.close();
        on_b.close();
        assert!(on_b.is_fenced() && b.get(VOLUME).unwrap().owner_epoch().is_none());
    });
}

/// Byte offset of `needle` in the device's image (a written block, found
/// by its content).
fn find(dev: &MemDevice, needle: &[u8]) -> u64 {
    let image = dev.image();
    (0..image.len() - needle.len())
        .step_by(512)
        .find(|at| image[*at..*at + needle.len()] == *needle)
        .expect("the block on the device") as u64
}

/// Flips a byte at `at` behind the pool's back (a rotting disk).
async fn flip(dev: &MemDevice, at: u64) {
    use cstor_engine::io::{AlignedBuf, Device};
    let base = at - at % 4096;
    let (res, mut buf) = dev.read_at(AlignedBuf::zeroed(4096), base).await;
    res.unwrap();
    buf.as_mut_slice()[(at - base) as usize] ^= 0x40;
    let (res, _) = dev.write_at(buf, base).await;
    res.unwrap();
}

/// docs/checksums-design.md, "Reads": a read over a block that fails its
/// checksum answers `ChecksumError` naming it (never data), counts it, and
/// leaves the replica serving: the other blocks read, a write of the whole
/// block makes it good again.
#[test]
fn a_read_of_a_rotten_block_answers_checksum_error_and_the_replica_serves_on() {
    LocalPool::new().run_until(async {
        let dev = Arc::new(MemDevice::new(64 << 20));
        let registry = registry_on(dev.clone()).await;
        let session = target_session(&registry, 1).await;
        let blocks: Vec<Bytes> = (0..4u8).map(|b| data(0x40 + b, BLOCK as usize)).collect();
        let all: Vec<u8> = blocks.iter().flat_map(|b| b.iter().copied()).collect();
        write(&session, 1, 0, Bytes::from(all.clone())).await;
        assert_eq!(
            io(&session, packet(1, 2, Message::Flush)).await,
            Message::Ack(Opcode::Flush)
        );
        flip(&dev, find(&dev, &blocks[2]) + 100).await;

        let extent = Extent {
            offset: u64::from(BLOCK),
            len_bytes: 3 * BLOCK,
        };
        let answer = io(&session, packet(1, 3, Message::Read(extent))).await;
        let Message::ChecksumError(reply) = answer else {
            panic!("a rotten block was not reported: {answer:?}");
        };
        assert_eq!(reply.extent, extent);
        assert_eq!(
            reply
                .bad
                .iter()
                .map(|r| (r.offset, r.len_bytes))
                .collect::<Vec<_>>(),
            vec![(2 * u64::from(BLOCK), u64::from(BLOCK))]
        );
        let io_counters = registry.metrics().volume(VOLUME);
        assert_eq!(io_counters.checksum_blocks(), 1);
        // Not poisoned: the rest reads, writes go on.
        assert_eq!(
            read(&session, 0, 2 * BLOCK as usize).await,
            all[..2 * BLOCK as usize]
        );
        write(&session, 4, 3 * u64::from(BLOCK), blocks[3].clone()).await;
        // What the target's write-back does: the whole block, good again.
        write(&session, 5, 2 * u64::from(BLOCK), blocks[2].clone()).await;
        assert_eq!(read(&session, 0, all.len()).await, all);
        assert_eq!(io_counters.checksum_blocks(), 1);
        session.close();
    });
}
