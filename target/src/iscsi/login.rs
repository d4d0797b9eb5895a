//! The login phase of one connection, sans-IO (RFC 7143 §6.3, §11.12,
//! §11.13, §13).
//!
//! Feed every Login Request to [`LoginMachine::on_request`]; it returns the
//! Login Response to send and whether the connection goes on logging in,
//! fails (send, then close: RFC 7143 §11.13.5, any status class but 0 ends
//! the connection) or enters full feature phase.
//!
//! Stages: security (CSG 0) → operational (CSG 1) → full feature (NSG 3);
//! either of the first two may be skipped by the initiator, except that a
//! target requiring CHAP fails a login that skips security with 02 01. A
//! transition happens only when the initiator asks for it (T=1) and we are
//! ready; otherwise we answer T=0 and the initiator continues the stage.
//!
//! Invariants:
//! - the first complete request must name the initiator (02 07), the
//!   session type (02 09 if unknown) and, for a normal session, our target
//!   (02 07 if missing, 02 03 if another);
//! - an initiator outside the allowlist fails with 02 02, a CHAP failure
//!   with 02 01, malformed text or an inconsistent PDU with 02 00, a
//!   version other than 0 with 02 05, a non-zero TSIH with 02 0a (we never
//!   add connections to a session: MaxConnections is 1);
//! - ISID, TSIH, CID and CmdSN stay those of the first request;
//! - the number of exchanges is bounded (`MAX_LOGIN_EXCHANGES`).

use std::net::SocketAddr;
use std::num::NonZeroU16;

use bytes::Bytes;

use super::access::InitiatorAccess;
use super::budget::BufferLimits;
use super::chap::{ChapChallenge, ChapConfig, ChapError, ChapReply};
use super::codec::FullFeatureConfig;
use super::limits::{MAX_ISCSI_NAME_BYTES, MAX_LOGIN_EXCHANGES, MAX_QUEUE_DEPTH};
use super::negotiate::{NegotiationError, Negotiator, SessionParams, TargetLimits};
use super::pdu::{Digests, FrameConfig, LoginRequest, LoginResponse};
use super::text::{self, TextAccumulator, TextError, TextWriter};

/// The stage numbers of the CSG/NSG fields (RFC 7143 §11.12.3).
pub mod stage {
    pub const SECURITY: u8 = 0;
    pub const OPERATIONAL: u8 = 1;
    pub const FULL_FEATURE: u8 = 3;
}

/// Login status class and detail (RFC 7143 §11.13.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginStatus {
    pub class: u8,
    pub detail: u8,
}

impl LoginStatus {
    pub const SUCCESS: Self = Self::new(0, 0);
    pub const INITIATOR_ERROR: Self = Self::new(2, 0);
    pub const AUTHENTICATION_FAILURE: Self = Self::new(2, 1);
    pub const AUTHORIZATION_FAILURE: Self = Self::new(2, 2);
    pub const NOT_FOUND: Self = Self::new(2, 3);
    pub const UNSUPPORTED_VERSION: Self = Self::new(2, 5);
    pub const MISSING_PARAMETER: Self = Self::new(2, 7);
    pub const SESSION_TYPE_NOT_SUPPORTED: Self = Self::new(2, 9);
    pub const SESSION_DOES_NOT_EXIST: Self = Self::new(2, 0x0a);
    pub const TARGET_ERROR: Self = Self::new(3, 0);

    const fn new(class: u8, detail: u8) -> Self {
        Self { class, detail }
    }
}

/// Why a login failed; [`LoginFailure::status`] is the RFC's answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginFailure {
    #[error("unsupported version range {min}..={max}")]
    Version { min: u8, max: u8 },
    #[error("non-zero TSIH {0}: adding connections to a session is not supported")]
    ExistingSession(u16),
    #[error("malformed login text: {0}")]
    Text(#[from] TextError),
    #[error("negotiation: {0}")]
    Negotiation(#[from] NegotiationError),
    #[error("missing key {0}")]
    Missing(&'static str),
    #[error("invalid value for {0}")]
    InvalidValue(&'static str),
    #[error("unsupported session type {0:?}")]
    SessionType(String),
    #[error("unknown target {0:?}")]
    UnknownTarget(String),
    #[error("initiator {0:?} is not allowed")]
    NotAllowed(String),
    #[error("authentication failed: {0}")]
    Chap(#[from] ChapError),
    #[error("authentication required but skipped or refused")]
    AuthRequired,
    #[error("security key {0} outside the security stage")]
    SecurityKeyOutOfStage(String),
    #[error("{0}")]
    Protocol(&'static str),
    #[error("too many login exchanges")]
    TooManyExchanges,
}

impl LoginFailure {
    pub fn status(&self) -> LoginStatus {
        match self {
            Self::Version { .. } => LoginStatus::UNSUPPORTED_VERSION,
            Self::ExistingSession(_) => LoginStatus::SESSION_DOES_NOT_EXIST,
            Self::Missing(_) => LoginStatus::MISSING_PARAMETER,
            Self::SessionType(_) => LoginStatus::SESSION_TYPE_NOT_SUPPORTED,
            Self::UnknownTarget(_) => LoginStatus::NOT_FOUND,
            Self::NotAllowed(_) => LoginStatus::AUTHORIZATION_FAILURE,
            Self::Chap(_) | Self::AuthRequired => LoginStatus::AUTHENTICATION_FAILURE,
            Self::Text(_)
            | Self::Negotiation(_)
            | Self::InvalidValue(_)
            | Self::SecurityKeyOutOfStage(_)
            | Self::Protocol(_)
            | Self::TooManyExchanges => LoginStatus::INITIATOR_ERROR,
        }
    }
}

/// Discovery or normal session (the SessionType key, RFC 7143 §13.21).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionType {
    Discovery,
    Normal,
}

/// The target's login configuration.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// e.g. `iqn.2016-09.com.openebs.cstor:vol1`, see [`target_name_for`].
    pub target_name: String,
    pub target_alias: Option<String>,
    pub portal_group_tag: u16,
    /// Who may log in: read at each login, replaceable at run time
    /// (shared with the management API, see [`InitiatorAccess`]).
    pub allowed_initiators: InitiatorAccess,
    /// CHAP required for normal sessions when set.
    pub chap: Option<ChapConfig>,
    /// CHAP required for discovery sessions when set.
    pub discovery_chap: Option<ChapConfig>,
    pub limits: TargetLimits,
    /// Commands the session accepts ahead of ExpCmdSN: MaxCmdSN = ExpCmdSN +
    /// queue_depth - 1 (RFC 7143 §4.2.2.1).
    pub queue_depth: u32,
    /// The byte budgets of IO data held by one connection and by the whole
    /// target ([`crate::iscsi::budget`]); clones share the target's.
    pub buffers: BufferLimits,
    /// Ids of the tasks every session hands to the logical unit; clones
    /// share the counter, so an id is unique in the target.
    pub task_ids: crate::iscsi::session::TaskIds,
}

/// The default target name of a volume: `iqn.2016-09.com.openebs.cstor:NAME`.
pub fn target_name_for(volume: &str) -> String {
    format!("iqn.2016-09.com.openebs.cstor:{volume}")
}

impl TargetConfig {
    /// A target for `volume` with default name, no CHAP, admitting every
    /// initiator.
    pub fn for_volume(volume: &str) -> Self {
        Self {
            target_name: target_name_for(volume),
            target_alias: None,
            portal_group_tag: 1,
            allowed_initiators: InitiatorAccess::default(),
            chap: None,
            discovery_chap: None,
            limits: TargetLimits::default(),
            queue_depth: 32,
            buffers: BufferLimits::default(),
            task_ids: Default::default(),
        }
    }
}

/// A connection that completed its login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedIn {
    pub session_type: SessionType,
    pub initiator_name: String,
    pub initiator_alias: Option<String>,
    pub isid: [u8; 6],
    pub tsih: NonZeroU16,
    pub cid: u16,
    pub params: SessionParams,
    /// The first CmdSN of the session (the login's, RFC 7143 §4.2.2.1).
    pub exp_cmd_sn: u32,
    /// StatSN of the next response on this connection.
    pub next_stat_sn: u32,
    /// The local address the initiator reached, for SendTargets.
    pub local_addr: SocketAddr,
}

impl LoggedIn {
    /// The SCSI initiator port name of this session: the initiator name,
    /// `,i,0x` and the ISID in 12 hex digits (RFC 7143 §4.2.7.1), as the
    /// SCSI layer's I_T nexus expects it.
    pub fn initiator_port(&self) -> String {
        let isid: String = self.isid.iter().map(|b| format!("{b:02x}")).collect();
        format!("{},i,0x{isid}", self.initiator_name)
    }

    /// Codec configuration for full feature phase.
    pub fn full_feature_config(&self) -> FullFeatureConfig {
        let digests = Digests {
            header: self.params.header_digest,
            data: self.params.data_digest,
        };
        FullFeatureConfig {
            rx: FrameConfig {
                digests,
                max_data_segment_bytes: self.params.target_max_recv_data_segment,
            },
            tx: FrameConfig {
                digests,
                max_data_segment_bytes: self.params.initiator_max_recv_data_segment,
            },
        }
    }
}

/// What the connection does with a Login Request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginAction {
    /// Send the response and wait for the next Login Request.
    Continue(LoginResponse),
    /// Send the response, then close the connection.
    Fail(LoginResponse, LoginFailure),
    /// Send the final response; the connection is in full feature phase.
    Complete(LoginResponse, Box<LoggedIn>),
}

#[derive(Debug)]
enum Auth {
    /// No AuthMethod chosen yet.
    Pending,
    /// AuthMethod=CHAP answered, waiting for CHAP_A.
    ChapChosen,
    /// Challenge sent, waiting for CHAP_N/CHAP_R.
    ChapChallenged(ChapChallenge),
    /// Authenticated, or no authentication needed.
    Done,
}

/// Identity fixed by the first Login Request.
#[derive(Debug, Clone)]
struct First {
    isid: [u8; 6],
    tsih: u16,
    cid: u16,
    cmd_sn: u32,
}

#[derive(Debug)]
struct Identity {
    session_type: SessionType,
    initiator_name: String,
    initiator_alias: Option<String>,
}

/// Login state of one connection.
#[derive(Debug)]
pub struct LoginMachine<'a> {
    cfg: &'a TargetConfig,
    tsih: NonZeroU16,
    local_addr: SocketAddr,
    first: Option<First>,
    identity: Option<Identity>,
    negotiator: Option<Negotiator>,
    stage: u8,
    auth: Auth,
    text: TextAccumulator,
    stat_sn: u32,
    exchanges: u32,
    sent_portal_group_tag: bool,
}

/// Pairs to send, and the initiator's security pairs of this request.
#[derive(Debug, Default)]
struct Security<'p> {
    auth_method: Option<&'p str>,
    chap_a: Option<&'p str>,
    reply: ChapReply<'p>,
}

impl<'a> LoginMachine<'a> {
    /// A machine for one accepted connection. `tsih` is the session handle
    /// the shell reserved for the session this login creates; `local_addr`
    /// is the address the connection was accepted on.
    pub fn new(cfg: &'a TargetConfig, tsih: NonZeroU16, local_addr: SocketAddr) -> Self {
        Self {
            cfg,
            tsih,
            local_addr,
            first: None,
            identity: None,
            negotiator: None,
            stage: stage::SECURITY,
            auth: Auth::Pending,
            text: TextAccumulator::default(),
            stat_sn: 0,
            exchanges: 0,
            sent_portal_group_tag: false,
        }
    }

    /// Handles one Login Request.
    pub fn on_request(&mut self, req: &LoginRequest) -> LoginAction {
        match self.step(req) {
            Ok(action) => action,
            Err(failure) => {
                let status = failure.status();
                let mut rsp = self.response(req, false, Bytes::new());
                rsp.csg = 0;
                rsp.nsg = 0;
                rsp.tsih = 0;
                rsp.status_class = status.class;
                rsp.status_detail = status.detail;
                LoginAction::Fail(rsp, failure)
            }
        }
    }

    fn response(&mut self, req: &LoginRequest, transit: bool, data: Bytes) -> LoginResponse {
        let stat_sn = self.stat_sn;
        self.stat_sn = self.stat_sn.wrapping_add(1);
        let cmd_sn = self.first.as_ref().map_or(req.cmd_sn, |f| f.cmd_sn);
        LoginResponse {
            transit,
            continue_: false,
            csg: self.stage,
            nsg: if transit { req.nsg } else { 0 },
            version_max: 0,
            version_active: 0,
            isid: req.isid,
            tsih: 0,
            itt: req.itt,
            stat_sn,
            exp_cmd_sn: cmd_sn,
            max_cmd_sn: cmd_sn.wrapping_add(self.cfg.queue_depth.clamp(1, MAX_QUEUE_DEPTH) - 1),
            status_class: 0,
            status_detail: 0,
            data,
        }
    }

    fn check_header(&mut self, req: &LoginRequest) -> Result<(), LoginFailure> {
        self.exchanges += 1;
        if self.exchanges > MAX_LOGIN_EXCHANGES {
            return Err(LoginFailure::TooManyExchanges);
        }
        match &self.first {
            None => {
                if req.version_min > 0 {
                    return Err(LoginFailure::Version {
                        min: req.version_min,
                        max: req.version_max,
                    });
                }
                if req.tsih != 0 {
                    return Err(LoginFailure::ExistingSession(req.tsih));
                }
                if req.csg != stage::SECURITY && req.csg != stage::OPERATIONAL {
                    return Err(LoginFailure::Protocol("CSG of the first request"));
                }
                self.stage = req.csg;
                // The first response's StatSN starts where the initiator
                // expects it (RFC 7143 §11.13.4 leaves the choice to us).
                self.stat_sn = req.exp_stat_sn;
                self.first = Some(First {
                    isid: req.isid,
                    tsih: req.tsih,
                    cid: req.cid,
                    cmd_sn: req.cmd_sn,
                });
            }
            Some(f) => {
                if f.isid != req.isid || f.tsih != req.tsih || f.cid != req.cid {
                    return Err(LoginFailure::Protocol(
                        "ISID, TSIH or CID changed during login",
                    ));
                }
                if req.csg != self.stage {
                    return Err(LoginFailure::Protocol("CSG is not the current stage"));
                }
            }
        }
        if req.transit {
            let valid = match self.stage {
                stage::SECURITY => req.nsg == stage::OPERATIONAL || req.nsg == stage::FULL_FEATURE,
                _ => req.nsg == stage::FULL_FEATURE,
            };
            if !valid {
                return Err(LoginFailure::Protocol("NSG"));
            }
        }
        Ok(())
    }

    fn step(&mut self, req: &LoginRequest) -> Result<LoginAction, LoginFailure> {
        self.check_header(req)?;
        let Some(pairs) = self.text.push(&req.data, req.continue_)? else {
            // RFC 7143 §6.3: acknowledge a continued request with an empty
            // response and wait for the rest.
            let rsp = self.response(req, false, Bytes::new());
            return Ok(LoginAction::Continue(rsp));
        };
        let mut out = TextWriter::new();
        // Identity keys are read from the first complete request only.
        let first_text = self.identity.is_none();
        if first_text {
            self.identify(&pairs)?;
        }
        let discovery = self.session_type() == SessionType::Discovery;
        if !discovery && !self.sent_portal_group_tag {
            // RFC 7143 §13.9: reported in the first response of a normal
            // session.
            self.sent_portal_group_tag = true;
            out.add(
                "TargetPortalGroupTag",
                &self.cfg.portal_group_tag.to_string(),
            );
            if let Some(alias) = &self.cfg.target_alias {
                out.add("TargetAlias", alias);
            }
        }
        let mut security = Security::default();
        let mut operational = Vec::new();
        for p in &pairs {
            let (k, v) = (p.key.as_str(), p.value.as_str());
            if IDENTITY_KEYS.contains(&k) {
                if first_text {
                    continue;
                }
                return Err(LoginFailure::Protocol(
                    "identity key after the first request",
                ));
            }
            if is_security_key(k) {
                if self.stage != stage::SECURITY {
                    return Err(LoginFailure::SecurityKeyOutOfStage(k.to_owned()));
                }
                security.take(k, v)?;
            } else {
                operational.push((k, v));
            }
        }
        if self.stage == stage::SECURITY {
            self.authenticate(&security, &mut out)?;
        }
        let negotiator = self
            .negotiator
            .get_or_insert_with(|| Negotiator::new(self.cfg.limits, discovery));
        for (k, v) in negotiator.negotiate(operational.iter().copied())? {
            out.add(&k, &v);
        }
        let ready = match self.stage {
            stage::SECURITY => matches!(self.auth, Auth::Done),
            _ => true,
        };
        if req.transit && matches!(self.auth, Auth::Pending) {
            // Wants to leave security without choosing the method we require.
            return Err(LoginFailure::AuthRequired);
        }
        if !req.transit || !ready {
            let rsp = self.response(req, false, out.finish());
            return Ok(LoginAction::Continue(rsp));
        }
        if req.nsg == stage::OPERATIONAL {
            let rsp = self.response(req, true, out.finish());
            self.stage = stage::OPERATIONAL;
            return Ok(LoginAction::Continue(rsp));
        }
        self.complete(req, out)
    }

    fn session_type(&self) -> SessionType {
        self.identity
            .as_ref()
            .map_or(SessionType::Normal, |i| i.session_type)
    }

    /// Checks the identity keys of the first complete request.
    fn identify(&mut self, pairs: &[text::Pair]) -> Result<(), LoginFailure> {
        let get = |key: &str| {
            pairs
                .iter()
                .find(|p| p.key == key)
                .map(|p| p.value.as_str())
        };
        for key in IDENTITY_KEYS {
            if pairs.iter().filter(|p| p.key == key).count() > 1 {
                return Err(LoginFailure::Protocol("identity key repeated"));
            }
        }
        let initiator = get("InitiatorName").ok_or(LoginFailure::Missing("InitiatorName"))?;
        if initiator.is_empty() || initiator.len() > MAX_ISCSI_NAME_BYTES {
            return Err(LoginFailure::InvalidValue("InitiatorName"));
        }
        let session_type = match get("SessionType").unwrap_or("Normal") {
            "Normal" => SessionType::Normal,
            "Discovery" => SessionType::Discovery,
            other => return Err(LoginFailure::SessionType(other.chars().take(64).collect())),
        };
        if session_type == SessionType::Normal {
            let target = get("TargetName").ok_or(LoginFailure::Missing("TargetName"))?;
            // iSCSI names compare case-insensitively (RFC 3722 stringprep
            // folds case); ours is ASCII.
            if !target.eq_ignore_ascii_case(&self.cfg.target_name) {
                return Err(LoginFailure::UnknownTarget(
                    target.chars().take(MAX_ISCSI_NAME_BYTES).collect(),
                ));
            }
        }
        if !self.cfg.allowed_initiators.admits(initiator) {
            return Err(LoginFailure::NotAllowed(initiator.to_owned()));
        }
        if self.stage != stage::SECURITY && self.chap_config(session_type).is_some() {
            // The initiator skipped security but we require CHAP.
            return Err(LoginFailure::AuthRequired);
        }
        if self.stage != stage::SECURITY {
            self.auth = Auth::Done;
        }
        self.identity = Some(Identity {
            session_type,
            initiator_name: initiator.to_owned(),
            initiator_alias: get("InitiatorAlias").map(str::to_owned),
        });
        Ok(())
    }

    fn chap_config(&self, session_type: SessionType) -> Option<&'a ChapConfig> {
        match session_type {
            SessionType::Normal => self.cfg.chap.as_ref(),
            SessionType::Discovery => self.cfg.discovery_chap.as_ref(),
        }
    }

    /// Runs the security stage's part of one request.
    fn authenticate(
        &mut self,
        sec: &Security<'_>,
        out: &mut TextWriter,
    ) -> Result<(), LoginFailure> {
        let chap = self.chap_config(self.session_type());
        if let Some(methods) = sec.auth_method {
            if !matches!(self.auth, Auth::Pending) {
                return Err(LoginFailure::Protocol("AuthMethod renegotiated"));
            }
            let offered = |m: &str| methods.split(',').any(|x| x == m);
            if chap.is_some() {
                if !offered("CHAP") {
                    out.add("AuthMethod", text::REJECT);
                    return Err(LoginFailure::AuthRequired);
                }
                out.add("AuthMethod", "CHAP");
                self.auth = Auth::ChapChosen;
            } else if offered("None") {
                out.add("AuthMethod", text::NONE);
                self.auth = Auth::Done;
            } else {
                out.add("AuthMethod", text::REJECT);
                return Err(LoginFailure::AuthRequired);
            }
        }
        match (&self.auth, sec.chap_a, chap) {
            (Auth::ChapChosen, Some(list), Some(_)) => {
                let (challenge, pairs) = ChapChallenge::start(list)?;
                for (k, v) in pairs {
                    out.add(&k, &v);
                }
                self.auth = Auth::ChapChallenged(challenge);
                return Ok(());
            }
            (_, Some(_), _) => return Err(LoginFailure::Chap(ChapError::BadValue("CHAP_A"))),
            _ => {}
        }
        let has_reply = sec.reply.name.is_some()
            || sec.reply.response.is_some()
            || sec.reply.mutual_id.is_some()
            || sec.reply.mutual_challenge.is_some();
        match (&self.auth, chap) {
            (Auth::ChapChallenged(challenge), Some(cfg)) if has_reply => {
                for (k, v) in challenge.verify(cfg, sec.reply)? {
                    out.add(&k, &v);
                }
                self.auth = Auth::Done;
            }
            (_, _) if has_reply => {
                return Err(LoginFailure::Chap(ChapError::MissingKey("CHAP_A")));
            }
            (Auth::Pending, None) => {
                // No AuthMethod offered and none required: RFC 7143 §13 has
                // no default, but nothing needs authenticating.
                self.auth = Auth::Done;
            }
            _ => {}
        }
        Ok(())
    }

    fn complete(
        &mut self,
        req: &LoginRequest,
        mut out: TextWriter,
    ) -> Result<LoginAction, LoginFailure> {
        let discovery = self.session_type() == SessionType::Discovery;
        let negotiator = self
            .negotiator
            .get_or_insert_with(|| Negotiator::new(self.cfg.limits, discovery));
        for (k, v) in negotiator.pending_declarations() {
            out.add(&k, &v);
        }
        let params = negotiator.params();
        let mut rsp = self.response(req, true, out.finish());
        rsp.tsih = self.tsih.get();
        let identity = self
            .identity
            .take()
            .ok_or(LoginFailure::Protocol("identity"))?;
        let first = self
            .first
            .clone()
            .ok_or(LoginFailure::Protocol("first request"))?;
        let done = LoggedIn {
            session_type: identity.session_type,
            initiator_name: identity.initiator_name,
            initiator_alias: identity.initiator_alias,
            isid: first.isid,
            tsih: self.tsih,
            cid: first.cid,
            params,
            exp_cmd_sn: first.cmd_sn,
            next_stat_sn: self.stat_sn,
            local_addr: self.local_addr,
        };
        Ok(LoginAction::Complete(rsp, Box::new(done)))
    }
}

/// Keys naming the session, accepted in the first complete request only.
/// (TargetAlias is the target's to declare; an initiator sending it gets
/// NotUnderstood from the negotiator.)
const IDENTITY_KEYS: [&str; 4] = [
    "InitiatorName",
    "TargetName",
    "SessionType",
    "InitiatorAlias",
];

fn is_security_key(key: &str) -> bool {
    key == "AuthMethod" || key.starts_with("CHAP_")
}

impl<'p> Security<'p> {
    fn take(&mut self, key: &str, value: &'p str) -> Result<(), LoginFailure> {
        let slot = match key {
            "AuthMethod" => &mut self.auth_method,
            "CHAP_A" => &mut self.chap_a,
            "CHAP_N" => &mut self.reply.name,
            "CHAP_R" => &mut self.reply.response,
            "CHAP_I" => &mut self.reply.mutual_id,
            "CHAP_C" => &mut self.reply.mutual_challenge,
            _ => return Err(LoginFailure::Chap(ChapError::BadValue("unknown CHAP key"))),
        };
        if slot.replace(value).is_some() {
            return Err(LoginFailure::Protocol("security key repeated"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
