//! The forward proxy's HTTPS client: [`HttpsEgress`] implements `vault_core`'s
//! [`Egress`] port. The domain decides what may be sent and where; this crate only carries it,
//! and holds the line on the way out:
//!
//! - the request goes to the approved destination's base URL and nowhere else (the URL is
//!   built from it and checked again after parsing), with no proxy from the environment;
//! - TLS trusts only the destination's trust anchor, and, if it names one, only the pinned
//!   leaf certificate (checked after the chain, the name and the signatures);
//! - a client certificate is presented only if the destination names a configured identity;
//! - redirects are never followed; `Accept-Encoding: identity` is sent, no decoder is built in,
//!   and an answer with any other `Content-Encoding` is refused;
//! - the body is read chunk by chunk and refused as soon as it passes the destination's cap;
//! - the whole exchange (connect, send, answer) ends within the destination's timeout.
//!
//! One `reqwest::Client` (and so one TLS configuration and connection pool) is kept per
//! approved destination version. Nothing here logs or formats a request or an answer body.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use vault_core::InvalidArgument;
use vault_core::forward::ports::MAX_FORWARD_TIMEOUT;
use vault_core::forward::{
    Destination, DestinationSpec, Egress, EgressFailure, Method, OutboundRequest, ProcessorResponse,
};

/// The most destination versions whose clients are kept at once.
const MAX_CLIENTS: usize = 256;

/// A client certificate (PEM chain, leaf first) and its private key (PEM), as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentityFiles {
    /// The certificate chain.
    pub certificate: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// Why the configured client identities could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EgressConfigError {
    /// A file could not be read.
    #[error("{name}: {path}: {source}")]
    Read {
        /// The identity's name.
        name: String,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file holds no usable certificate or key.
    #[error("{name}: {path}: {problem}")]
    Invalid {
        /// The identity's name.
        name: String,
        /// The file.
        path: PathBuf,
        /// What is wrong (never the file's contents).
        problem: &'static str,
    },
}

/// A loaded client identity. Its key has no `Debug`.
struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl ClientIdentity {
    fn read(name: &str, files: &ClientIdentityFiles) -> Result<Self, EgressConfigError> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| EgressConfigError::Read {
                name: name.to_owned(),
                path: path.clone(),
                source,
            })
        };
        let invalid = |path: &PathBuf, problem| EgressConfigError::Invalid {
            name: name.to_owned(),
            path: path.clone(),
            problem,
        };
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&read(&files.certificate)?)
                .collect::<Result<_, _>>()
                .map_err(|_| invalid(&files.certificate, "is not a PEM certificate chain"))?;
        if chain.is_empty() {
            return Err(invalid(&files.certificate, "holds no certificate"));
        }
        let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?)
            .map_err(|_| invalid(&files.key, "holds no PEM private key"))?;
        Ok(Self { chain, key })
    }
}

/// The forward proxy's HTTPS client (see the crate doc).
pub struct HttpsEgress {
    identities: BTreeMap<String, ClientIdentity>,
    clients: Mutex<HashMap<String, reqwest::Client>>,
}

impl std::fmt::Debug for HttpsEgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsEgress")
            .field("identities", &self.identities.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The destination's trust anchors, or `None` if it holds no usable CA certificate.
fn roots(spec: &DestinationSpec) -> Option<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(spec.trust_anchor_pem.as_bytes()) {
        roots.add(cert.ok()?).ok()?;
    }
    (!roots.is_empty()).then_some(roots)
}

/// The destination's pin, decoded.
fn pin(spec: &DestinationSpec) -> Option<Option<[u8; 32]>> {
    let Some(hex) = &spec.pinned_sha256 else {
        return Some(None);
    };
    let mut pin = [0u8; 32];
    for (i, byte) in pin.iter_mut().enumerate() {
        let pair = hex.get(2 * i..2 * i + 2)?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(Some(pin))
}

/// The WebPKI verifier over the destination's trust anchors, then, if the destination pins
/// one, the leaf certificate compared with the pin. Never weaker than the WebPKI check alone.
#[derive(Debug)]
struct PinnedServerVerifier {
    chain: Arc<WebPkiServerVerifier>,
    pin: Option<[u8; 32]>,
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.chain.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        match self.pin {
            Some(pin) if vault_crypto::sha256(end_entity.as_ref()) != pin => {
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ))
            }
            _ => Ok(verified),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

impl HttpsEgress {
    /// Reads every configured client identity now, so that a bad file stops the start.
    ///
    /// # Errors
    /// [`EgressConfigError`] naming the identity and file.
    pub fn new(
        identities: BTreeMap<String, ClientIdentityFiles>,
    ) -> Result<Self, EgressConfigError> {
        let identities = identities
            .iter()
            .map(|(name, files)| Ok((name.clone(), ClientIdentity::read(name, files)?)))
            .collect::<Result<_, EgressConfigError>>()?;
        Ok(Self {
            identities,
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// The client for an approved destination version, built once.
    fn client(&self, destination: &Destination) -> Result<reqwest::Client, EgressFailure> {
        let key = destination.fingerprint().to_owned();
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = self.build(destination.spec())?;
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok(client)
    }

    fn build(&self, spec: &DestinationSpec) -> Result<reqwest::Client, EgressFailure> {
        let roots = roots(spec).ok_or(EgressFailure::Misconfigured)?;
        let pin = pin(spec).ok_or(EgressFailure::Misconfigured)?;
        let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|_| EgressFailure::Misconfigured)?;
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|_| EgressFailure::Misconfigured)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedServerVerifier { chain, pin }));
        let mut tls = match &spec.client_identity {
            Some(name) => {
                let identity = self
                    .identities
                    .get(name)
                    .ok_or(EgressFailure::Misconfigured)?;
                builder
                    .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
                    .map_err(|_| EgressFailure::Misconfigured)?
            }
            None => builder.with_no_client_auth(),
        };
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let timeout = Duration::from_millis(spec.timeout_ms).min(MAX_FORWARD_TIMEOUT);
        reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .https_only(true)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout)
            .timeout(timeout)
            .build()
            .map_err(|_| EgressFailure::Misconfigured)
    }
}

/// The TLS error behind `cause`, looking through `io::Error`s wrapped in one another (whose
/// `source()` skips the error they wrap).
fn tls_error<'a>(mut cause: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    loop {
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        cause = cause.downcast_ref::<std::io::Error>()?.get_ref()?;
    }
}

/// What a transport error means for the caller.
fn failure_of(error: &reqwest::Error) -> EgressFailure {
    if error.is_timeout() {
        return EgressFailure::Timeout;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if let Some(tls) = tls_error(cause) {
            // A TLS failure while connecting sent nothing. In TLS 1.3 a server refuses our
            // client certificate only after we have written the request, with an alert: sent,
            // but its TLS layer never accepted it. Any other failure may have come after the
            // processor read the request.
            return match tls {
                rustls::Error::InvalidCertificate(_) => EgressFailure::Untrusted,
                _ if error.is_connect() => EgressFailure::Unreachable,
                rustls::Error::AlertReceived(alert) if refuses_handshake(*alert) => {
                    EgressFailure::Refused
                }
                _ => EgressFailure::Protocol,
            };
        }
        source = cause.source();
    }
    if error.is_connect() {
        EgressFailure::Unreachable
    } else {
        EgressFailure::Protocol
    }
}

/// True for the alerts a server sends when it refuses the handshake (our certificate, the
/// protocol), before any application data is processed.
fn refuses_handshake(alert: rustls::AlertDescription) -> bool {
    use rustls::AlertDescription as A;
    matches!(
        alert,
        A::HandshakeFailure
            | A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::AccessDenied
            | A::CertificateRequired
            | A::ProtocolVersion
            | A::InsufficientSecurity
    )
}

/// The request's URL: the base URL and the path, and the same host and port once parsed.
fn url(spec: &DestinationSpec, path: &str) -> Result<reqwest::Url, EgressFailure> {
    let base_text = spec.base_url.trim_end_matches('/');
    let base = reqwest::Url::parse(base_text).map_err(|_| EgressFailure::Misconfigured)?;
    let url = reqwest::Url::parse(&format!("{base_text}{path}"))
        .map_err(|_| EgressFailure::Misconfigured)?;
    let same = url.scheme() == "https"
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default()
        && url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && url.fragment().is_none();
    if same {
        Ok(url)
    } else {
        Err(EgressFailure::Misconfigured)
    }
}

fn method(method: Method) -> reqwest::Method {
    match method {
        Method::Get => reqwest::Method::GET,
        Method::Post => reqwest::Method::POST,
        Method::Put => reqwest::Method::PUT,
        Method::Patch => reqwest::Method::PATCH,
        Method::Delete => reqwest::Method::DELETE,
    }
}

async fn exchange(
    client: reqwest::Client,
    request: OutboundRequest,
) -> Result<ProcessorResponse, EgressFailure> {
    let spec = request.destination.spec();
    let mut builder = client
        .request(method(request.method), url(spec, &request.path)?)
        .header(reqwest::header::ACCEPT_ENCODING, "identity");
    for (name, value) in &request.headers {
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| EgressFailure::Misconfigured)?;
        let value = reqwest::header::HeaderValue::from_str(value)
            .map_err(|_| EgressFailure::Misconfigured)?;
        builder = builder.header(name, value);
    }
    if request.method != Method::Get {
        builder = builder.body(request.body.to_vec());
    }
    let mut response = builder.send().await.map_err(|e| failure_of(&e))?;
    let status = response.status();
    if status.is_redirection() {
        return Err(EgressFailure::Redirect);
    }
    let encoded = response
        .headers()
        .get_all(reqwest::header::CONTENT_ENCODING)
        .iter()
        .any(|value| !value.as_bytes().eq_ignore_ascii_case(b"identity"));
    // `Transfer-Encoding: gzip, chunked` is compressed too: hyper removes the chunking only.
    let transfer_coded = response
        .headers()
        .get_all(reqwest::header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .any(|coding| {
            !coding.eq_ignore_ascii_case(b"chunked") && !coding.eq_ignore_ascii_case(b"identity")
        });
    if encoded || transfer_coded {
        return Err(EgressFailure::Compressed);
    }
    let headers = response
        .headers()
        .iter()
        .filter(|(name, _)| spec.response_headers.contains(name.as_str()))
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect();
    let cap = usize::try_from(spec.max_response_bytes).unwrap_or(usize::MAX);
    let mut body = zeroize::Zeroizing::new(Vec::new());
    while let Some(chunk) = response.chunk().await.map_err(|e| failure_of(&e))? {
        if body.len().saturating_add(chunk.len()) > cap {
            return Err(EgressFailure::TooLarge);
        }
        body.extend_from_slice(chunk.as_ref());
    }
    Ok(ProcessorResponse {
        status: status.as_u16(),
        headers,
        body,
    })
}

#[async_trait]
impl Egress for HttpsEgress {
    fn check(&self, spec: &DestinationSpec) -> Result<(), InvalidArgument> {
        if roots(spec).is_none() {
            return Err(InvalidArgument {
                field: "trust_anchor_pem",
                problem: "must hold PEM CA certificates, every one usable",
            });
        }
        if let Some(name) = &spec.client_identity
            && !self.identities.contains_key(name)
        {
            return Err(InvalidArgument {
                field: "client_identity",
                problem: "names no client identity configured in vaultd.toml",
            });
        }
        Ok(())
    }

    async fn send(&self, request: OutboundRequest) -> Result<ProcessorResponse, EgressFailure> {
        let client = self.client(&request.destination)?;
        let timeout = request.timeout.min(MAX_FORWARD_TIMEOUT);
        tokio::time::timeout(timeout, exchange(client, request))
            .await
            .unwrap_or(Err(EgressFailure::Timeout))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn spec(base_url: &str, pin: Option<&str>) -> DestinationSpec {
        DestinationSpec::from_json(
            &serde_json::json!({
                "name": "acme",
                "base_url": base_url,
                "trust_anchor_pem": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "pinned_sha256": pin,
                "methods": ["POST"],
                "path_patterns": ["/v1/charges"],
                "templates": {"t": {"content_type": "form", "body": "n={{card.number}}"}},
                "timeout_ms": 1000,
                "max_response_bytes": 10
            })
            .to_string(),
        )
        .unwrap()
    }

    #[test]
    fn requests_go_to_the_base_url_and_nowhere_else() {
        let acme = spec("https://psp.example:8443/api/", None);
        assert_eq!(
            url(&acme, "/v1/charges").unwrap().as_str(),
            "https://psp.example:8443/api/v1/charges"
        );
        // Whatever a path might do once joined (the domain refuses these paths first), the
        // host and port stay the base URL's, with no user info, query or fragment.
        let bare = spec("https://psp.example", None);
        for path in [
            "@evil.example/x",
            ".evil.example/x",
            ":9/x",
            "/x?q=1",
            "/x#f",
        ] {
            assert_eq!(
                url(&bare, path).err(),
                Some(EgressFailure::Misconfigured),
                "{path}"
            );
        }
    }

    #[test]
    fn a_pin_decodes_or_fails_closed() {
        let pinned = spec("https://psp.example", Some(&"ab".repeat(32)));
        assert_eq!(pin(&pinned), Some(Some([0xab; 32])));
        assert_eq!(pin(&spec("https://psp.example", None)), Some(None));
    }

    #[test]
    fn a_spec_whose_trust_anchor_is_no_certificate_is_refused() {
        let egress = HttpsEgress::new(BTreeMap::new()).unwrap();
        let refused = egress
            .check(&spec("https://psp.example", None))
            .unwrap_err();
        assert_eq!(refused.field, "trust_anchor_pem");
        assert!(!format!("{egress:?}").contains("key"));
    }
}
