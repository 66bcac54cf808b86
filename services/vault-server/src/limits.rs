//! Abuse limits: the per-replica call quotas of `[limits]` (`config::LimitsConfig`), counted
//! here with governor behind `vault_core::limits::CallLimiter`, and the start-up report of ids
//! in use that the card-number rule of `[input]` refuses. The enumeration guard and the
//! new-merchant cap of `[guard]` are vault-wide: the domain decides, the store counts.
//! docs/security.md explains both.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use vault_core::ids::{CallerId, MerchantId};
use vault_core::limits::{CallLimiter, LimitKey};
use vault_core::pan::contains_card_number;
use vault_core::policy::Operation;

use crate::config::{LimitsConfig, RateQuota};

/// The governor quota of `quota`; `None` if it is not positive
/// ([`LimitsConfig`]'s check refuses those).
fn governor_quota(quota: RateQuota) -> Option<Quota> {
    let rate = NonZeroU32::new(quota.per_second)?;
    let burst = NonZeroU32::new(quota.burst)?;
    Some(Quota::per_second(rate).allow_burst(burst))
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
    /// that is not positive (`[limits]` refuses those at load) limits nothing.
    #[must_use]
    pub fn with_clock(config: &LimitsConfig, clock: C) -> Self {
        let mut per_operation = HashMap::new();
        for (_, operation, quota) in config.quotas() {
            if let (Some(operation), Some(quota)) = (operation, governor_quota(quota)) {
                per_operation.insert(
                    operation,
                    RateLimiter::dashmap_with_clock(quota, clock.clone()),
                );
            }
        }
        let mut per_merchant = HashMap::new();
        for (operation, quota) in [
            (Operation::Detokenize, config.detokenize_per_merchant),
            (Operation::Forward, config.forward_per_merchant),
        ] {
            if let Some(quota) = governor_quota(quota) {
                per_merchant.insert(
                    operation,
                    RateLimiter::dashmap_with_clock(quota, clock.clone()),
                );
            }
        }
        let ungranted = governor_quota(config.ungranted)
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
}
