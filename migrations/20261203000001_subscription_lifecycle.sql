-- The subscription drives its resources (site, mailboxes, zone) through one lifecycle.
--
-- `status` stays the billing state of the spec (ACTIVE, PAST_DUE, CANCELLED …). Beside it,
-- `service_state` is what its resources should be (ACTIVE, SUSPENDED, TERMINATED) and why.
-- Every change of it bumps `desired_version` and queues one lifecycle job for that version;
-- the job that brings every resource there sets `applied_version`. A subscription whose
-- versions differ has work pending.
CREATE TYPE service_state AS ENUM ('ACTIVE', 'SUSPENDED', 'TERMINATED');
CREATE TYPE suspend_reason AS ENUM ('NON_PAYMENT', 'CANCELLED', 'OPERATOR');

ALTER TABLE subscriptions
    ADD COLUMN service_state          service_state  NOT NULL DEFAULT 'ACTIVE',
    ADD COLUMN suspend_reason         suspend_reason,
    ADD COLUMN service_changed_at     timestamptz,
    ADD COLUMN desired_version        integer        NOT NULL DEFAULT 0,
    ADD COLUMN applied_version        integer        NOT NULL DEFAULT 0,
    -- The lifecycle job of desired_version (the newest one queued).
    ADD COLUMN lifecycle_job_id       uuid           REFERENCES jobs (id) ON DELETE SET NULL,
    -- Unpaid since (the failed payment's event time); suspended for non-payment once
    -- suspend_after has passed, warned once warn_after has.
    ADD COLUMN past_due_since         timestamptz,
    ADD COLUMN warn_after             timestamptz,
    ADD COLUMN suspend_after          timestamptz,
    -- Cancelled: the resources are terminated once terminate_after has passed.
    ADD COLUMN terminate_after        timestamptz,
    ADD COLUMN terminated_at          timestamptz,
    -- The time of the newest billing event applied: an older one changes nothing.
    ADD COLUMN billing_event_at       timestamptz,
    ADD COLUMN stripe_subscription_id text;

CREATE UNIQUE INDEX subscriptions_stripe_subscription_id
    ON subscriptions (stripe_subscription_id) WHERE stripe_subscription_id IS NOT NULL;
-- What the lifecycle duty looks at: unpaid or cancelled subscriptions not yet terminated.
CREATE INDEX subscriptions_lifecycle_job_id_idx ON subscriptions (lifecycle_job_id);
CREATE INDEX subscriptions_lifecycle_due ON subscriptions (status)
    WHERE status IN ('PAST_DUE', 'CANCELLED') AND service_state <> 'TERMINATED';

-- Each tenant's lifecycle policy; a tenant without a row has the defaults.
CREATE TABLE subscription_policies (
    tenant_id                uuid        PRIMARY KEY REFERENCES tenants (id) ON DELETE RESTRICT,
    -- From the failed payment to the suspension (7 days).
    grace_period_secs        integer     NOT NULL DEFAULT 604800 CHECK (grace_period_secs >= 0),
    -- The "suspension coming" notice goes out this long before the suspension (2 days).
    warning_secs             integer     NOT NULL DEFAULT 172800 CHECK (warning_secs >= 0),
    -- From the cancellation to the termination (30 days).
    retention_secs           integer     NOT NULL DEFAULT 2592000 CHECK (retention_secs >= 0),
    -- Whether a terminated subscription's zone stays on the DNS servers.
    keep_zone_on_termination boolean     NOT NULL DEFAULT false,
    -- Per-notice overrides of the built-in e-mails: {"<notice>": {"subject", "body"}}.
    templates                jsonb       NOT NULL DEFAULT '{}'::jsonb,
    updated_at               timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER subscription_policies_set_updated_at BEFORE UPDATE ON subscription_policies
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- The customer notices of the lifecycle go through the durable outbox too.
ALTER TABLE outbound_emails DROP CONSTRAINT outbound_emails_kind_check;
ALTER TABLE outbound_emails ADD CONSTRAINT outbound_emails_kind_check
    CHECK (kind IN ('WELCOME', 'JOB_FAILED', 'PAYMENT_FAILED', 'SUSPENSION_COMING', 'SUSPENDED',
                    'TERMINATED'));
