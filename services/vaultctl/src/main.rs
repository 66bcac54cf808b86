//! `vaultctl`: the operators' command-line client for the vault's key and destination
//! administration and its audit trail. See `vaultctl --help`; the work is done by
//! [`vaultctl::run`].

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use vaultctl::{Cli, EXIT_FAILED};

fn main() -> ExitCode {
    // Bad arguments exit 2 here (clap); --help and --version exit 0.
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("vaultctl: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match runtime.block_on(vaultctl::run(&cli)) {
        Ok(report) => {
            let text = match report.render(cli.output) {
                Ok(text) => text,
                Err(err) => {
                    eprintln!("vaultctl: cannot encode the result: {err}");
                    return ExitCode::from(EXIT_FAILED);
                }
            };
            let mut stdout = std::io::stdout().lock();
            match stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
            {
                Ok(()) => ExitCode::from(report.exit_code()),
                Err(err) => {
                    eprintln!("vaultctl: cannot write the result: {err}");
                    ExitCode::from(EXIT_FAILED)
                }
            }
        }
        Err(err) => {
            eprintln!("vaultctl: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}
