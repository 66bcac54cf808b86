//! What each load task counts, merged once at the end (no shared lock per request).

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use tonic::{Code, Status};

use crate::Error;

/// Lowest latency the histograms hold, in microseconds.
pub const LATENCY_LOW_US: u64 = 1;
/// Highest latency the histograms hold, in microseconds (60 s); longer ones are recorded as
/// this.
pub const LATENCY_HIGH_US: u64 = 60_000_000;
/// Significant digits the histograms keep.
pub const LATENCY_SIGFIG: u8 = 3;

/// Distinct error messages one task keeps for the JSON report; the rest are lumped together.
const MAX_MESSAGES: usize = 32;
/// The message key for errors beyond [`MAX_MESSAGES`].
const OTHER_MESSAGES: &str = "(other error messages not kept)";

/// Error kind of a Tokenize answer whose token differs from the PAN's first token.
pub const DEDUP_MISMATCH: &str = "dedup-mismatch";
/// Error kind of a Detokenize answer whose PAN differs from the one tokenized.
pub const WRONG_PAN: &str = "wrong-pan";
/// Error kind of a TokenizeBatch answer without one token per card.
pub const WRONG_BATCH: &str = "wrong-batch";

/// How one request ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The vault answered and the answer is right.
    Ok,
    /// The call failed with this status (from the vault or the transport).
    Rpc(Status),
    /// The vault answered OK but the answer is wrong; `kind` is [`DEDUP_MISMATCH`],
    /// [`WRONG_PAN`] or [`WRONG_BATCH`].
    Wrong {
        /// The error kind.
        kind: &'static str,
        /// What was wrong (never a PAN).
        message: String,
    },
}

impl Outcome {
    /// Whether this is an error of any kind.
    pub(crate) fn is_error(&self) -> bool {
        !matches!(self, Self::Ok)
    }
}

/// A new latency histogram: microseconds, 1 µs to 60 s, 3 significant digits.
///
/// # Errors
/// [`Error::Internal`] if hdrhistogram refuses the bounds (it does not).
pub fn new_histogram() -> Result<Histogram<u64>, Error> {
    Histogram::new_with_bounds(LATENCY_LOW_US, LATENCY_HIGH_US, LATENCY_SIGFIG)
        .map_err(|err| Error::Internal(format!("cannot create a latency histogram: {err}")))
}

/// The counts of one task, or of a whole run once merged.
#[derive(Debug, Clone)]
pub(crate) struct Stats {
    /// Latencies of the requests that ended [`Outcome::Ok`], in microseconds.
    pub(crate) latency: Histogram<u64>,
    /// Sum of all counted latencies (errors included).
    pub(crate) latency_sum: Duration,
    /// Requests counted.
    pub(crate) count: u64,
    /// Requests that ended [`Outcome::Ok`].
    pub(crate) ok: u64,
    /// Errors by kind: the canonical gRPC code name (`UNAVAILABLE`) or a custom kind.
    pub(crate) errors: BTreeMap<String, u64>,
    /// Requests by gRPC status as ghz names them (`OK`, `Unavailable`); a wrong answer is `OK`.
    pub(crate) status_codes: BTreeMap<String, u64>,
    /// Errors by message, as ghz's `errorDistribution`.
    pub(crate) messages: BTreeMap<String, u64>,
}

impl Stats {
    /// Nothing counted yet.
    pub(crate) fn new() -> Result<Self, Error> {
        Ok(Self {
            latency: new_histogram()?,
            latency_sum: Duration::ZERO,
            count: 0,
            ok: 0,
            errors: BTreeMap::new(),
            status_codes: BTreeMap::new(),
            messages: BTreeMap::new(),
        })
    }

    /// Counts one request.
    pub(crate) fn record(&mut self, outcome: &Outcome, latency: Duration) {
        self.count += 1;
        self.latency_sum = self.latency_sum.saturating_add(latency);
        let (status, message) = match outcome {
            Outcome::Ok => {
                self.ok += 1;
                let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                self.latency
                    .saturating_record(micros.clamp(LATENCY_LOW_US, LATENCY_HIGH_US));
                (Code::Ok, None)
            }
            Outcome::Rpc(status) => {
                bump(&mut self.errors, vault_client::code_name(status.code()));
                let message = format!(
                    "rpc error: code = {} desc = {}",
                    ghz_code_name(status.code()),
                    status.message()
                );
                (status.code(), Some(message))
            }
            Outcome::Wrong { kind, message } => {
                bump(&mut self.errors, kind);
                (Code::Ok, Some(format!("{kind}: {message}")))
            }
        };
        bump(&mut self.status_codes, ghz_code_name(status));
        if let Some(message) = message {
            if self.messages.len() < MAX_MESSAGES || self.messages.contains_key(&message) {
                *self.messages.entry(message).or_default() += 1;
            } else {
                bump(&mut self.messages, OTHER_MESSAGES);
            }
        }
    }

    /// Adds `other`'s counts to these.
    pub(crate) fn merge(&mut self, other: &Self) -> Result<(), Error> {
        self.latency
            .add(&other.latency)
            .map_err(|err| Error::Internal(format!("cannot merge latency histograms: {err}")))?;
        self.latency_sum = self.latency_sum.saturating_add(other.latency_sum);
        self.count += other.count;
        self.ok += other.ok;
        for (target, source) in [
            (&mut self.errors, &other.errors),
            (&mut self.status_codes, &other.status_codes),
            (&mut self.messages, &other.messages),
        ] {
            for (key, n) in source {
                *target.entry(key.clone()).or_default() += n;
            }
        }
        Ok(())
    }
}

fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    match map.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            map.insert(key.to_owned(), 1);
        }
    }
}

/// The name Go's gRPC gives `code` (`codes.Code.String()`), which ghz reports.
#[must_use]
pub fn ghz_code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_counted_by_kind_and_merged() {
        let mut a = Stats::new().unwrap();
        a.record(&Outcome::Ok, Duration::from_micros(1500));
        a.record(
            &Outcome::Rpc(Status::unavailable("store down")),
            Duration::from_millis(3),
        );
        let mut b = Stats::new().unwrap();
        b.record(&Outcome::Ok, Duration::from_micros(500));
        b.record(
            &Outcome::Wrong {
                kind: DEDUP_MISMATCH,
                message: "another token".into(),
            },
            Duration::from_millis(1),
        );
        a.merge(&b).unwrap();
        assert_eq!((a.count, a.ok), (4, 2));
        assert_eq!(a.latency.len(), 2);
        assert_eq!(a.latency_sum, Duration::from_micros(6000));
        assert_eq!(a.errors.get("UNAVAILABLE"), Some(&1));
        assert_eq!(a.errors.get("dedup-mismatch"), Some(&1));
        assert_eq!(a.status_codes.get("OK"), Some(&3));
        assert_eq!(a.status_codes.get("Unavailable"), Some(&1));
        assert_eq!(
            a.messages
                .get("rpc error: code = Unavailable desc = store down"),
            Some(&1)
        );
        assert_eq!(a.messages.get("dedup-mismatch: another token"), Some(&1));
    }

    #[test]
    fn latencies_beyond_the_bounds_are_clamped() {
        let mut stats = Stats::new().unwrap();
        stats.record(&Outcome::Ok, Duration::from_nanos(10));
        stats.record(&Outcome::Ok, Duration::from_secs(3600));
        assert_eq!(stats.latency.len(), 2);
        assert_eq!(stats.latency.min(), 1);
        assert!(stats.latency.max() >= LATENCY_HIGH_US);
    }

    #[test]
    fn distinct_messages_are_capped() {
        let mut stats = Stats::new().unwrap();
        for i in 0..100 {
            stats.record(
                &Outcome::Rpc(Status::internal(format!("boom {i}"))),
                Duration::from_millis(1),
            );
        }
        assert_eq!(stats.messages.len(), MAX_MESSAGES + 1);
        assert_eq!(stats.messages.get(OTHER_MESSAGES), Some(&68));
        assert_eq!(stats.errors.get("INTERNAL"), Some(&100));
    }
}
