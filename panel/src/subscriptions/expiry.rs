//! Subscriptions set to cancel at the end of their period are cancelled once it has passed.
//! A duty of every panel process (`crate::duties`); several may run at once, since each
//! batch is taken with `FOR UPDATE SKIP LOCKED`.

use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    app::AppState,
    audit::{self, Entry},
    util::pause,
};

const BATCH: i64 = 200;

pub async fn run(state: AppState, shutdown: CancellationToken) {
    let every = state.config.jobs.sweep_interval;
    loop {
        if let Err(e) = end_cancelled(&state).await {
            tracing::warn!(
                error = format!("{e:#}"),
                "ending cancelled subscriptions failed; trying again"
            );
        }
        if pause(&shutdown, every).await {
            return;
        }
    }
}

/// Cancels up to a batch of subscriptions whose period ended; the number cancelled.
pub async fn end_cancelled(state: &AppState) -> sqlx::Result<usize> {
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
        audit::record(
            &mut tx,
            Entry::system(
                *tenant_id,
                "subscription.cancelled",
                json!({ "subscriptionId": id, "reason": "period ended" }),
            ),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(ended.len())
}
