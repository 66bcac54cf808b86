//! The ports the use cases need: a store (`destinations.rs`: the forward proxy's part) and a
//! key-encryption key. Adapters live in other crates; this crate knows no SQL, no key backend.

use async_trait::async_trait;
use time::OffsetDateTime;
use vault_crypto::{FINGERPRINT_LEN, KeyMaterial, Sealed};

use crate::audit::AuditRecord;
use crate::error::{KekError, StoreError};
use crate::expiry::Expiry;
use crate::ids::{CallerId, MerchantId};
use crate::pan::Brand;
use crate::reason::Reason;
use crate::token::{Token, TokenFormat};
use crate::truncation;
mod destinations;
pub use destinations::{DestinationStore, ForwardInFlight, StoredDestination};

/// What a key is for. Part of the associated data its wrapping is bound to, so a wrapped DEK
/// can never be unwrapped as a fingerprint key or the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyPurpose {
    /// Encrypts PANs (AES-256-GCM).
    Dek,
    /// Keys fingerprints (HMAC-SHA256).
    Fingerprint,
    /// The vault's Ed25519 audit signing key (its seed), owned by [`MerchantId::vault_owner`].
    AuditSigning,
}

impl KeyPurpose {
    /// The purpose's name as the store spells it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dek => "dek",
            Self::Fingerprint => "fingerprint",
            Self::AuditSigning => "audit_signing",
        }
    }

    /// The purpose named `name`.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Dek, Self::Fingerprint, Self::AuditSigning]
            .into_iter()
            .find(|p| p.as_str() == name)
    }
}

/// The context a wrapped key is bound to: KEK backends authenticate it as associated data.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyContext {
    /// The merchant the key belongs to.
    pub merchant: MerchantId,
    /// What the key is for.
    pub purpose: KeyPurpose,
    /// The key's version, from 1.
    pub version: u32,
}

impl KeyContext {
    /// Associated data for wrapping this key: label, merchant, purpose and version.
    #[must_use]
    pub fn associated_data(&self) -> Vec<u8> {
        vault_crypto::associated_data(
            "vault.key.v1",
            &[
                self.merchant.as_str().as_bytes(),
                self.purpose.as_str().as_bytes(),
                &self.version.to_be_bytes(),
            ],
        )
    }
}

/// A key as the store holds it: wrapped by a KEK, never in the clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// Whose key, what for, which version.
    pub context: KeyContext,
    /// Which KEK wrapped it (backend and key id), as the KEK reports it.
    pub kek_id: String,
    /// The wrapped bytes, opaque to everyone but the KEK.
    pub wrapped: Vec<u8>,
}

/// A merchant's current keys, wrapped: the newest DEK and the fingerprint key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerchantKeySet {
    /// The DEK new PANs are encrypted under.
    pub dek: WrappedKey,
    /// When that DEK version was created (for rotation by age).
    pub dek_created_at: OffsetDateTime,
    /// The fingerprint key (one per merchant; it never rotates, so dedup stays stable).
    pub fingerprint: WrappedKey,
}

/// One stored key version and its bookkeeping, for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVersionInfo {
    /// Whose key, what for, which version, and which KEK wraps it.
    pub key: WrappedKey,
    /// When it was created.
    pub created_at: OffsetDateTime,
    /// Encryptions reserved under it (DEKs).
    pub uses: u64,
    /// Tokens whose PAN it encrypts (DEKs).
    pub tokens: u64,
}

/// The result of reserving DEK uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UseReservation {
    /// Uses granted to the caller (0: the version has reached its cap, or is gone).
    pub granted: u64,
    /// The version's reserved uses after this reservation.
    pub total: u64,
}

/// A request to destroy a merchant's keys, awaiting a second admin's approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShredRequest {
    /// Its id, quoted by the approver.
    pub request_id: String,
    /// The merchant whose keys are to be destroyed.
    pub merchant: MerchantId,
    /// The admin who asked.
    pub requested_by: CallerId,
    /// When.
    pub requested_at: OffsetDateTime,
    /// Why.
    pub reason: Reason,
}

/// The non-sensitive facts about a tokenized card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardMetadata {
    /// The card brand.
    pub brand: Brand,
    /// The leading digits the truncation rule allows ([`crate::truncation`]): the first six of
    /// a card of 16 digits or more, fewer of a shorter one. Rows stored before the rule may
    /// hold six for every length: [`CardMetadata::truncated`] cuts them.
    pub bin: String,
    /// The last four digits.
    pub last4: String,
    /// The number of digits.
    pub pan_length: u8,
    /// The expiry, if one was given.
    pub expiry: Option<Expiry>,
    /// When the token was created, UTC.
    pub created_at: OffsetDateTime,
    /// The token's format.
    pub format: TokenFormat,
}

impl CardMetadata {
    /// The metadata as it may be shown: `bin` cut to the leading digits the truncation rule
    /// allows for `pan_length` digits and `last4` to four, whatever the stored row held (rows
    /// written before the rule hold the first six digits of short cards too), and `brand`
    /// unknown where the shown digits do not decide it.
    #[must_use]
    pub fn truncated(mut self) -> Self {
        self.bin = truncation::cut_leading(&self.bin, usize::from(self.pan_length));
        self.last4 = truncation::cut_trailing(&self.last4);
        // The stored brand is the card's; shown only where the shown digits decide it.
        if truncation::shown_brand(&self.bin) == Brand::Unknown {
            self.brand = Brand::Unknown;
        }
        self
    }
}

/// A token and its encrypted card, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// The token.
    pub token: Token,
    /// Its merchant.
    pub merchant: MerchantId,
    /// HMAC-SHA256 of the PAN under the merchant's fingerprint key.
    pub fingerprint: [u8; FINGERPRINT_LEN],
    /// The DEK version the PAN is encrypted under.
    pub dek_version: u32,
    /// The PAN, sealed with AES-256-GCM bound to merchant, token and DEK version.
    pub sealed: Sealed,
    /// Non-sensitive metadata.
    pub metadata: CardMetadata,
}

/// How an attempt to insert a token ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    /// The token, and its audit record, are durable.
    Inserted,
    /// The merchant already holds this token string: draw another. (Tokens are unique per
    /// merchant; another merchant's token of the same string does not take it.)
    TokenTaken,
    /// The merchant already has a token of this format for this fingerprint (a concurrent
    /// tokenize of the same card won the race): return that one.
    FingerprintTaken,
    /// The merchant no longer holds the DEK version the record was sealed under (a shred,
    /// perhaps by another replica). Nothing was stored; read the merchant's keys again.
    KeyGone,
}

/// Durable storage for the key lifecycle: DEK use counts and rotation, KEK rewrapping,
/// re-encryption and crypto-shred. Every change that needs a compare-and-set gets one; adding
/// a key and shredding a merchant are serialized per merchant, so a key added while the
/// merchant is being shredded never survives the shred.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Reserves up to `want` uses of the merchant's DEK `version`, never taking its count past
    /// `limit`. Durable before it returns. A version that is no longer stored (its merchant was
    /// shredded meanwhile) grants nothing, like a full one.
    async fn reserve_dek_uses(
        &self,
        merchant: &MerchantId,
        version: u32,
        want: u64,
        limit: u64,
    ) -> Result<UseReservation, StoreError>;

    /// Stores a new DEK version (rotation), and `audit` (an admin's rotation) in the same
    /// transaction, whether or not the key was added. `Ok(false)` if that version exists
    /// already (another replica rotated first) or the merchant was shredded.
    async fn add_data_key(
        &self,
        key: &WrappedKey,
        audit: Option<&AuditRecord>,
    ) -> Result<bool, StoreError>;

    /// Every key version of the merchant, oldest first.
    async fn key_versions(&self, merchant: &MerchantId) -> Result<Vec<KeyVersionInfo>, StoreError>;

    /// The merchant's tokens under DEK versions older than `newest`, in token order after
    /// `after` (from the start if empty), at most `limit`.
    async fn tokens_under_older_dek(
        &self,
        merchant: &MerchantId,
        newest: u32,
        after: &str,
        limit: u32,
    ) -> Result<Vec<TokenRecord>, StoreError>;

    /// How many of the merchant's tokens are under DEK versions older than `newest`.
    async fn count_tokens_under_older_dek(
        &self,
        merchant: &MerchantId,
        newest: u32,
    ) -> Result<u64, StoreError>;

    /// Replaces a token's ciphertext and DEK version with `record`'s if the row is still under
    /// `from_version`. `Ok(false)` if it was changed or deleted meanwhile.
    async fn reencrypt_token(
        &self,
        record: &TokenRecord,
        from_version: u32,
    ) -> Result<bool, StoreError>;

    /// Keys (every merchant and purpose) not wrapped under `kek_id`, in key order after
    /// `after`, at most `limit`.
    async fn keys_not_under(
        &self,
        kek_id: &str,
        after: Option<&KeyContext>,
        limit: u32,
    ) -> Result<Vec<WrappedKey>, StoreError>;

    /// How many keys are not wrapped under `kek_id`.
    async fn count_keys_not_under(&self, kek_id: &str) -> Result<u64, StoreError>;

    /// Replaces a key's wrapping with `new`'s if it still is `old`'s. `Ok(false)` if it was
    /// changed or destroyed meanwhile.
    async fn rewrap_key(&self, old: &WrappedKey, new: &WrappedKey) -> Result<bool, StoreError>;

    /// The merchant's pending shred request, if any (expired ones included).
    async fn pending_shred(
        &self,
        merchant: &MerchantId,
    ) -> Result<Option<ShredRequest>, StoreError>;

    /// Stores `request` as the merchant's pending shred request, with `audit`, in one
    /// transaction; `supersede` names an expired pending request it replaces. `Ok(false)`,
    /// having written nothing, if another request is pending.
    async fn request_shred(
        &self,
        request: &ShredRequest,
        supersede: Option<&str>,
        audit: &AuditRecord,
    ) -> Result<bool, StoreError>;

    /// Executes the pending request `request_id` of `merchant`, approved by `approver` (who
    /// must not be its requester): destroys every key of the merchant, marks it shredded and
    /// writes `audit`, in one transaction. Returns the number of keys destroyed, or `Ok(None)`,
    /// having written nothing, if there is no such pending request by another identity.
    async fn execute_shred(
        &self,
        merchant: &MerchantId,
        request_id: &str,
        approver: &CallerId,
        audit: &AuditRecord,
    ) -> Result<Option<u64>, StoreError>;

    /// True once the merchant's keys were destroyed.
    async fn is_shredded(&self, merchant: &MerchantId) -> Result<bool, StoreError>;

    /// Every merchant the store knows (with keys, or shredded), the vault's own keys' owner
    /// excepted, read back without the input rules (see [`MerchantId::from_stored`]).
    async fn merchant_ids(&self) -> Result<Vec<MerchantId>, StoreError>;
}

/// A writer's chain head: its newest committed record (seq 0 and [`vault_audit::GENESIS`]
/// before the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// The writer.
    pub writer: String,
    /// The newest record's seq.
    pub seq: u64,
    /// The newest record's hash.
    pub hash: [u8; vault_audit::HASH_LEN],
}

/// Which audit records a read wants. Every filter is optional; times are UTC, `to` exclusive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Records at or after this time.
    pub from: Option<OffsetDateTime>,
    /// Records before this time.
    pub to: Option<OffsetDateTime>,
    /// Only this merchant's.
    pub merchant: Option<MerchantId>,
    /// Only this caller's.
    pub caller: Option<CallerId>,
    /// Only this event (`detokenize`, `keys.admin`, `vault.start`, ...).
    pub event: Option<String>,
    /// Only this outcome (`success`, `denied`, ...).
    pub outcome: Option<String>,
}

/// Where a paged audit read resumes: after this record (by time, writer, seq).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCursor {
    /// The last record's time, microseconds since the epoch.
    pub at_micros: i64,
    /// Its writer.
    pub writer: String,
    /// Its seq.
    pub seq: u64,
}

/// What an export holds: a contiguous run of checkpoints, and for each writer the records
/// between the lowest and highest head signed for it in that run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportPlan {
    /// The first and last checkpoint (`None`: no checkpoint at all yet).
    pub checkpoints: Option<(u64, u64)>,
    /// Each writer's records: seqs after `.1` up to `.2`.
    pub writers: Vec<(String, u64, u64)>,
}

impl ExportPlan {
    /// An export's first checkpoint when it starts at a time: for every writer with a
    /// checkpoint after that time (`after`: its oldest one), its newest checkpoint at or before
    /// it (`before`), or that first one after if it started later; the lowest of those, or
    /// `tip` if no writer wrote after the time.
    #[must_use]
    pub fn first_checkpoint<K: Ord>(
        before: &std::collections::BTreeMap<K, u64>,
        after: &std::collections::BTreeMap<K, u64>,
        tip: u64,
    ) -> u64 {
        after
            .iter()
            .map(|(writer, first_after)| before.get(writer).copied().unwrap_or(*first_after))
            .min()
            .unwrap_or(tip)
    }

    /// An export's last checkpoint when it ends at a time: for every writer with a checkpoint
    /// from `first` on (`newest`: its newest one), its first checkpoint at or after the time
    /// (`after`), or its newest; the highest of those, never before `first`.
    #[must_use]
    pub fn last_checkpoint<K: Ord>(
        newest: &std::collections::BTreeMap<K, u64>,
        after: &std::collections::BTreeMap<K, u64>,
        first: u64,
    ) -> u64 {
        newest
            .iter()
            .map(|(writer, newest)| after.get(writer).copied().unwrap_or(*newest))
            .max()
            .unwrap_or(first)
            .max(first)
    }
}

/// What a prune removes (PCI DSS 10.5.1: records leave the online trail only after export).
///
/// Checkpoints form one chain across writers, so only a prefix of it can go: every checkpoint
/// up to `through`, the newest exported checkpoint older than the cutoff (with every one before
/// it older too). Each writer loses its records up to its `cut`: the newest head a removed
/// checkpoint signed for it, or the lowest head a kept one signs if that is lower (an earlier
/// prune's anchor). All of them were exported and are older than the cutoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrunePlan {
    /// The export's last checkpoint the plan was made for.
    pub exported: u64,
    /// The cutoff it was made for.
    pub before: OffsetDateTime,
    /// The last checkpoint removed.
    pub through: u64,
    /// The writers that lose records, by writer.
    pub writers: Vec<PruneCut>,
}

/// One writer's part of a [`PrunePlan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneCut {
    /// The writer.
    pub writer: String,
    /// Its records up to this seq go.
    pub cut: u64,
    /// The hash of its record at `cut` (as the removed checkpoint signed it).
    pub cut_hash: [u8; vault_audit::HASH_LEN],
    /// The lowest head its kept checkpoints sign, if it has any: when that is not `cut`, a
    /// prune checkpoint at `cut` must anchor what is kept.
    pub kept_low: Option<u64>,
    /// It stopped cleanly (its newest checkpoint is a stop at `cut`) and has no record after
    /// `cut`: it is closed, and nothing of it stays.
    pub finished: bool,
}

/// What a prune removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneCounts {
    /// Records.
    pub records: u64,
    /// Checkpoints.
    pub checkpoints: u64,
    /// Writers closed (nothing of them left).
    pub writers_closed: u64,
}

/// The audit trail's storage: records are chained as they are written (every store method
/// that takes an [`AuditRecord`] appends it to this store's writer chain in the same
/// transaction), checkpoints are kept in their own chain, and both are read back for audits.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// This store's writer: the chain its records join.
    fn audit_writer(&self) -> &str;

    /// This writer's committed head.
    async fn audit_head(&self) -> Result<ChainHead, StoreError>;

    /// Every writer's head that no checkpoint signs yet.
    async fn unsealed_heads(&self) -> Result<Vec<ChainHead>, StoreError>;

    /// The newest checkpoint's `cp_seq` and hash.
    async fn checkpoint_tip(
        &self,
    ) -> Result<Option<(u64, [u8; vault_audit::HASH_LEN])>, StoreError>;

    /// The vault's newest audit signing key, wrapped.
    async fn audit_signing_key(&self) -> Result<Option<WrappedKey>, StoreError>;

    /// Stores the vault's audit signing key; `Ok(false)` if that version exists already
    /// (another replica made it first: read that one).
    async fn add_audit_signing_key(&self, key: &WrappedKey) -> Result<bool, StoreError>;

    /// Stores `checkpoint`; `Ok(false)` if its `cp_seq` was taken meanwhile (draw again).
    async fn insert_checkpoint(
        &self,
        checkpoint: &vault_audit::Checkpoint,
    ) -> Result<bool, StoreError>;

    /// Checkpoints with `cp_seq` from `from` to `to` (inclusive), ascending, at most `limit`.
    async fn checkpoints(
        &self,
        from: u64,
        to: u64,
        limit: u32,
    ) -> Result<Vec<vault_audit::Checkpoint>, StoreError>;

    /// What an export of `[from, to)` holds (see [`ExportPlan`]).
    async fn plan_export(
        &self,
        from: Option<OffsetDateTime>,
        to: Option<OffsetDateTime>,
    ) -> Result<ExportPlan, StoreError>;

    /// `writer`'s records with seq in `(after, to]`, ascending, at most `limit`.
    async fn writer_records(
        &self,
        writer: &str,
        after: u64,
        to: u64,
        limit: u32,
    ) -> Result<Vec<vault_audit::Entry>, StoreError>;

    /// Records matching `query`, by time, writer and seq, after `cursor`, at most `limit`.
    async fn find_audit(
        &self,
        query: &AuditQuery,
        cursor: Option<&AuditCursor>,
        limit: u32,
    ) -> Result<Vec<vault_audit::Entry>, StoreError>;

    /// What pruning would remove given that checkpoints up to `exported` were exported and
    /// the cutoff is `before` (see [`PrunePlan`]); `None` if nothing can go.
    async fn plan_prune(
        &self,
        exported: u64,
        before: OffsetDateTime,
    ) -> Result<Option<PrunePlan>, StoreError>;

    /// Carries out `plan` in one transaction, serialized with every other prune: removes its
    /// records and checkpoints, stores `checkpoints` (the prune checkpoints at the cuts,
    /// chained on the current tip) and appends `audit`. `Ok(None)`, having changed nothing, if
    /// the trail no longer gives the same plan or a checkpoint's `cp_seq` was taken meanwhile
    /// (plan and sign again).
    async fn prune_audit(
        &self,
        plan: &PrunePlan,
        checkpoints: &[vault_audit::Checkpoint],
        audit: &AuditRecord,
    ) -> Result<Option<PruneCounts>, StoreError>;
}

/// One vault-wide tally: the distinct items (card fingerprints, merchant ids) a caller brought
/// into one bucket in one fixed time window. The domain decides what is counted and what a
/// count means (`guard.rs`); the store only counts, durably and shared by every replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TallyRequest {
    /// What kind of thing is counted, e.g. `tokenize.card_bucket`.
    pub scope: &'static str,
    /// Whose bucket: the caller and what the scope groups by.
    pub subject: String,
    /// The window's end, seconds since the Unix epoch (UTC); one tally per window.
    pub window_end: i64,
    /// The items to add, in order; an item already in the tally is not counted again.
    pub items: Vec<Vec<u8>>,
    /// Once the count is past this, items are no longer stored or counted (the bucket is
    /// spent for the window): the tally's size stays bounded whatever a caller sends.
    pub limit: u64,
    /// Push the count past `limit` after adding the items: the domain saw the signature of
    /// abuse in one request and spends the bucket at once.
    pub trip: bool,
}

/// What adding one item to a tally found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tallied {
    /// The tally's count after this item (for a new item: its own place in the count).
    pub count: u64,
    /// The item was new to the tally and was counted.
    pub new: bool,
}

/// Durable, vault-wide counting for abuse resistance. Counting only: what a count means is
/// the domain's decision.
#[async_trait]
pub trait TallyStore: Send + Sync {
    /// Adds each request's items to its tally, in order, in one transaction; one [`Tallied`]
    /// per item. While a tally's count is within its `limit`, a new item is stored and counted
    /// atomically (concurrent callers on any replica get distinct counts); past it, nothing is
    /// added and every item reads the count.
    async fn tally(&self, requests: &[TallyRequest]) -> Result<Vec<Vec<Tallied>>, StoreError>;

    /// Deletes the tallies of windows that ended at or before `ended_by` (seconds since the
    /// epoch). Returns how many tallies went.
    async fn purge_tallies(&self, ended_by: i64) -> Result<u64, StoreError>;
}

/// Durable storage for tokens, keys and audit records.
///
/// Implementations enforce uniqueness with constraints, not application locks: a token string
/// is unique in the vault, a (merchant, fingerprint, format) has at most one token, and a
/// (merchant, purpose, version) at most one key.
#[async_trait]
pub trait TokenStore: KeyStore + AuditStore + TallyStore + DestinationStore {
    /// The merchant's newest DEK and its fingerprint key, if it has any.
    async fn merchant_keys(
        &self,
        merchant: &MerchantId,
    ) -> Result<Option<MerchantKeySet>, StoreError>;

    /// Stores a merchant's first keys. If another caller stored them first, this does nothing
    /// and returns `Ok(false)`; the caller then reads back the winner's keys.
    async fn create_merchant_keys(&self, keys: &MerchantKeySet) -> Result<bool, StoreError>;

    /// One version of a merchant's DEK.
    async fn data_key(
        &self,
        merchant: &MerchantId,
        version: u32,
    ) -> Result<Option<WrappedKey>, StoreError>;

    /// The merchant's token of `format` for this fingerprint, if any, while the merchant holds
    /// DEK version `held` (the caller's keys may be held in memory: a shred made elsewhere
    /// finds nothing here, and the insert that follows answers [`InsertOutcome::KeyGone`]).
    async fn token_by_fingerprint(
        &self,
        merchant: &MerchantId,
        fingerprint: &[u8; FINGERPRINT_LEN],
        format: TokenFormat,
        held: u32,
    ) -> Result<Option<TokenRecord>, StoreError>;

    /// The merchant's tokens of `format` for any of these fingerprints (at most one each, in no
    /// particular order), while the merchant holds DEK version `held`, as
    /// [`TokenStore::token_by_fingerprint`]: one read for a whole batch.
    async fn tokens_by_fingerprints(
        &self,
        merchant: &MerchantId,
        fingerprints: &[[u8; FINGERPRINT_LEN]],
        format: TokenFormat,
        held: u32,
    ) -> Result<Vec<TokenRecord>, StoreError>;

    /// Inserts a token and its audit record in one transaction: both are durable, or neither;
    /// nothing unless the merchant holds the record's DEK version ([`InsertOutcome::KeyGone`]).
    async fn insert_token(
        &self,
        record: &TokenRecord,
        audit: &AuditRecord,
    ) -> Result<InsertOutcome, StoreError>;

    /// The merchant's token, if it exists.
    async fn token(
        &self,
        merchant: &MerchantId,
        token: &Token,
    ) -> Result<Option<TokenRecord>, StoreError>;

    /// The merchant's token, if it exists, with the DEK version it was sealed under (`None` if
    /// the merchant no longer holds it): a detokenize's reads, in one round trip.
    async fn token_and_key(
        &self,
        merchant: &MerchantId,
        token: &Token,
    ) -> Result<Option<(TokenRecord, Option<WrappedKey>)>, StoreError>;

    /// Deletes the merchant's token and writes `audit` in one transaction. Returns `Ok(false)`,
    /// having written nothing, if there was no such token.
    async fn delete_token(
        &self,
        merchant: &MerchantId,
        token: &Token,
        audit: &AuditRecord,
    ) -> Result<bool, StoreError>;

    /// Appends an audit record and returns once it is durable.
    async fn append_audit(&self, audit: &AuditRecord) -> Result<(), StoreError>;
}

/// A key as a KEK wrapped it: which KEK key (and version) did it, and the opaque bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wrapping {
    /// The KEK key that wrapped it, e.g. `pkcs11:vault/kek-2026` or `transit:vault-kek:v3`.
    pub kek_id: String,
    /// The wrapped bytes.
    pub wrapped: Vec<u8>,
}

/// A key-encryption key: wraps and unwraps DEKs and fingerprint keys, binding each to its
/// [`KeyContext`]. It never hands out its own key material.
///
/// A KEK id names the backend, the key and, where the backend versions keys (Transit), the
/// version: it is stored beside every key the KEK wraps, so the store records which KEK wraps
/// each DEK version, and KEK rotation can tell which keys still need rewrapping.
#[async_trait]
pub trait KeyEncryptionKey: Send + Sync {
    /// Names the backend and key (without a version), for logs and errors.
    fn name(&self) -> &str;

    /// True if a key stored with `kek_id` was wrapped by this KEK (by any of its versions).
    fn owns(&self, kek_id: &str) -> bool;

    /// The KEK id new wraps are made under. For a versioned backend this asks it, since an
    /// operator may have rotated the key since the vault started.
    async fn current_id(&self) -> Result<String, KekError>;

    /// Wraps `key`, bound to `context`, under the KEK's current version.
    async fn wrap(&self, context: &KeyContext, key: &KeyMaterial) -> Result<Wrapping, KekError>;

    /// Unwraps a key wrapped under `context` by the KEK key `kek_id`. Fails with
    /// [`KekError::Integrity`] if the bytes or the context differ from what was wrapped.
    async fn unwrap(
        &self,
        context: &KeyContext,
        kek_id: &str,
        wrapped: &[u8],
    ) -> Result<KeyMaterial, KekError>;

    /// Checks that the backend can be used now (reachable, logged in or unsealed, key
    /// present). Health reporting calls it every second; it must be cheap.
    async fn check(&self) -> Result<(), KekError>;
}
