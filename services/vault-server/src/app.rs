//! The composition root: builds the store, the KEK, the policy and the TLS settings from a
//! [`Config`], binds the listener, and serves gRPC until told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tonic::transport::Server;
use vault_core::Vault;
use vault_core::keyring::KeyRing;
use vault_core::ports::TokenStore;
use vault_kms::SecretSource;
use vault_proto::v1::audit_service_server::AuditServiceServer;
use vault_proto::v1::key_admin_service_server::KeyAdminServiceServer;
use vault_proto::v1::token_service_server::TokenServiceServer;
use vault_store::{AuditSink, PgSettings, PgStore, SqliteStore};
use zeroize::Zeroizing;

use crate::admin::AdminApi;
use crate::audit::AuditApi;
use crate::config::{Config, LoadedPolicy, StorageUrl, load_policy, read_secret};
use crate::grpc::{Calls, TokenApi};
use crate::kek::open_key_ring;
use crate::limits::{GovernorLimiter, card_like_in_use};
use crate::metrics::METRICS;
use crate::reload::{PolicyReload, hangups, watch_reloads};
use crate::tls;

/// Largest request the vault decodes. A PAN is at most 38 characters; the margin lets a 10 KB
/// junk field reach validation (and an INVALID_ARGUMENT that names it) instead of a transport
/// error, while still bounding memory per call.
const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Upper bound on one call's handling time.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Streams (calls) one connection may have open at once.
const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// HTTP/2 pings find dead connections; a peer that does not answer in time is dropped.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest header block a client may send.
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// A vault whose listener is bound and whose dependencies are open, ready to serve.
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    tls: Arc<tls::ServerTls>,
    vault: Vault,
    store: Backend,
    call_timeout: Duration,
    identity: crate::identity::IdentityConfig,
    handshake_limits: tls::HandshakeLimits,
    checkpoint_interval: Duration,
    refusal_interval: Duration,
    /// The metrics listener, if `[telemetry] metrics_listen` is set.
    probe: Option<crate::probe::ProbeListener>,
    /// The `vault.start` record's detail: the version and the policy file's SHA-256, so an
    /// auditor sees which policy each writer served under (a reload on SIGHUP records the
    /// next one, `policy.reload`).
    start_detail: String,
    /// The policy file, and the digest of the policy in force.
    policy_file: (std::path::PathBuf, [u8; 32]),
    /// SIGHUP, caught from the moment the vault is built: `vaultd` says it is listening
    /// before [`Application::run`] starts the trail, and a SIGHUP in between must not take
    /// the default action (ending the process).
    hangups: Option<tokio::signal::unix::Signal>,
}

/// The store the configuration selects.
#[derive(Clone)]
pub enum Backend {
    /// The embedded default.
    Sqlite(SqliteStore),
    /// Production.
    Postgres(PgStore),
}

impl Backend {
    /// Opens the configured store. SQLite always migrates; PostgreSQL migrates if `migrate`,
    /// and otherwise refuses a schema that lacks a migration this release needs.
    ///
    /// # Errors
    /// If the store cannot be opened, is not durable, or a migration fails.
    pub async fn open(
        config: &Config,
        config_path: &std::path::Path,
        migrate: bool,
    ) -> anyhow::Result<Self> {
        Ok(match config.storage_url(config_path)? {
            StorageUrl::Sqlite(path) => Self::Sqlite(SqliteStore::open(&path).await?),
            StorageUrl::Postgres(url) => {
                let password = match &config.storage.password_file {
                    Some(file) => {
                        let source = SecretSource::File(file.clone());
                        let secret = read_secret(config_path, "storage.password_file", &source)?;
                        Some(Zeroizing::new(secret.expose_secret().to_owned()))
                    }
                    None => None,
                };
                let settings = PgSettings {
                    url,
                    max_connections: config.storage.max_connections,
                    connect_timeout: config.storage.connect_timeout,
                    statement_timeout: config.storage.statement_timeout,
                    password,
                };
                let store = PgStore::connect_only(&settings).await?;
                if migrate {
                    store.migrate(&settings).await?;
                } else {
                    store.check_migrated(&settings).await?;
                }
                Self::Postgres(store)
            }
        })
    }

    /// The same store, copying every committed audit record to `sink` too.
    #[must_use]
    pub fn with_audit_sink(self, sink: AuditSink) -> Self {
        match self {
            Self::Sqlite(store) => Self::Sqlite(store.with_audit_sink(sink)),
            Self::Postgres(store) => Self::Postgres(store.with_audit_sink(sink)),
        }
    }

    /// The store as the domain's port.
    #[must_use]
    pub fn port(&self) -> Arc<dyn TokenStore> {
        match self {
            Self::Sqlite(store) => Arc::new(store.clone()),
            Self::Postgres(store) => Arc::new(store.clone()),
        }
    }

    /// True if the store answers a trivial query (within its timeouts).
    pub async fn ping(&self) -> bool {
        match self {
            Self::Sqlite(store) => store.ping().await,
            Self::Postgres(store) => store.ping().await,
        }
    }

    /// The store's connection pools, for the metrics.
    #[must_use]
    pub fn pool_usage(&self) -> Vec<vault_store::PoolUsage> {
        match self {
            Self::Sqlite(store) => store.pool_usage(),
            Self::Postgres(store) => store.pool_usage(),
        }
    }

    /// Closes the store's connections.
    pub async fn close(&self) {
        match self {
            Self::Sqlite(store) => store.close().await,
            Self::Postgres(store) => store.close().await,
        }
    }
}

impl Application {
    /// Opens the store and the KEK, loads the policy and TLS settings, and binds the listener.
    /// Everything is checked before the port is bound; nothing is served yet.
    ///
    /// # Errors
    /// Any configuration, storage, key or TLS problem, with the file or setting named.
    pub async fn build(config: &Config, config_path: &std::path::Path) -> anyhow::Result<Self> {
        vault_core::pan::configure_card_number_rule(config.input.rule());
        // Read once: the digest `vault.start` records is of the bytes the policy was parsed from.
        let LoadedPolicy { policy, sha256 } = load_policy(&config.policy.path, config.identity)?;
        let start_detail = format!(
            "vaultd {} policy sha256:{}",
            env!("CARGO_PKG_VERSION"),
            hex::encode(sha256)
        );
        let tls = Arc::new(tls::ServerTls::load(&config.tls)?);
        let keys = Arc::new(open_key_ring(config, config_path).await?);
        let store = Backend::open(config, config_path, config.storage.migrate_on_start).await?;
        let store = match &config.audit.sink {
            None => store,
            Some(sink) => store.with_audit_sink(open_sink(sink)?),
        };
        if let Some(days) = config.audit.danger_online_days {
            tracing::warn!(
                days,
                "audit.danger_online_days is set: exported audit records may be pruned after \
                 {days} days, not the 90 PCI DSS 10.5.1 requires"
            );
        }
        let merchants = store.port().merchant_ids().await?;
        for (kind, digest) in card_like_in_use(
            policy.identities().map(|c| c.as_str()),
            policy.merchants().map(|m| m.as_str()),
            merchants.iter().map(|m| m.as_str()),
        ) {
            tracing::warn!(
                kind,
                digest,
                "in use, but the card-number rule ([input] card_number_max_gap) refuses it for \
                 new input: it stays usable; consider renaming it (named by SHA-256 only)"
            );
        }
        let vault = Vault::new(store.port(), keys, Arc::new(policy))
            .with_dek_limits(config.dek.limits())
            .with_audit_retention(config.audit.retention())
            .with_guard(config.guard.settings())
            .with_egress(Arc::new(
                vault_egress::HttpsEgress::new(config.forward.identities()?)
                    .map_err(|e| anyhow::anyhow!("[forward] client identities: {e}"))?,
            ))
            .with_limiter(
                Arc::new(GovernorLimiter::new(&config.limits)),
                config.limits.record_refusals_every,
            );
        // Before the port is bound: a signing key that is missing (while checkpoints it signed
        // exist) or that the KEK cannot unwrap stops the vault here, exit 78.
        vault
            .load_audit_key()
            .await
            .map_err(|e| anyhow::anyhow!("cannot load the audit signing key: {e}"))?;
        let listener = TcpListener::bind(config.listen).await?;
        let local_addr = listener.local_addr()?;
        let probe = match config.telemetry.metrics_listen {
            Some(addr) => Some(crate::probe::ProbeListener::bind(addr).await.map_err(|e| {
                anyhow::anyhow!("telemetry.metrics_listen: cannot listen on {addr}: {e}")
            })?),
            None => None,
        };
        Ok(Self {
            listener,
            local_addr,
            tls,
            vault,
            store,
            call_timeout: config.storage.call_timeout,
            identity: config.identity,
            handshake_limits: config.tls.handshake_limits(),
            checkpoint_interval: config.audit.checkpoint_interval,
            refusal_interval: config.limits.record_refusals_every,
            probe,
            start_detail,
            policy_file: (config.policy.path.clone(), sha256),
            hangups: hangups(),
        })
    }

    /// The address the vault listens on (useful when configured with port 0).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The metrics listener's address, if `[telemetry] metrics_listen` is set.
    #[must_use]
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.probe
            .as_ref()
            .map(crate::probe::ProbeListener::local_addr)
    }

    /// Serves until `shutdown` completes, then drains in-flight calls and closes the store.
    ///
    /// # Errors
    /// If the gRPC server fails.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        // The trail starts before anything is served: no card call before `vault.start`.
        let public = self
            .vault
            .start_audit(self.start_detail.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot start the audit trail: {e}"))?;
        tracing::info!(
            writer = self.vault.audit_writer(),
            key_id = %public.key_id,
            "audit trail started"
        );
        // Forwards whose outcome a stopped replica never recorded: recorded as unknown now.
        record_unknown_forwards(&self.vault).await;
        let checkpoints = tokio::spawn(checkpoint_every(
            self.vault.clone(),
            self.checkpoint_interval,
        ));
        // Connections refused before a caller is known: counted by the accept loop, recorded
        // as one `tls.refused` summary per interval and at shutdown.
        let tls_refusals = Arc::new(tls::RefusalCounts::default());
        let crl_watch = tokio::spawn(watch_reloads(
            Arc::clone(&self.tls),
            PolicyReload {
                vault: self.vault.clone(),
                path: self.policy_file.0.clone(),
                rules: self.identity,
                in_force: self.policy_file.1,
            },
            self.hangups,
        ));
        let housekeeping = tokio::spawn(keep_limits(
            self.vault.clone(),
            Arc::clone(&tls_refusals),
            self.refusal_interval,
        ));
        let readiness = Arc::new(crate::metrics::Readiness::default());
        let store = self.store.clone();
        METRICS.attach(crate::metrics::Sources {
            keys: self.vault.keys().clone(),
            tls_refusals: Arc::clone(&tls_refusals),
            pools: Arc::new(move || store.pool_usage()),
            ready: Arc::clone(&readiness),
        });
        let probe = self
            .probe
            .map(|probe| tokio::spawn(probe.serve(Arc::clone(&readiness))));
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        let health = tokio::spawn(watch_health(
            self.store.clone(),
            self.vault.keys().clone(),
            health_reporter,
            readiness,
        ));
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(vault_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        // grpcurl 1.8 speaks only the v1alpha reflection protocol.
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(vault_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;
        let calls = Calls::new(self.vault.clone(), self.call_timeout, self.identity);
        let admin = KeyAdminServiceServer::new(AdminApi::new(calls.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES);
        let audit = AuditServiceServer::new(AuditApi::new(calls.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES);
        let destinations =
            vault_proto::v1::destination_admin_service_server::DestinationAdminServiceServer::new(
                crate::destinations::DestinationApi::new(calls.clone()),
            )
            .max_decoding_message_size(MAX_REQUEST_BYTES);
        let tokens = TokenServiceServer::new(TokenApi::new(calls))
            .max_decoding_message_size(MAX_REQUEST_BYTES);

        tracing::info!(addr = %self.local_addr, "vaultd serving gRPC over mutual TLS 1.3");
        let (stopping, mut stop_seen) = tokio::sync::watch::channel(false);
        let signal = async move {
            shutdown.await;
            let _ = stopping.send(true);
        };
        let server = Server::builder()
            .timeout(REQUEST_TIMEOUT)
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .concurrency_limit_per_connection(MAX_STREAMS_PER_CONNECTION as usize)
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
            .layer(crate::observe::ObserveLayer)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(tokens)
            .add_service(admin)
            .add_service(destinations)
            .add_service(audit)
            .serve_with_incoming_shutdown(
                tls::incoming(
                    self.listener,
                    self.tls,
                    self.handshake_limits,
                    Arc::clone(&tls_refusals),
                ),
                signal,
            );
        // Drain in-flight calls, but not forever: the stop record must still be written.
        let drained = async {
            let _ = stop_seen.wait_for(|stopping| *stopping).await;
            tokio::time::sleep(SHUTDOWN_DRAIN).await;
        };
        tokio::select! {
            served = server => served?,
            () = drained => tracing::warn!(
                "calls still open {} s after shutdown was requested; stopping anyway",
                SHUTDOWN_DRAIN.as_secs()
            ),
        }
        health.abort();
        if let Some(probe) = probe {
            probe.abort();
        }
        crl_watch.abort();
        checkpoints.abort();
        housekeeping.abort();
        // Refusals counted but not yet recorded: the trail gets them before `vault.stop`.
        if let Err(error) = self.vault.record_refusal_summaries(true).await {
            tracing::warn!(error = %error, "could not record the rate-limit refusal counts");
        }
        record_tls_refusals(&self.vault, &tls_refusals).await;
        // The last record of this writer's chain, and its signed head.
        if let Err(error) = self.vault.stop_audit("shutdown".to_owned()).await {
            tracing::error!(error = %error, "could not record vault.stop or sign the final head");
        }
        self.store.close().await;
        tracing::info!("vaultd stopped");
        Ok(())
    }
}

/// How long a shutdown waits for in-flight calls and open connections before it stops anyway.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);

/// Signs this writer's chain head every `interval` (skipped while it has not moved).
async fn checkpoint_every(vault: Vault, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        match vault
            .checkpoint(vault_audit::CheckpointKind::Interval)
            .await
        {
            Ok(Some(checkpoint)) => tracing::debug!(
                cp_seq = checkpoint.cp_seq,
                seq = checkpoint.seq,
                "audit checkpoint signed"
            ),
            Ok(None) => {}
            Err(error) => tracing::warn!(error = %error, "audit checkpoint failed; will retry"),
        }
    }
}

/// `vaultd replace-audit-key`: replaces an audit signing key that is lost or that no
/// configured KEK unwraps (`Vault::replace_audit_key`), as this process's own audit writer,
/// then records its stop and closes the store. Returns the new key's id.
///
/// # Errors
/// If the configuration, store or KEK cannot be opened, or there is nothing to replace.
pub async fn replace_audit_key(
    config: &Config,
    config_path: &std::path::Path,
    operator: &str,
    reason: &str,
) -> anyhow::Result<String> {
    let policy = load_policy(&config.policy.path, config.identity)?.policy;
    let keys = Arc::new(open_key_ring(config, config_path).await?);
    let store = Backend::open(config, config_path, config.storage.migrate_on_start).await?;
    let vault = Vault::new(store.port(), keys, Arc::new(policy));
    let replaced = vault.replace_audit_key(operator, reason).await;
    let result = match replaced {
        Ok(public) => vault
            .stop_audit("replace-audit-key".to_owned())
            .await
            .map(|()| public.key_id)
            .map_err(|e| anyhow::anyhow!("the key was replaced, but vault.stop failed: {e}")),
        Err(error) => Err(anyhow::anyhow!("{error}")),
    };
    store.close().await;
    result
}

/// Records the summary of connections refused since the last one, if any. A summary the
/// store cannot take is logged and dropped (the refusals were logged one by one as well).
async fn record_tls_refusals(vault: &Vault, refusals: &tls::RefusalCounts) {
    if let Some(summary) = refusals.take_summary()
        && let Err(error) = vault.record_front_door_refusals(summary).await
    {
        tracing::warn!(error = %error, "could not record the refused tls connections");
    }
}

/// Records `unknown` as the outcome of lost forwards (`vault_core::forward`); a failure is
/// logged and retried next round.
async fn record_unknown_forwards(vault: &Vault) {
    match vault.record_unknown_forward_outcomes().await {
        Ok(0) => {}
        Ok(recorded) => tracing::warn!(recorded, "lost forwards: outcome recorded as unknown"),
        Err(error) => tracing::warn!(error = %error, "could not record lost forwards' outcome"),
    }
}

/// Every `interval`: records rate-limit refusals that were counted but not recorded, the
/// summary of refused TLS connections and the outcome of lost forwards, lets the limiter forget idle callers, and (every tenth
/// round, at least hourly) purges the store's abuse tallies of windows that have ended.
async fn keep_limits(vault: Vault, tls_refusals: Arc<tls::RefusalCounts>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    let purge_every = (3_600 / interval.as_secs().max(1)).clamp(1, 10);
    let mut round: u64 = 0;
    loop {
        ticks.tick().await;
        round = round.wrapping_add(1);
        if let Err(error) = vault.record_refusal_summaries(false).await {
            tracing::warn!(error = %error, "could not record the rate-limit refusal counts");
        }
        record_tls_refusals(&vault, &tls_refusals).await;
        record_unknown_forwards(&vault).await;
        vault.limiter().forget_idle();
        if round.is_multiple_of(purge_every) {
            match vault.purge_tallies().await {
                Ok(0) => {}
                Ok(purged) => tracing::debug!(purged, "ended abuse tallies purged"),
                Err(error) => tracing::warn!(error = %error, "abuse tally purge failed"),
            }
        }
    }
}

/// How often the health watcher checks the store.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// Keeps gRPC health (and the HTTP readiness probe, `probe.rs`) in step with the store and
/// the KEKs: SERVING while both answer,
/// NOT_SERVING while either does not (for `vault.v1.TokenService` and the server as a whole,
/// `""`). Calls fail fast with UNAVAILABLE meanwhile (bounded store timeouts; a failed KEK
/// check also empties the unwrapped-key cache, see `vault_core::keyring`), and both recover by
/// themselves when the dependency returns.
async fn watch_health(
    store: Backend,
    keys: Arc<KeyRing>,
    reporter: tonic_health::server::HealthReporter,
    readiness: Arc<crate::metrics::Readiness>,
) {
    use tonic_health::ServingStatus;
    let mut last = None;
    loop {
        let store_up = store.ping().await;
        let kek = keys.check().await;
        let now = (store_up, kek.is_ok());
        readiness.set(store_up, kek.is_ok());
        if last != Some(now) {
            if !store_up {
                tracing::warn!("store unreachable: health is NOT_SERVING, calls fail UNAVAILABLE");
            }
            if let Err(err) = &kek {
                tracing::warn!(
                    error = %err,
                    "kek unavailable: health is NOT_SERVING, cached keys dropped, no card data is released"
                );
            }
            let status = if now == (true, true) {
                tracing::info!(cache = ?keys.cache_stats(), "store and kek reachable: serving");
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter
                .set_service_status(
                    <TokenServiceServer<TokenApi> as tonic::server::NamedService>::NAME,
                    status,
                )
                .await;
            reporter.set_service_status("", status).await;
            last = Some(now);
        }
        tokio::time::sleep(HEALTH_INTERVAL).await;
    }
}

/// Opens the configured second audit sink.
fn open_sink(sink: &crate::config::AuditSinkConfig) -> anyhow::Result<AuditSink> {
    let opened = if sink.path == "-" {
        AuditSink::stdout(sink.required)
    } else {
        AuditSink::file(std::path::Path::new(&sink.path), sink.required)
    }
    .map_err(|e| anyhow::anyhow!("audit.sink.path: cannot open {}: {e}", sink.path))?;
    tracing::info!(
        sink = opened.name(),
        required = sink.required,
        "audit records are copied to a second sink"
    );
    Ok(opened)
}
