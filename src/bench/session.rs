//! One iSCSI session of `cstor bench`: login (with CHAP when asked), the
//! LUN's geometry, then SCSI READ(16)/WRITE(16) commands pipelined over one
//! TCP connection, up to the queue depth and within the target's command
//! window.
//!
//! PDUs are laid out and parsed by `cstor_target::iscsi::pdu` (its
//! initiator-side encoders and target-side decoders); this module only
//! keeps the initiator's sequence numbers and moves bytes.
//!
//! Protocol followed (RFC 7143):
//! - login, §6.3 and §11.12/§11.13: the security stage only with CHAP
//!   (§12.1.3, one-way or mutual), then the operational stage straight to
//!   full feature phase; InitialR2T=Yes, ImmediateData=Yes, no digests,
//!   ErrorRecoveryLevel=0, one connection;
//! - command numbering, §4.2.2.1: a non-immediate command is sent only while
//!   CmdSN <= MaxCmdSN (serial arithmetic, RFC 1982); ExpCmdSN/MaxCmdSN are
//!   taken from every PDU that carries them, and only forwards;
//! - writes, §11.3 and §11.8: immediate data up to min(FirstBurstLength,
//!   the target's MaxRecvDataSegmentLength), the rest in Data-Out PDUs
//!   answering each R2T, cut at the target's MaxRecvDataSegmentLength;
//! - reads, §11.7: Data-In in order (DataPDUInOrder=Yes), the status in the
//!   last Data-In or in a SCSI Response;
//! - target pings (NOP-In with a TTT, §11.19) are answered at once.
//!
//! Bounds: the queue depth ([`super::MAX_QD`]), so the in-flight table and
//! the send buffer hold at most qd commands with their data; every wait for
//! the target is bounded by [`IO_GUARD`].

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cstor_target::iscsi::chap::{decode_binary, encode_binary, ChapAlgorithm};
use cstor_target::iscsi::pdu::{
    self, DataOut, Digests, FrameConfig, LoginRequest, LoginResponse, LogoutRequest, NopOut, Pdu,
    ScsiCommand, TaskAttr,
};
use cstor_target::iscsi::text;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Longest wait for any answer of the target: not a measurement, it turns a
/// hung target into an error. Longer than a cstor target's hold below
/// quorum (20 s by default).
pub const IO_GUARD: Duration = Duration::from_secs(60);
/// Our MaxRecvDataSegmentLength: the largest Data-In segment we accept.
const OUR_MAX_RECV_DATA_SEGMENT: u32 = 256 * 1024;
/// What we offer for MaxBurstLength and FirstBurstLength (the target's
/// answer, the minimum, is what counts).
const OUR_MAX_BURST: u32 = 16 * 1024 * 1024 - 1;
const OUR_FIRST_BURST: u32 = 256 * 1024;
/// Login request/response exchanges before we give up (a target that never
/// moves on).
const MAX_LOGIN_EXCHANGES: usize = 16;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 256 * 1024;
/// The ITT's low bits index the in-flight table; the rest count up, so a
/// late answer to a finished command is told apart from a new one.
const SLOT_BITS: u32 = 9;
const SLOT_MASK: u32 = (1 << SLOT_BITS) - 1;
const _: () = assert!(super::MAX_QD as u32 <= SLOT_MASK);
/// The reserved ITT (RFC 7143 §11.2.1.8).
const RESERVED_ITT: u32 = u32::MAX;

/// SCSI status GOOD (SAM-5 §5.3).
const GOOD: u8 = 0x00;

/// Everything that can end a session, each naming what failed and where.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot connect to the portal {portal}: {source}")]
    Connect {
        portal: SocketAddr,
        source: std::io::Error,
    },
    #[error("connection to {portal}: {source}")]
    Io {
        portal: SocketAddr,
        source: std::io::Error,
    },
    #[error("{portal} closed the connection")]
    Closed { portal: SocketAddr },
    #[error("no answer from {portal} within {} s", IO_GUARD.as_secs())]
    Timeout { portal: SocketAddr },
    #[error("login to {target} at {portal} refused: {meaning} (status class {class:#04x}, detail {detail:#04x}){hint}")]
    LoginRefused {
        portal: SocketAddr,
        target: String,
        class: u8,
        detail: u8,
        meaning: &'static str,
        hint: &'static str,
    },
    #[error("login to {target} at {portal}: {reason}")]
    Login {
        portal: SocketAddr,
        target: String,
        reason: String,
    },
    #[error("{portal} sent an undecodable PDU: {source}")]
    Pdu {
        portal: SocketAddr,
        source: pdu::PduError,
    },
    #[error("{portal}: protocol error: {reason}")]
    Protocol { portal: SocketAddr, reason: String },
    #[error("{op} of {blocks} block(s) at LBA {lba} failed: {status}")]
    Scsi {
        op: &'static str,
        lba: u64,
        blocks: u32,
        status: String,
    },
}

/// CHAP credentials (RFC 7143 §12.1.3): ours, and the target's when we
/// authenticate it too (mutual CHAP).
#[derive(Clone)]
pub struct Chap {
    pub user: String,
    pub secret: Vec<u8>,
    pub mutual: Option<(String, Vec<u8>)>,
}

impl std::fmt::Debug for Chap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chap")
            .field("user", &self.user)
            .field("mutual", &self.mutual.as_ref().map(|m| &m.0))
            .finish_non_exhaustive()
    }
}

/// Where and as whom to log in.
#[derive(Debug, Clone)]
pub struct LoginSpec {
    pub portal: SocketAddr,
    pub target: String,
    pub initiator: String,
    pub lun: u16,
    pub chap: Option<Chap>,
}

/// One IO to issue: `blocks` logical blocks at `lba`; a write carries its
/// data. `tag` is the caller's, handed back with the completion.
#[derive(Debug, Clone)]
pub struct Io {
    pub lba: u64,
    pub blocks: u32,
    pub write: Option<Bytes>,
    /// Keep a read's data for the completion (verify); otherwise it is only
    /// counted.
    pub keep_data: bool,
    pub tag: u64,
}

/// A finished IO: the IO, when it was sent, and a read's data if kept.
#[derive(Debug)]
pub struct Done {
    pub io: Io,
    pub sent: Instant,
    pub data: Bytes,
}

/// What feeds a pipelined run: the next IO to send, and each completion.
pub trait Source {
    /// The next IO, or `None` when there is none to send now (finished, or
    /// waiting for an IO in flight). The run ends when nothing is in flight
    /// and this answers `None`.
    fn next(&mut self, now: Instant) -> Option<Io>;
    /// A completed IO (status GOOD). An error ends the run.
    fn done(&mut self, done: Done, now: Instant) -> Result<(), SessionError>;
}

/// Negotiated values this initiator acts on.
#[derive(Debug, Clone, Copy)]
struct Negotiated {
    /// The target's MaxRecvDataSegmentLength: our largest data segment.
    target_max_recv: u32,
    first_burst: u32,
    immediate_data: bool,
}

struct InFlight {
    itt: u32,
    io: Io,
    sent: Instant,
    expected_bytes: u32,
    received_bytes: u32,
    data: BytesMut,
}

/// One logged-in session over one TCP connection.
pub struct Session {
    portal: SocketAddr,
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    rx: BytesMut,
    tx: BytesMut,
    lun: u64,
    cmd_sn: u32,
    exp_stat_sn: u32,
    max_cmd_sn: u32,
    itt_counter: u32,
    params: Negotiated,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    /// Logical block length of the LUN, bytes.
    pub block_bytes: u32,
    /// Number of logical blocks of the LUN.
    pub blocks: u64,
}

/// SAM-5 §4.7 LUN field: peripheral device addressing below 256, flat
/// space addressing up to 16383.
fn lun_field(lun: u16) -> u64 {
    if lun < 256 {
        u64::from(lun) << 48
    } else {
        (u64::from(0x40 | ((lun >> 8) & 0x3f)) << 56) | (u64::from(lun & 0xff) << 48)
    }
}

/// READ(16) / WRITE(16) CDB (SBC-4 §5.17, §5.43).
fn rw16(opcode: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[0] = opcode;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
    cdb
}
const READ_16: u8 = 0x88;
const WRITE_16: u8 = 0x8a;

/// `a` is after `b` in serial number arithmetic (RFC 1982, 32 bits).
fn sn_gt(a: u32, b: u32) -> bool {
    a != b && (a.wrapping_sub(b) as i32) > 0
}

/// What a login status class/detail means (RFC 7143 §11.13.5), and a hint.
fn login_status(class: u8, detail: u8) -> (&'static str, &'static str) {
    match (class, detail) {
        (1, _) => ("the target moved (redirection is not followed)", ""),
        (2, 1) => (
            "authentication failed",
            "; does the target require CHAP? give --chap-user with CSTOR_CHAP_SECRET",
        ),
        (2, 2) => (
            "this initiator is not allowed",
            "; allow --initiator-name on the target (cstor ctl … initiators)",
        ),
        (2, 3) => ("no such target", "; check --target (the IQN)"),
        (2, 4) => ("the target was removed", ""),
        (2, 5) => ("unsupported iSCSI version", ""),
        (2, 6) => ("too many connections", ""),
        (2, 7) => ("a login parameter is missing", ""),
        (2, 8) => ("cannot include this connection in the session", ""),
        (2, 9) => ("session type not supported", ""),
        (2, 0x0a) => ("session does not exist", ""),
        (2, 0x0b) => ("invalid request during login", ""),
        (2, _) => ("initiator error", ""),
        (3, 1) => ("the target's service is unavailable", ""),
        (3, 2) => ("the target is out of resources", ""),
        (3, _) => ("target error", ""),
        _ => ("unknown status", ""),
    }
}

/// A SCSI status with its sense, for an error message (SPC-5 §4.4).
fn describe_status(status: u8, sense: Option<&[u8]>) -> String {
    let name = match status {
        0x02 => "CHECK CONDITION",
        0x08 => "BUSY",
        0x18 => "RESERVATION CONFLICT",
        0x28 => "TASK SET FULL",
        0x30 => "ACA ACTIVE",
        0x40 => "TASK ABORTED",
        _ => "status",
    };
    let Some(sense) = sense else {
        return format!("{name} ({status:#04x})");
    };
    let descriptor = sense.first().is_some_and(|b| b & 0x7f >= 0x72);
    let (k, a, q) = if descriptor { (1, 2, 3) } else { (2, 12, 13) };
    let key = sense.get(k).map_or(0, |b| b & 0x0f);
    let asc = sense.get(a).copied().unwrap_or(0);
    let ascq = sense.get(q).copied().unwrap_or(0);
    let key_name = match key {
        0x0 => "NO SENSE",
        0x1 => "RECOVERED ERROR",
        0x2 => "NOT READY",
        0x3 => "MEDIUM ERROR",
        0x4 => "HARDWARE ERROR",
        0x5 => "ILLEGAL REQUEST",
        0x6 => "UNIT ATTENTION",
        0x7 => "DATA PROTECT",
        0xb => "ABORTED COMMAND",
        0xd => "VOLUME OVERFLOW",
        0xe => "MISCOMPARE",
        _ => "sense key",
    };
    format!("{name}, {key_name} ({key:#x}), ASC/ASCQ {asc:02x}/{ascq:02x}")
}

/// 8 bytes from the OS's random source, for the ISID and the mutual CHAP
/// challenge.
fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    use std::io::Read;
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

fn value<'a>(pairs: &'a [text::Pair], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|p| p.key == key)
        .map(|p| p.value.as_str())
}

fn text_of(pairs: &[(&str, &str)]) -> Bytes {
    let mut w = text::TextWriter::new();
    for (k, v) in pairs {
        w.add(k, v);
    }
    w.finish()
}

impl Session {
    /// Connects, logs in, takes the power-on unit attention and reads the
    /// LUN's capacity.
    pub async fn open(spec: &LoginSpec) -> Result<Session, SessionError> {
        let portal = spec.portal;
        let stream = tokio::time::timeout(IO_GUARD, TcpStream::connect(portal))
            .await
            .map_err(|_| SessionError::Timeout { portal })?
            .map_err(|source| SessionError::Connect { portal, source })?;
        stream
            .set_nodelay(true)
            .map_err(|source| SessionError::Io { portal, source })?;
        let (rd, wr) = stream.into_split();
        let mut me = Session {
            portal,
            rd,
            wr,
            rx: BytesMut::with_capacity(READ_CHUNK),
            tx: BytesMut::new(),
            lun: lun_field(spec.lun),
            cmd_sn: 0,
            exp_stat_sn: 0,
            max_cmd_sn: 0,
            itt_counter: 0,
            params: Negotiated {
                target_max_recv: 8192,
                first_burst: 65536,
                immediate_data: true,
            },
            slots: Vec::new(),
            free: Vec::new(),
            block_bytes: 0,
            blocks: 0,
        };
        me.login(spec).await?;
        me.ready().await?;
        Ok(me)
    }

    fn login_error(&self, spec: &LoginSpec, reason: impl Into<String>) -> SessionError {
        SessionError::Login {
            portal: self.portal,
            target: spec.target.clone(),
            reason: reason.into(),
        }
    }

    /// The login phase (RFC 7143 §6.3).
    async fn login(&mut self, spec: &LoginSpec) -> Result<(), SessionError> {
        let io = |source| SessionError::Io {
            portal: self.portal,
            source,
        };
        let r = random_bytes::<9>().map_err(io)?;
        // Type 0x80 (random) ISID, §11.12.5: a new session.
        let isid = [0x80, r[0], r[1], r[2], r[3], r[4]];
        self.cmd_sn = u32::from_be_bytes([r[5], r[6], r[7], r[8]]);
        let mut login = LoginExchange {
            isid,
            itt: 0,
            exchanges: 0,
        };
        let names: [(&str, &str); 3] = [
            ("InitiatorName", spec.initiator.as_str()),
            ("SessionType", "Normal"),
            ("TargetName", spec.target.as_str()),
        ];
        let mut first: Vec<(&str, &str)> = names.to_vec();
        if let Some(chap) = &spec.chap {
            first.push(("AuthMethod", "CHAP,None"));
            let rsp = self
                .login_step(spec, &mut login, false, 0, 1, &first)
                .await?;
            first.clear();
            let pairs = parse_text(self, spec, &rsp)?;
            match value(&pairs, "AuthMethod") {
                Some("CHAP") => self.chap(spec, &mut login, chap).await?,
                Some("None") if chap.mutual.is_none() => {
                    // The target does not authenticate: go on without.
                    self.login_step(spec, &mut login, true, 0, 1, &[]).await?;
                }
                other => {
                    return Err(self.login_error(
                        spec,
                        format!("the target answered AuthMethod={other:?} to CHAP"),
                    ))
                }
            }
        }
        let burst = OUR_MAX_BURST.to_string();
        let first_burst = OUR_FIRST_BURST.to_string();
        let recv = OUR_MAX_RECV_DATA_SEGMENT.to_string();
        let operational: [(&str, &str); 13] = [
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("MaxRecvDataSegmentLength", &recv),
            ("InitialR2T", "Yes"),
            ("ImmediateData", "Yes"),
            ("MaxBurstLength", &burst),
            ("FirstBurstLength", &first_burst),
            ("MaxOutstandingR2T", "1"),
            ("ErrorRecoveryLevel", "0"),
            ("MaxConnections", "1"),
            ("DataPDUInOrder", "Yes"),
            ("DataSequenceInOrder", "Yes"),
            ("DefaultTime2Wait", "0"),
        ];
        first.extend_from_slice(&operational);
        let mut answers = Vec::new();
        let mut keys = first;
        loop {
            let rsp = self.login_step(spec, &mut login, true, 1, 3, &keys).await?;
            keys.clear();
            answers.extend(parse_text(self, spec, &rsp)?);
            if rsp.transit && rsp.nsg == 3 {
                self.exp_stat_sn = rsp.stat_sn.wrapping_add(1);
                self.max_cmd_sn = rsp.max_cmd_sn;
                break;
            }
        }
        let number = |key: &str, default: u32| {
            value(&answers, key)
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(default)
        };
        // Declarative (§13.12): absent means the default, 8192.
        let target_max_recv = number("MaxRecvDataSegmentLength", 8192).max(512);
        let max_burst = number("MaxBurstLength", 262_144);
        let first_burst = number("FirstBurstLength", 65_536).min(max_burst);
        let immediate_data = value(&answers, "ImmediateData") != Some("No");
        if value(&answers, "InitialR2T") == Some("No") {
            return Err(self.login_error(spec, "the target answered InitialR2T=No to Yes"));
        }
        self.params = Negotiated {
            target_max_recv,
            first_burst,
            immediate_data,
        };
        Ok(())
    }

    /// Security stage with CHAP (RFC 7143 §12.1.3), after the target chose
    /// it; ends with the transition to the operational stage.
    async fn chap(
        &mut self,
        spec: &LoginSpec,
        login: &mut LoginExchange,
        chap: &Chap,
    ) -> Result<(), SessionError> {
        let rsp = self
            .login_step(spec, login, false, 0, 1, &[("CHAP_A", "7,5")])
            .await?;
        let pairs = parse_text(self, spec, &rsp)?;
        let algorithm = match value(&pairs, "CHAP_A") {
            Some("5") => ChapAlgorithm::Md5,
            Some("7") => ChapAlgorithm::Sha256,
            other => {
                return Err(
                    self.login_error(spec, format!("CHAP: the target chose CHAP_A={other:?}"))
                )
            }
        };
        let id: u8 = value(&pairs, "CHAP_I")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| self.login_error(spec, "CHAP: no valid CHAP_I from the target"))?;
        let challenge = value(&pairs, "CHAP_C")
            .and_then(decode_binary)
            .ok_or_else(|| self.login_error(spec, "CHAP: no valid CHAP_C from the target"))?;
        let response = encode_binary(&algorithm.response(id, &chap.secret, &challenge));
        let mut keys: Vec<(&str, &str)> = vec![("CHAP_N", &chap.user), ("CHAP_R", &response)];
        let io = |source| SessionError::Io {
            portal: self.portal,
            source,
        };
        let mutual = random_bytes::<33>().map_err(io)?;
        let (mutual_id, mutual_challenge) = mutual.split_first().unwrap_or((&0, &[]));
        let mutual_id_text = mutual_id.to_string();
        let mutual_challenge_text = encode_binary(mutual_challenge);
        if chap.mutual.is_some() {
            keys.push(("CHAP_I", &mutual_id_text));
            keys.push(("CHAP_C", &mutual_challenge_text));
        }
        let mut rsp = self.login_step(spec, login, true, 0, 1, &keys).await?;
        if let Some((user, secret)) = &chap.mutual {
            let pairs = parse_text(self, spec, &rsp)?;
            let want = algorithm.response(*mutual_id, secret, mutual_challenge);
            let name_ok = value(&pairs, "CHAP_N") == Some(user.as_str());
            let got = value(&pairs, "CHAP_R").and_then(decode_binary);
            if !name_ok || got.as_deref() != Some(&want[..]) {
                return Err(self.login_error(
                    spec,
                    "mutual CHAP: the target did not prove it knows --chap-target-user's secret",
                ));
            }
        }
        while !(rsp.transit && rsp.nsg == 1) {
            rsp = self.login_step(spec, login, true, 0, 1, &[]).await?;
        }
        Ok(())
    }

    /// Sends one Login Request and returns the target's complete answer
    /// (continuations gathered, §11.13.2), failing on a non-zero status.
    async fn login_step(
        &mut self,
        spec: &LoginSpec,
        login: &mut LoginExchange,
        transit: bool,
        csg: u8,
        nsg: u8,
        keys: &[(&str, &str)],
    ) -> Result<LoginResponse, SessionError> {
        let mut data = text_of(keys);
        let mut gathered = BytesMut::new();
        loop {
            login.exchanges += 1;
            if login.exchanges > MAX_LOGIN_EXCHANGES {
                return Err(self.login_error(
                    spec,
                    format!("no full feature phase after {MAX_LOGIN_EXCHANGES} exchanges"),
                ));
            }
            let request = Pdu::LoginRequest(LoginRequest {
                transit: transit && gathered.is_empty(),
                continue_: false,
                csg,
                nsg: if transit { nsg } else { 0 },
                version_max: 0,
                version_min: 0,
                isid: login.isid,
                tsih: 0,
                itt: login.itt,
                cid: 0,
                cmd_sn: self.cmd_sn,
                exp_stat_sn: self.exp_stat_sn,
                data: std::mem::take(&mut data),
            });
            self.encode(&request, FrameConfig::login())?;
            self.flush().await?;
            let rsp = match self.recv_pdu().await? {
                Pdu::LoginResponse(r) => r,
                Pdu::Reject(r) => {
                    return Err(self.login_error(
                        spec,
                        format!(
                            "the target rejected a login request (reason {:#04x})",
                            r.reason
                        ),
                    ))
                }
                other => {
                    return Err(self.login_error(
                        spec,
                        format!(
                            "expected a login response, got {:?}",
                            other.bhs().0[0] & 0x3f
                        ),
                    ))
                }
            };
            if rsp.status_class != 0 {
                let (meaning, hint) = login_status(rsp.status_class, rsp.status_detail);
                return Err(SessionError::LoginRefused {
                    portal: self.portal,
                    target: spec.target.clone(),
                    class: rsp.status_class,
                    detail: rsp.status_detail,
                    meaning,
                    hint,
                });
            }
            self.exp_stat_sn = rsp.stat_sn.wrapping_add(1);
            gathered.extend_from_slice(&rsp.data);
            if !rsp.continue_ {
                let mut rsp = rsp;
                rsp.data = gathered.freeze();
                return Ok(rsp);
            }
            // More text follows: an empty request asks for it (§11.13.2).
        }
    }

    /// TEST UNIT READY until GOOD (the first command of a new nexus may
    /// report a unit attention, SAM-5 §5.14), then READ CAPACITY(16).
    async fn ready(&mut self) -> Result<(), SessionError> {
        let mut last = String::new();
        let mut ok = false;
        for _ in 0..3 {
            let (status, _, sense) = self.command([0; 16], 0).await?;
            if status == GOOD {
                ok = true;
                break;
            }
            last = describe_status(status, sense.as_deref());
        }
        if !ok {
            return Err(SessionError::Scsi {
                op: "TEST UNIT READY",
                lba: 0,
                blocks: 0,
                status: last,
            });
        }
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9e; // SERVICE ACTION IN(16)
        cdb[1] = 0x10; // READ CAPACITY(16), SBC-4 §5.20
        cdb[13] = 32;
        let (status, data, sense) = self.command(cdb, 32).await?;
        if status != GOOD {
            return Err(SessionError::Scsi {
                op: "READ CAPACITY(16)",
                lba: 0,
                blocks: 0,
                status: describe_status(status, sense.as_deref()),
            });
        }
        let field = |at: usize, n: usize| data.get(at..at + n).map(<[u8]>::to_vec);
        let (Some(last_lba), Some(block)) = (field(0, 8), field(8, 4)) else {
            return Err(self.protocol("READ CAPACITY(16) returned fewer than 12 bytes"));
        };
        let last_lba = u64::from_be_bytes(last_lba.try_into().unwrap_or_default());
        self.block_bytes = u32::from_be_bytes(block.try_into().unwrap_or_default());
        self.blocks = last_lba.saturating_add(1);
        if self.block_bytes < 512 || !self.block_bytes.is_power_of_two() {
            return Err(self.protocol(format!(
                "the LUN reports {}-byte logical blocks",
                self.block_bytes
            )));
        }
        Ok(())
    }

    fn protocol(&self, reason: impl Into<String>) -> SessionError {
        SessionError::Protocol {
            portal: self.portal,
            reason: reason.into(),
        }
    }

    /// One command on its own (setup only): status, data, sense.
    async fn command(
        &mut self,
        cdb: [u8; 16],
        read_len: u32,
    ) -> Result<(u8, Bytes, Option<Vec<u8>>), SessionError> {
        let itt = self.next_itt(0);
        let command = ScsiCommand {
            immediate: false,
            final_: true,
            read: read_len > 0,
            write: false,
            attr: TaskAttr::Simple,
            lun: self.lun,
            itt,
            expected_data_len: read_len,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb: Bytes::copy_from_slice(&cdb),
            bidi_read_len: None,
            data: Bytes::new(),
        };
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        self.encode(&Pdu::ScsiCommand(command), self.tx_config())?;
        self.flush().await?;
        let mut data = BytesMut::new();
        loop {
            match self.recv_pdu().await? {
                Pdu::DataIn(d) if d.itt == itt => {
                    self.window(d.exp_cmd_sn, d.max_cmd_sn);
                    data.extend_from_slice(&d.data);
                    if let Some(status) = d.status {
                        self.exp_stat_sn = d.stat_sn.wrapping_add(1);
                        return Ok((status, data.freeze(), None));
                    }
                }
                Pdu::ScsiResponse(r) if r.itt == itt => {
                    self.window(r.exp_cmd_sn, r.max_cmd_sn);
                    self.exp_stat_sn = r.stat_sn.wrapping_add(1);
                    if r.response != 0 {
                        return Err(self.protocol(format!(
                            "target failure (iSCSI response {:#04x})",
                            r.response
                        )));
                    }
                    let sense = r.sense().map(<[u8]>::to_vec);
                    return Ok((r.status, data.freeze(), sense));
                }
                other => self.housekeeping(other)?,
            }
        }
    }

    fn tx_config(&self) -> FrameConfig {
        FrameConfig {
            digests: Digests::default(),
            max_data_segment_bytes: self.params.target_max_recv,
        }
    }

    fn rx_config() -> FrameConfig {
        FrameConfig {
            digests: Digests::default(),
            max_data_segment_bytes: OUR_MAX_RECV_DATA_SEGMENT,
        }
    }

    fn encode(&mut self, pdu: &Pdu, cfg: FrameConfig) -> Result<(), SessionError> {
        pdu.encode(&mut self.tx, &cfg)
            .map_err(|e| self.protocol(format!("cannot encode a PDU: {e}")))
    }

    fn next_itt(&mut self, slot: usize) -> u32 {
        self.itt_counter = self.itt_counter.wrapping_add(1);
        let itt = (self.itt_counter << SLOT_BITS) | (slot as u32 & SLOT_MASK);
        if itt == RESERVED_ITT {
            self.next_itt(slot)
        } else {
            itt
        }
    }

    /// Takes a PDU's ExpCmdSN/MaxCmdSN when they move the window forward
    /// (RFC 7143 §4.2.2.1: ignored unless MaxCmdSN >= ExpCmdSN - 1).
    fn window(&mut self, exp_cmd_sn: u32, max_cmd_sn: u32) {
        let valid = !sn_gt(exp_cmd_sn, max_cmd_sn.wrapping_add(1));
        if valid && sn_gt(max_cmd_sn, self.max_cmd_sn) {
            self.max_cmd_sn = max_cmd_sn;
        }
    }

    /// Whether the target's window admits one more command.
    fn window_open(&self) -> bool {
        !sn_gt(self.cmd_sn, self.max_cmd_sn)
    }

    /// A PDU that belongs to no command of ours: pings are answered, a
    /// target's request to end the session or a Reject is an error.
    fn housekeeping(&mut self, pdu: Pdu) -> Result<(), SessionError> {
        match pdu {
            Pdu::NopIn(ping) => {
                self.window(ping.exp_cmd_sn, ping.max_cmd_sn);
                if ping.itt == RESERVED_ITT && ping.ttt != RESERVED_ITT {
                    let answer = Pdu::NopOut(NopOut {
                        immediate: true,
                        lun: ping.lun,
                        itt: RESERVED_ITT,
                        ttt: ping.ttt,
                        cmd_sn: self.cmd_sn,
                        exp_stat_sn: self.exp_stat_sn,
                        data: Bytes::new(),
                    });
                    self.encode(&answer, self.tx_config())?;
                }
                Ok(())
            }
            Pdu::AsyncMessage(m) => {
                self.window(m.exp_cmd_sn, m.max_cmd_sn);
                if m.event == 0 {
                    // A SCSI asynchronous event (e.g. capacity changed):
                    // nothing a benchmark acts on.
                    return Ok(());
                }
                Err(self.protocol(format!(
                    "the target asked to end the session (asynchronous event {})",
                    m.event
                )))
            }
            Pdu::Reject(r) => Err(self.protocol(format!(
                "the target rejected a PDU (reason {:#04x})",
                r.reason
            ))),
            other => Err(self.protocol(format!(
                "unexpected PDU (opcode {:#04x}, ITT {:#x})",
                other.bhs().0[0] & 0x3f,
                other.itt()
            ))),
        }
    }

    /// Writes out everything buffered.
    async fn flush(&mut self) -> Result<(), SessionError> {
        let portal = self.portal;
        tokio::time::timeout(IO_GUARD, self.wr.write_all_buf(&mut self.tx))
            .await
            .map_err(|_| SessionError::Timeout { portal })?
            .map_err(|source| SessionError::Io { portal, source })
    }

    /// The next PDU, reading from the socket as needed (nothing is being
    /// sent meanwhile: setup and login only).
    async fn recv_pdu(&mut self) -> Result<Pdu, SessionError> {
        loop {
            if let Some(pdu) = self.decode()? {
                return Ok(pdu);
            }
            self.fill(false).await?;
        }
    }

    fn decode(&mut self) -> Result<Option<Pdu>, SessionError> {
        pdu::decode(&mut self.rx, &Self::rx_config()).map_err(|source| SessionError::Pdu {
            portal: self.portal,
            source,
        })
    }

    /// Reads what the target sent, writing out what is buffered meanwhile
    /// when `send` (so neither side can block the other on full socket
    /// buffers). Returns once some bytes were read.
    async fn fill(&mut self, send: bool) -> Result<(), SessionError> {
        let portal = self.portal;
        let deadline = tokio::time::Instant::now() + IO_GUARD;
        loop {
            self.rx.reserve(READ_CHUNK);
            if !send || self.tx.is_empty() {
                let n = tokio::time::timeout_at(deadline, self.rd.read_buf(&mut self.rx))
                    .await
                    .map_err(|_| SessionError::Timeout { portal })?
                    .map_err(|source| SessionError::Io { portal, source })?;
                return if n == 0 {
                    Err(SessionError::Closed { portal })
                } else {
                    Ok(())
                };
            }
            tokio::select! {
                written = self.wr.write_buf(&mut self.tx) => {
                    let n = written.map_err(|source| SessionError::Io { portal, source })?;
                    if n == 0 {
                        return Err(SessionError::Closed { portal });
                    }
                }
                read = self.rd.read_buf(&mut self.rx) => {
                    let n = read.map_err(|source| SessionError::Io { portal, source })?;
                    return if n == 0 { Err(SessionError::Closed { portal }) } else { Ok(()) };
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(SessionError::Timeout { portal });
                }
            }
        }
    }

    /// Runs IOs from `source`, up to `qd` in flight, until it has none to
    /// give and none is in flight.
    pub async fn run<S: Source>(&mut self, source: &mut S, qd: usize) -> Result<(), SessionError> {
        let qd = qd.clamp(1, super::MAX_QD);
        self.slots = (0..qd).map(|_| None).collect();
        self.free = (0..qd).rev().collect();
        let mut in_flight = 0usize;
        loop {
            let now = Instant::now();
            while in_flight < qd && self.window_open() {
                let Some(io) = source.next(now) else { break };
                self.submit(io, now)?;
                in_flight += 1;
            }
            if in_flight == 0 {
                return Ok(());
            }
            self.fill(true).await?;
            while let Some(pdu) = self.decode()? {
                if let Some(done) = self.on_pdu(pdu)? {
                    in_flight -= 1;
                    source.done(done, Instant::now())?;
                }
            }
        }
    }

    fn submit(&mut self, io: Io, now: Instant) -> Result<(), SessionError> {
        let Some(slot) = self.free.pop() else {
            return Err(self.protocol("no free command slot"));
        };
        let itt = self.next_itt(slot);
        let len = u64::from(io.blocks) * u64::from(self.block_bytes);
        let len = u32::try_from(len).map_err(|_| self.protocol("IO larger than 4 GiB"))?;
        let (cdb, immediate) = match &io.write {
            Some(data) => {
                let first = if self.params.immediate_data {
                    (len as usize)
                        .min(self.params.first_burst as usize)
                        .min(self.params.target_max_recv as usize)
                } else {
                    0
                };
                (
                    rw16(WRITE_16, io.lba, io.blocks),
                    data.slice(..first.min(data.len())),
                )
            }
            None => (rw16(READ_16, io.lba, io.blocks), Bytes::new()),
        };
        let command = ScsiCommand {
            immediate: false,
            final_: true,
            read: io.write.is_none(),
            write: io.write.is_some(),
            attr: TaskAttr::Simple,
            lun: self.lun,
            itt,
            expected_data_len: len,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb: Bytes::copy_from_slice(&cdb),
            bidi_read_len: None,
            data: immediate,
        };
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        self.encode(&Pdu::ScsiCommand(command), self.tx_config())?;
        let keep = io.keep_data && io.write.is_none();
        if let Some(entry) = self.slots.get_mut(slot) {
            *entry = Some(InFlight {
                itt,
                io,
                sent: now,
                expected_bytes: len,
                received_bytes: 0,
                data: if keep {
                    BytesMut::with_capacity(len as usize)
                } else {
                    BytesMut::new()
                },
            });
        }
        Ok(())
    }

    /// The in-flight command of `itt`, if it is one of ours.
    fn slot_of(&mut self, itt: u32) -> Option<(usize, &mut InFlight)> {
        let slot = (itt & SLOT_MASK) as usize;
        match self.slots.get_mut(slot) {
            Some(Some(entry)) if entry.itt == itt => Some((slot, entry)),
            _ => None,
        }
    }

    fn finish(&mut self, slot: usize) -> Option<InFlight> {
        let entry = self.slots.get_mut(slot)?.take()?;
        self.free.push(slot);
        Some(entry)
    }

    /// Handles one PDU of the full feature phase; returns a completed IO.
    fn on_pdu(&mut self, pdu: Pdu) -> Result<Option<Done>, SessionError> {
        match pdu {
            Pdu::DataIn(d) => {
                self.window(d.exp_cmd_sn, d.max_cmd_sn);
                let portal = self.portal;
                let Some((slot, entry)) = self.slot_of(d.itt) else {
                    return Err(self.protocol(format!("Data-In for unknown ITT {:#x}", d.itt)));
                };
                let len = u32::try_from(d.data.len()).unwrap_or(u32::MAX);
                let end = entry.received_bytes.checked_add(len);
                if d.buffer_offset != entry.received_bytes
                    || end.is_none_or(|e| e > entry.expected_bytes)
                {
                    return Err(SessionError::Protocol {
                        portal,
                        reason: format!(
                            "Data-In out of order or past the end (ITT {:#x}, offset {}, {} bytes, expected offset {} of {})",
                            d.itt, d.buffer_offset, len, entry.received_bytes, entry.expected_bytes
                        ),
                    });
                }
                entry.received_bytes = end.unwrap_or(0);
                if entry.io.keep_data {
                    entry.data.extend_from_slice(&d.data);
                }
                match d.status {
                    None => Ok(None),
                    Some(status) => {
                        self.exp_stat_sn = d.stat_sn.wrapping_add(1);
                        self.complete(slot, status, None)
                    }
                }
            }
            Pdu::ScsiResponse(r) => {
                self.window(r.exp_cmd_sn, r.max_cmd_sn);
                self.exp_stat_sn = r.stat_sn.wrapping_add(1);
                let Some((slot, _)) = self.slot_of(r.itt) else {
                    return Err(
                        self.protocol(format!("SCSI Response for unknown ITT {:#x}", r.itt))
                    );
                };
                if r.response != 0 {
                    return Err(self.protocol(format!(
                        "target failure (iSCSI response {:#04x}) for ITT {:#x}",
                        r.response, r.itt
                    )));
                }
                let sense = r.sense().map(<[u8]>::to_vec);
                self.complete(slot, r.status, sense)
            }
            Pdu::R2t(r) => {
                self.window(r.exp_cmd_sn, r.max_cmd_sn);
                self.on_r2t(&r)?;
                Ok(None)
            }
            other => {
                self.housekeeping(other)?;
                Ok(None)
            }
        }
    }

    /// Sends the Data-Out PDUs an R2T asks for (§11.8), each at most the
    /// target's MaxRecvDataSegmentLength.
    fn on_r2t(&mut self, r: &pdu::R2t) -> Result<(), SessionError> {
        let max = self.params.target_max_recv as usize;
        let (lun, exp_stat_sn) = (self.lun, self.exp_stat_sn);
        let Some((_, entry)) = self.slot_of(r.itt) else {
            return Err(self.protocol(format!("R2T for unknown ITT {:#x}", r.itt)));
        };
        let Some(data) = entry.io.write.clone() else {
            return Err(self.protocol(format!("R2T for a read (ITT {:#x})", r.itt)));
        };
        let start = r.buffer_offset as usize;
        let end = start.saturating_add(r.desired_len as usize);
        if end > data.len() || r.desired_len == 0 {
            return Err(self.protocol(format!(
                "R2T past the write's data (offset {}, {} bytes of {})",
                r.buffer_offset,
                r.desired_len,
                data.len()
            )));
        }
        let mut at = start;
        let mut data_sn = 0u32;
        while at < end {
            let piece = (end - at).min(max);
            let pdu = Pdu::DataOut(DataOut {
                final_: at + piece == end,
                lun,
                itt: r.itt,
                ttt: r.ttt,
                exp_stat_sn,
                data_sn,
                buffer_offset: at as u32,
                data: data.slice(at..at + piece),
            });
            self.encode(&pdu, self.tx_config())?;
            at += piece;
            data_sn += 1;
        }
        Ok(())
    }

    fn complete(
        &mut self,
        slot: usize,
        status: u8,
        sense: Option<Vec<u8>>,
    ) -> Result<Option<Done>, SessionError> {
        let Some(entry) = self.finish(slot) else {
            return Ok(None);
        };
        if status != GOOD {
            return Err(SessionError::Scsi {
                op: if entry.io.write.is_some() {
                    "WRITE(16)"
                } else {
                    "READ(16)"
                },
                lba: entry.io.lba,
                blocks: entry.io.blocks,
                status: describe_status(status, sense.as_deref()),
            });
        }
        if entry.io.write.is_none() && entry.received_bytes != entry.expected_bytes {
            return Err(self.protocol(format!(
                "READ(16) at LBA {} returned {} of {} bytes",
                entry.io.lba, entry.received_bytes, entry.expected_bytes
            )));
        }
        Ok(Some(Done {
            io: entry.io,
            sent: entry.sent,
            data: entry.data.freeze(),
        }))
    }

    /// Logs out (§11.14), so the target ends the session cleanly; errors
    /// are ignored (the measurement is over).
    pub async fn logout(mut self) {
        let itt = self.next_itt(0);
        let request = Pdu::LogoutRequest(LogoutRequest {
            immediate: true,
            reason: 0,
            itt,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        });
        if self.encode(&request, self.tx_config()).is_err() || self.flush().await.is_err() {
            return;
        }
        let wait = async {
            loop {
                match self.recv_pdu().await {
                    Ok(Pdu::LogoutResponse(_)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
    }
}

/// The login's constant fields and its exchange count.
struct LoginExchange {
    isid: [u8; 6],
    itt: u32,
    exchanges: usize,
}

fn parse_text(
    session: &Session,
    spec: &LoginSpec,
    rsp: &LoginResponse,
) -> Result<Vec<text::Pair>, SessionError> {
    text::parse(&rsp.data).map_err(|e| {
        session.login_error(spec, format!("malformed login text from the target: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_numbers_compare_across_the_wrap() {
        assert!(sn_gt(1, 0));
        assert!(sn_gt(0, u32::MAX));
        assert!(!sn_gt(u32::MAX, 0));
        assert!(!sn_gt(5, 5));
    }

    #[test]
    fn luns_use_peripheral_then_flat_addressing() {
        assert_eq!(lun_field(0), 0);
        assert_eq!(lun_field(1), 1 << 48);
        assert_eq!(lun_field(256), 0x41u64 << 56);
        assert_eq!(lun_field(300), (0x41u64 << 56) | (44u64 << 48));
    }

    #[test]
    fn sense_is_described_by_key_and_asc() {
        let mut fixed = [0u8; 18];
        fixed[0] = 0x70;
        fixed[2] = 0x07;
        fixed[12] = 0x27;
        let d = describe_status(0x02, Some(&fixed));
        assert_eq!(d, "CHECK CONDITION, DATA PROTECT (0x7), ASC/ASCQ 27/00");
        let descriptor = [0x72, 0x05, 0x24, 0x00];
        assert!(describe_status(0x02, Some(&descriptor)).contains("ILLEGAL REQUEST"));
    }
}
