//! The link against a fake replica over real loopback TCP.

use std::time::Duration;

use bytes::Bytes;
use cstor_proto::{
    FrameCodec, HelloAck, Membership, Message, Packet, RebuildProgress, RebuildSource,
    RebuildStart, ReplicaState, StatusReport, Write,
};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::*;

const WAIT: Duration = Duration::from_secs(10);

fn ack() -> HelloAck {
    HelloAck {
        version: 1,
        replica_id: 42,
        pool_guid: 7,
        state: ReplicaState::Healthy,
        last_durable_io_seq: 0,
        volume_size_bytes: 1 << 20,
        block_size_bytes: 4096,
        highest_epoch_seen: 0,
    }
}

fn status() -> StatusReport {
    StatusReport {
        state: ReplicaState::Healthy,
        last_durable_io_seq: 0,
        last_received_io_seq: 0,
        volume_size_bytes: 1 << 20,
        highest_epoch_seen: 0,
        rebuild: RebuildProgress::default(),
    }
}

type Fake = Framed<tokio::net::TcpStream, FrameCodec>;

async fn next_packet(conn: &mut Fake) -> Option<Packet> {
    let frame = tokio::time::timeout(WAIT, conn.next()).await.ok()??.ok()?;
    Packet::decode(frame).ok()
}

/// Answers the link's Hello; `before_ack` is awaited between the Hello and
/// its answer (the test queues commands meanwhile).
async fn handshake(conn: &mut Fake, before_ack: Option<oneshot::Receiver<()>>) {
    let hello = next_packet(conn).await.expect("hello");
    assert!(matches!(hello.message, Message::Hello(_)));
    if let Some(gate) = before_ack {
        let _ = gate.await;
    }
    conn.send(hello.reply(Message::HelloAck(ack())))
        .await
        .unwrap();
    let st = next_packet(conn).await.expect("status");
    conn.send(st.reply(Message::StatusReport(status())))
        .await
        .unwrap();
    let mg = next_packet(conn).await.expect("membership get");
    conn.send(mg.reply(Message::Membership(Membership::none())))
        .await
        .unwrap();
}

fn write_packet(io_seq: u64) -> Packet {
    Packet {
        session_id: 9,
        epoch: 1,
        io_seq,
        message: Message::Write(Write {
            offset: 0,
            data: Bytes::from(vec![0xAB; 4096]),
            fua: false,
        }),
    }
}

fn rebuild_start(io_seq: u64) -> Packet {
    Packet {
        session_id: 9,
        epoch: 1,
        io_seq,
        message: Message::RebuildStart(RebuildStart {
            peer_address: "127.0.0.1:1".into(),
            volume: Name::new("v".to_owned()).unwrap(),
            from_io_seq: 0,
            source: RebuildSource::Live,
        }),
    }
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<LinkEvent>) -> LinkEvent {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("an event in time")
        .expect("the link is running")
}

/// A link task for replica 0 of volume "v" dialling a listener of the
/// test's (the fake replica), with the channels a driver holds.
struct Link {
    listener: TcpListener,
    commands: mpsc::Sender<LinkCommand>,
    resets: tokio::sync::watch::Sender<Option<Reset>>,
    events: mpsc::UnboundedReceiver<LinkEvent>,
    stop: CancellationToken,
}

impl Link {
    async fn spawn() -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (commands_tx, commands) = mpsc::channel(16);
        let (resets_tx, resets) = tokio::sync::watch::channel(None);
        let (events_tx, events) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let params = SessionParams {
            volume: "v".into(),
            epoch: 1,
            session_id: 9,
            first_io_seq: 100,
            security: Security::Plaintext,
        };
        tokio::spawn(run(
            0,
            addr,
            params,
            commands,
            resets,
            events_tx,
            stop.clone(),
        ));
        Link {
            listener,
            commands: commands_tx,
            resets: resets_tx,
            events,
            stop,
        }
    }
}

#[tokio::test]
async fn a_write_meant_for_a_dead_connection_never_reaches_the_next_one_before_its_rebuild_start() {
    let link = Link::spawn().await;
    let (listener, commands_tx, mut events, stop) =
        (link.listener, link.commands, link.events, link.stop);

    // First connection: claimed, then cut by the replica.
    let (stream, _) = listener.accept().await.unwrap();
    let mut first = Framed::new(stream, FrameCodec::new());
    handshake(&mut first, None).await;
    let LinkEvent::Up { generation: 1, .. } = next_event(&mut events).await else {
        panic!("expected Up of connection 1");
    };
    drop(first);

    // The link redials; while the second claim is in progress, a driver
    // that has not yet seen the first connection go down sends a write
    // decided for it.
    let (stream, _) = listener.accept().await.unwrap();
    let mut second = Framed::new(stream, FrameCodec::new());
    let (gate_tx, gate) = oneshot::channel();
    let fake = tokio::spawn(async move {
        handshake(&mut second, Some(gate)).await;
        let first_frame = next_packet(&mut second).await;
        (first_frame, second)
    });
    let stale = commands_tx.try_send(LinkCommand::Send {
        generation: 1,
        packet: write_packet(150),
    });
    assert!(stale.is_ok());
    let _ = gate_tx.send(());

    // The driver learns of the down and the new connection, and the
    // controller decides the new connection starts with a rebuild.
    let mut not_sent = Vec::new();
    let generation = loop {
        match next_event(&mut events).await {
            LinkEvent::Up { generation, .. } => break generation,
            LinkEvent::NotSent {
                generation, io_seq, ..
            } => not_sent.push((generation, io_seq)),
            _ => {}
        }
    };
    assert_eq!(generation, 2);
    let _ = commands_tx.try_send(LinkCommand::Send {
        generation,
        packet: rebuild_start(200),
    });

    let (first_frame, _second) = tokio::time::timeout(WAIT, fake).await.unwrap().unwrap();
    let first_frame = first_frame.expect("a frame on the new connection");
    assert!(
        matches!(first_frame.message, Message::RebuildStart(_)),
        "the first frame on the new connection must be its RebuildStart, got io_seq {} {:?}",
        first_frame.io_seq,
        first_frame.message.wire_opcode()
    );
    // The stale write was reported back as not sent, for its connection.
    while not_sent.is_empty() {
        if let LinkEvent::NotSent {
            generation, io_seq, ..
        } = next_event(&mut events).await
        {
            not_sent.push((generation, io_seq));
        }
    }
    assert_eq!(not_sent, vec![(1, 150)]);
    stop.cancel();
}

#[tokio::test]
async fn a_reset_closes_only_the_connection_it_was_decided_for() {
    let link = Link::spawn().await;
    let (listener, resets_tx, mut events, stop) =
        (link.listener, link.resets, link.events, link.stop);
    let (stream, _) = listener.accept().await.unwrap();
    let mut first = Framed::new(stream, FrameCodec::new());
    handshake(&mut first, None).await;
    assert!(matches!(
        next_event(&mut events).await,
        LinkEvent::Up { generation: 1, .. }
    ));
    // A reset decided for a connection before this one: ignored.
    resets_tx.send_replace(Some(Reset {
        generation: 0,
        pause: Duration::ZERO,
    }));
    let open_for = tokio::time::Instant::now() + Duration::from_millis(300);
    while let Ok(frame) = tokio::time::timeout_at(open_for, first.next()).await {
        // Heartbeats only: the connection stays open.
        assert!(
            frame.is_some_and(|f| f.is_ok()),
            "the connection stays open"
        );
    }
    // Its own reset closes it, and the link says which connection went down.
    resets_tx.send_replace(Some(Reset {
        generation: 1,
        pause: Duration::ZERO,
    }));
    loop {
        match tokio::time::timeout(WAIT, first.next()).await {
            Ok(Some(Ok(_))) => continue,
            Ok(_) => break,
            Err(_) => panic!("the link did not close its connection"),
        }
    }
    assert!(matches!(
        next_event(&mut events).await,
        LinkEvent::Down { generation: 1, .. }
    ));
    stop.cancel();
}

#[test]
fn link_errors_read_as_the_reasons_the_link_always_gave() {
    use cstor_proto::Status;
    let cases: Vec<(LinkError, &str)> = vec![
        (LinkError::Closed, "connection closed"),
        (
            LinkError::VersionMismatch(VersionRange { min: 3, max: 4 }),
            "no common protocol version: replica speaks 3..=4",
        ),
        (LinkError::StaleEpoch("epoch 9 > 7".into()), "epoch 9 > 7"),
        (
            LinkError::HelloRefused {
                status: Status::BadRequest,
                detail: "no".into(),
            },
            "BadRequest: no",
        ),
        (
            LinkError::StatusRefused {
                status: Status::BadRequest,
                detail: "no".into(),
            },
            "status: BadRequest: no",
        ),
        (
            LinkError::MembershipRefused {
                status: Status::BadRequest,
                detail: "no".into(),
            },
            "membership: BadRequest: no",
        ),
        (
            LinkError::Unexpected {
                request: "Status",
                opcode: 0x12,
            },
            "unexpected answer to Status: 0x0012",
        ),
        (
            LinkError::HandshakeTimeout(Duration::from_secs(5)),
            "no handshake within 5s",
        ),
        (LinkError::ProbeTimeout, "probe timed out"),
    ];
    for (error, text) in cases {
        assert_eq!(error.to_string(), text);
    }
}

#[tokio::test]
async fn a_link_never_claims_with_an_epoch_outside_the_claimable_range() {
    for epoch in [0, u64::MAX] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_commands, commands_rx) = mpsc::channel(16);
        let (_resets, resets_rx) = tokio::sync::watch::channel(None);
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let params = SessionParams {
            volume: "v".into(),
            epoch,
            session_id: 9,
            first_io_seq: 100,
            security: Security::Plaintext,
        };
        let link = tokio::spawn(run(
            0,
            addr,
            params,
            commands_rx,
            resets_rx,
            events_tx,
            CancellationToken::new(),
        ));
        // Fenced for good: the task ends, and it never dialled.
        match next_event(&mut events).await {
            LinkEvent::Fenced { replica: 0, detail } => {
                assert!(detail.contains(&epoch.to_string()), "{detail}");
            }
            other => panic!("epoch {epoch}: {other:?}"),
        }
        tokio::time::timeout(WAIT, link).await.unwrap().unwrap();
        assert!(
            futures::FutureExt::now_or_never(listener.accept()).is_none(),
            "epoch {epoch}: the link dialled"
        );
    }
}

#[test]
fn a_link_carries_only_what_was_decided_for_its_current_connection() {
    assert!(carries(2, 2));
    assert!(!carries(2, 1), "decided for an earlier connection");
    assert!(!carries(1, 2));
    assert!(!carries(0, 1), "no connection yet");
}
