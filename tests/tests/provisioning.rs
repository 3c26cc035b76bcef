//! Provisioning through the fleet, end to end: a paid order's PROVISION_DNS job goes from the
//! queue through the panel's fleet dispatcher to a real agent serving the dns role, which
//! writes the zone into a real PowerDNS; `dig` answers it, the DnsZone row records the serial
//! and the domain becomes ACTIVE once all of the order's jobs succeeded.

use std::time::Duration;

use mpanel_tests::{
    TestApp,
    api::{anon, authed, org_with_roles},
    fleet::{AgentProc, add_server, enrollment_token, hub_addr},
    panel::INTERNAL_KEY,
    pdns::{API_KEY, Pdns},
    wait_for,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

async fn job(app: &TestApp, token: &str, id: &str) -> Value {
    authed(app, token)
        .get(&format!("/api/jobs/{id}"))
        .await
        .expect(200)
}

#[tokio::test]
async fn a_paid_dns_order_becomes_a_zone_served_by_powerdns() {
    let pdns = Pdns::start().await;
    let app = TestApp::spawn_with(&[
        ("AGENT_HEARTBEAT_INTERVAL", "1s"),
        ("JOB_SWEEP_INTERVAL", "200ms"),
        ("JOB_RETRY_BASE", "200ms"),
        ("DNS_HOSTMASTER", "hostmaster@example.test"),
    ])
    .await;
    let acme = org_with_roles(&app, "acme", &["SUPER_ADMIN"]).await;
    let admin = acme.super_admin().token().to_owned();

    // The fleet: a DNS server with a real agent, and a mail server (no agent needed here).
    let dns = add_server(&app, &admin, "dns-core", "DNS", "10.1.10.102").await;
    add_server(&app, &admin, "mail-core", "MAIL", "192.0.2.25").await;
    let hub = hub_addr(&app).await;
    let mut agent = AgentProc::enroll(
        &app,
        "dns-core",
        &enrollment_token(&app, &admin, &dns).await,
    )
    .await;
    let key_file = pdns.dir.path().join("api-key");
    std::fs::write(&key_file, API_KEY).unwrap();
    agent.configure(
        hub,
        &format!(
            "roles = [\"dns\"]\n[dns]\napi_url = \"{}\"\napi_key_file = \"{}\"\n",
            pdns.api_url(),
            key_file.display()
        ),
    );
    agent.start();

    // The catalog and a paid order for a DNS-only plan.
    let product = authed(&app, &admin)
        .post(
            "/api/products",
            &json!({ "name": "DNS", "slug": "dns-only", "type": "DNS" }),
        )
        .await
        .expect(201);
    authed(&app, &admin)
        .post(
            "/api/plans",
            &json!({ "productId": product["id"], "name": "DNS", "slug": "dns-monthly",
                     "priceMonthlyCents": 100, "priceYearlyCents": 1000 }),
        )
        .await
        .expect(201);
    let placed = anon(&app)
        .authorization(&format!("Bearer {INTERNAL_KEY}"))
        .post(
            "/api/orders",
            &json!({
                "tenantSlug": "acme",
                "customer": { "email": "client@shop.example" },
                "planSlug": "dns-monthly",
                "totalAmountCents": 100,
                "currency": "usd",
                "stripePaymentIntentId": "pi_dns_1",
                "metadata": { "domain": "shop.example" },
            }),
        )
        .await
        .expect(201);
    let jobs = placed["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{placed}");
    assert_eq!(jobs[0]["type"], "PROVISION_DNS");
    let job_id = jobs[0]["id"].as_str().unwrap().to_owned();

    let done = wait_for("the DNS job to succeed", WAIT, || async {
        let j = job(&app, &admin, &job_id).await;
        assert_ne!(j["status"], "FAILED", "{j}");
        (j["status"] == "SUCCESS").then_some(j)
    })
    .await;
    assert_eq!(
        done["serverId"],
        dns.as_str(),
        "the job names the server it ran on"
    );
    assert_eq!(done["result"]["created"], true);

    // PowerDNS really serves the zone.
    assert_eq!(
        pdns.dig("shop.example", "NS"),
        ["ns1.example.test.", "ns2.example.test."]
    );
    let soa = pdns.dig("shop.example", "SOA").join(" ");
    assert!(
        soa.starts_with("ns1.example.test. hostmaster.example.test."),
        "{soa}"
    );
    assert_eq!(pdns.dig("shop.example", "MX"), ["10 mail.shop.example."]);
    assert_eq!(pdns.dig("mail.shop.example", "A"), ["192.0.2.25"]);
    assert_eq!(pdns.dig("shop.example", "TXT"), ["\"v=spf1 mx -all\""]);
    assert_eq!(
        pdns.dig("_dmarc.shop.example", "TXT"),
        ["\"v=DMARC1; p=quarantine\""]
    );

    // The panel's rows: a synced zone with the agent's serial, the domain live.
    let pool = app.db.pool().await;
    let (synced, serial): (bool, Option<i32>) = sqlx::query_as(
        "SELECT z.is_synced, z.soa_serial FROM dns_zones z JOIN domains d ON d.id = z.domain_id
          WHERE d.name = 'shop.example'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(synced);
    assert_eq!(serial.map(i64::from), done["result"]["serial"].as_i64());
    let status: String =
        sqlx::query_scalar("SELECT status::text FROM domains WHERE name = 'shop.example'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(status, "ACTIVE");
    assert_eq!(
        agent
            .wait_count(&["executing command", "sync_dns_zone"], 1)
            .await,
        1
    );

    pool.close().await;
    assert!(agent.terminate().await.success());
    app.cleanup().await;
}
