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
    connect_with(cfg, |options| options).await
}

/// [`connect`] for the one-shot commands (`migrate`, `create-admin`), whose output is read by
/// a person or a script: PostgreSQL sends them no notices, such as the `relation
/// "_sqlx_migrations" already exists, skipping` of every run after the first, which sqlx
/// would log. Warnings and errors still come through.
pub async fn connect_quiet(cfg: &DatabaseConfig) -> anyhow::Result<PgPool> {
    connect_with(cfg, |options| {
        options.options([("client_min_messages", "warning")])
    })
    .await
}

async fn connect_with(
    cfg: &DatabaseConfig,
    adjust: impl FnOnce(PgConnectOptions) -> PgConnectOptions,
) -> anyhow::Result<PgPool> {
    let url = cfg.url.expose_secret();
    let shown = redact_url(url);
    let options: PgConnectOptions = adjust(
        url.parse()
            .with_context(|| format!("DATABASE_URL ({shown}) is not a valid PostgreSQL URL"))?,
    );
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
