//! The volume layer of the target: replicates every request to the
//! volume's replicas.
//!
//! - [`controller`]: the quorum state machine (pure, no IO).

pub mod controller;
