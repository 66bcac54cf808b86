//! `[kek]` and `[[previous_kek]]`: which backend holds each KEK and how to reach it, and where
//! its secrets (PIN, token, AppRole ids) are read from: a `<name>_file` / `<name>_env` pair
//! read by the one rule for secrets (`vault_kms::SecretSource`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use vault_kms::SecretSource;

use super::{ConfigError, units};

/// Which KEK backend, and its settings. Secrets (PINs, tokens) are never written here: the
/// file names a file or an environment variable that holds them.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "backend", deny_unknown_fields)]
pub enum KekConfig {
    /// A key in a local file: development only. Not an HSM.
    #[serde(rename = "danger-local-file")]
    DangerLocalFile {
        /// The key file (mode 0600).
        path: PathBuf,
    },
    /// A non-extractable AES-256 key in an HSM, through its PKCS#11 module.
    #[serde(rename = "pkcs11")]
    Pkcs11 {
        /// The PKCS#11 module (shared library).
        module: PathBuf,
        /// The token's label.
        token_label: String,
        /// The KEK's label (CKA_LABEL) in the token.
        key_label: String,
        /// A file holding the user PIN (one line). Give `pin_file` or `pin_env`.
        pin_file: Option<PathBuf>,
        /// An environment variable holding the user PIN.
        pin_env: Option<String>,
    },
    /// An AES-256-GCM key in a HashiCorp Vault or OpenBao Transit engine, over HTTPS.
    #[serde(rename = "transit")]
    Transit {
        /// The server, `https://host:port`.
        address: String,
        /// The CA certificate(s) (PEM) the server's certificate must chain to; only these are
        /// trusted.
        ca_cert: PathBuf,
        /// The mount Transit is enabled at.
        #[serde(default = "default_transit_mount")]
        mount: String,
        /// The key's name.
        key: String,
        /// A file holding a token (e.g. an agent's sink). Give a token, or AppRole ids.
        token_file: Option<PathBuf>,
        /// An environment variable holding a token.
        token_env: Option<String>,
        /// The mount AppRole is enabled at (default "approle").
        approle_mount: Option<String>,
        /// AppRole role id, from a file ...
        role_id_file: Option<PathBuf>,
        /// ... or an environment variable.
        role_id_env: Option<String>,
        /// AppRole secret id, from a file ...
        secret_id_file: Option<PathBuf>,
        /// ... or an environment variable.
        secret_id_env: Option<String>,
        /// How long one request may take (`timeout_ms`).
        #[serde(
            rename = "timeout_ms",
            deserialize_with = "units::millis",
            default = "default_transit_timeout"
        )]
        timeout: Duration,
    },
}

fn default_transit_mount() -> String {
    vault_kms::DEFAULT_MOUNT.to_owned()
}

fn default_transit_timeout() -> Duration {
    vault_kms::DEFAULT_TIMEOUT
}

impl KekConfig {
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        match self {
            Self::DangerLocalFile { path } => *path = base.join(&*path),
            Self::Pkcs11 {
                module, pin_file, ..
            } => {
                *module = base.join(&*module);
                for file in [pin_file].into_iter().flatten() {
                    *file = base.join(&*file);
                }
            }
            Self::Transit {
                ca_cert,
                token_file,
                role_id_file,
                secret_id_file,
                ..
            } => {
                *ca_cert = base.join(&*ca_cert);
                for file in [token_file, role_id_file, secret_id_file]
                    .into_iter()
                    .flatten()
                {
                    *file = base.join(&*file);
                }
            }
        }
    }
}

/// The source of a secret the file gives as a `<name>_file` / `<name>_env` pair, `None` if it
/// gives neither.
///
/// # Errors
/// A problem to report against the pair's setting if both are given.
pub fn secret_source(
    file: Option<&Path>,
    env: Option<&str>,
) -> Result<Option<SecretSource>, &'static str> {
    match (file, env) {
        (Some(file), None) => Ok(Some(SecretSource::File(file.to_owned()))),
        (None, Some(env)) => Ok(Some(SecretSource::Env(env.to_owned()))),
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err("give a secret's _file or its _env, not both"),
    }
}

/// Reads a secret by the one rule for secrets ([`SecretSource::read`]: a file only its owner
/// may read, or an environment variable, holding one line). Errors name `setting` and the file
/// or the variable, never the secret.
///
/// # Errors
/// [`ConfigError::Invalid`] if the source is missing, readable by other users, empty or more
/// than one line.
pub fn read_secret(
    config_file: &Path,
    setting: &str,
    source: &SecretSource,
) -> Result<SecretString, ConfigError> {
    source
        .read()
        .map_err(|e| ConfigError::invalid(config_file, setting, e.to_string()))
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn a_secret_comes_from_its_file_or_its_variable_and_errors_name_the_setting() {
        let file = Path::new("/run/secrets/pin");
        assert_eq!(
            secret_source(Some(file), None),
            Ok(Some(SecretSource::File(file.to_owned())))
        );
        assert_eq!(
            secret_source(None, Some("PIN")),
            Ok(Some(SecretSource::Env("PIN".to_owned())))
        );
        assert_eq!(secret_source(None, None), Ok(None));
        assert!(secret_source(Some(file), Some("PIN")).is_err());

        let config = Path::new("vaultd.toml");
        // cargo sets this for every test process.
        let env = SecretSource::Env("CARGO_PKG_NAME".to_owned());
        let secret = read_secret(config, "kek.pin_file / kek.pin_env", &env).unwrap();
        assert_eq!(secret.expose_secret(), "vault-server");
        let missing = SecretSource::Env("VAULT_SERVER_NO_SUCH_VARIABLE".to_owned());
        let err = read_secret(config, "kek.pin_file / kek.pin_env", &missing)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "vaultd.toml: kek.pin_file / kek.pin_env: environment variable \
             VAULT_SERVER_NO_SUCH_VARIABLE is not set"
        );
    }
}
