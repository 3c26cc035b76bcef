//! What job executors share to reach the fleet: a typed command sent to a server's agent
//! (through `fleet::route`, from whichever process runs the job to whichever holds the
//! agent) in its turn at that server (`JOB_MAX_PER_SERVER` in flight per server and
//! process, `fleet::turns`), its outcome turned into a job result or a retryable /
//! permanent failure, and the choice of a tenant's server for a role.

use std::time::Duration;

use mpanel_protocol::messages::{AgentCommand, Command, Outcome};
use uuid::Uuid;

use super::dispatcher::{DispatchError, JobToRun};
use crate::{
    app::AppState,
    fleet::{
        dispatch::DispatchError as FleetError,
        route::{self, Origin},
        turns::Turn,
    },
};

/// How long one command may wait for its agent (to connect, and to answer).
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);

/// Sends `command` to `server`'s agent as the next step of `job` and returns its typed
/// output; transport problems and the agent's own errors become retryable or permanent job
/// failures.
pub async fn run_on<C>(
    state: &AppState,
    job: &JobToRun,
    server: Uuid,
    command: C,
) -> Result<C::Output, DispatchError>
where
    C: AgentCommand,
    Command: From<C>,
{
    run_on_within(state, job, server, command, COMMAND_DEADLINE).await
}

/// [`run_on`] with its own deadline (backups run for hours, not seconds).
pub async fn run_on_within<C>(
    state: &AppState,
    job: &JobToRun,
    server: Uuid,
    command: C,
    deadline: Duration,
) -> Result<C::Output, DispatchError>
where
    C: AgentCommand,
    Command: From<C>,
{
    let origin = Origin::Job {
        job_id: job.id,
        step: job.next_step(),
    };
    // Waiting for a turn and for the answer is not work of the panel's: away from the slot.
    let away = job.step_away();
    let sent = async {
        // The deadline is the agent's: it starts once the command has its turn.
        let _turn = take_turn(state, server).await;
        route::send(state, server, command.into(), deadline, origin).await
    }
    .await;
    away.back().await;
    let outcome = sent.map_err(|e| match e {
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

/// A turn to send to `server`: at most `JOB_MAX_PER_SERVER` of this process's commands are
/// in flight to one server at once; the others wait here, in order.
pub async fn take_turn(state: &AppState, server: Uuid) -> Turn {
    let cap = state.config.jobs.max_per_server;
    state.fleet.turns.take(server, cap).await
}

/// The first active server of `role` in the tenant, preferring one whose agent is online.
pub async fn pick_server(
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

pub fn db_error(e: sqlx::Error) -> DispatchError {
    DispatchError::Retryable(format!("database: {e}"))
}

/// Records which server a job runs on (shown on the job).
pub async fn set_job_server(
    state: &AppState,
    job: Uuid,
    server: Uuid,
) -> Result<(), DispatchError> {
    super::store::set_server(&state.db, job, server)
        .await
        .map_err(db_error)
}
