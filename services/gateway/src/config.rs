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
    /// Address of the gRPC `selfheal.v1.Gateway` service.
    pub grpc_listen: SocketAddr,
    /// NATS server holding the SELFHEAL stream, or a cluster's servers separated by commas
    /// (`nats://a:4222,nats://b:4222`): the service starts while any of them is up.
    pub nats_url: String,
    /// Credentials and TLS for the NATS connection (`[nats]`: user and password, token, NKey
    /// seed file or `.creds` file; `tls_ca_file`, `tls_cert_file` and `tls_key_file`).
    pub nats: selfheal_bus::config::NatsConfig,
    /// Limits of the HTTP server (`[http]`: header and body timeouts, connections, requests in
    /// work).
    pub http: selfheal_runtime::http::HttpLimits,
    /// The gRPC server's certificate (`[grpc_tls]`: `cert_file`, `key_file`, and
    /// `client_ca_file` to ask clients for theirs). Unset: plaintext gRPC. Files are read again
    /// when they change.
    pub grpc_tls: selfheal_runtime::grpc_tls::ServerTlsConfig,
    /// Bearer token Alertmanager must send (`http_config.authorization.credentials`).
    pub token: Option<Secret>,
    /// A file of accepted tokens, one per line; several lines let tokens rotate without downtime.
    pub token_file: Option<PathBuf>,
    /// More gRPC tokens, each named and with its roles (`[[grpc_tokens]]`: `ingest` for
    /// `Ingest`, `read` for `GetIncident` and `ListIncidents`). The webhook's tokens (`token`,
    /// `token_file`) are accepted on gRPC too, with both roles.
    pub grpc_tokens: Vec<selfheal_config::NamedToken>,
    /// Key for HMAC-SHA256 signatures of the time and the body (`X-Selfheal-Timestamp: <unix
    /// seconds>`, `X-Selfheal-Signature: sha256=<hex of HMAC(key, "<timestamp>.<body>")>`); a
    /// valid signature within `signature_window` authenticates a request as a bearer token does.
    /// Unset: bearer tokens only.
    pub hmac_key: Option<Secret>,
    /// A file of accepted HMAC keys, one per line.
    pub hmac_key_file: Option<PathBuf>,
    /// How far a signed request's `X-Selfheal-Timestamp` may be from the gateway's clock.
    #[serde(with = "humantime_serde")]
    pub signature_window: Duration,
    /// Largest body accepted, in bytes; larger gets 413.
    pub max_body_bytes: usize,
    /// Most alerts one body may carry.
    pub max_alerts: usize,
    /// Most labels one alert may carry.
    pub max_labels: usize,
    /// Longest label value, in bytes.
    pub max_label_value_len: usize,
    /// Longest annotation value, in bytes: annotations are prose (a description, a runbook's
    /// summary), often longer than a label, so they have a limit of their own.
    pub max_annotation_value_len: usize,
    /// Most annotation bytes (names and values) one alert may carry: the alert travels inside
    /// the decision and the remediation event, which must fit a NATS message.
    pub max_annotations_bytes: usize,
    /// Longest `generatorURL`, `fingerprint`, `groupKey`, `externalURL` or `receiver`, in bytes.
    pub max_field_len: usize,
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
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            nats_url: "nats://127.0.0.1:4222".into(),
            nats: Default::default(),
            http: Default::default(),
            grpc_tls: Default::default(),
            token: None,
            token_file: None,
            grpc_tokens: Vec::new(),
            hmac_key: None,
            hmac_key_file: None,
            signature_window: Duration::from_secs(300),
            max_body_bytes: 1024 * 1024,
            max_alerts: 1000,
            max_labels: 64,
            max_label_value_len: 1024,
            max_annotation_value_len: 16 * 1024,
            max_annotations_bytes: 64 * 1024,
            max_field_len: 4096,
            publish_timeout: Duration::from_secs(5),
            duplicate_window: Duration::from_secs(120),
            incident_max_age: Duration::from_secs(30 * 24 * 3600),
            identity_labels: Vec::new(),
        }
    }
}

impl GatewayConfig {
    /// The accepted tokens: `token` and each line of `token_file`. A token or an HMAC key is
    /// required: every ingress is authenticated.
    pub fn tokens(&self) -> Result<Vec<Secret>, ConfigError> {
        let tokens = secrets(self.token.as_ref(), self.token_file.as_deref())?;
        if tokens.is_empty() && self.hmac_key.is_none() && self.hmac_key_file.is_none() {
            return Err(ConfigError::Invalid(
                "no bearer token: set SELFHEAL_GATEWAY_TOKEN or token_file; every ingress is authenticated".into(),
            ));
        }
        Ok(tokens)
    }

    /// Who may call the gRPC API: each `[[grpc_tokens]]` with its roles, and the webhook's
    /// tokens (named `webhook`) with `ingest` and `read`.
    pub fn grpc_tokens(&self) -> Result<selfheal_config::TokenCheck, ConfigError> {
        use selfheal_config::{Caller, Role, TokenCheck};
        let named = if self.grpc_tokens.is_empty() {
            TokenCheck::with(None, Vec::new())
        } else {
            TokenCheck::from_settings(None, None, &self.grpc_tokens, "SELFHEAL_GATEWAY_")?
        };
        let webhook = Caller {
            name: "webhook".into(),
            roles: vec![Role::Ingest, Role::Read],
            shared: false,
        };
        Ok(named.and(self.tokens()?.into_iter().map(|t| (webhook.clone(), t)).collect()))
    }

    /// The accepted HMAC keys: `hmac_key` and each line of `hmac_key_file`.
    pub fn hmac_keys(&self) -> Result<Vec<Secret>, ConfigError> {
        secrets(self.hmac_key.as_ref(), self.hmac_key_file.as_deref())
    }
}

/// `inline` (if set) and each non-empty line of `file`.
fn secrets(inline: Option<&Secret>, file: Option<&std::path::Path>) -> Result<Vec<Secret>, ConfigError> {
    let mut all: Vec<Secret> = inline.iter().filter(|s| !s.is_empty()).map(|s| (*s).clone()).collect();
    if let Some(file) = file {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError::SecretFile {
            path: file.display().to_string(),
            reason: e.kind().to_string(),
        })?;
        all.extend(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(Secret::new));
    }
    Ok(all)
}
