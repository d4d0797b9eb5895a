//! `cstor bench` against a real `cstor target` and replica daemon on
//! loopback: verify mode passes over what it wrote and finds a block
//! overwritten behind its back, its JSON is complete and consistent, and
//! bad input or a refused login ends with a precise message and a non-zero
//! exit status, never a panic. No assertion depends on timing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::process::{Command, Output};

use common::{cstor_bin, free_addr, pattern, IscsiSession, ReplicaProcess, TargetProcess};
use serde_json::Value;

const VOLUME: &str = "benchvol";

/// One replica daemon and a target serving `VOLUME` (64 MiB) over it.
struct Fixture {
    // Fields drop in order: the target before the replica it writes to.
    target: TargetProcess,
    _replica: ReplicaProcess,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let replica = ReplicaProcess::create(dir.path(), "256MiB");
        replica.ctl(&["volume", "create", VOLUME, "--size", "64MiB"]);
        let target =
            TargetProcess::start_with(dir.path(), free_addr(), VOLUME, &[replica.data], args, env);
        Fixture {
            target,
            _replica: replica,
            _dir: dir,
        }
    }

    fn bench(&self, args: &[&str]) -> Output {
        bench_at(self.target.portal, &self.target.iqn, args, &[])
    }
}

fn bench_at(portal: SocketAddr, iqn: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(cstor_bin())
        .args(["bench", "--portal", &portal.to_string(), "--target", iqn])
        .args(args)
        .env_remove("CSTOR_CHAP_USER")
        .env_remove("CSTOR_CHAP_SECRET")
        .env_remove("CSTOR_CHAP_TARGET_USER")
        .env_remove("CSTOR_CHAP_TARGET_SECRET")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The JSON report of a run that must have succeeded.
fn json_ok(out: &Output) -> Value {
    assert!(out.status.success(), "cstor bench failed: {}", stderr(out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// A failed run: exit status 1 (not a panic's 101, not clap's 2 unless
/// `code` says so) and an error message containing `needle`.
fn assert_fails(out: &Output, code: i32, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert!(err.contains(needle), "{needle:?} not in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn u(v: &Value, path: &str) -> u64 {
    v.pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{path} missing or not an integer in {v}"))
}

fn f(v: &Value, path: &str) -> f64 {
    v.pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{path} missing or not a number in {v}"))
}

#[test]
fn verify_passes_over_its_own_writes_and_finds_a_block_overwritten_behind_its_back() {
    let fx = Fixture::start(&[], &[]);
    // 128 KiB writes: 64 KiB go as immediate data, the rest answers R2Ts.
    let written = json_ok(&fx.bench(&[
        "--rw",
        "write",
        "--pattern",
        "seq",
        "--verify",
        "--size",
        "2MiB",
        "--bs",
        "128k",
        "--qd",
        "4",
        "--ios",
        "16",
        "--json",
    ]));
    assert_eq!(u(&written, "/writes"), 16);
    // Every block written is read back and checked at the end.
    assert_eq!(u(&written, "/verify/blocks_checked"), 512);
    assert_eq!(u(&written, "/verify/mismatches"), 0);

    // A later read-only run checks every block against the seed.
    let read = json_ok(&fx.bench(&[
        "--rw",
        "read",
        "--pattern",
        "seq",
        "--verify",
        "--size",
        "2MiB",
        "--bs",
        "8k",
        "--qd",
        "8",
        "--ios",
        "256",
        "--json",
    ]));
    assert_eq!(u(&read, "/verify/blocks_checked"), 512);
    assert_eq!(u(&read, "/verify/mismatches"), 0);

    // Another initiator overwrites LBA 77 with other content.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut other = IscsiSession::login(
            fx.target.portal,
            &fx.target.iqn,
            "iqn.2016-09.com.example:other",
        )
        .await
        .unwrap();
        let block = pattern(77, 9, other.block_size as usize);
        assert!(other.write(77, block).await.unwrap().is_good());
    });

    let out = fx.bench(&[
        "--rw",
        "read",
        "--pattern",
        "seq",
        "--verify",
        "--size",
        "2MiB",
        "--bs",
        "8k",
        "--ios",
        "256",
        "--json",
    ]);
    assert_fails(&out, 1, "LBA 77");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(u(&report, "/verify/mismatches"), 1);
    assert_eq!(u(&report, "/verify/blocks_checked"), 512);
    assert_eq!(u(&report, "/verify/examples/0/lba"), 77);
    let actual = report.pointer("/verify/examples/0/actual").unwrap();
    assert!(
        actual.as_str().unwrap().contains("not a cstor bench block"),
        "{actual}"
    );

    // Text mode says the same in words.
    let out = fx.bench(&[
        "--rw",
        "read",
        "--pattern",
        "seq",
        "--verify",
        "--size",
        "2MiB",
        "--ios",
        "512",
    ]);
    assert_fails(&out, 1, "1 of 512 blocks checked do not match");
    assert!(String::from_utf8_lossy(&out.stdout).contains("LBA 77: expected"));
}

#[test]
fn json_report_has_every_field_and_its_totals_add_up() {
    let fx = Fixture::start(&[], &[]);
    let r = json_ok(&fx.bench(&[
        "--rw",
        "mix",
        "--mix-read-pct",
        "50",
        "--sessions",
        "2",
        "--qd",
        "4",
        "--ios",
        "400",
        "--size",
        "8MiB",
        "--json",
    ]));
    assert_eq!(u(&r, "/schema_version"), 1);
    assert_eq!(r.pointer("/target/iqn").unwrap(), fx.target.iqn.as_str());
    assert_eq!(u(&r, "/target/block_bytes"), 4096);
    assert_eq!(u(&r, "/target/capacity_bytes"), 64 << 20);
    assert_eq!(r.pointer("/workload/rw").unwrap(), "mix");
    assert_eq!(r.pointer("/workload/pattern").unwrap(), "rand");
    assert_eq!(u(&r, "/workload/qd"), 4);
    assert_eq!(u(&r, "/workload/sessions"), 2);
    assert_eq!(u(&r, "/workload/size_bytes"), 8 << 20);
    assert_eq!(u(&r, "/workload/ios_limit"), 400);

    let (ios, reads, writes) = (u(&r, "/ios"), u(&r, "/reads"), u(&r, "/writes"));
    assert_eq!(ios, 400);
    assert_eq!(ios, reads + writes);
    assert!(
        reads > 0 && writes > 0,
        "a 50/50 mix of 400 IOs: {reads}/{writes}"
    );
    assert_eq!(u(&r, "/read/ios"), reads);
    assert_eq!(u(&r, "/write/ios"), writes);
    assert_eq!(u(&r, "/read_bytes"), reads * 4096);
    assert_eq!(u(&r, "/write_bytes"), writes * 4096);
    assert_eq!(
        u(&r, "/bytes"),
        u(&r, "/read_bytes") + u(&r, "/write_bytes")
    );
    assert_eq!(u(&r, "/latency_us/count"), ios);
    assert_eq!(u(&r, "/read/latency_us/count"), reads);
    assert_eq!(u(&r, "/write/latency_us/count"), writes);
    let elapsed = f(&r, "/elapsed_s");
    assert!(elapsed > 0.0);
    let iops = f(&r, "/iops");
    assert!(
        (iops - ios as f64 / elapsed).abs() <= 0.1,
        "{iops} vs {ios}/{elapsed}"
    );
    for group in ["/latency_us", "/read/latency_us", "/write/latency_us"] {
        let order: Vec<f64> = ["min", "p50", "p90", "p99", "p99_9", "max"]
            .iter()
            .map(|k| f(&r, &format!("{group}/{k}")))
            .collect();
        assert!(order.windows(2).all(|w| w[0] <= w[1]), "{group}: {order:?}");
        assert!(order[0] > 0.0, "{group}: a latency of 0");
        let mean = f(&r, &format!("{group}/mean"));
        assert!(order[0] <= mean && mean <= order[5], "{group}: mean {mean}");
    }
    assert!(f(&r, "/cpu/user_s") + f(&r, "/cpu/system_s") >= 0.0);
    assert!(f(&r, "/cpu/us_per_io") >= 0.0);
    assert_eq!(r.pointer("/verify/enabled").unwrap(), false);
    assert_eq!(u(&r, "/verify/mismatches"), 0);
}

#[test]
fn bad_input_and_refused_logins_end_with_a_precise_error() {
    let fx = Fixture::start(&[], &[]);
    for (args, needle) in [
        (&["--qd", "0"][..], "--qd 0 is out of range"),
        (&["--bs", "1000"][..], "--bs 1000 is invalid"),
        (&["--sessions", "0"][..], "--sessions 0 is out of range"),
        (&["--ios", "0"][..], "--ios must be at least 1"),
        // Known only once the LUN's geometry is: past its 64 MiB.
        (
            &["--offset", "60MiB", "--size", "8MiB", "--ios", "1"][..],
            "past the end of the LUN",
        ),
        (
            &["--bs", "4k", "--offset", "1000", "--ios", "1"][..],
            "--offset 1000 is not a multiple",
        ),
    ] {
        assert_fails(&fx.bench(args), 1, needle);
    }
    // Syntax errors are clap's: exit status 2.
    assert_fails(&fx.bench(&["--pattern", "zigzag"]), 2, "zigzag");
    assert_fails(&fx.bench(&["--bs", "4 parsecs"]), 2, "unknown unit");
    assert_fails(
        &fx.bench(&["--runtime", "soon"]),
        2,
        "does not start with a number",
    );

    let nobody = free_addr();
    let out = bench_at(nobody, &fx.target.iqn, &["--ios", "1"], &[]);
    assert_fails(&out, 1, &format!("cannot connect to the portal {nobody}"));
    let out = bench_at(
        fx.target.portal,
        "iqn.2016-09.com.example:nothing",
        &["--ios", "1"],
        &[],
    );
    assert_fails(&out, 1, "no such target");
    assert_fails(&fx.bench(&["--portal-typo"]), 2, "--portal-typo");
}

#[test]
fn chap_target_refuses_no_or_wrong_credentials_and_admits_the_right_ones() {
    const USER: &str = "bench-user";
    const SECRET: &str = "bench-secret-0123";
    const TARGET_USER: &str = "bench-target";
    const TARGET_SECRET: &str = "bench-target-secret-4567";
    let fx = Fixture::start(
        &["--chap-user", USER, "--chap-target-user", TARGET_USER],
        &[
            ("CSTOR_CHAP_SECRET", SECRET),
            ("CSTOR_CHAP_TARGET_SECRET", TARGET_SECRET),
        ],
    );
    let (portal, iqn) = (fx.target.portal, fx.target.iqn.as_str());
    let out = bench_at(portal, iqn, &["--ios", "1"], &[]);
    assert_fails(&out, 1, "authentication failed");
    let out = bench_at(
        portal,
        iqn,
        &["--ios", "1", "--chap-user", USER],
        &[("CSTOR_CHAP_SECRET", "not-the-secret-at-all")],
    );
    assert_fails(&out, 1, "authentication failed");
    let out = bench_at(portal, iqn, &["--ios", "1", "--chap-user", USER], &[]);
    assert_fails(&out, 1, "CSTOR_CHAP_SECRET must hold the secret");
    let r = json_ok(&bench_at(
        portal,
        iqn,
        &[
            "--rw",
            "write",
            "--ios",
            "64",
            "--qd",
            "8",
            "--json",
            "--chap-user",
            USER,
        ],
        &[("CSTOR_CHAP_SECRET", SECRET)],
    ));
    assert_eq!(u(&r, "/writes"), 64);

    // Mutual CHAP: the target proves it knows its own secret.
    let mutual = [
        "--ios",
        "8",
        "--chap-user",
        USER,
        "--chap-target-user",
        TARGET_USER,
    ];
    let ok = bench_at(
        portal,
        iqn,
        &mutual,
        &[
            ("CSTOR_CHAP_SECRET", SECRET),
            ("CSTOR_CHAP_TARGET_SECRET", TARGET_SECRET),
        ],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    let out = bench_at(
        portal,
        iqn,
        &mutual,
        &[
            ("CSTOR_CHAP_SECRET", SECRET),
            ("CSTOR_CHAP_TARGET_SECRET", "another-target-secret"),
        ],
    );
    assert_fails(&out, 1, "mutual CHAP");
}
