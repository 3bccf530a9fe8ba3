//! The gateway: selfheal's front door.
//!
//! `POST /v1/alerts/alertmanager` takes Alertmanager's webhook (v4), checks the bearer token,
//! validates every alert, and publishes each to `selfheal.alerts.<status>.<service>` with the
//! message id `alert.<status>.<incident key>`. It answers 200 only once JetStream has stored
//! every alert of the body (a retried or HA-duplicated body is stored once), and 503 when it
//! could not, so Alertmanager retries.
//!
//! Each alert starts its own trace (one incident, one trace); its context rides in the message
//! headers to the services downstream.

pub mod auth;
pub mod config;
pub mod error;
pub mod grpc;
pub mod incident;
pub mod incidents;
pub mod webhook;

use std::{sync::Arc, time::Instant};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode},
    routing::post,
};
use prost::Message as _;
use selfheal_bus::{Headers, Outgoing, SharedBus, nats::NatsOptions, subjects};
use selfheal_proto::v1::AlertEvent;
use selfheal_runtime::{Addresses, RunError, Service, Shutdown, StartError};
use serde::Serialize;
use tracing::Instrument;

pub use config::GatewayConfig;
pub use error::RequestError;

/// What the request handlers share.
#[derive(Clone)]
pub struct AppState {
    bus: SharedBus,
    incidents: incidents::Incidents,
    /// Longest a body may take to be stored before the answer is 503.
    deadline: std::time::Duration,
    auth: Arc<auth::Auth>,
    limits: webhook::Limits,
    identity: incident::Identity,
    max_body_bytes: usize,
}

impl AppState {
    /// State for `config`: opens the incidents bucket; fails when no token is configured.
    pub async fn new(config: &GatewayConfig, bus: SharedBus) -> Result<Self, RunError> {
        let auth = auth::Auth::new(
            config.tokens().map_err(StartError::from)?,
            config.hmac_keys().map_err(StartError::from)?,
        );
        let bucket = bus.key_value(incidents::BUCKET, config.incident_max_age).await?;
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

/// The gateway's routes, health endpoints included.
pub fn app(state: AppState) -> Router {
    let metrics = selfheal_telemetry::metrics::install();
    // The refusal counters exist from the start, at zero, so that `increase()` sees the first
    // refusal (the SelfhealAlertsRefused alert).
    metrics::counter!(selfheal_telemetry::metrics::GATEWAY_ALERTS_REFUSED).increment(0);
    metrics::counter!(selfheal_telemetry::metrics::GATEWAY_REFUSED, "reason" => "invalid").increment(0);
    let ready = selfheal_telemetry::health::bus_ready(state.bus.clone());
    let max_body = state.max_body_bytes;
    Router::new()
        .route("/v1/alerts/alertmanager", post(alertmanager))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
        .merge(selfheal_telemetry::health::router(ready, metrics))
}

pub use selfheal_runtime::Listeners;

/// The gateway, built from its config with every setting checked.
pub struct Gateway {
    config: GatewayConfig,
}

#[async_trait::async_trait]
impl Service for Gateway {
    type Config = GatewayConfig;
    const NAME: &'static str = "selfheal-gateway";
    const ENV_PREFIX: &'static str = "SELFHEAL_GATEWAY_";
    const ABOUT: &'static str = "selfheal's ingest: Alertmanager webhooks into the SELFHEAL stream.";

    /// Checks the tokens and HMAC keys (at least one of them must be set).
    async fn from_config(config: GatewayConfig) -> Result<Self, StartError> {
        config.tokens()?;
        config.hmac_keys()?;
        Ok(Self { config })
    }

    fn addresses(&self) -> Addresses {
        Addresses {
            http: self.config.listen,
            grpc: self.config.grpc_listen,
        }
    }

    fn bus_options(&self) -> NatsOptions {
        let mut options = NatsOptions::new(&self.config.nats_url, Self::NAME);
        options.duplicate_window = self.config.duplicate_window;
        options.publish_timeout = self.config.publish_timeout;
        options
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests.
    async fn run(self, bus: SharedBus, listeners: Listeners, shutdown: Shutdown) -> Result<(), RunError> {
        let state = AppState::new(&self.config, bus).await?;
        let cancel = tokio_util::sync::CancellationToken::new();
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<selfheal_proto::v1::gateway_server::GatewayServer<grpc::GatewayService>>()
            .await;
        tracing::info!(http = %listeners.http.local_addr()?, grpc = %listeners.grpc.local_addr()?, "gateway listening");
        let grpc = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(grpc::server(state.clone()));
        let servers = selfheal_runtime::serve(listeners, grpc, app(state), &cancel);
        shutdown.await;
        cancel.cancel();
        servers.join().await
    }
}

/// The answer to an accepted body.
#[derive(Debug, Serialize)]
pub struct Accepted {
    /// Alerts in the body.
    pub alerts: usize,
    /// Alerts stored now.
    pub stored: usize,
    /// Alerts the stream already held (a retry or the other half of an HA pair).
    pub duplicates: usize,
    pub incidents: Vec<IncidentRef>,
    /// Alerts refused one by one (the others were stored): what to fix at the source.
    pub refused: Vec<Refusal>,
}

/// One alert refused in a body whose other alerts were stored.
#[derive(Debug, Serialize)]
pub struct Refusal {
    /// The field at fault, `alerts[i].…`.
    pub field: String,
    /// The field and the problem.
    pub message: String,
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

async fn alertmanager(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Accepted>, RequestError> {
    let bearer_ok = state.auth.bearer_ok(&headers);
    if !bearer_ok && !state.auth.accepts_signatures() {
        return Err(RequestError::Unauthorized);
    }
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            RequestError::TooLarge {
                limit: state.max_body_bytes,
            }
        } else {
            RequestError::invalid("body", rejection.body_text())
        }
    })?;
    if !bearer_ok && !state.auth.signature_ok(&headers, &body) {
        return Err(RequestError::Unauthorized);
    }
    let webhook = webhook::parse(&body)?;
    let webhook::Events { accepted, refused } =
        webhook::to_events(&webhook, &state.limits, &state.identity, chrono::Utc::now())?;
    for refusal in &refused {
        metrics::counter!(selfheal_telemetry::metrics::GATEWAY_ALERTS_REFUSED).increment(1);
        tracing::warn!(
            group.key = %webhook.group_key,
            refusal = %refusal,
            "an alert of this body was refused; the others are stored"
        );
    }
    if webhook.truncated_alerts > 0 {
        metrics::counter!(selfheal_telemetry::metrics::GATEWAY_TRUNCATED)
            .increment(u64::from(webhook.truncated_alerts));
        tracing::warn!(
            group.key = %webhook.group_key,
            truncated = webhook.truncated_alerts,
            "alertmanager truncated this group; raise max_alerts to see every alert"
        );
    }
    let mut caller = Headers::new();
    for name in ["traceparent", "tracestate"] {
        if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
            caller.insert(name, value);
        }
    }
    let published = futures::future::join_all(
        accepted
            .into_iter()
            .map(|event| ingest(&state, event, &caller, Ingress::Http)),
    )
    .await;
    let mut incidents = Vec::with_capacity(published.len());
    for result in published {
        incidents.push(result?);
    }
    let duplicates = incidents.iter().filter(|i| i.duplicate).count();
    Ok(Json(Accepted {
        alerts: incidents.len() + refused.len(),
        stored: incidents.len() - duplicates,
        duplicates,
        incidents,
        refused: refused
            .iter()
            .map(|refusal| Refusal {
                field: refusal.field().to_string(),
                message: refusal.to_string(),
            })
            .collect(),
    }))
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::{body::Body, http::Request};
    use selfheal_bus::memory::MemoryBus;
    use selfheal_config::Secret;
    use tower::ServiceExt;

    const TOKEN: &str = "s3cr3t-token";

    /// Tracing for the whole test process: a guard dropped by one test would shut the provider
    /// down under the others.
    fn telemetry() {
        static GUARD: std::sync::OnceLock<selfheal_telemetry::TelemetryGuard> = std::sync::OnceLock::new();
        GUARD.get_or_init(|| selfheal_telemetry::init("gateway-test"));
    }

    async fn state(bus: &MemoryBus) -> AppState {
        let config = GatewayConfig {
            token: Some(Secret::new(TOKEN)),
            max_body_bytes: 4096,
            ..Default::default()
        };
        AppState::new(&config, Arc::new(bus.clone())).await.expect("state")
    }

    fn request(token: Option<&str>, body: impl Into<Body>) -> Request<Body> {
        let mut builder = Request::post("/v1/alerts/alertmanager").header("content-type", "application/json");
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        builder.body(body.into()).expect("request")
    }

    async fn json(response: axum::response::Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
        serde_json::from_slice(&bytes).expect("json body")
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/../../../shared/fixtures/alertmanager-0.25/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("fixture")
    }

    #[tokio::test]
    async fn stores_once_and_reports_duplicates() {
        telemetry();
        let bus = MemoryBus::default();
        let app = app(state(&bus).await);
        let first = app
            .clone()
            .oneshot(request(Some(TOKEN), fixture("05-firing-3alerts-truncated.json")))
            .await
            .expect("response");
        assert_eq!(first.status(), StatusCode::OK);
        let first = json(first).await;
        assert_eq!(first["stored"], 3);
        let again = json(
            app.oneshot(request(Some(TOKEN), fixture("05-firing-3alerts-truncated.json")))
                .await
                .expect("response"),
        )
        .await;
        assert_eq!(again["duplicates"], 3);
        let subjects: Vec<String> = bus.messages().into_iter().map(|m| m.subject).collect();
        assert_eq!(
            subjects,
            [
                "selfheal.alerts.firing.cart",
                "selfheal.alerts.firing.checkout",
                "selfheal.alerts.firing.payments"
            ]
        );
        assert!(bus.messages().iter().all(|m| m.headers.get("traceparent").is_some()));
    }

    #[tokio::test]
    async fn fixtures_open_and_close_their_incidents() {
        let bus = MemoryBus::default();
        let state = state(&bus).await;
        let app = app(state.clone());
        let mut keys = std::collections::BTreeMap::new();
        for name in [
            "01-firing-1alerts.json",
            "02-firing-1alerts.json",
            "03-resolved-1alerts.json",
            "04-firing-1alerts.json",
            "05-firing-3alerts-truncated.json",
            "06-resolved-3alerts-truncated.json",
        ] {
            let response = app
                .clone()
                .oneshot(request(Some(TOKEN), fixture(name)))
                .await
                .expect("response");
            assert_eq!(response.status(), StatusCode::OK, "{name}");
            let body = json(response).await;
            let outcomes: Vec<(String, String)> = body["incidents"]
                .as_array()
                .expect("incidents")
                .iter()
                .map(|i| {
                    (
                        i["key"].as_str().unwrap_or_default().to_string(),
                        i["outcome"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            keys.insert(name, outcomes);
        }
        let outcome = |name: &str| keys[name].iter().map(|(_, o)| o.as_str()).collect::<Vec<_>>();
        assert_eq!(outcome("02-firing-1alerts.json"), ["opened"]);
        assert_eq!(outcome("03-resolved-1alerts.json"), ["resolved"]);
        assert_eq!(
            keys["02-firing-1alerts.json"][0].0,
            keys["03-resolved-1alerts.json"][0].0
        );
        assert_eq!(
            outcome("05-firing-3alerts-truncated.json"),
            ["opened", "opened", "opened"]
        );
        assert_eq!(
            outcome("06-resolved-3alerts-truncated.json"),
            ["resolved", "resolved", "resolved"]
        );

        let incidents = state.incidents().all().await.expect("incidents");
        // 01 and 04 are two incidents (different startsAt), 02/03 one, 05/06 three.
        assert_eq!(incidents.len(), 6);
        for (key, _) in &keys["06-resolved-3alerts-truncated.json"] {
            let incident = state.incidents().get(key).await.expect("get").expect("exists");
            assert_eq!(incident.state, incidents::IncidentState::Resolved);
            assert!(incident.truncated, "truncation is flagged on the incident");
            assert_eq!(incident.notifications, 2);
            assert!(incident.resolved_at.is_some() && incident.ends_at.is_some());
        }
        let firing = state
            .incidents()
            .get(&keys["01-firing-1alerts.json"][0].0)
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(
            (firing.state, firing.truncated),
            (incidents::IncidentState::Firing, false)
        );
        // The stream holds each opening and each resolution once: 4 + 2 resolutions... counted.
        let published = bus.messages().len();
        assert_eq!(published, 6 + 4, "six openings, four resolutions");

        // A repeat long after (past any dedup window) is absorbed by the incident, not published.
        let again = json(
            app.oneshot(request(Some(TOKEN), fixture("01-firing-1alerts.json")))
                .await
                .expect("response"),
        )
        .await;
        assert_eq!(again["incidents"][0]["outcome"], "duplicate");
        assert_eq!(bus.messages().len(), published);
    }

    #[tokio::test]
    async fn a_signed_body_authenticates_without_a_token() {
        let bus = MemoryBus::default();
        let config = GatewayConfig {
            hmac_key: Some(Secret::new("signing-key")),
            ..Default::default()
        };
        let app = app(AppState::new(&config, Arc::new(bus.clone())).await.expect("state"));
        let body = fixture("02-firing-1alerts.json");
        let signed = |signature: String| {
            Request::post("/v1/alerts/alertmanager")
                .header(auth::SIGNATURE_HEADER, signature)
                .body(Body::from(body.clone()))
                .expect("request")
        };
        let good = app
            .clone()
            .oneshot(signed(auth::sign(b"signing-key", &body)))
            .await
            .expect("response");
        assert_eq!(good.status(), StatusCode::OK);
        let forged = app
            .clone()
            .oneshot(signed(auth::sign(b"other-key", &body)))
            .await
            .expect("response");
        assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
        let unsigned = app.oneshot(request(None, body.clone())).await.expect("response");
        assert_eq!(unsigned.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(bus.messages().len(), 1);
    }

    #[tokio::test]
    async fn a_callers_traceparent_is_the_parent() {
        telemetry();
        let bus = MemoryBus::default();
        let app = app(state(&bus).await);
        let mut request = request(Some(TOKEN), fixture("04-firing-1alerts.json"));
        request.headers_mut().insert(
            "traceparent",
            axum::http::HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let answer = json(app.oneshot(request).await.expect("response")).await;
        assert_eq!(
            answer["incidents"][0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
            "{answer}"
        );
        let stored = bus.messages();
        let traceparent = stored[0].headers.get("traceparent").unwrap_or_default();
        assert!(
            traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{traceparent}"
        );
        assert!(
            !traceparent.contains("00f067aa0ba902b7"),
            "the gateway's own span is the child"
        );
    }

    #[tokio::test]
    async fn refuses_without_storing() {
        let bus = MemoryBus::default();
        let app = app(state(&bus).await);
        let body = fixture("02-firing-1alerts.json");
        for (token, expected) in [
            (None, StatusCode::UNAUTHORIZED),
            (Some("wrong"), StatusCode::UNAUTHORIZED),
        ] {
            let response = app
                .clone()
                .oneshot(request(token, body.clone()))
                .await
                .expect("response");
            assert_eq!(response.status(), expected);
            assert_eq!(json(response).await["error"]["code"], "unauthorized");
        }
        let response = app
            .clone()
            .oneshot(request(Some(TOKEN), "{\"version\":\"4\""))
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(json(response).await["error"]["field"], "body");
        let response = app
            .clone()
            .oneshot(request(Some(TOKEN), vec![b' '; 5000]))
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(bus.messages().is_empty());
    }

    #[tokio::test]
    async fn a_bad_alert_does_not_cost_its_group() {
        let bus = MemoryBus::default();
        let app = app(state(&bus).await);
        // The truncated fixture's three alerts, the second given a service no path may hold.
        let mut body: serde_json::Value =
            serde_json::from_slice(&fixture("05-firing-3alerts-truncated.json")).expect("fixture");
        body["alerts"][1]["labels"]["service"] = "../../etc".into();
        let response = app
            .oneshot(request(Some(TOKEN), serde_json::to_vec(&body).expect("json")))
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        let answer = json(response).await;
        assert_eq!(
            (answer["alerts"].as_u64(), answer["stored"].as_u64()),
            (Some(3), Some(2)),
            "{answer}"
        );
        assert_eq!(answer["refused"][0]["field"], "alerts[1].labels.service", "{answer}");
        assert_eq!(bus.messages().len(), 2);
        assert!(
            bus.messages().iter().all(|m| !m.subject.contains("etc")),
            "the refused alert is not stored"
        );
    }
}
