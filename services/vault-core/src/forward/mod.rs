//! Forwarding: a card sent to an approved payment processor without the caller ever seeing it.
//!
//! - `spec.rs`: a destination as proposed ([`DestinationSpec`], its canonical JSON and
//!   fingerprint) and as used ([`Destination`]);
//! - `template.rs`: request bodies with the card and the caller's variables, escaped;
//! - `path.rs`: the call's path and the approved patterns;
//! - `mask.rs`: the card masked in the processor's answer;
//! - `ports.rs`: [`Egress`] (the store's part, [`DestinationStore`], is in `crate::ports`);
//! - `service.rs`: the Forward use case and its two audit records;
//! - `admin.rs`: destinations proposed, approved and revoked under dual control.

pub mod admin;
pub mod mask;
pub mod path;
pub mod ports;
mod service;
pub mod spec;
pub mod template;

pub use crate::ports::{DestinationStore, ForwardInFlight, StoredDestination};
pub use ports::{Egress, EgressFailure, OutboundRequest, ProcessorResponse};
pub(crate) use service::Forwards;
pub use service::{FORWARDED_TOKENS_SCOPE, ForwardCommand, Forwarded};
pub use spec::{ContentType, Destination, DestinationSpec, Method, TemplateSpec};

/// The egress of a vault built without one: forwarding is off. Every proposal is refused and
/// every forward fails before anything is sent.
#[derive(Debug, Clone, Copy)]
pub struct NoEgress;

#[async_trait::async_trait]
impl Egress for NoEgress {
    fn check(&self, _spec: &DestinationSpec) -> Result<(), crate::InvalidArgument> {
        Err(crate::InvalidArgument {
            field: "spec",
            problem: "forwarding is not configured in this vault",
        })
    }

    async fn send(&self, _request: OutboundRequest) -> Result<ProcessorResponse, EgressFailure> {
        Err(EgressFailure::Misconfigured)
    }
}
