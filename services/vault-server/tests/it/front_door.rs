//! The front door: what reaches the vault before a caller is identified (TLS handshakes).

use std::net::SocketAddr;

use tokio::net::{TcpSocket, TcpStream};

use crate::harness::*;

/// Opens `n` TCP connections to `addr` from `source` and never sends a byte.
async fn idle_connections(source: &str, addr: &str, n: usize) -> Vec<TcpStream> {
    let addr: SocketAddr = addr.parse().unwrap();
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        held.push(socket.connect(addr).await.unwrap());
    }
    held
}

/// An attacker on 127.0.0.2 holding idle connections (it never sends a ClientHello) cannot
/// stop a client on 127.0.0.1 from connecting and being served. It holds four times the global
/// cap, and the handshake deadline is long, so without the per-source cap the attacker would
/// hold every place until its connections time out.
#[tokio::test]
async fn idle_connections_from_one_source_do_not_lock_out_another() {
    let dir = tempfile::tempdir().unwrap();
    vault_kms::DangerLocalFileKek::create(&dir.path().join("kek.key")).unwrap();
    // These lines land in `[tls]`: the harness writes `keys` right after it.
    let tls = "handshake_timeout_ms = 60000\nmax_handshakes = 8\nmax_handshakes_per_source = 4\n";
    let vault = TestVault::start_in(
        dir,
        "url = \"sqlite:vault.db\"\n",
        &format!("{tls}{DEV_KEK}"),
        &[],
        "info",
    )
    .await;

    let held = idle_connections("127.0.0.2", &vault.addr, 32).await;
    // The vault has taken up the attacker's connections past its four places (the client's
    // connection below queues behind all of them).
    assert!(
        wait_for_log(
            &vault,
            "too many tls handshakes in progress from this source"
        )
        .await,
        "the attacker's fifth connection is closed at once"
    );
    assert!(
        !vault
            .logs()
            .contains("too many tls handshakes in progress;")
    );

    let token = vault
        .tokenize_at(&vault.addr, "m1", "4111111111111111")
        .await;
    assert!(
        token.starts_with("tok_"),
        "the client on 127.0.0.1 is served"
    );
    drop(held);
}

/// Connections refused before a caller is known reach the audit trail: counted by reason and
/// source, and written as one `tls.refused` summary (here at shutdown; also once per
/// `record_refusals_every_secs`), so an auditor sees failed access attempts and a flood adds one
/// record per interval, not one per attempt.
#[tokio::test]
async fn refused_connections_are_summarized_in_the_audit_trail() {
    let vault = TestVault::start().await;
    // Three certificates from another CA, from 127.0.0.1.
    let rogue_ca = vault_server::pki::DevCa::generate("rogue CA").unwrap();
    let rogue = rogue_ca
        .issue_client(Some("gateway"), Some(GATEWAY))
        .unwrap();
    for _ in 0..3 {
        let mut client = connect(
            &vault.addr,
            &vault.pki.ca_pem,
            Some((rogue.cert_pem.as_str(), rogue.key_pem.as_str())),
        )
        .await;
        assert!(
            client
                .tokenize(tokenize_request("m1", "4111111111111111"))
                .await
                .is_err()
        );
    }
    // Two connections from 127.0.0.3 that send something other than TLS.
    for mut garbage in idle_connections("127.0.0.3", &vault.addr, 2).await {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut rest = Vec::new();
        let _ = garbage.read_to_end(&mut rest).await;
    }
    // Every refusal is logged as it happens (and counted right after).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while vault.logs().matches("tls handshake refused").count() < 5 {
        assert!(std::time::Instant::now() < deadline, "{}", vault.logs());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let db = vault.db_path();
    let _dir = vault.stop();

    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", db.display()))
        .await
        .unwrap();
    let rows: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT caller, origin, outcome, detail FROM audit_log WHERE operation = 'tls.refused'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (caller, origin, outcome, detail) = &rows[0];
    assert_eq!((caller.as_str(), origin.as_str()), ("vaultd", "vaultd"));
    assert_eq!(outcome, "unauthenticated");
    let detail = detail.as_deref().unwrap_or_default();
    assert!(
        detail.contains("handshake refused 5 (from 127.0.0.1 3, 127.0.0.3 2)"),
        "{detail}"
    );
    assert!(!detail.contains("4111"), "{detail}");
    // The summary carries every PCI DSS 10.2.2 field, like any record.
    assert_pci_fields(&db);
}
