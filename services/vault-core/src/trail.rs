//! The audit trail's own use cases: the signing key, checkpoints, the vault's start and stop
//! records, and reading the trail (`audit.read`), every read audited before anything is
//! released.
//!
//! Records are chained by the store as they are written (`ports::AuditStore`); this module
//! signs chain heads. The signing key is an Ed25519 seed wrapped by the KEK like any other key
//! (owner `~vault`, purpose `audit_signing`), made by the first replica that needs it.

use std::sync::{Mutex, OnceLock};

use time::OffsetDateTime;
use vault_audit::{
    Checkpoint, CheckpointDraft, CheckpointKind, EXPORT_FORMAT, Entry, ExportHeader, GENESIS,
    HASH_LEN, Line, PublicKey,
};
use vault_crypto::{KeyMaterial, SigningKey};

use crate::audit::{AuditRecord, Event};
use crate::clock::{now, stamp};
use crate::error::{InvalidArgument, VaultError};
use crate::ids::{CallContext, CallerId, MerchantId};
use crate::pan::contains_card_number;
use crate::policy::Operation;
use crate::ports::{
    AuditCursor, AuditQuery, ChainHead, ExportPlan, KeyContext, KeyPurpose, PruneCounts, PrunePlan,
};
use crate::vault::{Done, Vault};

/// Rows per page when reading the trail.
const PAGE: u32 = 500;

/// How many times a checkpoint retries its compare-and-set on `cp_seq`.
const MAX_CHECKPOINT_ATTEMPTS: usize = 64;

/// How long the trail is kept (PCI DSS 10.5.1: at least twelve months, the last three
/// immediately available).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditRetention {
    /// Days records stay online: a prune never removes a younger record.
    pub online_days: u32,
    /// Days an export must be kept; exports say until when (`keep_until`).
    pub retain_days: u32,
}

impl Default for AuditRetention {
    fn default() -> Self {
        Self {
            online_days: 92,
            retain_days: 365,
        }
    }
}

/// Why the vault refuses to start when its trail has signed checkpoints but its signing key is
/// gone.
pub const MISSING_AUDIT_KEY: &str = "signed audit checkpoints exist but the audit signing key \
    (data_keys: merchant ~vault, purpose audit_signing) is missing; restore that row from a \
    backup of this database, or replace the key on purpose with `vaultd replace-audit-key` \
    (recorded in the trail; auditors then verify with the old and the new public key). A new \
    key is never made silently: it would verify nothing signed before it";

/// The unwrapped signing key, what this writer signed last, and the retention rules.
#[derive(Default)]
pub struct TrailState {
    signer: OnceLock<Signer>,
    last_signed: Mutex<Option<u64>>,
    retention: AuditRetention,
}

struct Signer {
    key: SigningKey,
    public: [u8; vault_crypto::PUBLIC_KEY_LEN],
    /// The id of the key this one replaced (`vaultd replace-audit-key`), named by its
    /// `key_replaced` checkpoint.
    replacing: Option<String>,
}

impl Signer {
    /// Signs `head` as the checkpoint after `tip` (the newest checkpoint's `cp_seq` and hash).
    fn sign(
        &self,
        kind: CheckpointKind,
        head: &ChainHead,
        tip: Option<(u64, [u8; HASH_LEN])>,
    ) -> Checkpoint {
        let (cp_seq, prev_hash) = tip.map_or((1, GENESIS), |(n, hash)| (n + 1, hash));
        let draft = CheckpointDraft {
            cp_seq,
            kind,
            at: stamp(now()),
            writer: head.writer.clone(),
            seq: head.seq,
            head_hash: head.hash,
            prev_hash,
            replaces_key: (kind == CheckpointKind::KeyReplaced)
                .then(|| self.replacing.clone())
                .flatten(),
        };
        draft.sign(&self.public, |payload| self.key.sign(payload))
    }
}

/// An audit read's filters as the transport received them, not yet validated. Its `Debug`
/// shows only which filters are set: a careless caller might put a PAN in one.
#[derive(Clone, Default)]
pub struct AuditReadCommand {
    /// Records at or after this time (RFC 3339), if given.
    pub from: Option<String>,
    /// Records before this time (RFC 3339), if given.
    pub to: Option<String>,
    /// Only this merchant's, if given.
    pub merchant_id: Option<String>,
    /// Only this caller's, if given.
    pub caller: Option<String>,
    /// Only this event, if given.
    pub event: Option<String>,
    /// Only this outcome, if given.
    pub outcome: Option<String>,
}

impl std::fmt::Debug for AuditReadCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |field: &Option<String>| field.is_some();
        f.debug_struct("AuditReadCommand")
            .field("from", &set(&self.from))
            .field("to", &set(&self.to))
            .field("merchant_id", &set(&self.merchant_id))
            .field("caller", &set(&self.caller))
            .field("event", &set(&self.event))
            .field("outcome", &set(&self.outcome))
            .finish()
    }
}

/// The events an audit read may filter by.
const EVENTS: [&str; 11] = [
    "tokenize",
    "detokenize",
    "metadata",
    "delete",
    "audit.read",
    "keys.admin",
    "vault.start",
    "vault.stop",
    "audit.prune",
    "tls.refused",
    "audit.key_replaced",
];

/// The outcomes an audit read may filter by.
const OUTCOMES: [&str; 12] = [
    "success",
    "rate_limited",
    "enumeration_refused",
    "denied",
    "unauthenticated",
    "invalid_argument",
    "not_found",
    "integrity_failure",
    "unavailable",
    "exhausted",
    "key_destroyed",
    "failed_precondition",
];

fn time_field(
    field: &'static str,
    text: Option<&str>,
) -> Result<Option<OffsetDateTime>, InvalidArgument> {
    let Some(text) = text.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    vault_audit::parse_time(text)
        .and_then(crate::clock::from_micros)
        .map(Some)
        .ok_or(InvalidArgument {
            field,
            problem: "must be an RFC 3339 time",
        })
}

/// `from` and `to` as times, `to` not before `from`.
fn time_range(
    from: Option<&str>,
    to: Option<&str>,
) -> Result<(Option<OffsetDateTime>, Option<OffsetDateTime>), InvalidArgument> {
    let (from, to) = (time_field("from", from)?, time_field("to", to)?);
    if let (Some(f), Some(t)) = (from, to)
        && f > t
    {
        return Err(InvalidArgument {
            field: "to",
            problem: "must not be before from",
        });
    }
    Ok((from, to))
}

fn one_of(
    field: &'static str,
    text: Option<&str>,
    allowed: &[&str],
) -> Result<Option<String>, InvalidArgument> {
    match text.filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) if allowed.contains(&t) => Ok(Some(t.to_owned())),
        Some(_) => Err(InvalidArgument {
            field,
            problem: "is not a known value",
        }),
    }
}

impl AuditReadCommand {
    fn parse(&self, merchant: Option<MerchantId>) -> Result<AuditQuery, InvalidArgument> {
        let caller = match self.caller.as_deref().filter(|c| !c.is_empty()) {
            None => None,
            Some(c) if c.len() > 1024 || contains_card_number(c) => {
                return Err(InvalidArgument {
                    field: "caller",
                    problem: "is not a caller identity",
                });
            }
            Some(c) => Some(CallerId::new(c)),
        };
        let (from, to) = time_range(self.from.as_deref(), self.to.as_deref())?;
        let query = AuditQuery {
            from,
            to,
            merchant,
            caller,
            event: one_of("event", self.event.as_deref(), &EVENTS)?,
            outcome: one_of("outcome", self.outcome.as_deref(), &OUTCOMES)?,
        };
        Ok(query)
    }
}

/// A prune request as the transport received it: the cutoff, and the export that holds what
/// goes. Its `Debug` does not show `before` as sent (a careless caller could type anything).
#[derive(Clone, Default)]
pub struct PruneCommand {
    /// RFC 3339: records older than this may go.
    pub before: String,
    /// The export's first checkpoint (`cp_seq`).
    pub export_first: u64,
    /// The export's last checkpoint.
    pub export_last: u64,
    /// The hash of the export's last checkpoint.
    pub export_last_hash: Vec<u8>,
}

impl std::fmt::Debug for PruneCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PruneCommand")
            .field("before", &"..")
            .field("export_first", &self.export_first)
            .field("export_last", &self.export_last)
            .finish_non_exhaustive()
    }
}

/// What a prune did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// The last checkpoint removed; `None` if nothing was old enough and exported.
    pub through: Option<u64>,
    /// What went.
    pub removed: PruneCounts,
    /// Writers that lost records.
    pub writers: u64,
    /// Prune checkpoints written at the cuts.
    pub checkpoints_written: u64,
}

/// A filtered read of the trail, page by page (the read itself is already audited).
pub struct AuditReader {
    vault: Vault,
    query: AuditQuery,
    cursor: Option<AuditCursor>,
    done: bool,
}

impl AuditReader {
    /// The next page of records, `None` at the end.
    ///
    /// # Errors
    /// [`VaultError::StoreUnavailable`].
    pub async fn next_page(&mut self) -> Result<Option<Vec<Entry>>, VaultError> {
        if self.done {
            return Ok(None);
        }
        let page = self
            .vault
            .store
            .find_audit(&self.query, self.cursor.as_ref(), PAGE)
            .await?;
        if page.len() < PAGE as usize {
            self.done = true;
        }
        let Some(last) = page.last() else {
            return Ok(None);
        };
        self.cursor = Some(AuditCursor {
            at_micros: vault_audit::parse_time(&last.at).unwrap_or(i64::MAX),
            writer: last.writer.clone(),
            seq: last.seq,
        });
        Ok(Some(page))
    }
}

/// An export in progress: the header, then the checkpoints, then each writer's records.
pub struct AuditExport {
    vault: Vault,
    header: ExportHeader,
    plan: ExportPlan,
    next_checkpoint: u64,
    writer: usize,
    after: u64,
}

impl AuditExport {
    /// What the export holds.
    #[must_use]
    pub fn header(&self) -> &ExportHeader {
        &self.header
    }

    /// The next lines (checkpoints, then records), `None` at the end.
    ///
    /// # Errors
    /// [`VaultError::StoreUnavailable`].
    pub async fn next_page(&mut self) -> Result<Option<Vec<Line>>, VaultError> {
        if let Some((_, last)) = self.plan.checkpoints
            && self.next_checkpoint <= last
        {
            let page = self
                .vault
                .store
                .checkpoints(self.next_checkpoint, last, PAGE)
                .await?;
            let Some(end) = page.last() else {
                // A gap in the stored chain: stop here; the verifier will say so.
                self.next_checkpoint = last + 1;
                return Ok(Some(Vec::new()));
            };
            self.next_checkpoint = end.cp_seq + 1;
            return Ok(Some(page.into_iter().map(Line::Checkpoint).collect()));
        }
        while let Some((writer, _, high)) = self.plan.writers.get(self.writer) {
            let page = self
                .vault
                .store
                .writer_records(writer, self.after, *high, PAGE)
                .await?;
            match page.last() {
                Some(last) if last.seq < *high => self.after = last.seq,
                _ => {
                    self.writer += 1;
                    self.after = self.plan.writers.get(self.writer).map_or(0, |w| w.1);
                }
            }
            if !page.is_empty() {
                return Ok(Some(page.into_iter().map(Line::Record).collect()));
            }
        }
        Ok(None)
    }
}

impl Vault {
    /// Loads the audit signing key (making it on the first start of the first replica) unless
    /// it is loaded already. Call before anything is served, so that a key that is missing or
    /// cannot be unwrapped stops the vault at start.
    ///
    /// # Errors
    /// [`VaultError::FailedPrecondition`] if signed checkpoints exist but no signing key does
    /// (the key is never replaced silently); KEK and store errors.
    pub async fn load_audit_key(&self) -> Result<PublicKey, VaultError> {
        if let Some(signer) = self.trail.signer.get() {
            return Ok(PublicKey::ed25519(signer.public));
        }
        let signer = self.load_signer().await?;
        let public = PublicKey::ed25519(signer.public);
        // Another start already loaded it: keep the first (they are the same key).
        let _ = self.trail.signer.set(signer);
        Ok(public)
    }

    /// Loads the audit signing key ([`Vault::load_audit_key`]), signs this writer's start, and
    /// records `vault.start`. Call once, before serving.
    ///
    /// # Errors
    /// Any [`VaultError`]: the vault must not serve without its audit trail.
    pub async fn start_audit(&self, detail: String) -> Result<PublicKey, VaultError> {
        let public = self.load_audit_key().await?;
        self.checkpoint(CheckpointKind::Start).await?;
        self.store
            .append_audit(&AuditRecord::system(Event::VaultStart, detail))
            .await
            .map_err(|e| VaultError::AuditUnavailable(e.to_string()))?;
        Ok(public)
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
        let operator = crate::reason::Reason::parse("operator", operator)?;
        let reason = crate::reason::Reason::parse("reason", reason)?;
        let Some((tip, _)) = self.store.checkpoint_tip().await? else {
            return Err(VaultError::FailedPrecondition(
                "no audit checkpoint is signed yet: vaultd makes the key when it starts",
            ));
        };
        let (state, version) = match self.store.audit_signing_key().await? {
            None => ("missing", 1),
            Some(wrapped) => match self.keys.signing_key(&wrapped).await {
                Ok(_) => {
                    return Err(VaultError::FailedPrecondition(
                        "the audit signing key is present and unwraps: nothing to replace",
                    ));
                }
                Err(VaultError::Integrity) => ("cannot be unwrapped", wrapped.context.version + 1),
                // The KEK that wrapped it is not configured, while the current one answers:
                // the key is lost for good. If the current KEK is down, it may come back.
                Err(VaultError::KeyUnavailable(_)) if self.keys.check().await.is_ok() => (
                    "wrapped by a KEK that is not configured",
                    wrapped.context.version + 1,
                ),
                Err(_) => {
                    return Err(VaultError::FailedPrecondition(
                        "the KEK is unreachable: bring it back before replacing the audit key",
                    ));
                }
            },
        };
        let old_key = self
            .store
            .checkpoints(tip, tip, 1)
            .await?
            .into_iter()
            .next()
            .map_or_else(|| "unknown".to_owned(), |checkpoint| checkpoint.key_id);
        let context = KeyContext {
            merchant: MerchantId::vault_owner(),
            purpose: KeyPurpose::AuditSigning,
            version,
        };
        let fresh = self.keys.wrap(context, &KeyMaterial::generate()).await?;
        if !self.store.add_audit_signing_key(&fresh).await? {
            return Err(VaultError::FailedPrecondition(
                "another audit signing key was stored meanwhile: run vaultd again",
            ));
        }
        let key = self.keys.signing_key(&fresh).await?;
        let public = PublicKey::ed25519(key.public_key());
        let detail = format!(
            "audit signing key {old_key} {state}; replaced by {} (version {version}) by operator \
             {operator}: {reason}",
            public.key_id,
            operator = operator.as_str(),
            reason = reason.as_str(),
        );
        let _ = self.trail.signer.set(Signer {
            public: key.public_key(),
            key,
            replacing: Some(old_key),
        });
        self.store
            .append_audit(&AuditRecord::system(Event::AuditKeyReplaced, detail))
            .await
            .map_err(|e| VaultError::AuditUnavailable(e.to_string()))?;
        self.checkpoint(CheckpointKind::KeyReplaced).await?;
        Ok(public)
    }

    /// Records `vault.stop` and signs this writer's final head. Call once, after serving.
    ///
    /// # Errors
    /// Any [`VaultError`].
    pub async fn stop_audit(&self, detail: String) -> Result<(), VaultError> {
        self.store
            .append_audit(&AuditRecord::system(Event::VaultStop, detail))
            .await
            .map_err(|e| VaultError::AuditUnavailable(e.to_string()))?;
        self.checkpoint(CheckpointKind::Stop).await.map(|_| ())
    }

    /// The public key auditors verify checkpoints with (after [`Vault::start_audit`]).
    #[must_use]
    pub fn audit_public_key(&self) -> Option<PublicKey> {
        self.trail
            .signer
            .get()
            .map(|signer| PublicKey::ed25519(signer.public))
    }

    /// This writer's audit chain.
    #[must_use]
    pub fn audit_writer(&self) -> &str {
        self.store.audit_writer()
    }

    /// Signs this writer's head. An interval checkpoint is skipped (`None`) when the head has
    /// not moved since this writer last signed it.
    ///
    /// # Errors
    /// [`VaultError::FailedPrecondition`] before [`Vault::start_audit`]; store and KEK errors.
    pub async fn checkpoint(&self, kind: CheckpointKind) -> Result<Option<Checkpoint>, VaultError> {
        let head = self.store.audit_head().await?;
        if kind == CheckpointKind::Interval
            && self.last_signed().is_some_and(|last| last == head.seq)
        {
            return Ok(None);
        }
        let checkpoint = self.sign_head(kind, &head).await?;
        if let Ok(mut last) = self.trail.last_signed.lock() {
            *last = Some(head.seq);
        }
        Ok(Some(checkpoint))
    }

    fn last_signed(&self) -> Option<u64> {
        self.trail.last_signed.lock().ok().and_then(|last| *last)
    }

    fn signer(&self) -> Result<&Signer, VaultError> {
        self.trail
            .signer
            .get()
            .ok_or(VaultError::FailedPrecondition(
                "the audit trail has not started",
            ))
    }

    async fn sign_head(
        &self,
        kind: CheckpointKind,
        head: &ChainHead,
    ) -> Result<Checkpoint, VaultError> {
        let signer = self.signer()?;
        for _ in 0..MAX_CHECKPOINT_ATTEMPTS {
            let tip = self.store.checkpoint_tip().await?;
            let checkpoint = signer.sign(kind, head, tip);
            if self.store.insert_checkpoint(&checkpoint).await? {
                return Ok(checkpoint);
            }
        }
        Err(VaultError::StoreUnavailable(
            "checkpoint kept losing its compare-and-set".to_owned(),
        ))
    }

    async fn load_signer(&self) -> Result<Signer, VaultError> {
        let wrapped = match self.store.audit_signing_key().await? {
            Some(wrapped) => wrapped,
            // Checkpoints signed by a key that is gone: a new key would verify nothing before
            // it, and only an auditor holding the old public key would notice.
            None if self.store.checkpoint_tip().await?.is_some() => {
                return Err(VaultError::FailedPrecondition(MISSING_AUDIT_KEY));
            }
            None => {
                let context = KeyContext {
                    merchant: MerchantId::vault_owner(),
                    purpose: KeyPurpose::AuditSigning,
                    version: 1,
                };
                let fresh = self.keys.wrap(context, &KeyMaterial::generate()).await?;
                self.store.add_audit_signing_key(&fresh).await?;
                // Whoever won the race, use the stored one.
                self.store
                    .audit_signing_key()
                    .await?
                    .ok_or(VaultError::Integrity)?
            }
        };
        let key = self.keys.signing_key(&wrapped).await?;
        let public = key.public_key();
        Ok(Signer {
            key,
            public,
            replacing: None,
        })
    }

    /// Authorizes a vault-wide audit call (a read limited to one merchant goes through
    /// `authorized_merchant` instead).
    fn authorize_audit(&self, audit: &AuditRecord, operation: Operation) -> Result<(), VaultError> {
        self.throttle(audit, operation, None, 1)?;
        if self.policy.allows_everywhere(&audit.caller, operation) {
            Ok(())
        } else {
            Err(VaultError::PermissionDenied { operation })
        }
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
        let mut audit = AuditRecord::begin(ctx, Operation::AuditRead).with_detail("audit.read");
        let result = async {
            // The merchant first (it decides which grant applies), then the rest; the quota
            // before anything, so that refused reads cost no more than one check each.
            let merchant = match command.merchant_id.as_deref().filter(|m| !m.is_empty()) {
                Some(id) => {
                    self.throttle(&audit, Operation::AuditRead, None, 1)?;
                    Some(
                        self.authorized_merchant(&mut audit, Operation::AuditRead, id)
                            .await?,
                    )
                }
                None => {
                    self.authorize_audit(&audit, Operation::AuditRead)?;
                    None
                }
            };
            let query = command.parse(merchant)?;
            Ok(Done::pending(AuditReader {
                vault: self.clone(),
                query,
                cursor: None,
                done: false,
            }))
        }
        .await;
        self.conclude(audit, result).await
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
        let audit = AuditRecord::begin(ctx, Operation::AuditRead).with_detail("audit.export");
        let result = async {
            self.authorize_audit(&audit, Operation::AuditRead)?;
            Ok(Done::pending(time_range(from.as_deref(), to.as_deref())?))
        }
        .await;
        let (from_at, to_at) = self.conclude(audit, result).await?;
        // Sign every head no checkpoint covers yet (this export's own record included).
        for head in self.store.unsealed_heads().await? {
            self.sign_head(CheckpointKind::Export, &head).await?;
        }
        let plan = self.store.plan_export(from_at, to_at).await?;
        let checkpoints = plan.checkpoints.map_or(0, |(a, b)| b + 1 - a);
        let records = plan.writers.iter().map(|(_, low, high)| high - low).sum();
        let exported_at = now();
        Ok(AuditExport {
            vault: self.clone(),
            header: ExportHeader {
                format: EXPORT_FORMAT.to_owned(),
                from: from_at.map(stamp),
                to: to_at.map(stamp),
                exported_at: stamp(exported_at),
                checkpoints,
                records,
                keep_until: exported_at
                    .checked_add(time::Duration::days(i64::from(
                        self.trail.retention.retain_days,
                    )))
                    .map(stamp),
            },
            next_checkpoint: plan.checkpoints.map_or(1, |c| c.0),
            after: plan.writers.first().map_or(0, |w| w.1),
            writer: 0,
            plan,
        })
    }

    /// The public key checkpoints verify under, for an auditor with `audit.read`; audited.
    ///
    /// # Errors
    /// Any [`VaultError`]; the call is audited either way.
    pub async fn audit_public_keys(&self, ctx: &CallContext) -> Result<Vec<PublicKey>, VaultError> {
        let audit = AuditRecord::begin(ctx, Operation::AuditRead).with_detail("audit.public_key");
        let result = async {
            self.authorize_audit(&audit, Operation::AuditRead)?;
            let key = self
                .audit_public_key()
                .ok_or(VaultError::FailedPrecondition(
                    "the audit trail has not started",
                ))?;
            Ok(Done::pending(vec![key]))
        }
        .await;
        self.conclude(audit, result).await
    }

    /// The same vault with these retention rules (before [`Vault::start_audit`]).
    #[must_use]
    pub fn with_audit_retention(mut self, retention: AuditRetention) -> Self {
        self.trail = std::sync::Arc::new(TrailState {
            retention,
            ..TrailState::default()
        });
        self
    }

    /// Removes records older than `before` that the named export holds, and the checkpoints
    /// before them (see [`PrunePlan`]), in one transaction with its own audit record. Each
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
        let mut audit = AuditRecord::begin(ctx, Operation::AuditPrune).with_detail("audit.prune");
        let result = self.prune_audited(&mut audit, &command).await;
        self.conclude(audit, result).await
    }

    async fn prune_audited(
        &self,
        audit: &mut AuditRecord,
        command: &PruneCommand,
    ) -> Result<Done<Pruned>, VaultError> {
        self.authorize_audit(audit, Operation::AuditPrune)?;
        let before = time_field("before", Some(&command.before))?.ok_or(InvalidArgument {
            field: "before",
            problem: "is required",
        })?;
        let online = time::Duration::days(i64::from(self.trail.retention.online_days));
        if now()
            .checked_sub(online)
            .is_none_or(|newest| before > newest)
        {
            return Err(InvalidArgument {
                field: "before",
                problem: "is inside the online window ([audit] online_days)",
            }
            .into());
        }
        let last_hash: [u8; HASH_LEN] =
            command
                .export_last_hash
                .as_slice()
                .try_into()
                .map_err(|_| InvalidArgument {
                    field: "export_last_hash",
                    problem: "must be 32 bytes",
                })?;
        if command.export_first == 0 || command.export_first > command.export_last {
            return Err(InvalidArgument {
                field: "export_first_checkpoint",
                problem: "must be from 1 to the export's last checkpoint",
            }
            .into());
        }
        audit.detail = Some(
            format!(
                "audit.prune before {} with export #{}..#{}",
                stamp(before),
                command.export_first,
                command.export_last
            )
            .into(),
        );
        for _ in 0..MAX_CHECKPOINT_ATTEMPTS {
            let Some(oldest) = self.store.checkpoints(1, u64::MAX, 1).await?.pop() else {
                return Ok(Done::pending(Pruned::default()));
            };
            if command.export_first > oldest.cp_seq {
                return Err(VaultError::FailedPrecondition(
                    "the export does not reach back to the oldest checkpoint online: export \
                     without --from and prune with that file",
                ));
            }
            let exported = self
                .store
                .checkpoints(command.export_last, command.export_last, 1)
                .await?;
            match exported.first() {
                None => {
                    return Err(VaultError::FailedPrecondition(
                        "the export's last checkpoint is not online: pruned already, or the \
                         export is another vault's",
                    ));
                }
                Some(stored) if stored.hash != last_hash => {
                    return Err(VaultError::FailedPrecondition(
                        "the export's last checkpoint is not this vault's: it is not an export \
                         of this trail",
                    ));
                }
                Some(_) => {}
            }
            let Some(plan) = self.store.plan_prune(command.export_last, before).await? else {
                return Ok(Done::pending(Pruned::default()));
            };
            let checkpoints = self.prune_checkpoints(&plan).await?;
            if let Some(removed) = self.store.prune_audit(&plan, &checkpoints, audit).await? {
                return Ok(Done::audited(Pruned {
                    through: Some(plan.through),
                    removed,
                    writers: plan.writers.len() as u64,
                    checkpoints_written: checkpoints.len() as u64,
                }));
            }
        }
        Err(VaultError::StoreUnavailable(
            "the prune kept losing its compare-and-set on checkpoints".to_owned(),
        ))
    }

    /// A prune checkpoint at each cut that no kept checkpoint signs, chained on the tip. A
    /// writer that stopped and loses everything needs none.
    async fn prune_checkpoints(&self, plan: &PrunePlan) -> Result<Vec<Checkpoint>, VaultError> {
        let signer = self.signer()?;
        let mut tip = self.store.checkpoint_tip().await?;
        let mut signed = Vec::new();
        for cut in &plan.writers {
            if cut.finished || cut.kept_low == Some(cut.cut) {
                continue;
            }
            let head = ChainHead {
                writer: cut.writer.clone(),
                seq: cut.cut,
                hash: cut.cut_hash,
            };
            let checkpoint = signer.sign(CheckpointKind::Prune, &head, tip);
            tip = Some((checkpoint.cp_seq, checkpoint.hash));
            signed.push(checkpoint);
        }
        Ok(signed)
    }
}
