//! The marketing site's read-only catalog (spec §9.1): `GET /api/public/products` and
//! `/api/public/plans` (also at `/api/products/public` and `/api/plans/public`). Active items
//! only, no internal fields (no tenant ids, flags or timestamps), cacheable with an ETag.

use axum::{
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::http::openapi::{Cached, Errors};
use crate::{
    app::AppState,
    http::{
        error::{ApiError, ApiResult},
        extract::ApiQuery,
    },
    model::{BillingInterval, ProductType},
};

/// Short enough that a price change shows within a minute, long enough to absorb traffic.
const CACHE_CONTROL: &str = "public, max-age=60";

/// `/products` and `/plans`, nested under `/api/public`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(products))
        .routes(routes!(plans))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogQuery {
    /// Tenant slug; may be left out while only one tenant is active.
    tenant: Option<String>,
    /// Product slug (plans only).
    product: Option<String>,
}

/// An active plan of an active product, without internal fields.
#[derive(Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PublicPlan {
    #[serde(skip)]
    product_id: Uuid,
    product_slug: String,
    name: String,
    slug: String,
    price_monthly_cents: i32,
    price_yearly_cents: i32,
    currency: String,
    billing_interval: BillingInterval,
    is_popular: bool,
    /// What the plan includes (see `PlanLimits`).
    #[schema(value_type = Option<Object>)]
    limits: Option<Value>,
}

/// An active product with its active plans, without internal fields.
#[derive(Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PublicProduct {
    #[serde(skip)]
    id: Uuid,
    name: String,
    slug: String,
    #[serde(rename = "type")]
    #[sqlx(rename = "type")]
    kind: ProductType,
    description: Option<String>,
    #[sqlx(skip)]
    plans: Vec<PublicPlan>,
}

/// The public answer of `/api/products/public`.
#[derive(Serialize, ToSchema)]
pub(crate) struct PublicProductList {
    items: Vec<PublicProduct>,
}

/// The public answer of `/api/plans/public`.
#[derive(Serialize, ToSchema)]
pub(crate) struct PublicPlanList {
    items: Vec<PublicPlan>,
}

async fn resolve_tenant(state: &AppState, slug: Option<&str>) -> ApiResult<Uuid> {
    match slug {
        Some(slug) => sqlx::query_scalar("SELECT id FROM tenants WHERE slug = $1 AND is_active")
            .bind(slug)
            .fetch_optional(&state.db)
            .await?
            .ok_or(ApiError::NotFound("tenant")),
        None => {
            let ids: Vec<Uuid> =
                sqlx::query_scalar("SELECT id FROM tenants WHERE is_active LIMIT 2")
                    .fetch_all(&state.db)
                    .await?;
            match ids.as_slice() {
                [only] => Ok(*only),
                [] => Err(ApiError::NotFound("tenant")),
                _ => Err(ApiError::field(
                    "tenant",
                    "required: several tenants sell here",
                )),
            }
        }
    }
}

async fn active_plans(
    state: &AppState,
    tenant: Uuid,
    product: Option<&str>,
) -> ApiResult<Vec<PublicPlan>> {
    Ok(sqlx::query_as(
        "SELECT pl.product_id, p.slug AS product_slug, pl.name, pl.slug, pl.price_monthly_cents,
                pl.price_yearly_cents, pl.currency, pl.billing_interval, pl.is_popular,
                pl.limits_json AS limits
           FROM plans pl JOIN products p ON p.id = pl.product_id
          WHERE pl.tenant_id = $1 AND pl.is_active AND p.is_active
            AND ($2::text IS NULL OR p.slug = $2)
          ORDER BY p.slug, pl.price_monthly_cents, pl.slug",
    )
    .bind(tenant)
    .bind(product)
    .fetch_all(&state.db)
    .await?)
}

/// The marketing site's catalog: active products with their active plans (no token).
#[utoipa::path(get, path = "/products", tag = "public", operation_id = "listPublicProducts",
    params(
        ("tenant" = Option<String>, Query, description = "Tenant slug; may be left out while only one tenant is active"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag of an earlier answer"),
    ),
    responses(Cached<PublicProductList>, Errors))]
pub async fn products(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<CatalogQuery>,
) -> ApiResult<Response> {
    if q.product.is_some() {
        return Err(ApiError::field("product", "only for plans"));
    }
    let tenant = resolve_tenant(&state, q.tenant.as_deref()).await?;
    let mut products: Vec<PublicProduct> = sqlx::query_as(
        "SELECT id, name, slug, type, description FROM products
          WHERE tenant_id = $1 AND is_active ORDER BY name, slug",
    )
    .bind(tenant)
    .fetch_all(&state.db)
    .await?;
    for plan in active_plans(&state, tenant, None).await? {
        if let Some(p) = products.iter_mut().find(|p| p.id == plan.product_id) {
            p.plans.push(plan);
        }
    }
    cached(&headers, &PublicProductList { items: products })
}

/// The marketing site's plans: active plans of active products, optionally of one product
/// (no token).
#[utoipa::path(get, path = "/plans", tag = "public", operation_id = "listPublicPlans",
    params(
        ("tenant" = Option<String>, Query, description = "Tenant slug; may be left out while only one tenant is active"),
        ("product" = Option<String>, Query, description = "Only this product's plans (a product slug)"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag of an earlier answer"),
    ),
    responses(Cached<PublicPlanList>, Errors))]
pub async fn plans(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<CatalogQuery>,
) -> ApiResult<Response> {
    let tenant = resolve_tenant(&state, q.tenant.as_deref()).await?;
    let plans = active_plans(&state, tenant, q.product.as_deref()).await?;
    cached(&headers, &PublicPlanList { items: plans })
}

/// A strong ETag over the body; `If-None-Match` with it answers 304 and no body. The body goes
/// through a `Value` first, so its keys are sorted and the bytes (and ETag) are stable.
fn cached(headers: &HeaderMap, body: &impl Serialize) -> ApiResult<Response> {
    let body = serde_json::to_value(body).map_err(|e| ApiError::Internal(e.into()))?;
    let bytes = serde_json::to_vec(&body).map_err(|e| ApiError::Internal(e.into()))?;
    let etag = format!("\"{}\"", hex::encode(&Sha256::digest(&bytes)[..16]));
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut res = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response()
    };
    let h = res.headers_mut();
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).expect("hex is a valid header"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    Ok(res)
}
