//! W3C trace context (`traceparent`, `tracestate`) through bus headers and gRPC metadata, so one
//! incident is one trace from the webhook to the notification.

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector},
    trace::TraceContextExt,
};
use selfheal_bus::Headers;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct HeaderInjector<'a>(&'a mut Headers);
impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value);
    }
}

struct HeaderExtractor<'a>(&'a Headers);
impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);
impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);
impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Writes `span`'s context into bus headers.
pub fn inject_headers(span: &tracing::Span, headers: &mut Headers) {
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers));
    });
}

/// Makes the context in `headers` (if any) the parent of `span`.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &Headers) {
    let parent =
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&HeaderExtractor(headers)));
    set_parent(span, parent);
}

struct HttpInjector<'a>(&'a mut http::HeaderMap);
impl Injector for HttpInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Writes `span`'s context into the headers of an outgoing HTTP request (`traceparent`,
/// `tracestate`): Prometheus, OPA, Slack, webhooks, Argo CD and Flux see the incident's trace.
pub fn inject_http(span: &tracing::Span, headers: &mut http::HeaderMap) {
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HttpInjector(headers));
    });
}

/// The trace context of `span` as HTTP headers, for a request builder's `.headers(...)`.
pub fn http_headers(span: &tracing::Span) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    inject_http(span, &mut headers);
    headers
}

/// Writes `span`'s context into gRPC metadata.
pub fn inject_metadata(span: &tracing::Span, metadata: &mut tonic::metadata::MetadataMap) {
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MetadataInjector(metadata));
    });
}

/// Makes the context in gRPC `metadata` (if any) the parent of `span`.
pub fn set_parent_from_metadata(span: &tracing::Span, metadata: &tonic::metadata::MetadataMap) {
    let parent =
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&MetadataExtractor(metadata)));
    set_parent(span, parent);
}

fn set_parent(span: &tracing::Span, parent: Context) {
    if parent.span().span_context().is_valid() {
        // Fails only when the span is disabled; then there is nothing to parent.
        let _ = span.set_parent(parent);
    }
}

/// The trace id of `span` as 32 hex digits, or `None` when the span is not recorded.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}
