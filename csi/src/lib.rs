//! cstor's CSI driver (CSI spec v1): the identity, controller and node
//! services kubelet and the CSI sidecars call over a unix socket.
//!
//! The controller talks to replica daemons and targets only through their
//! management APIs; where a volume's target runs is behind
//! [`runtime::TargetRuntime`] (local processes for `cstor up` and tests,
//! Kubernetes Deployments + Services in a cluster). The node side drives the
//! host's open-iscsi initiator and filesystem tools ([`node`]).

pub mod capacity;
pub mod caps;
pub mod certs;
pub mod cli;
pub mod context;
pub mod controller;
pub mod identity;
pub mod kube;
pub mod limits;
pub mod local;
pub mod mgmt;
pub mod naming;
pub mod node;
pub mod paging;
pub mod params;
pub mod runtime;
pub mod server;

pub use limits::DRIVER_NAME;
pub use server::{serve, Mode, ServeError, ServerConfig};

/// The CSI v1 protobuf messages and the Identity, Controller and Node
/// services (`pb::csi::v1::node_server::Node`, ...), generated at build time
/// from `proto/csi/v1/csi.proto`.
pub mod pb {
    /// Package `csi`.
    pub mod csi {
        /// Package `csi.v1`.
        pub mod v1 {
            #![allow(missing_docs, clippy::all, clippy::pedantic, rust_2018_idioms)]
            tonic::include_proto!("csi.v1");
        }
    }
}

/// IQN prefix of the initiator names the node plugin logs in with.
pub const NODE_INITIATOR_PREFIX: &str = "iqn.2016-09.com.openebs.cstor:node.";

/// The iSCSI initiator name the node plugin of `node_id` logs in with (it
/// sets it on its own open-iscsi interface), so the controller can admit
/// exactly the publishing node at the target without asking the node.
/// Kubernetes node names are DNS subdomains: lowercase letters, digits, '-'
/// and '.', all valid in an IQN; anything else is lowercased or replaced by
/// '-'.
pub fn initiator_name(node_id: &str) -> String {
    let node: String = node_id
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-' | '.') => c,
            _ => '-',
        })
        .collect();
    format!("{NODE_INITIATOR_PREFIX}{node}")
}

#[cfg(test)]
mod tests {
    use super::initiator_name;

    #[test]
    fn initiator_name_is_a_valid_iqn_for_any_node_id() {
        assert_eq!(
            initiator_name("worker-1.example.com"),
            "iqn.2016-09.com.openebs.cstor:node.worker-1.example.com"
        );
        assert_eq!(
            initiator_name("Node_A/1"),
            "iqn.2016-09.com.openebs.cstor:node.node-a-1"
        );
    }
}
