//! E-mail that must not be lost: the welcome e-mail carrying an order's credentials,
//! operators' notice of a job that gave up or of a certificate expiring unrenewed, and
//! customers' notices of their subscription's lifecycle ([`queue_subscription_notice`]).
//!
//! Everything goes through PostgreSQL. A provisioning job that generated a secret stashes it
//! sealed in `order_credentials` ([`stash_credential`]); when the order's last job succeeds,
//! [`queue_welcome`] composes the e-mail, seals its body into `outbound_emails` and deletes
//! the stash, in the job's own transaction. [`run_outbox`] (on every worker) delivers due
//! rows, one row lock each (`FOR UPDATE SKIP LOCKED`, so several workers never send one
//! e-mail twice), retries with backoff and clears the body once it is sent.
//!
//! Never: a secret or an e-mail body in clear in the database or in a log line. Subjects and
//! recipients are not secret; bodies are.

mod compose;
mod lifecycle;
pub mod mailer;
mod outbox;

use sqlx::PgConnection;
use uuid::Uuid;
use zeroize::Zeroizing;

pub use lifecycle::{Notice, queue_subscription_notice};
pub use outbox::run as run_outbox;

use crate::{config::Config, secrets::Sealer};

/// Keeps `secret` sealed until the order's welcome e-mail is composed. A retried job
/// replaces its earlier secret for the same `(order, kind, label)`.
pub async fn stash_credential(
    tx: &mut PgConnection,
    sealer: &Sealer,
    tenant_id: Uuid,
    order_id: Uuid,
    kind: &str,
    label: &str,
    secret: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO order_credentials (tenant_id, order_id, kind, label, sealed)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (order_id, kind, label)
         DO UPDATE SET sealed = EXCLUDED.sealed, created_at = now()",
    )
    .bind(tenant_id)
    .bind(order_id)
    .bind(kind)
    .bind(label)
    .bind(sealer.seal(secret.as_bytes()))
    .execute(tx)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct OrderFacts {
    tenant_id: Uuid,
    tenant_name: String,
    customer_email: String,
    customer_name: Option<String>,
    plan_name: String,
    product_name: String,
    domain_id: Option<Uuid>,
    domain: Option<String>,
}

#[derive(sqlx::FromRow)]
struct HostingFacts {
    server_name: String,
    server_ip: String,
    system_user: String,
    home_dir: String,
    php_version: Option<String>,
    /// The site serves a certificate of ours.
    https: bool,
}

/// Queues the welcome e-mail of a fully provisioned order to its customer — what was set up
/// and the stashed credentials — and deletes the stash, in the caller's transaction. Queued
/// once per order (`welcome:<orderId>`); a credential that no longer opens (CREDENTIALS_KEY
/// changed) becomes a sentence asking the customer to have support reset it.
pub async fn queue_welcome(
    tx: &mut PgConnection,
    sealer: &Sealer,
    config: &Config,
    order_id: Uuid,
) -> sqlx::Result<()> {
    let Some(order): Option<OrderFacts> = sqlx::query_as(
        "SELECT o.tenant_id, t.name AS tenant_name, c.email AS customer_email,
                c.full_name AS customer_name, p.name AS plan_name, pr.name AS product_name,
                d.id AS domain_id, d.name AS domain
           FROM orders o
           JOIN tenants t ON t.id = o.tenant_id
           JOIN customers c ON c.id = o.customer_id
           JOIN plans p ON p.id = o.plan_id
           JOIN products pr ON pr.id = p.product_id
           LEFT JOIN subscriptions s ON s.order_id = o.id
           LEFT JOIN domains d ON d.id = s.domain_id
          WHERE o.id = $1",
    )
    .bind(order_id)
    .fetch_optional(&mut *tx)
    .await?
    else {
        tracing::warn!(%order_id, "no such order: welcome e-mail not queued");
        return Ok(());
    };

    let (hosting, mailboxes, dns_zone) = match order.domain_id {
        Some(domain_id) => {
            let hosting: Option<HostingFacts> = sqlx::query_as(
                "SELECT s.name AS server_name, s.ip_address AS server_ip, h.system_user,
                        h.home_dir, h.php_version,
                        EXISTS (SELECT 1 FROM site_certificates c
                                 WHERE c.hosting_account_id = h.id AND c.status = 'ACTIVE')
                            AS https
                   FROM hosting_accounts h JOIN servers s ON s.id = h.server_id
                  WHERE h.domain_id = $1",
            )
            .bind(domain_id)
            .fetch_optional(&mut *tx)
            .await?;
            let mailboxes: Vec<String> = sqlx::query_scalar(
                "SELECT email FROM mail_accounts WHERE domain_id = $1 AND status <> 'DISABLED'
                  ORDER BY email",
            )
            .bind(domain_id)
            .fetch_all(&mut *tx)
            .await?;
            let dns_zone: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM dns_zones WHERE domain_id = $1)")
                    .bind(domain_id)
                    .fetch_one(&mut *tx)
                    .await?;
            (hosting, mailboxes, dns_zone)
        }
        None => (None, Vec::new(), false),
    };

    // Read and delete in one statement: once composed, the stash has done its job.
    let mut stashed: Vec<(String, String, Vec<u8>)> = sqlx::query_as(
        "DELETE FROM order_credentials WHERE order_id = $1 RETURNING kind, label, sealed",
    )
    .bind(order_id)
    .fetch_all(&mut *tx)
    .await?;
    stashed.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let stashed_count = stashed.len();
    let credentials = stashed
        .into_iter()
        .map(|(kind, label, sealed)| {
            let secret = sealer
                .open(&sealed)
                .ok()
                .and_then(|plain| std::str::from_utf8(&plain).ok().map(str::to_owned))
                .map(Zeroizing::new);
            if secret.is_none() {
                tracing::warn!(%order_id, kind, "a stashed credential does not open (CREDENTIALS_KEY changed?); the customer is asked to have it reset");
            }
            compose::Credential {
                kind,
                label,
                secret,
            }
        })
        .collect();

    let (subject, body) = compose::welcome(&compose::Welcome {
        customer_name: order.customer_name,
        tenant_name: order.tenant_name,
        domain: order.domain,
        plan_name: order.plan_name,
        product_name: order.product_name,
        hosting: hosting.map(|h| compose::Hosting {
            server_name: h.server_name,
            server_ip: h.server_ip,
            system_user: h.system_user,
            home_dir: h.home_dir,
            php_version: h.php_version,
            https: h.https,
        }),
        mailboxes,
        dns_zone,
        nameservers: config
            .dns
            .nameservers
            .iter()
            .map(|ns| ns.as_str().to_owned())
            .collect(),
        credentials,
        app_url: app_url(config),
    });
    let queued = queue(
        tx,
        sealer,
        Queued {
            tenant_id: order.tenant_id,
            order_id: Some(order_id),
            kind: "WELCOME",
            dedupe_key: format!("welcome:{order_id}"),
            to: vec![order.customer_email],
            subject,
            body: body.as_bytes(),
        },
    )
    .await?;
    if !queued && stashed_count > 0 {
        // A job of the order ran again after its welcome e-mail was queued.
        tracing::warn!(%order_id, credentials = stashed_count, "the order's welcome e-mail went out earlier: newly stashed credentials were dropped, not sent");
    }
    Ok(())
}

/// The tenant's active SUPER_ADMIN and ADMIN users' addresses and the tenant's name; empty
/// when it has none.
async fn tenant_admins(
    tx: &mut PgConnection,
    tenant_id: Uuid,
) -> sqlx::Result<Option<(Vec<String>, String)>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT u.email, t.name FROM users u JOIN tenants t ON t.id = u.tenant_id
          WHERE u.tenant_id = $1 AND u.is_active AND u.role IN ('SUPER_ADMIN', 'ADMIN')
          ORDER BY u.email",
    )
    .bind(tenant_id)
    .fetch_all(&mut *tx)
    .await?;
    let Some((_, tenant_name)) = rows.first() else {
        return Ok(None);
    };
    let tenant_name = tenant_name.clone();
    Ok(Some((
        rows.into_iter().map(|(e, _)| e).collect(),
        tenant_name,
    )))
}

/// A site certificate about to expire that its agent could not renew.
pub struct ExpiringCertificate<'a> {
    pub tenant_id: Uuid,
    pub certificate_id: Uuid,
    pub domain: &'a str,
    pub serial: &'a str,
    pub not_after: chrono::DateTime<chrono::Utc>,
    pub failures: i32,
    pub last_error: Option<&'a str>,
    pub next_attempt_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Queues the warning of `cert` to the tenant's admins, once per certificate (serial);
/// nothing when the tenant has none.
pub async fn queue_certificate_expiring(
    tx: &mut PgConnection,
    sealer: &Sealer,
    config: &Config,
    cert: &ExpiringCertificate<'_>,
) -> sqlx::Result<()> {
    let Some((to, tenant_name)) = tenant_admins(tx, cert.tenant_id).await? else {
        return Ok(());
    };
    let (subject, body) = compose::certificate_expiring(&tenant_name, cert, &app_url(config));
    queue(
        tx,
        sealer,
        Queued {
            tenant_id: cert.tenant_id,
            order_id: None,
            kind: "CERTIFICATE_EXPIRING",
            dedupe_key: format!(
                "certificate-expiring:{}:{}",
                cert.certificate_id, cert.serial
            ),
            to,
            subject,
            body: body.as_bytes(),
        },
    )
    .await?;
    Ok(())
}

/// Queues a notice of a job that ended FAILED to the tenant's active SUPER_ADMIN and ADMIN
/// users; nothing when the tenant has none. Once per failure: the dedupe key counts the
/// job's FAILED log entries, since a retried job starts its attempts at 0 again.
#[allow(clippy::too_many_arguments)]
pub async fn queue_job_failed(
    tx: &mut PgConnection,
    sealer: &Sealer,
    config: &Config,
    tenant_id: Uuid,
    job_id: Uuid,
    job_type: &str,
    attempts: i32,
    error: &str,
) -> sqlx::Result<()> {
    let Some((to, tenant_name)) = tenant_admins(tx, tenant_id).await? else {
        return Ok(());
    };
    let failures: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_logs WHERE job_id = $1 AND to_status = 'FAILED'",
    )
    .bind(job_id)
    .fetch_one(&mut *tx)
    .await?;
    let app_url = app_url(config);
    let (subject, body) = compose::job_failed(&compose::JobFailed {
        tenant_name: &tenant_name,
        job_id,
        job_type,
        attempts,
        error,
        app_url: &app_url,
    });
    queue(
        tx,
        sealer,
        Queued {
            tenant_id,
            order_id: None,
            kind: "JOB_FAILED",
            dedupe_key: format!("job-failed:{job_id}:{failures}:{attempts}"),
            to,
            subject,
            body: body.as_bytes(),
        },
    )
    .await?;
    Ok(())
}

/// One row for `outbound_emails`.
struct Queued<'a> {
    tenant_id: Uuid,
    order_id: Option<Uuid>,
    kind: &'static str,
    dedupe_key: String,
    to: Vec<String>,
    subject: String,
    body: &'a [u8],
}

/// Inserts the e-mail with its body sealed, unless one with the same dedupe key exists;
/// true when inserted.
async fn queue(tx: &mut PgConnection, sealer: &Sealer, e: Queued<'_>) -> sqlx::Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO outbound_emails (tenant_id, order_id, kind, dedupe_key, to_addresses,
                                      subject, sealed_body)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (dedupe_key) DO NOTHING",
    )
    .bind(e.tenant_id)
    .bind(e.order_id)
    .bind(e.kind)
    .bind(&e.dedupe_key)
    .bind(&e.to)
    .bind(&e.subject)
    .bind(sealer.seal(e.body))
    .execute(tx)
    .await?;
    let inserted = inserted.rows_affected() == 1;
    if inserted {
        tracing::info!(kind = e.kind, dedupe_key = %e.dedupe_key, recipients = e.to.len(), "e-mail queued");
    }
    Ok(inserted)
}

/// `APP_URL` without its trailing slash, for links.
fn app_url(config: &Config) -> String {
    config.app_url.as_str().trim_end_matches('/').to_owned()
}
