//! The notifier: selfheal's feedback and record.
//!
//! Consumes `selfheal.decisions.>` and `selfheal.remediations.>` (durable `notifier`). Every event
//! becomes one audit row, keyed by its event key, so a redelivery adds nothing. People are told
//! about what needs them: every remediation event, escalations, and dry-run decisions. A
//! notification is marked sent only after the channel took it, and the delivery is acked after
//! that; a crash in between means at worst one repeated notification, never a lost one.

pub mod audit;
pub mod channel;
pub mod config;
pub mod grpc;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{SecondsFormat, Utc};
use prost::Message as _;
use selfheal_bus::{
    ConsumerSpec, Delivery, SharedBus,
    consumer::{self, Disposition, Handler},
    nats::NatsOptions,
    subjects,
};
use selfheal_proto::{
    names,
    v1::{Action, Decision, RemediationEvent, RemediationState},
};
use selfheal_runtime::{Addresses, RunError, Service, Shutdown, StartError};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use audit::{AuditEntry, AuditStore};
use channel::{Channel, Notification};

pub use config::NotifierConfig;

/// The durable consumer name.
pub const CONSUMER: &str = "notifier";
/// The durable consumer of the dead letters.
pub const DEAD_LETTER_CONSUMER: &str = "notifier-dead-letters";

/// The decision as JSON, for the audit row.
pub fn decision_json(decision: &Decision) -> serde_json::Value {
    let alert = decision.alert.as_ref().and_then(|event| event.alert.as_ref());
    let params = decision.params.clone().unwrap_or_default();
    json!({
        "action": names::action(decision.action()),
        "approval": names::approval(decision.approval()),
        "reason": decision.reason,
        "params": {"target_tag": params.target_tag, "replicas": params.replicas},
        "policy": decision.policy,
        "rule": decision.rule,
        "dry_run": decision.dry_run,
        "incident": decision.incident_key,
        "alert": alert.map(|a| json!({"status": a.status, "labels": a.labels, "fingerprint": a.fingerprint})),
    })
}

fn label(decision: &Decision, name: &str) -> String {
    decision
        .alert
        .as_ref()
        .and_then(|event| event.alert.as_ref())
        .and_then(|alert| alert.labels.get(name))
        .cloned()
        .unwrap_or_default()
}

/// An event off the bus, as the notifier sees it.
struct Event {
    entry: AuditEntry,
    notification: Option<Notification>,
}

/// The audit row of a dead letter: which consumer gave up on what, and why. The incident and
/// service come from the message it carried, when it can be read.
fn from_dead_letter(letter: &selfheal_bus::dead::DeadLetter, trace_id: &str, now: &str) -> Event {
    let service = letter.subject.rsplit('.').next().unwrap_or_default().to_string();
    let (incident, action) = if letter.subject.starts_with("selfheal.decisions.") {
        Decision::decode(letter.payload.clone())
            .map(|d| (d.incident_key.clone(), names::action(d.action()).to_string()))
            .unwrap_or_default()
    } else if letter.subject.starts_with("selfheal.remediations.") {
        RemediationEvent::decode(letter.payload.clone())
            .map(|r| (r.incident_key, String::new()))
            .unwrap_or_default()
    } else {
        selfheal_proto::v1::AlertEvent::decode(letter.payload.clone())
            .map(|a| (a.incident_key, String::new()))
            .unwrap_or_default()
    };
    let entry = AuditEntry {
        event_key: format!("dead_letter.{}.{}", letter.consumer, letter.original_sequence),
        recorded_at: now.to_string(),
        incident,
        service,
        kind: "dead_letter".into(),
        action,
        state: letter.consumer.clone(),
        reason: format!(
            "{} (delivered {} times; {} #{}; dead letter #{})",
            letter.reason, letter.deliveries, letter.subject, letter.original_sequence, letter.sequence
        ),
        decision_json: String::new(),
        reference: String::new(),
        success: Some(false),
        trace_id: trace_id.to_string(),
        mttr_seconds: None,
    };
    Event {
        entry,
        notification: None,
    }
}

fn from_decision(decision: &Decision, service: &str, trace_id: &str, now: &str) -> Event {
    let action = names::action(decision.action());
    let entry = AuditEntry {
        event_key: format!("decision.{}", decision.incident_key),
        recorded_at: now.to_string(),
        incident: decision.incident_key.clone(),
        service: service.to_string(),
        kind: "decision".into(),
        action: action.into(),
        state: names::approval(decision.approval()).into(),
        reason: decision.reason.clone(),
        decision_json: decision_json(decision).to_string(),
        reference: String::new(),
        success: None,
        trace_id: trace_id.to_string(),
        mttr_seconds: None,
    };
    let tell = decision.action() == Action::Escalate || (decision.dry_run && decision.action() != Action::None);
    let notification = tell.then(|| {
        let alertname = label(decision, "alertname");
        let text = if decision.dry_run {
            format!(
                "[dry run] {alertname} on {service}: would {action}. {}",
                decision.reason
            )
        } else {
            format!("{alertname} on {service} needs a person: {}", decision.reason)
        };
        Notification {
            kind: "decision".into(),
            incident: decision.incident_key.clone(),
            service: service.to_string(),
            severity: label(decision, "severity"),
            alertname,
            action: action.into(),
            state: names::approval(decision.approval()).into(),
            reason: decision.reason.clone(),
            repository: String::new(),
            branch: String::new(),
            commit: String::new(),
            from: String::new(),
            to: String::new(),
            dry_run: decision.dry_run,
            mttr_seconds: None,
            trace_id: trace_id.to_string(),
            text,
        }
    });
    Event { entry, notification }
}

/// The part of a remediation's message that says a person acted ("approved by oncall-1"), if
/// it says so: the pr-controller writes it from the caller's token.
fn operator_note(message: &str) -> Option<&str> {
    ["approved by ", "rejected by ", "retried by "]
        .iter()
        .any(|prefix| message.starts_with(prefix))
        .then(|| message.split(": ").next().unwrap_or(message).trim())
}

fn from_remediation(event: &RemediationEvent, trace_id: &str, now: &str) -> Event {
    let decision = event.decision.clone().unwrap_or_default();
    let state = names::state(event.state());
    let action = names::action(event.action());
    let success = match event.state() {
        RemediationState::Merged | RemediationState::Verified => Some(true),
        RemediationState::Failed | RemediationState::Escalated | RemediationState::Rejected => Some(false),
        RemediationState::Opened | RemediationState::Unspecified => None,
    };
    let reference = if event.pull_request_url.is_empty() {
        event.commit.clone()
    } else {
        event.pull_request_url.clone()
    };
    let entry = AuditEntry {
        event_key: format!("remediation.{}.{}", event.incident_key, state),
        recorded_at: now.to_string(),
        incident: event.incident_key.clone(),
        service: event.service.clone(),
        kind: "remediation".into(),
        action: action.into(),
        state: state.into(),
        reason: match operator_note(&event.message) {
            // Who acted is part of the record: "approved by oncall-1; <the decision's reason>".
            Some(note) => format!("{note}; {}", decision.reason),
            None => decision.reason.clone(),
        },
        decision_json: decision_json(&decision).to_string(),
        reference,
        success,
        trace_id: trace_id.to_string(),
        mttr_seconds: (event.state() == RemediationState::Verified).then_some(event.mttr_seconds),
    };
    let alertname = label(&decision, "alertname");
    let short_commit: String = event.commit.chars().take(12).collect();
    let text = match event.state() {
        RemediationState::Merged => format!(
            "{alertname} on {}: {action} {} → {} merged ({short_commit}). {}",
            event.service, event.from_value, event.to_value, decision.reason
        ),
        RemediationState::Opened => format!(
            "{alertname} on {}: {action} {} → {} waits for approval on {}. {}",
            event.service, event.from_value, event.to_value, event.branch, decision.reason
        ),
        RemediationState::Verified => format!(
            "{alertname} on {} resolved {:.0}s after it started: the {action} to {} worked ({:.0}s to remediate).",
            event.service, event.mttr_seconds, event.to_value, event.time_to_remediate_seconds
        ),
        _ => format!("{alertname} on {}: {action} {state}: {}", event.service, event.message),
    };
    let notification = Notification {
        kind: "remediation".into(),
        incident: event.incident_key.clone(),
        service: event.service.clone(),
        severity: label(&decision, "severity"),
        alertname,
        action: action.into(),
        state: state.into(),
        reason: decision.reason.clone(),
        repository: event.repository.clone(),
        branch: event.branch.clone(),
        commit: event.commit.clone(),
        from: event.from_value.clone(),
        to: event.to_value.clone(),
        dry_run: decision.dry_run,
        mttr_seconds: (event.state() == RemediationState::Verified).then_some(event.mttr_seconds),
        trace_id: trace_id.to_string(),
        text,
    };
    Event {
        entry,
        notification: Some(notification),
    }
}

/// Records and tells.
pub struct NotifyHandler {
    store: Arc<dyn AuditStore>,
    routes: Vec<channel::Route>,
    retry_base: Duration,
}

impl NotifyHandler {
    pub fn new(store: Arc<dyn AuditStore>, routes: Vec<channel::Route>, retry_base: Duration) -> Self {
        Self {
            store,
            routes,
            retry_base,
        }
    }

    async fn process(&self, event: Event, attempt: u64) -> Disposition {
        // Exponential backoff for anything that failed: base, 2×base, 4×base … up to a minute.
        let backoff = self
            .retry_base
            .saturating_mul(1 << attempt.saturating_sub(1).min(10))
            .min(Duration::from_secs(60));
        let recorded = match self.store.record(&event.entry).await {
            Ok(recorded) => recorded,
            Err(error) => {
                tracing::warn!(error = %error, "audit row not written; retrying");
                return Disposition::Retry(backoff);
            }
        };
        if recorded.inserted {
            metrics::counter!(selfheal_telemetry::metrics::AUDIT_ROWS, "kind" => event.entry.kind.clone()).increment(1);
        }
        let Some(notification) = event.notification else {
            return Disposition::Ack;
        };
        for route in self.routes.iter().filter(|route| route.matches(&notification)) {
            // One record per event and channel: a redelivery skips the channels already told.
            let key = format!("{}#{}", event.entry.event_key, route.channel.name());
            match self.store.is_notified(&key).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(error = %error, "notification log unavailable; retrying");
                    return Disposition::Retry(backoff);
                }
            }
            if let Err(error) = route.channel.send(&notification).await {
                metrics::counter!(selfheal_telemetry::metrics::NOTIFICATIONS, "result" => "error").increment(1);
                tracing::warn!(channel = route.channel.name(), error = %error, attempt, "notification failed; retrying");
                return Disposition::Retry(backoff);
            }
            metrics::counter!(selfheal_telemetry::metrics::NOTIFICATIONS, "result" => "sent").increment(1);
            let now = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
            if let Err(error) = self.store.mark_notified(&key, &now).await {
                // Retrying risks one repeat; acking risks a log that says it was never sent.
                tracing::warn!(error = %error, "sent notification not recorded; retrying");
                return Disposition::Retry(backoff);
            }
        }
        Disposition::Ack
    }
}

#[async_trait]
impl Handler for NotifyHandler {
    async fn handle(&self, delivery: &Delivery) -> Disposition {
        let span = selfheal_telemetry::consumer_span!(
            "notifier.record",
            delivery,
            CONSUMER,
            selfheal.incident.key = tracing::field::Empty,
            selfheal.event.kind = tracing::field::Empty,
        );
        selfheal_telemetry::propagation::set_parent_from_headers(&span, &delivery.headers);
        let trace_id = selfheal_telemetry::propagation::trace_id(&span).unwrap_or_default();
        let now = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
        let service = delivery.subject.rsplit('.').next().unwrap_or_default().to_string();
        let event = if delivery.subject.starts_with("selfheal.decisions.") {
            match Decision::decode(delivery.payload.clone()) {
                Ok(decision) => from_decision(&decision, &service, &trace_id, &now),
                Err(error) => return Disposition::Reject(format!("undecodable Decision: {error}")),
            }
        } else if delivery.subject.starts_with("selfheal.remediations.") {
            match RemediationEvent::decode(delivery.payload.clone()) {
                Ok(remediation) => from_remediation(&remediation, &trace_id, &now),
                Err(error) => {
                    return Disposition::Reject(format!("undecodable RemediationEvent: {error}"));
                }
            }
        } else if delivery.subject.starts_with("selfheal_dead.") {
            match selfheal_bus::dead::DeadLetter::read(delivery.sequence, &delivery.headers, delivery.payload.clone()) {
                Some(letter) => from_dead_letter(&letter, &trace_id, &now),
                None => return Disposition::Ack,
            }
        } else {
            return Disposition::Ack;
        };
        span.record("selfheal.incident.key", event.entry.incident.as_str());
        span.record("selfheal.event.kind", event.entry.kind.as_str());
        self.process(event, delivery.delivered).instrument(span).await
    }
}

pub use selfheal_runtime::Listeners;

/// How the notifier paces its work.
#[derive(Clone, Copy, Debug)]
pub struct Pacing {
    /// First retry delay of a failed notification (doubling per attempt).
    pub retry_base: Duration,
    /// How long an event may be in work before JetStream delivers it again.
    pub ack_wait: Duration,
}

impl Pacing {
    pub fn from_config(config: &NotifierConfig) -> Self {
        Self {
            retry_base: config.retry_base,
            ack_wait: config.ack_wait,
        }
    }
}

/// The notifier, built from its config with every setting checked: the gRPC token, the
/// channels and routes, and the audit log (opened, and migrated).
pub struct Notifier {
    config: NotifierConfig,
    store: Arc<dyn AuditStore>,
    routes: Vec<channel::Route>,
    token: selfheal_config::TokenCheck,
    nats: selfheal_bus::config::CheckedNats,
    tls: Option<selfheal_runtime::grpc_tls::ServerTls>,
}

#[async_trait]
impl Service for Notifier {
    type Config = NotifierConfig;
    const NAME: &'static str = "selfheal-notifier";
    const ENV_PREFIX: &'static str = "SELFHEAL_NOTIFIER_";
    const ABOUT: &'static str = "selfheal's feedback and record: notifications and the audit log.";

    async fn from_config(config: NotifierConfig) -> Result<Self, StartError> {
        let config = config.with_secret_files()?;
        let token = selfheal_config::TokenCheck::from_settings(
            config.grpc_token.clone(),
            config.grpc_token_file.as_deref(),
            &config.grpc_tokens,
            Self::ENV_PREFIX,
        )?;
        let routes = routes_from(&config).map_err(|e| StartError::config(e.to_string()))?;
        let store = audit::SqlAuditStore::connect(config.database_url().expose())
            .await
            .map_err(|e| StartError::unavailable("the audit log", e))?;
        let nats = config.nats.check().map_err(|e| StartError::config(e.to_string()))?;
        let tls = selfheal_runtime::grpc_tls::ServerTls::from_config(&config.grpc_tls)?;
        Ok(Self {
            tls,
            config,
            store: Arc::new(store),
            routes,
            token,
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
        NatsOptions::new(&self.config.nats_url, Self::NAME).with_config(self.nats.clone())
    }

    /// Runs the consumer, the audit gRPC service and the health endpoints until `shutdown`.
    async fn run(self, bus: SharedBus, listeners: Listeners, shutdown: Shutdown) -> Result<(), RunError> {
        let pacing = Pacing::from_config(&self.config);
        let http_limits = self.config.http;
        let Self {
            store,
            routes,
            token,
            tls,
            ..
        } = self;
        let cancel = CancellationToken::new();
        let handler = Arc::new(NotifyHandler::new(store.clone(), routes, pacing.retry_base));
        let grpc_store = store.clone();
        let mut events = ConsumerSpec::new(CONSUMER, &[subjects::DECISIONS, subjects::REMEDIATIONS]);
        events.ack_wait = pacing.ack_wait;
        let consumer_task = tokio::spawn(consumer::run(
            bus.clone(),
            events,
            handler.clone(),
            cancel.clone().cancelled_owned(),
        ));
        // Every dead letter gets its audit row too.
        let mut dead_letters = ConsumerSpec::new(DEAD_LETTER_CONSUMER, &[selfheal_bus::dead::SUBJECTS]);
        dead_letters.ack_wait = pacing.ack_wait;
        let dead_letter_task = tokio::spawn(consumer::run(
            bus.clone(),
            dead_letters,
            handler,
            cancel.clone().cancelled_owned(),
        ));
        tokio::spawn(selfheal_telemetry::metrics::sample_consumer_lag(
            bus.clone(),
            vec![CONSUMER.to_string()],
            Duration::from_secs(5),
            cancel.clone().cancelled_owned(),
        ));
        let ready: selfheal_telemetry::health::ReadinessCheck = Arc::new(move || {
            let bus = bus.clone();
            let store = store.clone();
            Box::pin(async move {
                bus.ready().await.map_err(|e| e.to_string())?;
                store.ping().await.map_err(|e| e.to_string())
            })
        });
        let health = selfheal_telemetry::health::router(ready, selfheal_telemetry::metrics::install());
        tracing::info!(http = %listeners.http.local_addr()?, grpc = %listeners.grpc.local_addr()?, "notifier running");
        let grpc = selfheal_runtime::grpc_server(
            <selfheal_proto::v1::audit_server::AuditServer<grpc::AuditService> as tonic::server::NamedService>::NAME,
        )
        .await?
        .add_service(grpc::server(grpc_store, token));
        let servers = selfheal_runtime::serve(listeners, grpc, tls, health, http_limits, &cancel);
        shutdown.await;
        cancel.cancel();
        consumer_task.await??;
        dead_letter_task.await??;
        servers.join().await
    }
}

/// Why the routes cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error(transparent)]
    Channel(#[from] channel::ChannelError),
    #[error("routes: channel {0:?} is not configured (set webhook_url or slack_webhook_url, or use \"log\")")]
    Unknown(String),
}

/// The routes `config` asks for. Without routes, every configured channel gets everything;
/// with none configured, notifications go to the log.
pub fn routes_from(config: &NotifierConfig) -> Result<Vec<channel::Route>, RouteError> {
    let mut channels: Vec<Arc<dyn Channel>> = Vec::new();
    if let Some(url) = config.webhook_url.as_ref().filter(|u| !u.is_empty()) {
        channels.push(Arc::new(channel::WebhookChannel::new(
            url.clone(),
            config.webhook_secret.clone().filter(|s| !s.is_empty()),
            config.webhook_timeout,
        )?));
    }
    if let Some(url) = config.slack_webhook_url.as_ref().filter(|u| !u.is_empty()) {
        channels.push(Arc::new(
            channel::SlackChannel::new(url.clone(), config.commit_url_template.clone(), config.webhook_timeout)?
                .with_buttons(config.slack_approval_buttons),
        ));
    }
    if channels.is_empty() || config.routes.iter().any(|r| r.channel == "log") {
        channels.push(Arc::new(channel::LogChannel));
    }
    if config.routes.is_empty() {
        return Ok(channels
            .into_iter()
            .map(|channel| channel::Route {
                channel,
                severities: Vec::new(),
                services: Vec::new(),
            })
            .collect());
    }
    config
        .routes
        .iter()
        .map(|route| {
            let channel = channels
                .iter()
                .find(|c| c.name() == route.channel)
                .cloned()
                .ok_or_else(|| RouteError::Unknown(route.channel.clone()))?;
            Ok(channel::Route {
                channel,
                severities: route.severities.clone(),
                services: route.services.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_acted_on_a_remediation_is_in_its_audit_row() {
        let mut event = RemediationEvent {
            incident_key: "inc4".into(),
            service: "checkout".into(),
            message: "approved by oncall-1: merged into main as 0a1b2c".into(),
            decision: Some(Decision {
                reason: "CPU over 80 %".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        event.set_state(RemediationState::Merged);
        let row = from_remediation(&event, "", "2026-12-01T12:00:00Z").entry;
        assert_eq!(row.reason, "approved by oncall-1; CPU over 80 %");
        // A remediation nobody acted on keeps the decision's reason alone.
        event.message = "merged into main as 0a1b2c".into();
        assert_eq!(from_remediation(&event, "", "now").entry.reason, "CPU over 80 %");
    }
}
