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
    /// replaced by the alert's label value, escaped for the string literal it stands in (`"…"`,
    /// `'…'` or a raw `` `…` ``) and, after `=~` or `!~`, for the regular expression too — so
    /// it must stand inside quotes: `app_error_ratio{service="{{service}}"}`. A template with
    /// `{{label}}` outside quotes is refused at start-up.
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
    /// A template puts a label where no escaping makes it safe.
    #[error("{0}")]
    Template(String),
}

/// Most bytes read of one Prometheus answer (a single number is asked for).
const MAX_RESPONSE: usize = 1 << 20;

/// Runs PromQL queries.
#[async_trait]
pub trait MetricsSource: Send + Sync + 'static {
    /// One number: a scalar, or the first sample of a vector.
    async fn query(&self, promql: &str) -> Result<f64, MetricsError>;
    /// Every series of an instant vector: its labels and value.
    async fn query_vector(&self, promql: &str) -> Result<Vec<(BTreeMap<String, String>, f64)>, MetricsError>;
}

/// The Prometheus HTTP API (`/api/v1/query`).
#[derive(Clone)]
pub struct Prometheus {
    client: reqwest::Client,
    base: String,
    /// The evaluation time of every query (`time=`); unset: Prometheus's now.
    at: Option<chrono::DateTime<chrono::Utc>>,
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
            at: None,
        })
    }

    /// The same Prometheus, every query evaluated at `time` (`selfheal policy replay`: the
    /// metrics as they were when an alert fired).
    pub fn at(&self, time: chrono::DateTime<chrono::Utc>) -> Self {
        Self {
            at: Some(time),
            ..self.clone()
        }
    }
}

impl Prometheus {
    /// The `data` of Prometheus's answer to `promql` (an instant query), read up to 1 MiB.
    async fn data(&self, promql: &str) -> Result<Value, MetricsError> {
        let mut params = vec![("query", promql.to_string())];
        if let Some(at) = self.at {
            params.push(("time", format!("{:.3}", at.timestamp_millis() as f64 / 1000.0)));
        }
        let url = reqwest::Url::parse_with_params(&format!("{}/api/v1/query", self.base), &params)
            .map_err(|e| MetricsError::Query(format!("prometheus_url: {e}")))?;
        let mut response = self
            .client
            .get(url)
            .headers(selfheal_telemetry::propagation::http_headers(&tracing::Span::current()))
            .send()
            .await
            .map_err(|e| MetricsError::Unavailable(e.without_url().to_string()))?;
        let status = response.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| MetricsError::Unavailable(e.without_url().to_string()))?
        {
            if bytes.len() + chunk.len() > MAX_RESPONSE {
                return Err(MetricsError::Query(format!(
                    "the answer is over {MAX_RESPONSE} bytes; aggregate the query"
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        let mut body: Value = serde_json::from_slice(&bytes)
            .map_err(|e| MetricsError::Unavailable(format!("not JSON from prometheus: {e}")))?;
        if !status.is_success() || body["status"] != "success" {
            return Err(MetricsError::Query(
                body["error"].as_str().unwrap_or(status.as_str()).to_string(),
            ));
        }
        Ok(body["data"].take())
    }
}

fn number(sample: &Value) -> Result<f64, MetricsError> {
    let value = sample.as_str().ok_or(MetricsError::NoData)?;
    value
        .parse::<f64>()
        .map_err(|_| MetricsError::Query(format!("not a number: {value}")))
}

#[async_trait]
impl MetricsSource for Prometheus {
    async fn query(&self, promql: &str) -> Result<f64, MetricsError> {
        let data = self.data(promql).await?;
        match data["resultType"].as_str() {
            Some("vector") => number(&data["result"][0]["value"][1]),
            Some("scalar") => number(&data["result"][1]),
            other => Err(MetricsError::Query(format!("unsupported result type {other:?}"))),
        }
    }

    async fn query_vector(&self, promql: &str) -> Result<Vec<(BTreeMap<String, String>, f64)>, MetricsError> {
        let data = self.data(promql).await?;
        if data["resultType"] != "vector" {
            return Err(MetricsError::Query(format!(
                "an instant vector is needed, not {}",
                data["resultType"]
            )));
        }
        let mut series = Vec::new();
        for sample in data["result"].as_array().into_iter().flatten() {
            let labels = sample["metric"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect();
            series.push((labels, number(&sample["value"][1])?));
        }
        Ok(series)
    }
}

/// Where in a PromQL template a `{{label}}` stands: inside which string literal, and whether that
/// literal is a regular expression (after `=~` or `!~`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Literal {
    quote: char,
    regex: bool,
}

/// Text of a template, then the `{{label}}` after it (its name and the literal it stands in);
/// the last piece has none.
type Piece<'a> = (&'a str, Option<(&'a str, Literal)>);

/// A template cut into text and `{{label}}` places.
fn pieces(template: &str) -> Result<Vec<Piece<'_>>, MetricsError> {
    let mut pieces = Vec::new();
    let (mut literal, mut escaped, mut text_start) = (None::<Literal>, false, 0);
    let mut i = 0;
    while i < template.len() {
        let rest = &template[i..];
        if rest.starts_with("{{")
            && let Some(end) = rest[2..].find("}}")
        {
            let name = rest[2..2 + end].trim();
            let Some(within) = literal else {
                return Err(MetricsError::Template(format!(
                    "{{{{{name}}}}} stands outside a quoted string, where no escaping makes a label value safe: write it inside quotes, as service=\"{{{{{name}}}}}\""
                )));
            };
            pieces.push((&template[text_start..i], Some((name, within))));
            i += 2 + end + 2;
            text_start = i;
            escaped = false;
            continue;
        }
        let c = rest.chars().next().unwrap_or_default();
        match literal {
            None if matches!(c, '"' | '\'' | '`') => {
                let before = template[..i].trim_end();
                literal = Some(Literal {
                    quote: c,
                    regex: before.ends_with("=~") || before.ends_with("!~"),
                });
            }
            Some(_) if escaped => escaped = false,
            Some(within) if c == '\\' && within.quote != '`' => escaped = true,
            Some(within) if c == within.quote => literal = None,
            _ => {}
        }
        i += c.len_utf8();
    }
    pieces.push((&template[text_start..], None));
    Ok(pieces)
}

/// `value` escaped for a regular expression (RE2, as Prometheus matches it): every character
/// with a meaning gets a backslash, so the value matches only itself.
fn regex_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `value` escaped for a PromQL string literal quoted with `quote`; control characters dropped.
/// A raw (backtick) literal has no escapes, so a value holding a backtick is refused.
fn literal_escape(value: &str, quote: char) -> Result<String, MetricsError> {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            c if quote == '`' && c == '`' => {
                return Err(MetricsError::Template(
                    "a label value holds a backtick, which a raw `…` string cannot: quote the template with \"…\""
                        .into(),
                ));
            }
            c if c.is_control() && quote == '`' => {}
            '\\' if quote != '`' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {}
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Checks that every `{{label}}` of `template` stands inside a string literal.
pub fn check_template(template: &str) -> Result<(), MetricsError> {
    pieces(template).map(|_| ())
}

/// `template` with each `{{label}}` replaced by the label's value, escaped for where it stands.
pub fn render(template: &str, labels: &BTreeMap<String, String>) -> Result<String, MetricsError> {
    let mut out = String::with_capacity(template.len());
    for (text, place) in pieces(template)? {
        out.push_str(text);
        let Some((name, within)) = place else { continue };
        let value = labels
            .get(name)
            .ok_or_else(|| MetricsError::MissingLabel(name.to_string()))?;
        let value = if within.regex {
            regex_escape(value)
        } else {
            value.clone()
        };
        out.push_str(&literal_escape(&value, within.quote)?);
    }
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

    #[test]
    fn a_label_in_a_regex_matcher_matches_only_itself() {
        let widened = labels(&[("service", ".*"), ("pod", "api-(1|2)")]);
        assert_eq!(
            render(r#"up{service=~"{{service}}", pod!~"{{pod}}"}"#, &widened),
            Ok(r#"up{service=~"\\.\\*", pod!~"api-\\(1\\|2\\)"}"#.to_string())
        );
        // In a raw string the regex's backslashes stand as they are.
        assert_eq!(
            render("up{service=~`{{service}}`}", &widened),
            Ok(r"up{service=~`\.\*`}".to_string())
        );
        // An equality matcher takes the value as it is.
        assert_eq!(
            render(r#"up{service="{{service}}"}"#, &widened),
            Ok(r#"up{service=".*"}"#.to_string())
        );
    }

    #[test]
    fn single_quoted_and_raw_templates_are_escaped_too() {
        let hostile = labels(&[("service", "x'} or vector(1) or {a='")]);
        assert_eq!(
            render("up{service='{{service}}'}", &hostile),
            Ok(r"up{service='x\'} or vector(1) or {a=\''}".to_string())
        );
        let backtick = labels(&[("service", "x`} or vector(1)")]);
        assert!(matches!(
            render("up{service=`{{service}}`}", &backtick),
            Err(MetricsError::Template(_))
        ));
        // A quote of the other kind is only text inside a literal, and an escaped quote does not
        // end one.
        assert_eq!(
            render(
                r#"label_replace(up, "a", "\"'", "b", "{{service}}")"#,
                &labels(&[("service", "s")])
            ),
            Ok(r#"label_replace(up, "a", "\"'", "b", "s")"#.to_string())
        );
    }

    #[test]
    fn a_label_outside_quotes_is_refused_at_start_up() {
        let config = MetricsConfig {
            queries: BTreeMap::from([(
                "HighCPU".to_string(),
                BTreeMap::from([("cpu".to_string(), "rate({{service}}_cpu_seconds[5m])".to_string())]),
            )]),
            ..Default::default()
        };
        let error = MetricsReader::from_config(&config)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.starts_with("queries.HighCPU.cpu: {{service}} stands outside a quoted string"),
            "{error}"
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
        for (alertname, queries) in &config.queries {
            for (metric, template) in queries {
                check_template(template)
                    .map_err(|e| MetricsError::Template(format!("queries.{alertname}.{metric}: {e}")))?;
            }
        }
        let source: Option<std::sync::Arc<dyn MetricsSource>> = match &config.prometheus_url {
            Some(url) if !url.is_empty() => Some(std::sync::Arc::new(Prometheus::new(url, config.timeout)?)),
            _ => None,
        };
        Ok(Self {
            config: std::sync::Arc::new(config.clone()),
            source,
        })
    }

    /// The queries of `config` run against `source` (the templates checked as in
    /// [`Self::from_config`]).
    pub fn with_source(
        config: &MetricsConfig,
        source: std::sync::Arc<dyn MetricsSource>,
    ) -> Result<Self, MetricsError> {
        let mut reader = Self::from_config(&MetricsConfig {
            prometheus_url: None,
            ..config.clone()
        })?;
        reader.source = Some(source);
        Ok(reader)
    }

    /// No metrics at all.
    pub fn none() -> Self {
        Self {
            config: std::sync::Arc::new(MetricsConfig::default()),
            source: None,
        }
    }

    /// Where the metrics come from (`None`: no `prometheus_url`).
    pub fn source(&self) -> Option<std::sync::Arc<dyn MetricsSource>> {
        self.source.clone()
    }

    /// (values, errors) for an alert with these labels.
    pub async fn read(&self, labels: &BTreeMap<String, String>) -> (Value, Value) {
        let alertname = labels.get("alertname").map(String::as_str).unwrap_or_default();
        collect(self.source.as_deref(), &self.config, alertname, labels).await
    }
}
