-- mPanel initial schema: every model of the spec (§5), plus the tables the flows need
-- (agents and their certificates, enrollment tokens, refresh sessions, job logs, webhook events,
-- server metrics, DNS records).
--
-- Conventions: uuid ids from gen_random_uuid(); snake_case names; PostgreSQL enums for the
-- spec's enums; every table with updated_at keeps it current through set_updated_at().
-- Foreign keys RESTRICT deletes (business rows are soft-deleted through is_active, status or
-- deleted_at); only pure log/history children CASCADE with their parent.
-- sqlx runs this file inside one transaction.

-- ---------------------------------------------------------------------------------------------
-- Enums (values and order exactly as in the spec)
-- ---------------------------------------------------------------------------------------------

CREATE TYPE user_role AS ENUM ('SUPER_ADMIN', 'ADMIN', 'SUPPORT', 'BILLING', 'READ_ONLY');
CREATE TYPE server_role AS ENUM ('WEB', 'MAIL', 'DNS', 'PANEL', 'DB', 'STORAGE');
CREATE TYPE product_type AS ENUM ('SHARED_HOSTING', 'VPS', 'EMAIL', 'DNS', 'STORAGE');
CREATE TYPE order_status AS ENUM ('PENDING', 'PAID', 'FAILED', 'CANCELLED', 'REFUNDED');
CREATE TYPE subscription_status AS ENUM ('ACTIVE', 'PAST_DUE', 'CANCELLED', 'TRIALING', 'INACTIVE');
CREATE TYPE domain_status AS ENUM ('ACTIVE', 'SUSPENDED', 'PENDING_SETUP', 'PENDING_TRANSFER');
CREATE TYPE hosting_status AS ENUM ('ACTIVE', 'SUSPENDED', 'TERMINATED', 'PENDING');
CREATE TYPE vps_status AS ENUM ('PENDING', 'RUNNING', 'STOPPED', 'SUSPENDED', 'TERMINATED');
CREATE TYPE mail_status AS ENUM ('ACTIVE', 'DISABLED', 'PENDING');
CREATE TYPE backup_type AS ENUM ('SYSTEM', 'CLIENT_SITE', 'DATABASE');
CREATE TYPE backup_status AS ENUM ('PENDING', 'RUNNING', 'SUCCESS', 'FAILED');
CREATE TYPE job_type AS ENUM (
    'PROVISION_HOSTING',
    'PROVISION_DNS',
    'PROVISION_MAIL',
    'PROVISION_VPS',
    'SUSPEND_ACCOUNT',
    'UNSUSPEND_ACCOUNT',
    'TERMINATE_ACCOUNT'
);
CREATE TYPE job_status AS ENUM ('PENDING', 'RUNNING', 'SUCCESS', 'FAILED');

-- ---------------------------------------------------------------------------------------------
-- updated_at maintenance: one function, one BEFORE UPDATE trigger per table that has the column
-- ---------------------------------------------------------------------------------------------

CREATE FUNCTION set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at = now();
    RETURN NEW;
END;
$$;

-- ---------------------------------------------------------------------------------------------
-- Spec models (§5)
-- ---------------------------------------------------------------------------------------------

-- Organisations using the panel (MigraHosting, future white-label clients).
CREATE TABLE tenants (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text        NOT NULL,
    slug        text        NOT NULL UNIQUE,
    is_active   boolean     NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Operators who log in to the admin API; each belongs to one tenant.
CREATE TABLE users (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id      uuid        NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    email          text        NOT NULL UNIQUE CHECK (email = lower(email)),
    password_hash  text        NOT NULL,
    display_name   text        NOT NULL,
    role           user_role   NOT NULL DEFAULT 'ADMIN',
    is_active      boolean     NOT NULL DEFAULT true,
    last_login_at  timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX users_tenant_id_idx ON users (tenant_id);

-- Machines of the fleet (srv1, dns-core, mail-core, ...); each runs one agent.
CREATE TABLE servers (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid        NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    name          text        NOT NULL,
    role          server_role NOT NULL,
    ip_address    text        NOT NULL,
    internal_ip   text,
    location      text,
    is_active     boolean     NOT NULL DEFAULT true,
    agent_online  boolean     NOT NULL DEFAULT false,
    agent_version text,
    last_seen_at  timestamptz,
    deleted_at    timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX servers_tenant_id_idx ON servers (tenant_id);

-- General offerings (Shared Hosting, VPS, Email Only, DNS Only).
CREATE TABLE products (
    id          uuid         PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid         NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    name        text         NOT NULL,
    slug        text         NOT NULL UNIQUE,
    type        product_type NOT NULL,
    description text,
    is_active   boolean      NOT NULL DEFAULT true,
    created_at  timestamptz  NOT NULL DEFAULT now(),
    updated_at  timestamptz  NOT NULL DEFAULT now()
);
CREATE INDEX products_tenant_id_idx ON products (tenant_id);

-- Priced variants of a product (Starter / Pro / Business) with their limits.
CREATE TABLE plans (
    id                  uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id           uuid        NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    product_id          uuid        NOT NULL REFERENCES products (id) ON DELETE RESTRICT,
    name                text        NOT NULL,
    slug                text        NOT NULL,
    price_monthly_cents integer     NOT NULL CHECK (price_monthly_cents >= 0),
    price_yearly_cents  integer     NOT NULL CHECK (price_yearly_cents >= 0),
    currency            text        NOT NULL DEFAULT 'usd' CHECK (currency ~ '^[a-z]{3}$'),
    is_popular          boolean     NOT NULL DEFAULT false,
    is_active           boolean     NOT NULL DEFAULT true,
    limits_json         jsonb,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, slug)
);
-- tenant_id lookups use the (tenant_id, slug) unique index.
CREATE INDEX plans_product_id_idx ON plans (product_id);

-- Buyers of plans, created or found when a paid order arrives.
CREATE TABLE customers (
    id                 uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id          uuid        NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    email              text        NOT NULL CHECK (email = lower(email)),
    full_name          text,
    phone              text,
    stripe_customer_id text,
    is_active          boolean     NOT NULL DEFAULT true,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, email)
);
-- tenant_id lookups use the (tenant_id, email) unique index.

-- Purchase events (Stripe payments, marketing-site orders).
CREATE TABLE orders (
    id                       uuid         PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id                uuid         NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    customer_id              uuid         NOT NULL REFERENCES customers (id) ON DELETE RESTRICT,
    plan_id                  uuid         NOT NULL REFERENCES plans (id) ON DELETE RESTRICT,
    status                   order_status NOT NULL DEFAULT 'PENDING',
    total_amount_cents       integer      NOT NULL CHECK (total_amount_cents >= 0),
    currency                 text         NOT NULL DEFAULT 'usd' CHECK (currency ~ '^[a-z]{3}$'),
    stripe_payment_intent_id text,
    external_order_id        text,
    notes                    text,
    created_at               timestamptz  NOT NULL DEFAULT now(),
    updated_at               timestamptz  NOT NULL DEFAULT now()
);
CREATE INDEX orders_tenant_id_idx ON orders (tenant_id);
CREATE INDEX orders_customer_id_idx ON orders (customer_id);
CREATE INDEX orders_plan_id_idx ON orders (plan_id);
-- The idempotency keys of paid orders: the same payment delivered twice finds the same order.
-- (Partial indexes: ON CONFLICT must repeat the WHERE clause to infer them.)
CREATE UNIQUE INDEX orders_stripe_payment_intent_id_key
    ON orders (stripe_payment_intent_id)
    WHERE stripe_payment_intent_id IS NOT NULL;
CREATE UNIQUE INDEX orders_tenant_id_external_order_id_key
    ON orders (tenant_id, external_order_id)
    WHERE external_order_id IS NOT NULL;

-- Domain names managed by the panel; the anchor of hosting, DNS, mail and VPS resources.
CREATE TABLE domains (
    id          uuid          PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid          NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    customer_id uuid          REFERENCES customers (id) ON DELETE RESTRICT,
    name        text          NOT NULL UNIQUE CHECK (name = lower(name)),
    status      domain_status NOT NULL DEFAULT 'ACTIVE',
    auto_dns    boolean       NOT NULL DEFAULT true,
    auto_mail   boolean       NOT NULL DEFAULT true,
    created_at  timestamptz   NOT NULL DEFAULT now(),
    updated_at  timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX domains_tenant_id_idx ON domains (tenant_id);
CREATE INDEX domains_customer_id_idx ON domains (customer_id);

-- A customer's plan over time (for a domain or an account), created from a paid order.
CREATE TABLE subscriptions (
    id                   uuid                PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id            uuid                NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    customer_id          uuid                NOT NULL REFERENCES customers (id) ON DELETE RESTRICT,
    plan_id              uuid                NOT NULL REFERENCES plans (id) ON DELETE RESTRICT,
    order_id             uuid                UNIQUE REFERENCES orders (id) ON DELETE RESTRICT,
    domain_id            uuid                REFERENCES domains (id) ON DELETE RESTRICT,
    status               subscription_status NOT NULL DEFAULT 'ACTIVE',
    started_at           timestamptz         NOT NULL DEFAULT now(),
    current_period_start timestamptz         NOT NULL DEFAULT now(),
    current_period_end   timestamptz         NOT NULL,
    cancel_at_period_end boolean             NOT NULL DEFAULT false,
    cancelled_at         timestamptz,
    created_at           timestamptz         NOT NULL DEFAULT now(),
    updated_at           timestamptz         NOT NULL DEFAULT now()
);
CREATE INDEX subscriptions_tenant_id_idx ON subscriptions (tenant_id);
CREATE INDEX subscriptions_customer_id_idx ON subscriptions (customer_id);
CREATE INDEX subscriptions_plan_id_idx ON subscriptions (plan_id);
CREATE INDEX subscriptions_domain_id_idx ON subscriptions (domain_id);

-- DNS zones of domains, mirrored on PowerDNS by the dns agent.
CREATE TABLE dns_zones (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid        NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    domain_id    uuid        NOT NULL REFERENCES domains (id) ON DELETE RESTRICT,
    pdns_id      integer,
    soa_serial   integer,
    is_synced    boolean     NOT NULL DEFAULT false,
    last_sync_at timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dns_zones_tenant_id_idx ON dns_zones (tenant_id);
CREATE INDEX dns_zones_domain_id_idx ON dns_zones (domain_id);

-- Shared-hosting accounts (system user, home directory, PHP) of a domain on a web server.
CREATE TABLE hosting_accounts (
    id          uuid           PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid           NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    domain_id   uuid           NOT NULL UNIQUE REFERENCES domains (id) ON DELETE RESTRICT,
    server_id   uuid           NOT NULL REFERENCES servers (id) ON DELETE RESTRICT,
    system_user text           NOT NULL,
    home_dir    text           NOT NULL,
    php_version text,
    status      hosting_status NOT NULL DEFAULT 'ACTIVE',
    created_at  timestamptz    NOT NULL DEFAULT now(),
    updated_at  timestamptz    NOT NULL DEFAULT now()
);
CREATE INDEX hosting_accounts_tenant_id_idx ON hosting_accounts (tenant_id);
CREATE INDEX hosting_accounts_server_id_idx ON hosting_accounts (server_id);

-- Virtual private servers, optionally attached to a domain.
CREATE TABLE vps_instances (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid        NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    domain_id   uuid        UNIQUE REFERENCES domains (id) ON DELETE RESTRICT,
    server_id   uuid        NOT NULL REFERENCES servers (id) ON DELETE RESTRICT,
    name        text        NOT NULL,
    ipv4        text,
    status      vps_status  NOT NULL DEFAULT 'PENDING',
    cpu_cores   integer,
    memory_mb   integer,
    disk_gb     integer,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX vps_instances_tenant_id_idx ON vps_instances (tenant_id);
CREATE INDEX vps_instances_server_id_idx ON vps_instances (server_id);

-- Mailboxes on the mail server (Postfix/Dovecot), one per e-mail address.
CREATE TABLE mail_accounts (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid        NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    domain_id   uuid        NOT NULL REFERENCES domains (id) ON DELETE RESTRICT,
    email       text        NOT NULL UNIQUE CHECK (email = lower(email)),
    mailbox     text,
    status      mail_status NOT NULL DEFAULT 'ACTIVE',
    quota_mb    integer,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX mail_accounts_tenant_id_idx ON mail_accounts (tenant_id);
CREATE INDEX mail_accounts_domain_id_idx ON mail_accounts (domain_id);

-- Backups of a system, a client site or a database; target_id is polymorphic (no FK).
CREATE TABLE backup_jobs (
    id          uuid          PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid          NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    type        backup_type   NOT NULL,
    target_id   uuid          NOT NULL,
    status      backup_status NOT NULL DEFAULT 'PENDING',
    last_run_at timestamptz,
    created_at  timestamptz   NOT NULL DEFAULT now(),
    updated_at  timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX backup_jobs_tenant_id_idx ON backup_jobs (tenant_id);
CREATE INDEX backup_jobs_type_target_id_idx ON backup_jobs (type, target_id);

-- Provisioning work; the truth behind the Redis queue (a lost queue is refilled from here).
CREATE TABLE jobs (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid        NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    order_id     uuid        REFERENCES orders (id) ON DELETE RESTRICT,
    type         job_type    NOT NULL,
    payload      jsonb       NOT NULL,
    status       job_status  NOT NULL DEFAULT 'PENDING',
    attempts     integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts integer     NOT NULL DEFAULT 5 CHECK (max_attempts > 0),
    last_error   text,
    -- Earliest time of the next attempt (retry backoff).
    run_at       timestamptz NOT NULL DEFAULT now(),
    -- NULL until pushed to Redis; a sweeper re-enqueues those left NULL.
    enqueued_at  timestamptz,
    started_at   timestamptz,
    finished_at  timestamptz,
    locked_by    text,
    locked_until timestamptz,
    server_id    uuid        REFERENCES servers (id) ON DELETE RESTRICT,
    result       jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_tenant_id_idx ON jobs (tenant_id);
CREATE INDEX jobs_order_id_idx ON jobs (order_id);
CREATE INDEX jobs_server_id_idx ON jobs (server_id);
CREATE INDEX jobs_status_run_at_idx ON jobs (status, run_at);

-- Record of critical actions (logins, orders, provisioning results, server changes); append-only.
CREATE TABLE audit_logs (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid        NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    user_id     uuid        REFERENCES users (id) ON DELETE RESTRICT,
    action      text        NOT NULL,
    ip_address  text,
    user_agent  text,
    details     jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_logs_tenant_id_created_at_idx ON audit_logs (tenant_id, created_at DESC);
CREATE INDEX audit_logs_tenant_id_action_idx ON audit_logs (tenant_id, action);
CREATE INDEX audit_logs_user_id_idx ON audit_logs (user_id);

-- ---------------------------------------------------------------------------------------------
-- Tables the flows need beyond the spec
-- ---------------------------------------------------------------------------------------------

-- History of a job: every status transition with its message; append-only.
CREATE TABLE job_logs (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    job_id      uuid        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    tenant_id   uuid        NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    from_status job_status,
    to_status   job_status  NOT NULL,
    message     text        NOT NULL,
    details     jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX job_logs_job_id_created_at_idx ON job_logs (job_id, created_at);
CREATE INDEX job_logs_tenant_id_idx ON job_logs (tenant_id);

-- The agent enrolled on a server (one per server), with the roles it serves.
CREATE TABLE agents (
    id           uuid          PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid          NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    server_id    uuid          NOT NULL UNIQUE REFERENCES servers (id) ON DELETE RESTRICT,
    hostname     text,
    version      text,
    roles        server_role[] NOT NULL DEFAULT '{}',
    last_seen_at timestamptz,
    revoked_at   timestamptz,
    created_at   timestamptz   NOT NULL DEFAULT now(),
    updated_at   timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX agents_tenant_id_idx ON agents (tenant_id);

-- Client certificates issued to agents by the panel's CA; revoked ones are refused.
CREATE TABLE agent_certificates (
    id                 uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    agent_id           uuid        NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    serial             text        NOT NULL UNIQUE,
    fingerprint_sha256 text        NOT NULL UNIQUE,
    not_before         timestamptz NOT NULL,
    not_after          timestamptz NOT NULL,
    revoked_at         timestamptz,
    revoke_reason      text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    CHECK (not_after > not_before)
);
CREATE INDEX agent_certificates_agent_id_idx ON agent_certificates (agent_id);

-- One-time tokens with which an agent enrolls for a server (only the hash is stored).
CREATE TABLE enrollment_tokens (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid        NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    server_id   uuid        NOT NULL REFERENCES servers (id) ON DELETE RESTRICT,
    token_hash  text        NOT NULL UNIQUE,
    created_by  uuid        REFERENCES users (id) ON DELETE RESTRICT,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    agent_id    uuid        REFERENCES agents (id) ON DELETE RESTRICT,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX enrollment_tokens_tenant_id_idx ON enrollment_tokens (tenant_id);
CREATE INDEX enrollment_tokens_server_id_idx ON enrollment_tokens (server_id);
CREATE INDEX enrollment_tokens_created_by_idx ON enrollment_tokens (created_by);
CREATE INDEX enrollment_tokens_agent_id_idx ON enrollment_tokens (agent_id);

-- Operators' refresh-token sessions; the token rotates (generation) and reuse revokes the session.
CREATE TABLE refresh_sessions (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid        NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    user_id       uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- Hash of the current refresh token.
    token_hash    text        NOT NULL UNIQUE,
    generation    integer     NOT NULL DEFAULT 0,
    expires_at    timestamptz NOT NULL,
    last_used_at  timestamptz,
    revoked_at    timestamptz,
    revoke_reason text,
    ip_address    text,
    user_agent    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refresh_sessions_tenant_id_idx ON refresh_sessions (tenant_id);
CREATE INDEX refresh_sessions_user_id_idx ON refresh_sessions (user_id);

-- Payment-provider webhook deliveries, deduplicated by (provider, event_id).
CREATE TABLE webhook_events (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    provider     text        NOT NULL,
    event_id     text        NOT NULL,
    event_type   text        NOT NULL,
    payload      jsonb       NOT NULL,
    order_id     uuid        REFERENCES orders (id) ON DELETE RESTRICT,
    processed_at timestamptz,
    error        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (provider, event_id)
);
CREATE INDEX webhook_events_order_id_idx ON webhook_events (order_id);

-- Health samples reported by agents (high volume, hence a bigint identity key).
CREATE TABLE server_metrics (
    id                 bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id          uuid        NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    server_id          uuid        NOT NULL REFERENCES servers (id) ON DELETE CASCADE,
    collected_at       timestamptz NOT NULL,
    cpu_percent        real,
    memory_used_bytes  bigint,
    memory_total_bytes bigint,
    load1              real,
    load5              real,
    load15             real,
    uptime_secs        bigint,
    disks              jsonb       NOT NULL DEFAULT '[]',
    services           jsonb       NOT NULL DEFAULT '{}',
    created_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX server_metrics_server_id_collected_at_idx ON server_metrics (server_id, collected_at DESC);
CREATE INDEX server_metrics_tenant_id_idx ON server_metrics (tenant_id);

-- Resource records of a DNS zone, pushed to PowerDNS with the zone.
CREATE TABLE dns_records (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid        NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    zone_id     uuid        NOT NULL REFERENCES dns_zones (id) ON DELETE CASCADE,
    name        text        NOT NULL,
    type        text        NOT NULL
        CHECK (type IN ('A', 'AAAA', 'CNAME', 'MX', 'TXT', 'NS', 'SRV', 'CAA', 'SOA', 'PTR')),
    content     text        NOT NULL,
    ttl         integer     NOT NULL DEFAULT 3600 CHECK (ttl > 0),
    priority    integer,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (zone_id, name, type, content)
);
-- zone_id lookups use the (zone_id, name, type, content) unique index.
CREATE INDEX dns_records_tenant_id_idx ON dns_records (tenant_id);

-- ---------------------------------------------------------------------------------------------
-- updated_at triggers
-- ---------------------------------------------------------------------------------------------

CREATE TRIGGER tenants_set_updated_at BEFORE UPDATE ON tenants
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER users_set_updated_at BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER servers_set_updated_at BEFORE UPDATE ON servers
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER products_set_updated_at BEFORE UPDATE ON products
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER plans_set_updated_at BEFORE UPDATE ON plans
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER customers_set_updated_at BEFORE UPDATE ON customers
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER orders_set_updated_at BEFORE UPDATE ON orders
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER subscriptions_set_updated_at BEFORE UPDATE ON subscriptions
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER domains_set_updated_at BEFORE UPDATE ON domains
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER dns_zones_set_updated_at BEFORE UPDATE ON dns_zones
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER hosting_accounts_set_updated_at BEFORE UPDATE ON hosting_accounts
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER vps_instances_set_updated_at BEFORE UPDATE ON vps_instances
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER mail_accounts_set_updated_at BEFORE UPDATE ON mail_accounts
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER backup_jobs_set_updated_at BEFORE UPDATE ON backup_jobs
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER jobs_set_updated_at BEFORE UPDATE ON jobs
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER agents_set_updated_at BEFORE UPDATE ON agents
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER refresh_sessions_set_updated_at BEFORE UPDATE ON refresh_sessions
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER dns_records_set_updated_at BEFORE UPDATE ON dns_records
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
