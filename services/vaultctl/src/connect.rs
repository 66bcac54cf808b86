//! The key administration client over the shared mutual TLS channel ([`vault_client`]).

use tonic::transport::Channel;
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
    Ok(vault_client::channel(&args.connection()?)?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::Path;

    use clap::Parser;

    use super::*;
    use crate::cli::Cli;

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
    async fn unreadable_files_are_config_errors_that_exit_two() {
        let dir = tempfile::tempdir().unwrap();
        let err = channel(&args(dir.path())).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.to_string().starts_with("cannot read CA certificate "),
            "{err}"
        );
    }
}
