//! `vaultctl`: the operators' command-line client for the vault's key administration
//! (`vault.v1.KeyAdminService`), forward destinations (`vault.v1.DestinationAdminService`, both
//! in `proto/vault/v1/admin.proto`) and audit trail (`vault.v1.AuditService`), over mutual TLS
//! only; and the offline audit commands (`audit verify`, `audit trace`), which need no vault.
//!
//! The binary is a thin shell around [`run`]: parse a [`Cli`], run it, print the [`Report`] in
//! the chosen [`OutputFormat`], or print the [`Error`] and exit with [`Error::exit_code`]. Tests
//! can call [`run`] the same way.
//!
//! - [`cli`]: the command line (clap).
//! - [`connect`]: the mutual TLS channel.
//! - [`audit`]: the audit trail's export, public key, offline verification and prune.
//! - [`trace`]: `audit trace`, every detokenize and forward of a token in verified exports.
//! - [`destination`]: destination spec files (TOML or JSON) for `destination propose`.
//! - [`progress`]: following a streamed job, with a bar or plain lines on standard error.
//! - [`output`]: what each command prints, as text or JSON.

pub mod audit;
pub mod cli;
pub mod connect;
pub mod destination;
mod error;
pub mod output;
pub mod progress;
pub mod trace;

use std::future::Future;
use std::time::Duration;

use tonic::{Response, Status, Streaming};
use vault_proto::v1::destination_admin_service_client::DestinationAdminServiceClient;
use vault_proto::v1::{
    ApproveDestinationRequest, ApproveShredRequest, GetKeyStatusRequest, GetMerchantKeysRequest,
    ListDestinationsRequest, Progress, ProposeDestinationRequest, ReencryptMerchantRequest,
    RequestShredRequest, RevokeDestinationRequest, RewrapKeysRequest, RotateDekRequest,
};

pub use cli::{Cli, OutputFormat};
pub use error::{EXIT_FAILED, EXIT_USAGE, Error, code_name, status_text};
pub use output::Report;

use cli::{AuditCommand, Command, DestinationCommand, KekCommand, KeysCommand, ShredCommand};
use progress::Reporter;

/// Runs one command: connects as `cli.connection` says, makes the command's one call and
/// returns what to print. Streamed jobs show their progress on standard error as they go.
///
/// Must be called inside a Tokio runtime.
///
/// # Errors
/// [`Error::Config`] before any call (bad files, address); [`Error::Rpc`] if the vault refuses
/// or fails the call, or it does not answer within `--timeout-secs` (`DEADLINE_EXCEEDED`);
/// [`Error::JobFailed`] or [`Error::Interrupted`] if a streamed job stops before it finishes.
pub async fn run(cli: &Cli) -> Result<Report, Error> {
    if let Command::Audit(command) = &cli.command {
        return audit_command(&cli.connection, command).await;
    }
    if let Command::Destination(command) = &cli.command {
        return destination_command(&cli.connection, command).await;
    }
    let mut client = connect::client(&cli.connection)?;
    let timeout = Duration::from_secs(cli.connection.timeout_secs);
    match &cli.command {
        Command::Status => {
            let status = unary(timeout, client.get_key_status(GetKeyStatusRequest {})).await?;
            Ok(Report::Status(status))
        }
        Command::Keys(KeysCommand::Show { merchant }) => {
            let keys = unary(
                timeout,
                client.get_merchant_keys(GetMerchantKeysRequest {
                    merchant_id: merchant.clone(),
                }),
            )
            .await?;
            Ok(Report::MerchantKeys {
                merchant_id: merchant.clone(),
                keys,
            })
        }
        Command::Keys(KeysCommand::Rotate { merchant, reason }) => {
            let rotated = unary(
                timeout,
                client.rotate_dek(RotateDekRequest {
                    merchant_id: merchant.clone(),
                    reason: reason.text.clone(),
                }),
            )
            .await?;
            Ok(Report::Rotated {
                merchant_id: merchant.clone(),
                version: rotated.version,
            })
        }
        Command::Keys(KeysCommand::Reencrypt { merchant, reason }) => {
            let request = ReencryptMerchantRequest {
                merchant_id: merchant.clone(),
                reason: reason.text.clone(),
            };
            let stream = client.reencrypt_merchant(request).await?.into_inner();
            let last = follow_job(stream, format!("re-encrypting merchant {merchant}")).await?;
            Ok(Report::Reencrypted {
                merchant_id: merchant.clone(),
                tokens: last.done,
                dek_version: last.target,
            })
        }
        Command::Kek(KekCommand::Rewrap { reason }) => {
            let request = RewrapKeysRequest {
                reason: reason.text.clone(),
            };
            let stream = client.rewrap_keys(request).await?.into_inner();
            let last = follow_job(stream, "rewrapping keys").await?;
            Ok(Report::Rewrapped {
                keys: last.done,
                kek_id: last.target,
            })
        }
        Command::Shred(ShredCommand::Request { merchant, reason }) => {
            let answer = unary(
                timeout,
                client.request_shred(RequestShredRequest {
                    merchant_id: merchant.clone(),
                    reason: reason.text.clone(),
                }),
            )
            .await?;
            let request = answer.request.ok_or_else(|| {
                Error::Protocol("RequestShred answered without the request".to_owned())
            })?;
            let addr =
                (cli.connection.addr != cli::DEFAULT_ADDR).then_some(cli.connection.addr.as_str());
            let approve_command = output::approve_command(addr, merchant, &request.request_id);
            Ok(Report::ShredRequested {
                request,
                approve_command,
            })
        }
        Command::Shred(ShredCommand::Approve {
            merchant,
            request_id,
            reason,
        }) => {
            let approved = unary(
                timeout,
                client.approve_shred(ApproveShredRequest {
                    merchant_id: merchant.clone(),
                    request_id: request_id.clone(),
                    reason: reason.text.clone(),
                }),
            )
            .await?;
            Ok(Report::ShredApproved {
                merchant_id: merchant.clone(),
                request_id: request_id.clone(),
                keys_destroyed: approved.keys_destroyed,
            })
        }
        Command::Audit(_) | Command::Destination(_) => Err(Error::Protocol(
            "audit and destination commands run above".to_owned(),
        )),
    }
}

/// Runs a `destination` command (`vault.v1.DestinationAdminService`, which needs
/// `destinations.admin`).
async fn destination_command(
    connection: &cli::ConnectionArgs,
    command: &DestinationCommand,
) -> Result<Report, Error> {
    let client = || -> Result<_, Error> {
        Ok(DestinationAdminServiceClient::new(connect::channel(
            connection,
        )?))
    };
    let timeout = Duration::from_secs(connection.timeout_secs);
    match command {
        DestinationCommand::Propose { file, reason } => {
            let spec_json = destination::read_spec(file)?;
            let version = unary(
                timeout,
                client()?.propose_destination(ProposeDestinationRequest {
                    spec_json,
                    reason: reason.text.clone(),
                }),
            )
            .await?;
            let addr = (connection.addr != cli::DEFAULT_ADDR).then_some(connection.addr.as_str());
            let approve_command =
                output::destination_approve_command(addr, &version.id, &version.fingerprint);
            Ok(Report::DestinationProposed {
                version,
                approve_command,
            })
        }
        DestinationCommand::Approve {
            id,
            fingerprint,
            reason,
        } => {
            let version = unary(
                timeout,
                client()?.approve_destination(ApproveDestinationRequest {
                    id: id.clone(),
                    reason: reason.text.clone(),
                    fingerprint: fingerprint.clone(),
                }),
            )
            .await?;
            Ok(Report::DestinationApproved(version))
        }
        DestinationCommand::Revoke { name, reason } => {
            let answer = unary(
                timeout,
                client()?.revoke_destination(RevokeDestinationRequest {
                    name: name.clone(),
                    reason: reason.text.clone(),
                }),
            )
            .await?;
            Ok(Report::DestinationRevoked {
                name: name.clone(),
                revoked: answer.revoked,
            })
        }
        DestinationCommand::List { name, spec } => {
            let answer = unary(
                timeout,
                client()?.list_destinations(ListDestinationsRequest {
                    name: name.clone().unwrap_or_default(),
                }),
            )
            .await?;
            Ok(Report::Destinations {
                name: name.clone(),
                versions: answer.versions,
                spec: *spec,
            })
        }
    }
}

/// Runs an `audit` command. `audit verify` and `audit trace` are offline: they open no
/// connection and need no credentials.
async fn audit_command(
    connection: &cli::ConnectionArgs,
    command: &AuditCommand,
) -> Result<Report, Error> {
    match command {
        AuditCommand::Verify { public_key, files } => {
            Ok(Report::AuditVerified(audit::verify(public_key, files)?))
        }
        AuditCommand::Trace {
            token,
            public_key,
            merchant,
            files,
        } => Ok(Report::AuditTraced(trace::trace(
            public_key,
            files,
            token,
            merchant.as_deref(),
        )?)),
        AuditCommand::Export { from, to, out } => Ok(Report::AuditExported(
            audit::export(connect::channel(connection)?, from.clone(), to.clone(), out).await?,
        )),
        AuditCommand::Prune {
            before,
            export,
            public_key,
        } => Ok(Report::AuditPruned(
            audit::prune(|| connect::channel(connection), before, export, public_key).await?,
        )),
        AuditCommand::PublicKey { out } => {
            let keys = audit::public_keys(connect::channel(connection)?).await?;
            let text = serde_json::to_string_pretty(&keys)
                .map_err(|e| Error::Protocol(format!("cannot encode the keys: {e}")))?;
            std::fs::write(out, format!("{text}\n"))
                .map_err(|e| Error::Config(format!("cannot write {}: {e}", out.display())))?;
            Ok(Report::PublicKeys {
                path: out.clone(),
                keys,
            })
        }
    }
}

/// Awaits a single-answer call for at most `timeout`.
async fn unary<T>(
    timeout: Duration,
    call: impl Future<Output = Result<Response<T>, Status>>,
) -> Result<T, Error> {
    match tokio::time::timeout(timeout, call).await {
        Ok(answer) => Ok(answer?.into_inner()),
        Err(_) => Err(Error::Rpc(Status::deadline_exceeded(format!(
            "no answer within {} s (--timeout-secs)",
            timeout.as_secs()
        )))),
    }
}

/// Follows a started job to its finished message, showing progress under `label` on standard
/// error.
async fn follow_job(
    stream: Streaming<Progress>,
    label: impl Into<String>,
) -> Result<Progress, Error> {
    let mut reporter = Reporter::stderr(label);
    let result = progress::follow(stream, |progress| reporter.update(progress)).await;
    match &result {
        Ok(_) => reporter.finish(),
        Err(_) => reporter.abandon(),
    }
    result
}
