//! The simulator's own checks: a seed replays to the same trace, and the
//! CI's fixed budget of seeds passes every oracle (docs/simulation.md).
//!
//! `scripts/test.sh` runs this file in release mode (stage `simulator`);
//! a debug build runs a smaller budget of the same seeds, as a debug build
//! simulates about ten times slower.

use cstor_sim::{run_seed, Options};

/// Seeds 1..=CI_SEEDS run in CI (release); override with CSTOR_SIM_SEEDS.
const CI_SEEDS: u64 = 1000;
const DEBUG_SEEDS: u64 = 20;

fn budget() -> u64 {
    std::env::var("CSTOR_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) {
            DEBUG_SEEDS
        } else {
            CI_SEEDS
        })
}

#[test]
fn a_seed_replays_to_the_same_trace_and_another_seed_to_another() {
    let a = run_seed(7, Options::default());
    let b = run_seed(7, Options::default());
    let c = run_seed(8, Options::default());
    assert_eq!(a.trace_hash, b.trace_hash, "seed 7 replayed differently");
    assert_eq!(a.stats.events, b.stats.events);
    assert_eq!(a.stats.commands, b.stats.commands);
    assert_eq!(a.failure, b.failure);
    assert_ne!(a.trace_hash, c.trace_hash, "seeds 7 and 8 ran the same");
    assert!(
        a.stats.commands > 0 && a.stats.reads_checked > 0,
        "seed 7 did no IO: {a:?}"
    );
}

#[test]
fn every_seed_of_the_ci_budget_passes_every_oracle() {
    let n = budget();
    // Seeds are independent (each runs a whole cluster on one thread, ids
    // seeded per thread): spread over the machine's cores.
    let workers = std::thread::available_parallelism().map_or(1, |p| p.get().min(4)) as u64;
    let runs: Vec<(u64, Vec<String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                scope.spawn(move || {
                    let mut commands = 0;
                    let mut failed = Vec::new();
                    for seed in (1..=n).filter(|s| s % workers == w) {
                        let r = run_seed(seed, Options::default());
                        commands += r.stats.commands;
                        if let Some(f) = r.failure {
                            failed.push(format!(
                                "seed {seed}: {f} (replay: cargo run --release -p cstor-sim -- --seed {seed})"
                            ));
                        }
                    }
                    (commands, failed)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a simulator worker panicked"))
            .collect()
    });
    let commands: u64 = runs.iter().map(|(c, _)| c).sum();
    let mut failed: Vec<String> = runs.into_iter().flat_map(|(_, f)| f).collect();
    failed.sort();
    assert!(
        commands > n * 10,
        "the workload barely ran: {commands} commands"
    );
    assert!(
        failed.is_empty(),
        "{} of {n} seeds failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

/// Seeds run with the scrub steps on (`Options::scrub`): a fifth of the
/// budget.
#[test]
fn seeds_that_scrub_while_the_faults_run_pass_every_oracle() {
    let n = (budget() / 5).max(1);
    let mut failed = Vec::new();
    let mut digests = 0;
    for seed in 1..=n {
        let r = run_seed(
            seed,
            Options {
                scrub: true,
                ..Options::default()
            },
        );
        digests += r
            .stats
            .operator_by_kind
            .get("scrub_digest")
            .copied()
            .unwrap_or(0);
        if let Some(f) = r.failure {
            failed.push(format!(
                "seed {seed}: {f} (replay: cargo run --release -p cstor-sim -- --seed {seed} --scrub)"
            ));
        }
    }
    assert!(digests > 0, "no scrub step ran in {n} seeds");
    assert!(
        failed.is_empty(),
        "{} of {n} seeds failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

/// Seeds whose added replicas hold stale data (`Options::stale_adds`):
/// their full rebuilds go by digest. A fifth of the budget.
#[test]
fn seeds_whose_added_replicas_hold_stale_data_pass_every_oracle() {
    let n = (budget() / 5).max(1);
    let mut failed = Vec::new();
    let mut added = 0;
    for seed in 1..=n {
        let r = run_seed(
            seed,
            Options {
                stale_adds: true,
                ..Options::default()
            },
        );
        added += r
            .stats
            .operator_by_kind
            .get("replica_add")
            .copied()
            .unwrap_or(0);
        if let Some(f) = r.failure {
            failed.push(format!(
                "seed {seed}: {f} (replay: cargo run --release -p cstor-sim -- --seed {seed} --stale-adds)"
            ));
        }
    }
    assert!(added > 0 || n < 20, "no replica added in {n} seeds");
    assert!(
        failed.is_empty(),
        "{} of {n} seeds failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}
