//! The audited call: what every use case shares. A call is counted against the caller's
//! quota, authorized against the policy, and concluded by writing its one audit record (or
//! finding it already written with the data); if the record cannot be written, nothing is
//! released (fail closed). A call refused by a rate limit is recorded once per caller,
//! operation and interval, the rest counted ([`RefusalLog`]).

use std::sync::{Arc, PoisonError, RwLock};

use crate::audit::AuditRecord;
use crate::error::{Throttle, VaultError};
use crate::ids::{CallContext, MerchantId};
use crate::limits::{CallLimiter, LimitKey, Refusal, RefusalLog};
use crate::pan::CARD_LIKE;
use crate::policy::{Operation, Policy};
use crate::ports::TokenStore;
use crate::spans;

/// A use case's result, and whether its audit record is already durable (written in the same
/// transaction as the data) or still to be written.
pub(crate) struct Done<T> {
    value: T,
    audited: bool,
}

impl<T> Done<T> {
    pub(crate) fn audited(value: T) -> Self {
        Self {
            value,
            audited: true,
        }
    }

    pub(crate) fn pending(value: T) -> Self {
        Self {
            value,
            audited: false,
        }
    }
}

/// The policy in force, shared by every service and swapped whole by a reload.
#[derive(Debug)]
pub(crate) struct CurrentPolicy(RwLock<Arc<Policy>>);

impl CurrentPolicy {
    pub(crate) fn new(policy: Arc<Policy>) -> Self {
        Self(RwLock::new(policy))
    }

    /// The policy in force now.
    pub(crate) fn get(&self) -> Arc<Policy> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn replace(&self, policy: Arc<Policy>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = policy;
    }
}

/// The audited-call helper the services share: the store the records go to, the policy, the
/// call limiter and the refusal log.
#[derive(Clone)]
pub(crate) struct Audited {
    store: Arc<dyn TokenStore>,
    policy: Arc<CurrentPolicy>,
    limiter: Arc<dyn CallLimiter>,
    refusals: Arc<RefusalLog>,
}

impl Audited {
    pub(crate) fn new(
        store: Arc<dyn TokenStore>,
        policy: Arc<CurrentPolicy>,
        limiter: Arc<dyn CallLimiter>,
        refusals: Arc<RefusalLog>,
    ) -> Self {
        Self {
            store,
            policy,
            limiter,
            refusals,
        }
    }

    /// Makes `audit` durable, inside its `audit.write` span.
    async fn append(&self, audit: &AuditRecord) -> Result<(), crate::StoreError> {
        spans::step(spans::audit_write(), self.store.append_audit(audit)).await
    }

    /// The access policy in force.
    pub(crate) fn policy(&self) -> Arc<Policy> {
        self.policy.get()
    }

    /// Puts `policy` in force once its `policy.reload` record (`detail`: its digest) is
    /// durable; if the record cannot be written, the policy in force stays.
    pub(crate) async fn replace_policy(
        &self,
        policy: Arc<Policy>,
        detail: String,
    ) -> Result<(), VaultError> {
        let audit = AuditRecord::system(crate::audit::Event::PolicyReload, detail);
        self.append(&audit)
            .await
            .map_err(VaultError::AuditUnavailable)?;
        self.policy.replace(policy);
        Ok(())
    }

    /// Records a reload that kept the policy in force (`detail` says why, without the file's
    /// contents).
    pub(crate) async fn record_policy_kept(&self, detail: String) -> Result<(), VaultError> {
        self.record_reload(crate::audit::Event::PolicyReload, detail, false)
            .await
    }

    /// Records a reload of the vault's own settings (`event`), in force (`applied`) or refused
    /// (outcome `failed_precondition`); `detail` names digests, never contents.
    pub(crate) async fn record_reload(
        &self,
        event: crate::audit::Event,
        detail: String,
        applied: bool,
    ) -> Result<(), VaultError> {
        let mut audit = AuditRecord::system(event, detail);
        if !applied {
            audit.outcome = crate::audit::Outcome::FailedPrecondition;
        }
        self.append(&audit)
            .await
            .map_err(VaultError::AuditUnavailable)
    }

    /// The call limiter (for its housekeeping).
    pub(crate) fn limiter(&self) -> &Arc<dyn CallLimiter> {
        &self.limiter
    }

    /// Authorizes a vault-wide call (one not limited to a merchant): counted, then checked
    /// against the policy for every merchant.
    pub(crate) fn authorize_everywhere(
        &self,
        audit: &AuditRecord,
        operation: Operation,
    ) -> Result<(), VaultError> {
        self.throttle(audit, operation, None, 1)?;
        if self
            .policy
            .get()
            .allows_everywhere(&audit.caller, operation)
        {
            Ok(())
        } else {
            Err(VaultError::PermissionDenied { operation })
        }
    }

    /// Writes one audit record for each caller and operation whose rate-limit refusals were
    /// counted but not recorded and whose recording interval has ended (every one, if
    /// `stopping`). `vaultd` calls it once per interval and at shutdown. Returns how many
    /// records it wrote.
    ///
    /// # Errors
    /// The store's first, if a record cannot be written (that summary's count is lost, the
    /// others are still written; the refusals were answered already).
    pub async fn record_refusal_summaries(&self, stopping: bool) -> Result<usize, VaultError> {
        let ended = self
            .refusals
            .take_ended(std::time::Instant::now(), stopping);
        let mut failed = None;
        for summary in &ended {
            let ctx = CallContext {
                caller: summary.caller.clone(),
                peer: None,
                request_id: crate::ids::new_request_id(),
            };
            let mut audit =
                AuditRecord::begin(&ctx, summary.operation).failed(&VaultError::Throttled {
                    limit: Throttle::RateLimit,
                    retry_after: std::time::Duration::ZERO,
                });
            audit.peer = Some(crate::audit::VAULTD.to_owned());
            audit.detail = Some(
                format!(
                    "rate limit: {} refused calls since {} not recorded one by one",
                    summary.count,
                    crate::clock::stamp(summary.since)
                )
                .into(),
            );
            // One failed write must not lose the other summaries: try each, report the first.
            if let Err(error) = self.append(&audit).await
                && failed.is_none()
            {
                failed = Some(error);
            }
        }
        match failed {
            Some(error) => Err(error.into()),
            None => Ok(ended.len()),
        }
    }

    /// Records a summary of connections refused before any caller was identified (`detail`
    /// names the reasons, counts and top sources; it holds no request data), as the vault's own
    /// `tls.refused` event with outcome `unauthenticated`.
    ///
    /// # Errors
    /// The store's, if the record cannot be written.
    pub async fn record_front_door_refusals(&self, detail: String) -> Result<(), VaultError> {
        let mut audit = AuditRecord::system(crate::audit::Event::TlsRefused, detail);
        audit.outcome = crate::audit::Outcome::Unauthenticated;
        self.append(&audit).await.map_err(Into::into)
    }

    /// Counts `n` units of `operation` (calls, or a batch's cards) against the caller's quota.
    pub(crate) fn throttle(
        &self,
        audit: &AuditRecord,
        operation: Operation,
        merchant: Option<&MerchantId>,
        n: usize,
    ) -> Result<(), VaultError> {
        let caller = &audit.caller;
        let key = match merchant {
            // Calls the policy refuses whatever they name: one small quota for them all, so a
            // caller cannot fill the trail with refusals at another operation's rate.
            None if !self.policy.get().grants(caller, operation) => LimitKey::Ungranted { caller },
            None => LimitKey::Operation { caller, operation },
            Some(merchant) => LimitKey::Merchant {
                caller,
                operation,
                merchant,
            },
        };
        // A refused call costs one unit, whatever it carries: its cards are never looked at,
        // and a batch must not be larger than the small quota it is refused under.
        let n = match key {
            LimitKey::Ungranted { .. } => 1,
            _ => u32::try_from(n).unwrap_or(u32::MAX).max(1),
        };
        self.limiter
            .check(key, n)
            .map_err(|retry_after| VaultError::Throttled {
                limit: Throttle::RateLimit,
                retry_after,
            })
    }

    /// Refuses a call whose client certificate names no identity, auditing the attempt under
    /// the caller description the transport put in `ctx` (e.g. the certificate's digest).
    /// Returns the error to report.
    pub async fn refuse_unidentified(&self, ctx: &CallContext, operation: Operation) -> VaultError {
        let audit = AuditRecord::begin(ctx, operation);
        let refusal = self
            .throttle(&audit, operation, None, 1)
            .err()
            .unwrap_or(VaultError::Unauthenticated);
        match self.conclude::<()>(audit, Err(refusal)).await {
            Err(error) => error,
            Ok(()) => VaultError::Unauthenticated,
        }
    }

    /// Parses a caller's merchant id and checks the policy for it; records the merchant in
    /// the audit record once it is known to be one. An id the card-number rule refuses is
    /// accepted only if the store already knows the merchant (its keys, or its shred): such ids
    /// were accepted before the rule tightened, and their tokens stay reachable. No merchant is
    /// ever created under one (`vaultd` reports them at start). The policy is asked first, so a
    /// caller the policy refuses learns nothing of which such ids exist, and an unknown one is
    /// never written to the trail.
    pub(crate) async fn authorized_merchant(
        &self,
        audit: &mut AuditRecord,
        operation: Operation,
        input: &str,
    ) -> Result<MerchantId, VaultError> {
        let (merchant, refused) = match MerchantId::parse("merchant_id", input) {
            Ok(merchant) => (merchant, None),
            Err(refused) if refused.problem == CARD_LIKE => (
                MerchantId::parse_shape("merchant_id", input)?,
                Some(refused),
            ),
            Err(refused) => return Err(refused.into()),
        };
        if refused.is_none() {
            audit.merchant = Some(merchant.clone());
        }
        self.authorize(audit, operation, &merchant)?;
        if let Some(refused) = refused {
            if self.store.merchant_keys(&merchant).await?.is_none()
                && !self.store.is_shredded(&merchant).await?
            {
                return Err(refused.into());
            }
            audit.merchant = Some(merchant.clone());
        }
        Ok(merchant)
    }

    pub(crate) fn authorize(
        &self,
        audit: &AuditRecord,
        operation: Operation,
        merchant: &MerchantId,
    ) -> Result<(), VaultError> {
        if self.policy.get().allows(&audit.caller, operation, merchant) {
            Ok(())
        } else {
            Err(VaultError::PermissionDenied { operation })
        }
    }

    /// Writes the audit record unless it is already durable, then releases the result. If the
    /// record cannot be written, nothing is released.
    pub(crate) async fn conclude<T>(
        &self,
        audit: AuditRecord,
        result: Result<Done<T>, VaultError>,
    ) -> Result<T, VaultError> {
        match result {
            Ok(Done {
                value,
                audited: true,
            }) => Ok(value),
            Ok(Done {
                value,
                audited: false,
            }) => match self.append(&audit).await {
                Ok(()) => Ok(value),
                Err(err) => Err(VaultError::AuditUnavailable(err)),
            },
            Err(error) => {
                let Some(audit) = self.refusal_record(audit, &error) else {
                    return Err(error);
                };
                match self.append(&audit).await {
                    Ok(()) => Err(error),
                    Err(err) => Err(VaultError::AuditUnavailable(err)),
                }
            }
        }
    }

    /// The audit record of a refused call, or `None` for a rate-limit refusal that is only
    /// counted (see [`RefusalLog`]).
    fn refusal_record(&self, audit: AuditRecord, error: &VaultError) -> Option<AuditRecord> {
        let mut audit = audit.failed(error);
        if let VaultError::Throttled {
            limit: Throttle::RateLimit,
            ..
        } = error
        {
            let event = match audit.event {
                crate::audit::Event::Call(operation) => operation,
                _ => return Some(audit),
            };
            match self
                .refusals
                .note(&audit.caller, event, std::time::Instant::now())
            {
                Refusal::Count => return None,
                Refusal::Record {
                    unrecorded: 0,
                    since: _,
                } => audit.detail = Some("rate limit".into()),
                Refusal::Record { unrecorded, since } => {
                    let since = since.map(crate::clock::stamp).unwrap_or_default();
                    audit.detail = Some(
                        format!(
                            "rate limit; {unrecorded} refused calls since {since} not recorded \
                             one by one"
                        )
                        .into(),
                    );
                }
            }
        }
        Some(audit)
    }
}
