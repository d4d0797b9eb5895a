//! The host side: the cache directory, its locks, the Debian packages the
//! runner needs, and running host commands with context in their errors.
//!
//! QEMU needs care: every QEMU package on a machine must come from one
//! release. A fresh image may carry `qemu-utils` from `bookworm-backports`
//! (version `…~bpo12+1`) while its apt sources list only bookworm; then
//! bookworm's `qemu-system-x86` cannot be installed next to it. In that
//! case the runner adds a `bookworm-backports` source
//! (`/etc/apt/sources.list.d/cstor-testkit-backports.sources`) and installs
//! `qemu-system-x86` at the version of the installed `qemu-utils` with
//! `apt-get -t bookworm-backports` (so that `qemu-system-common`,
//! `qemu-system-data` and `seabios` come from there too: apt does not
//! follow a pinned version's release for its dependencies by itself), or
//! else the release's current QEMU, upgrading the installed one with it.

use std::fmt::Write as _;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{Unavailable, VmError};
use crate::apt::{self, Program};
use crate::Need;

/// The programs the runner uses on the host, besides QEMU.
const PROGRAMS: &[Program] = &[
    Program {
        command: "busybox",
        package: "busybox-static",
    },
    Program {
        command: "iscsiadm",
        package: "open-iscsi",
    },
    Program {
        command: "iscsid",
        package: "open-iscsi",
    },
    Program {
        command: "mke2fs",
        package: "e2fsprogs",
    },
    Program {
        command: "mkfs.xfs",
        package: "xfsprogs",
    },
    Program {
        command: "xfs_growfs",
        package: "xfsprogs",
    },
    Program {
        command: "findmnt",
        package: "util-linux",
    },
    Program {
        command: "mount",
        package: "mount",
    },
    Program {
        command: "fio",
        package: "fio",
    },
    Program {
        command: "depmod",
        package: "kmod",
    },
    Program {
        command: "xz",
        package: "xz-utils",
    },
    Program {
        command: "dpkg-deb",
        package: "dpkg",
    },
    Program {
        command: "ldd",
        package: "libc-bin",
    },
];

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";

/// The packages of the QEMU family whose release `qemu-system-x86` must match.
const QEMU_FAMILY: &[&str] = &[
    "qemu-utils",
    "qemu-system-common",
    "qemu-system-data",
    "qemu-block-extra",
];

/// The cache directory: `$CSTOR_VM_CACHE`, else `$XDG_CACHE_HOME/cstor-vm`,
/// else `$HOME/.cache/cstor-vm`; created if missing.
pub fn cache_dir() -> Result<PathBuf, VmError> {
    let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    let dir = if let Some(d) = non_empty("CSTOR_VM_CACHE") {
        PathBuf::from(d)
    } else if let Some(d) = non_empty("XDG_CACHE_HOME") {
        PathBuf::from(d).join("cstor-vm")
    } else if let Some(home) = non_empty("HOME") {
        PathBuf::from(home).join(".cache/cstor-vm")
    } else {
        return Err(VmError::Setup(
            "no cache directory: set CSTOR_VM_CACHE (or HOME)".into(),
        ));
    };
    std::fs::create_dir_all(&dir).map_err(VmError::io("create the cache directory", &dir))?;
    Ok(dir)
}

/// An exclusive `flock` on a file, released when dropped. Each [`Lock`]
/// opens the file anew, so it excludes other threads of this process as
/// well as other processes.
pub struct Lock(std::fs::File);

impl Lock {
    /// Takes the lock on `path`, waiting for it; says on stderr that it
    /// waits (for `what`) if it cannot have it at once.
    pub fn take(path: &Path, what: &str) -> Result<Lock, VmError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(VmError::io("open a lock file", path))?;
        if !flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            eprintln!("[cstor-vm] waiting for {what} ({})", path.display());
            if !flock(&file, libc::LOCK_EX) {
                return Err(VmError::io("lock", path)(std::io::Error::last_os_error()));
            }
        }
        Ok(Lock(file))
    }
}

#[allow(unsafe_code)]
fn flock(file: &std::fs::File, how: libc::c_int) -> bool {
    loop {
        // SAFETY: flock on a descriptor this function's caller owns; no
        // memory is passed to the kernel.
        if unsafe { libc::flock(file.as_raw_fd(), how) } == 0 {
            return true;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return false;
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Closing the file releases the lock; this says it explicitly.
        flock(&self.0, libc::LOCK_UN);
    }
}

/// Makes QEMU and the guest's tools available, installing what is missing
/// (root only).
pub fn ensure_packages() -> Result<(), VmError> {
    if !apt::have(QEMU) {
        install_qemu()?;
    }
    apt::ensure(PROGRAMS).map_err(|e| match e {
        apt::AptError::NotRoot { missing } => VmError::Unavailable(Unavailable {
            need: Need::Root,
            reason: format!(
                "the VM runner needs {} (installing them needs root)",
                missing.join(" ")
            ),
        }),
        apt::AptError::Io(e) if e.kind() == std::io::ErrorKind::NotFound => {
            VmError::Unavailable(Unavailable {
                need: Need::Tool("apt-get"),
                reason: format!("the VM runner installs its packages with apt-get (Debian): {e}"),
            })
        }
        e => VmError::Apt(e),
    })
}

/// Whether an installed package version comes from a Debian backports
/// release (`1:10.0.2+ds-2+deb13u1~bpo12+1`).
pub fn is_backports_version(version: &str) -> bool {
    version.contains("~bpo")
}

/// The deb822 apt source of `suite` (e.g. `bookworm-backports`).
pub fn backports_source(suite: &str) -> String {
    format!(
        "# Added by cstor's test harness (cstor-testkit, the VM runner): the QEMU\n\
         # packages must all come from one release, and an installed one is\n\
         # from {suite}.\n\
         Types: deb\n\
         URIs: http://deb.debian.org/debian\n\
         Suites: {suite}\n\
         Components: main\n\
         Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
}

fn install_qemu() -> Result<(), VmError> {
    if !crate::is_root() {
        return Err(VmError::Unavailable(Unavailable {
            need: Need::Root,
            reason: format!("{QEMU} is missing (installing qemu-system-x86 needs root)"),
        }));
    }
    // The lock apt::ensure takes too: one apt-get at a time.
    let _lock = Lock::take(
        &std::env::temp_dir().join("cstor-testkit-apt.lock"),
        "another package installation",
    )?;
    if apt::have(QEMU) {
        return Ok(());
    }
    let backports = QEMU_FAMILY
        .iter()
        .filter_map(|p| apt::installed_version(p).map(|v| (*p, v)))
        .find(|(_, v)| is_backports_version(v));
    let Some((family, version)) = backports else {
        return apt::install(&["qemu-system-x86".to_string()]).map_err(VmError::Apt);
    };
    let codename = os_codename()?;
    let suite = format!("{codename}-backports");
    eprintln!(
        "[cstor-vm] {family} {version} is from {suite}: qemu-system-x86 comes from there too"
    );
    if !source_lists_suite(&suite) {
        let path = Path::new("/etc/apt/sources.list.d/cstor-testkit-backports.sources");
        std::fs::write(path, backports_source(&suite))
            .map_err(VmError::io("add the backports apt source", path))?;
        run(
            "apt-get update (backports source added)",
            Command::new("apt-get").args(["update", "-q"]),
        )?;
    }
    // apt does not take a pinned package's dependencies from its release
    // by itself (qemu-system-common, qemu-system-data and seabios would come
    // from bookworm): the target release makes the whole transaction
    // prefer backports.
    let exact = format!("qemu-system-x86={version}");
    let first = apt_get_install(&suite, &[&exact]);
    if first.is_ok() {
        return Ok(());
    }
    // That exact version may have left the archive: the release's current
    // QEMU, with the installed family upgraded to it.
    eprintln!("[cstor-vm] {exact} failed, trying {suite}'s current QEMU");
    apt_get_install(&suite, &["qemu-system-x86", family]).map(drop)
}

/// `apt-get install -t SUITE PACKAGES…` (the caller holds the apt lock).
fn apt_get_install(suite: &str, packages: &[&str]) -> Result<String, VmError> {
    eprintln!("[cstor-vm] installing {} from {suite}", packages.join(" "));
    run(
        "install QEMU",
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "-t",
                suite,
            ])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// `VERSION_CODENAME` of /etc/os-release.
fn os_codename() -> Result<String, VmError> {
    let path = Path::new("/etc/os-release");
    let text = std::fs::read_to_string(path).map_err(VmError::io("read", path))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| VmError::Setup("no VERSION_CODENAME in /etc/os-release".into()))
}

/// Whether an apt source file already names `suite`.
fn source_lists_suite(suite: &str) -> bool {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(
            dir.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "list" || e == "sources")),
        );
    }
    files.iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            t.lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .any(|l| l.split_whitespace().any(|w| w == suite))
        })
    })
}

/// Runs a command to completion; its stdout on success, else an error
/// naming `step`, the command and its output.
pub fn run(step: &str, command: &mut Command) -> Result<String, VmError> {
    let shown = show(command);
    let out = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| VmError::Command {
            step: step.to_string(),
            command: shown.clone(),
            output: format!("cannot start: {e}"),
        })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let mut output = format!("{}", out.status);
    for stream in [&out.stdout, &out.stderr] {
        let text = String::from_utf8_lossy(stream);
        if !text.trim().is_empty() {
            let _ = write!(output, "\n{}", text.trim_end());
        }
    }
    Err(VmError::Command {
        step: step.to_string(),
        command: shown,
        output,
    })
}

/// A command line as text, for messages.
pub fn show(command: &Command) -> String {
    let mut s = command.get_program().to_string_lossy().into_owned();
    for a in command.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// The host's kernel release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backports_versions_are_recognized() {
        assert!(is_backports_version("1:10.0.2+ds-2+deb13u1~bpo12+1"));
        assert!(!is_backports_version("1:7.2+dfsg-7+deb12u18+b2"));
    }

    #[test]
    fn the_backports_source_is_deb822_for_the_suite() {
        let s = backports_source("bookworm-backports");
        assert!(s.contains("\nSuites: bookworm-backports\n"), "{s}");
        assert!(s.contains("\nTypes: deb\n"));
        assert!(s.lines().all(|l| l.starts_with('#') || l.contains(": ")));
    }

    #[test]
    fn a_failing_command_names_its_step_and_output() {
        let err = run(
            "probe",
            Command::new("sh").args(["-c", "echo oops >&2; exit 3"]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("probe") && err.contains("oops") && err.contains("sh -c"),
            "{err}"
        );
        assert_eq!(run("echo", Command::new("echo").arg("hi")).unwrap(), "hi\n");
    }
}
