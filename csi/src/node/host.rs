//! The host, as the node service sees it: commands to run and a handful of
//! file operations. Everything the node service does to the machine goes
//! through [`Host`], so the orchestration in [`super::ops`] is unit-tested
//! against a model of the host (`super::fake`) without root, and runs for
//! real through [`RealHost`].
//!
//! Why commands (`mount`, `umount`, `stat -f`, `iscsiadm`, …) rather than
//! syscalls: open-iscsi has no library interface; `mount(8)` turns option
//! strings into flags plus fs data exactly as administrators expect (and
//! handles bind + remount-ro in two steps); and a `statvfs` on a filesystem
//! whose iSCSI session is gone blocks in D state, which in a child process
//! costs us a bounded wait (`COMMAND_TIMEOUT`) instead of a stuck gRPC worker.
//! Kubelet's own mount library makes the same choice.
//!
//! Secrets on command lines: `iscsiadm` takes CHAP passwords only as
//! arguments, so they are briefly visible in `/proc/PID/cmdline` to root on
//! the node; [`Cmd`]'s `Debug` and every log line redact them.

use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long any one command may run before we stop waiting for it.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Captured output kept per stream (longer output is cut).
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// A command line. Arguments marked secret are shown as `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Cmd {
    pub program: String,
    pub args: Vec<String>,
    /// Indexes into `args` never to print.
    pub secret_args: Vec<usize>,
}

impl Cmd {
    pub fn new(program: &str) -> Self {
        Cmd {
            program: program.to_owned(),
            args: Vec::new(),
            secret_args: Vec::new(),
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An argument that must never be logged (a CHAP secret).
    pub fn secret_arg(mut self, arg: impl Into<String>) -> Self {
        self.secret_args.push(self.args.len());
        self.args.push(arg.into());
        self
    }

    /// The command line for logs and error messages.
    pub fn display(&self) -> String {
        let mut s = self.program.clone();
        for (i, a) in self.args.iter().enumerate() {
            s.push(' ');
            s.push_str(if self.secret_args.contains(&i) {
                "<redacted>"
            } else {
                a
            });
        }
        s
    }
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display())
    }
}

/// What a finished command left behind.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Output {
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(stdout: &str) -> Self {
        Output {
            code: Some(0),
            stdout: stdout.to_owned(),
            stderr: String::new(),
        }
    }

    pub fn fail(code: i32, stderr: &str) -> Self {
        Output {
            code: Some(code),
            stdout: String::new(),
            stderr: stderr.to_owned(),
        }
    }

    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot run {cmd}: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("{cmd} did not finish within {timeout_s} s")]
    Timeout { cmd: String, timeout_s: u64 },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        source: std::io::Error,
    },
}

impl HostError {
    pub fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        HostError::Io {
            op,
            path: path.display().to_string(),
            source,
        }
    }
}

/// The operations the node service performs on its host.
pub trait Host: Send + Sync + 'static {
    /// Runs a command to completion (bounded by [`COMMAND_TIMEOUT`]). A
    /// non-zero exit is an `Ok` output; only failing to run is an error.
    fn run(&self, cmd: &Cmd) -> Result<Output, HostError>;
    /// The text of `/proc/self/mountinfo`.
    fn mountinfo(&self) -> Result<String, HostError>;
    /// Device number of the block device at `path` (following symlinks),
    /// or `None` when there is none (yet).
    fn block_device(&self, path: &Path) -> Option<(u32, u32)>;
    /// `mkdir -p`.
    fn create_dir_all(&self, path: &Path) -> Result<(), HostError>;
    /// Creates an empty regular file (a bind-mount point for a block
    /// volume) if nothing exists at `path`.
    fn create_file(&self, path: &Path) -> Result<(), HostError>;
    /// Removes an empty directory or a file; absent is fine.
    fn remove_path(&self, path: &Path) -> Result<(), HostError>;
    /// Whether anything exists at `path`.
    fn exists(&self, path: &Path) -> bool;
    /// A small text file, `None` if absent.
    fn read_file(&self, path: &Path) -> Result<Option<String>, HostError>;
    /// Writes a small text file atomically (temp file, fsync, rename).
    fn write_file(&self, path: &Path, contents: &str) -> Result<(), HostError>;
    /// Names of the entries of a directory; an absent directory is empty.
    fn list_dir(&self, path: &Path) -> Result<Vec<String>, HostError>;
    /// `path` with every symlink resolved, if it exists.
    fn resolve(&self, path: &Path) -> Option<PathBuf>;
    fn sleep(&self, duration: Duration);
}

/// The real machine.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealHost;

impl Host for RealHost {
    fn run(&self, cmd: &Cmd) -> Result<Output, HostError> {
        let shown = cmd.display();
        tracing::debug!(cmd = %shown, "running");
        let mut child = Command::new(&cmd.program)
            .args(&cmd.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| HostError::Spawn {
                cmd: shown.clone(),
                source,
            })?;
        // Drain both pipes on threads so a chatty child cannot block on a
        // full pipe while we wait for it.
        let stdout = child.stdout.take().map(drain);
        let stderr = child.stderr.take().map(drain);
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    // A child stuck in D state may never be reaped; do not
                    // wait for it (its pipes' threads end when it does).
                    return Err(HostError::Timeout {
                        cmd: shown,
                        timeout_s: COMMAND_TIMEOUT.as_secs(),
                    });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(source) => return Err(HostError::Spawn { cmd: shown, source }),
            }
        };
        let join = |h: Option<std::thread::JoinHandle<String>>| {
            h.and_then(|h| h.join().ok()).unwrap_or_default()
        };
        Ok(Output {
            code: status.code(),
            stdout: join(stdout),
            stderr: join(stderr),
        })
    }

    fn mountinfo(&self) -> Result<String, HostError> {
        let path = Path::new("/proc/self/mountinfo");
        std::fs::read_to_string(path).map_err(|e| HostError::io("read", path, e))
    }

    fn block_device(&self, path: &Path) -> Option<(u32, u32)> {
        let meta = std::fs::metadata(path).ok()?;
        if !meta.file_type().is_block_device() {
            return None;
        }
        let rdev = meta.rdev();
        // glibc's gnu_dev_major/minor encoding.
        let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
        let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
        Some((u32::try_from(major).ok()?, u32::try_from(minor).ok()?))
    }

    fn create_dir_all(&self, path: &Path) -> Result<(), HostError> {
        std::fs::create_dir_all(path).map_err(|e| HostError::io("mkdir", path, e))
    }

    fn create_file(&self, path: &Path) -> Result<(), HostError> {
        if let Some(parent) = path.parent() {
            self.create_dir_all(parent)?;
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(HostError::io("create", path, e)),
        }
    }

    fn remove_path(&self, path: &Path) -> Result<(), HostError> {
        let result = match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => Err(e),
            Ok(m) if m.is_dir() => std::fs::remove_dir(path),
            Ok(_) => std::fs::remove_file(path),
        };
        match result {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(HostError::io("remove", path, e))
            }
            _ => Ok(()),
        }
    }

    fn exists(&self, path: &Path) -> bool {
        std::fs::symlink_metadata(path).is_ok()
    }

    fn read_file(&self, path: &Path) -> Result<Option<String>, HostError> {
        match std::fs::read_to_string(path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(HostError::io("read", path, e)),
        }
    }

    fn write_file(&self, path: &Path, contents: &str) -> Result<(), HostError> {
        use std::io::Write;
        let dir = path.parent().unwrap_or(Path::new("."));
        self.create_dir_all(dir)?;
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(contents.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| HostError::io("write", path, e))
    }

    fn list_dir(&self, path: &Path) -> Result<Vec<String>, HostError> {
        let entries = match std::fs::read_dir(path) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(HostError::io("list", path, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| HostError::io("list", path, e))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn resolve(&self, path: &Path) -> Option<PathBuf> {
        std::fs::canonicalize(path).ok()
    }

    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration);
    }
}

fn drain<R: Read + Send + 'static>(reader: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = reader
            .take(u64::try_from(MAX_OUTPUT_BYTES).unwrap_or(u64::MAX))
            .read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_arguments_never_show_in_display_or_debug() {
        let cmd = Cmd::new("iscsiadm")
            .args(["-n", "node.session.auth.password", "-v"])
            .secret_arg("hunter2hunter2");
        assert!(!cmd.display().contains("hunter2"));
        assert!(!format!("{cmd:?}").contains("hunter2"));
        assert_eq!(cmd.args.last().unwrap(), "hunter2hunter2");
    }

    #[test]
    fn real_host_captures_exit_code_and_output() {
        let out = RealHost
            .run(&Cmd::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]))
            .unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
        assert!(matches!(
            RealHost.run(&Cmd::new("/nonexistent/tool")),
            Err(HostError::Spawn { .. })
        ));
    }

    #[test]
    fn real_host_files_are_written_atomically_and_removed_idempotently() {
        let dir = std::env::temp_dir().join(format!("cstor-csi-host-{}", std::process::id()));
        let f = dir.join("a/b/state");
        RealHost.write_file(&f, "x=1\n").unwrap();
        assert_eq!(RealHost.read_file(&f).unwrap().as_deref(), Some("x=1\n"));
        RealHost.remove_path(&f).unwrap();
        RealHost.remove_path(&f).unwrap();
        assert_eq!(RealHost.read_file(&f).unwrap(), None);
        let file = dir.join("c/blockfile");
        RealHost.create_file(&file).unwrap();
        RealHost.create_file(&file).unwrap();
        assert!(RealHost.exists(&file));
        assert_eq!(RealHost.block_device(&file), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn real_host_block_device_reads_the_device_number() {
        // /dev/loop-control is a char device; /dev/null too: neither is a block device.
        assert_eq!(RealHost.block_device(Path::new("/dev/null")), None);
        if let Ok(entries) = std::fs::read_dir("/sys/dev/block") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(dev) = std::fs::read_link(e.path())
                    .ok()
                    .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()))
                else {
                    continue;
                };
                let path = Path::new("/dev").join(&dev);
                if let Some((maj, min)) = RealHost.block_device(&path) {
                    assert_eq!(format!("{maj}:{min}"), name, "{}", path.display());
                    return;
                }
            }
        }
        cstor_testkit::skip(
            cstor_testkit::Need::BlockDevice,
            "no block device under /dev to compare with /sys/dev/block",
        );
    }
}
