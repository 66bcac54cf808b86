//! Key administration: status, DEK rotation, re-encryption, KEK rewrap and crypto-shred with
//! dual control. Every call needs `keys.admin` (for the merchant, or for every merchant when the
//! call is vault-wide) and writes an audit record, allowed or denied, like the card-data calls.
//!
//! Long jobs (re-encryption, rewrap) keep their progress in the rows themselves, so they are
//! resumable: a job stopped anywhere (the caller went away, a replica died) is continued by
//! running it again, and two jobs at once only do some work twice (every row change is a
//! compare-and-set). A job's start and its end are both audited.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use crate::audit::AuditRecord;
use crate::audited::{Audited, Done};
use crate::clock::now;
use crate::deks::{Deks, MerchantKeys, pan_associated_data};
use crate::error::VaultError;
use crate::ids::{CallContext, MerchantId};
use crate::keyring::KeyRing;
use crate::keyring::{CacheLimits, CacheStats};
use crate::lifecycle::DekLimits;
use crate::policy::Operation;
use crate::ports::TokenStore;
use crate::ports::{KeyContext, KeyVersionInfo, ShredRequest, TokenRecord};
use crate::reason::Reason;

/// A shred request no second admin approved within this long must be made again.
pub const SHRED_REQUEST_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Most items a job step reads at once ...
const STEP: u32 = 100;
/// ... and the longest it works before it reports progress (the rest of its batch is read
/// again by the next step), so a step stays well inside a call's time bound on a busy vault.
const STEP_BUDGET: std::time::Duration = std::time::Duration::from_millis(500);

/// The KEKs, the DEK limits and the unwrapped-key cache.
#[derive(Debug, Clone)]
pub struct KeyStatus {
    /// The KEK that wraps new keys.
    pub kek: String,
    /// The KEK id new wraps are made under.
    pub current_kek_id: String,
    /// KEKs that still unwrap keys not yet rewrapped.
    pub previous_keks: Vec<String>,
    /// Keys not yet under `current_kek_id`.
    pub keys_to_rewrap: u64,
    /// DEK rotation limits.
    pub limits: DekLimits,
    /// Cache counters.
    pub cache: CacheStats,
    /// Cache limits.
    pub cache_limits: CacheLimits,
}

/// One merchant's keys.
#[derive(Debug, Clone)]
pub struct MerchantKeyReport {
    /// Every key version, oldest first.
    pub keys: Vec<KeyVersionInfo>,
    /// True once its keys were destroyed.
    pub shredded: bool,
    /// A shred request awaiting approval.
    pub pending_shred: Option<ShredRequest>,
}

/// How far a job got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobProgress {
    /// Items moved by this run.
    pub done: u64,
    /// Items skipped because they failed their integrity check (left as they are, and counted
    /// in `remaining`).
    pub failed: u64,
    /// Items still to move.
    pub remaining: u64,
    /// The DEK version or KEK id items move to.
    pub target: String,
    /// True when nothing is left that this run can move.
    pub finished: bool,
}

/// The key administration service.
#[derive(Clone)]
pub(crate) struct KeyAdmin {
    calls: Audited,
    deks: Deks,
    store: Arc<dyn TokenStore>,
    keys: Arc<KeyRing>,
}

impl KeyAdmin {
    pub(crate) fn new(calls: Audited, deks: Deks, store: Arc<dyn TokenStore>) -> Self {
        let keys = deks.keys.clone();
        Self {
            calls,
            deks,
            store,
            keys,
        }
    }
    /// Starts an audited admin call: parses the merchant (if any), checks `keys.admin`, and
    /// parses the reason (if the call takes one).
    async fn admin_call(
        &self,
        audit: &mut AuditRecord,
        action: &'static str,
        merchant_id: Option<&str>,
        reason: Option<&str>,
    ) -> Result<Option<MerchantId>, VaultError> {
        audit.detail = Some(action.into());
        self.calls.throttle(audit, Operation::KeysAdmin, None, 1)?;
        if let Some(reason) = reason {
            audit.reason = Reason::parse("reason", reason).ok();
        }
        let merchant = match merchant_id {
            Some(id) => {
                let merchant = self
                    .calls
                    .authorized_merchant(audit, Operation::KeysAdmin, id)
                    .await?;
                Some(merchant)
            }
            None => {
                if !self
                    .calls
                    .policy()
                    .allows_everywhere(&audit.caller, Operation::KeysAdmin)
                {
                    return Err(VaultError::PermissionDenied {
                        operation: Operation::KeysAdmin,
                    });
                }
                None
            }
        };
        if let Some(reason) = reason {
            Reason::parse("reason", reason)?;
        }
        Ok(merchant)
    }

    /// The KEKs, limits and cache (vault-wide).
    ///
    /// # Errors
    /// Any [`VaultError`]; audited either way.
    pub async fn key_status(&self, ctx: &CallContext) -> Result<KeyStatus, VaultError> {
        let mut audit = AuditRecord::begin(ctx, Operation::KeysAdmin);
        let result = async {
            self.admin_call(&mut audit, "keys.status", None, None)
                .await?;
            let current_kek_id = self.keys.current_id().await?;
            Ok(Done::pending(KeyStatus {
                kek: self.keys.current().name().to_owned(),
                keys_to_rewrap: self.store.count_keys_not_under(&current_kek_id).await?,
                current_kek_id,
                previous_keks: self.keys.previous_names(),
                limits: self.deks.limits,
                cache: self.keys.cache_stats(),
                cache_limits: self.keys.cache_limits(),
            }))
        }
        .await;
        self.calls.conclude(audit, result).await
    }

    /// One merchant's keys, shred state and pending request.
    ///
    /// # Errors
    /// Any [`VaultError`]; audited either way.
    pub async fn merchant_key_report(
        &self,
        ctx: &CallContext,
        merchant_id: &str,
    ) -> Result<MerchantKeyReport, VaultError> {
        let mut audit = AuditRecord::begin(ctx, Operation::KeysAdmin);
        let result = async {
            let merchant = self
                .admin_merchant(&mut audit, "keys.show", merchant_id, None)
                .await?;
            Ok(Done::pending(MerchantKeyReport {
                keys: self.store.key_versions(&merchant).await?,
                shredded: self.store.is_shredded(&merchant).await?,
                pending_shred: self.store.pending_shred(&merchant).await?,
            }))
        }
        .await;
        self.calls.conclude(audit, result).await
    }

    /// Starts a new DEK version for the merchant now; returns it.
    ///
    /// # Errors
    /// Any [`VaultError`]; audited either way.
    pub async fn rotate_dek_now(
        &self,
        ctx: &CallContext,
        merchant_id: &str,
        reason: &str,
    ) -> Result<u32, VaultError> {
        let mut audit = AuditRecord::begin(ctx, Operation::KeysAdmin);
        let result = async {
            let merchant = self
                .admin_merchant(&mut audit, "dek.rotate", merchant_id, Some(reason))
                .await?;
            let newest = self.deks.stored_keys(&merchant).await?.dek.context.version;
            // The new key and this call's audit record commit together. If another replica
            // made that version first, it is still the merchant's newest.
            let version = self
                .deks
                .rotate_dek(&merchant, newest, Some(&audit))
                .await?;
            Ok(Done::audited(version))
        }
        .await;
        self.calls.conclude(audit, result).await
    }

    async fn admin_merchant(
        &self,
        audit: &mut AuditRecord,
        action: &'static str,
        merchant_id: &str,
        reason: Option<&str>,
    ) -> Result<MerchantId, VaultError> {
        self.admin_call(audit, action, Some(merchant_id), reason)
            .await?
            .ok_or(VaultError::FailedPrecondition("a merchant id is required"))
    }

    /// Starts re-encrypting the merchant's tokens under older DEK versions to the newest.
    ///
    /// # Errors
    /// Any [`VaultError`]; the start is audited either way.
    pub async fn start_reencrypt(
        &self,
        ctx: &CallContext,
        merchant_id: &str,
        reason: &str,
    ) -> Result<ReencryptJob, VaultError> {
        let mut audit = AuditRecord::begin(ctx, Operation::KeysAdmin);
        let result = async {
            let merchant = self
                .admin_merchant(&mut audit, "reencrypt.start", merchant_id, Some(reason))
                .await?;
            let set = self.deks.stored_keys(&merchant).await?;
            let keys = self.deks.unwrapped(&set).await?;
            Ok(Done::pending((merchant, keys)))
        }
        .await;
        let end = audit.clone();
        let (merchant, keys) = self.calls.conclude(audit, result).await?;
        Ok(ReencryptJob {
            admin: self.clone(),
            target: keys.dek_version,
            merchant,
            keys,
            cursor: String::new(),
            done: 0,
            failed: 0,
            end: Some(end.with_detail("reencrypt.finished")),
        })
    }

    /// Starts rewrapping every key not under the current KEK (KEK rotation; vault-wide).
    ///
    /// # Errors
    /// Any [`VaultError`]; the start is audited either way.
    pub async fn start_rewrap(
        &self,
        ctx: &CallContext,
        reason: &str,
    ) -> Result<RewrapJob, VaultError> {
        let mut audit = AuditRecord::begin(ctx, Operation::KeysAdmin);
        let result = async {
            self.admin_call(&mut audit, "kek.rewrap.start", None, Some(reason))
                .await?;
            Ok(Done::pending(self.keys.current_id().await?))
        }
        .await;
        let end = audit.clone();
        let target = self.calls.conclude(audit, result).await?;
        Ok(RewrapJob {
            admin: self.clone(),
            target,
            cursor: None,
            done: 0,
            failed: 0,
            end: Some(end.with_detail("kek.rewrap.finished")),
        })
    }

    /// Crypto-shred, step 1: asks to destroy the merchant's keys. Nothing is destroyed until
    /// a different admin approves. An unapproved request expires after [`SHRED_REQUEST_TTL`].
    ///
    /// # Errors
    /// Any [`VaultError`]; audited either way (the request and its record commit together).
    pub async fn request_shred(
        &self,
        ctx: &CallContext,
        merchant_id: &str,
        reason: &str,
    ) -> Result<ShredRequest, VaultError> {
        let mut audit = AuditRecord::begin(ctx, Operation::KeysAdmin);
        let result = async {
            let merchant = self
                .admin_merchant(&mut audit, "shred.request", merchant_id, Some(reason))
                .await?;
            if self.store.is_shredded(&merchant).await? {
                return Err(VaultError::FailedPrecondition(
                    "the merchant's keys are already destroyed",
                ));
            }
            let supersede = match self.store.pending_shred(&merchant).await? {
                Some(pending) if !expired(&pending) => {
                    return Err(VaultError::FailedPrecondition(
                        "a shred request for this merchant is pending: approve it, or request \
                         again after it expires (24 hours)",
                    ));
                }
                Some(expired) => Some(expired.request_id),
                None => None,
            };
            let request = ShredRequest {
                request_id: ctx.request_id.clone(),
                merchant,
                requested_by: ctx.caller.clone(),
                requested_at: now(),
                reason: Reason::parse("reason", reason)?,
            };
            if self
                .store
                .request_shred(&request, supersede.as_deref(), &audit)
                .await?
            {
                Ok(Done::audited(request))
            } else {
                Err(VaultError::FailedPrecondition(
                    "another shred request for this merchant was made at the same time",
                ))
            }
        }
        .await;
        self.calls.conclude(audit, result).await
    }

    /// Crypto-shred, step 2: a second admin approves the pending request `request_id`, and
    /// every key of the merchant is destroyed at once. Returns how many keys were destroyed.
    ///
    /// # Errors
    /// [`VaultError::FailedPrecondition`] if there is no such pending request, it expired, or
    /// the approver asked for it; any other [`VaultError`]. Audited either way.
    pub async fn approve_shred(
        &self,
        ctx: &CallContext,
        merchant_id: &str,
        request_id: &str,
        reason: &str,
    ) -> Result<u64, VaultError> {
        let mut audit = AuditRecord::begin(ctx, Operation::KeysAdmin);
        let result = async {
            let merchant = self
                .admin_merchant(&mut audit, "shred.approve", merchant_id, Some(reason))
                .await?;
            let no_request = VaultError::FailedPrecondition(
                "no pending shred request with this id for this merchant",
            );
            let pending = match self.store.pending_shred(&merchant).await? {
                Some(pending) if pending.request_id == request_id => pending,
                _ => return Err(no_request),
            };
            if pending.requested_by == ctx.caller {
                return Err(VaultError::FailedPrecondition(
                    "dual control: a shred must be approved by a different admin than the one \
                     who requested it",
                ));
            }
            if expired(&pending) {
                return Err(VaultError::FailedPrecondition(
                    "the shred request expired; request it again",
                ));
            }
            match self
                .store
                .execute_shred(&merchant, request_id, &ctx.caller, &audit)
                .await?
            {
                Some(destroyed) => {
                    self.deks.forget(&merchant);
                    Ok(Done::audited(destroyed))
                }
                None => Err(no_request),
            }
        }
        .await;
        self.calls.conclude(audit, result).await
    }
}

fn expired(request: &ShredRequest) -> bool {
    now() - request.requested_at >= SHRED_REQUEST_TTL
}

/// Writes a finished job's audit record, once: kept until it is written, so a failed write is
/// retried by the next step.
async fn audit_end(
    calls: &Audited,
    end: &mut Option<AuditRecord>,
    progress: &JobProgress,
) -> Result<(), VaultError> {
    if progress.finished
        && let Some(record) = end
    {
        let mut record = record.clone();
        record.time = OffsetDateTime::now_utc();
        // Its own id: the start's record already holds the call's request id.
        record.request_id.push_str(":finished");
        calls.conclude(record, Ok(Done::pending(()))).await?;
        *end = None;
    }
    Ok(())
}

/// Re-encryption of one merchant's tokens to its newest DEK. Call [`ReencryptJob::step`]
/// until it reports `finished`.
pub struct ReencryptJob {
    admin: KeyAdmin,
    merchant: MerchantId,
    target: u32,
    keys: MerchantKeys,
    cursor: String,
    done: u64,
    failed: u64,
    end: Option<AuditRecord>,
}

impl std::fmt::Debug for ReencryptJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReencryptJob")
            .field("merchant", &self.merchant)
            .field("target", &self.target)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl ReencryptJob {
    /// Moves the next batch of tokens and reports progress.
    ///
    /// # Errors
    /// A store or KEK failure stops the job (run it again to resume).
    pub async fn step(&mut self) -> Result<JobProgress, VaultError> {
        let admin = self.admin.clone();
        let batch = admin
            .store
            .tokens_under_older_dek(&self.merchant, self.target, &self.cursor, STEP)
            .await?;
        let started = std::time::Instant::now();
        for record in &batch {
            if started.elapsed() > STEP_BUDGET {
                break;
            }
            self.cursor = record.token.as_str().to_owned();
            match self.move_one(record).await {
                Ok(true) => self.done += 1,
                Ok(false) => {}
                Err(VaultError::Integrity) => self.failed += 1,
                Err(other) => return Err(other),
            }
        }
        let progress = JobProgress {
            done: self.done,
            failed: self.failed,
            remaining: admin
                .store
                .count_tokens_under_older_dek(&self.merchant, self.target)
                .await?,
            target: self.target.to_string(),
            finished: batch.is_empty(),
        };
        audit_end(&admin.calls, &mut self.end, &progress).await?;
        Ok(progress)
    }

    async fn move_one(&mut self, record: &TokenRecord) -> Result<bool, VaultError> {
        let pan = self.admin.deks.open_pan(record).await?;
        self.admin
            .deks
            .reserve_dek_use(&self.merchant, &mut self.keys)
            .await?;
        let aad = pan_associated_data(
            &record.merchant,
            &record.token,
            self.keys.dek_version,
            record.metadata.expiry,
        );
        let moved = TokenRecord {
            sealed: self.keys.dek.seal(&aad, pan.expose_digits().as_bytes()),
            dek_version: self.keys.dek_version,
            ..record.clone()
        };
        Ok(self
            .admin
            .store
            .reencrypt_token(&moved, record.dek_version)
            .await?)
    }
}

/// KEK rotation: rewraps every key not under the current KEK. Call [`RewrapJob::step`] until
/// it reports `finished`.
pub struct RewrapJob {
    admin: KeyAdmin,
    target: String,
    cursor: Option<KeyContext>,
    done: u64,
    failed: u64,
    end: Option<AuditRecord>,
}

impl std::fmt::Debug for RewrapJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RewrapJob")
            .field("target", &self.target)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl RewrapJob {
    /// Rewraps the next batch of keys and reports progress. No PAN is decrypted.
    ///
    /// # Errors
    /// A store or KEK failure stops the job (run it again to resume).
    pub async fn step(&mut self) -> Result<JobProgress, VaultError> {
        let admin = self.admin.clone();
        let batch = admin
            .store
            .keys_not_under(&self.target, self.cursor.as_ref(), STEP)
            .await?;
        let started = std::time::Instant::now();
        for key in &batch {
            if started.elapsed() > STEP_BUDGET {
                break;
            }
            self.cursor = Some(key.context.clone());
            match admin.keys.rewrap(key).await {
                Ok(new) => {
                    if admin.store.rewrap_key(key, &new).await? {
                        self.done += 1;
                    }
                }
                Err(VaultError::Integrity) => self.failed += 1,
                Err(other) => return Err(other),
            }
        }
        let progress = JobProgress {
            done: self.done,
            failed: self.failed,
            remaining: admin.store.count_keys_not_under(&self.target).await?,
            target: self.target.clone(),
            finished: batch.is_empty(),
        };
        audit_end(&admin.calls, &mut self.end, &progress).await?;
        Ok(progress)
    }
}
