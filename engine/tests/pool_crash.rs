//! Crash consistency (docs/architecture.md, invariant 7): random workloads
//! run on a `CrashDevice` whose power is cut after the K-th device
//! operation, for every K; the image a power cut could leave (unsynced
//! writes dropped or kept at random, the last one torn) must reopen with
//! every write made durable by a flush intact, later writes either old or
//! new, snapshots exact, and space accounting exact (no chunk leaked or
//! owned twice). Each chunk's io_seq (what a rebuild compares) must come
//! back at least as the pool held it at the last flush — an overwrite's
//! coalesced record lost by a commit fails here — and must never claim a
//! write whose data did not survive (FORMAT.md "Coalesced overwrites").
//! `CSTOR_CRASH_WORKLOADS` raises the number of workloads.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;

use cstor_engine::io::{CrashDevice, CrashPolicy, MemDevice};
use cstor_engine::{DeviceRef, Pool, PoolOptions, Provisioning};

const BLOCK: usize = 512;
const CHUNK: u32 = 4096;
const DEV_BYTES: usize = 2 << 20;
const VOL_BLOCKS: usize = 96;
const BLOCKS_PER_CHUNK: usize = CHUNK as usize / BLOCK;
const VOL_CHUNKS: usize = VOL_BLOCKS / BLOCKS_PER_CHUNK;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Debug, Clone)]
enum Op {
    Write {
        vol: usize,
        block: usize,
        blocks: usize,
        seed: u8,
    },
    Unmap {
        vol: usize,
        block: usize,
        blocks: usize,
    },
    Flush,
    Snapshot {
        vol: usize,
    },
    DeleteSnapshot {
        vol: usize,
    },
    Clone {
        vol: usize,
    },
    /// A snapshot rebuilt the way a replica's rebuild makes one: inserted
    /// under the live layer (`insert_rebuilt_snapshot`), filled with the
    /// volume's content (`apply_rebuild_snapshot`), flushed.
    RebuiltSnapshot {
        vol: usize,
    },
}

fn workload(seed: u64, len: usize) -> Vec<Op> {
    let mut r = Rng(seed);
    (0..len)
        .map(|_| {
            let vol = r.below(3) as usize;
            match r.below(21) {
                0..=9 => Op::Write {
                    vol,
                    block: r.below(VOL_BLOCKS as u64) as usize,
                    blocks: 1 + r.below(20) as usize,
                    seed: r.below(250) as u8 + 1,
                },
                10..=12 => Op::Unmap {
                    vol,
                    block: r.below(VOL_BLOCKS as u64) as usize,
                    blocks: 1 + r.below(24) as usize,
                },
                13..=15 => Op::Flush,
                16 => Op::Snapshot { vol },
                17 => Op::DeleteSnapshot { vol },
                18 | 19 => Op::Clone { vol },
                // Rarer: each writes the whole volume (many crash points).
                _ if r.below(3) == 0 => Op::RebuiltSnapshot { vol },
                _ => Op::Flush,
            }
        })
        .collect()
}

/// Per block, every value it may hold after a crash with the io_seq of
/// the op that wrote it: the durable one first, then those of writes not
/// yet covered by a successful flush. Per chunk, its io_seq as the pool
/// held it at the last successful flush, and the volume's durable io_seq
/// then.
#[derive(Clone, Default)]
struct Vol {
    blocks: Vec<Vec<(u64, Vec<u8>)>>,
    snaps: Vec<(String, Vec<u8>)>,
    chunk_seqs: Vec<u64>,
    durable_seq: u64,
}

impl Vol {
    fn new() -> Self {
        Self {
            blocks: vec![vec![(0, vec![0; BLOCK])]; VOL_BLOCKS],
            snaps: Vec::new(),
            chunk_seqs: vec![0; VOL_CHUNKS],
            durable_seq: 0,
        }
    }
    fn current(&self) -> Vec<u8> {
        self.blocks
            .iter()
            .flat_map(|c| c.last().unwrap().1.clone())
            .collect()
    }
    fn settle(&mut self) {
        for c in &mut self.blocks {
            let last = c.pop().unwrap();
            *c = vec![last];
        }
    }
}

struct Model {
    vols: BTreeMap<String, Vol>,
    /// Names touched by a structural op that failed: existence unknown.
    uncertain: Vec<String>,
}

impl Model {
    fn settle(&mut self) {
        for v in self.vols.values_mut() {
            v.settle();
        }
    }

    /// After a successful flush: what the pool holds is durable, io_seqs
    /// included.
    fn note_durable_seqs(&mut self, pool: &Pool) {
        for (name, mv) in &mut self.vols {
            let v = pool.volume(name).unwrap();
            for (c, s) in mv.chunk_seqs.iter_mut().enumerate() {
                *s = v.live_chunk_io_seq((c * CHUNK as usize) as u64).unwrap();
            }
            mv.durable_seq = v.last_durable_io_seq().unwrap();
        }
    }
}

fn opts() -> PoolOptions {
    PoolOptions {
        chunk_bytes: CHUNK,
        commit_interval: None,
        journal_bytes: Some(64 * 1024),
        ..PoolOptions::default()
    }
}

fn fill(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i / BLOCK) as u8 * 7))
        .collect()
}

/// Runs `ops` until the first error; returns what must survive.
async fn run(pool: &Pool, ops: &[Op]) -> Model {
    let mut m = Model {
        vols: BTreeMap::new(),
        uncertain: Vec::new(),
    };
    let mut next = 0u32;
    let mut seq = 0u64;
    for name in ["v0", "v1", "v2"] {
        match pool
            .create_volume(
                name,
                (VOL_BLOCKS * BLOCK) as u64,
                BLOCK as u32,
                Provisioning::Thin,
            )
            .await
        {
            Ok(_) => {
                m.vols.insert(name.into(), Vol::new());
            }
            Err(_) => {
                m.uncertain.push(name.into());
                return m;
            }
        }
    }
    for op in ops {
        seq += 1;
        let names: Vec<String> = m.vols.keys().cloned().collect();
        let pick = |i: usize| names[i % names.len()].clone();
        match op {
            Op::Write {
                vol,
                block,
                blocks,
                seed,
            } => {
                let name = pick(*vol);
                let n = (*blocks).min(VOL_BLOCKS - block);
                let data = fill(*seed, n * BLOCK);
                let v = pool.volume(&name).unwrap();
                let res = v.write((block * BLOCK) as u64, &data, seq).await;
                let mv = m.vols.get_mut(&name).unwrap();
                for i in 0..n {
                    mv.blocks[block + i].push((seq, data[i * BLOCK..(i + 1) * BLOCK].to_vec()));
                }
                if res.is_err() {
                    return m;
                }
            }
            Op::Unmap { vol, block, blocks } => {
                let name = pick(*vol);
                let n = (*blocks).min(VOL_BLOCKS - block);
                let v = pool.volume(&name).unwrap();
                let res = v
                    .unmap((block * BLOCK) as u64, (n * BLOCK) as u64, seq)
                    .await;
                let mv = m.vols.get_mut(&name).unwrap();
                for i in 0..n {
                    mv.blocks[block + i].push((seq, vec![0; BLOCK]));
                }
                if res.is_err() {
                    return m;
                }
            }
            Op::Flush => {
                if pool.flush().await.is_err() {
                    return m;
                }
                m.settle();
                m.note_durable_seqs(pool);
            }
            Op::Snapshot { vol } => {
                let name = pick(*vol);
                next += 1;
                let s = format!("s{next}");
                if pool
                    .volume(&name)
                    .unwrap()
                    .create_snapshot(&s)
                    .await
                    .is_err()
                {
                    m.uncertain.push(name);
                    return m;
                }
                m.settle();
                m.note_durable_seqs(pool);
                let mv = m.vols.get_mut(&name).unwrap();
                let cur = mv.current();
                mv.snaps.push((s, cur));
            }
            Op::DeleteSnapshot { vol } => {
                let name = pick(*vol);
                let Some((s, _)) = m.vols[&name].snaps.first().cloned() else {
                    continue;
                };
                if pool
                    .volume(&name)
                    .unwrap()
                    .delete_snapshot(&s)
                    .await
                    .is_err()
                {
                    m.uncertain.push(name);
                    return m;
                }
                m.settle();
                m.note_durable_seqs(pool);
                m.vols.get_mut(&name).unwrap().snaps.remove(0);
            }
            Op::Clone { vol } => {
                let name = pick(*vol);
                let Some((s, data)) = m.vols[&name].snaps.last().cloned() else {
                    continue;
                };
                next += 1;
                let c = format!("c{next}");
                if pool
                    .volume(&name)
                    .unwrap()
                    .clone_snapshot(&s, &c)
                    .await
                    .is_err()
                {
                    m.uncertain.push(c);
                    return m;
                }
                m.settle();
                let mut v = Vol::new();
                for (i, b) in v.blocks.iter_mut().enumerate() {
                    *b = vec![(0, data[i * BLOCK..(i + 1) * BLOCK].to_vec())];
                }
                m.vols.insert(c, v);
                m.note_durable_seqs(pool);
            }
            Op::RebuiltSnapshot { vol } => {
                let name = pick(*vol);
                next += 1;
                let s = format!("r{next}");
                let v = pool.volume(&name).unwrap();
                if v.insert_rebuilt_snapshot(&s, seq, (VOL_BLOCKS * BLOCK) as u64)
                    .await
                    .is_err()
                {
                    m.uncertain.push(name);
                    return m;
                }
                m.settle();
                m.note_durable_seqs(pool);
                // Until the flush after the fill the snapshot is incomplete
                // (a rebuild deletes and redoes it): only the volume, whose
                // content the fill must not change, is checked meanwhile.
                let cur = m.vols[&name].current();
                let seqs = vec![seq; VOL_BLOCKS];
                if v.apply_rebuild_snapshot(&s, 0, &cur, &seqs).await.is_err()
                    || pool.flush().await.is_err()
                {
                    return m;
                }
                m.settle();
                m.note_durable_seqs(pool);
                m.vols.get_mut(&name).unwrap().snaps.push((s, cur));
            }
        }
    }
    m
}

/// Reopens the crash `images` and checks the pool against the model;
/// returns how many checksums the reopen recomputed.
async fn verify(images: Vec<Vec<u8>>, m: &Model, what: &str) -> u64 {
    let devs: Vec<DeviceRef> = images
        .into_iter()
        .map(|i| -> DeviceRef { Arc::new(MemDevice::from_image(i, 4096).unwrap()) })
        .collect();
    let pool = Pool::open(devs, &opts())
        .await
        .unwrap_or_else(|e| panic!("{what}: reopen failed: {e}"));
    let recomputed = pool.stats().integrity.recomputed_blocks;
    assert!(pool.stats().integrity.enabled);
    let a = pool.audit();
    assert!(
        a.owned_twice.is_empty()
            && a.owned_but_free.is_empty()
            && a.used_not_owned.is_empty()
            && a.problems.is_empty(),
        "{what}: accounting {a:?}"
    );
    assert_eq!(
        pool.stats().used_bytes,
        a.owned * u64::from(CHUNK),
        "{what}: used space"
    );
    for (name, mv) in &m.vols {
        let v = match pool.volume(name) {
            Ok(v) => v,
            Err(e) if m.uncertain.contains(name) => {
                let _ = e;
                continue;
            }
            Err(e) => panic!("{what}: volume {name} lost: {e}"),
        };
        let mut got = vec![0; VOL_BLOCKS * BLOCK];
        // No false alarm: every block written before the cut, flushed or
        // not, whole or torn, passes its checksum.
        v.read(0, &mut got)
            .await
            .unwrap_or_else(|e| panic!("{what}: volume {name}: {e} {:?}", e.bad_ranges()));
        let digest = v.digest(0, (VOL_BLOCKS * BLOCK) as u64).await.unwrap();
        assert!(
            digest.bad.is_empty(),
            "{what}: volume {name}: {:?} fail",
            digest.bad
        );
        for (i, cands) in mv.blocks.iter().enumerate() {
            let b = &got[i * BLOCK..(i + 1) * BLOCK];
            assert!(
                cands.iter().any(|(_, c)| c == b),
                "{what}: volume {name} block {i} holds neither its durable value nor a later write"
            );
        }
        let durable_seq = v.last_durable_io_seq().unwrap();
        assert!(
            durable_seq >= mv.durable_seq,
            "{what}: volume {name}: durable io_seq {durable_seq}, {} at the last flush",
            mv.durable_seq
        );
        for (c, flushed) in mv.chunk_seqs.iter().enumerate() {
            let seq = v.live_chunk_io_seq((c * CHUNK as usize) as u64).unwrap();
            assert!(
                seq >= *flushed,
                "{what}: volume {name} chunk {c}: io_seq {seq}, {flushed} at the last flush \
                 (an overwrite's record lost)"
            );
            // The io_seq claims every write into the chunk up to it: each
            // block holds the last such write's value, or a later one.
            for i in c * BLOCKS_PER_CHUNK..(c + 1) * BLOCKS_PER_CHUNK {
                let cands = &mv.blocks[i];
                let claimed = cands.iter().rposition(|(s, _)| *s <= seq).unwrap_or(0);
                let b = &got[i * BLOCK..(i + 1) * BLOCK];
                assert!(
                    cands[claimed..].iter().any(|(_, d)| d == b),
                    "{what}: volume {name} chunk {c} claims io_seq {seq} but block {i} \
                     lacks the write it claims"
                );
            }
        }
        for (s, want) in &mv.snaps {
            let mut got = vec![0; want.len()];
            match v.read_snapshot(s, 0, &mut got).await {
                Ok(()) => assert!(&got == want, "{what}: snapshot {s} of {name} differs"),
                Err(e) => assert!(m.uncertain.contains(name), "{what}: snapshot {s} lost: {e}"),
            }
        }
    }
    assert_eq!(
        pool.stats().integrity.checksum_errors,
        0,
        "{what}: checksum errors"
    );
    // The recovered pool is usable: write, flush, reopen.
    let name = m.vols.keys().next().cloned();
    if let Some(name) = name {
        if let Ok(v) = pool.volume(&name) {
            v.write(0, &[7; BLOCK], u64::MAX / 2).await.unwrap();
            v.flush().await.unwrap();
        }
    }
    recomputed
}

/// Cuts the power of device 0 after each operation of the reopen of the
/// crash `images` in turn (a power cut during recovery), then checks that
/// the next reopen still recovers: the dirty regions stay dirty until
/// their recomputed checksums are durable.
async fn crash_during_recovery(images: &[Vec<u8>], m: &Model, what: &str) -> usize {
    let build = || -> Vec<Arc<CrashDevice>> {
        images
            .iter()
            .map(|i| Arc::new(CrashDevice::from_image(i.clone(), 4096).unwrap()))
            .collect()
    };
    let refs = |devs: &[Arc<CrashDevice>]| -> Vec<DeviceRef> {
        devs.iter().map(|d| Arc::clone(d) as DeviceRef).collect()
    };
    let dry = build();
    drop(Pool::open(refs(&dry), &opts()).await.unwrap());
    let total = dry[0].op_count();
    for k in 0..total {
        let devs = build();
        devs[0].cut_power_after(k);
        let _ = Pool::open(refs(&devs), &opts()).await;
        let after = devs
            .iter()
            .map(|d| d.crash_image(CrashPolicy::torn(k)))
            .collect();
        verify(
            after,
            m,
            &format!("{what}, reopen cut after op {k}/{total}"),
        )
        .await;
    }
    total as usize
}

/// Device sizes of a one-device pool and of a two-device pool whose first
/// device fills up early, so data lands on both and a commit must sync both.
const ONE_DEVICE: &[usize] = &[DEV_BYTES];
const TWO_DEVICES: &[usize] = &[780 * 1024, DEV_BYTES];

async fn create(sizes: &[usize]) -> (Vec<Arc<CrashDevice>>, Pool) {
    let devs: Vec<Arc<CrashDevice>> = sizes
        .iter()
        .map(|s| Arc::new(CrashDevice::new(*s)))
        .collect();
    let refs: Vec<DeviceRef> = devs.iter().map(|d| Arc::clone(d) as DeviceRef).collect();
    let pool = Pool::create(refs, &opts()).await.unwrap();
    (devs, pool)
}

/// Cuts the power of device `victim` after each of its operations in turn
/// (the other devices keep running until the pool is poisoned, then lose
/// whatever they had not synced too).
async fn crash_every_point(seed: u64, len: usize, sizes: &[usize], victim: usize) -> usize {
    let ops = workload(seed, len);
    // A dry run counts the device operations of the whole workload.
    let (dry, pool) = create(sizes).await;
    let create_ops = dry[victim].op_count();
    run(&pool, &ops).await;
    let total = dry[victim].op_count();
    let mut points = 0;
    let (mut recovered, mut recovery_points) = (0u64, 0usize);
    for k in create_ops..=total {
        let (devs, pool) = create(sizes).await;
        devs[victim].cut_power_after(k);
        let m = run(&pool, &ops).await;
        drop(pool);
        for policy in [
            CrashPolicy::torn(seed ^ k),
            CrashPolicy::whole(seed.wrapping_mul(31) ^ k),
        ] {
            let what = format!(
                "workload {seed} on {} devices, device {victim} cut after op {k}/{total} ({policy:?})",
                sizes.len()
            );
            let images: Vec<Vec<u8>> = devs.iter().map(|d| d.crash_image(policy)).collect();
            let recomputed = verify(images.clone(), &m, &what).await;
            // Once a workload (each is slow), crash the recovery too.
            if recomputed > 0 && recovery_points == 0 {
                recovery_points += crash_during_recovery(&images, &m, &what).await;
            }
            recovered += u64::from(recomputed > 0);
        }
        points += 1;
    }
    assert!(
        recovered > 0,
        "workload {seed}: no crash point left a dirty region to recompute"
    );
    eprintln!("workload {seed}: {recovery_points} crash points inside recoveries");
    points
}

fn workloads() -> u64 {
    std::env::var("CSTOR_CRASH_WORKLOADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16)
}

#[test]
fn every_crash_point_of_random_workloads_recovers_flushed_data() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        assert!(
            (0..workloads()).any(|s| workload(s, 40)
                .iter()
                .any(|o| matches!(o, Op::RebuiltSnapshot { .. }))),
            "no workload rebuilds a snapshot"
        );
        let mut points = 0;
        for seed in 0..workloads() {
            points += crash_every_point(seed, 40, ONE_DEVICE, 0).await;
        }
        eprintln!("checked {points} crash points");
        assert!(
            points > 100,
            "workloads too short to mean anything: {points}"
        );
    });
}

#[test]
fn every_crash_point_of_a_two_device_pool_recovers_flushed_data() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // The workload really uses the second device.
        let (devs, pool) = create(TWO_DEVICES).await;
        run(&pool, &workload(1, 40)).await;
        assert!(
            devs[1].live_image()[4096..].iter().any(|b| *b != 0),
            "no data on device 1"
        );
        let mut points = 0;
        for seed in 100..100 + workloads() / 2 {
            for victim in [0, 1] {
                points += crash_every_point(seed, 40, TWO_DEVICES, victim).await;
            }
        }
        eprintln!("checked {points} crash points");
        assert!(
            points > 100,
            "workloads too short to mean anything: {points}"
        );
    });
}
