//! Who an in-process replica daemon lets in, over its real listeners
//! (docs/security.md, "What each port accepts"), with a test CA:
//!
//! - data port: no certificate (plain TCP, TLS without a client
//!   certificate), a certificate of another CA, an expired one — the
//!   connection is closed before any `Hello` is answered; a replica
//!   certificate acting as a target (a claim, IO or any other request on
//!   its probe) — `NotAuthenticated`, nothing changed; a target
//!   certificate for another volume — refused; for the volume — a session
//!   that writes and reads back; management identities — no data session;
//!   an unauthenticated probe cannot pull a byte, nor a replica one a
//!   volume outside a replica set, while a replica certificate pulls the
//!   stream of a member volume;
//! - management port: no certificate, another CA, expired — every call
//!   fails; a reader reads and changes nothing (`PERMISSION_DENIED`);
//!   target and replica identities hold no management right; an admin
//!   changes things;
//! - the refusals are counted (`cstor_replica_connections_refused_total`);
//! - a daemon refuses to start with a certificate that is not a replica of
//!   its pool, and without an explicit choice of link security;
//! - `--insecure-plaintext`: everyone is let in, and the pool says so.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use clap::Parser;
use cstor_mgmt::v1::replica_manager_client::ReplicaManagerClient;
use cstor_mgmt::v1::{
    CreateVolumeRequest, DeleteVolumeRequest, GetPoolRequest, GetRebuildThrottleRequest,
    GetVolumeRequest, GrowVolumeRequest, ListSnapshotsRequest, ListVolumesRequest,
    SetRebuildThrottleRequest,
};
use cstor_proto::{
    Extent, Membership, Message, Name, Opcode, RebuildSource, RebuildStart, SnapshotListRequest,
    Status, Write,
};
use cstor_replica::cli::RunArgs;
use cstor_replica::daemon::{Daemon, DaemonError, IoMode, RunConfig};
use cstor_tls::{Identity, Security};
use futures::SinkExt;
use support::{
    assert_refused, call, hello, hello_message, make_replicated, mgmt, packet, replica, replica_of,
    session, target, Conn, Pki, Replica, BLOCK,
};
use tonic::transport::Channel;

/// The daemon's pool name (its certificate's).
const POOL: &str = "p1";

/// A TLS daemon of pool [`POOL`] with volumes `volumes`.
async fn daemon(pki: &Pki, volumes: &[&str]) -> Replica {
    replica(pki.security(&replica_of(POOL)), POOL, volumes).await
}

fn data(tag: u8) -> Bytes {
    Bytes::from(vec![tag; BLOCK as usize])
}

fn write(offset: u64, tag: u8) -> Message {
    Message::Write(Write {
        offset,
        data: data(tag),
        fua: false,
    })
}

/// Sends a `Hello` claiming `v` at epoch 1 on `conn` and asserts that the
/// connection ends without a single frame coming back.
async fn assert_closed_before_any_answer<S>(mut conn: Conn<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let answer = call(&mut conn, 1, 0, hello_message("v")).await;
    assert!(answer.is_none(), "answered: {answer:?}");
}

/// The answer to a `Hello` must be a `NotAuthenticated` refusal; its
/// detail.
fn not_authenticated(answer: Option<Message>) -> String {
    match answer {
        Some(Message::Error(e)) if e.status == Status::NotAuthenticated => e.detail,
        other => panic!("expected NotAuthenticated, got {other:?}"),
    }
}

/// The highest epoch volume `name` accepted.
fn epoch(replica: &Replica, name: &str) -> u64 {
    replica.pool.volume(name).unwrap().epoch().unwrap()
}

// ---------------------------------------------------------------- data port

#[tokio::test]
async fn the_data_port_closes_a_connection_without_a_certificate_before_any_hello_is_answered() {
    let pki = Pki::new();
    let r = daemon(&pki, &["v"]).await;
    // Plain TCP: the Hello's bytes are not a TLS handshake.
    let plain = support::dial(r.data, &Security::Plaintext).await.unwrap();
    assert_closed_before_any_answer(plain).await;
    // TLS without a client certificate (the server refuses it in the
    // handshake, or right after the client's finish in TLS 1.3).
    if let Some(tls) = support::dial_without_certificate(r.data).await {
        assert_closed_before_any_answer(tls).await;
    }
    assert_refused(&r, POOL, "tls", 2).await;
    assert_refused(&r, POOL, "unauthorized", 0).await;
    assert_eq!(
        epoch(&r, "v"),
        0,
        "a Hello got through and claimed the volume"
    );
}

#[tokio::test]
async fn the_data_port_refuses_a_certificate_of_another_ca_and_an_expired_one() {
    let pki = Pki::new();
    let r = daemon(&pki, &["v"]).await;
    // Both trust our CA (they could talk to the daemon if it let them)
    // and name the volume: only the daemon's check stops them.
    for stranger in [pki.foreign(&target("v")), pki.expired(&target("v"))] {
        if let Ok(conn) = support::dial(r.data, &stranger).await {
            assert_closed_before_any_answer(conn).await;
        }
    }
    assert_refused(&r, POOL, "tls", 2).await;
    assert_eq!(epoch(&r, "v"), 0);
    // Our own target certificate is let in (the control).
    let (_, answer) = hello(r.data, &pki.security(&target("v")), "v", 1).await;
    assert!(matches!(answer, Some(Message::HelloAck(_))), "{answer:?}");
    assert_eq!(epoch(&r, "v"), 1);
}

#[tokio::test]
async fn a_replica_certificate_cannot_act_as_a_target() {
    let pki = Pki::new();
    let r = daemon(&pki, &["v"]).await;
    // A member volume: the refusals below are about the role alone.
    make_replicated(&r.pool, "v").await;
    let record = r.pool.volume("v").unwrap().membership().unwrap();
    let peer = pki.security(&replica_of("p2"));

    // A claim is refused at the Hello, and nothing is persisted.
    let (conn, answer) = hello(r.data, &peer, "v", 1).await;
    let detail = not_authenticated(answer);
    assert!(
        detail.contains("replica of pool p2") && detail.contains("volume v"),
        "{detail}"
    );
    assert!(
        support::next(&mut conn.unwrap()).await.is_none(),
        "the connection stays open"
    );
    assert_eq!(epoch(&r, "v"), 0, "the refused claim was persisted");

    // On a probe, every request of a target is refused.
    let mut probe = session(r.data, &peer, "v", 0).await;
    let mut refused = 0;
    let requests = [
        write(0, 7),
        Message::Read(Extent {
            offset: 0,
            len_bytes: BLOCK as u32,
        }),
        Message::Flush,
        Message::MembershipGet,
        Message::MembershipSet(Membership::default()),
        Message::SnapshotCreate(Name::new("s").unwrap()),
        Message::Status,
        Message::RebuildThrottle {
            bytes_per_second: 1,
        },
    ];
    // (A Digest is a rebuild sink's request on a replicated volume:
    // `a_replica_certificate_asks_digests_of_an_owned_member_volume_only`.)
    for (io_seq, request) in requests.into_iter().enumerate() {
        let what = format!("{request:?}");
        let answer = call(&mut probe, 0, io_seq as u64 + 1, request).await;
        match answer {
            Some(Message::Error(e)) if e.status == Status::NotAuthenticated => refused += 1,
            other => panic!("{what}: expected NotAuthenticated, got {other:?}"),
        }
    }
    // A heartbeat is fine: the session lives on.
    assert_eq!(
        call(&mut probe, 0, 100, Message::Heartbeat).await,
        Some(Message::Ack(Opcode::Heartbeat))
    );
    // Nothing changed.
    let volume = r.pool.volume("v").unwrap();
    let mut block = vec![1u8; BLOCK as usize];
    volume.read(0, &mut block).await.unwrap();
    assert!(block.iter().all(|b| *b == 0), "the refused write landed");
    assert_eq!(volume.membership().unwrap(), record);
    assert!(volume.list_snapshots().unwrap().is_empty());
    assert_eq!(epoch(&r, "v"), 0);
    assert_refused(&r, POOL, "unauthorized", 1 + refused).await;
}

#[tokio::test]
async fn a_target_certificate_opens_sessions_of_its_own_volume_only() {
    let pki = Pki::new();
    let r = daemon(&pki, &["v", "w"]).await;
    let of_w = pki.security(&target("w"));
    for at in [1, 0] {
        let (_, answer) = hello(r.data, &of_w, "v", at).await;
        let detail = not_authenticated(answer);
        assert!(
            detail.contains("target of w") && detail.contains("volume v"),
            "{detail}"
        );
    }
    assert_eq!(epoch(&r, "v"), 0);
    assert_refused(&r, POOL, "unauthorized", 2).await;

    // The volume's own target writes and reads back.
    let mut conn = session(r.data, &pki.security(&target("v")), "v", 1).await;
    assert_eq!(
        call(&mut conn, 1, 10, write(BLOCK, 9)).await,
        Some(Message::Ack(Opcode::Write))
    );
    let read = Message::Read(Extent {
        offset: BLOCK,
        len_bytes: BLOCK as u32,
    });
    match call(&mut conn, 1, 11, read).await {
        Some(Message::ReadData(got)) => assert_eq!(got, data(9)),
        other => panic!("read: {other:?}"),
    }
    // And digests it (scrub): the written block is mapped, none is bad.
    let digest = Message::Digest(Extent {
        offset: 0,
        len_bytes: 16 * BLOCK as u32,
    });
    match call(&mut conn, 1, 12, digest).await {
        Some(Message::RangeDigest(d)) => assert!(d.mapped_blocks >= 1 && d.bad.is_empty(), "{d:?}"),
        other => panic!("digest: {other:?}"),
    }
    // A digest of part of a 4 KiB block is refused, the session lives on.
    let partial = Message::Digest(Extent {
        offset: 512,
        len_bytes: 512,
    });
    match call(&mut conn, 1, 13, partial).await {
        Some(Message::Error(e)) => assert_ne!(e.status, Status::Ok),
        other => panic!("partial digest: {other:?}"),
    }
    assert_eq!(
        call(&mut conn, 1, 14, Message::Heartbeat).await,
        Some(Message::Ack(Opcode::Heartbeat))
    );
    assert_eq!(epoch(&r, "v"), 1);
    // The other target still may claim its own volume.
    let (_, answer) = hello(r.data, &of_w, "w", 1).await;
    assert!(matches!(answer, Some(Message::HelloAck(_))), "{answer:?}");
}

#[tokio::test]
async fn management_identities_open_no_data_session() {
    let pki = Pki::new();
    let r = daemon(&pki, &["v"]).await;
    for identity in [Identity::Admin, Identity::Reader] {
        let security = pki.security(&identity);
        for at in [0, 1] {
            let (_, answer) = hello(r.data, &security, "v", at).await;
            not_authenticated(answer);
        }
    }
    assert_eq!(epoch(&r, "v"), 0);
    assert_refused(&r, POOL, "unauthorized", 4).await;
}

/// Sends a probe `Hello` and a `RebuildStart` of `v` back to back, as a
/// thief would, and returns every message that came back until the
/// connection ended or went quiet after a refusal.
async fn try_to_pull<S>(mut conn: Conn<S>) -> Vec<Message>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let start = Message::RebuildStart(RebuildStart {
        peer_address: "127.0.0.1:1".into(),
        volume: Name::new("v").unwrap(),
        from_io_seq: 0,
        source: RebuildSource::Live,
    });
    let mut got = Vec::new();
    if conn.send(packet(0, 0, hello_message("v"))).await.is_err()
        || conn.send(packet(0, 1, start)).await.is_err()
    {
        return got;
    }
    while let Some(p) = support::next(&mut conn).await {
        let refused = matches!(p.message, Message::Error(_));
        got.push(p.message);
        if refused {
            break;
        }
    }
    got
}

fn carries_data(messages: &[Message]) -> bool {
    messages.iter().any(|m| {
        matches!(
            m,
            Message::RebuildChunk(_) | Message::RebuildProgress(_) | Message::RebuildDone(_)
        )
    })
}

#[tokio::test]
async fn an_unauthenticated_probe_cannot_pull_a_single_byte() {
    let pki = Pki::new();
    let r = daemon(&pki, &["v"]).await;
    // The worst case: written, and in a replica set.
    make_replicated(&r.pool, "v").await;
    r.pool
        .volume("v")
        .unwrap()
        .write(0, &data(0x5e), 5)
        .await
        .unwrap();

    let plain = support::dial(r.data, &Security::Plaintext).await.unwrap();
    let got = try_to_pull(plain).await;
    assert!(got.is_empty(), "plain TCP got {got:?}");
    if let Some(tls) = support::dial_without_certificate(r.data).await {
        let got = try_to_pull(tls).await;
        assert!(got.is_empty(), "TLS without a certificate got {got:?}");
    }
    if let Ok(conn) = support::dial(r.data, &pki.foreign(&replica_of("p2"))).await {
        let got = try_to_pull(conn).await;
        assert!(got.is_empty(), "another CA's replica got {got:?}");
    }
    assert_refused(&r, POOL, "tls", 3).await;
}

#[tokio::test]
async fn a_replica_certificate_cannot_pull_a_volume_outside_a_replica_set() {
    let pki = Pki::new();
    let r = daemon(&pki, &["v"]).await;
    // Written, but no membership record: a volume of one replica (or not
    // opened by a target yet) is no rebuild source.
    r.pool
        .volume("v")
        .unwrap()
        .write(0, &data(0x5e), 5)
        .await
        .unwrap();
    let peer = pki.security(&replica_of("p2"));
    let conn = support::dial(r.data, &peer).await.unwrap();
    let got = try_to_pull(conn).await;
    assert!(matches!(got.first(), Some(Message::HelloAck(_))), "{got:?}");
    assert!(!carries_data(&got), "{got:?}");
    match got.last() {
        Some(Message::Error(e)) => {
            assert_eq!(e.status, Status::NotAuthenticated);
            assert!(e.detail.contains("replica set"), "{}", e.detail);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Nor list its snapshots.
    let mut probe = session(r.data, &peer, "v", 0).await;
    let list = Message::SnapshotList(SnapshotListRequest { after: None });
    match call(&mut probe, 0, 1, list).await {
        Some(Message::Error(e)) => assert_eq!(e.status, Status::NotAuthenticated),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_refused(&r, POOL, "unauthorized", 2).await;
}

#[tokio::test]
async fn a_replica_certificate_pulls_the_rebuild_stream_of_a_member_volume() {
    let pki = Pki::new();
    let r = daemon(&pki, &["v"]).await;
    make_replicated(&r.pool, "v").await;
    let volume = r.pool.volume("v").unwrap();
    volume.write(3 * BLOCK, &data(0x5e), 5).await.unwrap();
    volume.create_snapshot("s1").await.unwrap();
    let peer = pki.security(&replica_of("p2"));
    // The sink lists the source's snapshots first.
    let mut probe = session(r.data, &peer, "v", 0).await;
    let list = Message::SnapshotList(SnapshotListRequest { after: None });
    match call(&mut probe, 0, 1, list).await {
        Some(Message::SnapshotListing(page)) => {
            assert_eq!(page.snapshots.len(), 1);
            assert_eq!(page.snapshots[0].name.as_str(), "s1");
        }
        other => panic!("listing: {other:?}"),
    }
    // No target session owns the volume on this daemon (as after a
    // restart, before its target claimed it again): it serves no stream.
    let refused = try_to_pull(support::dial(r.data, &peer).await.unwrap()).await;
    assert!(!carries_data(&refused), "{refused:?}");
    match refused.last() {
        Some(Message::Error(e)) => {
            assert_eq!(e.status, Status::Busy, "{e:?}");
            assert!(e.detail.contains("no target session"), "{e:?}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Its target claims it; then the live stream comes, with the block.
    let _owner = session(r.data, &pki.security(&target("v")), "v", 1).await;
    let mut conn = support::dial(r.data, &peer).await.unwrap();
    let start = Message::RebuildStart(RebuildStart {
        peer_address: "127.0.0.1:1".into(),
        volume: Name::new("v").unwrap(),
        from_io_seq: 0,
        source: RebuildSource::Live,
    });
    assert!(matches!(
        call(&mut conn, 0, 0, hello_message("v")).await,
        Some(Message::HelloAck(_))
    ));
    conn.send(packet(0, 1, start)).await.unwrap();
    let mut pulled = Vec::new();
    loop {
        match support::next(&mut conn).await.map(|p| p.message) {
            Some(Message::Ack(Opcode::RebuildStart) | Message::RebuildProgress(_)) => {}
            Some(Message::RebuildChunk(chunk)) => pulled.push(chunk),
            Some(Message::RebuildDone(_)) => break,
            other => panic!("stream: {other:?}"),
        }
    }
    let chunk = pulled
        .iter()
        .find(|c| c.offset <= 3 * BLOCK && 4 * BLOCK <= c.offset + c.data.len() as u64)
        .expect("the written block was streamed");
    let at = (3 * BLOCK - chunk.offset) as usize;
    assert_eq!(&chunk.data[at..at + BLOCK as usize], &data(0x5e)[..]);
    assert_refused(&r, POOL, "unauthorized", 0).await;
}

/// A rebuild sink compares its copy by digest on its probe: a replica
/// certificate may ask the digest of a volume in a replica set, only while
/// a target session owns it on this daemon, and of no other volume.
#[tokio::test]
async fn a_replica_certificate_asks_digests_of_an_owned_member_volume_only() {
    let pki = Pki::new();
    let r = daemon(&pki, &["v", "u"]).await;
    make_replicated(&r.pool, "v").await;
    let volume = r.pool.volume("v").unwrap();
    volume.write(3 * BLOCK, &data(0x5e), 5).await.unwrap();
    r.pool
        .volume("u")
        .unwrap()
        .write(0, &data(0x5e), 5)
        .await
        .unwrap();
    let peer = pki.security(&replica_of("p2"));
    let digest = || {
        Message::Digest(Extent {
            offset: 0,
            len_bytes: 1 << 20,
        })
    };
    // Not in a replica set: refused as unauthorized.
    let mut probe = session(r.data, &peer, "u", 0).await;
    match call(&mut probe, 0, 1, digest()).await {
        Some(Message::Error(e)) => {
            assert_eq!(e.status, Status::NotAuthenticated, "{e:?}");
            assert!(e.detail.contains("replica set"), "{}", e.detail);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // In a replica set, but no target session owns it here: busy.
    let mut probe = session(r.data, &peer, "v", 0).await;
    match call(&mut probe, 0, 1, digest()).await {
        Some(Message::Error(e)) => {
            assert_eq!(e.status, Status::Busy, "{e:?}");
            assert!(e.detail.contains("no target session"), "{e:?}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Its target claims it: the digest comes, the engine's own.
    let _owner = session(r.data, &pki.security(&target("v")), "v", 1).await;
    let want = volume.digest(0, 1 << 20).await.unwrap();
    match call(&mut probe, 0, 2, digest()).await {
        Some(Message::RangeDigest(got)) => {
            assert_eq!(got.digest, want.digest);
            assert_eq!(got.mapped_blocks, want.mapped_blocks);
            assert!(got.bad.is_empty());
        }
        other => panic!("digest: {other:?}"),
    }
    // Still no IO of any other kind on the probe.
    match call(&mut probe, 0, 3, write(0, 1)).await {
        Some(Message::Error(e)) => assert_eq!(e.status, Status::NotAuthenticated),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_refused(&r, POOL, "unauthorized", 2).await;
}

// ---------------------------------------------------------- management port

/// `GetPool` as `security`: the pool's name, or why it failed.
async fn get_pool_as(r: &Replica, security: &Security) -> Result<String, String> {
    let mut client = mgmt(r.mgmt, security).await.map_err(|e| e.to_string())?;
    let pool = client
        .get_pool(GetPoolRequest {})
        .await
        .map_err(|e| e.to_string())?;
    Ok(pool.into_inner().name)
}

#[tokio::test]
async fn the_management_port_refuses_callers_without_a_valid_certificate() {
    let pki = Pki::new();
    let r = daemon(&pki, &["v"]).await;
    // Plain gRPC at a TLS port.
    let plain = get_pool_as(&r, &Security::Plaintext).await;
    assert!(plain.is_err(), "{plain:?}");
    // TLS without a client certificate.
    let no_cert = async {
        let mut client = support::mgmt_without_certificate(r.mgmt)
            .await
            .map_err(|e| e.to_string())?;
        client
            .get_pool(GetPoolRequest {})
            .await
            .map(|p| p.into_inner().name)
            .map_err(|e| e.to_string())
    }
    .await;
    assert!(no_cert.is_err(), "{no_cert:?}");
    // Admin certificates of another CA, or expired (both trust our CA).
    for stranger in [pki.foreign(&Identity::Admin), pki.expired(&Identity::Admin)] {
        let got = get_pool_as(&r, &stranger).await;
        assert!(got.is_err(), "{got:?}");
        let created = async {
            let mut client = mgmt(r.mgmt, &stranger).await.map_err(|e| e.to_string())?;
            client
                .create_volume(CreateVolumeRequest {
                    name: "stolen".into(),
                    size_bytes: 1 << 20,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        assert!(created.is_err());
    }
    assert!(
        r.pool.volume("stolen").is_err(),
        "a stranger created a volume"
    );
    // Our admin is let in, and the pool says the links are secured.
    let mut admin = mgmt(r.mgmt, &pki.security(&Identity::Admin)).await.unwrap();
    let pool = admin
        .get_pool(GetPoolRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pool.name, POOL);
    assert!(!pool.insecure_plaintext);
}

/// The daemon's rebuild throttle, read as `client`.
async fn throttle(client: &mut ReplicaManagerClient<Channel>) -> u64 {
    client
        .get_rebuild_throttle(GetRebuildThrottleRequest {})
        .await
        .unwrap()
        .into_inner()
        .bytes_per_second
}

fn permission_denied<T: std::fmt::Debug>(result: Result<T, tonic::Status>, what: &str) {
    match result {
        Err(status) => assert_eq!(
            status.code(),
            tonic::Code::PermissionDenied,
            "{what}: {status}"
        ),
        Ok(got) => panic!("{what} was allowed: {got:?}"),
    }
}

#[tokio::test]
async fn a_reader_reads_but_changes_nothing() {
    let pki = Pki::new();
    let r = daemon(&pki, &["v"]).await;
    let mut reader = mgmt(r.mgmt, &pki.security(&Identity::Reader))
        .await
        .unwrap();
    // Reads.
    let pool = reader
        .get_pool(GetPoolRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pool.name, POOL);
    let v = reader
        .get_volume(GetVolumeRequest { name: "v".into() })
        .await
        .unwrap()
        .into_inner();
    let listed = reader
        .list_volumes(ListVolumesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.volumes.len(), 1);
    reader
        .list_snapshots(ListSnapshotsRequest { volume: "v".into() })
        .await
        .unwrap();
    assert_eq!(throttle(&mut reader).await, 0);
    // Changes: refused, and nothing changed.
    permission_denied(
        reader
            .create_volume(CreateVolumeRequest {
                name: "x".into(),
                size_bytes: 1 << 20,
                ..Default::default()
            })
            .await,
        "CreateVolume",
    );
    assert!(r.pool.volume("x").is_err());
    permission_denied(
        reader
            .delete_volume(DeleteVolumeRequest {
                name: "v".into(),
                ..Default::default()
            })
            .await,
        "DeleteVolume",
    );
    assert!(r.pool.volume("v").is_ok());
    permission_denied(
        reader
            .grow_volume(GrowVolumeRequest {
                name: "v".into(),
                size_bytes: v.size_bytes * 2,
            })
            .await,
        "GrowVolume",
    );
    assert_eq!(
        r.pool.volume("v").unwrap().size_bytes().unwrap(),
        v.size_bytes
    );
    permission_denied(
        reader
            .set_rebuild_throttle(SetRebuildThrottleRequest {
                bytes_per_second: 1 << 20,
            })
            .await,
        "SetRebuildThrottle",
    );
    assert_eq!(throttle(&mut reader).await, 0);
    // An admin may (the control).
    let mut admin = mgmt(r.mgmt, &pki.security(&Identity::Admin)).await.unwrap();
    admin
        .set_rebuild_throttle(SetRebuildThrottleRequest {
            bytes_per_second: 1 << 20,
        })
        .await
        .unwrap();
    assert_eq!(throttle(&mut reader).await, 1 << 20);
    admin
        .create_volume(CreateVolumeRequest {
            name: "x".into(),
            size_bytes: 1 << 20,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(r.pool.volume("x").is_ok());
}

#[tokio::test]
async fn target_and_replica_identities_hold_no_management_right() {
    let pki = Pki::new();
    let r = daemon(&pki, &["v"]).await;
    for identity in [target("v"), replica_of("p2")] {
        let mut client = mgmt(r.mgmt, &pki.security(&identity)).await.unwrap();
        permission_denied(client.get_pool(GetPoolRequest {}).await, "GetPool");
        permission_denied(
            client
                .delete_volume(DeleteVolumeRequest {
                    name: "v".into(),
                    ..Default::default()
                })
                .await,
            "DeleteVolume",
        );
        assert!(r.pool.volume("v").is_ok(), "{identity} deleted the volume");
    }
}

// ------------------------------------------------------------ start, flags

async fn start_as(security: Security, pool: &str) -> Result<Daemon, DaemonError> {
    Daemon::start(&RunConfig {
        pool_name: pool.into(),
        // Never opened: the certificate is checked first.
        devices: vec!["/nonexistent/pool.img".into()],
        listen: "127.0.0.1:0".parse().unwrap(),
        mgmt_listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: None,
        rebuild_limit_bytes_per_sec: 0,
        checksum_cache_bytes: cstor_engine::limits::DEFAULT_CHECKSUM_CACHE_BYTES,
        shards: 1,
        io_mode: IoMode::Buffered,
        security,
    })
    .await
}

#[tokio::test]
async fn a_daemon_refuses_to_start_with_a_certificate_that_is_not_a_replica_of_its_pool() {
    let pki = Pki::new();
    for wrong in [replica_of("other"), target("v"), Identity::Admin] {
        match start_as(pki.security(&wrong), POOL).await {
            Err(DaemonError::WrongIdentity { identity, pool, .. }) => {
                assert_eq!((identity, pool.as_str()), (wrong, POOL));
            }
            Err(other) => panic!("{wrong}: refused for another reason: {other}"),
            Ok(_) => panic!("{wrong}: started"),
        }
    }
    // With its own certificate it goes on (and fails at the missing
    // device, which proves the certificate passed).
    match start_as(pki.security(&replica_of(POOL)), POOL).await {
        Err(DaemonError::Device { .. }) => {}
        Err(other) => panic!("refused: {other}"),
        Ok(_) => panic!("started without a device"),
    }
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
}

fn run_config(extra: &[&str]) -> Result<RunConfig, DaemonError> {
    let mut argv = vec!["replica", "--pool", POOL, "--pool-path", "/p.img"];
    argv.extend_from_slice(extra);
    Cli::try_parse_from(argv).unwrap().run.config()
}

#[test]
fn the_link_security_must_be_chosen_explicitly() {
    let pki = Pki::new();
    let dir = pki.dir(&replica_of(POOL));
    let dir = dir.to_str().unwrap();
    // Neither: an error that says what to give.
    match run_config(&[]) {
        Err(DaemonError::Security(e)) => {
            let message = e.to_string();
            assert!(
                message.contains("--tls-dir") && message.contains("--insecure-plaintext"),
                "{message}"
            );
        }
        other => panic!("{:?}", other.map(|c| c.security.describe())),
    }
    // Both: contradictory.
    assert!(run_config(&["--tls-dir", dir, "--insecure-plaintext"]).is_err());
    // A directory without credentials.
    assert!(run_config(&["--tls-dir", "/nonexistent"]).is_err());
    // Either one alone.
    let tls = run_config(&["--tls-dir", dir]).unwrap();
    assert!(!tls.security.is_plaintext());
    let plain = run_config(&["--insecure-plaintext"]).unwrap();
    assert!(plain.security.is_plaintext());
}

// ---------------------------------------------------------------- plaintext

#[tokio::test]
async fn a_plaintext_daemon_lets_everyone_in_and_says_so() {
    let r = replica(Security::Plaintext, POOL, &["v"]).await;
    let mut admin = mgmt(r.mgmt, &Security::Plaintext).await.unwrap();
    let pool = admin
        .get_pool(GetPoolRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(pool.insecure_plaintext);
    admin
        .set_rebuild_throttle(SetRebuildThrottleRequest {
            bytes_per_second: 7,
        })
        .await
        .unwrap();
    let mut conn = session(r.data, &Security::Plaintext, "v", 1).await;
    assert_eq!(
        call(&mut conn, 1, 1, write(0, 3)).await,
        Some(Message::Ack(Opcode::Write))
    );
    assert_refused(&r, POOL, "tls", 0).await;
}
