//! What can stop a run before it produces a report, and the exit code each kind gets.

use vault_client::{EXIT_FAILED, EXIT_USAGE};

/// A run or check that could not produce a report. Errors of single requests are not this:
/// they are counted in the [`Report`](crate::Report).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad options or files found before any request: unreadable certificates or keys, a
    /// malformed address, a record file that cannot be opened or parsed.
    #[error("{0}")]
    Config(String),
    /// The untimed setup (tokenizing the pool of the `detokenize` scenario) failed.
    #[error("setup failed: {0}")]
    Setup(String),
    /// Writing the record file or the JSON report failed during or after the run.
    #[error("{0}")]
    Output(String),
    /// A task of the run failed in a way that is a bug (it panicked or was cancelled).
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The process exit code: [`EXIT_USAGE`] for configuration errors,
    /// [`EXIT_FAILED`] for everything that happened once requests were made.
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) => EXIT_USAGE,
            Self::Setup(_) | Self::Output(_) | Self::Internal(_) => EXIT_FAILED,
        }
    }
}

impl From<vault_client::ConfigError> for Error {
    fn from(err: vault_client::ConfigError) -> Self {
        Self::Config(err.0)
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(err: tokio::task::JoinError) -> Self {
        Self::Internal(format!("a load task stopped: {err}"))
    }
}
