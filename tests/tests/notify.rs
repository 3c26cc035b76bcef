//! Durable e-mail against the real `mpanel serve` / `mpanel worker` and a real SMTP dialogue
//! (the harness's sink): a job that gives up mails the tenant's active admins; a fully
//! provisioned order mails its customer the stashed credentials, which are never in clear in
//! the database and are deleted once composed; an e-mail waits in PostgreSQL while the relay
//! is down, survives a panel restart and is delivered once the relay is back; two workers
//! draining one outbox send each e-mail exactly once.

use std::{
    collections::{BTreeSet, HashMap},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use mpanel::{
    config::Config,
    notify,
    secrets::{CredentialsKey, Sealer},
};
use mpanel_tests::{
    TestApp,
    api::{self, create_server, create_user, email_for},
    panel::command,
    selling::{self, hosting_offer, order_body, place_order, str_of, wait_jobs},
    smtp::{SinkOptions, SmtpSink, free_port},
    wait_for,
};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Child,
};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);
const KEY: &str = "8c0f3e51a9d27b64f0e1c2d3b4a5968778695a4b3c2d1e0ff1e2d3c4b5a69788";
const FROM: &str = "panel@mpanel.test";
const APP_URL: &str = "https://panel.example.test";

/// The panel with its e-mail going to `smtp_port` in plain SMTP, a fixed CREDENTIALS_KEY and
/// quick retries, plus `extra`.
async fn spawn(smtp_port: u16, extra: &[(&str, &str)]) -> TestApp {
    let port = smtp_port.to_string();
    let mut env = vec![
        ("SMTP_HOST", "127.0.0.1"),
        ("SMTP_PORT", port.as_str()),
        ("SMTP_TLS", "none"),
        ("EMAIL_FROM", FROM),
        ("CREDENTIALS_KEY", KEY),
        ("APP_URL", APP_URL),
        ("JOB_RETRY_BASE", "200ms"),
        ("JOB_SWEEP_INTERVAL", "200ms"),
    ];
    env.extend_from_slice(extra);
    TestApp::spawn_with(&env).await
}

/// The panel's configuration, read from the environment the test started it with.
fn config_of(app: &TestApp) -> Config {
    let vars: HashMap<String, String> = app.env().iter().cloned().collect();
    Config::from_vars(&vars).expect("the test panel's environment is valid")
}

fn sealer() -> Sealer {
    Sealer::new(&CredentialsKey::parse_hex(KEY).unwrap())
}

/// `mpanel worker` against the app with `extra`, its stdout kept; returns once it runs.
async fn spawn_worker(app: &TestApp, extra: &[(&str, &str)]) -> (Child, Arc<Mutex<Vec<String>>>) {
    let mut cmd = command("mpanel", app.dir.path());
    cmd.arg("worker")
        .envs(app.env().iter().map(|(k, v)| (k, v)))
        .envs(extra.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("spawn mpanel worker");
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let lines = log.clone();
    let stdout = child.stdout.take().unwrap();
    tokio::spawn(async move {
        let mut reader = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            eprintln!("[worker] {line}");
            lines.lock().unwrap().push(line);
        }
    });
    wait_for("the second worker to start", WAIT, || {
        let started = count_logged(&log.lock().unwrap(), "worker started") > 0;
        async move { started.then_some(()) }
    })
    .await;
    (child, log)
}

/// Log lines (JSON) whose message is `message`.
fn count_logged(lines: &[String], message: &str) -> usize {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == message)
        .count()
}

/// Queues the "job failed" e-mail of a made-up job of `tenant` as the worker does; its id.
async fn queue_failure_email(app: &TestApp, pool: &PgPool, tenant: Uuid) -> Uuid {
    let job_id = Uuid::new_v4();
    let mut tx = pool.begin().await.unwrap();
    notify::queue_job_failed(
        &mut tx,
        &sealer(),
        &config_of(app),
        tenant,
        job_id,
        "PROVISION_MAIL",
        3,
        "the mail server's agent is offline",
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    job_id
}

/// One outbound_emails row as the tests look at it.
#[derive(Debug, sqlx::FromRow)]
struct Outbound {
    kind: String,
    dedupe_key: String,
    to_addresses: Vec<String>,
    status: String,
    attempts: i32,
    last_error: Option<String>,
    has_body: bool,
}

async fn outbound(pool: &PgPool) -> Vec<Outbound> {
    sqlx::query_as(
        "SELECT kind, dedupe_key, to_addresses, status, attempts, last_error,
                sealed_body IS NOT NULL AS has_body
           FROM outbound_emails ORDER BY created_at, id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Waits until there are `n` e-mails in the outbox and all are SENT.
async fn wait_all_sent(pool: &PgPool, n: usize) -> Vec<Outbound> {
    wait_for(&format!("{n} e-mail(s) SENT"), WAIT, || async {
        let rows = outbound(pool).await;
        (rows.len() == n && rows.iter().all(|r| r.status == "SENT")).then_some(rows)
    })
    .await
}

/// The tables (and how many rows each) whose rows contain `needle` in clear or hex-encoded,
/// as a bytea column would show it.
async fn tables_holding(pool: &PgPool, needle: &str) -> Vec<(String, i64)> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
          WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut found = Vec::new();
    for table in tables {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            r#"SELECT count(*) FROM "{table}" x
                WHERE strpos(x::text, $1) > 0 OR strpos(lower(x::text), $2) > 0"#
        )))
        .bind(needle)
        .bind(hex::encode(needle))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("scan {table}: {e}"));
        if n > 0 {
            found.push((table, n));
        }
    }
    found
}

#[tokio::test]
async fn a_failed_job_mails_the_tenants_active_admins_once() {
    let sink = SmtpSink::start().await;
    let app = spawn(sink.port(), &[("JOB_MAX_ATTEMPTS", "1")]).await;
    let pool = app.db.pool().await;
    let acme = api::org_with_roles(&app, "acme", &["SUPER_ADMIN", "ADMIN", "SUPPORT"]).await;
    let root = acme.super_admin().token().to_owned();
    create_user(&app, &root, "gone@acme.example.com", "ADMIN").await;
    sqlx::query("UPDATE users SET is_active = false WHERE email = 'gone@acme.example.com'")
        .execute(&pool)
        .await
        .unwrap();
    // Another tenant's admins hear nothing of acme's jobs.
    api::org_with_roles(&app, "globex", &["SUPER_ADMIN", "ADMIN"]).await;

    // A DNS-only order: its one job fails at once, as acme has no DNS server.
    let product = selling::create_product(&app, &root, "DNS").await;
    let plan = selling::create_plan(
        &app,
        &root,
        &selling::plan_body(str_of(&product, "id"), "dns-monthly", json!({})),
    )
    .await;
    let placed = place_order(&app, &order_body("acme", str_of(&plan, "slug"))).await;
    let jobs = wait_jobs(&pool, str_of(&placed, "orderId"), "FAILED", WAIT).await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let job = &jobs[0];
    assert_eq!(job.kind, "PROVISION_DNS");

    let received = sink.wait_for_messages(1, WAIT).await;
    let rows = wait_all_sent(&pool, 1).await;
    assert_eq!(sink.messages().len(), 1, "one e-mail for one failure");
    let mail = &received[0];
    let mut to = mail.rcpt_to.clone();
    to.sort();
    assert_eq!(
        to,
        [email_for("acme", "ADMIN"), email_for("acme", "SUPER_ADMIN")],
        "active SUPER_ADMIN and ADMIN users only (not SUPPORT, not the inactive admin)"
    );
    assert_eq!(mail.mail_from, FROM);
    assert!(
        mail.subject().contains("PROVISION_DNS"),
        "{}",
        mail.subject()
    );
    let text = mail.text();
    for part in [
        format!("Job:       {}", job.id),
        "Attempts:  1".to_owned(),
        job.last_error.clone().expect("the job's error"),
        format!("{APP_URL}/jobs/{}", job.id),
    ] {
        assert!(text.contains(&part), "{part:?} missing from:\n{text}");
    }

    let row = &rows[0];
    assert_eq!(row.kind, "JOB_FAILED");
    assert!(
        row.dedupe_key
            .starts_with(&format!("job-failed:{}:", job.id)),
        "{row:?}"
    );
    assert_eq!(row.to_addresses.len(), 2);
    assert_eq!((row.attempts, row.has_body), (1, false), "{row:?}");

    pool.close().await;
    app.cleanup().await;
}

#[tokio::test]
async fn the_welcome_email_carries_the_credentials_which_never_rest_in_clear() {
    const SECRET: &str = "Zq7-welcome-Secret-4711";
    const EARLIER: &str = "Zq7-first-try-Secret-0815";
    // The relay is down until the e-mail has been composed, so the queued row can be looked at.
    let smtp_port = free_port();
    // Only the worker started later runs jobs (every process runs the outbox).
    let app = spawn(smtp_port, &[("RUN_WORKER", "false")]).await;
    let pool = app.db.pool().await;
    let acme = api::org_with_roles(&app, "acme", &["SUPER_ADMIN"]).await;
    let root = acme.super_admin().token().to_owned();
    let offer = hosting_offer(&app, &root, 1).await;
    let body = order_body("acme", offer.plan_slug());
    let customer = str_of(&body["customer"], "email").to_owned();
    let domain = str_of(&body["metadata"], "domain").to_owned();
    let placed = place_order(&app, &body).await;
    let order_id: Uuid = str_of(&placed, "orderId").parse().unwrap();
    let tenant_id: Uuid = acme.tenant_id.parse().unwrap();

    // What the order's jobs record as they provision (the simulated dispatcher records
    // nothing): the hosting account on a web server, the mailbox, the zone.
    let server = create_server(&app, &root, "web-1").await;
    let server_id: Uuid = str_of(&server, "id").parse().unwrap();
    let domain_id: Uuid = sqlx::query_scalar("SELECT id FROM domains WHERE name = $1")
        .bind(&domain)
        .fetch_one(&pool)
        .await
        .unwrap();
    let mailbox = format!("info@{domain}");
    sqlx::query(
        "INSERT INTO hosting_accounts (tenant_id, domain_id, server_id, system_user, home_dir,
                                       php_version)
         VALUES ($1, $2, $3, 'siteuser', '/home/siteuser', '8.2')",
    )
    .bind(tenant_id)
    .bind(domain_id)
    .bind(server_id)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO mail_accounts (tenant_id, domain_id, email) VALUES ($1, $2, $3)")
        .bind(tenant_id)
        .bind(domain_id)
        .bind(&mailbox)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO dns_zones (tenant_id, domain_id) VALUES ($1, $2)")
        .bind(tenant_id)
        .bind(domain_id)
        .execute(&pool)
        .await
        .unwrap();

    // The mail job stashes its password — twice, as a retried job would; and a credential
    // sealed under another key (CREDENTIALS_KEY changed since).
    let mut tx = pool.begin().await.unwrap();
    for secret in [EARLIER, SECRET] {
        notify::stash_credential(
            &mut tx,
            &sealer(),
            tenant_id,
            order_id,
            "MAILBOX",
            &mailbox,
            secret,
        )
        .await
        .unwrap();
    }
    let old_key = Sealer::new(&CredentialsKey::random());
    notify::stash_credential(
        &mut tx,
        &old_key,
        tenant_id,
        order_id,
        "MAILBOX",
        &format!("old@{domain}"),
        "lost-to-a-key-change",
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let stashed = selling::count(&pool, "SELECT count(*) FROM order_credentials").await;
    assert_eq!(stashed, 2, "a retried job replaces its credential");
    for secret in [SECRET, EARLIER] {
        assert_eq!(tables_holding(&pool, secret).await, [], "{secret} in clear");
    }

    // The jobs run and succeed; the last one queues the welcome e-mail, which waits for the
    // relay.
    let (_worker, worker_log) = spawn_worker(&app, &[("JOB_DISPATCHER", "simulate")]).await;
    wait_jobs(&pool, &order_id.to_string(), "SUCCESS", WAIT).await;
    let pending = wait_for("the welcome e-mail to fail an attempt", WAIT, || async {
        let rows = outbound(&pool).await;
        rows.into_iter()
            .find(|r| r.kind == "WELCOME" && r.attempts >= 1)
    })
    .await;
    assert_eq!(pending.status, "PENDING", "{pending:?}");
    assert!(
        pending.has_body && pending.last_error.is_some(),
        "{pending:?}"
    );
    assert_eq!(pending.dedupe_key, format!("welcome:{order_id}"));
    assert_eq!(pending.to_addresses, std::slice::from_ref(&customer));
    assert_eq!(
        selling::count(&pool, "SELECT count(*) FROM order_credentials").await,
        0,
        "the stash is deleted once the e-mail is composed"
    );
    for secret in [SECRET, EARLIER] {
        assert_eq!(tables_holding(&pool, secret).await, [], "{secret} in clear");
    }
    let status: String = sqlx::query_scalar("SELECT status::text FROM domains WHERE id = $1")
        .bind(domain_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "ACTIVE");

    // The relay comes up: the customer gets the e-mail, once, and its body is gone.
    let sink = SmtpSink::start_on(smtp_port).await;
    let received = sink.wait_for_messages(1, WAIT).await;
    let rows = wait_all_sent(&pool, 1).await;
    assert!(!rows[0].has_body, "{:?}", rows[0]);
    assert_eq!(sink.messages().len(), 1);
    let mail = &received[0];
    assert_eq!(mail.rcpt_to, [customer]);
    assert!(mail.subject().contains(&domain), "{}", mail.subject());
    assert!(!mail.subject().contains(SECRET));
    let text = mail.text();
    for part in [
        format!("Mailbox {mailbox}: password {SECRET}"),
        format!(
            "Mailbox old@{domain}: we could not include this password here;\n    please ask our support to reset it."
        ),
        format!("Plan {}", offer.plan_slug()),
        "web-1 (203.0.113.10)".to_owned(),
        "System user:  siteuser".to_owned(),
        "/home/siteuser".to_owned(),
        format!("Mailbox:      {mailbox}"),
        format!("mail.{domain}"),
        "    ns1.example.test\n    ns2.example.test\n".to_owned(),
        APP_URL.to_owned(),
    ] {
        assert!(text.contains(&part), "{part:?} missing from:\n{text}");
    }
    assert!(!text.contains(EARLIER), "the replaced secret is not sent");
    for secret in [SECRET, EARLIER] {
        assert_eq!(tables_holding(&pool, secret).await, [], "{secret} in clear");
    }
    // Neither process logged it.
    let logs = [app.log_lines(), worker_log.lock().unwrap().clone()].concat();
    assert!(
        !logs.iter().any(|l| l.contains(SECRET)),
        "secret in a log line"
    );

    pool.close().await;
    app.cleanup().await;
}

/// `RUN_WORKER=false` turns off the job worker only: the e-mail outbox and subscription
/// expiry are duties of every panel process.
#[tokio::test]
async fn without_a_worker_emails_still_go_and_cancelled_subscriptions_still_end() {
    let sink = SmtpSink::start().await;
    let app = spawn(sink.port(), &[("RUN_WORKER", "false")]).await;
    let pool = app.db.pool().await;
    let acme = api::org_with_roles(&app, "acme", &["SUPER_ADMIN"]).await;
    let tenant_id: Uuid = acme.tenant_id.parse().unwrap();

    let job_id = queue_failure_email(&app, &pool, tenant_id).await;
    let received = sink.wait_for_messages(1, WAIT).await;
    assert!(received[0].text().contains(&job_id.to_string()));

    // A subscription set to end with its period, whose period is over.
    let root = acme.super_admin().token().to_owned();
    let offer = hosting_offer(&app, &root, 1).await;
    let placed = place_order(&app, &order_body("acme", offer.plan_slug())).await;
    let subscription = str_of(&placed, "subscriptionId").to_owned();
    sqlx::query(
        "UPDATE subscriptions SET cancel_at_period_end = true,
                current_period_end = now() - interval '1 minute'
          WHERE id = $1::uuid",
    )
    .bind(&subscription)
    .execute(&pool)
    .await
    .unwrap();
    selling::wait_subscription(&pool, &subscription, "CANCELLED", WAIT).await;
    let jobs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status <> 'PENDING' OR attempts > 0")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(jobs, 0, "no worker ran a job");

    pool.close().await;
    app.cleanup().await;
}

#[tokio::test]
async fn an_email_waits_out_a_relay_outage_and_a_restart_then_goes_once() {
    let smtp_port = free_port();
    let mut app = spawn(smtp_port, &[]).await;
    let pool = app.db.pool().await;
    let acme = api::org_with_roles(&app, "acme", &["SUPER_ADMIN"]).await;
    let tenant_id: Uuid = acme.tenant_id.parse().unwrap();
    let job_id = queue_failure_email(&app, &pool, tenant_id).await;

    // Nothing listens on the relay's port: attempts are counted, the e-mail stays PENDING.
    let failing = wait_for("two failed delivery attempts", WAIT, || async {
        outbound(&pool).await.into_iter().find(|r| r.attempts >= 2)
    })
    .await;
    assert_eq!(failing.status, "PENDING", "{failing:?}");
    assert!(failing.has_body, "{failing:?}");
    assert!(
        failing.last_error.as_deref().is_some_and(|e| !e.is_empty()),
        "{failing:?}"
    );

    // The panel restarts while the relay is still down, then the relay comes back.
    assert!(app.terminate().await.success());
    let sink = SmtpSink::start_on(smtp_port).await;
    app.start().await;
    let received = sink.wait_for_messages(1, WAIT).await;
    let rows = wait_all_sent(&pool, 1).await;
    assert_eq!(sink.messages().len(), 1, "delivered exactly once");
    assert!(rows[0].attempts > failing.attempts, "{:?}", rows[0]);
    assert!(!rows[0].has_body);
    assert_eq!(received[0].rcpt_to, [email_for("acme", "SUPER_ADMIN")]);
    assert!(received[0].text().contains(&job_id.to_string()));

    pool.close().await;
    app.cleanup().await;
}

#[tokio::test]
async fn two_workers_send_each_email_exactly_once() {
    const EMAILS: usize = 24;
    // A slow relay keeps both senders busy at the same time.
    let sink = SmtpSink::start_with(SinkOptions {
        port: None,
        data_delay: Duration::from_millis(150),
    })
    .await;
    let app = spawn(sink.port(), &[]).await;
    let pool = app.db.pool().await;
    let acme = api::org_with_roles(&app, "acme", &["SUPER_ADMIN"]).await;
    let tenant_id: Uuid = acme.tenant_id.parse().unwrap();
    let (_worker, worker_log) = spawn_worker(&app, &[]).await;

    let config = config_of(&app);
    let mut tx = pool.begin().await.unwrap();
    let mut job_ids = BTreeSet::new();
    for _ in 0..EMAILS {
        let job_id = Uuid::new_v4();
        notify::queue_job_failed(
            &mut tx,
            &sealer(),
            &config,
            tenant_id,
            job_id,
            "PROVISION_HOSTING",
            5,
            "boom",
        )
        .await
        .unwrap();
        job_ids.insert(job_id.to_string());
    }
    tx.commit().await.unwrap();

    sink.wait_for_messages(EMAILS, WAIT).await;
    wait_all_sent(&pool, EMAILS).await;
    let received = sink.messages();
    assert_eq!(received.len(), EMAILS, "no e-mail sent twice");
    let mentioned: BTreeSet<String> = received
        .iter()
        .map(|m| {
            let text = m.text();
            job_ids
                .iter()
                .find(|id| text.contains(id.as_str()))
                .unwrap_or_else(|| panic!("no job id in:\n{text}"))
                .clone()
        })
        .collect();
    assert_eq!(mentioned, job_ids, "every e-mail arrived");

    let by_panel = count_logged(&app.log_lines(), "e-mail sent");
    let by_worker = count_logged(&worker_log.lock().unwrap(), "e-mail sent");
    assert_eq!(by_panel + by_worker, EMAILS);
    assert!(
        by_panel > 0 && by_worker > 0,
        "both workers sent (panel {by_panel}, worker {by_worker})"
    );

    pool.close().await;
    app.cleanup().await;
}
