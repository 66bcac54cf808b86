//! Tests for PAN parsing, Luhn and brands.

use proptest::prelude::*;

use super::*;

/// One Luhn-valid test PAN per brand (the networks' published test numbers where there are
/// some).
pub(crate) const PANS_BY_BRAND: [(&str, Brand); 13] = [
    ("4111111111111111", Brand::Visa),
    ("4000056655665556", Brand::Visa),
    ("5555555555554444", Brand::Mastercard),
    ("2223003122003222", Brand::Mastercard),
    ("378282246310005", Brand::Amex),
    ("6011111111111117", Brand::Discover),
    ("6221260000000000", Brand::Discover),
    ("3566002020360505", Brand::Jcb),
    ("30569309025904", Brand::Diners),
    ("6200000000000005", Brand::UnionPay),
    ("6759649826438453", Brand::Maestro),
    ("5018000000000009", Brand::Maestro),
    ("9999999999999995", Brand::Unknown),
];

#[test]
fn test_pans_are_luhn_valid_and_branded() {
    for (pan, brand) in PANS_BY_BRAND {
        let parsed = Pan::parse("pan", pan).unwrap();
        assert_eq!(parsed.brand(), brand, "{brand:?}");
        assert_eq!(parsed.bin(), &pan[..6]);
        assert_eq!(parsed.last4(), &pan[pan.len() - 4..]);
    }
}

#[test]
fn separators_are_stripped() {
    let pan = Pan::parse("pan", "4111 1111-1111 1111").unwrap();
    assert_eq!(pan.expose_digits(), "4111111111111111");
}

#[test]
fn bad_pans_name_the_field_and_never_echo_digits() {
    let long = "4".repeat(10 * 1024);
    let cases = [
        "4111abcd11111111",
        "41111111111",          // 11 digits
        "41111111111111111110", // 20 digits
        "4111111111111112",     // Luhn failure
        "",
        long.as_str(),
        "4111\u{0661}111111111111", // a non-ASCII digit
        "4111+1111+1111+1111",
    ];
    for input in cases {
        let err = Pan::parse("pan", input).unwrap_err();
        assert_eq!(err.field, "pan");
        let message = err.to_string();
        assert!(message.starts_with("pan: "), "{message}");
        assert!(!message.chars().any(|c| c.is_ascii_digit()), "{message}");
    }
}

#[test]
fn debug_shows_no_digits() {
    let pan = Pan::parse("pan", "4111111111111111").unwrap();
    let printed = format!("{pan:?}");
    assert!(!printed.contains("4111"), "{printed}");
}

#[test]
fn mastercard_two_series_boundaries() {
    assert_eq!(Brand::of("2220999999999999"), Brand::Unknown);
    assert_eq!(Brand::of("2221000000000009"), Brand::Mastercard);
    assert_eq!(Brand::of("2720999999999999"), Brand::Mastercard);
    assert_eq!(Brand::of("2721000000000000"), Brand::Unknown);
}

#[test]
fn card_numbers_are_found_in_free_text() {
    assert!(contains_card_number("refund 4111111111111111 today"));
    assert!(contains_card_number("x4111111111111111x"));
    assert!(contains_card_number("card 4111 1111 1111 1111."));
    assert!(contains_card_number("card 4111-1111-1111-1111"));
    assert!(contains_card_number("4111  1111  1111  1111"));
    for separator in [".", ":", "_", "/", "\u{a0}", ". "] {
        let text = ["4111", "1111", "1111", "1111"].join(separator);
        assert!(contains_card_number(&text), "{text:?}");
    }
    assert!(!contains_card_number("4111   1111   1111   1111")); // three separators part groups
    // Glued to more digits (an expiry, say): too long to tell apart, so refused.
    assert!(contains_card_number("41111111111111111230"));
    // Non-ASCII digits cannot be checked, so they are refused.
    assert!(contains_card_number("\u{ff14}111"));
    assert!(!contains_card_number(
        "order 12345678901 (eleven digits) ok"
    ));
    assert!(contains_card_number("order 77 4111111111111111 99"));
    assert!(!contains_card_number("refund order 123456"));
    assert!(!contains_card_number("4111111111111112")); // Luhn failure
    assert!(!contains_card_number(""));
}

#[test]
fn brand_names_round_trip() {
    for brand in Brand::ALL {
        assert_eq!(Brand::from_name(brand.as_str()), Some(brand));
    }
}

/// The textbook Luhn check, written differently from `luhn_sum`, as an oracle.
fn luhn_oracle(digits: &str) -> bool {
    let mut total = 0;
    let mut double = false;
    for c in digits.chars().rev() {
        let mut d = c.to_digit(10).unwrap();
        if double {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        total += d;
        double = !double;
    }
    total % 10 == 0
}

proptest! {
    #[test]
    fn luhn_agrees_with_the_oracle(digits in "[0-9]{12,19}") {
        prop_assert_eq!(luhn_valid(&digits), luhn_oracle(&digits));
        prop_assert_eq!(Pan::parse("pan", &digits).is_ok(), luhn_oracle(&digits));
    }

    #[test]
    fn parse_never_panics(input in ".{0,64}") {
        let _ = Pan::parse("pan", &input);
        let _ = contains_card_number(&input);
    }

    #[test]
    fn every_valid_pan_is_found_in_text(
        payload in "[0-9]{11,18}",
        before in "[a-z ]{0,8}",
        after in "[a-z ]{0,8}",
    ) {
        let digits = (0..10)
            .map(|check| format!("{payload}{check}"))
            .find(|d| luhn_valid(d))
            .unwrap();
        let text = format!("{before}{digits}{after}");
        prop_assert!(contains_card_number(&text));
    }
}
