//! Refusals, as HTTP answers with a JSON body that names the field and the problem.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::json;

/// Why a request was refused. Never carries internals or secrets.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the event stream did not store the alerts: {0}")]
    Unavailable(String),
}

impl RequestError {
    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// The field at fault ("" when none).
    pub fn field(&self) -> &str {
        match self {
            Self::Invalid { field, .. } => field,
            _ => "",
        }
    }

    /// A short reason for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Invalid { .. } => "invalid",
            Self::Unauthorized => "unauthorized",
            Self::TooLarge { .. } => "too_large",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

impl IntoResponse for RequestError {
    fn into_response(self) -> Response {
        metrics::counter!(selfheal_telemetry::metrics::GATEWAY_REFUSED, "reason" => self.reason()).increment(1);
        let (status, body) = match &self {
            Self::Invalid { field, problem } => (
                StatusCode::BAD_REQUEST,
                json!({"error": {"code": "invalid_request", "field": field, "message": format!("{field}: {problem}")}}),
            ),
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                json!({"error": {"code": "unauthorized", "message": self.to_string()}}),
            ),
            Self::TooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": {"code": "too_large", "field": "body", "message": self.to_string()}}),
            ),
            Self::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": {"code": "unavailable", "message": "alerts not stored; retry"}}),
            ),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert("www-authenticate", axum::http::HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("5"));
        }
        response
    }
}
