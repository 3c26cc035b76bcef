//! `/api/orders`: paid orders from the marketing backend (spec §6.3, internal key), and the
//! operators' view of them (list, detail, status changes).

use axum::{Json, extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use mpanel_protocol::{Currency, DomainName};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    app::AppState,
    audit::{self, Entry},
    auth::permissions::{Require, perm},
    http::{
        client::ClientMeta,
        error::{ApiError, ApiResult},
        extract::{ApiJson, IdPath},
        internal::InternalCaller,
        list::{ListQuery, Page, fetch_page},
    },
    model::{JobStatus, JobType, OrderStatus, SubscriptionStatus},
    orders::place::{self as placing, PaidOrder, place_paid_order},
};
use crate::{
    http::openapi::{Errors, ListParams},
    http::validate::{check_email, optional_line},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(detail, change_status))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OrderCustomer {
    /// Found in the tenant by this address, or created.
    #[schema(format = Email)]
    email: String,
    /// At most 200 characters.
    full_name: Option<String>,
    /// At most 40 characters.
    phone: Option<String>,
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct OrderMetadata {
    /// The domain to provision (hosting, e-mail and DNS products need one).
    domain: Option<String>,
    /// At most 2000 characters.
    notes: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CreateOrder {
    tenant_slug: String,
    customer: OrderCustomer,
    /// An active plan of the tenant.
    plan_slug: String,
    /// Whole cents, 0 or more.
    total_amount_cents: i64,
    /// A three-letter ISO 4217 code.
    currency: String,
    /// The idempotency key (with `externalOrderId`): 1-255 letters, digits, `_-.:`.
    stripe_payment_intent_id: Option<String>,
    /// The marketing site's own id: 1-255 letters, digits, `_-.:`.
    external_order_id: Option<String>,
    #[serde(default)]
    metadata: OrderMetadata,
}

/// A provisioning job created for an order.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct JobRef {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: JobType,
}

/// Spec §6.3's answer: the order, its subscription and the jobs it queued.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct PlacedOrder {
    order_id: Uuid,
    subscription_id: Option<Uuid>,
    jobs: Vec<JobRef>,
}

impl From<placing::PlacedOrder> for PlacedOrder {
    fn from(placed: placing::PlacedOrder) -> Self {
        PlacedOrder {
            order_id: placed.order_id,
            subscription_id: placed.subscription_id,
            jobs: job_refs(placed.jobs),
        }
    }
}

pub(super) fn job_refs(jobs: Vec<placing::JobRef>) -> Vec<JobRef> {
    jobs.into_iter()
        .map(|j| JobRef {
            id: j.id,
            kind: j.kind,
        })
        .collect()
}

fn optional_text(field: &str, value: Option<String>, max: usize) -> ApiResult<Option<String>> {
    match value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()) {
        Some(v) if v.chars().count() > max || v.chars().any(|c| c.is_control() && c != '\n') => {
            Err(ApiError::field(
                field,
                format!("at most {max} characters, no control characters"),
            ))
        }
        other => Ok(other),
    }
}

/// Payment references are opaque ids from Stripe or the marketing site.
fn reference(field: &str, value: Option<String>) -> ApiResult<Option<String>> {
    match value {
        Some(v)
            if v.is_empty()
                || v.len() > 255
                || !v
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b)) =>
        {
            Err(ApiError::field(
                field,
                "1-255 letters, digits, '_', '-', '.' or ':'",
            ))
        }
        other => Ok(other),
    }
}

impl From<placing::OrderError> for ApiError {
    fn from(e: placing::OrderError) -> ApiError {
        use placing::OrderError as E;
        let unprocessable = |field: &str, e: &E| ApiError::Unprocessable {
            message: e.to_string(),
            field: field.into(),
        };
        match e {
            E::NoIdempotencyKey => ApiError::field("stripePaymentIntentId", e.to_string()),
            E::UnknownTenant(_) => unprocessable("tenantSlug", &e),
            E::UnknownPlan(_) => unprocessable("planSlug", &e),
            E::Currency { .. } => unprocessable("currency", &e),
            E::DomainRequired => ApiError::field("metadata.domain", e.to_string()),
            E::DomainTaken(_) | E::InProgress => ApiError::Conflict(e.to_string()),
            E::Db(e) => e.into(),
        }
    }
}

pub fn amount(field: &str, cents: i64) -> ApiResult<i32> {
    i32::try_from(cents)
        .ok()
        .filter(|c| *c >= 0)
        .ok_or_else(|| ApiError::field(field, "must be a whole number of cents, 0 or more"))
}

/// A paid order from the marketing backend (internal key): 201 with the new order, or 200
/// with the order this payment already created.
///
/// The caller presents `MARKETING_WEBHOOK_SECRET`, either as `x-internal-key: <secret>` or as
/// `Authorization: Bearer <secret>` (an operator's JWT is not accepted here). When both
/// headers are sent, `x-internal-key` is the one checked.
#[utoipa::path(post, path = "", tag = "orders", operation_id = "createOrder",
    security(("internalKey" = []), ("bearer" = [])),
    request_body = CreateOrder,
    responses(
        (status = 201, description = "The order, its subscription and jobs, created", body = PlacedOrder),
        (status = 200, description = "The order this payment (or external order id) already created", body = PlacedOrder),
        Errors,
    ))]
async fn create(
    State(state): State<AppState>,
    _caller: InternalCaller,
    client: ClientMeta,
    ApiJson(body): ApiJson<CreateOrder>,
) -> ApiResult<(StatusCode, Json<PlacedOrder>)> {
    let order = PaidOrder {
        customer_email: check_email("customer.email", &body.customer.email)?,
        customer_name: optional_line::<200>(
            "customer.fullName",
            body.customer.full_name.as_deref(),
        )?,
        customer_phone: optional_line::<40>("customer.phone", body.customer.phone.as_deref())?,
        total_amount_cents: amount("totalAmountCents", body.total_amount_cents)?,
        currency: Currency::parse(&body.currency)
            .map_err(|e| ApiError::field("currency", e.to_string()))?,
        stripe_payment_intent_id: reference(
            "stripePaymentIntentId",
            body.stripe_payment_intent_id,
        )?,
        external_order_id: reference("externalOrderId", body.external_order_id)?,
        domain: body
            .metadata
            .domain
            .as_deref()
            .map(DomainName::parse)
            .transpose()
            .map_err(|e| ApiError::field("metadata.domain", e.to_string()))?,
        notes: optional_text("metadata.notes", body.metadata.notes, 2000)?,
        tenant_slug: body.tenant_slug,
        plan_slug: body.plan_slug,
        source: "marketing",
    };
    let placed = place_paid_order(&state, order, Some(&client)).await?;
    let status = if placed.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(placed.into())))
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub customer_id: Uuid,
    pub plan_id: Uuid,
    pub status: OrderStatus,
    pub total_amount_cents: i32,
    pub currency: String,
    pub stripe_payment_intent_id: Option<String>,
    pub external_order_id: Option<String>,
    pub notes: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, tenant_id, customer_id, plan_id, status, total_amount_cents, currency, \
     stripe_payment_intent_id, external_order_id, notes, created_at, updated_at";

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct Filter {
    status: Option<OrderStatus>,
    customer_id: Option<Uuid>,
    plan_id: Option<Uuid>,
}

/// The tenant's orders, newest first. Sortable by createdAt, totalAmountCents, status.
#[utoipa::path(get, path = "", tag = "orders", operation_id = "listOrders", security(("bearer" = [])),
    params(ListParams, Filter),
    responses((status = 200, description = "A page of orders", body = Page<Order>), Errors))]
async fn list(
    State(state): State<AppState>,
    user: Require<perm::OrdersRead>,
    query: ListQuery<Filter>,
) -> ApiResult<Json<Page<Order>>> {
    let order = query.sorting.order_by(
        &[
            ("createdAt", "created_at"),
            ("totalAmountCents", "total_amount_cents"),
            ("status", "status"),
        ],
        "created_at",
    )?;
    let f = &query.filter;
    const WHERE: &str = "tenant_id = $1 AND ($2::order_status IS NULL OR status = $2)
        AND ($3::uuid IS NULL OR customer_id = $3) AND ($4::uuid IS NULL OR plan_id = $4)";
    let args = crate::pg_args![user.tenant_id, f.status, f.customer_id, f.plan_id];
    let from_where = format!("FROM orders WHERE {WHERE}");
    let page = fetch_page(&state.db, COLUMNS, &from_where, &order, query.window, args).await?;
    Ok(Json(page))
}

async fn find(db: impl sqlx::PgExecutor<'_>, tenant: Uuid, id: Uuid) -> ApiResult<Order> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM orders WHERE id = $1 AND tenant_id = $2"
    )))
    .bind(id)
    .bind(tenant)
    .fetch_optional(db)
    .await?
    .ok_or(ApiError::NotFound("order"))
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct OrderDetail {
    #[serde(flatten)]
    order: Order,
    /// Built by PostgreSQL (`json_build_object`).
    #[schema(value_type = Option<OrderSubscription>)]
    subscription: Option<Value>,
    /// Built by PostgreSQL (`json_build_object`), oldest first.
    #[schema(value_type = Vec<OrderJob>)]
    jobs: Vec<Value>,
}

/// The subscription an order started (documentation of `OrderDetail.subscription`).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct OrderSubscription {
    id: Uuid,
    status: SubscriptionStatus,
    current_period_end: DateTime<Utc>,
    cancel_at_period_end: bool,
    domain_id: Option<Uuid>,
}

/// A job an order queued (documentation of `OrderDetail.jobs`).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct OrderJob {
    id: Uuid,
    #[serde(rename = "type")]
    kind: JobType,
    status: JobStatus,
    attempts: i32,
    last_error: Option<String>,
}

/// An order with its subscription and jobs.
#[utoipa::path(get, path = "/{id}", tag = "orders", operation_id = "getOrder", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The order's id")),
    responses((status = 200, description = "The order, its subscription and jobs", body = OrderDetail), Errors))]
async fn detail(
    State(state): State<AppState>,
    user: Require<perm::OrdersRead>,
    IdPath(id): IdPath,
) -> ApiResult<Json<OrderDetail>> {
    let order = find(&state.db, user.tenant_id, id).await?;
    let subscription: Option<Value> = sqlx::query_scalar(
        "SELECT json_build_object('id', id, 'status', status, 'currentPeriodEnd', current_period_end,
                                  'cancelAtPeriodEnd', cancel_at_period_end, 'domainId', domain_id)
           FROM subscriptions WHERE order_id = $1",
    )
    .bind(id)
    .fetch_optional(&state.db)
    .await?;
    let jobs: Vec<Value> = sqlx::query_scalar(
        "SELECT json_build_object('id', id, 'type', type, 'status', status, 'attempts', attempts,
                                  'lastError', last_error)
           FROM jobs WHERE order_id = $1 ORDER BY created_at, id",
    )
    .bind(id)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(OrderDetail {
        order,
        subscription,
        jobs,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ChangeOrderStatus {
    /// PENDING/PAID → CANCELLED, PAID/CANCELLED → REFUNDED (the current status: no change).
    status: OrderStatus,
    /// At most 500 characters, for the audit log.
    reason: Option<String>,
}

/// Cancels or refunds an order.
///
/// Operators cancel or refund an order; its subscription ends with it. Provisioned
/// resources stay until an operator suspends or terminates them (a refund is not always a
/// reason to delete a customer's site on the spot).
#[utoipa::path(patch, path = "/{id}", tag = "orders", operation_id = "changeOrderStatus", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The order's id")),
    request_body = ChangeOrderStatus,
    responses((status = 200, description = "The order, changed", body = Order), Errors))]
async fn change_status(
    State(state): State<AppState>,
    user: Require<perm::OrdersWrite>,
    client: ClientMeta,
    IdPath(id): IdPath,
    ApiJson(body): ApiJson<ChangeOrderStatus>,
) -> ApiResult<Json<Order>> {
    let reason = optional_text("reason", body.reason, 500)?;
    let mut tx = state.db.begin().await?;
    let current = find(&mut *tx, user.tenant_id, id).await?;
    use OrderStatus::*;
    let allowed = matches!(
        (current.status, body.status),
        (Pending | Paid, Cancelled) | (Paid | Cancelled, Refunded)
    );
    if current.status == body.status {
        return Ok(Json(current));
    }
    if !allowed {
        return Err(ApiError::Conflict(format!(
            "an order that is {:?} cannot become {:?} (allowed: PENDING/PAID → CANCELLED, PAID/CANCELLED → REFUNDED)",
            current.status, body.status
        )));
    }
    let order: Order = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE orders SET status = $3 WHERE id = $1 AND tenant_id = $2 RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(user.tenant_id)
    .bind(body.status)
    .fetch_one(&mut *tx)
    .await?;
    let ended = crate::subscriptions::store::cancel_for_order(&mut tx, id).await?;
    audit::record(
        &mut tx,
        Entry::by(
            &user,
            &client,
            "order.status",
            json!({
                "orderId": id, "from": current.status, "to": body.status,
                "reason": reason, "subscriptionCancelled": ended.map(|(id, _)| id),
            }),
        ),
    )
    .await?;
    tx.commit().await?;
    if let Some((_, Some(job))) = ended {
        crate::jobs::enqueue_after_commit(&state, &[job]).await;
    }
    Ok(Json(order))
}
