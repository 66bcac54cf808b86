//! What a run measured: the human summary and a ghz-compatible JSON report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::EXIT_FAILED;
use crate::check::CheckReport;
use crate::options::{Length, Load, Options, Scenario};
use crate::stats::Stats;

/// The percentiles of the summary.
const SUMMARY_PERCENTILES: [(&str, f64); 4] = [
    ("p50", 0.50),
    ("p90", 0.90),
    ("p99", 0.99),
    ("p99.9", 0.999),
];
/// The percentiles ghz reports in `latencyDistribution`.
const GHZ_PERCENTAGES: [u8; 7] = [10, 25, 50, 75, 90, 95, 99];
/// ghz's histogram has this many equal-width buckets between fastest and slowest (plus one
/// for the slowest).
const GHZ_BUCKETS: u32 = 10;

/// What a run measured. Requests started (open loop: due) during the warm-up are not in the
/// counts.
#[derive(Debug, Clone)]
pub struct Report {
    /// The options the run ran with.
    pub options: Options,
    /// When the load started.
    pub date: OffsetDateTime,
    /// From the end of the warm-up to the last answer.
    pub elapsed: Duration,
    /// Answers to requests of the warm-up, not counted.
    pub warmup_answers: u64,
    /// Tokens made by the untimed setup (the `detokenize` scenario's pool).
    pub setup_tokens: usize,
    /// With `--record`: lines appended to the record file.
    pub recorded: Option<u64>,
    /// With `--check`: what the check found.
    pub check: Option<CheckReport>,
    pub(crate) stats: Stats,
}

impl Report {
    /// Requests counted (answered after the warm-up), errors included.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.stats.count
    }

    /// Requests answered OK with a right answer.
    #[must_use]
    pub fn ok(&self) -> u64 {
        self.stats.ok
    }

    /// Errors counted.
    #[must_use]
    pub fn error_count(&self) -> u64 {
        self.stats.count.saturating_sub(self.stats.ok)
    }

    /// Errors by kind: the canonical gRPC code name (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, ...)
    /// or `dedup-mismatch` / `wrong-pan`.
    #[must_use]
    pub fn errors(&self) -> &BTreeMap<String, u64> {
        &self.stats.errors
    }

    /// The latencies of the OK requests, in microseconds.
    #[must_use]
    pub fn latency(&self) -> &Histogram<u64> {
        &self.stats.latency
    }

    /// OK answers per second.
    #[must_use]
    pub fn ok_rate(&self) -> f64 {
        per_second(self.stats.ok, self.elapsed)
    }

    /// Answers (errors included) per second.
    #[must_use]
    pub fn total_rate(&self) -> f64 {
        per_second(self.stats.count, self.elapsed)
    }

    /// The exit code: [`EXIT_FAILED`] if the check failed, or if `fail_on_error` and any
    /// request failed; else 0.
    #[must_use]
    pub fn exit_code(&self, fail_on_error: bool) -> u8 {
        let check_failed = self.check.as_ref().is_some_and(|check| !check.passed());
        if check_failed || (fail_on_error && self.error_count() > 0) {
            EXIT_FAILED
        } else {
            0
        }
    }

    /// The human summary, one `label  value` line each.
    #[must_use]
    pub fn summary(&self) -> String {
        let options = &self.options;
        let mut lines: Vec<(&str, String)> = Vec::new();
        lines.push(("scenario", scenario_text(options)));
        lines.push(("mode", mode_text(options.load)));
        lines.push((
            "connections",
            format!("{} per identity", options.connections),
        ));
        if self.setup_tokens > 0 {
            lines.push((
                "setup",
                format!("{} tokens made before the run (untimed)", self.setup_tokens),
            ));
        }
        let mut duration = format!("{:.3} s measured", self.elapsed.as_secs_f64());
        if !options.warmup.is_zero() {
            let _ = write!(
                duration,
                " after a {:.3} s warm-up ({} answers not counted)",
                options.warmup.as_secs_f64(),
                self.warmup_answers
            );
        }
        lines.push(("duration", duration));
        lines.push((
            "requests",
            format!(
                "{} total, {} ok, {} errors",
                self.count(),
                self.ok(),
                self.error_count()
            ),
        ));
        lines.push(("errors", distribution_text(&self.stats.errors)));
        lines.push((
            "throughput",
            format!(
                "{:.1} ok/s, {:.1} total/s",
                self.ok_rate(),
                self.total_rate()
            ),
        ));
        let cards = options.scenario.cards_per_call();
        if cards > 1 {
            lines.push((
                "cards",
                format!(
                    "{} tokenized, {:.1} cards/s",
                    self.ok() * cards as u64,
                    self.ok_rate() * cards as f64
                ),
            ));
        }
        lines.push(("latency", latency_text(&self.stats.latency)));
        if let Some(recorded) = self.recorded {
            let path = options
                .record
                .as_ref()
                .map(|path| path.display().to_string())
                .unwrap_or_default();
            lines.push(("record", format!("{recorded} lines appended to {path}")));
        }
        if let Some(check) = &self.check {
            lines.push(("check", check.to_string()));
        }
        let width = lines
            .iter()
            .map(|(label, _)| label.len())
            .max()
            .unwrap_or(0);
        lines
            .iter()
            .map(|(label, value)| format!("{label:width$}  {value}\n"))
            .collect()
    }

    /// The report in ghz's JSON format (`ghz --format json`): durations in nanoseconds,
    /// histogram marks in seconds as ghz writes them, statuses as Go's gRPC names them.
    /// Latency figures cover the OK requests; `average` covers all, as in ghz.
    #[must_use]
    pub fn ghz(&self) -> GhzReport {
        let latency = &self.stats.latency;
        let has_latency = !latency.is_empty();
        let ns = |micros: u64| micros.saturating_mul(1000);
        let average = u64::try_from(
            self.stats
                .latency_sum
                .as_nanos()
                .checked_div(u128::from(self.stats.count))
                .unwrap_or(0),
        )
        .unwrap_or(u64::MAX);
        GhzReport {
            name: format!("loadtest {}", self.options.scenario.name()),
            // Whole seconds, as Go's time.RFC3339 writes them.
            date: self
                .date
                .replace_nanosecond(0)
                .unwrap_or(self.date)
                .format(&Rfc3339)
                .unwrap_or_default(),
            options: GhzOptions::of(&self.options),
            count: self.stats.count,
            total: duration_ns(self.elapsed),
            average,
            fastest: if has_latency { ns(latency.min()) } else { 0 },
            slowest: if has_latency { ns(latency.max()) } else { 0 },
            rps: self.total_rate(),
            error_distribution: self.stats.messages.clone(),
            status_code_distribution: self.stats.status_codes.clone(),
            latency_distribution: if has_latency {
                GHZ_PERCENTAGES
                    .iter()
                    .map(|&percentage| GhzLatency {
                        percentage,
                        latency: ns(latency.value_at_quantile(f64::from(percentage) / 100.0)),
                    })
                    .collect()
            } else {
                Vec::new()
            },
            histogram: ghz_histogram(latency),
            details: Vec::new(),
            check: self.check.clone(),
        }
    }
}

/// ghz's JSON report (`runner.Report` in ghz), plus `check` when the run checked its tokens.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GhzReport {
    /// The run's name.
    pub name: String,
    /// When the run started, RFC 3339.
    pub date: String,
    /// The options, as ghz names them, plus this tool's own.
    pub options: GhzOptions,
    /// Requests counted, errors included.
    pub count: u64,
    /// The measured duration, nanoseconds.
    pub total: u64,
    /// The mean latency of all counted requests, nanoseconds.
    pub average: u64,
    /// The lowest OK latency, nanoseconds.
    pub fastest: u64,
    /// The highest OK latency, nanoseconds.
    pub slowest: u64,
    /// Requests per second (`count / total`).
    pub rps: f64,
    /// Errors by message (`rpc error: code = Unavailable desc = ...`).
    pub error_distribution: BTreeMap<String, u64>,
    /// Requests by status (`OK`, `Unavailable`, ...); a wrong answer is `OK` here.
    pub status_code_distribution: BTreeMap<String, u64>,
    /// OK latencies at ghz's percentages, nanoseconds.
    pub latency_distribution: Vec<GhzLatency>,
    /// OK latencies in ghz's 11 buckets.
    pub histogram: Vec<GhzBucket>,
    /// Per-request details: always empty (ghz fills it; this tool does not keep them).
    pub details: Vec<serde_json::Value>,
    /// What `--check` found (not a ghz field).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckReport>,
}

/// One entry of ghz's `latencyDistribution`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GhzLatency {
    /// The percentile, e.g. 99.
    pub percentage: u8,
    /// The latency at it, nanoseconds.
    pub latency: u64,
}

/// One bucket of ghz's `histogram`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GhzBucket {
    /// The bucket's upper bound, seconds (ghz's unit for marks).
    pub mark: f64,
    /// OK requests at or below the mark and above the previous one.
    pub count: u64,
    /// `count` over all OK requests.
    pub frequency: f64,
}

/// ghz's `options` object, with the names ghz uses, and this tool's extras.
#[derive(Debug, Clone, Serialize)]
pub struct GhzOptions {
    /// `HOST:PORT`.
    pub host: String,
    /// The method(s) called.
    pub call: String,
    /// The CA certificate file.
    pub cacert: String,
    /// The tokenize identity's certificate file.
    pub cert: String,
    /// The tokenize identity's key file.
    pub key: String,
    /// The TLS server name.
    pub cname: String,
    /// Always false: mutual TLS only.
    pub insecure: bool,
    /// Always false.
    pub binary: bool,
    /// `--requests`, if given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// Closed-loop callers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u64>,
    /// Open-loop rate, rounded (ghz's `qps` is an integer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qps: Option<u64>,
    /// Connections per identity.
    pub connections: u64,
    /// `--duration`, nanoseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<u64>,
    /// Each request's deadline, nanoseconds.
    pub timeout: u64,
    /// `--connect-timeout`, nanoseconds.
    #[serde(rename = "dial-timeout")]
    pub dial_timeout: u64,
    /// CPUs available.
    #[serde(rename = "CPUs")]
    pub cpus: u64,
    /// The scenario (not a ghz option).
    pub scenario: String,
    /// The open-loop rate exactly (not a ghz option).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// The open-loop in-flight cap (not a ghz option).
    #[serde(rename = "maxInFlight", skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u64>,
    /// The warm-up, nanoseconds (not a ghz option).
    pub warmup: u64,
    /// Merchants (not a ghz option).
    pub merchants: u32,
    /// The token format (not a ghz option).
    #[serde(rename = "tokenFormat")]
    pub token_format: String,
}

impl GhzOptions {
    fn of(options: &Options) -> Self {
        let identity = options.target.tokenize.as_ref();
        let path = |pick: fn(&crate::Credentials) -> &std::path::PathBuf| {
            identity
                .map(|credentials| pick(credentials).display().to_string())
                .unwrap_or_default()
        };
        let (concurrency, qps, rate, max_in_flight) = match options.load {
            Load::Closed { concurrency } => (Some(concurrency as u64), None, None, None),
            Load::Open {
                rate,
                max_in_flight,
            } => (
                None,
                Some(rate.round() as u64),
                Some(rate),
                Some(max_in_flight as u64),
            ),
        };
        let (total, duration) = match options.length {
            Length::Requests(n) => (Some(n), None),
            Length::Duration(duration) => (None, Some(duration_ns(duration))),
        };
        Self {
            host: options.target.addr.clone(),
            call: options.scenario.call().to_owned(),
            cacert: path(|c| &c.ca),
            cert: path(|c| &c.cert),
            key: path(|c| &c.key),
            cname: options.target.server_name.clone(),
            insecure: false,
            binary: false,
            total,
            concurrency,
            qps,
            connections: options.connections as u64,
            duration,
            timeout: duration_ns(options.timeout),
            dial_timeout: duration_ns(options.target.connect_timeout),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
            scenario: options.scenario.name().to_owned(),
            rate,
            max_in_flight,
            warmup: duration_ns(options.warmup),
            merchants: options.merchants,
            token_format: options.token_format.as_str_name().to_owned(),
        }
    }
}

/// ghz's histogram: marks at fastest + k * (slowest - fastest) / 10 for k = 0..10, then the
/// slowest; each OK latency counted in the first bucket whose mark is at or above it.
fn ghz_histogram(latency: &Histogram<u64>) -> Vec<GhzBucket> {
    if latency.is_empty() {
        return Vec::new();
    }
    let (fastest, slowest) = (latency.min() as f64, latency.max() as f64);
    let width = (slowest - fastest) / f64::from(GHZ_BUCKETS);
    let marks: Vec<f64> = (0..GHZ_BUCKETS)
        .map(|k| fastest + width * f64::from(k))
        .chain(std::iter::once(slowest))
        .collect();
    let mut counts = vec![0_u64; marks.len()];
    for value in latency.iter_recorded() {
        let micros = latency.lowest_equivalent(value.value_iterated_to()) as f64;
        let bucket = marks
            .iter()
            .position(|&mark| micros <= mark)
            .unwrap_or(marks.len() - 1);
        if let Some(count) = counts.get_mut(bucket) {
            *count += value.count_at_value();
        }
    }
    let total = latency.len() as f64;
    marks
        .iter()
        .zip(counts)
        .map(|(&mark, count)| GhzBucket {
            mark: mark / 1e6,
            count,
            frequency: count as f64 / total,
        })
        .collect()
}

fn duration_ns(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

fn per_second(n: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        n as f64 / seconds
    } else {
        0.0
    }
}

/// Microseconds as milliseconds with three decimals.
fn ms(micros: u64) -> String {
    format!("{:.3}", micros as f64 / 1000.0)
}

/// `min 0.512  p50 1.234  ...  max 9.876 ms (OK answers)`, or `none` without OK answers.
fn latency_text(latency: &Histogram<u64>) -> String {
    if latency.is_empty() {
        return "none (no OK answers)".to_owned();
    }
    let mut text = format!("min {}", ms(latency.min()));
    for (label, quantile) in SUMMARY_PERCENTILES {
        let _ = write!(
            text,
            "  {label} {}",
            ms(latency.value_at_quantile(quantile))
        );
    }
    let _ = write!(text, "  max {} ms (OK answers)", ms(latency.max()));
    text
}

/// `UNAVAILABLE 3, dedup-mismatch 2`, or `none`.
fn distribution_text(distribution: &BTreeMap<String, u64>) -> String {
    if distribution.is_empty() {
        return "none".to_owned();
    }
    distribution
        .iter()
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn scenario_text(options: &Options) -> String {
    let detail = match options.scenario {
        Scenario::TokenizeDedup { pool } | Scenario::Detokenize { pool } => {
            format!(", pool {pool}")
        }
        Scenario::Mixed { detokenize_percent } => format!(", {detokenize_percent}% detokenize"),
        Scenario::Batch { size } => format!(", {size} cards per call"),
        Scenario::Tokenize | Scenario::Health => String::new(),
    };
    format!(
        "{}{detail}, {} merchant(s), format {}",
        options.scenario.name(),
        options.merchants,
        options.token_format.as_str_name()
    )
}

fn mode_text(load: Load) -> String {
    match load {
        Load::Closed { concurrency } => format!("closed loop, concurrency {concurrency}"),
        Load::Open {
            rate,
            max_in_flight,
        } => format!("open loop, {rate} requests/s scheduled, at most {max_in_flight} in flight"),
    }
}

#[cfg(test)]
mod tests {
    use tonic::Status;

    use super::*;
    use crate::stats::{DEDUP_MISMATCH, Outcome};

    fn report() -> Report {
        let mut stats = Stats::new().unwrap();
        for micros in 1..=1000 {
            stats.record(&Outcome::Ok, Duration::from_micros(micros * 10));
        }
        stats.record(
            &Outcome::Rpc(Status::unavailable("store down")),
            Duration::from_millis(5),
        );
        stats.record(
            &Outcome::Wrong {
                kind: DEDUP_MISMATCH,
                message: "x".into(),
            },
            Duration::from_millis(5),
        );
        Report {
            options: Options::default(),
            date: OffsetDateTime::UNIX_EPOCH,
            elapsed: Duration::from_secs(2),
            warmup_answers: 0,
            setup_tokens: 0,
            recorded: None,
            check: None,
            stats,
        }
    }

    #[test]
    fn milliseconds_have_three_decimals() {
        assert_eq!(ms(0), "0.000");
        assert_eq!(ms(1), "0.001");
        assert_eq!(ms(1234), "1.234");
        assert_eq!(ms(60_000_000), "60000.000");
    }

    #[test]
    fn the_summary_shows_counts_errors_rates_and_percentiles() {
        let text = report().summary();
        assert!(
            text.contains("scenario     tokenize, 1 merchant(s), format TOKEN_FORMAT_RANDOM\n"),
            "{text}"
        );
        assert!(
            text.contains("mode         closed loop, concurrency 64\n"),
            "{text}"
        );
        assert!(text.contains("connections  4 per identity\n"), "{text}");
        assert!(text.contains("duration     2.000 s measured\n"), "{text}");
        assert!(
            text.contains("requests     1002 total, 1000 ok, 2 errors\n"),
            "{text}"
        );
        assert!(
            text.contains("errors       UNAVAILABLE 1, dedup-mismatch 1\n"),
            "{text}"
        );
        assert!(
            text.contains("throughput   500.0 ok/s, 501.0 total/s\n"),
            "{text}"
        );
        // 10 µs .. 10 ms in 10 µs steps; hdrhistogram rounds up within 3 significant digits.
        assert!(
            text.contains(
                "latency      min 0.010  p50 5.003  p90 9.007  p99 9.903  p99.9 9.991  \
                 max 10.007 ms (OK answers)\n"
            ),
            "{text}"
        );
        assert!(!text.contains("check"), "{text}");
    }

    #[test]
    fn a_run_without_ok_answers_has_no_latency() {
        assert_eq!(
            latency_text(&crate::stats::new_histogram().unwrap()),
            "none (no OK answers)"
        );
    }

    #[test]
    fn ghz_json_has_ghz_field_names_and_nanoseconds() {
        let json = serde_json::to_value(report().ghz()).unwrap();
        for field in [
            "date",
            "count",
            "total",
            "average",
            "fastest",
            "slowest",
            "rps",
            "statusCodeDistribution",
            "errorDistribution",
            "latencyDistribution",
            "histogram",
            "options",
            "details",
        ] {
            assert!(json.get(field).is_some(), "{field} missing: {json}");
        }
        assert_eq!(json["date"], "1970-01-01T00:00:00Z");
        assert_eq!(json["count"], 1002);
        assert_eq!(json["total"], 2_000_000_000_u64);
        assert_eq!(json["fastest"], 10_000);
        assert_eq!(json["slowest"], 10_007_000);
        // (sum of 10 µs .. 10 ms) + 2 * 5 ms over 1002 requests.
        assert_eq!(json["average"], (5_005_000_000_u64 + 10_000_000) / 1002);
        assert_eq!(json["rps"], 501.0);
        assert_eq!(json["statusCodeDistribution"]["OK"], 1001);
        assert_eq!(json["statusCodeDistribution"]["Unavailable"], 1);
        assert_eq!(
            json["errorDistribution"]["rpc error: code = Unavailable desc = store down"],
            1
        );
        assert_eq!(json["errorDistribution"]["dedup-mismatch: x"], 1);
        let distribution = json["latencyDistribution"].as_array().unwrap();
        assert_eq!(distribution.len(), 7);
        assert_eq!(distribution[2]["percentage"], 50);
        assert_eq!(distribution[2]["latency"], 5_003_000);
        let histogram = json["histogram"].as_array().unwrap();
        assert_eq!(histogram.len(), 11);
        let counted: u64 = histogram.iter().map(|b| b["count"].as_u64().unwrap()).sum();
        assert_eq!(counted, 1000);
        assert_eq!(histogram[0]["mark"], 0.00001);
        assert_eq!(histogram[10]["mark"], 0.010007);
        let frequencies: f64 = histogram
            .iter()
            .map(|b| b["frequency"].as_f64().unwrap())
            .sum();
        assert!((frequencies - 1.0).abs() < 1e-9, "{frequencies}");
        let options = &json["options"];
        assert_eq!(options["host"], "127.0.0.1:50051");
        assert_eq!(options["call"], "vault.v1.TokenService.Tokenize");
        assert_eq!(options["concurrency"], 64);
        assert_eq!(options["connections"], 4);
        assert_eq!(options["duration"], 10_000_000_000_u64);
        assert_eq!(options["timeout"], 30_000_000_000_u64);
        assert_eq!(options["insecure"], false);
        assert!(options.get("qps").is_none());
        assert!(json.get("check").is_none());
    }

    #[test]
    fn exit_code_follows_the_check_and_fail_on_error() {
        let mut report = report();
        assert_eq!(report.exit_code(false), 0);
        assert_eq!(report.exit_code(true), EXIT_FAILED);
        report.check = Some(CheckReport {
            checked: 1,
            missing: 1,
            ..CheckReport::default()
        });
        assert_eq!(report.exit_code(false), EXIT_FAILED);
    }
}
