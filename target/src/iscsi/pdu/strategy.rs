//! Proptest strategies producing every PDU type with values that encode and
//! decode back to themselves (reserved combinations, such as a Data-In
//! residual without the S bit, are never generated).

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;

use super::*;

fn data(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn residual() -> impl Strategy<Value = Residual> {
    prop_oneof![
        Just(Residual::None),
        any::<u32>().prop_map(Residual::Underflow),
        any::<u32>().prop_map(Residual::Overflow),
    ]
}

fn attr() -> impl Strategy<Value = TaskAttr> {
    prop_oneof![
        Just(TaskAttr::Untagged),
        Just(TaskAttr::Simple),
        Just(TaskAttr::Ordered),
        Just(TaskAttr::HeadOfQueue),
        Just(TaskAttr::Aca),
    ]
}

fn nop_out() -> impl Strategy<Value = Pdu> {
    (any::<(bool, u64, u32, u32, u32, u32)>(), data(64)).prop_map(
        |((immediate, lun, itt, ttt, cmd_sn, exp_stat_sn), data)| {
            Pdu::NopOut(NopOut {
                immediate,
                lun,
                itt,
                ttt,
                cmd_sn,
                exp_stat_sn,
                data,
            })
        },
    )
}

fn scsi_command() -> impl Strategy<Value = Pdu> {
    (
        any::<(bool, bool, bool, bool, u64, u32, u32, u32, u32)>(),
        attr(),
        vec(any::<u8>(), 16..64),
        any::<Option<u32>>(),
        data(64),
    )
        .prop_map(
            |(
                (immediate, final_, read, write, lun, itt, edtl, cmd_sn, exp_stat_sn),
                attr,
                cdb,
                bidi_read_len,
                data,
            )| {
                Pdu::ScsiCommand(ScsiCommand {
                    immediate,
                    final_,
                    read,
                    write,
                    attr,
                    lun,
                    itt,
                    expected_data_len: edtl,
                    cmd_sn,
                    exp_stat_sn,
                    cdb: Bytes::from(cdb),
                    bidi_read_len,
                    data,
                })
            },
        )
}

fn task_mgmt_request() -> impl Strategy<Value = Pdu> {
    (any::<(bool, u8, u64, u32, u32, u32, u32, u32, u32)>()).prop_map(
        |(immediate, f, lun, itt, rtt, cmd_sn, exp_stat_sn, ref_cmd_sn, exp_data_sn)| {
            Pdu::TaskMgmtRequest(TaskMgmtRequest {
                immediate,
                function: TmfFunction::from_code(f & 0x7f),
                lun,
                itt,
                referenced_task_tag: rtt,
                cmd_sn,
                exp_stat_sn,
                ref_cmd_sn,
                exp_data_sn,
            })
        },
    )
}

fn login_request() -> impl Strategy<Value = Pdu> {
    (
        any::<(bool, u8, u8, u8, u8, [u8; 6], u16, u32, u16, u32)>(),
        any::<(bool, u32)>(),
        data(64),
    )
        .prop_map(
            |((transit, csg, nsg, vmax, vmin, isid, tsih, itt, cid, cmd_sn), (c, esn), data)| {
                Pdu::LoginRequest(LoginRequest {
                    transit,
                    continue_: c && !transit,
                    csg: csg & 3,
                    nsg: nsg & 3,
                    version_max: vmax,
                    version_min: vmin,
                    isid,
                    tsih,
                    itt,
                    cid,
                    cmd_sn,
                    exp_stat_sn: esn,
                    data,
                })
            },
        )
}

fn text_request() -> impl Strategy<Value = Pdu> {
    (any::<(bool, bool, u64, u32, u32, u32, u32)>(), data(64)).prop_map(
        |((immediate, final_, lun, itt, ttt, cmd_sn, exp_stat_sn), data)| {
            Pdu::TextRequest(TextRequest {
                immediate,
                final_,
                continue_: !final_,
                lun,
                itt,
                ttt,
                cmd_sn,
                exp_stat_sn,
                data,
            })
        },
    )
}

fn data_out() -> impl Strategy<Value = Pdu> {
    (any::<(bool, u64, u32, u32, u32, u32, u32)>(), data(64)).prop_map(
        |((final_, lun, itt, ttt, exp_stat_sn, data_sn, buffer_offset), data)| {
            Pdu::DataOut(DataOut {
                final_,
                lun,
                itt,
                ttt,
                exp_stat_sn,
                data_sn,
                buffer_offset,
                data,
            })
        },
    )
}

fn logout_request() -> impl Strategy<Value = Pdu> {
    any::<(bool, u8, u32, u16, u32, u32)>().prop_map(
        |(immediate, reason, itt, cid, cmd_sn, exp_stat_sn)| {
            Pdu::LogoutRequest(LogoutRequest {
                immediate,
                reason: reason & 0x7f,
                itt,
                cid,
                cmd_sn,
                exp_stat_sn,
            })
        },
    )
}

fn snack_request() -> impl Strategy<Value = Pdu> {
    any::<(u8, u64, u32, u32, u32, u32, u32)>().prop_map(
        |(t, lun, itt, ttt, exp_stat_sn, beg_run, run_length)| {
            Pdu::SnackRequest(SnackRequest {
                snack_type: t & 0x0f,
                lun,
                itt,
                ttt,
                exp_stat_sn,
                beg_run,
                run_length,
            })
        },
    )
}

/// Any PDU an initiator sends.
pub fn initiator_pdu() -> impl Strategy<Value = Pdu> {
    prop_oneof![
        nop_out(),
        scsi_command(),
        task_mgmt_request(),
        login_request(),
        text_request(),
        data_out(),
        logout_request(),
        snack_request(),
    ]
}

fn nop_in() -> impl Strategy<Value = Pdu> {
    (any::<(u64, u32, u32, u32, u32, u32)>(), data(64)).prop_map(
        |((lun, itt, ttt, stat_sn, exp_cmd_sn, max_cmd_sn), data)| {
            Pdu::NopIn(NopIn {
                lun,
                itt,
                ttt,
                stat_sn,
                exp_cmd_sn,
                max_cmd_sn,
                data,
            })
        },
    )
}

fn scsi_response() -> impl Strategy<Value = Pdu> {
    (
        any::<(u8, u8, u32, u32, u32, u32, u32, u32)>(),
        residual(),
        residual(),
        data(64),
    )
        .prop_map(
            |((response, status, itt, snack, ssn, ecs, mcs, eds), r, br, data)| {
                Pdu::ScsiResponse(ScsiResponse {
                    response,
                    status,
                    residual: r,
                    bidi_read_residual: br,
                    itt,
                    snack_tag: snack,
                    stat_sn: ssn,
                    exp_cmd_sn: ecs,
                    max_cmd_sn: mcs,
                    exp_data_sn: eds,
                    data,
                })
            },
        )
}

fn task_mgmt_response() -> impl Strategy<Value = Pdu> {
    any::<(u8, u32, u32, u32, u32)>().prop_map(|(response, itt, ssn, ecs, mcs)| {
        Pdu::TaskMgmtResponse(TaskMgmtResponse {
            response,
            itt,
            stat_sn: ssn,
            exp_cmd_sn: ecs,
            max_cmd_sn: mcs,
        })
    })
}

fn login_response() -> impl Strategy<Value = Pdu> {
    (
        any::<(bool, u8, u8, u8, u8, [u8; 6], u16, u32, u32, u32)>(),
        any::<(u32, bool, u8, u8)>(),
        data(64),
    )
        .prop_map(
            |((t, csg, nsg, vmax, vact, isid, tsih, itt, ssn, ecs), (mcs, c, cls, det), data)| {
                Pdu::LoginResponse(LoginResponse {
                    transit: t,
                    continue_: c && !t,
                    csg: csg & 3,
                    nsg: nsg & 3,
                    version_max: vmax,
                    version_active: vact,
                    isid,
                    tsih,
                    itt,
                    stat_sn: ssn,
                    exp_cmd_sn: ecs,
                    max_cmd_sn: mcs,
                    status_class: cls,
                    status_detail: det,
                    data,
                })
            },
        )
}

fn text_response() -> impl Strategy<Value = Pdu> {
    (any::<(bool, u64, u32, u32, u32, u32, u32)>(), data(64)).prop_map(
        |((final_, lun, itt, ttt, ssn, ecs, mcs), data)| {
            Pdu::TextResponse(TextResponse {
                final_,
                continue_: !final_,
                lun,
                itt,
                ttt,
                stat_sn: ssn,
                exp_cmd_sn: ecs,
                max_cmd_sn: mcs,
                data,
            })
        },
    )
}

fn data_in() -> impl Strategy<Value = Pdu> {
    (
        any::<(bool, bool, Option<u8>, u64, u32, u32, u32, u32, u32, u32)>(),
        any::<u32>(),
        residual(),
        data(64),
    )
        .prop_map(
            |((final_, ack, status, lun, itt, ttt, ssn, ecs, mcs, dsn), off, r, data)| {
                Pdu::DataIn(DataIn {
                    final_: final_ || status.is_some(),
                    ack,
                    status,
                    residual: if status.is_some() { r } else { Residual::None },
                    lun,
                    itt,
                    ttt,
                    stat_sn: ssn,
                    exp_cmd_sn: ecs,
                    max_cmd_sn: mcs,
                    data_sn: dsn,
                    buffer_offset: off,
                    data,
                })
            },
        )
}

fn logout_response() -> impl Strategy<Value = Pdu> {
    any::<(u8, u32, u32, u32, u32, u16, u16)>().prop_map(
        |(response, itt, ssn, ecs, mcs, time2wait, time2retain)| {
            Pdu::LogoutResponse(LogoutResponse {
                response,
                itt,
                stat_sn: ssn,
                exp_cmd_sn: ecs,
                max_cmd_sn: mcs,
                time2wait,
                time2retain,
            })
        },
    )
}

fn r2t() -> impl Strategy<Value = Pdu> {
    any::<(u64, u32, u32, u32, u32, u32, u32, u32, u32)>().prop_map(
        |(lun, itt, ttt, ssn, ecs, mcs, r2t_sn, buffer_offset, desired_len)| {
            Pdu::R2t(R2t {
                lun,
                itt,
                ttt,
                stat_sn: ssn,
                exp_cmd_sn: ecs,
                max_cmd_sn: mcs,
                r2t_sn,
                buffer_offset,
                desired_len,
            })
        },
    )
}

fn async_message() -> impl Strategy<Value = Pdu> {
    (
        any::<(u64, u32, u32, u32, u8, u8, u16, u16, u16)>(),
        data(64),
    )
        .prop_map(|((lun, ssn, ecs, mcs, event, vcode, p1, p2, p3), data)| {
            Pdu::AsyncMessage(AsyncMessage {
                lun,
                stat_sn: ssn,
                exp_cmd_sn: ecs,
                max_cmd_sn: mcs,
                event,
                vcode,
                parameter1: p1,
                parameter2: p2,
                parameter3: p3,
                data,
            })
        })
}

fn reject() -> impl Strategy<Value = Pdu> {
    (any::<(u8, u32, u32, u32, u32)>(), vec(any::<u8>(), 48..=48)).prop_map(
        |((reason, ssn, ecs, mcs, dsn), header)| {
            Pdu::Reject(Reject {
                reason,
                stat_sn: ssn,
                exp_cmd_sn: ecs,
                max_cmd_sn: mcs,
                data_sn: dsn,
                header: Bytes::from(header),
            })
        },
    )
}

/// Any PDU a target sends.
pub fn target_pdu() -> impl Strategy<Value = Pdu> {
    prop_oneof![
        nop_in(),
        scsi_response(),
        task_mgmt_response(),
        login_response(),
        text_response(),
        data_in(),
        logout_response(),
        r2t(),
        async_message(),
        reject(),
    ]
}

/// Any PDU.
pub fn any_pdu() -> impl Strategy<Value = Pdu> {
    prop_oneof![initiator_pdu(), target_pdu()]
}

/// Any digest setting.
pub fn digests() -> impl Strategy<Value = Digests> {
    any::<(bool, bool)>().prop_map(|(header, data)| Digests { header, data })
}
