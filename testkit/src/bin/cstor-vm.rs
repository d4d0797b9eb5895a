//! `cstor-vm`: the VM runner of `cstor_testkit::vm` by hand. Boots Debian's
//! kernel under QEMU and runs the built-in iSCSI test (or a guest script)
//! against a target listening on this machine:
//!
//! ```text
//! cargo run -p cstor-testkit --bin cstor-vm -- --port 3260 --iqn IQN [--fio]
//! ```
//!
//! Exit status: 0 when the guest passed, 1 when it failed, 2 when the VM
//! could not run.

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

use clap::Parser;
use cstor_testkit::vm::{AccelChoice, Vm};

#[derive(Debug, Parser)]
#[command(
    name = "cstor-vm",
    about = "Run the Linux iSCSI initiator in a VM against a target on this machine",
    long_about = "Boots Debian 12's kernel under QEMU (KVM where it works, else TCG) with a \
                  small initramfs, logs into the target listening on 127.0.0.1:PORT (the \
                  guest sees it as 10.0.2.2:PORT) and runs the built-in test: discovery, \
                  login, mkfs.ext4, write (and fio with --fio), logout, login, e2fsck, \
                  verify. Installs QEMU and the guest's tools with apt-get on first use \
                  (root). The cache lives in $CSTOR_VM_CACHE, else \
                  $XDG_CACHE_HOME/cstor-vm, else ~/.cache/cstor-vm."
)]
struct Args {
    /// The target's port on the host's loopback.
    #[arg(long)]
    port: u16,
    /// The target's IQN.
    #[arg(long)]
    iqn: String,
    /// A busybox-ash script to run in the guest instead of the built-in test;
    /// it gets TARGET_HOST, TARGET_PORT, TARGET_IQN and the --env variables
    /// and must print "E2E-RESULT: PASS" or "E2E-RESULT: FAIL reason".
    #[arg(long, value_name = "FILE")]
    guest_script: Option<PathBuf>,
    /// A variable for the guest script (repeatable).
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// A host executable to copy to the guest's /usr/local/bin (repeatable).
    #[arg(long = "add-bin", value_name = "PATH")]
    add_bin: Vec<PathBuf>,
    /// Put fio into the guest (the built-in test writes and verifies a file with it).
    #[arg(long)]
    fio: bool,
    /// The VM's time limit, in seconds.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    timeout: u64,
    /// Also write the guest's console to this file.
    #[arg(long, value_name = "FILE")]
    console_log: Option<PathBuf>,
    /// auto (KVM if it works here, else TCG), kvm or tcg [default: $CSTOR_VM_ACCEL, else auto].
    #[arg(long, value_parser = parse_accel)]
    accel: Option<AccelChoice>,
    /// A shell command run on the host for each guest line "E2E-SIGNAL: WORD",
    /// as `sh -c CMD cstor-vm WORD` (so $1 is WORD); the guest's `e2e-signal`
    /// returns once it finished.
    #[arg(long, value_name = "CMD")]
    on_signal: Option<String>,
    /// Print every console line, not only the E2E ones.
    #[arg(long)]
    verbose: bool,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?}: want NAME=VALUE"))
}

fn parse_accel(s: &str) -> Result<AccelChoice, String> {
    AccelChoice::parse(s).ok_or_else(|| format!("{s:?}: want auto, kvm or tcg"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut vm = Vm::new(args.port, &args.iqn)
        .fio(args.fio)
        .timeout(Duration::from_secs(args.timeout));
    if let Some(script) = args.guest_script {
        vm = vm.guest_script(script);
    }
    for (k, v) in args.env {
        vm = vm.env(k, v);
    }
    for bin in args.add_bin {
        vm = vm.add_bin(bin);
    }
    if let Some(log) = args.console_log {
        vm = vm.console_log(log);
    }
    if let Some(accel) = args.accel {
        vm = vm.accel(accel);
    }
    if let Some(cmd) = args.on_signal {
        vm = vm.on_signal(move |word| {
            match Command::new("sh")
                .args(["-c", &cmd, "cstor-vm", word])
                .status()
            {
                Ok(s) if s.success() => {}
                Ok(s) => eprintln!("cstor-vm: --on-signal for {word}: {s}"),
                Err(e) => eprintln!("cstor-vm: --on-signal for {word}: {e}"),
            }
        });
    }
    match vm.run() {
        Ok(outcome) => {
            if args.verbose {
                println!("{}", outcome.console);
            }
            for line in outcome.lines_with("E2E-STEP:") {
                println!("{line}");
            }
            println!("{}", outcome.summary());
            if outcome.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("cstor-vm: {e}");
            ExitCode::from(2)
        }
    }
}
