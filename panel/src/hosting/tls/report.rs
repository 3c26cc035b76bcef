//! What a web agent reports, unasked, of the certificates it renews on its own
//! (`AgentMessage::CertificateStatus`): the certificate served, the renewals that failed in a
//! row and when it tries next. Only sites of the reporting agent's own server are touched,
//! and a status recorded before the one already kept changes nothing (reports of one
//! certificate can arrive out of order across reconnects and replicas).

use mpanel_protocol::web::CertificateStatus;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::audit::{self, Entry};

/// What became of a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// A new certificate was served (a renewal succeeded).
    Renewed,
    /// A renewal failed again.
    Failed,
    /// Kept; nothing an operator needs to hear of.
    Updated,
    /// No such site on this server, or a newer state is already kept.
    Ignored,
}

#[derive(sqlx::FromRow)]
struct Kept {
    id: Uuid,
    tenant_id: Uuid,
    hosting_account_id: Uuid,
    serial: Option<String>,
    renewal_failures: i32,
}

/// Records `status` as reported by the agent of `server_id`.
pub async fn record(
    db: &PgPool,
    server_id: Uuid,
    status: &CertificateStatus,
) -> sqlx::Result<Recorded> {
    let mut tx = db.begin().await?;
    let kept: Option<Kept> = sqlx::query_as(
        "SELECT c.id, c.tenant_id, c.hosting_account_id, c.serial, c.renewal_failures
           FROM site_certificates c
           JOIN hosting_accounts h ON h.id = c.hosting_account_id
           JOIN domains d ON d.id = h.domain_id
          WHERE h.server_id = $1 AND d.name = $2 AND h.status <> 'TERMINATED'
            AND (c.reported_at IS NULL OR c.reported_at < $3)
          FOR UPDATE OF c",
    )
    .bind(server_id)
    .bind(status.domain.as_str())
    .bind(status.recorded_at)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(kept) = kept else {
        return Ok(Recorded::Ignored);
    };
    let failures = i32::try_from(status.failures).unwrap_or(i32::MAX);
    let last_error = status
        .last_error
        .as_ref()
        .filter(|_| failures > 0)
        .map(|e| e.as_str().to_owned());
    sqlx::query(
        "UPDATE site_certificates
            SET status = 'ACTIVE', issuer = $2, serial = $3, not_before = $4, not_after = $5,
                renew_at = $6, renewal_failures = $7, last_error = $8, next_attempt_at = $9,
                reported_at = $10
          WHERE id = $1",
    )
    .bind(kept.id)
    .bind(status.issuer.as_str())
    .bind(status.serial.as_str())
    .bind(status.not_before)
    .bind(status.not_after)
    .bind(status.renew_at)
    .bind(failures)
    .bind(&last_error)
    .bind(status.next_attempt_at)
    .bind(status.recorded_at)
    .execute(&mut *tx)
    .await?;
    let renewed = kept.serial.as_deref() != Some(status.serial.as_str());
    let outcome = if renewed {
        Recorded::Renewed
    } else if failures > kept.renewal_failures {
        Recorded::Failed
    } else {
        Recorded::Updated
    };
    let action = match outcome {
        Recorded::Renewed => Some("certificate.renewed"),
        Recorded::Failed => Some("certificate.renewal_failed"),
        _ => None,
    };
    if let Some(action) = action {
        audit::record(
            &mut tx,
            Entry::system(
                kept.tenant_id,
                action,
                json!({
                    "hostingAccountId": kept.hosting_account_id,
                    "serverId": server_id,
                    "domain": status.domain,
                    "serial": status.serial.as_str(),
                    "notAfter": status.not_after,
                    "failures": failures,
                    "error": last_error,
                    "nextAttemptAt": status.next_attempt_at,
                }),
            ),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(outcome)
}
