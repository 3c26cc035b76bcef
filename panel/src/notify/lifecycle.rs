//! What a customer is told as their subscription's lifecycle moves on: a payment failed, a
//! suspension is coming, the services are suspended, they are terminated. One e-mail per
//! notice and episode (the caller names the episode: the unpaid period's start, or the
//! lifecycle version), through the durable outbox. A tenant words each notice its own way
//! (`subscription_policies.templates`); the built-in text is used otherwise.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Queued, app_url, compose::one_line, queue};
use crate::{config::Config, secrets::Sealer, subscriptions::policy};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    PaymentFailed,
    SuspensionComing,
    Suspended,
    Terminated,
}

impl Notice {
    const ALL: [Notice; 4] = [
        Notice::PaymentFailed,
        Notice::SuspensionComing,
        Notice::Suspended,
        Notice::Terminated,
    ];

    /// The notice's name in a tenant's templates.
    pub fn key(self) -> &'static str {
        match self {
            Notice::PaymentFailed => "paymentFailed",
            Notice::SuspensionComing => "suspensionComing",
            Notice::Suspended => "suspended",
            Notice::Terminated => "terminated",
        }
    }

    pub fn from_key(key: &str) -> Option<Notice> {
        Notice::ALL.into_iter().find(|n| n.key() == key)
    }

    /// `outbound_emails.kind`.
    fn kind(self) -> &'static str {
        match self {
            Notice::PaymentFailed => "PAYMENT_FAILED",
            Notice::SuspensionComing => "SUSPENSION_COMING",
            Notice::Suspended => "SUSPENDED",
            Notice::Terminated => "TERMINATED",
        }
    }
}

/// The facts a notice may name.
#[derive(sqlx::FromRow)]
pub(super) struct Facts {
    tenant_id: Uuid,
    tenant_name: String,
    customer_email: String,
    customer_name: Option<String>,
    plan_name: String,
    domain: Option<String>,
    suspend_after: Option<DateTime<Utc>>,
    terminate_after: Option<DateTime<Utc>>,
}

/// Queues `notice` to the subscription's customer, once per `episode`; false when it was
/// queued before.
pub async fn queue_subscription_notice(
    tx: &mut PgConnection,
    sealer: &Sealer,
    config: &Config,
    subscription: Uuid,
    notice: Notice,
    episode: &str,
) -> sqlx::Result<bool> {
    let facts: Facts = sqlx::query_as(
        "SELECT s.tenant_id, t.name AS tenant_name, c.email AS customer_email,
                c.full_name AS customer_name, p.name AS plan_name, d.name AS domain,
                s.suspend_after, s.terminate_after
           FROM subscriptions s
           JOIN tenants t ON t.id = s.tenant_id
           JOIN customers c ON c.id = s.customer_id
           JOIN plans p ON p.id = s.plan_id
           LEFT JOIN domains d ON d.id = s.domain_id
          WHERE s.id = $1",
    )
    .bind(subscription)
    .fetch_one(&mut *tx)
    .await?;
    let own = policy::template(&mut *tx, facts.tenant_id, notice).await?;
    let app_url = app_url(config);
    let (subject, body) = match own {
        Some(t) => (
            one_line(&fill(&t.subject, &facts, &app_url)),
            fill(&t.body, &facts, &app_url),
        ),
        None => built_in(notice, &facts, &app_url),
    };
    queue(
        tx,
        sealer,
        Queued {
            tenant_id: facts.tenant_id,
            order_id: None,
            kind: notice.kind(),
            dedupe_key: format!("subscription:{subscription}:{}:{episode}", notice.key()),
            to: vec![facts.customer_email.clone()],
            subject,
            body: body.as_bytes(),
        },
    )
    .await
}

fn date(at: Option<DateTime<Utc>>) -> String {
    at.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| "soon".to_owned())
}

/// A tenant's template with its placeholders filled in (unknown ones are left as written).
fn fill(template: &str, f: &Facts, app_url: &str) -> String {
    let name = f.customer_name.as_deref().unwrap_or("customer");
    template
        .replace("{customerName}", &one_line(name))
        .replace("{domain}", &one_line(f.domain.as_deref().unwrap_or("")))
        .replace("{planName}", &one_line(&f.plan_name))
        .replace("{tenantName}", &one_line(&f.tenant_name))
        .replace("{suspendAt}", &date(f.suspend_after))
        .replace("{terminateAt}", &date(f.terminate_after))
        .replace("{appUrl}", app_url)
}

fn built_in(notice: Notice, f: &Facts, app_url: &str) -> (String, String) {
    let tenant = one_line(&f.tenant_name);
    let what = match &f.domain {
        Some(d) => format!("{} for {}", one_line(&f.plan_name), one_line(d)),
        None => one_line(&f.plan_name),
    };
    let hello = match &f.customer_name {
        Some(n) => format!("Hello {},", one_line(n)),
        None => "Hello,".to_owned(),
    };
    let (subject, text) = match notice {
        Notice::PaymentFailed => (
            format!("[{tenant}] Your payment for {what} failed"),
            format!(
                "We could not charge your payment for {what}.\n\n\
                 Please update your payment method. If the payment still fails, your \
                 services (website, e-mail) will be suspended on {}.",
                date(f.suspend_after)
            ),
        ),
        Notice::SuspensionComing => (
            format!(
                "[{tenant}] {what} will be suspended on {}",
                date(f.suspend_after)
            ),
            format!(
                "Your payment for {what} is still outstanding. Your website and e-mail \
                 will be suspended on {} unless the payment goes through before then.",
                date(f.suspend_after)
            ),
        ),
        Notice::Suspended => (
            format!("[{tenant}] {what} is suspended"),
            format!(
                "Your website and e-mail for {what} are suspended: the website shows a \
                 suspension page and mailboxes refuse logins (mail is still received).\n\n\
                 Nothing is deleted yet. Settle the payment, or contact us to reactivate, \
                 and everything comes back as it was."
            ),
        ),
        Notice::Terminated => (
            format!("[{tenant}] {what} has been terminated"),
            format!(
                "Your subscription for {what} has ended and its services were removed: \
                 the website, the mailboxes and, where we hosted it, the DNS zone.\n\n\
                 Contact us if you need anything from our archive."
            ),
        ),
    };
    let body = format!("{hello}\n\n{text}\n\nYour account: {app_url}\n\n{tenant}\n");
    (subject, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            tenant_id: Uuid::nil(),
            tenant_name: "MigraHosting".into(),
            customer_email: "ada@example.com".into(),
            customer_name: Some("Ada\nLovelace".into()),
            plan_name: "Starter".into(),
            domain: Some("shop.example".into()),
            suspend_after: Some("2026-12-09T10:00:00Z".parse().unwrap()),
            terminate_after: None,
        }
    }

    #[test]
    fn every_notice_has_a_key_that_round_trips() {
        for n in Notice::ALL {
            assert_eq!(Notice::from_key(n.key()), Some(n));
        }
        assert_eq!(Notice::from_key("welcome"), None);
    }

    #[test]
    fn the_built_in_texts_name_the_service_and_the_date() {
        let (subject, body) = built_in(Notice::PaymentFailed, &facts(), "https://panel.example");
        assert_eq!(
            subject,
            "[MigraHosting] Your payment for Starter for shop.example failed"
        );
        assert!(body.contains("2026-12-09 10:00 UTC"), "{body}");
        assert!(body.starts_with("Hello Ada Lovelace,"), "{body}");
        for n in Notice::ALL {
            let (subject, _) = built_in(n, &facts(), "x");
            assert!(!subject.contains('\n'));
        }
    }

    #[test]
    fn a_tenants_template_has_its_placeholders_filled() {
        let text = fill(
            "{customerName}: {domain} ({planName}) stops {suspendAt}; {unknown} {appUrl}",
            &facts(),
            "https://p",
        );
        assert_eq!(
            text,
            "Ada Lovelace: shop.example (Starter) stops 2026-12-09 10:00 UTC; {unknown} https://p"
        );
    }
}
