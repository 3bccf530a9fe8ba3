//! The Prometheus recorder and every metric name selfheal exports, in one place.
//! Names follow `selfheal_<service>_<name>_<unit>`; counters end in `_total`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Alerts received by the gateway, by `status`.
pub const GATEWAY_ALERTS_RECEIVED: &str = "selfheal_gateway_alerts_received_total";
/// Alerts the stream already held (retries, HA duplicates).
pub const GATEWAY_DUPLICATES: &str = "selfheal_gateway_alerts_duplicate_total";
/// Alerts the source cut from its notifications (Alertmanager's `truncatedAlerts`).
pub const GATEWAY_TRUNCATED: &str = "selfheal_gateway_alerts_truncated_total";
/// Requests refused, by `reason`.
pub const GATEWAY_REFUSED: &str = "selfheal_gateway_requests_refused_total";
/// Alerts refused one by one in bodies whose other alerts were stored.
pub const GATEWAY_ALERTS_REFUSED: &str = "selfheal_gateway_alerts_refused_total";
/// Time to store one alert in the stream.
pub const GATEWAY_PUBLISH_SECONDS: &str = "selfheal_gateway_publish_duration_seconds";
/// Decisions made, by `action`.
pub const POLICY_DECISIONS: &str = "selfheal_policy_decisions_total";
/// Reads of a limits record in `selfheal_actions` that did not parse, by `key`: the actions it
/// counts are refused (the limits fail closed) until it is repaired or deleted.
pub const POLICY_LIMIT_RECORDS_UNREADABLE: &str = "selfheal_policy_limit_records_unreadable_total";
/// Time to evaluate the policies for one alert.
pub const POLICY_EVAL_SECONDS: &str = "selfheal_policy_evaluation_duration_seconds";
/// Remediations, by `action` and `state`.
pub const REMEDIATIONS: &str = "selfheal_pr_controller_remediations_total";
/// Notifications sent, by `result`.
pub const NOTIFICATIONS: &str = "selfheal_notifier_notifications_total";
/// Audit rows written, by `kind`.
pub const AUDIT_ROWS: &str = "selfheal_notifier_audit_rows_total";
/// Remediations by `action` and `result` (opened, merged, failed, verified, escalated).
pub const ACTIONS: &str = "selfheal_actions_total";
/// Verifications by `result` (verified, escalated).
pub const VERIFICATIONS: &str = "selfheal_verifications_total";
/// Seconds from an alert's start to its resolution, for verified remediations.
pub const MTTR_SECONDS: &str = "selfheal_mttr_seconds";
/// Seconds from an alert's start to the merge of its fix.
pub const REMEDIATION_SECONDS: &str = "selfheal_remediation_duration_seconds";

/// Hop latency: the gateway receiving an alert → the policy's decision.
pub const HOP_WEBHOOK_TO_DECISION: &str = "selfheal_hop_webhook_to_decision_seconds";
/// Hop latency: the decision → its change on a branch or main.
pub const HOP_DECISION_TO_CHANGE: &str = "selfheal_hop_decision_to_change_seconds";
/// Hop latency: a change waiting for approval (opened) → its merge.
pub const HOP_COMMIT_TO_MERGE: &str = "selfheal_hop_commit_to_merge_seconds";
/// Hop latency: the merge → the alert's resolution.
pub const HOP_MERGE_TO_RESOLVED: &str = "selfheal_hop_merge_to_resolved_seconds";
/// Requests to the forge (GitHub) retried, by reason (`server_error`, `rate_limit`, `transport`).
pub const FORGE_RETRIES: &str = "selfheal_pr_controller_forge_retries_total";
/// Sync-now requests to Argo CD or Flux after a merge, by result (`ok`, `error`).
pub const SYNC_REQUESTS: &str = "selfheal_pr_controller_sync_requests_total";
/// Messages a durable consumer has not acked yet (waiting or in work), by `consumer`: the lag.
pub const CONSUMER_PENDING: &str = "selfheal_consumer_pending_messages";

/// Deliveries that were not a message's first, by `consumer` (written by the consumer loop).
pub const CONSUMER_REDELIVERIES: &str = selfheal_bus::consumer::REDELIVERIES;
/// Messages moved to the dead letters, by `consumer` (written by the consumer loop).
pub const DEAD_LETTERS: &str = selfheal_bus::dead::METRIC;

/// Every metric selfheal exports (the Grafana dashboard's test checks its queries against it).
pub const ALL: &[&str] = &[
    GATEWAY_ALERTS_RECEIVED,
    GATEWAY_DUPLICATES,
    GATEWAY_TRUNCATED,
    GATEWAY_REFUSED,
    GATEWAY_ALERTS_REFUSED,
    GATEWAY_PUBLISH_SECONDS,
    POLICY_DECISIONS,
    POLICY_LIMIT_RECORDS_UNREADABLE,
    POLICY_EVAL_SECONDS,
    REMEDIATIONS,
    NOTIFICATIONS,
    AUDIT_ROWS,
    ACTIONS,
    VERIFICATIONS,
    MTTR_SECONDS,
    REMEDIATION_SECONDS,
    HOP_WEBHOOK_TO_DECISION,
    HOP_DECISION_TO_CHANGE,
    HOP_COMMIT_TO_MERGE,
    HOP_MERGE_TO_RESOLVED,
    FORGE_RETRIES,
    SYNC_REQUESTS,
    CONSUMER_PENDING,
    CONSUMER_REDELIVERIES,
    DEAD_LETTERS,
];

/// Samples, every `interval` until `shutdown`, how many messages each of `durables` has not
/// acked yet, into the gauge [`CONSUMER_PENDING`]`{consumer}`. A failed sample leaves the last
/// value and is logged at debug level (the bus being down shows on `/readyz`).
pub async fn sample_consumer_lag(
    bus: selfheal_bus::SharedBus,
    durables: Vec<String>,
    interval: std::time::Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = ticks.tick() => {}
        }
        for durable in &durables {
            match bus.pending(durable).await {
                Ok(pending) => {
                    metrics::gauge!(CONSUMER_PENDING, "consumer" => durable.clone()).set(pending as f64);
                }
                Err(error) => tracing::debug!(consumer = %durable, error = %error, "consumer lag not sampled"),
            }
        }
    }
}

/// Histogram buckets, seconds: request latencies at the low end, MTTR at the high end.
const BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
    3600.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder (once per process) and returns the handle that renders it.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            // Buckets make histograms real Prometheus histograms (histogram_quantile works).
            // (set_buckets fails only for an empty list.)
            let builder = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed; then ours renders nothing, which
            // /metrics shows plainly rather than crashing the service.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
