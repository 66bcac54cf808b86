//! The mutual TLS channel to the vault.

use std::path::Path;
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use vault_proto::v1::key_admin_service_client::KeyAdminServiceClient;

use crate::Error;
use crate::cli::ConnectionArgs;

/// A lazily connecting key administration client for `args`: mutual TLS only, trusting only the
/// given CA, presenting the given certificate. Connection errors surface on the first call.
/// Must be called inside a Tokio runtime.
///
/// # Errors
/// [`Error::Config`] if a file cannot be read or holds no PEM certificate or key, or the
/// address or server name is malformed.
pub fn client(args: &ConnectionArgs) -> Result<KeyAdminServiceClient<Channel>, Error> {
    Ok(KeyAdminServiceClient::new(channel(args)?))
}

/// The channel behind [`client`].
///
/// # Errors
/// As [`client`].
pub fn channel(args: &ConnectionArgs) -> Result<Channel, Error> {
    let files = args.tls_files()?;
    let ca = read_pem(&files.ca, "CA certificate", "CERTIFICATE")?;
    let cert = read_pem(&files.cert, "client certificate", "CERTIFICATE")?;
    let key = read_pem(&files.key, "client key", "PRIVATE KEY")?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key))
        .domain_name(args.server_name.clone());
    let endpoint = endpoint(&args.addr)?
        .connect_timeout(Duration::from_secs(args.timeout_secs))
        .tls_config(tls)
        .map_err(|err| {
            Error::Config(format!(
                "TLS configuration refused ({}; {}; {}; server name {:?}): {}",
                files.ca.display(),
                files.cert.display(),
                files.key.display(),
                args.server_name,
                source_chain(&err)
            ))
        })?;
    Ok(endpoint.connect_lazy())
}

/// The `https://` endpoint for `addr` (`HOST:PORT`).
///
/// # Errors
/// [`Error::Config`] if `addr` has a scheme, a path or no port.
pub fn endpoint(addr: &str) -> Result<Endpoint, Error> {
    let refuse = |why: &str| Error::Config(format!("--addr {addr:?}: {why}; give HOST:PORT"));
    if addr.contains("://") {
        return Err(refuse("no scheme (vaultctl always uses TLS)"));
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
fn read_pem(path: &Path, what: &str, kind: &str) -> Result<String, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| Error::Config(format!("cannot read {what} {}: {err}", path.display())))?;
    let has_block = text
        .lines()
        .any(|line| line.starts_with("-----BEGIN ") && line.ends_with(&format!("{kind}-----")));
    if !has_block {
        return Err(Error::Config(format!(
            "{what} {} holds no PEM {kind}",
            path.display()
        )));
    }
    Ok(text)
}

/// An error and its sources, `: `-separated (tonic's transport errors keep the cause there).
fn source_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::Cli;

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
            assert!(
                matches!(endpoint(bad), Err(Error::Config(_))),
                "{bad} accepted"
            );
        }
    }

    fn args(dir: &Path) -> ConnectionArgs {
        Cli::try_parse_from([
            "vaultctl",
            "--dev-dir",
            dir.to_str().unwrap(),
            "--identity",
            "admin-1",
            "status",
        ])
        .unwrap()
        .connection
    }

    #[tokio::test]
    async fn unreadable_or_wrong_files_are_config_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = channel(&args(dir.path())).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let text = err.to_string();
        assert!(text.starts_with("cannot read CA certificate "), "{text}");
        assert!(text.contains("pki/ca.pem"), "{text}");

        std::fs::create_dir(dir.path().join("pki")).unwrap();
        std::fs::write(dir.path().join("pki/ca.pem"), "not a certificate").unwrap();
        let err = channel(&args(dir.path())).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("pki/ca.pem holds no PEM CERTIFICATE"),
            "{err}"
        );
    }
}
