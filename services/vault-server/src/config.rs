//! `vaultd`'s configuration file (TOML) and the policy file it points to.
//!
//! Relative paths in either file are resolved against the directory of the file that names
//! them. Secrets never live in these files: they hold paths to key and certificate files.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;
use vault_core::ids::{CallerId, MerchantId};
use vault_core::lifecycle::DekLimits;
use vault_core::policy::{Grant, MerchantScope, Operation, Policy};
use vault_core::trail::AuditRetention;
use vault_kms::SecretSource;

use crate::identity::{IdentityConfig, is_spiffe_id, listable};

/// Why a configuration or policy file was refused. Messages name the file and the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for its schema.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        source: Box<toml::de::Error>,
    },
    /// A setting has a value the vault does not accept.
    #[error("{path}: {setting}: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The setting, as a TOML path.
        setting: String,
        /// What is wrong.
        problem: String,
    },
}

/// The server's configuration, as read from `vaultd.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Where tokens, keys and audit records live.
    pub storage: StorageConfig,
    /// The server certificate and the CA that client certificates must chain to.
    pub tls: TlsConfig,
    /// The key-encryption key: wraps every new key.
    pub kek: KekConfig,
    /// Earlier KEKs that still unwrap keys not yet rewrapped under `kek` (`vaultctl kek
    /// rewrap`). Never used to wrap; remove one once `vaultctl status` shows no key left to rewrap.
    #[serde(default)]
    pub previous_kek: Vec<KekConfig>,
    /// The cache of unwrapped keys.
    #[serde(default)]
    pub key_cache: KeyCacheConfig,
    /// When merchants' DEKs rotate.
    #[serde(default)]
    pub dek: DekConfig,
    /// The access policy file.
    pub policy: PolicyConfig,
    /// The audit trail's checkpoints.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Per-replica call rate limits (`limits.rs`).
    #[serde(default)]
    pub limits: crate::limits::LimitsConfig,
    /// The enumeration guard and the new-merchant cap, vault-wide (`limits.rs`).
    #[serde(default)]
    pub guard: crate::limits::GuardConfig,
    /// Rules for free-text input (`limits.rs`).
    #[serde(default)]
    pub input: crate::limits::InputConfig,
    /// How a client certificate names its caller (`identity.rs`).
    #[serde(default)]
    pub identity: crate::identity::IdentityConfig,
}

/// Audit trail settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Seconds between checkpoints of this writer's chain head (skipped while it has not
    /// moved). Records written since the last checkpoint are protected by the hash chain only,
    /// so this bounds what an undetected truncation of the newest records can remove.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval_secs: u64,
    /// Days records stay online (PCI DSS 10.5.1: at least three months): `vaultctl audit
    /// prune` never removes a younger record. From 90 to `retain_days`.
    #[serde(default = "default_online_days")]
    pub online_days: u32,
    /// Days an export must be kept (PCI DSS 10.5.1: at least twelve months); exports say until
    /// when. At least 365.
    #[serde(default = "default_retain_days")]
    pub retain_days: u32,
    /// Replaces `online_days` with no 90-day floor (0: anything exported may go at once). Not
    /// PCI compliant below 90; for tests. The vault warns at start when it is set.
    #[serde(default)]
    pub danger_online_days: Option<u32>,
    /// A second copy of every committed record for a SIEM (`[audit.sink]`), if wanted.
    #[serde(default)]
    pub sink: Option<AuditSinkConfig>,
}

/// `[audit.sink]`: JSON lines (the export's record lines) to standard output or a file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSinkConfig {
    /// `-` for standard output, else a file (relative to this file) records are appended to.
    pub path: String,
    /// If true, a record the sink cannot take fails its call (UNAVAILABLE; no PAN released),
    /// as the database's audit table does. If false, the failure is only logged.
    #[serde(default)]
    pub required: bool,
}

impl AuditConfig {
    /// The longest interval allowed.
    pub const MAX_CHECKPOINT_INTERVAL_SECS: u64 = 3_600;
    /// PCI DSS 10.5.1: the last three months immediately available.
    pub const MIN_ONLINE_DAYS: u32 = 90;
    /// PCI DSS 10.5.1: twelve months kept.
    pub const MIN_RETAIN_DAYS: u32 = 365;
    /// A hundred years.
    pub const MAX_RETAIN_DAYS: u32 = 36_500;

    fn check(&self, file: &Path) -> Result<(), ConfigError> {
        if self.checkpoint_interval_secs == 0
            || self.checkpoint_interval_secs > Self::MAX_CHECKPOINT_INTERVAL_SECS
        {
            return Err(ConfigError::Invalid {
                path: file.to_owned(),
                setting: "audit.checkpoint_interval_secs".to_owned(),
                problem: format!("must be from 1 to {}", Self::MAX_CHECKPOINT_INTERVAL_SECS),
            });
        }
        let invalid = |setting: &str, problem: String| ConfigError::Invalid {
            path: file.to_owned(),
            setting: setting.to_owned(),
            problem,
        };
        if self.retain_days < Self::MIN_RETAIN_DAYS || self.retain_days > Self::MAX_RETAIN_DAYS {
            return Err(invalid(
                "audit.retain_days",
                format!(
                    "must be from {} to {}",
                    Self::MIN_RETAIN_DAYS,
                    Self::MAX_RETAIN_DAYS
                ),
            ));
        }
        if self.online_days < Self::MIN_ONLINE_DAYS || self.online_days > self.retain_days {
            return Err(invalid(
                "audit.online_days",
                format!(
                    "must be from {} to audit.retain_days ({})",
                    Self::MIN_ONLINE_DAYS,
                    self.retain_days
                ),
            ));
        }
        if self
            .danger_online_days
            .is_some_and(|d| d > self.retain_days)
        {
            return Err(invalid(
                "audit.danger_online_days",
                format!("must not exceed audit.retain_days ({})", self.retain_days),
            ));
        }
        Ok(())
    }

    /// The retention rules the vault enforces.
    #[must_use]
    pub fn retention(&self) -> AuditRetention {
        AuditRetention {
            online_days: self.danger_online_days.unwrap_or(self.online_days),
            retain_days: self.retain_days,
        }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            checkpoint_interval_secs: default_checkpoint_interval(),
            online_days: default_online_days(),
            retain_days: default_retain_days(),
            danger_online_days: None,
            sink: None,
        }
    }
}

fn default_checkpoint_interval() -> u64 {
    60
}

fn default_online_days() -> u32 {
    AuditRetention::default().online_days
}

fn default_retain_days() -> u32 {
    AuditRetention::default().retain_days
}

/// Storage settings.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// A database URL: `sqlite:PATH` (relative to this file) or
    /// `postgres://user[:password]@host:port/db[?sslmode=verify-full&sslrootcert=ca.pem]`.
    pub url: String,
    /// PostgreSQL: connections per replica.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// PostgreSQL: how long a call waits for a connection before failing UNAVAILABLE.
    #[serde(default = "default_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// PostgreSQL: the server aborts statements (and lock waits) longer than this.
    #[serde(default = "default_timeout_ms")]
    pub statement_timeout_ms: u64,
    /// The longest one call may spend on the store in total (its operation and its audit
    /// record); past it the call fails UNAVAILABLE and releases nothing.
    #[serde(default = "default_timeout_ms")]
    pub call_timeout_ms: u64,
    /// PostgreSQL: apply pending migrations at startup (default). Set to false when migrations
    /// run ahead of a rollout with `vaultd migrate`.
    #[serde(default = "default_true")]
    pub migrate_on_start: bool,
    /// PostgreSQL: a file holding the password (one line; only its owner may read it), so the
    /// URL holds none.
    pub password_file: Option<PathBuf>,
}

impl std::fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageConfig")
            .field("url", &vault_store::redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("statement_timeout_ms", &self.statement_timeout_ms)
            .field("call_timeout_ms", &self.call_timeout_ms)
            .field("migrate_on_start", &self.migrate_on_start)
            .field("password_file", &self.password_file)
            .finish()
    }
}

fn default_max_connections() -> u32 {
    16
}

fn default_timeout_ms() -> u64 {
    5_000
}

fn default_true() -> bool {
    true
}

/// TLS settings: TLS 1.3 only, client certificates required.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server certificate chain, PEM.
    pub cert: PathBuf,
    /// The server private key, PEM.
    pub key: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to.
    pub client_ca: PathBuf,
    /// Certificate revocation lists (PEM) for the client CA: a client certificate a CRL lists
    /// is refused at the handshake. Re-read on SIGHUP and when a file changes.
    #[serde(default)]
    pub client_crls: Vec<PathBuf>,
    /// Refuse every client certificate a CRL past its nextUpdate covers (default true): a
    /// stale CRL may miss revocations, so the vault fails closed until a fresh one is in place.
    #[serde(default = "default_true")]
    pub refuse_stale_crls: bool,
    /// How long a client has to finish its TLS handshake, in milliseconds.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// TLS handshakes in progress at once, from everyone; past it new connections are closed.
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: usize,
    /// TLS handshakes in progress that one source (an IPv4 address or an IPv6 /64) always gets;
    /// it gets more only while fewer than half of `max_handshakes` are in progress, so one host
    /// cannot take the whole of `max_handshakes`.
    #[serde(default = "default_max_handshakes_per_source")]
    pub max_handshakes_per_source: usize,
}

fn default_handshake_timeout_ms() -> u64 {
    3_000
}

fn default_max_handshakes() -> usize {
    512
}

fn default_max_handshakes_per_source() -> usize {
    16
}

impl TlsConfig {
    /// Longest handshake deadline accepted.
    const MAX_HANDSHAKE_TIMEOUT_MS: u64 = 60_000;

    /// The limits on handshakes in progress.
    #[must_use]
    pub fn handshake_limits(&self) -> crate::tls::HandshakeLimits {
        crate::tls::HandshakeLimits {
            timeout: std::time::Duration::from_millis(self.handshake_timeout_ms),
            max: self.max_handshakes,
            per_source: self.max_handshakes_per_source,
        }
    }

    fn check(&self, file: &Path) -> Result<(), ConfigError> {
        let invalid = |setting: &str, problem: String| ConfigError::Invalid {
            path: file.to_owned(),
            setting: setting.to_owned(),
            problem,
        };
        if self.handshake_timeout_ms < 100
            || self.handshake_timeout_ms > Self::MAX_HANDSHAKE_TIMEOUT_MS
        {
            return Err(invalid(
                "tls.handshake_timeout_ms",
                format!("must be from 100 to {}", Self::MAX_HANDSHAKE_TIMEOUT_MS),
            ));
        }
        if self.max_handshakes == 0 {
            return Err(invalid(
                "tls.max_handshakes",
                "must be at least 1".to_owned(),
            ));
        }
        if self.max_handshakes_per_source == 0
            || self.max_handshakes_per_source > self.max_handshakes
        {
            return Err(invalid(
                "tls.max_handshakes_per_source",
                "must be from 1 to tls.max_handshakes".to_owned(),
            ));
        }
        Ok(())
    }
}

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
        /// How long one request may take, in milliseconds.
        #[serde(default = "default_transit_timeout_ms")]
        timeout_ms: u64,
    },
}

fn default_transit_mount() -> String {
    vault_kms::DEFAULT_MOUNT.to_owned()
}

fn default_transit_timeout_ms() -> u64 {
    u64::try_from(vault_kms::DEFAULT_TIMEOUT.as_millis()).unwrap_or(5_000)
}

impl KekConfig {
    fn resolve_paths(&mut self, base: &Path) {
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

/// Limits of the cache of unwrapped keys (see `vault_core::keyring`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyCacheConfig {
    /// Most keys held at once; 0 turns the cache off (every call then asks the KEK).
    #[serde(default = "default_cache_entries")]
    pub max_entries: usize,
    /// Seconds a key is held after it was unwrapped (at most [`KeyCacheConfig::MAX_AGE_SECS`]).
    #[serde(default = "default_cache_age")]
    pub max_age_secs: u64,
}

impl KeyCacheConfig {
    /// The longest a key may stay cached: after a shred, other replicas may hold the merchant's
    /// keys this long, so it is bounded.
    pub const MAX_AGE_SECS: u64 = 3_600;

    fn check(&self, file: &Path) -> Result<(), ConfigError> {
        if self.max_age_secs == 0 || self.max_age_secs > Self::MAX_AGE_SECS {
            return Err(ConfigError::Invalid {
                path: file.to_owned(),
                setting: "key_cache.max_age_secs".to_owned(),
                problem: format!(
                    "must be from 1 to {} (use max_entries = 0 to turn the cache off)",
                    Self::MAX_AGE_SECS
                ),
            });
        }
        Ok(())
    }
}

impl Default for KeyCacheConfig {
    fn default() -> Self {
        Self {
            max_entries: default_cache_entries(),
            max_age_secs: default_cache_age(),
        }
    }
}

fn default_cache_entries() -> usize {
    vault_core::keyring::CacheLimits::default().max_entries
}

fn default_cache_age() -> u64 {
    vault_core::keyring::CacheLimits::default()
        .max_age
        .as_secs()
}

/// DEK rotation limits (see `vault_core::lifecycle`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DekConfig {
    /// Rotate a merchant's DEK after this many encryptions (default 2^30).
    #[serde(default = "default_rotate_after_uses")]
    pub rotate_after_uses: u64,
    /// Never encrypt more often than this under one DEK version (default 2^31; at most 2^32,
    /// NIST SP 800-38D's limit for random nonces).
    #[serde(default = "default_max_uses")]
    pub max_uses: u64,
    /// Also rotate a DEK older than this many days (0, the default: no age limit).
    #[serde(default)]
    pub rotate_after_days: u64,
    /// Uses each replica reserves from the store at a time (default 1024).
    #[serde(default = "default_lease")]
    pub lease: u64,
}

impl Default for DekConfig {
    fn default() -> Self {
        Self {
            rotate_after_uses: default_rotate_after_uses(),
            max_uses: default_max_uses(),
            rotate_after_days: 0,
            lease: default_lease(),
        }
    }
}

impl DekConfig {
    /// The domain's limits.
    #[must_use]
    pub fn limits(&self) -> DekLimits {
        DekLimits {
            rotate_after_uses: self.rotate_after_uses,
            max_uses: self.max_uses,
            rotate_after: (self.rotate_after_days > 0)
                .then(|| std::time::Duration::from_secs(self.rotate_after_days * 86_400)),
            lease: self.lease,
        }
    }

    fn check(&self, file: &Path) -> Result<(), ConfigError> {
        let invalid = |setting: &str, problem: &str| ConfigError::Invalid {
            path: file.to_owned(),
            setting: format!("dek.{setting}"),
            problem: problem.to_owned(),
        };
        if self.max_uses == 0 || self.max_uses > DekLimits::NIST_GCM_LIMIT {
            return Err(invalid(
                "max_uses",
                "must be from 1 to 2^32 (NIST SP 800-38D, random-nonce AES-GCM)",
            ));
        }
        if self.rotate_after_uses == 0 || self.rotate_after_uses > self.max_uses {
            return Err(invalid(
                "rotate_after_uses",
                "must be from 1 to dek.max_uses",
            ));
        }
        if self.lease == 0 {
            return Err(invalid("lease", "must be at least 1"));
        }
        if self.rotate_after_days > 36_500 {
            return Err(invalid("rotate_after_days", "must be at most 36500"));
        }
        Ok(())
    }
}

fn default_rotate_after_uses() -> u64 {
    DekLimits::default().rotate_after_uses
}

fn default_max_uses() -> u64 {
    DekLimits::default().max_uses
}

fn default_lease() -> u64 {
    DekLimits::default().lease
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
    source.read().map_err(|e| ConfigError::Invalid {
        path: config_file.to_owned(),
        setting: setting.to_owned(),
        problem: e.to_string(),
    })
}

/// Where the policy lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The policy file (TOML).
    pub path: PathBuf,
}

/// The storage backend a URL selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageUrl {
    /// An SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL URL.
    Postgres(String),
}

impl Config {
    /// Reads `path` and resolves relative paths against its directory.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and setting at fault.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: Self = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.tls.cert = base.join(&config.tls.cert);
        config.tls.key = base.join(&config.tls.key);
        config.tls.client_ca = base.join(&config.tls.client_ca);
        for crl in &mut config.tls.client_crls {
            *crl = base.join(&*crl);
        }
        config.policy.path = base.join(&config.policy.path);
        if let Some(file) = config.storage.password_file.as_mut() {
            *file = base.join(&*file);
        }
        if let Some(sink) = config.audit.sink.as_mut()
            && sink.path != "-"
        {
            sink.path = base.join(&sink.path).display().to_string();
        }
        config.tls.check(path)?;
        config.dek.check(path)?;
        config.key_cache.check(path)?;
        config.audit.check(path)?;
        config.limits.check(path)?;
        config.guard.check(path)?;
        config.input.check(path)?;
        config.kek.resolve_paths(base);
        for kek in &mut config.previous_kek {
            kek.resolve_paths(base);
        }
        match config.storage_url(path)? {
            StorageUrl::Sqlite(db) => {
                config.storage.url = format!("sqlite:{}", base.join(db).display());
            }
            StorageUrl::Postgres(_) => {}
        }
        Ok(config)
    }

    /// The storage backend and its location.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for a URL scheme the vault does not support, or a
    /// `password_file` beside a password in the URL or with SQLite.
    pub fn storage_url(&self, file: &Path) -> Result<StorageUrl, ConfigError> {
        let url = self.storage.url.as_str();
        let invalid = |setting: &str, problem: &str| ConfigError::Invalid {
            path: file.to_owned(),
            setting: setting.to_owned(),
            problem: problem.to_owned(),
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            if self.storage.password_file.is_some() && vault_store::redact_url(url) != url {
                return Err(invalid(
                    "storage.password_file",
                    "the URL holds a password too: give it in one place",
                ));
            }
            return Ok(StorageUrl::Postgres(url.to_owned()));
        }
        if self.storage.password_file.is_some() {
            return Err(invalid(
                "storage.password_file",
                "is for PostgreSQL; an SQLite database has no password",
            ));
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"));
        match path {
            Some(path) if !path.is_empty() => Ok(StorageUrl::Sqlite(PathBuf::from(path))),
            _ => Err(invalid(
                "storage.url",
                "must be sqlite:PATH or postgres://…",
            )),
        }
    }
}

/// The policy file's shape.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    caller: Vec<CallerEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallerEntry {
    identity: String,
    operations: Vec<String>,
    merchants: Vec<String>,
}

/// Reads a policy file: a list of `[[caller]]` tables, each with `identity` (SPIFFE ID or CN),
/// `operations` and `merchants` (`["*"]` for all). Identities not listed may do nothing.
///
/// # Errors
/// [`ConfigError`] for unknown operations, malformed merchant ids, duplicate identities, and
/// identities no certificate could name under `rules` (`identity::listable`; without
/// `cn_fallback`, anything but a SPIFFE ID).
pub fn load_policy(path: &Path, rules: IdentityConfig) -> Result<Policy, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let file: PolicyFile = toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source: Box::new(source),
    })?;
    let invalid = |index: usize, key: &str, problem: String| ConfigError::Invalid {
        path: path.to_owned(),
        setting: format!("caller[{index}].{key}"),
        problem,
    };
    let mut grants = BTreeMap::new();
    for (index, entry) in file.caller.into_iter().enumerate() {
        listable(&entry.identity)
            .map_err(|problem| invalid(index, "identity", problem.to_owned()))?;
        if !rules.cn_fallback && !is_spiffe_id(&entry.identity) {
            return Err(invalid(
                index,
                "identity",
                "must be a SPIFFE ID: [identity] cn_fallback = false, so no certificate can name \
                 a caller by its CN"
                    .to_owned(),
            ));
        }
        let mut operations = BTreeSet::new();
        for name in &entry.operations {
            let op = Operation::from_name(name).ok_or_else(|| {
                let known: Vec<_> = Operation::ALL.iter().map(|op| op.as_str()).collect();
                invalid(
                    index,
                    "operations",
                    format!("unknown operation {name:?}; known: {}", known.join(", ")),
                )
            })?;
            operations.insert(op);
        }
        let merchants = if entry.merchants.iter().any(|m| m == "*") {
            if entry.merchants.len() != 1 {
                return Err(invalid(
                    index,
                    "merchants",
                    "\"*\" must stand alone".to_owned(),
                ));
            }
            MerchantScope::Any
        } else {
            let mut only = BTreeSet::new();
            for m in &entry.merchants {
                only.insert(
                    // Shape only: an id the card-number rule refuses may name a merchant
                    // from before the rule tightened; vaultd reports it at start.
                    MerchantId::parse_shape("merchants", m)
                        .map_err(|e| invalid(index, "merchants", e.problem.to_owned()))?,
                );
            }
            MerchantScope::Only(only)
        };
        let identity = CallerId::new(entry.identity);
        if grants
            .insert(
                identity.clone(),
                Grant {
                    operations,
                    merchants,
                },
            )
            .is_some()
        {
            // Not the identity itself: it may be one the card-number rule refuses.
            return Err(invalid(index, "identity", "is listed twice".to_owned()));
        }
    }
    Ok(Policy::new(grants))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn config_resolves_paths_against_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "vaultd.toml",
            r#"
listen = "127.0.0.1:0"
[storage]
url = "sqlite:vault.db"
[tls]
cert = "pki/server.pem"
key = "pki/server.key"
client_ca = "/etc/ca.pem"
[kek]
backend = "danger-local-file"
path = "kek.key"
[policy]
path = "policy.toml"
"#,
        );
        let config = Config::load(&path).unwrap();
        assert_eq!(config.tls.cert, dir.path().join("pki/server.pem"));
        assert_eq!(config.tls.client_ca, PathBuf::from("/etc/ca.pem"));
        assert_eq!(
            config.storage_url(&path).unwrap(),
            StorageUrl::Sqlite(dir.path().join("vault.db"))
        );
    }

    #[test]
    fn the_production_example_loads_with_spiffe_ids_only() {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
        let config = Config::load(&deploy.join("vaultd.production.toml")).unwrap();
        assert!(!config.identity.cn_fallback);
        assert!(config.tls.refuse_stale_crls && !config.tls.client_crls.is_empty());
        assert!(config.storage.password_file.is_some());
        assert!(matches!(
            config.storage_url(&deploy).unwrap(),
            StorageUrl::Postgres(_)
        ));
        let policy = load_policy(&config.policy.path, config.identity).unwrap();
        assert_eq!(policy.identities().count(), 5);
    }

    #[test]
    fn unknown_settings_and_schemes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base = "listen = \"127.0.0.1:0\"\n[tls]\ncert = \"a\"\nkey = \"b\"\nclient_ca = \"c\"\n\
                    [kek]\nbackend = \"danger-local-file\"\npath = \"k\"\n[policy]\npath = \"p\"\n";
        let typo = write(
            dir.path(),
            "typo.toml",
            &format!("{base}[storage]\nurl = \"sqlite:x\"\nurll = 1\n"),
        );
        assert!(Config::load(&typo).is_err());
        let scheme = write(
            dir.path(),
            "scheme.toml",
            &format!("{base}[storage]\nurl = \"mysql://x\"\n"),
        );
        let err = Config::load(&scheme).unwrap_err().to_string();
        assert!(err.contains("storage.url"), "{err}");

        let storage = "[storage]\nurl = \"sqlite:x\"\n";
        for (table, setting) in [
            (
                "[key_cache]\nmax_age_secs = 3601\n",
                "key_cache.max_age_secs",
            ),
            ("[key_cache]\nmax_age_secs = 0\n", "key_cache.max_age_secs"),
            ("[dek]\nmax_uses = 4294967297\n", "dek.max_uses"),
            (
                "[dek]\nmax_uses = 10\nrotate_after_uses = 11\n",
                "dek.rotate_after_uses",
            ),
            ("[dek]\nlease = 0\n", "dek.lease"),
            ("[audit]\nonline_days = 30\n", "audit.online_days"),
            (
                "[audit]\nonline_days = 400\nretain_days = 365\n",
                "audit.online_days",
            ),
            ("[audit]\nretain_days = 364\n", "audit.retain_days"),
            ("[audit]\nretain_days = 4000000\n", "audit.retain_days"),
            (
                "[audit]\ndanger_online_days = 366\n",
                "audit.danger_online_days",
            ),
        ] {
            let file = write(
                dir.path(),
                "limits.toml",
                &format!("{base}{storage}{table}"),
            );
            let err = Config::load(&file).unwrap_err().to_string();
            assert!(err.contains(setting), "{table}: {err}");
        }
        for (tls, setting) in [
            ("handshake_timeout_ms = 50\n", "tls.handshake_timeout_ms"),
            ("max_handshakes = 0\n", "tls.max_handshakes"),
            (
                "max_handshakes = 4\nmax_handshakes_per_source = 5\n",
                "tls.max_handshakes_per_source",
            ),
        ] {
            let text = base.replace("client_ca = \"c\"\n", &format!("client_ca = \"c\"\n{tls}"));
            let file = write(dir.path(), "tls.toml", &format!("{text}{storage}"));
            let err = Config::load(&file).unwrap_err().to_string();
            assert!(err.contains(setting), "{tls}: {err}");
        }
        let fine = write(
            dir.path(),
            "fine.toml",
            &format!("{base}{storage}[key_cache]\nmax_age_secs = 3600\nmax_entries = 0\n"),
        );
        assert!(Config::load(&fine).is_ok());
        let audit = write(
            dir.path(),
            "audit.toml",
            &format!("{base}{storage}[audit]\nonline_days = 120\ndanger_online_days = 0\n"),
        );
        let retention = Config::load(&audit).unwrap().audit.retention();
        assert_eq!((retention.online_days, retention.retain_days), (0, 365));
    }

    #[test]
    fn policy_parses_and_refuses_mistakes() {
        let dir = tempfile::tempdir().unwrap();
        let good = write(
            dir.path(),
            "good.toml",
            r#"
[[caller]]
identity = "spiffe://vault.test/gateway"
operations = ["tokenize", "metadata"]
merchants = ["*"]

[[caller]]
identity = "payments"
operations = ["detokenize"]
merchants = ["m1", "m2"]
"#,
        );
        let policy = load_policy(&good, IdentityConfig::default()).unwrap();
        let m1 = MerchantId::parse("m", "m1").unwrap();
        let m3 = MerchantId::parse("m", "m3").unwrap();
        assert!(policy.allows(&CallerId::new("payments"), Operation::Detokenize, &m1));
        assert!(!policy.allows(&CallerId::new("payments"), Operation::Detokenize, &m3));

        for (name, text, expect) in [
            (
                "op.toml",
                "[[caller]]\nidentity = \"a\"\noperations = [\"detokenise\"]\nmerchants = [\"*\"]\n",
                "unknown operation",
            ),
            (
                "dup.toml",
                "[[caller]]\nidentity = \"a\"\noperations = []\nmerchants = [\"*\"]\n[[caller]]\nidentity = \"a\"\noperations = []\nmerchants = [\"*\"]\n",
                "listed twice",
            ),
            (
                "star.toml",
                "[[caller]]\nidentity = \"a\"\noperations = []\nmerchants = [\"*\", \"m1\"]\n",
                "stand alone",
            ),
            (
                "space.toml",
                "[[caller]]\nidentity = \"payments \"\noperations = []\nmerchants = [\"*\"]\n",
                "caller[0].identity: must not begin or end with a space",
            ),
            (
                "reserved.toml",
                "[[caller]]\nidentity = \"VaultD\"\noperations = []\nmerchants = [\"*\"]\n",
                "caller[0].identity: is a name the vault records its own events",
            ),
            (
                "spiffe.toml",
                "[[caller]]\nidentity = \"SPIFFE://vault.test/x\"\noperations = []\nmerchants = [\"*\"]\n",
                "caller[0].identity: is not a SPIFFE ID",
            ),
        ] {
            let path = write(dir.path(), name, text);
            let err = load_policy(&path, IdentityConfig::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(expect), "{err}");
        }
        // Without the CN fallback, a CN in the policy could never be named.
        let err = load_policy(&good, IdentityConfig { cn_fallback: false })
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("caller[1].identity: must be a SPIFFE ID"),
            "{err}"
        );
    }
}
