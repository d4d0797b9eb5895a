//! I_T nexus identity: which initiator port, through which target port.
//!
//! Unit attentions and persistent reservations are kept per I_T nexus
//! (SAM-5 §4.7.2, SPC-4 §5.12.6). For iSCSI the initiator port name is the
//! initiator name followed by ",i,0x" and the 12 hex digits of the ISID
//! (RFC 7143 §4.2.7.1); it is also what the iSCSI TransportID carries
//! (SPC-4 §7.6.4.6, format code 01b).

use std::fmt;
use std::sync::Arc;

/// One I_T nexus. Cheap to clone (the name is shared).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Nexus {
    initiator_port: Arc<str>,
    relative_target_port: u16,
}

impl Nexus {
    /// `initiator_port` is `"<iSCSI name>,i,0x<ISID>"`; it is truncated (on a
    /// character boundary) to [`super::limits::MAX_INITIATOR_PORT_NAME_BYTES`].
    pub fn new(initiator_port: &str, relative_target_port: u16) -> Self {
        let mut end = initiator_port
            .len()
            .min(super::limits::MAX_INITIATOR_PORT_NAME_BYTES);
        while !initiator_port.is_char_boundary(end) {
            end -= 1;
        }
        Nexus {
            initiator_port: Arc::from(initiator_port.get(..end).unwrap_or_default()),
            relative_target_port,
        }
    }

    /// The nexus of an iSCSI session: initiator name and ISID (RFC 7143
    /// §4.2.7.1 builds the initiator port name from both) through the
    /// target portal group `tpgt`, which is our relative target port.
    pub fn iscsi(initiator_name: &str, isid: [u8; 6], tpgt: u16) -> Self {
        let hex: String = isid.iter().map(|b| format!("{b:02x}")).collect();
        Nexus::new(&format!("{initiator_name},i,0x{hex}"), tpgt)
    }

    /// The iSCSI initiator port name, e.g. "iqn.1993-08.org.debian:01:ab,i,0x023d00000001".
    pub fn initiator_port(&self) -> &str {
        &self.initiator_port
    }

    pub fn relative_target_port(&self) -> u16 {
        self.relative_target_port
    }

    /// iSCSI TransportID, format code 01b (initiator port name), padded with
    /// NULs to a multiple of 4 bytes with at least one terminating NUL.
    pub fn transport_id(&self) -> Vec<u8> {
        let name = self.initiator_port.as_bytes();
        // name + NUL, rounded up to 4; the name is at most 255 bytes.
        let padded = (name.len() + 1).div_ceil(4) * 4;
        let mut out = Vec::with_capacity(4 + padded);
        out.push(0x40 | 0x05); // FORMAT CODE 01b, PROTOCOL IDENTIFIER iSCSI
        out.push(0);
        out.extend_from_slice(&(padded as u16).to_be_bytes());
        out.extend_from_slice(name);
        out.resize(4 + padded, 0);
        out
    }
}

impl fmt::Display for Nexus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} via port {}",
            self.initiator_port, self.relative_target_port
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_id_is_nul_terminated_and_padded_to_four() {
        let n = Nexus::new("iqn.x,i,0x1", 1);
        let t = n.transport_id();
        assert_eq!(t[0], 0x45);
        assert_eq!(u16::from_be_bytes([t[2], t[3]]) as usize, t.len() - 4);
        assert_eq!((t.len() - 4) % 4, 0);
        assert_eq!(&t[4..15], b"iqn.x,i,0x1");
        assert_eq!(t[15], 0);
    }

    #[test]
    fn iscsi_nexus_names_the_initiator_port_with_its_isid() {
        let n = Nexus::iscsi(
            "iqn.2026-11.io.x:node",
            [0x80, 0x12, 0x34, 0x56, 0x00, 0x01],
            3,
        );
        assert_eq!(n.initiator_port(), "iqn.2026-11.io.x:node,i,0x801234560001");
        assert_eq!(n.relative_target_port(), 3);
        assert_ne!(
            n,
            Nexus::iscsi(
                "iqn.2026-11.io.x:node",
                [0x80, 0x12, 0x34, 0x56, 0x00, 0x02],
                3
            )
        );
    }

    #[test]
    fn long_names_are_truncated_on_a_char_boundary() {
        let long = "é".repeat(200);
        let n = Nexus::new(&long, 1);
        assert!(n.initiator_port().len() <= super::super::limits::MAX_INITIATOR_PORT_NAME_BYTES);
        assert!(n.transport_id().len() <= 4 + 256);
    }
}
