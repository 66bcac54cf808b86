//! `vaultd`'s configuration file (TOML) and the policy file it points to, one module per
//! section: [`storage`](StorageConfig), [`tls`](TlsConfig), [`kek`](KekConfig) and
//! `[[previous_kek]]`, [`key_cache`](KeyCacheConfig), [`dek`](DekConfig),
//! [`policy`](PolicyConfig) (and the policy file, [`load_policy`]), [`audit`](AuditConfig),
//! [`limits`](LimitsConfig), [`guard`](GuardConfig), [`input`](InputConfig),
//! [`forward`](ForwardConfig),
//! [`telemetry`](TelemetryConfig); `[identity]` is
//! `crate::identity::IdentityConfig`, beside the rules it sets.
//!
//! Each section is parsed into typed values where it is read (durations as `Duration`) and
//! checked next to its fields; a refused value names the file and the setting as the file
//! spells it (`tls.handshake_timeout_ms`), never a secret.
//!
//! Relative paths in either file are resolved against the directory of the file that names
//! them. Secrets never live in these files: they hold paths to key and certificate files, and
//! the files or environment variables that hold PINs, passwords and tokens.

mod audit;
mod dek;
pub mod env;
mod forward;
mod guard;
mod input;
mod kek;
mod key_cache;
mod limits;
mod policy;
mod storage;
mod telemetry;
mod tls;
mod units;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use audit::{AuditConfig, AuditSinkConfig};
pub use dek::DekConfig;
pub use forward::{ClientIdentityConfig, ForwardConfig};
pub use guard::GuardConfig;
pub use input::InputConfig;
pub use kek::{KekConfig, read_secret, secret_source};
pub use key_cache::KeyCacheConfig;
pub use limits::{LimitsConfig, RateQuota};
pub use policy::{LoadedPolicy, PolicyConfig, load_policy};
pub use storage::{StorageConfig, StorageUrl};
pub use telemetry::TelemetryConfig;
pub use tls::{HandshakeLimits, TlsConfig};

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

impl ConfigError {
    /// `setting` in `file` has a value the vault does not accept.
    pub(crate) fn invalid(
        file: &Path,
        setting: impl Into<String>,
        problem: impl Into<String>,
    ) -> Self {
        Self::Invalid {
            path: file.to_owned(),
            setting: setting.into(),
            problem: problem.into(),
        }
    }
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
    /// Per-replica call rate limits (`crate::limits`).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The enumeration guard and the new-merchant cap, vault-wide.
    #[serde(default)]
    pub guard: GuardConfig,
    /// Rules for free-text input.
    #[serde(default)]
    pub input: InputConfig,
    /// The forward proxy's client certificates.
    #[serde(default)]
    pub forward: ForwardConfig,
    /// How a client certificate names its caller (`identity.rs`).
    #[serde(default)]
    pub identity: crate::identity::IdentityConfig,
    /// Metrics, the readiness probe and traces.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
}

impl Config {
    /// Reads `path`, resolves relative paths against its directory and checks every section.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and setting at fault.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let vars = std::env::vars_os().filter_map(|(name, value)| {
            Some((name.into_string().ok()?, value.into_string().ok()?))
        });
        let mut config = Self::parse(path, &text, vars)?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.tls.resolve_paths(base);
        config.policy.resolve_paths(base);
        config.storage.resolve_password_file(base);
        config.audit.resolve_paths(base);
        config.forward.resolve_paths(base);
        config.forward.check(path)?;
        config.tls.check(path)?;
        config.dek.check(path)?;
        config.key_cache.check(path)?;
        config.audit.check(path)?;
        config.limits.check(path)?;
        config.guard.check(path)?;
        config.input.check(path)?;
        config.telemetry.check(path)?;
        config.kek.resolve_paths(base);
        for kek in &mut config.previous_kek {
            kek.resolve_paths(base);
        }
        config.storage.resolve_url(base, path)?;
        Ok(config)
    }

    /// The file's `text` with the `VAULTD_*` overrides among `vars` applied ([`env`]).
    fn parse(
        path: &Path,
        text: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let parsed = |source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        };
        let mut table: toml::Table = toml::from_str(text).map_err(parsed)?;
        let applied = env::apply(&mut table, vars, path)?;
        if applied.is_empty() {
            // From the text, so that an error points at its line.
            return toml::from_str(text).map_err(parsed);
        }
        table
            .try_into()
            .map_err(|source: toml::de::Error| ConfigError::Invalid {
                path: path.to_owned(),
                setting: format!("with {}", applied.join(", ")),
                // A type error quotes the value, which may be a variable's (a URL with a
                // password): the quoted parts go. Key names are quoted with backticks and stay.
                problem: env::without_values(source.message().trim_end()),
            })
    }

    /// The storage backend and its location ([`StorageConfig::url`]).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for a URL scheme the vault does not support, or a
    /// `password_file` beside a password in the URL or with SQLite.
    pub fn storage_url(&self, file: &Path) -> Result<StorageUrl, ConfigError> {
        self.storage.url(file)
    }
}

fn default_true() -> bool {
    true
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The smallest configuration the vault loads, without a `[storage]` table.
    pub(crate) const BASE: &str = "listen = \"127.0.0.1:0\"\n[tls]\ncert = \"a\"\nkey = \"b\"\n\
        client_ca = \"c\"\n[kek]\nbackend = \"danger-local-file\"\npath = \"k\"\n\
        [policy]\npath = \"p\"\n";

    /// A `[storage]` table for [`BASE`].
    pub(crate) const STORAGE: &str = "[storage]\nurl = \"sqlite:x\"\n";

    /// Loads a configuration file holding `text`.
    pub(crate) fn load_text(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        Config::load(&write(dir.path(), "vaultd.toml", text))
    }

    /// Loads [`BASE`] with `tables` added (a `[storage]` table among them).
    pub(crate) fn load_with(tables: &str) -> Result<Config, ConfigError> {
        load_text(&format!("{BASE}{tables}"))
    }

    /// The error loading [`BASE`] and [`STORAGE`] with `tables` added gives.
    pub(crate) fn refusal(tables: &str) -> String {
        match load_with(&format!("{STORAGE}{tables}")) {
            Ok(_) => panic!("loaded with {tables:?}"),
            Err(err) => err.to_string(),
        }
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
        assert_eq!(config.policy.path, dir.path().join("policy.toml"));
        assert!(
            matches!(&config.kek, KekConfig::DangerLocalFile { path } if *path == dir.path().join("kek.key"))
        );
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
        assert_eq!(policy.policy.identities().count(), 5);
    }

    #[test]
    fn durations_are_read_in_the_units_their_keys_name() {
        use std::time::Duration;
        let text = BASE.replace(
            "client_ca = \"c\"\n",
            "client_ca = \"c\"\nhandshake_timeout_ms = 1500\n",
        );
        let config = load_text(&format!(
            "{text}[storage]\nurl = \"sqlite:x\"\nconnect_timeout_ms = 250\n\
             statement_timeout_ms = 750\ncall_timeout_ms = 2000\n\
             [key_cache]\nmax_age_secs = 90\n[dek]\nrotate_after_days = 2\n\
             [audit]\ncheckpoint_interval_secs = 30\n[limits]\nrecord_refusals_every_secs = 5\n\
             [guard]\nwindow_secs = 3600\n"
        ))
        .unwrap();
        let ms = Duration::from_millis;
        let secs = Duration::from_secs;
        assert_eq!(config.tls.handshake_timeout, ms(1500));
        assert_eq!(config.storage.connect_timeout, ms(250));
        assert_eq!(config.storage.statement_timeout, ms(750));
        assert_eq!(config.storage.call_timeout, secs(2));
        assert_eq!(config.key_cache.limits().max_age, secs(90));
        assert_eq!(config.dek.limits().rotate_after, Some(secs(2 * 86_400)));
        assert_eq!(config.audit.checkpoint_interval, secs(30));
        assert_eq!(config.limits.record_refusals_every, secs(5));
        assert_eq!(config.guard.settings().window, secs(3600));

        // The defaults, and 0 days meaning no age limit.
        let config = load_with(&format!("{STORAGE}[dek]\nrotate_after_days = 0\n")).unwrap();
        assert_eq!(config.dek.limits().rotate_after, None);
        assert_eq!(config.storage.call_timeout, secs(5));
        assert_eq!(config.tls.handshake_timeout, secs(3));
        assert_eq!(config.audit.checkpoint_interval, secs(60));
        assert_eq!(config.limits.record_refusals_every, secs(60));
        let KekConfig::DangerLocalFile { .. } = config.kek else {
            panic!("{:?}", config.kek);
        };
        let transit = load_with(&format!(
            "{STORAGE}[[previous_kek]]\nbackend = \"transit\"\naddress = \"https://bao:8200\"\n\
             ca_cert = \"ca.pem\"\nkey = \"k\"\ntoken_env = \"T\"\ntimeout_ms = 1200\n"
        ))
        .unwrap();
        let [KekConfig::Transit { timeout, .. }] = transit.previous_kek.as_slice() else {
            panic!("{:?}", transit.previous_kek);
        };
        assert_eq!(*timeout, ms(1200));
    }

    #[test]
    fn environment_overrides_apply_before_the_checks_and_name_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "vaultd.toml", &format!("{BASE}{STORAGE}"));
        let text = std::fs::read_to_string(&file).unwrap();
        let vars = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let config = Config::parse(
            &file,
            &text,
            vars(&[
                ("VAULTD_LISTEN", "127.0.0.1:7000"),
                ("VAULTD_TELEMETRY__METRICS_LISTEN", "127.0.0.1:7001"),
                ("VAULTD_STORAGE__CALL_TIMEOUT_MS", "2500"),
            ]),
        )
        .unwrap();
        assert_eq!(config.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(
            config.telemetry.metrics_listen,
            Some("127.0.0.1:7001".parse().unwrap())
        );
        assert_eq!(
            config.storage.call_timeout,
            std::time::Duration::from_millis(2500)
        );
        let err = Config::parse(&file, &text, vars(&[("VAULTD_STORAGE__URLL", "x")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("VAULTD_STORAGE__URLL") && err.contains("urll"),
            "{err}"
        );
        // A value of the wrong type is not quoted back: it may hold a secret.
        let err = Config::parse(
            &file,
            &text,
            vars(&[(
                "VAULTD_STORAGE__MAX_CONNECTIONS",
                "postgres://u:hunter2@db/v",
            )]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("VAULTD_STORAGE__MAX_CONNECTIONS"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn unknown_settings_are_refused() {
        let err = load_with("[storage]\nurl = \"sqlite:x\"\nurll = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("urll"), "{err}");
        let err = refusal("[tls2]\n");
        assert!(err.contains("tls2"), "{err}");
    }
}
