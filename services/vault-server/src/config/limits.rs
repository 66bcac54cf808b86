//! `[limits]`: per-replica call quotas, per caller identity and operation (counted by
//! `crate::limits::GovernorLimiter`), and how often refused calls are recorded.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use vault_core::policy::Operation;
use vault_core::tokens::MAX_BATCH_CARDS;

use super::{ConfigError, units};

/// One quota: a sustained rate and the burst a quiet caller may spend at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateQuota {
    /// Calls (or, for tokenize, cards) per second, sustained.
    pub per_second: u32,
    /// Calls a caller that has been quiet may make at once.
    pub burst: u32,
}

impl RateQuota {
    /// `per_second` sustained, `burst` at once.
    #[must_use]
    pub const fn new(per_second: u32, burst: u32) -> Self {
        Self { per_second, burst }
    }

    /// Both the rate and the burst are at least 1 (a quota that is not limits nothing).
    #[must_use]
    pub fn is_positive(self) -> bool {
        self.per_second > 0 && self.burst > 0
    }
}

/// `[limits]`: per caller identity and operation, per replica (N replicas allow N times as
/// much). Defaults suit one gateway and one payments service per replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Tokenize, in cards (a TokenizeBatch counts its cards); the burst must hold a whole
    /// batch (1,000 cards).
    pub tokenize: RateQuota,
    /// Detokenize, per caller.
    pub detokenize: RateQuota,
    /// Detokenize, per caller and merchant: far tighter than tokenize.
    pub detokenize_per_merchant: RateQuota,
    /// Forward, per caller: each one sends a card out of the vault.
    pub forward: RateQuota,
    /// Forward, per caller and merchant.
    pub forward_per_merchant: RateQuota,
    /// DestinationAdminService calls.
    pub destinations_admin: RateQuota,
    /// GetTokenMetadata.
    pub metadata: RateQuota,
    /// DeleteToken.
    pub delete: RateQuota,
    /// KeyAdminService calls.
    pub keys_admin: RateQuota,
    /// AuditService reads, exports and public keys.
    pub audit_read: RateQuota,
    /// AuditService prunes.
    pub audit_prune: RateQuota,
    /// Calls of operations the policy grants the caller nowhere (all refused), and calls
    /// whose certificate names no identity: one quota for all of them per caller.
    pub ungranted: RateQuota,
    /// A refused call is recorded in the audit trail at most once per caller and operation per
    /// this long (`record_refusals_every_secs`, at most
    /// [`LimitsConfig::MAX_RECORD_INTERVAL`]); the others are counted into the next record.
    #[serde(
        rename = "record_refusals_every_secs",
        deserialize_with = "units::secs"
    )]
    pub record_refusals_every: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            tokenize: RateQuota::new(10_000, 20_000),
            detokenize: RateQuota::new(100, 200),
            detokenize_per_merchant: RateQuota::new(20, 50),
            forward: RateQuota::new(50, 100),
            forward_per_merchant: RateQuota::new(20, 50),
            destinations_admin: RateQuota::new(5, 20),
            metadata: RateQuota::new(1_000, 2_000),
            delete: RateQuota::new(100, 200),
            keys_admin: RateQuota::new(5, 20),
            audit_read: RateQuota::new(10, 50),
            audit_prune: RateQuota::new(1, 5),
            ungranted: RateQuota::new(10, 20),
            record_refusals_every: Duration::from_secs(60),
        }
    }
}

impl LimitsConfig {
    /// Longest refusal-recording interval.
    pub const MAX_RECORD_INTERVAL: Duration = Duration::from_secs(3_600);

    /// Each quota with its setting's name and the operation it counts (`None`: counted
    /// otherwise, per merchant or for ungranted calls).
    pub(crate) fn quotas(&self) -> [(&'static str, Option<Operation>, RateQuota); 12] {
        [
            ("tokenize", Some(Operation::Tokenize), self.tokenize),
            ("detokenize", Some(Operation::Detokenize), self.detokenize),
            (
                "detokenize_per_merchant",
                None,
                self.detokenize_per_merchant,
            ),
            ("forward", Some(Operation::Forward), self.forward),
            ("forward_per_merchant", None, self.forward_per_merchant),
            (
                "destinations_admin",
                Some(Operation::DestinationsAdmin),
                self.destinations_admin,
            ),
            ("metadata", Some(Operation::Metadata), self.metadata),
            ("delete", Some(Operation::Delete), self.delete),
            ("keys_admin", Some(Operation::KeysAdmin), self.keys_admin),
            ("audit_read", Some(Operation::AuditRead), self.audit_read),
            ("audit_prune", Some(Operation::AuditPrune), self.audit_prune),
            ("ungranted", None, self.ungranted),
        ]
    }

    /// Checks every quota is positive and tokenize's burst holds a whole batch.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the setting.
    pub(super) fn check(&self, file: &Path) -> Result<(), ConfigError> {
        let invalid = |setting: &str, problem: &str| ConfigError::Invalid {
            path: file.to_owned(),
            setting: format!("limits.{setting}"),
            problem: problem.to_owned(),
        };
        for (name, _, quota) in self.quotas() {
            if !quota.is_positive() {
                return Err(invalid(name, "per_second and burst must be at least 1"));
            }
        }
        if usize::try_from(self.tokenize.burst).unwrap_or(usize::MAX) < MAX_BATCH_CARDS {
            return Err(invalid(
                "tokenize.burst",
                "must be at least 1000 (a TokenizeBatch counts its cards)",
            ));
        }
        if self.record_refusals_every.is_zero()
            || self.record_refusals_every > Self::MAX_RECORD_INTERVAL
        {
            return Err(invalid(
                "record_refusals_every_secs",
                "must be from 1 to 3600",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_refuses_zero_quotas_and_a_burst_smaller_than_a_batch() {
        let file = Path::new("vaultd.toml");
        assert!(LimitsConfig::default().check(file).is_ok());
        let zero = LimitsConfig {
            metadata: RateQuota::new(0, 10),
            ..LimitsConfig::default()
        };
        assert!(
            zero.check(file)
                .unwrap_err()
                .to_string()
                .contains("limits.metadata")
        );
        let small = LimitsConfig {
            tokenize: RateQuota::new(100, 999),
            ..LimitsConfig::default()
        };
        assert!(
            small
                .check(file)
                .unwrap_err()
                .to_string()
                .contains("tokenize.burst")
        );
    }
}
