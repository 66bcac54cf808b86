//! The audit trail's own use cases: the signing key, checkpoints, the vault's start and stop
//! records, and reading the trail (`audit.read`), every read audited before anything is
//! released.
//!
//! Records are chained by the store as they are written (`ports::AuditStore`); this module
//! signs chain heads. The signing key is an Ed25519 seed wrapped by the KEK like any other key
//! (owner `~vault`, purpose `audit_signing`), made by the first replica that needs it.
//!
//! `read.rs` holds the reads and exports, `prune.rs` the prune.

mod prune;
mod read;

use std::sync::{Arc, Mutex, OnceLock};

use vault_audit::{Checkpoint, CheckpointDraft, CheckpointKind, GENESIS, HASH_LEN, PublicKey};
use vault_crypto::{KeyMaterial, SigningKey};

use crate::audit::{AuditRecord, Event};
use crate::audited::Audited;
use crate::clock::{now, stamp};
use crate::error::VaultError;
use crate::ids::MerchantId;
use crate::keyring::KeyRing;
use crate::ports::{ChainHead, KeyContext, KeyPurpose, TokenStore};

pub use prune::{PruneCommand, Pruned};
pub use read::{AuditExport, AuditReadCommand, AuditReader};

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

/// The audit trail service: its signing key and checkpoints, reads, exports and prunes.
#[derive(Clone)]
pub(crate) struct AuditTrail {
    calls: Audited,
    store: Arc<dyn TokenStore>,
    keys: Arc<KeyRing>,
    state: Arc<TrailState>,
}

impl AuditTrail {
    pub(crate) fn new(
        calls: Audited,
        store: Arc<dyn TokenStore>,
        keys: Arc<KeyRing>,
        retention: AuditRetention,
    ) -> Self {
        Self {
            calls,
            store,
            keys,
            state: Arc::new(TrailState {
                retention,
                ..TrailState::default()
            }),
        }
    }

    /// Loads the audit signing key (making it on the first start of the first replica) unless
    /// it is loaded already. Call before anything is served, so that a key that is missing or
    /// cannot be unwrapped stops the vault at start.
    ///
    /// # Errors
    /// [`VaultError::FailedPrecondition`] if signed checkpoints exist but no signing key does
    /// (the key is never replaced silently); KEK and store errors.
    pub async fn load_audit_key(&self) -> Result<PublicKey, VaultError> {
        if let Some(signer) = self.state.signer.get() {
            return Ok(PublicKey::ed25519(signer.public));
        }
        let signer = self.load_signer().await?;
        let public = PublicKey::ed25519(signer.public);
        // Another start already loaded it: keep the first (they are the same key).
        let _ = self.state.signer.set(signer);
        Ok(public)
    }

    /// Loads the audit signing key ([`crate::Vault::load_audit_key`]), signs this writer's start, and
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
            .map_err(VaultError::AuditUnavailable)?;
        Ok(public)
    }

    /// Replaces an audit signing key that is lost (its row is missing while checkpoints it
    /// signed exist) or that no configured KEK can unwrap, as an explicit operator action
    /// (`vaultd replace-audit-key`): a new key version is made and stored, an
    /// `audit.key_replaced` record names the old key (from the newest checkpoint), the new one,
    /// the operator and the reason, and this writer's head is signed with the new key in a
    /// `key_replaced` checkpoint (the only kind at which the verifier accepts a change of key),
    /// which follows the old key's last checkpoint and covers the record that names it. Auditors then
    /// verify with both public keys. Follow with [`crate::Vault::stop_audit`].
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
        let _ = self.state.signer.set(Signer {
            public: key.public_key(),
            key,
            replacing: Some(old_key),
        });
        self.store
            .append_audit(&AuditRecord::system(Event::AuditKeyReplaced, detail))
            .await
            .map_err(VaultError::AuditUnavailable)?;
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
            .map_err(VaultError::AuditUnavailable)?;
        self.checkpoint(CheckpointKind::Stop).await.map(|_| ())
    }

    /// The public key auditors verify checkpoints with (after [`crate::Vault::start_audit`]).
    #[must_use]
    pub fn audit_public_key(&self) -> Option<PublicKey> {
        self.state
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
    /// [`VaultError::FailedPrecondition`] before [`crate::Vault::start_audit`]; store and KEK errors.
    pub async fn checkpoint(&self, kind: CheckpointKind) -> Result<Option<Checkpoint>, VaultError> {
        let head = self.store.audit_head().await?;
        if kind == CheckpointKind::Interval
            && self.last_signed().is_some_and(|last| last == head.seq)
        {
            return Ok(None);
        }
        let checkpoint = self.sign_head(kind, &head).await?;
        if let Ok(mut last) = self.state.last_signed.lock() {
            *last = Some(head.seq);
        }
        Ok(Some(checkpoint))
    }

    /// The audit signing key's signature of `message` (a destination's approval,
    /// `crate::forward::admin::approval_message`, whose label keeps it apart from checkpoints),
    /// loading the key if it is not loaded yet.
    pub(crate) async fn seal(&self, message: &[u8]) -> Result<Vec<u8>, VaultError> {
        self.load_audit_key().await?;
        Ok(self.signer()?.key.sign(message).to_vec())
    }

    /// True if `seal` is the audit signing key's signature of `message`. A key replaced since
    /// (`vaultd replace-audit-key`) makes every seal it made fail: approve again.
    pub(crate) async fn seal_holds(&self, message: &[u8], seal: &[u8]) -> Result<bool, VaultError> {
        self.load_audit_key().await?;
        let public = self.signer()?.public;
        Ok(<[u8; vault_crypto::SIGNATURE_LEN]>::try_from(seal)
            .is_ok_and(|seal| vault_crypto::verify_signature(&public, message, &seal)))
    }

    fn last_signed(&self) -> Option<u64> {
        self.state.last_signed.lock().ok().and_then(|last| *last)
    }

    fn signer(&self) -> Result<&Signer, VaultError> {
        self.state
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
            crate::error::StoreError::unavailable("checkpoint kept losing its compare-and-set"),
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
}
