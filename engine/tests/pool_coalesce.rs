//! Coalesced overwrites (FORMAT.md "Coalesced overwrites"): an overwrite of
//! a chunk the live layer owns updates the in-memory io_seqs at once and
//! journals no record of its own; a commit journals one `Map` record per
//! chunk overwritten since the previous one, carrying the latest io_seq,
//! and everything that follows (snapshot, unmap, delete, checkpoint,
//! rebuild) reopens to exactly the state the pool held. The crash tests
//! (`pool_crash.rs`, `pool_kill.rs`) cut the power between overwrites and
//! their commit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use cstor_engine::io::MemDevice;
use cstor_engine::{ChangeKind, DeviceRef, Pool, PoolOptions, Provisioning, Volume};

const CHUNK: u32 = 16384;
const BLOCK: usize = 4096;

fn opts() -> PoolOptions {
    PoolOptions {
        chunk_bytes: CHUNK,
        commit_interval: None,
        ..PoolOptions::default()
    }
}

async fn setup() -> (DeviceRef, Pool, Arc<Volume>) {
    let d: DeviceRef = Arc::new(MemDevice::new(8 << 20));
    let pool = Pool::create(vec![d.clone()], &opts()).await.unwrap();
    let v = pool
        .create_volume("v", 1 << 20, BLOCK as u32, Provisioning::Thin)
        .await
        .unwrap();
    (d, pool, v)
}

/// Reopens by journal replay (flushed, no checkpoint).
async fn replayed(d: &DeviceRef, pool: Pool) -> Pool {
    pool.flush().await.unwrap();
    drop(pool);
    Pool::open(vec![d.clone()], &opts()).await.unwrap()
}

fn block(seed: u8) -> Vec<u8> {
    vec![seed; BLOCK]
}

async fn read(v: &Volume, off: u64) -> Vec<u8> {
    let mut b = vec![0xEE; BLOCK];
    v.read(off, &mut b).await.unwrap();
    b
}

fn seq_of(v: &Volume, chunk: u64) -> u64 {
    v.live_chunk_io_seq(chunk * u64::from(CHUNK)).unwrap()
}

#[tokio::test]
async fn overwrites_of_a_chunk_between_commits_journal_one_record_with_the_latest_io_seq() {
    let (d, pool, v) = setup().await;
    v.write(0, &block(1), 1).await.unwrap();
    pool.flush().await.unwrap();
    let before = pool.stats();
    // Ten overwrites of the chunk's four blocks, no commit between them.
    for seq in 2..12u64 {
        v.write((seq % 4) * BLOCK as u64, &block(seq as u8), seq)
            .await
            .unwrap();
        // The in-memory state follows each at once.
        assert_eq!(seq_of(&v, 0), seq);
        let page = v.changed_chunks(None, seq - 1, 0).unwrap();
        assert_eq!(page.changes.len(), 1);
        assert_eq!(page.changes[0].io_seq, seq);
    }
    assert_eq!(pool.stats().journal_records, before.journal_records);
    pool.flush().await.unwrap();
    let after = pool.stats();
    // One Map for the chunk, one VolumeSeq for the volume.
    assert_eq!(after.journal_records - before.journal_records, 2);
    assert_eq!(after.commits - before.commits, 1);
    assert_eq!(v.last_durable_io_seq().unwrap(), 11);
    drop(v);
    let pool = replayed(&d, pool).await;
    let v = pool.volume("v").unwrap();
    assert_eq!(seq_of(&v, 0), 11);
    assert_eq!(v.last_durable_io_seq().unwrap(), 11);
    for b in 0..4u64 {
        let last = (2..12u64).filter(|s| s % 4 == b).max().unwrap();
        assert_eq!(read(&v, b * BLOCK as u64).await, block(last as u8));
    }
}

#[tokio::test]
async fn a_flush_after_an_overwrite_commits_even_when_its_io_seq_is_not_newer() {
    let (d, pool, v) = setup().await;
    v.write(0, &block(1), 10).await.unwrap();
    pool.flush().await.unwrap();
    let commits = pool.stats().commits;
    // A rebuild may bring older data back in place; its bytes must still
    // be made durable by the next flush.
    v.apply_rebuild(0, &block(2), &[5]).await.unwrap();
    assert_eq!(seq_of(&v, 0), 10);
    pool.flush().await.unwrap();
    assert_eq!(pool.stats().commits, commits + 1);
    drop(v);
    let pool = replayed(&d, pool).await;
    let v = pool.volume("v").unwrap();
    assert_eq!(read(&v, 0).await, block(2));
    assert_eq!(seq_of(&v, 0), 10);
}

#[tokio::test]
async fn an_overwrite_before_a_snapshot_stays_in_the_frozen_layer() {
    let (d, pool, v) = setup().await;
    v.write(0, &block(1), 1).await.unwrap();
    pool.flush().await.unwrap();
    v.write(0, &block(2), 2).await.unwrap();
    // No commit between the overwrite and the snapshot but its own.
    v.create_snapshot("s").await.unwrap();
    v.write(BLOCK as u64, &block(3), 3).await.unwrap();
    v.write(BLOCK as u64, &block(4), 4).await.unwrap();
    let snap_page = v.changed_chunks(Some("s"), 0, 0).unwrap();
    assert_eq!(snap_page.changes[0].io_seq, 2);
    assert_eq!(seq_of(&v, 0), 4);
    drop(v);
    let pool = replayed(&d, pool).await;
    let v = pool.volume("v").unwrap();
    assert_eq!(v.changed_chunks(Some("s"), 0, 0).unwrap(), snap_page);
    assert_eq!(seq_of(&v, 0), 4);
    let mut b = vec![0; BLOCK];
    v.read_snapshot("s", 0, &mut b).await.unwrap();
    assert_eq!(b, block(2));
    v.read_snapshot("s", BLOCK as u64, &mut b).await.unwrap();
    assert_eq!(b, vec![0; BLOCK]);
    assert_eq!(read(&v, BLOCK as u64).await, block(4));
}

#[tokio::test]
async fn an_overwrite_then_an_unmap_of_its_chunk_replays_to_the_tombstone() {
    let (d, pool, v) = setup().await;
    v.write(0, &block(1), 1).await.unwrap();
    pool.flush().await.unwrap();
    v.write(0, &block(2), 2).await.unwrap();
    v.unmap(0, u64::from(CHUNK), 3).await.unwrap();
    let page = v.changed_chunks(None, 0, 0).unwrap();
    assert_eq!(page.changes[0].kind, ChangeKind::Zero);
    assert_eq!(page.changes[0].io_seq, 3);
    drop(v);
    let pool = replayed(&d, pool).await;
    let a = pool.audit();
    assert!(a.owned_twice.is_empty() && a.used_not_owned.is_empty() && a.problems.is_empty());
    let v = pool.volume("v").unwrap();
    assert_eq!(v.changed_chunks(None, 0, 0).unwrap(), page);
    assert_eq!(read(&v, 0).await, vec![0; BLOCK]);
    assert_eq!(v.stats().unwrap().allocated_bytes, 0);
}

#[tokio::test]
async fn an_overwrite_then_a_delete_of_its_volume_replays_cleanly() {
    let (d, pool, v) = setup().await;
    v.write(0, &block(1), 1).await.unwrap();
    v.create_snapshot("s").await.unwrap();
    v.write(0, &block(2), 2).await.unwrap();
    pool.flush().await.unwrap();
    v.write(0, &block(3), 3).await.unwrap();
    v.delete_snapshot("s").await.unwrap();
    v.write(0, &block(4), 4).await.unwrap();
    drop(v);
    pool.delete_volume("v").await.unwrap();
    let pool = replayed(&d, pool).await;
    assert!(pool.list_volumes().is_empty());
    let a = pool.audit();
    assert_eq!(a.owned, 0);
    assert!(a.owned_twice.is_empty() && a.used_not_owned.is_empty() && a.problems.is_empty());
}

#[tokio::test]
async fn overwrites_taken_by_a_checkpoint_are_neither_lost_nor_journaled_again() {
    let (d, pool, v) = setup().await;
    for c in 0..4u64 {
        v.write(c * u64::from(CHUNK), &block(1), 1).await.unwrap();
    }
    pool.flush().await.unwrap();
    for (seq, c) in (2..10u64).zip([0u64, 1, 2, 3].iter().cycle()) {
        v.write(c * u64::from(CHUNK), &block(seq as u8), seq)
            .await
            .unwrap();
    }
    // A clean close checkpoints (the records are in the state it encodes).
    pool.close().await.unwrap();
    drop(pool);
    let pool = Pool::open(vec![d.clone()], &opts()).await.unwrap();
    let v2 = pool.volume("v").unwrap();
    let seqs: Vec<u64> = (0..4).map(|c| seq_of(&v2, c)).collect();
    assert_eq!(seqs, vec![6, 7, 8, 9]);
    let records = pool.stats().journal_records;
    // Open checkpointed again: nothing is left to journal.
    pool.flush().await.unwrap();
    assert_eq!(pool.stats().journal_records, records);
    drop(v);
    drop(v2);
    let pool = replayed(&d, pool).await;
    let v = pool.volume("v").unwrap();
    assert_eq!(
        (0..4).map(|c| seq_of(&v, c)).collect::<Vec<_>>(),
        vec![6, 7, 8, 9]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_overwrites_of_many_chunks_all_reach_the_journal() {
    let (d, pool, v) = setup().await;
    let chunks = 32u64;
    for c in 0..chunks {
        v.write(c * u64::from(CHUNK), &block(0), 1).await.unwrap();
    }
    pool.flush().await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let v = v.clone();
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..40u64 {
                let seq = 2 + i * 8 + t;
                let c = (t * 7 + i * 3) % chunks;
                v.write(
                    c * u64::from(CHUNK) + (i % 4) * BLOCK as u64,
                    &block(seq as u8),
                    seq,
                )
                .await
                .unwrap();
                if i % 9 == 0 {
                    pool.flush().await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let want: Vec<u64> = (0..chunks).map(|c| seq_of(&v, c)).collect();
    drop(v);
    let pool = replayed(&d, pool).await;
    let v = pool.volume("v").unwrap();
    assert_eq!((0..chunks).map(|c| seq_of(&v, c)).collect::<Vec<_>>(), want);
}
