//! Writes of `subscriptions` made on behalf of other resources (an order creates its
//! subscription and ends it with the order). The routes, [`super::billing`],
//! [`super::service`] and [`super::expiry`] beside this module are the other writers;
//! nothing outside `subscriptions/` writes the table.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

/// What an order's subscription starts with.
pub struct NewSubscription {
    pub tenant_id: Uuid,
    pub customer_id: Uuid,
    pub plan_id: Uuid,
    pub order_id: Uuid,
    pub domain_id: Option<Uuid>,
    pub started_at: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
}

/// An ACTIVE subscription whose first period starts now.
pub async fn insert_for_order(
    conn: &mut PgConnection,
    new: &NewSubscription,
) -> sqlx::Result<Uuid> {
    sqlx::query_scalar(
        "INSERT INTO subscriptions (tenant_id, customer_id, plan_id, order_id, domain_id, status,
                                    started_at, current_period_start, current_period_end)
         VALUES ($1, $2, $3, $4, $5, 'ACTIVE', $6, $6, $7) RETURNING id",
    )
    .bind(new.tenant_id)
    .bind(new.customer_id)
    .bind(new.plan_id)
    .bind(new.order_id)
    .bind(new.domain_id)
    .bind(new.started_at)
    .bind(new.period_end)
    .fetch_one(conn)
    .await
}

/// Cancels the order's subscription unless it already is: its resources are suspended now
/// and terminated after the tenant's retention. Its id and the lifecycle job to enqueue
/// after the commit, when this changed it.
pub async fn cancel_for_order(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> sqlx::Result<Option<(Uuid, Option<Uuid>)>> {
    let found: Option<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT id, tenant_id FROM subscriptions
          WHERE order_id = $1 AND status <> 'CANCELLED' FOR UPDATE",
    )
    .bind(order_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((id, tenant_id)) = found else {
        return Ok(None);
    };
    let policy = super::policy::of_tenant(&mut *conn, tenant_id).await?;
    super::billing::cancelled(
        &mut *conn,
        id,
        super::lifecycle::cancellation(chrono::Utc::now(), &policy),
    )
    .await?;
    let queued = super::service::change(
        &mut *conn,
        id,
        crate::model::ServiceState::Suspended,
        Some(crate::model::SuspendReason::Cancelled),
    )
    .await?;
    Ok(Some((id, queued.map(|q| q.job))))
}
