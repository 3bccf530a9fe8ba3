//! The scenario every forge is held to, end to end: the real pr-controller and nats-server
//! against a local server speaking the forge's API, backed by a real bare repository. A rollback
//! that needs approval makes one commit on `selfheal/<key>`; the pr-controller is killed while its
//! request to open the proposal (merge or pull request) is in flight; restarted, it opens exactly
//! one (title, description, labels); `DescribeTarget` reads main and its history through the API;
//! `Approve` merges through the forge — after a 429 with `Retry-After`, waited out — main holds the
//! change, the alert resolves, and the remediation is `verified`.

use std::{path::Path, time::Duration};

use anyhow::Context;
use prost::Message as _;
use selfheal_proto::v1::{
    Action, Alert, AlertEvent, Approval, ApproveRequest, DescribeTargetRequest, RemediationEvent, RemediationState,
    remediations_client::RemediationsClient,
};

use crate::{Nats, Process, binary, decision, free_port, git_backend::GitBackend, wait_for, wait_ready};

pub const PATH: &str = "apps/checkout/kustomization.yaml";
const GRPC_TOKEN: &str = "grpc-token";
const INCIDENT: &str = "e2e1";

/// A proposal as the fake forge holds it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub head: String,
    pub base: String,
    pub title: String,
    pub body: String,
    pub labels: Vec<String>,
    pub merged: bool,
}

/// A fake forge, as the scenario drives it.
pub trait FakeForge {
    /// The pr-controller's settings that point it at this forge.
    fn env(&self) -> Vec<(&'static str, String)>;
    /// Holds the next request that opens a proposal (the crash window).
    fn hold_next_open(&self);
    /// Answers the next merge with a 429 asking for a second's wait.
    fn rate_limit_next_merge(&self);
    fn held(&self) -> usize;
    fn release(&self);
    fn proposals(&self) -> Vec<Seen>;
    /// Requests to merge proposal 1 so far.
    fn merge_calls(&self) -> usize;
    /// `DescribeTarget`'s `repository` (`gitlab:acme/gitops`).
    fn location(&self) -> String;
    /// The web page of proposal `number`.
    fn proposal_url(&self, number: u64) -> String;
    fn unauthorized(&self) -> usize;
    fn token(&self) -> &str;
}

pub fn kustomization(tag: &str) -> String {
    format!(
        "# checkout, production\napiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nimages:\n  - name: ghcr.io/acme/checkout\n    newTag: {tag} # the release\n"
    )
}

/// The repository behind the fake: checkout at v1.0.0, v1.1.0, then v1.2.0 on main.
pub fn repository(dir: &Path) -> anyhow::Result<GitBackend> {
    let history: Vec<Vec<(&str, String)>> = ["v1.0.0", "v1.1.0", "v1.2.0"]
        .iter()
        .map(|tag| vec![(PATH, kustomization(tag)), ("README.md", "# gitops\n".to_string())])
        .collect();
    GitBackend::create(&dir.join("gitops.git"), &history)
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

/// The scenario, on `forge` backed by `repo`; processes' logs in `dir`.
pub async fn run(forge: &dyn FakeForge, repo: &GitBackend, dir: &Path) -> anyhow::Result<()> {
    let main_before = repo.tip("main").context("main")?;
    forge.hold_next_open();
    forge.rate_limit_next_merge();
    let nats = Nats::start().await?;
    let (listen, grpc) = (free_port()?, free_port()?);
    let mut env = vec![
        ("SELFHEAL_PR_CONTROLLER_LISTEN", format!("127.0.0.1:{listen}")),
        ("SELFHEAL_PR_CONTROLLER_GRPC_LISTEN", format!("127.0.0.1:{grpc}")),
        ("SELFHEAL_PR_CONTROLLER_GRPC_TOKEN", GRPC_TOKEN.to_string()),
        ("SELFHEAL_PR_CONTROLLER_NATS_URL", nats.url()),
        ("SELFHEAL_PR_CONTROLLER_ACK_WAIT", "2s".to_string()),
        ("RUST_LOG", "info".to_string()),
    ];
    env.extend(forge.env());
    let program = binary("selfheal-pr-controller")?;
    let start = |name: &str| Process::start(name, &program, &[], &env, dir);
    let mut first = start("pr-controller-1")?;
    wait_ready(&format!("http://127.0.0.1:{listen}/readyz"), &mut first).await?;

    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let labels = [
        ("service", "checkout"),
        ("cluster", "prod"),
        ("alertname", "HighErrorRate"),
    ];
    let held = decision(INCIDENT, &labels, Action::Rollback, Approval::Required);
    js.publish("selfheal.decisions.checkout", held.encode_to_vec().into())
        .await?
        .await?;
    wait_for(Duration::from_secs(20), "the request to open the proposal", || async {
        (forge.held() == 1).then_some(())
    })
    .await
    .with_context(|| first.output())?;
    first.kill().await?;
    let branch = repo.tip("selfheal/e2e1").context("the commit was made")?;
    assert!(forge.proposals().is_empty(), "no proposal yet");
    forge.release();

    // Restarted: the unacked decision comes back, and the merge request is opened once.
    let mut second = start("pr-controller-2")?;
    wait_ready(&format!("http://127.0.0.1:{listen}/readyz"), &mut second).await?;
    let opened = wait_for(Duration::from_secs(30), "the opened remediation", || async {
        events(&js, INCIDENT)
            .await?
            .into_iter()
            .find(|e| e.state() == RemediationState::Opened)
    })
    .await
    .with_context(|| second.output())?;
    let proposals = forge.proposals();
    assert_eq!(proposals.len(), 1, "one proposal for the incident");
    let proposal = &proposals[0];
    assert_eq!(
        (proposal.head.as_str(), proposal.base.as_str()),
        ("selfheal/e2e1", "main")
    );
    assert_eq!(proposal.title, "fix(prod): roll back checkout to v1.1.0");
    assert!(proposal.body.contains(INCIDENT), "{}", proposal.body);
    assert!(proposal.body.contains("HighErrorRate"), "{}", proposal.body);
    assert_eq!(proposal.labels, ["selfheal", "auto-remediation"]);
    assert_eq!(opened.pull_request_url, forge.proposal_url(1));
    assert_eq!(
        repo.tip("selfheal/e2e1"),
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

    // DescribeTarget reads main and its history through the forge's API.
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
        (forge.location().as_str(), PATH, "v1.2.0")
    );
    assert_eq!(target.earlier_tags, ["v1.1.0", "v1.0.0"]);

    // A person approves: merged through the forge, after the 429.
    let mut approve = tonic::Request::new(ApproveRequest {
        incident_key: INCIDENT.into(),
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
    assert_eq!(forge.merge_calls(), 2, "429, then merged");
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
        incident_key: INCIDENT.into(),
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
        events(&js, INCIDENT)
            .await?
            .into_iter()
            .any(|e| e.state() == RemediationState::Verified)
            .then_some(())
    })
    .await
    .with_context(|| second.output())?;
    let proposals = forge.proposals();
    assert_eq!(proposals.len(), 1);
    assert!(proposals[0].merged, "merged through the forge");
    assert_eq!(forge.unauthorized(), 0);
    let log = second.output() + &first.output();
    assert!(!log.contains(forge.token()), "the token is in no log");
    second.check_running()?;
    Ok(())
}
