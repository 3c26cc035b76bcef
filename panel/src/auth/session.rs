//! Refresh sessions: one row per sign-in, holding the hash of its current refresh token and
//! those of its latest superseded ones. Each refresh rotates the token; presenting a
//! superseded token means it was copied, so the whole session is revoked (and with it every
//! access token issued under it). A token that never belonged to the session — its id, which
//! every access token carries, with a made-up secret — is refused and changes nothing.

use std::time::Duration;

use uuid::Uuid;

use super::tokens::{hash_token, hashes_match, new_refresh_token, refresh_session_id};
use crate::{audit::ClientMeta, model::UserRole};

/// The user a session belongs to, as the token response shows it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionUser {
    pub id: Uuid,
    pub email: String,
    pub display_name: String,
    pub role: UserRole,
    pub tenant_id: Uuid,
}

pub async fn create(
    conn: &mut sqlx::PgConnection,
    user: &SessionUser,
    ttl: Duration,
    client: &ClientMeta,
) -> sqlx::Result<(Uuid, String)> {
    let id = Uuid::new_v4();
    let (token, hash) = new_refresh_token(id);
    sqlx::query(
        "INSERT INTO refresh_sessions
             (id, tenant_id, user_id, token_hash, expires_at, last_used_at, ip_address, user_agent)
         VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5), now(), $6, $7)",
    )
    .bind(id)
    .bind(user.tenant_id)
    .bind(user.id)
    .bind(hash)
    .bind(ttl.as_secs_f64())
    .bind(client.ip_string())
    .bind(client.user_agent.as_deref())
    .execute(conn)
    .await?;
    Ok((id, token))
}

pub enum Rotation {
    /// The token was current: here is its successor.
    Rotated {
        user: SessionUser,
        session_id: Uuid,
        token: String,
    },
    /// The token was superseded: the session is now revoked.
    Reused { user_id: Uuid, tenant_id: Uuid },
    /// Unknown, revoked, expired, or its user or tenant is no longer active.
    Refused,
}

#[derive(sqlx::FromRow)]
struct SessionRow {
    token_hash: String,
    previous_hashes: Vec<String>,
    revoked: bool,
    live: bool,
    usable: bool,
    #[sqlx(flatten)]
    user: SessionUser,
}

/// Locks the session row, so two refreshes with one token cannot both succeed.
async fn lock(conn: &mut sqlx::PgConnection, id: Uuid) -> sqlx::Result<Option<SessionRow>> {
    sqlx::query_as(
        "SELECT s.token_hash, s.previous_hashes, s.revoked_at IS NOT NULL AS revoked, s.expires_at > now() AS live,
                u.is_active AND t.is_active AS usable,
                u.id, u.email, u.display_name, u.role, u.tenant_id
           FROM refresh_sessions s
           JOIN users u ON u.id = s.user_id
           JOIN tenants t ON t.id = u.tenant_id
          WHERE s.id = $1
          FOR UPDATE OF s",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Which generation of the session `token` is.
enum Generation {
    Current,
    Superseded,
    Unknown,
}

fn generation(row: &SessionRow, token: &str) -> Generation {
    let presented = hash_token(token);
    if hashes_match(&row.token_hash, &presented) {
        Generation::Current
    } else if row
        .previous_hashes
        .iter()
        .fold(false, |found, old| hashes_match(old, &presented) | found)
    {
        Generation::Superseded
    } else {
        Generation::Unknown
    }
}

/// Run inside a transaction; the caller commits (also on `Reused`, to keep the revocation).
pub async fn rotate(
    conn: &mut sqlx::PgConnection,
    token: &str,
    ttl: Duration,
    client: &ClientMeta,
) -> sqlx::Result<Rotation> {
    let Some(id) = refresh_session_id(token) else {
        return Ok(Rotation::Refused);
    };
    let Some(row) = lock(conn, id).await? else {
        return Ok(Rotation::Refused);
    };
    if row.revoked {
        return Ok(Rotation::Refused);
    }
    match generation(&row, token) {
        Generation::Current => {}
        Generation::Superseded => {
            revoke(conn, id, "refresh token reuse").await?;
            return Ok(Rotation::Reused {
                user_id: row.user.id,
                tenant_id: row.user.tenant_id,
            });
        }
        Generation::Unknown => return Ok(Rotation::Refused),
    }
    if !row.live {
        return Ok(Rotation::Refused);
    }
    if !row.usable {
        revoke(conn, id, "user or tenant inactive").await?;
        return Ok(Rotation::Refused);
    }
    let (next, hash) = new_refresh_token(id);
    sqlx::query(
        "UPDATE refresh_sessions
            SET previous_hashes = (array_append(previous_hashes, token_hash))
                                      [greatest(1, cardinality(previous_hashes) - 98):],
                token_hash = $2, generation = generation + 1, last_used_at = now(),
                expires_at = now() + make_interval(secs => $3), ip_address = $4, user_agent = $5
          WHERE id = $1",
    )
    .bind(id)
    .bind(hash)
    .bind(ttl.as_secs_f64())
    .bind(client.ip_string())
    .bind(client.user_agent.as_deref())
    .execute(&mut *conn)
    .await?;
    Ok(Rotation::Rotated {
        user: row.user,
        session_id: id,
        token: next,
    })
}

pub enum Logout {
    Ended {
        user_id: Uuid,
        tenant_id: Uuid,
    },
    Reused {
        user_id: Uuid,
        tenant_id: Uuid,
    },
    /// Unknown or already ended: nothing to do.
    Gone,
    /// A live session's id with a secret that never was its: refused, nothing changes.
    Refused,
}

/// Ends the session of a current refresh token. A superseded token still ends the session,
/// but is reported as reuse.
pub async fn logout(conn: &mut sqlx::PgConnection, token: &str) -> sqlx::Result<Logout> {
    let Some(id) = refresh_session_id(token) else {
        return Ok(Logout::Gone);
    };
    let Some(row) = lock(conn, id).await? else {
        return Ok(Logout::Gone);
    };
    if row.revoked {
        return Ok(Logout::Gone);
    }
    let (user_id, tenant_id) = (row.user.id, row.user.tenant_id);
    match generation(&row, token) {
        Generation::Current => {
            revoke(conn, id, "logout").await?;
            Ok(Logout::Ended { user_id, tenant_id })
        }
        Generation::Superseded => {
            revoke(conn, id, "refresh token reuse").await?;
            Ok(Logout::Reused { user_id, tenant_id })
        }
        Generation::Unknown => Ok(Logout::Refused),
    }
}

pub async fn revoke(conn: &mut sqlx::PgConnection, id: Uuid, reason: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE refresh_sessions SET revoked_at = now(), revoke_reason = $2
          WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(id)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

/// Ends every session of a user (deactivation, password change).
pub async fn revoke_all_for_user(
    conn: &mut sqlx::PgConnection,
    user_id: Uuid,
    reason: &str,
) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "UPDATE refresh_sessions SET revoked_at = now(), revoke_reason = $2
          WHERE user_id = $1 AND revoked_at IS NULL",
    )
    .bind(user_id)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}
