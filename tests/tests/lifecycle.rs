//! The subscription drives its resources, end to end: a paid order through the real panel
//! and real agents (nginx, PowerDNS, the mail maps with a real Dovecot over them), then
//! signed Stripe events — a failed payment, the grace period, a payment; a cancellation and
//! its retention — and what the customer sees of each: the suspended page, IMAP logins
//! refused and accepted, the zone kept and then gone (`dig`), one e-mail per step.

use std::{process::Command, time::Duration};

use mpanel_tests::{
    api::{Reply, anon, authed, org_with_roles},
    dovecot::Dovecot,
    fleet::{hub_addr, wait_job_status},
    panel::{INTERNAL_KEY, TestApp, wait_for},
    pdns::Pdns,
    replica::{Fleet3, fleet_panel},
    selling::{deliver_event, fresh_event_id, hosting_offer, order_body_for, place_order},
    smtp::SmtpSink,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// A panel with one tenant, its three servers with real agents, a paid hosting order with
/// one mailbox provisioned, and Dovecot serving that mailbox.
struct Setup {
    app: TestApp,
    smtp: SmtpSink,
    fleet: Fleet3,
    dovecot: Dovecot,
    admin: String,
    domain: String,
    subscription: String,
    mailbox: String,
    password: String,
}

impl Setup {
    async fn start(domain: &str, grace_secs: i64, warning_secs: i64, retention_secs: i64) -> Setup {
        let smtp = SmtpSink::start().await;
        let app = fleet_panel(smtp.port(), &[("EMAIL_FROM", "billing@panel.example")]).await;
        let org = org_with_roles(&app, "acme", &["SUPER_ADMIN"]).await;
        let admin = org.super_admin().token().to_owned();
        let hub = hub_addr(&app).await;
        let fleet = Fleet3::start(&app, &admin, [&[hub], &[hub], &[hub]]).await;

        authed(&app, &admin)
            .send(
                reqwest::Method::PUT,
                "/api/subscriptions/policy",
                Some(&json!({
                    "gracePeriodSecs": grace_secs, "warningSecs": warning_secs,
                    "retentionSecs": retention_secs, "keepZoneOnTermination": false,
                    "templates": {"suspended": {
                        "subject": "[{tenantName}] {domain} is on hold",
                        "body": "Dear {customerName}, {domain} ({planName}) is suspended."}},
                })),
            )
            .await
            .expect(200);

        let offer = hosting_offer(&app, &admin, 1).await;
        let mut body = order_body_for("acme", offer.plan_slug(), domain, "owner@client.example");
        body["customer"]["fullName"] = json!("Client Owner");
        let placed = place_order(&app, &body).await;
        for job in placed["jobs"].as_array().unwrap() {
            wait_job_status(&app, &admin, job["id"].as_str().unwrap(), "SUCCESS").await;
        }
        let subscription = placed["subscriptionId"].as_str().unwrap().to_owned();
        fleet.wait_https(domain, 200);

        let welcome = smtp.wait_for_messages(1, WAIT).await;
        let mailbox = format!("info@{domain}");
        let password = welcome[0]
            .text()
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(&format!("Mailbox {mailbox}: password "))
                    .map(|p| p.trim().to_owned())
            })
            .expect("the welcome e-mail has the mailbox's password");
        let dovecot = Dovecot::start(&fleet.mail_dir.path().join("users")).unwrap();
        dovecot.imap_login(&mailbox, &password).unwrap();
        Setup {
            app,
            smtp,
            fleet,
            dovecot,
            admin,
            domain: domain.to_owned(),
            subscription,
            mailbox,
            password,
        }
    }

    async fn subscription(&self) -> Value {
        authed(&self.app, &self.admin)
            .get(&format!("/api/subscriptions/{}", self.subscription))
            .await
            .expect(200)
    }

    /// Waits until the subscription's resources are `state` and nothing is pending.
    async fn wait_service(&self, state: &str) -> Value {
        wait_for(&format!("the subscription to be {state}"), WAIT, || async {
            let s = self.subscription().await;
            (s["service"]["state"] == state && s["service"]["pending"] == false).then_some(s)
        })
        .await
    }

    /// A signed Stripe event about this subscription, as Stripe sends it.
    fn stripe_event(&self, id: &str, kind: &str, created: i64) -> Value {
        let metadata = json!({ "tenantSlug": "acme", "domain": self.domain });
        let object = if kind == "customer.subscription.deleted" {
            json!({ "id": "sub_lifecycle", "object": "subscription", "status": "canceled",
                    "metadata": metadata })
        } else {
            json!({ "id": format!("in_{id}"), "object": "invoice", "subscription": "sub_lifecycle",
                    "subscription_details": { "metadata": metadata },
                    "lines": { "data": [ { "period": { "start": created,
                                                       "end": created + 30 * 86_400 } } ] } })
        };
        json!({ "id": id, "object": "event", "type": kind, "created": created,
                "data": { "object": object } })
    }

    async fn deliver(&self, event: &Value) -> Value {
        deliver_event(&self.app, event).await.expect(200)
    }

    /// The e-mails the panel queued of `kind` (the outbox is the record of what was sent).
    async fn emails(&self, kind: &str) -> Vec<(String, Vec<String>)> {
        let pool = self.app.db.pool().await;
        sqlx::query_as(
            "SELECT subject, to_addresses FROM outbound_emails WHERE kind = $1 ORDER BY created_at",
        )
        .bind(kind)
        .fetch_all(&pool)
        .await
        .unwrap()
    }

    fn imap(&self) -> Result<(), String> {
        self.dovecot.imap_login(&self.mailbox, &self.password)
    }

    /// Waits until the mailbox accepts (or refuses) the customer's login: Dovecot re-reads
    /// the passwd-file the agent rewrote on its next lookup after noticing the change.
    async fn wait_imap(&self, accepted: bool) {
        let what = if accepted { "accept" } else { "refuse" };
        wait_for(
            &format!("the mailbox to {what} IMAP logins"),
            Duration::from_secs(30),
            || async {
                let login = tokio::task::block_in_place(|| self.imap());
                (login.is_ok() == accepted).then_some(())
            },
        )
        .await
    }

    fn dig_status(&self) -> String {
        dig_status(&self.fleet.pdns, &self.domain)
    }

    async fn cleanup(self) {
        drop(self.dovecot);
        self.app.cleanup().await;
    }
}

/// The DNS server's status word for the apex's SOA (NOERROR, REFUSED, NXDOMAIN …).
fn dig_status(pdns: &Pdns, name: &str) -> String {
    let out = Command::new("dig")
        .args(["+time=2", "+tries=2", "@127.0.0.1", "-p"])
        .arg(pdns.dns_port.to_string())
        .args([name, "SOA"])
        .output()
        .expect("dig runs");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("status: ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or("no answer")
        .to_owned()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_payment_suspends_after_the_grace_period_and_a_payment_brings_all_back() {
    let s = Setup::start("unpaid-site.example", 3, 2, 3600).await;
    let t0 = now();

    // The payment fails: PAST_DUE, dated suspension, the customer told once.
    let failed = s.stripe_event(&fresh_event_id(), "invoice.payment_failed", t0);
    let ack = s.deliver(&failed).await;
    assert_eq!(ack["duplicate"], false, "{ack}");
    assert_eq!(ack["subscription"]["outcome"], "applied", "{ack}");
    assert_eq!(ack["subscription"]["status"], "PAST_DUE", "{ack}");
    assert_eq!(ack["subscription"]["serviceState"], "ACTIVE", "{ack}");
    let again = s.deliver(&failed).await;
    assert_eq!(again["duplicate"], true, "{again}");
    let sub = s.subscription().await;
    assert_eq!(sub["status"], "PAST_DUE");
    assert!(sub["suspendAt"].is_string(), "{sub}");
    assert!(sub["pastDueSince"].is_string(), "{sub}");

    // After the grace period: the site shows the suspended page, the mailbox refuses logins,
    // the zone still answers.
    let body = s.fleet.web.wait_for(&s.domain, Some(503));
    assert!(body.contains("suspended"), "{body}");
    let body = s.fleet.wait_https(&s.domain, 503);
    assert!(body.contains("suspended"), "on HTTPS too: {body}");
    let sub = s.wait_service("SUSPENDED").await;
    assert_eq!(sub["service"]["reason"], "NON_PAYMENT", "{sub}");
    assert_eq!(
        sub["resources"]["hostingAccount"]["status"], "SUSPENDED",
        "{sub}"
    );
    assert_eq!(
        sub["resources"]["mailboxes"][0]["status"], "DISABLED",
        "{sub}"
    );
    s.wait_imap(false).await;
    assert_eq!(s.dig_status(), "NOERROR");
    assert_eq!(s.fleet.pdns.dig(&s.domain, "A"), ["192.0.2.80"]);

    // The domain shows it all.
    let domain_id = sub["domainId"].as_str().unwrap();
    let domain = authed(&s.app, &s.admin)
        .get(&format!("/api/domains/{domain_id}"))
        .await
        .expect(200);
    assert_eq!(domain["status"], "SUSPENDED", "{domain}");
    assert_eq!(
        domain["subscription"]["serviceState"], "SUSPENDED",
        "{domain}"
    );
    assert_eq!(domain["hostingAccount"]["status"], "SUSPENDED", "{domain}");
    assert!(domain["zone"]["id"].is_string(), "{domain}");
    let listed = authed(&s.app, &s.admin)
        .get("/api/domains?status=SUSPENDED")
        .await
        .expect(200);
    assert_eq!(listed["total"], 1, "{listed}");

    // A late copy of an older failure changes nothing.
    let older = s.stripe_event(&fresh_event_id(), "invoice.payment_failed", t0 - 60);
    assert_eq!(s.deliver(&older).await["subscription"]["outcome"], "stale");

    // The payment goes through: everything back, the period renewed.
    let paid = s.stripe_event(&fresh_event_id(), "invoice.paid", t0 + 1);
    let ack = s.deliver(&paid).await;
    assert_eq!(ack["subscription"]["outcome"], "applied", "{ack}");
    assert_eq!(ack["subscription"]["status"], "ACTIVE", "{ack}");
    s.fleet.wait_https(&s.domain, 200);
    let sub = s.wait_service("ACTIVE").await;
    assert_eq!(sub["status"], "ACTIVE");
    assert!(sub["suspendAt"].is_null(), "{sub}");
    assert_eq!(
        sub["resources"]["mailboxes"][0]["status"], "ACTIVE",
        "{sub}"
    );
    s.wait_imap(true).await;
    assert_eq!(s.dig_status(), "NOERROR");

    // Out of order: the failure Stripe sent before the payment arrives now, and is stale.
    let late = s.stripe_event(&fresh_event_id(), "invoice.payment_failed", t0);
    assert_eq!(s.deliver(&late).await["subscription"]["outcome"], "stale");
    assert_eq!(s.subscription().await["status"], "ACTIVE");

    // One e-mail per step, to the customer; the suspended one in the tenant's own words.
    let failed_mails = s.emails("PAYMENT_FAILED").await;
    assert_eq!(failed_mails.len(), 1, "{failed_mails:?}");
    assert_eq!(failed_mails[0].1, ["owner@client.example"]);
    assert_eq!(s.emails("SUSPENSION_COMING").await.len(), 1);
    let suspended = s.emails("SUSPENDED").await;
    assert_eq!(suspended.len(), 1, "{suspended:?}");
    assert!(
        suspended[0].0.ends_with("] unpaid-site.example is on hold"),
        "{suspended:?}"
    );
    let mails = s.smtp.wait_for_messages(4, WAIT).await;
    let held = mails
        .iter()
        .find(|m| m.subject().contains("is on hold"))
        .expect("the suspension e-mail was delivered");
    assert!(
        held.text()
            .contains("Dear Client Owner, unpaid-site.example"),
        "{}",
        held.text()
    );
    assert!(mails.iter().any(|m| m.subject().contains("payment for")));
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_ends_in_termination_after_the_retention() {
    let s = Setup::start("leaving-site.example", 600, 60, 8).await;
    let deleted = s.stripe_event(&fresh_event_id(), "customer.subscription.deleted", now());
    let ack = s.deliver(&deleted).await;
    assert_eq!(ack["subscription"]["status"], "CANCELLED", "{ack}");
    assert_eq!(ack["subscription"]["serviceState"], "SUSPENDED", "{ack}");
    assert_eq!(s.deliver(&deleted).await["duplicate"], true);

    // Suspended at once (the zone kept) …
    s.fleet.web.wait_for(&s.domain, Some(503));
    let sub = s.subscription().await;
    assert!(sub["terminateAt"].is_string(), "{sub}");
    assert_eq!(sub["service"]["reason"], "CANCELLED", "{sub}");

    // … and terminated after the retention: site gone, mailbox gone, zone gone.
    let sub = s.wait_service("TERMINATED").await;
    assert!(sub["terminatedAt"].is_string(), "{sub}");
    assert_eq!(
        sub["resources"]["hostingAccount"]["status"], "TERMINATED",
        "{sub}"
    );
    assert_eq!(sub["resources"]["mailboxes"], json!([]), "{sub}");
    assert!(sub["resources"]["zone"].is_null(), "{sub}");
    s.fleet.web.wait_for(&s.domain, None);
    assert!(
        !s.fleet
            .web
            .path(&format!("sites/{}.conf", s.domain))
            .exists()
    );
    let status = s.dig_status();
    assert!(
        status == "REFUSED" || status == "NXDOMAIN",
        "dig answered {status}"
    );
    s.wait_imap(false).await;
    let users = std::fs::read_to_string(s.fleet.mail_dir.path().join("users")).unwrap();
    assert!(!users.contains(&s.mailbox), "{users}");
    // The maildir is archived on the mail server, then removed.
    let md = s.fleet.mail_dir.path();
    assert!(!md.join("vmail/leaving-site.example/info").exists());
    let archives: Vec<String> = std::fs::read_dir(md.join("archive"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(archives.len(), 1, "{archives:?}");
    assert!(
        archives[0].starts_with("info@leaving-site.example-") && archives[0].ends_with(".tar.zst"),
        "{archives:?}"
    );

    // Nothing to reactivate; nothing more is done by a late payment.
    let reply: Reply = authed(&s.app, &s.admin)
        .post(
            &format!("/api/subscriptions/{}/reactivate", s.subscription),
            &json!({}),
        )
        .await;
    reply.assert_error(409, "conflict");
    let paid = s.stripe_event(&fresh_event_id(), "invoice.paid", now());
    assert_eq!(
        s.deliver(&paid).await["subscription"]["outcome"],
        "unchanged"
    );

    assert_eq!(s.emails("SUSPENDED").await.len(), 1);
    assert_eq!(s.emails("TERMINATED").await.len(), 1);
    assert_eq!(s.emails("PAYMENT_FAILED").await.len(), 0);
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_offline_during_a_suspension_gets_it_when_it_returns() {
    let mut s = Setup::start("offline-mail.example", 600, 60, 3600).await;
    // The mail server's agent goes away; an operator cancels the subscription now.
    s.fleet.agents[2].kill().await;
    let sub = authed(&s.app, &s.admin)
        .post(
            &format!("/api/subscriptions/{}/cancel", s.subscription),
            &json!({}),
        )
        .await
        .expect(200);
    assert_eq!(sub["status"], "CANCELLED", "{sub}");
    assert_eq!(sub["service"]["state"], "SUSPENDED", "{sub}");
    let job = sub["service"]["jobId"].as_str().unwrap().to_owned();

    // The site is suspended; the mailbox waits for its server, and the subscription says so.
    s.fleet.web.wait_for(&s.domain, Some(503));
    let sub = s.subscription().await;
    assert_eq!(sub["service"]["pending"], true, "{sub}");
    s.imap().expect("the mail server has not been told yet");

    // The agent comes back and gets the suspension.
    s.fleet.agents[2].start();
    wait_job_status(&s.app, &s.admin, &job, "SUCCESS").await;
    let sub = s.wait_service("SUSPENDED").await;
    assert_eq!(
        sub["resources"]["mailboxes"][0]["status"], "DISABLED",
        "{sub}"
    );
    s.wait_imap(false).await;

    // An operator reactivates within the retention: everything back.
    let sub = authed(&s.app, &s.admin)
        .post(
            &format!("/api/subscriptions/{}/reactivate", s.subscription),
            &json!({}),
        )
        .await
        .expect(200);
    assert_eq!(sub["status"], "ACTIVE", "{sub}");
    assert!(sub["terminateAt"].is_null(), "{sub}");
    s.fleet.wait_https(&s.domain, 200);
    s.wait_service("ACTIVE").await;
    s.wait_imap(true).await;
    assert_eq!(s.emails("SUSPENDED").await.len(), 1);
    s.cleanup().await;
}

/// `POST /api/webhooks/billing` as a marketing site that bills elsewhere.
async fn billing(app: &TestApp, key: &str, body: &Value) -> Reply {
    anon(app)
        .authorization(&format!("Bearer {key}"))
        .post("/api/webhooks/billing", body)
        .await
}

#[tokio::test]
async fn the_internal_billing_api_takes_each_event_once_and_the_newest_wins() {
    let app = TestApp::spawn_with(&[
        ("JOB_DISPATCHER", "simulate"),
        ("JOB_SWEEP_INTERVAL", "200ms"),
    ])
    .await;
    let org = org_with_roles(&app, "acme", &["SUPER_ADMIN", "BILLING"]).await;
    let admin = org.super_admin().token().to_owned();
    let billing_user = org.by_role("BILLING").token().to_owned();
    let offer = hosting_offer(&app, &admin, 1).await;
    let placed = mpanel_tests::selling::place_order(
        &app,
        &mpanel_tests::selling::order_body("acme", offer.plan_slug()),
    )
    .await;
    let subscription = placed["subscriptionId"].as_str().unwrap().to_owned();
    let t = chrono::Utc::now();
    let at = |secs: i64| (t + chrono::Duration::seconds(secs)).to_rfc3339();
    let event = |id: &str, kind: &str, secs: i64| {
        json!({ "eventId": id, "type": kind, "occurredAt": at(secs),
                "subscriptionId": subscription })
    };

    // Bad input is refused, naming what is wrong, and changes nothing.
    billing(&app, "not-the-key", &event("e0", "invoice.paid", 0))
        .await
        .assert_error(401, "unauthorized");
    billing(&app, INTERNAL_KEY, &event(" ", "invoice.paid", 0))
        .await
        .assert_invalid_field("eventId");
    let mut with_period = event("e0", "invoice.payment_failed", 0);
    with_period["periodEnd"] = json!(at(86_400));
    billing(&app, INTERNAL_KEY, &with_period)
        .await
        .assert_invalid_field("periodEnd");
    let mut unknown = event("e0", "invoice.paid", 0);
    unknown["subscriptionId"] = json!(uuid::Uuid::new_v4());
    billing(&app, INTERNAL_KEY, &unknown)
        .await
        .assert_error(404, "not_found");
    let bad_type = billing(&app, INTERNAL_KEY, &event("e0", "invoice.refunded", 0)).await;
    assert_eq!(bad_type.status, 400, "{bad_type:?}");

    // A failure, once; the same event again is a duplicate.
    let ack = billing(
        &app,
        INTERNAL_KEY,
        &event("e1", "invoice.payment_failed", 0),
    )
    .await
    .expect(200);
    assert_eq!(ack["duplicate"], false, "{ack}");
    assert_eq!(ack["subscription"]["status"], "PAST_DUE", "{ack}");
    let again = billing(
        &app,
        INTERNAL_KEY,
        &event("e1", "invoice.payment_failed", 0),
    )
    .await
    .expect(200);
    assert_eq!(again["duplicate"], true, "{again}");

    // A payment (with its new period), then a late copy of an older failure.
    let mut paid = event("e2", "invoice.paid", 5);
    paid["periodEnd"] = json!(at(40 * 86_400));
    let ack = billing(&app, INTERNAL_KEY, &paid).await.expect(200);
    assert_eq!(ack["subscription"]["status"], "ACTIVE", "{ack}");
    let stale = billing(
        &app,
        INTERNAL_KEY,
        &event("e3", "invoice.payment_failed", 1),
    )
    .await
    .expect(200);
    assert_eq!(stale["subscription"]["outcome"], "stale", "{stale}");
    let sub = authed(&app, &admin)
        .get(&format!("/api/subscriptions/{subscription}"))
        .await
        .expect(200);
    assert_eq!(sub["status"], "ACTIVE", "{sub}");
    let period_end =
        chrono::DateTime::parse_from_rfc3339(sub["currentPeriodEnd"].as_str().unwrap()).unwrap();
    assert!(period_end > t + chrono::Duration::days(39), "{sub}");

    // The policy: bad values named, good ones kept.
    let reply = authed(&app, &admin)
        .send(
            reqwest::Method::PUT,
            "/api/subscriptions/policy",
            Some(
                &json!({"gracePeriodSecs": -1, "warningSecs": 0, "retentionSecs": 0,
                         "keepZoneOnTermination": false}),
            ),
        )
        .await;
    reply.assert_invalid_field("gracePeriodSecs");
    let reply = authed(&app, &admin)
        .send(
            reqwest::Method::PUT,
            "/api/subscriptions/policy",
            Some(
                &json!({"gracePeriodSecs": 60, "warningSecs": 0, "retentionSecs": 0,
                         "keepZoneOnTermination": false,
                         "templates": {"welcome": {"subject": "x", "body": "y"}}}),
            ),
        )
        .await;
    reply.assert_invalid_field("templates.welcome");
    let policy = authed(&app, &admin)
        .get("/api/subscriptions/policy")
        .await
        .expect(200);
    assert_eq!(policy["gracePeriodSecs"], 604_800, "the defaults: {policy}");

    // BILLING cancels; only an ADMIN terminates. Termination is final.
    authed(&app, &billing_user)
        .post(
            &format!("/api/subscriptions/{subscription}/terminate"),
            &json!({}),
        )
        .await
        .assert_error(403, "forbidden");
    let sub = authed(&app, &admin)
        .post(
            &format!("/api/subscriptions/{subscription}/terminate"),
            &json!({}),
        )
        .await
        .expect(200);
    assert_eq!(sub["status"], "CANCELLED", "{sub}");
    assert_eq!(sub["service"]["state"], "TERMINATED", "{sub}");
    let job = sub["service"]["jobId"].as_str().unwrap().to_owned();
    wait_job_status(&app, &admin, &job, "SUCCESS").await;
    let sub = authed(&app, &admin)
        .get(&format!("/api/subscriptions/{subscription}"))
        .await
        .expect(200);
    assert_eq!(sub["service"]["pending"], false, "{sub}");
    assert!(sub["terminatedAt"].is_string(), "{sub}");
    authed(&app, &admin)
        .post(
            &format!("/api/subscriptions/{subscription}/terminate"),
            &json!({}),
        )
        .await
        .assert_error(409, "conflict");
    let late = billing(&app, INTERNAL_KEY, &event("e4", "invoice.paid", 10))
        .await
        .expect(200);
    assert_eq!(late["subscription"]["outcome"], "unchanged", "{late}");
    assert_eq!(late["subscription"]["serviceState"], "TERMINATED", "{late}");
    app.cleanup().await;
}
