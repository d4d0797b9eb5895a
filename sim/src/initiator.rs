//! A simulated iSCSI initiator: the PDUs a real one sends, built from the
//! target crate's own PDU types, for the commands of the workload.
//!
//! Job: log in (two stages, as open-iscsi does), send SCSI commands inside
//! the CmdSN window, answer R2Ts with Data-Out, gather Data-In, send ABORT
//! TASK and LOGICAL UNIT RESET, log out. It reuses an ITT as soon as its
//! command is over or aborted, as Linux does, which is what makes a target
//! that confuses an aborted command with its successor visible.
//!
//! Invariants: a command is finished exactly once ([`Finished`]); a
//! command the target aborted, or whose connection was lost, ends with an
//! unknown outcome (its data may or may not have landed).

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use cstor_target::iscsi::pdu::{
    tmf_response, DataOut, LoginRequest, LogoutRequest, Pdu, ScsiCommand, TaskAttr,
    TaskMgmtRequest, TmfFunction,
};
use cstor_target::iscsi::text::{parse, TextWriter};

use crate::model::BLOCK;

/// A SCSI command of the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Read {
        lba: u64,
        blocks: u32,
    },
    /// `data`: the blocks' contents; `id`: the oracle's write id.
    Write {
        lba: u64,
        data: Bytes,
        fua: bool,
        id: u64,
    },
    SyncCache,
    Unmap {
        lba: u64,
        blocks: u32,
        id: u64,
    },
    WriteSame {
        lba: u64,
        blocks: u32,
        block: Bytes,
        id: u64,
    },
    CompareAndWrite {
        lba: u64,
        verify: Bytes,
        data: Bytes,
        id: u64,
    },
}

impl Command {
    /// The oracle's id of what it writes.
    pub fn write_id(&self) -> Option<u64> {
        match self {
            Command::Write { id, .. }
            | Command::Unmap { id, .. }
            | Command::WriteSame { id, .. }
            | Command::CompareAndWrite { id, .. } => Some(*id),
            Command::Read { .. } | Command::SyncCache => None,
        }
    }

    fn cdb_and_data(&self) -> (Vec<u8>, Bytes, u32) {
        let mut cdb = vec![0u8; 16];
        let put_lba16 = |cdb: &mut Vec<u8>, lba: u64, blocks: u32| {
            cdb[2..10].copy_from_slice(&lba.to_be_bytes());
            cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
        };
        match self {
            Command::Read { lba, blocks } => {
                cdb[0] = 0x88;
                put_lba16(&mut cdb, *lba, *blocks);
                (cdb, Bytes::new(), blocks * BLOCK as u32)
            }
            Command::Write { lba, data, fua, .. } => {
                cdb[0] = 0x8a;
                if *fua {
                    cdb[1] = 0x08;
                }
                put_lba16(&mut cdb, *lba, (data.len() / BLOCK) as u32);
                (cdb, data.clone(), 0)
            }
            Command::SyncCache => {
                let mut cdb = vec![0u8; 10];
                cdb[0] = 0x35;
                (cdb, Bytes::new(), 0)
            }
            Command::Unmap { lba, blocks, .. } => {
                let mut cdb = vec![0u8; 10];
                cdb[0] = 0x42;
                let mut list = vec![0u8; 24];
                list[0..2].copy_from_slice(&22u16.to_be_bytes());
                list[2..4].copy_from_slice(&16u16.to_be_bytes());
                list[8..16].copy_from_slice(&lba.to_be_bytes());
                list[16..20].copy_from_slice(&blocks.to_be_bytes());
                cdb[7..9].copy_from_slice(&24u16.to_be_bytes());
                (cdb, Bytes::from(list), 0)
            }
            Command::WriteSame {
                lba, blocks, block, ..
            } => {
                cdb[0] = 0x93;
                put_lba16(&mut cdb, *lba, *blocks);
                (cdb, block.clone(), 0)
            }
            Command::CompareAndWrite {
                lba, verify, data, ..
            } => {
                cdb[0] = 0x89;
                cdb[2..10].copy_from_slice(&lba.to_be_bytes());
                cdb[13] = (data.len() / BLOCK) as u8;
                let mut both = BytesMut::with_capacity(verify.len() + data.len());
                both.extend_from_slice(verify);
                both.extend_from_slice(data);
                (cdb, both.freeze(), 0)
            }
        }
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// GOOD, with the data read (empty for non-reads).
    Good(Bytes),
    /// CHECK CONDITION: sense key, ASC, ASCQ.
    Check { key: u8, asc: u8, ascq: u8 },
    /// Another status (BUSY, TASK SET FULL, RESERVATION CONFLICT...).
    Status(u8),
    /// Aborted by ABORT TASK or a reset, or its connection was lost: it
    /// may or may not have taken effect.
    Unknown,
}

/// A command the initiator finished.
#[derive(Debug, Clone)]
pub struct Finished {
    pub command: Command,
    pub issued: u64,
    pub outcome: Outcome,
    pub itt: u32,
}

#[derive(Debug)]
struct Open {
    command: Command,
    issued: u64,
    cmd_sn: u32,
    data_out: Bytes,
    data_in: BytesMut,
}

/// Where the initiator's connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Down,
    Login1,
    Login2,
    Full,
    LoggingOut,
}

/// One initiator: one session of one connection.
#[derive(Debug)]
pub struct Initiator {
    pub name: String,
    isid: [u8; 6],
    pub phase: Phase,
    cmd_sn: u32,
    max_cmd_sn: u32,
    exp_stat_sn: u32,
    /// The target's MaxRecvDataSegmentLength (Data-Out pieces).
    target_mrdsl: u32,
    open: BTreeMap<u32, Open>,
    /// TMFs in flight: their ITT → the commands they abort (ITT, CmdSN:
    /// the ITT alone may be reused meanwhile).
    tmfs: BTreeMap<u32, (bool, Vec<(u32, u32)>)>,
    /// A LOGICAL UNIT RESET is in flight: no new command until it is
    /// answered (the SCSI error handler quiesces the queue).
    resetting: bool,
    /// Commands a TMF in flight aborts: no more Data-Out for them.
    aborting: std::collections::BTreeSet<u32>,
    logins: u64,
}

const TARGET_IQN_PREFIX: &str = "iqn.2016-09.com.openebs.cstor:";
/// TMF ITTs live above the command ITTs (which reuse small numbers).
const TMF_ITT_BASE: u32 = 0x4000_0000;
/// A command unanswered this long is aborted (Linux's SCSI command
/// timeout, 30 s by default): a target may end a command without any
/// status (TAS = 0: another initiator's LOGICAL UNIT RESET or PREEMPT AND
/// ABORT), and only this timeout makes the initiator learn of it.
pub const COMMAND_TIMEOUT_US: u64 = 30_000_000;

impl Initiator {
    pub fn new(index: u32) -> Self {
        Initiator {
            name: format!("iqn.2026-12.io.cstor.sim:initiator{index}"),
            isid: [0x80, 0, 0, 0x51, 0, index as u8],
            phase: Phase::Down,
            cmd_sn: 1,
            max_cmd_sn: 1,
            exp_stat_sn: 0,
            target_mrdsl: 8192,
            open: BTreeMap::new(),
            tmfs: BTreeMap::new(),
            resetting: false,
            aborting: std::collections::BTreeSet::new(),
            logins: 0,
        }
    }

    pub fn open_commands(&self) -> usize {
        self.open.len()
    }

    /// The issue time of the oldest open command.
    pub fn oldest_open(&self) -> Option<u64> {
        self.open.values().map(|o| o.issued).min()
    }

    /// The oldest open command: its ITT, issue time and command.
    pub fn oldest_open_command(&self) -> Option<(u32, u64, &Command)> {
        self.open
            .iter()
            .min_by_key(|(_, o)| o.issued)
            .map(|(itt, o)| (*itt, o.issued, &o.command))
    }

    /// ITTs of open commands (candidates for ABORT TASK).
    pub fn open_itts(&self) -> Vec<u32> {
        self.open.keys().copied().collect()
    }

    /// May a new command go out now (logged in, inside the window)?
    pub fn can_issue(&self) -> bool {
        self.phase == Phase::Full
            && !self.resetting
            && (self.max_cmd_sn.wrapping_sub(self.cmd_sn) as i32) >= 0
    }

    /// Starts a login on a new connection.
    pub fn login(&mut self, volume: &str) -> Vec<Pdu> {
        self.phase = Phase::Login1;
        self.logins += 1;
        let mut w = TextWriter::new();
        w.add("InitiatorName", &self.name);
        w.add("SessionType", "Normal");
        w.add("TargetName", &format!("{TARGET_IQN_PREFIX}{volume}"));
        w.add("AuthMethod", "None");
        vec![Pdu::LoginRequest(LoginRequest {
            transit: true,
            continue_: false,
            csg: 0,
            nsg: 1,
            version_max: 0,
            version_min: 0,
            isid: self.isid,
            tsih: 0,
            itt: 0,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: 0,
            data: w.finish(),
        })]
    }

    fn login2(&mut self) -> Pdu {
        let mut w = TextWriter::new();
        w.add("HeaderDigest", "None");
        w.add("DataDigest", "None");
        w.add("MaxRecvDataSegmentLength", "262144");
        w.add("InitialR2T", "Yes");
        w.add("ImmediateData", "No");
        w.add("MaxBurstLength", "262144");
        w.add("FirstBurstLength", "65536");
        w.add("ErrorRecoveryLevel", "0");
        self.phase = Phase::Login2;
        Pdu::LoginRequest(LoginRequest {
            transit: true,
            continue_: false,
            csg: 1,
            nsg: 3,
            version_max: 0,
            version_min: 0,
            isid: self.isid,
            tsih: 0,
            itt: 0,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data: w.finish(),
        })
    }

    fn free_itt(&self) -> u32 {
        // Never the tag of a command a TMF in flight names (Linux holds
        // the command until its abort is answered).
        (1..)
            .find(|i| !self.open.contains_key(i) && !self.aborting.contains(i))
            .unwrap_or(1)
    }

    /// Sends `command` (the caller checked [`Initiator::can_issue`]).
    pub fn issue(&mut self, command: Command, now: u64) -> (u32, Vec<Pdu>) {
        let itt = self.free_itt();
        let (cdb, data_out, read_len) = command.cdb_and_data();
        let write = !data_out.is_empty();
        let cmd_sn = self.cmd_sn;
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        let pdu = Pdu::ScsiCommand(ScsiCommand {
            immediate: false,
            final_: true,
            read: read_len > 0,
            write,
            attr: TaskAttr::Simple,
            lun: 0,
            itt,
            expected_data_len: if write {
                data_out.len() as u32
            } else {
                read_len
            },
            cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb: Bytes::from(cdb),
            bidi_read_len: None,
            data: Bytes::new(),
        });
        self.open.insert(
            itt,
            Open {
                command,
                issued: now,
                cmd_sn,
                data_out,
                data_in: BytesMut::new(),
            },
        );
        (itt, vec![pdu])
    }

    /// ABORT TASK of the open command `itt` (immediate).
    pub fn abort_task(&mut self, itt: u32) -> Vec<Pdu> {
        let Some(open) = self.open.get(&itt) else {
            return Vec::new();
        };
        let tmf_itt = TMF_ITT_BASE
            + (1..)
                .find(|i| !self.tmfs.contains_key(&(TMF_ITT_BASE + i)))
                .unwrap_or(1);
        self.tmfs.insert(tmf_itt, (false, vec![(itt, open.cmd_sn)]));
        self.aborting.insert(itt);
        vec![self.tmf(TmfFunction::AbortTask, tmf_itt, itt, open.cmd_sn)]
    }

    /// The CmdSN of the open command `itt` (with the ITT, it names one
    /// command for good: CmdSN only grows).
    pub fn cmd_sn_of(&self, itt: u32) -> Option<u32> {
        self.open.get(&itt).map(|o| o.cmd_sn)
    }

    /// The command timeout of command `itt` (CmdSN `cmd_sn`) expired: if
    /// it is still open and not being aborted, ABORT TASK, as Linux's SCSI
    /// error handler does.
    pub fn timed_out(&mut self, itt: u32, cmd_sn: u32) -> Vec<Pdu> {
        if self.phase != Phase::Full
            || self.aborting.contains(&itt)
            || self.cmd_sn_of(itt) != Some(cmd_sn)
        {
            return Vec::new();
        }
        self.abort_task(itt)
    }

    /// LOGICAL UNIT RESET (immediate).
    pub fn lun_reset(&mut self) -> Vec<Pdu> {
        let tmf_itt = TMF_ITT_BASE
            + (1..)
                .find(|i| !self.tmfs.contains_key(&(TMF_ITT_BASE + i)))
                .unwrap_or(1);
        let all: Vec<(u32, u32)> = self.open.iter().map(|(i, o)| (*i, o.cmd_sn)).collect();
        self.aborting.extend(all.iter().map(|(i, _)| *i));
        self.tmfs.insert(tmf_itt, (true, all));
        self.resetting = true;
        vec![self.tmf(
            TmfFunction::LogicalUnitReset,
            tmf_itt,
            0xffff_ffff,
            self.cmd_sn,
        )]
    }

    fn tmf(&self, function: TmfFunction, itt: u32, referenced: u32, ref_cmd_sn: u32) -> Pdu {
        Pdu::TaskMgmtRequest(TaskMgmtRequest {
            immediate: true,
            function,
            lun: 0,
            itt,
            referenced_task_tag: referenced,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            ref_cmd_sn,
            exp_data_sn: 0,
        })
    }

    /// A clean logout (immediate).
    pub fn logout(&mut self) -> Vec<Pdu> {
        self.phase = Phase::LoggingOut;
        vec![Pdu::LogoutRequest(LogoutRequest {
            immediate: true,
            reason: 0,
            itt: 0x7fff_fff0,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        })]
    }

    /// The connection is gone: every open command ends unknown.
    pub fn connection_lost(&mut self) -> Vec<Finished> {
        self.phase = Phase::Down;
        self.tmfs.clear();
        self.aborting.clear();
        self.resetting = false;
        std::mem::take(&mut self.open)
            .into_iter()
            .map(|(itt, o)| Finished {
                command: o.command,
                issued: o.issued,
                outcome: Outcome::Unknown,
                itt,
            })
            .collect()
    }

    fn note_sn(&mut self, stat_sn: u32, max_cmd_sn: u32, status_bearing: bool) {
        if status_bearing {
            self.exp_stat_sn = stat_sn.wrapping_add(1);
        }
        if (max_cmd_sn.wrapping_sub(self.max_cmd_sn) as i32) > 0 {
            self.max_cmd_sn = max_cmd_sn;
        }
    }

    /// A PDU from the target: what to send back, the commands it finished,
    /// or an error naming a protocol violation by the target.
    pub fn on_pdu(&mut self, pdu: Pdu) -> Result<(Vec<Pdu>, Vec<Finished>), String> {
        let mut send = Vec::new();
        let mut done = Vec::new();
        match pdu {
            Pdu::LoginResponse(r) => {
                if r.status_class != 0 {
                    return Err(format!(
                        "login refused: class {} detail {}",
                        r.status_class, r.status_detail
                    ));
                }
                self.exp_stat_sn = r.stat_sn.wrapping_add(1);
                self.max_cmd_sn = r.max_cmd_sn;
                match self.phase {
                    Phase::Login1 => send.push(self.login2()),
                    Phase::Login2 => {
                        if let Ok(pairs) = parse(&r.data) {
                            for p in pairs {
                                if p.key == "MaxRecvDataSegmentLength" {
                                    if let Ok(v) = p.value.parse::<u32>() {
                                        self.target_mrdsl = v.max(512);
                                    }
                                }
                            }
                        }
                        self.phase = Phase::Full;
                    }
                    other => return Err(format!("login response in phase {other:?}")),
                }
            }
            Pdu::R2t(r) => {
                self.note_sn(r.stat_sn, r.max_cmd_sn, false);
                let Some(open) = self.open.get(&r.itt) else {
                    return Ok((send, done)); // aborted meanwhile
                };
                if self.aborting.contains(&r.itt) {
                    return Ok((send, done)); // being aborted: no more data
                }
                let start = r.buffer_offset as usize;
                let end = start + r.desired_len as usize;
                if end > open.data_out.len() {
                    return Err(format!(
                        "R2T for bytes {start}..{end} of a {}-byte write",
                        open.data_out.len()
                    ));
                }
                let mut at = start;
                let mut data_sn = 0;
                while at < end {
                    let piece = (end - at).min(self.target_mrdsl as usize);
                    send.push(Pdu::DataOut(DataOut {
                        final_: at + piece == end,
                        lun: 0,
                        itt: r.itt,
                        ttt: r.ttt,
                        exp_stat_sn: self.exp_stat_sn,
                        data_sn,
                        buffer_offset: at as u32,
                        data: open.data_out.slice(at..at + piece),
                    }));
                    data_sn += 1;
                    at += piece;
                }
            }
            Pdu::DataIn(d) => {
                self.note_sn(d.stat_sn, d.max_cmd_sn, d.status.is_some());
                let Some(open) = self.open.get_mut(&d.itt) else {
                    return Err(format!(
                        "Data-In for ITT {} that has no open command",
                        d.itt
                    ));
                };
                let off = d.buffer_offset as usize;
                if open.data_in.len() < off + d.data.len() {
                    open.data_in.resize(off + d.data.len(), 0);
                }
                open.data_in[off..off + d.data.len()].copy_from_slice(&d.data);
                if let Some(status) = d.status {
                    if let Some(o) = self.open.remove(&d.itt) {
                        let outcome = if status == 0 {
                            Outcome::Good(o.data_in.freeze())
                        } else {
                            Outcome::Status(status)
                        };
                        done.push(Finished {
                            command: o.command,
                            issued: o.issued,
                            outcome,
                            itt: d.itt,
                        });
                    }
                }
            }
            Pdu::ScsiResponse(r) => {
                self.note_sn(r.stat_sn, r.max_cmd_sn, true);
                let Some(o) = self.open.remove(&r.itt) else {
                    return Err(format!(
                        "SCSI response for ITT {} that has no open command",
                        r.itt
                    ));
                };
                let outcome = if r.response != 0 {
                    Outcome::Unknown
                } else if r.status == 0 {
                    Outcome::Good(o.data_in.freeze())
                } else if r.status == 2 {
                    // Sense data: a 2-byte length, then fixed-format sense.
                    let s = &r.data;
                    if s.len() >= 2 + 14 {
                        Outcome::Check {
                            key: s[2 + 2] & 0x0f,
                            asc: s[2 + 12],
                            ascq: s[2 + 13],
                        }
                    } else {
                        Outcome::Status(2)
                    }
                } else {
                    Outcome::Status(r.status)
                };
                done.push(Finished {
                    command: o.command,
                    issued: o.issued,
                    outcome,
                    itt: r.itt,
                });
            }
            Pdu::TaskMgmtResponse(r) => {
                self.note_sn(r.stat_sn, r.max_cmd_sn, true);
                let Some((reset, aborted)) = self.tmfs.remove(&r.itt) else {
                    return Err(format!("TMF response for unknown ITT {}", r.itt));
                };
                // Function complete (0) or task not found (1: it finished
                // before, its response came first). Either way nothing more
                // comes for the aborted ones.
                if reset {
                    self.resetting = false;
                }
                for (itt, cmd_sn) in aborted {
                    self.aborting.remove(&itt);
                    // "Task does not exist": it ended before. Either its
                    // answer came first (the connection keeps order) and
                    // it is no longer open, or the target ended it without
                    // a status (TAS = 0): then no answer will ever come and
                    // it ends here, unknown, as Linux fails it back.
                    let gone = !reset && r.response == tmf_response::TASK_DOES_NOT_EXIST;
                    if r.response != tmf_response::FUNCTION_COMPLETE && !gone {
                        continue;
                    }
                    if self.cmd_sn_of(itt) != Some(cmd_sn) {
                        continue; // answered, and its ITT reused since
                    }
                    if let Some(o) = self.open.remove(&itt) {
                        done.push(Finished {
                            command: o.command,
                            issued: o.issued,
                            outcome: Outcome::Unknown,
                            itt,
                        });
                    }
                }
            }
            Pdu::NopIn(n) => {
                self.note_sn(n.stat_sn, n.max_cmd_sn, false);
                if n.ttt != 0xffff_ffff {
                    send.push(Pdu::NopOut(cstor_target::iscsi::pdu::NopOut {
                        immediate: true,
                        lun: 0,
                        itt: 0xffff_ffff,
                        ttt: n.ttt,
                        cmd_sn: self.cmd_sn,
                        exp_stat_sn: self.exp_stat_sn,
                        data: Bytes::new(),
                    }));
                }
            }
            Pdu::LogoutResponse(r) => {
                self.note_sn(r.stat_sn, r.max_cmd_sn, true);
                done.extend(self.connection_lost());
            }
            Pdu::Reject(r) => {
                let opcode = r.header.first().map_or(0, |b| b & 0x3f);
                let itt = r
                    .header
                    .get(16..20)
                    .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                // Data-Out racing an abort — ours, or another initiator's
                // LUN RESET, which ends our task silently (TAS = 0): the
                // task is gone at the target; the command times out and is
                // aborted like any unanswered one.
                if opcode == 0x05 {
                    return Ok((send, done));
                }
                return Err(format!(
                    "target rejected a PDU (opcode {opcode:#04x}, ITT {itt}): reason {:#04x}",
                    r.reason
                ));
            }
            Pdu::AsyncMessage(_) => {}
            other => return Err(format!("unexpected PDU from the target: {other:?}")),
        }
        Ok((send, done))
    }

    pub fn logins(&self) -> u64 {
        self.logins
    }
}
