//! GitHub as the forge: git data through the REST API (no clone), one pull request per incident.
//!
//! The change is written with the Git Data API — tree on the parent's tree, commit, ref — so no
//! checkout is needed. The branch `selfheal/<incident>` is proposed as a pull request; a
//! redelivered decision finds the branch and the pull request (in any state) and does not open
//! another. Merging, when the decision's approval is `auto`, goes through the pull request, so
//! branch protection and required checks apply to selfheal like to anyone.
//!
//! Calls are retried here: 5xx and transport errors with exponential backoff, rate limits (403
//! or 429 with `Retry-After`, or `x-ratelimit-remaining: 0` with `x-ratelimit-reset`) after the
//! wait GitHub asks for, up to `max_wait`; a secondary rate limit (a 403 or 429 whose message
//! says so) that names no time waits `secondary_wait` (a minute, as GitHub asks), doubled as it
//! repeats. What is still failing then is a transient error, and
//! the decision is redelivered later; any other answer (401, 404, 422...) is final.
//!
//! Blocking like every [`GitRepo`]: each method runs its requests on the runtime it was
//! given, so call it from `spawn_blocking`.

use std::{future::Future, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::json;

use selfheal_git::{
    Author, ChangeRequest, ChangeRequestState, FileVersion, Forge, GitRepo, MergeMessage, MergeOutcome, Proposal,
    RepoError,
};

/// How a pull request is merged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MergeMethod {
    /// One commit on the base branch, titled like the pull request, with selfheal's trailers.
    #[default]
    Squash,
    Merge,
    Rebase,
}

impl MergeMethod {
    fn name(self) -> &'static str {
        match self {
            Self::Squash => "squash",
            Self::Merge => "merge",
            Self::Rebase => "rebase",
        }
    }
}

/// Settings of the GitHub forge (`[github]` in the pr-controller's file,
/// `SELFHEAL_PR_CONTROLLER_GITHUB__*` in the environment). When `repository` is set, selfheal
/// works on GitHub instead of the local `repository` path.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GitHubConfig {
    /// `owner/name` of the GitOps repository; empty means "do not use GitHub".
    pub repository: String,
    /// REST API root: `https://api.github.com`, or `https://HOST/api/v3` for GitHub Enterprise.
    pub api_url: String,
    /// A token that may write contents and pull requests (fine-grained: "Contents" and "Pull
    /// requests" read and write).
    pub token: Option<selfheal_config::Secret>,
    /// File holding the token (used when `token` is unset).
    pub token_file: Option<PathBuf>,
    /// Labels put on every pull request selfheal opens.
    pub labels: Vec<String>,
    /// `squash` (default), `merge` or `rebase`.
    pub merge_method: MergeMethod,
    /// How many commits of a file's history to read when looking for the previous image tag
    /// (one request each).
    pub history_depth: usize,
    /// Attempts per request on 5xx, transport errors and rate limits.
    pub attempts: u32,
    /// The longest rate-limit wait honoured in place; a longer one redelivers the decision later.
    /// Keep it under the consumer's ack wait (30 s), or the decision is redelivered meanwhile.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// How long to wait on a secondary rate limit that names no time (GitHub asks for at least a
    /// minute, then longer each time it repeats).
    #[serde(with = "humantime_serde")]
    pub secondary_wait: Duration,
}

impl Default for GitHubConfig {
    fn default() -> Self {
        Self {
            repository: String::new(),
            api_url: "https://api.github.com".into(),
            token: None,
            token_file: None,
            labels: vec!["selfheal".into(), "auto-remediation".into()],
            merge_method: MergeMethod::Squash,
            history_depth: 30,
            attempts: 5,
            max_wait: Duration::from_secs(20),
            secondary_wait: Duration::from_secs(60),
        }
    }
}

impl GitHubConfig {
    /// Whether GitHub is configured.
    pub fn enabled(&self) -> bool {
        !self.repository.is_empty()
    }
}

/// Why one request failed, after its retries.
#[derive(Debug)]
enum CallError {
    /// GitHub answered with a status that retrying does not change.
    Status { status: u16, message: String },
    /// 5xx, transport errors or a rate limit, still there after the attempts.
    Transient(String),
}

impl CallError {
    fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            Self::Transient(_) => None,
        }
    }

    fn into_repo(self, what: &str) -> RepoError {
        match self {
            Self::Status { status, message } => RepoError::Refused(format!("GitHub {what}: {status} {message}")),
            Self::Transient(reason) => RepoError::Git(format!("GitHub {what}: {reason}")),
        }
    }
}

/// A GitHub repository reached through its REST API.
pub struct GitHubRepository {
    client: octocrab::Octocrab,
    runtime: tokio::runtime::Handle,
    owner: String,
    name: String,
    config: GitHubConfig,
}

impl std::fmt::Debug for GitHubRepository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHubRepository")
            .field("repository", &self.config.repository)
            .field("api_url", &self.config.api_url)
            .finish_non_exhaustive()
    }
}

fn is_repo_name_part(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 100
        && part != "."
        && part != ".."
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl GitHubRepository {
    /// Connects nothing yet: checks the settings and builds the client. Requests run on `runtime`.
    pub fn new(config: GitHubConfig, runtime: tokio::runtime::Handle) -> Result<Self, RepoError> {
        let bad = |reason: String| RepoError::Open {
            path: format!("github:{}", config.repository),
            reason,
        };
        let (owner, name) = config
            .repository
            .split_once('/')
            .filter(|(owner, name)| is_repo_name_part(owner) && is_repo_name_part(name))
            .ok_or_else(|| bad("github.repository: must be owner/name".into()))?;
        let token = selfheal_config::Secret::inline_or_file(config.token.clone(), config.token_file.as_deref())
            .map_err(|e| bad(format!("github.token_file: {e}")))?
            .filter(|token| !token.is_empty())
            .ok_or_else(|| bad("no GitHub token: set github.token or github.token_file".into()))?;
        if config.attempts == 0 {
            return Err(bad("github.attempts: must be at least 1".into()));
        }
        let client = {
            // The builder starts the client's background tasks on the current runtime.
            let _guard = runtime.enter();
            octocrab::Octocrab::builder()
                .base_uri(config.api_url.as_str())
                .map_err(|e| bad(format!("github.api_url: {e}")))?
                .personal_token(token.expose().to_string())
                .add_retry_config(octocrab::service::middleware::retry::RetryConfig::None)
                .set_connect_timeout(Some(Duration::from_secs(10)))
                .set_read_timeout(Some(Duration::from_secs(30)))
                .build()
                .map_err(|e| bad(format!("client: {e}")))?
        };
        Ok(Self {
            client,
            runtime,
            owner: owner.to_string(),
            name: name.to_string(),
            config,
        })
    }

    fn route(&self, rest: &str) -> String {
        format!("/repos/{}/{}/{rest}", self.owner, self.name)
    }

    /// Runs one request with the retry rules in the module's documentation.
    fn call<R, F, Fut>(&self, op: F) -> Result<R, CallError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = octocrab::Result<R>>,
    {
        self.runtime.block_on(async {
            let mut backoff = Duration::from_millis(100);
            let mut last = String::new();
            for attempt in 1..=self.config.attempts {
                let wait = match op().await {
                    Ok(value) => return Ok(value),
                    Err(octocrab::Error::GitHub { source, .. }) => {
                        let status = source.status_code.as_u16();
                        last = format!("{status} {}", source.message);
                        let secondary = is_secondary_rate_limit(status, &source.message);
                        let wait = rate_limit_wait(status, source.headers.as_ref()).or(secondary.then(|| {
                            // No time named: the documented minute, doubled each time it repeats.
                            self.config.secondary_wait * 2u32.saturating_pow(attempt.saturating_sub(1).min(5))
                        }));
                        match wait {
                            Some(wait) if wait > self.config.max_wait => {
                                return Err(CallError::Transient(format!(
                                    "rate limited for {}s more",
                                    wait.as_secs()
                                )));
                            }
                            Some(wait) => {
                                metrics::counter!(selfheal_telemetry::metrics::FORGE_RETRIES, "reason" => "rate_limit")
                                    .increment(1);
                                wait
                            }
                            None if status >= 500 => {
                                metrics::counter!(selfheal_telemetry::metrics::FORGE_RETRIES, "reason" => "server_error")
                                    .increment(1);
                                backoff
                            }
                            None => {
                                return Err(CallError::Status {
                                    status,
                                    message: source.message.chars().take(300).collect(),
                                });
                            }
                        }
                    }
                    Err(error) => {
                        last = error.to_string().chars().take(300).collect();
                        metrics::counter!(selfheal_telemetry::metrics::FORGE_RETRIES, "reason" => "transport")
                            .increment(1);
                        backoff
                    }
                };
                if attempt < self.config.attempts {
                    tracing::debug!(attempt, wait_ms = wait.as_millis() as u64, error = %last, "GitHub request retried");
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
            Err(CallError::Transient(format!(
                "still failing after {} attempts: {last}",
                self.config.attempts
            )))
        })
    }

    fn get<R: DeserializeOwned + Send + 'static>(&self, route: &str) -> Result<R, CallError> {
        self.call(|| self.client.get::<R, _, ()>(route, None))
    }

    /// A GET with query parameters (URL-encoded here).
    fn get_with<R: DeserializeOwned + Send + 'static>(
        &self,
        route: &str,
        query: &[(&str, &str)],
    ) -> Result<R, CallError> {
        self.call(|| self.client.get::<R, _, _>(route, Some(query)))
    }

    fn post<R: DeserializeOwned + Send + 'static>(
        &self,
        route: &str,
        body: &serde_json::Value,
    ) -> Result<R, CallError> {
        self.call(|| self.client.post::<_, R>(route, Some(body)))
    }

    fn patch<R: DeserializeOwned + Send + 'static>(
        &self,
        route: &str,
        body: &serde_json::Value,
    ) -> Result<R, CallError> {
        self.call(|| self.client.patch::<R, _, _>(route, Some(body)))
    }

    fn put<R: DeserializeOwned + Send + 'static>(&self, route: &str, body: &serde_json::Value) -> Result<R, CallError> {
        self.call(|| self.client.put::<R, _, _>(route, Some(body)))
    }

    fn pull(&self, number: u64) -> Result<Pull, RepoError> {
        self.get(&self.route(&format!("pulls/{number}")))
            .map_err(|e| e.into_repo("get pull request"))
    }

    /// Puts the configured labels on an open pull request that lacks some (idempotent).
    fn label(&self, pull: &Pull) -> Result<(), RepoError> {
        let missing: Vec<&String> = self
            .config
            .labels
            .iter()
            .filter(|label| !pull.labels.iter().any(|l| &l.name == *label))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        self.post::<serde_json::Value>(
            &self.route(&format!("issues/{}/labels", pull.number)),
            &json!({ "labels": missing }),
        )
        .map(|_| ())
        .map_err(|e| e.into_repo("add labels"))
    }
}

/// Whether a 403 or 429 is GitHub's secondary rate limit: "You have exceeded a secondary rate
/// limit" (or the older "abuse detection mechanism") in the message, with or without a
/// `retry-after`.
fn is_secondary_rate_limit(status: u16, message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    matches!(status, 403 | 429) && (message.contains("secondary rate limit") || message.contains("abuse detection"))
}

/// How long GitHub asks to wait before the next request, if this answer is a rate limit.
fn rate_limit_wait(status: u16, headers: Option<&http::HeaderMap>) -> Option<Duration> {
    if status != 403 && status != 429 {
        return None;
    }
    let header = |name: &str| headers?.get(name)?.to_str().ok()?.trim().parse::<i64>().ok();
    if let Some(seconds) = header("retry-after") {
        return Some(Duration::from_secs(seconds.max(0) as u64));
    }
    if header("x-ratelimit-remaining") == Some(0)
        && let Some(reset) = header("x-ratelimit-reset")
    {
        let wait = reset - chrono::Utc::now().timestamp();
        return Some(Duration::from_secs(wait.max(1) as u64));
    }
    // A 429 without either header is still a rate limit; a bare 403 is a permission problem.
    (status == 429).then(|| Duration::from_secs(1))
}

#[derive(Deserialize)]
struct GitRef {
    object: Sha,
}

#[derive(Deserialize)]
struct Sha {
    sha: String,
}

#[derive(Deserialize)]
struct GitCommit {
    tree: Sha,
}

#[derive(Deserialize)]
struct Content {
    #[serde(rename = "type")]
    kind: String,
    content: Option<String>,
    encoding: Option<String>,
}

#[derive(Deserialize)]
struct CommitEntry {
    sha: String,
    commit: CommitMessage,
}

#[derive(Deserialize)]
struct CommitMessage {
    message: String,
}

#[derive(Deserialize)]
struct Compare {
    status: String,
}

#[derive(Deserialize)]
struct Label {
    name: String,
}

#[derive(Deserialize)]
struct PullHead {
    sha: String,
}

#[derive(Deserialize)]
struct Pull {
    number: u64,
    html_url: String,
    state: String,
    merged_at: Option<String>,
    head: PullHead,
    #[serde(default)]
    labels: Vec<Label>,
    merge_commit_sha: Option<String>,
    mergeable: Option<bool>,
    mergeable_state: Option<String>,
}

impl Pull {
    fn request(&self) -> ChangeRequest {
        let state = if self.merged_at.is_some() {
            ChangeRequestState::Merged
        } else if self.state == "open" {
            ChangeRequestState::Open
        } else {
            ChangeRequestState::Closed
        };
        ChangeRequest {
            number: self.number,
            url: self.html_url.clone(),
            state,
            head: self.head.sha.clone(),
            merge_commit: (state == ChangeRequestState::Merged)
                .then(|| self.merge_commit_sha.clone())
                .flatten(),
        }
    }
}

#[derive(Deserialize)]
struct MergeResult {
    sha: Option<String>,
}

impl GitRepo for GitHubRepository {
    fn location(&self) -> String {
        format!("github:{}", self.config.repository)
    }

    fn branch_tip(&self, branch: &str) -> Result<Option<String>, RepoError> {
        match self.get::<GitRef>(&self.route(&format!("git/ref/heads/{branch}"))) {
            Ok(found) => Ok(Some(found.object.sha)),
            Err(error) if error.status() == Some(404) => Ok(None),
            Err(error) => Err(error.into_repo("get ref")),
        }
    }

    fn read_file(&self, commit: &str, path: &str) -> Result<Option<String>, RepoError> {
        let found = match self.get_with::<Content>(&self.route(&format!("contents/{path}")), &[("ref", commit)]) {
            Ok(found) => found,
            Err(error) if error.status() == Some(404) => return Ok(None),
            Err(error) => return Err(error.into_repo("get contents")),
        };
        if found.kind != "file" {
            return Err(RepoError::Refused(format!("{path} is a {}, not a file", found.kind)));
        }
        match (found.encoding.as_deref(), found.content) {
            (Some("base64"), Some(content)) => selfheal_git::decode_content("GitHub", path, &content).map(Some),
            _ => Err(RepoError::Refused(format!(
                "{path} is too large for the contents API (over 1 MB)"
            ))),
        }
    }

    fn file_history(&self, branch: &str, path: &str, limit: usize) -> Result<Vec<FileVersion>, RepoError> {
        let per_page = limit.min(self.config.history_depth).clamp(1, 100);
        let per_page_text = per_page.to_string();
        let query = [("sha", branch), ("path", path), ("per_page", per_page_text.as_str())];
        let commits = match self.get_with::<Vec<CommitEntry>>(&self.route("commits"), &query) {
            Ok(commits) => commits,
            Err(error) if matches!(error.status(), Some(404 | 409 | 422)) => return Ok(Vec::new()),
            Err(error) => return Err(error.into_repo("list commits")),
        };
        let mut versions = Vec::new();
        for entry in commits.into_iter().take(per_page) {
            if let Some(content) = self.read_file(&entry.sha, path)? {
                versions.push(FileVersion {
                    commit: entry.sha,
                    content,
                    message: entry.commit.message.trim_end_matches('\n').to_string(),
                });
            }
        }
        Ok(versions)
    }

    fn commit_file(
        &self,
        branch: &str,
        expected_tip: Option<&str>,
        parent: &str,
        path: &str,
        content: &str,
        message: &str,
        author: &Author,
    ) -> Result<String, RepoError> {
        let base: GitCommit = self
            .get(&self.route(&format!("git/commits/{parent}")))
            .map_err(|e| e.into_repo("get commit"))?;
        let tree: Sha = self
            .post(
                &self.route("git/trees"),
                &json!({
                    "base_tree": base.tree.sha,
                    "tree": [{ "path": path, "mode": "100644", "type": "blob", "content": content }],
                }),
            )
            .map_err(|e| e.into_repo("create tree"))?;
        let commit: Sha = self
            .post(
                &self.route("git/commits"),
                &json!({
                    "message": message,
                    "tree": tree.sha,
                    "parents": [parent],
                    "author": { "name": author.name, "email": author.email },
                }),
            )
            .map_err(|e| e.into_repo("create commit"))?;
        let conflict = |found: String| RepoError::Conflict {
            branch: branch.to_string(),
            expected: expected_tip.unwrap_or("no branch").to_string(),
            found,
        };
        match expected_tip {
            None => match self.post::<GitRef>(
                &self.route("git/refs"),
                &json!({ "ref": format!("refs/heads/{branch}"), "sha": commit.sha }),
            ) {
                Ok(_) => {}
                // "Reference already exists": another replica (or an earlier attempt) made it.
                Err(error) if error.status() == Some(422) => return Err(conflict("a branch".into())),
                Err(error) => return Err(error.into_repo("create ref")),
            },
            Some(expected) => {
                // The REST API has no compare-and-set on refs: check, then move. The window is
                // one request long, and the reconciler's loop converges either way.
                let found = self.branch_tip(branch)?;
                if found.as_deref() != Some(expected) {
                    return Err(conflict(found.unwrap_or_else(|| "no branch".into())));
                }
                self.patch::<GitRef>(
                    &self.route(&format!("git/refs/heads/{branch}")),
                    &json!({ "sha": commit.sha, "force": true }),
                )
                .map_err(|e| e.into_repo("update ref"))?;
            }
        }
        Ok(commit.sha)
    }

    fn update_branch(&self, branch: &str, expected_tip: &str, new_tip: &str) -> Result<(), RepoError> {
        let found = self.branch_tip(branch)?;
        if found.as_deref() != Some(expected_tip) {
            return Err(RepoError::Conflict {
                branch: branch.to_string(),
                expected: expected_tip.to_string(),
                found: found.unwrap_or_else(|| "no branch".into()),
            });
        }
        match self.patch::<GitRef>(
            &self.route(&format!("git/refs/heads/{branch}")),
            &json!({ "sha": new_tip, "force": false }),
        ) {
            Ok(_) => Ok(()),
            // Not a fast-forward: the branch moved.
            Err(error) if error.status() == Some(422) => Err(RepoError::Conflict {
                branch: branch.to_string(),
                expected: expected_tip.to_string(),
                found: "a commit that is not an ancestor".into(),
            }),
            Err(error) => Err(error.into_repo("update ref")),
        }
    }

    fn is_ancestor(&self, ancestor: &str, descendant: &str) -> Result<bool, RepoError> {
        if ancestor == descendant {
            return Ok(true);
        }
        let compared: Compare = self
            .get(&self.route(&format!("compare/{ancestor}...{descendant}")))
            .map_err(|e| e.into_repo("compare"))?;
        Ok(matches!(compared.status.as_str(), "ahead" | "identical"))
    }
}

impl Forge for GitHubRepository {
    fn name(&self) -> &str {
        "GitHub"
    }

    fn find_request(&self, branch: &str) -> Result<Option<ChangeRequest>, RepoError> {
        let head = format!("{}:{branch}", self.owner);
        let pulls: Vec<Pull> = self
            .get_with(
                &self.route("pulls"),
                &[("head", head.as_str()), ("state", "all"), ("per_page", "20")],
            )
            .map_err(|e| e.into_repo("list pull requests"))?;
        // A merged one wins over an open one, which wins over closed ones.
        let Some(pull) = pulls.into_iter().max_by_key(|pull| pull.request().state.standing()) else {
            return Ok(None);
        };
        if pull.state == "open" {
            self.label(&pull)?;
        }
        Ok(Some(pull.request()))
    }

    fn withdraw(&self, branch: &str) -> Result<(), RepoError> {
        match self.find_request(branch)? {
            Some(request) if request.state == ChangeRequestState::Open => self
                .patch::<serde_json::Value>(
                    &self.route(&format!("pulls/{}", request.number)),
                    &json!({ "state": "closed" }),
                )
                .map(|_| ())
                .map_err(|e| e.into_repo("close pull request")),
            _ => Ok(()),
        }
    }

    fn open_request(&self, proposal: &Proposal<'_>) -> Result<ChangeRequest, RepoError> {
        let created = self.post::<Pull>(
            &self.route("pulls"),
            &json!({
                "title": proposal.title,
                "head": proposal.branch,
                "base": proposal.base,
                "body": proposal.body,
                "maintainer_can_modify": false,
            }),
        );
        let pull = match created {
            Ok(pull) => pull,
            // "A pull request already exists": another replica, or a retried request that
            // GitHub had carried out.
            Err(error) if error.status() == Some(422) => {
                return match self.find_request(proposal.branch)? {
                    Some(found) => Ok(found),
                    None => Err(error.into_repo("create pull request")),
                };
            }
            Err(error) => return Err(error.into_repo("create pull request")),
        };
        self.label(&pull)?;
        Ok(pull.request())
    }

    fn merge(
        &self,
        request: &ChangeRequest,
        branch_tip: &str,
        message: &MergeMessage<'_>,
    ) -> Result<MergeOutcome, RepoError> {
        let merged = self.put::<MergeResult>(
            &self.route(&format!("pulls/{}/merge", request.number)),
            &json!({
                "sha": branch_tip,
                "merge_method": self.config.merge_method.name(),
                "commit_title": message.title,
                "commit_message": message.message,
            }),
        );
        match merged {
            Ok(result) => Ok(MergeOutcome::Merged(result.sha)),
            // The head moved since it was read.
            Err(error) if error.status() == Some(409) => Err(RepoError::Conflict {
                branch: format!("pull request #{}", request.number),
                expected: branch_tip.to_string(),
                found: "another head".into(),
            }),
            // Not mergeable: a conflict with the base, or protection (reviews, checks).
            Err(error) if error.status() == Some(405) => {
                let pull = self.pull(request.number)?;
                if pull.mergeable == Some(false) && pull.mergeable_state.as_deref() == Some("dirty") {
                    Ok(MergeOutcome::NeedsRebase)
                } else {
                    Ok(MergeOutcome::Blocked(format!(
                        "GitHub does not merge pull request #{} yet ({})",
                        request.number,
                        pull.mergeable_state.as_deref().unwrap_or("unknown state")
                    )))
                }
            }
            Err(error) => Err(error.into_repo("merge pull request")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secondary_rate_limits_are_known_by_their_message() {
        let message = "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.";
        assert!(is_secondary_rate_limit(403, message));
        assert!(is_secondary_rate_limit(429, message));
        assert!(is_secondary_rate_limit(
            403,
            "You have triggered an abuse detection mechanism."
        ));
        assert!(!is_secondary_rate_limit(403, "Resource not accessible by integration"));
        assert!(!is_secondary_rate_limit(500, message));
    }

    #[test]
    fn rate_limits_are_read_from_the_headers() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(
            rate_limit_wait(403, Some(&headers)),
            None,
            "a bare 403 is not a rate limit"
        );
        assert_eq!(rate_limit_wait(429, Some(&headers)), Some(Duration::from_secs(1)));
        headers.insert("retry-after", "7".parse().expect("test value"));
        assert_eq!(rate_limit_wait(403, Some(&headers)), Some(Duration::from_secs(7)));
        assert_eq!(rate_limit_wait(502, Some(&headers)), None);
        let mut headers = http::HeaderMap::new();
        headers.insert("x-ratelimit-remaining", "0".parse().expect("test value"));
        let reset = chrono::Utc::now().timestamp() + 30;
        headers.insert("x-ratelimit-reset", reset.to_string().parse().expect("test value"));
        let wait = rate_limit_wait(403, Some(&headers)).expect("test value");
        assert!(
            wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
    }

    #[test]
    fn settings_are_checked() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("test value");
        let config = |repository: &str, token: Option<&str>| GitHubConfig {
            repository: repository.into(),
            token: token.map(selfheal_config::Secret::new),
            ..Default::default()
        };
        for bad in ["acme", "acme/", "../x", "acme/a b", "acme/x/y"] {
            let error = GitHubRepository::new(config(bad, Some("t")), runtime.handle().clone()).expect_err("refused");
            assert!(error.to_string().contains("owner/name"), "{bad}: {error}");
        }
        let error = GitHubRepository::new(config("acme/gitops", None), runtime.handle().clone()).expect_err("refused");
        assert!(error.to_string().contains("no GitHub token"), "{error}");
        let repo =
            GitHubRepository::new(config("acme/gitops", Some("s3cret")), runtime.handle().clone()).expect("test value");
        assert!(!format!("{repo:?}").contains("s3cret"));
        assert_eq!(repo.location(), "github:acme/gitops");
    }
}
