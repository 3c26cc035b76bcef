//! The lifecycle's dates, kept by a duty of every panel process (`crate::duties`):
//! subscriptions set to cancel at their period's end are cancelled once it has passed;
//! unpaid ones are warned, then suspended, when their grace period says; cancelled ones are
//! terminated once their retention has passed. Several processes may run this at once:
//! each batch is taken with `FOR UPDATE SKIP LOCKED` and every step clears or moves the
//! date that selected it, in the same transaction.

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{billing, lifecycle, policy, service};
use crate::{
    app::AppState,
    audit::{self, Entry},
    jobs,
    model::{ServiceState, SuspendReason},
    notify::{self, Notice},
    util::pause,
};

const BATCH: i64 = 200;

pub async fn run(state: AppState, shutdown: CancellationToken) {
    let every = state.config.jobs.sweep_interval;
    loop {
        if let Err(e) = tick(&state).await {
            tracing::warn!(
                error = format!("{e:#}"),
                "keeping the subscriptions' lifecycle dates failed; trying again"
            );
        }
        if pause(&shutdown, every).await {
            return;
        }
    }
}

/// One pass over every date that is due; the number of subscriptions moved on.
pub async fn tick(state: &AppState) -> sqlx::Result<usize> {
    let mut moved = end_cancelled(state).await?;
    moved += warn_due(state).await?;
    moved += act_due(state, Due::Suspension).await?;
    moved += act_due(state, Due::Termination).await?;
    Ok(moved)
}

/// Cancels up to a batch of subscriptions whose period ended; their resources are suspended
/// and terminated after the tenant's retention.
pub async fn end_cancelled(state: &AppState) -> sqlx::Result<usize> {
    let mut tx = state.db.begin().await?;
    let ended: Vec<(Uuid, Uuid, DateTime<Utc>)> = sqlx::query_as(
        "SELECT id, tenant_id, current_period_end FROM subscriptions
          WHERE cancel_at_period_end AND status <> 'CANCELLED' AND current_period_end <= now()
          LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    let mut queued = Vec::new();
    for (id, tenant_id, period_end) in &ended {
        let policy = policy::of_tenant(&mut *tx, *tenant_id).await?;
        billing::cancelled(&mut tx, *id, lifecycle::cancellation(*period_end, &policy)).await?;
        audit::record(
            &mut tx,
            Entry::system(
                *tenant_id,
                "subscription.cancelled",
                json!({ "subscriptionId": id, "reason": "period ended" }),
            ),
        )
        .await?;
        let change = service::change(
            &mut tx,
            *id,
            ServiceState::Suspended,
            Some(SuspendReason::Cancelled),
        )
        .await?;
        queued.extend(change.map(|q| q.job));
    }
    tx.commit().await?;
    jobs::enqueue_after_commit(state, &queued).await;
    Ok(ended.len())
}

/// "Your services will be suspended on …", once per unpaid period.
async fn warn_due(state: &AppState) -> sqlx::Result<usize> {
    let mut tx = state.db.begin().await?;
    let due: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
        "SELECT id, past_due_since FROM subscriptions
          WHERE status = 'PAST_DUE' AND service_state = 'ACTIVE' AND warn_after <= now()
            AND suspend_after > now() AND past_due_since IS NOT NULL
          LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    for (id, since) in &due {
        notify::queue_subscription_notice(
            &mut tx,
            &state.sealer,
            &state.config,
            *id,
            Notice::SuspensionComing,
            &since.timestamp().to_string(),
        )
        .await?;
        clear_warning(&mut tx, *id).await?;
    }
    tx.commit().await?;
    Ok(due.len())
}

async fn clear_warning(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<()> {
    sqlx::query("UPDATE subscriptions SET warn_after = NULL WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

#[derive(Clone, Copy)]
enum Due {
    /// Unpaid past the grace period.
    Suspension,
    /// Cancelled past the retention.
    Termination,
}

async fn act_due(state: &AppState, due: Due) -> sqlx::Result<usize> {
    let sql = match due {
        Due::Suspension => {
            "SELECT id, tenant_id FROM subscriptions
              WHERE status = 'PAST_DUE' AND service_state = 'ACTIVE' AND suspend_after <= now()
              LIMIT $1 FOR UPDATE SKIP LOCKED"
        }
        Due::Termination => {
            "SELECT id, tenant_id FROM subscriptions
              WHERE status = 'CANCELLED' AND service_state <> 'TERMINATED'
                AND terminate_after <= now()
              LIMIT $1 FOR UPDATE SKIP LOCKED"
        }
    };
    let mut tx = state.db.begin().await?;
    let rows: Vec<(Uuid, Uuid)> = sqlx::query_as(sql).bind(BATCH).fetch_all(&mut *tx).await?;
    let mut queued = Vec::new();
    for (id, tenant_id) in &rows {
        let (to, reason, action) = match due {
            Due::Suspension => (
                ServiceState::Suspended,
                Some(SuspendReason::NonPayment),
                "subscription.suspend_due",
            ),
            Due::Termination => (ServiceState::Terminated, None, "subscription.terminate_due"),
        };
        if matches!(due, Due::Suspension) {
            // A warning not sent yet is moot once suspended.
            clear_warning(&mut tx, *id).await?;
        }
        let change = service::change(&mut tx, *id, to, reason).await?;
        audit::record(
            &mut tx,
            Entry::system(
                *tenant_id,
                action,
                json!({ "subscriptionId": id, "jobId": change.map(|q| q.job) }),
            ),
        )
        .await?;
        queued.extend(change.map(|q| q.job));
    }
    tx.commit().await?;
    jobs::enqueue_after_commit(state, &queued).await;
    Ok(rows.len())
}
