//! `cstor-sim`: runs seeds of the whole-cluster simulator and reports the
//! failing ones (docs/simulation.md).

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use cstor_sim::{run_seed, Options};

/// Run seeded simulations of a whole cstor cluster (target, replicas,
/// network, disks) and check every answer against a model.
#[derive(Debug, Parser)]
#[command(name = "cstor-sim", version)]
struct Args {
    /// Run seeds 1..=N (from --from if given).
    #[arg(long, conflicts_with = "seed")]
    seeds: Option<u64>,
    /// Run this one seed (replay), printing its trace hash and counts.
    #[arg(long)]
    seed: Option<u64>,
    /// First seed of a --seeds range.
    #[arg(long, default_value_t = 1)]
    from: u64,
    /// Print one line per seed, not only the failing ones.
    #[arg(long, short)]
    verbose: bool,
    /// Print every event of the run to stderr (with --seed).
    #[arg(long)]
    trace: bool,
    /// Also scrub ranges while the faults run (changes every seed's run):
    /// healthy replicas' digests must agree, repairs never overwrite newer
    /// writes.
    #[arg(long)]
    scrub: bool,
    /// Replicas the operator adds already hold stale data (changes every
    /// seed's run): their full rebuilds go by digest.
    #[arg(long)]
    stale_adds: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let started = Instant::now();
    let seeds: Vec<u64> = match (args.seed, args.seeds) {
        (Some(s), _) => vec![s],
        (None, Some(n)) => (args.from..args.from.saturating_add(n)).collect(),
        (None, None) => (args.from..args.from.saturating_add(100)).collect(),
    };
    let single = args.seed.is_some();
    let mut failed = 0u64;
    let mut ops = 0u64;
    let mut faults = std::collections::BTreeMap::<&str, u64>::new();
    let mut actions = std::collections::BTreeMap::<&str, u64>::new();
    for &seed in &seeds {
        let opts = Options {
            verbose: args.trace,
            scrub: args.scrub,
            stale_adds: args.stale_adds,
            ..Options::default()
        };
        let r = run_seed(seed, opts);
        ops += r.stats.commands;
        for (k, v) in &r.stats.faults_by_kind {
            *faults.entry(k).or_default() += v;
        }
        for (k, v) in &r.stats.operator_by_kind {
            *actions.entry(k).or_default() += v;
        }
        if single || args.verbose {
            say(format_args!(
                "seed {seed}: {} | trace {:016x} | {} commands, {} reads checked, {} events, {:.1} s simulated | plan: {} replicas cf {} {} initiator(s) pools {:?} | faults {:?} | operator {:?}",
                r.failure.as_deref().map_or("ok".to_string(), |f| format!("FAILED: {f}")),
                r.trace_hash,
                r.stats.commands,
                r.stats.reads_checked,
                r.stats.events,
                r.stats.sim_us as f64 / 1e6,
                r.plan.replicas,
                r.plan.cf,
                r.plan.initiators,
                r.plan.pool_bytes,
                r.stats.faults_by_kind,
                r.stats.operator_by_kind,
            ));
        }
        if let Some(f) = &r.failure {
            failed += 1;
            if !single && !args.verbose {
                say(format_args!(
                    "seed {seed} FAILED: {f} (replay: cargo run --release -p cstor-sim -- --seed {seed}{}{})",
                    if args.scrub { " --scrub" } else { "" },
                    if args.stale_adds { " --stale-adds" } else { "" }
                ));
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let n = seeds.len() as u64;
    if n > 1 {
        say(format_args!(
            "mix per seed: faults {:?} | operator {:?}",
            faults
                .iter()
                .map(|(k, v)| (*k, format!("{:.2}", *v as f64 / n as f64)))
                .collect::<Vec<_>>(),
            actions
                .iter()
                .map(|(k, v)| (*k, format!("{:.2}", *v as f64 / n as f64)))
                .collect::<Vec<_>>()
        ));
    }
    say(format_args!(
        "{n} seeds, {failed} failed, {ops} ops, {secs:.1} s ({:.1} seeds/s)",
        n as f64 / secs.max(1e-9)
    ));
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// One line on standard output; a reader that went away (`| head`) ends
/// the run quietly instead of a panic.
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if writeln!(std::io::stdout().lock(), "{line}").is_err() {
        std::process::exit(0);
    }
}
