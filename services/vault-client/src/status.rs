//! How a failed call is named and how a client exits: the canonical gRPC code names, a
//! status with the transport causes behind it, and the exit codes every client shares.

use tonic::{Code, Status};

/// Exit code for a call the vault refused or failed, or a job or check that did not succeed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code for usage and configuration errors (clap uses the same for bad arguments).
pub const EXIT_USAGE: u8 = 2;

/// `error` and each of its sources, `: `-separated, every message once (tonic keeps a TLS
/// alert, for one, in a source rather than the message). The clients' one chain printer.
#[must_use]
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// `CODE: message`, followed by the causes behind a transport failure (tonic keeps a TLS alert,
/// for one, in the status's source rather than its message).
#[must_use]
pub fn status_text(status: &Status) -> String {
    let head = format!("{}: {}", code_name(status.code()), status.message());
    match std::error::Error::source(status) {
        Some(cause) => {
            let causes = error_chain(cause);
            if head.contains(&causes) {
                head
            } else {
                format!("{head}: {causes}")
            }
        }
        None => head,
    }
}

/// The canonical gRPC name of `code`, as in the gRPC status code documentation
/// (`PERMISSION_DENIED`, `FAILED_PRECONDITION`, ...).
#[must_use]
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_causes_follow_the_message_once() {
        let io = std::io::Error::other("received fatal alert: UnknownCA");
        let status = Status::from_error(Box::new(io));
        let text = status_text(&status);
        assert!(text.starts_with("UNKNOWN: "), "{text}");
        assert_eq!(
            text.matches("received fatal alert: UnknownCA").count(),
            1,
            "{text}"
        );
        let plain = Status::permission_denied("keys.admin needed");
        assert_eq!(status_text(&plain), "PERMISSION_DENIED: keys.admin needed");
    }

    #[test]
    fn code_names_are_the_canonical_ones() {
        assert_eq!(code_name(Code::FailedPrecondition), "FAILED_PRECONDITION");
        assert_eq!(code_name(Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
        assert_eq!(code_name(Code::Unauthenticated), "UNAUTHENTICATED");
    }
}
