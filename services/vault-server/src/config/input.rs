//! `[input]`: the card-number rule free-text input must pass.

use std::path::Path;

use serde::Deserialize;
use vault_core::pan::CardNumberRule;

use super::ConfigError;

/// `[input]`: the card-number rule every free-text field that is stored, logged or used as an
/// identity must pass (`vault_core::pan::CardNumberRule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// Digit groups separated by up to this many characters of any kind are read as one
    /// number (0 to 16).
    pub card_number_max_gap: usize,
}

impl Default for InputConfig {
    fn default() -> Self {
        Self {
            card_number_max_gap: CardNumberRule::DEFAULT_GAP,
        }
    }
}

impl InputConfig {
    /// The rule.
    #[must_use]
    pub fn rule(&self) -> CardNumberRule {
        CardNumberRule::new(self.card_number_max_gap).unwrap_or_default()
    }

    /// Checks the gap is within the rule's range.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the setting.
    pub(super) fn check(&self, file: &Path) -> Result<(), ConfigError> {
        if CardNumberRule::new(self.card_number_max_gap).is_none() {
            return Err(ConfigError::Invalid {
                path: file.to_owned(),
                setting: "input.card_number_max_gap".to_owned(),
                problem: format!("must be from 0 to {}", CardNumberRule::MAX_GAP),
            });
        }
        Ok(())
    }
}
