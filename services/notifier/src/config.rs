//! The notifier's settings. File: `--config FILE` (TOML); environment: `SELFHEAL_NOTIFIER_*`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// The audit database when `database_url` is unset: SQLite in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://selfheal-audit.db";

use selfheal_config::{ConfigError, Secret};
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
    /// Named gRPC tokens, each with its roles (`read`: `Query`, `Stats`). The shared `grpc_token` may do
    /// everything.
    pub grpc_tokens: Vec<selfheal_config::NamedToken>,
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
    /// Audit database: `sqlite://PATH` (created if missing) or `postgres://…`; unset:
    /// [`DEFAULT_DATABASE_URL`]. A secret (a PostgreSQL URL carries a password): never logged.
    pub database_url: Option<Secret>,
    /// File holding the database URL. Unlike the other `*_file` settings it wins over
    /// `database_url`: shipped configurations set a SQLite URL for trying selfheal out, and the
    /// PostgreSQL URL a deployment mounts from a Secret must replace it, not lose to it.
    pub database_url_file: Option<PathBuf>,
    /// Where to POST JSON notifications; unset logs them instead. Treated as a secret (webhook
    /// URLs often carry one) and never logged.
    pub webhook_url: Option<Secret>,
    /// File holding `webhook_url` (used when `webhook_url` is unset).
    pub webhook_url_file: Option<PathBuf>,
    /// Key for HMAC-SHA256 signatures of webhook bodies: `X-Selfheal-Timestamp: <unix seconds>`
    /// and `X-Selfheal-Signature: sha256=<hex of HMAC("<timestamp>.<body>")>`.
    pub webhook_secret: Option<Secret>,
    /// File holding `webhook_secret` (used when `webhook_secret` is unset).
    pub webhook_secret_file: Option<PathBuf>,
    /// A Slack incoming webhook URL (a secret: never logged).
    pub slack_webhook_url: Option<Secret>,
    /// File holding `slack_webhook_url` (used when `slack_webhook_url` is unset).
    pub slack_webhook_url_file: Option<PathBuf>,
    /// Approve and Reject buttons on Slack messages of remediations waiting for approval. The
    /// Slack app's interactivity Request URL must be the pr-controller's `/slack/interactions`
    /// (its `[slack]` settings say who may click).
    pub slack_approval_buttons: bool,
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
            grpc_tokens: Vec::new(),
            nats_url: "nats://127.0.0.1:4222".into(),
            nats: Default::default(),
            http: Default::default(),
            grpc_tls: Default::default(),
            database_url: None,
            database_url_file: None,
            webhook_url: None,
            webhook_url_file: None,
            webhook_secret: None,
            webhook_secret_file: None,
            slack_webhook_url: None,
            slack_webhook_url_file: None,
            slack_approval_buttons: false,
            commit_url_template: None,
            routes: Vec::new(),
            retry_base: Duration::from_secs(2),
            ack_wait: Duration::from_secs(30),
            webhook_timeout: Duration::from_secs(10),
        }
    }
}

impl NotifierConfig {
    /// Reads every secret given as a file (`*_file`) into its setting (where the setting itself is
    /// unset; `database_url_file` wins over `database_url`) and fills in the default database; an
    /// unreadable or empty file is an error naming it.
    pub fn with_secret_files(mut self) -> Result<Self, ConfigError> {
        let from_file = Secret::inline_or_file(None, self.database_url_file.as_deref())?;
        self.database_url = Some(
            from_file
                .or_else(|| self.database_url.take().filter(|url| !url.is_empty()))
                .unwrap_or_else(|| Secret::new(DEFAULT_DATABASE_URL)),
        );
        self.webhook_url = Secret::inline_or_file(self.webhook_url.take(), self.webhook_url_file.as_deref())?;
        self.webhook_secret = Secret::inline_or_file(self.webhook_secret.take(), self.webhook_secret_file.as_deref())?;
        self.slack_webhook_url =
            Secret::inline_or_file(self.slack_webhook_url.take(), self.slack_webhook_url_file.as_deref())?;
        Ok(self)
    }

    /// The audit database's URL: `database_url`, else [`DEFAULT_DATABASE_URL`] (after
    /// [`Self::with_secret_files`], the file's).
    pub fn database_url(&self) -> Secret {
        self.database_url
            .clone()
            .filter(|url| !url.is_empty())
            .unwrap_or_else(|| Secret::new(DEFAULT_DATABASE_URL))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_come_from_files_inline_ones_win_but_the_database_file_wins() -> Result<(), ConfigError> {
        let dir = tempfile::tempdir().map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).map(|()| path)
        };
        let io = |e: std::io::Error| ConfigError::Invalid(e.to_string());
        let config = NotifierConfig {
            // As the Helm chart has it: a SQLite URL in the config, PostgreSQL's from a Secret.
            database_url: Some(Secret::new("sqlite:///data/audit.db?mode=rwc")),
            database_url_file: Some(write("db", "postgres://audit:hunter2@db/audit\n").map_err(io)?),
            webhook_url: Some(Secret::new("https://inline.example/hook")),
            webhook_url_file: Some(write("hook", "https://file.example/hook").map_err(io)?),
            slack_webhook_url_file: Some(write("slack", "https://hooks.slack.example/T/B/x").map_err(io)?),
            ..Default::default()
        }
        .with_secret_files()?;
        assert_eq!(config.database_url().expose(), "postgres://audit:hunter2@db/audit");
        assert_eq!(
            config.webhook_url.as_ref().map(Secret::expose),
            Some("https://inline.example/hook")
        );
        assert_eq!(
            config.slack_webhook_url.as_ref().map(Secret::expose),
            Some("https://hooks.slack.example/T/B/x")
        );
        assert!(config.webhook_secret.is_none());
        assert!(
            !format!("{config:?}").contains("hunter2"),
            "a config dump shows no secret"
        );

        assert_eq!(
            NotifierConfig::default().with_secret_files()?.database_url().expose(),
            DEFAULT_DATABASE_URL
        );

        let missing = NotifierConfig {
            webhook_secret_file: Some(dir.path().join("nope")),
            ..Default::default()
        }
        .with_secret_files()
        .expect_err("a missing file");
        assert!(missing.to_string().contains("nope"), "{missing}");
        Ok(())
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
