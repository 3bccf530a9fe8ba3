//! gRPC `selfheal.v1.Remediations`: `DescribeTarget`, what the GitOps repository says about a
//! service (the policy's `input.target`).

use std::{collections::BTreeMap, sync::Arc};

use selfheal_config::{Secret, TokenCheck};
use selfheal_proto::v1::{
    DescribeTargetRequest, Target,
    remediations_server::{Remediations, RemediationsServer},
};
use tonic::{Request, Response, Status, service::interceptor::InterceptedService};

use crate::{
    reconcile::{ReconcileError, Reconciler, is_dns1123_label},
    repo::Repository,
};

/// The gRPC service.
pub struct RemediationsService {
    reconciler: Arc<Reconciler<dyn Repository>>,
}

/// The service behind its token check.
pub fn server(
    reconciler: Arc<Reconciler<dyn Repository>>,
    token: Secret,
) -> InterceptedService<RemediationsServer<RemediationsService>, TokenCheck> {
    RemediationsServer::with_interceptor(RemediationsService { reconciler }, TokenCheck::new(token))
}

#[tonic::async_trait]
impl Remediations for RemediationsService {
    async fn describe_target(&self, request: Request<DescribeTargetRequest>) -> Result<Response<Target>, Status> {
        let request = request.into_inner();
        let mut labels = BTreeMap::new();
        for (name, value) in [
            ("service", request.service),
            ("cluster", request.cluster),
            ("namespace", request.namespace),
        ] {
            if value.is_empty() {
                continue;
            }
            if !is_dns1123_label(&value) {
                return Err(Status::invalid_argument(format!("{name}: must be a DNS-1123 label")));
            }
            labels.insert(name.to_string(), value);
        }
        if !labels.contains_key("service") {
            return Err(Status::invalid_argument("service: is required"));
        }
        let reconciler = self.reconciler.clone();
        let described = tokio::task::spawn_blocking(move || reconciler.describe(&labels))
            .await
            .map_err(|e| Status::internal(format!("describe panicked: {e}")))?;
        match described {
            Ok(target) => Ok(Response::new(target)),
            Err(ReconcileError::Refused(reason)) => Err(Status::failed_precondition(reason)),
            Err(ReconcileError::Edit(error)) => Err(Status::failed_precondition(error.to_string())),
            Err(ReconcileError::Repo(error)) => Err(Status::unavailable(error.to_string())),
        }
    }
}
