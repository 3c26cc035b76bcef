//! `/api/servers` (spec §8.1): the tenant's fleet. List, create, detail, update, soft delete.

use std::net::IpAddr;

use axum::{Json, extract::State, http::StatusCode};
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
        extract::{ApiJson, IdPath},
        list::{ListQuery, Page, contains_pattern, fetch_page},
        patch::nullable,
        validate::{self, OnConstraint},
    },
    model::ServerRole,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(detail, update, remove))
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Server {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub role: ServerRole,
    pub ip_address: String,
    pub internal_ip: Option<String>,
    pub location: Option<String>,
    pub is_active: bool,
    /// Whether the server's agent is connected (kept current by the fleet hub).
    pub agent_online: bool,
    pub agent_version: Option<String>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, tenant_id, name, role, ip_address, internal_ip, location, is_active, \
     agent_online, agent_version, last_seen_at, deleted_at, created_at, updated_at";

/// Host-like names: what operators call machines (srv1-web, dns-core).
fn check_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    let ok = (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(name.to_owned())
    } else {
        Err(ApiError::field(
            "name",
            "1-63 letters, digits, '-', '_' or '.', starting with a letter or digit",
        ))
    }
}

/// A server's name is unique in its tenant.
const NAME_KEY: &[&str] = &["servers_tenant_id_name_key"];

fn name_taken(name: &str) -> ApiError {
    ApiError::Conflict(format!("a server named '{name}' already exists"))
}

fn check_ip(field: &str, value: &str) -> Result<String, ApiError> {
    value
        .trim()
        .parse::<IpAddr>()
        .map(|ip| ip.to_string())
        .map_err(|_| ApiError::field(field, "not an IPv4 or IPv6 address"))
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct Filter {
    role: Option<ServerRole>,
    is_active: Option<bool>,
    /// Part of the name.
    q: Option<String>,
    /// Also list soft-deleted servers (default false).
    #[serde(default)]
    #[param(required = false)]
    include_deleted: bool,
}

/// The tenant's servers (soft-deleted ones only on request). Sortable by name, createdAt,
/// role.
#[utoipa::path(get, path = "", tag = "servers", operation_id = "listServers", security(("bearer" = [])),
    params(ListParams, Filter),
    responses((status = 200, description = "A page of servers", body = Page<Server>), Errors))]
async fn list(
    State(state): State<AppState>,
    user: Require<perm::ServersRead>,
    query: ListQuery<Filter>,
) -> ApiResult<Json<Page<Server>>> {
    let order = query.sorting.order_by(
        &[
            ("name", "name"),
            ("createdAt", "created_at"),
            ("role", "role"),
        ],
        "created_at",
    )?;
    let f = &query.filter;
    let pattern = f.q.as_deref().map(contains_pattern);
    const WHERE: &str = "tenant_id = $1 AND ($2::server_role IS NULL OR role = $2)
        AND ($3::boolean IS NULL OR is_active = $3) AND ($4::text IS NULL OR name ILIKE $4)
        AND ($5 OR deleted_at IS NULL)";
    let args = crate::pg_args![
        user.tenant_id,
        f.role,
        f.is_active,
        pattern,
        f.include_deleted
    ];
    let from_where = format!("FROM servers WHERE {WHERE}");
    let page = fetch_page(&state.db, COLUMNS, &from_where, &order, query.window, args).await?;
    Ok(Json(page))
}

pub async fn find(db: impl sqlx::PgExecutor<'_>, tenant_id: Uuid, id: Uuid) -> ApiResult<Server> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM servers WHERE id = $1 AND tenant_id = $2"
    )))
    .bind(id)
    .bind(tenant_id)
    .fetch_optional(db)
    .await?
    .ok_or(ApiError::NotFound("server"))
}

/// One server of the tenant (also a soft-deleted one).
#[utoipa::path(get, path = "/{id}", tag = "servers", operation_id = "getServer", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The server's id")),
    responses((status = 200, description = "The server", body = Server), Errors))]
async fn detail(
    State(state): State<AppState>,
    user: Require<perm::ServersRead>,
    IdPath(id): IdPath,
) -> ApiResult<Json<Server>> {
    find(&state.db, user.tenant_id, id).await.map(Json)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CreateServer {
    /// 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit.
    name: String,
    role: ServerRole,
    /// An IPv4 or IPv6 address.
    ip_address: String,
    /// An IPv4 or IPv6 address.
    internal_ip: Option<String>,
    /// 1-64 characters.
    location: Option<String>,
    /// True when absent.
    is_active: Option<bool>,
}

/// Registers a server in the tenant's fleet (its agent enrolls afterwards).
#[utoipa::path(post, path = "", tag = "servers", operation_id = "createServer", security(("bearer" = [])),
    request_body = CreateServer,
    responses((status = 201, description = "The new server", body = Server), Errors))]
async fn create(
    State(state): State<AppState>,
    user: Require<perm::ServersWrite>,
    client: ClientMeta,
    ApiJson(body): ApiJson<CreateServer>,
) -> ApiResult<(StatusCode, Json<Server>)> {
    let name = check_name(&body.name)?;
    let ip = check_ip("ipAddress", &body.ip_address)?;
    let internal_ip = body
        .internal_ip
        .as_deref()
        .map(|v| check_ip("internalIp", v))
        .transpose()?;
    let location = body
        .location
        .as_deref()
        .map(|v| validate::name::<64>("location", v))
        .transpose()?;

    let mut tx = state.db.begin().await?;
    let server: Server = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO servers (tenant_id, name, role, ip_address, internal_ip, location, is_active)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
    )))
    .bind(user.tenant_id)
    .bind(&name)
    .bind(body.role)
    .bind(&ip)
    .bind(&internal_ip)
    .bind(&location)
    .bind(body.is_active.unwrap_or(true))
    .fetch_one(&mut *tx)
    .await
    .on_constraint(NAME_KEY, || name_taken(&name))?;
    audit::record(
        &mut tx,
        Entry::by(
            &user,
            &client,
            "server.create",
            json!({ "serverId": server.id, "name": name, "role": body.role, "ipAddress": ip }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(server)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct UpdateServer {
    name: Option<String>,
    role: Option<ServerRole>,
    ip_address: Option<String>,
    /// `null` clears it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    internal_ip: Option<Option<String>>,
    /// `null` clears it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    location: Option<Option<String>>,
    is_active: Option<bool>,
}

/// Changes a server (not a deleted one).
#[utoipa::path(patch, path = "/{id}", tag = "servers", operation_id = "updateServer", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The server's id")),
    request_body = UpdateServer,
    responses((status = 200, description = "The server, changed", body = Server), Errors))]
async fn update(
    State(state): State<AppState>,
    user: Require<perm::ServersWrite>,
    client: ClientMeta,
    IdPath(id): IdPath,
    ApiJson(body): ApiJson<UpdateServer>,
) -> ApiResult<Json<Server>> {
    let name = body.name.as_deref().map(check_name).transpose()?;
    let ip = body
        .ip_address
        .as_deref()
        .map(|v| check_ip("ipAddress", v))
        .transpose()?;
    let internal_ip = match &body.internal_ip {
        Some(Some(v)) => Some(Some(check_ip("internalIp", v)?)),
        Some(None) => Some(None),
        None => None,
    };
    let location = match &body.location {
        Some(Some(v)) => Some(Some(validate::name::<64>("location", v)?)),
        Some(None) => Some(None),
        None => None,
    };

    let mut tx = state.db.begin().await?;
    let before = find(&mut *tx, user.tenant_id, id).await?;
    if before.deleted_at.is_some() {
        return Err(ApiError::Conflict("this server has been deleted".into()));
    }
    let server: Server = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE servers SET
            name = COALESCE($3, name),
            role = COALESCE($4, role),
            ip_address = COALESCE($5, ip_address),
            internal_ip = CASE WHEN $6 THEN $7 ELSE internal_ip END,
            location = CASE WHEN $8 THEN $9 ELSE location END,
            is_active = COALESCE($10, is_active)
          WHERE id = $1 AND tenant_id = $2
          RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(user.tenant_id)
    .bind(&name)
    .bind(body.role)
    .bind(&ip)
    .bind(internal_ip.is_some())
    .bind(internal_ip.clone().flatten())
    .bind(location.is_some())
    .bind(location.clone().flatten())
    .bind(body.is_active)
    .fetch_one(&mut *tx)
    .await
    .on_constraint(NAME_KEY, || name_taken(name.as_deref().unwrap_or("")))?;
    audit::record(
        &mut tx,
        Entry::by(
            &user,
            &client,
            "server.update",
            json!({
                "serverId": id,
                "changes": {
                    "name": name, "role": body.role, "ipAddress": ip,
                    "internalIp": internal_ip, "location": location, "isActive": body.is_active,
                },
            }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(server))
}

/// Soft delete: the row stays for history (jobs and accounts point at it), marked inactive
/// and deleted. Refused while the server still holds live accounts.
#[utoipa::path(delete, path = "/{id}", tag = "servers", operation_id = "deleteServer", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The server's id")),
    responses((status = 204, description = "Deleted (or already deleted)"), Errors))]
async fn remove(
    State(state): State<AppState>,
    user: Require<perm::ServersDelete>,
    client: ClientMeta,
    IdPath(id): IdPath,
) -> ApiResult<StatusCode> {
    let mut tx = state.db.begin().await?;
    let server = find(&mut *tx, user.tenant_id, id).await?;
    if server.deleted_at.is_some() {
        return Ok(StatusCode::NO_CONTENT);
    }
    let live: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM hosting_accounts WHERE server_id = $1 AND status <> 'TERMINATED')
              + (SELECT count(*) FROM vps_instances WHERE server_id = $1 AND status <> 'TERMINATED')",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    if live > 0 {
        return Err(ApiError::Conflict(format!(
            "server '{}' still holds {live} live account(s); terminate or move them first",
            server.name
        )));
    }
    sqlx::query(
        "UPDATE servers SET is_active = false, deleted_at = now() WHERE id = $1 AND tenant_id = $2",
    )
    .bind(id)
    .bind(user.tenant_id)
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        Entry::by(
            &user,
            &client,
            "server.delete",
            json!({ "serverId": id, "name": server.name }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
