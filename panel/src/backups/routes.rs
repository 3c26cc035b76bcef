//! `/api/backups` (spec §8.6): the tenant's BackupJobs, re-runs through the job queue, and
//! the callback of external backup scripts.
//!
//! - `GET /jobs`, `GET /jobs/{id}` (with the latest runs), `POST /jobs` (define a backup of
//!   a target; defining the same one again answers the existing row);
//! - `POST /jobs/{id}/rerun`: queues a RUN_BACKUP job (202), or answers the one already
//!   queued or running, so a double click runs one backup;
//! - `POST /report` (internal key): a script reports a run it made; the same report twice
//!   changes nothing the second time.
//!
//! A BackupJob's `lastSizeBytes`, `lastSha256` and `lastPath` describe the archive of its
//! latest successful run (as far as the run told: a script's SUCCESS without
//! `details.path` leaves them empty); a failed run sets `lastError` and keeps them.

use axum::{Json, extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use mpanel_protocol::backup::DatabaseName;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::http::openapi::{Errors, ListParams};
use crate::{
    app::AppState,
    audit::{self, Entry},
    auth::permissions::{Require, perm},
    http::{
        client::ClientMeta,
        error::{ApiError, ApiResult},
        extract::{ApiJson, IdPath},
        internal::{BackupScripts, InternalCaller},
        list::{ListQuery, Page, fetch_page},
    },
    jobs::{self, payload::JobPayload, store},
    model::{BackupStatus, BackupType},
};

/// The longest `details` object a report may carry, as JSON text.
const MAX_DETAILS_BYTES: usize = 16 * 1024;
/// The longest path or error text a report may carry.
const MAX_TEXT_CHARS: usize = 4096;
/// Runs shown with a BackupJob.
const RECENT_RUNS: i64 = 20;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(detail))
        .routes(routes!(rerun))
        .routes(routes!(report))
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupJob {
    pub id: Uuid,
    pub tenant_id: Uuid,
    #[serde(rename = "type")]
    #[sqlx(rename = "type")]
    pub kind: BackupType,
    pub target_id: Uuid,
    /// DATABASE backups: the database dumped.
    #[sqlx(rename = "database_name")]
    pub database: Option<String>,
    pub status: BackupStatus,
    pub last_run_at: Option<DateTime<Utc>>,
    pub server_id: Option<Uuid>,
    pub last_size_bytes: Option<i64>,
    pub last_sha256: Option<String>,
    pub last_path: Option<String>,
    pub last_error: Option<String>,
    /// The latest run's details, as reported.
    #[schema(value_type = Option<Object>)]
    pub details: Option<Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, tenant_id, type, target_id, database_name, status, last_run_at, \
     server_id, last_size_bytes, last_sha256, last_path, last_error, details, created_at, \
     updated_at";

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRun {
    pub id: Uuid,
    pub job_id: Option<Uuid>,
    pub server_id: Option<Uuid>,
    /// `AGENT` (a RUN_BACKUP job) or `REPORT` (an external script).
    pub source: String,
    pub status: BackupStatus,
    pub size_bytes: Option<i64>,
    pub sha256: Option<String>,
    pub path: Option<String>,
    pub error: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub details: Option<Value>,
    pub created_at: DateTime<Utc>,
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct Filter {
    #[serde(rename = "type")]
    kind: Option<BackupType>,
    status: Option<BackupStatus>,
    target_id: Option<Uuid>,
    server_id: Option<Uuid>,
}

/// The tenant's BackupJobs, newest first. Sortable by createdAt, updatedAt, lastRunAt,
/// status, type.
#[utoipa::path(get, path = "/jobs", tag = "backups", operation_id = "listBackupJobs", security(("bearer" = [])),
    params(ListParams, Filter),
    responses((status = 200, description = "A page of BackupJobs", body = Page<BackupJob>), Errors))]
async fn list(
    State(state): State<AppState>,
    user: Require<perm::BackupsRead>,
    query: ListQuery<Filter>,
) -> ApiResult<Json<Page<BackupJob>>> {
    let order = query.sorting.order_by(
        &[
            ("createdAt", "created_at"),
            ("updatedAt", "updated_at"),
            ("lastRunAt", "last_run_at"),
            ("status", "status"),
            ("type", "type"),
        ],
        "created_at",
    )?;
    let f = &query.filter;
    const WHERE: &str = "tenant_id = $1 AND ($2::backup_type IS NULL OR type = $2)
        AND ($3::backup_status IS NULL OR status = $3) AND ($4::uuid IS NULL OR target_id = $4)
        AND ($5::uuid IS NULL OR server_id = $5)";
    let args = crate::pg_args![user.tenant_id, f.kind, f.status, f.target_id, f.server_id];
    let from_where = format!("FROM backup_jobs WHERE {WHERE}");
    let page = fetch_page(&state.db, COLUMNS, &from_where, &order, query.window, args).await?;
    Ok(Json(page))
}

/// The BackupJob `id` of `tenant` (`None`: of any tenant, for internal callers).
async fn find(
    db: impl sqlx::PgExecutor<'_>,
    tenant: Option<Uuid>,
    id: Uuid,
    lock: bool,
) -> ApiResult<BackupJob> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM backup_jobs
          WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2){lock}"
    )))
    .bind(id)
    .bind(tenant)
    .fetch_optional(db)
    .await?
    .ok_or(ApiError::NotFound("backup job"))
}

#[derive(Serialize, ToSchema)]
struct BackupJobDetail {
    #[serde(flatten)]
    job: BackupJob,
    /// The latest runs, newest first.
    runs: Vec<BackupRun>,
}

/// A BackupJob with its latest runs.
#[utoipa::path(get, path = "/jobs/{id}", tag = "backups", operation_id = "getBackupJob", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The BackupJob's id")),
    responses((status = 200, description = "The BackupJob and its latest 20 runs", body = BackupJobDetail), Errors))]
async fn detail(
    State(state): State<AppState>,
    user: Require<perm::BackupsRead>,
    IdPath(id): IdPath,
) -> ApiResult<Json<BackupJobDetail>> {
    let job = find(&state.db, Some(user.tenant_id), id, false).await?;
    let runs: Vec<BackupRun> = sqlx::query_as(
        "SELECT id, job_id, server_id, source, status, size_bytes, sha256, path, error, details,
                created_at
           FROM backup_runs WHERE backup_job_id = $1
          ORDER BY created_at DESC, id DESC LIMIT $2",
    )
    .bind(id)
    .bind(RECENT_RUNS)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(BackupJobDetail { job, runs }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CreateBackupJob {
    #[serde(rename = "type")]
    kind: BackupType,
    /// A domain (CLIENT_SITE, DATABASE) or a server (SYSTEM) of the tenant.
    target_id: Uuid,
    /// DATABASE backups only: the database to dump.
    database: Option<String>,
}

/// Defines a backup: 201 with the new BackupJob, or 200 with the one that already backs up
/// this target (and database).
#[utoipa::path(post, path = "/jobs", tag = "backups", operation_id = "createBackupJob", security(("bearer" = [])),
    request_body = CreateBackupJob,
    responses(
        (status = 201, description = "The new BackupJob", body = BackupJob),
        (status = 200, description = "The BackupJob that already backs up this target", body = BackupJob),
        Errors,
    ))]
async fn create(
    State(state): State<AppState>,
    user: Require<perm::BackupsRun>,
    client: ClientMeta,
    ApiJson(body): ApiJson<CreateBackupJob>,
) -> ApiResult<(StatusCode, Json<BackupJob>)> {
    let database = match (body.kind, body.database.as_deref()) {
        (BackupType::Database, Some(name)) => Some(
            DatabaseName::parse(name).map_err(|e| ApiError::field("database", e.to_string()))?,
        ),
        (BackupType::Database, None) => {
            return Err(ApiError::field(
                "database",
                "a DATABASE backup needs the name of the database",
            ));
        }
        (_, Some(_)) => {
            return Err(ApiError::field(
                "database",
                "only DATABASE backups name a database",
            ));
        }
        (_, None) => None,
    };
    let mut tx = state.db.begin().await?;
    // CLIENT_SITE and DATABASE back up a domain's site or database; SYSTEM a server.
    let (exists_sql, what) = match body.kind {
        BackupType::System => (
            "SELECT EXISTS (SELECT 1 FROM servers
                             WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL)",
            "no such server in this tenant (SYSTEM backups target a server)",
        ),
        BackupType::ClientSite | BackupType::Database => (
            "SELECT EXISTS (SELECT 1 FROM domains WHERE id = $1 AND tenant_id = $2)",
            "no such domain in this tenant (CLIENT_SITE and DATABASE backups target a domain)",
        ),
    };
    let known: bool = sqlx::query_scalar(exists_sql)
        .bind(body.target_id)
        .bind(user.tenant_id)
        .fetch_one(&mut *tx)
        .await?;
    if !known {
        return Err(ApiError::Unprocessable {
            message: format!("targetId: {what}"),
            field: "targetId".into(),
        });
    }
    let inserted: Option<BackupJob> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO backup_jobs (tenant_id, type, target_id, database_name)
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING {COLUMNS}"
    )))
    .bind(user.tenant_id)
    .bind(body.kind)
    .bind(body.target_id)
    .bind(database.as_ref().map(DatabaseName::as_str))
    .fetch_optional(&mut *tx)
    .await?;
    let Some(created) = inserted else {
        let existing: BackupJob = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM backup_jobs
              WHERE tenant_id = $1 AND type = $2 AND target_id = $3
                AND coalesce(database_name, '') = coalesce($4, '')"
        )))
        .bind(user.tenant_id)
        .bind(body.kind)
        .bind(body.target_id)
        .bind(database.as_ref().map(DatabaseName::as_str))
        .fetch_one(&mut *tx)
        .await?;
        return Ok((StatusCode::OK, Json(existing)));
    };
    audit::record(
        &mut tx,
        Entry::by(
            &user,
            &client,
            "backup.create",
            json!({
                "backupJobId": created.id,
                "type": created.kind,
                "targetId": created.target_id,
                "database": created.database,
            }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// The answer of a rerun: the RUN_BACKUP job to follow on `/api/jobs/{id}`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct BackupRerun {
    job_id: Uuid,
    /// True when a run was already queued or running (its job is answered).
    already_queued: bool,
}

/// Queues a run of the backup: 202 `{ jobId }`. While a run is queued or running, answers
/// that run's job instead of queueing a second one.
#[utoipa::path(post, path = "/jobs/{id}/rerun", tag = "backups", operation_id = "rerunBackupJob", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The BackupJob's id")),
    responses((status = 202, description = "Queued (or already queued)", body = BackupRerun), Errors))]
async fn rerun(
    State(state): State<AppState>,
    user: Require<perm::BackupsRun>,
    client: ClientMeta,
    IdPath(id): IdPath,
) -> ApiResult<(StatusCode, Json<BackupRerun>)> {
    let mut tx = state.db.begin().await?;
    // The row lock makes concurrent reruns of one backup queue a single job.
    let backup = find(&mut *tx, Some(user.tenant_id), id, true).await?;
    if backup.kind == BackupType::System {
        return Err(ApiError::Conflict(
            "system backups are run and reported by external scripts \
             (POST /api/backups/report); the panel cannot run them"
                .into(),
        ));
    }
    let active: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM jobs
          WHERE tenant_id = $1 AND type = 'RUN_BACKUP' AND backup_job_id = $2
            AND status IN ('PENDING', 'RUNNING')
          ORDER BY created_at LIMIT 1",
    )
    .bind(user.tenant_id)
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(job) = active {
        return Ok((
            StatusCode::ACCEPTED,
            Json(BackupRerun {
                job_id: job,
                already_queued: true,
            }),
        ));
    }
    let payload = JobPayload::from(super::job::RunBackup {
        backup_job_id: id,
        requested_by: user.id,
    });
    let job = store::insert(
        &mut tx,
        user.tenant_id,
        None,
        &payload,
        state.config.jobs.max_attempts,
    )
    .await?;
    sqlx::query("UPDATE backup_jobs SET status = 'PENDING' WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        Entry::by(
            &user,
            &client,
            "backup.rerun",
            json!({ "backupJobId": id, "jobId": job, "type": backup.kind }),
        ),
    )
    .await?;
    tx.commit().await?;
    jobs::enqueue_after_commit(&state, &[job]).await;
    Ok((
        StatusCode::ACCEPTED,
        Json(BackupRerun {
            job_id: job,
            already_queued: false,
        }),
    ))
}

/// What a script may report; PENDING is the panel's own state, not a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum BackupReportStatus {
    Success,
    Failed,
    Running,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BackupReport {
    /// The BackupJob's id.
    job_id: Uuid,
    status: BackupReportStatus,
    /// At most 16 KiB of JSON. Known fields: `path` and `error` (strings), `sizeBytes`
    /// (bytes, 0 or more), `sha256` (64 hexadecimal characters); others are kept as sent.
    #[schema(value_type = Option<Object>)]
    details: Option<Map<String, Value>>,
}

/// The known fields of a report's `details`, checked; other fields are kept as sent.
struct Checked {
    size_bytes: Option<i64>,
    sha256: Option<String>,
    path: Option<String>,
    error: Option<String>,
}

fn check_details(details: &mut Map<String, Value>) -> ApiResult<Checked> {
    let text = |key: &str, allow_newlines: bool| -> ApiResult<Option<String>> {
        let field = format!("details.{key}");
        match details.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => {
                let bad_char = s
                    .chars()
                    .any(|c| c.is_control() && !(allow_newlines && (c == '\n' || c == '\t')));
                if s.is_empty() || s.chars().count() > MAX_TEXT_CHARS || bad_char {
                    return Err(ApiError::field(
                        field,
                        format!("1 to {MAX_TEXT_CHARS} characters without control characters"),
                    ));
                }
                Ok(Some(s.clone()))
            }
            Some(_) => Err(ApiError::field(field, "must be a string")),
        }
    };
    let path = text("path", false)?;
    let error = text("error", true)?;
    let size_bytes = match details.get("sizeBytes") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| i64::try_from(n).ok())
                .ok_or_else(|| {
                    ApiError::field(
                        "details.sizeBytes",
                        "must be a whole number of bytes, 0 or more",
                    )
                })?,
        ),
    };
    let sha256 = match details.get("sha256") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let s = v
                .as_str()
                .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| {
                    ApiError::field("details.sha256", "must be 64 hexadecimal characters")
                })?
                .to_ascii_lowercase();
            // Stored as checked, so the same hash in another case is the same report.
            details.insert("sha256".into(), Value::String(s.clone()));
            Some(s)
        }
    };
    Ok(Checked {
        size_bytes,
        sha256,
        path,
        error,
    })
}

/// An external script reports a run (internal key): 200 with the BackupJob.
#[utoipa::path(post, path = "/report", tag = "backups", operation_id = "reportBackupRun", security(("internalKey" = [])),
    request_body = BackupReport,
    responses((status = 200, description = "The BackupJob, as the report left it", body = BackupJob), Errors))]
async fn report(
    State(state): State<AppState>,
    _caller: InternalCaller<BackupScripts>,
    client: ClientMeta,
    ApiJson(body): ApiJson<BackupReport>,
) -> ApiResult<Json<BackupJob>> {
    let mut details = body.details.unwrap_or_default();
    let checked = check_details(&mut details)?;
    let details_json = Value::Object(details);
    if details_json.to_string().len() > MAX_DETAILS_BYTES {
        return Err(ApiError::field(
            "details",
            format!("at most {MAX_DETAILS_BYTES} bytes of JSON"),
        ));
    }
    let mut tx = state.db.begin().await?;
    let before = find(&mut *tx, None, body.job_id, true).await?;
    let status = match body.status {
        BackupReportStatus::Success => BackupStatus::Success,
        BackupReportStatus::Failed => BackupStatus::Failed,
        BackupReportStatus::Running => BackupStatus::Running,
    };
    // The same report again: nothing more to record.
    let repeated = before.status == status
        && (status == BackupStatus::Running || before.details.as_ref() == Some(&details_json));
    if repeated {
        tx.commit().await?;
        return Ok(Json(before));
    }
    let after: BackupJob = match status {
        BackupStatus::Running => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "UPDATE backup_jobs SET status = 'RUNNING' WHERE id = $1 RETURNING {COLUMNS}"
            )))
            .bind(before.id)
            .fetch_one(&mut *tx)
            .await?
        }
        BackupStatus::Success => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "UPDATE backup_jobs SET status = 'SUCCESS', last_run_at = now(),
                        last_size_bytes = $2, last_sha256 = $3, last_path = $4,
                        last_error = NULL, details = $5
                  WHERE id = $1 RETURNING {COLUMNS}"
            )))
            .bind(before.id)
            .bind(checked.size_bytes)
            .bind(&checked.sha256)
            .bind(&checked.path)
            .bind(&details_json)
            .fetch_one(&mut *tx)
            .await?
        }
        _ => {
            let error = checked
                .error
                .clone()
                .unwrap_or_else(|| "reported as failed, without details.error".to_owned());
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "UPDATE backup_jobs SET status = 'FAILED', last_run_at = now(), last_error = $2,
                        details = $3
                  WHERE id = $1 RETURNING {COLUMNS}"
            )))
            .bind(before.id)
            .bind(error)
            .bind(&details_json)
            .fetch_one(&mut *tx)
            .await?
        }
    };
    if status != BackupStatus::Running {
        sqlx::query(
            "INSERT INTO backup_runs (tenant_id, backup_job_id, source, status, size_bytes,
                                      sha256, path, error, details)
             VALUES ($1, $2, 'REPORT', $3, $4, $5, $6, $7, $8)",
        )
        .bind(after.tenant_id)
        .bind(after.id)
        .bind(status)
        .bind(checked.size_bytes)
        .bind(&checked.sha256)
        .bind(&checked.path)
        .bind(&after.last_error)
        .bind(&details_json)
        .execute(&mut *tx)
        .await?;
    }
    audit::record(
        &mut tx,
        Entry {
            tenant_id: after.tenant_id,
            user_id: None,
            action: "backup.report",
            client: Some(&client),
            details: json!({
                "backupJobId": after.id,
                "from": before.status,
                "status": status,
                "sizeBytes": checked.size_bytes,
                "sha256": checked.sha256,
                "path": checked.path,
                "error": checked.error,
            }),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(Json(after))
}
