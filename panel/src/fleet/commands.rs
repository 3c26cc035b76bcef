//! `agent_commands`, the durable half of fleet dispatch, and the only module that writes it.
//!
//! A command is written here before it is sent and carries the id the agent's journal knows
//! it by. Its row is how any panel process reaches any agent: the process that holds the
//! agent's connection sends waiting rows (told by a notification on [`CHANNEL`], or finding
//! them when the agent connects or on its periodic look), stores the outcome, and the
//! notification that follows wakes the sender wherever it runs. Envelope and outcome are
//! sealed with `CREDENTIALS_KEY`: commands carry password hashes and keys.
//!
//! Notifications are sent by PostgreSQL at commit, so a process told about a row always
//! finds it. Payloads: `cmd <server_id> <command_id>` (a command to send) and
//! `res <command_id>` (an outcome to collect); `close …` is the router's (revocation).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// The one channel of the fleet's notifications.
pub const CHANNEL: &str = "mpanel_fleet";

/// A command about to be sent.
pub struct NewCommand<'a> {
    pub id: Uuid,
    pub server_id: Uuid,
    /// The job and the step of its run that sends it; `None` for the API's own commands.
    pub job: Option<(Uuid, i32)>,
    pub kind: &'a str,
    pub hash: &'a [u8],
    pub sealed_envelope: Vec<u8>,
    pub sender: &'a str,
    pub deadline_at: DateTime<Utc>,
}

/// Records the command (or, reused by a later run of its job, takes it over: new sender,
/// new deadline) and tells every panel process that it waits.
pub async fn insert(db: &PgPool, c: NewCommand<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "WITH row AS (
             INSERT INTO agent_commands (id, server_id, job_id, step, kind, command_hash,
                                         envelope, sender, deadline_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (id) DO UPDATE
                SET sender = EXCLUDED.sender, deadline_at = EXCLUDED.deadline_at,
                    envelope = EXCLUDED.envelope
             RETURNING server_id, id)
         SELECT pg_notify($10, 'cmd ' || server_id || ' ' || id) FROM row",
    )
    .bind(c.id)
    .bind(c.server_id)
    .bind(c.job.map(|j| j.0))
    .bind(c.job.map(|j| j.1))
    .bind(c.kind)
    .bind(c.hash)
    .bind(c.sealed_envelope)
    .bind(c.sender)
    .bind(c.deadline_at)
    .bind(CHANNEL)
    .execute(db)
    .await?;
    Ok(())
}

/// What an earlier run of a job left for the same step and the same command.
pub enum Earlier {
    /// It succeeded: its sealed outcome.
    Done(Vec<u8>),
    /// It has no outcome yet (its sender died, or gave up at its deadline): send it again
    /// under this id, so the agent answers from its journal if it already acted.
    Waiting(Uuid),
}

/// The newest row of `job`'s `step` with this command, written within `window`, unless it
/// failed (a failure is retried under a new id).
pub async fn earlier(
    db: &PgPool,
    job: Uuid,
    step: i32,
    hash: &[u8],
    window: Duration,
) -> sqlx::Result<Option<Earlier>> {
    let row: Option<(Uuid, Option<Vec<u8>>, Option<bool>)> = sqlx::query_as(
        "SELECT id, outcome, outcome_ok FROM agent_commands
          WHERE job_id = $1 AND step = $2 AND command_hash = $3
            AND created_at > now() - make_interval(secs => $4)
            AND (completed_at IS NULL OR outcome_ok)
          ORDER BY created_at DESC LIMIT 1",
    )
    .bind(job)
    .bind(step)
    .bind(hash)
    .bind(window.as_secs_f64())
    .fetch_optional(db)
    .await?;
    Ok(row.map(|(id, outcome, ok)| match (outcome, ok) {
        (Some(outcome), Some(true)) => Earlier::Done(outcome),
        _ => Earlier::Waiting(id),
    }))
}

/// A command still waiting for its outcome.
#[derive(sqlx::FromRow)]
pub struct Waiting {
    pub id: Uuid,
    pub server_id: Uuid,
    pub envelope: Vec<u8>,
}

/// Every command of `server` (or of every server) still waiting, oldest first.
pub async fn waiting(db: &PgPool, server: Option<Uuid>) -> sqlx::Result<Vec<Waiting>> {
    sqlx::query_as(
        "SELECT id, server_id, envelope FROM agent_commands
          WHERE completed_at IS NULL AND deadline_at > now()
            AND ($1::uuid IS NULL OR server_id = $1)
          ORDER BY created_at",
    )
    .bind(server)
    .fetch_all(db)
    .await
}

/// One command, if it still waits.
pub async fn waiting_one(db: &PgPool, id: Uuid) -> sqlx::Result<Option<Waiting>> {
    sqlx::query_as(
        "SELECT id, server_id, envelope FROM agent_commands
          WHERE id = $1 AND completed_at IS NULL AND deadline_at > now()",
    )
    .bind(id)
    .fetch_optional(db)
    .await
}

pub async fn mark_delivered(db: &PgPool, ids: &[Uuid]) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE agent_commands SET delivered_at = now()
          WHERE id = ANY($1) AND completed_at IS NULL",
    )
    .bind(ids)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn mark_accepted(db: &PgPool, server: Uuid, id: Uuid) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE agent_commands SET accepted_at = now()
          WHERE id = $1 AND server_id = $2 AND accepted_at IS NULL",
    )
    .bind(id)
    .bind(server)
    .execute(db)
    .await?;
    Ok(())
}

/// Stores the agent's outcome (the first one wins) and wakes its sender; false when the
/// command is unknown, another server's, or already has one.
pub async fn complete(
    db: &PgPool,
    server: Uuid,
    id: Uuid,
    sealed_outcome: Vec<u8>,
    ok: bool,
) -> sqlx::Result<bool> {
    let done: Option<(Uuid,)> = sqlx::query_as(
        "WITH row AS (
             UPDATE agent_commands
                SET outcome = $3, outcome_ok = $4, completed_at = now(),
                    delivered_at = COALESCE(delivered_at, now())
              WHERE id = $1 AND server_id = $2 AND completed_at IS NULL
          RETURNING id)
         SELECT id FROM row, LATERAL (SELECT pg_notify($5, 'res ' || row.id)) n",
    )
    .bind(id)
    .bind(server)
    .bind(sealed_outcome)
    .bind(ok)
    .bind(CHANNEL)
    .fetch_optional(db)
    .await?;
    Ok(done.is_some())
}

/// The sealed outcomes of those of `ids` that have one.
pub async fn outcomes(db: &PgPool, ids: &[Uuid]) -> sqlx::Result<Vec<(Uuid, Vec<u8>)>> {
    sqlx::query_as(
        "SELECT id, outcome FROM agent_commands WHERE id = ANY($1) AND outcome IS NOT NULL",
    )
    .bind(ids)
    .fetch_all(db)
    .await
}

/// How far a command got: (delivered, accepted, sealed outcome).
pub async fn progress(
    db: &PgPool,
    id: Uuid,
) -> sqlx::Result<Option<(bool, bool, Option<Vec<u8>>)>> {
    sqlx::query_as(
        "SELECT delivered_at IS NOT NULL, accepted_at IS NOT NULL, outcome
           FROM agent_commands WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Deletes rows older than `age` that are finished or past their deadline.
pub async fn prune(db: impl sqlx::PgExecutor<'_>, age: Duration) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM agent_commands
          WHERE created_at < now() - make_interval(secs => $1)
            AND (completed_at IS NOT NULL OR deadline_at < now())",
    )
    .bind(age.as_secs_f64())
    .execute(db)
    .await?
    .rows_affected())
}
