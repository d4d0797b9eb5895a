//! Debian packages installed on first use.
//!
//! The harness needs programs a fresh Debian machine lacks (libiscsi's
//! `iscsi-test-cu`, QEMU, open-iscsi, busybox…). [`ensure`] installs the
//! packages of the programs that are missing, once, with `apt-get`, as
//! root; without root it says which packages are missing and fails, so the
//! caller can skip with that reason.
//!
//! Installs are serialized across processes with an advisory lock on a
//! file in the system's temp directory: apt itself refuses a second
//! concurrent run, and parallel tests may ask at the same time.

use std::fmt;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;

/// A program the harness runs, and the Debian package that provides it.
#[derive(Debug, Clone, Copy)]
pub struct Program {
    /// The command looked up in `PATH` (or an absolute path).
    pub command: &'static str,
    /// The package to install when it is missing; may carry an apt version
    /// or release (`pkg=1.2-3`, `pkg/bookworm-backports`).
    pub package: &'static str,
}

/// Why packages could not be made available.
#[derive(Debug)]
pub enum AptError {
    /// Missing, and not root: nothing was tried.
    NotRoot { missing: Vec<String> },
    /// `apt-get` ran and failed.
    Failed {
        packages: Vec<String>,
        output: String,
    },
    /// `apt-get` could not be started or the lock could not be taken.
    Io(std::io::Error),
}

impl fmt::Display for AptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AptError::NotRoot { missing } => {
                write!(
                    f,
                    "missing {} (installing them needs root)",
                    missing.join(" ")
                )
            }
            AptError::Failed { packages, output } => {
                write!(
                    f,
                    "apt-get install {} failed:\n{output}",
                    packages.join(" ")
                )
            }
            AptError::Io(e) => write!(f, "cannot run apt-get: {e}"),
        }
    }
}

impl std::error::Error for AptError {}

impl From<std::io::Error> for AptError {
    fn from(e: std::io::Error) -> Self {
        AptError::Io(e)
    }
}

/// Whether `command` is an executable in `PATH` (or an existing path).
pub fn have(command: &str) -> bool {
    if command.contains('/') {
        return Path::new(command).exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(command).is_file()))
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|dir| Path::new(dir).join(command).is_file())
}

/// Installs the packages of the programs that are missing.
pub fn ensure(programs: &[Program]) -> Result<(), AptError> {
    let missing = missing_packages(programs);
    if missing.is_empty() {
        return Ok(());
    }
    if !crate::is_root() {
        return Err(AptError::NotRoot { missing });
    }
    let _lock = InstallLock::take()?;
    // Another process may have installed them while we waited.
    let missing = missing_packages(programs);
    if missing.is_empty() {
        return Ok(());
    }
    install(&missing)
}

/// `apt-get install` of `packages` (after one `apt-get update` if the first
/// try fails for want of package lists), as root, non-interactively.
pub fn install(packages: &[String]) -> Result<(), AptError> {
    eprintln!("testkit: installing {}", packages.join(" "));
    if apt_install(packages)?.is_ok() {
        return Ok(());
    }
    let update = apt(&["update", "-q"])?;
    if let Err(output) = update {
        return Err(AptError::Failed {
            packages: packages.to_vec(),
            output,
        });
    }
    apt_install(packages)?.map_err(|output| AptError::Failed {
        packages: packages.to_vec(),
        output,
    })
}

/// The installed version of a package, if it is installed.
pub fn installed_version(package: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Abbrev}${Version}", package])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "ii " then the version, for an installed package.
    text.strip_prefix("ii ")
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn missing_packages(programs: &[Program]) -> Vec<String> {
    let mut missing: Vec<String> = programs
        .iter()
        .filter(|p| !have(p.command))
        .map(|p| p.package.to_string())
        .collect();
    missing.sort();
    missing.dedup();
    missing
}

fn apt_install(packages: &[String]) -> Result<Result<(), String>, AptError> {
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(packages.iter().map(String::as_str));
    apt(&args)
}

fn apt(args: &[&str]) -> Result<Result<(), String>, AptError> {
    let out = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()?;
    if out.status.success() {
        Ok(Ok(()))
    } else {
        Ok(Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// An exclusive `flock` on a file shared by every process of the harness.
struct InstallLock(std::fs::File);

impl InstallLock {
    fn take() -> std::io::Result<Self> {
        let path = std::env::temp_dir().join("cstor-testkit-apt.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        // SAFETY: flock on a descriptor we own; blocks until granted.
        #[allow(unsafe_code)]
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if locked != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(InstallLock(file))
    }
}

impl Drop for InstallLock {
    fn drop(&mut self) {
        // SAFETY: unlocking our own descriptor; closing it would too.
        #[allow(unsafe_code)]
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_in_path_is_found_and_a_made_up_one_is_not() {
        assert!(have("sh"));
        assert!(!have("cstor-testkit-no-such-program"));
        assert!(have("/bin/sh"));
    }

    #[test]
    fn nothing_is_missing_when_every_program_is_there() {
        let programs = [Program {
            command: "sh",
            package: "dash",
        }];
        assert!(missing_packages(&programs).is_empty());
        assert!(ensure(&programs).is_ok());
    }

    #[test]
    fn missing_programs_name_their_packages_once() {
        let programs = [
            Program {
                command: "cstor-testkit-missing-a",
                package: "pkg-x",
            },
            Program {
                command: "cstor-testkit-missing-b",
                package: "pkg-x",
            },
        ];
        assert_eq!(missing_packages(&programs), vec!["pkg-x".to_string()]);
    }

    #[test]
    fn an_installed_package_has_a_version_and_a_made_up_one_none() {
        assert!(installed_version("dpkg").is_some());
        assert_eq!(installed_version("cstor-testkit-no-such-package"), None);
    }
}
