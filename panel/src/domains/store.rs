//! The only writer of `domains`. A name is unique over the whole panel; a domain belongs to
//! one tenant and, once an order or an operator names one, to one customer.
//!
//! Status: PENDING_SETUP while its first resources are provisioned, ACTIVE once they are
//! (an order's last job, or an operator's site going live), SUSPENDED with its site.

use mpanel_protocol::DomainName;
use sqlx::PgConnection;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("domain {0} already belongs to another customer")]
    Taken(DomainName),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// A paid order's domain: new (PENDING_SETUP), or the same customer's existing one (set up
/// again). A domain held by another customer or tenant is refused.
pub async fn claim_for_order(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    customer_id: Uuid,
    domain: &DomainName,
) -> Result<Uuid, ClaimError> {
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO domains (tenant_id, customer_id, name, status) VALUES ($1, $2, $3, 'PENDING_SETUP')
         ON CONFLICT (name) DO NOTHING RETURNING id",
    )
    .bind(tenant_id)
    .bind(customer_id)
    .bind(domain.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(id) = inserted {
        return Ok(id);
    }
    let (id, owner_tenant, owner_customer): (Uuid, Uuid, Option<Uuid>) =
        sqlx::query_as("SELECT id, tenant_id, customer_id FROM domains WHERE name = $1 FOR UPDATE")
            .bind(domain.as_str())
            .fetch_one(&mut *conn)
            .await?;
    if owner_tenant != tenant_id || owner_customer.is_some_and(|c| c != customer_id) {
        return Err(ClaimError::Taken(domain.clone()));
    }
    sqlx::query("UPDATE domains SET customer_id = $2, status = 'PENDING_SETUP' WHERE id = $1")
        .bind(id)
        .bind(customer_id)
        .execute(&mut *conn)
        .await?;
    Ok(id)
}

/// A new domain in `status` (PENDING_SETUP for a site an operator adds, ACTIVE for a zone
/// an operator adds); `None` when a concurrent request added the same name first.
pub async fn insert(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    customer_id: Option<Uuid>,
    name: &DomainName,
    active: bool,
) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar(
        "INSERT INTO domains (tenant_id, customer_id, name, status)
         VALUES ($1, $2, $3, CASE WHEN $4 THEN 'ACTIVE' ELSE 'PENDING_SETUP' END::domain_status)
         ON CONFLICT (name) DO NOTHING RETURNING id",
    )
    .bind(tenant_id)
    .bind(customer_id)
    .bind(name.as_str())
    .bind(active)
    .fetch_optional(&mut *conn)
    .await
}

/// PENDING_SETUP → ACTIVE (nothing else changes).
pub async fn activate(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<()> {
    sqlx::query("UPDATE domains SET status = 'ACTIVE' WHERE id = $1 AND status = 'PENDING_SETUP'")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The domain shows what its site does: SUSPENDED with it, ACTIVE again with it.
pub async fn follow_site(conn: &mut PgConnection, id: Uuid, suspended: bool) -> sqlx::Result<()> {
    let (to, from) = if suspended {
        ("SUSPENDED", "ACTIVE")
    } else {
        ("ACTIVE", "SUSPENDED")
    };
    sqlx::query(
        "UPDATE domains SET status = $2::domain_status WHERE id = $1 AND status = $3::domain_status",
    )
    .bind(id)
    .bind(to)
    .bind(from)
    .execute(conn)
    .await?;
    Ok(())
}
