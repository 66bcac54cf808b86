//! Why the Transit KEK could not be opened.

use std::path::PathBuf;

/// Why the Transit KEK could not be opened. Messages name the address, files, mount and key,
/// never a token, secret id or key material.
#[derive(Debug, thiserror::Error)]
pub enum TransitError {
    /// The settings are unusable (address not https, bad mount or key name, zero timeout).
    #[error("transit settings: {0}")]
    Settings(String),
    /// The CA file could not be read or holds no certificate.
    #[error("transit CA certificate {path}: {detail}")]
    Ca {
        /// The CA file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A credential could not be read from its file or environment variable.
    #[error("transit {what}: {detail}")]
    Credential {
        /// Which credential.
        what: &'static str,
        /// What failed (names the source, never the value).
        detail: String,
    },
    /// AppRole login was refused or failed.
    #[error("transit {address}: AppRole login failed: {detail}")]
    Login {
        /// The server.
        address: String,
        /// The server's answer.
        detail: String,
    },
    /// The server could not be used: unreachable, sealed, or it refused the request.
    #[error("{0}")]
    Unavailable(String),
    /// The key is missing or is not a non-exportable AES-256-GCM key.
    #[error("transit key {mount}/{key}: {detail}")]
    Key {
        /// The mount.
        mount: String,
        /// The key name.
        key: String,
        /// What is wrong.
        detail: String,
    },
}
