//! The card vault's domain: types, policy, use cases and the ports they need.
//!
//! Invariants this crate keeps:
//! - It does no I/O and knows nothing of gRPC, SQL, TLS or configuration files. Adapters
//!   implement [`ports::TokenStore`] and [`ports::KeyEncryptionKey`].
//! - No type here prints a PAN: [`pan::Pan`] and [`tokens::TokenizeCommand`] have redacted
//!   `Debug`, and no error message carries an input value.
//! - Every use case in [`vault::Vault`] writes exactly one audit record, and fails closed if it
//!   cannot; a call a rate limit refuses is recorded once per caller, operation and interval,
//!   the others counted into a record ([`limits::RefusalLog`]).

pub mod admin;
pub mod audit;
mod audited;
pub mod clock;
mod deks;
pub mod error;
pub mod expiry;
pub mod forward;
pub mod guard;
pub mod ids;
pub mod invalid;
pub mod key_sets;
pub mod keyring;
pub mod lifecycle;
pub mod limits;
pub mod pan;
pub mod policy;
pub mod ports;
pub mod reason;
pub mod spans;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;
pub mod token;
pub mod tokens;
pub mod trail;
pub mod truncation;
pub mod vault;

pub use error::{InvalidArgument, KekError, StoreError, Throttle, VaultError};
pub use vault::Vault;
