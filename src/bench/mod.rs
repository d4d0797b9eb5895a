//! `cstor bench`: a load generator that speaks iSCSI itself — random or
//! sequential reads, writes or a mix, any block size, a queue depth of
//! pipelined commands per session over one TCP connection, several
//! sessions, a verify mode, latency percentiles and JSON output. It fills
//! what `iscsi-perf` (reads only) and `qemu-img bench` (no random offsets)
//! leave out, against any iSCSI target: cstor's, tgt, LIO.
//!
//! Parts: [`session`] (login, CHAP, the pipelined command loop),
//! [`workload`] (offsets, mix, stop rule, measurements; sans-IO),
//! [`pattern`] (the verify blocks), [`histogram`] (latency), [`report`]
//! (text and the JSON schema, documented in docs/benchmarks.md).
//!
//! Invariants: the command line is checked before connecting and the
//! geometry right after login, so bad input ends with a message and exit
//! status 1, never a panic; every bound (queue depth, sessions, IO size,
//! bytes in flight, verify table) is named below; the run ends with exit
//! status 1 when a verify mismatch or an IO error was seen.

mod histogram;
mod pattern;
mod report;
mod session;
mod workload;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use session::{Chap, LoginSpec, Session};
use workload::{Load, Pattern, Rw, Share, Stats};

/// Commands in flight per session, at most (the cstor target's own bound,
/// `MAX_QUEUE_DEPTH`).
pub const MAX_QD: usize = 256;
/// Sessions (TCP connections), at most.
pub const MAX_SESSIONS: u16 = 64;
/// Largest IO.
const MAX_BS_BYTES: u64 = 8 << 20;
/// Data in flight per session (qd × bs), at most.
const MAX_IN_FLIGHT_BYTES: u64 = 256 << 20;
/// Blocks a verify run may track (4 bytes each: 64 MiB of table).
const MAX_VERIFY_BLOCKS: u64 = 1 << 24;
/// Longest run or warm-up.
const MAX_RUNTIME: Duration = Duration::from_secs(24 * 3600);
/// The run's length when neither --runtime nor --ios is given.
const DEFAULT_RUNTIME: Duration = Duration::from_secs(10);
/// The seed verify blocks carry unless --seed is given: fixed, so that a
/// later `--verify --rw read` run checks what an earlier one wrote.
const DEFAULT_SEED: u64 = 0x00c5_70b0;

/// The text after `cstor bench --help`'s options.
const AFTER_HELP: &str = "\
Examples:
  cstor bench --portal 127.0.0.1:3260 --target iqn.2016-09.com.openebs.cstor:vol1 \\
      --pattern rand --rw mix --bs 4k --qd 32 --runtime 30s
  cstor bench ... --rw write --verify --size 64MiB --ios 100000
  cstor bench ... --rw read --verify --size 64MiB --pattern seq --json

Exit status: 0 when every IO succeeded (and verified); 1 on bad input, an
unreachable portal, a refused login, a failed IO, or a verify mismatch (the
report is still printed); 2 on a command-line syntax error.
The JSON schema: docs/benchmarks.md.";

/// `cstor bench`'s command line.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct BenchArgs {
    /// iSCSI portal, HOST:PORT (e.g. 127.0.0.1:3260, what `cstor up`
    /// prints).
    #[arg(long, value_name = "HOST:PORT")]
    portal: String,
    /// Target IQN (e.g. iqn.2016-09.com.openebs.cstor:vol1).
    #[arg(long, value_name = "IQN")]
    target: String,
    /// Logical unit number (cstor serves LUN 0; tgt's first LUN is 1).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=16383))]
    lun: u16,
    /// Offsets: random (aligned to --bs) or sequential, over the range.
    #[arg(long, value_enum, default_value_t = Pattern::Rand)]
    pattern: Pattern,
    /// Reads, writes, or a mix (see --mix-read-pct).
    #[arg(long, value_enum, default_value_t = Rw::Read)]
    rw: Rw,
    /// Share of reads in a mix, in percent (0 to 100).
    #[arg(long, default_value_t = 70, value_parser = clap::value_parser!(u8).range(0..=100))]
    mix_read_pct: u8,
    /// IO size: a multiple of the LUN's block size, at most 8 MiB (4k,
    /// 64KiB, 1M, ...).
    #[arg(long, default_value = "4KiB", value_parser = cstor_mgmt::size::parse_size)]
    bs: u64,
    /// Commands in flight per session (1 to 256), pipelined on its one
    /// connection.
    #[arg(long, default_value_t = 32)]
    qd: u32,
    /// Sessions (TCP connections), each with --qd in flight and its own
    /// share of the range (1 to 64).
    #[arg(long, default_value_t = 1)]
    sessions: u16,
    /// How long to measure, after the warm-up (e.g. 30s, 2m, 500ms).
    /// Default 10s unless --ios is given; with both, the first reached
    /// ends the run.
    #[arg(long, value_parser = parse_duration)]
    runtime: Option<Duration>,
    /// How many IOs to measure (all sessions together), after the warm-up.
    #[arg(long)]
    ios: Option<u64>,
    /// Bytes of the LUN to touch, from --offset (default: to the end of
    /// the LUN). A multiple of --bs is used.
    #[arg(long, value_parser = cstor_mgmt::size::parse_size)]
    size: Option<u64>,
    /// Where the range starts, in bytes (a multiple of the LUN's block
    /// size).
    #[arg(long, default_value = "0", value_parser = cstor_mgmt::size::parse_size)]
    offset: u64,
    /// Run the load this long before measuring (not counted).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    warmup: Duration,
    /// Verify mode: writes stamp every block with its LBA, --seed and a
    /// generation. A run that writes checks every block it wrote when it
    /// reads it, and reads back all it wrote at the end (not measured); a
    /// read-only run (--rw read) checks every block it reads against
    /// --seed (written by an earlier verify run). A mismatch is reported
    /// with its LBA and makes the exit status 1. At most 16 Mi blocks of
    /// range.
    #[arg(long)]
    verify: bool,
    /// Seed of the verify content and of the offsets.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Print the result as one JSON object on stdout (schema in
    /// docs/benchmarks.md) instead of text.
    #[arg(long)]
    json: bool,
    /// Initiator name to log in as (a target's allowlist may name it).
    #[arg(long, default_value = "iqn.2016-09.com.openebs.cstor:bench")]
    initiator_name: String,
    /// CHAP user, when the target requires CHAP; the secret is read from
    /// CSTOR_CHAP_SECRET (as `cstor target` reads it).
    #[arg(long, env = "CSTOR_CHAP_USER")]
    chap_user: Option<String>,
    /// Mutual CHAP: the user the target must answer as; its secret is read
    /// from CSTOR_CHAP_TARGET_SECRET.
    #[arg(long, env = "CSTOR_CHAP_TARGET_USER", requires = "chap_user")]
    chap_target_user: Option<String>,
    /// Worker threads of the bench itself (1 runs every session on one
    /// thread, the least CPU; 0 one per CPU).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(0..=64))]
    pub threads: u16,
}

/// Parses "30s", "500ms", "2m", "1h" or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("duration {text:?} does not start with a number"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "duration {text:?}: unknown unit {other:?} (use ms, s, m, h)"
            ))
        }
    };
    if !seconds.is_finite() || seconds > MAX_RUNTIME.as_secs_f64() {
        return Err(format!(
            "duration {text:?} is longer than {} h",
            MAX_RUNTIME.as_secs() / 3600
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// The command line, checked before anything is connected.
fn check_args(args: &BenchArgs) -> Result<()> {
    if args.qd == 0 || args.qd as usize > MAX_QD {
        bail!("--qd {} is out of range: 1 to {MAX_QD}", args.qd);
    }
    if args.sessions == 0 || args.sessions > MAX_SESSIONS {
        bail!(
            "--sessions {} is out of range: 1 to {MAX_SESSIONS}",
            args.sessions
        );
    }
    if args.bs == 0 || !args.bs.is_multiple_of(512) || args.bs > MAX_BS_BYTES {
        bail!(
            "--bs {} is invalid: a multiple of 512 bytes, at most {} MiB",
            args.bs,
            MAX_BS_BYTES >> 20
        );
    }
    if args.bs * u64::from(args.qd) > MAX_IN_FLIGHT_BYTES {
        bail!(
            "--bs {} × --qd {} is more than {} MiB in flight per session",
            args.bs,
            args.qd,
            MAX_IN_FLIGHT_BYTES >> 20
        );
    }
    if args.runtime == Some(Duration::ZERO) {
        bail!("--runtime must be longer than 0");
    }
    if args.ios == Some(0) {
        bail!("--ios must be at least 1");
    }
    if args.ios.is_some_and(|n| n < u64::from(args.sessions)) {
        bail!("--ios must be at least --sessions (every session does one IO)");
    }
    if args.size == Some(0) {
        bail!("--size must be larger than 0");
    }
    Ok(())
}

fn chap(args: &BenchArgs) -> Result<Option<Chap>> {
    let Some(user) = &args.chap_user else {
        return Ok(None);
    };
    let secret = |var: &str| -> Result<Vec<u8>> {
        let s = std::env::var(var).with_context(|| format!("CHAP: {var} must hold the secret"))?;
        if !(12..=255).contains(&s.len()) {
            bail!("CHAP: {var} is {} bytes; it must be 12 to 255", s.len());
        }
        Ok(s.into_bytes())
    };
    let mutual = match &args.chap_target_user {
        Some(target_user) => Some((target_user.clone(), secret("CSTOR_CHAP_TARGET_SECRET")?)),
        None => None,
    };
    Ok(Some(Chap {
        user: user.clone(),
        secret: secret("CSTOR_CHAP_SECRET")?,
        mutual,
    }))
}

async fn resolve(portal: &str) -> Result<SocketAddr> {
    let mut addrs = tokio::net::lookup_host(portal)
        .await
        .with_context(|| format!("--portal {portal:?}: not a HOST:PORT that resolves"))?;
    addrs
        .next()
        .with_context(|| format!("--portal {portal:?}: no address"))
}

/// The range and its split among sessions, once the LUN's geometry is
/// known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    block_bytes: u32,
    io_blocks: u32,
    first_lba: u64,
    /// IO-sized slots in the whole range.
    slots: u64,
}

fn geometry(args: &BenchArgs, block_bytes: u32, lun_blocks: u64) -> Result<Geometry> {
    let bb = u64::from(block_bytes);
    let capacity = lun_blocks.saturating_mul(bb);
    if !args.bs.is_multiple_of(bb) {
        bail!(
            "--bs {} is not a multiple of the LUN's {bb}-byte blocks",
            args.bs
        );
    }
    if !args.offset.is_multiple_of(bb) {
        bail!(
            "--offset {} is not a multiple of the LUN's {bb}-byte blocks",
            args.offset
        );
    }
    if args.offset >= capacity {
        bail!(
            "--offset {} is past the end of the LUN ({capacity} bytes)",
            args.offset
        );
    }
    let size = args.size.unwrap_or(capacity - args.offset);
    if args
        .offset
        .checked_add(size)
        .is_none_or(|end| end > capacity)
    {
        bail!(
            "--offset {} + --size {size} is past the end of the LUN ({capacity} bytes)",
            args.offset
        );
    }
    let slots = size / args.bs;
    if slots < u64::from(args.sessions) {
        bail!(
            "the range ({size} bytes) holds {slots} IOs of --bs {}: fewer than --sessions {}",
            args.bs,
            args.sessions
        );
    }
    let io_blocks = u32::try_from(args.bs / bb).context("--bs")?;
    if args.verify && slots * u64::from(io_blocks) > MAX_VERIFY_BLOCKS {
        bail!(
            "--verify tracks at most {MAX_VERIFY_BLOCKS} blocks ({} MiB of {bb}-byte blocks): give a smaller --size",
            (MAX_VERIFY_BLOCKS * bb) >> 20
        );
    }
    Ok(Geometry {
        block_bytes,
        io_blocks,
        first_lba: args.offset / bb,
        slots,
    })
}

/// Session `i`'s share of the workload.
fn share(args: &BenchArgs, g: &Geometry, i: u16) -> Share {
    let n = u64::from(args.sessions);
    let i = u64::from(i);
    let from = g.slots * i / n;
    let to = g.slots * (i + 1) / n;
    let ios = args.ios.map(|total| total / n + u64::from(i < total % n));
    Share {
        pattern: args.pattern,
        rw: args.rw,
        read_pct: args.mix_read_pct,
        io_blocks: g.io_blocks,
        block_bytes: g.block_bytes,
        first_lba: g.first_lba + from * u64::from(g.io_blocks),
        slots: to - from,
        ios,
        verify: args.verify,
        seed: args.seed,
        stream: args.seed ^ (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    }
}

/// CPU time of this process so far (user, system).
#[allow(unsafe_code)]
fn cpu_times() -> (Duration, Duration) {
    // SAFETY: getrusage(2) writes one `rusage` into the zeroed struct we
    // own; all-zero is a valid `rusage` (plain integers).
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return (Duration::ZERO, Duration::ZERO);
        }
        usage
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    (tv(usage.ru_utime), tv(usage.ru_stime))
}

/// Runs `cstor bench`.
pub async fn run(args: BenchArgs) -> Result<()> {
    check_args(&args)?;
    let portal = resolve(&args.portal).await?;
    let spec = LoginSpec {
        portal,
        target: args.target.clone(),
        initiator: args.initiator_name.clone(),
        lun: args.lun,
        chap: chap(&args)?,
    };
    // Every session logs in before any IO, so a refused login or a bad
    // geometry ends the run before it starts.
    let mut sessions = Vec::with_capacity(usize::from(args.sessions));
    for _ in 0..args.sessions {
        sessions.push(Session::open(&spec).await?);
    }
    let (block_bytes, lun_blocks) = sessions
        .first()
        .map(|s| (s.block_bytes, s.blocks))
        .context("no session")?;
    let g = geometry(&args, block_bytes, lun_blocks)?;
    let runtime = match (args.runtime, args.ios) {
        (None, None) => Some(DEFAULT_RUNTIME),
        (r, _) => r,
    };
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let deadline = runtime.map(|r| measure_from + r);
    let cpu_at_start = if args.warmup.is_zero() {
        Some(cpu_times())
    } else {
        None
    };
    let cpu_sampler = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        cpu_times()
    });
    let mut tasks = Vec::with_capacity(sessions.len());
    for (i, mut session) in sessions.into_iter().enumerate() {
        let load = Load::new(
            share(&args, &g, u16::try_from(i).unwrap_or(0)),
            measure_from,
            deadline,
        );
        let verify = args.verify;
        let qd = args.qd as usize;
        tasks.push(tokio::spawn(async move {
            let mut load = load;
            session.run(&mut load, qd).await?;
            let end = Instant::now();
            let cpu_end = cpu_times();
            let stats = if verify {
                let mut back = load.read_back();
                session.run(&mut back, qd).await?;
                back.into_stats()
            } else {
                load.stats
            };
            session.logout().await;
            Ok::<_, session::SessionError>((stats, end, cpu_end))
        }));
    }
    let mut stats = Stats::default();
    let mut end = measure_from;
    let mut cpu_end = (Duration::ZERO, Duration::ZERO);
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok((s, e, c))) => {
                stats.merge(&s);
                end = end.max(e);
                cpu_end = cpu_end.max(c);
            }
            Ok(Err(e)) => {
                first_error.get_or_insert_with(|| anyhow::Error::new(e));
            }
            Err(e) => {
                first_error.get_or_insert_with(|| anyhow::anyhow!("a session task failed: {e}"));
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let cpu_start = match cpu_at_start {
        Some(c) => c,
        None => cpu_sampler.await.unwrap_or_default(),
    };
    let elapsed = end.saturating_duration_since(measure_from);
    let result = report::Report {
        portal,
        target: args.target.clone(),
        lun: args.lun,
        block_bytes,
        capacity_bytes: lun_blocks.saturating_mul(u64::from(block_bytes)),
        pattern: args.pattern,
        rw: args.rw,
        mix_read_pct: args.mix_read_pct,
        bs_bytes: args.bs,
        qd: args.qd,
        sessions: args.sessions,
        offset_bytes: args.offset,
        size_bytes: g.slots * args.bs,
        runtime,
        ios_limit: args.ios,
        warmup: args.warmup,
        verify: args.verify,
        seed: args.seed,
        elapsed,
        cpu_user: cpu_end.0.saturating_sub(cpu_start.0),
        cpu_system: cpu_end.1.saturating_sub(cpu_start.1),
        stats,
    };
    if args.json {
        println!("{}", result.json());
    } else {
        print!("{}", result.text());
    }
    if result.stats.mismatches > 0 {
        let first = result.stats.examples.first();
        bail!(
            "verify: {} of {} blocks checked do not match{}",
            result.stats.mismatches,
            result.stats.blocks_checked,
            first.map_or(String::new(), |m| format!(
                " (first: LBA {}: expected {}, found {})",
                m.lba, m.expected, m.actual
            ))
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn args(extra: &[&str]) -> BenchArgs {
        let mut argv = vec!["bench", "--portal", "127.0.0.1:3260", "--target", "iqn.x"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().bench
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("5 days").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("100000h").is_err());
    }

    #[test]
    fn bad_numbers_are_refused_before_connecting() {
        for (extra, needle) in [
            (&["--qd", "0"][..], "--qd 0"),
            (&["--qd", "257"][..], "--qd 257"),
            (&["--bs", "1000"][..], "--bs 1000"),
            (&["--bs", "0"][..], "--bs 0"),
            (&["--sessions", "0"][..], "--sessions 0"),
            (&["--bs", "8MiB", "--qd", "64"][..], "in flight"),
            (&["--ios", "0"][..], "--ios"),
            (&["--runtime", "0s"][..], "--runtime"),
        ] {
            let e = check_args(&args(extra)).unwrap_err().to_string();
            assert!(e.contains(needle), "{extra:?}: {e}");
        }
        check_args(&args(&[])).unwrap();
    }

    #[test]
    fn geometry_checks_alignment_and_range() {
        let a = args(&["--bs", "4k"]);
        let e = geometry(&a, 8192, 100).unwrap_err().to_string();
        assert!(e.contains("not a multiple"), "{e}");
        let a = args(&["--offset", "1M", "--size", "1M"]);
        let e = geometry(&a, 4096, 256).unwrap_err().to_string();
        assert!(e.contains("past the end"), "{e}");
        let a = args(&["--offset", "512k", "--size", "256k"]);
        let g = geometry(&a, 4096, 256).unwrap();
        assert_eq!((g.first_lba, g.slots, g.io_blocks), (128, 64, 1));
        let a = args(&["--sessions", "3", "--size", "8k"]);
        assert!(geometry(&a, 4096, 256).is_err());
    }

    #[test]
    fn shares_split_the_range_and_the_ios_without_overlap() {
        let a = args(&["--sessions", "3", "--ios", "10", "--bs", "8k"]);
        let g = geometry(&a, 4096, 100).unwrap(); // 50 slots of 2 blocks
        let shares: Vec<Share> = (0..3).map(|i| share(&a, &g, i)).collect();
        assert_eq!(shares.iter().map(|s| s.slots).sum::<u64>(), 50);
        assert_eq!(shares.iter().map(|s| s.ios.unwrap()).sum::<u64>(), 10);
        for w in shares.windows(2) {
            assert_eq!(w[0].first_lba + w[0].slots * 2, w[1].first_lba);
        }
    }
}
