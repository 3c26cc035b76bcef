//! `/api/tenants` (system-level, SUPER_ADMIN only): the organisations using the panel. A new
//! tenant can be created together with its first administrator, since `/api/users` only
//! ever acts within the caller's own tenant. Deactivating a tenant stops its users at once.

use axum::{Json, extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use mpanel_protocol::Slug;
use serde::{Deserialize, Serialize};
use serde_json::json;
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
        list::{ListQuery, Page, fetch_page},
        validate::{self, OnConstraint, check_display_name, check_email, check_password},
    },
    model::UserRole,
};
use crate::{
    http::openapi::{Errors, ListParams},
    users::store::{self as users, User},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(detail, update, deactivate))
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
    pub slug: String,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, name, slug, is_active, created_at, updated_at";

/// A tenant change is recorded in the operator's own tenant (so their audit log shows what
/// they did) and, when it is another tenant, in that tenant's log too.
async fn audit_tenant(
    conn: &mut sqlx::PgConnection,
    actor: &crate::auth::current::CurrentUser,
    client: &ClientMeta,
    target: Uuid,
    action: &str,
    details: serde_json::Value,
) -> sqlx::Result<()> {
    let mut tenants = vec![actor.tenant_id];
    if target != actor.tenant_id {
        tenants.push(target);
    }
    for tenant_id in tenants {
        audit::record(
            conn,
            Entry {
                tenant_id,
                user_id: Some(actor.id),
                action,
                client: Some(client),
                details: details.clone(),
            },
        )
        .await?;
    }
    Ok(())
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct Filter {
    is_active: Option<bool>,
    /// Part of the name or slug.
    q: Option<String>,
}

/// Every tenant (SUPER_ADMIN). Sortable by name, slug, createdAt.
#[utoipa::path(get, path = "", tag = "tenants", operation_id = "listTenants", security(("bearer" = [])),
    params(ListParams, Filter),
    responses((status = 200, description = "A page of tenants", body = Page<Tenant>), Errors))]
async fn list(
    State(state): State<AppState>,
    _user: Require<perm::TenantsRead>,
    query: ListQuery<Filter>,
) -> ApiResult<Json<Page<Tenant>>> {
    let order = query.sorting.order_by(
        &[
            ("name", "name"),
            ("slug", "slug"),
            ("createdAt", "created_at"),
        ],
        "created_at",
    )?;
    let pattern = query
        .filter
        .q
        .as_deref()
        .map(crate::http::list::contains_pattern);
    const WHERE: &str = "($1::boolean IS NULL OR is_active = $1)
        AND ($2::text IS NULL OR name ILIKE $2 OR slug ILIKE $2)";
    let args = crate::pg_args![query.filter.is_active, pattern];
    let from_where = format!("FROM tenants WHERE {WHERE}");
    let page = fetch_page(&state.db, COLUMNS, &from_where, &order, query.window, args).await?;
    Ok(Json(page))
}

async fn find(db: impl sqlx::PgExecutor<'_>, id: Uuid) -> ApiResult<Tenant> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM tenants WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(db)
    .await?
    .ok_or(ApiError::NotFound("tenant"))
}

/// One tenant (SUPER_ADMIN).
#[utoipa::path(get, path = "/{id}", tag = "tenants", operation_id = "getTenant", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The tenant's id")),
    responses((status = 200, description = "The tenant", body = Tenant), Errors))]
async fn detail(
    State(state): State<AppState>,
    _user: Require<perm::TenantsRead>,
    IdPath(id): IdPath,
) -> ApiResult<Json<Tenant>> {
    find(&state.db, id).await.map(Json)
}

/// The new tenant's first operator.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FirstAdmin {
    #[schema(format = Email)]
    email: String,
    /// 1-100 characters.
    display_name: String,
    /// Must pass the password strength rules.
    password: String,
    /// ADMIN when absent.
    role: Option<UserRole>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CreateTenant {
    /// 1-100 characters, no control characters.
    name: String,
    /// Lowercase letters, digits and dashes.
    slug: String,
    admin: Option<FirstAdmin>,
}

/// The new tenant, with its first operator when one was asked for.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct CreatedTenant {
    #[serde(flatten)]
    tenant: Tenant,
    admin: Option<User>,
}

/// A new tenant, optionally with its first operator (SUPER_ADMIN).
#[utoipa::path(post, path = "", tag = "tenants", operation_id = "createTenant", security(("bearer" = [])),
    request_body = CreateTenant,
    responses((status = 201, description = "The new tenant", body = CreatedTenant), Errors))]
async fn create(
    State(state): State<AppState>,
    user: Require<perm::TenantsWrite>,
    client: ClientMeta,
    ApiJson(body): ApiJson<CreateTenant>,
) -> ApiResult<(StatusCode, Json<CreatedTenant>)> {
    let name = validate::name::<100>("name", &body.name)?;
    let slug = Slug::parse(&body.slug).map_err(|e| ApiError::field("slug", e.to_string()))?;
    let admin = match &body.admin {
        Some(a) => {
            let email = check_email("admin.email", &a.email)?;
            let display_name = check_display_name(&a.display_name)
                .map_err(|_| ApiError::field("admin.displayName", "1-100 characters"))?;
            check_password("admin.password", &a.password)?;
            Some((
                email,
                display_name,
                a.password.clone(),
                a.role.unwrap_or(UserRole::Admin),
            ))
        }
        None => None,
    };

    let mut tx = state.db.begin().await?;
    let tenant: Tenant = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO tenants (name, slug) VALUES ($1, $2) RETURNING {COLUMNS}"
    )))
    .bind(&name)
    .bind(slug.as_str())
    .fetch_one(&mut *tx)
    .await
    .on_constraint(&["tenants_slug_key"], || {
        ApiError::Conflict(format!("slug '{slug}' is taken"))
    })?;
    audit_tenant(
        &mut tx,
        &user,
        &client,
        tenant.id,
        "tenant.create",
        json!({ "tenantId": tenant.id, "slug": tenant.slug }),
    )
    .await?;
    let admin = match admin {
        Some((email, display_name, password, role)) => {
            let created =
                users::insert(&mut tx, tenant.id, &email, &display_name, role, password).await?;
            audit_tenant(
                &mut tx,
                &user,
                &client,
                tenant.id,
                "user.create",
                json!({ "userId": created.id, "email": created.email, "role": created.role }),
            )
            .await?;
            Some(created)
        }
        None => None,
    };
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(CreatedTenant { tenant, admin })))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct UpdateTenant {
    name: Option<String>,
    is_active: Option<bool>,
}

/// Renames, deactivates or reactivates a tenant (SUPER_ADMIN; not one's own).
#[utoipa::path(patch, path = "/{id}", tag = "tenants", operation_id = "updateTenant", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The tenant's id")),
    request_body = UpdateTenant,
    responses((status = 200, description = "The tenant, changed", body = Tenant), Errors))]
async fn update(
    State(state): State<AppState>,
    user: Require<perm::TenantsWrite>,
    client: ClientMeta,
    IdPath(id): IdPath,
    ApiJson(body): ApiJson<UpdateTenant>,
) -> ApiResult<Json<Tenant>> {
    let name = body
        .name
        .as_deref()
        .map(|n| validate::name::<100>("name", n))
        .transpose()?;
    if id == user.tenant_id && body.is_active == Some(false) {
        return Err(ApiError::Conflict(
            "you cannot deactivate your own tenant".to_owned(),
        ));
    }
    let mut tx = state.db.begin().await?;
    find(&mut *tx, id).await?;
    let tenant: Tenant = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE tenants SET name = COALESCE($2, name), is_active = COALESCE($3, is_active)
          WHERE id = $1 RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(&name)
    .bind(body.is_active)
    .fetch_one(&mut *tx)
    .await?;
    audit_tenant(
        &mut tx,
        &user,
        &client,
        id,
        "tenant.update",
        json!({ "tenantId": id, "changes": { "name": name, "isActive": body.is_active } }),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(tenant))
}

/// Deactivates a tenant and ends its users' sessions (SUPER_ADMIN; not one's own).
#[utoipa::path(delete, path = "/{id}", tag = "tenants", operation_id = "deactivateTenant", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The tenant's id")),
    responses((status = 204, description = "Deactivated"), Errors))]
async fn deactivate(
    State(state): State<AppState>,
    user: Require<perm::TenantsDeactivate>,
    client: ClientMeta,
    IdPath(id): IdPath,
) -> ApiResult<StatusCode> {
    if id == user.tenant_id {
        return Err(ApiError::Conflict(
            "you cannot deactivate your own tenant".to_owned(),
        ));
    }
    let mut tx = state.db.begin().await?;
    let tenant = find(&mut *tx, id).await?;
    sqlx::query("UPDATE tenants SET is_active = false WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    // Its users' tokens already stop working (the tenant is checked on every request);
    // ending the sessions also stops refreshes if the tenant is reactivated later.
    let ended = sqlx::query(
        "UPDATE refresh_sessions SET revoked_at = now(), revoke_reason = 'tenant deactivated'
          WHERE tenant_id = $1 AND revoked_at IS NULL",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    audit_tenant(
        &mut tx,
        &user,
        &client,
        id,
        "tenant.deactivate",
        json!({ "tenantId": id, "slug": tenant.slug, "sessionsEnded": ended }),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
