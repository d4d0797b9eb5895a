//! ControllerPublishVolume / ControllerUnpublishVolume (CSI spec
//! §ControllerPublishVolume, §ControllerUnpublishVolume): fencing at the
//! target. Publishing to a node makes the target admit exactly that node's
//! initiator ([`crate::initiator_name`]); unpublishing removes it, and the
//! target closes the node's sessions at once.

use std::collections::HashMap;

use tonic::Status;

use super::{runtime_status, Controller};
use crate::caps::{self, Publish};
use crate::context;
use crate::initiator_name;
use crate::naming::{check_volume_id, node_of_initiator};
use crate::pb::csi::v1 as csi;
use crate::runtime::TargetRuntime;

impl<R: TargetRuntime> Controller<R> {
    pub(super) async fn do_publish(
        &self,
        req: csi::ControllerPublishVolumeRequest,
    ) -> Result<csi::ControllerPublishVolumeResponse, Status> {
        if req.volume_id.is_empty() {
            return Err(Status::invalid_argument("volume_id is empty"));
        }
        if req.node_id.is_empty() {
            return Err(Status::invalid_argument("node_id is empty"));
        }
        let Some(cap) = req.volume_capability.as_ref() else {
            return Err(Status::invalid_argument("volume_capability is required"));
        };
        if let Some(why) = caps::unsupported(cap) {
            return Err(Status::invalid_argument(why));
        }
        let id = &req.volume_id;
        if check_volume_id(id).is_err() {
            return Err(Status::not_found(format!("volume {id} does not exist")));
        }
        if !self.known_nodes.is_empty() && !self.known_nodes.contains(&req.node_id) {
            return Err(Status::not_found(format!(
                "node {} does not exist",
                req.node_id
            )));
        }
        let _busy = self.busy(id)?;
        let view = self.find_volume(id).await;
        if !view.exists() {
            return Err(Status::not_found(format!("volume {id} does not exist")));
        }
        let endpoint = self.target_of(&view).await?;
        let initiator = initiator_name(&req.node_id);
        let current = self.allowed_initiators(&endpoint).await?;
        let endpoint = match caps::publish(&current, &initiator) {
            Publish::Already => endpoint,
            Publish::Conflict(holders) => {
                let nodes: Vec<String> = holders
                    .iter()
                    .map(|h| node_of_initiator(h).unwrap_or_else(|| h.clone()))
                    .collect();
                return Err(Status::failed_precondition(format!(
                    "volume {id} is published to {nodes:?}: unpublish it there first"
                )));
            }
            Publish::Admit => {
                let status = self.target_status(&endpoint).await?;
                let spec = Self::respec(id, &status, vec![initiator.clone()]);
                let endpoint = self
                    .runtime
                    .ensure_target(&spec)
                    .await
                    .map_err(runtime_status)?;
                tracing::info!(volume = %id, node = %req.node_id, %initiator, "volume published");
                endpoint
            }
        };
        Ok(csi::ControllerPublishVolumeResponse {
            publish_context: HashMap::from([
                (context::PORTAL.to_owned(), endpoint.portal),
                (context::IQN.to_owned(), endpoint.iqn),
                (context::LUN.to_owned(), "0".to_owned()),
                (
                    context::TARGET_MGMT.to_owned(),
                    endpoint
                        .mgmt
                        .strip_prefix("http://")
                        .unwrap_or(&endpoint.mgmt)
                        .to_owned(),
                ),
            ]),
        })
    }

    pub(super) async fn do_unpublish(
        &self,
        req: csi::ControllerUnpublishVolumeRequest,
    ) -> Result<csi::ControllerUnpublishVolumeResponse, Status> {
        if req.volume_id.is_empty() {
            return Err(Status::invalid_argument("volume_id is empty"));
        }
        let id = &req.volume_id;
        // A volume or node we do not know is not published: done (spec:
        // "SHOULD return 0 OK" when it can be regarded as unpublished).
        if check_volume_id(id).is_err() {
            return Ok(csi::ControllerUnpublishVolumeResponse {});
        }
        let _busy = self.busy(id)?;
        let Some(endpoint) = self.runtime.find_target(id).await.map_err(runtime_status)? else {
            return Ok(csi::ControllerUnpublishVolumeResponse {});
        };
        let current = self.allowed_initiators(&endpoint).await?;
        let gone = (!req.node_id.is_empty()).then(|| initiator_name(&req.node_id));
        let remaining = caps::unpublish(&current, gone.as_deref());
        if remaining == current.initiators && !current.allow_any {
            return Ok(csi::ControllerUnpublishVolumeResponse {});
        }
        let status = self.target_status(&endpoint).await?;
        let spec = Self::respec(id, &status, remaining);
        self.runtime
            .ensure_target(&spec)
            .await
            .map_err(runtime_status)?;
        tracing::info!(volume = %id, node = %req.node_id, "volume unpublished");
        Ok(csi::ControllerUnpublishVolumeResponse {})
    }
}
