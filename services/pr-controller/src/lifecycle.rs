//! Verification: merged remediations verified when their alert resolves, and the sweep that
//! escalates (and reverts) those past their window.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use prost::Message as _;
use selfheal_bus::{
    Delivery, SharedBus,
    consumer::{Disposition, Handler},
    kv::SharedKeyValue,
};

use crate::{handler::publish_event, reconcile::Reconciler, verify};

/// The durable consumer of resolved alerts (verification).
pub const VERIFY_CONSUMER: &str = "pr-controller-verify";

/// Verifies merged remediations when their alert resolves.
pub struct VerifyHandler {
    pub(crate) verifier: verify::Verifier,
    pub(crate) bus: SharedBus,
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
    revert_with: Option<&Arc<Reconciler>>,
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
