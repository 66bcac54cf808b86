//! [`Vault`]: the vault's use cases behind one handle, the API `vaultd` serves. It assembles
//! the services from the ports and settings, and hands each call to the service that owns it:
//!
//! - [`tokens`](crate::tokens): tokenize, batch, detokenize, metadata, delete;
//! - [`trail`](crate::trail): the audit trail (signing key, checkpoints, reads, exports, prune);
//! - [`admin`](crate::admin): key administration (rotation, re-encryption, rewrap, shred);
//! - [`forward`](crate::forward): the forward proxy and its destinations (dual control).
//!
//! They share the audited-call helper (`audited.rs`: quota, policy, the one audit
//! record per call, fail closed) and the DEK manager (`deks.rs`). Every use case
//! writes exactly one audit record, allowed or denied (a call refused by a rate limit: see
//! [`RefusalLog`]); a call whose record cannot be written fails with
//! [`VaultError::AuditUnavailable`] and releases nothing.

use std::fmt;
use std::sync::Arc;

use vault_audit::{Checkpoint, CheckpointKind, PublicKey};

use crate::admin::{KeyAdmin, KeyStatus, MerchantKeyReport, ReencryptJob, RewrapJob};
use crate::audited::{Audited, CurrentPolicy};
use crate::deks::Deks;
use crate::error::VaultError;
use crate::forward::admin::{DestinationAdmin, DestinationVersion};
use crate::forward::{Egress, ForwardCommand, Forwarded, Forwards, NoEgress, StoredDestination};
use crate::guard::GuardSettings;
use crate::ids::CallContext;
use crate::keyring::KeyRing;
use crate::lifecycle::DekLimits;
use crate::limits::{CallLimiter, RefusalLog, Unlimited};
use crate::policy::{Operation, Policy};
use crate::ports::{CardMetadata, ShredRequest, TokenStore};
use crate::tokens::{
    Detokenized, TokenCommand, TokenizeBatchCommand, TokenizeCommand, Tokenized, Tokens,
};
use crate::trail::{
    AuditExport, AuditReadCommand, AuditReader, AuditRetention, AuditTrail, PruneCommand, Pruned,
};

/// What a vault is made of: its ports and settings. The services are assembled from it.
#[derive(Clone)]
struct Parts {
    store: Arc<dyn TokenStore>,
    keys: Arc<KeyRing>,
    policy: Arc<CurrentPolicy>,
    limits: DekLimits,
    guard: GuardSettings,
    limiter: Arc<dyn CallLimiter>,
    refusal_interval: std::time::Duration,
    retention: AuditRetention,
    egress: Arc<dyn Egress>,
}

/// The vault: every use case, over the ports it was built with. Cheap to clone (the clones
/// share their state). Configure it with the `with_*` methods before its first use: each one
/// starts its in-memory state (use leases, refusal counts, the loaded audit key) afresh.
#[derive(Clone)]
pub struct Vault {
    parts: Parts,
    calls: Audited,
    tokens: Tokens,
    trail: AuditTrail,
    admin: KeyAdmin,
    forwards: Forwards,
    destinations: DestinationAdmin,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("keys", &self.parts.keys)
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// A vault over these ports, with default limits, guard and retention, and no call limiter.
    #[must_use]
    pub fn new(store: Arc<dyn TokenStore>, keys: Arc<KeyRing>, policy: Arc<Policy>) -> Self {
        Self::assemble(Parts {
            store,
            keys,
            policy: Arc::new(CurrentPolicy::new(policy)),
            limits: DekLimits::default(),
            guard: GuardSettings::default(),
            limiter: Arc::new(Unlimited),
            refusal_interval: std::time::Duration::from_secs(60),
            retention: AuditRetention::default(),
            egress: Arc::new(NoEgress),
        })
    }

    /// The services over `parts`, with fresh state (use leases, refusal log, signing key).
    fn assemble(parts: Parts) -> Self {
        let calls = Audited::new(
            parts.store.clone(),
            parts.policy.clone(),
            parts.limiter.clone(),
            Arc::new(RefusalLog::new(parts.refusal_interval)),
        );
        let deks = Deks::new(
            parts.store.clone(),
            parts.keys.clone(),
            parts.limits,
            parts.guard,
        );
        let tokens = Tokens::new(
            calls.clone(),
            deks.clone(),
            parts.store.clone(),
            parts.guard,
        );
        let trail = AuditTrail::new(
            calls.clone(),
            parts.store.clone(),
            parts.keys.clone(),
            parts.retention,
        );
        Self {
            forwards: Forwards::new(
                calls.clone(),
                tokens.clone(),
                parts.store.clone(),
                parts.egress.clone(),
                parts.guard,
                trail.clone(),
            ),
            destinations: DestinationAdmin::new(
                calls.clone(),
                parts.store.clone(),
                parts.egress.clone(),
                trail.clone(),
            ),
            tokens,
            trail,
            admin: KeyAdmin::new(calls.clone(), deks, parts.store.clone()),
            calls,
            parts,
        }
    }

    /// The same vault with these enumeration-guard and new-merchant settings.
    #[must_use]
    pub fn with_guard(mut self, guard: GuardSettings) -> Self {
        self.parts.guard = guard;
        Self::assemble(self.parts)
    }

    /// The same vault counting calls with `limiter`, recording at most one rate-limit refusal
    /// per caller and operation per `refusal_interval` (see [`RefusalLog`]).
    #[must_use]
    pub fn with_limiter(
        mut self,
        limiter: Arc<dyn CallLimiter>,
        refusal_interval: std::time::Duration,
    ) -> Self {
        self.parts.limiter = limiter;
        self.parts.refusal_interval = refusal_interval;
        Self::assemble(self.parts)
    }

    /// The same vault sending forwards through `egress` (without one, forwarding is off:
    /// every destination is refused at proposal and every forward fails).
    #[must_use]
    pub fn with_egress(mut self, egress: Arc<dyn Egress>) -> Self {
        self.parts.egress = egress;
        Self::assemble(self.parts)
    }

    /// The same vault with these DEK rotation limits.
    #[must_use]
    pub fn with_dek_limits(mut self, limits: DekLimits) -> Self {
        self.parts.limits = limits;
        Self::assemble(self.parts)
    }

    /// The same vault with these retention rules (before [`Vault::start_audit`]).
    #[must_use]
    pub fn with_audit_retention(mut self, retention: AuditRetention) -> Self {
        self.parts.retention = retention;
        Self::assemble(self.parts)
    }

    /// Puts `policy` in force for every call from now on (a reload on SIGHUP), once a
    /// `policy.reload` record saying so (`detail`: the new policy's digest) is durable.
    ///
    /// # Errors
    /// [`VaultError::AuditUnavailable`] if the record cannot be written: the policy in force
    /// stays, since no access may change unrecorded.
    pub async fn replace_policy(&self, policy: Policy, detail: String) -> Result<(), VaultError> {
        self.calls.replace_policy(Arc::new(policy), detail).await
    }

    /// Records a reload that kept the policy in force (`detail` says why; never the file's
    /// contents).
    ///
    /// # Errors
    /// [`VaultError::AuditUnavailable`] if the record cannot be written.
    pub async fn record_policy_kept(&self, detail: String) -> Result<(), VaultError> {
        self.calls.record_policy_kept(detail).await
    }

    /// Records a reload of the TLS settings (`tls.reload`): `applied` with the digests now in
    /// force, or refused (the previous settings stay). Unlike a policy, new TLS settings are in
    /// force before this record: a revocation must not wait for the trail.
    ///
    /// # Errors
    /// [`VaultError::AuditUnavailable`] if the record cannot be written.
    pub async fn record_tls_reload(&self, detail: String, applied: bool) -> Result<(), VaultError> {
        self.calls
            .record_reload(crate::audit::Event::TlsReload, detail, applied)
            .await
    }

    /// True if the policy in force lists `identity` (whatever it grants).
    #[must_use]
    pub fn lists_caller(&self, identity: &str) -> bool {
        self.parts
            .policy
            .get()
            .identities()
            .any(|c| c.as_str() == identity)
    }

    /// The call limiter (for its housekeeping).
    #[must_use]
    pub fn limiter(&self) -> &Arc<dyn CallLimiter> {
        self.calls.limiter()
    }

    /// The KEKs and the unwrapped-key cache (health checks, cache metrics).
    #[must_use]
    pub fn keys(&self) -> &Arc<KeyRing> {
        &self.parts.keys
    }

    /// Deletes the store's abuse tallies of windows that have ended. `vaultd` calls it
    /// periodically. Returns how many tallies went.
    ///
    /// # Errors
    /// The store's.
    pub async fn purge_tallies(&self) -> Result<u64, VaultError> {
        Ok(self
            .parts
            .store
            .purge_tallies(crate::clock::now().unix_timestamp())
            .await?)
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
        self.calls.record_refusal_summaries(stopping).await
    }

    /// Records a summary of connections refused before any caller was identified (`detail`
    /// names the reasons, counts and top sources; it holds no request data), as the vault's own
    /// `tls.refused` event with outcome `unauthenticated`.
    ///
    /// # Errors
    /// The store's, if the record cannot be written.
    pub async fn record_front_door_refusals(&self, detail: String) -> Result<(), VaultError> {
        self.calls.record_front_door_refusals(detail).await
    }

    /// Swaps a PAN for a token; returns the existing token if the merchant already has one for
    /// this card in this format. The token and its audit record commit in one transaction.
    ///
    /// # Errors
    /// Any [`VaultError`]; the call is audited either way.
    pub async fn tokenize(
        &self,
        ctx: &CallContext,
        command: TokenizeCommand,
    ) -> Result<Tokenized, VaultError> {
        self.tokens.tokenize(ctx, command).await
    }

    /// Tokenizes up to [`MAX_BATCH_CARDS`](crate::tokens::MAX_BATCH_CARDS) cards of one merchant; the results are in the order
    /// of the cards. Each card is a Tokenize of its own (its own audit record, deduplicated
    /// like one), but the merchant's keys and the existing tokens are read once for the batch,
    /// and the new tokens go to the store together, so they share commits.
    ///
    /// A refused batch (bad input, permission, keys) stores nothing and writes one audit record.
    /// If a card fails afterwards, the call fails with the first card's error; cards stored by
    /// then stay stored and audited, and a retry returns their tokens (`existing`).
    ///
    /// # Errors
    /// Any [`VaultError`]; [`VaultError::InvalidCard`] names the card and field.
    pub async fn tokenize_batch(
        &self,
        ctx: &CallContext,
        command: TokenizeBatchCommand,
    ) -> Result<Vec<Tokenized>, VaultError> {
        self.tokens.tokenize_batch(ctx, command).await
    }

    /// Swaps a token back for its PAN. The audit record is durable before the PAN is returned.
    ///
    /// # Errors
    /// Any [`VaultError`]; the call is audited either way.
    pub async fn detokenize(
        &self,
        ctx: &CallContext,
        command: TokenCommand,
    ) -> Result<Detokenized, VaultError> {
        self.tokens.detokenize(ctx, command).await
    }

    /// A token's non-sensitive metadata, cut to the truncation rule whatever the row holds
    /// ([`CardMetadata::truncated`]).
    ///
    /// # Errors
    /// Any [`VaultError`]; the call is audited either way.
    pub async fn metadata(
        &self,
        ctx: &CallContext,
        command: TokenCommand,
    ) -> Result<CardMetadata, VaultError> {
        self.tokens.metadata(ctx, command).await
    }

    /// Deletes a token and its encrypted PAN; the deletion and its audit record commit together.
    ///
    /// # Errors
    /// Any [`VaultError`]; the call is audited either way.
    pub async fn delete(&self, ctx: &CallContext, command: TokenCommand) -> Result<(), VaultError> {
        self.tokens.delete(ctx, command).await
    }

    /// Sends the card behind a token to an approved destination and returns the processor's
    /// answer with the card masked; two audit records (see [`crate::forward`]).
    ///
    /// # Errors
    /// Any [`VaultError`]; audited either way.
    pub async fn forward(
        &self,
        ctx: &CallContext,
        command: ForwardCommand,
    ) -> Result<Forwarded, VaultError> {
        self.forwards.forward(ctx, command).await
    }

    /// Records `unknown` as the outcome of forwards whose second record was lost (their
    /// deadline long past). `vaultd` calls it at start and periodically. Returns how many.
    ///
    /// # Errors
    /// The store's.
    pub async fn record_unknown_forward_outcomes(&self) -> Result<usize, VaultError> {
        self.forwards.record_unknown_outcomes().await
    }

    /// Proposes a destination (its spec as JSON); a second admin must approve it.
    ///
    /// # Errors
    /// Any [`VaultError`]; audited either way.
    pub async fn propose_destination(
        &self,
        ctx: &CallContext,
        spec_json: &str,
        reason: &str,
    ) -> Result<StoredDestination, VaultError> {
        self.destinations.propose(ctx, spec_json, reason).await
    }

    /// Approves a proposed destination version (by a different admin than its proposer),
    /// whose fingerprint must be the `fingerprint` the approver reviewed.
    ///
    /// # Errors
    /// Any [`VaultError`]; audited either way.
    pub async fn approve_destination(
        &self,
        ctx: &CallContext,
        id: &str,
        fingerprint: &str,
        reason: &str,
    ) -> Result<StoredDestination, VaultError> {
        self.destinations
            .approve(ctx, id, fingerprint, reason)
            .await
    }

    /// Revokes every version of a destination; returns how many.
    ///
    /// # Errors
    /// Any [`VaultError`]; audited either way.
    pub async fn revoke_destination(
        &self,
        ctx: &CallContext,
        name: &str,
        reason: &str,
    ) -> Result<u64, VaultError> {
        self.destinations.revoke(ctx, name, reason).await
    }

    /// Every destination version (of `name`, if given) with its state.
    ///
    /// # Errors
    /// Any [`VaultError`]; audited either way.
    pub async fn list_destinations(
        &self,
        ctx: &CallContext,
        name: Option<&str>,
    ) -> Result<Vec<DestinationVersion>, VaultError> {
        self.destinations.list(ctx, name).await
    }

    /// Refuses a call whose client certificate names no identity, auditing the attempt under
    /// the caller description the transport put in `ctx` (e.g. the certificate's digest).
    /// Returns the error to report.
    pub async fn refuse_unidentified(&self, ctx: &CallContext, operation: Operation) -> VaultError {
        self.calls.refuse_unidentified(ctx, operation).await
    }

    /// Loads the audit signing key (making it on the first start of the first replica) unless
    /// it is loaded already. Call before anything is served, so that a key that is missing or
    /// cannot be unwrapped stops the vault at start.
    ///
    /// # Errors
    /// [`VaultError::FailedPrecondition`] if signed checkpoints exist but no signing key does
    /// (the key is never replaced silently); KEK and store errors.
    pub async fn load_audit_key(&self) -> Result<PublicKey, VaultError> {
        self.trail.load_audit_key().await
    }

    /// Loads the audit signing key ([`Vault::load_audit_key`]), signs this writer's start, and
    /// records `vault.start`. Call once, before serving.
    ///
    /// # Errors
    /// Any [`VaultError`]: the vault must not serve without its audit trail.
    pub async fn start_audit(&self, detail: String) -> Result<PublicKey, VaultError> {
        self.trail.start_audit(detail).await
    }

    /// Replaces an audit signing key that is lost (its row is missing while checkpoints it
    /// signed exist) or that no configured KEK can unwrap, as an explicit operator action
    /// (`vaultd replace-audit-key`): a new key version is made and stored, an
    /// `audit.key_replaced` record names the old key (from the newest checkpoint), the new one,
    /// the operator and the reason, and this writer's head is signed with the new key in a
    /// `key_replaced` checkpoint (the only kind at which the verifier accepts a change of key),
    /// which follows the old key's last checkpoint and covers the record that names it. Auditors then
    /// verify with both public keys. Follow with [`Vault::stop_audit`].
    ///
    /// # Errors
    /// [`VaultError::FailedPrecondition`] when there is nothing to replace (no checkpoint yet,
    /// or the key unwraps) or the KEK is unreachable (replace nothing while it might come
    /// back); [`VaultError::InvalidArgument`] for an operator or reason that is empty or holds
    /// a card number; store and KEK errors.
    pub async fn replace_audit_key(
        &self,
        operator: &str,
        reason: &str,
    ) -> Result<PublicKey, VaultError> {
        self.trail.replace_audit_key(operator, reason).await
    }

    /// Records `vault.stop` and signs this writer's final head. Call once, after serving.
    ///
    /// # Errors
    /// Any [`VaultError`].
    pub async fn stop_audit(&self, detail: String) -> Result<(), VaultError> {
        self.trail.stop_audit(detail).await
    }

    /// The public key auditors verify checkpoints with (after [`Vault::start_audit`]).
    #[must_use]
    pub fn audit_public_key(&self) -> Option<PublicKey> {
        self.trail.audit_public_key()
    }

    /// This writer's audit chain.
    #[must_use]
    pub fn audit_writer(&self) -> &str {
        self.trail.audit_writer()
    }

    /// Signs this writer's head. An interval checkpoint is skipped (`None`) when the head has
    /// not moved since this writer last signed it.
    ///
    /// # Errors
    /// [`VaultError::FailedPrecondition`] before [`Vault::start_audit`]; store and KEK errors.
    pub async fn checkpoint(&self, kind: CheckpointKind) -> Result<Option<Checkpoint>, VaultError> {
        self.trail.checkpoint(kind).await
    }

    /// Starts a filtered read of the trail. The read is audited (and durable) before the first
    /// record is returned.
    ///
    /// # Errors
    /// Any [`VaultError`]; the call is audited either way.
    pub async fn read_audit(
        &self,
        ctx: &CallContext,
        command: AuditReadCommand,
    ) -> Result<AuditReader, VaultError> {
        self.trail.read_audit(ctx, command).await
    }

    /// Starts an export of `[from, to)`, widened to checkpoints so that it verifies on its own:
    /// every writer's unsigned head is signed first, and the export is audited (and durable,
    /// and inside the export) before its first line is returned.
    ///
    /// # Errors
    /// Any [`VaultError`]; the call is audited either way.
    pub async fn export_audit(
        &self,
        ctx: &CallContext,
        from: Option<String>,
        to: Option<String>,
    ) -> Result<AuditExport, VaultError> {
        self.trail.export_audit(ctx, from, to).await
    }

    /// The public key checkpoints verify under, for an auditor with `audit.read`; audited.
    ///
    /// # Errors
    /// Any [`VaultError`]; the call is audited either way.
    pub async fn audit_public_keys(&self, ctx: &CallContext) -> Result<Vec<PublicKey>, VaultError> {
        self.trail.audit_public_keys(ctx).await
    }

    /// Removes records older than `before` that the named export holds, and the checkpoints
    /// before them (see [`PrunePlan`](crate::ports::PrunePlan)), in one transaction with its own audit record. Each
    /// writer that keeps records gets a prune checkpoint at its cut, so that the remainder
    /// verifies on its own and together with the export. Nothing inside the online window
    /// ever goes.
    ///
    /// # Errors
    /// [`VaultError::InvalidArgument`] for a `before` inside the online window or a malformed
    /// proof; [`VaultError::FailedPrecondition`] if the export is not this trail's or does not
    /// reach back to the oldest checkpoint online; any other [`VaultError`]. The call is
    /// audited either way.
    pub async fn prune_audit(
        &self,
        ctx: &CallContext,
        command: PruneCommand,
    ) -> Result<Pruned, VaultError> {
        self.trail.prune_audit(ctx, command).await
    }

    /// The KEKs, limits and cache (vault-wide).
    ///
    /// # Errors
    /// Any [`VaultError`]; audited either way.
    pub async fn key_status(&self, ctx: &CallContext) -> Result<KeyStatus, VaultError> {
        self.admin.key_status(ctx).await
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
        self.admin.merchant_key_report(ctx, merchant_id).await
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
        self.admin.rotate_dek_now(ctx, merchant_id, reason).await
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
        self.admin.start_reencrypt(ctx, merchant_id, reason).await
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
        self.admin.start_rewrap(ctx, reason).await
    }

    /// Crypto-shred, step 1: asks to destroy the merchant's keys. Nothing is destroyed until
    /// a different admin approves. An unapproved request expires after [`SHRED_REQUEST_TTL`](crate::admin::SHRED_REQUEST_TTL).
    ///
    /// # Errors
    /// Any [`VaultError`]; audited either way (the request and its record commit together).
    pub async fn request_shred(
        &self,
        ctx: &CallContext,
        merchant_id: &str,
        reason: &str,
    ) -> Result<ShredRequest, VaultError> {
        self.admin.request_shred(ctx, merchant_id, reason).await
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
        self.admin
            .approve_shred(ctx, merchant_id, request_id, reason)
            .await
    }
}
