//! Masking the card in a processor's answer before it leaves the vault. A processor may echo
//! the card it was sent, in the body or a header, as plain digits, split by the separators the
//! card-number rule joins across, with its digits JSON-escaped (`\u0034`) or percent-encoded
//! (`%34`). Every such occurrence of the card's digits has all but its last four replaced by
//! `*`; the rest of the answer is untouched.

/// One character of the answer, read: its byte range and, for a digit, its value.
struct Unit {
    start: usize,
    end: usize,
    digit: Option<u8>,
}

fn hex(b: u8) -> Option<u32> {
    char::from(b).to_digit(16)
}

/// The unit at `i`: a `\uXXXX` escape or a `%XX` encoding if `decode`, else one character (an
/// ASCII byte, or a UTF-8 lead byte and the continuation bytes that follow it).
fn unit_at(bytes: &[u8], i: usize, decode: bool) -> Unit {
    let code = |from: usize, len: usize| -> Option<u32> {
        let digits = bytes.get(from..from + len)?;
        digits
            .iter()
            .try_fold(0u32, |acc, &b| Some(acc * 16 + hex(b)?))
    };
    let decoded = match bytes.get(i) {
        _ if !decode => None,
        Some(b'\\') if matches!(bytes.get(i + 1), Some(b'u' | b'U')) => {
            code(i + 2, 4).map(|c| (c, 6))
        }
        Some(b'%') => code(i + 1, 2).map(|c| (c, 3)),
        _ => None,
    };
    if let Some((code, len)) = decoded {
        let digit = char::from_u32(code)
            .and_then(|c| c.to_digit(10))
            .and_then(|d| u8::try_from(d).ok())
            .filter(|_| code < 0x80);
        return Unit {
            start: i,
            end: i + len,
            digit,
        };
    }
    let first = bytes.get(i).copied().unwrap_or(0);
    let mut end = i + 1;
    if first >= 0xc0 {
        // Only continuation bytes belong to the character: a stray lead byte never swallows
        // the digits after it.
        while end < (i + 4).min(bytes.len()) && bytes.get(end).is_some_and(|b| b & 0xc0 == 0x80) {
            end += 1;
        }
    }
    Unit {
        start: i,
        end,
        digit: first.is_ascii_digit().then(|| first - b'0'),
    }
}

/// The byte ranges to mask: the digit units (read with or without decoding escapes) of every
/// occurrence of `wanted` whose digits are at most `max_gap` characters apart, all but the
/// last four of each.
fn occurrences(bytes: &[u8], wanted: &[u8], max_gap: usize, decode: bool) -> Vec<(usize, usize)> {
    // The digits of the answer, each with the number of characters since the previous one.
    let mut digits: Vec<(Unit, usize)> = Vec::new();
    let mut gap = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        let unit = unit_at(bytes, i, decode);
        i = unit.end.max(i + 1);
        if unit.digit.is_some() {
            digits.push((unit, gap));
            gap = 0;
        } else {
            gap = gap.saturating_add(1);
        }
    }
    let hidden = wanted.len().saturating_sub(4);
    let mut ranges = Vec::new();
    for first in 0..digits.len() {
        let found = wanted.iter().enumerate().all(|(k, want)| {
            digits
                .get(first + k)
                .is_some_and(|(unit, gap)| unit.digit == Some(*want) && (k == 0 || *gap <= max_gap))
        });
        if found {
            ranges.extend(
                digits
                    .iter()
                    .skip(first)
                    .take(hidden)
                    .map(|(unit, _)| (unit.start, unit.end)),
            );
        }
    }
    ranges
}

/// `bytes` with every occurrence of `pan` (its digits, at most `max_gap` characters apart)
/// masked: all but the last four digits become `*`.
///
/// The answer is read twice, once decoding `\u` and `%` escapes and once taking them as the
/// characters they are, and what either reading finds is masked: so an escape that swallows
/// the card's first digits (`%4012…` read as `@12…`, perhaps from a caller's variable ending
/// in `%`) cannot hide the card. Ranges the two readings both mask become one `*`. Linear in
/// the answer's length times the card's.
#[must_use]
pub fn mask_card(bytes: &[u8], pan: &str, max_gap: usize) -> Vec<u8> {
    let wanted: Vec<u8> = pan
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect();
    if wanted.len() < 4 {
        return bytes.to_vec();
    }
    let mut ranges = occurrences(bytes, &wanted, max_gap, true);
    ranges.extend(occurrences(bytes, &wanted, max_gap, false));
    ranges.sort_unstable();
    let mut out = Vec::with_capacity(bytes.len());
    let mut copied = 0;
    for (start, end) in ranges {
        if end <= copied {
            continue;
        }
        if start < copied {
            // Overlaps the range masked last: extend that `*` over it.
            copied = end;
            continue;
        }
        out.extend_from_slice(bytes.get(copied..start).unwrap_or_default());
        out.push(b'*');
        copied = end;
    }
    out.extend_from_slice(bytes.get(copied..).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAN: &str = "4012888888881881";

    fn masked(text: &str) -> String {
        String::from_utf8(mask_card(text.as_bytes(), PAN, 3)).unwrap()
    }

    #[test]
    fn every_echo_of_the_card_is_masked() {
        assert_eq!(
            masked("card 4012888888881881 ok"),
            "card ************1881 ok"
        );
        assert_eq!(masked("4012 8888 8888 1881"), "**** **** **** 1881");
        assert_eq!(masked("4012-8888.8888 / 1881"), "****-****.**** / 1881");
        assert_eq!(
            masked(r#"{"n":"\u0034\u0030\u0031\u0032888888881881"}"#),
            r#"{"n":"************1881"}"#
        );
        assert_eq!(
            masked("n=%34%30%312%20888888881881%2042"),
            "n=****%20********1881%2042"
        );
        assert_eq!(
            masked("a4012888888881881b4012888888881881"),
            "a************1881b************1881"
        );
        // Other numbers, and the card's digits spread too far apart, are left alone.
        assert_eq!(masked("4000056655665556"), "4000056655665556");
        assert_eq!(masked("4012     888888881881"), "4012     888888881881");
        assert_eq!(masked("order 40128888"), "order 40128888");
        assert_eq!(
            masked("h\u{e9}llo 4012888888881881"),
            "h\u{e9}llo ************1881"
        );
    }

    #[test]
    fn an_escape_cannot_swallow_the_cards_first_digits() {
        // `%40` is `@` and `\u4012` a CJK character, but the card follows the `%` or `\u`.
        assert_eq!(masked("100%4012888888881881"), "100%************1881");
        assert_eq!(masked(r"x\u4012888888881881"), r"x\u************1881");
        // A stray UTF-8 lead byte (Latin-1 `é`) takes no digit with it.
        let mut latin1 = b"caf\xe9".to_vec();
        latin1.extend_from_slice(PAN.as_bytes());
        let out = mask_card(&latin1, PAN, 3);
        assert_eq!(out.get(4..), Some(&b"************1881"[..]), "{out:?}");
        // Both readings find the card: still one `*` per masked digit.
        assert_eq!(masked("%34%30%31%32888888881881"), "************1881");
    }

    #[test]
    fn nothing_of_the_card_survives_in_any_encoding() {
        for text in [
            "4012888888881881",
            "4012 8888 8888 1881",
            r"\u0034\u0030\u0031\u0032\u0038\u0038\u0038\u0038\u0038\u0038\u0038\u0038\u0031\u0038\u0038\u0031",
            "%34%30%31%32%38%38%38%38%38%38%38%38%31%38%38%31",
            r"4\u00301%32 8888 88\U00388 1881",
        ] {
            let out = masked(text);
            assert_eq!(out.matches('*').count(), 12, "{text} -> {out}");
        }
    }
}
