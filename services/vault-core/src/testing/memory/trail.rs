//! The audit trail ports of [`MemoryStore`]: writer chains, checkpoints, export and prune
//! plans.

use std::collections::{BTreeMap, HashSet};

use async_trait::async_trait;
use time::OffsetDateTime;
use vault_audit::{Checkpoint, CheckpointKind, Entry, GENESIS, HASH_LEN};

use crate::audit::AuditRecord;
use crate::clock::{micros, now};
use crate::error::StoreError;
use crate::ids::MerchantId;
use crate::ports::{
    AuditCursor, AuditQuery, AuditStore, ChainHead, ExportPlan, PruneCounts, PruneCut, PrunePlan,
    WrappedKey,
};

use super::{MemoryStore, State, count};

impl State {
    /// `writer`'s head: its newest record, or the newest head a checkpoint signs for it.
    pub(super) fn read_head(&self, writer: &str) -> (u64, [u8; HASH_LEN]) {
        let record = self
            .records
            .range((writer.to_owned(), 0)..=(writer.to_owned(), u64::MAX))
            .next_back()
            .map(|((_, seq), (_, entry))| (*seq, entry.hash));
        let signed = self
            .checkpoints
            .values()
            .filter(|(_, cp)| cp.writer == writer)
            .max_by_key(|(_, cp)| (cp.seq, cp.cp_seq))
            .map(|(_, cp)| (cp.seq, cp.head_hash));
        [record, signed]
            .into_iter()
            .flatten()
            .fold((0, GENESIS), |best, candidate| {
                if candidate.0 > best.0 {
                    candidate
                } else {
                    best
                }
            })
    }

    /// Appends `audits` to `writer`'s chain (the caller checked [`State::audit_allowed`]).
    pub(super) fn append(
        &mut self,
        writer: &str,
        audits: &[&AuditRecord],
    ) -> Result<(), StoreError> {
        let mut head = match self.head {
            Some(head) => head,
            None => {
                self.writers.insert(writer.to_owned());
                self.read_head(writer)
            }
        };
        let mut entries = Vec::with_capacity(audits.len());
        for audit in audits {
            let entry = audit
                .chained(writer, head.0 + 1, head.1)
                .ok_or_else(|| StoreError::Corrupt("audit time out of range".to_owned()))?;
            head = (entry.seq, entry.hash);
            entries.push((micros(audit.time), entry));
        }
        for (at, entry) in entries {
            self.records
                .insert((writer.to_owned(), entry.seq), (at, entry));
        }
        self.head = Some(head);
        Ok(())
    }

    /// What a prune through `exported` with cutoff `before` would remove (see [`PrunePlan`]).
    fn plan_prune(&self, exported: u64, before: OffsetDateTime) -> Option<PrunePlan> {
        let cutoff = micros(before);
        let young = self
            .checkpoints
            .values()
            .filter(|(at, _)| *at >= cutoff)
            .map(|(_, cp)| cp.cp_seq)
            .min();
        let through = young.map_or(exported, |young| exported.min(young.saturating_sub(1)));
        let mut signed: BTreeMap<&str, u64> = BTreeMap::new();
        for (_, cp) in self.checkpoints.range(..=through).map(|(_, v)| v) {
            let seq = signed.entry(cp.writer.as_str()).or_insert(cp.seq);
            *seq = (*seq).max(cp.seq);
        }
        if signed.is_empty() {
            return None;
        }
        let writers = signed
            .into_iter()
            .map(|(writer, signed)| self.prune_cut(writer, signed, through))
            .collect::<Option<Vec<_>>>()?;
        Some(PrunePlan {
            exported,
            before,
            through,
            writers,
        })
    }

    fn prune_cut(&self, writer: &str, signed: u64, through: u64) -> Option<PruneCut> {
        let of_writer = || {
            self.checkpoints
                .values()
                .map(|(_, cp)| cp)
                .filter(move |cp| cp.writer == writer)
        };
        let kept_low = of_writer()
            .filter(|cp| cp.cp_seq > through)
            .map(|cp| cp.seq)
            .min();
        let cut = kept_low.map_or(signed, |low| low.min(signed));
        let cut_hash = of_writer()
            .filter(|cp| cp.seq == cut)
            .max_by_key(|cp| cp.cp_seq)?
            .head_hash;
        let newest = of_writer().max_by_key(|cp| cp.cp_seq);
        let record_head = self
            .records
            .range((writer.to_owned(), 0)..=(writer.to_owned(), u64::MAX))
            .next_back()
            .map_or(0, |((_, seq), _)| *seq);
        let stopped =
            newest.is_some_and(|cp| cp.kind == CheckpointKind::Stop.as_str() && cp.seq == cut);
        Some(PruneCut {
            writer: writer.to_owned(),
            cut,
            cut_hash,
            kept_low,
            finished: stopped && kept_low.is_none() && record_head <= cut,
        })
    }
}

#[async_trait]
impl AuditStore for MemoryStore {
    fn audit_writer(&self) -> &str {
        &self.writer
    }

    async fn audit_head(&self) -> Result<ChainHead, StoreError> {
        let mut state = self.lock()?;
        let (seq, hash) = match state.head {
            Some(head) => head,
            None => {
                state.writers.insert(self.writer.clone());
                let head = state.read_head(&self.writer);
                state.head = Some(head);
                head
            }
        };
        Ok(ChainHead {
            writer: self.writer.clone(),
            seq,
            hash,
        })
    }

    async fn unsealed_heads(&self) -> Result<Vec<ChainHead>, StoreError> {
        let state = self.lock()?;
        let mut heads = Vec::new();
        for writer in &state.writers {
            let Some(((_, seq), (_, entry))) = state
                .records
                .range((writer.clone(), 0)..=(writer.clone(), u64::MAX))
                .next_back()
            else {
                continue;
            };
            let signed = state
                .checkpoints
                .values()
                .filter(|(_, cp)| cp.writer == *writer)
                .max_by_key(|(_, cp)| (cp.seq, cp.cp_seq))
                .map(|(_, cp)| cp.seq);
            if signed.is_none_or(|signed| signed < *seq) {
                heads.push(ChainHead {
                    writer: writer.clone(),
                    seq: *seq,
                    hash: entry.hash,
                });
            }
        }
        Ok(heads)
    }

    async fn checkpoint_tip(&self) -> Result<Option<(u64, [u8; HASH_LEN])>, StoreError> {
        let state = self.lock()?;
        Ok(state
            .checkpoints
            .values()
            .next_back()
            .map(|(_, cp)| (cp.cp_seq, cp.hash)))
    }

    async fn audit_signing_key(&self) -> Result<Option<WrappedKey>, StoreError> {
        let state = self.lock()?;
        let owner = MerchantId::vault_owner().as_str().to_owned();
        Ok(state
            .keys
            .range((owner.clone(), "audit_signing", 0)..=(owner, "audit_signing", u32::MAX))
            .next_back()
            .map(|(_, row)| row.key.clone()))
    }

    async fn add_audit_signing_key(&self, key: &WrappedKey) -> Result<bool, StoreError> {
        Ok(self.lock()?.insert_key(key, now()))
    }

    async fn insert_checkpoint(&self, checkpoint: &Checkpoint) -> Result<bool, StoreError> {
        let mut state = self.lock()?;
        let at = vault_audit::parse_time(&checkpoint.at)
            .ok_or_else(|| StoreError::Corrupt("checkpoint time".to_owned()))?;
        if state.checkpoints.contains_key(&checkpoint.cp_seq) {
            return Ok(false);
        }
        state
            .checkpoints
            .insert(checkpoint.cp_seq, (at, checkpoint.clone()));
        Ok(true)
    }

    async fn checkpoints(
        &self,
        from: u64,
        to: u64,
        limit: u32,
    ) -> Result<Vec<Checkpoint>, StoreError> {
        let state = self.lock()?;
        if from > to {
            return Ok(Vec::new());
        }
        Ok(state
            .checkpoints
            .range(from..=to)
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|(_, (_, cp))| cp.clone())
            .collect())
    }

    async fn plan_export(
        &self,
        from: Option<OffsetDateTime>,
        to: Option<OffsetDateTime>,
    ) -> Result<ExportPlan, StoreError> {
        let state = self.lock()?;
        let Some(tip) = state.checkpoints.keys().next_back().copied() else {
            return Ok(ExportPlan::default());
        };
        // Per writer, the newest (`max`) or oldest checkpoint among those `keep` admits.
        let per_writer = |keep: &dyn Fn(i64, u64) -> bool, max: bool| {
            let mut out: BTreeMap<&str, u64> = BTreeMap::new();
            for (at, cp) in state.checkpoints.values() {
                if keep(*at, cp.cp_seq) {
                    let seen = out.entry(cp.writer.as_str()).or_insert(cp.cp_seq);
                    *seen = if max {
                        (*seen).max(cp.cp_seq)
                    } else {
                        (*seen).min(cp.cp_seq)
                    };
                }
            }
            out
        };
        let first = match from {
            None => state.checkpoints.keys().next().copied().unwrap_or(1),
            Some(from) => {
                let from = micros(from);
                let before = per_writer(&|at, _| at <= from, true);
                let after = per_writer(&|at, _| at > from, false);
                ExportPlan::first_checkpoint(&before, &after, tip)
            }
        };
        let last = match to {
            None => tip,
            Some(to) => {
                let to = micros(to);
                let newest = per_writer(&|_, cp_seq| cp_seq >= first, true);
                let after = per_writer(&|at, _| at > to.saturating_sub(1), false);
                ExportPlan::last_checkpoint(&newest, &after, first)
            }
        };
        let mut ranges: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        if first <= last {
            for (_, cp) in state.checkpoints.range(first..=last).map(|(_, v)| v) {
                let range = ranges.entry(cp.writer.as_str()).or_insert((cp.seq, cp.seq));
                range.0 = range.0.min(cp.seq);
                range.1 = range.1.max(cp.seq);
            }
        }
        Ok(ExportPlan {
            checkpoints: Some((first, last)),
            writers: ranges
                .into_iter()
                .map(|(writer, (low, high))| (writer.to_owned(), low, high))
                .collect(),
        })
    }

    async fn writer_records(
        &self,
        writer: &str,
        after: u64,
        to: u64,
        limit: u32,
    ) -> Result<Vec<Entry>, StoreError> {
        let state = self.lock()?;
        if after >= to {
            return Ok(Vec::new());
        }
        Ok(state
            .records
            .range((writer.to_owned(), after.saturating_add(1))..=(writer.to_owned(), to))
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|(_, (_, entry))| entry.clone())
            .collect())
    }

    async fn find_audit(
        &self,
        query: &AuditQuery,
        cursor: Option<&AuditCursor>,
        limit: u32,
    ) -> Result<Vec<Entry>, StoreError> {
        let state = self.lock()?;
        let start = cursor.map_or((i64::MIN, String::new(), 0), |c| {
            (c.at_micros, c.writer.clone(), c.seq)
        });
        let (from, to) = (query.from.map(micros), query.to.map(micros));
        let mut found: Vec<(i64, &Entry)> = state
            .records
            .values()
            .filter(|(at, e)| {
                from.is_none_or(|from| *at >= from)
                    && to.is_none_or(|to| *at < to)
                    && query
                        .merchant
                        .as_ref()
                        .is_none_or(|m| e.merchant_id.as_deref() == Some(m.as_str()))
                    && query.caller.as_ref().is_none_or(|c| e.caller == c.as_str())
                    && query.event.as_ref().is_none_or(|ev| e.event == *ev)
                    && query.outcome.as_ref().is_none_or(|o| e.outcome == *o)
                    && (*at, e.writer.clone(), e.seq) > start
            })
            .map(|(at, e)| (*at, e))
            .collect();
        found.sort_by(|a, b| (a.0, &a.1.writer, a.1.seq).cmp(&(b.0, &b.1.writer, b.1.seq)));
        Ok(found
            .into_iter()
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|(_, e)| e.clone())
            .collect())
    }

    async fn plan_prune(
        &self,
        exported: u64,
        before: OffsetDateTime,
    ) -> Result<Option<PrunePlan>, StoreError> {
        Ok(self.lock()?.plan_prune(exported, before))
    }

    async fn prune_audit(
        &self,
        plan: &PrunePlan,
        checkpoints: &[Checkpoint],
        audit: &AuditRecord,
    ) -> Result<Option<PruneCounts>, StoreError> {
        let mut state = self.lock()?;
        if state.plan_prune(plan.exported, plan.before).as_ref() != Some(plan) {
            return Ok(None);
        }
        let mut taken = HashSet::new();
        for checkpoint in checkpoints {
            if state.checkpoints.contains_key(&checkpoint.cp_seq)
                || !taken.insert(checkpoint.cp_seq)
            {
                return Ok(None);
            }
        }
        let mut stamped = Vec::with_capacity(checkpoints.len());
        for checkpoint in checkpoints {
            let at = vault_audit::parse_time(&checkpoint.at)
                .ok_or_else(|| StoreError::Corrupt("checkpoint time".to_owned()))?;
            stamped.push((at, checkpoint.clone()));
        }
        state.audit_allowed()?;
        let mut removed = PruneCounts::default();
        for cut in &plan.writers {
            let before = state.records.len();
            state
                .records
                .retain(|(writer, seq), _| *writer != cut.writer || *seq > cut.cut);
            removed.records += count(before - state.records.len());
            if cut.finished && state.writers.remove(&cut.writer) {
                removed.writers_closed += 1;
            }
        }
        for (at, checkpoint) in stamped {
            state
                .checkpoints
                .insert(checkpoint.cp_seq, (at, checkpoint));
        }
        let before = state.checkpoints.len();
        state.checkpoints.retain(|cp_seq, _| *cp_seq > plan.through);
        removed.checkpoints = count(before - state.checkpoints.len());
        state.append(&self.writer, &[audit])?;
        Ok(Some(removed))
    }
}
