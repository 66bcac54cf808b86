//! The plain-HTTP listener on `[telemetry] metrics_listen`: `GET /metrics` (Prometheus text,
//! `metrics.rs`), `GET /ready` (200 while the store and the KEK answer; 503 naming which does
//! not: Kubernetes' readiness probe, which cannot present a client certificate to the gRPC
//! port) and `GET /live` (200 while the process serves).
//!
//! Nothing here reads card data or takes input beyond the request line: bodies are ignored,
//! any other path is 404, any other method 405. It serves HTTP/1.1 only, one small response
//! per request, with a header-read timeout, so a slow client holds a connection, not the vault.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::metrics::{METRICS, Readiness};

/// Connections the listener serves at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;
/// A client must send its request headers within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The bound metrics listener.
#[derive(Debug)]
pub struct ProbeListener {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl ProbeListener {
    /// Binds `addr`.
    ///
    /// # Errors
    /// If the address cannot be bound.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        Ok(Self {
            listener,
            local_addr,
        })
    }

    /// The bound address (useful with port 0).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until the task is dropped.
    pub async fn serve(self, readiness: std::sync::Arc<Readiness>) {
        let slots = std::sync::Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(permit) = std::sync::Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let (tcp, _) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(error = %error, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let readiness = std::sync::Arc::clone(&readiness);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let readiness = std::sync::Arc::clone(&readiness);
                    async move { Ok::<_, Infallible>(answer(&request, &readiness)) }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
                if let Err(error) = served {
                    tracing::debug!(error = %error, "metrics listener: connection ended");
                }
                drop(permit);
            });
        }
    }
}

fn answer(request: &Request<Incoming>, readiness: &Readiness) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".to_owned());
    }
    match request.uri().path() {
        "/metrics" => match METRICS.encode() {
            Ok(body) => {
                let mut response = text(StatusCode::OK, body);
                response.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                response
            }
            Err(_) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "metrics could not be encoded\n".to_owned(),
            ),
        },
        "/ready" => match readiness.state() {
            (true, true) => text(StatusCode::OK, "ready\n".to_owned()),
            (store_up, kek_up) => {
                let down: Vec<&str> = [("store", store_up), ("kek", kek_up)]
                    .iter()
                    .filter(|(_, up)| !up)
                    .map(|(name, _)| *name)
                    .collect();
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {} unreachable\n", down.join(" and ")),
                )
            }
        },
        "/live" => text(StatusCode::OK, "live\n".to_owned()),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /ready, /live\n".to_owned(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    response
}
