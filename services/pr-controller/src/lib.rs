//! The pr-controller: selfheal's execution layer.
//!
//! Consumes `selfheal.decisions.>` (durable `pr-controller`). For a `rollback` or `scale`
//! decision it edits the service's kustomization on a branch `selfheal/<incident>` of the GitOps
//! repository and, when the decision's approval is `auto`, merges it into the main branch (on a
//! local repository, an approved change is committed straight onto main, marked with its
//! incident; decisions are carried out in batches written at once).
//! It publishes a [`RemediationEvent`](selfheal_proto::v1::RemediationEvent) on
//! `selfheal.remediations.<service>` (message id `remediation.<incident>.<state>`) and acks the
//! decision only after that. The reconciler is idempotent per incident, so a redelivered
//! decision finds its branch and reports it instead of committing again.

pub mod config;
pub mod edit;
pub mod github;
pub mod grpc;
pub mod reconcile;
pub mod repo;
pub mod sync;
pub mod verify;

use std::{future::Future, sync::Arc, time::Duration};

use async_trait::async_trait;
use prost::Message as _;
use selfheal_bus::{
    ConsumerSpec, Delivery, Headers, Outgoing, SharedBus,
    consumer::{self, Disposition, Handler},
    kv::SharedKeyValue,
    subjects,
};
use selfheal_proto::{
    Timestamp, names,
    v1::{Action, Decision, RemediationEvent, RemediationState},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use config::PrControllerConfig;
use reconcile::{ReconcileError, Reconciler};
use repo::Repository;

/// The durable consumer name.
pub const CONSUMER: &str = "pr-controller";
/// The durable consumer of resolved alerts (verification).
pub const VERIFY_CONSUMER: &str = "pr-controller-verify";

/// Carries out decisions.
pub struct RemediationHandler {
    reconciler: Arc<Reconciler<dyn Repository>>,
    bus: SharedBus,
    verifier: Option<verify::Verifier>,
    sync: Option<Arc<sync::SyncNow>>,
    /// On a repository that batches: where decisions queue to be carried out together.
    batches: Option<tokio::sync::mpsc::UnboundedSender<BatchJob>>,
    /// The operators' switches (`selfheal_control`): the kill switch stops decisions still
    /// waiting in the stream, not only new ones.
    control: Option<selfheal_bus::control::KillSwitch>,
}

/// What a remediation stopped by the kill switch says.
pub const KILL_SWITCH_REFUSAL: &str =
    "not carried out: the kill switch is on (`selfheal remediations retry` carries it out by hand)";

/// A decision waiting for the next batch, and where its outcome goes.
struct BatchJob {
    decision: Decision,
    trace_id: String,
    outcome: tokio::sync::oneshot::Sender<Result<RemediationEvent, ReconcileError>>,
}

/// At most this many decisions are carried out in one batch.
const BATCH_MAX: usize = 64;

impl RemediationHandler {
    pub fn new(repo: Arc<dyn Repository>, config: PrControllerConfig, bus: SharedBus) -> Self {
        let batches = repo.start_batch().is_some().then(|| {
            let (queue, jobs) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(run_batches(repo.clone(), config.clone(), jobs));
            queue
        });
        Self {
            reconciler: Arc::new(Reconciler { repo, config }),
            bus,
            verifier: None,
            sync: None,
            batches,
            control: None,
        }
    }

    /// Reads the kill switch in `control` (the `selfheal_control` bucket) before every automatic
    /// change.
    pub fn with_kill_switch(mut self, control: SharedKeyValue) -> Self {
        self.control = Some(selfheal_bus::control::KillSwitch::new(control));
        self
    }

    /// Whether the kill switch stops this automatic decision: it is on, and the change was not
    /// already made (a redelivery after a crash announces a merged change; it does not undo it).
    async fn kill_switch_stops(&self, decision: &Decision) -> Result<bool, CarryOutError> {
        let Some(control) = &self.control else { return Ok(false) };
        if !control
            .is_on()
            .await
            .map_err(|e| CarryOutError::Control(e.to_string()))?
        {
            return Ok(false);
        }
        if let Some(verifier) = &self.verifier
            && let Some(record) = verifier.get(&decision.incident_key).await?
            && record.state == "merged"
        {
            return Ok(false);
        }
        // Made, but not yet recorded when the process died: the commit on main says so.
        let (reconciler, decision) = (self.reconciler.clone(), decision.clone());
        let on_main = tokio::task::spawn_blocking(move || reconciler.already_on_main(&decision))
            .await
            .map_err(|e| CarryOutError::Panicked(e.to_string()))?
            .map_err(|e| CarryOutError::Repo(e.to_string()))?;
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
                return receive
                    .await
                    .map_err(|_| CarryOutError::Panicked("the batch was dropped".into()));
            }
            return Err(CarryOutError::Panicked("the batch writer has stopped".into()));
        }
        let reconciler = self.reconciler.clone();
        let decision = decision.clone();
        tokio::task::spawn_blocking(move || reconciler.reconcile(&decision, &trace_id))
            .await
            .map_err(|e| CarryOutError::Panicked(e.to_string()))
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
                // Backs off by attempt: 2 s, 4 s, 8 s ... up to a minute.
                let wait = Duration::from_secs(2u64.saturating_pow(delivery.delivered.clamp(1, 6) as u32).min(60));
                tracing::warn!(error = %error, retry_in_s = wait.as_secs(), "remediation not finished; retrying");
                Disposition::Retry(wait)
            }
        }
    }
}

/// Carries out queued decisions in batches until every sender is gone: each batch takes what is
/// queued (up to [`BATCH_MAX`]), makes every change in memory, one after the other (so each sees
/// the ones before it), writes them all at once, and only then answers. If the write fails,
/// every decision of the batch that changed something fails with it, to be tried again.
async fn run_batches(
    repo: Arc<dyn Repository>,
    config: PrControllerConfig,
    mut jobs: tokio::sync::mpsc::UnboundedReceiver<BatchJob>,
) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (repo, config) = (repo.clone(), config.clone());
        let work: Vec<(Decision, String)> = batch.iter().map(|j| (j.decision.clone(), j.trace_id.clone())).collect();
        let outcomes = tokio::task::spawn_blocking(move || carry_out_together(repo, config, &work)).await;
        match outcomes {
            Ok(outcomes) => {
                for (job, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = job.outcome.send(outcome);
                }
            }
            // A panic: dropping the senders fails every decision of the batch, to be retried.
            Err(error) => tracing::error!(error = %error, "a batch panicked"),
        }
    }
}

/// Makes every change of `work` in one batch and writes it: blocking.
fn carry_out_together(
    repo: Arc<dyn Repository>,
    config: PrControllerConfig,
    work: &[(Decision, String)],
) -> Vec<Result<RemediationEvent, ReconcileError>> {
    let Some(batch) = repo.start_batch() else {
        let reconciler = Reconciler { repo, config };
        return work.iter().map(|(d, t)| reconciler.reconcile(d, t)).collect();
    };
    let reconciler = Reconciler {
        repo: batch.clone() as Arc<dyn Repository>,
        config,
    };
    let started = std::time::Instant::now();
    let outcomes: Vec<_> = work.iter().map(|(d, t)| reconciler.reconcile(d, t)).collect();
    let flushed = batch.flush();
    match flushed {
        Ok(refs) => {
            tracing::debug!(
                decisions = work.len(),
                refs,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "batch written"
            );
            outcomes
        }
        Err(error) => {
            tracing::warn!(error = %error, decisions = work.len(), "batch not written; its decisions will be tried again");
            // Refusals too: one may rest on a change of the batch that was never written.
            outcomes
                .iter()
                .map(|_| {
                    Err(ReconcileError::Repo(repo::RepoError::Git(format!(
                        "the batch was not written: {error}"
                    ))))
                })
                .collect()
        }
    }
}

/// Why a remediation did not finish this time; trying again later may.
#[derive(Debug, thiserror::Error)]
pub enum CarryOutError {
    #[error("git change failed: {0}")]
    Repo(String),
    #[error("{0}")]
    Store(#[from] verify::VerifyError),
    #[error("event not published: {0}")]
    Publish(#[from] selfheal_bus::BusError),
    #[error("reconcile panicked: {0}")]
    Panicked(String),
    #[error("the kill switch could not be read: {0}")]
    Control(String),
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
        if let Some(verifier) = &self.verifier
            && let Some(record) = verifier.get(&decision.incident_key).await?
            && matches!(record.state.as_str(), "rejected" | "verified" | "escalated")
        {
            tracing::info!(state = %record.state, "the remediation has ended; the decision is not carried out again");
            return Ok(None);
        }
        let trace_id = selfheal_telemetry::propagation::trace_id(&span).unwrap_or_default();
        // Approve and Retry (`note`) are people's decisions; the kill switch stops only selfheal's.
        let outcome = if note.is_none() && self.kill_switch_stops(&decision).await? {
            tracing::warn!("the kill switch is on: the decision is not carried out");
            Err(ReconcileError::Refused(KILL_SWITCH_REFUSAL.into()))
        } else {
            self.reconcile(&decision, trace_id).await?
        };
        let mut event = match outcome {
            Ok(event) => event,
            Err(error) if error.is_transient() => return Err(CarryOutError::Repo(error.to_string())),
            Err(error) => failed_event(&decision, &error),
        };
        if let Some(note) = note {
            event.message = format!("{note}: {}", event.message);
        }
        if event.at.is_none() {
            // When the change was made (or refused): the hop "decision → change" ends here.
            let now = chrono::Utc::now();
            event.at = Some(Timestamp {
                seconds: now.timestamp(),
                nanos: now.timestamp_subsec_nanos() as i32,
            });
        }
        if let Some(verifier) = &self.verifier {
            // The change is made; on a store error, the redelivery finds it and records it then.
            let now_in = verifier.record(&event, &service, chrono::Utc::now()).await?;
            if now_in != names::state(event.state()) {
                // Rejected meanwhile, or ended before: the record stands and nothing is announced.
                tracing::info!(state = %now_in, event = names::state(event.state()), "remediation state kept");
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
    pub fn reconciler(&self) -> &Arc<Reconciler<dyn Repository>> {
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
async fn publish_event(
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

/// Verifies merged remediations when their alert resolves.
pub struct VerifyHandler {
    verifier: verify::Verifier,
    bus: SharedBus,
}

#[async_trait]
impl Handler for VerifyHandler {
    async fn handle(&self, delivery: &Delivery) -> Disposition {
        let alert = match selfheal_proto::v1::AlertEvent::decode(delivery.payload.clone()) {
            Ok(alert) => alert,
            Err(error) => return Disposition::Reject(format!("undecodable AlertEvent: {error}")),
        };
        let span = selfheal_telemetry::consumer_span!(
            "pr_controller.verify",
            delivery,
            VERIFY_CONSUMER,
            selfheal.incident.key = %alert.incident_key,
        );
        selfheal_telemetry::propagation::set_parent_from_headers(&span, &delivery.headers);
        let verified = match self.verifier.resolve(&alert, chrono::Utc::now()).await {
            Ok(verified) => verified,
            Err(error) => {
                tracing::warn!(parent: &span, error = %error, "verification failed; retrying");
                return Disposition::Retry(Duration::from_secs(1));
            }
        };
        let Some((service, event)) = verified else {
            return Disposition::Ack;
        };
        tracing::info!(parent: &span, mttr_seconds = event.mttr_seconds, "remediation verified");
        match publish_event(&self.bus, &service, &event, &span).await {
            Ok(()) => Disposition::Ack,
            Err(error) => {
                // The record says verified; the event is published again only if the stream
                // did not store it, which the message id makes safe.
                tracing::warn!(parent: &span, error = %error, "verified event not published; retrying");
                Disposition::Retry(Duration::from_secs(1))
            }
        }
    }
}

/// One verification sweep: every merged remediation past its window is escalated — after
/// selfheal reverted its own change, when `revert_with` is given and the kill switch in `control`
/// is off — and the events published. A revert that fails for a transient reason (or a kill
/// switch that cannot be read) leaves the remediation for the next sweep.
pub async fn sweep_once(
    verifier: &verify::Verifier,
    revert_with: Option<&Arc<Reconciler<dyn Repository>>>,
    control: Option<&SharedKeyValue>,
    bus: &SharedBus,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<usize, verify::VerifyError> {
    let mut escalated = 0;
    for (incident, merged) in verifier.overdue(now).await? {
        let span = tracing::info_span!("pr_controller.escalate", selfheal.incident.key = %incident);
        let mut note = String::new();
        let mut revert_with = revert_with;
        if revert_with.is_some()
            && let Some(control) = control
        {
            match selfheal_bus::control::kill_switch_on(control).await {
                Ok(false) => {}
                Ok(true) => {
                    note = "; not reverted: the kill switch is on".into();
                    revert_with = None;
                }
                Err(error) => {
                    tracing::warn!(parent: &span, error = %error, "kill switch not read; trying again next sweep");
                    continue;
                }
            }
        }
        if let Some(reconciler) = revert_with {
            let (reconciler, to_revert) = (reconciler.clone(), merged.clone());
            let trace_id = selfheal_telemetry::propagation::trace_id(&span).unwrap_or_default();
            match tokio::task::spawn_blocking(move || reconciler.revert(&to_revert, &trace_id)).await {
                Ok(Ok(revert)) => {
                    note = format!(
                        "; selfheal reverted its change in {}",
                        revert.commit.chars().take(12).collect::<String>()
                    );
                    if let Err(error) = publish_event(bus, &merged.service, &revert, &span).await {
                        tracing::warn!(parent: &span, error = %error, "revert event not published");
                    }
                }
                Ok(Err(error)) if error.is_transient() => {
                    tracing::warn!(parent: &span, error = %error, "revert failed; trying again next sweep");
                    continue;
                }
                Ok(Err(error)) => note = format!("; the revert was not possible: {error}"),
                Err(error) => {
                    tracing::error!(parent: &span, error = %error, "revert panicked");
                    continue;
                }
            }
        }
        if let Some((service, event)) = verifier.escalate(&incident, now, &note).await? {
            tracing::warn!(parent: &span, message = %event.message, "remediation escalated");
            if let Err(error) = publish_event(bus, &service, &event, &span).await {
                tracing::warn!(parent: &span, error = %error, "escalation not published");
            }
            escalated += 1;
        }
    }
    Ok(escalated)
}

fn failed_event(decision: &Decision, error: &ReconcileError) -> RemediationEvent {
    let now = chrono::Utc::now();
    let service = decision
        .alert
        .as_ref()
        .and_then(|e| e.alert.as_ref())
        .and_then(|a| a.labels.get("service"))
        .filter(|s| reconcile::is_dns1123_label(s))
        .cloned()
        .unwrap_or_default();
    let mut event = RemediationEvent {
        incident_key: decision.incident_key.clone(),
        action: decision.action,
        service,
        message: error.to_string(),
        decision: Some(decision.clone()),
        at: Some(Timestamp {
            seconds: now.timestamp(),
            nanos: now.timestamp_subsec_nanos() as i32,
        }),
        ..Default::default()
    };
    event.set_state(RemediationState::Failed);
    event
}

/// Where the pr-controller serves.
pub struct Listeners {
    /// `/healthz`, `/readyz`, `/metrics`.
    pub http: TcpListener,
    /// gRPC `selfheal.v1.Remediations`.
    pub grpc: TcpListener,
}

/// `/readyz`: the bus is connected and, on a repository of its own (not a forge's), main can be
/// read. A repository that is gone, unreadable or without main fails every remediation, so the
/// replica must not look ready. A forge is not called on every probe (GitHub counts the calls);
/// its failures show as failed remediations and in the logs.
pub fn readiness(
    bus: SharedBus,
    repo: Arc<dyn Repository>,
    main: String,
) -> selfheal_telemetry::health::ReadinessCheck {
    Arc::new(move || {
        let (bus, repo, main) = (bus.clone(), repo.clone(), main.clone());
        Box::pin(async move {
            bus.ready().await.map_err(|e| e.to_string())?;
            if repo.proposes() {
                return Ok(());
            }
            let location = repo.location();
            let tip = tokio::task::spawn_blocking(move || repo.branch_tip(&main).map(|tip| (tip, main)))
                .await
                .map_err(|e| format!("reading the repository panicked: {e}"))?
                .map_err(|e| format!("the repository {location} cannot be read: {e}"))?;
            match tip {
                (Some(_), _) => Ok(()),
                (None, main) => Err(format!("the repository {location} has no branch {main}")),
            }
        })
    })
}

/// Runs the consumer, the gRPC service and the health endpoints until `shutdown` completes.
pub async fn run(
    config: PrControllerConfig,
    repo: Arc<dyn Repository>,
    bus: SharedBus,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let token = selfheal_config::Secret::inline_or_file(config.grpc_token.clone(), config.grpc_token_file.as_deref())?
        .ok_or_else(|| anyhow::anyhow!("no gRPC token: set SELFHEAL_PR_CONTROLLER_GRPC_TOKEN or grpc_token_file"))?;
    let cancel = CancellationToken::new();
    let (repo_for_ready, main_branch) = (repo.clone(), config.main_branch.clone());
    let (verify_window, verify_interval, auto_revert, ack_wait, concurrency) = (
        config.verify_window,
        config.verify_interval,
        config.auto_revert,
        config.ack_wait,
        config.concurrency,
    );
    let remediations = bus
        .key_value(verify::BUCKET, verify_window * 4 + Duration::from_secs(24 * 3600))
        .await?;
    let mut verifier = verify::Verifier::new(remediations, verify_window);
    for (action, window) in &config.verify_windows {
        let window = humantime::parse_duration(window)
            .map_err(|e| anyhow::anyhow!("verify_windows.{action}: {e} (use e.g. \"5m\")"))?;
        verifier = verifier.with_window(action, window);
    }
    let sync = sync::SyncNow::from_config(&config.sync)?;
    let control = selfheal_bus::control::open(&bus).await?;
    let handler = Arc::new(
        RemediationHandler::new(repo, config, bus.clone())
            .with_verifier(verifier.clone())
            .with_sync(sync)
            .with_kill_switch(control.clone()),
    );
    let reconciler = handler.reconciler.clone();
    {
        // Read main's history now rather than on the first decision (a large repository takes
        // seconds); decisions arriving meanwhile wait on the same index, not on a second walk.
        let reconciler = reconciler.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let main = reconciler.config.main_branch.clone();
            match reconciler.repo.warm(&main) {
                Ok(()) => {
                    tracing::info!(branch = %main, elapsed_ms = started.elapsed().as_millis() as u64, "history read")
                }
                Err(error) => tracing::warn!(branch = %main, error = %error, "history not read ahead"),
            }
        });
    }
    let grpc_handler = handler.clone();
    let mut decisions = ConsumerSpec::new(CONSUMER, &[subjects::DECISIONS]);
    decisions.ack_wait = ack_wait;
    decisions.concurrency = if handler.batches() { concurrency.max(1) } else { 1 };
    let consumer_task = tokio::spawn(consumer::run(
        bus.clone(),
        decisions,
        handler,
        cancel.clone().cancelled_owned(),
    ));
    tokio::spawn(selfheal_telemetry::metrics::sample_consumer_lag(
        bus.clone(),
        vec![CONSUMER.to_string(), VERIFY_CONSUMER.to_string()],
        Duration::from_secs(5),
        cancel.clone().cancelled_owned(),
    ));
    let verify_task = tokio::spawn(consumer::run(
        bus.clone(),
        ConsumerSpec::new(VERIFY_CONSUMER, &["selfheal.alerts.resolved.>"]),
        Arc::new(VerifyHandler {
            verifier: verifier.clone(),
            bus: bus.clone(),
        }),
        cancel.clone().cancelled_owned(),
    ));
    let sweep_task = {
        let (bus, cancel) = (bus.clone(), cancel.clone());
        let revert_with = auto_revert.then(|| reconciler.clone());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(verify_interval);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                let swept = sweep_once(
                    &verifier,
                    revert_with.as_ref(),
                    Some(&control),
                    &bus,
                    chrono::Utc::now(),
                )
                .await;
                if let Err(error) = swept {
                    tracing::warn!(error = %error, "verification sweep failed");
                }
            }
        })
    };
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<selfheal_proto::v1::remediations_server::RemediationsServer<grpc::RemediationsService>>()
        .await;
    tracing::info!(http = %listeners.http.local_addr()?, grpc = %listeners.grpc.local_addr()?, "pr-controller running");
    let grpc_task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(grpc::server(grpc_handler, token))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listeners.grpc).with_nodelay(Some(true)),
                cancel.clone().cancelled_owned(),
            ),
    );
    let health = selfheal_telemetry::health::router(
        readiness(bus, repo_for_ready, main_branch),
        selfheal_telemetry::metrics::install(),
    );
    let http_task = tokio::spawn(
        axum::serve(listeners.http, health)
            .with_graceful_shutdown(cancel.clone().cancelled_owned())
            .into_future(),
    );
    shutdown.await;
    cancel.cancel();
    consumer_task.await??;
    verify_task.await??;
    sweep_task.await?;
    grpc_task.await??;
    http_task.await??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use anyhow::Context as _;

    use futures::StreamExt;
    use selfheal_bus::{Bus, memory::MemoryBus};
    use selfheal_proto::v1::{Alert, AlertEvent, Approval};

    use super::*;
    use crate::repo::{Author, LocalRepository};

    fn rollback(incident: &str, service: &str) -> Decision {
        let labels = [("service", service), ("alertname", "HighErrorRate")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut decision = Decision {
            incident_key: incident.into(),
            reason: "error rate".into(),
            alert: Some(AlertEvent {
                alert: Some(Alert {
                    status: "firing".into(),
                    labels,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        decision.set_action(Action::Rollback);
        decision.set_approval(Approval::Auto);
        decision
    }

    #[test]
    fn a_batch_that_cannot_be_written_fails_every_decision_in_it() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let bare = dir.path().join("gitops.git");
        let author = Author {
            name: "dev".into(),
            email: "dev@example.com".into(),
        };
        let file = |service: &str, tag: &str| format!("images:\n- name: {service}\n  newTag: {tag}\n");
        let (alpha1, alpha2, beta1) = (file("alpha", "v1"), file("alpha", "v2"), file("beta", "v1"));
        let repo = LocalRepository::init_bare_with_commits(
            &bare,
            "main",
            &[
                (
                    "v1",
                    vec![
                        ("apps/alpha/kustomization.yaml", alpha1.as_str()),
                        ("apps/beta/kustomization.yaml", beta1.as_str()),
                    ],
                ),
                ("alpha v2", vec![("apps/alpha/kustomization.yaml", alpha2.as_str())]),
            ],
            &author,
        )?;
        let repo: Arc<dyn Repository> = Arc::new(repo);
        let git = |args: &[&str]| -> anyhow::Result<String> {
            let out = Command::new("git").arg("--git-dir").arg(&bare).args(args).output()?;
            Ok(String::from_utf8(out.stdout)?.trim().to_string())
        };
        let main_before = git(&["rev-parse", "main"])?;
        // alpha can roll back to v1; beta has no earlier tag, so it is refused (on what the
        // batch sees).
        let work = vec![
            (rollback("aaaa", "alpha"), String::new()),
            (rollback("bbbb", "beta"), String::new()),
        ];

        // Someone holds main's lock: the batch is made in memory but cannot be written.
        std::fs::write(bare.join("refs/heads/main.lock"), "")?;
        let outcomes = carry_out_together(repo.clone(), PrControllerConfig::default(), &work);
        assert_eq!(outcomes.len(), 2);
        for outcome in &outcomes {
            assert!(
                matches!(outcome, Err(error) if error.is_transient()),
                "every decision, the refusal too, is to be tried again: {outcome:?}"
            );
        }
        assert_eq!(git(&["rev-parse", "main"])?, main_before, "nothing written");

        // The lock gone, the same work: alpha rolled back once, beta refused.
        std::fs::remove_file(bare.join("refs/heads/main.lock"))?;
        let outcomes = carry_out_together(repo, PrControllerConfig::default(), &work);
        let alpha = outcomes[0].as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        assert_eq!(alpha.state(), RemediationState::Merged);
        assert_eq!((alpha.from_value.as_str(), alpha.to_value.as_str()), ("v2", "v1"));
        assert_eq!(git(&["rev-parse", "main"])?, alpha.commit);
        assert!(
            matches!(&outcomes[1], Err(ReconcileError::Refused(_))),
            "{:?}",
            outcomes[1]
        );
        assert_eq!(
            git(&["rev-list", "--count", "main"])?,
            "3",
            "one commit for the one change"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_hostile_label_becomes_a_failed_event_and_writes_nothing() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let bare = dir.path().join("gitops.git");
        let author = Author {
            name: "dev".into(),
            email: "dev@example.com".into(),
        };
        let repo = LocalRepository::init_bare_with_commits(
            &bare,
            "main",
            &[(
                "init",
                vec![(
                    "apps/checkout/kustomization.yaml",
                    "images:\n- name: checkout\n  newTag: v1\n",
                )],
            )],
            &author,
        )?;
        let refs = || {
            Command::new("git")
                .arg("--git-dir")
                .arg(&bare)
                .args(["for-each-ref"])
                .output()
        };
        let refs_before = refs()?.stdout;
        let bus = MemoryBus::default();
        let handler = RemediationHandler::new(Arc::new(repo), PrControllerConfig::default(), Arc::new(bus.clone()));

        let decision = rollback("0123456789abcdef", "a\nb: c");
        bus.publish(selfheal_bus::Outgoing {
            subject: subjects::decision("_none"),
            msg_id: "decision.0123456789abcdef".into(),
            headers: Headers::new(),
            payload: decision.encode_to_vec().into(),
        })
        .await?;
        let mut deliveries = bus.subscribe(ConsumerSpec::new("test", &[subjects::DECISIONS])).await?;
        let delivery = deliveries
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("no delivery"))??;
        assert_eq!(handler.handle(&delivery).await, Disposition::Ack);

        let events: Vec<RemediationEvent> = bus
            .messages()
            .into_iter()
            .filter(|m| m.subject.starts_with("selfheal.remediations."))
            .map(|m| RemediationEvent::decode(m.payload))
            .collect::<Result<_, _>>()?;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].state(), RemediationState::Failed);
        assert!(events[0].message.contains("service label"), "{}", events[0].message);
        assert!(!events[0].message.contains("b: c"), "the hostile value is not echoed");
        assert_eq!(refs()?.stdout, refs_before, "nothing was written");
        Ok(())
    }

    /// A bare repository at `bare` whose main has checkout's kustomization at v1, then at v2;
    /// with the file's two texts.
    fn checkout_at_v1_then_v2(bare: &std::path::Path) -> anyhow::Result<(LocalRepository, String, String)> {
        let author = Author {
            name: "dev".into(),
            email: "dev@example.com".into(),
        };
        let kustomization = |tag: &str| format!("images:\n- name: ghcr.io/acme/checkout\n  newTag: {tag} # release\n");
        let (v1, v2) = (kustomization("v1"), kustomization("v2"));
        let repo = LocalRepository::init_bare_with_commits(
            bare,
            "main",
            &[
                ("v1", vec![("apps/checkout/kustomization.yaml", v1.as_str())]),
                ("v2", vec![("apps/checkout/kustomization.yaml", v2.as_str())]),
            ],
            &author,
        )?;
        Ok((repo, v1, v2))
    }

    #[tokio::test]
    async fn not_ready_without_the_repository_main() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let bare = dir.path().join("gitops.git");
        let (repo, _, _) = checkout_at_v1_then_v2(&bare)?;
        let bus: SharedBus = Arc::new(MemoryBus::default());
        let ready = readiness(bus, Arc::new(repo), "main".into());
        assert_eq!(ready().await, Ok(()));
        // main deleted (a wrong repository, a broken mirror): not ready, and why.
        let out = Command::new("git")
            .current_dir(&bare)
            .args(["update-ref", "-d", "refs/heads/main"])
            .output()?;
        anyhow::ensure!(out.status.success(), "git update-ref: {out:?}");
        let reason = ready().await.expect_err("not ready without main");
        assert!(reason.contains("has no branch main"), "{reason}");
        // The repository gone altogether.
        std::fs::remove_dir_all(&bare)?;
        let reason = ready().await.expect_err("not ready without the repository");
        assert!(reason.contains(&bare.display().to_string()), "{reason}");
        Ok(())
    }

    #[tokio::test]
    async fn the_kill_switch_stops_waiting_decisions_but_not_people() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let bare = dir.path().join("gitops.git");
        let (repo, _, _) = checkout_at_v1_then_v2(&bare)?;
        let main = || -> anyhow::Result<String> {
            let out = Command::new("git")
                .arg("--git-dir")
                .arg(&bare)
                .args(["rev-parse", "main"])
                .output()?;
            Ok(String::from_utf8(out.stdout)?.trim().to_string())
        };
        let before = main()?;
        let bus: SharedBus = Arc::new(MemoryBus::default());
        let control = selfheal_bus::control::open(&bus).await?;
        selfheal_bus::control::set_kill_switch(&control, true).await?;
        let handler = RemediationHandler::new(Arc::new(repo), PrControllerConfig::default(), bus.clone())
            .with_kill_switch(control.clone());
        let decision = rollback("0123456789abcdef", "checkout");

        // Decided before the switch was turned on, carried out after: stopped, and people told.
        let stopped = handler
            .carry_out(decision.clone(), "checkout".into(), None, tracing::Span::none())
            .await?
            .context("an event")?;
        assert_eq!(stopped.state(), RemediationState::Failed);
        assert_eq!(stopped.message, KILL_SWITCH_REFUSAL);
        assert_eq!(main()?, before, "nothing written");

        // A person's retry is carried out, switch or not.
        let retried = handler
            .carry_out(
                decision.clone(),
                "checkout".into(),
                Some("retried by alice"),
                tracing::Span::none(),
            )
            .await?
            .context("an event")?;
        assert_eq!(retried.state(), RemediationState::Merged, "{}", retried.message);
        assert_eq!((retried.from_value.as_str(), retried.to_value.as_str()), ("v2", "v1"));
        assert_eq!(main()?, retried.commit);

        // Redelivered with the switch still on (as after a crash before the record was written):
        // the change is on main, so it is announced as merged, not called failed.
        let redelivered = handler
            .carry_out(decision.clone(), "checkout".into(), None, tracing::Span::none())
            .await?
            .context("an event")?;
        assert_eq!(
            (redelivered.state(), redelivered.commit.as_str()),
            (RemediationState::Merged, retried.commit.as_str())
        );

        // With the switch off, selfheal acts again (here: finds its change already made).
        selfheal_bus::control::set_kill_switch(&control, false).await?;
        let again = handler
            .carry_out(decision, "checkout".into(), None, tracing::Span::none())
            .await?
            .context("an event")?;
        assert_eq!(
            (again.state(), again.commit.as_str()),
            (RemediationState::Merged, retried.commit.as_str())
        );
        Ok(())
    }

    #[tokio::test]
    async fn an_escalated_fix_is_reverted_once() -> anyhow::Result<()> {
        escalate_after_the_window(false).await
    }

    #[tokio::test]
    async fn the_kill_switch_holds_the_revert_of_an_escalated_fix() -> anyhow::Result<()> {
        escalate_after_the_window(true).await
    }

    /// A merged rollback that did not help escalates after its window, reverted unless the kill
    /// switch is on.
    async fn escalate_after_the_window(kill_switch: bool) -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let bare = dir.path().join("gitops.git");
        let (repo, v1, v2) = checkout_at_v1_then_v2(&bare)?;
        let show = || -> anyhow::Result<String> {
            let out = Command::new("git")
                .arg("--git-dir")
                .arg(&bare)
                .args(["show", "main:apps/checkout/kustomization.yaml"])
                .output()?;
            Ok(String::from_utf8(out.stdout)?)
        };
        let reconciler: Arc<Reconciler<dyn Repository>> = Arc::new(Reconciler {
            repo: Arc::new(repo),
            config: PrControllerConfig::default(),
        });
        let decision = rollback("feedface", "checkout");
        let merged = reconciler.reconcile(&decision, "")?;
        assert_eq!(show()?, v1);

        let bus = MemoryBus::default();
        let shared: SharedBus = Arc::new(bus.clone());
        let control = selfheal_bus::control::open(&shared).await?;
        selfheal_bus::control::set_kill_switch(&control, kill_switch).await?;
        let control = Some(&control);
        let verifier = verify::Verifier::new(
            Arc::new(selfheal_bus::kv::MemoryKeyValue::default()),
            Duration::from_secs(60),
        );
        let merged_at = chrono::Utc::now();
        verifier.record_merged(&merged, "checkout", merged_at).await?;
        assert_eq!(
            sweep_once(&verifier, Some(&reconciler), control, &shared, merged_at).await?,
            0,
            "inside the window"
        );
        let later = merged_at + chrono::Duration::minutes(2);
        assert_eq!(
            sweep_once(&verifier, Some(&reconciler), control, &shared, later).await?,
            1
        );
        if kill_switch {
            assert_eq!(show()?, v1, "selfheal's change stays: no automatic action");
        } else {
            assert_eq!(show()?, v2, "selfheal's change is undone");
        }
        assert_eq!(
            sweep_once(&verifier, Some(&reconciler), control, &shared, later).await?,
            0,
            "once"
        );

        let events: Vec<RemediationEvent> = bus
            .messages()
            .into_iter()
            .map(|m| RemediationEvent::decode(m.payload))
            .collect::<Result<_, _>>()?;
        let states: Vec<(String, RemediationState)> =
            events.iter().map(|e| (e.incident_key.clone(), e.state())).collect();
        let escalated = ("feedface".to_string(), RemediationState::Escalated);
        let message = &events.last().context("an event")?.message;
        if kill_switch {
            assert_eq!(states, [escalated]);
            assert!(message.contains("not reverted: the kill switch is on"), "{message}");
        } else {
            assert_eq!(states, [("feedfacer".to_string(), RemediationState::Merged), escalated]);
            assert!(message.contains("selfheal reverted its change in"), "{message}");
        }
        Ok(())
    }
}
