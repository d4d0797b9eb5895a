//! What the VM boots: Debian's kernel and an initramfs assembled from the
//! host's own binaries, cached.
//!
//! Cache layout (under [`super::host::cache_dir`]):
//!
//! - `kernel/PACKAGE_VERSION/`: the unpacked `linux-image-*-amd64` package
//!   (from `apt-get download`, `dpkg-deb -x`; `depmod` writes its
//!   `modules.dep`), plus `vmlinux`, the uncompressed kernel that QEMU
//!   boots directly (PVH), which spares the guest decompressing it (seconds
//!   under TCG). A new package version replaces it.
//! - `initramfs/base-HASH.cpio`: busybox, open-iscsi, e2fsprogs, xfsprogs,
//!   util-linux's mount tools, each with the shared libraries `ldd` lists,
//!   the kernel modules in load order, the guest scripts (`testkit/vm/`);
//!   HASH covers every input (see [`Archive::fingerprint`]), so an upgraded
//!   package or an edited guest script makes a new one.
//! - `initramfs/fio-HASH.cpio`: fio and the libraries the base lacks, a
//!   second archive appended when a run wants fio.
//! - `build.lock`: held while any of the above is checked or built, so
//!   parallel tests share the cache.
//!
//! Per run, a small third archive (the run's parameters, guest script,
//! extra binaries) is appended; the kernel unpacks concatenated archives in
//! order.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::cpio::Archive;
use super::host::{self, Lock};
use super::modules::ModuleDeps;
use super::VmError;

/// The guest's files, from `testkit/vm/`.
pub const INIT: &str = include_str!("../../vm/init.sh");
const BUILTIN_TEST: &str = include_str!("../../vm/e2e-test.sh");
const DISK_LINKS: &str = include_str!("../../vm/e2e-disk-links.sh");
const SIGNAL: &str = include_str!("../../vm/e2e-signal.sh");
const ISCSID_CONF: &str = include_str!("../../vm/iscsid.conf");

/// Where the built-in test lives in the guest.
pub const BUILTIN_TEST_PATH: &str = "usr/lib/cstor-vm/e2e-test.sh";

/// Bumped when the image's layout changes in a way its inputs do not show.
const FORMAT: &str = "cstor-vm image 1";

/// Modules the guest needs; built-in ones are skipped.
const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "iscsi_tcp",
    "sd_mod",
    "ext4",
    "crc32c_generic",
    "xfs",
];
/// Modules loaded if the kernel has them (faster crc32c where the CPU can).
const OPTIONAL_MODULES: &[&str] = &["crc32c_intel"];

/// Host tools copied into the base image, with their libraries.
const TOOLS: &[&str] = &[
    "iscsid",
    "iscsiadm",
    "mke2fs",
    "e2fsck",
    "resize2fs",
    "tune2fs",
    "dumpe2fs",
    "mkfs.xfs",
    "xfs_growfs",
    "xfs_repair",
    "xfs_io",
    "xfs_db",
    "xfs_spaceman",
    "xfs_info",
    "fsck.xfs",
    "mount",
    "umount",
    "findmnt",
    "lsblk",
    "blkid",
    "blockdev",
    "wipefs",
    "fsck",
];

/// The kernel package, unpacked.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `PACKAGE=VERSION`.
    pub package: String,
    /// The module directory's name (`6.1.0-48-amd64`).
    pub release: String,
    /// What QEMU's `-kernel` gets: `vmlinux` if it could be extracted, else
    /// the package's `vmlinuz`.
    pub image: PathBuf,
    root: PathBuf,
}

/// The cached images of one run, with the build lock still held (so no
/// other process replaces them until the run's initrd is composed).
pub struct Images {
    /// The kernel.
    pub kernel: Kernel,
    /// The base initramfs.
    pub base: PathBuf,
    /// The fio archive, when asked for.
    pub fio: Option<PathBuf>,
    /// The base archive's plan: which paths it holds.
    base_plan: Archive,
    _lock: Lock,
}

impl Images {
    /// Whether the base image has `path`.
    pub fn base_has(&self, path: &str) -> bool {
        self.base_plan.contains(path)
    }

    /// Writes the run's initrd to `out`: base, fio (if any), then `layer`.
    pub fn compose(&self, layer: &mut Archive, out: &Path) -> Result<u64, VmError> {
        let file = std::fs::File::create(out).map_err(VmError::io("create the initrd", out))?;
        let mut w = std::io::BufWriter::new(file);
        let mut n = 0;
        for part in std::iter::once(&self.base).chain(self.fio.as_ref()) {
            let mut f = std::fs::File::open(part).map_err(VmError::io("read", part))?;
            n += std::io::copy(&mut f, &mut w).map_err(VmError::io("write the initrd", out))?;
        }
        n += layer
            .write(&mut w)
            .map_err(VmError::io("write the run's archive", out))?;
        w.flush().map_err(VmError::io("write the initrd", out))?;
        Ok(n)
    }
}

/// Checks (and builds what is missing of) the kernel and the images.
pub fn build(cache: &Path, fio: bool) -> Result<Images, VmError> {
    let lock = Lock::take(&cache.join("build.lock"), "another VM image build")?;
    let kernel = kernel(&cache.join("kernel"))?;
    let dir = cache.join("initramfs");
    std::fs::create_dir_all(&dir).map_err(VmError::io("create", &dir))?;
    let mut base_plan = base_plan(&kernel)?;
    let base_hash = base_plan.fingerprint();
    let base = dir.join(format!("base-{base_hash:016x}.cpio"));
    if !base.exists() {
        let started = std::time::Instant::now();
        write_atomically(&mut base_plan, &base)?;
        eprintln!(
            "[cstor-vm] built {} ({} entries, {:.1} s)",
            base.display(),
            base_plan.len(),
            started.elapsed().as_secs_f64()
        );
        remove_others(&dir, "base-", &base);
    }
    let fio = if fio {
        let mut plan = Archive::new();
        let tool = find_tool("fio")?;
        add_executable(&mut plan, &tool, &guest_path_of_tool(&tool, "fio"), &|p| {
            base_plan.contains(p)
        })?;
        plan.bytes("etc/cstor-vm/base", format!("{base_hash:016x}"), 0o644);
        let path = dir.join(format!("fio-{:016x}.cpio", plan.fingerprint()));
        if !path.exists() {
            write_atomically(&mut plan, &path)?;
            remove_others(&dir, "fio-", &path);
        }
        Some(path)
    } else {
        None
    };
    Ok(Images {
        kernel,
        base,
        fio,
        base_plan,
        _lock: lock,
    })
}

fn write_atomically(archive: &mut Archive, path: &Path) -> Result<(), VmError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let file = std::fs::File::create(&tmp).map_err(VmError::io("create", &tmp))?;
    let mut w = std::io::BufWriter::new(file);
    archive
        .write(&mut w)
        .and_then(|_| w.flush())
        .map_err(VmError::io("write the initramfs", &tmp))?;
    drop(w);
    std::fs::rename(&tmp, path).map_err(VmError::io("rename into place", path))
}

/// Removes the files in `dir` named `prefix…` other than `keep` (older
/// builds; the build lock is held, so no run reads them).
fn remove_others(dir: &Path, prefix: &str, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p != keep && e.file_name().to_string_lossy().starts_with(prefix) {
            let _ = std::fs::remove_file(p);
        }
    }
}

// ------------------------------------------------------------------ kernel

/// The kernel package `linux-image-amd64` depends on, and its candidate
/// version, from apt's package lists (updated once if they lack it).
fn kernel_package() -> Result<(String, String), VmError> {
    let lookup = || -> Result<(String, String), VmError> {
        let deps = host::run(
            "find Debian's kernel package",
            Command::new("apt-cache").args(["depends", "linux-image-amd64"]),
        )?;
        let package = deps
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends:"))
            .map(str::trim)
            .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
            .ok_or_else(|| VmError::Kernel(format!("linux-image-amd64 names no kernel: {deps}")))?
            .to_string();
        let policy = host::run(
            "find the kernel's version",
            Command::new("apt-cache").args(["policy", &package]),
        )?;
        let version = policy
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Candidate:"))
            .map(str::trim)
            .find(|v| !v.is_empty() && *v != "(none)")
            .ok_or_else(|| VmError::Kernel(format!("no candidate version of {package}")))?
            .to_string();
        Ok((package, version))
    };
    match lookup() {
        Ok(found) => Ok(found),
        Err(_) if crate::is_root() => {
            host::run(
                "apt-get update (no kernel package known)",
                Command::new("apt-get").args(["update", "-q"]),
            )?;
            lookup()
        }
        Err(e) => Err(e),
    }
}

fn kernel(dir: &Path) -> Result<Kernel, VmError> {
    std::fs::create_dir_all(dir).map_err(VmError::io("create", dir))?;
    let root = match kernel_package() {
        Ok((package, version)) => {
            let name = format!("{package}_{version}").replace([':', '/'], "%");
            let root = dir.join(name);
            if !root.join(".complete").exists() {
                fetch_kernel(dir, &root, &package, &version)?;
            }
            root
        }
        // Offline, or no apt: any kernel unpacked before will do.
        Err(e) => std::fs::read_dir(dir)
            .ok()
            .and_then(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .find(|p| p.join(".complete").exists())
            })
            .ok_or(e)?,
    };
    let package = std::fs::read_to_string(root.join(".complete"))
        .map_err(VmError::io("read", &root.join(".complete")))?
        .trim()
        .to_string();
    let release = module_release(&root)?;
    let vmlinux = root.join("vmlinux");
    let image = if vmlinux.exists() {
        vmlinux
    } else {
        root.join(format!("boot/vmlinuz-{release}"))
    };
    Ok(Kernel {
        package,
        release,
        image,
        root,
    })
}

fn module_release(root: &Path) -> Result<String, VmError> {
    let modules = root.join("lib/modules");
    let mut releases: Vec<String> = std::fs::read_dir(&modules)
        .map_err(VmError::io("list the kernel's modules", &modules))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    releases.sort();
    match releases.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(VmError::Kernel(format!(
            "{} holds {releases:?}, not one kernel release",
            modules.display()
        ))),
    }
}

fn fetch_kernel(dir: &Path, root: &Path, package: &str, version: &str) -> Result<(), VmError> {
    let started = std::time::Instant::now();
    eprintln!("[cstor-vm] fetching {package} {version} (apt-get download)");
    let dl = dir.join(format!(".download-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dl);
    std::fs::create_dir_all(&dl).map_err(VmError::io("create", &dl))?;
    host::run(
        "download the kernel package",
        Command::new("apt-get")
            .args(["download", "-q", &format!("{package}={version}")])
            .current_dir(&dl),
    )?;
    let deb = std::fs::read_dir(&dl)
        .map_err(VmError::io("list", &dl))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| {
            VmError::Kernel(format!("apt-get download left no .deb in {}", dl.display()))
        })?;
    let _ = std::fs::remove_dir_all(root);
    host::run(
        "unpack the kernel package",
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(root),
    )?;
    let _ = std::fs::remove_dir_all(root.join("usr/share"));
    let _ = std::fs::remove_dir_all(&dl);
    let release = module_release(root)?;
    host::run(
        "index the kernel's modules",
        Command::new("depmod").arg("-b").arg(root).arg(&release),
    )?;
    let vmlinuz = root.join(format!("boot/vmlinuz-{release}"));
    match extract_vmlinux(&vmlinuz, &root.join("vmlinux")) {
        Ok(true) => {}
        Ok(false) => eprintln!(
            "[cstor-vm] no xz payload in {}: booting it as is",
            vmlinuz.display()
        ),
        Err(e) => eprintln!("[cstor-vm] cannot extract vmlinux ({e}): booting vmlinuz"),
    }
    std::fs::write(root.join(".complete"), format!("{package}={version}\n"))
        .map_err(VmError::io("write", &root.join(".complete")))?;
    // Older kernels go.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path() != root && e.path().is_dir() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    eprintln!(
        "[cstor-vm] kernel {release} ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The uncompressed kernel inside a bzImage whose payload is xz (Debian's):
/// the xz stream from its magic on, through `xz -d`. Ok(false) if there is
/// no xz payload.
fn extract_vmlinux(vmlinuz: &Path, out: &Path) -> Result<bool, VmError> {
    const MAGIC: &[u8] = b"\xfd7zXZ\x00";
    let data = std::fs::read(vmlinuz).map_err(VmError::io("read", vmlinuz))?;
    let Some(at) = data.windows(MAGIC.len()).position(|w| w == MAGIC) else {
        return Ok(false);
    };
    let xz = out.with_extension("xz.tmp");
    let tmp = out.with_extension("tmp");
    std::fs::write(&xz, &data[at..]).map_err(VmError::io("write", &xz))?;
    let input = std::fs::File::open(&xz).map_err(VmError::io("read", &xz))?;
    let output = std::fs::File::create(&tmp).map_err(VmError::io("create", &tmp))?;
    let status = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(input)
        .stdout(output)
        .stderr(Stdio::null())
        .status()
        .map_err(VmError::io("run xz", &xz))?;
    let _ = std::fs::remove_file(&xz);
    let elf = std::fs::File::open(&tmp)
        .and_then(|mut f| {
            let mut head = [0u8; 4];
            std::io::Read::read_exact(&mut f, &mut head).map(|_| head)
        })
        .is_ok_and(|h| &h == b"\x7fELF");
    if !status.success() || !elf {
        let _ = std::fs::remove_file(&tmp);
        return Err(VmError::Kernel(format!(
            "xz -d of {} ({status}) gave no ELF kernel",
            vmlinuz.display()
        )));
    }
    std::fs::rename(&tmp, out).map_err(VmError::io("rename", out))?;
    Ok(true)
}

// ------------------------------------------------------------------ initramfs

/// `/usr/sbin/x` for a tool found in an sbin directory, else `/usr/bin/x`.
fn guest_path_of_tool(host: &Path, name: &str) -> String {
    if host.parent().is_some_and(|d| d.ends_with("sbin")) {
        format!("usr/sbin/{name}")
    } else {
        format!("usr/bin/{name}")
    }
}

/// A host program by name, in the system directories.
pub fn find_tool(name: &str) -> Result<PathBuf, VmError> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| VmError::Setup(format!("{name} is not installed on the host")))
}

/// Where a library `ldd` found at `path` goes in the guest: the same place
/// for the system's directories (with `/lib` read as `/usr/lib`: the guest
/// is merged-/usr), else `/usr/local/lib` (on the guest's library path).
pub fn guest_library_path(path: &str) -> String {
    let name = path.rsplit('/').next().unwrap_or(path);
    if path.starts_with("/usr/lib/") || path.starts_with("/usr/lib64/") {
        return path[1..].to_string();
    }
    if path.starts_with("/lib/") || path.starts_with("/lib64/") {
        return format!("usr{path}");
    }
    format!("usr/local/lib/{name}")
}

/// The shared libraries `ldd` lists for `exe` (the path it found each at,
/// the dynamic loader included); none for a static binary.
pub fn parse_ldd(output: &str) -> Result<Vec<String>, String> {
    let mut libs = Vec::new();
    for line in output.lines() {
        let line = line.trim();
        if let Some((name, found)) = line.split_once("=>") {
            let found = found.trim();
            if found.starts_with("not found") {
                return Err(format!("{} not found", name.trim()));
            }
            if let Some(path) = found
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/'))
            {
                libs.push(path.to_string());
            }
        } else if let Some(path) = line
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        {
            libs.push(path.to_string());
        }
    }
    Ok(libs)
}

/// Adds the host executable `exe` at `dest` and every library it needs that
/// `skip` does not say the guest has already.
pub fn add_executable(
    archive: &mut Archive,
    exe: &Path,
    dest: &str,
    skip: &dyn Fn(&str) -> bool,
) -> Result<(), VmError> {
    let script = std::fs::File::open(exe)
        .and_then(|mut f| {
            let mut head = [0u8; 2];
            std::io::Read::read_exact(&mut f, &mut head).map(|_| head)
        })
        .map_err(VmError::io("read", exe))?
        == *b"#!";
    archive.host_file(dest, exe, 0o755);
    if script {
        return Ok(());
    }
    let out = Command::new("ldd")
        .arg(exe)
        .stdin(Stdio::null())
        .output()
        .map_err(VmError::io("run ldd on", exe))?;
    // ldd fails for a static executable ("not a dynamic executable"): no
    // libraries to copy.
    if !out.status.success() {
        return Ok(());
    }
    let libs =
        parse_ldd(&String::from_utf8_lossy(&out.stdout)).map_err(|reason| VmError::AddBin {
            path: exe.to_path_buf(),
            reason,
        })?;
    for lib in libs {
        let dest = guest_library_path(&lib);
        if skip(&dest) || archive.contains(&dest) {
            continue;
        }
        let real = std::fs::canonicalize(&lib).map_err(VmError::io("resolve", Path::new(&lib)))?;
        archive.host_file(&dest, &real, 0o755);
    }
    Ok(())
}

/// The base image's contents (nothing read yet).
fn base_plan(kernel: &Kernel) -> Result<Archive, VmError> {
    let mut a = Archive::new();
    a.bytes("etc/cstor-vm/format", FORMAT, 0o644);
    a.bytes("etc/cstor-vm/kernel", kernel.package.as_bytes(), 0o644);
    for d in [
        "proc",
        "sys",
        "dev",
        "run",
        "mnt",
        "root",
        "etc/iscsi/nodes",
        "etc/iscsi/send_targets",
        "etc/iscsi/ifaces",
        "var/lib/iscsi",
        "usr/local/bin",
        "usr/local/sbin",
        "usr/local/lib",
    ] {
        a.dir(d, 0o755);
    }
    a.dir("tmp", 0o1777);
    a.dir("var/tmp", 0o1777);
    a.char_dev("dev/console", 0o600, 5, 1);
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
        ("var/run", "../run"),
        ("var/lock", "../run/lock"),
        ("etc/mtab", "../proc/self/mounts"),
    ] {
        a.symlink(link, target);
    }

    // busybox and its applets; the real tools added below replace some.
    let busybox = find_tool("busybox")?;
    add_executable(&mut a, &busybox, "usr/bin/busybox", &|_| false)?;
    let applets = host::run(
        "list busybox's applets",
        Command::new(&busybox).arg("--list-full"),
    )?;
    for applet in applets.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let name = applet.rsplit('/').next().unwrap_or(applet);
        if matches!(name, "init" | "linuxrc" | "busybox") {
            continue;
        }
        let dest = if applet.contains("sbin/") {
            format!("usr/sbin/{name}")
        } else {
            format!("usr/bin/{name}")
        };
        a.symlink(&dest, "/usr/bin/busybox");
    }
    for tool in TOOLS {
        let host = find_tool(tool)?;
        add_executable(&mut a, &host, &guest_path_of_tool(&host, tool), &|_| false)?;
    }
    for kind in ["ext2", "ext3", "ext4"] {
        a.symlink(&format!("usr/sbin/mkfs.{kind}"), "mke2fs");
        a.symlink(&format!("usr/sbin/fsck.{kind}"), "e2fsck");
    }

    // The guest's scripts and configuration.
    a.bytes("init", INIT, 0o755);
    a.bytes(BUILTIN_TEST_PATH, BUILTIN_TEST, 0o755);
    a.bytes("usr/sbin/e2e-disk-links", DISK_LINKS, 0o755);
    a.bytes("usr/sbin/e2e-signal", SIGNAL, 0o755);
    a.bytes("etc/iscsi/iscsid.conf", ISCSID_CONF, 0o600);
    a.bytes(
        "etc/iscsi/initiatorname.iscsi",
        "InitiatorName=iqn.2004-10.com.debian:cstor-vm\n",
        0o644,
    );
    if Path::new("/etc/mke2fs.conf").exists() {
        a.host_file("etc/mke2fs.conf", Path::new("/etc/mke2fs.conf"), 0o644);
    }
    a.bytes("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644);
    a.bytes("etc/group", "root:x:0:\n", 0o644);
    a.bytes("etc/hostname", "cstor-vm\n", 0o644);
    a.bytes("etc/fstab", "", 0o644);

    // Kernel modules, in load order.
    let mods = kernel.root.join("lib/modules").join(&kernel.release);
    let read = |name: &str| {
        let p = mods.join(name);
        std::fs::read_to_string(&p).map_err(VmError::io("read", &p))
    };
    let deps = ModuleDeps::parse(&read("modules.dep")?, &read("modules.builtin")?);
    let mut order = deps.load_order(MODULES).map_err(VmError::Module)?;
    for optional in OPTIONAL_MODULES {
        if let Ok(more) = deps.load_order(&[optional]) {
            order.extend(more); // duplicates are dropped below
        }
    }
    let mut list = String::new();
    let mut seen = HashSet::new();
    for rel in order {
        if !seen.insert(rel.clone()) {
            continue;
        }
        if !(rel.ends_with(".ko")) {
            return Err(VmError::Kernel(format!(
                "{rel}: compressed modules are not supported (busybox insmod)"
            )));
        }
        let guest = format!("usr/lib/modules/{}/{rel}", kernel.release);
        a.host_file(&guest, &mods.join(&rel), 0o644);
        list.push('/');
        list.push_str(&guest);
        list.push('\n');
    }
    a.bytes("etc/cstor-vm/modules", list, 0o644);
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_every_library_and_the_loader() {
        let out = "\tlinux-vdso.so.1 (0x00007ffc)\n\
                   \tlibiscsi.so.7 => /lib/x86_64-linux-gnu/libiscsi.so.7 (0x00007f)\n\
                   \tlibc.so.6 => /usr/lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(out).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libiscsi.so.7",
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
        assert_eq!(
            parse_ldd("\tlibfoo.so.1 => not found\n").unwrap_err(),
            "libfoo.so.1 not found"
        );
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
    }

    #[test]
    fn libraries_land_in_the_merged_usr_tree_or_usr_local_lib() {
        assert_eq!(
            guest_library_path("/lib/x86_64-linux-gnu/libc.so.6"),
            "usr/lib/x86_64-linux-gnu/libc.so.6"
        );
        assert_eq!(
            guest_library_path("/lib64/ld-linux-x86-64.so.2"),
            "usr/lib64/ld-linux-x86-64.so.2"
        );
        assert_eq!(
            guest_library_path("/usr/lib/x86_64-linux-gnu/ceph/libceph-common.so.2"),
            "usr/lib/x86_64-linux-gnu/ceph/libceph-common.so.2"
        );
        assert_eq!(
            guest_library_path("/work/build/debug/deps/libx.so"),
            "usr/local/lib/libx.so"
        );
    }

    #[test]
    fn tools_go_to_sbin_or_bin_as_on_the_host() {
        assert_eq!(
            guest_path_of_tool(Path::new("/usr/sbin/iscsiadm"), "iscsiadm"),
            "usr/sbin/iscsiadm"
        );
        assert_eq!(
            guest_path_of_tool(Path::new("/bin/mount"), "mount"),
            "usr/bin/mount"
        );
    }
}
