//! `GET /metrics`: Prometheus text behind `METRICS_TOKEN`, with the figures operators (and the
//! benchmark) read — requests by route, agent handshakes, commands, jobs, the queue.

use std::time::Duration;

use mpanel_tests::{
    TestApp,
    api::{authed, org_with_roles},
    fleet::{AgentProc, add_server, enrollment_token, hub_addr},
    selling::{hosting_offer, order_body, place_order, wait_jobs},
    wait_for,
};

const TOKEN: &str = "metrics-token-0123456789";

async fn scrape(app: &TestApp, token: Option<&str>) -> (u16, String) {
    let mut req = app.http.get(app.url("/metrics"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

/// The value of the sample whose line starts with `series` (name and labels, as rendered).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_need_their_token_and_count_requests_agents_commands_and_jobs() {
    let app = TestApp::spawn_with(&[
        ("METRICS_TOKEN", TOKEN),
        ("JOB_DISPATCHER", "simulate"),
        ("JOB_SWEEP_INTERVAL", "200ms"),
    ])
    .await;
    assert_eq!(scrape(&app, None).await.0, 401);
    assert_eq!(scrape(&app, Some("metrics-token-wrong-value")).await.0, 401);

    let acme = org_with_roles(&app, "acme", &["SUPER_ADMIN"]).await;
    let admin = acme.super_admin().token().to_owned();
    // One agent and a ping through the API.
    let server = add_server(&app, &admin, "srv1", "WEB", "192.0.2.10").await;
    let mut agent =
        AgentProc::enroll(&app, "srv1", &enrollment_token(&app, &admin, &server).await).await;
    agent.configure(hub_addr(&app).await, "roles = [\"web\"]");
    agent.start();
    authed(&app, &admin)
        .post(
            &format!("/api/servers/{server}/ping?timeoutSecs=20"),
            &serde_json::Value::Null,
        )
        .await
        .expect(200);
    // An order whose jobs the simulate dispatcher runs.
    let offer = hosting_offer(&app, &admin, 1).await;
    let placed = place_order(&app, &order_body("acme", offer.plan_slug())).await;
    let pool = app.db.pool().await;
    wait_jobs(
        &pool,
        placed["orderId"].as_str().unwrap(),
        "SUCCESS",
        Duration::from_secs(30),
    )
    .await;

    let text = wait_for("the job figures", Duration::from_secs(10), || async {
        let (status, text) = scrape(&app, Some(TOKEN)).await;
        assert_eq!(status, 200);
        sample(
            &text,
            "mpanel_job_duration_seconds_count{kind=\"orderZone\",outcome=\"success\"}",
        )
        .is_some()
        .then_some(text)
    })
    .await;
    assert_eq!(
        sample(&text, "mpanel_agents_connected "),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "mpanel_agent_handshakes_total{outcome=\"accepted\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "mpanel_agent_command_duration_seconds_count{kind=\"ping\",outcome=\"ok\"}"
        ),
        Some(1.0),
        "{text}"
    );
    for kind in ["orderZone", "orderSite", "orderMailbox"] {
        let series =
            format!("mpanel_job_duration_seconds_count{{kind=\"{kind}\",outcome=\"success\"}}");
        assert_eq!(sample(&text, &series), Some(1.0), "{series}: {text}");
    }
    assert!(
        sample(&text, "mpanel_job_wait_seconds_count").is_some_and(|n| n >= 3.0),
        "{text}"
    );
    assert_eq!(sample(&text, "mpanel_jobs_runnable "), Some(0.0), "{text}");
    // Requests by route template, never by raw path (ids would make a series each).
    assert!(text.contains("route=\"/api/servers/{id}/ping\""), "{text}");
    assert!(!text.contains(&server), "no raw ids in labels");

    agent.terminate().await;
    pool.close().await;
    app.cleanup().await;
}

#[tokio::test]
async fn without_a_token_there_is_no_metrics_route() {
    let app = TestApp::spawn().await;
    let (status, body) = scrape(&app, Some(TOKEN)).await;
    assert_eq!(status, 404, "{body}");
    app.cleanup().await;
}
