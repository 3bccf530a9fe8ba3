//! People in the loop, end to end.
//!
//! Approving from Slack: an alert whose fix needs approval goes through the real gateway,
//! policy, pr-controller and notifier on a real nats-server; the notifier posts the waiting
//! remediation with Approve and Reject buttons to `selfheal_e2e::fake_slack`, which then sends
//! clicks signed as Slack signs them to the pr-controller's `/slack/interactions`. A forged
//! signature, a timestamp older than 5 minutes and a user on no allow-list are refused and nothing
//! merges; an Approve from a member of an allowed user group merges the change (a scale), the message is
//! replaced by one naming them, and the audit row names them.

use std::time::Duration;

use selfheal_config::slack::{APPROVE_ACTION, REJECT_ACTION};
use selfheal_e2e::{
    fake_slack::{BOT_TOKEN, FakeSlack, SIGNING_SECRET},
    stack::{Stack, events},
    wait_for, webhook_body,
};
use selfheal_proto::v1::RemediationState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remediation_is_approved_from_slack_by_an_allowed_user_only() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let slack = FakeSlack::start(&[("S0ONCALL", &["U0BOB"])]).await?;
    let env = [
        ("SELFHEAL_NOTIFIER_SLACK_WEBHOOK_URL", slack.webhook_url()),
        ("SELFHEAL_NOTIFIER_SLACK_APPROVAL_BUTTONS", "true".to_string()),
        (
            "SELFHEAL_PR_CONTROLLER_SLACK__SIGNING_SECRET",
            SIGNING_SECRET.to_string(),
        ),
        (
            "SELFHEAL_PR_CONTROLLER_SLACK__ALLOWED_USERS",
            "[\"U0ALICE\"]".to_string(),
        ),
        (
            "SELFHEAL_PR_CONTROLLER_SLACK__ALLOWED_GROUPS",
            "[\"S0ONCALL\"]".to_string(),
        ),
        ("SELFHEAL_PR_CONTROLLER_SLACK__BOT_TOKEN", BOT_TOKEN.to_string()),
        ("SELFHEAL_PR_CONTROLLER_SLACK__API_URL", slack.api_url()),
    ];
    let releases: &[(&str, u32)] = &[("v1.4.1", 2), ("v1.5.0", 2)];
    let stack = Stack::start(temp.path(), &[], &[("checkout", releases)], &env).await?;
    let pr_controller = stack.specs["pr-controller"]
        .ready
        .trim_end_matches("/readyz")
        .to_string();
    let endpoint = format!("{pr_controller}/slack/interactions");

    // A warning: the default policy scales up, but only with a person's approval.
    let gateway = stack.specs["gateway"].ready.trim_end_matches("/readyz").to_string();
    let labels =
        serde_json::json!({"alertname": "HighCPU", "service": "checkout", "severity": "warning", "auto_heal": "true"});
    let response = selfheal_e2e::post_alerts(
        &reqwest::Client::new(),
        &gateway,
        webhook_body(labels, "2026-12-01T12:00:00Z", "s1"),
    )
    .await?;
    assert_eq!(response.status(), 200);

    // The waiting remediation reaches Slack with its two buttons, each carrying the incident.
    let buttons: Vec<(String, String)> = wait_for(Duration::from_secs(30), "the approval message", || async {
        slack.with(|seen| {
            seen.messages.iter().find_map(|message| {
                let blocks = message["blocks"].as_array()?;
                let actions = blocks.iter().find(|b| b["type"] == "actions")?;
                let buttons: Vec<(String, String)> = actions["elements"]
                    .as_array()?
                    .iter()
                    .map(|e| {
                        (
                            e["action_id"].as_str().unwrap_or("").into(),
                            e["value"].as_str().unwrap_or("").into(),
                        )
                    })
                    .collect();
                Some(buttons)
            })
        })
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", stack.dump()))?;
    assert_eq!(buttons.len(), 2, "{buttons:?}");
    assert_eq!(buttons[0].0, APPROVE_ACTION);
    assert_eq!(buttons[1].0, REJECT_ACTION);
    let incident = buttons[0].1.clone();
    assert_eq!(buttons[1].1, incident);
    let (_, remediations) = events(&stack.nats_url, "checkout").await?;
    assert!(
        remediations
            .iter()
            .any(|r| r.incident_key == incident && r.state() == RemediationState::Opened),
        "{remediations:?}"
    );
    let main_before = stack.main_file("checkout")?;
    assert!(main_before.contains("count: 2"), "{main_before}");

    let now = chrono::Utc::now().timestamp();
    let bob = ("U0BOB", "bob");
    // Not Slack's: another secret; and Slack's, but captured six minutes ago.
    let (status, body) = slack
        .click(
            &endpoint,
            "not-the-secret",
            now,
            APPROVE_ACTION,
            &incident,
            bob,
            "forged",
        )
        .await?;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("x-slack-signature"), "{body}");
    let (status, body) = slack
        .click(
            &endpoint,
            SIGNING_SECRET,
            now - 360,
            APPROVE_ACTION,
            &incident,
            bob,
            "stale",
        )
        .await?;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("5 minutes"), "{body}");
    // Signed, recent, but by a user on no list: they alone are told, nothing is done.
    let (status, _) = slack
        .click(
            &endpoint,
            SIGNING_SECRET,
            now,
            APPROVE_ACTION,
            &incident,
            ("U0MALLORY", "mallory"),
            "mallory",
        )
        .await?;
    assert_eq!(status, 200);
    let refusal = wait_for(Duration::from_secs(10), "the refusal", || async {
        slack.with(|seen| seen.responses.get("mallory").and_then(|r| r.first().cloned()))
    })
    .await?;
    assert_eq!(refusal["response_type"], "ephemeral", "{refusal}");
    assert_eq!(refusal["replace_original"], false, "{refusal}");
    assert!(slack.with(|seen| !seen.responses.contains_key("forged") && !seen.responses.contains_key("stale")));
    assert_eq!(stack.main_file("checkout")?, main_before, "nothing merged");
    let (_, remediations) = events(&stack.nats_url, "checkout").await?;
    assert!(
        remediations
            .iter()
            .all(|r| r.incident_key != incident || r.state() == RemediationState::Opened),
        "still waiting: {remediations:?}"
    );

    // Bob is in the on-call group: his Approve merges the change.
    let (status, _) = slack
        .click(
            &endpoint,
            SIGNING_SECRET,
            chrono::Utc::now().timestamp(),
            APPROVE_ACTION,
            &incident,
            bob,
            "bob",
        )
        .await?;
    assert_eq!(status, 200);
    let update = wait_for(Duration::from_secs(30), "the updated message", || async {
        slack.with(|seen| seen.responses.get("bob").and_then(|r| r.first().cloned()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", stack.dump()))?;
    assert_eq!(update["replace_original"], true, "{update}");
    let outcome = update["blocks"][1]["text"]["text"].as_str().unwrap_or_default();
    assert!(
        outcome.contains("Approved by <@U0BOB>") && outcome.contains("merged"),
        "{update}"
    );
    let blocks = update["blocks"].as_array().cloned().unwrap_or_default();
    assert!(
        blocks.iter().all(|b| b["type"] != "actions"),
        "the buttons are gone: {update}"
    );
    let main_after = stack.main_file("checkout")?;
    assert!(main_after.contains("count: 3"), "scaled: {main_after}");
    assert_eq!(
        slack.with(|seen| (seen.group_reads, seen.unauthorized)),
        (1, 0),
        "the group read once, with the bot token, and kept for bob's click"
    );

    // The audit row of the merge names Bob.
    let db = format!("sqlite://{}?mode=ro", temp.path().join("audit.db").display());
    let reason: String = wait_for(Duration::from_secs(30), "the merge's audit row", || async {
        let pool = sqlx::SqlitePool::connect(&db).await.ok()?;
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT reason FROM audit_log WHERE kind = 'remediation' AND state = 'merged' AND incident = ?",
        )
        .bind(&incident)
        .fetch_optional(&pool)
        .await
        .ok()?;
        pool.close().await;
        row.map(|(reason,)| reason)
    })
    .await?;
    assert!(reason.starts_with("approved by @bob (Slack U0BOB)"), "{reason}");

    // A second click on the same message changes nothing and says why.
    let (status, _) = slack
        .click(
            &endpoint,
            SIGNING_SECRET,
            chrono::Utc::now().timestamp(),
            REJECT_ACTION,
            &incident,
            bob,
            "again",
        )
        .await?;
    assert_eq!(status, 200);
    let again = wait_for(Duration::from_secs(10), "the answer to the second click", || async {
        slack.with(|seen| seen.responses.get("again").and_then(|r| r.first().cloned()))
    })
    .await?;
    assert_eq!(again["response_type"], "ephemeral", "{again}");
    assert!(again["text"].as_str().unwrap_or_default().contains("merged"), "{again}");
    assert_eq!(stack.main_file("checkout")?, main_after);
    Ok(())
}
