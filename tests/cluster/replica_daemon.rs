//! The replica daemon across processes, on loopback: a real `cstor replica
//! run` child, a target-side client built on `cstor-proto`, real files and
//! fsync (issue 4's tests).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use crate::common::{pattern, HelloOutcome, ReplicaProcess};
use bytes::{Bytes, BytesMut};
use cstor_proto::{
    Extent, Frame, FrameHeader, Message, Name, Opcode, SnapshotListRequest, Status, VersionRange,
    PROTOCOL_VERSION,
};

const BLOCK: u64 = 4096;

fn setup(size: &str) -> (tempfile::TempDir, ReplicaProcess) {
    let dir = tempfile::tempdir().unwrap();
    let replica = ReplicaProcess::create(dir.path(), "512MiB");
    replica.ctl(&["volume", "create", "vol1", "--size", size]);
    (dir, replica)
}

fn error_status(message: &Message) -> Status {
    match message {
        Message::Error(e) => e.status,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

#[tokio::test]
async fn write_read_flush_and_snapshot_over_the_wire() {
    let (_dir, replica) = setup("64MiB");
    let (mut client, ack) = replica.open("vol1", 1).await;
    assert_eq!(ack.volume_size_bytes, 64 << 20);
    assert_eq!(ack.block_size_bytes, 4096);
    assert_eq!(ack.highest_epoch_seen, 1);

    for lba in [0u64, 1, 77, 16383] {
        let reply = client
            .write(lba * BLOCK, pattern(lba, 1, BLOCK as usize))
            .await;
        assert_eq!(reply, Message::Ack(Opcode::Write));
    }
    assert_eq!(client.flush().await, Message::Ack(Opcode::Flush));
    for lba in [0u64, 1, 77, 16383] {
        assert_eq!(
            client.read(lba * BLOCK, BLOCK as u32).await,
            pattern(lba, 1, BLOCK as usize)
        );
    }
    // Unwritten space reads as zeros; a read past the end is refused.
    assert!(client
        .read(5 * BLOCK, BLOCK as u32)
        .await
        .iter()
        .all(|&b| b == 0));
    let past_end = client
        .call(Message::Read(Extent {
            offset: 64 << 20,
            len_bytes: 4096,
        }))
        .await
        .unwrap();
    assert_eq!(error_status(&past_end.message), Status::OutOfRange);

    // Snapshot, then overwrite: the live volume changes, the snapshot lists.
    let snap = client
        .call(Message::SnapshotCreate(Name::new("s1").unwrap()))
        .await
        .unwrap();
    assert_eq!(snap.message, Message::Ack(Opcode::SnapshotCreate));
    client.write(0, pattern(0, 2, BLOCK as usize)).await;
    assert_eq!(
        client.read(0, BLOCK as u32).await,
        pattern(0, 2, BLOCK as usize)
    );
    let listing = client
        .call(Message::SnapshotList(SnapshotListRequest { after: None }))
        .await
        .unwrap();
    match listing.message {
        Message::SnapshotListing(l) => {
            assert_eq!(l.snapshots.len(), 1);
            assert_eq!(l.snapshots[0].name.as_str(), "s1");
            assert!(!l.more);
        }
        other => panic!("{other:?}"),
    }
    let out = replica.ctl(&["volume", "snapshots", "vol1"]);
    assert!(out.contains("s1"), "{out}");

    // Unmap reads back zeros; status reports what was received.
    let unmap = client
        .call(Message::Unmap(Extent {
            offset: 77 * BLOCK,
            len_bytes: 4096,
        }))
        .await
        .unwrap();
    assert_eq!(unmap.message, Message::Ack(Opcode::Unmap));
    assert!(client
        .read(77 * BLOCK, BLOCK as u32)
        .await
        .iter()
        .all(|&b| b == 0));
    let status = client.call(Message::Status).await.unwrap();
    match status.message {
        Message::StatusReport(r) => {
            assert_eq!(r.highest_epoch_seen, 1);
            assert!(r.last_received_io_seq >= unmap.io_seq);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn many_pipelined_writes_complete_and_overlapping_ones_keep_their_order() {
    let (_dir, replica) = setup("64MiB");
    let (mut client, _) = replica.open("vol1", 1).await;
    // 200 writes in flight at once, every 10th to the same block: the last
    // one sent must be what the block holds.
    let mut expected = BTreeMap::new();
    for i in 0..200u64 {
        let lba = if i % 10 == 0 { 3 } else { 100 + i };
        client
            .send(Message::Write(cstor_proto::Write {
                offset: lba * BLOCK,
                data: pattern(lba, i, BLOCK as usize),
                fua: false,
            }))
            .await
            .unwrap();
        expected.insert(lba, i);
    }
    for _ in 0..200 {
        let reply = client.recv().await.expect("connection closed");
        assert_eq!(reply.message, Message::Ack(Opcode::Write));
    }
    for (lba, generation) in expected {
        assert_eq!(
            client.read(lba * BLOCK, BLOCK as u32).await,
            pattern(lba, generation, BLOCK as usize),
            "lba {lba}"
        );
    }
}

#[tokio::test]
async fn an_older_target_is_refused_and_a_newer_one_cuts_it() {
    let (_dir, mut replica) = setup("16MiB");
    let (mut old, _) = replica.open("vol1", 5).await;
    assert_eq!(
        old.write(0, pattern(0, 1, 4096)).await,
        Message::Ack(Opcode::Write)
    );

    let (mut new, ack) = replica.open("vol1", 7).await;
    assert_eq!(ack.highest_epoch_seen, 7);
    // The old session is cut: its next request gets no answer but a close
    // (or, if it raced the cut, a StaleEpoch refusal), and never lands.
    let sent = old
        .send(Message::Write(cstor_proto::Write {
            offset: 0,
            data: pattern(0, 99, 4096),
            fua: false,
        }))
        .await;
    if sent.is_ok() {
        if let Some(reply) = old.recv().await {
            assert_eq!(error_status(&reply.message), Status::StaleEpoch);
        }
    }
    assert_eq!(new.read(0, 4096).await, pattern(0, 1, 4096));

    // An epoch between the two is stale, and so is the same epoch while the
    // newer session lives (a second target that picked the same number).
    let mut stale = replica.connect("vol1").await;
    match stale.hello("vol1", 6, 1).await {
        HelloOutcome::Refused(m) => assert_eq!(error_status(&m), Status::StaleEpoch),
        HelloOutcome::Accepted(a) => panic!("stale epoch accepted: {a:?}"),
    }
    let mut twin = replica.connect("vol1").await;
    match twin.hello("vol1", 7, 1).await {
        HelloOutcome::Refused(m) => assert_eq!(error_status(&m), Status::Busy),
        HelloOutcome::Accepted(a) => panic!("second owner accepted: {a:?}"),
    }
    // A probe (epoch 0) may look but not write.
    let (mut probe, ack) = replica.open("vol1", 0).await;
    assert_eq!(ack.highest_epoch_seen, 7);
    let refused = probe.write(0, pattern(0, 5, 4096)).await;
    assert_eq!(error_status(&refused), Status::StaleEpoch);

    // The epoch is persisted: after a restart epoch 6 is still stale.
    drop((new, probe));
    assert!(replica.terminate(), "unclean exit: {}", replica.log_text());
    replica.start();
    let mut after = replica.connect("vol1").await;
    match after.hello("vol1", 6, 1).await {
        HelloOutcome::Refused(m) => assert_eq!(error_status(&m), Status::StaleEpoch),
        HelloOutcome::Accepted(a) => panic!("stale epoch accepted after restart: {a:?}"),
    }
}

#[tokio::test]
async fn malformed_input_gets_an_error_or_a_close_and_the_daemon_keeps_serving() {
    let (_dir, replica) = setup("16MiB");
    let (mut good, _) = replica.open("vol1", 1).await;
    good.write(0, pattern(0, 1, 4096)).await;

    // Garbage bytes: the connection is closed.
    let mut garbage = replica.connect("vol1").await;
    garbage.send_raw(&[0xAB; 200]).await.unwrap();
    assert!(garbage.recv().await.is_none());

    // A header announcing a payload beyond the bound: closed before any
    // allocation of that size.
    let mut huge = replica.connect("vol1").await;
    let mut frame = BytesMut::new();
    Frame {
        header: header(Opcode::Heartbeat.to_u16(), 1),
        payload: Bytes::new(),
    }
    .encode(&mut frame, u32::MAX)
    .unwrap();
    frame[12..16].copy_from_slice(&u32::MAX.to_le_bytes()); // payload_len
    let crc = crc32c::crc32c(&frame[..60]);
    frame[60..64].copy_from_slice(&crc.to_le_bytes());
    huge.send_raw(&frame).await.unwrap();
    assert!(huge.recv().await.is_none());

    // A corrupted payload checksum: closed.
    let mut corrupt = replica.connect("vol1").await;
    let mut frame = BytesMut::new();
    Frame {
        header: header(Opcode::Hello.to_u16(), 1),
        payload: Bytes::from_static(b"not really a hello"),
    }
    .encode(&mut frame, 1 << 20)
    .unwrap();
    let last = frame.len() - 1;
    frame[last] ^= 0xFF;
    corrupt.send_raw(&frame).await.unwrap();
    assert!(corrupt.recv().await.is_none());

    // No common version: a VersionMismatch reply naming our range.
    let mut future = replica.connect("vol1").await;
    let hello = Message::Hello(cstor_proto::Hello {
        versions: VersionRange { min: 900, max: 901 },
        volume: Name::new("vol1").unwrap(),
        next_io_seq: 1,
        auth: cstor_proto::Auth::None,
    });
    let reply = future.call(hello).await.expect("no reply");
    assert_eq!(
        reply.message,
        Message::VersionMismatch(VersionRange::SUPPORTED)
    );

    // Unknown volume: NotFound.
    let mut lost = replica.connect("nope").await;
    match lost.hello("nope", 1, 1).await {
        HelloOutcome::Refused(m) => assert_eq!(error_status(&m), Status::NotFound),
        HelloOutcome::Accepted(a) => panic!("{a:?}"),
    }

    // Inside a session: an unknown opcode and a malformed payload get error
    // replies with their io_seq, and the session goes on.
    let (mut session, _) = replica.open("vol1", 2).await;
    let mut h = header(0x0777, 4242);
    h.session_id = session.session_id;
    h.epoch = session.epoch;
    session
        .send_frame(Frame {
            header: h,
            payload: Bytes::new(),
        })
        .await
        .unwrap();
    let reply = session.recv().await.expect("closed on unknown opcode");
    assert_eq!(reply.io_seq, 4242);
    assert_eq!(error_status(&reply.message), Status::UnknownOpcode);
    let mut h = header(Opcode::Flush.to_u16(), 4243);
    h.session_id = session.session_id;
    h.epoch = session.epoch;
    session
        .send_frame(Frame {
            header: h,
            payload: Bytes::from_static(b"junk"),
        })
        .await
        .unwrap();
    let reply = session.recv().await.expect("closed on malformed payload");
    assert_eq!(reply.io_seq, 4243);
    assert_eq!(error_status(&reply.message), Status::BadRequest);
    assert_eq!(session.read(0, 4096).await, pattern(0, 1, 4096));

    // The first session (cut by the newer epoch 2) is gone, but the daemon
    // serves new ones.
    let (mut again, _) = replica.open("vol1", 3).await;
    assert_eq!(again.read(0, 4096).await, pattern(0, 1, 4096));
}

fn header(opcode: u16, io_seq: u64) -> FrameHeader {
    FrameHeader {
        version: PROTOCOL_VERSION,
        opcode,
        flags: 0,
        status: Status::Ok,
        session_id: 0,
        epoch: 0,
        io_seq,
        offset: 0,
        length: 0,
    }
}

#[tokio::test]
async fn every_flushed_write_survives_sigkill_under_load() {
    let (_dir, mut replica) = setup("64MiB");
    let (mut client, _) = replica.open("vol1", 1).await;
    // Writes to distinct blocks, 16 in flight, a flush after every 32; the
    // daemon is SIGKILLed in the middle of the stream. A flush covers every
    // write sent before it (the replica orders it after them), so once it
    // is acknowledged every block below its bound must survive.
    let kill_after_flushes = 12;
    let mut flushes_done = 0;
    let mut durable_below: u64;
    let mut pending_flush: Option<(u64, u64)> = None;
    let mut lba = 0u64;
    let mut in_flight = BTreeMap::new();
    loop {
        while in_flight.len() < 16 && lba < 16384 {
            let seq = client
                .send(Message::Write(cstor_proto::Write {
                    offset: lba * BLOCK,
                    data: pattern(lba, 7, BLOCK as usize),
                    fua: false,
                }))
                .await
                .unwrap();
            in_flight.insert(seq, lba);
            lba += 1;
            if lba.is_multiple_of(32) && pending_flush.is_none() {
                let seq = client.send(Message::Flush).await.unwrap();
                pending_flush = Some((seq, lba));
            }
        }
        let reply = client.recv().await.expect("replica closed early");
        match reply.message {
            Message::Ack(Opcode::Write) => {
                in_flight.remove(&reply.io_seq).expect("unknown write ack");
            }
            Message::Ack(Opcode::Flush) => {
                let (seq, bound) = pending_flush.take().expect("unexpected flush ack");
                assert_eq!(seq, reply.io_seq);
                durable_below = bound;
                flushes_done += 1;
                if flushes_done == kill_after_flushes {
                    break;
                }
            }
            other => panic!("{other:?}"),
        }
    }
    replica.kill9();
    assert!(durable_below >= 32 * kill_after_flushes);
    replica.start();
    let (mut reader, _) = replica.open("vol1", 2).await;
    for lba in 0..durable_below {
        let data = reader.read(lba * BLOCK, BLOCK as u32).await;
        assert!(
            data == pattern(lba, 7, BLOCK as usize),
            "flushed block {lba} lost after SIGKILL (reads as generation {:?})",
            data.get(8..16)
        );
    }
}

#[tokio::test]
async fn sigterm_closes_the_pool_cleanly_and_keeps_acknowledged_writes() {
    let (_dir, mut replica) = setup("16MiB");
    let (mut client, first) = replica.open("vol1", 1).await;
    for lba in 0..20u64 {
        client
            .write(lba * BLOCK, pattern(lba, 3, BLOCK as usize))
            .await;
    }
    // No flush: a graceful shutdown commits what was acknowledged.
    assert!(replica.terminate(), "unclean exit: {}", replica.log_text());
    replica.start();
    let (mut reader, ack) = replica.open("vol1", 2).await;
    // Committed at shutdown, without a flush: durable through the last write.
    assert!(ack.last_durable_io_seq >= 20);
    // Identity survives a restart and matches what the management API says.
    assert_eq!(ack.replica_id, first.replica_id);
    assert_eq!(ack.pool_guid, first.pool_guid);
    let pool: serde_json::Value =
        serde_json::from_str(&replica.ctl(&["--json", "pool", "status"])).unwrap();
    assert_eq!(pool["guid"], format!("{:032x}", ack.pool_guid));
    let volumes: serde_json::Value =
        serde_json::from_str(&replica.ctl(&["--json", "volume", "list"])).unwrap();
    assert_eq!(volumes[0]["replica_id"], format!("{:032x}", ack.replica_id));
    assert_eq!(volumes[0]["state"], "healthy");
    for lba in 0..20u64 {
        assert_eq!(
            reader.read(lba * BLOCK, BLOCK as u32).await,
            pattern(lba, 3, BLOCK as usize)
        );
    }
}

#[test]
fn management_calls_are_idempotent_and_refuse_conflicts_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let replica = ReplicaProcess::create(dir.path(), "256MiB");
    replica.ctl(&["volume", "create", "a", "--size", "32MiB"]);
    // Same request again: fine. Different size: a precise refusal.
    replica.ctl(&["volume", "create", "a", "--size", "32MiB"]);
    let out = replica.ctl_output(&["volume", "create", "a", "--size", "64MiB"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("exists") && err.contains("AlreadyExists"),
        "{err}"
    );
    // A thick volume larger than the pool is refused.
    let out = replica.ctl_output(&["volume", "create", "big", "--size", "1GiB", "--thick"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ResourceExhausted"));
    // Grow, list (JSON), delete twice.
    replica.ctl(&["volume", "grow", "a", "--size", "48MiB"]);
    let json: serde_json::Value =
        serde_json::from_str(&replica.ctl(&["--json", "volume", "list"])).unwrap();
    assert_eq!(json[0]["name"], "a");
    assert_eq!(json[0]["size_bytes"], 48 << 20);
    replica.ctl(&["volume", "delete", "a"]);
    replica.ctl(&["volume", "delete", "a"]);
    let json: serde_json::Value =
        serde_json::from_str(&replica.ctl(&["--json", "volume", "list"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 0);
    let pool: serde_json::Value =
        serde_json::from_str(&replica.ctl(&["--json", "pool", "status"])).unwrap();
    assert!(pool["capacity_bytes"].as_u64().unwrap() > 200 << 20);
}

#[test]
fn a_missing_pool_a_busy_device_and_a_used_address_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let run = |pool: &str, listen: &str, mgmt: &str| {
        std::process::Command::new(crate::common::cstor_bin())
            .args([
                "replica",
                "run",
                "--pool-path",
                pool,
                "--listen",
                listen,
                "--mgmt-listen",
                mgmt,
                // This test is about the pool and the addresses.
                "--insecure-plaintext",
            ])
            .output()
            .unwrap()
    };
    let missing = dir.path().join("nope.img");
    let out = run(missing.to_str().unwrap(), "127.0.0.1:0", "127.0.0.1:0");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.img"));

    let garbage = dir.path().join("garbage.img");
    std::fs::write(&garbage, vec![0x5Au8; 8 << 20]).unwrap();
    let out = run(garbage.to_str().unwrap(), "127.0.0.1:0", "127.0.0.1:0");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open the pool"));

    let replica = ReplicaProcess::create(dir.path(), "64MiB");
    let out = run(
        replica.pool_file.to_str().unwrap(),
        "127.0.0.1:0",
        "127.0.0.1:0",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));

    let second = dir.path().join("second.img");
    crate::common::cstor(&[
        "replica",
        "init",
        "--pool",
        "p2",
        "--file",
        second.to_str().unwrap(),
        "--size",
        "64MiB",
    ]);
    let out = run(
        second.to_str().unwrap(),
        &replica.data.to_string(),
        "127.0.0.1:0",
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot listen on") && err.contains(&replica.data.to_string()),
        "{err}"
    );
}

/// `cstor replica add-device` grows a stopped pool by a device: refused
/// while the daemon serves the pool, or for a device of another pool, a
/// no-op when repeated; the pool then serves on both devices, bigger, with
/// its data.
#[tokio::test]
async fn add_device_grows_a_stopped_pool_and_its_data_stays() {
    let (dir, mut replica) = setup("16MiB");
    let capacity = |replica: &ReplicaProcess| {
        let pool: serde_json::Value =
            serde_json::from_str(&replica.ctl(&["--json", "pool", "status"])).unwrap();
        pool["capacity_bytes"].as_u64().unwrap()
    };
    let before = capacity(&replica);
    let (mut client, _) = replica.open("vol1", 1).await;
    for lba in 0..32u64 {
        client
            .write(lba * BLOCK, pattern(lba, 9, BLOCK as usize))
            .await;
    }
    assert_eq!(client.flush().await, Message::Ack(Opcode::Flush));
    drop(client);
    let second = dir.path().join("second.img");
    let pool_file = replica.pool_file.clone();
    let add = |extra: &[&str]| {
        let mut args = vec![
            "replica",
            "add-device",
            "--pool-path",
            pool_file.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        std::process::Command::new(crate::common::cstor_bin())
            .args(&args)
            .output()
            .unwrap()
    };
    let file_args = ["--file", second.to_str().unwrap(), "--size", "256MiB"];
    let busy = add(&file_args);
    assert_eq!(busy.status.code(), Some(1), "added while served");
    assert!(String::from_utf8_lossy(&busy.stderr).contains("in use"));
    assert!(replica.terminate(), "unclean exit: {}", replica.log_text());
    let grown = add(&file_args);
    assert!(
        grown.status.success(),
        "{}",
        String::from_utf8_lossy(&grown.stderr)
    );
    // Adding it again is a no-op (a caller cut short may retry), and a
    // device of another pool is refused.
    let again = add(&["--device", second.to_str().unwrap()]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let other = dir.path().join("other.img");
    crate::common::cstor(&[
        "replica",
        "init",
        "--pool",
        "other",
        "--file",
        other.to_str().unwrap(),
        "--size",
        "64MiB",
    ]);
    let foreign = add(&["--device", other.to_str().unwrap()]);
    assert_eq!(foreign.status.code(), Some(1));
    let err = String::from_utf8_lossy(&foreign.stderr);
    assert!(err.contains("already holds pool"), "{err}");
    replica.added_devices.push(second);
    replica.start();
    let after = capacity(&replica);
    assert!(
        after >= before + (200 << 20),
        "capacity {before} -> {after} bytes"
    );
    let (mut client, _) = replica.open("vol1", 2).await;
    for lba in 0..32u64 {
        let data = client.read(lba * BLOCK, BLOCK as u32).await;
        assert_eq!(data, pattern(lba, 9, BLOCK as usize), "block {lba}");
    }
}

#[tokio::test]
async fn io_mode_picks_the_page_cache_or_o_direct_and_data_moves_between_them() {
    let (_dir, mut replica) = setup("16MiB");
    let direct_io = |replica: &ReplicaProcess| {
        let pool: serde_json::Value =
            serde_json::from_str(&replica.ctl(&["--json", "pool", "status"])).unwrap();
        pool["devices"][0]["direct_io"].as_bool().unwrap()
    };
    // The default is buffered: through the page cache.
    assert!(!direct_io(&replica));
    let (mut client, _) = replica.open("vol1", 1).await;
    for lba in 0..64u64 {
        client
            .write(lba * BLOCK, pattern(lba, 5, BLOCK as usize))
            .await;
    }
    assert_eq!(client.flush().await, Message::Ack(Opcode::Flush));
    drop(client);
    assert!(replica.terminate(), "unclean exit: {}", replica.log_text());

    // O_DIRECT on request (a filesystem refusing it is named in the log).
    replica.start_with_env(&[("CSTOR_REPLICA_IO_MODE", "direct")]);
    assert!(
        direct_io(&replica) || replica.log_text().contains("refuses O_DIRECT"),
        "{}",
        replica.log_text()
    );
    let (mut client, _) = replica.open("vol1", 2).await;
    for lba in 0..64u64 {
        assert_eq!(
            client.read(lba * BLOCK, BLOCK as u32).await,
            pattern(lba, 5, BLOCK as usize)
        );
    }
    drop(client);
    assert!(replica.terminate(), "unclean exit: {}", replica.log_text());

    // A mode that does not exist is refused by name.
    let out = std::process::Command::new(crate::common::cstor_bin())
        .args([
            "replica",
            "run",
            "--pool-path",
            "/nonexistent",
            "--io-mode",
            "fast",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("'fast'") && stderr.contains("buffered"),
        "{stderr}"
    );
}
