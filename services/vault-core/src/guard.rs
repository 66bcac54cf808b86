//! The enumeration guard and the new-merchant cap: vault-wide limits the domain decides and
//! the store counts ([`crate::ports::TallyStore`]).
//!
//! **The dedup oracle.** Tokenize returns the existing token (and the same fingerprint) for a
//! card the merchant already holds. A caller that knows a victim token's leading digits and
//! last four (from its metadata, or from a PAN-shaped token) could send every Luhn-valid
//! candidate with those digits and watch for the victim's token. The signature of that attack
//! is many distinct cards in one bucket (card length, shown leading digits, last four) from
//! one caller in a short time; real traffic brings a couple a day at most. The guard counts
//! distinct cards per (caller, bucket) in fixed windows, **across every merchant** the caller
//! tokenizes for: a caller allowed many merchants must not get k guesses at each merchant
//! that holds the same card (fingerprints are keyed per merchant, so one card at two
//! merchants counts twice, as the two guesses it is). The count lives in the store (it
//! survives restarts, is shared by replicas, and deleting the probe tokens does not reset it),
//! across token formats. Past `cards_per_bucket` in a window, or on a single request that
//! brings more than `cards_per_bucket_per_batch` distinct cards of one bucket, the bucket is
//! spent for that caller until the window ends: every card of it is refused **before the
//! store is asked whether the card exists**, so the refusal is the same code path, status,
//! message and work for the victim's card as for any other candidate.
//!
//! **New merchants.** A caller whose policy allows `*` could invent merchant ids without
//! bound, each costing two KEK wraps and key rows. The vault counts new merchants per caller
//! per hour, vault-wide, whatever the policy says.

use std::time::Duration;

use crate::error::VaultError;
use crate::ids::CallerId;
use crate::pan::Pan;
use crate::ports::{Tallied, TallyRequest};

/// The tally scope of the enumeration guard.
pub const CARD_BUCKET_SCOPE: &str = "tokenize.card_bucket";
/// The tally scope of the new-merchant cap.
pub const MERCHANT_CREATE_SCOPE: &str = "merchant.create";

/// The enumeration guard's and the new-merchant cap's settings. Both are vault-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardSettings {
    /// Distinct cards one caller may bring into one bucket in one window (k).
    pub cards_per_bucket: u64,
    /// The window's length.
    pub window: Duration,
    /// Distinct cards of one bucket one request may carry; more spends the bucket at once.
    pub cards_per_bucket_per_batch: u64,
    /// New merchants one caller may create per hour.
    pub new_merchants_per_hour: u64,
    /// Distinct tokens one caller may forward per hour, whatever the merchant.
    pub forwarded_tokens_per_hour: u64,
}

impl Default for GuardSettings {
    /// k = 12 a day: a year of probing covers 12 x 365 = 4,380 of a 16-digit bucket's 100,000
    /// Luhn-valid candidates (4.4 %); see docs/security.md for the legitimate-traffic side.
    fn default() -> Self {
        Self {
            cards_per_bucket: 12,
            window: Duration::from_secs(24 * 3600),
            cards_per_bucket_per_batch: 4,
            new_merchants_per_hour: 60,
            forwarded_tokens_per_hour: 100,
        }
    }
}

/// The bucket a card falls in: what a caller who saw its token's metadata knows of it (the
/// leading digits `truncation.rs` lets metadata show).
/// `16/424242/4242`: length, shown leading digits, last four.
#[must_use]
pub fn card_bucket(pan: &Pan) -> String {
    let lead = crate::truncation::leading(pan);
    format!("{}/{lead}/{}", pan.len(), pan.last4())
}

/// A bucket as audit records name it: `16-digit cards 424242…4242`. Its digits never join
/// into anything the card-number rule would take for a card number.
#[must_use]
pub fn describe_bucket(bucket: &str) -> String {
    let mut parts = bucket.splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(len), Some(lead), Some(last4)) => format!("{len}-digit cards {lead}…{last4}"),
        _ => "a card bucket".to_owned(),
    }
}

/// A fixed window of `length` that holds `now` (seconds since the epoch): its end, and how
/// long until it.
#[must_use]
pub fn window_at(now_secs: i64, length: Duration) -> (i64, Duration) {
    let length = i64::try_from(length.as_secs()).unwrap_or(i64::MAX).max(1);
    let end = now_secs
        .div_euclid(length)
        .saturating_add(1)
        .saturating_mul(length);
    let left = u64::try_from(end.saturating_sub(now_secs)).unwrap_or(0);
    (end, Duration::from_secs(left.max(1)))
}

/// The tally subject of one caller's bucket, whatever the merchant. The bucket holds no
/// spaces, so the caller (which may) comes last and the subject is unambiguous.
#[must_use]
pub fn bucket_subject(caller: &CallerId, bucket: &str) -> String {
    format!("{bucket} {caller}")
}

/// What the guard decided for one tally of cards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every card may be answered.
    Admitted,
    /// The bucket is spent for this window; `tripped` if this request spent it.
    Refused {
        /// This request pushed the bucket past its limit.
        tripped: bool,
    },
}

/// Decides on one tally's results: admitted while every card's count is within `limit`.
/// The request that tripped is the one that brought a new card past the limit (or asked the
/// store to trip the bucket).
#[must_use]
pub fn verdict(tallies: &[Tallied], limit: u64, tripped_by_request: bool) -> Verdict {
    let over = tallies.iter().any(|t| t.count > limit);
    if !over && !tripped_by_request {
        return Verdict::Admitted;
    }
    let tripped = tripped_by_request || tallies.iter().any(|t| t.new && t.count == limit + 1);
    Verdict::Refused { tripped }
}

/// The tally of distinct cards (by fingerprint) one caller brings into one bucket.
#[must_use]
pub fn card_tally(
    settings: &GuardSettings,
    subject: String,
    window_end: i64,
    fingerprints: Vec<Vec<u8>>,
) -> TallyRequest {
    let trip =
        u64::try_from(fingerprints.len()).unwrap_or(u64::MAX) > settings.cards_per_bucket_per_batch;
    TallyRequest {
        scope: CARD_BUCKET_SCOPE,
        subject,
        window_end,
        items: fingerprints,
        limit: settings.cards_per_bucket,
        trip,
    }
}

/// Counts one `item` in the caller's hourly tally of `scope` (vault-wide, in the store), and
/// refuses with `limit` once more than `per_hour` distinct items are in this hour's tally.
pub(crate) async fn count_hourly(
    store: &dyn crate::ports::TallyStore,
    scope: &'static str,
    caller: &CallerId,
    item: &[u8],
    per_hour: u64,
    limit: crate::error::Throttle,
) -> Result<(), VaultError> {
    let (window_end, retry_after) = window_at(
        crate::clock::now().unix_timestamp(),
        Duration::from_secs(3600),
    );
    let request = TallyRequest {
        scope,
        subject: caller.as_str().to_owned(),
        window_end,
        items: vec![item.to_vec()],
        limit: per_hour,
        trip: false,
    };
    let requests = std::slice::from_ref(&request);
    let tallies = crate::spans::step(crate::spans::store("tally"), store.tally(requests)).await?;
    answered_in_full(requests, &tallies)?;
    match verdict(
        tallies.first().map_or(&[][..], Vec::as_slice),
        per_hour,
        false,
    ) {
        Verdict::Admitted => Ok(()),
        Verdict::Refused { .. } => Err(VaultError::Throttled { limit, retry_after }),
    }
}

/// Fails closed unless the store answered every item of every tally request: a short answer
/// must not read as "nothing over the limit".
pub(crate) fn answered_in_full(
    requests: &[TallyRequest],
    tallies: &[Vec<Tallied>],
) -> Result<(), VaultError> {
    let full = requests.len() == tallies.len()
        && requests
            .iter()
            .zip(tallies)
            .all(|(request, tallied)| request.items.len() == tallied.len());
    if full {
        Ok(())
    } else {
        Err(VaultError::StoreUnavailable(
            crate::error::StoreError::unavailable("the store answered a tally short"),
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn buckets_name_length_shown_digits_and_last_four() {
        let pan = Pan::parse("pan", "4242424242424242").unwrap();
        assert_eq!(card_bucket(&pan), "16/424242/4242");
        let short = Pan::parse("pan", "411111111117").unwrap();
        assert_eq!(card_bucket(&short), "12/41/1117");
        let named = describe_bucket(&card_bucket(&pan));
        assert_eq!(named, "16-digit cards 424242…4242");
        assert!(!crate::pan::contains_card_number(&format!(
            "enumeration guard tripped: {named}, over 12 cards per 86400 s"
        )));
    }

    #[test]
    fn windows_are_fixed_and_say_how_long_is_left() {
        let day = Duration::from_secs(86_400);
        assert_eq!(window_at(86_400 * 3, day), (86_400 * 4, day));
        assert_eq!(
            window_at(86_400 * 3 + 86_399, day),
            (86_400 * 4, Duration::from_secs(1))
        );
    }

    #[test]
    fn the_card_past_the_limit_trips_and_later_ones_are_refused() {
        let t = |count, new| Tallied { count, new };
        assert_eq!(verdict(&[t(12, true)], 12, false), Verdict::Admitted);
        assert_eq!(verdict(&[t(3, false)], 12, false), Verdict::Admitted);
        assert_eq!(
            verdict(&[t(13, true)], 12, false),
            Verdict::Refused { tripped: true }
        );
        // Past the limit the store adds nothing: a seen card and a new one read the same.
        assert_eq!(
            verdict(&[t(13, false)], 12, false),
            Verdict::Refused { tripped: false }
        );
        assert_eq!(
            verdict(&[t(2, true)], 12, true),
            Verdict::Refused { tripped: true }
        );
    }

    #[test]
    fn a_request_with_too_many_cards_of_one_bucket_trips_it() {
        let settings = GuardSettings::default();
        let four = card_tally(
            &settings,
            "s".into(),
            1,
            vec![vec![1], vec![2], vec![3], vec![4]],
        );
        assert!(!four.trip);
        let five = card_tally(&settings, "s".into(), 1, (0..5).map(|i| vec![i]).collect());
        assert!(five.trip);
    }
}
