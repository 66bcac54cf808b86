//! Tokens: the two formats, generation, and parsing of tokens callers send back.

use std::fmt;

use crate::error::InvalidArgument;
use crate::pan::{
    CARD_LIKE, MAX_PAN_DIGITS, MIN_PAN_DIGITS, Pan, contains_card_number, luhn_sum, luhn_valid,
};
use crate::truncation;

/// Prefix of every RANDOM token.
pub const RANDOM_PREFIX: &str = "tok_";
/// Base62 characters after the prefix of a RANDOM token: 22 x log2(62) = 131 random bits.
pub const RANDOM_CHARS: usize = 22;
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const DIGITS: &[u8] = b"0123456789";

/// The shape of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TokenFormat {
    /// `tok_` and 22 base62 characters from the CSPRNG. Reveals nothing.
    #[default]
    Random,
    /// The PAN's length, the leading digits the truncation rule allows (six for 16 digits or
    /// more, fewer for shorter cards: [`crate::truncation`]) and the last 4, random digits
    /// between, and always failing the Luhn check.
    PanShaped,
}

impl TokenFormat {
    /// The format's name as the store spells it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Random => "random",
            Self::PanShaped => "pan_shaped",
        }
    }

    /// The format named `name`, as [`TokenFormat::as_str`] spells it.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Random, Self::PanShaped]
            .into_iter()
            .find(|f| f.as_str() == name)
    }
}

/// A token this vault issues: either format, checked for shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Token(String);

impl Token {
    /// Parses a token a caller sent: its shape, as [`Token::parse_shape`] checks it, and then
    /// the card-number rule on a RANDOM token's body ([`crate::pan::contains_card_number`]), so
    /// that a card number typed after `tok_` never reaches the audit log.
    ///
    /// # Errors
    /// An [`InvalidArgument`] naming `field`. When the shape is right and only the card-number
    /// rule refused the token, its problem is [`CARD_LIKE`]: the token may still be one this
    /// vault issued under another rule (an older one, or another configured gap), and the
    /// caller may look it up with [`Token::parse_shape`] and accept it if the store holds it.
    pub fn parse(field: &'static str, input: &str) -> Result<Self, InvalidArgument> {
        let token = Self::parse_shape(field, input)?;
        let body = input.strip_prefix(RANDOM_PREFIX);
        if body.is_some_and(contains_card_number) {
            return Err(InvalidArgument {
                field,
                problem: CARD_LIKE,
            });
        }
        Ok(token)
    }

    /// Checks a token's shape only, without the card-number rule: `tok_` and 22 base62
    /// characters, or 12 to 19 ASCII digits that fail the Luhn check (a digit string that
    /// passes it is refused whatever the rule: no PAN_SHAPED token passes it, so it can only be
    /// a card number sent by mistake). For tokens the store already holds, and for looking up
    /// a token [`Token::parse`] refused with [`CARD_LIKE`]; never to accept a caller's token
    /// without that lookup.
    ///
    /// # Errors
    /// An [`InvalidArgument`] naming `field`.
    pub fn parse_shape(field: &'static str, input: &str) -> Result<Self, InvalidArgument> {
        let invalid = |problem| InvalidArgument { field, problem };
        if input.is_empty() {
            return Err(invalid("is required"));
        }
        if let Some(rest) = input.strip_prefix(RANDOM_PREFIX) {
            if rest.len() == RANDOM_CHARS && rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Ok(Self(input.to_owned()));
            }
            return Err(invalid("is not a token this vault issues"));
        }
        if (MIN_PAN_DIGITS..=MAX_PAN_DIGITS).contains(&input.len())
            && input.bytes().all(|b| b.is_ascii_digit())
        {
            if luhn_valid(input) {
                return Err(invalid("is a card number, not a token"));
            }
            return Ok(Self(input.to_owned()));
        }
        Err(invalid("is not a token this vault issues"))
    }

    /// A fresh token of `format` for `pan`. Uniqueness is the store's job: a collision is retried
    /// by the caller of this function.
    #[must_use]
    pub fn generate(format: TokenFormat, pan: &Pan) -> Self {
        match format {
            TokenFormat::Random => Self::random(),
            TokenFormat::PanShaped => Self::pan_shaped(pan),
        }
    }

    fn random() -> Self {
        let mut out = String::with_capacity(RANDOM_PREFIX.len() + RANDOM_CHARS);
        loop {
            out.clear();
            out.push_str(RANDOM_PREFIX);
            push_uniform(&mut out, RANDOM_CHARS, BASE62);
            // A body with twelve or more digits in a row (odds about 1 in 10^9) could look like
            // a card number; `parse` refuses such tokens, so never issue one.
            if !contains_card_number(out.get(RANDOM_PREFIX.len()..).unwrap_or_default()) {
                return Self(out);
            }
        }
    }

    /// The PAN's length: the leading digits [`truncation::leading`] allows, at least
    /// [`truncation::MIN_HIDDEN`] random digits, the last 4.
    fn pan_shaped(pan: &Pan) -> Self {
        let leading = truncation::leading(pan);
        let middle_len = pan
            .len()
            .saturating_sub(leading.len() + truncation::TRAILING);
        let mut out = String::with_capacity(pan.len());
        out.push_str(leading);
        push_uniform(&mut out, middle_len, DIGITS);
        out.push_str(pan.last4());
        // If the digits happen to pass the Luhn check, move the last random digit on by one:
        // every change of one digit changes the Luhn sum mod 10, so the result fails it.
        if luhn_sum(&out).is_some_and(|sum| sum % 10 == 0) {
            let at = (leading.len() + middle_len).saturating_sub(1);
            if let Some(d) = out.get(at..=at).and_then(|d| d.bytes().next()) {
                let bumped = char::from(b'0' + (d - b'0' + 1) % 10);
                out.replace_range(at..=at, bumped.encode_utf8(&mut [0; 4]));
            }
        }
        Self(out)
    }

    /// Reads back a token the store holds, checking its shape only ([`Token::parse_shape`]):
    /// the vault checked it against the card-number rule when it issued it, and a rule made
    /// stricter or configured otherwise since must not make it unreadable.
    ///
    /// # Errors
    /// An [`InvalidArgument`] for the field `token` if the stored value is not a token.
    pub fn from_stored(value: &str) -> Result<Self, InvalidArgument> {
        Self::parse_shape("token", value)
    }

    /// The token as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Appends `count` characters drawn uniformly from `alphabet` (at most 256 characters) with the
/// CSPRNG. Rejection sampling: bytes at or above the largest multiple of the alphabet's size
/// are thrown away, so no character is more likely than another.
fn push_uniform(out: &mut String, count: usize, alphabet: &[u8]) {
    let size = alphabet.len();
    let limit = 256 - 256 % size;
    let mut pushed = 0;
    let mut pool = [0u8; 32];
    while pushed < count {
        rand::fill(&mut pool[..]);
        for b in pool.iter().map(|b| usize::from(*b)).filter(|b| *b < limit) {
            if pushed == count {
                break;
            }
            if let Some(c) = alphabet.get(b % size) {
                out.push(char::from(*c));
                pushed += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_tokens_have_their_shape_and_differ() {
        let pan = Pan::parse("pan", "4111111111111111").unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let token = Token::generate(TokenFormat::Random, &pan);
            assert_eq!(token.as_str().len(), 4 + RANDOM_CHARS);
            assert!(token.as_str().starts_with("tok_"));
            assert_eq!(Token::parse("token", token.as_str()).unwrap(), token);
            assert!(seen.insert(token));
        }
    }

    #[test]
    fn pan_shaped_tokens_keep_length_allowed_leading_digits_last4_and_fail_luhn() {
        // (PAN, the leading digits its tokens keep): six hidden digits at least.
        for (pan, leading) in [
            ("4111110000000000008", "411111"),
            ("4111111111111111", "411111"),
            ("378282246310005", "37828"),
            ("30569309025904", "3056"),
            ("4222222222222", "422"),
            ("411111111117", "41"),
        ] {
            let pan = Pan::parse("pan", pan).unwrap();
            let mut middles = std::collections::HashSet::new();
            for _ in 0..2_000 {
                let token = Token::generate(TokenFormat::PanShaped, &pan);
                let t = token.as_str();
                assert_eq!(t.len(), pan.len());
                assert_eq!(&t[..leading.len()], leading);
                assert_eq!(&t[t.len() - 4..], pan.last4());
                let hidden = &t[leading.len()..t.len() - 4];
                assert!(hidden.len() >= truncation::MIN_HIDDEN);
                assert!(t.bytes().all(|b| b.is_ascii_digit()));
                assert!(!luhn_valid(t), "{t}");
                assert_eq!(Token::parse("token", t).unwrap(), token);
                middles.insert(hidden.to_owned());
            }
            // The hidden digits are drawn at random, not copied from the PAN: 2,000 draws from
            // a million or more values are nearly all distinct.
            assert!(middles.len() > 1_900, "{}", middles.len());
        }
    }

    #[test]
    fn parse_refuses_card_numbers_and_junk() {
        for bad in [
            "",
            "4111111111111111",
            "tok_short",
            "tok_!!!!!!!!!!!!!!!!!!!!!!!!",
            "tok_4111111111111111AbCdEf",
            "tok_AAAAAAAAAAAAAAAAAAAAAAA",
            "hello",
            "41111111111",
        ] {
            let err = Token::parse("token", bad).unwrap_err();
            assert_eq!(err.field, "token");
            assert!(!err.to_string().chars().any(|c| c.is_ascii_digit()));
        }
    }

    #[test]
    fn card_like_random_tokens_are_refused_distinguishably_but_read_back() {
        for card_like in [
            "tok_4111111111111111AbCdEf",
            "tok_A4111x1111y1111z1111BC",
            "tok_4111ab1111cd1111e1111Z",
        ] {
            assert_eq!(
                card_like.len(),
                RANDOM_PREFIX.len() + RANDOM_CHARS,
                "{card_like}"
            );
            let err = Token::parse("token", card_like).unwrap_err();
            assert_eq!(err.field, "token");
            assert_eq!(err.problem, CARD_LIKE, "{card_like}");
            // The shape is a token's: the domain may look it up, and the store reads it back.
            let shaped = Token::parse_shape("token", card_like).unwrap();
            assert_eq!(shaped.as_str(), card_like);
            assert_eq!(Token::from_stored(card_like).unwrap(), shaped);
        }
        // Other refusals are not CARD_LIKE, and parse_shape refuses them too.
        for bad in [
            "",
            "4111111111111111",
            "tok_short",
            "tok_!!!!!!!!!!!!!!!!!!!!!!!!",
            "hello",
            "41111111111",
        ] {
            let err = Token::parse("token", bad).unwrap_err();
            assert_ne!(err.problem, CARD_LIKE, "{bad:?}");
            assert_eq!(
                Token::parse_shape("token", bad).unwrap_err(),
                err,
                "{bad:?}"
            );
            assert_eq!(Token::from_stored(bad).unwrap_err(), err, "{bad:?}");
        }
        // A PAN_SHAPED token is never Luhn-valid, so parse and parse_shape agree on digits.
        assert!(Token::parse("token", "4111111111111112").is_ok());
        assert!(Token::from_stored("4111111111111112").is_ok());
    }

    #[test]
    fn formats_round_trip_their_names() {
        for f in [TokenFormat::Random, TokenFormat::PanShaped] {
            assert_eq!(TokenFormat::from_name(f.as_str()), Some(f));
        }
    }
}
