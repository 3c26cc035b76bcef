//! The SQL schema in `migrations/` against spec §5 and the conventions of
//! `docs/architecture.md`.
//!
//! The migrations run in-process on a fresh database; the catalog is then compared with the
//! expected schema written out below (every model, field, type, nullability, default, enum
//! value and relation), and the constraints the flows rely on (unique keys, lower-case
//! e-mails, non-negative money, `updated_at` triggers) are exercised with real rows.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chrono::{DateTime, Utc};
use mpanel_tests::db::TestDb;
use sqlx::{AssertSqlSafe, PgPool, migrate::Migrator};

const MIGRATIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations");

const NULL: bool = true;
const NOT_NULL: bool = false;

/// (column, PostgreSQL type as `udt_name`, nullable)
type Columns = &'static [(&'static str, &'static str, bool)];

/// Every model of spec §5: its table and every field, optional (`?`) fields nullable.
const SPEC_TABLES: &[(&str, Columns)] = &[
    (
        "tenants",
        &[
            ("id", "uuid", NOT_NULL),
            ("name", "text", NOT_NULL),
            ("slug", "text", NOT_NULL),
            ("is_active", "bool", NOT_NULL),
            ("created_at", "timestamptz", NOT_NULL),
            ("updated_at", "timestamptz", NOT_NULL),
        ],
    ),
    (
        "users",
        &[
            ("id", "uuid", NOT_NULL),
            ("tenant_id", "uuid", NOT_NULL),
            ("email", "text", NOT_NULL),
            ("password_hash", "text", NOT_NULL),
            ("display_name", "text", NOT_NULL),
            ("role", "user_role", NOT_NULL),
            ("is_active", "bool", NOT_NULL),
            ("last_login_at", "timestamptz", NULL),
            ("created_at", "timestamptz", NOT_NULL),
            ("updated_at", "timestamptz", NOT_NULL),
        ],
    ),
    (
        "servers",
        &[
            ("id", "uuid", NOT_NULL),
            ("tenant_id", "uuid", NOT_NULL),
            ("name", "text", NOT_NULL),
            ("role", "server_role", NOT_NULL),
            ("ip_address", "text", NOT_NULL),
            ("internal_ip", "text", NULL),
            ("location", "text", NULL),
            ("is_active", "bool", NOT_NULL),
            ("created_at", "timestamptz", NOT_NULL),
            ("updated_at", "timestamptz", NOT_NULL),
        ],
    ),
    (
        "products",
        &[
            ("id", "uuid", NOT_NULL),
            ("tenant_id", "uuid", NOT_NULL),
            ("name", "text", NOT_NULL),
            ("slug", "text", NOT_NULL),
            ("type", "product_type", NOT_NULL),
            ("description", "text", NULL),
            ("is_active", "bool", NOT_NULL),
            ("created_at", "timestamptz", NOT_NULL),
            ("updated_at", "timestamptz", NOT_NULL),
        ],
    ),
    (
        "plans",
        &[
            ("id", "uuid", NOT_NULL),
            ("tenant_id", "uuid", NOT_NULL),
            ("product_id", "uuid", NOT_NULL),
            ("name", "text", NOT_NULL),
            ("slug", "text", NOT_NULL),
            ("price_monthly_cents", "int4", NOT_NULL),
            ("price_yearly_cents", "int4", NOT_NULL),
            ("currency", "text", NOT_NULL),
            ("is_popular", "bool", NOT_NULL),
            ("is_active", "bool", NOT_NULL),
            ("limits_json", "jsonb", NULL),
            ("created_at", "timestamptz", NOT_NULL),
            ("updated_at", "timestamptz", NOT_NULL),
        ],
    ),
    (
        "customers",
        &[
            ("id", "uuid", NOT_NULL),
            ("tenant_id", "uuid", NOT_NULL),
            ("email", "text", NOT_NULL),
            ("full_name", "text", NULL),
            ("phone", "text", NULL),
            ("stripe_customer_id", "text", NULL),
            ("is_active", "bool", NOT_NULL),
            ("created_at", "timestamptz", NOT_NULL),
            ("updated_at", "timestamptz", NOT_NULL),
        ],
    ),
    (
        "orders",
        &[
            ("id", "uuid", NOT_NULL),
            ("tenant_id", "uuid", NOT_NULL),
            ("customer_id", "uuid", NOT_NULL),
            ("plan_id", "uuid", NOT_NULL),
            ("status", "order_status", NOT_NULL),
            ("total_amount_cents", "int4", NOT_NULL),
            ("currency", "text", NOT_NULL),
            ("stripe_payment_intent_id", "text", NULL),
            ("external_order_id", "text", NULL),
            ("notes", "text", NULL),
            ("created_at", "timestamptz", NOT_NULL),
            ("updated_at", "timestamptz", NOT_NULL),
        ],
    ),
    (
        "subscriptions",
        &[
            ("id", "uuid", NOT_NULL),
            ("tenant_id", "uuid", NOT_NULL),
            ("customer_id", "uuid", NOT_NULL),
            ("plan_id", "uuid", NOT_NULL),
            ("order_id", "uuid", NULL),
            ("status", "subscription_status", NOT_NULL),
            ("started_at", "timestamptz", NOT_NULL),
            ("current_period_start", "timestamptz", NOT_NULL),
            ("current_period_end", "timestamptz", NOT_NULL),
            ("cancel_at_period_end", "bool", NOT_NULL),
            ("cancelled_at", "timestamptz", NULL),
            ("created_at", "timestamptz", NOT_NULL),
            ("updated_at", "timestamptz", NOT_NULL),
        ],
    ),
    (
        "domains",
        &[
            ("id", "uuid", NOT_NULL),
            ("tenant_id", "uuid", NOT_NULL),
            ("name", "text", NOT_NULL),
            ("status", "domain_status", NOT_NULL),
            ("auto_dns", "bool", NOT_NULL),
            ("auto_mail", "bool", NOT_NULL),
            ("created_at", "timestamptz", NOT_NULL),
            ("updated_at", "timestamptz", NOT_NULL),
        ],
    ),
    (
        "dns_zones",
        &[
            ("id", "uuid", NOT_NULL),
            ("tenant_id", "uuid", NOT_NULL),
            ("domain_id", "uuid", NOT_NULL),
            ("pdns_id", "int4", NULL),
            ("soa_serial", "int4", NULL),
            ("is_synced", "bool", NOT_NULL),
            ("last_sync_at", "timestamptz", NULL),
            ("created_at", "timestamptz", NOT_NULL),
            ("updated_at", "timestamptz", NOT_NULL),
        ],
    ),
    (
        "hosting_accounts",
        &[
            ("id", "uuid", NOT_NULL),
            ("tenant_id", "uuid", NOT_NULL),
            ("domain_id", "uuid", NOT_NULL),
            ("server_id", "uuid", NOT_NULL),
            ("system_user", "text", NOT_NULL),
            ("home_dir", "text", NOT_NULL),
            ("php_version", "text", NULL),
            ("status", "hosting_status", NOT_NULL),
            ("created_at", "timestamptz", NOT_NULL),
            ("updated_at", "timestamptz", NOT_NULL),
        ],
    ),
    (
        "vps_instances",
        &[
            ("id", "uuid", NOT_NULL),
            ("tenant_id", "uuid", NOT_NULL),
            ("domain_id", "uuid", NULL),
            ("server_id", "uuid", NOT_NULL),
            ("name", "text", NOT_NULL),
            ("ipv4", "text", NULL),
            ("status", "vps_status", NOT_NULL),
            ("cpu_cores", "int4", NULL),
            ("memory_mb", "int4", NULL),
            ("disk_gb", "int4", NULL),
            ("created_at", "timestamptz", NOT_NULL),
            ("updated_at", "timestamptz", NOT_NULL),
        ],
    ),
    (
        "mail_accounts",
        &[
            ("id", "uuid", NOT_NULL),
            ("tenant_id", "uuid", NOT_NULL),
            ("domain_id", "uuid", NOT_NULL),
            ("email", "text", NOT_NULL),
            ("mailbox", "text", NULL),
            ("status", "mail_status", NOT_NULL),
            ("created_at", "timestamptz", NOT_NULL),
            ("updated_at", "timestamptz", NOT_NULL),
        ],
    ),
    (
        "backup_jobs",
        &[
            ("id", "uuid", NOT_NULL),
            ("tenant_id", "uuid", NOT_NULL),
            ("type", "backup_type", NOT_NULL),
            ("target_id", "uuid", NOT_NULL),
            ("status", "backup_status", NOT_NULL),
            ("last_run_at", "timestamptz", NULL),
            ("created_at", "timestamptz", NOT_NULL),
            ("updated_at", "timestamptz", NOT_NULL),
        ],
    ),
    (
        "jobs",
        &[
            ("id", "uuid", NOT_NULL),
            ("tenant_id", "uuid", NOT_NULL),
            ("order_id", "uuid", NULL),
            ("type", "job_type", NOT_NULL),
            ("payload", "jsonb", NOT_NULL),
            ("status", "job_status", NOT_NULL),
            ("attempts", "int4", NOT_NULL),
            ("last_error", "text", NULL),
            ("created_at", "timestamptz", NOT_NULL),
            ("updated_at", "timestamptz", NOT_NULL),
        ],
    ),
    (
        "audit_logs",
        &[
            ("id", "uuid", NOT_NULL),
            ("tenant_id", "uuid", NOT_NULL),
            ("user_id", "uuid", NULL),
            ("action", "text", NOT_NULL),
            ("ip_address", "text", NULL),
            ("user_agent", "text", NULL),
            ("details", "jsonb", NULL),
            ("created_at", "timestamptz", NOT_NULL),
        ],
    ),
];

/// Columns the flows need on top of the spec's fields of its models.
const FLOW_COLUMNS: &[(&str, Columns)] = &[
    (
        "servers",
        &[
            ("agent_online", "bool", NOT_NULL),
            ("agent_version", "text", NULL),
            ("last_seen_at", "timestamptz", NULL),
            ("deleted_at", "timestamptz", NULL),
        ],
    ),
    ("domains", &[("customer_id", "uuid", NULL)]),
    ("subscriptions", &[("domain_id", "uuid", NULL)]),
    (
        "jobs",
        &[
            ("max_attempts", "int4", NOT_NULL),
            ("run_at", "timestamptz", NOT_NULL),
            ("enqueued_at", "timestamptz", NULL),
            ("started_at", "timestamptz", NULL),
            ("finished_at", "timestamptz", NULL),
            ("locked_by", "text", NULL),
            ("locked_until", "timestamptz", NULL),
            ("server_id", "uuid", NULL),
            ("result", "jsonb", NULL),
        ],
    ),
    ("mail_accounts", &[("quota_mb", "int4", NULL)]),
];

/// Tables the flows need beyond the spec's models.
const FLOW_TABLES: &[(&str, Columns)] = &[
    (
        "job_logs",
        &[
            ("id", "uuid", NOT_NULL),
            ("job_id", "uuid", NOT_NULL),
            ("tenant_id", "uuid", NOT_NULL),
            ("from_status", "job_status", NULL),
            ("to_status", "job_status", NOT_NULL),
            ("message", "text", NOT_NULL),
            ("details", "jsonb", NULL),
            ("created_at", "timestamptz", NOT_NULL),
        ],
    ),
    (
        "agents",
        &[
            ("id", "uuid", NOT_NULL),
            ("tenant_id", "uuid", NOT_NULL),
            ("server_id", "uuid", NOT_NULL),
            ("hostname", "text", NULL),
            ("version", "text", NULL),
            ("roles", "_server_role", NOT_NULL),
            ("last_seen_at", "timestamptz", NULL),
            ("revoked_at", "timestamptz", NULL),
            ("created_at", "timestamptz", NOT_NULL),
            ("updated_at", "timestamptz", NOT_NULL),
        ],
    ),
    (
        "agent_certificates",
        &[
            ("id", "uuid", NOT_NULL),
            ("agent_id", "uuid", NOT_NULL),
            ("serial", "text", NOT_NULL),
            ("fingerprint_sha256", "text", NOT_NULL),
            ("not_before", "timestamptz", NOT_NULL),
            ("not_after", "timestamptz", NOT_NULL),
            ("revoked_at", "timestamptz", NULL),
            ("revoke_reason", "text", NULL),
            ("created_at", "timestamptz", NOT_NULL),
        ],
    ),
    (
        "enrollment_tokens",
        &[
            ("id", "uuid", NOT_NULL),
            ("tenant_id", "uuid", NOT_NULL),
            ("server_id", "uuid", NOT_NULL),
            ("token_hash", "text", NOT_NULL),
            ("created_by", "uuid", NULL),
            ("expires_at", "timestamptz", NOT_NULL),
            ("used_at", "timestamptz", NULL),
            ("agent_id", "uuid", NULL),
            ("created_at", "timestamptz", NOT_NULL),
        ],
    ),
    (
        "refresh_sessions",
        &[
            ("id", "uuid", NOT_NULL),
            ("tenant_id", "uuid", NOT_NULL),
            ("user_id", "uuid", NOT_NULL),
            ("token_hash", "text", NOT_NULL),
            ("generation", "int4", NOT_NULL),
            ("expires_at", "timestamptz", NOT_NULL),
            ("last_used_at", "timestamptz", NULL),
            ("revoked_at", "timestamptz", NULL),
            ("revoke_reason", "text", NULL),
            ("ip_address", "text", NULL),
            ("user_agent", "text", NULL),
            ("created_at", "timestamptz", NOT_NULL),
            ("updated_at", "timestamptz", NOT_NULL),
        ],
    ),
    (
        "webhook_events",
        &[
            ("id", "uuid", NOT_NULL),
            ("provider", "text", NOT_NULL),
            ("event_id", "text", NOT_NULL),
            ("event_type", "text", NOT_NULL),
            ("payload", "jsonb", NOT_NULL),
            ("order_id", "uuid", NULL),
            ("processed_at", "timestamptz", NULL),
            ("error", "text", NULL),
            ("created_at", "timestamptz", NOT_NULL),
        ],
    ),
    (
        "server_metrics",
        &[
            ("id", "int8", NOT_NULL),
            ("tenant_id", "uuid", NOT_NULL),
            ("server_id", "uuid", NOT_NULL),
            ("collected_at", "timestamptz", NOT_NULL),
            ("cpu_percent", "float4", NULL),
            ("memory_used_bytes", "int8", NULL),
            ("memory_total_bytes", "int8", NULL),
            ("load1", "float4", NULL),
            ("load5", "float4", NULL),
            ("load15", "float4", NULL),
            ("uptime_secs", "int8", NULL),
            ("disks", "jsonb", NOT_NULL),
            ("services", "jsonb", NOT_NULL),
            ("created_at", "timestamptz", NOT_NULL),
        ],
    ),
    (
        "dns_records",
        &[
            ("id", "uuid", NOT_NULL),
            ("tenant_id", "uuid", NOT_NULL),
            ("zone_id", "uuid", NOT_NULL),
            ("name", "text", NOT_NULL),
            ("type", "text", NOT_NULL),
            ("content", "text", NOT_NULL),
            ("ttl", "int4", NOT_NULL),
            ("priority", "int4", NULL),
            ("created_at", "timestamptz", NOT_NULL),
            ("updated_at", "timestamptz", NOT_NULL),
        ],
    ),
];

/// Every enum of spec §5 with its values in the spec's order.
const ENUMS: &[(&str, &[&str])] = &[
    (
        "user_role",
        &["SUPER_ADMIN", "ADMIN", "SUPPORT", "BILLING", "READ_ONLY"],
    ),
    (
        "server_role",
        &["WEB", "MAIL", "DNS", "PANEL", "DB", "STORAGE"],
    ),
    (
        "product_type",
        &["SHARED_HOSTING", "VPS", "EMAIL", "DNS", "STORAGE"],
    ),
    (
        "order_status",
        &["PENDING", "PAID", "FAILED", "CANCELLED", "REFUNDED"],
    ),
    (
        "subscription_status",
        &["ACTIVE", "PAST_DUE", "CANCELLED", "TRIALING", "INACTIVE"],
    ),
    (
        "domain_status",
        &["ACTIVE", "SUSPENDED", "PENDING_SETUP", "PENDING_TRANSFER"],
    ),
    (
        "hosting_status",
        &["ACTIVE", "SUSPENDED", "TERMINATED", "PENDING"],
    ),
    (
        "vps_status",
        &["PENDING", "RUNNING", "STOPPED", "SUSPENDED", "TERMINATED"],
    ),
    ("mail_status", &["ACTIVE", "DISABLED", "PENDING"]),
    ("backup_type", &["SYSTEM", "CLIENT_SITE", "DATABASE"]),
    (
        "backup_status",
        &["PENDING", "RUNNING", "SUCCESS", "FAILED"],
    ),
    (
        "job_type",
        &[
            "PROVISION_HOSTING",
            "PROVISION_DNS",
            "PROVISION_MAIL",
            "PROVISION_VPS",
            "SUSPEND_ACCOUNT",
            "UNSUSPEND_ACCOUNT",
            "TERMINATE_ACCOUNT",
        ],
    ),
    ("job_status", &["PENDING", "RUNNING", "SUCCESS", "FAILED"]),
];

/// Column defaults as PostgreSQL prints them, beyond the uuid `id`, `created_at` and
/// `updated_at` defaults that every table gets (checked separately).
const DEFAULTS: &[(&str, &str, &str)] = &[
    // spec §5
    ("tenants", "is_active", "true"),
    ("users", "role", "'ADMIN'::user_role"),
    ("users", "is_active", "true"),
    ("servers", "is_active", "true"),
    ("products", "is_active", "true"),
    ("plans", "currency", "'usd'::text"),
    ("plans", "is_popular", "false"),
    ("plans", "is_active", "true"),
    ("customers", "is_active", "true"),
    ("orders", "status", "'PENDING'::order_status"),
    ("orders", "currency", "'usd'::text"),
    ("subscriptions", "status", "'ACTIVE'::subscription_status"),
    ("subscriptions", "started_at", "now()"),
    ("subscriptions", "current_period_start", "now()"),
    ("subscriptions", "cancel_at_period_end", "false"),
    ("domains", "status", "'ACTIVE'::domain_status"),
    ("domains", "auto_dns", "true"),
    ("domains", "auto_mail", "true"),
    ("dns_zones", "is_synced", "false"),
    ("hosting_accounts", "status", "'ACTIVE'::hosting_status"),
    ("vps_instances", "status", "'PENDING'::vps_status"),
    ("mail_accounts", "status", "'ACTIVE'::mail_status"),
    ("backup_jobs", "status", "'PENDING'::backup_status"),
    ("jobs", "status", "'PENDING'::job_status"),
    ("jobs", "attempts", "0"),
    // the flows
    ("servers", "agent_online", "false"),
    ("jobs", "max_attempts", "5"),
    ("jobs", "run_at", "now()"),
    ("agents", "roles", "'{}'::server_role[]"),
    ("refresh_sessions", "generation", "0"),
    ("server_metrics", "disks", "'[]'::jsonb"),
    ("server_metrics", "services", "'{}'::jsonb"),
    ("dns_records", "ttl", "3600"),
];

/// Foreign keys other than `tenant_id` (which must reference tenants, RESTRICT, on every table
/// that has it): (table, column, referenced table, ON DELETE).
const FOREIGN_KEYS: &[(&str, &str, &str, &str)] = &[
    ("plans", "product_id", "products", "RESTRICT"),
    ("orders", "customer_id", "customers", "RESTRICT"),
    ("orders", "plan_id", "plans", "RESTRICT"),
    ("subscriptions", "customer_id", "customers", "RESTRICT"),
    ("subscriptions", "plan_id", "plans", "RESTRICT"),
    ("subscriptions", "order_id", "orders", "RESTRICT"),
    ("subscriptions", "domain_id", "domains", "RESTRICT"),
    ("domains", "customer_id", "customers", "RESTRICT"),
    ("dns_zones", "domain_id", "domains", "RESTRICT"),
    ("hosting_accounts", "domain_id", "domains", "RESTRICT"),
    ("hosting_accounts", "server_id", "servers", "RESTRICT"),
    ("vps_instances", "domain_id", "domains", "RESTRICT"),
    ("vps_instances", "server_id", "servers", "RESTRICT"),
    ("mail_accounts", "domain_id", "domains", "RESTRICT"),
    ("jobs", "order_id", "orders", "RESTRICT"),
    ("jobs", "server_id", "servers", "RESTRICT"),
    ("audit_logs", "user_id", "users", "RESTRICT"),
    ("job_logs", "job_id", "jobs", "CASCADE"),
    ("agents", "server_id", "servers", "RESTRICT"),
    ("agent_certificates", "agent_id", "agents", "CASCADE"),
    ("enrollment_tokens", "server_id", "servers", "RESTRICT"),
    ("enrollment_tokens", "created_by", "users", "RESTRICT"),
    ("enrollment_tokens", "agent_id", "agents", "RESTRICT"),
    ("refresh_sessions", "user_id", "users", "CASCADE"),
    ("webhook_events", "order_id", "orders", "RESTRICT"),
    ("server_metrics", "server_id", "servers", "CASCADE"),
    ("dns_records", "zone_id", "dns_zones", "CASCADE"),
];

/// Rows of tables added after the typed-jobs migration (whose test loads [`FIXTURE`] into
/// the schema as it was before).
const LATER_FIXTURE: &str = r#"
INSERT INTO subscription_policies (tenant_id, grace_period_secs)
VALUES ('00000000-0000-0000-0000-000000000001', 86400);
INSERT INTO site_certificates (tenant_id, hosting_account_id, status)
SELECT tenant_id, id, 'PENDING' FROM hosting_accounts LIMIT 1;
"#;

/// One valid row in every table (so constraints and triggers can be exercised). Ids:
/// …01 tenant, …02 user, …03 server, …04 product, …05 plan, …06 customer, …07 order,
/// …08 domain, …09 DNS zone, …10 job, …11 agent.
const FIXTURE: &str = r#"
INSERT INTO tenants (id, name, slug)
VALUES ('00000000-0000-0000-0000-000000000001', 'MigraHosting', 'migrahosting');
INSERT INTO users (id, tenant_id, email, password_hash, display_name)
VALUES ('00000000-0000-0000-0000-000000000002', '00000000-0000-0000-0000-000000000001',
        'admin@migrahosting.com', '$argon2id$hash', 'Admin');
INSERT INTO servers (id, tenant_id, name, role, ip_address)
VALUES ('00000000-0000-0000-0000-000000000003', '00000000-0000-0000-0000-000000000001',
        'srv1-web', 'WEB', '10.0.0.1');
INSERT INTO products (id, tenant_id, name, slug, type)
VALUES ('00000000-0000-0000-0000-000000000004', '00000000-0000-0000-0000-000000000001',
        'Shared Hosting', 'shared-hosting', 'SHARED_HOSTING');
INSERT INTO plans (id, tenant_id, product_id, name, slug, price_monthly_cents, price_yearly_cents)
VALUES ('00000000-0000-0000-0000-000000000005', '00000000-0000-0000-0000-000000000001',
        '00000000-0000-0000-0000-000000000004', 'Starter', 'starter-monthly', 149, 1490);
INSERT INTO customers (id, tenant_id, email)
VALUES ('00000000-0000-0000-0000-000000000006', '00000000-0000-0000-0000-000000000001',
        'client@example.com');
INSERT INTO orders (id, tenant_id, customer_id, plan_id, status, total_amount_cents,
                    stripe_payment_intent_id, external_order_id)
VALUES ('00000000-0000-0000-0000-000000000007', '00000000-0000-0000-0000-000000000001',
        '00000000-0000-0000-0000-000000000006', '00000000-0000-0000-0000-000000000005',
        'PAID', 149, 'pi_123', 'mkt-1');
INSERT INTO domains (id, tenant_id, customer_id, name)
VALUES ('00000000-0000-0000-0000-000000000008', '00000000-0000-0000-0000-000000000001',
        '00000000-0000-0000-0000-000000000006', 'example.com');
INSERT INTO subscriptions (tenant_id, customer_id, plan_id, order_id, domain_id, current_period_end)
VALUES ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000006',
        '00000000-0000-0000-0000-000000000005', '00000000-0000-0000-0000-000000000007',
        '00000000-0000-0000-0000-000000000008', now() + interval '1 month');
INSERT INTO dns_zones (id, tenant_id, domain_id)
VALUES ('00000000-0000-0000-0000-000000000009', '00000000-0000-0000-0000-000000000001',
        '00000000-0000-0000-0000-000000000008');
INSERT INTO dns_records (tenant_id, zone_id, name, type, content)
VALUES ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000009',
        'example.com', 'A', '10.0.0.1');
INSERT INTO hosting_accounts (tenant_id, domain_id, server_id, system_user, home_dir)
VALUES ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000008',
        '00000000-0000-0000-0000-000000000003', 'example', '/home/example');
INSERT INTO vps_instances (tenant_id, domain_id, server_id, name)
VALUES ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000008',
        '00000000-0000-0000-0000-000000000003', 'vps-1');
INSERT INTO mail_accounts (tenant_id, domain_id, email)
VALUES ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000008',
        'info@example.com');
INSERT INTO backup_jobs (tenant_id, type, target_id)
VALUES ('00000000-0000-0000-0000-000000000001', 'CLIENT_SITE',
        '00000000-0000-0000-0000-000000000008');
INSERT INTO jobs (id, tenant_id, order_id, type, payload)
VALUES ('00000000-0000-0000-0000-000000000010', '00000000-0000-0000-0000-000000000001',
        '00000000-0000-0000-0000-000000000007', 'PROVISION_DNS', '{"domain": "example.com"}');
INSERT INTO job_logs (job_id, tenant_id, to_status, message)
VALUES ('00000000-0000-0000-0000-000000000010', '00000000-0000-0000-0000-000000000001',
        'PENDING', 'created');
INSERT INTO audit_logs (tenant_id, user_id, action)
VALUES ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000002',
        'order.created');
INSERT INTO agents (id, tenant_id, server_id, roles)
VALUES ('00000000-0000-0000-0000-000000000011', '00000000-0000-0000-0000-000000000001',
        '00000000-0000-0000-0000-000000000003', '{WEB}');
INSERT INTO agent_certificates (agent_id, serial, fingerprint_sha256, not_before, not_after)
VALUES ('00000000-0000-0000-0000-000000000011', '01', 'ab12', now(), now() + interval '90 days');
INSERT INTO enrollment_tokens (tenant_id, server_id, token_hash, created_by, expires_at)
VALUES ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000003',
        'enroll-hash', '00000000-0000-0000-0000-000000000002', now() + interval '1 hour');
INSERT INTO refresh_sessions (tenant_id, user_id, token_hash, expires_at)
VALUES ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000002',
        'refresh-hash', now() + interval '30 days');
INSERT INTO webhook_events (provider, event_id, event_type, payload, order_id)
VALUES ('stripe', 'evt_1', 'payment_intent.succeeded', '{}',
        '00000000-0000-0000-0000-000000000007');
INSERT INTO server_metrics (tenant_id, server_id, collected_at, cpu_percent)
VALUES ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000003',
        now(), 12.5);
INSERT INTO order_credentials (tenant_id, order_id, kind, label, sealed)
VALUES ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000007',
        'MAILBOX', 'info@example.com', '\x00');
INSERT INTO outbound_emails (tenant_id, order_id, kind, dedupe_key, to_addresses, subject,
                             sealed_body)
VALUES ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000007',
        'WELCOME', 'welcome:00000000-0000-0000-0000-000000000007', '{client@example.com}',
        'Welcome', '\x00');
"#;

const UNIQUE_VIOLATION: &str = "23505";
const CHECK_VIOLATION: &str = "23514";
const FOREIGN_KEY_VIOLATION: &str = "23503";

/// Statements that must fail against the fixture, each with the SQLSTATE it must fail with.
/// Each is valid apart from the one rule it breaks.
const REJECTED: &[(&str, &str, &str)] = &[
    (
        "duplicate tenants.slug",
        "INSERT INTO tenants (name, slug) VALUES ('Other', 'migrahosting')",
        UNIQUE_VIOLATION,
    ),
    (
        "duplicate users.email",
        "INSERT INTO users (tenant_id, email, password_hash, display_name)
         VALUES ('00000000-0000-0000-0000-000000000001', 'admin@migrahosting.com', 'h', 'Other')",
        UNIQUE_VIOLATION,
    ),
    (
        "upper-case users.email",
        "INSERT INTO users (tenant_id, email, password_hash, display_name)
         VALUES ('00000000-0000-0000-0000-000000000001', 'Other@migrahosting.com', 'h', 'Other')",
        CHECK_VIOLATION,
    ),
    (
        "duplicate products (tenant_id, slug)",
        "INSERT INTO products (tenant_id, name, slug, type)
         VALUES ('00000000-0000-0000-0000-000000000001', 'Other', 'shared-hosting', 'VPS')",
        UNIQUE_VIOLATION,
    ),
    (
        "duplicate plans (tenant_id, slug)",
        "INSERT INTO plans (tenant_id, product_id, name, slug, price_monthly_cents, price_yearly_cents)
         VALUES ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000004',
                 'Other', 'starter-monthly', 1, 1)",
        UNIQUE_VIOLATION,
    ),
    (
        "negative plans.price_monthly_cents",
        "INSERT INTO plans (tenant_id, product_id, name, slug, price_monthly_cents, price_yearly_cents)
         VALUES ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000004',
                 'Other', 'other', -1, 1)",
        CHECK_VIOLATION,
    ),
    (
        "negative plans.price_yearly_cents",
        "INSERT INTO plans (tenant_id, product_id, name, slug, price_monthly_cents, price_yearly_cents)
         VALUES ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000004',
                 'Other', 'other', 1, -1)",
        CHECK_VIOLATION,
    ),
    (
        "upper-case plans.currency",
        "INSERT INTO plans (tenant_id, product_id, name, slug, price_monthly_cents,
                            price_yearly_cents, currency)
         VALUES ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000004',
                 'Other', 'other', 1, 1, 'USD')",
        CHECK_VIOLATION,
    ),
    (
        "duplicate customers (tenant_id, email)",
        "INSERT INTO customers (tenant_id, email)
         VALUES ('00000000-0000-0000-0000-000000000001', 'client@example.com')",
        UNIQUE_VIOLATION,
    ),
    (
        "upper-case customers.email",
        "INSERT INTO customers (tenant_id, email)
         VALUES ('00000000-0000-0000-0000-000000000001', 'Other@example.com')",
        CHECK_VIOLATION,
    ),
    (
        "duplicate orders.stripe_payment_intent_id",
        "INSERT INTO orders (tenant_id, customer_id, plan_id, total_amount_cents,
                             stripe_payment_intent_id)
         VALUES ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000006',
                 '00000000-0000-0000-0000-000000000005', 149, 'pi_123')",
        UNIQUE_VIOLATION,
    ),
    (
        "duplicate orders (tenant_id, external_order_id)",
        "INSERT INTO orders (tenant_id, customer_id, plan_id, total_amount_cents, external_order_id)
         VALUES ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000006',
                 '00000000-0000-0000-0000-000000000005', 149, 'mkt-1')",
        UNIQUE_VIOLATION,
    ),
    (
        "negative orders.total_amount_cents",
        "INSERT INTO orders (tenant_id, customer_id, plan_id, total_amount_cents)
         VALUES ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000006',
                 '00000000-0000-0000-0000-000000000005', -1)",
        CHECK_VIOLATION,
    ),
    (
        "non-ISO orders.currency",
        "INSERT INTO orders (tenant_id, customer_id, plan_id, total_amount_cents, currency)
         VALUES ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000006',
                 '00000000-0000-0000-0000-000000000005', 1, 'dollars')",
        CHECK_VIOLATION,
    ),
    (
        "duplicate subscriptions.order_id",
        "INSERT INTO subscriptions (tenant_id, customer_id, plan_id, order_id, current_period_end)
         VALUES ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000006',
                 '00000000-0000-0000-0000-000000000005', '00000000-0000-0000-0000-000000000007',
                 now())",
        UNIQUE_VIOLATION,
    ),
    (
        "duplicate domains.name",
        "INSERT INTO domains (tenant_id, name)
         VALUES ('00000000-0000-0000-0000-000000000001', 'example.com')",
        UNIQUE_VIOLATION,
    ),
    (
        "upper-case domains.name",
        "INSERT INTO domains (tenant_id, name)
         VALUES ('00000000-0000-0000-0000-000000000001', 'Example.org')",
        CHECK_VIOLATION,
    ),
    (
        "duplicate hosting_accounts.domain_id",
        "INSERT INTO hosting_accounts (tenant_id, domain_id, server_id, system_user, home_dir)
         VALUES ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000008',
                 '00000000-0000-0000-0000-000000000003', 'other', '/home/other')",
        UNIQUE_VIOLATION,
    ),
    (
        "duplicate vps_instances.domain_id",
        "INSERT INTO vps_instances (tenant_id, domain_id, server_id, name)
         VALUES ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000008',
                 '00000000-0000-0000-0000-000000000003', 'vps-2')",
        UNIQUE_VIOLATION,
    ),
    (
        "duplicate mail_accounts.email",
        "INSERT INTO mail_accounts (tenant_id, domain_id, email)
         VALUES ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000008',
                 'info@example.com')",
        UNIQUE_VIOLATION,
    ),
    (
        "upper-case mail_accounts.email",
        "INSERT INTO mail_accounts (tenant_id, domain_id, email)
         VALUES ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000008',
                 'Sales@example.com')",
        CHECK_VIOLATION,
    ),
    (
        "negative jobs.attempts",
        "INSERT INTO jobs (tenant_id, type, payload, attempts)
         VALUES ('00000000-0000-0000-0000-000000000001', 'PROVISION_DNS', '{}', -1)",
        CHECK_VIOLATION,
    ),
    (
        "second agent for a server",
        "INSERT INTO agents (tenant_id, server_id)
         VALUES ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000003')",
        UNIQUE_VIOLATION,
    ),
    (
        "duplicate agent_certificates.serial",
        "INSERT INTO agent_certificates (agent_id, serial, fingerprint_sha256, not_before, not_after)
         VALUES ('00000000-0000-0000-0000-000000000011', '01', 'cd34', now(),
                 now() + interval '1 day')",
        UNIQUE_VIOLATION,
    ),
    (
        "duplicate agent_certificates.fingerprint_sha256",
        "INSERT INTO agent_certificates (agent_id, serial, fingerprint_sha256, not_before, not_after)
         VALUES ('00000000-0000-0000-0000-000000000011', '02', 'ab12', now(),
                 now() + interval '1 day')",
        UNIQUE_VIOLATION,
    ),
    (
        "duplicate enrollment_tokens.token_hash",
        "INSERT INTO enrollment_tokens (tenant_id, server_id, token_hash, expires_at)
         VALUES ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000003',
                 'enroll-hash', now())",
        UNIQUE_VIOLATION,
    ),
    (
        "duplicate refresh_sessions.token_hash",
        "INSERT INTO refresh_sessions (tenant_id, user_id, token_hash, expires_at)
         VALUES ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000002',
                 'refresh-hash', now())",
        UNIQUE_VIOLATION,
    ),
    (
        "duplicate webhook_events (provider, event_id)",
        "INSERT INTO webhook_events (provider, event_id, event_type, payload)
         VALUES ('stripe', 'evt_1', 'payment_intent.succeeded', '{}')",
        UNIQUE_VIOLATION,
    ),
    (
        "duplicate dns_records (zone_id, name, type, content)",
        "INSERT INTO dns_records (tenant_id, zone_id, name, type, content)
         VALUES ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000009',
                 'example.com', 'A', '10.0.0.1')",
        UNIQUE_VIOLATION,
    ),
    (
        "unknown dns_records.type",
        "INSERT INTO dns_records (tenant_id, zone_id, name, type, content)
         VALUES ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000009',
                 'example.com', 'BOGUS', 'x')",
        CHECK_VIOLATION,
    ),
    (
        "zero dns_records.ttl",
        "INSERT INTO dns_records (tenant_id, zone_id, name, type, content, ttl)
         VALUES ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000009',
                 'www.example.com', 'A', '10.0.0.1', 0)",
        CHECK_VIOLATION,
    ),
    (
        "hard delete of a tenant that owns rows",
        "DELETE FROM tenants WHERE slug = 'migrahosting'",
        FOREIGN_KEY_VIOLATION,
    ),
];

#[tokio::test]
async fn schema_has_every_model_field_and_enum_value_of_the_spec() {
    let db = TestDb::create().await;
    let pool = db.pool().await;
    migrator().await.run(&pool).await.expect("apply migrations");

    let mut problems = Vec::new();
    let columns = check_columns(&pool, &mut problems).await;
    check_enums(&pool, &mut problems).await;
    check_defaults(&columns, &mut problems);
    check_foreign_keys(&pool, &columns, &mut problems).await;
    check_updated_at_triggers(&pool, &columns, &mut problems).await;
    assert!(
        problems.is_empty(),
        "the schema differs from the spec:\n  {}",
        problems.join("\n  ")
    );

    sqlx::raw_sql(FIXTURE)
        .execute(&pool)
        .await
        .expect("a valid row in every table is accepted");
    sqlx::raw_sql(LATER_FIXTURE)
        .execute(&pool)
        .await
        .expect("a valid row in every later table is accepted");
    check_updated_at_is_maintained(&pool, &columns, &mut problems).await;
    check_rejections(&pool, &mut problems).await;
    assert!(
        problems.is_empty(),
        "the schema does not enforce the rules of the flows:\n  {}",
        problems.join("\n  ")
    );

    pool.close().await;
    db.cleanup().await;
}

#[tokio::test]
async fn migrations_apply_twice_without_change() {
    let db = TestDb::create().await;
    let pool = db.pool().await;
    let migrator = migrator().await;
    migrator.run(&pool).await.expect("first run");
    let schema_before = schema_snapshot(&pool).await;
    let applied_before = applied_migrations(&pool).await;
    assert_eq!(
        applied_before.len(),
        migrator.iter().count(),
        "every migration is recorded as applied"
    );

    migrator.run(&pool).await.expect("second run");
    // A restarted panel resolves the directory again.
    self::migrator()
        .await
        .run(&pool)
        .await
        .expect("run with a freshly resolved migrator");

    assert_eq!(
        applied_migrations(&pool).await,
        applied_before,
        "no migration ran again"
    );
    assert_eq!(
        schema_snapshot(&pool).await,
        schema_before,
        "the schema did not change"
    );

    pool.close().await;
    db.cleanup().await;
}

/// The first migration of typed jobs.
const TYPED_JOBS: i64 = 20261201000001;

#[tokio::test]
async fn the_typed_jobs_migration_moves_first_wave_rows() {
    let db = TestDb::create().await;
    let pool = db.pool().await;
    let mut first_wave = migrator().await;
    first_wave.migrations = first_wave
        .migrations
        .iter()
        .filter(|m| m.version < TYPED_JOBS)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    first_wave
        .run(&pool)
        .await
        .expect("the first wave's migrations");
    sqlx::raw_sql(FIXTURE)
        .execute(&pool)
        .await
        .expect("fixture");
    let id = |table: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, uuid::Uuid>(AssertSqlSafe(format!(
                "SELECT id FROM {table} LIMIT 1"
            )))
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let (hosting, mail, backup, vps) = (
        id("hosting_accounts").await,
        id("mail_accounts").await,
        id("backup_jobs").await,
        id("vps_instances").await,
    );
    let subscription = id("subscriptions").await;
    let (tenant, order, domain, zone) = (
        "00000000-0000-0000-0000-000000000001",
        "00000000-0000-0000-0000-000000000007",
        "00000000-0000-0000-0000-000000000008",
        "00000000-0000-0000-0000-000000000009",
    );
    let user = "00000000-0000-0000-0000-000000000002";
    let hash = "$argon2id$v=19$m=65536,t=3,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";
    let order_payload = serde_json::json!({
        "orderId": order, "subscriptionId": subscription,
        "customerId": "00000000-0000-0000-0000-000000000006",
        "customerEmail": "client@example.com", "domainId": domain, "domain": "example.com",
        "planId": "00000000-0000-0000-0000-000000000005", "planSlug": "starter-monthly",
        "productType": "SHARED_HOSTING", "limits": {"emails": 1, "phpVersion": "8.3"},
    });
    let mailbox = serde_json::json!({
        "mailAccountId": mail, "email": "info@example.com", "domainId": domain, "requestedBy": user,
    });
    let with = |base: &serde_json::Value, extra: serde_json::Value| {
        let mut v = base.clone();
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    // (type, payload as the first wave wrote it, the kind it must get)
    let rows = [
        ("PROVISION_DNS", order_payload.clone(), "orderZone"),
        ("PROVISION_HOSTING", order_payload.clone(), "orderSite"),
        ("PROVISION_MAIL", order_payload.clone(), "orderMailbox"),
        (
            "PROVISION_DNS",
            serde_json::json!({"zoneId": zone, "domainId": domain,
            "domain": "example.com", "requestedBy": user}),
            "syncZone",
        ),
        (
            "PROVISION_HOSTING",
            serde_json::json!({"domain": "example.com", "domainId": domain,
            "productType": "SHARED_HOSTING", "limits": {"phpVersion": "8.1"},
            "requestedBy": user}),
            "createHostingAccount",
        ),
        (
            "SUSPEND_ACCOUNT",
            serde_json::json!({"hostingAccountId": hosting,
            "domain": "example.com", "domainId": domain, "requestedBy": user}),
            "suspendSite",
        ),
        (
            "TERMINATE_ACCOUNT",
            serde_json::json!({"hostingAccountId": hosting,
            "domain": "example.com", "domainId": domain, "requestedBy": user}),
            "terminateSite",
        ),
        (
            "PROVISION_MAIL",
            with(&mailbox, serde_json::json!({"passwordHash": hash})),
            "createMailAccount",
        ),
        (
            "PROVISION_MAIL",
            with(
                &mailbox,
                serde_json::json!({"passwordHash": hash, "reset": true}),
            ),
            "resetMailPassword",
        ),
        ("SUSPEND_ACCOUNT", mailbox.clone(), "disableMailbox"),
        ("UNSUSPEND_ACCOUNT", mailbox.clone(), "enableMailbox"),
        (
            "PROVISION_VPS",
            serde_json::json!({"vpsId": vps,
            "serverId": "00000000-0000-0000-0000-000000000003", "action": "reboot",
            "requestedBy": user}),
            "vpsAction",
        ),
        (
            "RUN_BACKUP",
            serde_json::json!({"backupJobId": backup, "requestedBy": user}),
            "runBackup",
        ),
        // An id of a row that is gone stays out of the typed column.
        (
            "RUN_BACKUP",
            serde_json::json!({"backupJobId": uuid::Uuid::new_v4(),
            "requestedBy": user}),
            "runBackup",
        ),
    ];
    let mut ids = Vec::new();
    for (kind, payload, _) in &rows {
        let id: uuid::Uuid = sqlx::query_scalar(
            "INSERT INTO jobs (tenant_id, type, payload) VALUES ($1::uuid, $2::job_type, $3)
             RETURNING id",
        )
        .bind(tenant)
        .bind(kind)
        .bind(payload)
        .fetch_one(&pool)
        .await
        .unwrap();
        ids.push(id);
    }

    migrator()
        .await
        .run(&pool)
        .await
        .expect("the typed jobs migration");

    type Row = (
        String,
        serde_json::Value,
        Option<uuid::Uuid>,
        Option<uuid::Uuid>,
        Option<uuid::Uuid>,
        Option<uuid::Uuid>,
        Option<uuid::Uuid>,
        Option<uuid::Uuid>,
        Option<uuid::Uuid>,
    );
    for (id, (kind, _, expected)) in ids.iter().zip(&rows) {
        let (
            stored_type,
            payload,
            domain_id,
            subscription_id,
            hosting_id,
            mail_id,
            zone_id,
            backup_id,
            vps_id,
        ): Row = sqlx::query_as(
            "SELECT type::text, payload, domain_id, subscription_id, hosting_account_id,
                        mail_account_id, dns_zone_id, backup_job_id, vps_id
                   FROM jobs WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(payload["kind"], *expected, "{kind}: {payload}");
        let stored_type: mpanel::model::JobType =
            serde_json::from_value(serde_json::json!(stored_type)).unwrap();
        let typed = mpanel::jobs::payload::JobPayload::from_stored(stored_type, payload.clone())
            .unwrap_or_else(|e| panic!("{expected} does not decode after the migration: {e}"));
        let refs = typed.refs();
        let columns = [
            domain_id,
            subscription_id,
            hosting_id,
            mail_id,
            zone_id,
            backup_id,
            vps_id,
        ];
        let from_payload = [
            refs.domain_id,
            refs.subscription_id,
            refs.hosting_account_id,
            refs.mail_account_id,
            refs.dns_zone_id,
            refs.backup_job_id.filter(|b| *b == backup),
            refs.vps_id,
        ];
        assert_eq!(
            columns, from_payload,
            "{expected}: the typed columns are the payload's refs"
        );
    }
    let hosting_create: serde_json::Value = sqlx::query_scalar(
        "SELECT payload FROM jobs WHERE payload->>'kind' = 'createHostingAccount'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(hosting_create["phpVersion"], "8.1", "{hosting_create}");
    assert!(hosting_create.get("limits").is_none(), "{hosting_create}");

    pool.close().await;
    db.cleanup().await;
}

async fn migrator() -> Migrator {
    Migrator::new(Path::new(MIGRATIONS))
        .await
        .expect("read the migrations directory")
}

/// What the catalog says about one column.
struct Column {
    udt_name: String,
    nullable: bool,
    default: Option<String>,
}

/// All columns of the public schema by (table, column); reports every expected column that is
/// missing or differs in type or nullability.
async fn check_columns(
    pool: &PgPool,
    problems: &mut Vec<String>,
) -> BTreeMap<(String, String), Column> {
    let rows: Vec<(String, String, String, bool, Option<String>)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, udt_name::text, is_nullable = 'YES',
                column_default::text
         FROM information_schema.columns
         WHERE table_schema = 'public'",
    )
    .fetch_all(pool)
    .await
    .expect("read information_schema.columns");
    let columns: BTreeMap<_, _> = rows
        .into_iter()
        .map(|(table, column, udt_name, nullable, default)| {
            let info = Column {
                udt_name,
                nullable,
                default,
            };
            ((table, column), info)
        })
        .collect();
    let tables: BTreeSet<&str> = columns.keys().map(|(table, _)| table.as_str()).collect();

    for (table, _) in SPEC_TABLES.iter().chain(FLOW_TABLES) {
        if !tables.contains(table) {
            problems.push(format!("missing table {table}"));
        }
    }
    for (table, expected) in SPEC_TABLES.iter().chain(FLOW_COLUMNS).chain(FLOW_TABLES) {
        if !tables.contains(table) {
            continue;
        }
        for &(column, udt_name, nullable) in expected.iter() {
            let Some(found) = columns.get(&(table.to_string(), column.to_string())) else {
                problems.push(format!("missing column {table}.{column}"));
                continue;
            };
            if found.udt_name != udt_name {
                problems.push(format!(
                    "column {table}.{column} is {}, expected {udt_name}",
                    found.udt_name
                ));
            }
            if found.nullable != nullable {
                let expected = if nullable { "nullable" } else { "NOT NULL" };
                problems.push(format!("column {table}.{column} should be {expected}"));
            }
        }
    }
    columns
}

/// Every enum of the spec with every value, in the spec's order (values added later by other
/// migrations are tolerated).
async fn check_enums(pool: &PgPool, problems: &mut Vec<String>) {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT t.typname::text, e.enumlabel::text
         FROM pg_enum e
         JOIN pg_type t ON t.oid = e.enumtypid
         JOIN pg_namespace n ON n.oid = t.typnamespace
         WHERE n.nspname = 'public'
         ORDER BY t.typname, e.enumsortorder",
    )
    .fetch_all(pool)
    .await
    .expect("read pg_enum");
    let mut enums: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in rows {
        enums.entry(name).or_default().push(value);
    }

    for &(name, expected) in ENUMS {
        let Some(values) = enums.get(name) else {
            problems.push(format!("missing enum {name}"));
            continue;
        };
        for value in expected {
            if !values.iter().any(|v| v == value) {
                problems.push(format!("missing enum value {name}.{value}"));
            }
        }
        let in_spec_order: Vec<&str> = values
            .iter()
            .map(String::as_str)
            .filter(|v| expected.contains(v))
            .collect();
        if in_spec_order.len() == expected.len() && in_spec_order != expected {
            problems.push(format!(
                "enum {name} has its values in the order {in_spec_order:?}, expected {expected:?}"
            ));
        }
    }
}

fn check_defaults(columns: &BTreeMap<(String, String), Column>, problems: &mut Vec<String>) {
    let mut expected: Vec<(&str, &str, &str)> = DEFAULTS.to_vec();
    for &(table, table_columns) in SPEC_TABLES.iter().chain(FLOW_TABLES) {
        for &(column, udt_name, _) in table_columns.iter() {
            match column {
                "id" if udt_name == "uuid" => expected.push((table, column, "gen_random_uuid()")),
                "created_at" | "updated_at" => expected.push((table, column, "now()")),
                _ => {}
            }
        }
    }
    for (table, column, default) in expected {
        let Some(found) = columns.get(&(table.to_string(), column.to_string())) else {
            continue; // reported as a missing column
        };
        if found.default.as_deref() != Some(default) {
            problems.push(format!(
                "column {table}.{column} has default {:?}, expected {default:?}",
                found.default
            ));
        }
    }
}

/// The relations of the spec and the flows, their ON DELETE rule, and an index leading with
/// every foreign-key column (lookups by parent, and RESTRICT checks without a table scan).
async fn check_foreign_keys(
    pool: &PgPool,
    columns: &BTreeMap<(String, String), Column>,
    problems: &mut Vec<String>,
) {
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT cl.relname::text, a.attname::text, ref.relname::text,
                CASE c.confdeltype WHEN 'r' THEN 'RESTRICT' WHEN 'c' THEN 'CASCADE'
                                   WHEN 'a' THEN 'NO ACTION' WHEN 'n' THEN 'SET NULL'
                                   ELSE 'SET DEFAULT' END
         FROM pg_constraint c
         JOIN pg_class cl ON cl.oid = c.conrelid
         JOIN pg_namespace n ON n.oid = cl.relnamespace
         JOIN pg_class ref ON ref.oid = c.confrelid
         JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
         WHERE c.contype = 'f' AND n.nspname = 'public' AND cardinality(c.conkey) = 1",
    )
    .fetch_all(pool)
    .await
    .expect("read foreign keys from pg_constraint");
    let found: BTreeMap<(String, String), (String, String)> = rows
        .into_iter()
        .map(|(table, column, referenced, on_delete)| ((table, column), (referenced, on_delete)))
        .collect();

    let tenant_keys = columns
        .keys()
        .filter(|(table, column)| column == "tenant_id" && !table.starts_with('_'))
        .map(|(table, _)| (table.as_str(), "tenant_id", "tenants", "RESTRICT"));
    for (table, column, referenced, on_delete) in FOREIGN_KEYS.iter().copied().chain(tenant_keys) {
        match found.get(&(table.to_string(), column.to_string())) {
            None => problems.push(format!(
                "missing foreign key {table}.{column} -> {referenced}"
            )),
            Some((found_ref, found_rule)) => {
                if found_ref != referenced {
                    problems.push(format!(
                        "foreign key {table}.{column} references {found_ref}, expected {referenced}"
                    ));
                }
                if found_rule != on_delete {
                    problems.push(format!(
                        "foreign key {table}.{column} is ON DELETE {found_rule}, expected {on_delete}"
                    ));
                }
            }
        }
    }

    let leading: Vec<(String, String)> = sqlx::query_as(
        "SELECT cl.relname::text, a.attname::text
         FROM pg_index i
         JOIN pg_class cl ON cl.oid = i.indrelid
         JOIN pg_namespace n ON n.oid = cl.relnamespace
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
         WHERE n.nspname = 'public' AND i.indpred IS NULL",
    )
    .fetch_all(pool)
    .await
    .expect("read indexes from pg_index");
    let indexed: BTreeSet<(String, String)> = leading.into_iter().collect();
    for key in found.keys() {
        if !indexed.contains(key) {
            problems.push(format!(
                "foreign key {}.{} has no index leading with it",
                key.0, key.1
            ));
        }
    }
}

/// Every table with updated_at has `<table>_set_updated_at`: BEFORE UPDATE, FOR EACH ROW,
/// calling set_updated_at().
async fn check_updated_at_triggers(
    pool: &PgPool,
    columns: &BTreeMap<(String, String), Column>,
    problems: &mut Vec<String>,
) {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT event_object_table::text, trigger_name::text
         FROM information_schema.triggers
         WHERE trigger_schema = 'public'
           AND event_manipulation = 'UPDATE'
           AND action_timing = 'BEFORE'
           AND action_orientation = 'ROW'
           AND action_statement = 'EXECUTE FUNCTION set_updated_at()'",
    )
    .fetch_all(pool)
    .await
    .expect("read information_schema.triggers");
    let triggers: BTreeSet<(String, String)> = rows.into_iter().collect();
    for table in tables_with_updated_at(columns) {
        let name = format!("{table}_set_updated_at");
        if !triggers.contains(&(table.to_owned(), name.clone())) {
            problems.push(format!(
                "table {table} has no trigger {name} (BEFORE UPDATE FOR EACH ROW EXECUTE FUNCTION set_updated_at())"
            ));
        }
    }
}

/// Updates really refresh updated_at: across transactions on tenants, and on every table with
/// the column by trying to set it to the past.
async fn check_updated_at_is_maintained(
    pool: &PgPool,
    columns: &BTreeMap<(String, String), Column>,
    problems: &mut Vec<String>,
) {
    // The fixture's transaction wrote the tenant; this later one must move updated_at on.
    let inserted: DateTime<Utc> =
        sqlx::query_scalar("SELECT updated_at FROM tenants WHERE slug = 'migrahosting'")
            .fetch_one(pool)
            .await
            .expect("read the tenant");
    let updated: DateTime<Utc> = sqlx::query_scalar(
        "UPDATE tenants SET name = 'MigraHosting LLC' WHERE slug = 'migrahosting'
         RETURNING updated_at",
    )
    .fetch_one(pool)
    .await
    .expect("update the tenant");
    if updated <= inserted {
        problems.push(format!(
            "tenants.updated_at did not move on update: {inserted} then {updated}"
        ));
    }

    for table in tables_with_updated_at(columns) {
        let refreshed: Vec<bool> = sqlx::query_scalar(AssertSqlSafe(format!(
            "UPDATE {table} SET updated_at = '2000-01-01T00:00:00Z' RETURNING updated_at = now()"
        )))
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("update {table}: {e}"));
        if refreshed.is_empty() {
            problems.push(format!(
                "the fixture has no row in {table} to exercise its trigger"
            ));
        } else if refreshed.contains(&false) {
            problems.push(format!(
                "an update of {table} does not set updated_at = now()"
            ));
        }
    }
}

async fn check_rejections(pool: &PgPool, problems: &mut Vec<String>) {
    for &(what, sql, expected) in REJECTED {
        match sqlx::query(sql).execute(pool).await {
            Ok(_) => problems.push(format!("{what}: accepted, expected SQLSTATE {expected}")),
            Err(err) => {
                let code = err.as_database_error().and_then(|e| e.code());
                if code.as_deref() != Some(expected) {
                    problems.push(format!(
                        "{what}: failed with {err}, expected SQLSTATE {expected}"
                    ));
                }
            }
        }
    }
}

fn tables_with_updated_at(columns: &BTreeMap<(String, String), Column>) -> Vec<&str> {
    columns
        .keys()
        .filter(|(_, column)| column == "updated_at")
        .map(|(table, _)| table.as_str())
        .collect()
}

/// The whole public schema as sorted lines: columns, constraints, indexes, triggers, enums.
async fn schema_snapshot(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT format('column %s.%s %s nullable=%s default=%s',
                       table_name, column_name, udt_name, is_nullable, column_default)
         FROM information_schema.columns WHERE table_schema = 'public'
         UNION ALL
         SELECT format('constraint %s %s %s', conrelid::regclass, conname, pg_get_constraintdef(oid))
         FROM pg_constraint WHERE connamespace = 'public'::regnamespace
         UNION ALL
         SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'public'
         UNION ALL
         SELECT format('trigger %s %s', tgrelid::regclass, pg_get_triggerdef(oid))
         FROM pg_trigger WHERE NOT tgisinternal
         UNION ALL
         SELECT format('enum %s %s', t.typname, e.enumlabel)
         FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("snapshot the schema")
}

/// (version, installed_on, success) of every applied migration.
async fn applied_migrations(pool: &PgPool) -> Vec<(i64, DateTime<Utc>, bool)> {
    sqlx::query_as("SELECT version, installed_on, success FROM _sqlx_migrations ORDER BY version")
        .fetch_all(pool)
        .await
        .expect("read _sqlx_migrations")
}
