//! What every REST forge adapter (GitLab, Gitea) shares: one blocking call with the retry rules,
//! and the token kept out of everything but the one header that carries it.
//!
//! Retries: 5xx and transport errors back off exponentially (100 ms doubling, at most 5 s); a 429
//! waits what the forge asks (`Retry-After` in seconds, or `RateLimit-Reset` as a Unix time), one
//! second when it names nothing, up to `max_wait` — past that, or after `attempts`, the call fails
//! as transient and the decision is redelivered later. Any other status is final and returned
//! with the forge's message.
//!
//! Blocking, like every [`selfheal_git::GitRepo`]: each call runs on the runtime it was given,
//! so call it from `spawn_blocking`.

use std::time::Duration;

use reqwest::{Method, header::HeaderMap};
use selfheal_git::RepoError;
use serde_json::Value;

/// How a forge is reached: its API root, the header its token goes in, and the retry limits.
#[derive(Clone)]
pub struct ApiSettings {
    /// The forge's name in messages (`GitLab`).
    pub forge: &'static str,
    /// The API root, e.g. `https://gitlab.example.com/api/v4`.
    pub base_url: String,
    /// The token's header and how its value is written (`PRIVATE-TOKEN: {token}`,
    /// `Authorization: token {token}`).
    pub auth_header: &'static str,
    pub auth_prefix: &'static str,
    pub token: selfheal_config::Secret,
    pub attempts: u32,
    pub max_wait: Duration,
}

/// Why one call failed, after its retries.
#[derive(Debug)]
pub enum CallError {
    /// The forge answered with a status that retrying does not change.
    Status { status: u16, message: String },
    /// 5xx, transport errors or a rate limit, still there after the attempts.
    Transient(String),
}

impl CallError {
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            Self::Transient(_) => None,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Self::Status { message, .. } | Self::Transient(message) => message,
        }
    }

    /// As a repository error: a final status is a refusal, the rest is retried later.
    pub fn into_repo(self, forge: &str, what: &str) -> RepoError {
        match self {
            Self::Status { status, message } => RepoError::Refused(format!("{forge} {what}: {status} {message}")),
            Self::Transient(reason) => RepoError::Git(format!("{forge} {what}: {reason}")),
        }
    }
}

/// A REST API reached with a token.
pub struct Api {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
    settings: ApiSettings,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("forge", &self.settings.forge)
            .field("base_url", &self.settings.base_url)
            .finish_non_exhaustive()
    }
}

impl Api {
    /// Checks the settings and builds the client; connects nothing yet. Calls run on `runtime`.
    pub fn new(settings: ApiSettings, runtime: tokio::runtime::Handle) -> Result<Self, String> {
        if settings.attempts == 0 {
            return Err("attempts: must be at least 1".into());
        }
        if settings.token.is_empty() {
            return Err("no token: set token or token_file".into());
        }
        let url = reqwest::Url::parse(&settings.base_url).map_err(|e| format!("api_url: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || !url.username().is_empty() || url.password().is_some() {
            return Err("api_url: must be an http(s) URL without credentials".into());
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .user_agent("selfheal")
            .build()
            .map_err(|e| format!("client: {e}"))?;
        Ok(Self {
            client,
            runtime,
            settings,
        })
    }

    /// `method path?query` with a JSON `body`: the answer's JSON (`null` when it has none).
    pub fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, CallError> {
        let url = format!("{}{path}", self.settings.base_url.trim_end_matches('/'));
        let token = format!("{}{}", self.settings.auth_prefix, self.settings.token.expose());
        self.runtime.block_on(async {
            let mut backoff = Duration::from_millis(100);
            let mut last = String::new();
            for attempt in 1..=self.settings.attempts {
                let mut request = self
                    .client
                    .request(method.clone(), &url)
                    .query(query)
                    .header(self.settings.auth_header, &token);
                if let Some(body) = body {
                    request = request.json(body);
                }
                let wait = match request.send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let headers = response.headers().clone();
                        let text = response.text().await.unwrap_or_default();
                        if status < 400 {
                            return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
                        }
                        last = format!("{status} {}", forge_message(&text));
                        match rate_limit_wait(status, &headers) {
                            Some(wait) if wait > self.settings.max_wait => {
                                return Err(CallError::Transient(format!(
                                    "rate limited for {}s more",
                                    wait.as_secs()
                                )));
                            }
                            Some(wait) => {
                                metrics::counter!(selfheal_telemetry::metrics::FORGE_RETRIES, "reason" => "rate_limit")
                                    .increment(1);
                                wait
                            }
                            None if status >= 500 => {
                                metrics::counter!(selfheal_telemetry::metrics::FORGE_RETRIES, "reason" => "server_error")
                                    .increment(1);
                                backoff
                            }
                            None => {
                                return Err(CallError::Status {
                                    status,
                                    message: forge_message(&text),
                                });
                            }
                        }
                    }
                    Err(error) => {
                        // reqwest's errors name the URL, never the headers.
                        last = error.without_url().to_string().chars().take(300).collect();
                        metrics::counter!(selfheal_telemetry::metrics::FORGE_RETRIES, "reason" => "transport")
                            .increment(1);
                        backoff
                    }
                };
                if attempt < self.settings.attempts {
                    tracing::debug!(forge = self.settings.forge, attempt, wait_ms = wait.as_millis() as u64, error = %last, "request retried");
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
            Err(CallError::Transient(format!(
                "still failing after {} attempts: {last}",
                self.settings.attempts
            )))
        })
    }

    pub fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, CallError> {
        self.call(Method::GET, path, query, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Value, CallError> {
        self.call(Method::POST, path, &[], Some(body))
    }

    pub fn put(&self, path: &str, body: &Value) -> Result<Value, CallError> {
        self.call(Method::PUT, path, &[], Some(body))
    }

    pub fn patch(&self, path: &str, body: &Value) -> Result<Value, CallError> {
        self.call(Method::PATCH, path, &[], Some(body))
    }
}

/// The forge's own words from an error body (`{"message": ...}`, GitLab's arrays and objects of
/// messages, or the text), one line, cut short.
fn forge_message(text: &str) -> String {
    let message = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(object)) => match object.get("message").or_else(|| object.get("error")) {
            Some(Value::String(message)) => message.clone(),
            Some(other) => other.to_string(),
            None => text.to_string(),
        },
        _ => text.to_string(),
    };
    message
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(300)
        .collect()
}

/// How long a 429 asks to wait: `Retry-After` (seconds), else `RateLimit-Reset` (a Unix time),
/// else a second. None for any other status.
fn rate_limit_wait(status: u16, headers: &HeaderMap) -> Option<Duration> {
    if status != 429 {
        return None;
    }
    let header = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<i64>().ok();
    if let Some(seconds) = header("retry-after") {
        return Some(Duration::from_secs(seconds.max(0) as u64));
    }
    if let Some(reset) = header("ratelimit-reset") {
        let wait = reset - chrono::Utc::now().timestamp();
        return Some(Duration::from_secs(wait.max(1) as u64));
    }
    Some(Duration::from_secs(1))
}

/// A forge's JSON answer as `T`; one that does not fit is a transient error naming the call.
pub fn parse<T: serde::de::DeserializeOwned>(forge: &str, value: Value, what: &str) -> Result<T, RepoError> {
    serde_json::from_value(value)
        .map_err(|e| RepoError::Git(format!("{forge} {what}: an answer selfheal cannot read: {e}")))
}

/// `branch` was not where the caller expected it (None: expected absent).
pub fn conflict(branch: &str, expected: Option<&str>, found: String) -> RepoError {
    RepoError::Conflict {
        branch: branch.to_string(),
        expected: expected.unwrap_or("no branch").to_string(),
        found,
    }
}

/// `text` with every byte outside `A-Za-z0-9-._~` percent-encoded: a path segment that may hold
/// slashes (GitLab's project path, a file path, a branch name).
pub fn encode_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_are_read_from_the_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(rate_limit_wait(429, &headers), Some(Duration::from_secs(1)));
        assert_eq!(rate_limit_wait(500, &headers), None);
        headers.insert(
            "ratelimit-reset",
            (chrono::Utc::now().timestamp() + 30)
                .to_string()
                .parse()
                .expect("header"),
        );
        let wait = rate_limit_wait(429, &headers).expect("a wait");
        assert!(
            wait >= Duration::from_secs(28) && wait <= Duration::from_secs(31),
            "{wait:?}"
        );
        headers.insert("retry-after", "7".parse().expect("header"));
        assert_eq!(rate_limit_wait(429, &headers), Some(Duration::from_secs(7)));
    }

    #[test]
    fn messages_and_segments() {
        assert_eq!(
            forge_message(r#"{"message":"404 Branch Not Found"}"#),
            "404 Branch Not Found"
        );
        assert_eq!(
            forge_message(r#"{"message":["Another open merge request already exists"]}"#),
            r#"["Another open merge request already exists"]"#
        );
        assert_eq!(forge_message("Retry later\n"), "Retry later");
        assert_eq!(encode_segment("acme/gitops"), "acme%2Fgitops");
        assert_eq!(encode_segment("apps/check out.yaml"), "apps%2Fcheck%20out.yaml");
    }
}
