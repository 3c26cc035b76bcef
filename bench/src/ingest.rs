//! Order ingest: paid orders through `POST /api/orders` (the marketing backend's call, with
//! the internal key) at a fixed concurrency, the panel running the simulate dispatcher; then,
//! on the same database with the panel stopped, pgbench running the statements one order
//! makes (`orders/place.rs`) at the same concurrency. The ratio says what the panel's HTTP,
//! validation, Redis push and worker cost on top of the SQL.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use anyhow::{Context, bail, ensure};
use mpanel_tests::{
    panel::INTERNAL_KEY,
    selling::{hosting_offer_ssl, order_body},
};
use serde_json::{Value, json};

use crate::{
    report::{Against, Figure, Goal, Report, Row, Spread},
    setup::{self, Panel, TENANT},
};

pub const PGBENCH: &str = "/usr/bin/pgbench";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Orders to place.
    #[arg(long, default_value_t = 500)]
    orders: usize,
    /// Orders in flight at once (and pgbench's clients).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// How long pgbench runs (`-T`).
    #[arg(long, default_value_t = 10)]
    pgbench_secs: u64,
    /// A setting for the panel, `NAME=VALUE` (repeatable), e.g. `RUN_WORKER=false` to take
    /// the worker out of the measure.
    #[arg(long = "panel-env", value_parser = crate::order_live::name_value)]
    panel_env: Vec<(String, String)>,
}

pub async fn run(args: Args) -> anyhow::Result<Report> {
    ensure!(
        args.orders > 0 && args.concurrency > 0,
        "--orders and --concurrency must be at least 1"
    );
    let mut report = Report::new(
        "ingest",
        json!({ "orders": args.orders, "concurrency": args.concurrency,
                "pgbenchSecs": args.pgbench_secs,
                "panelEnv": args.panel_env.iter()
                    .map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>() }),
    );
    setup::note_binaries(&mut report);

    let mut env = vec![("JOB_DISPATCHER", "simulate")];
    env.extend(args.panel_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let mut panel = Panel::start(&env).await;
    let offer = hosting_offer_ssl(&panel.app, &panel.admin, 1, false).await;
    let placed = place(&panel, offer.plan_slug(), &args).await;
    // pgbench gets the database to itself: the panel's worker would otherwise be draining
    // the orders' jobs during its run.
    panel.app.terminate().await;
    let pgbench = match placed {
        Ok(_) if !std::path::Path::new(PGBENCH).exists() => Err(format!(
            "{PGBENCH} is missing: apt-get install postgresql-contrib"
        )),
        Ok(_) => pgbench(&panel, offer.plan_slug(), &args)
            .await
            .map_err(|e| format!("{e:#}")),
        Err(_) => Err("the panel's run failed".to_owned()),
    };
    panel.cleanup().await;
    let placed = placed?;

    let per_sec = placed.ok as f64 / placed.secs;
    let what = format!(
        "pgbench, the same statements ({} clients, -M prepared)",
        args.concurrency
    );
    let against = match &pgbench {
        Ok(tps) => Against::measured(&what, Figure::per_sec(*tps, "tx/s")),
        Err(why) => Against::skipped(&what, why.clone()),
    };
    let mut row = Row::new(
        format!("orders placed, concurrency {}", args.concurrency),
        Some(Figure::per_sec(per_sec, "orders/s")),
    )
    .against(against);
    if placed.failed > 0 {
        row = row.note(format!("{} answers were not 201", placed.failed));
    }
    report.push(row);
    if let Ok(tps) = &pgbench {
        report.push(
            Row::new(
                "orders/s as a share of pgbench's tx/s",
                Some(Figure::of(100.0 * per_sec / tps, "%")),
            )
            .goal(Goal::at_least(90.0)),
        );
    }
    if let Some(s) = Spread::of(&placed.latencies) {
        report.push(Row::new(
            "POST /api/orders latency under that load, p50",
            Some(Figure::ms(s.p50)),
        ));
        report.push(Row::new(
            "POST /api/orders latency under that load, p99",
            Some(Figure::ms(s.p99)),
        ));
    }
    report.note(format!(
        "{} orders (new customer, domain and payment intent each) for a SHARED_HOSTING plan with one mailbox \
         (3 jobs), JOB_DISPATCHER=simulate, the panel's default DATABASE_MAX_CONNECTIONS",
        args.orders
    ));
    report.note(
        "pgbench runs after the panel is stopped, on the same database, with a script of the statements \
         `place_paid_order` makes for such an order, on the real tables: the idempotency SELECT, then in one \
         transaction the tenant and plan SELECTs, the customer upsert, the order, domain and subscription \
         INSERTs, 3 job INSERTs each with its job_log row, the dependency UPDATE and the audit_logs INSERT; \
         after the commit the enqueued_at UPDATE (job payloads and audit details copied from a real order). \
         It does no HTTP and no Redis push.",
    );
    Ok(report)
}

struct Placed {
    ok: usize,
    failed: usize,
    secs: f64,
    latencies: Vec<f64>,
}

/// Places `args.orders` orders, `args.concurrency` at a time.
async fn place(panel: &Panel, plan: &str, args: &Args) -> anyhow::Result<Placed> {
    let next = Arc::new(AtomicUsize::new(0));
    let url = panel.app.url("/api/orders");
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (next, http, url) = (next.clone(), panel.app.http.clone(), url.clone());
        let (plan, total) = (plan.to_owned(), args.orders);
        tasks.spawn(async move {
            let (mut ok, mut failed, mut latencies) = (0, 0, Vec::new());
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let body = order_body(TENANT, &plan);
                let t = Instant::now();
                let res = http
                    .post(&url)
                    .header("x-internal-key", INTERNAL_KEY)
                    .json(&body)
                    .send()
                    .await;
                let status = match res {
                    Ok(res) => {
                        let status = res.status().as_u16();
                        let _ = res.bytes().await;
                        status
                    }
                    Err(_) => 0,
                };
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                if status == 201 { ok += 1 } else { failed += 1 }
            }
            (ok, failed, latencies)
        });
    }
    let mut placed = Placed {
        ok: 0,
        failed: 0,
        secs: 0.0,
        latencies: Vec::new(),
    };
    while let Some(done) = tasks.join_next().await {
        let (ok, failed, latencies) = done.context("an order task")?;
        placed.ok += ok;
        placed.failed += failed;
        placed.latencies.extend(latencies);
    }
    placed.secs = started.elapsed().as_secs_f64();
    if placed.ok == 0 {
        bail!("no order was accepted ({} failed)", placed.failed);
    }
    Ok(placed)
}

/// A SQL string literal.
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `v` as JSON text pgbench leaves alone: pgbench reads every `:name` of a script as a
/// variable, even inside a string literal, so structural colons are followed by a space
/// (pretty printing) and colons inside strings are written `\u003a`.
fn json_text(v: &Value) -> String {
    let pretty = serde_json::to_string_pretty(v).expect("a Value serialises");
    let mut out = String::with_capacity(pretty.len());
    let mut chars = pretty.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ':' if chars.peek() != Some(&' ') => out.push_str("\\u003a"),
            '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// pgbench's tx/s for the statements of one order.
async fn pgbench(panel: &Panel, plan: &str, args: &Args) -> anyhow::Result<f64> {
    let pool = panel.app.db.pool().await;
    // A real order's job payloads and audit details, so the rows are as wide as the panel's.
    let mut payloads = Vec::new();
    for kind in ["PROVISION_DNS", "PROVISION_HOSTING", "PROVISION_MAIL"] {
        let p: Value = sqlx::query_scalar("SELECT payload FROM jobs WHERE type::text = $1 LIMIT 1")
            .bind(kind)
            .fetch_one(&pool)
            .await
            .with_context(|| format!("a {kind} job of the panel's run"))?;
        payloads.push((kind, json_text(&p)));
    }
    let details: Value =
        sqlx::query_scalar("SELECT details FROM audit_logs WHERE action = 'order.create' LIMIT 1")
            .fetch_one(&pool)
            .await
            .context("an order.create audit row")?;
    pool.close().await;

    let script = script(plan, &payloads, &json_text(&details));
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("order.sql");
    std::fs::write(&file, script)?;
    let out = tokio::process::Command::new(PGBENCH)
        .args(["-n", "-M", "prepared", "-j", "2"])
        .args(["-c", &args.concurrency.to_string()])
        .args(["-T", &args.pgbench_secs.max(1).to_string()])
        .arg("-f")
        .arg(&file)
        .arg(&panel.app.db.url)
        .kill_on_drop(true)
        .output()
        .await
        .context("run pgbench")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench failed: {}{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            stdout.trim()
        );
    }
    let failed = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("number of failed transactions: "))
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or("0");
    ensure!(
        failed == "0",
        "pgbench: {failed} failed transactions\n{stdout}"
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no tps in pgbench's output:\n{stdout}"))
}

/// The pgbench script: `place_paid_order`'s statements for one new hosting order.
fn script(plan: &str, payloads: &[(&str, String)], details: &str) -> String {
    let key = "'pgb-' || :client_id::text || '-' || :r::text";
    let mut s = format!(
        "\\set r random(1, 999999999999)\n\
         SELECT o.id, s.id FROM orders o LEFT JOIN subscriptions s ON s.order_id = o.id \
           WHERE (o.stripe_payment_intent_id = 'pi_' || {key}) LIMIT 1;\n\
         BEGIN;\n\
         SELECT id AS tenant FROM tenants WHERE slug = {tenant} AND is_active \\gset\n\
         SELECT pl.id AS plan, pl.currency, pl.billing_interval, pl.limits_json, p.type AS product_type \
           FROM plans pl JOIN products p ON p.id = pl.product_id \
           WHERE pl.tenant_id = :tenant AND pl.slug = {plan} AND pl.is_active AND p.is_active \\gset\n\
         INSERT INTO customers (tenant_id, email, full_name, phone) \
           VALUES (:tenant, {key} || '@buyer.example.com', 'Client Name', '+1 555 0100') \
           ON CONFLICT (tenant_id, email) DO UPDATE \
           SET full_name = COALESCE(customers.full_name, EXCLUDED.full_name), \
               phone = COALESCE(customers.phone, EXCLUDED.phone) RETURNING id AS customer \\gset\n\
         INSERT INTO orders (tenant_id, customer_id, plan_id, status, total_amount_cents, currency, \
                             stripe_payment_intent_id, external_order_id, notes) \
           VALUES (:tenant, :customer, :plan, 'PAID', 149, 'usd', 'pi_' || {key}, NULL, 'Marketing site order') \
           ON CONFLICT DO NOTHING RETURNING id AS order_id \\gset\n\
         INSERT INTO domains (tenant_id, customer_id, name, status) \
           VALUES (:tenant, :customer, {key} || '.example.com', 'PENDING_SETUP') \
           ON CONFLICT (name) DO NOTHING RETURNING id AS domain \\gset\n\
         INSERT INTO subscriptions (tenant_id, customer_id, plan_id, order_id, domain_id, status, \
                                    started_at, current_period_start, current_period_end) \
           VALUES (:tenant, :customer, :plan, :order_id, :domain, 'ACTIVE', now(), now(), now() + interval '1 month') \
           RETURNING id AS subscription \\gset\n",
        tenant = lit(TENANT),
        plan = lit(plan),
    );
    for (i, (kind, payload)) in payloads.iter().enumerate() {
        s.push_str(&format!(
            "INSERT INTO jobs (tenant_id, order_id, type, payload, max_attempts, created_at, \
                               domain_id, subscription_id, hosting_account_id, mail_account_id, \
                               dns_zone_id, backup_job_id, vps_id) \
               VALUES (:tenant, :order_id, '{kind}', {payload}, 5, clock_timestamp(), :domain, \
                       :subscription, NULL, NULL, NULL, NULL, NULL) RETURNING id AS job{i} \\gset\n\
             INSERT INTO job_logs (job_id, tenant_id, from_status, to_status, message, details) \
               VALUES (:job{i}, :tenant, NULL, 'PENDING', 'created', NULL);\n",
            payload = lit(payload),
        ));
    }
    s.push_str(&format!(
        "UPDATE jobs SET after_job_id = :job1 WHERE id = :job0;\n\
         INSERT INTO audit_logs (tenant_id, user_id, action, ip_address, user_agent, details) \
           VALUES (:tenant, NULL, 'order.create', '127.0.0.1', 'mpanel-bench', {details});\n\
         COMMIT;\n\
         UPDATE jobs SET enqueued_at = now() WHERE id IN (:job0, :job1, :job2) AND status = 'PENDING';\n",
        details = lit(details),
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_for_pgbench_has_no_colon_before_a_name_and_means_the_same() {
        let v = json!({"at": "2026-12-02T01:32:00Z", "n": 149, "x": null, "a": [1, {"b": "c: d"}]});
        let text = json_text(&v);
        let bytes = text.as_bytes();
        for (i, b) in bytes.iter().enumerate() {
            if *b == b':' {
                assert_eq!(bytes.get(i + 1), Some(&b' '), "{text}");
            }
        }
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), v);
    }
}
