//! `[key_cache]`: how many unwrapped keys are held and for how long.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use vault_core::keyring::CacheLimits;

use super::{ConfigError, units};

/// Limits of the cache of unwrapped keys (see `vault_core::keyring`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyCacheConfig {
    /// Most keys held at once; 0 turns the cache off (every call then asks the KEK).
    #[serde(default = "default_cache_entries")]
    pub max_entries: usize,
    /// How long a key is held after it was unwrapped (`max_age_secs`; at most
    /// [`KeyCacheConfig::MAX_AGE`]).
    #[serde(
        rename = "max_age_secs",
        deserialize_with = "units::secs",
        default = "default_cache_age"
    )]
    pub max_age: Duration,
}

impl KeyCacheConfig {
    /// The longest a key may stay cached: after a shred, other replicas may hold the merchant's
    /// keys this long, so it is bounded.
    pub const MAX_AGE: Duration = Duration::from_secs(3_600);

    /// The cache's limits.
    #[must_use]
    pub fn limits(&self) -> CacheLimits {
        CacheLimits {
            max_entries: self.max_entries,
            max_age: self.max_age,
        }
    }

    pub(super) fn check(&self, file: &Path) -> Result<(), ConfigError> {
        if self.max_age.is_zero() || self.max_age > Self::MAX_AGE {
            return Err(ConfigError::Invalid {
                path: file.to_owned(),
                setting: "key_cache.max_age_secs".to_owned(),
                problem: format!(
                    "must be from 1 to {} (use max_entries = 0 to turn the cache off)",
                    Self::MAX_AGE.as_secs()
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
            max_age: default_cache_age(),
        }
    }
}

fn default_cache_entries() -> usize {
    CacheLimits::default().max_entries
}

fn default_cache_age() -> Duration {
    CacheLimits::default().max_age
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{STORAGE, load_with, refusal};

    #[test]
    fn max_age_is_bounded_and_the_cache_may_be_off() {
        for table in [
            "[key_cache]\nmax_age_secs = 3601\n",
            "[key_cache]\nmax_age_secs = 0\n",
        ] {
            let err = refusal(table);
            assert!(err.contains("key_cache.max_age_secs"), "{table}: {err}");
        }
        let off = load_with(&format!(
            "{STORAGE}[key_cache]\nmax_age_secs = 3600\nmax_entries = 0\n"
        ));
        assert_eq!(off.unwrap().key_cache.max_entries, 0);
    }
}
