//! The domain's errors. `vault-server`'s `status.rs` is the one place that maps them to gRPC
//! status codes; messages here never contain a PAN, a key, or the value of a bad input.

pub use crate::invalid::InvalidArgument;
use crate::policy::Operation;

/// Why a vault operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The client certificate names no identity (neither a SPIFFE URI SAN nor a subject CN).
    #[error("client certificate names no identity")]
    Unauthenticated,
    /// A request field is malformed.
    #[error(transparent)]
    InvalidArgument(#[from] InvalidArgument),
    /// A field of one card of a batch is malformed (`cards[index].field`).
    #[error("cards[{index}].{}: {}", invalid.field, invalid.problem)]
    InvalidCard {
        /// The card's position in the batch, from 0.
        index: usize,
        /// What is wrong with which of its fields.
        invalid: InvalidArgument,
    },
    /// The caller's policy does not grant this operation for this merchant.
    #[error("caller may not {operation} for this merchant")]
    PermissionDenied {
        /// The operation that was refused.
        operation: Operation,
    },
    /// No such token for this merchant.
    #[error("token not found")]
    NotFound,
    /// Stored card data or a wrapped key failed authentication: it was altered, moved to another
    /// row or merchant, or is under another key. No plaintext is released.
    #[error("stored card data failed its integrity check")]
    Integrity,
    /// The key-encryption key could not be reached or used.
    #[error("key service unavailable: {0}")]
    KeyUnavailable(String),
    /// The store could not be reached or refused the operation.
    #[error("storage unavailable: {0}")]
    StoreUnavailable(String),
    /// The audit record could not be written, so the call is refused (fail closed).
    #[error("audit log unavailable: {0}")]
    AuditUnavailable(String),
    /// The merchant's keys were destroyed (crypto-shred): its card data can never be released,
    /// and it cannot tokenize again.
    #[error("the merchant's keys were destroyed")]
    KeyDestroyed,
    /// The request is valid but the vault's state does not allow it (a fixed message that
    /// says which rule, e.g. the approver of a shred must differ from its requester).
    #[error("{0}")]
    FailedPrecondition(&'static str),
    /// Every token drawn for this card collided with one the merchant already holds (only
    /// possible for PAN_SHAPED tokens, whose random middle is six digits or more; tokens are
    /// unique per merchant, so other merchants' tokens never take one).
    #[error("no free token left for this merchant with this card's shown digits")]
    TokenSpaceExhausted,
    /// A limit refused the call: nothing was done. Try again after `retry_after`.
    #[error("{limit}")]
    Throttled {
        /// Which limit.
        limit: Throttle,
        /// How long until the call could succeed.
        retry_after: std::time::Duration,
    },
}

/// The limit behind a [`VaultError::Throttled`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Throttle {
    /// The caller's call quota for this operation (per replica).
    #[error("rate limit exceeded for this caller and operation")]
    RateLimit,
    /// The enumeration guard: too many distinct cards with the same shown digits from this
    /// caller for this merchant in this window (vault-wide).
    #[error(
        "too many different cards with the same leading and last digits from this caller for \
         this merchant; refused until the window ends"
    )]
    Enumeration {
        /// This call spent the bucket.
        tripped: bool,
    },
    /// The caller created too many new merchants this hour (vault-wide).
    #[error("this caller created too many new merchants this hour")]
    NewMerchants,
}

/// Errors a [`crate::ports::TokenStore`] reports.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached, timed out, or failed the statement.
    #[error("{0}")]
    Unavailable(String),
    /// A stored row could not be read back into domain types.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// Errors a [`crate::ports::KeyEncryptionKey`] reports.
#[derive(Debug, thiserror::Error)]
pub enum KekError {
    /// The KEK backend could not be reached or used.
    #[error("{0}")]
    Unavailable(String),
    /// A wrapped key failed authentication under the KEK.
    #[error("wrapped key failed authentication")]
    Integrity,
}

impl From<KekError> for VaultError {
    fn from(err: KekError) -> Self {
        match err {
            KekError::Unavailable(detail) => Self::KeyUnavailable(detail),
            KekError::Integrity => Self::Integrity,
        }
    }
}

impl From<StoreError> for VaultError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(detail) => Self::StoreUnavailable(detail),
            StoreError::Corrupt(_) => Self::Integrity,
        }
    }
}
