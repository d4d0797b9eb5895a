//! [`TargetRuntime`] as local child processes: one `cstor target` per
//! volume on this host, for `cstor up`, single-host installs and tests.
//!
//! Invariants (on top of the trait's):
//! - A volume's portal and management ports are chosen once, from the
//!   configured range, and kept for the volume's life (also across
//!   restarts of the controller): nodes log in to a stable portal.
//! - The spec of every target is written to `STATE_DIR/targets/VOLUME`
//!   before its process starts, so a restarted controller brings the same
//!   targets back (the runtime holds the intent; the replicas the data).
//! - A target process that dies is restarted with its spec by the
//!   supervisor (every [`TARGET_SUPERVISE_INTERVAL`]) or by the next call
//!   that needs it; a target that cannot start is reported UNAVAILABLE.
//! - The allowlist converges without a restart: a changed
//!   `allowed_initiators` is pushed with SetAllowedInitiators (which also
//!   closes the sessions of initiators no longer allowed) and persisted.
//! - Dropping the runtime kills its targets (they are children).
//! - Deleting a volume's target removes every file the runtime keeps for
//!   it ([`volume_files`]: its spec, a spec half written, its log; and its
//!   TLS directory, [`tls_dir`]), so the state directory does not fill with
//!   the logs of deleted volumes.
//! - Targets are secured as the controller is: with TLS, every start of a
//!   target issues it a new certificate naming only its volume
//!   (`STATE_DIR/tls/VOLUME`, passed as `--tls-dir`), so a restart also
//!   renews it; in plaintext the target gets `--insecure-plaintext`. The
//!   runtime reaches the targets' management APIs with the controller's
//!   own identity.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Weak};

use cstor_mgmt::v1::{GetTargetStatusRequest, SetAllowedInitiatorsRequest};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use crate::certs::TargetCerts;
use crate::limits::{
    MAX_LOCAL_TARGETS, MAX_REPLICAS, TARGET_RESTART_BACKOFF_MAX, TARGET_START_TIMEOUT,
    TARGET_SUPERVISE_INTERVAL,
};
use crate::mgmt::{self, Clients};
use crate::naming::is_dns_label;
use crate::runtime::{RuntimeError, TargetEndpoint, TargetRuntime, TargetSpec};

/// IQN prefix of the targets (the target's own default naming).
pub const TARGET_IQN_PREFIX: &str = "iqn.2016-09.com.openebs.cstor:";

/// Where targets' management APIs listen: the controller runs here.
const MGMT_HOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// How the local runtime runs targets.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// The `cstor` executable.
    pub exe: PathBuf,
    /// Holds `targets/` (specs) and `logs/` (targets' stderr).
    pub state_dir: PathBuf,
    /// Address the portals listen on and nodes dial.
    pub portal_host: IpAddr,
    /// Ports for portals and management APIs (two per volume).
    pub ports: RangeInclusive<u16>,
    /// How targets are secured (their certificates, or plaintext).
    pub certs: TargetCerts,
    /// How the targets' management APIs are dialled.
    pub clients: Clients,
}

/// The IQN of `volume`'s target.
pub fn target_iqn(volume: &str) -> String {
    format!("{TARGET_IQN_PREFIX}{volume}")
}

/// One volume's target.
struct Local {
    spec: TargetSpec,
    portal: u16,
    mgmt: u16,
    child: Option<Child>,
    /// Supervisor restarts that failed in a row, and when to try again
    /// (backoff doubling from the supervision interval up to the bound).
    failures: u32,
    retry_at: Option<tokio::time::Instant>,
}

impl Local {
    fn new(spec: TargetSpec, portal: u16, mgmt: u16) -> Self {
        Local {
            spec,
            portal,
            mgmt,
            child: None,
            failures: 0,
            retry_at: None,
        }
    }

    fn endpoint(&self, config: &LocalConfig) -> TargetEndpoint {
        TargetEndpoint {
            portal: SocketAddr::new(config.portal_host, self.portal).to_string(),
            iqn: target_iqn(&self.spec.volume),
            mgmt: format!("http://{}", SocketAddr::new(MGMT_HOST, self.mgmt)),
        }
    }

    /// Whether the process runs (reaping it if it exited).
    fn alive(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(status))) => {
                tracing::warn!(volume = %self.spec.volume, %status, "target process exited");
                self.child = None;
                false
            }
            Some(Err(e)) => {
                tracing::warn!(volume = %self.spec.volume, error = %e, "cannot poll target process");
                false
            }
            None => false,
        }
    }

    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(e) = child.kill().await {
                tracing::warn!(volume = %self.spec.volume, error = %e, "cannot kill target process");
            }
        }
    }

    fn args(&self, config: &LocalConfig) -> Vec<String> {
        let security = if config.certs.is_plaintext() {
            vec!["--insecure-plaintext".to_owned()]
        } else {
            vec![
                "--tls-dir".to_owned(),
                tls_dir(&config.state_dir, &self.spec.volume)
                    .display()
                    .to_string(),
            ]
        };
        let mut args = vec![
            "target".to_owned(),
            "--listen".to_owned(),
            SocketAddr::new(config.portal_host, self.portal).to_string(),
            "--mgmt-listen".to_owned(),
            SocketAddr::new(MGMT_HOST, self.mgmt).to_string(),
            "--volume".to_owned(),
            self.spec.volume.clone(),
            "--target-name".to_owned(),
            target_iqn(&self.spec.volume),
            "--cf".to_owned(),
            self.spec.consistency_factor.to_string(),
        ];
        args.extend(security);
        for replica in &self.spec.replicas {
            args.push("--replica".to_owned());
            args.push(replica.clone());
        }
        if self.spec.allowed_initiators.is_empty() {
            args.push("--deny-initiators".to_owned());
        }
        for initiator in &self.spec.allowed_initiators {
            args.push("--allow-initiator".to_owned());
            args.push(initiator.clone());
        }
        if let Some(chap) = &self.spec.chap {
            args.push("--chap-user".to_owned());
            args.push(chap.user.clone());
        }
        args
    }

    /// Starts the process and waits until it serves.
    async fn start(&mut self, config: &LocalConfig) -> Result<(), RuntimeError> {
        self.stop().await;
        let volume = self.spec.volume.clone();
        let logs = config.state_dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(|e| io_error(&logs, &e))?;
        let log_path = logs.join(format!("{volume}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| io_error(&log_path, &e))?;
        config
            .certs
            .issue_dir(&volume, &tls_dir(&config.state_dir, &volume))
            .map_err(|e| RuntimeError::Other(e.to_string()))?;
        let mut command = Command::new(&config.exe);
        command
            .args(self.args(config))
            .env_remove("CSTOR_ALLOWED_INITIATORS")
            .env_remove("CSTOR_DENY_INITIATORS")
            // The controller's own identity is not the target's; the flags
            // above say how the target is secured.
            .env_remove("CSTOR_TLS_DIR")
            .env_remove("CSTOR_INSECURE_PLAINTEXT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        if let Some(chap) = &self.spec.chap {
            command.env("CSTOR_CHAP_SECRET", &chap.secret);
        }
        let child = command.spawn().map_err(|e| {
            RuntimeError::Unavailable(format!(
                "cannot start {} for volume {volume}: {e}",
                config.exe.display()
            ))
        })?;
        tracing::info!(volume = %volume, pid = ?child.id(), portal = self.portal, mgmt = self.mgmt, "target started");
        self.child = Some(child);
        self.wait_ready(config, &log_path).await
    }

    /// Until the management API answers (the target opened its volume)
    /// and the portal accepts connections.
    async fn wait_ready(&mut self, config: &LocalConfig, log: &Path) -> Result<(), RuntimeError> {
        let endpoint = self.endpoint(config);
        let deadline = tokio::time::Instant::now() + TARGET_START_TIMEOUT;
        loop {
            if !self.alive() {
                return Err(RuntimeError::Unavailable(format!(
                    "target of volume {} exited while starting; see {}",
                    self.spec.volume,
                    log.display()
                )));
            }
            if ready(&config.clients, &endpoint).await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                self.stop().await;
                return Err(RuntimeError::Unavailable(format!(
                    "target of volume {} did not serve within {TARGET_START_TIMEOUT:?}; see {}",
                    self.spec.volume,
                    log.display()
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

async fn ready(clients: &Clients, endpoint: &TargetEndpoint) -> bool {
    let status = async {
        let mut client = clients.target(&endpoint.mgmt).await?;
        mgmt::call(
            "target",
            std::time::Duration::from_secs(2),
            client.get_status(GetTargetStatusRequest {}),
        )
        .await
    };
    status.await.is_ok()
        && tokio::net::TcpStream::connect(&endpoint.portal)
            .await
            .is_ok()
}

/// Every file the runtime keeps for `volume` under `state_dir`: the spec
/// record, its temporary copy while `LocalRuntime::persist` writes it,
/// and the target's log. `volume` must be a DNS label (no `/`, no `..`).
pub fn volume_files(state_dir: &Path, volume: &str) -> [PathBuf; 3] {
    let targets = state_dir.join("targets");
    [
        targets.join(volume),
        targets.join(volume).with_extension("tmp"),
        state_dir.join("logs").join(format!("{volume}.log")),
    ]
}

/// The TLS directory of `volume`'s target (`ca.crt`, `tls.crt`,
/// `tls.key`), written at each start of the target. `volume` must be a DNS
/// label.
pub fn tls_dir(state_dir: &Path, volume: &str) -> PathBuf {
    state_dir.join("tls").join(volume)
}

/// Removes `path`; absent already is fine.
fn remove_if_present(path: &Path) -> Result<(), RuntimeError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(path, &e)),
    }
}

fn io_error(path: &Path, e: &std::io::Error) -> RuntimeError {
    RuntimeError::Other(format!("{}: {e}", path.display()))
}

/// One volume's entry: its ports, fixed for the volume's life (readable
/// without waiting for a call that holds the target), and its target.
struct Slot {
    ports: [u16; 2],
    local: Mutex<Local>,
}

impl Slot {
    fn new(local: Local) -> Arc<Slot> {
        Arc::new(Slot {
            ports: [local.portal, local.mgmt],
            local: Mutex::new(local),
        })
    }
}

type Targets = BTreeMap<String, Arc<Slot>>;

/// Runs volume targets as child processes of this one.
pub struct LocalRuntime {
    config: LocalConfig,
    targets: std::sync::Mutex<Targets>,
}

impl LocalRuntime {
    /// Opens the runtime over `config.state_dir`, taking back the targets
    /// its specs describe (they start on first use or at the supervisor's
    /// next round), and starts the supervisor.
    pub fn open(config: LocalConfig) -> Result<Arc<Self>, RuntimeError> {
        if config.ports.is_empty() {
            return Err(RuntimeError::InvalidSpec("empty target port range".into()));
        }
        let dir = config.state_dir.join("targets");
        std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, &e))?;
        let mut targets = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| io_error(&dir, &e))? {
            let path = entry.map_err(|e| io_error(&dir, &e))?.path();
            let text = std::fs::read_to_string(&path).map_err(|e| io_error(&path, &e))?;
            match record::parse(&text) {
                Ok((spec, portal, mgmt)) => {
                    targets.insert(
                        spec.volume.clone(),
                        Slot::new(Local::new(spec, portal, mgmt)),
                    );
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable target record")
                }
            }
        }
        let runtime = Arc::new(LocalRuntime {
            config,
            targets: std::sync::Mutex::new(targets),
        });
        tokio::spawn(supervise(Arc::downgrade(&runtime)));
        Ok(runtime)
    }

    fn entry(&self, volume: &str) -> Option<Arc<Slot>> {
        self.lock_targets().get(volume).cloned()
    }

    /// The volume's entry, made (with two newly allocated ports) if it has
    /// none: allocation and insertion under one lock, so two new volumes
    /// never get the same ports.
    fn entry_or_new(&self, spec: &TargetSpec) -> Result<Arc<Slot>, RuntimeError> {
        let mut targets = self.lock_targets();
        if let Some(slot) = targets.get(&spec.volume) {
            return Ok(slot.clone());
        }
        let (portal, mgmt) = self.allocate_ports(&targets)?;
        let slot = Slot::new(Local::new(spec.clone(), portal, mgmt));
        targets.insert(spec.volume.clone(), slot.clone());
        Ok(slot)
    }

    fn lock_targets(&self) -> std::sync::MutexGuard<'_, Targets> {
        // A poisoned map only means a panic elsewhere mid-insert; the map
        // itself is always consistent (single inserts and removes).
        self.targets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn record_path(&self, volume: &str) -> PathBuf {
        self.config.state_dir.join("targets").join(volume)
    }

    fn persist(&self, local: &Local) -> Result<(), RuntimeError> {
        let path = self.record_path(&local.spec.volume);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, record::format(&local.spec, local.portal, local.mgmt))
            .map_err(|e| io_error(&tmp, &e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io_error(&path, &e))
    }

    /// Two free ports of the range that no target of ours holds.
    fn allocate_ports(&self, targets: &Targets) -> Result<(u16, u16), RuntimeError> {
        if targets.len() >= MAX_LOCAL_TARGETS {
            return Err(RuntimeError::Unavailable(format!(
                "this runtime already runs {MAX_LOCAL_TARGETS} targets"
            )));
        }
        let taken: Vec<u16> = targets.values().flat_map(|t| t.ports).collect();
        let mut free = self.config.ports.clone().filter(|p| {
            !taken.contains(p)
                && TcpListener::bind((self.config.portal_host, *p)).is_ok()
                && TcpListener::bind((MGMT_HOST, *p)).is_ok()
        });
        match (free.next(), free.next()) {
            (Some(portal), Some(mgmt)) => Ok((portal, mgmt)),
            _ => Err(RuntimeError::Unavailable(format!(
                "no two free ports left in {:?}",
                self.config.ports
            ))),
        }
    }
}

fn check_spec(spec: &TargetSpec) -> Result<(), RuntimeError> {
    let invalid = |why: String| Err(RuntimeError::InvalidSpec(why));
    if !is_dns_label(&spec.volume) {
        return invalid(format!("volume {:?} is not a DNS label", spec.volume));
    }
    let n = spec.replicas.len();
    if n == 0 || n > MAX_REPLICAS as usize {
        return invalid(format!("{n} replicas (1 to {MAX_REPLICAS})"));
    }
    if let Some(bad) = spec
        .replicas
        .iter()
        .find(|r| r.parse::<SocketAddr>().is_err())
    {
        return invalid(format!("replica address {bad:?}"));
    }
    if spec.consistency_factor == 0 || spec.consistency_factor as usize > n {
        return invalid(format!(
            "consistency factor {} for {n} replicas",
            spec.consistency_factor
        ));
    }
    Ok(())
}

impl TargetRuntime for LocalRuntime {
    async fn ensure_target(&self, spec: &TargetSpec) -> Result<TargetEndpoint, RuntimeError> {
        check_spec(spec)?;
        let slot = self.entry_or_new(spec)?;
        let mut local = slot.local.lock().await;
        let restart = local.spec.replicas != spec.replicas
            || local.spec.consistency_factor != spec.consistency_factor
            || local.spec.chap != spec.chap;
        if restart || !local.alive() {
            local.spec = spec.clone();
            self.persist(&local)?;
            local.start(&self.config).await?;
        } else if local.spec.allowed_initiators != spec.allowed_initiators {
            let endpoint = local.endpoint(&self.config);
            let mut client = self
                .config
                .clients
                .target(&endpoint.mgmt)
                .await
                .map_err(|e| RuntimeError::Unavailable(e.message().to_owned()))?;
            mgmt::call(
                "target",
                mgmt::CALL,
                client.set_allowed_initiators(SetAllowedInitiatorsRequest {
                    initiators: spec.allowed_initiators.clone(),
                    allow_any: false,
                }),
            )
            .await
            .map_err(|e| match e.code() {
                tonic::Code::InvalidArgument => RuntimeError::InvalidSpec(e.message().to_owned()),
                _ => RuntimeError::Unavailable(e.message().to_owned()),
            })?;
            local.spec.allowed_initiators = spec.allowed_initiators.clone();
            self.persist(&local)?;
        }
        Ok(local.endpoint(&self.config))
    }

    async fn delete_target(&self, volume: &str) -> Result<(), RuntimeError> {
        // Not a DNS label: never a target of ours, and no file name to
        // touch (it could climb out of the state directory).
        if !is_dns_label(volume) {
            return Ok(());
        }
        let entry = self.lock_targets().remove(volume);
        if let Some(entry) = entry {
            entry.local.lock().await.stop().await;
            tracing::info!(volume, "target stopped");
        }
        // The spec record last: while it exists, a restarted controller
        // would bring the target back, so a failure part way is retried.
        let [record, tmp, log] = volume_files(&self.config.state_dir, volume);
        let tls = tls_dir(&self.config.state_dir, volume);
        match std::fs::remove_dir_all(&tls) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&tls, &e)),
        }
        for path in [&log, &tmp, &record] {
            remove_if_present(path)?;
        }
        Ok(())
    }

    async fn serving_target(&self, volume: &str) -> Result<Option<TargetEndpoint>, RuntimeError> {
        let Some(entry) = self.entry(volume) else {
            return Ok(None);
        };
        let mut local = entry.local.lock().await;
        if !local.alive() {
            // Starting waits until it serves (bounded).
            local.start(&self.config).await?;
        } else if !ready(&self.config.clients, &local.endpoint(&self.config)).await {
            let [_, _, log] = volume_files(&self.config.state_dir, volume);
            local.wait_ready(&self.config, &log).await?;
        }
        Ok(Some(local.endpoint(&self.config)))
    }

    async fn find_target(&self, volume: &str) -> Result<Option<TargetEndpoint>, RuntimeError> {
        let Some(entry) = self.entry(volume) else {
            return Ok(None);
        };
        let mut local = entry.local.lock().await;
        if !local.alive() {
            local.start(&self.config).await?;
        }
        Ok(Some(local.endpoint(&self.config)))
    }
}

/// Restarts dead targets until the runtime is dropped.
async fn supervise(runtime: Weak<LocalRuntime>) {
    let mut tick = tokio::time::interval(TARGET_SUPERVISE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(rt) = runtime.upgrade() else {
            return;
        };
        let entries: Vec<Arc<Slot>> = rt.lock_targets().values().cloned().collect();
        for entry in entries {
            // A target some call holds is that call's business.
            let Ok(mut local) = entry.local.try_lock() else {
                continue;
            };
            let now = tokio::time::Instant::now();
            if local.alive() || local.retry_at.is_some_and(|at| now < at) {
                continue;
            }
            match local.start(&rt.config).await {
                Ok(()) => {
                    local.failures = 0;
                    local.retry_at = None;
                }
                Err(e) => {
                    local.failures = local.failures.saturating_add(1);
                    let backoff = TARGET_SUPERVISE_INTERVAL
                        .saturating_mul(1 << local.failures.min(16))
                        .min(TARGET_RESTART_BACKOFF_MAX);
                    local.retry_at = Some(tokio::time::Instant::now() + backoff);
                    tracing::warn!(volume = %local.spec.volume, error = %e, ?backoff, "cannot restart target");
                }
            }
        }
    }
}

/// The on-disk record of a target: `key=value` lines.
mod record {
    use crate::runtime::TargetSpec;

    pub fn format(spec: &TargetSpec, portal: u16, mgmt: u16) -> String {
        let mut out = format!(
            "volume={}\nportal={portal}\nmgmt={mgmt}\ncf={}\n",
            spec.volume, spec.consistency_factor
        );
        for r in &spec.replicas {
            out.push_str(&format!("replica={r}\n"));
        }
        for i in &spec.allowed_initiators {
            out.push_str(&format!("initiator={i}\n"));
        }
        out
    }

    /// The spec (without CHAP, which is never written) and the ports.
    pub fn parse(text: &str) -> Result<(TargetSpec, u16, u16), String> {
        let mut spec = TargetSpec {
            volume: String::new(),
            replicas: Vec::new(),
            consistency_factor: 0,
            allowed_initiators: Vec::new(),
            chap: None,
        };
        let (mut portal, mut mgmt) = (None, None);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("line {line:?} is not key=value"))?;
            let port = |v: &str| v.parse::<u16>().map_err(|e| format!("{key}={v}: {e}"));
            match key {
                "volume" => value.clone_into(&mut spec.volume),
                "portal" => portal = Some(port(value)?),
                "mgmt" => mgmt = Some(port(value)?),
                "cf" => {
                    spec.consistency_factor =
                        value.parse().map_err(|e| format!("cf={value}: {e}"))?;
                }
                "replica" => spec.replicas.push(value.to_owned()),
                "initiator" => spec.allowed_initiators.push(value.to_owned()),
                other => return Err(format!("unknown key {other:?}")),
            }
        }
        match (portal, mgmt) {
            (Some(p), Some(m)) if !spec.volume.is_empty() => Ok((spec, p, m)),
            _ => Err("volume, portal or mgmt missing".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TargetSpec {
        TargetSpec {
            volume: "pvc-1".into(),
            replicas: vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
            consistency_factor: 2,
            allowed_initiators: vec![crate::initiator_name("node-a")],
            chap: None,
        }
    }

    #[test]
    fn new_volumes_never_share_ports() {
        let first = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
            .min(u16::MAX - 64);
        let runtime = LocalRuntime {
            config: LocalConfig {
                exe: "cstor".into(),
                state_dir: "/nonexistent".into(),
                portal_host: IpAddr::V4(Ipv4Addr::LOCALHOST),
                ports: first..=first + 63,
                certs: TargetCerts::Plaintext,
                clients: Clients::new(cstor_tls::Security::Plaintext),
            },
            targets: std::sync::Mutex::new(BTreeMap::new()),
        };
        let mut seen = Vec::new();
        for i in 0..4 {
            let spec = TargetSpec {
                volume: format!("pvc-{i}"),
                ..spec()
            };
            let slot = runtime.entry_or_new(&spec).unwrap();
            assert!(Arc::ptr_eq(&slot, &runtime.entry_or_new(&spec).unwrap()));
            assert_ne!(slot.ports[0], slot.ports[1]);
            seen.extend(slot.ports);
        }
        let mut unique = seen.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), seen.len(), "{seen:?}");
    }

    #[tokio::test]
    async fn deleting_a_target_removes_its_log_and_record_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("cstor-csi-local-{}", std::process::id()));
        let runtime = LocalRuntime {
            config: LocalConfig {
                exe: "cstor".into(),
                state_dir: dir.clone(),
                portal_host: IpAddr::V4(Ipv4Addr::LOCALHOST),
                ports: 1..=2,
                certs: TargetCerts::Plaintext,
                clients: Clients::new(cstor_tls::Security::Plaintext),
            },
            targets: std::sync::Mutex::new(BTreeMap::new()),
        };
        std::fs::create_dir_all(dir.join("targets")).unwrap();
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let gone = volume_files(&dir, "pvc-1");
        // pvc-10 shares pvc-1's prefix; outside.log is what "../outside"
        // would name.
        let kept = [
            volume_files(&dir, "pvc-10").to_vec(),
            vec![dir.join("outside.log")],
        ]
        .concat();
        for f in gone.iter().chain(&kept) {
            std::fs::write(f, "x\n").unwrap();
        }
        runtime.delete_target("pvc-1").await.unwrap();
        for f in &gone {
            assert!(!f.exists(), "{} left behind", f.display());
        }
        // Again (nothing left to remove), and a name that is no volume's.
        runtime.delete_target("pvc-1").await.unwrap();
        runtime.delete_target("../outside").await.unwrap();
        for f in &kept {
            assert!(f.exists(), "{} removed", f.display());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_volumes_files_are_its_spec_its_half_written_spec_and_its_log() {
        let [record, tmp, log] = volume_files(Path::new("/state"), "pvc-1");
        assert_eq!(record, Path::new("/state/targets/pvc-1"));
        assert_eq!(tmp, Path::new("/state/targets/pvc-1.tmp"));
        assert_eq!(log, Path::new("/state/logs/pvc-1.log"));
        let runtime_record = LocalRuntime {
            config: LocalConfig {
                exe: "cstor".into(),
                state_dir: "/state".into(),
                portal_host: IpAddr::V4(Ipv4Addr::LOCALHOST),
                ports: 1..=2,
                certs: TargetCerts::Plaintext,
                clients: Clients::new(cstor_tls::Security::Plaintext),
            },
            targets: std::sync::Mutex::new(BTreeMap::new()),
        }
        .record_path("pvc-1");
        assert_eq!(runtime_record, record);
    }

    #[test]
    fn records_round_trip() {
        let text = record::format(&spec(), 31000, 31001);
        assert_eq!(record::parse(&text), Ok((spec(), 31000, 31001)));
        assert!(record::parse("volume=x\nportal=1\n").is_err());
        assert!(record::parse("volume=x\nportal=1\nmgmt=99999\n").is_err());
        assert!(record::parse("bogus").is_err());
    }

    #[test]
    fn specs_are_checked_before_anything_runs() {
        assert!(check_spec(&spec()).is_ok());
        let bad = [
            TargetSpec {
                volume: "Bad_Name".into(),
                ..spec()
            },
            TargetSpec {
                replicas: vec![],
                ..spec()
            },
            TargetSpec {
                replicas: vec!["nowhere".into()],
                consistency_factor: 1,
                ..spec()
            },
            TargetSpec {
                consistency_factor: 3,
                ..spec()
            },
            TargetSpec {
                consistency_factor: 0,
                ..spec()
            },
        ];
        for s in bad {
            assert!(
                matches!(check_spec(&s), Err(RuntimeError::InvalidSpec(_))),
                "{s:?}"
            );
        }
    }

    #[test]
    fn a_target_is_secured_as_the_controller_is() {
        let dir = tempfile::tempdir().unwrap();
        let ca = cstor_tls::Ca::generate(
            "test",
            cstor_tls::Validity::from_now(cstor_tls::issue::CA_VALIDITY),
        )
        .unwrap();
        let config = |certs: TargetCerts| LocalConfig {
            exe: "cstor".into(),
            state_dir: dir.path().to_owned(),
            portal_host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ports: 1..=2,
            certs,
            clients: Clients::new(cstor_tls::Security::Plaintext),
        };
        let local = Local::new(spec(), 1, 2);
        let tls = config(TargetCerts::Issue(Arc::new(ca)));
        let args = local.args(&tls);
        let at = args.iter().position(|a| a == "--tls-dir").unwrap();
        assert_eq!(
            Path::new(&args[at + 1]),
            tls_dir(dir.path(), "pvc-1").as_path()
        );
        assert!(!args.contains(&"--insecure-plaintext".to_owned()));
        let plain = local.args(&config(TargetCerts::Plaintext));
        assert!(plain.contains(&"--insecure-plaintext".to_owned()));
        assert!(!plain.contains(&"--tls-dir".to_owned()));
    }

    #[test]
    fn a_target_with_no_allowed_initiator_starts_denying_all() {
        let local = Local::new(
            TargetSpec {
                allowed_initiators: vec![],
                ..spec()
            },
            1,
            2,
        );
        let config = LocalConfig {
            exe: "cstor".into(),
            state_dir: "/tmp".into(),
            portal_host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ports: 1..=2,
            certs: TargetCerts::Plaintext,
            clients: Clients::new(cstor_tls::Security::Plaintext),
        };
        let args = local.args(&config);
        assert!(args.contains(&"--deny-initiators".to_owned()));
        assert!(!args.contains(&"--allow-initiator".to_owned()));
        let published = Local {
            spec: spec(),
            ..local
        };
        let args = published.args(&config);
        assert!(!args.contains(&"--deny-initiators".to_owned()));
        assert!(args.contains(&crate::initiator_name("node-a")));
    }
}
