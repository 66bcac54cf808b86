//! What forwarding needs from the outside: a store for destinations and forwards in flight
//! ([`DestinationStore`], part of every `TokenStore`), and a way to send one request to an
//! approved processor ([`Egress`]). The domain decides what may be sent; the adapters only
//! keep and carry it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::audit::AuditRecord;
use crate::error::StoreError;
use crate::forward::spec::{Destination, DestinationSpec, Method};

/// One version of a destination as the store keeps it: the spec as its canonical JSON (the
/// domain parses it back), and who proposed, approved and revoked it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDestination {
    /// The version's id (a UUID), named by the approval.
    pub id: String,
    /// The destination's name (the spec's `name`).
    pub name: String,
    /// The spec, as [`DestinationSpec::canonical_json`] wrote it.
    pub spec_json: String,
    /// `sha256:` and the hex SHA-256 of `spec_json`.
    pub fingerprint: String,
    /// The admin who proposed it.
    pub proposed_by: String,
    /// When.
    pub proposed_at: OffsetDateTime,
    /// The second admin who approved it, once approved.
    pub approved_by: Option<String>,
    /// When.
    pub approved_at: Option<OffsetDateTime>,
    /// The admin who revoked it, once revoked.
    pub revoked_by: Option<String>,
    /// When.
    pub revoked_at: Option<OffsetDateTime>,
}

/// A forward whose request may have left the vault and whose outcome is not recorded yet: its
/// first audit record is durable, its second is not. Kept in the store from the first record's
/// transaction to the second's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardInFlight {
    /// The call's request id (both records carry it).
    pub request_id: String,
    /// The caller.
    pub caller: String,
    /// The merchant.
    pub merchant_id: String,
    /// The token whose card was sent.
    pub token: String,
    /// The destination's name.
    pub destination: String,
    /// The fingerprint of the approved version it was sent under.
    pub fingerprint: String,
    /// When the first record was written.
    pub begun_at: OffsetDateTime,
    /// When the replica that sent it stops waiting for the answer (`begun_at` plus the
    /// destination's timeout).
    pub deadline_at: OffsetDateTime,
}

/// Durable storage for destinations and forwards in flight. Every change commits with its
/// audit record, in one transaction.
#[async_trait]
pub trait DestinationStore: Send + Sync {
    /// Stores a proposed version (not yet approved) with its audit record.
    async fn propose_destination(
        &self,
        version: &StoredDestination,
        audit: &AuditRecord,
    ) -> Result<(), StoreError>;

    /// One version by id.
    async fn destination_version(&self, id: &str) -> Result<Option<StoredDestination>, StoreError>;

    /// Every version (of `name`, if given), oldest first.
    async fn destination_versions(
        &self,
        name: Option<&str>,
    ) -> Result<Vec<StoredDestination>, StoreError>;

    /// Approves version `id` as `approver` at `at`, with its audit record, if it is still
    /// neither approved nor revoked and was proposed by someone else. Returns whether it was.
    async fn approve_destination(
        &self,
        id: &str,
        approver: &str,
        at: OffsetDateTime,
        audit: &AuditRecord,
    ) -> Result<bool, StoreError>;

    /// Revokes every version of `name` not revoked yet (proposed or approved), with its audit
    /// record. Returns how many it revoked (none: no record is written).
    async fn revoke_destination(
        &self,
        name: &str,
        by: &str,
        at: OffsetDateTime,
        audit: &AuditRecord,
    ) -> Result<u64, StoreError>;

    /// The version of `name` in force: the one approved last of those not revoked.
    async fn approved_destination(
        &self,
        name: &str,
    ) -> Result<Option<StoredDestination>, StoreError>;

    /// Writes a forward's first audit record and marks it in flight, in one transaction.
    async fn begin_forward(
        &self,
        forward: &ForwardInFlight,
        audit: &AuditRecord,
    ) -> Result<(), StoreError>;

    /// Writes a forward's second audit record and clears its in-flight mark, in one
    /// transaction, if it is still in flight. Returns whether it was (if not, nothing is
    /// written: another replica recorded its outcome already).
    async fn finish_forward(
        &self,
        request_id: &str,
        audit: &AuditRecord,
    ) -> Result<bool, StoreError>;

    /// The forwards in flight whose deadline is before `deadline_before`, by deadline.
    async fn forwards_in_flight(
        &self,
        deadline_before: OffsetDateTime,
    ) -> Result<Vec<ForwardInFlight>, StoreError>;
}

/// One request for an approved destination, rendered and checked by the domain. The body holds
/// the card number; it is zeroized when dropped.
pub struct OutboundRequest {
    /// The approved destination (its URL, trust anchor, pin, client identity, limits).
    pub destination: Arc<Destination>,
    /// The method, one the destination allows.
    pub method: Method,
    /// The path below the destination's base URL, checked against its patterns.
    pub path: String,
    /// Headers to send: the template's content type and the caller's allowed headers.
    pub headers: Vec<(String, String)>,
    /// The rendered body.
    pub body: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for OutboundRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundRequest")
            .field("destination", &self.destination.spec().name)
            .field("method", &self.method)
            .field("path", &self.path)
            .field("body", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// A processor's answer, as received (the domain masks it before it leaves the vault). Headers
/// are those the destination allows to be returned, lower-case names.
pub struct ProcessorResponse {
    /// The HTTP status.
    pub status: u16,
    /// The allowed headers, in the order received.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, at most the destination's cap; zeroized when dropped (it may echo the card).
    pub body: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ProcessorResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessorResponse")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
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
}

/// Sends rendered requests to approved destinations over TLS: only to the destination's base
/// URL, trusting only its trust anchor (and pin), no redirects followed, `Accept-Encoding:
/// identity`, compressed answers refused, at most the destination's cap read, within its
/// timeout.
#[async_trait]
pub trait Egress: Send + Sync {
    /// Checks that a proposed spec's TLS settings can be used (its trust anchor parses, its
    /// client identity is configured). `Err` names the field and the problem, no value.
    fn check(&self, spec: &DestinationSpec) -> Result<(), crate::InvalidArgument>;

    /// Sends one request and reads its answer.
    async fn send(&self, request: OutboundRequest) -> Result<ProcessorResponse, EgressFailure>;
}

/// How long a forward may take at most, whatever a destination says.
pub const MAX_FORWARD_TIMEOUT: Duration = Duration::from_secs(60);
