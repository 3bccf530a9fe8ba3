//! The policy input's metrics come from a real Prometheus (Debian's package) scraping a test
//! exporter: they equal what Prometheus answers for the alert's labels; with Prometheus down the
//! decision is `escalate`, saying so.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use anyhow::Context;
use selfheal_e2e::{Nats, Process, binary, free_port, wait_for, wait_ready, workspace_root};
use selfheal_proto::{
    Timestamp,
    v1::{Action, Alert, EvaluateRequest, EvaluateResponse, policy_client::PolicyClient},
};
use serde_json::Value;
use tonic::Request;

const TOKEN: &str = "s3cr3t-token";
const ERROR_RATE: &str = r#"max(app_error_ratio{service="{{service}}"})"#;
const RESTARTS: &str = r#"max(app_restarts{service="{{service}}"})"#;

async fn start_exporter() -> anyhow::Result<u16> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            "# TYPE app_error_ratio gauge\napp_error_ratio{service=\"checkout\"} 0.12\napp_error_ratio{service=\"cart\"} 0.01\n\
             # TYPE app_restarts gauge\napp_restarts{service=\"checkout\"} 5\napp_restarts{service=\"cart\"} 0\n"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(port)
}

async fn prometheus_value(base: &str, promql: &str) -> Option<f64> {
    let url = reqwest::Url::parse_with_params(&format!("{base}/api/v1/query"), &[("query", promql)]).ok()?;
    let body: Value = reqwest::get(url).await.ok()?.json().await.ok()?;
    body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

async fn evaluate(
    client: &mut PolicyClient<tonic::transport::Channel>,
    service: &str,
) -> anyhow::Result<EvaluateResponse> {
    let labels: HashMap<String, String> = [
        ("alertname", "HighErrorRate"),
        ("service", service),
        ("severity", "critical"),
        ("auto_heal", "true"),
        ("namespace", "shop"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let alert = Alert {
        status: "firing".into(),
        labels,
        starts_at: Some(Timestamp {
            seconds: 1_764_000_000,
            nanos: 0,
        }),
        ..Default::default()
    };
    let mut request = Request::new(EvaluateRequest {
        alert: Some(alert),
        dry_run: true,
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse()?);
    Ok(client.evaluate(request).await?.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_come_from_prometheus_and_its_absence_escalates() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let exporter = start_exporter().await?;
    let prometheus_port = free_port()?;
    let prometheus_url = format!("http://127.0.0.1:{prometheus_port}");
    let config = temp.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: app\n    static_configs: [{{targets: ['127.0.0.1:{exporter}']}}]\n"
        ),
    )?;
    let program = std::env::var_os("PROMETHEUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("prometheus"));
    let args = [
        format!("--config.file={}", config.display()),
        format!("--storage.tsdb.path={}", temp.path().join("tsdb").display()),
        format!("--web.listen-address=127.0.0.1:{prometheus_port}"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut prometheus = Process::start("prometheus", &program, &args, &[], temp.path())
        .context("prometheus must be installed (apt-get install prometheus) or named by $PROMETHEUS")?;
    wait_ready(&format!("{prometheus_url}/-/ready"), &mut prometheus).await?;
    let checkout_rate = r#"max(app_error_ratio{service="checkout"})"#;
    wait_for(Duration::from_secs(30), "prometheus to scrape the exporter", || async {
        prometheus_value(&prometheus_url, checkout_rate).await
    })
    .await
    .with_context(|| prometheus.output())?;

    let nats = Nats::start().await?;
    let (http, grpc) = (free_port()?, free_port()?);
    let policy_config = temp.path().join("policy.toml");
    std::fs::write(
        &policy_config,
        format!(
            "[metrics]\nprometheus_url = \"{prometheus_url}\"\ntimeout = \"1s\"\n[metrics.queries.HighErrorRate]\nerror_rate = '{ERROR_RATE}'\nrestarts = '{RESTARTS}'\n"
        ),
    )?;
    let env = [
        ("SELFHEAL_POLICY_LISTEN", format!("127.0.0.1:{http}")),
        ("SELFHEAL_POLICY_GRPC_LISTEN", format!("127.0.0.1:{grpc}")),
        ("SELFHEAL_POLICY_NATS_URL", nats.url()),
        (
            "SELFHEAL_POLICY_POLICY_DIR",
            workspace_root().join("deploy/policies").display().to_string(),
        ),
        ("SELFHEAL_POLICY_GRPC_TOKEN", TOKEN.to_string()),
    ];
    let config_arg = policy_config.display().to_string();
    let mut policy = Process::start(
        "policy",
        &binary("selfheal-policy")?,
        &["--config", &config_arg],
        &env,
        temp.path(),
    )?;
    wait_ready(&format!("http://127.0.0.1:{http}/readyz"), &mut policy).await?;
    let mut client = PolicyClient::connect(format!("http://127.0.0.1:{grpc}")).await?;

    // The input's metrics are what Prometheus answers for the alert's labels.
    let answer = evaluate(&mut client, "checkout").await?;
    let input: Value = serde_json::from_str(&answer.input_json)?;
    let expected_rate = prometheus_value(&prometheus_url, checkout_rate).await.context("rate")?;
    let expected_restarts = prometheus_value(&prometheus_url, r#"max(app_restarts{service="checkout"})"#)
        .await
        .context("restarts")?;
    assert_eq!(input["metrics"]["error_rate"].as_f64(), Some(expected_rate), "{input}");
    assert_eq!(
        input["metrics"]["restarts"].as_f64(),
        Some(expected_restarts),
        "{input}"
    );
    assert_eq!((expected_rate, expected_restarts), (0.12, 5.0));
    let decision = answer.decision.context("decision")?;
    assert_eq!(decision.action(), Action::Rollback, "{}", decision.reason);
    assert!(
        decision.reason.contains("error rate 12%, 5 restarts"),
        "{}",
        decision.reason
    );

    // Another service whose numbers do not confirm the alert: no action, and why.
    let cart = evaluate(&mut client, "cart").await?.decision.context("decision")?;
    assert_eq!(cart.action(), Action::None, "{}", cart.reason);
    assert!(cart.reason.contains("not over 5%"), "{}", cart.reason);

    // A label that tries to break out of its PromQL string matches nothing: no value is made up.
    let hostile = evaluate(&mut client, "checkout\"} or vector(1) or {a=\"").await?;
    let input: Value = serde_json::from_str(&hostile.input_json)?;
    assert!(input["metrics"].get("error_rate").is_none(), "{input}");
    assert_eq!(hostile.decision.context("decision")?.action(), Action::Escalate);

    // Prometheus down: the metric is absent (not zero) and the decision escalates, saying so.
    prometheus.kill().await?;
    let down = evaluate(&mut client, "checkout").await?;
    let input: Value = serde_json::from_str(&down.input_json)?;
    assert!(input["metrics"].get("error_rate").is_none(), "{input}");
    assert!(
        input["metrics_errors"]["error_rate"]
            .as_str()
            .is_some_and(|e| e.contains("prometheus unavailable")),
        "{input}"
    );
    let decision = down.decision.context("decision")?;
    assert_eq!(decision.action(), Action::Escalate);
    assert!(
        decision.reason.contains("prometheus unavailable"),
        "{}",
        decision.reason
    );
    policy.check_running()?;
    Ok(())
}
