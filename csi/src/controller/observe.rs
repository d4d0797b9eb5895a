//! What the controller can see of every volume and pool, for the
//! Kubernetes objects that mirror them (`kube::mirror`): one GetPool and
//! one ListVolumes per pool, one GetStatus and one ListSnapshots per
//! volume target. Read-only; never part of a CSI call's answer.

use std::collections::BTreeMap;

use cstor_mgmt::v1::{
    GetPoolRequest, ListTargetSnapshotsRequest, ListVolumesRequest, Pool, TargetSnapshot,
    TargetStatus, VolumeReplica,
};

use super::Controller;
use crate::mgmt::{self, PoolAddr};
use crate::naming::{check_volume_id, is_internal_snapshot};
use crate::runtime::TargetRuntime;

/// One pool as its daemon answered.
#[derive(Debug, Clone)]
pub struct PoolSeen {
    pub addr: PoolAddr,
    /// The pool, or why it could not be read.
    pub pool: Result<Pool, String>,
    /// Its volume replicas, or why they could not be listed.
    pub replicas: Result<Vec<VolumeReplica>, String>,
}

/// One volume: where its replicas are and what its target says.
#[derive(Debug, Clone)]
pub struct VolumeSeen {
    pub id: String,
    /// The largest of its replicas.
    pub size_bytes: u64,
    /// Data addresses of the pools holding it, in pool order.
    pub pools: Vec<String>,
    /// A clone's origin, `volume@snapshot`.
    pub origin: Option<String>,
    /// The target's status, or why there is none.
    pub target: Result<TargetStatus, String>,
    /// The newest snapshot the target lists.
    pub last_snapshot: Option<TargetSnapshot>,
}

/// Everything one sweep saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub pools: Vec<PoolSeen>,
    pub volumes: Vec<VolumeSeen>,
    /// Every pool answered: a volume not listed does not exist (its
    /// object may go). False: absence proves nothing.
    pub complete: bool,
}

impl<R: TargetRuntime> Controller<R> {
    /// Reads every pool, then every volume's target.
    pub async fn observe(&self) -> Seen {
        let answers = mgmt::on_every_pool(&self.mgmt, &self.pools, |clients, addr| async move {
            let daemon = format!("replica daemon {}", addr.mgmt);
            let mut client = clients.replica(addr.mgmt).await?;
            let pool = mgmt::call(&daemon, mgmt::CALL, client.get_pool(GetPoolRequest {})).await;
            let listed = mgmt::call(
                &daemon,
                mgmt::CALL,
                client.list_volumes(ListVolumesRequest {}),
            )
            .await;
            Ok((pool, listed))
        })
        .await;
        let mut pools = Vec::with_capacity(self.pools.len());
        let mut volumes: BTreeMap<String, VolumeSeen> = BTreeMap::new();
        for (addr, answer) in self.pools.iter().zip(answers) {
            let (pool, listed) = match answer {
                Ok((pool, listed)) => (
                    pool.map_err(|e| e.message().to_owned()),
                    listed
                        .map(|l| l.volumes)
                        .map_err(|e| e.message().to_owned()),
                ),
                Err(e) => (Err(e.message().to_owned()), Err(e.message().to_owned())),
            };
            for replica in listed.iter().flatten() {
                if check_volume_id(&replica.name).is_err() {
                    continue;
                }
                let seen = volumes
                    .entry(replica.name.clone())
                    .or_insert_with(|| VolumeSeen {
                        id: replica.name.clone(),
                        size_bytes: 0,
                        pools: Vec::new(),
                        origin: None,
                        target: Err("not read yet".into()),
                        last_snapshot: None,
                    });
                seen.size_bytes = seen.size_bytes.max(replica.size_bytes);
                seen.pools.push(addr.data.to_string());
                if !replica.origin.is_empty() {
                    seen.origin = Some(replica.origin.clone());
                }
            }
            pools.push(PoolSeen {
                addr: *addr,
                pool,
                replicas: listed,
            });
        }
        let complete = pools.iter().all(|p| p.replicas.is_ok());
        let mut seen_volumes = Vec::with_capacity(volumes.len());
        for (_, mut volume) in volumes {
            let (target, last) = self.target_seen(&volume.id).await;
            volume.target = target;
            volume.last_snapshot = last;
            seen_volumes.push(volume);
        }
        Seen {
            pools,
            volumes: seen_volumes,
            complete,
        }
    }

    /// The status and newest snapshot of the volume's target, without
    /// starting one (a mirror must not change what it mirrors).
    async fn target_seen(
        &self,
        id: &str,
    ) -> (Result<TargetStatus, String>, Option<TargetSnapshot>) {
        let endpoint = match self.runtime.find_target(id).await {
            Ok(Some(endpoint)) => endpoint,
            Ok(None) => return (Err("no target runs".into()), None),
            Err(e) => return (Err(e.to_string()), None),
        };
        let status = match self.target_status(&endpoint).await {
            Ok(status) => status,
            Err(e) => return (Err(e.message().to_owned()), None),
        };
        let last = async {
            let mut client = self.mgmt.target(&endpoint.mgmt).await?;
            mgmt::call(
                &format!("target {}", endpoint.mgmt),
                mgmt::CALL,
                client.list_snapshots(ListTargetSnapshotsRequest {}),
            )
            .await
        }
        .await
        .ok()
        .and_then(|l| {
            l.snapshots
                .into_iter()
                .filter(|s| !is_internal_snapshot(&s.name))
                .max_by_key(|s| s.io_seq)
        });
        (Ok(status), last)
    }
}
