//! The fleet dispatcher: each job becomes the typed command for the right server's agent,
//! and the agent's result updates the resource rows (spec §7.2, the provisioning issue).
//!
//! - PROVISION_DNS → `SyncDnsZone` on the tenant's DNS server ([`dns`]);
//! - PROVISION_HOSTING → `CreateSite` on the WEB server chosen by placement ([`hosting`]);
//! - PROVISION_MAIL → `CreateMailbox` on the tenant's MAIL server ([`mail`]);
//! - SUSPEND / UNSUSPEND / TERMINATE_ACCOUNT → the server holding the hosting account;
//! - PROVISION_VPS → a permanent "unsupported" error: no agent role drives a hypervisor.
//!
//! Commands reach an agent only through the process whose fleet hub holds its connection:
//! a standalone `mpanel worker` has no hub, so fleet jobs it takes fail retryably ("agent
//! offline") and are retried — possibly by the panel's own worker. Routing commands between
//! processes is the multi-replica design note in `fleet::dispatch`.

mod backup;
pub mod dns;
pub mod hosting;
pub mod mail;

use std::time::Duration;

use mpanel_protocol::messages::{AgentCommand, Command, Outcome};
use uuid::Uuid;

use self::hosting::AccountAction;
use crate::{
    app::AppState,
    fleet::dispatch::DispatchError as FleetError,
    jobs::dispatcher::{DispatchError, DispatchFuture, Dispatcher, JobToRun},
    model::JobType,
};

/// How long one command may wait for its agent (to connect, and to answer).
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);

pub struct FleetDispatcher {
    state: AppState,
}

impl FleetDispatcher {
    pub fn new(state: AppState) -> FleetDispatcher {
        FleetDispatcher { state }
    }
}

impl Dispatcher for FleetDispatcher {
    fn dispatch<'a>(&'a self, job: &'a JobToRun) -> DispatchFuture<'a> {
        Box::pin(async move {
            match job.kind {
                JobType::ProvisionDns => dns::provision(&self.state, job).await,
                JobType::ProvisionHosting => hosting::provision(&self.state, job).await,
                JobType::ProvisionMail => mail::provision(&self.state, job).await,
                JobType::SuspendAccount if job.payload.get("mailAccountId").is_some() => {
                    mail::set_enabled(&self.state, job, false).await
                }
                JobType::UnsuspendAccount if job.payload.get("mailAccountId").is_some() => {
                    mail::set_enabled(&self.state, job, true).await
                }
                JobType::SuspendAccount => {
                    hosting::account_action(&self.state, job, AccountAction::Suspend).await
                }
                JobType::UnsuspendAccount => {
                    hosting::account_action(&self.state, job, AccountAction::Unsuspend).await
                }
                JobType::TerminateAccount => {
                    hosting::account_action(&self.state, job, AccountAction::Terminate).await
                }
                JobType::RunBackup => backup::run(&self.state, job).await,
                JobType::ProvisionVps => Err(DispatchError::Permanent(format!(
                    "unsupported: VPS '{}' needs a hypervisor and no mPanel agent role drives \
                     one yet; the server answers no VPS commands",
                    job.payload["action"].as_str().unwrap_or("create")
                ))),
                #[allow(unreachable_patterns)]
                other => Err(DispatchError::Retryable(format!(
                    "{other:?} has no agent executor on this panel yet"
                ))),
            }
        })
    }
}

/// Sends `command` to `server`'s agent and returns its typed output; transport problems and
/// the agent's own errors become retryable or permanent job failures.
async fn run_on<C>(state: &AppState, server: Uuid, command: C) -> Result<C::Output, DispatchError>
where
    C: AgentCommand,
    Command: From<C>,
{
    run_on_within(state, server, command, COMMAND_DEADLINE).await
}

/// [`run_on`] with its own deadline (backups run for hours, not seconds).
async fn run_on_within<C>(
    state: &AppState,
    server: Uuid,
    command: C,
    deadline: Duration,
) -> Result<C::Output, DispatchError>
where
    C: AgentCommand,
    Command: From<C>,
{
    let outcome = state
        .fleet
        .send(server, command, deadline)
        .await
        .map_err(|e| match e {
            FleetError::Offline => DispatchError::Retryable("the server's agent is offline".into()),
            other => DispatchError::Retryable(other.to_string()),
        })?;
    match &outcome {
        Outcome::Error {
            code,
            message,
            retryable,
        } => {
            let text = format!("{}: {}", code.as_str(), message.as_str());
            Err(if *retryable {
                DispatchError::Retryable(text)
            } else {
                DispatchError::Permanent(text)
            })
        }
        Outcome::Ok { .. } => outcome
            .output::<C>()
            .expect("an ok outcome has an output")
            .map_err(|e| {
                DispatchError::Permanent(format!("the agent's answer did not parse: {e}"))
            }),
    }
}

/// The first active server of `role` in the tenant, preferring one whose agent is online.
async fn pick_server(
    state: &AppState,
    tenant: Uuid,
    role: &str,
) -> Result<Option<(Uuid, String)>, DispatchError> {
    sqlx::query_as(
        "SELECT id, ip_address FROM servers
          WHERE tenant_id = $1 AND role = $2::server_role AND is_active AND deleted_at IS NULL
          ORDER BY agent_online DESC, created_at, id LIMIT 1",
    )
    .bind(tenant)
    .bind(role)
    .fetch_optional(&state.db)
    .await
    .map_err(db_error)
}

fn db_error(e: sqlx::Error) -> DispatchError {
    DispatchError::Retryable(format!("database: {e}"))
}

/// Records which server a job ran on (shown on the job).
async fn set_job_server(state: &AppState, job: Uuid, server: Uuid) -> Result<(), DispatchError> {
    sqlx::query("UPDATE jobs SET server_id = $2 WHERE id = $1")
        .bind(job)
        .bind(server)
        .execute(&state.db)
        .await
        .map_err(db_error)?;
    Ok(())
}
