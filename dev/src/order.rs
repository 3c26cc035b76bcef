//! The demo's tenant, operator, catalog and sample paid order, all made the way they are in
//! production: `mpanel create-admin`, the admin API, and `POST /api/orders` from the
//! "marketing site" with the internal key; and the order's site certificate as the API shows
//! it.

use anyhow::bail;
use mpanel_tests::{
    TestApp,
    api::{authed, login},
    selling::{Key, hosting_offer_ssl, post_order_with},
};
use serde_json::{Value, json};

pub const TENANT: &str = "demo";
pub const OPERATOR: &str = "admin@demo.example";
pub const CUSTOMER: &str = "owner@customer.example";
/// Ordered once per run, in sandboxes of its own: it need not be unique.
pub const DOMAIN: &str = "demo-shop.example";
/// The mailbox the plan includes (the order's first: info@).
pub const MAILBOX: &str = "info@demo-shop.example";

/// The demo's SUPER_ADMIN: its password and a session token.
pub struct Operator {
    pub password: String,
    pub token: String,
}

/// Creates the tenant and its operator with a random password, and signs in.
pub async fn operator(app: &TestApp) -> Operator {
    let password = crate::demo::secret("demo-")[..29].to_owned();
    let created = app
        .create_admin(TENANT, OPERATOR, "SUPER_ADMIN", &password)
        .await;
    let token = login(app, OPERATOR, &password).await.token;
    println!(
        "tenant {TENANT} and operator {OPERATOR} (SUPER_ADMIN) created (tenant id {})",
        created["tenantId"].as_str().unwrap_or("?")
    );
    Operator { password, token }
}

/// The sample order: its subscription and its jobs as (type, id).
pub struct Placed {
    pub subscription_id: String,
    pub jobs: Vec<(String, String)>,
}

/// The demo tenant's lifecycle policy: minutes instead of days, so that a failed payment
/// suspends the site while one watches.
pub const GRACE_SECS: u32 = 60;

/// A shared-hosting product and plan with one mailbox, and HTTPS if `ssl` (said either way:
/// a plan that does not say gets HTTPS), then a paid order for it.
pub async fn place(
    app: &TestApp,
    admin: &str,
    internal_key: &str,
    ssl: bool,
) -> anyhow::Result<Placed> {
    let policy = authed(app, admin)
        .put(
            "/api/subscriptions/policy",
            &json!({ "gracePeriodSecs": GRACE_SECS, "warningSecs": GRACE_SECS / 2,
                     "retentionSecs": 600, "keepZoneOnTermination": false }),
        )
        .await;
    if policy.status != 200 {
        bail!(
            "the demo's lifecycle policy was refused: {} {}",
            policy.status,
            policy.body
        );
    }
    println!(
        "lifecycle policy: suspended {GRACE_SECS} s after a failed payment, terminated 600 s \
         after a cancellation (PUT /api/subscriptions/policy)"
    );
    let offer = hosting_offer_ssl(app, admin, 1, ssl).await;
    println!(
        "catalog: product {} (SHARED_HOSTING), plan {} at 1.49 usd a month with 1 mailbox, {}",
        offer.product["slug"].as_str().unwrap_or("?"),
        offer.plan_slug(),
        if ssl { "and HTTPS" } else { "on HTTP only" }
    );
    let placed = post_order_with(
        app,
        Key::Header(internal_key),
        &json!({
            "tenantSlug": TENANT,
            "customer": { "email": CUSTOMER, "fullName": "Demo Customer" },
            "planSlug": offer.plan_slug(),
            "totalAmountCents": 149,
            "currency": "usd",
            "stripePaymentIntentId": format!("pi_demo_{}", uuid::Uuid::new_v4().simple()),
            "metadata": { "domain": DOMAIN },
        }),
    )
    .await;
    if placed.status != 201 {
        bail!(
            "the sample order was refused: {} {}",
            placed.status,
            placed.body
        );
    }
    println!(
        "order: {} paid by {CUSTOMER} for {DOMAIN} (POST /api/orders with the internal key)",
        placed.body["orderId"].as_str().unwrap_or("?")
    );
    let jobs = placed.body["jobs"]
        .as_array()
        .map(|jobs| {
            jobs.iter()
                .filter_map(|j| {
                    Some((j["type"].as_str()?.to_owned(), j["id"].as_str()?.to_owned()))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Placed {
        subscription_id: placed.body["subscriptionId"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        jobs,
    })
}

/// The order's site certificate, as `GET /api/hosting/accounts/{id}` shows it.
pub struct Certificate {
    pub account_id: String,
    /// The account's `ssl`: status, issuer, names, notAfter, renewAt, lastError …
    pub ssl: Value,
}

impl Certificate {
    /// One line: its status, issuer, names and validity, or why it failed.
    pub fn describe(&self) -> String {
        let ssl = &self.ssl;
        let text = |key: &str| ssl[key].as_str().unwrap_or("?").to_owned();
        let names: Vec<&str> = ssl["names"]
            .as_array()
            .map(|names| names.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut line = format!(
            "{}, issued by {} for {}, valid until {} (its agent renews it from {})",
            text("status"),
            text("issuer"),
            names.join(" "),
            text("notAfter"),
            text("renewAt")
        );
        if let Some(error) = ssl["lastError"].as_str() {
            line.push_str(&format!(" — last error: {error}"));
        }
        line
    }
}

/// The sample site's hosting account and its certificate.
pub async fn certificate(app: &TestApp, admin: &str) -> anyhow::Result<Certificate> {
    let accounts = authed(app, admin)
        .get(&format!("/api/hosting/accounts?domain={DOMAIN}"))
        .await;
    let Some(account_id) = accounts.body["items"][0]["id"].as_str() else {
        bail!(
            "no hosting account for {DOMAIN}: {} {}",
            accounts.status,
            accounts.body
        );
    };
    let account = authed(app, admin)
        .get(&format!("/api/hosting/accounts/{account_id}"))
        .await;
    if account.status != 200 || !account.body["ssl"].is_object() {
        bail!(
            "the hosting account of {DOMAIN} shows no certificate: {} {}",
            account.status,
            account.body
        );
    }
    Ok(Certificate {
        account_id: account_id.to_owned(),
        ssl: account.body["ssl"].clone(),
    })
}
