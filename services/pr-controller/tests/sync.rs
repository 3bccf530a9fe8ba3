//! Sync now, against local servers that answer as Argo CD's application sync API and a Flux
//! notification-controller generic-hmac Receiver do (neither can run here).

use std::sync::{Arc, Mutex};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, Uri},
};
use selfheal_config::Secret;
use selfheal_pr_controller::sync::{ArgoCdConfig, FluxConfig, SyncConfig, SyncNow};
use selfheal_proto::v1::{Alert, AlertEvent, Decision, RemediationEvent, RemediationState};

#[derive(Clone, Debug)]
struct Seen {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

type Log = Arc<Mutex<Vec<Seen>>>;

async fn record(
    State((log, status)): State<(Log, StatusCode)>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    log.lock().expect("lock").push(Seen {
        path: uri.path().to_string(),
        headers,
        body,
    });
    status
}

async fn server(status: StatusCode) -> anyhow::Result<(String, Log)> {
    let log: Log = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let app = axum::Router::new().fallback(record).with_state((log.clone(), status));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, log))
}

fn merged(cluster: &str) -> RemediationEvent {
    let mut event = RemediationEvent {
        incident_key: "inc1".into(),
        service: "checkout".into(),
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        decision: Some(Decision {
            alert: Some(AlertEvent {
                alert: Some(Alert {
                    labels: [
                        ("service".to_string(), "checkout".to_string()),
                        ("cluster".to_string(), cluster.to_string()),
                    ]
                    .into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    event.set_state(RemediationState::Merged);
    event
}

fn config(argocd: &str, flux: &str) -> SyncConfig {
    SyncConfig {
        argocd: ArgoCdConfig {
            url: argocd.into(),
            token: Some(Secret::new("argocd-token")),
            application: "{cluster}-{service}".into(),
            ..Default::default()
        },
        flux: FluxConfig {
            receiver_url: format!("{flux}/hook/5f0d8e"),
            hmac_key: Some(Secret::new("receiver-key")),
            ..Default::default()
        },
    }
}

#[tokio::test]
async fn a_merge_asks_argo_cd_and_flux_with_the_incidents_trace() -> anyhow::Result<()> {
    static GUARD: std::sync::OnceLock<selfheal_telemetry::TelemetryGuard> = std::sync::OnceLock::new();
    GUARD.get_or_init(|| selfheal_telemetry::init("sync-test"));
    let (argocd, argo_log) = server(StatusCode::OK).await?;
    let (flux, flux_log) = server(StatusCode::OK).await?;
    let sync = SyncNow::from_config(&config(&argocd, &flux))?;

    let span = tracing::info_span!("merge");
    let mut incoming = selfheal_bus::Headers::new();
    incoming.insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
    );
    selfheal_telemetry::propagation::set_parent_from_headers(&span, &incoming);
    sync.after_merge(&merged("prod"), &span).await;

    let argo = argo_log.lock().expect("lock").clone();
    assert_eq!(argo.len(), 1);
    assert_eq!(argo[0].path, "/api/v1/applications/prod-checkout/sync");
    assert_eq!(argo[0].headers["authorization"], "Bearer argocd-token");
    let body: serde_json::Value = serde_json::from_slice(&argo[0].body)?;
    assert_eq!(body["prune"], false, "selfheal never prunes");
    let traceparent = argo[0].headers["traceparent"].to_str()?;
    assert!(
        traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{traceparent}"
    );

    let hook = flux_log.lock().expect("lock").clone();
    assert_eq!(hook.len(), 1);
    assert_eq!(hook[0].path, "/hook/5f0d8e");
    let signature = hook[0].headers["x-signature"].to_str()?;
    assert!(selfheal_config::signature::verify(
        b"receiver-key",
        &hook[0].body,
        signature
    ));
    assert!(!selfheal_config::signature::verify(
        b"other-key",
        &hook[0].body,
        signature
    ));
    assert!(hook[0].headers.contains_key("traceparent"));

    // A hostile label never reaches Argo CD's URL; Flux, which needs no name, is still asked.
    sync.after_merge(&merged("../../x"), &span).await;
    assert_eq!(argo_log.lock().expect("lock").len(), 1);
    assert_eq!(flux_log.lock().expect("lock").len(), 2);
    Ok(())
}

#[tokio::test]
async fn failures_are_not_retried_and_settings_are_checked() -> anyhow::Result<()> {
    let (argocd, argo_log) = server(StatusCode::INTERNAL_SERVER_ERROR).await?;
    let (flux, flux_log) = server(StatusCode::OK).await?;
    let sync = SyncNow::from_config(&config(&argocd, &flux))?;
    sync.after_merge(&merged("prod"), &tracing::Span::none()).await;
    assert_eq!(argo_log.lock().expect("lock").len(), 1, "best effort: once");
    assert_eq!(
        flux_log.lock().expect("lock").len(),
        1,
        "one failure does not stop the other"
    );

    let mut no_token = config(&argocd, &flux);
    no_token.argocd.token = None;
    let error = SyncNow::from_config(&no_token).err().expect("refused");
    assert!(error.to_string().contains("no token"), "{error}");
    assert!(
        SyncNow::from_config(&SyncConfig::default())?.is_empty(),
        "off by default"
    );
    Ok(())
}
