//! The cstor replica daemon: serves the volume replicas of one pool to
//! targets over the replication protocol (`cstor-proto`), and the pool's
//! management API over gRPC (`cstor-mgmt`).
//!
//! - [`daemon`]: `init` (create a pool) and [`daemon::Daemon`] (serve it,
//!   shut down gracefully);
//! - [`session`]: one target connection (handshake, fencing, pipelined IO);
//! - [`shards`]: the threads connections are served on;
//! - [`registry`]: which session owns which volume (epochs);
//! - [`ordering`]: overlapping IOs never overtake each other;
//! - [`rebuild`]: replica-to-replica rebuild, as source and as sink;
//! - [`mgmt`]: the gRPC management service;
//! - [`metrics`]: Prometheus metrics (pool space, IO per volume).

pub mod cli;
pub mod daemon;
pub mod limits;
pub mod metrics;
pub mod mgmt;
pub mod ordering;
pub mod rebuild;
pub mod registry;
pub mod session;
pub mod shards;
mod status;
