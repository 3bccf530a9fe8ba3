//! Sync now: after a merge, ask Argo CD to sync the application (its REST API) or Flux to
//! reconcile the source (a notification-controller `Receiver` webhook), instead of waiting
//! minutes for their poll. Best effort: the poll still applies the change if this fails, so a
//! failure is logged and counted, never retried.

use std::{path::PathBuf, time::Duration};

use async_trait::async_trait;
use selfheal_config::Secret;
use selfheal_proto::v1::RemediationEvent;
use serde::{Deserialize, Serialize};
use serde_json::json;

use selfheal_proto::names::is_dns1123_label;

/// Settings of sync-now (`[sync]`; `SELFHEAL_PR_CONTROLLER_SYNC__*`). Both are off by default.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    pub argocd: ArgoCdConfig,
    pub flux: FluxConfig,
}

/// Argo CD: `POST {url}/api/v1/applications/{application}/sync`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArgoCdConfig {
    /// Argo CD's API server, e.g. `https://argocd.example.com`; empty: off.
    pub url: String,
    /// An account token allowed to sync the applications (`argocd account generate-token`).
    pub token: Option<Secret>,
    pub token_file: Option<PathBuf>,
    /// The application's name; `{service}`, `{namespace}` and `{cluster}` are filled from the
    /// alert's labels (DNS-1123 labels only).
    pub application: String,
    /// The application's namespace, for applications outside Argo CD's own ("apps in any namespace").
    pub app_namespace: Option<String>,
}

impl Default for ArgoCdConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            token: None,
            token_file: None,
            application: "{service}".into(),
            app_namespace: None,
        }
    }
}

/// Flux: a `Receiver` (type `generic-hmac`, or `generic`) on the GitRepository; its URL is the
/// notification-controller's address plus the Receiver's `.status.webhookPath`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FluxConfig {
    /// e.g. `http://notification-controller.flux-system.svc/hook/<path>`; empty: off.
    pub receiver_url: String,
    /// The Receiver's secret token: the body is signed with it (`X-Signature: sha256=<hex>`),
    /// as a `generic-hmac` Receiver requires.
    pub hmac_key: Option<Secret>,
    pub hmac_key_file: Option<PathBuf>,
}

/// Why a sync request failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("sync settings: {0}")]
    Config(String),
    #[error("{target}: {reason}")]
    Request { target: &'static str, reason: String },
}

/// Something that applies the main branch sooner than its poll would.
#[async_trait]
pub trait Syncer: Send + Sync {
    /// Asks for the merged change in `event` to be applied now; what was asked, for the log.
    async fn sync(&self, event: &RemediationEvent, span: &tracing::Span) -> Result<String, SyncError>;
}

/// Every configured syncer, asked in turn.
pub struct SyncNow {
    syncers: Vec<Box<dyn Syncer>>,
}

impl SyncNow {
    /// The syncers `config` turns on (none when both are off).
    pub fn from_config(config: &SyncConfig) -> Result<Self, SyncError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| SyncError::Config(e.to_string()))?;
        let mut syncers: Vec<Box<dyn Syncer>> = Vec::new();
        if !config.argocd.url.is_empty() {
            let token = Secret::inline_or_file(config.argocd.token.clone(), config.argocd.token_file.as_deref())
                .map_err(|e| SyncError::Config(format!("sync.argocd.token_file: {e}")))?
                .ok_or_else(|| SyncError::Config("sync.argocd.url is set but no token is".into()))?;
            reqwest::Url::parse(&config.argocd.url).map_err(|e| SyncError::Config(format!("sync.argocd.url: {e}")))?;
            syncers.push(Box::new(ArgoCd {
                client: client.clone(),
                config: config.argocd.clone(),
                token,
            }));
        }
        if !config.flux.receiver_url.is_empty() {
            let key = Secret::inline_or_file(config.flux.hmac_key.clone(), config.flux.hmac_key_file.as_deref())
                .map_err(|e| SyncError::Config(format!("sync.flux.hmac_key_file: {e}")))?;
            reqwest::Url::parse(&config.flux.receiver_url)
                .map_err(|e| SyncError::Config(format!("sync.flux.receiver_url: {e}")))?;
            syncers.push(Box::new(FluxReceiver {
                client,
                url: config.flux.receiver_url.clone(),
                key,
            }));
        }
        Ok(Self { syncers })
    }

    /// Whether any syncer is configured.
    pub fn is_empty(&self) -> bool {
        self.syncers.is_empty()
    }

    /// Asks every syncer; failures are logged and counted.
    pub async fn after_merge(&self, event: &RemediationEvent, span: &tracing::Span) {
        for syncer in &self.syncers {
            match syncer.sync(event, span).await {
                Ok(what) => {
                    metrics::counter!(selfheal_telemetry::metrics::SYNC_REQUESTS, "result" => "ok").increment(1);
                    tracing::info!(parent: span, %what, "sync requested");
                }
                Err(error) => {
                    metrics::counter!(selfheal_telemetry::metrics::SYNC_REQUESTS, "result" => "error").increment(1);
                    tracing::warn!(parent: span, error = %error, "sync request failed; the poll will apply the change");
                }
            }
        }
    }
}

/// Fills `{service}`, `{namespace}`, `{cluster}` from the event's alert labels.
fn render(template: &str, event: &RemediationEvent) -> Result<String, SyncError> {
    let labels = event
        .decision
        .as_ref()
        .and_then(|d| d.alert.as_ref())
        .and_then(|a| a.alert.as_ref())
        .map(|a| a.labels.clone())
        .unwrap_or_default();
    let mut out = template.to_string();
    for name in ["service", "namespace", "cluster"] {
        let placeholder = format!("{{{name}}}");
        if !out.contains(&placeholder) {
            continue;
        }
        let value = if name == "service" && !event.service.is_empty() {
            event.service.clone()
        } else {
            labels.get(name).cloned().unwrap_or_default()
        };
        if !is_dns1123_label(&value) {
            return Err(SyncError::Config(format!(
                "the alert's {name} label is missing or not a DNS-1123 label"
            )));
        }
        out = out.replace(&placeholder, &value);
    }
    Ok(out)
}

async fn check(target: &'static str, response: reqwest::Result<reqwest::Response>) -> Result<(), SyncError> {
    let response = response.map_err(|e| SyncError::Request {
        target,
        reason: e.without_url().to_string(),
    })?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body: String = response.text().await.unwrap_or_default().chars().take(300).collect();
    Err(SyncError::Request {
        target,
        reason: format!("{status}: {body}"),
    })
}

struct ArgoCd {
    client: reqwest::Client,
    config: ArgoCdConfig,
    token: Secret,
}

#[async_trait]
impl Syncer for ArgoCd {
    async fn sync(&self, event: &RemediationEvent, span: &tracing::Span) -> Result<String, SyncError> {
        let application = render(&self.config.application, event)?;
        let url = format!(
            "{}/api/v1/applications/{application}/sync",
            self.config.url.trim_end_matches('/')
        );
        let mut body = json!({ "prune": false, "dryRun": false });
        if let Some(namespace) = &self.config.app_namespace {
            body["appNamespace"] = json!(namespace);
        }
        let response = self
            .client
            .post(&url)
            .headers(selfheal_telemetry::propagation::http_headers(span))
            .bearer_auth(self.token.expose())
            .json(&body)
            .send()
            .await;
        check("argocd", response).await?;
        Ok(format!("Argo CD sync of application {application}"))
    }
}

struct FluxReceiver {
    client: reqwest::Client,
    url: String,
    key: Option<Secret>,
}

#[async_trait]
impl Syncer for FluxReceiver {
    async fn sync(&self, event: &RemediationEvent, span: &tracing::Span) -> Result<String, SyncError> {
        let body = serde_json::to_vec(&json!({
            "source": "selfheal",
            "incident": event.incident_key,
            "service": event.service,
            "commit": event.commit,
        }))
        .map_err(|e| SyncError::Config(e.to_string()))?;
        let mut request = self
            .client
            .post(&self.url)
            .headers(selfheal_telemetry::propagation::http_headers(span))
            .header("content-type", "application/json");
        if let Some(key) = &self.key {
            request = request.header(
                "x-signature",
                selfheal_config::signature::sign(key.expose().as_bytes(), &body),
            );
        }
        check("flux", request.body(body).send().await).await?;
        Ok("Flux receiver notified".into())
    }
}
