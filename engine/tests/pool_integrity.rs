//! Data integrity of the pool store: the digest of a range (content only),
//! per-block checksums verified on read, and what a corrupted block does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use cstor_engine::io::MemDevice;
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
