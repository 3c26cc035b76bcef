//! `/api/customers`: the buyers, found or created by paid orders.

use axum::{Json, extract::State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::http::openapi::{Errors, ListParams};
use crate::{
    app::AppState,
    auth::permissions::{Require, perm},
    http::{
        error::{ApiError, ApiResult},
        extract::IdPath,
        list::{ListQuery, Page, fetch_page},
    },
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(detail))
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Customer {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub email: String,
    pub full_name: Option<String>,
    pub phone: Option<String>,
    pub stripe_customer_id: Option<String>,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Counts, for the list view.
    pub order_count: i64,
    pub active_subscriptions: i64,
}

const COLUMNS: &str = "c.id, c.tenant_id, c.email, c.full_name, c.phone, c.stripe_customer_id,
        c.is_active, c.created_at, c.updated_at,
        (SELECT count(*) FROM orders o WHERE o.customer_id = c.id) AS order_count,
        (SELECT count(*) FROM subscriptions s WHERE s.customer_id = c.id AND s.status = 'ACTIVE')
            AS active_subscriptions";

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct Filter {
    is_active: Option<bool>,
    /// Part of the e-mail or name.
    q: Option<String>,
}

/// The tenant's customers, newest first. Sortable by createdAt, email.
#[utoipa::path(get, path = "", tag = "customers", operation_id = "listCustomers", security(("bearer" = [])),
    params(ListParams, Filter),
    responses((status = 200, description = "A page of customers", body = Page<Customer>), Errors))]
async fn list(
    State(state): State<AppState>,
    user: Require<perm::CustomersRead>,
    query: ListQuery<Filter>,
) -> ApiResult<Json<Page<Customer>>> {
    let order = query
        .sorting
        .order_by(
            &[("createdAt", "c.created_at"), ("email", "c.email")],
            "c.created_at",
        )?
        .replace(", id ", ", c.id ");
    let pattern = query
        .filter
        .q
        .as_deref()
        .map(crate::http::list::contains_pattern);
    const WHERE: &str = "c.tenant_id = $1 AND ($2::boolean IS NULL OR c.is_active = $2)
        AND ($3::text IS NULL OR c.email ILIKE $3 OR c.full_name ILIKE $3)";
    let args = crate::pg_args![user.tenant_id, query.filter.is_active, pattern];
    let from_where = format!("FROM customers c WHERE {WHERE}");
    let page = fetch_page(&state.db, COLUMNS, &from_where, &order, query.window, args).await?;
    Ok(Json(page))
}

/// One customer, with their counts.
#[utoipa::path(get, path = "/{id}", tag = "customers", operation_id = "getCustomer", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The customer's id")),
    responses((status = 200, description = "The customer", body = Customer), Errors))]
async fn detail(
    State(state): State<AppState>,
    user: Require<perm::CustomersRead>,
    IdPath(id): IdPath,
) -> ApiResult<Json<Customer>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM customers c WHERE c.id = $1 AND c.tenant_id = $2"
    )))
    .bind(id)
    .bind(user.tenant_id)
    .fetch_optional(&state.db)
    .await?
    .map(Json)
    .ok_or(ApiError::NotFound("customer"))
}
