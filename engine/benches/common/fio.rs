//! fio as the peer of the engine benches: 4 KiB random IO at queue depth 32,
//! io_uring, O_DIRECT, on the same file the engine uses, in the same run.

use std::path::Path;
use std::process::Command;

/// Random 4 KiB writes or reads.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Rw {
    RandWrite,
    RandRead,
}

impl Rw {
    /// fio's name for it, also used in bench names.
    pub fn fio_name(self) -> &'static str {
        match self {
            Rw::RandWrite => "randwrite",
            Rw::RandRead => "randread",
        }
    }

    fn fio_key(self) -> &'static str {
        match self {
            Rw::RandWrite => "write",
            Rw::RandRead => "read",
        }
    }
}

/// fio's IOPS on `len_bytes` of `path` from `offset`, for `secs` seconds;
/// `None` (with a message) when fio is missing or fails.
pub fn fio_iops(path: &Path, rw: Rw, secs: u64, offset: u64, len_bytes: u64) -> Option<f64> {
    let out = Command::new("fio")
        .args([
            "--name=cstor-cmp",
            "--ioengine=io_uring",
            "--direct=1",
            "--bs=4k",
            "--iodepth=32",
            "--numjobs=1",
            "--time_based",
            "--output-format=json",
        ])
        .arg(format!("--rw={}", rw.fio_name()))
        .arg(format!("--size={len_bytes}"))
        .arg(format!("--offset={offset}"))
        .arg(format!("--runtime={secs}"))
        .arg(format!("--filename={}", path.display()))
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            eprintln!(
                "fio failed, skipped: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            return None;
        }
        Err(e) => {
            eprintln!("fio not found, skipped ({e}); install it with `apt-get install -y fio`");
            return None;
        }
    };
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    json["jobs"][0][rw.fio_key()]["iops"].as_f64()
}
