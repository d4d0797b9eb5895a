//! The server shell feeds the logical unit the volume's state; the logical
//! unit decides what follows from it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::feed_volume_status;
use crate::scsi::{
    Asc, BlockSize, Identity, LogicalUnit, LuConfig, Nexus, Outcome, Response, Sense, SenseKey,
};
use crate::volume::VolumeStatus;

const BLOCKS: u64 = 64;
const BLOCK_SIZE: u32 = 512;

fn unit() -> LogicalUnit {
    LogicalUnit::new(LuConfig {
        identity: Identity {
            uuid: [3; 16],
            serial: "vol".into(),
        },
        blocks: BLOCKS,
        block_size: BlockSize::B512,
        physical_block_exponent: 3,
        unmap_granularity_blocks: 128,
        write_cache: true,
    })
    .unwrap()
}

fn nexus() -> Nexus {
    Nexus::new("iqn.2026-01.test:node,i,0x400000000001", 1)
}

/// Runs a command that needs no block request.
fn answer(lu: &Mutex<LogicalUnit>, cdb: &[u8], data: &[u8]) -> Response {
    match lu
        .lock()
        .execute(&nexus(), cdb, Bytes::copy_from_slice(data))
    {
        Outcome::Done(r) => r,
        Outcome::Io(p) => panic!("unexpected block request {:?}", p.request()),
    }
}

/// The WP bit of the mode parameter header (SBC-4 §6.5.1).
fn write_protected(lu: &Mutex<LogicalUnit>) -> bool {
    let r = answer(lu, &[0x1a, 0, 0x3f, 0, 255, 0], &[]);
    r.data_in.get(2).is_some_and(|b| b & 0x80 != 0)
}

/// Waits (a bounded while) for the follower to bring `lu` to `wp`.
async fn until_write_protected_is(lu: &Mutex<LogicalUnit>, wp: bool) {
    let waited = tokio::time::timeout(Duration::from_secs(5), async {
        while write_protected(lu) != wp {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "MODE SENSE never reported WP = {wp}");
}

#[tokio::test]
async fn the_logical_unit_is_write_protected_exactly_while_the_volume_is_read_only() {
    let (status, rx) = watch::channel(VolumeStatus {
        size_bytes: BLOCKS * u64::from(BLOCK_SIZE),
        ..VolumeStatus::default()
    });
    let lu = Arc::new(Mutex::new(unit()));
    // The power-on unit attention.
    assert_eq!(answer(&lu, &[0; 6], &[]).status.code(), 0x02);
    let stop = CancellationToken::new();
    let follower = tokio::spawn({
        let (lu, stop) = (Arc::clone(&lu), stop.clone());
        async move { feed_volume_status(rx, &lu, BLOCK_SIZE, stop).await }
    });
    assert!(!write_protected(&lu));
    status.send_modify(|s| s.read_only = true);
    until_write_protected_is(&lu, true).await;
    let write = answer(&lu, &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[0; 512]);
    let sense = write.sense.as_deref().and_then(Sense::decode);
    assert_eq!(
        sense.map(|s| (s.key, s.asc)),
        Some((SenseKey::DataProtect, Asc::WRITE_PROTECTED))
    );
    status.send_modify(|s| s.read_only = false);
    until_write_protected_is(&lu, false).await;
    stop.cancel();
    assert!(follower.await.is_ok());
}
