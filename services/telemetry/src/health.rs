//! `/healthz` (the process is alive), `/readyz` (it can do its work now) and `/metrics`.

use std::{future::Future, pin::Pin, sync::Arc};

use axum::{Router, http::StatusCode, response::IntoResponse, routing::get};
use metrics_exporter_prometheus::PrometheusHandle;

/// Answers whether the service is ready; `Err` carries the reason it is not.
pub type ReadinessCheck = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// The three operational endpoints.
pub fn router(ready: ReadinessCheck, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    match ready().await {
                        Ok(()) => (StatusCode::OK, "ready".to_string()).into_response(),
                        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { metrics.render() }
            }),
        )
}

/// A readiness check from the bus.
pub fn bus_ready(bus: selfheal_bus::SharedBus) -> ReadinessCheck {
    Arc::new(move || {
        let bus = bus.clone();
        Box::pin(async move { bus.ready().await.map_err(|e| e.to_string()) })
    })
}
