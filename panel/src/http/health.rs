//! `GET /api/public/health`: is the panel able to serve? Reports the database and Redis and
//! nothing about the configuration (no hosts, versions or paths).

use std::time::{Duration, Instant};

use axum::{Json, extract::State};
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use crate::app::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn health(State(state): State<AppState>) -> ApiResult<Json<Value>> {
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
    let checks = json!({ "database": db.1, "redis": redis.1 });
    if healthy {
        Ok(Json(json!({ "status": "ok", "checks": checks })))
    } else {
        Err(ApiError::Unavailable {
            message: "a dependency of the panel is down".to_owned(),
            details: json!({ "status": "degraded", "checks": checks }),
        })
    }
}

/// Runs one probe with a deadline; the cause is logged, only up/down is answered.
async fn check(probe: impl Future<Output = Result<(), String>>) -> (bool, Value) {
    let started = Instant::now();
    let outcome = tokio::time::timeout(CHECK_TIMEOUT, probe).await;
    let ms = started.elapsed().as_millis() as u64;
    match outcome {
        Ok(Ok(())) => (true, json!({ "status": "up", "latencyMs": ms })),
        Ok(Err(cause)) => {
            tracing::warn!(%cause, "health check failed");
            (false, json!({ "status": "down", "latencyMs": ms }))
        }
        Err(_) => {
            tracing::warn!("health check timed out");
            (false, json!({ "status": "down", "latencyMs": ms }))
        }
    }
}
