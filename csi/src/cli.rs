//! `cstor csi`: the CSI driver's command line. Every flag can also be set
//! through the environment variable its help names.

use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand, ValueEnum};
use cstor_tls::{Identity, Right, Security, TlsError};
use tokio_util::sync::CancellationToken;

use crate::certs::{CertError, TargetCerts};
use crate::controller::{Controller, ControllerConfig};
use crate::kube::bootstrap::{self, BootstrapArgs, BootstrapError};
use crate::kube::mirror::Mirror;
use crate::kube::pool_agent::{self, AgentError, PoolAgentArgs};
use crate::kube::{KubeConfig, KubeRuntime};
use crate::local::{LocalConfig, LocalRuntime};
use crate::mgmt::{Clients, PoolAddr};
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ChapArg {
    /// Mutual CHAP: the node authenticates to the target and the target to
    /// the node, with random credentials made for each volume.
    Mutual,
    /// No CHAP: any initiator the target's allowlist admits may log in.
    Off,
}

/// Other things `cstor csi` does besides serving.
#[derive(Debug, Subcommand)]
pub enum CsiCommand {
    /// Creates the cluster's CA and the certificates of the controller
    /// (admin), the replica daemons (replica) and the node plugins (reader)
    /// as Kubernetes Secrets, each only if missing; checks the ones there.
    /// The Helm chart runs it in a pre-install/pre-upgrade hook.
    BootstrapCerts(BootstrapArgs),
    /// Prints the CustomResourceDefinitions of CStorVolume and CStorPool
    /// (the chart's templates/crds.yaml), e.g. `cstor csi crds | kubectl
    /// apply --server-side -f -`.
    Crds,
    /// The replica DaemonSet's init container: creates this node's pool
    /// from its CStorPool object once, records its devices for the replica
    /// daemon, and reports in the object's status.
    PoolAgent(PoolAgentArgs),
}

/// CSI driver (CSI spec v1) over a unix socket.
#[derive(Debug, Args)]
pub struct CsiArgs {
    #[command(subcommand)]
    pub command: Option<CsiCommand>,
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
    /// Kubernetes runtime: CHAP on every target (default mutual; the
    /// StorageClass must then name each volume's CHAP Secret as the node-stage
    /// secret, `${pv.name}-chap`). The local runtime has no CHAP.
    #[arg(long, value_enum, env = "CSTOR_TARGET_CHAP")]
    pub target_chap: Option<ChapArg>,
    /// Kubernetes runtime: memory request of each target container.
    #[arg(long, env = "CSTOR_TARGET_MEMORY_REQUEST", default_value = crate::kube::objects::DEFAULT_TARGET_MEMORY_REQUEST)]
    pub target_memory_request: String,
    /// Kubernetes runtime: memory limit of each target container.
    #[arg(long, env = "CSTOR_TARGET_MEMORY_LIMIT", default_value = crate::kube::objects::DEFAULT_TARGET_MEMORY_LIMIT)]
    pub target_memory_limit: String,
    /// This process's TLS directory (ca.crt, tls.crt, tls.key). The
    /// controller's certificate must be an admin identity (it calls both
    /// management APIs), the node plugin's a reader or admin (its remount
    /// check reads targets' status). Exactly one of this and
    /// --insecure-plaintext is required.
    #[arg(long, env = "CSTOR_TLS_DIR", value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Run without authentication or encryption: management calls, and the
    /// targets the controller starts, in plaintext. Only by explicit
    /// choice; logged as a warning.
    #[arg(long, env = "CSTOR_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,
    /// Controller with TLS: the cluster CA's directory (ca.crt, ca.key),
    /// which issues each volume's target its own certificate when the
    /// target starts.
    #[arg(long, env = "CSTOR_TLS_CA_DIR", value_name = "DIR")]
    pub tls_ca_dir: Option<PathBuf>,
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
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{mode} mode needs {needs}, but the certificate in {dir} is for {found}")]
    Identity {
        mode: &'static str,
        needs: &'static str,
        dir: String,
        found: Identity,
    },
    #[error(
        "the controller with TLS needs --tls-ca-dir (the CA that issues targets' certificates)"
    )]
    NoCaDir,
    #[error("--tls-ca-dir and --insecure-plaintext exclude each other: plaintext targets need no certificates")]
    CaDirInPlaintext,
    #[error("--target-chap is for the Kubernetes runtime (local targets have no CHAP)")]
    ChapLocal,
    #[error(transparent)]
    Certs(#[from] CertError),
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    #[error("pool agent: {0}")]
    PoolAgent(#[from] AgentError),
    #[error("cannot render the CRDs: {0}")]
    Crds(String),
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

/// This process's security, from its flags: checked against what `mode`
/// needs, logged (a warning in plaintext), and reloaded when its files
/// change until `shutdown`.
pub fn security(
    args: &CsiArgs,
    mode: Mode,
    shutdown: &CancellationToken,
) -> Result<Security, CliError> {
    let security = Security::from_flags(args.tls_dir.as_deref(), args.insecure_plaintext)?;
    if let Some(credentials) = security.credentials() {
        let found = credentials.identity();
        let (needed, mode_name, needs) = if mode.controller() {
            (Right::Admin, "controller", "an admin identity")
        } else {
            (Right::Read, "node", "a reader or admin identity")
        };
        if found.right().is_none_or(|r| r < needed) {
            return Err(CliError::Identity {
                mode: mode_name,
                needs,
                dir: credentials.dir().display().to_string(),
                found,
            });
        }
        tracing::info!(security = %security.describe(), "links secured");
    } else {
        tracing::warn!(security = %security.describe(), "management calls and targets are NOT authenticated or encrypted");
    }
    security.watch(shutdown.clone());
    Ok(security)
}

/// How the controller's targets are secured: like the controller.
fn target_certs(args: &CsiArgs, security: &Security) -> Result<TargetCerts, CliError> {
    match (security.is_plaintext(), &args.tls_ca_dir) {
        (true, None) => Ok(TargetCerts::Plaintext),
        (true, Some(_)) => Err(CliError::CaDirInPlaintext),
        (false, None) => Err(CliError::NoCaDir),
        (false, Some(dir)) => Ok(TargetCerts::load(dir)?),
    }
}

/// Runs the driver until `shutdown` (or `bootstrap-certs` once).
pub async fn run(args: CsiArgs, shutdown: CancellationToken) -> Result<(), CliError> {
    match &args.command {
        Some(CsiCommand::BootstrapCerts(certs)) => return Ok(bootstrap::run(certs).await?),
        Some(CsiCommand::Crds) => {
            let yaml = crate::kube::crd::crds_yaml().map_err(|e| CliError::Crds(e.to_string()))?;
            print!("{yaml}");
            return Ok(());
        }
        Some(CsiCommand::PoolAgent(agent)) => return Ok(pool_agent::run(agent).await?),
        None => {}
    }
    let mode = match args.mode {
        ModeArg::Controller => Mode::Controller,
        ModeArg::Node => Mode::Node,
        ModeArg::All => Mode::All,
    };
    let security = security(&args, mode, &shutdown)?;
    let node_id = match (&args.node_id, mode.node()) {
        (Some(id), _) => id.clone(),
        (None, true) => return Err(CliError::NoNodeId),
        (None, false) => String::new(),
    };
    let node = mode.node().then(|| {
        let mut node = NodeConfig::new(node_id.clone(), security.clone());
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
    let clients = Clients::new(security.clone());
    let certs = target_certs(&args, &security)?;
    let controller_config = ControllerConfig {
        pools: args.pools.clone(),
        known_nodes,
        clients: clients.clone(),
    };
    match args.target_runtime {
        RuntimeArg::Kubernetes => {
            let image = args.target_image.clone().ok_or(CliError::NoTargetImage)?;
            let client = ::kube::Client::try_default()
                .await
                .map_err(|e| CliError::Kube(e.to_string()))?;
            let mut kube_config = KubeConfig::new(args.target_namespace.clone(), image);
            kube_config.chap = args.target_chap != Some(ChapArg::Off);
            kube_config
                .memory_request
                .clone_from(&args.target_memory_request);
            kube_config
                .memory_limit
                .clone_from(&args.target_memory_limit);
            let runtime = Arc::new(KubeRuntime::new(client.clone(), kube_config, certs));
            let controller = Controller::new(controller_config, Arc::clone(&runtime));
            if mode.controller() {
                // CStorVolume / CStorPool objects: a mirror, written
                // beside the CSI calls, never consulted by them.
                let mirror = Mirror::new(controller.clone(), client, &args.target_namespace);
                tokio::spawn(mirror.run(shutdown.clone()));
            }
            server::serve(config, Some((controller, args.pools.clone())), shutdown).await?;
            Ok(())
        }
        RuntimeArg::Local => {
            if args.target_chap.is_some() {
                return Err(CliError::ChapLocal);
            }
            let exe = match &args.cstor_exe {
                Some(exe) => exe.clone(),
                None => std::env::current_exe().map_err(CliError::Exe)?,
            };
            let runtime = LocalRuntime::open(LocalConfig {
                exe,
                state_dir: args.state_dir.clone(),
                portal_host: args.portal_host,
                ports: args.target_ports.clone(),
                certs,
                clients,
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
