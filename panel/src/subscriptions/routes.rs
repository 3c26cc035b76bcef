//! `/api/subscriptions`: customers' plans over time and the state of their resources; cancel
//! now or at the period's end, terminate now, reactivate within retention.

use axum::{Json, extract::State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
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
        extract::{IdPath, parse_json},
        list::{ListQuery, Page, fetch_page},
    },
    jobs,
    model::{ServiceState, SubscriptionStatus, SuspendReason},
};

use super::{billing, lifecycle, policy, service};
use crate::domains::routes::Resources;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(detail))
        .routes(routes!(cancel))
        .routes(routes!(terminate))
        .routes(routes!(reactivate))
        .merge(super::policy::router())
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub customer_id: Uuid,
    pub plan_id: Uuid,
    pub order_id: Option<Uuid>,
    pub domain_id: Option<Uuid>,
    pub status: SubscriptionStatus,
    pub started_at: DateTime<Utc>,
    pub current_period_start: DateTime<Utc>,
    pub current_period_end: DateTime<Utc>,
    pub cancel_at_period_end: bool,
    pub cancelled_at: Option<DateTime<Utc>>,
    /// What the subscription's resources are being kept as, and why.
    #[sqlx(flatten)]
    pub service: Service,
    /// Unpaid since (a failed payment's time); the suspension comes at `suspendAt`.
    pub past_due_since: Option<DateTime<Utc>>,
    #[sqlx(rename = "suspend_after")]
    pub suspend_at: Option<DateTime<Utc>>,
    /// Cancelled: the resources are terminated at this time.
    #[sqlx(rename = "terminate_after")]
    pub terminate_at: Option<DateTime<Utc>>,
    pub terminated_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The state of a subscription's resources (site, mailboxes, zone) as one.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// What they should be: ACTIVE, SUSPENDED or TERMINATED.
    #[sqlx(rename = "service_state")]
    pub state: ServiceState,
    /// Why they are suspended (NON_PAYMENT, CANCELLED, OPERATOR).
    #[sqlx(rename = "suspend_reason")]
    pub reason: Option<SuspendReason>,
    #[sqlx(rename = "service_changed_at")]
    pub since: Option<DateTime<Utc>>,
    /// True while the lifecycle job bringing them there has not finished.
    pub pending: bool,
    /// That job (`GET /api/jobs/{id}`).
    #[sqlx(rename = "lifecycle_job_id")]
    pub job_id: Option<Uuid>,
}

const COLUMNS: &str = "id, tenant_id, customer_id, plan_id, order_id, domain_id, status, started_at, \
     current_period_start, current_period_end, cancel_at_period_end, cancelled_at, service_state, \
     suspend_reason, service_changed_at, desired_version <> applied_version AS pending, \
     lifecycle_job_id, past_due_since, suspend_after, terminate_after, terminated_at, created_at, \
     updated_at";

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct Filter {
    status: Option<SubscriptionStatus>,
    customer_id: Option<Uuid>,
    plan_id: Option<Uuid>,
    domain_id: Option<Uuid>,
}

/// The tenant's subscriptions, newest first. Sortable by createdAt, currentPeriodEnd, status.
#[utoipa::path(get, path = "", tag = "subscriptions", operation_id = "listSubscriptions", security(("bearer" = [])),
    params(ListParams, Filter),
    responses((status = 200, description = "A page of subscriptions", body = Page<Subscription>), Errors))]
async fn list(
    State(state): State<AppState>,
    user: Require<perm::SubscriptionsRead>,
    query: ListQuery<Filter>,
) -> ApiResult<Json<Page<Subscription>>> {
    let order = query.sorting.order_by(
        &[
            ("createdAt", "created_at"),
            ("currentPeriodEnd", "current_period_end"),
            ("status", "status"),
        ],
        "created_at",
    )?;
    let f = &query.filter;
    const WHERE: &str = "tenant_id = $1 AND ($2::subscription_status IS NULL OR status = $2)
        AND ($3::uuid IS NULL OR customer_id = $3) AND ($4::uuid IS NULL OR plan_id = $4)
        AND ($5::uuid IS NULL OR domain_id = $5)";
    let args = crate::pg_args![
        user.tenant_id,
        f.status,
        f.customer_id,
        f.plan_id,
        f.domain_id
    ];
    let from_where = format!("FROM subscriptions WHERE {WHERE}");
    let page = fetch_page(&state.db, COLUMNS, &from_where, &order, query.window, args).await?;
    Ok(Json(page))
}

async fn find(db: impl sqlx::PgExecutor<'_>, tenant: Uuid, id: Uuid) -> ApiResult<Subscription> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM subscriptions WHERE id = $1 AND tenant_id = $2"
    )))
    .bind(id)
    .bind(tenant)
    .fetch_optional(db)
    .await?
    .ok_or(ApiError::NotFound("subscription"))
}

/// One subscription, with the state of each of its resources.
#[utoipa::path(get, path = "/{id}", tag = "subscriptions", operation_id = "getSubscription", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The subscription's id")),
    responses((status = 200, description = "The subscription and its resources", body = SubscriptionDetail), Errors))]
async fn detail(
    State(state): State<AppState>,
    user: Require<perm::SubscriptionsRead>,
    IdPath(id): IdPath,
) -> ApiResult<Json<SubscriptionDetail>> {
    let subscription = find(&state.db, user.tenant_id, id).await?;
    let resources = match subscription.domain_id {
        Some(domain) => {
            crate::domains::routes::resources(&state.db, user.tenant_id, domain).await?
        }
        None => Resources::default(),
    };
    Ok(Json(SubscriptionDetail {
        subscription,
        resources,
    }))
}

/// A subscription and the resources it drives.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionDetail {
    #[serde(flatten)]
    pub subscription: Subscription,
    pub resources: Resources,
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CancelSubscription {
    /// Keep it running until `currentPeriodEnd` (default: cancel now).
    #[serde(default)]
    at_period_end: bool,
}

/// Cancels a subscription now, or at the end of its period; the body is optional. Once
/// cancelled, its resources are suspended, and terminated after the tenant's retention
/// (`terminateAt`) unless it is reactivated before.
#[utoipa::path(post, path = "/{id}/cancel", tag = "subscriptions", operation_id = "cancelSubscription", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The subscription's id")),
    request_body = Option<CancelSubscription>,
    responses((status = 200, description = "The subscription, cancelled (or to be cancelled at its period's end)", body = Subscription), Errors))]
async fn cancel(
    State(state): State<AppState>,
    user: Require<perm::SubscriptionsWrite>,
    client: ClientMeta,
    IdPath(id): IdPath,
    body: axum::body::Bytes,
) -> ApiResult<Json<Subscription>> {
    // The body is optional: none means "cancel now".
    let at_period_end = if body.iter().all(u8::is_ascii_whitespace) {
        false
    } else {
        parse_json::<CancelSubscription>(&body)?.at_period_end
    };
    let mut tx = state.db.begin().await?;
    let current = find_for_update(&mut tx, user.tenant_id, id).await?;
    if current.status == SubscriptionStatus::Cancelled {
        return Err(ApiError::Conflict(
            "this subscription is already cancelled".into(),
        ));
    }
    let mut queued = None;
    if at_period_end {
        sqlx::query(
            "UPDATE subscriptions SET cancel_at_period_end = true WHERE id = $1 AND tenant_id = $2",
        )
        .bind(id)
        .bind(user.tenant_id)
        .execute(&mut *tx)
        .await?;
    } else {
        let policy = policy::of_tenant(&mut *tx, user.tenant_id).await?;
        billing::cancelled(&mut tx, id, lifecycle::cancellation(Utc::now(), &policy)).await?;
        queued = service::change(
            &mut tx,
            id,
            ServiceState::Suspended,
            Some(SuspendReason::Cancelled),
        )
        .await?;
    }
    let details = json!({ "subscriptionId": id, "atPeriodEnd": at_period_end });
    finish(
        &state,
        tx,
        &user,
        &client,
        id,
        "subscription.cancel",
        details,
        queued,
    )
    .await
}

/// Terminates a subscription now (ADMIN and above): its site archived and removed, its
/// mailboxes deleted, its zone deleted unless the tenant keeps zones. Cannot be undone.
#[utoipa::path(post, path = "/{id}/terminate", tag = "subscriptions", operation_id = "terminateSubscription", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The subscription's id")),
    responses((status = 200, description = "The subscription, cancelled, with its termination pending", body = Subscription), Errors))]
async fn terminate(
    State(state): State<AppState>,
    user: Require<perm::SubscriptionsLifecycle>,
    client: ClientMeta,
    IdPath(id): IdPath,
) -> ApiResult<Json<Subscription>> {
    let mut tx = state.db.begin().await?;
    let current = find_for_update(&mut tx, user.tenant_id, id).await?;
    if current.service.state == ServiceState::Terminated {
        return Err(ApiError::Conflict(
            "this subscription is already terminated".into(),
        ));
    }
    let now = Utc::now();
    if current.status != SubscriptionStatus::Cancelled {
        let c = lifecycle::Cancellation {
            at: now,
            terminate_after: now,
        };
        billing::cancelled(&mut tx, id, c).await?;
    } else {
        sqlx::query("UPDATE subscriptions SET terminate_after = $2 WHERE id = $1")
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
    }
    let queued = service::change(&mut tx, id, ServiceState::Terminated, None).await?;
    let details = json!({ "subscriptionId": id });
    finish(
        &state,
        tx,
        &user,
        &client,
        id,
        "subscription.terminate",
        details,
        queued,
    )
    .await
}

/// Reactivates a cancelled, unpaid or suspended subscription before its termination (ADMIN
/// and above): ACTIVE again, nothing scheduled, every resource unsuspended.
#[utoipa::path(post, path = "/{id}/reactivate", tag = "subscriptions", operation_id = "reactivateSubscription", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The subscription's id")),
    responses((status = 200, description = "The subscription, active, with its unsuspension pending", body = Subscription), Errors))]
async fn reactivate(
    State(state): State<AppState>,
    user: Require<perm::SubscriptionsLifecycle>,
    client: ClientMeta,
    IdPath(id): IdPath,
) -> ApiResult<Json<Subscription>> {
    let mut tx = state.db.begin().await?;
    let current = find_for_update(&mut tx, user.tenant_id, id).await?;
    if current.service.state == ServiceState::Terminated {
        return Err(ApiError::Conflict(
            "this subscription is terminated: its resources are gone; place a new order".into(),
        ));
    }
    if current.status == SubscriptionStatus::Active
        && current.service.state == ServiceState::Active
        && !current.cancel_at_period_end
    {
        // Already active: a repeated request changes nothing.
        return Ok(Json(current));
    }
    sqlx::query(
        "UPDATE subscriptions SET status = 'ACTIVE', cancelled_at = NULL,
                cancel_at_period_end = false, terminate_after = NULL, past_due_since = NULL,
                warn_after = NULL, suspend_after = NULL
          WHERE id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let queued = service::change(&mut tx, id, ServiceState::Active, None).await?;
    let details = json!({ "subscriptionId": id, "previousStatus": current.status });
    finish(
        &state,
        tx,
        &user,
        &client,
        id,
        "subscription.reactivate",
        details,
        queued,
    )
    .await
}

/// The end of an operator's change: the audit row (with the lifecycle job it queued), the
/// commit, the job pushed, and the subscription as it now is.
#[allow(clippy::too_many_arguments)]
async fn finish(
    state: &AppState,
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    user: &crate::auth::current::CurrentUser,
    client: &ClientMeta,
    id: Uuid,
    action: &str,
    mut details: serde_json::Value,
    queued: Option<service::Queued>,
) -> ApiResult<Json<Subscription>> {
    let updated = find(&mut *tx, user.tenant_id, id).await?;
    details["jobId"] = json!(queued.map(|q| q.job));
    details["periodEnd"] = json!(updated.current_period_end);
    audit::record(&mut tx, Entry::by(user, client, action, details)).await?;
    tx.commit().await?;
    if let Some(q) = queued {
        jobs::enqueue_after_commit(state, &[q.job]).await;
    }
    Ok(Json(updated))
}

async fn find_for_update(
    tx: &mut sqlx::PgConnection,
    tenant: Uuid,
    id: Uuid,
) -> ApiResult<Subscription> {
    sqlx::query("SELECT 1 FROM subscriptions WHERE id = $1 AND tenant_id = $2 FOR UPDATE")
        .bind(id)
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
    find(&mut *tx, tenant, id).await
}
