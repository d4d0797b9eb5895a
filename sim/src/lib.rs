//! cstor's whole-cluster deterministic simulator (docs/simulation.md).
//!
//! [`run_seed`] runs one seeded run of the real cores — the target's iSCSI
//! session core, logical unit, block layer, volume controller and driver
//! decisions; every replica's session core, ordering, pool and rebuild —
//! on a simulated network, clock and disks, and judges it with the
//! oracles of [`model`] and [`world`].

pub mod exec;
pub mod initiator;
pub mod model;
pub mod net;
pub mod rebuild_io;
pub mod rng;
pub mod world;

pub use world::{Options, Plan, RunResult, Stats};

/// Runs seed `seed`: the same seed always gives the same run (and trace
/// hash).
pub fn run_seed(seed: u64, opts: Options) -> RunResult {
    // Pool guids and replica ids from the seed too (they reach the trace).
    cstor_engine::pool::seed_ids(Some(seed));
    let cfg = cstor_target::iscsi::login::TargetConfig::for_volume(world::VOLUME);
    let result = match world::World::new(seed, &cfg, opts) {
        Ok(w) => {
            let mut r = w.run();
            r.seed = seed;
            r
        }
        Err(e) => RunResult {
            seed,
            failure: Some(format!("setting up: {e}")),
            trace_hash: 0,
            stats: Stats::default(),
            plan: world::Plan::draw(&mut rng::Rng::new(seed)),
        },
    };
    result
}
