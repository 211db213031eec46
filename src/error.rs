//! One error type for the whole crate, rendered as RFC 9457 problem details.
//!
//! Client mistakes carry a stable machine-readable `code`; server faults are
//! logged with their cause and answered with a body that never echoes it.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// `Result` with the crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Seconds a client should wait before retrying after a 503.
const RETRY_AFTER_SECONDS: &str = "1";

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client sent something we refuse: status, stable code, explanation.
    #[error("{code}: {detail}")]
    Client {
        status: StatusCode,
        code: &'static str,
        detail: String,
    },
    /// A bound on shared capacity is reached: retry after `retry_after`
    /// seconds (429 for a per-client quota, 503 for instance-wide capacity).
    #[error("{code}: {detail}")]
    Busy {
        status: StatusCode,
        code: &'static str,
        detail: String,
        retry_after: u64,
    },
    /// No token, or a token we cannot trust (RFC 6750 `invalid_token`).
    #[error("invalid token: {0}")]
    Unauthorized(String),
    /// Postgres cannot be reached right now.
    #[error("database unavailable")]
    DatabaseUnavailable(#[source] sqlx::Error),
    /// Redis cannot be reached right now.
    #[error("redis unavailable")]
    RedisUnavailable(#[source] redis::RedisError),
    /// Anything else: a bug or an unexpected state on our side.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl Error {
    /// A client error with the given status.
    pub fn client(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self::Client {
            status,
            code,
            detail: detail.into(),
        }
    }

    /// 400 Bad Request.
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::client(StatusCode::BAD_REQUEST, code, detail)
    }

    /// 403 Forbidden: the token is valid but does not allow this.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::client(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// 404 Not Found.
    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::client(StatusCode::NOT_FOUND, code, detail)
    }

    /// A bound is reached; the client may retry after `retry_after` seconds.
    pub fn busy(
        status: StatusCode,
        code: &'static str,
        detail: impl Into<String>,
        retry_after: u64,
    ) -> Self {
        Self::Busy {
            status,
            code,
            detail: detail.into(),
            retry_after: retry_after.max(1),
        }
    }

    /// 412 Precondition Failed.
    pub fn precondition_failed(code: &'static str, detail: impl Into<String>) -> Self {
        Self::client(StatusCode::PRECONDITION_FAILED, code, detail)
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Client { status, .. } | Self::Busy { status, .. } => *status,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::DatabaseUnavailable(_) | Self::RedisUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn problem(&self) -> ProblemDetails {
        let (code, detail) = match self {
            Self::Client { code, detail, .. } | Self::Busy { code, detail, .. } => {
                (*code, detail.clone())
            }
            Self::Unauthorized(detail) => ("invalid-token", detail.clone()),
            Self::DatabaseUnavailable(_) => (
                "database-unavailable",
                "the database cannot be reached; retry shortly".to_owned(),
            ),
            Self::RedisUnavailable(_) => (
                "redis-unavailable",
                "the ephemeral store cannot be reached; retry shortly".to_owned(),
            ),
            Self::Internal(_) => (
                "internal-error",
                "an unexpected error occurred; it has been logged".to_owned(),
            ),
        };
        ProblemDetails::new(self.status(), code, detail)
    }
}

/// Postgres failures that mean "not reachable right now" rather than "bug".
fn is_database_outage(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // Class 08: connection exception; 57P0x: shutting down or starting
            // up; 53300: too many connections.
            code.starts_with("08") || code.starts_with("57P") || code == "53300"
        }),
        _ => false,
    }
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        if is_database_outage(&err) {
            Self::DatabaseUnavailable(err)
        } else {
            Self::Internal(anyhow::Error::new(err))
        }
    }
}

impl From<redis::RedisError> for Error {
    fn from(err: redis::RedisError) -> Self {
        if err.is_io_error()
            || err.is_connection_dropped()
            || err.is_connection_refusal()
            || err.is_timeout()
        {
            Self::RedisUnavailable(err)
        } else {
            Self::Internal(anyhow::Error::new(err))
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match &self {
            Self::Internal(err) => tracing::error!(error = ?err, "request failed"),
            Self::DatabaseUnavailable(err) => tracing::warn!(error = %err, "postgres unavailable"),
            Self::RedisUnavailable(err) => tracing::warn!(error = %err, "redis unavailable"),
            Self::Client { .. } | Self::Busy { .. } | Self::Unauthorized(_) => {}
        }
        let mut response = self.problem().into_response();
        let headers = response.headers_mut();
        match self {
            Self::Unauthorized(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer realm="metacast", error="invalid_token""#),
                );
            }
            Self::DatabaseUnavailable(_) | Self::RedisUnavailable(_) => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECONDS),
                );
            }
            Self::Busy { retry_after, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            _ => {}
        }
        response
    }
}

/// An RFC 9457 problem: the body of every 4xx and 5xx answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "type": "about:blank",
    "title": "Precondition Failed",
    "status": 412,
    "detail": "If-Match \"3\" does not match the current version 4",
    "code": "version-mismatch"
}))]
pub struct ProblemDetails {
    /// Always `about:blank`: `code` identifies the problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// The HTTP status phrase.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong, for a human.
    pub detail: String,
    /// What went wrong, for a program: stable across releases.
    pub code: String,
}

impl ProblemDetails {
    fn new(status: StatusCode, code: &str, detail: String) -> Self {
        Self {
            kind: "about:blank".to_owned(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
            code: code.to_owned(),
        }
    }
}

impl IntoResponse for ProblemDetails {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            )],
            body,
        )
            .into_response()
    }
}
