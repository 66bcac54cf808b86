//! The forward proxy's way out: [`Egress`] sends one rendered request to an approved
//! processor. The domain decides what may be sent; the adapter only carries it. (The store's
//! side, destinations and forwards in flight, is `crate::ports::DestinationStore`.)

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use zeroize::Zeroizing;

pub use crate::error::EgressFailure;
use crate::forward::spec::{Destination, DestinationSpec, Method};

/// One request for an approved destination, rendered and checked by the domain. The body holds
/// the card number; it is zeroized when dropped.
pub struct OutboundRequest {
    /// The approved destination (its URL, trust anchor, pin, client identity, limits).
    pub destination: Arc<Destination>,
    /// The method, one the destination allows.
    pub method: Method,
    /// The path below the destination's base URL, checked against its patterns.
    pub path: String,
    /// Headers to send: the template's content type and the caller's allowed headers.
    pub headers: Vec<(String, String)>,
    /// The rendered body.
    pub body: Zeroizing<Vec<u8>>,
    /// What is left of the destination's timeout once the first audit record is durable: the
    /// exchange ends within it, so the forward's answer comes before the deadline its
    /// in-flight mark names.
    pub timeout: std::time::Duration,
}

impl std::fmt::Debug for OutboundRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundRequest")
            .field("destination", &self.destination.spec().name)
            .field("method", &self.method)
            .field("path", &self.path)
            .field("body", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// A processor's answer, as received (the domain masks it before it leaves the vault). Headers
/// are those the destination allows to be returned, lower-case names.
pub struct ProcessorResponse {
    /// The HTTP status.
    pub status: u16,
    /// The allowed headers, in the order received.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, at most the destination's cap; zeroized when dropped (it may echo the card).
    pub body: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ProcessorResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessorResponse")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// Sends rendered requests to approved destinations over TLS: only to the destination's base
/// URL, trusting only its trust anchor (and pin), no redirects followed, `Accept-Encoding:
/// identity`, compressed answers refused, at most the destination's cap read, within its
/// timeout.
#[async_trait]
pub trait Egress: Send + Sync {
    /// Checks that a proposed spec's TLS settings can be used (its trust anchor parses, its
    /// client identity is configured). `Err` names the field and the problem, no value.
    fn check(&self, spec: &DestinationSpec) -> Result<(), crate::InvalidArgument>;

    /// Sends one request and reads its answer.
    async fn send(&self, request: OutboundRequest) -> Result<ProcessorResponse, EgressFailure>;
}

/// How long a forward may take at most, whatever a destination says.
pub const MAX_FORWARD_TIMEOUT: Duration = Duration::from_secs(60);
