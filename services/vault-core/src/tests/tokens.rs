//! Tokenize, TokenizeBatch, Detokenize, metadata and delete: what each returns, what each
//! records, and how each fails closed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::*;
use crate::error::Throttle;
use crate::guard::GuardSettings;
use crate::lifecycle::DekLimits;
use crate::limits::{CallLimiter, LimitKey};
use crate::testing::{KekFault, StoreFault};

#[tokio::test]
async fn a_new_card_gets_a_token_and_one_audit_record_and_comes_back() {
    let world = World::new();
    let pan = &cards(1)[0];
    let tokenized = world.tokenize(M1, pan).await.unwrap();
    assert!(!tokenized.existing);
    assert!(tokenized.token.as_str().starts_with("tok_"));
    assert_eq!(tokenized.metadata.last4, pan[pan.len() - 4..]);
    assert_eq!(world.store.token_count(), 1);
    let records = world.records("tokenize");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].outcome, "success");
    assert_eq!(records[0].token.as_deref(), Some(tokenized.token.as_str()));

    let back = world
        .detokenize(PAYMENTS, M1, tokenized.token.as_str())
        .await
        .unwrap();
    assert_eq!(back.pan.expose_digits(), pan);
    assert_eq!(world.records("detokenize").len(), 1);
    world.assert_no_pan_in_audit(pan);
}

#[tokio::test]
async fn the_same_card_gets_its_existing_token_per_merchant_and_format() {
    let world = World::new();
    let pan = &cards(1)[0];
    let first = world.tokenize(M1, pan).await.unwrap();
    let again = world.tokenize(M1, pan).await.unwrap();
    assert!(again.existing);
    assert_eq!(again.token, first.token);
    assert_eq!(again.fingerprint, first.fingerprint);
    // Another merchant: another token, another fingerprint (keys are per merchant).
    let other = world.tokenize(M2, pan).await.unwrap();
    assert!(!other.existing);
    assert_ne!(other.fingerprint, first.fingerprint);
    // Another format: another token.
    let mut command = tokenize_command(M1, pan);
    command.format = Some(TokenFormat::PanShaped);
    let shaped = world.vault.tokenize(&ctx(GATEWAY), command).await.unwrap();
    assert!(!shaped.existing);
    assert_eq!(world.store.token_count(), 3);
    let existing = world.records("tokenize");
    assert_eq!(existing[1].detail.as_deref(), Some("existing"));
}

#[tokio::test]
async fn a_drawn_token_the_merchant_holds_is_drawn_again_until_the_attempts_run_out() {
    let world = World::new();
    let [a, b] = <[String; 2]>::try_from(cards(2)).unwrap();
    world.store.collide_next_tokens(3);
    let tokenized = world.tokenize(M1, &a).await.unwrap();
    assert!(!tokenized.existing);
    assert_eq!(world.records("tokenize").len(), 1);

    world.store.collide_next_tokens(1_000);
    let err = world.tokenize(M1, &b).await.unwrap_err();
    assert!(matches!(err, VaultError::TokenSpaceExhausted), "{err:?}");
    assert_eq!(world.store.token_count(), 1);
    let refused = world.records("tokenize");
    assert_eq!(refused.len(), 2);
    assert_eq!(refused[1].outcome, "exhausted");
}

#[tokio::test]
async fn bad_input_names_the_field_never_the_value_and_stores_nothing() {
    let world = World::new();
    let err = world.tokenize(M1, "4111111111111112").await.unwrap_err();
    let VaultError::InvalidArgument(invalid) = &err else {
        panic!("{err:?}");
    };
    assert_eq!(invalid.field, "pan");
    assert!(!err.to_string().contains("4111111111111112"));
    let err = world.tokenize("", &cards(1)[0]).await.unwrap_err();
    assert!(err.to_string().starts_with("merchant_id"), "{err}");
    assert_eq!(world.store.token_count(), 0);
    let records = world.records("tokenize");
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r.outcome == "invalid_argument"));
    assert_eq!(records[0].detail.as_deref(), Some("pan"));
}

#[tokio::test]
async fn a_caller_the_policy_does_not_grant_is_refused_before_anything_is_read() {
    let world = World::new();
    let pan = &cards(1)[0];
    let token = world.tokenize(M1, pan).await.unwrap().token;
    let wraps = world.kek.wraps();
    // Not granted at all, granted elsewhere, granted another operation.
    for (caller, merchant) in [(STRANGER, M1), (PAYMENTS, M2), (GATEWAY, M1)] {
        let err = world
            .detokenize(caller, merchant, token.as_str())
            .await
            .unwrap_err();
        assert!(
            matches!(err, VaultError::PermissionDenied { .. }),
            "{err:?}"
        );
    }
    // Tokenizing for a new merchant without the grant makes no keys for it.
    let err = world
        .vault
        .tokenize(&ctx(PAYMENTS), tokenize_command("m9", pan))
        .await
        .unwrap_err();
    assert!(
        matches!(err, VaultError::PermissionDenied { .. }),
        "{err:?}"
    );
    assert_eq!(world.kek.wraps(), wraps);
    let denied = world.records("detokenize");
    assert_eq!(denied.len(), 3);
    assert!(denied.iter().all(|r| r.outcome == "denied"));
}

#[tokio::test]
async fn no_pan_leaves_when_its_audit_record_cannot_be_written() {
    let world = World::new();
    let pan = &cards(1)[0];
    let token = world.tokenize(M1, pan).await.unwrap().token;
    world.store.set_fault(StoreFault::AuditWrites);
    let err = world
        .detokenize(PAYMENTS, M1, token.as_str())
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::AuditUnavailable(_)), "{err:?}");
    assert!(!format!("{err:?} {err}").contains(pan.as_str()));
    // Nor does a token: a tokenize whose record cannot be written stores nothing.
    let err = world.tokenize(M1, &cards(2)[1]).await.unwrap_err();
    assert!(
        matches!(
            err,
            VaultError::StoreUnavailable(_) | VaultError::AuditUnavailable(_)
        ),
        "{err:?}"
    );
    assert_eq!(world.store.token_count(), 1);
    world.store.set_fault(StoreFault::None);
    assert_eq!(world.records("detokenize").len(), 0);
}

#[tokio::test]
async fn no_pan_leaves_when_its_key_cannot_be_unwrapped() {
    let world = World::new();
    let pan = &cards(1)[0];
    let token = world.tokenize(M1, pan).await.unwrap().token;
    // A replica with a cold cache, while the KEK is down, then while it refuses the key.
    let cold = world.restarted();
    world.kek.set_fault(KekFault::Down);
    let err = detokenize(&cold, PAYMENTS, M1, token.as_str())
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::KeyUnavailable(_)), "{err:?}");
    world.kek.set_fault(KekFault::Integrity);
    let err = detokenize(&cold, PAYMENTS, M1, token.as_str())
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::Integrity), "{err:?}");
    let records = world.records("detokenize");
    assert_eq!(
        records
            .iter()
            .map(|r| r.outcome.as_str())
            .collect::<Vec<_>>(),
        ["unavailable", "integrity_failure"]
    );
    world.kek.set_fault(KekFault::None);
    let back = detokenize(&cold, PAYMENTS, M1, token.as_str())
        .await
        .unwrap();
    assert_eq!(back.pan.expose_digits(), pan);
}

#[tokio::test]
async fn unknown_tokens_and_other_merchants_tokens_are_not_found() {
    let world = World::new();
    let token = world.tokenize(M2, &cards(1)[0]).await.unwrap().token;
    let err = world
        .detokenize(PAYMENTS, M1, token.as_str())
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::NotFound), "{err:?}");
    let err = world
        .detokenize(PAYMENTS, M1, "tok_AAAAAAAAAAAAAAAAAAAAAA")
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::NotFound), "{err:?}");
}

#[tokio::test]
async fn a_detokenize_needs_a_reason_without_a_card_number() {
    let world = World::new();
    let pan = &cards(1)[0];
    let token = world.tokenize(M1, pan).await.unwrap().token;
    for reason in ["", pan.as_str()] {
        let command = TokenCommand {
            merchant_id: M1.into(),
            token: token.as_str().into(),
            reason: reason.into(),
        };
        let err = world
            .vault
            .detokenize(&ctx(PAYMENTS), command)
            .await
            .unwrap_err();
        let VaultError::InvalidArgument(invalid) = err else {
            panic!("{err:?}");
        };
        assert_eq!(invalid.field, "reason");
    }
    world.assert_no_pan_in_audit(pan);
}

#[tokio::test]
async fn metadata_shows_the_truncated_card_and_delete_removes_it_with_a_record() {
    let world = World::new();
    let pan = &cards(1)[0];
    let token = world.tokenize(M1, pan).await.unwrap().token;
    let command = TokenCommand::without_reason(M1.into(), token.as_str().into());
    let metadata = world
        .vault
        .metadata(&ctx(PAYMENTS), command.clone())
        .await
        .unwrap();
    assert_eq!(metadata.bin, pan[..6]);
    assert_eq!(metadata.last4, pan[12..]);
    assert_eq!(metadata.pan_length, 16);
    world
        .vault
        .delete(&ctx(PAYMENTS), command.clone())
        .await
        .unwrap();
    assert_eq!(world.store.token_count(), 0);
    let err = world
        .vault
        .delete(&ctx(PAYMENTS), command.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::NotFound), "{err:?}");
    let err = world
        .vault
        .metadata(&ctx(PAYMENTS), command)
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::NotFound), "{err:?}");
    let deletes = world.records("delete");
    assert_eq!(
        deletes
            .iter()
            .map(|r| r.outcome.as_str())
            .collect::<Vec<_>>(),
        ["success", "not_found"]
    );
}

#[tokio::test]
async fn a_batch_tokenizes_each_card_in_order_with_a_record_each() {
    let world = World::new();
    let pans = cards(5);
    let existing = world.tokenize(M1, &pans[2]).await.unwrap();
    let batch = |pans: &[String]| batch_command(M1, &pans.iter().collect::<Vec<_>>());
    let results = world
        .vault
        .tokenize_batch(&ctx(GATEWAY), batch(&pans))
        .await
        .unwrap();
    assert_eq!(results.len(), 5);
    assert!(results[2].existing);
    assert_eq!(results[2].token, existing.token);
    for (result, pan) in results.iter().zip(&pans) {
        assert_eq!(result.metadata.last4, pan[12..]);
    }
    assert_eq!(world.store.token_count(), 5);
    assert_eq!(world.records("tokenize").len(), 1 + 5);

    // A bad card refuses the whole batch, naming its place, before anything is stored.
    let mut bad = cards(8)[5..].to_vec();
    bad[1] = "4111111111111112".into();
    let err = world
        .vault
        .tokenize_batch(&ctx(GATEWAY), batch(&bad))
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("cards[1].pan: "), "{err}");
    assert_eq!(world.store.token_count(), 5);
    let empty = world.vault.tokenize_batch(&ctx(GATEWAY), batch(&[])).await;
    assert!(matches!(empty, Err(VaultError::InvalidArgument(_))));
    for pan in &pans {
        world.assert_no_pan_in_audit(pan);
    }
}

#[tokio::test]
async fn the_dek_rotates_at_its_use_cap_and_old_tokens_still_open() {
    let limits = DekLimits {
        rotate_after_uses: 2,
        max_uses: 3,
        rotate_after: None,
        lease: 1,
    };
    let world = World::build(|vault| vault.with_dek_limits(limits));
    let pans = cards(5);
    let mut tokens = Vec::new();
    for pan in &pans {
        tokens.push(world.tokenize(M1, pan).await.unwrap().token);
    }
    let merchant = MerchantId::parse("merchant_id", M1).unwrap();
    let versions = crate::ports::KeyStore::key_versions(&world.store, &merchant)
        .await
        .unwrap();
    let deks: Vec<_> = versions
        .iter()
        .filter(|v| v.key.context.purpose == crate::ports::KeyPurpose::Dek)
        .collect();
    assert!(deks.len() >= 2, "{} DEK versions", deks.len());
    assert!(deks.iter().all(|v| v.uses <= limits.max_uses));
    assert_eq!(deks.iter().map(|v| v.tokens).sum::<u64>(), 5);
    let cold = world.restarted();
    for (token, pan) in tokens.iter().zip(&pans) {
        let back = detokenize(&cold, PAYMENTS, M1, token.as_str())
            .await
            .unwrap();
        assert_eq!(back.pan.expose_digits(), pan);
    }
}

#[tokio::test]
async fn the_enumeration_guard_refuses_a_bucket_past_its_limit_whether_or_not_stored() {
    let guard = GuardSettings {
        cards_per_bucket: 2,
        ..GuardSettings::default()
    };
    let world = World::build(|vault| vault.with_guard(guard));
    let bucket: Vec<String> = (0..4).map(|n| card("411111", n, "4242")).collect();
    world.tokenize(M1, &bucket[0]).await.unwrap();
    world.tokenize(M1, &bucket[1]).await.unwrap();
    // The third distinct card of the bucket is refused, and so is a stored one after it: the
    // refusal says nothing about which cards exist. Across merchants too.
    for (merchant, pan) in [(M1, &bucket[2]), (M1, &bucket[0]), (M2, &bucket[3])] {
        let err = world.tokenize(merchant, pan).await.unwrap_err();
        assert!(
            matches!(
                err,
                VaultError::Throttled {
                    limit: Throttle::Enumeration { .. },
                    ..
                }
            ),
            "{err:?}"
        );
    }
    assert_eq!(world.store.token_count(), 2);
    let refused: Vec<_> = world
        .records("tokenize")
        .into_iter()
        .filter(|r| r.outcome == "enumeration_refused")
        .collect();
    assert_eq!(refused.len(), 3);
    assert!(refused.iter().all(|r| r.token.is_none()));
    // Another bucket is untouched.
    world.tokenize(M1, &cards(1)[0]).await.unwrap();
    for pan in &bucket {
        world.assert_no_pan_in_audit(pan);
    }
}

/// A limiter that allows `left` units in all, then refuses.
#[derive(Debug)]
struct Quota {
    left: AtomicU32,
}

impl CallLimiter for Quota {
    fn check(&self, _key: LimitKey<'_>, n: u32) -> Result<(), Duration> {
        self.left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(n)
            })
            .map(|_| ())
            .map_err(|_| Duration::from_secs(1))
    }
}

#[tokio::test]
async fn a_spent_quota_refuses_with_a_wait_and_records_once_per_interval() {
    let limiter = Arc::new(Quota {
        left: AtomicU32::new(2),
    });
    let world =
        World::build(|vault| vault.with_limiter(limiter.clone(), Duration::from_secs(3600)));
    let pans = cards(6);
    world.tokenize(M1, &pans[0]).await.unwrap();
    world.tokenize(M1, &pans[1]).await.unwrap();
    for pan in &pans[2..] {
        let err = world.tokenize(M1, pan).await.unwrap_err();
        let VaultError::Throttled { limit, retry_after } = err else {
            panic!("{err:?}");
        };
        assert_eq!(limit, Throttle::RateLimit);
        assert_eq!(retry_after, Duration::from_secs(1));
    }
    assert_eq!(world.store.token_count(), 2);
    let limited = |world: &World| {
        world
            .records("tokenize")
            .into_iter()
            .filter(|r| r.outcome == "rate_limited")
            .collect::<Vec<_>>()
    };
    assert_eq!(limited(&world).len(), 1, "one record per interval");
    // The rest are summed up when the interval ends (here: at shutdown).
    assert_eq!(world.vault.record_refusal_summaries(true).await.unwrap(), 1);
    let records = limited(&world);
    assert_eq!(records.len(), 2);
    let detail = records[1].detail.as_deref().unwrap_or("");
    assert!(
        detail.starts_with("rate limit: 3 refused calls"),
        "{detail}"
    );
}
