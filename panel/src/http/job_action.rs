//! What every route that changes a host does (spec §12.4): the Job and its audit row, written
//! in the caller's transaction, so either both exist or neither.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    app::AppState,
    audit::{self, Entry},
    auth::current::CurrentUser,
    http::{client::ClientMeta, error::ApiResult},
    jobs::{payload::JobPayload, store},
};

/// Inserts the job for the caller's tenant and the audit row `action` (its `details` get the
/// job's id); the caller commits, then `jobs::enqueue_after_commit`.
pub async fn queue_job(
    tx: &mut sqlx::PgConnection,
    state: &AppState,
    user: &CurrentUser,
    client: &ClientMeta,
    payload: impl Into<JobPayload>,
    action: &str,
    mut details: Value,
) -> ApiResult<Uuid> {
    let job = store::insert(
        tx,
        user.tenant_id,
        None,
        &payload.into(),
        state.config.jobs.max_attempts,
    )
    .await?;
    details["jobId"] = json!(job);
    audit::record(tx, Entry::by(user, client, action, details)).await?;
    Ok(job)
}
