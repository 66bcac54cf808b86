//! The layer every gRPC call passes through, before tonic routes it: the call's span (which
//! continues the caller's W3C trace, `trace_context.rs`), and its metrics: in flight, latency,
//! and the count by method and status code, read from the response's `grpc-status` (in the
//! headers of an error, in the trailers of a success or of a stream that failed late). Calls
//! tonic refuses before a handler runs (a message too large, an unknown method) count too.
//!
//! The method label is the call's path only when it names a method the vault serves
//! ([`method_label`]); anything else is `other`, so a caller cannot grow the series.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use hyper::body::Bytes;
use tonic::Code;
use tower::{Layer, Service};
use tracing::Instrument as _;

use crate::metrics::{CallTimer, METRICS};

/// The name of a call's span. Its fields: `rpc` (the method label), `request_id`,
/// `trace_id`, `merchant` (a valid merchant id only, recorded by the handler) and `outcome`
/// (the status code's name, recorded by `grpc.rs::respond`); `traced`
/// ([`crate::trace_context::TRACED`]) on a call whose spans are exported.
pub const CALL_SPAN: &str = "call";

/// Methods served besides `vault.v1`'s.
const OTHER_SERVICES: [&str; 4] = [
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The call's path if the vault serves it, else `other`.
#[must_use]
pub fn method_label(path: &str) -> &'static str {
    vault_proto::METHODS
        .iter()
        .chain(OTHER_SERVICES.iter())
        .find(|known| **known == path)
        .copied()
        .unwrap_or("other")
}

/// Wraps tonic's router in [`Observed`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ObserveLayer;

impl<S> Layer<S> for ObserveLayer {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observed { inner }
    }
}

/// A service whose calls are observed.
#[derive(Debug, Clone)]
pub struct Observed<S> {
    inner: S,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, R> Service<http::Request<B>> for Observed<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Send,
    S::Future: Send + 'static,
    S::Error: 'static,
    R: Body<Data = Bytes> + Send + 'static,
{
    type Response = http::Response<ObservedBody<R>>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_label(request.uri().path());
        let incoming = crate::trace_context::incoming(request.headers());
        // Two callsites: only the traced one reaches the trace layer (`telemetry.rs`), so a
        // call that is not sampled costs that layer nothing, nor do the spans inside it.
        let span = if crate::trace_context::sampled(incoming.as_ref()) {
            tracing::info_span!(
                CALL_SPAN,
                rpc = method,
                traced = true,
                request_id = tracing::field::Empty,
                trace_id = tracing::field::Empty,
                merchant = tracing::field::Empty,
                outcome = tracing::field::Empty,
            )
        } else {
            tracing::info_span!(
                CALL_SPAN,
                rpc = method,
                request_id = tracing::field::Empty,
                trace_id = tracing::field::Empty,
                merchant = tracing::field::Empty,
                outcome = tracing::field::Empty,
            )
        };
        crate::trace_context::continue_trace(&span, incoming.as_ref());
        let timer = METRICS.call_started(method);
        let call = self.inner.call(request).instrument(span);
        Box::pin(async move {
            let response = call.await?;
            let early = status_code(response.headers());
            Ok(response.map(|body| ObservedBody {
                inner: body,
                timer: Some(timer),
                early,
            }))
        })
    }
}

/// The `grpc-status` in `headers`, by name.
fn status_code(headers: &http::HeaderMap) -> Option<&'static str> {
    let value = headers.get("grpc-status")?;
    let code = value.to_str().ok()?.parse::<i32>().ok()?;
    Some(vault_client::code_name(Code::from(code)))
}

/// A response body that counts its call once its status is known: from the headers (an
/// error answered at once), from the trailers, or `CANCELLED` if the body is dropped first.
#[derive(Debug)]
pub struct ObservedBody<R> {
    inner: R,
    timer: Option<CallTimer>,
    early: Option<&'static str>,
}

impl<R> ObservedBody<R> {
    fn finish(&mut self, code: &'static str) {
        if let Some(timer) = self.timer.take() {
            timer.finish(code);
        }
    }
}

impl<R> Body for ObservedBody<R>
where
    R: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = R::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_code) {
                    self.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish("UNKNOWN"),
            Poll::Ready(None) => {
                let code = self.early.unwrap_or("UNKNOWN");
                self.finish(code);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<R> Drop for ObservedBody<R> {
    fn drop(&mut self) {
        // A trailers-only answer (every error a handler returns) may never be polled to its
        // end: its status is already known.
        if let Some(code) = self.early {
            self.finish(code);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_served_methods_are_labels() {
        assert_eq!(
            method_label("/vault.v1.TokenService/Tokenize"),
            "/vault.v1.TokenService/Tokenize"
        );
        assert_eq!(
            method_label("/vault.v1.AuditService/Export"),
            "/vault.v1.AuditService/Export"
        );
        assert_eq!(
            method_label("/grpc.health.v1.Health/Check"),
            "/grpc.health.v1.Health/Check"
        );
        assert_eq!(
            method_label("/vault.v1.TokenService/4111111111111111"),
            "other"
        );
        assert_eq!(method_label(""), "other");
        assert_eq!(vault_proto::METHODS.len(), 21);
    }
}
