//! The limits on a real nats-server:
//! - three policy processes deciding 300 concurrent critical HighErrorRate incidents for one
//!   service make at most the configured number of rollbacks (2 per 30 min by default); every
//!   other decision escalates with a reason naming the limit;
//! - a record in `selfheal_actions` that does not parse fails closed: the service's next
//!   decision escalates naming the key, and the policy counts it.

use std::time::Duration;

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use prost::Message as _;
use selfheal_e2e::{
    Nats, Process, TOKEN, binary, free_port, post_alerts, start_gateway, wait_for, wait_ready, webhook_body,
    workspace_root,
};
use selfheal_proto::v1::{Action, Decision};
use serde_json::json;

const INCIDENTS: usize = 300;

fn body(i: usize) -> Vec<u8> {
    let labels = json!({"alertname": "HighErrorRate", "service": "checkout", "namespace": "shop", "cluster": "prod",
        "severity": "critical", "auto_heal": "true"});
    webhook_body(
        labels,
        &format!("2026-11-22T10:{:02}:{:02}Z", i / 60, i % 60),
        &format!("{i:016x}"),
    )
}

async fn decisions(nats_url: &str) -> Option<Vec<Decision>> {
    let js = async_nats::jetstream::new(async_nats::connect(nats_url).await.ok()?);
    let mut stream = js.get_stream("SELFHEAL").await.ok()?;
    let info = stream.info().await.ok()?.clone();
    let mut found = Vec::new();
    for sequence in info.state.first_sequence..=info.state.last_sequence {
        let message = stream.get_raw_message(sequence).await.ok()?;
        if message.subject.starts_with("selfheal.decisions.") {
            found.push(Decision::decode(message.payload).ok()?);
        }
    }
    Some(found)
}

/// A policy process on `nats`, ready; with its HTTP address (`/metrics`).
async fn start_policy(nats: &Nats, name: &str, dir: &std::path::Path) -> anyhow::Result<(Process, String)> {
    let http = free_port()?;
    let env = [
        ("SELFHEAL_POLICY_LISTEN", format!("127.0.0.1:{http}")),
        ("SELFHEAL_POLICY_GRPC_LISTEN", format!("127.0.0.1:{}", free_port()?)),
        ("SELFHEAL_POLICY_NATS_URL", nats.url()),
        (
            "SELFHEAL_POLICY_POLICY_DIR",
            workspace_root().join("deploy/policies").display().to_string(),
        ),
        ("SELFHEAL_POLICY_GRPC_TOKEN", TOKEN.to_string()),
        ("RUST_LOG", "warn".to_string()),
    ];
    let mut policy = Process::start(name, &binary("selfheal-policy")?, &[], &env, dir)?;
    let base = format!("http://127.0.0.1:{http}");
    wait_ready(&format!("{base}/readyz"), &mut policy).await?;
    Ok((policy, base))
}

/// The value of `counter{key="<key>"}` on a `/metrics` page, 0 when absent.
fn counter(page: &str, counter: &str, key: &str) -> f64 {
    let series = format!("{counter}{{key=\"{key}\"}} ");
    page.lines()
        .find_map(|line| line.strip_prefix(&series))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_limits_record_escalates_with_its_key_named_and_is_counted() -> anyhow::Result<()> {
    const UNREADABLE: &str = "selfheal_policy_limit_records_unreadable_total";
    let temp = tempfile::tempdir()?;
    let nats = Nats::start().await?;
    let (_gateway, url) = start_gateway(&nats, "gateway", &[("RUST_LOG", "warn".to_string())], temp.path()).await?;
    let (mut policy, base) = start_policy(&nats, "policy", temp.path()).await?;

    // The policy made the bucket at start-up; a foreign or corrupt value lands in it.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let bucket = js.get_key_value("selfheal_actions").await?;
    bucket.put("service.checkout", "{\"half a record".into()).await?;
    let http = reqwest::Client::new();
    let before = counter(
        &http.get(format!("{base}/metrics")).send().await?.text().await?,
        UNREADABLE,
        "service.checkout",
    );
    assert_eq!(before, 0.0, "nothing read yet");

    let response = post_alerts(&http, &url, body(0)).await?;
    assert_eq!(response.status().as_u16(), 200);
    let decision = wait_for(Duration::from_secs(30), "the decision", || async {
        decisions(&nats.url()).await.and_then(|d| d.into_iter().next())
    })
    .await
    .with_context(|| policy.output())?;
    assert_eq!(decision.action(), Action::Escalate, "{decision:?}");
    assert!(
        decision
            .reason
            .contains("limits record service.checkout in selfheal_actions is unreadable"),
        "{}",
        decision.reason
    );
    let after = counter(
        &http.get(format!("{base}/metrics")).send().await?.text().await?,
        UNREADABLE,
        "service.checkout",
    );
    assert!(after >= 1.0, "the unreadable read is counted: {after}");
    let kept = bucket.get("service.checkout").await?;
    assert_eq!(
        kept.as_deref(),
        Some(&b"{\"half a record"[..]),
        "left for a person to look at"
    );
    policy.check_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_policy_replicas_never_exceed_the_rollback_limit() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let nats = Nats::start().await?;
    let (_gateway, url) = start_gateway(&nats, "gateway", &[("RUST_LOG", "warn".to_string())], temp.path()).await?;
    let mut replicas = Vec::new();
    for n in 0..3 {
        replicas.push(start_policy(&nats, &format!("policy-{n}"), temp.path()).await?.0);
    }

    let client = reqwest::Client::new();
    let statuses: Vec<u16> = futures::stream::iter(0..INCIDENTS)
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let response = post_alerts(&client, &url, body(i)).await?;
                Ok::<u16, anyhow::Error>(response.status().as_u16())
            }
        })
        .buffer_unordered(50)
        .try_collect()
        .await?;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    let all = wait_for(Duration::from_secs(60), "a decision for every incident", || async {
        decisions(&nats.url()).await.filter(|d| d.len() >= INCIDENTS)
    })
    .await
    .with_context(|| replicas.iter().map(Process::output).collect::<Vec<_>>().join("\n"))?;
    assert_eq!(all.len(), INCIDENTS, "one decision per incident");
    let rollbacks = all.iter().filter(|d| d.action() == Action::Rollback).count();
    assert_eq!(
        rollbacks, 2,
        "the default limit is 2 rollbacks per 30 minutes per service"
    );
    for decision in all.iter().filter(|d| d.action() != Action::Rollback) {
        assert_eq!(decision.action(), Action::Escalate);
        // Refused by the service's limit (replicas racing), or by the policy itself once the
        // history it is given shows the two rollbacks: either way the reason names the limit.
        let reason = &decision.reason;
        assert!(
            reason.starts_with("rate limit: checkout already had 2 automatic actions in the last 30m")
                || reason.contains("it was rolled back 2 times in the last 30 minutes"),
            "{reason}"
        );
    }
    for replica in &mut replicas {
        replica.check_running()?;
    }
    Ok(())
}
