//! Key-encryption-key backends. Each implements `vault_core::ports::KeyEncryptionKey`.
//!
//! - [`Pkcs11Kek`]: a non-extractable AES-256 key in an HSM (PKCS#11; SoftHSM2 in tests).
//! - [`TransitKek`]: an AES-256-GCM key in a HashiCorp Vault / OpenBao Transit engine.
//! - [`DangerLocalFileKek`]: a key in a local file for the embedded development default. It is
//!   not an HSM, and its name says so.
//!
//! [`SecretSource`] is where a PIN, password, token or AppRole id comes from (a private file or
//! an environment variable), with the one rule for reading it that every backend and the server
//! share.

mod local_file;
mod pkcs11;
mod secret;
#[cfg(feature = "testing")]
pub mod testing;
mod transit;

pub use local_file::{DangerLocalFileKek, LocalFileError};
pub use pkcs11::{Pkcs11Error, Pkcs11Kek, Pkcs11Settings};
pub use secret::{SecretError, SecretFileError, SecretSource, check_private};
pub use transit::{
    DEFAULT_APPROLE_MOUNT, DEFAULT_MOUNT, DEFAULT_TIMEOUT, KEY_TYPE, TransitAuth, TransitError,
    TransitKek, TransitSettings,
};
