//! The policy input's `target`: what the GitOps repository says about the service, asked of the
//! pr-controller's gRPC `DescribeTarget` (the policy never reads git itself).

use std::{collections::BTreeMap, time::Duration};

use selfheal_config::Secret;
use selfheal_proto::v1::{DescribeTargetRequest, remediations_client::RemediationsClient};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tonic::transport::Channel;
use tracing::Instrument as _;

/// Where to ask.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TargetConfig {
    /// The pr-controller's gRPC address (`http://pr-controller:50053`); unset: `input.target` is empty.
    pub url: Option<String>,
    /// Its gRPC token.
    pub token: Option<Secret>,
    /// File holding its gRPC token.
    pub token_file: Option<std::path::PathBuf>,
    /// How long one call may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// TLS for an `https://` URL (`[target.tls]`: `ca_file`, and `cert_file` + `key_file` when
    /// the pr-controller asks for a client certificate).
    pub tls: selfheal_runtime::grpc_tls::ClientTlsConfig,
}

impl Default for TargetConfig {
    fn default() -> Self {
        Self {
            url: None,
            token: None,
            token_file: None,
            timeout: Duration::from_secs(2),
            tls: Default::default(),
        }
    }
}

/// The alert's labels: what a target is asked by (targets match on any label).
type Asked = BTreeMap<String, String>;

/// A `[target]` setting that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum TargetConfigError {
    #[error("target.token_file: {0}")]
    Token(#[source] selfheal_config::ConfigError),
    #[error("target.token: must be set when target.url is")]
    NoToken,
    /// A bad URL, or TLS settings that cannot be used (the message names which).
    #[error("target.{0}")]
    Channel(#[source] selfheal_runtime::grpc_tls::TlsError),
}

/// Asks the pr-controller.
#[derive(Clone)]
pub struct TargetReader {
    client: Option<(RemediationsClient<Channel>, Secret)>,
    /// Alerts of one service decided at once share one call (in the trace of the first).
    reads: std::sync::Arc<selfheal_bus::coalesce::Coalesce<Asked, (Value, Option<String>)>>,
}

impl TargetReader {
    /// A reader for `config`; connects lazily, so a pr-controller that starts later is fine.
    pub fn from_config(config: &TargetConfig) -> Result<Self, TargetConfigError> {
        let Some(url) = config.url.as_ref().filter(|u| !u.is_empty()) else {
            return Ok(Self::none());
        };
        let token = Secret::inline_or_file(config.token.clone(), config.token_file.as_deref())
            .map_err(TargetConfigError::Token)?
            .ok_or(TargetConfigError::NoToken)?;
        let timeout = config.timeout;
        let channel = selfheal_runtime::grpc_tls::channel(url, &config.tls, |e| e.timeout(timeout))
            .map_err(TargetConfigError::Channel)?;
        Ok(Self {
            client: Some((RemediationsClient::new(channel), token)),
            reads: Default::default(),
        })
    }

    /// No target information.
    pub fn none() -> Self {
        Self {
            client: None,
            reads: Default::default(),
        }
    }

    /// (`target`, error) for an alert with these labels: `{}` and the reason when it cannot be had.
    pub async fn read(&self, labels: &BTreeMap<String, String>) -> (Value, Option<String>) {
        let Some((client, token)) = &self.client else {
            return (json!({}), None);
        };
        if !labels.contains_key("service") {
            return (json!({}), Some("the alert has no service label".into()));
        }
        let asked = labels.clone();
        let (client, token) = (client.clone(), token.clone());
        self.reads
            .read(asked.clone(), move || describe(client, token, asked))
            .await
    }
}

/// One `DescribeTarget` call.
async fn describe(mut client: RemediationsClient<Channel>, token: Secret, labels: Asked) -> (Value, Option<String>) {
    let field = |name: &str| labels.get(name).cloned().unwrap_or_default();
    let mut request = tonic::Request::new(DescribeTargetRequest {
        service: field("service"),
        cluster: field("cluster"),
        namespace: field("namespace"),
        labels: labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    });
    match format!("Bearer {}", token.expose()).parse() {
        Ok(value) => {
            request.metadata_mut().insert("authorization", value);
        }
        Err(_) => return (json!({}), Some("the target token is not a valid header value".into())),
    }
    // A client span in the incident's trace, and its context in the metadata, so the
    // pr-controller's work for this call joins the same trace.
    let span = selfheal_telemetry::rpc_span!(
        "policy.describe_target",
        "client",
        "selfheal.v1.Remediations",
        "DescribeTarget"
    );
    selfheal_telemetry::propagation::inject_metadata(&span, request.metadata_mut());
    match client.describe_target(request).instrument(span).await {
        Ok(response) => {
            let target = response.into_inner();
            (
                json!({
                    "repository": target.repository,
                    "path": target.path,
                    "kind": target.kind,
                    "current_tag": target.current_tag,
                    "earlier_tags": target.earlier_tags,
                    "replicas": target.replicas,
                    "max_replicas": target.max_replicas,
                }),
                None,
            )
        }
        Err(status) => {
            tracing::warn!(code = ?status.code(), error = %status.message(), "DescribeTarget failed; input.target is empty");
            (json!({}), Some(format!("DescribeTarget: {}", status.message())))
        }
    }
}
