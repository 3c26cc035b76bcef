//! HTTPS for a paid order's site, end to end: the real panel and agents, a real ACME server
//! (pebble, whose validation fetches the HTTP-01 challenge from the web agent's nginx), and
//! curl checking the chain against pebble's root. Then an operator's re-issue, and one whose
//! challenge cannot succeed: the job FAILED with the reason, the site still served.

use std::time::Duration;

use mpanel_tests::{
    api::{anon, authed, org_with_roles, unique},
    fleet::{hub_addr, wait_job_status},
    panel::{INTERNAL_KEY, TestApp},
    pebble::Pebble,
    replica::Fleet3,
    selling::{create_plan, create_product, plan_body},
    smtp::SmtpSink,
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
    let smtp_port = smtp.port().to_string();
    let app = TestApp::spawn_with(&[
        ("SMTP_HOST", "127.0.0.1"),
        ("SMTP_PORT", smtp_port.as_str()),
        ("SMTP_TLS", "none"),
        ("EMAIL_FROM", "welcome@panel.example"),
        ("AGENT_HEARTBEAT_INTERVAL", "1s"),
        ("JOB_SWEEP_INTERVAL", "200ms"),
        ("JOB_RETRY_BASE", "200ms"),
        ("DNS_HOSTMASTER", "hostmaster@example.test"),
    ])
    .await;
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

    // A plan with HTTPS, and a paid order for it.
    let product = create_product(&app, &admin, "SHARED_HOSTING").await;
    let limits = json!({ "emails": 1, "phpVersion": "8.2", "ssl": true });
    let plan = create_plan(
        &app,
        &admin,
        &plan_body(product["id"].as_str().unwrap(), &unique("secure"), limits),
    )
    .await;
    let domain = "secure-site.example";
    let placed = anon(&app)
        .authorization(&format!("Bearer {INTERNAL_KEY}"))
        .post(
            "/api/orders",
            &json!({
                "tenantSlug": "acme",
                "customer": { "email": "owner@secure.example", "fullName": "Secure Owner" },
                "planSlug": plan["slug"],
                "totalAmountCents": 149,
                "currency": "usd",
                "stripePaymentIntentId": "pi_https_1",
                "metadata": { "domain": domain },
            }),
        )
        .await
        .expect(201);
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

    // SUPPORT re-issues: a new certificate is served.
    let reply = authed(&app, &support)
        .post(
            &format!("/api/hosting/accounts/{account_id}/certificate"),
            &json!({}),
        )
        .await
        .expect(202);
    wait_job_status(&app, &admin, reply["jobId"].as_str().unwrap(), "SUCCESS").await;
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
