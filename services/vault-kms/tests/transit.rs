//! The Transit KEK against a real OpenBao server (one throwaway server per test, started by
//! `vault_kms::testing::BaoServer`; `scripts/test` installs `bao`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use vault_core::ports::KeyEncryptionKey;
use vault_kms::TransitKek;
use vault_kms::testing::{BaoServer, KEY};

#[tokio::test]
async fn smoke() {
    let t = std::time::Instant::now();
    let bao = BaoServer::start().await.unwrap();
    eprintln!("start: {:?}", t.elapsed());
    let kek = TransitKek::open(bao.settings(KEY)).await.unwrap();
    kek.check().await.unwrap();
    eprintln!("{kek:?} {}", kek.current_id().await.unwrap());
}
