//! The panel with a dependency down, against the real `mpanel serve`: with PostgreSQL cut off
//! (a proxy between the panel and the server, stopped and started again) requests answer 503
//! `database_unavailable` with Retry-After, not a 500, and serve again once it is back without
//! a restart; with Redis down health is 200 `degraded`, and jobs whose messages Redis lost
//! when it restarted empty run again within seconds of its return, not after the sweeper's
//! two-minute re-push.

use std::time::{Duration, Instant};

use mpanel_tests::{
    TestApp, TestDb,
    api::{self, PASSWORD, authed},
    proxy::Proxy,
    selling::{self, JobRow, OwnRedis, hosting_offer_ssl, order_body, place_order, send, str_of},
    wait_for,
};
use serde_json::Value;
use sqlx::PgPool;

/// The pool waits 5 s for a connection; the answer may take a little longer.
const POOL_TIMEOUT_SLACK: Duration = Duration::from_secs(7);

fn log_messages(app: &TestApp) -> Vec<Value> {
    app.log_lines()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test]
async fn database_down_answers_503_database_unavailable_and_serves_again_when_back() {
    // Arrange: the panel reaches its database only through the proxy.
    let db = TestDb::create().await;
    let mut proxy = Proxy::to_postgres(&db.url).await;
    let via_proxy = proxy.url_via(&db.url);
    let app = TestApp::spawn_with(&[("DATABASE_URL", via_proxy.as_str())]).await;
    let org = api::org_with_roles(&app, "home", &["SUPER_ADMIN"]).await;
    let root = org.super_admin().clone();
    authed(&app, root.token())
        .get("/api/jobs")
        .await
        .expect(200);

    // Act: PostgreSQL goes away (refused, and every open connection closed).
    proxy.stop().await;

    // Assert: health says the database is down, within its own probe deadline.
    let started = Instant::now();
    let health = send(app.http.get(app.url("/api/public/health"))).await;
    assert!(started.elapsed() < Duration::from_secs(4), "{health:?}");
    health.assert_error(503, "service_unavailable");
    let details = &health.body["error"]["details"];
    assert_eq!(details["status"], "down", "{health:?}");
    assert_eq!(
        details["checks"]["database"]["status"], "down",
        "{health:?}"
    );
    assert_eq!(details["checks"]["redis"]["status"], "up", "{health:?}");

    // A login and an authenticated read answer 503 `database_unavailable` with Retry-After.
    let started = Instant::now();
    let as_root = authed(&app, root.token());
    let (login, jobs) = tokio::join!(
        api::try_login(&app, &root.email, PASSWORD),
        as_root.get("/api/jobs"),
    );
    let took = started.elapsed();
    for reply in [&login, &jobs] {
        reply.assert_error(503, "database_unavailable");
        assert_eq!(
            reply.body["error"]["message"], "the database is unavailable; try again shortly",
            "{reply:?}"
        );
        assert_eq!(reply.headers["retry-after"], "5", "{reply:?}");
    }
    assert!(took < POOL_TIMEOUT_SLACK, "answered after {took:?}");
    eprintln!("database down: 503 database_unavailable after {took:?}");
    // Said as a warning, not as a failed request with its cause chain.
    let logs = log_messages(&app);
    assert!(
        logs.iter()
            .any(|l| l["message"] == "database unavailable" && l["level"] == "WARN"),
        "a warning about the database"
    );
    assert!(
        !logs.iter().any(|l| l["message"] == "request failed"),
        "no request failed as an internal error"
    );

    // Act: PostgreSQL is back.
    proxy.start().await;

    // Assert: the same process serves again.
    let started = Instant::now();
    let session = wait_for(
        "a login once the database is back",
        Duration::from_secs(20),
        || async {
            let reply = api::try_login(&app, &root.email, PASSWORD).await;
            (reply.status == 200).then(|| api::session_of(&reply))
        },
    )
    .await;
    eprintln!(
        "database back: login answered 200 after {:?}",
        started.elapsed()
    );
    authed(&app, &session.token)
        .get("/api/jobs")
        .await
        .expect(200);
    let health = app.get("/api/public/health").await;
    assert_eq!(health.status(), 200);
    let body: Value = health.json().await.unwrap();
    assert_eq!(body["status"], "ok", "{body}");

    app.cleanup().await;
    proxy.stop().await;
    db.cleanup().await;
}

/// Every job of `orders`, in order.
async fn jobs_of(pool: &PgPool, orders: &[String]) -> Vec<JobRow> {
    let mut jobs = Vec::new();
    for order in orders {
        jobs.extend(selling::jobs_of_order(pool, order).await);
    }
    jobs
}

#[tokio::test]
async fn jobs_lost_with_redis_run_as_soon_as_it_is_back_and_health_stays_up() {
    // Arrange: a Redis of the test's own (no persistence: it comes back empty), and jobs
    // slow enough (2 s, three at a time) that some run and others wait on the stream.
    let mut redis = OwnRedis::start().await;
    let url = redis.url();
    let app = TestApp::spawn_with(&[
        ("REDIS_URL", url.as_str()),
        ("JOB_DISPATCHER", "simulate"),
        ("JOB_SIMULATE_DELAY", "2s"),
        ("WORKER_CONCURRENCY", "3"),
    ])
    .await;
    let org = api::org_with_roles(&app, "home", &["SUPER_ADMIN"]).await;
    let pool = app.db.pool().await;
    let offer = hosting_offer_ssl(&app, org.super_admin().token(), 5, false).await;
    let mut orders = Vec::new();
    for _ in 0..2 {
        let placed = place_order(&app, &order_body("home", offer.plan_slug())).await;
        orders.push(str_of(&placed, "orderId").to_owned());
    }
    wait_for(
        "jobs running while others wait on the stream",
        Duration::from_secs(15),
        || async {
            let jobs = jobs_of(&pool, &orders).await;
            let running = jobs.iter().any(|j| j.status == "RUNNING");
            let waiting = jobs.iter().any(|j| j.status == "PENDING" && j.enqueued);
            (running && waiting).then_some(())
        },
    )
    .await;

    // Act: Redis dies mid-burst, taking the stream with it.
    redis.kill().await;
    let at_loss = jobs_of(&pool, &orders).await;
    let running: Vec<&JobRow> = at_loss.iter().filter(|j| j.status == "RUNNING").collect();
    let lost: Vec<&JobRow> = at_loss
        .iter()
        .filter(|j| j.status == "PENDING" && j.enqueued)
        .collect();
    assert!(
        !running.is_empty(),
        "a job runs as the stream vanishes: {at_loss:?}"
    );
    assert!(
        !lost.is_empty(),
        "jobs wait on the lost stream: {at_loss:?}"
    );

    // Assert: the panel still serves, and says it is degraded.
    let health = app.get("/api/public/health").await;
    assert_eq!(health.status(), 200);
    let body: Value = health.json().await.unwrap();
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["checks"]["redis"]["status"], "down", "{body}");
    assert_eq!(body["checks"]["database"]["status"], "up", "{body}");
    // The burst goes on: an order is accepted with Redis down.
    let placed = place_order(&app, &order_body("home", offer.plan_slug())).await;
    orders.push(str_of(&placed, "orderId").to_owned());
    let health = app.get("/api/public/health").await;
    assert_eq!(health.status(), 200, "still up after the order");

    // Act: Redis comes back, empty.
    redis.resume().await;
    let back = Instant::now();

    // Assert: a lost job is taken again within seconds (not after the sweeper's two-minute
    // re-push), and every job ends, once.
    wait_for(
        "a job of the lost stream to be taken again",
        Duration::from_secs(20),
        || async {
            let now = jobs_of(&pool, &orders).await;
            now.iter()
                .any(|j| j.status != "PENDING" && lost.iter().any(|l| l.id == j.id))
                .then_some(())
        },
    )
    .await;
    let retaken = back.elapsed();
    let jobs = wait_for(
        "every job to succeed after Redis is back",
        Duration::from_secs(20).saturating_sub(back.elapsed()),
        || async {
            let jobs = jobs_of(&pool, &orders).await;
            jobs.iter().all(|j| j.status == "SUCCESS").then_some(jobs)
        },
    )
    .await;
    eprintln!(
        "redis back: the first of {} lost job(s) taken again after {retaken:?}; all {} jobs done after {:?}",
        lost.len(),
        jobs.len(),
        back.elapsed()
    );
    assert_eq!(jobs.len(), 9);
    for job in &jobs {
        assert_eq!(job.attempts, 1, "{job:?}");
        let successes = selling::job_log(&pool, job.id)
            .await
            .iter()
            .filter(|(from, to, _)| from.as_deref() == Some("RUNNING") && to == "SUCCESS")
            .count();
        assert_eq!(successes, 1, "ran to success once: {job:?}");
    }
    for job in &running {
        assert!(
            jobs.iter().any(|j| j.id == job.id && j.status == "SUCCESS"),
            "the job running as the stream vanished completed: {job:?}"
        );
    }
    assert!(
        log_messages(&app).iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("the job stream was lost"))),
        "the worker says it saw the stream lost"
    );

    pool.close().await;
    app.cleanup().await;
    redis.kill().await;
}
