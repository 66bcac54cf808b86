//! `[dek]`: when merchants' DEKs rotate, by use count or age, and how many uses each replica
//! reserves at a time.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use vault_core::lifecycle::DekLimits;

use super::ConfigError;
use super::units::{self, DAY_SECS};

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
    /// Also rotate a DEK older than this (`rotate_after_days`; 0, the default, is `None`: no
    /// age limit). At most [`DekConfig::MAX_ROTATE_AFTER`].
    #[serde(
        rename = "rotate_after_days",
        deserialize_with = "units::days_or_never",
        default
    )]
    pub rotate_after: Option<Duration>,
    /// Uses each replica reserves from the store at a time (default 1024).
    #[serde(default = "default_lease")]
    pub lease: u64,
}

impl Default for DekConfig {
    fn default() -> Self {
        Self {
            rotate_after_uses: default_rotate_after_uses(),
            max_uses: default_max_uses(),
            rotate_after: None,
            lease: default_lease(),
        }
    }
}

impl DekConfig {
    /// The longest age limit accepted: a hundred years (36500 days).
    pub const MAX_ROTATE_AFTER: Duration = Duration::from_secs(36_500 * DAY_SECS);

    /// The domain's limits.
    #[must_use]
    pub fn limits(&self) -> DekLimits {
        DekLimits {
            rotate_after_uses: self.rotate_after_uses,
            max_uses: self.max_uses,
            rotate_after: self.rotate_after,
            lease: self.lease,
        }
    }

    pub(super) fn check(&self, file: &Path) -> Result<(), ConfigError> {
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
        if self
            .rotate_after
            .is_some_and(|age| age > Self::MAX_ROTATE_AFTER)
        {
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

#[cfg(test)]
mod tests {
    use crate::config::tests::refusal;

    #[test]
    fn use_limits_and_lease_are_checked() {
        for (table, setting) in [
            ("[dek]\nmax_uses = 4294967297\n", "dek.max_uses"),
            (
                "[dek]\nmax_uses = 10\nrotate_after_uses = 11\n",
                "dek.rotate_after_uses",
            ),
            ("[dek]\nlease = 0\n", "dek.lease"),
            (
                "[dek]\nrotate_after_days = 36501\n",
                "dek.rotate_after_days",
            ),
        ] {
            let err = refusal(table);
            assert!(err.contains(setting), "{table}: {err}");
        }
    }
}
