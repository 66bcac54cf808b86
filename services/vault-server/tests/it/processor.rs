//! A fake payment processor for the forward tests: an HTTPS server on loopback with its own
//! test CA, recording every request it receives. What it answers depends on the path:
//!
//! - `/v1/charges`, `/v1/payments/ID/capture`: 201, JSON, echoing the card it received
//!   plainly in the body and in an `x-card` header (a processor that echoes what it got);
//! - `/v1/echo/MODE`: 200, the card echoed in the body as MODE says: `plain`, `split`
//!   (groups of four split by spaces and dashes), `unicode` (every digit `\u00XX`), `percent`
//!   (every digit `%3X`), `header` (plainly in a header only);
//! - `/v1/redirect`: 302 to another host; `/v1/gzip`: a gzip-encoded body (`/v1/gzip-te`: by
//!   `Transfer-Encoding: gzip, chunked`); `/v1/big`: a body of 1 MiB; `/v1/hang`: accepts the
//!   request and never answers.
//!
//! The card it echoes is the one in the body it received (the digits after `number`), so
//! the test learns nothing it did not send through the vault.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use vault_server::pki::DevCa;

/// One request as the processor received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A running fake processor.
pub struct Processor {
    /// `https://127.0.0.1:PORT`.
    pub base_url: String,
    /// Its CA certificate (the trust anchor a destination names).
    pub ca_pem: String,
    /// Its leaf certificate, DER.
    pub leaf_der: Vec<u8>,
    /// What it received, in order.
    pub received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Processor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The card number in a body the vault rendered: the digits after the first `number`.
fn card_in(body: &str) -> String {
    body.split_once("number")
        .map(|(_, rest)| {
            rest.chars()
                .skip_while(|c| !c.is_ascii_digit())
                .take_while(char::is_ascii_digit)
                .collect()
        })
        .unwrap_or_default()
}

fn echo(card: &str, mode: &str) -> String {
    match mode {
        "split" => {
            let groups: Vec<String> = card
                .as_bytes()
                .chunks(4)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect();
            format!("{{\"card\":\"{}\"}}", groups.join(" - "))
        }
        "unicode" => {
            let escaped: String = card
                .chars()
                .map(|c| format!("\\u{:04x}", c as u32))
                .collect();
            format!("{{\"card\":\"{escaped}\"}}")
        }
        "percent" => {
            let encoded: String = card.bytes().map(|b| format!("%{b:02X}")).collect();
            format!("card={encoded}&status=ok")
        }
        "header" => "{\"status\":\"ok\"}".to_owned(),
        _ => format!("{{\"card\":\"{card}\",\"status\":\"ok\"}}"),
    }
}

async fn answer(
    request: Request<Incoming>,
    received: Arc<Mutex<Vec<Received>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let headers = request
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    let card = card_in(&body);
    received.lock().unwrap().push(Received {
        method,
        path: path.clone(),
        headers,
        body,
    });
    let response = |status: u16, body: Vec<u8>| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("x-request-id", "req_123")
            .header("set-cookie", "session=secret")
            .body(Full::new(Bytes::from(body)))
    };
    let built = match path.as_str() {
        "/v1/redirect" => Response::builder()
            .status(302)
            .header("location", "https://elsewhere.example/v1/charges")
            .body(Full::new(Bytes::new())),
        "/v1/gzip" => Response::builder()
            .status(200)
            .header("content-encoding", "gzip")
            .body(Full::new(Bytes::from_static(&[
                0x1f, 0x8b, 8, 0, 0, 0, 0, 0,
            ]))),
        // Compressed by a transfer coding, which an HTTP client removes only the chunking of.
        "/v1/gzip-te" => Response::builder()
            .status(200)
            .header("transfer-encoding", "gzip, chunked")
            .body(Full::new(Bytes::from_static(&[
                0x1f, 0x8b, 8, 0, 0, 0, 0, 0,
            ]))),
        "/v1/big" => response(200, vec![b'x'; 1024 * 1024]),
        "/v1/hang" => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            response(200, Vec::new())
        }
        p if p.starts_with("/v1/echo/") => {
            let mode = p.trim_start_matches("/v1/echo/");
            let mut builder = Response::builder().status(200);
            if mode == "header" {
                builder = builder.header("x-card", card.as_str());
            }
            builder.body(Full::new(Bytes::from(echo(&card, mode))))
        }
        "/v1/charges" => Response::builder()
            .status(201)
            .header("content-type", "application/json")
            .header("x-request-id", "req_123")
            .header("x-card", card.as_str())
            .header("set-cookie", "session=secret")
            .body(Full::new(Bytes::from(format!(
                "{{\"id\":\"ch_1\",\"card\":\"{card}\",\"status\":\"succeeded\"}}"
            )))),
        p if p.starts_with("/v1/payments/") => response(200, echo(&card, "plain").into_bytes()),
        _ => response(404, b"{\"error\":\"not found\"}".to_vec()),
    };
    Ok(built.unwrap())
}

impl Processor {
    /// Starts a processor with a certificate from a CA of its own.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Starts a processor that requires a client certificate from `client_ca_pem`, if given.
    pub async fn start_with(client_ca_pem: Option<&str>) -> Self {
        let ca = DevCa::generate("fake processor CA").unwrap();
        let leaf = ca.issue_server(&["localhost", "127.0.0.1"]).unwrap();
        let chain: Vec<rustls::pki_types::CertificateDer<'static>> =
            rustls::pki_types::pem::PemObject::pem_slice_iter(leaf.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let leaf_der = chain[0].to_vec();
        let key =
            rustls::pki_types::pem::PemObject::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap();
        let builder = match client_ca_pem {
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(pem.as_bytes()) {
                    roots.add(cert.unwrap()).unwrap();
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("https://{}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&received);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |request| {
                        answer(request, Arc::clone(&log))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            base_url,
            ca_pem: ca.cert_pem(),
            leaf_der,
            received,
            task,
        }
    }

    /// What it received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}
