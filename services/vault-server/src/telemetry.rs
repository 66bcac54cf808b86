//! Logging, metrics and traces: one `tracing` subscriber with a layer for each.
//!
//! - Logs: structured events to stderr, filtered by `RUST_LOG` (default `info`). Inside a call
//!   every line carries the call's span (`observe.rs`): its method, request id and trace id.
//! - Metrics: [`SpanMetrics`](crate::metrics::SpanMetrics) turns the domain's and the store's
//!   spans into observations; it sees only those spans (its own filter), whatever `RUST_LOG`
//!   says.
//!
//! Nothing the vault logs or traces holds a PAN: request bodies are never logged, error
//! messages name fields, not values, and span fields are operations, outcomes and ids.

use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{EnvFilter, FilterFn};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::metrics::{SpanMetrics, names};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber. Call once, first thing in `main`; a second call (tests)
/// keeps the first subscriber.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().boxed(),
    }
    .with_filter(filter);
    let metrics = SpanMetrics.with_filter(FilterFn::new(|meta| {
        matches!(
            meta.name(),
            names::KEK
                | names::STORE
                | names::AUDIT_WRITE
                | names::GROUP_COMMIT_WAIT
                | names::GROUP_COMMIT
        )
    }));
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(metrics)
        .try_init();
}
