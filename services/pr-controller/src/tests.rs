use std::process::Command;

use anyhow::Context as _;

use futures::StreamExt;
use selfheal_bus::{Bus, memory::MemoryBus};
use selfheal_proto::v1::{Alert, AlertEvent, Approval};

use std::sync::Arc;

use selfheal_bus::{
    ConsumerSpec, Headers, SharedBus,
    consumer::{Disposition, Handler as _},
    subjects,
};
use selfheal_git::{Author, GitRepo, LocalRepository};
use selfheal_proto::v1::{Action, Decision, RemediationEvent, RemediationState};

use super::*;
use std::time::Duration;

use prost::Message as _;

use crate::{
    batch::carry_out_together,
    reconcile::{ReconcileError, Reconciler},
};

/// A reconciler on `repo` with the default settings, and no forge.
fn local_reconciler(repo: impl GitRepo) -> Reconciler {
    Reconciler::new(
        Arc::new(repo),
        None,
        PrControllerConfig::default()
            .reconcile_settings()
            .expect("valid targets"),
    )
}

fn rollback(incident: &str, service: &str) -> Decision {
    let labels = [("service", service), ("alertname", "HighErrorRate")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut decision = Decision {
        incident_key: incident.into(),
        reason: "error rate".into(),
        alert: Some(AlertEvent {
            alert: Some(Alert {
                status: "firing".into(),
                labels,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    decision.set_action(Action::Rollback);
    decision.set_approval(Approval::Auto);
    decision
}

#[test]
fn a_batch_that_cannot_be_written_fails_every_decision_in_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let bare = dir.path().join("gitops.git");
    let author = Author {
        name: "dev".into(),
        email: "dev@example.com".into(),
    };
    let file = |service: &str, tag: &str| format!("images:\n- name: {service}\n  newTag: {tag}\n");
    let (alpha1, alpha2, beta1) = (file("alpha", "v1"), file("alpha", "v2"), file("beta", "v1"));
    let repo = LocalRepository::init_bare_with_commits(
        &bare,
        "main",
        &[
            (
                "v1",
                vec![
                    ("apps/alpha/kustomization.yaml", alpha1.as_str()),
                    ("apps/beta/kustomization.yaml", beta1.as_str()),
                ],
            ),
            ("alpha v2", vec![("apps/alpha/kustomization.yaml", alpha2.as_str())]),
        ],
        &author,
    )?;
    let reconciler = local_reconciler(repo);
    let git = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new("git").arg("--git-dir").arg(&bare).args(args).output()?;
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    };
    let main_before = git(&["rev-parse", "main"])?;
    // alpha can roll back to v1; beta has no earlier tag, so it is refused (on what the
    // batch sees).
    let work = vec![
        (rollback("aaaa", "alpha"), String::new()),
        (rollback("bbbb", "beta"), String::new()),
    ];

    // Someone holds main's lock: the batch is made in memory but cannot be written.
    std::fs::write(bare.join("refs/heads/main.lock"), "")?;
    let outcomes = carry_out_together(&reconciler, &work);
    assert_eq!(outcomes.len(), 2);
    for outcome in &outcomes {
        assert!(
            matches!(outcome, Err(error) if error.is_transient()),
            "every decision, the refusal too, is to be tried again: {outcome:?}"
        );
    }
    assert_eq!(git(&["rev-parse", "main"])?, main_before, "nothing written");

    // The lock gone, the same work: alpha rolled back once, beta refused.
    std::fs::remove_file(bare.join("refs/heads/main.lock"))?;
    let outcomes = carry_out_together(&reconciler, &work);
    let alpha = outcomes[0].as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(alpha.state(), RemediationState::Merged);
    assert_eq!((alpha.from_value.as_str(), alpha.to_value.as_str()), ("v2", "v1"));
    assert_eq!(git(&["rev-parse", "main"])?, alpha.commit);
    assert!(
        matches!(&outcomes[1], Err(ReconcileError::Refused(_))),
        "{:?}",
        outcomes[1]
    );
    assert_eq!(
        git(&["rev-list", "--count", "main"])?,
        "3",
        "one commit for the one change"
    );
    Ok(())
}

#[tokio::test]
async fn a_hostile_label_becomes_a_failed_event_and_writes_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let bare = dir.path().join("gitops.git");
    let author = Author {
        name: "dev".into(),
        email: "dev@example.com".into(),
    };
    let repo = LocalRepository::init_bare_with_commits(
        &bare,
        "main",
        &[(
            "init",
            vec![(
                "apps/checkout/kustomization.yaml",
                "images:\n- name: checkout\n  newTag: v1\n",
            )],
        )],
        &author,
    )?;
    let refs = || {
        Command::new("git")
            .arg("--git-dir")
            .arg(&bare)
            .args(["for-each-ref"])
            .output()
    };
    let refs_before = refs()?.stdout;
    let bus = MemoryBus::default();
    let handler = RemediationHandler::new(local_reconciler(repo), Arc::new(bus.clone()));

    let decision = rollback("0123456789abcdef", "a\nb: c");
    bus.publish(selfheal_bus::Outgoing {
        subject: subjects::decision("_none"),
        msg_id: "decision.0123456789abcdef".into(),
        headers: Headers::new(),
        payload: decision.encode_to_vec().into(),
    })
    .await?;
    let mut deliveries = bus.subscribe(ConsumerSpec::new("test", &[subjects::DECISIONS])).await?;
    let delivery = deliveries
        .next()
        .await
        .ok_or_else(|| anyhow::anyhow!("no delivery"))??;
    assert_eq!(handler.handle(&delivery).await, Disposition::Ack);

    let events: Vec<RemediationEvent> = bus
        .messages()
        .into_iter()
        .filter(|m| m.subject.starts_with("selfheal.remediations."))
        .map(|m| RemediationEvent::decode(m.payload))
        .collect::<Result<_, _>>()?;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].state(), RemediationState::Failed);
    assert!(events[0].message.contains("service label"), "{}", events[0].message);
    assert!(!events[0].message.contains("b: c"), "the hostile value is not echoed");
    assert_eq!(refs()?.stdout, refs_before, "nothing was written");
    Ok(())
}

/// A bare repository at `bare` whose main has checkout's kustomization at v1, then at v2;
/// with the file's two texts.
fn checkout_at_v1_then_v2(bare: &std::path::Path) -> anyhow::Result<(LocalRepository, String, String)> {
    let author = Author {
        name: "dev".into(),
        email: "dev@example.com".into(),
    };
    let kustomization = |tag: &str| format!("images:\n- name: ghcr.io/acme/checkout\n  newTag: {tag} # release\n");
    let (v1, v2) = (kustomization("v1"), kustomization("v2"));
    let repo = LocalRepository::init_bare_with_commits(
        bare,
        "main",
        &[
            ("v1", vec![("apps/checkout/kustomization.yaml", v1.as_str())]),
            ("v2", vec![("apps/checkout/kustomization.yaml", v2.as_str())]),
        ],
        &author,
    )?;
    Ok((repo, v1, v2))
}

#[tokio::test]
async fn not_ready_without_the_repository_main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let bare = dir.path().join("gitops.git");
    let (repo, _, _) = checkout_at_v1_then_v2(&bare)?;
    let bus: SharedBus = Arc::new(MemoryBus::default());
    let ready = readiness(bus, Arc::new(repo), None, "main".into());
    assert_eq!(ready().await, Ok(()));
    // main deleted (a wrong repository, a broken mirror): not ready, and why.
    let out = Command::new("git")
        .current_dir(&bare)
        .args(["update-ref", "-d", "refs/heads/main"])
        .output()?;
    anyhow::ensure!(out.status.success(), "git update-ref: {out:?}");
    let reason = ready().await.expect_err("not ready without main");
    assert!(reason.contains("has no branch main"), "{reason}");
    // The repository gone altogether.
    std::fs::remove_dir_all(&bare)?;
    let reason = ready().await.expect_err("not ready without the repository");
    assert!(reason.contains(&bare.display().to_string()), "{reason}");
    Ok(())
}

#[tokio::test]
async fn the_kill_switch_stops_waiting_decisions_but_not_people() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let bare = dir.path().join("gitops.git");
    let (repo, _, _) = checkout_at_v1_then_v2(&bare)?;
    let main = || -> anyhow::Result<String> {
        let out = Command::new("git")
            .arg("--git-dir")
            .arg(&bare)
            .args(["rev-parse", "main"])
            .output()?;
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    };
    let before = main()?;
    let bus: SharedBus = Arc::new(MemoryBus::default());
    let control = selfheal_bus::control::open(&bus).await?;
    selfheal_bus::control::set_kill_switch(&control, true).await?;
    let handler = RemediationHandler::new(local_reconciler(repo), bus.clone()).with_kill_switch(control.clone());
    let decision = rollback("0123456789abcdef", "checkout");

    // Decided before the switch was turned on, carried out after: stopped, and people told.
    let stopped = handler
        .carry_out(decision.clone(), "checkout".into(), None, tracing::Span::none())
        .await?
        .context("an event")?;
    assert_eq!(stopped.state(), RemediationState::Failed);
    assert_eq!(stopped.message, KILL_SWITCH_REFUSAL);
    assert_eq!(main()?, before, "nothing written");

    // A person's retry is carried out, switch or not.
    let retried = handler
        .carry_out(
            decision.clone(),
            "checkout".into(),
            Some("retried by alice"),
            tracing::Span::none(),
        )
        .await?
        .context("an event")?;
    assert_eq!(retried.state(), RemediationState::Merged, "{}", retried.message);
    assert_eq!((retried.from_value.as_str(), retried.to_value.as_str()), ("v2", "v1"));
    assert_eq!(main()?, retried.commit);

    // Redelivered with the switch still on (as after a crash before the record was written):
    // the change is on main, so it is announced as merged, not called failed.
    let redelivered = handler
        .carry_out(decision.clone(), "checkout".into(), None, tracing::Span::none())
        .await?
        .context("an event")?;
    assert_eq!(
        (redelivered.state(), redelivered.commit.as_str()),
        (RemediationState::Merged, retried.commit.as_str())
    );

    // With the switch off, selfheal acts again (here: finds its change already made).
    selfheal_bus::control::set_kill_switch(&control, false).await?;
    let again = handler
        .carry_out(decision, "checkout".into(), None, tracing::Span::none())
        .await?
        .context("an event")?;
    assert_eq!(
        (again.state(), again.commit.as_str()),
        (RemediationState::Merged, retried.commit.as_str())
    );
    Ok(())
}

#[tokio::test]
async fn an_escalated_fix_is_reverted_once() -> anyhow::Result<()> {
    escalate_after_the_window(false).await
}

#[tokio::test]
async fn the_kill_switch_holds_the_revert_of_an_escalated_fix() -> anyhow::Result<()> {
    escalate_after_the_window(true).await
}

/// A merged rollback that did not help escalates after its window, reverted unless the kill
/// switch is on.
async fn escalate_after_the_window(kill_switch: bool) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let bare = dir.path().join("gitops.git");
    let (repo, v1, v2) = checkout_at_v1_then_v2(&bare)?;
    let show = || -> anyhow::Result<String> {
        let out = Command::new("git")
            .arg("--git-dir")
            .arg(&bare)
            .args(["show", "main:apps/checkout/kustomization.yaml"])
            .output()?;
        Ok(String::from_utf8(out.stdout)?)
    };
    let reconciler = Arc::new(local_reconciler(repo));
    let decision = rollback("feedface", "checkout");
    let merged = reconciler.reconcile(&decision, "")?;
    assert_eq!(show()?, v1);

    let bus = MemoryBus::default();
    let shared: SharedBus = Arc::new(bus.clone());
    let control = selfheal_bus::control::open(&shared).await?;
    selfheal_bus::control::set_kill_switch(&control, kill_switch).await?;
    let control = Some(&control);
    let verifier = verify::Verifier::new(
        Arc::new(selfheal_bus::kv::MemoryKeyValue::default()),
        Duration::from_secs(60),
    );
    let merged_at = chrono::Utc::now();
    verifier.record_merged(&merged, "checkout", merged_at).await?;
    assert_eq!(
        sweep_once(&verifier, Some(&reconciler), control, &shared, merged_at).await?,
        0,
        "inside the window"
    );
    let later = merged_at + chrono::Duration::minutes(2);
    assert_eq!(
        sweep_once(&verifier, Some(&reconciler), control, &shared, later).await?,
        1
    );
    if kill_switch {
        assert_eq!(show()?, v1, "selfheal's change stays: no automatic action");
    } else {
        assert_eq!(show()?, v2, "selfheal's change is undone");
    }
    assert_eq!(
        sweep_once(&verifier, Some(&reconciler), control, &shared, later).await?,
        0,
        "once"
    );

    let events: Vec<RemediationEvent> = bus
        .messages()
        .into_iter()
        .map(|m| RemediationEvent::decode(m.payload))
        .collect::<Result<_, _>>()?;
    let states: Vec<(String, RemediationState)> = events.iter().map(|e| (e.incident_key.clone(), e.state())).collect();
    let escalated = ("feedface".to_string(), RemediationState::Escalated);
    let message = &events.last().context("an event")?.message;
    if kill_switch {
        assert_eq!(states, [escalated]);
        assert!(message.contains("not reverted: the kill switch is on"), "{message}");
    } else {
        assert_eq!(states, [("feedfacer".to_string(), RemediationState::Merged), escalated]);
        assert!(message.contains("selfheal reverted its change in"), "{message}");
    }
    Ok(())
}
