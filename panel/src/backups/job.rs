//! RUN_BACKUP: one run of a BackupJob (spec §8.6) on the agent that holds its target.
//!
//! - CLIENT_SITE (target: a domain) → `BackupSite` to the server of the domain's live
//!   hosting account, for its system user;
//! - DATABASE (target: a domain, plus the database name) → `BackupDatabase` to the
//!   tenant's DB server;
//! - SYSTEM → a permanent error: those backups are made and reported by external scripts.
//!
//! The BackupJob is RUNNING while the command runs, then SUCCESS (with the archive's size,
//! SHA-256 and path) or FAILED (with the reason; the `last_size_bytes/sha256/path` of the
//! previous good archive are kept). Every finished attempt adds a `backup_runs` row. The
//! agent must serve the backup role (the panel records it as the STORAGE server role).

use std::time::Duration;

use mpanel_protocol::{
    SystemUser,
    backup::{BackupDatabase, BackupOutput, BackupSite, DatabaseName},
    messages::{AgentCommand, Command},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::jobs::agent::{db_error, pick_server, run_on_within, set_job_server};
use crate::{
    app::AppState,
    auth::permissions::Action,
    jobs::{
        dispatcher::{DispatchError, JobToRun},
        payload::{JobKind, JobRefs},
    },
    model::{BackupType, JobType},
};

/// How long the panel waits for a backup's result. The shared command deadline (a minute)
/// is far too short for archiving a big site; the agent's own limit is six hours.
const BACKUP_DEADLINE: Duration = Duration::from_secs(6 * 3600 + 300);

const SYSTEM_BACKUPS: &str =
    "system backups are reported by external scripts (POST /api/backups/report)";

fn permanent(message: impl Into<String>) -> DispatchError {
    DispatchError::Permanent(message.into())
}

#[derive(sqlx::FromRow)]
struct Definition {
    id: Uuid,
    kind: BackupType,
    target_id: Uuid,
    database_name: Option<String>,
}

/// RUN_BACKUP: one run of a backup definition on the backup agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunBackup {
    pub backup_job_id: Uuid,
    pub requested_by: Uuid,
}

impl JobKind for RunBackup {
    const TYPE: JobType = JobType::RunBackup;

    fn requires(&self) -> Option<Action> {
        Some(Action::BackupsRun)
    }

    fn refs(&self) -> JobRefs {
        JobRefs::default().backup_job(self.backup_job_id)
    }

    async fn run(&self, state: &AppState, job: &JobToRun) -> Result<Value, DispatchError> {
        run(state, job, self.backup_job_id).await
    }
}

async fn run(state: &AppState, job: &JobToRun, backup_id: Uuid) -> Result<Value, DispatchError> {
    let def: Definition = sqlx::query_as(
        "SELECT id, type AS kind, target_id, database_name FROM backup_jobs
          WHERE id = $1 AND tenant_id = $2",
    )
    .bind(backup_id)
    .bind(job.tenant_id)
    .fetch_optional(&state.db)
    .await
    .map_err(db_error)?
    .ok_or_else(|| permanent(format!("backup job {backup_id} does not exist")))?;

    sqlx::query("UPDATE backup_jobs SET status = 'RUNNING' WHERE id = $1")
        .bind(def.id)
        .execute(&state.db)
        .await
        .map_err(db_error)?;
    let mut server = None;
    let result = execute(state, job, &def, &mut server).await;
    match result {
        Ok(output) => record_success(state, job, &def, server, &output).await,
        Err(e) => {
            record_failure(state, job, &def, server, &e.to_string()).await?;
            Err(e)
        }
    }
}

async fn execute(
    state: &AppState,
    job: &JobToRun,
    def: &Definition,
    server: &mut Option<Uuid>,
) -> Result<BackupOutput, DispatchError> {
    match def.kind {
        BackupType::System => Err(permanent(SYSTEM_BACKUPS)),
        BackupType::ClientSite => {
            let account: Option<(Uuid, String)> = sqlx::query_as(
                "SELECT server_id, system_user FROM hosting_accounts
                  WHERE domain_id = $1 AND tenant_id = $2 AND status <> 'TERMINATED'",
            )
            .bind(def.target_id)
            .bind(job.tenant_id)
            .fetch_optional(&state.db)
            .await
            .map_err(db_error)?;
            let (on, user) = account.ok_or_else(|| {
                permanent("the target domain has no live hosting account to back up")
            })?;
            let user = SystemUser::parse(&user)
                .map_err(|e| permanent(format!("the hosting account's {e}")))?;
            *server = Some(on);
            let command = BackupSite {
                target_id: def.target_id,
                system_user: user,
            };
            send(state, job, on, command).await
        }
        BackupType::Database => {
            let name = def.database_name.as_deref().ok_or_else(|| {
                permanent("this DATABASE backup names no database; create it again with one")
            })?;
            let database =
                DatabaseName::parse(name).map_err(|e| permanent(format!("the backup's {e}")))?;
            let Some((on, _)) = pick_server(state, job.tenant_id, "DB").await? else {
                return Err(DispatchError::Retryable(
                    "this tenant has no active DB server".into(),
                ));
            };
            *server = Some(on);
            let command = BackupDatabase {
                target_id: def.target_id,
                database,
            };
            send(state, job, on, command).await
        }
    }
}

/// Sends a backup command to `server` once its agent is online and serves the backup role,
/// and waits up to [`BACKUP_DEADLINE`] for the result.
async fn send<C>(
    state: &AppState,
    job: &JobToRun,
    server: Uuid,
    command: C,
) -> Result<C::Output, DispatchError>
where
    C: AgentCommand,
    Command: From<C>,
{
    // Checked first so that an offline agent fails the attempt now (and it is retried
    // with backoff) instead of holding a worker for the whole backup deadline.
    let agent: Option<(bool, Option<bool>)> = sqlx::query_as(
        "SELECT s.agent_online, a.roles @> ARRAY['STORAGE']::server_role[]
           FROM servers s LEFT JOIN agents a ON a.server_id = s.id AND a.revoked_at IS NULL
          WHERE s.id = $1",
    )
    .bind(server)
    .fetch_optional(&state.db)
    .await
    .map_err(db_error)?;
    match agent {
        None => return Err(permanent("the target's server does not exist")),
        Some((false, _)) => {
            return Err(DispatchError::Retryable(
                "the server's agent is offline".into(),
            ));
        }
        Some((true, Some(false) | None)) => {
            return Err(permanent(
                "the server's agent does not serve the backup role \
                 (add \"backup\" to roles in its agent.toml)",
            ));
        }
        Some((true, Some(true))) => {}
    }
    set_job_server(state, job.id, server).await?;
    run_on_within(state, job, server, command, BACKUP_DEADLINE).await
}

async fn record_success(
    state: &AppState,
    job: &JobToRun,
    def: &Definition,
    server: Option<Uuid>,
    output: &BackupOutput,
) -> Result<Value, DispatchError> {
    let size = i64::try_from(output.size_bytes)
        .map_err(|_| permanent("the agent reported an impossible archive size"))?;
    let sha_ok = output.sha256.len() == 64
        && output
            .sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !sha_ok || output.path.is_empty() {
        let e = "the agent's answer has no valid sha256 or path";
        record_failure(state, job, def, server, e).await?;
        return Err(permanent(e));
    }
    let details = json!({
        "path": output.path,
        "sizeBytes": output.size_bytes,
        "sha256": output.sha256,
        "pruned": output.pruned,
        "jobId": job.id,
    });
    // The definition and its run in one statement: both or neither.
    sqlx::query(
        "WITH definition AS (
            UPDATE backup_jobs SET status = 'SUCCESS', last_run_at = now(), server_id = $4,
                   last_size_bytes = $5, last_sha256 = $6, last_path = $7, last_error = NULL,
                   details = $8
             WHERE id = $2 RETURNING id)
         INSERT INTO backup_runs (tenant_id, backup_job_id, job_id, server_id, source, status,
                                  size_bytes, sha256, path, details)
         SELECT $1, id, $3, $4, 'AGENT', 'SUCCESS', $5, $6, $7, $8 FROM definition",
    )
    .bind(job.tenant_id)
    .bind(def.id)
    .bind(job.id)
    .bind(server)
    .bind(size)
    .bind(&output.sha256)
    .bind(&output.path)
    .bind(&details)
    .execute(&state.db)
    .await
    .map_err(db_error)?;
    Ok(json!({
        "backupJobId": def.id,
        "serverId": server,
        "path": output.path,
        "sizeBytes": output.size_bytes,
        "sha256": output.sha256,
        "pruned": output.pruned,
    }))
}

async fn record_failure(
    state: &AppState,
    job: &JobToRun,
    def: &Definition,
    server: Option<Uuid>,
    error: &str,
) -> Result<(), DispatchError> {
    let details = json!({ "error": error, "jobId": job.id });
    sqlx::query(
        "WITH definition AS (
            UPDATE backup_jobs SET status = 'FAILED', last_run_at = now(),
                   server_id = coalesce($4, server_id), last_error = $5, details = $6
             WHERE id = $2 RETURNING id)
         INSERT INTO backup_runs (tenant_id, backup_job_id, job_id, server_id, source, status,
                                  error, details)
         SELECT $1, id, $3, $4, 'AGENT', 'FAILED', $5, $6 FROM definition",
    )
    .bind(job.tenant_id)
    .bind(def.id)
    .bind(job.id)
    .bind(server)
    .bind(error)
    .bind(&details)
    .execute(&state.db)
    .await
    .map_err(db_error)?;
    Ok(())
}
