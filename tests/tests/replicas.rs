//! Several panel processes over one installation, with real agents (web, dns, mail over a
//! private nginx, PowerDNS and mail maps): any process reaches any agent, and losing a
//! process loses no command.
//!
//! - Two `serve` replicas and a standalone `worker`, the agents spread over the replicas: a
//!   burst of orders provisions every job whatever process took it, and the API of each
//!   replica pings the agents held by the other.
//! - The replica holding an agent is SIGKILLed while that agent has commands on their way:
//!   the agent reconnects to the other replica, which sends them again under the same ids,
//!   and every command is executed exactly once.
//! - The operator guide's recipe for more workers (`RUN_WORKER=false` on serve plus
//!   `mpanel worker`) provisions a real order.
//! - SIGTERM to a replica whose worker waits on an agent nobody can reach ends it within
//!   `SHUTDOWN_TIMEOUT`; the job is handed back and another process finishes it.

use std::{net::SocketAddr, time::Duration};

use mpanel_tests::{
    TestApp,
    api::org_with_roles,
    panel::INTERNAL_KEY,
    replica::{Fleet3, Process, Replica, SHARED_CREDENTIALS_KEY},
    selling::{JobRow, hosting_offer, job_log, jobs_of_order, order_body},
    wait_for,
};
use serde_json::Value;
use sqlx::PgPool;

const WAIT: Duration = Duration::from_secs(90);

/// The environment every process of these tests shares (on top of the harness's).
fn shared(run_worker: bool) -> Vec<(&'static str, &'static str)> {
    vec![
        ("CREDENTIALS_KEY", SHARED_CREDENTIALS_KEY),
        ("RUN_WORKER", if run_worker { "true" } else { "false" }),
        ("AGENT_HEARTBEAT_INTERVAL", "2s"),
        ("JOB_SWEEP_INTERVAL", "200ms"),
        ("JOB_RETRY_BASE", "200ms"),
        ("JOB_MAX_ATTEMPTS", "20"),
        ("JOB_LEASE", "5s"),
        ("DNS_HOSTMASTER", "hostmaster@example.test"),
    ]
}

async fn hub_of(app: &TestApp) -> SocketAddr {
    mpanel_tests::fleet::hub_addr(app).await
}

/// Places `n` orders at once (as the marketing site would, through `base`); their ids and
/// domains.
async fn burst(app: &TestApp, base: &str, plan: &str, n: usize) -> Vec<(String, String)> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let body = order_body("acme", plan);
        let domain = body["metadata"]["domain"].as_str().unwrap().to_owned();
        let (http, url) = (app.http.clone(), format!("{base}/api/orders"));
        tasks.spawn(async move {
            let res = http
                .post(url)
                .header("x-internal-key", INTERNAL_KEY)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 201);
            let placed: Value = res.json().await.unwrap();
            (placed["orderId"].as_str().unwrap().to_owned(), domain)
        });
    }
    tasks.join_all().await
}

/// Waits until every job of every order succeeded (a FAILED one fails the test at once).
async fn all_succeed(pool: &PgPool, orders: &[(String, String)]) -> Vec<JobRow> {
    wait_for("every job of the burst to succeed", WAIT, || async {
        let mut all = Vec::new();
        for (order, _) in orders {
            all.extend(jobs_of_order(pool, order).await);
        }
        for j in &all {
            assert_ne!(j.status, "FAILED", "{j:?}");
        }
        (!all.is_empty() && all.iter().all(|j| j.status == "SUCCESS")).then_some(all)
    })
    .await
}

/// Every job succeeded on its first attempt: no attempt failed for lack of a route to its
/// agent, and the DNS job waited for its site instead of failing until it was there.
async fn all_on_first_attempt(pool: &PgPool, jobs: &[JobRow]) {
    for job in jobs {
        let log = job_log(pool, job.id).await;
        assert_eq!(job.attempts, 1, "{} {}: {log:?}", job.kind, job.id);
        assert!(
            !log.iter().any(|(_, _, msg)| msg.contains("failed")),
            "{} {}: {log:?}",
            job.kind,
            job.id
        );
    }
}

/// The workers (by id) that ran these jobs' successful attempts.
async fn workers_of(pool: &PgPool, jobs: &[JobRow]) -> std::collections::BTreeSet<String> {
    let ids: Vec<uuid::Uuid> = jobs.iter().map(|j| j.id).collect();
    let workers: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT DISTINCT details->>'worker' FROM job_logs
          WHERE job_id = ANY($1) AND message LIKE 'attempt % started%'",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await
    .unwrap();
    workers.into_iter().flatten().collect()
}

async fn ping(http: &reqwest::Client, base: &str, token: &str, server: &str) -> Value {
    // The agent may have connected a moment ago: the first ping may wait for it.
    let res = http
        .post(format!("{base}/api/servers/{server}/ping?timeoutSecs=10"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 200, "ping {server} through {base}: {body}");
    body
}

#[tokio::test]
async fn two_replicas_and_a_worker_provision_a_burst_wherever_the_agents_are() {
    let app = TestApp::spawn_with(&shared(true)).await;
    let acme = org_with_roles(&app, "acme", &["SUPER_ADMIN"]).await;
    let admin = acme.super_admin().token().to_owned();
    let b = Replica::start(&app, "replica-b", &[]).await;
    let mut worker = Process::start(&app, "worker", "worker", &[]);
    let a_hub = hub_of(&app).await;
    // web on A only, dns on B only, mail on either.
    let fleet = Fleet3::start(&app, &admin, [&[a_hub], &[b.hub], &[b.hub, a_hub]]).await;

    // Each replica's API reaches the agent the other holds.
    ping(
        &app.http,
        &format!("http://{}", app.addr),
        &admin,
        &fleet.ids[1],
    )
    .await;
    ping(&app.http, &b.url(""), &admin, &fleet.ids[0]).await;

    let offer = hosting_offer(&app, &admin, 1).await;
    let orders = burst(&app, &b.url(""), offer.plan_slug(), 6).await;
    let pool = app.db.pool().await;
    let jobs = all_succeed(&pool, &orders).await;
    assert_eq!(
        jobs.len(),
        24,
        "four jobs per order: zone, site, mailbox, certificate"
    );
    all_on_first_attempt(&pool, &jobs).await;
    let workers = workers_of(&pool, &jobs).await;
    assert!(
        workers.len() >= 2,
        "jobs ran in several processes: {workers:?}"
    );
    // Every site is served over HTTPS, every zone answers.
    let root = fleet.pebble.as_ref().expect("the fleet's pebble").root();
    for (_, domain) in &orders {
        let (status, _) = fleet.web.get_https(domain, &root).unwrap();
        assert_eq!(status, 200, "{domain}");
        assert_eq!(fleet.pdns.dig(domain, "A"), ["192.0.2.80"]);
    }
    // Exactly one execution per command.
    assert_eq!(
        fleet.agents[0]
            .wait_count(&["executing command", "create_site"], 6)
            .await,
        6
    );
    assert_eq!(
        fleet.agents[0]
            .wait_count(&["executing command", "issue_certificate"], 6)
            .await,
        6
    );
    assert_eq!(
        fleet.agents[1]
            .wait_count(&["executing command", "sync_dns_zone"], 6)
            .await,
        6
    );
    assert_eq!(
        fleet.agents[2]
            .wait_count(&["executing command", "create_mailbox"], 6)
            .await,
        6
    );

    worker.terminate(Duration::from_secs(20)).await;
    let mut b = b;
    b.process.terminate(Duration::from_secs(20)).await;
    app.cleanup().await;
}

/// Which of these logs last says `server`'s agent connected to it (the replicas' "agent
/// connected" lines).
fn holder(logs: [Vec<String>; 2], server: &str) -> Option<usize> {
    logs.iter().position(|lines| {
        lines.iter().rev().find_map(|l| {
            if !l.contains(server) {
                return None;
            }
            let v: Value = serde_json::from_str(l).ok()?;
            match v["message"].as_str()? {
                "agent connected" => Some(true),
                "agent disconnected; server offline" => Some(false),
                _ => None,
            }
        }) == Some(true)
    })
}

#[tokio::test]
async fn killing_the_replica_that_holds_an_agent_loses_no_command() {
    // Only the standalone worker runs jobs: its commands outlive the replica that dies.
    let mut env = shared(false);
    // The hub must not drop the stopped agent as silent before the replica dies.
    env.retain(|(k, _)| *k != "AGENT_HEARTBEAT_INTERVAL");
    env.push(("AGENT_HEARTBEAT_INTERVAL", "10s"));
    let app = TestApp::spawn_with(&env).await;
    let acme = org_with_roles(&app, "acme", &["SUPER_ADMIN"]).await;
    let admin = acme.super_admin().token().to_owned();
    let mut b = Replica::start(&app, "replica-b", &[]).await;
    let mut worker = Process::start(&app, "worker", "worker", &[]);
    let a_hub = hub_of(&app).await;
    let both: &[SocketAddr] = &[a_hub, b.hub];
    let fleet = Fleet3::start(&app, &admin, [both, both, both]).await;
    let web_id = fleet.ids[0].clone();

    // The web agent stops reading; the site commands of a burst are written to the replica
    // that holds it and wait there.
    let offer = hosting_offer(&app, &admin, 1).await;
    let held_by = wait_for("the web agent's replica", WAIT, || async {
        holder([app.log_lines(), b.process.log_lines()], &web_id)
    })
    .await;
    fleet.agents[0].signal(libc::SIGSTOP);
    let orders = burst(&app, &b.url(""), offer.plan_slug(), 4).await;
    let pool = app.db.pool().await;
    wait_for(
        "the site commands to be written to the agent's connection",
        WAIT,
        || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM agent_commands
              WHERE server_id = $1::uuid AND kind = 'create_site' AND delivered_at IS NOT NULL",
            )
            .bind(&web_id)
            .fetch_one(&pool)
            .await
            .unwrap();
            (n == 4).then_some(())
        },
    )
    .await;

    // The replica holding it dies; the agent wakes up and finds the other one.
    let mut app = app;
    if held_by == 0 {
        app.kill().await;
    } else {
        b.process.kill().await;
    }
    fleet.agents[0].signal(libc::SIGCONT);
    let jobs = all_succeed(&pool, &orders).await;
    all_on_first_attempt(&pool, &jobs).await;
    for (_, domain) in &orders {
        fleet.wait_https(domain, 200);
    }
    // Each site command ran once, whatever was re-sent.
    assert_eq!(
        fleet.agents[0]
            .wait_count(&["executing command", "create_site"], 4)
            .await,
        4
    );
    let resent = fleet.agents[0].count(&["command answered from the journal"])
        + fleet.agents[0].count(&["already running"]);
    eprintln!("site commands answered again after the fail-over: {resent}");

    worker.terminate(Duration::from_secs(20)).await;
    if held_by == 0 {
        b.process.terminate(Duration::from_secs(20)).await;
    }
    app.cleanup().await;
}

#[tokio::test]
async fn the_guides_worker_recipe_provisions_a_real_order() {
    let app = TestApp::spawn_with(&shared(false)).await;
    let acme = org_with_roles(&app, "acme", &["SUPER_ADMIN"]).await;
    let admin = acme.super_admin().token().to_owned();
    let mut worker = Process::start(&app, "worker", "worker", &[]);
    let hub = hub_of(&app).await;
    let fleet = Fleet3::start(&app, &admin, [&[hub], &[hub], &[hub]]).await;
    let offer = hosting_offer(&app, &admin, 1).await;
    let orders = burst(&app, &format!("http://{}", app.addr), offer.plan_slug(), 1).await;
    let pool = app.db.pool().await;
    let jobs = all_succeed(&pool, &orders).await;
    all_on_first_attempt(&pool, &jobs).await;
    let workers = workers_of(&pool, &jobs).await;
    assert_eq!(
        workers.len(),
        1,
        "only the standalone worker runs jobs: {workers:?}"
    );
    fleet.wait_https(&orders[0].1, 200);
    worker.terminate(Duration::from_secs(20)).await;
    app.cleanup().await;
}

#[tokio::test]
async fn sigterm_hands_back_jobs_waiting_on_an_unreachable_agent() {
    let mut env = shared(true);
    env.push(("SHUTDOWN_TIMEOUT", "4s"));
    // The stopped agent stays registered (online, unreachable) for the whole test.
    env.retain(|(k, _)| *k != "AGENT_HEARTBEAT_INTERVAL");
    env.push(("AGENT_HEARTBEAT_INTERVAL", "30s"));
    let app = TestApp::spawn_with(&env).await;
    let acme = org_with_roles(&app, "acme", &["SUPER_ADMIN"]).await;
    let admin = acme.super_admin().token().to_owned();
    let mut b = Replica::start(&app, "replica-b", &[("RUN_WORKER", "false")]).await;
    let fleet = Fleet3::start(&app, &admin, [&[b.hub], &[b.hub], &[b.hub]]).await;
    // The web agent stops answering (its connection stays up): site commands wait for it.
    fleet.agents[0].signal(libc::SIGSTOP);
    let offer = hosting_offer(&app, &admin, 0).await;
    let orders = burst(&app, &b.url(""), offer.plan_slug(), 1).await;
    let pool = app.db.pool().await;
    let site_job = wait_for("the site job to wait on its agent", WAIT, || async {
        let jobs = jobs_of_order(&pool, &orders[0].0).await;
        let site = jobs.into_iter().find(|j| j.kind == "PROVISION_HOSTING")?;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM agent_commands WHERE job_id = $1")
            .bind(site.id)
            .fetch_one(&pool)
            .await
            .unwrap();
        (site.status == "RUNNING" && n == 1).then_some(site)
    })
    .await;

    // SIGTERM ends the replica within its timeout, handing the job back.
    let mut app = app;
    let (status, took) = app.terminate_timed(Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}");
    assert!(
        took < Duration::from_secs(7),
        "exited in {took:?} (SHUTDOWN_TIMEOUT 4s)"
    );
    let log = job_log(&pool, site_job.id).await;
    assert!(
        log.iter()
            .any(|(_, to, msg)| to == "PENDING" && msg == "handed back at shutdown"),
        "{log:?}"
    );

    // Another process finishes it once the agent is back, under the same command id.
    let mut worker = Process::start(&app, "worker", "worker", &[]);
    fleet.agents[0].signal(libc::SIGCONT);
    let jobs = all_succeed(&pool, &orders).await;
    all_on_first_attempt(&pool, &jobs).await;
    let commands: i64 = sqlx::query_scalar("SELECT count(*) FROM agent_commands WHERE job_id = $1")
        .bind(site_job.id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(commands, 1, "the next run reused the command");
    assert_eq!(
        fleet.agents[0]
            .wait_count(&["executing command", "create_site"], 1)
            .await,
        1
    );
    fleet.wait_https(&orders[0].1, 200);

    worker.terminate(Duration::from_secs(20)).await;
    b.process.terminate(Duration::from_secs(20)).await;
    app.cleanup().await;
}
