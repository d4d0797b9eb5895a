//! Blocks that rot on a replica's disk (issue #17, "verified on every
//! read"), across real processes: three `cstor replica run` daemons over
//! file-backed pools, a `cstor target` with CF 2, the initiator of
//! tests/common (`IscsiSession`).
//!
//! - A recognisable pattern is written over iSCSI; bytes of one block are
//!   flipped in ONE replica's pool file (found by searching the file for
//!   the pattern), nothing stopped. Reads over iSCSI return the original
//!   data, whichever replica serves them; once a read reached the bad copy
//!   the target counts one checksum error for that replica and one block
//!   repaired, the replica one checksum error, and the replica stays
//!   healthy. Reads after that, that copy's included, are clean: no
//!   counter moves again.
//! - Bytes of another block are flipped on EVERY replica: the read ends in
//!   CHECK CONDITION, MEDIUM ERROR / UNRECOVERED READ ERROR (03/11/00),
//!   never with the corrupt bytes, and nothing is written back.
//!
//! Timeouts are hang guards only; the test asserts states and answers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::common::{
    free_addr, pattern, target_status, wait_target_status, IscsiSession, ReplicaProcess,
    ScsiOutcome, TargetProcess, TestPki,
};
use bytes::{Bytes, BytesMut};
use cstor_mgmt::exposition::{find, parse, Sample};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const VOLUME: &str = "rot";
const INITIATOR: &str = "iqn.2026-12.io.cstor.test:integrity";
/// Hang guard, not a timing assertion.
const GUARD: Duration = Duration::from_secs(60);
/// The unit replicas verify (and the tests flip) data in.
const BLOCK: usize = 4096;
/// Where the pattern starts in the volume, and its 4 KiB blocks.
const FIRST_BYTE: u64 = 1 << 20;
const BLOCKS: u64 = 16;
/// The block rotten on one replica, and the one rotten on all three.
const ONE_BAD: u64 = 5;
const ALL_BAD: u64 = 11;
/// Generation of the pattern: no other test data looks like it.
const GENERATION: u64 = 0x00C5_7012_17AB;

/// The 4 KiB block `i` of the pattern.
fn block(i: u64) -> Bytes {
    pattern(FIRST_BYTE / BLOCK as u64 + i, GENERATION, BLOCK)
}

/// (sense key, ASC, ASCQ) of a CHECK CONDITION, fixed or descriptor format.
fn sense(outcome: &ScsiOutcome) -> Option<(u8, u8, u8)> {
    let s = outcome.sense.as_deref()?;
    if s.first()? & 0x7f >= 0x72 {
        Some((s.get(1)? & 0x0f, *s.get(2)?, *s.get(3)?))
    } else {
        Some((s.get(2)? & 0x0f, *s.get(12)?, *s.get(13)?))
    }
}

/// Flips 16 bytes in the middle of every copy of `data` in the pool file
/// at `path` (searched at 512-byte boundaries), with ordinary writes at
/// the byte offset, synced: what the replica reads next, through the page
/// cache or O_DIRECT. Returns how many copies it found.
fn rot(path: &Path, data: &[u8]) -> usize {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut content = Vec::new();
    file.read_to_end(&mut content).unwrap();
    let found: Vec<usize> = (0..content.len().saturating_sub(data.len()))
        .step_by(512)
        .filter(|at| content[*at] == data[0] && content[*at..*at + data.len()] == *data)
        .collect();
    for at in &found {
        let mut flipped = content[at + 100..at + 116].to_vec();
        for b in &mut flipped {
            *b ^= 0xff;
        }
        file.seek(SeekFrom::Start((at + 100) as u64)).unwrap();
        file.write_all(&flipped).unwrap();
    }
    file.sync_data().unwrap();
    found.len()
}

async fn scrape(addr: SocketAddr) -> Vec<Sample> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(GUARD, stream.read_to_end(&mut raw))
        .await
        .expect("no HTTP answer")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (_, body) = text.split_once("\r\n\r\n").expect("no HTTP head");
    parse(body).unwrap_or_else(|e| panic!("not exposition format: {e}\n{body}"))
}

/// The status's entry of the replica at `addr`.
fn replica_of(status: &serde_json::Value, addr: SocketAddr) -> &serde_json::Value {
    status["replicas"]
        .as_array()
        .and_then(|r| r.iter().find(|x| x["address"] == addr.to_string()))
        .unwrap_or_else(|| panic!("no replica {addr} in {status}"))
}

fn checksum_errors(status: &serde_json::Value, addr: SocketAddr) -> u64 {
    replica_of(status, addr)["checksum_errors"]
        .as_u64()
        .unwrap_or(0)
}

/// Reads 4 KiB block `i` of the pattern over iSCSI.
async fn read_block(session: &mut IscsiSession, i: u64) -> ScsiOutcome {
    let bs = u64::from(session.block_size);
    let lba = (FIRST_BYTE + i * BLOCK as u64) / bs;
    let blocks = u32::try_from(BLOCK as u64 / bs).unwrap();
    session.read(lba, blocks).await.unwrap()
}

#[tokio::test]
async fn a_block_rotten_on_one_replica_reads_good_and_is_repaired_on_all_a_medium_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut reps: Vec<ReplicaProcess> = (0..3)
        .map(|i| {
            let sub = dir.path().join(format!("r{i}"));
            std::fs::create_dir_all(&sub).unwrap();
            let r = ReplicaProcess::create(&sub, "128MiB");
            r.ctl(&["volume", "create", VOLUME, "--size", "32MiB"]);
            r
        })
        .collect();
    // The replica whose copy rots serves its metrics.
    let replica_metrics = free_addr();
    assert!(reps[0].terminate());
    reps[0].start_with_env(&[("CSTOR_REPLICA_METRICS_LISTEN", &replica_metrics.to_string())]);
    let data: Vec<SocketAddr> = reps.iter().map(|r| r.data).collect();
    let (mgmt, metrics) = (free_addr(), free_addr());
    let target = TargetProcess::start_with(
        dir.path(),
        free_addr(),
        VOLUME,
        &data,
        &[
            "--cf",
            "2",
            "--mgmt-listen",
            &mgmt.to_string(),
            "--metrics-listen",
            &metrics.to_string(),
        ],
        &[],
    );
    let pki: &TestPki = &target.pki;
    let mut session =
        IscsiSession::login_retrying(target.portal, &target.iqn, INITIATOR, GUARD).await;
    wait_target_status(pki, mgmt, "3 healthy", GUARD, |s| s["healthy"] == 3);

    // The pattern, made durable on every replica.
    let bs = u64::from(session.block_size);
    let mut all = BytesMut::new();
    for i in 0..BLOCKS {
        all.extend_from_slice(&block(i));
    }
    let written = session.write(FIRST_BYTE / bs, all.freeze()).await.unwrap();
    assert!(written.is_good(), "{written:?}");
    assert!(session.sync_cache().await.unwrap().is_good());
    wait_target_status(pki, mgmt, "every replica acknowledged", GUARD, |s| {
        s["replicas"]
            .as_array()
            .is_some_and(|r| r.iter().all(|x| x["in_flight"] == 0))
    });

    // ---- One replica's copy rots: reads are good, and repair it.
    let bad = reps[0].data;
    assert!(
        rot(&reps[0].pool_file, &block(ONE_BAD)) >= 1,
        "pattern not found in the pool"
    );
    // Round-robin: three reads in a row reach every healthy replica.
    for attempt in 0..9 {
        let outcome = read_block(&mut session, ONE_BAD).await;
        assert!(outcome.is_good(), "read {attempt}: {outcome:?}");
        assert_eq!(
            outcome.data,
            block(ONE_BAD),
            "read {attempt} returned other data"
        );
        if target_status(pki, mgmt).is_some_and(|s| checksum_errors(&s, bad) > 0) {
            break;
        }
    }
    let status = wait_target_status(pki, mgmt, "the repair", GUARD, |s| {
        checksum_errors(s, bad) == 1 && s["blocks_repaired"] == 1
    });
    assert_eq!(
        status["healthy"], 3,
        "a checksum error is not a failure: {status}"
    );
    assert_eq!(replica_of(&status, bad)["state"], "healthy");
    assert_eq!(replica_of(&status, bad)["checksum_warning"], false);
    let v = ("volume", VOLUME);
    let bad_label = bad.to_string();
    let samples = scrape(metrics).await;
    assert_eq!(
        find(
            &samples,
            "cstor_checksum_errors_total",
            &[v, ("replica", &bad_label)]
        ),
        Some(1.0)
    );
    assert_eq!(
        find(&samples, "cstor_blocks_repaired_total", &[v]),
        Some(1.0)
    );
    let replica_counter = |samples: &[Sample]| {
        find(
            samples,
            "cstor_replica_checksum_errors_total",
            &[("pool", "test"), v],
        )
    };
    assert_eq!(replica_counter(&scrape(replica_metrics).await), Some(1.0));

    // Written back: every copy reads clean now, the repaired one included
    // (nine reads go to each replica three times); nothing moves again.
    for attempt in 0..9 {
        let outcome = read_block(&mut session, ONE_BAD).await;
        assert!(outcome.is_good(), "re-read {attempt}: {outcome:?}");
        assert_eq!(outcome.data, block(ONE_BAD));
    }
    let status = target_status(pki, mgmt).unwrap();
    for r in &data {
        assert_eq!(
            checksum_errors(&status, *r),
            u64::from(*r == bad),
            "{status}"
        );
    }
    assert_eq!(status["blocks_repaired"], 1, "{status}");
    assert_eq!(replica_counter(&scrape(replica_metrics).await), Some(1.0));

    // ---- Another block rots on every replica: MEDIUM ERROR, never data.
    for r in &reps {
        let found = rot(&r.pool_file, &block(ALL_BAD));
        assert!(found >= 1, "pattern not found in {}", r.pool_file.display());
    }
    let outcome = read_block(&mut session, ALL_BAD).await;
    assert_eq!(
        outcome.status,
        ScsiOutcome::CHECK_CONDITION,
        "{:?}",
        outcome.sense
    );
    assert_eq!(
        sense(&outcome),
        Some((0x03, 0x11, 0x00)),
        "MEDIUM ERROR / UNRECOVERED READ ERROR: {:?}",
        outcome.sense
    );
    // No Data-In: nothing of the corrupt copy (its bytes outside the flipped
    // ones are the pattern's) reached the initiator.
    let unflipped = &block(ALL_BAD)[16..48];
    assert!(
        !outcome
            .data
            .windows(unflipped.len())
            .any(|w| w == unflipped),
        "bytes of the corrupt block were sent"
    );
    let status = wait_target_status(pki, mgmt, "every replica's error counted", GUARD, |s| {
        data.iter()
            .all(|r| checksum_errors(s, *r) == 1 + u64::from(*r == bad))
    });
    assert_eq!(status["healthy"], 3, "{status}");
    assert_eq!(
        status["blocks_repaired"], 1,
        "nothing to write back: {status}"
    );
    // The volume goes on: the other blocks read, a write of the block
    // makes it readable again.
    let outcome = read_block(&mut session, ONE_BAD).await;
    assert_eq!(outcome.data, block(ONE_BAD));
    let rewritten = pattern(0xABC, GENERATION, BLOCK);
    let lba = (FIRST_BYTE + ALL_BAD * BLOCK as u64) / bs;
    assert!(session
        .write(lba, rewritten.clone())
        .await
        .unwrap()
        .is_good());
    let outcome = read_block(&mut session, ALL_BAD).await;
    assert!(outcome.is_good(), "{outcome:?}");
    assert_eq!(outcome.data, rewritten);
}
