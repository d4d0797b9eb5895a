//! Rebuild support of the pool, end to end inside one process: a property
//! test replays random histories on a *source* and a *sink* volume (two
//! pools), lets the sink miss a stretch of them (writes, snapshots,
//! snapshot deletes), then rebuilds it the way the replica's rebuild sink
//! does (snapshots oldest first into inserted layers, then the live delta)
//! while live writes keep landing on both. The source is the oracle: live
//! volume, snapshot list and every snapshot's content must match, before
//! and after the sink's pool is reopened. Also the completion watermark
//! (`set_complete_io_seq`) that the durable io_seq follows.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use cstor_engine::io::MemDevice;
use cstor_engine::{DeviceRef, Pool, PoolOptions, Provisioning, Volume};
use proptest::prelude::*;

const CHUNK: u32 = 8192;
const BLOCK: u32 = 512;
const SIZE: u64 = 8 * CHUNK as u64;
const BLOCKS: u64 = SIZE / BLOCK as u64;

fn opts() -> PoolOptions {
    PoolOptions {
        chunk_bytes: CHUNK,
        commit_interval: None,
        ..PoolOptions::default()
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Write `len` blocks from block `at` (clipped to the volume).
    Write { at: u64, len: u64, seed: u8 },
    /// Unmap whole chunk `chunk`.
    Unmap { chunk: u64 },
    /// Take a snapshot.
    Snapshot,
    /// Delete the oldest snapshot.
    DeleteOldest,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..BLOCKS, 1..40u64, any::<u8>()).prop_map(|(at, len, seed)| Op::Write { at, len, seed }),
        1 => (0..SIZE / u64::from(CHUNK)).prop_map(|chunk| Op::Unmap { chunk }),
        2 => Just(Op::Snapshot),
        1 => Just(Op::DeleteOldest),
    ]
}

fn live_write() -> impl Strategy<Value = (u64, u64, u8)> {
    (0..BLOCKS, 1..20u64, any::<u8>())
}

struct Replica {
    mem: Arc<MemDevice>,
    pool: Pool,
    vol: Arc<Volume>,
}

async fn replica() -> Replica {
    let mem = Arc::new(MemDevice::new(4 << 20));
    let dev: DeviceRef = mem.clone();
    let pool = Pool::create(vec![dev], &opts()).await.unwrap();
    let vol = pool
        .create_volume("v", SIZE, BLOCK, Provisioning::Thin)
        .await
        .unwrap();
    Replica { mem, pool, vol }
}

/// Applies one op as io_seq `io_seq`; snapshots are named by io_seq.
async fn apply(v: &Volume, op: &Op, io_seq: u64) {
    match op {
        Op::Write { at, len, seed } => {
            let len = (*len).min(BLOCKS - at);
            let data: Vec<u8> = (0..len * u64::from(BLOCK))
                .map(|i| seed.wrapping_add((i / 97) as u8) ^ io_seq as u8)
                .collect();
            v.write(at * u64::from(BLOCK), &data, io_seq).await.unwrap();
        }
        Op::Unmap { chunk } => {
            v.unmap(chunk * u64::from(CHUNK), u64::from(CHUNK), io_seq)
                .await
                .unwrap();
        }
        Op::Snapshot => v.create_snapshot(&format!("s{io_seq}")).await.unwrap(),
        Op::DeleteOldest => {
            if let Some(s) = v.list_snapshots().unwrap().first() {
                v.delete_snapshot(&s.name).await.unwrap();
            }
        }
    }
}

/// What the source streams: (offset, data, per-block io_seqs) of every
/// chunk of `snapshot` (or the live volume) last written after `since`.
async fn stream(src: &Volume, snapshot: Option<&str>, since: u64) -> Vec<(u64, Vec<u8>, Vec<u64>)> {
    let mut out = Vec::new();
    let mut next = Some(0);
    while let Some(from) = next {
        let page = src.changed_chunks(snapshot, since, from).unwrap();
        for c in page.changes {
            let mut data = vec![0u8; c.len_bytes as usize];
            match snapshot {
                Some(s) => src
                    .read_snapshot(s, c.offset_bytes, &mut data)
                    .await
                    .unwrap(),
                None => src.read(c.offset_bytes, &mut data).await.unwrap(),
            }
            let seqs = vec![c.io_seq; (c.len_bytes / u64::from(BLOCK)) as usize];
            out.push((c.offset_bytes, data, seqs));
        }
        next = page.next_offset;
    }
    out
}

/// Rebuilds `sink` from `src` (the replica's sink algorithm), applying one
/// of `during` to both after every step; returns the next io_seq.
async fn rebuild(
    src: &Volume,
    sink: &Volume,
    durable: u64,
    during: &[(u64, u64, u8)],
    mut io_seq: u64,
) -> u64 {
    let mut during = during.iter();
    let mut live_write = |io_seq: &mut u64| {
        let w = during.next().copied();
        let seq = *io_seq;
        if w.is_some() {
            *io_seq += 1;
        }
        async move {
            if let Some((at, len, seed)) = w {
                let op = Op::Write { at, len, seed };
                apply(src, &op, seq).await;
                apply(sink, &op, seq).await;
            }
        }
    };
    sink.begin_rebuild().unwrap();
    live_write(&mut io_seq).await;
    let wanted = src.list_snapshots().unwrap();
    for s in sink.list_snapshots().unwrap() {
        if !wanted.iter().any(|w| w.name == s.name) {
            sink.delete_snapshot(&s.name).await.unwrap();
        }
    }
    for s in &wanted {
        let have = sink.list_snapshots().unwrap();
        if have.iter().any(|h| h.name == s.name) {
            continue;
        }
        let base = have
            .iter()
            .filter(|h| h.io_seq <= s.io_seq)
            .map(|h| h.io_seq)
            .max()
            .unwrap_or(0);
        sink.insert_rebuilt_snapshot(&s.name, s.io_seq, s.size_bytes)
            .await
            .unwrap();
        for (offset, data, seqs) in stream(src, Some(&s.name), base).await {
            sink.apply_rebuild_snapshot(&s.name, offset, &data, &seqs)
                .await
                .unwrap();
            live_write(&mut io_seq).await;
        }
    }
    for (offset, data, seqs) in stream(src, None, durable).await {
        live_write(&mut io_seq).await;
        sink.apply_rebuild(offset, &data, &seqs).await.unwrap();
    }
    sink.end_rebuild();
    io_seq
}

async fn read_all(v: &Volume, snapshot: Option<&str>) -> Vec<u8> {
    let mut b = vec![0xEE; SIZE as usize];
    match snapshot {
        Some(s) => v.read_snapshot(s, 0, &mut b).await.unwrap(),
        None => v.read(0, &mut b).await.unwrap(),
    }
    b
}

async fn assert_same(src: &Volume, sink: &Volume) {
    let names = |v: &Volume| -> Vec<(String, u64)> {
        v.list_snapshots()
            .unwrap()
            .into_iter()
            .map(|s| (s.name, s.io_seq))
            .collect()
    };
    assert_eq!(names(sink), names(src), "snapshot lists");
    assert!(
        read_all(sink, None).await == read_all(src, None).await,
        "live volumes differ"
    );
    for s in src.list_snapshots().unwrap() {
        assert!(
            read_all(sink, Some(&s.name)).await == read_all(src, Some(&s.name)).await,
            "snapshot {} differs",
            s.name
        );
    }
}

async fn scenario(shared: Vec<Op>, away: Vec<Op>, during: Vec<(u64, u64, u8)>) {
    let src = replica().await;
    let sink = replica().await;
    let mut io_seq = 1;
    for op in &shared {
        apply(&src.vol, op, io_seq).await;
        apply(&sink.vol, op, io_seq).await;
        io_seq += 1;
    }
    sink.vol.flush().await.unwrap();
    let durable = sink.vol.last_durable_io_seq().unwrap();
    for op in &away {
        apply(&src.vol, op, io_seq).await;
        io_seq += 1;
    }
    rebuild(&src.vol, &sink.vol, durable, &during, io_seq).await;
    assert_same(&src.vol, &sink.vol).await;
    // Durable as it is: reopen the sink's pool from its image.
    sink.vol.flush().await.unwrap();
    drop(sink.vol);
    drop(sink.pool);
    let dev: DeviceRef = Arc::new(MemDevice::from_image(sink.mem.image(), 4096).unwrap());
    let pool = Pool::open(vec![dev], &opts()).await.unwrap();
    let reopened = pool.volume("v").unwrap();
    assert_same(&src.vol, &reopened).await;
    let a = pool.audit();
    assert!(
        a.problems.is_empty()
            && a.used_not_owned.is_empty()
            && a.owned_twice.is_empty()
            && a.owned_but_free.is_empty(),
        "metadata audit after rebuild: {a:?}"
    );
    drop(src.pool);
}

fn run(f: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Invariant 6 with snapshots: after a delta (or, with nothing shared,
    /// full) rebuild during live writes, the sink's live volume, snapshot
    /// list and snapshot contents are the source's.
    #[test]
    fn a_rebuilt_sink_matches_the_source_with_its_snapshots(
        shared in prop::collection::vec(op(), 0..12),
        away in prop::collection::vec(op(), 0..16),
        during in prop::collection::vec(live_write(), 0..10),
    ) {
        run(scenario(shared, away, during));
    }
}

#[test]
fn a_full_rebuild_recreates_every_snapshot_of_the_source() {
    let away = vec![
        Op::Write {
            at: 0,
            len: 40,
            seed: 1,
        },
        Op::Snapshot,
        Op::Write {
            at: 20,
            len: 30,
            seed: 2,
        },
        Op::Unmap { chunk: 0 },
        Op::Snapshot,
        Op::Write {
            at: 100,
            len: 4,
            seed: 3,
        },
    ];
    run(scenario(
        Vec::new(),
        away,
        vec![(0, 3, 9), (21, 2, 8), (101, 1, 7)],
    ));
}

#[test]
fn a_snapshot_missed_between_two_kept_ones_is_inserted_in_its_place() {
    run(async {
        let src = replica().await;
        let sink = replica().await;
        for (v, with_middle) in [(&src.vol, true), (&sink.vol, false)] {
            apply(
                v,
                &Op::Write {
                    at: 0,
                    len: 32,
                    seed: 1,
                },
                1,
            )
            .await;
            apply(v, &Op::Snapshot, 2).await;
            apply(
                v,
                &Op::Write {
                    at: 16,
                    len: 32,
                    seed: 2,
                },
                3,
            )
            .await;
            if with_middle {
                apply(v, &Op::Snapshot, 4).await;
            }
            apply(
                v,
                &Op::Write {
                    at: 40,
                    len: 32,
                    seed: 3,
                },
                5,
            )
            .await;
            apply(v, &Op::Snapshot, 6).await;
        }
        rebuild(&src.vol, &sink.vol, 6, &[(0, 1, 1)], 7).await;
        assert_same(&src.vol, &sink.vol).await;
    });
}

#[test]
fn the_durable_io_seq_follows_the_declared_watermark_not_the_highest_write() {
    run(async {
        let r = replica().await;
        // Legacy: the highest write.
        r.vol.write(0, &[1; 512], 3).await.unwrap();
        r.vol.flush().await.unwrap();
        assert_eq!(r.vol.last_durable_io_seq().unwrap(), 3);
        // Watermarked: write 5 completed while 4 is still running.
        r.vol.set_complete_io_seq(3).unwrap();
        r.vol.write(512, &[2; 512], 5).await.unwrap();
        r.vol.flush().await.unwrap();
        assert_eq!(r.vol.last_durable_io_seq().unwrap(), 3);
        r.vol.create_snapshot("s").await.unwrap();
        assert_eq!(
            r.vol.list_snapshots().unwrap()[0].io_seq,
            5,
            "a snapshot takes the highest write"
        );
        r.vol.write(1024, &[3; 512], 4).await.unwrap();
        r.vol.set_complete_io_seq(5).unwrap();
        r.vol.flush().await.unwrap();
        assert_eq!(r.vol.last_durable_io_seq().unwrap(), 5);
        // It may go down (an owner runs again a write it had completed,
        // which may put older data back until it is done): recorded, and
        // what a reopened pool reports.
        r.vol.set_complete_io_seq(2).unwrap();
        r.vol.flush().await.unwrap();
        assert_eq!(r.vol.last_durable_io_seq().unwrap(), 2);
        drop(r.vol);
        drop(r.pool);
        let dev: DeviceRef = Arc::new(MemDevice::from_image(r.mem.image(), 4096).unwrap());
        let pool = Pool::open(vec![dev], &opts()).await.unwrap();
        assert_eq!(pool.volume("v").unwrap().last_durable_io_seq().unwrap(), 2);
    });
}
