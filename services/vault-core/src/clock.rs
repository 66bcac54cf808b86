//! Time as the vault keeps it: UTC, whole microseconds (what every store holds), and the
//! text form audit records and checkpoints spell it in.

use time::OffsetDateTime;

/// Now, UTC, truncated to whole microseconds (what every store keeps).
#[must_use]
pub fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
        .unwrap_or(now)
}

/// Microseconds since the Unix epoch (saturating far in the future).
#[must_use]
pub fn micros(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

/// The time `micros` microseconds after the Unix epoch, if representable.
#[must_use]
pub fn from_micros(micros: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000).ok()
}

/// `at` as audit records spell it (empty if out of the format's range).
#[must_use]
pub fn stamp(at: OffsetDateTime) -> String {
    vault_audit::format_time(micros(at)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microseconds_round_trip() {
        let at = now();
        assert_eq!(from_micros(micros(at)), Some(at));
        assert!(stamp(at).ends_with('Z'));
    }
}
