//! PROVISION_HOSTING (placement on a web server, then `CreateSite`) and the account actions
//! SUSPEND_ACCOUNT, UNSUSPEND_ACCOUNT and TERMINATE_ACCOUNT, which go to the server that
//! holds the account.
//!
//! Placement: the tenant's active WEB server whose agent is online and that holds the fewest
//! live (not terminated) accounts. The HostingAccount row is written (PENDING) before the
//! command is sent, so a retried job goes back to the same server and the DNS job can point
//! the zone at it; it becomes ACTIVE with the user and home the agent reports.

use mpanel_protocol::{
    DomainName, PhpVersion, SystemUser,
    web::{self, CreateSite, SetSiteSuspended},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::jobs::agent::{db_error, run_on, set_job_server};
use crate::{
    app::AppState,
    auth::permissions::Action,
    domains,
    jobs::{
        dispatcher::{DispatchError, JobToRun},
        payload::{JobKind, JobRefs, SharedPayload, newtype_kind},
    },
    model::{HostingStatus, JobType},
    orders::jobs::order_kind,
};

/// The PHP version of sites whose plan names none.
pub const DEFAULT_PHP_VERSION: &str = "8.2";

fn permanent(message: impl Into<String>) -> DispatchError {
    DispatchError::Permanent(message.into())
}

#[derive(sqlx::FromRow)]
struct Account {
    server_id: Uuid,
    system_user: String,
    php_version: Option<String>,
    status: HostingStatus,
    domain: String,
    domain_id: Uuid,
}

const ACCOUNT: &str = "SELECT h.server_id, h.system_user, h.php_version, h.status,
        d.name AS domain, h.domain_id
   FROM hosting_accounts h JOIN domains d ON d.id = h.domain_id";

order_kind!(
    /// PROVISION_HOSTING for a paid order: the order's site, with the plan's PHP version.
    ProvisionOrderSite as ProvisionHosting,
    |state, job, order| {
        let (domain, domain_id) = order.domain()?;
        provision(state, job, domain, domain_id, order.limits.php_version.as_ref()).await
    },
);

/// PROVISION_HOSTING asked for by an operator (`POST /api/hosting/accounts`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateHostingAccount {
    pub domain: DomainName,
    pub domain_id: Uuid,
    pub php_version: Option<PhpVersion>,
    pub requested_by: Uuid,
}

impl JobKind for CreateHostingAccount {
    const TYPE: JobType = JobType::ProvisionHosting;

    fn requires(&self) -> Option<Action> {
        Some(Action::HostingWrite)
    }

    fn refs(&self) -> JobRefs {
        JobRefs::default().domain(self.domain_id)
    }

    async fn run(&self, state: &AppState, job: &JobToRun) -> Result<Value, DispatchError> {
        provision(
            state,
            job,
            &self.domain,
            self.domain_id,
            self.php_version.as_ref(),
        )
        .await
    }
}

/// The hosting account an action (suspend, unsuspend, terminate) is about.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SiteRef {
    pub hosting_account_id: Uuid,
    pub domain: DomainName,
    pub domain_id: Uuid,
    pub requested_by: Uuid,
}

impl SharedPayload for SiteRef {
    fn refs(&self) -> JobRefs {
        JobRefs::default()
            .domain(self.domain_id)
            .hosting_account(self.hosting_account_id)
    }
}

newtype_kind!(
    /// SUSPEND_ACCOUNT of a site: nginx serves the suspended page, PHP stops.
    SuspendSite(SiteRef) as SuspendAccount, requires HostingSuspend,
    |state, job, site| account_action(state, job, site.hosting_account_id, AccountAction::Suspend).await,
);
newtype_kind!(
    /// UNSUSPEND_ACCOUNT of a site: served again.
    UnsuspendSite(SiteRef) as UnsuspendAccount, requires HostingSuspend,
    |state, job, site| account_action(state, job, site.hosting_account_id, AccountAction::Unsuspend).await,
);
newtype_kind!(
    /// TERMINATE_ACCOUNT: the site archived and removed, its system user deleted.
    TerminateSite(SiteRef) as TerminateAccount, requires HostingTerminate,
    |state, job, site| account_action(state, job, site.hosting_account_id, AccountAction::Terminate).await,
);

async fn provision(
    state: &AppState,
    job: &JobToRun,
    domain: &DomainName,
    domain_id: Uuid,
    plan_php: Option<&PhpVersion>,
) -> Result<Value, DispatchError> {
    let existing: Option<Account> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{ACCOUNT} WHERE h.domain_id = $1"
    )))
    .bind(domain_id)
    .fetch_optional(&state.db)
    .await
    .map_err(db_error)?;
    let php = match plan_php {
        Some(v) => v.clone(),
        None => existing
            .as_ref()
            .and_then(|a| a.php_version.as_deref())
            .and_then(|v| PhpVersion::parse(v).ok())
            .unwrap_or_else(|| PhpVersion::parse(DEFAULT_PHP_VERSION).expect("valid")),
    };
    let live = existing
        .as_ref()
        .filter(|a| a.status != HostingStatus::Terminated);
    let server = match live {
        Some(a) => a.server_id,
        None => place(state, job.tenant_id).await?,
    };
    let user = match live {
        Some(a) => SystemUser::parse(&a.system_user)
            .map_err(|e| permanent(format!("the account's system user: {e}")))?,
        None => SystemUser::from_domain(domain),
    };
    let taken: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM hosting_accounts WHERE server_id = $1 AND system_user = $2
                          AND domain_id <> $3 AND status <> 'TERMINATED')",
    )
    .bind(server)
    .bind(user.as_str())
    .bind(domain_id)
    .fetch_one(&state.db)
    .await
    .map_err(db_error)?;
    if taken {
        return Err(permanent(format!(
            "the system user {user} is already used by another account on that server"
        )));
    }
    let home = format!("/home/{user}");
    let account_id: Uuid = sqlx::query_scalar(
        "INSERT INTO hosting_accounts (tenant_id, domain_id, server_id, system_user, home_dir,
                                       php_version, status)
         VALUES ($1, $2, $3, $4, $5, $6, 'PENDING')
         ON CONFLICT (domain_id) DO UPDATE
            SET server_id = EXCLUDED.server_id, system_user = EXCLUDED.system_user,
                php_version = EXCLUDED.php_version,
                status = CASE WHEN hosting_accounts.status = 'ACTIVE' THEN 'ACTIVE'::hosting_status
                              ELSE 'PENDING'::hosting_status END
          WHERE hosting_accounts.tenant_id = EXCLUDED.tenant_id
         RETURNING id",
    )
    .bind(job.tenant_id)
    .bind(domain_id)
    .bind(server)
    .bind(user.as_str())
    .bind(&home)
    .bind(php.as_str())
    .fetch_optional(&state.db)
    .await
    .map_err(db_error)?
    .ok_or_else(|| permanent("the domain's hosting account belongs to another tenant"))?;

    set_job_server(state, job.id, server).await?;
    let output = run_on(
        state,
        job,
        server,
        CreateSite {
            domain: domain.clone(),
            system_user: user.clone(),
            php_version: php.clone(),
        },
    )
    .await?;
    sqlx::query(
        "UPDATE hosting_accounts SET status = 'ACTIVE', system_user = $2, home_dir = $3
          WHERE id = $1",
    )
    .bind(account_id)
    .bind(output.system_user.as_str())
    .bind(&output.home_dir)
    .execute(&state.db)
    .await
    .map_err(db_error)?;
    // An order's domain goes live when all the order's jobs have succeeded (jobs::store); a
    // domain added with a hosting account by hand goes live with its site.
    if job.order_id.is_none() {
        let mut conn = state.db.acquire().await.map_err(db_error)?;
        domains::store::activate(&mut conn, domain_id)
            .await
            .map_err(db_error)?;
    }
    Ok(json!({
        "serverId": server,
        "hostingAccountId": account_id,
        "systemUser": output.system_user,
        "homeDir": output.home_dir,
        "documentRoot": output.document_root,
        "phpVersion": php,
        "changed": output.changed,
    }))
}

/// The tenant's active, online WEB server with the fewest live accounts.
async fn place(state: &AppState, tenant: Uuid) -> Result<Uuid, DispatchError> {
    let server: Option<Uuid> = sqlx::query_scalar(
        "SELECT s.id FROM servers s
          WHERE s.tenant_id = $1 AND s.role = 'WEB' AND s.is_active AND s.deleted_at IS NULL
            AND s.agent_online
          ORDER BY (SELECT count(*) FROM hosting_accounts h
                     WHERE h.server_id = s.id AND h.status <> 'TERMINATED'),
                   s.created_at, s.id
          LIMIT 1",
    )
    .bind(tenant)
    .fetch_optional(&state.db)
    .await
    .map_err(db_error)?;
    server.ok_or_else(|| {
        DispatchError::Retryable(
            "no active WEB server of this tenant has its agent online to place the site on".into(),
        )
    })
}

/// What an account job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AccountAction {
    Suspend,
    Unsuspend,
    Terminate,
}

/// Suspends, unsuspends or terminates the hosting account `id` as a step of `job` (an
/// account job's own, or a subscription's lifecycle job).
pub(crate) async fn account_action(
    state: &AppState,
    job: &JobToRun,
    id: Uuid,
    action: AccountAction,
) -> Result<Value, DispatchError> {
    let account: Account = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{ACCOUNT} WHERE h.id = $1 AND h.tenant_id = $2"
    )))
    .bind(id)
    .bind(job.tenant_id)
    .fetch_optional(&state.db)
    .await
    .map_err(db_error)?
    .ok_or_else(|| permanent("the hosting account no longer exists"))?;
    if account.status == HostingStatus::Terminated {
        if action == AccountAction::Terminate {
            return Ok(json!({ "hostingAccountId": id, "alreadyTerminated": true }));
        }
        return Err(permanent("the hosting account is terminated"));
    }
    let domain = DomainName::parse(&account.domain)
        .map_err(|e| permanent(format!("the account's domain: {e}")))?;
    let user = SystemUser::parse(&account.system_user)
        .map_err(|e| permanent(format!("the account's system user: {e}")))?;
    let php = account
        .php_version
        .as_deref()
        .and_then(|v| PhpVersion::parse(v).ok())
        .unwrap_or_else(|| PhpVersion::parse(DEFAULT_PHP_VERSION).expect("valid"));
    set_job_server(state, job.id, account.server_id).await?;
    let (status, result) = match action {
        AccountAction::Suspend | AccountAction::Unsuspend => {
            let suspended = action == AccountAction::Suspend;
            let out = run_on(
                state,
                job,
                account.server_id,
                SetSiteSuspended {
                    domain,
                    system_user: user,
                    php_version: php,
                    suspended,
                },
            )
            .await?;
            let status = if suspended {
                HostingStatus::Suspended
            } else {
                HostingStatus::Active
            };
            (
                status,
                json!({ "suspended": out.suspended, "changed": out.changed }),
            )
        }
        AccountAction::Terminate => {
            let out = run_on(
                state,
                job,
                account.server_id,
                web::TerminateSite {
                    domain,
                    system_user: user,
                    php_version: php,
                },
            )
            .await?;
            (
                HostingStatus::Terminated,
                json!({
                    "archive": out.archive,
                    "archiveBytes": out.archive_bytes,
                    "removed": out.removed,
                }),
            )
        }
    };
    let mut tx = state.db.begin().await.map_err(db_error)?;
    sqlx::query("UPDATE hosting_accounts SET status = $2 WHERE id = $1")
        .bind(id)
        .bind(status)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    if action == AccountAction::Terminate {
        super::tls::forget(&mut tx, id).await.map_err(db_error)?;
    }
    // The domain shows what its site does: suspended with it, live again with it.
    if action != AccountAction::Terminate {
        let suspended = action == AccountAction::Suspend;
        domains::store::follow_site(&mut tx, account.domain_id, suspended)
            .await
            .map_err(db_error)?;
    }
    tx.commit().await.map_err(db_error)?;
    let mut result = result;
    result["hostingAccountId"] = json!(id);
    result["serverId"] = json!(account.server_id);
    result["status"] = json!(status);
    Ok(result)
}
