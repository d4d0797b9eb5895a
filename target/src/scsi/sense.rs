//! SCSI status codes and sense data: what a command reports when it fails.
//!
//! [`Sense`] is the typed error of every command handler: a sense key, an
//! additional sense code pair ([`Asc`]), and optionally the INFORMATION field
//! (e.g. the miscompare offset) and a sense-key-specific field pointer (SKSV,
//! naming the CDB or parameter-list byte and bit that was wrong). It encodes
//! to fixed format (SPC-4 §4.5.3) or, when the control mode page has D_SENSE
//! set, to descriptor format (SPC-4 §4.5.2). RESERVATION CONFLICT is a
//! [`Status`], not sense data (SAM-5 §5.3.1).
//!
//! Invariant: an encoded sense buffer is always 18 (fixed) or at most 32
//! (descriptor) bytes; nothing here can panic.

/// SCSI status byte (SAM-5 §5.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Good,
    CheckCondition,
    Busy,
    ReservationConflict,
    TaskSetFull,
}

impl Status {
    /// The status code carried in the iSCSI SCSI Response PDU.
    pub const fn code(self) -> u8 {
        match self {
            Status::Good => 0x00,
            Status::CheckCondition => 0x02,
            Status::Busy => 0x08,
            Status::ReservationConflict => 0x18,
            Status::TaskSetFull => 0x28,
        }
    }
}

/// Sense key (SPC-4 §4.5.6, table 27).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenseKey {
    NoSense = 0x0,
    RecoveredError = 0x1,
    NotReady = 0x2,
    MediumError = 0x3,
    HardwareError = 0x4,
    IllegalRequest = 0x5,
    UnitAttention = 0x6,
    DataProtect = 0x7,
    AbortedCommand = 0xb,
    Miscompare = 0xe,
}

impl SenseKey {
    /// Decodes the low nibble of a sense key byte; `None` for keys we never
    /// produce.
    pub const fn from_code(code: u8) -> Option<Self> {
        Some(match code & 0x0f {
            0x0 => SenseKey::NoSense,
            0x1 => SenseKey::RecoveredError,
            0x2 => SenseKey::NotReady,
            0x3 => SenseKey::MediumError,
            0x4 => SenseKey::HardwareError,
            0x5 => SenseKey::IllegalRequest,
            0x6 => SenseKey::UnitAttention,
            0x7 => SenseKey::DataProtect,
            0xb => SenseKey::AbortedCommand,
            0xe => SenseKey::Miscompare,
            _ => return None,
        })
    }
}

/// Additional sense code and qualifier (SPC-4 §4.5.6, table 28).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Asc {
    pub code: u8,
    pub qualifier: u8,
}

impl Asc {
    pub const fn new(code: u8, qualifier: u8) -> Self {
        Asc { code, qualifier }
    }

    pub const NO_ADDITIONAL_SENSE: Asc = Asc::new(0x00, 0x00);
    /// LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE.
    pub const NOT_READY: Asc = Asc::new(0x04, 0x00);
    /// LOGICAL UNIT NOT READY, INITIALIZING COMMAND REQUIRED (stopped unit).
    pub const NOT_READY_INITIALIZING_COMMAND_REQUIRED: Asc = Asc::new(0x04, 0x02);
    pub const WRITE_ERROR: Asc = Asc::new(0x0c, 0x00);
    pub const UNRECOVERED_READ_ERROR: Asc = Asc::new(0x11, 0x00);
    pub const PARAMETER_LIST_LENGTH_ERROR: Asc = Asc::new(0x1a, 0x00);
    pub const MISCOMPARE_DURING_VERIFY: Asc = Asc::new(0x1d, 0x00);
    pub const INVALID_COMMAND_OPERATION_CODE: Asc = Asc::new(0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: Asc = Asc::new(0x21, 0x00);
    pub const INVALID_FIELD_IN_CDB: Asc = Asc::new(0x24, 0x00);
    pub const LOGICAL_UNIT_NOT_SUPPORTED: Asc = Asc::new(0x25, 0x00);
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Asc = Asc::new(0x26, 0x00);
    pub const INVALID_RELEASE_OF_PERSISTENT_RESERVATION: Asc = Asc::new(0x26, 0x04);
    pub const WRITE_PROTECTED: Asc = Asc::new(0x27, 0x00);
    pub const SOFTWARE_WRITE_PROTECTED: Asc = Asc::new(0x27, 0x02);
    /// SPACE ALLOCATION FAILED WRITE PROTECT (SBC-4, thin provisioning): a thin
    /// provisioned LU could not allocate for a write (Linux: ENOSPC).
    pub const SPACE_ALLOCATION_FAILED_WRITE_PROTECT: Asc = Asc::new(0x27, 0x07);
    /// POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
    pub const POWER_ON_RESET: Asc = Asc::new(0x29, 0x00);
    /// BUS DEVICE RESET FUNCTION OCCURRED (after a LOGICAL UNIT RESET).
    pub const BUS_DEVICE_RESET: Asc = Asc::new(0x29, 0x03);
    pub const MODE_PARAMETERS_CHANGED: Asc = Asc::new(0x2a, 0x01);
    pub const RESERVATIONS_PREEMPTED: Asc = Asc::new(0x2a, 0x03);
    pub const RESERVATIONS_RELEASED: Asc = Asc::new(0x2a, 0x04);
    pub const REGISTRATIONS_PREEMPTED: Asc = Asc::new(0x2a, 0x05);
    pub const CAPACITY_DATA_HAS_CHANGED: Asc = Asc::new(0x2a, 0x09);
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Asc = Asc::new(0x39, 0x00);
    pub const INTERNAL_TARGET_FAILURE: Asc = Asc::new(0x44, 0x00);
    pub const INSUFFICIENT_REGISTRATION_RESOURCES: Asc = Asc::new(0x55, 0x04);
}

/// Sense-key-specific field pointer (SPC-4 §4.5.2.4.2): which byte (and
/// optionally bit) of the CDB or of the parameter list was invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldPointer {
    /// true: the CDB (C/D = 1); false: the parameter list.
    pub in_cdb: bool,
    pub byte: u16,
    /// Bit 0..=7 of that byte, when one is known (BPV).
    pub bit: Option<u8>,
}

impl FieldPointer {
    fn encode(self) -> [u8; 3] {
        let mut b0 = 0x80; // SKSV
        if self.in_cdb {
            b0 |= 0x40;
        }
        if let Some(bit) = self.bit {
            b0 |= 0x08 | (bit & 0x07);
        }
        let [hi, lo] = self.byte.to_be_bytes();
        [b0, hi, lo]
    }
}

/// Sense data encoding, chosen by D_SENSE in the control mode page or by the
/// DESC bit of REQUEST SENSE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenseFormat {
    Fixed,
    Descriptor,
}

/// One sense condition: the typed error of the SCSI layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sense key {key:?}, asc {:#04x}/{:#04x}", asc.code, asc.qualifier)]
pub struct Sense {
    pub key: SenseKey,
    pub asc: Asc,
    /// INFORMATION field (e.g. byte offset of a miscompare).
    pub information: Option<u64>,
    pub field: Option<FieldPointer>,
}

/// Length of fixed-format sense data we produce.
pub const FIXED_SENSE_LEN: usize = 18;

impl Sense {
    pub const fn new(key: SenseKey, asc: Asc) -> Self {
        Sense {
            key,
            asc,
            information: None,
            field: None,
        }
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN CDB pointing at `byte` (and `bit`).
    pub const fn invalid_cdb_field(byte: u16, bit: Option<u8>) -> Self {
        Sense {
            key: SenseKey::IllegalRequest,
            asc: Asc::INVALID_FIELD_IN_CDB,
            information: None,
            field: Some(FieldPointer {
                in_cdb: true,
                byte,
                bit,
            }),
        }
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN PARAMETER LIST at `byte`.
    pub const fn invalid_param_field(byte: u16, bit: Option<u8>) -> Self {
        Sense {
            key: SenseKey::IllegalRequest,
            asc: Asc::INVALID_FIELD_IN_PARAMETER_LIST,
            information: None,
            field: Some(FieldPointer {
                in_cdb: false,
                byte,
                bit,
            }),
        }
    }

    pub const fn illegal(asc: Asc) -> Self {
        Sense::new(SenseKey::IllegalRequest, asc)
    }

    pub const fn invalid_opcode() -> Self {
        Sense::illegal(Asc::INVALID_COMMAND_OPERATION_CODE)
    }

    pub const fn lba_out_of_range() -> Self {
        Sense::illegal(Asc::LBA_OUT_OF_RANGE)
    }

    pub const fn parameter_list_length() -> Self {
        Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR)
    }

    pub const fn write_protected() -> Self {
        Sense::new(SenseKey::DataProtect, Asc::WRITE_PROTECTED)
    }

    /// DATA PROTECT / SPACE ALLOCATION FAILED WRITE PROTECT: the volume
    /// could not allocate for a write.
    pub const fn space_allocation_failed() -> Self {
        Sense::new(
            SenseKey::DataProtect,
            Asc::SPACE_ALLOCATION_FAILED_WRITE_PROTECT,
        )
    }

    pub const fn unit_attention(asc: Asc) -> Self {
        Sense::new(SenseKey::UnitAttention, asc)
    }

    /// MISCOMPARE / MISCOMPARE DURING VERIFY OPERATION with the byte offset
    /// of the first differing byte in INFORMATION (SBC-3 §5.2, §5.25).
    pub const fn miscompare(offset_bytes: u64) -> Self {
        Sense {
            key: SenseKey::Miscompare,
            asc: Asc::MISCOMPARE_DURING_VERIFY,
            information: Some(offset_bytes),
            field: None,
        }
    }

    pub fn encode(&self, format: SenseFormat) -> Vec<u8> {
        match format {
            SenseFormat::Fixed => self.to_fixed().to_vec(),
            SenseFormat::Descriptor => self.to_descriptor(),
        }
    }

    /// Fixed-format sense data (SPC-4 §4.5.3). INFORMATION is 4 bytes here:
    /// a larger value is left out with VALID = 0.
    pub fn to_fixed(&self) -> [u8; FIXED_SENSE_LEN] {
        let mut out = [0u8; FIXED_SENSE_LEN];
        out[0] = 0x70; // current error, fixed format
        out[2] = self.key as u8;
        if let Some(info) = self.information.and_then(|i| u32::try_from(i).ok()) {
            out[0] |= 0x80; // VALID
            out[3..7].copy_from_slice(&info.to_be_bytes());
        }
        out[7] = (FIXED_SENSE_LEN - 8) as u8; // ADDITIONAL SENSE LENGTH
        out[12] = self.asc.code;
        out[13] = self.asc.qualifier;
        if let Some(field) = self.field {
            out[15..18].copy_from_slice(&field.encode());
        }
        out
    }

    /// Descriptor-format sense data (SPC-4 §4.5.2) with an information
    /// descriptor (§4.5.2.2) and a sense-key-specific descriptor (§4.5.2.4)
    /// when those fields are present.
    pub fn to_descriptor(&self) -> Vec<u8> {
        let mut out = vec![0x72, self.key as u8, self.asc.code, self.asc.qualifier];
        out.extend_from_slice(&[0, 0, 0, 0]); // reserved, ADDITIONAL SENSE LENGTH
        if let Some(info) = self.information {
            out.extend_from_slice(&[0x00, 0x0a, 0x80, 0x00]);
            out.extend_from_slice(&info.to_be_bytes());
        }
        if let Some(field) = self.field {
            out.extend_from_slice(&[0x02, 0x06, 0x00, 0x00]);
            out.extend_from_slice(&field.encode());
            out.push(0);
        }
        // At most 8 + 12 + 8 = 28 bytes: the length always fits in a byte.
        out[7] = (out.len() - 8) as u8;
        out
    }

    /// Reads key, ASC/ASCQ and INFORMATION back from sense data of either
    /// format (for initiator-side tools and tests). `None` if malformed.
    pub fn decode(buf: &[u8]) -> Option<Sense> {
        let code = buf.first()? & 0x7f;
        match code {
            0x70 | 0x71 => {
                let key = SenseKey::from_code(*buf.get(2)?)?;
                let asc = Asc::new(*buf.get(12)?, *buf.get(13)?);
                let information = if buf[0] & 0x80 != 0 {
                    let bytes: [u8; 4] = buf.get(3..7)?.try_into().ok()?;
                    Some(u64::from(u32::from_be_bytes(bytes)))
                } else {
                    None
                };
                let field = buf.get(15..18).and_then(decode_field_pointer);
                Some(Sense {
                    key,
                    asc,
                    information,
                    field,
                })
            }
            0x72 | 0x73 => {
                let key = SenseKey::from_code(*buf.get(1)?)?;
                let asc = Asc::new(*buf.get(2)?, *buf.get(3)?);
                let end = 8usize.checked_add(usize::from(*buf.get(7)?))?;
                let mut descriptors = buf.get(8..end)?;
                let mut sense = Sense::new(key, asc);
                while let [kind, len, rest @ ..] = descriptors {
                    let body = rest.get(..usize::from(*len))?;
                    match kind {
                        0x00 => {
                            let bytes: [u8; 8] = body.get(2..10)?.try_into().ok()?;
                            sense.information = Some(u64::from_be_bytes(bytes));
                        }
                        0x02 => sense.field = body.get(2..5).and_then(decode_field_pointer),
                        _ => {}
                    }
                    descriptors = rest.get(usize::from(*len)..)?;
                }
                Some(sense)
            }
            _ => None,
        }
    }
}

fn decode_field_pointer(sks: &[u8]) -> Option<FieldPointer> {
    let [b0, hi, lo] = *sks else { return None };
    (b0 & 0x80 != 0).then(|| FieldPointer {
        in_cdb: b0 & 0x40 != 0,
        byte: u16::from_be_bytes([hi, lo]),
        bit: (b0 & 0x08 != 0).then_some(b0 & 0x07),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_carries_key_asc_and_field_pointer() {
        let s = Sense::invalid_cdb_field(1, Some(5));
        let b = s.to_fixed();
        assert_eq!(b[0], 0x70);
        assert_eq!(b[2], 0x05);
        assert_eq!(b[7], 10);
        assert_eq!((b[12], b[13]), (0x24, 0x00));
        assert_eq!(b[15], 0x80 | 0x40 | 0x08 | 5);
        assert_eq!((b[16], b[17]), (0, 1));
        assert_eq!(Sense::decode(&b), Some(s));
    }

    #[test]
    fn fixed_format_sets_valid_only_when_information_fits() {
        let small = Sense::miscompare(4097).to_fixed();
        assert_eq!(small[0], 0xf0);
        assert_eq!(
            u32::from_be_bytes([small[3], small[4], small[5], small[6]]),
            4097
        );
        assert_eq!(small[2], 0x0e);
        let big = Sense::miscompare(1 << 40).to_fixed();
        assert_eq!(big[0], 0x70);
        assert_eq!(&big[3..7], &[0, 0, 0, 0]);
    }

    #[test]
    fn descriptor_format_round_trips_information_and_field() {
        let mut s = Sense::miscompare(1 << 40);
        s.field = Some(FieldPointer {
            in_cdb: false,
            byte: 300,
            bit: None,
        });
        let b = s.to_descriptor();
        assert_eq!(b[0], 0x72);
        assert_eq!(usize::from(b[7]) + 8, b.len());
        assert_eq!(Sense::decode(&b), Some(s));
    }

    #[test]
    fn unit_attention_and_data_protect_keys() {
        let ua = Sense::unit_attention(Asc::CAPACITY_DATA_HAS_CHANGED).to_fixed();
        assert_eq!((ua[2], ua[12], ua[13]), (0x06, 0x2a, 0x09));
        let wp = Sense::write_protected().to_fixed();
        assert_eq!((wp[2], wp[12], wp[13]), (0x07, 0x27, 0x00));
        let nospc = Sense::space_allocation_failed().to_fixed();
        assert_eq!((nospc[2], nospc[12], nospc[13]), (0x07, 0x27, 0x07));
    }

    #[test]
    fn decode_rejects_garbage_without_panicking() {
        for len in 0..40 {
            let buf = vec![0x72u8; len];
            let _ = Sense::decode(&buf);
            let buf = vec![0xf0u8; len];
            let _ = Sense::decode(&buf);
        }
        assert_eq!(Sense::decode(&[0x00; 18]), None);
    }

    #[test]
    fn reservation_conflict_is_a_status() {
        assert_eq!(Status::ReservationConflict.code(), 0x18);
        assert_eq!(Status::CheckCondition.code(), 0x02);
    }
}
