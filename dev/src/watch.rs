//! Follows the order's jobs through the API, printing each status change as it happens,
//! until every one succeeded; a job that ends FAILED stops the demo with its last error.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::bail;
use mpanel_tests::{TestApp, api::authed};
use serde_json::Value;

/// Polls `GET /api/jobs/{id}` for each of `jobs` (type, id) until all are SUCCESS.
pub async fn jobs(
    app: &TestApp,
    token: &str,
    jobs: &[(String, String)],
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    let mut last: BTreeMap<&str, String> = BTreeMap::new();
    loop {
        let mut done = 0;
        for (kind, id) in jobs {
            let job = authed(app, token)
                .get(&format!("/api/jobs/{id}"))
                .await
                .body;
            let line = describe(kind, &job);
            if last.get(id.as_str()) != Some(&line) {
                println!("{line}");
                last.insert(id, line);
            }
            match job["status"].as_str() {
                Some("SUCCESS") => done += 1,
                Some("FAILED") => bail!("{kind} failed: {}", job["lastError"]),
                _ => {}
            }
        }
        if done == jobs.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the order's jobs did not all succeed within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One line for a job's state: status, attempt, where it ran, what it is for when its type
/// does not say (the certificate is a PROVISION_HOSTING job too), why it waits.
fn describe(kind: &str, job: &Value) -> String {
    let mut line = format!(
        "job {kind}: {} (attempt {})",
        job["status"].as_str().unwrap_or("?"),
        job["attempts"]
    );
    if job["result"]["simulated"] == true {
        line.push_str(", simulated");
    } else if let Some(server) = job["result"]["serverId"].as_str() {
        line.push_str(&format!(", on server {server}"));
    }
    if job["payload"]["kind"] == "orderCertificate" {
        line.push_str(", the site's certificate");
    }
    if job["status"] != "SUCCESS"
        && let Some(err) = job["lastError"].as_str()
    {
        line.push_str(&format!(" — {err}"));
    }
    line
}
