//! `/api/users`: the operators of the caller's tenant. Deactivation ends every session of
//! the user at once. Only a SUPER_ADMIN creates, changes or grants SUPER_ADMIN, and nobody
//! deactivates or demotes themselves (the last admin cannot lock the tenant out by mistake).

use axum::{Json, extract::State, http::StatusCode};
use serde::Deserialize;
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::store::{self, COLUMNS, User};
use crate::http::openapi::{Errors, ListParams};
use crate::{
    app::AppState,
    audit::{self, Entry},
    auth::{
        current::CurrentUser,
        password,
        permissions::{Require, perm},
        session,
    },
    http::{
        client::ClientMeta,
        error::{ApiError, ApiResult},
        extract::{ApiJson, IdPath},
        list::{ListQuery, Page, fetch_page},
        validate::{check_display_name, check_email, check_password},
    },
    model::UserRole,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(detail, update, deactivate))
}

/// Only a SUPER_ADMIN may hand out, or touch an account holding, SUPER_ADMIN.
fn guard_super_admin(actor: &CurrentUser, role: UserRole) -> ApiResult<()> {
    if role == UserRole::SuperAdmin && actor.role != UserRole::SuperAdmin {
        return Err(ApiError::Forbidden(
            "manage SUPER_ADMIN accounts".to_owned(),
        ));
    }
    Ok(())
}

impl From<store::InsertError> for ApiError {
    fn from(e: store::InsertError) -> ApiError {
        match e {
            store::InsertError::EmailTaken(_) => ApiError::Conflict(e.to_string()),
            store::InsertError::Other(e) => ApiError::Internal(e),
        }
    }
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct Filter {
    role: Option<UserRole>,
    is_active: Option<bool>,
    /// Part of the e-mail or display name.
    q: Option<String>,
}

/// The operators of the caller's tenant. Sortable by email, createdAt, role, lastLoginAt.
#[utoipa::path(get, path = "", tag = "users", operation_id = "listUsers", security(("bearer" = [])),
    params(ListParams, Filter),
    responses((status = 200, description = "A page of users", body = Page<User>), Errors))]
async fn list(
    State(state): State<AppState>,
    user: Require<perm::UsersRead>,
    query: ListQuery<Filter>,
) -> ApiResult<Json<Page<User>>> {
    let order = query.sorting.order_by(
        &[
            ("email", "email"),
            ("createdAt", "created_at"),
            ("role", "role"),
            ("lastLoginAt", "last_login_at"),
        ],
        "created_at",
    )?;
    let f = &query.filter;
    let pattern = f.q.as_deref().map(crate::http::list::contains_pattern);
    const WHERE: &str = "tenant_id = $1 AND ($2::user_role IS NULL OR role = $2)
        AND ($3::boolean IS NULL OR is_active = $3)
        AND ($4::text IS NULL OR email ILIKE $4 OR display_name ILIKE $4)";
    let args = crate::pg_args![user.tenant_id, f.role, f.is_active, pattern];
    let from_where = format!("FROM users WHERE {WHERE}");
    let page = fetch_page(&state.db, COLUMNS, &from_where, &order, query.window, args).await?;
    Ok(Json(page))
}

async fn find(db: impl sqlx::PgExecutor<'_>, tenant_id: Uuid, id: Uuid) -> ApiResult<User> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM users WHERE id = $1 AND tenant_id = $2"
    )))
    .bind(id)
    .bind(tenant_id)
    .fetch_optional(db)
    .await?
    .ok_or(ApiError::NotFound("user"))
}

/// One operator of the caller's tenant.
#[utoipa::path(get, path = "/{id}", tag = "users", operation_id = "getUser", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The user's id")),
    responses((status = 200, description = "The user", body = User), Errors))]
async fn detail(
    State(state): State<AppState>,
    user: Require<perm::UsersRead>,
    IdPath(id): IdPath,
) -> ApiResult<Json<User>> {
    find(&state.db, user.tenant_id, id).await.map(Json)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateUser {
    #[schema(format = Email)]
    pub email: String,
    /// 1-100 characters, no control characters.
    pub display_name: String,
    pub role: UserRole,
    /// Must pass the password strength rules.
    pub password: String,
}

/// A new operator in the caller's tenant (only a SUPER_ADMIN creates a SUPER_ADMIN).
#[utoipa::path(post, path = "", tag = "users", operation_id = "createUser", security(("bearer" = [])),
    request_body = CreateUser,
    responses((status = 201, description = "The new user", body = User), Errors))]
async fn create(
    State(state): State<AppState>,
    user: Require<perm::UsersWrite>,
    client: ClientMeta,
    ApiJson(body): ApiJson<CreateUser>,
) -> ApiResult<(StatusCode, Json<User>)> {
    let email = check_email("email", &body.email)?;
    let display_name = check_display_name(&body.display_name)?;
    check_password("password", &body.password)?;
    guard_super_admin(&user, body.role)?;

    let mut tx = state.db.begin().await?;
    let created = store::insert(
        &mut tx,
        user.tenant_id,
        &email,
        &display_name,
        body.role,
        body.password,
    )
    .await?;
    audit::record(
        &mut tx,
        Entry::by(
            &user,
            &client,
            "user.create",
            json!({ "userId": created.id, "email": created.email, "role": created.role }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct UpdateUser {
    display_name: Option<String>,
    role: Option<UserRole>,
    is_active: Option<bool>,
    password: Option<String>,
}

/// Changes an operator; a new password or a deactivation ends all their sessions.
#[utoipa::path(patch, path = "/{id}", tag = "users", operation_id = "updateUser", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The user's id")),
    request_body = UpdateUser,
    responses((status = 200, description = "The user, changed", body = User), Errors))]
async fn update(
    State(state): State<AppState>,
    user: Require<perm::UsersWrite>,
    client: ClientMeta,
    IdPath(id): IdPath,
    ApiJson(body): ApiJson<UpdateUser>,
) -> ApiResult<Json<User>> {
    let display_name = body
        .display_name
        .as_deref()
        .map(check_display_name)
        .transpose()?;
    if let Some(p) = &body.password {
        check_password("password", p)?;
    }
    let mut tx = state.db.begin().await?;
    let target = find(&mut *tx, user.tenant_id, id).await?;
    guard_super_admin(&user, target.role)?;
    if let Some(role) = body.role {
        guard_super_admin(&user, role)?;
    }
    if id == user.id
        && (body.is_active == Some(false) || body.role.is_some_and(|r| r != target.role))
    {
        return Err(ApiError::Conflict(
            "you cannot deactivate yourself or change your own role".to_owned(),
        ));
    }
    let hash = match body.password.clone() {
        Some(p) => Some(
            tokio::task::spawn_blocking(move || password::hash(&p))
                .await
                .map_err(|e| ApiError::Internal(e.into()))??,
        ),
        None => None,
    };
    let updated: User = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE users SET display_name = COALESCE($3, display_name), role = COALESCE($4, role),
                is_active = COALESCE($5, is_active), password_hash = COALESCE($6, password_hash)
          WHERE id = $1 AND tenant_id = $2 RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(user.tenant_id)
    .bind(&display_name)
    .bind(body.role)
    .bind(body.is_active)
    .bind(&hash)
    .fetch_one(&mut *tx)
    .await?;
    // A new password or a deactivation ends every session of the account.
    if hash.is_some() || body.is_active == Some(false) {
        session::revoke_all_for_user(&mut tx, id, "account changed by an administrator").await?;
    }
    audit::record(
        &mut tx,
        Entry::by(
            &user,
            &client,
            "user.update",
            json!({
                "userId": id,
                "changes": {
                    "displayName": display_name, "role": body.role,
                    "isActive": body.is_active, "passwordChanged": hash.is_some(),
                },
            }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(updated))
}

/// Deactivates an operator and ends all their sessions.
#[utoipa::path(delete, path = "/{id}", tag = "users", operation_id = "deactivateUser", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The user's id")),
    responses((status = 204, description = "Deactivated"), Errors))]
async fn deactivate(
    State(state): State<AppState>,
    user: Require<perm::UsersDeactivate>,
    client: ClientMeta,
    IdPath(id): IdPath,
) -> ApiResult<StatusCode> {
    let mut tx = state.db.begin().await?;
    let target = find(&mut *tx, user.tenant_id, id).await?;
    guard_super_admin(&user, target.role)?;
    if id == user.id {
        return Err(ApiError::Conflict(
            "you cannot deactivate yourself".to_owned(),
        ));
    }
    sqlx::query("UPDATE users SET is_active = false WHERE id = $1 AND tenant_id = $2")
        .bind(id)
        .bind(user.tenant_id)
        .execute(&mut *tx)
        .await?;
    let sessions = session::revoke_all_for_user(&mut tx, id, "user deactivated").await?;
    audit::record(
        &mut tx,
        Entry::by(
            &user,
            &client,
            "user.deactivate",
            json!({ "userId": id, "email": target.email, "sessionsEnded": sessions }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
