//! The lifecycle jobs: SUSPEND_ACCOUNT, UNSUSPEND_ACCOUNT and TERMINATE_ACCOUNT of a whole
//! subscription, acting on every resource of its domain — the site, the mailboxes, the
//! zone — through the same steps as each resource's own job.
//!
//! Each step is idempotent: a resource already where the job leads is skipped, and a retried
//! job resends only what did not finish (the agents' commands are idempotent too). Before
//! each step the job checks that its version is still the newest (`service::is_current`):
//! one that is not ends at once, superseded, and the newer job carries on from there.
//! When the last step is done, the job's success marks its version applied and tells the
//! customer (`on_success`, in the transaction that records the success).

use mpanel_protocol::DomainName;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{policy, service};
use crate::{
    app::AppState,
    dns,
    hosting::job::{AccountAction, account_action},
    jobs::{
        agent::db_error,
        dispatcher::{DispatchError, JobToRun},
        payload::{JobKind, JobRefs},
    },
    mail,
    model::{HostingStatus, JobType, MailStatus, ServiceState},
    notify::{self, Notice},
};

/// Which wanted state of which subscription a lifecycle job brings about.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceChange {
    pub subscription_id: Uuid,
    pub domain_id: Option<Uuid>,
    /// The subscription's `desired_version` this job was queued for.
    pub version: i32,
}

macro_rules! lifecycle_kind {
    ($(#[$doc:meta])* $name:ident as $type:ident => $target:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub ServiceChange);

        impl JobKind for $name {
            const TYPE: JobType = JobType::$type;

            fn refs(&self) -> JobRefs {
                JobRefs::default()
                    .subscription(self.0.subscription_id)
                    .domain(self.0.domain_id)
            }

            async fn run(&self, state: &AppState, job: &JobToRun) -> Result<Value, DispatchError> {
                converge(state, job, &self.0, ServiceState::$target).await
            }

            async fn on_success(
                &self,
                tx: &mut PgConnection,
                state: &AppState,
                _job: &JobToRun,
            ) -> sqlx::Result<()> {
                finished(tx, state, &self.0).await
            }
        }
    };
}

lifecycle_kind!(
    /// The subscription's site suspended and mailboxes disabled; its zone kept.
    SuspendSubscription as SuspendAccount => Suspended
);
lifecycle_kind!(
    /// The subscription's site served and mailboxes enabled again.
    UnsuspendSubscription as UnsuspendAccount => Active
);
lifecycle_kind!(
    /// The subscription's site archived and removed, mailboxes disabled and deleted, its
    /// zone deleted from the DNS server (unless the tenant keeps zones).
    TerminateSubscription as TerminateAccount => Terminated
);

/// One resource's step, for the job's result.
fn step(kind: &str, id: Uuid, action: &str, result: Value) -> Value {
    json!({ "resource": kind, "id": id, "action": action, "result": result })
}

async fn converge(
    state: &AppState,
    job: &JobToRun,
    change: &ServiceChange,
    target: ServiceState,
) -> Result<Value, DispatchError> {
    let mut steps: Vec<Value> = Vec::new();
    let superseded = |steps: Vec<Value>| {
        Ok(
            json!({ "subscriptionId": change.subscription_id, "version": change.version,
                   "superseded": true, "steps": steps }),
        )
    };
    let current = |state: &AppState| {
        let db = state.db.clone();
        async move {
            service::is_current(&db, change.subscription_id, change.version)
                .await
                .map_err(db_error)
        }
    };
    if !current(state).await? {
        return superseded(steps);
    }
    // A resource still being provisioned would come up in its old state after this job.
    let provisioning: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM jobs j JOIN subscriptions s ON s.order_id = j.order_id
                         WHERE s.id = $1 AND j.status IN ('PENDING', 'RUNNING'))",
    )
    .bind(change.subscription_id)
    .fetch_one(&state.db)
    .await
    .map_err(db_error)?;
    if provisioning {
        return Err(DispatchError::Retryable(
            "the subscription's order is still being provisioned".into(),
        ));
    }
    let Some(domain_id) = change.domain_id else {
        return Ok(
            json!({ "subscriptionId": change.subscription_id, "version": change.version,
                          "state": target, "steps": steps }),
        );
    };

    let site: Option<(Uuid, HostingStatus)> = sqlx::query_as(
        "SELECT id, status FROM hosting_accounts WHERE domain_id = $1 AND tenant_id = $2",
    )
    .bind(domain_id)
    .bind(job.tenant_id)
    .fetch_optional(&state.db)
    .await
    .map_err(db_error)?;
    if let Some((id, status)) = site {
        let action = match (target, status) {
            (ServiceState::Suspended, HostingStatus::Active) => Some(AccountAction::Suspend),
            (ServiceState::Active, HostingStatus::Suspended) => Some(AccountAction::Unsuspend),
            (ServiceState::Terminated, s) if s != HostingStatus::Terminated => {
                Some(AccountAction::Terminate)
            }
            _ => None,
        };
        if let Some(action) = action {
            let result = account_action(state, job, id, action).await?;
            steps.push(step("site", id, &format!("{action:?}"), result));
        }
    }

    let mailboxes: Vec<(Uuid, MailStatus)> = sqlx::query_as(
        "SELECT id, status FROM mail_accounts WHERE domain_id = $1 AND tenant_id = $2
          ORDER BY email",
    )
    .bind(domain_id)
    .bind(job.tenant_id)
    .fetch_all(&state.db)
    .await
    .map_err(db_error)?;
    for (id, status) in mailboxes {
        if !current(state).await? {
            return superseded(steps);
        }
        let (action, result) = match (target, status) {
            (ServiceState::Suspended, MailStatus::Active) => (
                "disable",
                mail::job::set_enabled(state, job, id, false).await?,
            ),
            (ServiceState::Active, MailStatus::Disabled) => (
                "enable",
                mail::job::set_enabled(state, job, id, true).await?,
            ),
            (ServiceState::Terminated, _) => {
                ("delete", mail::job::delete_account(state, job, id).await?)
            }
            _ => continue,
        };
        steps.push(step("mailbox", id, action, result));
    }

    if target == ServiceState::Terminated {
        let policy = policy::of_tenant(&state.db, job.tenant_id)
            .await
            .map_err(db_error)?;
        let zone: Option<(Uuid, String)> = sqlx::query_as(
            "SELECT z.id, d.name FROM dns_zones z JOIN domains d ON d.id = z.domain_id
              WHERE z.domain_id = $1 AND z.tenant_id = $2",
        )
        .bind(domain_id)
        .bind(job.tenant_id)
        .fetch_optional(&state.db)
        .await
        .map_err(db_error)?;
        if let Some((id, name)) = zone.filter(|_| !policy.keep_zone_on_termination) {
            if !current(state).await? {
                return superseded(steps);
            }
            let name = DomainName::parse(&name)
                .map_err(|e| DispatchError::Permanent(format!("the zone's domain name: {e}")))?;
            let result = dns::job::delete_zone(state, job, id, &name).await?;
            steps.push(step("zone", id, "delete", result));
        }
    }
    Ok(
        json!({ "subscriptionId": change.subscription_id, "version": change.version,
               "state": target, "steps": steps }),
    )
}

/// The job's success: its version applied, the customer told (once per version: the
/// e-mail's dedupe key names it).
async fn finished(
    tx: &mut PgConnection,
    state: &AppState,
    change: &ServiceChange,
) -> sqlx::Result<()> {
    let Some(reached) = service::applied(tx, change.subscription_id, change.version).await? else {
        return Ok(());
    };
    let notice = match reached {
        ServiceState::Suspended => Notice::Suspended,
        ServiceState::Terminated => Notice::Terminated,
        ServiceState::Active => return Ok(()),
    };
    notify::queue_subscription_notice(
        tx,
        &state.sealer,
        &state.config,
        change.subscription_id,
        notice,
        &format!("v{}", change.version),
    )
    .await?;
    Ok(())
}
