//! `/api/domains`: the tenant's domains, each with its subscription and every resource on it
//! (hosting account, mailboxes, zone) in its own state — the one place that shows a
//! domain as a whole.

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
    model::{DomainStatus, HostingStatus, MailStatus, ServiceState, SubscriptionStatus},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(detail))
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Domain {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub customer_id: Option<Uuid>,
    pub name: String,
    pub status: DomainStatus,
    pub auto_dns: bool,
    pub auto_mail: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str =
    "id, tenant_id, customer_id, name, status, auto_dns, auto_mail, created_at, updated_at";

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct Filter {
    status: Option<DomainStatus>,
    customer_id: Option<Uuid>,
    /// Names containing this text.
    q: Option<String>,
}

/// The tenant's domains, newest first. Sortable by createdAt, name, status.
#[utoipa::path(get, path = "", tag = "domains", operation_id = "listDomains", security(("bearer" = [])),
    params(ListParams, Filter),
    responses((status = 200, description = "A page of domains", body = Page<Domain>), Errors))]
async fn list(
    State(state): State<AppState>,
    user: Require<perm::DomainsRead>,
    query: ListQuery<Filter>,
) -> ApiResult<Json<Page<Domain>>> {
    let order = query.sorting.order_by(
        &[
            ("createdAt", "created_at"),
            ("name", "name"),
            ("status", "status"),
        ],
        "created_at",
    )?;
    let f = &query.filter;
    if f.q.as_ref().is_some_and(|q| q.len() > 253) {
        return Err(ApiError::field("q", "at most 253 characters"));
    }
    const WHERE: &str = "tenant_id = $1 AND ($2::domain_status IS NULL OR status = $2)
        AND ($3::uuid IS NULL OR customer_id = $3)
        AND ($4::text IS NULL OR strpos(name, lower($4)) > 0)";
    let args = crate::pg_args![user.tenant_id, f.status, f.customer_id, f.q.clone()];
    let from_where = format!("FROM domains WHERE {WHERE}");
    let page = fetch_page(&state.db, COLUMNS, &from_where, &order, query.window, args).await?;
    Ok(Json(page))
}

/// A domain with its subscription and resources.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DomainDetail {
    #[serde(flatten)]
    pub domain: Domain,
    /// The domain's newest subscription, if any.
    pub subscription: Option<DomainSubscription>,
    #[serde(flatten)]
    pub resources: Resources,
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DomainSubscription {
    pub id: Uuid,
    pub status: SubscriptionStatus,
    /// What its resources should be.
    pub service_state: ServiceState,
    /// True while they are not there yet.
    pub pending: bool,
}

/// Every resource on a domain, each in its own state.
#[derive(Debug, Default, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    pub hosting_account: Option<HostingResource>,
    pub mailboxes: Vec<MailboxResource>,
    pub zone: Option<ZoneResource>,
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostingResource {
    pub id: Uuid,
    pub status: HostingStatus,
    pub server_id: Uuid,
    pub system_user: String,
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MailboxResource {
    pub id: Uuid,
    pub email: String,
    pub status: MailStatus,
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ZoneResource {
    pub id: Uuid,
    pub is_synced: bool,
    pub last_sync_at: Option<DateTime<Utc>>,
}

/// The resources on `domain` (of `tenant`).
pub async fn resources(db: &sqlx::PgPool, tenant: Uuid, domain: Uuid) -> ApiResult<Resources> {
    let hosting_account = sqlx::query_as(
        "SELECT id, status, server_id, system_user FROM hosting_accounts
          WHERE domain_id = $1 AND tenant_id = $2",
    )
    .bind(domain)
    .bind(tenant)
    .fetch_optional(db)
    .await?;
    let mailboxes = sqlx::query_as(
        "SELECT id, email, status FROM mail_accounts WHERE domain_id = $1 AND tenant_id = $2
          ORDER BY email",
    )
    .bind(domain)
    .bind(tenant)
    .fetch_all(db)
    .await?;
    let zone = sqlx::query_as(
        "SELECT id, is_synced, last_sync_at FROM dns_zones WHERE domain_id = $1 AND tenant_id = $2",
    )
    .bind(domain)
    .bind(tenant)
    .fetch_optional(db)
    .await?;
    Ok(Resources {
        hosting_account,
        mailboxes,
        zone,
    })
}

/// One domain, its subscription and every resource on it.
#[utoipa::path(get, path = "/{id}", tag = "domains", operation_id = "getDomain", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The domain's id")),
    responses((status = 200, description = "The domain", body = DomainDetail), Errors))]
async fn detail(
    State(state): State<AppState>,
    user: Require<perm::DomainsRead>,
    IdPath(id): IdPath,
) -> ApiResult<Json<DomainDetail>> {
    let domain: Domain = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM domains WHERE id = $1 AND tenant_id = $2"
    )))
    .bind(id)
    .bind(user.tenant_id)
    .fetch_optional(&state.db)
    .await?
    .ok_or(ApiError::NotFound("domain"))?;
    let subscription = sqlx::query_as(
        "SELECT id, status, service_state, desired_version <> applied_version AS pending
           FROM subscriptions WHERE domain_id = $1 AND tenant_id = $2
          ORDER BY created_at DESC LIMIT 1",
    )
    .bind(id)
    .bind(user.tenant_id)
    .fetch_optional(&state.db)
    .await?;
    let resources = resources(&state.db, user.tenant_id, id).await?;
    Ok(Json(DomainDetail {
        domain,
        subscription,
        resources,
    }))
}
