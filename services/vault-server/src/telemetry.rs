//! Logging, metrics and traces: one `tracing` subscriber with a layer for each.
//!
//! - Logs: structured events to stderr, filtered by `RUST_LOG` (default `info`). Inside a call
//!   every line carries the call's span (`observe.rs`): its method, request id and trace id.
//! - Metrics: [`SpanMetrics`](crate::metrics::SpanMetrics) turns the domain's and the store's
//!   spans into observations; it sees only those spans (its own filter), whatever `RUST_LOG`
//!   says.
//! - Traces, with `[telemetry] otlp_endpoint` set: `tracing-opentelemetry` turns each call's
//!   span and its children (the store, the group-commit wait, the KEK, the audit write) into
//!   OpenTelemetry spans, batched and exported over OTLP/gRPC by a thread of the SDK's own. Only
//!   spans go out, never log events; spans outside a call (the health watcher's KEK checks)
//!   stay out of the traces and in the metrics.
//!
//! Nothing the vault logs or traces holds a PAN: request bodies are never logged, error
//! messages name fields, not values, and span fields are operations, outcomes and ids.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{EnvFilter, FilterFn, dynamic_filter_fn};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::TelemetryConfig;
use crate::metrics::{SpanMetrics, names};

/// How long one export to the collector may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// What [`init`] started; [`Telemetry::shutdown`] flushes the traces still queued.
#[derive(Debug, Default)]
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still queued (bounded by the export timeout) and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.traces
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(error = %error, "traces still queued at stop were not exported");
        }
    }
}

/// Installs the global subscriber: logs and metrics always, traces if `telemetry` names an
/// OTLP endpoint. With traces, call it inside the Tokio runtime the server will run on (the
/// exporter's gRPC channel lives there). A second call (tests) keeps the first subscriber.
///
/// # Errors
/// If the trace exporter cannot be built from the endpoint.
pub fn init(
    format: LogFormat,
    telemetry: Option<&TelemetryConfig>,
) -> Result<Telemetry, opentelemetry_otlp::ExporterBuildError> {
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
    let endpoint = telemetry.and_then(|t| t.otlp_endpoint.as_deref().map(|e| (t, e)));
    let (traces, provider) = match endpoint {
        Some((telemetry, endpoint)) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(EXPORT_TIMEOUT)
                .build()?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    Resource::builder()
                        .with_service_name(telemetry.service_name().to_owned())
                        .build(),
                )
                .build();
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("vaultd"))
                .with_filter(dynamic_filter_fn(|meta, cx| {
                    meta.is_span()
                        && (meta.name() == crate::observe::CALL_SPAN
                            || cx.lookup_current().is_some())
                }));
            crate::trace_context::export_traces();
            (Some(layer), Some(provider))
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry()
        .with(traces)
        .with(logs)
        .with(metrics)
        .try_init();
    if let Some((_, endpoint)) = endpoint {
        tracing::info!(endpoint, "traces exported over OTLP/gRPC");
    }
    Ok(Telemetry { traces: provider })
}
