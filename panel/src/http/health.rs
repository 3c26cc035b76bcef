//! `GET /api/public/health`: is the panel able to serve? Reports the database and Redis and
//! nothing about the configuration (no hosts, versions or paths).
//!
//! Only PostgreSQL decides whether the panel serves: it holds every order and job, so with
//! Redis down orders are still accepted (their jobs are queued once Redis is back) and the
//! answer is 200 `degraded`, never a 503 that would take the panel out of a load balancer.

use std::time::{Duration, Instant};

use axum::{Json, extract::State};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult};
use crate::{app::AppState, http::openapi::ErrorBody};

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The answer while the database is up.
#[derive(Serialize, ToSchema)]
#[schema(as = PanelHealth)]
pub struct Health {
    /// `ok` when every dependency is up; `degraded` when Redis is down (orders are still
    /// accepted, their jobs run once Redis is back).
    status: &'static str,
    checks: Checks,
}

/// One probe per dependency. (The 503 answer, database down, carries the same object, then
/// with `"status": "down"`, in `error.details`.)
#[derive(Serialize, ToSchema)]
#[schema(as = HealthChecks)]
pub struct Checks {
    database: Check,
    redis: Check,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = HealthCheck)]
pub struct Check {
    /// `up` or `down`.
    status: &'static str,
    latency_ms: u64,
}

/// Whether the panel can serve: its database and Redis, each up or down (no token). Redis
/// down is `degraded` but still 200; only the database down is a 503.
#[utoipa::path(get, path = "/api/public/health", tag = "public", operation_id = "getHealth",
    responses(
        (status = 200, description = "The panel serves: `status` is `ok`, or `degraded` while Redis is down (orders are still accepted; their jobs run once it is back)", body = Health),
        (status = 503, description = "The database is down; `error.details` is `{status: \"down\", checks}`", body = ErrorBody),
    ))]
pub async fn health(State(state): State<AppState>) -> ApiResult<Json<Health>> {
    let db = check(async {
        sqlx::query_scalar::<_, i32>("SELECT 1")
            .fetch_one(&state.db)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    });
    let redis = check(async { state.redis.ping().await.map_err(|e| e.to_string()) });
    let ((db_up, database), (redis_up, redis)) = tokio::join!(db, redis);
    let checks = Checks { database, redis };
    if !db_up {
        return Err(ApiError::Unavailable {
            message: "the database of the panel is down".to_owned(),
            details: json!({ "status": "down", "checks": checks }),
        });
    }
    let status = if redis_up { "ok" } else { "degraded" };
    Ok(Json(Health { status, checks }))
}

/// Runs one probe with a deadline; the cause is logged, only up/down is answered.
async fn check(probe: impl Future<Output = Result<(), String>>) -> (bool, Check) {
    let started = Instant::now();
    let outcome = tokio::time::timeout(CHECK_TIMEOUT, probe).await;
    let latency_ms = started.elapsed().as_millis() as u64;
    let up = match outcome {
        Ok(Ok(())) => true,
        Ok(Err(cause)) => {
            tracing::warn!(%cause, "health check failed");
            false
        }
        Err(_) => {
            tracing::warn!("health check timed out");
            false
        }
    };
    let status = if up { "up" } else { "down" };
    (up, Check { status, latency_ms })
}
