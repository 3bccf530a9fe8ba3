//! gRPC `selfheal.v1.Remediations`: what the GitOps repository says about a service
//! (`DescribeTarget`, the policy's `input.target`), and the remediations' lifecycle: `Get`,
//! `List`, and what people do to them — `Approve`, `Reject`, `Retry`.

use std::{collections::BTreeMap, sync::Arc};

use selfheal_config::{Role, TokenCheck, require};
use selfheal_proto::{
    IncidentKey,
    names::{self, is_dns1123_label},
    v1::{
        Approval, ApproveRequest, DescribeTargetRequest, GetRemediationRequest, ListRemediationsRequest,
        ListRemediationsResponse, RejectRequest, RemediationEvent, RemediationState, RetryRequest, Target,
        remediations_server::{Remediations, RemediationsServer},
    },
};
use tonic::{Request, Response, Status, service::interceptor::InterceptedService};
use tracing::Instrument as _;

use crate::{
    handler::RemediationHandler,
    reconcile::ReconcileError,
    verify::{Record, VerifyError},
};

/// The gRPC service.
pub struct RemediationsService {
    handler: Arc<RemediationHandler>,
    /// `DescribeTarget`'s answers at main's current tip.
    targets: Arc<crate::reconcile::TargetCache>,
    /// At most one describe per core reads git at once: a burst of alerts asks for hundreds,
    /// each a short blocking read, and a thread per read (tokio makes one for each blocking task
    /// in flight) cost more than the reads; queued, the later ones find the answer cached.
    reading: Arc<tokio::sync::Semaphore>,
}

/// The service behind its token check; each RPC checks its role.
pub fn server(
    service: Arc<RemediationsService>,
    tokens: TokenCheck,
) -> InterceptedService<RemediationsServer<RemediationsService>, TokenCheck> {
    InterceptedService::new(RemediationsServer::from_arc(service), tokens)
}

/// Who acted: a named token's name; for the shared token, what the caller says it is (made
/// safe by `approve_as` and `reject_as`).
fn actor(caller: &selfheal_config::Caller, said: &str) -> String {
    if caller.shared {
        said.to_string()
    } else {
        caller.name.clone()
    }
}

/// What a gRPC caller is told of the lifecycle store: an outage or a lost race may pass
/// (`Unavailable`); a record that does not read is `DataLoss`.
fn lifecycle_status(error: VerifyError) -> Status {
    match error {
        VerifyError::Store(_) | VerifyError::Contended(_) => selfheal_telemetry::errors::hidden(
            tonic::Code::Unavailable,
            "the remediation records cannot be read now; try again",
            &error,
        ),
        VerifyError::Record { .. } | VerifyError::Event { .. } => Status::data_loss(error.to_string()),
    }
}

/// Who acted, made safe for messages and logs: one line, at most 100 characters.
fn who(by: &str) -> String {
    let by: String = by
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(100)
        .collect();
    match by.trim() {
        "" => "an operator".to_string(),
        by => by.to_string(),
    }
}

fn check_key(incident_key: &str) -> Result<(), Status> {
    IncidentKey::parse(incident_key)
        .map(|_| ())
        .map_err(|invalid| Status::invalid_argument(format!("incident_key: {invalid}")))
}

impl RemediationsService {
    pub fn new(handler: Arc<RemediationHandler>) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Self {
            handler,
            targets: Default::default(),
            reading: Arc::new(tokio::sync::Semaphore::new(cores)),
        }
    }

    async fn record(&self, incident_key: &str) -> Result<Record, Status> {
        check_key(incident_key)?;
        let lifecycle = self
            .handler
            .lifecycle()
            .ok_or_else(|| Status::unimplemented("this pr-controller keeps no remediation records"))?;
        lifecycle
            .get(incident_key)
            .await
            .map_err(lifecycle_status)?
            .ok_or_else(|| Status::not_found(format!("no remediation for incident {incident_key}")))
    }

    /// The record's decision carried out again, with `approval`; the resulting event.
    async fn again(
        &self,
        record: &Record,
        approval: Option<Approval>,
        note: String,
    ) -> Result<RemediationEvent, Status> {
        let event = record.event().map_err(lifecycle_status)?;
        let mut decision = event
            .decision
            .clone()
            .ok_or_else(|| Status::failed_precondition("the remediation carries no decision to carry out"))?;
        if let Some(approval) = approval {
            decision.set_approval(approval);
        }
        let span = tracing::info_span!(
            "pr_controller.operator",
            rpc.system = "grpc",
            rpc.service = "selfheal.v1.Remediations",
            selfheal.incident.key = %record.incident,
            selfheal.operator.note = %note
        );
        let done = self
            .handler
            .carry_out(decision, record.subject_service.clone(), Some(&note), span)
            .await
            .map_err(Status::from)?;
        match done {
            Some(event) => Ok(event),
            // Moved meanwhile (another replica, a redelivery): report where it is now.
            None => self.record(&record.incident).await?.event().map_err(lifecycle_status),
        }
    }
}

impl RemediationsService {
    /// Approves the remediation of `incident_key` on behalf of `by` (a token's name, a Slack
    /// user): its decision is carried out again, approved, and the event names `by`.
    pub async fn approve_as(&self, incident_key: &str, by: &str) -> Result<RemediationEvent, Status> {
        let record = self.record(incident_key).await?;
        if record.state != RemediationState::Opened {
            return Err(Status::failed_precondition(format!(
                "remediation {} is {}, not waiting for approval",
                record.incident,
                names::state(record.state)
            )));
        }
        let note = format!("approved by {}", who(by));
        tracing::info!(incident.key = %record.incident, %note, "approval");
        self.again(&record, Some(Approval::Auto), note).await
    }

    /// Rejects the remediation of `incident_key` on behalf of `by`, with `reason` (its first
    /// line, at most 500 characters): recorded first, so no redelivery carries it out, then the
    /// pull request is closed.
    pub async fn reject_as(&self, incident_key: &str, by: &str, reason: &str) -> Result<RemediationEvent, Status> {
        let record = self.record(incident_key).await?;
        if !matches!(record.state, RemediationState::Opened | RemediationState::Failed) {
            return Err(Status::failed_precondition(format!(
                "remediation {} is {}; only an opened or failed one can be rejected",
                record.incident,
                names::state(record.state)
            )));
        }
        let lifecycle = self
            .handler
            .lifecycle()
            .ok_or_else(|| Status::unimplemented("this pr-controller keeps no remediation records"))?;
        let mut event = record.event().map_err(lifecycle_status)?;
        event.set_state(RemediationState::Rejected);
        let reason = reason.chars().take(500).collect::<String>();
        let reason = reason.lines().next().unwrap_or("").trim();
        event.message = match reason {
            "" => format!("rejected by {}", who(by)),
            reason => format!("rejected by {}: {reason}", who(by)),
        };
        let now = chrono::Utc::now();
        event.at = Some(selfheal_proto::time::timestamp(now));
        let state = lifecycle
            .record(&event, &record.subject_service, now)
            .await
            .map_err(lifecycle_status)?;
        if state != RemediationState::Rejected {
            return Err(Status::failed_precondition(format!(
                "remediation {} became {} meanwhile",
                record.incident,
                names::state(state)
            )));
        }
        // A local branch is left as it is, for the record; a forge's proposal is closed.
        let (forge, branch) = (self.handler.reconciler().forge().cloned(), event.branch.clone());
        if let Some(forge) = forge
            && !branch.is_empty()
        {
            let withdrawn = tokio::task::spawn_blocking(move || forge.withdraw(&branch))
                .await
                .map_err(|e| {
                    selfheal_telemetry::errors::hidden(tonic::Code::Internal, "closing the pull request failed", &e)
                })?;
            if let Err(error) = withdrawn {
                tracing::warn!(incident.key = %record.incident, error = %error, "pull request not closed");
                event.message = format!("{}; the pull request could not be closed: {error}", event.message);
            }
        }
        let span = tracing::info_span!(
            "pr_controller.operator",
            rpc.system = "grpc",
            rpc.service = "selfheal.v1.Remediations",
            rpc.method = "Reject",
            selfheal.incident.key = %record.incident
        );
        self.handler
            .publish(&record.subject_service, &event, &span)
            .await
            .map_err(Status::from)?;
        Ok(event)
    }
}

/// The most labels a `DescribeTarget` may carry, and the longest value.
const MAX_LABELS: usize = 128;
const MAX_LABEL_VALUE: usize = 1024;

impl RemediationsService {
    /// `DescribeTarget`'s work, in its span.
    async fn describe(&self, mut request: DescribeTargetRequest) -> Result<Response<Target>, Status> {
        if request.labels.len() > MAX_LABELS {
            return Err(Status::invalid_argument(format!("labels: more than {MAX_LABELS}")));
        }
        let mut labels = BTreeMap::new();
        for (name, value) in std::mem::take(&mut request.labels) {
            if !crate::reconcile::is_label_name(&name) {
                return Err(Status::invalid_argument(format!(
                    "labels: {:?} is not a label name",
                    name.chars().take(64).collect::<String>()
                )));
            }
            if value.len() > MAX_LABEL_VALUE {
                return Err(Status::invalid_argument(format!(
                    "labels.{name}: longer than {MAX_LABEL_VALUE} bytes"
                )));
            }
            labels.insert(name, value);
        }
        for (name, value) in [
            ("service", request.service),
            ("cluster", request.cluster),
            ("namespace", request.namespace),
        ] {
            if value.is_empty() {
                continue;
            }
            if !is_dns1123_label(&value) {
                return Err(Status::invalid_argument(format!("{name}: must be a DNS-1123 label")));
            }
            labels.insert(name.to_string(), value);
        }
        match labels.get("service") {
            None => return Err(Status::invalid_argument("service: is required")),
            Some(service) if !is_dns1123_label(service) => {
                return Err(Status::invalid_argument("service: must be a DNS-1123 label"));
            }
            Some(_) => {}
        }
        let reconciler = self.handler.reconciler().clone();
        let targets = self.targets.clone();
        let asked = std::time::Instant::now();
        let turn = self
            .reading
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("the service is stopping"))?;
        let described = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let described = reconciler.describe_with(&labels, &targets);
            drop(turn);
            tracing::debug!(
                waited_us = (started - asked).as_micros() as u64,
                took_us = started.elapsed().as_micros() as u64,
                "target described"
            );
            described
        })
        .await
        .map_err(|e| selfheal_telemetry::errors::hidden(tonic::Code::Internal, "describing the target failed", &e))?;
        match described {
            Ok(target) => Ok(Response::new(target)),
            Err(ReconcileError::Refused(reason)) => Err(Status::failed_precondition(reason)),
            Err(ReconcileError::Edit(error)) => Err(Status::failed_precondition(error.to_string())),
            Err(ReconcileError::Repo(error)) => Err(selfheal_telemetry::errors::hidden(
                tonic::Code::Unavailable,
                "the repository cannot be read now; try again",
                &error,
            )),
        }
    }
}

#[tonic::async_trait]
impl Remediations for RemediationsService {
    async fn describe_target(&self, request: Request<DescribeTargetRequest>) -> Result<Response<Target>, Status> {
        require(&request, Role::Describe)?;
        let span = selfheal_telemetry::rpc_span!(
            "pr_controller.describe_target",
            "server",
            "selfheal.v1.Remediations",
            "DescribeTarget"
        );
        selfheal_telemetry::propagation::set_parent_from_metadata(&span, request.metadata());
        self.describe(request.into_inner()).instrument(span).await
    }

    async fn get(&self, request: Request<GetRemediationRequest>) -> Result<Response<RemediationEvent>, Status> {
        require(&request, Role::Read)?;
        let record = self.record(&request.into_inner().incident_key).await?;
        Ok(Response::new(record.event().map_err(lifecycle_status)?))
    }

    async fn list(
        &self,
        request: Request<ListRemediationsRequest>,
    ) -> Result<Response<ListRemediationsResponse>, Status> {
        require(&request, Role::Read)?;
        let request = request.into_inner();
        let state = RemediationState::try_from(request.state)
            .map_err(|_| Status::invalid_argument(format!("state: {} is not a remediation state", request.state)))?;
        if !request.service.is_empty() && !is_dns1123_label(&request.service) {
            return Err(Status::invalid_argument("service: must be a DNS-1123 label"));
        }
        let limit = match request.limit {
            0 => 100,
            n if n > 1000 => return Err(Status::invalid_argument("limit: at most 1000")),
            n => n as usize,
        };
        let lifecycle = self
            .handler
            .lifecycle()
            .ok_or_else(|| Status::unimplemented("this pr-controller keeps no remediation records"))?;
        let mut remediations = Vec::new();
        for record in lifecycle.list().await.map_err(lifecycle_status)? {
            if state != RemediationState::Unspecified && record.state != state {
                continue;
            }
            let Ok(event) = record.event() else { continue };
            if !request.service.is_empty() && event.service != request.service {
                continue;
            }
            remediations.push(event);
            if remediations.len() == limit {
                break;
            }
        }
        Ok(Response::new(ListRemediationsResponse { remediations }))
    }

    async fn approve(&self, request: Request<ApproveRequest>) -> Result<Response<RemediationEvent>, Status> {
        let caller = require(&request, Role::Operate)?;
        let request = request.into_inner();
        let by = actor(&caller, &request.by);
        Ok(Response::new(self.approve_as(&request.incident_key, &by).await?))
    }

    async fn reject(&self, request: Request<RejectRequest>) -> Result<Response<RemediationEvent>, Status> {
        let caller = require(&request, Role::Operate)?;
        let request = request.into_inner();
        let by = actor(&caller, &request.by);
        Ok(Response::new(
            self.reject_as(&request.incident_key, &by, &request.reason).await?,
        ))
    }

    async fn retry(&self, request: Request<RetryRequest>) -> Result<Response<RemediationEvent>, Status> {
        let caller = require(&request, Role::Operate)?;
        let request = request.into_inner();
        let record = self.record(&request.incident_key).await?;
        if record.state != RemediationState::Failed {
            return Err(Status::failed_precondition(format!(
                "remediation {} is {}; only a failed one is retried",
                record.incident,
                names::state(record.state)
            )));
        }
        let note = format!("retried by {}", who(&actor(&caller, &request.by)));
        let event = self.again(&record, None, note).await?;
        Ok(Response::new(event))
    }
}
