-- Commands on their way to an agent, the durable half of fleet dispatch (fleet/commands.rs is
-- the only writer). A row is written before the command is sent; whichever panel process holds
-- the agent's connection sends it (and again, same id, after a reconnect) until its outcome is
-- stored or its deadline passes. The process waiting for it is `sender`.
CREATE TABLE agent_commands (
    id            uuid        PRIMARY KEY,
    server_id     uuid        NOT NULL REFERENCES servers (id) ON DELETE CASCADE,
    -- The job and the step within its run that sent it; NULL for API-only commands (ping).
    job_id        uuid        REFERENCES jobs (id) ON DELETE CASCADE,
    step          integer,
    kind          text        NOT NULL,
    -- SHA-256 of the command's JSON: a re-run of the job reuses the id only for the same command.
    command_hash  bytea       NOT NULL,
    -- The envelope and the outcome, sealed with CREDENTIALS_KEY (commands carry password hashes).
    envelope      bytea       NOT NULL,
    outcome       bytea,
    outcome_ok    boolean,
    sender        text        NOT NULL,
    deadline_at   timestamptz NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    delivered_at  timestamptz,
    accepted_at   timestamptz,
    completed_at  timestamptz
);

CREATE INDEX agent_commands_server ON agent_commands (server_id, created_at);
CREATE INDEX agent_commands_job_step ON agent_commands (job_id, step);
-- The periodic look of every panel process: the commands still waiting, whatever the server.
CREATE INDEX agent_commands_waiting ON agent_commands (created_at) WHERE completed_at IS NULL;
CREATE INDEX agent_commands_created ON agent_commands (created_at);
