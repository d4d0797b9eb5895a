//! `cstor certs`: a CA made once and never overwritten, TLS directories
//! issued for every role that load with that role's identity, private
//! files, and clear refusals of missing or contradictory arguments.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use crate::common::cstor_bin;
use cstor_tls::{Credentials, Identity, Peer, Role, Security};

fn certs(args: &[&str]) -> Output {
    Command::new(cstor_bin())
        .arg("certs")
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) {
    let out = certs(args);
    assert!(
        out.status.success(),
        "cstor certs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The command failed with exit code 1 and an error containing `what`.
fn refused(args: &[&str], what: &str) {
    let out = certs(args);
    assert_eq!(out.status.code(), Some(1), "cstor certs {args:?} succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(what), "cstor certs {args:?}: {stderr}");
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn a_ca_is_created_once_and_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    ok(&["ca", "--out", s(&ca), "--name", "test cluster"]);
    for file in ["ca.crt", "ca.key"] {
        assert_eq!(mode(&ca.join(file)), 0o600, "{file}");
    }
    let (crt, key) = (
        std::fs::read(ca.join("ca.crt")).unwrap(),
        std::fs::read(ca.join("ca.key")).unwrap(),
    );
    refused(&["ca", "--out", s(&ca)], "refusing to overwrite");
    assert_eq!(std::fs::read(ca.join("ca.crt")).unwrap(), crt);
    assert_eq!(std::fs::read(ca.join("ca.key")).unwrap(), key);
    // Half a CA (only its certificate) is not overwritten either.
    std::fs::remove_file(ca.join("ca.key")).unwrap();
    refused(&["ca", "--out", s(&ca)], "refusing to overwrite");
    assert_eq!(std::fs::read(ca.join("ca.crt")).unwrap(), crt);
}

#[tokio::test]
async fn every_role_is_issued_and_its_directory_loads_with_that_identity() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    ok(&["ca", "--out", s(&ca)]);
    let issue = |name: &str, role_args: &[&str]| {
        let out = dir.path().join(name);
        let mut args = vec!["issue", "--ca", s(&ca), "--out", s(&out)];
        args.extend_from_slice(role_args);
        ok(&args);
        out
    };
    let target = issue(
        "target",
        &["--role", "target", "--volume", "vol-a", "--volume", "vol b"],
    );
    let replica = issue("replica", &["--role", "replica", "--pool", "pool-0"]);
    let admin = issue("admin", &["--role", "admin", "--days", "2"]);
    let reader = issue("reader", &["--role", "reader"]);
    for (dir, identity) in [
        (
            &target,
            Identity::Target {
                volumes: vec!["vol-a".into(), "vol b".into()],
            },
        ),
        (
            &replica,
            Identity::Replica {
                pool: "pool-0".into(),
            },
        ),
        (&admin, Identity::Admin),
        (&reader, Identity::Reader),
    ] {
        assert_eq!(Credentials::load(dir).unwrap().identity(), identity);
        for file in ["ca.crt", "tls.crt", "tls.key"] {
            assert_eq!(mode(&dir.join(file)), 0o600, "{}/{file}", dir.display());
        }
        assert_eq!(
            std::fs::read(dir.join("ca.crt")).unwrap(),
            std::fs::read(ca.join("ca.crt")).unwrap(),
            "{} trusts another CA",
            dir.display()
        );
    }
    // --days: the admin certificate ends in two days (give or take the
    // time this test took), the others' in the default year.
    let days = |d: &Path| {
        Credentials::load(d)
            .unwrap()
            .not_after()
            .duration_since(SystemTime::now())
            .unwrap()
            .as_secs()
            / 3600
    };
    assert!((47..=48).contains(&days(&admin)), "{}", days(&admin));
    assert!(days(&reader) > 364 * 24, "{}", days(&reader));

    // They were signed by the CA: the target's and the replica's
    // directories complete a mutual TLS handshake, each seeing the other's
    // identity.
    let server = Security::Tls(Credentials::load(&replica).unwrap());
    let client = Security::Tls(Credentials::load(&target).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        server.accept(tcp).await.map(|(_, peer)| peer).unwrap()
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (_, seen) = client.connect(tcp, &[Role::Replica]).await.unwrap();
    assert_eq!(
        seen,
        Peer::Authenticated(Identity::Replica {
            pool: "pool-0".into()
        })
    );
    let peer = tokio::time::timeout(Duration::from_secs(10), accepted)
        .await
        .unwrap()
        .unwrap();
    assert!(peer.may_serve("vol-a") && peer.may_serve("vol b") && !peer.may_serve("vol-c"));

    // Issuing again into a directory replaces its certificate (rotation).
    let before = std::fs::read(admin.join("tls.crt")).unwrap();
    issue("admin", &["--role", "admin"]);
    assert_ne!(std::fs::read(admin.join("tls.crt")).unwrap(), before);
    assert_eq!(
        Credentials::load(&admin).unwrap().identity(),
        Identity::Admin
    );
}

#[test]
fn missing_and_contradictory_arguments_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    ok(&["ca", "--out", s(&ca)]);
    let out = dir.path().join("out");
    let base = ["issue", "--ca", s(&ca), "--out", s(&out)];
    let with = |more: &[&'static str]| -> Vec<&str> {
        base.iter().copied().chain(more.iter().copied()).collect()
    };
    refused(&with(&["--role", "target"]), "--volume");
    refused(&with(&["--role", "replica"]), "--pool");
    refused(&with(&["--role", "admin", "--pool", "p"]), "--pool");
    refused(&with(&["--role", "reader", "--volume", "v"]), "--volume");
    refused(
        &with(&["--role", "target", "--volume", "v", "--pool", "p"]),
        "--pool",
    );
    refused(
        &with(&["--role", "replica", "--pool", "p", "--volume", "v"]),
        "--volume",
    );
    refused(&with(&["--role", "target", "--volume", ""]), "volume name");
    assert!(!out.exists(), "a refused issue wrote {}", out.display());

    // No CA there; the CA's own directory as the output.
    let nowhere = dir.path().join("no-ca");
    refused(
        &[
            "issue",
            "--ca",
            s(&nowhere),
            "--out",
            s(&out),
            "--role",
            "admin",
        ],
        "no-ca",
    );
    refused(
        &["issue", "--ca", s(&ca), "--out", s(&ca), "--role", "admin"],
        "CA key",
    );
    assert!(!ca.join("tls.crt").exists());

    // Bad values are refused by the command line itself (exit code 2).
    for args in [
        with(&["--role", "root"]),
        with(&["--role", "admin", "--days", "0"]),
        vec!["issue", "--out", s(&out), "--role", "admin"],
        vec!["ca"],
    ] {
        let out = certs(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}
