//! OTLP over HTTP, configured only by the standard `OTEL_*` variables: the gateway process
//! exports its spans as protobuf to `/v1/traces` of a receiver inside the test, with the
//! resource attributes from `OTEL_RESOURCE_ATTRIBUTES` and semantic-convention attributes.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{body::Bytes, extract::State, http::StatusCode, routing::post};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, KeyValue, any_value::Value as Any},
};
use prost::Message as _;
use selfheal_e2e::{Nats, post_alerts, start_gateway, wait_for, webhook_body};

/// One exported span: resource attributes, span name, kind, span attributes.
#[derive(Clone, Debug)]
struct Exported {
    resource: BTreeMap<String, String>,
    name: String,
    kind: i32,
    attributes: BTreeMap<String, String>,
}

fn flatten(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v: &AnyValue| v.value.as_ref()) {
                Some(Any::StringValue(s)) => s.clone(),
                Some(Any::IntValue(i)) => i.to_string(),
                Some(Any::BoolValue(b)) => b.to_string(),
                Some(Any::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

type Received = Arc<Mutex<Vec<Exported>>>;

async fn traces(State(received): State<Received>, body: Bytes) -> StatusCode {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut received = received.lock().expect("lock");
    for resource_spans in request.resource_spans {
        let resource = flatten(
            resource_spans
                .resource
                .as_ref()
                .map(|r| r.attributes.as_slice())
                .unwrap_or(&[]),
        );
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                received.push(Exported {
                    resource: resource.clone(),
                    name: span.name.clone(),
                    kind: span.kind,
                    attributes: flatten(&span.attributes),
                });
            }
        }
    }
    StatusCode::OK
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_out_over_otlp_http_with_the_standard_variables() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let received: Received = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let app = axum::Router::new()
        .route("/v1/traces", post(traces))
        .with_state(received.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let nats = Nats::start().await?;
    let env = [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_string()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_SERVICE_NAME", "gateway-over-http".to_string()),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=e2e,service.namespace=selfheal".to_string(),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
    ];
    let (mut gateway, base) = start_gateway(&nats, "gateway-otlp-http", &env, temp.path()).await?;
    let labels = serde_json::json!({"alertname": "HighErrorRate", "service": "checkout", "severity": "critical"});
    let answer: serde_json::Value = post_alerts(
        &reqwest::Client::new(),
        &base,
        webhook_body(labels, "2026-11-28T10:00:00Z", "0f0f0f0f0f0f0f0f"),
    )
    .await?
    .error_for_status()?
    .json()
    .await?;
    let key = answer["incidents"][0]["key"].as_str().unwrap_or_default().to_string();
    assert_eq!(key.len(), 16, "{answer}");

    let span = wait_for(Duration::from_secs(15), "the gateway's span at /v1/traces", || async {
        received
            .lock()
            .ok()?
            .iter()
            .find(|s| s.name == "gateway.ingest")
            .cloned()
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", gateway.output()))?;
    assert_eq!(span.resource["service.name"], "gateway-over-http");
    assert_eq!(span.resource["deployment.environment.name"], "e2e");
    assert_eq!(span.resource["service.namespace"], "selfheal");
    assert_eq!(span.kind, 4, "SPAN_KIND_PRODUCER");
    for (key_name, value) in [
        ("messaging.system", "nats"),
        ("messaging.operation.type", "send"),
        ("messaging.destination.name", "selfheal.alerts.firing.checkout"),
        ("http.request.method", "POST"),
        ("http.route", "/v1/alerts/alertmanager"),
        ("selfheal.incident.key", key.as_str()),
        ("selfheal.incident.outcome", "opened"),
    ] {
        assert_eq!(
            span.attributes.get(key_name).map(String::as_str),
            Some(value),
            "{key_name}: {span:?}"
        );
    }
    assert!(
        !gateway.output().contains("otlp exporter not started"),
        "{}",
        gateway.output()
    );
    gateway.check_running()?;
    Ok(())
}
