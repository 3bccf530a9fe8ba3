//! The six real Alertmanager bodies through a gateway on a real nats-server: the right incidents
//! in the KV bucket, each resolved body closing what its firing body opened, truncation flagged.

use std::collections::BTreeMap;

use selfheal_e2e::{Nats, post_alerts, start_gateway, workspace_root};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_open_and_close_incidents_in_the_bucket() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let nats = Nats::start().await?;
    // No OTEL_* variables: nothing is exported, and nothing complains about it.
    let (gateway, url) = start_gateway(&nats, "gateway", &[], temp.path()).await?;
    let client = reqwest::Client::new();
    let fixtures = workspace_root().join("../shared/fixtures/alertmanager-0.25");
    let mut keys: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for name in [
        "01-firing-1alerts.json",
        "02-firing-1alerts.json",
        "03-resolved-1alerts.json",
        "04-firing-1alerts.json",
        "05-firing-3alerts-truncated.json",
        "06-resolved-3alerts-truncated.json",
    ] {
        let response = post_alerts(&client, &url, std::fs::read(fixtures.join(name))?).await?;
        assert_eq!(response.status(), 200, "{name}");
        let body: Value = response.json().await?;
        let incident_keys = body["incidents"]
            .as_array()
            .map(|a| a.iter().filter_map(|i| i["key"].as_str().map(String::from)).collect());
        keys.insert(name, incident_keys.unwrap_or_default());
    }
    assert_eq!(keys["02-firing-1alerts.json"], keys["03-resolved-1alerts.json"]);
    assert_eq!(
        keys["05-firing-3alerts-truncated.json"],
        keys["06-resolved-3alerts-truncated.json"]
    );

    // Read the bucket directly, as an operator would with `nats kv get`.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let bucket = js.get_key_value("selfheal_incidents").await?;
    let incident = |key: String| {
        let bucket = bucket.clone();
        async move {
            let bytes = bucket
                .get(&key)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no incident {key}"))?;
            Ok::<Value, anyhow::Error>(serde_json::from_slice(&bytes)?)
        }
    };
    let checkout = incident(keys["03-resolved-1alerts.json"][0].clone()).await?;
    assert_eq!(checkout["state"], "resolved");
    assert_eq!(checkout["service"], "checkout");
    assert_eq!(checkout["ends_at"], "2026-11-22T10:59:07.050Z");
    assert_eq!(checkout["truncated"], false);
    for key in &keys["06-resolved-3alerts-truncated.json"] {
        let grouped = incident(key.clone()).await?;
        assert_eq!(
            (&grouped["state"], &grouped["truncated"]),
            (&Value::from("resolved"), &Value::from(true)),
            "{grouped}"
        );
    }
    for name in ["01-firing-1alerts.json", "04-firing-1alerts.json"] {
        let firing = incident(keys[name][0].clone()).await?;
        assert_eq!(firing["state"], "firing", "{name}");
        assert_eq!(firing["alertname"], "HighRestartCount");
    }
    assert_ne!(
        keys["01-firing-1alerts.json"], keys["04-firing-1alerts.json"],
        "a new startsAt is a new incident"
    );
    let all = bucket.keys().await?;
    use futures::StreamExt;
    assert_eq!(all.count().await, 6, "01, 02/03, 04 and the three of 05/06");
    // Metrics say what happened.
    let metrics = client.get(format!("{url}/metrics")).send().await?.text().await?;
    for name in [
        "selfheal_gateway_alerts_received_total",
        "selfheal_gateway_alerts_truncated_total",
        "selfheal_gateway_publish_duration_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics:\n{metrics}");
    }
    let log = gateway.output();
    assert!(!log.contains("ERROR"), "no errors without OTLP:\n{log}");
    let lower = log.to_lowercase();
    assert!(
        !lower.contains("otlp") && !lower.contains("export"),
        "nothing about exporting:\n{log}"
    );
    Ok(())
}
