//! The command line: connection options, one subcommand per scenario, and `check`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use vault_proto::v1::TokenFormat;

use crate::Error;
use crate::options::{
    CheckOptions, Credentials, DEFAULT_ADDR, DEFAULT_DETOKENIZE_IDENTITY, DEFAULT_DEV_DIR,
    DEFAULT_TOKENIZE_IDENTITY, Length, Load, Options, Scenario, Target,
};

const ABOUT: &str = "gRPC load generator for the card vault's TokenService over mutual TLS";

const LONG_ABOUT: &str = "\
gRPC load generator for the card vault's TokenService (vault.v1.TokenService) over mutual TLS.

Tokenize calls are made as one identity (default: gateway) and Detokenize calls as another
(default: payments), taken from a `vaultd dev` data directory (--dev-dir) or given as files
(--ca, --tokenize-cert, --tokenize-key, --detokenize-cert, --detokenize-key).

Closed loop (--concurrency N): N callers, each sending its next request when the previous one
answered. Open loop (--rate R): request i is due at start + i/R whatever the answers do, and
its latency runs from when it was due, so a slow vault shows as latency, not as fewer requests.";

const AFTER_HELP: &str = "\
Durations: 500ms, 10s, 2m, 1h (a number and a unit).

Exit status:
  0  the run finished (failed requests are counted in the summary, not the exit status)
  1  --check or `check` found a token missing, wrong or failing; with --fail-on-error, any
     request failed; the detokenize scenario's setup failed; the record file could not be
     written
  2  usage or configuration error: bad arguments, unreadable certificates or keys, a
     malformed address, an unreadable record file

Examples:
  loadtest --dev-dir .vault-dev tokenize --duration 30s --concurrency 128
  loadtest mixed --rate 2000 --duration 1m --warmup 5s --json report.json
  loadtest tokenize --requests 10000 --record acks.tsv --check
  loadtest check --record acks.tsv";

/// The `loadtest` command line. Parse it with [`Cli::parse_args`] or
/// [`Cli::try_parse_args_from`]: `Parser::parse` skips the checks clap does not make across the
/// subcommand.
#[derive(Debug, Parser)]
#[command(
    name = "loadtest",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// Where the vault is and who to be.
    #[command(flatten)]
    pub connection: ConnectionOptions,
    /// Load, length and output options of a scenario.
    #[command(flatten)]
    pub run: RunArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options that only go with another option given before or after the subcommand (clap's
/// `requires` would only see one side of it).
const REQUIRES: [(&str, &str); 1] = [("max_in_flight", "rate")];

impl Cli {
    /// Parses the process's arguments; prints the error and exits (2 for bad arguments, 0
    /// for --help and --version) if they are refused.
    #[must_use]
    pub fn parse_args() -> Self {
        Self::try_parse_args_from(std::env::args_os()).unwrap_or_else(|err| err.exit())
    }

    /// Parses `args` (the program name first) like `Parser::try_parse_from`, then makes the
    /// checks clap makes on each side of the subcommand only, across it: conflicting options
    /// (`--rate 10 tokenize --concurrency 3`), --max-in-flight without --rate, and load
    /// options given to `check`.
    ///
    /// # Errors
    /// The clap error for refused arguments (and for --help and --version).
    pub fn try_parse_args_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut command = Self::command();
        let matches = command.try_get_matches_from_mut(args)?;
        if let Some((kind, message)) = refusal(&command, &matches) {
            return Err(command.error(kind, message));
        }
        Self::from_arg_matches(&matches).map_err(|err| err.format(&mut command))
    }
}

/// Why `matches` (the top level's, where global options from both sides of the subcommand
/// end up) must be refused, if it must.
fn refusal(command: &clap::Command, matches: &ArgMatches) -> Option<(ErrorKind, String)> {
    let given = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
    let arg = |id: &str| {
        command
            .get_arguments()
            .find(|arg| arg.get_id() == id)
            .map_or_else(|| id.to_owned(), ToString::to_string)
    };
    if let Some(("check", check)) = matches.subcommand() {
        let own = command
            .find_subcommand("check")
            .into_iter()
            .flat_map(clap::Command::get_arguments)
            .filter(|arg| !arg.is_global_set())
            .map(|arg| arg.get_id().as_str())
            .collect::<Vec<_>>();
        let load = RunArgs::augment_args(clap::Command::new("loadtest"));
        if let Some(id) = load
            .get_arguments()
            .map(|arg| arg.get_id().as_str())
            .find(|id| {
                !own.contains(id) && check.value_source(id) == Some(ValueSource::CommandLine)
            })
        {
            return Some((
                ErrorKind::ArgumentConflict,
                format!("the argument '{}' cannot be used with 'check'", arg(id)),
            ));
        }
    }
    for first in command
        .get_arguments()
        .filter(|arg| given(arg.get_id().as_str()))
    {
        if let Some(second) = command
            .get_arg_conflicts_with(first)
            .into_iter()
            .find(|second| given(second.get_id().as_str()))
        {
            return Some((
                ErrorKind::ArgumentConflict,
                format!("the argument '{first}' cannot be used with '{second}'"),
            ));
        }
    }
    REQUIRES
        .iter()
        .find(|(id, needed)| given(id) && !given(needed))
        .map(|(id, needed)| {
            (
                ErrorKind::MissingRequiredArgument,
                format!("the argument '{}' needs '{}'", arg(id), arg(needed)),
            )
        })
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Tokenize a fresh random PAN per request.
    Tokenize,
    /// Tokenize a pool of PANs again and again; each answer must carry the PAN's first token
    /// (else the error dedup-mismatch).
    TokenizeDedup {
        /// Distinct PANs in the pool.
        #[arg(long, value_name = "K", default_value_t = 1000)]
        pool: usize,
    },
    /// Tokenize a pool of PANs first (untimed), then detokenize them at random; each answer
    /// must be the PAN tokenized (else the error wrong-pan).
    Detokenize {
        /// Tokens in the pool.
        #[arg(long, value_name = "K", default_value_t = 1000)]
        pool: usize,
        /// Draw the pool from this record file (`merchant<TAB>token<TAB>pan` lines, from
        /// --record) instead of tokenizing it first: e.g. a random sample of the cards a large
        /// database was seeded with, so that reads are spread over all of it (--pool is then
        /// ignored).
        #[arg(long, value_name = "FILE")]
        pool_file: Option<PathBuf>,
    },
    /// Fresh tokenizes, and detokenizes of tokens acknowledged earlier in the run.
    Mixed {
        /// Percent of requests that detokenize (once a token has been acknowledged).
        #[arg(
            long,
            value_name = "P",
            default_value_t = 10,
            value_parser = clap::value_parser!(u8).range(0..=100)
        )]
        detokenize_percent: u8,
    },
    /// TokenizeBatch calls, each of --size fresh random PANs; every card must get a token.
    Batch {
        /// Cards per call (1 to 1000).
        #[arg(
            long,
            value_name = "N",
            default_value_t = 100,
            value_parser = clap::value_parser!(u16).range(1..=1000)
        )]
        size: u16,
    },
    /// gRPC health checks on the same connections (as the tokenize identity): what a call
    /// costs with no store, key or audit work behind it.
    Health,
    /// Detokenize every token of a record file and compare the PANs (e.g. after a crash and
    /// a restart).
    Check {
        /// The record file (`merchant<TAB>token<TAB>pan` lines, from --record).
        #[arg(long, value_name = "FILE")]
        record: PathBuf,
        /// Separate HTTP/2 connections.
        #[arg(long, value_name = "N", default_value_t = 4, value_parser = at_least_one)]
        connections: usize,
        /// Detokenize calls in flight at once.
        #[arg(long, value_name = "N", default_value_t = 64, value_parser = at_least_one)]
        concurrency: usize,
        /// Each call's deadline.
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
}

/// Connection options, valid before or after the subcommand.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Connection")]
pub struct ConnectionOptions {
    /// The vault's gRPC address.
    #[arg(long, global = true, value_name = "HOST:PORT", default_value = DEFAULT_ADDR)]
    pub addr: String,
    /// A `vaultd dev` data directory: DIR/pki/ca.pem, DIR/pki/NAME.pem, DIR/pki/NAME.key.
    #[arg(long, global = true, value_name = "DIR", default_value = DEFAULT_DEV_DIR)]
    pub dev_dir: PathBuf,
    /// The identity in --dev-dir that tokenizes.
    #[arg(long, global = true, value_name = "NAME", default_value = DEFAULT_TOKENIZE_IDENTITY)]
    pub tokenize_identity: String,
    /// The identity in --dev-dir that detokenizes (and checks).
    #[arg(long, global = true, value_name = "NAME", default_value = DEFAULT_DETOKENIZE_IDENTITY)]
    pub detokenize_identity: String,
    /// CA certificate (PEM), instead of --dev-dir; goes with --tokenize-cert/--tokenize-key
    /// and, when detokenizing or checking, --detokenize-cert/--detokenize-key.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        conflicts_with_all = ["dev_dir", "tokenize_identity", "detokenize_identity"]
    )]
    pub ca: Option<PathBuf>,
    /// The tokenizing client's certificate (PEM), with --ca.
    #[arg(long, global = true, value_name = "FILE", requires_all = ["ca", "tokenize_key"])]
    pub tokenize_cert: Option<PathBuf>,
    /// The tokenizing client's private key (PEM), with --ca.
    #[arg(long, global = true, value_name = "FILE", requires_all = ["ca", "tokenize_cert"])]
    pub tokenize_key: Option<PathBuf>,
    /// The detokenizing client's certificate (PEM), with --ca.
    #[arg(long, global = true, value_name = "FILE", requires_all = ["ca", "detokenize_key"])]
    pub detokenize_cert: Option<PathBuf>,
    /// The detokenizing client's private key (PEM), with --ca.
    #[arg(long, global = true, value_name = "FILE", requires_all = ["ca", "detokenize_cert"])]
    pub detokenize_key: Option<PathBuf>,
    /// The name the vault's server certificate must carry.
    #[arg(long, global = true, value_name = "NAME", default_value = "localhost")]
    pub server_name: String,
    /// Time allowed to connect.
    #[arg(long, global = true, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
}

impl ConnectionOptions {
    /// The target: the dev directory's identities, or the files given with --ca.
    ///
    /// # Errors
    /// [`Error::Config`] if --ca is given with no certificate and key for either identity.
    pub fn target(&self) -> Result<Target, Error> {
        let (tokenize, detokenize) = match &self.ca {
            None => (
                Some(Credentials::dev(&self.dev_dir, &self.tokenize_identity)),
                Some(Credentials::dev(&self.dev_dir, &self.detokenize_identity)),
            ),
            Some(ca) => {
                let pair = |cert: &Option<PathBuf>, key: &Option<PathBuf>| match (cert, key) {
                    (Some(cert), Some(key)) => Some(Credentials {
                        ca: ca.clone(),
                        cert: cert.clone(),
                        key: key.clone(),
                    }),
                    _ => None,
                };
                let tokenize = pair(&self.tokenize_cert, &self.tokenize_key);
                let detokenize = pair(&self.detokenize_cert, &self.detokenize_key);
                if tokenize.is_none() && detokenize.is_none() {
                    return Err(Error::Config(
                        "--ca needs --tokenize-cert and --tokenize-key, or --detokenize-cert \
                         and --detokenize-key"
                            .to_owned(),
                    ));
                }
                (tokenize, detokenize)
            }
        };
        Ok(Target {
            addr: self.addr.clone(),
            server_name: self.server_name.clone(),
            connect_timeout: self.connect_timeout,
            tokenize,
            detokenize,
        })
    }
}

/// The token format to request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// `tok_` and random base62.
    Random,
    /// The PAN's length, first 6 and last 4 kept, failing the Luhn check.
    PanShaped,
}

/// Load, length and output options of a scenario, valid before or after the subcommand.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Load")]
pub struct RunArgs {
    /// Separate HTTP/2 connections per identity; requests round-robin across them.
    #[arg(long, global = true, value_name = "N", default_value_t = 4, value_parser = at_least_one)]
    pub connections: usize,
    /// Closed loop: callers, each sending its next request when the previous one answered.
    #[arg(long, global = true, value_name = "N", default_value_t = 64, value_parser = at_least_one, conflicts_with = "rate")]
    pub concurrency: usize,
    /// Open loop: requests per second, on a fixed schedule.
    #[arg(long, global = true, value_name = "R", value_parser = positive_rate)]
    pub rate: Option<f64>,
    /// Open loop (needs --rate): at most this many requests in flight; waiting for a slot
    /// counts as latency.
    #[arg(long, global = true, value_name = "N", default_value_t = 20_000, value_parser = at_least_one)]
    pub max_in_flight: usize,
    /// How long to send requests after the warm-up [default: 10s, unless --requests].
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,
    /// How many requests to send after the warm-up, instead of --duration.
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: Option<u64>,
    /// Send requests for this long first without counting them (nor their answers).
    #[arg(long, global = true, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Each request's deadline (DEADLINE_EXCEEDED after).
    #[arg(long, global = true, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Spread requests over the merchants loadtest-1 to loadtest-M.
    #[arg(long, global = true, value_name = "M", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub merchants: u32,
    /// The token format to request.
    #[arg(long, global = true, value_enum, default_value_t = Format::Random)]
    pub format: Format,
    /// Append `merchant<TAB>token<TAB>pan` for every acknowledged tokenize to FILE, flushed as
    /// the answers arrive.
    #[arg(long, global = true, value_name = "FILE", help_heading = "Output")]
    pub record: Option<PathBuf>,
    /// After the run, detokenize every token it was given and compare the PANs (exit 1 if any
    /// is missing, wrong or fails).
    #[arg(long, global = true, help_heading = "Output")]
    pub check: bool,
    /// Also write a ghz-compatible JSON report to FILE.
    #[arg(long, global = true, value_name = "FILE", help_heading = "Output")]
    pub json: Option<PathBuf>,
    /// Exit 1 if any request failed.
    #[arg(long, global = true, help_heading = "Output")]
    pub fail_on_error: bool,
}

impl RunArgs {
    /// The run options for `scenario` against `target`.
    #[must_use]
    pub fn options(&self, scenario: Scenario, target: Target) -> Options {
        let load = match self.rate {
            Some(rate) => Load::Open {
                rate,
                max_in_flight: self.max_in_flight,
            },
            None => Load::Closed {
                concurrency: self.concurrency,
            },
        };
        let length = match (self.requests, self.duration) {
            (Some(n), _) => Length::Requests(n),
            (None, Some(duration)) => Length::Duration(duration),
            (None, None) => Length::Duration(Duration::from_secs(10)),
        };
        Options {
            target,
            connections: self.connections,
            scenario,
            load,
            length,
            warmup: self.warmup,
            timeout: self.timeout,
            merchants: self.merchants,
            token_format: match self.format {
                Format::Random => TokenFormat::Random,
                Format::PanShaped => TokenFormat::PanShaped,
            },
            record: self.record.clone(),
            pool_file: None,
            check: self.check,
            progress: true,
        }
    }
}

impl Command {
    /// The scenario, or `None` for `check`; its load options are [`Cli::run`].
    #[must_use]
    pub fn scenario(&self) -> Option<Scenario> {
        match *self {
            Self::Tokenize => Some(Scenario::Tokenize),
            Self::TokenizeDedup { pool } => Some(Scenario::TokenizeDedup { pool }),
            Self::Detokenize { pool, .. } => Some(Scenario::Detokenize { pool }),
            Self::Mixed { detokenize_percent } => Some(Scenario::Mixed { detokenize_percent }),
            Self::Batch { size } => Some(Scenario::Batch {
                size: usize::from(size),
            }),
            Self::Health => Some(Scenario::Health),
            Self::Check { .. } => None,
        }
    }
}

/// The check options of `check` against `target`.
#[must_use]
pub fn check_options(
    target: Target,
    connections: usize,
    concurrency: usize,
    timeout: Duration,
) -> CheckOptions {
    CheckOptions {
        target,
        connections,
        concurrency,
        timeout,
        progress: true,
    }
}

/// Parses a duration as `humantime` does: numbers with units, `500ms`, `10s`, `1.5s`, `2m`,
/// `1h`, `1m30s`; a bare `0` is zero.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|err| {
        format!(
            "{text:?} is not a duration ({err}): give numbers with units, e.g. 10s, 500ms or 1m30s"
        )
    })
}

fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{text:?}: give a whole number of at least 1")),
    }
}

fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "{text:?}: give a positive number of requests per second"
        )),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_parse() {
        for (text, expected) in [
            ("10s", Duration::from_secs(10)),
            ("0s", Duration::ZERO),
            ("0", Duration::ZERO),
            ("250ms", Duration::from_millis(250)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("1m30s", Duration::from_secs(90)),
            ("1s500ms", Duration::from_millis(1500)),
            ("1.5s", Duration::from_millis(1500)),
            (" 3s ", Duration::from_secs(3)),
        ] {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
        for bad in ["", "10", "s", "-1s", "1e3s", "ms10", "1.2.3s", "5x"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(
            parse_duration("5x")
                .unwrap_err()
                .contains("give numbers with units")
        );
    }

    fn try_parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_args_from(std::iter::once("loadtest").chain(args.iter().copied()))
    }

    fn parse(args: &[&str]) -> Cli {
        try_parse(args).unwrap()
    }

    #[test]
    fn defaults_make_a_ten_second_closed_loop_against_vaultd_dev() {
        let cli = parse(&["tokenize"]);
        let scenario = cli.command.scenario().unwrap();
        let options = cli.run.options(scenario, cli.connection.target().unwrap());
        assert_eq!(options.scenario, Scenario::Tokenize);
        assert_eq!(options.load, Load::Closed { concurrency: 64 });
        assert_eq!(options.length, Length::Duration(Duration::from_secs(10)));
        assert_eq!(options.connections, 4);
        assert_eq!(options.merchants, 1);
        assert_eq!(options.target.addr, "127.0.0.1:50051");
        assert_eq!(
            options.target.tokenize.unwrap().cert,
            PathBuf::from(".vault-dev/pki/gateway.pem")
        );
        assert_eq!(
            options.target.detokenize.unwrap().key,
            PathBuf::from(".vault-dev/pki/payments.key")
        );
    }

    #[test]
    fn options_go_before_or_after_the_subcommand() {
        let cli = parse(&[
            "--dev-dir",
            "/tmp/d",
            "mixed",
            "--addr",
            "127.0.0.1:1",
            "--rate",
            "500",
            "--requests",
            "100",
            "--detokenize-percent",
            "30",
            "--format",
            "pan-shaped",
            "--warmup",
            "2s",
        ]);
        let scenario = cli.command.scenario().unwrap();
        let options = cli.run.options(scenario, cli.connection.target().unwrap());
        assert_eq!(
            options.scenario,
            Scenario::Mixed {
                detokenize_percent: 30
            }
        );
        assert_eq!(
            options.load,
            Load::Open {
                rate: 500.0,
                max_in_flight: 20_000
            }
        );
        assert_eq!(options.length, Length::Requests(100));
        assert_eq!(options.warmup, Duration::from_secs(2));
        assert_eq!(options.token_format, TokenFormat::PanShaped);
        assert_eq!(options.target.addr, "127.0.0.1:1");
        assert_eq!(
            options.target.tokenize.unwrap().ca,
            PathBuf::from("/tmp/d/pki/ca.pem")
        );
    }

    #[test]
    fn conflicting_or_bad_options_are_refused() {
        for args in [
            &["tokenize", "--rate", "10", "--concurrency", "3"][..],
            &["--rate", "10", "tokenize", "--concurrency", "3"],
            &["--concurrency", "3", "tokenize", "--rate", "10"],
            &["tokenize", "--duration", "1s", "--requests", "3"],
            &["--duration", "1s", "mixed", "--requests", "3"],
            &["--dev-dir", "d", "tokenize", "--ca", "ca.pem"],
            &["tokenize", "--connections", "0"],
            &["tokenize", "--rate", "0"],
            &["tokenize", "--rate", "-5"],
            &["mixed", "--detokenize-percent", "101"],
            &["batch", "--size", "0"],
            &["batch", "--size", "1001"],
            &[
                "tokenize",
                "--tokenize-cert",
                "c.pem",
                "--tokenize-key",
                "k.pem",
            ],
            &["tokenize", "--ca", "ca.pem", "--tokenize-cert", "c.pem"],
            &["--dev-dir", "d", "--ca", "ca.pem", "tokenize"],
            &["--tokenize-identity", "x", "--ca", "ca.pem", "tokenize"],
            &["check"],
            &["check", "--record", "acks.tsv", "--rate", "10"],
            &["--json", "r.json", "check", "--record", "acks.tsv"],
            &["check", "--record", "acks.tsv", "--fail-on-error"],
        ] {
            assert!(try_parse(args).is_err(), "{args:?} accepted");
        }
    }

    #[test]
    fn load_options_go_before_or_after_the_subcommand() {
        let load = [
            "--concurrency",
            "256",
            "--duration",
            "3s",
            "--warmup",
            "1s",
            "--connections",
            "2",
            "--merchants",
            "5",
            "--format",
            "pan-shaped",
            "--timeout",
            "2s",
            "--record",
            "acks.tsv",
            "--check",
            "--json",
            "r.json",
            "--fail-on-error",
        ];
        let before = parse(&[&load[..], &["tokenize"]].concat());
        let after = parse(&[&["tokenize"], &load[..]].concat());
        let (head, tail) = load.split_at(8);
        let split = parse(&[head, &["tokenize"], tail].concat());
        for cli in [&before, &after, &split] {
            assert!(matches!(cli.command, Command::Tokenize));
            let run = &cli.run;
            assert_eq!(run.concurrency, 256);
            assert_eq!(run.duration, Some(Duration::from_secs(3)));
            assert_eq!(run.warmup, Duration::from_secs(1));
            assert_eq!((run.connections, run.merchants), (2, 5));
            assert_eq!(run.format, Format::PanShaped);
            assert_eq!(run.timeout, Duration::from_secs(2));
            assert_eq!(run.record, Some(PathBuf::from("acks.tsv")));
            assert_eq!(run.json, Some(PathBuf::from("r.json")));
            assert!(run.check && run.fail_on_error);
        }
        for open in [
            &[
                "--rate",
                "100",
                "--requests",
                "7",
                "detokenize",
                "--pool",
                "9",
            ][..],
            &[
                "detokenize",
                "--pool",
                "9",
                "--rate",
                "100",
                "--requests",
                "7",
            ],
        ] {
            let cli = parse(open);
            let options = cli
                .run
                .options(cli.command.scenario().unwrap(), Target::default());
            assert_eq!(options.scenario, Scenario::Detokenize { pool: 9 });
            assert_eq!(
                options.load,
                Load::Open {
                    rate: 100.0,
                    max_in_flight: 20_000
                }
            );
            assert_eq!(options.length, Length::Requests(7));
        }
    }

    #[test]
    fn max_in_flight_needs_rate() {
        for args in [
            &["tokenize", "--max-in-flight", "5"][..],
            &["--max-in-flight", "5", "tokenize"],
            &["--max-in-flight", "5", "tokenize", "--concurrency", "3"],
        ] {
            let err = try_parse(args).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument, "{args:?}");
            assert!(err.to_string().contains("--rate"), "{err}");
        }
        for args in [
            &["tokenize", "--rate", "10", "--max-in-flight", "5"][..],
            &["--max-in-flight", "5", "tokenize", "--rate", "10"],
            &["--rate", "10", "tokenize", "--max-in-flight", "5"],
        ] {
            let cli = parse(args);
            let options = cli
                .run
                .options(cli.command.scenario().unwrap(), Target::default());
            assert_eq!(
                options.load,
                Load::Open {
                    rate: 10.0,
                    max_in_flight: 5
                },
                "{args:?}"
            );
        }
    }

    #[test]
    fn explicit_files_replace_the_dev_directory() {
        let cli = parse(&[
            "--ca",
            "ca.pem",
            "--tokenize-cert",
            "gw.pem",
            "--tokenize-key",
            "gw.key",
            "tokenize",
        ]);
        let target = cli.connection.target().unwrap();
        assert_eq!(
            target.tokenize,
            Some(Credentials {
                ca: "ca.pem".into(),
                cert: "gw.pem".into(),
                key: "gw.key".into()
            })
        );
        assert_eq!(target.detokenize, None);
        let cli = parse(&["--ca", "ca.pem", "tokenize"]);
        assert!(matches!(cli.connection.target(), Err(Error::Config(_))));
    }

    #[test]
    fn detokenize_can_draw_its_pool_from_a_record_file() {
        let cli = parse(&["detokenize", "--pool-file", "sample.tsv"]);
        assert!(matches!(
            &cli.command,
            Command::Detokenize { pool_file: Some(file), .. } if file == std::path::Path::new("sample.tsv")
        ));
    }

    #[test]
    fn check_reads_a_record_file() {
        let cli = parse(&["check", "--record", "acks.tsv", "--concurrency", "8"]);
        match cli.command {
            Command::Check {
                record,
                concurrency,
                connections,
                timeout,
            } => {
                assert_eq!(record, PathBuf::from("acks.tsv"));
                assert_eq!((concurrency, connections), (8, 4));
                assert_eq!(timeout, Duration::from_secs(30));
            }
            other => panic!("{other:?}"),
        }
        let cli = parse(&["--concurrency", "8", "check", "--record", "acks.tsv"]);
        assert!(matches!(cli.command, Command::Check { concurrency: 8, .. }));
    }
}
