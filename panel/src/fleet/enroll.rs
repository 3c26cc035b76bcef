//! Enrollment: an operator asks for a one-time token for a server; the agent on that server
//! redeems it with a CSR and receives its certificate.
//!
//! Invariants:
//! - Only SHA-256 of a token is stored; the token itself exists in the issuing response and
//!   on the operator's screen, never in a row, a log line or an audit entry.
//! - A server has at most one live (unused, unexpired) token: issuing a new one expires the
//!   older ones at once, so a token an operator lost or pasted somewhere stops working as
//!   soon as they ask for another.
//! - Redemption is one transaction: the token row is locked (`FOR UPDATE`), so a token is
//!   used at most once even when two agents race with it; on any failure nothing changes.
//! - Every refusal of a token (unknown, malformed, used, expired, pinning another CA, server
//!   deleted) is the same [`EnrollError::Refused`], so the answer is no oracle; the reason is
//!   logged on the panel's side only.
//! - One agent per server: re-enrolling keeps the agent's id, replaces its hostname and
//!   version, and revokes every earlier certificate of that agent ('re-enrolled').
//!
//! Functions take a connection inside the caller's transaction; the caller commits.

use std::time::Duration;

use chrono::{DateTime, Utc};
use mpanel_protocol::messages::{EnrollRequest, EnrollmentToken};
use serde_json::json;
use sqlx::PgConnection;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::ca::{AGENT_CERT_VALIDITY, AgentCsr, CertificateAuthority, CsrError, SignedCert};
use crate::{
    audit::{self, ClientMeta, Entry},
    auth::tokens::hash_token,
    model::ServerRole,
};

pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(60 * 60);
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// The revoke reason of certificates replaced by a new enrollment.
pub const REVOKED_REENROLLED: &str = "re-enrolled";

/// A freshly issued token: show it once, store nothing of it but its hash.
#[derive(Debug)]
pub struct IssuedToken {
    pub token: EnrollmentToken,
    pub expires_at: DateTime<Utc>,
    /// Unused tokens of the same server that this one replaced.
    pub expired_previous: u64,
}

/// Issues a token for `server_id` of `tenant_id`; `None` when the tenant has no such live
/// server. Records `agent.enrollment_token.create`.
pub async fn issue_token(
    conn: &mut PgConnection,
    ca: &CertificateAuthority,
    tenant_id: Uuid,
    server_id: Uuid,
    created_by: Option<Uuid>,
    client: Option<&ClientMeta>,
    ttl: Duration,
) -> anyhow::Result<Option<IssuedToken>> {
    let ttl = ttl.min(MAX_TOKEN_TTL);
    // Locks the server against a concurrent delete until the token is in place.
    let live: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM servers
          WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL
          FOR UPDATE",
    )
    .bind(server_id)
    .bind(tenant_id)
    .fetch_optional(&mut *conn)
    .await?;
    if live.is_none() {
        return Ok(None);
    }

    let expired_previous = sqlx::query(
        "UPDATE enrollment_tokens SET expires_at = now()
          WHERE server_id = $1 AND used_at IS NULL AND expires_at > now()",
    )
    .bind(server_id)
    .execute(&mut *conn)
    .await?
    .rows_affected();

    let token = EnrollmentToken::new(&crate::util::random_token(32), ca.fingerprint_sha256())
        .map_err(|e| anyhow::anyhow!("build an enrollment token: {e}"))?;
    let expires_at = Utc::now()
        + chrono::Duration::from_std(ttl).map_err(|e| anyhow::anyhow!("token TTL: {e}"))?;
    let token_id: Uuid = sqlx::query_scalar(
        "INSERT INTO enrollment_tokens (tenant_id, server_id, token_hash, created_by, expires_at)
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(tenant_id)
    .bind(server_id)
    .bind(hash_token(token.expose()))
    .bind(created_by)
    .bind(expires_at)
    .fetch_one(&mut *conn)
    .await?;

    audit::record(
        conn,
        Entry {
            tenant_id,
            user_id: created_by,
            action: "agent.enrollment_token.create",
            client,
            details: json!({
                "serverId": server_id,
                "tokenId": token_id,
                "expiresAt": expires_at,
                "expiredPrevious": expired_previous,
                "caFingerprint": ca.fingerprint_sha256(),
            }),
        },
    )
    .await?;
    Ok(Some(IssuedToken {
        token,
        expires_at,
        expired_previous,
    }))
}

/// What a successful redemption produced.
#[derive(Debug)]
pub struct Enrollment {
    pub tenant_id: Uuid,
    pub agent_id: Uuid,
    pub server_id: Uuid,
    pub certificate: SignedCert,
    /// Serials of the agent's earlier certificates, revoked by this enrollment. The hub must
    /// close their live connections.
    pub revoked_serials: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// Deliberately one message for every reason.
    #[error("invalid, used or expired enrollment token")]
    Refused,
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for EnrollError {
    fn from(e: sqlx::Error) -> Self {
        EnrollError::Internal(anyhow::Error::new(e).context("database"))
    }
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: Uuid,
    tenant_id: Uuid,
    server_id: Uuid,
    created_by: Option<Uuid>,
    expires_at: DateTime<Utc>,
    used_at: Option<DateTime<Utc>>,
}

/// Redeems an enrollment token: checks it, creates or updates the server's agent, signs the
/// CSR's key and records `agent.enroll`. The caller commits; any error means nothing of it
/// may be committed.
pub async fn redeem(
    conn: &mut PgConnection,
    ca: &CertificateAuthority,
    request: &EnrollRequest,
    client: Option<&ClientMeta>,
) -> Result<Enrollment, EnrollError> {
    // A bad CSR is the caller's mistake whatever the token: say so, and leave the token be.
    let csr = AgentCsr::parse(request.csr_pem.as_str())?;

    let row: Option<TokenRow> = sqlx::query_as(
        "SELECT id, tenant_id, server_id, created_by, expires_at, used_at
           FROM enrollment_tokens WHERE token_hash = $1
           FOR UPDATE",
    )
    .bind(hash_token(&request.token))
    .fetch_optional(&mut *conn)
    .await?;
    let Some(token) = row else {
        tracing::warn!(reason = "unknown", "enrollment refused");
        return Err(EnrollError::Refused);
    };
    let refuse = |reason: &'static str| {
        tracing::warn!(reason, token_id = %token.id, server_id = %token.server_id, "enrollment refused");
        EnrollError::Refused
    };
    if token.used_at.is_some() {
        return Err(refuse("already used"));
    }
    if token.expires_at <= Utc::now() {
        return Err(refuse("expired"));
    }
    // The stored hash matched, so the token is well-formed; its suffix must still name the
    // CA in use now (a CA replaced since the token was issued cannot honour the pin).
    let pins_our_ca = EnrollmentToken::parse(&request.token).is_ok_and(|t| {
        bool::from(
            t.ca_fingerprint()
                .as_bytes()
                .ct_eq(ca.fingerprint_sha256().as_bytes()),
        )
    });
    if !pins_our_ca {
        return Err(refuse("pins another CA"));
    }
    let server_role: Option<ServerRole> = sqlx::query_scalar(
        "SELECT role FROM servers
          WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL
          FOR UPDATE",
    )
    .bind(token.server_id)
    .bind(token.tenant_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(server_role) = server_role else {
        return Err(refuse("server deleted"));
    };

    // One agent per server: re-enrolling keeps its id (and lifts a revocation: whoever could
    // issue the token decided to let this server back in).
    let agent_id: Uuid = sqlx::query_scalar(
        "INSERT INTO agents (tenant_id, server_id, hostname, version, roles)
         VALUES ($1, $2, $3, $4, ARRAY[$5]::server_role[])
         ON CONFLICT (server_id) DO UPDATE
            SET hostname = EXCLUDED.hostname, version = EXCLUDED.version, revoked_at = NULL
         RETURNING id",
    )
    .bind(token.tenant_id)
    .bind(token.server_id)
    .bind(request.hostname.as_str())
    .bind(request.version.as_str())
    .bind(server_role)
    .fetch_one(&mut *conn)
    .await?;

    let revoked_serials: Vec<String> = sqlx::query_scalar(
        "UPDATE agent_certificates SET revoked_at = now(), revoke_reason = $2
          WHERE agent_id = $1 AND revoked_at IS NULL
          RETURNING serial",
    )
    .bind(agent_id)
    .bind(REVOKED_REENROLLED)
    .fetch_all(&mut *conn)
    .await?;

    let certificate = ca.sign_agent(&csr, agent_id, token.server_id, AGENT_CERT_VALIDITY)?;
    sqlx::query(
        "INSERT INTO agent_certificates (agent_id, serial, fingerprint_sha256, not_before, not_after)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(agent_id)
    .bind(&certificate.serial_hex)
    .bind(&certificate.fingerprint_sha256)
    .bind(certificate.not_before)
    .bind(certificate.not_after)
    .execute(&mut *conn)
    .await?;

    sqlx::query("UPDATE enrollment_tokens SET used_at = now(), agent_id = $2 WHERE id = $1")
        .bind(token.id)
        .bind(agent_id)
        .execute(&mut *conn)
        .await?;

    audit::record(
        conn,
        Entry {
            tenant_id: token.tenant_id,
            user_id: None,
            action: "agent.enroll",
            client,
            details: json!({
                "agentId": agent_id,
                "serverId": token.server_id,
                "tokenId": token.id,
                "tokenCreatedBy": token.created_by,
                "hostname": request.hostname.as_str(),
                "version": request.version.as_str(),
                "serial": certificate.serial_hex,
                "fingerprint": certificate.fingerprint_sha256,
                "notAfter": certificate.not_after,
                "revokedSerials": revoked_serials,
            }),
        },
    )
    .await?;

    Ok(Enrollment {
        tenant_id: token.tenant_id,
        agent_id,
        server_id: token.server_id,
        certificate,
        revoked_serials,
    })
}
