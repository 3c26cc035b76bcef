-- Backups (spec §8.6): what the last run of a BackupJob produced, the database a DATABASE
-- backup dumps, the history of runs, and the RUN_BACKUP job type that runs one on an agent.
--
-- A BackupJob is a definition (what to back up) plus the state of its latest run. Runs come
-- from the panel (a RUN_BACKUP job sent to the agent with the backup role) or from external
-- scripts (POST /api/backups/report); each finished run adds one backup_runs row.

-- Not used below: a new enum value cannot be used in the transaction that adds it.
ALTER TYPE job_type ADD VALUE IF NOT EXISTS 'RUN_BACKUP';

-- The server the last run happened on.
ALTER TABLE backup_jobs ADD COLUMN server_id uuid REFERENCES servers (id) ON DELETE RESTRICT;
-- DATABASE backups: the database to dump (same rule as the agent's DatabaseName). The API
-- requires it for DATABASE rows; not a table constraint, so rows written before this
-- migration cannot fail the upgrade (such a row fails to run, with a clear error).
ALTER TABLE backup_jobs ADD COLUMN database_name text
    CHECK (database_name ~ '^[a-z_][a-z0-9_]{0,62}$');
-- The latest archive: its size, SHA-256 (lowercase hex) and path on its server.
ALTER TABLE backup_jobs ADD COLUMN last_size_bytes bigint CHECK (last_size_bytes >= 0);
ALTER TABLE backup_jobs ADD COLUMN last_sha256 text CHECK (last_sha256 ~ '^[0-9a-f]{64}$');
ALTER TABLE backup_jobs ADD COLUMN last_path text;
-- Why the latest run failed (NULL after a success).
ALTER TABLE backup_jobs ADD COLUMN last_error text;
-- The latest run's details as reported (agent output or a script's `details`).
ALTER TABLE backup_jobs ADD COLUMN details jsonb;

CREATE INDEX backup_jobs_server_id_idx ON backup_jobs (server_id);
-- One definition per target (and database): creating it again finds the existing one.
CREATE UNIQUE INDEX backup_jobs_tenant_id_type_target_key
    ON backup_jobs (tenant_id, type, target_id, coalesce(database_name, ''));

-- One row per finished run of a BackupJob; append-only history.
CREATE TABLE backup_runs (
    id            uuid          PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid          NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    backup_job_id uuid          NOT NULL REFERENCES backup_jobs (id) ON DELETE CASCADE,
    -- The RUN_BACKUP job that ran it; NULL for a run reported by a script.
    job_id        uuid          REFERENCES jobs (id) ON DELETE RESTRICT,
    server_id     uuid          REFERENCES servers (id) ON DELETE RESTRICT,
    source        text          NOT NULL CHECK (source IN ('AGENT', 'REPORT')),
    status        backup_status NOT NULL CHECK (status IN ('SUCCESS', 'FAILED')),
    size_bytes    bigint        CHECK (size_bytes >= 0),
    sha256        text          CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    path          text,
    error         text,
    details       jsonb,
    created_at    timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX backup_runs_tenant_id_idx ON backup_runs (tenant_id);
CREATE INDEX backup_runs_backup_job_id_created_at_idx ON backup_runs (backup_job_id, created_at);
CREATE INDEX backup_runs_job_id_idx ON backup_runs (job_id);
CREATE INDEX backup_runs_server_id_idx ON backup_runs (server_id);
