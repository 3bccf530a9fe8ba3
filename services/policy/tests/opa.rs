//! An external OPA server as engine: the same input goes to `/v1/data/<path>`, its result is the
//! decision; undefined and unreachable both escalate. The server here speaks OPA's documented
//! data API (the OPA binary is not installable on this machine).

use std::sync::{Arc, Mutex};

use selfheal_policy::{
    decide::{Extra, decide},
    opa::OpaEngine,
};
use selfheal_proto::v1::{Action, Alert, AlertEvent};
use serde_json::{Value, json};

type Seen = Arc<Mutex<Vec<(String, Value)>>>;

async fn fake_opa(answer: Value) -> anyhow::Result<(String, Seen)> {
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let store = seen.clone();
    let app = axum::Router::new().route(
        "/v1/data/{*path}",
        axum::routing::post(
            move |axum::extract::Path(path): axum::extract::Path<String>, axum::Json(body): axum::Json<Value>| {
                let (store, answer) = (store.clone(), answer.clone());
                async move {
                    if let Ok(mut seen) = store.lock() {
                        seen.push((path, body));
                    }
                    axum::Json(answer)
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, seen))
}

fn event() -> AlertEvent {
    let labels = [("alertname", "HighErrorRate"), ("service", "checkout")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    AlertEvent {
        incident_key: "abc".into(),
        alert: Some(Alert {
            status: "firing".into(),
            labels,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn opa_decides_with_the_same_input_and_contract() -> anyhow::Result<()> {
    let (url, seen) =
        fake_opa(json!({"result": {"action": "rollback", "approval": "auto", "reason": "opa says so"}})).await?;
    let engine = OpaEngine::new(&url, "data.selfheal.decision", std::time::Duration::from_secs(2))?;
    let (decision, input) = decide(&engine, &event(), &Extra::default(), false, chrono::Utc::now()).await;
    assert_eq!(decision.action(), Action::Rollback);
    assert_eq!(decision.reason, "opa says so");
    assert_eq!(decision.policy, format!("opa:{url}"));
    let requests = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].0, "selfheal/decision");
    assert_eq!(
        requests[0].1["input"], input,
        "OPA gets exactly the input in-process Rego gets"
    );
    Ok(())
}

#[tokio::test]
async fn undefined_or_unreachable_opa_escalates() -> anyhow::Result<()> {
    let (url, _) = fake_opa(json!({})).await?;
    let undefined = OpaEngine::new(&url, "data.selfheal.decision", std::time::Duration::from_secs(2))?;
    let (decision, _) = decide(&undefined, &event(), &Extra::default(), false, chrono::Utc::now()).await;
    assert_eq!(decision.action(), Action::Escalate);
    assert!(decision.reason.contains("is undefined"), "{}", decision.reason);

    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let down = OpaEngine::new(
        &format!("http://127.0.0.1:{port}"),
        "data.selfheal.decision",
        std::time::Duration::from_secs(1),
    )?;
    let (decision, _) = decide(&down, &event(), &Extra::default(), false, chrono::Utc::now()).await;
    assert_eq!(decision.action(), Action::Escalate);
    assert!(decision.reason.contains("OPA unavailable"), "{}", decision.reason);
    Ok(())
}
