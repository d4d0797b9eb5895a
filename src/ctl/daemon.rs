//! The replica daemon's subcommands (`--mgmt`): its pool (one daemon's
//! status, or a line per daemon), its volume replicas (create, list,
//! delete, grow, snapshots), and its rebuild throttle.

use anyhow::Result;
use clap::Subcommand;
use cstor_mgmt::size::{format_size, parse_size};
use cstor_mgmt::v1::{
    replica_manager_client::ReplicaManagerClient, CreateVolumeRequest, DeleteVolumeRequest,
    GetPoolRequest, GrowVolumeRequest, ListSnapshotsRequest, ListVolumesRequest, Pool,
    Provisioning, ReplicaState, SetRebuildThrottleRequest, VolumeReplica,
};
use cstor_tls::Role;
use serde_json::{json, Value};
use tonic::transport::Channel;

use super::output::{emit, links_text, table, throttle_text};
use super::{CtlArgs, CtlCommand, Links};

#[derive(Debug, Subcommand)]
pub(super) enum VolumeCommand {
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
    /// Delete a volume replica and its snapshots. Refused while a target
    /// holds a live session on it or it is a member of a replica set,
    /// unless --force.
    Delete {
        name: String,
        /// Delete it even in use: cuts its target's session, and takes a
        /// copy of the data away from its replica set.
        #[arg(long)]
        force: bool,
    },
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
pub(super) enum PoolCommand {
    /// Capacity, usage and devices of the pool.
    Status,
    /// One line per pool of every daemon named by --mgmt.
    List,
}

fn parse_block_size(text: &str) -> Result<u32> {
    match text {
        "512" => Ok(512),
        "4096" => Ok(4096),
        _ => anyhow::bail!("block size must be 512 or 4096, not {text}"),
    }
}

/// The subcommands that talk to one replica daemon.
pub(super) async fn run(args: CtlArgs, links: &Links) -> Result<()> {
    let addr = links.one_daemon()?;
    let mut client = connect(links, addr).await?;
    match args.command {
        CtlCommand::Status
        | CtlCommand::Snapshot(_)
        | CtlCommand::Resize { .. }
        | CtlCommand::Replica(_)
        | CtlCommand::Rebuild(_)
        | CtlCommand::Initiators(_)
        | CtlCommand::Scrub(_)
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
        CtlCommand::Volume(VolumeCommand::Delete { name, force }) => {
            client
                .delete_volume(DeleteVolumeRequest {
                    name: name.clone(),
                    force,
                })
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

/// `pool list`: every daemon's pool, one line each; an unreachable daemon
/// is a line saying so, and makes the command fail once all are listed.
pub(super) async fn pool_list(links: &Links, as_json: bool) -> Result<()> {
    let mut pools = Vec::new();
    let mut failures = Vec::new();
    for addr in &links.mgmt {
        let answer = async {
            let mut client = connect(links, addr).await?;
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
                    links_text(p.insecure_plaintext).to_string(),
                ]
            })
            .collect();
        rows.extend(failures.iter().map(|(addr, _)| {
            let mut row = vec![addr.clone(), "unreachable".to_string()];
            row.resize(8, String::new());
            row
        }));
        emit(&table(
            &[
                "DAEMON", "POOL", "CAPACITY", "USED", "FREE", "DEVICES", "IO", "LINKS",
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
pub(super) async fn rebuild_throttle(
    links: &Links,
    bytes_per_second: u64,
    as_json: bool,
) -> Result<()> {
    let mut set = Vec::new();
    for addr in &links.mgmt {
        let mut client = connect(links, addr).await?;
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

async fn connect(links: &Links, addr: &str) -> Result<ReplicaManagerClient<Channel>> {
    Ok(ReplicaManagerClient::new(
        links.channel(addr, Role::Replica, "replica daemon").await?,
    ))
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
        "insecure_plaintext": p.insecure_plaintext,
        "links": links_text(p.insecure_plaintext),
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
        links_text(p.insecure_plaintext).to_string(),
    ]];
    let mut out = table(
        &[
            "POOL", "GUID", "CAPACITY", "USED", "FREE", "CHUNK", "IO", "LINKS",
        ],
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
