//! Fault injection: an EIO on the N-th write or sync poisons as specified —
//! a data write error poisons that volume (others keep working), a sync or
//! metadata write error poisons the pool; poisoned means every later IO is
//! refused with `ErrorKind::Poisoned` naming the cause, and fsync is never
//! retried. The pool reopens afterwards with every flushed write intact.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use cstor_engine::io::{FaultyDevice, MemDevice};
use cstor_engine::{DeviceRef, ErrorKind, Pool, PoolOptions, Provisioning};

fn opts() -> PoolOptions {
    PoolOptions {
        chunk_bytes: 4096,
        commit_interval: None,
        ..PoolOptions::default()
    }
}

async fn setup() -> (Arc<FaultyDevice<Arc<MemDevice>>>, Arc<MemDevice>, Pool) {
    let mem = Arc::new(MemDevice::new(4 << 20));
    let faulty = Arc::new(FaultyDevice::new(mem.clone()));
    let d: DeviceRef = faulty.clone();
    let pool = Pool::create(vec![d], &opts()).await.unwrap();
    pool.create_volume("a", 1 << 20, 512, Provisioning::Thin)
        .await
        .unwrap();
    pool.create_volume("b", 1 << 20, 512, Provisioning::Thin)
        .await
        .unwrap();
    let a = pool.volume("a").unwrap();
    a.write(0, &[1; 4096], 1).await.unwrap();
    a.flush().await.unwrap();
    (faulty, mem, pool)
}

async fn reopen_keeps_flushed(mem: &MemDevice) {
    let d: DeviceRef = Arc::new(MemDevice::from_image(mem.image(), 4096).unwrap());
    let pool = Pool::open(vec![d], &opts()).await.unwrap();
    let mut b = vec![0; 4096];
    pool.volume("a").unwrap().read(0, &mut b).await.unwrap();
    assert_eq!(b, vec![1; 4096], "flushed write survives");
    let a = pool.audit();
    assert!(
        a.owned_twice.is_empty() && a.used_not_owned.is_empty() && a.problems.is_empty(),
        "{a:?}"
    );
}

#[tokio::test]
async fn data_write_eio_poisons_only_that_volume() {
    let (faulty, mem, pool) = setup().await;
    let a = pool.volume("a").unwrap();
    let b = pool.volume("b").unwrap();
    faulty.fail_nth_write(faulty.counts().writes + 1);
    let err = a.write(8192, &[2; 4096], 2).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Poisoned);
    assert!(err.to_string().contains("write"), "names the cause: {err}");
    let mut buf = vec![0; 512];
    assert_eq!(
        a.read(0, &mut buf).await.unwrap_err().kind(),
        ErrorKind::Poisoned
    );
    assert_eq!(
        a.write(0, &[3; 512], 3).await.unwrap_err().kind(),
        ErrorKind::Poisoned
    );
    assert_eq!(a.flush().await.unwrap_err().kind(), ErrorKind::Poisoned);
    b.write(0, &[4; 512], 4).await.unwrap();
    b.flush().await.unwrap();
    drop((a, b, pool));
    reopen_keeps_flushed(&mem).await;
}

#[tokio::test]
async fn sync_eio_poisons_the_pool_and_is_never_retried() {
    let (faulty, mem, pool) = setup().await;
    let a = pool.volume("a").unwrap();
    let b = pool.volume("b").unwrap();
    a.write(4096, &[5; 512], 5).await.unwrap();
    faulty.fail_nth_sync(faulty.counts().syncs + 1);
    let err = a.flush().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Poisoned);
    assert!(err.to_string().contains("fdatasync"), "{err}");
    let syncs = faulty.counts().syncs;
    assert_eq!(a.flush().await.unwrap_err().kind(), ErrorKind::Poisoned);
    assert_eq!(pool.flush().await.unwrap_err().kind(), ErrorKind::Poisoned);
    assert_eq!(
        b.write(0, &[6; 512], 6).await.unwrap_err().kind(),
        ErrorKind::Poisoned
    );
    assert_eq!(faulty.counts().syncs, syncs, "fsync is never retried");
    assert!(pool.poisoned().is_some());
    drop((a, b, pool));
    reopen_keeps_flushed(&mem).await;
}

#[tokio::test]
async fn eio_on_every_nth_write_or_sync_poisons_and_reopens_cleanly() {
    for fail_sync in [false, true] {
        for n in 1..=12u64 {
            let (faulty, mem, pool) = setup().await;
            if fail_sync {
                faulty.fail_nth_sync(faulty.counts().syncs + n);
            } else {
                faulty.fail_nth_write(faulty.counts().writes + n);
            }
            let a = pool.volume("a").unwrap();
            let mut first_err = None;
            for i in 0..24u64 {
                let res = match i % 4 {
                    0 | 1 => a.write(4096 * (i + 2), &[9; 4096], 10 + i).await,
                    2 => a.create_snapshot(&format!("s{i}")).await,
                    _ => a.flush().await,
                };
                if let Err(e) = res {
                    first_err = Some(e);
                    break;
                }
            }
            let e =
                first_err.unwrap_or_else(|| panic!("fault {n} (sync {fail_sync}) never surfaced"));
            assert_eq!(e.kind(), ErrorKind::Poisoned, "{e}");
            assert_eq!(
                a.write(0, &[1; 512], 99).await.unwrap_err().kind(),
                ErrorKind::Poisoned
            );
            drop((a, pool));
            reopen_keeps_flushed(&mem).await;
        }
    }
}
