//! Telemetry shared by every selfheal service:
//!
//! * [`init`]: structured logs (`SELFHEAL_LOG_FORMAT=json` for JSON lines; `RUST_LOG` filters) and
//!   OpenTelemetry tracing. Spans always carry W3C trace ids (so audit rows and notifications can
//!   name the trace); they are exported in batches over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT`
//!   or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set: gRPC by default, HTTP with
//!   `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf` (or `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`).
//!   `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS` and the
//!   other standard variables apply; `OTEL_TRACES_EXPORTER=none` turns export off.
//! * [`propagation`]: W3C `traceparent`/`tracestate` through bus headers and gRPC metadata.
//! * [`metrics`]: the Prometheus recorder and the metric names, in one place.
//! * [`health`]: `/healthz`, `/readyz` and `/metrics`.

pub mod errors;
pub mod health;
pub mod metrics;
pub mod propagation;

/// The span of a consumer handling one delivery, with OpenTelemetry's messaging attributes (NATS,
/// `process`, the subject, the durable, the delivery count) and then `$fields`, selfheal's own:
/// `consumer_span!("policy.decide", delivery, CONSUMER, selfheal.incident.key = %key)`. The
/// caller then parents it on the delivery's trace context.
#[macro_export]
macro_rules! consumer_span {
    ($name:expr, $delivery:expr, $durable:expr, $($fields:tt)*) => {
        ::tracing::info_span!(
            $name,
            otel.kind = "consumer",
            messaging.system = "nats",
            messaging.operation.type = "process",
            messaging.destination.name = %$delivery.subject,
            messaging.consumer.group.name = $durable,
            messaging.message.delivery_count = $delivery.delivered,
            $($fields)*
        )
    };
}

/// A span for one gRPC call of selfheal's (`otel.kind` `client` or `server`), with
/// OpenTelemetry's `rpc.*` attributes and any further fields.
/// `rpc_span!("policy.evaluate", "server", "selfheal.v1.Policy", "Evaluate", selfheal.incident.key = field::Empty)`.
#[macro_export]
macro_rules! rpc_span {
    ($name:expr, $kind:expr, $service:expr, $method:expr $(, $($fields:tt)*)?) => {
        ::tracing::info_span!(
            $name,
            otel.kind = $kind,
            rpc.system = "grpc",
            rpc.service = $service,
            rpc.method = $method,
            $($($fields)*)?
        )
    };
}

use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

/// Keeps the tracer provider alive; flushes spans when dropped.
#[must_use = "spans are flushed when the guard drops"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.force_flush();
            let _ = provider.shutdown();
        }
    }
}

static INITIALISED: OnceLock<()> = OnceLock::new();

/// Whether the environment asks for OTLP export.
pub fn otlp_requested() -> bool {
    ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|key| std::env::var(key).is_ok_and(|v| !v.is_empty()))
        && std::env::var("OTEL_TRACES_EXPORTER")
            .map(|v| v != "none")
            .unwrap_or(true)
}

/// How spans travel to the collector.
#[derive(Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
    Unsupported(String),
}

/// The OTLP protocol the environment asks for: `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else
/// `OTEL_EXPORTER_OTLP_PROTOCOL`, else gRPC.
pub fn otlp_protocol() -> Protocol {
    let chosen = ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"]
        .iter()
        .filter_map(|key| std::env::var(key).ok())
        .find(|v| !v.trim().is_empty());
    match chosen.as_deref().map(str::trim) {
        None | Some("grpc") => Protocol::Grpc,
        Some("http/protobuf") => Protocol::HttpProtobuf,
        Some(other) => Protocol::Unsupported(other.to_string()),
    }
}

/// Sets up logging and tracing for `service_name` (overridden by `OTEL_SERVICE_NAME`).
/// Call once per process; later calls return a guard that does nothing.
pub fn init(service_name: &str) -> TelemetryGuard {
    if INITIALISED.set(()).is_err() {
        return TelemetryGuard { provider: None };
    }
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let service_name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| service_name.to_string());
    let resource = Resource::builder().with_service_name(service_name.clone()).build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    let mut export_error = None;
    if otlp_requested() {
        let exporter = match otlp_protocol() {
            Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder().with_tonic().build(),
            Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder().with_http().build(),
            Protocol::Unsupported(name) => Err(opentelemetry_otlp::ExporterBuildError::InvalidConfiguration(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={name} is not supported (grpc or http/protobuf)"
            ))),
        };
        match exporter {
            Ok(exporter) => builder = builder.with_batch_exporter(exporter),
            Err(e) => export_error = Some(e.to_string()),
        }
    }
    let provider = builder.build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    let tracer = provider.tracer(service_name);

    let log_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("SELFHEAL_LOG_FORMAT").is_ok_and(|v| v == "json");
    let fmt_layer = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_writer(std::io::stderr)
            .boxed()
    };
    // Without this filter the HTTP/2 and gRPC stacks export hundreds of their own spans.
    let otel_filter = EnvFilter::new("info,h2=off,hyper=off,hyper_util=off,tonic=off,tower=off,reqwest=off");
    let _ = tracing_subscriber::registry()
        .with(fmt_layer.with_filter(log_filter))
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(otel_filter),
        )
        .try_init();
    if let Some(error) = export_error {
        tracing::warn!(error = %error, "otlp exporter not started; spans are not exported");
    }
    TelemetryGuard {
        provider: Some(provider),
    }
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
