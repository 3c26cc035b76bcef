//! `/api/products` and `/api/plans`: the tenant's catalog (spec §6.2). Deleting deactivates,
//! because orders and subscriptions keep pointing at what was sold.

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::Response,
};
use chrono::{DateTime, Utc};
use mpanel_protocol::{Currency, Slug};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::limits::PlanLimits;
use super::public::{CatalogQuery, PublicPlanList, PublicProductList};
use crate::http::openapi::{Cached, Errors, ListParams};
use crate::{
    app::AppState,
    audit::{self, Entry},
    auth::permissions::{Require, perm},
    http::{
        client::ClientMeta,
        error::{ApiError, ApiResult},
        extract::{ApiJson, ApiQuery, IdPath},
        list::{ListQuery, Page, fetch_page},
        patch::nullable,
        validate::{self, OnConstraint},
    },
    model::{BillingInterval, ProductType},
};

pub fn products_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_products, create_product))
        .routes(routes!(public_products))
        .routes(routes!(product_detail, update_product, deactivate_product))
}

pub fn plans_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_plans, create_plan))
        .routes(routes!(public_plans))
        .routes(routes!(plan_detail, update_plan, deactivate_plan))
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Product {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub slug: String,
    #[serde(rename = "type")]
    #[sqlx(rename = "type")]
    pub kind: ProductType,
    pub description: Option<String>,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const PRODUCT_COLUMNS: &str =
    "id, tenant_id, name, slug, type, description, is_active, created_at, updated_at";

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub product_id: Uuid,
    pub name: String,
    pub slug: String,
    pub price_monthly_cents: i32,
    pub price_yearly_cents: i32,
    pub currency: String,
    pub billing_interval: BillingInterval,
    pub is_popular: bool,
    pub is_active: bool,
    /// What the plan includes (see `PlanLimits`).
    #[schema(value_type = Option<Object>)]
    pub limits_json: Option<Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The unique slugs of products and plans.
const SLUG_KEYS: &[&str] = &["products_tenant_id_slug_key", "plans_tenant_id_slug_key"];

const PLAN_COLUMNS: &str = "id, tenant_id, product_id, name, slug, price_monthly_cents, \
     price_yearly_cents, currency, billing_interval, is_popular, is_active, limits_json, \
     created_at, updated_at";

fn check_description(value: &str) -> Result<String, ApiError> {
    let v = value.trim();
    if v.chars().count() > 2000 {
        return Err(ApiError::field("description", "at most 2000 characters"));
    }
    Ok(v.to_owned())
}

fn check_slug(value: &str) -> Result<Slug, ApiError> {
    Slug::parse(value).map_err(|e| ApiError::field("slug", e.to_string()))
}

fn check_price(field: &str, cents: i64) -> Result<i32, ApiError> {
    i32::try_from(cents)
        .ok()
        .filter(|c| *c >= 0)
        .ok_or_else(|| ApiError::field(field, "must be a whole number of cents, 0 or more"))
}

fn check_limits(value: Value) -> Result<Value, ApiError> {
    let limits: PlanLimits = serde_json::from_value(value).map_err(|e| {
        ApiError::field(
            "limitsJson",
            e.to_string().split(" at line ").next().unwrap_or(""),
        )
    })?;
    Ok(serde_json::to_value(limits).expect("limits serialize"))
}

fn slug_taken(what: &str, slug: &str) -> ApiError {
    ApiError::Conflict(format!("a {what} with slug '{slug}' already exists"))
}

async fn audit_change(
    conn: &mut sqlx::PgConnection,
    user: &crate::auth::current::CurrentUser,
    client: &ClientMeta,
    action: &str,
    details: Value,
) -> sqlx::Result<()> {
    audit::record(conn, Entry::by(user, client, action, details)).await
}

// ----- products ---------------------------------------------------------------------------

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct ProductFilter {
    #[serde(rename = "type")]
    kind: Option<ProductType>,
    is_active: Option<bool>,
    /// Part of the name or slug.
    q: Option<String>,
}

/// The tenant's products. Sortable by name, slug, createdAt.
#[utoipa::path(get, path = "", tag = "catalog", operation_id = "listProducts", security(("bearer" = [])),
    params(ListParams, ProductFilter),
    responses((status = 200, description = "A page of products", body = Page<Product>), Errors))]
async fn list_products(
    State(state): State<AppState>,
    user: Require<perm::CatalogRead>,
    query: ListQuery<ProductFilter>,
) -> ApiResult<Json<Page<Product>>> {
    let order = query.sorting.order_by(
        &[
            ("name", "name"),
            ("slug", "slug"),
            ("createdAt", "created_at"),
        ],
        "created_at",
    )?;
    let f = &query.filter;
    let pattern = f.q.as_deref().map(crate::http::list::contains_pattern);
    const WHERE: &str = "tenant_id = $1 AND ($2::product_type IS NULL OR type = $2)
        AND ($3::boolean IS NULL OR is_active = $3)
        AND ($4::text IS NULL OR name ILIKE $4 OR slug ILIKE $4)";
    let args = crate::pg_args![user.tenant_id, f.kind, f.is_active, pattern];
    let from_where = format!("FROM products WHERE {WHERE}");
    let page = fetch_page(
        &state.db,
        PRODUCT_COLUMNS,
        &from_where,
        &order,
        query.window,
        args,
    )
    .await?;
    Ok(Json(page))
}

async fn find_product(db: impl sqlx::PgExecutor<'_>, tenant: Uuid, id: Uuid) -> ApiResult<Product> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PRODUCT_COLUMNS} FROM products WHERE id = $1 AND tenant_id = $2"
    )))
    .bind(id)
    .bind(tenant)
    .fetch_optional(db)
    .await?
    .ok_or(ApiError::NotFound("product"))
}

/// One product.
#[utoipa::path(get, path = "/{id}", tag = "catalog", operation_id = "getProduct", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The product's id")),
    responses((status = 200, description = "The product", body = Product), Errors))]
async fn product_detail(
    State(state): State<AppState>,
    user: Require<perm::CatalogRead>,
    IdPath(id): IdPath,
) -> ApiResult<Json<Product>> {
    find_product(&state.db, user.tenant_id, id).await.map(Json)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CreateProduct {
    /// 1-100 characters.
    name: String,
    /// Lowercase letters, digits and hyphens; unique in the tenant.
    slug: String,
    #[serde(rename = "type")]
    kind: ProductType,
    /// At most 2000 characters.
    description: Option<String>,
    /// Default true.
    is_active: Option<bool>,
}

/// Adds a product to the catalog.
#[utoipa::path(post, path = "", tag = "catalog", operation_id = "createProduct", security(("bearer" = [])),
    request_body = CreateProduct,
    responses((status = 201, description = "The new product", body = Product), Errors))]
async fn create_product(
    State(state): State<AppState>,
    user: Require<perm::CatalogWrite>,
    client: ClientMeta,
    ApiJson(body): ApiJson<CreateProduct>,
) -> ApiResult<(StatusCode, Json<Product>)> {
    let name = validate::name::<100>("name", &body.name)?;
    let slug = check_slug(&body.slug)?;
    let description = body
        .description
        .as_deref()
        .map(check_description)
        .transpose()?;
    let mut tx = state.db.begin().await?;
    let product: Product = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO products (tenant_id, name, slug, type, description, is_active)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {PRODUCT_COLUMNS}"
    )))
    .bind(user.tenant_id)
    .bind(&name)
    .bind(slug.as_str())
    .bind(body.kind)
    .bind(&description)
    .bind(body.is_active.unwrap_or(true))
    .fetch_one(&mut *tx)
    .await
    .on_constraint(SLUG_KEYS, || slug_taken("product", slug.as_str()))?;
    audit_change(
        &mut tx,
        &user,
        &client,
        "product.create",
        json!({ "productId": product.id, "slug": product.slug }),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(product)))
}

/// Only the fields sent change; `description: null` clears it.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct UpdateProduct {
    name: Option<String>,
    slug: Option<String>,
    #[serde(rename = "type")]
    kind: Option<ProductType>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    description: Option<Option<String>>,
    is_active: Option<bool>,
}

/// Changes a product.
#[utoipa::path(patch, path = "/{id}", tag = "catalog", operation_id = "updateProduct", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The product's id")),
    request_body = UpdateProduct,
    responses((status = 200, description = "The product, changed", body = Product), Errors))]
async fn update_product(
    State(state): State<AppState>,
    user: Require<perm::CatalogWrite>,
    client: ClientMeta,
    IdPath(id): IdPath,
    ApiJson(body): ApiJson<UpdateProduct>,
) -> ApiResult<Json<Product>> {
    let name = body
        .name
        .as_deref()
        .map(|n| validate::name::<100>("name", n))
        .transpose()?;
    let slug = body.slug.as_deref().map(check_slug).transpose()?;
    let description = match &body.description {
        Some(Some(d)) => Some(Some(check_description(d)?)),
        Some(None) => Some(None),
        None => None,
    };
    let mut tx = state.db.begin().await?;
    find_product(&mut *tx, user.tenant_id, id).await?;
    let product: Product = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE products SET name = COALESCE($3, name), slug = COALESCE($4, slug),
                type = COALESCE($5, type),
                description = CASE WHEN $6 THEN $7 ELSE description END,
                is_active = COALESCE($8, is_active)
          WHERE id = $1 AND tenant_id = $2 RETURNING {PRODUCT_COLUMNS}"
    )))
    .bind(id)
    .bind(user.tenant_id)
    .bind(&name)
    .bind(slug.as_ref().map(Slug::as_str))
    .bind(body.kind)
    .bind(description.is_some())
    .bind(description.clone().flatten())
    .bind(body.is_active)
    .fetch_one(&mut *tx)
    .await
    .on_constraint(SLUG_KEYS, || {
        slug_taken("product", slug.as_ref().map_or("", Slug::as_str))
    })?;
    audit_change(
        &mut tx,
        &user,
        &client,
        "product.update",
        json!({ "productId": id, "changes": { "name": name, "slug": slug, "type": body.kind, "isActive": body.is_active } }),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(product))
}

/// Deactivates a product (orders and subscriptions keep pointing at it).
#[utoipa::path(delete, path = "/{id}", tag = "catalog", operation_id = "deactivateProduct", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The product's id")),
    responses((status = 204, description = "Deactivated"), Errors))]
async fn deactivate_product(
    State(state): State<AppState>,
    user: Require<perm::CatalogWrite>,
    client: ClientMeta,
    IdPath(id): IdPath,
) -> ApiResult<StatusCode> {
    let mut tx = state.db.begin().await?;
    find_product(&mut *tx, user.tenant_id, id).await?;
    sqlx::query("UPDATE products SET is_active = false WHERE id = $1 AND tenant_id = $2")
        .bind(id)
        .bind(user.tenant_id)
        .execute(&mut *tx)
        .await?;
    audit_change(
        &mut tx,
        &user,
        &client,
        "product.deactivate",
        json!({ "productId": id }),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

// ----- plans ------------------------------------------------------------------------------

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct PlanFilter {
    product_id: Option<Uuid>,
    is_active: Option<bool>,
    /// Part of the name or slug.
    q: Option<String>,
}

/// The tenant's plans. Sortable by name, slug, priceMonthlyCents, createdAt.
#[utoipa::path(get, path = "", tag = "catalog", operation_id = "listPlans", security(("bearer" = [])),
    params(ListParams, PlanFilter),
    responses((status = 200, description = "A page of plans", body = Page<Plan>), Errors))]
async fn list_plans(
    State(state): State<AppState>,
    user: Require<perm::CatalogRead>,
    query: ListQuery<PlanFilter>,
) -> ApiResult<Json<Page<Plan>>> {
    let order = query.sorting.order_by(
        &[
            ("name", "name"),
            ("slug", "slug"),
            ("priceMonthlyCents", "price_monthly_cents"),
            ("createdAt", "created_at"),
        ],
        "created_at",
    )?;
    let f = &query.filter;
    let pattern = f.q.as_deref().map(crate::http::list::contains_pattern);
    const WHERE: &str = "tenant_id = $1 AND ($2::uuid IS NULL OR product_id = $2)
        AND ($3::boolean IS NULL OR is_active = $3)
        AND ($4::text IS NULL OR name ILIKE $4 OR slug ILIKE $4)";
    let args = crate::pg_args![user.tenant_id, f.product_id, f.is_active, pattern];
    let from_where = format!("FROM plans WHERE {WHERE}");
    let page = fetch_page(
        &state.db,
        PLAN_COLUMNS,
        &from_where,
        &order,
        query.window,
        args,
    )
    .await?;
    Ok(Json(page))
}

async fn find_plan(db: impl sqlx::PgExecutor<'_>, tenant: Uuid, id: Uuid) -> ApiResult<Plan> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PLAN_COLUMNS} FROM plans WHERE id = $1 AND tenant_id = $2"
    )))
    .bind(id)
    .bind(tenant)
    .fetch_optional(db)
    .await?
    .ok_or(ApiError::NotFound("plan"))
}

/// One plan.
#[utoipa::path(get, path = "/{id}", tag = "catalog", operation_id = "getPlan", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The plan's id")),
    responses((status = 200, description = "The plan", body = Plan), Errors))]
async fn plan_detail(
    State(state): State<AppState>,
    user: Require<perm::CatalogRead>,
    IdPath(id): IdPath,
) -> ApiResult<Json<Plan>> {
    find_plan(&state.db, user.tenant_id, id).await.map(Json)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CreatePlan {
    /// A product of the tenant.
    product_id: Uuid,
    /// 1-100 characters.
    name: String,
    /// Lowercase letters, digits and hyphens; unique in the tenant.
    slug: String,
    /// Whole cents, 0 or more.
    price_monthly_cents: i64,
    /// Whole cents, 0 or more.
    price_yearly_cents: i64,
    /// A three-letter ISO 4217 code (default `usd`).
    currency: Option<String>,
    /// Default MONTHLY.
    billing_interval: Option<BillingInterval>,
    /// Default false.
    is_popular: Option<bool>,
    /// Default true.
    is_active: Option<bool>,
    #[schema(value_type = Option<PlanLimits>)]
    limits_json: Option<Value>,
}

/// Adds a plan to a product.
#[utoipa::path(post, path = "", tag = "catalog", operation_id = "createPlan", security(("bearer" = [])),
    request_body = CreatePlan,
    responses((status = 201, description = "The new plan", body = Plan), Errors))]
async fn create_plan(
    State(state): State<AppState>,
    user: Require<perm::CatalogWrite>,
    client: ClientMeta,
    ApiJson(body): ApiJson<CreatePlan>,
) -> ApiResult<(StatusCode, Json<Plan>)> {
    let name = validate::name::<100>("name", &body.name)?;
    let slug = check_slug(&body.slug)?;
    let monthly = check_price("priceMonthlyCents", body.price_monthly_cents)?;
    let yearly = check_price("priceYearlyCents", body.price_yearly_cents)?;
    let currency = Currency::parse(body.currency.as_deref().unwrap_or("usd"))
        .map_err(|e| ApiError::field("currency", e.to_string()))?;
    let limits = body.limits_json.map(check_limits).transpose()?;
    let mut tx = state.db.begin().await?;
    find_product(&mut *tx, user.tenant_id, body.product_id)
        .await
        .map_err(|_| ApiError::Unprocessable {
            message: "productId: no such product in this tenant".into(),
            field: "productId".into(),
        })?;
    let plan: Plan = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO plans (tenant_id, product_id, name, slug, price_monthly_cents,
                            price_yearly_cents, currency, billing_interval, is_popular, is_active, limits_json)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING {PLAN_COLUMNS}"
    )))
    .bind(user.tenant_id)
    .bind(body.product_id)
    .bind(&name)
    .bind(slug.as_str())
    .bind(monthly)
    .bind(yearly)
    .bind(currency.as_str())
    .bind(body.billing_interval.unwrap_or(BillingInterval::Monthly))
    .bind(body.is_popular.unwrap_or(false))
    .bind(body.is_active.unwrap_or(true))
    .bind(&limits)
    .fetch_one(&mut *tx)
    .await
    .on_constraint(SLUG_KEYS, || slug_taken("plan", slug.as_str()))?;
    audit_change(
        &mut tx,
        &user,
        &client,
        "plan.create",
        json!({ "planId": plan.id, "slug": plan.slug }),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(plan)))
}

/// Only the fields sent change; `limitsJson: null` clears the limits.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct UpdatePlan {
    name: Option<String>,
    slug: Option<String>,
    price_monthly_cents: Option<i64>,
    price_yearly_cents: Option<i64>,
    currency: Option<String>,
    billing_interval: Option<BillingInterval>,
    is_popular: Option<bool>,
    is_active: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<PlanLimits>)]
    limits_json: Option<Option<Value>>,
}

/// Changes a plan (orders already placed keep their price).
#[utoipa::path(patch, path = "/{id}", tag = "catalog", operation_id = "updatePlan", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The plan's id")),
    request_body = UpdatePlan,
    responses((status = 200, description = "The plan, changed", body = Plan), Errors))]
async fn update_plan(
    State(state): State<AppState>,
    user: Require<perm::CatalogWrite>,
    client: ClientMeta,
    IdPath(id): IdPath,
    ApiJson(body): ApiJson<UpdatePlan>,
) -> ApiResult<Json<Plan>> {
    let name = body
        .name
        .as_deref()
        .map(|n| validate::name::<100>("name", n))
        .transpose()?;
    let slug = body.slug.as_deref().map(check_slug).transpose()?;
    let monthly = body
        .price_monthly_cents
        .map(|c| check_price("priceMonthlyCents", c))
        .transpose()?;
    let yearly = body
        .price_yearly_cents
        .map(|c| check_price("priceYearlyCents", c))
        .transpose()?;
    let currency = body
        .currency
        .as_deref()
        .map(|c| Currency::parse(c).map_err(|e| ApiError::field("currency", e.to_string())))
        .transpose()?;
    let limits = match body.limits_json {
        Some(Some(v)) => Some(Some(check_limits(v)?)),
        Some(None) => Some(None),
        None => None,
    };
    let mut tx = state.db.begin().await?;
    find_plan(&mut *tx, user.tenant_id, id).await?;
    let plan: Plan = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE plans SET name = COALESCE($3, name), slug = COALESCE($4, slug),
                price_monthly_cents = COALESCE($5, price_monthly_cents),
                price_yearly_cents = COALESCE($6, price_yearly_cents),
                currency = COALESCE($7, currency), billing_interval = COALESCE($8, billing_interval),
                is_popular = COALESCE($9, is_popular), is_active = COALESCE($10, is_active),
                limits_json = CASE WHEN $11 THEN $12 ELSE limits_json END
          WHERE id = $1 AND tenant_id = $2 RETURNING {PLAN_COLUMNS}"
    )))
    .bind(id)
    .bind(user.tenant_id)
    .bind(&name)
    .bind(slug.as_ref().map(Slug::as_str))
    .bind(monthly)
    .bind(yearly)
    .bind(currency.as_ref().map(Currency::as_str))
    .bind(body.billing_interval)
    .bind(body.is_popular)
    .bind(body.is_active)
    .bind(limits.is_some())
    .bind(limits.clone().flatten())
    .fetch_one(&mut *tx)
    .await
    .on_constraint(SLUG_KEYS, || slug_taken("plan", slug.as_ref().map_or("", Slug::as_str)))?;
    audit_change(
        &mut tx,
        &user,
        &client,
        "plan.update",
        json!({ "planId": id, "changes": { "name": name, "slug": slug, "priceMonthlyCents": monthly,
                 "priceYearlyCents": yearly, "isActive": body.is_active, "limitsJson": limits } }),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(plan))
}

/// Deactivates a plan (orders and subscriptions keep pointing at it).
#[utoipa::path(delete, path = "/{id}", tag = "catalog", operation_id = "deactivatePlan", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The plan's id")),
    responses((status = 204, description = "Deactivated"), Errors))]
async fn deactivate_plan(
    State(state): State<AppState>,
    user: Require<perm::CatalogWrite>,
    client: ClientMeta,
    IdPath(id): IdPath,
) -> ApiResult<StatusCode> {
    let mut tx = state.db.begin().await?;
    find_plan(&mut *tx, user.tenant_id, id).await?;
    sqlx::query("UPDATE plans SET is_active = false WHERE id = $1 AND tenant_id = $2")
        .bind(id)
        .bind(user.tenant_id)
        .execute(&mut *tx)
        .await?;
    audit_change(
        &mut tx,
        &user,
        &client,
        "plan.deactivate",
        json!({ "planId": id }),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

// ----- the marketing site's catalog ---------------------------------------------------------
// `/api/products/public` and `/api/plans/public` answer exactly what `/api/public/products`
// and `/api/public/plans` answer (`super::public`, whose schemas they share); these wrappers
// document them under their second path.

/// The marketing site's catalog: active products with their active plans (no token).
#[utoipa::path(get, path = "/public", tag = "catalog", operation_id = "listProductsPublic",
    params(
        ("tenant" = Option<String>, Query, description = "Tenant slug; may be left out while only one tenant is active"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag of an earlier answer"),
    ),
    responses(Cached<PublicProductList>, Errors))]
async fn public_products(
    state: State<AppState>,
    headers: HeaderMap,
    query: ApiQuery<CatalogQuery>,
) -> ApiResult<Response> {
    super::public::products(state, headers, query).await
}

/// The marketing site's plans: active plans of active products, optionally of one product
/// (no token).
#[utoipa::path(get, path = "/public", tag = "catalog", operation_id = "listPlansPublic",
    params(
        ("tenant" = Option<String>, Query, description = "Tenant slug; may be left out while only one tenant is active"),
        ("product" = Option<String>, Query, description = "Only this product's plans (a product slug)"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag of an earlier answer"),
    ),
    responses(Cached<PublicPlanList>, Errors))]
async fn public_plans(
    state: State<AppState>,
    headers: HeaderMap,
    query: ApiQuery<CatalogQuery>,
) -> ApiResult<Response> {
    super::public::plans(state, headers, query).await
}
