//! nats-server killed in the middle of a load run and restarted: every alert that got 200 is in
//! the stream; every other request got 503 or a connection error.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use prost::Message as _;
use selfheal_e2e::{Nats, Process, binary, free_port, wait_for, wait_ready};
use selfheal_proto::v1::AlertEvent;
use serde_json::{Value, json};

const TOKEN: &str = "s3cr3t-token";
const REQUESTS: usize = 3000;
const CONCURRENCY: usize = 16;

fn body(i: usize) -> Vec<u8> {
    // Distinct startsAt: each request is its own incident.
    let starts_at = format!("2026-10-01T{:02}:{:02}:{:02}Z", i / 3600 % 24, i / 60 % 60, i % 60);
    serde_json::to_vec(&json!({
        "version": "4", "status": "firing", "receiver": "selfheal", "groupKey": format!("{{}}:{{n=\"{i}\"}}"),
        "truncatedAlerts": 0, "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am",
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": "LoadTest", "service": format!("svc-{}", i % 10), "namespace": "load", "cluster": "test"},
            "annotations": {"summary": "load"},
            "startsAt": starts_at, "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prom", "fingerprint": format!("{i:016x}"),
        }],
    }))
    .unwrap_or_default()
}

#[derive(Debug)]
enum Answer {
    Stored(String),
    Status(u16),
    ConnectionError,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_alert_survives_a_nats_crash() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let mut nats = Nats::start().await?;
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let env = [
        ("SELFHEAL_GATEWAY_LISTEN", format!("127.0.0.1:{port}")),
        ("SELFHEAL_GATEWAY_NATS_URL", nats.url()),
        ("SELFHEAL_GATEWAY_GRPC_LISTEN", format!("127.0.0.1:{}", free_port()?)),
        ("SELFHEAL_GATEWAY_TOKEN", TOKEN.to_string()),
        ("SELFHEAL_GATEWAY_PUBLISH_TIMEOUT", "1s".to_string()),
        ("RUST_LOG", "warn".to_string()),
    ];
    let mut gateway = Process::start("gateway", &binary("selfheal-gateway")?, &[], &env, temp.path())?;
    wait_ready(&format!("{url}/readyz"), &mut gateway).await?;

    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (client, url, next, answered, failed) = (
            client.clone(),
            url.clone(),
            next.clone(),
            answered.clone(),
            failed.clone(),
        );
        workers.spawn(async move {
            let mut answers = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= REQUESTS {
                    return answers;
                }
                let sent = client
                    .post(format!("{url}/v1/alerts/alertmanager"))
                    .header("authorization", format!("Bearer {TOKEN}"))
                    .header("content-type", "application/json")
                    .body(body(i))
                    .send()
                    .await;
                let answer = match sent {
                    Ok(response) if response.status().as_u16() == 200 => {
                        let value: Value = response.json().await.unwrap_or(Value::Null);
                        match value["incidents"][0]["key"].as_str() {
                            Some(key) => Answer::Stored(key.to_string()),
                            None => Answer::Status(0),
                        }
                    }
                    Ok(response) => Answer::Status(response.status().as_u16()),
                    Err(_) => Answer::ConnectionError,
                };
                if !matches!(answer, Answer::Stored(_)) {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
                answered.fetch_add(1, Ordering::SeqCst);
                answers.push(answer);
            }
        });
    }

    // Crash nats-server a third of the way in; restart it once requests are failing.
    wait_for(Duration::from_secs(60), "a third of the requests answered", || async {
        (answered.load(Ordering::SeqCst) >= REQUESTS / 3).then_some(())
    })
    .await?;
    nats.kill().await?;
    let failed_before = failed.load(Ordering::SeqCst);
    let outage = wait_for(
        Duration::from_secs(10),
        "requests to fail while nats-server is down",
        || async { (failed.load(Ordering::SeqCst) > failed_before).then_some(()) },
    )
    .await;
    nats.restart().await?;
    outage?;

    let mut answers = Vec::new();
    while let Some(worker) = workers.join_next().await {
        answers.extend(worker?);
    }
    assert_eq!(answers.len(), REQUESTS);

    // Everything the stream holds, by incident key.
    let stored = wait_for(Duration::from_secs(10), "the stream after restart", || async {
        let client = async_nats::connect(nats.url()).await.ok()?;
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream("SELFHEAL").await.ok()?;
        let info = stream.info().await.ok()?.clone();
        let mut keys = HashSet::new();
        for sequence in info.state.first_sequence..=info.state.last_sequence {
            if let Ok(message) = stream.get_raw_message(sequence).await {
                keys.insert(AlertEvent::decode(message.payload).ok()?.incident_key);
            }
        }
        Some(keys)
    })
    .await?;

    let mut acknowledged = 0;
    let mut refused = 0;
    for answer in &answers {
        match answer {
            Answer::Stored(key) => {
                acknowledged += 1;
                assert!(stored.contains(key), "incident {key} got 200 but is not in the stream");
            }
            Answer::Status(503) | Answer::ConnectionError => refused += 1,
            Answer::Status(other) => panic!("unexpected status {other}"),
        }
    }
    eprintln!(
        "{REQUESTS} requests: {acknowledged} acknowledged (all in the stream, which holds {}), {refused} refused with 503 or a connection error",
        stored.len()
    );
    assert!(refused > 0, "the crash was felt");
    assert!(acknowledged > REQUESTS / 3, "the gateway recovered after the restart");
    gateway.check_running().context("the gateway survives a NATS crash")?;
    Ok(())
}
