//! Connections refused before a caller is known: why ([`Refusal`]), counted by reason and
//! source for the audit trail's periodic summary, and in total for the metrics.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use super::Source;

/// Why a connection was refused before a caller was identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    /// The handshake failed, and why.
    Handshake(Failure),
    /// The handshake did not finish within `handshake_timeout_ms`.
    Timeout,
    /// The source had its share of handshakes in progress and the vault was busy.
    SourceShare,
    /// `max_handshakes` were in progress.
    GlobalCap,
}

/// Why a handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Failure {
    /// The client presented no certificate.
    NoCertificate,
    /// A certificate on a CRL.
    Revoked,
    /// A certificate the client CA did not sign, an expired one, or one otherwise not valid.
    BadCertificate,
    /// Another protocol version, no common cipher suite, or garbage.
    Protocol,
}

impl Failure {
    /// Classifies the error a failed handshake returned.
    pub(super) fn of(error: &io::Error) -> Self {
        let rustls_error = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        match rustls_error {
            Some(rustls::Error::NoCertificatesPresented) => Self::NoCertificate,
            Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)) => {
                Self::Revoked
            }
            Some(rustls::Error::InvalidCertificate(_)) => Self::BadCertificate,
            _ => Self::Protocol,
        }
    }
}

impl Refusal {
    /// Every reason, in the order of [`Refusal::index`].
    pub const ALL: [Self; 7] = [
        Self::Handshake(Failure::NoCertificate),
        Self::Handshake(Failure::Revoked),
        Self::Handshake(Failure::BadCertificate),
        Self::Handshake(Failure::Protocol),
        Self::Timeout,
        Self::SourceShare,
        Self::GlobalCap,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Handshake(Failure::NoCertificate) => "handshake refused: no client certificate",
            Self::Handshake(Failure::Revoked) => "handshake refused: certificate revoked",
            Self::Handshake(Failure::BadCertificate) => "handshake refused: certificate not valid",
            Self::Handshake(Failure::Protocol) => "handshake refused",
            Self::Timeout => "handshake timed out",
            Self::SourceShare => "over the source's share",
            Self::GlobalCap => "over max_handshakes",
        }
    }

    /// The reason as a metric label.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Handshake(Failure::NoCertificate) => "no_certificate",
            Self::Handshake(Failure::Revoked) => "revoked",
            Self::Handshake(Failure::BadCertificate) => "bad_certificate",
            Self::Handshake(Failure::Protocol) => "protocol",
            Self::Timeout => "timeout",
            Self::SourceShare => "source_share",
            Self::GlobalCap => "global_cap",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Handshake(Failure::NoCertificate) => 0,
            Self::Handshake(Failure::Revoked) => 1,
            Self::Handshake(Failure::BadCertificate) => 2,
            Self::Handshake(Failure::Protocol) => 3,
            Self::Timeout => 4,
            Self::SourceShare => 5,
            Self::GlobalCap => 6,
        }
    }
}

/// Sources counted one by one per reason; refusals from further sources count as "others",
/// so a flood from rotating addresses cannot grow the tally (or the record) without bound.
const MAX_SOURCES_PER_REASON: usize = 4_096;
/// Sources named in a summary per reason, most refused first.
const TOP_SOURCES: usize = 10;

/// Refused connections counted since the last summary, by reason and source. The vault
/// records a summary once per interval and at shutdown ([`RefusalCounts::take_summary`]);
/// the totals since start, by reason, are a metric ([`RefusalCounts::totals`]).
#[derive(Debug, Default)]
pub struct RefusalCounts {
    tally: Mutex<Option<RefusalTally>>,
    totals: [AtomicU64; Refusal::ALL.len()],
}

#[derive(Debug)]
struct RefusalTally {
    since: time::OffsetDateTime,
    by_reason: BTreeMap<Refusal, ReasonTally>,
}

#[derive(Debug, Default)]
struct ReasonTally {
    total: u64,
    sources: HashMap<Source, u64>,
}

impl RefusalCounts {
    /// Counts one refused connection from `source`.
    pub fn record(&self, reason: Refusal, source: Source) {
        if let Some(total) = self.totals.get(reason.index()) {
            total.fetch_add(1, Ordering::Relaxed);
        }
        let mut tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        let tally = tally.get_or_insert_with(|| RefusalTally {
            since: time::OffsetDateTime::now_utc(),
            by_reason: BTreeMap::new(),
        });
        let reason = tally.by_reason.entry(reason).or_default();
        reason.total = reason.total.saturating_add(1);
        let room = reason.sources.len() < MAX_SOURCES_PER_REASON;
        if let Some(count) = reason.sources.get_mut(&source) {
            *count = count.saturating_add(1);
        } else if room {
            reason.sources.insert(source, 1);
        }
    }

    /// The summary of everything counted since the last one, and a fresh count; `None` if
    /// nothing was refused. One line: per reason, the total and the sources refused most (the
    /// rest as "others").
    #[must_use]
    pub fn take_summary(&self) -> Option<String> {
        let tally = self
            .tally
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()?;
        let since = tally
            .since
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let reasons: Vec<String> = tally
            .by_reason
            .into_iter()
            .map(|(reason, counted)| {
                let mut sources: Vec<(Source, u64)> = counted.sources.into_iter().collect();
                sources.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.0.cmp(&b.0.0)));
                let named: Vec<String> = sources
                    .iter()
                    .take(TOP_SOURCES)
                    .map(|(source, n)| format!("{source} {n}"))
                    .collect();
                let shown: u64 = sources.iter().take(TOP_SOURCES).map(|(_, n)| n).sum();
                let others = counted.total.saturating_sub(shown);
                format!(
                    "{} {} (from {}{})",
                    reason.as_str(),
                    counted.total,
                    named.join(", "),
                    if others > 0 {
                        format!(", others {others}")
                    } else {
                        String::new()
                    }
                )
            })
            .collect();
        Some(format!(
            "tls connections refused since {since}: {}",
            reasons.join("; ")
        ))
    }
}

impl RefusalCounts {
    /// Connections refused since start, by reason (as its metric label).
    pub fn totals(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Refusal::ALL.iter().map(|reason| {
            let total = self
                .totals
                .get(reason.index())
                .map_or(0, |n| n.load(Ordering::Relaxed));
            (reason.label(), total)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn source(addr: &str) -> Source {
        Source::of(addr.parse().unwrap())
    }

    #[test]
    fn refusals_are_summarized_by_reason_with_the_top_sources_and_then_reset() {
        let counts = RefusalCounts::default();
        assert_eq!(counts.take_summary(), None);
        for _ in 0..3 {
            counts.record(Refusal::Handshake(Failure::Protocol), source("192.0.2.7"));
        }
        counts.record(
            Refusal::Handshake(Failure::Protocol),
            source("2001:db8:1:2::5"),
        );
        counts.record(Refusal::Timeout, source("192.0.2.8"));
        let summary = counts.take_summary().unwrap();
        assert!(
            summary.contains(
                "handshake refused 4 (from 192.0.2.7 3, 2001:db8:1:2::/64 1); \
                 handshake timed out 1 (from 192.0.2.8 1)"
            ),
            "{summary}"
        );
        assert_eq!(
            counts.take_summary(),
            None,
            "counted afresh after a summary"
        );
    }

    #[test]
    fn a_flood_from_rotating_sources_is_bounded_in_memory_and_in_the_record() {
        let counts = RefusalCounts::default();
        let n = MAX_SOURCES_PER_REASON + 1_000;
        for i in 0..n {
            let addr = std::net::Ipv4Addr::from_bits(0x0a00_0000 + u32::try_from(i).unwrap());
            counts.record(
                Refusal::Handshake(Failure::Protocol),
                Source::of(IpAddr::V4(addr)),
            );
        }
        {
            let tally = counts.tally.lock().unwrap();
            let tally = tally.as_ref().unwrap();
            assert_eq!(
                tally.by_reason[&Refusal::Handshake(Failure::Protocol)]
                    .sources
                    .len(),
                MAX_SOURCES_PER_REASON
            );
        }
        let summary = counts.take_summary().unwrap();
        assert!(
            summary.contains(&format!("handshake refused {n} (from ")),
            "{summary}"
        );
        assert!(
            summary.contains(&format!("others {}", n - TOP_SOURCES)),
            "{summary}"
        );
        assert!(summary.len() < 1_000, "{} bytes", summary.len());
    }

    #[test]
    fn totals_count_every_refusal_by_reason_across_summaries() {
        let counts = RefusalCounts::default();
        let no_cert = Refusal::Handshake(Failure::NoCertificate);
        counts.record(no_cert, source("192.0.2.7"));
        counts.record(no_cert, source("192.0.2.8"));
        let _ = counts.take_summary();
        counts.record(Refusal::Timeout, source("192.0.2.7"));
        let totals: HashMap<_, _> = counts.totals().collect();
        assert_eq!(totals.len(), Refusal::ALL.len());
        assert_eq!(totals["no_certificate"], 2);
        assert_eq!(totals["timeout"], 1);
        assert_eq!(totals["revoked"], 0);
        let mut indexes: Vec<_> = Refusal::ALL.iter().map(|r| r.index()).collect();
        indexes.dedup();
        assert_eq!(indexes, (0..Refusal::ALL.len()).collect::<Vec<_>>());
    }

    #[test]
    fn a_failed_handshake_is_classified_from_the_rustls_error() {
        let wrapped = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        assert_eq!(
            Failure::of(&wrapped(rustls::Error::NoCertificatesPresented)),
            Failure::NoCertificate
        );
        assert_eq!(
            Failure::of(&wrapped(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked
            ))),
            Failure::Revoked
        );
        assert_eq!(
            Failure::of(&wrapped(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Expired
            ))),
            Failure::BadCertificate
        );
        assert_eq!(Failure::of(&io::Error::other("eof")), Failure::Protocol);
    }
}
