//! Malformed input against a real `cstor target` over real TCP (docs/architecture.md,
//! invariant 8: no input crashes a process).
//!
//! Each test starts one replica daemon and one target, opens a *bystander*
//! session, sends one kind of bad input on another connection and asserts
//! the RFC's answer:
//!
//! | input | answer | RFC 7143 |
//! | --- | --- | --- |
//! | garbage instead of a BHS, truncated PDU | connection closed | §7.8, §11.2 |
//! | data segment above MaxRecvDataSegmentLength (declared, or 8192 in login) | connection closed | §13.12 |
//! | bad header digest | connection closed, nothing executed | §7.8 |
//! | bad data digest on immediate data | Reject 0x02, header echoed, CmdSN hole left for the retry | §7.8, §11.17 |
//! | bad data digest on a Data-Out | Reject 0x02, then CHECK CONDITION "protocol service CRC error" once all data came | §7.8, §11.4.7.2 |
//! | unknown opcode | Reject 0x05, header echoed | §11.17.1 |
//! | CmdSN outside [ExpCmdSN, MaxCmdSN] | silently ignored | §4.2.2.1 |
//! | malformed login text, missing/unknown keys | Login Response 02 00 / 02 07 / 02 09, closed | §11.13.5 |
//! | unknown TargetName | 02 03 | §11.13.5 |
//! | CHAP with a wrong secret / initiator not allowed | 02 01 / 02 02 | §11.13.5, §12.1.3 |
//!
//! and then that the target keeps serving: it still runs, a fresh session
//! logs in and writes a block, and the bystander reads that block back.
//!
//! The initiator here is deliberately independent of the target's framing:
//! PDUs are laid out by the crate's encoder *without* digests and digests
//! are added (and checked on receive) with the `crc32c` crate directly; the
//! CHAP response is computed with the `md-5` crate. Only field typing
//! (`pdu::parse`, `Pdu::encode`) is shared with the target.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::{free_addr, pattern, ReplicaProcess, TargetProcess};
use bytes::{Bytes, BytesMut};
use cstor_target::iscsi::limits::MAX_DATA_SEGMENT_FIELD;
use cstor_target::iscsi::pdu::{
    self, DataOut, Digests, FrameConfig, LoginRequest, LoginResponse, NopOut, Pdu, Reject,
    ScsiCommand, TaskAttr, TextRequest,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const VOLUME: &str = "wire";
const INITIATOR: &str = "iqn.2026-11.io.cstor.test:wire";
/// What we declare as our MaxRecvDataSegmentLength (RFC 7143 §13.12).
const OUR_MAX_RECV_DATA_SEGMENT: &str = "262144";
/// A hang guard, not a timing assertion: the target answers in
/// milliseconds, this only turns a hung test into a failed one.
const IO_TIMEOUT: Duration = Duration::from_secs(20);
const BHS_LEN: usize = 48;
/// The tag that means "no task" (RFC 7143 §11.18, §11.19).
const NO_TAG: u32 = u32::MAX;

const GOOD: u8 = 0x00;
const CHECK_CONDITION: u8 = 0x02;
const UNIT_ATTENTION: u8 = 0x06;

/// Reject reasons, RFC 7143 §11.17.1.
const REJECT_DATA_DIGEST: u8 = 0x02;
const REJECT_COMMAND_NOT_SUPPORTED: u8 = 0x05;

// ---------------------------------------------------------------- framing

/// The four wire bytes of an iSCSI CRC32C digest, least significant first
/// (RFC 7143 §11.1, Appendix B.4).
fn digest(bytes: &[u8]) -> [u8; 4] {
    crc32c::crc32c(bytes).to_le_bytes()
}

/// Inserts the header and data digests `digests` asks for into a PDU laid
/// out without any.
fn with_digests(plain: &[u8], digests: Digests) -> Vec<u8> {
    let header_len = BHS_LEN + usize::from(plain[4]) * 4;
    let (header, data) = plain.split_at(header_len);
    let mut out = header.to_vec();
    if digests.header {
        out.extend_from_slice(&digest(header));
    }
    out.extend_from_slice(data);
    if digests.data && !data.is_empty() {
        out.extend_from_slice(&digest(data));
    }
    out
}

/// `pdu` laid out without digests.
fn plain(pdu: &Pdu) -> Vec<u8> {
    let mut buf = BytesMut::new();
    pdu.encode(&mut buf, &no_digests_cfg()).unwrap();
    buf.to_vec()
}

fn no_digests_cfg() -> FrameConfig {
    FrameConfig {
        digests: Digests::default(),
        max_data_segment_bytes: MAX_DATA_SEGMENT_FIELD,
    }
}

fn padded(len: usize) -> usize {
    len + pdu::pad_len(len)
}

// ------------------------------------------------------------------- text

fn text(pairs: &[(&str, &str)]) -> Bytes {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    Bytes::from(out)
}

fn pairs(data: &[u8]) -> Vec<(String, String)> {
    data.split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let p = String::from_utf8_lossy(p);
            let (k, v) = p.split_once('=').expect("key=value");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn value(data: &[u8], key: &str) -> Option<String> {
    pairs(data)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::from("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn unhex(s: &str) -> Vec<u8> {
    let digits = s.strip_prefix("0x").expect("a 0x binary value");
    assert_eq!(digits.len() % 2, 0, "odd hex value {s}");
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
        .collect()
}

/// CHAP_R for MD5 (RFC 1994 §4.1): MD5(identifier | secret | challenge).
fn chap_md5(id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
    use md5::Digest;
    let mut h = md5::Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().to_vec()
}

// -------------------------------------------------------------- initiator

#[derive(Debug, Clone)]
struct Chap {
    user: String,
    secret: String,
}

#[derive(Debug, Clone)]
enum SessionKind {
    Normal { target: String },
    Discovery,
}

#[derive(Debug, Clone)]
struct LoginParams {
    initiator: String,
    kind: SessionKind,
    digests: Digests,
    chap: Option<Chap>,
}

impl LoginParams {
    fn identity(&self) -> Vec<(&str, &str)> {
        let mut keys = vec![("InitiatorName", self.initiator.as_str())];
        match &self.kind {
            SessionKind::Normal { target } => {
                keys.push(("SessionType", "Normal"));
                keys.push(("TargetName", target.as_str()));
            }
            SessionKind::Discovery => keys.push(("SessionType", "Discovery")),
        }
        keys
    }

    fn operational(&self) -> Vec<(&str, &str)> {
        let crc = |on| if on { "CRC32C" } else { "None" };
        let mut keys = vec![
            ("HeaderDigest", crc(self.digests.header)),
            ("DataDigest", crc(self.digests.data)),
            ("MaxRecvDataSegmentLength", OUR_MAX_RECV_DATA_SEGMENT),
        ];
        if matches!(self.kind, SessionKind::Normal { .. }) {
            keys.extend([
                ("InitialR2T", "Yes"),
                ("ImmediateData", "Yes"),
                ("MaxBurstLength", "262144"),
                ("FirstBurstLength", "65536"),
                ("MaxOutstandingR2T", "1"),
                ("ErrorRecoveryLevel", "0"),
                ("MaxConnections", "1"),
                ("DataPDUInOrder", "Yes"),
                ("DataSequenceInOrder", "Yes"),
                ("DefaultTime2Wait", "2"),
                ("DefaultTime2Retain", "0"),
            ]);
        }
        keys
    }
}

/// What a SCSI command ended with.
#[derive(Debug)]
struct Completion {
    status: u8,
    data: Vec<u8>,
    sense: Option<Vec<u8>>,
}

/// One initiator connection speaking iSCSI by hand.
struct Initiator {
    stream: TcpStream,
    /// Digests in effect (none during login).
    digests: Digests,
    isid: [u8; 6],
    next_itt: u32,
    /// CmdSN of the next non-immediate command.
    cmd_sn: u32,
    exp_stat_sn: u32,
    /// MaxCmdSN of the last response that carried one.
    max_cmd_sn: u32,
    /// The target's declared MaxRecvDataSegmentLength.
    target_max_recv: u32,
    block_size: u32,
}

impl Initiator {
    async fn connect(portal: SocketAddr) -> Self {
        let stream = TcpStream::connect(portal).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let tag = crate::common::rand_u64().to_be_bytes();
        Self {
            stream,
            digests: Digests::default(),
            // Type 0x80 (random) ISID, RFC 7143 §11.12.5.
            isid: [0x80, tag[0], tag[1], tag[2], tag[3], tag[4]],
            next_itt: 1,
            cmd_sn: u32::from_be_bytes([tag[5], tag[6], tag[7], 0]),
            exp_stat_sn: 0,
            max_cmd_sn: 0,
            target_max_recv: 8192,
            block_size: 0,
        }
    }

    /// Connects and logs in with `params`; panics unless the login succeeds.
    async fn open(portal: SocketAddr, params: &LoginParams) -> Self {
        let mut me = Self::connect(portal).await;
        let rsp = me.login(params).await;
        assert_eq!(
            (rsp.status_class, rsp.status_detail),
            (0, 0),
            "login refused: {rsp:?}"
        );
        me
    }

    fn itt(&mut self) -> u32 {
        let itt = self.next_itt;
        self.next_itt += 1;
        itt
    }

    fn take_cmd_sn(&mut self) -> u32 {
        let sn = self.cmd_sn;
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        sn
    }

    /// `pdu` as it goes on the wire with the digests in effect.
    fn wire(&self, pdu: &Pdu) -> Vec<u8> {
        with_digests(&plain(pdu), self.digests)
    }

    async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    async fn send(&mut self, pdu: &Pdu) {
        let bytes = self.wire(pdu);
        self.send_raw(&bytes).await.unwrap();
    }

    /// Reads one PDU, checking its digests; `None` once the target closed
    /// the connection (FIN or RST).
    async fn read_pdu(&mut self) -> Option<Pdu> {
        let mut frame = vec![0u8; BHS_LEN];
        self.stream.read_exact(&mut frame).await.ok()?;
        let ahs_len = usize::from(frame[4]) * 4;
        let data_len =
            usize::from(frame[5]) << 16 | usize::from(frame[6]) << 8 | usize::from(frame[7]);
        frame.resize(BHS_LEN + ahs_len, 0);
        self.stream.read_exact(&mut frame[BHS_LEN..]).await.ok()?;
        if self.digests.header {
            let mut d = [0u8; 4];
            self.stream.read_exact(&mut d).await.ok()?;
            assert_eq!(d, digest(&frame), "bad header digest from the target");
        }
        let start = frame.len();
        frame.resize(start + padded(data_len), 0);
        self.stream.read_exact(&mut frame[start..]).await.ok()?;
        if self.digests.data && data_len > 0 {
            let mut d = [0u8; 4];
            self.stream.read_exact(&mut d).await.ok()?;
            assert_eq!(
                d,
                digest(&frame[start..]),
                "bad data digest from the target"
            );
        }
        Some(pdu::parse(Bytes::from(frame), &no_digests_cfg()).expect("undecodable target PDU"))
    }

    /// The next PDU for us (keepalive pings are answered and skipped), or
    /// `None` when the connection closed.
    async fn recv(&mut self) -> Option<Pdu> {
        loop {
            let pdu = tokio::time::timeout(IO_TIMEOUT, self.read_pdu())
                .await
                .expect("no PDU from the target within the hang guard")?;
            if let Pdu::NopIn(ping) = &pdu {
                if ping.itt == NO_TAG {
                    if ping.ttt != NO_TAG {
                        let answer = Pdu::NopOut(NopOut {
                            immediate: true,
                            lun: ping.lun,
                            itt: NO_TAG,
                            ttt: ping.ttt,
                            cmd_sn: self.cmd_sn,
                            exp_stat_sn: ping.stat_sn,
                            data: Bytes::new(),
                        });
                        self.send(&answer).await;
                    }
                    continue;
                }
            }
            self.note(&pdu);
            return Some(pdu);
        }
    }

    /// Tracks StatSN and MaxCmdSN from a target PDU.
    fn note(&mut self, pdu: &Pdu) {
        let (stat_sn, max_cmd_sn) = match pdu {
            Pdu::NopIn(p) => (Some(p.stat_sn), p.max_cmd_sn),
            Pdu::ScsiResponse(p) => (Some(p.stat_sn), p.max_cmd_sn),
            Pdu::LoginResponse(p) => (Some(p.stat_sn), p.max_cmd_sn),
            Pdu::TextResponse(p) => (Some(p.stat_sn), p.max_cmd_sn),
            Pdu::DataIn(p) => (p.status.map(|_| p.stat_sn), p.max_cmd_sn),
            Pdu::Reject(p) => (Some(p.stat_sn), p.max_cmd_sn),
            Pdu::LogoutResponse(p) => (Some(p.stat_sn), p.max_cmd_sn),
            _ => (None, self.max_cmd_sn),
        };
        if let Some(sn) = stat_sn {
            self.exp_stat_sn = sn.wrapping_add(1);
        }
        self.max_cmd_sn = max_cmd_sn;
    }

    /// Asserts that the target closes the connection without sending
    /// anything more.
    async fn expect_closed(&mut self) {
        match tokio::time::timeout(IO_TIMEOUT, self.read_pdu()).await {
            Ok(None) => {}
            Ok(Some(pdu)) => panic!("expected the connection to close, got {pdu:?}"),
            Err(_) => panic!("the target kept the connection open"),
        }
    }

    /// The next PDU, which must be a Reject.
    async fn expect_reject(&mut self) -> Reject {
        match self.recv().await {
            Some(Pdu::Reject(r)) => r,
            other => panic!("expected a Reject, got {other:?}"),
        }
    }

    // ---------------------------------------------------------- login

    async fn login_exchange(
        &mut self,
        transit: bool,
        csg: u8,
        nsg: u8,
        data: Bytes,
    ) -> LoginResponse {
        let request = Pdu::LoginRequest(LoginRequest {
            transit,
            continue_: false,
            csg,
            nsg,
            version_max: 0,
            version_min: 0,
            isid: self.isid,
            tsih: 0,
            itt: self.itt(),
            cid: 1,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data,
        });
        self.send(&request).await;
        match self.recv().await {
            Some(Pdu::LoginResponse(r)) => r,
            other => panic!("expected a Login Response, got {other:?}"),
        }
    }

    /// Logs in with `params`: security stage with CHAP when `params.chap`
    /// is set, then operational, then full feature. Returns the failing
    /// response, or the final one after switching to full feature phase.
    async fn login(&mut self, params: &LoginParams) -> LoginResponse {
        let mut keys = params.identity();
        if let Some(chap) = &params.chap {
            keys.push(("AuthMethod", "CHAP"));
            let rsp = self.login_exchange(false, 0, 1, text(&keys)).await;
            if rsp.status_class != 0 {
                return rsp;
            }
            assert_eq!(value(&rsp.data, "AuthMethod").as_deref(), Some("CHAP"));
            let rsp = self
                .login_exchange(false, 0, 1, text(&[("CHAP_A", "5")]))
                .await;
            if rsp.status_class != 0 {
                return rsp;
            }
            assert_eq!(value(&rsp.data, "CHAP_A").as_deref(), Some("5"));
            let id: u8 = value(&rsp.data, "CHAP_I").unwrap().parse().unwrap();
            let challenge = unhex(&value(&rsp.data, "CHAP_C").unwrap());
            let response = hex(&chap_md5(id, chap.secret.as_bytes(), &challenge));
            let reply = text(&[("CHAP_N", &chap.user), ("CHAP_R", &response)]);
            let rsp = self.login_exchange(true, 0, 1, reply).await;
            if rsp.status_class != 0 {
                return rsp;
            }
            assert!(
                rsp.transit && rsp.nsg == 1,
                "no move to operational: {rsp:?}"
            );
            keys = Vec::new();
        }
        keys.extend(params.operational());
        let rsp = self.login_exchange(true, 1, 3, text(&keys)).await;
        if rsp.status_class != 0 {
            return rsp;
        }
        assert!(rsp.transit && rsp.nsg == 3, "login not complete: {rsp:?}");
        assert_ne!(rsp.tsih, 0, "no TSIH for the new session");
        let crc = |on| if on { "CRC32C" } else { "None" };
        assert_eq!(
            value(&rsp.data, "HeaderDigest").as_deref(),
            Some(crc(params.digests.header)),
            "{:?}",
            pairs(&rsp.data)
        );
        assert_eq!(
            value(&rsp.data, "DataDigest").as_deref(),
            Some(crc(params.digests.data))
        );
        if let Some(max) = value(&rsp.data, "MaxRecvDataSegmentLength") {
            self.target_max_recv = max.parse().unwrap();
        }
        // RFC 7143 §13.1: digests start with the first PDU after the final
        // Login Response.
        self.digests = params.digests;
        rsp
    }

    // ----------------------------------------------------------- SCSI

    /// A SCSI Command for `cdb`, all write data sent as immediate data.
    fn command(&mut self, cdb: [u8; 16], read_len: u32, data: Bytes) -> ScsiCommand {
        let write = !data.is_empty();
        ScsiCommand {
            immediate: false,
            final_: true,
            read: read_len > 0,
            write,
            attr: TaskAttr::Simple,
            lun: 0,
            itt: self.itt(),
            expected_data_len: if write {
                u32::try_from(data.len()).unwrap()
            } else {
                read_len
            },
            cmd_sn: self.take_cmd_sn(),
            exp_stat_sn: self.exp_stat_sn,
            cdb: Bytes::copy_from_slice(&cdb),
            bidi_read_len: None,
            data,
        }
    }

    async fn completion(&mut self, itt: u32, read_len: u32) -> Completion {
        let mut data = vec![0u8; read_len as usize];
        loop {
            match self.recv().await {
                Some(Pdu::DataIn(d)) if d.itt == itt => {
                    let at = d.buffer_offset as usize;
                    data[at..at + d.data.len()].copy_from_slice(&d.data);
                    if let Some(status) = d.status {
                        return Completion {
                            status,
                            data,
                            sense: None,
                        };
                    }
                }
                Some(Pdu::ScsiResponse(r)) if r.itt == itt => {
                    assert_eq!(r.response, 0, "target failure: {r:?}");
                    return Completion {
                        status: r.status,
                        data,
                        sense: r.sense().map(<[u8]>::to_vec),
                    };
                }
                other => panic!("waiting for ITT {itt:#x}, got {other:?}"),
            }
        }
    }

    async fn run(&mut self, cdb: [u8; 16], read_len: u32, data: Bytes) -> Completion {
        let command = self.command(cdb, read_len, data);
        let itt = command.itt;
        self.send(&Pdu::ScsiCommand(command)).await;
        self.completion(itt, read_len).await
    }

    /// TEST UNIT READY until GOOD, taking the new nexus' power-on unit
    /// attention (SAM-5 §5.14) if there is one; then READ CAPACITY(10).
    async fn ready(&mut self) {
        let first = self.run([0; 16], 0, Bytes::new()).await;
        if first.status != GOOD {
            assert_eq!(first.status, CHECK_CONDITION, "{first:?}");
            let sense = first.sense.as_deref().unwrap_or_default();
            assert_eq!(
                sense.get(2).map(|k| k & 0x0f),
                Some(UNIT_ATTENTION),
                "{first:?}"
            );
            let second = self.run([0; 16], 0, Bytes::new()).await;
            assert_eq!(second.status, GOOD, "{second:?}");
        }
        let mut cdb = [0u8; 16];
        cdb[0] = 0x25; // READ CAPACITY(10)
        let cap = self.run(cdb, 8, Bytes::new()).await;
        assert_eq!(cap.status, GOOD, "{cap:?}");
        self.block_size = u32::from_be_bytes(cap.data[4..8].try_into().unwrap());
        assert!(self.block_size >= 512, "block size {}", self.block_size);
    }

    async fn write10(&mut self, lba: u32, data: Bytes) -> Completion {
        let blocks = u16::try_from(data.len() / self.block_size as usize).unwrap();
        self.run(rw10(0x2a, lba, blocks), 0, data).await
    }

    async fn read10(&mut self, lba: u32, blocks: u16) -> Vec<u8> {
        let len = u32::from(blocks) * self.block_size;
        let done = self.run(rw10(0x28, lba, blocks), len, Bytes::new()).await;
        assert_eq!(done.status, GOOD, "READ(10) at {lba}: {done:?}");
        done.data
    }

    fn nop_out(&mut self, data: Bytes) -> NopOut {
        NopOut {
            immediate: false,
            lun: 0,
            itt: self.itt(),
            ttt: NO_TAG,
            cmd_sn: self.take_cmd_sn(),
            exp_stat_sn: self.exp_stat_sn,
            data,
        }
    }

    /// A NOP-Out ping; asserts the NOP-In answering it echoes `data`.
    async fn ping(&mut self, data: Bytes) {
        let nop = self.nop_out(data.clone());
        let itt = nop.itt;
        self.send(&Pdu::NopOut(nop)).await;
        match self.recv().await {
            Some(Pdu::NopIn(answer)) => {
                assert_eq!(answer.itt, itt, "NOP-In for another ping");
                assert!(answer.data == data, "ping data not echoed");
            }
            other => panic!("expected a NOP-In, got {other:?}"),
        }
    }

    /// SendTargets=All on a discovery session: the TargetName values.
    async fn send_targets(&mut self) -> Vec<String> {
        let request = TextRequest {
            immediate: false,
            final_: true,
            continue_: false,
            lun: 0,
            itt: self.itt(),
            ttt: NO_TAG,
            cmd_sn: self.take_cmd_sn(),
            exp_stat_sn: self.exp_stat_sn,
            data: text(&[("SendTargets", "All")]),
        };
        self.send(&Pdu::TextRequest(request)).await;
        match self.recv().await {
            Some(Pdu::TextResponse(r)) => pairs(&r.data)
                .into_iter()
                .filter(|(k, _)| k == "TargetName")
                .map(|(_, v)| v)
                .collect(),
            other => panic!("expected a Text Response, got {other:?}"),
        }
    }
}

/// READ(10) / WRITE(10) CDB (SBC-4 §5.16, §5.41).
fn rw10(opcode: u8, lba: u32, blocks: u16) -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[0] = opcode;
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

// ---------------------------------------------------------------- fixture

/// One replica daemon and one target serving `VOLUME` over it.
struct Fixture {
    // Fields drop in order: the target before the replica it writes to.
    target: TargetProcess,
    _replica: ReplicaProcess,
    _dir: tempfile::TempDir,
    initiator: String,
    chap: Option<Chap>,
}

impl Fixture {
    fn start() -> Self {
        Self::start_with(&[], &[], INITIATOR, None)
    }

    fn start_with(
        args: &[&str],
        env: &[(&str, &str)],
        initiator: &str,
        chap: Option<Chap>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let replica = ReplicaProcess::create(dir.path(), "256MiB");
        replica.ctl(&["volume", "create", VOLUME, "--size", "64MiB"]);
        let target =
            TargetProcess::start_with(dir.path(), free_addr(), VOLUME, &[replica.data], args, env);
        Self {
            target,
            _replica: replica,
            _dir: dir,
            initiator: initiator.to_owned(),
            chap,
        }
    }

    fn portal(&self) -> SocketAddr {
        self.target.portal
    }

    fn params(&self, digests: Digests) -> LoginParams {
        LoginParams {
            initiator: self.initiator.clone(),
            kind: SessionKind::Normal {
                target: self.target.iqn.clone(),
            },
            digests,
            chap: self.chap.clone(),
        }
    }

    /// A logged-in normal session, ready for IO.
    async fn session(&self, digests: Digests) -> Initiator {
        let mut session = Initiator::open(self.portal(), &self.params(digests)).await;
        session.ready().await;
        session
    }

    /// The target keeps serving: it still runs, a fresh session writes a
    /// block at `lba` and reads it back, and `bystander` (logged in before
    /// the bad input) still answers a ping and reads the same block.
    async fn assert_serves(&mut self, bystander: &mut Initiator, lba: u32) {
        assert!(
            self.target.is_running(),
            "the target died: {}",
            self.target.log_text()
        );
        let mut fresh = self.session(Digests::default()).await;
        let block = pattern(u64::from(lba), 1, fresh.block_size as usize);
        let written = fresh.write10(lba, block.clone()).await;
        assert_eq!(written.status, GOOD, "{written:?}");
        assert!(
            fresh.read10(lba, 1).await == block,
            "fresh session read back other data"
        );
        bystander.ping(Bytes::from_static(b"still there?")).await;
        assert!(
            bystander.read10(lba, 1).await == block,
            "bystander read other data"
        );
    }

    /// A discovery session still lists the target.
    async fn assert_discovers(&self) {
        let params = LoginParams {
            initiator: self.initiator.clone(),
            kind: SessionKind::Discovery,
            digests: Digests::default(),
            chap: None,
        };
        let mut discovery = Initiator::open(self.portal(), &params).await;
        assert_eq!(
            discovery.send_targets().await,
            vec![self.target.iqn.clone()]
        );
    }

    /// Sends one Login Request with `data` on a new connection and asserts
    /// the RFC 7143 §11.13.5 status, then that the connection closes.
    async fn assert_login_fails(&self, data: Bytes, class: u8, detail: u8) {
        let mut conn = Initiator::connect(self.portal()).await;
        let rsp = conn.login_exchange(true, 1, 3, data).await;
        assert_eq!(
            (rsp.status_class, rsp.status_detail),
            (class, detail),
            "{rsp:?}"
        );
        assert_eq!(rsp.tsih, 0, "a failed login made a session");
        conn.expect_closed().await;
    }
}

const BOTH_DIGESTS: Digests = Digests {
    header: true,
    data: true,
};
const HEADER_DIGEST: Digests = Digests {
    header: true,
    data: false,
};

// ------------------------------------------------------------------ tests

#[test]
fn our_digest_matches_rfc7143_appendix_b4() {
    assert_eq!(digest(&[0u8; 32]), [0xaa, 0x36, 0x91, 0x8a]);
    assert_eq!(digest(&[0xffu8; 32]), [0x43, 0xab, 0xa8, 0x62]);
}

#[tokio::test]
async fn garbage_instead_of_a_login_bhs_closes_the_connection() {
    let mut fx = Fixture::start();
    let mut bystander = fx.session(Digests::default()).await;
    let mut conn = Initiator::connect(fx.portal()).await;
    // An HTTP client on the iSCSI port: read as a BHS its AHS and data
    // lengths are absurd; enough bytes follow to cover the claimed AHS.
    let mut garbage = b"GET / HTTP/1.1\r\nHost: cstor\r\nAccept: */*\r\n\r\n".to_vec();
    garbage.resize(1024, b'x');
    conn.send_raw(&garbage).await.unwrap();
    conn.expect_closed().await;
    fx.assert_serves(&mut bystander, 10).await;
}

#[tokio::test]
async fn garbage_in_full_feature_phase_closes_the_connection() {
    let mut fx = Fixture::start();
    let mut bystander = fx.session(Digests::default()).await;
    let mut conn = fx.session(Digests::default()).await;
    // All ones: a target opcode claiming a 16 MiB data segment.
    conn.send_raw(&[0xff; 64]).await.unwrap();
    conn.expect_closed().await;
    fx.assert_serves(&mut bystander, 11).await;
}

#[tokio::test]
async fn truncated_pdus_followed_by_close_leave_the_target_serving() {
    let mut fx = Fixture::start();
    let mut bystander = fx.session(Digests::default()).await;

    // Half a Login Request BHS, then close.
    let mut conn = Initiator::connect(fx.portal()).await;
    let login = Pdu::LoginRequest(LoginRequest {
        transit: true,
        continue_: false,
        csg: 1,
        nsg: 3,
        version_max: 0,
        version_min: 0,
        isid: conn.isid,
        tsih: 0,
        itt: 1,
        cid: 1,
        cmd_sn: 1,
        exp_stat_sn: 0,
        data: text(&[("InitiatorName", INITIATOR)]),
    });
    conn.send_raw(&plain(&login)[..20]).await.unwrap();
    drop(conn);

    // In full feature phase: a whole BHS whose data segment stops short.
    let mut conn = fx.session(Digests::default()).await;
    let block = pattern(12, 9, conn.block_size as usize);
    let write = conn.command(rw10(0x2a, 12, 1), 0, block);
    let wire = conn.wire(&Pdu::ScsiCommand(write));
    conn.send_raw(&wire[..BHS_LEN + 100]).await.unwrap();
    drop(conn);

    // With digests: the header digest cut in half.
    let mut conn = fx.session(BOTH_DIGESTS).await;
    let nop = conn.nop_out(Bytes::new());
    let wire = conn.wire(&Pdu::NopOut(nop));
    conn.send_raw(&wire[..BHS_LEN + 2]).await.unwrap();
    drop(conn);

    fx.assert_serves(&mut bystander, 13).await;
    // The cut write never reached the volume.
    let zeros = vec![0u8; bystander.block_size as usize];
    assert!(
        bystander.read10(12, 1).await == zeros,
        "a truncated write was executed"
    );
}

#[tokio::test]
async fn data_segment_above_max_recv_data_segment_length_closes_the_connection() {
    let mut fx = Fixture::start();
    let mut bystander = fx.session(Digests::default()).await;
    let mut conn = fx.session(Digests::default()).await;
    let max = conn.target_max_recv;
    assert!(max >= 512, "declared MaxRecvDataSegmentLength {max}");
    // Exactly the declared maximum is fine (the echo fits ours too).
    assert!(max <= OUR_MAX_RECV_DATA_SEGMENT.parse().unwrap());
    conn.ping(Bytes::from(vec![0x5a; max as usize])).await;
    // One word more is a protocol error: the target must not wait for (or
    // buffer) the data, so only the header and a little data are sent.
    let nop = conn.nop_out(Bytes::from(vec![0x5a; max as usize + 4]));
    let wire = conn.wire(&Pdu::NopOut(nop));
    conn.send_raw(&wire[..BHS_LEN + 1024]).await.unwrap();
    conn.expect_closed().await;

    // During login the limit is the default 8192 bytes, whatever the
    // target declares later (RFC 7143 §13.12).
    let mut conn = Initiator::connect(fx.portal()).await;
    let mut data = text(&[("InitiatorName", INITIATOR)]).to_vec();
    data.resize(8192 + 4, 0);
    let login = Pdu::LoginRequest(LoginRequest {
        transit: true,
        continue_: false,
        csg: 1,
        nsg: 3,
        version_max: 0,
        version_min: 0,
        isid: conn.isid,
        tsih: 0,
        itt: 1,
        cid: 1,
        cmd_sn: conn.cmd_sn,
        exp_stat_sn: 0,
        data: Bytes::from(data),
    });
    let wire = conn.wire(&login);
    conn.send_raw(&wire[..BHS_LEN + 1024]).await.unwrap();
    conn.expect_closed().await;

    fx.assert_serves(&mut bystander, 14).await;
}

#[tokio::test]
async fn bad_header_digest_closes_the_connection_without_executing() {
    let mut fx = Fixture::start();
    let mut bystander = fx.session(Digests::default()).await;

    // The digest itself corrupted.
    let mut conn = fx.session(HEADER_DIGEST).await;
    conn.ping(Bytes::from_static(b"digests work")).await;
    let nop = conn.nop_out(Bytes::new());
    let mut wire = conn.wire(&Pdu::NopOut(nop));
    wire[BHS_LEN] ^= 0x01;
    conn.send_raw(&wire).await.unwrap();
    conn.expect_closed().await;

    // A header bit flipped in transit (the LBA of a WRITE), digest intact:
    // the write must not land anywhere.
    let mut conn = fx.session(HEADER_DIGEST).await;
    let block = pattern(15, 3, conn.block_size as usize);
    let write = conn.command(rw10(0x2a, 15, 1), 0, block);
    let mut wire = conn.wire(&Pdu::ScsiCommand(write));
    wire[32 + 5] ^= 0x01; // CDB byte 5: LBA 15 becomes 14
    conn.send_raw(&wire).await.unwrap();
    conn.expect_closed().await;

    fx.assert_serves(&mut bystander, 16).await;
    let zeros = vec![0u8; bystander.block_size as usize];
    assert!(
        bystander.read10(14, 1).await == zeros,
        "corrupted write executed at LBA 14"
    );
    assert!(
        bystander.read10(15, 1).await == zeros,
        "corrupted write executed at LBA 15"
    );
}

#[tokio::test]
async fn bad_data_digest_on_immediate_data_is_rejected_and_the_session_goes_on() {
    let mut fx = Fixture::start();
    let mut bystander = fx.session(Digests::default()).await;
    let mut conn = fx.session(BOTH_DIGESTS).await;
    let lba = 20;
    let bad = pattern(u64::from(lba), 1, conn.block_size as usize);
    let write = conn.command(rw10(0x2a, lba, 1), 0, bad);
    let cmd_sn = write.cmd_sn;
    let mut wire = conn.wire(&Pdu::ScsiCommand(write));
    let last = wire.len() - 1;
    wire[last] ^= 0x80; // the data digest
    conn.send_raw(&wire).await.unwrap();

    let reject = conn.expect_reject().await;
    assert_eq!(reject.reason, REJECT_DATA_DIGEST, "{reject:?}");
    assert!(
        reject.header[..] == wire[..BHS_LEN],
        "Reject does not echo the header"
    );
    // The command was discarded: its CmdSN is still expected, for the
    // initiator's retry (RFC 7143 §7.8, §6.2.1).
    assert_eq!(reject.exp_cmd_sn, cmd_sn, "{reject:?}");

    // The hole is filled by the next command with that CmdSN: the
    // discarded write did not land.
    conn.cmd_sn = cmd_sn;
    let zeros = vec![0u8; conn.block_size as usize];
    assert!(
        conn.read10(lba, 1).await == zeros,
        "the corrupted write landed"
    );
    let good = pattern(u64::from(lba), 2, conn.block_size as usize);
    let done = conn.write10(lba, good.clone()).await;
    assert_eq!(done.status, GOOD, "{done:?}");
    assert!(conn.read10(lba, 1).await == good);

    fx.assert_serves(&mut bystander, 21).await;
}

#[tokio::test]
async fn bad_data_digest_on_a_data_out_fails_the_write_with_crc_error() {
    let mut fx = Fixture::start();
    let mut bystander = fx.session(Digests::default()).await;
    let mut conn = fx.session(BOTH_DIGESTS).await;
    let lba = 24;
    let size = conn.block_size as usize;
    // Two blocks, no immediate data: the target solicits them with an R2T.
    let mut write = conn.command(rw10(0x2a, lba, 2), 0, Bytes::new());
    write.write = true;
    write.expected_data_len = 2 * conn.block_size;
    let itt = write.itt;
    conn.send(&Pdu::ScsiCommand(write)).await;
    let r2t = match conn.recv().await {
        Some(Pdu::R2t(r2t)) => r2t,
        other => panic!("expected an R2T, got {other:?}"),
    };
    assert_eq!((r2t.itt, r2t.buffer_offset), (itt, 0));
    assert_eq!(r2t.desired_len, 2 * conn.block_size);
    let data = pattern(u64::from(lba), 1, 2 * size);
    let data_out = |data_sn: u32, final_| {
        let at = data_sn as usize * size;
        Pdu::DataOut(DataOut {
            final_,
            lun: 0,
            itt,
            ttt: r2t.ttt,
            exp_stat_sn: conn.exp_stat_sn,
            data_sn,
            buffer_offset: u32::try_from(at).unwrap(),
            data: data.slice(at..at + size),
        })
    };
    let (first, second) = (data_out(0, false), data_out(1, true));
    let mut corrupt = conn.wire(&first);
    corrupt[BHS_LEN + 4 + 100] ^= 0x04; // a data byte, digest unchanged
    conn.send_raw(&corrupt).await.unwrap();
    conn.send(&second).await;

    let reject = conn.expect_reject().await;
    assert_eq!(reject.reason, REJECT_DATA_DIGEST, "{reject:?}");
    assert!(
        reject.header[..] == corrupt[..BHS_LEN],
        "Reject does not echo the header"
    );
    let failed = conn.completion(itt, 0).await;
    assert_eq!(failed.status, CHECK_CONDITION, "{failed:?}");
    let sense = failed.sense.expect("sense data");
    // ABORTED COMMAND, PROTOCOL SERVICE CRC ERROR (RFC 7143 §11.4.7.2).
    assert_eq!((sense[2] & 0x0f, sense[12], sense[13]), (0x0b, 0x47, 0x05));
    assert!(
        conn.read10(lba, 2).await == vec![0u8; 2 * size],
        "a write ran on corrupt data"
    );
    // The session goes on: the retried write lands.
    assert_eq!(conn.write10(lba, data.clone()).await.status, GOOD);
    assert!(conn.read10(lba, 2).await == data);

    fx.assert_serves(&mut bystander, 25).await;
}

#[tokio::test]
async fn unknown_opcode_is_rejected_as_command_not_supported() {
    let mut fx = Fixture::start();
    let mut bystander = fx.session(Digests::default()).await;
    let mut conn = fx.session(BOTH_DIGESTS).await;
    // Opcode 0x1c is a vendor-specific initiator opcode (RFC 7143
    // §11.2.1.2) we do not implement; a 5-byte data segment checks that
    // the whole PDU, padding and digest included, is skipped.
    let mut unknown = vec![0u8; BHS_LEN];
    unknown[0] = 0x1c;
    unknown[1] = 0x80;
    unknown[7] = 5;
    unknown[16..20].copy_from_slice(&0x00c0_ffeeu32.to_be_bytes());
    unknown[24..28].copy_from_slice(&conn.cmd_sn.to_be_bytes());
    unknown[28..32].copy_from_slice(&conn.exp_stat_sn.to_be_bytes());
    unknown.extend_from_slice(b"hello\0\0\0");
    conn.send_raw(&with_digests(&unknown, conn.digests))
        .await
        .unwrap();

    let reject = conn.expect_reject().await;
    assert_eq!(reject.reason, REJECT_COMMAND_NOT_SUPPORTED, "{reject:?}");
    assert!(
        reject.header[..] == unknown[..BHS_LEN],
        "Reject does not echo the header"
    );
    assert_eq!(
        reject.exp_cmd_sn, conn.cmd_sn,
        "an unknown PDU took a CmdSN"
    );
    // Still in step: the next PDUs are understood.
    conn.ping(Bytes::from_static(b"in sync")).await;
    let block = pattern(22, 1, conn.block_size as usize);
    assert_eq!(conn.write10(22, block.clone()).await.status, GOOD);
    assert!(conn.read10(22, 1).await == block);

    fx.assert_serves(&mut bystander, 23).await;
}

#[tokio::test]
async fn command_with_cmd_sn_outside_the_window_is_ignored() {
    let mut fx = Fixture::start();
    let mut bystander = fx.session(Digests::default()).await;
    let mut conn = fx.session(Digests::default()).await;
    let lba = 30;
    let size = conn.block_size as usize;

    // Beyond MaxCmdSN.
    let mut ahead = conn.command(rw10(0x2a, lba, 1), 0, pattern(30, 1, size));
    conn.cmd_sn = ahead.cmd_sn; // not consumed
    ahead.cmd_sn = conn.max_cmd_sn.wrapping_add(1);
    conn.send(&Pdu::ScsiCommand(ahead)).await;
    // Below ExpCmdSN: a CmdSN already used.
    let mut stale = conn.command(rw10(0x2a, lba, 1), 0, pattern(30, 2, size));
    conn.cmd_sn = stale.cmd_sn;
    stale.cmd_sn = conn.cmd_sn.wrapping_sub(1);
    conn.send(&Pdu::ScsiCommand(stale)).await;

    // The target handles a connection's PDUs in order, so any answer to the
    // two commands would come before the answer to this ping (and `ping`
    // asserts that the next PDU answers it).
    let max_cmd_sn = conn.max_cmd_sn;
    conn.ping(Bytes::from_static(b"in window")).await;
    let zeros = vec![0u8; size];
    assert!(
        conn.read10(lba, 1).await == zeros,
        "an out-of-window write ran"
    );
    // Dropped, not held for later: walk CmdSN up to and over the one the
    // early write carried. Had it been held, it would run once the gap
    // before it filled (and its CmdSN would be taken).
    while conn.cmd_sn != max_cmd_sn.wrapping_add(2) {
        conn.ping(Bytes::new()).await;
    }
    assert!(
        conn.read10(lba, 1).await == zeros,
        "a write beyond MaxCmdSN was held and ran"
    );
    let block = pattern(30, 3, size);
    assert_eq!(conn.write10(lba, block.clone()).await.status, GOOD);
    assert!(conn.read10(lba, 1).await == block);

    fx.assert_serves(&mut bystander, 31).await;
}

#[tokio::test]
async fn login_text_without_equals_sign_fails_with_initiator_error() {
    let mut fx = Fixture::start();
    let mut bystander = fx.session(Digests::default()).await;
    let iqn = fx.target.iqn.clone();
    let mut data = text(&[("InitiatorName", INITIATOR), ("TargetName", &iqn)]).to_vec();
    data.extend_from_slice(b"NoEqualsSign\0");
    fx.assert_login_fails(Bytes::from(data), 2, 0x00).await;
    fx.assert_serves(&mut bystander, 40).await;
    fx.assert_discovers().await;
}

#[tokio::test]
async fn login_with_unknown_session_type_fails_02_09() {
    let mut fx = Fixture::start();
    let mut bystander = fx.session(Digests::default()).await;
    let iqn = fx.target.iqn.clone();
    let data = text(&[
        ("InitiatorName", INITIATOR),
        ("SessionType", "Bogus"),
        ("TargetName", &iqn),
    ]);
    fx.assert_login_fails(data, 2, 0x09).await;
    fx.assert_serves(&mut bystander, 41).await;
    fx.assert_discovers().await;
}

#[tokio::test]
async fn login_without_initiator_name_fails_02_07() {
    let mut fx = Fixture::start();
    let mut bystander = fx.session(Digests::default()).await;
    let iqn = fx.target.iqn.clone();
    let data = text(&[("SessionType", "Normal"), ("TargetName", &iqn)]);
    fx.assert_login_fails(data, 2, 0x07).await;
    fx.assert_serves(&mut bystander, 42).await;
}

#[tokio::test]
async fn login_naming_an_unknown_target_fails_02_03() {
    let mut fx = Fixture::start();
    let mut bystander = fx.session(Digests::default()).await;
    let data = text(&[
        ("InitiatorName", INITIATOR),
        ("SessionType", "Normal"),
        ("TargetName", "iqn.2016-09.com.openebs.cstor:someone-else"),
    ]);
    fx.assert_login_fails(data, 2, 0x03).await;
    fx.assert_serves(&mut bystander, 43).await;
}

const CHAP_USER: &str = "wire-user";
const CHAP_SECRET: &str = "wire-secret-0123";

fn chap_fixture() -> Fixture {
    Fixture::start_with(
        &["--chap-user", CHAP_USER],
        &[("CSTOR_CHAP_SECRET", CHAP_SECRET)],
        INITIATOR,
        Some(Chap {
            user: CHAP_USER.into(),
            secret: CHAP_SECRET.into(),
        }),
    )
}

#[tokio::test]
async fn chap_with_the_wrong_secret_fails_02_01_and_the_right_one_logs_in() {
    let mut fx = chap_fixture();
    // `session` logs in with the right secret (MD5, CHAP_A=5).
    let mut bystander = fx.session(Digests::default()).await;

    let mut wrong = fx.params(Digests::default());
    wrong.chap = Some(Chap {
        user: CHAP_USER.into(),
        secret: "not-the-secret-at-all".into(),
    });
    let mut conn = Initiator::connect(fx.portal()).await;
    let rsp = conn.login(&wrong).await;
    assert_eq!((rsp.status_class, rsp.status_detail), (2, 0x01), "{rsp:?}");
    conn.expect_closed().await;

    // The right secret under another user name is no better.
    let mut other_user = fx.params(Digests::default());
    other_user.chap = Some(Chap {
        user: "someone-else".into(),
        secret: CHAP_SECRET.into(),
    });
    let mut conn = Initiator::connect(fx.portal()).await;
    let rsp = conn.login(&other_user).await;
    assert_eq!((rsp.status_class, rsp.status_detail), (2, 0x01), "{rsp:?}");
    conn.expect_closed().await;

    fx.assert_serves(&mut bystander, 50).await;
}

#[tokio::test]
async fn login_skipping_required_chap_fails_02_01() {
    let mut fx = chap_fixture();
    let mut bystander = fx.session(Digests::default()).await;
    let mut no_chap = fx.params(Digests::default());
    no_chap.chap = None;
    let mut conn = Initiator::connect(fx.portal()).await;
    let rsp = conn.login(&no_chap).await;
    assert_eq!((rsp.status_class, rsp.status_detail), (2, 0x01), "{rsp:?}");
    conn.expect_closed().await;
    fx.assert_serves(&mut bystander, 51).await;
}

#[tokio::test]
async fn initiator_outside_the_allowlist_fails_02_02() {
    let allowed = "iqn.2026-11.io.cstor.test:allowed";
    let mut fx = Fixture::start_with(&["--allow-initiator", allowed], &[], allowed, None);
    let mut bystander = fx.session(Digests::default()).await;
    let mut stranger = fx.params(Digests::default());
    stranger.initiator = INITIATOR.into();
    let mut conn = Initiator::connect(fx.portal()).await;
    let rsp = conn.login(&stranger).await;
    assert_eq!((rsp.status_class, rsp.status_detail), (2, 0x02), "{rsp:?}");
    conn.expect_closed().await;
    fx.assert_serves(&mut bystander, 52).await;
}
