//! `cstor csi`: the CSI driver's command line. Every flag can also be set
//! through the environment variable its help names.

use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::controller::{Controller, ControllerConfig};
use crate::kube::{KubeConfig, KubeRuntime};
use crate::local::{LocalConfig, LocalRuntime};
use crate::mgmt::PoolAddr;
use crate::node::NodeConfig;
use crate::runtime::RuntimeError;
use crate::server::{self, Mode, ServeError, ServerConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Identity + Controller services (one per cluster).
    Controller,
    /// Identity + Node services (one per node).
    Node,
    /// Every service (a single host).
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeArg {
    /// Targets run as child processes of the controller on this host.
    Local,
    /// Targets run as Kubernetes Deployments + Services.
    Kubernetes,
}

/// CSI driver (CSI spec v1) over a unix socket.
#[derive(Debug, Args)]
pub struct CsiArgs {
    /// Services to serve.
    #[arg(long, value_enum, env = "CSTOR_CSI_MODE", default_value = "all")]
    pub mode: ModeArg,
    /// gRPC endpoint: unix:///ABSOLUTE/PATH (a stale socket is replaced).
    #[arg(
        long,
        env = "CSI_ENDPOINT",
        default_value = "unix:///run/cstor/csi.sock"
    )]
    pub endpoint: String,
    /// This node's id (NodeGetInfo; nodes log in as
    /// iqn.2016-09.com.openebs.cstor:node.ID). Required in node and all
    /// modes.
    #[arg(long, env = "CSTOR_NODE_ID")]
    pub node_id: Option<String>,
    /// A replica daemon volumes may be placed on, as MGMT_ADDR=DATA_ADDR
    /// (its --mgmt-listen and --listen); repeat for every daemon.
    #[arg(long = "pool", env = "CSTOR_POOLS", value_delimiter = ',')]
    pub pools: Vec<PoolAddr>,
    /// A node volumes may be published to; repeat. Publishing to any other
    /// node is NOT_FOUND. Default: any node (all mode: this node only).
    #[arg(long = "known-node", env = "CSTOR_KNOWN_NODES", value_delimiter = ',')]
    pub known_nodes: Vec<String>,
    /// Where volume targets run.
    #[arg(
        long,
        value_enum,
        env = "CSTOR_TARGET_RUNTIME",
        default_value = "local"
    )]
    pub target_runtime: RuntimeArg,
    /// Local runtime: address the targets' portals listen on and nodes
    /// dial.
    #[arg(long, env = "CSTOR_PORTAL_HOST", default_value = "127.0.0.1")]
    pub portal_host: IpAddr,
    /// Local runtime: ports for the targets' portals and management APIs
    /// (two per volume), FIRST-LAST.
    #[arg(long, env = "CSTOR_TARGET_PORTS", default_value = "31000-31999", value_parser = parse_ports)]
    pub target_ports: RangeInclusive<u16>,
    /// Local runtime: directory of the targets' records and logs.
    #[arg(
        long,
        env = "CSTOR_CSI_STATE_DIR",
        default_value = "/var/lib/cstor/csi"
    )]
    pub state_dir: PathBuf,
    /// Node mode: directory of the staged-volume records (must survive
    /// restarts of the plugin; default /var/lib/cstor-csi/node).
    #[arg(long, env = "CSTOR_CSI_NODE_STATE_DIR")]
    pub node_state_dir: Option<PathBuf>,
    /// Local runtime: the cstor executable targets run (default: this one).
    #[arg(long, env = "CSTOR_EXE")]
    pub cstor_exe: Option<PathBuf>,
    /// Kubernetes runtime: namespace of the targets' Deployments, Services
    /// and Secrets (the driver's own).
    #[arg(long, env = "CSTOR_TARGET_NAMESPACE", default_value = "cstor")]
    pub target_namespace: String,
    /// Kubernetes runtime: image the targets run (the driver's own image).
    #[arg(long, env = "CSTOR_TARGET_IMAGE")]
    pub target_image: Option<String>,
}

fn parse_ports(text: &str) -> Result<RangeInclusive<u16>, String> {
    let (first, last) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?} is not FIRST-LAST"))?;
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|e| format!("port {p:?}: {e}"))
    };
    let (first, last) = (port(first)?, port(last)?);
    if first == 0 || last <= first {
        return Err(format!("{text:?}: need 0 < FIRST < LAST"));
    }
    Ok(first..=last)
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("--node-id is required in node and all modes")]
    NoNodeId,
    #[error("controller mode needs at least one --pool")]
    NoPools,
    #[error("pool {0} is given twice")]
    DuplicatePool(String),
    #[error("--target-runtime kubernetes needs --target-image")]
    NoTargetImage,
    #[error("cannot reach the Kubernetes API server: {0}")]
    Kube(String),
    #[error("cannot find the cstor executable: {0}")]
    Exe(std::io::Error),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Runs the driver until `shutdown`.
pub async fn run(args: CsiArgs, shutdown: CancellationToken) -> Result<(), CliError> {
    let mode = match args.mode {
        ModeArg::Controller => Mode::Controller,
        ModeArg::Node => Mode::Node,
        ModeArg::All => Mode::All,
    };
    let node_id = match (&args.node_id, mode.node()) {
        (Some(id), _) => id.clone(),
        (None, true) => return Err(CliError::NoNodeId),
        (None, false) => String::new(),
    };
    let node = mode.node().then(|| {
        let mut node = NodeConfig::new(node_id.clone());
        if let Some(dir) = &args.node_state_dir {
            node.state_dir.clone_from(dir);
        }
        node
    });
    let config = ServerConfig {
        endpoint: args.endpoint.clone(),
        mode,
        node,
    };
    if !mode.controller() {
        return Ok(server::serve::<LocalRuntime>(config, None, shutdown).await?);
    }
    if args.pools.is_empty() {
        return Err(CliError::NoPools);
    }
    for (i, p) in args.pools.iter().enumerate() {
        if args
            .pools
            .iter()
            .skip(i + 1)
            .any(|q| q.mgmt == p.mgmt || q.data == p.data)
        {
            return Err(CliError::DuplicatePool(p.mgmt.to_string()));
        }
    }
    let known_nodes = if args.known_nodes.is_empty() && mode == Mode::All {
        vec![node_id]
    } else {
        args.known_nodes.clone()
    };
    let controller_config = ControllerConfig {
        pools: args.pools.clone(),
        known_nodes,
    };
    match args.target_runtime {
        RuntimeArg::Kubernetes => {
            let image = args.target_image.clone().ok_or(CliError::NoTargetImage)?;
            let client = ::kube::Client::try_default()
                .await
                .map_err(|e| CliError::Kube(e.to_string()))?;
            let runtime = Arc::new(KubeRuntime::new(
                client,
                KubeConfig::new(args.target_namespace.clone(), image),
            ));
            let controller = Controller::new(controller_config, Arc::clone(&runtime));
            server::serve(config, Some((controller, args.pools.clone())), shutdown).await?;
            Ok(())
        }
        RuntimeArg::Local => {
            let exe = match &args.cstor_exe {
                Some(exe) => exe.clone(),
                None => std::env::current_exe().map_err(CliError::Exe)?,
            };
            let runtime = LocalRuntime::open(LocalConfig {
                exe,
                state_dir: args.state_dir.clone(),
                portal_host: args.portal_host,
                ports: args.target_ports.clone(),
            })?;
            let controller = Controller::new(controller_config, Arc::clone(&runtime));
            server::serve(config, Some((controller, args.pools.clone())), shutdown).await?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_parse_and_refuse_nonsense() {
        assert_eq!(parse_ports("31000-31999"), Ok(31000..=31999));
        for bad in ["31000", "0-10", "10-10", "20-10", "a-b"] {
            assert!(parse_ports(bad).is_err(), "{bad}");
        }
    }
}
