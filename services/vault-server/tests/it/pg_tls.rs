//! TLS to PostgreSQL: `sslmode=verify-full` with a configured CA works; a server whose
//! certificate does not chain to that CA is refused at startup.

use std::time::Duration;

use vault_server::pki::DevCa;
use vault_store::{PgSettings, PgStore};

use crate::harness::*;
use crate::pg_cluster::ThrowawayCluster;

fn settings(url: String) -> PgSettings {
    PgSettings {
        url,
        max_connections: 2,
        connect_timeout: Duration::from_secs(5),
        statement_timeout: Duration::from_secs(5),
        password: None,
    }
}

#[tokio::test]
async fn verify_full_with_the_right_ca_works_and_another_ca_is_refused() {
    let ca = DevCa::generate("database CA").unwrap();
    let server = ca.issue_server(&["localhost", "127.0.0.1"]).unwrap();
    let cluster = ThrowawayCluster::create(Some((&server.cert_pem, &server.key_pem)));
    let ca_file = cluster.dir().join("db-ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let verified = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        cluster.url(),
        ca_file.display()
    );

    // The vault itself, over verified TLS.
    let vault = TestVault::start_on(&verified, "info").await;
    let token = vault
        .tokenize_at(&vault.addr, "m1", "4111111111111111")
        .await;
    let pan = vault
        .client("payments")
        .await
        .detokenize(detokenize_request("m1", &token))
        .await
        .unwrap()
        .into_inner()
        .take_pan();
    assert_eq!(pan, "4111111111111111");

    // A CA that did not sign the server's certificate: refused.
    let other = DevCa::generate("someone else's CA").unwrap();
    let other_file = cluster.dir().join("other-ca.pem");
    std::fs::write(&other_file, other.cert_pem()).unwrap();
    let wrong = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        cluster.url(),
        other_file.display()
    );
    assert!(PgStore::connect(&settings(wrong)).await.is_err());
    // Control: the right CA connects from here too.
    assert!(PgStore::connect(&settings(verified)).await.is_ok());
}
