//! What an in-process replica daemon refuses by default, over its real
//! (mutual TLS) ports: a claim of the last epoch (no successor could fence
//! it), and deleting a volume replica in use (a live target session, a
//! member of a replica set) unless the delete is forced.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use cstor_mgmt::v1::replica_manager_client::ReplicaManagerClient;
use cstor_mgmt::v1::{DeleteVolumeRequest, GetVolumeRequest};
use cstor_proto::{Membership, Message, Opcode, Status, Write};
use cstor_tls::Identity;
use support::{call, make_replicated, replica_of, session, target, Conn, Pki, BLOCK};
use tonic::transport::Channel;

type Client = ReplicaManagerClient<Channel>;

/// Writes a block on the session: was it acked?
async fn write_acked(conn: &mut Conn, epoch: u64, io_seq: u64) -> bool {
    let write = Message::Write(Write {
        offset: 0,
        data: Bytes::from(vec![7u8; BLOCK as usize]),
        fua: false,
    });
    matches!(
        call(conn, epoch, io_seq, write).await,
        Some(Message::Ack(Opcode::Write))
    )
}

async fn delete(client: &mut Client, name: &str, force: bool) -> Result<(), tonic::Status> {
    client
        .delete_volume(DeleteVolumeRequest {
            name: name.into(),
            force,
        })
        .await
        .map(drop)
}

async fn exists(client: &mut Client, name: &str) -> bool {
    let request = GetVolumeRequest { name: name.into() };
    match client.get_volume(request).await {
        Ok(_) => true,
        Err(status) if status.code() == tonic::Code::NotFound => false,
        Err(status) => panic!("get {name}: {status}"),
    }
}

#[tokio::test]
async fn a_claim_of_the_last_epoch_is_refused_as_stale_and_changes_nothing() {
    let pki = Pki::new();
    let replica = support::replica(pki.security(&replica_of("p")), "p", &["v"]).await;
    let as_target = pki.security(&target("v"));
    let mut owner = session(replica.data, &as_target, "v", 5).await;

    let (_, answer) = support::hello(replica.data, &as_target, "v", u64::MAX).await;
    match answer {
        Some(Message::Error(e)) => assert_eq!(e.status, Status::StaleEpoch, "{e:?}"),
        other => panic!("a claim of u64::MAX was answered {other:?}"),
    }
    assert_eq!(replica.pool.volume("v").unwrap().epoch().unwrap(), 5);
    assert!(
        write_acked(&mut owner, 5, 10).await,
        "the owner was cut by a refused claim"
    );
}

#[tokio::test]
async fn delete_refuses_a_volume_in_use_unless_forced() {
    let pki = Pki::new();
    let volumes = ["live", "member", "idle"];
    let replica = support::replica(pki.security(&replica_of("p")), "p", &volumes).await;
    let mut client = support::mgmt(replica.mgmt, &pki.security(&Identity::Admin))
        .await
        .unwrap();

    // A live target session: refused, the volume and its session stay.
    let as_target = pki.security(&target("live"));
    let mut owner = session(replica.data, &as_target, "live", 1).await;
    let refused = delete(&mut client, "live", false).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused}");
    assert!(exists(&mut client, "live").await);
    assert!(write_acked(&mut owner, 1, 10).await);

    // A member of a replica set (a membership record naming members):
    // refused, the volume and its record stay.
    make_replicated(&replica.pool, "member").await;
    let record = || {
        let volume = replica.pool.volume("member").unwrap();
        Membership::from_bytes(&volume.membership().unwrap()).unwrap()
    };
    let held = record();
    let refused = delete(&mut client, "member", false).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused}");
    assert!(exists(&mut client, "member").await);
    assert_eq!(record(), held);

    // Neither: deleted as before, and again (idempotent).
    delete(&mut client, "idle", false).await.unwrap();
    delete(&mut client, "idle", false).await.unwrap();
    assert!(!exists(&mut client, "idle").await);

    // Forced: both go; the live session is cut.
    delete(&mut client, "live", true).await.unwrap();
    assert!(!exists(&mut client, "live").await);
    assert!(
        !write_acked(&mut owner, 1, 11).await,
        "the session outlived its volume"
    );
    delete(&mut client, "member", true).await.unwrap();
    assert!(!exists(&mut client, "member").await);
}
