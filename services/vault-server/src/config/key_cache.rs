//! `[key_cache]`: how many unwrapped keys are held and for how long.

use std::path::Path;

use serde::Deserialize;

use super::ConfigError;

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

    pub(super) fn check(&self, file: &Path) -> Result<(), ConfigError> {
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
