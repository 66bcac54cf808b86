//! The `vault.v1.DestinationAdminService` gRPC service: forward destinations proposed,
//! approved, revoked and listed under dual control. Decisions and audit records are the
//! domain's (`vault_core::forward::admin`); this file converts and logs one line per call.

use tonic::{Request, Response, Status};
use vault_core::forward::StoredDestination;
use vault_core::forward::admin::DestinationVersion;
use vault_core::policy::Operation;
use vault_proto::v1 as pb;
use vault_proto::v1::destination_admin_service_server::DestinationAdminService;

use crate::grpc::{Calls, respond, rfc3339};

/// The gRPC face of destination administration.
#[derive(Debug, Clone)]
pub struct DestinationApi {
    calls: Calls,
}

impl DestinationApi {
    /// Serves the vault's destination administration calls.
    #[must_use]
    pub fn new(calls: Calls) -> Self {
        Self { calls }
    }
}

fn version_to_proto(stored: StoredDestination, state: &str) -> pb::DestinationVersion {
    pb::DestinationVersion {
        id: stored.id,
        name: stored.name,
        fingerprint: stored.fingerprint,
        state: state.to_owned(),
        spec_json: stored.spec_json,
        proposed_by: stored.proposed_by,
        proposed_at: rfc3339(stored.proposed_at),
        approved_by: stored.approved_by.unwrap_or_default(),
        approved_at: stored.approved_at.map(rfc3339).unwrap_or_default(),
        revoked_by: stored.revoked_by.unwrap_or_default(),
        revoked_at: stored.revoked_at.map(rfc3339).unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl DestinationAdminService for DestinationApi {
    async fn propose_destination(
        &self,
        request: Request<pb::ProposeDestinationRequest>,
    ) -> Result<Response<pb::DestinationVersion>, Status> {
        let op = Operation::DestinationsAdmin;
        let ctx = self.calls.identify(&request, op).await?;
        let body = request.into_inner();
        let result = self
            .calls
            .within(
                self.calls
                    .vault
                    .propose_destination(&ctx, &body.spec_json, &body.reason),
            )
            .await
            .map(|stored| version_to_proto(stored, "proposed"));
        respond(&ctx, op, result)
    }

    async fn approve_destination(
        &self,
        request: Request<pb::ApproveDestinationRequest>,
    ) -> Result<Response<pb::DestinationVersion>, Status> {
        let op = Operation::DestinationsAdmin;
        let ctx = self.calls.identify(&request, op).await?;
        let body = request.into_inner();
        let result = self
            .calls
            .within(self.calls.vault.approve_destination(
                &ctx,
                &body.id,
                &body.fingerprint,
                &body.reason,
            ))
            .await
            .map(|stored| version_to_proto(stored, "in_force"));
        respond(&ctx, op, result)
    }

    async fn revoke_destination(
        &self,
        request: Request<pb::RevokeDestinationRequest>,
    ) -> Result<Response<pb::RevokeDestinationResponse>, Status> {
        let op = Operation::DestinationsAdmin;
        let ctx = self.calls.identify(&request, op).await?;
        let body = request.into_inner();
        let result = self
            .calls
            .within(
                self.calls
                    .vault
                    .revoke_destination(&ctx, &body.name, &body.reason),
            )
            .await
            .map(|revoked| pb::RevokeDestinationResponse { revoked });
        respond(&ctx, op, result)
    }

    async fn list_destinations(
        &self,
        request: Request<pb::ListDestinationsRequest>,
    ) -> Result<Response<pb::ListDestinationsResponse>, Status> {
        let op = Operation::DestinationsAdmin;
        let ctx = self.calls.identify(&request, op).await?;
        let body = request.into_inner();
        let name = Some(body.name.as_str()).filter(|n| !n.is_empty());
        let result = self
            .calls
            .within(self.calls.vault.list_destinations(&ctx, name))
            .await
            .map(|versions| pb::ListDestinationsResponse {
                versions: versions
                    .into_iter()
                    .map(|DestinationVersion { stored, state }| {
                        version_to_proto(stored, state.as_str())
                    })
                    .collect(),
            });
        respond(&ctx, op, result)
    }
}
