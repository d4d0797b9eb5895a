//! The target's subcommands (`--target`): volume status, snapshots,
//! resize, the replica set and its consistency factor, the volume's
//! rebuild throttle, and the initiator allowlist.

use anyhow::Result;
use clap::Subcommand;
use cstor_mgmt::v1::{
    target_manager_client::TargetManagerClient, AddReplicaRequest, AllowedInitiators,
    CreateSnapshotRequest, DeleteSnapshotRequest, GetAllowedInitiatorsRequest,
    GetTargetStatusRequest, ListTargetSnapshotsRequest, Membership, RemoveReplicaRequest,
    ResizeRequest, SetAllowedInitiatorsRequest, SetConsistencyFactorRequest,
    SetTargetRebuildThrottleRequest,
};
use cstor_tls::Role;
use serde_json::{json, Value};

use super::output::{emit, table, throttle_text};
use super::status::print_target_status;
use super::{CtlArgs, CtlCommand, Links};

#[derive(Debug, Subcommand)]
pub(super) enum InitiatorsCommand {
    /// The initiator names the target admits now.
    Show,
    /// Replace the list: only these initiator names may log in from now
    /// on; logged-in sessions of others are closed.
    Set {
        /// iSCSI names (iqn., eui. or naa.).
        #[arg(required_unless_present_any = ["any", "none"], conflicts_with_all = ["any", "none"])]
        initiators: Vec<String>,
        /// Admit every initiator.
        #[arg(long, conflicts_with = "none")]
        any: bool,
        /// Admit no initiator.
        #[arg(long)]
        none: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum ReplicaCommand {
    /// Add the replica daemon at ADDRESS (its data address, host:port; the
    /// volume replica must exist there, e.g. `cstor ctl volume create`).
    Add { address: String },
    /// Remove a member, named by data address or by replica id (32 hex
    /// digits, as `status --json` shows it).
    Remove { replica: String },
    /// Set the consistency factor: healthy acknowledgements a write needs
    /// (1..=members). Lowering it below a majority is a knowing choice
    /// (docs/architecture.md, "RF=2 is honest").
    SetCf { consistency_factor: u32 },
}

#[derive(Debug, Subcommand)]
pub(super) enum SnapshotCommand {
    /// Take a snapshot holding every write acknowledged before it.
    Create { name: String },
    /// Destroy a snapshot.
    Delete { name: String },
    /// List the volume's snapshots.
    List,
}

/// The target's subcommands.
pub(super) async fn run(args: CtlArgs, links: &Links) -> Result<()> {
    let addr = links.target.as_str();
    let mut client = TargetManagerClient::new(links.channel(addr, Role::Target, "target").await?);
    let err = |s| target_rpc_error(addr, s);
    match args.command {
        CtlCommand::Status => {
            let status = client
                .get_status(GetTargetStatusRequest {})
                .await
                .map_err(err)?
                .into_inner();
            print_target_status(&status, args.json)?;
        }
        CtlCommand::Resize { size } => {
            let status = client
                .resize(ResizeRequest { size_bytes: size })
                .await
                .map_err(err)?
                .into_inner();
            print_target_status(&status, args.json)?;
        }
        CtlCommand::Snapshot(SnapshotCommand::Create { name }) => {
            client
                .create_snapshot(CreateSnapshotRequest { name: name.clone() })
                .await
                .map_err(err)?;
            if args.json {
                emit(&json!({ "created": name }).to_string());
            } else {
                emit(&format!("created snapshot {name}"));
            }
        }
        CtlCommand::Snapshot(SnapshotCommand::Delete { name }) => {
            client
                .delete_snapshot(DeleteSnapshotRequest { name: name.clone() })
                .await
                .map_err(err)?;
            if args.json {
                emit(&json!({ "deleted": name }).to_string());
            } else {
                emit(&format!("deleted snapshot {name}"));
            }
        }
        CtlCommand::Snapshot(SnapshotCommand::List) => {
            let list = client
                .list_snapshots(ListTargetSnapshotsRequest {})
                .await
                .map_err(err)?
                .into_inner();
            if args.json {
                let snaps: Vec<Value> = list
                    .snapshots
                    .iter()
                    .map(|s| json!({ "name": s.name, "io_seq": s.io_seq }))
                    .collect();
                emit(&serde_json::to_string_pretty(&snaps)?);
            } else {
                let rows = list
                    .snapshots
                    .iter()
                    .map(|s| vec![s.name.clone(), s.io_seq.to_string()])
                    .collect::<Vec<_>>();
                emit(&table(&["NAME", "IO_SEQ"], &rows));
            }
        }
        CtlCommand::Replica(ReplicaCommand::Add { address }) => {
            let record = client
                .add_replica(AddReplicaRequest { address })
                .await
                .map_err(err)?
                .into_inner();
            print_membership(&record, args.json)?;
        }
        CtlCommand::Replica(ReplicaCommand::Remove { replica }) => {
            let record = client
                .remove_replica(RemoveReplicaRequest { replica })
                .await
                .map_err(err)?
                .into_inner();
            print_membership(&record, args.json)?;
        }
        CtlCommand::Replica(ReplicaCommand::SetCf { consistency_factor }) => {
            let record = client
                .set_consistency_factor(SetConsistencyFactorRequest { consistency_factor })
                .await
                .map_err(err)?
                .into_inner();
            print_membership(&record, args.json)?;
        }
        CtlCommand::Initiators(InitiatorsCommand::Show) => {
            let allowed = client
                .get_allowed_initiators(GetAllowedInitiatorsRequest {})
                .await
                .map_err(err)?
                .into_inner();
            print_initiators(&allowed, args.json);
        }
        CtlCommand::Initiators(InitiatorsCommand::Set {
            initiators,
            any,
            none: _,
        }) => {
            let allowed = client
                .set_allowed_initiators(SetAllowedInitiatorsRequest {
                    initiators,
                    allow_any: any,
                })
                .await
                .map_err(err)?
                .into_inner();
            print_initiators(&allowed, args.json);
        }
        CtlCommand::Volume(_) | CtlCommand::Pool(_) | CtlCommand::Rebuild(_) => {}
    }
    Ok(())
}

/// `--target ADDR rebuild throttle`: sets the volume's throttle through
/// its target, which forwards it to the replicas.
pub(super) async fn rebuild_throttle(
    links: &Links,
    bytes_per_second: u64,
    as_json: bool,
) -> Result<()> {
    let addr = links.target.as_str();
    let mut client = TargetManagerClient::new(links.channel(addr, Role::Target, "target").await?);
    let throttle = client
        .set_rebuild_throttle(SetTargetRebuildThrottleRequest { bytes_per_second })
        .await
        .map_err(|s| target_rpc_error(addr, s))?
        .into_inner();
    let bps = throttle.bytes_per_second;
    if as_json {
        emit(&serde_json::to_string_pretty(
            &json!({ "target": addr, "bytes_per_second": bps }),
        )?);
    } else {
        emit(&table(
            &["TARGET", "REBUILD_THROTTLE"],
            &[vec![addr.to_owned(), throttle_text(bps)]],
        ));
    }
    Ok(())
}

fn target_rpc_error(addr: &str, status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "target at {addr}: {} ({:?})",
        status.message(),
        status.code()
    )
}

fn print_initiators(allowed: &AllowedInitiators, json_out: bool) {
    if json_out {
        emit(
            &json!({ "allow_any": allowed.allow_any, "initiators": allowed.initiators })
                .to_string(),
        );
    } else if allowed.allow_any {
        emit("any initiator may log in");
    } else if allowed.initiators.is_empty() {
        emit("no initiator may log in");
    } else {
        let rows: Vec<Vec<String>> = allowed.initiators.iter().map(|i| vec![i.clone()]).collect();
        emit(&table(&["INITIATOR"], &rows));
    }
}

fn membership_json(m: &Membership) -> Value {
    json!({
        "generation": m.generation,
        "consistency_factor": m.consistency_factor,
        "members": m.members.iter().map(|r| json!({
            "replica_id": r.replica_id,
            "address": r.address,
        })).collect::<Vec<_>>(),
    })
}

fn print_membership(m: &Membership, as_json: bool) -> Result<()> {
    if as_json {
        emit(&serde_json::to_string_pretty(&membership_json(m))?);
        return Ok(());
    }
    let rows = m
        .members
        .iter()
        .map(|r| vec![r.address.clone(), r.replica_id.clone()])
        .collect::<Vec<_>>();
    let mut out = format!(
        "membership generation {}, consistency factor {}\n",
        m.generation, m.consistency_factor
    );
    out.push_str(&table(&["MEMBER", "REPLICA_ID"], &rows));
    emit(&out);
    Ok(())
}
