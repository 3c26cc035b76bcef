//! A paid order becomes a customer, an order, a subscription, a domain and provisioning jobs
//! in ONE transaction (spec §6.3, §7.1). Both the marketing backend (`POST /api/orders`) and
//! Stripe's webhook come through `place_paid_order`.
//!
//! Idempotency: the payment intent id (or the tenant's external order id) is a unique key on
//! orders. A second delivery, even a concurrent one, finds the first order and creates
//! nothing: the losing transaction blocks on the unique index, inserts nothing, rolls back,
//! and answers with the winner's order.

use chrono::{DateTime, Months, Utc};
use mpanel_protocol::{Currency, DomainName, EmailAddress};
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use crate::{
    app::AppState,
    audit::{self, ClientMeta, Entry},
    catalog::limits::PlanLimits,
    customers,
    domains::{self, store::ClaimError},
    jobs::{self, store},
    model::{BillingInterval, JobType, ProductType},
    orders::jobs::{OrderJob, OrderStep},
    subscriptions::{self, store::NewSubscription},
};

/// Why a paid order could not be placed; the HTTP edge (`orders::routes`) maps each to its
/// status and field.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("stripePaymentIntentId or externalOrderId is required (it makes the order idempotent)")]
    NoIdempotencyKey,
    #[error("tenantSlug: no active tenant '{0}'")]
    UnknownTenant(String),
    #[error("planSlug: no active plan '{0}' in this tenant")]
    UnknownPlan(String),
    #[error("currency: the plan is sold in {plan}, the payment was in {paid}")]
    Currency { plan: String, paid: Currency },
    #[error("required for this plan")]
    DomainRequired,
    #[error("domain {0} already belongs to another customer")]
    DomainTaken(DomainName),
    #[error("order is being created; retry")]
    InProgress,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// A validated paid order, whatever channel it came through.
#[derive(Debug, Clone)]
pub struct PaidOrder {
    pub tenant_slug: String,
    pub plan_slug: String,
    pub customer_email: EmailAddress,
    pub customer_name: Option<String>,
    pub customer_phone: Option<String>,
    pub total_amount_cents: i32,
    pub currency: Currency,
    pub stripe_payment_intent_id: Option<String>,
    pub external_order_id: Option<String>,
    pub domain: Option<DomainName>,
    pub notes: Option<String>,
    /// "marketing" or "stripe", for the audit log.
    pub source: &'static str,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRef {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: JobType,
}

/// Spec §6.3's response.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacedOrder {
    pub order_id: Uuid,
    pub subscription_id: Option<Uuid>,
    pub jobs: Vec<JobRef>,
    /// False when this delivery found an existing order.
    #[serde(skip)]
    pub created: bool,
}

fn needs_domain(kind: ProductType) -> bool {
    matches!(
        kind,
        ProductType::SharedHosting | ProductType::Email | ProductType::Dns
    )
}

fn period_end(start: DateTime<Utc>, interval: BillingInterval) -> DateTime<Utc> {
    let months = match interval {
        BillingInterval::Monthly => 1,
        BillingInterval::Yearly => 12,
    };
    start
        .checked_add_months(Months::new(months))
        .expect("a date a year ahead exists")
}

/// The order this payment already created, if any.
async fn existing(
    db: impl sqlx::PgExecutor<'_> + Copy,
    order: &PaidOrder,
) -> sqlx::Result<Option<PlacedOrder>> {
    let found: Option<(Uuid, Option<Uuid>)> = sqlx::query_as(
        "SELECT o.id, s.id FROM orders o
           LEFT JOIN subscriptions s ON s.order_id = o.id
          WHERE ($1::text IS NOT NULL AND o.stripe_payment_intent_id = $1)
             OR ($2::text IS NOT NULL AND o.external_order_id = $2
                 AND o.tenant_id = (SELECT id FROM tenants WHERE slug = $3))
          LIMIT 1",
    )
    .bind(&order.stripe_payment_intent_id)
    .bind(&order.external_order_id)
    .bind(&order.tenant_slug)
    .fetch_optional(db)
    .await?;
    let Some((order_id, subscription_id)) = found else {
        return Ok(None);
    };
    let jobs: Vec<(Uuid, JobType)> =
        sqlx::query_as("SELECT id, type FROM jobs WHERE order_id = $1 ORDER BY created_at, id")
            .bind(order_id)
            .fetch_all(db)
            .await?;
    Ok(Some(PlacedOrder {
        order_id,
        subscription_id,
        jobs: jobs
            .into_iter()
            .map(|(id, kind)| JobRef { id, kind })
            .collect(),
        created: false,
    }))
}

#[derive(sqlx::FromRow)]
struct PlanRow {
    id: Uuid,
    currency: String,
    billing_interval: BillingInterval,
    limits_json: Option<serde_json::Value>,
    product_type: ProductType,
}

pub async fn place_paid_order(
    state: &AppState,
    order: PaidOrder,
    client: Option<&ClientMeta>,
) -> Result<PlacedOrder, OrderError> {
    if order.stripe_payment_intent_id.is_none() && order.external_order_id.is_none() {
        return Err(OrderError::NoIdempotencyKey);
    }
    if let Some(found) = existing(&state.db, &order).await? {
        return Ok(found);
    }

    let mut tx = state.db.begin().await?;
    let tenant_id: Uuid =
        sqlx::query_scalar("SELECT id FROM tenants WHERE slug = $1 AND is_active")
            .bind(&order.tenant_slug)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| OrderError::UnknownTenant(order.tenant_slug.clone()))?;
    let plan: PlanRow = sqlx::query_as(
        "SELECT pl.id, pl.currency, pl.billing_interval, pl.limits_json, p.type AS product_type
           FROM plans pl JOIN products p ON p.id = pl.product_id
          WHERE pl.tenant_id = $1 AND pl.slug = $2 AND pl.is_active AND p.is_active",
    )
    .bind(tenant_id)
    .bind(&order.plan_slug)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| OrderError::UnknownPlan(order.plan_slug.clone()))?;
    if plan.currency != order.currency.as_str() {
        return Err(OrderError::Currency {
            plan: plan.currency,
            paid: order.currency,
        });
    }
    if order.domain.is_none() && needs_domain(plan.product_type) {
        return Err(OrderError::DomainRequired);
    }
    let limits = PlanLimits::from_stored(plan.limits_json.as_ref());

    let customer_id = customers::store::upsert_for_order(
        &mut tx,
        tenant_id,
        &order.customer_email,
        order.customer_name.as_deref(),
        order.customer_phone.as_deref(),
    )
    .await?;

    // ON CONFLICT without a target covers both idempotency keys (partial unique indexes).
    let order_id: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO orders (tenant_id, customer_id, plan_id, status, total_amount_cents, currency,
                             stripe_payment_intent_id, external_order_id, notes)
         VALUES ($1, $2, $3, 'PAID', $4, $5, $6, $7, $8)
         ON CONFLICT DO NOTHING RETURNING id",
    )
    .bind(tenant_id)
    .bind(customer_id)
    .bind(plan.id)
    .bind(order.total_amount_cents)
    .bind(order.currency.as_str())
    .bind(&order.stripe_payment_intent_id)
    .bind(&order.external_order_id)
    .bind(&order.notes)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(order_id) = order_id else {
        // A concurrent delivery of the same payment won: answer with its order.
        tx.rollback().await?;
        return existing(&state.db, &order)
            .await?
            .ok_or(OrderError::InProgress);
    };

    let domain_id = match &order.domain {
        Some(domain) => Some(
            domains::store::claim_for_order(&mut tx, tenant_id, customer_id, domain)
                .await
                .map_err(|e| match e {
                    ClaimError::Taken(name) => OrderError::DomainTaken(name),
                    ClaimError::Db(e) => OrderError::Db(e),
                })?,
        ),
        None => None,
    };

    let now = Utc::now();
    let subscription_id = subscriptions::store::insert_for_order(
        &mut tx,
        &NewSubscription {
            tenant_id,
            customer_id,
            plan_id: plan.id,
            order_id,
            domain_id,
            started_at: now,
            period_end: period_end(now, plan.billing_interval),
        },
    )
    .await?;

    let line = OrderJob {
        order_id,
        subscription_id,
        customer_id,
        customer_email: order.customer_email.clone(),
        domain_id,
        domain: order.domain.clone(),
        plan_id: plan.id,
        plan_slug: order.plan_slug.clone(),
        product_type: plan.product_type,
        limits: limits.clone(),
    };
    let max_attempts = state.config.jobs.max_attempts;
    let mut jobs = Vec::new();
    let steps = OrderStep::for_product(plan.product_type, &limits, domain_id.is_some());
    let mut ids = Vec::new();
    for step in &steps {
        let payload = step.payload(line.clone());
        let id = store::insert(&mut tx, tenant_id, Some(order_id), &payload, max_attempts).await?;
        if step.optional() {
            store::optional_for_order(&mut tx, id).await?;
        }
        ids.push((*step, id));
        jobs.push(JobRef {
            id,
            kind: payload.job_type(),
        });
    }
    for (step, id) in &ids {
        let after = step
            .runs_after()
            .and_then(|dep| ids.iter().find(|(s, _)| *s == dep));
        if let Some((_, after)) = after {
            store::run_after(&mut tx, *id, *after).await?;
        }
    }

    audit::record(
        &mut tx,
        Entry {
            tenant_id,
            user_id: None,
            action: "order.create",
            client,
            details: json!({
                "orderId": order_id,
                "source": order.source,
                "customerId": customer_id,
                "planSlug": order.plan_slug,
                "domain": order.domain,
                "totalAmountCents": order.total_amount_cents,
                "currency": order.currency,
                "stripePaymentIntentId": order.stripe_payment_intent_id,
                "externalOrderId": order.external_order_id,
                "jobs": jobs.iter().map(|j| j.kind).collect::<Vec<_>>(),
            }),
        },
    )
    .await?;
    tx.commit().await?;
    tracing::info!(%order_id, %tenant_id, jobs = jobs.len(), source = order.source, "paid order placed");

    let ids: Vec<Uuid> = jobs.iter().map(|j| j.id).collect();
    jobs::enqueue_after_commit(state, &ids).await;
    Ok(PlacedOrder {
        order_id,
        subscription_id: Some(subscription_id),
        jobs,
        created: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosting_with_mail_gets_its_jobs_in_order() {
        let limits = PlanLimits {
            emails: Some(5),
            ssl: Some(false),
            ..Default::default()
        };
        let types = |kind, limits: &PlanLimits, domain| {
            OrderStep::for_product(kind, limits, domain)
                .into_iter()
                .map(OrderStep::job_type)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            types(ProductType::SharedHosting, &limits, true),
            [
                JobType::ProvisionDns,
                JobType::ProvisionHosting,
                JobType::ProvisionMail
            ]
        );
        assert_eq!(
            types(ProductType::SharedHosting, &PlanLimits::default(), true),
            [
                JobType::ProvisionDns,
                JobType::ProvisionHosting,
                JobType::ProvisionHosting
            ],
            "HTTPS unless the plan says no"
        );
        assert_eq!(
            types(ProductType::Vps, &limits, false),
            [JobType::ProvisionVps]
        );
    }

    #[test]
    fn periods_follow_the_billing_interval() {
        let start = DateTime::parse_from_rfc3339("2026-01-31T10:00:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(
            period_end(start, BillingInterval::Monthly).to_rfc3339(),
            "2026-02-28T10:00:00+00:00"
        );
        assert_eq!(
            period_end(start, BillingInterval::Yearly).to_rfc3339(),
            "2027-01-31T10:00:00+00:00"
        );
    }
}
