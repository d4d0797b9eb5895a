//! Secure by default, across real processes on real TCP (docs/security.md):
//! three `cstor replica run` daemons and a `cstor target` with mutual TLS,
//! serving a volume to an initiator whose writes are read back and checked
//! all along.
//!
//! - An attacker without the cluster's credentials — plain TCP, and TLS
//!   with a certificate of another CA (that also trusts the cluster's CA,
//!   whose certificate is public) — tries what would take the volume: a
//!   probe and a rebuild stream out of a replica, a `Hello` with a higher
//!   epoch (fencing the real target), a forged membership record, and on
//!   the management APIs a lower CF, removing and adding replicas, opening
//!   the initiator allowlist, a snapshot, deleting a volume replica. A
//!   target certificate for another volume and a replica certificate may
//!   not claim the volume either, and a reader may not change anything
//!   (PERMISSION_DENIED). Afterwards nothing changed: the target serves
//!   3/3 healthy, read-write, unfenced, at the same epoch, membership, CF,
//!   allowlist and snapshots, and every acknowledged write reads back.
//! - Rotation: every certificate is replaced by one of a new CA while the
//!   volume is served; once the processes reloaded (a new-CA client gets
//!   answers, an old-CA one does not), a replica killed with SIGKILL and
//!   restarted relinks and is rebuilt — new handshakes on both ends, the
//!   target's and the rebuild source's — and the volume ends 3/3 healthy
//!   with every write intact.
//!
//! Timeouts are hang guards, not timing assertions.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{
    free_addr, pattern, rand_u64, replica_states, target_status, wait_target_status, IscsiSession,
    ReplicaProcess, TargetProcess, TestPki,
};
use cstor_mgmt::v1::replica_manager_client::ReplicaManagerClient;
use cstor_mgmt::v1::target_manager_client::TargetManagerClient;
use cstor_mgmt::v1::{
    AddReplicaRequest, CreateSnapshotRequest, DeleteVolumeRequest, GetAllowedInitiatorsRequest,
    GetPoolRequest, GetTargetStatusRequest, ListTargetSnapshotsRequest, ListVolumesRequest,
    RemoveReplicaRequest, SetAllowedInitiatorsRequest, SetConsistencyFactorRequest,
};
use cstor_proto::{
    Auth, FrameCodec, Hello, Member, Membership, Message, Name, Packet, RebuildSource,
    RebuildStart, VersionRange,
};
use cstor_tls::{Credentials, Identity, Role, Security};
use futures::{SinkExt, StreamExt};
use tokio_util::codec::Framed;

const VOLUME: &str = "vol";
const INITIATOR: &str = "iqn.2026-11.io.cstor.test:security";
/// Blocks the load writes (8 MiB of 4 KiB blocks); a power of two.
const BLOCKS: u64 = 2048;
/// Hang guard of a state change (start, reload, rebuild).
const GUARD: Duration = Duration::from_secs(90);
/// How long an attacker listens for an answer after its last frame.
const LISTEN: Duration = Duration::from_secs(2);

/// Three replica daemons and a target serving `VOLUME`, all mutual TLS
/// with the test's CA.
struct Cluster {
    _dir: tempfile::TempDir,
    pki: TestPki,
    reps: Vec<ReplicaProcess>,
    target: TargetProcess,
    mgmt: SocketAddr,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let reps: Vec<ReplicaProcess> = (0..3)
            .map(|i| {
                let sub = dir.path().join(format!("r{i}"));
                std::fs::create_dir_all(&sub).unwrap();
                let r = ReplicaProcess::create(&sub, "256MiB");
                r.ctl(&["volume", "create", VOLUME, "--size", "64MiB"]);
                r
            })
            .collect();
        let mgmt = free_addr();
        let data: Vec<SocketAddr> = reps.iter().map(|r| r.data).collect();
        let target = TargetProcess::start_with(
            dir.path(),
            free_addr(),
            VOLUME,
            &data,
            &[
                "--mgmt-listen",
                &mgmt.to_string(),
                "--allow-initiator",
                INITIATOR,
            ],
            &[],
        );
        let pki = target.pki.clone();
        let cluster = Cluster {
            _dir: dir,
            pki,
            reps,
            target,
            mgmt,
        };
        cluster.wait_healthy("three healthy replicas");
        cluster
    }

    fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// Blocks (off the async workers) until the target reports three
    /// healthy replicas; the status then.
    fn wait_healthy(&self, what: &str) -> serde_json::Value {
        tokio::task::block_in_place(|| {
            wait_target_status(&self.pki, self.mgmt, what, GUARD, |s| {
                replica_states(s) == ["healthy", "healthy", "healthy"]
            })
        })
    }

    fn status(&self) -> serde_json::Value {
        tokio::task::block_in_place(|| target_status(&self.pki, self.mgmt).unwrap())
    }
}

/// An initiator's session writing single blocks of `0..BLOCKS` (a stride
/// that visits every block) at queue depth 1, reading back the block it
/// wrote before each write and checking it holds the generation that was
/// acknowledged: the volume is verified while it is attacked or rotated.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
    acked: Arc<Mutex<Vec<u64>>>,
    task: tokio::task::JoinHandle<IscsiSession>,
}

impl Load {
    async fn start(target: &TargetProcess) -> Load {
        Load::start_at(target.portal, &target.iqn).await
    }

    /// The load on the target at `portal` serving `iqn`.
    pub(crate) async fn start_at(portal: SocketAddr, iqn: &str) -> Load {
        let mut session = IscsiSession::login_retrying(portal, iqn, INITIATOR, GUARD).await;
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let acked = Arc::new(Mutex::new(vec![0u64; BLOCKS as usize]));
        let (s, w, a) = (Arc::clone(&stop), Arc::clone(&writes), Arc::clone(&acked));
        let task = tokio::spawn(async move {
            let block = session.block_size as usize;
            let mut previous: Option<u64> = None;
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                i += 1;
                // 97 is coprime with BLOCKS (a power of two).
                let lba = i * 97 % BLOCKS;
                if let Some(p) = previous {
                    let want = a.lock().unwrap()[p as usize];
                    let read = session.read(p, 1).await.unwrap();
                    assert!(read.is_good(), "read of block {p}: {read:?}");
                    assert!(
                        read.data == pattern(p, want, block).as_ref(),
                        "block {p} does not hold generation {want}"
                    );
                }
                let done = session
                    .write(lba, pattern(lba, i, block))
                    .await
                    .unwrap_or_else(|e| panic!("write of block {lba}: {e}"));
                assert!(done.is_good(), "write of block {lba}: {done:?}");
                a.lock().unwrap()[lba as usize] = i;
                previous = Some(lba);
                w.fetch_add(1, Ordering::Relaxed);
            }
            session
        });
        Load {
            stop,
            writes,
            acked,
            task,
        }
    }

    /// Waits for `more` writes acknowledged (and the block before each
    /// verified) since the call.
    pub(crate) async fn wait_writes(&self, more: u64) {
        let goal = self.writes.load(Ordering::Relaxed) + more;
        let deadline = Instant::now() + GUARD;
        while self.writes.load(Ordering::Relaxed) < goal {
            assert!(!self.task.is_finished(), "the load stopped (see its panic)");
            assert!(Instant::now() < deadline, "writes stalled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the load and reads every block back (twice: reads may be
    /// served by different replicas).
    pub(crate) async fn finish_and_verify(self) {
        self.stop.store(true, Ordering::Relaxed);
        let mut session = self.task.await.unwrap();
        assert!(session.sync_cache().await.unwrap().is_good());
        let acked = self.acked.lock().unwrap().clone();
        let block = session.block_size as usize;
        for _ in 0..2 {
            for first in (0..BLOCKS).step_by(256) {
                let done = session.read(first, 256).await.unwrap();
                assert!(done.is_good(), "read at {first}: {done:?}");
                for (b, got) in done.data.chunks(block).enumerate() {
                    let lba = first + b as u64;
                    let want = acked[lba as usize];
                    let expected = if want == 0 {
                        vec![0u8; block]
                    } else {
                        pattern(lba, want, block).to_vec()
                    };
                    assert!(got == expected, "block {lba}: not generation {want}");
                }
            }
        }
    }
}

/// Credentials of another cluster: a certificate of `identity` from a CA
/// of its own (in `dir`), trusting that CA and also the real cluster's
/// (a CA certificate is public): the attacker's client accepts the real
/// servers, so what is tested is that they refuse it.
fn outsider(real: &TestPki, dir: &Path, identity: &Identity) -> Security {
    let other = TestPki::new(dir);
    let tls = other.dir_of(identity);
    let mut trusted = std::fs::read_to_string(tls.join("ca.crt")).unwrap();
    trusted.push_str(&std::fs::read_to_string(real.ca_dir().join("ca.crt")).unwrap());
    std::fs::write(tls.join("ca.crt"), trusted).unwrap();
    Security::Tls(Credentials::load(&tls).unwrap())
}

/// What a peer secured by `security` gets from the replica at `addr` for a
/// `Hello` on `volume` at `epoch` followed by `then` (sent without waiting
/// for answers): every frame that came back before the connection closed
/// or fell silent. Empty when the replica refused the peer.
async fn data_port_attempt(
    security: &Security,
    addr: SocketAddr,
    epoch: u64,
    then: Vec<Message>,
) -> Vec<Packet> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let Ok((stream, _)) = security.connect(tcp, &[Role::Replica]).await else {
        return Vec::new();
    };
    let mut conn = Framed::new(stream, FrameCodec::new());
    let session_id = rand_u64();
    let hello = Message::Hello(Hello {
        versions: VersionRange::SUPPORTED,
        volume: Name::new(VOLUME).unwrap(),
        next_io_seq: 1,
        auth: Auth::None,
    });
    for (io_seq, message) in (1u64..).zip(std::iter::once(hello).chain(then)) {
        let packet = Packet {
            session_id,
            epoch,
            io_seq,
            message,
        };
        if conn.send(packet).await.is_err() {
            break;
        }
    }
    let mut answers = Vec::new();
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(LISTEN, conn.next()).await {
        match Packet::decode(frame) {
            Ok(packet) => answers.push(packet),
            Err(e) => panic!("an undecodable frame from {addr}: {e}"),
        }
    }
    answers
}

/// A request to pull the whole live volume from the replica it is sent to.
fn rebuild_pull() -> Message {
    Message::RebuildStart(RebuildStart {
        peer_address: "127.0.0.1:9".into(),
        volume: Name::new(VOLUME).unwrap(),
        from_io_seq: 0,
        source: RebuildSource::Live,
    })
}

/// A forged record: CF 1 and a single member of the attacker's.
fn forged_membership() -> Message {
    Message::MembershipSet(Membership {
        generation: 1 << 40,
        consistency_factor: 1,
        members: vec![Member {
            replica_id: 0xbad,
            address: "127.0.0.1:9".into(),
        }],
    })
}

/// The answers, one short line each (a rebuild chunk's data left out).
fn summary(answers: &[Packet]) -> Vec<String> {
    answers
        .iter()
        .map(|p| {
            let text = format!("{:?}", p.message);
            text.chars().take(120).collect()
        })
        .collect()
}

/// Whether every answer is an error reply (a refusal), none carrying data,
/// a state or an acknowledgement.
fn all_refusals(answers: &[Packet]) -> bool {
    answers
        .iter()
        .all(|p| matches!(p.message, Message::Error(_)))
}

/// A management call's result as an attacker sees it: `None` when it went
/// through, else why not (the gRPC code; `Unavailable` when the
/// connection itself was refused).
type Attempt = Option<tonic::Code>;

fn outcome<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Attempt {
    result.err().map(|s| s.code())
}

/// Every mutation an attacker would make on the target's management API,
/// each on a connection of its own; what each came to.
async fn target_mgmt_attempts(
    security: &Security,
    mgmt: SocketAddr,
    member: SocketAddr,
) -> Vec<(&'static str, Attempt)> {
    let client = || async {
        cstor_tls::grpc::channel(&mgmt.to_string(), security, &[Role::Target])
            .await
            .ok()
            .map(TargetManagerClient::new)
    };
    let mut results = Vec::new();
    let Some(mut c) = client().await else {
        return vec![("connect", Some(tonic::Code::Unavailable))];
    };
    results.push((
        "SetConsistencyFactor",
        outcome(
            c.set_consistency_factor(SetConsistencyFactorRequest {
                consistency_factor: 1,
            })
            .await,
        ),
    ));
    if let Some(mut c) = client().await {
        results.push((
            "RemoveReplica",
            outcome(
                c.remove_replica(RemoveReplicaRequest {
                    replica: member.to_string(),
                })
                .await,
            ),
        ));
    }
    if let Some(mut c) = client().await {
        results.push((
            "AddReplica",
            outcome(
                c.add_replica(AddReplicaRequest {
                    address: "127.0.0.1:9".into(),
                })
                .await,
            ),
        ));
    }
    if let Some(mut c) = client().await {
        results.push((
            "SetAllowedInitiators",
            outcome(
                c.set_allowed_initiators(SetAllowedInitiatorsRequest {
                    initiators: vec!["iqn.2026-11.io.attacker:node".into()],
                    allow_any: false,
                })
                .await,
            ),
        ));
    }
    if let Some(mut c) = client().await {
        results.push((
            "CreateSnapshot",
            outcome(
                c.create_snapshot(CreateSnapshotRequest {
                    name: "attacker".into(),
                })
                .await,
            ),
        ));
    }
    results
}

/// DeleteVolume (forced: even a volume in use) on a replica's management
/// API; what it came to.
async fn delete_volume_attempt(security: &Security, mgmt: SocketAddr) -> Attempt {
    let channel = cstor_tls::grpc::channel(&mgmt.to_string(), security, &[Role::Replica]).await;
    let Ok(channel) = channel else {
        return Some(tonic::Code::Unavailable);
    };
    outcome(
        ReplicaManagerClient::new(channel)
            .delete_volume(DeleteVolumeRequest {
                name: VOLUME.into(),
                force: true,
            })
            .await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attackers_without_the_clusters_credentials_change_nothing_and_read_nothing() {
    let cluster = Cluster::start();
    let load = Load::start(&cluster.target).await;
    load.wait_writes(100).await;
    let before = cluster.status();
    let epoch = before["epoch"].as_u64().unwrap();
    let admin = cluster.pki.admin();
    let mut target_api = TargetManagerClient::new(
        crate::common::mgmt_channel(&admin, cluster.mgmt, Role::Target).await,
    );
    let allowed_before = target_api
        .get_allowed_initiators(GetAllowedInitiatorsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(allowed_before.initiators, vec![INITIATOR.to_owned()]);

    let outsiders = [
        ("plain TCP", Security::Plaintext),
        (
            "another CA's target certificate",
            outsider(
                &cluster.pki,
                &cluster.dir().join("outsider"),
                &Identity::Target {
                    volumes: vec![VOLUME.into()],
                },
            ),
        ),
        (
            "another CA's admin certificate",
            outsider(
                &cluster.pki,
                &cluster.dir().join("outsider"),
                &Identity::Admin,
            ),
        ),
    ];
    let data = cluster.reps[0].data;
    for (who, security) in &outsiders {
        // Read the volume: a probe, then a rebuild stream out of it.
        let answers = data_port_attempt(security, data, 0, vec![rebuild_pull()]).await;
        assert!(
            answers.is_empty(),
            "{who} got answers to a probe: {:?}",
            summary(&answers)
        );
        // Fence the real target, then steer the volume.
        for r in &cluster.reps {
            let answers =
                data_port_attempt(security, r.data, epoch + 1, vec![forged_membership()]).await;
            assert!(
                answers.is_empty(),
                "{who} got answers to a claim: {:?}",
                summary(&answers)
            );
        }
        // The management APIs.
        for (call, result) in
            target_mgmt_attempts(security, cluster.mgmt, cluster.reps[2].data).await
        {
            assert!(result.is_some(), "{who}: {call} went through");
        }
        for r in &cluster.reps {
            assert!(
                delete_volume_attempt(security, r.mgmt).await.is_some(),
                "{who}: DeleteVolume went through"
            );
        }
    }

    // Certificates of this cluster, but not for this volume: a target of
    // another volume and a replica may not claim it.
    for (who, identity) in [
        (
            "a target of another volume",
            Identity::Target {
                volumes: vec!["other".into()],
            },
        ),
        (
            "a replica",
            Identity::Replica {
                pool: crate::common::TEST_POOL.into(),
            },
        ),
        ("the reader", Identity::Reader),
    ] {
        let security = cluster.pki.security(&identity);
        let answers =
            data_port_attempt(&security, data, epoch + 1, vec![forged_membership()]).await;
        assert!(
            all_refusals(&answers),
            "{who} claimed the volume: {:?}",
            summary(&answers)
        );
    }

    // A reader reads, and may not change anything.
    let reader = cluster.pki.reader();
    let mut as_reader = TargetManagerClient::new(
        crate::common::mgmt_channel(&reader, cluster.mgmt, Role::Target).await,
    );
    assert!(as_reader
        .get_status(GetTargetStatusRequest {})
        .await
        .is_ok());
    for (call, result) in target_mgmt_attempts(&reader, cluster.mgmt, cluster.reps[2].data).await {
        assert_eq!(
            result,
            Some(tonic::Code::PermissionDenied),
            "reader: {call}"
        );
    }
    let mut replica_as_reader = ReplicaManagerClient::new(
        crate::common::mgmt_channel(&reader, cluster.reps[0].mgmt, Role::Replica).await,
    );
    assert!(replica_as_reader
        .list_volumes(ListVolumesRequest {})
        .await
        .is_ok());
    assert_eq!(
        delete_volume_attempt(&reader, cluster.reps[0].mgmt).await,
        Some(tonic::Code::PermissionDenied)
    );

    // Nothing changed, and the volume is still served and verified.
    load.wait_writes(100).await;
    let after = cluster.status();
    assert_eq!(after["fenced"], false, "{after}");
    assert_eq!(after["read_only"], false, "{after}");
    assert_eq!(after["healthy"], 3, "{after}");
    for field in ["epoch", "membership_generation", "consistency_factor"] {
        assert_eq!(after[field], before[field], "{field}: {after}");
    }
    assert_eq!(after["replicas"].as_array().unwrap().len(), 3, "{after}");
    for (i, r) in cluster.reps.iter().enumerate() {
        assert_eq!(after["replicas"][i]["address"], r.data.to_string().as_str());
    }
    let allowed = target_api
        .get_allowed_initiators(GetAllowedInitiatorsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(allowed, allowed_before);
    let snapshots = target_api
        .list_snapshots(ListTargetSnapshotsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(snapshots.snapshots.is_empty(), "{snapshots:?}");
    for r in &cluster.reps {
        let volumes = r
            .mgmt_client()
            .await
            .list_volumes(ListVolumesRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(
            volumes.volumes.iter().any(|v| v.name == VOLUME),
            "{VOLUME} is gone from {}",
            r.data
        );
    }
    load.finish_and_verify().await;
}

/// Whether `security` gets answers from the target's and every replica's
/// management API.
async fn answered_by_all(cluster: &Cluster, security: &Security) -> bool {
    let target =
        cstor_tls::grpc::channel(&cluster.mgmt.to_string(), security, &[Role::Target]).await;
    let Ok(target) = target else {
        return false;
    };
    if TargetManagerClient::new(target)
        .get_status(GetTargetStatusRequest {})
        .await
        .is_err()
    {
        return false;
    }
    for r in &cluster.reps {
        let Ok(channel) =
            cstor_tls::grpc::channel(&r.mgmt.to_string(), security, &[Role::Replica]).await
        else {
            return false;
        };
        if ReplicaManagerClient::new(channel)
            .get_pool(GetPoolRequest {})
            .await
            .is_err()
        {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_certificate_replaced_by_a_new_cas_and_a_killed_replica_relinks_and_rebuilds() {
    let mut cluster = Cluster::start();
    let load = Load::start(&cluster.target).await;
    load.wait_writes(100).await;
    let old_admin = cluster.pki.admin();

    // Every TLS directory (the replicas', the target's, admin, reader):
    // a new CA, and new certificates and keys from it.
    cluster.pki.rotate_ca();
    let new_admin = cluster.pki.admin();
    // Every process reloads at its next poll: then a client of the new CA
    // gets answers everywhere and one of the old CA nowhere.
    let deadline = Instant::now() + GUARD;
    while !answered_by_all(&cluster, &new_admin).await {
        assert!(
            Instant::now() < deadline,
            "the new certificates were never taken up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let old_target =
        cstor_tls::grpc::channel(&cluster.mgmt.to_string(), &old_admin, &[Role::Target]).await;
    let refused = match old_target {
        Err(_) => true,
        Ok(channel) => TargetManagerClient::new(channel)
            .get_status(GetTargetStatusRequest {})
            .await
            .is_err(),
    };
    assert!(refused, "the target still takes the old CA's certificates");
    // The links made before the rotation go on: the volume is served.
    load.wait_writes(100).await;
    assert_eq!(cluster.status()["healthy"], 3);

    // A replica killed and restarted: every handshake from now on is of
    // the new CA, the target's to it and its own to the rebuild source.
    cluster.reps[1].kill9();
    let killed = cluster.reps[1].data.to_string();
    tokio::task::block_in_place(|| {
        wait_target_status(
            &cluster.pki,
            cluster.mgmt,
            "the killed replica out",
            GUARD,
            |s| {
                s["replicas"].as_array().is_some_and(|r| {
                    r.iter()
                        .any(|x| x["address"] == killed.as_str() && x["state"] != "healthy")
                })
            },
        )
    });
    load.wait_writes(100).await;
    cluster.reps[1].start();
    cluster.wait_healthy("the restarted replica healthy again");
    cluster.reps[1].finished_rebuild(VOLUME).await;
    load.wait_writes(100).await;
    let status = cluster.status();
    assert_eq!(status["fenced"], false, "{status}");
    assert_eq!(status["read_only"], false, "{status}");
    load.finish_and_verify().await;
}
