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
