//! The gateway's ingress against the real binary, as an attacker would try it: a signed body
//! sent again after its window is refused, and an over-long free-text field refuses its alert
//! alone, named, while the rest of the body is stored.

use selfheal_e2e::{Nats, post_alerts, start_gateway, webhook_body};
use serde_json::{Value, json};

const KEY: &str = "a-signing-key";

async fn post_signed(client: &reqwest::Client, base: &str, body: &[u8], at: i64) -> anyhow::Result<u16> {
    let (timestamp, signature) = selfheal_gateway::auth::sign(KEY.as_bytes(), at, body);
    let response = client
        .post(format!("{base}/v1/alerts/alertmanager"))
        .header("content-type", "application/json")
        .header("x-selfheal-timestamp", timestamp)
        .header("x-selfheal-signature", signature)
        .body(body.to_vec())
        .send()
        .await?;
    Ok(response.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_signed_body_and_an_over_long_field_are_refused() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let nats = Nats::start().await?;
    let (_gateway, base) = start_gateway(
        &nats,
        "gateway",
        &[
            ("SELFHEAL_GATEWAY_HMAC_KEY", KEY.to_string()),
            ("SELFHEAL_GATEWAY_SIGNATURE_WINDOW", "5m".to_string()),
        ],
        temp.path(),
    )
    .await?;
    let client = reqwest::Client::new();

    // Signed now: taken. The same body with the signature it had an hour ago: a replay, 401.
    let labels = json!({"alertname": "Signed", "service": "checkout"});
    let body = webhook_body(labels, "2026-12-01T10:00:00Z", "5160");
    let now = chrono::Utc::now().timestamp();
    assert_eq!(post_signed(&client, &base, &body, now).await?, 200);
    assert_eq!(post_signed(&client, &base, &body, now - 3600).await?, 401);
    assert_eq!(post_signed(&client, &base, &body, now + 3600).await?, 401);

    // Two alerts, the second with a generatorURL past the limit: it alone is refused, named.
    let mut webhook: Value = serde_json::from_slice(&webhook_body(
        json!({"alertname": "Long", "service": "cart"}),
        "2026-12-01T10:00:00Z",
        "a1",
    ))?;
    let mut long = webhook["alerts"][0].clone();
    long["fingerprint"] = json!("a2");
    long["labels"]["service"] = json!("payments");
    long["generatorURL"] = json!(format!("http://prometheus/graph?g0.expr={}", "x".repeat(5000)));
    webhook["alerts"]
        .as_array_mut()
        .ok_or_else(|| anyhow::anyhow!("alerts"))?
        .push(long);
    let response = post_alerts(&client, &base, serde_json::to_vec(&webhook)?).await?;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await?;
    assert_eq!(answer["incidents"].as_array().map(Vec::len), Some(1), "{answer}");
    assert_eq!(answer["incidents"][0]["service"], "cart", "{answer}");
    assert_eq!(answer["refused"][0]["field"], "alerts[1].generatorURL", "{answer}");
    assert!(
        answer["refused"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("more than the limit of 4096"),
        "{answer}"
    );
    Ok(())
}
