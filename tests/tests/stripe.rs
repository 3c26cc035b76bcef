//! Stripe's webhook (spec §7.1) against the real `mpanel` process. Every event is signed here
//! exactly as Stripe signs it (HMAC-SHA256 keyed with the whole `whsec_…` secret over
//! `"{t}." + raw body`), never with the panel's own code. A `payment_intent.succeeded` event
//! becomes the same order as `POST /api/orders` would make (the intent id is the shared
//! idempotency key); tampered, stale, unsigned or wrongly signed events store nothing.

use mpanel_tests::{
    TestApp,
    api::{self},
    panel::STRIPE_SECRET,
    selling::{
        self, count_with, deliver_event, fresh_domain, fresh_email, fresh_event_id, fresh_intent,
        hosting_offer_ssl, intent_succeeded, job_ids, order_body, post_order, post_stripe,
        row_counts, str_of, stripe_header, stripe_v1,
    },
};
use serde_json::{Value, json};
use sqlx::PgPool;

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn metadata(plan_slug: &str, email: Option<&str>, domain: &str) -> Value {
    let mut m = json!({
        "tenantSlug": "home",
        "planSlug": plan_slug,
        "domain": domain,
        "customerName": "Grace Hopper",
    });
    if let Some(e) = email {
        m["customerEmail"] = json!(e);
    }
    m
}

/// (processed, order id, error) of a stored event.
async fn stored_event(
    pool: &PgPool,
    event_id: &str,
) -> Option<(bool, Option<String>, Option<String>)> {
    sqlx::query_as(
        "SELECT processed_at IS NOT NULL, order_id::text, error FROM webhook_events
          WHERE provider = 'stripe' AND event_id = $1",
    )
    .bind(event_id)
    .fetch_optional(pool)
    .await
    .unwrap()
}

async fn orders_of_intent(pool: &PgPool, intent: &str) -> i64 {
    count_with(
        pool,
        "SELECT count(*) FROM orders WHERE stripe_payment_intent_id = $1",
        intent,
    )
    .await
}

#[tokio::test]
async fn a_signed_payment_becomes_one_order() {
    let app = TestApp::spawn_with(&[("RUN_WORKER", "false")]).await;
    let org = api::org_with_roles(&app, "home", &["SUPER_ADMIN"]).await;
    let pool = app.db.pool().await;
    let offer = hosting_offer_ssl(&app, org.super_admin().token(), 5, false).await;

    let (event_id, intent) = (fresh_event_id(), fresh_intent());
    let email = fresh_email();
    let domain = fresh_domain();
    let event = intent_succeeded(
        &event_id,
        &intent,
        149,
        metadata(offer.plan_slug(), Some(&email), &domain),
    );
    let raw = serde_json::to_vec(&event).unwrap();
    let t = now();
    let signature = stripe_header(STRIPE_SECRET, t, &raw);
    let before = row_counts(&pool).await;

    let reply = post_stripe(&app, &raw, Some(&signature)).await;
    let answer = reply.expect(200);
    assert_eq!(answer["received"], true, "{answer}");
    let order_id = str_of(&answer, "orderId").to_owned();
    assert_eq!(answer["jobs"].as_array().map(Vec::len), Some(3), "{answer}");

    // The order, as POST /api/orders would have made it.
    let (status, cents, currency, customer_email, customer_name, domain_status): (
        String,
        i32,
        String,
        String,
        Option<String>,
        String,
    ) = sqlx::query_as(
        "SELECT o.status::text, o.total_amount_cents, o.currency, c.email, c.full_name,
                d.status::text
           FROM orders o JOIN customers c ON c.id = o.customer_id
           JOIN subscriptions s ON s.order_id = o.id JOIN domains d ON d.id = s.domain_id
          WHERE o.id = $1::uuid AND o.stripe_payment_intent_id = $2 AND d.name = $3",
    )
    .bind(&order_id)
    .bind(&intent)
    .bind(&domain)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(status, "PAID");
    assert_eq!(cents, 149);
    assert_eq!(currency, "usd");
    assert_eq!(customer_email, email);
    assert_eq!(customer_name.as_deref(), Some("Grace Hopper"));
    assert_eq!(domain_status, "PENDING_SETUP");
    assert_eq!(
        row_counts(&pool).await,
        selling::plus(
            &before,
            &[
                ("customers", 1),
                ("orders", 1),
                ("subscriptions", 1),
                ("domains", 1),
                ("jobs", 3),
                ("job_logs", 3),
                ("audit_logs", 1),
                ("webhook_events", 1),
            ]
        )
    );
    assert_eq!(
        stored_event(&pool, &event_id).await,
        Some((true, Some(order_id.clone()), None))
    );
    assert_eq!(
        selling::audit_count(&pool, "order.create", Some(("orderId", &order_id))).await,
        1
    );
    let counted = row_counts(&pool).await;

    // Stripe delivers the same event again (same bytes and signature, and re-signed later).
    for sig in [signature.clone(), stripe_header(STRIPE_SECRET, now(), &raw)] {
        let again = post_stripe(&app, &raw, Some(&sig)).await.expect(200);
        assert_eq!(again["received"], true, "{again}");
        assert_eq!(again["duplicate"], true, "{again}");
        assert_eq!(again["orderId"], order_id.as_str(), "{again}");
        assert_eq!(row_counts(&pool).await, counted);
    }

    // The marketing backend reports the same payment: the same order, nothing new.
    let mut body = order_body("home", offer.plan_slug());
    body["stripePaymentIntentId"] = json!(intent);
    body["customer"]["email"] = json!(email);
    body["metadata"]["domain"] = json!(domain);
    let via_api = post_order(&app, &body).await.expect(200);
    assert_eq!(via_api["orderId"], order_id.as_str(), "{via_api}");
    assert_eq!(job_ids(&via_api), job_ids(&answer));
    assert_eq!(row_counts(&pool).await, counted);

    // Another event about the same intent (Stripe may send more than one): still one order.
    let other_event = intent_succeeded(
        &fresh_event_id(),
        &intent,
        149,
        metadata(offer.plan_slug(), Some(&email), &domain),
    );
    let reply = deliver_event(&app, &other_event).await.expect(200);
    assert_eq!(reply["orderId"], order_id.as_str(), "{reply}");
    assert_eq!(orders_of_intent(&pool, &intent).await, 1);

    // And the other way round: an order first through the API, then Stripe's event.
    let first = selling::place_order(&app, &order_body("home", offer.plan_slug())).await;
    let api_order_id = selling::str_of(&first, "orderId").to_owned();
    let api_pi: String =
        sqlx::query_scalar("SELECT stripe_payment_intent_id FROM orders WHERE id = $1::uuid")
            .bind(&api_order_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    let late = intent_succeeded(
        &fresh_event_id(),
        &api_pi,
        149,
        metadata(offer.plan_slug(), Some(&fresh_email()), &fresh_domain()),
    );
    let reply = deliver_event(&app, &late).await.expect(200);
    assert_eq!(reply["orderId"], api_order_id.as_str(), "{reply}");
    assert_eq!(orders_of_intent(&pool, &api_pi).await, 1);

    pool.close().await;
    app.cleanup().await;
}

#[tokio::test]
async fn receipt_email_and_several_signatures() {
    let app = TestApp::spawn_with(&[("RUN_WORKER", "false")]).await;
    let org = api::org_with_roles(&app, "home", &["SUPER_ADMIN"]).await;
    let pool = app.db.pool().await;
    let offer = hosting_offer_ssl(&app, org.super_admin().token(), 0, false).await;

    // No customerEmail in the metadata: receipt_email is the customer's e-mail.
    let receipt = fresh_email();
    let intent = fresh_intent();
    let mut event = intent_succeeded(
        &fresh_event_id(),
        &intent,
        149,
        metadata(offer.plan_slug(), None, &fresh_domain()),
    );
    event["data"]["object"]["receipt_email"] = json!(receipt);
    let answer = deliver_event(&app, &event).await.expect(200);
    let email: String = sqlx::query_scalar(
        "SELECT c.email FROM orders o JOIN customers c ON c.id = o.customer_id
          WHERE o.id = $1::uuid AND o.stripe_payment_intent_id = $2",
    )
    .bind(str_of(&answer, "orderId"))
    .bind(&intent)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(email, receipt);

    // Several v1 values (Stripe sends one per secret while a secret is rolled): any valid
    // one is enough, wherever it stands.
    for position in ["last", "first"] {
        let intent = fresh_intent();
        let event = intent_succeeded(
            &fresh_event_id(),
            &intent,
            149,
            metadata(offer.plan_slug(), Some(&fresh_email()), &fresh_domain()),
        );
        let raw = serde_json::to_vec(&event).unwrap();
        let t = now();
        let good = stripe_v1(STRIPE_SECRET, t, &raw);
        let old = stripe_v1("whsec_previous_secret", t, &raw);
        let header = match position {
            "last" => format!("t={t},v1={old},v0=ignored,v1={good}"),
            _ => format!("t={t},v1={good},v1={}", "0".repeat(64)),
        };
        let reply = post_stripe(&app, &raw, Some(&header)).await;
        assert_eq!(reply.status, 200, "valid v1 {position}: {reply:?}");
        assert_eq!(orders_of_intent(&pool, &intent).await, 1, "{position}");
    }

    pool.close().await;
    app.cleanup().await;
}

#[tokio::test]
async fn bad_signatures_store_nothing() {
    let app = TestApp::spawn_with(&[("RUN_WORKER", "false")]).await;
    let org = api::org_with_roles(&app, "home", &["SUPER_ADMIN"]).await;
    let pool = app.db.pool().await;
    let offer = hosting_offer_ssl(&app, org.super_admin().token(), 5, false).await;

    let intent = fresh_intent();
    let event = intent_succeeded(
        &fresh_event_id(),
        &intent,
        149,
        metadata(offer.plan_slug(), Some(&fresh_email()), &fresh_domain()),
    );
    let raw = serde_json::to_vec(&event).unwrap();
    let t = now();
    // The same event with one byte of difference: a lower amount.
    let tampered_raw = String::from_utf8(raw.clone())
        .unwrap()
        .replace("\"amount_received\":149", "\"amount_received\":1")
        .into_bytes();
    assert_ne!(tampered_raw, raw);
    let good_v1 = stripe_v1(STRIPE_SECRET, t, &raw);

    let cases: Vec<(&str, Vec<u8>, Option<String>)> = vec![
        (
            "tampered body",
            tampered_raw.clone(),
            Some(stripe_header(STRIPE_SECRET, t, &raw)),
        ),
        (
            "wrong secret",
            raw.clone(),
            Some(stripe_header("whsec_someone_else", t, &raw)),
        ),
        ("missing header", raw.clone(), None),
        (
            "timestamp 301 s old",
            raw.clone(),
            Some(stripe_header(STRIPE_SECRET, now() - 301, &raw)),
        ),
        (
            "timestamp an hour old",
            raw.clone(),
            Some(stripe_header(STRIPE_SECRET, now() - 3600, &raw)),
        ),
        (
            "signature moved to another timestamp",
            raw.clone(),
            Some(format!("t={},v1={good_v1}", t + 1)),
        ),
        ("no timestamp", raw.clone(), Some(format!("v1={good_v1}"))),
        ("v0 only", raw.clone(), Some(format!("t={t},v0={good_v1}"))),
        (
            "the secret without its whsec_ prefix",
            raw.clone(),
            Some(stripe_header(
                STRIPE_SECRET.trim_start_matches("whsec_"),
                t,
                &raw,
            )),
        ),
        ("empty header", raw.clone(), Some(String::new())),
    ];

    let before = row_counts(&pool).await;
    let mut mismatches = Vec::new();
    for (what, body, header) in &cases {
        let reply = post_stripe(&app, body, header.as_deref()).await;
        if reply.status != 400 || reply.code() != "validation_failed" {
            mismatches.push(format!(
                "{what}: expected 400, got {} {}",
                reply.status, reply.body
            ));
        }
        let now = row_counts(&pool).await;
        if now != before {
            mismatches.push(format!("{what}: stored rows: {before:?} -> {now:?}"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert_eq!(
        selling::count(&pool, "SELECT count(*) FROM webhook_events").await,
        0
    );
    assert_eq!(orders_of_intent(&pool, &intent).await, 0);

    // The untouched event with its real signature still goes through.
    let reply = post_stripe(&app, &raw, Some(&stripe_header(STRIPE_SECRET, t, &raw))).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(orders_of_intent(&pool, &intent).await, 1);

    pool.close().await;
    app.cleanup().await;
}

#[tokio::test]
async fn other_events_are_acknowledged_and_ignored() {
    let app = TestApp::spawn_with(&[("RUN_WORKER", "false")]).await;
    let org = api::org_with_roles(&app, "home", &["SUPER_ADMIN"]).await;
    let pool = app.db.pool().await;
    let offer = hosting_offer_ssl(&app, org.super_admin().token(), 0, false).await;

    let before = row_counts(&pool).await;
    for kind in [
        "payment_intent.created",
        "payment_intent.payment_failed",
        "charge.refunded",
        "customer.created",
    ] {
        let mut event = intent_succeeded(
            &fresh_event_id(),
            &fresh_intent(),
            149,
            metadata(offer.plan_slug(), Some(&fresh_email()), &fresh_domain()),
        );
        event["type"] = json!(kind);
        let reply = deliver_event(&app, &event).await;
        let body = reply.expect(200);
        assert_eq!(body["received"], true, "{kind}: {body}");
        assert_eq!(body["ignored"], true, "{kind}: {body}");
        assert!(
            body.get("orderId").is_none_or(Value::is_null),
            "{kind}: {body}"
        );
    }
    let after = row_counts(&pool).await;
    for table in [
        "customers",
        "orders",
        "subscriptions",
        "domains",
        "jobs",
        "audit_logs",
    ] {
        assert_eq!(after[table], before[table], "{table}");
    }

    pool.close().await;
    app.cleanup().await;
}

#[tokio::test]
async fn an_event_for_an_unknown_plan_is_kept_and_redelivered() {
    let app = TestApp::spawn_with(&[("RUN_WORKER", "false")]).await;
    let org = api::org_with_roles(&app, "home", &["SUPER_ADMIN"]).await;
    let root = org.super_admin().token().to_owned();
    let pool = app.db.pool().await;

    let (event_id, intent) = (fresh_event_id(), fresh_intent());
    let event = intent_succeeded(
        &event_id,
        &intent,
        149,
        metadata("launch-plan", Some(&fresh_email()), &fresh_domain()),
    );
    let before = row_counts(&pool).await;
    let reply = deliver_event(&app, &event).await;
    reply.assert_error(422, "unprocessable_entity");
    assert_eq!(
        reply.body["error"]["details"]["field"], "planSlug",
        "{reply:?}"
    );
    let (processed, order, error) = stored_event(&pool, &event_id)
        .await
        .expect("the event is kept for a later delivery");
    assert!(!processed, "processed_at stays NULL");
    assert_eq!(order, None);
    assert!(error.as_deref().is_some_and(|e| !e.is_empty()), "{error:?}");
    let after = row_counts(&pool).await;
    assert_eq!(after, selling::plus(&before, &[("webhook_events", 1)]));

    // The catalog is fixed; Stripe retries the same event: now it becomes the order.
    let product = selling::create_product(&app, &root, "SHARED_HOSTING").await;
    selling::create_plan(
        &app,
        &root,
        &selling::plan_body(str_of(&product, "id"), "launch-plan", json!({"emails": 1})),
    )
    .await;
    let answer = deliver_event(&app, &event).await.expect(200);
    let order_id = str_of(&answer, "orderId").to_owned();
    assert_eq!(orders_of_intent(&pool, &intent).await, 1);
    let (processed, order, _) = stored_event(&pool, &event_id).await.unwrap();
    assert!(processed);
    assert_eq!(order.as_deref(), Some(order_id.as_str()));
    assert_eq!(
        selling::count(&pool, "SELECT count(*) FROM webhook_events").await,
        1,
        "stored once"
    );
    let again = deliver_event(&app, &event).await.expect(200);
    assert_eq!(again["duplicate"], true);
    assert_eq!(orders_of_intent(&pool, &intent).await, 1);

    pool.close().await;
    app.cleanup().await;
}

/// Twenty copies of one event at the same moment (Stripe retrying while the first is still
/// being handled): exactly one answers `duplicate: false` with the order and its jobs, the
/// nineteen others `duplicate: true`, every one names the same order, and one order exists.
#[tokio::test]
async fn twenty_concurrent_deliveries_of_one_event_agree() {
    let app = TestApp::spawn_with(&[("RUN_WORKER", "false")]).await;
    let org = api::org_with_roles(&app, "home", &["SUPER_ADMIN"]).await;
    let pool = app.db.pool().await;
    let offer = hosting_offer_ssl(&app, org.super_admin().token(), 5, false).await;

    let (event_id, intent) = (fresh_event_id(), fresh_intent());
    let event = intent_succeeded(
        &event_id,
        &intent,
        149,
        metadata(offer.plan_slug(), Some(&fresh_email()), &fresh_domain()),
    );
    let raw = std::sync::Arc::new(serde_json::to_vec(&event).unwrap());
    let signature = std::sync::Arc::new(stripe_header(STRIPE_SECRET, now(), &raw));
    let app = std::sync::Arc::new(app);
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(20));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (app, raw, signature, barrier) =
            (app.clone(), raw.clone(), signature.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            post_stripe(&app, &raw, Some(&signature)).await
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap().expect(200));
    }

    let firsts: Vec<&Value> = answers.iter().filter(|a| a["duplicate"] == false).collect();
    assert_eq!(firsts.len(), 1, "exactly one first delivery: {answers:?}");
    let order_id = str_of(firsts[0], "orderId").to_owned();
    assert_eq!(
        firsts[0]["jobs"].as_array().map(Vec::len),
        Some(3),
        "{}",
        firsts[0]
    );
    for answer in &answers {
        assert_eq!(answer["received"], true, "{answer}");
        assert_eq!(answer["orderId"], order_id.as_str(), "{answer}");
        if answer["duplicate"] != false {
            assert_eq!(answer["duplicate"], true, "{answer}");
        }
    }
    assert_eq!(orders_of_intent(&pool, &intent).await, 1);
    assert_eq!(
        stored_event(&pool, &event_id).await,
        Some((true, Some(order_id.clone()), None))
    );

    // A later delivery says the same as the nineteen.
    let later = deliver_event(&app, &event).await.expect(200);
    assert_eq!(later["duplicate"], true, "{later}");
    assert_eq!(later["orderId"], order_id.as_str(), "{later}");

    pool.close().await;
    let app = std::sync::Arc::into_inner(app).expect("every delivery has finished");
    app.cleanup().await;
}
