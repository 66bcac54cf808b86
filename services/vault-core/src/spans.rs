//! The spans the use cases open around their slow steps: a call to the KEK, a store call on a
//! request's path, the durable write of a call's audit record. Each carries an operation from
//! a fixed set and, once done, whether it failed: never a key, a PAN, a token or a request's
//! text. `vaultd` turns them into trace spans and latency metrics. They are DEBUG spans: at the
//! default log level only the metrics and trace layers (which select them by name) make them,
//! and with neither on they cost next to nothing.

use std::future::Future;

use tracing::Instrument as _;

/// A call to the KEK: `operation` is `wrap`, `unwrap` or `check`.
pub const KEK: &str = "kek";
/// A store call on a request's path: `operation` is `card`, `token`, `token_and_key`, `keys`,
/// `insert` or `tally`.
pub const STORE: &str = "store";
/// Making a call's audit record durable: `operation` is `record`.
pub const AUDIT_WRITE: &str = "audit.write";

/// Runs `step` inside a span named `name` (one of the above) and records whether it failed.
pub(crate) async fn step<T, E>(
    span: tracing::Span,
    step: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let result = step.instrument(span.clone()).await;
    span.record("failed", result.is_err());
    result
}

/// The span of a KEK call.
pub(crate) fn kek(operation: &'static str) -> tracing::Span {
    tracing::debug_span!(KEK, operation, failed = tracing::field::Empty)
}

/// The span of a store call.
pub(crate) fn store(operation: &'static str) -> tracing::Span {
    tracing::debug_span!(STORE, operation, failed = tracing::field::Empty)
}

/// The span of an audit record's write.
pub(crate) fn audit_write() -> tracing::Span {
    tracing::debug_span!(
        AUDIT_WRITE,
        operation = "record",
        failed = tracing::field::Empty
    )
}
