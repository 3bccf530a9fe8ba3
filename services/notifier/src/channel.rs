//! Where notifications go: a trait per channel, a generic JSON webhook, and the log.

use std::time::Duration;

use async_trait::async_trait;
use selfheal_config::Secret;
use serde::Serialize;

/// What people are told.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Notification {
    /// `decision` or `remediation`.
    pub kind: String,
    pub incident: String,
    pub service: String,
    pub alertname: String,
    /// The alert's `severity` label (for routing).
    pub severity: String,
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
    /// A stable name (`webhook`, `slack`, `log`): what was sent where is recorded under it.
    fn name(&self) -> &str;
    async fn send(&self, notification: &Notification) -> Result<(), ChannelError>;
}

/// A channel and the notifications it gets.
#[derive(Clone)]
pub struct Route {
    pub channel: std::sync::Arc<dyn Channel>,
    /// Only these severities (all when empty).
    pub severities: Vec<String>,
    /// Only these services (all when empty).
    pub services: Vec<String>,
}

impl Route {
    /// Whether `notification` goes this way.
    pub fn matches(&self, notification: &Notification) -> bool {
        (self.severities.is_empty() || self.severities.contains(&notification.severity))
            && (self.services.is_empty() || self.services.contains(&notification.service))
    }
}

fn client(timeout: Duration) -> Result<reqwest::Client, ChannelError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("selfheal-notifier/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ChannelError::Delivery(e.without_url().to_string()))
}

async fn post(
    client: &reqwest::Client,
    url: &Secret,
    body: Vec<u8>,
    signature: Option<(String, String)>,
) -> Result<(), ChannelError> {
    let mut request = client
        .post(url.expose())
        .headers(selfheal_telemetry::propagation::http_headers(&tracing::Span::current()))
        .header("content-type", "application/json")
        .body(body);
    if let Some((timestamp, signature)) = signature {
        request = request
            .header(selfheal_config::signature::TIMESTAMP_HEADER, timestamp)
            .header(selfheal_config::signature::HEADER, signature);
    }
    // The URL may hold a secret (Slack's do): never put it in an error.
    let response = request
        .send()
        .await
        .map_err(|e| ChannelError::Delivery(e.without_url().to_string()))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(ChannelError::Delivery(format!("answered {}", response.status())))
    }
}

/// A Slack incoming webhook, with Block Kit: what happened, the reason, where the change is,
/// the trace id, and the MTTR once verified.
pub struct SlackChannel {
    client: reqwest::Client,
    url: Secret,
    /// `https://github.com/acme/gitops/commit/{commit}`: makes the commit a link.
    commit_url: Option<String>,
    /// Whether a remediation waiting for approval gets Approve and Reject buttons.
    buttons: bool,
}

impl SlackChannel {
    pub fn new(url: Secret, commit_url: Option<String>, timeout: Duration) -> Result<Self, ChannelError> {
        Ok(Self {
            client: client(timeout)?,
            url,
            commit_url,
            buttons: false,
        })
    }

    /// Approve and Reject buttons on remediations waiting for approval (the Slack app's
    /// interactivity must point at the pr-controller's `/slack/interactions`).
    pub fn with_buttons(mut self, buttons: bool) -> Self {
        self.buttons = buttons;
        self
    }
}

/// The Block Kit message for `n`; `commit_url` (with `{commit}`) links the change.
pub fn block_kit(n: &Notification, commit_url: Option<&str>) -> serde_json::Value {
    let icon = match n.state.as_str() {
        "verified" => "✅",
        "merged" | "opened" => "🔧",
        "failed" | "escalated" => "🚨",
        _ => "ℹ️",
    };
    // The header is plain text; everything else is mrkdwn, where alert text must not become a
    // mention (`<!channel>`) or a link (`<https://…|Approve>`).
    let title: String = format!("{icon} {} on {}: {} {}", n.alertname, n.service, n.action, n.state)
        .chars()
        .take(150)
        .collect();
    let m = mrkdwn;
    let mut fields = vec![
        serde_json::json!({"type": "mrkdwn", "text": format!("*Service*\n{}", m(&n.service))}),
        serde_json::json!({"type": "mrkdwn", "text": format!("*Action*\n{} ({})", m(&n.action), m(&n.state))}),
    ];
    if !n.from.is_empty() || !n.to.is_empty() {
        fields.push(
            serde_json::json!({"type": "mrkdwn", "text": format!("*Change*\n`{}` → `{}`", m(&n.from), m(&n.to))}),
        );
    }
    if let Some(mttr) = n.mttr_seconds {
        fields.push(serde_json::json!({"type": "mrkdwn", "text": format!("*MTTR*\n{mttr:.0}s")}));
    }
    let mut context = vec![
        serde_json::json!({"type": "mrkdwn", "text": format!("incident `{}` · trace `{}`", m(&n.incident), m(&n.trace_id))}),
    ];
    if !n.commit.is_empty() {
        let short = m(&n.commit.chars().take(12).collect::<String>());
        let commit = match commit_url {
            // The template is the operator's; the commit id in it is escaped like the rest.
            Some(template) => format!("<{}|{short}>", template.replace("{commit}", &m(&n.commit))),
            None => format!("`{short}`"),
        };
        context.push(serde_json::json!({"type": "mrkdwn", "text": format!("commit {commit} on `{}`", m(&n.branch))}));
    }
    let reason: String = m(&n.reason).chars().take(2900).collect();
    serde_json::json!({
        "text": m(&n.text),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": title}},
            {"type": "section", "text": {"type": "mrkdwn", "text": reason}, "fields": fields},
            {"type": "context", "elements": context},
        ],
    })
}

pub use selfheal_config::slack::mrkdwn;

/// Approve and Reject buttons for a remediation waiting for approval (Block Kit `actions`): a
/// click goes to the Slack app's interactivity endpoint, which the pr-controller serves; each
/// button's value is the incident key. Approve asks for a confirmation first.
pub fn approval_buttons(n: &Notification) -> serde_json::Value {
    use selfheal_config::slack::{APPROVAL_BLOCK, APPROVE_ACTION, REJECT_ACTION};
    let change: String = format!("{} {} on {}: {} → {}", n.action, n.service, n.branch, n.from, n.to)
        .chars()
        .take(280)
        .collect();
    serde_json::json!({
        "type": "actions",
        "block_id": APPROVAL_BLOCK,
        "elements": [
            {
                "type": "button",
                "action_id": APPROVE_ACTION,
                "text": {"type": "plain_text", "text": "Approve"},
                "style": "primary",
                "value": n.incident,
                "confirm": {
                    "title": {"type": "plain_text", "text": "Merge this change?"},
                    "text": {"type": "plain_text", "text": change},
                    "confirm": {"type": "plain_text", "text": "Approve"},
                    "deny": {"type": "plain_text", "text": "Cancel"},
                },
            },
            {
                "type": "button",
                "action_id": REJECT_ACTION,
                "text": {"type": "plain_text", "text": "Reject"},
                "style": "danger",
                "value": n.incident,
            },
        ],
    })
}

/// Whether `n` is a remediation waiting for a person's approval.
pub fn waits_for_approval(n: &Notification) -> bool {
    n.kind == "remediation" && n.state == "opened" && !n.dry_run
}

#[async_trait]
impl Channel for SlackChannel {
    fn name(&self) -> &str {
        "slack"
    }
    async fn send(&self, notification: &Notification) -> Result<(), ChannelError> {
        let mut message = block_kit(notification, self.commit_url.as_deref());
        if self.buttons
            && waits_for_approval(notification)
            && let Some(blocks) = message["blocks"].as_array_mut()
        {
            blocks.push(approval_buttons(notification));
        }
        let body = serde_json::to_vec(&message).map_err(|e| ChannelError::Delivery(e.to_string()))?;
        post(&self.client, &self.url, body, None).await
    }
}

/// POSTs the notification as JSON, signed when a secret is configured as the gateway checks its
/// own webhook: `X-Selfheal-Timestamp: <unix seconds>` and `X-Selfheal-Signature: sha256=<hex of
/// HMAC-SHA256(secret, "<timestamp>.<body>")>`. A receiver verifies both and refuses a timestamp
/// far from its clock, so a captured body cannot be sent again later. Each try is signed anew.
pub struct WebhookChannel {
    client: reqwest::Client,
    url: Secret,
    secret: Option<Secret>,
}

impl WebhookChannel {
    pub fn new(url: Secret, secret: Option<Secret>, timeout: Duration) -> Result<Self, ChannelError> {
        Ok(Self {
            client: client(timeout)?,
            url,
            secret,
        })
    }
}

#[async_trait]
impl Channel for WebhookChannel {
    fn name(&self) -> &str {
        "webhook"
    }
    async fn send(&self, notification: &Notification) -> Result<(), ChannelError> {
        let body = serde_json::to_vec(notification).map_err(|e| ChannelError::Delivery(e.to_string()))?;
        let signature = self.secret.as_ref().map(|key| {
            selfheal_config::signature::sign_at(key.expose().as_bytes(), chrono::Utc::now().timestamp(), &body)
        });
        post(&self.client, &self.url, body, signature).await
    }
}

/// Writes notifications to the log (when no webhook is configured).
pub struct LogChannel;

#[async_trait]
impl Channel for LogChannel {
    fn name(&self) -> &str {
        "log"
    }
    async fn send(&self, notification: &Notification) -> Result<(), ChannelError> {
        tracing::info!(incident.key = %notification.incident, text = %notification.text, "notification");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_text_cannot_ping_or_link_in_slack() {
        let hostile = "<!channel> <https://evil.example|Approve> & <@U123>";
        let n = Notification {
            kind: "decision".into(),
            incident: "abc".into(),
            service: "checkout".into(),
            alertname: hostile.into(),
            action: "escalate".into(),
            state: "required".into(),
            reason: format!("{hostile} on checkout"),
            commit: "0123456789abcdef".into(),
            branch: "main".into(),
            from: "<v1>".into(),
            to: "v2".into(),
            text: format!("{hostile} needs a person"),
            ..Default::default()
        };
        let message = block_kit(&n, Some("https://git.example/c/{commit}"));
        // Everything Slack reads as mrkdwn: the fallback text and every mrkdwn object. (The
        // header is plain_text, which Slack shows as it is: no mention, no link.)
        let mut mrkdwn = vec![message["text"].as_str().unwrap_or_default().to_string()];
        fn collect(value: &serde_json::Value, out: &mut Vec<String>) {
            match value {
                serde_json::Value::Object(map) => {
                    if map.get("type").and_then(|t| t.as_str()) == Some("mrkdwn") {
                        out.push(map.get("text").and_then(|t| t.as_str()).unwrap_or_default().to_string());
                    }
                    map.values().for_each(|v| collect(v, out));
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
                _ => {}
            }
        }
        collect(&message["blocks"], &mut mrkdwn);
        assert!(mrkdwn.len() >= 5, "{mrkdwn:?}");
        let all = mrkdwn.join("\n");
        for live in ["<!channel>", "<https://evil", "<@U123>", "<v1>"] {
            assert!(!all.contains(live), "{live} reaches Slack live: {all}");
        }
        assert!(
            all.contains("&lt;!channel&gt; &lt;https://evil.example|Approve&gt; &amp; &lt;@U123&gt;"),
            "{all}"
        );
        assert_eq!(message["blocks"][0]["text"]["type"], "plain_text");
        // selfheal's own link still works.
        assert!(
            all.contains("<https://git.example/c/0123456789abcdef|0123456789ab>"),
            "{all}"
        );
    }

    #[test]
    fn only_a_remediation_waiting_for_approval_gets_buttons_with_its_incident() {
        let mut n = Notification {
            kind: "remediation".into(),
            incident: "a1b2".into(),
            state: "opened".into(),
            ..Default::default()
        };
        assert!(waits_for_approval(&n));
        let buttons = approval_buttons(&n);
        let elements = buttons["elements"].as_array().cloned().unwrap_or_default();
        let ids: Vec<_> = elements
            .iter()
            .map(|e| (e["action_id"].clone(), e["value"].clone()))
            .collect();
        assert_eq!(
            ids,
            vec![
                (selfheal_config::slack::APPROVE_ACTION.into(), "a1b2".into()),
                (selfheal_config::slack::REJECT_ACTION.into(), "a1b2".into())
            ]
        );
        for (state, dry_run) in [("merged", false), ("opened", true)] {
            n.state = state.into();
            n.dry_run = dry_run;
            assert!(!waits_for_approval(&n), "{state} {dry_run}");
        }
    }
}
