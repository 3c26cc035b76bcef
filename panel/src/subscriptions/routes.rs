//! `/api/subscriptions`: customers' plans over time; cancel now or at the period's end.

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
    model::SubscriptionStatus,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(detail))
        .routes(routes!(cancel))
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
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, tenant_id, customer_id, plan_id, order_id, domain_id, status, started_at, \
     current_period_start, current_period_end, cancel_at_period_end, cancelled_at, created_at, updated_at";

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

/// One subscription.
#[utoipa::path(get, path = "/{id}", tag = "subscriptions", operation_id = "getSubscription", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The subscription's id")),
    responses((status = 200, description = "The subscription", body = Subscription), Errors))]
async fn detail(
    State(state): State<AppState>,
    user: Require<perm::SubscriptionsRead>,
    IdPath(id): IdPath,
) -> ApiResult<Json<Subscription>> {
    find(&state.db, user.tenant_id, id).await.map(Json)
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CancelSubscription {
    /// Keep it running until `currentPeriodEnd` (default: cancel now).
    #[serde(default)]
    at_period_end: bool,
}

/// Cancels a subscription now, or at the end of its period; the body is optional.
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
    let current = find(&mut *tx, user.tenant_id, id).await?;
    if current.status == SubscriptionStatus::Cancelled {
        return Err(ApiError::Conflict(
            "this subscription is already cancelled".into(),
        ));
    }
    let sql = if at_period_end {
        "UPDATE subscriptions SET cancel_at_period_end = true WHERE id = $1 AND tenant_id = $2"
    } else {
        "UPDATE subscriptions SET status = 'CANCELLED', cancelled_at = now() WHERE id = $1 AND tenant_id = $2"
    };
    sqlx::query(sql)
        .bind(id)
        .bind(user.tenant_id)
        .execute(&mut *tx)
        .await?;
    let updated = find(&mut *tx, user.tenant_id, id).await?;
    audit::record(
        &mut tx,
        Entry::by(&user, &client, "subscription.cancel", json!({ "subscriptionId": id, "atPeriodEnd": at_period_end, "periodEnd": updated.current_period_end })),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(updated))
}
