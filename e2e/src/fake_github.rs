//! A local server that answers as GitHub's REST API does — the documented shapes of refs, git
//! data (commits, trees), contents, commits, compare, pulls, labels and merge — for tests of the
//! GitHub forge (GitHub cannot run here). It keeps real state (commits, trees, refs, pull
//! requests), checks the token on every request, and injects the faults a test asks for: a status
//! with headers for the next N matching calls, or a request held unanswered (a crash window).

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    body::Bytes,
    extract::{Request, State},
    http::{HeaderMap, Method, StatusCode},
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use selfheal_forge_github::{GitHubConfig, GitHubRepository};
use selfheal_pr_controller::{PrControllerConfig, reconcile::Reconciler};
use selfheal_proto::v1::{Action, Alert, AlertEvent, Approval, Decision};
use serde_json::{Value, json};

/// The token the fake accepts.
pub const TOKEN: &str = "ghp_test-token-0123456789";
/// The file the fake's repository keeps checkout's image tag in.
pub const PATH: &str = "apps/checkout/kustomization.yaml";

#[derive(Clone, Debug)]
pub struct Commit {
    pub tree: BTreeMap<String, String>,
    pub parents: Vec<String>,
    pub message: String,
}

#[derive(Clone, Debug)]
pub struct Pull {
    pub number: u64,
    pub head: String,
    pub head_sha: String,
    pub base: String,
    pub title: String,
    pub body: String,
    pub state: &'static str,
    pub merge_commit: Option<String>,
    pub labels: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Fault {
    pub method: Method,
    pub path_ends: &'static str,
    /// 0: hold the request unanswered until [`FakeGitHub::release`].
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub remaining: u32,
    /// The answer's `message`.
    pub message: &'static str,
}

#[derive(Default)]
pub struct Hub {
    next: u64,
    pub commits: HashMap<String, Commit>,
    trees: HashMap<String, BTreeMap<String, String>>,
    pub refs: BTreeMap<String, String>,
    pub pulls: Vec<Pull>,
    pub faults: Vec<Fault>,
    /// "METHOD /path" of every request, faulted or not.
    pub log: Vec<String>,
    pub unauthorized: usize,
    /// Requests held (status 0 faults) so far.
    pub held: usize,
}

impl Hub {
    fn id(&mut self) -> String {
        self.next += 1;
        format!("{:040x}", self.next)
    }

    fn commit(&mut self, tree: BTreeMap<String, String>, parents: Vec<String>, message: &str) -> String {
        let sha = self.id();
        self.commits.insert(
            sha.clone(),
            Commit {
                tree,
                parents,
                message: message.into(),
            },
        );
        sha
    }

    fn resolve(&self, rev: &str) -> Option<String> {
        self.refs
            .get(rev)
            .cloned()
            .or_else(|| self.commits.contains_key(rev).then(|| rev.to_string()))
    }

    fn first_parent_chain(&self, from: &str) -> Vec<String> {
        let mut chain = vec![];
        let mut at = Some(from.to_string());
        while let Some(sha) = at {
            at = self.commits[&sha].parents.first().cloned();
            chain.push(sha);
        }
        chain
    }

    fn is_ancestor(&self, ancestor: &str, of: &str) -> bool {
        let mut stack = vec![of.to_string()];
        while let Some(sha) = stack.pop() {
            if sha == ancestor {
                return true;
            }
            stack.extend(self.commits[&sha].parents.iter().cloned());
        }
        false
    }

    fn pull_json(&self, pull: &Pull, base: &str) -> Value {
        json!({
            "id": pull.number * 1000, "node_id": format!("PR_{}", pull.number), "number": pull.number,
            "url": format!("{base}/repos/acme/gitops/pulls/{}", pull.number),
            "html_url": format!("https://github.com/acme/gitops/pull/{}", pull.number),
            "state": pull.state, "title": pull.title, "body": pull.body,
            "merged_at": pull.merge_commit.as_ref().map(|_| "2026-11-28T12:00:00Z"),
            "merge_commit_sha": pull.merge_commit,
            "mergeable": true, "mergeable_state": "clean",
            "head": {"ref": pull.head, "sha": pull.head_sha, "label": format!("acme:{}", pull.head)},
            "base": {"ref": pull.base, "sha": self.refs.get(&pull.base), "label": format!("acme:{}", pull.base)},
            "labels": pull.labels.iter().map(|name| json!({"id": 1, "node_id": "L", "url": "u", "name": name, "color": "ededed", "default": false})).collect::<Vec<_>>(),
        })
    }
}

type Shared = Arc<Mutex<Hub>>;

fn answer(status: u16, body: Value) -> Response {
    (StatusCode::from_u16(status).expect("status"), axum::Json(body)).into_response()
}

fn not_found() -> Response {
    answer(
        404,
        json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}),
    )
}

async fn github(
    State((hub, addr, release)): State<(Shared, SocketAddr, Arc<tokio::sync::Semaphore>)>,
    request: Request,
) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query: HashMap<String, String> = request
        .uri()
        .query()
        .and_then(|q| serde_urlencoded::from_str(q).ok())
        .unwrap_or_default();
    let authorized = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {TOKEN}"));
    let bytes: Bytes = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let response = respond(&hub, addr, method, &path, &query, authorized, &body);
    if response.extensions().get::<Hold>().is_some() {
        // A permit, once added, stays: a release before this line is not lost.
        if let Ok(permit) = release.acquire().await {
            permit.forget();
        }
        return answer(502, json!({"message": "held, then released"}));
    }
    response
}

/// Marks a response that must not be sent until [`FakeGitHub::release`].
#[derive(Clone, Copy)]
struct Hold;

/// The answer to one request (marked [`Hold`] to hold it).
fn respond(
    hub: &Shared,
    addr: SocketAddr,
    method: Method,
    path: &str,
    query: &HashMap<String, String>,
    authorized: bool,
    body: &Value,
) -> Response {
    let base = format!("http://{addr}");
    let mut hub = hub.lock().expect("lock");
    hub.log.push(format!("{method} {path}"));
    if !authorized {
        hub.unauthorized += 1;
        return answer(401, json!({"message": "Bad credentials"}));
    }
    if let Some(fault) = hub
        .faults
        .iter_mut()
        .find(|f| f.remaining > 0 && f.method == method && path.ends_with(f.path_ends))
    {
        fault.remaining -= 1;
        if fault.status == 0 {
            hub.held += 1;
            let mut held = answer(502, json!({}));
            held.extensions_mut().insert(Hold);
            return held;
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &fault.headers {
            headers.insert(*name, value.parse().expect("header"));
        }
        let status = StatusCode::from_u16(fault.status).expect("status");
        return (status, headers, axum::Json(json!({"message": fault.message}))).into_response();
    }
    let Some(rest) = path.strip_prefix("/repos/acme/gitops/") else {
        return not_found();
    };
    let ref_json = |name: &str, sha: &str| {
        json!({"ref": format!("refs/heads/{name}"), "node_id": "REF", "url": format!("{base}/x"),
               "object": {"type": "commit", "sha": sha, "url": format!("{base}/x")}})
    };
    match (method.as_str(), rest) {
        ("GET", r) if r.starts_with("git/ref/heads/") => {
            let name = &r["git/ref/heads/".len()..];
            match hub.refs.get(name) {
                Some(sha) => answer(200, ref_json(name, sha)),
                None => not_found(),
            }
        }
        ("PATCH", r) if r.starts_with("git/refs/heads/") => {
            let name = r["git/refs/heads/".len()..].to_string();
            let sha = body["sha"].as_str().unwrap_or_default().to_string();
            let force = body["force"].as_bool().unwrap_or(false);
            let Some(current) = hub.refs.get(&name).cloned() else {
                return answer(422, json!({"message": "Reference does not exist"}));
            };
            if !hub.commits.contains_key(&sha) || (!force && !hub.is_ancestor(&current, &sha)) {
                return answer(422, json!({"message": "Update is not a fast forward"}));
            }
            hub.refs.insert(name.clone(), sha.clone());
            answer(200, ref_json(&name, &sha))
        }
        ("POST", "git/refs") => {
            let name = body["ref"]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches("refs/heads/")
                .to_string();
            let sha = body["sha"].as_str().unwrap_or_default().to_string();
            if hub.refs.contains_key(&name) {
                return answer(422, json!({"message": "Reference already exists"}));
            }
            hub.refs.insert(name.clone(), sha.clone());
            answer(201, ref_json(&name, &sha))
        }
        ("GET", r) if r.starts_with("git/commits/") => {
            let sha = &r["git/commits/".len()..];
            let Some(commit) = hub.commits.get(sha).cloned() else {
                return not_found();
            };
            let tree = hub.id();
            hub.trees.insert(tree.clone(), commit.tree.clone());
            answer(
                200,
                json!({"sha": sha, "node_id": "C", "url": format!("{base}/c"), "message": commit.message,
                       "tree": {"sha": tree, "url": format!("{base}/t")},
                       "parents": commit.parents.iter().map(|p| json!({"sha": p, "url": "u"})).collect::<Vec<_>>()}),
            )
        }
        ("POST", "git/trees") => {
            let Some(mut tree) = body["base_tree"].as_str().and_then(|t| hub.trees.get(t).cloned()) else {
                return answer(422, json!({"message": "base_tree is not a tree"}));
            };
            for entry in body["tree"].as_array().cloned().unwrap_or_default() {
                tree.insert(
                    entry["path"].as_str().unwrap_or_default().to_string(),
                    entry["content"].as_str().unwrap_or_default().to_string(),
                );
            }
            let sha = hub.id();
            hub.trees.insert(sha.clone(), tree);
            answer(
                201,
                json!({"sha": sha, "url": format!("{base}/t"), "tree": [], "truncated": false}),
            )
        }
        ("POST", "git/commits") => {
            let Some(tree) = body["tree"].as_str().and_then(|t| hub.trees.get(t).cloned()) else {
                return answer(422, json!({"message": "tree is not a tree"}));
            };
            let parents: Vec<String> = body["parents"]
                .as_array()
                .map(|p| p.iter().filter_map(|v| v.as_str().map(String::from)).collect())
                .unwrap_or_default();
            let message = body["message"].as_str().unwrap_or_default().to_string();
            let sha = hub.commit(tree, parents, &message);
            answer(
                201,
                json!({"sha": sha, "node_id": "C", "url": format!("{base}/c"), "message": message}),
            )
        }
        ("GET", r) if r.starts_with("contents/") => {
            let file = &r["contents/".len()..];
            let Some(at) = query.get("ref").and_then(|r| hub.resolve(r)) else {
                return not_found();
            };
            match hub.commits[&at].tree.get(file) {
                Some(content) => answer(
                    200,
                    json!({"type": "file", "encoding": "base64", "path": file, "name": file, "sha": "b", "size": content.len(),
                           // GitHub wraps base64 at 60 columns.
                           "content": base64::engine::general_purpose::STANDARD.encode(content).as_bytes().chunks(60)
                               .map(|c| String::from_utf8_lossy(c).to_string() + "\n").collect::<String>()}),
                ),
                None => not_found(),
            }
        }
        ("GET", "commits") => {
            let Some(from) = query.get("sha").and_then(|r| hub.resolve(r)) else {
                return not_found();
            };
            let file = query.get("path").cloned().unwrap_or_default();
            let per_page: usize = query.get("per_page").and_then(|p| p.parse().ok()).unwrap_or(30);
            let list: Vec<Value> = hub
                .first_parent_chain(&from)
                .iter()
                .filter(|sha| {
                    let commit = &hub.commits[*sha];
                    let before = commit.parents.first().and_then(|p| hub.commits[p].tree.get(&file));
                    commit.tree.get(&file) != before
                })
                .take(per_page)
                .map(|sha| json!({"sha": sha, "node_id": "C", "commit": {"message": hub.commits[sha].message}}))
                .collect();
            answer(200, Value::Array(list))
        }
        ("GET", r) if r.starts_with("compare/") => {
            let Some((a, b)) = r["compare/".len()..].split_once("...") else {
                return not_found();
            };
            let (Some(a), Some(b)) = (hub.resolve(a), hub.resolve(b)) else {
                return not_found();
            };
            let status = if a == b {
                "identical"
            } else if hub.is_ancestor(&a, &b) {
                "ahead"
            } else if hub.is_ancestor(&b, &a) {
                "behind"
            } else {
                "diverged"
            };
            answer(200, json!({"status": status, "ahead_by": 0, "behind_by": 0}))
        }
        ("GET", "pulls") => {
            let head = query.get("head").cloned().unwrap_or_default();
            let list: Vec<Value> = hub
                .pulls
                .iter()
                .filter(|p| head.is_empty() || format!("acme:{}", p.head) == head)
                .map(|p| hub.pull_json(p, &base))
                .collect();
            answer(200, Value::Array(list))
        }
        ("POST", "pulls") => {
            let head = body["head"].as_str().unwrap_or_default().to_string();
            let Some(head_sha) = hub.refs.get(&head).cloned() else {
                return answer(
                    422,
                    json!({"message": "Validation Failed", "errors": [{"field": "head", "code": "invalid"}]}),
                );
            };
            if hub.pulls.iter().any(|p| p.head == head && p.state == "open") {
                return answer(
                    422,
                    json!({"message": "Validation Failed", "errors": [{"message": format!("A pull request already exists for acme:{head}.")}]}),
                );
            }
            let pull = Pull {
                number: hub.pulls.len() as u64 + 1,
                head,
                head_sha,
                base: body["base"].as_str().unwrap_or_default().to_string(),
                title: body["title"].as_str().unwrap_or_default().to_string(),
                body: body["body"].as_str().unwrap_or_default().to_string(),
                state: "open",
                merge_commit: None,
                labels: vec![],
            };
            let json = hub.pull_json(&pull, &base);
            hub.pulls.push(pull);
            answer(201, json)
        }
        ("GET", r) if r.starts_with("pulls/") => {
            let number: usize = r["pulls/".len()..].parse().unwrap_or(0);
            match hub.pulls.get(number.wrapping_sub(1)).cloned() {
                Some(pull) => answer(200, hub.pull_json(&pull, &base)),
                None => not_found(),
            }
        }
        ("POST", r) if r.starts_with("issues/") && r.ends_with("/labels") => {
            let number: usize = r["issues/".len()..r.len() - "/labels".len()].parse().unwrap_or(0);
            let names: Vec<String> = body["labels"]
                .as_array()
                .map(|l| l.iter().filter_map(|v| v.as_str().map(String::from)).collect())
                .unwrap_or_default();
            let Some(pull) = hub.pulls.get_mut(number.wrapping_sub(1)) else {
                return not_found();
            };
            for name in names {
                if !pull.labels.contains(&name) {
                    pull.labels.push(name);
                }
            }
            let labels: Vec<Value> = pull
                .labels
                .iter()
                .map(|n| json!({"id": 1, "name": n, "color": "ededed"}))
                .collect();
            answer(200, Value::Array(labels))
        }
        ("PUT", r) if r.starts_with("pulls/") && r.ends_with("/merge") => {
            let number: usize = r["pulls/".len()..r.len() - "/merge".len()].parse().unwrap_or(0);
            let Some(pull) = hub.pulls.get(number.wrapping_sub(1)).cloned() else {
                return not_found();
            };
            if pull.state != "open" {
                return answer(405, json!({"message": "Pull Request is not mergeable"}));
            }
            let head_sha = hub.refs[&pull.head].clone();
            if body["sha"].as_str() != Some(head_sha.as_str()) {
                return answer(
                    409,
                    json!({"message": "Head branch was modified. Review and try the merge again."}),
                );
            }
            // Squash: the head's changes against its parent, applied to the base's tree.
            let head = hub.commits[&head_sha].clone();
            let head_parent = hub.commits[&head.parents[0]].tree.clone();
            let base_tip = hub.refs[&pull.base].clone();
            let mut tree = hub.commits[&base_tip].tree.clone();
            for (file, content) in &head.tree {
                if head_parent.get(file) != Some(content) {
                    if tree.get(file) != head_parent.get(file) {
                        return answer(405, json!({"message": "Pull Request is not mergeable"}));
                    }
                    tree.insert(file.clone(), content.clone());
                }
            }
            let message = format!(
                "{} (#{number})\n\n{}",
                body["commit_title"].as_str().unwrap_or_default(),
                body["commit_message"].as_str().unwrap_or_default()
            );
            let sha = hub.commit(tree, vec![base_tip], &message);
            hub.refs.insert(pull.base.clone(), sha.clone());
            let pull = &mut hub.pulls[number - 1];
            pull.state = "closed";
            pull.merge_commit = Some(sha.clone());
            answer(
                200,
                json!({"sha": sha, "merged": true, "message": "Pull Request successfully merged"}),
            )
        }
        _ => not_found(),
    }
}

pub struct FakeGitHub {
    hub: Shared,
    release: Arc<tokio::sync::Semaphore>,
    pub url: String,
}

impl FakeGitHub {
    /// A repository acme/gitops whose main branch set checkout's tag to each of `tags` in turn.
    pub async fn start(tags: &[&str]) -> anyhow::Result<Self> {
        let hub: Shared = Arc::default();
        {
            let mut h = hub.lock().expect("lock");
            let mut parent: Vec<String> = vec![];
            for tag in tags {
                let tree: BTreeMap<String, String> = [
                    ("README.md".to_string(), "# gitops\n".to_string()),
                    (
                        PATH.to_string(),
                        format!(
                            "# checkout, production\napiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nimages:\n  - name: ghcr.io/acme/checkout\n    newTag: {tag} # the release\n"
                        ),
                    ),
                ]
                .into();
                let sha = h.commit(tree, parent.clone(), &format!("release checkout {tag}"));
                parent = vec![sha];
            }
            h.refs.insert("main".into(), parent[0].clone());
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let app = axum::Router::new()
            .fallback(github)
            .with_state((hub.clone(), addr, release.clone()));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self {
            hub,
            release,
            url: format!("http://{addr}"),
        })
    }

    /// Answers released held requests (with a 502; their callers are gone).
    pub fn release(&self) {
        let held = self.with(|h| h.held);
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
        self.hub.lock().expect("lock").faults.push(Fault {
            method,
            path_ends,
            status,
            headers: headers.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            remaining: times,
            message: "injected fault",
        });
    }

    /// A secondary rate limit on the next `times` requests matching: a 403 saying so, with the
    /// headers given (none, or a `retry-after`).
    pub fn secondary_rate_limit(
        &self,
        method: Method,
        path_ends: &'static str,
        headers: &[(&'static str, &str)],
        times: u32,
    ) {
        self.hub.lock().expect("lock").faults.push(Fault {
            method,
            path_ends,
            status: 403,
            headers: headers.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            remaining: times,
            message: "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. If you reach out to GitHub Support for help, please include the request ID.",
        });
    }

    pub fn with<T>(&self, f: impl FnOnce(&Hub) -> T) -> T {
        f(&self.hub.lock().expect("lock"))
    }

    pub fn main_file(&self) -> String {
        self.with(|h| h.commits[&h.refs["main"]].tree[PATH].clone())
    }

    pub fn count(&self, request: &str) -> usize {
        self.with(|h| h.log.iter().filter(|l| l.as_str() == request).count())
    }

    pub fn reconciler(&self, token: &str) -> anyhow::Result<Arc<Reconciler>> {
        let repo = GitHubRepository::new(
            GitHubConfig {
                repository: "acme/gitops".into(),
                api_url: self.url.clone(),
                token: Some(selfheal_config::Secret::new(token)),
                attempts: 3,
                // A second here; a minute by default, as GitHub asks.
                secondary_wait: std::time::Duration::from_secs(1),
                ..Default::default()
            },
            tokio::runtime::Handle::current(),
        )?;
        let config = PrControllerConfig::default();
        let repo = Arc::new(repo);
        Ok(Arc::new(Reconciler::new(
            repo.clone(),
            Some(repo),
            config.reconcile_settings()?,
        )))
    }
}

/// A critical HighErrorRate rollback decision for checkout in cluster prod.
pub fn decision(incident: &str, approval: Approval) -> Decision {
    let labels = [
        ("alertname", "HighErrorRate"),
        ("service", "checkout"),
        ("cluster", "prod"),
        ("severity", "critical"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut decision = Decision {
        incident_key: incident.into(),
        reason: "error rate 12% over 5%: roll back | `rm -rf` <script>".into(),
        policy: "selfheal.rego".into(),
        rule: "data.selfheal.decision".into(),
        alert: Some(AlertEvent {
            incident_key: incident.into(),
            alert: Some(Alert {
                status: "firing".into(),
                labels,
                generator_url: "http://prometheus:9090/graph?g0.expr=x".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        metrics: [("error_rate".to_string(), 0.12)].into(),
        ..Default::default()
    };
    decision.set_action(Action::Rollback);
    decision.set_approval(approval);
    decision
}
