//! Tests for PAN parsing, Luhn, brands, and the card-number rule for free text (with its
//! false-refusal measurement).

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
    // Three separators join (the old rule parted them); four part the groups.
    assert!(contains_card_number("4111   1111   1111   1111"));
    assert!(!contains_card_number("4111    1111    1111    1111"));
    // Glued to more digits (an expiry, say) into one group of over 19 digits: refused.
    assert!(contains_card_number("41111111111111111230"));
    // Non-ASCII digits cannot be checked, so they are refused.
    assert!(contains_card_number("\u{ff14}111"));
    assert!(!contains_card_number(
        "order 12345678901 (eleven digits) ok"
    ));
    assert!(contains_card_number("order 77 4111111111111111 99"));
    assert!(!contains_card_number("refund order 123456"));
    // A Luhn failure. Its tail 1111111111112 passes the check, but runs start where groups do.
    assert!(!contains_card_number("4111111111111114"));
    assert!(!contains_card_number("4111111111111112"));
    assert!(!contains_card_number(""));
}

/// The ways around the old rule that the issue names, each refused now.
#[test]
fn the_issues_evasions_are_refused() {
    let refused = [
        // Several spaces.
        "4111  1111  1111  1111",
        "4111   1111   1111   1111",
        "card 4111   1111 1111   1111 please",
        // Letters.
        "4111a1111b1111c1111",
        "4111abc1111def1111ghi1111",
        "4111 x 1111 y 1111 z 1111",
        "4111one1111two1111six1111",
        // Mixed punctuation.
        "4111-.1111/_1111, 1111",
        "4111 - 1111 - 1111 - 1111",
        "(4111) [1111] {1111} <1111>",
        "4111*/*1111*/*1111*/*1111",
        // Unicode spaces, and a zero-width space (not a space to Unicode, but invisible).
        "4111\u{a0}1111\u{2009}1111\u{3000}1111",
        "4111\u{200b}1111\u{200b}1111\u{200b}1111",
        "4111\u{a0}\u{a0}\u{a0}1111\u{202f}\u{202f}1111\u{2003}1111",
        // Glued to an expiry, or to an order digit before it.
        "41111111111111111225",
        "card 4111111111111111 1225",
        "4111 1111 1111 1111 12/25",
        "order 7 41111111111111111225 ok",
        // Over 19 digits with no separator: a card number glued to others cannot be told
        // apart, whatever the Luhn check says.
        "11111111111111111111",
        "order 4111111111111111000042",
        // Other brands and lengths.
        "3782 822463 10005",
        "3056a930902b5904",
        "5555-5555-5555-4444-exp-1225",
        // Non-ASCII digits.
        "\u{0664}\u{0661}\u{0661}\u{0661}",
        "4111 1111 1111 111\u{0661}",
        "\u{ff14}\u{ff11}\u{ff11}\u{ff11}",
        "ticket \u{2167}",
    ];
    for text in refused {
        assert!(contains_card_number(text), "{text:?}");
    }
    let accepted = [
        // Four characters part the groups at the default gap.
        "4111    1111    1111    1111",
        "4111abcd1111efgh1111ijkl1111",
        "4111 on 1111 of 1111 at 1111",
        // A Luhn failure, however it is split: only whole groups are joined.
        "4111 1111 1111 1114",
        "4111 1111 1111 1112",
        "capture order 100234",
        // A PAN_SHAPED token (never Luhn-valid) in a reason.
        "detokenize 4111114938521111 for chargeback",
    ];
    for text in accepted {
        assert!(!contains_card_number(text), "{text:?}");
    }
}

#[test]
fn the_gap_is_configurable_and_bounded() {
    assert_eq!(CardNumberRule::default(), CardNumberRule::DEFAULT);
    assert_eq!(CardNumberRule::DEFAULT.max_gap(), 3);
    assert_eq!(CardNumberRule::new(0).map(CardNumberRule::max_gap), Some(0));
    assert_eq!(
        CardNumberRule::new(16).map(CardNumberRule::max_gap),
        Some(16)
    );
    assert_eq!(CardNumberRule::new(17), None);
    assert_eq!(CardNumberRule::new(usize::MAX), None);
    // No test configures another rule: they run in parallel in one process.
    configure_card_number_rule(CardNumberRule::DEFAULT);
    assert_eq!(card_number_rule(), CardNumberRule::DEFAULT);

    let rule = |gap| CardNumberRule::new(gap).unwrap();
    assert!(rule(0).contains_card_number("x4111111111111111x"));
    assert!(!rule(0).contains_card_number("4111 1111 1111 1111"));
    assert!(rule(1).contains_card_number("4111 1111 1111 1111"));
    assert!(!rule(1).contains_card_number("4111  1111  1111  1111"));
    assert!(rule(4).contains_card_number("4111 on 1111 of 1111 at 1111"));
    assert!(!rule(4).contains_card_number("4111 and 1111 and 1111 and 1111"));
    assert!(rule(16).contains_card_number("4111 sixteen chars 1111 1111 1111"));
    // Non-ASCII digits are refused whatever the gap.
    assert!(rule(0).contains_card_number("\u{0661}"));
}

/// What the rule misses, as its documentation says: a card number glued with no separator to
/// a few other digits, in a group of at most 19 digits, is found only when a run of whole
/// groups holding it passes the Luhn check.
#[test]
fn glued_digits_are_the_documented_residual() {
    let pan = "4111111111111111";
    assert!(!contains_card_number("94111111111111111"));
    let mut found = 0;
    for glue in 0..1_000 {
        for digits in [
            format!("{glue}{pan}"),
            format!("{pan}{glue}"),
            format!("{glue:03}{pan}"),
        ] {
            // Found exactly when the whole group passes the Luhn check, or is over 19 digits.
            let expected = digits.len() > MAX_PAN_DIGITS || luhn_valid(&digits);
            assert_eq!(contains_card_number(&digits), expected, "{digits}");
            found += usize::from(expected);
        }
    }
    // About one in ten of the 3,000 is found.
    assert!((200..=400).contains(&found), "{found}");
    // Glued to the first group of a split card number: found when some run of whole groups
    // passes the Luhn check (`64111 1111 1111` does), not by the card number's own digits.
    let mut found = 0;
    for glue in 0..100 {
        let text = format!("{glue}4111 1111 1111 1111");
        assert_eq!(contains_card_number(&text), rule_oracle(3, &text), "{text}");
        found += usize::from(contains_card_number(&text));
    }
    assert!(found < 60, "{found}");
}

#[test]
fn long_inputs_take_one_pass() {
    // A million single ones joined by spaces hold no Luhn-valid run of 12 to 19 ones: the
    // whole sequence is read, the rings wrapping fifty thousand times.
    let spaced = "1 ".repeat(1_000_000);
    assert!(!contains_card_number(&spaced));
    let glued = format!("{spaced}4111111111111111");
    assert!(contains_card_number(&glued));
    // Groups of seven: each run of two (14 digits) fails the Luhn check, three are too many.
    let groups = "1234567 ".repeat(250_000);
    assert!(!contains_card_number(&groups));
    // Two million digits in one group: refused as soon as the group passes 19.
    assert!(contains_card_number(&"1".repeat(2_000_000)));
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

/// Characters separators are drawn from: letters (ASCII and not), ASCII punctuation, ASCII and
/// Unicode spaces, a tab, a zero-width space (not a space to Unicode, but invisible), symbols.
const SEPARATOR_CHARS: &[char] = &[
    'a', 'e', 'o', 'x', 'z', 'A', 'Q', 'Z', 'é', 'ß', 'ж', 'λ', ' ', '\t', '\u{a0}', '\u{2009}',
    '\u{202f}', '\u{3000}', '\u{200b}', '!', '"', '#', '$', '%', '&', '\'', '(', ')', '*', '+',
    ',', '-', '.', '/', ':', ';', '<', '=', '>', '?', '@', '[', '\\', ']', '^', '_', '`', '{', '|',
    '}', '~', '€', '→',
];

/// A Luhn-valid card number of 12 to 19 digits: random digits, then the check digit that fits.
fn luhn_valid_pan() -> impl Strategy<Value = String> {
    "[0-9]{11,18}".prop_map(|payload| {
        (0..10)
            .map(|check| format!("{payload}{check}"))
            .find(|digits| luhn_valid(digits))
            .unwrap()
    })
}

/// Separators: for each of up to 18 cuts, a length drawn from 1 to 16 and 20 characters.
fn separators() -> impl Strategy<Value = Vec<(usize, Vec<char>)>> {
    prop::collection::vec(
        (
            1..=CardNumberRule::MAX_GAP,
            prop::collection::vec(prop::sample::select(SEPARATOR_CHARS), 20),
        ),
        18,
    )
}

/// `digits` cut into groups of the given lengths (the last group takes what is left), joined
/// by separators whose length `width` maps from the drawn one.
fn split_with(
    digits: &str,
    lengths: &[usize],
    separators: &[(usize, Vec<char>)],
    width: impl Fn(usize) -> usize,
) -> String {
    let mut text = String::new();
    let mut rest = digits;
    let mut cuts = lengths.iter().zip(separators);
    while !rest.is_empty() {
        let Some((length, (drawn, chars))) = cuts.next() else {
            text.push_str(rest);
            break;
        };
        let (group, after) = rest.split_at((*length).min(rest.len()));
        text.push_str(group);
        rest = after;
        if !rest.is_empty() {
            text.extend(chars.iter().take(width(*drawn)));
        }
    }
    text
}

/// The digit groups of `text`, in sequences: groups parted by up to `gap` characters share a
/// sequence.
fn sequences(gap: usize, text: &str) -> Vec<Vec<String>> {
    let mut sequences: Vec<Vec<String>> = Vec::new();
    // Characters since the last digit, or `None` before the first one.
    let mut since: Option<usize> = None;
    for c in text.chars() {
        if c.is_ascii_digit() {
            match since {
                Some(0) => {}
                Some(run) if run <= gap => sequences.last_mut().unwrap().push(String::new()),
                _ => sequences.push(vec![String::new()]),
            }
            sequences.last_mut().unwrap().last_mut().unwrap().push(c);
            since = Some(0);
        } else {
            since = since.map(|run| run + 1);
        }
    }
    sequences
}

/// The rule as its documentation states it, by brute force: within each sequence, every run of
/// whole consecutive groups of 12 to 19 digits checked with the oracle; any group over 19
/// digits, or any numeric character that is not an ASCII digit, refused.
fn rule_oracle(gap: usize, text: &str) -> bool {
    if text.chars().any(|c| c.is_numeric() && !c.is_ascii_digit()) {
        return true;
    }
    sequences(gap, text).iter().any(|groups| {
        groups.iter().any(|group| group.len() > MAX_PAN_DIGITS)
            || (0..groups.len()).any(|first| {
                (first..groups.len()).any(|last| {
                    let run = groups[first..=last].concat();
                    (MIN_PAN_DIGITS..=MAX_PAN_DIGITS).contains(&run.len()) && luhn_oracle(&run)
                })
            })
    })
}

/// The rule of the commit before this one, kept to compare in the false-refusal table: every
/// window of 12 to 19 consecutive digits of a sequence, starting and ending anywhere.
fn any_window_rule(gap: usize, text: &str) -> bool {
    if text.chars().any(|c| c.is_numeric() && !c.is_ascii_digit()) {
        return true;
    }
    sequences(gap, text).iter().any(|groups| {
        let digits = groups.concat();
        (MIN_PAN_DIGITS..=MAX_PAN_DIGITS.min(digits.len())).any(|window| {
            (0..=digits.len() - window).any(|start| luhn_oracle(&digits[start..start + window]))
        })
    })
}

/// Characters that part a card number from the text around it: more than the rule's gap of
/// them (`gap + 1` to `gap + 4`), drawn from the separators.
fn wide_gap() -> impl Strategy<Value = (usize, Vec<char>)> {
    (
        1..=4usize,
        prop::collection::vec(
            prop::sample::select(SEPARATOR_CHARS),
            CardNumberRule::MAX_GAP + 4,
        ),
    )
}

/// `text` between `before` and `after` as a rule with `gap` must read it: either directly, when
/// neither holds an ASCII digit (nothing there joins digits), or parted from them by more than
/// `gap` characters.
fn surround(
    gap: usize,
    text: &str,
    (before, after): (&str, &str),
    (extra, chars): &(usize, Vec<char>),
) -> String {
    if before.bytes().any(|b| b.is_ascii_digit()) || after.bytes().any(|b| b.is_ascii_digit()) {
        let wide: String = chars.iter().take(gap + extra).collect();
        format!("{before}{wide}{text}{wide}{after}")
    } else {
        format!("{before}{text}{after}")
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn split_card_numbers_are_refused(
        pan in luhn_valid_pan(),
        lengths in prop::collection::vec(1..=MAX_PAN_DIGITS, 18),
        separators in separators(),
        gap in 1..=CardNumberRule::MAX_GAP,
        around in prop_oneof![
            ("[^0-9]{0,12}", "[^0-9]{0,12}"),
            (".{0,12}", ".{0,12}"),
            ("[a-z0-9 ]{0,12}[0-9]", "[0-9][a-z0-9 ]{0,12}"),
        ],
        wide in wide_gap(),
    ) {
        let around = (around.0.as_str(), around.1.as_str());
        // The default rule, separators of 1 to 3 characters.
        let text = split_with(&pan, &lengths, &separators, |drawn| 1 + (drawn - 1) % 3);
        let text = surround(CardNumberRule::DEFAULT_GAP, &text, around, &wide);
        prop_assert!(contains_card_number(&text), "{:?}", text);
        // Another gap, separators of 1 to `gap` characters.
        let rule = CardNumberRule::new(gap).unwrap();
        let text = split_with(&pan, &lengths, &separators, |drawn| 1 + (drawn - 1) % gap);
        let text = surround(gap, &text, around, &wide);
        prop_assert!(rule.contains_card_number(&text), "gap {}: {:?}", gap, text);
        // Unsplit, any gap down to 0 finds it.
        let text = surround(0, &pan, around, &wide);
        prop_assert!(CardNumberRule::new(0).unwrap().contains_card_number(&text), "{:?}", text);
    }

    #[test]
    fn groups_parted_by_wider_gaps_are_not_joined(
        pan in luhn_valid_pan(),
        lengths in prop::collection::vec(1..MIN_PAN_DIGITS, 18),
        separators in separators(),
        gap in 0..=CardNumberRule::MAX_GAP,
        before in "[a-z .,:-]{0,12}",
        after in "[a-z .,:-]{0,12}",
    ) {
        // Groups of at most 11 digits, each gap one to four characters wider than the rule
        // joins, and no other digits: no sequence reaches 12 digits.
        let text = split_with(&pan, &lengths, &separators, |drawn| 4 + (drawn - 1) % 4);
        let text = format!("{before}{text}{after}");
        prop_assert!(!contains_card_number(&text), "{:?}", text);
        let rule = CardNumberRule::new(gap).unwrap();
        let text = split_with(&pan, &lengths, &separators, |drawn| gap + 1 + (drawn - 1) % 4);
        let text = format!("{before}{text}{after}");
        prop_assert!(!rule.contains_card_number(&text), "gap {}: {:?}", gap, text);
    }

    #[test]
    fn the_rule_agrees_with_its_oracle(
        pieces in prop::collection::vec(
            prop_oneof![
                10 => "[0-9]{1,12}",
                10 => "[a .,\u{a0}\u{3000}\u{200b}-]{1,6}",
                1 => "[\u{0663}\u{ff14}\u{bd}]",
            ],
            0..24,
        ),
        gap in 0..=6usize,
    ) {
        let text = pieces.concat();
        let rule = CardNumberRule::new(gap).unwrap();
        prop_assert_eq!(rule.contains_card_number(&text), rule_oracle(gap, &text), "{:?}", text);
    }

    #[test]
    fn the_rule_agrees_with_its_oracle_on_luhn_valid_runs(
        pans in prop::collection::vec(luhn_valid_pan(), 1..4),
        lengths in prop::collection::vec(1..=MAX_PAN_DIGITS, 18),
        separators in separators(),
        gap in 0..=4usize,
        glue in "[0-9]{0,3}",
    ) {
        // Random digits rarely form Luhn-valid runs of whole groups; split card numbers, glued
        // to a few digits and to each other, often do.
        let text: Vec<String> = pans
            .iter()
            .map(|pan| split_with(pan, &lengths, &separators, |drawn| 1 + (drawn - 1) % 6))
            .collect();
        let text = format!("{glue}{}", text.join(&glue));
        let rule = CardNumberRule::new(gap).unwrap();
        prop_assert_eq!(rule.contains_card_number(&text), rule_oracle(gap, &text), "{:?}", text);
    }
}

// False refusals: how often the rule refuses text that holds no card number, measured on a
// generated corpus of reasons and merchant ids of the kinds people type. Seeded, so the same
// corpus and the same figures on every run; `cargo test -p vault-core --lib false_refusals --
// --nocapture` prints them.

/// A small seeded generator (SplitMix64): the corpus must not change with the `rand` version.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A number from `low` to `high`, both included.
    fn between(&mut self, low: usize, high: usize) -> usize {
        low + self.below(high - low + 1)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    /// `count` characters drawn from `alphabet`.
    fn chars(&mut self, alphabet: &str, count: usize) -> String {
        let alphabet: Vec<char> = alphabet.chars().collect();
        (0..count)
            .map(|_| alphabet[self.below(alphabet.len())])
            .collect()
    }

    fn digits(&mut self, count: usize) -> String {
        self.chars("0123456789", count)
    }

    /// A number of `low` to `high` digits, without a leading zero.
    fn number(&mut self, low: usize, high: usize) -> String {
        let count = self.between(low, high);
        format!("{}{}", self.between(1, 9), self.digits(count - 1))
    }

    fn amount(&mut self) -> String {
        let whole = if self.below(4) == 0 {
            self.between(100, 9_999)
        } else {
            self.between(1, 999)
        };
        let cents = self.below(100);
        match self.below(6) {
            0 if whole >= 1_000 => format!("{},{:03}.{cents:02}", whole / 1_000, whole % 1_000),
            1 => format!("{whole},{cents:02}"),
            2 => format!("{whole}"),
            _ => format!("{whole}.{cents:02}"),
        }
    }

    fn currency(&mut self) -> &'static str {
        self.pick(&["EUR", "USD", "GBP", "CHF", "eur", "$", "€"])
    }

    fn date(&mut self) -> String {
        let (y, m, d) = (
            self.between(2023, 2027),
            self.between(1, 12),
            self.between(1, 28),
        );
        match self.below(5) {
            0 => format!("{d:02}.{m:02}.{y}"),
            1 => format!("{m:02}/{d:02}/{y}"),
            2 => format!("{d}/{m}/{y}"),
            _ => format!("{y}-{m:02}-{d:02}"),
        }
    }

    fn time(&mut self) -> String {
        let (h, m, s) = (self.below(24), self.below(60), self.below(60));
        match self.below(3) {
            0 => format!("{h:02}:{m:02}"),
            1 => format!("{h}:{m:02} {}", self.pick(&["AM", "PM", "am", "pm"])),
            _ => format!("{h:02}:{m:02}:{s:02}"),
        }
    }

    fn word(&mut self) -> &'static str {
        self.pick(&[
            "acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka", "shop",
            "store", "market", "bistro", "travel", "fitness",
        ])
    }

    fn uuid(&mut self) -> String {
        let hex = "0123456789abcdef";
        format!(
            "{}-{}-{}-{}-{}",
            self.chars(hex, 8),
            self.chars(hex, 4),
            self.chars(hex, 4),
            self.chars(hex, 4),
            self.chars(hex, 12)
        )
    }

    fn base62(&mut self, count: usize) -> String {
        self.chars(
            "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
            count,
        )
    }
}

/// A PAN_SHAPED token as `Token::generate` makes one (a test PAN's BIN and last four, random
/// digits between, never Luhn-valid), from the seeded generator.
fn pan_shaped_token(rng: &mut SplitMix) -> String {
    let (pan, _) = PANS_BY_BRAND[rng.below(PANS_BY_BRAND.len())];
    let mut token = format!(
        "{}{}{}",
        &pan[..6],
        rng.digits(pan.len() - 10),
        &pan[pan.len() - 4..]
    );
    if luhn_valid(&token) {
        let at = pan.len() - 5;
        let bumped = (token.as_bytes()[at] - b'0' + 1) % 10;
        token.replace_range(at..=at, &bumped.to_string());
    }
    token
}

/// One category of the corpus: its name, the field it stands for, the most of it the default
/// rule may refuse (in percent, set from the measurement with a point or two of room), and how
/// to make a sample.
///
/// The first categories are what people type in reasons and merchant ids every day. The later
/// ones are long numeric or hexadecimal references. A reference of 12 to 19 digits in one
/// group passes the Luhn check one time in ten, and one of more than 19 digits is always
/// refused (an ARN); a UUID's digit groups are joined across its letters and dashes into many
/// runs of whole groups. Their bounds record that cost; they do not call it acceptable.
type Category = (&'static str, &'static str, f64, fn(&mut SplitMix) -> String);

const CATEGORIES: &[Category] = &[
    ("short order numbers", "reason", 0.5, |r| {
        let n = r.number(4, 7);
        match r.below(5) {
            0 => format!("capture order {n}"),
            1 => format!("refund order #{n}"),
            2 => format!("customer requested refund for order {n}"),
            3 => format!("re-capture failed order {n} after timeout"),
            _ => format!("order {n} shipped twice, refund one"),
        }
    }),
    ("lists of order numbers", "reason", 14.0, |r| {
        let count = r.between(2, 4);
        let orders: Vec<String> = (0..count).map(|_| r.number(5, 6)).collect();
        let separator = r.pick(&[", ", ",", " ", "/", " / ", " & ", " and ", "; "]);
        format!("refund orders {}", orders.join(separator))
    }),
    ("dates and amounts", "reason", 3.5, |r| {
        let (date, amount, currency) = (r.date(), r.amount(), r.currency());
        match r.below(5) {
            0 => format!("refund {date} amount {amount} {currency}"),
            1 => format!("partial refund of {amount} {currency} on {date}"),
            2 => format!("refund {amount} {currency} for {date}"),
            3 => format!("chargeback {date}: {amount} {currency}"),
            _ => format!("goodwill credit {amount}{currency} ({date})"),
        }
    }),
    ("case and invoice ids", "reason", 0.5, |r| {
        let year = r.between(2023, 2027);
        match r.below(5) {
            0 => format!(
                "chargeback case CB-{} for invoice INV-{year}-{}",
                r.number(5, 5),
                r.digits(4)
            ),
            1 => format!(
                "dispute DSP-{} / invoice {}",
                r.number(6, 6),
                r.number(8, 8)
            ),
            2 => format!("case #{}, invoice {year}-{}", r.number(7, 7), r.digits(5)),
            3 => format!("invoice INV{year}{} disputed", r.digits(6)),
            _ => format!(
                "retrieval request RR{} invoice {}",
                r.number(6, 8),
                r.number(5, 7)
            ),
        }
    }),
    ("ticket numbers", "reason", 0.5, |r| match r.below(6) {
        0 => format!("per ticket JIRA-{}", r.number(3, 5)),
        1 => format!("SUP-{} customer call", r.number(5, 6)),
        2 => format!("INC{} escalation", r.digits(7)),
        3 => format!("zendesk #{}", r.number(6, 7)),
        4 => format!("ticket {} (fraud review)", r.number(4, 6)),
        _ => format!("see PAY-{} and PAY-{}", r.number(3, 4), r.number(3, 4)),
    }),
    ("dates and times", "reason", 11.5, |r| {
        let (date, time) = (r.date(), r.time());
        let (y, m, d) = (r.between(2023, 2027), r.between(1, 12), r.between(1, 28));
        let (h, min, s) = (r.below(24), r.below(60), r.below(60));
        match r.below(4) {
            0 => format!("dispute opened {date} {time} UTC"),
            1 => format!("settlement {y}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}Z"),
            2 => format!("customer call on {date} at {time}"),
            _ => format!("batch {y}{m:02}{d:02} {h:02}{min:02} reprocess"),
        }
    }),
    ("amounts and quantities", "reason", 1.5, |r| {
        let (a, b, c) = (r.amount(), r.amount(), r.currency());
        match r.below(5) {
            0 => format!("refund {} x {a} + {b} shipping", r.between(1, 9)),
            1 => format!("refund {a} {c}"),
            2 => format!("partial {a} of {b}"),
            3 => format!("fee {a}, tax {b}, total {}", r.amount()),
            _ => format!("{} items at {a} {c} each", r.between(1, 50)),
        }
    }),
    ("phone numbers", "reason", 4.5, |r| match r.below(6) {
        0 => format!("customer called from +44 20 7946 {}", r.digits(4)),
        1 => format!("call back +1 ({}) 555-{}", r.number(3, 3), r.digits(4)),
        2 => format!("cardholder phone +49 30 {}", r.digits(8)),
        3 => format!("call back 07700 900{}", r.digits(3)),
        4 => format!(
            "tel +33 1 {} {} {} {}",
            r.digits(2),
            r.digits(2),
            r.digits(2),
            r.digits(2)
        ),
        _ => format!("phone {}-{}-{}", r.number(3, 3), r.digits(3), r.digits(4)),
    }),
    ("PSP references (16 digits)", "reason", 11.5, |r| {
        format!("psp reference 88{} refund", r.digits(14))
    }),
    ("PAN_SHAPED tokens", "reason", 0.0, |r| {
        format!("detokenize {} for chargeback", pan_shaped_token(r))
    }),
    ("RANDOM tokens", "reason", 0.1, |r| {
        format!("detokenize tok_{} for chargeback", r.base62(22))
    }),
    ("RRNs (12 digits)", "reason", 11.0, |r| {
        format!("retrieval RRN {}", r.digits(12))
    }),
    ("ARNs (23 digits)", "reason", 100.0, |r| {
        format!("chargeback ARN 7{}", r.digits(22))
    }),
    ("UUIDs", "reason", 43.5, |r| {
        let uuid = r.uuid();
        match r.below(2) {
            0 => format!("request {uuid} failed"),
            _ => format!("idempotency key {uuid}"),
        }
    }),
    ("processor ids (base62)", "reason", 0.5, |r| {
        let prefix = r.pick(&["pi_", "ch_", "re_", "txn_"]);
        format!("processor {prefix}{}", r.base62(24))
    }),
    ("IBANs", "reason", 33.0, |r| match r.below(2) {
        0 => format!(
            "refund to IBAN DE{} {} {} {} {} {}",
            r.digits(2),
            r.digits(4),
            r.digits(4),
            r.digits(4),
            r.digits(4),
            r.digits(2)
        ),
        _ => format!(
            "refund to GB{}BUKB{}{}",
            r.digits(2),
            r.digits(6),
            r.digits(8)
        ),
    }),
    ("merchant ids", "merchant id", 0.5, |r| {
        let name = r.word();
        match r.below(7) {
            0 => format!(
                "{name}-{}-{}",
                r.pick(&["eu", "us", "uk", "apac"]),
                r.number(1, 3)
            ),
            1 => format!("{name}.{}:{}", r.word(), r.number(2, 4)),
            2 => format!("m_{}_{}", r.between(2019, 2027), r.digits(4)),
            3 => format!("merchant-{}", r.number(4, 6)),
            4 => format!("{name}:{}:{}", r.number(3, 4), r.number(3, 4)),
            5 => format!(
                "{name}-{}{:02}{:02}",
                r.between(2019, 2027),
                r.between(1, 12),
                r.between(1, 28)
            ),
            _ => format!("{name}{}.store", r.number(1, 5)),
        }
    }),
    (
        "merchant ids: acquirer MIDs (15 digits)",
        "merchant id",
        11.0,
        |r| match r.below(2) {
            0 => format!("mid-{}", r.digits(15)),
            _ => format!("{}:{}", r.word(), r.digits(15)),
        },
    ),
    ("merchant ids: UUIDs", "merchant id", 43.5, |r| r.uuid()),
];

/// The rule before 3f55457, kept to compare: groups joined by one or two characters that are
/// neither letters nor digits, windows starting at group boundaries only, and anything over 19
/// joined digits refused.
fn old_rule(text: &str) -> bool {
    if text.chars().any(|c| c.is_numeric() && !c.is_ascii_digit()) {
        return true;
    }
    let mut groups: Vec<(&str, bool)> = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(|c: char| c.is_ascii_digit()) {
        let tail = &rest[start..];
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
    let mut candidate = String::new();
    for first in 0..groups.len() {
        candidate.clear();
        for (digits, joined) in &groups[first..] {
            candidate.push_str(digits);
            if candidate.len() > MAX_PAN_DIGITS
                || (candidate.len() >= MIN_PAN_DIGITS && luhn_valid(&candidate))
            {
                return true;
            }
            if !joined {
                break;
            }
        }
    }
    false
}

/// Samples per category.
const SAMPLES: usize = 20_000;

#[test]
fn false_refusals_on_ordinary_text() {
    let rules = [2, 3, 4].map(|gap| CardNumberRule::new(gap).unwrap());
    println!(
        "{:<42} {:<12} {:>7} {:>7} {:>7} {:>7} {:>7}",
        "category", "field", "old", "any 3", "G=2", "G=3", "G=4"
    );
    let mut over = Vec::new();
    for (index, (name, field, bound, make)) in CATEGORIES.iter().enumerate() {
        let mut rng = SplitMix(0x5EED_0000 + index as u64);
        let mut old = 0;
        let mut any_window = 0;
        let mut refused = [0; 3];
        for _ in 0..SAMPLES {
            let text = make(&mut rng);
            if *field == "merchant id" {
                assert!(text.len() <= 64, "{text:?}");
                assert!(
                    text.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".:_-".contains(&b)),
                    "{text:?}"
                );
            } else {
                assert!(text.chars().count() <= 256, "{text:?}");
                assert!(!text.chars().any(char::is_control), "{text:?}");
            }
            old += usize::from(old_rule(&text));
            any_window += usize::from(any_window_rule(3, &text));
            for (count, rule) in refused.iter_mut().zip(&rules) {
                *count += usize::from(rule.contains_card_number(&text));
            }
        }
        let percent = |count: usize| 100.0 * count as f64 / SAMPLES as f64;
        println!(
            "{name:<42} {field:<12} {:>6.2}% {:>6.2}% {:>6.2}% {:>6.2}% {:>6.2}%",
            percent(old),
            percent(any_window),
            percent(refused[0]),
            percent(refused[1]),
            percent(refused[2])
        );
        if percent(refused[1]) > *bound {
            over.push(format!("{name}: {:.2}% over {bound}%", percent(refused[1])));
        }
    }
    println!(
        "({SAMPLES} samples a category; old: the rule of two separators that are not letters; \
         any 3: every window of 12 to 19 digits, starting and ending anywhere, at G=3)"
    );
    assert!(over.is_empty(), "{over:#?}");
}
