//! `cstor ctl`: the operator's command line for replica daemons (pools,
//! volume replicas, rebuild throttle) and targets (volume status with
//! rebuild progress and ETA, snapshots, resize, replica membership). Talks
//! to a daemon's or a target's management API (gRPC) and prints a table,
//! or JSON with `--json`. An unreachable daemon or target is an error
//! naming its address (connecting is bounded by [`CONNECT_TIMEOUT`]).

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use cstor_mgmt::v1::{
    replica_manager_client::ReplicaManagerClient, target_manager_client::TargetManagerClient,
    AddReplicaRequest, CreateSnapshotRequest, CreateVolumeRequest, DeleteSnapshotRequest,
    DeleteVolumeRequest, GetPoolRequest, GetTargetStatusRequest, GrowVolumeRequest,
    ListSnapshotsRequest, ListTargetSnapshotsRequest, ListVolumesRequest, Membership, Pool,
    Provisioning, RemoveReplicaRequest, ReplicaState, ResizeRequest, SetConsistencyFactorRequest,
    SetRebuildThrottleRequest, SetTargetRebuildThrottleRequest, TargetReplicaState, TargetStatus,
    VolumeReplica,
};
use cstor_mgmt::v1::{AllowedInitiators, GetAllowedInitiatorsRequest, SetAllowedInitiatorsRequest};
use serde_json::{json, Value};
use tonic::transport::Channel;

use cstor_mgmt::size::{format_size, parse_size};

/// Where `--target` points when not given (the target's default
/// `--mgmt-listen`).
const DEFAULT_TARGET: &str = "127.0.0.1:7700";

/// Bound on connecting to a daemon, so an unreachable one is a clear error
/// rather than a hang.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Management address of the replica daemon (host:port). `pool list`
    /// and `rebuild throttle` take it several times (every daemon named).
    #[arg(long, env = "CSTOR_MGMT", default_value = "127.0.0.1:7601")]
    mgmt: Vec<String>,
    /// Management address of the target (host:port), for `status`,
    /// `snapshot`, `resize` and `replica` [default: 127.0.0.1:7700]. Given
    /// to `rebuild throttle`, it sets the volume's throttle through the
    /// target instead of the daemons' own.
    #[arg(long, env = "CSTOR_TARGET_MGMT")]
    target: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Volume replicas in the daemon's pool.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// The daemon's pool.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// The target's volume: quorum, epoch, io_seq and every replica as the
    /// target sees it (state, acknowledged io_seq, in-flight, rebuild).
    Status,
    /// Snapshots of the target's volume, taken and destroyed at quorum.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Grow the target's volume at quorum (initiators see the new
    /// capacity).
    Resize {
        /// New size, e.g. 20GiB; never smaller than now.
        #[arg(long, value_parser = parse_size)]
        size: u64,
    },
    /// The target's replica set: add (scale up; full rebuild, counts for
    /// quorum once healthy), remove (scale down), consistency factor. A
    /// replace is a remove then an add.
    #[command(subcommand)]
    Replica(ReplicaCommand),
    /// Rebuilds: of a target's volume (--target), or of the daemons named
    /// by --mgmt.
    #[command(subcommand)]
    Rebuild(RebuildCommand),
    /// The initiators the target admits (the CSI driver's publish
    /// fencing): show them, or replace the list.
    #[command(subcommand)]
    Initiators(InitiatorsCommand),
}

#[derive(Debug, Subcommand)]
enum InitiatorsCommand {
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
enum ReplicaCommand {
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
enum RebuildCommand {
    /// Limit the bytes per second a rebuild pulls (the rebuilding replica
    /// paces itself); 0: no limit. With --target: every rebuild of that
    /// target's volume (the target tells its replicas, now and whenever
    /// one reconnects). Else: every rebuild into the daemons named by
    /// --mgmt; a daemon's limit also caps each volume's. Takes effect on
    /// the next chunk of running rebuilds.
    Throttle {
        /// e.g. 50MiB, or 0.
        #[arg(value_parser = parse_size)]
        bytes_per_sec: u64,
    },
}

#[derive(Debug, Subcommand)]
enum SnapshotCommand {
    /// Take a snapshot holding every write acknowledged before it.
    Create { name: String },
    /// Destroy a snapshot.
    Delete { name: String },
    /// List the volume's snapshots.
    List,
}

#[derive(Debug, Subcommand)]
enum VolumeCommand {
    /// Create a volume replica (thin unless --thick).
    Create {
        name: String,
        /// Logical size, e.g. 10GiB.
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Reserve all space now; refused when the pool cannot hold it.
        #[arg(long)]
        thick: bool,
        /// Logical block size: 512 or 4096.
        #[arg(long, default_value_t = 4096, value_parser = parse_block_size)]
        block_size: u32,
    },
    /// List volume replicas.
    List,
    /// Delete a volume replica and its snapshots.
    Delete { name: String },
    /// Grow a volume replica to a new size.
    Grow {
        name: String,
        #[arg(long, value_parser = parse_size)]
        size: u64,
    },
    /// List the snapshots of a volume replica.
    Snapshots { name: String },
}

#[derive(Debug, Subcommand)]
enum PoolCommand {
    /// Capacity, usage and devices of the pool.
    Status,
    /// One line per pool of every daemon named by --mgmt.
    List,
}

fn parse_block_size(text: &str) -> Result<u32, String> {
    match text {
        "512" => Ok(512),
        "4096" => Ok(4096),
        _ => Err(format!("block size must be 512 or 4096, not {text}")),
    }
}

pub async fn run(args: CtlArgs) -> Result<()> {
    match &args.command {
        CtlCommand::Status
        | CtlCommand::Snapshot(_)
        | CtlCommand::Resize { .. }
        | CtlCommand::Replica(_)
        | CtlCommand::Initiators(_) => return run_target(args).await,
        CtlCommand::Pool(PoolCommand::List) => return pool_list(&args.mgmt, args.json).await,
        CtlCommand::Rebuild(RebuildCommand::Throttle { bytes_per_sec }) => {
            return match &args.target {
                Some(target) => target_rebuild_throttle(target, *bytes_per_sec, args.json).await,
                None => rebuild_throttle(&args.mgmt, *bytes_per_sec, args.json).await,
            };
        }
        CtlCommand::Volume(_) | CtlCommand::Pool(PoolCommand::Status) => {}
    }
    let addr = match args.mgmt.as_slice() {
        [one] => one.as_str(),
        _ => anyhow::bail!("this command talks to one replica daemon: give --mgmt once"),
    };
    let mut client = connect(addr).await?;
    match args.command {
        CtlCommand::Status
        | CtlCommand::Snapshot(_)
        | CtlCommand::Resize { .. }
        | CtlCommand::Replica(_)
        | CtlCommand::Rebuild(_)
        | CtlCommand::Initiators(_)
        | CtlCommand::Pool(PoolCommand::List) => {}
        CtlCommand::Pool(PoolCommand::Status) => {
            let pool = client
                .get_pool(GetPoolRequest {})
                .await
                .map_err(|s| rpc_error(addr, s))?
                .into_inner();
            if args.json {
                emit(&serde_json::to_string_pretty(&pool_json(&pool))?);
            } else {
                print_pool(&pool);
            }
        }
        CtlCommand::Volume(VolumeCommand::Create {
            name,
            size,
            thick,
            block_size,
        }) => {
            let provisioning = if thick {
                Provisioning::Thick
            } else {
                Provisioning::Thin
            };
            let vol = client
                .create_volume(CreateVolumeRequest {
                    name,
                    size_bytes: size,
                    block_size,
                    provisioning: provisioning.into(),
                    clone_of: String::new(),
                })
                .await
                .map_err(|s| rpc_error(addr, s))?
                .into_inner();
            print_volumes(&[vol], args.json)?;
        }
        CtlCommand::Volume(VolumeCommand::List) => {
            let list = client
                .list_volumes(ListVolumesRequest {})
                .await
                .map_err(|s| rpc_error(addr, s))?
                .into_inner();
            print_volumes(&list.volumes, args.json)?;
        }
        CtlCommand::Volume(VolumeCommand::Delete { name }) => {
            client
                .delete_volume(DeleteVolumeRequest { name: name.clone() })
                .await
                .map_err(|s| rpc_error(addr, s))?;
            if args.json {
                emit(&json!({ "deleted": name }).to_string());
            } else {
                emit(&format!("deleted volume replica {name}"));
            }
        }
        CtlCommand::Volume(VolumeCommand::Grow { name, size }) => {
            let vol = client
                .grow_volume(GrowVolumeRequest {
                    name,
                    size_bytes: size,
                })
                .await
                .map_err(|s| rpc_error(addr, s))?
                .into_inner();
            print_volumes(&[vol], args.json)?;
        }
        CtlCommand::Volume(VolumeCommand::Snapshots { name }) => {
            let list = client
                .list_snapshots(ListSnapshotsRequest { volume: name })
                .await
                .map_err(|s| rpc_error(addr, s))?
                .into_inner();
            if args.json {
                let snaps: Vec<Value> = list
                    .snapshots
                    .iter()
                    .map(|s| {
                        json!({
                            "name": s.name,
                            "io_seq": s.io_seq,
                            "created_unix_seconds": s.created_unix_seconds,
                            "unique_bytes": s.unique_bytes,
                        })
                    })
                    .collect();
                emit(&serde_json::to_string_pretty(&snaps)?);
            } else {
                let rows = list
                    .snapshots
                    .iter()
                    .map(|s| {
                        vec![
                            s.name.clone(),
                            s.io_seq.to_string(),
                            s.created_unix_seconds.to_string(),
                            format_size(s.unique_bytes),
                        ]
                    })
                    .collect::<Vec<_>>();
                emit(&table(&["NAME", "IO_SEQ", "CREATED", "UNIQUE"], &rows));
            }
        }
    }
    Ok(())
}

/// The target's subcommands.
async fn run_target(args: CtlArgs) -> Result<()> {
    let addr = args.target.as_deref().unwrap_or(DEFAULT_TARGET);
    let mut client = TargetManagerClient::new(channel(addr, "target").await?);
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

/// `pool list`: every daemon's pool, one line each; an unreachable daemon
/// is a line saying so, and makes the command fail once all are listed.
async fn pool_list(daemons: &[String], as_json: bool) -> Result<()> {
    let mut pools = Vec::new();
    let mut failures = Vec::new();
    for addr in daemons {
        let answer = async {
            let mut client = connect(addr).await?;
            client
                .get_pool(GetPoolRequest {})
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| rpc_error(addr, s))
        }
        .await;
        match answer {
            Ok(pool) => pools.push((addr.clone(), pool)),
            Err(e) => failures.push((addr.clone(), format!("{e:#}"))),
        }
    }
    if as_json {
        let mut list: Vec<Value> = pools
            .iter()
            .map(|(addr, p)| {
                let mut v = pool_json(p);
                v["mgmt"] = json!(addr);
                v
            })
            .collect();
        list.extend(
            failures
                .iter()
                .map(|(addr, e)| json!({ "mgmt": addr, "error": e })),
        );
        emit(&serde_json::to_string_pretty(&list)?);
    } else {
        let mut rows: Vec<Vec<String>> = pools
            .iter()
            .map(|(addr, p)| {
                vec![
                    addr.clone(),
                    p.name.clone(),
                    format_size(p.capacity_bytes),
                    format_size(p.used_bytes),
                    format_size(p.free_bytes),
                    p.devices.len().to_string(),
                    p.io_backend.clone(),
                ]
            })
            .collect();
        rows.extend(failures.iter().map(|(addr, _)| {
            let mut row = vec![addr.clone(), "unreachable".to_string()];
            row.resize(7, String::new());
            row
        }));
        emit(&table(
            &[
                "DAEMON", "POOL", "CAPACITY", "USED", "FREE", "DEVICES", "IO",
            ],
            &rows,
        ));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        let all: Vec<String> = failures.into_iter().map(|(_, e)| e).collect();
        anyhow::bail!("{}", all.join("; "))
    }
}

/// `rebuild throttle`: sets the limit on every daemon named; stops at the
/// first that fails (the ones before it keep the new limit).
async fn rebuild_throttle(daemons: &[String], bytes_per_second: u64, as_json: bool) -> Result<()> {
    let mut set = Vec::new();
    for addr in daemons {
        let mut client = connect(addr).await?;
        let throttle = client
            .set_rebuild_throttle(SetRebuildThrottleRequest { bytes_per_second })
            .await
            .map_err(|s| rpc_error(addr, s))?
            .into_inner();
        set.push((addr.clone(), throttle.bytes_per_second));
    }
    if as_json {
        let list: Vec<Value> = set
            .iter()
            .map(|(addr, bps)| json!({ "mgmt": addr, "bytes_per_second": bps }))
            .collect();
        emit(&serde_json::to_string_pretty(&list)?);
    } else {
        let rows = set
            .iter()
            .map(|(addr, bps)| vec![addr.clone(), throttle_text(*bps)])
            .collect::<Vec<_>>();
        emit(&table(&["DAEMON", "REBUILD_THROTTLE"], &rows));
    }
    Ok(())
}

/// `--target ADDR rebuild throttle`: sets the volume's throttle through
/// its target, which forwards it to the replicas.
async fn target_rebuild_throttle(addr: &str, bytes_per_second: u64, as_json: bool) -> Result<()> {
    let mut client = TargetManagerClient::new(channel(addr, "target").await?);
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

/// A rate limit as shown in a table.
fn throttle_text(bytes_per_second: u64) -> String {
    if bytes_per_second == 0 {
        "unlimited".to_string()
    } else {
        format!("{}/s", format_size(bytes_per_second))
    }
}

fn target_rpc_error(addr: &str, status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "target at {addr}: {} ({:?})",
        status.message(),
        status.code()
    )
}

fn target_state_name(state: i32) -> &'static str {
    match TargetReplicaState::try_from(state) {
        Ok(TargetReplicaState::Healthy) => "healthy",
        Ok(TargetReplicaState::Degraded) => "degraded",
        Ok(TargetReplicaState::Rebuilding) => "rebuilding",
        Ok(TargetReplicaState::Offline) => "offline",
        Ok(TargetReplicaState::Removed) => "removed",
        Ok(TargetReplicaState::Failed) => "failed",
        Ok(TargetReplicaState::Unspecified) | Err(_) => "unknown",
    }
}

fn target_status_json(s: &TargetStatus) -> Value {
    json!({
        "volume": s.volume,
        "size_bytes": s.size_bytes,
        "block_size": s.block_size_bytes,
        "epoch": s.epoch,
        "consistency_factor": s.consistency_factor,
        "healthy": s.healthy,
        "read_only": s.read_only,
        "fenced": s.fenced,
        "next_io_seq": s.next_io_seq,
        "in_flight": s.in_flight,
        "snapshot_or_resize_in_progress": s.barrier,
        "membership_generation": s.membership_generation,
        "rebuild_throttle_bytes_per_second": s.rebuild_throttle_bytes_per_second,
        "replicas": s.replicas.iter().map(|r| json!({
            "address": r.address,
            "replica_id": r.replica_id,
            "state": target_state_name(r.state),
            "acked_io_seq": r.acked_io_seq,
            "in_flight": r.in_flight,
            "rebuilt_bytes": r.rebuilt_bytes,
            "rebuild": r.rebuild.as_ref().map(|b| json!({
                "source": b.source,
                "from_io_seq": b.from_io_seq,
                "source_address": b.source_address,
                "done_bytes": b.done_bytes,
                "total_bytes": b.total_bytes,
                "eta_seconds": b.eta_seconds,
            })),
        })).collect::<Vec<_>>(),
    })
}

/// A rebuild as the status table shows it: done/total (percent), source,
/// time left.
fn rebuild_cell(b: &cstor_mgmt::v1::TargetRebuild) -> String {
    let percent = if b.total_bytes == 0 {
        0.0
    } else {
        b.done_bytes.min(b.total_bytes) as f64 * 100.0 / b.total_bytes as f64
    };
    let eta = b.eta_seconds.map_or_else(
        || "ETA unknown".to_string(),
        |s| format!("ETA {}", format_eta(s)),
    );
    let source = if b.source_address.is_empty() {
        format!("#{}", b.source)
    } else {
        b.source_address.clone()
    };
    format!(
        "{}/{} ({percent:.0}%) from {source}, {eta}",
        format_size(b.done_bytes),
        format_size(b.total_bytes),
    )
}

/// Seconds as `1h02m03s` / `2m03s` / `3s`.
fn format_eta(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

fn print_target_status(s: &TargetStatus, as_json: bool) -> Result<()> {
    if as_json {
        emit(&serde_json::to_string_pretty(&target_status_json(s))?);
        return Ok(());
    }
    let mode = if s.fenced {
        "fenced"
    } else if s.read_only {
        "read-only"
    } else {
        "read-write"
    };
    let mut out = table(
        &[
            "VOLUME",
            "SIZE",
            "MODE",
            "HEALTHY",
            "CF",
            "EPOCH",
            "NEXT_IO_SEQ",
            "IN_FLIGHT",
            "MEMBERSHIP",
        ],
        &[vec![
            s.volume.clone(),
            format_size(s.size_bytes),
            mode.to_string(),
            format!("{}/{}", s.healthy, s.replicas.len()),
            s.consistency_factor.to_string(),
            s.epoch.to_string(),
            s.next_io_seq.to_string(),
            s.in_flight.to_string(),
            format!("gen {}", s.membership_generation),
        ]],
    );
    out.push('\n');
    let rows = s
        .replicas
        .iter()
        .map(|r| {
            vec![
                r.address.clone(),
                r.replica_id.get(..8).unwrap_or_default().to_string(),
                target_state_name(r.state).to_string(),
                r.acked_io_seq.to_string(),
                r.in_flight.to_string(),
                r.rebuild.as_ref().map_or_else(String::new, rebuild_cell),
            ]
        })
        .collect::<Vec<_>>();
    out.push_str(&table(
        &[
            "REPLICA",
            "ID",
            "STATE",
            "ACKED_IO_SEQ",
            "IN_FLIGHT",
            "REBUILD",
        ],
        &rows,
    ));
    emit(&out);
    Ok(())
}

async fn connect(addr: &str) -> Result<ReplicaManagerClient<Channel>> {
    Ok(ReplicaManagerClient::new(
        channel(addr, "replica daemon").await?,
    ))
}

/// A channel to a management API; `what` names the peer in errors.
async fn channel(addr: &str, what: &str) -> Result<Channel> {
    let endpoint = Channel::from_shared(format!("http://{addr}"))
        .with_context(|| format!("invalid management address {addr:?}"))?
        .connect_timeout(CONNECT_TIMEOUT);
    let channel = endpoint.connect().await.map_err(|e| {
        let mut msg = format!("cannot reach the {what} at {addr}");
        let mut source: Option<&dyn std::error::Error> = Some(&e);
        while let Some(err) = source {
            msg.push_str(": ");
            msg.push_str(&err.to_string());
            source = err.source();
        }
        anyhow::anyhow!(msg)
    })?;
    Ok(channel)
}

fn rpc_error(addr: &str, status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "replica daemon at {addr}: {} ({:?})",
        status.message(),
        status.code()
    )
}

fn state_name(state: i32) -> &'static str {
    match ReplicaState::try_from(state) {
        Ok(ReplicaState::Healthy) => "healthy",
        Ok(ReplicaState::Degraded) => "degraded",
        Ok(ReplicaState::Rebuilding) => "rebuilding",
        Ok(ReplicaState::Poisoned) => "poisoned",
        Ok(ReplicaState::Offline) => "offline",
        Ok(ReplicaState::Unspecified) | Err(_) => "unknown",
    }
}

fn provisioning_name(p: i32) -> &'static str {
    match Provisioning::try_from(p) {
        Ok(Provisioning::Thick) => "thick",
        _ => "thin",
    }
}

fn volume_json(v: &VolumeReplica) -> Value {
    json!({
        "name": v.name,
        "size_bytes": v.size_bytes,
        "block_size": v.block_size,
        "provisioning": provisioning_name(v.provisioning),
        "allocated_bytes": v.allocated_bytes,
        "replica_id": v.replica_id,
        "state": state_name(v.state),
        "last_durable_io_seq": v.last_durable_io_seq,
        "epoch": v.epoch,
        "snapshot_count": v.snapshot_count,
        "origin": v.origin,
        "rebuild": v.rebuild.as_ref().map(|r| json!({
            "done_bytes": r.done_bytes,
            "total_bytes": r.total_bytes,
            "rate_bytes_per_second": r.rate_bytes_per_second,
            "eta_seconds": r.eta_seconds,
            "source": r.source,
        })),
    })
}

fn pool_json(p: &Pool) -> Value {
    json!({
        "name": p.name,
        "guid": p.guid,
        "capacity_bytes": p.capacity_bytes,
        "used_bytes": p.used_bytes,
        "free_bytes": p.free_bytes,
        "chunk_size_bytes": p.chunk_size_bytes,
        "format_version": p.format_version,
        "io_backend": p.io_backend,
        "devices": p.devices.iter().map(|d| json!({
            "path": d.path, "size_bytes": d.size_bytes, "direct_io": d.direct_io,
        })).collect::<Vec<_>>(),
    })
}

fn print_volumes(volumes: &[VolumeReplica], as_json: bool) -> Result<()> {
    if as_json {
        let list: Vec<Value> = volumes.iter().map(volume_json).collect();
        emit(&serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let rows = volumes
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                format_size(v.size_bytes),
                format_size(v.allocated_bytes),
                provisioning_name(v.provisioning).to_string(),
                state_name(v.state).to_string(),
                v.last_durable_io_seq.to_string(),
                v.epoch.to_string(),
                v.snapshot_count.to_string(),
            ]
        })
        .collect::<Vec<_>>();
    emit(&table(
        &[
            "NAME",
            "SIZE",
            "ALLOCATED",
            "PROVISIONING",
            "STATE",
            "IO_SEQ",
            "EPOCH",
            "SNAPSHOTS",
        ],
        &rows,
    ));
    Ok(())
}

fn print_pool(p: &Pool) {
    let rows = vec![vec![
        p.name.clone(),
        p.guid.clone(),
        format_size(p.capacity_bytes),
        format_size(p.used_bytes),
        format_size(p.free_bytes),
        format_size(u64::from(p.chunk_size_bytes)),
        p.io_backend.clone(),
    ]];
    let mut out = table(
        &["POOL", "GUID", "CAPACITY", "USED", "FREE", "CHUNK", "IO"],
        &rows,
    );
    out.push('\n');
    let rows = p
        .devices
        .iter()
        .map(|d| {
            vec![
                d.path.clone(),
                format_size(d.size_bytes),
                if d.direct_io { "direct" } else { "buffered" }.to_string(),
            ]
        })
        .collect::<Vec<_>>();
    out.push_str(&table(&["DEVICE", "SIZE", "MODE"], &rows));
    emit(&out);
}

/// Writes a command's output to stdout. A closed pipe (`| head`) is not
/// an error worth a panic: the reader has what it wanted.
fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out
        .write_all(text.as_bytes())
        .and_then(|()| {
            if text.ends_with('\n') {
                Ok(())
            } else {
                out.write_all(b"\n")
            }
        })
        .and_then(|()| out.flush());
}

/// Rows under headers, each column as wide as its widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let text = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        format!("{}\n", text.trim_end())
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_reads_in_hours_minutes_seconds() {
        assert_eq!(format_eta(0), "0s");
        assert_eq!(format_eta(59), "59s");
        assert_eq!(format_eta(61), "1m01s");
        assert_eq!(format_eta(3723), "1h02m03s");
    }

    #[test]
    fn a_rebuild_cell_shows_progress_source_and_eta() {
        let b = cstor_mgmt::v1::TargetRebuild {
            source: 0,
            from_io_seq: 0,
            done_bytes: 1 << 20,
            total_bytes: 4 << 20,
            eta_seconds: Some(90),
            source_address: "127.0.0.1:7000".into(),
        };
        assert_eq!(
            rebuild_cell(&b),
            "1.0 MiB/4.0 MiB (25%) from 127.0.0.1:7000, ETA 1m30s"
        );
        let unknown = cstor_mgmt::v1::TargetRebuild {
            eta_seconds: None,
            total_bytes: 0,
            ..b
        };
        assert!(rebuild_cell(&unknown).ends_with("ETA unknown"));
    }
}
