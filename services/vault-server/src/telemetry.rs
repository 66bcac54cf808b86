//! Logging, metrics and traces: one `tracing` subscriber with a layer for each.
//!
//! - Logs: structured events to stderr, filtered by `RUST_LOG` (default `info`). Inside a call
//!   every line carries the call's span (`observe.rs`): its method, request id and trace id.
//! - Metrics, with `[telemetry] metrics_listen` set: [`SpanMetrics`](crate::metrics::SpanMetrics)
//!   turns the domain's and the store's spans into observations; it sees only those spans (its
//!   own filter), whatever `RUST_LOG` says. (Calls are counted by `observe.rs` either way.)
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
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::subscriber::Interest;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{EnvFilter, FilterFn, LevelFilter, dynamic_filter_fn};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::TelemetryConfig;
use crate::metrics::{SpanMetrics, names, observed};

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

/// Installs the global subscriber: logs always, the metrics layer if `telemetry` names a
/// metrics listener, traces if it names an OTLP endpoint. With traces, call it inside the Tokio runtime the server will run on (the
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
    // Only when something serves the metrics: the spans it reads cost work on every call. Its
    // filter, like the trace layer's, says it wants nothing below DEBUG: without that hint the
    // subscriber's level would be TRACE, and every TRACE record of the TLS and HTTP/2 crates
    // (rustls logs through `log`, per record) would be built and offered to every layer.
    let serves_metrics = telemetry.is_some_and(|t| t.metrics_listen.is_some());
    let metrics = serves_metrics.then(|| {
        SpanMetrics.with_filter(
            FilterFn::new(|meta| observed(meta.name()) || meta.name() == names::GROUP_COMMIT)
                .with_max_level_hint(LevelFilter::DEBUG),
        )
    });
    let endpoint = telemetry.and_then(|t| t.otlp_endpoint.as_deref().map(|e| (t, e)));
    let (traces, provider) = match endpoint {
        Some((telemetry, endpoint)) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(EXPORT_TIMEOUT)
                .build()?;
            // Sampling is decided per call in `trace_context::sampled`, before any span is made
            // for the exporter: what reaches it is to be exported.
            let sampler = Sampler::ParentBased(Box::new(Sampler::AlwaysOn));
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_sampler(sampler)
                .with_resource(
                    Resource::builder()
                        .with_service_name(telemetry.service_name().to_owned())
                        .build(),
                )
                .build();
            // Only the span's name and fields: no source location, thread, target or busy/idle
            // times, which cost work on every poll of every call and say nothing an operator
            // of the vault needs.
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("vaultd"))
                .with_location(false)
                .with_threads(false)
                .with_target(false)
                .with_level(false)
                .with_tracked_inactivity(false)
                .with_filter(
                    // A sampled call's span, and the vault's own spans inside one (the
                    // filtered view sees no unsampled call, so its steps stay out too); per
                    // callsite first, so no other span or event reaches this layer at all.
                    dynamic_filter_fn(|meta, cx| {
                        traced_call(meta)
                            || (observed(meta.name()) && cx.lookup_current().is_some())
                    })
                    .with_max_level_hint(LevelFilter::DEBUG)
                    .with_callsite_filter(|meta| {
                        if meta.is_span() && (traced_call(meta) || observed(meta.name())) {
                            Interest::sometimes()
                        } else {
                            Interest::never()
                        }
                    }),
                );
            crate::trace_context::export_traces(telemetry.trace_sample_ratio());
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

/// A call span sampled for export (`observe.rs` makes it from its own callsite).
fn traced_call(meta: &tracing::Metadata<'_>) -> bool {
    meta.name() == crate::observe::CALL_SPAN
        && meta.fields().field(crate::trace_context::TRACED).is_some()
}
