//! HTTPS for a paid order's site, end to end: the real panel and agents, a real ACME server
//! (pebble, whose validation fetches the HTTP-01 challenge from the web agent's nginx), and
//! curl checking the chain against pebble's root. Then an operator's re-issue with requests
//! running all along, and one whose challenge cannot succeed: the job FAILED with the
//! reason, the site still served. Then the agent's own renewals, reported to the panel (also
//! one made while the panel was down), and the tenant's admins warned when one cannot be
//! renewed; and an order whose certificate cannot be had, which is live on HTTP all the same.

use std::time::Duration;

use mpanel_tests::{
    api::{authed, org_with_roles},
    fleet::{hub_addr, wait_job_status},
    panel::TestApp,
    pebble::Pebble,
    replica::{Fleet3, fleet_panel},
    request_loop::RequestLoop,
    selling::{hosting_offer, order_body_for, place_order},
    smtp::{SmtpSink, free_port},
    wait_for,
    web::WebSandbox,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);

async fn account(app: &TestApp, admin: &str, id: &str) -> Value {
    authed(app, admin)
        .get(&format!("/api/hosting/accounts/{id}"))
        .await
        .expect(200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_order_ends_with_its_site_on_https_and_an_operator_can_reissue() {
    let smtp = SmtpSink::start().await;
    let app = fleet_panel(smtp.port(), &[]).await;
    let org = org_with_roles(&app, "acme", &["SUPER_ADMIN", "SUPPORT"]).await;
    let admin = org.super_admin().token().to_owned();
    let support = org.by_role("SUPPORT").token().to_owned();

    let web = WebSandbox::start();
    let pebble = Pebble::start(web.port, 3600);
    let web_toml = web.agent_toml_acme(&pebble.directory(), &pebble.tls_ca());
    let hub = hub_addr(&app).await;
    let fleet =
        Fleet3::start_with_web(&app, &admin, [&[hub], &[hub], &[hub]], web, &web_toml).await;
    let root = pebble.root();

    // A shared-hosting plan that says nothing of HTTPS gets it, and a paid order for it.
    let offer = hosting_offer(&app, &admin, 1).await;
    let domain = "secure-site.example";
    let placed = place_order(
        &app,
        &order_body_for("acme", offer.plan_slug(), domain, "owner@secure.example"),
    )
    .await;
    let jobs = placed["jobs"].as_array().unwrap();
    assert_eq!(
        jobs.len(),
        4,
        "zone, site, mailbox and certificate: {placed}"
    );
    let mut certificate_job = None;
    for job in jobs {
        let id = job["id"].as_str().unwrap();
        let done = wait_job_status(&app, &admin, id, "SUCCESS").await;
        if done["payload"]["kind"] == "orderCertificate" {
            certificate_job = Some(done);
        }
    }
    let certificate_job = certificate_job.expect("the order has a certificate job");
    assert_eq!(certificate_job["type"], "PROVISION_HOSTING");
    assert_eq!(certificate_job["attempts"], 1, "{certificate_job}");

    // The site answers over HTTPS with a chain to pebble's root, for the apex and www.
    for host in [domain.to_owned(), format!("www.{domain}")] {
        let (status, body) = fleet.web.get_https(&host, &root).unwrap();
        assert_eq!(status, 200, "{host}: {body}");
        assert!(body.contains(domain), "{body}");
    }

    // The panel knows the certificate; the welcome e-mail gives the https address.
    let accounts = authed(&app, &admin)
        .get("/api/hosting/accounts?domain=secure-site")
        .await
        .expect(200);
    let account_id = accounts["items"][0]["id"].as_str().unwrap().to_owned();
    let acct = account(&app, &admin, &account_id).await;
    let ssl = &acct["ssl"];
    assert_eq!(ssl["status"], "ACTIVE", "{acct}");
    assert!(
        ssl["issuer"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("pebble"),
        "{ssl}"
    );
    let mut names: Vec<&str> = ssl["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, [domain, "www.secure-site.example"]);
    assert!(ssl["lastError"].is_null(), "{ssl}");
    let first_serial = ssl["serial"].as_str().unwrap().to_owned();
    let mails = smtp.wait_for_messages(1, WAIT).await;
    let text = mails[0].text();
    assert!(
        text.contains(&format!("Address:      https://{domain}/")),
        "{text}"
    );

    // SUPPORT re-issues: a new certificate is served, and requests running before, during
    // and after see no error.
    let requests = RequestLoop::start(domain, fleet.web.https_port, &root);
    requests.wait_more("requests before the re-issue", 4).await;
    let reply = authed(&app, &support)
        .post(
            &format!("/api/hosting/accounts/{account_id}/certificate"),
            &json!({}),
        )
        .await
        .expect(202);
    wait_job_status(&app, &admin, reply["jobId"].as_str().unwrap(), "SUCCESS").await;
    requests.wait_more("requests after the re-issue", 4).await;
    let (ok, errors) = requests.stop();
    assert!(ok >= 8, "too few requests to mean anything");
    assert!(errors.is_empty(), "{errors:?}");
    let ssl = account(&app, &admin, &account_id).await["ssl"].clone();
    let second_serial = ssl["serial"].as_str().unwrap().to_owned();
    assert_ne!(second_serial, first_serial, "{ssl}");
    fleet.web.get_https(domain, &root).unwrap();

    // A challenge the CA cannot reach: the job fails with the reason, the site keeps
    // serving its certificate, and the account shows why.
    pebble.point(domain, "127.0.0.2");
    let reply = authed(&app, &admin)
        .post(
            &format!("/api/hosting/accounts/{account_id}/certificate"),
            &json!({}),
        )
        .await
        .expect(202);
    let failed = wait_job_status(&app, &admin, reply["jobId"].as_str().unwrap(), "FAILED").await;
    let error = failed["lastError"].as_str().unwrap_or_default().to_owned();
    assert!(error.contains("acme_challenge_failed"), "{failed}");
    let ssl = wait_for("the account to show the failure", WAIT, || async {
        let ssl = account(&app, &admin, &account_id).await["ssl"].clone();
        ssl["lastError"].is_string().then_some(ssl)
    })
    .await;
    assert_eq!(ssl["status"], "ACTIVE", "{ssl}");
    assert_eq!(ssl["serial"], second_serial.as_str(), "{ssl}");
    let (status, _) = fleet.web.get_https(domain, &root).unwrap();
    assert_eq!(status, 200);

    // Terminated: the certificate is gone with the site.
    let reply = authed(&app, &admin)
        .post(
            &format!("/api/hosting/accounts/{account_id}/terminate"),
            &json!({}),
        )
        .await
        .expect(202);
    wait_job_status(&app, &admin, reply["jobId"].as_str().unwrap(), "SUCCESS").await;
    assert!(account(&app, &admin, &account_id).await["ssl"].is_null());
    assert!(
        fleet.web.get_https(domain, &root).is_err() || {
            let (status, _) = fleet.web.get_https(domain, &root).unwrap();
            status != 200
        }
    );
    drop(fleet);
    app.cleanup().await;
}

/// A paid order for `domain` on `plan`; its job ids by kind.
async fn order(
    app: &TestApp,
    admin: &str,
    plan: &str,
    domain: &str,
    owner: &str,
) -> Vec<(String, String)> {
    let placed = place_order(app, &order_body_for("acme", plan, domain, owner)).await;
    let mut jobs = Vec::new();
    for job in placed["jobs"].as_array().unwrap() {
        let id = job["id"].as_str().unwrap();
        let row = authed(app, admin)
            .get(&format!("/api/jobs/{id}"))
            .await
            .expect(200);
        let kind = row["payload"]["kind"].as_str().unwrap().to_owned();
        jobs.push((kind, id.to_owned()));
    }
    jobs
}

fn job<'a>(jobs: &'a [(String, String)], kind: &str) -> &'a str {
    &jobs.iter().find(|(k, _)| k == kind).expect(kind).1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_renews_on_its_own_the_panel_hears_of_it_and_admins_are_warned_when_it_cannot() {
    let smtp = SmtpSink::start().await;
    // A fixed hub address: the panel is restarted below and its agents dial it again.
    let hub_listen = format!("127.0.0.1:{}", free_port());
    let mut app = fleet_panel(
        smtp.port(),
        &[
            ("AGENT_LISTEN_ADDR", hub_listen.as_str()),
            ("JOB_MAX_ATTEMPTS", "2"),
        ],
    )
    .await;
    let org = org_with_roles(&app, "acme", &["SUPER_ADMIN"]).await;
    let admin = org.super_admin().token().to_owned();
    let admin_email = org.super_admin().email.clone();

    // 30-second certificates: the agent renews each after about 20 s.
    let web = WebSandbox::start();
    let pebble = Pebble::start(web.port, 30);
    let web_toml = web.agent_toml_acme(&pebble.directory(), &pebble.tls_ca());
    let hub = hub_addr(&app).await;
    let fleet =
        Fleet3::start_with_web(&app, &admin, [&[hub], &[hub], &[hub]], web, &web_toml).await;
    let root = pebble.root();
    let offer = hosting_offer(&app, &admin, 0).await;

    // An order whose certificate cannot be had: the CA's fetch of the challenge goes
    // nowhere. The order completes all the same, the site on HTTP, the welcome e-mail with
    // its http:// address, and the account shows why.
    let plain = "no-tls.example";
    pebble.point(plain, "127.0.0.2");
    let plain_jobs = order(
        &app,
        &admin,
        offer.plan_slug(),
        plain,
        "owner@plain.example",
    )
    .await;
    let failed =
        wait_job_status(&app, &admin, job(&plain_jobs, "orderCertificate"), "FAILED").await;
    assert!(
        failed["lastError"]
            .as_str()
            .unwrap()
            .contains("acme_challenge_failed"),
        "{failed}"
    );
    for kind in ["orderZone", "orderSite"] {
        wait_job_status(&app, &admin, job(&plain_jobs, kind), "SUCCESS").await;
    }
    let body = fleet.web.wait_for(plain, Some(200));
    assert!(body.contains(plain), "served on HTTP: {body}");
    let welcome = wait_for(
        "the welcome e-mail of the HTTP-only order",
        WAIT,
        || async {
            smtp.messages()
                .into_iter()
                .find(|m| m.rcpt_to.iter().any(|r| r == "owner@plain.example"))
        },
    )
    .await;
    let text = welcome.text();
    assert!(text.contains(&format!("http://{plain}/")), "{text}");
    assert!(!text.contains(&format!("https://{plain}/")), "{text}");
    let domain_row = authed(&app, &admin)
        .get("/api/domains?q=no-tls")
        .await
        .expect(200);
    assert_eq!(domain_row["items"][0]["status"], "ACTIVE", "{domain_row}");
    let plain_account = authed(&app, &admin)
        .get("/api/hosting/accounts?domain=no-tls")
        .await
        .expect(200)["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ssl = account(&app, &admin, &plain_account).await["ssl"].clone();
    assert_eq!(ssl["status"], "FAILED", "{ssl}");
    assert!(
        ssl["lastError"]
            .as_str()
            .unwrap()
            .contains("acme_challenge_failed"),
        "{ssl}"
    );

    // An order whose certificate is renewed by its agent, without the panel asking.
    let domain = "renewed.example";
    let jobs = order(
        &app,
        &admin,
        offer.plan_slug(),
        domain,
        "owner@renewed.example",
    )
    .await;
    wait_job_status(&app, &admin, job(&jobs, "orderCertificate"), "SUCCESS").await;
    let account_id = authed(&app, &admin)
        .get("/api/hosting/accounts?domain=renewed")
        .await
        .expect(200)["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let first = account(&app, &admin, &account_id).await["ssl"].clone();
    let first_serial = first["serial"].as_str().unwrap().to_owned();
    let renewed = wait_for("the agent's renewal to reach the panel", WAIT, || async {
        let ssl = account(&app, &admin, &account_id).await["ssl"].clone();
        (ssl["serial"] != first_serial.as_str()).then_some(ssl)
    })
    .await;
    assert_eq!(renewed["status"], "ACTIVE", "{renewed}");
    assert_eq!(renewed["renewalFailures"], 0, "{renewed}");
    assert!(renewed["reportedAt"].is_string(), "{renewed}");
    assert!(
        renewed["notAfter"].as_str() > first["notAfter"].as_str(),
        "{renewed}"
    );
    let serial = renewed["serial"].as_str().unwrap().to_owned();
    assert_eq!(fleet.web.get_https(domain, &root).unwrap().0, 200);
    let audit = authed(&app, &admin)
        .get("/api/audit?action=certificate.renewed")
        .await
        .expect(200);
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["details"]["serial"] == serial.as_str()),
        "{audit}"
    );
    assert!(
        !smtp
            .messages()
            .iter()
            .any(|m| m.subject().contains("HTTPS certificate")),
        "no warning while renewals succeed"
    );

    // A renewal while the panel is down is sent when the agent connects again.
    app.terminate().await;
    let state_file = format!("certs/{domain}/renewal.json");
    let renewed_offline = wait_for("a renewal while the panel is down", WAIT, || async {
        let state: Value = serde_json::from_str(&fleet.web.read(&state_file)).ok()?;
        let now = state["serial"].as_str()?.to_owned();
        (now != serial).then_some(now)
    })
    .await;
    app.start().await;
    let after_restart = wait_for("the offline renewal to reach the panel", WAIT, || async {
        let ssl = account(&app, &admin, &account_id).await["ssl"].clone();
        (ssl["serial"] == renewed_offline.as_str()).then_some(ssl)
    })
    .await;
    assert_eq!(after_restart["renewalFailures"], 0, "{after_restart}");
    let serial = renewed_offline;

    // Its next renewal cannot succeed: the panel shows the failure, the old certificate is
    // still served, and the tenant's admins are told (once) before it expires.
    pebble.point(domain, "127.0.0.2");
    pebble.point(&format!("www.{domain}"), "127.0.0.2");
    let failing = wait_for("the failed renewal to reach the panel", WAIT, || async {
        let ssl = account(&app, &admin, &account_id).await["ssl"].clone();
        (ssl["renewalFailures"].as_i64() >= Some(1)).then_some(ssl)
    })
    .await;
    assert_eq!(failing["serial"], serial.as_str(), "{failing}");
    assert!(
        failing["lastError"]
            .as_str()
            .unwrap()
            .contains("acme_challenge_failed"),
        "{failing}"
    );
    assert!(failing["nextAttemptAt"].is_string(), "{failing}");
    let warning = wait_for("the expiry warning", WAIT, || async {
        smtp.messages().into_iter().find(|m| {
            m.subject()
                .contains(&format!("HTTPS certificate of {domain}"))
        })
    })
    .await;
    assert_eq!(warning.rcpt_to, [admin_email]);
    let text = warning.text();
    assert!(text.contains("acme_challenge_failed"), "{text}");
    assert!(text.contains(&serial), "{text}");
    let warnings = || {
        smtp.messages()
            .iter()
            .filter(|m| {
                m.subject()
                    .contains(&format!("HTTPS certificate of {domain}"))
            })
            .count()
    };
    assert_eq!(warnings(), 1);
    assert_eq!(fleet.web.get_https(domain, &root).unwrap().0, 200);
    drop(fleet);
    app.cleanup().await;
}
