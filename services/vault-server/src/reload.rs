//! Live reloads: SIGHUP reloads the policy and the TLS settings, and a changed CRL file
//! reloads the TLS settings; each reload is in force at once and recorded in the trail.

use std::sync::Arc;

use vault_core::Vault;

use crate::config::{LoadedPolicy, load_policy};
use crate::tls;

/// SIGHUP as a stream of wake-ups; `None` (logged) if it cannot be caught.
pub(crate) fn hangups() -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(
                error = %error,
                "cannot catch SIGHUP: the policy cannot be reloaded; CRL files are still polled"
            );
            None
        }
    }
}

/// Reloads the TLS settings (the client CRLs above all) on SIGHUP and when a CRL file changes
/// (checked every `tls::CRL_POLL_INTERVAL`), and the policy on SIGHUP. Connections whose
/// client certificate the new settings refuse are closed. A reload that fails keeps the
/// settings or the policy in force.
pub(crate) async fn watch_reloads(
    tls: Arc<tls::ServerTls>,
    mut policy: PolicyReload,
    mut hangups: Option<tokio::signal::unix::Signal>,
) {
    let mut stamp = tls.crl_stamp();
    loop {
        let signalled = tokio::select! {
            Some(()) = async {
                match hangups.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
            () = tokio::time::sleep(tls::CRL_POLL_INTERVAL) => false,
        };
        if signalled {
            policy.reload().await;
        }
        let now = tls.crl_stamp();
        if !signalled && now == stamp {
            continue;
        }
        stamp = now;
        // In force at once (a revocation must not wait for the trail), then recorded.
        let (detail, applied) = match tls.reload() {
            Ok(closed) => {
                tracing::info!(
                    closed,
                    signalled,
                    "tls settings reloaded; connections whose certificate they refuse were closed"
                );
                let cause = if signalled {
                    "sighup"
                } else {
                    "crl file changed"
                };
                (
                    format!("{cause}: {}; {closed} connections closed", tls.digests()),
                    true,
                )
            }
            Err(error) => {
                tracing::error!(
                    error = %error,
                    "tls settings not reloaded; the previous ones stay in force"
                );
                (
                    format!(
                        "tls files refused; the previous settings stay in force (on disk: {})",
                        tls.digests()
                    ),
                    false,
                )
            }
        };
        if let Err(error) = policy.vault.record_tls_reload(detail, applied).await {
            tracing::warn!(error = %error, "could not record the tls reload in the trail");
        }
    }
}

/// The policy file and what a SIGHUP does with it.
pub(crate) struct PolicyReload {
    pub(crate) vault: Vault,
    pub(crate) path: std::path::PathBuf,
    pub(crate) rules: crate::identity::IdentityConfig,
    /// The SHA-256 of the policy file the policy in force was parsed from.
    pub(crate) in_force: [u8; 32],
}

impl PolicyReload {
    /// Reads and parses the policy file again. A new policy goes in force once the trail
    /// records its digest (`policy.reload`); a file that fails to parse or check keeps the
    /// policy in force, says why in the log and records that it was kept.
    async fn reload(&mut self) {
        let was = hex::encode(self.in_force);
        match load_policy(&self.path, self.rules) {
            Ok(LoadedPolicy { sha256, .. }) if sha256 == self.in_force => {
                tracing::info!(sha256 = %was, "policy file unchanged; nothing to reload");
            }
            Ok(LoadedPolicy { policy, sha256 }) => {
                let now = hex::encode(sha256);
                let detail = format!("policy sha256:{now} in force (was sha256:{was})");
                match self.vault.replace_policy(policy, detail).await {
                    Ok(()) => {
                        self.in_force = sha256;
                        tracing::info!(sha256 = %now, previous = %was, "policy reloaded");
                    }
                    Err(error) => tracing::error!(
                        error = %error,
                        "policy not reloaded: the audit trail could not record it; the \
                         previous policy stays in force"
                    ),
                }
            }
            Err(error) => {
                tracing::error!(
                    error = %error,
                    sha256 = %was,
                    "policy not reloaded; the previous policy stays in force"
                );
                let detail = format!("policy file refused; sha256:{was} stays in force");
                if let Err(error) = self.vault.record_policy_kept(detail).await {
                    tracing::warn!(error = %error, "could not record the refused policy reload");
                }
            }
        }
    }
}
