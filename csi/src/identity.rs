//! The CSI Identity service (CSI spec §Identity Service RPC): who the
//! plugin is, what it serves, and whether it is ready — the controller is
//! ready only when every configured pool's replica daemon answers.

use std::collections::HashMap;

use cstor_mgmt::v1::GetPoolRequest;
use tonic::{Request, Response, Status};

use crate::limits::DRIVER_NAME;
use crate::mgmt::{self, Clients, PoolAddr};
use crate::pb::csi::v1 as csi;
use crate::pb::csi::v1::identity_server::Identity as IdentityRpc;
use crate::pb::csi::v1::plugin_capability::{
    service, volume_expansion, Service, Type, VolumeExpansion,
};

/// The Identity service.
pub struct Identity {
    /// Serves the Controller service (with these pools, reached through
    /// these clients).
    controller: Option<(Clients, Vec<PoolAddr>)>,
}

impl Identity {
    /// `controller`: the pools of the Controller service and how to reach
    /// them, when this process serves it.
    pub fn new(controller: Option<(Clients, Vec<PoolAddr>)>) -> Self {
        Identity { controller }
    }

    /// Whether every pool answers (vacuously false without pools).
    async fn pools_ready(clients: &Clients, pools: &[PoolAddr]) -> bool {
        if pools.is_empty() {
            return false;
        }
        let answers = mgmt::on_every_pool(clients, pools, |clients, pool| async move {
            let mut client = clients.replica(pool.mgmt).await?;
            mgmt::call(
                &format!("replica daemon {}", pool.mgmt),
                mgmt::CALL,
                client.get_pool(GetPoolRequest {}),
            )
            .await
        })
        .await;
        answers.iter().all(Result::is_ok)
    }
}

#[tonic::async_trait]
impl IdentityRpc for Identity {
    async fn get_plugin_info(
        &self,
        _: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: DRIVER_NAME.to_owned(),
            vendor_version: env!("CARGO_PKG_VERSION").to_owned(),
            manifest: HashMap::new(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        let mut capabilities = Vec::new();
        if self.controller.is_some() {
            capabilities.push(csi::PluginCapability {
                r#type: Some(Type::Service(Service {
                    r#type: service::Type::ControllerService as i32,
                })),
            });
        }
        capabilities.push(csi::PluginCapability {
            r#type: Some(Type::VolumeExpansion(VolumeExpansion {
                r#type: volume_expansion::Type::Online as i32,
            })),
        });
        Ok(Response::new(csi::GetPluginCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn probe(
        &self,
        _: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        let ready = match &self.controller {
            Some((clients, pools)) => Self::pools_ready(clients, pools).await,
            None => true,
        };
        Ok(Response::new(csi::ProbeResponse { ready: Some(ready) }))
    }
}
