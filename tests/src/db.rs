//! A fresh PostgreSQL database per test, dropped when the test ends.
//!
//! Tests never share a database: each `TestDb` is a new, uniquely named database on the
//! server named by `MPANEL_TEST_DATABASE_URL` (default: the local trust-auth cluster).

use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection, PgPool, postgres::PgPoolOptions};

/// The maintenance database tests connect to in order to create and drop their own.
pub fn admin_url() -> String {
    std::env::var("MPANEL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `admin_url` with its database name replaced by `name`.
fn url_for(name: &str) -> String {
    let admin = admin_url();
    let base = admin
        .rsplit_once('/')
        .map(|(base, _)| base)
        .unwrap_or(admin.as_str());
    format!("{base}/{name}")
}

pub struct TestDb {
    pub name: String,
    pub url: String,
    dropped: bool,
}

impl TestDb {
    /// Creates an empty database; nothing is migrated (the panel migrates on start, and the
    /// schema test migrates explicitly).
    pub async fn create() -> TestDb {
        let name = format!("mpanel_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url())
            .await
            .expect("connect to the PostgreSQL maintenance database (is PostgreSQL running?)");
        admin
            .execute(AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
            .await
            .expect("create test database");
        let url = url_for(&name);
        TestDb {
            name,
            url,
            dropped: false,
        }
    }

    /// A small pool on this database, for assertions made directly in SQL.
    pub async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(4)
            .connect(&self.url)
            .await
            .expect("connect to test database")
    }

    /// Drops the database now (also done on `Drop`, which cannot report errors).
    pub async fn cleanup(mut self) {
        drop_database(&self.name).await;
        self.dropped = true;
    }
}

async fn drop_database(name: &str) {
    if let Ok(mut admin) = PgConnection::connect(&admin_url()).await {
        // FORCE ends the connections a killed panel may have left behind.
        let _ = admin
            .execute(AssertSqlSafe(format!(
                r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
            )))
            .await;
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let name = self.name.clone();
        // Drop may run inside a Tokio runtime, which must not be blocked on directly: do the
        // cleanup on a thread of its own with a small runtime.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(drop_database(&name));
            }
        })
        .join();
    }
}
