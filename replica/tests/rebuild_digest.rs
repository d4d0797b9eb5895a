//! A full rebuild by digest between two in-process replica daemons on
//! loopback, over mutual TLS (the test plays the target): a sink that
//! already holds the source's data but for a few ranges pulls only those
//! ranges, keeps a live write that came meanwhile, and ends with the
//! source's content in every block; a sink with no data takes the plain
//! live stream of everything; a block that rotted on the sink is pulled,
//! one that rotted on the source aborts the rebuild.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use cstor_engine::Volume;
use cstor_proto::{
    Message, Name, Opcode, RebuildAbort, RebuildProgress, RebuildSource, RebuildStart,
    ReplicaState, Status, Write,
};
use cstor_replica::limits::REBUILD_DIGEST_RANGE_BYTES;
use cstor_replica::rebuild::state::io_seq_floor;
use futures::SinkExt;
use support::{
    make_replicated, packet, replica_of, target, Conn, Pki, Replica, BLOCK, VOLUME_BYTES,
};

/// A block tagged with `tag` and its own LBA.
fn block(tag: u8, lba: u64) -> Vec<u8> {
    let mut data = vec![tag; BLOCK as usize];
    data[..8].copy_from_slice(&lba.to_le_bytes());
    data
}

/// Writes blocks `lbas` of `volume` tagged `tag`, 64 at a time.
async fn fill(volume: &Volume, lbas: std::ops::Range<u64>, tag: u8, io_seq: u64) {
    let mut lba = lbas.start;
    while lba < lbas.end {
        let n = 64.min(lbas.end - lba);
        let data: Vec<u8> = (lba..lba + n).flat_map(|l| block(tag, l)).collect();
        volume.write(lba * BLOCK, &data, io_seq).await.unwrap();
        lba += n;
    }
}

async fn session(addr: SocketAddr, pki: &Pki, epoch: u64) -> (Conn, ReplicaState, u64) {
    let (conn, answer) = support::hello(addr, &pki.security(&target("v")), "v", epoch).await;
    match answer {
        Some(Message::HelloAck(ack)) => (conn.unwrap(), ack.state, ack.last_durable_io_seq),
        other => panic!("hello refused: {other:?}"),
    }
}

/// Two TLS daemons serving `v`: a source whose target owns `v` there (the
/// returned session), and a sink.
async fn pair(pki: &Pki) -> (Replica, Replica, Conn) {
    let source = support::replica(pki.security(&replica_of("source")), "source", &["v"]).await;
    let sink = support::replica(pki.security(&replica_of("sink")), "sink", &["v"]).await;
    make_replicated(&source.pool, "v").await;
    let (owner, _, _) = session(source.data, pki, 1).await;
    (source, sink, owner)
}

/// What a full rebuild into `sink` from `source` reported, with a live
/// write of `live` at `live_lba` sent right behind its `RebuildStart`.
async fn rebuild(
    sink: &Replica,
    source: &Replica,
    pki: &Pki,
    live: Option<(u64, Bytes)>,
) -> Vec<RebuildProgress> {
    match try_rebuild(sink, source, pki, 1, live).await {
        Ok(progress) => progress,
        Err(abort) => panic!("rebuild aborted: {abort:?}"),
    }
}

/// [`rebuild`] by a target at `epoch`; `Err`: the sink aborted.
async fn try_rebuild(
    sink: &Replica,
    source: &Replica,
    pki: &Pki,
    epoch: u64,
    live: Option<(u64, Bytes)>,
) -> Result<Vec<RebuildProgress>, RebuildAbort> {
    let (mut target, _, _) = session(sink.data, pki, epoch).await;
    let first_live = 5000;
    let start = Message::RebuildStart(RebuildStart {
        peer_address: source.data.to_string(),
        volume: Name::new("v").unwrap(),
        from_io_seq: 0,
        source: RebuildSource::Live,
    });
    target.send(packet(epoch, first_live, start)).await.unwrap();
    if let Some((lba, data)) = live {
        let write = Message::Write(Write {
            offset: lba * BLOCK,
            data,
            fua: false,
        });
        target.send(packet(epoch, first_live, write)).await.unwrap();
    }
    let mut progress = Vec::new();
    loop {
        let reply = support::next(&mut target).await.expect("connection closed");
        match reply.message {
            Message::Ack(Opcode::RebuildStart | Opcode::Write) => {}
            Message::RebuildProgress(p) => progress.push(p),
            Message::RebuildDone(_) => return Ok(progress),
            Message::RebuildAbort(abort) => return Err(abort),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Flips a byte of every copy of `data` in the pool file `image`, behind
/// the daemon's back (a rotting disk).
fn rot(image: &std::path::Path, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .unwrap();
    let bytes = std::fs::read(image).unwrap();
    let mut found = 0;
    let mut at = 0;
    while at + data.len() <= bytes.len() {
        if bytes[at..at + data.len()] == *data {
            let byte = bytes[at + 100] ^ 0x40;
            file.write_at(&[byte], (at + 100) as u64).unwrap();
            found += 1;
            at += data.len();
        } else {
            at += 4096;
        }
    }
    assert!(found > 0, "the block is not in the pool file");
    file.sync_all().unwrap();
}

/// `cstor_replica_rebuild_digest_{what}_total{result}` of `replica`.
async fn digests(replica: &Replica, pool: &str, what: &str, result: &str) -> u64 {
    let samples = support::scrape(replica.metrics).await;
    cstor_mgmt::exposition::find(
        &samples,
        &format!("cstor_replica_rebuild_digest_{what}_total"),
        &[("pool", pool), ("result", result)],
    )
    .expect("the digest counters are exported") as u64
}

#[tokio::test]
async fn a_sink_that_holds_most_of_the_data_pulls_only_the_ranges_that_differ() {
    let pki = Pki::new();
    let (source, sink, _owner) = pair(&pki).await;
    let src = source.pool.volume("v").unwrap();
    let dst = sink.pool.volume("v").unwrap();
    let blocks = VOLUME_BYTES / BLOCK;
    let range_blocks = REBUILD_DIGEST_RANGE_BYTES / BLOCK;
    let ranges = VOLUME_BYTES / REBUILD_DIGEST_RANGE_BYTES;
    // Both hold the whole volume, written alike (the sink through another
    // history: other io_seqs).
    fill(&src, 0..blocks, 1, 10).await;
    fill(&dst, 0..blocks, 1, 77).await;
    // Range 2: the source took a write the sink missed.
    let missed = 2 * range_blocks + 5;
    src.write(missed * BLOCK, &block(3, missed), 40)
        .await
        .unwrap();
    // Range 5: the sink holds a write the source never got (it never
    // completed); the source's content wins.
    let own = 5 * range_blocks + 17;
    dst.write(own * BLOCK, &block(7, own), 90).await.unwrap();
    // Range 9: the source trimmed a block the sink still holds.
    let trimmed = 9 * range_blocks + 1;
    src.unmap(trimmed * BLOCK, BLOCK, 41).await.unwrap();
    // Range 12: both differ from each other next to a live write of the
    // rebuild, which the source does not have yet (in flight to it) and
    // which the pulled range must not overwrite.
    let live_lba = 12 * range_blocks + 8;
    src.write((live_lba + 1) * BLOCK, &block(4, live_lba + 1), 6000)
        .await
        .unwrap();
    src.flush().await.unwrap();
    dst.flush().await.unwrap();

    let live = Bytes::from(block(2, live_lba));
    let progress = rebuild(&sink, &source, &pki, Some((live_lba, live.clone()))).await;

    // Only the four ranges that differ were pulled.
    assert_eq!(digests(&sink, "sink", "ranges", "differ").await, 4);
    assert_eq!(digests(&sink, "sink", "ranges", "equal").await, ranges - 4);
    let pulled = digests(&sink, "sink", "bytes", "differ").await;
    assert_eq!(pulled, 4 * REBUILD_DIGEST_RANGE_BYTES);
    assert_eq!(
        digests(&sink, "sink", "bytes", "equal").await,
        VOLUME_BYTES - pulled
    );
    // Progress counts compared bytes as done: every byte, and the
    // anchor's block.
    let last = progress.last().expect("no progress reported");
    assert_eq!(last.done_bytes, last.total_bytes);
    assert_eq!(last.total_bytes, VOLUME_BYTES + BLOCK);
    eprintln!(
        "by digest: {} bytes pulled (and a {BLOCK}-byte anchor) of {VOLUME_BYTES}",
        pulled
    );

    let mut want = vec![0u8; BLOCK as usize];
    let mut got = vec![0u8; BLOCK as usize];
    for lba in 0..blocks {
        src.read(lba * BLOCK, &mut want).await.unwrap();
        dst.read(lba * BLOCK, &mut got).await.unwrap();
        if lba == live_lba {
            assert_eq!(&got[..], &live[..], "the live write was overwritten");
        } else {
            assert!(got == want, "block {lba} differs from the source");
        }
    }
    assert_eq!(&got[..], &want[..]);
    dst.read(own * BLOCK, &mut got).await.unwrap();
    assert_eq!(got, block(1, own), "the sink's own write stayed");
    dst.read(trimmed * BLOCK, &mut got).await.unwrap();
    assert!(got.iter().all(|b| *b == 0), "the trimmed block stayed");
    // Healthy, complete through the one live write.
    let (_, state, durable) = session(sink.data, &pki, 0).await;
    assert_eq!(state, ReplicaState::Healthy);
    assert_eq!(durable, 5000);

    // The ranges found equal kept the sink's own io_seqs, which in another
    // history could be older than the writes that made that content on
    // the source: it now reads its chunks as last written at least at the
    // run's through_io_seq, its floor. As a source of a delta rebuild from below
    // the floor it streams the whole volume, each piece stamped so.
    let floor = io_seq_floor(&dst.attrs().unwrap());
    assert!(floor >= 6000, "io_seq floor {floor}");
    make_replicated(&sink.pool, "v").await;
    let (_owner, _, _) = session(sink.data, &pki, 2).await;
    let mut probe = support::session(sink.data, &pki.security(&replica_of("peer")), "v", 0).await;
    let delta = Message::RebuildStart(RebuildStart {
        peer_address: "127.0.0.1:1".into(),
        volume: Name::new("v").unwrap(),
        from_io_seq: 100,
        source: RebuildSource::Live,
    });
    probe.send(packet(0, 1, delta)).await.unwrap();
    let mut streamed = 0u64;
    loop {
        match support::next(&mut probe).await.map(|p| p.message) {
            Some(Message::Ack(Opcode::RebuildStart)) => {}
            Some(Message::RebuildProgress(p)) => assert_eq!(p.total_bytes, VOLUME_BYTES),
            Some(Message::RebuildChunk(chunk)) => {
                streamed += chunk.data.len() as u64;
                assert!(chunk.block_io_seqs.iter().all(|s| *s >= floor), "{chunk:?}");
            }
            Some(Message::RebuildDone(_)) => break,
            other => panic!("stream: {other:?}"),
        }
    }
    assert_eq!(streamed, VOLUME_BYTES);
}

#[tokio::test]
async fn an_empty_sink_takes_the_whole_live_stream_without_digests() {
    let pki = Pki::new();
    let (source, sink, _owner) = pair(&pki).await;
    let src = source.pool.volume("v").unwrap();
    let dst = sink.pool.volume("v").unwrap();
    let blocks = VOLUME_BYTES / BLOCK;
    fill(&src, 0..blocks, 1, 10).await;
    src.flush().await.unwrap();

    let progress = rebuild(&sink, &source, &pki, None).await;

    for result in ["equal", "differ"] {
        assert_eq!(digests(&sink, "sink", "ranges", result).await, 0);
    }
    let last = progress.last().expect("no progress reported");
    assert_eq!(last.done_bytes, last.total_bytes);
    // The live stream carried every written chunk: the whole volume.
    assert_eq!(last.total_bytes, VOLUME_BYTES);
    eprintln!("live stream: {} bytes pulled", last.done_bytes);
    let mut want = vec![0u8; BLOCK as usize];
    let mut got = vec![0u8; BLOCK as usize];
    for lba in 0..blocks {
        src.read(lba * BLOCK, &mut want).await.unwrap();
        dst.read(lba * BLOCK, &mut got).await.unwrap();
        assert!(got == want, "block {lba} differs from the source");
    }
}

#[tokio::test]
async fn by_digest_a_rotten_block_of_the_sink_is_pulled_and_one_of_the_source_aborts() {
    let pki = Pki::new();
    let (source, sink, _owner) = pair(&pki).await;
    let src = source.pool.volume("v").unwrap();
    let dst = sink.pool.volume("v").unwrap();
    let blocks = VOLUME_BYTES / BLOCK;
    let range_blocks = REBUILD_DIGEST_RANGE_BYTES / BLOCK;
    let ranges = VOLUME_BYTES / REBUILD_DIGEST_RANGE_BYTES;
    fill(&src, 0..blocks, 1, 10).await;
    fill(&dst, 0..blocks, 1, 10).await;
    src.flush().await.unwrap();
    dst.flush().await.unwrap();
    // A block of the sink rots: its digest names it bad, and the range is
    // pulled although the content digests would otherwise say nothing.
    let rotten = 3 * range_blocks + 2;
    rot(&sink.image(), &block(1, rotten));
    let mut got = vec![0u8; BLOCK as usize];
    assert!(dst.read(rotten * BLOCK, &mut got).await.is_err());
    rebuild(&sink, &source, &pki, None).await;
    assert_eq!(digests(&sink, "sink", "ranges", "differ").await, 1);
    assert_eq!(digests(&sink, "sink", "ranges", "equal").await, ranges - 1);
    dst.read(rotten * BLOCK, &mut got).await.unwrap();
    assert_eq!(got, block(1, rotten), "the rotten block was not pulled");

    // A block of the source rots: it is not copied; the rebuild aborts
    // and says why.
    let rotten = 7 * range_blocks;
    rot(&source.image(), &block(1, rotten));
    let abort = try_rebuild(&sink, &source, &pki, 2, None)
        .await
        .expect_err("a rebuild from a rotten source");
    assert_eq!(abort.status, Status::IoError, "{abort:?}");
    assert!(abort.detail.contains("fail their checksum"), "{abort:?}");
    assert!(
        abort
            .detail
            .contains(&format!("{}+{BLOCK}", rotten * BLOCK)),
        "{abort:?}"
    );
    dst.read(rotten * BLOCK, &mut got).await.unwrap();
    assert_eq!(got, block(1, rotten), "the sink's good copy was kept");
}
