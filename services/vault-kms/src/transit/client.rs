//! The HTTPS client that talks to the Transit server: TLS trusting only the configured CA, the
//! current token (refreshed once when the server answers 403), AppRole login, bounded and
//! zeroized replies, and error messages that say what went wrong without a secret in them.

use std::fs;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use zeroize::Zeroizing;

use super::TransitError;
use super::settings::{TransitAuth, TransitSettings, check_settings};
use super::wire::{ErrorReply, Login, LoginReply, json_body};
use crate::SecretSource;

const TOKEN_HEADER: &str = "x-vault-token";

/// The largest reply read from the server; Transit's are a few hundred bytes.
const MAX_REPLY: usize = 1 << 20;

/// A request body handed to the HTTP stack, which wants it as `AsRef<[u8]>`: zeroized when the
/// stack drops it.
struct RequestBody(SecretSlice<u8>);

impl AsRef<[u8]> for RequestBody {
    fn as_ref(&self) -> &[u8] {
        self.0.expose_secret()
    }
}

/// Why a request failed.
pub(super) enum Failure {
    /// No answer: connection refused, TLS failure, timeout.
    Transport(reqwest::Error),
    /// The server answered with an error status.
    Status {
        status: StatusCode,
        errors: Vec<String>,
    },
    /// The server answered 2xx with a body we could not read.
    Malformed(String),
}

impl Failure {
    /// A 400 from decrypt that says the ciphertext or its associated data does not
    /// authenticate or is not a ciphertext at all.
    pub(super) fn is_integrity(&self) -> bool {
        match self {
            Self::Status { status, errors } if *status == StatusCode::BAD_REQUEST => {
                errors.iter().any(|e| {
                    let e = e.to_ascii_lowercase();
                    e.contains("message authentication")
                        || e.contains("invalid ciphertext")
                        || e.contains("failed to decrypt")
                        || e.contains("decryption failed")
                })
            }
            _ => false,
        }
    }
}

/// The HTTP client and the current token.
pub(super) struct Client {
    http: reqwest::Client,
    pub(super) base: String,
    timeout: Duration,
    pub(super) auth: TransitAuth,
    token: RwLock<Arc<SecretString>>,
    relogin: tokio::sync::Mutex<()>,
}

impl Client {
    pub(super) async fn connect(settings: &TransitSettings) -> Result<Self, TransitError> {
        let base = check_settings(settings)?;
        let http = http_client(&settings.ca_cert, settings.timeout)?;
        let mut client = Self {
            http,
            base,
            timeout: settings.timeout,
            auth: settings.auth.clone(),
            token: RwLock::new(Arc::new(SecretString::default())),
            relogin: tokio::sync::Mutex::new(()),
        };
        let token = client.fresh_token().await?;
        client.token = RwLock::new(Arc::new(token));
        Ok(client)
    }

    /// A token from the configured source: read it, or log in with AppRole.
    async fn fresh_token(&self) -> Result<SecretString, TransitError> {
        match &self.auth {
            TransitAuth::Token(source) => credential(source, "token"),
            TransitAuth::AppRole {
                mount,
                role_id,
                secret_id,
            } => {
                let role_id = credential(role_id, "AppRole role id")?;
                let secret_id = credential(secret_id, "AppRole secret id")?;
                let body = json_body(&Login {
                    role_id: role_id.expose_secret(),
                    secret_id: secret_id.expose_secret(),
                })
                .map_err(TransitError::Unavailable)?;
                let login_error = |detail: String| TransitError::Login {
                    address: self.base.clone(),
                    detail,
                };
                let reply = match self
                    .send_once(
                        &Method::POST,
                        &format!("auth/{mount}/login"),
                        Some(&body),
                        None,
                    )
                    .await
                {
                    Ok(reply) => reply,
                    Err(failure @ Failure::Status { status, .. }) if status.is_client_error() => {
                        return Err(login_error(self.describe(&failure)));
                    }
                    Err(failure) => return Err(TransitError::Unavailable(self.describe(&failure))),
                };
                let parsed: LoginReply = serde_json::from_slice(&reply).map_err(|_| {
                    login_error("the server's answer holds no client token".to_owned())
                })?;
                Ok(parsed.auth.client_token)
            }
        }
    }

    fn current_token(&self) -> Arc<SecretString> {
        match self.token.read() {
            Ok(token) => token.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces `used` by a fresh token, unless another call already did. False if no fresher
    /// token could be had (the source still holds the refused one, or login failed).
    async fn refresh(&self, used: &Arc<SecretString>) -> bool {
        let _guard = self.relogin.lock().await;
        if !Arc::ptr_eq(used, &self.current_token()) {
            return true;
        }
        let Ok(fresh) = self.fresh_token().await else {
            return false;
        };
        if fresh.expose_secret() == used.expose_secret() {
            return false;
        }
        match self.token.write() {
            Ok(mut token) => *token = Arc::new(fresh),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(fresh),
        }
        true
    }

    /// Sends an authenticated request to `/v1/<path>`; on 403 gets a fresh token once and
    /// retries. Returns the body of a 2xx answer.
    pub(super) async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&SecretSlice<u8>>,
    ) -> Result<Zeroizing<Vec<u8>>, Failure> {
        let token = self.current_token();
        match self.send_once(&method, path, body, Some(&token)).await {
            Err(Failure::Status {
                status: StatusCode::FORBIDDEN,
                errors,
            }) => {
                if self.refresh(&token).await {
                    let token = self.current_token();
                    self.send_once(&method, path, body, Some(&token)).await
                } else {
                    Err(Failure::Status {
                        status: StatusCode::FORBIDDEN,
                        errors,
                    })
                }
            }
            other => other,
        }
    }

    async fn send_once(
        &self,
        method: &Method,
        path: &str,
        body: Option<&SecretSlice<u8>>,
        token: Option<&Arc<SecretString>>,
    ) -> Result<Zeroizing<Vec<u8>>, Failure> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}/v1/{path}", self.base));
        if let Some(token) = token {
            let mut value = HeaderValue::from_str(token.expose_secret()).map_err(|_| {
                Failure::Malformed("the token is not a valid header value".to_owned())
            })?;
            value.set_sensitive(true);
            request = request.header(HeaderName::from_static(TOKEN_HEADER), value);
        }
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(Bytes::from_owner(RequestBody(body.clone())));
        }
        let mut response = request.send().await.map_err(Failure::Transport)?;
        let status = response.status();
        let capacity = response
            .content_length()
            .and_then(|len| usize::try_from(len).ok())
            .unwrap_or(1024)
            .min(MAX_REPLY);
        let mut reply = Zeroizing::new(Vec::with_capacity(capacity));
        while let Some(chunk) = response.chunk().await.map_err(Failure::Transport)? {
            if reply.len() + chunk.len() > MAX_REPLY {
                return Err(Failure::Malformed(format!(
                    "HTTP {}: reply larger than {MAX_REPLY} bytes",
                    status.as_u16()
                )));
            }
            if reply.len() + chunk.len() > reply.capacity() {
                // Grow by hand so that no unzeroized copy is left behind by a reallocation.
                let mut bigger = Zeroizing::new(Vec::with_capacity(
                    (reply.len() + chunk.len()).max(2 * reply.capacity()),
                ));
                bigger.extend_from_slice(&reply);
                reply = bigger;
            }
            reply.extend_from_slice(&chunk);
        }
        if status.is_success() {
            Ok(reply)
        } else {
            let errors = serde_json::from_slice::<ErrorReply>(&reply)
                .map(|e| e.errors)
                .unwrap_or_default();
            Err(Failure::Status { status, errors })
        }
    }

    /// How long a request may take.
    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// An error message for `failure`: says whether the server is unreachable, sealed, or
    /// refused the request. Never contains the token or a secret id.
    pub(super) fn describe(&self, failure: &Failure) -> String {
        let what = match failure {
            Failure::Transport(e) if e.is_timeout() => format!(
                "unreachable (no answer within {:?}): {}",
                self.timeout,
                vault_core::error::chain(e)
            ),
            Failure::Transport(e) => format!("unreachable: {}", vault_core::error::chain(e)),
            Failure::Status { status, errors } => {
                let said = errors.join("; ");
                let lower = said.to_ascii_lowercase();
                let kind = if *status == StatusCode::SERVICE_UNAVAILABLE && lower.contains("sealed")
                {
                    "sealed"
                } else if *status == StatusCode::FORBIDDEN {
                    "permission denied"
                } else if *status == StatusCode::NOT_FOUND {
                    "not found"
                } else if status.is_server_error() {
                    "server error"
                } else {
                    "request refused"
                };
                format!("{kind} (HTTP {}): {}", status.as_u16(), truncate(&said))
            }
            Failure::Malformed(detail) => format!("unexpected answer: {detail}"),
        };
        self.redact(format!("transit {}: {what}", self.base))
    }

    /// Belt and braces: the current token never appears in a message, whatever a server or
    /// library put into it.
    fn redact(&self, mut message: String) -> String {
        let token = self.current_token();
        let token = token.expose_secret();
        if !token.is_empty() && message.contains(token) {
            message = message.replace(token, "<redacted>");
        }
        message
    }
}

/// Reads a token or an AppRole id (`what` names it in errors) by the one rule for secrets
/// ([`SecretSource::read`]). Tokens and AppRole ids are single words, so one with a space in it
/// is refused here rather than sent.
fn credential(source: &SecretSource, what: &'static str) -> Result<SecretString, TransitError> {
    let error = |detail: String| TransitError::Credential { what, detail };
    let secret = source.read().map_err(|e| error(e.to_string()))?;
    if secret.expose_secret().contains(char::is_whitespace) {
        return Err(error(format!("{source} holds more than one word")));
    }
    Ok(secret)
}

/// An HTTPS client that trusts exactly the CAs in `ca_cert`, over rustls with ring.
pub(crate) fn http_client(
    ca_cert: &Path,
    timeout: Duration,
) -> Result<reqwest::Client, TransitError> {
    let ca_error = |detail: String| TransitError::Ca {
        path: ca_cert.to_owned(),
        detail,
    };
    let pem = fs::read(ca_cert).map_err(|e| ca_error(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| ca_error(format!("not PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| ca_error(format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(ca_error("holds no certificate".to_owned()));
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ca_error(format!("TLS setup: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .https_only(true)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .timeout(timeout)
        .build()
        .map_err(|e| {
            TransitError::Settings(format!("HTTP client: {}", vault_core::error::chain(&e)))
        })
}

/// The server's error text, cut to a sensible length for a log line.
pub(super) fn truncate(text: &str) -> String {
    const MAX: usize = 300;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}...", text.get(..end).unwrap_or_default()),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_one_word_read_by_the_one_rule() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s.secret-token\n").unwrap();
        let source = SecretSource::File(path.clone());
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let err = credential(&source, "token").unwrap_err().to_string();
        assert!(
            err.starts_with("transit token: ") && err.contains("mode 644"),
            "{err}"
        );
        assert!(!err.contains("secret-token"), "{err}");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let token = credential(&source, "token").unwrap();
        assert_eq!(token.expose_secret(), "s.secret-token");

        std::fs::write(&path, "hunter2 hunter3").unwrap();
        let err = credential(&source, "AppRole secret id")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("AppRole secret id") && err.contains("more than one word"),
            "{err}"
        );
        assert!(!err.contains("hunter"), "{err}");
    }
}
