//! The `vault.v1.KeyAdminService` gRPC service: key status, DEK rotation, re-encryption, KEK
//! rewrap and dual-control crypto-shred. Decisions and audit records are the domain's
//! (`vault_core::admin`); this file converts, streams job progress, and logs one line per call.

use std::pin::Pin;

use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use vault_core::VaultError;
use vault_core::admin::JobProgress;
use vault_core::policy::Operation;
use vault_proto::v1 as pb;
use vault_proto::v1::key_admin_service_server::KeyAdminService;

use crate::grpc::{Calls, respond, rfc3339};
use crate::status::to_status;

/// The gRPC face of key administration.
#[derive(Debug, Clone)]
pub struct AdminApi {
    calls: Calls,
}

impl AdminApi {
    /// Serves the vault's key administration calls.
    #[must_use]
    pub fn new(calls: Calls) -> Self {
        Self { calls }
    }
}

/// A job's progress messages.
pub type ProgressStream = Pin<Box<dyn Stream<Item = Result<pb::Progress, Status>> + Send>>;

fn progress_to_proto(progress: &JobProgress) -> pb::Progress {
    pb::Progress {
        done: progress.done,
        remaining: progress.remaining,
        target: progress.target.clone(),
        finished: progress.finished,
        failed: progress.failed,
    }
}

/// Something a job can be asked to do one step of.
trait Job: Send + 'static {
    fn step(&mut self)
    -> impl std::future::Future<Output = Result<JobProgress, VaultError>> + Send;
}

impl Job for vault_core::admin::ReencryptJob {
    async fn step(&mut self) -> Result<JobProgress, VaultError> {
        vault_core::admin::ReencryptJob::step(self).await
    }
}

impl Job for vault_core::admin::RewrapJob {
    async fn step(&mut self) -> Result<JobProgress, VaultError> {
        vault_core::admin::RewrapJob::step(self).await
    }
}

/// Runs `job` step by step on its own task, sending progress after each step. The job stops
/// when it finishes, fails, or the caller goes away (the next send fails); it is resumable,
/// so stopping it early loses nothing.
fn stream_job(
    calls: Calls,
    name: &'static str,
    request_id: String,
    mut job: impl Job,
) -> ProgressStream {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            match calls.within(job.step()).await {
                Ok(progress) => {
                    let finished = progress.finished;
                    if tx.send(Ok(progress_to_proto(&progress))).await.is_err() {
                        tracing::info!(%request_id, job = name, "caller went away; job stopped");
                        return;
                    }
                    if finished {
                        tracing::info!(
                            %request_id,
                            job = name,
                            done = progress.done,
                            failed = progress.failed,
                            remaining = progress.remaining,
                            target = %progress.target,
                            "job finished"
                        );
                        return;
                    }
                }
                Err(error) => {
                    tracing::warn!(%request_id, job = name, error = %error, "job stopped");
                    let _ = tx.send(Err(to_status(&error))).await;
                    return;
                }
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl KeyAdminService for AdminApi {
    type ReencryptMerchantStream = ProgressStream;
    type RewrapKeysStream = ProgressStream;

    async fn get_key_status(
        &self,
        request: Request<pb::GetKeyStatusRequest>,
    ) -> Result<Response<pb::GetKeyStatusResponse>, Status> {
        let ctx = self.calls.identify(&request, Operation::KeysAdmin).await?;
        let result = self
            .calls
            .within(self.calls.vault.key_status(&ctx))
            .await
            .map(|s| pb::GetKeyStatusResponse {
                kek: s.kek,
                current_kek_id: s.current_kek_id,
                previous_keks: s.previous_keks,
                keys_to_rewrap: s.keys_to_rewrap,
                dek_rotate_after_uses: s.limits.rotate_after_uses,
                dek_max_uses: s.limits.max_uses,
                dek_rotate_after_days: s
                    .limits
                    .rotate_after
                    .map_or(0, |age| age.as_secs() / 86_400),
                cache: Some(pb::CacheStatus {
                    hits: s.cache.hits,
                    misses: s.cache.misses,
                    entries: s.cache.entries,
                    max_entries: u64::try_from(s.cache_limits.max_entries).unwrap_or(u64::MAX),
                    max_age_secs: s.cache_limits.max_age.as_secs(),
                }),
            });
        respond(&ctx, Operation::KeysAdmin, result)
    }

    async fn get_merchant_keys(
        &self,
        request: Request<pb::GetMerchantKeysRequest>,
    ) -> Result<Response<pb::GetMerchantKeysResponse>, Status> {
        let ctx = self.calls.identify(&request, Operation::KeysAdmin).await?;
        let body = request.into_inner();
        let result = self
            .calls
            .within(
                self.calls
                    .vault
                    .merchant_key_report(&ctx, &body.merchant_id),
            )
            .await
            .map(|report| pb::GetMerchantKeysResponse {
                keys: report
                    .keys
                    .iter()
                    .map(|v| pb::KeyVersion {
                        purpose: v.key.context.purpose.as_str().to_owned(),
                        version: v.key.context.version,
                        kek_id: v.key.kek_id.clone(),
                        uses: v.uses,
                        created_at: rfc3339(v.created_at),
                        tokens: v.tokens,
                    })
                    .collect(),
                shredded: report.shredded,
                pending_shred: report.pending_shred.as_ref().map(shred_to_proto),
            });
        respond(&ctx, Operation::KeysAdmin, result)
    }

    async fn rotate_dek(
        &self,
        request: Request<pb::RotateDekRequest>,
    ) -> Result<Response<pb::RotateDekResponse>, Status> {
        let ctx = self.calls.identify(&request, Operation::KeysAdmin).await?;
        let body = request.into_inner();
        let result = self
            .calls
            .within(
                self.calls
                    .vault
                    .rotate_dek_now(&ctx, &body.merchant_id, &body.reason),
            )
            .await
            .map(|version| pb::RotateDekResponse { version });
        respond(&ctx, Operation::KeysAdmin, result)
    }

    async fn reencrypt_merchant(
        &self,
        request: Request<pb::ReencryptMerchantRequest>,
    ) -> Result<Response<Self::ReencryptMerchantStream>, Status> {
        let ctx = self.calls.identify(&request, Operation::KeysAdmin).await?;
        let body = request.into_inner();
        let result = self
            .calls
            .within(
                self.calls
                    .vault
                    .start_reencrypt(&ctx, &body.merchant_id, &body.reason),
            )
            .await
            .map(|job| stream_job(self.calls.clone(), "reencrypt", ctx.request_id.clone(), job));
        respond(&ctx, Operation::KeysAdmin, result)
    }

    async fn rewrap_keys(
        &self,
        request: Request<pb::RewrapKeysRequest>,
    ) -> Result<Response<Self::RewrapKeysStream>, Status> {
        let ctx = self.calls.identify(&request, Operation::KeysAdmin).await?;
        let body = request.into_inner();
        let result = self
            .calls
            .within(self.calls.vault.start_rewrap(&ctx, &body.reason))
            .await
            .map(|job| {
                stream_job(
                    self.calls.clone(),
                    "kek-rewrap",
                    ctx.request_id.clone(),
                    job,
                )
            });
        respond(&ctx, Operation::KeysAdmin, result)
    }

    async fn request_shred(
        &self,
        request: Request<pb::RequestShredRequest>,
    ) -> Result<Response<pb::RequestShredResponse>, Status> {
        let ctx = self.calls.identify(&request, Operation::KeysAdmin).await?;
        let body = request.into_inner();
        let result = self
            .calls
            .within(
                self.calls
                    .vault
                    .request_shred(&ctx, &body.merchant_id, &body.reason),
            )
            .await
            .map(|request| pb::RequestShredResponse {
                request: Some(shred_to_proto(&request)),
            });
        respond(&ctx, Operation::KeysAdmin, result)
    }

    async fn approve_shred(
        &self,
        request: Request<pb::ApproveShredRequest>,
    ) -> Result<Response<pb::ApproveShredResponse>, Status> {
        let ctx = self.calls.identify(&request, Operation::KeysAdmin).await?;
        let body = request.into_inner();
        let result = self
            .calls
            .within(self.calls.vault.approve_shred(
                &ctx,
                &body.merchant_id,
                &body.request_id,
                &body.reason,
            ))
            .await
            .map(|keys_destroyed| pb::ApproveShredResponse { keys_destroyed });
        respond(&ctx, Operation::KeysAdmin, result)
    }
}

fn shred_to_proto(request: &vault_core::ports::ShredRequest) -> pb::ShredRequest {
    pb::ShredRequest {
        request_id: request.request_id.clone(),
        merchant_id: request.merchant.as_str().to_owned(),
        requested_by: request.requested_by.as_str().to_owned(),
        requested_at: rfc3339(request.requested_at),
        reason: request.reason.as_str().to_owned(),
    }
}
