//! From an alert to a [`Decision`]: the policy input document, and the checks the service makes
//! on what the policy returns.

use chrono::{DateTime, SecondsFormat, Utc};
use selfheal_proto::{
    Timestamp,
    v1::{Action, AlertEvent, Approval, Decision, DecisionParams},
};
use serde_json::{Value, json};

use crate::engine::{PolicyEngine, PolicyError, RawDecision};

/// The input document the policy sees. `target`, `metrics` and `history` are empty until the
/// services that know them are asked (see ARCHITECTURE.md).
/// What the service adds to the alert in the input document.
#[derive(Clone, Debug, Default)]
pub struct Extra {
    /// This service's recent actions.
    pub history: Value,
    /// Metric name → value, for the metrics that could be read.
    pub metrics: Value,
    /// Metric name → why it could not be read.
    pub metrics_errors: Value,
    /// What the GitOps repository says about the service (`{}` when unknown).
    pub target: Value,
    /// Why `target` is empty, when it should not be.
    pub target_error: Option<String>,
    /// The critical windows in force for the alert (and the freeze), as JSON objects.
    pub windows: Vec<Value>,
    /// `limits.recently_fixed`, in seconds (0: off).
    pub recently_fixed_seconds: u64,
    /// The service's callers (`[{service, rate, firing}]`).
    pub dependents: Value,
    /// Why `dependents` is incomplete, when it is.
    pub dependents_error: Option<String>,
    /// `limits.max_firing_dependents` (0: off).
    pub max_firing_dependents: usize,
}

pub fn input(event: &AlertEvent, extra: &Extra, now: DateTime<Utc>) -> Value {
    let alert = event.alert.clone().unwrap_or_default();
    let time = |t: Option<Timestamp>| {
        t.as_ref()
            .and_then(selfheal_proto::time::datetime)
            .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    };
    json!({
        "incident": event.incident_key,
        "alert": {
            "status": alert.status,
            "labels": alert.labels,
            "annotations": alert.annotations,
            "startsAt": time(alert.starts_at),
            "endsAt": time(alert.ends_at),
            "fingerprint": alert.fingerprint,
            "generatorURL": alert.generator_url,
        },
        "source": event.source,
        "target": if extra.target.is_object() { extra.target.clone() } else { json!({}) },
        "target_error": extra.target_error,
        "metrics": if extra.metrics.is_object() { extra.metrics.clone() } else { json!({}) },
        "metrics_errors": if extra.metrics_errors.is_object() { extra.metrics_errors.clone() } else { json!({}) },
        "history": if extra.history.is_array() { extra.history.clone() } else { json!([]) },
        "windows": extra.windows,
        "recently_fixed_seconds": extra.recently_fixed_seconds,
        "dependents": if extra.dependents.is_array() { extra.dependents.clone() } else { json!([]) },
        "dependents_error": extra.dependents_error,
        "max_firing_dependents": extra.max_firing_dependents,
        "now": now.to_rfc3339_opts(SecondsFormat::AutoSi, true),
    })
}

use selfheal_proto::names::parse_action;

/// The action's name as policies and people write it.
pub fn action_name(action: Action) -> &'static str {
    selfheal_proto::names::action(action)
}

/// Evaluates the policies for `event` and turns the answer into a [`Decision`]. A policy that
/// fails or answers nonsense yields an `escalate` decision that says why: a person must look.
pub async fn decide(
    engine: &dyn PolicyEngine,
    event: &AlertEvent,
    extra: &Extra,
    dry_run: bool,
    now: DateTime<Utc>,
) -> (Decision, Value) {
    let input = input(event, extra, now);
    let decision = decide_input(engine, &input, Some(event.clone()), dry_run, now).await;
    (decision, input)
}

/// The decision for a whole input document (`selfheal policy eval --input`, as `opa eval
/// --input`): what [`decide`] answers for the event and the extras that built it.
pub async fn decide_input(
    engine: &dyn PolicyEngine,
    input: &Value,
    event: Option<AlertEvent>,
    dry_run: bool,
    now: DateTime<Utc>,
) -> Decision {
    let mut decision = Decision {
        incident_key: input["incident"].as_str().unwrap_or_default().to_string(),
        rule: engine.query().to_string(),
        alert: event,
        dry_run,
        metrics: input["metrics"]
            .as_object()
            .map(|metrics| {
                metrics
                    .iter()
                    .filter_map(|(name, value)| Some((name.clone(), value.as_f64()?)))
                    .collect()
            })
            .unwrap_or_default(),
        decided_at: Some(selfheal_proto::time::timestamp(now)),
        ..Default::default()
    };
    match engine.evaluate(input).await {
        Ok((raw, policy)) => {
            decision.policy = policy;
            apply(&mut decision, raw);
        }
        Err(error) => escalate(&mut decision, &error),
    }
    decision
}

/// Whether the decision would change something (and so counts against the limits).
pub fn acts(decision: &Decision) -> bool {
    matches!(decision.action(), Action::Rollback | Action::Scale | Action::Restart)
}

/// Turns `decision` into an escalation because a safety limit refused it.
pub fn refuse(decision: &mut Decision, limit: &str) {
    let wanted = action_name(decision.action());
    decision.reason = format!("{limit}; the policy wanted {wanted}: {}", decision.reason);
    decision.set_action(Action::Escalate);
    decision.set_approval(Approval::Required);
}

fn escalate(decision: &mut Decision, error: &PolicyError) {
    decision.set_action(Action::Escalate);
    decision.set_approval(Approval::Required);
    decision.reason = format!("policy failed, so nothing was changed: {error}");
}

fn apply(decision: &mut Decision, raw: RawDecision) {
    let Some(action) = parse_action(&raw.action) else {
        decision.set_action(Action::Escalate);
        decision.set_approval(Approval::Required);
        decision.reason = format!(
            "policy returned the unknown action {:?} (expected rollback, scale, restart, none or escalate)",
            raw.action
        );
        return;
    };
    decision.set_action(action);
    decision.set_approval(match raw.approval.as_deref() {
        Some("auto") => Approval::Auto,
        _ => Approval::Required,
    });
    decision.reason = if raw.reason.trim().is_empty() {
        format!("policy chose {} without a reason", raw.action)
    } else {
        raw.reason
    };
    if let Some(rule) = raw.rule {
        decision.rule = rule;
    }
    if action == Action::Scale {
        match raw.params.replicas.map(i32::try_from) {
            Some(Ok(replicas)) if replicas >= 0 => {}
            _ => {
                decision.set_action(Action::Escalate);
                decision.set_approval(Approval::Required);
                decision.reason = format!(
                    "policy chose scale without a valid params.replicas: {}",
                    decision.reason
                );
                return;
            }
        }
    }
    decision.params = Some(DecisionParams {
        target_tag: raw.params.target_tag.unwrap_or_default(),
        replicas: raw.params.replicas.and_then(|r| i32::try_from(r).ok()),
    });
}

/// One entry of the decision log, in OPA's decision-log shape (`decision_id`, `path`, `input`,
/// `result`, `timestamp`) plus the trace id and which policy files decided.
pub fn decision_log(decision: &Decision, input: &Value, trace_id: &str, now: DateTime<Utc>) -> Value {
    let params = decision.params.clone().unwrap_or_default();
    json!({
        "decision_id": format!("decision.{}", decision.incident_key),
        "path": decision.rule.trim_start_matches("data.").replace('.', "/"),
        "input": input,
        "result": {
            "action": action_name(decision.action()),
            "approval": selfheal_proto::names::approval(decision.approval()),
            "reason": decision.reason,
            "params": {"target_tag": params.target_tag, "replicas": params.replicas},
        },
        "timestamp": now.to_rfc3339_opts(SecondsFormat::Nanos, true),
        "trace_id": trace_id,
        "labels": {"policy": decision.policy, "dry_run": decision.dry_run},
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use selfheal_proto::v1::Alert;

    use super::*;
    use crate::engine::RegoEngine;

    #[tokio::test]
    async fn decision_log_has_opa_shape() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/policies");
        let engine = RegoEngine::load_dir(&dir, "data.selfheal.decision").expect("policies");
        let labels: HashMap<String, String> = [
            ("alertname", "HighErrorRate"),
            ("severity", "critical"),
            ("auto_heal", "true"),
            ("service", "checkout"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let event = AlertEvent {
            incident_key: "abc".into(),
            alert: Some(Alert {
                status: "firing".into(),
                labels,
                ..Default::default()
            }),
            ..Default::default()
        };
        let now = Utc::now();
        let (decision, input) = decide(&engine, &event, &Extra::default(), false, now).await;
        let log = decision_log(&decision, &input, "4bf92f3577b34da6a3ce929d0e0e4736", now);
        assert_eq!(log["decision_id"], "decision.abc");
        assert_eq!(log["path"], "selfheal/decision");
        assert_eq!(log["result"]["action"], "rollback");
        assert_eq!(log["input"]["alert"]["labels"]["service"], "checkout");
        assert_eq!(log["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(log["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
}
