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
/// Time to store one alert in the stream.
pub const GATEWAY_PUBLISH_SECONDS: &str = "selfheal_gateway_publish_duration_seconds";
/// Decisions made, by `action`.
pub const POLICY_DECISIONS: &str = "selfheal_policy_decisions_total";
/// Time to evaluate the policies for one alert.
pub const POLICY_EVAL_SECONDS: &str = "selfheal_policy_evaluation_duration_seconds";
/// Remediations, by `action` and `state`.
pub const REMEDIATIONS: &str = "selfheal_pr_controller_remediations_total";
/// Notifications sent, by `result`.
pub const NOTIFICATIONS: &str = "selfheal_notifier_notifications_total";
/// Audit rows written, by `kind`.
pub const AUDIT_ROWS: &str = "selfheal_notifier_audit_rows_total";
/// Messages handled by a consumer, by `consumer` and `result`.
pub const MESSAGES_HANDLED: &str = "selfheal_bus_messages_handled_total";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder (once per process) and returns the handle that renders it.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed; then ours renders nothing, which
            // /metrics shows plainly rather than crashing the service.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
