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
    Checkpoint, CheckpointDraft, CheckpointKind, EXPORT_FORMAT, Entry, ExportHeader, GENESIS, Line,
    PublicKey,
};
use vault_crypto::{KeyMaterial, SigningKey};

use crate::audit::{AuditRecord, Event};
use crate::error::{InvalidArgument, VaultError};
use crate::ids::{CallContext, CallerId, MerchantId};
use crate::pan::contains_card_number;
use crate::policy::Operation;
use crate::ports::{AuditCursor, AuditQuery, ChainHead, ExportPlan, KeyContext, KeyPurpose};
use crate::vault::{Done, Vault, now};

/// Rows per page when reading the trail.
const PAGE: u32 = 500;

/// How many times a checkpoint retries its compare-and-set on `cp_seq`.
const MAX_CHECKPOINT_ATTEMPTS: usize = 64;

/// The unwrapped signing key, and what this writer signed last.
#[derive(Default)]
pub struct TrailState {
    signer: OnceLock<Signer>,
    last_signed: Mutex<Option<u64>>,
}

struct Signer {
    key: SigningKey,
    public: [u8; vault_crypto::PUBLIC_KEY_LEN],
}

fn micros(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

fn stamp(at: OffsetDateTime) -> String {
    vault_audit::format_time(micros(at)).unwrap_or_default()
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
const EVENTS: [&str; 9] = [
    "tokenize",
    "detokenize",
    "metadata",
    "delete",
    "audit.read",
    "keys.admin",
    "vault.start",
    "vault.stop",
    "audit.prune",
];

/// The outcomes an audit read may filter by.
const OUTCOMES: [&str; 10] = [
    "success",
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
        .and_then(|m| OffsetDateTime::from_unix_timestamp_nanos(i128::from(m) * 1_000).ok())
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
    fn parse(&self) -> Result<AuditQuery, InvalidArgument> {
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
            merchant: self
                .merchant_id
                .as_deref()
                .filter(|m| !m.is_empty())
                .map(|m| MerchantId::parse("merchant_id", m))
                .transpose()?,
            caller,
            event: one_of("event", self.event.as_deref(), &EVENTS)?,
            outcome: one_of("outcome", self.outcome.as_deref(), &OUTCOMES)?,
        };
        Ok(query)
    }
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
    /// Loads the audit signing key (making it on the first start of the first replica), signs
    /// this writer's start, and records `vault.start`. Call once, before serving.
    ///
    /// # Errors
    /// Any [`VaultError`]: the vault must not serve without its audit trail.
    pub async fn start_audit(&self, detail: String) -> Result<PublicKey, VaultError> {
        let signer = self.load_signer().await?;
        let public = PublicKey::ed25519(signer.public);
        // Another start already loaded it: keep the first (they are the same key).
        let _ = self.trail.signer.set(signer);
        self.checkpoint(CheckpointKind::Start).await?;
        self.store
            .append_audit(&AuditRecord::system(Event::VaultStart, detail))
            .await
            .map_err(|e| VaultError::AuditUnavailable(e.to_string()))?;
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

    async fn sign_head(
        &self,
        kind: CheckpointKind,
        head: &ChainHead,
    ) -> Result<Checkpoint, VaultError> {
        let signer = self
            .trail
            .signer
            .get()
            .ok_or(VaultError::FailedPrecondition(
                "the audit trail has not started",
            ))?;
        for _ in 0..MAX_CHECKPOINT_ATTEMPTS {
            let (cp_seq, prev_hash) = self
                .store
                .checkpoint_tip()
                .await?
                .map_or((1, GENESIS), |(n, hash)| (n + 1, hash));
            let draft = CheckpointDraft {
                cp_seq,
                kind,
                at: stamp(now()),
                writer: head.writer.clone(),
                seq: head.seq,
                head_hash: head.hash,
                prev_hash,
            };
            let checkpoint = draft.sign(&signer.public, |payload| signer.key.sign(payload));
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
        Ok(Signer { key, public })
    }

    /// Authorizes an audit call: vault-wide `audit.read`, or `audit.read` for the merchant a
    /// read is limited to.
    fn authorize_audit(
        &self,
        audit: &AuditRecord,
        merchant: Option<&MerchantId>,
    ) -> Result<(), VaultError> {
        match merchant {
            Some(merchant) => self.authorize(audit, Operation::AuditRead, merchant),
            None if self
                .policy
                .allows_everywhere(&audit.caller, Operation::AuditRead) =>
            {
                Ok(())
            }
            None => Err(VaultError::PermissionDenied {
                operation: Operation::AuditRead,
            }),
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
            // The merchant first (it decides which grant applies), then the rest.
            let merchant = command
                .merchant_id
                .as_deref()
                .filter(|m| !m.is_empty())
                .map(|m| MerchantId::parse("merchant_id", m))
                .transpose()?;
            audit.merchant.clone_from(&merchant);
            self.authorize_audit(&audit, merchant.as_ref())?;
            let query = command.parse()?;
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
            self.authorize_audit(&audit, None)?;
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
        Ok(AuditExport {
            vault: self.clone(),
            header: ExportHeader {
                format: EXPORT_FORMAT.to_owned(),
                from: from_at.map(stamp),
                to: to_at.map(stamp),
                exported_at: stamp(now()),
                checkpoints,
                records,
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
            self.authorize_audit(&audit, None)?;
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
}
