//! Capacity and provisioning answers: READ CAPACITY(10/16) (SBC-3 §5.15,
//! §5.16), REPORT LUNS (SPC-4 §6.33), GET LBA STATUS (SBC-3 §5.5) and the
//! UNMAP parameter list (SBC-3 §5.28).

use super::cdb::Geometry;
use super::io::{Extent, LbaStatusExtent};
use super::limits::{MAX_UNMAP_BLOCK_DESCRIPTORS, MAX_UNMAP_LBA_COUNT};
use super::sense::Sense;

pub fn read_capacity_10(geo: Geometry) -> Vec<u8> {
    // A capacity beyond 32 bits reports FFFFFFFFh: use READ CAPACITY(16).
    let last = u32::try_from(geo.blocks.saturating_sub(1)).unwrap_or(u32::MAX);
    let mut out = last.to_be_bytes().to_vec();
    out.extend_from_slice(&geo.block_size.to_be_bytes());
    out
}

pub fn read_capacity_16(geo: Geometry, physical_block_exponent: u8) -> Vec<u8> {
    let mut out = vec![0u8; 32];
    out[0..8].copy_from_slice(&geo.blocks.saturating_sub(1).to_be_bytes());
    out[8..12].copy_from_slice(&geo.block_size.to_be_bytes());
    out[13] = physical_block_exponent & 0x0f;
    out[14] = 0x80 | 0x40; // LBPME (thin), LBPRZ (unmapped reads zeros)
    out
}

/// REPORT LUNS: LUN 0 for SELECT REPORT 00h/02h, nothing for 01h
/// (well-known LUs only).
pub fn report_luns(select: u8) -> Vec<u8> {
    let luns: &[[u8; 8]] = if select == 0x01 { &[] } else { &[[0; 8]] };
    let mut out = ((luns.len() * 8) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&[0; 4]);
    for lun in luns {
        out.extend_from_slice(lun);
    }
    out
}

/// GET LBA STATUS parameter data from the volume's answer. The first
/// descriptor must start at `lba`; extents are clipped to the capacity and
/// must follow each other without gaps, or the answer is rejected.
pub fn lba_status(geo: Geometry, lba: u64, extents: &[LbaStatusExtent]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    let mut next = lba;
    for e in extents {
        if e.extent.lba != next {
            return None;
        }
        let end = e.extent.lba.checked_add(e.extent.blocks)?.min(geo.blocks);
        let Some(blocks) = end.checked_sub(e.extent.lba).filter(|&b| b > 0) else {
            break;
        };
        // One descriptor counts at most u32::MAX blocks; the next one
        // continues where it stops.
        let blocks = u32::try_from(blocks).unwrap_or(u32::MAX);
        body.extend_from_slice(&e.extent.lba.to_be_bytes());
        body.extend_from_slice(&blocks.to_be_bytes());
        body.extend_from_slice(&[e.status as u8, 0, 0, 0]);
        next = e.extent.lba + u64::from(blocks);
        if next >= geo.blocks {
            break;
        }
    }
    if body.is_empty() {
        return None;
    }
    // PARAMETER DATA LENGTH counts the bytes after itself.
    let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&[0; 4]);
    out.extend(body);
    Some(out)
}

/// Parses an UNMAP parameter list of `param_len` bytes into extents to
/// deallocate, checking every descriptor against the capacity and the
/// Block Limits maxima. Empty descriptors are dropped.
pub fn unmap_extents(geo: Geometry, param_len: u32, data: &[u8]) -> Result<Vec<Extent>, Sense> {
    let param_len = param_len as usize;
    if param_len == 0 {
        return Ok(Vec::new());
    }
    let Some(list) = data.get(..param_len) else {
        return Err(Sense::parameter_list_length());
    };
    if list.len() < 8 {
        return Err(Sense::parameter_list_length());
    }
    let be16 = |at: usize| usize::from(u16::from_be_bytes([list[at], list[at + 1]]));
    let data_len = be16(0);
    let descriptors_len = be16(2);
    // UNMAP DATA LENGTH counts the bytes after itself.
    if data_len > list.len().saturating_sub(2) {
        return Err(Sense::invalid_param_field(0, None));
    }
    if descriptors_len > list.len() - 8 {
        return Err(Sense::invalid_param_field(2, None));
    }
    // A partial trailing descriptor is ignored (SBC-3 §5.28.2).
    let count = descriptors_len / 16;
    if count > MAX_UNMAP_BLOCK_DESCRIPTORS as usize {
        return Err(Sense::invalid_param_field(2, None));
    }
    let mut extents = Vec::with_capacity(count);
    let mut total: u64 = 0;
    for i in 0..count {
        let at = 8 + 16 * i;
        let Some(d) = list.get(at..at + 16) else {
            return Err(Sense::parameter_list_length());
        };
        let mut lba_bytes = [0u8; 8];
        lba_bytes.copy_from_slice(&d[0..8]);
        let lba = u64::from_be_bytes(lba_bytes);
        let blocks = u64::from(u32::from_be_bytes([d[8], d[9], d[10], d[11]]));
        geo.check_range(lba, blocks)?;
        total = total.saturating_add(blocks);
        if total > u64::from(MAX_UNMAP_LBA_COUNT) {
            return Err(Sense::invalid_param_field((at + 8) as u16, None));
        }
        if blocks > 0 {
            extents.push(Extent { lba, blocks });
        }
    }
    Ok(extents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::io::Provisioning;
    use crate::scsi::sense::Asc;

    const GEO: Geometry = Geometry {
        blocks: 1000,
        block_size: 512,
    };

    fn unmap_list(descs: &[(u64, u32)]) -> Vec<u8> {
        let mut l = vec![0u8; 8];
        for (lba, n) in descs {
            l.extend_from_slice(&lba.to_be_bytes());
            l.extend_from_slice(&n.to_be_bytes());
            l.extend_from_slice(&[0; 4]);
        }
        let len = l.len();
        l[0..2].copy_from_slice(&((len - 2) as u16).to_be_bytes());
        l[2..4].copy_from_slice(&((len - 8) as u16).to_be_bytes());
        l
    }

    #[test]
    fn read_capacity_10_saturates_for_big_disks() {
        let big = Geometry {
            blocks: 1 << 33,
            block_size: 512,
        };
        assert_eq!(&read_capacity_10(big)[..4], &[0xff; 4]);
        assert_eq!(&read_capacity_10(GEO)[..4], &999u32.to_be_bytes());
        let rc16 = read_capacity_16(big, 3);
        assert_eq!(&rc16[..8], &((1u64 << 33) - 1).to_be_bytes());
        assert_eq!(rc16[13], 3);
        assert_eq!(rc16[14] & 0xc0, 0xc0);
    }

    #[test]
    fn report_luns_lists_lun_zero() {
        assert_eq!(
            report_luns(0),
            [0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(report_luns(1), [0; 8]);
    }

    #[test]
    fn unmap_list_parses_and_checks_range() {
        let l = unmap_list(&[(0, 8), (100, 0), (990, 10)]);
        let e = unmap_extents(GEO, l.len() as u32, &l).unwrap();
        assert_eq!(
            e,
            vec![
                Extent { lba: 0, blocks: 8 },
                Extent {
                    lba: 990,
                    blocks: 10
                }
            ]
        );
        let l = unmap_list(&[(995, 10)]);
        assert_eq!(
            unmap_extents(GEO, l.len() as u32, &l),
            Err(Sense::lba_out_of_range())
        );
        let l = unmap_list(&[(u64::MAX, 2)]);
        assert_eq!(
            unmap_extents(GEO, l.len() as u32, &l),
            Err(Sense::lba_out_of_range())
        );
    }

    #[test]
    fn unmap_list_length_errors() {
        assert_eq!(unmap_extents(GEO, 0, &[]), Ok(vec![]));
        assert_eq!(
            unmap_extents(GEO, 4, &[0; 4]),
            Err(Sense::parameter_list_length())
        );
        let l = unmap_list(&[(0, 1)]);
        assert_eq!(
            unmap_extents(GEO, 24, &l[..20]),
            Err(Sense::parameter_list_length())
        );
        let mut l = unmap_list(&[(0, 1)]);
        l[3] = 32; // more descriptor bytes than the list holds
        assert_eq!(
            unmap_extents(GEO, l.len() as u32, &l).map_err(|s| s.asc),
            Err(Asc::INVALID_FIELD_IN_PARAMETER_LIST)
        );
    }

    #[test]
    fn unmap_descriptor_count_is_bounded() {
        let descs: Vec<(u64, u32)> = (0..=MAX_UNMAP_BLOCK_DESCRIPTORS as u64)
            .map(|i| (i, 1))
            .collect();
        let l = unmap_list(&descs);
        assert_eq!(
            unmap_extents(GEO, l.len() as u32, &l).map_err(|s| s.asc),
            Err(Asc::INVALID_FIELD_IN_PARAMETER_LIST)
        );
    }

    #[test]
    fn lba_status_requires_contiguous_answer_from_lba() {
        let ext = |lba, blocks, status| LbaStatusExtent {
            extent: Extent { lba, blocks },
            status,
        };
        let d = lba_status(
            GEO,
            10,
            &[
                ext(10, 5, Provisioning::Mapped),
                ext(15, 5000, Provisioning::Deallocated),
            ],
        )
        .unwrap();
        assert_eq!(u32::from_be_bytes([d[0], d[1], d[2], d[3]]), 4 + 32);
        assert_eq!(&d[8..16], &10u64.to_be_bytes());
        assert_eq!(&d[32..36], &985u32.to_be_bytes()); // clipped to capacity
        assert_eq!(d[36], 1);
        assert_eq!(
            lba_status(GEO, 10, &[ext(11, 5, Provisioning::Mapped)]),
            None
        );
        assert_eq!(lba_status(GEO, 10, &[]), None);
    }
}
