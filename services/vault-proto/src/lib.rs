//! Generated gRPC types and service stubs for `vault.v1`, plus the descriptor set for server
//! reflection.
//!
//! Invariant: no message that carries a PAN prints it. prost's derived `Debug` is switched off for
//! those messages in `build.rs` (`PAN_BEARING`) and replaced here by a redacted one. The messages
//! that hold a PAN also zeroize it when dropped: a Detokenize response once tonic has encoded it,
//! a Tokenize request once the handler is done with it (take the field out with
//! `std::mem::take`; a type with `Drop` cannot be moved out of).

#![allow(clippy::all, clippy::pedantic, missing_docs)]

use std::fmt;

/// The `vault.v1` package.
#[cfg(feature = "audit")]
pub mod audit;

pub mod v1 {
    tonic::include_proto!("vault.v1");
}

/// Encoded `FileDescriptorSet` of `vault.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("vault_descriptor");

/// The gRPC path of every `vault.v1` method (`/vault.v1.TokenService/Tokenize`), generated from
/// the same descriptors.
pub const METHODS: &[&str] = include!(concat!(env!("OUT_DIR"), "/vault_methods.rs"));

const REDACTED: &str = "<redacted>";

/// The PAN fields are wiped (the whole allocation, not only the length) when the message goes.
macro_rules! zeroize_pan_on_drop {
    ($($message:ty),+) => {$(
        impl Drop for $message {
            fn drop(&mut self) {
                zeroize::Zeroize::zeroize(&mut self.pan);
            }
        }
    )+};
}

zeroize_pan_on_drop!(v1::TokenizeRequest, v1::BatchCard, v1::DetokenizeResponse);

impl v1::DetokenizeResponse {
    /// The PAN, taken out of the response (which zeroizes what is left of it when dropped).
    #[must_use]
    pub fn take_pan(mut self) -> String {
        std::mem::take(&mut self.pan)
    }
}

impl fmt::Debug for v1::TokenizeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenizeRequest")
            .field("merchant_id_len", &self.merchant_id.len())
            .field("pan", &REDACTED)
            .field("exp_month", &self.exp_month)
            .field("exp_year", &self.exp_year)
            .field("token_format", &self.token_format)
            .finish()
    }
}

impl fmt::Debug for v1::TokenizeBatchRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenizeBatchRequest")
            .field("merchant_id_len", &self.merchant_id.len())
            .field("cards", &self.cards)
            .field("token_format", &self.token_format)
            .finish()
    }
}

impl fmt::Debug for v1::BatchCard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchCard")
            .field("pan", &REDACTED)
            .field("exp_month", &self.exp_month)
            .field("exp_year", &self.exp_year)
            .finish()
    }
}

impl fmt::Debug for v1::DetokenizeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DetokenizeRequest")
            .field("merchant_id_len", &self.merchant_id.len())
            .field("token_len", &self.token.len())
            .field("reason", &REDACTED)
            .finish()
    }
}

impl fmt::Debug for v1::DetokenizeResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DetokenizeResponse")
            .field("pan", &REDACTED)
            .field("expiry", &self.expiry)
            .finish()
    }
}

/// Audit filters are free text a careless auditor might put a PAN in: lengths only.
impl fmt::Debug for v1::ReadRecordsRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadRecordsRequest")
            .field("from_len", &self.from.len())
            .field("to_len", &self.to.len())
            .field("merchant_id_len", &self.merchant_id.len())
            .field("caller_len", &self.caller.len())
            .field("event_len", &self.event.len())
            .field("outcome_len", &self.outcome.len())
            .finish()
    }
}

/// `before` is free text: its length only.
impl fmt::Debug for v1::PruneRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PruneRequest")
            .field("before_len", &self.before.len())
            .field("export_first_checkpoint", &self.export_first_checkpoint)
            .field("export_last_checkpoint", &self.export_last_checkpoint)
            .finish_non_exhaustive()
    }
}

/// Variables and headers are free text; the answer is a processor's, masked but not ours to
/// print: sizes only.
impl fmt::Debug for v1::ForwardRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForwardRequest")
            .field("destination_len", &self.destination.len())
            .field("variables", &self.variables.len())
            .field("headers", &self.headers.len())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for v1::ForwardResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForwardResponse")
            .field("status", &self.status)
            .field("headers", &self.headers.len())
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl fmt::Debug for v1::ResponseHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseHeader")
            .field("name", &self.name)
            .field("value", &REDACTED)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::v1;

    const PAN: &str = "4111111111111111";

    #[test]
    fn pan_bearing_messages_redact_their_debug() {
        let request = v1::TokenizeRequest {
            merchant_id: "m".into(),
            pan: PAN.into(),
            ..Default::default()
        };
        let response = v1::DetokenizeResponse {
            pan: PAN.into(),
            expiry: None,
        };
        let detokenize = v1::DetokenizeRequest {
            merchant_id: PAN.into(),
            token: PAN.into(),
            reason: PAN.into(),
        };
        let batch = v1::TokenizeBatchRequest {
            merchant_id: PAN.into(),
            cards: vec![v1::BatchCard {
                pan: PAN.into(),
                ..Default::default()
            }],
            token_format: 0,
        };
        for printed in [
            format!("{batch:?}"),
            format!("{batch:#?}"),
            format!("{detokenize:?}"),
            format!("{request:?}"),
            format!("{request:#?}"),
            format!("{response:?}"),
            format!("{response:#?}"),
        ] {
            assert!(!printed.contains(PAN), "{printed}");
            assert!(printed.contains("<redacted>"), "{printed}");
        }
        let read = v1::ReadRecordsRequest {
            from: PAN.into(),
            to: PAN.into(),
            merchant_id: PAN.into(),
            caller: PAN.into(),
            event: PAN.into(),
            outcome: PAN.into(),
        };
        let prune = v1::PruneRequest {
            before: PAN.into(),
            ..Default::default()
        };
        for printed in [format!("{read:?}"), format!("{prune:#?}")] {
            assert!(!printed.contains(PAN), "{printed}");
        }
    }
}
