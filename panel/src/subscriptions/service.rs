//! The state a subscription's resources should be in (`service_state`), and the one
//! lifecycle job that brings them there.
//!
//! A change bumps `desired_version` and queues a job for that version in the same
//! transaction. The job runs after the subscription's previous lifecycle job when that one
//! has not finished, so two never act on one subscription at once; a job whose version is
//! no longer the newest ends at its next step without acting ("superseded"), which releases
//! the newer one. The job that finishes the newest version sets `applied_version`: until
//! then the subscription shows its change as pending.

use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use super::job::{
    ServiceChange, SuspendSubscription, TerminateSubscription, UnsuspendSubscription,
};
use crate::{
    jobs::{payload::JobPayload, store as jobs_store},
    model::{ServiceState, SuspendReason},
};

/// Lifecycle jobs outlast an agent that is offline for a while (each attempt waits up to a
/// minute for it, then backs off).
pub const MAX_ATTEMPTS: i32 = 30;

/// A queued change: enqueue `job` after the commit.
#[derive(Debug, Clone, Copy)]
pub struct Queued {
    pub job: Uuid,
    pub version: i32,
}

/// Sets what the subscription's resources should be. `None` when they already should be
/// that (the reason alone may change: suspended for non-payment, then cancelled, is still
/// one suspension).
pub async fn change(
    tx: &mut PgConnection,
    subscription: Uuid,
    state: ServiceState,
    reason: Option<SuspendReason>,
) -> sqlx::Result<Option<Queued>> {
    let bumped: Option<(i32, Uuid, Option<Uuid>, Option<Uuid>)> = sqlx::query_as(
        "UPDATE subscriptions s
            SET service_state = $2, suspend_reason = $3, service_changed_at = now(),
                desired_version = desired_version + 1
          WHERE id = $1 AND service_state <> $2 AND service_state <> 'TERMINATED'
      RETURNING desired_version, tenant_id, domain_id,
                (SELECT j.id FROM jobs j WHERE j.id = s.lifecycle_job_id
                    AND j.status IN ('PENDING', 'RUNNING'))",
    )
    .bind(subscription)
    .bind(state)
    .bind(reason)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((version, tenant_id, domain_id, unfinished)) = bumped else {
        sqlx::query(
            "UPDATE subscriptions SET suspend_reason = $3
              WHERE id = $1 AND service_state = $2 AND suspend_reason IS DISTINCT FROM $3",
        )
        .bind(subscription)
        .bind(state)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        return Ok(None);
    };
    let change = ServiceChange {
        subscription_id: subscription,
        domain_id,
        version,
    };
    let payload: JobPayload = match state {
        ServiceState::Active => UnsuspendSubscription(change).into(),
        ServiceState::Suspended => SuspendSubscription(change).into(),
        ServiceState::Terminated => TerminateSubscription(change).into(),
    };
    let job = jobs_store::insert(&mut *tx, tenant_id, None, &payload, MAX_ATTEMPTS).await?;
    if let Some(previous) = unfinished {
        jobs_store::run_after(&mut *tx, job, previous).await?;
    }
    sqlx::query("UPDATE subscriptions SET lifecycle_job_id = $2 WHERE id = $1")
        .bind(subscription)
        .bind(job)
        .execute(&mut *tx)
        .await?;
    crate::audit::record(
        &mut *tx,
        crate::audit::Entry::system(
            tenant_id,
            "subscription.service",
            json!({ "subscriptionId": subscription, "state": state, "reason": reason,
                    "version": version, "jobId": job }),
        ),
    )
    .await?;
    Ok(Some(Queued { job, version }))
}

/// Whether `version` is still the newest wanted state of the subscription.
pub async fn is_current(
    db: impl sqlx::PgExecutor<'_>,
    subscription: Uuid,
    version: i32,
) -> sqlx::Result<bool> {
    let newest: Option<i32> =
        sqlx::query_scalar("SELECT desired_version FROM subscriptions WHERE id = $1")
            .bind(subscription)
            .fetch_optional(db)
            .await?;
    Ok(newest == Some(version))
}

/// The job of `version` finished: the resources are where that version wanted them. False
/// when a newer version was asked for meanwhile (its own job will finish it).
pub async fn applied(
    tx: &mut PgConnection,
    subscription: Uuid,
    version: i32,
) -> sqlx::Result<Option<ServiceState>> {
    sqlx::query_scalar(
        "UPDATE subscriptions
            SET applied_version = $2,
                terminated_at = CASE WHEN service_state = 'TERMINATED'
                                     THEN coalesce(terminated_at, now()) END
          WHERE id = $1 AND desired_version = $2
      RETURNING service_state",
    )
    .bind(subscription)
    .bind(version)
    .fetch_optional(tx)
    .await
}
