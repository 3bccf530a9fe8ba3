//! gRPC `selfheal.v1.Gateway`: ingest for sources other than Alertmanager (same validation, same
//! deduplication as the webhook), and the incidents the gateway keeps.

use selfheal_config::{Role, TokenCheck, require};
use selfheal_proto::v1::{
    GetIncidentRequest, Incident, IngestRequest, IngestResponse, IngestedAlert, ListIncidentsRequest,
    ListIncidentsResponse,
    gateway_server::{Gateway, GatewayServer},
};
use tonic::{Request, Response, Status, service::interceptor::InterceptedService};

use crate::{
    error::RequestError,
    incidents,
    ingest::{AppState, Ingress, ingest},
    webhook,
};

impl From<RequestError> for Status {
    fn from(error: RequestError) -> Self {
        match error {
            RequestError::Invalid { .. } => Status::invalid_argument(error.to_string()),
            RequestError::Unauthorized => Status::unauthenticated(error.to_string()),
            RequestError::TooLarge { .. } => Status::resource_exhausted(error.to_string()),
            RequestError::Unavailable(_) => Status::unavailable("alerts not stored; retry"),
        }
    }
}

fn to_proto(incident: incidents::Incident) -> Incident {
    Incident {
        key: incident.key,
        state: match incident.state {
            incidents::IncidentState::Firing => "firing".into(),
            incidents::IncidentState::Resolved => "resolved".into(),
        },
        alertname: incident.alertname,
        service: incident.service,
        labels: incident.labels.into_iter().collect(),
        starts_at: incident.starts_at,
        ends_at: incident.ends_at.unwrap_or_default(),
        first_seen: incident.first_seen,
        last_seen: incident.last_seen,
        resolved_at: incident.resolved_at.unwrap_or_default(),
        notifications: incident.notifications,
        truncated: incident.truncated,
        fingerprint: incident.fingerprint,
        trace_id: incident.trace_id,
    }
}

/// The gRPC service.
pub struct GatewayService {
    state: AppState,
}

/// The service behind its token check (`Ingest` needs the `ingest` role, the incidents `read`).
pub fn server(state: AppState, tokens: TokenCheck) -> InterceptedService<GatewayServer<GatewayService>, TokenCheck> {
    GatewayServer::with_interceptor(GatewayService { state }, tokens)
}

#[tonic::async_trait]
impl Gateway for GatewayService {
    async fn ingest(&self, request: Request<IngestRequest>) -> Result<Response<IngestResponse>, Status> {
        require(&request, Role::Ingest)?;
        // The caller's W3C context (gRPC metadata), as the parent of each alert's span.
        let mut caller = selfheal_bus::Headers::new();
        for name in ["traceparent", "tracestate"] {
            if let Some(value) = request.metadata().get(name).and_then(|v| v.to_str().ok()) {
                caller.insert(name, value);
            }
        }
        let request = request.into_inner();
        if request.alerts.is_empty() {
            return Err(Status::invalid_argument("alerts: is empty"));
        }
        if request.alerts.len() > self.state.limits.max_alerts {
            return Err(Status::invalid_argument(format!(
                "alerts: has {} alerts, more than the limit of {}",
                request.alerts.len(),
                self.state.limits.max_alerts
            )));
        }
        if !request.source.is_empty() && !webhook::is_dns1123_label(&request.source) {
            return Err(Status::invalid_argument("source: must be a DNS-1123 label"));
        }
        let now = chrono::Utc::now();
        let events = request
            .alerts
            .iter()
            .enumerate()
            .map(|(index, alert)| {
                webhook::from_proto(
                    index,
                    alert,
                    &request.source,
                    &self.state.limits,
                    &self.state.identity,
                    now,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let results = futures::future::join_all(
            events
                .into_iter()
                .map(|event| ingest(&self.state, event, &caller, Ingress::Grpc)),
        )
        .await;
        let mut alerts = Vec::with_capacity(results.len());
        for result in results {
            let ingested = result?;
            alerts.push(IngestedAlert {
                incident_key: ingested.key,
                outcome: ingested.outcome.into(),
                trace_id: ingested.trace_id,
            });
        }
        Ok(Response::new(IngestResponse { alerts }))
    }

    async fn get_incident(&self, request: Request<GetIncidentRequest>) -> Result<Response<Incident>, Status> {
        require(&request, Role::Read)?;
        let key = request.into_inner().key;
        if let Err(invalid) = selfheal_proto::IncidentKey::parse(&key) {
            return Err(Status::invalid_argument(format!("key: {invalid}")));
        }
        match self.state.incidents.get(&key).await {
            Ok(Some(incident)) => Ok(Response::new(to_proto(incident))),
            Ok(None) => Err(Status::not_found(format!("no incident {key}"))),
            Err(error) => Err(incidents_unavailable(error)),
        }
    }

    async fn list_incidents(
        &self,
        request: Request<ListIncidentsRequest>,
    ) -> Result<Response<ListIncidentsResponse>, Status> {
        require(&request, Role::Read)?;
        let request = request.into_inner();
        if !request.state.is_empty() && request.state != "firing" && request.state != "resolved" {
            return Err(Status::invalid_argument(
                "state: must be \"firing\", \"resolved\" or empty",
            ));
        }
        let page_size = match request.page_size {
            0 => 100,
            n if n > 1000 => return Err(Status::invalid_argument("page_size: at most 1000")),
            n => n as usize,
        };
        let all = self.state.incidents.all().await.map_err(incidents_unavailable)?;
        let mut matching = all
            .into_iter()
            .filter(|i| request.page_token.is_empty() || i.key > request.page_token)
            .filter(|i| request.service.is_empty() || i.service == request.service)
            .filter(|i| match request.state.as_str() {
                "firing" => i.state == incidents::IncidentState::Firing,
                "resolved" => i.state == incidents::IncidentState::Resolved,
                _ => true,
            });
        let page: Vec<Incident> = matching.by_ref().take(page_size).map(to_proto).collect();
        let next_page_token = match (matching.next(), page.last()) {
            (Some(_), Some(last)) => last.key.clone(),
            _ => String::new(),
        };
        Ok(Response::new(ListIncidentsResponse {
            incidents: page,
            next_page_token,
        }))
    }
}

/// What a caller is told when the incidents bucket cannot be read: that it may pass; the
/// store's own words go to the log.
fn incidents_unavailable(error: incidents::IncidentError) -> Status {
    tracing::warn!(error = %error, "incidents not read");
    Status::unavailable("the incidents cannot be read now; try again")
}
