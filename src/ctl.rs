//! `cstor ctl`: the operator's command line for replica daemons (pools and
//! volume replicas) and targets (volume status, snapshots, resize). Talks
//! to a daemon's or a target's management API (gRPC) and prints a table,
//! or JSON with `--json`.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use cstor_mgmt::v1::{
    replica_manager_client::ReplicaManagerClient, target_manager_client::TargetManagerClient,
    CreateSnapshotRequest, CreateVolumeRequest, DeleteSnapshotRequest, DeleteVolumeRequest,
    GetPoolRequest, GetTargetStatusRequest, GrowVolumeRequest, ListSnapshotsRequest,
    ListTargetSnapshotsRequest, ListVolumesRequest, Pool, Provisioning, ReplicaState,
    ResizeRequest, TargetReplicaState, TargetStatus, VolumeReplica,
};
use serde_json::{json, Value};
use tonic::transport::Channel;

use cstor_mgmt::size::{format_size, parse_size};

/// Bound on connecting to a daemon, so an unreachable one is a clear error
/// rather than a hang.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Management address of the replica daemon (host:port).
    #[arg(long, env = "CSTOR_MGMT", default_value = "127.0.0.1:7601")]
    mgmt: String,
    /// Management address of the target (host:port), for `status`,
    /// `snapshot` and `resize`.
    #[arg(long, env = "CSTOR_TARGET_MGMT", default_value = "127.0.0.1:7700")]
    target: String,
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
}

fn parse_block_size(text: &str) -> Result<u32, String> {
    match text {
        "512" => Ok(512),
        "4096" => Ok(4096),
        _ => Err(format!("block size must be 512 or 4096, not {text}")),
    }
}

pub async fn run(args: CtlArgs) -> Result<()> {
    if matches!(
        args.command,
        CtlCommand::Status | CtlCommand::Snapshot(_) | CtlCommand::Resize { .. }
    ) {
        return run_target(args).await;
    }
    let mut client = connect(&args.mgmt).await?;
    let addr = &args.mgmt;
    match args.command {
        CtlCommand::Status | CtlCommand::Snapshot(_) | CtlCommand::Resize { .. } => {}
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
    let addr = &args.target;
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
        CtlCommand::Volume(_) | CtlCommand::Pool(_) => {}
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

fn target_state_name(state: i32) -> &'static str {
    match TargetReplicaState::try_from(state) {
        Ok(TargetReplicaState::Healthy) => "healthy",
        Ok(TargetReplicaState::Degraded) => "degraded",
        Ok(TargetReplicaState::Rebuilding) => "rebuilding",
        Ok(TargetReplicaState::Offline) => "offline",
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
        "replicas": s.replicas.iter().map(|r| json!({
            "address": r.address,
            "state": target_state_name(r.state),
            "acked_io_seq": r.acked_io_seq,
            "in_flight": r.in_flight,
            "rebuild": r.rebuild.as_ref().map(|b| json!({
                "source": b.source,
                "from_io_seq": b.from_io_seq,
                "done_bytes": b.done_bytes,
                "total_bytes": b.total_bytes,
            })),
        })).collect::<Vec<_>>(),
    })
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
        ]],
    );
    out.push('\n');
    let rows = s
        .replicas
        .iter()
        .map(|r| {
            vec![
                r.address.clone(),
                target_state_name(r.state).to_string(),
                r.acked_io_seq.to_string(),
                r.in_flight.to_string(),
                r.rebuild.as_ref().map_or_else(String::new, |b| {
                    format!(
                        "{}/{} from #{}",
                        format_size(b.done_bytes),
                        format_size(b.total_bytes),
                        b.source
                    )
                }),
            ]
        })
        .collect::<Vec<_>>();
    out.push_str(&table(
        &["REPLICA", "STATE", "ACKED_IO_SEQ", "IN_FLIGHT", "REBUILD"],
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
