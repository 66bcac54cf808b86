//! Conversions between domain values and column values, shared by every backend.

use time::OffsetDateTime;
use vault_core::StoreError;
use vault_core::audit::AuditRecord;
use vault_core::expiry::Expiry;
use vault_core::ids::{CallerId, MerchantId};
use vault_core::pan::Brand;
use vault_core::ports::{
    CardMetadata, KeyContext, KeyPurpose, KeyVersionInfo, MerchantKeySet, ShredRequest,
    TokenRecord, WrappedKey,
};
use vault_core::reason::Reason;
use vault_core::token::{Token, TokenFormat};
use vault_crypto::{FINGERPRINT_LEN, NONCE_LEN, Sealed};

pub(crate) use vault_core::clock::micros;

/// The time `micros` microseconds after the Unix epoch.
pub(crate) fn from_micros(micros: i64) -> Result<OffsetDateTime, StoreError> {
    vault_core::clock::from_micros(micros).ok_or_else(|| corrupt("timestamp out of range"))
}

pub(crate) fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

/// A token row's columns, read back as plain values.
#[derive(sqlx::FromRow)]
pub(crate) struct TokenRow {
    pub token: String,
    pub merchant_id: String,
    pub fingerprint: Vec<u8>,
    pub token_format: String,
    pub dek_version: i64,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub brand: String,
    pub bin: String,
    pub last4: String,
    pub pan_length: i64,
    pub exp_month: Option<i64>,
    pub exp_year: Option<i64>,
    pub created_at: i64,
}

impl TokenRow {
    pub(crate) fn into_record(self) -> Result<TokenRecord, StoreError> {
        let expiry = match (self.exp_month, self.exp_year) {
            (Some(month), Some(year)) => Some(
                Expiry::new(
                    u32::try_from(month).map_err(|_| corrupt("exp_month"))?,
                    u32::try_from(year).map_err(|_| corrupt("exp_year"))?,
                )
                .map_err(|_| corrupt("expiry"))?,
            ),
            (None, None) => None,
            _ => return Err(corrupt("half an expiry")),
        };
        Ok(TokenRecord {
            token: Token::from_stored(&self.token).map_err(|_| corrupt("token"))?,
            merchant: MerchantId::from_stored("merchant_id", &self.merchant_id)
                .map_err(|_| corrupt("merchant_id"))?,
            fingerprint: <[u8; FINGERPRINT_LEN]>::try_from(self.fingerprint.as_slice())
                .map_err(|_| corrupt("fingerprint"))?,
            dek_version: u32::try_from(self.dek_version).map_err(|_| corrupt("dek_version"))?,
            sealed: Sealed {
                nonce: <[u8; NONCE_LEN]>::try_from(self.nonce.as_slice())
                    .map_err(|_| corrupt("nonce"))?,
                ciphertext: self.ciphertext,
            },
            metadata: CardMetadata {
                brand: Brand::from_name(&self.brand).ok_or_else(|| corrupt("brand"))?,
                bin: self.bin,
                last4: self.last4,
                pan_length: u8::try_from(self.pan_length).map_err(|_| corrupt("pan_length"))?,
                expiry,
                created_at: from_micros(self.created_at)?,
                format: TokenFormat::from_name(&self.token_format)
                    .ok_or_else(|| corrupt("token_format"))?,
            },
        })
    }
}

/// A key row's columns (`key_columns!`).
#[derive(sqlx::FromRow)]
pub(crate) struct KeyRow {
    pub merchant_id: String,
    pub purpose: String,
    pub version: i64,
    pub kek_id: String,
    pub wrapped: Vec<u8>,
    pub created_at: i64,
    pub uses: i64,
}

impl KeyRow {
    pub(crate) fn into_key(self) -> Result<WrappedKey, StoreError> {
        Ok(WrappedKey {
            context: KeyContext {
                merchant: MerchantId::from_stored("merchant_id", &self.merchant_id)
                    .map_err(|_| corrupt("merchant_id"))?,
                purpose: KeyPurpose::from_name(&self.purpose).ok_or_else(|| corrupt("purpose"))?,
                version: u32::try_from(self.version).map_err(|_| corrupt("version"))?,
            },
            kek_id: self.kek_id,
            wrapped: self.wrapped,
        })
    }
}

/// A token row and the DEK row it names, if the merchant still holds it (`SELECT_TOKEN_AND_KEY`).
#[derive(sqlx::FromRow)]
pub(crate) struct TokenKeyRow {
    #[sqlx(flatten)]
    pub token: TokenRow,
    pub key_merchant_id: Option<String>,
    pub key_purpose: Option<String>,
    pub key_version: Option<i64>,
    pub key_kek_id: Option<String>,
    pub key_wrapped: Option<Vec<u8>>,
    pub key_created_at: Option<i64>,
    pub key_uses: Option<i64>,
}

impl TokenKeyRow {
    pub(crate) fn into_parts(self) -> Result<(TokenRecord, Option<WrappedKey>), StoreError> {
        let key = match (
            self.key_merchant_id,
            self.key_purpose,
            self.key_version,
            self.key_kek_id,
            self.key_wrapped,
            self.key_created_at,
            self.key_uses,
        ) {
            (
                Some(merchant_id),
                Some(purpose),
                Some(version),
                Some(kek_id),
                Some(wrapped),
                Some(created_at),
                Some(uses),
            ) => Some(
                KeyRow {
                    merchant_id,
                    purpose,
                    version,
                    kek_id,
                    wrapped,
                    created_at,
                    uses,
                }
                .into_key()?,
            ),
            _ => None,
        };
        Ok((self.token.into_record()?, key))
    }
}

/// A key row with the number of tokens its version encrypts.
#[derive(sqlx::FromRow)]
pub(crate) struct KeyVersionRow {
    #[sqlx(flatten)]
    pub key: KeyRow,
    pub tokens: i64,
}

impl KeyVersionRow {
    pub(crate) fn into_info(self) -> Result<KeyVersionInfo, StoreError> {
        let created_at = from_micros(self.key.created_at)?;
        let uses = u64::try_from(self.key.uses).map_err(|_| corrupt("uses"))?;
        Ok(KeyVersionInfo {
            key: self.key.into_key()?,
            created_at,
            uses,
            tokens: u64::try_from(self.tokens).map_err(|_| corrupt("tokens"))?,
        })
    }
}

/// A shred request row.
#[derive(sqlx::FromRow)]
pub(crate) struct ShredRow {
    pub request_id: String,
    pub merchant_id: String,
    pub requested_by: String,
    pub requested_at: i64,
    pub reason: String,
}

impl ShredRow {
    pub(crate) fn into_request(self) -> Result<ShredRequest, StoreError> {
        Ok(ShredRequest {
            request_id: self.request_id,
            merchant: MerchantId::from_stored("merchant_id", &self.merchant_id)
                .map_err(|_| corrupt("merchant_id"))?,
            requested_by: CallerId::new(self.requested_by),
            requested_at: from_micros(self.requested_at)?,
            reason: Reason::from_stored("reason", &self.reason).map_err(|_| corrupt("reason"))?,
        })
    }
}

/// A count, as the database returns it.
pub(crate) fn count(n: i64) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| corrupt("negative count"))
}

/// `record` as the next entry of `writer`'s chain after `head`, hashed.
pub(crate) fn chained_entry(
    record: &AuditRecord,
    writer: &str,
    head: crate::chain::Head,
) -> Result<vault_audit::Entry, StoreError> {
    record
        .chained(writer, head.seq + 1, head.hash)
        .ok_or_else(|| corrupt("audit time out of range"))
}

pub(crate) fn hash_of(bytes: &[u8], what: &str) -> Result<[u8; vault_audit::HASH_LEN], StoreError> {
    bytes.try_into().map_err(|_| corrupt(what))
}

pub(crate) fn seq_of(n: i64) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| corrupt("negative seq"))
}

/// A version's reserved uses after asking for `want` more from `old`: never past `limit`, never
/// fewer than before.
pub(crate) fn reserved(old: u64, want: u64, limit: u64) -> u64 {
    old.saturating_add(want).min(limit).max(old)
}

/// A stored seq, as the database binds it.
pub(crate) fn seq_param(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// An `audit_log` row.
#[derive(sqlx::FromRow)]
pub(crate) struct AuditRow {
    pub writer: String,
    pub seq: i64,
    pub at: i64,
    pub caller: String,
    pub origin: String,
    pub operation: String,
    pub detail: Option<String>,
    pub outcome: String,
    pub resource: String,
    pub merchant_id: Option<String>,
    pub token: Option<String>,
    pub request_id: String,
    pub reason: Option<String>,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

impl AuditRow {
    pub(crate) fn into_entry(self) -> Result<vault_audit::Entry, StoreError> {
        Ok(vault_audit::Entry {
            writer: self.writer,
            seq: seq_of(self.seq)?,
            at: vault_audit::format_time(self.at).ok_or_else(|| corrupt("audit time"))?,
            caller: self.caller,
            origin: self.origin,
            event: self.operation,
            detail: self.detail,
            outcome: self.outcome,
            resource: self.resource,
            merchant_id: self.merchant_id,
            token: self.token,
            request_id: self.request_id,
            reason: self.reason,
            prev_hash: hash_of(&self.prev_hash, "audit prev_hash")?,
            hash: hash_of(&self.hash, "audit hash")?,
        })
    }
}

/// An `audit_checkpoints` row.
#[derive(sqlx::FromRow)]
pub(crate) struct CheckpointRow {
    pub cp_seq: i64,
    pub kind: String,
    pub at: i64,
    pub writer: String,
    pub seq: i64,
    pub head_hash: Vec<u8>,
    pub prev_hash: Vec<u8>,
    pub key_id: String,
    pub signature: Vec<u8>,
    pub hash: Vec<u8>,
    pub replaces_key: Option<String>,
}

impl CheckpointRow {
    pub(crate) fn into_checkpoint(self) -> Result<vault_audit::Checkpoint, StoreError> {
        Ok(vault_audit::Checkpoint {
            cp_seq: seq_of(self.cp_seq)?,
            kind: self.kind,
            at: vault_audit::format_time(self.at).ok_or_else(|| corrupt("checkpoint time"))?,
            writer: self.writer,
            seq: seq_of(self.seq)?,
            head_hash: hash_of(&self.head_hash, "checkpoint head_hash")?,
            prev_hash: hash_of(&self.prev_hash, "checkpoint prev_hash")?,
            key_id: self.key_id,
            replaces_key: self.replaces_key,
            signature: self
                .signature
                .as_slice()
                .try_into()
                .map_err(|_| corrupt("checkpoint signature"))?,
            hash: hash_of(&self.hash, "checkpoint hash")?,
        })
    }
}

/// A head read back from the database: a seq and a hash.
pub(crate) fn head(seq: i64, hash: &[u8]) -> Result<crate::chain::Head, StoreError> {
    Ok(crate::chain::Head {
        seq: seq_of(seq)?,
        hash: hash_of(hash, "head hash")?,
    })
}

/// A merchant's newest DEK and fingerprint key from the rows that hold them: both or neither.
pub(crate) fn key_set(rows: Vec<KeyRow>) -> Result<Option<MerchantKeySet>, StoreError> {
    let mut dek = None;
    let mut fingerprint = None;
    for row in rows {
        let created_at = from_micros(row.created_at)?;
        let key = row.into_key()?;
        match key.context.purpose {
            KeyPurpose::Dek => dek = Some((key, created_at)),
            KeyPurpose::Fingerprint => fingerprint = Some(key),
            // Not a merchant's: the vault's own key never joins a merchant's set.
            KeyPurpose::AuditSigning => {}
        }
    }
    match (dek, fingerprint) {
        (Some((dek, dek_created_at)), Some(fingerprint)) => Ok(Some(MerchantKeySet {
            dek,
            dek_created_at,
            fingerprint,
        })),
        (None, None) => Ok(None),
        _ => Err(corrupt(
            "merchant has a dek or a fingerprint key but not both",
        )),
    }
}
