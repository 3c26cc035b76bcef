//! A duty of every panel process (`crate::duties`): the tenant's admins hear of a site
//! certificate that expires within [`WARN_BEFORE`] and that its agent could not renew —
//! renewals failed, or none was reported an hour after it was due (an agent offline renews
//! nothing). Once per certificate: the serial warned of is kept, and a renewed certificate
//! has another. Several processes may run it at once: rows are taken `FOR UPDATE SKIP
//! LOCKED` and marked in the same transaction.

use chrono::{DateTime, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    app::AppState,
    notify::{self, ExpiringCertificate},
    util::pause,
};

/// Let's Encrypt's own reminder comes 20 days before; renewal starts at a third of the
/// lifetime left (30 days of 90), so this leaves two weeks of failed retries before anyone
/// is told, and two weeks to act.
pub const WARN_BEFORE: TimeDelta = TimeDelta::days(14);
const BATCH: i64 = 200;

pub async fn run(state: AppState, shutdown: CancellationToken) {
    let every = state.config.jobs.sweep_interval;
    loop {
        if let Err(e) = warn_expiring(&state).await {
            tracing::warn!(
                error = format!("{e:#}"),
                "warning of expiring certificates failed; trying again"
            );
        }
        if pause(&shutdown, every).await {
            return;
        }
    }
}

#[derive(sqlx::FromRow)]
struct Expiring {
    id: Uuid,
    tenant_id: Uuid,
    domain: String,
    serial: String,
    not_after: DateTime<Utc>,
    renewal_failures: i32,
    last_error: Option<String>,
    next_attempt_at: Option<DateTime<Utc>>,
}

/// One batch; the number of certificates warned of.
pub async fn warn_expiring(state: &AppState) -> sqlx::Result<usize> {
    let mut tx = state.db.begin().await?;
    let due: Vec<Expiring> = sqlx::query_as(
        "SELECT c.id, c.tenant_id, d.name AS domain, c.serial, c.not_after, c.renewal_failures,
                c.last_error, c.next_attempt_at
           FROM site_certificates c
           JOIN hosting_accounts h ON h.id = c.hosting_account_id
           JOIN domains d ON d.id = h.domain_id
          WHERE c.status = 'ACTIVE' AND c.serial IS NOT NULL
            AND c.not_after <= now() + make_interval(secs => $1)
            AND c.expiry_warned_serial IS DISTINCT FROM c.serial
            AND (c.renewal_failures > 0 OR c.renew_at <= now() - interval '1 hour')
            AND h.status <> 'TERMINATED'
          ORDER BY c.not_after
          LIMIT $2
          FOR UPDATE OF c SKIP LOCKED",
    )
    .bind(WARN_BEFORE.as_seconds_f64())
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    for cert in &due {
        notify::queue_certificate_expiring(
            &mut tx,
            &state.sealer,
            &state.config,
            &ExpiringCertificate {
                tenant_id: cert.tenant_id,
                certificate_id: cert.id,
                domain: &cert.domain,
                serial: &cert.serial,
                not_after: cert.not_after,
                failures: cert.renewal_failures,
                last_error: cert.last_error.as_deref(),
                next_attempt_at: cert.next_attempt_at,
            },
        )
        .await?;
        sqlx::query("UPDATE site_certificates SET expiry_warned_serial = serial WHERE id = $1")
            .bind(cert.id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    if !due.is_empty() {
        tracing::info!(
            certificates = due.len(),
            "warned of certificates expiring unrenewed"
        );
    }
    Ok(due.len())
}
