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
    let refusal = slack.response("mallory", Duration::from_secs(10)).await?;
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
    let update = slack
        .response("bob", Duration::from_secs(30))
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
    let again = slack.response("again", Duration::from_secs(10)).await?;
    assert_eq!(again["response_type"], "ephemeral", "{again}");
    assert!(again["text"].as_str().unwrap_or_default().contains("merged"), "{again}");
    assert_eq!(stack.main_file("checkout")?, main_after);
    Ok(())
}

/// An alert of the replayed week: when it fired (minutes after the week's start), on which
/// service, at which severity, and the error ratio its service showed meanwhile.
struct Episode {
    at_minutes: i64,
    service: &'static str,
    severity: &'static str,
    error_ratio: f64,
}

/// `selfheal ARGS`: its exit status and stdout (stderr apart).
async fn selfheal(args: &[&str], dir: &std::path::Path) -> anyhow::Result<(bool, String, String)> {
    let output = tokio::process::Command::new(selfheal_e2e::binary("selfheal")?)
        .args(args)
        .current_dir(dir)
        .output()
        .await?;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// `selfheal policy replay` over a week of history written with `promtool tsdb
/// create-blocks-from openmetrics` into a real Prometheus: the alerts it rebuilds are the ones
/// written, each decision is the policy's own answer for its input (checked with `selfheal policy
/// eval --input`) unless a limit overrode it, the metrics are those of the moment the alert fired,
/// and the per-service limit (2 per 2h here) refuses the third rollback inside its window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_week_of_alerts_is_replayed_through_the_policy_and_its_limits() -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let temp = tempfile::tempdir()?;
    let dir = temp.path();
    let now = chrono::Utc::now().timestamp();
    // A week ending two hours ago, on whole minutes.
    let end = (now - 2 * 3600) / 60 * 60;
    let start = end - 7 * 24 * 3600;
    let day = 24 * 60;
    // Checkout fails at 10:00, 10:40 (its error ratio low: nothing to do), 11:20 and 11:50 —
    // the third rollback in two hours, though the default policy's own count (30 minutes) lets
    // it through — and again three days later; cart warns once.
    let episodes = [
        Episode {
            at_minutes: day + 600,
            service: "checkout",
            severity: "critical",
            error_ratio: 0.12,
        },
        Episode {
            at_minutes: day + 640,
            service: "checkout",
            severity: "critical",
            error_ratio: 0.01,
        },
        Episode {
            at_minutes: day + 680,
            service: "checkout",
            severity: "critical",
            error_ratio: 0.12,
        },
        Episode {
            at_minutes: day + 710,
            service: "checkout",
            severity: "critical",
            error_ratio: 0.12,
        },
        Episode {
            at_minutes: 2 * day + 900,
            service: "cart",
            severity: "warning",
            error_ratio: 0.3,
        },
        Episode {
            at_minutes: 4 * day + 540,
            service: "checkout",
            severity: "critical",
            error_ratio: 0.12,
        },
    ];
    // Rules evaluated every 30 s, `for: 1m`: each alert pending for a minute, then firing for
    // five; the services' error ratio sampled every minute all week.
    let labels = |e: &Episode| {
        format!(
            "alertname=\"HighErrorRate\",auto_heal=\"true\",service=\"{}\",severity=\"{}\"",
            e.service, e.severity
        )
    };
    let mut text = String::from("# TYPE ALERTS gauge\n");
    for e in &episodes {
        let fired = start + e.at_minutes * 60;
        for t in (fired - 60..fired).step_by(30) {
            writeln!(text, "ALERTS{{alertstate=\"pending\",{}}} 1 {t}", labels(e))?;
        }
        for t in (fired..fired + 300).step_by(30) {
            writeln!(text, "ALERTS{{alertstate=\"firing\",{}}} 1 {t}", labels(e))?;
        }
    }
    text.push_str("# TYPE ALERTS_FOR_STATE gauge\n");
    for e in &episodes {
        let fired = start + e.at_minutes * 60;
        for t in (fired - 60..fired + 300).step_by(30) {
            writeln!(text, "ALERTS_FOR_STATE{{{}}} {} {t}", labels(e), fired - 60)?;
        }
    }
    text.push_str("# TYPE app_error_ratio gauge\n");
    for service in ["checkout", "cart"] {
        for t in (start - 600..end).step_by(60) {
            // Each episode's ratio from ten minutes before it fired until it ended; 0.02 else.
            let ratio = episodes
                .iter()
                .find(|e| {
                    e.service == service
                        && (start + e.at_minutes * 60 - 600..start + e.at_minutes * 60 + 300).contains(&t)
                })
                .map_or(0.02, |e| e.error_ratio);
            writeln!(text, "app_error_ratio{{service=\"{service}\"}} {ratio} {t}")?;
        }
    }
    text.push_str("# EOF\n");
    let openmetrics = dir.join("history.om");
    std::fs::write(&openmetrics, text)?;
    let data = dir.join("prom-data");
    let promtool = std::env::var_os("PROMTOOL").unwrap_or_else(|| "promtool".into());
    let created = tokio::process::Command::new(&promtool)
        .args(["tsdb", "create-blocks-from", "openmetrics", "--quiet"])
        .arg(&openmetrics)
        .arg(&data)
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("promtool must be installed (apt-get install prometheus): {e}"))?;
    anyhow::ensure!(
        created.status.success(),
        "promtool: {}",
        String::from_utf8_lossy(&created.stderr)
    );

    let port = selfheal_e2e::free_port()?;
    std::fs::write(dir.join("prometheus.yml"), "global: {evaluation_interval: 30s}\n")?;
    let prometheus_program = std::env::var_os("PROMETHEUS").unwrap_or_else(|| "prometheus".into());
    let mut prometheus = selfheal_e2e::Process::start(
        "prometheus",
        std::path::Path::new(&prometheus_program),
        &[
            &format!("--config.file={}", dir.join("prometheus.yml").display()),
            &format!("--storage.tsdb.path={}", data.display()),
            "--storage.tsdb.retention.time=30d",
            &format!("--web.listen-address=127.0.0.1:{port}"),
        ],
        &[],
        dir,
    )?;
    let prometheus_url = format!("http://127.0.0.1:{port}");
    selfheal_e2e::wait_ready(&format!("{prometheus_url}/-/ready"), &mut prometheus).await?;

    let config = dir.join("policy.toml");
    std::fs::write(
        &config,
        format!(
            "[metrics]\nprometheus_url = \"{prometheus_url}\"\n[metrics.queries.HighErrorRate]\nerror_rate = 'max(app_error_ratio{{service=\"{{{{service}}}}\"}})'\n\
             [limits]\nper_service_max = 2\nper_service_window = \"2h\"\n"
        ),
    )?;
    let policies = selfheal_e2e::workspace_root().join("deploy/policies");
    let (from, to) = (
        chrono::DateTime::from_timestamp(start, 0)
            .unwrap_or_default()
            .to_rfc3339(),
        chrono::DateTime::from_timestamp(end, 0)
            .unwrap_or_default()
            .to_rfc3339(),
    );
    let replay = |output: &'static str| {
        let (config, policies, from, to) = (config.clone(), policies.clone(), from.clone(), to.clone());
        async move {
            selfheal(
                &[
                    "policy",
                    "replay",
                    "--from",
                    &from,
                    "--to",
                    &to,
                    "--config",
                    &config.display().to_string(),
                    "--policy-dir",
                    &policies.display().to_string(),
                    "--output",
                    output,
                ],
                dir,
            )
            .await
        }
    };
    let (ok, out, err) = replay("json").await?;
    anyhow::ensure!(ok, "replay failed: {err}\n{out}");
    let document: serde_json::Value = serde_json::from_str(&out)?;
    let decisions = document["decisions"].as_array().cloned().unwrap_or_default();
    assert_eq!(decisions.len(), episodes.len(), "one decision per alert written: {out}");

    // What to expect, from the series: the default policy rolls back a critical HighErrorRate
    // whose error ratio is over 5 % and does nothing otherwise; the limit then allows two
    // rollbacks of a service per two hours.
    let mut rollbacks: Vec<(&str, i64)> = Vec::new();
    for (e, decision) in episodes.iter().zip(&decisions) {
        let fired = start + e.at_minutes * 60;
        let time = chrono::DateTime::parse_from_rfc3339(decision["time"].as_str().unwrap_or_default())?;
        assert_eq!(time.timestamp(), fired, "{decision}");
        assert_eq!(decision["service"], e.service, "{decision}");
        assert_eq!(decision["labels"]["severity"], e.severity, "{decision}");
        let input = &decision["input"];
        assert_eq!(
            chrono::DateTime::parse_from_rfc3339(input["alert"]["startsAt"].as_str().unwrap_or_default())?.timestamp(),
            fired - 60,
            "startsAt is when the alert became active: {decision}"
        );
        assert_eq!(
            input["metrics"]["error_rate"].as_f64(),
            Some(e.error_ratio),
            "the metric as it was then: {decision}"
        );

        let wanted = if e.severity == "critical" && e.error_ratio > 0.05 {
            "rollback"
        } else {
            "none"
        };
        // The policy's own answer for this very input.
        let input_file = dir.join(format!("input-{}.json", e.at_minutes));
        std::fs::write(&input_file, serde_json::to_vec(input)?)?;
        let (ok, eval, err) = selfheal(
            &[
                "policy",
                "eval",
                "--input",
                &input_file.display().to_string(),
                "--policy-dir",
                &policies.display().to_string(),
            ],
            dir,
        )
        .await?;
        anyhow::ensure!(ok, "policy eval: {err}");
        let eval: serde_json::Value = serde_json::from_str(&eval)?;
        assert_eq!(eval["decision"]["action"], wanted, "{eval}");
        assert_eq!(decision["policy_action"], wanted, "{decision}");

        let in_window = rollbacks
            .iter()
            .filter(|(s, t)| *s == e.service && fired - t < 2 * 3600)
            .count();
        if wanted == "rollback" && in_window >= 2 {
            assert_eq!(decision["action"], "escalate", "{decision}");
            let refused = decision["refused_by"].as_str().unwrap_or_default();
            assert!(
                refused.starts_with("rate limit: checkout already had 2 automatic actions"),
                "{decision}"
            );
        } else {
            assert_eq!(decision["action"], wanted, "{decision}");
            assert!(decision["refused_by"].is_null(), "{decision}");
            if wanted == "rollback" {
                rollbacks.push((e.service, fired));
            }
        }
    }
    assert_eq!(
        decisions[3]["action"], "escalate",
        "the third rollback inside two hours is refused: {:#}",
        decisions[3]
    );
    assert_eq!(
        document["summary"]["rollback"]["decisions"], 3,
        "{}",
        document["summary"]
    );
    assert_eq!(document["summary"]["none"]["decisions"], 2, "{}", document["summary"]);
    assert_eq!(
        document["summary"]["escalate"]["decisions"], 1,
        "{}",
        document["summary"]
    );
    assert_eq!(document["summary"]["escalate"]["refused"], 1, "{}", document["summary"]);

    // The table says the same, a line per decision and a summary.
    let (ok, table, err) = replay("table").await?;
    anyhow::ensure!(ok, "replay failed: {err}");
    assert!(table.starts_with("TIME"), "{table}");
    assert_eq!(
        table.lines().filter(|l| l.contains("HighErrorRate")).count(),
        episodes.len(),
        "{table}"
    );
    assert!(table.contains("rate limit: checkout"), "{table}");
    assert!(table.contains("6 alerts replayed"), "{table}");
    Ok(())
}
