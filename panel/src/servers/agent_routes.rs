//! The fleet in the API:
//!
//! - `GET /api/servers/{id}/health?minutes=60` (`ServersRead`): presence, the latest metrics
//!   sample and a bounded history (1 to 1440 minutes, at most [`MAX_HISTORY_ROWS`] samples).
//! - `POST /api/servers/{id}/ping?timeoutSecs=10` (`ServersWrite`: it makes the agent act):
//!   a real `Ping` through [`crate::fleet::Fleet::send`]; 503 when the agent does not answer
//!   in time.
//! - `POST /api/agents/{id}/revoke` (`AgentsRevoke`, super admins): revokes every certificate
//!   of the agent, marks the agent revoked, cuts its live connection, audits `agent.revoke`.
//!
//! Every query is scoped to the caller's tenant: another tenant's ids are 404.

use std::time::{Duration, Instant};

use axum::{Json, extract::State};
use chrono::{DateTime, Utc};
use mpanel_protocol::messages::{Outcome, Ping, Text};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::instrument;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::http::openapi::Errors;
use crate::{
    app::AppState,
    audit::{self, Entry},
    auth::permissions::{Require, perm},
    fleet::{
        DispatchError, presence,
        route::{self, Origin},
        router,
    },
    http::{
        client::ClientMeta,
        error::{ApiError, ApiResult},
        extract::{ApiQuery, IdPath},
    },
    servers::routes as servers,
};

/// The most samples one health answer carries.
pub const MAX_HISTORY_ROWS: i64 = 2_000;
/// The revoke reason of certificates revoked by an operator.
pub const REVOKED_BY_OPERATOR: &str = "revoked by operator";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ping))
        .routes(routes!(revoke))
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct HealthQuery {
    /// How much history to answer: 1 to 1440 minutes, 60 by default.
    #[param(minimum = 1, maximum = 1440)]
    minutes: Option<u32>,
}

/// One metrics sample the agent reported.
#[derive(Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = MetricsSample)]
struct Sample {
    collected_at: DateTime<Utc>,
    /// Over all cores, 0-100.
    cpu_percent: Option<f32>,
    memory_used_bytes: Option<i64>,
    memory_total_bytes: Option<i64>,
    load1: Option<f32>,
    load5: Option<f32>,
    load15: Option<f32>,
    uptime_secs: Option<i64>,
    #[schema(value_type = Vec<DiskSample>)]
    disks: Value,
    /// The state of each systemd unit the agent's roles rely on (`nginx` → `active`, …):
    /// active, activating, deactivating, reloading, inactive, failed or unknown.
    #[schema(value_type = BTreeMap<String, String>)]
    services: Value,
}

/// A mounted file system's usage, as the agent reported it.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)]
struct DiskSample {
    mount: String,
    used_bytes: u64,
    total_bytes: u64,
}

/// The server's agent, when one ever enrolled.
#[derive(Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
struct AgentSummary {
    id: Uuid,
    hostname: Option<String>,
    version: Option<String>,
    roles: Vec<crate::model::ServerRole>,
    last_seen_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

/// A server's presence, latest sample and recent history.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = ServerHealth)]
struct Health {
    server_id: Uuid,
    online: bool,
    agent_version: Option<String>,
    last_seen_at: Option<DateTime<Utc>>,
    agent: Option<AgentSummary>,
    latest: Option<Sample>,
    minutes: u32,
    history: Vec<Sample>,
}

const SAMPLE_COLUMNS: &str = "collected_at, cpu_percent, memory_used_bytes, memory_total_bytes, \
     load1, load5, load15, uptime_secs, disks, services";

/// A server's presence, its agent, its latest metrics sample and a bounded history (at most
/// 2000 samples).
#[utoipa::path(get, path = "/servers/{id}/health", tag = "fleet", operation_id = "getServerHealth", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The server's id"), HealthQuery),
    responses((status = 200, description = "The server's health", body = Health), Errors))]
#[instrument(skip_all, fields(server_id = %id))]
async fn health(
    State(state): State<AppState>,
    user: Require<perm::ServersRead>,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<HealthQuery>,
) -> ApiResult<Json<Health>> {
    let minutes = match q.minutes {
        None => 60,
        Some(m @ 1..=1440) => m,
        Some(_) => return Err(ApiError::field("minutes", "must be between 1 and 1440")),
    };
    let server = servers::find(&state.db, user.tenant_id, id).await?;
    let agent: Option<AgentSummary> = sqlx::query_as(
        "SELECT id, hostname, version, roles, last_seen_at, revoked_at
           FROM agents WHERE server_id = $1 AND tenant_id = $2",
    )
    .bind(id)
    .bind(user.tenant_id)
    .fetch_optional(&state.db)
    .await?;
    let mut history: Vec<Sample> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {SAMPLE_COLUMNS} FROM server_metrics
          WHERE server_id = $1 AND tenant_id = $2 AND collected_at >= $3
          ORDER BY collected_at DESC LIMIT $4"
    )))
    .bind(id)
    .bind(user.tenant_id)
    .bind(Utc::now() - chrono::Duration::minutes(i64::from(minutes)))
    .bind(MAX_HISTORY_ROWS)
    .fetch_all(&state.db)
    .await?;
    let latest: Option<Sample> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {SAMPLE_COLUMNS} FROM server_metrics
          WHERE server_id = $1 AND tenant_id = $2
          ORDER BY collected_at DESC LIMIT 1"
    )))
    .bind(id)
    .bind(user.tenant_id)
    .fetch_optional(&state.db)
    .await?;
    history.reverse();
    Ok(Json(Health {
        server_id: server.id,
        online: server.agent_online,
        agent_version: server.agent_version,
        last_seen_at: server.last_seen_at,
        agent,
        latest,
        minutes,
        history,
    }))
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct PingQuery {
    /// How long to wait for the agent (also for it to connect): 1 to 60 s, 10 by default.
    #[param(minimum = 1, maximum = 60)]
    timeout_secs: Option<u64>,
}

/// The agent's answer to a ping.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct PingAnswer {
    echo: String,
    round_trip_ms: f64,
}

/// Pings the server's agent through the fleet hub; 409 when it is offline or does not answer.
#[utoipa::path(post, path = "/servers/{id}/ping", tag = "fleet", operation_id = "pingServer", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The server's id"), PingQuery),
    responses((status = 200, description = "The agent answered", body = PingAnswer), Errors))]
#[instrument(skip_all, fields(server_id = %id))]
async fn ping(
    State(state): State<AppState>,
    user: Require<perm::ServersWrite>,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<PingQuery>,
) -> ApiResult<Json<PingAnswer>> {
    let wait = match q.timeout_secs {
        None => Duration::from_secs(10),
        Some(s @ 1..=60) => Duration::from_secs(s),
        Some(_) => return Err(ApiError::field("timeoutSecs", "must be between 1 and 60")),
    };
    servers::find(&state.db, user.tenant_id, id).await?;
    // Waiting for an agent to connect only makes sense when one is enrolled.
    let enrolled: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM agents WHERE server_id = $1 AND revoked_at IS NULL)",
    )
    .bind(id)
    .fetch_one(&state.db)
    .await?;
    if !enrolled && !state.fleet.is_connected(id) {
        return Err(ApiError::Conflict(
            "the server has no enrolled agent (POST /api/servers/{id}/enrollment-token)".into(),
        ));
    }
    let echo = format!("ping-{}", Uuid::new_v4().simple());
    let started = Instant::now();
    let ping = Ping {
        echo: Text::parse(echo.clone()).map_err(|e| anyhow::anyhow!("{e}"))?,
    };
    let outcome = route::send(&state, id, ping.into(), wait, Origin::Api).await;
    let round_trip_ms = started.elapsed().as_secs_f64() * 1000.0;
    // The agent, not the panel, is what failed: a 409 the caller can act on (check the
    // server), not a 5xx that would read as the panel being broken.
    let outcome = outcome.map_err(|e| match e {
        DispatchError::Offline => ApiError::Conflict(format!(
            "the server's agent is offline (waited {} s for it to connect)",
            wait.as_secs()
        )),
        DispatchError::Timeout { .. } => ApiError::Conflict(format!(
            "the server's agent did not answer within {} s",
            wait.as_secs()
        )),
        DispatchError::Database(_) => ApiError::Internal(anyhow::anyhow!("{e}")),
        DispatchError::Shutdown => ApiError::Unavailable {
            message: e.to_string(),
            details: json!({ "reason": "shutdown" }),
        },
    })?;
    match outcome {
        Outcome::Ok { .. } => {
            let pong = outcome
                .output::<Ping>()
                .and_then(Result::ok)
                .ok_or_else(|| anyhow::anyhow!("the agent answered ping with another shape"))?;
            if pong.echo.as_str() != echo {
                return Err(anyhow::anyhow!("the agent echoed something else").into());
            }
            Ok(Json(PingAnswer {
                echo,
                round_trip_ms,
            }))
        }
        Outcome::Error { code, message, .. } => Err(ApiError::Conflict(format!(
            "the agent refused the ping ({}): {message}",
            code.as_str()
        ))),
    }
}

/// What revoking an agent did.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = AgentRevoked)]
struct Revoked {
    agent_id: Uuid,
    server_id: Uuid,
    revoked_at: DateTime<Utc>,
    revoked_certificates: usize,
    disconnected: bool,
}

/// Revokes every certificate of an agent and cuts its live connection (SUPER_ADMIN).
#[utoipa::path(post, path = "/agents/{id}/revoke", tag = "fleet", operation_id = "revokeAgent", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The agent's id")),
    responses((status = 200, description = "Revoked (again: idempotent)", body = Revoked), Errors))]
#[instrument(skip_all, fields(agent_id = %id))]
async fn revoke(
    State(state): State<AppState>,
    user: Require<perm::AgentsRevoke>,
    client: ClientMeta,
    IdPath(id): IdPath,
) -> ApiResult<Json<Revoked>> {
    let mut tx = state.db.begin().await?;
    let row: Option<(Uuid, DateTime<Utc>)> = sqlx::query_as(
        "UPDATE agents SET revoked_at = COALESCE(revoked_at, now())
          WHERE id = $1 AND tenant_id = $2
      RETURNING server_id, revoked_at",
    )
    .bind(id)
    .bind(user.tenant_id)
    .fetch_optional(&mut *tx)
    .await?;
    let (server_id, revoked_at) = row.ok_or(ApiError::NotFound("agent"))?;
    let serials: Vec<String> = sqlx::query_scalar(
        "UPDATE agent_certificates SET revoked_at = now(), revoke_reason = $2
          WHERE agent_id = $1 AND revoked_at IS NULL
      RETURNING serial",
    )
    .bind(id)
    .bind(REVOKED_BY_OPERATOR)
    .fetch_all(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        Entry::by(
            &user,
            &client,
            "agent.revoke",
            json!({
                "agentId": id,
                "serverId": server_id,
                "revokedSerials": serials,
            }),
        ),
    )
    .await?;
    let online_elsewhere: bool =
        sqlx::query_scalar("SELECT agent_online FROM servers WHERE id = $1")
            .bind(server_id)
            .fetch_one(&mut *tx)
            .await?;
    // Every other panel process closes its connection too (at commit).
    router::announce_revocation(&mut *tx, Some(id), &serials).await?;
    tx.commit().await?;

    // The handshake refuses these serials from now on; the live connection goes at once.
    state.fleet.revoked.insert_all(serials.iter().cloned());
    let here = state.fleet.disconnect(Some(id), &serials, "revoked") > 0;
    let disconnected = here || online_elsewhere;
    if !disconnected && let Err(e) = presence::mark_offline(&state, server_id).await {
        tracing::warn!(
            error = format!("{e:#}"),
            "could not mark the server offline"
        );
    }
    tracing::info!(agent_id = %id, certificates = serials.len(), disconnected, "agent revoked");
    Ok(Json(Revoked {
        agent_id: id,
        server_id,
        revoked_at,
        revoked_certificates: serials.len(),
        disconnected,
    }))
}
