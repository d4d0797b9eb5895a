//! A writer of cpio "newc" archives, the format of a Linux initramfs.
//!
//! An [`Archive`] collects directories, symbolic links and files (bytes held
//! in memory or a host file read when the archive is written), keyed by
//! their path inside the archive, and writes them sorted by path: a parent
//! directory always comes before its children, as the kernel's unpacker
//! needs. Missing parent directories are added (mode 0755). Adding a path
//! twice keeps the last entry (a real tool replaces a busybox applet link).
//!
//! Every entry belongs to root, has mtime 0 and its own inode number, so an
//! archive of the same inputs is the same bytes. The archive ends with the
//! `TRAILER!!!` entry and is padded to 512 bytes, so archives can be
//! concatenated (the kernel unpacks them in order, later entries on top).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Where a file's bytes come from.
#[derive(Debug, Clone)]
enum Data {
    Bytes(Vec<u8>),
    Host(PathBuf),
}

#[derive(Debug, Clone)]
enum Entry {
    Dir { mode: u32 },
    Symlink { target: String },
    File { mode: u32, data: Data },
    CharDev { mode: u32, major: u32, minor: u32 },
}

/// An initramfs being assembled; see the module documentation.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

/// Archive paths have no leading or trailing slash and no empty parts.
fn clean(path: &str) -> String {
    path.split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect::<Vec<_>>()
        .join("/")
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Archive {
        Archive::default()
    }

    /// A directory with permission bits `mode` (e.g. 0o1777 for /tmp).
    pub fn dir(&mut self, path: &str, mode: u32) {
        self.entries.insert(
            clean(path),
            Entry::Dir {
                mode: mode & 0o7777,
            },
        );
    }

    /// A symbolic link at `path` pointing to `target` (kept verbatim).
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.entries.insert(
            clean(path),
            Entry::Symlink {
                target: target.to_string(),
            },
        );
    }

    /// A file holding `bytes`.
    pub fn bytes(&mut self, path: &str, bytes: impl Into<Vec<u8>>, mode: u32) {
        self.entries.insert(
            clean(path),
            Entry::File {
                mode: mode & 0o7777,
                data: Data::Bytes(bytes.into()),
            },
        );
    }

    /// A file with the contents of the host file `source` (symbolic links
    /// followed), read when the archive is written.
    pub fn host_file(&mut self, path: &str, source: &Path, mode: u32) {
        self.entries.insert(
            clean(path),
            Entry::File {
                mode: mode & 0o7777,
                data: Data::Host(source.to_path_buf()),
            },
        );
    }

    /// A character device node (e.g. `dev/console`, 5:1, for the kernel to
    /// open as /init's stdin/stdout before anything mounts /dev).
    pub fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.entries.insert(
            clean(path),
            Entry::CharDev {
                mode: mode & 0o7777,
                major,
                minor,
            },
        );
    }

    /// Whether the archive has an entry at `path`.
    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(&clean(path))
    }

    /// Every path in the archive, sorted (parents not yet added included
    /// only once [`Archive::write`] ran: they are added there).
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the archive has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A hash of everything the archive would hold: paths, modes, link
    /// targets, in-memory bytes, and the size and mtime of host files (so
    /// a changed input changes it without reading every file). FNV-1a, so
    /// it is the same in every build of the runner.
    pub fn fingerprint(&self) -> u64 {
        let mut h = Fnv::default();
        for (path, entry) in &self.entries {
            h.add(path.as_bytes());
            match entry {
                Entry::Dir { mode } => h.add(format!("d{mode:o}").as_bytes()),
                Entry::Symlink { target } => h.add(format!("l{target}").as_bytes()),
                Entry::CharDev { mode, major, minor } => {
                    h.add(format!("c{mode:o}:{major}:{minor}").as_bytes())
                }
                Entry::File { mode, data } => {
                    h.add(format!("f{mode:o}").as_bytes());
                    match data {
                        Data::Bytes(b) => h.add(b),
                        Data::Host(src) => {
                            let meta = std::fs::metadata(src).ok().map(|m| {
                                let mtime = m
                                    .modified()
                                    .ok()
                                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                                    .map(|d| d.as_nanos());
                                (m.len(), mtime)
                            });
                            h.add(format!("{}{meta:?}", src.display()).as_bytes());
                        }
                    }
                }
            }
        }
        h.0
    }

    /// Adds the missing parent directories of every entry.
    fn add_parents(&mut self) {
        let mut parents = Vec::new();
        for path in self.entries.keys() {
            let mut p = path.as_str();
            while let Some((parent, _)) = p.rsplit_once('/') {
                if !self.entries.contains_key(parent) {
                    parents.push(parent.to_string());
                }
                p = parent;
            }
        }
        for parent in parents {
            self.entries
                .entry(parent)
                .or_insert(Entry::Dir { mode: 0o755 });
        }
    }

    /// Writes the archive; returns the number of bytes written. A host file
    /// that cannot be read, or changes size while it is copied, is an error
    /// naming it.
    pub fn write(&mut self, out: &mut impl Write) -> io::Result<u64> {
        self.add_parents();
        let mut w = Counter {
            out,
            written: 0,
            rdev: (0, 0),
        };
        for (ino, (path, entry)) in (1u32..).zip(self.entries.iter()) {
            match entry {
                Entry::Dir { mode } => header(&mut w, ino, S_IFDIR | mode, 2, 0, path)?,
                Entry::CharDev { mode, major, minor } => {
                    w.rdev = (*major, *minor);
                    let written = header(&mut w, ino, S_IFCHR | mode, 1, 0, path);
                    w.rdev = (0, 0);
                    written?
                }
                Entry::Symlink { target } => {
                    let len = target.len() as u64;
                    header(&mut w, ino, S_IFLNK | 0o777, 1, len, path)?;
                    w.write_all(target.as_bytes())?;
                    pad(&mut w)?;
                }
                Entry::File { mode, data } => match data {
                    Data::Bytes(bytes) => {
                        header(&mut w, ino, S_IFREG | mode, 1, bytes.len() as u64, path)?;
                        w.write_all(bytes)?;
                        pad(&mut w)?;
                    }
                    Data::Host(source) => {
                        let named = |e: io::Error| {
                            io::Error::new(e.kind(), format!("{}: {e}", source.display()))
                        };
                        let file = std::fs::File::open(source).map_err(named)?;
                        let len = file.metadata().map_err(named)?.len();
                        header(&mut w, ino, S_IFREG | mode, 1, len, path)?;
                        let copied = io::copy(&mut file.take(len), &mut w).map_err(named)?;
                        if copied != len {
                            return Err(named(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                format!("shrank from {len} to {copied} bytes while archived"),
                            )));
                        }
                        pad(&mut w)?;
                    }
                },
            }
        }
        header(&mut w, 0, 0, 1, 0, "TRAILER!!!")?;
        let rest = (512 - w.written % 512) % 512;
        w.write_all(&vec![0u8; rest as usize])?;
        w.out.flush()?;
        Ok(w.written)
    }
}

struct Counter<'a, W: Write> {
    out: &'a mut W,
    written: u64,
    /// The device numbers of the next header (a device node's).
    rdev: (u32, u32),
}

impl<W: Write> Write for Counter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn header<W: Write>(
    w: &mut Counter<'_, W>,
    ino: u32,
    mode: u32,
    nlink: u32,
    size: u64,
    name: &str,
) -> io::Result<()> {
    let size = u32::try_from(size).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name}: newc cannot hold a file of {size} bytes"),
        )
    })?;
    let namesize = name.len() + 1;
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
    // devminor, rdevmajor, rdevminor, namesize, check
    let (rmajor, rminor) = w.rdev;
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        size,
        0,
        0,
        rmajor,
        rminor,
        namesize as u32,
        0,
    ];
    let mut h = String::with_capacity(110);
    h.push_str("070701");
    for f in fields {
        h.push_str(&format!("{f:08x}"));
    }
    w.write_all(h.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad(w)
}

/// Pads to the next multiple of 4 bytes.
fn pad<W: Write>(w: &mut Counter<'_, W>) -> io::Result<()> {
    let rest = (4 - w.written % 4) % 4;
    w.write_all(&[0u8; 3][..rest as usize])
}

/// 64-bit FNV-1a.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn add(&mut self, bytes: &[u8]) {
        for b in bytes.iter().chain([&0xffu8]) {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal newc reader: (name, mode, data) per entry, up to the trailer.
    fn read(archive: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0usize;
        loop {
            assert_eq!(&archive[at..at + 6], b"070701", "magic at {at}");
            let field = |i: usize| {
                let s = std::str::from_utf8(&archive[at + 6 + i * 8..at + 14 + i * 8]).unwrap();
                u32::from_str_radix(s, 16).unwrap() as usize
            };
            let (mode, size, namesize) = (field(1) as u32, field(6), field(11));
            let name_at = at + 110;
            let name = std::str::from_utf8(&archive[name_at..name_at + namesize - 1]).unwrap();
            assert_eq!(archive[name_at + namesize - 1], 0);
            let data_at = (name_at + namesize).next_multiple_of(4);
            let data = archive[data_at..data_at + size].to_vec();
            at = (data_at + size).next_multiple_of(4);
            if name == "TRAILER!!!" {
                break;
            }
            out.push((name.to_string(), mode, data));
        }
        assert_eq!(archive.len() % 512, 0);
        assert!(archive[at..].iter().all(|b| *b == 0));
        out
    }

    #[test]
    fn entries_come_sorted_with_their_parents_and_the_right_types() {
        let mut a = Archive::new();
        a.bytes("/usr/bin/hello", b"hi\n".to_vec(), 0o755);
        a.symlink("bin", "usr/bin");
        a.dir("tmp", 0o1777);
        let mut buf = Vec::new();
        let n = a.write(&mut buf).unwrap();
        assert_eq!(n as usize, buf.len());
        let entries = read(&buf);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["bin", "tmp", "usr", "usr/bin", "usr/bin/hello"]);
        assert_eq!(entries[0].1, S_IFLNK | 0o777);
        assert_eq!(entries[0].2, b"usr/bin");
        assert_eq!(entries[1].1, S_IFDIR | 0o1777);
        assert_eq!(entries[2].1, S_IFDIR | 0o755);
        assert_eq!(entries[4].1, S_IFREG | 0o755);
        assert_eq!(entries[4].2, b"hi\n");
    }

    #[test]
    fn host_files_are_copied_and_a_later_entry_replaces_an_earlier_one() {
        let dir = std::env::temp_dir().join(format!("cstor-cpio-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("f");
        std::fs::write(&src, vec![7u8; 1001]).unwrap();
        let mut a = Archive::new();
        a.symlink("usr/sbin/mke2fs", "/usr/bin/busybox");
        a.host_file("usr/sbin/mke2fs", &src, 0o755);
        assert!(a.contains("/usr/sbin/mke2fs/"));
        let mut buf = Vec::new();
        a.write(&mut buf).unwrap();
        let entries = read(&buf);
        let last = entries.last().unwrap();
        assert_eq!(last.0, "usr/sbin/mke2fs");
        assert_eq!(last.1, S_IFREG | 0o755);
        assert_eq!(last.2, vec![7u8; 1001]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_host_file_is_an_error_naming_it() {
        let mut a = Archive::new();
        a.host_file("x", Path::new("/nonexistent/cstor-cpio"), 0o644);
        let err = a.write(&mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/cstor-cpio"), "{err}");
    }

    #[test]
    fn device_nodes_carry_their_numbers_and_fingerprints_follow_content() {
        let mut a = Archive::new();
        a.char_dev("dev/console", 0o600, 5, 1);
        let mut buf = Vec::new();
        a.write(&mut buf).unwrap();
        // "dev" (110 + 4 bytes, padded to 116), then "dev/console".
        let h = std::str::from_utf8(&buf[116..116 + 110]).unwrap();
        assert_eq!(&h[6 + 8..6 + 16], format!("{:08x}", S_IFCHR | 0o600));
        assert_eq!(&h[6 + 9 * 8..6 + 11 * 8], "0000000500000001");
        let mut b = Archive::new();
        b.bytes("x", b"1".to_vec(), 0o644);
        let one = b.fingerprint();
        assert_eq!(one, b.clone().fingerprint());
        b.bytes("x", b"2".to_vec(), 0o644);
        assert_ne!(one, b.fingerprint());
        b.bytes("x", b"1".to_vec(), 0o755);
        assert_ne!(one, b.fingerprint());
    }

    #[test]
    fn concatenated_archives_stay_aligned() {
        let mut a = Archive::new();
        a.bytes("a", b"x".to_vec(), 0o644);
        let mut buf = Vec::new();
        a.write(&mut buf).unwrap();
        let first = buf.len();
        a.write(&mut buf).unwrap();
        assert_eq!(first % 512, 0);
        assert_eq!(read(&buf[first..])[0].0, "a");
    }
}
