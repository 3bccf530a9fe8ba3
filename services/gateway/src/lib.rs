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
pub mod http;
pub mod incident;
pub mod incidents;
pub mod ingest;
pub mod service;
pub mod webhook;

pub use config::GatewayConfig;
pub use error::RequestError;
pub use http::{Accepted, Refusal, app};
pub use ingest::{AppState, IncidentRef};
pub use service::{Gateway, Listeners};

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use axum::{
        body::Body,
        http::{Request, StatusCode},
    };
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
        let signed = |(timestamp, signature): (String, String)| {
            Request::post("/v1/alerts/alertmanager")
                .header(auth::TIMESTAMP_HEADER, timestamp)
                .header(auth::SIGNATURE_HEADER, signature)
                .body(Body::from(body.clone()))
                .expect("request")
        };
        let now = chrono::Utc::now().timestamp();
        let good = app
            .clone()
            .oneshot(signed(auth::sign(b"signing-key", now, &body)))
            .await
            .expect("response");
        assert_eq!(good.status(), StatusCode::OK);
        let forged = app
            .clone()
            .oneshot(signed(auth::sign(b"other-key", now, &body)))
            .await
            .expect("response");
        assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
        // The same body signed an hour ago: a replay.
        let replayed = app
            .clone()
            .oneshot(signed(auth::sign(b"signing-key", now - 3600, &body)))
            .await
            .expect("response");
        assert_eq!(replayed.status(), StatusCode::UNAUTHORIZED);
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
