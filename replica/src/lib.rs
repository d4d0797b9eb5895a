//! The cstor replica daemon: serves the volume replicas of one pool to
//! targets over the replication protocol (`cstor-proto`), and the pool's
//! management API over gRPC (`cstor-mgmt`).

pub mod ordering;
