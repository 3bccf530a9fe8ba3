//! Where notifications go: a trait per channel, a generic JSON webhook, and the log.

use std::time::Duration;

use async_trait::async_trait;
use selfheal_config::Secret;
use serde::Serialize;

/// What people are told.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Notification {
    /// `decision` or `remediation`.
    pub kind: String,
    pub incident: String,
    pub service: String,
    pub alertname: String,
    pub action: String,
    /// The remediation state (`merged`, `opened`, `failed`) or the decision's approval.
    pub state: String,
    pub reason: String,
    pub repository: String,
    pub branch: String,
    pub commit: String,
    pub from: String,
    pub to: String,
    pub dry_run: bool,
    /// Verified remediations: seconds from the alert's start to its resolution.
    pub mttr_seconds: Option<f64>,
    pub trace_id: String,
    /// One line for people.
    pub text: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("notification not delivered: {0}")]
    Delivery(String),
}

/// One way of telling people.
#[async_trait]
pub trait Channel: Send + Sync + 'static {
    async fn send(&self, notification: &Notification) -> Result<(), ChannelError>;
}

/// POSTs the notification as JSON.
pub struct WebhookChannel {
    client: reqwest::Client,
    url: Secret,
}

impl WebhookChannel {
    pub fn new(url: Secret, timeout: Duration) -> Result<Self, ChannelError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("selfheal-notifier/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ChannelError::Delivery(e.without_url().to_string()))?;
        Ok(Self { client, url })
    }
}

#[async_trait]
impl Channel for WebhookChannel {
    async fn send(&self, notification: &Notification) -> Result<(), ChannelError> {
        let response = self
            .client
            .post(self.url.expose())
            .json(notification)
            .send()
            .await
            // The URL may hold a secret (Slack's do): never put it in an error.
            .map_err(|e| ChannelError::Delivery(e.without_url().to_string()))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(ChannelError::Delivery(format!(
                "webhook answered {}",
                response.status()
            )))
        }
    }
}

/// Writes notifications to the log (when no webhook is configured).
pub struct LogChannel;

#[async_trait]
impl Channel for LogChannel {
    async fn send(&self, notification: &Notification) -> Result<(), ChannelError> {
        tracing::info!(incident.key = %notification.incident, text = %notification.text, "notification");
        Ok(())
    }
}
