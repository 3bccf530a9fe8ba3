//! The seeds' scenarios on real components: nats-server, Prometheus and Alertmanager (Debian's
//! packages), the four selfheal services, and `demo-app` — a service whose error rate follows its
//! image tag and whose CPU follows its replicas, and which (TEST ONLY) plays Argo CD's part by
//! applying the GitOps repository's main branch every half second.
//!
//! * Scenario 1 (error rate): `shop` runs the bad v1.5.0 → 12 % errors → HighErrorRate →
//!   rollback to v1.4.1 on main → applied → recovery → resolved → verified.
//! * Scenario 2 (CPU): `search` runs at 160 % of one replica → HighCPU → scale 1 → 2 replicas →
//!   applied → recovery → resolved → verified.
//!
//! * Faults: SIGKILL of each selfheal service once in the middle of an incident (then a restart),
//!   nats-server killed and restarted, the GitOps repository refusing ref updates for a while —
//!   every incident still ends verified, with one decision, one commit and one remediation.
//! * Burst: 200 incidents over 50 services at once — every one decided, the per-service limit
//!   held, no duplicate commit; selfheal's own latency (webhook received → commit on main) printed.
//!
//! Short scrape (1 s) and evaluation intervals keep it fast. Each incident's MTTR and where its
//! seconds went is printed (to stderr, past the test harness's capture).

use std::{collections::BTreeMap, io::Write as _, time::Duration};

use anyhow::{Context, ensure};
use futures::StreamExt;
use prost::Message as _;
use selfheal_e2e::{
    git,
    stack::{Demo, Stack, events, seconds, selfheal_commits, until},
    wait_for,
};
use selfheal_proto::v1::{Decision, RemediationEvent, RemediationState};

/// The burst measures latency on a machine of two cores: it runs alone (`write`), while the other
/// tests here, which only check outcomes, may run beside each other (`read`). Otherwise the test
/// harness runs them at once and the burst measures their stacks starting up and being killed.
static ALONE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Prints where the incident's seconds went, from the events' own timestamps.
fn breakdown(title: &str, injected: f64, decision: &Decision, events: &[RemediationEvent], applied: f64) -> f64 {
    let alert = decision.alert.as_ref();
    let starts = seconds(alert.and_then(|a| a.alert.as_ref()).and_then(|a| a.starts_at.as_ref())).unwrap_or(f64::NAN);
    let received = seconds(alert.and_then(|a| a.received_at.as_ref())).unwrap_or(f64::NAN);
    let decided = seconds(decision.decided_at.as_ref()).unwrap_or(f64::NAN);
    let merged = events
        .iter()
        .find(|e| e.state() == RemediationState::Merged)
        .and_then(|e| seconds(e.at.as_ref()))
        .unwrap_or(f64::NAN);
    let verified = events.iter().find(|e| e.state() == RemediationState::Verified);
    let resolved = verified.map(|e| starts + e.mttr_seconds).unwrap_or(f64::NAN);
    let verified_at = verified.and_then(|e| seconds(e.at.as_ref())).unwrap_or(f64::NAN);
    let mttr = verified.map(|e| e.mttr_seconds).unwrap_or(f64::NAN);
    let rows = [
        ("fault injected → Prometheus alert starts", starts - injected),
        ("alert starts → webhook received (Alertmanager)", received - starts),
        ("webhook received → decision (policy)", decided - received),
        ("decision → commit on main (pr-controller)", merged - decided),
        ("commit on main → applied (sync stand-in)", applied - merged),
        ("applied → alert resolved (recovery)", resolved - applied),
        ("alert resolved → verified (selfheal)", verified_at - resolved),
    ];
    let mut out = format!(
        "\n{title}: MTTR {mttr:.2} s (alert start → resolution); selfheal's own share (webhook → commit on main) {:.0} ms\n",
        (merged - received) * 1000.0
    );
    for (hop, took) in rows {
        out.push_str(&format!("  {hop:<48} {took:>8.3} s\n"));
    }
    // Straight to the terminal: the test harness captures print!, and this is the point.
    let _ = std::io::stderr().write_all(out.as_bytes());
    merged - received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_rate_and_cpu_incidents_heal_on_real_prometheus_and_alertmanager() -> anyhow::Result<()> {
    let _beside_others = ALONE.read().await;
    let temp = tempfile::tempdir()?;
    // shop: v1.4.1 then the bad v1.5.0, low CPU. search: a good release, CPU for 1.6 replicas on 1.
    let stack = Stack::start(
        temp.path(),
        &[
            ("shop", &[("v1.4.1", 2), ("v1.5.0", 2)], 0.3),
            ("search", &[("v2.0.0", 1)], 1.6),
        ],
        &[],
        &[],
    )
    .await?;
    // The faults are live from here: Prometheus scrapes them.
    let injected = chrono::Utc::now();
    let injected = injected.timestamp() as f64 + f64::from(injected.timestamp_subsec_nanos()) / 1e9;
    let client = reqwest::Client::new();

    // Both get healed in git, then applied: watched together, so each one's time is its own.
    let wanted = [("shop", ("v1.4.1", "2")), ("search", ("v2.0.0", "2"))];
    let mut applied: BTreeMap<&str, f64> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while applied.len() < wanted.len() {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "not healed and applied in 90 s: {applied:?}\n{}",
            stack.dump()
        );
        for (service, (tag, replicas)) in wanted {
            if applied.contains_key(service) {
                continue;
            }
            if let Some((now_tag, now_replicas)) = stack.deployed(&client, service).await
                && now_tag == tag
                && now_replicas == replicas
            {
                let now = chrono::Utc::now();
                applied.insert(
                    service,
                    now.timestamp() as f64 + f64::from(now.timestamp_subsec_nanos()) / 1e9,
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(stack.main_file("shop")?.contains("newTag: v1.4.1 # release pipeline"));
    assert!(stack.main_file("search")?.contains("count: 2"));

    // Then recovered, resolved and verified.
    let mut shares = Vec::new();
    for (service, title, action) in [
        ("shop", "Scenario 1 (error rate → rollback)", "rollback"),
        ("search", "Scenario 2 (CPU → scale up)", "scale"),
    ] {
        let (decisions, events) = wait_for(Duration::from_secs(90), &format!("{service} verified"), || async {
            let (decisions, events) = events(&stack.nats_url, service).await.ok()?;
            events
                .iter()
                .any(|e| e.state() == RemediationState::Verified)
                .then_some((decisions, events))
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", stack.dump()))?;
        let acted: Vec<&Decision> = decisions
            .iter()
            .filter(|d| selfheal_proto::names::action(d.action()) == action)
            .collect();
        assert_eq!(acted.len(), 1, "{service}: one {action} decision: {decisions:?}");
        let merged = events.iter().filter(|e| e.state() == RemediationState::Merged).count();
        assert_eq!(merged, 1, "{service}: one remediation");
        shares.push(breakdown(title, injected, acted[0], &events, applied[service]));
    }
    for process in stack.processes.values() {
        ensure!(
            process.output().lines().all(|l| !l.contains("panicked")),
            "{} panicked",
            process.name
        );
    }
    assert!(shares.iter().all(|s| s.is_finite() && *s > 0.0), "{shares:?}");
    Ok(())
}

/// The faults the seeds name, each once, each in the middle of its own incident. A service is
/// killed while it holds its message unacked — held there by something it waits on, so the kill
/// lands mid-work every time — and the message is delivered again to the service started after.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// SIGKILL the gateway before the alert fires; Alertmanager sends again until it is back.
    Gateway,
    /// SIGKILL the policy while it holds the alert (waiting on the pr-controller, paused).
    Policy,
    /// SIGKILL the pr-controller while it holds the decision (main is locked: it cannot finish).
    PrController,
    /// SIGKILL the notifier while it holds the remediation (the audit database is locked).
    Notifier,
    /// SIGKILL nats-server with the alert stored and not yet delivered (the policy is down), and
    /// start it again: the alert is delivered from what it kept.
    Nats,
    /// The GitOps repository refuses ref updates (a stale lock on main) for a few seconds.
    Forge,
}

/// How many times `consumer` got a message again, as its (current) process counts.
async fn redeliveries(stack: &Stack, client: &reqwest::Client, process: &str, consumer: &str) -> anyhow::Result<f64> {
    stack
        .metric(
            client,
            process,
            &format!("selfheal_consumer_redeliveries_total{{consumer=\"{consumer}\"}}"),
        )
        .await
}

/// How many lines of `process`'s log contain `text`.
fn logged(stack: &Stack, process: &str, text: &str) -> usize {
    stack
        .processes
        .get(process)
        .map_or(0, |p| p.output().matches(text).count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_lose_no_incident_and_duplicate_no_remediation() -> anyhow::Result<()> {
    let _beside_others = ALONE.read().await;
    let temp = tempfile::tempdir()?;
    let faults = [
        ("fgateway", Fault::Gateway),
        ("fpolicy", Fault::Policy),
        ("fcontroller", Fault::PrController),
        ("fnotifier", Fault::Notifier),
        ("fnats", Fault::Nats),
        ("fforge", Fault::Forge),
    ];
    let demos: Vec<Demo<'_>> = faults.iter().map(|(s, _)| (*s, &[("v1.4.1", 1u32)][..], 0.2)).collect();
    // Redelivery after a crash comes this long after the work was taken. The policy waits for
    // the pr-controller's answer as long as the pr-controller stays paused.
    let ack_wait = [
        ("SELFHEAL_POLICY_ACK_WAIT", "3s".to_string()),
        ("SELFHEAL_PR_CONTROLLER_ACK_WAIT", "3s".to_string()),
        ("SELFHEAL_NOTIFIER_ACK_WAIT", "3s".to_string()),
        ("SELFHEAL_POLICY_TARGET__TIMEOUT", "60s".to_string()),
    ];
    let mut stack = Stack::start(temp.path(), &demos, &[], &ack_wait).await?;
    let audit_db = format!("sqlite://{}", temp.path().join("audit.db").display());
    let client = reqwest::Client::new();

    for (service, fault) in faults {
        let started = tokio::time::Instant::now();
        let forge_redeliveries = redeliveries(&stack, &client, "pr-controller", "pr-controller").await?;
        stack.deploy(service, "v1.5.0")?;
        let alert = format!("selfheal.alerts.firing.{service}");
        match fault {
            Fault::Gateway => {
                stack.kill("gateway").await?;
                until("the alert firing", &stack, async || {
                    stack.firing(&client, "HighErrorRate", service).await
                })
                .await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
                stack.launch("gateway").await?;
            }
            Fault::Policy => {
                stack.processes["pr-controller"].pause()?;
                until("the policy holding the alert", &stack, async || {
                    stack.in_work("policy").await > 0
                })
                .await?;
                stack.kill("policy").await?;
                stack.processes["pr-controller"].resume()?;
                stack.launch("policy").await?;
            }
            Fault::PrController => {
                let lock = stack.repo.join("refs/heads/main.lock");
                std::fs::write(&lock, "")?;
                let failed = logged(&stack, "pr-controller", "remediation not finished");
                until("the pr-controller holding the decision", &stack, async || {
                    logged(&stack, "pr-controller", "remediation not finished") > failed
                })
                .await?;
                stack.kill("pr-controller").await?;
                std::fs::remove_file(&lock)?;
                stack.launch("pr-controller").await?;
            }
            Fault::Notifier => {
                use sqlx::Connection as _;
                let mut holder = sqlx::SqliteConnection::connect(&audit_db).await?;
                sqlx::query("BEGIN EXCLUSIVE").execute(&mut holder).await?;
                let failed = logged(&stack, "notifier", "audit row not written");
                let remediation = format!("selfheal.remediations.{service}");
                until("the notifier holding the remediation", &stack, async || {
                    stack.on_bus(&remediation).await && logged(&stack, "notifier", "audit row not written") > failed
                })
                .await?;
                stack.kill("notifier").await?;
                sqlx::query("ROLLBACK").execute(&mut holder).await?;
                holder.close().await?;
                stack.launch("notifier").await?;
            }
            Fault::Nats => {
                stack.kill("policy").await?;
                until("the alert on the bus", &stack, async || stack.on_bus(&alert).await).await?;
                let stored = stack.sequence_on_bus(&alert).await?;
                stack.nats.first().crash_and_restart().await?;
                assert_eq!(
                    stack.sequence_on_bus(&alert).await?,
                    stored,
                    "the alert kept across the SIGKILL"
                );
                stack.launch("policy").await?;
            }
            Fault::Forge => {
                let lock = stack.repo.join("refs/heads/main.lock");
                until("the alert firing", &stack, async || {
                    stack.firing(&client, "HighErrorRate", service).await
                })
                .await?;
                std::fs::write(&lock, "")?;
                let decision = format!("selfheal.decisions.{service}");
                until("the decision on the bus", &stack, async || {
                    stack.on_bus(&decision).await
                })
                .await?;
                tokio::time::sleep(Duration::from_secs(3)).await;
                std::fs::remove_file(&lock)?;
            }
        }

        // The incident ends verified, with exactly one remediation.
        let (decisions, events) = wait_for(
            Duration::from_secs(120),
            &format!("{service} verified after {fault:?}"),
            || async {
                let (decisions, events) = events(&stack.nats_url, service).await.ok()?;
                events
                    .iter()
                    .any(|e| matches!(e.state(), RemediationState::Verified | RemediationState::Escalated))
                    .then_some((decisions, events))
                // (Escalated ends the wait too, to fail at once: the rollback target is good.)
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", stack.dump()))?;
        let rollbacks: Vec<&Decision> = decisions
            .iter()
            .filter(|d| d.action() == selfheal_proto::v1::Action::Rollback)
            .collect();
        assert_eq!(rollbacks.len(), 1, "{fault:?}: one decision: {decisions:?}");
        let incident = &rollbacks[0].incident_key;
        let merged = events.iter().filter(|e| e.state() == RemediationState::Merged).count();
        let ended = events
            .iter()
            .filter(|e| matches!(e.state(), RemediationState::Verified | RemediationState::Escalated))
            .count();
        assert_eq!(
            (merged, ended),
            (1, 1),
            "{fault:?}: one remediation, one ending: {events:?}"
        );
        assert_eq!(
            selfheal_commits(&stack.repo, service)?,
            1,
            "{fault:?}: one commit on main"
        );
        let marked = git(
            &stack.repo,
            &["log", "--format=%H", &format!("--grep=^Incident: {incident}$"), "main"],
        )?;
        assert_eq!(
            marked.lines().count(),
            1,
            "{fault:?}: one commit marked with the incident"
        );
        assert!(
            events.iter().any(|e| e.state() == RemediationState::Verified),
            "{fault:?}: the rollback to a good release is verified, not escalated: {events:?}"
        );
        // The fault did bite: the message was delivered again.
        let (process, consumer, before) = match fault {
            Fault::Policy => ("policy", "policy", 0.0),
            Fault::PrController => ("pr-controller", "pr-controller", 0.0),
            Fault::Notifier => ("notifier", "notifier", 0.0),
            Fault::Forge => ("pr-controller", "pr-controller", forge_redeliveries),
            Fault::Gateway | Fault::Nats => ("", "", 0.0),
        };
        let again = if process.is_empty() {
            0.0
        } else {
            // (The notifier may take its redelivery after the incident is verified.)
            wait_for(
                Duration::from_secs(30),
                &format!("{fault:?}: a redelivery counted"),
                || async {
                    let counted = redeliveries(&stack, &client, process, consumer).await.ok()? - before;
                    (counted >= 1.0).then_some(counted)
                },
            )
            .await?
        };
        match fault {
            Fault::Forge => ensure!(
                stack.processes["pr-controller"]
                    .output()
                    .contains("remediation not finished; retrying"),
                "the locked repository never made the pr-controller retry"
            ),
            Fault::Gateway => ensure!(
                stack.processes["alertmanager"]
                    .output()
                    .to_lowercase()
                    .contains("connection refused"),
                "Alertmanager never failed to reach the gateway"
            ),
            _ => {}
        }
        let delivered_again = match fault {
            Fault::Gateway => "Alertmanager sent the alert again".to_string(),
            Fault::Nats => "the alert kept across the crash was delivered after it".to_string(),
            _ => format!("{again} redelivery(ies) counted"),
        };
        let _ = std::io::stderr().write_all(
            format!(
                "fault {fault:?}: incident {incident} verified in {:.1} s, 1 decision, 1 commit, 1 remediation; {delivered_again}\n",
                started.elapsed().as_secs_f64()
            )
            .as_bytes(),
        );
    }

    // The notifier, killed mid-incident, still recorded every ending in the audit log.
    let db = format!("sqlite://{}?mode=ro", temp.path().join("audit.db").display());
    let rows: Vec<(String,)> = wait_for(Duration::from_secs(30), "every ending in the audit log", || async {
        let pool = sqlx::SqlitePool::connect(&db).await.ok()?;
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT service FROM audit_log WHERE kind = 'remediation' AND state IN ('verified', 'escalated')",
        )
        .fetch_all(&pool)
        .await
        .ok()?;
        pool.close().await;
        (rows.len() >= faults.len()).then_some(rows)
    })
    .await?;
    assert_eq!(rows.len(), faults.len(), "one ending per incident: {rows:?}");
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// 200 incidents over 50 services at once, straight from "Alertmanager" to the gateway: every one
/// decided, the per-service limit held (2 actions each, the rest escalated naming the limit), one
/// commit per action and none twice; selfheal's own latency (webhook received → commit on main)
/// printed as p50/p99.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_200_incidents_is_decided_within_limits_without_duplicates() -> anyhow::Result<()> {
    let _alone = ALONE.write().await;
    let temp = tempfile::tempdir()?;
    let names: Vec<String> = (0..50).map(|i| format!("burst{i:02}")).collect();
    let releases: &[(&str, u32)] = &[("v1.3.0", 1), ("v1.4.1", 1), ("v1.5.0", 1)];
    let more: Vec<(&str, &[(&str, u32)])> = names.iter().map(|n| (n.as_str(), releases)).collect();
    let limits = [
        ("SELFHEAL_POLICY_LIMITS__PER_SERVICE_MAX", "2".to_string()),
        ("SELFHEAL_POLICY_LIMITS__COOLDOWN", "0s".to_string()),
        ("SELFHEAL_POLICY_LIMITS__GLOBAL_MAX", "100".to_string()),
    ];
    let stack = Stack::start(temp.path(), &[], &more, &limits).await?;
    let gateway = stack.specs["gateway"].ready.trim_end_matches("/readyz").to_string();

    // Everything decided and done, watched as it is published (polling the stream would load
    // the very server the burst goes through).
    let js = async_nats::jetstream::new(async_nats::connect(&stack.nats_url).await?);
    let mut published = js
        .get_stream("SELFHEAL")
        .await?
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subjects: vec!["selfheal.decisions.>".into(), "selfheal.remediations.>".into()],
            ..Default::default()
        })
        .await?
        .messages()
        .await?;

    // Four incidents per service (distinct start times), all at once.
    let client = reqwest::Client::new();
    let cpu_before = stack.cpu_seconds();
    let bodies: Vec<Vec<u8>> = names
        .iter()
        .flat_map(|service| {
            (0..4).map(move |n| {
                let labels = serde_json::json!({
                    "alertname": "HighErrorRate", "service": service, "severity": "critical", "auto_heal": "true",
                });
                selfheal_e2e::webhook_body(labels, &format!("2026-11-28T10:00:0{n}Z"), &format!("{service}{n}"))
            })
        })
        .collect();
    let posts = bodies
        .into_iter()
        .map(|body| selfheal_e2e::post_alerts(&client, &gateway, body));
    let answers = futures::future::join_all(posts).await;
    let accepted = answers
        .into_iter()
        .filter(|a| a.as_ref().is_ok_and(|r| r.status().is_success()))
        .count();
    assert_eq!(accepted, 200, "every alert accepted");

    // Every incident decided; every action carried out (a rollback, merged).
    let mut decided: BTreeMap<String, Vec<Decision>> = BTreeMap::new();
    let mut done: BTreeMap<String, Vec<RemediationEvent>> = BTreeMap::new();
    let (mut decisions_seen, mut rollbacks, mut merged) = (0, 0, 0);
    let everything = async {
        while decisions_seen < 200 || merged < rollbacks {
            let message = published
                .next()
                .await
                .context("the stream ended")?
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if message.subject.starts_with("selfheal.decisions.") {
                let decision = Decision::decode(message.payload.clone())?;
                decisions_seen += 1;
                rollbacks += usize::from(decision.action() == selfheal_proto::v1::Action::Rollback);
                let service = message.subject.rsplit('.').next().unwrap_or_default().to_string();
                decided.entry(service).or_default().push(decision);
            } else {
                let event = RemediationEvent::decode(message.payload.clone())?;
                merged += usize::from(event.state() == RemediationState::Merged);
                done.entry(event.service.clone()).or_default().push(event);
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(120), everything)
        .await
        .map_err(|_| anyhow::anyhow!("the burst was not done in 120 s\n{}", stack.dump()))??;
    let cpu_after = stack.cpu_seconds();
    let mut all_decisions = Vec::new();
    let mut all_events = Vec::new();
    for service in &names {
        let decisions = decided.remove(service).unwrap_or_default();
        let events = done.remove(service).unwrap_or_default();
        assert_eq!(decisions.len(), 4, "{service}: four incidents, four decisions");
        let acted: Vec<&Decision> = decisions
            .iter()
            .filter(|d| d.action() == selfheal_proto::v1::Action::Rollback)
            .collect();
        assert_eq!(acted.len(), 2, "{service}: the per-service limit of 2: {decisions:?}");
        for refused in decisions
            .iter()
            .filter(|d| d.action() != selfheal_proto::v1::Action::Rollback)
        {
            assert_eq!(refused.action(), selfheal_proto::v1::Action::Escalate);
            assert!(
                refused.reason.contains("limit") || refused.reason.contains("rolled back"),
                "{service}: an escalation names its limit: {}",
                refused.reason
            );
        }
        assert_eq!(
            selfheal_commits(&stack.repo, service)?,
            2,
            "{service}: one commit per action, none twice"
        );
        all_decisions.extend(decisions);
        all_events.extend(events);
    }
    let keys: std::collections::BTreeSet<&str> = all_decisions.iter().map(|d| d.incident_key.as_str()).collect();
    assert_eq!(keys.len(), 200, "200 incidents, each decided once");

    // selfheal's own share per acted incident: the gateway received the webhook → commit on main.
    let received: BTreeMap<&str, f64> = all_decisions
        .iter()
        .filter_map(|d| {
            Some((
                d.incident_key.as_str(),
                seconds(d.alert.as_ref()?.received_at.as_ref())?,
            ))
        })
        .collect();
    let mut latencies: Vec<f64> = all_events
        .iter()
        .filter(|e| e.state() == RemediationState::Merged)
        .filter_map(|e| Some((seconds(e.at.as_ref())? - received.get(e.incident_key.as_str())?) * 1000.0))
        .collect();
    latencies.sort_by(f64::total_cmp);
    assert_eq!(latencies.len(), 100);
    // Where it went: webhook → decision (policy, every incident), decision → commit (pr-controller).
    let decided: BTreeMap<&str, f64> = all_decisions
        .iter()
        .filter_map(|d| Some((d.incident_key.as_str(), seconds(d.decided_at.as_ref())?)))
        .collect();
    let mut to_decision: Vec<f64> = all_decisions
        .iter()
        .filter_map(|d| Some((decided.get(d.incident_key.as_str())? - received.get(d.incident_key.as_str())?) * 1000.0))
        .collect();
    to_decision.sort_by(f64::total_cmp);
    let mut to_commit: Vec<f64> = all_events
        .iter()
        .filter(|e| e.state() == RemediationState::Merged)
        .filter_map(|e| Some((seconds(e.at.as_ref())? - decided.get(e.incident_key.as_str())?) * 1000.0))
        .collect();
    to_commit.sort_by(f64::total_cmp);
    let report = format!(
        "\nBurst: 200 incidents over 50 services → 100 rollbacks, 100 escalations (per-service limit). \
         selfheal's share (webhook received → commit on main), ms: p50 {:.0}, p90 {:.0}, p99 {:.0}, max {:.0}\n",
        percentile(&latencies, 50.0),
        percentile(&latencies, 90.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or(f64::NAN)
    ) + &format!(
        "  webhook → decision (200): p50 {:.0}, p99 {:.0}; decision → commit (100): p50 {:.0}, p99 {:.0}\n",
        percentile(&to_decision, 50.0),
        percentile(&to_decision, 99.0),
        percentile(&to_commit, 50.0),
        percentile(&to_commit, 99.0)
    ) + &format!(
        "  CPU used from the first webhook until all were done, s: {}\n",
        cpu_after
            .iter()
            .filter_map(|(name, after)| Some(format!("{name} {:.2}", after - cpu_before.get(name)?)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = std::io::stderr().write_all(report.as_bytes());
    Ok(())
}
