//! A local server speaking Gitea's API v1 (Forgejo's is the same) — the calls selfheal makes, in
//! Gitea's documented shapes — backed by a real bare repository ([`GitBackend`]). It checks
//! `Authorization: token …` on every request and injects the faults a test asks for
//! ([`crate::fake_forge`]).
//!
//! Routes, under `/api/v1/repos/acme/gitops/`: branches (get, delete), contents (get, update on a
//! new branch with the blob check), commits, labels (list, create), pulls (list by state, get,
//! create with label ids, close, merge with `head_commit_id`), compare.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    body::Bytes,
    extract::{Request, State},
    http::Method,
    response::Response,
};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::{
    fake_forge::{Faults, answer, decode, finish, message, query_value},
    git_backend::{GitBackend, Who},
};

pub const TOKEN: &str = "gitea-e2e-0123456789abcdef";
pub const REPOSITORY: &str = "acme/gitops";
const PREFIX: &str = "/api/v1/repos/acme/gitops/";

#[derive(Clone, Debug)]
pub struct Pull {
    pub number: u64,
    pub title: String,
    pub body: String,
    pub head: String,
    pub base: String,
    /// `open` or `closed`.
    pub state: String,
    pub merged: bool,
    pub label_ids: Vec<i64>,
    pub merge_commit_sha: Option<String>,
    pub merged_head: Option<String>,
}

pub struct Hub {
    pub repo: GitBackend,
    pub pulls: Vec<Pull>,
    /// (id, name).
    pub labels: Vec<(i64, String)>,
    pub faults: Faults,
    pub log: Vec<String>,
    pub unauthorized: usize,
}

impl Hub {
    pub fn label_names(&self, pull: &Pull) -> Vec<String> {
        pull.label_ids
            .iter()
            .filter_map(|id| self.labels.iter().find(|(i, _)| i == id).map(|(_, n)| n.clone()))
            .collect()
    }
}

type Shared = Arc<Mutex<Hub>>;

async fn gitea(
    State((hub, addr, release)): State<(Shared, SocketAddr, Arc<tokio::sync::Semaphore>)>,
    request: Request,
) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query: Vec<(String, String)> = request
        .uri()
        .query()
        .and_then(|q| serde_urlencoded::from_str(q).ok())
        .unwrap_or_default();
    let authorized = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("token {TOKEN}"));
    let bytes: Bytes = axum::body::to_bytes(request.into_body(), 4 << 20)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let response = respond(&hub, addr, &method, &path, &query, authorized, &body);
    finish(response, &release).await
}

fn pull_json(hub: &Hub, pull: &Pull, base: &str) -> Value {
    let head = pull.merged_head.clone().or_else(|| hub.repo.tip(&pull.head));
    let mergeable = match (hub.repo.tip(&pull.base), &head) {
        (Some(target), Some(head)) => hub.repo.is_ancestor(&target, head),
        _ => false,
    };
    json!({
        "id": 1000 + pull.number, "number": pull.number, "title": pull.title, "body": pull.body,
        "html_url": format!("{base}/acme/gitops/pulls/{}", pull.number),
        "state": pull.state, "merged": pull.merged, "merge_commit_sha": pull.merge_commit_sha,
        "merged_at": pull.merged.then_some("2026-12-01T12:00:00Z"),
        "mergeable": !pull.merged && pull.state == "open" && mergeable,
        "head": {"ref": pull.head, "sha": head, "label": pull.head},
        "base": {"ref": pull.base, "sha": hub.repo.tip(&pull.base), "label": pull.base},
        "labels": pull.label_ids.iter().filter_map(|id| hub.labels.iter().find(|(i, _)| i == id))
            .map(|(id, name)| json!({"id": id, "name": name, "color": "1d76db"})).collect::<Vec<_>>(),
    })
}

fn respond(
    hub: &Shared,
    addr: SocketAddr,
    method: &Method,
    path: &str,
    query: &[(String, String)],
    authorized: bool,
    body: &Value,
) -> Response {
    let base = format!("http://{addr}");
    let mut hub = hub.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    hub.log.push(format!("{method} {path}"));
    if !authorized {
        hub.unauthorized += 1;
        return message(401, "token is required");
    }
    if let Some(injected) = hub.faults.answer(method, path) {
        return injected;
    }
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return message(404, "The target couldn't be found.");
    };
    let parts: Vec<String> = rest.split('/').map(decode).collect();
    let (first, tail) = (parts[0].as_str(), parts[1..].join("/"));
    let repo = hub.repo.clone();
    let field = |name: &str| body.get(name).and_then(Value::as_str).map(str::to_string);
    match (method.as_str(), first, tail.as_str()) {
        ("GET", "branches", branch) => match repo.tip(branch) {
            Some(tip) => answer(
                200,
                json!({"name": branch, "commit": {"id": tip, "message": repo.message(&tip).unwrap_or_default()}}),
            ),
            None => message(404, "branch does not exist"),
        },
        ("DELETE", "branches", branch) => match repo.delete_ref(branch) {
            Ok(()) => answer(204, Value::Null),
            Err(_) => message(404, "branch does not exist"),
        },
        ("GET", "contents", file) => {
            let reference = query_value(query, "ref").unwrap_or("main");
            match (repo.read(reference, file), repo.blob(reference, file)) {
                (Some(text), Some(sha)) => answer(
                    200,
                    json!({
                        "name": file.rsplit('/').next(), "path": file, "sha": sha, "type": "file", "size": text.len(),
                        "encoding": "base64", "content": base64::engine::general_purpose::STANDARD.encode(text.as_bytes()),
                    }),
                ),
                _ => message(404, "The target couldn't be found."),
            }
        }
        ("PUT", "contents", file) => {
            let base_branch = field("branch").unwrap_or_else(|| "main".into());
            let Some(base_tip) = repo.tip(&base_branch) else {
                return message(404, "branch does not exist");
            };
            let target = field("new_branch")
                .filter(|b| !b.is_empty())
                .unwrap_or_else(|| base_branch.clone());
            if target != base_branch && repo.tip(&target).is_some() {
                return message(422, &format!("branch already exists [name: {target}]"));
            }
            let expected = repo.blob(&base_tip, file).unwrap_or_default();
            let given = field("sha").unwrap_or_default();
            if given != expected {
                return message(
                    422,
                    &format!("sha does not match [given: {given}, expected: {expected}]"),
                );
            }
            let Some(content) = field("content")
                .and_then(|c| base64::engine::general_purpose::STANDARD.decode(c).ok())
                .and_then(|b| String::from_utf8(b).ok())
            else {
                return message(422, "content is not base64");
            };
            let author = body.get("author");
            let name = author
                .and_then(|a| a.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("gitea");
            let email = author
                .and_then(|a| a.get("email"))
                .and_then(Value::as_str)
                .unwrap_or("gitea@example");
            let text = field("message").unwrap_or_default();
            let commit = match repo.commit(Some(&base_tip), &[(file, content)], &text, &Who { name, email }) {
                Ok(commit) => commit,
                Err(e) => return message(500, &e.to_string()),
            };
            let old = (target == base_branch).then_some(base_tip.as_str());
            if repo.set_ref(&target, &commit, old).is_err() {
                return message(500, "the branch moved");
            }
            answer(
                200,
                json!({"content": {"path": file}, "commit": {"sha": commit, "message": text}}),
            )
        }
        ("GET", "commits", "") => {
            let reference = query_value(query, "sha").unwrap_or("main");
            let file = query_value(query, "path").unwrap_or("");
            // Gitea ignores `limit` with `path`; so does this fake.
            match repo.log(reference, file, 1000) {
                Ok(log) if !log.is_empty() => answer(
                    200,
                    Value::Array(
                        log.into_iter()
                            .map(|(sha, message)| json!({"sha": sha, "commit": {"message": message}}))
                            .collect(),
                    ),
                ),
                _ => message(404, "The target couldn't be found."),
            }
        }
        ("GET", "labels", "") => answer(
            200,
            Value::Array(
                hub.labels
                    .iter()
                    .map(|(id, name)| json!({"id": id, "name": name, "color": "1d76db"}))
                    .collect(),
            ),
        ),
        ("POST", "labels", "") => {
            let Some(name) = field("name") else {
                return message(422, "name is required");
            };
            let id = hub.labels.len() as i64 + 10;
            hub.labels.push((id, name.clone()));
            answer(201, json!({"id": id, "name": name, "color": "1d76db"}))
        }
        ("GET", "pulls", "") => {
            let state = query_value(query, "state").unwrap_or("open");
            let limit: usize = query_value(query, "limit").and_then(|l| l.parse().ok()).unwrap_or(30);
            let page: usize = query_value(query, "page")
                .and_then(|p| p.parse().ok())
                .unwrap_or(1)
                .max(1);
            let listed: Vec<Value> = hub
                .pulls
                .iter()
                .rev()
                .filter(|p| state == "all" || p.state == state)
                .skip((page - 1) * limit)
                .take(limit)
                .map(|p| pull_json(&hub, p, &base))
                .collect();
            answer(200, Value::Array(listed))
        }
        ("POST", "pulls", "") => {
            let (Some(head), Some(base_branch), Some(title)) = (field("head"), field("base"), field("title")) else {
                return message(422, "head, base and title are required");
            };
            if repo.tip(&head).is_none() {
                return message(404, "head branch does not exist");
            }
            if hub
                .pulls
                .iter()
                .any(|p| p.head == head && p.base == base_branch && p.state == "open")
            {
                return message(409, "pull request already exists for these targets");
            }
            let label_ids = body
                .get("labels")
                .and_then(Value::as_array)
                .map(|ids| ids.iter().filter_map(Value::as_i64).collect())
                .unwrap_or_default();
            let pull = Pull {
                number: hub.pulls.len() as u64 + 1,
                title,
                body: field("body").unwrap_or_default(),
                head,
                base: base_branch,
                state: "open".into(),
                merged: false,
                label_ids,
                merge_commit_sha: None,
                merged_head: None,
            };
            let json = pull_json(&hub, &pull, &base);
            hub.pulls.push(pull);
            answer(201, json)
        }
        ("GET" | "PATCH", "pulls", number) if !number.contains('/') => {
            let Some(index) = number
                .parse::<u64>()
                .ok()
                .and_then(|n| hub.pulls.iter().position(|p| p.number == n))
            else {
                return message(404, "The target couldn't be found.");
            };
            if method == Method::PATCH {
                if hub.pulls[index].merged {
                    return message(412, "cannot change the state of a merged pull request");
                }
                if field("state").as_deref() == Some("closed") {
                    hub.pulls[index].state = "closed".into();
                }
                return answer(201, pull_json(&hub, &hub.pulls[index], &base));
            }
            answer(200, pull_json(&hub, &hub.pulls[index], &base))
        }
        ("POST", "pulls", merge) if merge.ends_with("/merge") => {
            let number = merge.trim_end_matches("/merge");
            let Some(index) = number
                .parse::<u64>()
                .ok()
                .and_then(|n| hub.pulls.iter().position(|p| p.number == n))
            else {
                return message(404, "The target couldn't be found.");
            };
            let pull = hub.pulls[index].clone();
            if pull.merged || pull.state != "open" {
                return message(405, "The PR is already merged or closed");
            }
            let (Some(head), Some(target)) = (repo.tip(&pull.head), repo.tip(&pull.base)) else {
                return message(405, "not mergeable");
            };
            if let Some(wanted) = field("head_commit_id")
                && wanted != head
            {
                return message(409, "head out of date");
            }
            if !repo.is_ancestor(&target, &head) {
                return message(409, "merge conflict: this fake merges up-to-date branches only");
            }
            let style = field("Do").unwrap_or_else(|| "merge".into());
            let title = field("MergeTitleField").unwrap_or_else(|| pull.title.clone());
            let text = field("MergeMessageField").unwrap_or_default();
            let merged = match style.as_str() {
                "squash" => {
                    let tree = match repo.tree(&head) {
                        Ok(tree) => tree,
                        Err(e) => return message(500, &e.to_string()),
                    };
                    let who = Who {
                        name: "Gitea",
                        email: "gitea@example",
                    };
                    match repo.commit_tree(&tree, Some(&target), &format!("{title}\n\n{text}"), &who) {
                        Ok(commit) => commit,
                        Err(e) => return message(500, &e.to_string()),
                    }
                }
                "fast-forward-only" | "rebase" | "merge" => head.clone(),
                other => return message(405, &format!("merge style {other} is not allowed")),
            };
            if repo.set_ref(&pull.base, &merged, Some(&target)).is_err() {
                return message(409, "merge push out of date");
            }
            let stored = &mut hub.pulls[index];
            stored.merged = true;
            stored.state = "closed".into();
            stored.merged_head = Some(head);
            stored.merge_commit_sha = Some(merged);
            answer(200, Value::Null)
        }
        ("GET", "compare", range) => {
            let Some((from, to)) = range.split_once("...") else {
                return message(404, "The target couldn't be found.");
            };
            match repo.count_between(from, to) {
                Ok(total) => answer(200, json!({"total_commits": total, "commits": []})),
                Err(_) => message(404, "The target couldn't be found."),
            }
        }
        _ => message(404, "The target couldn't be found."),
    }
}

/// The fake Gitea, serving one repository backed by a bare repository.
pub struct FakeGitea {
    hub: Shared,
    release: Arc<tokio::sync::Semaphore>,
    /// The API root (`…/api/v1`).
    pub api_url: String,
    /// The web root, where pull requests are.
    pub web_url: String,
}

impl FakeGitea {
    pub async fn start(repo: GitBackend) -> anyhow::Result<Self> {
        let hub: Shared = Arc::new(Mutex::new(Hub {
            repo,
            pulls: Vec::new(),
            labels: vec![(1, "bug".into()), (2, "selfheal".into())],
            faults: Faults::default(),
            log: Vec::new(),
            unauthorized: 0,
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let app = axum::Router::new()
            .fallback(gitea)
            .with_state((hub.clone(), addr, release.clone()));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self {
            hub,
            release,
            api_url: format!("http://{addr}/api/v1"),
            web_url: format!("http://{addr}"),
        })
    }

    /// Answers held requests (with a 502, not carried out).
    pub fn release(&self) {
        let held = self.with(|h| h.faults.held);
        self.release.add_permits(held);
    }

    pub fn fault(
        &self,
        method: Method,
        path_ends: &'static str,
        status: u16,
        headers: &[(&'static str, &str)],
        times: u32,
    ) {
        self.hub
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .faults
            .add(method, path_ends, status, headers, times);
    }

    pub fn with<T>(&self, f: impl FnOnce(&Hub) -> T) -> T {
        f(&self.hub.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// How many requests were `METHOD /path` (the path after the repository).
    pub fn count(&self, method: &str, rest: &str) -> usize {
        let wanted = format!("{method} {PREFIX}{rest}");
        self.with(|h| h.log.iter().filter(|l| **l == wanted).count())
    }
}
