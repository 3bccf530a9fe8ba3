//! The whole loop, as separate processes on a real nats-server: webhook → policy → git → notifier.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, ensure};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use selfheal_e2e::{Nats, Process, binary, free_port, git, wait_for, wait_ready, workspace_root};
use serde_json::Value;

const TOKEN: &str = "s3cr3t-token";
const KUSTOMIZATION: &str = "apps/checkout/kustomization.yaml";
/// Generous: the first start of four debug binaries on a busy 2-core machine.
const SETTLE: Duration = Duration::from_secs(30);

fn fixture(name: &str) -> Vec<u8> {
    let path = workspace_root().join("../shared/fixtures/alertmanager-0.25").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

fn kustomization(tag: &str) -> String {
    format!(
        "# checkout\napiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - deployment.yaml\nimages:\n  - name: ghcr.io/acme/checkout\n    newTag: {tag} # release pipeline\n"
    )
}

/// A bare GitOps repository whose main set checkout to v1.4.1, then v1.5.0 (the bad release).
fn gitops_repo(dir: &Path) -> anyhow::Result<PathBuf> {
    let (bare, work) = selfheal_e2e::bare_repository_and_clone(dir)?;
    std::fs::create_dir_all(work.join("apps/checkout"))?;
    std::fs::write(work.join("apps/checkout/deployment.yaml"), "kind: Deployment\n")?;
    for tag in ["v1.4.1", "v1.5.0"] {
        std::fs::write(work.join(KUSTOMIZATION), kustomization(tag))?;
        git(&work, &["add", "."])?;
        git(&work, &["commit", "-q", "-m", &format!("checkout: release {tag}")])?;
    }
    git(&work, &["push", "-q", "origin", "main"])?;
    Ok(bare)
}

/// Collects every span exported over OTLP/gRPC: (service.name, trace id, span name).
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

/// (service.name, trace id, span name, span id, parent span id), ids in hex.
type Span = (String, String, String, String, String);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().map_err(|_| tonic::Status::internal("poisoned"))?;
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    let trace_id: String = span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
                    let (span_id, parent) = (hex(&span.span_id), hex(&span.parent_span_id));
                    spans.push((service.clone(), trace_id, span.name, span_id, parent));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Notifications the notifier POSTed.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<Value>>>);

impl Sink {
    fn all(&self) -> Vec<Value> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

async fn start_sink() -> anyhow::Result<(Sink, u16)> {
    let sink = Sink::default();
    let store = sink.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, axum::Json(mut body): axum::Json<Value>| {
                let store = store.clone();
                async move {
                    // The request's trace context, kept beside the body for the test to check.
                    let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or("");
                    body["_traceparent"] = Value::from(traceparent);
                    if let Ok(mut all) = store.0.lock() {
                        all.push(body);
                    }
                    "ok"
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((sink, port))
}

async fn start_collector() -> anyhow::Result<(Collector, u16)> {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let service = TraceServiceServer::new(collector.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::codegen::tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok((collector, port))
}

fn telemetry_env(otlp_port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("RUST_LOG", "info".into()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{otlp_port}")),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
    ]
}

fn start_gateway(nats: &Nats, name: &str, otlp_port: u16, logs: &Path) -> anyhow::Result<(Process, String)> {
    let port = free_port()?;
    let mut env = telemetry_env(otlp_port);
    env.extend([
        ("SELFHEAL_GATEWAY_LISTEN", format!("127.0.0.1:{port}")),
        ("SELFHEAL_GATEWAY_NATS_URL", nats.url()),
        ("SELFHEAL_GATEWAY_GRPC_LISTEN", format!("127.0.0.1:{}", free_port()?)),
        ("SELFHEAL_GATEWAY_TOKEN", TOKEN.into()),
    ]);
    let process = Process::start(name, &binary("selfheal-gateway")?, &[], &env, logs)?;
    Ok((process, format!("http://127.0.0.1:{port}")))
}

async fn post(
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> anyhow::Result<(u16, Value)> {
    let mut request = client
        .post(format!("{base}/v1/alerts/alertmanager"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    Ok((status, body))
}

async fn stream_messages(nats: &Nats) -> anyhow::Result<u64> {
    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("SELFHEAL").await?;
    Ok(stream.info().await?.state.messages)
}

/// Audit rows for `incident`: (kind, action, reason, reference, trace_id, decision_json).
async fn audit_rows(db: &Path, incident: &str) -> Vec<(String, String, String, String, String, String)> {
    let url = format!("sqlite://{}?mode=ro", db.display());
    let Ok(pool) = sqlx::SqlitePool::connect(&url).await else {
        return Vec::new();
    };
    let rows = sqlx::query_as(
        "SELECT kind, action, reason, reference, trace_id, decision_json FROM audit_log WHERE incident = ? ORDER BY id",
    )
    .bind(incident)
    .fetch_all(&pool)
    .await
    .unwrap_or_default();
    pool.close().await;
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_to_commit_audit_and_notification_once_in_one_trace() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let logs = temp.path();
    let nats = Nats::start().await?;
    let repo = gitops_repo(temp.path())?;
    let main_before = git(&repo, &["rev-parse", "main"])?;
    let (sink, sink_port) = start_sink().await?;
    let (collector, otlp_port) = start_collector().await?;
    let audit_db = temp.path().join("audit.db");

    let (mut gateway, gateway_url) = start_gateway(&nats, "gateway", otlp_port, logs)?;
    let (policy_port, policy_grpc, pr_port, notifier_port) = (free_port()?, free_port()?, free_port()?, free_port()?);
    let pr_grpc = free_port()?;
    let audit_grpc = free_port()?;
    let mut policy_env = telemetry_env(otlp_port);
    policy_env.extend([
        ("SELFHEAL_POLICY_LISTEN", format!("127.0.0.1:{policy_port}")),
        ("SELFHEAL_POLICY_GRPC_LISTEN", format!("127.0.0.1:{policy_grpc}")),
        ("SELFHEAL_POLICY_NATS_URL", nats.url()),
        (
            "SELFHEAL_POLICY_POLICY_DIR",
            workspace_root().join("deploy/policies").display().to_string(),
        ),
        ("SELFHEAL_POLICY_GRPC_TOKEN", TOKEN.into()),
        ("SELFHEAL_POLICY_TARGET__URL", format!("http://127.0.0.1:{pr_grpc}")),
        ("SELFHEAL_POLICY_TARGET__TOKEN", TOKEN.into()),
    ]);
    let mut policy = Process::start("policy", &binary("selfheal-policy")?, &[], &policy_env, logs)?;
    let mut pr_env = telemetry_env(otlp_port);
    pr_env.extend([
        ("SELFHEAL_PR_CONTROLLER_LISTEN", format!("127.0.0.1:{pr_port}")),
        ("SELFHEAL_PR_CONTROLLER_NATS_URL", nats.url()),
        ("SELFHEAL_PR_CONTROLLER_REPOSITORY", repo.display().to_string()),
        ("SELFHEAL_PR_CONTROLLER_GRPC_LISTEN", format!("127.0.0.1:{pr_grpc}")),
        ("SELFHEAL_PR_CONTROLLER_GRPC_TOKEN", TOKEN.into()),
    ]);
    let mut pr_controller = Process::start("pr-controller", &binary("selfheal-pr-controller")?, &[], &pr_env, logs)?;
    let mut notifier_env = telemetry_env(otlp_port);
    notifier_env.extend([
        ("SELFHEAL_NOTIFIER_LISTEN", format!("127.0.0.1:{notifier_port}")),
        ("SELFHEAL_NOTIFIER_NATS_URL", nats.url()),
        (
            "SELFHEAL_NOTIFIER_DATABASE_URL",
            format!("sqlite://{}", audit_db.display()),
        ),
        (
            "SELFHEAL_NOTIFIER_WEBHOOK_URL",
            format!("http://127.0.0.1:{sink_port}/hook"),
        ),
        ("SELFHEAL_NOTIFIER_GRPC_LISTEN", format!("127.0.0.1:{audit_grpc}")),
        ("SELFHEAL_NOTIFIER_GRPC_TOKEN", TOKEN.into()),
    ]);
    let mut notifier = Process::start("notifier", &binary("selfheal-notifier")?, &[], &notifier_env, logs)?;
    wait_ready(&format!("{gateway_url}/readyz"), &mut gateway).await?;
    wait_ready(&format!("http://127.0.0.1:{policy_port}/readyz"), &mut policy).await?;
    wait_ready(&format!("http://127.0.0.1:{pr_port}/readyz"), &mut pr_controller).await?;
    wait_ready(&format!("http://127.0.0.1:{notifier_port}/readyz"), &mut notifier).await?;
    let dump = || {
        [&gateway, &policy, &pr_controller, &notifier]
            .iter()
            .map(|p| format!("--- {}\n{}", p.name, p.output()))
            .collect::<Vec<_>>()
            .join("\n")
    };

    // 1. The alert becomes a rollback commit on main, one audit row with the reason, one notification.
    let client = reqwest::Client::new();
    let started = tokio::time::Instant::now();
    let (status, accepted) = post(&client, &gateway_url, Some(TOKEN), fixture("02-firing-1alerts.json")).await?;
    ensure!(status == 200, "POST answered {status}: {accepted}");
    assert_eq!(accepted["stored"], 1, "{accepted}");
    let incident = accepted["incidents"][0]["key"]
        .as_str()
        .context("incident key")?
        .to_string();
    let trace_id = accepted["incidents"][0]["trace_id"]
        .as_str()
        .context("trace id")?
        .to_string();
    assert_eq!(trace_id.len(), 32, "the gateway started a trace: {accepted}");

    let main_after = wait_for(Duration::from_secs(10), "the rollback commit on main", || async {
        let tip = git(&repo, &["rev-parse", "main"]).ok()?;
        (tip != main_before).then_some(tip)
    })
    .await
    .with_context(dump)?;
    let decision_row = wait_for(Duration::from_secs(10), "the decision's audit row", || async {
        audit_rows(&audit_db, &incident)
            .await
            .into_iter()
            .find(|row| row.0 == "decision")
    })
    .await
    .with_context(dump)?;
    wait_for(Duration::from_secs(10), "one notification at the sink", || async {
        (!sink.all().is_empty()).then_some(())
    })
    .await
    .with_context(dump)?;
    eprintln!("alert to commit, audit row and notification in {:?}", started.elapsed());

    assert_eq!(
        git(&repo, &["show", &format!("main:{KUSTOMIZATION}")])?,
        kustomization("v1.4.1").trim_end()
    );
    assert_eq!(
        git(&repo, &["rev-parse", "main~1"])?,
        main_before,
        "one commit, fast-forwarded onto main"
    );
    let diff = git(&repo, &["diff", &main_before, &main_after])?;
    assert!(
        diff.contains("-    newTag: v1.5.0 # release pipeline")
            && diff.contains("+    newTag: v1.4.1 # release pipeline"),
        "{diff}"
    );
    // The policy's input carried the target the pr-controller described (DescribeTarget).
    let policy_log = policy.output();
    assert!(
        policy_log.contains(r#""target":{"current_tag":"v1.5.0","earlier_tags":["v1.4.1"],"#),
        "the decision log shows input.target:\n{policy_log}"
    );
    let (_, action, reason, _, row_trace, decision_json) = &decision_row;
    assert_eq!(action, "rollback");
    assert!(
        reason.contains("HighErrorRate") && reason.contains("checkout"),
        "reason: {reason}"
    );
    let decision: Value = serde_json::from_str(decision_json)?;
    assert_eq!(decision["action"], "rollback");
    assert_eq!(&decision["reason"], reason.as_str());

    // 2. The same body again, and to a second gateway (an HA pair): nothing new anywhere.
    let messages_before = stream_messages(&nats).await?;
    let (status, again) = post(&client, &gateway_url, Some(TOKEN), fixture("02-firing-1alerts.json")).await?;
    assert_eq!((status, &again["duplicates"]), (200, &Value::from(1)), "{again}");
    let (mut gateway2, gateway2_url) = start_gateway(&nats, "gateway-2", otlp_port, logs)?;
    wait_ready(&format!("{gateway2_url}/readyz"), &mut gateway2).await?;
    let (status, other) = post(&client, &gateway2_url, Some(TOKEN), fixture("02-firing-1alerts.json")).await?;
    assert_eq!((status, &other["duplicates"]), (200, &Value::from(1)), "{other}");
    assert_eq!(
        other["incidents"][0]["key"],
        incident.as_str(),
        "both gateways name the incident alike"
    );
    assert_eq!(
        stream_messages(&nats).await?,
        messages_before,
        "duplicates are not stored"
    );
    // A marker alert behind the duplicates: once it is audited, everything before it was handled.
    let (status, marker) = post(&client, &gateway2_url, Some(TOKEN), fixture("01-firing-1alerts.json")).await?;
    ensure!(status == 200, "{marker}");
    let marker_incident = marker["incidents"][0]["key"]
        .as_str()
        .context("marker key")?
        .to_string();
    wait_for(SETTLE, "the marker alert's audit row", || async {
        (!audit_rows(&audit_db, &marker_incident).await.is_empty()).then_some(())
    })
    .await
    .with_context(dump)?;
    assert_eq!(git(&repo, &["rev-parse", "main"])?, main_after, "no second commit");
    // Approved already: straight onto main, no branch; the commit names its incident.
    assert_eq!(
        git(&repo, &["for-each-ref", "--format=%(refname)", "refs/heads/selfheal/"])?
            .lines()
            .count(),
        0
    );
    let message = git(&repo, &["log", "-1", "--format=%B", "main"])?;
    ensure!(message.contains(&format!("\nIncident: {incident}\n")), "{message}");
    let rows = audit_rows(&audit_db, &incident).await;
    let kinds: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        kinds,
        ["decision", "remediation"],
        "one decision row, one remediation row"
    );
    assert_eq!(rows[1].3, main_after, "the remediation row names the commit");
    let notifications = sink.all();
    assert_eq!(notifications.len(), 1, "{notifications:?}");

    // 4. One incident, one trace: gateway, policy, pr-controller and notifier spans share the id,
    // and so do the audit rows, the notification and the commit.
    assert_eq!(row_trace, &trace_id);
    assert!(rows.iter().all(|r| r.4 == trace_id), "{rows:?}");
    assert_eq!(notifications[0]["trace_id"], trace_id.as_str());
    let traceparent = notifications[0]["_traceparent"].as_str().unwrap_or_default();
    assert!(
        traceparent.starts_with(&format!("00-{trace_id}-")),
        "the webhook request carries the incident's trace context: {traceparent:?}"
    );
    assert_eq!(notifications[0]["incident"], incident.as_str());
    assert_eq!(notifications[0]["to"], "v1.4.1");
    assert!(git(&repo, &["log", "-1", "--format=%B", "main"])?.contains(&format!("Trace-Id: {trace_id}")));
    let services = wait_for(SETTLE, "spans of all four services in the incident's trace", || async {
        let spans = collector.0.lock().ok()?.clone();
        let services: std::collections::BTreeSet<String> = spans
            .iter()
            .filter(|(_, id, ..)| *id == trace_id)
            .map(|(service, ..)| service.clone())
            .collect();
        (services.len() == 4).then_some(services)
    })
    .await
    .with_context(|| format!("{:?}", collector.0.lock().map(|s| s.clone())))?;
    assert_eq!(
        services.into_iter().collect::<Vec<_>>(),
        [
            "selfheal-gateway",
            "selfheal-notifier",
            "selfheal-policy",
            "selfheal-pr-controller"
        ]
    );
    // One tree: each hop's span is the child of the one before it.
    let tree = wait_for(SETTLE, "the incident's spans to form one tree", || async {
        let spans: Vec<Span> = collector.0.lock().ok()?.clone();
        let named = |name: &str| {
            spans
                .iter()
                .find(|(_, id, n, ..)| *id == trace_id && n == name)
                .cloned()
        };
        let (gateway_span, policy_span, pr_span) = (
            named("gateway.ingest")?,
            named("policy.decide")?,
            named("pr_controller.reconcile")?,
        );
        let notifier_under_pr = spans
            .iter()
            .any(|(_, id, n, _, parent)| *id == trace_id && n == "notifier.record" && *parent == pr_span.3);
        notifier_under_pr.then_some((gateway_span, policy_span, pr_span))
    })
    .await
    .with_context(|| format!("{:?}", collector.0.lock().map(|s| s.clone())))?;
    let (gateway_span, policy_span, pr_span) = tree;
    assert!(
        gateway_span.4.is_empty() || gateway_span.4 == "0000000000000000",
        "the gateway's span is the root"
    );
    assert_eq!(policy_span.4, gateway_span.3, "policy under gateway");
    assert_eq!(pr_span.4, policy_span.3, "pr-controller under policy");
    // The policy's DescribeTarget call carries the trace over gRPC: the pr-controller's span for
    // it is in the incident's trace, under the policy's client span, under the decision.
    let (describe_client, describe_server) =
        wait_for(SETTLE, "the DescribeTarget spans in the incident's trace", || async {
            let spans: Vec<Span> = collector.0.lock().ok()?.clone();
            let in_trace = |name: &str| {
                spans
                    .iter()
                    .find(|(_, id, n, ..)| *id == trace_id && n == name)
                    .cloned()
            };
            Some((
                in_trace("policy.describe_target")?,
                in_trace("pr_controller.describe_target")?,
            ))
        })
        .await
        .with_context(|| format!("{:?}", collector.0.lock().map(|s| s.clone())))?;
    assert_eq!(describe_client.4, policy_span.3, "DescribeTarget under the decision");
    assert_eq!(
        describe_server.4, describe_client.3,
        "the server's span under the client's"
    );
    assert_eq!(describe_server.0, "selfheal-pr-controller");

    // The alert resolves: the remediation is verified, with MTTR from the alert's own times
    // (startsAt 10:58:52.05, endsAt 10:59:07.05), and people are told once.
    let (status, resolved) = post(&client, &gateway_url, Some(TOKEN), fixture("03-resolved-1alerts.json")).await?;
    assert_eq!(
        (status, &resolved["incidents"][0]["outcome"]),
        (200, &Value::from("resolved")),
        "{resolved}"
    );
    let verified = wait_for(Duration::from_secs(10), "the verified notification", || async {
        sink.all().into_iter().find(|n| n["state"] == "verified")
    })
    .await
    .with_context(dump)?;
    assert_eq!(verified["mttr_seconds"], 15.0, "{verified}");
    assert_eq!(verified["incident"], incident.as_str());
    assert_eq!(
        verified["trace_id"],
        trace_id.as_str(),
        "the resolution joins the incident's trace: {verified}"
    );
    let rows = audit_rows(&audit_db, &incident).await;
    let kinds: Vec<(&str, &str)> = rows.iter().map(|r| (r.0.as_str(), r.1.as_str())).collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    assert_eq!(sink.all().len(), 2, "merged, then verified");

    // Hop latencies: where the seconds went.
    let scrape = |port: u16| {
        let client = client.clone();
        async move {
            client
                .get(format!("http://127.0.0.1:{port}/metrics"))
                .send()
                .await?
                .text()
                .await
        }
    };
    let policy_metrics = scrape(policy_port).await?;
    assert!(
        policy_metrics.contains("selfheal_hop_webhook_to_decision_seconds_count"),
        "{policy_metrics}"
    );
    let pr_metrics = scrape(pr_port).await?;
    for hop in [
        "selfheal_hop_decision_to_change_seconds_count",
        "selfheal_hop_merge_to_resolved_seconds_count",
        "selfheal_mttr_seconds_bucket",
    ] {
        assert!(pr_metrics.contains(hop), "{hop} missing:\n{pr_metrics}");
    }

    // `selfheal audit` lists the incident's rows, and its Stats agree with them.
    let audit = |extra: &[&str]| -> anyhow::Result<Value> {
        let addr = format!("http://127.0.0.1:{audit_grpc}");
        let out = Command::new(binary("selfheal")?)
            .args([
                "audit",
                "--service",
                "checkout",
                "--json",
                "--addr",
                &addr,
                "--token",
                TOKEN,
            ])
            .args(extra)
            .output()?;
        ensure!(
            out.status.success(),
            "selfheal audit: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let listed = audit(&[])?;
    let listed = listed.as_array().context("rows")?;
    let states: Vec<(&str, &str)> = listed
        .iter()
        .filter(|r| r["incident"] == incident.as_str())
        .map(|r| {
            (
                r["kind"].as_str().unwrap_or_default(),
                r["state"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("decision", "auto"),
            ("remediation", "merged"),
            ("remediation", "verified")
        ]
    );
    let stats = audit(&["--stats"])?;
    let checkout = &stats[0];
    assert_eq!(checkout["service"], "checkout");
    let verified_rows = listed.iter().filter(|r| r["state"] == "verified").count();
    assert_eq!(checkout["verified"], verified_rows, "{stats}");
    assert_eq!(checkout["mttr_p50_seconds"], 15.0, "{stats}");
    assert_eq!(checkout["success_ratio"], 1.0, "{stats}");

    for process in [
        &mut gateway,
        &mut gateway2,
        &mut policy,
        &mut pr_controller,
        &mut notifier,
    ] {
        process.check_running()?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_publish_nothing() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let nats = Nats::start().await?;
    let (mut gateway, url) = start_gateway(&nats, "gateway", free_port()?, temp.path())?;
    wait_ready(&format!("{url}/readyz"), &mut gateway).await?;
    let client = reqwest::Client::new();
    let body = fixture("02-firing-1alerts.json");

    let (status, answer) = post(&client, &url, None, body.clone()).await?;
    assert_eq!((status, &answer["error"]["code"]), (401, &Value::from("unauthorized")));
    let (status, _) = post(&client, &url, Some("s3cr3t-tokeN"), body.clone()).await?;
    assert_eq!(status, 401);
    let (status, answer) = post(&client, &url, Some(TOKEN), b"{\"version\":\"4\",".to_vec()).await?;
    assert_eq!(
        (status, &answer["error"]["field"]),
        (400, &Value::from("body")),
        "{answer}"
    );
    let no_labels = String::from_utf8(body.clone())?.replacen("\"labels\":", "\"labelz\":", 1);
    let (status, answer) = post(&client, &url, Some(TOKEN), no_labels.into_bytes()).await?;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("labels")),
        "{answer}"
    );
    assert_eq!(stream_messages(&nats).await?, 0, "refused requests store nothing");

    let (status, _) = post(&client, &url, Some(TOKEN), body).await?;
    assert_eq!(status, 200);
    assert_eq!(stream_messages(&nats).await?, 1, "an accepted alert is in the stream");
    Ok(())
}
