//! The gRPC server: the Identity service always, the Controller and/or
//! Node services by mode, over a unix socket (CSI spec §RPC Interface:
//! COs reach plugins over a unix domain socket).
//!
//! A stale socket file from an earlier run is removed and the socket's
//! directory created; anything else at the socket path is left alone and
//! reported.

use std::path::{Path, PathBuf};

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;

use crate::controller::Controller;
use crate::identity::Identity;
use crate::mgmt::PoolAddr;
use crate::node::{NodeConfig, NodeService};
use crate::pb::csi::v1::controller_server::ControllerServer;
use crate::pb::csi::v1::identity_server::IdentityServer;
use crate::pb::csi::v1::node_server::NodeServer;
use crate::runtime::TargetRuntime;

/// Which services a process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Identity + Controller (one per cluster).
    Controller,
    /// Identity + Node (one per node).
    Node,
    /// All three (a single host).
    All,
}

impl Mode {
    pub fn controller(self) -> bool {
        matches!(self, Mode::Controller | Mode::All)
    }

    pub fn node(self) -> bool {
        matches!(self, Mode::Node | Mode::All)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("endpoint {0:?} is not unix:///ABSOLUTE/PATH")]
    Endpoint(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("node mode needs the node's configuration (its id)")]
    NoNode,
    #[error("controller mode needs the controller (pools and a target runtime)")]
    NoController,
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The socket path of a `unix:///path` (or `unix:/path`) endpoint.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, ServeError> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .ok_or_else(|| ServeError::Endpoint(endpoint.to_owned()))?;
    let path = Path::new(path);
    if !path.is_absolute() || path.file_name().is_none() {
        return Err(ServeError::Endpoint(endpoint.to_owned()));
    }
    Ok(path.to_owned())
}

/// Binds the socket: creates its directory and removes a stale socket.
fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    let io = |source| ServeError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(ServeError::NotASocket(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(io)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    UnixListener::bind(path).map_err(io)
}

/// What to serve.
pub struct ServerConfig {
    /// `unix:///path/to/csi.sock`.
    pub endpoint: String,
    pub mode: Mode,
    /// The Node service's configuration (its node id), for node mode.
    pub node: Option<NodeConfig>,
}

/// Serves until `shutdown`, then removes the socket.
pub async fn serve<R: TargetRuntime>(
    config: ServerConfig,
    controller: Option<(Controller<R>, Vec<PoolAddr>)>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let path = socket_path(&config.endpoint)?;
    let node = match (config.mode.node(), config.node) {
        (true, Some(node)) => Some(NodeService::new(node)),
        (true, None) => return Err(ServeError::NoNode),
        (false, _) => None,
    };
    let (controller, pools) = match (config.mode.controller(), controller) {
        (true, Some((c, pools))) => {
            let probed = (c.clients().clone(), pools);
            (Some(c), Some(probed))
        }
        (true, None) => return Err(ServeError::NoController),
        (false, _) => (None, None),
    };
    let listener = bind(&path)?;
    tracing::info!(endpoint = %config.endpoint, mode = ?config.mode, "CSI driver serving");
    if let Some(node) = &node {
        tokio::spawn(node.clone().run_remount_check(shutdown.clone()));
    }
    let router = tonic::transport::Server::builder()
        .add_service(IdentityServer::new(Identity::new(pools)))
        .add_optional_service(controller.map(ControllerServer::new))
        .add_optional_service(node.map(NodeServer::new));
    let served = router
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener),
            shutdown.cancelled_owned(),
        )
        .await;
    if let Err(e) = std::fs::remove_file(&path) {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove the socket");
    }
    served.map_err(ServeError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_absolute_unix_paths() {
        assert_eq!(
            socket_path("unix:///run/csi/csi.sock").unwrap(),
            PathBuf::from("/run/csi/csi.sock")
        );
        assert_eq!(
            socket_path("unix:/csi.sock").unwrap(),
            PathBuf::from("/csi.sock")
        );
        for bad in [
            "/run/csi.sock",
            "tcp://1.2.3.4:5",
            "unix://relative.sock",
            "unix:///",
        ] {
            assert!(socket_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_stale_socket_is_replaced_but_a_file_is_not() {
        let dir = std::env::temp_dir().join(format!("cstor-csi-bind-{}", std::process::id()));
        let sock = dir.join("sub").join("csi.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            drop(bind(&sock).unwrap());
            assert!(sock.exists(), "a closed listener leaves its socket file");
            drop(bind(&sock).unwrap());
        });
        let file = dir.join("file");
        std::fs::write(&file, b"data").unwrap();
        assert!(matches!(bind(&file), Err(ServeError::NotASocket(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
