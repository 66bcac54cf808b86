//! Checking acknowledged tokens: detokenize each one and compare the PAN with the one that was
//! tokenized. Used after a run (`--check`, from memory) and after a crash and restart
//! (`check --record FILE`).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinSet;
use tonic::Code;
use vault_proto::v1::DetokenizeRequest;

use crate::Error;
use crate::client::{self, Clients};
use crate::options::{CHECK_REASON, CheckOptions};
use crate::progress::{Live, Progress};
use crate::record::Record;

/// What a check found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// Distinct records checked.
    pub checked: u64,
    /// Records whose token gave back their PAN.
    pub ok: u64,
    /// Records whose token the vault does not know (`NOT_FOUND`).
    pub missing: u64,
    /// Records whose token gave back another PAN.
    pub wrong: u64,
    /// Records whose Detokenize failed otherwise, by canonical gRPC code name.
    pub failed: BTreeMap<String, u64>,
}

impl CheckReport {
    /// Whether every record checked out.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.ok == self.checked
    }

    /// Records whose Detokenize failed with a status other than `NOT_FOUND`.
    #[must_use]
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    fn merge(&mut self, other: &Self) {
        self.checked += other.checked;
        self.ok += other.ok;
        self.missing += other.missing;
        self.wrong += other.wrong;
        for (code, n) in &other.failed {
            *self.failed.entry(code.clone()).or_default() += n;
        }
    }
}

impl fmt::Display for CheckReport {
    /// `N checked, N ok, N missing, N wrong, N failed (CODE n, ...): passed|FAILED`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} checked, {} ok, {} missing, {} wrong, {} failed",
            self.checked,
            self.ok,
            self.missing,
            self.wrong,
            self.failed_total()
        )?;
        if !self.failed.is_empty() {
            let codes: Vec<String> = self
                .failed
                .iter()
                .map(|(code, n)| format!("{code} {n}"))
                .collect();
            write!(f, " ({})", codes.join(", "))?;
        }
        f.write_str(if self.passed() {
            ": passed"
        } else {
            ": FAILED"
        })
    }
}

/// Detokenizes every record (duplicates once) as `options.target.detokenize` and compares the
/// PANs. Errors while checking count as failures with their status code.
///
/// # Errors
/// [`Error::Config`] if the detokenize identity's files cannot be used or the address is
/// malformed.
pub async fn check_records(
    options: &CheckOptions,
    records: Vec<Record>,
) -> Result<CheckReport, Error> {
    let credentials = options
        .target
        .detokenize
        .as_ref()
        .ok_or_else(|| Error::Config("a check needs a detokenize identity".to_owned()))?;
    let clients = Clients::connect(&options.target, credentials, options.connections.max(1))?;
    check_with(
        &clients,
        records,
        options.concurrency,
        options.timeout,
        options.progress,
    )
    .await
}

/// [`check_records`] on clients already made.
pub(crate) async fn check_with(
    clients: &Clients,
    records: Vec<Record>,
    concurrency: usize,
    timeout: Duration,
    progress: bool,
) -> Result<CheckReport, Error> {
    let mut seen = HashSet::with_capacity(records.len());
    let records: Arc<Vec<Record>> = Arc::new(
        records
            .into_iter()
            .filter(|record| seen.insert(record.clone()))
            .collect(),
    );
    drop(seen);
    let next = Arc::new(AtomicUsize::new(0));
    let live = Arc::new(Live::default());
    let bar = Progress::start(progress, "check", Arc::clone(&live));
    let mut workers = JoinSet::new();
    for worker in 0..concurrency.clamp(1, records.len().max(1)) {
        let (records, next, live) = (Arc::clone(&records), Arc::clone(&next), Arc::clone(&live));
        let clients = clients.clone();
        workers.spawn(async move {
            let mut report = CheckReport::default();
            let mut connection = worker;
            while let Some(record) = records.get(next.fetch_add(1, Ordering::Relaxed)) {
                let message = DetokenizeRequest {
                    merchant_id: record.merchant.clone(),
                    token: record.token.clone(),
                    reason: CHECK_REASON.to_owned(),
                };
                let answer = client::detokenize(clients.pick(connection), message, timeout).await;
                connection = connection.wrapping_add(1);
                report.checked += 1;
                let ok = match answer {
                    Ok(pan) if pan == record.pan => {
                        report.ok += 1;
                        true
                    }
                    Ok(_) => {
                        report.wrong += 1;
                        false
                    }
                    Err(status) if status.code() == Code::NotFound => {
                        report.missing += 1;
                        false
                    }
                    Err(status) => {
                        *report
                            .failed
                            .entry(vault_client::code_name(status.code()).to_owned())
                            .or_default() += 1;
                        false
                    }
                };
                live.answered(!ok);
            }
            report
        });
    }
    let mut total = CheckReport::default();
    let mut joined = Ok(());
    while let Some(worker) = workers.join_next().await {
        match worker {
            Ok(report) => total.merge(&report),
            Err(err) => joined = Err(Error::from(err)),
        }
    }
    bar.finish();
    joined.map(|()| total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_passes_only_when_every_record_is_ok() {
        let mut report = CheckReport {
            checked: 3,
            ok: 3,
            ..CheckReport::default()
        };
        assert!(report.passed());
        assert_eq!(
            report.to_string(),
            "3 checked, 3 ok, 0 missing, 0 wrong, 0 failed: passed"
        );
        report.ok = 0;
        report.missing = 1;
        report.wrong = 1;
        report.failed.insert("UNAVAILABLE".to_owned(), 1);
        assert!(!report.passed());
        assert_eq!(
            report.to_string(),
            "3 checked, 0 ok, 1 missing, 1 wrong, 1 failed (UNAVAILABLE 1): FAILED"
        );
    }
}
