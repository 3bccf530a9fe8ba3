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
    /// NATS server holding the SELFHEAL stream.
    pub nats_url: String,
    /// Audit database: `sqlite://PATH` (created if missing).
    pub database_url: String,
    /// Where to POST JSON notifications; unset logs them instead. Treated as a secret (webhook
    /// URLs often carry one) and never logged.
    pub webhook_url: Option<Secret>,
    /// How long one webhook POST may take.
    #[serde(with = "humantime_serde")]
    pub webhook_timeout: Duration,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9103)),
            nats_url: "nats://127.0.0.1:4222".into(),
            database_url: "sqlite://selfheal-audit.db".into(),
            webhook_url: None,
            webhook_timeout: Duration::from_secs(10),
        }
    }
}
