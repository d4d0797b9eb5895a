//! Shared by the tests of the target's secured links: a cluster CA and TLS
//! directories issued from it ([`Pki`]), and a fake replica daemon that
//! speaks the replication protocol over `cstor_tls` on real loopback TCP
//! ([`FakeReplica`]): enough of it for a volume to open, commit membership
//! records, take snapshots and list them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use cstor_proto::{
    FrameCodec, HelloAck, Membership, Message, Opcode, Packet, RebuildProgress, ReplicaState,
    SnapshotInfo, SnapshotListing, StatusReport,
};
use cstor_tls::issue::{write_tls_dir, CA_VALIDITY, CERT_VALIDITY};
use cstor_tls::{Ca, Identity, Security, Validity};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// The fake volume's geometry.
pub const VOLUME_BYTES: u64 = 1 << 20;
pub const BLOCK_BYTES: u32 = 4096;

/// A cluster CA and the TLS directories issued from it, under one
/// temporary directory (removed on drop).
pub struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
    issued: usize,
}

impl Pki {
    pub fn new() -> Pki {
        Pki {
            dir: tempfile::tempdir().unwrap(),
            ca: Ca::generate("test cluster", Validity::from_now(CA_VALIDITY)).unwrap(),
            issued: 0,
        }
    }

    fn next_dir(&mut self) -> PathBuf {
        self.issued += 1;
        self.dir.path().join(format!("tls-{}", self.issued))
    }

    fn load(dir: &std::path::Path) -> Security {
        Security::from_flags(Some(dir), false).unwrap()
    }

    /// Credentials of `identity` from this CA, valid for a year.
    pub fn security(&mut self, identity: &Identity) -> Security {
        let dir = self.next_dir();
        self.ca
            .issue_dir(identity, Validity::from_now(CERT_VALIDITY), &dir)
            .unwrap();
        Pki::load(&dir)
    }

    /// Credentials of `identity` from this CA whose certificate expired an
    /// hour ago (they still trust this CA).
    pub fn expired(&mut self, identity: &Identity) -> Security {
        let now = SystemTime::now();
        let validity = Validity {
            not_before: now - Duration::from_secs(48 * 3600),
            not_after: now - Duration::from_secs(3600),
        };
        let dir = self.next_dir();
        self.ca.issue_dir(identity, validity, &dir).unwrap();
        Pki::load(&dir)
    }

    /// Credentials of `identity` issued by another cluster's CA, that
    /// trust this CA: the peer's certificate is accepted, its own is not
    /// ours.
    pub fn foreign(&mut self, identity: &Identity) -> Security {
        let other = Ca::generate("another cluster", Validity::from_now(CA_VALIDITY)).unwrap();
        let issued = other
            .issue(identity, Validity::from_now(CERT_VALIDITY))
            .unwrap();
        let dir = self.next_dir();
        write_tls_dir(&dir, self.ca.cert_pem(), &issued).unwrap();
        Pki::load(&dir)
    }
}

pub fn target(volume: &str) -> Identity {
    Identity::Target {
        volumes: vec![volume.to_owned()],
    }
}

pub fn replica(pool: &str) -> Identity {
    Identity::Replica {
        pool: pool.to_owned(),
    }
}

/// What a fake replica saw.
#[derive(Default)]
pub struct Seen {
    /// Connections whose TLS handshake (or plaintext accept) succeeded.
    pub sessions: AtomicUsize,
    /// Connections whose handshake failed on this side.
    pub refused: AtomicUsize,
    /// `Hello`s received (probes and claims).
    pub hellos: AtomicUsize,
    /// `SnapshotCreate`s received.
    pub snapshot_creates: AtomicUsize,
    /// `MembershipSet`s received.
    pub membership_sets: AtomicUsize,
    highest_epoch: AtomicU64,
    membership: Mutex<Membership>,
    snapshots: Mutex<Vec<SnapshotInfo>>,
}

impl Seen {
    pub fn count(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::SeqCst)
    }
}

/// A replica daemon of one volume, faked: answers every request the
/// target's links send with success, keeping the membership record,
/// the snapshots and the highest epoch.
pub struct FakeReplica {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    stop: CancellationToken,
}

impl Drop for FakeReplica {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FakeReplica {
    /// Listens on loopback, securing every connection with `security`.
    pub async fn start(security: Security, replica_id: u128) -> FakeReplica {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let stop = CancellationToken::new();
        let (seen2, stop2) = (Arc::clone(&seen), stop.clone());
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    () = stop2.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, _)) => tcp,
                        Err(_) => continue,
                    },
                };
                let (security, seen, stop) = (security.clone(), Arc::clone(&seen2), stop2.clone());
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let stream = match security.accept(tcp).await {
                        Ok((stream, _peer)) => stream,
                        Err(_) => {
                            seen.refused.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    };
                    seen.sessions.fetch_add(1, Ordering::SeqCst);
                    let mut conn = Framed::new(stream, FrameCodec::new());
                    loop {
                        let frame = tokio::select! {
                            () = stop.cancelled() => return,
                            frame = conn.next() => frame,
                        };
                        let Some(Ok(frame)) = frame else { return };
                        let Ok(packet) = Packet::decode(frame) else {
                            return;
                        };
                        if let Some(reply) = answer(&seen, replica_id, &packet) {
                            if conn.send(reply).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        FakeReplica { addr, seen, stop }
    }
}

fn answer(seen: &Seen, replica_id: u128, packet: &Packet) -> Option<Packet> {
    let highest = seen.highest_epoch.load(Ordering::SeqCst);
    let ack = |op| Some(packet.reply(Message::Ack(op)));
    match &packet.message {
        Message::Hello(_) => {
            seen.hellos.fetch_add(1, Ordering::SeqCst);
            seen.highest_epoch.fetch_max(packet.epoch, Ordering::SeqCst);
            Some(packet.reply(Message::HelloAck(HelloAck {
                version: 1,
                replica_id,
                pool_guid: replica_id,
                state: ReplicaState::Healthy,
                last_durable_io_seq: 0,
                volume_size_bytes: VOLUME_BYTES,
                block_size_bytes: BLOCK_BYTES,
                highest_epoch_seen: highest,
            })))
        }
        Message::Status => Some(packet.reply(Message::StatusReport(StatusReport {
            state: ReplicaState::Healthy,
            last_durable_io_seq: 0,
            last_received_io_seq: 0,
            volume_size_bytes: VOLUME_BYTES,
            highest_epoch_seen: highest,
            rebuild: RebuildProgress::default(),
        }))),
        Message::MembershipGet => {
            Some(packet.reply(Message::Membership(seen.membership.lock().unwrap().clone())))
        }
        Message::MembershipSet(record) => {
            seen.membership_sets.fetch_add(1, Ordering::SeqCst);
            *seen.membership.lock().unwrap() = record.clone();
            ack(Opcode::MembershipSet)
        }
        Message::SnapshotCreate(name) => {
            seen.snapshot_creates.fetch_add(1, Ordering::SeqCst);
            seen.snapshots.lock().unwrap().push(SnapshotInfo {
                name: name.clone(),
                io_seq: packet.io_seq,
                created_unix_secs: 0,
                size_bytes: 0,
            });
            ack(Opcode::SnapshotCreate)
        }
        Message::SnapshotDestroy(name) => {
            seen.snapshots.lock().unwrap().retain(|s| &s.name != name);
            ack(Opcode::SnapshotDestroy)
        }
        Message::SnapshotList(_) => Some(packet.reply(Message::SnapshotListing(SnapshotListing {
            snapshots: seen.snapshots.lock().unwrap().clone(),
            more: false,
        }))),
        Message::Read(extent) => Some(packet.reply(Message::ReadData(Bytes::from(vec![
            0u8;
            extent.len_bytes
                as usize
        ])))),
        Message::Write(_) => ack(Opcode::Write),
        Message::Flush => ack(Opcode::Flush),
        Message::Unmap(_) => ack(Opcode::Unmap),
        Message::WriteZeroes(_) => ack(Opcode::WriteZeroes),
        Message::Resize { .. } => ack(Opcode::Resize),
        Message::Heartbeat => ack(Opcode::Heartbeat),
        Message::RebuildStart(_) => ack(Opcode::RebuildStart),
        Message::RebuildThrottle { .. } => ack(Opcode::RebuildThrottle),
        _ => None,
    }
}
