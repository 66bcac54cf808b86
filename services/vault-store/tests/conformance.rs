//! The store conformance suite: one set of behaviours every `TokenStore` backend must show.
//! Each check takes a fresh store and a way to count its audit rows; the runners at the bottom
//! call them for each backend (SQLite today; PostgreSQL joins with its backend).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::future::Future;
use std::pin::Pin;

use vault_core::audit::AuditRecord;
use vault_core::ids::{CallContext, CallerId, MerchantId};
use vault_core::pan::Brand;
use vault_core::policy::Operation;
use vault_core::ports::{
    CardMetadata, InsertOutcome, KeyContext, KeyPurpose, MerchantKeySet, TokenRecord, TokenStore,
    WrappedKey,
};
use vault_core::token::{Token, TokenFormat};
use vault_core::vault::now;
use vault_crypto::Sealed;

/// Counts the audit rows of the store under test.
type Count = Box<dyn Fn() -> Pin<Box<dyn Future<Output = i64> + Send>>>;

fn merchant(id: &str) -> MerchantId {
    MerchantId::parse("merchant_id", id).unwrap()
}

fn audit(request_id: &str) -> AuditRecord {
    AuditRecord::begin(
        &CallContext {
            caller: CallerId::new("spiffe://test/gateway"),
            peer: Some("127.0.0.1:1".into()),
            request_id: request_id.into(),
        },
        Operation::Tokenize,
    )
}

fn key(merchant_id: &str, purpose: KeyPurpose, bytes: u8) -> WrappedKey {
    WrappedKey {
        context: KeyContext {
            merchant: merchant(merchant_id),
            purpose,
            version: 1,
        },
        kek_id: "test-kek:1".into(),
        wrapped: vec![bytes; 61],
    }
}

fn record(merchant_id: &str, token: &str, fingerprint: u8, format: TokenFormat) -> TokenRecord {
    TokenRecord {
        token: Token::parse("token", token).unwrap(),
        merchant: merchant(merchant_id),
        fingerprint: [fingerprint; 32],
        dek_version: 1,
        sealed: Sealed {
            nonce: [7; 12],
            ciphertext: vec![9; 32],
        },
        metadata: CardMetadata {
            brand: Brand::Visa,
            bin: "411111".into(),
            last4: "1111".into(),
            pan_length: 16,
            expiry: None,
            created_at: now(),
            format,
        },
    }
}

async fn first_keys_win(store: &dyn TokenStore) {
    let m = merchant("m1");
    assert_eq!(store.merchant_keys(&m).await.unwrap(), None);
    let first = MerchantKeySet {
        dek: key("m1", KeyPurpose::Dek, 1),
        fingerprint: key("m1", KeyPurpose::Fingerprint, 2),
    };
    let second = MerchantKeySet {
        dek: key("m1", KeyPurpose::Dek, 3),
        fingerprint: key("m1", KeyPurpose::Fingerprint, 4),
    };
    assert!(store.create_merchant_keys(&first).await.unwrap());
    assert!(!store.create_merchant_keys(&second).await.unwrap());
    assert_eq!(store.merchant_keys(&m).await.unwrap(), Some(first.clone()));
    assert_eq!(store.data_key(&m, 1).await.unwrap(), Some(first.dek));
    assert_eq!(store.data_key(&m, 2).await.unwrap(), None);
    assert_eq!(store.data_key(&merchant("m2"), 1).await.unwrap(), None);
}

async fn uniqueness_is_enforced(store: &dyn TokenStore, audit_rows: Count) {
    let a = record("m1", "tok_AAAAAAAAAAAAAAAAAAAAAA", 1, TokenFormat::Random);
    assert_eq!(
        store.insert_token(&a, &audit("r1")).await.unwrap(),
        InsertOutcome::Inserted
    );
    assert_eq!(audit_rows().await, 1);
    // The same token string, for any merchant, is taken.
    let same_token = record("m2", "tok_AAAAAAAAAAAAAAAAAAAAAA", 2, TokenFormat::Random);
    assert_eq!(
        store.insert_token(&same_token, &audit("r2")).await.unwrap(),
        InsertOutcome::TokenTaken
    );
    // The same card and format for the same merchant is taken.
    let same_card = record("m1", "tok_BBBBBBBBBBBBBBBBBBBBBB", 1, TokenFormat::Random);
    assert_eq!(
        store.insert_token(&same_card, &audit("r3")).await.unwrap(),
        InsertOutcome::FingerprintTaken
    );
    // A refused insert writes no audit record: token and audit commit together or not at all.
    assert_eq!(audit_rows().await, 1);
    // The same card in the other format, or for another merchant, is a new token.
    let shaped = record("m1", "4111110000001112", 1, TokenFormat::PanShaped);
    assert_eq!(
        store.insert_token(&shaped, &audit("r4")).await.unwrap(),
        InsertOutcome::Inserted
    );
    let other = record("m2", "tok_CCCCCCCCCCCCCCCCCCCCCC", 1, TokenFormat::Random);
    assert_eq!(
        store.insert_token(&other, &audit("r5")).await.unwrap(),
        InsertOutcome::Inserted
    );
    assert_eq!(audit_rows().await, 3);
}

async fn tokens_read_back_scoped_to_their_merchant(store: &dyn TokenStore) {
    let a = record("m1", "tok_DDDDDDDDDDDDDDDDDDDDDD", 5, TokenFormat::Random);
    store.insert_token(&a, &audit("r1")).await.unwrap();
    assert_eq!(
        store.token(&a.merchant, &a.token).await.unwrap(),
        Some(a.clone())
    );
    assert_eq!(store.token(&merchant("m2"), &a.token).await.unwrap(), None);
    assert_eq!(
        store
            .token_by_fingerprint(&a.merchant, &[5; 32], TokenFormat::Random)
            .await
            .unwrap(),
        Some(a.clone())
    );
    assert_eq!(
        store
            .token_by_fingerprint(&a.merchant, &[5; 32], TokenFormat::PanShaped)
            .await
            .unwrap(),
        None
    );
}

async fn delete_writes_audit_only_when_it_deletes(store: &dyn TokenStore, audit_rows: Count) {
    let a = record("m1", "tok_EEEEEEEEEEEEEEEEEEEEEE", 6, TokenFormat::Random);
    store.insert_token(&a, &audit("r1")).await.unwrap();
    assert!(
        !store
            .delete_token(&merchant("m2"), &a.token, &audit("r2"))
            .await
            .unwrap()
    );
    assert_eq!(audit_rows().await, 1);
    assert!(
        store
            .delete_token(&a.merchant, &a.token, &audit("r3"))
            .await
            .unwrap()
    );
    assert_eq!(audit_rows().await, 2);
    assert_eq!(store.token(&a.merchant, &a.token).await.unwrap(), None);
    store.append_audit(&audit("r4")).await.unwrap();
    assert_eq!(audit_rows().await, 3);
}

/// The suite's tests for one backend. `$fresh` is an async fn returning a guard that keeps the
/// backend's database alive, the store, and its audit-row counter.
macro_rules! conformance_suite {
    ($fresh:path) => {
        #[tokio::test]
        async fn first_keys_win() {
            let (_guard, store, _) = $fresh().await;
            super::first_keys_win(&store).await;
        }

        #[tokio::test]
        async fn uniqueness_is_enforced() {
            let (_guard, store, count) = $fresh().await;
            super::uniqueness_is_enforced(&store, count).await;
        }

        #[tokio::test]
        async fn tokens_read_back_scoped_to_their_merchant() {
            let (_guard, store, _) = $fresh().await;
            super::tokens_read_back_scoped_to_their_merchant(&store).await;
        }

        #[tokio::test]
        async fn delete_writes_audit_only_when_it_deletes() {
            let (_guard, store, count) = $fresh().await;
            super::delete_writes_audit_only_when_it_deletes(&store, count).await;
        }

        #[tokio::test]
        async fn appended_audit_records_are_stored() {
            let (_guard, store, count) = $fresh().await;
            store.append_audit(&super::audit("r1")).await.unwrap();
            assert_eq!(count().await, 1);
        }
    };
}

mod sqlite {
    use sqlx::sqlite::SqlitePoolOptions;
    use vault_store::SqliteStore;

    use super::*;

    async fn fresh() -> (tempfile::TempDir, SqliteStore, Count) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let pool = SqlitePoolOptions::new()
            .connect(&format!("sqlite:{}", path.display()))
            .await
            .unwrap();
        let count: Count = Box::new(move || {
            let pool = pool.clone();
            Box::pin(async move {
                sqlx::query_scalar("SELECT COUNT(*) FROM audit_log")
                    .fetch_one(&pool)
                    .await
                    .unwrap()
            })
        });
        (dir, store, count)
    }

    conformance_suite!(fresh);

    #[tokio::test]
    async fn database_is_private_and_in_wal_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.db");
        let _store = SqliteStore::open(&path).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "database readable by others: {mode:o}");
        let pool = SqlitePoolOptions::new()
            .connect(&format!("sqlite:{}", path.display()))
            .await
            .unwrap();
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(journal, "wal");
    }
}

mod postgres {
    use std::time::Duration;

    use sqlx::postgres::PgPoolOptions;
    use vault_store::testing::TestDatabase;
    use vault_store::{PgSettings, PgStore};

    use super::*;

    pub(crate) fn settings(url: &str) -> PgSettings {
        PgSettings {
            url: url.to_owned(),
            max_connections: 4,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
        }
    }

    async fn fresh() -> (TestDatabase, PgStore, Count) {
        let db = TestDatabase::create()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let store = PgStore::connect(&settings(&db.url)).await.unwrap();
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(&db.url)
            .await
            .unwrap();
        let count: Count = Box::new(move || {
            let pool = pool.clone();
            Box::pin(async move {
                sqlx::query_scalar("SELECT COUNT(*) FROM audit_log")
                    .fetch_one(&pool)
                    .await
                    .unwrap()
            })
        });
        (db, store, count)
    }

    conformance_suite!(fresh);

    #[tokio::test]
    async fn audit_rows_cannot_be_changed() {
        let (db, store, _) = fresh().await;
        store.append_audit(&super::audit("r1")).await.unwrap();
        let pool = PgPoolOptions::new().connect(&db.url).await.unwrap();
        assert!(
            sqlx::query("UPDATE audit_log SET outcome = 'denied'")
                .execute(&pool)
                .await
                .is_err()
        );
        assert!(
            sqlx::query("DELETE FROM audit_log")
                .execute(&pool)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_database_without_durable_commits_is_refused() {
        let db = TestDatabase::create()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let pool = PgPoolOptions::new().connect(&db.url).await.unwrap();
        let name: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&pool)
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {name} SET synchronous_commit = off"
        )))
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
        let err = PgStore::connect(&settings(&db.url)).await.unwrap_err();
        assert!(
            err.to_string().contains("synchronous_commit is off"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn migrations_are_idempotent_across_replicas() {
        let db = TestDatabase::create()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let settings = settings(&db.url);
        let (a, b, c) = tokio::join!(
            PgStore::connect(&settings),
            PgStore::connect(&settings),
            PgStore::connect(&settings),
        );
        a.unwrap();
        b.unwrap();
        c.unwrap();
    }
}
