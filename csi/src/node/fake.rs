//! A model of the host for unit tests: an open-iscsi initiator with a
//! target that admits one initiator name, block devices that appear on
//! login, filesystems that mkfs makes, and a mount table that `mount` /
//! `umount` change and `/proc/self/mountinfo` shows. The orchestration in
//! `ops` runs against it without root; every command it ran is recorded.
//! It answers only the command lines the node service builds; anything
//! else is exit 127 and fails the test that caused it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::host::{Cmd, Host, HostError, Output};
use super::mountinfo::MountEntry;

#[derive(Debug, Clone)]
pub struct Disk {
    pub major_minor: (u32, u32),
    /// `/dev/sdX`.
    pub node: PathBuf,
    pub fs: Option<String>,
    /// What the target says the LUN's size is.
    pub target_size: u64,
    /// What the kernel has seen (changes on login and rescan).
    pub seen_size: u64,
    pub fs_size: u64,
}

#[derive(Debug, Default)]
pub struct State {
    pub commands: Vec<String>,
    pub iface_initiator: Option<String>,
    pub allowed_initiator: String,
    pub node_records: BTreeMap<String, BTreeMap<String, String>>,
    /// iqn → disk (exists at the target; a device on login).
    pub luns: BTreeMap<String, Disk>,
    pub sessions: BTreeSet<String>,
    pub mounts: Vec<MountEntry>,
    pub files: HashMap<PathBuf, String>,
    pub dirs: BTreeSet<PathBuf>,
    /// Exit code of `e2fsck -p`.
    pub fsck_code: i32,
    /// Whether `mount -o remount,rw` is refused (aborted ext4 journal).
    pub refuse_remount_rw: bool,
    /// Login is ignored by the kernel (no device ever appears).
    pub device_never_appears: bool,
    /// `(n, size)`: the target grows every LUN to `size` just before the
    /// n-th rescan (a controller resize racing NodeExpandVolume).
    pub grow_at_rescan: Option<(u32, u64)>,
    pub rescans: u32,
    /// Commands whose line contains one of these fail with exit 1 (a
    /// step that breaks: mkfs, mount, logout …).
    pub fail_matching: Vec<String>,
    /// Calls of any [`Host`] method: zero means the host was not touched.
    pub host_calls: u64,
}

#[derive(Clone, Default)]
pub struct FakeHost(pub Arc<Mutex<State>>);

pub const PORTAL: &str = "10.0.2.2:3260";

impl FakeHost {
    /// A host whose target offers `iqn` (size `size`) to `initiator`.
    pub fn new(initiator: &str, luns: &[(&str, u64)]) -> Self {
        let host = FakeHost::default();
        {
            let mut s = host.state();
            s.allowed_initiator = initiator.to_owned();
            for (i, (iqn, size)) in luns.iter().enumerate() {
                let minor = u32::try_from(i * 16).unwrap();
                s.luns.insert(
                    (*iqn).to_owned(),
                    Disk {
                        major_minor: (8, minor),
                        node: PathBuf::from(format!("/dev/sd{}", char::from(b'b' + i as u8))),
                        fs: None,
                        target_size: *size,
                        seen_size: 0,
                        fs_size: 0,
                    },
                );
            }
        }
        host
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }

    /// The state, for a [`Host`] method: counts the call.
    fn touch(&self) -> std::sync::MutexGuard<'_, State> {
        let mut s = self.state();
        s.host_calls += 1;
        s
    }

    /// Makes every command whose line contains `what` fail.
    pub fn fail_commands_with(&self, what: &str) {
        self.state().fail_matching.push(what.to_owned());
    }

    /// Commands run since the last call.
    pub fn take_commands(&self) -> Vec<String> {
        std::mem::take(&mut self.state().commands)
    }

    /// Commands run since the last call that change something (not the
    /// `-o show` / blkid / stat / blockdev queries).
    pub fn take_changes(&self) -> Vec<String> {
        self.take_commands()
            .into_iter()
            .filter(|c| {
                !(c.contains("-o show")
                    || c.starts_with("blkid")
                    || c.starts_with("stat ")
                    || c.starts_with("blockdev")
                    || c.contains("discovery"))
            })
            .collect()
    }

    fn by_path(iqn: &str) -> PathBuf {
        PathBuf::from(format!("/dev/disk/by-path/ip-{PORTAL}-iscsi-{iqn}-lun-0"))
    }
}

fn disk_at<'a>(s: &'a mut State, path: &Path) -> Option<&'a mut Disk> {
    let sessions = s.sessions.clone();
    s.luns.iter_mut().find_map(|(iqn, d)| {
        (sessions.contains(iqn) && (FakeHost::by_path(iqn) == path || d.node == path)).then_some(d)
    })
}

fn opt<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn has(args: &[String], flag: &str) -> bool {
    args.iter().any(|a| a == flag)
}

const NOT_FOUND: i32 = 21;
const SESS_EXISTS: i32 = 15;
const MOUNT_FAIL: i32 = 32;

impl State {
    fn iscsiadm(&mut self, a: &[String]) -> Output {
        match opt(a, "-m") {
            Some("iface") => match opt(a, "-o") {
                Some("show") if self.iface_initiator.is_some() => Output::ok(""),
                Some("show") => Output::fail(NOT_FOUND, "no iface"),
                Some("new") => {
                    self.iface_initiator = Some(String::new());
                    Output::ok("")
                }
                Some("update") if opt(a, "-n") == Some("iface.initiatorname") => {
                    self.iface_initiator = opt(a, "-v").map(str::to_owned);
                    Output::ok("")
                }
                Some("update") => Output::ok(""),
                _ => Output::fail(127, "fake: iface op"),
            },
            Some("discovery") => {
                let list: Vec<String> = self
                    .luns
                    .keys()
                    .map(|iqn| format!("127.0.0.1:3260,1 {iqn}\n"))
                    .collect();
                Output::ok(&list.concat())
            }
            Some("node") => {
                let Some(iqn) = opt(a, "-T").map(str::to_owned) else {
                    return Output::fail(127, "fake: node without -T");
                };
                if opt(a, "-I") != Some(super::iscsi::IFACE) {
                    return Output::fail(127, "fake: node op without our iface");
                }
                if has(a, "--login") {
                    if self.sessions.contains(&iqn) {
                        return Output::fail(SESS_EXISTS, "session exists");
                    }
                    if !self.node_records.contains_key(&iqn) {
                        return Output::fail(NOT_FOUND, "no record");
                    }
                    if self.iface_initiator.as_deref() != Some(self.allowed_initiator.as_str()) {
                        return Output::fail(24, "authorization failure");
                    }
                    let Some(disk) = self.luns.get_mut(&iqn) else {
                        return Output::fail(19, "target not found");
                    };
                    disk.seen_size = disk.target_size;
                    self.sessions.insert(iqn);
                    return Output::ok("");
                }
                if has(a, "--logout") {
                    return if self.sessions.remove(&iqn) {
                        Output::ok("")
                    } else {
                        Output::fail(NOT_FOUND, "no session")
                    };
                }
                if has(a, "--rescan") {
                    self.rescans += 1;
                    if let Some((n, size)) = self.grow_at_rescan {
                        if self.rescans >= n {
                            self.luns.values_mut().for_each(|d| d.target_size = size);
                        }
                    }
                    return match self.luns.get_mut(&iqn) {
                        Some(d) if self.sessions.contains(&iqn) => {
                            d.seen_size = d.target_size;
                            Output::ok("")
                        }
                        _ => Output::fail(NOT_FOUND, "no session"),
                    };
                }
                match opt(a, "-o") {
                    Some("show") if self.node_records.contains_key(&iqn) => Output::ok(""),
                    Some("show") => Output::fail(NOT_FOUND, "no record"),
                    Some("new") => {
                        self.node_records.insert(iqn, BTreeMap::new());
                        Output::ok("")
                    }
                    Some("update") => match self.node_records.get_mut(&iqn) {
                        Some(r) => {
                            r.insert(
                                opt(a, "-n").unwrap_or_default().to_owned(),
                                opt(a, "-v").unwrap_or_default().to_owned(),
                            );
                            Output::ok("")
                        }
                        None => Output::fail(NOT_FOUND, "no record"),
                    },
                    Some("delete") => {
                        if self.node_records.remove(&iqn).is_some() {
                            Output::ok("")
                        } else {
                            Output::fail(NOT_FOUND, "no record")
                        }
                    }
                    _ => Output::fail(127, "fake: node op"),
                }
            }
            _ => Output::fail(127, "fake: iscsiadm mode"),
        }
    }

    fn mount(&mut self, a: &[String]) -> Output {
        let pos: Vec<&String> = {
            let mut skip = false;
            a.iter()
                .filter(|x| {
                    let keep = !skip && !x.starts_with('-');
                    skip = *x == "-t" || *x == "-o";
                    keep
                })
                .collect()
        };
        let options = opt(a, "-o").unwrap_or("");
        if options.starts_with("remount") {
            let Some(path) = pos.first().map(|p| PathBuf::from(p.as_str())) else {
                return Output::fail(1, "usage");
            };
            let Some(idx) = self.mounts.iter().rposition(|m| m.mount_point == path) else {
                return Output::fail(MOUNT_FAIL, "not mounted");
            };
            if options.contains("bind") {
                let ro = options.split(',').any(|o| o == "ro");
                self.mounts[idx].mount_options[0] = if ro { "ro" } else { "rw" }.into();
                return Output::ok("");
            }
            if options.split(',').any(|o| o == "rw") {
                if self.refuse_remount_rw {
                    return Output::fail(
                        MOUNT_FAIL,
                        "cannot remount read-write, is write-protected",
                    );
                }
                let dev = self.mounts[idx].device();
                for m in self.mounts.iter_mut().filter(|m| m.device() == dev) {
                    m.super_options[0] = "rw".into();
                }
                self.mounts[idx].mount_options[0] = "rw".into();
                return Output::ok("");
            }
            return Output::fail(127, "fake: remount");
        }
        let [src, dst] = pos.as_slice() else {
            return Output::fail(1, "usage");
        };
        let (src, dst) = (PathBuf::from(src.as_str()), PathBuf::from(dst.as_str()));
        if !self.dirs.contains(&dst) && !self.files.contains_key(&dst) {
            return Output::fail(MOUNT_FAIL, "mount point does not exist");
        }
        if has(a, "--bind") {
            let entry = if let Some(m) = self.mounts.iter().rev().find(|m| m.mount_point == src) {
                MountEntry {
                    mount_point: dst,
                    ..m.clone()
                }
            } else if let Some(d) = disk_at(self, &src) {
                MountEntry {
                    major: 0,
                    minor: 5,
                    root: format!("/{}", d.node.file_name().unwrap().to_string_lossy()),
                    mount_point: dst,
                    mount_options: vec!["rw".into()],
                    fs_type: "devtmpfs".into(),
                    source: "udev".into(),
                    super_options: vec!["rw".into()],
                }
            } else {
                return Output::fail(MOUNT_FAIL, "bind source missing");
            };
            self.mounts.push(entry);
            return Output::ok("");
        }
        let fs_type = opt(a, "-t").unwrap_or("").to_owned();
        let Some(disk) = disk_at(self, &src) else {
            return Output::fail(MOUNT_FAIL, "special device does not exist");
        };
        if disk.fs.as_deref() != Some(fs_type.as_str()) {
            return Output::fail(MOUNT_FAIL, "wrong fs type");
        }
        let ro = options.split(',').any(|o| o == "ro");
        let rw = if ro { "ro" } else { "rw" };
        let entry = MountEntry {
            major: disk.major_minor.0,
            minor: disk.major_minor.1,
            root: "/".into(),
            mount_point: dst,
            mount_options: vec![rw.into()],
            fs_type,
            source: disk.node.display().to_string(),
            super_options: vec![rw.into()],
        };
        self.mounts.push(entry);
        Output::ok("")
    }

    fn umount(&mut self, a: &[String]) -> Output {
        let path = PathBuf::from(a.first().map(String::as_str).unwrap_or(""));
        match self.mounts.iter().rposition(|m| m.mount_point == path) {
            Some(i) => {
                self.mounts.remove(i);
                Output::ok("")
            }
            None => Output::fail(MOUNT_FAIL, "not mounted"),
        }
    }

    fn disk_cmd(&mut self, program: &str, a: &[String]) -> Output {
        let dev = PathBuf::from(a.last().map(String::as_str).unwrap_or(""));
        let fsck_code = self.fsck_code;
        // xfs_growfs takes the mount point.
        let dev = if program == "xfs_growfs" {
            match self.mounts.iter().find(|m| m.mount_point == dev) {
                Some(m) => PathBuf::from(&m.source),
                None => return Output::fail(1, "not a mounted xfs"),
            }
        } else {
            dev
        };
        let Some(disk) = disk_at(self, &dev) else {
            return Output::fail(8, "no such device");
        };
        match program {
            "blkid" => match &disk.fs {
                None => Output::fail(2, ""),
                Some(t) => Output::ok(&format!("DEVNAME={}\nTYPE={t}\n", disk.node.display())),
            },
            "mkfs.ext4" | "mkfs.xfs" => {
                disk.fs = Some(program.trim_start_matches("mkfs.").to_owned());
                disk.fs_size = disk.seen_size;
                Output::ok("")
            }
            "e2fsck" => Output {
                code: Some(fsck_code),
                ..Output::default()
            },
            "blockdev" => Output::ok(&format!("{}\n", disk.seen_size)),
            "resize2fs" | "xfs_growfs" => {
                disk.fs_size = disk.seen_size;
                Output::ok("")
            }
            _ => Output::fail(127, "fake: disk command"),
        }
    }

    fn render_mountinfo(&self) -> String {
        let esc = |s: &str| s.replace(' ', "\\040");
        self.mounts
            .iter()
            .enumerate()
            .map(|(i, m)| {
                format!(
                    "{} 1 {}:{} {} {} {} - {} {} {}\n",
                    i + 100,
                    m.major,
                    m.minor,
                    esc(&m.root),
                    esc(&m.mount_point.display().to_string()),
                    m.mount_options.join(","),
                    m.fs_type,
                    esc(&m.source),
                    m.super_options.join(",")
                )
            })
            .collect()
    }
}

impl Host for FakeHost {
    fn run(&self, cmd: &Cmd) -> Result<Output, HostError> {
        let mut s = self.touch();
        let line = cmd.display();
        s.commands.push(line.clone());
        if s.fail_matching.iter().any(|f| line.contains(f.as_str())) {
            return Ok(Output::fail(1, "fake: told to fail"));
        }
        let a = &cmd.args;
        Ok(match cmd.program.as_str() {
            "iscsiadm" => s.iscsiadm(a),
            "mount" => s.mount(a),
            "umount" => s.umount(a),
            "stat" => Output::ok("4096 1000 600 500 256 200\n"),
            p @ ("blkid" | "mkfs.ext4" | "mkfs.xfs" | "e2fsck" | "blockdev" | "resize2fs"
            | "xfs_growfs") => s.disk_cmd(p, a),
            _ => Output::fail(127, "fake: unknown program"),
        })
    }

    fn mountinfo(&self) -> Result<String, HostError> {
        Ok(self.touch().render_mountinfo())
    }

    fn block_device(&self, path: &Path) -> Option<(u32, u32)> {
        let mut s = self.touch();
        if s.device_never_appears {
            return None;
        }
        disk_at(&mut s, path).map(|d| d.major_minor)
    }

    fn create_dir_all(&self, path: &Path) -> Result<(), HostError> {
        self.touch().dirs.insert(path.to_owned());
        Ok(())
    }

    fn create_file(&self, path: &Path) -> Result<(), HostError> {
        self.touch().files.entry(path.to_owned()).or_default();
        Ok(())
    }

    fn remove_path(&self, path: &Path) -> Result<(), HostError> {
        let mut s = self.touch();
        s.dirs.remove(path);
        s.files.remove(path);
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        let s = self.touch();
        s.dirs.contains(path) || s.files.contains_key(path)
    }

    fn read_file(&self, path: &Path) -> Result<Option<String>, HostError> {
        Ok(self.touch().files.get(path).cloned())
    }

    fn write_file(&self, path: &Path, contents: &str) -> Result<(), HostError> {
        self.touch()
            .files
            .insert(path.to_owned(), contents.to_owned());
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> Result<Vec<String>, HostError> {
        Ok(self
            .state()
            .files
            .keys()
            .filter(|p| p.parent() == Some(path))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn resolve(&self, path: &Path) -> Option<PathBuf> {
        let mut s = self.touch();
        disk_at(&mut s, path).map(|d| d.node.clone())
    }

    fn sleep(&self, _duration: Duration) {}
}

// ------------------------------------------------------------ test helpers

pub const NODE_INITIATOR: &str = "iqn.2016-09.com.openebs.cstor:node.n1";
pub const IQN: &str = "iqn.2016-09.com.openebs.cstor:pv1";
pub const STAGING: &str = "/var/lib/kubelet/plugins/staging/pv1";
pub const TARGET: &str = "/var/lib/kubelet/pods/p1/volumes/pv1/mount";
pub const GIB: u64 = 1 << 30;

/// Node operations over a fresh fake host with one 1 GiB LUN.
pub fn setup() -> (super::ops::NodeOps<FakeHost>, FakeHost) {
    let host = FakeHost::new(NODE_INITIATOR, &[(IQN, GIB)]);
    let ops = super::ops::NodeOps::new(
        host.clone(),
        NODE_INITIATOR.to_owned(),
        PathBuf::from("/var/lib/cstor-csi"),
        Duration::from_secs(1),
    );
    host.state().dirs.insert(PathBuf::from(STAGING));
    (ops, host)
}

/// Another filesystem (device 9:1, not any LUN's) mounted at `at`.
pub fn foreign_mount(at: &str) -> MountEntry {
    MountEntry {
        major: 9,
        minor: 1,
        root: "/".into(),
        mount_point: PathBuf::from(at),
        mount_options: vec!["rw".into()],
        fs_type: "ext4".into(),
        source: "/dev/md1".into(),
        super_options: vec!["rw".into()],
    }
}

pub fn context() -> HashMap<String, String> {
    [("portal", PORTAL), ("iqn", IQN), ("lun", "0")]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

pub fn stage_req(fs: &str, flags: &[&str]) -> super::stage::StageRequest {
    super::stage::StageRequest {
        volume_id: "pv1".into(),
        staging_path: STAGING.into(),
        access: super::stage::AccessRequest::Mount {
            fs_type: fs.into(),
            flags: flags.iter().map(|f| (*f).to_owned()).collect(),
        },
        context: context(),
        secrets: HashMap::new(),
    }
}

pub fn publish_req(read_only: bool) -> super::publish::PublishRequest {
    super::publish::PublishRequest {
        volume_id: "pv1".into(),
        staging_path: STAGING.into(),
        target_path: TARGET.into(),
        block: false,
        read_only,
    }
}
