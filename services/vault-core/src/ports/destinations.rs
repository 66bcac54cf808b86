//! The store port of the forward proxy: destinations and forwards in flight (part of every
//! `TokenStore`). The domain decides what may be sent (`crate::forward`); the store only
//! keeps it, each change in one transaction with its audit record.

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::audit::AuditRecord;
use crate::error::StoreError;

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
    /// The audit signing key's signature of the approval, made by the vault as it approved
    /// (`crate::forward::admin::approval_message`); checked before every forward.
    pub approval_seal: Option<Vec<u8>>,
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

    /// Approves version `id` as `approver` at `at` with the approval's `seal`, with its audit
    /// record, if it is still neither approved nor revoked and was proposed by someone else.
    /// Returns whether it was.
    async fn approve_destination(
        &self,
        id: &str,
        approver: &str,
        at: OffsetDateTime,
        seal: &[u8],
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
