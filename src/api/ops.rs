//! Operations endpoints: liveness, readiness, metrics.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{Error, ProblemDetails};
use crate::state::AppState;

/// How long a readiness probe waits for each dependency.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// Readiness report.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"status": "ready"}))]
pub struct Ready {
    pub status: &'static str,
}

/// Liveness: the process is up and serving HTTP.
#[utoipa::path(
    get, path = "/healthz", tag = "operations", operation_id = "ops.healthz",
    responses((status = 200, description = "The process is up", body = Ready))
)]
async fn healthz() -> Json<Ready> {
    Json(Ready { status: "ok" })
}

/// Readiness: Postgres and Redis answer and the instance is not draining.
#[utoipa::path(
    get, path = "/readyz", tag = "operations", operation_id = "ops.readyz",
    responses(
        (status = 200, description = "Ready for traffic", body = Ready),
        (status = 503, description = "Draining for shutdown, or a dependency is unreachable",
         body = ProblemDetails, content_type = "application/problem+json",
         headers(("Retry-After" = String, description = "Seconds to wait"))),
    )
)]
async fn readyz(State(state): State<AppState>) -> Result<Json<Ready>, Error> {
    if state.lifecycle.is_draining() {
        return Err(Error::client(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this instance is shutting down",
        ));
    }
    let postgres = async {
        tokio::time::timeout(PROBE_TIMEOUT, sqlx::query("select 1").execute(&state.db))
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map(drop)
    };
    let redis = async {
        let mut conn = state.redis.clone();
        tokio::time::timeout(
            PROBE_TIMEOUT,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await
        .map_err(|_| redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))?
        .map(drop)
    };
    let (postgres, redis) = tokio::join!(postgres, redis);
    postgres?;
    redis?;
    Ok(Json(Ready { status: "ready" }))
}

/// Prometheus metrics: requests and latency by route and status, pool gauges.
#[utoipa::path(
    get, path = "/metrics", tag = "operations", operation_id = "ops.metrics",
    responses((status = 200, description = "Prometheus text exposition format",
               body = String, content_type = "text/plain; version=0.0.4"))
)]
async fn metrics(State(state): State<AppState>) -> Response {
    let backlog = tokio::time::timeout(PROBE_TIMEOUT, crate::db::outbox::backlog(&state.db));
    let lag = tokio::time::timeout(PROBE_TIMEOUT, sweeper_lag(&state));
    let (backlog, lag) = tokio::join!(backlog, lag);
    let sampled = crate::metrics::Sampled {
        outbox_backlog: backlog.ok().and_then(Result::ok),
        sweeper_lag_seconds: lag.ok().and_then(Result::ok),
    };
    let body = crate::metrics::render(&state.metrics, &state.db, &sampled);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

/// Seconds since the oldest lease deadline still waiting for the sweeper
/// (0 when none is overdue), measured on Redis' clock like the leases.
async fn sweeper_lag(state: &AppState) -> redis::RedisResult<f64> {
    let mut redis = state.redis.clone();
    let (oldest, (seconds, micros)): (Vec<(String, f64)>, (i64, i64)) = redis::pipe()
        .cmd("ZRANGE")
        .arg(state.redis_keys.deadlines())
        .arg(0)
        .arg(0)
        .arg("WITHSCORES")
        .cmd("TIME")
        .query_async(&mut redis)
        .await?;
    let now_ms = seconds as f64 * 1000.0 + micros as f64 / 1000.0;
    Ok(oldest
        .first()
        .map_or(0.0, |(_, deadline)| ((now_ms - deadline) / 1000.0).max(0.0)))
}
