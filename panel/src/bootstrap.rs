//! `mpanel create-admin`: the first operator of a new install, and of every test script.

use anyhow::{Context, bail};
use mpanel_protocol::{EmailAddress, Slug};
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{auth::password, model::UserRole};

pub struct NewAdmin {
    pub tenant_slug: String,
    pub tenant_name: Option<String>,
    pub email: String,
    pub role: UserRole,
    pub display_name: Option<String>,
    pub password: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedAdmin {
    pub tenant_id: Uuid,
    pub tenant_created: bool,
    pub user_id: Uuid,
    pub email: String,
    pub role: UserRole,
}

/// Creates the user, and its tenant when the slug is new, in one transaction with their
/// audit rows. Refuses an e-mail that is already taken rather than touching that account.
pub async fn create_admin(pool: &PgPool, new: NewAdmin) -> anyhow::Result<CreatedAdmin> {
    let slug = Slug::parse(&new.tenant_slug).map_err(|e| anyhow::anyhow!("--tenant: {e}"))?;
    let email = EmailAddress::parse(&new.email).map_err(|e| anyhow::anyhow!("--email: {e}"))?;
    if let Err(e) = password::check_strength(&new.password) {
        bail!("password: {e}");
    }
    let display_name = new
        .display_name
        .unwrap_or_else(|| email.local_part().to_owned());
    let hash = password::hash(&new.password)?;

    let mut tx = pool.begin().await?;
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO tenants (name, slug) VALUES ($1, $2) ON CONFLICT (slug) DO NOTHING RETURNING id",
    )
    .bind(new.tenant_name.as_deref().unwrap_or(slug.as_str()))
    .bind(slug.as_str())
    .fetch_optional(&mut *tx)
    .await
    .context("creating tenant")?;
    let (tenant_id, tenant_created) = match inserted {
        Some(id) => (id, true),
        None => (
            sqlx::query_scalar("SELECT id FROM tenants WHERE slug = $1")
                .bind(slug.as_str())
                .fetch_one(&mut *tx)
                .await?,
            false,
        ),
    };

    let user_id: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO users (tenant_id, email, password_hash, display_name, role)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (email) DO NOTHING RETURNING id",
    )
    .bind(tenant_id)
    .bind(email.as_str())
    .bind(&hash)
    .bind(&display_name)
    .bind(new.role)
    .fetch_optional(&mut *tx)
    .await
    .context("creating user")?;
    let Some(user_id) = user_id else {
        bail!("a user with e-mail {email} already exists; nothing was changed");
    };

    if tenant_created {
        audit_cli(
            &mut tx,
            tenant_id,
            "tenant.create",
            json!({ "slug": slug.as_str() }),
        )
        .await?;
    }
    audit_cli(
        &mut tx,
        tenant_id,
        "user.create",
        json!({ "userId": user_id, "email": email.as_str(), "role": new.role }),
    )
    .await?;
    tx.commit().await?;

    Ok(CreatedAdmin {
        tenant_id,
        tenant_created,
        user_id,
        email: email.as_str().to_owned(),
        role: new.role,
    })
}

async fn audit_cli(
    tx: &mut sqlx::PgConnection,
    tenant_id: Uuid,
    action: &str,
    mut details: serde_json::Value,
) -> anyhow::Result<()> {
    details["via"] = json!("cli");
    sqlx::query("INSERT INTO audit_logs (tenant_id, action, details) VALUES ($1, $2, $3)")
        .bind(tenant_id)
        .bind(action)
        .bind(details)
        .execute(tx)
        .await
        .context("writing audit log")?;
    Ok(())
}
