//! `[guard]`: the enumeration guard and the new-merchant cap, counted in the store and so
//! vault-wide (docs/security.md).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use vault_core::guard::GuardSettings;

use super::{ConfigError, units};

/// `[guard]`: the enumeration guard and the new-merchant cap, counted in the store and so
/// vault-wide (every replica shares them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardConfig {
    /// Distinct cards one caller may bring into one bucket (length, shown leading digits, last
    /// four; every merchant together) per window.
    pub cards_per_bucket: u64,
    /// The window (`window_secs`, from [`GuardConfig::MIN_WINDOW`] to
    /// [`GuardConfig::MAX_WINDOW`]).
    #[serde(rename = "window_secs", deserialize_with = "units::secs")]
    pub window: Duration,
    /// Distinct cards of one bucket one request may carry; more spends the bucket at once.
    pub cards_per_bucket_per_batch: u64,
    /// New merchants one caller may create per hour, whatever its policy says.
    pub new_merchants_per_hour: u64,
    /// Distinct tokens one caller may forward per hour, whatever the merchant.
    pub forwarded_tokens_per_hour: u64,
}

impl Default for GuardConfig {
    fn default() -> Self {
        let d = GuardSettings::default();
        Self {
            cards_per_bucket: d.cards_per_bucket,
            window: d.window,
            cards_per_bucket_per_batch: d.cards_per_bucket_per_batch,
            new_merchants_per_hour: d.new_merchants_per_hour,
            forwarded_tokens_per_hour: d.forwarded_tokens_per_hour,
        }
    }
}

impl GuardConfig {
    /// The shortest window accepted: a minute.
    pub const MIN_WINDOW: Duration = Duration::from_secs(60);
    /// The longest window accepted: 366 days.
    pub const MAX_WINDOW: Duration = Duration::from_secs(366 * 86_400);

    /// The domain's settings.
    #[must_use]
    pub fn settings(&self) -> GuardSettings {
        GuardSettings {
            cards_per_bucket: self.cards_per_bucket,
            window: self.window,
            cards_per_bucket_per_batch: self.cards_per_bucket_per_batch,
            new_merchants_per_hour: self.new_merchants_per_hour,
            forwarded_tokens_per_hour: self.forwarded_tokens_per_hour,
        }
    }

    /// Checks the settings are usable.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the setting.
    pub(super) fn check(&self, file: &Path) -> Result<(), ConfigError> {
        let invalid = |setting: &str, problem: &str| ConfigError::Invalid {
            path: file.to_owned(),
            setting: format!("guard.{setting}"),
            problem: problem.to_owned(),
        };
        if self.cards_per_bucket == 0 || self.cards_per_bucket > 10_000 {
            return Err(invalid("cards_per_bucket", "must be from 1 to 10000"));
        }
        if !(Self::MIN_WINDOW..=Self::MAX_WINDOW).contains(&self.window) {
            return Err(invalid("window_secs", "must be from 60 to 31622400"));
        }
        if self.cards_per_bucket_per_batch == 0
            || self.cards_per_bucket_per_batch > self.cards_per_bucket
        {
            return Err(invalid(
                "cards_per_bucket_per_batch",
                "must be from 1 to cards_per_bucket",
            ));
        }
        if self.forwarded_tokens_per_hour == 0 {
            return Err(invalid("forwarded_tokens_per_hour", "must be at least 1"));
        }
        if self.new_merchants_per_hour == 0 {
            return Err(invalid("new_merchants_per_hour", "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_refuses_a_batch_share_larger_than_the_bucket() {
        let file = Path::new("vaultd.toml");
        assert!(GuardConfig::default().check(file).is_ok());
        let guard = GuardConfig {
            cards_per_bucket_per_batch: 13,
            ..GuardConfig::default()
        };
        let err = guard.check(file).unwrap_err().to_string();
        assert!(err.contains("guard.cards_per_bucket_per_batch"), "{err}");
    }
}
