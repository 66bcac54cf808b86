//! Every series `vaultd` exports, defined once, and their Prometheus text (served by
//! `probe.rs` on `[telemetry] metrics_listen`).
//!
//! Where the values come from:
//! - calls (count by method and status code, latency, in flight): `observe.rs`, the layer every
//!   gRPC call passes through, so calls tonic refuses before a handler runs count too;
//! - rate-limit refusals and enumeration-guard trips: `grpc.rs::respond`, from the domain's
//!   error;
//! - group commits, KEK calls, audit writes, store calls: the spans and events the domain and
//!   the store emit through `tracing` (they know nothing of metrics), turned into observations
//!   by [`SpanMetrics`], a `tracing` layer;
//! - the key cache, TLS handshake refusals, the store's pools and readiness: read at scrape
//!   time from their owners ([`Sources`]).
//!
//! Labels take values from fixed sets only (methods from `vault_proto::METHODS`, status code
//! names, operations, refusal reasons): no merchant, token, caller or free text, so an attacker
//! cannot grow the series and no label can carry a PAN.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use vault_core::keyring::KeyRing;

use crate::tls::RefusalCounts;

/// Span and event names the domain and the store emit, and what becomes of them here.
pub mod names {
    pub use vault_core::spans::{AUDIT_WRITE, KEK, STORE};
    pub use vault_store::spans::{GROUP_COMMIT, GROUP_COMMIT_WAIT};
}

/// The process's series.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// A call's labels: the method (one of a fixed set) and the gRPC status code's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// `/vault.v1.TokenService/Tokenize`, or `other`.
    pub method: &'static str,
    /// `OK`, `INVALID_ARGUMENT`, ...
    pub code: &'static str,
}

/// A label set of one method.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// As in [`CallLabels`].
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    operation: &'static str,
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    operation: &'static str,
    outcome: &'static str,
}

/// The process's series (one [`METRICS`]).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    call_seconds: Histograms<MethodLabels>,
    in_flight: Family<MethodLabels, Gauge>,
    refusals: Family<RefusalLabels, Counter>,
    guard_trips: Counter,
    commit_writes: Histogram,
    commit_seconds: Histograms<StepLabels>,
    commit_wait_seconds: Histogram,
    kek_seconds: Histograms<StepLabels>,
    audit_seconds: Histograms<StepLabels>,
    store_seconds: Histograms<StepLabels>,
    sources: Arc<OnceLock<Sources>>,
}

/// Latency buckets from 50 µs to about 13 s.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 19))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("vault");
        let calls = Family::default();
        registry.register(
            "grpc_calls",
            "gRPC calls finished, by method and status code",
            calls.clone(),
        );
        let call_seconds = Family::new_with_constructor(seconds as fn() -> Histogram);
        registry.register(
            "grpc_call_duration_seconds",
            "gRPC call latency, from the request's headers to the response's end",
            call_seconds.clone(),
        );
        let in_flight = Family::default();
        registry.register(
            "grpc_calls_in_flight",
            "gRPC calls started and not yet finished",
            in_flight.clone(),
        );
        let refusals = Family::default();
        registry.register(
            "throttled_calls",
            "calls refused RESOURCE_EXHAUSTED, by operation and limit (rate_limit, \
             enumeration_guard, new_merchants, forwarded_tokens)",
            refusals.clone(),
        );
        let guard_trips = Counter::default();
        registry.register(
            "enumeration_guard_trips",
            "calls that spent an enumeration-guard bucket (a caller brought too many different \
             cards with the same shown digits to one merchant)",
            guard_trips.clone(),
        );
        let commit_writes = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        registry.register(
            "group_commit_writes",
            "writes per group commit (one transaction and one sync)",
            commit_writes.clone(),
        );
        let commit_seconds = Family::new_with_constructor(seconds as fn() -> Histogram);
        registry.register(
            "group_commit_duration_seconds",
            "time a group commit's transaction took, by outcome",
            commit_seconds.clone(),
        );
        let commit_wait_seconds = seconds();
        registry.register(
            "group_commit_wait_seconds",
            "time a call waited for its write to be committed and durable",
            commit_wait_seconds.clone(),
        );
        let kek_seconds = Family::new_with_constructor(seconds as fn() -> Histogram);
        registry.register(
            "kek_call_duration_seconds",
            "calls to the key-encryption key (HSM, Transit or dev file), by operation and \
             outcome (ok or error)",
            kek_seconds.clone(),
        );
        let audit_seconds = Family::new_with_constructor(seconds as fn() -> Histogram);
        registry.register(
            "audit_write_duration_seconds",
            "time to make a call's audit record durable, by outcome",
            audit_seconds.clone(),
        );
        let store_seconds = Family::new_with_constructor(seconds as fn() -> Histogram);
        registry.register(
            "store_call_duration_seconds",
            "the store's calls on a request's path (a write includes its group-commit wait), by \
             operation and outcome",
            store_seconds.clone(),
        );
        let sources = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(Scraped(Arc::clone(&sources))));
        Self {
            registry,
            calls,
            call_seconds,
            in_flight,
            refusals,
            guard_trips,
            commit_writes,
            commit_seconds,
            commit_wait_seconds,
            kek_seconds,
            audit_seconds,
            store_seconds,
            sources,
        }
    }

    /// Names where the series read at scrape time come from. The first call wins.
    pub fn attach(&self, sources: Sources) {
        let _ = self.sources.set(sources);
    }

    /// A call to `method` started; the returned guard ends it.
    pub fn call_started(&'static self, method: &'static str) -> CallTimer {
        self.in_flight.get_or_create(&MethodLabels { method }).inc();
        CallTimer {
            metrics: self,
            method,
            started: Instant::now(),
        }
    }

    /// A call refused by one of the abuse limits (`limit`: `rate_limit`, `enumeration_guard`,
    /// `new_merchants`, `forwarded_tokens`); `tripped` if it spent an enumeration-guard bucket.
    pub fn throttled(&self, operation: &'static str, limit: &'static str, tripped: bool) {
        self.refusals
            .get_or_create(&RefusalLabels { operation, limit })
            .inc();
        if tripped {
            self.guard_trips.inc();
        }
    }

    /// The series as Prometheus (OpenMetrics) text.
    ///
    /// # Errors
    /// Never in practice: writing to a `String` does not fail.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    fn span_closed(&self, name: &str, seconds: f64, fields: &SpanFields) {
        let labels = StepLabels {
            operation: fields.operation,
            outcome: fields.outcome(),
        };
        let family = match name {
            names::KEK => &self.kek_seconds,
            names::AUDIT_WRITE => &self.audit_seconds,
            names::STORE => &self.store_seconds,
            names::GROUP_COMMIT_WAIT => {
                self.commit_wait_seconds.observe(seconds);
                return;
            }
            _ => return,
        };
        family.get_or_create(&labels).observe(seconds);
    }

    fn group_committed(&self, fields: &SpanFields) {
        if let Some(writes) = fields.writes {
            #[allow(clippy::cast_precision_loss)] // a batch is at most a few thousand writes
            self.commit_writes.observe(writes as f64);
        }
        if let Some(micros) = fields.micros {
            #[allow(clippy::cast_precision_loss)]
            let seconds = micros as f64 / 1e6;
            self.commit_seconds
                .get_or_create(&StepLabels {
                    operation: "commit",
                    outcome: fields.outcome(),
                })
                .observe(seconds);
        }
    }
}

/// Ends a call begun with [`Metrics::call_started`]: counts it with its status code and its
/// latency. Dropped without [`CallTimer::finish`] (the client went away), it counts the call
/// as `CANCELLED`.
#[derive(Debug)]
pub struct CallTimer {
    metrics: &'static Metrics,
    method: &'static str,
    started: Instant,
}

impl CallTimer {
    /// The call ended with status `code` (its name, e.g. `OK`).
    pub fn finish(self, code: &'static str) {
        self.end(code);
        std::mem::forget(self);
    }

    fn end(&self, code: &'static str) {
        let method = self.method;
        self.metrics
            .in_flight
            .get_or_create(&MethodLabels { method })
            .dec();
        self.metrics
            .call_seconds
            .get_or_create(&MethodLabels { method })
            .observe(self.started.elapsed().as_secs_f64());
        self.metrics
            .calls
            .get_or_create(&CallLabels { method, code })
            .inc();
    }
}

impl Drop for CallTimer {
    fn drop(&mut self) {
        self.end("CANCELLED");
    }
}

/// What the series read at scrape time come from.
#[derive(Clone)]
pub struct Sources {
    /// The key ring (its unwrapped-key cache).
    pub keys: Arc<KeyRing>,
    /// Refused TLS connections, by reason, since start.
    pub tls_refusals: Arc<RefusalCounts>,
    /// The store's connection pools now.
    pub pools: Arc<dyn Fn() -> Vec<vault_store::PoolUsage> + Send + Sync>,
    /// Whether the store and the KEK answered the last health check.
    pub ready: Arc<Readiness>,
}

/// Whether the store and the KEK answered the last health check (`app.rs`'s watcher).
#[derive(Debug, Default)]
pub struct Readiness {
    store: AtomicBool,
    kek: AtomicBool,
}

impl Readiness {
    /// Records the last check.
    pub fn set(&self, store_up: bool, kek_up: bool) {
        self.store.store(store_up, Ordering::Relaxed);
        self.kek.store(kek_up, Ordering::Relaxed);
    }

    /// (store up, KEK up).
    #[must_use]
    pub fn state(&self) -> (bool, bool) {
        (
            self.store.load(Ordering::Relaxed),
            self.kek.load(Ordering::Relaxed),
        )
    }
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sources")
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: &'static str,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DependencyLabel {
    dependency: &'static str,
}

/// The series read at scrape time, once [`Metrics::attach`] has named their sources.
#[derive(Debug)]
struct Scraped(Arc<OnceLock<Sources>>);

impl Collector for Scraped {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        match self.0.get() {
            Some(sources) => sources.encode(encoder),
            None => Ok(()),
        }
    }
}

impl Sources {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let cache = self.keys.cache_stats();
        counter(
            &mut encoder,
            "key_cache_hits",
            "unwrapped-key lookups answered from the cache",
            cache.hits,
        )?;
        counter(
            &mut encoder,
            "key_cache_misses",
            "unwrapped-key lookups that asked the KEK",
            cache.misses,
        )?;
        let entries = ConstGauge::new(i64::try_from(cache.entries).unwrap_or(i64::MAX));
        entries.encode(encoder.encode_descriptor(
            "key_cache_entries",
            "unwrapped keys held now",
            None,
            entries.metric_type(),
        )?)?;

        let mut family = encoder.encode_descriptor(
            "tls_handshake_refusals",
            "connections refused before a caller was known, by reason",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (reason, total) in self.tls_refusals.totals() {
            ConstCounter::new(total).encode(family.encode_family(&ReasonLabel { reason })?)?;
        }

        let mut family = encoder.encode_descriptor(
            "store_connections",
            "the store's connections, by pool and state (idle, in_use)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for usage in (self.pools)() {
            for (state, value) in [("idle", usage.idle), ("in_use", usage.in_use)] {
                ConstGauge::new(i64::from(value)).encode(family.encode_family(&PoolLabels {
                    pool: usage.pool,
                    state,
                })?)?;
            }
        }

        let (store_up, kek_up) = self.ready.state();
        let mut family = encoder.encode_descriptor(
            "dependency_up",
            "1 while the dependency answered the last health check (checked every second)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (dependency, up) in [("store", store_up), ("kek", kek_up)] {
            ConstGauge::new(i64::from(up))
                .encode(family.encode_family(&DependencyLabel { dependency })?)?;
        }
        Ok(())
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &'static str,
    help: &'static str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let counter = ConstCounter::new(value);
    counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)
}

/// The `tracing` layer that turns the domain's and the store's spans and events
/// ([`names`]) into observations of [`METRICS`]. Other spans and events pass untouched.
#[derive(Debug, Default)]
pub struct SpanMetrics;

/// The fields of a span or event this layer reads.
#[derive(Debug, Default)]
struct SpanFields {
    operation: &'static str,
    failed: bool,
    writes: Option<u64>,
    micros: Option<u64>,
    started: Option<Instant>,
}

impl SpanFields {
    fn outcome(&self) -> &'static str {
        if self.failed { "error" } else { "ok" }
    }
}

impl Visit for SpanFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "operation" {
            self.operation = known_operation(value);
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        match field.name() {
            "ok" => self.failed = !value,
            "failed" => self.failed = value,
            _ => {}
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "writes" => self.writes = Some(value),
            "micros" => self.micros = Some(value),
            _ => {}
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record_u64(field, u64::try_from(value).unwrap_or(0));
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.record_u64(field, u64::try_from(value).unwrap_or(u64::MAX));
    }

    fn record_debug(&mut self, _field: &Field, _value: &dyn std::fmt::Debug) {}
}

/// The operation names the domain and the store use; anything else is `other`, so a label
/// never takes a value from outside this list.
fn known_operation(value: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "wrap",
        "unwrap",
        "check",
        "token",
        "card",
        "keys",
        "token_and_key",
        "insert",
        "tally",
        "record",
        "commit",
    ];
    KNOWN
        .iter()
        .find(|known| **known == value)
        .copied()
        .unwrap_or("other")
}

/// True for the spans the domain and the store open around their steps ([`names`]).
#[must_use]
pub fn observed(name: &str) -> bool {
    matches!(
        name,
        names::KEK | names::AUDIT_WRITE | names::STORE | names::GROUP_COMMIT_WAIT
    )
}

impl<S> Layer<S> for SpanMetrics
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if !observed(attrs.metadata().name()) {
            return;
        }
        let mut fields = SpanFields {
            started: Some(Instant::now()),
            ..SpanFields::default()
        };
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &tracing::span::Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<SpanFields>()
        {
            values.record(fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().name() == names::GROUP_COMMIT {
            let mut fields = SpanFields::default();
            event.record(&mut fields);
            METRICS.group_committed(&fields);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let name = span.metadata().name();
        if let Some(fields) = span.extensions_mut().remove::<SpanFields>()
            && let Some(started) = fields.started
        {
            METRICS.span_closed(name, started.elapsed().as_secs_f64(), &fields);
        }
    }
}
