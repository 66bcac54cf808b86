//! Key-encryption-key backends. Each implements `vault_core::ports::KeyEncryptionKey`.
//!
//! - [`Pkcs11Kek`]: a non-extractable AES-256 key in an HSM (PKCS#11; SoftHSM2 in tests).
//! - [`DangerLocalFileKek`]: a key in a local file for the embedded development default. It is
//!   not an HSM, and its name says so.

mod local_file;
mod pkcs11;

pub use local_file::{DangerLocalFileKek, LocalFileError};
pub use pkcs11::{Pkcs11Error, Pkcs11Kek, Pkcs11Settings};
