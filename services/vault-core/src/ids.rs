//! Identifiers: merchants, callers, requests.

use std::fmt;

use crate::invalid::InvalidArgument;
use crate::pan::{CARD_LIKE, contains_card_number};

/// Longest merchant id, in characters.
pub const MAX_MERCHANT_ID: usize = 64;

/// A merchant: 1 to 64 characters from `[A-Za-z0-9._:-]`, holding no card number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MerchantId(String);

impl MerchantId {
    /// Parses a merchant id a caller sent: its shape, as [`MerchantId::parse_shape`] checks
    /// it, and then the card-number rule ([`crate::pan::contains_card_number`]).
    ///
    /// # Errors
    /// An [`InvalidArgument`] naming `field`. When the shape is right and only the card-number
    /// rule refused the id, its problem is [`CARD_LIKE`]: the merchant may exist from before
    /// the rule refused such ids, and the caller may look it up with
    /// [`MerchantId::parse_shape`] and accept it if the store knows it.
    pub fn parse(field: &'static str, input: &str) -> Result<Self, InvalidArgument> {
        let id = Self::parse_shape(field, input)?;
        if contains_card_number(input) {
            return Err(InvalidArgument {
                field,
                problem: CARD_LIKE,
            });
        }
        Ok(id)
    }

    /// Checks a merchant id's shape only, without the card-number rule: 1 to 64 characters
    /// from `[A-Za-z0-9._:-]`. For ids the store already holds, and for looking up an id
    /// [`MerchantId::parse`] refused with [`CARD_LIKE`]; never to accept a new merchant id.
    ///
    /// # Errors
    /// An [`InvalidArgument`] naming `field`.
    pub fn parse_shape(field: &'static str, input: &str) -> Result<Self, InvalidArgument> {
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

    /// A merchant id read back from the store: one of the right shape
    /// ([`MerchantId::parse_shape`], not the card-number rule, so that a merchant the rule
    /// would refuse today keeps its tokens and keys), or the vault's own.
    ///
    /// # Errors
    /// An [`InvalidArgument`] naming `field`.
    pub fn from_stored(field: &'static str, input: &str) -> Result<Self, InvalidArgument> {
        if input == VAULT_OWNER {
            Ok(Self::vault_owner())
        } else {
            Self::parse_shape(field, input)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_like_ids_are_refused_distinguishably_but_read_back() {
        for card_like in [
            "mid-4111111111111111",
            "acme:4111-1111-1111-1111",
            "4111a1111b1111c1111",
            "m_41111111111111111225",
        ] {
            let err = MerchantId::parse("merchant_id", card_like).unwrap_err();
            assert_eq!(err.field, "merchant_id");
            assert_eq!(err.problem, CARD_LIKE, "{card_like}");
            let shaped = MerchantId::parse_shape("merchant_id", card_like).unwrap();
            assert_eq!(shaped.as_str(), card_like);
            assert_eq!(
                MerchantId::from_stored("merchant_id", card_like).unwrap(),
                shaped
            );
        }
        let long = "m".repeat(MAX_MERCHANT_ID + 1);
        for bad in ["", "acme shop", "~vault", "caf\u{e9}", long.as_str()] {
            let err = MerchantId::parse("merchant_id", bad).unwrap_err();
            assert_ne!(err.problem, CARD_LIKE, "{bad:?}");
            assert_eq!(
                MerchantId::parse_shape("merchant_id", bad).unwrap_err(),
                err,
                "{bad:?}"
            );
        }
        assert!(MerchantId::from_stored("merchant_id", "acme shop").is_err());
        assert_eq!(
            MerchantId::from_stored("merchant_id", "~vault").unwrap(),
            MerchantId::vault_owner()
        );
        assert_eq!(
            MerchantId::parse("merchant_id", "acme-eu-12").unwrap(),
            MerchantId::parse_shape("merchant_id", "acme-eu-12").unwrap()
        );
    }
}
