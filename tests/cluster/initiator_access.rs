//! The target's initiator allowlist changed at run time through the
//! management API (SetAllowedInitiators, the CSI controller's publish
//! fencing): refused logins for names not allowed, admitted after the
//! call, and a logged-in session closed once its initiator is removed.
//! Logins come from libiscsi's `iscsi-inq` (Debian libiscsi-bin) and from
//! the hand-made initiator of tests/common.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{free_addr, pattern, IscsiSession, ReplicaProcess, TargetProcess, TestPki};
use cstor_mgmt::v1::target_manager_client::TargetManagerClient;
use cstor_mgmt::v1::{AllowedInitiators, GetAllowedInitiatorsRequest, SetAllowedInitiatorsRequest};
use tonic::transport::Channel;

const VOLUME: &str = "fenced";
const NODE_A: &str = "iqn.2026-11.io.cstor.test:node-a";
const NODE_B: &str = "iqn.2026-11.io.cstor.test:node-b";
/// Hang guard, not a timing assertion.
const GUARD: Duration = Duration::from_secs(30);

struct Fixture {
    _dir: tempfile::TempDir,
    _replica: ReplicaProcess,
    target: TargetProcess,
    api: TargetManagerClient<Channel>,
    mgmt: SocketAddr,
}

impl Fixture {
    /// The target and its replica; None (the test skipped) where libiscsi's
    /// `iscsi-inq` cannot be had.
    async fn start(extra_args: &[&str]) -> Option<Fixture> {
        let libiscsi = cstor_testkit::apt::Program {
            command: "iscsi-inq",
            package: "libiscsi-bin",
        };
        if let Err(e) = cstor_testkit::apt::ensure(&[libiscsi]) {
            cstor_testkit::skip(cstor_testkit::Need::Tool("libiscsi-bin"), e);
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let replica = ReplicaProcess::create(dir.path(), "128MiB");
        replica.ctl(&["volume", "create", VOLUME, "--size", "16MiB"]);
        let mgmt = free_addr();
        let mgmt_arg = mgmt.to_string();
        let mut args = vec!["--mgmt-listen", mgmt_arg.as_str()];
        args.extend_from_slice(extra_args);
        let target =
            TargetProcess::start_with(dir.path(), free_addr(), VOLUME, &[replica.data], &args, &[]);
        let api = connect(&target.pki, mgmt).await;
        Some(Fixture {
            _dir: dir,
            _replica: replica,
            target,
            api,
            mgmt,
        })
    }

    async fn set(&mut self, initiators: &[&str], allow_any: bool) -> AllowedInitiators {
        self.api
            .set_allowed_initiators(SetAllowedInitiatorsRequest {
                initiators: initiators.iter().map(|s| (*s).to_owned()).collect(),
                allow_any,
            })
            .await
            .unwrap()
            .into_inner()
    }

    async fn get(&mut self) -> AllowedInitiators {
        self.api
            .get_allowed_initiators(GetAllowedInitiatorsRequest {})
            .await
            .unwrap()
            .into_inner()
    }

    /// Whether libiscsi's `iscsi-inq` logs in as `initiator` and gets an
    /// INQUIRY answer.
    fn inquiry_as(&self, initiator: &str) -> bool {
        let url = format!("iscsi://{}/{}/0", self.target.portal, self.target.iqn);
        let out = Command::new("iscsi-inq")
            .args(["-i", initiator, &url])
            .output()
            .expect("iscsi-inq (Debian libiscsi-bin; Fixture::start installs it)");
        out.status.success()
    }

    async fn session(&self, initiator: &str) -> std::io::Result<IscsiSession> {
        IscsiSession::login(self.target.portal, &self.target.iqn, initiator).await
    }
}

/// The management API once it answers (the target serves it after its
/// replicas answered).
async fn connect(pki: &TestPki, addr: SocketAddr) -> TargetManagerClient<Channel> {
    let deadline = Instant::now() + GUARD;
    let admin = pki.admin();
    loop {
        let channel =
            cstor_tls::grpc::channel(&addr.to_string(), &admin, &[cstor_tls::Role::Target]).await;
        if let Ok(mut client) = channel.map(TargetManagerClient::new) {
            if client
                .get_allowed_initiators(GetAllowedInitiatorsRequest {})
                .await
                .is_ok()
            {
                return client;
            }
        }
        assert!(Instant::now() < deadline, "no management API on {addr}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads block 0 until the target closes the session; panics if it is
/// still open after the hang guard.
async fn wait_closed(session: &mut IscsiSession) {
    let deadline = Instant::now() + GUARD;
    while session.read(0, 1).await.is_ok() {
        assert!(Instant::now() < deadline, "the session is still served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn deny_initiators_admits_nobody_until_set_allowed_initiators_names_one() {
    let Some(mut fx) = Fixture::start(&["--deny-initiators"]).await else {
        return;
    };
    let initial = fx.get().await;
    assert!(
        !initial.allow_any && initial.initiators.is_empty(),
        "{initial:?}"
    );
    assert!(!fx.inquiry_as(NODE_A), "a denied initiator got in");
    // The refusal is the allowlist's: 02 02, "initiator not authorized".
    let status = IscsiSession::login_status(fx.target.portal, &fx.target.iqn, NODE_A)
        .await
        .unwrap();
    assert_eq!(status, (2, 2), "login status of a denied initiator");

    let now = fx.set(&[NODE_A], false).await;
    assert_eq!(now.initiators, vec![NODE_A.to_owned()]);
    assert!(!now.allow_any);
    assert!(fx.inquiry_as(NODE_A), "an allowed initiator was refused");
    assert!(!fx.inquiry_as(NODE_B), "an initiator not listed got in");

    // allow_any admits everyone again (the default without flags).
    assert!(fx.set(&[], true).await.allow_any);
    assert!(fx.inquiry_as(NODE_B));
}

#[tokio::test]
async fn a_session_is_closed_when_its_initiator_is_removed() {
    let Some(mut fx) = Fixture::start(&["--allow-initiator", NODE_A]).await else {
        return;
    };
    let mut a = fx.session(NODE_A).await.unwrap();
    assert!(a.write(3, pattern(3, 1, 4096)).await.unwrap().is_good());

    // Setting the same list again is a no-op: the session goes on.
    fx.set(&[NODE_A], false).await;
    fx.set(&[NODE_A], false).await;
    assert!(a.read(3, 1).await.unwrap().is_good());

    // Moving the volume to node B fences node A.
    fx.set(&[NODE_B], false).await;
    wait_closed(&mut a).await;
    assert!(
        fx.session(NODE_A).await.is_err(),
        "a removed initiator logged in again"
    );
    let mut b = fx.session(NODE_B).await.unwrap();
    let read = b.read(3, 1).await.unwrap();
    assert!(read.is_good());
    assert!(fx.target.is_running());

    // An empty list fences everyone.
    fx.set(&[], false).await;
    wait_closed(&mut b).await;
    assert_eq!(fx.get().await.initiators, Vec::<String>::new());
}

#[tokio::test]
async fn malformed_initiator_names_are_invalid_argument_and_change_nothing() {
    let Some(mut fx) = Fixture::start(&["--allow-initiator", NODE_A]).await else {
        return;
    };
    for bad in [
        "node-a",
        "iqn.2026-13.io.cstor:x",
        "iqn.2026-11.io.cstor:a b",
    ] {
        let err = fx
            .api
            .set_allowed_initiators(SetAllowedInitiatorsRequest {
                initiators: vec![NODE_B.to_owned(), bad.to_owned()],
                allow_any: false,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}: {err}");
    }
    assert_eq!(fx.get().await.initiators, vec![NODE_A.to_owned()]);
    assert!(fx.inquiry_as(NODE_A));
}

#[test]
fn a_malformed_allow_initiator_flag_stops_the_target() {
    let out = Command::new(crate::common::cstor_bin())
        .args([
            "target",
            "--listen",
            &free_addr().to_string(),
            "--mgmt-listen",
            &free_addr().to_string(),
            "--volume",
            VOLUME,
            "--replica",
            &free_addr().to_string(),
            "--allow-initiator",
            "allowed",
            "--insecure-plaintext",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("allow-initiator"), "{stderr}");
}

/// `cstor ctl initiators` drives the same list: set, show, --none, --any,
/// and a malformed name is refused with the target's reason.
#[tokio::test]
async fn ctl_initiators_shows_and_replaces_the_allowlist() {
    let Some(fx) = Fixture::start(&["--deny-initiators"]).await else {
        return;
    };
    let mgmt = fx.mgmt.to_string();
    let admin = fx.target.pki.admin_dir();
    let ctl = |args: &[&str]| {
        let mut all = vec![
            "ctl",
            "--target",
            mgmt.as_str(),
            "--tls-dir",
            admin.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        Command::new(crate::common::cstor_bin())
            .args(&all)
            .output()
            .unwrap()
    };
    let shown = ctl(&["initiators", "show"]);
    assert!(shown.status.success());
    assert_eq!(
        String::from_utf8_lossy(&shown.stdout).trim(),
        "no initiator may log in"
    );

    let set = ctl(&["--json", "initiators", "set", NODE_A]);
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&set.stdout).unwrap();
    assert_eq!(json["initiators"], serde_json::json!([NODE_A]));
    assert_eq!(json["allow_any"], false);
    assert!(fx.inquiry_as(NODE_A), "an allowed initiator was refused");
    assert!(!fx.inquiry_as(NODE_B), "an initiator not listed got in");
    let table = ctl(&["initiators", "show"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains(NODE_A));

    assert!(ctl(&["initiators", "set", "--none"]).status.success());
    assert!(!fx.inquiry_as(NODE_A), "--none still admitted an initiator");
    assert!(ctl(&["initiators", "set", "--any"]).status.success());
    assert!(fx.inquiry_as(NODE_B), "--any refused an initiator");

    let bad = ctl(&["initiators", "set", "not an iqn"]);
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("not an iqn"), "{stderr}");
    let after = ctl(&["initiators", "show"]);
    assert_eq!(
        String::from_utf8_lossy(&after.stdout).trim(),
        "any initiator may log in"
    );
}
