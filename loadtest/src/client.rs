//! The TokenService clients of one identity: one mutual TLS channel (one HTTP/2 connection)
//! per `--connections`, picked round-robin, and the two calls with their deadline.

use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Request, Status};
use vault_proto::v1::token_service_client::TokenServiceClient;
use vault_proto::v1::{DetokenizeRequest, TokenizeRequest};

use crate::Error;
use crate::options::{Credentials, Target};

type Client = TokenServiceClient<Channel>;

/// `connections` lazily connecting clients of one identity.
#[derive(Clone)]
pub(crate) struct Clients {
    first: Client,
    others: Vec<Client>,
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
        let args = target.connection_args(credentials);
        let first = TokenServiceClient::new(vaultctl::connect::channel(&args)?);
        let others = (1..connections)
            .map(|_| Ok(TokenServiceClient::new(vaultctl::connect::channel(&args)?)))
            .collect::<Result<_, Error>>()?;
        Ok(Self { first, others })
    }

    /// The client for the `n`-th request: `n` modulo the number of connections.
    pub(crate) fn pick(&self, n: usize) -> Client {
        match n % (self.others.len() + 1) {
            0 => self.first.clone(),
            i => self.others.get(i - 1).unwrap_or(&self.first).clone(),
        }
    }
}

/// Tokenizes; the answer's token.
pub(crate) async fn tokenize(
    mut client: Client,
    message: TokenizeRequest,
    timeout: Duration,
) -> Result<String, Status> {
    let call = client.tokenize(with_timeout(message, timeout));
    Ok(deadline(timeout, call).await?.token)
}

/// Detokenizes; the answer's PAN.
pub(crate) async fn detokenize(
    mut client: Client,
    message: DetokenizeRequest,
    timeout: Duration,
) -> Result<String, Status> {
    let call = client.detokenize(with_timeout(message, timeout));
    Ok(deadline(timeout, call).await?.pan)
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
