//! Presence and health of servers, as the hub learns them from their agents.
//!
//! - **Redis** `<prefix>fleet:presence:<server_id>` = `{"agentId","version","connId","replica",…}` with
//!   a TTL of three heartbeat intervals, refreshed on every heartbeat: it disappears by itself
//!   when the replica holding the connection dies.
//! - **PostgreSQL** `servers.agent_online/agent_version/last_seen_at` and
//!   `agents.last_seen_at/version/hostname/roles`: set on connect and disconnect, and
//!   `last_seen_at` refreshed at most every [`DB_TOUCH_EVERY`] while connected (10,000
//!   agents heartbeating every 15 s would otherwise be ~670 row updates a second).
//! - `server_metrics`: one row per accepted report, at most one per second per server, kept
//!   for `AGENT_METRICS_RETENTION` and at most [`MAX_SAMPLES_PER_SERVER`] per server.
//!
//! The hub writes all three through [`super::batch`] (one statement per batch of
//! connections); this module keeps the keys, the offline mark the API uses, and the
//! maintenance.
//!
//! The maintenance loop of every replica's hub reloads its own cache of revoked serials
//! (per process, so everywhere), marks offline the servers whose `last_seen_at` went stale
//! (their replica died without saying so; idempotent, so everywhere) and prunes metrics and
//! finished commands (elected: one replica at a time, under an advisory lock).

use std::time::Duration;

use chrono::Utc;
use mpanel_protocol::messages::Role;
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::commands;
use crate::{app::AppState, model::ServerRole};

/// How often a connected server's `last_seen_at` is written to PostgreSQL.
pub const DB_TOUCH_EVERY: Duration = Duration::from_secs(30);
/// Most samples kept per server (a week at one every 30 s).
pub const MAX_SAMPLES_PER_SERVER: i64 = 20_160;
const MAINTENANCE_EVERY: Duration = Duration::from_secs(60);
/// Finished (or expired) commands are kept this long for a later run of their job, then
/// deleted; well past `fleet::route::REUSE_WINDOW`.
pub const COMMAND_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// The advisory lock key of the elected pruning ("mpanel prune").
const PRUNE_LOCK: i64 = 0x6d70_616e_656c_7072;

pub fn presence_key(state: &AppState, server_id: Uuid) -> String {
    state.redis.key(&format!("fleet:presence:{server_id}"))
}

pub(super) fn ttl_secs(state: &AppState) -> u64 {
    (state.config.fleet.heartbeat_interval.as_secs() * 3).max(3)
}

/// The server roles an agent's protocol roles stand for.
pub fn server_roles(roles: &[Role]) -> Vec<ServerRole> {
    let mut out: Vec<ServerRole> = roles
        .iter()
        .map(|r| match r {
            Role::Web => ServerRole::Web,
            Role::Dns => ServerRole::Dns,
            Role::Mail => ServerRole::Mail,
            Role::Db => ServerRole::Db,
            Role::Backup => ServerRole::Storage,
        })
        .collect();
    out.dedup();
    out
}

/// The connection ended and no newer one replaced it: the server is offline.
pub async fn mark_offline(state: &AppState, server_id: Uuid) -> anyhow::Result<()> {
    sqlx::query("UPDATE servers SET agent_online = false, last_seen_at = now() WHERE id = $1")
        .bind(server_id)
        .execute(&state.db)
        .await?;
    let mut conn = state.redis.conn();
    let r: redis::RedisResult<()> = conn.del(presence_key(state, server_id)).await;
    if let Err(e) = r {
        tracing::debug!(error = %e, "presence: Redis unavailable");
    }
    Ok(())
}

/// Deletes samples past `retention` and beyond the per-server cap; returns how many.
pub async fn prune_metrics(
    conn: &mut sqlx::PgConnection,
    retention: Duration,
) -> anyhow::Result<u64> {
    let retention = chrono::Duration::from_std(retention)?;
    let old = sqlx::query("DELETE FROM server_metrics WHERE collected_at < $1")
        .bind(Utc::now() - retention)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    let over = sqlx::query(
        "DELETE FROM server_metrics WHERE id IN (
             SELECT id FROM (
                 SELECT id, row_number() OVER (PARTITION BY server_id ORDER BY collected_at DESC) AS n
                   FROM server_metrics) ranked
              WHERE n > $1)",
    )
    .bind(MAX_SAMPLES_PER_SERVER)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(old + over)
}

/// The pruning of every replica's maintenance, done by one at a time: the deletes are heavy
/// and would only wait on each other's row locks. `None` when another replica holds it.
async fn prune_elected(state: &AppState) -> anyhow::Result<Option<(u64, u64)>> {
    let mut tx = state.db.begin().await?;
    let elected: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(PRUNE_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !elected {
        return Ok(None);
    }
    let metrics = prune_metrics(&mut tx, state.config.fleet.metrics_retention).await?;
    let commands = commands::prune(&mut *tx, COMMAND_RETENTION).await?;
    tx.commit().await?;
    Ok(Some((metrics, commands)))
}

/// Servers marked online whose `last_seen_at` stopped moving: whoever held them is gone.
/// Servers connected to this replica are left alone.
async fn sweep_stale(state: &AppState) -> anyhow::Result<()> {
    let stale =
        chrono::Duration::from_std(DB_TOUCH_EVERY * 3 + state.config.fleet.heartbeat_interval * 2)?;
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM servers
          WHERE agent_online AND (last_seen_at IS NULL OR last_seen_at < $1)",
    )
    .bind(Utc::now() - stale)
    .fetch_all(&state.db)
    .await?;
    for id in ids {
        if !state.fleet.is_connected(id) {
            tracing::info!(server_id = %id, "server's agent fell silent; marked offline");
            mark_offline(state, id).await?;
        }
    }
    Ok(())
}

/// Prunes, refreshes the revocation cache and sweeps stale presence until `shutdown`.
pub async fn maintenance(state: AppState, shutdown: CancellationToken) {
    loop {
        match state.fleet.revoked.reload(&state.db).await {
            Ok(_) => {}
            Err(e) => tracing::warn!(error = format!("{e:#}"), "reload revoked serials failed"),
        }
        if let Err(e) = sweep_stale(&state).await {
            tracing::warn!(error = format!("{e:#}"), "presence sweep failed");
        }
        match prune_elected(&state).await {
            Ok(None | Some((0, 0))) => {}
            Ok(Some((metrics, commands))) => {
                tracing::info!(
                    metrics,
                    commands,
                    "pruned server metrics and finished commands"
                )
            }
            Err(e) => tracing::warn!(error = format!("{e:#}"), "pruning failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(MAINTENANCE_EVERY) => {}
        }
    }
}
