//! Mutual TLS over real loopback TCP: who is let in, who is refused, and
//! that reloaded files take effect for new handshakes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::{Duration, SystemTime};

use cstor_tls::{Ca, Credentials, Identity, Peer, Role, Security, Validity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn year() -> Validity {
    Validity::from_now(Duration::from_secs(365 * 24 * 3600))
}

fn target(volume: &str) -> Identity {
    Identity::Target {
        volumes: vec![volume.into()],
    }
}

fn replica(pool: &str) -> Identity {
    Identity::Replica { pool: pool.into() }
}

fn security(ca: &Ca, identity: &Identity, validity: Validity, dir: &Path) -> Security {
    ca.issue_dir(identity, validity, dir).unwrap();
    Security::Tls(Credentials::load(dir).unwrap())
}

/// Serves one connection with `server`: the handshake result goes back on
/// the channel; an accepted connection echoes one message.
async fn serve_one(
    server: Security,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Receiver<Result<Peer, String>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        match server.accept(tcp).await {
            Ok((mut stream, peer)) => {
                let _ = tx.send(Ok(peer));
                let mut buf = [0u8; 5];
                if stream.read_exact(&mut buf).await.is_ok() {
                    let _ = stream.write_all(&buf).await;
                    let _ = stream.flush().await;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
            }
        }
    });
    (addr, rx)
}

/// A client connects and exchanges one message; the result of each side.
async fn exchange(
    server: Security,
    client: &Security,
    expect: &[Role],
) -> (Result<Peer, String>, Result<Peer, String>) {
    let (addr, server_result) = serve_one(server).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let client_result = match client.connect(tcp, expect).await {
        Ok((mut stream, peer)) => {
            let echoed = async {
                stream.write_all(b"hello").await?;
                stream.flush().await?;
                let mut buf = [0u8; 5];
                stream.read_exact(&mut buf).await?;
                Ok::<_, std::io::Error>(buf)
            }
            .await;
            match echoed {
                Ok(buf) if &buf == b"hello" => Ok(peer),
                Ok(_) => Err("echo differs".into()),
                Err(e) => Err(format!("after handshake: {e}")),
            }
        }
        Err(e) => Err(e.to_string()),
    };
    (server_result.await.unwrap(), client_result)
}

#[tokio::test]
async fn a_target_and_a_replica_of_one_ca_know_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("test", year()).unwrap();
    let server = security(&ca, &replica("pool-a"), year(), &dir.path().join("r"));
    let client = security(&ca, &target("vol-1"), year(), &dir.path().join("t"));
    let (server_saw, client_saw) = exchange(server, &client, &[Role::Replica]).await;
    assert_eq!(server_saw, Ok(Peer::Authenticated(target("vol-1"))));
    assert_eq!(client_saw, Ok(Peer::Authenticated(replica("pool-a"))));
}

#[tokio::test]
async fn a_certificate_of_another_ca_is_refused_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("ours", year()).unwrap();
    let theirs = Ca::generate("theirs", year()).unwrap();
    let server = security(&ca, &replica("p"), year(), &dir.path().join("r"));
    let intruder = security(&theirs, &target("v"), year(), &dir.path().join("i"));
    let (server_saw, client_saw) = exchange(server.clone(), &intruder, &[Role::Replica]).await;
    assert!(server_saw.is_err(), "{server_saw:?}");
    assert!(client_saw.is_err(), "{client_saw:?}");
    // And a server of another CA is refused by our client.
    let client = security(&ca, &target("v"), year(), &dir.path().join("t"));
    let fake = security(&theirs, &replica("p"), year(), &dir.path().join("f"));
    let (_, client_saw) = exchange(fake, &client, &[Role::Replica]).await;
    assert!(client_saw.is_err(), "{client_saw:?}");
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("test", year()).unwrap();
    let expired = Validity {
        not_before: SystemTime::now() - Duration::from_secs(7200),
        not_after: SystemTime::now() - Duration::from_secs(3600),
    };
    let server = security(&ca, &replica("p"), year(), &dir.path().join("r"));
    let client = security(&ca, &target("v"), expired, &dir.path().join("t"));
    let (server_saw, client_saw) = exchange(server, &client, &[Role::Replica]).await;
    assert!(server_saw.is_err(), "{server_saw:?}");
    assert!(client_saw.is_err(), "{client_saw:?}");
}

#[tokio::test]
async fn a_client_without_a_certificate_or_without_tls_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("test", year()).unwrap();
    let server = security(&ca, &replica("p"), year(), &dir.path().join("r"));
    // Plaintext bytes at a TLS port.
    let (server_saw, client_saw) = exchange(server.clone(), &Security::Plaintext, &[]).await;
    assert!(server_saw.is_err(), "{server_saw:?}");
    assert!(client_saw.is_err(), "{client_saw:?}");
    // TLS that presents no certificate.
    let (addr, server_result) = serve_one(server).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    if let Ok(mut tls) = cstor_tls::testing::connect_without_certificate(tcp).await {
        // TLS 1.3: the refusal can arrive after the client's finish.
        let _ = tls.write_all(b"hello").await;
        let mut buf = [0u8; 5];
        assert!(tls.read_exact(&mut buf).await.is_err());
    }
    assert!(server_result.await.unwrap().is_err());
}

#[tokio::test]
async fn a_server_of_an_unexpected_role_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("test", year()).unwrap();
    // A target certificate where a replica was expected.
    let server = security(&ca, &target("v"), year(), &dir.path().join("s"));
    let client = security(&ca, &target("v"), year(), &dir.path().join("c"));
    let (_, client_saw) = exchange(server, &client, &[Role::Replica]).await;
    assert!(client_saw.is_err(), "{client_saw:?}");
}

#[tokio::test]
async fn reloaded_files_serve_new_handshakes() {
    let dir = tempfile::tempdir().unwrap();
    let old = Ca::generate("old", year()).unwrap();
    let new = Ca::generate("new", year()).unwrap();
    let server_dir = dir.path().join("r");
    let server = security(&old, &replica("p"), year(), &server_dir);
    let Security::Tls(credentials) = &server else {
        unreachable!()
    };
    let client = security(&new, &target("v"), year(), &dir.path().join("t"));
    // Before: the new CA's client is a stranger.
    let (server_saw, _) = exchange(server.clone(), &client, &[Role::Replica]).await;
    assert!(server_saw.is_err());
    // Unchanged files: nothing to do.
    assert!(!credentials.reload_if_changed().unwrap());
    // Rotation to the new CA: new handshakes use it.
    new.issue_dir(&replica("p2"), year(), &server_dir).unwrap();
    assert!(credentials.reload_if_changed().unwrap());
    assert_eq!(credentials.identity(), replica("p2"));
    let (server_saw, client_saw) = exchange(server.clone(), &client, &[Role::Replica]).await;
    assert_eq!(server_saw, Ok(Peer::Authenticated(target("v"))));
    assert_eq!(client_saw, Ok(Peer::Authenticated(replica("p2"))));
    // A key that does not match the certificate keeps the current set.
    let other = new.issue(&replica("p3"), year()).unwrap();
    cstor_tls::issue::write_private(&server_dir.join("tls.key"), other.key_pem.as_bytes()).unwrap();
    assert!(credentials.reload_if_changed().is_err());
    assert_eq!(credentials.identity(), replica("p2"));
}

#[test]
fn a_reload_that_would_change_the_processs_job_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("test", year()).unwrap();
    ca.issue_dir(&target("v1"), year(), dir.path()).unwrap();
    let credentials = Credentials::load(dir.path()).unwrap();
    credentials
        .require(Box::new(|id| {
            if id.may_serve("v1") {
                Ok(())
            } else {
                Err(format!("{id} does not name v1"))
            }
        }))
        .unwrap();
    // A certificate for another volume is not taken.
    ca.issue_dir(&target("v2"), year(), dir.path()).unwrap();
    assert!(credentials.reload_if_changed().is_err());
    assert_eq!(credentials.identity(), target("v1"));
    // A renewed one for the same volume is.
    ca.issue_dir(
        &Identity::Target {
            volumes: vec!["v1".into(), "v3".into()],
        },
        year(),
        dir.path(),
    )
    .unwrap();
    assert!(credentials.reload_if_changed().unwrap());
    assert!(credentials.identity().may_serve("v3"));
    // And a requirement the current certificate fails is refused at once.
    let other = Credentials::load(dir.path()).unwrap();
    assert!(other.require(Box::new(|_| Err("no".into()))).is_err());
}

#[test]
fn flags_need_tls_or_an_explicit_opt_out() {
    assert!(Security::from_flags(None, false).is_err());
    assert!(Security::from_flags(Some(Path::new("/nonexistent")), true).is_err());
    assert!(Security::from_flags(None, true).unwrap().is_plaintext());
    assert!(Security::from_flags(Some(Path::new("/nonexistent")), false).is_err());
}

#[test]
fn ca_files_are_private_and_never_overwritten() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("test", year()).unwrap();
    ca.save(dir.path()).unwrap();
    for f in ["ca.crt", "ca.key"] {
        let mode = std::fs::metadata(dir.path().join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    assert!(Ca::generate("other", year())
        .unwrap()
        .save(dir.path())
        .is_err());
    let loaded = Ca::load(dir.path()).unwrap();
    // The loaded CA signs certificates the original's trust accepts.
    let issued = loaded.issue(&Identity::Admin, year()).unwrap();
    cstor_tls::issue::write_tls_dir(&dir.path().join("admin"), ca.cert_pem(), &issued).unwrap();
    let creds = Credentials::load(&dir.path().join("admin")).unwrap();
    assert_eq!(creds.identity(), Identity::Admin);
    // The same CA from its PEM pair (as kept in a Secret) signs too, and
    // the files' contents check out without files.
    let from_pem = Ca::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
    let issued = from_pem.issue(&Identity::Reader, year()).unwrap();
    let (identity, not_after) = cstor_tls::credentials::inspect(
        ca.cert_pem().as_bytes(),
        issued.cert_pem.as_bytes(),
        issued.key_pem.as_bytes(),
    )
    .unwrap();
    assert_eq!(identity, Identity::Reader);
    assert!(not_after > SystemTime::now());
    // A key that is not the certificate's is refused.
    assert!(cstor_tls::credentials::inspect(
        ca.cert_pem().as_bytes(),
        issued.cert_pem.as_bytes(),
        ca.key_pem().as_bytes(),
    )
    .is_err());
    assert!(Ca::from_pem(ca.cert_pem(), "not a key").is_err());
}
