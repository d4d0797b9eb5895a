//! What `cstor bench` prints: a short text for people, or one JSON object
//! for scripts. The JSON schema is documented in docs/benchmarks.md and
//! versioned by `schema_version`: a field is never renamed or given another
//! meaning without a new version; new fields may appear.
//!
//! Consistency the JSON keeps (tests/bench pins it): `ios = reads +
//! writes`, `bytes = read_bytes + write_bytes`, `iops = ios / elapsed_s`,
//! each latency summary's `count` equals its IO count, and percentiles are
//! ordered `min <= p50 <= p90 <= p99 <= p99_9 <= max`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};

use super::histogram::Histogram;
use super::workload::{Pattern, Rw, Stats};

/// Version of the JSON layout.
pub const SCHEMA_VERSION: u32 = 1;

pub struct Report {
    pub portal: SocketAddr,
    pub target: String,
    pub lun: u16,
    pub block_bytes: u32,
    pub capacity_bytes: u64,
    pub pattern: Pattern,
    pub rw: Rw,
    pub mix_read_pct: u8,
    pub bs_bytes: u64,
    pub qd: u32,
    pub sessions: u16,
    pub offset_bytes: u64,
    pub size_bytes: u64,
    pub runtime: Option<Duration>,
    pub ios_limit: Option<u64>,
    pub warmup: Duration,
    pub verify: bool,
    pub seed: u64,
    pub elapsed: Duration,
    pub cpu_user: Duration,
    pub cpu_system: Duration,
    pub stats: Stats,
}

const MIB: f64 = 1024.0 * 1024.0;

fn us(ns: u64) -> f64 {
    // Two decimals: the histogram's precision is ~1.6 % anyway.
    (ns as f64 / 10.0).round() / 100.0
}

fn latency(h: &Histogram) -> Value {
    json!({
        "count": h.count(),
        "min": us(h.min()),
        "mean": us(h.mean().round() as u64),
        "p50": us(h.quantile(0.50)),
        "p90": us(h.quantile(0.90)),
        "p99": us(h.quantile(0.99)),
        "p99_9": us(h.quantile(0.999)),
        "max": us(h.max()),
    })
}

fn pattern_name(p: Pattern) -> &'static str {
    match p {
        Pattern::Rand => "rand",
        Pattern::Seq => "seq",
    }
}

fn rw_name(rw: Rw) -> &'static str {
    match rw {
        Rw::Read => "read",
        Rw::Write => "write",
        Rw::Mix => "mix",
    }
}

impl Report {
    fn seconds(&self) -> f64 {
        self.elapsed.as_secs_f64()
    }

    fn rate(&self, n: u64) -> f64 {
        let s = self.seconds();
        if s > 0.0 {
            n as f64 / s
        } else {
            0.0
        }
    }

    fn all_ns(&self) -> Histogram {
        let mut all = self.stats.read_ns.clone();
        all.merge(&self.stats.write_ns);
        all
    }

    fn direction(&self, h: &Histogram, bytes: u64) -> Value {
        json!({
            "ios": h.count(),
            "bytes": bytes,
            "iops": (self.rate(h.count()) * 10.0).round() / 10.0,
            "mib_per_s": (self.rate(bytes) / MIB * 100.0).round() / 100.0,
            "latency_us": latency(h),
        })
    }

    fn cpu_per_io_us(&self, ios: u64) -> f64 {
        if ios == 0 {
            return 0.0;
        }
        let cpu = (self.cpu_user + self.cpu_system).as_secs_f64();
        (cpu / ios as f64 * 1e6 * 100.0).round() / 100.0
    }

    pub fn json(&self) -> Value {
        let s = &self.stats;
        let reads = s.read_ns.count();
        let writes = s.write_ns.count();
        let ios = reads + writes;
        let bytes = s.read_bytes + s.write_bytes;
        json!({
            "schema_version": SCHEMA_VERSION,
            "target": {
                "portal": self.portal.to_string(),
                "iqn": self.target,
                "lun": self.lun,
                "block_bytes": self.block_bytes,
                "capacity_bytes": self.capacity_bytes,
            },
            "workload": {
                "pattern": pattern_name(self.pattern),
                "rw": rw_name(self.rw),
                "mix_read_pct": self.mix_read_pct,
                "bs_bytes": self.bs_bytes,
                "qd": self.qd,
                "sessions": self.sessions,
                "offset_bytes": self.offset_bytes,
                "size_bytes": self.size_bytes,
                "runtime_s": self.runtime.map(|d| d.as_secs_f64()),
                "ios_limit": self.ios_limit,
                "warmup_s": self.warmup.as_secs_f64(),
                "verify": self.verify,
                "seed": self.seed,
            },
            "elapsed_s": self.seconds(),
            "ios": ios,
            "reads": reads,
            "writes": writes,
            "bytes": bytes,
            "read_bytes": s.read_bytes,
            "write_bytes": s.write_bytes,
            "iops": (self.rate(ios) * 10.0).round() / 10.0,
            "mib_per_s": (self.rate(bytes) / MIB * 100.0).round() / 100.0,
            "latency_us": latency(&self.all_ns()),
            "read": self.direction(&s.read_ns, s.read_bytes),
            "write": self.direction(&s.write_ns, s.write_bytes),
            "cpu": {
                "user_s": self.cpu_user.as_secs_f64(),
                "system_s": self.cpu_system.as_secs_f64(),
                "us_per_io": self.cpu_per_io_us(ios),
            },
            "verify": {
                "enabled": self.verify,
                "blocks_checked": s.blocks_checked,
                "mismatches": s.mismatches,
                "examples": s.examples.iter().map(|m| json!({
                    "lba": m.lba,
                    "expected": m.expected,
                    "actual": m.actual,
                })).collect::<Vec<_>>(),
            },
        })
    }

    pub fn text(&self) -> String {
        let s = &self.stats;
        let mut out = String::new();
        let mix = match self.rw {
            Rw::Mix => format!(" {}% read", self.mix_read_pct),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "cstor bench: {} {}{mix}, bs {} B, qd {} x {} session(s), {:.1} s measured, range {} B at {} of {} LUN {} ({}-byte blocks)",
            pattern_name(self.pattern),
            rw_name(self.rw),
            self.bs_bytes,
            self.qd,
            self.sessions,
            self.seconds(),
            self.size_bytes,
            self.offset_bytes,
            self.target,
            self.lun,
            self.block_bytes,
        );
        let line = |out: &mut String, name: &str, h: &Histogram, bytes: u64| {
            if h.count() == 0 {
                return;
            }
            let _ = writeln!(
                out,
                "  {name:<5} {:>10.0} IOPS {:>9.2} MiB/s  latency µs: p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}  ({} IOs)",
                self.rate(h.count()),
                self.rate(bytes) / MIB,
                us(h.quantile(0.5)),
                us(h.quantile(0.9)),
                us(h.quantile(0.99)),
                us(h.quantile(0.999)),
                us(h.max()),
                h.count(),
            );
        };
        line(&mut out, "read", &s.read_ns, s.read_bytes);
        line(&mut out, "write", &s.write_ns, s.write_bytes);
        let all = self.all_ns();
        if s.read_ns.count() > 0 && s.write_ns.count() > 0 {
            line(&mut out, "total", &all, s.read_bytes + s.write_bytes);
        }
        let _ = writeln!(
            out,
            "  cpu   {:.2} s user, {:.2} s system: {:.1} µs per IO (this process)",
            self.cpu_user.as_secs_f64(),
            self.cpu_system.as_secs_f64(),
            self.cpu_per_io_us(all.count()),
        );
        if self.verify {
            let _ = writeln!(
                out,
                "  verify {} blocks checked, {} mismatches",
                s.blocks_checked, s.mismatches
            );
            for m in &s.examples {
                let _ = writeln!(
                    out,
                    "    LBA {}: expected {}, found {}",
                    m.lba, m.expected, m.actual
                );
            }
        }
        out
    }
}
