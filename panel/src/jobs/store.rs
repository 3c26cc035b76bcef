//! Job rows in PostgreSQL are the truth: every state change happens here, guarded so that
//! only the worker holding a job's lease can finish it, and every change writes a JobLog row.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    audit::{self, Entry},
    config::Config,
    model::{JobStatus, JobType},
    notify,
    secrets::Sealer,
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

/// Creates a PENDING job (not yet on the queue: enqueue it after the commit).
pub async fn insert(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    order_id: Option<Uuid>,
    kind: JobType,
    payload: &Value,
    max_attempts: i32,
) -> sqlx::Result<Uuid> {
    // clock_timestamp keeps creation order visible among jobs of one transaction.
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO jobs (tenant_id, order_id, type, payload, max_attempts, created_at)
         VALUES ($1, $2, $3, $4, $5, clock_timestamp()) RETURNING id",
    )
    .bind(tenant_id)
    .bind(order_id)
    .bind(kind)
    .bind(payload)
    .bind(max_attempts)
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

/// A job a worker holds the lease of.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedJob {
    pub id: Uuid,
    pub tenant_id: Uuid,
    #[sqlx(rename = "type")]
    pub kind: JobType,
    pub payload: Value,
    pub attempts: i32,
    pub max_attempts: i32,
    pub previous: JobStatus,
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
    let claimed: Option<ClaimedJob> = sqlx::query_as(
        "WITH prev AS (SELECT id, status FROM jobs WHERE id = $1 FOR UPDATE)
         UPDATE jobs j
            SET status = 'RUNNING', attempts = j.attempts + 1, started_at = now(),
                finished_at = NULL, locked_by = $2,
                locked_until = now() + make_interval(secs => $3)
           FROM prev
          WHERE j.id = prev.id
            AND ((prev.status = 'PENDING' AND j.run_at <= now())
              OR (prev.status = 'RUNNING' AND j.locked_until < now()))
      RETURNING j.id, j.tenant_id, j.type, j.payload, j.attempts, j.max_attempts,
                prev.status AS previous",
    )
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

/// Records success; the order's last job to succeed also makes its domain ACTIVE and queues
/// the customer's welcome e-mail (`sealer` and `config` are for that e-mail).
pub async fn succeed(
    db: &PgPool,
    sealer: &Sealer,
    config: &Config,
    job: &ClaimedJob,
    worker: &str,
    result: Value,
) -> sqlx::Result<bool> {
    let mut tx = db.begin().await?;
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
        return Ok(false);
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
    // Jobs of one order finishing at once would each still see the others RUNNING
    // (uncommitted), and none would find the order complete: the order's row lock makes them
    // look one after the other.
    let order_id: Option<Uuid> = sqlx::query_scalar(
        "SELECT o.id FROM orders o JOIN jobs j ON j.order_id = o.id WHERE j.id = $1 FOR UPDATE OF o",
    )
    .bind(job.id)
    .fetch_optional(&mut *tx)
    .await?;
    // The order's domain is live once every job of the order has succeeded.
    sqlx::query(
        "UPDATE domains d SET status = 'ACTIVE'
           FROM jobs j
          WHERE j.id = $1 AND d.id = (j.payload->>'domainId')::uuid AND d.status = 'PENDING_SETUP'
            AND j.order_id IS NOT NULL
            AND NOT EXISTS (SELECT 1 FROM jobs o WHERE o.order_id = j.order_id AND o.status <> 'SUCCESS')",
    )
    .bind(job.id)
    .execute(&mut *tx)
    .await?;
    // ... and its customer hears of it (once per order: queue_welcome deduplicates), also when
    // the order reused a domain that was already live.
    if let Some(order_id) = order_id {
        let complete: bool = sqlx::query_scalar(
            "SELECT NOT EXISTS (SELECT 1 FROM jobs WHERE order_id = $1 AND status <> 'SUCCESS')",
        )
        .bind(order_id)
        .fetch_one(&mut *tx)
        .await?;
        if complete {
            notify::queue_welcome(&mut tx, sealer, config, order_id).await?;
        }
    }
    audit::record(
        &mut tx,
        Entry {
            tenant_id: job.tenant_id,
            user_id: None,
            action: "job.succeeded",
            client: None,
            details: json!({ "jobId": job.id, "type": job.kind, "attempts": job.attempts }),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

pub enum Failure {
    /// Scheduled again at the given delay.
    Retrying(Duration),
    Failed,
}

/// Records a failed attempt: another attempt after `retry_in` when allowed, else FAILED
/// with the error kept in `lastError` and the tenant's admins told by e-mail.
pub async fn fail(
    db: &PgPool,
    sealer: &Sealer,
    config: &Config,
    job: &ClaimedJob,
    worker: &str,
    error: &str,
    retry_in: Option<Duration>,
) -> sqlx::Result<Option<Failure>> {
    let mut tx = db.begin().await?;
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
            audit::record(
                &mut tx,
                Entry {
                    tenant_id: job.tenant_id,
                    user_id: None,
                    action: "job.failed",
                    client: None,
                    details: json!({ "jobId": job.id, "type": job.kind, "attempts": job.attempts, "error": error }),
                },
            )
            .await?;
            let kind = json!(job.kind);
            notify::queue_job_failed(
                &mut tx,
                sealer,
                config,
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

/// `base × 2^(attempt-1)`, capped, with up to 10% jitter so retries of many jobs spread out.
pub fn backoff(base: Duration, max: Duration, attempt: i32) -> Duration {
    let exp = u32::try_from(attempt.saturating_sub(1))
        .unwrap_or(0)
        .min(20);
    let delay = base.saturating_mul(1u32 << exp).min(max);
    let jitter = rand::random_range(0.0..0.1);
    delay.mul_f64(1.0 + jitter).min(max)
}

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
