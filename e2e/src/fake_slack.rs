//! A local server that plays Slack for the approval scenario: it takes incoming-webhook
//! messages (`POST /services/T…/B…/…`) and answers to clicks (`POST /actions/<id>`, the
//! `response_url`s it hands out), serves `usergroups.users.list` for a bot token, and records
//! all of it. [`FakeSlack::click`] sends an interaction the way Slack documents it: a
//! `block_actions` payload as the form field `payload`, signed with `v0` over
//! `v0:<timestamp>:<body>` under the app's signing secret.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    routing::{get, post},
};
use serde_json::{Value, json};

/// The app's signing secret.
pub const SIGNING_SECRET: &str = "e2e-slack-signing-secret";
/// The bot token that may read user groups.
pub const BOT_TOKEN: &str = "xoxb-e2e-bot-token";

/// What the fake has seen.
#[derive(Default)]
pub struct Seen {
    /// Bodies posted to the incoming webhook, in order.
    pub messages: Vec<Value>,
    /// Bodies posted to each `response_url`, by its id.
    pub responses: BTreeMap<String, Vec<Value>>,
    /// `usergroups.users.list` calls, and how many came without the bot token.
    pub group_reads: usize,
    pub unauthorized: usize,
}

struct Inner {
    seen: Mutex<Seen>,
    groups: BTreeMap<String, Vec<String>>,
}

/// The running fake.
pub struct FakeSlack {
    pub base: String,
    inner: Arc<Inner>,
    client: reqwest::Client,
}

impl FakeSlack {
    /// Starts the fake; `groups` are the user groups (id → member ids).
    pub async fn start(groups: &[(&str, &[&str])]) -> anyhow::Result<Self> {
        let inner = Arc::new(Inner {
            seen: Mutex::default(),
            groups: groups
                .iter()
                .map(|(g, members)| (g.to_string(), members.iter().map(|m| m.to_string()).collect()))
                .collect(),
        });
        let app = Router::new()
            .route("/services/{*hook}", post(incoming))
            .route("/actions/{id}", post(respond))
            .route("/api/usergroups.users.list", get(users_list))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self {
            base,
            inner,
            client: reqwest::Client::new(),
        })
    }

    /// The incoming webhook's URL (its secret path as Slack's are).
    pub fn webhook_url(&self) -> String {
        format!("{}/services/T0E2E/B0E2E/Xsecretpart", self.base)
    }

    /// The Web API's base URL.
    pub fn api_url(&self) -> String {
        format!("{}/api", self.base)
    }

    pub fn with<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.inner.seen.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The first answer posted to `response_url` id `response`, waited for up to `timeout`.
    pub async fn response(&self, response: &str, timeout: std::time::Duration) -> anyhow::Result<Value> {
        crate::wait_for(timeout, &format!("an answer at response_url {response}"), || async {
            self.with(|seen| seen.responses.get(response).and_then(|r| r.first().cloned()))
        })
        .await
    }

    /// Sends a click on the button `action_id` (value `value`) by `user` to `endpoint`, signed
    /// under `secret` at `timestamp`; the answers to it go to `response_url` id `response`.
    #[allow(clippy::too_many_arguments)]
    pub async fn click(
        &self,
        endpoint: &str,
        secret: &str,
        timestamp: i64,
        action_id: &str,
        value: &str,
        (user_id, user_name): (&str, &str),
        response: &str,
    ) -> anyhow::Result<(u16, String)> {
        // As Slack sends it (the block_actions payload reference), trimmed of what no one reads.
        let payload = json!({
            "type": "block_actions",
            "user": {"id": user_id, "username": user_name, "name": user_name, "team_id": "T0E2E"},
            "api_app_id": "A0E2E",
            "token": "deprecated-verification-token",
            "container": {"type": "message", "message_ts": "1700000000.000100", "channel_id": "C0E2E", "is_ephemeral": false},
            "trigger_id": "1234567890.1234567890.abcdef",
            "team": {"id": "T0E2E", "domain": "acme"},
            "channel": {"id": "C0E2E", "name": "oncall"},
            "response_url": format!("{}/actions/{response}", self.base),
            "actions": [{
                "type": "button",
                "block_id": selfheal_config::slack::APPROVAL_BLOCK,
                "action_id": action_id,
                "text": {"type": "plain_text", "text": "Approve", "emoji": true},
                "value": value,
                "action_ts": "1700000001.000200",
            }],
        });
        let body = serde_urlencoded::to_string([("payload", payload.to_string())])?;
        let ts = timestamp.to_string();
        let response = self
            .client
            .post(endpoint)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-slack-request-timestamp", &ts)
            .header(
                "x-slack-signature",
                selfheal_config::slack::sign(secret.as_bytes(), &ts, body.as_bytes()),
            )
            .body(body)
            .send()
            .await?;
        Ok((response.status().as_u16(), response.text().await?))
    }
}

async fn incoming(State(inner): State<Arc<Inner>>, Json(body): Json<Value>) -> &'static str {
    inner.seen.lock().unwrap_or_else(|e| e.into_inner()).messages.push(body);
    "ok"
}

async fn respond(State(inner): State<Arc<Inner>>, Path(id): Path<String>, Json(body): Json<Value>) -> Json<Value> {
    let mut seen = inner.seen.lock().unwrap_or_else(|e| e.into_inner());
    seen.responses.entry(id).or_default().push(body);
    Json(json!({"ok": true}))
}

async fn users_list(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    let mut seen = inner.seen.lock().unwrap_or_else(|e| e.into_inner());
    seen.group_reads += 1;
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {BOT_TOKEN}"));
    // Slack answers 200 with `ok: false` for API errors.
    if !authorized {
        seen.unauthorized += 1;
        return (StatusCode::OK, Json(json!({"ok": false, "error": "invalid_auth"})));
    }
    match query.get("usergroup").and_then(|g| inner.groups.get(g)) {
        Some(users) => (StatusCode::OK, Json(json!({"ok": true, "users": users}))),
        None => (StatusCode::OK, Json(json!({"ok": false, "error": "no_such_subteam"}))),
    }
}
