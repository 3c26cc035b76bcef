//! `/api/vps` (spec §8.4): VPS instances, modelled fully. Every action is a PROVISION_VPS
//! job (`payload.action`: create, start, stop, reboot, destroy) for the instance's server;
//! no agent role drives a hypervisor yet, so those jobs end FAILED with a clear
//! "unsupported" error rather than pretending. The rows and routes are ready for the day a
//! hypervisor role lands.

use axum::{Json, extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::http::job_action::queue_job;
use crate::http::openapi::{Errors, ListParams};
use crate::{
    app::AppState,
    auth::{
        current::CurrentUser,
        permissions::{Require, perm},
    },
    http::{
        client::ClientMeta,
        error::{ApiError, ApiResult},
        extract::{ApiJson, IdPath},
        list::{ListQuery, Page, fetch_page},
    },
    jobs,
    model::VpsStatus,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(detail))
        .routes(routes!(start))
        .routes(routes!(stop))
        .routes(routes!(reboot))
        .routes(routes!(destroy))
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VpsInstance {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub domain_id: Option<Uuid>,
    pub server_id: Uuid,
    pub name: String,
    pub ipv4: Option<String>,
    pub status: VpsStatus,
    pub cpu_cores: Option<i32>,
    pub memory_mb: Option<i32>,
    pub disk_gb: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, tenant_id, domain_id, server_id, name, ipv4, status, cpu_cores, \
     memory_mb, disk_gb, created_at, updated_at";

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct Filter {
    status: Option<VpsStatus>,
    server_id: Option<Uuid>,
    domain_id: Option<Uuid>,
}

/// The tenant's VPS instances, newest first. Sortable by createdAt, updatedAt, name, status.
#[utoipa::path(get, path = "", tag = "vps", operation_id = "listVps", security(("bearer" = [])),
    params(ListParams, Filter),
    responses((status = 200, description = "A page of VPS instances", body = Page<VpsInstance>), Errors))]
async fn list(
    State(state): State<AppState>,
    user: Require<perm::VpsRead>,
    query: ListQuery<Filter>,
) -> ApiResult<Json<Page<VpsInstance>>> {
    let order = query.sorting.order_by(
        &[
            ("createdAt", "created_at"),
            ("updatedAt", "updated_at"),
            ("name", "name"),
            ("status", "status"),
        ],
        "created_at",
    )?;
    let f = &query.filter;
    const WHERE: &str = "tenant_id = $1 AND ($2::vps_status IS NULL OR status = $2)
        AND ($3::uuid IS NULL OR server_id = $3) AND ($4::uuid IS NULL OR domain_id = $4)";
    let args = crate::pg_args![user.tenant_id, f.status, f.server_id, f.domain_id];
    let from_where = format!("FROM vps_instances WHERE {WHERE}");
    let page = fetch_page(&state.db, COLUMNS, &from_where, &order, query.window, args).await?;
    Ok(Json(page))
}

async fn find(db: impl sqlx::PgExecutor<'_>, tenant: Uuid, id: Uuid) -> ApiResult<VpsInstance> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM vps_instances WHERE id = $1 AND tenant_id = $2"
    )))
    .bind(id)
    .bind(tenant)
    .fetch_optional(db)
    .await?
    .ok_or(ApiError::NotFound("VPS instance"))
}

/// One VPS instance of the tenant.
#[utoipa::path(get, path = "/{id}", tag = "vps", operation_id = "getVps", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The VPS instance's id")),
    responses((status = 200, description = "The VPS instance", body = VpsInstance), Errors))]
async fn detail(
    State(state): State<AppState>,
    user: Require<perm::VpsRead>,
    IdPath(id): IdPath,
) -> ApiResult<Json<VpsInstance>> {
    Ok(Json(find(&state.db, user.tenant_id, id).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CreateVps {
    /// 1-63 letters, digits, `-`, `_` or `.`, starting with a letter or digit (surrounding
    /// spaces are trimmed).
    name: String,
    /// A server of the tenant.
    server_id: Uuid,
    /// A domain of the tenant, with no VPS yet.
    domain_id: Option<Uuid>,
    #[schema(minimum = 1, maximum = 256)]
    cpu_cores: Option<i32>,
    #[schema(minimum = 1, maximum = 4194304)]
    memory_mb: Option<i32>,
    #[schema(minimum = 1, maximum = 65536)]
    disk_gb: Option<i32>,
}

/// The answer of the routes that queue a PROVISION_VPS job.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct VpsAccepted {
    job_id: Uuid,
    vps_id: Uuid,
    /// `PENDING`.
    status: String,
}

fn check_size(field: &str, v: Option<i32>, max: i32) -> ApiResult<()> {
    match v {
        Some(n) if !(1..=max).contains(&n) => Err(ApiError::field(
            field,
            format!("must be between 1 and {max}"),
        )),
        _ => Ok(()),
    }
}

/// A VPS instance: the row now, the machine by the queued PROVISION_VPS job (`create`).
#[utoipa::path(post, path = "", tag = "vps", operation_id = "createVps", security(("bearer" = [])),
    request_body = CreateVps,
    responses((status = 202, description = "The row is made and the job queued", body = VpsAccepted), Errors))]
async fn create(
    State(state): State<AppState>,
    user: Require<perm::VpsWrite>,
    client: ClientMeta,
    ApiJson(body): ApiJson<CreateVps>,
) -> ApiResult<(StatusCode, Json<VpsAccepted>)> {
    let name = body.name.trim();
    let name_ok = (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !name_ok {
        return Err(ApiError::field(
            "name",
            "1-63 letters, digits, '-', '_' or '.', starting with a letter or digit",
        ));
    }
    check_size("cpuCores", body.cpu_cores, 256)?;
    check_size("memoryMb", body.memory_mb, 4 * 1024 * 1024)?;
    check_size("diskGb", body.disk_gb, 64 * 1024)?;
    let mut tx = state.db.begin().await?;
    let server_ok: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM servers WHERE id = $1 AND tenant_id = $2
                          AND deleted_at IS NULL)",
    )
    .bind(body.server_id)
    .bind(user.tenant_id)
    .fetch_one(&mut *tx)
    .await?;
    if !server_ok {
        return Err(ApiError::Unprocessable {
            message: "no such server in this tenant".into(),
            field: "serverId".into(),
        });
    }
    if let Some(domain) = body.domain_id {
        let ok: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM domains WHERE id = $1 AND tenant_id = $2)",
        )
        .bind(domain)
        .bind(user.tenant_id)
        .fetch_one(&mut *tx)
        .await?;
        if !ok {
            return Err(ApiError::Unprocessable {
                message: "no such domain in this tenant".into(),
                field: "domainId".into(),
            });
        }
    }
    let id: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO vps_instances (tenant_id, domain_id, server_id, name, cpu_cores, memory_mb,
                                    disk_gb)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (domain_id) DO NOTHING RETURNING id",
    )
    .bind(user.tenant_id)
    .bind(body.domain_id)
    .bind(body.server_id)
    .bind(name)
    .bind(body.cpu_cores)
    .bind(body.memory_mb)
    .bind(body.disk_gb)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(id) = id else {
        return Err(ApiError::Conflict("the domain already has a VPS".into()));
    };
    let job = queue(
        &mut tx,
        &state,
        &user,
        &client,
        id,
        body.server_id,
        "create",
    )
    .await?;
    tx.commit().await?;
    jobs::enqueue_after_commit(&state, &[job]).await;
    Ok((
        StatusCode::ACCEPTED,
        Json(VpsAccepted {
            job_id: job,
            vps_id: id,
            status: "PENDING".to_owned(),
        }),
    ))
}

/// Starts a VPS (PROVISION_VPS job, action `start`).
#[utoipa::path(post, path = "/{id}/start", tag = "vps", operation_id = "startVps", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The VPS instance's id")),
    responses((status = 202, description = "The job is queued", body = VpsAccepted), Errors))]
async fn start(
    State(state): State<AppState>,
    user: Require<perm::VpsPower>,
    client: ClientMeta,
    IdPath(id): IdPath,
) -> ApiResult<(StatusCode, Json<VpsAccepted>)> {
    action(&state, &user, &client, id, "start").await
}

/// Stops a VPS (PROVISION_VPS job, action `stop`).
#[utoipa::path(post, path = "/{id}/stop", tag = "vps", operation_id = "stopVps", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The VPS instance's id")),
    responses((status = 202, description = "The job is queued", body = VpsAccepted), Errors))]
async fn stop(
    State(state): State<AppState>,
    user: Require<perm::VpsPower>,
    client: ClientMeta,
    IdPath(id): IdPath,
) -> ApiResult<(StatusCode, Json<VpsAccepted>)> {
    action(&state, &user, &client, id, "stop").await
}

/// Reboots a VPS (PROVISION_VPS job, action `reboot`).
#[utoipa::path(post, path = "/{id}/reboot", tag = "vps", operation_id = "rebootVps", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The VPS instance's id")),
    responses((status = 202, description = "The job is queued", body = VpsAccepted), Errors))]
async fn reboot(
    State(state): State<AppState>,
    user: Require<perm::VpsPower>,
    client: ClientMeta,
    IdPath(id): IdPath,
) -> ApiResult<(StatusCode, Json<VpsAccepted>)> {
    action(&state, &user, &client, id, "reboot").await
}

/// Destroys a VPS (PROVISION_VPS job, action `destroy`).
#[utoipa::path(post, path = "/{id}/destroy", tag = "vps", operation_id = "destroyVps", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The VPS instance's id")),
    responses((status = 202, description = "The job is queued", body = VpsAccepted), Errors))]
async fn destroy(
    State(state): State<AppState>,
    user: Require<perm::VpsDestroy>,
    client: ClientMeta,
    IdPath(id): IdPath,
) -> ApiResult<(StatusCode, Json<VpsAccepted>)> {
    action(&state, &user, &client, id, "destroy").await
}

async fn action(
    state: &AppState,
    user: &CurrentUser,
    client: &ClientMeta,
    id: Uuid,
    what: &'static str,
) -> ApiResult<(StatusCode, Json<VpsAccepted>)> {
    let mut tx = state.db.begin().await?;
    let vps = find(&mut *tx, user.tenant_id, id).await?;
    if vps.status == VpsStatus::Terminated {
        return Err(ApiError::Conflict("the VPS is destroyed".into()));
    }
    let job = queue(&mut tx, state, user, client, id, vps.server_id, what).await?;
    tx.commit().await?;
    jobs::enqueue_after_commit(state, &[job]).await;
    Ok((
        StatusCode::ACCEPTED,
        Json(VpsAccepted {
            job_id: job,
            vps_id: id,
            status: "PENDING".to_owned(),
        }),
    ))
}

async fn queue(
    tx: &mut sqlx::PgConnection,
    state: &AppState,
    user: &CurrentUser,
    client: &ClientMeta,
    id: Uuid,
    server: Uuid,
    what: &'static str,
) -> ApiResult<Uuid> {
    let payload = super::job::VpsAction {
        vps_id: id,
        server_id: server,
        action: what.to_owned(),
        requested_by: user.id,
    };
    queue_job(
        tx,
        state,
        user,
        client,
        payload,
        &format!("vps.{what}"),
        json!({ "vpsId": id }),
    )
    .await
}
