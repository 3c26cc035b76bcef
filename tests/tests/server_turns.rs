//! Per-server turns (issue 16) against the real `mpanel serve`: jobs for distinct servers run
//! together, beyond the four at a time the worker used to allow and beyond its active slots
//! (`JOB_ACTIVE_MAX`: a job waiting on its agent holds none), while one server never has more
//! than `JOB_MAX_PER_SERVER` of them at once; and a worker claims at most
//! `WORKER_CONCURRENCY` jobs.
//!
//! The simulate dispatcher waits as fleet jobs wait for their agent (away from the active
//! slot, in a turn at the tenant's server of the job's role) and its result says when its
//! pretend work began and ended: the assertions count overlaps of those intervals, and of
//! the claims (`started_at`–`finished_at`), never durations.

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use mpanel_tests::{
    TestApp, api,
    fleet::add_server,
    selling::{hosting_offer_ssl, order_body, place_order, str_of},
    wait_for,
};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// The most intervals that are open at one instant (an interval ending where another begins
/// does not overlap it).
fn most_at_once(intervals: &[(DateTime<Utc>, DateTime<Utc>)]) -> usize {
    let mut edges: Vec<(DateTime<Utc>, i32)> = intervals
        .iter()
        .flat_map(|(begin, end)| [(*begin, 1), (*end, -1)])
        .collect();
    // At one instant, ends before begins.
    edges.sort();
    let (mut open, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        open += step;
        most = most.max(open);
    }
    most as usize
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a time: {v}"))
}

/// One finished job of the test's orders.
struct Done {
    kind: String,
    claimed: (DateTime<Utc>, DateTime<Utc>),
    result: Value,
}

impl Done {
    /// The server its pretend work took a turn at, if any.
    fn server(&self) -> Option<Uuid> {
        self.result["serverId"].as_str().map(|s| s.parse().unwrap())
    }

    /// When its pretend work began and ended (inside its turn).
    fn worked(&self) -> (DateTime<Utc>, DateTime<Utc>) {
        (time(&self.result["began"]), time(&self.result["ended"]))
    }
}

/// Places `n` orders of `plan` at once and waits until every job of theirs succeeded.
async fn place_and_finish(
    app: &TestApp,
    pool: &PgPool,
    tenant: &str,
    plan: &str,
    n: usize,
) -> Vec<Done> {
    let placed = futures_join(
        (0..n)
            .map(|_| {
                let body = order_body(tenant, plan);
                async move { place_order(app, &body).await }
            })
            .collect(),
    )
    .await;
    let orders: Vec<Uuid> = placed
        .iter()
        .map(|p| str_of(p, "orderId").parse().unwrap())
        .collect();
    type Row = (
        String,
        String,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Option<Value>,
    );
    let rows: Vec<Row> = wait_for(
        "every job of the orders to succeed",
        Duration::from_secs(120),
        || async {
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT type::text, status::text, started_at, finished_at, result
                   FROM jobs WHERE order_id = ANY($1)",
            )
            .bind(&orders)
            .fetch_all(pool)
            .await
            .unwrap();
            assert!(
                rows.iter().all(|r| r.1 != "FAILED"),
                "a job failed: {:?}",
                rows.iter().map(|r| (&r.0, &r.1)).collect::<Vec<_>>()
            );
            (!rows.is_empty() && rows.iter().all(|r| r.1 == "SUCCESS")).then_some(rows)
        },
    )
    .await;
    rows.into_iter()
        .map(|(kind, _, started, finished, result)| Done {
            kind,
            claimed: (started.unwrap(), finished.unwrap()),
            result: result.unwrap(),
        })
        .collect()
}

/// Awaits all of `futures` concurrently on this task.
async fn futures_join<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in set.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}

#[tokio::test]
async fn jobs_for_distinct_servers_run_together_and_one_server_never_exceeds_its_cap() {
    // The worker's concurrency is its default; two active slots (which DNS jobs keep while
    // they wait: their zone lock holds a connection); two turns per server.
    let app = TestApp::spawn_with(&[
        ("JOB_DISPATCHER", "simulate"),
        ("JOB_SIMULATE_DELAY", "500ms"),
        ("JOB_ACTIVE_MAX", "2"),
        ("JOB_MAX_PER_SERVER", "2"),
        ("JOB_SWEEP_INTERVAL", "200ms"),
    ])
    .await;
    let org = api::org_with_all_roles(&app, "turns").await;
    let root = org.super_admin().token().to_owned();
    let pool = app.db.pool().await;
    let mut servers = HashMap::new();
    for (role, ip) in [
        ("WEB", "192.0.2.11"),
        ("DNS", "192.0.2.12"),
        ("MAIL", "192.0.2.13"),
    ] {
        let id: Uuid = add_server(&app, &root, &format!("{}-1", role.to_lowercase()), role, ip)
            .await
            .parse()
            .unwrap();
        servers.insert(id, role);
    }
    // Three jobs per order: the zone, the site, the mailbox (no certificate).
    let offer = hosting_offer_ssl(&app, &root, 1, false).await;

    let jobs = place_and_finish(&app, &pool, "turns", offer.plan_slug(), 8).await;

    assert_eq!(jobs.len(), 24);
    let mut by_server: HashMap<Uuid, Vec<_>> = HashMap::new();
    for job in &jobs {
        let server = job
            .server()
            .unwrap_or_else(|| panic!("{} took no turn: {}", job.kind, job.result));
        by_server.entry(server).or_default().push(job.worked());
    }
    assert_eq!(by_server.len(), 3, "one server per role");
    for (server, worked) in &by_server {
        let role = servers[server];
        assert_eq!(worked.len(), 8, "{role}");
        // Eight jobs queued at once for one server: it has two at a time, never more.
        assert_eq!(most_at_once(worked), 2, "{role}: jobs at once");
    }
    let all: Vec<_> = jobs.iter().map(Done::worked).collect();
    let together = most_at_once(&all);
    assert!(
        together > 4,
        "jobs of three servers at two each ran at most {together} at once: waiting jobs still \
         hold worker slots"
    );
}

#[tokio::test]
async fn a_worker_claims_at_most_its_concurrency_and_waiting_jobs_hold_no_active_slot() {
    // Three places, one active slot, turns enough for all.
    let app = TestApp::spawn_with(&[
        ("JOB_DISPATCHER", "simulate"),
        ("JOB_SIMULATE_DELAY", "500ms"),
        ("WORKER_CONCURRENCY", "3"),
        ("JOB_ACTIVE_MAX", "1"),
        ("JOB_SWEEP_INTERVAL", "200ms"),
    ])
    .await;
    let org = api::org_with_all_roles(&app, "claims").await;
    let root = org.super_admin().token().to_owned();
    let pool = app.db.pool().await;
    // Only a web server: the zones' jobs take no turn. No mailbox.
    add_server(&app, &root, "web-1", "WEB", "192.0.2.21").await;
    let offer = hosting_offer_ssl(&app, &root, 0, false).await;

    let jobs = place_and_finish(&app, &pool, "claims", offer.plan_slug(), 6).await;

    assert_eq!(jobs.len(), 12, "a zone and a site per order");
    let claimed: Vec<_> = jobs.iter().map(|j| j.claimed).collect();
    let claimed_at_once = most_at_once(&claimed);
    assert!(
        claimed_at_once <= 3,
        "{claimed_at_once} jobs claimed at once by a worker of three places"
    );
    let sites: Vec<&Done> = jobs
        .iter()
        .filter(|j| j.kind == "PROVISION_HOSTING")
        .collect();
    assert_eq!(sites.len(), 6);
    assert!(sites.iter().all(|j| j.server().is_some()));
    // Six sites queued at once: those claimed wait on their "agent" together, none of them
    // in the one active slot.
    let worked: Vec<_> = sites.iter().map(|j| j.worked()).collect();
    let working_at_once = most_at_once(&worked);
    assert!(
        (2..=3).contains(&working_at_once),
        "{working_at_once} sites at once with one active slot and three places"
    );
}

#[tokio::test]
async fn an_orders_next_step_runs_before_the_rest_of_the_backlog() {
    // Two places: six sites queue up, and each zone is released when its site succeeds.
    let app = TestApp::spawn_with(&[
        ("JOB_DISPATCHER", "simulate"),
        ("JOB_SIMULATE_DELAY", "200ms"),
        ("WORKER_CONCURRENCY", "2"),
        ("JOB_ACTIVE_MAX", "1"),
        ("JOB_SWEEP_INTERVAL", "200ms"),
    ])
    .await;
    let org = api::org_with_all_roles(&app, "next").await;
    let root = org.super_admin().token().to_owned();
    let pool = app.db.pool().await;
    add_server(&app, &root, "web-1", "WEB", "192.0.2.31").await;
    let offer = hosting_offer_ssl(&app, &root, 0, false).await;

    let jobs = place_and_finish(&app, &pool, "next", offer.plan_slug(), 6).await;

    let started = |kind: &str| -> Vec<DateTime<Utc>> {
        jobs.iter()
            .filter(|j| j.kind == kind)
            .map(|j| j.claimed.0)
            .collect()
    };
    let (sites, zones) = (started("PROVISION_HOSTING"), started("PROVISION_DNS"));
    assert_eq!((sites.len(), zones.len()), (6, 6));
    // Pushed to the stream behind every site, the first zone would start after the last
    // site did; run by the worker that finished its site, it starts while sites still wait.
    let first_zone = zones.iter().min().unwrap();
    let last_site = sites.iter().max().unwrap();
    assert!(
        first_zone < last_site,
        "the first zone started at {first_zone}, after the last site ({last_site})"
    );
}
