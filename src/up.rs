//! `cstor up`: the embedded default. Creates file-backed pools under a
//! state directory, runs one replica daemon per pool and an iSCSI target as
//! separate OS processes on loopback (so that a replica can be killed
//! alone), restarts a child that dies (as Kubernetes would), and stops them
//! all cleanly on Ctrl-C or SIGTERM. Running it again on the same directory
//! brings the same data back.
//!
//! Every link between them is mutual TLS (docs/security.md): on its first
//! start `up` creates a CA in `DIR/tls/ca` and issues a TLS directory to
//! each child (`DIR/tls/replica-N`, `DIR/tls/target`) and to the
//! operator (`DIR/tls/admin`, `DIR/tls/reader`); later starts reuse them,
//! issuing anew only what is missing, names another identity, comes from
//! another CA or is about to expire ([`RENEW_BEFORE`]). `up` itself calls
//! the replicas' management APIs as admin. `--insecure-plaintext` runs
//! everything without TLS, by explicit choice only.
//!
//! The children's pids, addresses, TLS directories and logs are in
//! `DIR/cluster.json` and `DIR/logs/`; `cstor ctl --state-dir DIR` reads
//! it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use cstor_mgmt::size::{format_size, parse_size};
use cstor_mgmt::v1::replica_manager_client::ReplicaManagerClient;
use cstor_mgmt::v1::{CreateVolumeRequest, Provisioning};
use cstor_tls::issue::{CA_KEY_FILE, CERT_VALIDITY};
use cstor_tls::{Ca, Credentials, Identity, Role, Security, Validity};
use serde_json::json;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long a child may take to open its port.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Restart backoff of a child that keeps dying (doubles up to the max).
const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(500);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A child that ran this long is considered healthy again (backoff reset).
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// Children get this long to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// A certificate of the state directory that expires within this is
/// issued anew at start (`up` runs for weeks at most between starts).
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// The name of the CA `up` creates.
const CA_NAME: &str = "cstor up";

/// Where the TLS directories live under the state directory, relative to
/// it (`cstor ctl --state-dir` finds the admin one here too).
pub const TLS_SUBDIR: &str = "tls";
/// The CA's directory under [`TLS_SUBDIR`].
pub const CA_SUBDIR: &str = "ca";
/// The operator's admin identity under [`TLS_SUBDIR`].
pub const ADMIN_SUBDIR: &str = "admin";
/// The read-only identity under [`TLS_SUBDIR`].
pub const READER_SUBDIR: &str = "reader";
/// The target's identity under [`TLS_SUBDIR`].
pub const TARGET_SUBDIR: &str = "target";

/// Where the target persists its scrub cursor, relative to the state
/// directory (`cstor target --scrub-state-dir`).
pub const SCRUB_SUBDIR: &str = "scrub";
/// The cluster description `up` writes into the state directory.
pub const CLUSTER_FILE: &str = "cluster.json";

/// The environment variables of the link-security flags: a child gets its
/// flag explicitly, so these are removed from what it inherits (a
/// `CSTOR_TLS_DIR` of the operator's shell would contradict it).
const SECURITY_ENV: [&str; 2] = ["CSTOR_TLS_DIR", "CSTOR_INSECURE_PLAINTEXT"];

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Directory holding the pools, logs and cluster.json (default:
    /// $XDG_DATA_HOME/cstor, else ~/.local/share/cstor).
    #[arg(long, env = "CSTOR_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Number of replica daemons (1 to 5).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=5))]
    replicas: u8,
    /// Volume size (thin), e.g. 1GiB.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    size: u64,
    /// Volume name.
    #[arg(long, default_value = "vol1")]
    volume: String,
    /// iSCSI portal of the target.
    #[arg(long, default_value = "127.0.0.1:3260")]
    iscsi_listen: SocketAddr,
    /// First port of the replicas: replica i serves data on BASE+10i, its
    /// management API on BASE+10i+1 and its metrics on BASE+10i+2, the
    /// target its management API on BASE+100 and its metrics on BASE+101
    /// (all loopback).
    #[arg(long, default_value_t = 7600)]
    base_port: u16,
    /// Run every link without authentication or encryption (replica links,
    /// rebuilds, management APIs): no CA, no certificates, any local
    /// process may do anything. Never the default; printed as a warning.
    #[arg(long, env = "CSTOR_INSECURE_PLAINTEXT")]
    insecure_plaintext: bool,
    /// Create new pools without block checksums (reads not verified, rot
    /// served as data): only to measure what checksums cost. Pools that
    /// exist keep what they were created with.
    #[arg(long)]
    no_block_checksums: bool,
}

impl UpArgs {
    fn target_mgmt(&self) -> Result<SocketAddr> {
        loopback(u32::from(self.base_port) + 100)
    }

    /// Prometheus endpoint of the target.
    fn target_metrics(&self) -> Result<SocketAddr> {
        loopback(u32::from(self.base_port) + 101)
    }

    /// Prometheus endpoint of replica `i`.
    fn replica_metrics(&self, i: u32) -> Result<SocketAddr> {
        loopback(u32::from(self.base_port) + 10 * i + 2)
    }
}

/// How `up` knows a child is up.
enum Ready {
    /// The address accepts TCP connections (the target's iSCSI portal).
    Listening(SocketAddr),
    /// A management API at this address answers a secured connection
    /// (handshake included) with a server of this role.
    Mgmt(SocketAddr, Role),
}

/// One supervised child process.
struct Proc {
    name: String,
    args: Vec<String>,
    log: PathBuf,
    /// What answers once it is up.
    ready: Ready,
    child: Option<Child>,
    started: tokio::time::Instant,
    backoff: Duration,
    restarts: u32,
    /// Set while a dead child waits for its restart.
    restart_at: Option<tokio::time::Instant>,
}

impl Proc {
    async fn spawn(&mut self) -> Result<()> {
        let exe = cstor_exe()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let mut command = Command::new(exe);
        for var in SECURITY_ENV {
            command.env_remove(var);
        }
        let child = command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", self.name))?;
        self.child = Some(child);
        self.started = tokio::time::Instant::now();
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    async fn wait_ready(&mut self, security: &Security) -> Result<()> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            let answer = match self.ready {
                Ready::Listening(addr) => tokio::net::TcpStream::connect(addr)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
                Ready::Mgmt(addr, role) => {
                    cstor_tls::grpc::channel(&addr.to_string(), security, &[role])
                        .await
                        .map(drop)
                        .map_err(|e| error_chain(&e))
                }
            };
            let last_error = match answer {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "{} exited with {status} while starting; see {}",
                        self.name,
                        self.log.display()
                    );
                }
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{} did not answer within {START_TIMEOUT:?} ({last_error}); see {}",
                    self.name,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then SIGKILL after the grace period.
    async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            terminate(pid);
        }
        match tokio::time::timeout(STOP_GRACE, child.wait()).await {
            Ok(Ok(status)) => info!(child = %self.name, %status, "stopped"),
            _ => {
                warn!(child = %self.name, "did not stop in time; killing it");
                let _ = child.kill().await;
            }
        }
    }
}

/// Sends SIGTERM to `pid`.
#[allow(unsafe_code)]
fn terminate(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers; it touches no memory of ours.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

fn default_state_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("cstor"));
    }
    let home =
        std::env::var_os("HOME").context("neither --state-dir, XDG_DATA_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".local/share/cstor"))
}

/// An error and its sources on one line. A source that only repeats what
/// its wrapper already said (tonic's transport errors show their cause
/// themselves) is left out.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(err) = source {
        let part = err.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = err.source();
    }
    text
}

/// The TLS directories of a state directory, as `up` lays them out.
#[derive(Debug, Clone)]
pub struct TlsDirs {
    pub ca: PathBuf,
    pub admin: PathBuf,
    pub reader: PathBuf,
    pub target: PathBuf,
    /// Replica `i`'s, in order.
    pub replicas: Vec<PathBuf>,
}

impl TlsDirs {
    fn of(state: &Path, replicas: u32) -> TlsDirs {
        let tls = state.join(TLS_SUBDIR);
        TlsDirs {
            ca: tls.join(CA_SUBDIR),
            admin: tls.join(ADMIN_SUBDIR),
            reader: tls.join(READER_SUBDIR),
            target: tls.join(TARGET_SUBDIR),
            replicas: (0..replicas).map(|i| tls.join(replica_name(i))).collect(),
        }
    }
}

/// Replica `i`'s name: its log, its TLS directory, its cluster.json entry.
fn replica_name(i: u32) -> String {
    format!("replica-{i}")
}

/// Replica `i`'s pool name (its `--pool`, and the pool its certificate
/// names).
fn pool_name(i: u32) -> String {
    format!("pool-{i}")
}

/// Creates the CA on first use and issues every TLS directory that is not
/// usable as it is (see [`usable`]).
fn ensure_tls(dirs: &TlsDirs, volume: &str) -> Result<()> {
    let fresh_ca = !dirs.ca.join(CA_KEY_FILE).exists();
    let ca = if fresh_ca {
        let ca = crate::certs::create_ca(
            &dirs.ca,
            CA_NAME,
            Validity::from_now(cstor_tls::issue::CA_VALIDITY),
        )?;
        info!(dir = %dirs.ca.display(), "created the cluster CA");
        ca
    } else {
        Ca::load(&dirs.ca).with_context(|| format!("cannot use the CA in {}", dirs.ca.display()))?
    };
    let mut wanted = vec![
        (dirs.admin.clone(), Identity::Admin),
        (dirs.reader.clone(), Identity::Reader),
        (
            dirs.target.clone(),
            Identity::Target {
                volumes: vec![volume.to_owned()],
            },
        ),
    ];
    for (i, dir) in (0u32..).zip(&dirs.replicas) {
        wanted.push((dir.clone(), Identity::Replica { pool: pool_name(i) }));
    }
    for (dir, identity) in wanted {
        let check = if fresh_ca {
            Err("the CA is new")
        } else {
            usable(&dir, &identity, &ca)
        };
        if let Err(why) = check {
            ca.issue_dir(&identity, Validity::from_now(CERT_VALIDITY), &dir)
                .with_context(|| format!("cannot issue a certificate into {}", dir.display()))?;
            info!(dir = %dir.display(), %identity, why, "issued a certificate");
        }
    }
    Ok(())
}

/// Whether the TLS directory `dir` holds a certificate for `identity` from
/// `ca` that is good for at least [`RENEW_BEFORE`]; if not, why.
fn usable(dir: &Path, identity: &Identity, ca: &Ca) -> Result<(), &'static str> {
    let credentials = Credentials::load(dir).map_err(|_| "missing or unreadable")?;
    if credentials.identity() != *identity {
        return Err("it named another identity");
    }
    // Issued by `up` from this CA, the directory trusts it; one that does
    // not was issued by another CA (the CA was replaced) and would not be
    // trusted by its peers either.
    let trusted =
        std::fs::read_to_string(dir.join(cstor_tls::issue::CA_FILE)).map_err(|_| "no ca.crt")?;
    if !trusted.contains(ca.cert_pem().trim()) {
        return Err("it trusts another CA");
    }
    let left = credentials
        .not_after()
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    if left < RENEW_BEFORE {
        return Err("it expires soon");
    }
    Ok(())
}

fn loopback(port: u32) -> Result<SocketAddr> {
    let port = u16::try_from(port).context("--base-port leaves no room for the replicas")?;
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

pub async fn run(args: UpArgs, shutdown: CancellationToken) -> Result<()> {
    let dir = match &args.state_dir {
        Some(dir) => dir.clone(),
        None => default_state_dir()?,
    };
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let exe = cstor_exe()?;
    // Link security: a CA and a TLS directory per process, or plaintext by
    // the operator's choice.
    let tls = if args.insecure_plaintext {
        warn!(
            "--insecure-plaintext: every link of this cluster is unauthenticated and unencrypted"
        );
        None
    } else {
        let dirs = TlsDirs::of(&dir, u32::from(args.replicas));
        ensure_tls(&dirs, &args.volume)?;
        Some(dirs)
    };
    // `up`'s own management calls, as admin.
    let security = match &tls {
        Some(dirs) => Security::Tls(
            Credentials::load(&dirs.admin)
                .with_context(|| format!("cannot use {}", dirs.admin.display()))?,
        ),
        None => Security::Plaintext,
    };
    // Pools: created once, reused by every later `cstor up` on this dir.
    let pool_size = args.size.saturating_mul(2).max(256 << 20);
    let mut replicas = Vec::new();
    for i in 0..u32::from(args.replicas) {
        let pool = dir.join(format!("pool-{i}.img"));
        if !pool.exists() {
            let status = std::process::Command::new(&exe)
                .args(["replica", "init", "--pool", &pool_name(i), "--file"])
                .arg(&pool)
                .args(["--size", &pool_size.to_string()])
                .args(args.no_block_checksums.then_some("--no-block-checksums"))
                .stdout(Stdio::null())
                .status()
                .context("cannot run cstor replica init")?;
            if !status.success() {
                bail!("cstor replica init failed for {}", pool.display());
            }
            info!(pool = %pool.display(), size = %format_size(pool_size), "created pool");
        }
        let data = loopback(u32::from(args.base_port) + 10 * i)?;
        let mgmt = loopback(u32::from(args.base_port) + 10 * i + 1)?;
        replicas.push((i, pool, data, mgmt));
    }
    let mut procs: Vec<Proc> = replicas
        .iter()
        .map(|(i, pool, data, mgmt)| {
            let mut child_args: Vec<String> = vec![
                "replica".into(),
                "run".into(),
                "--pool".into(),
                pool_name(*i),
                "--pool-path".into(),
                pool.display().to_string(),
                "--listen".into(),
                data.to_string(),
                "--mgmt-listen".into(),
                mgmt.to_string(),
                "--metrics-listen".into(),
                args.replica_metrics(*i)?.to_string(),
            ];
            child_args.extend(security_args(
                tls.as_ref()
                    .and_then(|d| d.replicas.get(*i as usize))
                    .map(PathBuf::as_path),
            ));
            Ok(Proc {
                name: replica_name(*i),
                args: child_args,
                log: logs.join(format!("{}.log", replica_name(*i))),
                ready: Ready::Mgmt(*mgmt, Role::Replica),
                child: None,
                started: tokio::time::Instant::now(),
                backoff: RESTART_BACKOFF_MIN,
                restarts: 0,
                restart_at: None,
            })
        })
        .collect::<Result<_>>()?;
    for p in &mut procs {
        p.spawn().await?;
    }
    for p in &mut procs {
        p.wait_ready(&security).await?;
    }
    for (_, _, _, mgmt) in &replicas {
        ensure_volume(&security, *mgmt, &args.volume, args.size).await?;
    }
    let mut target_args = vec![
        "target".to_string(),
        "--listen".into(),
        args.iscsi_listen.to_string(),
        "--mgmt-listen".into(),
        args.target_mgmt()?.to_string(),
        "--metrics-listen".into(),
        args.target_metrics()?.to_string(),
        "--volume".into(),
        args.volume.clone(),
        "--scrub-state-dir".into(),
        dir.join(SCRUB_SUBDIR).to_string_lossy().into_owned(),
    ];
    for (_, _, data, _) in &replicas {
        target_args.push("--replica".into());
        target_args.push(data.to_string());
    }
    target_args.extend(security_args(tls.as_ref().map(|d| d.target.as_path())));
    procs.push(Proc {
        name: "target".into(),
        args: target_args,
        log: logs.join("target.log"),
        ready: Ready::Listening(args.iscsi_listen),
        child: None,
        started: tokio::time::Instant::now(),
        backoff: RESTART_BACKOFF_MIN,
        restarts: 0,
        restart_at: None,
    });
    let target = procs.len() - 1;
    procs[target].spawn().await?;
    procs[target].wait_ready(&security).await?;
    write_cluster(&dir, &args, &replicas, &procs, tls.as_ref())?;
    print_banner(&dir, &args, &replicas);

    // Supervise until Ctrl-C / SIGTERM.
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let mut changed = false;
        let now = tokio::time::Instant::now();
        for p in &mut procs {
            if let Some(child) = p.child.as_mut() {
                let Ok(Some(status)) = child.try_wait() else {
                    continue;
                };
                p.child = None;
                if p.started.elapsed() > STABLE_AFTER {
                    p.backoff = RESTART_BACKOFF_MIN;
                }
                warn!(child = %p.name, %status, backoff = ?p.backoff, log = %p.log.display(), "child died; restarting it");
                p.restart_at = Some(now + p.backoff);
                p.backoff = (p.backoff * 2).min(RESTART_BACKOFF_MAX);
            } else if p.restart_at.is_some_and(|at| at <= now) {
                p.restart_at = None;
                p.restarts += 1;
                match p.spawn().await {
                    Ok(()) => info!(child = %p.name, restarts = p.restarts, "restarted"),
                    Err(e) => {
                        warn!(child = %p.name, error = format!("{e:#}"), "cannot restart");
                        p.restart_at = Some(now + p.backoff);
                    }
                }
                changed = true;
            }
        }
        if changed {
            write_cluster(&dir, &args, &replicas, &procs, tls.as_ref())?;
        }
    }
    info!("stopping: target first, then the replicas");
    if let Some(t) = procs.get_mut(target) {
        t.stop().await;
    }
    for p in procs.iter_mut().take(target) {
        p.stop().await;
    }
    write_cluster(&dir, &args, &replicas, &procs, tls.as_ref())?;
    Ok(())
}

/// A child's link-security flag: its TLS directory, or plaintext.
fn security_args(tls_dir: Option<&Path>) -> Vec<String> {
    match tls_dir {
        Some(dir) => vec!["--tls-dir".into(), dir.display().to_string()],
        None => vec!["--insecure-plaintext".into()],
    }
}

/// Creates the volume replica on a daemon, or checks the one there.
async fn ensure_volume(
    security: &Security,
    mgmt: SocketAddr,
    volume: &str,
    size: u64,
) -> Result<()> {
    let channel = cstor_tls::grpc::channel(&mgmt.to_string(), security, &[Role::Replica])
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the replica daemon at {mgmt}: {}",
                error_chain(&e)
            )
        })?;
    let mut client = ReplicaManagerClient::new(channel);
    let result = client
        .create_volume(CreateVolumeRequest {
            name: volume.to_owned(),
            size_bytes: size,
            block_size: 4096,
            provisioning: Provisioning::Thin.into(),
            clone_of: String::new(),
        })
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(status) => bail!(
            "replica daemon at {mgmt}: {} (was {volume} created with another --size?)",
            status.message()
        ),
    }
}

fn write_cluster(
    dir: &Path,
    args: &UpArgs,
    replicas: &[(u32, PathBuf, SocketAddr, SocketAddr)],
    procs: &[Proc],
    tls: Option<&TlsDirs>,
) -> Result<()> {
    let path_text = |p: &Path| p.display().to_string();
    let replica_entries = replicas
        .iter()
        .zip(procs)
        .map(|((i, pool, data, mgmt), p)| {
            Ok(json!({
                "name": replica_name(*i),
                "pool_name": pool_name(*i),
                "tls_dir": tls.and_then(|t| t.replicas.get(*i as usize)).map(|d| path_text(d)),
                "pid": p.pid(),
                "pool": pool.display().to_string(),
                "data": data.to_string(),
                "mgmt": mgmt.to_string(),
                "metrics": args.replica_metrics(*i)?.to_string(),
                "log": p.log.display().to_string(),
                "restarts": p.restarts,
            }))
        })
        .collect::<Result<Vec<_>>>()?;
    let target = procs.last();
    let cluster = json!({
        "volume": args.volume,
        "size_bytes": args.size,
        "iqn": cstor_target::iscsi::login::target_name_for(&args.volume),
        "portal": args.iscsi_listen.to_string(),
        "insecure_plaintext": tls.is_none(),
        "tls": tls.map(|t| json!({
            "ca": path_text(&t.ca),
            "admin": path_text(&t.admin),
            "reader": path_text(&t.reader),
            "target": path_text(&t.target),
            "replicas": t.replicas.iter().map(|d| path_text(d)).collect::<Vec<_>>(),
        })),
        "target": {
            "pid": target.and_then(Proc::pid),
            "tls_dir": tls.map(|t| path_text(&t.target)),
            "mgmt": args.target_mgmt()?.to_string(),
            "metrics": args.target_metrics()?.to_string(),
            "log": target.map(|t| t.log.display().to_string()),
            "restarts": target.map_or(0, |t| t.restarts),
        },
        "replicas": replica_entries,
    });
    let path = dir.join(CLUSTER_FILE);
    let tmp = dir.join(format!("{CLUSTER_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&cluster)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn print_banner(dir: &Path, args: &UpArgs, replicas: &[(u32, PathBuf, SocketAddr, SocketAddr)]) {
    let iqn = cstor_target::iscsi::login::target_name_for(&args.volume);
    let portal = args.iscsi_listen;
    let links = if args.insecure_plaintext {
        "PLAINTEXT: unauthenticated and unencrypted (--insecure-plaintext)".to_string()
    } else {
        format!(
            "mutual TLS 1.3 (CA and certificates in {})",
            dir.join(TLS_SUBDIR).display()
        )
    };
    let first_mgmt = replicas
        .first()
        .map(|r| r.3.to_string())
        .unwrap_or_default();
    let target_metrics = args
        .target_metrics()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let first_metrics = args
        .replica_metrics(0)
        .map(|a| a.to_string())
        .unwrap_or_default();
    println!(
        "cstor is up: volume {vol} ({size}, {n} replicas), state in {dir}\n\
         \n\
         \x20 portal  {portal}\n\
         \x20 IQN     {iqn}\n\
         \x20 links   {links}\n\
         \n\
         Attach it with open-iscsi:\n\
         \x20 sudo iscsiadm -m discovery -t sendtargets -p {portal}\n\
         \x20 sudo iscsiadm -m node -T {iqn} -p {portal} --login\n\
         \x20 lsblk   # the new disk; detach with: sudo iscsiadm -m node -T {iqn} -p {portal} --logout\n\
         \n\
         Inspect it:\n\
         \x20 cstor ctl --state-dir {dir} status      # replicas, quorum, rebuilds, link security\n\
         \x20 cstor ctl --state-dir {dir} pool list   # every replica's pool\n\
         \x20 cstor ctl --state-dir {dir} --mgmt {first_mgmt} volume list   # one replica's volumes\n\
         \x20 curl -s http://{target_metrics}/metrics      # Prometheus: target (replicas: {first_metrics}, +10 each)\n\
         \x20 cat {dir}/cluster.json; logs in {dir}/logs/\n\
         \n\
         Ctrl-C stops everything cleanly.",
        vol = args.volume,
        size = format_size(args.size),
        n = replicas.len(),
        dir = dir.display(),
    );
}

/// The executable children run: this very binary. Through /proc/self/exe
/// where it exists, so a child can still be restarted after the file was
/// replaced or removed (a package upgrade, a rebuild): the running binary
/// stays reachable there while its path names a new file or none.
fn cstor_exe() -> Result<PathBuf> {
    let proc_exe = Path::new("/proc/self/exe");
    if proc_exe.exists() {
        return Ok(proc_exe.to_path_buf());
    }
    std::env::current_exe().context("cannot find the cstor executable")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn cert_of(dir: &Path) -> Vec<u8> {
        std::fs::read(dir.join(cstor_tls::issue::CERT_FILE)).unwrap()
    }

    #[test]
    fn tls_directories_are_issued_once_and_again_only_when_unusable() {
        let state = tempfile::tempdir().unwrap();
        let dirs = TlsDirs::of(state.path(), 2);
        ensure_tls(&dirs, "vol1").unwrap();
        let identity = |d: &Path| Credentials::load(d).unwrap().identity();
        assert_eq!(identity(&dirs.admin), Identity::Admin);
        assert_eq!(identity(&dirs.reader), Identity::Reader);
        assert_eq!(
            identity(&dirs.replicas[1]),
            Identity::Replica {
                pool: "pool-1".into()
            }
        );
        let admin = cert_of(&dirs.admin);
        let target = cert_of(&dirs.target);

        // Nothing to do: nothing changes.
        ensure_tls(&dirs, "vol1").unwrap();
        assert_eq!(cert_of(&dirs.admin), admin);
        assert_eq!(cert_of(&dirs.target), target);

        // Another volume: only the target's certificate is issued anew.
        ensure_tls(&dirs, "vol2").unwrap();
        assert_eq!(
            identity(&dirs.target),
            Identity::Target {
                volumes: vec!["vol2".into()]
            }
        );
        assert_eq!(cert_of(&dirs.admin), admin);

        // A directory of another CA (the CA was replaced by hand): issued
        // anew from this one.
        let stranger = Ca::generate("other", Validity::from_now(CERT_VALIDITY)).unwrap();
        stranger
            .issue_dir(
                &Identity::Admin,
                Validity::from_now(CERT_VALIDITY),
                &dirs.admin,
            )
            .unwrap();
        let foreign = cert_of(&dirs.admin);
        ensure_tls(&dirs, "vol2").unwrap();
        assert_ne!(cert_of(&dirs.admin), foreign);

        // A new CA: every directory is issued anew.
        std::fs::remove_dir_all(&dirs.ca).unwrap();
        let reader = cert_of(&dirs.reader);
        ensure_tls(&dirs, "vol2").unwrap();
        assert_ne!(cert_of(&dirs.reader), reader);
        let ca = Ca::load(&dirs.ca).unwrap();
        for dir in [&dirs.admin, &dirs.reader, &dirs.target, &dirs.replicas[0]] {
            assert!(
                usable(dir, &identity(dir), &ca).is_ok(),
                "{}",
                dir.display()
            );
        }
    }

    #[test]
    fn a_certificate_about_to_expire_is_not_usable() {
        let state = tempfile::tempdir().unwrap();
        let dirs = TlsDirs::of(state.path(), 1);
        ensure_tls(&dirs, "vol1").unwrap();
        let ca = Ca::load(&dirs.ca).unwrap();
        let soon = Validity::from_now(RENEW_BEFORE / 2);
        ca.issue_dir(&Identity::Reader, soon, &dirs.reader).unwrap();
        assert_eq!(
            usable(&dirs.reader, &Identity::Reader, &ca),
            Err("it expires soon")
        );
        ensure_tls(&dirs, "vol1").unwrap();
        assert_eq!(usable(&dirs.reader, &Identity::Reader, &ca), Ok(()));
    }
}
