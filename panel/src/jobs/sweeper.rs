//! The sweeper repairs what the queue can lose, from PostgreSQL's truth, on every worker:
//! - jobs that never reached Redis (down at commit) or whose messages Redis lost, and
//!   retries that became due, are pushed to the stream;
//! - jobs whose worker died (lease expired) go back to PENDING;
//! - subscriptions set to cancel at period end are cancelled when it passes.
//!
//! Several sweepers may run: row locks with SKIP LOCKED keep them from doing the same work,
//! and a job pushed twice is still run once (the claim in PostgreSQL decides).

use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{queue, store, worker::pause};
use crate::{app::AppState, model::JobStatus};

/// A pushed job not taken within this long is pushed again (Redis may have lost it).
const REPUSH_AFTER: Duration = Duration::from_secs(120);
const BATCH: i64 = 200;

pub async fn run(state: AppState, shutdown: CancellationToken) {
    let every = state.config.jobs.sweep_interval;
    loop {
        if let Err(e) = sweep(&state).await {
            tracing::warn!(error = format!("{e:#}"), "sweep failed; trying again");
        }
        if pause(&shutdown, every).await {
            return;
        }
    }
}

pub async fn sweep(state: &AppState) -> anyhow::Result<()> {
    recover_lost(state).await?;
    push_due(state).await?;
    end_cancelled_subscriptions(state).await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct Recovered {
    id: Uuid,
    tenant_id: Uuid,
    locked_by: Option<String>,
}

async fn recover_lost(state: &AppState) -> anyhow::Result<()> {
    let mut tx = state.db.begin().await?;
    let lost: Vec<Recovered> = sqlx::query_as(
        "UPDATE jobs SET status = 'PENDING', locked_until = NULL, enqueued_at = NULL, run_at = now()
          WHERE id IN (SELECT id FROM jobs WHERE status = 'RUNNING' AND locked_until < now()
                        ORDER BY locked_until LIMIT $1 FOR UPDATE SKIP LOCKED)
      RETURNING id, tenant_id, locked_by",
    )
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    for job in &lost {
        store::log(
            &mut tx,
            job.id,
            job.tenant_id,
            Some(JobStatus::Running),
            JobStatus::Pending,
            "worker lost (lease expired); queued again",
            Some(json!({ "worker": job.locked_by })),
        )
        .await?;
    }
    tx.commit().await?;
    if !lost.is_empty() {
        tracing::warn!(jobs = lost.len(), "recovered jobs of lost workers");
    }
    Ok(())
}

async fn push_due(state: &AppState) -> anyhow::Result<()> {
    let mut tx = state.db.begin().await?;
    let due: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM jobs
          WHERE status = 'PENDING' AND run_at <= now()
            AND (enqueued_at IS NULL OR enqueued_at < now() - make_interval(secs => $1))
          ORDER BY run_at LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(REPUSH_AFTER.as_secs_f64())
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    if due.is_empty() {
        return Ok(());
    }
    // Still holding the row locks: if Redis refuses, the rollback leaves them to retry.
    queue::push(&state.redis, &due).await?;
    sqlx::query("UPDATE jobs SET enqueued_at = now() WHERE id = ANY($1)")
        .bind(&due)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(jobs = due.len(), "pushed due jobs to the queue");
    Ok(())
}

async fn end_cancelled_subscriptions(state: &AppState) -> anyhow::Result<()> {
    let mut tx = state.db.begin().await?;
    let ended: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "UPDATE subscriptions SET status = 'CANCELLED', cancelled_at = now()
          WHERE id IN (SELECT id FROM subscriptions
                        WHERE cancel_at_period_end AND status <> 'CANCELLED'
                          AND current_period_end <= now()
                        LIMIT $1 FOR UPDATE SKIP LOCKED)
      RETURNING id, tenant_id",
    )
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    for (id, tenant_id) in &ended {
        crate::audit::record(
            &mut tx,
            crate::audit::Entry {
                tenant_id: *tenant_id,
                user_id: None,
                action: "subscription.cancelled",
                client: None,
                details: json!({ "subscriptionId": id, "reason": "period ended" }),
            },
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
