//! Card numbers: parsing, the Luhn check, and the card brand from IIN ranges.

use std::fmt;

use zeroize::Zeroizing;

use crate::error::InvalidArgument;

/// Fewest digits a PAN may have.
pub const MIN_PAN_DIGITS: usize = 12;
/// Most digits a PAN may have.
pub const MAX_PAN_DIGITS: usize = 19;
/// Longest input `Pan::parse` reads before refusing it: 19 digits with a separator between
/// each pair is 37 characters; anything longer cannot be a PAN.
const MAX_PAN_INPUT: usize = 2 * MAX_PAN_DIGITS;

/// A card number: 12 to 19 ASCII digits that pass the Luhn check, separators removed.
///
/// Zeroized on drop. Its `Debug` shows only the brand and length; it has no `Display`.
pub struct Pan(Zeroizing<String>);

impl Pan {
    /// Parses a card number. Spaces and dashes are allowed as separators and are stripped.
    ///
    /// # Errors
    /// An [`InvalidArgument`] naming `field`, whose message never contains the input.
    pub fn parse(field: &'static str, input: &str) -> Result<Self, InvalidArgument> {
        let invalid = |problem| InvalidArgument { field, problem };
        if input.len() > MAX_PAN_INPUT {
            return Err(invalid("is too long to be a card number"));
        }
        let mut digits = Zeroizing::new(String::with_capacity(MAX_PAN_DIGITS));
        for c in input.chars() {
            match c {
                '0'..='9' => digits.push(c),
                ' ' | '-' => {}
                _ => return Err(invalid("must contain only digits, spaces and dashes")),
            }
        }
        if digits.is_empty() {
            return Err(invalid("is required"));
        }
        if !(MIN_PAN_DIGITS..=MAX_PAN_DIGITS).contains(&digits.len()) {
            return Err(invalid("must have twelve to nineteen digits"));
        }
        if !luhn_valid(&digits) {
            return Err(invalid("fails the Luhn check"));
        }
        Ok(Self(digits))
    }

    /// The digits. Handle with care: this is the secret.
    #[must_use]
    pub fn expose_digits(&self) -> &str {
        &self.0
    }

    /// Number of digits.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a PAN has at least 12 digits. Present for clippy's `len_without_is_empty`.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first six digits (the BIN / IIN), which PCI DSS 3.4.1 allows to be shown.
    #[must_use]
    pub fn bin(&self) -> &str {
        self.0.get(..6).unwrap_or_default()
    }

    /// The last four digits, which PCI DSS 3.4.1 allows to be shown.
    #[must_use]
    pub fn last4(&self) -> &str {
        self.0
            .get(self.0.len().saturating_sub(4)..)
            .unwrap_or_default()
    }

    /// The card brand, from the IIN ranges.
    #[must_use]
    pub fn brand(&self) -> Brand {
        Brand::of(&self.0)
    }
}

impl fmt::Debug for Pan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pan")
            .field("brand", &self.brand())
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

/// The Luhn (mod 10) check over a string of ASCII digits. Any other character fails it.
#[must_use]
pub fn luhn_valid(digits: &str) -> bool {
    luhn_sum(digits).is_some_and(|sum| sum % 10 == 0)
}

/// The Luhn sum of a string of ASCII digits, or `None` if it holds anything else.
pub(crate) fn luhn_sum(digits: &str) -> Option<u32> {
    let mut sum = 0;
    for (i, c) in digits.bytes().rev().enumerate() {
        let d = u32::from(c.checked_sub(b'0').filter(|d| *d <= 9)?);
        sum += if i % 2 == 1 {
            let doubled = d * 2;
            if doubled > 9 { doubled - 9 } else { doubled }
        } else {
            d
        };
    }
    Some(sum)
}

/// True if `text` may hold a card number, so that it must not be stored in a field that
/// reaches the audit log (reasons, merchant ids, tokens).
///
/// Digits are read in groups joined by one or two separators (any character that is neither a
/// letter nor a digit: `4111 1111-1111.1111`, `4111  1111 …`). A joined sequence counts if
/// 12 to 19 of its digits, starting at a group boundary, pass the Luhn check, or if it has more
/// than 19 digits at all (a PAN glued to other digits, such as an expiry, cannot be told apart
/// from them). Non-ASCII digits also count: they cannot be checked, so they are refused.
#[must_use]
pub fn contains_card_number(text: &str) -> bool {
    if text.chars().any(|c| c.is_numeric() && !c.is_ascii_digit()) {
        return true;
    }
    // Groups of digits, each with whether it joins the next group (one or two separators).
    let mut groups: Vec<(&str, bool)> = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(|c: char| c.is_ascii_digit()) {
        let tail = rest.get(start..).unwrap_or_default();
        let end = tail
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (digits, after) = tail.split_at(end);
        let separators = after.chars().take_while(|c| !c.is_alphanumeric()).count();
        let joined = (1..=2).contains(&separators)
            && after
                .chars()
                .nth(separators)
                .is_some_and(|c| c.is_ascii_digit());
        groups.push((digits, joined));
        rest = after;
    }
    let mut candidate = String::with_capacity(MAX_PAN_DIGITS + 1);
    for first in 0..groups.len() {
        candidate.clear();
        for (digits, joined) in groups.iter().skip(first) {
            candidate.push_str(digits);
            if candidate.len() > MAX_PAN_DIGITS {
                return true;
            }
            if candidate.len() >= MIN_PAN_DIGITS && luhn_valid(&candidate) {
                return true;
            }
            if !joined {
                break;
            }
        }
    }
    false
}

/// A card brand, from the card number's leading digits (IIN ranges).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Brand {
    /// Visa: 4.
    Visa,
    /// Mastercard: 51-55 and 2221-2720.
    Mastercard,
    /// American Express: 34, 37.
    Amex,
    /// Discover: 6011, 622126-622925, 644-649, 65.
    Discover,
    /// JCB: 3528-3589.
    Jcb,
    /// Diners Club: 300-305, 3095, 36, 38-39.
    Diners,
    /// UnionPay: 62 (outside Discover's co-branded range), 81.
    UnionPay,
    /// Maestro: 5018, 5020, 5038, 5893, 6304, 6759, 6761-6763.
    Maestro,
    /// Anything else.
    Unknown,
}

impl Brand {
    /// Every brand, in a fixed order.
    pub const ALL: [Self; 9] = [
        Self::Visa,
        Self::Mastercard,
        Self::Amex,
        Self::Discover,
        Self::Jcb,
        Self::Diners,
        Self::UnionPay,
        Self::Maestro,
        Self::Unknown,
    ];

    /// The brand of a digit string.
    #[must_use]
    pub fn of(digits: &str) -> Self {
        let prefix = |n: usize| -> u32 {
            digits
                .get(..n)
                .and_then(|p| p.parse().ok())
                .unwrap_or(u32::MAX)
        };
        let (p1, p2, p3, p4, p6) = (prefix(1), prefix(2), prefix(3), prefix(4), prefix(6));
        // Most specific ranges first: Maestro and Discover's UnionPay co-brand overlap broader
        // prefixes.
        if matches!(p4, 5018 | 5020 | 5038 | 5893 | 6304 | 6759 | 6761..=6763) {
            Self::Maestro
        } else if p4 == 6011
            || (622_126..=622_925).contains(&p6)
            || (644..=649).contains(&p3)
            || p2 == 65
        {
            Self::Discover
        } else if p2 == 62 || p2 == 81 {
            Self::UnionPay
        } else if p2 == 34 || p2 == 37 {
            Self::Amex
        } else if (3528..=3589).contains(&p4) {
            Self::Jcb
        } else if (300..=305).contains(&p3) || p4 == 3095 || p2 == 36 || p2 == 38 || p2 == 39 {
            Self::Diners
        } else if (51..=55).contains(&p2) || (2221..=2720).contains(&p4) {
            Self::Mastercard
        } else if p1 == 4 {
            Self::Visa
        } else {
            Self::Unknown
        }
    }

    /// The brand's name as the API and the store spell it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Visa => "visa",
            Self::Mastercard => "mastercard",
            Self::Amex => "amex",
            Self::Discover => "discover",
            Self::Jcb => "jcb",
            Self::Diners => "diners",
            Self::UnionPay => "unionpay",
            Self::Maestro => "maestro",
            Self::Unknown => "unknown",
        }
    }

    /// The brand named `name`, as [`Brand::as_str`] spells it.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.as_str() == name)
    }
}

#[cfg(test)]
#[path = "pan_tests.rs"]
mod tests;
