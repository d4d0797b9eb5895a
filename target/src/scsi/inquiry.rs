//! INQUIRY: standard data (SPC-4 §6.6.2) and the vital product data pages
//! we offer (SPC-4 §7.8, SBC-3 §6.5): 00h supported pages, 80h unit serial
//! number, 83h device identification, B0h block limits, B1h block device
//! characteristics, B2h logical block provisioning.
//!
//! Every value in the Block Limits page comes from [`super::limits`], the
//! same constants the CDB parser enforces.

use super::cdb::Geometry;
use super::limits;
use super::sense::Sense;

pub const VENDOR_ID: &[u8; 8] = b"OPENEBS ";
pub const PRODUCT_ID: &[u8; 16] = b"CSTOR           ";
pub const PRODUCT_REVISION: &[u8; 4] = b"0001";

/// VPD pages, in the order page 00h lists them.
pub const SUPPORTED_VPD_PAGES: [u8; 6] = [0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2];

/// What identifies a logical unit to initiators (udev builds
/// /dev/disk/by-id names from it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The volume's uuid: source of the T10 vendor and NAA designators.
    pub uuid: [u8; 16],
    /// Unit serial number (printable ASCII, at most
    /// [`super::limits::MAX_SERIAL_BYTES`]).
    pub serial: String,
}

impl Identity {
    /// NAA locally assigned (NAA = 3h, SPC-4 §7.8.6.6.2) from the low 60
    /// bits of the uuid: we own no IEEE company id, so we do not pretend to.
    pub fn naa(&self) -> [u8; 8] {
        let mut id = [0u8; 8];
        id.copy_from_slice(&self.uuid[8..16]);
        id[0] = 0x30 | (id[0] & 0x0f);
        id
    }

    fn uuid_hex(&self) -> String {
        self.uuid.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Static facts about the unit that the pages report.
pub struct Facts<'a> {
    pub identity: &'a Identity,
    pub geometry: Geometry,
    pub physical_block_exponent: u8,
    pub unmap_granularity_blocks: u32,
    pub relative_target_port: u16,
}

/// Standard INQUIRY data.
pub fn standard() -> Vec<u8> {
    let mut d = vec![0u8; 66];
    d[0] = 0x00; // peripheral qualifier 000b, direct access block device
    d[2] = 0x06; // VERSION: SPC-4
    d[3] = 0x10 | 0x02; // HISUP, RESPONSE DATA FORMAT 2
    d[4] = (d.len() - 5) as u8; // ADDITIONAL LENGTH
    d[7] = 0x02; // CMDQUE (3PC, PROTECT, TPGS all 0)
    d[8..16].copy_from_slice(VENDOR_ID);
    d[16..32].copy_from_slice(PRODUCT_ID);
    d[32..36].copy_from_slice(PRODUCT_REVISION);
    // Version descriptors (SPC-4 table 142): SAM-5, SPC-4, SBC-3, iSCSI.
    for (i, v) in [0x00a0u16, 0x0460, 0x04c0, 0x0960].iter().enumerate() {
        let at = 58 + 2 * i;
        d[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }
    d
}

/// VPD page `page`, or INVALID FIELD IN CDB for a page we do not have.
pub fn vpd(page: u8, facts: &Facts<'_>) -> Result<Vec<u8>, Sense> {
    let body = match page {
        0x00 => SUPPORTED_VPD_PAGES.to_vec(),
        0x80 => facts.identity.serial.as_bytes().to_vec(),
        0x83 => device_identification(facts),
        0xb0 => block_limits(facts),
        0xb1 => {
            let mut b = vec![0u8; 0x3c];
            b[1] = 0x01; // MEDIUM ROTATION RATE: non-rotating medium
            b
        }
        0xb2 => {
            // THRESHOLD EXPONENT 0; LBPU, LBPWS, LBPWS10, LBPRZ = 001b;
            // ANC_SUP = 0, DP = 0; PROVISIONING TYPE = 010b (thin).
            vec![0x00, 0x80 | 0x40 | 0x20 | 0x04, 0x02, 0x00]
        }
        _ => return Err(Sense::invalid_cdb_field(2, None)),
    };
    let mut out = vec![0x00, page];
    // The longest body (the serial) is bounded by MAX_SERIAL_BYTES (checked
    // by LogicalUnit::new); a longer one is cut, never overflowing the length.
    let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body.get(..usize::from(len)).unwrap_or(&body));
    Ok(out)
}

fn designator(out: &mut Vec<u8>, header: [u8; 2], value: &[u8]) {
    out.extend_from_slice(&header);
    out.push(0);
    out.push(value.len() as u8); // our designators are all < 256 bytes
    out.extend_from_slice(value);
}

fn device_identification(facts: &Facts<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    // T10 vendor ID based (type 1), ASCII, associated with the LU.
    let mut t10 = VENDOR_ID.to_vec();
    t10.extend_from_slice(b"CSTOR:");
    t10.extend_from_slice(facts.identity.uuid_hex().as_bytes());
    designator(&mut out, [0x02, 0x01], &t10);
    // NAA (type 3), binary, associated with the LU.
    designator(&mut out, [0x01, 0x03], &facts.identity.naa());
    // Relative target port (type 4), iSCSI, associated with the target port.
    let mut port = vec![0, 0];
    port.extend_from_slice(&facts.relative_target_port.to_be_bytes());
    designator(&mut out, [0x51, 0x94], &port);
    out
}

fn block_limits(facts: &Facts<'_>) -> Vec<u8> {
    let bs = facts.geometry.block_size;
    let mut b = vec![0u8; 0x3c];
    b[0] = 0x01; // WSNZ: WRITE SAME with 0 blocks is refused
    b[1] = limits::MAX_COMPARE_AND_WRITE_BLOCKS;
    let granularity = 1u16 << facts.physical_block_exponent.min(15);
    b[2..4].copy_from_slice(&granularity.to_be_bytes());
    b[4..8].copy_from_slice(&facts.geometry.max_transfer_blocks().to_be_bytes());
    let optimal = limits::blocks_for_bytes(limits::OPTIMAL_TRANSFER_BYTES, bs);
    b[8..12].copy_from_slice(&optimal.to_be_bytes());
    b[16..20].copy_from_slice(&limits::MAX_UNMAP_LBA_COUNT.to_be_bytes());
    b[20..24].copy_from_slice(&limits::MAX_UNMAP_BLOCK_DESCRIPTORS.to_be_bytes());
    b[24..28].copy_from_slice(&facts.unmap_granularity_blocks.to_be_bytes());
    b[32..40].copy_from_slice(&limits::MAX_WRITE_SAME_BLOCKS.to_be_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(identity: &Identity) -> Facts<'_> {
        Facts {
            identity,
            geometry: Geometry {
                blocks: 1 << 20,
                block_size: 512,
            },
            physical_block_exponent: 3,
            unmap_granularity_blocks: 128,
            relative_target_port: 1,
        }
    }

    fn id() -> Identity {
        Identity {
            uuid: [0xab; 16],
            serial: "vol-1".into(),
        }
    }

    #[test]
    fn standard_inquiry_is_an_spc4_disk_with_cmdque() {
        let d = standard();
        assert_eq!(d[0], 0);
        assert_eq!(d[2], 6);
        assert_eq!(d[3] & 0x0f, 2);
        assert_eq!(usize::from(d[4]) + 5, d.len());
        assert_eq!(d[7] & 0x02, 0x02);
        assert_eq!(d[5] & 0x08, 0); // no 3PC
        assert_eq!(&d[8..16], b"OPENEBS ");
        assert!(d[8..36].iter().all(|c| c.is_ascii_graphic() || *c == b' '));
    }

    #[test]
    fn supported_pages_are_all_served() {
        let i = id();
        let f = facts(&i);
        let p0 = vpd(0, &f).unwrap();
        assert_eq!(&p0[4..], &SUPPORTED_VPD_PAGES);
        for page in SUPPORTED_VPD_PAGES {
            let p = vpd(page, &f).unwrap();
            assert_eq!(p[1], page);
            assert_eq!(usize::from(u16::from_be_bytes([p[2], p[3]])) + 4, p.len());
        }
        assert_eq!(vpd(0x89, &f), Err(Sense::invalid_cdb_field(2, None)));
    }

    #[test]
    fn block_limits_advertise_the_enforced_bounds() {
        let i = id();
        let b = vpd(0xb0, &facts(&i)).unwrap();
        let be32 = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        assert_eq!(b[4] & 1, 1);
        assert_eq!(b[5], limits::MAX_COMPARE_AND_WRITE_BLOCKS);
        assert_eq!(be32(8), limits::MAX_TRANSFER_BYTES / 512);
        assert_eq!(be32(20), limits::MAX_UNMAP_LBA_COUNT);
        assert_eq!(be32(24), limits::MAX_UNMAP_BLOCK_DESCRIPTORS);
        assert_eq!(
            u64::from_be_bytes(b[36..44].try_into().unwrap()),
            limits::MAX_WRITE_SAME_BLOCKS
        );
    }

    #[test]
    fn provisioning_page_reports_thin_with_unmap_and_zeroes() {
        let i = id();
        let p = vpd(0xb2, &facts(&i)).unwrap();
        assert_eq!(p[5] & 0xe0, 0xe0); // LBPU, LBPWS, LBPWS10
        assert_eq!((p[5] >> 2) & 0x07, 1); // LBPRZ
        assert_eq!(p[5] & 0x02, 0); // no anchors
        assert_eq!(p[6] & 0x07, 2); // thin
    }

    #[test]
    fn naa_designator_is_locally_assigned_from_the_uuid() {
        let i = id();
        let p = vpd(0x83, &facts(&i)).unwrap();
        // Walk the designators and find the NAA one.
        let mut at = 4;
        let mut naa = None;
        while at + 4 <= p.len() {
            let len = usize::from(p[at + 3]);
            if p[at + 1] & 0x0f == 3 {
                naa = Some(p[at + 4..at + 4 + len].to_vec());
            }
            at += 4 + len;
        }
        let naa = naa.unwrap();
        assert_eq!(naa[0] >> 4, 3);
        assert_eq!(naa, i.naa().to_vec());
    }
}
