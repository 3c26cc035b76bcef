//! Billing events applied to a subscription: Stripe's (`orders::webhooks`) and those of a
//! marketing site that bills elsewhere (`POST /api/webhooks/billing`) take this one path.
//! The rules are [`super::lifecycle::decide`]; this writes what it decided, in one
//! transaction with the subscription's row locked, so concurrent deliveries of one event
//! agree (the second finds the first's result and changes nothing).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{
    lifecycle::{self, BillingEvent, Current, Decision, EventKind},
    policy, service,
};
use crate::{
    app::AppState,
    audit::{self, Entry},
    http::error::{ApiError, ApiResult},
    jobs,
    model::{ServiceState, SubscriptionStatus, SuspendReason},
    notify::{self, Notice},
};

/// How an event names its subscription, tried in this order.
#[derive(Debug, Default, Clone)]
pub struct Lookup {
    /// Our id (`metadata.mpanelSubscriptionId`, or the internal API's `subscriptionId`).
    pub id: Option<Uuid>,
    /// The billing side's id (Stripe's `sub_…`), linked the first time it is seen.
    pub external_id: Option<String>,
    /// The tenant and domain the order named (`metadata.tenantSlug` and `metadata.domain`):
    /// the domain's newest subscription that is not terminated.
    pub tenant_slug: Option<String>,
    pub domain: Option<String>,
}

/// What applying an event did.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Applied {
    pub subscription_id: Uuid,
    /// `applied`, `unchanged` (already there) or `stale` (older than the newest event
    /// applied: nothing changed).
    pub outcome: &'static str,
    pub status: SubscriptionStatus,
    pub service_state: ServiceState,
    /// The lifecycle job queued for the resources, when the event changed their state.
    pub job_id: Option<Uuid>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    tenant_id: Uuid,
    status: SubscriptionStatus,
    service_state: ServiceState,
    suspend_reason: Option<SuspendReason>,
    billing_event_at: Option<DateTime<Utc>>,
    current_period_end: DateTime<Utc>,
    stripe_subscription_id: Option<String>,
}

const COLUMNS: &str = "id, tenant_id, status, service_state, suspend_reason, billing_event_at, \
                       current_period_end, stripe_subscription_id";

async fn find(conn: &mut PgConnection, lookup: &Lookup) -> ApiResult<Row> {
    let by = |sql: String| sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(sql));
    if let Some(id) = lookup.id {
        let row = by(format!(
            "SELECT {COLUMNS} FROM subscriptions WHERE id = $1 FOR UPDATE"
        ))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
        return row.ok_or(ApiError::NotFound("subscription"));
    }
    if let Some(external) = &lookup.external_id {
        let row = by(format!(
            "SELECT {COLUMNS} FROM subscriptions WHERE stripe_subscription_id = $1 FOR UPDATE"
        ))
        .bind(external)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(row) = row {
            return Ok(row);
        }
    }
    if let (Some(tenant), Some(domain)) = (&lookup.tenant_slug, &lookup.domain) {
        let row = by(format!(
            "SELECT {COLUMNS} FROM subscriptions WHERE id = (
                 SELECT s.id FROM subscriptions s
                   JOIN tenants t ON t.id = s.tenant_id JOIN domains d ON d.id = s.domain_id
                  WHERE t.slug = $1 AND d.name = lower($2) AND s.service_state <> 'TERMINATED'
                  ORDER BY s.created_at DESC LIMIT 1)
             FOR UPDATE"
        ))
        .bind(tenant)
        .bind(domain)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(row) = row {
            return Ok(row);
        }
    }
    Err(ApiError::Unprocessable {
        message: "no subscription matches the event (by metadata.mpanelSubscriptionId, the \
                  billing subscription id, or metadata.tenantSlug with metadata.domain)"
            .into(),
        field: "subscription".into(),
    })
}

/// Applies `event` to the subscription `lookup` names.
pub async fn apply(
    state: &AppState,
    lookup: &Lookup,
    event: BillingEvent,
    source: &str,
) -> ApiResult<Applied> {
    let mut tx = state.db.begin().await?;
    let row = find(&mut tx, lookup).await?;
    if let Some(external) = &lookup.external_id
        && row.stripe_subscription_id.is_none()
    {
        sqlx::query(
            "UPDATE subscriptions SET stripe_subscription_id = $2
              WHERE id = $1 AND stripe_subscription_id IS NULL
                AND NOT EXISTS (SELECT 1 FROM subscriptions WHERE stripe_subscription_id = $2)",
        )
        .bind(row.id)
        .bind(external)
        .execute(&mut *tx)
        .await?;
    }
    let policy = policy::of_tenant(&mut *tx, row.tenant_id).await?;
    let current = Current {
        status: row.status,
        service: row.service_state,
        reason: row.suspend_reason,
        billing_event_at: row.billing_event_at,
        current_period_end: row.current_period_end,
    };
    let decision = lifecycle::decide(&current, &event, &policy);
    let mut queued = None;
    let outcome = match &decision {
        Decision::Stale => "stale",
        Decision::Unchanged => "unchanged",
        Decision::Change(_) => "applied",
    };
    if decision != Decision::Stale {
        sqlx::query("UPDATE subscriptions SET billing_event_at = $2 WHERE id = $1")
            .bind(row.id)
            .bind(event.at)
            .execute(&mut *tx)
            .await?;
    }
    if let Decision::Change(change) = &decision {
        if let Some(status) = change.status {
            sqlx::query("UPDATE subscriptions SET status = $2 WHERE id = $1")
                .bind(row.id)
                .bind(status)
                .execute(&mut *tx)
                .await?;
        }
        match change.past_due {
            Some(Some(due)) => {
                sqlx::query(
                    "UPDATE subscriptions SET past_due_since = $2, warn_after = $3,
                            suspend_after = $4 WHERE id = $1",
                )
                .bind(row.id)
                .bind(due.since)
                .bind(due.warn_after)
                .bind(due.suspend_after)
                .execute(&mut *tx)
                .await?;
            }
            Some(None) => {
                sqlx::query(
                    "UPDATE subscriptions SET past_due_since = NULL, warn_after = NULL,
                            suspend_after = NULL WHERE id = $1",
                )
                .bind(row.id)
                .execute(&mut *tx)
                .await?;
            }
            None => {}
        }
        if let Some(end) = change.period_end {
            sqlx::query(
                "UPDATE subscriptions SET current_period_start = current_period_end,
                        current_period_end = $2 WHERE id = $1",
            )
            .bind(row.id)
            .bind(end)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(c) = change.cancelled {
            cancelled(&mut tx, row.id, c).await?;
        }
        if let Some((to, reason)) = change.service {
            queued = service::change(&mut tx, row.id, to, reason).await?;
        }
        if change.payment_failed_notice
            && let Some(Some(due)) = change.past_due
        {
            notify::queue_subscription_notice(
                &mut tx,
                &state.sealer,
                &state.config,
                row.id,
                Notice::PaymentFailed,
                &due.since.timestamp().to_string(),
            )
            .await?;
        }
    }
    audit::record(
        &mut tx,
        Entry::system(
            row.tenant_id,
            "subscription.billing_event",
            json!({ "subscriptionId": row.id, "event": kind_name(event.kind), "at": event.at,
                    "source": source, "outcome": outcome,
                    "jobId": queued.map(|q| q.job) }),
        ),
    )
    .await?;
    let (status, service_state): (SubscriptionStatus, ServiceState) =
        sqlx::query_as("SELECT status, service_state FROM subscriptions WHERE id = $1")
            .bind(row.id)
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    if let Some(q) = queued {
        jobs::enqueue_after_commit(state, &[q.job]).await;
    }
    Ok(Applied {
        subscription_id: row.id,
        outcome,
        status,
        service_state,
        job_id: queued.map(|q| q.job),
    })
}

fn kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Paid { .. } => "paid",
        EventKind::PaymentFailed => "payment_failed",
        EventKind::Cancelled => "cancelled",
    }
}

/// Records a cancellation: CANCELLED since `at`, terminated after `terminate_after`.
pub(super) async fn cancelled(
    conn: &mut PgConnection,
    id: Uuid,
    c: lifecycle::Cancellation,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE subscriptions SET status = 'CANCELLED', cancelled_at = $2, terminate_after = $3,
                cancel_at_period_end = false, warn_after = NULL, suspend_after = NULL
          WHERE id = $1",
    )
    .bind(id)
    .bind(c.at)
    .bind(c.terminate_after)
    .execute(conn)
    .await?;
    Ok(())
}
