//! One alert to one decision, the same for the consumer (which reserves) and `Evaluate` (which
//! previews): what the service knows is gathered (history, metrics, target, the windows in
//! force), the policy decides, then the service's own checks have the last word — a critical
//! window, then the limits.

use std::{collections::BTreeMap, sync::Arc};

use chrono::{DateTime, Utc};
use selfheal_bus::{control::FreezeReader, kv::SharedKeyValue};
use selfheal_proto::v1::{AlertEvent, Decision};
use serde_json::Value;

use crate::{
    decide,
    dependents::DependentsReader,
    engine::PolicyEngine,
    limits::{Limiter, Verdict},
    promql::MetricsReader,
    target::TargetReader,
    windows::{InForce, Windows},
};

/// Reserve a slot in the limits (the consumer), or only say whether one is free (`Evaluate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Reserve,
    Preview,
}

/// What stopped a decision being made now; trying again later may pass.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error("action history: {0}")]
    History(crate::limits::LimitError),
    #[error("the freeze: {0}")]
    Freeze(selfheal_bus::kv::KvError),
    #[error("limits: {0}")]
    Limits(crate::limits::LimitError),
}

/// Everything a decision needs.
#[derive(Clone)]
pub struct Decider {
    pub engine: Arc<dyn PolicyEngine>,
    pub limiter: Limiter,
    pub metrics: MetricsReader,
    pub target: TargetReader,
    pub windows: Arc<Windows>,
    /// The freeze as the acting path reads it: from the control bucket itself, so a freeze
    /// stored a round trip ago stops the next decision.
    pub freeze: FreezeReader,
    /// The control bucket (kill switch, freeze) as `Evaluate` previews it: from memory, kept
    /// current by the bucket's watch where it is watched — a switch just set shows in a
    /// preview as soon as the watch delivers it (a millisecond or so).
    pub preview_control: SharedKeyValue,
    pub dependents: DependentsReader,
}

impl Decider {
    /// The windows in force now for an alert with `labels`: the freeze (if set) and the
    /// configured ones, the soonest to end first.
    async fn windows_in_force(
        &self,
        labels: &BTreeMap<String, String>,
        now: DateTime<Utc>,
        mode: Mode,
    ) -> Result<Vec<InForce>, DecideError> {
        let mut in_force = self.windows.in_force(labels, now);
        let freeze = match mode {
            Mode::Reserve => self.freeze.in_force(now).await,
            Mode::Preview => selfheal_bus::control::freeze_in_force(&self.preview_control, now).await,
        };
        if let Some(freeze) = freeze.map_err(DecideError::Freeze)? {
            in_force.push(InForce::freeze(&freeze));
            in_force.sort_by_key(|w| w.until);
        }
        Ok(in_force)
    }

    /// The decision for `event` and the input the policy saw. `service` keys the history and
    /// the limits (`None`: an alert whose service no limit can count, which acts on nothing).
    pub async fn decide(
        &self,
        event: &AlertEvent,
        service: Option<&str>,
        dry_run: bool,
        now: DateTime<Utc>,
        mode: Mode,
    ) -> Result<(Decision, Value), DecideError> {
        let labels: BTreeMap<String, String> = event
            .alert
            .as_ref()
            .map(|a| a.labels.clone().into_iter().collect())
            .unwrap_or_default();
        // Independent reads, at once: the history (from memory while the actions bucket is
        // watched) and the freeze (from memory in a preview) are one round trip at most.
        let history = async {
            match service {
                Some(service) => self.limiter.history(service, now).await.map_err(DecideError::History),
                None => Ok(Vec::new()),
            }
        };
        // `Evaluate` (a preview) reads the kill switch with them (from memory); a reservation
        // reads it from the bucket when it takes its slot.
        let kill_switch = async {
            match mode {
                Mode::Preview => self
                    .limiter
                    .kill_switch_in(&self.preview_control)
                    .await
                    .map_err(DecideError::Limits),
                Mode::Reserve => Ok(false),
            }
        };
        let (history, windows, kill_switch) =
            futures::join!(history, self.windows_in_force(&labels, now, mode), kill_switch);
        let (history, windows) = (history?, windows?);
        let ((metrics, metrics_errors), (target, target_error), dependents) = futures::join!(
            self.metrics.read(&labels),
            self.target.read(&labels),
            self.dependents.read(&labels)
        );
        let (dependents_json, dependents_error) = dependents.to_json();
        let max_firing = self.limiter.config().max_firing_dependents;
        let extra = decide::Extra {
            history: serde_json::to_value(&history).unwrap_or_default(),
            metrics,
            metrics_errors,
            target,
            target_error,
            windows: windows.iter().map(InForce::to_json).collect(),
            recently_fixed_seconds: self.limiter.config().recently_fixed.as_secs(),
            dependents: dependents_json,
            dependents_error,
            max_firing_dependents: max_firing,
        };
        let (mut decision, input) = decide::decide(self.engine.as_ref(), event, &extra, dry_run, now).await;
        if !decide::acts(&decision) || decision.dry_run {
            return Ok((decision, input));
        }
        if let Some(window) = windows.first() {
            decide::refuse(&mut decision, &window.refusal());
            return Ok((decision, input));
        }
        let alertname = labels.get("alertname").map(String::as_str).unwrap_or_default();
        // A redelivered alert finds its own reservation in the history: that is no repeat.
        let earlier: Vec<_> = history
            .iter()
            .filter(|r| r.incident != event.incident_key)
            .cloned()
            .collect();
        if let Some(repeat) = self.limiter.recently_fixed(&earlier, alertname, now) {
            decide::refuse(&mut decision, &repeat);
            return Ok((decision, input));
        }
        if max_firing > 0 {
            let firing = dependents.firing();
            let of = service.unwrap_or("the service");
            let refusal = if firing.len() > max_firing {
                Some(format!(
                    "blast radius: {} services that call {of} have incidents firing ({}; max_firing_dependents {max_firing}): a wider incident is under way",
                    firing.len(),
                    firing.join(", ")
                ))
            } else {
                dependents.error.as_ref().map(|error| {
                    format!(
                        "blast radius unknown ({error}): with max_firing_dependents set, selfheal does not act blind"
                    )
                })
            };
            if let Some(refusal) = refusal {
                decide::refuse(&mut decision, &refusal);
                return Ok((decision, input));
            }
        }
        if let Some(service) = service {
            let action = decide::action_name(decision.action());
            let verdict = match mode {
                Mode::Reserve => {
                    self.limiter
                        .reserve_for(service, &event.incident_key, action, alertname, now)
                        .await
                }
                Mode::Preview => {
                    self.limiter
                        .preview(service, &event.incident_key, action, now, kill_switch?)
                        .await
                }
            }
            .map_err(DecideError::Limits)?;
            if let Verdict::Refused(limit) = verdict {
                decide::refuse(&mut decision, &limit);
            }
        }
        Ok((decision, input))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use selfheal_bus::kv::MemoryKeyValue;
    use selfheal_proto::v1::{Action, Alert};

    use super::*;
    use crate::{limits::LimitsConfig, windows::WindowConfig};

    /// A policy that always wants a rollback: whatever stops it is the service's own check.
    fn eager() -> Arc<dyn PolicyEngine> {
        let dir = tempfile::tempdir().expect("a folder");
        std::fs::write(
            dir.path().join("eager.rego"),
            "package selfheal\nimport rego.v1\ndecision := {\"action\": \"rollback\", \"approval\": \"auto\", \"reason\": \"always\"}\n",
        )
        .expect("written");
        Arc::new(crate::engine::RegoEngine::load_dir(dir.path(), "data.selfheal.decision").expect("loads"))
    }

    fn decider(windows: &[WindowConfig], limits: LimitsConfig) -> Decider {
        let control: SharedKeyValue = Arc::new(MemoryKeyValue::default());
        Decider {
            engine: eager(),
            limiter: Limiter::new(Arc::new(MemoryKeyValue::default()), control.clone(), limits),
            metrics: MetricsReader::none(),
            target: TargetReader::none(),
            windows: Arc::new(Windows::new(windows).expect("valid")),
            freeze: FreezeReader::new(control.clone()),
            preview_control: control,
            dependents: DependentsReader::default(),
        }
    }

    fn event(incident: &str) -> AlertEvent {
        let labels: HashMap<String, String> = [("alertname", "HighErrorRate"), ("service", "checkout")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        AlertEvent {
            incident_key: incident.into(),
            alert: Some(Alert {
                status: "firing".into(),
                labels,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn the_service_holds_a_change_inside_a_window_whatever_the_policy_says() -> anyhow::Result<()> {
        let now = Utc::now();
        let window = WindowConfig {
            name: "release".into(),
            from: Some(now - chrono::Duration::minutes(1)),
            until: Some(now + chrono::Duration::minutes(1)),
            ..Default::default()
        };
        let decider = decider(&[window], LimitsConfig::default());
        let (decision, input) = decider
            .decide(&event("a"), Some("checkout"), false, now, Mode::Reserve)
            .await?;
        assert_eq!(decision.action(), Action::Escalate);
        assert!(
            decision.reason.starts_with("critical window \"release\""),
            "{}",
            decision.reason
        );
        assert_eq!(input["windows"][0]["name"], "release");
        // The refusal took no slot of the limits.
        assert!(decider.limiter.history("checkout", now).await?.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn the_acting_path_reads_the_switches_from_the_bucket_and_a_preview_from_its_view() -> anyhow::Result<()> {
        let now = Utc::now();
        let mut decider = decider(&[], LimitsConfig::default());
        // The preview's view has not heard of the freeze yet (its watch is a moment behind).
        let control: SharedKeyValue = Arc::new(MemoryKeyValue::default());
        decider.freeze = FreezeReader::new(control.clone());
        decider.preview_control = Arc::new(MemoryKeyValue::default());
        let freeze = selfheal_bus::control::Freeze {
            until: now + chrono::Duration::minutes(5),
            reason: "failover".into(),
            by: "test".into(),
        };
        selfheal_bus::control::set_freeze(&control, Some(&freeze)).await?;
        let (acting, _) = decider
            .decide(&event("a"), Some("checkout"), false, now, Mode::Reserve)
            .await?;
        assert_eq!(acting.action(), Action::Escalate, "{}", acting.reason);
        assert!(acting.reason.contains("failover"), "{}", acting.reason);
        let (preview, _) = decider
            .decide(&event("a"), Some("checkout"), false, now, Mode::Preview)
            .await?;
        assert_eq!(preview.action(), Action::Rollback, "the view: {}", preview.reason);
        // Once the view has it, the preview says so; the kill switch likewise.
        selfheal_bus::control::set_freeze(&decider.preview_control, Some(&freeze)).await?;
        let (preview, _) = decider
            .decide(&event("a"), Some("checkout"), false, now, Mode::Preview)
            .await?;
        assert!(preview.reason.contains("failover"), "{}", preview.reason);
        selfheal_bus::control::set_freeze(&decider.preview_control, None).await?;
        selfheal_bus::control::set_kill_switch(&decider.preview_control, true).await?;
        let (preview, _) = decider
            .decide(&event("b"), Some("checkout"), false, now, Mode::Preview)
            .await?;
        assert_eq!(preview.action(), Action::Escalate, "{}", preview.reason);
        assert!(preview.reason.contains("kill switch"), "{}", preview.reason);
        Ok(())
    }

    #[tokio::test]
    async fn the_service_holds_a_repeat_of_a_verified_fix_whatever_the_policy_says() -> anyhow::Result<()> {
        let decider = decider(&[], LimitsConfig::default());
        let now = Utc::now();
        let (first, _) = decider
            .decide(&event("a"), Some("checkout"), false, now, Mode::Reserve)
            .await?;
        assert_eq!(first.action(), Action::Rollback);
        decider.limiter.record_outcome("checkout", "a", "verified", now).await?;
        // The same incident delivered again is no repeat of itself.
        let (again, _) = decider
            .decide(&event("a"), Some("checkout"), false, now, Mode::Reserve)
            .await?;
        assert_eq!(again.action(), Action::Rollback);
        let (repeat, input) = decider
            .decide(&event("b"), Some("checkout"), false, now, Mode::Reserve)
            .await?;
        assert_eq!(repeat.action(), Action::Escalate);
        assert!(
            repeat.reason.starts_with("recently fixed: HighErrorRate on checkout"),
            "{}",
            repeat.reason
        );
        assert_eq!(input["history"][0]["outcome"], "verified");
        Ok(())
    }
}
