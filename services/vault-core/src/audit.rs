//! Audit records: one per call, allowed or denied. Never a PAN: every field is either set by
//! the transport (caller, peer, request id) or a parsed domain value that cannot hold one
//! (merchant ids, tokens and reasons refuse card numbers when parsed).

use time::OffsetDateTime;

use crate::error::VaultError;
use crate::ids::{CallContext, CallerId, MerchantId};
use crate::policy::Operation;
use crate::reason::Reason;
use crate::token::Token;

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The operation was performed.
    Success,
    /// The policy refused the caller.
    Denied,
    /// The caller's certificate names no identity.
    Unauthenticated,
    /// A request field was malformed.
    InvalidArgument,
    /// The token does not exist for this merchant.
    NotFound,
    /// Stored data or a key failed authentication.
    IntegrityFailure,
    /// A dependency (store, KEK) was unavailable.
    Unavailable,
    /// No token could be allocated.
    Exhausted,
    /// The merchant's keys were destroyed.
    KeyDestroyed,
    /// The vault's state did not allow the request.
    FailedPrecondition,
}

impl Outcome {
    /// The outcome's name as audit records spell it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Denied => "denied",
            Self::Unauthenticated => "unauthenticated",
            Self::InvalidArgument => "invalid_argument",
            Self::NotFound => "not_found",
            Self::IntegrityFailure => "integrity_failure",
            Self::Unavailable => "unavailable",
            Self::Exhausted => "exhausted",
            Self::KeyDestroyed => "key_destroyed",
            Self::FailedPrecondition => "failed_precondition",
        }
    }

    /// The outcome that records `error`.
    #[must_use]
    pub fn of(error: &VaultError) -> Self {
        match error {
            VaultError::InvalidArgument(_) => Self::InvalidArgument,
            VaultError::PermissionDenied { .. } => Self::Denied,
            VaultError::Unauthenticated => Self::Unauthenticated,
            VaultError::NotFound => Self::NotFound,
            VaultError::Integrity => Self::IntegrityFailure,
            VaultError::KeyUnavailable(_)
            | VaultError::StoreUnavailable(_)
            | VaultError::AuditUnavailable(_) => Self::Unavailable,
            VaultError::TokenSpaceExhausted => Self::Exhausted,
            VaultError::KeyDestroyed => Self::KeyDestroyed,
            VaultError::FailedPrecondition(_) => Self::FailedPrecondition,
        }
    }
}

/// One audited call.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    /// When the call was decided, UTC.
    pub time: OffsetDateTime,
    /// The authenticated caller.
    pub caller: CallerId,
    /// The caller's socket address, when known.
    pub peer: Option<String>,
    /// What was attempted.
    pub operation: Operation,
    /// The merchant, when the request named a valid one.
    pub merchant: Option<MerchantId>,
    /// The token, when the request named a valid one or one was issued.
    pub token: Option<Token>,
    /// How the call ended.
    pub outcome: Outcome,
    /// The call's request id.
    pub request_id: String,
    /// The caller's stated reason (Detokenize).
    pub reason: Option<Reason>,
    /// A short fixed note: the invalid field's name, or `existing` for a deduplicated tokenize.
    pub detail: Option<&'static str>,
}

impl AuditRecord {
    /// A record for a call in `ctx`, stamped now, with outcome `Success` until told otherwise.
    #[must_use]
    pub fn begin(ctx: &CallContext, operation: Operation) -> Self {
        Self {
            time: OffsetDateTime::now_utc(),
            caller: ctx.caller.clone(),
            peer: ctx.peer.clone(),
            operation,
            merchant: None,
            token: None,
            outcome: Outcome::Success,
            request_id: ctx.request_id.clone(),
            reason: None,
            detail: None,
        }
    }

    /// The same record with another detail.
    #[must_use]
    pub fn with_detail(mut self, detail: &'static str) -> Self {
        self.detail = Some(detail);
        self
    }

    /// Sets the outcome (and, for a bad field, the detail) from `error`.
    #[must_use]
    pub fn failed(mut self, error: &VaultError) -> Self {
        self.outcome = Outcome::of(error);
        if let VaultError::InvalidArgument(invalid) = error {
            self.detail = Some(invalid.field);
        }
        self
    }
}
