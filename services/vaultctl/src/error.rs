//! What can go wrong, how it is printed, and the exit code each kind gets.

use tonic::Status;

pub use vault_client::{EXIT_FAILED, EXIT_USAGE, code_name, status_text};

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

impl From<vault_client::ConfigError> for Error {
    fn from(err: vault_client::ConfigError) -> Self {
        Self::Config(err.0)
    }
}

impl From<vault_proto::audit::WireError> for Error {
    fn from(err: vault_proto::audit::WireError) -> Self {
        Self::Protocol(err.to_string())
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        Self::Rpc(status)
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

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
}
