//! `cstor ctl`: the operator's command line for replica daemons (pools,
//! volume replicas, rebuild throttle) and targets (volume status with
//! rebuild progress and ETA, snapshots, resize, replica membership). Talks
//! to a daemon's or a target's management API (gRPC) and prints a table,
//! or JSON with `--json`. An unreachable daemon or target is an error
//! naming its address (connecting, TLS handshake included, is bounded by
//! [`cstor_tls::grpc::CONNECT_TIMEOUT`]).
//!
//! Every call is mutual TLS with the operator's certificate (`--tls-dir`:
//! an admin identity for everything, a reader identity for status and
//! lists), or plaintext when asked (`--insecure-plaintext`). With
//! `--state-dir DIR` of a `cstor up` cluster, the addresses come from
//! `DIR/cluster.json` and the identity from `DIR/tls/admin` (or plaintext,
//! when that cluster runs so), so `cstor ctl --state-dir DIR status` needs
//! no other flag; explicit flags win over what the state directory says.
//!
//! Parts: [`target`] (the target's subcommands: status, snapshots, resize,
//! replicas and CF, rebuild throttle, initiators, scrub), [`status`] (the
//! target's status as a table or JSON), [`daemon`] (the replica daemon's:
//! pools, volume replicas, rebuild throttle), [`output`] (tables and
//! stdout). This module holds the command line and dispatches it, finds
//! the addresses and the link security ([`Links`]), and connects to the
//! management APIs.

mod daemon;
mod output;
mod status;
mod target;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use cstor_mgmt::size::parse_size;
use cstor_tls::{Credentials, Role, Security};
use tonic::transport::Channel;

use self::daemon::{PoolCommand, VolumeCommand};
use self::target::{InitiatorsCommand, ReplicaCommand, ScrubCommand, SnapshotCommand};

/// Where `--target` points when neither it nor `--state-dir` is given (the
/// target's default `--mgmt-listen`).
const DEFAULT_TARGET: &str = "127.0.0.1:7700";

/// Where `--mgmt` points when neither it nor `--state-dir` is given (the
/// replica daemon's default `--mgmt-listen`).
const DEFAULT_MGMT: &str = "127.0.0.1:7601";

/// The largest `cluster.json` read (a few KiB in practice): a file that is
/// not one is refused before it is read whole.
const MAX_CLUSTER_FILE_BYTES: u64 = 1 << 20;

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Management address of the replica daemon (host:port). `pool list`
    /// and `rebuild throttle` take it several times (every daemon named)
    /// [default: every replica of --state-dir, else 127.0.0.1:7601].
    #[arg(long, env = "CSTOR_MGMT")]
    mgmt: Vec<String>,
    /// Management address of the target (host:port), for `status`,
    /// `snapshot`, `resize`, `replica` and `scrub` [default: the target of
    /// --state-dir, else 127.0.0.1:7700]. Given to `rebuild throttle`, it
    /// sets the volume's throttle through the target instead of the
    /// daemons' own.
    #[arg(long, env = "CSTOR_TARGET_MGMT")]
    target: Option<String>,
    /// TLS directory of the operator's identity: ca.crt (the cluster's
    /// CA), tls.crt and tls.key of an admin certificate (every command) or
    /// a reader one (status and lists only). `cstor certs issue --role
    /// admin` makes one. Required unless --insecure-plaintext or
    /// --state-dir.
    #[arg(long, env = "CSTOR_TLS_DIR", value_name = "DIR", global = true)]
    tls_dir: Option<PathBuf>,
    /// Talk to daemons and targets that run with --insecure-plaintext: no
    /// authentication, no encryption.
    #[arg(long, env = "CSTOR_INSECURE_PLAINTEXT", global = true)]
    insecure_plaintext: bool,
    /// State directory of a `cstor up` cluster: the target's and replicas'
    /// addresses come from DIR/cluster.json, the identity from
    /// DIR/tls/admin (or plaintext, if the cluster runs so).
    #[arg(long, env = "CSTOR_STATE_DIR", value_name = "DIR", global = true)]
    state_dir: Option<PathBuf>,
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
    /// Scrub the target's volume: compare every range's digest across the
    /// healthy replicas, repair a minority copy from the majority, report
    /// the ranges no majority decides (docs/replica.md, "Scrub").
    #[command(subcommand)]
    Scrub(ScrubCommand),
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
    let links = Links::of(&args)?;
    match &args.command {
        CtlCommand::Status
        | CtlCommand::Snapshot(_)
        | CtlCommand::Resize { .. }
        | CtlCommand::Replica(_)
        | CtlCommand::Initiators(_)
        | CtlCommand::Scrub(_) => target::run(args, &links).await,
        CtlCommand::Pool(PoolCommand::List) => daemon::pool_list(&links, args.json).await,
        CtlCommand::Rebuild(RebuildCommand::Throttle { bytes_per_sec }) => {
            if args.target.is_some() {
                target::rebuild_throttle(&links, *bytes_per_sec, args.json).await
            } else {
                daemon::rebuild_throttle(&links, *bytes_per_sec, args.json).await
            }
        }
        CtlCommand::Volume(_) | CtlCommand::Pool(PoolCommand::Status) => {
            daemon::run(args, &links).await
        }
    }
}

/// Where the management APIs are and how to reach them: from the flags,
/// else from `--state-dir`, else the defaults.
pub(crate) struct Links {
    security: Security,
    /// The target's management address.
    target: String,
    /// The replica daemons' management addresses.
    mgmt: Vec<String>,
    /// The cluster.json the addresses came from, for errors.
    cluster_file: Option<PathBuf>,
}

impl Links {
    fn of(args: &CtlArgs) -> Result<Links> {
        let cluster = match &args.state_dir {
            Some(dir) => Some(UpCluster::read(dir)?),
            None => None,
        };
        let security = if args.tls_dir.is_some() || args.insecure_plaintext {
            Security::from_flags(args.tls_dir.as_deref(), args.insecure_plaintext)?
        } else if let Some(cluster) = &cluster {
            cluster.security()?
        } else {
            match Security::from_flags(None, false) {
                Ok(security) => security,
                Err(e) => anyhow::bail!("{e}; or --state-dir DIR of a `cstor up` cluster"),
            }
        };
        let target = args
            .target
            .clone()
            .or_else(|| cluster.as_ref().and_then(|c| c.target.clone()))
            .unwrap_or_else(|| DEFAULT_TARGET.to_owned());
        let mgmt = if !args.mgmt.is_empty() {
            args.mgmt.clone()
        } else if let Some(c) = cluster.as_ref().filter(|c| !c.replicas.is_empty()) {
            c.replicas.clone()
        } else {
            vec![DEFAULT_MGMT.to_owned()]
        };
        Ok(Links {
            security,
            target,
            mgmt,
            cluster_file: cluster.map(|c| c.file),
        })
    }

    /// The one replica daemon a command talks to.
    fn one_daemon(&self) -> Result<&str> {
        match self.mgmt.as_slice() {
            [one] => Ok(one.as_str()),
            many => match &self.cluster_file {
                Some(file) => anyhow::bail!(
                    "this command talks to one replica daemon, and {} names {}: {}; choose one with --mgmt",
                    file.display(),
                    many.len(),
                    many.join(", ")
                ),
                None => anyhow::bail!("this command talks to one replica daemon: give --mgmt once"),
            },
        }
    }

    /// A channel to the management API at `addr`, whose server must be a
    /// `role`; `what` names it in errors.
    async fn channel(&self, addr: &str, role: Role, what: &str) -> Result<Channel> {
        cstor_tls::grpc::channel(addr, &self.security, &[role])
            .await
            .map_err(|e| match e {
                cstor_tls::grpc::ConnectError::Address(_) => {
                    anyhow::anyhow!("invalid management address {addr:?} of the {what}")
                }
                cstor_tls::grpc::ConnectError::Transport { source, .. } => {
                    anyhow::anyhow!(
                        "cannot reach the {what} at {addr}: {}",
                        crate::up::error_chain(&source)
                    )
                }
            })
    }
}

/// What `cstor ctl` reads of a `cstor up` state directory's cluster.json.
struct UpCluster {
    file: PathBuf,
    target: Option<String>,
    replicas: Vec<String>,
    insecure_plaintext: bool,
    /// The admin identity's TLS directory.
    admin: PathBuf,
}

impl UpCluster {
    fn read(dir: &Path) -> Result<UpCluster> {
        use std::io::Read;
        let file = dir.join(crate::up::CLUSTER_FILE);
        let mut text = String::new();
        std::fs::File::open(&file)
            .and_then(|f| f.take(MAX_CLUSTER_FILE_BYTES).read_to_string(&mut text))
            .with_context(|| {
                format!(
                    "cannot read {} (is {} the state directory of a `cstor up`?)",
                    file.display(),
                    dir.display()
                )
            })?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", file.display()))?;
        let target = json["target"]["mgmt"].as_str().map(str::to_owned);
        let replicas = json["replicas"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|r| r["mgmt"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let insecure_plaintext = json["insecure_plaintext"].as_bool().unwrap_or(false);
        let admin = json["tls"]["admin"].as_str().map_or_else(
            || {
                dir.join(crate::up::TLS_SUBDIR)
                    .join(crate::up::ADMIN_SUBDIR)
            },
            PathBuf::from,
        );
        Ok(UpCluster {
            file,
            target,
            replicas,
            insecure_plaintext,
            admin,
        })
    }

    fn security(&self) -> Result<Security> {
        if self.insecure_plaintext {
            return Ok(Security::Plaintext);
        }
        let credentials = Credentials::load(&self.admin).with_context(|| {
            format!(
                "cannot use the admin identity of {} ({})",
                self.file.display(),
                self.admin.display()
            )
        })?;
        Ok(Security::Tls(credentials))
    }
}
