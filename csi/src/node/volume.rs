//! What the node knows about a volume: the controller's volume context, the
//! CHAP secrets, and the record of a staged volume the node keeps on disk.
//!
//! The record (one file per volume in `NodeConfig::state_dir`) is written
//! *before* the first side effect of NodeStageVolume (node record, login)
//! and removed *after* the last undo of NodeUnstageVolume, or of a
//! NodeStageVolume that failed ([`super::stage`]), so a crash at any point
//! leaves either nothing or a record that lets the next NodeUnstageVolume
//! (which carries only the volume id and staging path) find the session
//! to log out of. Format: `key=value` lines, version 1.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::fs::FsType;
use super::iscsi::{valid_iqn, ChapSecrets, Lun};

/// Volume context keys (set by the controller in CreateVolume's
/// `volume_context` / ControllerPublish's `publish_context`; the shared
/// ones come from [`crate::context`]).
pub mod keys {
    /// iSCSI portal of the volume's target, `IP:PORT`.
    pub const PORTAL: &str = crate::context::PORTAL;
    /// Target IQN.
    pub const IQN: &str = crate::context::IQN;
    /// LUN number, decimal (`"0"`); default 0.
    pub const LUN: &str = crate::context::LUN;
    /// Default filesystem when the capability names none (`ext4`, `xfs`).
    pub const FS_TYPE: &str = crate::context::FS_TYPE;
    /// The target's management API (`host:port` or `http://host:port`);
    /// optional, used to know when a read-only filesystem may be remounted.
    pub const TARGET_MGMT: &str = "targetMgmt";
    /// Secrets (NodeStageVolume `secrets`), open-iscsi's own names.
    pub const CHAP_USERNAME: &str = "node.session.auth.username";
    pub const CHAP_PASSWORD: &str = "node.session.auth.password";
    pub const CHAP_USERNAME_IN: &str = "node.session.auth.username_in";
    pub const CHAP_PASSWORD_IN: &str = "node.session.auth.password_in";
}

/// RFC 7143 §12.1.3 / open-iscsi: CHAP secrets are 12 to 16 bytes for
/// interoperability; our target accepts up to 255.
pub const MAX_CHAP_SECRET_BYTES: usize = 255;
/// Longest volume id we accept (CSI spec: at most 128 bytes).
pub const MAX_VOLUME_ID_BYTES: usize = 128;
/// Default filesystem when neither the capability nor the context names one.
pub const DEFAULT_FS: FsType = FsType::Ext4;

/// Where the volume's LUN is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeContext {
    pub lun: Lun,
    pub fs_type: Option<FsType>,
    pub target_mgmt: Option<String>,
}

/// Parses the context; errors name the bad key (INVALID_ARGUMENT).
pub fn parse_context(ctx: &HashMap<String, String>) -> Result<VolumeContext, String> {
    let get = |k: &str| ctx.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let portal: SocketAddr = get(keys::PORTAL)
        .ok_or("volume context has no portal")?
        .parse()
        .map_err(|_| "volume context portal is not IP:PORT")?;
    let iqn = get(keys::IQN).ok_or("volume context has no iqn")?;
    if !valid_iqn(iqn) {
        return Err(format!("volume context iqn {iqn:?} is not an iSCSI name"));
    }
    let lun = match get(keys::LUN) {
        None => 0,
        Some(l) => l
            .parse()
            .map_err(|_| format!("volume context lun {l:?} is not a LUN number"))?,
    };
    let fs_type = match get(keys::FS_TYPE) {
        None => None,
        Some(f) => Some(FsType::parse(f).ok_or(format!("unsupported fsType {f:?}"))?),
    };
    let target_mgmt = get(keys::TARGET_MGMT).map(str::to_owned);
    if target_mgmt.as_deref().is_some_and(|m| !single_line(m)) {
        return Err("volume context targetMgmt is not one line".into());
    }
    Ok(VolumeContext {
        lun: Lun {
            portal,
            iqn: iqn.to_owned(),
            lun,
        },
        fs_type,
        target_mgmt,
    })
}

/// CHAP from the secrets, if any: username and password together, mutual
/// (`_in`) pair together.
pub fn parse_chap(secrets: &HashMap<String, String>) -> Result<Option<ChapSecrets>, String> {
    let get = |k: &str| secrets.get(k).filter(|v| !v.is_empty()).cloned();
    let pair = |u: &str, p: &str| match (get(u), get(p)) {
        (None, None) => Ok(None),
        (Some(user), Some(pass)) if pass.len() <= MAX_CHAP_SECRET_BYTES && single_line(&user) => {
            Ok(Some((user, pass)))
        }
        (Some(_), Some(_)) => Err(format!("secret {p} is too long or {u} not one line")),
        _ => Err(format!("secrets must hold both {u} and {p}")),
    };
    let out = pair(keys::CHAP_USERNAME, keys::CHAP_PASSWORD)?;
    let inbound = pair(keys::CHAP_USERNAME_IN, keys::CHAP_PASSWORD_IN)?;
    match (out, inbound) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err("mutual CHAP secrets without the initiator's".into()),
        (Some((username, password)), inbound) => {
            let (username_in, password_in) = inbound.unzip();
            Ok(Some(ChapSecrets {
                username,
                password,
                username_in,
                password_in,
            }))
        }
    }
}

fn single_line(s: &str) -> bool {
    !s.contains(['\n', '\r'])
}

/// A volume id usable as a file name: 1..=128 bytes, not `.`/`..`, no `/`
/// or NUL or line breaks (our ids are DNS names; anything else is refused).
pub fn valid_volume_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_VOLUME_ID_BYTES
        && id != "."
        && id != ".."
        && !id.contains(['/', '\0', '\n', '\r'])
}

/// How a staged volume is accessed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// A filesystem mounted at the staging path.
    Mount { fs: FsType, flags: Vec<String> },
    /// The raw device (published by bind-mounting it onto a file).
    Block,
}

/// The on-disk record of a staged volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    pub volume_id: String,
    pub staging_path: PathBuf,
    pub lun: Lun,
    pub access: Access,
    pub target_mgmt: Option<String>,
}

const RECORD_VERSION: &str = "1";

impl Staged {
    pub fn record_path(state_dir: &Path, volume_id: &str) -> PathBuf {
        state_dir.join(format!("{volume_id}.staged"))
    }

    pub fn device(&self) -> PathBuf {
        self.lun.by_path()
    }

    /// `key=value` lines. Every value was checked to be one line when it
    /// was parsed from the request.
    pub fn encode(&self) -> String {
        let mut out = format!(
            "version={RECORD_VERSION}\nvolume_id={}\nstaging_path={}\nportal={}\niqn={}\nlun={}\n",
            self.volume_id,
            self.staging_path.display(),
            self.lun.portal,
            self.lun.iqn,
            self.lun.lun
        );
        match &self.access {
            Access::Block => out.push_str("access=block\n"),
            Access::Mount { fs, flags } => {
                out.push_str(&format!("access=mount\nfs_type={}\n", fs.as_str()));
                for f in flags {
                    out.push_str(&format!("mount_flag={f}\n"));
                }
            }
        }
        if let Some(m) = &self.target_mgmt {
            out.push_str(&format!("target_mgmt={m}\n"));
        }
        out
    }

    pub fn decode(text: &str) -> Result<Staged, String> {
        let mut map: HashMap<&str, &str> = HashMap::new();
        let mut flags = Vec::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("record line {line:?} is not key=value"))?;
            if k == "mount_flag" {
                flags.push(v.to_owned());
            } else if map.insert(k, v).is_some() {
                return Err(format!("record repeats {k}"));
            }
        }
        let get = |k: &str| map.get(k).copied().ok_or(format!("record has no {k}"));
        if get("version")? != RECORD_VERSION {
            return Err(format!("record version {:?} unknown", get("version")?));
        }
        let access = match get("access")? {
            "block" => Access::Block,
            "mount" => Access::Mount {
                fs: FsType::parse(get("fs_type")?).ok_or("record fs_type unknown")?,
                flags,
            },
            other => return Err(format!("record access {other:?} unknown")),
        };
        Ok(Staged {
            volume_id: get("volume_id")?.to_owned(),
            staging_path: PathBuf::from(get("staging_path")?),
            lun: Lun {
                portal: get("portal")?.parse().map_err(|_| "record portal bad")?,
                iqn: get("iqn")?.to_owned(),
                lun: get("lun")?.parse().map_err(|_| "record lun bad")?,
            },
            access,
            target_mgmt: map.get("target_mgmt").map(|s| (*s).to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn context_needs_portal_and_iqn_and_defaults_lun_zero() {
        let ctx = parse_context(&map(&[
            ("portal", "10.0.0.1:3260"),
            ("iqn", "iqn.2016-09.com.openebs.cstor:pv1"),
            ("fsType", "xfs"),
        ]))
        .unwrap();
        assert_eq!(ctx.lun.lun, 0);
        assert_eq!(ctx.fs_type, Some(FsType::Xfs));
        for bad in [
            map(&[("iqn", "iqn.x")]),
            map(&[("portal", "nohost"), ("iqn", "iqn.x")]),
            map(&[("portal", "10.0.0.1:3260"), ("iqn", "x y")]),
            map(&[("portal", "10.0.0.1:3260"), ("iqn", "iqn.x"), ("lun", "-1")]),
            map(&[
                ("portal", "10.0.0.1:3260"),
                ("iqn", "iqn.x"),
                ("fsType", "ntfs"),
            ]),
        ] {
            assert!(parse_context(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn chap_secrets_come_in_pairs() {
        assert_eq!(parse_chap(&map(&[])).unwrap(), None);
        let c = parse_chap(&map(&[
            (keys::CHAP_USERNAME, "u"),
            (keys::CHAP_PASSWORD, "secretsecret"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((c.username.as_str(), c.username_in.as_deref()), ("u", None));
        assert!(parse_chap(&map(&[(keys::CHAP_USERNAME, "u")])).is_err());
        assert!(parse_chap(&map(&[
            (keys::CHAP_USERNAME_IN, "t"),
            (keys::CHAP_PASSWORD_IN, "secretsecret")
        ]))
        .is_err());
        assert!(!format!("{c:?}").contains("secretsecret"));
    }

    #[test]
    fn volume_ids_that_are_not_file_names_are_refused() {
        assert!(valid_volume_id("pvc-1234"));
        for bad in ["", ".", "..", "a/b", "a\nb"] {
            assert!(!valid_volume_id(bad), "{bad:?}");
        }
        assert!(!valid_volume_id(&"a".repeat(MAX_VOLUME_ID_BYTES + 1)));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
        #[test]
        fn record_round_trips(
            id in "[a-z0-9-]{1,20}",
            path in "/[a-z/ ]{1,30}",
            lun in 0u16..,
            block in proptest::bool::ANY,
            xfs in proptest::bool::ANY,
            flags in proptest::collection::vec("[a-z=,0-9]{1,10}", 0..4),
            mgmt in proptest::option::of("[a-z0-9.:]{1,20}"),
        ) {
            let staged = Staged {
                volume_id: id,
                staging_path: PathBuf::from(path),
                lun: Lun { portal: "10.1.2.3:3260".parse().unwrap(), iqn: "iqn.a:b".into(), lun },
                access: if block { Access::Block } else {
                    Access::Mount { fs: if xfs { FsType::Xfs } else { FsType::Ext4 }, flags }
                },
                target_mgmt: mgmt,
            };
            proptest::prop_assert_eq!(Staged::decode(&staged.encode()), Ok(staged));
        }

        #[test]
        fn decode_never_panics(text in "[ -~\\n]{0,200}") {
            let _ = Staged::decode(&text);
        }
    }
}
