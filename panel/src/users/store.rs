//! Writes of `users` on behalf of other resources (a new tenant's first admin) and of the
//! users routes: one place that hashes a new operator's password and maps the unique e-mail.

use anyhow::Context;
use chrono::{DateTime, Utc};
use mpanel_protocol::EmailAddress;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{auth::password, model::UserRole};

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub email: String,
    pub display_name: String,
    pub role: UserRole,
    pub is_active: bool,
    pub last_login_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub const COLUMNS: &str =
    "id, tenant_id, email, display_name, role, is_active, last_login_at, created_at, updated_at";

#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    #[error("a user with e-mail {0} already exists")]
    EmailTaken(EmailAddress),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// A new operator; the password is hashed off the async workers.
pub async fn insert(
    conn: &mut sqlx::PgConnection,
    tenant_id: Uuid,
    email: &EmailAddress,
    display_name: &str,
    role: UserRole,
    password: String,
) -> Result<User, InsertError> {
    let hash = tokio::task::spawn_blocking(move || password::hash(&password))
        .await
        .map_err(anyhow::Error::from)?
        .context("hashing the password")?;
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO users (tenant_id, email, password_hash, display_name, role)
         VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}"
    )))
    .bind(tenant_id)
    .bind(email.as_str())
    .bind(hash)
    .bind(display_name)
    .bind(role)
    .fetch_one(conn)
    .await
    .map_err(|e| {
        let taken = e
            .as_database_error()
            .and_then(|d| d.constraint())
            .is_some_and(|c| c == "users_email_key");
        if taken {
            InsertError::EmailTaken(email.clone())
        } else {
            InsertError::Other(e.into())
        }
    })
}
