//! The demo, step by step: the real panel on its own database and Redis prefix, a local
//! SMTP sink, the demo's tenant and operator, a real agent per role whose software is
//! installed ([`Fleet`]), one paid order followed until its site (on HTTPS too where pebble
//! is installed), zone and welcome e-mail are live, and how to see each. Every step is
//! printed as it happens; [`Demo::stop`] takes it all down again.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use mpanel_tests::{TestApp, panel::delete_redis_keys, smtp::SmtpSink};

use crate::{
    fleet::Fleet,
    mailcatch::{Catcher, Caught},
    order::{self, Certificate, DOMAIN, MAILBOX, OPERATOR},
    tools::{self, Role},
    watch,
};

/// How long one step may take before the demo gives up and says which.
pub const STEP: Duration = Duration::from_secs(60);

/// What `mpanel-dev` was asked for.
pub struct Options {
    /// Every temporary file lives under it (it is `TMPDIR`).
    pub workdir: std::path::PathBuf,
    pub redis_prefix: String,
    /// When the demo began (for the "ready in" line).
    pub started: Instant,
    /// Roles to simulate even where their software is installed.
    pub simulate: Vec<Role>,
}

/// Everything the demo started. Dropping it stops the processes too (the harness's types
/// do), but only [`Demo::stop`] also removes the Redis keys and waits for every process.
pub struct Demo {
    app: TestApp,
    redis_prefix: String,
    fleet: Fleet,
    sink: Arc<SmtpSink>,
    catcher: tokio::task::JoinHandle<()>,
}

/// A random secret for this run only (244 random bits).
pub fn secret(prefix: &str) -> String {
    format!(
        "{prefix}{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

impl Demo {
    /// Starts everything and follows the sample order until it is live.
    pub async fn start(options: Options) -> anyhow::Result<Demo> {
        let simulated = tools::choose(&options.simulate);
        let real: Vec<Role> = Role::ALL
            .into_iter()
            .filter(|r| !simulated.contains(r))
            .collect();
        let https_off = tools::https_off(&simulated);

        let sink = Arc::new(SmtpSink::start().await);
        let caught = Catcher::new(options.workdir.join("mail"))?;
        let catcher = tokio::spawn(caught.clone().run(sink.clone()));
        println!(
            "smtp sink: 127.0.0.1:{} (e-mails saved under {})",
            sink.port(),
            caught.dir().display()
        );

        let internal_key = secret("mk_");
        let app = start_panel(
            &options.redis_prefix,
            sink.port(),
            &simulated,
            &internal_key,
        )
        .await;
        let operator = order::operator(&app).await;
        let fleet = Fleet::start(&app, &operator.token, &real, https_off.is_none()).await?;
        let demo = Demo {
            app,
            redis_prefix: options.redis_prefix,
            fleet,
            sink,
            catcher,
        };

        let https = demo.fleet.acme.is_some();
        let placed = order::place(&demo.app, &operator.token, &internal_key, https).await?;
        watch::jobs(&demo.app, &operator.token, &placed.jobs, STEP).await?;
        let mail = caught.wait(1, STEP).await.context("the welcome e-mail")?;
        demo.wait_live(&simulated).await?;
        let certificate = match https {
            true => Some(order::certificate(&demo.app, &operator.token).await?),
            false => None,
        };

        let https = match &certificate {
            Some(certificate) => Ok(certificate),
            None => Err(https_off.as_deref().unwrap_or("off")),
        };
        demo.print_how_to_see(&simulated, https, &mail, &operator.password);
        demo.print_lifecycle(&placed.subscription_id, &internal_key);
        let pids: Vec<String> = demo.pids().iter().map(u32::to_string).collect();
        println!("pids: {}", pids.join(" "));
        println!("ready in {:.1}s", options.started.elapsed().as_secs_f64());
        Ok(demo)
    }

    /// Waits until the site is served and the zone answers: the jobs say they are done, and
    /// nginx reloads and PowerDNS answers a moment later.
    async fn wait_live(&self, simulated: &[Role]) -> anyhow::Result<()> {
        let deadline = Instant::now() + STEP;
        if let Some(web) = &self.fleet.web {
            // A site with a certificate redirects its HTTP to HTTPS.
            let https = self.fleet.acme.is_some();
            loop {
                match web.get(DOMAIN) {
                    Some((200, body)) if !https => {
                        println!("nginx serves {DOMAIN}: 200, {} bytes", body.len());
                        break;
                    }
                    Some((301, _)) if https => {
                        println!("nginx redirects http://{DOMAIN}/ to HTTPS: 301");
                        break;
                    }
                    _ => {}
                }
                if Instant::now() > deadline {
                    bail!(
                        "nginx did not serve {DOMAIN} in time (last: {:?})",
                        web.get(DOMAIN)
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if let (Some(web), Some(acme)) = (&self.fleet.web, &self.fleet.acme) {
            loop {
                let got = web.get_https(DOMAIN, &acme.root);
                if let Ok((200, body)) = &got
                    && body.contains(DOMAIN)
                {
                    println!(
                        "nginx serves https://{DOMAIN}:{}/: 200, {} bytes, its chain verified \
                         up to pebble's root",
                        web.https_port,
                        body.len()
                    );
                    break;
                }
                if Instant::now() > deadline {
                    bail!("nginx did not serve {DOMAIN} over HTTPS in time (last: {got:?})");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if let Some(pdns) = &self.fleet.pdns
            && !simulated.contains(&Role::Dns)
            && tools::has_dig()
        {
            loop {
                if let Some(soa) = pdns.dig(DOMAIN, "SOA").first() {
                    println!("PowerDNS answers for {DOMAIN}: SOA {soa}");
                    break;
                }
                if Instant::now() > deadline {
                    bail!("PowerDNS did not answer for {DOMAIN} in time");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// `https`: the site's certificate, or why it has none.
    fn print_how_to_see(
        &self,
        simulated: &[Role],
        https: Result<&Certificate, &str>,
        mail: &[Caught],
        password: &str,
    ) {
        println!();
        println!("How to see the result:");
        match &self.fleet.web {
            Some(web) if https.is_ok() => println!(
                "site: curl -H 'Host: {DOMAIN}' http://127.0.0.1:{}/ (301: it redirects to its \
                 HTTPS, next line)",
                web.port
            ),
            Some(web) => println!(
                "site: curl -H 'Host: {DOMAIN}' http://127.0.0.1:{}/",
                web.port
            ),
            None => println!("site: simulated, nothing serves it (a real one needs nginx-light)"),
        }
        self.print_https(https);
        match &self.fleet.pdns {
            Some(pdns) if !simulated.contains(&Role::Dns) => {
                println!("zone: dig @127.0.0.1 -p {} {DOMAIN} SOA", pdns.dns_port);
                if !tools::has_dig() {
                    println!("      (dig comes with dnsutils: apt-get install dnsutils)");
                }
            }
            _ => println!(
                "zone: simulated, nothing serves it (a real one needs pdns-server \
                 pdns-backend-sqlite3 sqlite3, and a real site)"
            ),
        }
        for m in mail {
            println!(
                "welcome e-mail: {} (to {}, \"{}\")",
                m.path.display(),
                m.to,
                m.subject
            );
        }
        let mailbox_password = mail.iter().find_map(|m| m.mailbox_password(MAILBOX));
        match (&self.fleet.dovecot, mailbox_password) {
            (Some(dovecot), Some(mailbox_password)) => println!(
                "imap: curl --url imap://127.0.0.1:{}/INBOX --user '{MAILBOX}:{mailbox_password}'",
                dovecot.port
            ),
            (Some(_), None) => println!("imap: the welcome e-mail holds no password for {MAILBOX}"),
            (None, _) => println!(
                "imap: simulated, no mailbox exists (a real one needs postfix dovecot-imapd)"
            ),
        }
        println!("operator: {OPERATOR} password {password}");
        println!(
            "login: curl -X POST http://{}/api/auth/login -H 'content-type: application/json' \
             -d '{{\"email\":\"{OPERATOR}\",\"password\":\"{password}\"}}'",
            self.app.addr
        );
        println!(
            "       then: curl -H \"Authorization: Bearer $TOKEN\" http://{}/api/jobs",
            self.app.addr
        );
        if let Ok(certificate) = https {
            println!(
                "       and the site's certificate (its ssl): curl -H \"Authorization: Bearer \
                 $TOKEN\" http://{}/api/hosting/accounts/{}",
                self.app.addr, certificate.account_id
            );
        }
    }

    /// How to see the site over HTTPS and its certificate's state, or why it has none.
    fn print_https(&self, https: Result<&Certificate, &str>) {
        match (&self.fleet.web, &self.fleet.acme, https) {
            (Some(web), Some(acme), Ok(certificate)) => {
                let port = web.https_port;
                println!(
                    "https: curl --cacert {} --resolve {DOMAIN}:{port}:127.0.0.1 \
                     https://{DOMAIN}:{port}/",
                    acme.root.display()
                );
                println!("certificate: {}", certificate.describe());
            }
            (_, _, Err(off)) => println!("https: {off}"),
            _ => println!("https: off"),
        }
    }

    /// How to try the subscription's lifecycle on the sample order.
    fn print_lifecycle(&self, subscription: &str, internal_key: &str) {
        let event = |id: &str, kind: &str| {
            format!(
                "curl -X POST http://{}/api/webhooks/billing -H 'x-internal-key: {internal_key}' \
                 -H 'content-type: application/json' -d '{{\"eventId\":\"{id}-'$(date +%s)'\",\
                 \"type\":\"{kind}\",\"occurredAt\":\"'$(date -u +%FT%TZ)'\",\
                 \"subscriptionId\":\"{subscription}\"}}'",
                self.app.addr
            )
        };
        println!(
            "payment failed: {}\n      (the site shows its suspended page and the mailbox refuses \
             logins {} s later; GET /api/subscriptions/{subscription} shows it)",
            event("demo-failed", "invoice.payment_failed"),
            order::GRACE_SECS
        );
        println!(
            "payment: {}\n      (everything is back)",
            event("demo-paid", "invoice.paid")
        );
    }

    /// The processes it started: the panel, then the fleet's.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.app.pid()];
        pids.extend(self.fleet.pids());
        pids
    }

    /// Stops everything and removes what it made: the agents and Dovecot, the panel, its
    /// database and Redis keys, nginx and PowerDNS and their sandboxes.
    pub async fn stop(self) {
        self.catcher.abort();
        self.fleet.stop().await;
        self.app.cleanup().await;
        delete_redis_keys(&self.redis_prefix).await;
        drop(self.sink);
    }
}

/// `mpanel serve` on a fresh database with this run's secrets, the SMTP sink as its relay,
/// fast retries and heartbeats (a demo should not wait), and `JOB_SIMULATE` for `simulated`.
async fn start_panel(
    redis_prefix: &str,
    smtp_port: u16,
    simulated: &[Role],
    internal_key: &str,
) -> TestApp {
    let simulate: Vec<&str> = simulated.iter().map(|r| r.name()).collect();
    let env: Vec<(&str, String)> = vec![
        ("REDIS_KEY_PREFIX", redis_prefix.to_owned()),
        ("JWT_SECRET", secret("")),
        ("MARKETING_WEBHOOK_SECRET", internal_key.to_owned()),
        ("BACKUP_REPORT_SECRET", secret("")),
        ("STRIPE_WEBHOOK_SECRET", secret("whsec_")),
        ("SMTP_HOST", "127.0.0.1".to_owned()),
        ("SMTP_PORT", smtp_port.to_string()),
        ("SMTP_TLS", "none".to_owned()),
        ("EMAIL_FROM", "welcome@panel.demo.example".to_owned()),
        ("AGENT_HEARTBEAT_INTERVAL", "1s".to_owned()),
        ("JOB_SWEEP_INTERVAL", "200ms".to_owned()),
        ("JOB_RETRY_BASE", "200ms".to_owned()),
        ("JOB_MAX_ATTEMPTS", "20".to_owned()),
        (
            "DNS_NAMESERVERS",
            "ns1.demo.example,ns2.demo.example".to_owned(),
        ),
        ("DNS_HOSTMASTER", "hostmaster@demo.example".to_owned()),
        ("JOB_SIMULATE", simulate.join(",")),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let app = TestApp::spawn_with(&env).await;
    println!("panel: http://{} (pid {})", app.addr, app.pid());
    println!("database: {}", app.db.name);
    println!("redis prefix: {redis_prefix}");
    app
}
