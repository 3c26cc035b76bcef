//! Job rows in PostgreSQL are the truth, and this is the only module that writes them: every
//! state change happens here, guarded so that only the worker holding a job's lease can
//! finish it, and every change writes a JobLog row. What a success means for the resources
//! is the payload's own hook (`JobKind::on_success`), run in the same transaction.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{dispatcher::JobToRun, payload::JobPayload};
use crate::{
    app::AppState,
    audit::{self, Entry},
    model::{JobStatus, JobType},
    notify,
};

pub async fn log(
    conn: &mut PgConnection,
    job_id: Uuid,
    tenant_id: Uuid,
    from: Option<JobStatus>,
    to: JobStatus,
    message: &str,
    details: Option<Value>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO job_logs (job_id, tenant_id, from_status, to_status, message, details)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(job_id)
    .bind(tenant_id)
    .bind(from)
    .bind(to)
    .bind(message)
    .bind(details)
    .execute(conn)
    .await?;
    Ok(())
}

/// Creates a PENDING job (not yet on the queue: enqueue it after the commit). Its type and
/// its typed reference columns come from the payload.
pub async fn insert(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    order_id: Option<Uuid>,
    payload: &JobPayload,
    max_attempts: i32,
) -> sqlx::Result<Uuid> {
    let refs = payload.refs();
    // clock_timestamp keeps creation order visible among jobs of one transaction.
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO jobs (tenant_id, order_id, type, payload, max_attempts, created_at,
                           domain_id, subscription_id, hosting_account_id, mail_account_id,
                           dns_zone_id, backup_job_id, vps_id)
         VALUES ($1, $2, $3, $4, $5, clock_timestamp(), $6, $7, $8, $9, $10, $11, $12)
         RETURNING id",
    )
    .bind(tenant_id)
    .bind(order_id)
    .bind(payload.job_type())
    .bind(payload.to_stored())
    .bind(max_attempts)
    .bind(refs.domain_id)
    .bind(refs.subscription_id)
    .bind(refs.hosting_account_id)
    .bind(refs.mail_account_id)
    .bind(refs.dns_zone_id)
    .bind(refs.backup_job_id)
    .bind(refs.vps_id)
    .fetch_one(&mut *conn)
    .await?;
    log(
        conn,
        id,
        tenant_id,
        None,
        JobStatus::Pending,
        "created",
        None,
    )
    .await?;
    Ok(id)
}

/// The SQL condition under which job alias `j` may run: it waits for no job, or for one
/// that succeeded.
fn ready(j: &str) -> String {
    format!(
        "({j}.after_job_id IS NULL OR EXISTS (SELECT 1 FROM jobs dep
                                               WHERE dep.id = {j}.after_job_id
                                                 AND dep.status = 'SUCCESS'))"
    )
}

/// `job` runs only after `after` succeeded (both in the caller's transaction).
pub async fn run_after(conn: &mut PgConnection, job: Uuid, after: Uuid) -> sqlx::Result<()> {
    sqlx::query("UPDATE jobs SET after_job_id = $2 WHERE id = $1")
        .bind(job)
        .bind(after)
        .execute(conn)
        .await?;
    Ok(())
}

/// An order's job whose failure does not hold the order back (its certificate: a site whose
/// certificate cannot be had yet is live on HTTP, and its customer should hear of it).
pub async fn optional_for_order(conn: &mut PgConnection, job: Uuid) -> sqlx::Result<()> {
    sqlx::query("UPDATE jobs SET optional = true WHERE id = $1")
        .bind(job)
        .execute(conn)
        .await?;
    Ok(())
}

/// A job a worker holds the lease of.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedJob {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub order_id: Option<Uuid>,
    #[sqlx(rename = "type")]
    pub kind: JobType,
    pub payload: Value,
    pub attempts: i32,
    pub max_attempts: i32,
    pub previous: JobStatus,
    /// When it became due (for the queue's wait).
    pub run_at: chrono::DateTime<chrono::Utc>,
}

/// Takes the job if it is due, or if its previous worker's lease ran out. `None` when the
/// job is not ours to run (finished, not yet due, or held by a live worker): the queue
/// message was a duplicate.
pub async fn claim(
    db: &PgPool,
    job_id: Uuid,
    worker: &str,
    lease: Duration,
) -> sqlx::Result<Option<ClaimedJob>> {
    let mut tx = db.begin().await?;
    let sql = format!(
        "WITH prev AS (SELECT id, status FROM jobs WHERE id = $1 FOR UPDATE)
         UPDATE jobs j
            SET status = 'RUNNING', attempts = j.attempts + 1, started_at = now(),
                finished_at = NULL, locked_by = $2,
                locked_until = now() + make_interval(secs => $3)
           FROM prev
          WHERE j.id = prev.id
            AND ((prev.status = 'PENDING' AND j.run_at <= now() AND {READY})
              OR (prev.status = 'RUNNING' AND j.locked_until < now()))
      RETURNING j.id, j.tenant_id, j.order_id, j.type, j.payload, j.attempts, j.max_attempts,
                prev.status AS previous, j.run_at",
        READY = ready("j")
    );
    let claimed: Option<ClaimedJob> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(job_id)
        .bind(worker)
        .bind(lease.as_secs_f64())
        .fetch_optional(&mut *tx)
        .await?;
    if let Some(job) = &claimed {
        let message = if job.previous == JobStatus::Running {
            format!("attempt {} started (previous worker lost)", job.attempts)
        } else {
            format!("attempt {} started", job.attempts)
        };
        log(
            &mut tx,
            job.id,
            job.tenant_id,
            Some(job.previous),
            JobStatus::Running,
            &message,
            Some(json!({ "worker": worker })),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(claimed)
}

/// Keeps the lease while the job runs; false when it was lost to another worker.
pub async fn extend_lease(
    db: &PgPool,
    job_id: Uuid,
    worker: &str,
    lease: Duration,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE jobs SET locked_until = now() + make_interval(secs => $3)
          WHERE id = $1 AND locked_by = $2 AND status = 'RUNNING'",
    )
    .bind(job_id)
    .bind(worker)
    .bind(lease.as_secs_f64())
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records success and runs the payload's success hook in the same transaction; returns the
/// dependants this released (pushed to the stream), or `None` when the lease was lost.
pub async fn succeed(
    state: &AppState,
    job: &ClaimedJob,
    run: &JobToRun,
    worker: &str,
    result: Value,
) -> sqlx::Result<Option<Vec<Uuid>>> {
    let mut tx = state.db.begin().await?;
    let done = sqlx::query(
        "UPDATE jobs SET status = 'SUCCESS', finished_at = now(), result = $3,
                locked_by = NULL, locked_until = NULL
          WHERE id = $1 AND locked_by = $2 AND status = 'RUNNING'",
    )
    .bind(job.id)
    .bind(worker)
    .bind(&result)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(None);
    }
    log(
        &mut tx,
        job.id,
        job.tenant_id,
        Some(JobStatus::Running),
        JobStatus::Success,
        "succeeded",
        Some(result),
    )
    .await?;
    run.payload.on_success(&mut tx, state, run).await?;
    audit::record(
        &mut tx,
        Entry::system(
            job.tenant_id,
            "job.succeeded",
            json!({ "jobId": job.id, "type": job.kind, "attempts": job.attempts }),
        ),
    )
    .await?;
    // Its dependants are runnable now: no sweep interval between two steps of an order.
    let released: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "UPDATE jobs SET run_at = now(), enqueued_at = NULL
          WHERE after_job_id = $1 AND status = 'PENDING'
      RETURNING id, tenant_id",
    )
    .bind(job.id)
    .fetch_all(&mut *tx)
    .await?;
    for (id, tenant_id) in &released {
        let message = format!("ready: job {} succeeded", job.id);
        log(
            &mut tx,
            *id,
            *tenant_id,
            Some(JobStatus::Pending),
            JobStatus::Pending,
            &message,
            None,
        )
        .await?;
    }
    tx.commit().await?;
    let ids: Vec<Uuid> = released.into_iter().map(|(id, _)| id).collect();
    super::enqueue_after_commit(state, &ids).await;
    Ok(Some(ids))
}

pub enum Failure {
    /// Scheduled again at the given delay.
    Retrying(Duration),
    Failed,
}

/// Records a failed attempt: another attempt after `retry_in` when allowed, else FAILED
/// with the error kept in `lastError` and the tenant's admins told by e-mail.
pub async fn fail(
    state: &AppState,
    job: &ClaimedJob,
    worker: &str,
    error: &str,
    retry_in: Option<Duration>,
) -> sqlx::Result<Option<Failure>> {
    let mut tx = state.db.begin().await?;
    let retry_in = retry_in.filter(|_| job.attempts < job.max_attempts);
    let done = match retry_in {
        Some(delay) => sqlx::query(
            "UPDATE jobs SET status = 'PENDING', last_error = $3, locked_by = NULL, locked_until = NULL,
                    enqueued_at = NULL, run_at = now() + make_interval(secs => $4)
              WHERE id = $1 AND locked_by = $2 AND status = 'RUNNING'",
        )
        .bind(job.id)
        .bind(worker)
        .bind(error)
        .bind(delay.as_secs_f64())
        .execute(&mut *tx)
        .await?,
        None => sqlx::query(
            "UPDATE jobs SET status = 'FAILED', last_error = $3, finished_at = now(),
                    locked_by = NULL, locked_until = NULL
              WHERE id = $1 AND locked_by = $2 AND status = 'RUNNING'",
        )
        .bind(job.id)
        .bind(worker)
        .bind(error)
        .execute(&mut *tx)
        .await?,
    };
    if done.rows_affected() == 0 {
        return Ok(None);
    }
    let outcome = match retry_in {
        Some(delay) => {
            let msg = format!(
                "attempt {} of {} failed; retrying in {}s",
                job.attempts,
                job.max_attempts,
                delay.as_secs()
            );
            log(
                &mut tx,
                job.id,
                job.tenant_id,
                Some(JobStatus::Running),
                JobStatus::Pending,
                &msg,
                Some(json!({ "error": error })),
            )
            .await?;
            Failure::Retrying(delay)
        }
        None => {
            let msg = format!("failed after {} attempt(s)", job.attempts);
            log(
                &mut tx,
                job.id,
                job.tenant_id,
                Some(JobStatus::Running),
                JobStatus::Failed,
                &msg,
                Some(json!({ "error": error })),
            )
            .await?;
            // A payload that does not decode failed before it ran: no hook to run.
            if let Ok(payload) = JobPayload::from_stored(job.kind, job.payload.clone()) {
                payload.on_failed(&mut tx, state).await?;
            }
            audit::record(
                &mut tx,
                Entry::system(job.tenant_id, "job.failed", json!({ "jobId": job.id, "type": job.kind, "attempts": job.attempts, "error": error })),
            )
            .await?;
            let waiting: Vec<(Uuid, Uuid)> = sqlx::query_as(
                "SELECT id, tenant_id FROM jobs WHERE after_job_id = $1 AND status = 'PENDING'",
            )
            .bind(job.id)
            .fetch_all(&mut *tx)
            .await?;
            for (id, tenant_id) in waiting {
                let message = format!(
                    "waiting for job {}, which failed: it runs once that job is retried and succeeds",
                    job.id
                );
                log(
                    &mut tx,
                    id,
                    tenant_id,
                    Some(JobStatus::Pending),
                    JobStatus::Pending,
                    &message,
                    None,
                )
                .await?;
            }
            let kind = json!(job.kind);
            notify::queue_job_failed(
                &mut tx,
                &state.sealer,
                &state.config,
                job.tenant_id,
                job.id,
                kind.as_str().unwrap_or("job"),
                job.attempts,
                error,
            )
            .await?;
            Failure::Failed
        }
    };
    tx.commit().await?;
    Ok(Some(outcome))
}

/// Records which server a job runs on (shown on the job).
pub async fn set_server(db: &PgPool, job: Uuid, server: Uuid) -> sqlx::Result<()> {
    sqlx::query("UPDATE jobs SET server_id = $2 WHERE id = $1")
        .bind(job)
        .bind(server)
        .execute(db)
        .await?;
    Ok(())
}

/// Marks freshly pushed jobs as enqueued (the sweeper pushes those left unmarked).
pub async fn mark_enqueued(db: impl sqlx::PgExecutor<'_>, ids: &[Uuid]) -> sqlx::Result<()> {
    sqlx::query("UPDATE jobs SET enqueued_at = now() WHERE id = ANY($1) AND status = 'PENDING'")
        .bind(ids)
        .execute(db)
        .await?;
    Ok(())
}

/// A FAILED job gets a fresh set of attempts, now; false when it is not FAILED (any more).
pub async fn retry_failed(
    conn: &mut PgConnection,
    job: Uuid,
    tenant_id: Uuid,
    user_id: Uuid,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE jobs SET status = 'PENDING', attempts = 0, run_at = now(), enqueued_at = NULL,
                finished_at = NULL WHERE id = $1 AND tenant_id = $2 AND status = 'FAILED'",
    )
    .bind(job)
    .bind(tenant_id)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    log(
        conn,
        job,
        tenant_id,
        Some(JobStatus::Failed),
        JobStatus::Pending,
        "retried by an operator",
        Some(json!({ "userId": user_id })),
    )
    .await?;
    Ok(true)
}

/// Jobs whose worker's lease ran out go back to PENDING (at most `batch` at a time); the
/// number recovered.
pub async fn recover_expired(db: &PgPool, batch: i64) -> sqlx::Result<usize> {
    let mut tx = db.begin().await?;
    let lost: Vec<(Uuid, Uuid, Option<String>)> = sqlx::query_as(
        "UPDATE jobs SET status = 'PENDING', locked_until = NULL, enqueued_at = NULL, run_at = now()
          WHERE id IN (SELECT id FROM jobs WHERE status = 'RUNNING' AND locked_until < now()
                        ORDER BY locked_until LIMIT $1 FOR UPDATE SKIP LOCKED)
      RETURNING id, tenant_id, locked_by",
    )
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    for (id, tenant_id, locked_by) in &lost {
        log(
            &mut tx,
            *id,
            *tenant_id,
            Some(JobStatus::Running),
            JobStatus::Pending,
            "worker lost (lease expired); queued again",
            Some(json!({ "worker": locked_by })),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(lost.len())
}

/// Due PENDING jobs never pushed (or pushed longer than `repush_after` ago and not taken)
/// go to `push`, under their row locks: if `push` fails, nothing is marked and they stay for
/// the next sweep. The number pushed.
pub async fn push_due<F, Fut, E>(
    db: &PgPool,
    repush_after: Duration,
    batch: i64,
    push: F,
) -> anyhow::Result<usize>
where
    F: FnOnce(Vec<Uuid>) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let mut tx = db.begin().await?;
    let sql = format!(
        "SELECT id FROM jobs j
          WHERE status = 'PENDING' AND run_at <= now() AND {}
            AND (enqueued_at IS NULL OR enqueued_at < now() - make_interval(secs => $1))
          ORDER BY run_at LIMIT $2 FOR UPDATE OF j SKIP LOCKED",
        ready("j")
    );
    let due: Vec<Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(repush_after.as_secs_f64())
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?;
    if due.is_empty() {
        return Ok(0);
    }
    push(due.clone()).await?;
    sqlx::query("UPDATE jobs SET enqueued_at = now() WHERE id = ANY($1)")
        .bind(&due)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(due.len())
}

/// Marks every PENDING job as never pushed, so the next sweep pushes them at once: called
/// when Redis lost the stream (it restarted empty), since the messages of jobs already
/// marked enqueued are gone and would otherwise wait `REPUSH_AFTER`. A job still on a live
/// stream is merely pushed twice, which is harmless (the claim decides). The number marked.
pub async fn forget_enqueued(db: &PgPool) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "UPDATE jobs SET enqueued_at = NULL WHERE status = 'PENDING' AND enqueued_at IS NOT NULL",
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// A job this worker stops running at shutdown goes back to PENDING at once, its attempt
/// not counted (it did not fail); false when the lease was no longer ours.
pub async fn hand_back(
    db: &PgPool,
    job_id: Uuid,
    tenant_id: Uuid,
    worker: &str,
) -> sqlx::Result<bool> {
    let mut tx = db.begin().await?;
    let done = sqlx::query(
        "UPDATE jobs SET status = 'PENDING', attempts = GREATEST(attempts - 1, 0),
                locked_by = NULL, locked_until = NULL, enqueued_at = NULL, run_at = now()
          WHERE id = $1 AND locked_by = $2 AND status = 'RUNNING'",
    )
    .bind(job_id)
    .bind(worker)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    log(
        &mut tx,
        job_id,
        tenant_id,
        Some(JobStatus::Running),
        JobStatus::Pending,
        "handed back at shutdown",
        Some(json!({ "worker": worker })),
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

pub use crate::util::backoff;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let base = Duration::from_secs(2);
        let max = Duration::from_secs(60);
        let d1 = backoff(base, max, 1);
        let d3 = backoff(base, max, 3);
        assert!(d1 >= Duration::from_secs(2) && d1 <= Duration::from_millis(2200));
        assert!(d3 >= Duration::from_secs(8) && d3 <= Duration::from_millis(8800));
        assert_eq!(backoff(base, max, 30), max);
    }
}
