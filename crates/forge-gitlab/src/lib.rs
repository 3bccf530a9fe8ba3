//! GitLab as the forge (REST API v4, gitlab.com or self-managed): the change through the API with
//! no clone, one merge request per incident.
//!
//! The change is one commit made by the commits API (`POST /projects/:id/repository/commits`,
//! its file actions in one call) on `selfheal/<incident>`, started from main's tip
//! (`start_sha`). The merge request is found again by its source branch in any state, so a
//! redelivered decision — after a crash between the commit and the merge request, say — opens
//! none twice. Merging, when approval is `auto`, goes through the merge API with the head's sha
//! (`PUT …/merge_requests/:iid/merge`), so approvals, pipelines and protected branches apply to
//! selfheal as to anyone; GitLab's refusal to merge yet (405, with its `detailed_merge_status`)
//! leaves the remediation `opened` with GitLab's reason.
//!
//! GitLab has no compare-and-set on a branch: moving a branch selfheal made is a check of its
//! tip, then a forced commit (`force` with `start_sha`); the window is one request long, as with
//! GitHub, and the reconciler's loop converges either way. A branch is never moved without a
//! commit (GitLab's API cannot), so `main` changes only through merge requests.
//!
//! Retries (5xx, transport errors, 429 with `Retry-After` or `RateLimit-Reset`) are
//! `selfheal_forge_http`'s. Blocking like every [`GitRepo`].

use std::{path::PathBuf, time::Duration};

use reqwest::Method;
use selfheal_forge_http::{Api, ApiSettings, CallError, conflict, encode_segment, parse};
use selfheal_git::{
    Author, ChangeRequest, ChangeRequestState, FileVersion, Forge, GitRepo, MergeMessage, MergeOutcome, Proposal,
    RepoError,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Settings of the GitLab forge (`[gitlab]`; `SELFHEAL_PR_CONTROLLER_GITLAB__*`). When `project`
/// is set, selfheal works on GitLab instead of the local repository.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GitLabConfig {
    /// The project's path (`group/subgroup/gitops`); empty means "do not use GitLab".
    pub project: String,
    /// REST API root: `https://gitlab.com/api/v4`, or `https://HOST/api/v4` self-managed.
    pub api_url: String,
    /// A token with the `api` scope (personal, project or group access token; Developer role
    /// at least, Maintainer where main is protected to them).
    pub token: Option<selfheal_config::Secret>,
    /// File holding the token (used when `token` is unset).
    pub token_file: Option<PathBuf>,
    /// Send the token as `Authorization: Bearer` (OAuth tokens) instead of `PRIVATE-TOKEN`.
    pub bearer: bool,
    /// Labels put on every merge request selfheal opens (GitLab creates missing ones).
    pub labels: Vec<String>,
    /// Squash the merge request into one commit on main (default true; the commit carries
    /// selfheal's trailers either way).
    pub squash: bool,
    /// How many commits of a file's history to read when looking for the previous image tag.
    pub history_depth: usize,
    /// Attempts per request on 5xx, transport errors and rate limits.
    pub attempts: u32,
    /// The longest rate-limit wait honoured in place; a longer one redelivers the decision later.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
}

impl Default for GitLabConfig {
    fn default() -> Self {
        Self {
            project: String::new(),
            api_url: "https://gitlab.com/api/v4".into(),
            token: None,
            token_file: None,
            bearer: false,
            labels: vec!["selfheal".into(), "auto-remediation".into()],
            squash: true,
            history_depth: 30,
            attempts: 5,
            max_wait: Duration::from_secs(20),
        }
    }
}

impl GitLabConfig {
    /// Whether GitLab is configured.
    pub fn enabled(&self) -> bool {
        !self.project.is_empty()
    }
}

const FORGE: &str = "GitLab";

/// A GitLab project reached through its REST API.
#[derive(Debug)]
pub struct GitLabRepository {
    api: Api,
    /// `/projects/<encoded path>`.
    project: String,
    config: GitLabConfig,
}

fn is_project_path(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    parts.len() >= 2
        && parts.iter().all(|part| {
            !part.is_empty()
                && part.len() <= 255
                && *part != "."
                && *part != ".."
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
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
struct File {
    content: String,
    encoding: String,
}

#[derive(Deserialize)]
struct CommitEntry {
    id: String,
    message: String,
}

#[derive(Deserialize)]
struct MergeRequest {
    iid: u64,
    web_url: String,
    state: String,
    sha: Option<String>,
    merge_commit_sha: Option<String>,
    squash_commit_sha: Option<String>,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    detailed_merge_status: Option<String>,
}

impl MergeRequest {
    fn request(&self) -> ChangeRequest {
        let state = match self.state.as_str() {
            "merged" => ChangeRequestState::Merged,
            // `locked` is a merge in progress.
            "opened" | "locked" => ChangeRequestState::Open,
            _ => ChangeRequestState::Closed,
        };
        ChangeRequest {
            number: self.iid,
            url: self.web_url.clone(),
            state,
            head: self.sha.clone().unwrap_or_default(),
            merge_commit: (state == ChangeRequestState::Merged)
                .then(|| self.squash_commit_sha.clone().or_else(|| self.merge_commit_sha.clone()))
                .flatten(),
        }
    }
}

impl GitLabRepository {
    /// Checks the settings and builds the client; connects nothing yet. Requests run on `runtime`.
    pub fn new(config: GitLabConfig, runtime: tokio::runtime::Handle) -> Result<Self, RepoError> {
        let bad = |reason: String| RepoError::Open {
            path: format!("gitlab:{}", config.project),
            reason,
        };
        if !is_project_path(&config.project) {
            return Err(bad("gitlab.project: must be a project path, group/name".into()));
        }
        let token = selfheal_config::Secret::inline_or_file(config.token.clone(), config.token_file.as_deref())
            .map_err(|e| bad(format!("gitlab.token_file: {e}")))?
            .filter(|token| !token.is_empty())
            .ok_or_else(|| bad("no GitLab token: set gitlab.token or gitlab.token_file".into()))?;
        let (auth_header, auth_prefix) = if config.bearer {
            ("authorization", "Bearer ")
        } else {
            ("private-token", "")
        };
        let api = Api::new(
            ApiSettings {
                forge: FORGE,
                base_url: config.api_url.clone(),
                auth_header,
                auth_prefix,
                token,
                attempts: config.attempts,
                max_wait: config.max_wait,
            },
            runtime,
        )
        .map_err(|e| bad(format!("gitlab.{e}")))?;
        Ok(Self {
            api,
            project: format!("/projects/{}", encode_segment(&config.project)),
            config,
        })
    }

    fn route(&self, rest: &str) -> String {
        format!("{}/{rest}", self.project)
    }

    fn merge_request(&self, iid: u64) -> Result<MergeRequest, RepoError> {
        let found = self
            .api
            .get(&self.route(&format!("merge_requests/{iid}")), &[])
            .map_err(|e| e.into_repo(FORGE, "get merge request"))?;
        parse(FORGE, found, "get merge request")
    }

    /// Puts the configured labels on an open merge request that lacks some (idempotent).
    fn label(&self, request: &MergeRequest) -> Result<(), RepoError> {
        let missing: Vec<&str> = self
            .config
            .labels
            .iter()
            .filter(|label| !request.labels.contains(label))
            .map(String::as_str)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        self.api
            .put(
                &self.route(&format!("merge_requests/{}", request.iid)),
                &json!({ "add_labels": missing.join(",") }),
            )
            .map(|_| ())
            .map_err(|e| e.into_repo(FORGE, "add labels"))
    }
}

impl GitRepo for GitLabRepository {
    fn location(&self) -> String {
        format!("gitlab:{}", self.config.project)
    }

    fn branch_tip(&self, branch: &str) -> Result<Option<String>, RepoError> {
        match self.api.get(
            &self.route(&format!("repository/branches/{}", encode_segment(branch))),
            &[],
        ) {
            Ok(found) => Ok(Some(parse::<Branch>(FORGE, found, "get branch")?.commit.id)),
            Err(error) if error.status() == Some(404) => Ok(None),
            Err(error) => Err(error.into_repo(FORGE, "get branch")),
        }
    }

    fn read_file(&self, commit: &str, path: &str) -> Result<Option<String>, RepoError> {
        let found = match self.api.get(
            &self.route(&format!("repository/files/{}", encode_segment(path))),
            &[("ref", commit)],
        ) {
            Ok(found) => parse::<File>(FORGE, found, "get file")?,
            Err(error) if error.status() == Some(404) => return Ok(None),
            Err(error) => return Err(error.into_repo(FORGE, "get file")),
        };
        if found.encoding != "base64" {
            return Ok(Some(found.content));
        }
        selfheal_git::decode_content(FORGE, path, &found.content).map(Some)
    }

    fn file_history(&self, branch: &str, path: &str, limit: usize) -> Result<Vec<FileVersion>, RepoError> {
        let per_page = limit.min(self.config.history_depth).clamp(1, 100).to_string();
        let query = [
            ("ref_name", branch),
            ("path", path),
            ("per_page", per_page.as_str()),
            ("first_parent", "true"),
        ];
        let commits: Vec<CommitEntry> = match self.api.get(&self.route("repository/commits"), &query) {
            Ok(found) => parse(FORGE, found, "list commits")?,
            Err(error) if error.status() == Some(404) => return Ok(Vec::new()),
            Err(error) => return Err(error.into_repo(FORGE, "list commits")),
        };
        let mut versions = Vec::new();
        for entry in commits {
            if let Some(content) = self.read_file(&entry.id, path)? {
                versions.push(FileVersion {
                    commit: entry.id,
                    content,
                    message: entry.message.trim_end_matches('\n').to_string(),
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
            // No compare-and-set on a branch in GitLab's API: check, then move (see the module's
            // documentation).
            let found = self.branch_tip(branch)?;
            if found.as_deref() != Some(expected) {
                return Err(conflict(
                    branch,
                    expected_tip,
                    found.unwrap_or_else(|| "no branch".into()),
                ));
            }
        }
        let body = json!({
            "branch": branch,
            "start_sha": parent,
            "force": expected_tip.is_some(),
            "commit_message": message,
            "author_name": author.name,
            "author_email": author.email,
            "actions": [{ "action": "update", "file_path": path, "content": content }],
        });
        match self.api.post(&self.route("repository/commits"), &body) {
            Ok(created) => Ok(parse::<Id>(FORGE, created, "create commit")?.id),
            // "A branch called '…' already exists": another replica, or an earlier attempt.
            Err(error) if error.status() == Some(400) && error.message().contains("already exists") => {
                Err(conflict(branch, expected_tip, "a branch".into()))
            }
            Err(error) => Err(error.into_repo(FORGE, "create commit")),
        }
    }

    fn update_branch(&self, branch: &str, _expected_tip: &str, _new_tip: &str) -> Result<(), RepoError> {
        Err(RepoError::Refused(format!(
            "{FORGE} cannot move {branch} without a commit: changes reach it through merge requests"
        )))
    }

    fn is_ancestor(&self, ancestor: &str, descendant: &str) -> Result<bool, RepoError> {
        if ancestor == descendant {
            return Ok(true);
        }
        let base = self
            .api
            .get(
                &self.route("repository/merge_base"),
                &[("refs[]", ancestor), ("refs[]", descendant)],
            )
            .map_err(|e| e.into_repo(FORGE, "merge base"))?;
        Ok(parse::<Id>(FORGE, base, "merge base")?.id == ancestor)
    }
}

impl Forge for GitLabRepository {
    fn name(&self) -> &str {
        FORGE
    }

    fn find_request(&self, branch: &str) -> Result<Option<ChangeRequest>, RepoError> {
        let found = self
            .api
            .get(
                &self.route("merge_requests"),
                &[("source_branch", branch), ("state", "all"), ("per_page", "20")],
            )
            .map_err(|e| e.into_repo(FORGE, "list merge requests"))?;
        let requests: Vec<MergeRequest> = parse(FORGE, found, "list merge requests")?;
        // A merged one wins over an open one, which wins over closed ones.
        let Some(request) = requests.into_iter().max_by_key(|mr| mr.request().state.standing()) else {
            return Ok(None);
        };
        if request.request().state == ChangeRequestState::Open {
            self.label(&request)?;
        }
        Ok(Some(request.request()))
    }

    fn open_request(&self, proposal: &Proposal<'_>) -> Result<ChangeRequest, RepoError> {
        let created = self.api.post(
            &self.route("merge_requests"),
            &json!({
                "source_branch": proposal.branch,
                "target_branch": proposal.base,
                "title": proposal.title,
                "description": proposal.body,
                "labels": self.config.labels.join(","),
                "remove_source_branch": true,
                "squash": self.config.squash,
            }),
        );
        match created {
            Ok(created) => Ok(parse::<MergeRequest>(FORGE, created, "create merge request")?.request()),
            // "Another open merge request already exists for this source branch".
            Err(error) if error.status() == Some(409) => match self.find_request(proposal.branch)? {
                Some(found) => Ok(found),
                None => Err(error.into_repo(FORGE, "create merge request")),
            },
            Err(error) => Err(error.into_repo(FORGE, "create merge request")),
        }
    }

    fn withdraw(&self, branch: &str) -> Result<(), RepoError> {
        match self.find_request(branch)? {
            Some(request) if request.state == ChangeRequestState::Open => self
                .api
                .put(
                    &self.route(&format!("merge_requests/{}", request.number)),
                    &json!({ "state_event": "close" }),
                )
                .map(|_| ())
                .map_err(|e| e.into_repo(FORGE, "close merge request")),
            _ => Ok(()),
        }
    }

    fn merge(
        &self,
        request: &ChangeRequest,
        branch_tip: &str,
        message: &MergeMessage<'_>,
    ) -> Result<MergeOutcome, RepoError> {
        let text = format!("{}\n\n{}", message.title, message.message);
        let merged = self.api.call(
            Method::PUT,
            &self.route(&format!("merge_requests/{}/merge", request.number)),
            &[],
            Some(&json!({
                "sha": branch_tip,
                "squash": self.config.squash,
                "squash_commit_message": text,
                "merge_commit_message": text,
                "should_remove_source_branch": true,
            })),
        );
        match merged {
            Ok(merged) => {
                let merged: MergeRequest = parse(FORGE, merged, "merge")?;
                Ok(MergeOutcome::Merged(merged.request().merge_commit))
            }
            // "SHA does not match HEAD of source branch".
            Err(error) if error.status() == Some(409) => Err(RepoError::Conflict {
                branch: format!("merge request !{}", request.number),
                expected: branch_tip.to_string(),
                found: "another head".into(),
            }),
            // The branch no longer applies to main.
            Err(error) if matches!(error.status(), Some(406 | 422)) => Ok(MergeOutcome::NeedsRebase),
            // Not mergeable now: why, in GitLab's words.
            Err(error) if error.status() == Some(405) => {
                let found = self.merge_request(request.number)?;
                match found.detailed_merge_status.as_deref() {
                    Some("need_rebase" | "conflict") => Ok(MergeOutcome::NeedsRebase),
                    status => Ok(MergeOutcome::Blocked(format!(
                        "GitLab will not merge !{} yet ({}): {}",
                        request.number,
                        status.unwrap_or("unknown"),
                        error.message()
                    ))),
                }
            }
            Err(error) => Err(CallError::into_repo(error, FORGE, "merge")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_cannot_work_are_named() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        for (config, named) in [
            (GitLabConfig::default(), "gitlab.project"),
            (
                GitLabConfig {
                    project: "gitops".into(),
                    ..Default::default()
                },
                "gitlab.project",
            ),
            (
                GitLabConfig {
                    project: "acme/../gitops".into(),
                    ..Default::default()
                },
                "gitlab.project",
            ),
            (
                GitLabConfig {
                    project: "acme/gitops".into(),
                    ..Default::default()
                },
                "no GitLab token",
            ),
            (
                GitLabConfig {
                    project: "acme/gitops".into(),
                    token: Some(selfheal_config::Secret::new("glpat-x")),
                    api_url: "https://user:pw@gitlab.example/api/v4".into(),
                    ..Default::default()
                },
                "gitlab.api_url",
            ),
        ] {
            let error = GitLabRepository::new(config, runtime.handle().clone()).expect_err("refused");
            assert!(error.to_string().contains(named), "{error}");
            assert!(!error.to_string().contains("glpat-x"), "{error}");
        }
        let ok = GitLabRepository::new(
            GitLabConfig {
                project: "platform/team/gitops".into(),
                token: Some(selfheal_config::Secret::new("glpat-x")),
                ..Default::default()
            },
            runtime.handle().clone(),
        )
        .expect("valid");
        assert_eq!(ok.project, "/projects/platform%2Fteam%2Fgitops");
        assert!(!format!("{ok:?}").contains("glpat-x"));
    }
}
