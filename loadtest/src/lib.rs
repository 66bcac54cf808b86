//! `loadtest`: a gRPC load generator for the card vault's `vault.v1.TokenService`, over mutual
//! TLS, with the channels of [`vault_client`].
//!
//! The binary is a thin shell around [`run`] and [`check_records`]; a crash test calls them
//! in-process with [`Options`] built in code:
//!
//! ```no_run
//! # async fn example() -> Result<(), loadtest::Error> {
//! use std::path::Path;
//! use std::time::Duration;
//! use loadtest::{Length, Options, Target};
//!
//! let options = Options {
//!     target: Target::dev(Path::new("/tmp/vault-dev"), "127.0.0.1:50051"),
//!     length: Length::Duration(Duration::from_secs(5)),
//!     record: Some("acks.tsv".into()),
//!     ..Options::default()
//! };
//! let report = loadtest::run(options).await?;
//! println!("{}", report.summary());
//! # Ok(()) }
//! ```
//!
//! - [`cli`]: the command line (clap).
//! - [`options`]: what a run does.
//! - [`pan`]: synthetic Luhn-valid PANs.
//! - `scenario`: what each request is and how its answer is judged.
//! - `run`: the closed and open loops.
//! - [`report`]: the summary and the ghz-compatible JSON report.
//! - [`record`]: the file of acknowledged tokens.
//! - [`check`]: detokenizing acknowledged tokens to compare the PANs.

pub mod check;
pub mod cli;
mod client;
mod error;
pub mod options;
pub mod pan;
mod progress;
pub mod record;
pub mod report;
mod run;
mod scenario;
mod stats;

pub use check::{CheckReport, check_records};
pub use error::Error;
pub use options::{CheckOptions, Credentials, Length, Load, Options, Scenario, Target};
pub use record::Record;
pub use report::{GhzReport, Report};
pub use run::run;
pub use stats::{DEDUP_MISMATCH, WRONG_PAN};
/// The clients' exit codes, which loadtest shares: [`EXIT_FAILED`] for a failed check
/// (`--check`, `check --record`) or failed requests with `--fail-on-error`, [`EXIT_USAGE`] for
/// usage and configuration errors (clap uses the same for bad arguments).
pub use vault_client::{EXIT_FAILED, EXIT_USAGE};
