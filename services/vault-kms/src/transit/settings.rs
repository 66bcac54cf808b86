//! What the Transit KEK is told: where the server is, which key, how to authenticate (the
//! sources of its secrets, never the secrets), and the checks those settings must pass before
//! anything is sent.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::Url;

use super::TransitError;
use crate::SecretSource;

/// The mount Transit is enabled at unless configured otherwise.
pub const DEFAULT_MOUNT: &str = "transit";

/// The mount AppRole is enabled at unless configured otherwise.
pub const DEFAULT_APPROLE_MOUNT: &str = "approle";

/// How long one request to the server may take, connecting included, unless configured
/// otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// How the KEK authenticates to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransitAuth {
    /// A token. Read at open, and read again if the server refuses it (an agent may have
    /// replaced the file).
    Token(SecretSource),
    /// AppRole: logs in at open, and again if the server refuses the token (it expired). Give
    /// the role a secret id that allows more than one use, or none of these re-logins work.
    AppRole {
        /// The mount AppRole is enabled at ([`DEFAULT_APPROLE_MOUNT`]).
        mount: String,
        /// The role id.
        role_id: SecretSource,
        /// The secret id.
        secret_id: SecretSource,
    },
}

/// Where the KEK lives and how to reach it. Holds no secret: credentials are read from the
/// files or environment variables [`TransitAuth`] names.
#[derive(Debug, Clone)]
pub struct TransitSettings {
    /// The server, `https://host:port`.
    pub address: String,
    /// A PEM file with the CA certificate(s) the server's certificate must chain to. Only these
    /// are trusted.
    pub ca_cert: PathBuf,
    /// The mount Transit is enabled at ([`DEFAULT_MOUNT`]).
    pub mount: String,
    /// The key's name within the mount.
    pub key: String,
    /// How to authenticate.
    pub auth: TransitAuth,
    /// How long one request may take, connecting included ([`DEFAULT_TIMEOUT`]).
    pub timeout: Duration,
}

impl TransitSettings {
    /// Settings with the default mount and timeout.
    #[must_use]
    pub fn new(
        address: impl Into<String>,
        ca_cert: impl Into<PathBuf>,
        key: impl Into<String>,
        auth: TransitAuth,
    ) -> Self {
        Self {
            address: address.into(),
            ca_cert: ca_cert.into(),
            mount: DEFAULT_MOUNT.to_owned(),
            key: key.into(),
            auth,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Checks the settings and returns the base URL (`https://host:port`, no trailing slash).
pub(super) fn check_settings(settings: &TransitSettings) -> Result<String, TransitError> {
    let bad = |detail: String| TransitError::Settings(detail);
    let url = Url::parse(&settings.address)
        .map_err(|e| bad(format!("address {:?}: {e}", settings.address)))?;
    if url.scheme() != "https" {
        return Err(bad(format!(
            "address {:?}: must be an https:// URL",
            settings.address
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("address: must not contain credentials".to_owned()));
    }
    if url.host_str().is_none() || url.query().is_some() || url.fragment().is_some() {
        return Err(bad(format!(
            "address {:?}: expected https://host:port",
            settings.address
        )));
    }
    let name_ok = |name: &str, slash: bool| {
        !name.is_empty()
            && !name.starts_with('/')
            && !name.ends_with('/')
            && !name
                .split('/')
                .any(|part| part.is_empty() || part == "." || part == "..")
            && name.chars().all(|c| {
                c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' || (slash && c == '/')
            })
    };
    if !name_ok(&settings.mount, true) {
        return Err(bad(format!(
            "mount {:?}: expected a path like \"transit\"",
            settings.mount
        )));
    }
    if !name_ok(&settings.key, false) {
        return Err(bad(format!(
            "key {:?}: expected letters, digits, '-', '_' or '.'",
            settings.key
        )));
    }
    if let TransitAuth::AppRole { mount, .. } = &settings.auth
        && !name_ok(mount, true)
    {
        return Err(bad(format!("AppRole mount {mount:?}: expected a path")));
    }
    if settings.timeout.is_zero() {
        return Err(bad("timeout must be more than zero".to_owned()));
    }
    Ok(settings.address.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        let auth = TransitAuth::Token(SecretSource::Env("T".to_owned()));
        let ok = TransitSettings::new("https://127.0.0.1:8200/", "/ca.pem", "vault-kek", auth);
        assert_eq!(check_settings(&ok).unwrap(), "https://127.0.0.1:8200");
        let variants: [fn(&mut TransitSettings); 7] = [
            |s| s.address = "http://127.0.0.1:8200".to_owned(),
            |s| s.address = "https://user:pw@127.0.0.1:8200".to_owned(),
            |s| s.address = "not a url".to_owned(),
            |s| s.mount = "../sys".to_owned(),
            |s| s.mount = String::new(),
            |s| s.key = "a/b".to_owned(),
            |s| s.timeout = Duration::ZERO,
        ];
        for change in variants {
            let mut bad = ok.clone();
            change(&mut bad);
            let err = check_settings(&bad).unwrap_err();
            assert!(matches!(err, TransitError::Settings(_)), "{err}");
            assert!(!err.to_string().contains("pw@"), "{err}");
        }
        let mut nested = ok.clone();
        nested.mount = "team/transit".to_owned();
        assert!(check_settings(&nested).is_ok());
    }
}
