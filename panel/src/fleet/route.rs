//! Sending a command to a server's agent from any panel process: [`send`].
//!
//! **Why PostgreSQL carries it** (and not a Redis stream per replica): a command that must
//! survive the death of its sender and of the replica holding the agent has to be in
//! PostgreSQL anyway, and a notification raised in the same statement as the row reaches
//! every process only once the row is visible — there is no window where one exists without
//! the other. Redis stays out of the command path, so a Redis outage (which only delays the
//! job queue) never stops a command. The cost is a broadcast: every process hears of every
//! command and ignores those for agents it does not hold, which is nothing at the rates of
//! a hosting panel and a handful of replicas.
//!
//! The path of one command:
//! 1. The sender writes the row (`agent_commands`, sealed) — unless it is an API command
//!    (ping) to an agent connected to this very process, which stays in memory.
//! 2. It writes the command to the agent's connection if that is here; otherwise the process
//!    holding the agent is told (`cmd …`) and writes it. An agent connecting anywhere is sent
//!    every row waiting for it; a periodic look repairs missed notifications.
//! 3. The holder stores the outcome (`res …`); the sender, told or looking, reads it.
//!
//! A job's commands are numbered by step within its run: a later run of the same job (its
//! worker died, or gave up at the deadline) finds the row of the same step and the same
//! command and reuses its id — so the agent answers from its journal instead of acting
//! again — or, when that one already succeeded, its outcome without sending anything.

use std::time::Duration;

use chrono::Utc;
use mpanel_protocol::messages::{Command, CommandEnvelope, Outcome};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{
    commands::{self, Earlier, NewCommand},
    dispatch::DispatchError,
};
use crate::app::AppState;

/// An earlier run's command is reused for this long after it was first written.
pub const REUSE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Who sends: a job's step (durable, reusable by a later run) or the API (ping).
#[derive(Debug, Clone, Copy)]
pub enum Origin {
    Api,
    Job { job_id: Uuid, step: i32 },
}

/// Sends `command` to `server_id`'s agent, wherever it is connected, and waits for its
/// outcome until `deadline`. An agent that is offline has until then to connect to any
/// panel process.
pub async fn send(
    state: &AppState,
    server_id: Uuid,
    command: Command,
    deadline: Duration,
    origin: Origin,
) -> Result<Outcome, DispatchError> {
    let kind = command.kind();
    let started = std::time::Instant::now();
    let result = send_inner(state, server_id, command, deadline, origin).await;
    let outcome = match &result {
        Ok(Outcome::Ok { .. }) => "ok",
        Ok(Outcome::Error { .. }) => "error",
        Err(DispatchError::Offline) => "offline",
        Err(DispatchError::Timeout { .. }) => "timeout",
        Err(DispatchError::Database(_)) => "unrecorded",
        Err(DispatchError::Shutdown) => "shutdown",
    };
    state.metrics.command(kind, outcome, started.elapsed());
    result
}

async fn send_inner(
    state: &AppState,
    server_id: Uuid,
    command: Command,
    deadline: Duration,
    origin: Origin,
) -> Result<Outcome, DispatchError> {
    let fleet = &state.fleet;
    let json = serde_json::to_vec(&command)
        .map_err(|e| DispatchError::Database(format!("encode the command: {e}")))?;
    let hash = Sha256::digest(&json);
    let mut command_id = Uuid::new_v4();
    if let Origin::Job { job_id, step } = origin {
        match commands::earlier(&state.db, job_id, step, &hash, REUSE_WINDOW)
            .await
            .map_err(db)?
        {
            Some(Earlier::Done(sealed)) => {
                tracing::info!(%server_id, step, "the command already succeeded in an earlier run");
                return open_outcome(state, &sealed);
            }
            Some(Earlier::Waiting(id)) => {
                tracing::info!(%server_id, %id, step, "sending again the command of an earlier run");
                command_id = id;
            }
            None => {}
        }
    }
    let envelope = CommandEnvelope {
        command_id,
        issued_at: Utc::now(),
        deadline_secs: u32::try_from(deadline.as_secs().max(1)).unwrap_or(u32::MAX),
        command,
    };
    let durable = matches!(origin, Origin::Job { .. }) || !fleet.is_connected(server_id);
    let (guard, rx) = fleet.wait_for(server_id, command_id, (!durable).then(|| envelope.clone()));
    if durable {
        let sealed = serde_json::to_vec(&envelope)
            .map(|bytes| state.sealer.seal(&bytes))
            .map_err(|e| DispatchError::Database(format!("encode the envelope: {e}")))?;
        let deadline_at =
            Utc::now() + chrono::Duration::from_std(deadline).unwrap_or(chrono::Duration::MAX);
        commands::insert(
            &state.db,
            NewCommand {
                id: command_id,
                server_id,
                job: match origin {
                    Origin::Job { job_id, step } => Some((job_id, step)),
                    Origin::Api => None,
                },
                kind: envelope.command.kind(),
                hash: &hash,
                sealed_envelope: sealed,
                sender: &fleet.replica,
                deadline_at,
            },
        )
        .await
        .map_err(db)?;
    }
    if fleet.deliver(server_id, &envelope) {
        tracing::debug!(%server_id, %command_id, "command sent to the agent");
        if durable {
            let db_pool = state.db.clone();
            tokio::spawn(async move {
                let _ = commands::mark_delivered(&db_pool, &[command_id]).await;
            });
        }
    } else {
        // Not connected here: connected elsewhere (that process sends it) or not at all.
        tracing::info!(%server_id, %command_id, "command waiting for the agent to connect (here or to another panel process)");
    }
    let result = tokio::time::timeout(deadline, rx).await;
    let (sent_here, accepted_here) = guard.finish();
    match result {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(_)) => Err(DispatchError::Shutdown),
        Err(_) if !durable => Err(if sent_here {
            DispatchError::Timeout {
                delivered: true,
                accepted: accepted_here,
            }
        } else {
            DispatchError::Offline
        }),
        Err(_) => {
            // A last look: the outcome may have landed while its notification was missed.
            match commands::progress(&state.db, command_id)
                .await
                .map_err(db)?
            {
                Some((_, _, Some(sealed))) => open_outcome(state, &sealed),
                Some((delivered, accepted, None)) if delivered || sent_here => {
                    Err(DispatchError::Timeout {
                        delivered: true,
                        accepted: accepted || accepted_here,
                    })
                }
                _ => Err(DispatchError::Offline),
            }
        }
    }
}

fn db(e: sqlx::Error) -> DispatchError {
    DispatchError::Database(e.to_string())
}

/// An outcome stored by another process; one that does not open (another `CREDENTIALS_KEY`)
/// is a clear error, not a silent loss.
pub fn open_outcome(state: &AppState, sealed: &[u8]) -> Result<Outcome, DispatchError> {
    let bytes = state.sealer.open(sealed).map_err(|_| {
        DispatchError::Database(
            "a stored outcome does not open: the panel processes must share CREDENTIALS_KEY".into(),
        )
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| DispatchError::Database(format!("a stored outcome does not parse: {e}")))
}

/// A stored envelope, for the process that writes it to the agent.
pub fn open_envelope(state: &AppState, sealed: &[u8]) -> Result<CommandEnvelope, String> {
    let bytes = state.sealer.open(sealed).map_err(|_| {
        "a stored command does not open: the panel processes must share CREDENTIALS_KEY".to_owned()
    })?;
    serde_json::from_slice(&bytes).map_err(|e| format!("a stored command does not parse: {e}"))
}
