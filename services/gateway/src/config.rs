//! The gateway's settings. File: `--config FILE` (TOML); environment: `SELFHEAL_GATEWAY_*`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use selfheal_config::{ConfigError, Secret};
use serde::{Deserialize, Serialize};

/// Everything the gateway can be told.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Address of the HTTP server: the webhook, `/healthz`, `/readyz`, `/metrics`.
    pub listen: SocketAddr,
    /// NATS server holding the SELFHEAL stream.
    pub nats_url: String,
    /// Bearer token Alertmanager must send (`http_config.authorization.credentials`).
    pub token: Option<Secret>,
    /// A file of accepted tokens, one per line; several lines let tokens rotate without downtime.
    pub token_file: Option<PathBuf>,
    /// Largest body accepted, in bytes; larger gets 413.
    pub max_body_bytes: usize,
    /// Most alerts one body may carry.
    pub max_alerts: usize,
    /// Most labels one alert may carry.
    pub max_labels: usize,
    /// Longest label or annotation value, in bytes.
    pub max_label_value_len: usize,
    /// How long a publish may wait for JetStream before the request gets 503.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// How long the stream remembers message ids (set when the gateway creates the stream).
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// How long an incident is remembered after it was last written (the incidents bucket's max
    /// age): a repeat notification within it is recognised however late it comes.
    #[serde(with = "humantime_serde")]
    pub incident_max_age: Duration,
    /// Labels that make an alert's identity besides alertname, cluster, namespace and service.
    pub identity_labels: Vec<String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9099)),
            nats_url: "nats://127.0.0.1:4222".into(),
            token: None,
            token_file: None,
            max_body_bytes: 1024 * 1024,
            max_alerts: 1000,
            max_labels: 64,
            max_label_value_len: 1024,
            publish_timeout: Duration::from_secs(5),
            duplicate_window: Duration::from_secs(120),
            incident_max_age: Duration::from_secs(30 * 24 * 3600),
            identity_labels: Vec::new(),
        }
    }
}

impl GatewayConfig {
    /// The accepted tokens: `token` and each line of `token_file`. At least one is required.
    pub fn tokens(&self) -> Result<Vec<Secret>, ConfigError> {
        let mut tokens: Vec<Secret> = self.token.iter().filter(|t| !t.is_empty()).cloned().collect();
        if let Some(file) = &self.token_file {
            let text = std::fs::read_to_string(file).map_err(|e| ConfigError::SecretFile {
                path: file.display().to_string(),
                reason: e.kind().to_string(),
            })?;
            tokens.extend(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(Secret::new));
        }
        if tokens.is_empty() {
            return Err(ConfigError::Invalid(
                "no bearer token: set SELFHEAL_GATEWAY_TOKEN or token_file; every ingress is authenticated".into(),
            ));
        }
        Ok(tokens)
    }
}
