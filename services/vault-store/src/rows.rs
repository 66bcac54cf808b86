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

/// Microseconds since the Unix epoch, UTC.
pub(crate) fn micros(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

/// The time `micros` microseconds after the Unix epoch.
pub(crate) fn from_micros(micros: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .map_err(|_| corrupt("timestamp out of range"))
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
            merchant: MerchantId::parse("merchant_id", &self.merchant_id)
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
                merchant: MerchantId::parse("merchant_id", &self.merchant_id)
                    .map_err(|_| corrupt("merchant_id"))?,
                purpose: KeyPurpose::from_name(&self.purpose).ok_or_else(|| corrupt("purpose"))?,
                version: u32::try_from(self.version).map_err(|_| corrupt("version"))?,
            },
            kek_id: self.kek_id,
            wrapped: self.wrapped,
        })
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
            merchant: MerchantId::parse("merchant_id", &self.merchant_id)
                .map_err(|_| corrupt("merchant_id"))?,
            requested_by: CallerId::new(self.requested_by),
            requested_at: from_micros(self.requested_at)?,
            reason: Reason::parse("reason", &self.reason).map_err(|_| corrupt("reason"))?,
        })
    }
}

/// A count, as the database returns it.
pub(crate) fn count(n: i64) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| corrupt("negative count"))
}

/// An audit record's columns, in insert order.
pub(crate) struct AuditColumns<'a> {
    pub at: i64,
    pub caller: &'a str,
    pub peer: Option<&'a str>,
    pub operation: &'static str,
    pub merchant_id: Option<&'a str>,
    pub token: Option<&'a str>,
    pub outcome: &'static str,
    pub request_id: &'a str,
    pub reason: Option<&'a str>,
    pub detail: Option<&'static str>,
}

impl<'a> AuditColumns<'a> {
    pub(crate) fn of(record: &'a AuditRecord) -> Self {
        Self {
            at: micros(record.time),
            caller: record.caller.as_str(),
            peer: record.peer.as_deref(),
            operation: record.operation.as_str(),
            merchant_id: record.merchant.as_ref().map(MerchantId::as_str),
            token: record.token.as_ref().map(Token::as_str),
            outcome: record.outcome.as_str(),
            request_id: &record.request_id,
            reason: record.reason.as_ref().map(|r| r.as_str()),
            detail: record.detail,
        }
    }
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
