//! Synthetic card numbers: 16-digit Visa-range PANs with a valid Luhn check digit, which is
//! what the vault's `Pan::parse` accepts (12 to 19 digits, Luhn-valid).

use rand::{Rng, RngExt};

/// Number of digits of a generated PAN.
pub const PAN_DIGITS: usize = 16;

/// A random PAN: `4`, 14 random digits and the Luhn check digit.
pub fn random_pan<R: Rng + ?Sized>(rng: &mut R) -> String {
    let mut digits = Vec::with_capacity(PAN_DIGITS);
    digits.push(4_u8);
    while digits.len() < PAN_DIGITS - 1 {
        digits.push(rng.random_range(0..10));
    }
    digits.push(luhn_check_digit(digits.iter().copied()));
    digits.iter().map(|d| char::from(b'0' + d)).collect()
}

/// The Luhn check digit to append to `payload` (digits 0-9, most significant first).
fn luhn_check_digit(payload: impl DoubleEndedIterator<Item = u8>) -> u8 {
    // Counting from the check digit's left neighbour, every other digit is doubled.
    let sum: u32 = payload
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(d);
            if i % 2 == 0 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    // `sum % 10` is below 10, so this fits.
    u8::try_from((10 - sum % 10) % 10).unwrap_or(0)
}

/// Whether `digits` (ASCII digits only) passes the Luhn check.
#[must_use]
pub fn luhn_valid(digits: &str) -> bool {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    use super::*;

    #[test]
    fn known_numbers_pass_or_fail_luhn() {
        for good in ["4242424242424242", "4111111111111111", "4000056655665556"] {
            assert!(luhn_valid(good), "{good}");
        }
        for bad in ["4242424242424241", "4111111111111112", "", "42a2"] {
            assert!(!luhn_valid(bad), "{bad}");
        }
        assert_eq!(
            luhn_check_digit([4, 2, 4, 2, 4, 2, 4, 2, 4, 2, 4, 2, 4, 2, 4].into_iter()),
            2
        );
    }

    #[test]
    fn generated_pans_are_16_digit_visa_and_luhn_valid() {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let pan = random_pan(&mut rng);
            assert_eq!(pan.len(), 16, "{pan}");
            assert!(pan.starts_with('4'), "{pan}");
            assert!(pan.bytes().all(|b| b.is_ascii_digit()), "{pan}");
            assert!(luhn_valid(&pan), "{pan}");
            seen.insert(pan);
        }
        assert!(seen.len() > 9_990, "PANs repeat too often: {}", seen.len());
    }
}
