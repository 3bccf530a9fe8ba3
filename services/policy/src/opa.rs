//! An external OPA server as the policy engine, for teams that already run OPA: the same input
//! is POSTed to `/v1/data/<path>` and its `result` is the decision, under the same contract and
//! the same safety limits as in-process Rego.

use std::time::Duration;

use serde_json::{Value, json};

use crate::engine::{PolicyEngine, PolicyError, PolicyFile, RawDecision};

/// OPA's REST data API.
pub struct OpaEngine {
    client: reqwest::Client,
    /// `http://opa:8181`.
    base: String,
    /// `data.selfheal.decision`.
    query: String,
}

impl OpaEngine {
    /// Evaluates `query` (`data.<package>.<rule>`) on the OPA server at `base`.
    pub fn new(base: &str, query: &str, timeout: Duration) -> Result<Self, PolicyError> {
        if !query.starts_with("data.") {
            return Err(PolicyError::Eval {
                query: query.into(),
                reason: "the query must start with data.".into(),
            });
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| PolicyError::Eval {
                query: query.into(),
                reason: e.without_url().to_string(),
            })?;
        Ok(Self {
            client,
            base: base.trim_end_matches('/').to_string(),
            query: query.to_string(),
        })
    }

    fn path(&self) -> String {
        self.query.trim_start_matches("data.").replace('.', "/")
    }
}

#[async_trait::async_trait]
impl PolicyEngine for OpaEngine {
    async fn evaluate(&self, input: &Value) -> Result<(RawDecision, String), PolicyError> {
        let eval_error = |reason: String| PolicyError::Eval {
            query: self.query.clone(),
            reason,
        };
        let url = format!("{}/v1/data/{}", self.base, self.path());
        let response = self
            .client
            .post(&url)
            .headers(selfheal_telemetry::propagation::http_headers(&tracing::Span::current()))
            .json(&json!({ "input": input }))
            .send()
            .await
            .map_err(|e| eval_error(format!("OPA unavailable: {}", e.without_url())))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| eval_error(format!("OPA answered {status}: {e}")))?;
        if !status.is_success() {
            let message = body["message"].as_str().unwrap_or("no message");
            return Err(eval_error(format!("OPA answered {status}: {message}")));
        }
        let Some(result) = body.get("result") else {
            return Err(PolicyError::Undefined {
                query: self.query.clone(),
            });
        };
        let raw: RawDecision = serde_json::from_value(result.clone()).map_err(|e| PolicyError::Shape {
            query: self.query.clone(),
            reason: e.to_string(),
        })?;
        Ok((raw, format!("opa:{}", self.base)))
    }

    fn policies(&self) -> Vec<PolicyFile> {
        let package = self
            .query
            .rsplit_once('.')
            .map(|(package, _)| package)
            .unwrap_or_default();
        vec![PolicyFile {
            path: format!("opa:{}", self.base),
            package: package.to_string(),
        }]
    }

    fn query(&self) -> &str {
        &self.query
    }
}
