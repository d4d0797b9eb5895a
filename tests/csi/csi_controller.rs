//! The CSI controller as the sidecars see it: `cstor csi --mode controller`
//! over a unix socket, three real replica daemons, targets started by the
//! local runtime, and a tonic client speaking CSI v1. Each test checks
//! behaviour the CSI spec requires (idempotency, error codes) and what
//! cstor promises on top: publish fencing checked with real iSCSI logins,
//! snapshot content seen through a clone, expansion at the target.
//!
//! Every link is mutual TLS with the test's CA (tests/common `TestPki`): the
//! controller calls the replicas and its targets as admin and issues each
//! target a certificate for its volume only; one test runs the whole path
//! in plaintext, chosen explicitly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{pattern, IscsiSession, Links, ReplicaProcess, TestPki};
use cstor_csi::pb::csi::v1 as csi;
use cstor_csi::pb::csi::v1::controller_client::ControllerClient;
use cstor_csi::pb::csi::v1::identity_client::IdentityClient;
use cstor_csi::pb::csi::v1::volume_capability::access_mode::Mode;
use cstor_csi::pb::csi::v1::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use cstor_mgmt::v1::target_manager_client::TargetManagerClient;
use cstor_mgmt::v1::{
    GetTargetStatusRequest, ListSnapshotsRequest as ReplicaListSnapshots, ListVolumesRequest,
};
use cstor_tls::{Credentials, Identity, Role, Security};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

const MIB: i64 = 1 << 20;
/// Hang guard of waits for a process to come up (not a timing assertion).
const START_GUARD: Duration = Duration::from_secs(60);

/// Replica daemons plus a `cstor csi` controller process.
struct Cluster {
    dir: tempfile::TempDir,
    pki: TestPki,
    links: Links,
    replicas: Vec<ReplicaProcess>,
    csi: Child,
    socket: PathBuf,
    args: Vec<String>,
}

impl Cluster {
    /// With mutual TLS everywhere.
    fn start(pools: usize, extra: &[&str]) -> Cluster {
        Cluster::start_with(pools, extra, Links::Tls)
    }

    fn start_with(pools: usize, extra: &[&str], links: Links) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new(dir.path());
        let replicas: Vec<ReplicaProcess> = (0..pools)
            .map(|i| {
                let d = dir.path().join(format!("pool{i}"));
                std::fs::create_dir_all(&d).unwrap();
                ReplicaProcess::create_with(&d, "256MiB", links)
            })
            .collect();
        let socket = dir.path().join("csi").join("csi.sock");
        // A block of 100 ports below the kernel's ephemeral range (32768+),
        // so no outgoing connection takes a dead target's port before it
        // is restarted; blocks differ between clusters of parallel tests
        // but for a 1/120 chance, which the runtime's bind check covers.
        let block = u16::try_from(crate::common::rand_u64() % 120).unwrap();
        let first_port = 20_000 + block * 100;
        let mut args = vec![
            "csi".to_owned(),
            "--mode".into(),
            "controller".into(),
            "--endpoint".into(),
            format!("unix://{}", socket.display()),
            "--state-dir".into(),
            dir.path().join("state").display().to_string(),
            "--target-ports".into(),
            format!("{first_port}-{}", first_port + 99),
        ];
        for r in &replicas {
            args.push("--pool".into());
            args.push(format!("{}={}", r.mgmt, r.data));
        }
        match links {
            Links::Tls => args.extend([
                "--tls-dir".to_owned(),
                pki.admin_dir().display().to_string(),
                "--tls-ca-dir".to_owned(),
                pki.ca_dir().display().to_string(),
            ]),
            Links::Plaintext => args.push("--insecure-plaintext".into()),
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let csi = spawn_csi(dir.path(), &args);
        Cluster {
            dir,
            pki,
            links,
            replicas,
            csi,
            socket,
            args,
        }
    }

    /// Stops the controller (SIGTERM: its targets stop with it) and starts
    /// it again on the same state directory.
    fn restart(&mut self) {
        self.stop();
        self.csi = spawn_csi(self.dir.path(), &self.args);
    }

    fn stop(&mut self) {
        // SIGKILL only if SIGTERM does not end it (it would orphan the
        // targets, its children).
        if Command::new("kill")
            .args(["-TERM", &self.csi.id().to_string()])
            .status()
            .is_ok_and(|s| s.success())
        {
            let deadline = Instant::now() + START_GUARD;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.csi.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.csi.kill();
        let _ = self.csi.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("csi.log")).unwrap_or_default()
    }

    async fn channel(&mut self) -> Channel {
        let deadline = Instant::now() + START_GUARD;
        loop {
            if let Some(status) = self.csi.try_wait().unwrap() {
                panic!("cstor csi exited with {status}: {}", self.log());
            }
            if self.socket.exists() {
                let uri = format!("unix://{}", self.socket.display());
                if let Ok(channel) = Endpoint::from_shared(uri).unwrap().connect().await {
                    return channel;
                }
            }
            assert!(Instant::now() < deadline, "no CSI socket: {}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn controller(&mut self) -> ControllerClient<Channel> {
        ControllerClient::new(self.channel().await)
    }

    async fn identity(&mut self) -> IdentityClient<Channel> {
        IdentityClient::new(self.channel().await)
    }

    /// The pid of the controller's target process of `volume` (a child of
    /// the controller whose command line names the volume). A restarted
    /// controller starts its targets in the background (after issuing each
    /// its certificate): waited for, bounded.
    fn target_pid(&self, volume: &str) -> u32 {
        let deadline = Instant::now() + START_GUARD;
        loop {
            if let Some(pid) = self.find_target_pid(volume) {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "no target process of {volume}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn find_target_pid(&self, volume: &str) -> Option<u32> {
        let pid = self.csi.id();
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
        let children: Vec<u32> = tasks
            .flat_map(|t| {
                let path = t.unwrap().path().join("children");
                std::fs::read_to_string(path)
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(|p| p.parse::<u32>().unwrap())
                    .collect::<Vec<_>>()
            })
            .collect();
        children.into_iter().find(|child| {
            let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            cmdline
                .split(|b| *b == 0)
                .any(|arg| arg == volume.as_bytes())
        })
    }

    /// The log of the local runtime's target of `volume`.
    fn target_log(&self, volume: &str) -> String {
        let path = self
            .dir
            .path()
            .join("state/logs")
            .join(format!("{volume}.log"));
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// How the test's own management clients connect: as admin, or in
    /// plaintext like the cluster.
    fn admin(&self) -> Security {
        match self.links {
            Links::Tls => self.pki.admin(),
            Links::Plaintext => Security::Plaintext,
        }
    }

    /// A management client of replica daemon `i`.
    async fn replica_mgmt(
        &self,
        i: usize,
    ) -> cstor_mgmt::v1::replica_manager_client::ReplicaManagerClient<Channel> {
        let channel =
            crate::common::mgmt_channel(&self.admin(), self.replicas[i].mgmt, Role::Replica).await;
        cstor_mgmt::v1::replica_manager_client::ReplicaManagerClient::new(channel)
    }

    /// The TLS directory the local runtime issued `volume`'s target.
    fn target_tls_dir(&self, volume: &str) -> PathBuf {
        self.dir.path().join("state/tls").join(volume)
    }

    /// Volume names on replica daemon `i`.
    async fn volumes_on(&self, i: usize) -> Vec<String> {
        let mut client = self.replica_mgmt(i).await;
        let listed = client.list_volumes(ListVolumesRequest {}).await.unwrap();
        listed
            .into_inner()
            .volumes
            .into_iter()
            .map(|v| v.name)
            .collect()
    }

    /// Snapshot names of `volume` on replica daemon `i`.
    async fn snapshots_on(&self, i: usize, volume: &str) -> Vec<String> {
        let mut client = self.replica_mgmt(i).await;
        let listed = client
            .list_snapshots(ReplicaListSnapshots {
                volume: volume.into(),
            })
            .await
            .unwrap();
        listed
            .into_inner()
            .snapshots
            .into_iter()
            .map(|s| s.name)
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_csi(dir: &std::path::Path, args: &[String]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("csi.log"))
        .unwrap();
    Command::new(crate::common::cstor_bin())
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn mount_cap(mode: Mode) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: "ext4".into(),
            ..MountVolume::default()
        })),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

fn block_cap() -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

fn create_req(name: &str, bytes: i64) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: bytes,
            limit_bytes: bytes,
        }),
        volume_capabilities: vec![mount_cap(Mode::SingleNodeWriter)],
        ..Default::default()
    }
}

fn publish_req(volume: &str, node: &str) -> csi::ControllerPublishVolumeRequest {
    csi::ControllerPublishVolumeRequest {
        volume_id: volume.into(),
        node_id: node.into(),
        volume_capability: Some(mount_cap(Mode::SingleNodeWriter)),
        ..Default::default()
    }
}

fn snapshot_req(name: &str, volume: &str) -> csi::CreateSnapshotRequest {
    csi::CreateSnapshotRequest {
        name: name.into(),
        source_volume_id: volume.into(),
        ..Default::default()
    }
}

fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s.code(),
    }
}

async fn create(c: &mut ControllerClient<Channel>, req: csi::CreateVolumeRequest) -> csi::Volume {
    c.create_volume(req)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
}

async fn login(ctx: &HashMap<String, String>, node: &str) -> std::io::Result<IscsiSession> {
    let portal = ctx[cstor_csi::context::PORTAL].parse().unwrap();
    IscsiSession::login(
        portal,
        &ctx[cstor_csi::context::IQN],
        &cstor_csi::initiator_name(node),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_are_provisioned_fenced_snapshotted_cloned_expanded_and_deleted() {
    let mut cluster = Cluster::start(3, &[]);
    let mut identity = cluster.identity().await;
    let probe = identity
        .probe(csi::ProbeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(probe.ready, Some(true), "pools reachable: ready");
    let info = identity
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "cstor.csi.openebs.io");
    let plugin_caps = identity
        .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities;
    assert!(plugin_caps.iter().any(|c| matches!(
        &c.r#type,
        Some(csi::plugin_capability::Type::Service(s))
            if s.r#type == csi::plugin_capability::service::Type::ControllerService as i32
    )));
    let mut c = cluster.controller().await;
    let rpc_caps: Vec<i32> = c
        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities
        .iter()
        .filter_map(|c| {
            let csi::controller_service_capability::Type::Rpc(r) = c.r#type.as_ref()?;
            Some(r.r#type)
        })
        .collect();
    use csi::controller_service_capability::rpc::Type as Cap;
    let expected: Vec<i32> = [
        Cap::CreateDeleteVolume,
        Cap::PublishUnpublishVolume,
        Cap::ListVolumes,
        Cap::GetCapacity,
        Cap::CreateDeleteSnapshot,
        Cap::ListSnapshots,
        Cap::CloneVolume,
        Cap::ExpandVolume,
        Cap::VolumeCondition,
        Cap::GetVolume,
    ]
    .iter()
    .map(|c| *c as i32)
    .collect();
    assert_eq!(rpc_caps, expected);

    // Capacity: a 3-replica volume fits the third-largest free space.
    let cap = c
        .get_capacity(csi::GetCapacityRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        cap.available_capacity > 0 && cap.available_capacity <= 256 * MIB,
        "{cap:?}"
    );

    // Create: idempotent by name; a different size is ALREADY_EXISTS; a
    // range with no size of the pools' granularity is OUT_OF_RANGE.
    let mut req = create_req("pvc-a", 64 * MIB);
    req.parameters = HashMap::from([("replicaCount".into(), "3".into())]);
    let vol = create(&mut c, req.clone()).await;
    assert_eq!(vol.volume_id, "pvc-a");
    assert_eq!(vol.capacity_bytes, 64 * MIB);
    assert_eq!(create(&mut c, req.clone()).await.volume_id, "pvc-a");
    for i in 0..3 {
        assert!(
            cluster.volumes_on(i).await.contains(&"pvc-a".to_owned()),
            "replica {i}"
        );
    }
    assert_eq!(
        code(c.create_volume(create_req("pvc-a", 128 * MIB)).await),
        Code::AlreadyExists
    );
    let mut odd = create_req("pvc-odd", 0);
    odd.capacity_range = Some(csi::CapacityRange {
        required_bytes: MIB + 1,
        limit_bytes: MIB + 100,
    });
    assert_eq!(code(c.create_volume(odd).await), Code::OutOfRange);

    // Publish fences: only node A's initiator may log in; B is refused
    // while A holds the volume.
    let ctx = c
        .controller_publish_volume(publish_req("pvc-a", "node-a"))
        .await
        .unwrap()
        .into_inner()
        .publish_context;
    let again = c
        .controller_publish_volume(publish_req("pvc-a", "node-a"))
        .await
        .unwrap()
        .into_inner()
        .publish_context;
    assert_eq!(ctx, again, "publish is idempotent");
    assert_eq!(
        code(
            c.controller_publish_volume(publish_req("pvc-a", "node-b"))
                .await
        ),
        Code::FailedPrecondition
    );
    assert!(
        login(&ctx, "node-b").await.is_err(),
        "node B must not log in"
    );
    let mut session = login(&ctx, "node-a").await.unwrap();
    let data = pattern(0, 7, 64 << 10);
    assert!(session.write(0, data.clone()).await.unwrap().is_good());
    assert!(session.sync_cache().await.unwrap().is_good());

    // Snapshots: taken at quorum, ready at once, idempotent by name, names
    // unique across volumes, listed in pages.
    let snap = c
        .create_snapshot(snapshot_req("snap-1", "pvc-a"))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert!(snap.ready_to_use);
    assert_eq!(snap.source_volume_id, "pvc-a");
    assert!(snap.creation_time.is_some());
    let repeat = c
        .create_snapshot(snapshot_req("snap-1", "pvc-a"))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(repeat.snapshot_id, snap.snapshot_id);
    create(&mut c, create_req("pvc-b", 16 * MIB)).await;
    assert_eq!(
        code(c.create_snapshot(snapshot_req("snap-1", "pvc-b")).await),
        Code::AlreadyExists
    );
    for name in ["snap-2", "snap-3"] {
        c.create_snapshot(snapshot_req(name, "pvc-a"))
            .await
            .unwrap();
    }
    let page1 = c
        .list_snapshots(csi::ListSnapshotsRequest {
            max_entries: 2,
            source_volume_id: "pvc-a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page1.entries.len(), 2);
    assert!(!page1.next_token.is_empty());
    let page2 = c
        .list_snapshots(csi::ListSnapshotsRequest {
            starting_token: page1.next_token.clone(),
            source_volume_id: "pvc-a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page2.entries.len(), 1);
    assert!(page2.next_token.is_empty());
    let mut ids: Vec<String> = page1
        .entries
        .iter()
        .chain(&page2.entries)
        .map(|e| e.snapshot.as_ref().unwrap().snapshot_id.clone())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "every snapshot exactly once: {ids:?}");
    let one = c
        .list_snapshots(csi::ListSnapshotsRequest {
            snapshot_id: snap.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.entries.len(), 1);
    let mut del = csi::DeleteVolumeRequest {
        volume_id: "pvc-a".into(),
        ..Default::default()
    };
    assert_eq!(
        code(c.delete_volume(del.clone()).await),
        Code::FailedPrecondition,
        "a volume with snapshots is not deleted"
    );

    // A clone of snapshot-1 holds what was written before it.
    let mut from_snap = create_req("clone-1", 64 * MIB);
    from_snap.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Snapshot(
            csi::volume_content_source::SnapshotSource {
                snapshot_id: snap.snapshot_id.clone(),
            },
        )),
    });
    let clone = create(&mut c, from_snap.clone()).await;
    assert!(clone.content_source.is_some());
    assert_eq!(create(&mut c, from_snap).await.volume_id, clone.volume_id);
    let clone_ctx = c
        .controller_publish_volume(publish_req(&clone.volume_id, "node-a"))
        .await
        .unwrap()
        .into_inner()
        .publish_context;
    let mut clone_session = login(&clone_ctx, "node-a").await.unwrap();
    let read = clone_session.read(0, 16).await.unwrap();
    assert!(read.is_good());
    assert_eq!(
        read.data,
        data.to_vec(),
        "the clone holds the snapshot's data"
    );
    drop(clone_session);

    // A clone of a volume, through a snapshot the driver drops again.
    let mut from_vol = create_req("clone-2", 64 * MIB);
    from_vol.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Volume(
            csi::volume_content_source::VolumeSource {
                volume_id: "pvc-a".into(),
            },
        )),
    });
    let clone2 = create(&mut c, from_vol).await;
    for i in 0..3 {
        assert!(cluster.volumes_on(i).await.contains(&clone2.volume_id));
        let snaps = cluster.snapshots_on(i, "pvc-a").await;
        assert_eq!(snaps.len(), 3, "only the CSI snapshots remain: {snaps:?}");
    }

    // Expand at the target; a mount volume then needs the node.
    let grown = c
        .controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: "pvc-a".into(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 96 * MIB,
                limit_bytes: 0,
            }),
            volume_capability: Some(mount_cap(Mode::SingleNodeWriter)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grown.capacity_bytes, 96 * MIB);
    assert!(grown.node_expansion_required);
    let got = c
        .controller_get_volume(csi::ControllerGetVolumeRequest {
            volume_id: "pvc-a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.volume.unwrap().capacity_bytes, 96 * MIB);
    let status = got.status.unwrap();
    assert_eq!(status.published_node_ids, ["node-a"]);
    let condition = status.volume_condition.unwrap();
    assert!(!condition.abnormal, "{}", condition.message);

    // Unpublish closes A's session and admits B.
    c.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
        volume_id: "pvc-a".into(),
        node_id: "node-a".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    // The target closes the session on its own schedule; the first
    // commands may still complete (the unit attention of the expansion).
    let deadline = Instant::now() + START_GUARD;
    while session.read(0, 1).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the unpublished node's session stays open: {}",
            cluster.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(login(&ctx, "node-a").await.is_err());
    c.controller_publish_volume(publish_req("pvc-a", "node-b"))
        .await
        .unwrap();
    assert!(login(&ctx, "node-b").await.is_ok());

    // Delete: snapshots first, unpublished, idempotent.
    for e in page1.entries.iter().chain(&page2.entries) {
        let id = e.snapshot.as_ref().unwrap().snapshot_id.clone();
        for _ in 0..2 {
            c.delete_snapshot(csi::DeleteSnapshotRequest {
                snapshot_id: id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
    }
    assert_eq!(
        code(c.delete_volume(del.clone()).await),
        Code::FailedPrecondition,
        "a published volume is not deleted"
    );
    for node in ["node-b", "node-b"] {
        c.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
            volume_id: "pvc-a".into(),
            node_id: node.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    c.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
        volume_id: clone.volume_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    for id in [
        "pvc-a",
        "pvc-b",
        clone.volume_id.as_str(),
        clone2.volume_id.as_str(),
    ] {
        del.volume_id = id.into();
        c.delete_volume(del.clone()).await.unwrap();
        c.delete_volume(del.clone()).await.unwrap();
        assert_eq!(
            code(
                c.controller_get_volume(csi::ControllerGetVolumeRequest {
                    volume_id: id.into()
                })
                .await
            ),
            Code::NotFound
        );
    }
    for i in 0..3 {
        assert!(cluster.volumes_on(i).await.is_empty(), "replica {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_and_unknown_objects_get_the_codes_the_spec_names() {
    let mut cluster = Cluster::start(2, &["--known-node", "node-a"]);
    let mut c = cluster.controller().await;
    let invalid = [
        csi::CreateVolumeRequest {
            volume_capabilities: vec![block_cap()],
            ..Default::default()
        },
        csi::CreateVolumeRequest {
            name: "v".into(),
            ..Default::default()
        },
        csi::CreateVolumeRequest {
            volume_capabilities: vec![mount_cap(Mode::MultiNodeMultiWriter)],
            ..create_req("v", 16 * MIB)
        },
        csi::CreateVolumeRequest {
            parameters: HashMap::from([("replicaCount".into(), "many".into())]),
            ..create_req("v", 16 * MIB)
        },
        csi::CreateVolumeRequest {
            parameters: HashMap::from([("noSuchKey".into(), "1".into())]),
            ..create_req("v", 16 * MIB)
        },
        csi::CreateVolumeRequest {
            capacity_range: Some(csi::CapacityRange {
                required_bytes: -1,
                limit_bytes: 0,
            }),
            ..create_req("v", 16 * MIB)
        },
    ];
    let from_volume = |source: &str| {
        Some(csi::VolumeContentSource {
            r#type: Some(csi::volume_content_source::Type::Volume(
                csi::volume_content_source::VolumeSource {
                    volume_id: source.into(),
                },
            )),
        })
    };
    let invalid = invalid.into_iter().chain([
        csi::CreateVolumeRequest {
            parameters: HashMap::from([("provisioning".into(), "thick".into())]),
            volume_content_source: from_volume("some-volume"),
            ..create_req("v", 16 * MIB)
        },
        csi::CreateVolumeRequest {
            volume_content_source: from_volume("self-made"),
            ..create_req("self-made", 16 * MIB)
        },
    ]);
    for req in invalid {
        assert_eq!(
            code(c.create_volume(req.clone()).await),
            Code::InvalidArgument,
            "{req:?}"
        );
    }
    let mut too_many = create_req("v", 16 * MIB);
    too_many.parameters = HashMap::from([("replicaCount".into(), "3".into())]);
    assert_eq!(
        code(c.create_volume(too_many).await),
        Code::ResourceExhausted
    );
    let mut from_nothing = create_req("v", 16 * MIB);
    from_nothing.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Snapshot(
            csi::volume_content_source::SnapshotSource {
                snapshot_id: "non-existing-snapshot-id".into(),
            },
        )),
    });
    assert_eq!(code(c.create_volume(from_nothing).await), Code::NotFound);

    // A volume to ask about (two pools: two replicas by default).
    let vol = create(&mut c, create_req("Mixed Case Name", 16 * MIB)).await;
    assert!(
        vol.volume_id.starts_with("mixed-case-name-"),
        "{}",
        vol.volume_id
    );
    let mut fewer = create_req("Mixed Case Name", 16 * MIB);
    fewer.parameters = HashMap::from([("replicaCount".into(), "1".into())]);
    assert_eq!(code(c.create_volume(fewer).await), Code::AlreadyExists);
    let validated = c
        .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: vol.volume_id.clone(),
            volume_capabilities: vec![block_cap()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(validated.confirmed.is_some(), "{}", validated.message);
    let refused = c
        .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: vol.volume_id.clone(),
            volume_capabilities: vec![mount_cap(Mode::MultiNodeReaderOnly)],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(refused.confirmed.is_none() && !refused.message.is_empty());
    assert_eq!(
        code(
            c.validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
                volume_id: vol.volume_id.clone(),
                ..Default::default()
            })
            .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
                volume_id: "no-such-volume".into(),
                volume_capabilities: vec![block_cap()],
                ..Default::default()
            })
            .await
        ),
        Code::NotFound
    );

    // Publish / unpublish.
    for req in [
        publish_req("", "node-a"),
        publish_req(&vol.volume_id, ""),
        csi::ControllerPublishVolumeRequest {
            volume_capability: None,
            ..publish_req(&vol.volume_id, "node-a")
        },
    ] {
        assert_eq!(
            code(c.controller_publish_volume(req).await),
            Code::InvalidArgument
        );
    }
    assert_eq!(
        code(
            c.controller_publish_volume(publish_req("no-such-volume", "node-a"))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            c.controller_publish_volume(publish_req(&vol.volume_id, "node-x"))
                .await
        ),
        Code::NotFound,
        "a node outside --known-node"
    );
    assert_eq!(
        code(
            c.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest::default())
                .await
        ),
        Code::InvalidArgument
    );
    c.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
        volume_id: "no-such-volume".into(),
        node_id: "node-a".into(),
        ..Default::default()
    })
    .await
    .unwrap();

    // Get / expand / delete.
    let get = |id: &str| csi::ControllerGetVolumeRequest {
        volume_id: id.into(),
    };
    assert_eq!(
        code(c.controller_get_volume(get("")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.controller_get_volume(get("no-such-volume")).await),
        Code::NotFound
    );
    let expand = |id: &str, range: Option<csi::CapacityRange>| csi::ControllerExpandVolumeRequest {
        volume_id: id.into(),
        capacity_range: range,
        ..Default::default()
    };
    let range = Some(csi::CapacityRange {
        required_bytes: 32 * MIB,
        limit_bytes: 0,
    });
    assert_eq!(
        code(c.controller_expand_volume(expand("", range)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.controller_expand_volume(expand(&vol.volume_id, None))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.controller_expand_volume(expand("no-such-volume", range))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(c.delete_volume(csi::DeleteVolumeRequest::default()).await),
        Code::InvalidArgument
    );
    for id in ["no-such-volume", "Not A Volume Id"] {
        c.delete_volume(csi::DeleteVolumeRequest {
            volume_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }

    // Snapshots and listing.
    assert_eq!(
        code(c.create_snapshot(snapshot_req("", &vol.volume_id)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.create_snapshot(snapshot_req("s", "")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.create_snapshot(snapshot_req("s", "no-such-volume")).await),
        Code::NotFound
    );
    assert_eq!(
        code(
            c.delete_snapshot(csi::DeleteSnapshotRequest::default())
                .await
        ),
        Code::InvalidArgument
    );
    c.delete_snapshot(csi::DeleteSnapshotRequest {
        snapshot_id: "reallyfakesnapshotid".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let bad_token = csi::ListSnapshotsRequest {
        starting_token: "invalid-token".into(),
        ..Default::default()
    };
    assert_eq!(code(c.list_snapshots(bad_token).await), Code::Aborted);
    let bad_token = csi::ListVolumesRequest {
        starting_token: "invalid-token".into(),
        ..Default::default()
    };
    assert_eq!(code(c.list_volumes(bad_token).await), Code::Aborted);
    let listed = c
        .list_volumes(csi::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.entries.len(), 1);
    assert_eq!(
        code(
            c.controller_modify_volume(csi::ControllerModifyVolumeRequest::default())
                .await
        ),
        Code::Unimplemented
    );

    // Stateless controller: after a restart it finds the volume on the
    // pools and its target (with its allowlist) again.
    let ctx = c
        .controller_publish_volume(publish_req(&vol.volume_id, "node-a"))
        .await
        .unwrap()
        .into_inner()
        .publish_context;
    cluster.restart();
    let mut c = cluster.controller().await;

    // A target that dies is started again, on the same portal.
    let target = cluster.target_pid(&vol.volume_id);
    assert!(Command::new("kill")
        .args(["-KILL", &target.to_string()])
        .status()
        .unwrap()
        .success());
    let portal = ctx[cstor_csi::context::PORTAL].parse().unwrap();
    let iqn = &ctx[cstor_csi::context::IQN];
    let initiator = cstor_csi::initiator_name("node-a");
    let deadline = Instant::now() + START_GUARD;
    while let Err(e) = IscsiSession::login(portal, iqn, &initiator).await {
        assert!(
            Instant::now() < deadline,
            "no login after the target's restart: {e}\n{}\n{}",
            cluster.log(),
            cluster.target_log(&vol.volume_id)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(cluster.target_pid(&vol.volume_id), target);
    // The restarted target admits logins once it opened the volume; its
    // condition turns normal once CF replicas are healthy again (under
    // load that may come a moment after the first login).
    let got = loop {
        let got = c
            .controller_get_volume(get(&vol.volume_id))
            .await
            .unwrap()
            .into_inner();
        let status = got.status.clone().unwrap();
        assert_eq!(status.published_node_ids, ["node-a"]);
        let condition = status.volume_condition.unwrap();
        if !condition.abnormal {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "still abnormal after the restart: {condition:?}\n{}",
            cluster.target_log(&vol.volume_id)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(got.volume.unwrap().capacity_bytes, 16 * MIB);
    c.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
        volume_id: vol.volume_id.clone(),
        node_id: "node-a".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: vol.volume_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();

    // Probe reflects readiness: a pool that does not answer makes the
    // controller not ready.
    cluster.replicas[1].kill9();
    let mut identity = cluster.identity().await;
    let probe = identity
        .probe(csi::ProbeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(probe.ready, Some(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_mode_serves_identity_and_node_without_the_controller() {
    use cstor_csi::pb::csi::v1::node_client::NodeClient;
    use cstor_csi::pb::csi::v1::plugin_capability::Type;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("node.sock");
    let pki = TestPki::new(dir.path());
    let mut cluster = Cluster {
        csi: Command::new(crate::common::cstor_bin())
            .args([
                "csi",
                "--mode",
                "node",
                "--node-id",
                "worker-1",
                "--endpoint",
            ])
            .arg(format!("unix://{}", socket.display()))
            .arg("--node-state-dir")
            .arg(dir.path().join("node"))
            // A reader identity: the remount check only reads target status.
            .arg("--tls-dir")
            .arg(pki.reader_dir())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("csi.log")).unwrap())
            .spawn()
            .unwrap(),
        dir,
        pki,
        links: Links::Tls,
        replicas: Vec::new(),
        socket,
        args: Vec::new(),
    };
    let channel = cluster.channel().await;
    let mut identity = IdentityClient::new(channel.clone());
    let caps = identity
        .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities;
    assert!(
        !caps
            .iter()
            .any(|c| matches!(c.r#type, Some(Type::Service(_)))),
        "no CONTROLLER_SERVICE in node mode: {caps:?}"
    );
    let probe = identity
        .probe(csi::ProbeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(probe.ready, Some(true));
    let info = NodeClient::new(channel.clone())
        .node_get_info(csi::NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.node_id, "worker-1");
    let missing = ControllerClient::new(channel)
        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
        .await;
    assert_eq!(code(missing), Code::Unimplemented);
}

/// The target of a volume, started by the local runtime, holds a
/// certificate naming that volume only, serves its management API over
/// mutual TLS (a client without a certificate gets nothing), says it is not
/// in plaintext, and its certificate goes with the volume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_target_gets_a_certificate_for_its_volume_only_and_serves_over_tls() {
    let mut cluster = Cluster::start(1, &[]);
    let mut c = cluster.controller().await;
    let vol = create(&mut c, create_req("tls-vol", 16 * MIB)).await;
    let ctx = c
        .controller_publish_volume(publish_req(&vol.volume_id, "node-a"))
        .await
        .unwrap()
        .into_inner()
        .publish_context;
    let tls = cluster.target_tls_dir(&vol.volume_id);
    let identity = Credentials::load(&tls).unwrap().identity();
    assert_eq!(
        identity,
        Identity::Target {
            volumes: vec![vol.volume_id.clone()]
        }
    );
    assert!(!identity.may_serve("another-volume"));

    let mgmt: std::net::SocketAddr = ctx[cstor_csi::context::TARGET_MGMT]
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let channel = crate::common::mgmt_channel(&cluster.pki.admin(), mgmt, Role::Target).await;
    let status = TargetManagerClient::new(channel)
        .get_status(GetTargetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!status.insecure_plaintext, "{status:?}");
    // No certificate, no answer.
    let plain = Endpoint::from_shared(format!("http://{mgmt}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10));
    let refused = match plain.connect().await {
        Err(_) => true,
        Ok(channel) => TargetManagerClient::new(channel)
            .get_status(GetTargetStatusRequest {})
            .await
            .is_err(),
    };
    assert!(
        refused,
        "the target answered a client without a certificate"
    );
    // The volume works through the portal the controller published.
    let session = login(&ctx, "node-a").await.unwrap();
    drop(session);

    c.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
        volume_id: vol.volume_id.clone(),
        node_id: "node-a".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: vol.volume_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(
        !tls.exists(),
        "the target's certificate outlived its volume"
    );
}

/// The controller starts only with what it needs: an admin identity (it
/// calls both management APIs) and, with TLS, the CA that issues its
/// targets' certificates; plaintext only when asked for, and never mixed
/// with TLS.
#[test]
fn the_controller_refuses_to_start_without_an_admin_identity_and_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let (admin, reader, ca) = (pki.admin_dir(), pki.reader_dir(), pki.ca_dir());
    let path = |p: &PathBuf| p.display().to_string();
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("no credentials", vec![]),
        (
            "a reader identity",
            vec![
                "--tls-dir".into(),
                path(&reader),
                "--tls-ca-dir".into(),
                path(&ca),
            ],
        ),
        ("TLS without the CA", vec!["--tls-dir".into(), path(&admin)]),
        (
            "TLS and plaintext",
            vec![
                "--tls-dir".into(),
                path(&admin),
                "--insecure-plaintext".into(),
            ],
        ),
        (
            "a CA for plaintext targets",
            vec![
                "--insecure-plaintext".into(),
                "--tls-ca-dir".into(),
                path(&ca),
            ],
        ),
        (
            "a directory without certificates",
            vec![
                "--tls-dir".into(),
                path(&ca),
                "--tls-ca-dir".into(),
                path(&ca),
            ],
        ),
    ];
    for (what, security) in cases {
        let socket = dir.path().join("csi.sock");
        let mut child = Command::new(crate::common::cstor_bin())
            .args(["csi", "--mode", "controller", "--endpoint"])
            .arg(format!("unix://{}", socket.display()))
            .args(["--pool", "127.0.0.1:1=127.0.0.1:2", "--state-dir"])
            .arg(dir.path().join("state"))
            .args(&security)
            .env_remove("CSTOR_TLS_DIR")
            .env_remove("CSTOR_INSECURE_PLAINTEXT")
            .env_remove("CSTOR_TLS_CA_DIR")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + START_GUARD;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{what}: the controller started");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(!status.success(), "{what}: exited with {status}");
        assert!(!socket.exists(), "{what}: the controller served");
    }
}

/// Plaintext is an explicit choice, and then the whole path works without
/// certificates: replicas and controller run `--insecure-plaintext`, the
/// targets the controller starts too (they say so in their status), and no
/// certificate is issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_insecure_plaintext_chosen_the_targets_run_plaintext_too() {
    let mut cluster = Cluster::start_with(1, &[], Links::Plaintext);
    let mut c = cluster.controller().await;
    let vol = create(&mut c, create_req("plain-vol", 16 * MIB)).await;
    let ctx = c
        .controller_publish_volume(publish_req(&vol.volume_id, "node-a"))
        .await
        .unwrap()
        .into_inner()
        .publish_context;
    assert!(!cluster.target_tls_dir(&vol.volume_id).exists());
    let mgmt: std::net::SocketAddr = ctx[cstor_csi::context::TARGET_MGMT]
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let channel = crate::common::mgmt_channel(&Security::Plaintext, mgmt, Role::Target).await;
    let status = TargetManagerClient::new(channel)
        .get_status(GetTargetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(status.insecure_plaintext, "{status:?}");
    let session = login(&ctx, "node-a").await.unwrap();
    drop(session);
    assert_eq!(
        cluster.volumes_on(0).await,
        std::slice::from_ref(&vol.volume_id)
    );
}
