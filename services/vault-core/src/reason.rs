//! The reason a caller gives for detokenizing; it is audited.

use crate::error::InvalidArgument;
use crate::pan::{CARD_LIKE, contains_card_number};

/// Longest reason, in characters.
pub const MAX_REASON_CHARS: usize = 256;

/// Why a caller needs a PAN: 1 to 256 printable characters, not blank, holding no card number
/// (it is stored in the audit log, where no PAN may ever go).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason(String);

impl Reason {
    /// Parses a reason a caller sent: its shape, as [`Reason::from_stored`] checks it, and then
    /// the card-number rule ([`crate::pan::contains_card_number`]).
    ///
    /// # Errors
    /// An [`InvalidArgument`] naming `field`; [`CARD_LIKE`] when only the card-number rule
    /// refused it.
    pub fn parse(field: &'static str, input: &str) -> Result<Self, InvalidArgument> {
        let reason = Self::from_stored(field, input)?;
        if contains_card_number(input) {
            return Err(InvalidArgument {
                field,
                problem: CARD_LIKE,
            });
        }
        Ok(reason)
    }

    /// Reads back a reason the store holds (a shred request's), checking its shape only: 1 to
    /// 256 characters, not blank, no control characters. It was checked against the
    /// card-number rule when it was given, and a rule made stricter or configured otherwise
    /// since must not make the request unreadable.
    ///
    /// # Errors
    /// An [`InvalidArgument`] naming `field`.
    pub fn from_stored(field: &'static str, input: &str) -> Result<Self, InvalidArgument> {
        let invalid = |problem| InvalidArgument { field, problem };
        if input.trim().is_empty() {
            return Err(invalid("is required"));
        }
        if input.chars().count() > MAX_REASON_CHARS {
            return Err(invalid("must be at most two hundred fifty-six characters"));
        }
        if input.chars().any(char::is_control) {
            return Err(invalid("must not contain control characters"));
        }
        Ok(Self(input.to_owned()))
    }

    /// The reason as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_like_reasons_are_refused_but_stored_ones_read_back() {
        let card_like = "refund card 4111 1111 1111 1111";
        let err = Reason::parse("reason", card_like).unwrap_err();
        assert_eq!(err.to_string(), "reason: must not contain a card number");
        assert_eq!(err.problem, CARD_LIKE);
        assert_eq!(
            Reason::from_stored("reason", card_like).unwrap().as_str(),
            card_like
        );
        let long = "x".repeat(MAX_REASON_CHARS + 1);
        for bad in ["", "   ", "line\nbreak", long.as_str()] {
            let err = Reason::parse("reason", bad).unwrap_err();
            assert_ne!(err.problem, CARD_LIKE, "{bad:?}");
            assert_eq!(Reason::from_stored("reason", bad).unwrap_err(), err);
        }
        assert!(Reason::parse("reason", "merchant offboarded").is_ok());
    }
}
