//! The notifier's settings. File: `--config FILE` (TOML); environment: `SELFHEAL_NOTIFIER_*`.

use std::{net::SocketAddr, time::Duration};

use selfheal_config::Secret;
use serde::{Deserialize, Serialize};

/// Everything the notifier can be told.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifierConfig {
    /// Address of `/healthz`, `/readyz`, `/metrics`.
    pub listen: SocketAddr,
    /// Address of the gRPC `selfheal.v1.Audit` service.
    pub grpc_listen: SocketAddr,
    /// Token gRPC callers must send as `authorization: Bearer <token>`.
    pub grpc_token: Option<Secret>,
    /// File holding the gRPC token (used when `grpc_token` is unset).
    pub grpc_token_file: Option<std::path::PathBuf>,
    /// NATS server holding the SELFHEAL stream.
    pub nats_url: String,
    /// Audit database: `sqlite://PATH` (created if missing).
    pub database_url: String,
    /// Where to POST JSON notifications; unset logs them instead. Treated as a secret (webhook
    /// URLs often carry one) and never logged.
    pub webhook_url: Option<Secret>,
    /// Key for HMAC-SHA256 signatures of webhook bodies (`X-Selfheal-Signature: sha256=<hex>`).
    pub webhook_secret: Option<Secret>,
    /// A Slack incoming webhook URL (a secret: never logged).
    pub slack_webhook_url: Option<Secret>,
    /// A link to a commit, with `{commit}` for its id (`https://github.com/acme/gitops/commit/{commit}`).
    pub commit_url_template: Option<String>,
    /// Which channel gets which notifications; empty: every configured channel gets all.
    pub routes: Vec<RouteConfig>,
    /// First retry delay of a failed notification; it doubles per attempt, up to a minute.
    #[serde(with = "humantime_serde")]
    pub retry_base: Duration,
    /// How long an event may be in work before JetStream delivers it again (after a crash, the
    /// event comes back this long after it was taken).
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// How long one webhook POST may take.
    #[serde(with = "humantime_serde")]
    pub webhook_timeout: Duration,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9103)),
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 50054)),
            grpc_token: None,
            grpc_token_file: None,
            nats_url: "nats://127.0.0.1:4222".into(),
            database_url: "sqlite://selfheal-audit.db".into(),
            webhook_url: None,
            webhook_secret: None,
            slack_webhook_url: None,
            commit_url_template: None,
            routes: Vec::new(),
            retry_base: Duration::from_secs(2),
            ack_wait: Duration::from_secs(30),
            webhook_timeout: Duration::from_secs(10),
        }
    }
}

/// One route: a channel (`webhook`, `slack` or `log`) and the notifications it gets.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteConfig {
    pub channel: String,
    /// Only alerts with these `severity` labels (all when empty).
    pub severities: Vec<String>,
    /// Only these services (all when empty).
    pub services: Vec<String>,
}
