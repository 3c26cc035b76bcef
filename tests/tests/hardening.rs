//! Holes an outside attack run found, each closed at the edge: NUL characters anywhere in a
//! query string, a JSON body or a Stripe event's metadata are a 400 naming the field (they
//! used to reach PostgreSQL and answer 500), and a customer's name cannot carry a line break
//! into the welcome e-mail.

use mpanel_tests::{
    TestApp,
    api::{self, anon, authed},
    selling::{
        self, deliver_event, fresh_event_id, fresh_intent, hosting_offer, intent_succeeded,
        order_body, post_order,
    },
};
use serde_json::json;
use sqlx::PgPool;

async fn rows(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn nul_characters_are_refused_naming_the_field_and_change_nothing() {
    let app = TestApp::spawn().await;
    let pool = app.db.pool().await;
    let org = api::org_with_roles(&app, "acme", &["SUPER_ADMIN"]).await;
    let root = org.super_admin().token().to_owned();
    let offer = hosting_offer(&app, &root, 1).await;

    // Query strings: public, and an operator's list.
    anon(&app)
        .get("/api/public/plans?tenant=a%00b")
        .await
        .assert_invalid_field("tenant");
    authed(&app, &root)
        .get("/api/servers?q=web%00")
        .await
        .assert_invalid_field("q");

    // JSON bodies: sign-in, the catalog, a paid order.
    anon(&app)
        .post(
            "/api/auth/login",
            &json!({"email": "root\u{0}@acme.test", "password": "x"}),
        )
        .await
        .assert_invalid_field("email");
    let mut product = selling::product_body("SHARED_HOSTING");
    product["name"] = json!("Shared\u{0}");
    authed(&app, &root)
        .post("/api/products", &product)
        .await
        .assert_invalid_field("name");
    let mut order = order_body("acme", offer.plan_slug());
    order["customer"]["fullName"] = json!("Ann\u{0}");
    post_order(&app, &order)
        .await
        .assert_invalid_field("customer.fullName");
    let mut order = order_body("acme", offer.plan_slug());
    order["metadata"]["notes"] = json!("call \u{0} me");
    post_order(&app, &order)
        .await
        .assert_invalid_field("metadata.notes");
    assert_eq!(rows(&pool, "orders").await, 0);

    // A signed Stripe event: refused before it is stored, so nothing is kept to redeliver.
    let event = intent_succeeded(
        &fresh_event_id(),
        &fresh_intent(),
        14_900,
        json!({"tenantSlug": "acme\u{0}", "planSlug": offer.plan_slug(),
               "domain": "nul.example.com", "customerEmail": "ann@example.com"}),
    );
    deliver_event(&app, &event)
        .await
        .assert_invalid_field("data.object.metadata.tenantSlug");
    assert_eq!(rows(&pool, "webhook_events").await, 0);
    assert_eq!(rows(&pool, "orders").await, 0);

    pool.close().await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_customer_name_with_a_line_break_is_refused() {
    let app = TestApp::spawn().await;
    let pool = app.db.pool().await;
    let org = api::org_with_roles(&app, "acme", &["SUPER_ADMIN"]).await;
    let offer = hosting_offer(&app, org.super_admin().token(), 1).await;

    for name in ["Ann\nBcc: mallory@example.com", "Ann\r\nX", "Ann\tLee"] {
        let mut order = order_body("acme", offer.plan_slug());
        order["customer"]["fullName"] = json!(name);
        post_order(&app, &order)
            .await
            .assert_invalid_field("customer.fullName");
    }
    let event = intent_succeeded(
        &fresh_event_id(),
        &fresh_intent(),
        14_900,
        json!({"tenantSlug": "acme", "planSlug": offer.plan_slug(), "domain": "lf.example.com",
               "customerEmail": "ann@example.com", "customerName": "Ann\nAdmin"}),
    );
    deliver_event(&app, &event)
        .await
        .assert_invalid_field("metadata.customerName");
    assert_eq!(rows(&pool, "orders").await, 0);
    assert_eq!(rows(&pool, "customers").await, 0);

    // Notes stay free text: a line break there is fine.
    let mut order = order_body("acme", offer.plan_slug());
    order["metadata"]["notes"] = json!("first line\nsecond line");
    post_order(&app, &order).await.expect(201);

    pool.close().await;
    app.cleanup().await;
}
