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
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

mod refusals;

pub use crate::config::HandshakeLimits;
pub use refusals::{Failure, Refusal, RefusalCounts};

/// Handshaken connections waiting for tonic to pick them up.
const ACCEPT_BACKLOG: usize = 128;

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

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
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

/// A server configuration and the client verifier in it (kept to re-check open connections).
struct Settings {
    config: Arc<ServerConfig>,
    verifier: Arc<dyn ClientCertVerifier>,
}

/// A rustls server configuration from `[tls]`: TLS 1.3 only, ring, client certificates
/// required and verified against `client_ca` and, if given, its `client_crls` (the end-entity
/// certificate is checked; a certificate whose issuer has no CRL among them is refused, and with
/// `refuse_stale_crls` so is one covered by a CRL past its nextUpdate), ALPN h2. The key file
/// must be private (`vault_kms::check_private`). Called again by [`ServerTls::reload`].
///
/// # Errors
/// [`TlsError`] if a file is unreadable or rustls refuses the certificates or CRLs.
fn settings(tls: &crate::config::TlsConfig) -> Result<Settings, TlsError> {
    let pem_error = |path: &Path, problem: String| TlsError::Pem {
        path: path.to_owned(),
        problem,
    };
    let chain = read_certs(&tls.cert)?;
    vault_kms::check_private(&tls.key)?;
    let key =
        PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| pem_error(&tls.key, e.to_string()))?;
    let mut roots = RootCertStore::empty();
    for ca in read_certs(&tls.client_ca)? {
        roots
            .add(ca)
            .map_err(|e| pem_error(&tls.client_ca, e.to_string()))?;
    }
    let mut crls = Vec::new();
    for path in &tls.client_crls {
        let found = CertificateRevocationListDer::pem_file_iter(path)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| pem_error(path, e.to_string()))?;
        if found.is_empty() {
            return Err(pem_error(
                path,
                "no certificate revocation list found".to_owned(),
            ));
        }
        crls.extend(found);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if !crls.is_empty() {
        verifier = verifier.with_crls(crls).only_check_end_entity_revocation();
        if tls.refuse_stale_crls {
            verifier = verifier.enforce_revocation_expiration();
        }
    }
    let verifier = verifier
        .build()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_client_cert_verifier(Arc::clone(&verifier))
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Settings {
        config: Arc::new(config),
        verifier,
    })
}

/// How often the CRL files are checked for changes (SIGHUP reloads at once).
pub const CRL_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// The TLS settings connections are accepted under, reloadable without a restart (new CRLs),
/// and the connections open under them, so that a reload closes those whose client
/// certificate the new settings refuse.
pub struct ServerTls {
    source: crate::config::TlsConfig,
    current: RwLock<Settings>,
    open: Mutex<HashMap<u64, OpenConnection>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("client_crls", &self.source.client_crls)
            .finish_non_exhaustive()
    }
}

struct OpenConnection {
    chain: Vec<CertificateDer<'static>>,
    closer: Arc<Closer>,
}

impl ServerTls {
    /// Settings from `[tls]`.
    ///
    /// # Errors
    /// [`TlsError`] if a file is unreadable or rustls refuses the certificates or CRLs.
    pub fn load(tls: &crate::config::TlsConfig) -> Result<Self, TlsError> {
        Ok(Self {
            source: tls.clone(),
            current: RwLock::new(settings(tls)?),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        })
    }

    fn config(&self) -> Arc<ServerConfig> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(&current.config)
    }

    /// Re-reads the certificate, key, client CA and CRLs; new connections are accepted under
    /// them, and open connections whose client certificate they refuse (a revoked one) are
    /// closed. Returns how many were closed. On an error the settings in force stay.
    ///
    /// # Errors
    /// [`TlsError`] if a file is unreadable or rustls refuses the certificates or CRLs.
    pub fn reload(&self) -> Result<usize, TlsError> {
        let fresh = settings(&self.source)?;
        let verifier = Arc::clone(&fresh.verifier);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        let now = UnixTime::now();
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let mut closed = 0;
        for connection in open.values() {
            let Some((leaf, intermediates)) = connection.chain.split_first() else {
                continue;
            };
            if verifier
                .verify_client_cert(leaf, intermediates, now)
                .is_err()
            {
                connection.closer.close();
                closed += 1;
            }
        }
        Ok(closed)
    }

    /// What a reload record names: the SHA-256 of the certificate chain, client CA and CRL
    /// files as they are on disk now (public material only; the key file is not read), e.g.
    /// `cert sha256:AB.. client_ca sha256:CD.. crls sha256:EF..,12..`.
    #[must_use]
    pub fn digests(&self) -> String {
        let digest = |path: &Path| {
            std::fs::read(path).map_or_else(
                |_| "unreadable".to_owned(),
                |bytes| format!("sha256:{}", hex::encode(vault_crypto::sha256(&bytes))),
            )
        };
        let crls: Vec<String> = self.source.client_crls.iter().map(|p| digest(p)).collect();
        format!(
            "cert {} client_ca {} crls {}",
            digest(&self.source.cert),
            digest(&self.source.client_ca),
            if crls.is_empty() {
                "none".to_owned()
            } else {
                crls.join(",")
            }
        )
    }

    /// The CRL files' sizes and modification times: what a change is detected by.
    #[must_use]
    pub fn crl_stamp(&self) -> Vec<Option<(u64, std::time::SystemTime)>> {
        self.source
            .client_crls
            .iter()
            .map(|path| {
                std::fs::metadata(path)
                    .ok()
                    .and_then(|meta| Some((meta.len(), meta.modified().ok()?)))
            })
            .collect()
    }

    fn register(self: &Arc<Self>, stream: &TlsStream<TcpStream>) -> Registration {
        let chain = stream
            .get_ref()
            .1
            .peer_certificates()
            .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        let closer = Arc::new(Closer::default());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                id,
                OpenConnection {
                    chain,
                    closer: Arc::clone(&closer),
                },
            );
        Registration {
            tls: Arc::clone(self),
            id,
            closer,
        }
    }
}

/// Tells a connection to close: its next read fails, and a read already waiting is woken.
#[derive(Debug, Default)]
struct Closer {
    closed: AtomicBool,
    reader: Mutex<Option<Waker>>,
}

impl Closer {
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(waker) = self
            .reader
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            waker.wake();
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// A connection's place among the open ones; dropping it removes the connection.
struct Registration {
    tls: Arc<ServerTls>,
    id: u64,
    closer: Arc<Closer>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.tls
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

/// A handshaken connection that a reload can close ([`ServerTls::reload`]).
pub struct Revocable {
    inner: TlsStream<TcpStream>,
    registration: Registration,
}

impl std::fmt::Debug for Revocable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocable")
            .field("id", &self.registration.id)
            .finish_non_exhaustive()
    }
}

fn revoked() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the client certificate is no longer accepted",
    )
}

impl AsyncRead for Revocable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let closer = &self.registration.closer;
        if closer.is_closed() {
            return Poll::Ready(Err(revoked()));
        }
        *closer.reader.lock().unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
        // Closed between the check and the waker being stored: do not sleep on it.
        if closer.is_closed() {
            return Poll::Ready(Err(revoked()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Revocable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.registration.closer.is_closed() {
            return Poll::Ready(Err(revoked()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connected for Revocable {
    type ConnectInfo = <TlsStream<TcpStream> as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
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
    tls: Arc<ServerTls>,
    limits: HandshakeLimits,
    refusals: Arc<RefusalCounts>,
) -> ReceiverStream<io::Result<Revocable>> {
    let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
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
            let source = Source::of(peer.ip());
            let Some(slot) = sources.try_claim(source, &limits) else {
                refusals.record(Refusal::SourceShare, source);
                tracing::warn!(
                    %peer,
                    "too many tls handshakes in progress from this source; connection closed"
                );
                continue;
            };
            let Ok(permit) = pending.clone().try_acquire_owned() else {
                refusals.record(Refusal::GlobalCap, source);
                tracing::warn!(%peer, "too many tls handshakes in progress; connection closed");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            // The settings in force now (a reload may have changed the CRLs).
            let acceptor = TlsAcceptor::from(tls.config());
            let tls = Arc::clone(&tls);
            let tx = tx.clone();
            let refusals = Arc::clone(&refusals);
            tokio::spawn(async move {
                let handshaken = handshake(&acceptor, tcp, peer, limits.timeout).await;
                drop((permit, slot));
                match handshaken {
                    Ok(stream) => {
                        let registration = tls.register(&stream);
                        let _ = tx
                            .send(Ok(Revocable {
                                inner: stream,
                                registration,
                            }))
                            .await;
                    }
                    Err(reason) => refusals.record(reason, source),
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
) -> Result<TlsStream<TcpStream>, Refusal> {
    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(err)) => {
            tracing::warn!(%peer, error = %err, "tls handshake refused");
            Err(Refusal::Handshake(Failure::of(&err)))
        }
        Err(_) => {
            tracing::warn!(%peer, "tls handshake timed out");
            Err(Refusal::Timeout)
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
