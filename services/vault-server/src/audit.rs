//! The `vault.v1.AuditService` gRPC service: filtered reads, exports, the public keys and
//! pruning of the audit trail. Decisions and the audit records of the reads themselves are the domain's
//! (`vault_core::trail`); this file converts and streams.

use std::pin::Pin;

use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use vault_audit::Line;
use vault_core::policy::Operation;
use vault_core::trail::{AuditReadCommand, PruneCommand};
use vault_proto::v1 as pb;
use vault_proto::v1::audit_service_server::AuditService;

use crate::grpc::{Calls, respond};
use crate::status::to_status;

/// The gRPC face of the audit trail.
#[derive(Debug, Clone)]
pub struct AuditApi {
    calls: Calls,
}

impl AuditApi {
    /// Serves the vault's audit trail calls.
    #[must_use]
    pub fn new(calls: Calls) -> Self {
        Self { calls }
    }
}

/// A stream of records or export items.
pub type ItemStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn empty(text: String) -> Option<String> {
    Some(text).filter(|t| !t.is_empty())
}

/// Pages through `next` on its own task, sending each item; stops at the end, on an error, or
/// when the caller goes away.
fn stream_pages<S, T, F>(calls: Calls, mut source: S, mut next: F, first: Vec<T>) -> ItemStream<T>
where
    S: Send + 'static,
    T: Send + 'static,
    F: for<'a> FnMut(
            &'a mut S,
        ) -> Pin<
            Box<dyn Future<Output = Result<Option<Vec<T>>, vault_core::VaultError>> + Send + 'a>,
        > + Send
        + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        for item in first {
            if tx.send(Ok(item)).await.is_err() {
                return;
            }
        }
        loop {
            match calls.within(next(&mut source)).await {
                Ok(Some(page)) => {
                    for item in page {
                        if tx.send(Ok(item)).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(None) => return,
                Err(error) => {
                    tracing::warn!(error = %error, "audit stream stopped");
                    let _ = tx.send(Err(to_status(&error))).await;
                    return;
                }
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    type ReadRecordsStream = ItemStream<pb::AuditRecord>;
    type ExportStream = ItemStream<pb::ExportItem>;

    async fn read_records(
        &self,
        request: Request<pb::ReadRecordsRequest>,
    ) -> Result<Response<Self::ReadRecordsStream>, Status> {
        let ctx = self.calls.identify(&request, Operation::AuditRead).await?;
        let body = request.into_inner();
        let command = AuditReadCommand {
            from: empty(body.from),
            to: empty(body.to),
            merchant_id: empty(body.merchant_id),
            caller: empty(body.caller),
            event: empty(body.event),
            outcome: empty(body.outcome),
        };
        let result =
            self.calls
                .within(self.calls.vault.read_audit(&ctx, command))
                .await
                .map(|reader| {
                    stream_pages(
                        self.calls.clone(),
                        reader,
                        |reader| {
                            Box::pin(async move {
                                Ok(reader.next_page().await?.map(|page| {
                                    page.into_iter().map(pb::AuditRecord::from).collect()
                                }))
                            })
                        },
                        Vec::new(),
                    )
                });
        respond(&ctx, Operation::AuditRead, result)
    }

    async fn export(
        &self,
        request: Request<pb::ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let ctx = self.calls.identify(&request, Operation::AuditRead).await?;
        let body = request.into_inner();
        let result =
            self.calls
                .within(
                    self.calls
                        .vault
                        .export_audit(&ctx, empty(body.from), empty(body.to)),
                )
                .await
                .map(|export| {
                    let header = pb::ExportItem::from(Line::Header(export.header().clone()));
                    stream_pages(
                        self.calls.clone(),
                        export,
                        |export| {
                            Box::pin(async move {
                                Ok(export.next_page().await?.map(|page| {
                                    page.into_iter().map(pb::ExportItem::from).collect()
                                }))
                            })
                        },
                        vec![header],
                    )
                });
        respond(&ctx, Operation::AuditRead, result)
    }

    async fn get_public_keys(
        &self,
        request: Request<pb::GetPublicKeysRequest>,
    ) -> Result<Response<pb::GetPublicKeysResponse>, Status> {
        let ctx = self.calls.identify(&request, Operation::AuditRead).await?;
        let result = self
            .calls
            .within(self.calls.vault.audit_public_keys(&ctx))
            .await
            .map(|keys| pb::GetPublicKeysResponse {
                keys: keys.into_iter().map(pb::PublicKey::from).collect(),
            });
        respond(&ctx, Operation::AuditRead, result)
    }

    async fn prune(
        &self,
        request: Request<pb::PruneRequest>,
    ) -> Result<Response<pb::PruneResponse>, Status> {
        let ctx = self.calls.identify(&request, Operation::AuditPrune).await?;
        let body = request.into_inner();
        let command = PruneCommand {
            before: body.before,
            export_first: body.export_first_checkpoint,
            export_last: body.export_last_checkpoint,
            export_last_hash: body.export_last_hash,
        };
        // No call timeout: the prune is one transaction, and a caller that gives up rolls it
        // back by going away.
        let result = self
            .calls
            .vault
            .prune_audit(&ctx, command)
            .await
            .map(|pruned| pb::PruneResponse {
                through_checkpoint: pruned.through.unwrap_or(0),
                records_removed: pruned.removed.records,
                checkpoints_removed: pruned.removed.checkpoints,
                writers_pruned: pruned.writers,
                writers_closed: pruned.removed.writers_closed,
                checkpoints_written: pruned.checkpoints_written,
            });
        respond(&ctx, Operation::AuditPrune, result)
    }
}
