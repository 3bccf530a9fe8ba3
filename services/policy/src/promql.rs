//! The policy input's `metrics`: named PromQL queries per alert name, with the alert's labels
//! substituted safely, run against the Prometheus HTTP API with a timeout.
//!
//! A metric that could not be read is absent from `input.metrics`, never zero; why it could not
//! be read is in `input.metrics_errors`, so a policy can refuse to act blind.

use std::{collections::BTreeMap, time::Duration};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Where metrics come from, and which.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Prometheus base URL (`http://prometheus:9090`); unset: no metrics are read.
    pub prometheus_url: Option<String>,
    /// How long one query may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Per alert name (or `"*"` for every alert): metric name → PromQL template. `{{label}}` is
    /// replaced by the alert's label value, escaped for a PromQL string literal, so write it
    /// inside quotes: `app_error_ratio{service="{{service}}"}`.
    pub queries: BTreeMap<String, BTreeMap<String, String>>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            prometheus_url: None,
            timeout: Duration::from_secs(2),
            queries: BTreeMap::new(),
        }
    }
}

/// Why a metric could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MetricsError {
    #[error("the alert has no {0} label for the query")]
    MissingLabel(String),
    #[error("prometheus unavailable: {0}")]
    Unavailable(String),
    #[error("prometheus refused the query: {0}")]
    Query(String),
    #[error("no data for the query")]
    NoData,
}

/// Runs one PromQL query to one number.
#[async_trait]
pub trait MetricsSource: Send + Sync + 'static {
    async fn query(&self, promql: &str) -> Result<f64, MetricsError>;
}

/// The Prometheus HTTP API (`/api/v1/query`).
pub struct Prometheus {
    client: reqwest::Client,
    base: String,
}

impl Prometheus {
    pub fn new(base: &str, timeout: Duration) -> Result<Self, MetricsError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| MetricsError::Unavailable(e.to_string()))?;
        Ok(Self {
            client,
            base: base.trim_end_matches('/').to_string(),
        })
    }
}

#[async_trait]
impl MetricsSource for Prometheus {
    async fn query(&self, promql: &str) -> Result<f64, MetricsError> {
        let url = reqwest::Url::parse_with_params(&format!("{}/api/v1/query", self.base), &[("query", promql)])
            .map_err(|e| MetricsError::Query(format!("prometheus_url: {e}")))?;
        let response = self
            .client
            .get(url)
            .headers(selfheal_telemetry::propagation::http_headers(&tracing::Span::current()))
            .send()
            .await
            .map_err(|e| MetricsError::Unavailable(e.without_url().to_string()))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| MetricsError::Unavailable(e.without_url().to_string()))?;
        if !status.is_success() || body["status"] != "success" {
            return Err(MetricsError::Query(
                body["error"].as_str().unwrap_or(status.as_str()).to_string(),
            ));
        }
        let sample = match body["data"]["resultType"].as_str() {
            Some("vector") => &body["data"]["result"][0]["value"][1],
            Some("scalar") => &body["data"]["result"][1],
            other => return Err(MetricsError::Query(format!("unsupported result type {other:?}"))),
        };
        let value = sample.as_str().ok_or(MetricsError::NoData)?;
        value
            .parse::<f64>()
            .map_err(|_| MetricsError::Query(format!("not a number: {value}")))
    }
}

/// Escapes `value` for a PromQL double-quoted string literal.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// `template` with each `{{label}}` replaced by the escaped label value.
pub fn render(template: &str, labels: &BTreeMap<String, String>) -> Result<String, MetricsError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = after[..end].trim();
        let value = labels
            .get(name)
            .ok_or_else(|| MetricsError::MissingLabel(name.to_string()))?;
        out.push_str(&escape(value));
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Reads the metrics configured for `alertname` (and for `"*"`): (values, errors), as JSON
/// objects keyed by metric name.
pub async fn collect(
    source: Option<&dyn MetricsSource>,
    config: &MetricsConfig,
    alertname: &str,
    labels: &BTreeMap<String, String>,
) -> (Value, Value) {
    let mut values = Map::new();
    let mut errors = Map::new();
    let queries: Vec<(&String, &String)> = ["*", alertname]
        .iter()
        .filter_map(|key| config.queries.get(*key))
        .flat_map(|queries| queries.iter())
        .collect();
    if queries.is_empty() {
        return (Value::Object(values), Value::Object(errors));
    }
    let Some(source) = source else {
        for (name, _) in queries {
            errors.insert(name.clone(), Value::from("no prometheus_url is configured"));
        }
        return (Value::Object(values), Value::Object(errors));
    };
    let results = futures::future::join_all(queries.iter().map(|(name, template)| async move {
        let result = match render(template, labels) {
            Ok(promql) => source.query(&promql).await,
            Err(error) => Err(error),
        };
        ((*name).clone(), result)
    }))
    .await;
    for (name, result) in results {
        match result {
            Ok(value) if value.is_finite() => {
                values.insert(name, Value::from(value));
            }
            Ok(value) => {
                errors.insert(name, Value::from(format!("not a finite number: {value}")));
            }
            Err(error) => {
                errors.insert(name, Value::from(error.to_string()));
            }
        }
    }
    (Value::Object(values), Value::Object(errors))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn labels_cannot_escape_their_string() {
        let template = r#"sum(rate(http_requests_total{service="{{service}}",status=~"5.."}[5m]))"#;
        assert_eq!(
            render(template, &labels(&[("service", "checkout")])),
            Ok(r#"sum(rate(http_requests_total{service="checkout",status=~"5.."}[5m]))"#.to_string())
        );
        let hostile = render(template, &labels(&[("service", "x\"} or vector(1) or {a=\"\\")])).expect("renders");
        assert!(
            hostile.contains(r#"service="x\"} or vector(1) or {a=\"\\""#),
            "{hostile}"
        );
        assert_eq!(
            render(template, &labels(&[])),
            Err(MetricsError::MissingLabel("service".into()))
        );
    }
}

/// The configured queries and where to run them, shared by the consumer and gRPC.
#[derive(Clone)]
pub struct MetricsReader {
    config: std::sync::Arc<MetricsConfig>,
    source: Option<std::sync::Arc<dyn MetricsSource>>,
}

impl MetricsReader {
    /// Reads from the Prometheus in `config` (if any).
    pub fn from_config(config: &MetricsConfig) -> Result<Self, MetricsError> {
        let source: Option<std::sync::Arc<dyn MetricsSource>> = match &config.prometheus_url {
            Some(url) if !url.is_empty() => Some(std::sync::Arc::new(Prometheus::new(url, config.timeout)?)),
            _ => None,
        };
        Ok(Self {
            config: std::sync::Arc::new(config.clone()),
            source,
        })
    }

    /// No metrics at all.
    pub fn none() -> Self {
        Self {
            config: std::sync::Arc::new(MetricsConfig::default()),
            source: None,
        }
    }

    /// (values, errors) for an alert with these labels.
    pub async fn read(&self, labels: &BTreeMap<String, String>) -> (Value, Value) {
        let alertname = labels.get("alertname").map(String::as_str).unwrap_or_default();
        collect(self.source.as_deref(), &self.config, alertname, labels).await
    }
}
