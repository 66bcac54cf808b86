//! Abuse limits: `[limits]` (per-replica call quotas, counted here with governor behind
//! `vault_core::limits::CallLimiter`) and `[guard]` (the enumeration guard and the new-merchant
//! cap, vault-wide: the domain decides, the store counts). docs/security.md explains both.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use serde::Deserialize;
use vault_core::guard::GuardSettings;
use vault_core::ids::{CallerId, MerchantId};
use vault_core::limits::{CallLimiter, LimitKey};
use vault_core::pan::{CardNumberRule, contains_card_number};
use vault_core::policy::Operation;
use vault_core::tokens::MAX_BATCH_CARDS;

use crate::config::ConfigError;

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
    const fn new(per_second: u32, burst: u32) -> Self {
        Self { per_second, burst }
    }

    fn quota(self) -> Option<Quota> {
        let rate = NonZeroU32::new(self.per_second)?;
        let burst = NonZeroU32::new(self.burst)?;
        Some(Quota::per_second(rate).allow_burst(burst))
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
    /// this many seconds; the others are counted into the next record.
    pub record_refusals_every_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            tokenize: RateQuota::new(10_000, 20_000),
            detokenize: RateQuota::new(100, 200),
            detokenize_per_merchant: RateQuota::new(20, 50),
            metadata: RateQuota::new(1_000, 2_000),
            delete: RateQuota::new(100, 200),
            keys_admin: RateQuota::new(5, 20),
            audit_read: RateQuota::new(10, 50),
            audit_prune: RateQuota::new(1, 5),
            ungranted: RateQuota::new(10, 20),
            record_refusals_every_secs: 60,
        }
    }
}

impl LimitsConfig {
    /// Longest refusal-recording interval.
    pub const MAX_RECORD_INTERVAL_SECS: u64 = 3_600;

    fn quotas(&self) -> [(&'static str, Option<Operation>, RateQuota); 9] {
        [
            ("tokenize", Some(Operation::Tokenize), self.tokenize),
            ("detokenize", Some(Operation::Detokenize), self.detokenize),
            (
                "detokenize_per_merchant",
                None,
                self.detokenize_per_merchant,
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
    pub fn check(&self, file: &Path) -> Result<(), ConfigError> {
        let invalid = |setting: &str, problem: &str| ConfigError::Invalid {
            path: file.to_owned(),
            setting: format!("limits.{setting}"),
            problem: problem.to_owned(),
        };
        for (name, _, quota) in self.quotas() {
            if quota.quota().is_none() {
                return Err(invalid(name, "per_second and burst must be at least 1"));
            }
        }
        if usize::try_from(self.tokenize.burst).unwrap_or(usize::MAX) < MAX_BATCH_CARDS {
            return Err(invalid(
                "tokenize.burst",
                "must be at least 1000 (a TokenizeBatch counts its cards)",
            ));
        }
        if self.record_refusals_every_secs == 0
            || self.record_refusals_every_secs > Self::MAX_RECORD_INTERVAL_SECS
        {
            return Err(invalid(
                "record_refusals_every_secs",
                "must be from 1 to 3600",
            ));
        }
        Ok(())
    }

    /// The refusal-recording interval.
    #[must_use]
    pub fn record_interval(&self) -> Duration {
        Duration::from_secs(self.record_refusals_every_secs)
    }
}

/// `[guard]`: the enumeration guard and the new-merchant cap, counted in the store and so
/// vault-wide (every replica shares them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardConfig {
    /// Distinct cards one caller may bring into one bucket (length, shown leading digits, last
    /// four; every merchant together) per window.
    pub cards_per_bucket: u64,
    /// The window, in seconds.
    pub window_secs: u64,
    /// Distinct cards of one bucket one request may carry; more spends the bucket at once.
    pub cards_per_bucket_per_batch: u64,
    /// New merchants one caller may create per hour, whatever its policy says.
    pub new_merchants_per_hour: u64,
}

impl Default for GuardConfig {
    fn default() -> Self {
        let d = GuardSettings::default();
        Self {
            cards_per_bucket: d.cards_per_bucket,
            window_secs: d.window.as_secs(),
            cards_per_bucket_per_batch: d.cards_per_bucket_per_batch,
            new_merchants_per_hour: d.new_merchants_per_hour,
        }
    }
}

impl GuardConfig {
    /// The domain's settings.
    #[must_use]
    pub fn settings(&self) -> GuardSettings {
        GuardSettings {
            cards_per_bucket: self.cards_per_bucket,
            window: Duration::from_secs(self.window_secs),
            cards_per_bucket_per_batch: self.cards_per_bucket_per_batch,
            new_merchants_per_hour: self.new_merchants_per_hour,
        }
    }

    /// Checks the settings are usable.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the setting.
    pub fn check(&self, file: &Path) -> Result<(), ConfigError> {
        let invalid = |setting: &str, problem: &str| ConfigError::Invalid {
            path: file.to_owned(),
            setting: format!("guard.{setting}"),
            problem: problem.to_owned(),
        };
        if self.cards_per_bucket == 0 || self.cards_per_bucket > 10_000 {
            return Err(invalid("cards_per_bucket", "must be from 1 to 10000"));
        }
        if !(60..=366 * 86_400).contains(&self.window_secs) {
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
        if self.new_merchants_per_hour == 0 {
            return Err(invalid("new_merchants_per_hour", "must be at least 1"));
        }
        Ok(())
    }
}

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
    pub fn check(&self, file: &Path) -> Result<(), ConfigError> {
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

/// What `vaultd` reports at start: merchant ids and identities in use that the card-number
/// rule refuses for new input. They stay usable (a merchant the store knows, an identity the
/// policy lists); the report names them by SHA-256 only, since they may hold a card number.
#[must_use]
pub fn card_like_in_use<'a>(
    policy_identities: impl IntoIterator<Item = &'a str>,
    policy_merchants: impl IntoIterator<Item = &'a str>,
    stored_merchants: impl IntoIterator<Item = &'a str>,
) -> Vec<(&'static str, String)> {
    let mut found = Vec::new();
    let mut check = |kind: &'static str, value: &str| {
        if contains_card_number(value) {
            let digest = vault_crypto::sha256(value.as_bytes());
            let hex = hex::encode(digest.get(..8).unwrap_or_default());
            found.push((kind, format!("sha256:{hex}")));
        }
    };
    for id in policy_identities {
        check("policy identity", id);
    }
    for id in policy_merchants {
        check("policy merchant", id);
    }
    for id in stored_merchants {
        check("stored merchant", id);
    }
    found
}

type Keyed<K, C> = RateLimiter<K, DashMapStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The configured quotas, counted with governor's GCRA per key, in this replica's memory.
pub struct GovernorLimiter<C: Clock = DefaultClock> {
    clock: C,
    per_operation: HashMap<Operation, Keyed<CallerId, C>>,
    ungranted: Option<Keyed<CallerId, C>>,
    per_merchant: HashMap<Operation, Keyed<(CallerId, MerchantId), C>>,
}

impl<C: Clock> std::fmt::Debug for GovernorLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GovernorLimiter")
            .field("operations", &self.per_operation.len())
            .finish_non_exhaustive()
    }
}

impl GovernorLimiter<DefaultClock> {
    /// Limits from `[limits]` on the real clock.
    #[must_use]
    pub fn new(config: &LimitsConfig) -> Self {
        Self::with_clock(config, DefaultClock::default())
    }
}

impl<C: Clock + Clone> GovernorLimiter<C> {
    /// Limits from `[limits]` on `clock` (tests pass governor's `FakeRelativeClock`). A quota
    /// that is not positive ([`LimitsConfig::check`] refuses those) limits nothing.
    #[must_use]
    pub fn with_clock(config: &LimitsConfig, clock: C) -> Self {
        let mut per_operation = HashMap::new();
        for (_, operation, quota) in config.quotas() {
            if let (Some(operation), Some(quota)) = (operation, quota.quota()) {
                per_operation.insert(
                    operation,
                    RateLimiter::dashmap_with_clock(quota, clock.clone()),
                );
            }
        }
        let mut per_merchant = HashMap::new();
        if let Some(quota) = config.detokenize_per_merchant.quota() {
            per_merchant.insert(
                Operation::Detokenize,
                RateLimiter::dashmap_with_clock(quota, clock.clone()),
            );
        }
        let ungranted = config
            .ungranted
            .quota()
            .map(|quota| RateLimiter::dashmap_with_clock(quota, clock.clone()));
        Self {
            clock,
            per_operation,
            ungranted,
            per_merchant,
        }
    }

    fn take<K: Clone + std::hash::Hash + Eq>(
        &self,
        limiter: &Keyed<K, C>,
        key: &K,
        n: u32,
    ) -> Result<(), Duration> {
        let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        match limiter.check_key_n(key, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(self.clock.now())),
            // More than the whole burst at once: it can never pass; say a second.
            Err(_) => Err(Duration::from_secs(1)),
        }
    }
}

impl<C> CallLimiter for GovernorLimiter<C>
where
    C: Clock + Clone + Send + Sync,
    C::Instant: Send + Sync,
{
    fn check(&self, key: LimitKey<'_>, n: u32) -> Result<(), Duration> {
        match key {
            LimitKey::Operation { caller, operation } => match self.per_operation.get(&operation) {
                Some(limiter) => self.take(limiter, caller, n),
                None => Ok(()),
            },
            LimitKey::Ungranted { caller } => match &self.ungranted {
                Some(limiter) => self.take(limiter, caller, n),
                None => Ok(()),
            },
            LimitKey::Merchant {
                caller,
                operation,
                merchant,
            } => match self.per_merchant.get(&operation) {
                Some(limiter) => self.take(limiter, &(caller.clone(), merchant.clone()), n),
                None => Ok(()),
            },
        }
    }

    fn forget_idle(&self) {
        for limiter in self.per_operation.values() {
            limiter.retain_recent();
        }
        for limiter in self.per_merchant.values() {
            limiter.retain_recent();
        }
        if let Some(limiter) = &self.ungranted {
            limiter.retain_recent();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limiter(clock: &FakeRelativeClock) -> GovernorLimiter<FakeRelativeClock> {
        let config = LimitsConfig {
            detokenize: RateQuota::new(10, 5),
            detokenize_per_merchant: RateQuota::new(2, 2),
            tokenize: RateQuota::new(1000, 1000),
            ..LimitsConfig::default()
        };
        GovernorLimiter::with_clock(&config, clock.clone())
    }

    fn op<'a>(caller: &'a CallerId, operation: Operation) -> LimitKey<'a> {
        LimitKey::Operation { caller, operation }
    }

    /// How many of `n` calls at one instant pass.
    fn passed(limiter: &GovernorLimiter<FakeRelativeClock>, key: LimitKey<'_>, n: u32) -> u32 {
        (0..n).filter(|_| limiter.check(key, 1).is_ok()).count() as u32
    }

    #[test]
    fn a_burst_then_the_sustained_rate_exactly() {
        let clock = FakeRelativeClock::default();
        let limiter = limiter(&clock);
        let caller = CallerId::new("spiffe://t/payments");
        let key = op(&caller, Operation::Detokenize);
        assert_eq!(passed(&limiter, key, 20), 5);
        // The refusal says when the next call fits: one emission interval (1/10 s).
        let wait = limiter.check(key, 1).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        clock.advance(Duration::from_millis(100));
        assert_eq!(passed(&limiter, key, 20), 1);
        // A second at 10 per second refills 10, capped at the burst of 5.
        clock.advance(Duration::from_secs(1));
        assert_eq!(passed(&limiter, key, 20), 5);
        // Thirty seconds of exactly the rate: every call passes.
        for _ in 0..300 {
            clock.advance(Duration::from_millis(100));
            assert!(limiter.check(key, 1).is_ok());
        }
    }

    #[test]
    fn one_callers_flood_never_eats_another_callers_quota() {
        let clock = FakeRelativeClock::default();
        let limiter = limiter(&clock);
        let flood = CallerId::new("spiffe://t/flood");
        let calm = CallerId::new("spiffe://t/calm");
        for _ in 0..100 {
            let flooded = passed(&limiter, op(&flood, Operation::Detokenize), 50);
            assert!(flooded <= 5);
            // Half the calm caller's rate: 5 a second, one every 200 ms.
            clock.advance(Duration::from_millis(200));
            assert!(limiter.check(op(&calm, Operation::Detokenize), 1).is_ok());
        }
    }

    #[test]
    fn calls_the_policy_grants_nowhere_share_one_small_quota() {
        let clock = FakeRelativeClock::default();
        let limiter = limiter(&clock);
        let caller = CallerId::new("spiffe://t/stranger");
        let key = LimitKey::Ungranted { caller: &caller };
        assert_eq!(passed(&limiter, key, 100), 20);
        clock.advance(Duration::from_secs(1));
        assert_eq!(passed(&limiter, key, 100), 10);
        // Its own quotas for operations it has are untouched.
        assert_eq!(passed(&limiter, op(&caller, Operation::Detokenize), 10), 5);
    }

    #[test]
    fn detokenize_is_limited_per_merchant_too() {
        let clock = FakeRelativeClock::default();
        let limiter = limiter(&clock);
        let caller = CallerId::new("spiffe://t/payments");
        let (m1, m2) = (
            MerchantId::parse("m", "m1").unwrap(),
            MerchantId::parse("m", "m2").unwrap(),
        );
        let at = |merchant| LimitKey::Merchant {
            caller: &caller,
            operation: Operation::Detokenize,
            merchant,
        };
        assert_eq!(passed(&limiter, at(&m1), 10), 2);
        assert_eq!(passed(&limiter, at(&m2), 10), 2);
        clock.advance(Duration::from_millis(500));
        assert_eq!(passed(&limiter, at(&m1), 10), 1);
    }

    #[test]
    fn a_batch_counts_its_cards() {
        let clock = FakeRelativeClock::default();
        let limiter = limiter(&clock);
        let gateway = CallerId::new("spiffe://t/gateway");
        let key = op(&gateway, Operation::Tokenize);
        assert!(limiter.check(key, 1000).is_ok());
        assert_eq!(limiter.check(key, 1).unwrap_err(), Duration::from_millis(1));
        clock.advance(Duration::from_millis(500));
        assert!(limiter.check(key, 600).is_err());
        assert!(limiter.check(key, 500).is_ok());
    }

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
        assert!(GuardConfig::default().check(file).is_ok());
        let guard = GuardConfig {
            cards_per_bucket_per_batch: 13,
            ..GuardConfig::default()
        };
        assert!(guard.check(file).is_err());
    }
}
