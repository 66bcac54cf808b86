//! Where secrets (PINs, passwords, tokens, AppRole ids) come from, and the one rule for reading
//! them, which the server's settings and the Transit KEK share: a file no other user may read,
//! or an environment variable, holding one line (surrounding whitespace is ignored).
//!
//! The rule for files that hold secrets, private keys included: no other user may read them.
//! The owner may; so may the group when root owns the file and the group may only read it
//! (PostgreSQL's rule for its key file, which a Kubernetes Secret mounted with an `fsGroup`
//! meets). The dev KEK file has a stricter rule of its own (0600: it is the key).

use std::env::VarError;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use zeroize::Zeroizing;

/// Where a secret is read from. Configuration names the source, never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file holding the secret, which no other user may read ([`check_private`]), e.g. an
    /// agent's token sink or a mounted secret.
    File(PathBuf),
    /// An environment variable holding the secret.
    Env(String),
}

impl SecretSource {
    /// Reads the secret: the file's or the variable's text without its surrounding whitespace
    /// (a trailing newline, say), which must leave one line, not empty, with no control
    /// characters. A file must pass [`check_private`].
    ///
    /// # Errors
    /// [`SecretError`], naming the file or the variable, never the secret.
    pub fn read(&self) -> Result<SecretString, SecretError> {
        let raw = match self {
            Self::File(path) => {
                check_private(path)?;
                Zeroizing::new(
                    fs::read_to_string(path).map_err(|source| SecretError::Read {
                        path: path.clone(),
                        source,
                    })?,
                )
            }
            // Never keep the VarError: NotUnicode carries the value.
            Self::Env(name) => Zeroizing::new(std::env::var(name).map_err(|e| match e {
                VarError::NotPresent => SecretError::EnvUnset(name.clone()),
                VarError::NotUnicode(_) => SecretError::EnvNotUnicode(name.clone()),
            })?),
        };
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(SecretError::Empty(self.clone()));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(SecretError::NotOneLine(self.clone()));
        }
        Ok(SecretString::from(trimmed.to_owned()))
    }
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Env(name) => write!(f, "environment variable {name}"),
        }
    }
}

/// Why a secret could not be read. Messages name the file or the variable, never the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file is missing, or other users may get at it.
    #[error(transparent)]
    File(#[from] SecretFileError),
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The environment variable is not set.
    #[error("environment variable {0} is not set")]
    EnvUnset(String),
    /// The environment variable's value is not UTF-8.
    #[error("environment variable {0} is not valid UTF-8")]
    EnvNotUnicode(String),
    /// The source holds nothing but whitespace.
    #[error("{0} is empty")]
    Empty(SecretSource),
    /// The source holds more than one line, or control characters.
    #[error("{0} holds more than one line or control characters")]
    NotOneLine(SecretSource),
}

/// Why a secret file was refused. Messages name the file and its mode, never its contents.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// The file's metadata could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Other users may read (or write) the file.
    #[error(
        "{path}: mode {mode:o} lets other users at a secret; make it 0600 (chmod 600), or 0640 \
         if root owns it"
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// Refuses `path` unless only its owner (or, for a file root owns, the owner and the group,
/// read-only) may get at it. Symbolic links are followed: the rule is the target's.
///
/// # Errors
/// [`SecretFileError`] if the file is missing or too open.
pub fn check_private(path: &Path) -> Result<(), SecretFileError> {
    let meta = fs::metadata(path).map_err(|source| SecretFileError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if exposed(mode, meta.uid()) {
        return Err(SecretFileError::Exposed {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Whether permission bits `mode` on a file owned by `uid` let other users at it.
fn exposed(mode: u32, uid: u32) -> bool {
    let others = mode & 0o007;
    let group = mode & 0o070;
    others != 0 || (group != 0 && !(uid == 0 && group == 0o040))
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn only_the_owner_or_a_roots_group_may_read() {
        for mode in [0o600, 0o400, 0o700] {
            assert!(!exposed(mode, 1000), "{mode:o}");
            assert!(!exposed(mode, 0), "{mode:o}");
        }
        assert!(
            !exposed(0o640, 0),
            "root-owned, group read: a Kubernetes Secret"
        );
        assert!(!exposed(0o440, 0));
        assert!(exposed(0o640, 1000), "group-readable, not root's");
        assert!(exposed(0o660, 0), "group-writable");
        assert!(exposed(0o644, 0), "world-readable");
        assert!(exposed(0o604, 1000));
        assert!(exposed(0o602, 1000), "world-writable");
    }

    #[test]
    fn a_file_is_checked_by_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin");
        fs::write(&path, "1234\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = check_private(&path).unwrap_err().to_string();
        assert!(err.contains("mode 644") && !err.contains("1234"), "{err}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        check_private(&path).unwrap();
        assert!(check_private(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn secrets_come_from_private_files_or_the_environment_and_are_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let file = SecretSource::File(path.clone());
        fs::write(&path, "  s.hunter2 token\n").unwrap();
        // A file other users can read is refused, naming its mode, not its contents.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = file.read().unwrap_err().to_string();
        assert!(
            err.contains("mode 644") && !err.contains("hunter2"),
            "{err}"
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let secret = file.read().unwrap();
        assert_eq!(secret.expose_secret(), "s.hunter2 token");
        let printed = format!("{secret:?}");
        assert!(printed.contains("REDACTED") && !printed.contains("hunter2"));

        for (text, problem) in [
            ("  \n", "is empty"),
            ("first\nsecond\n", "more than one line"),
            ("a\tb", "control characters"),
        ] {
            fs::write(&path, text).unwrap();
            let err = file.read().unwrap_err().to_string();
            assert!(err.contains(problem), "{text:?}: {err}");
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(!err.contains("first") && !err.contains("second"), "{err}");
        }
        let err = SecretSource::File(dir.path().join("missing"))
            .read()
            .unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");

        // cargo sets this for every test process.
        let env = SecretSource::Env("CARGO_PKG_NAME".to_owned());
        assert_eq!(env.read().unwrap().expose_secret(), "vault-kms");
        let missing = SecretSource::Env("VAULT_KMS_NO_SUCH_VARIABLE".to_owned());
        let err = missing.read().unwrap_err().to_string();
        assert_eq!(
            err,
            "environment variable VAULT_KMS_NO_SUCH_VARIABLE is not set"
        );
    }
}
