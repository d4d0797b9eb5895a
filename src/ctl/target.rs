//! The target's subcommands (`--target`): volume status, snapshots,
//! resize, the replica set and its consistency factor, the volume's
//! rebuild throttle, and the initiator allowlist.

use anyhow::Result;
use clap::Subcommand;
use cstor_mgmt::size::{format_size, parse_size};
use cstor_mgmt::v1::{
    target_manager_client::TargetManagerClient, AddReplicaRequest, AllowedInitiators,
    CreateSnapshotRequest, DeleteSnapshotRequest, GetAllowedInitiatorsRequest,
    GetTargetStatusRequest, ListTargetSnapshotsRequest, Membership, RemoveReplicaRequest,
    ResizeRequest, SetAllowedInitiatorsRequest, SetConsistencyFactorRequest,
    SetTargetRebuildThrottleRequest,
};
use cstor_mgmt::v1::{GetScrubStatusRequest, ScrubStatus, StartScrubRequest, StopScrubRequest};
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
pub(super) enum ScrubCommand {
    /// Start scrubbing VOLUME (the target's volume): from where the last
    /// scrub stopped, unless --from-start. Returns at once; follow it with
    /// `scrub status`.
    Start {
        /// The volume (the target's: a target serves one).
        volume: String,
        /// Start at the beginning instead of the saved cursor.
        #[arg(long)]
        from_start: bool,
        /// Pace, e.g. 50MiB (per second of volume compared); default: the
        /// volume's rebuild throttle, or 64MiB when it has none.
        #[arg(long, value_parser = parse_size)]
        rate: Option<u64>,
    },
    /// Stop a running scrub of VOLUME; its cursor is kept for the next
    /// start.
    Stop {
        /// The volume (the target's).
        volume: String,
    },
    /// Progress of the running scrub of VOLUME (or the last one's result):
    /// cursor, ETA, mismatched, repaired and undecided ranges.
    Status {
        /// The volume (the target's).
        volume: String,
    },
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
        CtlCommand::Scrub(ScrubCommand::Start {
            volume,
            from_start,
            rate,
        }) => {
            let status = client
                .start_scrub(StartScrubRequest {
                    volume,
                    from_start,
                    bytes_per_second: rate.unwrap_or(0),
                })
                .await
                .map_err(err)?
                .into_inner();
            print_scrub(&status, args.json)?;
        }
        CtlCommand::Scrub(ScrubCommand::Stop { volume }) => {
            let status = client
                .stop_scrub(StopScrubRequest { volume })
                .await
                .map_err(err)?
                .into_inner();
            print_scrub(&status, args.json)?;
        }
        CtlCommand::Scrub(ScrubCommand::Status { volume }) => {
            let status = client
                .get_scrub_status(GetScrubStatusRequest { volume })
                .await
                .map_err(err)?
                .into_inner();
            print_scrub(&status, args.json)?;
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

fn scrub_json(s: &ScrubStatus) -> Value {
    json!({
        "volume": s.volume,
        "state": s.state,
        "cursor_bytes": s.cursor_bytes,
        "total_bytes": s.total_bytes,
        "scrubbed_bytes": s.scrubbed_bytes,
        "ranges_compared": s.ranges_compared,
        "mismatched_ranges": s.mismatched_ranges,
        "repaired_blocks": s.repaired_blocks,
        "undecided_ranges": s.undecided_ranges,
        "bad_block_ranges": s.bad_block_ranges,
        "bytes_per_second": s.bytes_per_second,
        "eta_seconds": s.eta_seconds,
        "passes_completed": s.passes_completed,
        "last_error": s.last_error,
        "interval_seconds": s.interval_seconds,
        "ranges": s.ranges.iter().map(|r| json!({
            "offset": r.offset,
            "length": r.length,
            "outcome": r.outcome,
            "replicas": r.replicas,
            "detail": r.detail,
        })).collect::<Vec<_>>(),
    })
}

fn print_scrub(s: &ScrubStatus, as_json: bool) -> Result<()> {
    if as_json {
        emit(&serde_json::to_string_pretty(&scrub_json(s))?);
        return Ok(());
    }
    let percent = if s.total_bytes == 0 {
        0.0
    } else {
        s.cursor_bytes as f64 * 100.0 / s.total_bytes as f64
    };
    let eta = s
        .eta_seconds
        .map_or_else(|| "-".to_owned(), |secs| format!("{secs}s"));
    let mut out = format!(
        "scrub of {}: {} at {} of {} ({percent:.1}%), {}/s, ETA {eta}\n\
         compared {} ranges ({} this run): {} mismatched ({} with bad blocks), {} blocks repaired, {} undecided; {} passes completed\n",
        s.volume,
        s.state,
        format_size(s.cursor_bytes),
        format_size(s.total_bytes),
        format_size(s.bytes_per_second),
        s.ranges_compared,
        format_size(s.scrubbed_bytes),
        s.mismatched_ranges,
        s.bad_block_ranges,
        s.repaired_blocks,
        s.undecided_ranges,
        s.passes_completed,
    );
    if s.interval_seconds > 0 {
        out.push_str(&format!("scheduled every {}s\n", s.interval_seconds));
    }
    if !s.last_error.is_empty() {
        out.push_str(&format!("last error: {}\n", s.last_error));
    }
    if !s.ranges.is_empty() {
        let rows = s
            .ranges
            .iter()
            .map(|r| {
                vec![
                    r.offset.to_string(),
                    r.length.to_string(),
                    r.outcome.clone(),
                    r.replicas.join(","),
                    r.detail.clone(),
                ]
            })
            .collect::<Vec<_>>();
        out.push_str(&table(
            &["OFFSET", "LENGTH", "OUTCOME", "REPLICAS", "DETAIL"],
            &rows,
        ));
    }
    emit(&out);
    Ok(())
}
