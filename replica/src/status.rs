//! Engine errors as the protocol and the management API report them: one
//! engine kind, one protocol status, one gRPC code (no guessing per call).

use cstor_engine::{Error, ErrorKind};
use cstor_proto::Status;

/// The protocol status for an engine error.
pub fn proto_status(err: &Error) -> Status {
    match err.kind() {
        ErrorKind::NotFound => Status::NotFound,
        ErrorKind::AlreadyExists => Status::AlreadyExists,
        ErrorKind::OutOfRange => Status::OutOfRange,
        ErrorKind::NoSpace => Status::NoSpace,
        ErrorKind::InvalidArgument => Status::BadRequest,
        ErrorKind::Poisoned => Status::VolumePoisoned,
        ErrorKind::Io | ErrorKind::Corrupt => Status::IoError,
        // Bad blocks on this copy, not a failed replica: the reply to a
        // read names them (`session::reply::checksum_reply`).
        ErrorKind::Checksum => Status::ChecksumError,
        ErrorKind::Conflict | ErrorKind::Closed => Status::Busy,
    }
}

/// The gRPC status for an engine error.
pub fn grpc_status(err: &Error) -> tonic::Status {
    let msg = err.to_string();
    match err.kind() {
        ErrorKind::NotFound => tonic::Status::not_found(msg),
        ErrorKind::AlreadyExists => tonic::Status::already_exists(msg),
        ErrorKind::OutOfRange | ErrorKind::InvalidArgument => tonic::Status::invalid_argument(msg),
        ErrorKind::NoSpace => tonic::Status::resource_exhausted(msg),
        ErrorKind::Poisoned | ErrorKind::Conflict => tonic::Status::failed_precondition(msg),
        ErrorKind::Io | ErrorKind::Corrupt => tonic::Status::internal(msg),
        ErrorKind::Checksum => tonic::Status::data_loss(msg),
        ErrorKind::Closed => tonic::Status::unavailable(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_engine_kind_has_a_distinct_meaning_on_the_wire() {
        let kinds = [
            (ErrorKind::NotFound, Status::NotFound, tonic::Code::NotFound),
            (
                ErrorKind::AlreadyExists,
                Status::AlreadyExists,
                tonic::Code::AlreadyExists,
            ),
            (
                ErrorKind::OutOfRange,
                Status::OutOfRange,
                tonic::Code::InvalidArgument,
            ),
            (
                ErrorKind::NoSpace,
                Status::NoSpace,
                tonic::Code::ResourceExhausted,
            ),
            (
                ErrorKind::InvalidArgument,
                Status::BadRequest,
                tonic::Code::InvalidArgument,
            ),
            (
                ErrorKind::Poisoned,
                Status::VolumePoisoned,
                tonic::Code::FailedPrecondition,
            ),
            (ErrorKind::Io, Status::IoError, tonic::Code::Internal),
            (ErrorKind::Corrupt, Status::IoError, tonic::Code::Internal),
            (
                ErrorKind::Checksum,
                Status::ChecksumError,
                tonic::Code::DataLoss,
            ),
            (
                ErrorKind::Conflict,
                Status::Busy,
                tonic::Code::FailedPrecondition,
            ),
            (ErrorKind::Closed, Status::Busy, tonic::Code::Unavailable),
        ];
        for (kind, status, code) in kinds {
            let err = Error::new(kind, "volume v1");
            assert_eq!(proto_status(&err), status, "{kind:?}");
            let grpc = grpc_status(&err);
            assert_eq!(grpc.code(), code, "{kind:?}");
            assert!(grpc.message().contains("volume v1"));
        }
    }
}
