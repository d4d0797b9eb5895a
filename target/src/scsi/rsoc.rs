//! REPORT SUPPORTED OPERATION CODES (SPC-4 §6.35), generated from the one
//! command table in [`super::opcodes`]: the usage bitmaps it reports are the
//! masks the CDB parser enforces.

use super::limits::RECOMMENDED_TIMEOUT_S;
use super::opcodes::{self, OpcodeInfo, SUPPORTED};
use super::sense::Sense;

/// Command timeouts descriptor (SPC-4 §6.35.4): nominal and recommended
/// timeouts in seconds.
fn timeouts_descriptor(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0x00, 0x0a, 0x00, 0x00]);
    out.extend_from_slice(&0u32.to_be_bytes()); // nominal: not specified
    out.extend_from_slice(&RECOMMENDED_TIMEOUT_S.to_be_bytes());
}

/// Parameter data for the CDB's REPORTING OPTIONS (0..=3, already checked).
pub fn report(rctd: bool, options: u8, opcode: u8, service_action: u16) -> Result<Vec<u8>, Sense> {
    match options {
        0 => Ok(all_commands(rctd)),
        _ => {
            let has_sa = opcodes::has_service_actions(opcode);
            let sa = match options {
                // One command without a service action.
                1 if has_sa => return Err(Sense::invalid_cdb_field(2, Some(2))),
                1 => None,
                // One command with the given service action.
                2 if !has_sa => return Err(Sense::invalid_cdb_field(2, Some(2))),
                // Options 3: the service action only if the command has them.
                _ if has_sa => Some(u8::try_from(service_action).unwrap_or(u8::MAX)),
                _ => None,
            };
            Ok(one_command(rctd, opcodes::lookup(opcode, sa)))
        }
    }
}

fn all_commands(rctd: bool) -> Vec<u8> {
    let mut body = Vec::new();
    for row in SUPPORTED {
        body.push(row.opcode);
        body.push(0);
        body.extend_from_slice(&u16::from(row.service_action.unwrap_or(0)).to_be_bytes());
        body.push(0);
        let mut flags = 0;
        if row.service_action.is_some() {
            flags |= 0x01; // SERVACTV
        }
        if rctd {
            flags |= 0x02; // CTDP
        }
        body.push(flags);
        body.extend_from_slice(&(row.usage.len() as u16).to_be_bytes());
        if rctd {
            timeouts_descriptor(&mut body);
        }
    }
    // Bounded by the table: about 45 rows of at most 20 bytes.
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

fn one_command(rctd: bool, row: Option<&OpcodeInfo>) -> Vec<u8> {
    let mut out = vec![0u8, 0, 0, 0];
    let Some(row) = row else {
        out[1] = 0x01; // SUPPORT 001b: not supported
        return out;
    };
    out[1] = 0x03 | if rctd { 0x80 } else { 0 }; // SUPPORT 011b, CTDP
    out[2..4].copy_from_slice(&(row.usage.len() as u16).to_be_bytes());
    out.extend_from_slice(row.usage);
    if rctd {
        timeouts_descriptor(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::opcodes::{PERSISTENT_RESERVE_IN, READ_10, WRITE_SAME_16};

    #[test]
    fn all_commands_lists_every_row() {
        let d = report(false, 0, 0, 0).unwrap();
        let len = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize;
        assert_eq!(len, d.len() - 4);
        assert_eq!(len, SUPPORTED.len() * 8);
        let with_timeouts = report(true, 0, 0, 0).unwrap();
        assert_eq!(with_timeouts.len() - 4, SUPPORTED.len() * 20);
        assert_eq!(with_timeouts[4 + 5] & 0x02, 0x02);
    }

    #[test]
    fn one_command_returns_the_parser_usage_bitmap() {
        let d = report(false, 1, WRITE_SAME_16, 0).unwrap();
        assert_eq!(d[1] & 0x07, 3);
        assert_eq!(u16::from_be_bytes([d[2], d[3]]), 16);
        let row = opcodes::lookup(WRITE_SAME_16, None).unwrap();
        assert_eq!(&d[4..], row.usage);
    }

    #[test]
    fn unsupported_command_reports_support_001() {
        let d = report(false, 1, 0xc1, 0).unwrap();
        assert_eq!(d, vec![0, 1, 0, 0]);
    }

    #[test]
    fn options_must_match_service_action_use() {
        assert_eq!(
            report(false, 1, PERSISTENT_RESERVE_IN, 0),
            Err(Sense::invalid_cdb_field(2, Some(2)))
        );
        assert_eq!(
            report(false, 2, READ_10, 0),
            Err(Sense::invalid_cdb_field(2, Some(2)))
        );
        let d = report(true, 2, PERSISTENT_RESERVE_IN, 1).unwrap();
        assert_eq!(d[1], 0x83);
        assert_eq!(d.len(), 4 + 10 + 12);
        let d = report(false, 3, READ_10, 0).unwrap();
        assert_eq!(d[1] & 0x07, 3);
    }
}
