//! What a run does, constructible in code ([`Options::default`] and plain fields) or from the
//! command line ([`crate::cli`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use vault_proto::v1::TokenFormat;

/// The `vaultd dev` address (`127.0.0.1:50051`).
pub const DEFAULT_ADDR: &str = vault_client::DEFAULT_ADDR;
/// The `vaultd dev` data directory when none is given.
pub const DEFAULT_DEV_DIR: &str = ".vault-dev";
/// The dev identity allowed to tokenize.
pub const DEFAULT_TOKENIZE_IDENTITY: &str = "gateway";
/// The dev identity allowed to detokenize.
pub const DEFAULT_DETOKENIZE_IDENTITY: &str = "payments";
/// The reason sent with every Detokenize of a run (it is audited).
pub const DETOKENIZE_REASON: &str = "loadtest";
/// The reason sent with every Detokenize of a check.
pub const CHECK_REASON: &str = "loadtest check";
/// The expiry every tokenize carries (month, year).
pub const EXPIRY: (u32, u32) = (12, 2030);

/// The three PEM files of one mutual TLS client identity ([`Credentials::dev`] finds them in
/// a `vaultd dev` data directory).
pub type Credentials = vault_client::TlsFiles;

/// Where the vault is and who to be.
#[derive(Debug, Clone)]
pub struct Target {
    /// `HOST:PORT`.
    pub addr: String,
    /// The name the server certificate must carry.
    pub server_name: String,
    /// Time allowed to connect.
    pub connect_timeout: Duration,
    /// The identity that tokenizes (`tokenize` permission); every scenario needs it.
    pub tokenize: Option<Credentials>,
    /// The identity that detokenizes (`detokenize` permission); the `detokenize` and `mixed`
    /// scenarios and checks need it.
    pub detokenize: Option<Credentials>,
}

impl Default for Target {
    /// The `vaultd dev` defaults: `127.0.0.1:50051`, `.vault-dev`, `gateway` and `payments`.
    fn default() -> Self {
        let dir = Path::new(DEFAULT_DEV_DIR);
        Self {
            addr: DEFAULT_ADDR.to_owned(),
            server_name: "localhost".to_owned(),
            connect_timeout: Duration::from_secs(10),
            tokenize: Some(Credentials::dev(dir, DEFAULT_TOKENIZE_IDENTITY)),
            detokenize: Some(Credentials::dev(dir, DEFAULT_DETOKENIZE_IDENTITY)),
        }
    }
}

impl Target {
    /// The `vaultd dev` defaults for the data directory `dir`.
    #[must_use]
    pub fn dev(dir: &Path, addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            tokenize: Some(Credentials::dev(dir, DEFAULT_TOKENIZE_IDENTITY)),
            detokenize: Some(Credentials::dev(dir, DEFAULT_DETOKENIZE_IDENTITY)),
            ..Self::default()
        }
    }

    /// The connection for `credentials` at this target.
    pub(crate) fn connection(&self, credentials: &Credentials) -> vault_client::Connection {
        vault_client::Connection {
            addr: self.addr.clone(),
            server_name: self.server_name.clone(),
            connect_timeout: self.connect_timeout,
            files: credentials.clone(),
        }
    }
}

/// The kind of requests a run makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Tokenize a fresh random PAN each time.
    Tokenize,
    /// Tokenize PANs from a pool of `pool` again and again; every answer for a PAN must carry
    /// the token of its first answer (else the error `dedup-mismatch`).
    TokenizeDedup {
        /// Number of distinct PANs.
        pool: usize,
    },
    /// Tokenize `pool` PANs first (untimed), then detokenize them at random; the PAN returned
    /// must be the one tokenized (else the error `wrong-pan`).
    Detokenize {
        /// Number of tokens to detokenize.
        pool: usize,
    },
    /// Each request detokenizes a token acknowledged earlier in the run with probability
    /// `detokenize_percent`%, else tokenizes a fresh PAN.
    Mixed {
        /// 0 to 100.
        detokenize_percent: u8,
    },
    /// TokenizeBatch calls of `size` fresh random PANs each; every card must get a token.
    Batch {
        /// Cards per call, 1 to 1,000.
        size: usize,
    },
    /// gRPC health checks on the same mutual TLS connections: the cost of a call with no
    /// store, key or audit work behind it, the floor under every other scenario.
    Health,
}

impl Scenario {
    /// The scenario's command-line name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Tokenize => "tokenize",
            Self::TokenizeDedup { .. } => "tokenize-dedup",
            Self::Detokenize { .. } => "detokenize",
            Self::Mixed { .. } => "mixed",
            Self::Batch { .. } => "batch",
            Self::Health => "health",
        }
    }

    /// The fully qualified method(s) a run calls, as ghz's `call` option names them.
    #[must_use]
    pub fn call(self) -> &'static str {
        match self {
            Self::Tokenize | Self::TokenizeDedup { .. } => "vault.v1.TokenService.Tokenize",
            Self::Detokenize { .. } => "vault.v1.TokenService.Detokenize",
            Self::Mixed { .. } => "vault.v1.TokenService.Tokenize+Detokenize",
            Self::Batch { .. } => "vault.v1.TokenService.TokenizeBatch",
            Self::Health => "grpc.health.v1.Health.Check",
        }
    }

    /// Cards each call carries: `size` for `batch`, else one.
    #[must_use]
    pub fn cards_per_call(self) -> usize {
        match self {
            Self::Batch { size } => size,
            _ => 1,
        }
    }

    /// Whether the run sends Detokenize calls.
    pub(crate) fn detokenizes(self) -> bool {
        matches!(self, Self::Detokenize { .. } | Self::Mixed { .. })
    }
}

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// `concurrency` callers, each sending its next request when the previous one answered.
    Closed {
        /// Number of callers.
        concurrency: usize,
    },
    /// Requests at a fixed rate, scheduled at `t0 + i / rate` whatever the answers do; each
    /// latency is measured from the scheduled time (no coordinated omission).
    Open {
        /// Requests per second.
        rate: f64,
        /// At most this many requests in flight; a request waiting for a slot is late, and the
        /// wait counts toward its latency.
        max_in_flight: usize,
    },
}

/// How long a run lasts (after its warm-up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// Send requests for this long.
    Duration(Duration),
    /// Send this many requests (open loop: scheduled after the warm-up; closed loop: started
    /// after the warm-up).
    Requests(u64),
}

/// Everything a run needs. `Options::default()` is a 10 s closed-loop `tokenize` run against
/// `vaultd dev` on its default address with 4 connections and 64 callers.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the vault is and the identities to use.
    pub target: Target,
    /// Separate HTTP/2 connections per identity; requests round-robin across them.
    pub connections: usize,
    /// What to send.
    pub scenario: Scenario,
    /// Closed or open loop.
    pub load: Load,
    /// How long.
    pub length: Length,
    /// Requests started (open loop: due) in this first stretch are sent but not counted, so
    /// nothing answered in it is.
    pub warmup: Duration,
    /// Each request's deadline; a request that takes longer is `DEADLINE_EXCEEDED`.
    pub timeout: Duration,
    /// Requests spread over the merchants `loadtest-1` to `loadtest-N`.
    pub merchants: u32,
    /// The token format requested.
    pub token_format: TokenFormat,
    /// Append `merchant<TAB>token<TAB>pan` here for every acknowledged tokenize.
    pub record: Option<PathBuf>,
    /// The `detokenize` scenario's pool, read from this record file instead of tokenized first.
    pub pool_file: Option<PathBuf>,
    /// After the run, detokenize every token the run was given and compare the PANs.
    pub check: bool,
    /// Show a progress bar on standard error (it hides itself when that is not a terminal).
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            target: Target::default(),
            connections: 4,
            scenario: Scenario::Tokenize,
            load: Load::Closed { concurrency: 64 },
            length: Length::Duration(Duration::from_secs(10)),
            warmup: Duration::ZERO,
            timeout: Duration::from_secs(30),
            merchants: 1,
            token_format: TokenFormat::Random,
            record: None,
            pool_file: None,
            check: false,
            progress: false,
        }
    }
}

impl Options {
    /// Refuses options that cannot make a run.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) for zero or out-of-range counts.
    pub fn validate(&self) -> Result<(), crate::Error> {
        let refuse = |text: &str| Err(crate::Error::Config(text.to_owned()));
        if self.connections == 0 {
            return refuse("--connections must be at least 1");
        }
        if self.merchants == 0 {
            return refuse("--merchants must be at least 1");
        }
        if self.timeout.is_zero() {
            return refuse("--timeout must be above zero");
        }
        match self.load {
            Load::Closed { concurrency: 0 } => return refuse("--concurrency must be at least 1"),
            Load::Open { rate, .. } if !(rate.is_finite() && rate > 0.0) => {
                return refuse("--rate must be a positive number of requests per second");
            }
            Load::Open {
                max_in_flight: 0, ..
            } => return refuse("--max-in-flight must be at least 1"),
            Load::Closed { .. } | Load::Open { .. } => {}
        }
        match self.length {
            Length::Duration(duration) if duration.is_zero() => {
                return refuse("--duration must be above zero");
            }
            Length::Requests(0) => return refuse("--requests must be at least 1"),
            Length::Duration(_) | Length::Requests(_) => {}
        }
        match self.scenario {
            Scenario::TokenizeDedup { pool: 0 } | Scenario::Detokenize { pool: 0 } => {
                refuse("--pool must be at least 1")
            }
            Scenario::Mixed { detokenize_percent } if detokenize_percent > 100 => {
                refuse("--detokenize-percent must be 0 to 100")
            }
            Scenario::Batch { size } if !(1..=1000).contains(&size) => {
                refuse("--size must be 1 to 1000")
            }
            Scenario::Health if self.check || self.record.is_some() => {
                refuse("--check and --record need a scenario that tokenizes")
            }
            Scenario::Tokenize
            | Scenario::Health
            | Scenario::Batch { .. }
            | Scenario::TokenizeDedup { .. }
            | Scenario::Detokenize { .. }
            | Scenario::Mixed { .. } => Ok(()),
        }
    }

    /// The merchant ids requests spread over: `loadtest-1` to `loadtest-N`.
    #[must_use]
    pub fn merchant_ids(&self) -> Vec<String> {
        (1..=self.merchants)
            .map(|n| format!("loadtest-{n}"))
            .collect()
    }
}

/// What a standalone check ([`check_records`](crate::check_records)) needs.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Where the vault is; only `target.detokenize` is used.
    pub target: Target,
    /// Separate HTTP/2 connections.
    pub connections: usize,
    /// Detokenize calls in flight at once.
    pub concurrency: usize,
    /// Each call's deadline.
    pub timeout: Duration,
    /// Show a progress bar on standard error.
    pub progress: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            target: Target::default(),
            connections: 4,
            concurrency: 64,
            timeout: Duration::from_secs(30),
            progress: false,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn scenarios_refuse_what_they_cannot_do() {
        let with = |scenario, check| Options {
            scenario,
            check,
            ..Options::default()
        };
        assert!(with(Scenario::Health, true).validate().is_err());
        assert!(with(Scenario::Health, false).validate().is_ok());
        assert!(with(Scenario::Batch { size: 0 }, false).validate().is_err());
        assert!(
            with(Scenario::Batch { size: 1001 }, false)
                .validate()
                .is_err()
        );
        assert!(
            with(Scenario::Batch { size: 1000 }, true)
                .validate()
                .is_ok()
        );
        assert_eq!(Scenario::Batch { size: 7 }.cards_per_call(), 7);
        assert_eq!(Scenario::Tokenize.cards_per_call(), 1);
    }
}
