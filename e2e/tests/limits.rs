//! Three policy processes deciding 300 concurrent critical HighErrorRate incidents for one
//! service make at most the configured number of rollbacks (2 per 30 min by default); every other
//! decision escalates with a reason naming the limit.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_policy_replicas_never_exceed_the_rollback_limit() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let nats = Nats::start().await?;
    let (_gateway, url) = start_gateway(&nats, "gateway", &[("RUST_LOG", "warn".to_string())], temp.path()).await?;
    let mut replicas = Vec::new();
    for n in 0..3 {
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
        let mut policy = Process::start(
            &format!("policy-{n}"),
            &binary("selfheal-policy")?,
            &[],
            &env,
            temp.path(),
        )?;
        wait_ready(&format!("http://127.0.0.1:{http}/readyz"), &mut policy).await?;
        replicas.push(policy);
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
