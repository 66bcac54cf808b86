//! The use cases: tokenize, detokenize, read metadata, delete. Each validates its request into
//! domain types, checks the policy, does the work through the ports, and writes exactly one
//! audit record, allowed or denied (a call refused by a rate limit: see [`RefusalLog`]). A call
//! whose audit record cannot be written fails with [`VaultError::AuditUnavailable`] and
//! releases nothing (fail closed).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use time::OffsetDateTime;
use vault_crypto::{AeadKey, FINGERPRINT_LEN, FingerprintKey, KeyMaterial};
use zeroize::Zeroizing;

use crate::audit::AuditRecord;
use crate::clock::now;
use crate::error::{InvalidArgument, Throttle, VaultError};
use crate::expiry::Expiry;
use crate::guard::{self, GuardSettings, Verdict};
use crate::ids::{CallContext, CallerId, MerchantId};
use crate::keyring::KeyRing;
use crate::lifecycle::{DekLimits, UseLeases};
use crate::limits::{CallLimiter, LimitKey, Refusal, RefusalLog, Unlimited};
use crate::pan::{CARD_LIKE, Pan};
use crate::policy::{Operation, Policy};
use crate::ports::{
    CardMetadata, InsertOutcome, KeyContext, KeyPurpose, MerchantKeySet, Tallied, TallyRequest,
    TokenRecord, TokenStore,
};
use crate::reason::Reason;
use crate::token::{Token, TokenFormat};

/// How many tokens to draw for one card before giving up on collisions.
const MAX_TOKEN_ATTEMPTS: usize = 16;

/// The most cards one TokenizeBatch may carry.
pub const MAX_BATCH_CARDS: usize = 1000;

/// A Tokenize request as the transport received it, not yet validated.
pub struct TokenizeCommand {
    /// The merchant id, unparsed.
    pub merchant_id: String,
    /// The card number, unparsed; zeroized on drop.
    pub pan: Zeroizing<String>,
    /// Expiry month, if given.
    pub exp_month: Option<u32>,
    /// Expiry year, if given.
    pub exp_year: Option<u32>,
    /// The requested format; `None` when the request named a format this vault does not know.
    pub format: Option<TokenFormat>,
}

impl fmt::Debug for TokenizeCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenizeCommand")
            .field("merchant_id", &self.merchant_id.len())
            .field("pan", &"<redacted>")
            .field("exp_month", &self.exp_month)
            .field("exp_year", &self.exp_year)
            .field("format", &self.format)
            .finish()
    }
}

/// One card of a TokenizeBatch request, not yet validated.
pub struct BatchCard {
    /// The card number, unparsed; zeroized on drop.
    pub pan: Zeroizing<String>,
    /// Expiry month, if given.
    pub exp_month: Option<u32>,
    /// Expiry year, if given.
    pub exp_year: Option<u32>,
}

impl fmt::Debug for BatchCard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchCard")
            .field("pan", &"<redacted>")
            .field("exp_month", &self.exp_month)
            .field("exp_year", &self.exp_year)
            .finish()
    }
}

/// A TokenizeBatch request as the transport received it: up to [`MAX_BATCH_CARDS`] cards of
/// one merchant, one format. Its `Debug` shows how many cards, never a PAN.
pub struct TokenizeBatchCommand {
    /// The merchant id, unparsed.
    pub merchant_id: String,
    /// The cards, in the order their results are returned.
    pub cards: Vec<BatchCard>,
    /// The requested format; `None` when the request named a format this vault does not know.
    pub format: Option<TokenFormat>,
}

impl fmt::Debug for TokenizeBatchCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenizeBatchCommand")
            .field("merchant_id", &self.merchant_id.len())
            .field("cards", &self.cards)
            .field("format", &self.format)
            .finish()
    }
}

/// A validated card: what tokenizing it needs besides the merchant's keys.
struct Card {
    pan: Pan,
    metadata: CardMetadata,
}

impl Card {
    fn parse(
        pan: &str,
        exp_month: Option<u32>,
        exp_year: Option<u32>,
        format: TokenFormat,
    ) -> Result<Self, InvalidArgument> {
        let pan = Pan::parse("pan", pan)?;
        let expiry = Expiry::parse(exp_month, exp_year)?;
        let metadata = CardMetadata {
            brand: pan.brand(),
            // Stored as shown: only the leading digits the truncation rule allows.
            bin: crate::truncation::leading(&pan).to_owned(),
            last4: pan.last4().to_owned(),
            pan_length: u8::try_from(pan.len()).unwrap_or(u8::MAX),
            expiry,
            created_at: now(),
            format,
        };
        Ok(Self { pan, metadata })
    }
}

/// A request that names a merchant's token (Detokenize, metadata, delete), not yet validated.
/// Its `Debug` redacts the unvalidated fields a careless caller might put a PAN in.
#[derive(Clone, Default)]
pub struct TokenCommand {
    /// The merchant id, unparsed.
    pub merchant_id: String,
    /// The token, unparsed.
    pub token: String,
    /// The reason, unparsed (Detokenize only).
    pub reason: String,
}

impl fmt::Debug for TokenCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCommand")
            .field("merchant_id", &self.merchant_id.len())
            .field("token", &self.token.len())
            .field("reason", &"<redacted>")
            .finish()
    }
}

impl TokenCommand {
    /// A command for the calls that take no reason (metadata, delete).
    #[must_use]
    pub fn without_reason(merchant_id: String, token: String) -> Self {
        Self {
            merchant_id,
            token,
            reason: String::new(),
        }
    }
}

/// The result of a tokenize.
#[derive(Debug, Clone)]
pub struct Tokenized {
    /// The token.
    pub token: Token,
    /// The card's fingerprint for this merchant.
    pub fingerprint: [u8; FINGERPRINT_LEN],
    /// The card's metadata, cut to the truncation rule ([`CardMetadata::truncated`]).
    pub metadata: CardMetadata,
    /// True if the card was already tokenized and its existing token is returned.
    pub existing: bool,
}

/// The result of a detokenize. `Pan`'s `Debug` is redacted.
#[derive(Debug)]
pub struct Detokenized {
    /// The card number.
    pub pan: Pan,
    /// Its expiry, if one was stored.
    pub expiry: Option<Expiry>,
}

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

/// Fails closed unless the store answered every item of every tally request: a short answer
/// must not read as "nothing over the limit".
fn answered_in_full(requests: &[TallyRequest], tallies: &[Vec<Tallied>]) -> Result<(), VaultError> {
    let full = requests.len() == tallies.len()
        && requests
            .iter()
            .zip(tallies)
            .all(|(request, tallied)| request.items.len() == tallied.len());
    if full {
        Ok(())
    } else {
        Err(VaultError::StoreUnavailable(
            "the store answered a tally short".to_owned(),
        ))
    }
}

/// A validated, authorized batch: its cards with their fingerprints, the merchant's keys, and
/// the merchant's existing tokens among those fingerprints.
struct OpenBatch {
    merchant: MerchantId,
    cards: Vec<(Card, [u8; FINGERPRINT_LEN])>,
    keys: MerchantKeys,
    found: HashMap<[u8; FINGERPRINT_LEN], TokenRecord>,
}

/// A merchant's unwrapped current keys.
#[derive(Clone)]
pub(crate) struct MerchantKeys {
    pub(crate) dek_version: u32,
    pub(crate) dek: Arc<AeadKey>,
    pub(crate) dek_created_at: OffsetDateTime,
    pub(crate) fingerprint: Arc<FingerprintKey>,
}

/// The vault's use cases over a store, the KEKs and a policy.
#[derive(Clone)]
pub struct Vault {
    pub(crate) store: Arc<dyn TokenStore>,
    pub(crate) keys: Arc<KeyRing>,
    pub(crate) policy: Arc<Policy>,
    pub(crate) limits: DekLimits,
    leases: Arc<UseLeases>,
    pub(crate) trail: Arc<crate::trail::TrailState>,
    guard: GuardSettings,
    limiter: Arc<dyn CallLimiter>,
    refusals: Arc<RefusalLog>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// A vault over these ports.
    #[must_use]
    pub fn new(store: Arc<dyn TokenStore>, keys: Arc<KeyRing>, policy: Arc<Policy>) -> Self {
        Self {
            store,
            keys,
            policy,
            limits: DekLimits::default(),
            leases: Arc::default(),
            trail: Arc::default(),
            guard: GuardSettings::default(),
            limiter: Arc::new(Unlimited),
            refusals: Arc::default(),
        }
    }

    /// The same vault with these enumeration-guard and new-merchant settings.
    #[must_use]
    pub fn with_guard(mut self, guard: GuardSettings) -> Self {
        self.guard = guard;
        self
    }

    /// The same vault counting calls with `limiter`, recording at most one rate-limit refusal
    /// per caller and operation per `refusal_interval` (see [`RefusalLog`]).
    #[must_use]
    pub fn with_limiter(
        mut self,
        limiter: Arc<dyn CallLimiter>,
        refusal_interval: std::time::Duration,
    ) -> Self {
        self.limiter = limiter;
        self.refusals = Arc::new(RefusalLog::new(refusal_interval));
        self
    }

    /// True if the policy lists `identity` (whatever it grants).
    #[must_use]
    pub fn lists_caller(&self, identity: &str) -> bool {
        self.policy.identities().any(|c| c.as_str() == identity)
    }

    /// The call limiter (for its housekeeping).
    #[must_use]
    pub fn limiter(&self) -> &Arc<dyn CallLimiter> {
        &self.limiter
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
            if let Err(error) = self.store.append_audit(&audit).await
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
        self.store.append_audit(&audit).await.map_err(Into::into)
    }

    /// Deletes the store's abuse tallies of windows that have ended. `vaultd` calls it
    /// periodically. Returns how many tallies went.
    ///
    /// # Errors
    /// The store's.
    pub async fn purge_tallies(&self) -> Result<u64, VaultError> {
        Ok(self.store.purge_tallies(now().unix_timestamp()).await?)
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
            None if !self.policy.grants(caller, operation) => LimitKey::Ungranted { caller },
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

    /// The same vault with these DEK rotation limits.
    #[must_use]
    pub fn with_dek_limits(mut self, limits: DekLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The KEKs and the unwrapped-key cache (health checks, cache metrics).
    #[must_use]
    pub fn keys(&self) -> &Arc<KeyRing> {
        &self.keys
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
        let mut audit = AuditRecord::begin(ctx, Operation::Tokenize);
        let result = self.tokenize_audited(&mut audit, command).await;
        self.conclude(audit, result).await
    }

    /// Tokenizes up to [`MAX_BATCH_CARDS`] cards of one merchant; the results are in the order
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
        let mut audit = AuditRecord::begin(ctx, Operation::Tokenize);
        let OpenBatch {
            merchant,
            cards,
            keys,
            found,
        } = match self.open_batch(&mut audit, command).await {
            Ok(opened) => opened,
            Err(error) => {
                return self
                    .conclude::<()>(audit, Err(error))
                    .await
                    .map(|()| vec![]);
            }
        };
        // A card given twice finds the same existing token both times; a new one given twice
        // is settled by the store like two racing calls (one inserts, the other gets its token).
        let calls = cards
            .into_iter()
            .map(|(card, fingerprint)| {
                let existing = found.get(&fingerprint).cloned();
                let mut audit = audit.clone();
                let (merchant, keys) = (&merchant, keys.clone());
                async move {
                    let result = self
                        .tokenize_card(&mut audit, merchant, card, keys, fingerprint, existing)
                        .await;
                    self.conclude(audit, result).await
                }
            })
            .collect::<Vec<_>>();
        futures_util::future::join_all(calls)
            .await
            .into_iter()
            .collect()
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
        let mut audit = AuditRecord::begin(ctx, Operation::Detokenize);
        let result = self.detokenize_audited(&mut audit, command).await;
        self.conclude(audit, result).await
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
        let mut audit = AuditRecord::begin(ctx, Operation::Metadata);
        let result = async {
            let (merchant, token) = self
                .authorize_token_command(&mut audit, Operation::Metadata, &command)
                .await?;
            let record = self
                .store
                .token(&merchant, &token)
                .await?
                .ok_or(VaultError::NotFound)?;
            Ok(Done::pending(record.metadata.truncated()))
        }
        .await;
        self.conclude(audit, result).await
    }

    /// Deletes a token and its encrypted PAN; the deletion and its audit record commit together.
    ///
    /// # Errors
    /// Any [`VaultError`]; the call is audited either way.
    pub async fn delete(&self, ctx: &CallContext, command: TokenCommand) -> Result<(), VaultError> {
        let mut audit = AuditRecord::begin(ctx, Operation::Delete);
        let result = async {
            let (merchant, token) = self
                .authorize_token_command(&mut audit, Operation::Delete, &command)
                .await?;
            if self.store.delete_token(&merchant, &token, &audit).await? {
                Ok(Done::audited(()))
            } else {
                Err(VaultError::NotFound)
            }
        }
        .await;
        self.conclude(audit, result).await
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

    async fn tokenize_audited(
        &self,
        audit: &mut AuditRecord,
        command: TokenizeCommand,
    ) -> Result<Done<Tokenized>, VaultError> {
        self.throttle(audit, Operation::Tokenize, None, 1)?;
        let merchant = self
            .authorized_merchant(audit, Operation::Tokenize, &command.merchant_id)
            .await?;
        let format = Self::token_format(command.format)?;
        let card = Card::parse(&command.pan, command.exp_month, command.exp_year, format)?;

        let keys = self.current_keys(&merchant, &audit.caller).await?;
        let fingerprint = keys
            .fingerprint
            .fingerprint(card.pan.expose_digits().as_bytes());
        // Before the store is asked whether the card exists: see guard.rs.
        self.guard_cards(audit, [(&card.pan, fingerprint)]).await?;
        let found = self
            .store
            .token_by_fingerprint(&merchant, &fingerprint, format)
            .await?;
        self.tokenize_card(audit, &merchant, card, keys, fingerprint, found)
            .await
    }

    /// Validates a batch and checks the policy, then reads the merchant's keys and the cards'
    /// existing tokens: everything that refuses the batch as a whole, before any card is stored.
    async fn open_batch(
        &self,
        audit: &mut AuditRecord,
        command: TokenizeBatchCommand,
    ) -> Result<OpenBatch, VaultError> {
        self.throttle(
            audit,
            Operation::Tokenize,
            None,
            command.cards.len().min(MAX_BATCH_CARDS),
        )?;
        let merchant = self
            .authorized_merchant(audit, Operation::Tokenize, &command.merchant_id)
            .await?;
        let format = Self::token_format(command.format)?;
        if command.cards.is_empty() || command.cards.len() > MAX_BATCH_CARDS {
            return Err(InvalidArgument {
                field: "cards",
                problem: "must hold 1 to 1000 cards",
            }
            .into());
        }
        let cards = command
            .cards
            .iter()
            .enumerate()
            .map(|(index, card)| {
                Card::parse(&card.pan, card.exp_month, card.exp_year, format)
                    .map_err(|invalid| VaultError::InvalidCard { index, invalid })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let keys = self.current_keys(&merchant, &audit.caller).await?;
        let cards: Vec<_> = cards
            .into_iter()
            .map(|card| {
                let fingerprint = keys
                    .fingerprint
                    .fingerprint(card.pan.expose_digits().as_bytes());
                (card, fingerprint)
            })
            .collect();
        // Before the store is asked which cards exist: see guard.rs.
        self.guard_cards(
            audit,
            cards
                .iter()
                .map(|(card, fingerprint)| (&card.pan, *fingerprint)),
        )
        .await?;
        let fingerprints: Vec<_> = cards.iter().map(|(_, fingerprint)| *fingerprint).collect();
        let found = self
            .store
            .tokens_by_fingerprints(&merchant, &fingerprints, format)
            .await?
            .into_iter()
            .map(|row| (row.fingerprint, row))
            .collect();
        Ok(OpenBatch {
            merchant,
            cards,
            keys,
            found,
        })
    }

    fn token_format(format: Option<TokenFormat>) -> Result<TokenFormat, InvalidArgument> {
        format.ok_or(InvalidArgument {
            field: "token_format",
            problem: "is not a format this vault knows",
        })
    }

    /// Tokenizes one validated card: returns `found`, the merchant's token for its
    /// `fingerprint` if there was one, after checking it holds this card; else stores a new
    /// token with its audit record.
    async fn tokenize_card(
        &self,
        audit: &mut AuditRecord,
        merchant: &MerchantId,
        card: Card,
        mut keys: MerchantKeys,
        fingerprint: [u8; FINGERPRINT_LEN],
        found: Option<TokenRecord>,
    ) -> Result<Done<Tokenized>, VaultError> {
        let Card { pan, metadata } = card;
        let format = metadata.format;
        if let Some(found) = found {
            self.check_same_card(&found, &pan, &keys).await?;
            return Ok(Done::pending(Self::existing(audit, found)));
        }
        for _ in 0..MAX_TOKEN_ATTEMPTS {
            // Every seal spends one counted use of the DEK (and may rotate it).
            self.reserve_dek_use(merchant, &mut keys).await?;
            let token = Token::generate(format, &pan);
            let aad = pan_associated_data(merchant, &token, keys.dek_version, metadata.expiry);
            let record = TokenRecord {
                sealed: keys.dek.seal(&aad, pan.expose_digits().as_bytes()),
                token: token.clone(),
                merchant: merchant.clone(),
                fingerprint,
                dek_version: keys.dek_version,
                metadata: metadata.clone(),
            };
            // The record names the token only if the insert commits it.
            let mut record_audit = audit.clone();
            record_audit.token = Some(token);
            match self.store.insert_token(&record, &record_audit).await? {
                InsertOutcome::Inserted => {
                    return Ok(Done::audited(Tokenized {
                        token: record.token,
                        fingerprint,
                        metadata: record.metadata.truncated(),
                        existing: false,
                    }));
                }
                InsertOutcome::TokenTaken => {}
                InsertOutcome::FingerprintTaken => {
                    // A concurrent tokenize of the same card committed first: return its token.
                    let winner = self
                        .store
                        .token_by_fingerprint(merchant, &fingerprint, format)
                        .await?
                        .ok_or_else(|| {
                            VaultError::StoreUnavailable(
                                "token for a taken fingerprint not found".to_owned(),
                            )
                        })?;
                    self.check_same_card(&winner, &pan, &keys).await?;
                    return Ok(Done::pending(Self::existing(audit, winner)));
                }
            }
        }
        Err(VaultError::TokenSpaceExhausted)
    }

    fn existing(audit: &mut AuditRecord, found: TokenRecord) -> Tokenized {
        audit.token = Some(found.token.clone());
        audit.detail = Some("existing".into());
        Tokenized {
            token: found.token,
            fingerprint: found.fingerprint,
            metadata: found.metadata.truncated(),
            existing: true,
        }
    }

    async fn detokenize_audited(
        &self,
        audit: &mut AuditRecord,
        command: TokenCommand,
    ) -> Result<Done<Detokenized>, VaultError> {
        // A valid reason is recorded even when the call is then refused.
        audit.reason = Reason::parse("reason", &command.reason).ok();
        let (merchant, token) = self
            .authorize_token_command(audit, Operation::Detokenize, &command)
            .await?;
        // Per merchant too, once the caller is known to be allowed there (so a caller cannot
        // grow the counters with merchants it may not touch).
        self.throttle(audit, Operation::Detokenize, Some(&merchant), 1)?;
        Reason::parse("reason", &command.reason)?;

        let record = self
            .store
            .token(&merchant, &token)
            .await?
            .ok_or(VaultError::NotFound)?;
        let pan = self.open_pan(&record).await?;
        Ok(Done::pending(Detokenized {
            pan,
            expiry: record.metadata.expiry,
        }))
    }

    /// Decrypts a stored PAN under the DEK version the row names, for the row's merchant.
    /// A row moved to another merchant finds that merchant's key (or none), and its associated
    /// data names the original merchant, token, version and expiry: it cannot open.
    pub(crate) async fn open_pan(&self, record: &TokenRecord) -> Result<Pan, VaultError> {
        let Some(wrapped) = self
            .store
            .data_key(&record.merchant, record.dek_version)
            .await?
        else {
            return Err(if self.store.is_shredded(&record.merchant).await? {
                self.destroyed(&record.merchant)
            } else {
                VaultError::Integrity
            });
        };
        let dek = self.keys.dek(&wrapped).await?;
        Self::open_with(&dek, record)
    }

    fn open_with(dek: &AeadKey, record: &TokenRecord) -> Result<Pan, VaultError> {
        let aad = pan_associated_data(
            &record.merchant,
            &record.token,
            record.dek_version,
            record.metadata.expiry,
        );
        let digits = dek
            .open(&aad, &record.sealed.nonce, &record.sealed.ciphertext)
            .map_err(|_| VaultError::Integrity)?;
        let digits = std::str::from_utf8(&digits).map_err(|_| VaultError::Integrity)?;
        Pan::parse("pan", digits).map_err(|_| VaultError::Integrity)
    }

    /// Before a deduplicated tokenize returns an existing token, checks that the token really
    /// holds this card: a fingerprint copied onto another row must not hand out that row's
    /// token.
    async fn check_same_card(
        &self,
        found: &TokenRecord,
        pan: &Pan,
        keys: &MerchantKeys,
    ) -> Result<(), VaultError> {
        let stored = if found.dek_version == keys.dek_version {
            Self::open_with(&keys.dek, found)?
        } else {
            self.open_pan(found).await?
        };
        if stored.expose_digits() == pan.expose_digits() {
            Ok(())
        } else {
            Err(VaultError::Integrity)
        }
    }

    /// Parses the token and the merchant and checks the policy for the merchant. Valid values are
    /// recorded in the audit record even when the call is refused.
    async fn authorize_token_command(
        &self,
        audit: &mut AuditRecord,
        operation: Operation,
        command: &TokenCommand,
    ) -> Result<(MerchantId, Token), VaultError> {
        self.throttle(audit, operation, None, 1)?;
        // The token first, so that a refused call's record names it.
        let token = Token::parse("token", &command.token);
        audit.token = token.as_ref().ok().cloned();
        let merchant = self
            .authorized_merchant(audit, operation, &command.merchant_id)
            .await?;
        let token = match token {
            Ok(token) => token,
            Err(refused) if refused.problem == CARD_LIKE => {
                // Issued before the card-number rule tightened: reachable if it exists.
                let token = Token::parse_shape("token", &command.token)?;
                if self.store.token(&merchant, &token).await?.is_none() {
                    return Err(refused.into());
                }
                audit.token = Some(token.clone());
                token
            }
            Err(refused) => return Err(refused.into()),
        };
        Ok((merchant, token))
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
        if self.policy.allows(&audit.caller, operation, merchant) {
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
            }) => match self.store.append_audit(&audit).await {
                Ok(()) => Ok(value),
                Err(err) => Err(VaultError::AuditUnavailable(err.to_string())),
            },
            Err(error) => {
                let Some(audit) = self.refusal_record(audit, &error) else {
                    return Err(error);
                };
                match self.store.append_audit(&audit).await {
                    Ok(()) => Err(error),
                    Err(err) => Err(VaultError::AuditUnavailable(err.to_string())),
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

    /// The enumeration guard (see `guard.rs`): counts the distinct cards the caller brings
    /// into each bucket, vault-wide and across merchants, and refuses them all if any bucket
    /// is spent. Runs before anything depends on whether a card is stored.
    async fn guard_cards<'p>(
        &self,
        audit: &mut AuditRecord,
        cards: impl IntoIterator<Item = (&'p Pan, [u8; FINGERPRINT_LEN])>,
    ) -> Result<(), VaultError> {
        let (window_end, retry_after) = guard::window_at(now().unix_timestamp(), self.guard.window);
        let mut by_bucket: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
        for (pan, fingerprint) in cards {
            let fingerprints = by_bucket.entry(guard::card_bucket(pan)).or_default();
            if !fingerprints.iter().any(|f| f.as_slice() == fingerprint) {
                fingerprints.push(fingerprint.to_vec());
            }
        }
        let mut buckets: Vec<(String, Vec<Vec<u8>>)> = by_bucket.into_iter().collect();
        // One order for every caller: racing transactions take the tallies' rows alike.
        buckets.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let requests: Vec<TallyRequest> = buckets
            .iter()
            .map(|(bucket, fingerprints)| {
                guard::card_tally(
                    &self.guard,
                    guard::bucket_subject(&audit.caller, bucket),
                    window_end,
                    fingerprints.clone(),
                )
            })
            .collect();
        let tallies = self.store.tally(&requests).await?;
        answered_in_full(&requests, &tallies)?;
        let mut refused: Option<(bool, &str)> = None;
        for ((bucket, _), (request, tallies)) in buckets.iter().zip(requests.iter().zip(&tallies)) {
            if let Verdict::Refused { tripped } =
                guard::verdict(tallies, request.limit, request.trip)
            {
                let worst = refused.is_none_or(|(t, _)| tripped && !t);
                if worst {
                    refused = Some((tripped, bucket));
                }
            }
        }
        let Some((tripped, bucket)) = refused else {
            return Ok(());
        };
        let bucket = guard::describe_bucket(bucket);
        audit.detail = Some(
            if tripped {
                format!(
                    "enumeration guard tripped: {bucket}, over {} cards per {} s",
                    self.guard.cards_per_bucket,
                    self.guard.window.as_secs()
                )
            } else {
                format!("enumeration guard: {bucket} spent until the window ends")
            }
            .into(),
        );
        Err(VaultError::Throttled {
            limit: Throttle::Enumeration { tripped },
            retry_after,
        })
    }

    /// The merchant's current keys, creating them on its first use and rotating a DEK that
    /// is older than the limits allow. Two replicas creating or rotating at once are settled by
    /// the store's uniqueness constraint: the loser reads the winner's. A shredded merchant
    /// gets [`VaultError::KeyDestroyed`] and never new keys.
    async fn current_keys(
        &self,
        merchant: &MerchantId,
        caller: &CallerId,
    ) -> Result<MerchantKeys, VaultError> {
        let set = match self.store.merchant_keys(merchant).await? {
            Some(set) => set,
            None => {
                if self.store.is_shredded(merchant).await? {
                    return Err(self.destroyed(merchant));
                }
                self.count_new_merchant(merchant, caller).await?;
                let fresh = self.new_key_set(merchant).await?;
                self.store.create_merchant_keys(&fresh).await?;
                self.stored_keys(merchant).await?
            }
        };
        let set = match self.limits.rotate_after {
            Some(max_age) if now() - set.dek_created_at >= max_age => {
                self.rotate_dek(merchant, set.dek.context.version, None)
                    .await?;
                self.stored_keys(merchant).await?
            }
            _ => set,
        };
        Ok(MerchantKeys {
            dek_version: set.dek.context.version,
            dek: self.keys.dek(&set.dek).await?,
            dek_created_at: set.dek_created_at,
            fingerprint: self.keys.fingerprint_key(&set.fingerprint).await?,
        })
    }

    /// Counts a merchant the caller is about to create against its hourly cap (vault-wide),
    /// before any KEK is asked to wrap its keys.
    async fn count_new_merchant(
        &self,
        merchant: &MerchantId,
        caller: &CallerId,
    ) -> Result<(), VaultError> {
        let (window_end, retry_after) =
            guard::window_at(now().unix_timestamp(), std::time::Duration::from_secs(3600));
        let request = TallyRequest {
            scope: guard::MERCHANT_CREATE_SCOPE,
            subject: caller.as_str().to_owned(),
            window_end,
            items: vec![merchant.as_str().as_bytes().to_vec()],
            limit: self.guard.new_merchants_per_hour,
            trip: false,
        };
        let requests = std::slice::from_ref(&request);
        let tallies = self.store.tally(requests).await?;
        answered_in_full(requests, &tallies)?;
        match guard::verdict(
            tallies.first().map_or(&[][..], Vec::as_slice),
            request.limit,
            false,
        ) {
            Verdict::Admitted => Ok(()),
            Verdict::Refused { .. } => Err(VaultError::Throttled {
                limit: Throttle::NewMerchants,
                retry_after,
            }),
        }
    }

    /// A shredded merchant's answer. Its keys also leave this replica's cache: the replica that
    /// approved the shred forgot them at once, the others do when they first meet it.
    fn destroyed(&self, merchant: &MerchantId) -> VaultError {
        self.keys.forget_merchant(merchant);
        VaultError::KeyDestroyed
    }

    /// The merchant's stored keys, which must exist (or the merchant was shredded).
    pub(crate) async fn stored_keys(
        &self,
        merchant: &MerchantId,
    ) -> Result<MerchantKeySet, VaultError> {
        match self.store.merchant_keys(merchant).await? {
            Some(set) => Ok(set),
            None if self.store.is_shredded(merchant).await? => Err(self.destroyed(merchant)),
            None => Err(VaultError::FailedPrecondition(
                "the merchant has no keys yet; its first tokenize creates them",
            )),
        }
    }

    /// Reserves one use of the merchant's DEK for a seal. When the version is full it rotates
    /// and moves `keys` to the new version; when a reservation crosses `rotate_after_uses` it
    /// rotates for the next callers. No version is ever used more than `max_uses` times.
    pub(crate) async fn reserve_dek_use(
        &self,
        merchant: &MerchantId,
        keys: &mut MerchantKeys,
    ) -> Result<(), VaultError> {
        // Each round either spends a use or rotates; a few rounds cover racing replicas.
        for _ in 0..8 {
            if self.leases.take(merchant, keys.dek_version) {
                return Ok(());
            }
            let _refilling = self.leases.refill.lock().await;
            if self.leases.take(merchant, keys.dek_version) {
                // Refilled while this call waited.
                return Ok(());
            }
            let reserved = self
                .store
                .reserve_dek_uses(
                    merchant,
                    keys.dek_version,
                    self.limits.lease.max(1),
                    self.limits.max_uses,
                )
                .await?;
            if reserved.granted > 0 {
                self.leases
                    .put(merchant, keys.dek_version, reserved.granted - 1);
                if reserved.total >= self.limits.rotate_after_uses {
                    self.rotate_dek(merchant, keys.dek_version, None).await?;
                }
                return Ok(());
            }
            self.rotate_dek(merchant, keys.dek_version, None).await?;
            let set = self.stored_keys(merchant).await?;
            keys.dek_version = set.dek.context.version;
            keys.dek = self.keys.dek(&set.dek).await?;
            keys.dek_created_at = set.dek_created_at;
        }
        Err(VaultError::StoreUnavailable(
            "could not reserve a use of the merchant's DEK".to_owned(),
        ))
    }

    /// Stores DEK version `from + 1` for the merchant unless it exists. Returns the version.
    pub(crate) async fn rotate_dek(
        &self,
        merchant: &MerchantId,
        from: u32,
        audit: Option<&AuditRecord>,
    ) -> Result<u32, VaultError> {
        let version = from.checked_add(1).ok_or(VaultError::FailedPrecondition(
            "the merchant's DEK has no versions left",
        ))?;
        let context = KeyContext {
            merchant: merchant.clone(),
            purpose: KeyPurpose::Dek,
            version,
        };
        let wrapped = self.keys.wrap(context, &KeyMaterial::generate()).await?;
        self.store.add_data_key(&wrapped, audit).await?;
        Ok(version)
    }

    async fn new_key_set(&self, merchant: &MerchantId) -> Result<MerchantKeySet, VaultError> {
        let context = |purpose| KeyContext {
            merchant: merchant.clone(),
            purpose,
            version: 1,
        };
        Ok(MerchantKeySet {
            dek_created_at: now(),
            dek: self
                .keys
                .wrap(context(KeyPurpose::Dek), &KeyMaterial::generate())
                .await?,
            fingerprint: self
                .keys
                .wrap(context(KeyPurpose::Fingerprint), &KeyMaterial::generate())
                .await?,
        })
    }
}

/// Associated data for a PAN ciphertext: it binds merchant, token, DEK version and expiry, so
/// a ciphertext copied to another row, merchant or key version never opens, and an expiry
/// edited in the database makes the row fail rather than return a PAN with the wrong date.
#[must_use]
pub fn pan_associated_data(
    merchant: &MerchantId,
    token: &Token,
    dek_version: u32,
    expiry: Option<Expiry>,
) -> Vec<u8> {
    let expiry = expiry.map_or([0; 3], |e| {
        let [high, low] = e.year().to_be_bytes();
        [e.month(), high, low]
    });
    vault_crypto::associated_data(
        "vault.pan.v1",
        &[
            merchant.as_str().as_bytes(),
            token.as_str().as_bytes(),
            &dek_version.to_be_bytes(),
            &expiry,
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenize_command_debug_is_redacted() {
        let command = TokenizeCommand {
            merchant_id: "m1".into(),
            pan: Zeroizing::new("4111111111111111".into()),
            exp_month: None,
            exp_year: None,
            format: Some(TokenFormat::Random),
        };
        let printed = format!("{command:?} {command:#?}");
        assert!(!printed.contains("4111111111111111"), "{printed}");
        assert!(printed.contains("<redacted>"));
    }
}
