//! The webhook: Alertmanager's notifications over HTTP, and the health endpoints beside it.

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode},
    routing::post,
};
use selfheal_bus::Headers;
use serde::Serialize;

use crate::{
    error::RequestError,
    ingest::{AppState, IncidentRef, Ingress, ingest},
    webhook,
};

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
    if !bearer_ok && !state.auth.signature_ok(&headers, &body, chrono::Utc::now().timestamp()) {
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
