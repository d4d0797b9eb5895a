//! Corrupted metadata never crashes open: random bytes of the label,
//! superblock slots, journal and checkpoint regions are flipped; open either
//! fails with an error or succeeds with consistent accounting (a flip in a
//! torn-tail or unused area is harmless). Never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, OnceLock};

use cstor_engine::io::MemDevice;
use cstor_engine::{DeviceRef, Pool, PoolOptions, Provisioning};
use proptest::prelude::*;

const DEV_BYTES: usize = 2 << 20;

fn opts() -> PoolOptions {
    PoolOptions {
        chunk_bytes: 4096,
        commit_interval: None,
        journal_bytes: Some(64 * 1024),
        ..PoolOptions::default()
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A pool image with volumes, snapshots and journal batches after the last
/// checkpoint, and the byte length of its metadata area.
fn image() -> &'static (Vec<u8>, usize) {
    static IMAGE: OnceLock<(Vec<u8>, usize)> = OnceLock::new();
    IMAGE.get_or_init(|| {
        rt().block_on(async {
            let mem = Arc::new(MemDevice::new(DEV_BYTES));
            let d: DeviceRef = mem.clone();
            let pool = Pool::create(vec![d], &opts()).await.unwrap();
            let v = pool
                .create_volume("v", 256 << 10, 512, Provisioning::Thin)
                .await
                .unwrap();
            v.write(0, &[1; 16384], 1).await.unwrap();
            v.create_snapshot("s").await.unwrap();
            pool.close().await.unwrap();
            drop((v, pool));
            let d: DeviceRef = mem.clone();
            let pool = Pool::open(vec![d], &opts()).await.unwrap();
            let v = pool.volume("v").unwrap();
            for i in 0..8u64 {
                v.write(i * 8192, &[2; 4096], 10 + i).await.unwrap();
                v.unmap(i * 8192 + 4096, 4096, 20 + i).await.unwrap();
                v.flush().await.unwrap();
            }
            let data_start = DEV_BYTES - (pool.stats().total_bytes as usize);
            drop((v, pool));
            (mem.image(), data_start)
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn open_of_corrupted_metadata_errs_or_is_consistent(flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..8)) {
        let (img, meta_len) = image();
        // Flip bytes where metadata actually is (non-zero bytes of the
        // metadata area), not in the unused zeros around it.
        let used: Vec<usize> = (0..*meta_len).filter(|i| img[*i] != 0).collect();
        let mut img = img.clone();
        for (at, x) in flips {
            let i = used[at.index(used.len())];
            img[i] ^= x;
        }
        rt().block_on(async {
            let dev: DeviceRef = Arc::new(MemDevice::from_image(img, 4096).unwrap());
            let opened = Pool::open(vec![dev], &opts()).await;
            if let Ok(pool) = opened {
                let a = pool.audit();
                prop_assert!(a.owned_twice.is_empty() && a.owned_but_free.is_empty(), "{:?}", a);
                prop_assert!(a.problems.is_empty(), "{:?}", a.problems);
                if let Ok(v) = pool.volume("v") {
                    let mut b = vec![0; 4096];
                    v.read(0, &mut b).await.unwrap();
                }
            }
            Ok(())
        })?;
    }
}
