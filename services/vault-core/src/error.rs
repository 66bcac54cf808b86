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
    /// The key-encryption key could not be reached or used (its error is the source).
    #[error("key service unavailable: {0}")]
    KeyUnavailable(#[source] KekError),
    /// The store could not be reached or refused the operation (its error is the source).
    #[error("storage unavailable: {0}")]
    StoreUnavailable(#[source] StoreError),
    /// The audit record could not be written, so the call is refused (fail closed).
    #[error("audit log unavailable: {0}")]
    AuditUnavailable(#[source] StoreError),
    /// The call's work did not finish within its bound (`storage.call_timeout_ms`): a slow
    /// store or KEK. Nothing is released; what was written stays written and audited.
    #[error("the call did not finish within {} ms", .0.as_millis())]
    Timeout(std::time::Duration),
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
    /// A forward got no usable answer from its processor ([`crate::forward::EgressFailure`]
    /// says why, and whether the request may have been delivered).
    #[error("{0}")]
    Egress(EgressFailure),
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
    /// The caller forwarded too many distinct tokens this hour (vault-wide).
    #[error("this caller forwarded too many different tokens this hour")]
    ForwardedTokens,
}

/// What an error keeps of its cause: shared, so that one failure (a group commit's) can
/// answer many callers.
pub type Cause = std::sync::Arc<dyn std::error::Error + Send + Sync + 'static>;

/// `what`, then the cause's own message if there is one. The cause stays reachable through
/// `source()` too; [`chain`] prints each message of a chain once.
fn describe(what: &str, cause: Option<&Cause>) -> String {
    match cause {
        Some(cause) => format!("{what}: {cause}"),
        None => what.to_owned(),
    }
}

/// A dependency (the store, a KEK) that could not be used: what failed, in words that hold no
/// request data or secret, and the error behind it if there was one (its `source()`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", describe(&self.what, self.cause.as_ref()))]
pub struct Unavailable {
    /// What failed.
    pub what: std::borrow::Cow<'static, str>,
    /// The driver's, backend's or transport's error.
    #[source]
    pub cause: Option<Cause>,
}

impl Unavailable {
    /// `what` failed, with no error behind it.
    #[must_use]
    pub fn new(what: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        Self {
            what: what.into(),
            cause: None,
        }
    }

    /// `what` failed because of `cause`.
    #[must_use]
    pub fn caused_by(
        what: impl Into<std::borrow::Cow<'static, str>>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            what: what.into(),
            cause: Some(std::sync::Arc::new(cause)),
        }
    }
}

/// Errors a [`crate::ports::TokenStore`] reports.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached, timed out, or failed the statement.
    #[error(transparent)]
    Unavailable(Unavailable),
    /// A stored row could not be read back into domain types.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// The store is unavailable: `what` says which step failed.
    #[must_use]
    pub fn unavailable(what: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        Self::Unavailable(Unavailable::new(what))
    }

    /// The store is unavailable because of `cause`.
    #[must_use]
    pub fn caused_by(
        what: impl Into<std::borrow::Cow<'static, str>>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Unavailable(Unavailable::caused_by(what, cause))
    }
}

/// Errors a [`crate::ports::KeyEncryptionKey`] reports.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KekError {
    /// The KEK backend could not be reached or used (what names the backend).
    #[error(transparent)]
    Unavailable(Unavailable),
    /// The KEK backend did not answer in time (a slow HSM or Transit server, not an outage
    /// of the store).
    #[error("{what} (no answer within {} ms)", .after.as_millis())]
    Timeout {
        /// Which backend, and what was asked.
        what: String,
        /// How long it was given.
        after: std::time::Duration,
    },
    /// A wrapped key failed authentication under the KEK.
    #[error("wrapped key failed authentication")]
    Integrity,
}

impl KekError {
    /// The KEK is unavailable: `what` says which backend and what failed.
    #[must_use]
    pub fn unavailable(what: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        Self::Unavailable(Unavailable::new(what))
    }

    /// The KEK is unavailable because of `cause`.
    #[must_use]
    pub fn caused_by(
        what: impl Into<std::borrow::Cow<'static, str>>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Unavailable(Unavailable::caused_by(what, cause))
    }
}

/// `error` and each of its sources, `: `-separated, every message once (an error whose
/// message already quotes its source's is not repeated). The one cause-chain printer for the
/// vault's logs and startup errors.
#[must_use]
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl From<KekError> for VaultError {
    fn from(err: KekError) -> Self {
        match err {
            KekError::Integrity => Self::Integrity,
            unavailable @ (KekError::Unavailable(_) | KekError::Timeout { .. }) => {
                Self::KeyUnavailable(unavailable)
            }
        }
    }
}

impl From<StoreError> for VaultError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Corrupt(_) => Self::Integrity,
            unavailable @ StoreError::Unavailable(_) => Self::StoreUnavailable(unavailable),
        }
    }
}

/// Why no answer came back from a processor, in words that hold nothing of the request or the
/// answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EgressFailure {
    /// The processor could not be reached (DNS, TCP); nothing was sent.
    #[error("the processor could not be reached")]
    Unreachable,
    /// The processor's certificate is not the approved one (chain or pin); nothing was sent.
    #[error("the processor's certificate is not the approved one")]
    Untrusted,
    /// The processor refused the TLS handshake with an alert (our client certificate, the
    /// protocol). In TLS 1.3 that alert comes after the request was written, encrypted, to
    /// the connection: the processor's TLS layer refused it, so it was not accepted, but it
    /// was sent.
    #[error("the processor refused the TLS handshake (client certificate or protocol)")]
    Refused,
    /// The destination's settings could not be used (client identity, trust anchor); nothing
    /// was sent.
    #[error("the destination's TLS settings could not be used")]
    Misconfigured,
    /// No complete answer within the destination's timeout; the request may have been
    /// delivered.
    #[error("the processor did not answer within the destination's timeout")]
    Timeout,
    /// The processor answered with a redirect, which is never followed.
    #[error("the processor answered with a redirect, which is never followed")]
    Redirect,
    /// The processor answered with a compressed body, which is refused.
    #[error("the processor answered with a compressed body")]
    Compressed,
    /// The answer was larger than the destination's cap.
    #[error("the processor's answer was larger than the destination allows")]
    TooLarge,
    /// The answer broke HTTP, or the connection failed after the request was sent.
    #[error("the processor's answer was malformed or cut off")]
    Protocol,
}

impl EgressFailure {
    /// The failure's name as audit records spell it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::Untrusted => "untrusted_certificate",
            Self::Refused => "handshake_refused",
            Self::Misconfigured => "misconfigured",
            Self::Timeout => "timeout",
            Self::Redirect => "redirect",
            Self::Compressed => "compressed",
            Self::TooLarge => "too_large",
            Self::Protocol => "protocol",
        }
    }

    /// True if the request cannot have reached the processor.
    #[must_use]
    pub fn before_sending(self) -> bool {
        matches!(
            self,
            Self::Unreachable | Self::Untrusted | Self::Misconfigured
        )
    }

    /// True if the processor cannot have acted on the request: nothing was sent, or its TLS
    /// layer refused the connection.
    #[must_use]
    pub fn not_accepted(self) -> bool {
        self.before_sending() || self == Self::Refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("connection reset")]
    struct Reset;

    #[test]
    fn causes_are_kept_and_printed_once() {
        let store = StoreError::caused_by("the database failed", Reset);
        assert_eq!(store.to_string(), "the database failed: connection reset");
        let call = VaultError::from(store);
        let source = std::error::Error::source(&call).map(ToString::to_string);
        assert_eq!(
            source.as_deref(),
            Some("the database failed: connection reset")
        );
        assert_eq!(
            chain(&call),
            "storage unavailable: the database failed: connection reset"
        );
        let bare = VaultError::StoreUnavailable(StoreError::unavailable("no answer"));
        assert_eq!(chain(&bare), "storage unavailable: no answer");
    }
}
