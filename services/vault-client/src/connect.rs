//! The mutual TLS channel to the vault: TLS 1.3 through tonic, trusting only the given CA,
//! presenting the given client certificate.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::{ConfigError, error_chain};

/// The three PEM files of a mutual TLS client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificate the server's certificate must chain to.
    pub ca: PathBuf,
    /// The client certificate.
    pub cert: PathBuf,
    /// The client's private key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// The files of identity `name` in a `vaultd dev` data directory: `DIR/pki/ca.pem`,
    /// `DIR/pki/NAME.pem`, `DIR/pki/NAME.key`.
    #[must_use]
    pub fn dev(dir: &Path, name: &str) -> Self {
        let pki = dir.join("pki");
        Self {
            ca: pki.join("ca.pem"),
            cert: pki.join(format!("{name}.pem")),
            key: pki.join(format!("{name}.key")),
        }
    }
}

/// Where the vault is and who to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// `HOST:PORT`.
    pub addr: String,
    /// The name the vault's server certificate must carry.
    pub server_name: String,
    /// Time allowed to connect.
    pub connect_timeout: Duration,
    /// This client's identity.
    pub files: TlsFiles,
}

/// A lazily connecting channel to `connection`: mutual TLS only. Connection errors surface on
/// the first call. Must be called inside a Tokio runtime.
///
/// # Errors
/// [`ConfigError`] if a file cannot be read or holds no PEM certificate or key, or the address
/// or server name is malformed.
pub fn channel(connection: &Connection) -> Result<Channel, ConfigError> {
    let files = &connection.files;
    let ca = read_pem(&files.ca, "CA certificate", "CERTIFICATE")?;
    let cert = read_pem(&files.cert, "client certificate", "CERTIFICATE")?;
    let key = read_pem(&files.key, "client key", "PRIVATE KEY")?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key))
        .domain_name(connection.server_name.clone());
    let endpoint = endpoint(&connection.addr)?
        .connect_timeout(connection.connect_timeout)
        .tls_config(tls)
        .map_err(|err| {
            ConfigError(format!(
                "TLS configuration refused ({}; {}; {}; server name {:?}): {}",
                files.ca.display(),
                files.cert.display(),
                files.key.display(),
                connection.server_name,
                error_chain(&err)
            ))
        })?;
    Ok(endpoint.connect_lazy())
}

/// The `https://` endpoint for `addr` (`HOST:PORT`).
///
/// # Errors
/// [`ConfigError`] if `addr` has a scheme, a path or no port.
pub fn endpoint(addr: &str) -> Result<Endpoint, ConfigError> {
    let refuse = |why: &str| ConfigError(format!("--addr {addr:?}: {why}; give HOST:PORT"));
    if addr.contains("://") {
        return Err(refuse("no scheme (the vault is always reached over TLS)"));
    }
    if addr.contains('/') {
        return Err(refuse("no path"));
    }
    let endpoint =
        Endpoint::from_shared(format!("https://{addr}")).map_err(|_| refuse("not an address"))?;
    if endpoint.uri().port().is_none() {
        return Err(refuse("no port"));
    }
    Ok(endpoint)
}

/// Reads a PEM file that must hold at least one `-----BEGIN ...{kind}-----` block.
fn read_pem(path: &Path, what: &str, kind: &str) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| ConfigError(format!("cannot read {what} {}: {err}", path.display())))?;
    let has_block = text
        .lines()
        .any(|line| line.starts_with("-----BEGIN ") && line.ends_with(&format!("{kind}-----")));
    if !has_block {
        return Err(ConfigError(format!(
            "{what} {} holds no PEM {kind}",
            path.display()
        )));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn addresses_are_host_and_port() {
        for good in [
            "127.0.0.1:50051",
            "localhost:1",
            "[::1]:50051",
            "vault.internal:443",
        ] {
            let endpoint = endpoint(good).unwrap();
            assert_eq!(endpoint.uri().scheme_str(), Some("https"), "{good}");
        }
        for bad in [
            "127.0.0.1",
            "https://127.0.0.1:50051",
            "http://x:1",
            "host:1/path",
            "",
            "a b:1",
        ] {
            assert!(endpoint(bad).is_err(), "{bad} accepted");
        }
    }

    fn dev(dir: &Path) -> Connection {
        Connection {
            addr: "127.0.0.1:50051".into(),
            server_name: "localhost".into(),
            connect_timeout: Duration::from_secs(1),
            files: TlsFiles::dev(dir, "admin-1"),
        }
    }

    #[tokio::test]
    async fn unreadable_or_wrong_files_are_config_errors() {
        let dir = tempfile::tempdir().unwrap();
        let text = channel(&dev(dir.path())).unwrap_err().to_string();
        assert!(text.starts_with("cannot read CA certificate "), "{text}");
        assert!(text.contains("pki/ca.pem"), "{text}");

        std::fs::create_dir(dir.path().join("pki")).unwrap();
        std::fs::write(dir.path().join("pki/ca.pem"), "not a certificate").unwrap();
        let err = channel(&dev(dir.path())).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("pki/ca.pem holds no PEM CERTIFICATE"),
            "{err}"
        );
    }
}
