//! Mode parameters: MODE SENSE(6/10) and MODE SELECT(6/10) (SPC-4 §6.11–
//! §6.14, §7.5) over the pages we keep: caching (08h, SBC-3 §6.4.5),
//! control (0Ah, SPC-4 §7.5.8) and informational exceptions control (1Ch).
//!
//! Changeable: WCE in the caching page, D_SENSE and SWP (software write
//! protect: the unit refuses every write until it is cleared) in the
//! control page;
//! everything else is fixed, and a MODE SELECT that changes a fixed bit is
//! refused with INVALID FIELD IN PARAMETER LIST pointing at it. Saved pages
//! do not exist (SAVING PARAMETERS NOT SUPPORTED).

use super::cdb::{Geometry, ModeSense, PageControl};
use super::sense::{Asc, Sense};

pub const PAGE_CACHING: u8 = 0x08;
pub const PAGE_CONTROL: u8 = 0x0a;
pub const PAGE_INFORMATIONAL_EXCEPTIONS: u8 = 0x1c;
pub const PAGE_ALL: u8 = 0x3f;

/// Pages in the order MODE SENSE with page 3Fh returns them.
const PAGES: [u8; 3] = [PAGE_CACHING, PAGE_CONTROL, PAGE_INFORMATIONAL_EXCEPTIONS];

/// The changeable mode parameters of a logical unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeParams {
    /// Write cache enabled: writes complete before quorum durability.
    pub wce: bool,
    /// Descriptor-format sense data.
    pub d_sense: bool,
    /// Software write protect (control page byte 4 bit 3).
    pub swp: bool,
}

impl ModeParams {
    pub const DEFAULT: ModeParams = ModeParams {
        wce: true,
        d_sense: false,
        swp: false,
    };
}

/// Current and default values of the mode pages of one logical unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModePages {
    pub current: ModeParams,
    /// What the unit was created with (PC = default values).
    pub default: ModeParams,
}

impl ModePages {
    pub fn new(default: ModeParams) -> Self {
        ModePages {
            current: default,
            default,
        }
    }

    fn page(&self, code: u8, pc: PageControl) -> Vec<u8> {
        let params = match pc {
            PageControl::Default => self.default,
            _ => self.current,
        };
        let changeable = pc == PageControl::Changeable;
        match code {
            PAGE_CACHING => {
                let mut p = vec![0u8; 20];
                p[0] = PAGE_CACHING;
                p[1] = 0x12;
                if changeable || params.wce {
                    p[2] = 0x04; // WCE
                }
                p
            }
            PAGE_CONTROL => {
                let mut p = vec![0u8; 12];
                p[0] = PAGE_CONTROL;
                p[1] = 0x0a;
                if changeable || params.d_sense {
                    p[2] = 0x04; // D_SENSE
                }
                if changeable || params.swp {
                    p[4] = 0x08; // SWP
                }
                if !changeable {
                    p[3] = 0x10; // QUEUE ALGORITHM MODIFIER 1: unrestricted
                    p[8] = 0xff; // BUSY TIMEOUT PERIOD: unlimited
                    p[9] = 0xff;
                }
                p
            }
            _ => {
                let mut p = vec![0u8; 12];
                p[0] = PAGE_INFORMATIONAL_EXCEPTIONS;
                p[1] = 0x0a;
                p
            }
        }
    }

    /// MODE SENSE parameter data (before allocation-length truncation).
    pub fn sense(
        &self,
        request: &ModeSense,
        geometry: Geometry,
        write_protected: bool,
    ) -> Result<Vec<u8>, Sense> {
        let ModeSense {
            ten,
            dbd,
            llbaa,
            pc,
            page,
            subpage,
            ..
        } = *request;
        if pc == PageControl::Saved {
            return Err(Sense::illegal(Asc::SAVING_PARAMETERS_NOT_SUPPORTED));
        }
        let pages: &[u8] = match page {
            PAGE_ALL => &PAGES,
            PAGE_CACHING => &PAGES[0..1],
            PAGE_CONTROL => &PAGES[1..2],
            PAGE_INFORMATIONAL_EXCEPTIONS => &PAGES[2..3],
            _ => return Err(Sense::invalid_cdb_field(2, Some(5))),
        };
        // We have no subpages: 00h, or FFh with page 3Fh (all subpages).
        if subpage != 0 && !(page == PAGE_ALL && subpage == 0xff) {
            return Err(Sense::invalid_cdb_field(3, None));
        }
        let mut body = Vec::new();
        let long = ten && llbaa;
        if !dbd {
            if long {
                body.extend_from_slice(&geometry.blocks.to_be_bytes());
                body.extend_from_slice(&[0; 4]);
            } else {
                let blocks = u32::try_from(geometry.blocks).unwrap_or(u32::MAX);
                body.extend_from_slice(&blocks.to_be_bytes());
            }
            // Short form: DENSITY CODE 0 then a 3-byte block length, which
            // is the low 3 bytes of our (≤ 4096) block size.
            body.extend_from_slice(&geometry.block_size.to_be_bytes());
        }
        let descriptor_len = body.len();
        for &code in pages {
            body.extend(self.page(code, pc));
        }
        // Device-specific parameter: WP, DPOFUA (SBC-3 §6.4.1).
        let device_specific = 0x10 | if write_protected { 0x80 } else { 0 };
        let mut out = if ten {
            let mut h = vec![0u8; 8];
            h[3] = device_specific;
            h[4] = u8::from(long);
            h[6..8].copy_from_slice(&(descriptor_len as u16).to_be_bytes());
            h
        } else {
            vec![0, 0, device_specific, descriptor_len as u8]
        };
        out.extend(body);
        // MODE DATA LENGTH excludes itself; at most 8 + 16 + 44 bytes.
        if ten {
            let len = (out.len() - 2) as u16;
            out[0..2].copy_from_slice(&len.to_be_bytes());
        } else {
            out[0] = (out.len() - 1) as u8;
        }
        Ok(out)
    }

    /// Applies a MODE SELECT parameter list, returning the new parameters.
    /// Nothing changes unless the whole list is valid.
    pub fn select(&self, ten: bool, list: &[u8], geometry: Geometry) -> Result<ModeParams, Sense> {
        let header_len = if ten { 8 } else { 4 };
        let Some(header) = list.get(..header_len) else {
            return Err(Sense::parameter_list_length());
        };
        let (descriptor_len, long) = if ten {
            (
                usize::from(u16::from_be_bytes([header[6], header[7]])),
                header[4] & 0x01 != 0,
            )
        } else {
            (usize::from(header[3]), false)
        };
        let expected_descriptor = if long { 16 } else { 8 };
        if descriptor_len != 0 && descriptor_len != expected_descriptor {
            let at = if ten { 6 } else { 3 };
            return Err(Sense::invalid_param_field(at, None));
        }
        let pages_at = header_len + descriptor_len;
        let Some(descriptor) = list.get(header_len..pages_at) else {
            return Err(Sense::parameter_list_length());
        };
        if descriptor_len != 0 {
            // The block length is fixed; so is the capacity.
            let len_at = if long { 12 } else { 5 };
            let block_len = descriptor
                .get(len_at..)
                .map(|b| b.iter().fold(0u32, |acc, &x| (acc << 8) | u32::from(x)))
                .unwrap_or_default();
            if block_len != geometry.block_size {
                return Err(Sense::invalid_param_field(
                    (header_len + len_at) as u16,
                    None,
                ));
            }
        }
        let mut next = self.current;
        let mut rest = list.get(pages_at..).unwrap_or_default();
        let mut offset = pages_at;
        while !rest.is_empty() {
            let [code_byte, len, ..] = *rest else {
                return Err(Sense::parameter_list_length());
            };
            let code = code_byte & 0x3f;
            if code_byte & 0x40 != 0 || !PAGES.contains(&code) {
                return Err(Sense::invalid_param_field(offset as u16, None));
            }
            let page_len = usize::from(len) + 2;
            let Some(page) = rest.get(..page_len) else {
                return Err(Sense::parameter_list_length());
            };
            let current = self.page(code, PageControl::Current);
            if page.len() != current.len() {
                return Err(Sense::invalid_param_field((offset + 1) as u16, None));
            }
            let mask = self.page(code, PageControl::Changeable);
            // Byte 0 carries PS (reserved in MODE SELECT): compare from 1.
            for i in 1..page.len() {
                let (p, c, m) = (page[i], current[i], mask[i]);
                let stray = (p ^ c) & !m;
                if stray != 0 {
                    let bit = 7u8.saturating_sub(stray.leading_zeros() as u8);
                    return Err(Sense::invalid_param_field((offset + i) as u16, Some(bit)));
                }
            }
            let changeable = page.get(2).copied().unwrap_or_default();
            match code {
                PAGE_CACHING => next.wce = changeable & 0x04 != 0,
                PAGE_CONTROL => {
                    next.d_sense = changeable & 0x04 != 0;
                    next.swp = page.get(4).copied().unwrap_or_default() & 0x08 != 0;
                }
                _ => {}
            }
            offset += page_len;
            rest = rest.get(page_len..).unwrap_or_default();
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GEO: Geometry = Geometry {
        blocks: 2048,
        block_size: 512,
    };

    fn pages() -> ModePages {
        ModePages::new(ModeParams::DEFAULT)
    }

    fn request(ten: bool, llbaa: bool, pc: PageControl, page: u8) -> ModeSense {
        ModeSense {
            ten,
            dbd: false,
            llbaa,
            pc,
            page,
            subpage: 0,
            alloc_len: 255,
        }
    }

    fn sense6(p: &ModePages, page: u8, pc: PageControl) -> Result<Vec<u8>, Sense> {
        p.sense(&request(false, false, pc, page), GEO, false)
    }

    #[test]
    fn all_pages_with_block_descriptor() {
        let d = sense6(&pages(), PAGE_ALL, PageControl::Current).unwrap();
        assert_eq!(usize::from(d[0]) + 1, d.len());
        assert_eq!(d[3], 8);
        assert_eq!(&d[4..8], &2048u32.to_be_bytes());
        assert_eq!(&d[9..12], &[0, 2, 0]);
        assert_eq!(d[12], PAGE_CACHING);
        assert_eq!(d[14] & 0x04, 0x04);
        assert_eq!(d[2] & 0x80, 0);
        assert_eq!(d[2] & 0x10, 0x10, "DPOFUA");
    }

    #[test]
    fn mode_sense10_long_lba_descriptor() {
        let req = request(true, true, PageControl::Current, PAGE_CACHING);
        let d = pages().sense(&req, GEO, true).unwrap();
        assert_eq!(usize::from(u16::from_be_bytes([d[0], d[1]])) + 2, d.len());
        assert_eq!(d[3] & 0x80, 0x80); // WP
        assert_eq!(d[4] & 1, 1);
        assert_eq!(u16::from_be_bytes([d[6], d[7]]), 16);
        assert_eq!(&d[8..16], &2048u64.to_be_bytes());
        assert_eq!(&d[20..24], &512u32.to_be_bytes());
    }

    #[test]
    fn saved_values_and_unknown_pages_are_refused() {
        let p = pages();
        assert_eq!(
            sense6(&p, PAGE_ALL, PageControl::Saved),
            Err(Sense::illegal(Asc::SAVING_PARAMETERS_NOT_SUPPORTED))
        );
        assert_eq!(
            sense6(&p, 0x19, PageControl::Current),
            Err(Sense::invalid_cdb_field(2, Some(5)))
        );
        let mut req = request(false, false, PageControl::Current, PAGE_CACHING);
        req.subpage = 1;
        assert_eq!(
            p.sense(&req, GEO, false),
            Err(Sense::invalid_cdb_field(3, None))
        );
    }

    #[test]
    fn changeable_page_shows_only_wce_and_d_sense() {
        let d = sense6(&pages(), PAGE_CACHING, PageControl::Changeable).unwrap();
        let page = &d[12..];
        assert_eq!(page[2], 0x04);
        assert!(page[3..].iter().all(|&b| b == 0));
    }

    #[test]
    fn default_values_are_the_creation_values_not_the_current_ones() {
        let mut p = ModePages::new(ModeParams {
            wce: false,
            d_sense: false,
            swp: false,
        });
        p.current.wce = true;
        let d = sense6(&p, PAGE_CACHING, PageControl::Default).unwrap();
        assert_eq!(d[14] & 0x04, 0);
        let d = sense6(&p, PAGE_CACHING, PageControl::Current).unwrap();
        assert_eq!(d[14] & 0x04, 0x04);
    }

    fn select_list(page: Vec<u8>) -> Vec<u8> {
        let mut l = vec![0, 0, 0, 0];
        l.extend(page);
        l
    }

    #[test]
    fn select_clears_wce_and_sense_reflects_it() {
        let p = pages();
        let mut page = p.page(PAGE_CACHING, PageControl::Current);
        page[2] &= !0x04;
        let next = p.select(false, &select_list(page), GEO).unwrap();
        assert!(!next.wce);
        let after = ModePages { current: next, ..p };
        let d = sense6(&after, PAGE_CACHING, PageControl::Current).unwrap();
        assert_eq!(d[14] & 0x04, 0);
    }

    #[test]
    fn select_refuses_fixed_bits_and_bad_lengths() {
        let p = pages();
        let mut page = p.page(PAGE_CACHING, PageControl::Current);
        page[2] |= 0x01; // RCD is not changeable
        assert_eq!(
            p.select(false, &select_list(page), GEO),
            Err(Sense::invalid_param_field(6, Some(0)))
        );
        let page = p.page(PAGE_CONTROL, PageControl::Current);
        let l = select_list(page[..6].to_vec());
        assert_eq!(
            p.select(false, &l, GEO),
            Err(Sense::parameter_list_length())
        );
        assert_eq!(
            p.select(false, &[0, 0], GEO),
            Err(Sense::parameter_list_length())
        );
    }

    #[test]
    fn select_checks_the_block_descriptor() {
        let p = pages();
        let mut l = vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x10, 0];
        assert_eq!(
            p.select(false, &l, GEO),
            Err(Sense::invalid_param_field(9, None))
        );
        l[10] = 0x02;
        assert_eq!(p.select(false, &l, GEO), Ok(p.current));
    }
}
