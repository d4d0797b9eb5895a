//! cstor's CSI driver (CSI spec v1): the identity, controller and node
//! services kubelet and the CSI sidecars call over a unix socket.
//!
//! The controller talks to replica daemons and targets only through their
//! management APIs; where a volume's target runs is behind
//! [`runtime::TargetRuntime`] (local processes for `cstor up` and tests,
//! Kubernetes Deployments + Services in a cluster). The node side drives the
//! host's open-iscsi initiator and filesystem tools ([`node`]).

pub mod node;
pub mod runtime;

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
