//! The use cases, tested against the in-memory store and the fake KEK (`crate::testing`):
//! every behaviour of the [`Vault`] that `vaultd` builds on, in milliseconds, without a
//! database, a KEK server or a gRPC stack. The end-to-end suite (`vault-server/tests/it`)
//! covers the same paths through the real adapters.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod forward;
mod keys;
mod tokens;
mod trail;

use std::collections::BTreeSet;
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::Vault;
use crate::error::VaultError;
use crate::ids::{CallContext, CallerId, MerchantId, new_request_id};
use crate::keyring::{CacheLimits, KeyRing};
use crate::pan::luhn_valid;
use crate::policy::{Grant, MerchantScope, Operation, Policy};
use crate::testing::{FakeKek, MemoryStore};
use crate::token::TokenFormat;
use crate::tokens::{Detokenized, TokenCommand, TokenizeCommand, Tokenized};

const GATEWAY: &str = "spiffe://test/gateway";
const PAYMENTS: &str = "spiffe://test/payments";
const ADMIN_A: &str = "spiffe://test/admin-a";
const ADMIN_B: &str = "spiffe://test/admin-b";
const AUDITOR: &str = "spiffe://test/auditor";
const STRANGER: &str = "spiffe://test/stranger";

/// The merchant PAYMENTS may detokenize for; `m2` it may not.
const M1: &str = "m1";
const M2: &str = "m2";

/// A card of `bin` (6 digits) and `last4`, `n` in its hidden middle, Luhn-valid: cards of one
/// `bin` and `last4` fall in one enumeration-guard bucket.
fn card(bin: &str, n: u32, last4: &str) -> String {
    (0..10)
        .map(|d| format!("{bin}{n:05}{d}{last4}"))
        .find(|pan| luhn_valid(pan))
        .unwrap()
}

/// Distinct cards in distinct buckets.
fn cards(n: u32) -> Vec<String> {
    (0..n)
        .map(|i| {
            card(
                &format!("4{:05}", 11_111 + i),
                42,
                &format!("{:04}", 1000 + i),
            )
        })
        .collect()
}

fn ctx(caller: &str) -> CallContext {
    CallContext {
        caller: CallerId::new(caller),
        peer: Some("127.0.0.1:9".into()),
        request_id: new_request_id(),
    }
}

fn grant(operations: &[Operation], merchants: Option<&[&str]>) -> Grant {
    Grant {
        operations: operations.iter().copied().collect(),
        merchants: match merchants {
            None => MerchantScope::Any,
            Some(ids) => MerchantScope::Only(
                ids.iter()
                    .map(|m| MerchantId::parse("merchant_id", m).unwrap())
                    .collect::<BTreeSet<_>>(),
            ),
        },
    }
}

fn policy() -> Policy {
    use Operation::{
        AuditPrune, AuditRead, Delete, DestinationsAdmin, Detokenize, Forward, KeysAdmin, Metadata,
        Tokenize,
    };
    Policy::new([
        (CallerId::new(GATEWAY), grant(&[Tokenize], None)),
        (
            CallerId::new(PAYMENTS),
            grant(&[Detokenize, Forward, Metadata, Delete], Some(&[M1])),
        ),
        (
            CallerId::new(ADMIN_A),
            grant(&[KeysAdmin, DestinationsAdmin], None),
        ),
        (
            CallerId::new(ADMIN_B),
            grant(&[KeysAdmin, DestinationsAdmin], None),
        ),
        (
            CallerId::new(AUDITOR),
            grant(&[AuditRead, AuditPrune], None),
        ),
    ])
}

/// A vault over a fresh in-memory store and fake KEK, with handles on both.
struct World {
    store: MemoryStore,
    kek: Arc<FakeKek>,
    vault: Vault,
}

impl World {
    fn new() -> Self {
        Self::build(|vault| vault)
    }

    /// A world whose vault `configure` adjusts (limits, guard, retention).
    fn build(configure: impl FnOnce(Vault) -> Vault) -> Self {
        let store = MemoryStore::new();
        let kek = FakeKek::new("fake:kek-1");
        let vault = configure(Self::vault_over(&store, &kek));
        Self { store, kek, vault }
    }

    /// A second vault over the same store and KEK, with a cold key cache (another replica, or
    /// the same vault after a restart).
    fn restarted(&self) -> Vault {
        Self::vault_over(&self.store, &self.kek)
    }

    fn vault_over(store: &MemoryStore, kek: &Arc<FakeKek>) -> Vault {
        let keys = KeyRing::new(kek.clone(), vec![], CacheLimits::default());
        Vault::new(Arc::new(store.clone()), Arc::new(keys), Arc::new(policy()))
    }

    async fn tokenize(&self, merchant: &str, pan: &str) -> Result<Tokenized, VaultError> {
        self.vault
            .tokenize(&ctx(GATEWAY), tokenize_command(merchant, pan))
            .await
    }

    async fn detokenize(
        &self,
        caller: &str,
        merchant: &str,
        token: &str,
    ) -> Result<Detokenized, VaultError> {
        detokenize(&self.vault, caller, merchant, token).await
    }

    /// The audit records of `event` (`tokenize`, `detokenize`, `keys.admin`, ...), in order.
    fn records(&self, event: &str) -> Vec<vault_audit::Entry> {
        self.store
            .audit_records()
            .into_iter()
            .filter(|e| e.event == event)
            .collect()
    }

    /// No audit record, of any field, holds `pan`.
    fn assert_no_pan_in_audit(&self, pan: &str) {
        for entry in self.store.audit_records() {
            let printed = format!("{entry:?}");
            assert!(
                !printed.contains(pan),
                "a PAN in an audit record: {printed}"
            );
        }
    }
}

fn tokenize_command(merchant: &str, pan: &str) -> TokenizeCommand {
    TokenizeCommand {
        merchant_id: merchant.into(),
        pan: Zeroizing::new(pan.into()),
        exp_month: Some(12),
        exp_year: Some(2031),
        format: Some(TokenFormat::Random),
    }
}

/// A batch of `pans` for `merchant`, without expiry dates.
fn batch_command(merchant: &str, pans: &[&String]) -> crate::tokens::TokenizeBatchCommand {
    crate::tokens::TokenizeBatchCommand {
        merchant_id: merchant.into(),
        cards: pans
            .iter()
            .map(|pan| crate::tokens::BatchCard {
                pan: Zeroizing::new((*pan).clone()),
                exp_month: None,
                exp_year: None,
            })
            .collect(),
        format: Some(TokenFormat::Random),
    }
}

async fn detokenize(
    vault: &Vault,
    caller: &str,
    merchant: &str,
    token: &str,
) -> Result<Detokenized, VaultError> {
    let command = TokenCommand {
        merchant_id: merchant.into(),
        token: token.into(),
        reason: "refund for order 42".into(),
    };
    vault.detokenize(&ctx(caller), command).await
}
