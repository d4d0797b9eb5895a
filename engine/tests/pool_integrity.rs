//! Data integrity of the pool store: the digest of a range (content only),
//! per-block checksums verified on read, and what a corrupted block does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use cstor_engine::io::{AlignedBuf, Device, MemDevice};
use cstor_engine::{DeviceRef, ErrorKind, Pool, PoolOptions, Provisioning};

const CHUNK: u32 = 16384;

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
        .map(|i| seed.wrapping_add((i / 512) as u8) ^ (i as u8))
        .collect()
}

#[tokio::test]
async fn a_digest_depends_on_content_only() {
    let (_, d1) = mem(8 << 20);
    let (_, d2) = mem(8 << 20);
    let p1 = Pool::create(vec![d1], &opts()).await.unwrap();
    let p2 = Pool::create(vec![d2], &opts()).await.unwrap();
    let a = p1
        .create_volume("v", 1 << 20, 512, Provisioning::Thin)
        .await
        .unwrap();
    let b = p2
        .create_volume("v", 1 << 20, 512, Provisioning::Thin)
        .await
        .unwrap();
    // Unmapped on one side, zeros written on the other: same content.
    b.write(65536, &vec![0; 8192], 7).await.unwrap();
    let da = a.digest(0, 1 << 20).await.unwrap();
    let db = b.digest(0, 1 << 20).await.unwrap();
    assert_eq!(da.digest, db.digest);
    assert_eq!(da.mapped_blocks, 0);
    assert_eq!(db.mapped_blocks, 4, "the chunk written holds 4 blocks");
    // Same bytes through different io_seqs and write shapes.
    a.write(4096, &pattern(3, 12288), 1).await.unwrap();
    b.write(4096, &pattern(3, 12288)[..4096], 40).await.unwrap();
    b.write(8192, &pattern(3, 12288)[4096..], 41).await.unwrap();
    let da = a.digest(0, 1 << 20).await.unwrap();
    let db = b.digest(0, 1 << 20).await.unwrap();
    assert_eq!(da.digest, db.digest);
    assert!(da.bad.is_empty() && db.bad.is_empty());
    // One byte apart: the digest of the range differs, that of the
    // untouched ranges does not.
    b.write(10240, &[0x5a; 512], 42).await.unwrap();
    assert_ne!(
        a.digest(0, 16384).await.unwrap().digest,
        b.digest(0, 16384).await.unwrap().digest
    );
    assert_eq!(
        a.digest(16384, 16384).await.unwrap().digest,
        b.digest(16384, 16384).await.unwrap().digest
    );
    // Blocks swapped: the digest sees the order.
    let x = pattern(1, 4096);
    let y = pattern(2, 4096);
    a.write(32768, &[x.clone(), y.clone()].concat(), 50)
        .await
        .unwrap();
    b.write(32768, &[y, x].concat(), 50).await.unwrap();
    assert_ne!(
        a.digest(32768, 8192).await.unwrap().digest,
        b.digest(32768, 8192).await.unwrap().digest
    );
}

#[tokio::test]
async fn a_digest_refuses_what_it_cannot_cover() {
    let (_, d) = mem(8 << 20);
    let p = Pool::create(vec![d], &opts()).await.unwrap();
    let v = p
        .create_volume("v", 1 << 20, 512, Provisioning::Thin)
        .await
        .unwrap();
    assert_eq!(
        v.digest(512, 4096).await.unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        v.digest(0, 2 << 20).await.unwrap_err().kind(),
        ErrorKind::OutOfRange
    );
}

/// Byte offset of `needle` in the device's image (the data area of a
/// written block, found by its pattern).
fn find(dev: &MemDevice, needle: &[u8]) -> u64 {
    let image = dev.image();
    image
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("pattern on the device") as u64
}

/// Flips one byte at `at` behind the pool's back (a rotting disk).
async fn flip(dev: &MemDevice, at: u64) {
    let base = at - at % 4096;
    let (res, mut buf) = dev.read_at(AlignedBuf::zeroed(4096), base).await;
    res.unwrap();
    buf.as_mut_slice()[(at - base) as usize] ^= 0x40;
    let (res, _) = dev.write_at(buf, base).await;
    res.unwrap();
}

fn block(seed: u8) -> Vec<u8> {
    let mut b = pattern(seed, 4096);
    b[..8].copy_from_slice(&[0xC5, 0x70, seed, 0xFE, 0xED, 0x01, seed, 0x99]);
    b
}

#[tokio::test]
async fn a_flipped_byte_fails_its_block_and_only_its_block() {
    let (dev, d) = mem(8 << 20);
    let pool = Pool::create(vec![d], &opts()).await.unwrap();
    let v = pool
        .create_volume("v", 1 << 20, 512, Provisioning::Thin)
        .await
        .unwrap();
    let data: Vec<u8> = (0..8).flat_map(block).collect();
    v.write(0, &data, 1).await.unwrap();
    v.flush().await.unwrap();
    assert!(pool.stats().integrity.enabled);
    // Block 5 rots on the disk.
    flip(&dev, find(&dev, &block(5)) + 100).await;
    let mut got = vec![0; data.len()];
    let e = v.read(0, &mut got).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Checksum, "{e}");
    assert_eq!(e.bad_ranges(), &[(5 * 4096, 4096)]);
    assert_eq!(pool.stats().integrity.checksum_errors, 1);
    // A 512-byte read inside the bad block fails too; around it, all is good.
    let mut small = vec![0; 512];
    let e = v.read(5 * 4096 + 1024, &mut small).await.unwrap_err();
    assert_eq!(e.bad_ranges(), &[(5 * 4096, 4096)]);
    let mut good = vec![0; 5 * 4096];
    v.read(0, &mut good).await.unwrap();
    assert_eq!(good, data[..5 * 4096]);
    v.read(6 * 4096, &mut good[..2 * 4096]).await.unwrap();
    assert_eq!(good[..2 * 4096], data[6 * 4096..]);
    // The digest names it as well, and says it is not this copy's data.
    let d = v.digest(0, 8 * 4096).await.unwrap();
    assert_eq!(d.bad, vec![(5 * 4096, 4096)]);
    // Keeping part of a bad block is refused: its new checksum would
    // vouch for the rotten rest.
    let e = v.write(5 * 4096, &[1; 512], 2).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Checksum);
    assert!(pool.poisoned().is_none() && v.stats().is_ok());
    // A whole-block write repairs it (what the target's repair does).
    v.write(5 * 4096, &block(5), 3).await.unwrap();
    v.read(0, &mut got).await.unwrap();
    assert_eq!(got, data);
}

#[tokio::test]
async fn checksums_survive_a_clean_reopen_and_still_catch_rot() {
    let (dev, d) = mem(8 << 20);
    let pool = Pool::create(vec![d.clone()], &opts()).await.unwrap();
    let v = pool
        .create_volume("v", 1 << 20, 4096, Provisioning::Thin)
        .await
        .unwrap();
    let data: Vec<u8> = (0..4).flat_map(block).collect();
    v.write(65536, &data, 1).await.unwrap();
    v.create_snapshot("s1").await.unwrap();
    v.write(0, &block(9), 2).await.unwrap();
    pool.close().await.unwrap();
    drop((v, pool));
    let pool = Pool::open(vec![d], &opts()).await.unwrap();
    let st = pool.stats().integrity;
    assert_eq!(
        st.recomputed_blocks, 0,
        "a clean close leaves no dirty region"
    );
    assert_eq!(st.dirty_regions, 0);
    let v = pool.volume("v").unwrap();
    let mut got = vec![0; data.len()];
    v.read_snapshot("s1", 65536, &mut got).await.unwrap();
    assert_eq!(got, data);
    // The snapshot's block 2 rots: the snapshot read finds it, the live
    // volume (which shares it) too.
    flip(&dev, find(&dev, &block(2))).await;
    let e = v.read_snapshot("s1", 65536, &mut got).await.unwrap_err();
    assert_eq!(e.bad_ranges(), &[(65536 + 2 * 4096, 4096)]);
    let e = v.read(65536, &mut got).await.unwrap_err();
    assert_eq!(e.bad_ranges(), &[(65536 + 2 * 4096, 4096)]);
}

#[tokio::test]
async fn a_pool_without_checksums_is_version_1_and_does_not_verify() {
    let (dev, d) = mem(8 << 20);
    let options = PoolOptions {
        block_checksums: false,
        ..opts()
    };
    let pool = Pool::create(vec![d.clone()], &options).await.unwrap();
    assert!(!pool.stats().integrity.enabled);
    let v = pool
        .create_volume("v", 1 << 20, 4096, Provisioning::Thin)
        .await
        .unwrap();
    v.write(0, &block(1), 1).await.unwrap();
    pool.close().await.unwrap();
    drop((v, pool));
    // Still opens (what a pool created before checksums is), unverified:
    // rot is served as data, which is why checksums are the default.
    let pool = Pool::open(vec![d], &opts()).await.unwrap();
    assert!(!pool.stats().integrity.enabled);
    flip(&dev, find(&dev, &block(1)) + 9).await;
    let v = pool.volume("v").unwrap();
    let mut got = vec![0; 4096];
    v.read(0, &mut got).await.unwrap();
    assert_ne!(got, block(1));
}

#[tokio::test]
async fn a_bad_block_a_snapshot_shares_can_be_written_over_but_not_kept() {
    let (dev, d) = mem(8 << 20);
    let pool = Pool::create(vec![d], &opts()).await.unwrap();
    let v = pool
        .create_volume("v", 1 << 20, 512, Provisioning::Thin)
        .await
        .unwrap();
    let data: Vec<u8> = (0..4).flat_map(block).collect();
    v.write(0, &data, 1).await.unwrap();
    v.create_snapshot("s").await.unwrap();
    flip(&dev, find(&dev, &block(1)) + 7).await;
    // A write that would copy the bad block into the live volume's own
    // chunk (copy-on-write) refuses: it would keep it.
    let e = v.write(3 * 4096, &block(7), 2).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Checksum);
    assert_eq!(e.bad_ranges(), &[(4096, 4096)]);
    // Writing the bad block itself over (a repair) copies the rest.
    v.write(4096, &block(1), 3).await.unwrap();
    let mut got = vec![0; data.len()];
    v.read(0, &mut got).await.unwrap();
    assert_eq!(got, data);
    // The snapshot's copy is still bad, and says so.
    let e = v.read_snapshot("s", 0, &mut got).await.unwrap_err();
    assert_eq!(e.bad_ranges(), &[(4096, 4096)]);
}
