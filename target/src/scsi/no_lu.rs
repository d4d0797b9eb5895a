//! Answers for commands addressed to a LUN that does not exist (SPC-4
//! §4.6.4 / SAM-5 §5.9.6): the target has one logical unit, LUN 0.
//!
//! INQUIRY returns standard data with PERIPHERAL QUALIFIER 011b and device
//! type 1Fh ("no logical unit here"); REPORT LUNS returns the real
//! inventory; REQUEST SENSE returns LOGICAL UNIT NOT SUPPORTED as data;
//! everything else is CHECK CONDITION / ILLEGAL REQUEST / LOGICAL UNIT NOT
//! SUPPORTED.

use bytes::Bytes;

use super::capacity;
use super::cdb::{self, Command, Geometry};
use super::inquiry;
use super::lu::Response;
use super::sense::{Asc, Sense, SenseFormat, Status};

/// The response to `cdb` sent to a LUN without a logical unit.
pub fn respond_without_lu(cdb: &[u8]) -> Response {
    let not_supported = Sense::illegal(Asc::LOGICAL_UNIT_NOT_SUPPORTED);
    // No medium: geometry only matters to medium commands, refused anyway.
    let geometry = Geometry {
        blocks: 0,
        block_size: 512,
    };
    let (data, alloc_len) = match cdb::parse(cdb, &geometry) {
        Ok(Command::Inquiry {
            evpd: false,
            alloc_len,
            ..
        }) => {
            let mut data = inquiry::standard();
            data[0] = 0x7f;
            (data, alloc_len)
        }
        Ok(Command::ReportLuns { select, alloc_len }) => (capacity::report_luns(select), alloc_len),
        Ok(Command::RequestSense {
            descriptor,
            alloc_len,
        }) => {
            let format = if descriptor {
                SenseFormat::Descriptor
            } else {
                SenseFormat::Fixed
            };
            (not_supported.encode(format), alloc_len)
        }
        _ => {
            return Response {
                status: Status::CheckCondition,
                data_in: Bytes::new(),
                sense: Some(not_supported.to_fixed().to_vec()),
            }
        }
    };
    let mut data = data;
    data.truncate(usize::try_from(alloc_len).unwrap_or(usize::MAX));
    Response::good(Bytes::from(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inquiry_reports_no_logical_unit() {
        let r = respond_without_lu(&[0x12, 0, 0, 0, 36, 0]);
        assert_eq!(r.status, Status::Good);
        assert_eq!(r.data_in[0], 0x7f);
        assert_eq!(r.data_in.len(), 36);
    }

    #[test]
    fn other_commands_are_logical_unit_not_supported() {
        let r = respond_without_lu(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(r.status, Status::CheckCondition);
        let s = Sense::decode(r.sense.as_deref().unwrap_or_default()).unwrap();
        assert_eq!(s.asc, Asc::LOGICAL_UNIT_NOT_SUPPORTED);
        let r = respond_without_lu(&[0x03, 0, 0, 0, 18, 0]);
        assert_eq!(r.status, Status::Good);
        assert_eq!(
            Sense::decode(&r.data_in).map(|s| s.asc),
            Some(Asc::LOGICAL_UNIT_NOT_SUPPORTED)
        );
    }

    #[test]
    fn report_luns_still_lists_lun_zero() {
        let r = respond_without_lu(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0]);
        assert_eq!(&r.data_in[..4], &[0, 0, 0, 8]);
    }
}
