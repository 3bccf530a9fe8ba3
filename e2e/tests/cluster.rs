//! selfheal on a 3-node nats-server cluster on loopback, the stream and buckets at three replicas:
//! the stream's leader is SIGKILLed a third of the way into 3,000 alerts, and the alerts keep
//! being stored, none twice, and the loop carries on — a rollback made and verified — while that
//! node is still down, without restarting a service.
//!
//! The stream is made first as an older selfheal left it (one replica, no limits): the services,
//! given `replicas = 3`, bring it to their settings.

use std::{collections::BTreeSet, io::Write as _, time::Duration};

use anyhow::Context;
use futures::StreamExt;
use prost::Message as _;
use selfheal_e2e::{
    NatsCluster, connect_nats,
    stack::{Stack, events},
    wait_for, webhook_body,
};
use selfheal_proto::v1::{AlertEvent, RemediationState};

const ALERTS: usize = 3000;
/// Requests in flight at once, as a busy Alertmanager cluster would send.
const IN_FLIGHT: usize = 32;

/// Alert `i`: its own incident (50 services, each firing again every 50 s).
fn alert(i: usize) -> Vec<u8> {
    let labels = serde_json::json!({
        "alertname": "ClusterLoad", "service": format!("load{:02}", i % 50), "severity": "warning",
    });
    let starts = chrono::DateTime::UNIX_EPOCH + chrono::Duration::seconds(1_795_000_000 + i as i64);
    webhook_body(labels, &starts.to_rfc3339(), &format!("{i:016x}"))
}

/// Every alert the stream holds now (its incident keys, once per message), read from the nodes
/// that are up.
async fn stored_alerts(url: &str) -> anyhow::Result<Vec<String>> {
    let js = async_nats::jetstream::new(connect_nats(url).await?);
    let stream = js.get_stream("SELFHEAL").await?;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subjects: vec!["selfheal.alerts.firing.>".into()],
            ..Default::default()
        })
        .await?;
    let mut pending = consumer.cached_info().num_pending;
    let mut messages = consumer.messages().await?;
    let mut keys = Vec::new();
    while pending > 0 {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .context("the stream stopped delivering")?
            .context("the stream ended")?
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        keys.push(AlertEvent::decode(message.payload.clone())?.incident_key);
        pending = message.info().map_err(|e| anyhow::anyhow!("{e}"))?.pending;
    }
    Ok(keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_leader_dies_mid_burst_and_alerts_keep_being_stored() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let cluster = NatsCluster::start(3).await?;
    let url = cluster.url();
    {
        let js = async_nats::jetstream::new(connect_nats(&url).await?);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "SELFHEAL".into(),
            subjects: vec!["selfheal.>".into()],
            num_replicas: 1,
            ..Default::default()
        })
        .await?;
    }
    let env = [
        ("SELFHEAL_POLICY_ACK_WAIT", "5s".to_string()),
        ("SELFHEAL_PR_CONTROLLER_ACK_WAIT", "5s".to_string()),
        ("SELFHEAL_GATEWAY_NATS__REPLICAS", "3".into()),
        ("SELFHEAL_POLICY_NATS__REPLICAS", "3".into()),
        ("SELFHEAL_PR_CONTROLLER_NATS__REPLICAS", "3".into()),
        ("SELFHEAL_NOTIFIER_NATS__REPLICAS", "3".into()),
    ];
    let releases: &[(&str, u32)] = &[("v1.4.1", 1), ("v1.5.0", 1)];
    let mut stack = Stack::start_on(cluster, temp.path(), &[], &[("shop", releases)], &env).await?;

    // The services brought the stream and their buckets to three replicas and the limits.
    let js = async_nats::jetstream::new(connect_nats(&url).await?);
    let config = js.get_stream("SELFHEAL").await?.info().await?.config.clone();
    assert_eq!(config.num_replicas, 3, "{config:?}");
    assert_eq!(config.max_age, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(config.max_bytes, 1 << 30);
    assert_eq!(config.discard, async_nats::jetstream::stream::DiscardPolicy::New);
    for bucket in [
        "KV_selfheal_incidents",
        "KV_selfheal_actions",
        "KV_selfheal_remediations",
    ] {
        let replicas = js.get_stream(bucket).await?.info().await?.config.num_replicas;
        assert_eq!(replicas, 3, "{bucket}");
    }

    // 3,000 alerts, IN_FLIGHT at a time; the stream's leader SIGKILLed after the first 1,000
    // answers.
    let gateway = stack.specs["gateway"].ready.trim_end_matches("/readyz").to_string();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let mut answers = futures::stream::iter(0..ALERTS)
        .map(|i| {
            let (client, gateway) = (client.clone(), gateway.clone());
            async move {
                let answer = selfheal_e2e::post_alerts(&client, &gateway, alert(i)).await;
                match answer {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let body: serde_json::Value = response.json().await.unwrap_or_default();
                        (status, body)
                    }
                    Err(_) => (0, serde_json::Value::Null),
                }
            }
        })
        .buffer_unordered(IN_FLIGHT);
    let (mut acked, mut unavailable, mut other) = (Vec::new(), 0usize, Vec::new());
    let mut killed = None;
    let mut answered = 0;
    while let Some((status, body)) = answers.next().await {
        answered += 1;
        match status {
            200 => acked.extend(
                body["incidents"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i["key"].as_str().map(str::to_string)),
            ),
            503 => unavailable += 1,
            status => other.push((status, body)),
        }
        if answered == ALERTS / 3 {
            let leader = stack.nats.leader_of("SELFHEAL").await?;
            stack.nats.nodes[leader].server.kill().await?;
            killed = Some(leader);
        }
    }
    let killed = killed.context("the leader was never killed")?;
    let survivors: Vec<String> = stack
        .nats
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != killed)
        .map(|(_, n)| n.server.url())
        .collect();
    let survivors = survivors.join(",");

    // Every alert that got 200 is in the stream, with that node still down; none is there twice.
    // (The two that are left elect a new leader first: until then the stream answers nothing.)
    let stored = wait_for(Duration::from_secs(60), "the stream on the nodes left", || async {
        stored_alerts(&survivors).await.ok()
    })
    .await
    .map_err(|e| {
        let logs: Vec<String> = stack.nats.nodes.iter().map(|n| n.server.process.output()).collect();
        anyhow::anyhow!("{e}\n{}", logs.join("\n-----\n"))
    })?;
    let distinct: BTreeSet<&String> = stored.iter().collect();
    let acked_set: BTreeSet<&String> = acked.iter().collect();
    let missing: Vec<&&String> = acked_set.difference(&distinct).collect();
    let report = format!(
        "\n3-node cluster, R3: {ALERTS} alerts, the stream's leader ({}) SIGKILLed after {}: \
         {} acked (200), {} stored, {unavailable} unavailable (503), {} other\n",
        stack.nats.nodes[killed].name,
        ALERTS / 3,
        acked.len(),
        stored.len(),
        other.len()
    );
    let _ = std::io::stderr().write_all(report.as_bytes());
    assert!(other.is_empty(), "only 200 or 503: {other:?}");
    assert!(missing.is_empty(), "acked but not stored: {} of them", missing.len());
    assert_eq!(distinct.len(), stored.len(), "an alert stored twice");
    assert!(
        acked.len() * 100 >= ALERTS * 95,
        "at least 95 % acked: {}{report}",
        stack.dump()
    );

    // The loop goes on, the node still down and no service restarted: a rollback made and
    // verified.
    let firing = webhook_body(
        serde_json::json!({"alertname": "HighErrorRate", "service": "shop", "severity": "critical", "auto_heal": "true"}),
        "2026-12-01T11:00:00Z",
        "5h0p",
    );
    let response = selfheal_e2e::post_alerts(&client, &gateway, firing).await?;
    assert_eq!(response.status(), 200);
    wait_for(Duration::from_secs(60), "the rollback on main", || async {
        stack.main_file("shop").ok().filter(|f| f.contains("newTag: v1.4.1"))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", stack.dump()))?;
    let resolved = String::from_utf8(webhook_body(
        serde_json::json!({"alertname": "HighErrorRate", "service": "shop", "severity": "critical", "auto_heal": "true"}),
        "2026-12-01T11:00:00Z",
        "5h0p",
    ))?
    .replacen("\"firing\"", "\"resolved\"", 2);
    let response = selfheal_e2e::post_alerts(&client, &gateway, resolved.into_bytes()).await?;
    assert_eq!(response.status(), 200);
    wait_for(Duration::from_secs(60), "the rollback verified", || async {
        let (_, events) = events(&survivors, "shop").await.ok()?;
        events
            .iter()
            .any(|e| e.state() == RemediationState::Verified)
            .then_some(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", stack.dump()))?;
    for (name, process) in stack.processes.iter_mut() {
        process.check_running().with_context(|| format!("{name} restarted"))?;
    }
    Ok(())
}
