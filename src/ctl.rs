//! `cstor ctl`: the operator's command line for replica daemons (pools,
//! volume replicas, rebuild throttle) and targets (volume status with
//! rebuild progress and ETA, snapshots, resize, replica membership). Talks
//! to a daemon's or a target's management API (gRPC) and prints a table,
//! or JSON with `--json`. An unreachable daemon or target is an error
//! naming its address (connecting is bounded by [`CONNECT_TIMEOUT`]).
//!
//! Parts: [`target`] (the target's subcommands: status, snapshots, resize,
//! replicas and CF, rebuild throttle, initiators), [`status`] (the
//! target's status as a table or JSON), [`daemon`] (the replica daemon's:
//! pools, volume replicas, rebuild throttle), [`output`] (tables and
//! stdout). This module holds the command line and dispatches it, and
//! connects to the management APIs.

mod daemon;
mod output;
mod status;
mod target;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use cstor_mgmt::size::parse_size;
use tonic::transport::Channel;

use self::daemon::{PoolCommand, VolumeCommand};
use self::target::{InitiatorsCommand, ReplicaCommand, SnapshotCommand};

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

pub async fn run(args: CtlArgs) -> Result<()> {
    match &args.command {
        CtlCommand::Status
        | CtlCommand::Snapshot(_)
        | CtlCommand::Resize { .. }
        | CtlCommand::Replica(_)
        | CtlCommand::Initiators(_) => target::run(args).await,
        CtlCommand::Pool(PoolCommand::List) => daemon::pool_list(&args.mgmt, args.json).await,
        CtlCommand::Rebuild(RebuildCommand::Throttle { bytes_per_sec }) => match &args.target {
            Some(target) => target::rebuild_throttle(target, *bytes_per_sec, args.json).await,
            None => daemon::rebuild_throttle(&args.mgmt, *bytes_per_sec, args.json).await,
        },
        CtlCommand::Volume(_) | CtlCommand::Pool(PoolCommand::Status) => daemon::run(args).await,
    }
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
