//! Reading the trail: filtered reads (`audit.read`) and exports an auditor verifies, each
//! audited before anything is released.

use std::sync::Arc;

use time::OffsetDateTime;
use vault_audit::{CheckpointKind, EXPORT_FORMAT, Entry, ExportHeader, Line, PublicKey};

use crate::audit::{AuditRecord, Event, Outcome};
use crate::audited::Done;
use crate::clock::{now, stamp};
use crate::error::{InvalidArgument, VaultError};
use crate::ids::{CallContext, CallerId, MerchantId};
use crate::pan::contains_card_number;
use crate::policy::Operation;
use crate::ports::{AuditCursor, AuditQuery, ExportPlan, TokenStore};

use super::{AuditTrail, PAGE};

/// An audit read's filters as the transport received them, not yet validated. Its `Debug`
/// shows only which filters are set: a careless caller might put a PAN in one.
#[derive(Clone, Default)]
pub struct AuditReadCommand {
    /// Records at or after this time (RFC 3339), if given.
    pub from: Option<String>,
    /// Records before this time (RFC 3339), if given.
    pub to: Option<String>,
    /// Only this merchant's, if given.
    pub merchant_id: Option<String>,
    /// Only this caller's, if given.
    pub caller: Option<String>,
    /// Only this event, if given.
    pub event: Option<String>,
    /// Only this outcome, if given.
    pub outcome: Option<String>,
}

impl std::fmt::Debug for AuditReadCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |field: &Option<String>| field.is_some();
        f.debug_struct("AuditReadCommand")
            .field("from", &set(&self.from))
            .field("to", &set(&self.to))
            .field("merchant_id", &set(&self.merchant_id))
            .field("caller", &set(&self.caller))
            .field("event", &set(&self.event))
            .field("outcome", &set(&self.outcome))
            .finish()
    }
}

pub(super) fn time_field(
    field: &'static str,
    text: Option<&str>,
) -> Result<Option<OffsetDateTime>, InvalidArgument> {
    let Some(text) = text.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    vault_audit::parse_time(text)
        .and_then(crate::clock::from_micros)
        .map(Some)
        .ok_or(InvalidArgument {
            field,
            problem: "must be an RFC 3339 time",
        })
}

/// `from` and `to` as times, `to` not before `from`.
fn time_range(
    from: Option<&str>,
    to: Option<&str>,
) -> Result<(Option<OffsetDateTime>, Option<OffsetDateTime>), InvalidArgument> {
    let (from, to) = (time_field("from", from)?, time_field("to", to)?);
    if let (Some(f), Some(t)) = (from, to)
        && f > t
    {
        return Err(InvalidArgument {
            field: "to",
            problem: "must not be before from",
        });
    }
    Ok((from, to))
}

/// `text`, if given, checked to be a name `known` knows.
fn one_of<T>(
    field: &'static str,
    text: Option<&str>,
    known: impl Fn(&str) -> Option<T>,
) -> Result<Option<String>, InvalidArgument> {
    match text.filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) if known(t).is_some() => Ok(Some(t.to_owned())),
        Some(_) => Err(InvalidArgument {
            field,
            problem: "is not a known value",
        }),
    }
}

impl AuditReadCommand {
    fn parse(&self, merchant: Option<MerchantId>) -> Result<AuditQuery, InvalidArgument> {
        let caller = match self.caller.as_deref().filter(|c| !c.is_empty()) {
            None => None,
            Some(c) if c.len() > 1024 || contains_card_number(c) => {
                return Err(InvalidArgument {
                    field: "caller",
                    problem: "is not a caller identity",
                });
            }
            Some(c) => Some(CallerId::new(c)),
        };
        let (from, to) = time_range(self.from.as_deref(), self.to.as_deref())?;
        let query = AuditQuery {
            from,
            to,
            merchant,
            caller,
            event: one_of("event", self.event.as_deref(), Event::from_name)?,
            outcome: one_of("outcome", self.outcome.as_deref(), Outcome::from_name)?,
        };
        Ok(query)
    }
}

/// A filtered read of the trail, page by page (the read itself is already audited).
pub struct AuditReader {
    store: Arc<dyn TokenStore>,
    query: AuditQuery,
    cursor: Option<AuditCursor>,
    done: bool,
}

impl AuditReader {
    /// The next page of records, `None` at the end.
    ///
    /// # Errors
    /// [`VaultError::StoreUnavailable`].
    pub async fn next_page(&mut self) -> Result<Option<Vec<Entry>>, VaultError> {
        if self.done {
            return Ok(None);
        }
        let page = self
            .store
            .find_audit(&self.query, self.cursor.as_ref(), PAGE)
            .await?;
        if page.len() < PAGE as usize {
            self.done = true;
        }
        let Some(last) = page.last() else {
            return Ok(None);
        };
        self.cursor = Some(AuditCursor {
            at_micros: vault_audit::parse_time(&last.at).unwrap_or(i64::MAX),
            writer: last.writer.clone(),
            seq: last.seq,
        });
        Ok(Some(page))
    }
}

/// An export in progress: the header, then the checkpoints, then each writer's records.
pub struct AuditExport {
    store: Arc<dyn TokenStore>,
    header: ExportHeader,
    plan: ExportPlan,
    next_checkpoint: u64,
    writer: usize,
    after: u64,
}

impl AuditExport {
    /// What the export holds.
    #[must_use]
    pub fn header(&self) -> &ExportHeader {
        &self.header
    }

    /// The next lines (checkpoints, then records), `None` at the end.
    ///
    /// # Errors
    /// [`VaultError::StoreUnavailable`].
    pub async fn next_page(&mut self) -> Result<Option<Vec<Line>>, VaultError> {
        if let Some((_, last)) = self.plan.checkpoints
            && self.next_checkpoint <= last
        {
            let page = self
                .store
                .checkpoints(self.next_checkpoint, last, PAGE)
                .await?;
            let Some(end) = page.last() else {
                // A gap in the stored chain: stop here; the verifier will say so.
                self.next_checkpoint = last + 1;
                return Ok(Some(Vec::new()));
            };
            self.next_checkpoint = end.cp_seq + 1;
            return Ok(Some(page.into_iter().map(Line::Checkpoint).collect()));
        }
        while let Some((writer, _, high)) = self.plan.writers.get(self.writer) {
            let page = self
                .store
                .writer_records(writer, self.after, *high, PAGE)
                .await?;
            match page.last() {
                Some(last) if last.seq < *high => self.after = last.seq,
                _ => {
                    self.writer += 1;
                    self.after = self.plan.writers.get(self.writer).map_or(0, |w| w.1);
                }
            }
            if !page.is_empty() {
                return Ok(Some(page.into_iter().map(Line::Record).collect()));
            }
        }
        Ok(None)
    }
}

impl AuditTrail {
    /// Starts a filtered read of the trail. The read is audited (and durable) before the first
    /// record is returned.
    ///
    /// # Errors
    /// Any [`VaultError`]; the call is audited either way.
    pub async fn read_audit(
        &self,
        ctx: &CallContext,
        command: AuditReadCommand,
    ) -> Result<AuditReader, VaultError> {
        let mut audit = AuditRecord::begin(ctx, Operation::AuditRead).with_detail("audit.read");
        let result = async {
            // The merchant first (it decides which grant applies), then the rest; the quota
            // before anything, so that refused reads cost no more than one check each.
            let merchant = match command.merchant_id.as_deref().filter(|m| !m.is_empty()) {
                Some(id) => {
                    self.calls.throttle(&audit, Operation::AuditRead, None, 1)?;
                    Some(
                        self.calls
                            .authorized_merchant(&mut audit, Operation::AuditRead, id)
                            .await?,
                    )
                }
                None => {
                    self.calls
                        .authorize_everywhere(&audit, Operation::AuditRead)?;
                    None
                }
            };
            let query = command.parse(merchant)?;
            Ok(Done::pending(AuditReader {
                store: self.store.clone(),
                query,
                cursor: None,
                done: false,
            }))
        }
        .await;
        self.calls.conclude(audit, result).await
    }

    /// Starts an export of `[from, to)`, widened to checkpoints so that it verifies on its own:
    /// every writer's unsigned head is signed first, and the export is audited (and durable,
    /// and inside the export) before its first line is returned.
    ///
    /// # Errors
    /// Any [`VaultError`]; the call is audited either way.
    pub async fn export_audit(
        &self,
        ctx: &CallContext,
        from: Option<String>,
        to: Option<String>,
    ) -> Result<AuditExport, VaultError> {
        let audit = AuditRecord::begin(ctx, Operation::AuditRead).with_detail("audit.export");
        let result = async {
            self.calls
                .authorize_everywhere(&audit, Operation::AuditRead)?;
            Ok(Done::pending(time_range(from.as_deref(), to.as_deref())?))
        }
        .await;
        let (from_at, to_at) = self.calls.conclude(audit, result).await?;
        // Sign every head no checkpoint covers yet (this export's own record included).
        for head in self.store.unsealed_heads().await? {
            self.sign_head(CheckpointKind::Export, &head).await?;
        }
        let plan = self.store.plan_export(from_at, to_at).await?;
        let checkpoints = plan.checkpoints.map_or(0, |(a, b)| b + 1 - a);
        let records = plan.writers.iter().map(|(_, low, high)| high - low).sum();
        let exported_at = now();
        Ok(AuditExport {
            store: self.store.clone(),
            header: ExportHeader {
                format: EXPORT_FORMAT.to_owned(),
                from: from_at.map(stamp),
                to: to_at.map(stamp),
                exported_at: stamp(exported_at),
                checkpoints,
                records,
                keep_until: exported_at
                    .checked_add(time::Duration::days(i64::from(
                        self.state.retention.retain_days,
                    )))
                    .map(stamp),
            },
            next_checkpoint: plan.checkpoints.map_or(1, |c| c.0),
            after: plan.writers.first().map_or(0, |w| w.1),
            writer: 0,
            plan,
        })
    }

    /// The public key checkpoints verify under, for an auditor with `audit.read`; audited.
    ///
    /// # Errors
    /// Any [`VaultError`]; the call is audited either way.
    pub async fn audit_public_keys(&self, ctx: &CallContext) -> Result<Vec<PublicKey>, VaultError> {
        let audit = AuditRecord::begin(ctx, Operation::AuditRead).with_detail("audit.public_key");
        let result = async {
            self.calls
                .authorize_everywhere(&audit, Operation::AuditRead)?;
            let key = self
                .audit_public_key()
                .ok_or(VaultError::FailedPrecondition(
                    "the audit trail has not started",
                ))?;
            Ok(Done::pending(vec![key]))
        }
        .await;
        self.calls.conclude(audit, result).await
    }
}
