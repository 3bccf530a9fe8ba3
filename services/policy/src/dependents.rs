//! Blast radius: the services that call this one (`input.dependents`), with their request rate
//! and whether they have incidents firing now.
//!
//! Callers come from a PromQL query over a service graph — the OpenTelemetry Collector's
//! servicegraph connector (`traces_service_graph_request_total{client, server}`), Istio's
//! `istio_requests_total{source_workload, destination_workload}`, or any query whose series
//! carry the caller in `client_label` — or from a static map. Which of them are firing is asked
//! of the gateway (`ListIncidents`, state `firing`, per caller). `limits.max_firing_dependents`
//! then refuses a change while more callers than that are firing: a wider incident is under way,
//! and a rollback of one service is not its fix.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use selfheal_config::Secret;
use selfheal_proto::v1::{ListIncidentsRequest, gateway_client::GatewayClient};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::promql::{MetricsSource, render};

/// `[dependents]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DependentsConfig {
    /// PromQL giving one series per caller of `{{service}}` with its request rate, run on
    /// `metrics.prometheus_url`, e.g. `sum by (client) (rate(traces_service_graph_request_total{server="{{service}}"}[5m]))`.
    pub query: Option<String>,
    /// The label of `query`'s series that names the caller.
    pub client_label: String,
    /// Callers by service, when there is no service graph to ask (rates unknown).
    #[serde(rename = "static")]
    pub fixed: BTreeMap<String, Vec<String>>,
    /// The gateway's gRPC address, asked which callers have incidents firing
    /// (`http://gateway:50051`); unset: `firing` is unknown.
    pub incidents_url: Option<String>,
    /// A token with the `read` role on the gateway.
    pub incidents_token: Option<Secret>,
    /// File holding it.
    pub incidents_token_file: Option<std::path::PathBuf>,
    /// TLS for an `https://` `incidents_url`.
    pub incidents_tls: selfheal_runtime::grpc_tls::ClientTlsConfig,
    /// How long asking the gateway may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for DependentsConfig {
    fn default() -> Self {
        Self {
            query: None,
            client_label: "client".into(),
            fixed: BTreeMap::new(),
            incidents_url: None,
            incidents_token: None,
            incidents_token_file: None,
            incidents_tls: Default::default(),
            timeout: Duration::from_secs(2),
        }
    }
}

/// One caller of the service.
#[derive(Clone, Debug, PartialEq)]
pub struct Dependent {
    pub service: String,
    /// Requests per second to the service, when a service graph says.
    pub rate: Option<f64>,
    /// Whether it has an incident firing now (`None`: unknown).
    pub firing: Option<bool>,
}

/// What was found: the callers, and why the list is incomplete when it is.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Found {
    pub dependents: Vec<Dependent>,
    pub error: Option<String>,
}

impl Found {
    /// As the policy input has it: `dependents` and `dependents_error`.
    pub fn to_json(&self) -> (Value, Option<String>) {
        let list = self
            .dependents
            .iter()
            .map(|d| json!({"service": d.service, "rate": d.rate, "firing": d.firing}))
            .collect();
        (Value::Array(list), self.error.clone())
    }

    /// The callers firing now.
    pub fn firing(&self) -> Vec<&str> {
        self.dependents
            .iter()
            .filter(|d| d.firing == Some(true))
            .map(|d| d.service.as_str())
            .collect()
    }
}

/// Finds the callers of a service.
#[derive(Clone, Default)]
pub struct DependentsReader {
    config: Arc<DependentsConfig>,
    metrics: Option<Arc<dyn MetricsSource>>,
    incidents: Option<(GatewayClient<Channel>, Secret)>,
}

impl DependentsReader {
    /// From `[dependents]`, querying `metrics` (the `[metrics]` Prometheus).
    pub fn from_config(config: &DependentsConfig, metrics: Option<Arc<dyn MetricsSource>>) -> Result<Self, String> {
        if let Some(query) = &config.query {
            if metrics.is_none() {
                return Err("dependents.query: set metrics.prometheus_url, where it runs".into());
            }
            crate::promql::check_template(query).map_err(|e| format!("dependents.query: {e}"))?;
        }
        if !selfheal_config::labels::is_label_name(&config.client_label) {
            return Err(format!(
                "dependents.client_label: {:?} is not a label name",
                config.client_label
            ));
        }
        let incidents = match config.incidents_url.as_deref().filter(|u| !u.is_empty()) {
            None => None,
            Some(url) => {
                let token =
                    Secret::inline_or_file(config.incidents_token.clone(), config.incidents_token_file.as_deref())
                        .map_err(|e| format!("dependents.incidents_token_file: {e}"))?
                        .ok_or("dependents.incidents_token: must be set when incidents_url is")?;
                let timeout = config.timeout;
                let channel = selfheal_runtime::grpc_tls::channel(url, &config.incidents_tls, |e| e.timeout(timeout))
                    .map_err(|e| format!("dependents.incidents_{e}"))?;
                Some((GatewayClient::new(channel), token))
            }
        };
        Ok(Self {
            config: Arc::new(config.clone()),
            metrics,
            incidents,
        })
    }

    /// Whether anything is configured.
    pub fn configured(&self) -> bool {
        self.config.query.is_some() || !self.config.fixed.is_empty()
    }

    /// The callers of the alert's service, with their rates and whether they fire.
    pub async fn read(&self, labels: &BTreeMap<String, String>) -> Found {
        let Some(service) = labels.get("service") else {
            return Found::default();
        };
        let mut found = Found::default();
        let mut callers: BTreeMap<String, Option<f64>> = self
            .config
            .fixed
            .get(service)
            .into_iter()
            .flatten()
            .map(|caller| (caller.clone(), None))
            .collect();
        if let (Some(query), Some(metrics)) = (&self.config.query, &self.metrics) {
            let series = match render(query, labels) {
                Ok(promql) => metrics.query_vector(&promql).await,
                Err(error) => Err(error),
            };
            match series {
                Ok(series) => {
                    for (series_labels, rate) in series {
                        if let Some(caller) = series_labels.get(&self.config.client_label)
                            && caller != service
                        {
                            *callers.entry(caller.clone()).or_default().get_or_insert(0.0) += rate;
                        }
                    }
                }
                Err(error) => found.error = Some(format!("the service graph: {error}")),
            }
        }
        let firing = futures::future::join_all(callers.keys().map(|caller| self.firing(caller))).await;
        for ((caller, rate), firing) in callers.into_iter().zip(firing) {
            let firing = match firing {
                Ok(firing) => firing,
                Err(error) => {
                    found.error.get_or_insert_with(|| format!("incidents: {error}"));
                    None
                }
            };
            found.dependents.push(Dependent {
                service: caller,
                rate,
                firing,
            });
        }
        found
    }

    /// Whether `service` has an incident firing, as the gateway says (`None`: nobody to ask).
    async fn firing(&self, service: &str) -> Result<Option<bool>, String> {
        let Some((client, token)) = &self.incidents else {
            return Ok(None);
        };
        let mut request = tonic::Request::new(ListIncidentsRequest {
            service: service.to_string(),
            state: "firing".into(),
            page_size: 1,
            page_token: String::new(),
        });
        let bearer = format!("Bearer {}", token.expose())
            .parse()
            .map_err(|_| "the token is not a valid header value".to_string())?;
        request.metadata_mut().insert("authorization", bearer);
        let answer = client
            .clone()
            .list_incidents(request)
            .await
            .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
        Ok(Some(!answer.into_inner().incidents.is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::promql::MetricsError;

    struct Graph;

    #[async_trait::async_trait]
    impl MetricsSource for Graph {
        async fn query(&self, _: &str) -> Result<f64, MetricsError> {
            Err(MetricsError::NoData)
        }

        async fn query_vector(&self, promql: &str) -> Result<Vec<(BTreeMap<String, String>, f64)>, MetricsError> {
            assert_eq!(promql, r#"rate(calls{server="checkout"}[1m])"#);
            let series = |client: &str, rate: f64| (BTreeMap::from([("client".to_string(), client.to_string())]), rate);
            Ok(vec![
                series("frontend", 12.5),
                series("mobile", 3.0),
                series("checkout", 1.0),
            ])
        }
    }

    #[tokio::test]
    async fn callers_come_from_the_graph_and_the_static_map() {
        let config = DependentsConfig {
            query: Some(r#"rate(calls{server="{{service}}"}[1m])"#.into()),
            fixed: BTreeMap::from([(
                "checkout".to_string(),
                vec!["batch".to_string(), "frontend".to_string()],
            )]),
            ..Default::default()
        };
        let reader = DependentsReader::from_config(&config, Some(Arc::new(Graph))).expect("valid");
        let labels = BTreeMap::from([("service".to_string(), "checkout".to_string())]);
        let found = reader.read(&labels).await;
        assert_eq!(found.error, None);
        let shown: Vec<(&str, Option<f64>)> = found.dependents.iter().map(|d| (d.service.as_str(), d.rate)).collect();
        // Sorted by name; a call to itself is no dependent; firing unknown without a gateway.
        assert_eq!(
            shown,
            vec![("batch", None), ("frontend", Some(12.5)), ("mobile", Some(3.0))]
        );
        assert!(found.dependents.iter().all(|d| d.firing.is_none()));
        let without = DependentsReader::from_config(&config, None).err().unwrap_or_default();
        assert!(
            without.starts_with("dependents.query: set metrics.prometheus_url"),
            "{without}"
        );
    }
}
