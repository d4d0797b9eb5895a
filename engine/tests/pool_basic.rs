//! Functional tests of the pool API on in-memory and file devices: each
//! test pins down one behaviour of the pool (thin/thick, COW, snapshots,
//! clones, unmap, reopen, attributes, rebuild support).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use cstor_engine::io::{test_backend, DeviceOptions, MemDevice};
use cstor_engine::{ChangeKind, DeviceRef, ErrorKind, Pool, PoolOptions, Provisioning};

const CHUNK: u32 = 8192;

fn opts() -> PoolOptions {
    PoolOptions {
        chunk_bytes: CHUNK,
        commit_interval: None,
        ..PoolOptions::default()
    }
}

fn mem(len: usize) -> (Arc<MemDevice>, DeviceRef) {
    let d = Arc::new(MemDevice::new(len));
    (d.clone(), d)
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i / 512) as u8))
        .collect()
}

async fn read(v: &cstor_engine::Volume, off: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0xEE; len];
    v.read(off, &mut b).await.unwrap();
    b
}

#[tokio::test]
async fn thin_volume_reads_zeros_then_what_was_written() {
    let (_, d) = mem(4 << 20);
    let pool = Pool::create(vec![d], &opts()).await.unwrap();
    let v = pool
        .create_volume("v", 1 << 20, 512, Provisioning::Thin)
        .await
        .unwrap();
    assert_eq!(read(&v, 0, 4096).await, vec![0; 4096]);
    assert_eq!(v.stats().unwrap().allocated_bytes, 0);
    v.write(512, &pattern(1, 1024), 1).await.unwrap();
    let got = read(&v, 0, 4096).await;
    assert_eq!(&got[..512], &[0; 512][..]);
    assert_eq!(&got[512..1536], &pattern(1, 1024)[..]);
    assert_eq!(&got[1536..], &vec![0; 4096 - 1536][..]);
    // A write spanning two chunks.
    v.write(u64::from(CHUNK) - 512, &pattern(9, 1024), 2)
        .await
        .unwrap();
    assert_eq!(
        read(&v, u64::from(CHUNK) - 512, 1024).await,
        pattern(9, 1024)
    );
    assert_eq!(v.stats().unwrap().allocated_bytes, 2 * u64::from(CHUNK));
    assert_eq!(pool.audit().owned, 2);
}

#[tokio::test]
async fn requests_are_validated_before_io() {
    let (_, d) = mem(4 << 20);
    let pool = Pool::create(vec![d], &opts()).await.unwrap();
    let v = pool
        .create_volume("v", 1 << 20, 4096, Provisioning::Thin)
        .await
        .unwrap();
    let kind = |r: cstor_engine::Result<()>| r.unwrap_err().kind();
    assert_eq!(
        kind(v.write(512, &[0; 4096], 1).await),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(v.write(0, &[0; 100], 1).await),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(v.write(1 << 20, &[0; 4096], 1).await),
        ErrorKind::OutOfRange
    );
    assert_eq!(
        kind(v.unmap(u64::MAX - 4095, 4096, 1).await),
        ErrorKind::OutOfRange
    );
    let mut b = [0u8; 4096];
    assert_eq!(
        v.read((1 << 20) - 4096 + 4096, &mut b)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::OutOfRange
    );
    assert_eq!(
        pool.create_volume("v", 1 << 20, 4096, Provisioning::Thin)
            .await
            .err()
            .unwrap()
            .kind(),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        pool.create_volume("w", 1000, 512, Provisioning::Thin)
            .await
            .err()
            .unwrap()
            .kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(pool.audit().owned, 0, "nothing was allocated");
}

#[tokio::test]
async fn thick_volume_is_refused_when_the_pool_cannot_hold_it() {
    let (_, d) = mem(4 << 20);
    let pool = Pool::create(vec![d], &opts()).await.unwrap();
    let total = pool.stats().total_bytes;
    let too_big = (total + u64::from(CHUNK)) / 4096 * 4096;
    let err = pool
        .create_volume("big", too_big, 4096, Provisioning::Thick)
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::NoSpace);
    let half = total / 2 / 4096 * 4096;
    pool.create_volume("t", half, 4096, Provisioning::Thick)
        .await
        .unwrap();
    assert!(pool.stats().reserved_bytes >= half);
    let err = pool
        .create_volume("t2", half + 2 * u64::from(CHUNK), 4096, Provisioning::Thick)
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::NoSpace);
}

#[tokio::test]
async fn a_write_refused_for_space_changes_none_of_its_chunks() {
    let (_, d) = mem(2 << 20);
    let pool = Pool::create(vec![d], &opts()).await.unwrap();
    let chunks = pool.stats().total_bytes / u64::from(CHUNK);
    let v = pool
        .create_volume(
            "v",
            (chunks + 4) * u64::from(CHUNK),
            512,
            Provisioning::Thin,
        )
        .await
        .unwrap();
    let old = pattern(1, CHUNK as usize);
    // Every chunk but one is taken.
    for c in 0..chunks - 1 {
        v.write(c * u64::from(CHUNK), &old, c + 1).await.unwrap();
    }
    let used = pool.audit().owned;
    // Three chunks' worth from the last written one: it is overwritten in
    // place, the next takes the last free chunk, the one after has none.
    let at = (chunks - 2) * u64::from(CHUNK);
    let new = pattern(2, 3 * CHUNK as usize);
    let err = v.write(at, &new, 500).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoSpace);
    assert_eq!(read(&v, at, CHUNK as usize).await, old, "first piece");
    assert_eq!(
        read(&v, at + u64::from(CHUNK), 2 * CHUNK as usize).await,
        vec![0; 2 * CHUNK as usize],
        "the rest"
    );
    assert_eq!(pool.audit().owned, used, "no chunk was taken");
    // What fits still goes: the last free chunk is there to take.
    v.write(at + u64::from(CHUNK), &new[..CHUNK as usize], 501)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_unmap_refused_for_space_changes_none_of_its_chunks() {
    let (_, d) = mem(2 << 20);
    let pool = Pool::create(vec![d], &opts()).await.unwrap();
    let chunk = u64::from(CHUNK);
    let chunks = pool.stats().total_bytes / chunk;
    let v = pool
        .create_volume("v", (chunks + 4) * chunk, 512, Provisioning::Thin)
        .await
        .unwrap();
    let old = pattern(1, CHUNK as usize);
    for c in 0..3 {
        v.write(c * chunk, &old, c + 1).await.unwrap();
    }
    // The three chunks are shared with a snapshot: zeroing part of one
    // copies it first. Every chunk but one is taken.
    v.create_snapshot("s").await.unwrap();
    for c in 3..chunks - 1 {
        v.write(c * chunk, &old, c + 1).await.unwrap();
    }
    let used = pool.audit().owned;
    // Half of chunk 0, all of chunk 1, half of chunk 2: two copies needed,
    // one chunk free.
    let err = v.unmap(chunk / 2, 2 * chunk, 500).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoSpace, "{err}");
    assert!(
        read(&v, 0, 3 * CHUNK as usize).await == pattern(1, CHUNK as usize).repeat(3),
        "an unmap refused changed the volume"
    );
    assert_eq!(pool.audit().owned, used, "no chunk was taken");
    // What fits still goes: one copy, one tombstone.
    v.unmap(chunk / 2, chunk + chunk / 2, 501).await.unwrap();
    assert_eq!(
        read(&v, chunk, CHUNK as usize).await,
        vec![0; CHUNK as usize]
    );
}

#[tokio::test]
async fn thin_pool_runs_out_of_space_cleanly_and_unmap_gives_it_back() {
    let (_, d) = mem(2 << 20);
    let pool = Pool::create(vec![d], &opts()).await.unwrap();
    let chunks = pool.stats().total_bytes / u64::from(CHUNK);
    let v = pool
        .create_volume(
            "v",
            (chunks + 4) * u64::from(CHUNK),
            512,
            Provisioning::Thin,
        )
        .await
        .unwrap();
    let data = pattern(3, CHUNK as usize);
    for c in 0..chunks {
        v.write(c * u64::from(CHUNK), &data, c + 1).await.unwrap();
    }
    let err = v
        .write(chunks * u64::from(CHUNK), &data, 999)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoSpace);
    v.unmap(0, u64::from(CHUNK), 1000).await.unwrap();
    // The freed chunk comes back once its unmap is committed (done for us).
    v.write(chunks * u64::from(CHUNK), &data, 1001)
        .await
        .unwrap();
    assert_eq!(read(&v, 0, 512).await, vec![0; 512]);
    let a = pool.audit();
    assert!(
        a.owned_twice.is_empty() && a.used_not_owned.is_empty(),
        "{a:?}"
    );
}

#[tokio::test]
async fn snapshot_keeps_old_data_and_cow_copies_the_rest_of_the_chunk() {
    let (_, d) = mem(4 << 20);
    let pool = Pool::create(vec![d], &opts()).await.unwrap();
    let v = pool
        .create_volume("v", 1 << 20, 512, Provisioning::Thin)
        .await
        .unwrap();
    v.write(0, &pattern(1, CHUNK as usize), 1).await.unwrap();
    v.create_snapshot("s1").await.unwrap();
    v.write(512, &pattern(7, 512), 2).await.unwrap();
    let mut want = pattern(1, CHUNK as usize);
    want[512..1024].copy_from_slice(&pattern(7, 512));
    assert_eq!(
        read(&v, 0, CHUNK as usize).await,
        want,
        "COW kept the rest of the chunk"
    );
    let mut s = vec![0; CHUNK as usize];
    v.read_snapshot("s1", 0, &mut s).await.unwrap();
    assert_eq!(s, pattern(1, CHUNK as usize), "snapshot unchanged");
    assert_eq!(pool.audit().owned, 2);
    assert_eq!(v.list_snapshots().unwrap().len(), 1);
    v.delete_snapshot("s1").await.unwrap();
    assert_eq!(
        pool.audit().owned,
        1,
        "the snapshot's overridden chunk was freed"
    );
    assert_eq!(read(&v, 0, CHUNK as usize).await, want);
}

#[tokio::test]
async fn unmap_over_a_snapshot_hides_data_without_freeing_the_snapshot() {
    let (_, d) = mem(4 << 20);
    let pool = Pool::create(vec![d], &opts()).await.unwrap();
    let v = pool
        .create_volume("v", 1 << 20, 512, Provisioning::Thin)
        .await
        .unwrap();
    v.write(0, &pattern(1, 2 * CHUNK as usize), 1)
        .await
        .unwrap();
    v.create_snapshot("s").await.unwrap();
    v.unmap(0, u64::from(CHUNK) + 512, 2).await.unwrap();
    let got = read(&v, 0, 2 * CHUNK as usize).await;
    assert!(got[..CHUNK as usize + 512].iter().all(|b| *b == 0));
    assert_eq!(
        &got[CHUNK as usize + 512..],
        &pattern(1, 2 * CHUNK as usize)[CHUNK as usize + 512..]
    );
    let mut s = vec![0; 2 * CHUNK as usize];
    v.read_snapshot("s", 0, &mut s).await.unwrap();
    assert_eq!(s, pattern(1, 2 * CHUNK as usize));
    let page = v.changed_chunks(None, 1, 0).unwrap();
    let kinds: Vec<_> = page
        .changes
        .iter()
        .map(|c| (c.offset_bytes, c.kind))
        .collect();
    assert_eq!(
        kinds,
        vec![(0, ChangeKind::Zero), (u64::from(CHUNK), ChangeKind::Data)]
    );
    // Per chunk, through the snapshot: the unmap's io_seq for the first
    // two, the snapshot's write for none (all were rewritten), 0 beyond.
    assert_eq!(v.live_chunk_io_seq(0).unwrap(), 2);
    assert_eq!(v.live_chunk_io_seq(u64::from(CHUNK) + 4096).unwrap(), 2);
    assert_eq!(v.live_chunk_io_seq(4 * u64::from(CHUNK)).unwrap(), 0);
}

#[tokio::test]
async fn clone_reads_its_snapshot_and_diverges_independently() {
    let (_, d) = mem(4 << 20);
    let pool = Pool::create(vec![d], &opts()).await.unwrap();
    let v = pool
        .create_volume("v", 1 << 20, 512, Provisioning::Thin)
        .await
        .unwrap();
    v.write(0, &pattern(1, 4096), 1).await.unwrap();
    v.create_snapshot("s").await.unwrap();
    let c = v.clone_snapshot("s", "c").await.unwrap();
    assert_eq!(read(&c, 0, 4096).await, pattern(1, 4096));
    c.write(0, &pattern(2, 512), 5).await.unwrap();
    v.write(0, &pattern(3, 512), 6).await.unwrap();
    assert_eq!(&read(&c, 0, 512).await, &pattern(2, 512));
    assert_eq!(&read(&v, 0, 512).await, &pattern(3, 512));
    // Deleting the origin volume keeps what the clone reads.
    pool.delete_volume("v").await.unwrap();
    assert_eq!(&read(&c, 512, 512).await, &pattern(1, 4096)[512..1024]);
    assert_eq!(
        pool.audit().owned,
        1,
        "the clone owns its one chunk, merged"
    );
    pool.delete_volume("c").await.unwrap();
    assert_eq!(pool.audit().owned, 0);
    assert_eq!(pool.stats().used_bytes, 0);
}

#[tokio::test]
async fn reopen_keeps_flushed_writes_snapshots_and_attributes() {
    let (m, d) = mem(8 << 20);
    let pool = Pool::create(vec![d.clone()], &opts()).await.unwrap();
    let guid = pool.guid();
    let v = pool
        .create_volume("v", 1 << 20, 512, Provisioning::Thin)
        .await
        .unwrap();
    let rid = v.replica_id().unwrap();
    v.write(4096, &pattern(5, 8192), 10).await.unwrap();
    v.create_snapshot("s").await.unwrap();
    v.write(4096, &pattern(6, 512), 11).await.unwrap();
    v.set_epoch(3).await.unwrap();
    assert_eq!(
        v.set_epoch(2).await.unwrap_err().kind(),
        ErrorKind::Conflict
    );
    v.set_attrs(b"members=a,b,c").await.unwrap();
    v.set_membership(b"gen=2").await.unwrap();
    v.flush().await.unwrap();
    assert_eq!(v.last_durable_io_seq().unwrap(), 11);
    drop(pool);
    let dev: DeviceRef = Arc::new(MemDevice::from_image(m.image(), 4096).unwrap());
    let pool = Pool::open(vec![dev], &opts()).await.unwrap();
    assert_eq!(pool.guid(), guid);
    let v = pool.volume("v").unwrap();
    assert_eq!(v.replica_id().unwrap(), rid);
    assert_eq!(v.epoch().unwrap(), 3);
    assert_eq!(v.attrs().unwrap(), b"members=a,b,c");
    assert_eq!(v.membership().unwrap(), b"gen=2");
    assert_eq!(v.last_durable_io_seq().unwrap(), 11);
    let mut want = pattern(5, 8192);
    want[..512].copy_from_slice(&pattern(6, 512));
    assert_eq!(read(&v, 4096, 8192).await, want);
    let mut s = vec![0; 8192];
    v.read_snapshot("s", 4096, &mut s).await.unwrap();
    assert_eq!(s, pattern(5, 8192));
    let a = pool.audit();
    assert!(
        a.problems.is_empty() && a.used_not_owned.is_empty(),
        "{a:?}"
    );
}

#[tokio::test]
async fn grow_and_add_device_extend_volume_and_pool() {
    let (_, d0) = mem(2 << 20);
    let (m1, d1) = mem(2 << 20);
    let pool = Pool::create(vec![d0.clone()], &opts()).await.unwrap();
    let before = pool.stats().total_bytes;
    pool.add_device(d1.clone()).await.unwrap();
    assert!(pool.stats().total_bytes > before);
    let v = pool
        .create_volume("v", 1 << 20, 512, Provisioning::Thin)
        .await
        .unwrap();
    pool.grow_volume("v", 16 << 20).await.unwrap();
    assert_eq!(v.size_bytes().unwrap(), 16 << 20);
    let data = pattern(4, CHUNK as usize);
    for c in 0..300u64 {
        v.write(c * u64::from(CHUNK), &data, c + 1).await.unwrap();
    }
    pool.close().await.unwrap();
    assert_eq!(
        v.write(0, &data, 1).await.unwrap_err().kind(),
        ErrorKind::Closed
    );
    assert!(
        m1.image().iter().skip(4096).any(|b| *b != 0),
        "device 1 holds data"
    );
    // Open with the devices in the wrong order: the labels sort them.
    let pool = Pool::open(vec![d1, d0], &opts()).await.unwrap();
    let v = pool.volume("v").unwrap();
    assert_eq!(read(&v, 299 * u64::from(CHUNK), CHUNK as usize).await, data);
}

#[tokio::test]
async fn shrink_undoes_a_grow_durably_and_never_discards_data() {
    let (_, d) = mem(4 << 20);
    let pool = Pool::create(vec![d.clone()], &opts()).await.unwrap();
    let chunk = u64::from(CHUNK);
    // 2.5 chunks: the new end falls inside chunk 2.
    let size = 2 * chunk + 4096;
    let v = pool
        .create_volume("v", size, 512, Provisioning::Thick)
        .await
        .unwrap();
    v.write(2 * chunk, &pattern(3, 4096), 1).await.unwrap();
    v.create_snapshot("s").await.unwrap();
    let reserved = pool.stats().reserved_bytes;

    // A grow nothing was written into is undone, durably.
    pool.grow_volume("v", 8 * chunk).await.unwrap();
    assert!(
        pool.stats().reserved_bytes > reserved,
        "the grow reserved space"
    );
    v.shrink(size).await.unwrap();
    assert_eq!(v.size_bytes().unwrap(), size);
    assert_eq!(
        pool.stats().reserved_bytes,
        reserved,
        "reservation given back"
    );
    let err = v.write(size, &pattern(1, 512), 2).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutOfRange, "{err}");
    pool.close().await.unwrap();
    let pool = Pool::open(vec![d], &opts()).await.unwrap();
    let v = pool.volume("v").unwrap();
    assert_eq!(v.size_bytes().unwrap(), size);
    assert_eq!(read(&v, 2 * chunk, 4096).await, pattern(3, 4096));

    // Data beyond the new end is never discarded: in the live layer, in
    // the chunk across the end, or only in a snapshot the volume reads
    // through (hidden there by a tombstone, still refused).
    pool.grow_volume("v", 8 * chunk).await.unwrap();
    v.write(5 * chunk, &pattern(4, 512), 3).await.unwrap();
    let err = v.shrink(size).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.to_string().contains("chunk 5"), "{err}");
    v.unmap(5 * chunk, chunk, 4).await.unwrap();
    v.write(size + 512, &pattern(5, 512), 5).await.unwrap();
    let err = v.shrink(size).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.to_string().contains("non-zero byte"), "{err}");
    v.unmap(size, 512 * 2, 6).await.unwrap();
    v.write(6 * chunk, &pattern(6, 512), 7).await.unwrap();
    v.create_snapshot("t").await.unwrap();
    v.unmap(6 * chunk, chunk, 8).await.unwrap();
    let err = v.shrink(size).await.unwrap_err();
    assert!(err.to_string().contains("chunk 6"), "{err}");
    assert_eq!(v.size_bytes().unwrap(), 8 * chunk);
    v.delete_snapshot("t").await.unwrap();
    v.shrink(size).await.unwrap();
    assert_eq!(v.size_bytes().unwrap(), size);
    pool.grow_volume("v", 8 * chunk).await.unwrap();
    let rest = 6 * CHUNK as usize - 4096;
    assert_eq!(read(&v, size, rest).await, vec![0; rest]);
}

#[tokio::test]
async fn open_refuses_a_device_of_another_pool() {
    let (_, a) = mem(2 << 20);
    let (_, b) = mem(2 << 20);
    let (_, c) = mem(2 << 20);
    Pool::create(vec![a.clone(), b], &opts()).await.unwrap();
    Pool::create(vec![c.clone()], &opts()).await.unwrap();
    let err = Pool::open(vec![a, c], &opts()).await.err().unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
}

#[tokio::test]
async fn rebuild_never_overwrites_a_newer_live_block() {
    let (_, d) = mem(4 << 20);
    let pool = Pool::create(vec![d], &opts()).await.unwrap();
    let v = pool
        .create_volume("v", 1 << 20, 512, Provisioning::Thin)
        .await
        .unwrap();
    v.begin_rebuild().unwrap();
    // A live write lands in the middle of a chunk being rebuilt.
    v.write(1024, &pattern(9, 512), 50).await.unwrap();
    let rebuilt = pattern(1, 4096);
    v.apply_rebuild(0, &rebuilt, &[40; 8]).await.unwrap();
    let got = read(&v, 0, 4096).await;
    let mut want = rebuilt.clone();
    want[1024..1536].copy_from_slice(&pattern(9, 512));
    assert_eq!(got, want);
    // Newer rebuilt data does replace an older live block.
    v.apply_rebuild(1024, &pattern(2, 512), &[60])
        .await
        .unwrap();
    assert_eq!(read(&v, 1024, 512).await, pattern(2, 512));
    v.end_rebuild();
    let page = v.changed_chunks(None, 45, 0).unwrap();
    assert_eq!(page.changes.len(), 1);
    assert_eq!(page.changes[0].io_seq, 60);
    assert!(v.changed_chunks(None, 60, 0).unwrap().changes.is_empty());
}

#[tokio::test]
async fn changed_chunks_pages_in_lba_order_for_volume_and_snapshot() {
    let (_, d) = mem(16 << 20);
    let pool = Pool::create(vec![d], &opts()).await.unwrap();
    let v = pool
        .create_volume("v", 64 << 20, 4096, Provisioning::Thin)
        .await
        .unwrap();
    for (i, c) in [7u64, 3, 900, 5000].iter().enumerate() {
        v.write(c * u64::from(CHUNK), &[1; 4096], 10 + i as u64)
            .await
            .unwrap();
    }
    v.create_snapshot("s").await.unwrap();
    v.write(4 * u64::from(CHUNK), &[2; 4096], 20).await.unwrap();
    let offs = |p: cstor_engine::ChangesPage| {
        p.changes
            .iter()
            .map(|c| c.offset_bytes / u64::from(CHUNK))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        offs(v.changed_chunks(None, 0, 0).unwrap()),
        vec![3, 4, 7, 900, 5000]
    );
    assert_eq!(
        offs(v.changed_chunks(None, 11, 0).unwrap()),
        vec![4, 900, 5000]
    );
    assert_eq!(
        offs(v.changed_chunks(Some("s"), 0, 0).unwrap()),
        vec![3, 7, 900, 5000]
    );
    assert_eq!(
        offs(v.changed_chunks(None, 0, 8 * u64::from(CHUNK)).unwrap()),
        vec![900, 5000]
    );
}

#[tokio::test]
async fn file_backed_pool_works_on_the_selected_backend() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.img");
    let dev: DeviceRef = test_backend()
        .open(&path, &DeviceOptions::create(32 << 20))
        .unwrap();
    let pool = Pool::create(vec![dev], &opts()).await.unwrap();
    let v = pool
        .create_volume("v", 8 << 20, 512, Provisioning::Thin)
        .await
        .unwrap();
    v.write(512, &pattern(3, 512), 1).await.unwrap();
    v.flush().await.unwrap();
    pool.close().await.unwrap();
    drop((v, pool));
    // The backend may release the file (and its flock) a moment after the
    // last handle is dropped (a worker or the ring still holding it).
    let mut tries = 0;
    let dev: DeviceRef = loop {
        match test_backend().open(&path, &DeviceOptions::existing()) {
            Ok(d) => break d,
            Err(e) if tries < 400 && e.to_string().contains("in use") => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            Err(e) => panic!("reopen: {e}"),
        }
    };
    let pool = Pool::open(vec![dev], &opts()).await.unwrap();
    let v = pool.volume("v").unwrap();
    assert_eq!(read(&v, 0, 1024).await[512..], pattern(3, 512)[..]);
}

#[tokio::test]
async fn metadata_memory_stays_under_a_tenth_of_a_percent_of_allocated_data() {
    let (_, d) = mem(80 << 20);
    let o = PoolOptions {
        chunk_bytes: 65536,
        commit_interval: None,
        ..PoolOptions::default()
    };
    let pool = Pool::create(vec![d], &o).await.unwrap();
    let v = pool
        .create_volume("v", 64 << 20, 4096, Provisioning::Thin)
        .await
        .unwrap();
    for c in 0..1000u64 {
        v.write(c * 65536, &[1; 4096], c + 1).await.unwrap();
    }
    let s = pool.stats();
    assert_eq!(s.used_bytes, 1000 * 65536);
    let tenth_of_a_percent = (1u64 << 40) / 1000;
    assert!(
        s.metadata_bytes_per_tib > 0 && s.metadata_bytes_per_tib <= tenth_of_a_percent,
        "{} bytes per TiB",
        s.metadata_bytes_per_tib
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_flushes_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let dev: DeviceRef = test_backend()
        .open(&dir.path().join("p.img"), &DeviceOptions::create(32 << 20))
        .unwrap();
    let pool = Pool::create(vec![dev], &opts()).await.unwrap();
    let v = pool
        .create_volume("v", 8 << 20, 4096, Provisioning::Thin)
        .await
        .unwrap();
    let before = pool.stats().commits;
    let tasks: Vec<_> = (0..64u64)
        .map(|i| {
            let v = v.clone();
            tokio::spawn(async move {
                v.write(i * 65536, &[i as u8; 4096], i + 1).await.unwrap();
                v.flush().await.unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let commits = pool.stats().commits - before;
    assert!(
        (1..32).contains(&commits),
        "{commits} commits for 64 flushes"
    );
    assert_eq!(v.last_durable_io_seq().unwrap(), 64);
}

#[tokio::test]
async fn the_timer_commits_without_a_flush() {
    let (_, d) = mem(4 << 20);
    let o = PoolOptions {
        commit_interval: Some(std::time::Duration::from_millis(20)),
        ..opts()
    };
    let pool = Pool::create(vec![d], &o).await.unwrap();
    let v = pool
        .create_volume("v", 1 << 20, 512, Provisioning::Thin)
        .await
        .unwrap();
    v.write(0, &[1; 512], 77).await.unwrap();
    // Bounded wait for the timer (not a timing assertion: it only has to
    // happen at some point).
    for _ in 0..1000 {
        if v.last_durable_io_seq().unwrap() == 77 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("no timed commit happened");
}

#[tokio::test]
async fn unmap_frees_the_chunk_and_reports_it_to_rebuild() {
    let (_, d) = mem(4 << 20);
    let pool = Pool::create(vec![d], &opts()).await.unwrap();
    let v = pool
        .create_volume("v", 1 << 20, 512, Provisioning::Thin)
        .await
        .unwrap();
    v.write(0, &pattern(1, CHUNK as usize), 5).await.unwrap();
    v.unmap(0, u64::from(CHUNK), 10).await.unwrap();
    v.flush().await.unwrap();
    assert_eq!(v.stats().unwrap().allocated_bytes, 0);
    assert_eq!(pool.stats().used_bytes, 0, "space really freed");
    let page = v.changed_chunks(None, 7, 0).unwrap();
    assert_eq!(page.changes.len(), 1);
    assert_eq!(
        (page.changes[0].kind, page.changes[0].io_seq),
        (ChangeKind::Zero, 10)
    );
}

/// A peer that took a grow which failed short of quorum (it stays larger)
/// may hold snapshots larger than this replica's volume: a rebuild inserts
/// them at their own size, and the live volume keeps its size.
#[tokio::test]
async fn a_rebuilt_snapshot_may_be_larger_than_the_live_volume() {
    let (_, d) = mem(8 << 20);
    let pool = Pool::create(vec![d], &opts()).await.unwrap();
    let v = pool
        .create_volume("v", 1 << 20, 4096, Provisioning::Thin)
        .await
        .unwrap();
    v.write(0, &pattern(1, 4096), 1).await.unwrap();
    v.insert_rebuilt_snapshot("big", 5, 2 << 20).await.unwrap();
    let beyond = (1 << 20) + 8192;
    v.apply_rebuild_snapshot("big", beyond, &pattern(2, 4096), &[4])
        .await
        .unwrap();
    let snaps = v.list_snapshots().unwrap();
    assert_eq!(snaps[0].size_bytes, 2 << 20);
    let mut got = vec![0u8; 4096];
    v.read_snapshot("big", beyond, &mut got).await.unwrap();
    assert_eq!(got, pattern(2, 4096));
    assert_eq!(
        v.size_bytes().unwrap(),
        1 << 20,
        "the live volume kept its size"
    );
}

/// `Pool::checkpoint` on a running pool writes a checkpoint but cleans
/// dirty regions only as any commit does: a region written just before
/// stays dirty (its next write pays no bitmap sync); close cleans it.
#[tokio::test]
async fn a_checkpoint_of_a_running_pool_leaves_fresh_dirty_regions_to_close() {
    let (_, d) = mem(8 << 20);
    let pool = Pool::create(vec![d.clone()], &opts()).await.unwrap();
    let v = pool
        .create_volume("v", 1 << 20, 4096, Provisioning::Thin)
        .await
        .unwrap();
    v.write(0, &pattern(1, 4096), 1).await.unwrap();
    v.flush().await.unwrap();
    let before = pool.stats();
    assert!(before.integrity.dirty_regions > 0, "{:?}", before.integrity);
    pool.checkpoint().await.unwrap();
    let after = pool.stats();
    assert_eq!(after.checkpoints, before.checkpoints + 1);
    assert_eq!(
        after.integrity.dirty_regions,
        before.integrity.dirty_regions
    );
    drop(v);
    pool.close().await.unwrap();
    let pool = Pool::open(vec![d], &opts()).await.unwrap();
    let s = pool.stats().integrity;
    assert_eq!((s.dirty_regions, s.recomputed_blocks), (0, 0), "{s:?}");
    assert_eq!(
        read(&pool.volume("v").unwrap(), 0, 4096).await,
        pattern(1, 4096)
    );
}
