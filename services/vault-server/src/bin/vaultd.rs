//! `vaultd`: the card vault server.
//!
//! - `vaultd dev [--data-dir DIR] [--listen ADDR] [--metrics-listen ADDR]`: the embedded default (SQLite, dev KEK,
//!   generated dev PKI), created on first run and reused after.
//! - `vaultd serve --config FILE`: run from a configuration file.
//! - `vaultd check-config --config FILE`: check a configuration (exit 0, or 78 naming the
//!   setting) without starting.
//! - `vaultd migrate --config FILE`: apply pending database migrations and exit.
//! - `vaultd create-kek --config FILE`: create the configured KEK (in the HSM) if missing.
//! - `vaultd replace-audit-key --config FILE --operator NAME --reason TEXT`: replace a lost or
//!   unusable audit signing key, recorded in the trail.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vault_server::app::{Application, Backend};
use vault_server::config::Config;
use vault_server::telemetry::{self, LogFormat};
use vault_server::{dev, hygiene, kek};

/// Exit code when vaultd cannot start: a configuration, file, key, store or address it refuses
/// (sysexits EX_CONFIG).
const EX_CONFIG: u8 = 78;

#[derive(Debug, Parser)]
#[command(
    name = "vaultd",
    version,
    about = "Card tokenization vault: gRPC over mutual TLS 1.3"
)]
struct Cli {
    /// Log line format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "VAULTD_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the embedded default: SQLite, a local dev KEK and a generated dev PKI.
    Dev {
        /// Data directory; created on first run, reused after.
        #[arg(long, default_value = ".vault-dev", env = "VAULTD_DATA_DIR")]
        data_dir: PathBuf,
        /// Listen address, overriding the one in the data directory's vaultd.toml.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// The metrics listener's address (`/metrics`, `/ready`), overriding the one in the
        /// data directory's vaultd.toml (`127.0.0.1:9464`).
        #[arg(long)]
        metrics_listen: Option<std::net::SocketAddr>,
    },
    /// Run from a configuration file.
    Serve {
        /// The configuration file (TOML).
        #[arg(long, env = "VAULTD_CONFIG")]
        config: PathBuf,
    },
    /// Check a configuration file (with its VAULTD_* overrides) and everything it names that
    /// can be checked without reaching the store or the KEK; exit 0, or 78 naming the setting.
    CheckConfig {
        /// The configuration file (TOML).
        #[arg(long, env = "VAULTD_CONFIG")]
        config: PathBuf,
    },
    /// Apply pending database migrations and exit (run before a rolling deploy).
    Migrate {
        /// The configuration file (TOML).
        #[arg(long, env = "VAULTD_CONFIG")]
        config: PathBuf,
    },
    /// Replace an audit signing key that is lost (its row is gone while checkpoints it signed
    /// exist) or that no configured KEK can unwrap, and exit. The trail records who and why;
    /// auditors verify with the old and the new public key. Run with vaultd stopped.
    ReplaceAuditKey {
        /// The configuration file (TOML).
        #[arg(long, env = "VAULTD_CONFIG")]
        config: PathBuf,
        /// Who replaces it (recorded).
        #[arg(long)]
        operator: String,
        /// Why (recorded; e.g. the incident ticket).
        #[arg(long)]
        reason: String,
    },
    /// Create the configured KEK where it lives (inside the HSM: generated there, sensitive and
    /// non-extractable) unless it exists, and exit.
    CreateKek {
        /// The configuration file (TOML).
        #[arg(long, env = "VAULTD_CONFIG")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::CheckConfig { config } = &cli.command {
        return match vault_server::check::check_config(config) {
            Ok(summary) => {
                println!("vaultd check-config: {}: ok: {summary}", config.display());
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("vaultd check-config: {err:#}");
                ExitCode::from(EX_CONFIG)
            }
        };
    }
    // Before any secret is read or made (`dev` makes its KEK): a core dump would hold keys and
    // PANs. Logged once the subscriber is up.
    let hygiene = hygiene::forbid_core_dumps();
    // `serve` and `dev` read their configuration first: it says where traces go.
    let loaded = match load(&cli.command) {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("vaultd: {err:#}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    // One process-wide TLS provider for every rustls user (the server, the PostgreSQL client).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("vaultd: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let telemetry = {
        let _inside = runtime.enter();
        telemetry::init(cli.log_format, loaded.as_ref().map(|l| &l.config.telemetry))
    };
    let telemetry = match telemetry {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("vaultd: telemetry.otlp_endpoint: {err}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let code = run(cli.command, loaded, hygiene, &runtime);
    telemetry.shutdown();
    code
}

/// A configuration `serve` or `dev` runs from, read before anything starts.
struct Loaded {
    config: Config,
    path: PathBuf,
    /// `vaultd dev`'s data directory.
    dev_dir: Option<PathBuf>,
}

/// Reads the configuration of `serve` and `dev` (creating the dev data directory on first
/// run); `None` for the commands that read theirs later.
fn load(command: &Command) -> anyhow::Result<Option<Loaded>> {
    Ok(match command {
        Command::Dev {
            data_dir,
            listen,
            metrics_listen,
        } => {
            let path = dev::ensure_data_dir(data_dir)?;
            let mut config = Config::load(&path)?;
            if let Some(listen) = listen {
                config.listen = *listen;
            }
            if metrics_listen.is_some() {
                config.telemetry.metrics_listen = *metrics_listen;
            }
            Some(Loaded {
                config,
                path,
                dev_dir: Some(data_dir.clone()),
            })
        }
        Command::Serve { config } => Some(Loaded {
            config: Config::load(config)?,
            path: config.clone(),
            dev_dir: None,
        }),
        _ => None,
    })
}

fn run(
    command: Command,
    loaded: Option<Loaded>,
    hygiene: std::io::Result<hygiene::DumpState>,
    runtime: &tokio::runtime::Runtime,
) -> ExitCode {
    match hygiene {
        Ok(state) => tracing::info!(
            core_limit = ?state.core_limit,
            dumpable = ?state.dumpable,
            "core dumps off"
        ),
        Err(err) => {
            tracing::error!(error = %err, "cannot turn core dumps off");
            eprintln!("vaultd: cannot turn core dumps off: {err}");
            return ExitCode::from(EX_CONFIG);
        }
    }
    if let Command::Migrate { config } = &command {
        return match runtime.block_on(migrate(config)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("vaultd migrate: {err:#}");
                ExitCode::from(EX_CONFIG)
            }
        };
    }
    if let Command::ReplaceAuditKey {
        config,
        operator,
        reason,
    } = &command
    {
        let replaced = runtime.block_on(async {
            let loaded = Config::load(config)?;
            vault_server::app::replace_audit_key(&loaded, config, operator, reason).await
        });
        return match replaced {
            Ok(key_id) => {
                println!(
                    "vaultd replace-audit-key: new audit signing key {key_id}; give auditors \
                     its public key (vaultctl audit public-key) beside the old one"
                );
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("vaultd replace-audit-key: {err:#}");
                ExitCode::from(EX_CONFIG)
            }
        };
    }
    if let Command::CreateKek { config } = &command {
        let created = runtime.block_on(async {
            let loaded = Config::load(config)?;
            kek::create_kek(&loaded, config).await
        });
        return match created {
            Ok(what) => {
                println!("vaultd create-kek: {what}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("vaultd create-kek: {err:#}");
                ExitCode::from(EX_CONFIG)
            }
        };
    }
    let Some(loaded) = loaded else {
        return ExitCode::FAILURE;
    };
    let app = match runtime.block_on(start(loaded)) {
        Ok(app) => app,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "vaultd cannot start");
            eprintln!("vaultd: {err:#}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    // A machine-readable line for scripts and tests that start vaultd on port 0, on standard
    // error (standard output may be the audit sink, `[audit.sink] path = "-"`), in one write
    // (unbuffered `eprintln!` writes the address separately: a reader could see half of it).
    let mut listening = format!("vaultd listening on {}\n", app.local_addr());
    if let Some(metrics) = app.metrics_addr() {
        listening.push_str(&format!(
            "vaultd metrics on http://{metrics}/metrics (readiness: /ready)\n"
        ));
    }
    let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), listening.as_bytes());
    match runtime.block_on(app.run(shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "vaultd failed");
            ExitCode::FAILURE
        }
    }
}

/// Everything up to a bound, ready server: store, KEK, TLS.
async fn start(loaded: Loaded) -> anyhow::Result<Application> {
    let app = Application::build(&loaded.config, &loaded.path).await?;
    if let Some(dir) = &loaded.dev_dir {
        println!(
            "{}",
            dev::grpcurl_help(dir, app.local_addr(), app.metrics_addr())
        );
    }
    Ok(app)
}

/// Opens the configured store with migrations applied, then closes it.
async fn migrate(config: &Path) -> anyhow::Result<()> {
    let loaded = Config::load(config)?;
    let store = Backend::open(&loaded, config, true).await?;
    store.close().await;
    println!("vaultd migrate: database schema is up to date");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("shutdown requested");
}
