//! `vaultd check-config`: everything `vaultd serve` would refuse at start that can be known
//! without reaching the store or the KEK. The file and its `VAULTD_*` overrides parse and
//! check (`config/`), the TLS certificate, key, client CA and CRLs load and the key file is
//! private, the policy file parses, each KEK's files exist (a dev key file private) and its
//! secrets can be read by the one rule for secrets, the database password file is readable,
//! an audit sink's directory exists. Errors name the setting, never a secret.

use std::path::Path;

use crate::config::{Config, StorageUrl, load_policy, read_secret};
use vault_kms::SecretSource;

/// Checks the configuration file `path`; returns a one-line summary of what it configures.
///
/// # Errors
/// The first problem found, naming the file and the setting.
pub fn check_config(path: &Path) -> anyhow::Result<String> {
    let config = Config::load(path)?;
    // The TLS error names the setting and the file; its own message includes its cause's.
    crate::tls::ServerTls::load(&config.tls)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let policy = load_policy(&config.policy.path, config.identity)?;
    crate::kek::check_kek(&config.kek, path, "kek")?;
    for (index, kek) in config.previous_kek.iter().enumerate() {
        crate::kek::check_kek(kek, path, &format!("previous_kek[{index}]"))?;
    }
    let storage = match config.storage_url(path)? {
        StorageUrl::Sqlite(_) => "sqlite",
        StorageUrl::Postgres(_) => "postgres",
    };
    if let Some(file) = &config.storage.password_file {
        read_secret(
            path,
            "storage.password_file",
            &SecretSource::File(file.clone()),
        )?;
    }
    if let Some(sink) = &config.audit.sink
        && sink.path != "-"
    {
        let sink_path = Path::new(&sink.path);
        let dir = sink_path.parent().filter(|d| !d.as_os_str().is_empty());
        if dir.is_some_and(|d| !d.is_dir()) {
            anyhow::bail!(
                "{}: audit.sink.path: its directory does not exist",
                path.display()
            );
        }
    }
    // The processors' client certificates: private, and readable as a chain and a key.
    vault_egress::HttpsEgress::new(config.forward.identities()?)
        .map_err(|e| anyhow::anyhow!("{}: forward.client_identities: {e}", path.display()))?;
    Ok(format!(
        "listen {}, storage {storage}, kek {}, {} previous kek(s), {} caller(s) in the policy \
         (sha256:{}), metrics {}, traces {}, {} forward client identit(ies)",
        config.listen,
        crate::kek::backend_name(&config.kek),
        config.previous_kek.len(),
        policy.policy.identities().count(),
        hex::encode(policy.sha256),
        config
            .telemetry
            .metrics_listen
            .map_or_else(|| "off".to_owned(), |addr| addr.to_string()),
        if config.telemetry.otlp_endpoint.is_some() {
            "on"
        } else {
            "off"
        },
        config.forward.client_identities.len(),
    ))
}
