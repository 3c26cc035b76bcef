//! The durable job queue: rows in PostgreSQL (the truth, written only by [`store`]), ids on
//! a Redis stream (the work signal), workers that claim a job under a renewed lease and run
//! it through a `Dispatcher`, retries with backoff, and a sweeper that repairs whatever the
//! queue lost. It knows no resource: each job kind is a payload type with its own executor
//! and success hook ([`payload::JobKind`]), listed once in `crate::job_kinds`.

pub mod agent;
pub mod dispatcher;
pub mod payload;
pub mod queue;
pub mod routes;
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
            if let Err(e) = store::mark_enqueued(&state.db, ids).await {
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
