//! Pruning the trail (`audit.prune`): only what an export of this trail holds, older than the
//! online window, in one transaction with its record and the checkpoints that anchor the rest.

use vault_audit::{Checkpoint, CheckpointKind, HASH_LEN};

use crate::audit::AuditRecord;
use crate::audited::Done;
use crate::clock::{now, stamp};
use crate::error::{InvalidArgument, VaultError};
use crate::ids::CallContext;
use crate::policy::Operation;
use crate::ports::{ChainHead, PruneCounts, PrunePlan};

use super::read::time_field;
use super::{AuditTrail, MAX_CHECKPOINT_ATTEMPTS};

/// A prune request as the transport received it: the cutoff, and the export that holds what
/// goes. Its `Debug` does not show `before` as sent (a careless caller could type anything).
#[derive(Clone, Default)]
pub struct PruneCommand {
    /// RFC 3339: records older than this may go.
    pub before: String,
    /// The export's first checkpoint (`cp_seq`).
    pub export_first: u64,
    /// The export's last checkpoint.
    pub export_last: u64,
    /// The hash of the export's last checkpoint.
    pub export_last_hash: Vec<u8>,
}

impl std::fmt::Debug for PruneCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PruneCommand")
            .field("before", &"..")
            .field("export_first", &self.export_first)
            .field("export_last", &self.export_last)
            .finish_non_exhaustive()
    }
}

/// What a prune did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// The last checkpoint removed; `None` if nothing was old enough and exported.
    pub through: Option<u64>,
    /// What went.
    pub removed: PruneCounts,
    /// Writers that lost records.
    pub writers: u64,
    /// Prune checkpoints written at the cuts.
    pub checkpoints_written: u64,
}

impl AuditTrail {
    /// Removes records older than `before` that the named export holds, and the checkpoints
    /// before them (see [`PrunePlan`]), in one transaction with its own audit record. Each
    /// writer that keeps records gets a prune checkpoint at its cut, so that the remainder
    /// verifies on its own and together with the export. Nothing inside the online window
    /// ever goes.
    ///
    /// # Errors
    /// [`VaultError::InvalidArgument`] for a `before` inside the online window or a malformed
    /// proof; [`VaultError::FailedPrecondition`] if the export is not this trail's or does not
    /// reach back to the oldest checkpoint online; any other [`VaultError`]. The call is
    /// audited either way.
    pub async fn prune_audit(
        &self,
        ctx: &CallContext,
        command: PruneCommand,
    ) -> Result<Pruned, VaultError> {
        let mut audit = AuditRecord::begin(ctx, Operation::AuditPrune).with_detail("audit.prune");
        let result = self.prune_audited(&mut audit, &command).await;
        self.calls.conclude(audit, result).await
    }

    async fn prune_audited(
        &self,
        audit: &mut AuditRecord,
        command: &PruneCommand,
    ) -> Result<Done<Pruned>, VaultError> {
        self.calls
            .authorize_everywhere(audit, Operation::AuditPrune)?;
        let before = time_field("before", Some(&command.before))?.ok_or(InvalidArgument {
            field: "before",
            problem: "is required",
        })?;
        let online = time::Duration::days(i64::from(self.state.retention.online_days));
        if now()
            .checked_sub(online)
            .is_none_or(|newest| before > newest)
        {
            return Err(InvalidArgument {
                field: "before",
                problem: "is inside the online window ([audit] online_days)",
            }
            .into());
        }
        let last_hash: [u8; HASH_LEN] =
            command
                .export_last_hash
                .as_slice()
                .try_into()
                .map_err(|_| InvalidArgument {
                    field: "export_last_hash",
                    problem: "must be 32 bytes",
                })?;
        if command.export_first == 0 || command.export_first > command.export_last {
            return Err(InvalidArgument {
                field: "export_first_checkpoint",
                problem: "must be from 1 to the export's last checkpoint",
            }
            .into());
        }
        audit.detail = Some(
            format!(
                "audit.prune before {} with export #{}..#{}",
                stamp(before),
                command.export_first,
                command.export_last
            )
            .into(),
        );
        for _ in 0..MAX_CHECKPOINT_ATTEMPTS {
            let Some(oldest) = self.store.checkpoints(1, u64::MAX, 1).await?.pop() else {
                return Ok(Done::pending(Pruned::default()));
            };
            if command.export_first > oldest.cp_seq {
                return Err(VaultError::FailedPrecondition(
                    "the export does not reach back to the oldest checkpoint online: export \
                     without --from and prune with that file",
                ));
            }
            let exported = self
                .store
                .checkpoints(command.export_last, command.export_last, 1)
                .await?;
            match exported.first() {
                None => {
                    return Err(VaultError::FailedPrecondition(
                        "the export's last checkpoint is not online: pruned already, or the \
                         export is another vault's",
                    ));
                }
                Some(stored) if stored.hash != last_hash => {
                    return Err(VaultError::FailedPrecondition(
                        "the export's last checkpoint is not this vault's: it is not an export \
                         of this trail",
                    ));
                }
                Some(_) => {}
            }
            let Some(plan) = self.store.plan_prune(command.export_last, before).await? else {
                return Ok(Done::pending(Pruned::default()));
            };
            let checkpoints = self.prune_checkpoints(&plan).await?;
            if let Some(removed) = self.store.prune_audit(&plan, &checkpoints, audit).await? {
                return Ok(Done::audited(Pruned {
                    through: Some(plan.through),
                    removed,
                    writers: plan.writers.len() as u64,
                    checkpoints_written: checkpoints.len() as u64,
                }));
            }
        }
        Err(VaultError::StoreUnavailable(
            crate::error::StoreError::unavailable(
                "the prune kept losing its compare-and-set on checkpoints",
            ),
        ))
    }

    /// A prune checkpoint at each cut that no kept checkpoint signs, chained on the tip. A
    /// writer that stopped and loses everything needs none.
    async fn prune_checkpoints(&self, plan: &PrunePlan) -> Result<Vec<Checkpoint>, VaultError> {
        let signer = self.signer()?;
        let mut tip = self.store.checkpoint_tip().await?;
        let mut signed = Vec::new();
        for cut in &plan.writers {
            if cut.finished || cut.kept_low == Some(cut.cut) {
                continue;
            }
            let head = ChainHead {
                writer: cut.writer.clone(),
                seq: cut.cut,
                hash: cut.cut_hash,
            };
            let checkpoint = signer.sign(CheckpointKind::Prune, &head, tip);
            tip = Some((checkpoint.cp_seq, checkpoint.hash));
            signed.push(checkpoint);
        }
        Ok(signed)
    }
}
