-- Durable e-mail: credentials waiting for an order's welcome e-mail, and an outbox of e-mails
-- that a sender loop delivers over SMTP (a panel restart loses nothing).
--
-- Nothing secret is stored in clear: `sealed` and `sealed_body` are nonce || XChaCha20-Poly1305
-- ciphertext under CREDENTIALS_KEY. A credential lives only until its order's welcome e-mail
-- is composed (then the row is deleted); a body only until it is sent (then set to NULL).

-- Secrets a provisioning job generated for an order (e.g. a mailbox password), kept sealed
-- until the order's welcome e-mail carries them to the customer.
CREATE TABLE order_credentials (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid        NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    order_id    uuid        NOT NULL REFERENCES orders (id) ON DELETE RESTRICT,
    -- What the secret opens: 'MAILBOX', ...
    kind        text        NOT NULL CHECK (kind ~ '^[A-Z][A-Z0-9_]*$'),
    -- Which one (e.g. the mailbox address); shown to the customer.
    label       text        NOT NULL,
    sealed      bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- A retried job replaces its credential instead of adding a second one.
    UNIQUE (order_id, kind, label)
);
CREATE INDEX order_credentials_tenant_id_idx ON order_credentials (tenant_id);

-- E-mails to send: PENDING until delivered (SENT) or given up on after repeated failures
-- (FAILED). dedupe_key makes queueing idempotent ('welcome:<orderId>',
-- 'job-failed:<jobId>:<attempts>').
CREATE TABLE outbound_emails (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid        NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    order_id     uuid        REFERENCES orders (id) ON DELETE RESTRICT,
    kind         text        NOT NULL CHECK (kind IN ('WELCOME', 'JOB_FAILED')),
    dedupe_key   text        NOT NULL UNIQUE,
    to_addresses text[]      NOT NULL CHECK (cardinality(to_addresses) > 0),
    subject      text        NOT NULL,
    -- NULL once sent: the body may carry credentials.
    sealed_body  bytea,
    status       text        NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'SENT', 'FAILED')),
    attempts     integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error   text,
    -- Earliest time of the next attempt (retry backoff).
    send_after   timestamptz NOT NULL DEFAULT now(),
    sent_at      timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (status <> 'PENDING' OR sealed_body IS NOT NULL)
);
CREATE INDEX outbound_emails_tenant_id_idx ON outbound_emails (tenant_id);
CREATE INDEX outbound_emails_order_id_idx ON outbound_emails (order_id);
-- What the sender loop polls for.
CREATE INDEX outbound_emails_due_idx ON outbound_emails (send_after) WHERE status = 'PENDING';

CREATE TRIGGER outbound_emails_set_updated_at BEFORE UPDATE ON outbound_emails
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
