//! The rebuild stream between two in-process replica daemons on loopback,
//! over mutual TLS (the sink dials its source with its replica
//! certificate; the test plays the target with a target certificate): a
//! sink told by its (simulated) target to rebuild pulls the source's
//! blocks, keeps a live write that arrived meanwhile, reports progress and
//! done — also between plaintext daemons; a sink whose source is
//! unreachable aborts and stays degraded; a source streams a snapshot's
//! frozen content, and aborts a stream of a snapshot it does not have; a
//! delta rebuild replaces what only the sink got with the source's
//! content; a failed write holds the durable io_seq a replica reports
//! below it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use cstor_proto::{
    Message, Name, Opcode, Packet, RebuildSource, RebuildStart, ReplicaState, Write,
};
use cstor_tls::Security;
use futures::SinkExt;
use support::{
    make_replicated, packet, replica_of, target, Conn, Pki, Replica, BLOCK, VOLUME_BYTES,
};

/// The link security of a test's daemons and of its simulated target.
enum Links {
    Tls(Box<Pki>),
    Plaintext,
}

impl Links {
    fn tls() -> Links {
        Links::Tls(Box::default())
    }

    /// A daemon of pool `name` serving volume `v`.
    async fn replica(&self, name: &str) -> Replica {
        let security = match self {
            Links::Tls(pki) => pki.security(&replica_of(name)),
            Links::Plaintext => Security::Plaintext,
        };
        support::replica(security, name, &["v"]).await
    }

    /// The simulated target of volume `v`.
    fn target(&self) -> Security {
        match self {
            Links::Tls(pki) => pki.security(&target("v")),
            Links::Plaintext => Security::Plaintext,
        }
    }

    /// A peer replica (a sink probing its source).
    fn peer_replica(&self) -> Security {
        match self {
            Links::Tls(pki) => pki.security(&replica_of("peer")),
            Links::Plaintext => Security::Plaintext,
        }
    }
}

fn block(tag: u8, lba: u64) -> Bytes {
    let mut data = vec![tag; BLOCK as usize];
    data[..8].copy_from_slice(&lba.to_le_bytes());
    Bytes::from(data)
}

/// Opens a session on volume `v` at `epoch` (0: probe) as `security`.
async fn session(addr: SocketAddr, security: &Security, epoch: u64) -> (Conn, ReplicaState, u64) {
    let (conn, answer) = support::hello(addr, security, "v", epoch).await;
    match answer {
        Some(Message::HelloAck(ack)) => (conn.unwrap(), ack.state, ack.last_durable_io_seq),
        other => panic!("hello refused: {other:?}"),
    }
}

fn start(peer: SocketAddr, source: RebuildSource) -> Message {
    Message::RebuildStart(RebuildStart {
        peer_address: peer.to_string(),
        volume: Name::new("v").unwrap(),
        from_io_seq: 0,
        source,
    })
}

async fn next(conn: &mut Conn) -> Packet {
    support::next(conn).await.expect("connection closed")
}

#[tokio::test]
async fn a_sink_pulls_every_block_but_keeps_a_live_write_that_came_meanwhile() {
    sink_pulls_every_block_but_keeps_a_live_write(Links::tls()).await;
}

/// The same between daemons run with --insecure-plaintext (the sink dials
/// its source without TLS).
#[tokio::test]
async fn a_sink_pulls_every_block_between_plaintext_daemons() {
    sink_pulls_every_block_but_keeps_a_live_write(Links::Plaintext).await;
}

async fn sink_pulls_every_block_but_keeps_a_live_write(links: Links) {
    let source = links.replica("source").await;
    let sink = links.replica("sink").await;
    // The source's volume is in a replica set (its target wrote the
    // record): the sink's replica certificate may pull it.
    make_replicated(&source.pool, "v").await;
    // A source serves only while its target owns the volume there.
    let _owner = session(source.data, &links.target(), 1).await;
    let src = source.pool.volume("v").unwrap();
    // 256 blocks (1 MiB) spread over 4 MiB.
    for lba in (0..1024).step_by(4) {
        src.write(lba * BLOCK, &block(1, lba), 10 + lba)
            .await
            .unwrap();
    }
    let live_lba = 8;
    // The source holds a newer write next to the live block (same chunk)
    // but not yet the live write itself (still in flight to it): the
    // chunk's io_seq is above the live write's, so only the sink's
    // tracking of live writes can keep it.
    src.write((live_lba + 1) * BLOCK, &block(1, live_lba + 1), 6000)
        .await
        .unwrap();
    src.flush().await.unwrap();

    let (mut target, _, _) = session(sink.data, &links.target(), 1).await;
    let first_live = 5000;
    target
        .send(packet(
            1,
            first_live,
            start(source.data, RebuildSource::Live),
        ))
        .await
        .unwrap();
    // A live write right behind the RebuildStart: tracked, so the older
    // rebuilt block must not overwrite it.
    target
        .send(packet(
            1,
            first_live,
            Message::Write(Write {
                offset: live_lba * BLOCK,
                data: block(2, live_lba),
                fua: false,
            }),
        ))
        .await
        .unwrap();
    let mut accepted = false;
    let mut progress = Vec::new();
    let through = loop {
        let reply = next(&mut target).await;
        assert_eq!(reply.io_seq, first_live, "{reply:?}");
        match reply.message {
            Message::Ack(Opcode::RebuildStart) => accepted = true,
            Message::Ack(Opcode::Write) => {}
            Message::RebuildProgress(p) => progress.push(p),
            Message::RebuildDone(done) => break done.through_io_seq,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(accepted);
    assert!(through >= 6000, "through_io_seq {through}");
    let last = progress.last().expect("no progress reported");
    assert_eq!(last.done_bytes, last.total_bytes);
    // 257 written blocks in 64 chunks of 64 KiB.
    assert_eq!(last.total_bytes, 4 << 20);

    let dst = sink.pool.volume("v").unwrap();
    let mut want = vec![0u8; BLOCK as usize];
    let mut got = vec![0u8; BLOCK as usize];
    for lba in 0..1024 {
        src.read(lba * BLOCK, &mut want).await.unwrap();
        dst.read(lba * BLOCK, &mut got).await.unwrap();
        if lba == live_lba {
            assert_eq!(got, block(2, lba), "the live write was overwritten");
        } else {
            assert!(got == want, "block {lba} differs from the source");
        }
    }
    // Finished: no unfinished marker, the replica reports itself healthy,
    // complete through what it received live (the one write at
    // `first_live`), not through the stream's end: the live requests
    // between them have not reached it (a target that stopped here must
    // rebuild it from there).
    drop(target);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, state, durable) = session(sink.data, &links.target(), 0).await;
    assert_eq!(state, ReplicaState::Healthy);
    assert_eq!(durable, first_live, "the stream went through {through}");
}

/// A delta rebuild also undoes what the sink alone got: writes after
/// `from_io_seq` that never reached the source (they never completed) in
/// chunks the source did not change since. The sink ends with the source's
/// content there: its older data, or zeros where it never wrote.
#[tokio::test]
async fn a_delta_rebuild_replaces_writes_only_the_sink_got_with_the_sources_content() {
    let links = Links::tls();
    let source = links.replica("source").await;
    let sink = links.replica("sink").await;
    make_replicated(&source.pool, "v").await;
    // A source serves only while its target owns the volume there.
    let _owner = session(source.data, &links.target(), 1).await;
    let src = source.pool.volume("v").unwrap();
    let dst = sink.pool.volume("v").unwrap();
    let chunk_blocks = src.chunk_bytes() / BLOCK;
    // What both have (through io_seq 20): the first four chunks.
    for lba in 0..4 * chunk_blocks {
        src.write(lba * BLOCK, &block(1, lba), 10).await.unwrap();
        dst.write(lba * BLOCK, &block(1, lba), 10).await.unwrap();
    }
    // Only the sink got these (never completed): into a chunk both have,
    // and into one the source never wrote.
    let shared_lba = chunk_blocks + 3;
    let fresh_lba = 40 * chunk_blocks + 1;
    dst.write(shared_lba * BLOCK, &block(7, shared_lba), 30)
        .await
        .unwrap();
    dst.write(fresh_lba * BLOCK, &block(7, fresh_lba), 31)
        .await
        .unwrap();
    // Only the source got this one (the sink missed it): the stream
    // carries it.
    let missed_lba = 3 * chunk_blocks;
    src.write(missed_lba * BLOCK, &block(3, missed_lba), 40)
        .await
        .unwrap();
    src.flush().await.unwrap();
    dst.flush().await.unwrap();

    let (mut target, _, _) = session(sink.data, &links.target(), 1).await;
    let rebuild = Message::RebuildStart(RebuildStart {
        peer_address: source.data.to_string(),
        volume: Name::new("v").unwrap(),
        from_io_seq: 20,
        source: RebuildSource::Live,
    });
    target.send(packet(1, 5000, rebuild)).await.unwrap();
    loop {
        match next(&mut target).await.message {
            Message::Ack(Opcode::RebuildStart) | Message::RebuildProgress(_) => {}
            Message::RebuildDone(_) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    let mut want = vec![0u8; BLOCK as usize];
    let mut got = vec![0u8; BLOCK as usize];
    for lba in (0..4 * chunk_blocks).chain(40 * chunk_blocks..41 * chunk_blocks) {
        src.read(lba * BLOCK, &mut want).await.unwrap();
        dst.read(lba * BLOCK, &mut got).await.unwrap();
        assert!(got == want, "block {lba} differs from the source");
    }
    dst.read(shared_lba * BLOCK, &mut got).await.unwrap();
    assert_eq!(got, block(1, shared_lba), "the sink's own write stayed");
    dst.read(fresh_lba * BLOCK, &mut got).await.unwrap();
    assert!(
        got.iter().all(|b| *b == 0),
        "the sink's own fresh write stayed"
    );
    dst.read(missed_lba * BLOCK, &mut got).await.unwrap();
    assert_eq!(got, block(3, missed_lba), "the missed write was not pulled");
}

#[tokio::test]
async fn a_sink_whose_source_is_unreachable_aborts_and_stays_degraded() {
    let links = Links::tls();
    let sink = links.replica("sink").await;
    let dst = sink.pool.volume("v").unwrap();
    dst.write(0, &block(1, 0), 7).await.unwrap();
    dst.flush().await.unwrap();
    let nobody = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (mut target, _, _) = session(sink.data, &links.target(), 1).await;
    target
        .send(packet(1, 77, start(nobody, RebuildSource::Live)))
        .await
        .unwrap();
    assert_eq!(
        next(&mut target).await.message,
        Message::Ack(Opcode::RebuildStart)
    );
    match next(&mut target).await.message {
        Message::RebuildAbort(abort) => assert!(abort.detail.contains("connect"), "{abort:?}"),
        other => panic!("expected an abort, got {other:?}"),
    }
    // Complete only through where the rebuild started (0), whatever it
    // holds: a target must rebuild it again.
    let (_, state, durable) = session(sink.data, &links.target(), 0).await;
    assert_eq!((state, durable), (ReplicaState::Degraded, 0));
}

#[tokio::test]
async fn a_source_aborts_the_stream_of_a_snapshot_it_does_not_have() {
    let links = Links::tls();
    let source = links.replica("source").await;
    make_replicated(&source.pool, "v").await;
    // A source serves only while its target owns the volume there.
    let _owner = session(source.data, &links.target(), 1).await;
    let (mut probe, _, _) = session(source.data, &links.peer_replica(), 0).await;
    let snapshot = RebuildSource::Snapshot(Name::new("s1").unwrap());
    probe
        .send(packet(
            0,
            1,
            start("127.0.0.1:1".parse().unwrap(), snapshot),
        ))
        .await
        .unwrap();
    match next(&mut probe).await.message {
        Message::RebuildAbort(abort) => {
            assert!(abort.detail.contains("snapshot"), "{abort:?}")
        }
        other => panic!("expected an abort, got {other:?}"),
    }
}

#[tokio::test]
async fn a_source_streams_a_snapshot_as_it_was_taken_not_the_live_volume() {
    let links = Links::tls();
    let source = links.replica("source").await;
    make_replicated(&source.pool, "v").await;
    // A source serves only while its target owns the volume there.
    let _owner = session(source.data, &links.target(), 1).await;
    let v = source.pool.volume("v").unwrap();
    v.write(0, &block(1, 0), 5).await.unwrap();
    v.write(BLOCK, &block(1, 1), 6).await.unwrap();
    v.create_snapshot("s1").await.unwrap();
    v.write(0, &block(2, 0), 7).await.unwrap();
    let (mut probe, _, _) = session(source.data, &links.peer_replica(), 0).await;
    let snapshot = RebuildSource::Snapshot(Name::new("s1").unwrap());
    probe
        .send(packet(
            0,
            1,
            start("127.0.0.1:1".parse().unwrap(), snapshot),
        ))
        .await
        .unwrap();
    let mut got = vec![0u8; 2 * BLOCK as usize];
    loop {
        match next(&mut probe).await.message {
            Message::Ack(Opcode::RebuildStart) | Message::RebuildProgress(_) => {}
            Message::RebuildChunk(c) => {
                assert!(
                    c.block_io_seqs.iter().all(|s| *s <= 6),
                    "{:?}",
                    c.block_io_seqs
                );
                let at = c.offset as usize;
                let end = (at + c.data.len()).min(got.len());
                if at < end {
                    got[at..end].copy_from_slice(&c.data[..end - at]);
                }
            }
            Message::RebuildDone(done) => {
                assert_eq!(
                    done.through_io_seq, 6,
                    "a snapshot's stream ends at its io_seq"
                );
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        &got[..BLOCK as usize],
        &block(1, 0)[..],
        "the write after the snapshot leaked in"
    );
    assert_eq!(&got[BLOCK as usize..], &block(1, 1)[..]);
}

/// The durable io_seq a replica reports (where a delta rebuild of it
/// starts) is its completion watermark: a write that failed holds it below,
/// even though later writes succeeded and were flushed.
#[tokio::test]
async fn a_failed_write_holds_the_reported_durable_io_seq_below_it() {
    let links = Links::tls();
    let r = links.replica("r").await;
    let (mut target, _, _) = session(r.data, &links.target(), 1).await;
    let write = |offset: u64, lba: u64| {
        Message::Write(Write {
            offset,
            data: block(3, lba),
            fua: false,
        })
    };
    target.send(packet(1, 5, write(0, 0))).await.unwrap();
    // Past the end of the volume: refused by the engine.
    target
        .send(packet(1, 6, write(VOLUME_BYTES, 0)))
        .await
        .unwrap();
    target.send(packet(1, 7, write(BLOCK, 1))).await.unwrap();
    let mut failed = Vec::new();
    for _ in 0..3 {
        let reply = next(&mut target).await;
        if !matches!(reply.message, Message::Ack(Opcode::Write)) {
            failed.push(reply.io_seq);
        }
    }
    assert_eq!(failed, vec![6], "only the write past the end fails");
    target.send(packet(1, 8, Message::Flush)).await.unwrap();
    assert!(matches!(
        next(&mut target).await.message,
        Message::Ack(Opcode::Flush)
    ));
    drop(target);
    let (_, _, durable) = session(r.data, &links.target(), 2).await;
    assert_eq!(durable, 5, "complete through 5 only: 6 is missing");
}
