//! GitLab as the forge, end to end (the scenario of `selfheal_e2e::forge_flow`): the real
//! pr-controller and nats-server against `selfheal_e2e::fake_gitlab`, a local server speaking
//! GitLab's REST API v4, backed by a real bare repository.

use axum::http::Method;
use selfheal_e2e::{
    fake_gitlab::{FakeGitLab, PROJECT, TOKEN},
    forge_flow::{self, FakeForge, Seen},
};

struct GitLab(FakeGitLab);

impl FakeForge for GitLab {
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SELFHEAL_PR_CONTROLLER_GITLAB__PROJECT", PROJECT.to_string()),
            ("SELFHEAL_PR_CONTROLLER_GITLAB__API_URL", self.0.api_url.clone()),
            ("SELFHEAL_PR_CONTROLLER_GITLAB__TOKEN", TOKEN.to_string()),
        ]
    }
    fn hold_next_open(&self) {
        self.0.fault(Method::POST, "/merge_requests", 0, &[], 1);
    }
    fn rate_limit_next_merge(&self) {
        self.0.fault(
            Method::PUT,
            "/merge",
            429,
            &[("retry-after", "1"), ("ratelimit-remaining", "0")],
            1,
        );
    }
    fn held(&self) -> usize {
        self.0.with(|h| h.faults.held)
    }
    fn release(&self) {
        self.0.release();
    }
    fn proposals(&self) -> Vec<Seen> {
        self.0.with(|h| {
            h.merge_requests
                .iter()
                .map(|mr| Seen {
                    head: mr.source_branch.clone(),
                    base: mr.target_branch.clone(),
                    title: mr.title.clone(),
                    body: mr.description.clone(),
                    labels: mr.labels.clone(),
                    merged: mr.state == "merged",
                })
                .collect()
        })
    }
    fn merge_calls(&self) -> usize {
        self.0.count("PUT", "merge_requests/1/merge")
    }
    fn location(&self) -> String {
        format!("gitlab:{PROJECT}")
    }
    fn proposal_url(&self, number: u64) -> String {
        format!(
            "{}/acme/gitops/-/merge_requests/{number}",
            self.0.api_url.trim_end_matches("/api/v4")
        )
    }
    fn unauthorized(&self) -> usize {
        self.0.with(|h| h.unauthorized)
    }
    fn token(&self) -> &str {
        TOKEN
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_request_per_incident_across_a_crash_merged_after_approval_and_verified() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let repo = forge_flow::repository(temp.path())?;
    let gitlab = GitLab(FakeGitLab::start(repo.clone()).await?);
    forge_flow::run(&gitlab, &repo, temp.path()).await
}
