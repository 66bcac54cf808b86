//! The token use cases: tokenize (one card or a batch), detokenize, read metadata, delete.
//! Each validates its request into domain types, checks the policy, does the work through the
//! ports, and writes exactly one audit record per card, allowed or denied, through
//! the audited-call helper (`audited.rs`).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use vault_crypto::FINGERPRINT_LEN;
use zeroize::Zeroizing;

use crate::audit::AuditRecord;
use crate::audited::{Audited, Done};
use crate::clock::now;
use crate::deks::{Deks, MerchantKeys, pan_associated_data};
use crate::error::{InvalidArgument, Throttle, VaultError};
use crate::expiry::Expiry;
use crate::guard::{self, GuardSettings, Verdict, answered_in_full};
use crate::ids::{CallContext, MerchantId};
use crate::pan::{CARD_LIKE, Pan};
use crate::policy::Operation;
use crate::ports::{CardMetadata, InsertOutcome, TallyRequest, TokenRecord, TokenStore};
use crate::reason::Reason;
use crate::spans;
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

/// A validated, authorized batch: its cards with their fingerprints, the merchant's keys, and
/// the merchant's existing tokens among those fingerprints.
struct OpenBatch {
    merchant: MerchantId,
    cards: Vec<(Card, [u8; FINGERPRINT_LEN])>,
    keys: MerchantKeys,
    found: HashMap<[u8; FINGERPRINT_LEN], TokenRecord>,
}

/// The token service.
#[derive(Clone)]
pub(crate) struct Tokens {
    calls: Audited,
    deks: Deks,
    store: Arc<dyn TokenStore>,
    guard: GuardSettings,
}

impl Tokens {
    pub(crate) fn new(
        calls: Audited,
        deks: Deks,
        store: Arc<dyn TokenStore>,
        guard: GuardSettings,
    ) -> Self {
        Self {
            calls,
            deks,
            store,
            guard,
        }
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
        self.calls.conclude(audit, result).await
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
                    .calls
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
                    self.calls.conclude(audit, result).await
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
        self.calls.conclude(audit, result).await
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
        self.calls.conclude(audit, result).await
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
        self.calls.conclude(audit, result).await
    }

    async fn tokenize_audited(
        &self,
        audit: &mut AuditRecord,
        command: TokenizeCommand,
    ) -> Result<Done<Tokenized>, VaultError> {
        self.calls.throttle(audit, Operation::Tokenize, None, 1)?;
        let merchant = self
            .calls
            .authorized_merchant(audit, Operation::Tokenize, &command.merchant_id)
            .await?;
        let format = Self::token_format(command.format)?;
        let card = Card::parse(&command.pan, command.exp_month, command.exp_year, format)?;

        let keys = self.deks.current_keys(&merchant, &audit.caller).await?;
        let fingerprint = keys
            .fingerprint
            .fingerprint(card.pan.expose_digits().as_bytes());
        // Before the store is asked whether the card exists: see guard.rs.
        self.guard_cards(audit, [(&card.pan, fingerprint)]).await?;
        let found = spans::step(
            spans::store("card"),
            self.store
                .token_by_fingerprint(&merchant, &fingerprint, format, keys.dek_version),
        )
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
        self.calls.throttle(
            audit,
            Operation::Tokenize,
            None,
            command.cards.len().min(MAX_BATCH_CARDS),
        )?;
        let merchant = self
            .calls
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
        let keys = self.deks.current_keys(&merchant, &audit.caller).await?;
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
        let found = spans::step(
            spans::store("card"),
            self.store
                .tokens_by_fingerprints(&merchant, &fingerprints, format, keys.dek_version),
        )
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
            self.deks.check_same_card(&found, &pan, &keys).await?;
            return Ok(Done::pending(Self::existing(audit, found)));
        }
        for _ in 0..MAX_TOKEN_ATTEMPTS {
            // Every seal spends one counted use of the DEK (and may rotate it).
            self.deks.reserve_dek_use(merchant, &mut keys).await?;
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
            match spans::step(
                spans::store("insert"),
                self.store.insert_token(&record, &record_audit),
            )
            .await?
            {
                InsertOutcome::Inserted => {
                    return Ok(Done::audited(Tokenized {
                        token: record.token,
                        fingerprint,
                        metadata: record.metadata.truncated(),
                        existing: false,
                    }));
                }
                InsertOutcome::TokenTaken => {}
                InsertOutcome::KeyGone => {
                    // The keys in hand were held in memory and the merchant's DEK is gone
                    // (shredded, perhaps by another replica): the store's answer decides.
                    keys = self.deks.reread_keys(merchant).await?;
                }
                InsertOutcome::FingerprintTaken => {
                    // A concurrent tokenize of the same card committed first: return its token.
                    // (Not found again means it went, or the key did: the next round says.)
                    if let Some(winner) = self
                        .store
                        .token_by_fingerprint(merchant, &fingerprint, format, keys.dek_version)
                        .await?
                    {
                        self.deks.check_same_card(&winner, &pan, &keys).await?;
                        return Ok(Done::pending(Self::existing(audit, winner)));
                    }
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
        self.calls
            .throttle(audit, Operation::Detokenize, Some(&merchant), 1)?;
        Reason::parse("reason", &command.reason)?;

        Ok(Done::pending(self.open_card(&merchant, &token).await?))
    }

    /// The card behind a token the caller was authorized for: one store read, then the PAN
    /// opened under the key the row names.
    pub(crate) async fn open_card(
        &self,
        merchant: &MerchantId,
        token: &Token,
    ) -> Result<Detokenized, VaultError> {
        let (record, key) = spans::step(
            spans::store("token_and_key"),
            self.store.token_and_key(merchant, token),
        )
        .await?
        .ok_or(VaultError::NotFound)?;
        let pan = self.deks.open_under(&record, key).await?;
        Ok(Detokenized {
            pan,
            expiry: record.metadata.expiry,
        })
    }

    /// Parses the token and the merchant and checks the policy for the merchant. Valid values are
    /// recorded in the audit record even when the call is refused.
    pub(crate) async fn authorize_token_command(
        &self,
        audit: &mut AuditRecord,
        operation: Operation,
        command: &TokenCommand,
    ) -> Result<(MerchantId, Token), VaultError> {
        self.calls.throttle(audit, operation, None, 1)?;
        // The token first, so that a refused call's record names it.
        let token = Token::parse("token", &command.token);
        audit.token = token.as_ref().ok().cloned();
        let merchant = self
            .calls
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
        let tallies = spans::step(spans::store("tally"), self.store.tally(&requests)).await?;
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
