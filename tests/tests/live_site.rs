//! From a paid order to a live site, end to end: the panel and three real agents (web, dns,
//! mail). `POST /api/orders` for a hosting plan with a mailbox → the site is placed on the web
//! server and served by a real nginx over HTTPS with a certificate from a real ACME server
//! (pebble), the zone is served by a real PowerDNS (`dig`), the
//! mailbox is in the Postfix maps (built by the real postmap) and the Dovecot passwd-file,
//! every job SUCCEEDs, the domain is ACTIVE and the audit log tells the story. Then the
//! account is suspended, unsuspended and terminated through the admin API.

use std::{process::Command, time::Duration};

use mpanel_tests::{
    TestApp,
    api::{anon, authed, org_with_roles},
    fleet::{AgentProc, add_server, enrollment_token, hub_addr, wait_job_status},
    panel::INTERNAL_KEY,
    pdns::{API_KEY, Pdns},
    pebble::Pebble,
    replica::fleet_panel,
    selling::hosting_offer,
    smtp::SmtpSink,
    wait_for,
    web::WebSandbox,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

async fn account(app: &TestApp, token: &str, id: &str) -> Value {
    authed(app, token)
        .get(&format!("/api/hosting/accounts/{id}"))
        .await
        .expect(200)
}

#[tokio::test]
async fn a_paid_hosting_order_becomes_a_live_site_then_is_suspended_and_terminated() {
    let pdns = Pdns::start().await;
    let web = WebSandbox::start();
    let pebble = Pebble::start(web.port, 3600);
    let root = pebble.root();
    let mail_dir = tempfile::tempdir().unwrap();
    let smtp = SmtpSink::start().await;
    let app = fleet_panel(smtp.port(), &[("JOB_MAX_ATTEMPTS", "20")]).await;
    let acme = org_with_roles(&app, "acme", &["SUPER_ADMIN", "SUPPORT"]).await;
    let admin = acme.super_admin().token().to_owned();
    let support = acme.by_role("SUPPORT").token().to_owned();

    // The fleet: three servers, each with its real agent.
    let web_id = add_server(&app, &admin, "srv1-web", "WEB", "192.0.2.80").await;
    let dns_id = add_server(&app, &admin, "dns-core", "DNS", "192.0.2.53").await;
    let mail_id = add_server(&app, &admin, "mail-core", "MAIL", "192.0.2.25").await;
    let hub = hub_addr(&app).await;
    let mut agents = Vec::new();
    let key_file = pdns.dir.path().join("api-key");
    std::fs::write(&key_file, API_KEY).unwrap();
    let md = mail_dir.path().display();
    for (name, id, config) in [
        (
            "srv1-web",
            &web_id,
            format!(
                "roles = [\"web\"]\n{}",
                web.agent_toml_acme(&pebble.directory(), &pebble.tls_ca())
            ),
        ),
        (
            "dns-core",
            &dns_id,
            format!(
                "roles = [\"dns\"]\n[dns]\napi_url = \"{}\"\napi_key_file = \"{}\"\n",
                pdns.api_url(),
                key_file.display()
            ),
        ),
        (
            "mail-core",
            &mail_id,
            format!(
                "roles = [\"mail\"]\n[mail]\nvmail_uid = 5000\nvmail_gid = 5000\nreload = false\n\
                 virtual_mailbox_domains = \"{md}/virtual_mailbox_domains\"\n\
                 virtual_mailbox_maps = \"{md}/virtual_mailbox_maps\"\n\
                 passwd_file = \"{md}/users\"\nvmail_root = \"{md}/vmail\"\n"
            ),
        ),
    ] {
        let token = enrollment_token(&app, &admin, id).await;
        let mut agent = AgentProc::enroll(&app, name, &token).await;
        agent.configure(hub, &config);
        agent.start();
        agents.push(agent);
    }
    wait_for("the three agents to be online", WAIT, || async {
        let servers = authed(&app, &admin).get("/api/servers").await.expect(200);
        let online = servers["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["agentOnline"] == true)
            .count();
        (online == 3).then_some(())
    })
    .await;

    // A paid order for a hosting plan with one mailbox.
    let offer = hosting_offer(&app, &admin, 1).await;
    let placed = anon(&app)
        .authorization(&format!("Bearer {INTERNAL_KEY}"))
        .post(
            "/api/orders",
            &json!({
                "tenantSlug": "acme",
                "customer": { "email": "owner@client.example", "fullName": "Client Owner" },
                "planSlug": offer.plan_slug(),
                "totalAmountCents": 149,
                "currency": "usd",
                "stripePaymentIntentId": "pi_live_1",
                "metadata": { "domain": "client-site.example" },
            }),
        )
        .await
        .expect(201);
    let jobs: Vec<(String, String)> = placed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["type"].as_str().unwrap().to_owned(),
                j["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let kinds: Vec<&str> = jobs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "PROVISION_DNS",
            "PROVISION_HOSTING",
            "PROVISION_MAIL",
            "PROVISION_HOSTING"
        ],
        "zone, site, mailbox and the site's certificate: {placed}"
    );
    // By payload kind: orderZone, orderSite, orderMailbox, orderCertificate.
    let mut results = std::collections::BTreeMap::new();
    for (_, id) in &jobs {
        let done = wait_job_status(&app, &admin, id, "SUCCESS").await;
        results.insert(done["payload"]["kind"].as_str().unwrap().to_owned(), done);
    }
    // The zone waited for the site (its apex points at the web server chosen there) instead
    // of failing until it was placed: every job ran once.
    for (kind, job) in &results {
        assert_eq!(job["attempts"], 1, "{kind}: {job}");
    }
    assert_eq!(results["orderSite"]["serverId"], web_id.as_str());
    assert_eq!(results["orderCertificate"]["serverId"], web_id.as_str());
    assert_eq!(results["orderZone"]["serverId"], dns_id.as_str());
    assert_eq!(results["orderMailbox"]["serverId"], mail_id.as_str());

    // The site: user, vhost nginx accepts, served by nginx.
    let hosting = &results["orderSite"]["result"];
    let user = hosting["systemUser"].as_str().unwrap().to_owned();
    assert_eq!(user, "client-site_example");
    assert_eq!(hosting["homeDir"], "/home/client-site_example");
    assert!(web.passwd_line(&user).is_some());
    let vhost = web.read("sites/client-site.example.conf");
    assert!(vhost.contains("server_name client-site.example www.client-site.example;"));
    assert!(web.nginx_config_ok(), "nginx -t accepts the vhost");
    // Over HTTPS with a chain to pebble's root, for the apex and www; HTTP redirects there.
    for host in ["client-site.example", "www.client-site.example"] {
        let body = web.wait_for_https(host, &root, 200);
        assert!(body.contains("client-site.example"), "{body}");
    }
    web.wait_for("client-site.example", Some(301));

    // The zone: served by PowerDNS, apex and www at the web server, MX at the mail server.
    assert_eq!(pdns.dig("client-site.example", "A"), ["192.0.2.80"]);
    assert_eq!(pdns.dig("www.client-site.example", "A"), ["192.0.2.80"]);
    assert_eq!(
        pdns.dig("client-site.example", "MX"),
        ["10 mail.client-site.example."]
    );
    assert_eq!(pdns.dig("mail.client-site.example", "A"), ["192.0.2.25"]);

    // The mailbox: in the maps (and their .db built by postmap) and the passwd-file, with
    // only an argon2id hash.
    let maps = std::fs::read_to_string(mail_dir.path().join("virtual_mailbox_maps")).unwrap();
    assert!(
        maps.contains("info@client-site.example client-site.example/info/"),
        "{maps}"
    );
    assert!(mail_dir.path().join("virtual_mailbox_maps.db").exists());
    let users = std::fs::read_to_string(mail_dir.path().join("users")).unwrap();
    assert!(
        users.starts_with("info@client-site.example:{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$"),
        "{users}"
    );

    // The welcome e-mail reaches the customer with the mailbox's password, which is the one
    // the mail server holds the hash of.
    let mails = smtp.wait_for_messages(1, WAIT).await;
    assert_eq!(mails[0].rcpt_to, ["owner@client.example"]);
    let text = mails[0].text();
    assert!(text.contains("client-site.example"), "{text}");
    assert!(
        text.contains("https://client-site.example/"),
        "the welcome e-mail gives the https address: {text}"
    );
    let password = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Mailbox info@client-site.example: password ")
        })
        .unwrap_or_else(|| panic!("no mailbox password in the welcome e-mail:\n{text}"))
        .trim()
        .to_owned();
    let hash = users
        .split(':')
        .nth(1)
        .unwrap()
        .trim_start_matches("{ARGON2ID}")
        .to_owned();
    let verified = Command::new("doveadm")
        .args(["pw", "-t", &format!("{{ARGON2ID}}{hash}"), "-p", &password])
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "the e-mailed password matches the mail server's hash: {}",
        String::from_utf8_lossy(&verified.stderr)
    );

    // The panel's rows.
    let pool = app.db.pool().await;
    let domain_status: String =
        sqlx::query_scalar("SELECT status::text FROM domains WHERE name = 'client-site.example'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(domain_status, "ACTIVE");
    let accounts = authed(&app, &admin)
        .get("/api/hosting/accounts?domain=client-site")
        .await
        .expect(200);
    assert_eq!(accounts["total"], 1, "{accounts}");
    let account_id = accounts["items"][0]["id"].as_str().unwrap().to_owned();
    let acct = account(&app, &admin, &account_id).await;
    assert_eq!(acct["status"], "ACTIVE");
    assert_eq!(acct["serverId"], web_id.as_str());
    assert_eq!(acct["systemUser"], user.as_str());
    assert_eq!(acct["phpVersion"], "8.2");
    let (mail_status, mailbox): (String, Option<String>) = sqlx::query_as(
        "SELECT status::text, mailbox FROM mail_accounts WHERE email = 'info@client-site.example'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(mail_status, "ACTIVE");
    assert!(
        mailbox
            .unwrap()
            .ends_with("/vmail/client-site.example/info")
    );
    let zone_synced: bool = sqlx::query_scalar(
        "SELECT z.is_synced FROM dns_zones z JOIN domains d ON d.id = z.domain_id
          WHERE d.name = 'client-site.example'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(zone_synced);
    let succeeded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_logs WHERE action = 'job.succeeded'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(succeeded, 4);
    // The clear password is nowhere in the panel's database.
    let leaked: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM jobs WHERE payload::text LIKE '%' || $1 || '%'
                                            OR result::text LIKE '%' || $1 || '%')
              + (SELECT count(*) FROM job_logs WHERE details::text LIKE '%' || $1 || '%')
              + (SELECT count(*) FROM audit_logs WHERE details::text LIKE '%' || $1 || '%')
              + (SELECT count(*) FROM order_credentials)",
    )
    .bind(&password)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(leaked, 0);

    // Suspend (SUPPORT may): the suspended page, the user can no longer log in.
    let reply = authed(&app, &support)
        .post(
            &format!("/api/hosting/accounts/{account_id}/suspend"),
            &json!({}),
        )
        .await
        .expect(202);
    wait_job_status(&app, &admin, reply["jobId"].as_str().unwrap(), "SUCCESS").await;
    assert_eq!(
        account(&app, &admin, &account_id).await["status"],
        "SUSPENDED"
    );
    let body = web.wait_for("client-site.example", Some(503));
    assert!(body.contains("suspended"), "{body}");
    let body = web.wait_for_https("client-site.example", &root, 503);
    assert!(body.contains("suspended"), "on HTTPS too: {body}");
    assert!(
        web.passwd_line(&user)
            .unwrap()
            .ends_with(":/usr/sbin/nologin")
    );
    let domain_status: String =
        sqlx::query_scalar("SELECT status::text FROM domains WHERE name = 'client-site.example'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(domain_status, "SUSPENDED");

    // SUPPORT may not terminate.
    authed(&app, &support)
        .post(
            &format!("/api/hosting/accounts/{account_id}/terminate"),
            &json!({}),
        )
        .await
        .expect(403);

    // Unsuspend: served again.
    let reply = authed(&app, &admin)
        .post(
            &format!("/api/hosting/accounts/{account_id}/unsuspend"),
            &json!({}),
        )
        .await
        .expect(202);
    wait_job_status(&app, &admin, reply["jobId"].as_str().unwrap(), "SUCCESS").await;
    assert_eq!(account(&app, &admin, &account_id).await["status"], "ACTIVE");
    web.wait_for_https("client-site.example", &root, 200);
    assert!(web.passwd_line(&user).unwrap().ends_with(":/bin/bash"));

    // Terminate: archived, then gone.
    let reply = authed(&app, &admin)
        .post(
            &format!("/api/hosting/accounts/{account_id}/terminate"),
            &json!({}),
        )
        .await
        .expect(202);
    let done = wait_job_status(&app, &admin, reply["jobId"].as_str().unwrap(), "SUCCESS").await;
    let archive = done["result"]["archive"].as_str().unwrap().to_owned();
    assert!(std::path::Path::new(&archive).exists(), "{done}");
    let listing = Command::new("tar")
        .args(["--use-compress-program=zstd", "-tf", &archive])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&listing.stdout).contains("client-site_example/public_html/"),
        "the archive holds the site"
    );
    assert_eq!(
        account(&app, &admin, &account_id).await["status"],
        "TERMINATED"
    );
    web.wait_for("client-site.example", None);
    assert!(
        !matches!(web.get_https("client-site.example", &root), Ok((200, _))),
        "no certificate is served for a terminated site"
    );
    assert!(web.passwd_line(&user).is_none());
    assert!(!web.path("sites/client-site.example.conf").exists());
    assert!(web.nginx_config_ok());
    // A terminated account takes no more actions.
    authed(&app, &admin)
        .post(
            &format!("/api/hosting/accounts/{account_id}/suspend"),
            &json!({}),
        )
        .await
        .expect(409);
    for action in ["hosting.suspend", "hosting.unsuspend", "hosting.terminate"] {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_logs WHERE action = $1")
            .bind(action)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n, 1, "{action}");
    }

    pool.close().await;
    for agent in &mut agents {
        assert!(agent.terminate().await.success());
    }
    app.cleanup().await;
}
