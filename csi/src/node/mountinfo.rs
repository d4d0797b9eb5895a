//! Parser for `/proc/self/mountinfo` (proc(5), "/proc/pid/mountinfo").
//!
//! Pure: takes the file's text, returns typed entries. The node service uses
//! it to answer "is this path a mount point, of which device, read-only?"
//! without trusting `/etc/mtab` or running `findmnt`.
//!
//! Line format (fields separated by single spaces):
//! `ID PARENT MAJOR:MINOR ROOT MOUNT_POINT MOUNT_OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`.
//! ROOT, MOUNT_POINT and SOURCE escape space, tab, newline and backslash as
//! `\ooo` octal; we undo that. A malformed line is an error naming its
//! number, never a panic (the kernel writes this file, but a parser that
//! trusts its input is a parser that crashes on the next kernel).

use std::path::{Path, PathBuf};

/// One mount, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Device number of the filesystem (for a bind mount: of the source).
    pub major: u32,
    pub minor: u32,
    /// Path inside the filesystem that is mounted here (`/` unless a bind
    /// mount of a subdirectory or of a file).
    pub root: String,
    pub mount_point: PathBuf,
    /// Per-mount options (`rw`/`ro`, `nosuid`, …).
    pub mount_options: Vec<String>,
    pub fs_type: String,
    /// Mount source (`/dev/sdb`, `tmpfs`, …).
    pub source: String,
    /// Per-superblock options: `ro` here means the filesystem itself is
    /// read-only (e.g. ext4 after `errors=remount-ro` fired), for every
    /// mount of it.
    pub super_options: Vec<String>,
}

impl MountEntry {
    /// Read-only through this mount point: either the mount or the whole
    /// filesystem is read-only.
    pub fn is_read_only(&self) -> bool {
        self.mount_ro() || self.fs_ro()
    }

    /// The mount itself is read-only (`mount -o ro`, a read-only bind).
    pub fn mount_ro(&self) -> bool {
        self.mount_options.iter().any(|o| o == "ro")
    }

    /// The filesystem (superblock) is read-only, or ext4 says it went
    /// read-only after an error (`emergency_ro`, shown by kernels that no
    /// longer set the superblock read-only on errors; see
    /// `super::ops::NodeOps::fs_failed` for the kernels in between).
    pub fn fs_ro(&self) -> bool {
        self.super_options
            .iter()
            .any(|o| o == "ro" || o == "emergency_ro")
    }

    pub fn device(&self) -> (u32, u32) {
        (self.major, self.minor)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mountinfo line {line}: {reason}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    pub reason: &'static str,
}

/// Parses the whole file.
pub fn parse(text: &str) -> Result<Vec<MountEntry>, ParseError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            parse_line(l).map_err(|reason| ParseError {
                line: i.saturating_add(1),
                reason,
            })
        })
        .collect()
}

fn parse_line(line: &str) -> Result<MountEntry, &'static str> {
    let mut fields = line.split(' ');
    let mut next = |what: &'static str| fields.next().ok_or(what);
    let _id = next("no mount id")?;
    let _parent = next("no parent id")?;
    let (major, minor) = next("no device number")?
        .split_once(':')
        .ok_or("device number is not MAJOR:MINOR")?;
    let major = major.parse().map_err(|_| "bad major number")?;
    let minor = minor.parse().map_err(|_| "bad minor number")?;
    let root = unescape(next("no root")?)?;
    let mount_point = PathBuf::from(unescape(next("no mount point")?)?);
    let mount_options = options(next("no mount options")?);
    // Optional fields (shared:N, master:N, …) up to the "-" separator.
    loop {
        if next("no '-' separator")? == "-" {
            break;
        }
    }
    let fs_type = next("no filesystem type")?.to_owned();
    let source = unescape(next("no mount source")?)?;
    let super_options = options(next("no super options")?);
    Ok(MountEntry {
        major,
        minor,
        root,
        mount_point,
        mount_options,
        fs_type,
        source,
        super_options,
    })
}

fn options(field: &str) -> Vec<String> {
    field.split(',').map(str::to_owned).collect()
}

/// Undoes the kernel's `\ooo` escaping (fs/proc_namespace.c: mangle()).
fn unescape(field: &str) -> Result<String, &'static str> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'\\' {
            let digits = bytes
                .get(i.saturating_add(1)..i.saturating_add(4))
                .ok_or("truncated octal escape")?;
            let mut value: u32 = 0;
            for d in digits {
                if !(b'0'..=b'7').contains(d) {
                    return Err("bad octal escape");
                }
                value = value * 8 + u32::from(d - b'0');
            }
            out.push(u8::try_from(value).map_err(|_| "octal escape out of range")?);
            i = i.saturating_add(4);
        } else {
            out.push(b);
            i = i.saturating_add(1);
        }
    }
    String::from_utf8(out).map_err(|_| "not UTF-8")
}

/// The mount at `path` that is visible there (the last one mounted on it:
/// stacked mounts shadow earlier ones), if `path` is a mount point.
pub fn find<'a>(entries: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    entries.iter().rev().find(|e| e.mount_point == path)
}

/// Every mount of the device `dev` (the filesystem and its bind mounts).
pub fn mounts_of(entries: &[MountEntry], dev: (u32, u32)) -> impl Iterator<Item = &MountEntry> {
    entries.iter().filter(move |e| e.device() == dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
36 22 0:31 / /run rw,nosuid,nodev shared:5 - tmpfs tmpfs rw,size=1024k
40 22 8:16 / /var/lib/kubelet/staging/pv\\0401 rw,noatime - ext4 /dev/sdb ro,errors=remount-ro
41 22 8:16 / /var/lib/kubelet/pods/x/mount ro,relatime shared:7 master:3 - ext4 /dev/sdb ro
";

    #[test]
    fn parses_fields_optional_tags_and_octal_escapes() {
        let entries = parse(SAMPLE).unwrap();
        assert_eq!(entries.len(), 4);
        let staging = &entries[2];
        assert_eq!(staging.device(), (8, 16));
        assert_eq!(
            staging.mount_point,
            Path::new("/var/lib/kubelet/staging/pv 1")
        );
        assert_eq!(staging.fs_type, "ext4");
        assert_eq!(staging.source, "/dev/sdb");
        assert_eq!(entries[3].mount_options, ["ro", "relatime"]);
    }

    #[test]
    fn read_only_distinguishes_the_mount_from_the_filesystem() {
        let entries = parse(SAMPLE).unwrap();
        assert!(!entries[0].is_read_only());
        // Superblock ro (errors=remount-ro fired) while the mount says rw.
        assert!(!entries[2].mount_ro() && entries[2].fs_ro() && entries[2].is_read_only());
        assert!(entries[3].mount_ro());
        // Newer kernels: ext4 shows its error state as an option instead.
        let e =
            parse("1 2 8:16 / /m rw - ext4 /dev/sdb rw,errors=remount-ro,emergency_ro").unwrap();
        assert!(e[0].fs_ro());
    }

    #[test]
    fn find_returns_the_topmost_of_stacked_mounts_and_mounts_of_lists_binds() {
        let text = format!("{SAMPLE}50 40 0:40 / /run rw - tmpfs other rw\n");
        let entries = parse(&text).unwrap();
        assert_eq!(find(&entries, Path::new("/run")).unwrap().source, "other");
        assert!(find(&entries, Path::new("/nope")).is_none());
        assert_eq!(mounts_of(&entries, (8, 16)).count(), 2);
    }

    #[test]
    fn malformed_lines_are_errors_with_line_numbers() {
        for bad in [
            "1 2 8:1 / /",
            "1 2 81 / / rw - ext4 /dev/a rw",
            "1 2 8:x / / rw - ext4 /dev/a rw",
            "1 2 8:1 / /a\\09 rw - ext4 /dev/a rw",
            "1 2 8:1 / /a\\7 rw - ext4 /dev/a rw",
            "1 2 8:1 / /a\\777 rw - ext4 /dev/a rw",
            "1 2 8:1 / / rw shared:1",
        ] {
            let text = format!("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n{bad}\n");
            let err = parse(&text).unwrap_err();
            assert_eq!(err.line, 2, "{bad}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Any input: an error or entries, never a panic.
        #[test]
        fn never_panics(text in "[ -~\\n]{0,200}") {
            let _ = parse(&text);
        }

        /// A path escaped the way the kernel does comes back unchanged.
        #[test]
        fn escaped_paths_round_trip(path in "/[a-z \\t\\\\]{0,20}") {
            let escaped: String = path.chars().map(|c| match c {
                ' ' => "\\040".to_owned(),
                '\t' => "\\011".to_owned(),
                '\\' => "\\134".to_owned(),
                c => c.to_string(),
            }).collect();
            let line = format!("1 2 8:1 / {escaped} rw - ext4 /dev/a rw");
            let entries = parse(&line).unwrap();
            proptest::prop_assert_eq!(&entries[0].mount_point, Path::new(&path));
        }
    }
}
