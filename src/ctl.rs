//! `cstor ctl`: the operator's command line for replica daemons (pools and
//! volume replicas). Talks to a daemon's management API (gRPC) and prints a
//! table, or JSON with `--json`.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use cstor_mgmt::v1::{
    replica_manager_client::ReplicaManagerClient, CreateVolumeRequest, DeleteVolumeRequest,
    GetPoolRequest, GrowVolumeRequest, ListSnapshotsRequest, ListVolumesRequest, Pool,
    Provisioning, ReplicaState, VolumeReplica,
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
    let mut client = connect(&args.mgmt).await?;
    let addr = &args.mgmt;
    match args.command {
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

async fn connect(addr: &str) -> Result<ReplicaManagerClient<Channel>> {
    let endpoint = Channel::from_shared(format!("http://{addr}"))
        .with_context(|| format!("invalid management address {addr:?}"))?
        .connect_timeout(CONNECT_TIMEOUT);
    let channel = endpoint.connect().await.map_err(|e| {
        let mut msg = format!("cannot reach the replica daemon at {addr}");
        let mut source: Option<&dyn std::error::Error> = Some(&e);
        while let Some(err) = source {
            msg.push_str(": ");
            msg.push_str(&err.to_string());
            source = err.source();
        }
        anyhow::anyhow!(msg)
    })?;
    Ok(ReplicaManagerClient::new(channel))
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
