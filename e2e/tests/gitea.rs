//! Gitea (and Forgejo, which speaks the same API) as the forge, end to end (the scenario of
//! `selfheal_e2e::forge_flow`): the real pr-controller and nats-server against
//! `selfheal_e2e::fake_gitea`, a local server speaking Gitea's API v1, backed by a real bare
//! repository. One of the two labels exists already (its id is looked up), the other is created.

use axum::http::Method;
use selfheal_e2e::{
    fake_gitea::{FakeGitea, REPOSITORY, TOKEN},
    forge_flow::{self, FakeForge, Seen},
};

struct Gitea(FakeGitea);

impl FakeForge for Gitea {
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SELFHEAL_PR_CONTROLLER_GITEA__REPOSITORY", REPOSITORY.to_string()),
            ("SELFHEAL_PR_CONTROLLER_GITEA__API_URL", self.0.api_url.clone()),
            ("SELFHEAL_PR_CONTROLLER_GITEA__TOKEN", TOKEN.to_string()),
        ]
    }
    fn hold_next_open(&self) {
        self.0.fault(Method::POST, "/pulls", 0, &[], 1);
    }
    fn rate_limit_next_merge(&self) {
        // Gitea has no rate limit of its own; the proxy in front of it may.
        self.0.fault(Method::POST, "/merge", 429, &[("retry-after", "1")], 1);
    }
    fn held(&self) -> usize {
        self.0.with(|h| h.faults.held)
    }
    fn release(&self) {
        self.0.release();
    }
    fn proposals(&self) -> Vec<Seen> {
        self.0.with(|h| {
            h.pulls
                .iter()
                .map(|pull| Seen {
                    head: pull.head.clone(),
                    base: pull.base.clone(),
                    title: pull.title.clone(),
                    body: pull.body.clone(),
                    labels: h.label_names(pull),
                    merged: pull.merged,
                })
                .collect()
        })
    }
    fn merge_calls(&self) -> usize {
        self.0.count("POST", "pulls/1/merge")
    }
    fn location(&self) -> String {
        format!("gitea:{REPOSITORY}")
    }
    fn proposal_url(&self, number: u64) -> String {
        format!("{}/acme/gitops/pulls/{number}", self.0.web_url)
    }
    fn unauthorized(&self) -> usize {
        self.0.with(|h| h.unauthorized)
    }
    fn token(&self) -> &str {
        TOKEN
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_request_per_incident_across_a_crash_merged_after_approval_and_verified() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let repo = forge_flow::repository(temp.path())?;
    let gitea = Gitea(FakeGitea::start(repo.clone()).await?);
    forge_flow::run(&gitea, &repo, temp.path()).await?;
    assert_eq!(
        gitea
            .0
            .with(|h| h.labels.iter().filter(|(_, n)| n == "auto-remediation").count()),
        1,
        "the missing label was created once"
    );
    Ok(())
}
