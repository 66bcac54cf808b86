//! The reason a caller gives for detokenizing; it is audited.

use crate::error::InvalidArgument;
use crate::pan::contains_card_number;

/// Longest reason, in characters.
pub const MAX_REASON_CHARS: usize = 256;

/// Why a caller needs a PAN: 1 to 256 printable characters, not blank, holding no card number
/// (it is stored in the audit log, where no PAN may ever go).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason(String);

impl Reason {
    /// Parses a reason.
    ///
    /// # Errors
    /// An [`InvalidArgument`] naming `field`.
    pub fn parse(field: &'static str, input: &str) -> Result<Self, InvalidArgument> {
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
        if contains_card_number(input) {
            return Err(invalid("must not contain a card number"));
        }
        Ok(Self(input.to_owned()))
    }

    /// The reason as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
