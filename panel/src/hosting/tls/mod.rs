//! HTTPS of a hosting account: the job that has its web agent obtain, install and verify an
//! ACME certificate (`IssueCertificate`), and the only writer of `site_certificates`, where
//! the panel keeps what the agent reported (never the certificate's key, which stays on the
//! web server).
//!
//! An order's certificate is a step of the order (after its zone: the challenge is fetched
//! through the name); an operator re-issues one with `POST
//! /api/hosting/accounts/{id}/certificate`. A failed issuance leaves the site on HTTP, the
//! error in `lastError`; a site that already has a certificate keeps serving it. The order
//! does not wait for it: its certificate's job is optional (see `OrderStep::optional`), so
//! a failed one still completes the order, with an `http://` address in the welcome e-mail.
//!
//! Renewal is the agent's, without a panel round trip; what it reports of it ([`report`])
//! keeps the state here, and [`expiry`] warns the tenant's admins of a certificate about to
//! expire that could not be renewed.

pub mod expiry;
pub mod report;

use std::time::Duration;

use chrono::{DateTime, Utc};
use mpanel_protocol::{DomainName, PhpVersion, SystemUser, web::IssueCertificate};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use super::job::DEFAULT_PHP_VERSION;
use crate::{
    app::AppState,
    auth::permissions::Action,
    jobs::{
        agent::{db_error, run_on_within, set_job_server},
        dispatcher::{DispatchError, JobToRun},
        payload::{JobKind, JobRefs},
    },
    model::{HostingStatus, JobType},
    orders::jobs::order_kind,
};

/// An ACME order takes a few round trips to the CA and an HTTP fetch by it.
const ISSUE_DEADLINE: Duration = Duration::from_secs(300);

/// What the API shows of a site's certificate.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SslState {
    /// PENDING (not asked yet), ISSUING, ACTIVE (served) or FAILED (never obtained).
    pub status: String,
    pub issuer: Option<String>,
    /// Lowercase hex.
    pub serial: Option<String>,
    pub names: Vec<String>,
    pub not_before: Option<DateTime<Utc>>,
    pub not_after: Option<DateTime<Utc>>,
    /// When its agent renews it.
    pub renew_at: Option<DateTime<Utc>>,
    /// Why the last issuance or renewal failed (kept until one succeeds).
    pub last_error: Option<String>,
    /// Renewals by the agent that failed in a row (0 once one succeeds).
    pub renewal_failures: i32,
    /// When the agent tries to renew next, as it last reported.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When the agent recorded the state it last reported (its clock).
    pub reported_at: Option<DateTime<Utc>>,
    pub job_id: Option<Uuid>,
}

/// The account's certificate state, `None` when it never had one asked for.
pub async fn state_of(db: &PgPool, account: Uuid) -> sqlx::Result<Option<SslState>> {
    sqlx::query_as(
        "SELECT status, issuer, serial, names, not_before, not_after, renew_at, last_error,
                renewal_failures, next_attempt_at, reported_at, job_id
           FROM site_certificates WHERE hosting_account_id = $1",
    )
    .bind(account)
    .fetch_optional(db)
    .await
}

/// A terminated site's certificate is gone with it (its agent removed the files).
pub async fn forget(conn: &mut sqlx::PgConnection, account: Uuid) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM site_certificates WHERE hosting_account_id = $1")
        .bind(account)
        .execute(conn)
        .await?;
    Ok(())
}

order_kind!(
    /// The order's site certificate (apex and www), once its site and zone exist.
    ProvisionOrderCertificate as ProvisionHosting,
    |state, job, order| {
        let (_, domain_id) = order.domain()?;
        let account: Option<Uuid> = sqlx::query_scalar(
            "SELECT id FROM hosting_accounts WHERE domain_id = $1 AND tenant_id = $2",
        )
        .bind(domain_id)
        .bind(job.tenant_id)
        .fetch_optional(&state.db)
        .await
        .map_err(db_error)?;
        let account = account.ok_or_else(|| {
            DispatchError::Retryable("the order's site has no hosting account yet".into())
        })?;
        issue(state, job, account, false).await
    },
);

/// A certificate an operator asked for (`POST /api/hosting/accounts/{id}/certificate`):
/// always a new one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IssueSiteCertificate {
    pub hosting_account_id: Uuid,
    pub domain: DomainName,
    pub domain_id: Uuid,
    pub requested_by: Uuid,
}

impl JobKind for IssueSiteCertificate {
    const TYPE: JobType = JobType::ProvisionHosting;

    fn requires(&self) -> Option<Action> {
        Some(Action::HostingCertificates)
    }

    fn refs(&self) -> JobRefs {
        JobRefs::default()
            .domain(self.domain_id)
            .hosting_account(self.hosting_account_id)
    }

    async fn run(&self, state: &AppState, job: &JobToRun) -> Result<Value, DispatchError> {
        issue(state, job, self.hosting_account_id, true).await
    }
}

#[derive(sqlx::FromRow)]
struct Site {
    server_id: Uuid,
    system_user: String,
    php_version: Option<String>,
    status: HostingStatus,
    domain: String,
}

async fn issue(
    state: &AppState,
    job: &JobToRun,
    account: Uuid,
    force: bool,
) -> Result<Value, DispatchError> {
    let permanent = |m: String| DispatchError::Permanent(m);
    let site: Site = sqlx::query_as(
        "SELECT h.server_id, h.system_user, h.php_version, h.status, d.name AS domain
           FROM hosting_accounts h JOIN domains d ON d.id = h.domain_id
          WHERE h.id = $1 AND h.tenant_id = $2",
    )
    .bind(account)
    .bind(job.tenant_id)
    .fetch_optional(&state.db)
    .await
    .map_err(db_error)?
    .ok_or_else(|| permanent("the hosting account no longer exists".into()))?;
    match site.status {
        HostingStatus::Terminated => {
            return Err(permanent("the hosting account is terminated".into()));
        }
        HostingStatus::Pending => {
            return Err(DispatchError::Retryable(
                "the site is still being provisioned".into(),
            ));
        }
        HostingStatus::Active | HostingStatus::Suspended => {}
    }
    let command = IssueCertificate {
        domain: DomainName::parse(&site.domain)
            .map_err(|e| permanent(format!("the account's domain: {e}")))?,
        system_user: SystemUser::parse(&site.system_user)
            .map_err(|e| permanent(format!("the account's system user: {e}")))?,
        php_version: site
            .php_version
            .as_deref()
            .and_then(|v| PhpVersion::parse(v).ok())
            .unwrap_or_else(|| PhpVersion::parse(DEFAULT_PHP_VERSION).expect("valid")),
        force,
    };
    sqlx::query(
        "INSERT INTO site_certificates (tenant_id, hosting_account_id, status, job_id)
         VALUES ($1, $2, 'ISSUING', $3)
         ON CONFLICT (hosting_account_id) DO UPDATE
            SET status = CASE WHEN site_certificates.serial IS NULL THEN 'ISSUING'
                              ELSE site_certificates.status END,
                job_id = EXCLUDED.job_id",
    )
    .bind(job.tenant_id)
    .bind(account)
    .bind(job.id)
    .execute(&state.db)
    .await
    .map_err(db_error)?;
    set_job_server(state, job.id, site.server_id).await?;
    match run_on_within(state, job, site.server_id, command, ISSUE_DEADLINE).await {
        Ok(out) => {
            sqlx::query(
                "UPDATE site_certificates
                    SET status = 'ACTIVE', issuer = $2, serial = $3, names = $4, not_before = $5,
                        not_after = $6, renew_at = $7, last_error = NULL, renewal_failures = 0,
                        next_attempt_at = $7, reported_at = now()
                  WHERE hosting_account_id = $1",
            )
            .bind(account)
            .bind(&out.issuer)
            .bind(&out.serial)
            .bind(&out.names)
            .bind(out.not_before)
            .bind(out.not_after)
            .bind(out.renew_at)
            .execute(&state.db)
            .await
            .map_err(db_error)?;
            Ok(json!({
                "hostingAccountId": account, "serverId": site.server_id,
                "issuer": out.issuer, "serial": out.serial, "names": out.names,
                "notAfter": out.not_after, "renewAt": out.renew_at, "changed": out.changed,
            }))
        }
        Err(e) => {
            // A site that has a certificate keeps serving it; one that never had one stays
            // on HTTP. Either way the reason is shown.
            sqlx::query(
                "UPDATE site_certificates
                    SET status = CASE WHEN serial IS NULL THEN 'FAILED' ELSE 'ACTIVE' END,
                        last_error = $2
                  WHERE hosting_account_id = $1",
            )
            .bind(account)
            .bind(e.to_string())
            .execute(&state.db)
            .await
            .map_err(db_error)?;
            Err(e)
        }
    }
}
