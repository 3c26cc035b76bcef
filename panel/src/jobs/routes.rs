//! `/api/jobs`: provisioning jobs with their logs, and a retry for failed ones.

use axum::{Json, extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::http::openapi::{Accepted, Errors, ListParams};
use crate::{
    app::AppState,
    audit::{self, Entry},
    auth::permissions::{self, Require, perm},
    http::{
        client::ClientMeta,
        error::{ApiError, ApiResult},
        extract::IdPath,
        list::{ListQuery, Page, fetch_page},
    },
    jobs::{self, payload::JobPayload, store},
    model::{JobStatus, JobType},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(detail))
        .routes(routes!(retry))
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub order_id: Option<Uuid>,
    #[serde(rename = "type")]
    #[sqlx(rename = "type")]
    pub kind: JobType,
    /// What the job works on (domain, account, zone…); password hashes show as `***`.
    #[schema(value_type = Object)]
    pub payload: Value,
    pub status: JobStatus,
    pub attempts: i32,
    pub max_attempts: i32,
    pub last_error: Option<String>,
    pub run_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub server_id: Option<Uuid>,
    /// What the agent reported on success.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, tenant_id, order_id, type, payload, status, attempts, max_attempts, \
     last_error, run_at, started_at, finished_at, server_id, result, created_at, updated_at";

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobLog {
    pub id: Uuid,
    pub from_status: Option<JobStatus>,
    pub to_status: JobStatus,
    pub message: String,
    #[schema(value_type = Option<Object>)]
    pub details: Option<Value>,
    pub created_at: DateTime<Utc>,
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct Filter {
    status: Option<JobStatus>,
    #[serde(rename = "type")]
    kind: Option<JobType>,
    order_id: Option<Uuid>,
    server_id: Option<Uuid>,
}

/// The tenant's jobs, newest first. Sortable by createdAt, updatedAt, status, type.
#[utoipa::path(get, path = "", tag = "jobs", operation_id = "listJobs", security(("bearer" = [])),
    params(ListParams, Filter),
    responses((status = 200, description = "A page of jobs", body = Page<Job>), Errors))]
async fn list(
    State(state): State<AppState>,
    user: Require<perm::JobsRead>,
    query: ListQuery<Filter>,
) -> ApiResult<Json<Page<Job>>> {
    let order = query.sorting.order_by(
        &[
            ("createdAt", "created_at"),
            ("updatedAt", "updated_at"),
            ("status", "status"),
            ("type", "type"),
        ],
        "created_at",
    )?;
    let f = &query.filter;
    const WHERE: &str = "tenant_id = $1 AND ($2::job_status IS NULL OR status = $2)
        AND ($3::job_type IS NULL OR type = $3) AND ($4::uuid IS NULL OR order_id = $4)
        AND ($5::uuid IS NULL OR server_id = $5)";
    let args = crate::pg_args![user.tenant_id, f.status, f.kind, f.order_id, f.server_id];
    let from_where = format!("FROM jobs WHERE {WHERE}");
    let mut page: Page<Job> =
        fetch_page(&state.db, COLUMNS, &from_where, &order, query.window, args).await?;
    for job in &mut page.items {
        redact(job.kind, &mut job.payload);
    }
    Ok(Json(page))
}

/// What operators see of a stored payload: the payload type's own public view (password
/// hashes travel to the agent, never to the API). A row that no longer decodes (its job has
/// failed for it) shows an empty object: what it holds is unknown, so it is not shown.
fn redact(kind: JobType, payload: &mut Value) {
    *payload = JobPayload::from_stored(kind, payload.take())
        .map(|p| p.public_view())
        .unwrap_or_else(|_| json!({}));
}

async fn find(db: impl sqlx::PgExecutor<'_>, tenant: Uuid, id: Uuid) -> ApiResult<Job> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM jobs WHERE id = $1 AND tenant_id = $2"
    )))
    .bind(id)
    .bind(tenant)
    .fetch_optional(db)
    .await?
    .ok_or(ApiError::NotFound("job"))
}

#[derive(Serialize, ToSchema)]
struct JobDetail {
    #[serde(flatten)]
    job: Job,
    logs: Vec<JobLog>,
}

/// A job with its log (every status change).
#[utoipa::path(get, path = "/{id}", tag = "jobs", operation_id = "getJob", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The job's id")),
    responses((status = 200, description = "The job and its log", body = JobDetail), Errors))]
async fn detail(
    State(state): State<AppState>,
    user: Require<perm::JobsRead>,
    IdPath(id): IdPath,
) -> ApiResult<Json<JobDetail>> {
    let mut job = find(&state.db, user.tenant_id, id).await?;
    redact(job.kind, &mut job.payload);
    let logs: Vec<JobLog> = sqlx::query_as(
        "SELECT id, from_status, to_status, message, details, created_at
           FROM job_logs WHERE job_id = $1 ORDER BY created_at, id",
    )
    .bind(id)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(JobDetail { job, logs }))
}

/// A FAILED job gets a fresh set of attempts, now.
#[utoipa::path(post, path = "/{id}/retry", tag = "jobs", operation_id = "retryJob", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The job's id")),
    responses((status = 202, description = "Queued again", body = Accepted), Errors))]
async fn retry(
    State(state): State<AppState>,
    user: Require<perm::JobsRetry>,
    client: ClientMeta,
    IdPath(id): IdPath,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let mut tx = state.db.begin().await?;
    let job = find(&mut *tx, user.tenant_id, id).await?;
    if job.status != JobStatus::Failed {
        return Err(ApiError::Conflict(format!(
            "only FAILED jobs can be retried; this one is {:?}",
            job.status
        )));
    }
    // Running a job again is doing what it does: the caller needs the permission that
    // creating it needs (SUPPORT retries a suspension, never an ADMIN's termination).
    let payload = JobPayload::from_stored(job.kind, job.payload.clone())
        .map_err(|e| ApiError::Conflict(format!("this job cannot be retried: {e}")))?;
    if let Some(action) = payload.requires()
        && !permissions::allows(user.role, action)
    {
        return Err(ApiError::Forbidden(action.describe().to_owned()));
    }
    if !store::retry_failed(&mut tx, id, user.tenant_id, user.id).await? {
        return Err(ApiError::Conflict(
            "the job is no longer FAILED (it was retried meanwhile)".into(),
        ));
    }
    audit::record(
        &mut tx,
        Entry::by(
            &user,
            &client,
            "job.retry",
            json!({ "jobId": id, "type": job.kind, "lastError": job.last_error }),
        ),
    )
    .await?;
    tx.commit().await?;
    jobs::enqueue_after_commit(&state, &[id]).await;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "jobId": id, "status": "PENDING" })),
    ))
}
