//! Opens the configured KEKs (`[kek]` and any `[[previous_kek]]`) as the domain's `KeyRing`.
//! A KEK that cannot be opened (module missing, wrong PIN, key absent or exportable) stops
//! `vaultd` at startup with the backend's message, which never holds the secret.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use vault_core::keyring::KeyRing;
use vault_core::ports::KeyEncryptionKey;
use vault_kms::{
    DEFAULT_APPROLE_MOUNT, DangerLocalFileKek, Pkcs11Kek, Pkcs11Settings, TransitAuth, TransitKek,
    TransitSettings,
};

use crate::config::{Config, ConfigError, KekConfig, read_secret, secret_source};

/// The key ring the configuration describes.
///
/// # Errors
/// If any configured KEK cannot be opened; the message names the setting.
pub async fn open_key_ring(config: &Config, config_path: &Path) -> anyhow::Result<KeyRing> {
    let current = open_kek(&config.kek, config_path, "kek").await?;
    let mut previous = Vec::with_capacity(config.previous_kek.len());
    for (index, kek) in config.previous_kek.iter().enumerate() {
        previous.push(open_kek(kek, config_path, &format!("previous_kek[{index}]")).await?);
    }
    Ok(KeyRing::new(current, previous, config.key_cache.limits()))
}

/// Creates the configured KEK where it lives, unless it exists: a sensitive, non-extractable
/// AES-256 key generated inside the HSM, or (development) a new key file. Returns what it did.
///
/// # Errors
/// If the backend cannot be reached or refuses.
pub async fn create_kek(config: &Config, config_path: &Path) -> anyhow::Result<String> {
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
        KekConfig::Transit { .. } => {
            let settings = transit_settings(&config.kek, config_path, "kek")?;
            TransitKek::create_key(&settings).await?;
            Ok(format!(
                "transit key {:?} exists at {}/{} (created there if it was missing)",
                settings.key, settings.address, settings.mount
            ))
        }
    }
}

/// Checks what a KEK's settings name without reaching it: a dev key file exists and is
/// private, a PKCS#11 module exists and its PIN can be read, a Transit CA certificate exists
/// and its token or AppRole ids can be read.
///
/// # Errors
/// The first problem, naming `setting`.
pub fn check_kek(kek: &KekConfig, config_path: &Path, setting: &str) -> anyhow::Result<()> {
    let missing = |key: &str, file: &Path| {
        anyhow::anyhow!(
            "{}: {setting}.{key}: {} is not a readable file",
            config_path.display(),
            file.display()
        )
    };
    match kek {
        KekConfig::DangerLocalFile { path } => {
            vault_kms::check_private(path)
                .map_err(|e| anyhow::anyhow!("{}: {setting}.path: {e}", config_path.display()))?;
        }
        KekConfig::Pkcs11 { module, .. } => {
            if !module.is_file() {
                return Err(missing("module", module));
            }
            pkcs11_settings(kek, config_path, setting)?;
        }
        KekConfig::Transit { ca_cert, .. } => {
            if std::fs::File::open(ca_cert).is_err() {
                return Err(missing("ca_cert", ca_cert));
            }
            let settings = transit_settings(kek, config_path, setting)?;
            let sources = match &settings.auth {
                TransitAuth::Token(token) => vec![("token_file / token_env", token)],
                TransitAuth::AppRole {
                    role_id, secret_id, ..
                } => vec![
                    ("role_id_file / role_id_env", role_id),
                    ("secret_id_file / secret_id_env", secret_id),
                ],
            };
            for (key, source) in sources {
                read_secret(config_path, &format!("{setting}.{key}"), source)?;
            }
        }
    }
    Ok(())
}

/// The backend's name as the file spells it.
#[must_use]
pub fn backend_name(kek: &KekConfig) -> &'static str {
    match kek {
        KekConfig::DangerLocalFile { .. } => "danger-local-file",
        KekConfig::Pkcs11 { .. } => "pkcs11",
        KekConfig::Transit { .. } => "transit",
    }
}

fn transit_settings(
    kek: &KekConfig,
    config_path: &Path,
    setting: &str,
) -> anyhow::Result<TransitSettings> {
    let KekConfig::Transit {
        address,
        ca_cert,
        mount,
        key,
        token_file,
        token_env,
        approle_mount,
        role_id_file,
        role_id_env,
        secret_id_file,
        secret_id_env,
        timeout,
    } = kek
    else {
        anyhow::bail!("{setting}: not a transit kek");
    };
    let invalid = |problem: &str| ConfigError::invalid(config_path, setting, problem);
    let source = |file: &Option<PathBuf>, env: &Option<String>| {
        secret_source(file.as_deref(), env.as_deref()).map_err(invalid)
    };
    let token = source(token_file, token_env)?;
    let role_id = source(role_id_file, role_id_env)?;
    let secret_id = source(secret_id_file, secret_id_env)?;
    let auth = match (token, role_id, secret_id) {
        (Some(token), None, None) => TransitAuth::Token(token),
        (None, Some(role_id), Some(secret_id)) => TransitAuth::AppRole {
            mount: approle_mount
                .clone()
                .unwrap_or_else(|| DEFAULT_APPROLE_MOUNT.to_owned()),
            role_id,
            secret_id,
        },
        _ => {
            return Err(invalid(
                "give either token_file/token_env, or both role_id and secret_id (AppRole)",
            )
            .into());
        }
    };
    let mut settings = TransitSettings::new(address.clone(), ca_cert.clone(), key.clone(), auth);
    settings.mount.clone_from(mount);
    settings.timeout = *timeout;
    Ok(settings)
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
    let pin_setting = format!("{setting}.pin_file / {setting}.pin_env");
    let invalid = |problem: &str| ConfigError::invalid(config_path, &pin_setting, problem);
    let source = secret_source(pin_file.as_deref(), pin_env.as_deref())
        .map_err(invalid)?
        .ok_or_else(|| invalid("give pin_file or pin_env"))?;
    Ok(Pkcs11Settings {
        module: module.clone(),
        token_label: token_label.clone(),
        pin: read_secret(config_path, &pin_setting, &source)?,
        key_label: key_label.clone(),
    })
}

async fn open_kek(
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
        KekConfig::Transit { .. } => {
            let settings = transit_settings(kek, config_path, setting)?;
            Arc::new(
                TransitKek::open(settings)
                    .await
                    .with_context(|| setting.to_owned())?,
            )
        }
    };
    tracing::info!(setting, kek = opened.name(), "kek opened");
    Ok(opened)
}
