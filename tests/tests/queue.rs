//! The job queue (spec §4.3, §7.2) against the real `mpanel serve` and `mpanel worker`
//! processes: jobs run to success with a full log and audit trail; failures retry with backoff
//! and end FAILED, and an operator's retry runs them again; nothing is lost when Redis is down
//! at commit (the test's own redis-server, stopped and started again) or when a worker is
//! killed mid-job; `mpanel worker` exits 0 on SIGTERM.

use std::{collections::BTreeSet, time::Duration};

use mpanel_tests::{
    TestApp,
    api::{self, authed},
    selling::{
        self, JobRow, OwnRedis, hosting_offer_ssl, job_ids, jobs_of_order, order_body, place_order,
        sigterm, str_of, wait_jobs, wait_subscription,
    },
    wait_for,
};
use serde_json::Value;
use sqlx::PgPool;

fn transitions(logs: &[Value]) -> Vec<(Option<String>, String)> {
    logs.iter()
        .map(|l| {
            (
                l["fromStatus"].as_str().map(str::to_owned),
                str_of(l, "toStatus").to_owned(),
            )
        })
        .collect()
}

fn t(from: Option<&str>, to: &str) -> (Option<String>, String) {
    (from.map(str::to_owned), to.to_owned())
}

/// How many times the job's log says it ran to success.
async fn successes(pool: &PgPool, job: &JobRow) -> usize {
    selling::job_log(pool, job.id)
        .await
        .iter()
        .filter(|(from, to, _)| from.as_deref() == Some("RUNNING") && to == "SUCCESS")
        .count()
}

#[tokio::test]
async fn simulated_jobs_run_to_success_with_logs_and_audit() {
    let app = TestApp::spawn_with(&[
        ("JOB_DISPATCHER", "simulate"),
        ("JOB_SWEEP_INTERVAL", "200ms"),
    ])
    .await;
    let org = api::org_with_all_roles(&app, "home").await;
    let root = org.super_admin().token().to_owned();
    let pool = app.db.pool().await;
    let offer = hosting_offer_ssl(&app, &root, 5, false).await;
    let placed = place_order(&app, &order_body("home", offer.plan_slug())).await;
    let order_id = str_of(&placed, "orderId").to_owned();

    let jobs = wait_jobs(&pool, &order_id, "SUCCESS", Duration::from_secs(30)).await;
    assert_eq!(jobs.len(), 3);
    for job in &jobs {
        let detail = authed(&app, org.by_role("SUPPORT").token())
            .get(&format!("/api/jobs/{}", job.id))
            .await
            .expect(200);
        assert_eq!(detail["status"], "SUCCESS", "{detail}");
        assert_eq!(detail["attempts"], 1, "{detail}");
        assert!(detail["lastError"].is_null(), "{detail}");
        assert_eq!(detail["orderId"], order_id.as_str());
        assert!(detail["finishedAt"].is_string(), "{detail}");
        let logs = detail["logs"].as_array().expect("logs");
        let mut want = vec![t(None, "PENDING")];
        if job.kind == "PROVISION_DNS" {
            // It waited for the site, and was released when that succeeded.
            want.push(t(Some("PENDING"), "PENDING"));
        }
        want.extend([t(Some("PENDING"), "RUNNING"), t(Some("RUNNING"), "SUCCESS")]);
        assert_eq!(transitions(logs), want, "{detail}");
        assert_eq!(logs[0]["message"], "created");
        for l in logs {
            assert!(
                l["createdAt"].is_string() && l["message"].is_string(),
                "{l}"
            );
            assert!(l.get("details").is_some(), "{l}");
        }
        let id = job.id.to_string();
        assert_eq!(
            selling::audit_count(&pool, "job.succeeded", Some(("jobId", &id))).await,
            1,
            "{id}"
        );
        // Only FAILED jobs can be retried.
        authed(&app, &root)
            .post(&format!("/api/jobs/{id}/retry"), &Value::Null)
            .await
            .assert_error(409, "conflict");
    }
    assert_eq!(selling::audit_count(&pool, "job.succeeded", None).await, 3);

    // The list and its filters.
    let admin = authed(&app, org.admin().token());
    let page = admin
        .get(&format!("/api/jobs?orderId={order_id}&status=SUCCESS"))
        .await
        .expect(200);
    assert_eq!(page["total"], 3, "{page}");
    let listed: BTreeSet<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| str_of(j, "id"))
        .collect();
    let placed_ids = job_ids(&placed);
    assert_eq!(listed, placed_ids.iter().map(String::as_str).collect());
    let mail = admin.get("/api/jobs?type=PROVISION_MAIL").await.expect(200);
    assert_eq!(mail["total"], 1, "{mail}");
    assert_eq!(mail["items"][0]["type"], "PROVISION_MAIL");
    let pending = admin.get("/api/jobs?status=PENDING").await.expect(200);
    assert_eq!(pending["total"], 0, "{pending}");
    let none = admin
        .get(&format!("/api/jobs?serverId={}", uuid::Uuid::new_v4()))
        .await
        .expect(200);
    assert_eq!(none["total"], 0);

    pool.close().await;
    app.cleanup().await;
}

#[tokio::test]
async fn failing_jobs_back_off_then_fail_and_an_operator_retries_them() {
    // The default dispatcher (fleet) has no agents: every attempt fails and may be retried.
    let app = TestApp::spawn_with(&[
        ("JOB_MAX_ATTEMPTS", "2"),
        ("JOB_RETRY_BASE", "100ms"),
        ("JOB_SWEEP_INTERVAL", "200ms"),
    ])
    .await;
    let org = api::org_with_all_roles(&app, "home").await;
    let root = org.super_admin().token().to_owned();
    let pool = app.db.pool().await;
    let offer = hosting_offer_ssl(&app, &root, 5, false).await;
    let placed = place_order(&app, &order_body("home", offer.plan_slug())).await;
    let order_id = str_of(&placed, "orderId").to_owned();

    let failed_once = [
        t(None, "PENDING"),
        t(Some("PENDING"), "RUNNING"),
        t(Some("RUNNING"), "PENDING"),
        t(Some("PENDING"), "RUNNING"),
        t(Some("RUNNING"), "FAILED"),
    ];
    // The site and the mailbox fail; the zone waits for the site, spending no attempt, and
    // its log says why.
    let (jobs, zone) = wait_for(
        "the site and mailbox jobs to fail",
        Duration::from_secs(30),
        || async {
            let all = jobs_of_order(&pool, &order_id).await;
            let (zone, others): (Vec<_>, Vec<_>) =
                all.into_iter().partition(|j| j.kind == "PROVISION_DNS");
            (others.len() == 2 && others.iter().all(|j| j.status == "FAILED"))
                .then(|| (others, zone.into_iter().next().expect("a zone job")))
        },
    )
    .await;
    assert_eq!(
        (zone.status.as_str(), zone.attempts),
        ("PENDING", 0),
        "{zone:?}"
    );
    let zone_log = selling::job_log(&pool, zone.id).await;
    assert!(
        zone_log.iter().any(|(_, _, m)| m.contains("which failed")),
        "{zone_log:?}"
    );
    for job in &jobs {
        assert_eq!(job.attempts, 2, "{job:?}");
        assert_eq!(job.max_attempts, 2, "{job:?}");
        assert!(
            job.last_error.as_deref().is_some_and(|e| !e.is_empty()),
            "{job:?}"
        );
        let detail = authed(&app, &root)
            .get(&format!("/api/jobs/{}", job.id))
            .await
            .expect(200);
        assert_eq!(detail["status"], "FAILED");
        assert_eq!(detail["attempts"], 2);
        assert_eq!(detail["lastError"], job.last_error.as_deref().unwrap());
        let logs = detail["logs"].as_array().unwrap();
        assert_eq!(transitions(logs), failed_once, "{detail}");
        let retrying = str_of(&logs[2], "message");
        assert!(retrying.contains("retrying"), "{retrying}");
        // The second attempt waited for the backoff (base 100 ms).
        let gap: f64 = sqlx::query_scalar(
            "SELECT extract(epoch FROM max(created_at) FILTER (WHERE from_status = 'PENDING'
                                                            AND to_status = 'RUNNING')
                                   - min(created_at) FILTER (WHERE from_status = 'RUNNING'
                                                            AND to_status = 'PENDING'))::float8
               FROM job_logs WHERE job_id = $1",
        )
        .bind(job.id)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(
            gap >= 0.1,
            "retried after {gap}s, before the 100 ms backoff"
        );
        let id = job.id.to_string();
        assert_eq!(
            selling::audit_count(&pool, "job.failed", Some(("jobId", &id))).await,
            1
        );
    }

    // An operator (SUPPORT may) retries one: it runs again from attempt 1 and fails again.
    let job = &jobs[0];
    let id = job.id.to_string();
    let reply = authed(&app, org.by_role("SUPPORT").token())
        .post(&format!("/api/jobs/{id}/retry"), &Value::Null)
        .await;
    assert_eq!(reply.status, 202, "{reply:?}");
    assert_eq!(reply.body["status"], "PENDING", "{reply:?}");
    let detail = wait_for(
        "the retried job to fail again",
        Duration::from_secs(30),
        || async {
            let d = authed(&app, &root)
                .get(&format!("/api/jobs/{id}"))
                .await
                .expect(200);
            (d["status"] == "FAILED" && d["logs"].as_array().unwrap().len() >= 10).then_some(d)
        },
    )
    .await;
    assert_eq!(detail["attempts"], 2, "attempts restart: {detail}");
    let mut want = failed_once.to_vec();
    want.extend([
        t(Some("FAILED"), "PENDING"),
        t(Some("PENDING"), "RUNNING"),
        t(Some("RUNNING"), "PENDING"),
        t(Some("PENDING"), "RUNNING"),
        t(Some("RUNNING"), "FAILED"),
    ]);
    assert_eq!(
        transitions(detail["logs"].as_array().unwrap()),
        want,
        "{detail}"
    );
    assert_eq!(
        selling::audit_count(&pool, "job.retry", Some(("jobId", &id))).await,
        1
    );
    assert_eq!(
        selling::audit_count(&pool, "job.failed", Some(("jobId", &id))).await,
        2
    );
    // READ_ONLY and BILLING may not retry.
    for role in ["READ_ONLY", "BILLING"] {
        authed(&app, org.by_role(role).token())
            .post(&format!("/api/jobs/{}/retry", jobs[1].id), &Value::Null)
            .await
            .assert_error(403, "forbidden");
    }
    let others = jobs_of_order(&pool, &order_id).await;
    assert!(
        others
            .iter()
            .filter(|j| j.kind != "PROVISION_DNS")
            .all(|j| j.status == "FAILED" && j.attempts == 2),
        "{others:?}"
    );

    pool.close().await;
    app.cleanup().await;
}

#[tokio::test]
async fn redis_down_at_commit_loses_no_job() {
    let mut redis = OwnRedis::start().await;
    let url = redis.url();
    let app = TestApp::spawn_with(&[
        ("REDIS_URL", url.as_str()),
        ("JOB_DISPATCHER", "simulate"),
        ("JOB_SWEEP_INTERVAL", "200ms"),
    ])
    .await;
    let org = api::org_with_roles(&app, "home", &["SUPER_ADMIN"]).await;
    let pool = app.db.pool().await;
    let offer = hosting_offer_ssl(&app, org.super_admin().token(), 5, false).await;

    redis.kill().await;
    let placed = place_order(&app, &order_body("home", offer.plan_slug())).await;
    let order_id = str_of(&placed, "orderId").to_owned();
    let jobs = jobs_of_order(&pool, &order_id).await;
    assert_eq!(jobs.len(), 3);
    for job in &jobs {
        assert_eq!(job.status, "PENDING", "{job:?}");
        assert!(!job.enqueued, "not on a queue that is down: {job:?}");
    }

    redis.resume().await;
    let jobs = wait_jobs(&pool, &order_id, "SUCCESS", Duration::from_secs(60)).await;
    for job in &jobs {
        assert_eq!(job.attempts, 1, "{job:?}");
        assert_eq!(successes(&pool, job).await, 1, "{job:?}");
    }

    pool.close().await;
    app.cleanup().await;
    redis.kill().await;
}

#[tokio::test]
async fn a_worker_killed_mid_job_loses_nothing() {
    let app = TestApp::spawn_with(&[("RUN_WORKER", "false")]).await;
    let org = api::org_with_roles(&app, "home", &["SUPER_ADMIN"]).await;
    let pool = app.db.pool().await;
    let offer = hosting_offer_ssl(&app, org.super_admin().token(), 5, false).await;
    let lease = [("JOB_LEASE", "2s"), ("JOB_SWEEP_INTERVAL", "200ms")];

    let mut a = app.spawn_worker(
        &[
            ("JOB_DISPATCHER", "simulate"),
            ("JOB_SIMULATE_DELAY", "60s"),
        ]
        .into_iter()
        .chain(lease)
        .collect::<Vec<_>>(),
    );
    let placed = place_order(&app, &order_body("home", offer.plan_slug())).await;
    let order_id = str_of(&placed, "orderId").to_owned();
    let running = wait_for("worker A to run a job", Duration::from_secs(30), || async {
        let jobs = jobs_of_order(&pool, &order_id).await;
        let running: Vec<JobRow> = jobs
            .into_iter()
            .filter(|j| j.status == "RUNNING" && j.locked_by.is_some())
            .collect();
        (!running.is_empty()).then_some(running)
    })
    .await;

    a.kill().await.expect("SIGKILL worker A");
    // What A held at its death (it may have taken more after the probe above).
    let interrupted: Vec<JobRow> = jobs_of_order(&pool, &order_id)
        .await
        .into_iter()
        .filter(|j| j.status == "RUNNING")
        .collect();
    assert!(interrupted.len() >= running.len(), "{interrupted:?}");

    let mut b = app.spawn_worker(
        &[
            ("JOB_DISPATCHER", "simulate"),
            ("JOB_SIMULATE_DELAY", "10ms"),
        ]
        .into_iter()
        .chain(lease)
        .collect::<Vec<_>>(),
    );
    let jobs = wait_jobs(&pool, &order_id, "SUCCESS", Duration::from_secs(60)).await;
    assert_eq!(jobs.len(), 3);
    for job in &jobs {
        assert_eq!(
            successes(&pool, job).await,
            1,
            "ran to success once: {job:?}"
        );
    }
    for lost in &interrupted {
        let job = jobs.iter().find(|j| j.id == lost.id).unwrap();
        assert!(job.attempts >= 2, "{job:?}");
        let log = selling::job_log(&pool, job.id).await;
        assert!(
            log.iter().any(|(_, _, m)| m.contains("lost")),
            "a log line about the lost worker: {log:?}"
        );
    }

    let status = sigterm(&mut b).await;
    assert!(status.success(), "worker B: {status:?}");
    pool.close().await;
    app.cleanup().await;
}

#[tokio::test]
async fn mpanel_worker_runs_jobs_and_exits_zero_on_sigterm() {
    // The panel's own duties sweep once at start and then only hourly: what is swept later was
    // swept by a worker.
    let app = TestApp::spawn_with(&[("RUN_WORKER", "false"), ("JOB_SWEEP_INTERVAL", "1h")]).await;
    let org = api::org_with_roles(&app, "home", &["SUPER_ADMIN"]).await;
    let pool = app.db.pool().await;
    let offer = hosting_offer_ssl(&app, org.super_admin().token(), 0, false).await;

    let mut worker = app.spawn_worker(&[
        ("JOB_DISPATCHER", "simulate"),
        ("JOB_SWEEP_INTERVAL", "200ms"),
    ]);
    let placed = place_order(&app, &order_body("home", offer.plan_slug())).await;
    wait_jobs(
        &pool,
        str_of(&placed, "orderId"),
        "SUCCESS",
        Duration::from_secs(30),
    )
    .await;

    let status = sigterm(&mut worker).await;
    assert_eq!(status.code(), Some(0), "{status:?}");

    // An idle worker stops cleanly too. It shows it is up by sweeping: it ends a
    // subscription whose period is over and that was set to cancel then.
    let subscription = str_of(&placed, "subscriptionId").to_owned();
    authed(&app, org.super_admin().token())
        .post(
            &format!("/api/subscriptions/{subscription}/cancel"),
            &serde_json::json!({"atPeriodEnd": true}),
        )
        .await
        .expect(200);
    sqlx::query(
        "UPDATE subscriptions SET current_period_end = now() - interval '1 minute'
          WHERE id = $1::uuid",
    )
    .bind(&subscription)
    .execute(&pool)
    .await
    .unwrap();
    let mut idle = app.spawn_worker(&[("JOB_SWEEP_INTERVAL", "200ms")]);
    wait_subscription(&pool, &subscription, "CANCELLED", Duration::from_secs(30)).await;
    let status = sigterm(&mut idle).await;
    assert_eq!(status.code(), Some(0), "{status:?}");

    pool.close().await;
    app.cleanup().await;
}
