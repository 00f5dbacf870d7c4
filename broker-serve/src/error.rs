//! Errors as the API returns them: `{"error": {"kind", "message"}}`, never a value.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use broker_core::ErrorKind;

/// How the shared store's errors begin (`serve.store.kind: redis` out of reach).
pub(crate) const STORE_UNAVAILABLE: &str = "the shared store (serve.store) is unavailable";

/// An API error: an HTTP status, a stable `kind` and a message. Never holds a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable, lower-case kind (`unknown_peer`, `agent_blocked`, `ttl_too_long`, ...).
    pub kind: &'static str,
    /// For people.
    pub message: String,
    /// Seconds to wait before asking again (`Retry-After`), for 429 answers.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with `status`, `kind` and `message`.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error with a `Retry-After` of `seconds`.
    #[must_use]
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl From<broker_core::Error> for ApiError {
    fn from(e: broker_core::Error) -> Self {
        let kind = e.kind();
        if kind == ErrorKind::Transient && e.message().starts_with(STORE_UNAVAILABLE) {
            return crate::api::store_unavailable();
        }
        let status = match kind {
            ErrorKind::PolicyDenied | ErrorKind::EgressDenied => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::InvalidReference | ErrorKind::InvalidConfig | ErrorKind::NotConfigured => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ErrorKind::Transient => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::PermissionDenied
            | ErrorKind::AuthenticationFailed
            | ErrorKind::UnexpectedAnswer
            | ErrorKind::Integrity => StatusCode::BAD_GATEWAY,
            ErrorKind::Unsupported => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        // broker_core errors never hold a value (their messages are names and references).
        ApiError::new(status, kind.as_str(), e.message())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"kind": self.kind, "message": self.message}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        response
    }
}
