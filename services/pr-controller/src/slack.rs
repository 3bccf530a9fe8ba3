//! Slack's interactivity endpoint: `POST /slack/interactions`, where a click on a waiting
//! remediation's Approve or Reject button (posted by the notifier) arrives.
//!
//! A request is taken only with Slack's signature (`v0`, over `v0:<timestamp>:<body>` under the
//! app's signing secret) and a timestamp within 5 minutes. It is answered at once — Slack wants
//! an answer within 3 s, and a merge through a forge may take longer — and the click is carried
//! out after: the clicking user must be on the allow-list (`allowed_users`, or a member of one of
//! `allowed_groups`, asked of Slack's `usergroups.users.list` and kept for `group_cache`); then
//! the remediation is approved or rejected exactly as the gRPC `Approve` and `Reject` do, with the
//! Slack user as the one who acted (so the audit row names them), and the message is replaced,
//! through the click's `response_url`, by what was decided, by whom, and what came of it. A user
//! not allowed, or a remediation no longer waiting, gets a message only they see.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use selfheal_config::{
    Secret,
    slack::{self, APPROVE_ACTION, REJECT_ACTION, mrkdwn},
};
use selfheal_proto::{IncidentKey, names, v1::RemediationEvent};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Where Slack sends clicks.
pub const PATH: &str = "/slack/interactions";

/// The most a request's body may hold (a click carries the message it was on).
const MAX_BODY: usize = 256 * 1024;

/// `[slack]`: approving and rejecting from Slack. Off unless a signing secret is set.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlackConfig {
    /// The Slack app's signing secret ("Basic Information" → "App Credentials").
    pub signing_secret: Option<Secret>,
    /// File holding the signing secret (used when `signing_secret` is unset).
    pub signing_secret_file: Option<PathBuf>,
    /// Slack user ids (`U0123ABCD`) who may approve and reject.
    pub allowed_users: Vec<String>,
    /// Slack user group ids (`S0123ABCD`) whose members may approve and reject (needs
    /// `bot_token`, with the `usergroups:read` scope).
    pub allowed_groups: Vec<String>,
    /// A bot token (`xoxb-…`) to read the groups' members.
    pub bot_token: Option<Secret>,
    /// File holding the bot token (used when `bot_token` is unset).
    pub bot_token_file: Option<PathBuf>,
    /// Slack's Web API.
    pub api_url: String,
    /// How long a group's members are taken as read.
    #[serde(with = "humantime_serde")]
    pub group_cache: Duration,
    /// How long one call to Slack (the Web API, a `response_url`) may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for SlackConfig {
    fn default() -> Self {
        Self {
            signing_secret: None,
            signing_secret_file: None,
            allowed_users: Vec::new(),
            allowed_groups: Vec::new(),
            bot_token: None,
            bot_token_file: None,
            api_url: "https://slack.com/api".into(),
            group_cache: Duration::from_secs(60),
            timeout: Duration::from_secs(5),
        }
    }
}

/// A `[slack]` setting that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("slack.{field}: {problem}")]
pub struct SlackConfigError {
    pub field: &'static str,
    pub problem: String,
}

fn invalid(field: &'static str, problem: impl Into<String>) -> SlackConfigError {
    SlackConfigError {
        field,
        problem: problem.into(),
    }
}

/// `[slack]`, checked: the secrets read, the ids well formed, someone allowed.
#[derive(Clone)]
pub struct CheckedSlack {
    signing_secret: Secret,
    allowed_users: Vec<String>,
    allowed_groups: Vec<String>,
    bot_token: Option<Secret>,
    api_url: url::Url,
    group_cache: Duration,
    timeout: Duration,
}

impl SlackConfig {
    /// The checked settings; `None` when no signing secret is set (the endpoint is not served).
    pub fn check(&self) -> Result<Option<CheckedSlack>, SlackConfigError> {
        let read = |inline: &Option<Secret>, file: &Option<PathBuf>, field| {
            Secret::inline_or_file(inline.clone(), file.as_deref()).map_err(|e| invalid(field, e.to_string()))
        };
        let Some(signing_secret) = read(&self.signing_secret, &self.signing_secret_file, "signing_secret_file")? else {
            if !self.allowed_users.is_empty() || !self.allowed_groups.is_empty() {
                return Err(invalid(
                    "signing_secret",
                    "is required with allowed_users or allowed_groups (Slack's requests are checked with it)",
                ));
            }
            return Ok(None);
        };
        if self.allowed_users.is_empty() && self.allowed_groups.is_empty() {
            return Err(invalid(
                "allowed_users",
                "name at least one user id or set allowed_groups: nobody could approve",
            ));
        }
        for (field, ids) in [
            ("allowed_users", &self.allowed_users),
            ("allowed_groups", &self.allowed_groups),
        ] {
            if let Some(bad) = ids.iter().find(|id| !slack::is_id(id)) {
                return Err(invalid(
                    field,
                    format!(
                        "{:?} is not a Slack id (upper-case letters and digits, like U0123ABCD)",
                        bad.chars().take(40).collect::<String>()
                    ),
                ));
            }
        }
        let bot_token = read(&self.bot_token, &self.bot_token_file, "bot_token_file")?;
        if !self.allowed_groups.is_empty() && bot_token.is_none() {
            return Err(invalid(
                "bot_token",
                "is required with allowed_groups (their members are read from Slack with it)",
            ));
        }
        let mut api_url = url::Url::parse(&self.api_url).map_err(|e| invalid("api_url", e.to_string()))?;
        if !matches!(api_url.scheme(), "https" | "http") {
            return Err(invalid("api_url", "must be an http(s) URL"));
        }
        if !api_url.path().ends_with('/') {
            api_url.set_path(&format!("{}/", api_url.path()));
        }
        Ok(Some(CheckedSlack {
            signing_secret,
            allowed_users: self.allowed_users.clone(),
            allowed_groups: self.allowed_groups.clone(),
            bot_token,
            api_url,
            group_cache: self.group_cache,
            timeout: self.timeout,
        }))
    }
}

/// What went wrong talking to Slack.
#[derive(Debug, thiserror::Error)]
pub enum SlackError {
    #[error("Slack could not be reached: {0}")]
    Unreachable(String),
    #[error("Slack answered {0}")]
    Refused(String),
}

/// Who is in a Slack user group.
#[async_trait]
pub trait Directory: Send + Sync + 'static {
    async fn members(&self, group: &str) -> Result<Vec<String>, SlackError>;
}

/// Where the answer to a click goes: its `response_url`.
#[async_trait]
pub trait Responder: Send + Sync + 'static {
    async fn respond(&self, response_url: &url::Url, message: &serde_json::Value) -> Result<(), SlackError>;
}

/// What a click does: the pr-controller's `Approve` and `Reject`.
#[async_trait]
pub trait Operator: Send + Sync + 'static {
    async fn approve(&self, incident: &str, by: &str) -> Result<RemediationEvent, tonic::Status>;
    async fn reject(&self, incident: &str, by: &str, reason: &str) -> Result<RemediationEvent, tonic::Status>;
}

#[async_trait]
impl Operator for crate::grpc::RemediationsService {
    async fn approve(&self, incident: &str, by: &str) -> Result<RemediationEvent, tonic::Status> {
        self.approve_as(incident, by).await
    }
    async fn reject(&self, incident: &str, by: &str, reason: &str) -> Result<RemediationEvent, tonic::Status> {
        self.reject_as(incident, by, reason).await
    }
}

/// Slack's Web API and `response_url`s, over HTTPS.
pub struct SlackApi {
    client: reqwest::Client,
    api_url: url::Url,
    bot_token: Option<Secret>,
}

impl SlackApi {
    pub fn new(settings: &CheckedSlack) -> Result<Self, SlackError> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .user_agent(concat!("selfheal-pr-controller/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SlackError::Unreachable(e.without_url().to_string()))?;
        Ok(Self {
            client,
            api_url: settings.api_url.clone(),
            bot_token: settings.bot_token.clone(),
        })
    }
}

#[derive(Deserialize)]
struct UsersList {
    ok: bool,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    error: String,
}

#[async_trait]
impl Directory for SlackApi {
    async fn members(&self, group: &str) -> Result<Vec<String>, SlackError> {
        let token = self
            .bot_token
            .as_ref()
            .ok_or_else(|| SlackError::Refused("no bot token to read user groups with".into()))?;
        let url = self
            .api_url
            .join("usergroups.users.list")
            .map_err(|e| SlackError::Unreachable(e.to_string()))?;
        let response = self
            .client
            .get(url)
            .query(&[("usergroup", group)])
            .bearer_auth(token.expose())
            .send()
            .await
            .map_err(|e| SlackError::Unreachable(e.without_url().to_string()))?;
        if !response.status().is_success() {
            return Err(SlackError::Refused(response.status().to_string()));
        }
        let list: UsersList = response
            .json()
            .await
            .map_err(|e| SlackError::Refused(format!("an unreadable usergroups.users.list: {}", e.without_url())))?;
        if list.ok {
            Ok(list.users)
        } else {
            Err(SlackError::Refused(format!("usergroups.users.list: {}", list.error)))
        }
    }
}

#[async_trait]
impl Responder for SlackApi {
    async fn respond(&self, response_url: &url::Url, message: &serde_json::Value) -> Result<(), SlackError> {
        let response = self
            .client
            .post(response_url.clone())
            .json(message)
            .send()
            .await
            // The URL is a capability: never in an error.
            .map_err(|e| SlackError::Unreachable(e.without_url().to_string()))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(SlackError::Refused(response.status().to_string()))
        }
    }
}

/// The endpoint's state.
pub struct Interactions {
    settings: CheckedSlack,
    directory: Arc<dyn Directory>,
    responder: Arc<dyn Responder>,
    operator: Arc<dyn Operator>,
    groups: Mutex<HashMap<String, (Instant, Vec<String>)>>,
    /// Clicks carried out in the background (for a test to wait on).
    work: tokio_util::task::TaskTracker,
}

impl Interactions {
    pub fn new(
        settings: CheckedSlack,
        directory: Arc<dyn Directory>,
        responder: Arc<dyn Responder>,
        operator: Arc<dyn Operator>,
    ) -> Self {
        Self {
            settings,
            directory,
            responder,
            operator,
            groups: Mutex::new(HashMap::new()),
            work: Default::default(),
        }
    }

    /// The router serving [`PATH`].
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route(PATH, post(interact))
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .with_state(self)
    }

    /// Waits until every click taken so far is carried out.
    pub async fn settled(&self) {
        self.work.close();
        self.work.wait().await;
        self.work.reopen();
    }

    /// Whether `user` may approve: listed, or in a listed group. A group that cannot be read
    /// allows nobody through it (and says why).
    async fn allowed(&self, user: &str) -> Result<bool, SlackError> {
        if self.settings.allowed_users.iter().any(|u| u == user) {
            return Ok(true);
        }
        let mut unreadable = None;
        for group in &self.settings.allowed_groups {
            let cached = self
                .groups
                .lock()
                .ok()
                .and_then(|groups| groups.get(group).cloned())
                .filter(|(at, _)| at.elapsed() < self.settings.group_cache)
                .map(|(_, members)| members);
            let members = match cached {
                Some(members) => members,
                None => match self.directory.members(group).await {
                    Ok(members) => {
                        if let Ok(mut groups) = self.groups.lock() {
                            groups.insert(group.clone(), (Instant::now(), members.clone()));
                        }
                        members
                    }
                    Err(error) => {
                        tracing::warn!(slack.group = %group, error = %error, "user group not read");
                        unreadable = Some(error);
                        continue;
                    }
                },
            };
            if members.iter().any(|m| m == user) {
                return Ok(true);
            }
        }
        match unreadable {
            Some(error) => Err(error),
            None => Ok(false),
        }
    }

    /// Carries one click out and tells Slack what came of it.
    async fn act(&self, click: Click) {
        let verb = if click.approve { "approve" } else { "reject" };
        let outcome = match self.allowed(&click.user_id).await {
            Ok(true) => None,
            Ok(false) => Some(format!(
                "You are not on selfheal's list of approvers, so remediation `{}` was not {verb}d. Ask your platform team to add your Slack user ({}) to `[slack] allowed_users`.",
                click.incident, click.user_id
            )),
            Err(error) => Some(format!(
                "selfheal could not check whether you may {verb} ({}), so nothing was done: try again.",
                mrkdwn(&error.to_string())
            )),
        };
        if let Some(text) = outcome {
            metrics::counter!("selfheal_slack_interactions_total", "result" => "refused").increment(1);
            tracing::warn!(slack.user = %click.user_id, incident.key = %click.incident, "slack user not allowed to {verb}");
            self.tell(&click, &ephemeral(&text)).await;
            return;
        }
        let by = click.by();
        let done = if click.approve {
            self.operator.approve(&click.incident, &by).await
        } else {
            self.operator.reject(&click.incident, &by, "rejected in Slack").await
        };
        let message = match done {
            Ok(event) => {
                metrics::counter!("selfheal_slack_interactions_total", "result" => verb).increment(1);
                decided(&event, &click)
            }
            Err(status) => {
                metrics::counter!("selfheal_slack_interactions_total", "result" => "failed").increment(1);
                tracing::warn!(incident.key = %click.incident, error = %status.message(), "slack {verb} not carried out");
                ephemeral(&format!(
                    "Could not {verb} remediation `{}`: {}",
                    click.incident,
                    mrkdwn(status.message())
                ))
            }
        };
        self.tell(&click, &message).await;
    }

    async fn tell(&self, click: &Click, message: &serde_json::Value) {
        if let Err(error) = self.responder.respond(&click.response_url, message).await {
            tracing::warn!(incident.key = %click.incident, error = %error, "slack message not updated");
        }
    }
}

/// A click, read from Slack's request.
struct Click {
    approve: bool,
    incident: String,
    user_id: String,
    user_name: String,
    response_url: url::Url,
}

impl Click {
    /// Who acted, as the remediation's record names them.
    fn by(&self) -> String {
        match self.user_name.as_str() {
            "" => format!("Slack user {}", self.user_id),
            name => format!("@{name} (Slack {})", self.user_id),
        }
    }
}

/// A message only the clicking user sees; the original stays as it is.
fn ephemeral(text: &str) -> serde_json::Value {
    json!({"response_type": "ephemeral", "replace_original": false, "text": text})
}

/// The message that replaces the buttons: what was decided, by whom, and what came of it.
fn decided(event: &RemediationEvent, click: &Click) -> serde_json::Value {
    let alertname = event
        .decision
        .as_ref()
        .and_then(|d| d.alert.as_ref())
        .and_then(|a| a.alert.as_ref())
        .and_then(|a| a.labels.get("alertname"))
        .cloned()
        .unwrap_or_default();
    let (icon, verb) = if click.approve {
        ("✅", "Approved")
    } else {
        ("🛑", "Rejected")
    };
    let state = names::state(event.state());
    let title: String = format!(
        "{icon} {alertname} on {}: {} {state}",
        event.service,
        names::action(event.action())
    )
    .chars()
    .take(150)
    .collect();
    let mut outcome = format!(
        "*{verb} by <@{}>*: {} `{}` → `{}` is {state}",
        click.user_id,
        mrkdwn(names::action(event.action())),
        mrkdwn(&event.from_value),
        mrkdwn(&event.to_value)
    );
    if !event.commit.is_empty() {
        outcome.push_str(&format!(
            " (commit `{}`)",
            mrkdwn(&event.commit.chars().take(12).collect::<String>())
        ));
    }
    outcome.push('.');
    let message: String = mrkdwn(&event.message).chars().take(2900).collect();
    json!({
        "replace_original": true,
        "text": format!("{verb} by <@{}>: {} {} {state}", click.user_id, mrkdwn(&event.service), mrkdwn(names::action(event.action()))),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": title}},
            {"type": "section", "text": {"type": "mrkdwn", "text": outcome}},
            {"type": "context", "elements": [
                {"type": "mrkdwn", "text": format!("incident `{}` · {message}", mrkdwn(&event.incident_key))},
            ]},
        ],
    })
}

/// Why a request is refused: its status and a JSON body naming the field and the problem.
fn refuse(status: StatusCode, error: impl std::fmt::Display) -> Response {
    metrics::counter!("selfheal_slack_interactions_total", "result" => if status == StatusCode::UNAUTHORIZED { "unsigned" } else { "invalid" }).increment(1);
    (status, Json(json!({"error": error.to_string()}))).into_response()
}

#[derive(Deserialize)]
struct Payload {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    user: User,
    #[serde(default)]
    response_url: String,
    #[serde(default)]
    actions: Vec<Action>,
}

#[derive(Default, Deserialize)]
struct User {
    #[serde(default)]
    id: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
struct Action {
    #[serde(default)]
    action_id: String,
    #[serde(default)]
    value: String,
}

/// Reads a signed request's click; `Ok(None)`: an interaction that is not for selfheal.
fn read_click(body: &[u8]) -> Result<Option<Click>, Box<Response>> {
    let payload = form_urlencoded::parse(body)
        .find(|(name, _)| name == "payload")
        .map(|(_, value)| value.into_owned())
        .ok_or_else(|| {
            refuse(
                StatusCode::BAD_REQUEST,
                "payload: missing (a form field holding the interaction's JSON)",
            )
        })?;
    let payload: Payload = serde_json::from_str(&payload).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            format!("payload: not an interaction payload: {e}"),
        )
    })?;
    if payload.kind != "block_actions" {
        return Ok(None);
    }
    let Some(action) = payload
        .actions
        .iter()
        .find(|a| a.action_id == APPROVE_ACTION || a.action_id == REJECT_ACTION)
    else {
        return Ok(None);
    };
    IncidentKey::parse(&action.value).map_err(|invalid| {
        Box::new(refuse(
            StatusCode::BAD_REQUEST,
            format!("payload.actions[].value: {invalid}"),
        ))
    })?;
    if !slack::is_id(&payload.user.id) {
        return Err(Box::new(refuse(
            StatusCode::BAD_REQUEST,
            "payload.user.id: not a Slack user id",
        )));
    }
    let response_url = url::Url::parse(&payload.response_url)
        .ok()
        .filter(|u| matches!(u.scheme(), "https" | "http"))
        .ok_or_else(|| {
            Box::new(refuse(
                StatusCode::BAD_REQUEST,
                "payload.response_url: not an http(s) URL",
            ))
        })?;
    let name = if payload.user.username.is_empty() {
        payload.user.name
    } else {
        payload.user.username
    };
    // A Slack user name is lower-case letters, digits, `.`, `-` and `_`: anything else is dropped.
    let user_name: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(80)
        .collect();
    Ok(Some(Click {
        approve: action.action_id == APPROVE_ACTION,
        incident: action.value.clone(),
        user_id: payload.user.id,
        user_name,
        response_url,
    }))
}

async fn interact(State(interactions): State<Arc<Interactions>>, headers: HeaderMap, body: bytes::Bytes) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Err(unsigned) = slack::verify(
        interactions.settings.signing_secret.expose().as_bytes(),
        header(slack::TIMESTAMP_HEADER),
        header(slack::SIGNATURE_HEADER),
        &body,
        chrono::Utc::now().timestamp(),
    ) {
        tracing::warn!(error = %unsigned, "slack interaction refused");
        return refuse(StatusCode::UNAUTHORIZED, unsigned);
    }
    let click = match read_click(&body) {
        Ok(Some(click)) => click,
        Ok(None) => return StatusCode::OK.into_response(),
        Err(refused) => return *refused,
    };
    tracing::info!(slack.user = %click.user_id, incident.key = %click.incident, approve = click.approve, "slack click");
    // Answered now; carried out after (Slack gives 3 s, a forge's merge may take longer).
    let worker = interactions.clone();
    interactions.work.spawn(async move { worker.act(click).await });
    StatusCode::OK.into_response()
}

#[cfg(test)]
mod tests;
