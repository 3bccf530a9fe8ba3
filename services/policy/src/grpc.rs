//! gRPC `selfheal.v1.Policy`: what the policies decide for an alert, without publishing.

use std::collections::HashMap;

use selfheal_config::TokenCheck;
use selfheal_proto::v1::{
    AlertEvent, EvaluateRequest, EvaluateResponse, ListPoliciesRequest, ListPoliciesResponse, PolicyFile,
    ReloadRequest,
    policy_server::{Policy, PolicyServer},
};
use tonic::{Request, Response, Status, service::interceptor::InterceptedService};
use tracing::Instrument;

use crate::decide;

/// The gRPC service.
pub struct PolicyService {
    /// `Evaluate` decides as the consumer does, previewing the limits (nothing is reserved).
    decider: crate::decider::Decider,
    dry_run: bool,
}

/// The service behind its token check.
pub fn server(
    decider: crate::decider::Decider,
    dry_run: bool,
    tokens: TokenCheck,
) -> InterceptedService<PolicyServer<PolicyService>, TokenCheck> {
    PolicyServer::with_interceptor(PolicyService { decider, dry_run }, tokens)
}

#[tonic::async_trait]
impl Policy for PolicyService {
    async fn evaluate(&self, request: Request<EvaluateRequest>) -> Result<Response<EvaluateResponse>, Status> {
        selfheal_config::require(&request, selfheal_config::Role::Read)?;
        let span = selfheal_telemetry::rpc_span!(
            "policy.evaluate",
            "server",
            "selfheal.v1.Policy",
            "Evaluate",
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
        // What the consumer would decide now: the same history, metrics and target, and the
        // limits as they stand (previewed: nothing is reserved).
        // As the consumer keys them: by the service label, or `_none` without one. A label the
        // gateway would refuse has no history and meets no limit (such an alert never arrives).
        let service = match labels.get("service") {
            None => Some("_none".to_string()),
            Some(service) if selfheal_proto::names::is_dns1123_label(service) => Some(service.clone()),
            Some(_) => None,
        };
        let (decision, input) = self
            .decider
            .decide(
                &event,
                service.as_deref(),
                dry_run,
                chrono::Utc::now(),
                crate::decider::Mode::Preview,
            )
            .instrument(span)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
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

    async fn reload(&self, request: Request<ReloadRequest>) -> Result<Response<ListPoliciesResponse>, Status> {
        selfheal_config::require(&request, selfheal_config::Role::Operate)?;
        match self.decider.engine.reload() {
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

    async fn list_policies(
        &self,
        request: Request<ListPoliciesRequest>,
    ) -> Result<Response<ListPoliciesResponse>, Status> {
        selfheal_config::require(&request, selfheal_config::Role::Read)?;
        let policies = self
            .decider
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

#[cfg(test)]
mod tests {
    use std::{path::Path, sync::Arc};

    use selfheal_bus::kv::MemoryKeyValue;
    use selfheal_proto::v1::{Action, Alert};

    use super::*;
    use crate::{
        engine::PolicyEngine,
        limits::{Limiter, LimitsConfig},
    };

    /// `Evaluate` answers what the consumer would decide now: the service's history in the input,
    /// the limits applied, and nothing reserved.
    #[tokio::test]
    async fn evaluate_shows_history_and_limits_and_reserves_nothing() -> anyhow::Result<()> {
        let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/policies");
        let engine: Arc<dyn PolicyEngine> = Arc::new(crate::engine::RegoEngine::load_dir(
            &policies,
            "data.selfheal.decision",
        )?);
        let limiter = Limiter::new(
            Arc::new(MemoryKeyValue::default()),
            Arc::new(MemoryKeyValue::default()),
            LimitsConfig {
                global_max: 2,
                ..Default::default()
            },
        );
        let service = PolicyService {
            decider: crate::decider::Decider {
                engine,
                metrics: crate::promql::MetricsReader::none(),
                target: crate::target::TargetReader::none(),
                limiter: limiter.clone(),
                windows: Default::default(),
                freeze: selfheal_bus::control::FreezeReader::new(Arc::new(MemoryKeyValue::default())),
                preview_control: Arc::new(MemoryKeyValue::default()),
                dependents: Default::default(),
            },
            dry_run: false,
        };
        let evaluate = || async {
            let labels = [
                ("alertname", "HighErrorRate"),
                ("service", "checkout"),
                ("severity", "critical"),
                ("auto_heal", "true"),
            ];
            let mut request = Request::new(EvaluateRequest {
                alert: Some(Alert {
                    status: "firing".into(),
                    labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                    ..Default::default()
                }),
                dry_run: false,
            });
            // What the token check puts on an admitted call.
            request.extensions_mut().insert(selfheal_config::Caller {
                name: "reader".into(),
                roles: vec![selfheal_config::Role::Read],
                shared: false,
            });
            let answer = service.evaluate(request).await?.into_inner();
            let input: serde_json::Value = serde_json::from_str(&answer.input_json)?;
            let decision = answer.decision.ok_or_else(|| anyhow::anyhow!("no decision"))?;
            anyhow::Ok((decision, input["history"].as_array().map_or(0, Vec::len)))
        };
        let now = chrono::Utc::now();

        let (decision, history) = evaluate().await?;
        assert_eq!(
            (decision.action(), history),
            (Action::Rollback, 0),
            "{}",
            decision.reason
        );

        limiter.reserve("checkout", "earlier", "rollback", now).await?;
        let (decision, history) = evaluate().await?;
        assert_eq!(
            (decision.action(), history),
            (Action::Rollback, 1),
            "{}",
            decision.reason
        );

        // The last slot of the global budget goes to another service: checkout's rollback would
        // be refused now, and Evaluate says so.
        limiter.reserve("cart", "other", "scale", now).await?;
        let (decision, _) = evaluate().await?;
        assert_eq!(decision.action(), Action::Escalate);
        assert!(decision.reason.contains("global budget"), "{}", decision.reason);

        assert_eq!(
            limiter.history("checkout", now).await?.len(),
            1,
            "Evaluate reserved nothing"
        );
        Ok(())
    }
}
