//! The development KEK: 32 random bytes in a local file (mode 0600). Anyone who can read the
//! file can unwrap every DEK, so it is for the embedded default only; production uses an HSM or
//! Transit.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use vault_core::KekError;
use vault_core::ports::{KeyContext, KeyEncryptionKey, Wrapping};
use vault_crypto::{AeadKey, FingerprintKey, KEY_LEN, KeyMaterial};
use zeroize::Zeroizing;

/// The backend name, as configuration files and stored key records spell it.
pub const BACKEND: &str = "danger-local-file";

/// First byte of every key this backend wraps: the wrapping format's version.
const FORMAT_V1: u8 = 1;

const WARNING: &str = "\
# DANGER: development key-encryption key for the card vault. This is NOT an HSM.
# Anyone who can read this file can decrypt every card in the vault's database.
# Production keeps its KEK in an HSM, never in a file.
";

/// Why the local key file could not be created or opened. Messages name the path, never the
/// key.
#[derive(Debug, thiserror::Error)]
pub enum LocalFileError {
    /// The file could not be read or written.
    #[error("kek file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Group or others may read or write the file.
    #[error("kek file {path}: mode is {mode:o}; it must be 0600 or stricter (chmod 600)")]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file does not hold one 32-byte key in hex.
    #[error("kek file {path}: expected 64 hex digits after the comment lines")]
    Malformed {
        /// The key file.
        path: PathBuf,
    },
}

/// A KEK read from a local file. No `Debug` of the key; zeroized on drop.
pub struct DangerLocalFileKek {
    key: AeadKey,
    kek_id: String,
}

impl DangerLocalFileKek {
    /// Creates a new key file at `path` (mode 0600; refuses to overwrite one) and opens it.
    ///
    /// # Errors
    /// [`LocalFileError`] if the file exists or cannot be written.
    pub fn create(path: &Path) -> Result<Self, LocalFileError> {
        let io = |source| LocalFileError::Io {
            path: path.to_owned(),
            source,
        };
        let key = KeyMaterial::generate();
        // Encoded into a zeroizing buffer and written from there: no copy of the key is left
        // in freed memory.
        let mut digits = Zeroizing::new([0u8; 2 * KEY_LEN]);
        hex::encode_to_slice(key.expose_secret(), digits.as_mut_slice())
            .map_err(|e| io(std::io::Error::other(e)))?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        for part in [WARNING.as_bytes(), digits.as_slice(), b"\n"] {
            file.write_all(part).map_err(io)?;
        }
        file.sync_all().map_err(io)?;
        Ok(Self::from_key(&key))
    }

    /// Opens an existing key file, refusing one that group or others can access.
    ///
    /// # Errors
    /// [`LocalFileError`] if the file is missing, too permissive or malformed.
    pub fn open(path: &Path) -> Result<Self, LocalFileError> {
        let io = |source| LocalFileError::Io {
            path: path.to_owned(),
            source,
        };
        let mode = fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(LocalFileError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        let text = Zeroizing::new(fs::read_to_string(path).map_err(io)?);
        let malformed = || LocalFileError::Malformed {
            path: path.to_owned(),
        };
        // Pre-sized so that collecting never reallocates and leaves a copy of key material in
        // freed memory.
        let mut hex = Zeroizing::new(String::with_capacity(text.len()));
        hex.extend(
            text.lines()
                .filter(|line| !line.trim_start().starts_with('#'))
                .flat_map(|line| line.chars().filter(|c| !c.is_whitespace())),
        );
        if hex.len() != 2 * KEY_LEN {
            return Err(malformed());
        }
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        hex::decode_to_slice(hex.as_bytes(), bytes.as_mut_slice()).map_err(|_| malformed())?;
        let key = KeyMaterial::from_slice(&bytes[..]).map_err(|_| malformed())?;
        Ok(Self::from_key(&key))
    }

    fn from_key(key: &KeyMaterial) -> Self {
        // A key check value: 4 bytes of an HMAC under the key. It tells two KEKs apart without
        // revealing anything useful about either.
        let check = FingerprintKey::new(key).fingerprint(b"vault.kek-id.v1");
        let kek_id = format!(
            "{BACKEND}:{}",
            hex::encode(check.get(..4).unwrap_or_default())
        );
        Self {
            key: AeadKey::new(key),
            kek_id,
        }
    }
}

#[async_trait]
impl KeyEncryptionKey for DangerLocalFileKek {
    fn name(&self) -> &str {
        &self.kek_id
    }

    fn owns(&self, kek_id: &str) -> bool {
        kek_id == self.kek_id
    }

    async fn current_id(&self) -> Result<String, KekError> {
        Ok(self.kek_id.clone())
    }

    async fn wrap(&self, context: &KeyContext, key: &KeyMaterial) -> Result<Wrapping, KekError> {
        let mut wrapped = vec![FORMAT_V1];
        wrapped.extend(self.key.wrap_key(&context.associated_data(), key));
        Ok(Wrapping {
            kek_id: self.kek_id.clone(),
            wrapped,
        })
    }

    async fn unwrap(
        &self,
        context: &KeyContext,
        _kek_id: &str,
        wrapped: &[u8],
    ) -> Result<KeyMaterial, KekError> {
        let Some((&FORMAT_V1, rest)) = wrapped.split_first() else {
            return Err(KekError::Integrity);
        };
        self.key
            .unwrap_key(&context.associated_data(), rest)
            .map_err(|_| KekError::Integrity)
    }

    async fn check(&self) -> Result<(), KekError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use vault_core::ids::MerchantId;
    use vault_core::ports::KeyPurpose;

    use super::*;

    fn context(merchant: &str, purpose: KeyPurpose, version: u32) -> KeyContext {
        KeyContext {
            merchant: MerchantId::parse("merchant_id", merchant).unwrap(),
            purpose,
            version,
        }
    }

    #[tokio::test]
    async fn create_then_open_round_trips_wrapped_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        let kek = DangerLocalFileKek::create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(fs::read_to_string(&path).unwrap().contains("NOT an HSM"));

        let ctx = context("m1", KeyPurpose::Dek, 1);
        let dek = KeyMaterial::generate();
        let wrapped = kek.wrap(&ctx, &dek).await.unwrap();
        assert_eq!(wrapped.kek_id, kek.name());

        let reopened = DangerLocalFileKek::open(&path).unwrap();
        assert_eq!(reopened.name(), kek.name());
        assert!(reopened.owns(&wrapped.kek_id));
        assert!(kek.name().starts_with("danger-local-file:"));
        let unwrapped = reopened
            .unwrap(&ctx, &wrapped.kek_id, &wrapped.wrapped)
            .await
            .unwrap();
        assert_eq!(unwrapped.expose_secret(), dek.expose_secret());
        assert!(
            DangerLocalFileKek::create(&path).is_err(),
            "must not overwrite"
        );
    }

    #[tokio::test]
    async fn wrapped_keys_are_bound_to_their_context() {
        let dir = tempfile::tempdir().unwrap();
        let kek = DangerLocalFileKek::create(&dir.path().join("kek")).unwrap();
        let wrapped = kek
            .wrap(&context("m1", KeyPurpose::Dek, 1), &KeyMaterial::generate())
            .await
            .unwrap();
        let id = wrapped.kek_id.as_str();
        let wrapped = wrapped.wrapped;
        for other in [
            context("m2", KeyPurpose::Dek, 1),
            context("m1", KeyPurpose::Fingerprint, 1),
            context("m1", KeyPurpose::Dek, 2),
        ] {
            assert!(matches!(
                kek.unwrap(&other, id, &wrapped).await,
                Err(KekError::Integrity)
            ));
        }
        for len in 0..wrapped.len() {
            assert!(
                kek.unwrap(&context("m1", KeyPurpose::Dek, 1), id, &wrapped[..len])
                    .await
                    .is_err()
            );
        }
        let other_kek = DangerLocalFileKek::create(&dir.path().join("other")).unwrap();
        assert_ne!(other_kek.name(), kek.name());
        assert!(!other_kek.owns(id));
        assert!(
            other_kek
                .unwrap(&context("m1", KeyPurpose::Dek, 1), id, &wrapped)
                .await
                .is_err()
        );
    }

    #[test]
    fn refuses_readable_or_malformed_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        DangerLocalFileKek::create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = DangerLocalFileKek::open(&path).err().unwrap();
        assert!(err.to_string().contains("0600"), "{err}");

        let bad = dir.path().join("bad");
        fs::write(&bad, "# comment\nnot hex at all\n").unwrap();
        fs::set_permissions(&bad, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            DangerLocalFileKek::open(&bad),
            Err(LocalFileError::Malformed { .. })
        ));
    }

    #[test]
    fn key_files_hold_hex_in_either_case_split_as_one_likes() {
        let dir = tempfile::tempdir().unwrap();
        let created = dir.path().join("created");
        let kek = DangerLocalFileKek::create(&created).unwrap();
        let text = fs::read_to_string(&created).unwrap();
        let digits = text
            .strip_prefix(WARNING)
            .unwrap()
            .strip_suffix('\n')
            .unwrap();
        assert_eq!(digits.len(), 2 * KEY_LEN);
        assert!(
            digits
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        let id = kek.name().strip_prefix("danger-local-file:").unwrap();
        assert_eq!(id.len(), 8);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );

        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            fs::write(&path, text).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            DangerLocalFileKek::open(&path)
        };
        let (head, tail) = digits.split_at(10);
        let upper = format!("# a comment\n  {}\n{} \n", head.to_uppercase(), tail);
        assert_eq!(write("upper", &upper).unwrap().name(), kek.name());
        let short = &digits[1..];
        for (name, bad) in [
            ("short", short.to_owned()),
            ("long", format!("{digits}0")),
            ("letter", format!("g{short}")),
            ("sign", format!("+{short}")),
        ] {
            assert!(
                matches!(write(name, &bad), Err(LocalFileError::Malformed { .. })),
                "{name}"
            );
        }
    }
}
