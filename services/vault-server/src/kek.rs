//! Opens the configured KEKs (`[kek]` and any `[[previous_kek]]`) as the domain's `KeyRing`.
//! A KEK that cannot be opened (module missing, wrong PIN, key absent or exportable) stops
//! `vaultd` at startup with the backend's message, which never holds the secret.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use vault_core::keyring::{CacheLimits, KeyRing};
use vault_core::ports::KeyEncryptionKey;
use vault_kms::{DangerLocalFileKek, Pkcs11Kek, Pkcs11Settings};

use crate::config::{Config, KekConfig, read_secret};

/// The key ring the configuration describes.
///
/// # Errors
/// If any configured KEK cannot be opened; the message names the setting.
pub fn open_key_ring(config: &Config, config_path: &Path) -> anyhow::Result<KeyRing> {
    let current = open_kek(&config.kek, config_path, "kek")?;
    let previous = config
        .previous_kek
        .iter()
        .enumerate()
        .map(|(index, kek)| open_kek(kek, config_path, &format!("previous_kek[{index}]")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let limits = CacheLimits {
        max_entries: config.key_cache.max_entries,
        max_age: Duration::from_secs(config.key_cache.max_age_secs),
    };
    Ok(KeyRing::new(current, previous, limits))
}

/// Creates the configured KEK where it lives, unless it exists: a sensitive, non-extractable
/// AES-256 key generated inside the HSM, or (development) a new key file. Returns what it did.
///
/// # Errors
/// If the backend cannot be reached or refuses.
pub fn create_kek(config: &Config, config_path: &Path) -> anyhow::Result<String> {
    match &config.kek {
        KekConfig::DangerLocalFile { path } => {
            if path.exists() {
                return Ok(format!("{} exists; left as it is", path.display()));
            }
            DangerLocalFileKek::create(path)?;
            Ok(format!("created {}", path.display()))
        }
        KekConfig::Pkcs11 { .. } => {
            let settings = pkcs11_settings(&config.kek, config_path, "kek")?;
            Pkcs11Kek::create_key(&settings)?;
            Ok(format!(
                "key {:?} is in token {:?} (generated there if it was missing)",
                settings.key_label, settings.token_label
            ))
        }
    }
}

fn pkcs11_settings(
    kek: &KekConfig,
    config_path: &Path,
    setting: &str,
) -> anyhow::Result<Pkcs11Settings> {
    let KekConfig::Pkcs11 {
        module,
        token_label,
        key_label,
        pin_file,
        pin_env,
    } = kek
    else {
        anyhow::bail!("{setting}: not a pkcs11 kek");
    };
    let pin = read_secret(
        config_path,
        &format!("{setting}.pin_file / {setting}.pin_env"),
        pin_file.as_deref(),
        pin_env.as_deref(),
    )?;
    Ok(Pkcs11Settings {
        module: module.clone(),
        token_label: token_label.clone(),
        pin: pin.as_str().to_owned().into(),
        key_label: key_label.clone(),
    })
}

fn open_kek(
    kek: &KekConfig,
    config_path: &Path,
    setting: &str,
) -> anyhow::Result<Arc<dyn KeyEncryptionKey>> {
    let opened: Arc<dyn KeyEncryptionKey> = match kek {
        KekConfig::DangerLocalFile { path } => {
            tracing::warn!(
                setting,
                path = %path.display(),
                "kek backend is danger-local-file: a key in a local file, not an HSM; for development only"
            );
            Arc::new(DangerLocalFileKek::open(path)?)
        }
        KekConfig::Pkcs11 { .. } => {
            let settings = pkcs11_settings(kek, config_path, setting)?;
            Arc::new(Pkcs11Kek::open(settings).with_context(|| setting.to_owned())?)
        }
    };
    tracing::info!(setting, kek = opened.name(), "kek opened");
    Ok(opened)
}
