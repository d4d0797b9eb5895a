//! Typed wrappers for open-iscsi's `iscsiadm` (open-iscsi README §"iscsiadm")
//! and the udev by-path name of a LUN.
//!
//! Each function builds one command line and interprets its exit status
//! (open-iscsi `include/iscsi_err.h`): "already logged in" and "no such
//! session/record" are success where the caller wants idempotency.
//!
//! The node logs in through its own interface record ([`IFACE`]) whose
//! `iface.initiatorname` is `crate::initiator_name(node_id)`: the
//! controller admits exactly that name at the target (fencing), and the
//! host's default `/etc/iscsi/initiatorname.iscsi` stays untouched.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::host::{Cmd, Host, HostError, Output};

/// The open-iscsi interface record the node plugin logs in through.
pub const IFACE: &str = "cstor-csi";
/// iscsi_err.h: ISCSI_ERR_SESS_EXISTS.
const ERR_SESS_EXISTS: i32 = 15;
/// iscsi_err.h: ISCSI_ERR_NO_OBJS_FOUND (no session / record / iface).
const ERR_NO_OBJS_FOUND: i32 = 21;
/// iscsi_err.h: ISCSI_ERR_LOGIN_AUTH_FAILED.
const ERR_LOGIN_AUTH_FAILED: i32 = 24;
/// RFC 7143 §4.2.7.1: iSCSI names are at most 223 bytes.
pub const MAX_IQN_BYTES: usize = 223;

#[derive(Debug, thiserror::Error)]
pub enum IscsiError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("{cmd} failed (exit {code:?}): {stderr}")]
    Failed {
        cmd: String,
        code: Option<i32>,
        stderr: String,
    },
    #[error("login to {iqn} at {portal} refused: CHAP authentication failed")]
    AuthFailed { iqn: String, portal: SocketAddr },
    #[error("the target at {portal} does not offer {iqn} to this initiator (SendTargets)")]
    NotOffered { iqn: String, portal: SocketAddr },
}

/// A LUN of a target behind one portal: what a session is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lun {
    pub portal: SocketAddr,
    pub iqn: String,
    pub lun: u16,
}

impl Lun {
    /// udev's `/dev/disk/by-path` name of the LUN (60-persistent-storage.rules:
    /// `ip-$portal-iscsi-$iqn-lun-$lun`).
    pub fn by_path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/dev/disk/by-path/ip-{}-iscsi-{}-lun-{}",
            self.portal, self.iqn, self.lun
        ))
    }

    fn node(&self) -> Cmd {
        Cmd::new("iscsiadm")
            .args(["-m", "node", "-T", &self.iqn, "-p"])
            .arg(self.portal.to_string())
            .args(["-I", IFACE])
    }
}

/// Whether `iqn` is a plausible iSCSI name (RFC 7143 §4.2.7: `iqn.`, `eui.`
/// or `naa.` form, printable ASCII without spaces, bounded length).
pub fn valid_iqn(iqn: &str) -> bool {
    (iqn.starts_with("iqn.") || iqn.starts_with("eui.") || iqn.starts_with("naa."))
        && iqn.len() <= MAX_IQN_BYTES
        && iqn.bytes().all(|b| b.is_ascii_graphic() && b != b',')
}

/// CHAP credentials for the node record (open-iscsi `node.session.auth.*`).
#[derive(Clone, PartialEq, Eq)]
pub struct ChapSecrets {
    pub username: String,
    pub password: String,
    /// Mutual CHAP: what the target must answer with.
    pub username_in: Option<String>,
    pub password_in: Option<String>,
}

impl std::fmt::Debug for ChapSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapSecrets")
            .field("username", &self.username)
            .field("username_in", &self.username_in)
            .finish_non_exhaustive()
    }
}

fn check(cmd: &Cmd, out: Output, also_ok: &[i32]) -> Result<Output, IscsiError> {
    match out.code {
        Some(0) => Ok(out),
        Some(c) if also_ok.contains(&c) => Ok(out),
        code => Err(IscsiError::Failed {
            cmd: cmd.display(),
            code,
            stderr: out.stderr.trim().to_owned(),
        }),
    }
}

fn run(host: &dyn Host, cmd: Cmd, also_ok: &[i32]) -> Result<Output, IscsiError> {
    let out = host.run(&cmd)?;
    check(&cmd, out, also_ok)
}

/// Creates the [`IFACE`] interface if missing and sets its initiator name.
pub fn ensure_iface(host: &dyn Host, initiator_name: &str) -> Result<(), IscsiError> {
    let iface = || Cmd::new("iscsiadm").args(["-m", "iface", "-I", IFACE]);
    if !host.run(&iface().args(["-o", "show"]))?.success() {
        run(host, iface().args(["-o", "new"]), &[])?;
    }
    for (name, value) in [
        ("iface.transport_name", "tcp"),
        ("iface.initiatorname", initiator_name),
    ] {
        run(
            host,
            iface().args(["-o", "update", "-n", name, "-v", value]),
            &[],
        )?;
    }
    Ok(())
}

/// SendTargets discovery through [`IFACE`] without touching the node
/// database; fails with [`IscsiError::NotOffered`] unless `lun.iqn` is
/// listed. (The address the target reports is ignored: behind a Service or
/// NAT it is not the one we reach it by; the node record is made by hand
/// with the portal we were given, [`ensure_node_record`].)
pub fn discover(host: &dyn Host, lun: &Lun) -> Result<(), IscsiError> {
    let out = run(
        host,
        Cmd::new("iscsiadm")
            .args(["-m", "discovery", "-t", "sendtargets", "-p"])
            .arg(lun.portal.to_string())
            .args(["-I", IFACE, "-o", "nonpersistent"]),
        &[],
    )?;
    // Lines: "ADDRESS:PORT,TPGT IQN".
    let offered = out
        .stdout
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(lun.iqn.as_str()));
    if offered {
        Ok(())
    } else {
        Err(IscsiError::NotOffered {
            iqn: lun.iqn.clone(),
            portal: lun.portal,
        })
    }
}

/// Creates the node record for the LUN's target at its portal (if missing)
/// and writes the session settings: manual startup (kubelet, not boot,
/// decides when to log in) and CHAP, or no authentication.
pub fn ensure_node_record(
    host: &dyn Host,
    lun: &Lun,
    chap: Option<&ChapSecrets>,
) -> Result<(), IscsiError> {
    if !host.run(&lun.node().args(["-o", "show"]))?.success() {
        run(host, lun.node().args(["-o", "new"]), &[])?;
    }
    let update = |name: &str, value: &str, secret: bool| {
        let cmd = lun.node().args(["-o", "update", "-n", name, "-v"]);
        let cmd = if secret {
            cmd.secret_arg(value)
        } else {
            cmd.arg(value)
        };
        run(host, cmd, &[]).map(drop)
    };
    update("node.startup", "manual", false)?;
    match chap {
        None => update("node.session.auth.authmethod", "None", false)?,
        Some(c) => {
            update("node.session.auth.authmethod", "CHAP", false)?;
            update("node.session.auth.username", &c.username, false)?;
            update("node.session.auth.password", &c.password, true)?;
            if let (Some(u), Some(p)) = (&c.username_in, &c.password_in) {
                update("node.session.auth.username_in", u, false)?;
                update("node.session.auth.password_in", p, true)?;
            }
        }
    }
    Ok(())
}

/// What a successful [`login`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Login {
    /// A new session: ours to log out of if what needed it fails.
    New,
    /// A session was there already (`ISCSI_ERR_SESS_EXISTS`): someone
    /// else's to end.
    Existing,
}

/// Logs in; already logged in is success ([`Login::Existing`]).
pub fn login(host: &dyn Host, lun: &Lun) -> Result<Login, IscsiError> {
    let cmd = lun.node().arg("--login");
    let out = host.run(&cmd)?;
    if out.code == Some(ERR_LOGIN_AUTH_FAILED) {
        return Err(IscsiError::AuthFailed {
            iqn: lun.iqn.clone(),
            portal: lun.portal,
        });
    }
    let existing = out.code == Some(ERR_SESS_EXISTS);
    check(&cmd, out, &[ERR_SESS_EXISTS])?;
    Ok(if existing {
        Login::Existing
    } else {
        Login::New
    })
}

/// Logs out; no session is success.
pub fn logout(host: &dyn Host, lun: &Lun) -> Result<(), IscsiError> {
    run(host, lun.node().arg("--logout"), &[ERR_NO_OBJS_FOUND]).map(drop)
}

/// Deletes the node record (with its CHAP secret); none is success.
pub fn delete_node_record(host: &dyn Host, lun: &Lun) -> Result<(), IscsiError> {
    run(
        host,
        lun.node().args(["-o", "delete"]),
        &[ERR_NO_OBJS_FOUND],
    )
    .map(drop)
}

/// Rescans the session's LUNs so the kernel sees a new capacity.
pub fn rescan(host: &dyn Host, lun: &Lun) -> Result<(), IscsiError> {
    run(host, lun.node().arg("--rescan"), &[]).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lun() -> Lun {
        Lun {
            portal: "10.0.2.2:3260".parse().unwrap(),
            iqn: "iqn.2016-09.com.openebs.cstor:pv-1".into(),
            lun: 0,
        }
    }

    #[test]
    fn by_path_matches_udev_naming() {
        assert_eq!(
            lun().by_path(),
            PathBuf::from(
                "/dev/disk/by-path/ip-10.0.2.2:3260-iscsi-iqn.2016-09.com.openebs.cstor:pv-1-lun-0"
            )
        );
        let v6 = Lun {
            portal: "[fd00::1]:3260".parse().unwrap(),
            ..lun()
        };
        assert!(v6
            .by_path()
            .to_str()
            .unwrap()
            .contains("ip-[fd00::1]:3260-iscsi-"));
    }

    #[test]
    fn iqn_validation_follows_rfc_7143_forms() {
        assert!(valid_iqn("iqn.2016-09.com.openebs.cstor:pv-1"));
        assert!(valid_iqn("eui.02004567A425678D"));
        assert!(!valid_iqn("pv-1"));
        assert!(!valid_iqn("iqn.a b"));
        assert!(!valid_iqn("iqn.a,1"));
        assert!(!valid_iqn(&format!("iqn.{}", "a".repeat(MAX_IQN_BYTES))));
    }

    #[test]
    fn login_says_whether_it_made_the_session() {
        use super::super::fake::{FakeHost, IQN, NODE_INITIATOR, PORTAL};
        let host = FakeHost::new(NODE_INITIATOR, &[(IQN, 1)]);
        let lun = Lun {
            portal: PORTAL.parse().unwrap(),
            iqn: IQN.into(),
            lun: 0,
        };
        ensure_iface(&host, NODE_INITIATOR).unwrap();
        ensure_node_record(&host, &lun, None).unwrap();
        assert_eq!(login(&host, &lun).unwrap(), Login::New);
        assert_eq!(login(&host, &lun).unwrap(), Login::Existing);
    }

    #[test]
    fn idempotent_exit_codes_are_success_and_others_are_errors() {
        let cmd = Cmd::new("iscsiadm");
        assert!(check(&cmd, Output::fail(ERR_SESS_EXISTS, ""), &[ERR_SESS_EXISTS]).is_ok());
        let err = check(&cmd, Output::fail(8, "timeout"), &[ERR_SESS_EXISTS]).unwrap_err();
        assert!(err.to_string().contains("timeout"));
    }
}
