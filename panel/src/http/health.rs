//! `GET /api/public/health`: is the panel able to serve? Reports the database and Redis and
//! nothing about the configuration (no hosts, versions or paths).

use std::time::{Duration, Instant};

use axum::{Json, extract::State};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult};
use crate::{app::AppState, http::openapi::ErrorBody};

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The answer while every dependency is up.
#[derive(Serialize, ToSchema)]
#[schema(as = PanelHealth)]
pub struct Healthy {
    /// `ok`.
    status: &'static str,
    checks: Checks,
}

/// One probe per dependency. (A 503 answer carries the same object, then with
/// `"status": "degraded"`, in `error.details`.)
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

/// Whether the panel can serve: its database and Redis, each up or down (no token).
#[utoipa::path(get, path = "/api/public/health", tag = "public", operation_id = "getHealth",
    responses(
        (status = 200, description = "The panel and its dependencies are up", body = Healthy),
        (status = 503, description = "A dependency is down; `error.details` is `{status: \"degraded\", checks}`", body = ErrorBody),
    ))]
pub async fn health(State(state): State<AppState>) -> ApiResult<Json<Healthy>> {
    let db = check(async {
        sqlx::query_scalar::<_, i32>("SELECT 1")
            .fetch_one(&state.db)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    });
    let redis = check(async { state.redis.ping().await.map_err(|e| e.to_string()) });
    let (db, redis) = tokio::join!(db, redis);
    let healthy = db.0 && redis.0;
    let checks = Checks {
        database: db.1,
        redis: redis.1,
    };
    if healthy {
        Ok(Json(Healthy {
            status: "ok",
            checks,
        }))
    } else {
        Err(ApiError::Unavailable {
            message: "a dependency of the panel is down".to_owned(),
            details: json!({ "status": "degraded", "checks": checks }),
        })
    }
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
