//! [`RemediationHandler`]: a decision in, its change made (in the next batch, or alone), the
//! remediation's new state recorded and its event published.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use prost::Message as _;
use selfheal_bus::{
    Delivery, Headers, Outgoing, SharedBus,
    consumer::{Disposition, Handler},
    kv::SharedKeyValue,
    subjects,
};
use selfheal_proto::{
    names,
    v1::{Action, Decision, RemediationEvent, RemediationState},
};
use tracing::Instrument;

use crate::{
    batch::{BatchJob, run_batches},
    reconcile::{ReconcileError, Reconciler},
    sync, verify,
};

/// The durable consumer name.
pub const CONSUMER: &str = "pr-controller";

/// Carries out decisions.
pub struct RemediationHandler {
    reconciler: Arc<Reconciler>,
    bus: SharedBus,
    verifier: Option<verify::Verifier>,
    sync: Option<Arc<sync::SyncNow>>,
    /// On a repository that batches: where decisions queue to be carried out together.
    batches: Option<tokio::sync::mpsc::UnboundedSender<BatchJob>>,
    /// The operators' switches (`selfheal_control`): the kill switch stops decisions still
    /// waiting in the stream, not only new ones.
    control: Option<selfheal_bus::control::KillSwitch>,
    /// The first pause before a failed decision's next try.
    retry_base: Duration,
}

/// What a remediation stopped by the kill switch says.
pub const KILL_SWITCH_REFUSAL: &str =
    "not carried out: the kill switch is on (`selfheal remediations retry` carries it out by hand)";

impl RemediationHandler {
    /// Carries out decisions with `reconciler`, publishing their events on `bus`.
    pub fn new(reconciler: Reconciler, bus: SharedBus) -> Self {
        let reconciler = Arc::new(reconciler);
        let batches = reconciler.git().start_batch().is_some().then(|| {
            let (queue, jobs) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(run_batches(reconciler.clone(), jobs));
            queue
        });
        Self {
            reconciler,
            bus,
            verifier: None,
            sync: None,
            batches,
            control: None,
            retry_base: Duration::from_secs(2),
        }
    }

    /// Reads the kill switch in `control` (the `selfheal_control` bucket) before every automatic
    /// change.
    /// Waits `base` before the first retry of a failed decision, doubling after each.
    pub fn with_retry_base(mut self, base: Duration) -> Self {
        self.retry_base = base;
        self
    }

    pub fn with_kill_switch(mut self, control: SharedKeyValue) -> Self {
        self.control = Some(selfheal_bus::control::KillSwitch::new(control));
        self
    }

    /// Whether the kill switch (on: `switch_on`) stops this automatic decision: it is on, and
    /// the change was not already made (a redelivery after a crash announces a merged change; it
    /// does not undo it). `record` is the remediation's record as read with the switch.
    async fn kill_switch_stops(
        &self,
        decision: &Decision,
        switch_on: bool,
        record: Option<&verify::Record>,
    ) -> Result<bool, CarryOutError> {
        if !switch_on {
            return Ok(false);
        }
        if record.is_some_and(|record| record.state == RemediationState::Merged) {
            return Ok(false);
        }
        // Made, but not yet recorded when the process died: the commit on main says so.
        let (reconciler, decision) = (self.reconciler.clone(), decision.clone());
        let on_main = tokio::task::spawn_blocking(move || reconciler.already_on_main(&decision))
            .await
            .map_err(CarryOutError::Panicked)?
            .map_err(CarryOutError::Repo)?;
        Ok(!on_main)
    }

    /// Whether decisions are carried out in batches (and so several may be in work at once).
    pub fn batches(&self) -> bool {
        self.batches.is_some()
    }

    /// Makes the change `decision` asks for: in the next batch when the repository batches,
    /// otherwise on its own.
    async fn reconcile(
        &self,
        decision: &Decision,
        trace_id: String,
    ) -> Result<Result<RemediationEvent, ReconcileError>, CarryOutError> {
        if let Some(batches) = &self.batches {
            let (outcome, receive) = tokio::sync::oneshot::channel();
            let job = BatchJob {
                decision: decision.clone(),
                trace_id,
                outcome,
            };
            if batches.send(job).is_ok() {
                return receive.await.map_err(|_| CarryOutError::Stopped);
            }
            return Err(CarryOutError::Stopped);
        }
        let reconciler = self.reconciler.clone();
        let decision = decision.clone();
        tokio::task::spawn_blocking(move || reconciler.reconcile(&decision, &trace_id))
            .await
            .map_err(CarryOutError::Panicked)
    }

    /// Asks Argo CD or Flux to apply each merge at once.
    pub fn with_sync(mut self, sync: sync::SyncNow) -> Self {
        self.sync = (!sync.is_empty()).then(|| Arc::new(sync));
        self
    }

    /// Records merged remediations for verification.
    pub fn with_verifier(mut self, verifier: verify::Verifier) -> Self {
        self.verifier = Some(verifier);
        self
    }
}

#[async_trait]
impl Handler for RemediationHandler {
    async fn handle(&self, delivery: &Delivery) -> Disposition {
        let decision = match Decision::decode(delivery.payload.clone()) {
            Ok(decision) => decision,
            Err(error) => return Disposition::Reject(format!("undecodable Decision: {error}")),
        };
        let span = selfheal_telemetry::consumer_span!(
            "pr_controller.reconcile",
            delivery,
            CONSUMER,
            selfheal.incident.key = %decision.incident_key,
            selfheal.action = names::action(decision.action()),
            selfheal.remediation.state = tracing::field::Empty,
        );
        selfheal_telemetry::propagation::set_parent_from_headers(&span, &delivery.headers);
        let service = delivery.subject.rsplit('.').next().unwrap_or("_none").to_string();
        match self
            .carry_out(decision, service, None, span.clone())
            .instrument(span)
            .await
        {
            Ok(_) => Disposition::Ack,
            Err(error) => {
                // Backs off by attempt: base, 2×base, 4×base … up to 30×base (2 s … 1 min).
                let doubling = 1u32 << delivery.delivered.saturating_sub(1).min(5);
                let wait = (self.retry_base * doubling).min(self.retry_base * 30);
                tracing::warn!(error = %error, retry_in_ms = wait.as_millis() as u64, "remediation not finished; retrying");
                Disposition::Retry(wait)
            }
        }
    }
}

/// Why a remediation did not finish this time; trying again later may.
#[derive(Debug, thiserror::Error)]
pub enum CarryOutError {
    /// Git or the forge failed for a reason that may pass.
    #[error("git change failed: {0}")]
    Repo(#[source] ReconcileError),
    #[error("{0}")]
    Store(#[from] verify::VerifyError),
    #[error("event not published: {0}")]
    Publish(#[from] selfheal_bus::BusError),
    /// A bug: the blocking work panicked.
    #[error("reconcile panicked: {0}")]
    Panicked(#[source] tokio::task::JoinError),
    /// The batch writer is gone (the service is stopping).
    #[error("the batch writer has stopped")]
    Stopped,
    #[error("the kill switch could not be read: {0}")]
    Control(#[source] selfheal_bus::kv::KvError),
}

impl From<CarryOutError> for tonic::Status {
    /// What a gRPC caller is told: a bug is `Internal`, anything else may pass (`Unavailable`).
    fn from(error: CarryOutError) -> Self {
        match error {
            CarryOutError::Panicked(_) => {
                selfheal_telemetry::errors::hidden(tonic::Code::Internal, "carrying the decision out failed", &error)
            }
            other => tonic::Status::unavailable(other.to_string()),
        }
    }
}

impl RemediationHandler {
    /// Carries out `decision`, records the remediation's new state and publishes its event
    /// (`None` when there is nothing to do: no action, a dry run, or a remediation that was
    /// rejected or has already ended). Each step is idempotent, so on error the caller tries the
    /// whole again later. `note` (who approved, who retried) leads the event's message.
    pub async fn carry_out(
        &self,
        decision: Decision,
        service: String,
        note: Option<&str>,
        span: tracing::Span,
    ) -> Result<Option<RemediationEvent>, CarryOutError> {
        match decision.action() {
            Action::Rollback | Action::Scale | Action::Restart => {}
            Action::None | Action::Escalate | Action::Unspecified => return Ok(None),
        }
        if decision.dry_run {
            tracing::info!("dry-run decision: nothing changed");
            return Ok(None);
        }
        // The remediation's record and the kill switch, read at once. Approve and Retry (`note`)
        // are people's decisions; the kill switch stops only selfheal's.
        let record = async {
            match &self.verifier {
                Some(verifier) => verifier.get(&decision.incident_key).await,
                None => Ok(None),
            }
        };
        let switch = async {
            match (&self.control, note) {
                (Some(control), None) => control.is_on().await.map_err(CarryOutError::Control),
                _ => Ok(false),
            }
        };
        let (record, switch_on) = futures::join!(record, switch);
        let record = record?;
        if let Some(record) = &record
            && matches!(
                record.state,
                RemediationState::Rejected | RemediationState::Verified | RemediationState::Escalated
            )
        {
            tracing::info!(
                state = names::state(record.state),
                "the remediation has ended; the decision is not carried out again"
            );
            return Ok(None);
        }
        let trace_id = selfheal_telemetry::propagation::trace_id(&span).unwrap_or_default();
        let outcome = if self.kill_switch_stops(&decision, switch_on?, record.as_ref()).await? {
            tracing::warn!("the kill switch is on: the decision is not carried out");
            Err(ReconcileError::Refused(KILL_SWITCH_REFUSAL.into()))
        } else {
            self.reconcile(&decision, trace_id).await?
        };
        let mut event = match outcome {
            Ok(event) => event,
            Err(error) if error.is_transient() => return Err(CarryOutError::Repo(error)),
            Err(error) => failed_event(&decision, &error),
        };
        if let Some(note) = note {
            event.message = format!("{note}: {}", event.message);
        }
        if event.at.is_none() {
            // When the change was made (or refused): the hop "decision → change" ends here.
            event.at = Some(selfheal_proto::time::now());
        }
        if let Some(verifier) = &self.verifier {
            // The change is made; on a store error, the redelivery finds it and records it then.
            let now_in = verifier.record(&event, &service, chrono::Utc::now()).await?;
            if now_in != event.state() {
                // Rejected meanwhile, or ended before: the record stands and nothing is announced.
                tracing::info!(
                    state = names::state(now_in),
                    event = names::state(event.state()),
                    "remediation state kept"
                );
                return Ok(None);
            }
        }
        if let (Some(sync), RemediationState::Merged) = (&self.sync, event.state()) {
            sync.after_merge(&event, &span).await;
        }
        span.record("selfheal.remediation.state", names::state(event.state()));
        if let (Some(decided), RemediationState::Merged | RemediationState::Opened) =
            (decision.decided_at.as_ref(), event.state())
        {
            let decided = decided.seconds as f64 + f64::from(decided.nanos) / 1e9;
            let now = chrono::Utc::now();
            let now = now.timestamp() as f64 + f64::from(now.timestamp_subsec_nanos()) / 1e9;
            metrics::histogram!(selfheal_telemetry::metrics::HOP_DECISION_TO_CHANGE).record((now - decided).max(0.0));
        }
        tracing::info!(commit = %event.commit, branch = %event.branch, from = %event.from_value, to = %event.to_value, message = %event.message, "remediation");
        // The git change is made; if this fails, the redelivery finds it and publishes again.
        publish_event(&self.bus, &service, &event, &span).await?;
        Ok(Some(event))
    }

    /// The lifecycle store, when the handler has one.
    pub fn lifecycle(&self) -> Option<&verify::Verifier> {
        self.verifier.as_ref()
    }

    /// The reconciler the handler uses.
    pub fn reconciler(&self) -> &Arc<Reconciler> {
        &self.reconciler
    }

    /// Publishes `event` for `service`.
    pub async fn publish(
        &self,
        service: &str,
        event: &RemediationEvent,
        span: &tracing::Span,
    ) -> Result<(), CarryOutError> {
        publish_event(&self.bus, service, event, span)
            .await
            .map_err(CarryOutError::from)
    }
}

/// Publishes a remediation event, keyed by incident and state.
pub(crate) async fn publish_event(
    bus: &SharedBus,
    service: &str,
    event: &RemediationEvent,
    span: &tracing::Span,
) -> Result<(), selfheal_bus::BusError> {
    let mut headers = Headers::new();
    selfheal_telemetry::propagation::inject_headers(span, &mut headers);
    let state = names::state(event.state());
    let action = names::action(event.action());
    metrics::counter!(selfheal_telemetry::metrics::REMEDIATIONS, "action" => action, "state" => state).increment(1);
    metrics::counter!(selfheal_telemetry::metrics::ACTIONS, "action" => action, "result" => state).increment(1);
    match event.state() {
        RemediationState::Verified => {
            metrics::counter!(selfheal_telemetry::metrics::VERIFICATIONS, "result" => "verified").increment(1);
            metrics::histogram!(selfheal_telemetry::metrics::HOP_MERGE_TO_RESOLVED)
                .record((event.mttr_seconds - event.time_to_remediate_seconds).max(0.0));
            metrics::histogram!(selfheal_telemetry::metrics::MTTR_SECONDS).record(event.mttr_seconds);
            metrics::histogram!(selfheal_telemetry::metrics::REMEDIATION_SECONDS)
                .record(event.time_to_remediate_seconds);
        }
        RemediationState::Escalated => {
            metrics::counter!(selfheal_telemetry::metrics::VERIFICATIONS, "result" => "escalated").increment(1);
        }
        _ => {}
    }
    bus.publish(Outgoing {
        subject: subjects::remediation(service),
        msg_id: format!("remediation.{}.{}", event.incident_key, state),
        headers,
        payload: event.encode_to_vec().into(),
    })
    .await
    .map(|_| ())
}

fn failed_event(decision: &Decision, error: &ReconcileError) -> RemediationEvent {
    let now = chrono::Utc::now();
    let service = decision
        .alert
        .as_ref()
        .and_then(|e| e.alert.as_ref())
        .and_then(|a| a.labels.get("service"))
        .filter(|s| names::is_dns1123_label(s))
        .cloned()
        .unwrap_or_default();
    let mut event = RemediationEvent {
        incident_key: decision.incident_key.clone(),
        action: decision.action,
        service,
        message: error.to_string(),
        decision: Some(decision.clone()),
        at: Some(selfheal_proto::time::timestamp(now)),
        ..Default::default()
    };
    event.set_state(RemediationState::Failed);
    event
}
