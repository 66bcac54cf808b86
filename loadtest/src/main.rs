//! `loadtest`: load for the card vault's TokenService. See `loadtest --help`; the work is done
//! by [`loadtest::run`] and [`loadtest::check_records`].

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use loadtest::cli::{Cli, Command, check_options};
use loadtest::{EXIT_FAILED, Error, GhzReport};

fn main() -> ExitCode {
    // Bad arguments exit 2 here (clap); --help and --version exit 0.
    let cli = Cli::parse_args();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("loadtest: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match runtime.block_on(execute(&cli)) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("loadtest: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

/// Runs the command; the exit code.
async fn execute(cli: &Cli) -> Result<u8, Error> {
    let target = cli.connection.target()?;
    if let Some(scenario) = cli.command.scenario() {
        let run = &cli.run;
        let mut options = run.options(scenario, target);
        if let Command::Detokenize { pool_file, .. } = &cli.command {
            options.pool_file.clone_from(pool_file);
        }
        let report = loadtest::run(options).await?;
        if let Some(path) = &run.json {
            write_json(path, &report.ghz())?;
        }
        print(&report.summary())?;
        return Ok(report.exit_code(run.fail_on_error));
    }
    let Command::Check {
        record,
        connections,
        concurrency,
        timeout,
    } = &cli.command
    else {
        return Err(Error::Internal("no scenario and not check".to_owned()));
    };
    let records = loadtest::record::read_file(record)?;
    let options = check_options(target, *connections, *concurrency, *timeout);
    let report = loadtest::check_records(&options, records).await?;
    print(&format!("check  {report}\n"))?;
    Ok(if report.passed() { 0 } else { EXIT_FAILED })
}

fn print(text: &str) -> Result<(), Error> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|err| Error::Output(format!("cannot write the summary: {err}")))
}

fn write_json(path: &Path, report: &GhzReport) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(report)
        .map_err(|err| Error::Internal(format!("cannot encode the JSON report: {err}")))?;
    std::fs::write(path, format!("{text}\n"))
        .map_err(|err| Error::Output(format!("cannot write {}: {err}", path.display())))
}
