//! The rule for files that hold secrets (private keys, PINs, tokens, passwords): no other user
//! may read them. The owner may; so may the group when root owns the file and the group may
//! only read it (PostgreSQL's rule for its key file, which a Kubernetes Secret mounted with an
//! `fsGroup` meets). The dev KEK file has a stricter rule of its own (0600: it is the key).

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

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
}
