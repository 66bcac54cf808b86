//! The `vault.v1.TokenService` gRPC service: converts between protobuf and domain types, takes
//! the caller's identity from its client certificate, and logs one line per call. All
//! decisions are the domain's (`vault_core::Vault`); all error codes come from `status.rs`.

use sha2::{Digest, Sha256};
use std::future::Future;
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};
use vault_core::audit::{NO_CERTIFICATE, UNIDENTIFIED_CERTIFICATE};
use vault_core::expiry::Expiry;
use vault_core::ids::{CallContext, CallerId};
use vault_core::policy::Operation;
use vault_core::ports::CardMetadata;
use vault_core::token::TokenFormat;
use vault_core::tokens::{
    BatchCard, TokenCommand, TokenizeBatchCommand, TokenizeCommand, Tokenized,
};
use vault_core::{Vault, VaultError};
use vault_proto::v1 as pb;
use zeroize::Zeroizing;

use crate::identity::{IdentityConfig, identity_of_known};
use crate::status::to_status;

/// Response metadata key carrying the call's request id (also in the audit record).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The gRPC face of the vault's card-data calls.
#[derive(Debug, Clone)]
pub struct TokenApi {
    calls: Calls,
}

impl TokenApi {
    /// Serves the vault's card-data calls.
    #[must_use]
    pub fn new(calls: Calls) -> Self {
        Self { calls }
    }
}

/// What every service's calls share: the vault, the time bound on a call's store work, and
/// the rules that name the caller from its certificate.
#[derive(Debug, Clone)]
pub struct Calls {
    pub(crate) vault: Vault,
    pub(crate) call_timeout: Duration,
    identity: IdentityConfig,
}

impl Calls {
    /// Calls on `vault`, each call's work on the store bounded by `call_timeout`: past it the
    /// call fails UNAVAILABLE and releases nothing (an unfinished transaction rolls back; a
    /// Detokenize whose audit record is not yet durable returns no PAN). Callers are named by
    /// their certificates under `identity`.
    #[must_use]
    pub fn new(vault: Vault, call_timeout: Duration, identity: IdentityConfig) -> Self {
        Self {
            vault,
            call_timeout,
            identity,
        }
    }

    /// Runs `call`, failing UNAVAILABLE if it takes longer than `storage.call_timeout_ms`.
    pub(crate) async fn within<T>(
        &self,
        call: impl Future<Output = Result<T, VaultError>>,
    ) -> Result<T, VaultError> {
        tokio::time::timeout(self.call_timeout, call)
            .await
            .unwrap_or(Err(VaultError::Timeout(self.call_timeout)))
    }

    /// Runs a forward, failing DEADLINE_EXCEEDED if it takes longer than
    /// `storage.call_timeout_ms` plus the longest timeout a destination may set (the
    /// destination's own timeout ends the processor's part sooner). Not the generic timeout:
    /// its "no card data was released" may be untrue once the first record is written, so
    /// the caller is told the request may have been delivered.
    pub(crate) async fn within_forward<T>(
        &self,
        call: impl Future<Output = Result<T, VaultError>>,
    ) -> Result<T, VaultError> {
        let limit = self.call_timeout + vault_core::forward::ports::MAX_FORWARD_TIMEOUT;
        tokio::time::timeout(limit, call)
            .await
            .unwrap_or(Err(VaultError::Egress(
                vault_core::forward::EgressFailure::Timeout,
            )))
    }

    /// The call's context, or, for a certificate that names no identity, the audited
    /// UNAUTHENTICATED refusal.
    pub(crate) async fn identify<T>(
        &self,
        request: &Request<T>,
        operation: Operation,
    ) -> Result<CallContext, Status> {
        match call_context(request, &self.vault, self.identity) {
            Ok(ctx) => Ok(ctx),
            Err(ctx) => {
                let error = self
                    .within(async {
                        Err::<(), _>(self.vault.refuse_unidentified(&ctx, operation).await)
                    })
                    .await
                    .err()
                    .unwrap_or(VaultError::Unauthenticated);
                respond::<()>(&ctx, operation, Err(error)).map(|_| ctx)
            }
        }
    }
}

/// The call's context: identity from the verified client certificate (`identity.rs`), peer address, and a fresh request id. If the certificate names no identity, the
/// context's caller describes the certificate by its SHA-256 digest instead, and `Err` says so.
fn call_context<T>(
    request: &Request<T>,
    vault: &Vault,
    rules: IdentityConfig,
) -> Result<CallContext, CallContext> {
    let leaf = request
        .peer_certs()
        .and_then(|certs| certs.first().map(|cert| cert.as_ref().to_vec()));
    let identity = leaf
        .as_deref()
        .and_then(|der| identity_of_known(der, rules, |id| vault.lists_caller(id)));
    let request_id = vault_core::ids::new_request_id();
    // The call's span (`observe.rs`): every log line of the call carries it.
    tracing::Span::current().record("request_id", request_id.as_str());
    let ctx = |caller: String| CallContext {
        caller: CallerId::new(caller),
        peer: request.remote_addr().map(|addr| addr.to_string()),
        request_id: request_id.clone(),
    };
    match (identity, leaf) {
        (Some(identity), _) => Ok(ctx(identity)),
        (None, Some(der)) => Err(ctx(format!(
            "{UNIDENTIFIED_CERTIFICATE}sha256:{}",
            hex::encode(Sha256::digest(&der))
        ))),
        (None, None) => Err(ctx(NO_CERTIFICATE.to_owned())),
    }
}

/// Logs the call's outcome and turns it into a gRPC response carrying the request id.
/// Errors are logged with their domain message, which never holds a PAN.
pub(crate) fn respond<T>(
    ctx: &CallContext,
    operation: Operation,
    result: Result<T, VaultError>,
) -> Result<Response<T>, Status> {
    let request_id = MetadataValue::try_from(ctx.request_id.as_str()).ok();
    let span = tracing::Span::current();
    match result {
        Ok(body) => {
            span.record("outcome", "OK");
            tracing::info!(
                request_id = %ctx.request_id,
                caller = %ctx.caller,
                operation = operation.as_str(),
                outcome = "ok",
                "call"
            );
            let mut response = Response::new(body);
            if let Some(id) = request_id {
                response.metadata_mut().insert(REQUEST_ID_HEADER, id);
            }
            Ok(response)
        }
        Err(error) => {
            let mut status = to_status(&error);
            span.record("outcome", vault_client::code_name(status.code()));
            if let VaultError::Throttled { limit, .. } = &error {
                let (label, tripped) = match limit {
                    vault_core::Throttle::RateLimit => ("rate_limit", false),
                    vault_core::Throttle::Enumeration { tripped } => {
                        ("enumeration_guard", *tripped)
                    }
                    vault_core::Throttle::NewMerchants => ("new_merchants", false),
                    vault_core::Throttle::ForwardedTokens => ("forwarded_tokens", false),
                };
                crate::metrics::METRICS.throttled(operation.as_str(), label, tripped);
            }
            if let VaultError::Throttled {
                limit: vault_core::Throttle::Enumeration { tripped: true },
                ..
            } = error
            {
                tracing::warn!(
                    request_id = %ctx.request_id,
                    caller = %ctx.caller,
                    operation = operation.as_str(),
                    "enumeration guard tripped: this caller brought too many different cards \
                     with the same shown digits to one merchant; see the call's audit record"
                );
            }
            tracing::warn!(
                request_id = %ctx.request_id,
                caller = %ctx.caller,
                operation = operation.as_str(),
                outcome = ?status.code(),
                error = %error,
                "call"
            );
            if let Some(id) = request_id {
                status.metadata_mut().insert(REQUEST_ID_HEADER, id);
            }
            Err(status)
        }
    }
}

/// Puts the call's merchant on its span (`observe.rs`) if it is a valid merchant id: one the
/// card-number rule or the id's shape refuses stays out of traces and logs.
fn on_span(merchant: String) -> String {
    if vault_core::ids::MerchantId::parse("merchant_id", &merchant).is_ok() {
        tracing::Span::current().record("merchant", merchant.as_str());
    }
    merchant
}

fn tokenized_to_proto(done: Tokenized) -> pb::TokenizeResponse {
    pb::TokenizeResponse {
        token: done.token.as_str().to_owned(),
        fingerprint: hex::encode(done.fingerprint),
        metadata: Some(metadata_to_proto(done.metadata)),
        existing: done.existing,
    }
}

fn format_from_proto(value: i32) -> Option<TokenFormat> {
    match pb::TokenFormat::try_from(value).ok()? {
        pb::TokenFormat::Unspecified | pb::TokenFormat::Random => Some(TokenFormat::Random),
        pb::TokenFormat::PanShaped => Some(TokenFormat::PanShaped),
    }
}

fn format_to_proto(format: TokenFormat) -> pb::TokenFormat {
    match format {
        TokenFormat::Random => pb::TokenFormat::Random,
        TokenFormat::PanShaped => pb::TokenFormat::PanShaped,
    }
}

fn expiry_to_proto(expiry: Option<Expiry>) -> Option<pb::Expiry> {
    expiry.map(|e| pb::Expiry {
        month: u32::from(e.month()),
        year: u32::from(e.year()),
    })
}

fn metadata_to_proto(metadata: CardMetadata) -> pb::TokenMetadata {
    pb::TokenMetadata {
        brand: metadata.brand.as_str().to_owned(),
        bin: metadata.bin,
        last4: metadata.last4,
        expiry: expiry_to_proto(metadata.expiry),
        created_at: rfc3339(metadata.created_at),
        token_format: format_to_proto(metadata.format).into(),
        pan_length: u32::from(metadata.pan_length),
    }
}

/// A time as RFC 3339, UTC.
pub(crate) fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[tonic::async_trait]
impl pb::token_service_server::TokenService for TokenApi {
    async fn tokenize(
        &self,
        request: Request<pb::TokenizeRequest>,
    ) -> Result<Response<pb::TokenizeResponse>, Status> {
        let ctx = self.calls.identify(&request, Operation::Tokenize).await?;
        let mut body = request.into_inner();
        let command = TokenizeCommand {
            merchant_id: on_span(std::mem::take(&mut body.merchant_id)),
            pan: Zeroizing::new(std::mem::take(&mut body.pan)),
            exp_month: body.exp_month,
            exp_year: body.exp_year,
            format: format_from_proto(body.token_format),
        };
        let result = self
            .calls
            .within(self.calls.vault.tokenize(&ctx, command))
            .await
            .map(tokenized_to_proto);
        respond(&ctx, Operation::Tokenize, result)
    }

    async fn tokenize_batch(
        &self,
        request: Request<pb::TokenizeBatchRequest>,
    ) -> Result<Response<pb::TokenizeBatchResponse>, Status> {
        let ctx = self.calls.identify(&request, Operation::Tokenize).await?;
        let body = request.into_inner();
        let command = TokenizeBatchCommand {
            merchant_id: on_span(body.merchant_id),
            cards: body
                .cards
                .into_iter()
                .map(|mut card| BatchCard {
                    pan: Zeroizing::new(std::mem::take(&mut card.pan)),
                    exp_month: card.exp_month,
                    exp_year: card.exp_year,
                })
                .collect(),
            format: format_from_proto(body.token_format),
        };
        let result = self
            .calls
            .within(self.calls.vault.tokenize_batch(&ctx, command))
            .await
            .map(|results| pb::TokenizeBatchResponse {
                results: results.into_iter().map(tokenized_to_proto).collect(),
            });
        respond(&ctx, Operation::Tokenize, result)
    }

    async fn detokenize(
        &self,
        request: Request<pb::DetokenizeRequest>,
    ) -> Result<Response<pb::DetokenizeResponse>, Status> {
        let ctx = self.calls.identify(&request, Operation::Detokenize).await?;
        let body = request.into_inner();
        let command = TokenCommand {
            merchant_id: on_span(body.merchant_id),
            token: body.token,
            reason: body.reason,
        };
        let result = self
            .calls
            .within(self.calls.vault.detokenize(&ctx, command))
            .await
            .map(|done| pb::DetokenizeResponse {
                pan: done.pan.expose_digits().to_owned(),
                expiry: expiry_to_proto(done.expiry),
            });
        respond(&ctx, Operation::Detokenize, result)
    }

    async fn get_token_metadata(
        &self,
        request: Request<pb::GetTokenMetadataRequest>,
    ) -> Result<Response<pb::GetTokenMetadataResponse>, Status> {
        let ctx = self.calls.identify(&request, Operation::Metadata).await?;
        let body = request.into_inner();
        let command = TokenCommand::without_reason(on_span(body.merchant_id), body.token);
        let result = self
            .calls
            .within(self.calls.vault.metadata(&ctx, command))
            .await
            .map(|metadata| pb::GetTokenMetadataResponse {
                metadata: Some(metadata_to_proto(metadata)),
            });
        respond(&ctx, Operation::Metadata, result)
    }

    async fn delete_token(
        &self,
        request: Request<pb::DeleteTokenRequest>,
    ) -> Result<Response<pb::DeleteTokenResponse>, Status> {
        let ctx = self.calls.identify(&request, Operation::Delete).await?;
        let body = request.into_inner();
        let command = TokenCommand::without_reason(on_span(body.merchant_id), body.token);
        let result = self
            .calls
            .within(self.calls.vault.delete(&ctx, command))
            .await
            .map(|()| pb::DeleteTokenResponse {});
        respond(&ctx, Operation::Delete, result)
    }

    async fn forward(
        &self,
        request: Request<pb::ForwardRequest>,
    ) -> Result<Response<pb::ForwardResponse>, Status> {
        let ctx = self.calls.identify(&request, Operation::Forward).await?;
        let body = request.into_inner();
        let command = vault_core::forward::ForwardCommand {
            merchant_id: on_span(body.merchant_id),
            token: body.token,
            reason: body.reason,
            destination: body.destination,
            template: body.template,
            method: body.method,
            path: body.path,
            variables: body.variables.into_iter().collect(),
            headers: body.headers.into_iter().collect(),
        };
        let result = self
            .calls
            .within_forward(self.calls.vault.forward(&ctx, command))
            .await
            .map(|forwarded| pb::ForwardResponse {
                status: u32::from(forwarded.status),
                headers: forwarded
                    .headers
                    .into_iter()
                    .map(|(name, value)| pb::ResponseHeader { name, value })
                    .collect(),
                body: forwarded.body,
            });
        respond(&ctx, Operation::Forward, result)
    }
}
