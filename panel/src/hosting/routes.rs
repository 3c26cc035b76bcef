//! `/api/hosting/accounts` (spec §8.3): the tenant's hosting accounts. Every change is a Job
//! (spec §12.4): the routes check, queue and answer 202 with the job id; the job's result
//! updates the account.

use axum::{Json, extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use mpanel_protocol::{DomainName, PhpVersion};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::job;
use crate::domains;
use crate::http::openapi::{Errors, ListParams};
use crate::{
    app::AppState,
    auth::permissions::{Require, perm},
    http::{
        client::ClientMeta,
        error::{ApiError, ApiResult},
        extract::{ApiJson, IdPath},
        list::{ListQuery, Page, contains_pattern, fetch_page},
    },
    jobs,
    model::HostingStatus,
};
use crate::{http::job_action::queue_job, jobs::payload::JobPayload};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(detail))
        .routes(routes!(suspend))
        .routes(routes!(unsuspend))
        .routes(routes!(terminate))
        .routes(routes!(certificate))
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostingAccount {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub domain_id: Uuid,
    /// The domain's name.
    pub domain: String,
    /// The domain's customer, if it has one.
    pub customer_id: Option<Uuid>,
    pub server_id: Uuid,
    /// The account's Linux user on its server.
    pub system_user: String,
    pub home_dir: String,
    /// `8.3`; `null`: the server's default.
    pub php_version: Option<String>,
    pub status: HostingStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "h.id, h.tenant_id, h.domain_id, d.name AS domain, d.customer_id, \
     h.server_id, h.system_user, h.home_dir, h.php_version, h.status, h.created_at, h.updated_at";
const FROM: &str = "FROM hosting_accounts h JOIN domains d ON d.id = h.domain_id";

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct Filter {
    status: Option<HostingStatus>,
    server_id: Option<Uuid>,
    domain_id: Option<Uuid>,
    customer_id: Option<Uuid>,
    /// Part of the domain name.
    domain: Option<String>,
}

/// The tenant's hosting accounts, newest first. Sortable by createdAt, updatedAt, status,
/// domain, systemUser.
#[utoipa::path(get, path = "/accounts", tag = "hosting", operation_id = "listHostingAccounts", security(("bearer" = [])),
    params(ListParams, Filter),
    responses((status = 200, description = "A page of hosting accounts", body = Page<HostingAccount>), Errors))]
async fn list(
    State(state): State<AppState>,
    user: Require<perm::HostingRead>,
    query: ListQuery<Filter>,
) -> ApiResult<Json<Page<HostingAccount>>> {
    let order = query.sorting.order_by(
        &[
            ("createdAt", "h.created_at"),
            ("updatedAt", "h.updated_at"),
            ("status", "h.status"),
            ("domain", "d.name"),
            ("systemUser", "h.system_user"),
        ],
        "h.created_at",
    )?;
    let f = &query.filter;
    let domain_like = f.domain.as_deref().map(contains_pattern);
    const WHERE: &str = "h.tenant_id = $1 AND ($2::hosting_status IS NULL OR h.status = $2)
        AND ($3::uuid IS NULL OR h.server_id = $3) AND ($4::uuid IS NULL OR h.domain_id = $4)
        AND ($5::uuid IS NULL OR d.customer_id = $5) AND ($6::text IS NULL OR d.name LIKE $6)";
    let args = crate::pg_args![
        user.tenant_id,
        f.status,
        f.server_id,
        f.domain_id,
        f.customer_id,
        domain_like
    ];
    let from_where = format!("{FROM} WHERE {WHERE}");
    let page = fetch_page(&state.db, COLUMNS, &from_where, &order, query.window, args).await?;
    Ok(Json(page))
}

async fn find(
    db: impl sqlx::PgExecutor<'_>,
    tenant: Uuid,
    id: Uuid,
    lock: bool,
) -> ApiResult<HostingAccount> {
    let lock = if lock { " FOR UPDATE OF h" } else { "" };
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} {FROM} WHERE h.id = $1 AND h.tenant_id = $2{lock}"
    )))
    .bind(id)
    .bind(tenant)
    .fetch_optional(db)
    .await?
    .ok_or(ApiError::NotFound("hosting account"))
}

/// One hosting account of the tenant, with its HTTPS certificate's state.
#[utoipa::path(get, path = "/accounts/{id}", tag = "hosting", operation_id = "getHostingAccount", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The hosting account's id")),
    responses((status = 200, description = "The hosting account", body = HostingAccountDetail), Errors))]
async fn detail(
    State(state): State<AppState>,
    user: Require<perm::HostingRead>,
    IdPath(id): IdPath,
) -> ApiResult<Json<HostingAccountDetail>> {
    let account = find(&state.db, user.tenant_id, id, false).await?;
    let ssl = super::tls::state_of(&state.db, id).await?;
    Ok(Json(HostingAccountDetail { account, ssl }))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostingAccountDetail {
    #[serde(flatten)]
    pub account: HostingAccount,
    /// The site's HTTPS certificate; `null` when none was asked for.
    pub ssl: Option<super::tls::SslState>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CreateHostingAccount {
    /// The domain to host (added to the tenant when new).
    #[schema(format = Hostname)]
    domain: String,
    /// A customer of the tenant the domain belongs to.
    customer_id: Option<Uuid>,
    /// MAJOR.MINOR with a major version from 5 to 9, like `8.2`.
    php_version: Option<String>,
}

/// The answer of `POST /api/hosting/accounts`: the job creating the account, and the
/// account's domain.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct HostingAccountCreateAccepted {
    job_id: Uuid,
    domain_id: Uuid,
    /// `PENDING`.
    status: String,
}

/// The answer of the routes that queue a job on a hosting account.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct HostingAccountAccepted {
    job_id: Uuid,
    hosting_account_id: Uuid,
    /// `PENDING`.
    status: String,
}

/// A hosting account made by an operator (not from an order): the domain row if it is new,
/// then a PROVISION_HOSTING job placed like an order's.
#[utoipa::path(post, path = "/accounts", tag = "hosting", operation_id = "createHostingAccount", security(("bearer" = [])),
    request_body = CreateHostingAccount,
    responses((status = 202, description = "The PROVISION_HOSTING job is queued", body = HostingAccountCreateAccepted), Errors))]
async fn create(
    State(state): State<AppState>,
    user: Require<perm::HostingWrite>,
    client: ClientMeta,
    ApiJson(body): ApiJson<CreateHostingAccount>,
) -> ApiResult<(StatusCode, Json<HostingAccountCreateAccepted>)> {
    let domain =
        DomainName::parse(&body.domain).map_err(|e| ApiError::field("domain", e.to_string()))?;
    let php = body
        .php_version
        .as_deref()
        .map(PhpVersion::parse)
        .transpose()
        .map_err(|e| ApiError::field("phpVersion", e.to_string()))?;
    let mut tx = state.db.begin().await?;
    if let Some(customer) = body.customer_id {
        let known: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM customers WHERE id = $1 AND tenant_id = $2)",
        )
        .bind(customer)
        .bind(user.tenant_id)
        .fetch_one(&mut *tx)
        .await?;
        if !known {
            return Err(ApiError::Unprocessable {
                message: "no such customer in this tenant".into(),
                field: "customerId".into(),
            });
        }
    }
    let existing: Option<(Uuid, Uuid, Option<Uuid>)> =
        sqlx::query_as("SELECT id, tenant_id, customer_id FROM domains WHERE name = $1 FOR UPDATE")
            .bind(domain.as_str())
            .fetch_optional(&mut *tx)
            .await?;
    let domain_id = match existing {
        Some((_, tenant, _)) if tenant != user.tenant_id => {
            return Err(ApiError::Conflict(format!(
                "{domain} is registered elsewhere"
            )));
        }
        Some((_, _, Some(owner))) if body.customer_id.is_some_and(|c| c != owner) => {
            return Err(ApiError::Conflict(format!(
                "{domain} belongs to another customer"
            )));
        }
        Some((id, _, _)) => id,
        // A request adding the same new domain at the same moment wins; this one is a 409.
        None => domains::store::insert(&mut tx, user.tenant_id, body.customer_id, &domain, false)
            .await?
            .ok_or_else(|| ApiError::Conflict(format!("{domain} is being added right now")))?,
    };
    // The account row is written by the job: a create still queued counts as an account.
    let live: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM hosting_accounts
                         WHERE domain_id = $1 AND status <> 'TERMINATED')
             OR EXISTS (SELECT 1 FROM jobs
                         WHERE type = 'PROVISION_HOSTING' AND status IN ('PENDING', 'RUNNING')
                           AND domain_id = $1)",
    )
    .bind(domain_id)
    .fetch_one(&mut *tx)
    .await?;
    if live {
        return Err(ApiError::Conflict(format!(
            "{domain} already has a hosting account"
        )));
    }
    let payload = job::CreateHostingAccount {
        domain: domain.clone(),
        domain_id,
        php_version: php,
        requested_by: user.id,
    };
    let job = queue_job(
        &mut tx,
        &state,
        &user,
        &client,
        payload,
        "hosting.create",
        json!({ "domain": domain, "domainId": domain_id }),
    )
    .await?;
    tx.commit().await?;
    jobs::enqueue_after_commit(&state, &[job]).await;
    Ok((
        StatusCode::ACCEPTED,
        Json(HostingAccountCreateAccepted {
            job_id: job,
            domain_id,
            status: "PENDING".to_owned(),
        }),
    ))
}

/// Suspends a hosting account (SUSPEND_ACCOUNT job).
#[utoipa::path(post, path = "/accounts/{id}/suspend", tag = "hosting", operation_id = "suspendHostingAccount", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The hosting account's id")),
    responses((status = 202, description = "The job is queued", body = HostingAccountAccepted), Errors))]
async fn suspend(
    State(state): State<AppState>,
    user: Require<perm::HostingSuspend>,
    client: ClientMeta,
    IdPath(id): IdPath,
) -> ApiResult<(StatusCode, Json<HostingAccountAccepted>)> {
    account_job(&state, &user, &client, id, AccountJob::Suspend).await
}

/// Lifts a hosting account's suspension (UNSUSPEND_ACCOUNT job).
#[utoipa::path(post, path = "/accounts/{id}/unsuspend", tag = "hosting", operation_id = "unsuspendHostingAccount", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The hosting account's id")),
    responses((status = 202, description = "The job is queued", body = HostingAccountAccepted), Errors))]
async fn unsuspend(
    State(state): State<AppState>,
    user: Require<perm::HostingSuspend>,
    client: ClientMeta,
    IdPath(id): IdPath,
) -> ApiResult<(StatusCode, Json<HostingAccountAccepted>)> {
    account_job(&state, &user, &client, id, AccountJob::Unsuspend).await
}

/// Terminates a hosting account (TERMINATE_ACCOUNT job).
#[utoipa::path(post, path = "/accounts/{id}/terminate", tag = "hosting", operation_id = "terminateHostingAccount", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The hosting account's id")),
    responses((status = 202, description = "The job is queued", body = HostingAccountAccepted), Errors))]
async fn terminate(
    State(state): State<AppState>,
    user: Require<perm::HostingTerminate>,
    client: ClientMeta,
    IdPath(id): IdPath,
) -> ApiResult<(StatusCode, Json<HostingAccountAccepted>)> {
    account_job(&state, &user, &client, id, AccountJob::Terminate).await
}

/// Obtains a new HTTPS certificate for the site now (apex and www), through its web
/// agent's ACME directory; the site keeps serving its current one until the new one is
/// installed and verified. The result is the account's `ssl` (`GET /api/hosting/accounts/{id}`).
#[utoipa::path(post, path = "/accounts/{id}/certificate", tag = "hosting", operation_id = "issueHostingCertificate", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The hosting account's id")),
    responses((status = 202, description = "The job is queued", body = HostingAccountAccepted), Errors))]
async fn certificate(
    State(state): State<AppState>,
    user: Require<perm::HostingCertificates>,
    client: ClientMeta,
    IdPath(id): IdPath,
) -> ApiResult<(StatusCode, Json<HostingAccountAccepted>)> {
    account_job(&state, &user, &client, id, AccountJob::Certificate).await
}

/// What an account route queues.
#[derive(Clone, Copy)]
enum AccountJob {
    Suspend,
    Unsuspend,
    Terminate,
    Certificate,
}

/// Queues an account job: refused for a terminated account, or while another action on the
/// same account is still queued or running (they would race on the server).
async fn account_job(
    state: &AppState,
    user: &crate::auth::current::CurrentUser,
    client: &ClientMeta,
    id: Uuid,
    kind: AccountJob,
) -> ApiResult<(StatusCode, Json<HostingAccountAccepted>)> {
    let mut tx = state.db.begin().await?;
    let account = find(&mut *tx, user.tenant_id, id, true).await?;
    if account.status == HostingStatus::Terminated {
        return Err(ApiError::Conflict(
            "the hosting account is terminated".into(),
        ));
    }
    if account.status == HostingStatus::Pending {
        return Err(ApiError::Conflict(
            "the hosting account is still being provisioned".into(),
        ));
    }
    let busy: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE tenant_id = $1 AND hosting_account_id = $2
            AND status IN ('PENDING', 'RUNNING') LIMIT 1",
    )
    .bind(user.tenant_id)
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(job) = busy {
        return Err(ApiError::Conflict(format!(
            "another action on this account is in progress (job {job})"
        )));
    }
    let site = job::SiteRef {
        hosting_account_id: id,
        domain: DomainName::parse(&account.domain)
            .map_err(|e| anyhow::anyhow!("stored domain {:?}: {e}", account.domain))?,
        domain_id: account.domain_id,
        requested_by: user.id,
    };
    let (payload, action): (JobPayload, _) = match kind {
        AccountJob::Suspend => (job::SuspendSite(site).into(), "hosting.suspend"),
        AccountJob::Unsuspend => (job::UnsuspendSite(site).into(), "hosting.unsuspend"),
        AccountJob::Terminate => (job::TerminateSite(site).into(), "hosting.terminate"),
        AccountJob::Certificate => (
            super::tls::IssueSiteCertificate {
                hosting_account_id: site.hosting_account_id,
                domain: site.domain,
                domain_id: site.domain_id,
                requested_by: site.requested_by,
            }
            .into(),
            "hosting.certificate",
        ),
    };
    let details = json!({ "hostingAccountId": id, "domain": account.domain });
    let job = queue_job(&mut tx, state, user, client, payload, action, details).await?;
    tx.commit().await?;
    jobs::enqueue_after_commit(state, &[job]).await;
    Ok((
        StatusCode::ACCEPTED,
        Json(HostingAccountAccepted {
            job_id: job,
            hosting_account_id: id,
            status: "PENDING".to_owned(),
        }),
    ))
}
