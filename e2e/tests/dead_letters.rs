//! Dead letters on a real nats-server: a decision the pr-controller fails on each of its 10
//! deliveries (the GitOps repository refuses ref updates: a stale `main.lock`) is kept in the
//! dead-letter stream with its headers, gets an audit row and the counter; once the lock is gone,
//! `selfheal dead-letters retry` carries it out.

use std::time::Duration;

use selfheal_e2e::{
    connect_nats,
    stack::{Stack, events},
    wait_for, webhook_body,
};
use selfheal_proto::v1::RemediationState;

/// `selfheal dead-letters …` against the stack's NATS; its exit status and output.
async fn cli(stack: &Stack, args: &[&str]) -> anyhow::Result<(bool, String)> {
    stack.cli(&[&["dead-letters"], args].concat()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_failed_ten_times_is_kept_and_carried_out_when_retried() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let releases: &[(&str, u32)] = &[("v1.4.1", 1), ("v1.5.0", 1)];
    let env = [
        ("SELFHEAL_PR_CONTROLLER_RETRY_BASE", "100ms".to_string()),
        ("SELFHEAL_PR_CONTROLLER_ACK_WAIT", "5s".to_string()),
    ];
    let stack = Stack::start(temp.path(), &[], &[("shop", releases)], &env).await?;
    let lock = stack.repo.join("refs/heads/main.lock");
    std::fs::write(&lock, "")?;

    let gateway = stack.specs["gateway"].ready.trim_end_matches("/readyz").to_string();
    let client = reqwest::Client::new();
    let labels = serde_json::json!({"alertname": "HighErrorRate", "service": "shop", "severity": "critical", "auto_heal": "true"});
    let response =
        selfheal_e2e::post_alerts(&client, &gateway, webhook_body(labels, "2026-12-01T12:00:00Z", "d1")).await?;
    assert_eq!(response.status(), 200);

    // The decision fails ten times, then is a dead letter.
    let letter: serde_json::Value = wait_for(Duration::from_secs(90), "the dead letter", || async {
        let (ok, out) = cli(&stack, &["list", "--json"]).await.ok()?;
        let line = out.lines().find(|l| l.starts_with('{'))?;
        ok.then(|| serde_json::from_str(line).ok()).flatten()
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", stack.dump()))?;
    assert_eq!(letter["consumer"], "pr-controller", "{letter}");
    assert_eq!(letter["subject"], "selfheal.decisions.shop", "{letter}");
    assert_eq!(letter["deliveries"], 10, "{letter}");
    assert!(
        letter["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("each of its 10 deliveries"),
        "{letter}"
    );
    // With the decision's own headers: its trace context is the one it was published with.
    let js = async_nats::jetstream::new(connect_nats(&stack.nats_url).await?);
    let original = js
        .get_stream("SELFHEAL")
        .await?
        .get_last_raw_message_by_subject("selfheal.decisions.shop")
        .await?;
    let traceparent = original
        .headers
        .get("traceparent")
        .map(|v| v.as_str().to_string())
        .unwrap_or_default();
    assert!(!traceparent.is_empty(), "the decision carries trace context");
    assert_eq!(letter["headers"]["traceparent"], traceparent.as_str(), "{letter}");
    assert_eq!(
        letter["original_sequence"].as_u64(),
        Some(original.sequence),
        "{letter}"
    );

    // Counted by the pr-controller, recorded in the audit log.
    let metrics_url = stack.specs["pr-controller"].ready.replace("/readyz", "/metrics");
    let metrics = client.get(&metrics_url).send().await?.text().await?;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("selfheal_dead_letters_total{consumer=\"pr-controller\"} 1")),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("dead_letters"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let db = format!("sqlite://{}?mode=ro", temp.path().join("audit.db").display());
    let row: (String, String, String) = wait_for(Duration::from_secs(30), "the dead letter's audit row", || async {
        let pool = sqlx::SqlitePool::connect(&db).await.ok()?;
        let row = sqlx::query_as("SELECT service, state, reason FROM audit_log WHERE kind = 'dead_letter'")
            .fetch_optional(&pool)
            .await
            .ok()?;
        pool.close().await;
        row
    })
    .await?;
    assert_eq!((row.0.as_str(), row.1.as_str()), ("shop", "pr-controller"), "{row:?}");
    assert!(row.2.contains("delivered 10 times"), "{row:?}");
    let (_, remediations) = events(&stack.nats_url, "shop").await?;
    assert!(
        !remediations.iter().any(|e| e.state() == RemediationState::Merged),
        "nothing merged while main was locked"
    );

    // The cause fixed, the retry carries it out, once; the letter is gone.
    std::fs::remove_file(&lock)?;
    let sequence = letter["sequence"].as_u64().unwrap_or_default().to_string();
    let (ok, out) = cli(&stack, &["retry", &sequence]).await?;
    assert!(ok, "{out}");
    assert!(out.contains("published again on selfheal.decisions.shop"), "{out}");
    wait_for(Duration::from_secs(60), "the rollback merged", || async {
        let (_, events) = events(&stack.nats_url, "shop").await.ok()?;
        events
            .iter()
            .any(|e| e.state() == RemediationState::Merged)
            .then_some(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", stack.dump()))?;
    assert!(stack.main_file("shop")?.contains("newTag: v1.4.1"));
    assert_eq!(selfheal_e2e::stack::selfheal_commits(&stack.repo, "shop")?, 1);
    let (ok, out) = cli(&stack, &["list"]).await?;
    assert!(ok && out.contains("no dead letters"), "{out}");
    let (ok, out) = cli(&stack, &["retry", &sequence]).await?;
    assert!(!ok && out.contains(&format!("no dead letter {sequence}")), "{out}");
    Ok(())
}
