//! TLS 1.3 with mandatory client certificates, and the stream of accepted connections that
//! tonic serves.
//!
//! tonic's own TLS settings cannot restrict protocol versions, so the vault builds the rustls
//! `ServerConfig` itself and hands tonic connections that finished their handshake. A client
//! without a certificate, or with one from another CA, never gets a connection.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// Handshaken connections waiting for tonic to pick them up.
const ACCEPT_BACKLOG: usize = 128;

/// Bounds on TLS handshakes in progress (`[tls]`): past `max` in all a new connection is closed
/// at once, so unauthenticated clients cannot pile up tasks and memory; and a source that has
/// `per_source` in progress gets more only while fewer than half of `max` are in progress, so
/// one host holding idle connections cannot lock everyone else out, yet a host that opens many
/// connections at once (a restarted gateway) is not refused while the vault is quiet.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeLimits {
    /// How long a client has to finish its handshake.
    pub timeout: Duration,
    /// Handshakes in progress at once, from everyone.
    pub max: usize,
    /// Handshakes in progress that one source ([`Source`]) always gets.
    pub per_source: usize,
}

/// Where a connection comes from, as the handshake limits count it: an IPv4 address, or an
/// IPv6 /64 (one host usually holds a whole /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    /// The source of a connection from `addr`.
    #[must_use]
    pub fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => Self(IpAddr::V6(Ipv6Addr::from_bits(
                    v6.to_bits() & !u128::from(u64::MAX),
                ))),
            },
        }
    }
}

/// Handshakes in progress, per source and in all. A [`SourceSlot`] holds one until dropped.
#[derive(Debug, Default)]
pub struct SourceCounts(Mutex<InProgress>);

#[derive(Debug, Default)]
struct InProgress {
    per_source: HashMap<Source, usize>,
    total: usize,
}

impl SourceCounts {
    /// A slot for one more handshake from `source` under `limits`: granted if the source has
    /// fewer than `per_source` in progress, or fewer than half of `max` are in progress in all.
    #[must_use]
    pub fn try_claim(
        self: &Arc<Self>,
        source: Source,
        limits: &HandshakeLimits,
    ) -> Option<SourceSlot> {
        let mut guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let counts = &mut *guard;
        let count = counts.per_source.entry(source).or_insert(0);
        if *count >= limits.per_source && counts.total >= limits.max / 2 {
            return None;
        }
        *count += 1;
        counts.total += 1;
        Some(SourceSlot {
            counts: Arc::clone(self),
            source,
        })
    }

    /// Handshakes in progress from `source`.
    #[must_use]
    pub fn in_progress(&self, source: Source) -> usize {
        let counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        counts.per_source.get(&source).copied().unwrap_or(0)
    }
}

/// One handshake in progress from a source; dropping it frees the slot.
#[derive(Debug)]
pub struct SourceSlot {
    counts: Arc<SourceCounts>,
    source: Source,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut guard = self.counts.0.lock().unwrap_or_else(PoisonError::into_inner);
        let counts = &mut *guard;
        counts.total = counts.total.saturating_sub(1);
        if let Some(count) = counts.per_source.get_mut(&self.source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.per_source.remove(&self.source);
            }
        }
    }
}

/// Why the TLS settings could not be loaded. Messages name files, never key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {problem}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// rustls refused the settings.
    #[error("tls settings: {0}")]
    Rustls(String),
    /// Other users may read the private key file.
    #[error("tls.key: {0}")]
    KeyFile(#[from] vault_kms::SecretFileError),
}

/// A rustls server configuration: TLS 1.3 only, ring, client certificates required and
/// verified against `client_ca`, ALPN h2. The key file must be private
/// (`vault_kms::check_private`).
///
/// # Errors
/// [`TlsError`] if a file is unreadable or rustls refuses the certificates.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<Arc<ServerConfig>, TlsError> {
    let pem_error = |path: &Path, problem: String| TlsError::Pem {
        path: path.to_owned(),
        problem,
    };
    let chain = read_certs(cert)?;
    vault_kms::check_private(key)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, e.to_string()))?;
    let mut roots = RootCertStore::empty();
    for ca in read_certs(client_ca)? {
        roots
            .add(ca)
            .map_err(|e| pem_error(client_ca, e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            problem: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            problem: "no certificate found".to_owned(),
        });
    }
    Ok(certs)
}

/// Accepts TCP connections on `listener` and yields those that complete a TLS handshake under
/// `config`. Handshakes run concurrently, each bounded by `limits.timeout`, at most
/// `limits.per_source` from one source and `limits.max` in all, so a slow or hostile client
/// cannot hold up others. Refused handshakes are logged with the peer address.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    limits: HandshakeLimits,
) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
    let acceptor = TlsAcceptor::from(config);
    let pending = Arc::new(Semaphore::new(limits.max));
    let sources = Arc::new(SourceCounts::default());
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::warn!(error = %err, "tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // The source's own cap first, so that one host's flood never takes a place in
            // the global cap.
            let Some(slot) = sources.try_claim(Source::of(peer.ip()), &limits) else {
                tracing::warn!(
                    %peer,
                    "too many tls handshakes in progress from this source; connection closed"
                );
                continue;
            };
            let Ok(permit) = pending.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "too many tls handshakes in progress; connection closed");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let handshaken = handshake(&acceptor, tcp, peer, limits.timeout).await;
                drop((permit, slot));
                if let Some(stream) = handshaken {
                    let _ = tx.send(Ok(stream)).await;
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(err)) => {
            tracing::warn!(%peer, error = %err, "tls handshake refused");
            None
        }
        Err(_) => {
            tracing::warn!(%peer, "tls handshake timed out");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(addr: &str) -> Source {
        Source::of(addr.parse().unwrap())
    }

    #[test]
    fn a_source_is_an_ipv4_address_or_an_ipv6_slash_64() {
        assert_eq!(source("192.0.2.1"), source("::ffff:192.0.2.1"));
        assert_ne!(source("192.0.2.1"), source("192.0.2.2"));
        assert_eq!(source("2001:db8:1:2::1"), source("2001:db8:1:2:ffff::9"));
        assert_ne!(source("2001:db8:1:2::1"), source("2001:db8:1:3::1"));
    }

    #[test]
    fn a_source_gets_its_share_and_more_only_while_the_vault_is_quiet() {
        let limits = HandshakeLimits {
            timeout: Duration::from_secs(1),
            max: 12,
            per_source: 3,
        };
        let counts = Arc::new(SourceCounts::default());
        let (attacker, client) = (source("127.0.0.2"), source("127.0.0.1"));
        // Quiet: a burst from one host gets past its share, up to half of `max`.
        let held: Vec<SourceSlot> = (0..6)
            .map(|_| counts.try_claim(attacker, &limits).unwrap())
            .collect();
        assert!(
            counts.try_claim(attacker, &limits).is_none(),
            "half of max reached"
        );
        // Another source still gets its share (and the global cap has room for it).
        let share: Vec<SourceSlot> = (0..3)
            .map(|_| counts.try_claim(client, &limits).unwrap())
            .collect();
        assert!(counts.try_claim(client, &limits).is_none());
        assert_eq!(counts.in_progress(attacker), 6);
        drop(held);
        assert_eq!(counts.in_progress(attacker), 0);
        // 3 in progress in all: the attacker may burst again up to half of max.
        let again: Vec<SourceSlot> = (0..3)
            .map(|_| counts.try_claim(attacker, &limits).unwrap())
            .collect();
        assert_eq!(again.len(), 3);
        drop(share);
        assert_eq!(counts.in_progress(client), 0);
    }
}
