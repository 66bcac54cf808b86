//! `DestinationStore` over sqlx: the forward proxy's destinations (proposed, approved and
//! revoked under dual control) and its forwards in flight. Every change commits with its audit
//! record in one transaction; a change that changes nothing rolls back and writes no record.

use time::OffsetDateTime;
use vault_core::StoreError;
use vault_core::ports::{ForwardInFlight, StoredDestination};

use crate::rows::{from_micros, micros};

/// A `destinations` row (`destination_columns!`), read back as plain values.
#[derive(sqlx::FromRow)]
pub(crate) struct DestinationRow {
    pub id: String,
    pub name: String,
    pub spec_json: String,
    pub fingerprint: String,
    pub proposed_by: String,
    pub proposed_at: i64,
    pub approved_by: Option<String>,
    pub approved_at: Option<i64>,
    pub approval_seal: Option<Vec<u8>>,
    pub revoked_by: Option<String>,
    pub revoked_at: Option<i64>,
}

impl DestinationRow {
    pub(crate) fn into_destination(self) -> Result<StoredDestination, StoreError> {
        Ok(StoredDestination {
            id: self.id,
            name: self.name,
            spec_json: self.spec_json,
            fingerprint: self.fingerprint,
            proposed_by: self.proposed_by,
            proposed_at: from_micros(self.proposed_at)?,
            approved_by: self.approved_by,
            approved_at: self.approved_at.map(from_micros).transpose()?,
            approval_seal: self.approval_seal,
            revoked_by: self.revoked_by,
            revoked_at: self.revoked_at.map(from_micros).transpose()?,
        })
    }
}

/// A `forwards_in_flight` row (`forward_columns!`).
#[derive(sqlx::FromRow)]
pub(crate) struct ForwardRow {
    pub request_id: String,
    pub caller: String,
    pub merchant_id: String,
    pub token: String,
    pub destination: String,
    pub fingerprint: String,
    pub begun_at: i64,
    pub deadline_at: i64,
}

impl ForwardRow {
    pub(crate) fn into_forward(self) -> Result<ForwardInFlight, StoreError> {
        Ok(ForwardInFlight {
            request_id: self.request_id,
            caller: self.caller,
            merchant_id: self.merchant_id,
            token: self.token,
            destination: self.destination,
            fingerprint: self.fingerprint,
            begun_at: from_micros(self.begun_at)?,
            deadline_at: from_micros(self.deadline_at)?,
        })
    }
}

/// A time as its column holds it, or NULL.
pub(crate) fn micros_or_null(at: Option<OffsetDateTime>) -> Option<i64> {
    at.map(micros)
}

/// `DestinationStore` for `$store` (see `token_store_impl!`).
macro_rules! destination_port {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl vault_core::ports::DestinationStore for $store {
            async fn propose_destination(
                &self,
                version: &vault_core::ports::StoredDestination,
                audit: &vault_core::audit::AuditRecord,
            ) -> Result<(), vault_core::StoreError> {
                let mut tx = self.begin().await?;
                sqlx::query($crate::sql::INSERT_DESTINATION)
                    .bind(&version.id)
                    .bind(&version.name)
                    .bind(&version.spec_json)
                    .bind(&version.fingerprint)
                    .bind(&version.proposed_by)
                    .bind($crate::rows::micros(version.proposed_at))
                    .bind(&version.approved_by)
                    .bind($crate::sql::destinations::micros_or_null(
                        version.approved_at,
                    ))
                    .bind(&version.approval_seal)
                    .bind(&version.revoked_by)
                    .bind($crate::sql::destinations::micros_or_null(
                        version.revoked_at,
                    ))
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::error::unavailable)?;
                self.commit_audited(tx, &[audit]).await?;
                Ok(())
            }

            async fn destination_version(
                &self,
                id: &str,
            ) -> Result<Option<vault_core::ports::StoredDestination>, vault_core::StoreError> {
                let row: Option<$crate::sql::destinations::DestinationRow> =
                    sqlx::query_as($crate::sql::SELECT_DESTINATION)
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err($crate::error::unavailable)?;
                row.map($crate::sql::destinations::DestinationRow::into_destination)
                    .transpose()
            }

            async fn destination_versions(
                &self,
                name: Option<&str>,
            ) -> Result<Vec<vault_core::ports::StoredDestination>, vault_core::StoreError> {
                let rows: Vec<$crate::sql::destinations::DestinationRow> =
                    sqlx::query_as($crate::sql::SELECT_DESTINATIONS)
                        .bind(name)
                        .fetch_all(&self.pool)
                        .await
                        .map_err($crate::error::unavailable)?;
                rows.into_iter()
                    .map($crate::sql::destinations::DestinationRow::into_destination)
                    .collect()
            }

            async fn approve_destination(
                &self,
                id: &str,
                approver: &str,
                at: time::OffsetDateTime,
                seal: &[u8],
                audit: &vault_core::audit::AuditRecord,
            ) -> Result<bool, vault_core::StoreError> {
                let mut tx = self.begin().await?;
                let approved = sqlx::query($crate::sql::APPROVE_DESTINATION)
                    .bind(id)
                    .bind(approver)
                    .bind($crate::rows::micros(at))
                    .bind(seal)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::error::unavailable)?;
                if approved.rows_affected() != 1 {
                    tx.rollback().await.map_err($crate::error::unavailable)?;
                    return Ok(false);
                }
                self.commit_audited(tx, &[audit]).await?;
                Ok(true)
            }

            async fn revoke_destination(
                &self,
                name: &str,
                by: &str,
                at: time::OffsetDateTime,
                audit: &vault_core::audit::AuditRecord,
            ) -> Result<u64, vault_core::StoreError> {
                let mut tx = self.begin().await?;
                let revoked = sqlx::query($crate::sql::REVOKE_DESTINATION)
                    .bind(name)
                    .bind(by)
                    .bind($crate::rows::micros(at))
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::error::unavailable)?
                    .rows_affected();
                if revoked == 0 {
                    tx.rollback().await.map_err($crate::error::unavailable)?;
                    return Ok(0);
                }
                self.commit_audited(tx, &[audit]).await?;
                Ok(revoked)
            }

            async fn approved_destination(
                &self,
                name: &str,
            ) -> Result<Option<vault_core::ports::StoredDestination>, vault_core::StoreError> {
                let row: Option<$crate::sql::destinations::DestinationRow> =
                    sqlx::query_as($crate::sql::SELECT_APPROVED_DESTINATION)
                        .bind(name)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err($crate::error::unavailable)?;
                row.map($crate::sql::destinations::DestinationRow::into_destination)
                    .transpose()
            }

            async fn begin_forward(
                &self,
                forward: &vault_core::ports::ForwardInFlight,
                audit: &vault_core::audit::AuditRecord,
            ) -> Result<(), vault_core::StoreError> {
                let mut tx = self.begin().await?;
                sqlx::query($crate::sql::INSERT_FORWARD)
                    .bind(&forward.request_id)
                    .bind(&forward.caller)
                    .bind(&forward.merchant_id)
                    .bind(&forward.token)
                    .bind(&forward.destination)
                    .bind(&forward.fingerprint)
                    .bind($crate::rows::micros(forward.begun_at))
                    .bind($crate::rows::micros(forward.deadline_at))
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::error::unavailable)?;
                self.commit_audited(tx, &[audit]).await?;
                Ok(())
            }

            async fn finish_forward(
                &self,
                request_id: &str,
                audit: &vault_core::audit::AuditRecord,
            ) -> Result<bool, vault_core::StoreError> {
                let mut tx = self.begin().await?;
                let deleted = sqlx::query($crate::sql::DELETE_FORWARD)
                    .bind(request_id)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::error::unavailable)?;
                if deleted.rows_affected() != 1 {
                    tx.rollback().await.map_err($crate::error::unavailable)?;
                    return Ok(false);
                }
                self.commit_audited(tx, &[audit]).await?;
                Ok(true)
            }

            async fn forwards_in_flight(
                &self,
                deadline_before: time::OffsetDateTime,
            ) -> Result<Vec<vault_core::ports::ForwardInFlight>, vault_core::StoreError> {
                let rows: Vec<$crate::sql::destinations::ForwardRow> =
                    sqlx::query_as($crate::sql::SELECT_FORWARDS_DUE)
                        .bind($crate::rows::micros(deadline_before))
                        .fetch_all(&self.pool)
                        .await
                        .map_err($crate::error::unavailable)?;
                rows.into_iter()
                    .map($crate::sql::destinations::ForwardRow::into_forward)
                    .collect()
            }
        }
    };
}

pub(crate) use destination_port;
