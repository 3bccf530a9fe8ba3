//! One alert in: validated already, stored in the stream, its incident recorded — whether it
//! came by the webhook or by gRPC.

use std::{sync::Arc, time::Instant};

use prost::Message as _;
use selfheal_bus::{Headers, Outgoing, SharedBus, subjects};
use selfheal_proto::v1::AlertEvent;
use selfheal_runtime::{RunError, StartError};
use serde::Serialize;
use tracing::Instrument;

use crate::{auth, config::GatewayConfig, error::RequestError, incident, incidents, webhook};

/// What the request handlers share.
#[derive(Clone)]
pub struct AppState {
    pub(crate) bus: SharedBus,
    pub(crate) incidents: incidents::Incidents,
    /// Longest a body may take to be stored before the answer is 503.
    pub(crate) deadline: std::time::Duration,
    pub(crate) auth: Arc<auth::Auth>,
    pub(crate) limits: webhook::Limits,
    pub(crate) identity: incident::Identity,
    pub(crate) max_body_bytes: usize,
}

impl AppState {
    /// State for `config`: opens the incidents bucket; fails when no token is configured.
    pub async fn new(config: &GatewayConfig, bus: SharedBus) -> Result<Self, RunError> {
        let auth = auth::Auth::new(
            config.tokens().map_err(StartError::from)?,
            config.hmac_keys().map_err(StartError::from)?,
            config.signature_window,
        );
        // Read from memory, kept current by the bucket's watch: a new alert's incident is known
        // absent, and a repeat's found, without a round trip; every write is still a
        // compare-and-set on the bucket, so one on an incident another gateway has just moved on
        // fails and reads the bucket again, as a race between two reads would.
        let bucket = bus.key_value(incidents::BUCKET, config.incident_max_age).await?;
        let bucket = selfheal_bus::watched::Watched::shared(incidents::BUCKET, bucket, config.incident_max_age);
        Ok(Self {
            incidents: incidents::Incidents::new(bucket),
            deadline: config.publish_timeout,
            bus,
            auth: Arc::new(auth),
            limits: webhook::Limits {
                max_alerts: config.max_alerts,
                max_labels: config.max_labels,
                max_label_value_len: config.max_label_value_len,
                max_annotation_value_len: config.max_annotation_value_len,
                max_annotations_bytes: config.max_annotations_bytes,
                max_field_len: config.max_field_len,
            },
            identity: incident::Identity::with_extra_labels(&config.identity_labels),
            max_body_bytes: config.max_body_bytes,
        })
    }
}

impl AppState {
    /// The incidents bucket.
    pub fn incidents(&self) -> &incidents::Incidents {
        &self.incidents
    }
}

/// One alert of an accepted body.
#[derive(Debug, Serialize)]
pub struct IncidentRef {
    pub key: String,
    pub status: String,
    pub service: String,
    pub duplicate: bool,
    /// `opened`, `resolved` or `duplicate`.
    pub outcome: &'static str,
    /// The trace this alert started (empty when tracing is off).
    pub trace_id: String,
}

/// How an alert arrived, for the span's attributes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Ingress {
    Http,
    Grpc,
}

/// Records one alert. `caller` is the W3C context the request came with (an Alertmanager or a
/// proxy may send `traceparent`), if any.
pub(crate) async fn ingest(
    state: &AppState,
    event: AlertEvent,
    caller: &Headers,
    ingress: Ingress,
) -> Result<IncidentRef, RequestError> {
    let alert = event.alert.clone().unwrap_or_default();
    let service = alert
        .labels
        .get("service")
        .cloned()
        .unwrap_or_else(|| webhook::NO_SERVICE.to_string());
    let alertname = alert.labels.get("alertname").cloned().unwrap_or_default();
    // A root span: each incident is its own trace.
    // Attributes follow OpenTelemetry's semantic conventions (messaging: the alert is published
    // to NATS; http or rpc: how it arrived), plus selfheal's own under `selfheal.`.
    let subject = subjects::alert(&alert.status, &service);
    let span = tracing::info_span!(
        parent: None,
        "gateway.ingest",
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = %subject,
        messaging.message.id = %format!("alert.{}.{}", alert.status, event.incident_key),
        http.request.method = tracing::field::Empty,
        http.route = tracing::field::Empty,
        rpc.system = tracing::field::Empty,
        rpc.service = tracing::field::Empty,
        rpc.method = tracing::field::Empty,
        selfheal.incident.key = %event.incident_key,
        selfheal.alert.name = %alertname,
        selfheal.alert.status = %alert.status,
        selfheal.alert.fingerprint = %alert.fingerprint,
        selfheal.service = %service,
        selfheal.incident.outcome = tracing::field::Empty,
    );
    match ingress {
        Ingress::Http => {
            span.record("http.request.method", "POST");
            span.record("http.route", "/v1/alerts/alertmanager");
        }
        Ingress::Grpc => {
            span.record("rpc.system", "grpc");
            span.record("rpc.service", "selfheal.v1.Gateway");
            span.record("rpc.method", "Ingest");
        }
    }
    // A resolution continues the trace its incident started: one incident, one trace. Otherwise
    // a caller's trace context, when it sent one, is the parent.
    let incident_trace = if alert.status == "resolved"
        && let Ok(Some(incident)) = state.incidents.get(&event.incident_key).await
        && !incident.traceparent.is_empty()
    {
        Some(incident.traceparent)
    } else {
        None
    };
    match incident_trace {
        Some(traceparent) => {
            let mut parent = Headers::new();
            parent.insert("traceparent", traceparent);
            selfheal_telemetry::propagation::set_parent_from_headers(&span, &parent);
        }
        None => selfheal_telemetry::propagation::set_parent_from_headers(&span, caller),
    }
    let trace_id = selfheal_telemetry::propagation::trace_id(&span).unwrap_or_default();
    let mut headers = Headers::new();
    selfheal_telemetry::propagation::inject_headers(&span, &mut headers);
    let traceparent = headers.get("traceparent").unwrap_or_default().to_string();
    let message = Outgoing {
        subject,
        msg_id: format!("alert.{}.{}", alert.status, event.incident_key),
        headers,
        payload: event.encode_to_vec().into(),
    };
    let publish = || {
        let bus = state.bus.clone();
        let message = message.clone();
        async move {
            let started = Instant::now();
            let result = bus.publish(message).await;
            metrics::histogram!(selfheal_telemetry::metrics::GATEWAY_PUBLISH_SECONDS)
                .record(started.elapsed().as_secs_f64());
            result.map(|_| ()).map_err(|e| e.to_string())
        }
    };
    let recorded = tokio::time::timeout(
        state.deadline,
        state
            .incidents
            .record(&event, &trace_id, &traceparent, chrono::Utc::now(), publish),
    )
    .instrument(span.clone())
    .await;
    let _entered = span.enter();
    let outcome = match recorded {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(error)) => {
            tracing::error!(error = %error, "alert not stored");
            return Err(RequestError::Unavailable(error.to_string()));
        }
        Err(_) => {
            tracing::error!(deadline = ?state.deadline, "alert not stored in time");
            return Err(RequestError::Unavailable("deadline passed".into()));
        }
    };
    let outcome_name = match outcome {
        incidents::Outcome::Opened => "opened",
        incidents::Outcome::Resolved => "resolved",
        incidents::Outcome::Duplicate => "duplicate",
    };
    span.record("selfheal.incident.outcome", outcome_name);
    metrics::counter!(selfheal_telemetry::metrics::GATEWAY_ALERTS_RECEIVED, "status" => alert.status.clone())
        .increment(1);
    let duplicate = outcome == incidents::Outcome::Duplicate;
    if duplicate {
        metrics::counter!(selfheal_telemetry::metrics::GATEWAY_DUPLICATES).increment(1);
    }
    tracing::info!(outcome = outcome_name, "alert recorded");
    Ok(IncidentRef {
        key: event.incident_key,
        status: alert.status,
        service,
        duplicate,
        outcome: outcome_name,
        trace_id,
    })
}
