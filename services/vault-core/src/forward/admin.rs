//! Destinations under dual control. An admin (`destinations.admin`, vault-wide) proposes a
//! destination spec; a second, different admin approves that exact version (named by its id,
//! showing its fingerprint); either, or any admin, may revoke every version of a name at once.
//! Nothing else adds or changes a destination: a change is a new proposal, and approving it
//! puts it in force in place of the version before. Each step is one audit record, written in
//! the same transaction as the change.
//!
//! The vault signs each approval with the audit signing key ([`approval_message`]), and a
//! forward uses a version only if that signature holds: a row written or altered in the
//! database by anyone but the vault (an approved destination pointing elsewhere) puts nothing
//! in force. Revocations are not signed: deleting rows or clearing a revocation can still
//! bring back a version the vault once approved.

use std::sync::Arc;

use time::OffsetDateTime;

use crate::audit::AuditRecord;
use crate::audited::{Audited, Done};
use crate::clock::{micros, now};
use crate::error::VaultError;
use crate::forward::ports::Egress;
use crate::forward::spec::{DestinationSpec, is_name};
use crate::ids::CallContext;
use crate::invalid::InvalidArgument;
use crate::policy::Operation;
use crate::ports::StoredDestination;
use crate::ports::TokenStore;
use crate::reason::Reason;
use crate::trail::AuditTrail;

/// A proposal no second admin approved within this long must be made again.
pub const PROPOSAL_TTL: time::Duration = time::Duration::days(7);

/// Where a version of a destination stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionState {
    /// Proposed, awaiting a second admin.
    Proposed,
    /// Proposed longer than [`PROPOSAL_TTL`] ago and never approved.
    Expired,
    /// Approved, and the version forwards use.
    InForce,
    /// Approved, then replaced by a version approved later.
    Superseded,
    /// Revoked.
    Revoked,
}

impl VersionState {
    /// The state's name, as `vaultctl` prints it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Proposed => "proposed",
            Self::Expired => "expired",
            Self::InForce => "in_force",
            Self::Superseded => "superseded",
            Self::Revoked => "revoked",
        }
    }
}

/// One version of a destination and where it stands.
#[derive(Debug, Clone)]
pub struct DestinationVersion {
    /// The version as stored.
    pub stored: StoredDestination,
    /// Where it stands.
    pub state: VersionState,
}

/// The destination administration use cases.
#[derive(Clone)]
pub(crate) struct DestinationAdmin {
    calls: Audited,
    store: Arc<dyn TokenStore>,
    egress: Arc<dyn Egress>,
    trail: AuditTrail,
}

/// What the audit signing key signs when `approver` approves `version` at `at`: every field
/// that decides what a forward may send where (the spec through its fingerprint), who, and
/// when (which approved version of a name is in force: the one approved last).
pub(crate) fn approval_message(
    version: &StoredDestination,
    approver: &str,
    at: OffsetDateTime,
) -> Vec<u8> {
    vault_crypto::associated_data(
        "vault.destination.approval.v1",
        &[
            version.id.as_bytes(),
            version.name.as_bytes(),
            version.fingerprint.as_bytes(),
            version.proposed_by.as_bytes(),
            approver.as_bytes(),
            &micros(at).to_be_bytes(),
        ],
    )
}

fn detail(action: &str, version: &StoredDestination) -> String {
    format!(
        "{action} destination={} id={} fingerprint={}",
        version.name, version.id, version.fingerprint
    )
}

impl DestinationAdmin {
    pub(crate) fn new(
        calls: Audited,
        store: Arc<dyn TokenStore>,
        egress: Arc<dyn Egress>,
        trail: AuditTrail,
    ) -> Self {
        Self {
            calls,
            store,
            egress,
            trail,
        }
    }

    /// Counts and authorizes an admin call; records its action and reason.
    fn authorize(
        &self,
        audit: &mut AuditRecord,
        action: &'static str,
        reason: Option<&str>,
    ) -> Result<(), VaultError> {
        audit.detail = Some(action.into());
        if let Some(reason) = reason {
            audit.reason = Reason::parse("reason", reason).ok();
        }
        self.calls
            .authorize_everywhere(audit, Operation::DestinationsAdmin)?;
        if let Some(reason) = reason {
            Reason::parse("reason", reason)?;
        }
        Ok(())
    }

    /// Proposes a destination (its spec as JSON). Returns the stored version: its id (for the
    /// approval) and fingerprint.
    ///
    /// # Errors
    /// [`VaultError::InvalidArgument`] naming the spec's field; any other [`VaultError`].
    /// Audited either way.
    pub(crate) async fn propose(
        &self,
        ctx: &CallContext,
        spec_json: &str,
        reason: &str,
    ) -> Result<StoredDestination, VaultError> {
        let mut audit = AuditRecord::begin(ctx, Operation::DestinationsAdmin);
        let result = async {
            self.authorize(&mut audit, "destination.propose", Some(reason))?;
            let spec = DestinationSpec::from_json(spec_json)?;
            self.egress.check(&spec)?;
            let spec_json = spec.canonical_json();
            let version = StoredDestination {
                id: uuid::Uuid::new_v4().to_string(),
                name: spec.name.clone(),
                fingerprint: DestinationSpec::fingerprint_of(&spec_json),
                spec_json,
                proposed_by: ctx.caller.as_str().to_owned(),
                proposed_at: now(),
                approved_by: None,
                approved_at: None,
                approval_seal: None,
                revoked_by: None,
                revoked_at: None,
            };
            audit.detail = Some(detail("destination.propose", &version).into());
            self.store.propose_destination(&version, &audit).await?;
            Ok(Done::audited(version))
        }
        .await;
        self.calls.conclude(audit, result).await
    }

    /// Approves proposed version `id`, whose fingerprint must be `fingerprint` (what the
    /// approver reviewed), putting it in force for its name.
    ///
    /// # Errors
    /// [`VaultError::NotFound`] for an unknown id; [`VaultError::FailedPrecondition`] if the
    /// version is not a pending proposal, the approver proposed it, or its fingerprint is not
    /// `fingerprint`. Audited either way.
    pub(crate) async fn approve(
        &self,
        ctx: &CallContext,
        id: &str,
        fingerprint: &str,
        reason: &str,
    ) -> Result<StoredDestination, VaultError> {
        let mut audit = AuditRecord::begin(ctx, Operation::DestinationsAdmin);
        let result = async {
            self.authorize(&mut audit, "destination.approve", Some(reason))?;
            let id = uuid::Uuid::parse_str(id)
                .map_err(|_| InvalidArgument {
                    field: "id",
                    problem: "must be a proposal's id (a UUID)",
                })?
                .to_string();
            let mut version = self
                .store
                .destination_version(&id)
                .await?
                .ok_or(VaultError::NotFound)?;
            audit.detail = Some(detail("destination.approve", &version).into());
            if fingerprint.is_empty() {
                return Err(InvalidArgument {
                    field: "fingerprint",
                    problem: "must be the fingerprint of the version reviewed (sha256:...)",
                }
                .into());
            }
            if version.fingerprint != fingerprint {
                return Err(VaultError::FailedPrecondition(
                    "fingerprint: not this version's; the proposal is not what was reviewed, \
                     review it again (destination list NAME --spec)",
                ));
            }
            if version.proposed_by == ctx.caller.as_str() {
                return Err(VaultError::FailedPrecondition(
                    "dual control: a destination must be approved by a different admin than \
                     the one who proposed it",
                ));
            }
            if version.revoked_at.is_some() || version.approved_at.is_some() {
                return Err(VaultError::FailedPrecondition(
                    "this version is not awaiting approval (approved or revoked already)",
                ));
            }
            if now() - version.proposed_at >= PROPOSAL_TTL {
                return Err(VaultError::FailedPrecondition(
                    "the proposal expired (7 days); propose it again",
                ));
            }
            let at = now();
            let seal = self
                .trail
                .seal(&approval_message(&version, ctx.caller.as_str(), at))
                .await?;
            if !self
                .store
                .approve_destination(&id, ctx.caller.as_str(), at, &seal, &audit)
                .await?
            {
                return Err(VaultError::FailedPrecondition(
                    "this version is not awaiting approval (approved or revoked already)",
                ));
            }
            version.approved_by = Some(ctx.caller.as_str().to_owned());
            version.approved_at = Some(at);
            version.approval_seal = Some(seal);
            Ok(Done::audited(version))
        }
        .await;
        self.calls.conclude(audit, result).await
    }

    /// Revokes every version of destination `name`: forwards to it are refused from now on.
    /// Returns how many versions were revoked.
    ///
    /// # Errors
    /// [`VaultError::NotFound`] if no version of `name` is left to revoke. Audited either way.
    pub(crate) async fn revoke(
        &self,
        ctx: &CallContext,
        name: &str,
        reason: &str,
    ) -> Result<u64, VaultError> {
        let mut audit = AuditRecord::begin(ctx, Operation::DestinationsAdmin);
        let result = async {
            self.authorize(&mut audit, "destination.revoke", Some(reason))?;
            if !is_name(name) {
                return Err(InvalidArgument {
                    field: "name",
                    problem: "must be a destination's name: 1 to 64 characters from a-z 0-9 . _ -",
                }
                .into());
            }
            audit.detail = Some(format!("destination.revoke destination={name}").into());
            match self
                .store
                .revoke_destination(name, ctx.caller.as_str(), now(), &audit)
                .await?
            {
                0 => Err(VaultError::NotFound),
                revoked => Ok(Done::audited(revoked)),
            }
        }
        .await;
        self.calls.conclude(audit, result).await
    }

    /// Every version of every destination (of `name`, if given), oldest first, with its state.
    ///
    /// # Errors
    /// Any [`VaultError`]; audited either way.
    pub(crate) async fn list(
        &self,
        ctx: &CallContext,
        name: Option<&str>,
    ) -> Result<Vec<DestinationVersion>, VaultError> {
        let mut audit = AuditRecord::begin(ctx, Operation::DestinationsAdmin);
        let result = async {
            self.authorize(&mut audit, "destination.list", None)?;
            let versions = self.store.destination_versions(name).await?;
            Ok(Done::pending(states(versions)))
        }
        .await;
        self.calls.conclude(audit, result).await
    }
}

/// Each version's state: of a name's approved, unrevoked versions, the one approved last is in
/// force and the others are superseded.
fn states(versions: Vec<StoredDestination>) -> Vec<DestinationVersion> {
    let in_force: std::collections::BTreeMap<&str, &StoredDestination> = versions
        .iter()
        .filter(|v| v.approved_at.is_some() && v.revoked_at.is_none())
        .fold(std::collections::BTreeMap::new(), |mut latest, v| {
            let newer = latest
                .get(v.name.as_str())
                .is_none_or(|l: &&StoredDestination| {
                    (v.approved_at, &v.id) > (l.approved_at, &l.id)
                });
            if newer {
                latest.insert(v.name.as_str(), v);
            }
            latest
        });
    let in_force: std::collections::BTreeSet<String> =
        in_force.values().map(|v| v.id.clone()).collect();
    versions
        .into_iter()
        .map(|stored| {
            let state = if stored.revoked_at.is_some() {
                VersionState::Revoked
            } else if in_force.contains(&stored.id) {
                VersionState::InForce
            } else if stored.approved_at.is_some() {
                VersionState::Superseded
            } else if now() - stored.proposed_at >= PROPOSAL_TTL {
                VersionState::Expired
            } else {
                VersionState::Proposed
            };
            DestinationVersion { stored, state }
        })
        .collect()
}
