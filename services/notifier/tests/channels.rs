//! The channels against local sinks: Slack gets valid Block Kit, the webhook is HMAC-signed, and a
//! sink that fails three times and then succeeds gets the notification exactly once.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{body::Bytes, http::HeaderMap, http::StatusCode};
use futures::FutureExt;
use prost::Message as _;
use selfheal_bus::{Bus, ConsumerSpec, Headers, Outgoing, consumer, memory::MemoryBus, subjects};
use selfheal_config::Secret;
use selfheal_notifier::{
    NotifyHandler,
    audit::SqlAuditStore,
    channel::{Channel, Notification, Route, SlackChannel, WebhookChannel},
};
use selfheal_proto::v1::{Alert, AlertEvent, Decision, RemediationEvent, RemediationState};
use serde_json::Value;

/// A sink that answers 500 to its first `failures` requests, and records (headers, body) of the rest.
#[derive(Clone, Default)]
struct Sink {
    failures: Arc<Mutex<usize>>,
    received: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
}

impl Sink {
    fn received(&self) -> Vec<(HeaderMap, Bytes)> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

async fn start(sink: Sink) -> anyhow::Result<String> {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                let mut failures = sink.failures.lock().map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
                if *failures > 0 {
                    *failures -= 1;
                    return Err(StatusCode::BAD_GATEWAY);
                }
                sink.received
                    .lock()
                    .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?
                    .push((headers, body));
                Ok("ok")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

fn notification() -> Notification {
    Notification {
        kind: "remediation".into(),
        incident: "b5d5962cd0aec154".into(),
        service: "checkout".into(),
        alertname: "HighErrorRate".into(),
        severity: "critical".into(),
        action: "rollback".into(),
        state: "verified".into(),
        reason: "HighErrorRate is critical for checkout: roll back to the previous image".into(),
        repository: "/srv/gitops.git".into(),
        branch: "selfheal/b5d5962cd0aec154".into(),
        commit: "d4c8c2b8cb7104e42624a197e64d61dec9f8e39d".into(),
        from: "v1.5.0".into(),
        to: "v1.4.1".into(),
        dry_run: false,
        mttr_seconds: Some(15.0),
        trace_id: "f449e2af31bff732339503f195807394".into(),
        text: "HighErrorRate on checkout resolved".into(),
    }
}

#[tokio::test]
async fn slack_gets_block_kit() -> anyhow::Result<()> {
    let sink = Sink::default();
    let url = start(sink.clone()).await?;
    let link = Some("https://git.example.com/gitops/commit/{commit}".to_string());
    SlackChannel::new(Secret::new(url), link, Duration::from_secs(5))?
        .send(&notification())
        .await?;
    let received = sink.received();
    let body: Value = serde_json::from_slice(&received[0].1)?;
    assert!(
        body["text"].as_str().is_some_and(|t| !t.is_empty()),
        "a fallback text: {body}"
    );
    let blocks = body["blocks"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("blocks: {body}"))?;
    let types: Vec<&str> = blocks.iter().filter_map(|b| b["type"].as_str()).collect();
    assert_eq!(types, ["header", "section", "context"]);
    assert_eq!(blocks[0]["text"]["type"], "plain_text");
    assert!(blocks[0]["text"]["text"].as_str().is_some_and(|t| t.len() <= 150 * 4));
    let fields: Vec<&str> = blocks[1]["fields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["text"].as_str())
        .collect();
    assert!(
        fields.iter().any(|f| f.contains("v1.5.0") && f.contains("v1.4.1")),
        "{fields:?}"
    );
    assert!(
        fields.iter().any(|f| f.contains("MTTR") && f.contains("15s")),
        "{fields:?}"
    );
    assert!(
        fields
            .iter()
            .all(|f| blocks[1]["fields"].as_array().is_some_and(|a| a.len() <= 10) && !f.is_empty())
    );
    let context = blocks[2]["elements"].to_string();
    assert!(
        context.contains("f449e2af31bff732339503f195807394")
            && context.contains(
                "<https://git.example.com/gitops/commit/d4c8c2b8cb7104e42624a197e64d61dec9f8e39d|d4c8c2b8cb71>"
            ),
        "{context}"
    );
    Ok(())
}

#[tokio::test]
async fn the_webhook_is_signed_with_the_shared_key() -> anyhow::Result<()> {
    let sink = Sink::default();
    let url = start(sink.clone()).await?;
    let channel = WebhookChannel::new(
        Secret::new(url),
        Some(Secret::new("shared-key")),
        Duration::from_secs(5),
    )?;
    channel.send(&notification()).await?;
    let (headers, body) = sink
        .received()
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("nothing received"))?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let signature = header("x-selfheal-signature");
    let timestamp: i64 = header("x-selfheal-timestamp").parse()?;
    assert!(
        (chrono::Utc::now().timestamp() - timestamp).abs() < 60,
        "the signature's time is now: {timestamp}"
    );
    // The signature covers the time and the body: neither can change, nor the key.
    let signed = selfheal_config::signature::timestamped(timestamp, &body);
    assert!(
        selfheal_config::signature::verify(b"shared-key", &signed, signature),
        "{signature}"
    );
    assert!(!selfheal_config::signature::verify(b"other-key", &signed, signature));
    let later = selfheal_config::signature::timestamped(timestamp + 3600, &body);
    assert!(!selfheal_config::signature::verify(b"shared-key", &later, signature));
    assert!(!selfheal_config::signature::verify(b"shared-key", &body, signature));
    let parsed: Value = serde_json::from_slice(&body)?;
    assert_eq!(parsed["incident"], "b5d5962cd0aec154");
    assert_eq!(parsed["trace_id"], "f449e2af31bff732339503f195807394");
    Ok(())
}

fn remediation(incident: &str) -> Vec<u8> {
    let labels = [
        ("alertname", "HighErrorRate"),
        ("severity", "critical"),
        ("service", "checkout"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let decision = Decision {
        incident_key: incident.into(),
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
    let mut event = RemediationEvent {
        incident_key: incident.into(),
        service: "checkout".into(),
        commit: "abc".into(),
        decision: Some(decision),
        ..Default::default()
    };
    event.set_state(RemediationState::Merged);
    event.encode_to_vec()
}

#[tokio::test]
async fn a_sink_that_fails_three_times_gets_it_exactly_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = SqlAuditStore::connect(&format!("sqlite://{}", dir.path().join("audit.db").display())).await?;
    let sink = Sink {
        failures: Arc::new(Mutex::new(3)),
        ..Default::default()
    };
    let url = start(sink.clone()).await?;
    let webhook: Arc<dyn Channel> = Arc::new(WebhookChannel::new(Secret::new(url), None, Duration::from_secs(5))?);
    let routes = vec![Route {
        channel: webhook,
        severities: vec![],
        services: vec![],
    }];
    let handler = Arc::new(NotifyHandler::new(Arc::new(store), routes, Duration::from_millis(20)));
    let bus = MemoryBus::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(consumer::run(
        Arc::new(bus.clone()),
        ConsumerSpec::new("notifier", &[subjects::REMEDIATIONS]),
        handler,
        stopped.map(|_| ()),
    ));
    for incident in ["first", "second"] {
        // The first event twice, as a redelivery past the duplicate window would bring it.
        for copy in 0..2 {
            bus.publish(Outgoing {
                subject: subjects::remediation("checkout"),
                msg_id: format!("remediation.{incident}.merged.{copy}"),
                headers: Headers::new(),
                payload: remediation(incident).into(),
            })
            .await?;
        }
    }
    // Until the consumer has acked everything: the failures, the redeliveries and the copies.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while (bus.outstanding("notifier") > 0 || sink.received().len() < 2) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(bus.outstanding("notifier"), 0, "every delivery settled");
    let mut incidents: Vec<String> = sink
        .received()
        .iter()
        .filter_map(|(_, body)| serde_json::from_slice::<Value>(body).ok())
        .filter_map(|v| v["incident"].as_str().map(String::from))
        .collect();
    incidents.sort();
    assert_eq!(
        incidents,
        ["first", "second"],
        "after three failures, each exactly once"
    );
    let _ = stop.send(());
    running.await??;
    Ok(())
}

#[test]
fn routes_send_by_severity_and_service() -> anyhow::Result<()> {
    let config = selfheal_notifier::NotifierConfig {
        webhook_url: Some(Secret::new("http://127.0.0.1:1/hook")),
        slack_webhook_url: Some(Secret::new("http://127.0.0.1:1/slack")),
        routes: vec![
            selfheal_notifier::config::RouteConfig {
                channel: "slack".into(),
                severities: vec!["critical".into()],
                services: vec![],
            },
            selfheal_notifier::config::RouteConfig {
                channel: "webhook".into(),
                severities: vec![],
                services: vec!["cart".into()],
            },
        ],
        ..Default::default()
    };
    let routes = selfheal_notifier::routes_from(&config)?;
    let to = |n: &Notification| {
        routes
            .iter()
            .filter(|r| r.matches(n))
            .map(|r| r.channel.name().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(to(&notification()), ["slack"]);
    let warning_on_cart = Notification {
        severity: "warning".into(),
        service: "cart".into(),
        ..notification()
    };
    assert_eq!(to(&warning_on_cart), ["webhook"]);
    let unknown = selfheal_notifier::NotifierConfig {
        routes: vec![selfheal_notifier::config::RouteConfig {
            channel: "pager".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let error = selfheal_notifier::routes_from(&unknown)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("\"pager\" is not configured"), "{error}");
    Ok(())
}
