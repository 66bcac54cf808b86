//! `[tls]`: the server certificate and key, the client CA and its CRLs, and the limits on TLS
//! handshakes in progress.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, units};

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
    #[serde(default = "super::default_true")]
    pub refuse_stale_crls: bool,
    /// How long a client has to finish its TLS handshake (`handshake_timeout_ms`, from
    /// [`TlsConfig::MIN_HANDSHAKE_TIMEOUT`] to [`TlsConfig::MAX_HANDSHAKE_TIMEOUT`]).
    #[serde(
        rename = "handshake_timeout_ms",
        deserialize_with = "units::millis",
        default = "default_handshake_timeout"
    )]
    pub handshake_timeout: Duration,
    /// TLS handshakes in progress at once, from everyone; past it new connections are closed.
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: usize,
    /// TLS handshakes in progress that one source (an IPv4 address or an IPv6 /64) always gets;
    /// it gets more only while fewer than half of `max_handshakes` are in progress, so one host
    /// cannot take the whole of `max_handshakes`.
    #[serde(default = "default_max_handshakes_per_source")]
    pub max_handshakes_per_source: usize,
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(3)
}

fn default_max_handshakes() -> usize {
    512
}

fn default_max_handshakes_per_source() -> usize {
    16
}

impl TlsConfig {
    /// Shortest handshake deadline accepted.
    pub const MIN_HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(100);
    /// Longest handshake deadline accepted.
    pub const MAX_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

    /// The limits on handshakes in progress.
    #[must_use]
    pub fn handshake_limits(&self) -> HandshakeLimits {
        HandshakeLimits {
            timeout: self.handshake_timeout,
            max: self.max_handshakes,
            per_source: self.max_handshakes_per_source,
        }
    }

    pub(super) fn resolve_paths(&mut self, base: &Path) {
        for path in [&mut self.cert, &mut self.key, &mut self.client_ca] {
            *path = base.join(&*path);
        }
        for crl in &mut self.client_crls {
            *crl = base.join(&*crl);
        }
    }

    pub(super) fn check(&self, file: &Path) -> Result<(), ConfigError> {
        let invalid = |setting: &str, problem: String| ConfigError::Invalid {
            path: file.to_owned(),
            setting: setting.to_owned(),
            problem,
        };
        if !(Self::MIN_HANDSHAKE_TIMEOUT..=Self::MAX_HANDSHAKE_TIMEOUT)
            .contains(&self.handshake_timeout)
        {
            return Err(invalid(
                "tls.handshake_timeout_ms",
                format!(
                    "must be from {} to {}",
                    Self::MIN_HANDSHAKE_TIMEOUT.as_millis(),
                    Self::MAX_HANDSHAKE_TIMEOUT.as_millis()
                ),
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

/// Bounds on TLS handshakes in progress (`[tls]`): past `max` in all a new connection is closed
/// at once, so unauthenticated clients cannot pile up tasks and memory; and a source that has
/// `per_source` in progress gets more only while fewer than half of `max` are in progress, so
/// one host holding idle connections cannot lock everyone else out, yet a host that opens many
/// connections at once (a restarted gateway) is not refused while the vault is quiet.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeLimits {
    /// How long a client has to finish its handshake.
    pub timeout: Duration,
    /// Handshakes in progress at once, from everyone.
    pub max: usize,
    /// Handshakes in progress that one source (`crate::tls::Source`) always gets.
    pub per_source: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{BASE, STORAGE, load_text};

    #[test]
    fn handshake_limits_are_checked() {
        for (keys, setting) in [
            ("handshake_timeout_ms = 50\n", "tls.handshake_timeout_ms"),
            ("handshake_timeout_ms = 60001\n", "tls.handshake_timeout_ms"),
            ("max_handshakes = 0\n", "tls.max_handshakes"),
            (
                "max_handshakes = 4\nmax_handshakes_per_source = 5\n",
                "tls.max_handshakes_per_source",
            ),
        ] {
            let err = load_text(&with_tls(keys)).unwrap_err().to_string();
            assert!(err.contains(setting), "{keys}: {err}");
        }
        let config = load_text(&with_tls(
            "handshake_timeout_ms = 250\nmax_handshakes = 32\n",
        ));
        let limits = config.unwrap().tls.handshake_limits();
        assert_eq!(limits.timeout, Duration::from_millis(250));
        assert_eq!((limits.max, limits.per_source), (32, 16));
    }

    /// [`BASE`] and [`STORAGE`] with `keys` added to `[tls]`.
    fn with_tls(keys: &str) -> String {
        let base = BASE.replace("client_ca = \"c\"\n", &format!("client_ca = \"c\"\n{keys}"));
        format!("{base}{STORAGE}")
    }
}
