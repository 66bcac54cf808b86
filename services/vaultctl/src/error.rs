//! What can go wrong, how it is printed, and the exit code each kind gets.

use tonic::{Code, Status};

/// Exit code for a call the vault refused or failed, or a job that stopped before it finished.
pub const EXIT_FAILED: u8 = 1;
/// Exit code for usage and configuration errors (clap uses the same for bad arguments).
pub const EXIT_USAGE: u8 = 2;

/// A failed `vaultctl` run. `Display` gives the text after `vaultctl: ` on standard error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration found before any call: no identity, an unreadable or invalid
    /// certificate or key file, a malformed address.
    #[error("{0}")]
    Config(String),
    /// The vault (or the transport to it) answered the call with an error status.
    #[error("{}", status_text(.0))]
    Rpc(Status),
    /// A re-encryption or rewrap stream failed after it had started.
    #[error(
        "{} (the job stopped after {done} items; run the same command again to resume)",
        status_text(.status)
    )]
    JobFailed {
        /// The error status the stream ended with.
        status: Status,
        /// Items moved by this run before it stopped.
        done: u64,
    },
    /// A re-encryption or rewrap stream ended without its `finished = true` message.
    #[error("job interrupted after {done} items; run the same command again to resume")]
    Interrupted {
        /// Items moved by this run before it stopped.
        done: u64,
    },
    /// The vault's answer breaks the contract in `admin.proto` (e.g. a missing field).
    #[error("unexpected answer from the vault: {0}")]
    Protocol(String),
}

impl Error {
    /// The process exit code for this error: [`EXIT_USAGE`] for configuration errors,
    /// [`EXIT_FAILED`] for everything that happened on or after the call.
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) => EXIT_USAGE,
            Self::Rpc(_)
            | Self::JobFailed { .. }
            | Self::Interrupted { .. }
            | Self::Protocol(_) => EXIT_FAILED,
        }
    }

    /// The gRPC status behind this error, if there is one.
    #[must_use]
    pub fn status(&self) -> Option<&Status> {
        match self {
            Self::Rpc(status) | Self::JobFailed { status, .. } => Some(status),
            Self::Config(_) | Self::Interrupted { .. } | Self::Protocol(_) => None,
        }
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        Self::Rpc(status)
    }
}

/// `CODE: message`, followed by the causes behind a transport failure (tonic keeps a TLS alert,
/// for one, in the status's source rather than its message).
#[must_use]
pub fn status_text(status: &Status) -> String {
    let mut text = format!("{}: {}", code_name(status.code()), status.message());
    let mut source = std::error::Error::source(status);
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
    fn a_refused_call_prints_its_code_and_message_and_exits_one() {
        let err = Error::from(Status::permission_denied(
            "keys.admin needed for merchant m-1",
        ));
        assert_eq!(
            err.to_string(),
            "PERMISSION_DENIED: keys.admin needed for merchant m-1"
        );
        assert_eq!(err.exit_code(), EXIT_FAILED);
        assert_eq!(err.status().map(Status::code), Some(Code::PermissionDenied));
    }

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
    }

    #[test]
    fn a_stopped_job_says_how_to_resume() {
        let err = Error::Interrupted { done: 40 };
        assert_eq!(
            err.to_string(),
            "job interrupted after 40 items; run the same command again to resume"
        );
        assert_eq!(err.exit_code(), EXIT_FAILED);
        let err = Error::JobFailed {
            status: Status::unavailable("KEK unavailable"),
            done: 7,
        };
        assert_eq!(
            err.to_string(),
            "UNAVAILABLE: KEK unavailable (the job stopped after 7 items; run the same command \
             again to resume)"
        );
        assert_eq!(err.exit_code(), EXIT_FAILED);
    }

    #[test]
    fn configuration_errors_exit_two() {
        assert_eq!(Error::Config("no".into()).exit_code(), EXIT_USAGE);
        assert_eq!(Error::Protocol("no".into()).exit_code(), EXIT_FAILED);
    }

    #[test]
    fn code_names_are_the_canonical_ones() {
        assert_eq!(code_name(Code::FailedPrecondition), "FAILED_PRECONDITION");
        assert_eq!(code_name(Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
        assert_eq!(code_name(Code::Unauthenticated), "UNAUTHENTICATED");
    }
}
