//! Clients of the management APIs the controller drives: the replica
//! daemons' `ReplicaManager` (one per pool) and the targets'
//! `TargetManager`.
//!
//! Every connection is secured by the process's [`Security`]: mutual TLS
//! with its own certificate (the controller's is an admin identity, the
//! node plugin's a reader), and the server must present the role it is
//! dialled as (a replica daemon's or a target's certificate), or plaintext
//! when the operator chose `--insecure-plaintext`.
//!
//! Every call is bounded: a dial timeout (TCP and TLS handshake) and a call
//! timeout from [`crate::limits`]; a daemon that does not answer in time is
//! UNAVAILABLE, never a hang of the CSI call. Errors keep the daemon's
//! gRPC code and say which daemon answered.

use std::future::Future;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use cstor_mgmt::v1::replica_manager_client::ReplicaManagerClient;
use cstor_mgmt::v1::target_manager_client::TargetManagerClient;
use cstor_tls::{Role, Security};
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic::Status;

use crate::limits::{MGMT_CALL_TIMEOUT, MGMT_CONNECT_TIMEOUT};

/// A replica daemon: its management API and the data address targets
/// dial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolAddr {
    pub mgmt: SocketAddr,
    pub data: SocketAddr,
}

impl FromStr for PoolAddr {
    type Err = String;

    /// `MGMT_ADDR=DATA_ADDR`, e.g. `10.0.0.5:7601=10.0.0.5:7600`.
    fn from_str(text: &str) -> Result<Self, String> {
        let (mgmt, data) = text
            .split_once('=')
            .ok_or_else(|| format!("pool {text:?} is not MGMT_ADDR=DATA_ADDR"))?;
        let addr = |what: &str, a: &str| {
            a.trim()
                .parse::<SocketAddr>()
                .map_err(|e| format!("pool {text:?}: {what} address {a:?}: {e}"))
        };
        Ok(PoolAddr {
            mgmt: addr("management", mgmt)?,
            data: addr("data", data)?,
        })
    }
}

/// How this process dials the management APIs: cheap to clone.
#[derive(Debug, Clone)]
pub struct Clients {
    security: Security,
}

impl Clients {
    pub fn new(security: Security) -> Self {
        Clients { security }
    }

    /// The security every connection gets.
    pub fn security(&self) -> &Security {
        &self.security
    }

    /// Dials `addr` (`host:port` or `http://host:port`) within the dial
    /// timeout; the server must present a certificate of role `role`.
    async fn channel(&self, addr: &str, role: Role) -> Result<Channel, Status> {
        let expect = [role];
        let dial = cstor_tls::grpc::channel(addr, &self.security, &expect);
        match tokio::time::timeout(MGMT_CONNECT_TIMEOUT, dial).await {
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(e)) => Err(Status::unavailable(format!(
                "cannot reach the {} at {addr}: {}",
                role_name(role),
                error_chain(&e)
            ))),
            Err(_) => Err(Status::unavailable(format!(
                "cannot reach the {} at {addr}: no connection within {MGMT_CONNECT_TIMEOUT:?}",
                role_name(role)
            ))),
        }
    }

    /// A client of the replica daemon whose management API is at `addr`.
    pub async fn replica(&self, addr: SocketAddr) -> Result<ReplicaManagerClient<Channel>, Status> {
        Ok(ReplicaManagerClient::new(
            self.channel(&addr.to_string(), Role::Replica).await?,
        ))
    }

    /// A client of the target whose management API is at `url`.
    pub async fn target(&self, url: &str) -> Result<TargetManagerClient<Channel>, Status> {
        Ok(TargetManagerClient::new(
            self.channel(url, Role::Target).await?,
        ))
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Replica => "replica daemon's management API",
        Role::Target => "target's management API",
        Role::Admin | Role::Reader => "management client",
    }
}

/// An error with its sources, so a TLS refusal (unknown CA, wrong role,
/// expired certificate) shows through the transport's wrapping.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = e.source();
    }
    text
}

/// Runs one management call within `timeout`, naming `daemon` in errors.
pub async fn call<T>(
    daemon: &str,
    timeout: Duration,
    fut: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(Status::new(
            status.code(),
            format!("{daemon}: {}", status.message()),
        )),
        Err(_) => Err(Status::unavailable(format!(
            "{daemon} did not answer within {timeout:?}"
        ))),
    }
}

/// Runs `f` against every pool at once (each with its own handle on
/// `clients`); answers in pool order.
pub async fn on_every_pool<T, F, Fut>(
    clients: &Clients,
    pools: &[PoolAddr],
    f: F,
) -> Vec<Result<T, Status>>
where
    T: Send + 'static,
    F: Fn(Clients, PoolAddr) -> Fut,
    Fut: Future<Output = Result<T, Status>> + Send + 'static,
{
    let mut set = JoinSet::new();
    for (i, pool) in pools.iter().enumerate() {
        let fut = f(clients.clone(), *pool);
        set.spawn(async move { (i, fut.await) });
    }
    let mut answers: Vec<Option<Result<T, Status>>> = (0..pools.len()).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((i, answer)) => {
                if let Some(slot) = answers.get_mut(i) {
                    *slot = Some(answer);
                }
            }
            Err(e) => tracing::warn!(error = %e, "pool query task failed"),
        }
    }
    answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Err(Status::internal("pool query task failed"))))
        .collect()
}

/// The default timeout for calls that do no quorum work.
pub const CALL: Duration = MGMT_CALL_TIMEOUT;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_addresses_parse_as_mgmt_then_data() {
        let p: PoolAddr = "127.0.0.1:7601=127.0.0.1:7600".parse().unwrap();
        assert_eq!(p.mgmt.port(), 7601);
        assert_eq!(p.data.port(), 7600);
        assert!("127.0.0.1:7601".parse::<PoolAddr>().is_err());
        assert!("x=127.0.0.1:1".parse::<PoolAddr>().is_err());
    }
}
