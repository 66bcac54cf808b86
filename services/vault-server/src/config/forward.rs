//! `[forward]`: what the forward proxy needs from the host. Destinations themselves are never
//! configured here: they live in the store under dual control (`vaultctl destination`). Only
//! the client certificates presented to processors for mutual TLS are files on the host, named
//! by destinations (`client_identity`), so that no private key ever travels through the API or
//! the database.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;

/// `[forward]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {
    /// Client certificates for mutual TLS to processors, by the name destinations use
    /// (`[forward.client_identities.acme] certificate = "..." key = "..."`).
    pub client_identities: BTreeMap<String, ClientIdentityConfig>,
}

/// One client certificate (PEM chain) and its private key (PEM, a private file).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientIdentityConfig {
    /// The certificate chain, leaf first.
    pub certificate: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

impl ForwardConfig {
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        for identity in self.client_identities.values_mut() {
            identity.certificate = base.join(&identity.certificate);
            identity.key = base.join(&identity.key);
        }
    }

    pub(super) fn check(&self, file: &Path) -> Result<(), ConfigError> {
        for name in self.client_identities.keys() {
            if !vault_core::forward::spec::is_name(name) {
                return Err(ConfigError::invalid(
                    file,
                    "forward.client_identities",
                    "names must be 1 to 64 characters from a-z 0-9 . _ - starting with a letter \
                     or digit",
                ));
            }
        }
        Ok(())
    }

    /// The identities as the egress adapter reads them, once each key file is known to be
    /// private (`vault_kms::check_private`, the rule for every secret file).
    ///
    /// # Errors
    /// The first key file that is missing or readable by others.
    pub fn identities(
        &self,
    ) -> Result<BTreeMap<String, vault_egress::ClientIdentityFiles>, vault_kms::SecretFileError>
    {
        self.client_identities
            .iter()
            .map(|(name, files)| {
                vault_kms::check_private(&files.key)?;
                Ok((
                    name.clone(),
                    vault_egress::ClientIdentityFiles {
                        certificate: files.certificate.clone(),
                        key: files.key.clone(),
                    },
                ))
            })
            .collect()
    }
}
