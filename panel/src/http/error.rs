//! The one error model of the API: every 4xx/5xx body is
//! `{"error":{"code":"...","message":"...","details":...}}`.
//!
//! Handlers return `Result<T, ApiError>`. Internal causes (SQL, Redis, I/O) are logged once
//! here with the request's span and never sent: the client sees `internal_error` and the
//! request id to quote.

use axum::{
    Json,
    body::Body,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

pub type ApiResult<T> = Result<T, ApiError>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed: bad JSON, a missing or mistyped field, a bad value.
    #[error("{message}")]
    Validation {
        message: String,
        field: Option<String>,
    },
    #[error("{0}")]
    Unauthorized(String),
    #[error("you do not have permission to {0}")]
    Forbidden(String),
    /// Also used for rows of other tenants, so ids do not leak.
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    /// Well-formed but refers to something that does not exist or cannot be used
    /// (an unknown plan slug).
    #[error("{message}")]
    Unprocessable { message: String, field: String },
    #[error("request body is too large")]
    PayloadTooLarge,
    #[error("too many attempts; retry in {retry_after_secs} seconds")]
    TooManyRequests { retry_after_secs: u64 },
    #[error("{message}")]
    Unavailable { message: String, details: Value },
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        let field = field.into();
        let message = message.into();
        ApiError::Validation {
            message: format!("{field}: {message}"),
            field: Some(field),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::Validation {
            message: message.into(),
            field: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn details(&self) -> Value {
        match self {
            ApiError::Validation { field: Some(f), .. } => json!({ "field": f }),
            ApiError::Unprocessable { field, .. } => json!({ "field": field }),
            ApiError::TooManyRequests { retry_after_secs } => {
                json!({ "retryAfterSeconds": retry_after_secs })
            }
            ApiError::Unavailable { details, .. } => details.clone(),
            _ => Value::Null,
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Internal(anyhow::Error::new(e).context("database"))
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(e: redis::RedisError) -> Self {
        ApiError::Internal(anyhow::Error::new(e).context("redis"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(cause) = &self {
            // Logged inside the request span, which carries the request id.
            tracing::error!(error = format!("{cause:#}"), "request failed");
        }
        let mut res = envelope(status, code_for(status), &self.to_string(), self.details());
        if let ApiError::TooManyRequests { retry_after_secs } = self {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        res
    }
}

/// The machine-readable code of each status, stable for API clients.
pub fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "validation_failed",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable_entity",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::SERVICE_UNAVAILABLE => "service_unavailable",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        s if s.is_server_error() => "internal_error",
        _ => "error",
    }
}

pub fn envelope(status: StatusCode, code: &str, message: &str, details: Value) -> Response {
    let body = json!({ "error": { "code": code, "message": message, "details": details } });
    (status, Json(body)).into_response()
}

/// Middleware body: responses produced outside our handlers (axum's 405, tower-http's 413,
/// a panic caught upstream) get the same envelope, so clients parse one error shape.
pub async fn normalize_error_body(res: Response) -> Response {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if is_json {
        return res;
    }
    let (mut parts, _) = res.into_parts();
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "request body is too large".to_owned(),
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this route".to_owned(),
        s => s.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    let fresh = envelope(status, code_for(status), &message, Value::Null);
    let (fresh_parts, body) = fresh.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        fresh_parts.headers[header::CONTENT_TYPE].clone(),
    );
    Response::from_parts(parts, Body::new(body))
}
