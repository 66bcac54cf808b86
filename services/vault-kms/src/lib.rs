//! Key-encryption-key backends. Each implements `vault_core::ports::KeyEncryptionKey`.
//!
//! Today there is one: [`DangerLocalFileKek`], a key in a local file for the embedded
//! development default. It is not an HSM, and its name says so. HSM (PKCS#11) and
//! Vault/OpenBao Transit backends come with the key-management work.

mod local_file;

pub use local_file::{DangerLocalFileKek, LocalFileError};
