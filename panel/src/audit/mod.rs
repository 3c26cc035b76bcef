//! The AuditLog (spec §10): who did what, from where. Written in the same transaction as the
//! change it records, so a change and its audit row commit or roll back together. The same
//! fact goes to the JSON log.

pub mod routes;

use std::net::IpAddr;

use serde_json::Value;
use uuid::Uuid;

use crate::auth::current::CurrentUser;

/// Who made a request: the client IP (as the edge resolved it through trusted proxies) and
/// the user agent, kept with every audit row and used for login throttling.
#[derive(Debug, Clone, Default)]
pub struct ClientMeta {
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
}

impl ClientMeta {
    pub fn ip_string(&self) -> Option<String> {
        self.ip.map(|ip| ip.to_string())
    }
}

pub struct Entry<'a> {
    pub tenant_id: Uuid,
    pub user_id: Option<Uuid>,
    pub action: &'a str,
    pub client: Option<&'a ClientMeta>,
    pub details: Value,
}

impl<'a> Entry<'a> {
    /// What an operator did in their tenant, and from where.
    pub fn by(user: &CurrentUser, client: &'a ClientMeta, action: &'a str, details: Value) -> Self {
        Entry {
            tenant_id: user.tenant_id,
            user_id: Some(user.id),
            action,
            client: Some(client),
            details,
        }
    }

    /// What the panel did on its own (a job, a periodic duty).
    pub fn system(tenant_id: Uuid, action: &'a str, details: Value) -> Self {
        Entry {
            tenant_id,
            user_id: None,
            action,
            client: None,
            details,
        }
    }
}

pub async fn record(conn: &mut sqlx::PgConnection, entry: Entry<'_>) -> sqlx::Result<()> {
    let ip = entry.client.and_then(ClientMeta::ip_string);
    let ua = entry.client.and_then(|c| c.user_agent.clone());
    tracing::info!(
        audit = entry.action,
        tenant_id = %entry.tenant_id,
        user_id = ?entry.user_id,
        ip = ?ip,
        details = %entry.details,
        "audit"
    );
    sqlx::query(
        "INSERT INTO audit_logs (tenant_id, user_id, action, ip_address, user_agent, details)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(entry.tenant_id)
    .bind(entry.user_id)
    .bind(entry.action)
    .bind(ip)
    .bind(ua)
    .bind(entry.details)
    .execute(conn)
    .await?;
    Ok(())
}
