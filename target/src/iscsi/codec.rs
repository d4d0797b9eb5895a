//! `tokio_util::codec` adapter over [`pdu`](super::pdu) for one connection.
//!
//! The codec starts in the login configuration (no digests, 8192-byte data
//! segments both ways, RFC 7143 §13.12). The login state machine hands the
//! negotiated configuration to [`IscsiCodec::arm_full_feature`]; it takes
//! effect in both directions right after the final Login Response (T=1,
//! NSG=3, status 0) has been encoded, because RFC 7143 §13.1 applies
//! negotiated digests "starting with the first PDU after the final Login
//! Response" — the initiator sends nothing before it has that response.
//!
//! Errors that leave the stream in sync (data digest, unknown opcode,
//! invalid field) are *items* (`Err(Rejected)`) so that the framed stream
//! goes on; only errors that desynchronise it end the stream.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use super::bhs::Bhs;
use super::limits::BHS_LEN;
use super::pdu::{self, Disposition, EncodeError, FrameConfig, Pdu, PduError, RejectReason};

/// A PDU that was consumed and must be answered with a Reject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("PDU rejected ({reason:?}): {source}")]
pub struct Rejected {
    pub reason: RejectReason,
    /// The rejected PDU's header, to be echoed in the Reject's data segment.
    pub header: Bhs,
    pub source: PduError,
}

/// Errors that end the connection.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("connection I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Header digest or length error: the next PDU cannot be found.
    #[error("unrecoverable PDU framing error: {0}")]
    Framing(PduError),
    #[error("cannot encode PDU: {0}")]
    Encode(#[from] EncodeError),
}

/// Receive and send configuration of one connection, both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FullFeatureConfig {
    /// What we accept: negotiated digests, our declared
    /// MaxRecvDataSegmentLength.
    pub rx: FrameConfig,
    /// What the initiator accepts: negotiated digests, its declared
    /// MaxRecvDataSegmentLength.
    pub tx: FrameConfig,
}

/// The connection's codec.
#[derive(Debug)]
pub struct IscsiCodec {
    rx: FrameConfig,
    tx: FrameConfig,
    armed: Option<FullFeatureConfig>,
}

impl Default for IscsiCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl IscsiCodec {
    /// A codec in the login configuration.
    pub fn new() -> Self {
        Self {
            rx: FrameConfig::login(),
            tx: FrameConfig::login(),
            armed: None,
        }
    }

    /// Switch to `cfg` once the final Login Response has been encoded.
    pub fn arm_full_feature(&mut self, cfg: FullFeatureConfig) {
        self.armed = Some(cfg);
    }

    /// The configuration PDUs are currently received with.
    pub fn rx_config(&self) -> FrameConfig {
        self.rx
    }

    /// The configuration PDUs are currently sent with.
    pub fn tx_config(&self) -> FrameConfig {
        self.tx
    }
}

/// The Login Response that ends the login phase successfully.
fn is_final_login_response(pdu: &Pdu) -> bool {
    matches!(pdu, Pdu::LoginResponse(r)
        if r.transit && r.nsg == 3 && r.status_class == 0)
}

impl Decoder for IscsiCodec {
    type Item = Result<Pdu, Rejected>;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, CodecError> {
        let decoded = pdu::decode(src, &self.rx);
        if src.len() < BHS_LEN {
            cstor_proto::reserve_read_ahead(src);
        }
        match decoded {
            Ok(Some(p)) => Ok(Some(Ok(p))),
            Ok(None) => Ok(None),
            Err(e) => match e.disposition() {
                Disposition::Close => Err(CodecError::Framing(e)),
                Disposition::Reject { reason, header } => Ok(Some(Err(Rejected {
                    reason,
                    header,
                    source: e,
                }))),
            },
        }
    }
}

impl Encoder<Pdu> for IscsiCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Pdu, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode(&item, dst)
    }
}

impl Encoder<&Pdu> for IscsiCodec {
    type Error = CodecError;

    fn encode(&mut self, item: &Pdu, dst: &mut BytesMut) -> Result<(), CodecError> {
        item.encode(dst, &self.tx)?;
        if is_final_login_response(item) {
            if let Some(cfg) = self.armed.take() {
                self.rx = cfg.rx;
                self.tx = cfg.tx;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::iscsi::limits::DIGEST_LEN;
    use crate::iscsi::pdu::{Digests, LoginResponse, NopOut};

    const CRC: Digests = Digests {
        header: true,
        data: true,
    };

    fn full(max: u32) -> FullFeatureConfig {
        let c = FrameConfig {
            digests: CRC,
            max_data_segment_bytes: max,
        };
        FullFeatureConfig { rx: c, tx: c }
    }

    fn login_rsp(transit: bool, nsg: u8, class: u8) -> Pdu {
        Pdu::LoginResponse(LoginResponse {
            transit,
            continue_: false,
            csg: 1,
            nsg,
            version_max: 0,
            version_active: 0,
            isid: [0; 6],
            tsih: 1,
            itt: 1,
            stat_sn: 1,
            exp_cmd_sn: 1,
            max_cmd_sn: 1,
            status_class: class,
            status_detail: 0,
            data: Bytes::new(),
        })
    }

    fn ping(data: &'static [u8]) -> Pdu {
        Pdu::NopOut(NopOut {
            immediate: true,
            lun: 0,
            itt: 1,
            ttt: u32::MAX,
            cmd_sn: 1,
            exp_stat_sn: 1,
            data: Bytes::from_static(data),
        })
    }

    #[test]
    fn digests_switch_on_after_the_final_login_response_is_encoded() {
        let mut codec = IscsiCodec::new();
        codec.arm_full_feature(full(65536));
        let mut out = BytesMut::new();
        // A non-final login response keeps the login configuration.
        Encoder::<&Pdu>::encode(&mut codec, &login_rsp(false, 0, 0), &mut out).unwrap();
        assert_eq!(out.len(), BHS_LEN);
        out.clear();
        // The final one is itself sent without digests...
        Encoder::<&Pdu>::encode(&mut codec, &login_rsp(true, 3, 0), &mut out).unwrap();
        assert_eq!(out.len(), BHS_LEN);
        out.clear();
        // ...and the next PDU carries both digests.
        Encoder::<&Pdu>::encode(&mut codec, &ping(b"abcd"), &mut out).unwrap();
        assert_eq!(out.len(), BHS_LEN + DIGEST_LEN + 4 + DIGEST_LEN);
        assert_eq!(codec.rx_config().digests, CRC);
        assert_eq!(codec.rx_config().max_data_segment_bytes, 65536);
    }

    #[test]
    fn a_failed_login_response_does_not_switch() {
        let mut codec = IscsiCodec::new();
        codec.arm_full_feature(full(65536));
        let mut out = BytesMut::new();
        Encoder::<&Pdu>::encode(&mut codec, &login_rsp(true, 3, 2), &mut out).unwrap();
        assert_eq!(codec.tx_config(), FrameConfig::login());
    }

    #[test]
    fn data_digest_error_is_an_item_and_the_stream_continues() {
        let mut codec = IscsiCodec::new();
        codec.arm_full_feature(full(65536));
        Encoder::<&Pdu>::encode(&mut codec, &login_rsp(true, 3, 0), &mut BytesMut::new()).unwrap();
        let mut wire = BytesMut::new();
        Encoder::<&Pdu>::encode(&mut codec, &ping(b"abcd"), &mut wire).unwrap();
        let last = wire.len() - 1;
        wire[last] ^= 0xff;
        Encoder::<&Pdu>::encode(&mut codec, &ping(b"ok"), &mut wire).unwrap();
        let first = codec.decode(&mut wire).unwrap().unwrap();
        let rejected = first.unwrap_err();
        assert_eq!(rejected.reason, RejectReason::DataDigestError);
        assert_eq!(rejected.header.itt(), 1);
        assert_eq!(codec.decode(&mut wire).unwrap().unwrap(), Ok(ping(b"ok")));
    }

    #[test]
    fn header_digest_error_ends_the_stream() {
        let mut codec = IscsiCodec::new();
        codec.arm_full_feature(full(65536));
        Encoder::<&Pdu>::encode(&mut codec, &login_rsp(true, 3, 0), &mut BytesMut::new()).unwrap();
        let mut wire = BytesMut::new();
        Encoder::<&Pdu>::encode(&mut codec, &ping(b""), &mut wire).unwrap();
        wire[BHS_LEN] ^= 1;
        assert!(matches!(
            codec.decode(&mut wire),
            Err(CodecError::Framing(PduError::HeaderDigest { .. }))
        ));
    }

    #[test]
    fn login_phase_refuses_segments_over_8192_bytes() {
        let mut codec = IscsiCodec::new();
        let mut wire = BytesMut::new();
        let big = Pdu::NopOut(NopOut {
            immediate: true,
            lun: 0,
            itt: 1,
            ttt: u32::MAX,
            cmd_sn: 1,
            exp_stat_sn: 1,
            data: Bytes::from(vec![0u8; 8193]),
        });
        big.encode(
            &mut wire,
            &FrameConfig {
                digests: Digests::default(),
                max_data_segment_bytes: 1 << 20,
            },
        )
        .unwrap();
        assert!(matches!(
            codec.decode(&mut wire),
            Err(CodecError::Framing(PduError::DataSegmentTooLong {
                len: 8193,
                ..
            }))
        ));
    }
}
