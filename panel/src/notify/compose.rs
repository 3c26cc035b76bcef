//! The texts of our e-mails, from facts already read: pure functions, so what a customer or
//! an operator reads is tested without a database or a relay. Plain text only.

use std::fmt::Write as _;

use zeroize::Zeroizing;

/// What a customer gets once every job of their order succeeded.
pub struct Welcome {
    pub customer_name: Option<String>,
    /// The tenant's name: who signs the e-mail.
    pub tenant_name: String,
    pub domain: Option<String>,
    pub plan_name: String,
    pub product_name: String,
    pub hosting: Option<Hosting>,
    pub mailboxes: Vec<String>,
    /// Whether we host the domain's DNS zone, and the nameservers to delegate it to.
    pub dns_zone: bool,
    pub nameservers: Vec<String>,
    pub credentials: Vec<Credential>,
    /// `APP_URL`, without a trailing slash.
    pub app_url: String,
}

pub struct Hosting {
    pub server_name: String,
    pub server_ip: String,
    pub system_user: String,
    pub home_dir: String,
    pub php_version: Option<String>,
    /// The site is served over HTTPS with a certificate of ours.
    pub https: bool,
}

/// A stashed secret for the e-mail; `secret` is `None` when it no longer opens.
pub struct Credential {
    pub kind: String,
    pub label: String,
    pub secret: Option<Zeroizing<String>>,
}

/// `text` on one line: line breaks and other control characters become spaces, so no value
/// placed in a subject, a greeting or a field line can add a line of its own.
pub(super) fn one_line(text: &str) -> String {
    text.trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Subject and body; the body may carry credentials, hence wiped when dropped.
pub fn welcome(w: &Welcome) -> (String, Zeroizing<String>) {
    let what = one_line(w.domain.as_deref().unwrap_or("your order"));
    let plan = one_line(&w.plan_name);
    let subject = format!("Your {plan} for {what} is ready");
    let mut b = Zeroizing::new(String::new());
    let greeting = match w.customer_name.as_deref().map(one_line) {
        Some(name) if !name.is_empty() => format!("Hello {name},"),
        _ => "Hello,".to_owned(),
    };
    // Writing to a String cannot fail.
    let _ = writeln!(b, "{greeting}\n");
    let _ = writeln!(
        b,
        "thank you for your order. Your {plan} plan ({})\nfor {what} is set up and ready to use.",
        one_line(&w.product_name)
    );

    if let Some(h) = &w.hosting {
        let _ = writeln!(b, "\nWebsite");
        if let Some(domain) = &w.domain {
            let scheme = if h.https { "https" } else { "http" };
            let _ = writeln!(b, "  Address:      {scheme}://{}/", one_line(domain));
        }
        let _ = writeln!(b, "  Server:       {} ({})", h.server_name, h.server_ip);
        let _ = writeln!(b, "  System user:  {}", h.system_user);
        let _ = writeln!(b, "  Home folder:  {}", h.home_dir);
        if let Some(php) = &h.php_version {
            let _ = writeln!(b, "  PHP:          {php}");
        }
    }

    if !w.mailboxes.is_empty() {
        let _ = writeln!(b, "\nE-mail");
        for mailbox in &w.mailboxes {
            let _ = writeln!(b, "  Mailbox:      {mailbox}");
        }
        if let Some(domain) = &w.domain {
            let _ = writeln!(
                b,
                "  Incoming (IMAP) and outgoing (SMTP) mail server: mail.{domain}"
            );
        }
    }

    if w.dns_zone {
        let _ = writeln!(b, "\nDNS");
        let _ = writeln!(b, "  We host the DNS zone of {what}.");
        if !w.nameservers.is_empty() {
            let _ = writeln!(
                b,
                "  If the domain is registered elsewhere, set its nameservers to:"
            );
            for ns in &w.nameservers {
                let _ = writeln!(b, "    {ns}");
            }
        }
    }

    if !w.credentials.is_empty() {
        let _ = writeln!(b, "\nYour credentials");
        for c in &w.credentials {
            let name = match c.kind.as_str() {
                "MAILBOX" => "Mailbox".to_owned(),
                "HOSTING" | "SFTP" => "Hosting login".to_owned(),
                other => other.replace('_', " ").to_lowercase(),
            };
            match &c.secret {
                Some(secret) => {
                    let _ = writeln!(b, "  {name} {}: password {}", c.label, secret.as_str());
                }
                None => {
                    let _ = writeln!(
                        b,
                        "  {name} {}: we could not include this password here;\n    \
                         please ask our support to reset it.",
                        c.label
                    );
                }
            }
        }
        // The advice speaks of the passwords the e-mail actually holds.
        let included = w.credentials.iter().filter(|c| c.secret.is_some()).count();
        let advice = match included {
            0 => None,
            1 => Some("Please change this password after your first login"),
            _ => Some("Please change these passwords after your first login"),
        };
        if let Some(advice) = advice {
            let _ = writeln!(b, "\n{advice}, and do not\nforward this e-mail.");
        }
    }

    let _ = writeln!(
        b,
        "\nQuestions? Reply to this e-mail or visit {}.\n\n{}",
        w.app_url, w.tenant_name
    );
    (subject, b)
}

/// What operators get when a job gave up.
pub struct JobFailed<'a> {
    pub tenant_name: &'a str,
    pub job_id: uuid::Uuid,
    pub job_type: &'a str,
    pub attempts: i32,
    pub error: &'a str,
    pub app_url: &'a str,
}

pub fn job_failed(j: &JobFailed<'_>) -> (String, String) {
    let tenant = one_line(j.tenant_name);
    let subject = format!("[{tenant}] Job {} failed", one_line(j.job_type));
    let body = format!(
        "A job of {tenant} failed and will not be retried.\n\n\
         \x20 Job:       {id}\n\
         \x20 Type:      {kind}\n\
         \x20 Attempts:  {attempts}\n\
         \x20 Error:     {error}\n\n\
         Details and log: {url}/jobs/{id}\n",
        id = j.job_id,
        kind = one_line(j.job_type),
        attempts = j.attempts,
        error = one_line(j.error),
        url = j.app_url,
    );
    (subject, body)
}

/// What the tenant's admins get when a site's certificate expires soon and its agent could
/// not renew it.
pub fn certificate_expiring(
    tenant_name: &str,
    c: &super::ExpiringCertificate<'_>,
    app_url: &str,
) -> (String, String) {
    let tenant = one_line(tenant_name);
    let domain = one_line(c.domain);
    let at = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M UTC").to_string();
    let subject = format!(
        "[{tenant}] The HTTPS certificate of {domain} expires {}",
        at(c.not_after)
    );
    let why = match (c.failures, c.last_error) {
        (0, _) => {
            "Its web server has not reported a renewal since it was due (is its agent offline?)."
                .to_owned()
        }
        (n, Some(e)) => format!(
            "Its web server's last {n} renewal(s) failed: {}",
            one_line(e)
        ),
        (n, None) => format!("Its web server's last {n} renewal(s) failed."),
    };
    let next = c
        .next_attempt_at
        .map(|t| format!("The web server tries again at {}.\n", at(t)))
        .unwrap_or_default();
    let body = format!(
        "The HTTPS certificate of {domain} ({tenant}) expires {expires} and was not renewed.\n\n\
         {why}\n{next}\n\
         Visitors will see a browser warning once it expires. Fix what the error names (the \
         domain's DNS must point at its web server, which must answer on port 80), then \
         re-issue the certificate from the site's page: {app_url}\n\n\
         \x20 Serial: {serial}\n",
        expires = at(c.not_after),
        serial = one_line(c.serial),
    );
    (subject, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn welcome_facts() -> Welcome {
        Welcome {
            customer_name: Some("Ada Lovelace".into()),
            tenant_name: "MigraHosting".into(),
            domain: Some("shop.example".into()),
            plan_name: "Starter".into(),
            product_name: "Shared hosting".into(),
            hosting: Some(Hosting {
                server_name: "srv1".into(),
                server_ip: "203.0.113.10".into(),
                system_user: "shopexample".into(),
                home_dir: "/home/shopexample".into(),
                php_version: Some("8.2".into()),
                https: true,
            }),
            mailboxes: vec!["info@shop.example".into()],
            dns_zone: true,
            nameservers: vec!["ns1.example.test".into(), "ns2.example.test".into()],
            credentials: vec![
                Credential {
                    kind: "MAILBOX".into(),
                    label: "info@shop.example".into(),
                    secret: Some(Zeroizing::new("s3cret-Pa55".into())),
                },
                Credential {
                    kind: "MAILBOX".into(),
                    label: "old@shop.example".into(),
                    secret: None,
                },
            ],
            app_url: "https://panel.example.com".into(),
        }
    }

    #[test]
    fn welcome_names_everything_provisioned() {
        let (subject, body) = welcome(&welcome_facts());
        assert_eq!(subject, "Your Starter for shop.example is ready");
        for part in [
            "Hello Ada Lovelace,",
            "Starter plan (Shared hosting)\nfor shop.example is set up",
            "srv1 (203.0.113.10)",
            "Address:      https://shop.example/",
            "shopexample",
            "/home/shopexample",
            "PHP:          8.2",
            "Mailbox:      info@shop.example",
            "mail.shop.example",
            "    ns1.example.test\n    ns2.example.test\n",
            "Mailbox info@shop.example: password s3cret-Pa55",
            "Mailbox old@shop.example: we could not include this password here;\n    please ask our support to reset it.",
            "https://panel.example.com",
            "\nMigraHosting\n",
        ] {
            assert!(body.contains(part), "{part:?} missing from:\n{}", *body);
        }
        assert!(!subject.contains("s3cret"));
    }

    #[test]
    fn a_bare_order_still_reads_well() {
        let (subject, body) = welcome(&Welcome {
            customer_name: None,
            domain: None,
            hosting: None,
            mailboxes: vec![],
            dns_zone: false,
            credentials: vec![],
            ..welcome_facts()
        });
        assert_eq!(subject, "Your Starter for your order is ready");
        assert!(body.starts_with("Hello,\n"), "{}", *body);
        for absent in ["Website", "E-mail\n", "DNS", "credentials", "password"] {
            assert!(!body.contains(absent), "{absent:?} in:\n{}", *body);
        }
    }

    #[test]
    fn the_password_advice_agrees_with_the_passwords_included() {
        let credential = |label: &str, secret: Option<&str>| Credential {
            kind: "MAILBOX".into(),
            label: label.into(),
            secret: secret.map(|s| Zeroizing::new(s.to_owned())),
        };
        let body_with = |credentials| {
            welcome(&Welcome {
                credentials,
                ..welcome_facts()
            })
            .1
        };

        let one = body_with(vec![credential("info@shop.example", Some("s3cret-Pa55"))]);
        assert!(
            one.contains("Please change this password after your first login"),
            "{}",
            *one
        );
        assert!(!one.contains("these passwords"), "{}", *one);

        let two = body_with(vec![
            credential("info@shop.example", Some("s3cret-Pa55")),
            credential("sales@shop.example", Some("an0ther-Pa55")),
        ]);
        assert!(
            two.contains("Please change these passwords after your first login"),
            "{}",
            *two
        );

        // One password included and one that could not be: "this password", the one shown.
        let (_, mixed) = welcome(&welcome_facts());
        assert!(mixed.contains("change this password"), "{}", *mixed);

        // None could be included: nothing to change.
        let none = body_with(vec![credential("old@shop.example", None)]);
        assert!(!none.contains("Please change"), "{}", *none);
        assert!(none.contains("please ask our support"), "{}", *none);
    }

    #[test]
    fn job_failed_links_to_the_job() {
        let id = uuid::Uuid::new_v4();
        let (subject, body) = job_failed(&JobFailed {
            tenant_name: "Acme",
            job_id: id,
            job_type: "PROVISION_DNS",
            attempts: 3,
            error: "the server's agent is offline",
            app_url: "https://panel.example.com",
        });
        assert_eq!(subject, "[Acme] Job PROVISION_DNS failed");
        assert!(body.contains(&format!("  Job:       {id}\n")), "{body}");
        assert!(body.contains("  Attempts:  3\n"), "{body}");
        assert!(body.contains("the server's agent is offline"), "{body}");
        assert!(
            body.contains(&format!("https://panel.example.com/jobs/{id}")),
            "{body}"
        );
    }

    #[test]
    fn the_certificate_warning_says_what_failed_and_what_to_do() {
        let at = chrono::DateTime::parse_from_rfc3339("2026-12-20T08:00:00Z")
            .unwrap()
            .to_utc();
        let cert = super::super::ExpiringCertificate {
            tenant_id: uuid::Uuid::nil(),
            certificate_id: uuid::Uuid::nil(),
            domain: "shop.example",
            serial: "4f2a9c",
            not_after: at,
            failures: 3,
            last_error: Some("acme_challenge_failed: shop.example:\r\nBcc: x@evil"),
            next_attempt_at: Some(at - chrono::TimeDelta::hours(6)),
        };
        let (subject, body) = certificate_expiring("MigraHosting", &cert, "https://panel.example");
        assert_eq!(
            subject,
            "[MigraHosting] The HTTPS certificate of shop.example expires 2026-12-20 08:00 UTC"
        );
        assert!(
            body.contains("last 3 renewal(s) failed: acme_challenge_failed"),
            "{body}"
        );
        assert!(!body.contains("\r\nBcc"), "one line per value: {body}");
        assert!(
            body.contains("tries again at 2026-12-20 02:00 UTC"),
            "{body}"
        );
        assert!(body.contains("https://panel.example"), "{body}");
        assert!(body.contains("4f2a9c"), "{body}");
        let silent = super::super::ExpiringCertificate {
            failures: 0,
            last_error: None,
            next_attempt_at: None,
            ..cert
        };
        let (_, body) = certificate_expiring("MigraHosting", &silent, "https://panel.example");
        assert!(body.contains("is its agent offline?"), "{body}");
    }
}
