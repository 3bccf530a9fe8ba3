//! gRPC `selfheal.v1.Policy`: what the policies decide for an alert, without publishing.

use std::{collections::HashMap, sync::Arc};

use selfheal_config::{Secret, TokenCheck};
use selfheal_proto::v1::{
    AlertEvent, EvaluateRequest, EvaluateResponse, ListPoliciesRequest, ListPoliciesResponse, PolicyFile,
    ReloadRequest,
    policy_server::{Policy, PolicyServer},
};
use tonic::{Request, Response, Status, service::interceptor::InterceptedService};
use tracing::Instrument;

use crate::{decide, engine::PolicyEngine};

/// The gRPC service.
pub struct PolicyService {
    engine: Arc<dyn PolicyEngine>,
    metrics: crate::promql::MetricsReader,
    target: crate::target::TargetReader,
    dry_run: bool,
}

/// The service behind its token check.
pub fn server(
    engine: Arc<dyn PolicyEngine>,
    metrics: crate::promql::MetricsReader,
    target: crate::target::TargetReader,
    dry_run: bool,
    token: Secret,
) -> InterceptedService<PolicyServer<PolicyService>, TokenCheck> {
    PolicyServer::with_interceptor(
        PolicyService {
            engine,
            metrics,
            target,
            dry_run,
        },
        TokenCheck::new(token),
    )
}

#[tonic::async_trait]
impl Policy for PolicyService {
    async fn evaluate(&self, request: Request<EvaluateRequest>) -> Result<Response<EvaluateResponse>, Status> {
        let span = tracing::info_span!(
            "policy.evaluate",
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = "selfheal.v1.Policy",
            rpc.method = "Evaluate",
            selfheal.incident.key = tracing::field::Empty
        );
        selfheal_telemetry::propagation::set_parent_from_metadata(&span, request.metadata());
        let request = request.into_inner();
        let alert = request
            .alert
            .ok_or_else(|| Status::invalid_argument("alert: is required"))?;
        if alert.labels.get("alertname").is_none_or(|v| v.is_empty()) {
            return Err(Status::invalid_argument("alert.labels.alertname: is required"));
        }
        if alert.status != "firing" && alert.status != "resolved" {
            return Err(Status::invalid_argument(
                "alert.status: must be \"firing\" or \"resolved\"",
            ));
        }
        let labels: HashMap<_, _> = alert.labels.clone();
        let event = AlertEvent {
            alert: Some(alert),
            source: "grpc".into(),
            ..Default::default()
        };
        let dry_run = request.dry_run || self.dry_run;
        let (decision, input) = async {
            let labels = event
                .alert
                .as_ref()
                .map(|a| a.labels.clone().into_iter().collect())
                .unwrap_or_default();
            let ((metrics, metrics_errors), (target, target_error)) =
                futures::join!(self.metrics.read(&labels), self.target.read(&labels));
            let extra = decide::Extra {
                history: serde_json::json!([]),
                metrics,
                metrics_errors,
                target,
                target_error,
            };
            decide::decide(self.engine.as_ref(), &event, &extra, dry_run, chrono::Utc::now()).await
        }
        .instrument(span)
        .await;
        tracing::debug!(
            alert.name = labels.get("alertname").map(String::as_str).unwrap_or_default(),
            decision.action = decide::action_name(decision.action()),
            "evaluated over grpc"
        );
        Ok(Response::new(EvaluateResponse {
            decision: Some(decision),
            input_json: input.to_string(),
        }))
    }

    async fn reload(&self, _: Request<ReloadRequest>) -> Result<Response<ListPoliciesResponse>, Status> {
        match self.engine.reload() {
            Ok(files) => Ok(Response::new(ListPoliciesResponse {
                policies: files
                    .into_iter()
                    .map(|f| PolicyFile {
                        path: f.path,
                        package: f.package,
                    })
                    .collect(),
            })),
            Err(error) => Err(Status::failed_precondition(format!(
                "{error}; the last good policies stay in force"
            ))),
        }
    }

    async fn list_policies(&self, _: Request<ListPoliciesRequest>) -> Result<Response<ListPoliciesResponse>, Status> {
        let policies = self
            .engine
            .policies()
            .into_iter()
            .map(|f| PolicyFile {
                path: f.path,
                package: f.package,
            })
            .collect();
        Ok(Response::new(ListPoliciesResponse { policies }))
    }
}
