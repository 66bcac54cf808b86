//! Card numbers: parsing, the Luhn check, the card brand from IIN ranges, and the rule that
//! finds card numbers in free text.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use zeroize::Zeroizing;

use crate::invalid::InvalidArgument;

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

/// The problem an [`InvalidArgument`] names when a field was refused only because it may hold
/// a card number (see [`contains_card_number`]), so that a caller of `MerchantId::parse` or
/// `Token::parse` can tell that refusal from a malformed value: a merchant id or token the
/// store already holds must stay reachable even if the rule, made stricter or configured
/// otherwise since, would now refuse it.
pub const CARD_LIKE: &str = "must not contain a card number";

/// The rule that finds card numbers in free text: see [`CardNumberRule::contains_card_number`].
///
/// Its one setting is the widest gap, in characters, that still joins two groups of digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CardNumberRule {
    max_gap: usize,
}

impl CardNumberRule {
    /// The widest gap joined unless configured otherwise: three characters, enough for
    /// `4111 - 1111`, `4111a1111` or `4111 / 1111`, while a word of two letters between spaces
    /// (` on `, ` of `) still parts two numbers.
    pub const DEFAULT_GAP: usize = 3;
    /// The widest gap that may be configured.
    pub const MAX_GAP: usize = 16;
    /// The rule with [`CardNumberRule::DEFAULT_GAP`].
    pub const DEFAULT: Self = Self {
        max_gap: Self::DEFAULT_GAP,
    };

    /// A rule joining digit groups across up to `max_gap` characters, or `None` if `max_gap`
    /// is above [`CardNumberRule::MAX_GAP`]. A gap of 0 joins nothing: each unbroken run of
    /// digits is read alone.
    #[must_use]
    pub const fn new(max_gap: usize) -> Option<Self> {
        if max_gap <= Self::MAX_GAP {
            Some(Self { max_gap })
        } else {
            None
        }
    }

    /// The widest gap, in characters, that joins two groups of digits.
    #[must_use]
    pub const fn max_gap(self) -> usize {
        self.max_gap
    }

    /// True if `text` may hold a card number, so that it must not be stored, logged or used as
    /// an identity.
    ///
    /// The rule. A *group* is an unbroken run of ASCII digits. Two groups separated by 1 to
    /// `max_gap` characters of any kind (letters, punctuation, ASCII or Unicode spaces, a
    /// zero-width space, anything that is not an ASCII digit; counted in characters, not
    /// bytes) are joined into one sequence; a wider gap ends the sequence. `text` is refused
    /// when
    /// - whole consecutive groups of a sequence (from the first digit of one group to the last
    ///   digit of the same or a later group) hold 12 to 19 digits in all that pass the Luhn
    ///   check; or
    /// - a single group is longer than 19 digits: a card number glued, with no separator, to
    ///   other digits cannot be told apart from them (`41111111111111111225`); or
    /// - it holds any other numeric character (`٣`, `４`, `Ⅻ`, `½`): its digits cannot be
    ///   checked.
    ///
    /// Runs are checked at group boundaries only, not at every digit: 16 or more digits of a
    /// reference number, a UUID or a PAN_SHAPED token hold several windows of 12 to 19 digits,
    /// each passing the Luhn check one time in ten, and refusing them all would refuse most
    /// such references.
    ///
    /// What this misses: a card number glued with no separator to a few other digits (an
    /// expiry, an order digit) inside a group of at most 19 digits, as in `94111111111111111`
    /// or `411111111111111112`, is caught only when the whole group (or a run of whole groups
    /// holding it) happens to pass the Luhn check, about one time in ten; the same holds when
    /// the first or last group of a split card number is glued to other digits
    /// (`124111 1111 1111 1111`).
    ///
    /// Linear in the length of `text`: one pass, at most eight comparisons at the end of each
    /// group, no allocation.
    #[must_use]
    pub fn contains_card_number(&self, text: &str) -> bool {
        let mut sequence = GroupRuns::new();
        // Characters since the last digit; only compared with `max_gap`, so saturating is exact.
        let mut gap: usize = 0;
        let mut in_group = false;
        for c in text.chars() {
            match c.to_digit(10) {
                Some(digit) => {
                    if !in_group {
                        if gap > self.max_gap {
                            sequence.clear();
                        }
                        sequence.start_group();
                        in_group = true;
                    }
                    gap = 0;
                    if sequence.push(digit) {
                        return true;
                    }
                }
                None if c.is_numeric() => return true,
                None => {
                    if in_group && sequence.end_group() {
                        return true;
                    }
                    in_group = false;
                    gap = gap.saturating_add(1);
                }
            }
        }
        in_group && sequence.end_group()
    }
}

impl Default for CardNumberRule {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The gap of the process's rule; see [`configure_card_number_rule`].
static CONFIGURED_GAP: AtomicUsize = AtomicUsize::new(CardNumberRule::DEFAULT_GAP);

/// Sets the rule [`contains_card_number`] applies, for the whole process.
///
/// `MerchantId::parse`, `Reason::parse`, `Token::parse` and the transport's identity check are
/// plain functions called from everywhere, so the rule is process-wide rather than passed
/// along. vaultd sets it once at startup from its configuration, before it serves a request;
/// until then, and in tests, the rule is [`CardNumberRule::DEFAULT`]. Changing it later is
/// memory-safe. Values read back from the store (`MerchantId::from_stored`,
/// `Token::from_stored`, `Reason::from_stored`) are not checked against it, so a stricter rule
/// never makes stored data unreadable.
pub fn configure_card_number_rule(rule: CardNumberRule) {
    CONFIGURED_GAP.store(rule.max_gap, Ordering::Relaxed);
}

/// The rule [`contains_card_number`] applies: the one last given to
/// [`configure_card_number_rule`], or [`CardNumberRule::DEFAULT`].
#[must_use]
pub fn card_number_rule() -> CardNumberRule {
    let max_gap = CONFIGURED_GAP.load(Ordering::Relaxed);
    CardNumberRule::new(max_gap).unwrap_or_default()
}

/// True if `text` may hold a card number, so that it must not be stored in a field that
/// reaches the audit log or names a caller (reasons, merchant ids, tokens, certificate
/// identities). Applies the process's [`card_number_rule`]; the rule itself is described at
/// [`CardNumberRule::contains_card_number`].
#[must_use]
pub fn contains_card_number(text: &str) -> bool {
    card_number_rule().contains_card_number(text)
}

/// Slots of the rings of Luhn prefix sums and group starts: a run of up to 19 digits needs the
/// sums at both of its ends, 19 positions apart, and the newest sum is one past the newest
/// digit.
const RING: usize = MAX_PAN_DIGITS + 1;

/// The Luhn check, in constant time each, of every run of whole groups of 12 to 19 digits that
/// ends at the last digit of the newest group of a sequence, from prefix sums.
///
/// Digit `i` of the sequence (from 0) is doubled in a run ending at digit `e` when `e - i` is
/// odd, that is when `i` and `e` differ in parity. Let `sums[p]` after `k` digits be the sum,
/// mod 10, of digits `0..k`, those of parity `p` counted doubled. Then the Luhn sum of digits
/// `s..=e` is, mod 10, `sums[1 - e % 2]` after `e + 1` digits minus the same after `s` digits,
/// and the run passes the check when the two are equal. A run may start only where a group
/// does, which `starts` records for the same positions.
struct GroupRuns {
    /// Digits pushed since the sequence began.
    len: usize,
    /// Digits pushed since the newest group began.
    group: usize,
    /// The prefix sums after `k` digits, at slot `k % RING`, for the last `RING` values of `k`.
    sums: [[u32; 2]; RING],
    /// Whether digit `k` is the first of a group, at slot `k % RING`, for the same `k`.
    starts: [bool; RING],
}

impl GroupRuns {
    fn new() -> Self {
        Self {
            len: 0,
            group: 0,
            sums: [[0; 2]; RING],
            starts: [false; RING],
        }
    }

    /// Starts a new sequence.
    fn clear(&mut self) {
        *self = Self::new();
    }

    /// Starts a new group: the next digit pushed is its first.
    fn start_group(&mut self) {
        self.group = 0;
        if let Some(start) = self.starts.get_mut(self.len % RING) {
            *start = true;
        }
    }

    /// Adds a digit (0 to 9) to the newest group; true if the group is now longer than 19
    /// digits.
    fn push(&mut self, digit: u32) -> bool {
        let parity = self.len % 2;
        let doubled = if digit * 2 > 9 {
            digit * 2 - 9
        } else {
            digit * 2
        };
        let before = self.sums.get(self.len % RING).copied().unwrap_or_default();
        let after = [0, 1].map(|p| {
            let add = if p == parity { doubled } else { digit };
            before.get(p).map_or(0, |sum| (sum + add) % 10)
        });
        self.len = self.len.saturating_add(1);
        self.group = self.group.saturating_add(1);
        let slot = self.len % RING;
        if let Some(sums) = self.sums.get_mut(slot) {
            *sums = after;
        }
        if let Some(start) = self.starts.get_mut(slot) {
            *start = false;
        }
        self.group > MAX_PAN_DIGITS
    }

    /// Ends the newest group; true if a run of whole groups of 12 to 19 digits ending at its
    /// last digit passes the Luhn check.
    fn end_group(&self) -> bool {
        // The last digit is `len - 1`; digits of the other parity are doubled.
        let p = self.len % 2;
        let sum_at = |slot: usize| self.sums.get(slot).and_then(|sums| sums.get(p)).copied();
        let end = sum_at(self.len % RING);
        (MIN_PAN_DIGITS..=MAX_PAN_DIGITS.min(self.len)).any(|run| {
            let slot = (self.len - run) % RING;
            self.starts.get(slot).is_some_and(|start| *start) && sum_at(slot) == end
        })
    }
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
