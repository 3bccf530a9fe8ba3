//! An HA pair of gateways receiving the same 1,000 alerts stores exactly 1,000 incidents, and the
//! same alerts sent again after the stream's duplicate window has passed create none.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use selfheal_e2e::{Nats, post_alerts, start_gateway, wait_for, webhook_body};
use serde_json::{Value, json};

const ALERTS: usize = 1000;

fn body(i: usize) -> Vec<u8> {
    let labels = json!({"alertname": "HaTest", "service": format!("svc-{i}"), "namespace": "ha", "cluster": "test"});
    webhook_body(labels, "2026-11-22T10:00:00Z", &format!("{i:016x}"))
}

async fn send_all(client: &reqwest::Client, urls: &[String]) -> anyhow::Result<Vec<Value>> {
    let requests = (0..ALERTS).flat_map(|i| urls.iter().map(move |url| (i, url.clone())));
    futures::stream::iter(requests)
        .map(|(i, url)| {
            let client = client.clone();
            async move {
                let response = post_alerts(&client, &url, body(i)).await?;
                anyhow::ensure!(response.status() == 200, "status {}", response.status());
                Ok::<Value, anyhow::Error>(response.json().await?)
            }
        })
        .buffer_unordered(32)
        .try_collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ha_pair_stores_each_incident_once_even_past_the_dedup_window() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let nats = Nats::start().await?;
    let mut urls = Vec::new();
    let mut gateways = Vec::new();
    for name in ["gateway-a", "gateway-b"] {
        // A short duplicate window, so the test can outlast it.
        let extra = [
            ("SELFHEAL_GATEWAY_DUPLICATE_WINDOW", "2s".to_string()),
            ("RUST_LOG", "warn".to_string()),
        ];
        let (gateway, url) = start_gateway(&nats, name, &extra, temp.path()).await?;
        urls.push(url);
        gateways.push(gateway);
    }
    let client = reqwest::Client::new();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);

    let answers = send_all(&client, &urls).await?;
    let opened = answers
        .iter()
        .filter(|a| a["incidents"][0]["outcome"] == "opened")
        .count();
    assert_eq!(
        opened, ALERTS,
        "each alert opens one incident, whichever gateway got it first"
    );
    let incidents = js
        .get_key_value("selfheal_incidents")
        .await?
        .keys()
        .await?
        .count()
        .await;
    assert_eq!(incidents, ALERTS);
    let mut stream = js.get_stream("SELFHEAL").await?;
    assert_eq!(stream.info().await?.state.messages, ALERTS as u64);

    // Wait until the stream has forgotten message ids: a probe id is accepted again.
    let probe = || async {
        let ack = js
            .send_publish(
                "selfheal.probe.dedup",
                async_nats::jetstream::message::PublishMessage::build()
                    .payload("probe".into())
                    .message_id("dedup-probe"),
            )
            .await
            .ok()?
            .await
            .ok()?;
        Some(ack.duplicate)
    };
    assert_eq!(probe().await, Some(false));
    wait_for(Duration::from_secs(30), "the duplicate window to pass", || async {
        (probe().await == Some(false)).then_some(())
    })
    .await?;
    let messages_before = stream.info().await?.state.messages;

    let again = send_all(&client, &urls).await?;
    assert!(
        again.iter().all(|a| a["incidents"][0]["outcome"] == "duplicate"),
        "repeats are absorbed"
    );
    let incidents = js
        .get_key_value("selfheal_incidents")
        .await?
        .keys()
        .await?
        .count()
        .await;
    assert_eq!(incidents, ALERTS, "no new incident");
    assert_eq!(
        stream.info().await?.state.messages,
        messages_before,
        "nothing new in the stream"
    );
    for gateway in &mut gateways {
        gateway.check_running()?;
    }
    Ok(())
}
