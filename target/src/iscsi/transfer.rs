//! Data movement of one SCSI command (RFC 7143 §4.2.5 data transfer, §11.7
//! Data-Out/Data-In, §11.8 R2T, §13.10-§13.17 the keys that shape it).
//!
//! Write ([`WriteTransfer`]): the initiator may send immediate data (with
//! the command, if ImmediateData=Yes) and unsolicited Data-Out (if
//! InitialR2T=No and the command's F bit is clear), together at most
//! min(FirstBurstLength, ExpectedDataTransferLength); the target solicits
//! the rest with R2Ts of at most MaxBurstLength, at most MaxOutstandingR2T
//! at a time. Every Data-Out is checked against what was asked for: its
//! TTT, its DataSN (from 0 in each sequence), its BufferOffset (we negotiate
//! DataPDUInOrder=Yes, so offsets are contiguous) and its length.
//!
//! Read ([`data_in_plan`]): the read data leaves in Data-In PDUs of at most
//! the initiator's MaxRecvDataSegmentLength, grouped in sequences of at
//! most MaxBurstLength, F set on the last PDU of each sequence, DataSN
//! counting from 0 across the command.

use std::collections::VecDeque;

use super::negotiate::SessionParams;
use super::pdu::DataOut;

/// The Target Transfer Tag of unsolicited Data-Out.
pub const UNSOLICITED_TTT: u32 = u32::MAX;

/// Why a write command or Data-Out is refused. Command errors end the
/// command with CHECK CONDITION; Data-Out errors are protocol errors
/// (Reject 0x04 / 0x09, and at ErrorRecoveryLevel 0 the session may drop).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("immediate data sent but ImmediateData=No")]
    ImmediateDataNotAllowed,
    #[error("{len} bytes of immediate data exceed the first burst of {limit}")]
    ImmediateTooLong { len: u32, limit: u32 },
    #[error("F bit clear (unsolicited data follows) but InitialR2T=Yes")]
    UnsolicitedNotAllowed,
    #[error("unsolicited Data-Out after the unsolicited burst ended")]
    UnexpectedUnsolicited,
    #[error("Data-Out with unknown Target Transfer Tag {0:#x}")]
    UnknownTtt(u32),
    #[error("Data-Out at offset {got}, expected {expected}")]
    Offset { expected: u32, got: u32 },
    #[error("Data-Out DataSN {got}, expected {expected}")]
    DataSn { expected: u32, got: u32 },
    #[error("Data-Out beyond the solicited or expected length")]
    Overrun,
    #[error("F bit set before the end of the sequence")]
    EarlyFinal,
}

/// An R2T to send; the session fills in LUN, ITT and the sequence numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct R2tRequest {
    pub ttt: u32,
    pub r2t_sn: u32,
    pub buffer_offset: u32,
    pub desired_len: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OpenR2t {
    ttt: u32,
    offset: u32,
    len: u32,
    received: u32,
    next_data_sn: u32,
}

/// A received Data-Out's place in the command's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub buffer_offset: u32,
    pub len: u32,
}

/// Bookkeeping of one write command's data.
#[derive(Debug, Clone)]
pub struct WriteTransfer {
    expected_len: u32,
    received: u32,
    unsolicited_end: u32,
    unsolicited_next: u32,
    unsolicited_data_sn: u32,
    next_r2t_offset: u32,
    next_r2t_sn: u32,
    max_burst: u32,
    max_outstanding: usize,
    open: VecDeque<OpenR2t>,
}

impl WriteTransfer {
    /// Starts a write of `expected_len` bytes whose command carried
    /// `immediate_len` bytes and the F bit `final_`.
    pub fn new(
        expected_len: u32,
        immediate_len: u32,
        final_: bool,
        params: &SessionParams,
    ) -> Result<Self, WriteError> {
        if immediate_len > 0 && !params.immediate_data {
            return Err(WriteError::ImmediateDataNotAllowed);
        }
        let first_burst = params.first_burst_length.min(expected_len);
        if immediate_len > first_burst {
            return Err(WriteError::ImmediateTooLong {
                len: immediate_len,
                limit: first_burst,
            });
        }
        let unsolicited_end = if final_ {
            immediate_len
        } else if params.initial_r2t {
            return Err(WriteError::UnsolicitedNotAllowed);
        } else {
            first_burst
        };
        Ok(Self {
            expected_len,
            received: immediate_len,
            unsolicited_end,
            unsolicited_next: immediate_len,
            unsolicited_data_sn: 0,
            next_r2t_offset: unsolicited_end,
            next_r2t_sn: 0,
            max_burst: params.max_burst_length.max(1),
            max_outstanding: usize::from(params.max_outstanding_r2t.max(1)),
            open: VecDeque::new(),
        })
    }

    /// Bytes received so far.
    pub fn received(&self) -> u32 {
        self.received
    }

    /// All expected data has arrived.
    pub fn is_complete(&self) -> bool {
        self.received == self.expected_len
    }

    /// The R2Ts that may be sent now; `next_ttt` hands out tags.
    pub fn next_r2ts(&mut self, mut next_ttt: impl FnMut() -> u32) -> Vec<R2tRequest> {
        let mut out = Vec::new();
        while self.open.len() < self.max_outstanding && self.next_r2t_offset < self.expected_len {
            let len = (self.expected_len - self.next_r2t_offset).min(self.max_burst);
            let r = R2tRequest {
                ttt: next_ttt(),
                r2t_sn: self.next_r2t_sn,
                buffer_offset: self.next_r2t_offset,
                desired_len: len,
            };
            self.open.push_back(OpenR2t {
                ttt: r.ttt,
                offset: r.buffer_offset,
                len,
                received: 0,
                next_data_sn: 0,
            });
            self.next_r2t_sn = self.next_r2t_sn.wrapping_add(1);
            self.next_r2t_offset += len;
            out.push(r);
        }
        out
    }

    /// Validates one Data-Out and records it.
    pub fn on_data_out(&mut self, d: &DataOut) -> Result<Accepted, WriteError> {
        let len = u32::try_from(d.data.len()).map_err(|_| WriteError::Overrun)?;
        let end = d
            .buffer_offset
            .checked_add(len)
            .ok_or(WriteError::Overrun)?;
        if d.ttt == UNSOLICITED_TTT {
            if self.unsolicited_next >= self.unsolicited_end {
                return Err(WriteError::UnexpectedUnsolicited);
            }
            check_seq(self.unsolicited_next, self.unsolicited_data_sn, d)?;
            if end > self.unsolicited_end {
                return Err(WriteError::Overrun);
            }
            if d.final_ && end != self.unsolicited_end {
                return Err(WriteError::EarlyFinal);
            }
            self.unsolicited_next = end;
            self.unsolicited_data_sn = self.unsolicited_data_sn.wrapping_add(1);
        } else {
            let at = self
                .open
                .iter()
                .position(|r| r.ttt == d.ttt)
                .ok_or(WriteError::UnknownTtt(d.ttt))?;
            let r = self.open.get_mut(at).ok_or(WriteError::UnknownTtt(d.ttt))?;
            let next = r.offset + r.received;
            check_seq(next, r.next_data_sn, d)?;
            if end > r.offset + r.len {
                return Err(WriteError::Overrun);
            }
            if d.final_ && end != r.offset + r.len {
                return Err(WriteError::EarlyFinal);
            }
            r.received += len;
            r.next_data_sn = r.next_data_sn.wrapping_add(1);
            if r.received == r.len {
                self.open.remove(at);
            }
        }
        self.received += len;
        Ok(Accepted {
            buffer_offset: d.buffer_offset,
            len,
        })
    }
}

fn check_seq(expected_offset: u32, expected_data_sn: u32, d: &DataOut) -> Result<(), WriteError> {
    if d.data_sn != expected_data_sn {
        return Err(WriteError::DataSn {
            expected: expected_data_sn,
            got: d.data_sn,
        });
    }
    if d.buffer_offset != expected_offset {
        return Err(WriteError::Offset {
            expected: expected_offset,
            got: d.buffer_offset,
        });
    }
    Ok(())
}

/// One Data-In PDU of a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataInSegment {
    pub buffer_offset: u32,
    pub len: u32,
    pub data_sn: u32,
    /// F: last PDU of a sequence (of at most MaxBurstLength bytes).
    pub final_: bool,
    /// Last PDU of the command: the place for the S bit and status.
    pub last: bool,
}

/// Splits `total` bytes of read data into Data-In PDUs.
pub fn data_in_plan(
    total: u32,
    max_segment: u32,
    max_burst: u32,
) -> impl Iterator<Item = DataInSegment> {
    let max_segment = max_segment.max(1);
    let max_burst = max_burst.max(1);
    let mut offset = 0u32;
    let mut data_sn = 0u32;
    std::iter::from_fn(move || {
        if offset >= total {
            return None;
        }
        // Room left in the current sequence, which starts every max_burst.
        let burst_left = max_burst - offset % max_burst;
        let len = (total - offset).min(max_segment).min(burst_left);
        let end = offset + len;
        let seg = DataInSegment {
            buffer_offset: offset,
            len,
            data_sn,
            final_: end == total || len == burst_left,
            last: end == total,
        };
        offset = end;
        data_sn = data_sn.wrapping_add(1);
        Some(seg)
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;

    fn params(
        initial_r2t: bool,
        immediate: bool,
        first: u32,
        burst: u32,
        r2ts: u16,
    ) -> SessionParams {
        SessionParams {
            initial_r2t,
            immediate_data: immediate,
            first_burst_length: first,
            max_burst_length: burst,
            max_outstanding_r2t: r2ts,
            ..SessionParams::default()
        }
    }

    fn dout(ttt: u32, data_sn: u32, offset: u32, len: usize, final_: bool) -> DataOut {
        DataOut {
            final_,
            lun: 0,
            itt: 1,
            ttt,
            exp_stat_sn: 0,
            data_sn,
            buffer_offset: offset,
            data: Bytes::from(vec![0u8; len]),
        }
    }

    fn counter() -> impl FnMut() -> u32 {
        let mut n = 0;
        move || {
            n += 1;
            n
        }
    }

    #[test]
    fn immediate_data_only_completes_without_r2t() {
        let p = params(true, true, 65536, 262144, 1);
        let mut w = WriteTransfer::new(4096, 4096, true, &p).unwrap();
        assert!(w.is_complete());
        assert!(w.next_r2ts(counter()).is_empty());
    }

    #[test]
    fn immediate_data_refused_when_not_negotiated() {
        let p = params(true, false, 65536, 262144, 1);
        assert_eq!(
            WriteTransfer::new(4096, 512, true, &p).unwrap_err(),
            WriteError::ImmediateDataNotAllowed
        );
    }

    #[test]
    fn immediate_data_beyond_first_burst_is_refused() {
        let p = params(true, true, 1024, 262144, 1);
        assert!(matches!(
            WriteTransfer::new(4096, 2048, true, &p),
            Err(WriteError::ImmediateTooLong {
                len: 2048,
                limit: 1024
            })
        ));
    }

    #[test]
    fn unsolicited_data_needs_initial_r2t_no() {
        let p = params(true, true, 65536, 262144, 1);
        assert_eq!(
            WriteTransfer::new(4096, 0, false, &p).unwrap_err(),
            WriteError::UnsolicitedNotAllowed
        );
    }

    #[test]
    fn r2ts_cover_the_rest_in_max_burst_pieces_up_to_max_outstanding() {
        let p = params(true, true, 65536, 4096, 2);
        let mut w = WriteTransfer::new(10_000, 1000, true, &p).unwrap();
        let r = w.next_r2ts(counter());
        assert_eq!(
            r,
            vec![
                R2tRequest {
                    ttt: 1,
                    r2t_sn: 0,
                    buffer_offset: 1000,
                    desired_len: 4096
                },
                R2tRequest {
                    ttt: 2,
                    r2t_sn: 1,
                    buffer_offset: 5096,
                    desired_len: 4096
                },
            ]
        );
        assert!(
            w.next_r2ts(counter()).is_empty(),
            "MaxOutstandingR2T reached"
        );
        w.on_data_out(&dout(1, 0, 1000, 2048, false)).unwrap();
        w.on_data_out(&dout(1, 1, 3048, 2048, true)).unwrap();
        let r = w.next_r2ts(|| 3);
        assert_eq!(
            r,
            vec![R2tRequest {
                ttt: 3,
                r2t_sn: 2,
                buffer_offset: 9192,
                desired_len: 808
            }]
        );
        w.on_data_out(&dout(2, 0, 5096, 4096, true)).unwrap();
        w.on_data_out(&dout(3, 0, 9192, 808, true)).unwrap();
        assert!(w.is_complete());
    }

    #[test]
    fn unsolicited_burst_then_r2t() {
        let p = params(false, true, 8192, 65536, 1);
        let mut w = WriteTransfer::new(20_000, 4096, false, &p).unwrap();
        w.on_data_out(&dout(UNSOLICITED_TTT, 0, 4096, 4096, true))
            .unwrap();
        assert_eq!(
            w.on_data_out(&dout(UNSOLICITED_TTT, 1, 8192, 10, false)),
            Err(WriteError::UnexpectedUnsolicited)
        );
        let r = w.next_r2ts(counter());
        assert_eq!(r[0].buffer_offset, 8192);
        assert_eq!(r[0].desired_len, 20_000 - 8192);
    }

    #[test]
    fn wrong_offset_data_sn_ttt_and_overrun_are_refused() {
        let p = params(true, true, 65536, 4096, 1);
        let mut w = WriteTransfer::new(4096, 0, true, &p).unwrap();
        w.next_r2ts(counter());
        assert_eq!(
            w.on_data_out(&dout(1, 0, 512, 512, false)),
            Err(WriteError::Offset {
                expected: 0,
                got: 512
            })
        );
        assert_eq!(
            w.on_data_out(&dout(1, 3, 0, 512, false)),
            Err(WriteError::DataSn {
                expected: 0,
                got: 3
            })
        );
        assert_eq!(
            w.on_data_out(&dout(9, 0, 0, 512, false)),
            Err(WriteError::UnknownTtt(9))
        );
        assert_eq!(
            w.on_data_out(&dout(1, 0, 0, 8192, false)),
            Err(WriteError::Overrun)
        );
        assert_eq!(
            w.on_data_out(&dout(1, 0, 0, 512, true)),
            Err(WriteError::EarlyFinal)
        );
        assert_eq!(w.received(), 0);
    }

    #[test]
    fn data_in_plan_respects_segment_and_burst() {
        let segs: Vec<_> = data_in_plan(10_000, 3000, 4096).collect();
        let lens: Vec<u32> = segs.iter().map(|s| s.len).collect();
        assert_eq!(lens, vec![3000, 1096, 3000, 1096, 1808]);
        let finals: Vec<bool> = segs.iter().map(|s| s.final_).collect();
        assert_eq!(finals, vec![false, true, false, true, true]);
        assert!(segs.last().unwrap().last);
        assert_eq!(
            segs.iter().map(|s| s.data_sn).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4]
        );
    }

    #[test]
    fn empty_read_has_no_data_in() {
        assert_eq!(data_in_plan(0, 8192, 65536).count(), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Model: an initiator that answers every R2T fully in segments of
        /// `seg` bytes always completes the write with exactly the expected
        /// bytes, in contiguous offsets.
        #[test]
        fn a_well_behaved_initiator_completes_every_write(
            total in 1u32..200_000,
            imm_frac in 0u32..=100,
            seg in 512u32..20_000,
            burst in 512u32..70_000,
            first in 512u32..70_000,
            r2ts in 1u16..4,
            initial_r2t in any::<bool>(),
            f_bit in any::<bool>(),
        ) {
            let p = params(initial_r2t, true, first, burst, r2ts);
            let first_burst = first.min(total);
            let imm = (first_burst * imm_frac / 100).min(seg);
            let f = f_bit || initial_r2t;
            let mut w = WriteTransfer::new(total, imm, f, &p).unwrap();
            let mut covered = imm;
            if !f {
                let mut sn = 0;
                let mut off = imm;
                while off < first_burst {
                    let len = (first_burst - off).min(seg);
                    w.on_data_out(&dout(UNSOLICITED_TTT, sn, off, len as usize, off + len == first_burst)).unwrap();
                    off += len;
                    sn += 1;
                }
                covered = first_burst;
            }
            let mut ttt = 0;
            let mut rounds = 0;
            while !w.is_complete() {
                let r2ts = w.next_r2ts(|| { ttt += 1; ttt });
                prop_assert!(!r2ts.is_empty());
                for r in r2ts {
                    prop_assert_eq!(r.buffer_offset, covered);
                    prop_assert!(r.desired_len <= burst);
                    let mut off = r.buffer_offset;
                    let end = off + r.desired_len;
                    let mut sn = 0;
                    while off < end {
                        let len = (end - off).min(seg);
                        w.on_data_out(&dout(r.ttt, sn, off, len as usize, off + len == end)).unwrap();
                        off += len;
                        sn += 1;
                    }
                    covered = end;
                }
                rounds += 1;
                prop_assert!(rounds < 10_000);
            }
            prop_assert_eq!(w.received(), total);
        }

        /// Model: segments tile [0, total) without gaps, respect both
        /// limits, and F marks exactly the burst ends.
        #[test]
        fn data_in_plan_tiles_the_buffer(total in 0u32..300_000, seg in 1u32..70_000, burst in 1u32..300_000) {
            let mut next = 0;
            let mut in_burst = 0;
            for (sn, s) in data_in_plan(total, seg, burst).enumerate() {
                prop_assert_eq!(s.buffer_offset, next);
                prop_assert_eq!(s.data_sn as usize, sn);
                prop_assert!(s.len >= 1 && s.len <= seg);
                in_burst += s.len;
                prop_assert!(in_burst <= burst);
                next += s.len;
                prop_assert_eq!(s.last, next == total);
                prop_assert_eq!(s.final_, in_burst == burst || next == total);
                if s.final_ {
                    in_burst = 0;
                }
            }
            prop_assert_eq!(next, total);
        }
    }
}
