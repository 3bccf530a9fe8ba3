//! The pr-controller: selfheal's execution layer.
//!
//! Consumes `selfheal.decisions.>` (durable `pr-controller`). For a `rollback` or `scale`
//! decision it edits the service's kustomization on a branch `selfheal/<incident>` of the GitOps
//! repository and, when the decision's approval is `auto`, fast-forwards the main branch to it.
//! It publishes a [`RemediationEvent`](selfheal_proto::v1::RemediationEvent) on
//! `selfheal.remediations.<service>` (message id `remediation.<incident>.<state>`) and acks the
//! decision only after that. The reconciler is idempotent per incident, so a redelivered
//! decision finds its branch and reports it instead of committing again.

pub mod config;
pub mod edit;
pub mod grpc;
pub mod reconcile;
pub mod repo;

use std::{future::Future, sync::Arc, time::Duration};

use async_trait::async_trait;
use prost::Message as _;
use selfheal_bus::{
    ConsumerSpec, Delivery, Headers, Outgoing, SharedBus,
    consumer::{self, Disposition, Handler},
    subjects,
};
use selfheal_proto::{
    Timestamp, names,
    v1::{Action, Decision, RemediationEvent, RemediationState},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use config::PrControllerConfig;
use reconcile::{ReconcileError, Reconciler};
use repo::Repository;

/// The durable consumer name.
pub const CONSUMER: &str = "pr-controller";

/// Carries out decisions.
pub struct RemediationHandler {
    reconciler: Arc<Reconciler<dyn Repository>>,
    bus: SharedBus,
}

impl RemediationHandler {
    pub fn new(repo: Arc<dyn Repository>, config: PrControllerConfig, bus: SharedBus) -> Self {
        Self {
            reconciler: Arc::new(Reconciler { repo, config }),
            bus,
        }
    }
}

#[async_trait]
impl Handler for RemediationHandler {
    async fn handle(&self, delivery: &Delivery) -> Disposition {
        let decision = match Decision::decode(delivery.payload.clone()) {
            Ok(decision) => decision,
            Err(error) => return Disposition::Reject(format!("undecodable Decision: {error}")),
        };
        let span = tracing::info_span!(
            "pr_controller.reconcile",
            incident.key = %decision.incident_key,
            decision.action = names::action(decision.action()),
            delivery.attempt = delivery.delivered,
            remediation.state = tracing::field::Empty,
        );
        selfheal_telemetry::propagation::set_parent_from_headers(&span, &delivery.headers);
        let service = delivery.subject.rsplit('.').next().unwrap_or("_none").to_string();
        self.carry_out(decision, service, span.clone()).instrument(span).await
    }
}

impl RemediationHandler {
    async fn carry_out(&self, decision: Decision, service: String, span: tracing::Span) -> Disposition {
        match decision.action() {
            Action::Rollback | Action::Scale | Action::Restart => {}
            Action::None | Action::Escalate | Action::Unspecified => return Disposition::Ack,
        }
        if decision.dry_run {
            tracing::info!("dry-run decision: nothing changed");
            return Disposition::Ack;
        }
        let trace_id = selfheal_telemetry::propagation::trace_id(&span).unwrap_or_default();
        let reconciler = self.reconciler.clone();
        let for_blocking = decision.clone();
        let outcome = match tokio::task::spawn_blocking(move || reconciler.reconcile(&for_blocking, &trace_id)).await {
            Ok(outcome) => outcome,
            Err(join_error) => {
                tracing::error!(error = %join_error, "reconcile panicked");
                return Disposition::Retry(Duration::from_secs(5));
            }
        };
        let event = match outcome {
            Ok(event) => event,
            Err(error) if error.is_transient() => {
                tracing::warn!(error = %error, "git change failed; retrying");
                return Disposition::Retry(Duration::from_secs(2));
            }
            Err(error) => failed_event(&decision, &error),
        };
        let state = names::state(event.state());
        span.record("remediation.state", state);
        metrics::counter!(
            selfheal_telemetry::metrics::REMEDIATIONS,
            "action" => names::action(event.action()),
            "state" => state
        )
        .increment(1);
        tracing::info!(commit = %event.commit, branch = %event.branch, from = %event.from_value, to = %event.to_value, message = %event.message, "remediation");
        let mut headers = Headers::new();
        selfheal_telemetry::propagation::inject_headers(&span, &mut headers);
        let message = Outgoing {
            subject: subjects::remediation(&service),
            msg_id: format!("remediation.{}.{}", event.incident_key, state),
            headers,
            payload: event.encode_to_vec().into(),
        };
        match self.bus.publish(message).await {
            Ok(_) => Disposition::Ack,
            Err(error) => {
                // The git change is made; the redelivery finds it and publishes again.
                tracing::warn!(error = %error, "remediation event not published; retrying");
                Disposition::Retry(Duration::from_secs(1))
            }
        }
    }
}

fn failed_event(decision: &Decision, error: &ReconcileError) -> RemediationEvent {
    let now = chrono::Utc::now();
    let service = decision
        .alert
        .as_ref()
        .and_then(|e| e.alert.as_ref())
        .and_then(|a| a.labels.get("service"))
        .filter(|s| reconcile::is_dns1123_label(s))
        .cloned()
        .unwrap_or_default();
    let mut event = RemediationEvent {
        incident_key: decision.incident_key.clone(),
        action: decision.action,
        service,
        message: error.to_string(),
        decision: Some(decision.clone()),
        at: Some(Timestamp {
            seconds: now.timestamp(),
            nanos: now.timestamp_subsec_nanos() as i32,
        }),
        ..Default::default()
    };
    event.set_state(RemediationState::Failed);
    event
}

/// Where the pr-controller serves.
pub struct Listeners {
    /// `/healthz`, `/readyz`, `/metrics`.
    pub http: TcpListener,
    /// gRPC `selfheal.v1.Remediations`.
    pub grpc: TcpListener,
}

/// Runs the consumer, the gRPC service and the health endpoints until `shutdown` completes.
pub async fn run(
    config: PrControllerConfig,
    repo: Arc<dyn Repository>,
    bus: SharedBus,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let token = selfheal_config::Secret::inline_or_file(config.grpc_token.clone(), config.grpc_token_file.as_deref())?
        .ok_or_else(|| anyhow::anyhow!("no gRPC token: set SELFHEAL_PR_CONTROLLER_GRPC_TOKEN or grpc_token_file"))?;
    let cancel = CancellationToken::new();
    let handler = Arc::new(RemediationHandler::new(repo, config, bus.clone()));
    let reconciler = handler.reconciler.clone();
    let consumer_task = tokio::spawn(consumer::run(
        bus.clone(),
        ConsumerSpec::new(CONSUMER, &[subjects::DECISIONS]),
        handler,
        cancel.clone().cancelled_owned(),
    ));
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<selfheal_proto::v1::remediations_server::RemediationsServer<grpc::RemediationsService>>()
        .await;
    tracing::info!(http = %listeners.http.local_addr()?, grpc = %listeners.grpc.local_addr()?, "pr-controller running");
    let grpc_task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(grpc::server(reconciler, token))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listeners.grpc).with_nodelay(Some(true)),
                cancel.clone().cancelled_owned(),
            ),
    );
    let health = selfheal_telemetry::health::router(
        selfheal_telemetry::health::bus_ready(bus),
        selfheal_telemetry::metrics::install(),
    );
    let http_task = tokio::spawn(
        axum::serve(listeners.http, health)
            .with_graceful_shutdown(cancel.clone().cancelled_owned())
            .into_future(),
    );
    shutdown.await;
    cancel.cancel();
    consumer_task.await??;
    grpc_task.await??;
    http_task.await??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use futures::StreamExt;
    use selfheal_bus::{Bus, memory::MemoryBus};
    use selfheal_proto::v1::{Alert, AlertEvent, Approval};

    use super::*;
    use crate::repo::{Author, LocalRepository};

    #[tokio::test]
    async fn a_hostile_label_becomes_a_failed_event_and_writes_nothing() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let bare = dir.path().join("gitops.git");
        let author = Author {
            name: "dev".into(),
            email: "dev@example.com".into(),
        };
        let repo = LocalRepository::init_bare_with_commits(
            &bare,
            "main",
            &[(
                "init",
                vec![(
                    "apps/checkout/kustomization.yaml",
                    "images:\n- name: checkout\n  newTag: v1\n",
                )],
            )],
            &author,
        )?;
        let refs = || {
            Command::new("git")
                .arg("--git-dir")
                .arg(&bare)
                .args(["for-each-ref"])
                .output()
        };
        let refs_before = refs()?.stdout;
        let bus = MemoryBus::default();
        let handler = RemediationHandler::new(Arc::new(repo), PrControllerConfig::default(), Arc::new(bus.clone()));

        let labels = [("service", "a\nb: c"), ("alertname", "HighErrorRate")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut decision = Decision {
            incident_key: "0123456789abcdef".into(),
            reason: "error rate".into(),
            alert: Some(AlertEvent {
                alert: Some(Alert {
                    status: "firing".into(),
                    labels,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        decision.set_action(Action::Rollback);
        decision.set_approval(Approval::Auto);
        bus.publish(selfheal_bus::Outgoing {
            subject: subjects::decision("_none"),
            msg_id: "decision.0123456789abcdef".into(),
            headers: Headers::new(),
            payload: decision.encode_to_vec().into(),
        })
        .await?;
        let mut deliveries = bus.subscribe(ConsumerSpec::new("test", &[subjects::DECISIONS])).await?;
        let delivery = deliveries
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("no delivery"))??;
        assert_eq!(handler.handle(&delivery).await, Disposition::Ack);

        let events: Vec<RemediationEvent> = bus
            .messages()
            .into_iter()
            .filter(|m| m.subject.starts_with("selfheal.remediations."))
            .map(|m| RemediationEvent::decode(m.payload))
            .collect::<Result<_, _>>()?;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].state(), RemediationState::Failed);
        assert!(events[0].message.contains("service label"), "{}", events[0].message);
        assert!(!events[0].message.contains("b: c"), "the hostile value is not echoed");
        assert_eq!(refs()?.stdout, refs_before, "nothing was written");
        Ok(())
    }
}
