//! The GitHub forge against a local server that answers as GitHub's REST API does: the documented
//! shapes of refs, git data (commits, trees), contents, commits, compare, pulls, labels and merge.
//! It keeps real state (commits, trees, refs, pull requests), checks the token on every request,
//! and injects the faults a test asks for (a status, with headers, for the next N matching calls).

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::Bytes,
    extract::{Request, State},
    http::{HeaderMap, Method, StatusCode},
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use selfheal_pr_controller::{
    PrControllerConfig,
    github::{GitHubConfig, GitHubRepository},
    reconcile::{ReconcileError, Reconciler},
    repo::Repository,
};
use selfheal_proto::v1::{Action, Alert, AlertEvent, Approval, Decision, RemediationEvent, RemediationState};
use serde_json::{Value, json};

const TOKEN: &str = "ghp_test-token-0123456789";
const PATH: &str = "apps/checkout/kustomization.yaml";

#[derive(Clone, Debug)]
struct Commit {
    tree: BTreeMap<String, String>,
    parents: Vec<String>,
    message: String,
}

#[derive(Clone, Debug)]
struct Pull {
    number: u64,
    head: String,
    head_sha: String,
    base: String,
    title: String,
    body: String,
    state: &'static str,
    merge_commit: Option<String>,
    labels: Vec<String>,
}

#[derive(Clone, Debug)]
struct Fault {
    method: Method,
    path_ends: &'static str,
    status: u16,
    headers: Vec<(&'static str, String)>,
    remaining: u32,
}

#[derive(Default)]
struct Hub {
    next: u64,
    commits: HashMap<String, Commit>,
    trees: HashMap<String, BTreeMap<String, String>>,
    refs: BTreeMap<String, String>,
    pulls: Vec<Pull>,
    faults: Vec<Fault>,
    /// "METHOD /path" of every request, faulted or not.
    log: Vec<String>,
    unauthorized: usize,
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

async fn github(State(hub): State<(Shared, SocketAddr)>, request: Request) -> Response {
    let (hub, addr) = hub;
    let base = format!("http://{addr}");
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query: HashMap<String, String> = request
        .uri()
        .query()
        .map(|q| serde_urlencoded::from_str(q).expect("query"))
        .unwrap_or_default();
    let authorized = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {TOKEN}"));
    let bytes: Bytes = axum::body::to_bytes(request.into_body(), 1 << 20).await.expect("body");
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
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
        let mut headers = HeaderMap::new();
        for (name, value) in &fault.headers {
            headers.insert(*name, value.parse().expect("header"));
        }
        let status = StatusCode::from_u16(fault.status).expect("status");
        return (status, headers, axum::Json(json!({"message": "injected fault"}))).into_response();
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

struct FakeGitHub {
    hub: Shared,
    url: String,
}

impl FakeGitHub {
    /// A repository acme/gitops whose main branch set checkout's tag to each of `tags` in turn.
    async fn start(tags: &[&str]) -> anyhow::Result<Self> {
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
        let app = axum::Router::new().fallback(github).with_state((hub.clone(), addr));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self {
            hub,
            url: format!("http://{addr}"),
        })
    }

    fn fault(
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
        });
    }

    fn with<T>(&self, f: impl FnOnce(&Hub) -> T) -> T {
        f(&self.hub.lock().expect("lock"))
    }

    fn main_file(&self) -> String {
        self.with(|h| h.commits[&h.refs["main"]].tree[PATH].clone())
    }

    fn count(&self, request: &str) -> usize {
        self.with(|h| h.log.iter().filter(|l| l.as_str() == request).count())
    }

    fn reconciler(&self, token: &str) -> anyhow::Result<Arc<Reconciler<dyn Repository>>> {
        let repo = GitHubRepository::new(
            GitHubConfig {
                repository: "acme/gitops".into(),
                api_url: self.url.clone(),
                token: Some(selfheal_config::Secret::new(token)),
                attempts: 3,
                ..Default::default()
            },
            tokio::runtime::Handle::current(),
        )?;
        let mut config = PrControllerConfig::default();
        config.target.path = "apps/{service}/kustomization.yaml".into();
        Ok(Arc::new(Reconciler {
            repo: Arc::new(repo),
            config,
        }))
    }
}

fn decision(incident: &str, approval: Approval) -> Decision {
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

async fn reconcile(
    reconciler: &Arc<Reconciler<dyn Repository>>,
    decision: &Decision,
) -> Result<RemediationEvent, ReconcileError> {
    let (reconciler, decision) = (reconciler.clone(), decision.clone());
    tokio::task::spawn_blocking(move || reconciler.reconcile(&decision, "4bf92f3577b34da6a3ce929d0e0e4736"))
        .await
        .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pull_request_per_incident_across_redeliveries_a_crash_and_faults() -> anyhow::Result<()> {
    let github = FakeGitHub::start(&["v1.0.0", "v1.1.0", "v1.2.0"]).await?;
    let reconciler = github.reconciler(TOKEN)?;
    // The first delivery dies between the commit and the pull request: every attempt to open
    // it fails (3 attempts), so the delivery ends, unacked, with the branch made and no PR —
    // what a crash at that point leaves behind.
    github.fault(Method::POST, "/pulls", 502, &[], 3);
    // One 502 on reading a ref, later on: retried in place.
    let held = decision("inc1", Approval::Required);
    let first = reconcile(&reconciler, &held).await;
    let error = first.expect_err("the pull request could not be opened");
    assert!(error.is_transient(), "a 502 is worth retrying: {error}");
    assert!(!error.to_string().contains(TOKEN));
    assert!(
        github.with(|h| h.refs.contains_key("selfheal/inc1")),
        "the commit is on the branch"
    );
    assert_eq!(github.with(|h| h.pulls.len()), 0);
    assert_eq!(github.count("POST /repos/acme/gitops/pulls"), 3, "three attempts");

    // Three redeliveries: one pull request, found again each time. A 502 on the ref read and a
    // 502 on the pull request list are retried without the caller seeing them.
    github.fault(Method::GET, "/git/ref/heads/main", 502, &[], 1);
    github.fault(Method::GET, "/repos/acme/gitops/pulls", 502, &[], 1);
    let mut urls = vec![];
    for _ in 0..3 {
        let event = reconcile(&reconciler, &held).await?;
        assert_eq!(event.state(), RemediationState::Opened, "{}", event.message);
        assert_eq!(event.from_value, "v1.2.0");
        assert_eq!(event.to_value, "v1.1.0");
        urls.push(event.pull_request_url);
    }
    assert_eq!(urls, vec!["https://github.com/acme/gitops/pull/1"; 3]);
    let pull = github.with(|h| h.pulls.clone());
    assert_eq!(pull.len(), 1, "exactly one pull request");
    let pull = &pull[0];
    assert_eq!(pull.title, "fix(prod): roll back checkout to v1.1.0");
    assert_eq!(pull.labels, ["selfheal", "auto-remediation"]);
    for expected in [
        "rolls **checkout** back from `v1.2.0` to `v1.1.0`",
        "-    newTag: v1.2.0 # the release\n+    newTag: v1.1.0 # the release",
        "| error\\_rate | 0.12 |",
        "`4bf92f3577b34da6a3ce929d0e0e4736`",
        "[Alert source](http://prometheus:9090/graph?g0.expr=x)",
        "HighErrorRate (critical)",
    ] {
        assert!(pull.body.contains(expected), "{expected:?} not in\n{}", pull.body);
    }
    // The reason is the policy's text about an untrusted alert: inert in Markdown.
    assert!(pull.body.contains(r"\| \`rm -rf\` &lt;script&gt;"), "{}", pull.body);
    assert!(!pull.body.contains("<script>"), "{}", pull.body);
    assert!(
        github.with(|h| h.faults.iter().all(|f| f.remaining == 0)),
        "every fault was hit"
    );
    assert!(github.main_file().contains("v1.2.0"), "nothing merged without approval");

    // Approved: merged through the pull request, after a 403 rate limit with Retry-After.
    github.fault(
        Method::PUT,
        "/merge",
        403,
        &[("retry-after", "1"), ("x-ratelimit-remaining", "0")],
        1,
    );
    let approved = decision("inc1", Approval::Auto);
    let started = std::time::Instant::now();
    let merged = reconcile(&reconciler, &approved).await?;
    assert_eq!(merged.state(), RemediationState::Merged, "{}", merged.message);
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After was honoured");
    assert_eq!(
        github.count("PUT /repos/acme/gitops/pulls/1/merge"),
        2,
        "403 then merged"
    );
    let main_file = github.main_file();
    assert!(main_file.contains("    newTag: v1.1.0 # the release\n"), "{main_file}");
    assert!(main_file.starts_with("# checkout, production\n"), "comments stay");
    assert_eq!(
        merged.commit,
        github.with(|h| h.refs["main"].clone()),
        "the squash commit on main"
    );

    // Redelivered after the merge: nothing new.
    let again = reconcile(&reconciler, &approved).await?;
    assert_eq!(again.state(), RemediationState::Merged);
    assert_eq!(github.with(|h| h.pulls.len()), 1);
    assert_eq!(github.count("PUT /repos/acme/gitops/pulls/1/merge"), 2);

    // v1.1.0 fails too: the next incident's rollback skips what was rolled back from (v1.2.0,
    // recorded in the squash commit's trailers) and goes to v1.0.0.
    let next = reconcile(&reconciler, &decision("inc2", Approval::Auto)).await?;
    assert_eq!(next.state(), RemediationState::Merged, "{}", next.message);
    assert_eq!((next.from_value.as_str(), next.to_value.as_str()), ("v1.1.0", "v1.0.0"));
    assert!(github.main_file().contains("newTag: v1.0.0"));
    assert_eq!(github.with(|h| h.pulls.len()), 2, "one pull request per incident");
    assert_eq!(github.with(|h| h.unauthorized), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_end_the_remediation_and_errors_carry_no_token() -> anyhow::Result<()> {
    let github = FakeGitHub::start(&["v1.0.0", "v1.1.0"]).await?;
    // A wrong token: 401, final, not retried.
    let wrong = github.reconciler("ghp_wrong-token")?;
    let error = reconcile(&wrong, &decision("inc3", Approval::Auto))
        .await
        .expect_err("bad credentials");
    assert!(!error.is_transient(), "{error}");
    assert!(error.to_string().contains("401 Bad credentials"), "{error}");
    assert!(!error.to_string().contains("ghp_wrong-token"), "{error}");
    assert_eq!(github.with(|h| h.log.len()), 1, "a 401 is not retried");

    // A rate limit longer than max_wait: the decision comes back later instead of blocking.
    let reconciler = github.reconciler(TOKEN)?;
    github.fault(Method::GET, "/git/ref/heads/main", 429, &[("retry-after", "3600")], 1);
    let error = reconcile(&reconciler, &decision("inc3", Approval::Auto))
        .await
        .expect_err("rate limited");
    assert!(error.is_transient(), "{error}");
    assert!(error.to_string().contains("rate limited for 3600s"), "{error}");

    // 502 on every attempt: transient, after exactly `attempts` requests.
    github.fault(Method::GET, "/git/ref/heads/main", 502, &[], 3);
    let before = github.count("GET /repos/acme/gitops/git/ref/heads/main");
    let error = reconcile(&reconciler, &decision("inc3", Approval::Auto))
        .await
        .expect_err("502");
    assert!(
        error.is_transient() && error.to_string().contains("after 3 attempts"),
        "{error}"
    );
    assert_eq!(github.count("GET /repos/acme/gitops/git/ref/heads/main") - before, 3);
    assert!(
        !github.with(|h| h.refs.contains_key("selfheal/inc3")),
        "nothing written"
    );

    // And with GitHub answering again, the same decision goes through once.
    let event = reconcile(&reconciler, &decision("inc3", Approval::Auto)).await?;
    assert_eq!(event.state(), RemediationState::Merged, "{}", event.message);
    assert_eq!(github.with(|h| h.pulls.len()), 1);
    Ok(())
}
