//! A small CSI Node client for tests (the VM test runs it in the guest):
//! one RPC per invocation over the plugin's unix socket.
//!
//! ```text
//! node_client --endpoint unix:///run/csi.sock wait [--seconds N]
//! node_client ... info
//! node_client ... stage     --volume-id V --staging-path P [--fs ext4|xfs] [--block] [--ro]
//!                           [--flag OPT]... [--context k=v,k=v] [--secret k=v]...
//! node_client ... unstage   --volume-id V --staging-path P
//! node_client ... publish   --volume-id V --staging-path P --target-path T [--block] [--ro]
//! node_client ... unpublish --volume-id V --target-path T
//! node_client ... expand    --volume-id V --volume-path P [--required-bytes N]
//! node_client ... stats     --volume-id V --volume-path P
//! ```
//!
//! Output: `ok` (plus `key=value` words for expand, stats, info); an RPC
//! error prints `error CODE: message` (CODE as in the gRPC spec, e.g.
//! `NOT_FOUND`) and exits 2; bad usage exits 64.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use cstor_csi::pb::csi::v1 as pb;
use hyper_util::rt::TokioIo;
use pb::node_client::NodeClient;
use pb::volume_capability::{access_mode::Mode, AccessMode, AccessType, BlockVolume, MountVolume};
use tonic::transport::{Channel, Endpoint};

/// Parsed `--key value` options; flags without a value map to "".
struct Opts {
    values: Vec<(String, String)>,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, String> {
        const FLAGS: [&str; 2] = ["--block", "--ro"];
        let mut values = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if !a.starts_with("--") {
                return Err(format!("unexpected argument {a:?}"));
            }
            let value = if FLAGS.contains(&a.as_str()) {
                String::new()
            } else {
                it.next().ok_or(format!("{a} needs a value"))?.clone()
            };
            values.push((a.trim_start_matches("--").to_owned(), value));
        }
        Ok(Opts { values })
    }
    fn get(&self, key: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    fn need(&self, key: &str) -> Result<String, String> {
        self.get(key)
            .map(str::to_owned)
            .ok_or(format!("--{key} is required"))
    }
    fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.values
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
}

fn key_values<'a>(items: impl Iterator<Item = &'a str>) -> Result<HashMap<String, String>, String> {
    let mut map = HashMap::new();
    for kv in items {
        let (k, v) = kv
            .split_once('=')
            .ok_or(format!("{kv:?} is not key=value"))?;
        map.insert(k.to_owned(), v.to_owned());
    }
    Ok(map)
}

fn capability(o: &Opts) -> pb::VolumeCapability {
    let mode = if o.has("ro") {
        Mode::SingleNodeReaderOnly
    } else {
        Mode::SingleNodeWriter
    };
    pb::VolumeCapability {
        access_mode: Some(AccessMode { mode: mode as i32 }),
        access_type: Some(if o.has("block") {
            AccessType::Block(BlockVolume {})
        } else {
            AccessType::Mount(MountVolume {
                fs_type: o.get("fs").unwrap_or("").to_owned(),
                mount_flags: o.all("flag").map(str::to_owned).collect(),
                ..MountVolume::default()
            })
        }),
    }
}

async fn connect(endpoint: &str) -> Result<NodeClient<Channel>, String> {
    let path = endpoint
        .strip_prefix("unix://")
        .ok_or(format!("endpoint {endpoint:?} is not unix:///PATH"))?
        .to_owned();
    // The URI is ignored by the connector; tonic needs a syntactically valid one.
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower_service_fn(path))
        .await
        .map_err(|e| format!("cannot connect to {endpoint}: {e}"))?;
    Ok(NodeClient::new(channel))
}

/// A connector that dials the unix socket at `path` whatever the URI.
fn tower_service_fn(path: String) -> UnixConnector {
    UnixConnector { path }
}

#[derive(Clone)]
struct UnixConnector {
    path: String,
}

impl tower_service::Service<http::Uri> for UnixConnector {
    type Response = TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;
    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let path = self.path.clone();
        Box::pin(async move { Ok(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) })
    }
}

enum Failure {
    Usage(String),
    Rpc(tonic::Status),
}

impl From<String> for Failure {
    fn from(s: String) -> Self {
        Failure::Usage(s)
    }
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        Failure::Rpc(s)
    }
}

async fn run(args: &[String]) -> Result<String, Failure> {
    let (endpoint, rest) = match args {
        [flag, endpoint, rest @ ..] if flag == "--endpoint" => (endpoint.as_str(), rest),
        _ => {
            return Err(
                "usage: node_client --endpoint unix:///PATH COMMAND [OPTIONS]"
                    .to_owned()
                    .into(),
            )
        }
    };
    let (command, rest) = rest.split_first().ok_or("no command".to_owned())?;
    let o = Opts::parse(rest)?;
    if command == "wait" {
        let seconds: u64 = o
            .get("seconds")
            .unwrap_or("30")
            .parse()
            .map_err(|_| "bad --seconds".to_owned())?;
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            if let Ok(mut c) = connect(endpoint).await {
                if c.node_get_info(pb::NodeGetInfoRequest {}).await.is_ok() {
                    return Ok("ok".into());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("{endpoint} not serving after {seconds} s").into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut c = connect(endpoint).await?;
    let out = match command.as_str() {
        "info" => {
            let i = c
                .node_get_info(pb::NodeGetInfoRequest {})
                .await?
                .into_inner();
            let topo = i.accessible_topology.unwrap_or_default().segments;
            let mut topo: Vec<_> = topo.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
            topo.sort();
            format!("ok node_id={} topology={}", i.node_id, topo.join(","))
        }
        "stage" => {
            let ctx = key_values(
                o.get("context")
                    .unwrap_or("")
                    .split(',')
                    .filter(|s| !s.is_empty()),
            )?;
            c.node_stage_volume(pb::NodeStageVolumeRequest {
                volume_id: o.need("volume-id")?,
                staging_target_path: o.need("staging-path")?,
                volume_capability: Some(capability(&o)),
                secrets: key_values(o.all("secret"))?,
                volume_context: ctx,
                ..Default::default()
            })
            .await?;
            "ok".into()
        }
        "unstage" => {
            c.node_unstage_volume(pb::NodeUnstageVolumeRequest {
                volume_id: o.need("volume-id")?,
                staging_target_path: o.need("staging-path")?,
            })
            .await?;
            "ok".into()
        }
        "publish" => {
            c.node_publish_volume(pb::NodePublishVolumeRequest {
                volume_id: o.need("volume-id")?,
                staging_target_path: o.need("staging-path")?,
                target_path: o.need("target-path")?,
                volume_capability: Some(capability(&o)),
                readonly: o.has("ro"),
                ..Default::default()
            })
            .await?;
            "ok".into()
        }
        "unpublish" => {
            c.node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
                volume_id: o.need("volume-id")?,
                target_path: o.need("target-path")?,
            })
            .await?;
            "ok".into()
        }
        "expand" => {
            let required = match o.get("required-bytes") {
                None => None,
                Some(n) => Some(pb::CapacityRange {
                    required_bytes: n.parse().map_err(|_| "bad --required-bytes".to_owned())?,
                    limit_bytes: 0,
                }),
            };
            let r = c
                .node_expand_volume(pb::NodeExpandVolumeRequest {
                    volume_id: o.need("volume-id")?,
                    volume_path: o.need("volume-path")?,
                    capacity_range: required,
                    ..Default::default()
                })
                .await?
                .into_inner();
            format!("ok capacity_bytes={}", r.capacity_bytes)
        }
        "stats" => {
            let r = c
                .node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
                    volume_id: o.need("volume-id")?,
                    volume_path: o.need("volume-path")?,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let mut words = vec!["ok".to_owned()];
            for u in &r.usage {
                let unit = if u.unit == pb::volume_usage::Unit::Inodes as i32 {
                    "inodes"
                } else {
                    "bytes"
                };
                words.push(format!(
                    "{unit}_total={} {unit}_used={} {unit}_available={}",
                    u.total, u.used, u.available
                ));
            }
            let cond = r.volume_condition.unwrap_or_default();
            words.push(format!("abnormal={}", cond.abnormal));
            // Last: the condition message, spaces and all.
            words.push(format!("message={}", cond.message));
            words.join(" ")
        }
        other => return Err(format!("unknown command {other:?}").into()),
    };
    Ok(out)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args).await {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(Failure::Usage(e)) => {
            eprintln!("node_client: {e}");
            ExitCode::from(64)
        }
        Err(Failure::Rpc(s)) => {
            let code = format!("{:?}", s.code());
            // gRPC spec names: NotFound -> NOT_FOUND.
            let mut name = String::new();
            for (i, ch) in code.chars().enumerate() {
                if ch.is_uppercase() && i > 0 {
                    name.push('_');
                }
                name.push(ch.to_ascii_uppercase());
            }
            println!("error {name}: {}", s.message());
            ExitCode::from(2)
        }
    }
}
