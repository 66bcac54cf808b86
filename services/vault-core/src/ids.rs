//! Identifiers: merchants, callers, requests.

use std::fmt;

use crate::error::InvalidArgument;
use crate::pan::contains_card_number;

/// Longest merchant id, in characters.
pub const MAX_MERCHANT_ID: usize = 64;

/// A merchant: 1 to 64 characters from `[A-Za-z0-9._:-]`, holding no card number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MerchantId(String);

impl MerchantId {
    /// Parses a merchant id.
    ///
    /// # Errors
    /// An [`InvalidArgument`] naming `field`.
    pub fn parse(field: &'static str, input: &str) -> Result<Self, InvalidArgument> {
        let invalid = |problem| InvalidArgument { field, problem };
        if input.is_empty() {
            return Err(invalid("is required"));
        }
        if input.len() > MAX_MERCHANT_ID {
            return Err(invalid("must be at most sixty-four characters"));
        }
        if !input
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        {
            return Err(invalid("may contain only letters, digits and . _ : -"));
        }
        if contains_card_number(input) {
            return Err(invalid("must not contain a card number"));
        }
        Ok(Self(input.to_owned()))
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The owner of the vault's own keys (the audit signing key): `~vault`, a name
    /// [`MerchantId::parse`] refuses, so no request can name it.
    #[must_use]
    pub fn vault_owner() -> Self {
        Self(VAULT_OWNER.to_owned())
    }

    /// A merchant id read back from the store: a valid one, or the vault's own.
    ///
    /// # Errors
    /// An [`InvalidArgument`] naming `field`.
    pub fn from_stored(field: &'static str, input: &str) -> Result<Self, InvalidArgument> {
        if input == VAULT_OWNER {
            Ok(Self::vault_owner())
        } else {
            Self::parse(field, input)
        }
    }
}

/// See [`MerchantId::vault_owner`].
const VAULT_OWNER: &str = "~vault";

impl fmt::Display for MerchantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The authenticated identity of a caller: its certificate's SPIFFE URI SAN, or else its subject
/// CN. Set by the transport, never by the request body.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallerId(String);

impl CallerId {
    /// Wraps an identity the transport has authenticated.
    #[must_use]
    pub fn new(identity: impl Into<String>) -> Self {
        Self(identity.into())
    }

    /// The identity as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CallerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who is calling, from where, and under which request id: everything an audit record needs
/// about a call that the request body does not carry.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The authenticated caller.
    pub caller: CallerId,
    /// The peer's socket address, when the transport knows it.
    pub peer: Option<String>,
    /// A unique id for this call, returned to the caller and written to the audit record.
    pub request_id: String,
}

/// A fresh request id: a random UUID.
#[must_use]
pub fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
