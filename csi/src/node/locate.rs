//! Where a staged volume shows on this host, decided from the node's own
//! record of it ([`Staged`]) and the mount table, never from a path merely
//! existing.
//!
//! - NodeGetVolumeStats and NodeExpandVolume answer NOT_FOUND for any path
//!   the volume is not at, however odd (relative, with `..`, absent, or an
//!   unrelated directory or mount): CSI spec §"NodeGetVolumeStats Errors",
//!   "Volume does not exist | 5 NOT_FOUND | Indicates that a volume
//!   corresponding to the specified `volume_id` does not exist on
//!   specified `volume_path`".
//! - NodeUnpublishVolume unmounts only the volume's own mounts.
//!
//! A path is the volume's when it is the recorded staging path, or when
//! what is mounted there carries one of the volume's [`Mark`]s: its
//! filesystem's device number (mount access: the staging mount and its
//! bind mounts share it), or the name of its device node as the root of a
//! devtmpfs bind (block access). Paths compare component by component as
//! given ([`exact_path`]); the matching is pure, the host only supplies
//! mountinfo and the device node.

use std::path::{Component, Path, PathBuf};

use super::host::Host;
use super::mountinfo::MountEntry;
use super::ops::{NodeOps, Result};
use super::volume::{Access, Staged};

/// How one of a volume's mounts shows in mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mark {
    /// A mount of the volume's filesystem: its device number.
    Device((u32, u32)),
    /// A bind of the volume's device node onto a file: devtmpfs with the
    /// node's path below `/dev` (`/sdb`) as root.
    NodeBind(PathBuf),
}

impl Mark {
    /// Whether `m` is a mount of the volume this mark belongs to.
    pub fn matches(&self, m: &MountEntry) -> bool {
        match self {
            Mark::Device(dev) => m.device() == *dev,
            Mark::NodeBind(root) => Path::new(&m.root) == root,
        }
    }
}

/// Where a path shows the volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// The recorded staging path, with what is mounted there (nothing for
    /// block access, or for a mount volume whose staging mount is gone).
    Staging(Option<MountEntry>),
    /// A mount of the volume elsewhere: a path it was published at.
    Published(MountEntry),
}

impl Place {
    /// The volume's mount at this place, if any.
    pub fn mount(&self) -> Option<&MountEntry> {
        match self {
            Place::Staging(m) => m.as_ref(),
            Place::Published(m) => Some(m),
        }
    }
}

/// `path` in the form mountinfo and the staged record use: absolute, one
/// line, no `..` component, without `.` components or a trailing slash.
/// `None` for anything else (such a path is never one the node mounted on).
pub fn exact_path(path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    let plain = p.is_absolute()
        && !path.contains(['\n', '\r', '\0'])
        && !p.components().any(|c| c == Component::ParentDir);
    plain.then(|| p.components().collect())
}

/// The volume's place at `path` given the mount there and the volume's
/// marks; `None`: the volume is not at `path`.
pub fn place_of(
    staged: &Staged,
    path: &Path,
    mount: Option<MountEntry>,
    marks: &[Mark],
) -> Option<Place> {
    if path == staged.staging_path {
        return Some(Place::Staging(mount));
    }
    mount
        .filter(|m| marks.iter().any(|k| k.matches(m)))
        .map(Place::Published)
}

impl<H: Host> NodeOps<H> {
    /// How the volume's mounts show now. Empty when that cannot be told
    /// any more: the device node is gone and (mount access) nothing is
    /// mounted at the staging path.
    pub(super) fn marks(&self, staged: &Staged) -> Result<Vec<Mark>> {
        let mut marks = Vec::new();
        match staged.access {
            Access::Mount { .. } => {
                if let Some(m) = self.mount_at(&staged.staging_path)? {
                    marks.push(Mark::Device(m.device()));
                }
                if let Some(dev) = self.host.block_device(&staged.device()) {
                    marks.push(Mark::Device(dev));
                }
            }
            Access::Block => {
                let real = self.host.resolve(&staged.device());
                if let Some(rel) = real.as_deref().and_then(|r| r.strip_prefix("/dev").ok()) {
                    marks.push(Mark::NodeBind(Path::new("/").join(rel)));
                }
            }
        }
        marks.dedup();
        Ok(marks)
    }

    /// Where `volume_path` shows the staged volume, if it does.
    pub(super) fn place(&self, staged: &Staged, volume_path: &str) -> Result<Option<Place>> {
        let Some(path) = exact_path(volume_path) else {
            return Ok(None);
        };
        let mount = self.mount_at(&path)?;
        let marks = match &mount {
            Some(_) if path != staged.staging_path => self.marks(staged)?,
            _ => Vec::new(),
        };
        Ok(place_of(staged, &path, mount, &marks))
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::*;
    use super::super::fs::FsType;
    use super::super::iscsi::Lun;
    use super::*;

    fn staged(access: Access) -> Staged {
        Staged {
            volume_id: "pv1".into(),
            staging_path: PathBuf::from(STAGING),
            lun: Lun {
                portal: PORTAL.parse().unwrap(),
                iqn: IQN.into(),
                lun: 0,
            },
            access,
            target_mgmt: None,
        }
    }

    fn mount(dev: (u32, u32), root: &str, at: &str) -> MountEntry {
        MountEntry {
            major: dev.0,
            minor: dev.1,
            root: root.into(),
            mount_point: PathBuf::from(at),
            mount_options: vec!["rw".into()],
            fs_type: "ext4".into(),
            source: "/dev/sdz".into(),
            super_options: vec!["rw".into()],
        }
    }

    #[test]
    fn only_absolute_paths_without_dot_dot_are_exact() {
        assert_eq!(exact_path("/a//b/./c/"), Some(PathBuf::from("/a/b/c")));
        for odd in ["", "a/b", "./a", "/a/../b", "/a/..", "/a\nb", "/a\0"] {
            assert_eq!(exact_path(odd), None, "{odd:?}");
        }
    }

    #[test]
    fn a_path_is_the_volumes_only_by_its_record_or_its_marks() {
        let mount_volume = staged(Access::Mount {
            fs: FsType::Ext4,
            flags: vec![],
        });
        let ours = [Mark::Device((8, 0))];
        let target = Path::new(TARGET);
        // The staging path is the volume's by its record, mounted or not.
        assert_eq!(
            place_of(&mount_volume, Path::new(STAGING), None, &ours),
            Some(Place::Staging(None))
        );
        let bind = mount((8, 0), "/", TARGET);
        assert_eq!(
            place_of(&mount_volume, target, Some(bind.clone()), &ours),
            Some(Place::Published(bind.clone()))
        );
        // Another filesystem there, or nothing mounted, or no marks left:
        // not the volume's.
        assert_eq!(
            place_of(
                &mount_volume,
                target,
                Some(mount((8, 16), "/", TARGET)),
                &ours
            ),
            None
        );
        assert_eq!(place_of(&mount_volume, target, None, &ours), None);
        assert_eq!(place_of(&mount_volume, target, Some(bind), &[]), None);
        // Block: a devtmpfs bind of the volume's node, not of another.
        let block = staged(Access::Block);
        let node = [Mark::NodeBind(PathBuf::from("/sdb"))];
        let file_bind = mount((0, 5), "/sdb", TARGET);
        assert!(place_of(&block, target, Some(file_bind), &node).is_some());
        let other = mount((0, 5), "/sdc", TARGET);
        assert_eq!(place_of(&block, target, Some(other), &node), None);
    }
}
