//! GitLab as the forge, end to end: the real pr-controller and nats-server against a local server
//! speaking GitLab's REST API v4 (`selfheal_e2e::fake_gitlab`), backed by a real bare repository.
//! A rollback that needs approval makes one commit on `selfheal/<key>`; the pr-controller is
//! killed while its request to open the merge request is in flight; restarted, it opens exactly one
//! (title, description, labels); `Approve` merges it through the merge API — after a 429 with
//! `Retry-After`, waited out — main holds the change, the alert resolves, and the remediation is
//! `verified`.

use std::time::Duration;

use anyhow::Context;
use axum::http::Method;
use prost::Message as _;
use selfheal_e2e::{
    Nats, Process, binary, decision,
    fake_gitlab::{FakeGitLab, PROJECT, TOKEN},
    free_port,
    git_backend::GitBackend,
    wait_for, wait_ready,
};
use selfheal_proto::v1::{
    Action, Alert, AlertEvent, Approval, ApproveRequest, DescribeTargetRequest, RemediationEvent, RemediationState,
    remediations_client::RemediationsClient,
};

const PATH: &str = "apps/checkout/kustomization.yaml";
const GRPC_TOKEN: &str = "grpc-token";

fn kustomization(tag: &str) -> String {
    format!(
        "# checkout, production\napiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nimages:\n  - name: ghcr.io/acme/checkout\n    newTag: {tag} # the release\n"
    )
}

/// Every remediation event in the stream for `incident`, in order.
async fn events(js: &async_nats::jetstream::Context, incident: &str) -> Option<Vec<RemediationEvent>> {
    let mut stream = js.get_stream("SELFHEAL").await.ok()?;
    let info = stream.info().await.ok()?.clone();
    let mut found = Vec::new();
    for sequence in info.state.first_sequence..=info.state.last_sequence {
        let Ok(message) = stream.get_raw_message(sequence).await else {
            continue;
        };
        if message.subject.starts_with("selfheal.remediations.") {
            let event = RemediationEvent::decode(message.payload).ok()?;
            if event.incident_key == incident {
                found.push(event);
            }
        }
    }
    Some(found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_request_per_incident_across_a_crash_merged_after_approval_and_verified() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let history: Vec<Vec<(&str, String)>> = ["v1.0.0", "v1.1.0", "v1.2.0"]
        .iter()
        .map(|tag| vec![(PATH, kustomization(tag)), ("README.md", "# gitops\n".to_string())])
        .collect();
    let repo = GitBackend::create(&temp.path().join("gitops.git"), &history)?;
    let main_before = repo.tip("main").context("main")?;
    let gitlab = FakeGitLab::start(repo.clone()).await?;
    // The first request to open the merge request is held unanswered: the crash window.
    gitlab.fault(Method::POST, "/merge_requests", 0, &[], 1);
    // The merge meets GitLab's rate limit once.
    gitlab.fault(
        Method::PUT,
        "/merge",
        429,
        &[("retry-after", "1"), ("ratelimit-remaining", "0")],
        1,
    );

    let nats = Nats::start().await?;
    let (listen, grpc) = (free_port()?, free_port()?);
    let env = vec![
        ("SELFHEAL_PR_CONTROLLER_LISTEN", format!("127.0.0.1:{listen}")),
        ("SELFHEAL_PR_CONTROLLER_GRPC_LISTEN", format!("127.0.0.1:{grpc}")),
        ("SELFHEAL_PR_CONTROLLER_GRPC_TOKEN", GRPC_TOKEN.to_string()),
        ("SELFHEAL_PR_CONTROLLER_NATS_URL", nats.url()),
        ("SELFHEAL_PR_CONTROLLER_ACK_WAIT", "2s".to_string()),
        ("SELFHEAL_PR_CONTROLLER_GITLAB__PROJECT", PROJECT.to_string()),
        ("SELFHEAL_PR_CONTROLLER_GITLAB__API_URL", gitlab.api_url.clone()),
        ("SELFHEAL_PR_CONTROLLER_GITLAB__TOKEN", TOKEN.to_string()),
        ("RUST_LOG", "info".to_string()),
    ];
    let program = binary("selfheal-pr-controller")?;
    let start = |name: &str| Process::start(name, &program, &[], &env, temp.path());
    let mut first = start("pr-controller-1")?;
    wait_ready(&format!("http://127.0.0.1:{listen}/readyz"), &mut first).await?;

    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let labels = [
        ("service", "checkout"),
        ("cluster", "prod"),
        ("alertname", "HighErrorRate"),
    ];
    let held = decision("gitlab1", &labels, Action::Rollback, Approval::Required);
    js.publish("selfheal.decisions.checkout", held.encode_to_vec().into())
        .await?
        .await?;
    wait_for(
        Duration::from_secs(20),
        "the request to open the merge request",
        || async { gitlab.with(|h| h.held == 1).then_some(()) },
    )
    .await
    .with_context(|| first.output())?;
    first.kill().await?;
    let branch = repo.tip("selfheal/gitlab1").context("the commit was made")?;
    assert!(gitlab.with(|h| h.merge_requests.is_empty()), "no merge request yet");
    gitlab.release();

    // Restarted: the unacked decision comes back, and the merge request is opened once.
    let mut second = start("pr-controller-2")?;
    wait_ready(&format!("http://127.0.0.1:{listen}/readyz"), &mut second).await?;
    let opened = wait_for(Duration::from_secs(30), "the opened remediation", || async {
        events(&js, "gitlab1")
            .await?
            .into_iter()
            .find(|e| e.state() == RemediationState::Opened)
    })
    .await
    .with_context(|| second.output())?;
    let requests = gitlab.with(|h| h.merge_requests.clone());
    assert_eq!(requests.len(), 1, "one merge request for the incident");
    let request = &requests[0];
    assert_eq!(
        (request.source_branch.as_str(), request.target_branch.as_str()),
        ("selfheal/gitlab1", "main")
    );
    assert_eq!(request.title, "fix(prod): roll back checkout to v1.1.0");
    assert!(request.description.contains("gitlab1"), "{}", request.description);
    assert!(request.description.contains("HighErrorRate"), "{}", request.description);
    assert_eq!(request.labels, ["selfheal", "auto-remediation"]);
    assert_eq!(
        opened.pull_request_url,
        format!(
            "{}/acme/gitops/-/merge_requests/1",
            gitlab.api_url.trim_end_matches("/api/v4")
        )
    );
    assert_eq!(
        repo.tip("selfheal/gitlab1"),
        Some(branch.clone()),
        "the same single commit"
    );
    assert_eq!(
        repo.log(&branch, PATH, 10)?.len(),
        4,
        "three versions, then selfheal's one commit"
    );
    assert_eq!(
        repo.tip("main"),
        Some(main_before.clone()),
        "approval required: nothing merged"
    );

    // DescribeTarget reads main and its history through GitLab's API.
    let mut client = RemediationsClient::connect(format!("http://127.0.0.1:{grpc}")).await?;
    let mut describe = tonic::Request::new(DescribeTargetRequest {
        service: "checkout".into(),
        cluster: "prod".into(),
        ..Default::default()
    });
    describe
        .metadata_mut()
        .insert("authorization", format!("Bearer {GRPC_TOKEN}").parse()?);
    let target = client.describe_target(describe).await?.into_inner();
    assert_eq!(
        (
            target.repository.as_str(),
            target.path.as_str(),
            target.current_tag.as_str()
        ),
        ("gitlab:acme/gitops", PATH, "v1.2.0")
    );
    assert_eq!(target.earlier_tags, ["v1.1.0", "v1.0.0"]);

    // A person approves: merged through the merge API, after the 429.
    let mut approve = tonic::Request::new(ApproveRequest {
        incident_key: "gitlab1".into(),
        by: "alice".into(),
    });
    approve
        .metadata_mut()
        .insert("authorization", format!("Bearer {GRPC_TOKEN}").parse()?);
    let started = std::time::Instant::now();
    let approved = client.approve(approve).await?.into_inner();
    assert_eq!(approved.state(), RemediationState::Merged, "{}", approved.message);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was waited out"
    );
    assert_eq!(gitlab.count("PUT", "merge_requests/1/merge"), 2, "429, then merged");
    let main = repo.tip("main").context("main")?;
    assert_eq!(approved.commit, main, "the squash commit on main");
    assert!(
        repo.read("main", PATH).is_some_and(|t| t == kustomization("v1.1.0")),
        "main holds the change, one line"
    );
    let message = repo.message(&main)?;
    assert!(message.contains("Selfheal-Rollback-From: v1.2.0"), "{message}");
    assert!(repo.is_ancestor(&main_before, &main));

    // The alert resolves: verified.
    let resolved = AlertEvent {
        incident_key: "gitlab1".into(),
        alert: Some(Alert {
            status: "resolved".into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    js.publish(
        selfheal_bus::subjects::alert("resolved", "checkout"),
        resolved.encode_to_vec().into(),
    )
    .await?
    .await?;
    wait_for(Duration::from_secs(20), "the verified remediation", || async {
        events(&js, "gitlab1")
            .await?
            .into_iter()
            .any(|e| e.state() == RemediationState::Verified)
            .then_some(())
    })
    .await
    .with_context(|| second.output())?;
    assert_eq!(gitlab.with(|h| h.merge_requests.len()), 1);
    assert_eq!(gitlab.with(|h| h.merge_requests[0].state.clone()), "merged");
    assert_eq!(gitlab.with(|h| h.unauthorized), 0);
    let log = second.output() + &first.output();
    assert!(!log.contains(TOKEN), "the token is in no log");
    second.check_running()?;
    Ok(())
}
