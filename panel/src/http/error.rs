//! The one error model of the API: every 4xx/5xx body is
//! `{"error":{"code":"...","message":"...","details":...}}`.
//!
//! Handlers return `Result<T, ApiError>`. Internal causes (SQL, Redis, I/O) are logged once
//! here with the request's span and never sent: the client sees `internal_error` and the
//! request id to quote.
//!
//! PostgreSQL being unreachable is not a bug of the request: wherever it surfaces (a
//! `sqlx::Error` or an `anyhow` chain holding one) it answers 503 `database_unavailable`
//! with `Retry-After`, logged as a one-line warning.

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
    /// PostgreSQL cannot be reached (down, restarting, no connection within the pool's
    /// timeout). The cause, which holds a `sqlx::Error`, is logged and never sent.
    #[error("the database is unavailable; try again shortly")]
    DatabaseUnavailable(anyhow::Error),
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
            ApiError::Unavailable { .. } | ApiError::DatabaseUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The envelope's `code`: the status's, except where one status has several causes a
    /// client may act on differently.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::DatabaseUnavailable(_) => "database_unavailable",
            other => code_for(other.status()),
        }
    }

    /// An internal error whose cause is the database being unreachable becomes
    /// `DatabaseUnavailable`; everything else is unchanged.
    fn classified(self) -> ApiError {
        match self {
            ApiError::Internal(cause) if unavailable_cause(&cause).is_some() => {
                ApiError::DatabaseUnavailable(cause)
            }
            other => other,
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
        let unavailable = database_unavailable(&e);
        let cause = anyhow::Error::new(e).context("database");
        if unavailable {
            ApiError::DatabaseUnavailable(cause)
        } else {
            ApiError::Internal(cause)
        }
    }
}

/// Seconds a client is asked to wait before retrying while the database is unavailable
/// (about the pool's acquire timeout).
const DATABASE_RETRY_AFTER_SECS: u64 = 5;

/// Whether `e` says PostgreSQL cannot be reached, as opposed to a failed query: no connection
/// within the pool's timeout, a closed pool, a broken or refused connection (also when
/// wrapped), or the server refusing sessions because it is shutting down or starting up
/// (SQLSTATE class 08, and 57P01–57P03).
pub fn database_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
        other => {
            let mut source = std::error::Error::source(other);
            while let Some(inner) = source {
                if inner
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
                {
                    return true;
                }
                source = inner.source();
            }
            false
        }
    }
}

/// The `sqlx::Error` in `cause`'s chain that says the database is unreachable, if any.
fn unavailable_cause(cause: &anyhow::Error) -> Option<&sqlx::Error> {
    cause
        .chain()
        .filter_map(|e| e.downcast_ref::<sqlx::Error>())
        .find(|e| database_unavailable(e))
}

impl From<redis::RedisError> for ApiError {
    fn from(e: redis::RedisError) -> Self {
        ApiError::Internal(anyhow::Error::new(e).context("redis"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let this = self.classified();
        let status = this.status();
        // Logged inside the request span, which carries the request id.
        match &this {
            ApiError::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "request failed");
            }
            // Expected while PostgreSQL is down and said once per request: no cause chain.
            ApiError::DatabaseUnavailable(cause) => match unavailable_cause(cause) {
                Some(e) => tracing::warn!(error = %e, "database unavailable"),
                None => tracing::warn!(error = %cause, "database unavailable"),
            },
            _ => {}
        }
        let mut res = envelope(status, this.code(), &this.to_string(), this.details());
        let retry_after = match this {
            ApiError::TooManyRequests { retry_after_secs } => Some(retry_after_secs),
            ApiError::DatabaseUnavailable(_) => Some(DATABASE_RETRY_AFTER_SECS),
            _ => None,
        };
        if let Some(secs) = retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(e: ApiError) -> (StatusCode, Option<String>) {
        let res = e.into_response();
        let retry = res
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        (res.status(), retry)
    }

    #[test]
    fn an_unreachable_database_is_503_with_retry_after() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        for e in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(refused),
        ] {
            let e = ApiError::from(e);
            assert_eq!(e.code(), "database_unavailable");
            assert_eq!(
                answer(e),
                (StatusCode::SERVICE_UNAVAILABLE, Some("5".into()))
            );
        }
    }

    #[test]
    fn an_internal_error_caused_by_an_unreachable_database_is_503() {
        let cause = anyhow::Error::new(sqlx::Error::PoolTimedOut)
            .context("loading the session")
            .context("authenticating");
        let e = ApiError::Internal(cause).classified();
        assert!(matches!(e, ApiError::DatabaseUnavailable(_)), "{e:?}");
        assert_eq!(
            answer(e),
            (StatusCode::SERVICE_UNAVAILABLE, Some("5".into()))
        );
    }

    #[test]
    fn other_database_errors_stay_internal() {
        let e = ApiError::from(sqlx::Error::RowNotFound);
        assert_eq!(e.code(), "internal_error");
        assert_eq!(answer(e), (StatusCode::INTERNAL_SERVER_ERROR, None));
        let e = ApiError::Internal(anyhow::anyhow!("no hostmaster address")).classified();
        assert!(matches!(e, ApiError::Internal(_)), "{e:?}");
    }
}
