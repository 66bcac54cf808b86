//! What every client of the vault shares (`vaultctl`, `loadtest`): where the vault is and who
//! to be ([`ConnectionArgs`] on a command line, [`Connection`] in code), the mutual TLS channel
//! ([`channel`]), and how a failed call is named ([`code_name`], [`status_text`]) and exits
//! ([`EXIT_FAILED`], [`EXIT_USAGE`]). A client crate: it never links the domain, the store or
//! the KEKs.

mod args;
mod connect;
mod status;

pub use args::{ConnectionArgs, DEFAULT_ADDR};
pub use connect::{Connection, TlsFiles, channel, endpoint};
pub use status::{EXIT_FAILED, EXIT_USAGE, code_name, error_chain, status_text};

/// A client configuration that cannot work, found before any call: no identity, an
/// unreadable or invalid certificate or key file, a malformed address. Its text says which
/// option or file, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);
