//! An HA pair of gateways receiving the same 1,000 alerts stores exactly 1,000 incidents, and the
//! same alerts sent again after the stream's duplicate window has passed create none.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use selfheal_e2e::{Nats, Process, binary, free_port, wait_for, wait_ready};
use serde_json::{Value, json};

const TOKEN: &str = "s3cr3t-token";
const ALERTS: usize = 1000;

fn body(i: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "version": "4", "status": "firing", "receiver": "selfheal", "groupKey": "{}:{}",
        "truncatedAlerts": 0, "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am",
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": "HaTest", "service": format!("svc-{i}"), "namespace": "ha", "cluster": "test"},
            "annotations": {},
            "startsAt": "2026-11-22T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "", "fingerprint": format!("{i:016x}"),
        }],
    }))
    .unwrap_or_default()
}

async fn send_all(client: &reqwest::Client, urls: &[String]) -> anyhow::Result<Vec<Value>> {
    let requests = (0..ALERTS).flat_map(|i| urls.iter().map(move |url| (i, url.clone())));
    futures::stream::iter(requests)
        .map(|(i, url)| {
            let client = client.clone();
            async move {
                let response = client
                    .post(format!("{url}/v1/alerts/alertmanager"))
                    .header("authorization", format!("Bearer {TOKEN}"))
                    .header("content-type", "application/json")
                    .body(body(i))
                    .send()
                    .await?;
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
        let port = free_port()?;
        let env = [
            ("SELFHEAL_GATEWAY_LISTEN", format!("127.0.0.1:{port}")),
            ("SELFHEAL_GATEWAY_NATS_URL", nats.url()),
            ("SELFHEAL_GATEWAY_GRPC_LISTEN", format!("127.0.0.1:{}", free_port()?)),
            ("SELFHEAL_GATEWAY_TOKEN", TOKEN.to_string()),
            // A short window, so the test can outlast it.
            ("SELFHEAL_GATEWAY_DUPLICATE_WINDOW", "2s".to_string()),
            ("RUST_LOG", "warn".to_string()),
        ];
        let mut gateway = Process::start(name, &binary("selfheal-gateway")?, &[], &env, temp.path())?;
        let url = format!("http://127.0.0.1:{port}");
        wait_ready(&format!("{url}/readyz"), &mut gateway).await?;
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
