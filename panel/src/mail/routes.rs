//! `/api/mail/accounts` (spec §8.5): the tenant's mailboxes on its MAIL server. Changes are
//! Jobs: 202 with the job id.
//!
//! Passwords: an operator may give one (at least 12 characters) or let the panel make one;
//! a made password is in the 202 answer and nowhere else. Only the argon2id hash travels on
//! (in the job, shown as `***` by the jobs API) to the mail server.

use axum::{Json, extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use mpanel_protocol::{EmailAddress, mail::QuotaMb};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::http::job_action::queue_job;
use crate::http::openapi::{Errors, ListParams};
use crate::{
    app::AppState,
    auth::{
        current::CurrentUser,
        password::check_strength,
        permissions::{Require, perm},
    },
    http::{
        client::ClientMeta,
        error::{ApiError, ApiResult},
        extract::{ApiJson, IdPath},
        list::{ListQuery, Page, contains_pattern, fetch_page},
    },
    jobs,
    jobs::payload::JobPayload,
    mail::job::{self, generate_password, hash_password},
    model::MailStatus,
};

pub fn router() -> OpenApiRouter<AppState> {
    // `reset-password`'s body is optional, so it is documented by reference (a type would make
    // it required, an `Option` would make it nullable); the schema is registered here.
    #[derive(utoipa::OpenApi)]
    #[openapi(components(schemas(ResetMailPassword)))]
    struct Schemas;
    OpenApiRouter::with_openapi(<Schemas as utoipa::OpenApi>::openapi())
        .routes(routes!(list, create))
        .routes(routes!(detail))
        .routes(routes!(disable))
        .routes(routes!(enable))
        .routes(routes!(reset_password))
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MailAccount {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub domain_id: Uuid,
    /// The domain's name.
    pub domain: String,
    #[schema(format = Email)]
    pub email: String,
    /// The mailbox's maildir on the mail server, once created.
    pub mailbox: Option<String>,
    pub status: MailStatus,
    /// In MiB; `null`: no quota.
    pub quota_mb: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "m.id, m.tenant_id, m.domain_id, d.name AS domain, m.email, m.mailbox, \
     m.status, m.quota_mb, m.created_at, m.updated_at";
const FROM: &str = "FROM mail_accounts m JOIN domains d ON d.id = m.domain_id";

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct Filter {
    status: Option<MailStatus>,
    domain_id: Option<Uuid>,
    /// Part of the address.
    email: Option<String>,
}

/// The tenant's mail accounts, newest first. Sortable by createdAt, updatedAt, email, status.
#[utoipa::path(get, path = "/accounts", tag = "mail", operation_id = "listMailAccounts", security(("bearer" = [])),
    params(ListParams, Filter),
    responses((status = 200, description = "A page of mail accounts", body = Page<MailAccount>), Errors))]
async fn list(
    State(state): State<AppState>,
    user: Require<perm::MailRead>,
    query: ListQuery<Filter>,
) -> ApiResult<Json<Page<MailAccount>>> {
    let order = query.sorting.order_by(
        &[
            ("createdAt", "m.created_at"),
            ("updatedAt", "m.updated_at"),
            ("email", "m.email"),
            ("status", "m.status"),
        ],
        "m.created_at",
    )?;
    let f = &query.filter;
    let like = f.email.as_deref().map(contains_pattern);
    const WHERE: &str = "m.tenant_id = $1 AND ($2::mail_status IS NULL OR m.status = $2)
        AND ($3::uuid IS NULL OR m.domain_id = $3) AND ($4::text IS NULL OR m.email LIKE $4)";
    let args = crate::pg_args![user.tenant_id, f.status, f.domain_id, like];
    let from_where = format!("{FROM} WHERE {WHERE}");
    let page = fetch_page(&state.db, COLUMNS, &from_where, &order, query.window, args).await?;
    Ok(Json(page))
}

async fn find(db: impl sqlx::PgExecutor<'_>, tenant: Uuid, id: Uuid) -> ApiResult<MailAccount> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} {FROM} WHERE m.id = $1 AND m.tenant_id = $2"
    )))
    .bind(id)
    .bind(tenant)
    .fetch_optional(db)
    .await?
    .ok_or(ApiError::NotFound("mail account"))
}

/// One mail account of the tenant.
#[utoipa::path(get, path = "/accounts/{id}", tag = "mail", operation_id = "getMailAccount", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The mail account's id")),
    responses((status = 200, description = "The mail account", body = MailAccount), Errors))]
async fn detail(
    State(state): State<AppState>,
    user: Require<perm::MailRead>,
    IdPath(id): IdPath,
) -> ApiResult<Json<MailAccount>> {
    Ok(Json(find(&state.db, user.tenant_id, id).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CreateMailAccount {
    /// The address; its domain must be a domain of the tenant.
    #[schema(value_type = String, format = Email)]
    email: EmailAddress,
    /// In MiB; absent or `null`: no quota.
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 1048576)]
    quota_mb: Option<QuotaMb>,
    /// At least 12 characters; absent or `null`: the panel makes one and answers it.
    #[schema(min_length = 12)]
    password: Option<String>,
}

/// The optional body of `reset-password`.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ResetMailPassword {
    /// At least 12 characters; absent or `null`: the panel makes one and answers it.
    #[schema(min_length = 12)]
    password: Option<String>,
}

/// The answer of the routes that queue a job on a mail account.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct MailAccountAccepted {
    job_id: Uuid,
    mail_account_id: Uuid,
    /// `PENDING`.
    status: String,
    /// The password the panel made (when none was given); shown this once only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, nullable = false)]
    password: Option<String>,
}

impl MailAccountAccepted {
    fn new(job: Uuid, id: Uuid, made: Option<Zeroizing<String>>) -> MailAccountAccepted {
        MailAccountAccepted {
            job_id: job,
            mail_account_id: id,
            status: "PENDING".to_owned(),
            password: made.map(|p| p.as_str().to_owned()),
        }
    }
}

/// The operator's password (checked) or a made one; the hash, and the made password to show.
async fn password_for(
    given: Option<String>,
) -> ApiResult<(
    mpanel_protocol::mail::PasswordHash,
    Option<Zeroizing<String>>,
)> {
    let (password, made) = match given {
        Some(p) => {
            check_strength(&p).map_err(|m| ApiError::field("password", m))?;
            (Zeroizing::new(p), false)
        }
        None => (generate_password(), true),
    };
    let hash = hash_password(password.clone())
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("{e}")))?;
    Ok((hash, made.then_some(password)))
}

/// A mailbox: the row now, the mailbox on the mail server by the queued PROVISION_MAIL job.
#[utoipa::path(post, path = "/accounts", tag = "mail", operation_id = "createMailAccount", security(("bearer" = [])),
    request_body = CreateMailAccount,
    responses((status = 202, description = "The row is made and the job queued", body = MailAccountAccepted), Errors))]
async fn create(
    State(state): State<AppState>,
    user: Require<perm::MailWrite>,
    client: ClientMeta,
    ApiJson(body): ApiJson<CreateMailAccount>,
) -> ApiResult<(StatusCode, Json<MailAccountAccepted>)> {
    let (hash, made) = password_for(body.password).await?;
    let mut tx = state.db.begin().await?;
    let domain_id: Uuid =
        sqlx::query_scalar("SELECT id FROM domains WHERE name = $1 AND tenant_id = $2")
            .bind(body.email.domain().as_str())
            .bind(user.tenant_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| ApiError::Unprocessable {
                message: format!("{} is not a domain of this tenant", body.email.domain()),
                field: "email".into(),
            })?;
    let id: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO mail_accounts (tenant_id, domain_id, email, status, quota_mb)
         VALUES ($1, $2, $3, 'PENDING', $4) ON CONFLICT (email) DO NOTHING RETURNING id",
    )
    .bind(user.tenant_id)
    .bind(domain_id)
    .bind(body.email.as_str())
    .bind(body.quota_mb.map(|q| i64::from(q.get())))
    .fetch_optional(&mut *tx)
    .await?;
    let Some(id) = id else {
        return Err(ApiError::Conflict(format!("{} already exists", body.email)));
    };
    let payload = job::CreateMailAccount(job::MailboxPassword {
        mailbox: job::MailboxRef {
            mail_account_id: id,
            email: body.email.clone(),
            domain_id,
            requested_by: user.id,
        },
        password_hash: hash,
    });
    let job = queue_job(
        &mut tx,
        &state,
        &user,
        &client,
        payload,
        "mail.create",
        json!({ "mailAccountId": id, "email": body.email }),
    )
    .await?;
    tx.commit().await?;
    jobs::enqueue_after_commit(&state, &[job]).await;
    Ok((
        StatusCode::ACCEPTED,
        Json(MailAccountAccepted::new(job, id, made)),
    ))
}

/// Disables a mailbox: it can no longer log in; its mail is kept.
#[utoipa::path(post, path = "/accounts/{id}/disable", tag = "mail", operation_id = "disableMailAccount", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The mail account's id")),
    responses((status = 202, description = "The job is queued", body = MailAccountAccepted), Errors))]
async fn disable(
    State(state): State<AppState>,
    user: Require<perm::MailManage>,
    client: ClientMeta,
    IdPath(id): IdPath,
) -> ApiResult<(StatusCode, Json<MailAccountAccepted>)> {
    account_job(&state, &user, &client, id, Action::Disable).await
}

/// Enables a disabled mailbox again.
#[utoipa::path(post, path = "/accounts/{id}/enable", tag = "mail", operation_id = "enableMailAccount", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The mail account's id")),
    responses((status = 202, description = "The job is queued", body = MailAccountAccepted), Errors))]
async fn enable(
    State(state): State<AppState>,
    user: Require<perm::MailManage>,
    client: ClientMeta,
    IdPath(id): IdPath,
) -> ApiResult<(StatusCode, Json<MailAccountAccepted>)> {
    account_job(&state, &user, &client, id, Action::Enable).await
}

/// A new password for a mailbox: the one given, or one the panel makes (in the answer).
#[utoipa::path(post, path = "/accounts/{id}/reset-password", tag = "mail", operation_id = "resetMailPassword", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The mail account's id")),
    request_body(
        content = ref("#/components/schemas/ResetMailPassword"),
        content_type = "application/json",
        description = "Optional: no body (or `{}`) lets the panel make the password",
    ),
    responses((status = 202, description = "The job is queued", body = MailAccountAccepted), Errors))]
async fn reset_password(
    State(state): State<AppState>,
    user: Require<perm::MailManage>,
    client: ClientMeta,
    IdPath(id): IdPath,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<MailAccountAccepted>)> {
    // The body is optional: no body (or `{}`) lets the panel make the password.
    let given = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<ResetMailPassword>(&body)
            .map_err(|e| ApiError::field("password", format!("the body is not valid: {e}")))?
            .password
    };
    account_job(&state, &user, &client, id, Action::Reset(given)).await
}

enum Action {
    Disable,
    Enable,
    Reset(Option<String>),
}

async fn account_job(
    state: &AppState,
    user: &CurrentUser,
    client: &ClientMeta,
    id: Uuid,
    action: Action,
) -> ApiResult<(StatusCode, Json<MailAccountAccepted>)> {
    let account = find(&state.db, user.tenant_id, id).await?;
    if account.status == MailStatus::Pending {
        return Err(ApiError::Conflict(
            "the mail account is still being created".into(),
        ));
    }
    let email = EmailAddress::parse(&account.email)
        .map_err(|e| anyhow::anyhow!("stored address {:?}: {e}", account.email))?;
    let mailbox = job::MailboxRef {
        mail_account_id: id,
        email,
        domain_id: account.domain_id,
        requested_by: user.id,
    };
    let mut made = None;
    let (payload, audit_action): (JobPayload, _) = match action {
        Action::Disable => (job::DisableMailbox(mailbox).into(), "mail.disable"),
        Action::Enable => (job::EnableMailbox(mailbox).into(), "mail.enable"),
        Action::Reset(given) => {
            let (hash, generated) = password_for(given).await?;
            made = generated;
            let reset = job::ResetMailPassword(job::MailboxPassword {
                mailbox,
                password_hash: hash,
            });
            (reset.into(), "mail.reset_password")
        }
    };
    let mut tx = state.db.begin().await?;
    let details = json!({ "mailAccountId": id, "email": account.email });
    let job = queue_job(&mut tx, state, user, client, payload, audit_action, details).await?;
    tx.commit().await?;
    jobs::enqueue_after_commit(state, &[job]).await;
    Ok((
        StatusCode::ACCEPTED,
        Json(MailAccountAccepted::new(job, id, made)),
    ))
}
