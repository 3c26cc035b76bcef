//! Provisioning jobs: rows in PostgreSQL (the truth), ids on a Redis stream (the work
//! signal), workers that run them through a `Dispatcher`, and a sweeper that repairs
//! whatever the queue lost.

pub mod dispatcher;
pub mod queue;
pub mod store;
pub mod sweeper;
pub mod worker;

use uuid::Uuid;

use crate::app::AppState;

/// Pushes freshly committed jobs to Redis and notes it. Failure is not an error for the
/// caller: the jobs stay `enqueued_at IS NULL` and the sweeper pushes them later.
pub async fn enqueue_after_commit(state: &AppState, ids: &[Uuid]) {
    if ids.is_empty() {
        return;
    }
    match queue::push(&state.redis, ids).await {
        Ok(()) => {
            let marked = sqlx::query(
                "UPDATE jobs SET enqueued_at = now() WHERE id = ANY($1) AND status = 'PENDING'",
            )
            .bind(ids)
            .execute(&state.db)
            .await;
            if let Err(e) = marked {
                tracing::warn!(error = %e, "jobs pushed but not marked enqueued; the sweeper may push them again");
            }
        }
        Err(e) => tracing::warn!(
            error = %e,
            jobs = ids.len(),
            "Redis unavailable: jobs stay in PostgreSQL until the sweeper can enqueue them"
        ),
    }
}
