//! Gitea and Forgejo as the forge (API v1): the change through the contents API with no clone,
//! one pull request per incident.
//!
//! The change is one commit made by the contents API (`PUT /contents/{path}`) onto a new branch
//! `selfheal/<incident>` started from main (`new_branch`), with the blob `sha` the change was
//! computed from: if main's file moved meanwhile, Gitea refuses (422) and the change is made
//! again from the new file. The pull request is found again by its head branch in any state (the
//! list filtered by `head.ref`: Gitea has no head filter), so a redelivered decision opens none
//! twice. Labels are ids in Gitea: the configured names are looked up, and created when missing.
//! Merging, when approval is `auto`, goes through the merge endpoint with the head commit
//! (`head_commit_id`), so branch protection and required approvals apply to selfheal as to anyone.
//!
//! Gitea cannot move a branch without a commit, nor compare-and-set one: a branch made again on a
//! newer main is deleted and made anew, after a check of its tip. `main` changes only through
//! pull requests.
//!
//! Retries (5xx, transport errors, a 429 from a proxy in front) are `selfheal_forge_http`'s.
//! Blocking like every [`GitRepo`].

use std::{path::PathBuf, time::Duration};

use base64::Engine as _;
use reqwest::Method;
use selfheal_forge_http::{Api, ApiSettings, conflict, encode_segment, parse};
use selfheal_git::{
    Author, ChangeRequest, ChangeRequestState, FileVersion, Forge, GitRepo, MergeMessage, MergeOutcome, Proposal,
    RepoError,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// How a pull request is merged (Gitea's `Do`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MergeStyle {
    /// One commit on the base branch, with selfheal's trailers.
    #[default]
    Squash,
    Merge,
    Rebase,
    FastForwardOnly,
}

impl MergeStyle {
    fn name(self) -> &'static str {
        match self {
            Self::Squash => "squash",
            Self::Merge => "merge",
            Self::Rebase => "rebase",
            Self::FastForwardOnly => "fast-forward-only",
        }
    }
}

/// Settings of the Gitea or Forgejo forge (`[gitea]`; `SELFHEAL_PR_CONTROLLER_GITEA__*`). When
/// `repository` is set, selfheal works on Gitea instead of the local repository.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GiteaConfig {
    /// `owner/name` of the GitOps repository; empty means "do not use Gitea".
    pub repository: String,
    /// API root: `https://HOST/api/v1`.
    pub api_url: String,
    /// An access token with `write:repository` and `write:issue` (labels and pull requests).
    pub token: Option<selfheal_config::Secret>,
    /// File holding the token (used when `token` is unset).
    pub token_file: Option<PathBuf>,
    /// Labels put on every pull request selfheal opens (created when missing).
    pub labels: Vec<String>,
    /// `squash` (default), `merge`, `rebase` or `fast-forward-only`.
    pub merge_style: MergeStyle,
    /// How many commits of a file's history to read when looking for the previous image tag.
    pub history_depth: usize,
    /// Attempts per request on 5xx, transport errors and rate limits.
    pub attempts: u32,
    /// The longest rate-limit wait honoured in place; a longer one redelivers the decision later.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
}

impl Default for GiteaConfig {
    fn default() -> Self {
        Self {
            repository: String::new(),
            api_url: String::new(),
            token: None,
            token_file: None,
            labels: vec!["selfheal".into(), "auto-remediation".into()],
            merge_style: MergeStyle::Squash,
            history_depth: 30,
            attempts: 5,
            max_wait: Duration::from_secs(20),
        }
    }
}

impl GiteaConfig {
    /// Whether Gitea is configured.
    pub fn enabled(&self) -> bool {
        !self.repository.is_empty()
    }
}

const FORGE: &str = "Gitea";

/// A Gitea (or Forgejo) repository reached through its API.
#[derive(Debug)]
pub struct GiteaRepository {
    api: Api,
    /// `/repos/<owner>/<name>`.
    repo: String,
    /// The branch every change starts from (Gitea starts a new branch from a branch, not a
    /// commit; the blob check keeps a change honest when that branch moved past its parent).
    base: String,
    config: GiteaConfig,
}

fn is_name_part(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 100
        && part != "."
        && part != ".."
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A path in the repository, its segments encoded and its slashes kept (Gitea's wildcard routes).
fn path_segments(path: &str) -> String {
    path.split('/').map(encode_segment).collect::<Vec<_>>().join("/")
}

#[derive(Deserialize)]
struct Branch {
    commit: Id,
}

#[derive(Deserialize)]
struct Id {
    id: String,
}

#[derive(Deserialize)]
struct Contents {
    #[serde(rename = "type")]
    kind: String,
    sha: String,
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
struct FileResponse {
    commit: Sha,
}

#[derive(Deserialize)]
struct Sha {
    sha: String,
}

#[derive(Deserialize)]
struct Label {
    id: i64,
    name: String,
}

#[derive(Deserialize)]
struct Head {
    #[serde(rename = "ref")]
    name: String,
    sha: String,
}

#[derive(Deserialize)]
struct Pull {
    number: u64,
    html_url: String,
    state: String,
    #[serde(default)]
    merged: bool,
    merge_commit_sha: Option<String>,
    #[serde(default)]
    mergeable: bool,
    head: Head,
    #[serde(default)]
    labels: Vec<Label>,
}

impl Pull {
    fn request(&self) -> ChangeRequest {
        let state = if self.merged {
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
struct Compare {
    total_commits: usize,
}

impl GiteaRepository {
    /// Checks the settings and builds the client; connects nothing yet. Changes start from
    /// `base` (the branch Argo CD or Flux deploys). Requests run on `runtime`.
    pub fn new(config: GiteaConfig, base: &str, runtime: tokio::runtime::Handle) -> Result<Self, RepoError> {
        let bad = |reason: String| RepoError::Open {
            path: format!("gitea:{}", config.repository),
            reason,
        };
        let (owner, name) = config
            .repository
            .split_once('/')
            .filter(|(owner, name)| is_name_part(owner) && is_name_part(name))
            .ok_or_else(|| bad("gitea.repository: must be owner/name".into()))?;
        if config.api_url.is_empty() {
            return Err(bad("gitea.api_url: must be set (https://HOST/api/v1)".into()));
        }
        let token = selfheal_config::Secret::inline_or_file(config.token.clone(), config.token_file.as_deref())
            .map_err(|e| bad(format!("gitea.token_file: {e}")))?
            .filter(|token| !token.is_empty())
            .ok_or_else(|| bad("no Gitea token: set gitea.token or gitea.token_file".into()))?;
        let api = Api::new(
            ApiSettings {
                forge: FORGE,
                base_url: config.api_url.clone(),
                auth_header: "authorization",
                auth_prefix: "token ",
                token,
                attempts: config.attempts,
                max_wait: config.max_wait,
            },
            runtime,
        )
        .map_err(|e| bad(format!("gitea.{e}")))?;
        Ok(Self {
            api,
            repo: format!("/repos/{owner}/{name}"),
            base: base.to_string(),
            config,
        })
    }

    fn route(&self, rest: &str) -> String {
        format!("{}/{rest}", self.repo)
    }

    fn contents(&self, reference: &str, path: &str) -> Result<Option<Contents>, RepoError> {
        match self.api.get(
            &self.route(&format!("contents/{}", path_segments(path))),
            &[("ref", reference)],
        ) {
            Ok(found) if found.is_array() => Err(RepoError::Refused(format!("{path} is a folder, not a file"))),
            Ok(found) => parse(FORGE, found, "get contents").map(Some),
            Err(error) if error.status() == Some(404) => Ok(None),
            Err(error) => Err(error.into_repo(FORGE, "get contents")),
        }
    }

    fn pull(&self, number: u64) -> Result<Pull, RepoError> {
        let found = self
            .api
            .get(&self.route(&format!("pulls/{number}")), &[])
            .map_err(|e| e.into_repo(FORGE, "get pull request"))?;
        parse(FORGE, found, "get pull request")
    }

    /// The ids of the configured labels, those missing created.
    fn label_ids(&self) -> Result<Vec<i64>, RepoError> {
        if self.config.labels.is_empty() {
            return Ok(Vec::new());
        }
        let found = self
            .api
            .get(&self.route("labels"), &[("limit", "50")])
            .map_err(|e| e.into_repo(FORGE, "list labels"))?;
        let existing: Vec<Label> = parse(FORGE, found, "list labels")?;
        let mut ids = Vec::new();
        for name in &self.config.labels {
            match existing.iter().find(|l| &l.name == name) {
                Some(label) => ids.push(label.id),
                None => {
                    let created = self
                        .api
                        .post(&self.route("labels"), &json!({ "name": name, "color": "#1d76db" }))
                        .map_err(|e| e.into_repo(FORGE, "create label"))?;
                    ids.push(parse::<Label>(FORGE, created, "create label")?.id);
                }
            }
        }
        Ok(ids)
    }

    /// Puts the configured labels on an open pull request that lacks some (idempotent).
    fn label(&self, pull: &Pull) -> Result<(), RepoError> {
        if self
            .config
            .labels
            .iter()
            .all(|name| pull.labels.iter().any(|l| &l.name == name))
        {
            return Ok(());
        }
        let ids = self.label_ids()?;
        self.api
            .post(
                &self.route(&format!("issues/{}/labels", pull.number)),
                &json!({ "labels": ids }),
            )
            .map(|_| ())
            .map_err(|e| e.into_repo(FORGE, "add labels"))
    }

    /// The pull requests whose head is `branch`, newest first (Gitea filters by state only).
    fn pulls_of(&self, branch: &str) -> Result<Vec<Pull>, RepoError> {
        let mut found = Vec::new();
        for page in 1..=20 {
            let page_text = page.to_string();
            let listed = self
                .api
                .get(
                    &self.route("pulls"),
                    &[
                        ("state", "all"),
                        ("sort", "newest"),
                        ("limit", "50"),
                        ("page", page_text.as_str()),
                    ],
                )
                .map_err(|e| e.into_repo(FORGE, "list pull requests"))?;
            let pulls: Vec<Pull> = parse(FORGE, listed, "list pull requests")?;
            let last = pulls.len() < 50;
            found.extend(pulls.into_iter().filter(|p| p.head.name == branch));
            if last || !found.is_empty() {
                break;
            }
        }
        Ok(found)
    }
}

impl GitRepo for GiteaRepository {
    fn location(&self) -> String {
        format!("gitea:{}", self.config.repository)
    }

    fn branch_tip(&self, branch: &str) -> Result<Option<String>, RepoError> {
        match self
            .api
            .get(&self.route(&format!("branches/{}", path_segments(branch))), &[])
        {
            Ok(found) => Ok(Some(parse::<Branch>(FORGE, found, "get branch")?.commit.id)),
            Err(error) if error.status() == Some(404) => Ok(None),
            Err(error) => Err(error.into_repo(FORGE, "get branch")),
        }
    }

    fn read_file(&self, commit: &str, path: &str) -> Result<Option<String>, RepoError> {
        let Some(found) = self.contents(commit, path)? else {
            return Ok(None);
        };
        if found.kind != "file" {
            return Err(RepoError::Refused(format!("{path} is a {}, not a file", found.kind)));
        }
        let (Some("base64"), Some(content)) = (found.encoding.as_deref(), found.content) else {
            return Err(RepoError::Refused(format!("{FORGE} sent {path} without its content")));
        };
        selfheal_git::decode_content(FORGE, path, &content).map(Some)
    }

    fn file_history(&self, branch: &str, path: &str, limit: usize) -> Result<Vec<FileVersion>, RepoError> {
        let limit = limit.min(self.config.history_depth).clamp(1, 50);
        let limit_text = limit.to_string();
        let query = [
            ("sha", branch),
            ("path", path),
            ("limit", limit_text.as_str()),
            ("stat", "false"),
            ("verification", "false"),
            ("files", "false"),
        ];
        let commits: Vec<CommitEntry> = match self.api.get(&self.route("commits"), &query) {
            Ok(found) => parse(FORGE, found, "list commits")?,
            // No commit touches the path (Gitea answers 404), or the repository is empty (409).
            Err(error) if matches!(error.status(), Some(404 | 409)) => return Ok(Vec::new()),
            Err(error) => return Err(error.into_repo(FORGE, "list commits")),
        };
        let mut versions = Vec::new();
        // Gitea ignores `limit` with `path`: the cut is here.
        for entry in commits.into_iter().take(limit) {
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
        if let Some(expected) = expected_tip {
            // The branch is made again on a newer main: check, delete, make anew (see the
            // module's documentation).
            let found = self.branch_tip(branch)?;
            if found.as_deref() != Some(expected) {
                return Err(conflict(
                    branch,
                    expected_tip,
                    found.unwrap_or_else(|| "no branch".into()),
                ));
            }
            match self.api.call(
                Method::DELETE,
                &self.route(&format!("branches/{}", path_segments(branch))),
                &[],
                None,
            ) {
                Ok(_) => {}
                Err(error) if error.status() == Some(404) => {}
                Err(error) => return Err(error.into_repo(FORGE, "delete branch")),
            }
        }
        // The blob the change was computed from: Gitea refuses the write if main's file moved.
        let blob = self
            .contents(parent, path)?
            .ok_or_else(|| RepoError::Refused(format!("{path} does not exist at {parent}")))?
            .sha;
        let written = self.api.put(
            &self.route(&format!("contents/{}", path_segments(path))),
            &json!({
                "content": base64::engine::general_purpose::STANDARD.encode(content.as_bytes()),
                "sha": blob,
                "message": message,
                "branch": self.base,
                "new_branch": branch,
                "author": { "name": author.name, "email": author.email },
                "committer": { "name": author.name, "email": author.email },
            }),
        );
        match written {
            Ok(written) => Ok(parse::<FileResponse>(FORGE, written, "update file")?.commit.sha),
            // The branch exists already (another replica), or main's file moved under the change.
            Err(error) if error.status() == Some(422) => {
                Err(conflict(branch, expected_tip, error.message().to_string()))
            }
            Err(error) => Err(error.into_repo(FORGE, "update file")),
        }
    }

    fn update_branch(&self, branch: &str, _expected_tip: &str, _new_tip: &str) -> Result<(), RepoError> {
        Err(RepoError::Refused(format!(
            "{FORGE} cannot move {branch} without a commit: changes reach it through pull requests"
        )))
    }

    fn is_ancestor(&self, ancestor: &str, descendant: &str) -> Result<bool, RepoError> {
        if ancestor == descendant {
            return Ok(true);
        }
        // The commits of `ancestor` that `descendant` lacks: none, when it is an ancestor.
        let compared = self
            .api
            .get(&self.route(&format!("compare/{descendant}...{ancestor}")), &[])
            .map_err(|e| e.into_repo(FORGE, "compare"))?;
        Ok(parse::<Compare>(FORGE, compared, "compare")?.total_commits == 0)
    }
}

impl Forge for GiteaRepository {
    fn name(&self) -> &str {
        FORGE
    }

    fn find_request(&self, branch: &str) -> Result<Option<ChangeRequest>, RepoError> {
        let Some(pull) = self
            .pulls_of(branch)?
            .into_iter()
            .max_by_key(|pull| pull.request().state.standing())
        else {
            return Ok(None);
        };
        if pull.request().state == ChangeRequestState::Open {
            self.label(&pull)?;
        }
        Ok(Some(pull.request()))
    }

    fn open_request(&self, proposal: &Proposal<'_>) -> Result<ChangeRequest, RepoError> {
        let labels = self.label_ids()?;
        let created = self.api.post(
            &self.route("pulls"),
            &json!({
                "head": proposal.branch,
                "base": proposal.base,
                "title": proposal.title,
                "body": proposal.body,
                "labels": labels,
            }),
        );
        match created {
            Ok(created) => Ok(parse::<Pull>(FORGE, created, "create pull request")?.request()),
            // "pull request already exists for these targets".
            Err(error) if error.status() == Some(409) => match self.find_request(proposal.branch)? {
                Some(found) => Ok(found),
                None => Err(error.into_repo(FORGE, "create pull request")),
            },
            Err(error) => Err(error.into_repo(FORGE, "create pull request")),
        }
    }

    fn withdraw(&self, branch: &str) -> Result<(), RepoError> {
        match self.find_request(branch)? {
            Some(request) if request.state == ChangeRequestState::Open => self
                .api
                .patch(
                    &self.route(&format!("pulls/{}", request.number)),
                    &json!({ "state": "closed" }),
                )
                .map(|_| ())
                .map_err(|e| e.into_repo(FORGE, "close pull request")),
            _ => Ok(()),
        }
    }

    fn merge(
        &self,
        request: &ChangeRequest,
        branch_tip: &str,
        message: &MergeMessage<'_>,
    ) -> Result<MergeOutcome, RepoError> {
        let merged = self.api.post(
            &self.route(&format!("pulls/{}/merge", request.number)),
            &json!({
                "Do": self.config.merge_style.name(),
                "MergeTitleField": message.title,
                "MergeMessageField": message.message,
                "head_commit_id": branch_tip,
                "delete_branch_after_merge": false,
            }),
        );
        match merged {
            Ok(_) => {
                let pull = self.pull(request.number)?;
                Ok(MergeOutcome::Merged(pull.merge_commit_sha))
            }
            // Conflicts, or a head that moved ("head out of date"): which one, from the pull.
            Err(error) if error.status() == Some(409) => {
                let pull = self.pull(request.number)?;
                if pull.head.sha != branch_tip {
                    Err(RepoError::Conflict {
                        branch: format!("pull request #{}", request.number),
                        expected: branch_tip.to_string(),
                        found: pull.head.sha,
                    })
                } else {
                    Ok(MergeOutcome::NeedsRebase)
                }
            }
            // Not mergeable now: protection, reviews, checks — or a conflict Gitea saw first.
            Err(error) if error.status() == Some(405) => {
                let pull = self.pull(request.number)?;
                if pull.merged {
                    return Ok(MergeOutcome::Merged(pull.merge_commit_sha));
                }
                if !pull.mergeable {
                    return Ok(MergeOutcome::NeedsRebase);
                }
                Ok(MergeOutcome::Blocked(format!(
                    "Gitea will not merge #{} yet: {}",
                    request.number,
                    error.message()
                )))
            }
            Err(error) => Err(error.into_repo(FORGE, "merge")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_cannot_work_are_named() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let token = Some(selfheal_config::Secret::new("gitea-secret"));
        for (config, named) in [
            (GiteaConfig::default(), "gitea.repository"),
            (
                GiteaConfig {
                    repository: "acme/gitops".into(),
                    ..Default::default()
                },
                "gitea.api_url",
            ),
            (
                GiteaConfig {
                    repository: "acme/gitops".into(),
                    api_url: "https://git.example/api/v1".into(),
                    ..Default::default()
                },
                "no Gitea token",
            ),
            (
                GiteaConfig {
                    repository: "acme/gitops".into(),
                    api_url: "ftp://git.example/api/v1".into(),
                    token: token.clone(),
                    ..Default::default()
                },
                "gitea.api_url",
            ),
        ] {
            let error = GiteaRepository::new(config, "main", runtime.handle().clone()).expect_err("refused");
            assert!(error.to_string().contains(named), "{error}");
            assert!(!error.to_string().contains("gitea-secret"), "{error}");
        }
        assert_eq!(path_segments("apps/check out/k.yaml"), "apps/check%20out/k.yaml");
    }
}
