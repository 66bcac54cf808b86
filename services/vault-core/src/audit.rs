//! Audit records: one per call, allowed or denied. Never a PAN: every field is either set by
//! the transport (caller, peer, request id) or a parsed domain value that cannot hold one
//! (merchant ids, tokens and reasons refuse card numbers when parsed).

use std::borrow::Cow;

use time::OffsetDateTime;

use crate::error::{Throttle, VaultError};
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
    /// A rate limit or the new-merchant cap refused the call.
    RateLimited,
    /// The enumeration guard refused the call.
    EnumerationRefused,
    /// What happened is not known: a forward whose request may have left the vault and
    /// whose answer was never recorded (recorded by the next start that finds it).
    Unknown,
}

impl Outcome {
    /// Every outcome.
    pub const ALL: [Self; 13] = [
        Self::Success,
        Self::Denied,
        Self::Unauthenticated,
        Self::InvalidArgument,
        Self::NotFound,
        Self::IntegrityFailure,
        Self::Unavailable,
        Self::Exhausted,
        Self::KeyDestroyed,
        Self::FailedPrecondition,
        Self::RateLimited,
        Self::EnumerationRefused,
        Self::Unknown,
    ];

    /// The outcome named `name`.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == name)
    }

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
            Self::RateLimited => "rate_limited",
            Self::EnumerationRefused => "enumeration_refused",
            Self::Unknown => "unknown",
        }
    }

    /// The outcome that records `error`.
    #[must_use]
    pub fn of(error: &VaultError) -> Self {
        match error {
            VaultError::InvalidArgument(_) | VaultError::InvalidCard { .. } => {
                Self::InvalidArgument
            }
            VaultError::PermissionDenied { .. } => Self::Denied,
            VaultError::Unauthenticated => Self::Unauthenticated,
            VaultError::NotFound => Self::NotFound,
            VaultError::Integrity => Self::IntegrityFailure,
            VaultError::KeyUnavailable(_)
            | VaultError::StoreUnavailable(_)
            | VaultError::AuditUnavailable(_)
            | VaultError::Timeout(_) => Self::Unavailable,
            VaultError::TokenSpaceExhausted => Self::Exhausted,
            VaultError::KeyDestroyed => Self::KeyDestroyed,
            VaultError::FailedPrecondition(_) => Self::FailedPrecondition,
            VaultError::Throttled {
                limit: Throttle::Enumeration { .. },
                ..
            } => Self::EnumerationRefused,
            VaultError::Throttled { .. } => Self::RateLimited,
            VaultError::Egress(failure) if failure.not_accepted() => Self::Unavailable,
            VaultError::Egress(_) => Self::FailedPrecondition,
        }
    }
}

/// The caller and origin the vault's own events are recorded under.
pub const VAULTD: &str = "vaultd";

/// The caller a call without a client certificate is recorded under.
pub const NO_CERTIFICATE: &str = "no-certificate";

/// The prefix of the caller a certificate that names no identity is recorded under (then
/// `sha256:` and the certificate's digest).
pub const UNIDENTIFIED_CERTIFICATE: &str = "unidentified-certificate:";

/// Whether `identity` is, or could be mistaken for, a name the vault records its own events
/// or unidentified callers under (compared without regard to ASCII case). No certificate or
/// policy entry may claim one.
#[must_use]
pub fn is_reserved_caller(identity: &str) -> bool {
    let lowercase = identity.to_ascii_lowercase();
    lowercase == VAULTD
        || lowercase == NO_CERTIFICATE
        || lowercase.starts_with(UNIDENTIFIED_CERTIFICATE)
}

/// What an audit record records: a call (pruning the trail, PCI DSS 10.2.1.2, is the
/// `audit.prune` call), or one of the vault's own events (PCI DSS 10.2.1.6: start and stop of
/// the audit log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// A call of this operation (allowed or not).
    Call(Operation),
    /// The vault started writing its audit trail.
    VaultStart,
    /// The vault is stopping; the last record of its writer's chain.
    VaultStop,
    /// Connections refused before a caller was identified (TLS handshakes), summarized per
    /// interval (PCI DSS 10.2.1.4: invalid logical access attempts).
    TlsRefused,
    /// An operator replaced an audit signing key that was lost or could not be unwrapped
    /// (`vaultd replace-audit-key`); the record names the old key and the new one.
    AuditKeyReplaced,
    /// The access policy was reloaded without a restart (SIGHUP): the record names the new
    /// policy's digest, or (outcome `failed_precondition`) why the old one stayed.
    PolicyReload,
    /// The TLS settings were read again (SIGHUP, or a changed CRL file): the record names the
    /// digests of the certificate, client CA and CRL files now in force and how many
    /// connections they closed, or (outcome `failed_precondition`) that the old ones stayed.
    TlsReload,
    /// The second record of a forward: what the processor answered (status and bytes), or
    /// why no answer came back, under the call's request id. The first is the `forward` call.
    ForwardResult,
}

impl Event {
    /// Every event: a call of each operation, then the vault's own.
    pub fn all() -> impl Iterator<Item = Self> {
        Operation::ALL.into_iter().map(Self::Call).chain([
            Self::VaultStart,
            Self::VaultStop,
            Self::TlsRefused,
            Self::AuditKeyReplaced,
            Self::PolicyReload,
            Self::TlsReload,
            Self::ForwardResult,
        ])
    }

    /// The event named `name`.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::all().find(|e| e.as_str() == name)
    }

    /// The event's name as audit records spell it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Call(operation) => operation.as_str(),
            Self::VaultStart => "vault.start",
            Self::VaultStop => "vault.stop",
            Self::TlsRefused => "tls.refused",
            Self::AuditKeyReplaced => "audit.key_replaced",
            Self::PolicyReload => "policy.reload",
            Self::TlsReload => "tls.reload",
            Self::ForwardResult => "forward.result",
        }
    }
}

/// One audited call or vault event.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    /// When the call was decided, UTC.
    pub time: OffsetDateTime,
    /// The authenticated caller ([`VAULTD`] for the vault's own events).
    pub caller: CallerId,
    /// The caller's socket address, when known.
    pub peer: Option<String>,
    /// What was attempted.
    pub event: Event,
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
    /// A short note: the admin action, the invalid field's name, `existing` for a deduplicated
    /// tokenize, what an audit read asked for. Never a request value that could hold a PAN.
    pub detail: Option<Cow<'static, str>>,
}

/// A new audit writer's name: the time it started and a random suffix
/// (`20261123T101500Z-3f9a1c2b`), so writers sort by start time and two never share one.
#[must_use]
pub fn new_writer() -> String {
    let now = OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z-{:08x}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        rand::random::<u32>()
    )
}

impl AuditRecord {
    /// This record as entry `seq` of `writer`'s chain, linked to `prev_hash` and hashed: what
    /// every store writes. `None` if its time is outside the format's range.
    #[must_use]
    pub fn chained(
        &self,
        writer: &str,
        seq: u64,
        prev_hash: [u8; vault_audit::HASH_LEN],
    ) -> Option<vault_audit::Entry> {
        Some(
            vault_audit::Entry {
                writer: writer.to_owned(),
                seq,
                at: vault_audit::format_time(crate::clock::micros(self.time))?,
                caller: self.caller.as_str().to_owned(),
                origin: self.origin().to_owned(),
                event: self.event.as_str().to_owned(),
                detail: self.detail.as_ref().map(ToString::to_string),
                outcome: self.outcome.as_str().to_owned(),
                resource: self.resource(),
                merchant_id: self.merchant.as_ref().map(|m| m.as_str().to_owned()),
                token: self.token.as_ref().map(|t| t.as_str().to_owned()),
                request_id: self.request_id.clone(),
                reason: self.reason.as_ref().map(|r| r.as_str().to_owned()),
                prev_hash,
                hash: vault_audit::GENESIS,
            }
            .sealed(),
        )
    }

    /// A record for a call in `ctx`, stamped now, with outcome `Success` until told otherwise.
    #[must_use]
    pub fn begin(ctx: &CallContext, operation: Operation) -> Self {
        Self {
            time: OffsetDateTime::now_utc(),
            caller: ctx.caller.clone(),
            peer: ctx.peer.clone(),
            event: Event::Call(operation),
            merchant: None,
            token: None,
            outcome: Outcome::Success,
            request_id: ctx.request_id.clone(),
            reason: None,
            detail: None,
        }
    }

    /// A record of the vault's own `event`, stamped now, under a fresh request id.
    #[must_use]
    pub fn system(event: Event, detail: impl Into<Cow<'static, str>>) -> Self {
        Self {
            time: OffsetDateTime::now_utc(),
            caller: CallerId::new(VAULTD),
            peer: None,
            event,
            merchant: None,
            token: None,
            outcome: Outcome::Success,
            request_id: crate::ids::new_request_id(),
            reason: None,
            detail: Some(detail.into()),
        }
    }

    /// The same record with another detail.
    #[must_use]
    pub fn with_detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Where the event came from (PCI DSS 10.2.2 "origination"): the peer's address, or
    /// [`VAULTD`] for the vault's own events.
    #[must_use]
    pub fn origin(&self) -> &str {
        match (&self.peer, self.event) {
            (Some(peer), _) => peer,
            (None, Event::Call(_) | Event::ForwardResult) => "unknown",
            (None, _) => VAULTD,
        }
    }

    /// What the event touched (PCI DSS 10.2.2 "affected data, component or resource"): the
    /// token, else the merchant, else the part of the vault the call aimed at.
    #[must_use]
    pub fn resource(&self) -> String {
        match (&self.merchant, &self.token) {
            (Some(merchant), Some(token)) => format!("merchant/{merchant}/token/{token}"),
            (Some(merchant), None) => format!("merchant/{merchant}"),
            (None, _) => match self.event {
                Event::Call(
                    Operation::Tokenize
                    | Operation::Detokenize
                    | Operation::Metadata
                    | Operation::Delete
                    | Operation::Forward,
                ) => "tokens",
                Event::ForwardResult => "tokens",
                Event::Call(Operation::DestinationsAdmin) => "destinations",
                Event::Call(Operation::KeysAdmin) => "keys",
                Event::Call(Operation::AuditRead | Operation::AuditPrune) => "audit",
                Event::VaultStart | Event::VaultStop => "vault",
                Event::TlsRefused | Event::TlsReload => "tls",
                Event::AuditKeyReplaced => "audit",
                Event::PolicyReload => "policy",
            }
            .to_owned(),
        }
    }

    /// Sets the outcome (and, for a bad field, the detail) from `error`.
    #[must_use]
    pub fn failed(mut self, error: &VaultError) -> Self {
        self.outcome = Outcome::of(error);
        match error {
            VaultError::InvalidArgument(invalid) => self.detail = Some(invalid.field.into()),
            VaultError::InvalidCard { index, invalid } => {
                self.detail = Some(format!("cards[{index}].{}", invalid.field).into());
            }
            _ => {}
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_and_outcome_reads_back_from_its_name() {
        let events: Vec<&str> = Event::all().map(Event::as_str).collect();
        assert_eq!(events.len(), 16);
        for event in Event::all() {
            assert_eq!(Event::from_name(event.as_str()), Some(event));
        }
        assert!(events.contains(&"audit.key_replaced") && events.contains(&"tokenize"));
        assert!(events.contains(&"policy.reload") && events.contains(&"tls.reload"));
        for outcome in Outcome::ALL {
            assert_eq!(Outcome::from_name(outcome.as_str()), Some(outcome));
        }
        assert_eq!(
            Outcome::from_name("enumeration_refused"),
            Some(Outcome::EnumerationRefused)
        );
        assert_eq!(Event::from_name("nope"), None);
        assert_eq!(Outcome::from_name(""), None);
    }
}
