//! The connection options of a client's command line (clap): the vault's address and server
//! name, and the client's identity as three PEM files or a `vaultd dev` directory and name.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::{ConfigError, Connection, TlsFiles};

/// The vault's address when none is given (the `vaultd dev` default).
pub const DEFAULT_ADDR: &str = "127.0.0.1:50051";

/// The connection options, valid before or after the subcommand.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Connection")]
pub struct ConnectionArgs {
    /// The vault's gRPC address.
    #[arg(
        long,
        global = true,
        value_name = "HOST:PORT",
        default_value = DEFAULT_ADDR,
        env = "VAULTCTL_ADDR"
    )]
    pub addr: String,
    /// CA certificate (PEM) the vault's server certificate must chain to.
    ///
    /// Goes with --cert and --key.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "VAULTCTL_CA",
        requires_all = ["cert", "key"],
        conflicts_with_all = ["dev_dir", "identity"]
    )]
    pub ca: Option<PathBuf>,
    /// This client's certificate (PEM).
    ///
    /// Its identity needs the permission its calls use in the vault's policy (keys.admin for
    /// vaultctl's key commands, destinations.admin for its destination commands, audit.read
    /// for audit export, tokenize and detokenize for loadtest).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "VAULTCTL_CERT",
        requires_all = ["ca", "key"],
        conflicts_with_all = ["dev_dir", "identity"]
    )]
    pub cert: Option<PathBuf>,
    /// This client's private key (PEM) for --cert.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "VAULTCTL_KEY",
        requires_all = ["ca", "cert"],
        conflicts_with_all = ["dev_dir", "identity"]
    )]
    pub key: Option<PathBuf>,
    /// A `vaultd dev` data directory, instead of --ca, --cert and --key.
    ///
    /// Uses DIR/pki/ca.pem and the --identity's DIR/pki/NAME.pem and DIR/pki/NAME.key.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "VAULTCTL_DEV_DIR",
        requires = "identity"
    )]
    pub dev_dir: Option<PathBuf>,
    /// The identity in --dev-dir to connect as, e.g. admin-1.
    #[arg(
        long,
        global = true,
        value_name = "NAME",
        env = "VAULTCTL_IDENTITY",
        requires = "dev_dir"
    )]
    pub identity: Option<String>,
    /// The name the vault's server certificate must carry (TLS server name).
    #[arg(
        long,
        global = true,
        value_name = "NAME",
        default_value = "localhost",
        env = "VAULTCTL_SERVER_NAME"
    )]
    pub server_name: String,
    /// Seconds to wait for connecting and for each single-answer call.
    ///
    /// Re-encryption and rewrap streams have no overall limit.
    #[arg(
        long,
        global = true,
        value_name = "SECS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub timeout_secs: u64,
}

impl ConnectionArgs {
    /// The CA, certificate and key files to use: the three given, or the ones of `--identity`
    /// in `--dev-dir`.
    ///
    /// # Errors
    /// [`ConfigError`] if neither form was given (clap already refuses both together, or
    /// either form half given).
    pub fn tls_files(&self) -> Result<TlsFiles, ConfigError> {
        match (
            &self.ca,
            &self.cert,
            &self.key,
            &self.dev_dir,
            &self.identity,
        ) {
            (Some(ca), Some(cert), Some(key), None, None) => Ok(TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None, None, Some(dir), Some(name)) => {
                if name.is_empty() || name.contains(['/', '\\']) || name == ".." {
                    return Err(ConfigError(format!(
                        "--identity {name:?} is not an identity name (e.g. admin-1)"
                    )));
                }
                Ok(TlsFiles::dev(dir, name))
            }
            (None, None, None, None, None) => Err(ConfigError(
                "no client identity: give --ca, --cert and --key, or --dev-dir and --identity \
                 (or the VAULTCTL_* environment variables)"
                    .to_owned(),
            )),
            _ => Err(ConfigError(
                "give either all of --ca, --cert and --key, or --dev-dir and --identity, not a mix"
                    .to_owned(),
            )),
        }
    }

    /// The connection these options describe.
    ///
    /// # Errors
    /// As [`ConnectionArgs::tls_files`].
    pub fn connection(&self) -> Result<Connection, ConfigError> {
        Ok(Connection {
            addr: self.addr.clone(),
            server_name: self.server_name.clone(),
            connect_timeout: Duration::from_secs(self.timeout_secs),
            files: self.tls_files()?,
        })
    }
}
