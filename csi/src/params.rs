//! CreateVolume's `parameters` (the StorageClass parameters), parsed and
//! checked before anything is provisioned.
//!
//! | key | values | default |
//! | --- | --- | --- |
//! | `replicaCount` | 1..=5 | 3, or the number of pools if fewer |
//! | `consistencyFactor` | 1..=replicaCount | a majority (⌊n/2⌋+1) |
//! | `provisioning` | `thin`, `thick` | `thin` |
//! | `fsType` | `ext4`, `xfs` | `ext4` (mount volumes) |
//! | `pools` | comma-separated pool names | every configured pool |
//!
//! Keys under `csi.storage.k8s.io/` (set by the Kubernetes sidecars) are
//! ignored; any other key is an error, so that a typo in a StorageClass is
//! seen at once instead of silently giving a default.

use std::collections::HashMap;

use crate::limits::{DEFAULT_REPLICA_COUNT, MAX_REPLICAS};

/// Parameter keys.
pub const REPLICA_COUNT: &str = "replicaCount";
pub const CONSISTENCY_FACTOR: &str = "consistencyFactor";
pub const PROVISIONING: &str = "provisioning";
pub const FS_TYPE: &str = "fsType";
pub const POOLS: &str = "pools";
/// Prefix of the keys the Kubernetes sidecars own.
const SIDECAR_PREFIX: &str = "csi.storage.k8s.io/";

/// Filesystems the node plugin can make.
pub const FS_TYPES: [&str; 2] = ["ext4", "xfs"];
/// Filesystem of a mount volume that names none.
pub const DEFAULT_FS_TYPE: &str = "ext4";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioning {
    Thin,
    Thick,
}

/// What a StorageClass asks of a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeParams {
    /// `None`: the default for the number of usable pools.
    pub replica_count: Option<u32>,
    /// `None`: a majority of the replicas.
    pub consistency_factor: Option<u32>,
    pub provisioning: Provisioning,
    pub fs_type: String,
    /// Pool names the replicas may go to; empty: any.
    pub pools: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("unknown parameter {0:?}")]
    Unknown(String),
    #[error("parameter {key}={value:?}: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: &'static str,
    },
}

impl VolumeParams {
    /// Parses the parameters map.
    pub fn parse(params: &HashMap<String, String>) -> Result<Self, ParamError> {
        let mut parsed = VolumeParams {
            replica_count: None,
            consistency_factor: None,
            provisioning: Provisioning::Thin,
            fs_type: DEFAULT_FS_TYPE.to_owned(),
            pools: Vec::new(),
        };
        for (key, value) in params {
            let invalid = |key: &'static str, reason: &'static str| ParamError::Invalid {
                key,
                value: value.clone(),
                reason,
            };
            match key.as_str() {
                REPLICA_COUNT => {
                    let n: u32 = value
                        .trim()
                        .parse()
                        .map_err(|_| invalid(REPLICA_COUNT, "not a number"))?;
                    if !(1..=MAX_REPLICAS).contains(&n) {
                        return Err(invalid(REPLICA_COUNT, "must be 1 to 5"));
                    }
                    parsed.replica_count = Some(n);
                }
                CONSISTENCY_FACTOR => {
                    let n: u32 = value
                        .trim()
                        .parse()
                        .map_err(|_| invalid(CONSISTENCY_FACTOR, "not a number"))?;
                    if n == 0 {
                        return Err(invalid(CONSISTENCY_FACTOR, "must be at least 1"));
                    }
                    parsed.consistency_factor = Some(n);
                }
                PROVISIONING => {
                    parsed.provisioning = match value.trim() {
                        "thin" => Provisioning::Thin,
                        "thick" => Provisioning::Thick,
                        _ => return Err(invalid(PROVISIONING, "must be thin or thick")),
                    }
                }
                FS_TYPE => {
                    let fs = value.trim();
                    if !FS_TYPES.contains(&fs) {
                        return Err(invalid(FS_TYPE, "must be ext4 or xfs"));
                    }
                    fs.clone_into(&mut parsed.fs_type);
                }
                POOLS => {
                    parsed.pools = value
                        .split(',')
                        .map(str::trim)
                        .filter(|p| !p.is_empty())
                        .map(str::to_owned)
                        .collect();
                    if parsed.pools.is_empty() {
                        return Err(invalid(POOLS, "names no pool"));
                    }
                }
                other if other.starts_with(SIDECAR_PREFIX) => {}
                other => return Err(ParamError::Unknown(other.to_owned())),
            }
        }
        if let (Some(n), Some(cf)) = (parsed.replica_count, parsed.consistency_factor) {
            if cf > n {
                return Err(ParamError::Invalid {
                    key: CONSISTENCY_FACTOR,
                    value: cf.to_string(),
                    reason: "exceeds replicaCount",
                });
            }
        }
        Ok(parsed)
    }

    /// Replicas to place when `usable_pools` pools may take one.
    pub fn replicas(&self, usable_pools: usize) -> u32 {
        self.replica_count.unwrap_or_else(|| {
            let pools = u32::try_from(usable_pools).unwrap_or(u32::MAX);
            DEFAULT_REPLICA_COUNT.min(pools).max(1)
        })
    }

    /// The consistency factor for `replicas` replicas.
    pub fn cf(&self, replicas: u32) -> Result<u32, ParamError> {
        match self.consistency_factor {
            None => Ok(majority(replicas)),
            Some(cf) if cf <= replicas => Ok(cf),
            Some(cf) => Err(ParamError::Invalid {
                key: CONSISTENCY_FACTOR,
                value: cf.to_string(),
                reason: "exceeds the number of replicas",
            }),
        }
    }

    /// Whether a pool of this name may hold a replica.
    pub fn admits_pool(&self, name: &str) -> bool {
        self.pools.is_empty() || self.pools.iter().any(|p| p == name)
    }
}

/// ⌊n/2⌋+1, the target's default consistency factor.
pub fn majority(replicas: u32) -> u32 {
    replicas / 2 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_are_thin_ext4_any_pool_majority() {
        let p = VolumeParams::parse(&HashMap::new()).unwrap();
        assert_eq!(p.provisioning, Provisioning::Thin);
        assert_eq!(p.fs_type, "ext4");
        assert_eq!(p.replicas(5), 3);
        assert_eq!(p.replicas(2), 2);
        assert_eq!(p.replicas(0), 1);
        assert_eq!(p.cf(3), Ok(2));
        assert_eq!(p.cf(2), Ok(2));
        assert_eq!(p.cf(1), Ok(1));
        assert!(p.admits_pool("anything"));
    }

    #[test]
    fn every_parameter_is_parsed() {
        let p = VolumeParams::parse(&params(&[
            ("replicaCount", "2"),
            ("consistencyFactor", "1"),
            ("provisioning", "thick"),
            ("fsType", "xfs"),
            ("pools", "a, b,"),
            ("csi.storage.k8s.io/pvc/name", "data"),
        ]))
        .unwrap();
        assert_eq!(p.replicas(5), 2);
        assert_eq!(p.cf(2), Ok(1));
        assert_eq!(p.provisioning, Provisioning::Thick);
        assert_eq!(p.fs_type, "xfs");
        assert_eq!(p.pools, ["a", "b"]);
        assert!(p.admits_pool("b") && !p.admits_pool("c"));
    }

    #[test]
    fn bad_values_and_unknown_keys_are_refused() {
        for bad in [
            ("replicaCount", "0"),
            ("replicaCount", "6"),
            ("replicaCount", "three"),
            ("consistencyFactor", "0"),
            ("provisioning", "fat"),
            ("fsType", "btrfs"),
            ("pools", " , "),
            ("replicas", "3"),
        ] {
            assert!(VolumeParams::parse(&params(&[bad])).is_err(), "{bad:?}");
        }
        let err = VolumeParams::parse(&params(&[
            ("replicaCount", "2"),
            ("consistencyFactor", "3"),
        ]));
        assert!(err.is_err());
        let p = VolumeParams::parse(&params(&[("consistencyFactor", "3")])).unwrap();
        assert!(p.cf(2).is_err());
    }
}
