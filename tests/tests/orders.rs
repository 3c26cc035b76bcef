//! Paid orders from the marketing backend (spec §6.3, §7.1) against the real `mpanel`
//! process: exactly the right rows in one transaction, idempotency (also under 50 concurrent
//! deliveries), bad input that writes nothing, and the operators' side — orders, subscriptions
//! and customers with their RBAC, status rules and audit rows, and the sweeper that ends
//! subscriptions at their period's end.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use mpanel_tests::{
    TestApp,
    api::{self, authed, unique},
    panel::INTERNAL_KEY,
    selling::{
        self, INTERNAL, Key, count_with, create_plan, create_product, fresh_email, hosting_offer,
        hosting_offer_ssl, job_ids, order_body, place_order, plan_body, post_order,
        post_order_with, row_counts, str_of,
    },
    wait_for,
};
use serde_json::{Value, json};
use sqlx::PgPool;

/// One order's rows, read back with SQL.
#[derive(Debug)]
struct OrderRow {
    tenant_id: uuid::Uuid,
    customer_id: uuid::Uuid,
    plan_id: uuid::Uuid,
    status: String,
    total_amount_cents: i32,
    currency: String,
    stripe_payment_intent_id: Option<String>,
    external_order_id: Option<String>,
    notes: Option<String>,
}

type OrderTuple = (
    uuid::Uuid,
    uuid::Uuid,
    uuid::Uuid,
    String,
    i32,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

async fn order_row(pool: &PgPool, id: &str) -> OrderRow {
    let row: OrderTuple = sqlx::query_as(
        "SELECT tenant_id, customer_id, plan_id, status::text, total_amount_cents, currency,
                stripe_payment_intent_id, external_order_id, notes
           FROM orders WHERE id = $1::uuid",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap();
    OrderRow {
        tenant_id: row.0,
        customer_id: row.1,
        plan_id: row.2,
        status: row.3,
        total_amount_cents: row.4,
        currency: row.5,
        stripe_payment_intent_id: row.6,
        external_order_id: row.7,
        notes: row.8,
    }
}

#[tokio::test]
async fn an_order_creates_exactly_the_right_rows_once() {
    // No worker: the jobs stay exactly as the order made them.
    let app = TestApp::spawn_with(&[("RUN_WORKER", "false")]).await;
    let org = api::org_with_roles(&app, "home", &["SUPER_ADMIN"]).await;
    let root = org.super_admin().token().to_owned();
    let pool = app.db.pool().await;
    let with_mail = hosting_offer(&app, &root, 5).await;

    let before = row_counts(&pool).await;
    let mut body = order_body("home", with_mail.plan_slug());
    body["customer"]["email"] = json!("Client.Name@Example.COM");
    let reply = post_order(&app, &body).await;
    let placed = reply.expect(201);
    let order_id = str_of(&placed, "orderId").to_owned();
    let subscription_id = str_of(&placed, "subscriptionId").to_owned();
    let types: Vec<&str> = placed["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| str_of(j, "type"))
        .collect();
    assert_eq!(
        types.iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from(["PROVISION_DNS", "PROVISION_HOSTING", "PROVISION_MAIL"]),
        "{placed}"
    );
    assert_eq!(
        types.len(),
        4,
        "zone, site, mailbox and (HTTPS by default) certificate: {placed}"
    );

    // Exactly: 1 customer, 1 order, 1 subscription, 1 domain, 4 jobs with a "created" log
    // each, 1 audit row.
    let after = row_counts(&pool).await;
    assert_eq!(
        after,
        selling::plus(
            &before,
            &[
                ("customers", 1),
                ("orders", 1),
                ("subscriptions", 1),
                ("domains", 1),
                ("jobs", 4),
                ("job_logs", 4),
                ("audit_logs", 1),
            ]
        )
    );

    let order = order_row(&pool, &order_id).await;
    assert_eq!(order.tenant_id.to_string(), org.tenant_id);
    assert_eq!(order.plan_id.to_string(), with_mail.plan_id());
    assert_eq!(order.status, "PAID");
    assert_eq!(order.total_amount_cents, 149);
    assert_eq!(order.currency, "usd");
    assert_eq!(
        order.stripe_payment_intent_id.as_deref(),
        body["stripePaymentIntentId"].as_str()
    );
    assert_eq!(order.external_order_id, None);
    assert!(order.notes.is_some(), "metadata.notes kept: {order:?}");

    let (email, name, phone, tenant): (String, Option<String>, Option<String>, uuid::Uuid) =
        sqlx::query_as("SELECT email, full_name, phone, tenant_id FROM customers WHERE id = $1")
            .bind(order.customer_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(email, "client.name@example.com", "e-mail stored lowercase");
    assert_eq!(name.as_deref(), Some("Client Name"));
    assert_eq!(phone.as_deref(), Some("+1 555 0100"));
    assert_eq!(tenant.to_string(), org.tenant_id);

    let (status, customer, plan, one_month, domain_id): (
        String,
        uuid::Uuid,
        uuid::Uuid,
        bool,
        Option<uuid::Uuid>,
    ) = sqlx::query_as(
        "SELECT status::text, customer_id, plan_id,
                current_period_end = current_period_start + interval '1 month'
                  AND current_period_start = started_at
                  AND abs(extract(epoch FROM now() - started_at)) < 120,
                domain_id
           FROM subscriptions WHERE id = $1::uuid AND order_id = $2::uuid",
    )
    .bind(&subscription_id)
    .bind(&order_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(status, "ACTIVE");
    assert_eq!(customer, order.customer_id);
    assert_eq!(plan, order.plan_id);
    assert!(
        one_month,
        "a MONTHLY plan's period ends one month after it starts"
    );

    let (d_status, d_customer, d_tenant, d_id): (
        String,
        Option<uuid::Uuid>,
        uuid::Uuid,
        uuid::Uuid,
    ) = sqlx::query_as(
        "SELECT status::text, customer_id, tenant_id, id FROM domains WHERE name = $1",
    )
    .bind(body["metadata"]["domain"].as_str().unwrap())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(d_status, "PENDING_SETUP");
    assert_eq!(d_customer, Some(order.customer_id));
    assert_eq!(d_tenant.to_string(), org.tenant_id);
    assert_eq!(
        domain_id,
        Some(d_id),
        "the subscription points at the domain"
    );

    let jobs = selling::jobs_of_order(&pool, &order_id).await;
    assert_eq!(
        jobs.iter().map(|j| j.id.to_string()).collect::<Vec<_>>(),
        job_ids(&placed)
    );
    for job in &jobs {
        assert_eq!(job.status, "PENDING", "{job:?}");
        assert_eq!(job.attempts, 0, "{job:?}");
        let log = selling::job_log(&pool, job.id).await;
        assert_eq!(
            log,
            [(None, "PENDING".to_owned(), "created".to_owned())],
            "{job:?}"
        );
    }
    assert_eq!(
        selling::audit_count(&pool, "order.create", Some(("orderId", &order_id))).await,
        1
    );

    // The same payment again: 200, the same ids, nothing written — with either key form.
    for key in [INTERNAL, Key::Bearer(INTERNAL_KEY)] {
        let again = post_order_with(&app, key, &body).await.expect(200);
        assert_eq!(again, placed, "{key:?}");
        assert_eq!(row_counts(&pool).await, after, "{key:?}");
    }

    // The same customer buys again (no mail this time): the customer is found, not made; two
    // jobs only.
    let no_mail = hosting_offer_ssl(&app, &root, 0, false).await;
    let after = row_counts(&pool).await;
    let mut second = order_body("home", no_mail.plan_slug());
    second["customer"]["email"] = json!("client.name@example.com");
    second["customer"]["fullName"] = json!("Someone Else");
    let placed2 = place_order(&app, &second).await;
    let types: BTreeSet<&str> = placed2["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| str_of(j, "type"))
        .collect();
    assert_eq!(
        types,
        BTreeSet::from(["PROVISION_DNS", "PROVISION_HOSTING"]),
        "no mail job when the plan has no mailboxes, no certificate when it says ssl: false"
    );
    assert_eq!(
        row_counts(&pool).await,
        selling::plus(
            &after,
            &[
                ("orders", 1),
                ("subscriptions", 1),
                ("domains", 1),
                ("jobs", 2),
                ("job_logs", 2),
                ("audit_logs", 1),
            ]
        ),
        "no second customer"
    );
    let order2 = order_row(&pool, str_of(&placed2, "orderId")).await;
    assert_eq!(order2.customer_id, order.customer_id);

    // An order identified by the marketing site's own id only; YEARLY plan: 12 months.
    let product = create_product(&app, &root, "SHARED_HOSTING").await;
    let mut yearly = plan_body(str_of(&product, "id"), "yearly", json!({"emails": 1}));
    yearly["billingInterval"] = json!("YEARLY");
    create_plan(&app, &root, &yearly).await;
    let mut third = order_body("home", "yearly");
    third
        .as_object_mut()
        .unwrap()
        .remove("stripePaymentIntentId");
    third["externalOrderId"] = json!(unique("mk-order"));
    third["totalAmountCents"] = json!(1490);
    let placed3 = place_order(&app, &third).await;
    let twelve: bool = sqlx::query_scalar(
        "SELECT current_period_end = current_period_start + interval '12 months'
           FROM subscriptions WHERE id = $1::uuid",
    )
    .bind(str_of(&placed3, "subscriptionId"))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        twelve,
        "a YEARLY plan's period ends twelve months after it starts"
    );
    let order3 = order_row(&pool, str_of(&placed3, "orderId")).await;
    assert_eq!(
        order3.external_order_id.as_deref(),
        third["externalOrderId"].as_str()
    );
    assert_eq!(order3.stripe_payment_intent_id, None);
    let counted = row_counts(&pool).await;
    let mut again = third.clone();
    again["customer"]["email"] = json!(fresh_email());
    let replay = post_order(&app, &again).await.expect(200);
    assert_eq!(
        replay, placed3,
        "the same externalOrderId is the same order"
    );
    assert_eq!(row_counts(&pool).await, counted);

    pool.close().await;
    app.cleanup().await;
}

/// (what, body, expected status, expected details.field)
type BadCase = (&'static str, Value, u16, Option<&'static str>);

#[tokio::test]
async fn bad_orders_write_nothing() {
    let app = TestApp::spawn_with(&[("RUN_WORKER", "false")]).await;
    let org = api::org_with_roles(&app, "home", &["SUPER_ADMIN"]).await;
    let root = org.super_admin().token().to_owned();
    let pool = app.db.pool().await;
    let offer = hosting_offer(&app, &root, 5).await;
    let slug = offer.plan_slug().to_owned();
    // A deactivated plan is no longer for sale.
    let retired = hosting_offer(&app, &root, 5).await;
    let reply = authed(&app, &root)
        .delete(&format!("/api/plans/{}", retired.plan_id()))
        .await;
    assert_eq!(reply.status, 204);
    // A domain that already belongs to a customer.
    let taken = place_order(&app, &order_body("home", &slug)).await;
    let taken_domain: String = sqlx::query_scalar(
        "SELECT d.name FROM domains d JOIN orders o ON o.customer_id = d.customer_id
          WHERE o.id = $1::uuid",
    )
    .bind(str_of(&taken, "orderId"))
    .fetch_one(&pool)
    .await
    .unwrap();

    let with = |f: &dyn Fn(&mut Value)| {
        let mut b = order_body("home", &slug);
        f(&mut b);
        b
    };
    let cases: Vec<BadCase> = vec![
        (
            "unknown tenant",
            with(&|b| b["tenantSlug"] = json!("nobody")),
            422,
            Some("tenantSlug"),
        ),
        (
            "unknown plan",
            with(&|b| b["planSlug"] = json!("no-such-plan")),
            422,
            Some("planSlug"),
        ),
        (
            "deactivated plan",
            with(&|b| b["planSlug"] = json!(retired.plan_slug())),
            422,
            Some("planSlug"),
        ),
        (
            "invalid e-mail",
            with(&|b| b["customer"]["email"] = json!("not-an-email")),
            400,
            Some("customer.email"),
        ),
        (
            "shell in the domain",
            with(&|b| b["metadata"]["domain"] = json!("a.com;rm -rf /")),
            400,
            Some("metadata.domain"),
        ),
        (
            "path in the domain",
            with(&|b| b["metadata"]["domain"] = json!("../etc")),
            400,
            Some("metadata.domain"),
        ),
        (
            "look-alike domain (Cyrillic а)",
            with(&|b| b["metadata"]["domain"] = json!("ex\u{0430}mple.com")),
            400,
            Some("metadata.domain"),
        ),
        (
            "negative amount",
            with(&|b| b["totalAmountCents"] = json!(-149)),
            400,
            Some("totalAmountCents"),
        ),
        (
            "unknown currency",
            with(&|b| b["currency"] = json!("xyz")),
            400,
            Some("currency"),
        ),
        (
            "currency other than the plan's",
            with(&|b| b["currency"] = json!("eur")),
            422,
            Some("currency"),
        ),
        (
            "no payment reference",
            with(&|b| {
                b.as_object_mut().unwrap().remove("stripePaymentIntentId");
            }),
            400,
            None,
        ),
        (
            "domain of another customer",
            with(&|b| b["metadata"]["domain"] = json!(taken_domain.clone())),
            409,
            None,
        ),
    ];

    let before = row_counts(&pool).await;
    let mut mismatches = Vec::new();
    for (what, body, status, field) in &cases {
        let reply = post_order(&app, body).await;
        let right_status = reply.status == *status;
        let right_field = field.is_none_or(|f| reply.body["error"]["details"]["field"] == f);
        if !right_status || !right_field {
            mismatches.push(format!(
                "{what}: expected {status} field {field:?}, got {} {}",
                reply.status, reply.body
            ));
        }
        let now = row_counts(&pool).await;
        if now != before {
            mismatches.push(format!("{what}: wrote rows: {before:?} -> {now:?}"));
        }
    }

    // Without the key, or with a wrong one: 401, nothing written.
    let good = order_body("home", &slug);
    for (what, key) in [
        ("no key", Key::None),
        ("wrong key", Key::Header("not-the-key")),
        ("wrong bearer", Key::Bearer("not-the-key")),
        (
            "key with a suffix",
            Key::Header(&format!("{INTERNAL_KEY}x")),
        ),
    ] {
        let reply = post_order_with(&app, key, &good).await;
        if reply.status != 401 || reply.code() != "unauthorized" {
            mismatches.push(format!(
                "{what}: expected 401, got {} {}",
                reply.status, reply.body
            ));
        }
    }
    assert_eq!(row_counts(&pool).await, before);
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );

    // The good order still goes through afterwards.
    place_order(&app, &good).await;

    pool.close().await;
    app.cleanup().await;
}

#[tokio::test]
async fn fifty_concurrent_deliveries_make_one_order() {
    let app = TestApp::spawn_with(&[("RUN_WORKER", "false")]).await;
    let org = api::org_with_roles(&app, "home", &["SUPER_ADMIN"]).await;
    let pool = app.db.pool().await;
    let offer = hosting_offer(&app, org.super_admin().token(), 5).await;
    let before = row_counts(&pool).await;

    let body = Arc::new(order_body("home", offer.plan_slug()));
    let client = app.http.clone();
    let url = app.url("/api/orders");
    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (client, url, body, barrier) =
            (client.clone(), url.clone(), body.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let res = client
                .post(url)
                .header("x-internal-key", INTERNAL_KEY)
                .json(&*body)
                .send()
                .await
                .expect("POST /api/orders");
            let status = res.status().as_u16();
            let answer: Value = res.json().await.unwrap_or(Value::Null);
            (status, answer)
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }

    let created = answers.iter().filter(|(s, _)| *s == 201).count();
    let bad: Vec<_> = answers
        .iter()
        .filter(|(s, _)| *s != 200 && *s != 201)
        .collect();
    assert!(bad.is_empty(), "deliveries that were not 200/201: {bad:?}");
    assert_eq!(created, 1, "exactly one delivery creates the order");
    let first = &answers[0].1;
    for (_, a) in &answers {
        assert_eq!(a, first, "every delivery answers with the same order");
    }
    assert_eq!(
        row_counts(&pool).await,
        selling::plus(
            &before,
            &[
                ("customers", 1),
                ("orders", 1),
                ("subscriptions", 1),
                ("domains", 1),
                ("jobs", 4),
                ("job_logs", 4),
                ("audit_logs", 1),
            ]
        )
    );
    assert_eq!(
        count_with(
            &pool,
            "SELECT count(*) FROM orders WHERE stripe_payment_intent_id = $1",
            body["stripePaymentIntentId"].as_str().unwrap()
        )
        .await,
        1
    );

    pool.close().await;
    app.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Operators: orders, subscriptions, customers
// ---------------------------------------------------------------------------------------------

fn total(page: &Value) -> i64 {
    page["total"]
        .as_i64()
        .unwrap_or_else(|| panic!("a paged list: {page}"))
}

#[tokio::test]
async fn operators_manage_orders_with_rbac_and_audit() {
    let app = TestApp::spawn_with(&[("RUN_WORKER", "false")]).await;
    let org = api::org_with_all_roles(&app, "home").await;
    let root = org.super_admin().token().to_owned();
    let billing = org.by_role("BILLING");
    let pool = app.db.pool().await;
    let a = hosting_offer(&app, &root, 5).await;
    let b = hosting_offer(&app, &root, 0).await;
    let first = place_order(&app, &order_body("home", a.plan_slug())).await;
    let second = place_order(&app, &order_body("home", b.plan_slug())).await;
    let first_id = str_of(&first, "orderId").to_owned();
    let second_id = str_of(&second, "orderId").to_owned();

    // Lists and filters; every role reads.
    for role in api::ROLES {
        let all = authed(&app, org.by_role(role).token())
            .get("/api/orders")
            .await
            .expect(200);
        assert_eq!(total(&all), 2, "{role}: {all}");
    }
    let detail = authed(&app, &root)
        .get(&format!("/api/orders/{first_id}"))
        .await
        .expect(200);
    assert_eq!(detail["id"], first_id.as_str());
    assert_eq!(detail["status"], "PAID");
    assert_eq!(detail["totalAmountCents"], 149);
    assert_eq!(detail["planId"], a.plan_id());
    assert_eq!(detail["subscription"]["id"], first["subscriptionId"]);
    assert_eq!(detail["subscription"]["status"], "ACTIVE");
    let detail_jobs: Vec<&str> = detail["jobs"]
        .as_array()
        .expect("jobs in the detail")
        .iter()
        .map(|j| str_of(j, "id"))
        .collect();
    assert_eq!(detail_jobs, job_ids(&first));
    assert!(detail["jobs"][0]["status"].is_string() && detail["jobs"][0]["type"].is_string());
    let customer_id = str_of(&detail, "customerId").to_owned();

    let by_customer = authed(&app, &root)
        .get(&format!("/api/orders?customerId={customer_id}"))
        .await
        .expect(200);
    assert_eq!(total(&by_customer), 1);
    assert_eq!(by_customer["items"][0]["id"], first_id.as_str());
    let by_plan = authed(&app, &root)
        .get(&format!("/api/orders?planId={}", b.plan_id()))
        .await
        .expect(200);
    assert_eq!(total(&by_plan), 1);
    assert_eq!(by_plan["items"][0]["id"], second_id.as_str());
    let paid = authed(&app, &root)
        .get("/api/orders?status=PAID")
        .await
        .expect(200);
    assert_eq!(total(&paid), 2);

    // SUPPORT and READ_ONLY may not change an order.
    for role in ["SUPPORT", "READ_ONLY"] {
        authed(&app, org.by_role(role).token())
            .patch(
                &format!("/api/orders/{first_id}"),
                &json!({"status": "CANCELLED"}),
            )
            .await
            .assert_error(403, "forbidden");
    }
    assert_eq!(
        authed(&app, &root)
            .get(&format!("/api/orders/{first_id}"))
            .await
            .expect(200),
        detail,
        "refused changes changed nothing"
    );

    // BILLING cancels: the subscription ends with the order; audited with the operator.
    let cancelled = authed(&app, billing.token())
        .patch(
            &format!("/api/orders/{first_id}"),
            &json!({"status": "CANCELLED", "reason": "customer asked"}),
        )
        .await
        .expect(200);
    assert_eq!(cancelled["status"], "CANCELLED");
    let sub = authed(&app, billing.token())
        .get(&format!(
            "/api/subscriptions/{}",
            str_of(&first, "subscriptionId")
        ))
        .await
        .expect(200);
    assert_eq!(sub["status"], "CANCELLED", "{sub}");
    assert!(sub["cancelledAt"].is_string(), "{sub}");
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_logs WHERE action = 'order.status'
            AND details->>'orderId' = $1 AND user_id = $2::uuid",
    )
    .bind(&first_id)
    .bind(&billing.id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(audited, 1);
    let cancelled_list = authed(&app, &root)
        .get("/api/orders?status=CANCELLED")
        .await
        .expect(200);
    assert_eq!(total(&cancelled_list), 1);

    // CANCELLED → REFUNDED is allowed; nothing leaves REFUNDED; PAID → REFUNDED is allowed.
    let refunded = authed(&app, billing.token())
        .patch(
            &format!("/api/orders/{first_id}"),
            &json!({"status": "REFUNDED"}),
        )
        .await
        .expect(200);
    assert_eq!(refunded["status"], "REFUNDED");
    for to in ["CANCELLED", "PAID", "PENDING"] {
        authed(&app, &root)
            .patch(&format!("/api/orders/{first_id}"), &json!({"status": to}))
            .await
            .assert_error(409, "conflict");
    }
    authed(&app, &root)
        .patch(
            &format!("/api/orders/{second_id}"),
            &json!({"status": "PENDING"}),
        )
        .await
        .assert_error(409, "conflict");
    authed(&app, &root)
        .patch(
            &format!("/api/orders/{second_id}"),
            &json!({"status": "SHIPPED"}),
        )
        .await
        .assert_invalid_field("status");
    let refunded2 = authed(&app, billing.token())
        .patch(
            &format!("/api/orders/{second_id}"),
            &json!({"status": "REFUNDED"}),
        )
        .await
        .expect(200);
    assert_eq!(refunded2["status"], "REFUNDED");
    let sub2 = authed(&app, &root)
        .get(&format!(
            "/api/subscriptions/{}",
            str_of(&second, "subscriptionId")
        ))
        .await
        .expect(200);
    assert_eq!(sub2["status"], "CANCELLED");
    assert_eq!(
        selling::audit_count(&pool, "order.status", None).await,
        3,
        "one audit row per status change"
    );

    // BILLING may not look at jobs.
    authed(&app, billing.token())
        .get("/api/jobs")
        .await
        .assert_error(403, "forbidden");
    authed(&app, billing.token())
        .get(&format!("/api/jobs/{}", job_ids(&first)[0]))
        .await
        .assert_error(403, "forbidden");

    // Another tenant sees none of it.
    let other = api::org_with_roles(&app, "other", &["SUPER_ADMIN"]).await;
    authed(&app, other.super_admin().token())
        .get(&format!("/api/orders/{first_id}"))
        .await
        .assert_error(404, "not_found");
    authed(&app, other.super_admin().token())
        .patch(
            &format!("/api/orders/{second_id}"),
            &json!({"status": "CANCELLED"}),
        )
        .await
        .assert_error(404, "not_found");

    pool.close().await;
    app.cleanup().await;
}

#[tokio::test]
async fn subscriptions_and_customers_for_operators() {
    let app = TestApp::spawn_with(&[("RUN_WORKER", "false")]).await;
    let org = api::org_with_all_roles(&app, "home").await;
    let root = org.super_admin().token().to_owned();
    let billing = org.by_role("BILLING").token().to_owned();
    let pool = app.db.pool().await;
    let a = hosting_offer(&app, &root, 5).await;
    let b = hosting_offer(&app, &root, 0).await;

    // One customer with two orders, another with one.
    let email = fresh_email();
    let mut o1 = order_body("home", a.plan_slug());
    o1["customer"]["email"] = json!(email);
    o1["customer"]["fullName"] = json!("Ada Lovelace");
    let p1 = place_order(&app, &o1).await;
    let mut o2 = order_body("home", b.plan_slug());
    o2["customer"]["email"] = json!(email);
    let p2 = place_order(&app, &o2).await;
    // A second customer.
    place_order(&app, &order_body("home", a.plan_slug())).await;
    let s1 = str_of(&p1, "subscriptionId").to_owned();
    let s2 = str_of(&p2, "subscriptionId").to_owned();

    let sub = authed(&app, &root)
        .get(&format!("/api/subscriptions/{s1}"))
        .await
        .expect(200);
    let customer_id = str_of(&sub, "customerId").to_owned();
    let domain_id = str_of(&sub, "domainId").to_owned();
    assert_eq!(sub["orderId"], p1["orderId"]);
    assert_eq!(sub["planId"], a.plan_id());
    assert_eq!(sub["status"], "ACTIVE");
    assert_eq!(sub["cancelAtPeriodEnd"], false);
    assert!(sub["currentPeriodEnd"].is_string() && sub["cancelledAt"].is_null());

    // Lists with every filter; every role reads.
    for role in api::ROLES {
        let all = authed(&app, org.by_role(role).token())
            .get("/api/subscriptions")
            .await
            .expect(200);
        assert_eq!(total(&all), 3, "{role}");
    }
    for (query, want) in [
        (format!("customerId={customer_id}"), 2),
        (format!("planId={}", b.plan_id()), 1),
        (format!("domainId={domain_id}"), 1),
        ("status=ACTIVE".to_owned(), 3),
        ("status=CANCELLED".to_owned(), 0),
    ] {
        let page = authed(&app, &root)
            .get(&format!("/api/subscriptions?{query}"))
            .await
            .expect(200);
        assert_eq!(total(&page), want, "{query}: {page}");
    }

    // Customers: search, flags and counts.
    let found = authed(&app, &billing)
        .get(&format!("/api/customers?q={}", api::enc(&email[..10])))
        .await
        .expect(200);
    assert_eq!(total(&found), 1, "{found}");
    assert_eq!(found["items"][0]["id"], customer_id.as_str());
    let by_name = authed(&app, &root)
        .get("/api/customers?q=lovelace")
        .await
        .expect(200);
    assert_eq!(total(&by_name), 1, "{by_name}");
    let active = authed(&app, &root)
        .get("/api/customers?isActive=true")
        .await
        .expect(200);
    assert_eq!(total(&active), 2);
    let inactive = authed(&app, &root)
        .get("/api/customers?isActive=false")
        .await
        .expect(200);
    assert_eq!(total(&inactive), 0);
    for role in api::ROLES {
        let c = authed(&app, org.by_role(role).token())
            .get(&format!("/api/customers/{customer_id}"))
            .await
            .expect(200);
        assert_eq!(c["email"], email.as_str(), "{role}");
        assert_eq!(c["fullName"], "Ada Lovelace");
        assert_eq!(c["orderCount"], 2, "{c}");
        assert_eq!(c["activeSubscriptions"], 2, "{c}");
    }

    // Cancelling: SUPPORT and READ_ONLY may not; BILLING may, at period end or now.
    for role in ["SUPPORT", "READ_ONLY"] {
        authed(&app, org.by_role(role).token())
            .post(&format!("/api/subscriptions/{s1}/cancel"), &json!({}))
            .await
            .assert_error(403, "forbidden");
    }
    let at_end = authed(&app, &billing)
        .post(
            &format!("/api/subscriptions/{s1}/cancel"),
            &json!({"atPeriodEnd": true}),
        )
        .await
        .expect(200);
    assert_eq!(at_end["status"], "ACTIVE", "{at_end}");
    assert_eq!(at_end["cancelAtPeriodEnd"], true);
    assert!(at_end["cancelledAt"].is_null());

    // No body at all: cancel now.
    let res = app
        .http
        .post(app.url(&format!("/api/subscriptions/{s2}/cancel")))
        .bearer_auth(&billing)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let now: Value = res.json().await.unwrap();
    assert_eq!(now["status"], "CANCELLED", "{now}");
    assert!(now["cancelledAt"].is_string(), "{now}");
    authed(&app, &billing)
        .post(&format!("/api/subscriptions/{s2}/cancel"), &json!({}))
        .await
        .assert_error(409, "conflict");
    assert_eq!(
        selling::audit_count(&pool, "subscription.cancel", None).await,
        2
    );
    let c = authed(&app, &root)
        .get(&format!("/api/customers/{customer_id}"))
        .await
        .expect(200);
    assert_eq!(c["activeSubscriptions"], 1, "{c}");
    let cancelled = authed(&app, &root)
        .get("/api/subscriptions?status=CANCELLED")
        .await
        .expect(200);
    assert_eq!(total(&cancelled), 1);
    assert_eq!(cancelled["items"][0]["id"], s2.as_str());

    // Another tenant sees none of it.
    let other = api::org_with_roles(&app, "other", &["SUPER_ADMIN"]).await;
    let theirs = other.super_admin().token();
    for path in [
        format!("/api/subscriptions/{s1}"),
        format!("/api/customers/{customer_id}"),
    ] {
        authed(&app, theirs)
            .get(&path)
            .await
            .assert_error(404, "not_found");
    }
    authed(&app, theirs)
        .post(&format!("/api/subscriptions/{s1}/cancel"), &json!({}))
        .await
        .assert_error(404, "not_found");
    let listed = authed(&app, theirs).get("/api/customers").await.expect(200);
    assert_eq!(total(&listed), 0);

    pool.close().await;
    app.cleanup().await;
}

#[tokio::test]
async fn the_sweeper_ends_subscriptions_at_period_end() {
    let app = TestApp::spawn_with(&[
        ("JOB_SWEEP_INTERVAL", "200ms"),
        // The jobs of these orders are not the subject: keep them quiet.
        ("JOB_RETRY_BASE", "10m"),
        ("JOB_RETRY_MAX", "10m"),
    ])
    .await;
    let org = api::org_with_roles(&app, "home", &["SUPER_ADMIN"]).await;
    let root = org.super_admin().token().to_owned();
    let pool = app.db.pool().await;
    let offer = hosting_offer(&app, &root, 0).await;
    let leaving = place_order(&app, &order_body("home", offer.plan_slug())).await;
    let staying = place_order(&app, &order_body("home", offer.plan_slug())).await;
    let leaving_id = str_of(&leaving, "subscriptionId").to_owned();
    let staying_id = str_of(&staying, "subscriptionId").to_owned();

    authed(&app, &root)
        .post(
            &format!("/api/subscriptions/{leaving_id}/cancel"),
            &json!({"atPeriodEnd": true}),
        )
        .await
        .expect(200);
    // Both periods end in the past; only the one set to cancel at period end ends.
    sqlx::query(
        "UPDATE subscriptions SET current_period_start = now() - interval '1 month 1 hour',
                current_period_end = now() - interval '1 hour'
          WHERE id = ANY($1::uuid[])",
    )
    .bind(vec![leaving_id.clone(), staying_id.clone()])
    .execute(&pool)
    .await
    .unwrap();

    let ended = wait_for(
        "the sweeper to cancel the subscription",
        Duration::from_secs(20),
        || async {
            let s = authed(&app, &root)
                .get(&format!("/api/subscriptions/{leaving_id}"))
                .await
                .expect(200);
            (s["status"] == "CANCELLED").then_some(s)
        },
    )
    .await;
    assert!(ended["cancelledAt"].is_string(), "{ended}");
    wait_for(
        "the audit row subscription.cancelled",
        Duration::from_secs(5),
        || async {
            (selling::audit_count(
                &pool,
                "subscription.cancelled",
                Some(("subscriptionId", &leaving_id)),
            )
            .await
                == 1)
                .then_some(())
        },
    )
    .await;
    // Several sweeps later the other one is still ACTIVE, and nothing was cancelled twice.
    let sweeps_seen = wait_for("more sweeps", Duration::from_secs(10), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM audit_logs WHERE action = 'subscription.cancelled'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        let old_enough: bool = sqlx::query_scalar(
            "SELECT coalesce(max(created_at) < now() - interval '1 second', false)
               FROM audit_logs WHERE action = 'subscription.cancelled'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        old_enough.then_some(n)
    })
    .await;
    assert_eq!(sweeps_seen, 1, "cancelled exactly once");
    let still = authed(&app, &root)
        .get(&format!("/api/subscriptions/{staying_id}"))
        .await
        .expect(200);
    assert_eq!(still["status"], "ACTIVE", "{still}");

    pool.close().await;
    app.cleanup().await;
}
