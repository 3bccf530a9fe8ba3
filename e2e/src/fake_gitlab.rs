//! A local server speaking GitLab's REST API v4 — the calls selfheal makes, in GitLab's documented
//! shapes — backed by a real bare repository ([`GitBackend`]). It checks `PRIVATE-TOKEN` on every
//! request and injects the faults a test asks for: a status with headers (a 429 with
//! `Retry-After`), or a request held unanswered (and not carried out) until released, the window
//! a crash falls in.
//!
//! Routes: branches, files, commits (list, and create with actions), merge_base, merge requests
//! (list by source branch, get, create, update, merge with `sha`), all under
//! `/api/v4/projects/acme%2Fgitops/`.

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

pub const TOKEN: &str = "glpat-e2e-0123456789";
pub const PROJECT: &str = "acme/gitops";
const PREFIX: &str = "/api/v4/projects/acme%2Fgitops/";

/// A merge request as the fake keeps it.
#[derive(Clone, Debug)]
pub struct MergeRequest {
    pub iid: u64,
    pub title: String,
    pub description: String,
    pub source_branch: String,
    pub target_branch: String,
    /// `opened`, `merged` or `closed`.
    pub state: String,
    pub labels: Vec<String>,
    pub squash_commit_sha: Option<String>,
    pub merge_commit_sha: Option<String>,
    /// The head when merged (the branch may move on).
    pub merged_head: Option<String>,
}

pub struct Hub {
    pub repo: GitBackend,
    pub merge_requests: Vec<MergeRequest>,
    pub faults: Faults,
    /// "METHOD /path" of every request, faulted or not (the path as sent, encoded).
    pub log: Vec<String>,
    pub unauthorized: usize,
}

type Shared = Arc<Mutex<Hub>>;

async fn gitlab(
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
        .get("private-token")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == TOKEN);
    let bytes: Bytes = axum::body::to_bytes(request.into_body(), 4 << 20)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let response = respond(&hub, addr, &method, &path, &query, authorized, &body);
    finish(response, &release).await
}

fn mr_json(hub: &Hub, mr: &MergeRequest, base: &str) -> Value {
    let head = mr.merged_head.clone().or_else(|| hub.repo.tip(&mr.source_branch));
    let status = match mr.state.as_str() {
        "opened" => match (hub.repo.tip(&mr.target_branch), &head) {
            (Some(target), Some(head)) if hub.repo.is_ancestor(&target, head) => "mergeable",
            _ => "need_rebase",
        },
        _ => "not_open",
    };
    json!({
        "id": 1000 + mr.iid, "iid": mr.iid, "project_id": 7, "title": mr.title, "description": mr.description,
        "state": mr.state, "source_branch": mr.source_branch, "target_branch": mr.target_branch,
        "web_url": format!("{base}/acme/gitops/-/merge_requests/{}", mr.iid),
        "sha": head, "merge_commit_sha": mr.merge_commit_sha, "squash_commit_sha": mr.squash_commit_sha,
        "labels": mr.labels, "detailed_merge_status": status, "merge_status": "can_be_merged",
        "draft": false, "has_conflicts": false,
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
        return message(401, "401 Unauthorized");
    }
    if let Some(injected) = hub.faults.answer(method, path) {
        return injected;
    }
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return message(404, "404 Project Not Found");
    };
    let parts: Vec<String> = rest.split('/').map(decode).collect();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let repo = hub.repo.clone();
    match (method.as_str(), parts.as_slice()) {
        ("GET", ["repository", "branches", branch]) => match repo.tip(branch) {
            Some(tip) => answer(
                200,
                json!({"name": branch, "commit": {"id": tip}, "protected": *branch == "main"}),
            ),
            None => message(404, "404 Branch Not Found"),
        },
        ("GET", ["repository", "files", file]) => {
            let Some(reference) = query_value(query, "ref") else {
                return answer(400, json!({"error": "ref is missing"}));
            };
            match (repo.read(reference, file), repo.blob(reference, file)) {
                (Some(text), Some(blob)) => answer(
                    200,
                    json!({
                        "file_name": file.rsplit('/').next(), "file_path": file, "size": text.len(),
                        "encoding": "base64", "content": base64::engine::general_purpose::STANDARD.encode(text.as_bytes()),
                        "ref": reference, "blob_id": blob, "commit_id": reference,
                    }),
                ),
                _ => message(404, "404 File Not Found"),
            }
        }
        ("GET", ["repository", "commits"]) => {
            let reference = query_value(query, "ref_name").unwrap_or("main");
            let file = query_value(query, "path").unwrap_or("");
            let limit: usize = query_value(query, "per_page")
                .and_then(|n| n.parse().ok())
                .unwrap_or(20);
            match repo.log(reference, file, limit) {
                Ok(log) => answer(
                    200,
                    Value::Array(
                        log.into_iter()
                            .map(|(id, message)| json!({"id": id, "short_id": &id[..8], "title": message.lines().next(), "message": message}))
                            .collect(),
                    ),
                ),
                Err(_) => message(404, "404 Not Found"),
            }
        }
        ("POST", ["repository", "commits"]) => create_commit(&repo, body),
        ("GET", ["repository", "merge_base"]) => {
            let refs: Vec<&str> = query
                .iter()
                .filter(|(k, _)| k == "refs[]")
                .map(|(_, v)| v.as_str())
                .collect();
            match refs.as_slice() {
                [a, b] => match repo.merge_base(a, b) {
                    Some(id) => answer(200, json!({"id": id})),
                    None => message(404, "404 Merge Base Not Found"),
                },
                _ => answer(400, json!({"error": "refs needs two"})),
            }
        }
        ("GET", ["merge_requests"]) => {
            let source = query_value(query, "source_branch");
            let state = query_value(query, "state").unwrap_or("all");
            let found: Vec<Value> = hub
                .merge_requests
                .iter()
                .rev()
                .filter(|mr| source.is_none_or(|s| mr.source_branch == s) && (state == "all" || mr.state == state))
                .map(|mr| mr_json(&hub, mr, &base))
                .collect();
            answer(200, Value::Array(found))
        }
        ("GET", ["merge_requests", iid]) => match find(&hub, iid) {
            Some(index) => answer(200, mr_json(&hub, &hub.merge_requests[index], &base)),
            None => message(404, "404 Not found"),
        },
        ("POST", ["merge_requests"]) => {
            let field = |name: &str| body.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
            let (source, target, title) = (field("source_branch"), field("target_branch"), field("title"));
            if source.is_empty() || target.is_empty() || title.is_empty() {
                return answer(400, json!({"error": "source_branch, target_branch, title are missing"}));
            }
            if repo.tip(&source).is_none() {
                return answer(422, json!({"message": ["Source branch does not exist"]}));
            }
            if let Some(open) = hub
                .merge_requests
                .iter()
                .find(|mr| mr.source_branch == source && mr.state == "opened")
            {
                return answer(
                    409,
                    json!({"message": [format!("Another open merge request already exists for this source branch: !{}", open.iid)]}),
                );
            }
            let labels = field("labels")
                .split(',')
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            let mr = MergeRequest {
                iid: hub.merge_requests.len() as u64 + 1,
                title,
                description: field("description"),
                source_branch: source,
                target_branch: target,
                state: "opened".into(),
                labels,
                squash_commit_sha: None,
                merge_commit_sha: None,
                merged_head: None,
            };
            let json = mr_json(&hub, &mr, &base);
            hub.merge_requests.push(mr);
            answer(201, json)
        }
        ("PUT", ["merge_requests", iid]) => {
            let Some(index) = find(&hub, iid) else {
                return message(404, "404 Not found");
            };
            if body.get("state_event").and_then(Value::as_str) == Some("close")
                && hub.merge_requests[index].state == "opened"
            {
                hub.merge_requests[index].state = "closed".into();
            }
            if let Some(add) = body.get("add_labels").and_then(Value::as_str) {
                for label in add.split(',').filter(|l| !l.is_empty()) {
                    if !hub.merge_requests[index].labels.iter().any(|l| l == label) {
                        hub.merge_requests[index].labels.push(label.to_string());
                    }
                }
            }
            answer(200, mr_json(&hub, &hub.merge_requests[index], &base))
        }
        ("PUT", ["merge_requests", iid, "merge"]) => {
            let Some(index) = find(&hub, iid) else {
                return message(404, "404 Not found");
            };
            let mr = hub.merge_requests[index].clone();
            if mr.state != "opened" {
                return message(405, "405 Method Not Allowed");
            }
            let (Some(head), Some(target)) = (repo.tip(&mr.source_branch), repo.tip(&mr.target_branch)) else {
                return message(405, "405 Method Not Allowed");
            };
            if let Some(sha) = body.get("sha").and_then(Value::as_str)
                && sha != head
            {
                return message(409, &format!("SHA does not match HEAD of source branch: {head}"));
            }
            if !repo.is_ancestor(&target, &head) {
                // This fake merges fast-forward or squashed on an up-to-date branch only.
                return message(405, "405 Method Not Allowed");
            }
            let squash = body.get("squash").and_then(Value::as_bool).unwrap_or(false);
            let who = Who {
                name: "GitLab",
                email: "noreply@gitlab.example",
            };
            let merged = if squash {
                let text = body
                    .get("squash_commit_message")
                    .and_then(Value::as_str)
                    .unwrap_or(&mr.title)
                    .to_string();
                let tree = match repo.tree(&head) {
                    Ok(tree) => tree,
                    Err(e) => return message(500, &e.to_string()),
                };
                match repo.commit_tree(&tree, Some(&target), &text, &who) {
                    Ok(commit) => commit,
                    Err(e) => return message(500, &e.to_string()),
                }
            } else {
                head.clone()
            };
            if repo.set_ref(&mr.target_branch, &merged, Some(&target)).is_err() {
                return message(409, "the target branch moved");
            }
            let stored = &mut hub.merge_requests[index];
            stored.state = "merged".into();
            stored.merged_head = Some(head);
            if squash {
                stored.squash_commit_sha = Some(merged.clone());
            } else {
                stored.merge_commit_sha = Some(merged.clone());
            }
            let json = mr_json(&hub, &hub.merge_requests[index], &base);
            answer(200, json)
        }
        _ => message(404, "404 Not Found"),
    }
}

fn find(hub: &Hub, iid: &str) -> Option<usize> {
    let iid: u64 = iid.parse().ok()?;
    hub.merge_requests.iter().position(|mr| mr.iid == iid)
}

/// `POST /repository/commits`, as GitLab documents it: a new branch from `start_sha` (or
/// `start_branch`), or the branch itself; `force` rewrites an existing branch onto the start.
fn create_commit(repo: &GitBackend, body: &Value) -> Response {
    let field = |name: &str| body.get(name).and_then(Value::as_str).map(str::to_string);
    let Some(branch) = field("branch") else {
        return answer(400, json!({"error": "branch is missing"}));
    };
    let Some(message_text) = field("commit_message") else {
        return answer(400, json!({"error": "commit_message is missing"}));
    };
    let force = body.get("force").and_then(Value::as_bool).unwrap_or(false);
    let existing = repo.tip(&branch);
    let start = field("start_sha").or_else(|| field("start_branch").and_then(|b| repo.tip(&b)));
    let different_start = field("start_sha").is_some() || field("start_branch").is_some_and(|b| b != branch);
    if existing.is_some() && different_start && !force {
        return message(
            400,
            &format!("A branch called '{branch}' already exists. Switch to that branch in order to make changes"),
        );
    }
    let Some(parent) = start.or_else(|| existing.clone()) else {
        return message(400, "You can only create or edit files when you are on a branch");
    };
    if !repo.has_commit(&parent) {
        return message(400, &format!("Cannot find start_sha '{parent}'"));
    }
    let mut files = Vec::new();
    for action in body.get("actions").and_then(Value::as_array).into_iter().flatten() {
        let (Some(kind), Some(path)) = (
            action.get("action").and_then(Value::as_str),
            action.get("file_path").and_then(Value::as_str),
        ) else {
            return answer(400, json!({"error": "actions need action and file_path"}));
        };
        let exists = repo.read(&parent, path).is_some();
        match (kind, exists) {
            ("update", false) => return message(400, "A file with this name doesn't exist"),
            ("create", true) => return message(400, "A file with this name already exists"),
            ("update" | "create", _) => {}
            _ => return answer(400, json!({"error": "this fake knows create and update"})),
        }
        let content = action.get("content").and_then(Value::as_str).unwrap_or_default();
        files.push((path, content.to_string()));
    }
    let name = field("author_name").unwrap_or_else(|| "GitLab".into());
    let email = field("author_email").unwrap_or_else(|| "noreply@gitlab.example".into());
    let who = Who {
        name: &name,
        email: &email,
    };
    let commit = match repo.commit(Some(&parent), &files, &message_text, &who) {
        Ok(commit) => commit,
        Err(e) => return message(400, &e.to_string()),
    };
    if repo.set_ref(&branch, &commit, existing.as_deref()).is_err() {
        return message(400, "Could not update the branch: it moved");
    }
    answer(
        201,
        json!({"id": commit, "short_id": &commit[..8], "title": message_text.lines().next(), "message": message_text, "parent_ids": [parent]}),
    )
}

/// The fake GitLab, serving one project backed by a bare repository.
pub struct FakeGitLab {
    hub: Shared,
    release: Arc<tokio::sync::Semaphore>,
    /// The API root (`…/api/v4`).
    pub api_url: String,
}

impl FakeGitLab {
    pub async fn start(repo: GitBackend) -> anyhow::Result<Self> {
        let hub: Shared = Arc::new(Mutex::new(Hub {
            repo,
            merge_requests: Vec::new(),
            faults: Faults::default(),
            log: Vec::new(),
            unauthorized: 0,
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let app = axum::Router::new()
            .fallback(gitlab)
            .with_state((hub.clone(), addr, release.clone()));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self {
            hub,
            release,
            api_url: format!("http://{addr}/api/v4"),
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

    /// How many requests were `METHOD /path` (the path after the project).
    pub fn count(&self, method: &str, rest: &str) -> usize {
        let wanted = format!("{method} {PREFIX}{rest}");
        self.with(|h| h.log.iter().filter(|l| **l == wanted).count())
    }
}
