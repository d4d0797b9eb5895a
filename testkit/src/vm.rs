//! The Linux kernel's iSCSI initiator in a VM, against a target on this
//! machine: the project's own VM runner.
//!
//! [`Vm::run`] boots Debian 12's own kernel (`linux-image-amd64`) under
//! `qemu-system-x86_64` with a small initramfs built from the host's
//! binaries (busybox, open-iscsi, e2fsprogs, xfsprogs, util-linux's mount
//! tools, optionally fio) and the kernel modules the initiator needs. The
//! guest reaches the host's loopback as `10.0.2.2` through QEMU's user-mode
//! network and has no other peer. Its /init (`testkit/vm/init.sh`) runs the
//! built-in test (`testkit/vm/e2e-test.sh`: discovery, login, mkfs.ext4,
//! write, logout, login, e2fsck, verify) or the caller's guest script, and
//! the verdict comes back on the serial console as `E2E-RESULT: PASS` or
//! `E2E-RESULT: FAIL reason`; no verdict (hang, crash, timeout) is a FAIL.
//!
//! ```no_run
//! # fn main() -> Result<(), cstor_testkit::vm::VmError> {
//! use cstor_testkit::vm::{self, Vm, VmError};
//! match vm::prepare() {
//!     Err(VmError::Unavailable(why)) => {
//!         cstor_testkit::skip(why.need, why.reason);
//!         return Ok(());
//!     }
//!     other => other?,
//! }
//! let outcome = Vm::new(3260, "iqn.2016-09.com.openebs.cstor:vol1")
//!     .fio(true)
//!     .on_signal(|word| eprintln!("the guest asked for {word}"))
//!     .run()?;
//! assert!(outcome.passed, "{outcome}");
//! # Ok(())
//! # }
//! ```
//!
//! Design:
//!
//! - **Host packages** ([`host`]): installed on first use with apt-get, as
//!   root (QEMU from the release of any QEMU package already installed, see
//!   there). Without root and with something missing, [`prepare`] says so,
//!   and the test skips.
//! - **Cache** ([`image`]): the kernel package, unpacked, and the initramfs
//!   live in `$CSTOR_VM_CACHE`, else `$XDG_CACHE_HOME/cstor-vm`, else
//!   `~/.cache/cstor-vm`; rebuilt only when an input changes, under a
//!   `flock`, so parallel tests share it. Each run appends a small archive
//!   of its own (parameters, guest script, `add_bin` binaries).
//! - **One VM at a time**: a run holds `vm.lock` in the cache (a `flock`,
//!   which excludes the threads of this process as well as other
//!   processes) from boot to power-off: on a 2-core machine two emulated
//!   guests and their targets at once are too slow. The time spent waiting
//!   does not count against the run's timeout.
//! - **Accelerator** ([`accel`]): KVM where it works, TCG otherwise; the
//!   first run probes KVM with a boot watchdog and caches the verdict.
//!   `CSTOR_VM_ACCEL=kvm|tcg|auto` overrides it; `CSTOR_VM_DEBUG=1` puts
//!   the kernel's messages on the console (and in the log) too.
//! - **Host actions**: a guest line `E2E-SIGNAL: WORD` calls the
//!   [`Vm::on_signal`] callback with WORD while the VM keeps running; once
//!   it returned, the runner writes `E2E-ACK: WORD` to the console's input.
//!   In the guest, `e2e-signal WORD` prints the line and waits for that
//!   acknowledgement, so a script knows the host acted.
//!
//! A guest script (busybox ash) runs once the modules, the network and
//! iscsid are up, with `TARGET_HOST=10.0.2.2`, `TARGET_PORT`, `TARGET_IQN`
//! and the [`Vm::env`] variables. It does its own discovery and login (the
//! node record must name the portal `$TARGET_HOST:$TARGET_PORT,1`: a
//! loopback target announces 127.0.0.1), and must print the verdict line;
//! exiting non-zero is a FAIL too. Tools: busybox, `iscsiadm`, `mkfs.ext4`,
//! `e2fsck`, `resize2fs`, `mkfs.xfs`, `xfs_growfs`, `xfs_repair`, util-linux
//! `mount`/`umount`/`findmnt`/`lsblk`/`blkid`/`blockdev`, `e2e-disk-links`
//! (there is no udev: it makes the `/dev/disk/by-path` links of the iSCSI
//! disks), `e2e-signal`, and whatever [`Vm::add_bin`] adds to
//! `/usr/local/bin` (with the shared libraries the base image lacks).

pub mod accel;
pub mod console;
pub mod cpio;
pub mod host;
pub mod image;
pub mod modules;

use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use accel::{Accel, AccelChoice};
pub use console::Verdict;

use crate::Need;
use console::Line;

/// The guest's view of the host.
pub const GUEST_HOST: &str = "10.0.2.2";
/// How long KVM gets to bring the guest to /init before the runner calls
/// KVM unusable here and boots with TCG.
pub const KVM_BOOT_LIMIT: Duration = Duration::from_secs(20);
/// The default limit of one VM's wall-clock time.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Why this machine cannot run the VM (the test skips with it).
#[derive(Debug, Clone)]
pub struct Unavailable {
    /// What is missing.
    pub need: Need,
    /// Why, in a sentence.
    pub reason: String,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "needs {}: {}", self.need, self.reason)
    }
}

/// What went wrong around the VM (not in it: a guest that fails is an
/// [`Outcome`] with `passed == false`).
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The machine cannot run VMs (see [`prepare`]).
    #[error("{0}")]
    Unavailable(Unavailable),
    /// A file operation failed.
    #[error("{step}: {}: {source}", path.display())]
    Io {
        step: String,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A host command failed.
    #[error("{step}: `{command}` failed: {output}")]
    Command {
        step: String,
        command: String,
        output: String,
    },
    /// Packages could not be installed.
    #[error("installing the VM's packages: {0}")]
    Apt(#[from] crate::apt::AptError),
    /// The kernel package is unusable.
    #[error("the guest kernel: {0}")]
    Kernel(String),
    /// A kernel module the guest needs is not in the kernel package.
    #[error("the kernel has no module {0} (modules.dep)")]
    Module(String),
    /// A binary to add to the guest is unusable.
    #[error("add_bin {}: {reason}", path.display())]
    AddBin { path: PathBuf, reason: String },
    /// The guest script is unusable.
    #[error("guest script {}: {reason}", path.display())]
    GuestScript { path: PathBuf, reason: String },
    /// A parameter of the run is malformed.
    #[error("invalid {what}: {value:?}")]
    Invalid { what: &'static str, value: String },
    /// Nothing listens where the guest is to log in.
    #[error("nothing accepts connections on 127.0.0.1:{port}: start the target first ({source})")]
    NoTarget { port: u16, source: std::io::Error },
    /// Anything else in the setup.
    #[error("{0}")]
    Setup(String),
    /// The thread of [`Vm::spawn`] panicked (in the signal callback).
    #[error("the VM thread panicked: {0}")]
    Panicked(String),
}

impl VmError {
    /// An [`VmError::Io`] maker for `map_err`.
    pub fn io(step: &str, path: &Path) -> impl FnOnce(std::io::Error) -> VmError {
        let step = step.to_string();
        let path = path.to_path_buf();
        move |source| VmError::Io { step, path, source }
    }
}

/// Makes this machine ready to run VMs: installs the packages (as root),
/// fetches the kernel and builds the base image if the cache lacks them.
/// [`VmError::Unavailable`] when this machine cannot run VMs (not root and
/// something is missing): the test skips with it,
///
/// ```no_run
/// # use cstor_testkit::vm::{self, VmError};
/// # fn test() {
/// match vm::prepare() {
///     Err(VmError::Unavailable(why)) => return cstor_testkit::skip(why.need, why.reason),
///     other => other.unwrap(),
/// }
/// # }
/// ```
///
/// and any other error is a failure ([`Vm::run`] prepares too; this only
/// separates the skip from the run).
pub fn prepare() -> Result<(), VmError> {
    host::ensure_packages()?;
    let cache = host::cache_dir()?;
    image::build(&cache, false).map(drop)
}

type SignalFn = Box<dyn FnMut(&str) + Send>;

/// One VM run; see the module documentation.
pub struct Vm {
    port: u16,
    iqn: String,
    guest_script: Option<PathBuf>,
    env: Vec<(String, String)>,
    add_bins: Vec<PathBuf>,
    fio: bool,
    timeout: Duration,
    console_log: Option<PathBuf>,
    on_signal: Option<SignalFn>,
    accel: Option<AccelChoice>,
}

impl fmt::Debug for Vm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vm")
            .field("port", &self.port)
            .field("iqn", &self.iqn)
            .field("guest_script", &self.guest_script)
            .field("env", &self.env)
            .field("add_bins", &self.add_bins)
            .field("fio", &self.fio)
            .field("timeout", &self.timeout)
            .field("console_log", &self.console_log)
            .field("on_signal", &self.on_signal.is_some())
            .field("accel", &self.accel)
            .finish()
    }
}

impl Vm {
    /// A run of the built-in test against the target listening on the
    /// host's `127.0.0.1:port` (or any address) with the given IQN.
    pub fn new(port: u16, iqn: impl Into<String>) -> Vm {
        Vm {
            port,
            iqn: iqn.into(),
            guest_script: None,
            env: Vec::new(),
            add_bins: Vec::new(),
            fio: false,
            timeout: DEFAULT_TIMEOUT,
            console_log: None,
            on_signal: None,
            accel: None,
        }
    }

    /// Runs this busybox-ash script in the guest instead of the built-in
    /// test (checked with `busybox sh -n` before the boot).
    pub fn guest_script(mut self, path: impl Into<PathBuf>) -> Vm {
        self.guest_script = Some(path.into());
        self
    }

    /// An environment variable for the guest script (the value is passed
    /// verbatim; the name must be a shell variable name).
    pub fn env(mut self, name: impl Into<String>, value: impl ToString) -> Vm {
        self.env.push((name.into(), value.to_string()));
        self
    }

    /// Copies a host executable to the guest's `/usr/local/bin` (with the
    /// shared libraries it needs that the base image lacks).
    pub fn add_bin(mut self, path: impl Into<PathBuf>) -> Vm {
        self.add_bins.push(path.into());
        self
    }

    /// Puts fio into the guest; the built-in test then also writes a file
    /// with fio and verifies it (crc32c), and checks it after the re-login.
    pub fn fio(mut self, on: bool) -> Vm {
        self.fio = on;
        self
    }

    /// The limit of the VM's wall-clock time (default 600 s), from QEMU's
    /// start (not counting the wait for another VM) to its end.
    pub fn timeout(mut self, timeout: Duration) -> Vm {
        self.timeout = timeout;
        self
    }

    /// Also writes the whole console to this file (as it comes).
    pub fn console_log(mut self, path: impl Into<PathBuf>) -> Vm {
        self.console_log = Some(path.into());
        self
    }

    /// Called with WORD for each guest line `E2E-SIGNAL: WORD`, while the
    /// VM runs; the guest's `e2e-signal` returns once this returned.
    pub fn on_signal(mut self, f: impl FnMut(&str) + Send + 'static) -> Vm {
        self.on_signal = Some(Box::new(f));
        self
    }

    /// KVM, TCG or auto (default: `$CSTOR_VM_ACCEL`, else auto).
    pub fn accel(mut self, choice: AccelChoice) -> Vm {
        self.accel = Some(choice);
        self
    }

    /// Runs the VM in a thread; the test goes on meanwhile.
    pub fn spawn(self) -> RunningVm {
        RunningVm(std::thread::spawn(move || self.run()))
    }

    /// Boots the VM, runs the test, and returns when the guest powered off,
    /// crashed or ran out of time.
    pub fn run(mut self) -> Result<Outcome, VmError> {
        let started = Instant::now();
        self.check()?;
        host::ensure_packages()?;
        let cache = host::cache_dir()?;
        let run_dir = RunDir::new(&cache)?;
        let initrd = run_dir.0.join("initrd.cpio");
        let images = image::build(&cache, self.fio)?;
        let mut layer = self.layer(&images)?;
        images.compose(&mut layer, &initrd)?;
        let kernel = images.kernel.clone();
        drop(images); // the build lock
        let prepare_time = started.elapsed();

        let waited = Instant::now();
        let _vm_lock = host::Lock::take(&cache.join("vm.lock"), "another VM to finish")?;
        let lock_wait = waited.elapsed();
        // After the wait: the target may have gone meanwhile.
        self.check_target()?;

        let qemu_version = host::run(
            "ask QEMU its version",
            Command::new(host::QEMU).arg("--version"),
        )?;
        let key = accel::verdict_key(
            &host::kernel_release(),
            qemu_version.lines().next().unwrap_or(""),
        );
        let verdict_file = cache.join("accel-verdict");
        let choice = self.accel.unwrap_or_else(|| {
            std::env::var("CSTOR_VM_ACCEL")
                .ok()
                .and_then(|v| AccelChoice::parse(&v))
                .unwrap_or_default()
        });
        let kvm_usable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        let cached = std::fs::read_to_string(&verdict_file)
            .ok()
            .and_then(|t| accel::parse_verdict(&t, &key));
        let (first, mut note) = match choice {
            AccelChoice::Tcg => (Accel::Tcg, "TCG asked for".to_string()),
            AccelChoice::Kvm => (Accel::Kvm, "KVM asked for".to_string()),
            AccelChoice::Auto if !kvm_usable => (Accel::Tcg, "no usable /dev/kvm".to_string()),
            AccelChoice::Auto => match cached {
                Some((Accel::Tcg, why)) => (
                    Accel::Tcg,
                    format!(
                        "KVM known not to work here ({why}; cached in {})",
                        verdict_file.display()
                    ),
                ),
                Some((Accel::Kvm, _)) => (Accel::Kvm, "KVM known to work here".to_string()),
                None => (Accel::Kvm, "probing KVM".to_string()),
            },
        };
        let log = match &self.console_log {
            Some(p) => p.clone(),
            None => run_dir.0.join("console.log"),
        };
        let watchdog =
            (choice == AccelChoice::Auto && first == Accel::Kvm).then_some(KVM_BOOT_LIMIT);
        let mut boot = self.boot(&kernel, &initrd, first, watchdog, &log, &run_dir.0)?;
        let mut accel_used = first;
        if first == Accel::Kvm && watchdog.is_some() {
            if boot.init_at.is_none() {
                let why = boot.kvm_failure();
                eprintln!(
                    "[cstor-vm] KVM does not run the guest here ({why}): falling back to TCG"
                );
                let _ =
                    std::fs::write(&verdict_file, accel::format_verdict(&key, Accel::Tcg, &why));
                note = format!("KVM failed ({why}), TCG fallback");
                accel_used = Accel::Tcg;
                boot = self.boot(&kernel, &initrd, Accel::Tcg, None, &log, &run_dir.0)?;
            } else {
                let _ = std::fs::write(
                    &verdict_file,
                    accel::format_verdict(&key, Accel::Kvm, "booted"),
                );
            }
        }
        let verdict = console::overall(&boot.verdicts);
        let outcome = Outcome {
            passed: verdict == Some(Verdict::Pass) && !boot.timed_out,
            verdict,
            console: boot.console,
            accel: accel_used,
            accel_note: note,
            timed_out: boot.timed_out,
            signals: boot.signals,
            qemu_exit: boot.exit,
            qemu_stderr: boot.stderr,
            prepare_time,
            lock_wait,
            boot_time: boot.init_at,
            vm_time: boot.wall,
            timeout: self.timeout,
        };
        eprintln!("[cstor-vm] {}", outcome.summary());
        Ok(outcome)
    }

    /// Checks the parameters before anything is built.
    fn check(&self) -> Result<(), VmError> {
        let bad = |what, value: &str| VmError::Invalid {
            what,
            value: value.to_string(),
        };
        if self.iqn.is_empty() || self.iqn.contains(|c: char| c.is_whitespace() || c == '\'') {
            return Err(bad("IQN", &self.iqn));
        }
        for (name, _) in &self.env {
            let mut chars = name.chars();
            let first_ok = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
            if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(bad("guest variable name", name));
            }
        }
        for bin in &self.add_bins {
            let ok = std::fs::metadata(bin).is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            });
            if !ok {
                return Err(VmError::AddBin {
                    path: bin.clone(),
                    reason: "not an executable file".into(),
                });
            }
        }
        self.check_target()
    }

    fn check_target(&self) -> Result<(), VmError> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .map(drop)
            .map_err(|source| VmError::NoTarget {
                port: self.port,
                source,
            })
    }

    /// The run's own archive: parameters, guest script and variables,
    /// added binaries.
    fn layer(&self, images: &image::Images) -> Result<cpio::Archive, VmError> {
        let mut a = cpio::Archive::new();
        a.bytes(
            "etc/cstor-vm/run.conf",
            format!(
                "TARGET_PORT={}\nTARGET_IQN={}\nCSTOR_VM_FIO={}\n",
                self.port,
                quote(&self.iqn),
                u8::from(self.fio)
            ),
            0o644,
        );
        if let Some(script) = &self.guest_script {
            let text =
                std::fs::read(script).map_err(VmError::io("read the guest script", script))?;
            let busybox = image::find_tool("busybox")?;
            let check = Command::new(busybox)
                .args(["sh", "-n"])
                .arg(script)
                .stdin(Stdio::null())
                .output()
                .map_err(VmError::io("check the guest script", script))?;
            if !check.status.success() {
                return Err(VmError::GuestScript {
                    path: script.clone(),
                    reason: format!(
                        "busybox sh -n: {}",
                        String::from_utf8_lossy(&check.stderr).trim()
                    ),
                });
            }
            a.bytes("etc/cstor-vm/test.sh", text, 0o644);
            let name = script
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "guest script".into());
            a.bytes("etc/cstor-vm/test.name", name, 0o644);
        }
        let env: String = self
            .env
            .iter()
            .map(|(k, v)| format!("export {k}={}\n", quote(v)))
            .collect();
        a.bytes("etc/cstor-vm/guest-env", env, 0o644);
        for bin in &self.add_bins {
            let name = bin
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let dest = format!("usr/local/bin/{name}");
            if a.contains(&dest) {
                return Err(VmError::AddBin {
                    path: bin.clone(),
                    reason: format!("a second binary named {name}"),
                });
            }
            image::add_executable(&mut a, bin, &dest, &|p| images.base_has(p))?;
        }
        Ok(a)
    }

    /// One QEMU run. With `watchdog`, the guest must print its init marker
    /// within that time, else QEMU is stopped (and the caller falls back).
    fn boot(
        &mut self,
        kernel: &image::Kernel,
        initrd: &Path,
        accel: Accel,
        watchdog: Option<Duration>,
        log: &Path,
        run_dir: &Path,
    ) -> Result<Boot, VmError> {
        let stderr_path = run_dir.join(format!("qemu-{accel}.stderr"));
        let stderr =
            std::fs::File::create(&stderr_path).map_err(VmError::io("create", &stderr_path))?;
        let mut log_file =
            std::fs::File::create(log).map_err(VmError::io("create the console log", log))?;
        // CSTOR_VM_DEBUG=1: the kernel's messages on the console too.
        let verbosity = if std::env::var("CSTOR_VM_DEBUG").is_ok_and(|v| v == "1") {
            "loglevel=7 printk.time=1"
        } else {
            "quiet loglevel=3"
        };
        let append = format!(
            "console=ttyS0 panic=-1 {verbosity} ipv6.disable=1 \
             8250.nr_uarts=1 i8042.noaux i8042.nokbd i8042.nopnp"
        );
        let mut command = Command::new(host::QEMU);
        command
            .args(["-machine", &format!("q35,accel={}", accel.name())])
            .args(["-cpu", accel.cpu(), "-smp", "2", "-m", "1024"])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ])
            .args([
                "-chardev",
                "stdio,id=console,signal=off",
                "-serial",
                "chardev:console",
            ])
            .arg("-kernel")
            .arg(&kernel.image)
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", &append])
            .args([
                "-netdev",
                "user,id=net0,net=10.0.2.0/24,host=10.0.2.2,ipv6=off",
                // No option ROM: the guest boots from -kernel, not the network.
                "-device",
                "virtio-net-pci,netdev=net0,romfile=",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        eprintln!(
            "[cstor-vm] booting {} ({}) under {accel}, timeout {} s",
            kernel.release,
            kernel
                .image
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            self.timeout.as_secs()
        );
        let started = Instant::now();
        let mut child = Killer(command.spawn().map_err(|e| VmError::Command {
            step: "start QEMU".into(),
            command: host::show(&command),
            output: e.to_string(),
        })?);
        let mut stdin = child.0.stdin.take();
        let lines = match child.0.stdout.take() {
            Some(out) => read_lines(out),
            None => return Err(VmError::Setup("QEMU's stdout is not a pipe".into())),
        };
        let mut boot = Boot::default();
        let deadline = started + self.timeout;
        let mut stopped = false;
        loop {
            match lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let _ = writeln!(log_file, "{line}");
                    boot.console.push_str(&line);
                    boot.console.push('\n');
                    if line.starts_with("E2E") {
                        eprintln!("{line}");
                    }
                    match console::parse(&line) {
                        Line::Init => {
                            boot.init_at.get_or_insert(started.elapsed());
                        }
                        Line::Signal(word) => {
                            eprintln!(
                                "[cstor-vm] guest signal {word} at +{:.1} s",
                                started.elapsed().as_secs_f64()
                            );
                            if let Some(f) = self.on_signal.as_mut() {
                                f(&word);
                            }
                            boot.signals.push(word.clone());
                            acknowledge(&mut stdin, &word);
                        }
                        Line::BadSignal(word) => {
                            eprintln!("[cstor-vm] ignoring a malformed signal {word:?}")
                        }
                        Line::Result(v) => boot.verdicts.push(v),
                        Line::Other => {}
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if stopped {
                continue;
            }
            if let Some(limit) = watchdog {
                if boot.init_at.is_none() && started.elapsed() > limit {
                    boot.watchdog_fired = true;
                    stopped = true;
                    let _ = child.0.kill();
                }
            }
            if Instant::now() > deadline {
                eprintln!(
                    "[cstor-vm] timeout after {} s: stopping QEMU",
                    self.timeout.as_secs()
                );
                boot.timed_out = true;
                stopped = true;
                let _ = child.0.kill();
            }
        }
        drop(stdin);
        boot.exit = child.0.wait().ok();
        boot.wall = started.elapsed();
        boot.stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        Ok(boot)
    }
}

/// Writes the acknowledgement of `word` to the guest's console input.
fn acknowledge(stdin: &mut Option<ChildStdin>, word: &str) {
    if let Some(s) = stdin.as_mut() {
        if s.write_all(console::ack(word).as_bytes())
            .and_then(|()| s.flush())
            .is_err()
        {
            *stdin = None;
        }
    }
}

/// The console's lines, from a thread reading QEMU's stdout; the channel
/// closes when QEMU exits.
fn read_lines(out: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(out);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end_matches(['\n', '\r']).to_string();
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

/// Shell single quotes.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Kills QEMU if the run ends early (an error, a panic in the callback).
struct Killer(Child);

impl Drop for Killer {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A per-run directory in the cache, removed afterwards.
struct RunDir(PathBuf);

impl RunDir {
    fn new(cache: &Path) -> Result<RunDir, VmError> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let runs = cache.join("runs");
        // Directories of runs whose process is gone (killed mid-run).
        if let Ok(entries) = std::fs::read_dir(&runs) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let pid = name.split('-').next().unwrap_or("");
                if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = runs.join(format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(VmError::io("create the run directory", &dir))?;
        Ok(RunDir(dir))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What one QEMU process did.
#[derive(Default)]
struct Boot {
    console: String,
    verdicts: Vec<Verdict>,
    signals: Vec<String>,
    init_at: Option<Duration>,
    watchdog_fired: bool,
    timed_out: bool,
    exit: Option<ExitStatus>,
    stderr: String,
    wall: Duration,
}

impl Boot {
    /// Why a KVM boot did not reach /init, in a line.
    fn kvm_failure(&self) -> String {
        let qemu: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.contains("terminating on signal"))
            .take(2)
            .collect();
        let mut why = if self.watchdog_fired {
            format!("no /init within {} s", KVM_BOOT_LIMIT.as_secs())
        } else {
            "QEMU ended before /init".to_string()
        };
        if !qemu.is_empty() {
            why.push_str(&format!("; qemu: {}", qemu.join(" ")));
        }
        why
    }
}

/// A VM running in its own thread ([`Vm::spawn`]).
pub struct RunningVm(std::thread::JoinHandle<Result<Outcome, VmError>>);

impl RunningVm {
    /// Whether the VM is done (passed, failed, or the run failed).
    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }

    /// Waits for the VM's end.
    pub fn wait(self) -> Result<Outcome, VmError> {
        self.0.join().unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(VmError::Panicked(what))
        })
    }
}

/// How a VM run ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The guest said PASS (and nothing said FAIL) before the timeout.
    pub passed: bool,
    /// The first FAIL, else PASS, else none (hang, crash, timeout).
    pub verdict: Option<Verdict>,
    /// Everything the guest printed on its console.
    pub console: String,
    /// The accelerator of the run that counted.
    pub accel: Accel,
    /// Why that accelerator.
    pub accel_note: String,
    /// The run hit its timeout.
    pub timed_out: bool,
    /// The words of the guest's `E2E-SIGNAL` lines, in order.
    pub signals: Vec<String>,
    /// QEMU's exit status.
    pub qemu_exit: Option<ExitStatus>,
    /// What QEMU printed on stderr.
    pub qemu_stderr: String,
    /// Packages, kernel, images, the run's initrd.
    pub prepare_time: Duration,
    /// Waiting for another VM to finish.
    pub lock_wait: Duration,
    /// QEMU's start to the guest's /init.
    pub boot_time: Option<Duration>,
    /// QEMU's start to its end.
    pub vm_time: Duration,
    /// The run's time limit.
    pub timeout: Duration,
}

impl Outcome {
    /// The lines of the console that start with `prefix` (`E2E-STEP:` …).
    pub fn lines_with(&self, prefix: &str) -> Vec<&str> {
        self.console
            .lines()
            .filter(|l| l.starts_with(prefix))
            .collect()
    }

    /// One line: verdict, accelerator, timings.
    pub fn summary(&self) -> String {
        let verdict = match (&self.verdict, self.timed_out) {
            (_, true) => format!("FAIL (timeout after {} s)", self.timeout.as_secs()),
            (Some(v), false) => v.to_string(),
            (None, false) => "FAIL (no verdict: the guest hung or crashed)".to_string(),
        };
        let boot = self
            .boot_time
            .map(|b| format!("{:.1} s", b.as_secs_f64()))
            .unwrap_or_else(|| "-".into());
        format!(
            "{verdict}; accel {} ({}); prepare {:.1} s, waited {:.1} s for another VM, \
             boot to /init {boot}, VM {:.1} s",
            self.accel,
            self.accel_note,
            self.prepare_time.as_secs_f64(),
            self.lock_wait.as_secs_f64(),
            self.vm_time.as_secs_f64()
        )
    }
}

impl fmt::Display for Outcome {
    /// The summary, then the console (for an assertion's message).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.summary())?;
        if !self.qemu_stderr.trim().is_empty() {
            writeln!(f, "qemu stderr: {}", self.qemu_stderr.trim())?;
        }
        writeln!(f, "---- console ----")?;
        f.write_str(&self.console)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_single_quoted_for_the_guest_shell() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn bad_parameters_are_refused_before_anything_is_built() {
        let err = Vm::new(1, "iqn with space").check().unwrap_err();
        assert!(matches!(err, VmError::Invalid { what: "IQN", .. }), "{err}");
        let err = Vm::new(1, "iqn.x").env("1X", "v").check().unwrap_err();
        assert!(matches!(err, VmError::Invalid { .. }), "{err}");
        let err = Vm::new(1, "iqn.x")
            .add_bin("/nonexistent/cstor-vm-bin")
            .check()
            .unwrap_err();
        assert!(matches!(err, VmError::AddBin { .. }), "{err}");
    }

    #[test]
    fn a_port_nobody_listens_on_is_named() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let err = Vm::new(port, "iqn.x").check().unwrap_err();
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
    }

    #[test]
    fn the_summary_says_why_a_run_without_verdict_failed() {
        let outcome = Outcome {
            passed: false,
            verdict: None,
            console: "E2E-INIT: x\n".into(),
            accel: Accel::Tcg,
            accel_note: "no usable /dev/kvm".into(),
            timed_out: true,
            signals: vec![],
            qemu_exit: None,
            qemu_stderr: String::new(),
            prepare_time: Duration::from_millis(1500),
            lock_wait: Duration::ZERO,
            boot_time: Some(Duration::from_secs(3)),
            vm_time: Duration::from_secs(60),
            timeout: Duration::from_secs(60),
        };
        let s = outcome.to_string();
        assert!(s.starts_with("FAIL (timeout after 60 s); accel tcg"), "{s}");
        assert!(
            s.contains("boot to /init 3.0 s") && s.ends_with("E2E-INIT: x\n"),
            "{s}"
        );
        assert_eq!(outcome.lines_with("E2E-INIT"), ["E2E-INIT: x"]);
    }
}
