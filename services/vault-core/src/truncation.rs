//! The truncation rule: which digits of a card number may be shown, in a PAN_SHAPED token and
//! in a token's metadata (`bin`, `last4`).
//!
//! PCI DSS 3.4.1 allows at most the first six and the last four digits to be shown. This vault
//! also keeps at least six digits hidden, so a card shorter than 16 digits shows fewer leading
//! digits: min(6, length - 10). 16 digits or more: 6; 15: 5; 14: 4; 13: 3; 12: 2. The last four
//! are always shown. (With six leading digits shown, a 12-digit card would keep two digits
//! hidden, and the Luhn check narrows those to about ten candidates.)

use crate::pan::{Brand, Pan};

/// Most leading digits ever shown (the six-digit BIN).
pub const MAX_LEADING: usize = 6;
/// Trailing digits shown.
pub const TRAILING: usize = 4;
/// Fewest digits kept hidden.
pub const MIN_HIDDEN: usize = 6;

/// How many leading digits of a card of `pan_length` digits may be shown.
#[must_use]
pub fn leading_shown(pan_length: usize) -> usize {
    pan_length
        .saturating_sub(TRAILING + MIN_HIDDEN)
        .min(MAX_LEADING)
}

/// The leading digits of `pan` that may be shown.
#[must_use]
pub fn leading(pan: &Pan) -> &str {
    pan.expose_digits()
        .get(..leading_shown(pan.len()))
        .unwrap_or_default()
}

/// The brand as the shown leading digits tell it: the brand every card starting with `leading`
/// has, else [`Brand::Unknown`]. Brands are decided by up to six leading digits, so for a short
/// card (fewer shown) the brand could otherwise tell hidden digits: a 12-digit card shown as
/// `67…` and branded Maestro starts 6759 or 6761-6763.
#[must_use]
pub fn shown_brand(leading: &str) -> Brand {
    let shown = leading.len();
    if shown >= MAX_LEADING {
        return Brand::of(leading);
    }
    if shown == 0 || !leading.bytes().all(|b| b.is_ascii_digit()) {
        return Brand::Unknown;
    }
    // Every completion to six digits: at most 10^4 (a 12-digit card shows two).
    let mut digits = [b'0'; MAX_LEADING];
    for (slot, digit) in digits.iter_mut().zip(leading.bytes()) {
        *slot = digit;
    }
    let free = MAX_LEADING - shown;
    let mut brand = None;
    for mut n in 0..10_u32.pow(u32::try_from(free).unwrap_or(0)) {
        for slot in digits.iter_mut().rev().take(free) {
            *slot = b'0' + u8::try_from(n % 10).unwrap_or(0);
            n /= 10;
        }
        let this = Brand::of(std::str::from_utf8(&digits).unwrap_or_default());
        match brand {
            None => brand = Some(this),
            Some(first) if first != this => return Brand::Unknown,
            Some(_) => {}
        }
    }
    brand.unwrap_or(Brand::Unknown)
}

/// `stored`, leading digits as a row holds them (rows written before this rule hold six for
/// every length), cut to what a card of `pan_length` digits may show.
#[must_use]
pub fn cut_leading(stored: &str, pan_length: usize) -> String {
    stored.chars().take(leading_shown(pan_length)).collect()
}

/// `stored`, trailing digits as a row holds them, cut to the last [`TRAILING`].
#[must_use]
pub fn cut_trailing(stored: &str) -> String {
    let skip = stored.chars().count().saturating_sub(TRAILING);
    stored.chars().skip(skip).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_least_six_digits_stay_hidden_and_never_more_than_six_plus_four_show() {
        let expected = [
            (12, 2),
            (13, 3),
            (14, 4),
            (15, 5),
            (16, 6),
            (17, 6),
            (18, 6),
            (19, 6),
        ];
        for (length, shown) in expected {
            assert_eq!(leading_shown(length), shown, "{length}");
            assert!(length - leading_shown(length) - TRAILING >= MIN_HIDDEN);
        }
        assert_eq!(leading_shown(0), 0);
        assert_eq!(leading_shown(10), 0);
    }

    #[test]
    fn leading_digits_follow_the_rule() {
        for (pan, shown) in [
            ("4111110000000000008", "411111"),
            ("4111111111111111", "411111"),
            ("378282246310005", "37828"),
            ("30569309025904", "3056"),
            ("4222222222222", "422"),
            ("411111111117", "41"),
        ] {
            let pan = Pan::parse("pan", pan).unwrap();
            assert_eq!(leading(&pan), shown);
        }
    }

    #[test]
    fn the_brand_shows_only_what_the_shown_digits_tell() {
        // Decided by what is shown: kept.
        assert_eq!(shown_brand("41"), Brand::Visa);
        assert_eq!(shown_brand("37828"), Brand::Amex);
        assert_eq!(shown_brand("3056"), Brand::Diners);
        assert_eq!(shown_brand("424242"), Brand::Visa);
        // Decided by hidden digits: unknown. 67 is Maestro only for 6759 and 6761-6763; 60 is
        // Discover only for 6011; 62212 is Discover or UnionPay by its sixth digit.
        assert_eq!(shown_brand("67"), Brand::Unknown);
        assert_eq!(shown_brand("60"), Brand::Unknown);
        assert_eq!(shown_brand("62212"), Brand::Unknown);
        assert_eq!(shown_brand(""), Brand::Unknown);
        // Whatever the card, the brand shown is its own or unknown, and always the same for
        // the same shown digits.
        for body in [
            "67591234567",
            "60111234567",
            "622126123456789",
            "501812345678",
        ] {
            let pan = (0..10)
                .map(|d| format!("{body}{d}"))
                .find(|pan| crate::pan::luhn_valid(pan))
                .unwrap();
            let pan = Pan::parse("pan", &pan).unwrap();
            let shown = shown_brand(leading(&pan));
            assert!(shown == pan.brand() || shown == Brand::Unknown, "{shown:?}");
        }
    }

    #[test]
    fn stored_values_are_cut_to_the_rule() {
        assert_eq!(cut_leading("411111", 12), "41");
        assert_eq!(cut_leading("378282", 15), "37828");
        assert_eq!(cut_leading("411111", 16), "411111");
        assert_eq!(cut_leading("41", 16), "41");
        assert_eq!(cut_leading("411111", 3), "");
        assert_eq!(cut_trailing("1111"), "1111");
        assert_eq!(cut_trailing("991111"), "1111");
        assert_eq!(cut_trailing("11"), "11");
    }

    #[test]
    fn metadata_stored_before_the_rule_is_cut_on_the_way_out() {
        use crate::pan::Brand;
        use crate::ports::CardMetadata;
        use crate::token::TokenFormat;
        let stored = |bin: &str, pan_length| CardMetadata {
            brand: Brand::Visa,
            bin: bin.into(),
            last4: "1117".into(),
            pan_length,
            expiry: None,
            created_at: crate::clock::now(),
            format: TokenFormat::PanShaped,
        };
        // A 12-digit card's row written before the rule holds its first six digits.
        let shown = stored("411111", 12).truncated();
        assert_eq!((shown.bin.as_str(), shown.last4.as_str()), ("41", "1117"));
        assert_eq!(stored("378282", 15).truncated().bin, "37828");
        // Rows written under the rule, and long cards, are unchanged.
        for unchanged in [stored("41", 12), stored("411111", 16)] {
            assert_eq!(unchanged.clone().truncated(), unchanged);
        }
    }
}
