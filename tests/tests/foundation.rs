//! The Foundation, against the real `mpanel` process, PostgreSQL and Redis: health, the error
//! envelope, request ids, JSON logs (stdout and file), graceful shutdown, `migrate` and
//! `create-admin`.

use std::time::Duration;

use mpanel_tests::{TestApp, TestDb, panel, wait_for};
use serde_json::{Value, json};

fn assert_envelope(body: &Value, code: &str) {
    let err = &body["error"];
    assert_eq!(err["code"], code, "{body}");
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(err.get("details").is_some(), "{body}");
    assert_eq!(
        body.as_object().unwrap().len(),
        1,
        "only `error` at the top: {body}"
    );
}

#[tokio::test]
async fn health_reports_database_and_redis_without_configuration() {
    let app = TestApp::spawn().await;

    let res = app.get("/api/public/health").await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().contains_key("x-request-id"));
    let text = res.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["checks"]["database"]["status"], "up");
    assert_eq!(body["checks"]["redis"]["status"], "up");
    for leak in [
        "127.0.0.1",
        "postgres",
        "redis://",
        "mpanel_test",
        "5432",
        "6379",
        "secret",
    ] {
        assert!(!text.contains(leak), "health exposes '{leak}': {text}");
    }

    app.cleanup().await;
}

#[tokio::test]
async fn panel_starts_without_redis_and_health_says_so() {
    // Port 1 is never a Redis: the panel must still start (PostgreSQL is the truth), and it
    // still serves, so health is 200 `degraded` rather than a 503.
    let app = TestApp::spawn_with(&[("REDIS_URL", "redis://127.0.0.1:1/0")]).await;

    let res = app.get("/api/public/health").await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["checks"]["redis"]["status"], "down", "{body}");
    assert_eq!(body["checks"]["database"]["status"], "up", "{body}");

    app.cleanup().await;
}

#[tokio::test]
async fn every_error_uses_the_envelope_and_carries_a_request_id() {
    let app = TestApp::spawn().await;

    let res = app.get("/api/no/such/route").await;
    assert_eq!(res.status(), 404);
    assert!(res.headers().contains_key("x-request-id"));
    assert_envelope(&res.json().await.unwrap(), "not_found");

    // axum's own 405 is rewritten into the envelope too.
    let res = app.post_json("/api/public/health", &json!({})).await;
    assert_eq!(res.status(), 405);
    assert_envelope(&res.json().await.unwrap(), "method_not_allowed");

    // A caller's request id is kept, so a marketing backend can correlate its logs.
    let res = app
        .http
        .get(app.url("/api/public/health"))
        .header("x-request-id", "order-flow-42")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "order-flow-42");

    app.cleanup().await;
}

#[tokio::test]
async fn logs_are_json_in_the_file_and_never_hold_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("mpanel.log");
    let mut app = TestApp::spawn_with(&[("LOG_FILE", log_path.to_str().unwrap())]).await;
    app.get("/api/public/health").await;

    let status = app.terminate().await;
    assert!(status.success(), "SIGTERM is a clean exit: {status:?}");

    let log = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let request = lines
        .iter()
        .find(|l| l["message"] == "request" && l["span"]["path"] == "/api/public/health")
        .expect("the health request is logged");
    assert_eq!(request["status"], 200);
    assert!(
        request["span"]["request_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    assert!(
        lines.iter().any(|l| l["message"] == "stopped"),
        "shutdown is logged"
    );
    for secret in [panel::JWT_SECRET, panel::INTERNAL_KEY, panel::STRIPE_SECRET] {
        assert!(!log.contains(secret), "a secret reached the log");
    }

    app.cleanup().await;
}

#[tokio::test]
async fn create_admin_bootstraps_tenant_and_user_once() {
    let app = TestApp::spawn().await;

    let created = app
        .create_admin(
            "migrahosting",
            "Admin@MigraHosting.com",
            "SUPER_ADMIN",
            "a long enough password",
        )
        .await;
    assert_eq!(created["email"], "admin@migrahosting.com");
    assert_eq!(created["role"], "SUPER_ADMIN");
    assert_eq!(created["tenantCreated"], true);

    let pool = app.db.pool().await;
    let (hash, role): (String, String) = sqlx::query_as(
        "SELECT password_hash, role::text FROM users WHERE email = 'admin@migrahosting.com'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(hash.starts_with("$argon2id$"), "stored as argon2id");
    assert_eq!(role, "SUPER_ADMIN");

    // A second user joins the existing tenant.
    let second = app
        .create_admin(
            "migrahosting",
            "support@migrahosting.com",
            "support",
            "another long password",
        )
        .await;
    assert_eq!(second["tenantCreated"], false);
    assert_eq!(second["tenantId"], created["tenantId"]);

    // The same e-mail again changes nothing.
    let out = app
        .run_cli(
            &[
                "create-admin",
                "--tenant",
                "other",
                "--email",
                "admin@migrahosting.com",
                "--role",
                "ADMIN",
                "--password-stdin",
            ],
            "yet another long password\n",
        )
        .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let tenants: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(tenants, 1, "the failed run created no tenant");

    // Too short a password and a bad slug are refused.
    let out = app
        .run_cli(
            &[
                "create-admin",
                "--tenant",
                "acme",
                "--email",
                "x@acme.com",
                "--role",
                "ADMIN",
                "--password-stdin",
            ],
            "short\n",
        )
        .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("password"));
    let out = app
        .run_cli(
            &[
                "create-admin",
                "--tenant",
                "Bad Slug",
                "--email",
                "x@acme.com",
                "--role",
                "ADMIN",
                "--password-stdin",
            ],
            "a long enough password\n",
        )
        .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tenant"));

    let audit: Vec<String> =
        sqlx::query_scalar("SELECT action FROM audit_logs ORDER BY created_at, action")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(audit, ["tenant.create", "user.create", "user.create"]);

    pool.close().await;
    app.cleanup().await;
}

#[tokio::test]
async fn migrate_command_builds_the_schema_and_serve_creates_a_missing_database() {
    // `mpanel migrate` on an empty database.
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let out = panel::command("mpanel", dir.path())
        .arg("migrate")
        .env("DATABASE_URL", &db.url)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pool = db.pool().await;
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' AND table_name = 'jobs'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 1);
    pool.close().await;
    db.cleanup().await;

    // In development, `serve` creates its database when it does not exist yet.
    let name = format!("mpanel_test_{}", uuid::Uuid::new_v4().simple());
    let url = format!(
        "{}/{name}",
        mpanel_tests::db::admin_url().rsplit_once('/').unwrap().0
    );
    let app = TestApp::spawn_with(&[("DATABASE_URL", url.as_str())]).await;
    let res = app.get("/api/public/health").await;
    assert_eq!(res.status(), 200);
    let admin = TestDb::create().await; // any connection to the cluster
    let pool = admin.pool().await;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(exists);
    pool.close().await;
    let mut app = app;
    app.terminate().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
    )))
    .execute(&admin.pool().await)
    .await
    .unwrap();
    admin.cleanup().await;
    app.cleanup().await;
}

#[tokio::test]
async fn sigterm_drains_and_exits_cleanly() {
    let mut app = TestApp::spawn().await;
    let status = app.terminate().await;
    assert!(status.success(), "{status:?}");

    // Restarting on the same database and Redis prefix works (migrations are idempotent).
    app.start().await;
    wait_for("health after restart", Duration::from_secs(10), || async {
        (app.get("/api/public/health").await.status() == 200).then_some(())
    })
    .await;
    app.cleanup().await;
}

/// `migrate` and `create-admin` print what they did and nothing of PostgreSQL's chatter: the
/// schema exists already (the panel migrated on start), and sqlx's `relation
/// "_sqlx_migrations" already exists, skipping` notice used to land on stderr every time.
#[tokio::test]
async fn one_shot_commands_print_no_postgres_notices() {
    let app = TestApp::spawn().await;

    let out = app
        .run_cli(
            &[
                "create-admin",
                "--tenant",
                "migrahosting",
                "--email",
                "admin@migrahosting.com",
                "--role",
                "SUPER_ADMIN",
                "--password-stdin",
            ],
            "a long enough password\n",
        )
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("_sqlx_migrations"), "{stderr}");
    assert!(!stderr.contains("sqlx::postgres::notice"), "{stderr}");

    let out = app.run_cli(&["migrate"], "").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("_sqlx_migrations"), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "migrations applied\n");

    app.cleanup().await;
}

/// Whether a JSON log line is the start-up warning about `DNS_NAMESERVERS`.
fn is_nameservers_warning(line: &str) -> bool {
    serde_json::from_str::<Value>(line).is_ok_and(|v| {
        v["level"] == "WARN"
            && v["variable"] == "DNS_NAMESERVERS"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.contains("DNS_NAMESERVERS") && m.contains("DNS job"))
    })
}

/// DNS jobs fail without `DNS_NAMESERVERS`: `serve` and `worker` say so when they start, not
/// the first order's zone.
#[tokio::test]
async fn a_missing_dns_nameservers_is_a_startup_warning() {
    // The tests' default sets it: no warning.
    let app = TestApp::spawn().await;
    assert!(
        !app.log_lines().iter().any(|l| is_nameservers_warning(l)),
        "{:?}",
        app.log_lines()
    );
    app.cleanup().await;

    let app = TestApp::spawn_with(&[("DNS_NAMESERVERS", "")]).await;
    assert!(
        app.log_lines().iter().any(|l| is_nameservers_warning(l)),
        "serve: {:?}",
        app.log_lines()
    );

    // `mpanel worker` with the same environment.
    let mut worker = panel::command("mpanel", app.dir.path())
        .arg("worker")
        .envs(app.env().iter().map(|(k, v)| (k, v)))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn mpanel worker");
    let stdout = worker.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let warned = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("[worker] {line}");
            if is_nameservers_warning(&line) {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(warned, "the worker did not warn about DNS_NAMESERVERS");
    // SAFETY: kill(2) on our own child's pid with a valid signal number.
    unsafe {
        libc::kill(worker.id().unwrap() as i32, libc::SIGTERM);
    }
    let _ = tokio::time::timeout(Duration::from_secs(20), worker.wait()).await;

    app.cleanup().await;
}
