//! Durations as the file spells them, whole milliseconds (`*_ms`), seconds (`*_secs`) or days
//! (`*_days`), read straight into `Duration` (`#[serde(deserialize_with = ...)]`), so no code
//! past the parser sees a raw count of units.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A `*_ms` setting.
pub(super) fn millis<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    u64::deserialize(deserializer).map(Duration::from_millis)
}

/// A `*_secs` setting.
pub(super) fn secs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    u64::deserialize(deserializer).map(Duration::from_secs)
}

/// A `*_days` setting where 0 means never: `None`. Past `Duration`'s range it saturates; every
/// such setting has a bound far below that, which its section's check enforces.
pub(super) fn days_or_never<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    u64::deserialize(deserializer)
        .map(|days| (days > 0).then(|| Duration::from_secs(days.saturating_mul(DAY_SECS))))
}

/// Seconds in a day.
pub(super) const DAY_SECS: u64 = 86_400;
