//! `cstor csi pool-agent`: the replica DaemonSet's init container. It reads
//! the `CStorPool` of its node, creates the pool from it once (`cstor
//! replica init`), and records the pool's devices in a file the replica
//! container reads its `--pool-path`s from (deploy/cstor-args); it reports
//! what it did in the object's status (field manager [`AGENT_MANAGER`]).
//!
//! Invariants:
//! - A pool is created once: the record file is written only after
//!   `replica init` succeeded, and `replica init` refuses a device that
//!   already holds a pool anyway.
//! - The spec is checked before anything runs ([`plan`], pure): devices or
//!   a file, not both, not neither; a file name with no `/`; sizes cstor
//!   parses.
//! - A device added to the spec grows the pool at the agent's next run
//!   (the replica pod's next start: the daemon does not serve the pool
//!   meanwhile): `cstor replica add-device`, one device at a time, each
//!   recorded once added (the command is a no-op for a device already
//!   added, so a run cut short between the two is finished by the next).
//!   A device that cannot be added is reported in `status.pendingDevices`
//!   with the command's error, and the pool runs on its recorded devices.
//!   A device removed from the spec stays in the pool (a pool cannot
//!   shrink), with a message.

use std::path::{Path, PathBuf};

use clap::Args;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;

use super::crd::{CStorPool, CStorPoolSpec};
use super::rbac::{ApiCall, Scope};

/// Field manager of the agent's part of a pool's status.
pub const AGENT_MANAGER: &str = "cstor-pool-agent";

/// The agent's API calls, for the RBAC test (`rbac.rs`).
pub const CALLS: &[ApiCall] = &[
    // Its node's pool, by the field selector spec.node.
    ApiCall::new(Scope::Cluster, "cstor.openebs.io", "cstorpools", "list"),
    ApiCall::new(
        Scope::Cluster,
        "cstor.openebs.io",
        "cstorpools/status",
        "patch",
    ),
];

/// Name of the record of the pool's devices under the host directory.
pub const RECORD: &str = "pool.paths";

#[derive(Debug, Args)]
pub struct PoolAgentArgs {
    /// This node's name (the CStorPool whose spec.node it is).
    #[arg(long, env = "NODE_NAME")]
    pub node: String,
    /// Pool name of the replica daemon (its certificate names it).
    #[arg(long, env = "CSTOR_POOL")]
    pub pool: String,
    /// Host directory of the pool's state and file-backed devices.
    #[arg(long, default_value = "/var/lib/cstor")]
    pub host_dir: PathBuf,
    /// The replica daemon's management address, reported in the status so
    /// that the controller finds the pool (e.g. $(HOST_IP):7601).
    #[arg(long)]
    pub mgmt_address: String,
    /// Chunk size when the spec names none.
    #[arg(long, default_value = "64KiB")]
    pub chunk_size: String,
    /// The cstor executable that creates the pool (default: this one).
    #[arg(long, env = "CSTOR_EXE")]
    pub cstor_exe: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AgentError {
    #[error(
        "no CStorPool has spec.node {0}: create one for this node (docs/deploy.md, \"Pools\")"
    )]
    NoPool(String),
    #[error("CStorPools {names:?} all have spec.node {node}: keep one")]
    TwoPools { node: String, names: Vec<String> },
    #[error("CStorPool {0}: give spec.devices or spec.file")]
    NoBacking(String),
    #[error("CStorPool {0}: give spec.devices or spec.file, not both")]
    BothBackings(String),
    #[error("CStorPool {pool}: file name {name:?} must be a plain name (no '/', not '.' or '..')")]
    FileName { pool: String, name: String },
    #[error("CStorPool {pool}: device {device:?} must be an absolute path")]
    DevicePath { pool: String, device: String },
    #[error("CStorPool {pool}: {what} {text:?}: {why}")]
    Size {
        pool: String,
        what: &'static str,
        text: String,
        why: String,
    },
    #[error("{path}: {why}")]
    Record { path: String, why: String },
    #[error("`cstor replica` failed: {0}")]
    Init(String),
    #[error("Kubernetes API: {0}")]
    Kube(String),
}

/// What to do with a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Create it with these `cstor replica init` arguments, then record
    /// `paths` (the pool's devices in order).
    Create {
        args: Vec<String>,
        paths: Vec<String>,
    },
    /// It exists on `paths`; `pending` devices of the spec are not in it,
    /// `dropped` ones are in it and no longer in the spec.
    Exists {
        paths: Vec<String>,
        pending: Vec<String>,
        dropped: Vec<String>,
    },
}

/// The plan for pool `name` with `spec`, given the recorded devices of an
/// existing pool (`None`: not created yet). Pure.
pub fn plan(
    name: &str,
    spec: &CStorPoolSpec,
    recorded: Option<Vec<String>>,
    pool: &str,
    host_dir: &Path,
    default_chunk: &str,
) -> Result<Plan, AgentError> {
    let wanted: Vec<String> = match (&spec.file, spec.devices.is_empty()) {
        (Some(_), false) => return Err(AgentError::BothBackings(name.into())),
        (None, true) => return Err(AgentError::NoBacking(name.into())),
        (None, false) => {
            for d in &spec.devices {
                if !d.starts_with('/') {
                    return Err(AgentError::DevicePath {
                        pool: name.into(),
                        device: d.clone(),
                    });
                }
            }
            spec.devices.clone()
        }
        (Some(file), true) => {
            if file.name.contains('/')
                || file.name.is_empty()
                || file.name == "."
                || file.name == ".."
            {
                return Err(AgentError::FileName {
                    pool: name.into(),
                    name: file.name.clone(),
                });
            }
            vec![host_dir.join(&file.name).display().to_string()]
        }
    };
    if let Some(paths) = recorded {
        let pending = wanted
            .iter()
            .filter(|w| !paths.contains(w))
            .cloned()
            .collect();
        let dropped = paths
            .iter()
            .filter(|p| !wanted.contains(p))
            .cloned()
            .collect();
        return Ok(Plan::Exists {
            paths,
            pending,
            dropped,
        });
    }
    let size = |what: &'static str, text: &str| {
        cstor_mgmt::size::parse_size(text).map_err(|why| AgentError::Size {
            pool: name.into(),
            what,
            text: text.into(),
            why,
        })
    };
    let chunk = spec.chunk_size.as_deref().unwrap_or(default_chunk);
    size("chunk size", chunk)?;
    let mut args = vec![
        "replica".into(),
        "init".into(),
        format!("--pool={pool}"),
        format!("--chunk-size={chunk}"),
    ];
    match &spec.file {
        Some(file) => {
            size("file size", &file.size)?;
            args.push(format!("--file={}", wanted.join("")));
            args.push(format!("--size={}", file.size));
        }
        None => args.extend(wanted.iter().map(|d| format!("--device={d}"))),
    }
    Ok(Plan::Create {
        args,
        paths: wanted,
    })
}

/// The record's devices, one per line; `None` when there is no record.
fn read_record(path: &Path) -> Result<Option<Vec<String>>, AgentError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AgentError::Record {
            path: path.display().to_string(),
            why: e.to_string(),
        }),
    }
}

/// Writes the record atomically (temporary file, fsync, rename).
fn write_record(path: &Path, paths: &[String]) -> Result<(), AgentError> {
    let err = |e: std::io::Error| AgentError::Record {
        path: path.display().to_string(),
        why: e.to_string(),
    };
    let tmp = path.with_extension("tmp");
    let mut text = paths.join("\n");
    text.push('\n');
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)
}

/// Runs `cstor ARGS` (the agent's own executable unless `--cstor-exe`
/// names another); its error output is the error.
async fn run_cstor(args: &PoolAgentArgs, cstor: &[String]) -> Result<(), AgentError> {
    let exe = match &args.cstor_exe {
        Some(exe) => exe.clone(),
        None => std::env::current_exe().map_err(|e| AgentError::Init(e.to_string()))?,
    };
    let out = tokio::process::Command::new(&exe)
        .args(cstor)
        .output()
        .await
        .map_err(|e| AgentError::Init(format!("{}: {e}", exe.display())))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(AgentError::Init(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

/// Runs the agent once: the pool of this node exists and is recorded when
/// it returns Ok.
pub async fn run(args: &PoolAgentArgs) -> Result<(), AgentError> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| AgentError::Kube(e.to_string()))?;
    let pools: Api<CStorPool> = Api::all(client);
    let listed = pools
        .list(&ListParams::default().fields(&format!("spec.node={}", args.node)))
        .await
        .map_err(|e| AgentError::Kube(e.to_string()))?;
    let object = match listed.items.as_slice() {
        [] => return Err(AgentError::NoPool(args.node.clone())),
        [one] => one.clone(),
        many => {
            return Err(AgentError::TwoPools {
                node: args.node.clone(),
                names: many.iter().map(ResourceExt::name_any).collect(),
            })
        }
    };
    let name = object.name_any();
    let record = args.host_dir.join(RECORD);
    let outcome = async {
        let recorded = read_record(&record)?;
        let plan = plan(
            &name,
            &object.spec,
            recorded,
            &args.pool,
            &args.host_dir,
            &args.chunk_size,
        )?;
        match plan {
            Plan::Create { args: init, paths } => {
                run_cstor(args, &init).await?;
                write_record(&record, &paths)?;
                tracing::info!(pool = %name, ?paths, "pool created");
                let message = format!("pool created on {}", paths.join(", "));
                Ok((paths, Vec::new(), message))
            }
            Plan::Exists {
                mut paths,
                pending,
                dropped,
            } => {
                let mut message = "pool exists".to_owned();
                let mut left = Vec::new();
                for device in pending {
                    if !left.is_empty() {
                        // Devices are added in the spec's order.
                        left.push(device);
                        continue;
                    }
                    let mut add = vec!["replica".to_owned(), "add-device".to_owned()];
                    add.extend(paths.iter().map(|p| format!("--pool-path={p}")));
                    add.push(format!("--device={device}"));
                    match run_cstor(args, &add).await {
                        Ok(()) => {
                            paths.push(device.clone());
                            write_record(&record, &paths)?;
                            tracing::info!(pool = %name, %device, "pool grown");
                            message.push_str(&format!("; grown by {device}"));
                        }
                        Err(e) => {
                            message.push_str(&format!("; {device} not added: {e}"));
                            left.push(device);
                        }
                    }
                }
                let pending = left;
                if !dropped.is_empty() {
                    message.push_str(&format!(
                        "; {dropped:?} left the spec but stay in the pool (a pool cannot shrink)"
                    ));
                }
                Ok::<_, AgentError>((paths, pending, message))
            }
        }
    }
    .await;
    let status = match &outcome {
        Ok((paths, pending, message)) => json!({
            "mgmtAddress": args.mgmt_address,
            "devices": paths,
            "pendingDevices": pending,
            "agentMessage": message,
            "agentError": null,
        }),
        Err(e) => json!({ "agentError": e.to_string() }),
    };
    let body = json!({
        "apiVersion": "cstor.openebs.io/v1alpha1",
        "kind": "CStorPool",
        "status": status,
    });
    if let Err(e) = pools
        .patch_status(
            &name,
            &PatchParams::apply(AGENT_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
    {
        tracing::warn!(pool = %name, error = %e, "cannot report in the CStorPool's status");
    }
    outcome.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::crd::PoolFile;

    fn spec(devices: &[&str], file: Option<(&str, &str)>) -> CStorPoolSpec {
        CStorPoolSpec {
            node: "n1".into(),
            devices: devices.iter().map(|d| (*d).to_owned()).collect(),
            file: file.map(|(name, size)| PoolFile {
                name: name.into(),
                size: size.into(),
            }),
            chunk_size: None,
        }
    }

    fn plan_of(s: &CStorPoolSpec, recorded: Option<&[&str]>) -> Result<Plan, AgentError> {
        plan(
            "p1",
            s,
            recorded.map(|r| r.iter().map(|p| (*p).to_owned()).collect()),
            "cstor",
            Path::new("/var/lib/cstor"),
            "64KiB",
        )
    }

    #[test]
    fn a_new_pool_is_created_from_its_devices_or_its_file() {
        assert_eq!(
            plan_of(&spec(&["/dev/sdb", "/dev/sdc"], None), None).unwrap(),
            Plan::Create {
                args: [
                    "replica",
                    "init",
                    "--pool=cstor",
                    "--chunk-size=64KiB",
                    "--device=/dev/sdb",
                    "--device=/dev/sdc"
                ]
                .map(String::from)
                .to_vec(),
                paths: vec!["/dev/sdb".into(), "/dev/sdc".into()],
            }
        );
        let Plan::Create { args, paths } =
            plan_of(&spec(&[], Some(("pool.img", "100GiB"))), None).unwrap()
        else {
            panic!("not a create");
        };
        assert_eq!(paths, ["/var/lib/cstor/pool.img"]);
        assert!(args.contains(&"--file=/var/lib/cstor/pool.img".to_owned()));
        assert!(args.contains(&"--size=100GiB".to_owned()));
    }

    #[test]
    fn an_existing_pool_is_not_created_again_and_added_devices_are_pending() {
        assert_eq!(
            plan_of(&spec(&["/dev/sdb", "/dev/sdc"], None), Some(&["/dev/sdb"])).unwrap(),
            Plan::Exists {
                paths: vec!["/dev/sdb".into()],
                pending: vec!["/dev/sdc".into()],
                dropped: vec![],
            }
        );
        assert_eq!(
            plan_of(&spec(&["/dev/sdc"], None), Some(&["/dev/sdb"])).unwrap(),
            Plan::Exists {
                paths: vec!["/dev/sdb".into()],
                pending: vec!["/dev/sdc".into()],
                dropped: vec!["/dev/sdb".into()],
            }
        );
    }

    #[test]
    fn bad_specs_are_refused_with_what_is_wrong() {
        assert_eq!(
            plan_of(&spec(&[], None), None),
            Err(AgentError::NoBacking("p1".into()))
        );
        assert_eq!(
            plan_of(&spec(&["/dev/sdb"], Some(("a", "1GiB"))), None),
            Err(AgentError::BothBackings("p1".into()))
        );
        for name in ["../etc/x", "a/b", "", "..", "."] {
            assert!(
                matches!(
                    plan_of(&spec(&[], Some((name, "1GiB"))), None),
                    Err(AgentError::FileName { .. })
                ),
                "{name:?}"
            );
        }
        assert!(matches!(
            plan_of(&spec(&["sdb"], None), None),
            Err(AgentError::DevicePath { .. })
        ));
        assert!(matches!(
            plan_of(&spec(&[], Some(("a", "10XB"))), None),
            Err(AgentError::Size { .. })
        ));
        let mut s = spec(&["/dev/sdb"], None);
        s.chunk_size = Some("lots".into());
        assert!(matches!(plan_of(&s, None), Err(AgentError::Size { .. })));
    }

    #[test]
    fn the_record_round_trips_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RECORD);
        assert_eq!(read_record(&path).unwrap(), None);
        write_record(&path, &["/dev/sdb".into(), "/dev/sdc".into()]).unwrap();
        assert_eq!(
            read_record(&path).unwrap(),
            Some(vec!["/dev/sdb".into(), "/dev/sdc".into()])
        );
    }
}
