//! PostgreSQL: the source of truth. Connecting, creating the database in development, and
//! applying the embedded migrations.

use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::{
    PgPool,
    migrate::{MigrateDatabase, Migrator},
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::{config::DatabaseConfig, util::redact_url};

/// The schema, compiled into the binary so a deployment is one file.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Connects, failing fast with a message that names the server (never the password).
pub async fn connect(cfg: &DatabaseConfig) -> anyhow::Result<PgPool> {
    let url = cfg.url.expose_secret();
    let shown = redact_url(url);
    let options: PgConnectOptions = url
        .parse()
        .with_context(|| format!("DATABASE_URL ({shown}) is not a valid PostgreSQL URL"))?;
    if cfg.create_if_missing {
        let exists = sqlx::Postgres::database_exists(url)
            .await
            .with_context(|| format!("cannot connect to PostgreSQL at {shown} (DATABASE_URL)"))?;
        if !exists {
            sqlx::Postgres::create_database(url)
                .await
                .with_context(|| format!("cannot create the database of {shown}"))?;
            tracing::info!(database = %shown, "created database");
        }
    }
    PgPoolOptions::new()
        .max_connections(cfg.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {shown} (DATABASE_URL)"))
}

/// Applies pending migrations; sqlx takes an advisory lock, so replicas starting together
/// do not race.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .context("applying database migrations")?;
    Ok(())
}
