//! The policy service: selfheal's decision layer.
//!
//! Consumes `selfheal.alerts.firing.>` (durable `policy`), evaluates the Rego policies with the
//! alert as input, and publishes a [`Decision`](selfheal_proto::v1::Decision) on
//! `selfheal.decisions.<service>` with the message id `decision.<incident>`, so a redelivered
//! alert yields one stored decision. The policy never touches git: it only decides.
//!
//! gRPC `selfheal.v1.Policy/Evaluate` answers what would be decided, without publishing.

pub mod config;
pub mod decide;
pub mod decider;
pub mod dependents;
pub mod engine;
pub mod grpc;
pub mod limits;
pub mod opa;
pub mod promql;
pub mod target;
pub mod windows;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use prost::Message as _;
use selfheal_bus::{
    ConsumerSpec, Delivery, Headers, Outgoing, SharedBus,
    consumer::{self, Disposition, Handler},
    nats::NatsOptions,
    subjects,
};
use selfheal_proto::v1::AlertEvent;
use selfheal_runtime::{Addresses, RunError, Service, Shutdown, StartError};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use config::PolicyConfig;
use engine::PolicyEngine;

/// The durable consumer name.
pub const CONSUMER: &str = "policy";

/// The durable consumer of remediation events: how each action ended, in its record.
pub const OUTCOMES_CONSUMER: &str = "policy-outcomes";

/// Writes how each automatic action ended (verified, escalated, failed, rejected) into its
/// record, for `recently_fixed` and `input.history`.
pub struct OutcomeHandler {
    limiter: limits::Limiter,
}

#[async_trait]
impl Handler for OutcomeHandler {
    async fn handle(&self, delivery: &Delivery) -> Disposition {
        use selfheal_proto::v1::{RemediationEvent, RemediationState};
        let event = match RemediationEvent::decode(delivery.payload.clone()) {
            Ok(event) => event,
            Err(error) => return Disposition::Reject(format!("undecodable RemediationEvent: {error}")),
        };
        let ended = matches!(
            event.state(),
            RemediationState::Verified
                | RemediationState::Escalated
                | RemediationState::Failed
                | RemediationState::Rejected
        );
        if !ended || !selfheal_proto::names::is_dns1123_label(&event.service) {
            return Disposition::Ack;
        }
        let at = event
            .at
            .as_ref()
            .and_then(selfheal_proto::time::datetime)
            .unwrap_or_else(chrono::Utc::now);
        let outcome = selfheal_proto::names::state(event.state());
        match self
            .limiter
            .record_outcome(&event.service, &event.incident_key, outcome, at)
            .await
        {
            Ok(_) => Disposition::Ack,
            Err(error) => {
                tracing::warn!(error = %error, "outcome not recorded; retrying");
                Disposition::Retry(Duration::from_secs(1))
            }
        }
    }
}

/// Turns each firing alert into a published decision.
pub struct DecisionHandler {
    decider: decider::Decider,
    bus: SharedBus,
    dry_run: bool,
}

impl DecisionHandler {
    pub fn new(decider: decider::Decider, bus: SharedBus, dry_run: bool) -> Self {
        Self { decider, bus, dry_run }
    }
}

#[async_trait]
impl Handler for DecisionHandler {
    async fn handle(&self, delivery: &Delivery) -> Disposition {
        let event = match AlertEvent::decode(delivery.payload.clone()) {
            Ok(event) => event,
            Err(error) => return Disposition::Reject(format!("undecodable AlertEvent: {error}")),
        };
        let span = selfheal_telemetry::consumer_span!(
            "policy.decide",
            delivery,
            CONSUMER,
            selfheal.incident.key = %event.incident_key,
            selfheal.action = tracing::field::Empty,
        );
        selfheal_telemetry::propagation::set_parent_from_headers(&span, &delivery.headers);
        let service = delivery.subject.rsplit('.').next().unwrap_or("_none").to_string();
        self.decide_and_publish(event, service, span.clone())
            .instrument(span)
            .await
    }
}

impl DecisionHandler {
    async fn decide_and_publish(&self, event: AlertEvent, service: String, span: tracing::Span) -> Disposition {
        let started = std::time::Instant::now();
        let now = chrono::Utc::now();
        let service_label = event
            .alert
            .as_ref()
            .and_then(|a| a.labels.get("service"))
            .cloned()
            .unwrap_or_else(|| service.clone());
        let decided = self
            .decider
            .decide(&event, Some(&service_label), self.dry_run, now, decider::Mode::Reserve)
            .await;
        let (decision, input) = match decided {
            Ok(decided) => decided,
            Err(error) => {
                tracing::warn!(error = %error, "cannot decide now; retrying");
                return Disposition::Retry(Duration::from_secs(1));
            }
        };
        metrics::histogram!(selfheal_telemetry::metrics::POLICY_EVAL_SECONDS).record(started.elapsed().as_secs_f64());
        let action = decide::action_name(decision.action());
        span.record("selfheal.action", action);
        if let Some(received) = event.received_at.as_ref() {
            let received = received.seconds as f64 + f64::from(received.nanos) / 1e9;
            let decided = now.timestamp() as f64 + f64::from(now.timestamp_subsec_nanos()) / 1e9;
            metrics::histogram!(selfheal_telemetry::metrics::HOP_WEBHOOK_TO_DECISION)
                .record((decided - received).max(0.0));
        }
        metrics::counter!(selfheal_telemetry::metrics::POLICY_DECISIONS, "action" => action).increment(1);
        // The decision log: one JSON line per decision in OPA's decision-log shape.
        let trace_id = selfheal_telemetry::propagation::trace_id(&span).unwrap_or_default();
        let log = decide::decision_log(&decision, &input, &trace_id, now);
        tracing::info!(target: "selfheal::decision_log", decision_id = %format!("decision.{}", event.incident_key), action, decision_log = %log, "decision");
        let mut headers = Headers::new();
        selfheal_telemetry::propagation::inject_headers(&span, &mut headers);
        let message = Outgoing {
            subject: subjects::decision(&service),
            msg_id: format!("decision.{}", event.incident_key),
            headers,
            payload: decision.encode_to_vec().into(),
        };
        match self.bus.publish(message).await {
            Ok(_) => Disposition::Ack,
            Err(error) => {
                tracing::warn!(error = %error, "decision not published; retrying");
                Disposition::Retry(Duration::from_secs(1))
            }
        }
    }
}

pub use selfheal_runtime::Listeners;

/// The policy service, built from its config with every setting checked: the gRPC token, the
/// policies (Rego files, or OPA), the Prometheus and pr-controller clients.
pub struct Policy {
    config: PolicyConfig,
    engine: Arc<dyn PolicyEngine>,
    token: selfheal_config::TokenCheck,
    metrics: promql::MetricsReader,
    target: target::TargetReader,
    windows: Arc<windows::Windows>,
    dependents: dependents::DependentsReader,
    nats: selfheal_bus::config::CheckedNats,
    tls: Option<selfheal_runtime::grpc_tls::ServerTls>,
}

#[async_trait]
impl Service for Policy {
    type Config = PolicyConfig;
    const NAME: &'static str = "selfheal-policy";
    const ENV_PREFIX: &'static str = "SELFHEAL_POLICY_";
    const ABOUT: &'static str = "selfheal's decision layer: Rego policies over firing alerts.";

    async fn from_config(config: PolicyConfig) -> Result<Self, StartError> {
        let token = selfheal_config::TokenCheck::from_settings(
            config.grpc_token.clone(),
            config.grpc_token_file.as_deref(),
            &config.grpc_tokens,
            Self::ENV_PREFIX,
        )?;
        let engine: Arc<dyn PolicyEngine> = match &config.opa_url {
            Some(url) if !url.is_empty() => Arc::new(
                opa::OpaEngine::new(url, &config.query, config.opa_timeout)
                    .map_err(|e| StartError::config(format!("opa_url: {e}")))?,
            ),
            _ => Arc::new(
                engine::ReloadingEngine::load(&config.policy_dir, &config.query, config.rego_vm)
                    .map_err(|e| StartError::config(format!("policy_dir: {e}")))?,
            ),
        };
        let metrics = promql::MetricsReader::from_config(&config.metrics)
            .map_err(|e| StartError::config(format!("metrics: {e}")))?;
        let target =
            target::TargetReader::from_config(&config.target).map_err(|e| StartError::config(e.to_string()))?;
        let nats = config.nats.check().map_err(|e| StartError::config(e.to_string()))?;
        let tls = selfheal_runtime::grpc_tls::ServerTls::from_config(&config.grpc_tls)?;
        let windows = Arc::new(windows::Windows::new(&config.windows).map_err(StartError::config)?);
        let dependents = dependents::DependentsReader::from_config(&config.dependents, metrics.source())
            .map_err(StartError::config)?;
        if config.limits.max_firing_dependents > 0
            && (!dependents.configured() || config.dependents.incidents_url.is_none())
        {
            return Err(StartError::config(
                "limits.max_firing_dependents: set [dependents] (query or static) and dependents.incidents_url, which it counts from",
            ));
        }
        Ok(Self {
            tls,
            windows,
            dependents,
            config,
            engine,
            token,
            metrics,
            target,
            nats,
        })
    }

    fn addresses(&self) -> Addresses {
        Addresses {
            http: self.config.listen,
            grpc: self.config.grpc_listen,
        }
    }

    fn bus_options(&self) -> NatsOptions {
        // The policy keeps its action records' bucket. Nobody keeps the kill switch's: a user
        // allowed to change that bucket's settings could make the switch expire.
        NatsOptions::new(&self.config.nats_url, Self::NAME)
            .with_config(self.nats.clone())
            .keeping(&[limits::BUCKET])
    }

    /// Runs the consumer, the gRPC service and the health endpoints until `shutdown` completes.
    async fn run(self, bus: SharedBus, listeners: Listeners, shutdown: Shutdown) -> Result<(), RunError> {
        let Self {
            config,
            engine,
            token,
            metrics: metric_reader,
            target: target_reader,
            tls,
            windows,
            dependents,
            ..
        } = self;
        let cancel = CancellationToken::new();
        let window = config
            .limits
            .per_service_window
            .max(config.limits.global_window)
            .max(config.limits.cooldown)
            .max(config.limits.recently_fixed);
        // The action records, read from memory (kept current by the bucket's watch): a decision's
        // history and `Evaluate`'s limits cost no round trip; a reservation's compare-and-set on
        // a record another replica moved on still fails, and it reads the bucket again. The
        // acting path reads the control bucket (kill switch, freeze) as it is, so a switch an
        // operator has just set stops the next decision; `Evaluate`, a preview, reads it from
        // memory too.
        let kept = window * 2;
        let actions =
            selfheal_bus::watched::Watched::shared(limits::BUCKET, bus.key_value(limits::BUCKET, kept).await?, kept);
        let control = limits::control_bucket(&bus).await?;
        if limits::carry_over_kill_switch(&actions, &control)
            .await
            .map_err(|e| StartError::unavailable("the kill switch", e))?
        {
            tracing::warn!(
                "the kill switch was on in selfheal_actions (before the upgrade); it stays on, now in selfheal_control"
            );
        }
        let decider = decider::Decider {
            engine: engine.clone(),
            limiter: limits::Limiter::new(actions, control.clone(), config.limits.clone()),
            metrics: metric_reader,
            target: target_reader,
            windows,
            freeze: selfheal_bus::control::FreezeReader::new(control.clone()),
            preview_control: selfheal_bus::watched::Watched::shared(limits::CONTROL_BUCKET, control, Duration::ZERO),
            dependents,
        };
        let outcomes = Arc::new(OutcomeHandler {
            limiter: decider.limiter.clone(),
        });
        let handler = Arc::new(DecisionHandler::new(decider.clone(), bus.clone(), config.dry_run));
        let mut alerts = ConsumerSpec::new(CONSUMER, &["selfheal.alerts.firing.>"]);
        alerts.ack_wait = config.ack_wait;
        alerts.concurrency = config.concurrency;
        let consumer_task = tokio::spawn(consumer::run(
            bus.clone(),
            alerts,
            handler,
            cancel.clone().cancelled_owned(),
        ));
        let outcomes_task = tokio::spawn(consumer::run(
            bus.clone(),
            ConsumerSpec::new(OUTCOMES_CONSUMER, &["selfheal.remediations.>"]),
            outcomes,
            cancel.clone().cancelled_owned(),
        ));
        tokio::spawn(selfheal_telemetry::metrics::sample_consumer_lag(
            bus.clone(),
            vec![CONSUMER.to_string(), OUTCOMES_CONSUMER.to_string()],
            Duration::from_secs(5),
            cancel.clone().cancelled_owned(),
        ));

        let reload_task = (!config.reload_interval.is_zero()).then(|| {
            let (engine, cancel, interval) = (engine.clone(), cancel.clone(), config.reload_interval);
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(interval);
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        _ = ticks.tick() => {
                            let engine = engine.clone();
                            // Parsing policies is CPU work; keep it off the async workers.
                            let _ = tokio::task::spawn_blocking(move || engine.reload_if_changed()).await;
                        }
                    }
                }
            })
        });
        let grpc_addr = listeners.grpc.local_addr()?;
        let http_addr = listeners.http.local_addr()?;
        let grpc = selfheal_runtime::grpc_server(
            <selfheal_proto::v1::policy_server::PolicyServer<grpc::PolicyService> as tonic::server::NamedService>::NAME,
        )
        .await?
        .add_service(grpc::server(decider, config.dry_run, token));
        let health = selfheal_telemetry::health::router(
            selfheal_telemetry::health::bus_ready(bus),
            selfheal_telemetry::metrics::install(),
        );
        let servers = selfheal_runtime::serve(listeners, grpc, tls, health, config.http, &cancel);
        tracing::info!(grpc = %grpc_addr, http = %http_addr, "policy service running");
        shutdown.await;
        cancel.cancel();
        consumer_task.await??;
        outcomes_task.await??;
        if let Some(reload_task) = reload_task {
            reload_task.await?;
        }
        servers.join().await
    }
}
