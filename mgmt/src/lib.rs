//! Management API of cstor daemons (gRPC, tonic): the replica daemon's
//! `ReplicaManager` service, the target's `TargetManager` service and
//! their messages, generated at build time from
//! `proto/cstor/v1/*.proto`. Clients: `cstor ctl`, the CSI controller.
//! Also the size syntax (`10GiB`) every command line shares, and the
//! Prometheus metrics endpoint both daemons serve ([`exposition`],
//! [`metrics_http`]).

pub mod exposition;
pub mod metrics_http;
pub mod size;

/// Version 1 of the API.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic, rust_2018_idioms)]
    tonic::include_proto!("cstor.v1");
}
