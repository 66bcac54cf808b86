//! Call rate limits: the port the use cases ask ([`CallLimiter`]; `vault-server` counts with
//! governor, per replica) and the [`RefusalLog`] that keeps a flood of refused calls from
//! growing the audit trail without bound.
//!
//! The domain decides what is limited: every call per (caller, operation), a batch counting
//! its cards, and Detokenize also per (caller, merchant). The adapter holds the quotas and the
//! counters. A refused call is recorded in the audit trail, but per (caller, operation) at
//! most once per `interval`: the refusals in between are counted and the count goes into the
//! next record (the next recorded refusal, or a summary written by
//! [`crate::Vault::record_refusal_summaries`]). So a flooding caller adds at most its quotas'
//! worth of records plus one per operation per interval.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::ids::{CallerId, MerchantId};
use crate::policy::Operation;

/// What one call is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKey<'a> {
    /// The caller's quota for the operation.
    Operation {
        /// Who.
        caller: &'a CallerId,
        /// Which operation.
        operation: Operation,
    },
    /// The caller's quota for calls of operations its policy grants it nowhere (and calls
    /// of callers the certificate names no identity for): all refused, so a small quota.
    Ungranted {
        /// Who.
        caller: &'a CallerId,
    },
    /// The caller's quota for the operation at one merchant (Detokenize).
    Merchant {
        /// Who.
        caller: &'a CallerId,
        /// Which operation.
        operation: Operation,
        /// At which merchant.
        merchant: &'a MerchantId,
    },
}

/// Counts calls against quotas. Implementations count per replica and must not block.
pub trait CallLimiter: Send + Sync + std::fmt::Debug {
    /// Takes `n` units (calls, or a batch's cards) of `key`'s quota. `Err` carries how long
    /// until they could be taken; nothing is taken then.
    ///
    /// # Errors
    /// The wait, when the quota is spent.
    fn check(&self, key: LimitKey<'_>, n: u32) -> Result<(), Duration>;

    /// Forgets counters that are full again (their callers have been quiet): keeps memory
    /// bounded by the callers active lately.
    fn forget_idle(&self) {}
}

/// No limits: for tests of other behaviour and embedders that limit elsewhere. `vaultd`
/// always runs with its configured limits.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unlimited;

impl CallLimiter for Unlimited {
    fn check(&self, _key: LimitKey<'_>, _n: u32) -> Result<(), Duration> {
        Ok(())
    }
}

/// Whether to record a refused call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Record it; `unrecorded` refusals since `since` were counted but not recorded.
    Record {
        /// Refusals since the last record that were not recorded one by one.
        unrecorded: u64,
        /// When the last recorded one was.
        since: Option<OffsetDateTime>,
    },
    /// Count it only.
    Count,
}

#[derive(Debug, Clone, Copy)]
struct Period {
    started: Instant,
    started_at: OffsetDateTime,
    unrecorded: u64,
}

/// Rate-limit refusals per (caller, operation): the first of each interval is recorded, the
/// rest counted.
#[derive(Debug)]
pub struct RefusalLog {
    interval: Duration,
    periods: Mutex<HashMap<(CallerId, Operation), Period>>,
}

/// A summary of refusals that were counted but not recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnrecordedRefusals {
    /// Whose calls.
    pub caller: CallerId,
    /// Of which operation.
    pub operation: Operation,
    /// How many.
    pub count: u64,
    /// Since when.
    pub since: OffsetDateTime,
}

impl Default for RefusalLog {
    fn default() -> Self {
        Self::new(Duration::from_secs(60))
    }
}

impl RefusalLog {
    /// A log that records at most one refusal per (caller, operation) per `interval`.
    #[must_use]
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            periods: Mutex::default(),
        }
    }

    /// The interval.
    #[must_use]
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Notes a refusal of `caller`'s `operation` at `now` and says whether to record it.
    pub fn note(&self, caller: &CallerId, operation: Operation, now: Instant) -> Refusal {
        let mut periods = self.periods.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (caller.clone(), operation);
        match periods.get_mut(&key) {
            Some(period) if now.saturating_duration_since(period.started) < self.interval => {
                period.unrecorded = period.unrecorded.saturating_add(1);
                Refusal::Count
            }
            Some(period) => {
                let refusal = Refusal::Record {
                    unrecorded: period.unrecorded,
                    since: Some(period.started_at),
                };
                *period = Self::fresh(now);
                refusal
            }
            None => {
                periods.insert(key, Self::fresh(now));
                Refusal::Record {
                    unrecorded: 0,
                    since: None,
                }
            }
        }
    }

    /// Takes the counts of periods that ended by `now` (they get no later record to carry
    /// them), or of every period if `all` (the vault is stopping), forgetting those periods;
    /// periods with nothing unrecorded are just forgotten.
    pub fn take_ended(&self, now: Instant, all: bool) -> Vec<UnrecordedRefusals> {
        let mut periods = self.periods.lock().unwrap_or_else(PoisonError::into_inner);
        let mut ended = Vec::new();
        periods.retain(|(caller, operation), period| {
            if !all && now.saturating_duration_since(period.started) < self.interval {
                return true;
            }
            if period.unrecorded > 0 {
                ended.push(UnrecordedRefusals {
                    caller: caller.clone(),
                    operation: *operation,
                    count: period.unrecorded,
                    since: period.started_at,
                });
            }
            false
        });
        ended
    }

    fn fresh(now: Instant) -> Period {
        Period {
            started: now,
            started_at: crate::clock::now(),
            unrecorded: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn one_refusal_per_interval_is_recorded_and_the_rest_counted() {
        let log = RefusalLog::new(Duration::from_secs(60));
        let caller = CallerId::new("spiffe://t/flood");
        let t0 = Instant::now();
        let op = Operation::Detokenize;
        assert!(matches!(
            log.note(&caller, op, t0),
            Refusal::Record { unrecorded: 0, .. }
        ));
        for s in 1..60 {
            assert_eq!(
                log.note(&caller, op, t0 + Duration::from_secs(s)),
                Refusal::Count
            );
        }
        // Another operation, another caller: their own periods.
        assert!(matches!(
            log.note(&caller, Operation::Tokenize, t0),
            Refusal::Record { .. }
        ));
        let other = CallerId::new("spiffe://t/other");
        assert!(matches!(log.note(&other, op, t0), Refusal::Record { .. }));
        // The next interval's first refusal carries the count.
        assert!(matches!(
            log.note(&caller, op, t0 + Duration::from_secs(60)),
            Refusal::Record {
                unrecorded: 59,
                since: Some(_)
            }
        ));
    }

    #[test]
    fn ended_periods_hand_over_their_counts_once() {
        let log = RefusalLog::new(Duration::from_secs(60));
        let caller = CallerId::new("spiffe://t/flood");
        let t0 = Instant::now();
        log.note(&caller, Operation::Metadata, t0);
        log.note(&caller, Operation::Metadata, t0 + Duration::from_secs(1));
        log.note(&caller, Operation::Metadata, t0 + Duration::from_secs(2));
        assert!(
            log.take_ended(t0 + Duration::from_secs(59), false)
                .is_empty()
        );
        let ended = log.take_ended(t0 + Duration::from_secs(60), false);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].count, 2);
        assert!(
            log.take_ended(t0 + Duration::from_secs(120), true)
                .is_empty()
        );
        // After its period was taken, the caller's next refusal is recorded again.
        assert!(matches!(
            log.note(&caller, Operation::Metadata, t0 + Duration::from_secs(121)),
            Refusal::Record { unrecorded: 0, .. }
        ));
    }
}
