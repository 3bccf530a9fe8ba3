//! The seeds' safety questions, on a real nats-server with two policy replicas sharing the
//! `policy` consumer.
//!
//! * Critical windows: a one-off window around the test's own now holds for `orders`: its
//!   critical HighErrorRate escalates naming the window, while `cart` — matched only by a window
//!   an hour from now — rolls back.
//! * The freeze: `selfheal freeze on` stops every automatic change on both replicas (each one's
//!   `Evaluate` says so, and alerts they consume escalate), `status` says until when, `off`
//!   resumes.
//! * Recently fixed: `checkout`'s HighErrorRate is rolled back and verified (the alert resolves);
//!   the same alert again within `recently_fixed` escalates with the fix's time; once that
//!   window has passed, it is fixed again.
//! * Blast radius: a real Prometheus scrapes an exporter serving servicegraph-shaped series
//!   (`traces_service_graph_request_total{client, server}`): `payments`' four callers are in the
//!   input with their rates; with three of them firing and `max_firing_dependents = 2`, its
//!   HighErrorRate escalates naming the three.

use anyhow::{Context, ensure};
use selfheal_e2e::{
    Process, TOKEN, binary, free_port,
    stack::{Stack, events, until},
    webhook_body,
};
use selfheal_proto::v1::{Action, Alert, Decision, EvaluateRequest, RemediationState, policy_client::PolicyClient};

/// `selfheal freeze …` against the stack's NATS: its exit status and output.
async fn freeze(stack: &Stack, args: &[&str]) -> anyhow::Result<(bool, String)> {
    stack.cli(&[&["freeze"], args, &["--by", "e2e"]].concat()).await
}

fn labels(service: &str) -> serde_json::Value {
    serde_json::json!({"alertname": "HighErrorRate", "service": service, "severity": "critical", "auto_heal": "true"})
}

/// Posts one alert for `service` starting at `starts`; its incident key.
async fn alert(stack: &Stack, service: &str, starts: &str) -> anyhow::Result<String> {
    let gateway = stack.specs["gateway"].ready.trim_end_matches("/readyz").to_string();
    let response = selfheal_e2e::post_alerts(
        &reqwest::Client::new(),
        &gateway,
        webhook_body(labels(service), starts, starts),
    )
    .await?;
    ensure!(response.status() == 200, "the gateway answered {}", response.status());
    let body: serde_json::Value = response.json().await?;
    body["incidents"][0]["key"]
        .as_str()
        .map(str::to_string)
        .context("no incident key in the answer")
}

/// The decision for `incident`, once it is on the bus.
async fn decision(stack: &Stack, service: &str, incident: &str) -> anyhow::Result<Decision> {
    let nats_url = stack.nats_url.clone();
    until(&format!("the decision for {incident}"), stack, async || {
        events(&nats_url, service)
            .await
            .is_ok_and(|(decisions, _)| decisions.iter().any(|d| d.incident_key == incident))
    })
    .await?;
    let (decisions, _) = events(&nats_url, service).await?;
    decisions
        .into_iter()
        .find(|d| d.incident_key == incident)
        .context("decision gone")
}

/// What the replica serving gRPC on `port` would decide now for a critical HighErrorRate on
/// `service`.
async fn evaluate(port: &str, service: &str) -> anyhow::Result<Decision> {
    Ok(evaluate_with_input(port, service).await?.0)
}

/// [`evaluate`], and the input the policy saw.
async fn evaluate_with_input(port: &str, service: &str) -> anyhow::Result<(Decision, serde_json::Value)> {
    let mut client = PolicyClient::connect(format!("http://{port}")).await?;
    let labels = labels(service);
    let mut request = tonic::Request::new(EvaluateRequest {
        alert: Some(Alert {
            status: "firing".into(),
            labels: labels
                .as_object()
                .context("labels")?
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect(),
            ..Default::default()
        }),
        dry_run: false,
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse()?);
    let answer = client.evaluate(request).await?.into_inner();
    let input = serde_json::from_str(&answer.input_json)?;
    Ok((answer.decision.context("no decision")?, input))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_the_freeze_recently_fixed_and_blast_radius_hold_on_every_replica() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let now = chrono::Utc::now();
    let at = |minutes: i64| (now + chrono::Duration::minutes(minutes)).to_rfc3339();
    std::fs::write(
        temp.path().join("policy-windows.toml"),
        format!(
            "[[windows]]\nname = \"orders-release\"\nmatch = {{ service = \"orders\" }}\nfrom = \"{}\"\nuntil = \"{}\"\nreason = \"release train\"\n\n\
             [[windows]]\nname = \"cart-later\"\nmatch = {{ service = \"cart\" }}\nfrom = \"{}\"\nuntil = \"{}\"\n",
            at(-1),
            at(30),
            at(60),
            at(120)
        ),
    )?;
    // The service graph: an exporter, and a Prometheus scraping it every second.
    let (prometheus_url, _prometheus) = service_graph(temp.path()).await?;
    let gateway_grpc = free_port()?;
    std::fs::write(
        temp.path().join("policy-windows.toml"),
        format!(
            "{}
[metrics]
prometheus_url = \"{prometheus_url}\"

             [dependents]
query = 'sum by (client) (rate(traces_service_graph_request_total{{server=\"{{{{service}}}}\"}}[5s]))'
             incidents_url = \"http://127.0.0.1:{gateway_grpc}\"
incidents_token = \"{TOKEN}\"

             [limits]
max_firing_dependents = 2
recently_fixed = \"{RECENTLY_FIXED}\"
",
            std::fs::read_to_string(temp.path().join("policy-windows.toml"))?
        ),
    )?;
    let env = [
        (
            "SELFHEAL_POLICY_CONFIG",
            temp.path().join("policy-windows.toml").display().to_string(),
        ),
        ("SELFHEAL_GATEWAY_GRPC_LISTEN", format!("127.0.0.1:{gateway_grpc}")),
    ];
    let releases: &[(&str, u32)] = &[("v1.3.0", 2), ("v1.4.1", 2), ("v1.5.0", 2)];
    let mut stack = Stack::start(
        temp.path(),
        &[],
        &[
            ("orders", releases),
            ("cart", releases),
            ("checkout", releases),
            ("payments", releases),
        ],
        &env,
    )
    .await?;
    // A second policy replica on the same consumer.
    let mut second = stack.specs["policy"].clone();
    let (http, grpc) = (free_port()?, free_port()?);
    second.env.push(("SELFHEAL_POLICY_LISTEN", format!("127.0.0.1:{http}")));
    second
        .env
        .push(("SELFHEAL_POLICY_GRPC_LISTEN", format!("127.0.0.1:{grpc}")));
    second.ready = format!("http://127.0.0.1:{http}/readyz");
    stack.specs.insert("policy-2".into(), second);
    stack.launch("policy-2").await?;
    let replicas = [
        stack.grpc_address("policy").context("policy's gRPC")?,
        stack.grpc_address("policy-2").context("policy-2's gRPC")?,
    ];

    // Inside checkout's window: escalated, naming it. Cart's window is an hour away: rolled back.
    let orders = alert(&stack, "orders", "2026-12-01T10:00:00Z").await?;
    let held = decision(&stack, "orders", &orders).await?;
    ensure!(
        held.action() == Action::Escalate
            && held
                .reason
                .contains("critical window \"orders-release\" (release train)")
            && held.reason.contains("rollback"),
        "{:?}: {}",
        held.action(),
        held.reason
    );
    let cart = alert(&stack, "cart", "2026-12-01T10:00:01Z").await?;
    let fixed = decision(&stack, "cart", &cart).await?;
    ensure!(
        fixed.action() == Action::Rollback,
        "{:?}: {}",
        fixed.action(),
        fixed.reason
    );

    // The freeze: every replica refuses to change anything, and says so.
    let (ok, out) = freeze(&stack, &["on", "--until", "20m", "--reason", "database failover"]).await?;
    ensure!(
        ok && out.contains("frozen until") && out.contains("database failover"),
        "{out}"
    );
    let (ok, status) = freeze(&stack, &["status"]).await?;
    let frozen_until = (now + chrono::Duration::minutes(20)).format("%Y-%m-%dT%H").to_string();
    ensure!(
        ok && status.contains(&format!("frozen until {frozen_until}")) && status.contains("set by e2e"),
        "{status}"
    );
    // The acting path reads the freeze from the bucket: alerts sent the moment it is on stop.
    let mut frozen = Vec::new();
    for n in 0..6 {
        frozen.push(alert(&stack, "cart", &format!("2026-12-01T11:00:0{n}Z")).await?);
    }
    for incident in &frozen {
        let stopped = decision(&stack, "cart", incident).await?;
        ensure!(
            stopped.action() == Action::Escalate && stopped.reason.contains("database failover"),
            "{incident}: {:?}: {}",
            stopped.action(),
            stopped.reason
        );
    }
    // `Evaluate` previews from memory, kept current by the control bucket's watch: the freeze
    // shows there as soon as the watch delivers it.
    for replica in &replicas {
        until("the freeze in the preview", &stack, async || {
            evaluate(replica, "cart").await.is_ok_and(|answer| {
                answer.action() == Action::Escalate
                    && answer.reason.contains("critical window \"freeze\" (database failover)")
            })
        })
        .await?;
    }

    // Off: both replicas would act again, and the next alert is rolled back.
    let (ok, out) = freeze(&stack, &["off"]).await?;
    ensure!(ok && out.contains("no freeze"), "{out}");
    for replica in &replicas {
        until("the lifted freeze in the preview", &stack, async || {
            evaluate(replica, "cart")
                .await
                .is_ok_and(|answer| answer.action() == Action::Rollback)
        })
        .await?;
    }
    let after = alert(&stack, "cart", "2026-12-01T12:00:00Z").await?;
    let resumed = decision(&stack, "cart", &after).await?;
    ensure!(
        resumed.action() == Action::Rollback,
        "{:?}: {}",
        resumed.action(),
        resumed.reason
    );

    recently_fixed(&stack, &replicas).await?;
    blast_radius(&stack, &replicas).await
}

/// Serves `payments`' callers as the OpenTelemetry Collector's servicegraph connector does, each
/// counter growing at its own rate per scrape, and starts a Prometheus scraping it every second:
/// Prometheus's URL, and its process.
async fn service_graph(dir: &std::path::Path) -> anyhow::Result<(String, Process)> {
    let scrapes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let n = scrapes.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            async move {
                let mut text = String::from("# TYPE traces_service_graph_request_total counter\n");
                for (client, per_scrape) in [("frontend", 120), ("mobile", 30), ("admin", 6), ("batch", 12)] {
                    text.push_str(&format!(
                        "traces_service_graph_request_total{{client=\"{client}\",server=\"payments\"}} {}\n",
                        n * per_scrape
                    ));
                }
                text
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let exporter = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    let port = free_port()?;
    std::fs::write(
        dir.join("graph-prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: graph
    static_configs: [{{targets: [\"{exporter}\"]}}]
"
        ),
    )?;
    let program = std::env::var("PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
    let mut prometheus = Process::start(
        "graph-prometheus",
        std::path::Path::new(&program),
        &[
            &format!("--config.file={}", dir.join("graph-prometheus.yml").display()),
            &format!("--storage.tsdb.path={}", dir.join("graph-data").display()),
            &format!("--web.listen-address=127.0.0.1:{port}"),
        ],
        &[],
        dir,
    )
    .context("prometheus must be installed (apt-get install prometheus) or named by $PROMETHEUS")?;
    let url = format!("http://127.0.0.1:{port}");
    selfheal_e2e::wait_ready(&format!("{url}/-/ready"), &mut prometheus).await?;
    Ok((url, prometheus))
}

/// `payments`: its callers in the input with their rates; three of them firing: escalated.
async fn blast_radius(stack: &Stack, replicas: &[String]) -> anyhow::Result<()> {
    let input = async || -> anyhow::Result<serde_json::Value> {
        let (_, input) = evaluate_with_input(&replicas[0], "payments").await?;
        Ok(input)
    };
    until("the callers' rates", stack, async || {
        input().await.is_ok_and(|input| {
            input["dependents"]
                .as_array()
                .is_some_and(|d| d.len() == 4 && d.iter().all(|d| d["rate"].as_f64().is_some_and(|r| r > 0.0)))
        })
    })
    .await?;
    let seen = input().await?;
    let callers: Vec<&str> = seen["dependents"]
        .as_array()
        .context("dependents")?
        .iter()
        .filter_map(|d| d["service"].as_str())
        .collect();
    ensure!(callers == ["admin", "batch", "frontend", "mobile"], "{seen}");
    let rate = |name: &str| {
        seen["dependents"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["service"] == name))
            .and_then(|d| d["rate"].as_f64())
            .unwrap_or_default()
    };
    // The counters grow 120, 30, 6 and 12 per one-second scrape.
    ensure!(
        rate("frontend") > rate("mobile") && rate("mobile") > rate("batch") && rate("batch") > rate("admin"),
        "{seen}"
    );
    // Three callers have incidents firing (an alert the default policy does nothing about).
    let gateway = stack.specs["gateway"].ready.trim_end_matches("/readyz").to_string();
    for caller in ["frontend", "mobile", "admin"] {
        let labels = serde_json::json!({"alertname": "HighLatency", "service": caller, "severity": "warning"});
        let body = webhook_body(labels, "2026-12-01T14:00:00Z", caller);
        let answer = selfheal_e2e::post_alerts(&reqwest::Client::new(), &gateway, body).await?;
        ensure!(answer.status() == 200, "{caller}: {}", answer.status());
    }
    let incident = alert(stack, "payments", "2026-12-01T14:01:00Z").await?;
    let held = decision(stack, "payments", &incident).await?;
    ensure!(
        held.action() == Action::Escalate
            && held
                .reason
                .contains("3 services that call payments have incidents firing")
            && ["frontend", "mobile", "admin"].iter().all(|c| held.reason.contains(c))
            && !held.reason.contains("batch"),
        "{:?}: {}",
        held.action(),
        held.reason
    );
    let seen = input().await?;
    let firing: Vec<&str> = seen["dependents"]
        .as_array()
        .context("dependents")?
        .iter()
        .filter(|d| d["firing"] == true)
        .filter_map(|d| d["service"].as_str())
        .collect();
    ensure!(firing == ["admin", "frontend", "mobile"], "{seen}");

    // The service's input, decided by `selfheal policy eval --input`: the same decision.
    let (served, input) = evaluate_with_input(&replicas[0], "payments").await?;
    let file = stack.dir.join("payments-input.json");
    std::fs::write(&file, serde_json::to_vec(&input)?)?;
    let output = tokio::process::Command::new(binary("selfheal")?)
        .current_dir(selfheal_e2e::workspace_root())
        .args(["policy", "eval", "--input"])
        .arg(&file)
        .output()
        .await?;
    ensure!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    ensure!(
        printed["decision"]["action"] == "escalate" && printed["decision"]["reason"] == served.reason.as_str(),
        "policy eval --input: {} / the service: {}",
        printed["decision"],
        served.reason
    );
    Ok(())
}

/// `limits.recently_fixed` in the test: long enough to fire the alert again inside it.
const RECENTLY_FIXED: &str = "20s";

/// `checkout`: fixed and verified; again within the window: escalated; after it: fixed again.
async fn recently_fixed(stack: &Stack, replicas: &[String]) -> anyhow::Result<()> {
    let first = alert(stack, "checkout", "2026-12-01T13:00:00Z").await?;
    ensure!(decision(stack, "checkout", &first).await?.action() == Action::Rollback);
    let nats_url = stack.nats_url.clone();
    let state = async |wanted: RemediationState| {
        events(&nats_url, "checkout").await.is_ok_and(|(_, remediations)| {
            remediations
                .iter()
                .any(|r| r.incident_key == first && r.state() == wanted)
        })
    };
    until("the rollback merged", stack, async || {
        state(RemediationState::Merged).await
    })
    .await?;
    // The alert resolves: the fix is verified.
    let resolved = serde_json::json!({
        "version": "4", "status": "resolved", "receiver": "selfheal", "groupKey": "{}:{fp=\"first\"}",
        "truncatedAlerts": 0, "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://alertmanager",
        "alerts": [{
            "status": "resolved", "labels": labels("checkout"), "annotations": {},
            "startsAt": "2026-12-01T13:00:00Z", "endsAt": chrono::Utc::now().to_rfc3339(),
            "generatorURL": "http://prometheus/graph", "fingerprint": "2026-12-01T13:00:00Z",
        }],
    });
    let gateway = stack.specs["gateway"].ready.trim_end_matches("/readyz").to_string();
    let answer = selfheal_e2e::post_alerts(&reqwest::Client::new(), &gateway, serde_json::to_vec(&resolved)?).await?;
    ensure!(answer.status() == 200, "resolved: {}", answer.status());
    until("the fix verified", stack, async || {
        state(RemediationState::Verified).await
    })
    .await?;
    let (_, remediations) = events(&nats_url, "checkout").await?;
    let verified_at = remediations
        .iter()
        .find(|r| r.incident_key == first && r.state() == RemediationState::Verified)
        .and_then(|r| r.at.as_ref())
        .and_then(selfheal_proto::time::datetime)
        .context("the verified event's time")?
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string();
    // Both replicas know of the verified fix once its outcome is in the record.
    for replica in replicas {
        until("the outcome in the record", stack, async || {
            evaluate(replica, "checkout")
                .await
                .is_ok_and(|d| d.action() == Action::Escalate && d.reason.contains("fired again"))
        })
        .await?;
    }
    // The same alert again: not fixed again by itself, and the reason says when it was fixed
    // (the default policy says so; the service would, were the policy to want a change anyway).
    let again = alert(stack, "checkout", "2026-12-01T13:10:00Z").await?;
    let repeat = decision(stack, "checkout", &again).await?;
    ensure!(
        repeat.action() == Action::Escalate
            && repeat.reason.contains(&format!("verified at {verified_at}"))
            && repeat.reason.contains("fired again"),
        "{:?}: {} (verified at {verified_at})",
        repeat.action(),
        repeat.reason
    );
    // Once the window has passed, it is fixed again.
    until("the recently-fixed window to pass", stack, async || {
        evaluate(&replicas[0], "checkout")
            .await
            .is_ok_and(|d| d.action() == Action::Rollback)
    })
    .await?;
    let later = alert(stack, "checkout", "2026-12-01T13:20:00Z").await?;
    let fixed = decision(stack, "checkout", &later).await?;
    ensure!(
        fixed.action() == Action::Rollback,
        "{:?}: {}",
        fixed.action(),
        fixed.reason
    );
    Ok(())
}
