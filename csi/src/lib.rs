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
