//! The logical unit: a pure state machine that executes SCSI commands.
//!
//! `execute(nexus, cdb, data_out)` answers at once ([`Outcome::Done`]) or
//! asks the caller to perform one block request ([`Outcome::Io`]); the
//! caller hands the [`Pending`] back with the result to `complete`, which
//! answers ([`Completed::Respond`]), or says the command was aborted
//! meanwhile by another nexus's PREEMPT AND ABORT ([`Completed::Aborted`]:
//! no response, TAS = 0). Nothing here does IO or blocks.
//!
//! The caller feeds the unit the volume's state ([`VolumeState`]); the unit
//! decides what follows: it grows with the volume, and while the volume is
//! read-only (below quorum, invariant 3) MODE SENSE reports WP (SBC-4
//! §6.5.1) and commands that modify the medium fail at once.
//!
//! Order of checks for each command (SAM-5 §5.14, SPC-4 §5.12.1):
//! 1. a pending unit attention for the nexus (except INQUIRY, REPORT LUNS,
//!    REQUEST SENSE) → CHECK CONDITION / UNIT ATTENTION, and it is cleared;
//! 2. CDB validation ([`super::cdb::parse`]) → ILLEGAL REQUEST;
//! 3. another nexus's RESERVE(6) or a persistent reservation →
//!    RESERVATION CONFLICT;
//! 4. unit stopped by START STOP UNIT → NOT READY (medium access only);
//! 5. read-only volume (below quorum) → DATA PROTECT / WRITE PROTECTED for
//!    commands that modify the medium;
//! 6. the command itself.
//!
//! Data-in is always cut to the CDB's allocation length (SPC-4 §4.2.5.6);
//! the iSCSI layer derives residuals from the length returned.
//!
//! Data-out: the caller passes all the data-out the initiator sent (at most
//! its Expected Data Transfer Length; [`LogicalUnit::data_out_len`] says how
//! much the command uses). Writes use the first `blocks` blocks of it; data
//! shorter than the CDB asks for writes only the whole blocks received, as
//! RFC 7143 §11.4.5.2 overflow handling expects. COMPARE AND WRITE needs
//! exactly its 2 × N blocks.
//!
//! Write caching: with WCE = 1 a write completes when a quorum has it; it is
//! made durable by SYNCHRONIZE CACHE or FUA. With WCE = 0 every write-like
//! request carries `fua`.

use bytes::Bytes;

use super::aborts::Aborts;
use super::capacity;
use super::cdb::{self, Command, Geometry};
use super::inquiry::{self, Facts, Identity};
use super::io::{BlockRequest, IoError, IoResult, Pending, Then};
use super::limits::MAX_SERIAL_BYTES;
use super::medium::{self, Plan};
use super::mode::{ModePages, ModeParams};
use super::nexus::Nexus;
use super::opcodes;
use super::pr::{PrError, Reservations};
use super::sense::{Asc, Sense, SenseFormat, SenseKey, Status};
use super::ua::UnitAttentions;

/// Logical block size: 512 or 4096 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockSize {
    B512,
    B4096,
}

impl BlockSize {
    pub const fn bytes(self) -> u32 {
        match self {
            BlockSize::B512 => 512,
            BlockSize::B4096 => 4096,
        }
    }
}

/// How to create a logical unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LuConfig {
    pub identity: Identity,
    /// Capacity in logical blocks (> 0).
    pub blocks: u64,
    pub block_size: BlockSize,
    /// log2(physical block / logical block), 0..=15: 3 for 512-byte blocks
    /// on a 4 KiB-chunked pool.
    pub physical_block_exponent: u8,
    /// OPTIMAL UNMAP GRANULARITY in blocks (the pool chunk size).
    pub unmap_granularity_blocks: u32,
    /// Initial WCE.
    pub write_cache: bool,
}

/// Why a logical unit could not be created or changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LuError {
    #[error("capacity must be at least one block")]
    ZeroCapacity,
    #[error("capacity may only grow: {current} blocks now, {requested} requested")]
    Shrink { current: u64, requested: u64 },
    #[error("physical block exponent {0} is above 15")]
    PhysicalBlockExponent(u8),
    #[error("serial number must be printable ASCII of at most {MAX_SERIAL_BYTES} bytes")]
    Serial,
}

/// A command's answer: status, data-in and sense data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: Status,
    /// Already cut to the allocation length.
    pub data_in: Bytes,
    /// Sense data for CHECK CONDITION (autosense).
    pub sense: Option<Vec<u8>>,
}

impl Response {
    pub fn good(data_in: Bytes) -> Self {
        Response {
            status: Status::Good,
            data_in,
            sense: None,
        }
    }
}

/// What `execute` asks of the caller.
#[derive(Debug)]
pub enum Outcome {
    Done(Response),
    Io(Pending),
}

/// How a command that needed a block request ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completed {
    /// Answer the initiator with this.
    Respond(Response),
    /// Aborted while its block request ran: another nexus's PREEMPT AND
    /// ABORT preempted its nexus. No response goes to the initiator (TAS =
    /// 0 in the Control mode page), and the command has no effect on the
    /// unit beyond what the volume already did.
    Aborted,
}

/// What the logical unit needs to know of its volume, fed by the caller
/// whenever the volume's status changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeState {
    /// The volume's size in logical blocks.
    pub blocks: u64,
    /// Below quorum, after the hold, the volume takes no writes
    /// (docs/architecture.md, invariant 3).
    pub read_only: bool,
}

/// One logical unit (LUN 0 of a volume's target).
#[derive(Debug)]
pub struct LogicalUnit {
    identity: Identity,
    geometry: Geometry,
    physical_block_exponent: u8,
    unmap_granularity_blocks: u32,
    mode: ModePages,
    read_only: bool,
    /// Writes refused because `read_only` was set (a counter).
    write_protected_refusals: u64,
    stopped: bool,
    /// SPC-2 RESERVE(6) holder: released by RELEASE(6), LUN reset and the
    /// loss of its nexus.
    reserve6_holder: Option<Nexus>,
    unit_attentions: UnitAttentions,
    reservations: Reservations,
    aborts: Aborts,
}

/// A command's immediate answer: data-in, or the sense of its failure.
type Answer = Result<Vec<u8>, Failure>;

/// A failed command: CHECK CONDITION with sense, or a bare status.
enum Failure {
    Check(Sense),
    Status(Status),
}

impl From<Sense> for Failure {
    fn from(s: Sense) -> Self {
        Failure::Check(s)
    }
}

impl LogicalUnit {
    pub fn new(config: LuConfig) -> Result<Self, LuError> {
        if config.blocks == 0 {
            return Err(LuError::ZeroCapacity);
        }
        if config.physical_block_exponent > 15 {
            return Err(LuError::PhysicalBlockExponent(
                config.physical_block_exponent,
            ));
        }
        let serial = &config.identity.serial;
        if serial.len() > MAX_SERIAL_BYTES
            || !serial.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        {
            return Err(LuError::Serial);
        }
        Ok(LogicalUnit {
            identity: config.identity,
            geometry: Geometry {
                blocks: config.blocks,
                block_size: config.block_size.bytes(),
            },
            physical_block_exponent: config.physical_block_exponent,
            unmap_granularity_blocks: config.unmap_granularity_blocks,
            mode: ModePages::new(ModeParams {
                wce: config.write_cache,
                ..ModeParams::DEFAULT
            }),
            read_only: false,
            write_protected_refusals: 0,
            stopped: false,
            reserve6_holder: None,
            unit_attentions: UnitAttentions::default(),
            reservations: Reservations::default(),
            aborts: Aborts::default(),
        })
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    pub fn write_cache_enabled(&self) -> bool {
        self.mode.current.wce
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Writes this unit refused itself because the volume is read-only
    /// (they never reach the volume, so the shell counts them as the
    /// volume's own refusals are counted), since it was created.
    pub fn write_protected_refusals(&self) -> u64 {
        self.write_protected_refusals
    }

    /// Takes in the volume's state: the unit grows with the volume (a
    /// smaller size is ignored: a volume never shrinks, and a status may
    /// lag), and is write protected exactly while the volume is read-only.
    /// Returns whether the capacity grew.
    pub fn follow_volume(&mut self, state: VolumeState) -> bool {
        self.read_only = state.read_only;
        let grows = state.blocks > self.geometry.blocks;
        grows && self.grow(state.blocks).is_ok()
    }

    /// Grows the capacity and raises CAPACITY DATA HAS CHANGED on every
    /// nexus. Shrinking is refused.
    pub fn grow(&mut self, blocks: u64) -> Result<(), LuError> {
        if blocks < self.geometry.blocks {
            return Err(LuError::Shrink {
                current: self.geometry.blocks,
                requested: blocks,
            });
        }
        if blocks > self.geometry.blocks {
            self.geometry.blocks = blocks;
            self.unit_attentions
                .broadcast(Asc::CAPACITY_DATA_HAS_CHANGED, None);
        }
        Ok(())
    }

    /// LOGICAL UNIT RESET (SAM-5 §7.7): every I_T nexus, the one that sent
    /// it included, gets BUS DEVICE RESET FUNCTION OCCURRED. An SPC-2
    /// reservation is released; a stopped unit stays stopped, persistent
    /// reservations survive (SPC-4 §5.12.5) and the mode
    /// parameters keep their current values (there are no saved ones to
    /// revert to, and reverting WCE behind the initiator's back would
    /// change durability silently). Every task of the unit is aborted,
    /// whichever nexus sent it: the block requests in flight complete as
    /// [`Completed::Aborted`] (the issuing session's core also ends its own
    /// tasks that are not at the unit yet).
    pub fn lun_reset(&mut self) {
        self.aborts.abort_every();
        self.reserve6_holder = None;
        self.unit_attentions.broadcast(Asc::BUS_DEVICE_RESET, None);
    }

    /// The session of `nexus` ended (logout or connection loss without
    /// reinstatement): its SPC-2 reservation is released (SPC-2 §5.5.1).
    /// Persistent reservations survive, as SPC-4 §5.12.1 requires.
    pub fn nexus_lost(&mut self, nexus: &Nexus) {
        if self.reserve6_holder.as_ref() == Some(nexus) {
            self.reserve6_holder = None;
        }
    }

    /// Bytes of data-out `cdb` needs; 0 when it needs none or is invalid
    /// (then `execute` reports the error without reading data).
    pub fn data_out_len(&self, cdb: &[u8]) -> u64 {
        cdb::parse(cdb, &self.geometry)
            .map(|c| c.data_out_len(self.geometry.block_size))
            .unwrap_or(0)
    }

    /// Most bytes of data-in `cdb` can return (for overflow/underflow
    /// residuals against the initiator's Expected Data Transfer Length);
    /// 0 when it returns none or is invalid.
    pub fn data_in_len(&self, cdb: &[u8]) -> u64 {
        cdb::parse(cdb, &self.geometry)
            .map(|c| c.data_in_len(self.geometry.block_size))
            .unwrap_or(0)
    }

    fn sense_format(&self) -> SenseFormat {
        if self.mode.current.d_sense {
            SenseFormat::Descriptor
        } else {
            SenseFormat::Fixed
        }
    }

    fn check_condition(&self, sense: Sense) -> Response {
        Response {
            status: Status::CheckCondition,
            data_in: Bytes::new(),
            sense: Some(sense.encode(self.sense_format())),
        }
    }

    fn respond(&self, answer: Answer, alloc_len: u32) -> Response {
        match answer {
            Ok(mut data) => {
                data.truncate(usize::try_from(alloc_len).unwrap_or(usize::MAX));
                Response::good(Bytes::from(data))
            }
            Err(Failure::Check(sense)) => self.check_condition(sense),
            Err(Failure::Status(status)) => Response {
                status,
                data_in: Bytes::new(),
                sense: None,
            },
        }
    }

    /// Executes one command from `nexus`. `data_out` holds the data-out
    /// collected for it (empty when none).
    pub fn execute(&mut self, nexus: &Nexus, cdb: &[u8], data_out: Bytes) -> Outcome {
        let opcode = cdb.first().copied().unwrap_or(0xff);
        let ua_exempt = matches!(
            opcode,
            opcodes::INQUIRY | opcodes::REPORT_LUNS | opcodes::REQUEST_SENSE
        );
        if ua_exempt {
            // Registers a new nexus so that its power-on condition exists.
            let _ = self.unit_attentions.peek(nexus);
        } else if let Some(asc) = self.unit_attentions.take(nexus) {
            return Outcome::Done(self.check_condition(Sense::unit_attention(asc)));
        }
        let command = match cdb::parse(cdb, &self.geometry) {
            Ok(Command::Unsupported(_)) => {
                return Outcome::Done(self.check_condition(Sense::invalid_opcode()))
            }
            Ok(command) => command,
            Err(sense) => return Outcome::Done(self.check_condition(sense)),
        };
        let reserved_by_other = self
            .reserve6_holder
            .as_ref()
            .is_some_and(|holder| holder != nexus);
        if (reserved_by_other && !command.allowed_under_others_reserve6())
            || self.reservations.conflicts(nexus, command.access())
        {
            return Outcome::Done(
                self.respond(Err(Failure::Status(Status::ReservationConflict)), 0),
            );
        }
        if self.stopped && command.needs_medium() {
            let sense = Sense::new(
                SenseKey::NotReady,
                Asc::NOT_READY_INITIALIZING_COMMAND_REQUIRED,
            );
            return Outcome::Done(self.check_condition(sense));
        }
        if self.read_only && command.writes_medium() {
            self.write_protected_refusals += 1;
            return Outcome::Done(self.check_condition(Sense::write_protected()));
        }
        if self.mode.current.swp && command.writes_medium() {
            let sense = Sense::new(SenseKey::DataProtect, Asc::SOFTWARE_WRITE_PROTECTED);
            return Outcome::Done(self.check_condition(sense));
        }
        match self.dispatch(nexus, command, data_out) {
            Outcome::Io(mut pending) => {
                pending.stamp = Some(self.aborts.stamp(nexus));
                Outcome::Io(pending)
            }
            done => done,
        }
    }

    fn dispatch(&mut self, nexus: &Nexus, command: Command, data_out: Bytes) -> Outcome {
        let write_through = !self.mode.current.wce;
        let command = match medium::plan(self.geometry, write_through, command, data_out.clone()) {
            Ok(Plan::Good) => return Outcome::Done(Response::good(Bytes::new())),
            Ok(Plan::Io(pending)) => return Outcome::Io(pending),
            Ok(Plan::Check(sense)) => return Outcome::Done(self.check_condition(sense)),
            Err(other) => other,
        };
        let answer = |lu: &Self, answer: Answer, alloc_len: u32| {
            Outcome::Done(lu.respond(answer, alloc_len))
        };
        match command {
            Command::TestUnitReady => answer(self, Ok(Vec::new()), 0),
            Command::RequestSense {
                descriptor,
                alloc_len,
            } => {
                // SPC-4 §6.29: a pending unit attention (now cleared), else
                // the unit's state, else NO SENSE.
                let sense = match self.unit_attentions.take(nexus) {
                    Some(asc) => Sense::unit_attention(asc),
                    None if self.stopped => Sense::new(
                        SenseKey::NotReady,
                        Asc::NOT_READY_INITIALIZING_COMMAND_REQUIRED,
                    ),
                    None => Sense::new(SenseKey::NoSense, Asc::NO_ADDITIONAL_SENSE),
                };
                let format = if descriptor {
                    SenseFormat::Descriptor
                } else {
                    SenseFormat::Fixed
                };
                answer(self, Ok(sense.encode(format)), alloc_len)
            }
            Command::Inquiry {
                evpd,
                page,
                alloc_len,
            } => {
                let data = if evpd {
                    let facts = Facts {
                        identity: &self.identity,
                        geometry: self.geometry,
                        physical_block_exponent: self.physical_block_exponent,
                        unmap_granularity_blocks: self.unmap_granularity_blocks,
                        relative_target_port: nexus.relative_target_port(),
                    };
                    inquiry::vpd(page, &facts).map_err(Failure::from)
                } else {
                    Ok(inquiry::standard())
                };
                answer(self, data, alloc_len)
            }
            Command::ReportLuns { select, alloc_len } => {
                answer(self, Ok(capacity::report_luns(select)), alloc_len)
            }
            Command::ReadCapacity10 => {
                answer(self, Ok(capacity::read_capacity_10(self.geometry)), 8)
            }
            Command::ReadCapacity16 { alloc_len } => {
                let data = capacity::read_capacity_16(self.geometry, self.physical_block_exponent);
                answer(self, Ok(data), alloc_len)
            }
            Command::ModeSense(request) => {
                let data = self
                    .mode
                    .sense(
                        &request,
                        self.geometry,
                        self.read_only || self.mode.current.swp,
                    )
                    .map_err(Failure::from);
                answer(self, data, request.alloc_len)
            }
            Command::ModeSelect { ten, param_len } => {
                let result = match data_out.get(..param_len as usize) {
                    _ if param_len == 0 => Ok(Vec::new()),
                    None => Err(Sense::parameter_list_length().into()),
                    Some(list) => match self.mode.select(ten, list, self.geometry) {
                        Ok(next) => {
                            if next != self.mode.current {
                                self.mode.current = next;
                                self.unit_attentions
                                    .broadcast(Asc::MODE_PARAMETERS_CHANGED, Some(nexus));
                            }
                            Ok(Vec::new())
                        }
                        Err(sense) => Err(sense.into()),
                    },
                };
                answer(self, result, 0)
            }
            Command::StartStopUnit { start, no_flush } => {
                if start {
                    self.stopped = false;
                    answer(self, Ok(Vec::new()), 0)
                } else if no_flush {
                    self.stopped = true;
                    answer(self, Ok(Vec::new()), 0)
                } else {
                    Outcome::Io(Pending {
                        request: BlockRequest::Flush,
                        then: Then::Stop,
                        stamp: None,
                    })
                }
            }
            Command::Reserve6 | Command::Release6 if self.reservations.active() => {
                answer(self, Err(Failure::Status(Status::ReservationConflict)), 0)
            }
            // A holder re-reserving is fine; another holder was refused above.
            Command::Reserve6 => {
                self.reserve6_holder = Some(nexus.clone());
                answer(self, Ok(Vec::new()), 0)
            }
            // Releasing a reservation one does not hold is a no-op.
            Command::Release6 => {
                if self.reserve6_holder.as_ref() == Some(nexus) {
                    self.reserve6_holder = None;
                }
                answer(self, Ok(Vec::new()), 0)
            }
            Command::PersistentReserveIn { action, alloc_len } => {
                answer(self, Ok(self.reservations.read(action)), alloc_len)
            }
            Command::PersistentReserveOut {
                action,
                scope,
                pr_type,
                param_len,
            } => {
                let result = self
                    .reservations
                    .out(nexus, action, scope, pr_type, param_len, &data_out);
                let result = match result {
                    Ok(effects) => {
                        // The preempted nexuses' REGISTRATIONS PREEMPTED
                        // is among these.
                        for (n, asc) in effects.unit_attentions {
                            self.unit_attentions.push(&n, asc);
                        }
                        self.aborts.abort(&effects.aborted);
                        Ok(Vec::new())
                    }
                    Err(PrError::Conflict) => Err(Failure::Status(Status::ReservationConflict)),
                    Err(PrError::Sense(sense)) => Err(sense.into()),
                };
                answer(self, result, 0)
            }
            Command::ReportSupportedOpcodes {
                rctd,
                options,
                opcode,
                service_action,
                alloc_len,
            } => {
                let data = super::rsoc::report(rctd, options, opcode, service_action)
                    .map_err(Failure::from);
                answer(self, data, alloc_len)
            }
            // Medium commands were planned above; Unsupported never gets here.
            _ => answer(self, Err(Sense::invalid_opcode().into()), 0),
        }
    }

    /// Finishes the command of `pending` with the volume's `result`.
    pub fn complete(&mut self, pending: Pending, result: IoResult) -> Completed {
        let aborted = pending
            .stamp
            .as_ref()
            .is_some_and(|stamp| self.aborts.is_aborted(stamp));
        if aborted {
            return Completed::Aborted;
        }
        Completed::Respond(match self.finish(pending, result) {
            Ok(response) => response,
            Err(error) => {
                if !matches!(error, IoError::Miscompare { .. }) {
                    tracing::debug!(%error, "block request failed");
                }
                self.check_condition(sense_for(error))
            }
        })
    }

    fn finish(&mut self, pending: Pending, result: IoResult) -> Result<Response, IoError> {
        let data = result?;
        if pending.then == Then::Stop {
            self.stopped = true;
        }
        medium::finish(self.geometry, pending.then, data).map(Response::good)
    }
}

/// The sense condition of each IO failure kind.
pub fn sense_for(error: IoError) -> Sense {
    match error {
        IoError::LbaOutOfRange => Sense::lba_out_of_range(),
        IoError::ReadError => Sense::new(SenseKey::MediumError, Asc::UNRECOVERED_READ_ERROR),
        IoError::WriteError => Sense::new(SenseKey::MediumError, Asc::WRITE_ERROR),
        IoError::WriteProtected => Sense::write_protected(),
        IoError::SpaceAllocationFailed => Sense::space_allocation_failed(),
        IoError::NotReady => Sense::new(SenseKey::NotReady, Asc::NOT_READY),
        IoError::Miscompare { offset_bytes } => Sense::miscompare(offset_bytes),
        IoError::Internal => Sense::new(SenseKey::HardwareError, Asc::INTERNAL_TARGET_FAILURE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::io::IoData;

    fn config() -> LuConfig {
        LuConfig {
            identity: Identity {
                uuid: [1; 16],
                serial: "vol".into(),
            },
            blocks: 8,
            block_size: BlockSize::B4096,
            physical_block_exponent: 0,
            unmap_granularity_blocks: 16,
            write_cache: true,
        }
    }

    #[test]
    fn creation_validates_the_config() {
        assert!(LogicalUnit::new(config()).is_ok());
        let zero = LuConfig {
            blocks: 0,
            ..config()
        };
        assert_eq!(LogicalUnit::new(zero).err(), Some(LuError::ZeroCapacity));
        let exp = LuConfig {
            physical_block_exponent: 16,
            ..config()
        };
        assert_eq!(
            LogicalUnit::new(exp).err(),
            Some(LuError::PhysicalBlockExponent(16))
        );
        let mut bad = config();
        bad.identity.serial = "tab\there".into();
        assert_eq!(LogicalUnit::new(bad).err(), Some(LuError::Serial));
    }

    #[test]
    fn grow_refuses_to_shrink_and_keeps_geometry() {
        let mut lu = LogicalUnit::new(config()).unwrap();
        assert_eq!(
            lu.grow(4),
            Err(LuError::Shrink {
                current: 8,
                requested: 4
            })
        );
        lu.grow(8).unwrap();
        assert_eq!(lu.geometry().blocks, 8);
        assert_eq!(lu.geometry().block_size, 4096);
    }

    #[test]
    fn data_lengths_of_invalid_cdbs_are_zero() {
        let lu = LogicalUnit::new(config()).unwrap();
        assert_eq!(lu.data_out_len(&[0x2a, 0xe0, 0, 0, 0, 0, 0, 0, 1, 0]), 0);
        assert_eq!(lu.data_out_len(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0]), 4096);
        assert_eq!(lu.data_in_len(&[0x28, 0, 0, 0, 0, 0, 0, 0, 2, 0]), 8192);
        assert_eq!(lu.data_in_len(&[0x12, 0, 0, 0, 96, 0]), 96);
    }

    fn nexus(i: u8) -> Nexus {
        Nexus::new(&format!("iqn.test:{i},i,0x400000000001"), 1)
    }

    /// Runs a command that needs no block request.
    fn answer(lu: &mut LogicalUnit, n: &Nexus, cdb: &[u8], data: &[u8]) -> Response {
        match lu.execute(n, cdb, Bytes::copy_from_slice(data)) {
            Outcome::Done(r) => r,
            Outcome::Io(p) => panic!("unexpected block request {:?}", p.request()),
        }
    }

    /// A unit whose power-on unit attention `nexus(1)` and `nexus(2)` saw.
    fn ready() -> LogicalUnit {
        let mut lu = LogicalUnit::new(config()).unwrap();
        for i in [1, 2] {
            assert_eq!(
                answer(&mut lu, &nexus(i), &[0; 6], &[]).status,
                Status::CheckCondition
            );
        }
        lu
    }

    fn mode_sense_wp(lu: &mut LogicalUnit) -> bool {
        let r = answer(lu, &nexus(1), &[0x1a, 0, 0x3f, 0, 255, 0], &[]);
        r.data_in[2] & 0x80 != 0
    }

    #[test]
    fn mode_sense_reports_wp_and_writes_fail_exactly_while_the_volume_is_read_only() {
        let mut lu = ready();
        let state = |read_only| VolumeState {
            blocks: 8,
            read_only,
        };
        assert!(!mode_sense_wp(&mut lu));
        lu.follow_volume(state(true));
        assert!(mode_sense_wp(&mut lu));
        let write = [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        let r = answer(&mut lu, &nexus(1), &write, &[0; 4096]);
        let sense = Sense::decode(r.sense.as_deref().unwrap()).unwrap();
        assert_eq!(
            (sense.key, sense.asc),
            (SenseKey::DataProtect, Asc::WRITE_PROTECTED)
        );
        assert_eq!(lu.write_protected_refusals(), 1, "counted for the metrics");
        lu.follow_volume(state(false));
        assert!(!mode_sense_wp(&mut lu));
        let write = lu.execute(&nexus(1), &write, Bytes::from(vec![0; 4096]));
        assert!(matches!(write, Outcome::Io(_)));
        assert_eq!(lu.write_protected_refusals(), 1);
    }

    #[test]
    fn the_unit_grows_with_the_volume_and_ignores_a_smaller_size() {
        let mut lu = ready();
        let grown = VolumeState {
            blocks: 16,
            read_only: false,
        };
        assert!(lu.follow_volume(grown));
        assert_eq!(lu.geometry().blocks, 16);
        let r = answer(&mut lu, &nexus(1), &[0; 6], &[]);
        let sense = Sense::decode(r.sense.as_deref().unwrap()).unwrap();
        assert_eq!(sense.asc, Asc::CAPACITY_DATA_HAS_CHANGED);
        assert!(!lu.follow_volume(grown), "the same size again");
        assert!(!lu.follow_volume(VolumeState { blocks: 4, ..grown }));
        assert_eq!(lu.geometry().blocks, 16);
    }

    /// PERSISTENT RESERVE OUT `action` from `n` with the two keys.
    fn pr_out(lu: &mut LogicalUnit, n: &Nexus, action: u8, key: u64, sa_key: u64) {
        let cdb = [0x5f, action, 0x01, 0, 0, 0, 0, 0, 24, 0];
        let mut params = [0u8; 24];
        params[..8].copy_from_slice(&key.to_be_bytes());
        params[8..16].copy_from_slice(&sa_key.to_be_bytes());
        assert_eq!(answer(lu, n, &cdb, &params).status, Status::Good);
    }

    #[test]
    fn a_stop_aborted_by_preempt_and_abort_leaves_the_unit_started() {
        let mut lu = ready();
        let (a, b) = (nexus(1), nexus(2));
        pr_out(&mut lu, &a, 0, 0, 0xa);
        pr_out(&mut lu, &b, 0, 0, 0xb);
        // START STOP UNIT, stop, after flushing the cache.
        let Outcome::Io(stop) = lu.execute(&a, &[0x1b, 0, 0, 0, 0, 0], Bytes::new()) else {
            panic!("a stop flushes first");
        };
        pr_out(&mut lu, &b, 5, 0xb, 0xa);
        assert_eq!(lu.complete(stop, Ok(IoData::Done)), Completed::Aborted);
        assert_eq!(
            answer(&mut lu, &b, &[0; 6], &[]).status,
            Status::Good,
            "not stopped"
        );
    }

    #[test]
    fn every_io_error_kind_has_its_sense_key() {
        let cases = [
            (IoError::LbaOutOfRange, SenseKey::IllegalRequest),
            (IoError::ReadError, SenseKey::MediumError),
            (IoError::WriteError, SenseKey::MediumError),
            (IoError::WriteProtected, SenseKey::DataProtect),
            (IoError::SpaceAllocationFailed, SenseKey::DataProtect),
            (IoError::NotReady, SenseKey::NotReady),
            (
                IoError::Miscompare { offset_bytes: 1 },
                SenseKey::Miscompare,
            ),
            (IoError::Internal, SenseKey::HardwareError),
        ];
        for (error, key) in cases {
            assert_eq!(sense_for(error).key, key, "{error:?}");
        }
    }
}
