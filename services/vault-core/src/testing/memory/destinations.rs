//! The forward proxy's store port of [`MemoryStore`]: destinations under dual control and the
//! forwards in flight. Each change appends its audit record under the same lock; a change
//! that changes nothing writes no record.

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::audit::AuditRecord;
use crate::error::StoreError;
use crate::ports::{DestinationStore, ForwardInFlight, StoredDestination};

use super::{MemoryStore, count};

/// What a database's primary key would refuse.
fn taken(what: &'static str) -> StoreError {
    StoreError::unavailable(what)
}

#[async_trait]
impl DestinationStore for MemoryStore {
    async fn propose_destination(
        &self,
        version: &StoredDestination,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        let mut state = self.lock()?;
        if state.destinations.contains_key(&version.id) {
            return Err(taken("a destination version with this id exists"));
        }
        if version.approved_by.as_ref() == Some(&version.proposed_by) {
            return Err(taken("a destination version approved by its proposer"));
        }
        state.audit_allowed()?;
        state.append(&self.writer, &[audit])?;
        state
            .destinations
            .insert(version.id.clone(), version.clone());
        Ok(())
    }

    async fn destination_version(&self, id: &str) -> Result<Option<StoredDestination>, StoreError> {
        let state = self.lock()?;
        Ok(state.destinations.get(id).cloned())
    }

    async fn destination_versions(
        &self,
        name: Option<&str>,
    ) -> Result<Vec<StoredDestination>, StoreError> {
        let state = self.lock()?;
        let mut versions: Vec<StoredDestination> = state
            .destinations
            .values()
            .filter(|v| name.is_none_or(|name| v.name == name))
            .cloned()
            .collect();
        versions.sort_by(|a, b| (a.proposed_at, &a.id).cmp(&(b.proposed_at, &b.id)));
        Ok(versions)
    }

    async fn approve_destination(
        &self,
        id: &str,
        approver: &str,
        at: OffsetDateTime,
        seal: &[u8],
        audit: &AuditRecord,
    ) -> Result<bool, StoreError> {
        let mut state = self.lock()?;
        let approvable = state.destinations.get(id).is_some_and(|v| {
            v.approved_at.is_none() && v.revoked_at.is_none() && v.proposed_by != approver
        });
        if !approvable {
            return Ok(false);
        }
        state.audit_allowed()?;
        state.append(&self.writer, &[audit])?;
        if let Some(version) = state.destinations.get_mut(id) {
            version.approved_by = Some(approver.to_owned());
            version.approved_at = Some(at);
            version.approval_seal = Some(seal.to_vec());
        }
        Ok(true)
    }

    async fn revoke_destination(
        &self,
        name: &str,
        by: &str,
        at: OffsetDateTime,
        audit: &AuditRecord,
    ) -> Result<u64, StoreError> {
        let mut state = self.lock()?;
        let revocable = |v: &StoredDestination| v.name == name && v.revoked_at.is_none();
        let n = state.destinations.values().filter(|v| revocable(v)).count();
        if n == 0 {
            return Ok(0);
        }
        state.audit_allowed()?;
        state.append(&self.writer, &[audit])?;
        for version in state.destinations.values_mut().filter(|v| revocable(v)) {
            version.revoked_by = Some(by.to_owned());
            version.revoked_at = Some(at);
        }
        Ok(count(n))
    }

    async fn approved_destination(
        &self,
        name: &str,
    ) -> Result<Option<StoredDestination>, StoreError> {
        let state = self.lock()?;
        Ok(state
            .destinations
            .values()
            .filter(|v| v.name == name && v.revoked_at.is_none())
            .filter_map(|v| v.approved_at.map(|at| (at, v)))
            .max_by(|(a_at, a), (b_at, b)| (a_at, &a.id).cmp(&(b_at, &b.id)))
            .map(|(_, v)| v.clone()))
    }

    async fn begin_forward(
        &self,
        forward: &ForwardInFlight,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        let mut state = self.lock()?;
        if state.forwards.contains_key(&forward.request_id) {
            return Err(taken("a forward with this request id is in flight"));
        }
        state.audit_allowed()?;
        state.append(&self.writer, &[audit])?;
        state
            .forwards
            .insert(forward.request_id.clone(), forward.clone());
        Ok(())
    }

    async fn finish_forward(
        &self,
        request_id: &str,
        audit: &AuditRecord,
    ) -> Result<bool, StoreError> {
        let mut state = self.lock()?;
        if !state.forwards.contains_key(request_id) {
            return Ok(false);
        }
        state.audit_allowed()?;
        state.append(&self.writer, &[audit])?;
        state.forwards.remove(request_id);
        Ok(true)
    }

    async fn forwards_in_flight(
        &self,
        deadline_before: OffsetDateTime,
    ) -> Result<Vec<ForwardInFlight>, StoreError> {
        let state = self.lock()?;
        let mut due: Vec<ForwardInFlight> = state
            .forwards
            .values()
            .filter(|f| f.deadline_at < deadline_before)
            .cloned()
            .collect();
        due.sort_by(|a, b| (a.deadline_at, &a.request_id).cmp(&(b.deadline_at, &b.request_id)));
        Ok(due)
    }
}
