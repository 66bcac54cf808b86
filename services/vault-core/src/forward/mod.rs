//! Forwarding: a card sent to an approved payment processor without the caller ever seeing it.
//!
//! - `spec.rs`: a destination as proposed ([`DestinationSpec`], its canonical JSON and
//!   fingerprint) and as used ([`Destination`]);
//! - `template.rs`: request bodies with the card and the caller's variables, escaped;
//! - `path.rs`: the call's path and the approved patterns;
//! - `mask.rs`: the card masked in the processor's answer;
//! - `ports.rs`: [`DestinationStore`] and [`Egress`].

pub mod mask;
pub mod path;
pub mod ports;
pub mod spec;
pub mod template;

pub use ports::{
    DestinationStore, Egress, EgressFailure, ForwardInFlight, OutboundRequest, ProcessorResponse,
    StoredDestination,
};
pub use spec::{ContentType, Destination, DestinationSpec, Method, TemplateSpec};
