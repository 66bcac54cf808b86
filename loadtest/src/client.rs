//! The clients of one identity: one mutual TLS channel (one HTTP/2 connection) per
//! `--connections`, picked round-robin, and the calls with their deadline.

use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use vault_proto::v1::token_service_client::TokenServiceClient;
use vault_proto::v1::{DetokenizeRequest, TokenizeBatchRequest, TokenizeRequest};

use crate::Error;
use crate::options::{Credentials, Target};

/// The name of a health check answer that lets the call count.
pub(crate) const SERVING: &str = "SERVING";

/// `connections` lazily connecting channels of one identity.
#[derive(Clone)]
pub(crate) struct Clients {
    first: Channel,
    others: Vec<Channel>,
}

impl Clients {
    /// Builds `connections` (at least one) channels to `target` as `credentials`. Connection
    /// errors surface on the first call of each.
    ///
    /// # Errors
    /// [`Error::Config`] if a file cannot be read or the address is malformed.
    pub(crate) fn connect(
        target: &Target,
        credentials: &Credentials,
        connections: usize,
    ) -> Result<Self, Error> {
        let connection = target.connection(credentials);
        let first = vault_client::channel(&connection)?;
        let others = (1..connections)
            .map(|_| Ok(vault_client::channel(&connection)?))
            .collect::<Result<_, Error>>()?;
        Ok(Self { first, others })
    }

    /// The channel for the `n`-th request: `n` modulo the number of connections.
    pub(crate) fn pick(&self, n: usize) -> Channel {
        match n % (self.others.len() + 1) {
            0 => self.first.clone(),
            i => self.others.get(i - 1).unwrap_or(&self.first).clone(),
        }
    }
}

/// Tokenizes; the answer's token.
pub(crate) async fn tokenize(
    channel: Channel,
    message: TokenizeRequest,
    timeout: Duration,
) -> Result<String, Status> {
    let mut client = TokenServiceClient::new(channel);
    let call = client.tokenize(with_timeout(message, timeout));
    Ok(deadline(timeout, call).await?.token)
}

/// Tokenizes a batch; the answer's tokens, in the order of the cards.
pub(crate) async fn tokenize_batch(
    channel: Channel,
    message: TokenizeBatchRequest,
    timeout: Duration,
) -> Result<Vec<String>, Status> {
    let mut client = TokenServiceClient::new(channel);
    let call = client.tokenize_batch(with_timeout(message, timeout));
    let results = deadline(timeout, call).await?.results;
    Ok(results.into_iter().map(|result| result.token).collect())
}

/// Detokenizes; the answer's PAN.
pub(crate) async fn detokenize(
    channel: Channel,
    message: DetokenizeRequest,
    timeout: Duration,
) -> Result<String, Status> {
    let mut client = TokenServiceClient::new(channel);
    let call = client.detokenize(with_timeout(message, timeout));
    Ok(deadline(timeout, call).await?.take_pan())
}

/// Checks the whole server's health (the empty service name); the answer's status name.
pub(crate) async fn health(channel: Channel, timeout: Duration) -> Result<String, Status> {
    let message = HealthCheckRequest {
        service: String::new(),
    };
    let mut client = HealthClient::new(channel);
    let call = client.check(with_timeout(message, timeout));
    let status = deadline(timeout, call).await?.status;
    Ok(ServingStatus::try_from(status)
        .map_or("unknown", |status| status.as_str_name())
        .to_owned())
}

/// A request that tells the server its deadline (`grpc-timeout`).
fn with_timeout<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    request
}

/// Awaits `call` for at most `timeout`, then gives up with `DEADLINE_EXCEEDED`.
async fn deadline<T>(
    timeout: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(timeout, call).await {
        Ok(answer) => Ok(answer?.into_inner()),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no answer within {} ms (--timeout)",
            timeout.as_millis()
        ))),
    }
}
