//! Every link of the target authenticated (docs/security.md, "What each
//! port accepts"): its management API refuses callers without a
//! certificate of the cluster's CA and calls their identity has no right
//! to; its replica links refuse replicas that are not the cluster's
//! replicas. Real loopback TCP, the real `cstor_tls`, fake replica daemons
//! (`tls_support`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod tls_support;

use std::net::SocketAddr;
use std::time::Duration;

use cstor_mgmt::v1::target_manager_client::TargetManagerClient;
use cstor_mgmt::v1::{
    AddReplicaRequest, CreateSnapshotRequest, DeleteSnapshotRequest, GetAllowedInitiatorsRequest,
    GetTargetRebuildThrottleRequest, GetTargetStatusRequest, ListTargetSnapshotsRequest,
    RemoveReplicaRequest, ResizeRequest, SetAllowedInitiatorsRequest, SetConsistencyFactorRequest,
    SetTargetRebuildThrottleRequest, TargetReplicaState, TargetStatus,
};
use cstor_target::mgmt;
use cstor_target::volume::link::{self, LinkError};
use cstor_target::volume::{OpenError, ReplicaState, Volume, VolumeSpec};
use cstor_tls::{Identity, Role, Security};
use tls_support::{replica, target, FakeReplica, Pki, Seen, VOLUME_BYTES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::Code;

const VOLUME: &str = "vol";
/// Bound on every wait for something that should happen.
const WAIT: Duration = Duration::from_secs(20);

/// A target of [`VOLUME`] over three fake replicas (CF 2), its management
/// API on loopback, and a fourth replica that is no member (for
/// AddReplica).
struct Target {
    volume: Volume,
    mgmt: SocketAddr,
    replicas: Vec<FakeReplica>,
    spare: FakeReplica,
    stop: CancellationToken,
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop.cancel();
        self.volume.close();
    }
}

async fn start_replicas(pki: &mut Pki, n: u128) -> Vec<FakeReplica> {
    let mut replicas = Vec::new();
    for i in 0..n {
        let security = pki.security(&replica(&format!("pool-{i}")));
        replicas.push(FakeReplica::start(security, 100 + i).await);
    }
    replicas
}

fn spec(replicas: &[&FakeReplica], security: Security) -> VolumeSpec {
    let mut spec = VolumeSpec::new(VOLUME, replicas.iter().map(|r| r.addr).collect(), security);
    spec.cf = Some(2);
    spec.open_timeout = Duration::from_secs(3);
    spec
}

/// Waits (bounded) until the volume's status satisfies `pred`.
async fn until(volume: &Volume, pred: impl Fn(&cstor_target::volume::VolumeStatus) -> bool) {
    tokio::time::timeout(WAIT, volume.wait_for(pred))
        .await
        .expect("the volume reached the state in time");
}

impl Target {
    /// With mutual TLS: every replica and the target hold certificates of
    /// `pki`.
    async fn start(pki: &mut Pki) -> Target {
        let replicas = start_replicas(pki, 3).await;
        let spare = FakeReplica::start(pki.security(&replica("pool-spare")), 200).await;
        Target::serve(pki.security(&target(VOLUME)), replicas, spare).await
    }

    async fn serve(security: Security, replicas: Vec<FakeReplica>, spare: FakeReplica) -> Target {
        let members: Vec<&FakeReplica> = replicas.iter().collect();
        let volume = Volume::open(spec(&members, security.clone()))
            .await
            .unwrap();
        // Open, every replica healthy, the first membership record written.
        until(&volume, |s| s.healthy == 3 && s.membership_generation >= 1).await;
        let listener = mgmt::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let service = mgmt::Service::new(volume.clone(), VOLUME, &security);
        tokio::spawn(mgmt::serve(listener, service, security, stop.clone()));
        Target {
            volume,
            mgmt: addr,
            replicas,
            spare,
            stop,
        }
    }

    async fn client(&self, security: &Security) -> TargetManagerClient<Channel> {
        let channel = cstor_tls::grpc::channel(&self.mgmt.to_string(), security, &[Role::Target])
            .await
            .unwrap();
        TargetManagerClient::new(channel)
    }

    fn snapshot_creates(&self) -> usize {
        self.replicas
            .iter()
            .map(|r| Seen::count(&r.seen.snapshot_creates))
            .sum()
    }
}

/// How a GetStatus call by some credentials ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Served,
    Denied,
    /// No connection: the handshake was refused (or the call failed at
    /// the transport).
    NotConnected,
}

async fn get_status_as(addr: SocketAddr, security: &Security) -> Outcome {
    let Ok(channel) = cstor_tls::grpc::channel(&addr.to_string(), security, &[Role::Target]).await
    else {
        return Outcome::NotConnected;
    };
    let mut client = TargetManagerClient::new(channel);
    let call = client.get_status(GetTargetStatusRequest {});
    match tokio::time::timeout(WAIT, call).await.expect("an answer") {
        Ok(_) => Outcome::Served,
        Err(status) if status.code() == Code::PermissionDenied => Outcome::Denied,
        Err(_) => Outcome::NotConnected,
    }
}

async fn status(client: &mut TargetManagerClient<Channel>) -> TargetStatus {
    client
        .get_status(GetTargetStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

// ---- the management port: who may connect ----

#[tokio::test]
async fn the_management_api_refuses_certificates_of_another_ca_and_expired_ones() {
    let mut pki = Pki::new();
    let t = Target::start(&mut pki).await;
    // Each trusts our CA (so the client side would go on): the target is
    // the one that refuses.
    let foreign = pki.foreign(&Identity::Admin);
    assert_eq!(get_status_as(t.mgmt, &foreign).await, Outcome::NotConnected);
    let expired = pki.expired(&Identity::Admin);
    assert_eq!(get_status_as(t.mgmt, &expired).await, Outcome::NotConnected);
    // The same identity with a good certificate is served.
    let admin = pki.security(&Identity::Admin);
    assert_eq!(get_status_as(t.mgmt, &admin).await, Outcome::Served);
}

#[tokio::test]
async fn the_management_api_refuses_a_client_without_a_certificate() {
    let mut pki = Pki::new();
    let t = Target::start(&mut pki).await;
    let tcp = tokio::net::TcpStream::connect(t.mgmt).await.unwrap();
    // TLS 1.3: the client may finish its side before the server judged
    // it; the refusal then arrives instead of the server's first HTTP/2
    // frame.
    let refused = match cstor_tls::testing::connect_without_certificate(tcp).await {
        Err(_) => true,
        Ok(mut tls) => {
            let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
            let _ = tls.write_all(preface).await;
            let _ = tls.flush().await;
            let mut buf = [0u8; 64];
            match tokio::time::timeout(WAIT, tls.read(&mut buf))
                .await
                .expect("an answer or a close")
            {
                Ok(0) | Err(_) => true,
                Ok(_) => false,
            }
        }
    };
    assert!(refused, "a client without a certificate was served");
}

// ---- the management port: what each identity may do ----

#[tokio::test]
async fn a_reader_may_read_but_every_change_is_denied_and_changes_nothing() {
    let mut pki = Pki::new();
    let t = Target::start(&mut pki).await;
    let reader = pki.security(&Identity::Reader);
    let mut c = t.client(&reader).await;
    let before = status(&mut c).await;
    assert_eq!((before.consistency_factor, before.replicas.len()), (2, 3));
    let allowed_before = c
        .get_allowed_initiators(GetAllowedInitiatorsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(allowed_before.allow_any);

    let denied = |r: Result<_, tonic::Status>| match r {
        Err(status) => status.code() == Code::PermissionDenied,
        Ok(_) => false,
    };
    let add = AddReplicaRequest {
        address: t.spare.addr.to_string(),
    };
    assert!(denied(c.add_replica(add).await.map(drop)));
    let remove = RemoveReplicaRequest {
        replica: t.replicas[2].addr.to_string(),
    };
    assert!(denied(c.remove_replica(remove).await.map(drop)));
    let cf = SetConsistencyFactorRequest {
        consistency_factor: 3,
    };
    assert!(denied(c.set_consistency_factor(cf).await.map(drop)));
    let allow = SetAllowedInitiatorsRequest {
        initiators: vec!["iqn.2026-01.test:node".into()],
        allow_any: false,
    };
    assert!(denied(c.set_allowed_initiators(allow).await.map(drop)));
    let snap = CreateSnapshotRequest { name: "s1".into() };
    assert!(denied(c.create_snapshot(snap).await.map(drop)));
    let del = DeleteSnapshotRequest { name: "s1".into() };
    assert!(denied(c.delete_snapshot(del).await.map(drop)));
    let grow = ResizeRequest {
        size_bytes: 2 * VOLUME_BYTES,
    };
    assert!(denied(c.resize(grow).await.map(drop)));
    let throttle = SetTargetRebuildThrottleRequest {
        bytes_per_second: 1 << 20,
    };
    assert!(denied(c.set_rebuild_throttle(throttle).await.map(drop)));

    // Nothing changed: membership, CF, size, allowlist, snapshots,
    // throttle; the spare replica was never even dialled.
    let after = status(&mut c).await;
    assert_eq!(after.consistency_factor, 2);
    assert_eq!(after.membership_generation, before.membership_generation);
    assert_eq!(after.size_bytes, VOLUME_BYTES);
    let addresses = |s: &TargetStatus| {
        s.replicas
            .iter()
            .map(|r| (r.address.clone(), r.state))
            .collect::<Vec<_>>()
    };
    assert_eq!(addresses(&after), addresses(&before));
    assert_eq!(Seen::count(&t.spare.seen.sessions), 0);
    assert_eq!(t.snapshot_creates(), 0);
    assert_eq!(t.volume.rebuild_throttle(), 0);
    let allowed = c
        .get_allowed_initiators(GetAllowedInitiatorsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(allowed, allowed_before);
    // The reads are served.
    let snapshots = c
        .list_snapshots(ListTargetSnapshotsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(snapshots.snapshots.is_empty());
    let throttle = c
        .get_rebuild_throttle(GetTargetRebuildThrottleRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(throttle.bytes_per_second, 0);
    assert!(!after.insecure_plaintext);
}

#[tokio::test]
async fn an_admin_may_make_every_change() {
    let mut pki = Pki::new();
    let t = Target::start(&mut pki).await;
    let admin = pki.security(&Identity::Admin);
    let mut c = t.client(&admin).await;
    let before = status(&mut c).await;
    assert!(!before.insecure_plaintext);

    let allow = SetAllowedInitiatorsRequest {
        initiators: vec!["iqn.2026-01.test:node".into()],
        allow_any: false,
    };
    let allowed = c.set_allowed_initiators(allow).await.unwrap().into_inner();
    assert_eq!(
        (allowed.initiators, allowed.allow_any),
        (vec!["iqn.2026-01.test:node".to_owned()], false)
    );
    let snap = CreateSnapshotRequest { name: "s1".into() };
    c.create_snapshot(snap).await.unwrap();
    assert!(t.snapshot_creates() >= 2);
    let listed = c
        .list_snapshots(ListTargetSnapshotsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.snapshots.len(), 1);
    assert_eq!(listed.snapshots[0].name, "s1");
    let throttle = SetTargetRebuildThrottleRequest {
        bytes_per_second: 1 << 20,
    };
    c.set_rebuild_throttle(throttle).await.unwrap();
    assert_eq!(t.volume.rebuild_throttle(), 1 << 20);
    let cf = SetConsistencyFactorRequest {
        consistency_factor: 3,
    };
    let record = c.set_consistency_factor(cf).await.unwrap().into_inner();
    assert_eq!(record.consistency_factor, 3);
    let add = AddReplicaRequest {
        address: t.spare.addr.to_string(),
    };
    let record = c.add_replica(add).await.unwrap().into_inner();
    assert_eq!(record.members.len(), 4);
    let remove = RemoveReplicaRequest {
        replica: t.spare.addr.to_string(),
    };
    let record = c.remove_replica(remove).await.unwrap().into_inner();
    assert_eq!(record.members.len(), 3);
    let after = status(&mut c).await;
    assert_eq!(after.consistency_factor, 3);
    assert!(after.membership_generation > before.membership_generation);
}

#[tokio::test]
async fn target_and_replica_certificates_hold_no_management_right() {
    let mut pki = Pki::new();
    let t = Target::start(&mut pki).await;
    for identity in [target(VOLUME), target("other"), replica("pool-0")] {
        let security = pki.security(&identity);
        assert_eq!(
            get_status_as(t.mgmt, &security).await,
            Outcome::Denied,
            "{identity}"
        );
        let mut c = t.client(&security).await;
        let cf = SetConsistencyFactorRequest {
            consistency_factor: 3,
        };
        let code = c.set_consistency_factor(cf).await.unwrap_err().code();
        assert_eq!(code, Code::PermissionDenied, "{identity}");
    }
    assert_eq!(t.volume.status().cf, 2);
}

#[tokio::test]
async fn a_plaintext_target_says_so_in_its_status() {
    let replicas = vec![
        FakeReplica::start(Security::Plaintext, 1).await,
        FakeReplica::start(Security::Plaintext, 2).await,
        FakeReplica::start(Security::Plaintext, 3).await,
    ];
    let spare = FakeReplica::start(Security::Plaintext, 4).await;
    let t = Target::serve(Security::Plaintext, replicas, spare).await;
    let mut c = t.client(&Security::Plaintext).await;
    assert!(status(&mut c).await.insecure_plaintext);
}

// ---- the replica links ----

/// Replica credentials the target must refuse (each trusts our CA, so the
/// fake replica itself would accept the target).
fn bad_replicas(pki: &mut Pki) -> Vec<(&'static str, Security)> {
    vec![
        ("another CA", pki.foreign(&replica("pool-x"))),
        ("expired", pki.expired(&replica("pool-x"))),
        ("a target's certificate", pki.security(&target(VOLUME))),
        ("an admin's certificate", pki.security(&Identity::Admin)),
    ]
}

#[tokio::test]
async fn a_replica_with_a_certificate_of_another_ca_or_role_is_never_linked() {
    let mut pki = Pki::new();
    for (what, bad) in bad_replicas(&mut pki) {
        let good = start_replicas(&mut pki, 2).await;
        let bad = FakeReplica::start(bad, 300).await;
        let security = pki.security(&target(VOLUME));
        // The refusal is typed: a TLS failure, not some other.
        let probed = link::probe(bad.addr, VOLUME, &security).await;
        assert!(
            matches!(probed, Err(LinkError::Tls(_))),
            "{what}: {probed:?}"
        );
        // Two good replicas of three make a quorum: the volume opens.
        let members = [&good[0], &good[1], &bad];
        let volume = Volume::open(spec(&members, security)).await.unwrap();
        until(&volume, |s| s.healthy == 2).await;
        // The link to the third keeps redialling and keeps being refused.
        let refused_before = Seen::count(&bad.seen.refused);
        tokio::time::timeout(WAIT, async {
            while Seen::count(&bad.seen.refused) < refused_before + 2 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what}: the link did not redial"));
        let status = volume.status();
        assert_eq!(status.replicas[2].1, ReplicaState::Offline, "{what}");
        assert_eq!(status.healthy, 2, "{what}");
        assert!(!status.fenced, "{what}: a TLS refusal never fences");
        assert_eq!(Seen::count(&bad.seen.hellos), 0, "{what}");
        volume.close();
    }
}

#[tokio::test]
async fn a_volume_whose_replica_presents_a_bad_certificate_never_opens() {
    let mut pki = Pki::new();
    for (what, bad) in bad_replicas(&mut pki) {
        let bad = FakeReplica::start(bad, 300).await;
        let security = pki.security(&target(VOLUME));
        let mut spec = spec(&[&bad], security);
        spec.cf = Some(1);
        spec.open_timeout = Duration::from_millis(500);
        match Volume::open(spec).await {
            Err(OpenError::NoQuorum { answered: 0, .. }) => {}
            other => panic!("{what}: {:?}", other.map(|_| "opened")),
        }
        assert_eq!(Seen::count(&bad.seen.hellos), 0, "{what}");
        assert!(Seen::count(&bad.seen.refused) >= 1, "{what}");
    }
}

#[tokio::test]
async fn the_status_of_every_replica_linked_over_tls_is_healthy() {
    let mut pki = Pki::new();
    let t = Target::start(&mut pki).await;
    let admin = pki.security(&Identity::Admin);
    let s = status(&mut t.client(&admin).await).await;
    assert_eq!(s.healthy, 3);
    assert!(s
        .replicas
        .iter()
        .all(|r| r.state == TargetReplicaState::Healthy as i32));
    assert!(t
        .replicas
        .iter()
        .all(|r| Seen::count(&r.seen.hellos) >= 2 && Seen::count(&r.seen.refused) == 0));
}
