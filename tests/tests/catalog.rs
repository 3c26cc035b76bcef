//! The catalog (spec §5, §6.2, §9.1) against the real `mpanel` process: products and plans
//! admin CRUD with their validation, conflicts, tenant rules, RBAC and audit rows; and the
//! marketing site's public read-only catalog (active items only, no internal fields, ETag and
//! Cache-Control, 304 on If-None-Match, a new ETag after a price change).

use mpanel_tests::{
    TestApp,
    api::{self, Reply, anon, authed, unique},
    selling::{self, count_with, create_plan, create_product, plan_body, product_body, str_of},
};
use serde_json::{Value, json};

const NON_WRITERS: [&str; 3] = ["SUPPORT", "BILLING", "READ_ONLY"];

fn assert_page(reply: &Reply) -> &Vec<Value> {
    assert_eq!(reply.status, 200, "{reply:?}");
    for key in ["total", "page", "pageSize"] {
        assert!(reply.body[key].is_number(), "{key} in {}", reply.body);
    }
    reply.body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("items in {}", reply.body))
}

fn slugs(items: &[Value]) -> Vec<&str> {
    items.iter().map(|i| str_of(i, "slug")).collect()
}

#[tokio::test]
async fn products_crud_validation_rbac_and_audit() {
    let app = TestApp::spawn_with(&[("RUN_WORKER", "false")]).await;
    let org = api::org_with_all_roles(&app, "home").await;
    let root = org.super_admin().token().to_owned();
    let pool = app.db.pool().await;

    // Create: 201 with every field of the spec, owned by the caller's tenant.
    let body = product_body("SHARED_HOSTING");
    let product = authed(&app, &root)
        .post("/api/products", &body)
        .await
        .expect(201);
    let id = str_of(&product, "id").to_owned();
    assert_eq!(product["tenantId"], org.tenant_id.as_str(), "{product}");
    assert_eq!(product["name"], body["name"]);
    assert_eq!(product["slug"], body["slug"]);
    assert_eq!(product["type"], "SHARED_HOSTING");
    assert_eq!(product["description"], body["description"]);
    assert_eq!(product["isActive"], true);
    assert!(product["createdAt"].is_string() && product["updatedAt"].is_string());
    assert_eq!(
        selling::audit_count(&pool, "product.create", Some(("productId", &id))).await,
        1
    );

    // An ADMIN may create too; every other role is refused and nothing is written.
    create_product(&app, org.admin().token(), "VPS").await;
    for role in NON_WRITERS {
        let b = product_body("DNS");
        let reply = authed(&app, org.by_role(role).token())
            .post("/api/products", &b)
            .await;
        reply.assert_error(403, "forbidden");
        let n = count_with(
            &pool,
            "SELECT count(*) FROM products WHERE slug = $1",
            b["slug"].as_str().unwrap(),
        )
        .await;
        assert_eq!(n, 0, "{role} refused but the product exists");
    }

    // Every role reads the list (paged) and the detail.
    for role in api::ROLES {
        let token = org.by_role(role).token();
        let list = authed(&app, token).get("/api/products").await;
        let items = assert_page(&list);
        assert_eq!(list.body["total"], 2, "{role}: {}", list.body);
        assert!(items.iter().any(|p| p["id"] == id.as_str()), "{role}");
        let detail = authed(&app, token)
            .get(&format!("/api/products/{id}"))
            .await
            .expect(200);
        assert_eq!(detail, product, "{role}");
    }

    // Validation: each bad field is named; nothing is created.
    let before = selling::count(&app.db.pool().await, "SELECT count(*) FROM products").await;
    let mut bad = product_body("SHARED_HOSTING");
    bad["type"] = json!("WEB_HOSTING");
    authed(&app, &root)
        .post("/api/products", &bad)
        .await
        .assert_invalid_field("type");
    let mut bad = product_body("SHARED_HOSTING");
    bad["slug"] = json!("Not A Slug");
    authed(&app, &root)
        .post("/api/products", &bad)
        .await
        .assert_invalid_field("slug");
    let mut bad = product_body("SHARED_HOSTING");
    bad["name"] = json!("   ");
    authed(&app, &root)
        .post("/api/products", &bad)
        .await
        .assert_invalid_field("name");
    // A duplicate slug is a conflict.
    let mut dup = product_body("EMAIL");
    dup["slug"] = product["slug"].clone();
    authed(&app, &root)
        .post("/api/products", &dup)
        .await
        .assert_error(409, "conflict");
    assert_eq!(
        selling::count(&pool, "SELECT count(*) FROM products").await,
        before
    );

    // Update: writers only; the change shows and is audited.
    for role in NON_WRITERS {
        authed(&app, org.by_role(role).token())
            .patch(&format!("/api/products/{id}"), &json!({"name": "Hijacked"}))
            .await
            .assert_error(403, "forbidden");
    }
    let renamed = authed(&app, org.admin().token())
        .patch(
            &format!("/api/products/{id}"),
            &json!({"name": "Shared hosting", "description": "Fast sites"}),
        )
        .await
        .expect(200);
    assert_eq!(renamed["name"], "Shared hosting");
    assert_eq!(renamed["description"], "Fast sites");
    assert_eq!(renamed["slug"], product["slug"]);
    assert_eq!(
        selling::audit_count(&pool, "product.update", Some(("productId", &id))).await,
        1
    );

    // Delete deactivates (204); the row stays readable; non-writers are refused.
    for role in NON_WRITERS {
        authed(&app, org.by_role(role).token())
            .delete(&format!("/api/products/{id}"))
            .await
            .assert_error(403, "forbidden");
    }
    let reply = authed(&app, &root)
        .delete(&format!("/api/products/{id}"))
        .await;
    assert_eq!(reply.status, 204, "{reply:?}");
    let detail = authed(&app, &root)
        .get(&format!("/api/products/{id}"))
        .await
        .expect(200);
    assert_eq!(detail["isActive"], false, "{detail}");
    let inactive = authed(&app, &root)
        .get("/api/products?isActive=false")
        .await;
    assert_eq!(
        slugs(assert_page(&inactive)),
        [product["slug"].as_str().unwrap()]
    );
    assert_eq!(
        selling::audit_count(&pool, "product.deactivate", Some(("productId", &id))).await,
        1
    );

    // Another tenant sees none of it.
    let other = api::org_with_roles(&app, "other", &["SUPER_ADMIN"]).await;
    let theirs = other.super_admin().token();
    authed(&app, theirs)
        .get(&format!("/api/products/{id}"))
        .await
        .assert_error(404, "not_found");
    let list = authed(&app, theirs).get("/api/products").await;
    assert!(assert_page(&list).is_empty(), "{}", list.body);

    pool.close().await;
    app.cleanup().await;
}

#[tokio::test]
async fn plans_crud_validation_rbac_and_audit() {
    let app = TestApp::spawn_with(&[("RUN_WORKER", "false")]).await;
    let org = api::org_with_all_roles(&app, "home").await;
    let root = org.super_admin().token().to_owned();
    let pool = app.db.pool().await;
    let product = create_product(&app, &root, "SHARED_HOSTING").await;
    let product_id = str_of(&product, "id").to_owned();

    // Defaults: usd, MONTHLY, not popular, active; limits kept as sent.
    let limits =
        json!({"diskGb": 10, "bandwidthGb": 100, "sites": 1, "emails": 5, "phpVersion": "8.2"});
    let body = plan_body(&product_id, &unique("starter"), limits.clone());
    let plan = authed(&app, org.admin().token())
        .post("/api/plans", &body)
        .await
        .expect(201);
    let plan_id = str_of(&plan, "id").to_owned();
    assert_eq!(plan["tenantId"], org.tenant_id.as_str());
    assert_eq!(plan["productId"], product_id.as_str());
    assert_eq!(plan["slug"], body["slug"]);
    assert_eq!(plan["priceMonthlyCents"], 149);
    assert_eq!(plan["priceYearlyCents"], 1490);
    assert_eq!(plan["currency"], "usd");
    assert_eq!(plan["billingInterval"], "MONTHLY");
    assert_eq!(plan["isPopular"], false);
    assert_eq!(plan["isActive"], true);
    assert_eq!(plan["limitsJson"], limits);
    assert_eq!(
        selling::audit_count(&pool, "plan.create", Some(("planId", &plan_id))).await,
        1
    );

    // Every optional field given.
    let mut yearly = plan_body(&product_id, &unique("pro-yearly"), json!({"emails": 0}));
    yearly["currency"] = json!("eur");
    yearly["billingInterval"] = json!("YEARLY");
    yearly["isPopular"] = json!(true);
    yearly["isActive"] = json!(false);
    let created = create_plan(&app, &root, &yearly).await;
    assert_eq!(created["currency"], "eur");
    assert_eq!(created["billingInterval"], "YEARLY");
    assert_eq!(created["isPopular"], true);
    assert_eq!(created["isActive"], false);

    // Refused roles write nothing.
    for role in NON_WRITERS {
        let b = plan_body(&product_id, &unique("nope"), json!({}));
        authed(&app, org.by_role(role).token())
            .post("/api/plans", &b)
            .await
            .assert_error(403, "forbidden");
        let n = count_with(
            &pool,
            "SELECT count(*) FROM plans WHERE slug = $1",
            b["slug"].as_str().unwrap(),
        )
        .await;
        assert_eq!(n, 0, "{role}");
    }

    // Bad plans: field named, nothing written.
    let plans_before = selling::count(&pool, "SELECT count(*) FROM plans").await;
    let fresh = || plan_body(&product_id, &unique("bad"), json!({"emails": 1}));
    let mut b = fresh();
    b["limitsJson"] = json!({"emails": 1, "inodes": 5000});
    authed(&app, &root)
        .post("/api/plans", &b)
        .await
        .assert_invalid_field("limitsJson");
    let mut b = fresh();
    b["limitsJson"] = json!({"diskGb": -1});
    authed(&app, &root)
        .post("/api/plans", &b)
        .await
        .assert_invalid_field("limitsJson");
    let mut b = fresh();
    b["priceMonthlyCents"] = json!(-1);
    authed(&app, &root)
        .post("/api/plans", &b)
        .await
        .assert_invalid_field("priceMonthlyCents");
    let mut b = fresh();
    b["priceYearlyCents"] = json!(-500);
    authed(&app, &root)
        .post("/api/plans", &b)
        .await
        .assert_invalid_field("priceYearlyCents");
    let mut b = fresh();
    b["currency"] = json!("xyz");
    authed(&app, &root)
        .post("/api/plans", &b)
        .await
        .assert_invalid_field("currency");
    let mut b = fresh();
    b["billingInterval"] = json!("WEEKLY");
    authed(&app, &root)
        .post("/api/plans", &b)
        .await
        .assert_invalid_field("billingInterval");
    let mut b = fresh();
    b["slug"] = plan["slug"].clone();
    authed(&app, &root)
        .post("/api/plans", &b)
        .await
        .assert_error(409, "conflict");
    // A product of another tenant cannot carry this tenant's plan.
    let other = api::org_with_roles(&app, "other", &["SUPER_ADMIN"]).await;
    let foreign = create_product(&app, other.super_admin().token(), "VPS").await;
    let mut b = fresh();
    b["productId"] = foreign["id"].clone();
    let reply = authed(&app, &root).post("/api/plans", &b).await;
    reply.assert_error(422, "unprocessable_entity");
    assert_eq!(
        reply.body["error"]["details"]["field"], "productId",
        "{reply:?}"
    );
    assert_eq!(
        selling::count(&pool, "SELECT count(*) FROM plans").await,
        plans_before
    );

    // Every role reads; the list filters by product.
    for role in api::ROLES {
        let token = org.by_role(role).token();
        let list = authed(&app, token)
            .get(&format!("/api/plans?productId={product_id}"))
            .await;
        assert_eq!(assert_page(&list).len(), 2, "{role}: {}", list.body);
        authed(&app, token)
            .get(&format!("/api/plans/{plan_id}"))
            .await
            .expect(200);
    }

    // Update by writers only, audited.
    for role in NON_WRITERS {
        authed(&app, org.by_role(role).token())
            .patch(
                &format!("/api/plans/{plan_id}"),
                &json!({"priceMonthlyCents": 1}),
            )
            .await
            .assert_error(403, "forbidden");
    }
    authed(&app, &root)
        .patch(
            &format!("/api/plans/{plan_id}"),
            &json!({"priceMonthlyCents": -5}),
        )
        .await
        .assert_invalid_field("priceMonthlyCents");
    authed(&app, &root)
        .patch(
            &format!("/api/plans/{plan_id}"),
            &json!({"limitsJson": {"mailboxes": 3}}),
        )
        .await
        .assert_invalid_field("limitsJson");
    let updated = authed(&app, &root)
        .patch(
            &format!("/api/plans/{plan_id}"),
            &json!({"priceMonthlyCents": 199, "isPopular": true}),
        )
        .await
        .expect(200);
    assert_eq!(updated["priceMonthlyCents"], 199);
    assert_eq!(updated["isPopular"], true);
    assert_eq!(updated["priceYearlyCents"], 1490, "untouched fields stay");
    assert_eq!(
        selling::audit_count(&pool, "plan.update", Some(("planId", &plan_id))).await,
        1
    );

    // Delete deactivates.
    for role in NON_WRITERS {
        authed(&app, org.by_role(role).token())
            .delete(&format!("/api/plans/{plan_id}"))
            .await
            .assert_error(403, "forbidden");
    }
    let reply = authed(&app, org.admin().token())
        .delete(&format!("/api/plans/{plan_id}"))
        .await;
    assert_eq!(reply.status, 204, "{reply:?}");
    let detail = authed(&app, &root)
        .get(&format!("/api/plans/{plan_id}"))
        .await
        .expect(200);
    assert_eq!(detail["isActive"], false);
    assert_eq!(
        selling::audit_count(&pool, "plan.deactivate", Some(("planId", &plan_id))).await,
        1
    );
    // Not visible to the other tenant.
    authed(&app, other.super_admin().token())
        .get(&format!("/api/plans/{plan_id}"))
        .await
        .assert_error(404, "not_found");

    pool.close().await;
    app.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// The public catalog
// ---------------------------------------------------------------------------------------------

/// Keys that must never reach the marketing site.
const INTERNAL_KEYS: [&str; 9] = [
    "id",
    "tenantId",
    "productId",
    "isActive",
    "createdAt",
    "updatedAt",
    "tenant_id",
    "is_active",
    "created_at",
];

fn internal_keys_in(v: &Value, path: &str, found: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if INTERNAL_KEYS.contains(&k.as_str()) {
                    found.push(format!("{path}.{k}"));
                }
                internal_keys_in(child, &format!("{path}.{k}"), found);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                internal_keys_in(child, &format!("{path}[{i}]"), found);
            }
        }
        _ => {}
    }
}

#[track_caller]
fn assert_public(reply: &Reply) -> String {
    assert_eq!(reply.status, 200, "{reply:?}");
    let mut found = Vec::new();
    internal_keys_in(&reply.body, "", &mut found);
    assert!(
        found.is_empty(),
        "internal fields {found:?} in {}",
        reply.body
    );
    assert_eq!(
        reply
            .headers
            .get("cache-control")
            .map(|v| v.to_str().unwrap()),
        Some("public, max-age=60"),
        "{reply:?}"
    );
    reply
        .headers
        .get("etag")
        .unwrap_or_else(|| panic!("no ETag: {reply:?}"))
        .to_str()
        .unwrap()
        .to_owned()
}

async fn get_with_etag(app: &TestApp, path: &str, etag: &str) -> reqwest::Response {
    app.http
        .get(app.url(path))
        .header("if-none-match", etag)
        .send()
        .await
        .expect("GET")
}

#[tokio::test]
async fn public_catalog_shows_active_items_without_internal_fields() {
    let app = TestApp::spawn_with(&[("RUN_WORKER", "false")]).await;
    let org = api::org_with_roles(&app, "home", &["SUPER_ADMIN"]).await;
    let root = org.super_admin().token().to_owned();

    // hosting: two active plans and a deactivated one; vps: deactivated with an active plan;
    // mail: active without plans.
    let hosting = create_product(&app, &root, "SHARED_HOSTING").await;
    let hosting_id = str_of(&hosting, "id").to_owned();
    let hosting_slug = str_of(&hosting, "slug").to_owned();
    let starter = create_plan(
        &app,
        &root,
        &plan_body(&hosting_id, "starter", json!({"emails": 5, "diskGb": 10})),
    )
    .await;
    let mut pro_body = plan_body(&hosting_id, "pro", json!({"emails": 50}));
    pro_body["priceMonthlyCents"] = json!(999);
    pro_body["isPopular"] = json!(true);
    create_plan(&app, &root, &pro_body).await;
    let old = create_plan(&app, &root, &plan_body(&hosting_id, "old", json!({}))).await;
    let reply = authed(&app, &root)
        .delete(&format!("/api/plans/{}", str_of(&old, "id")))
        .await;
    assert_eq!(reply.status, 204);
    let mut hidden_body = plan_body(&hosting_id, "hidden", json!({}));
    hidden_body["isActive"] = json!(false);
    create_plan(&app, &root, &hidden_body).await;

    let vps = create_product(&app, &root, "VPS").await;
    create_plan(
        &app,
        &root,
        &plan_body(str_of(&vps, "id"), "vps-small", json!({})),
    )
    .await;
    let reply = authed(&app, &root)
        .delete(&format!("/api/products/{}", str_of(&vps, "id")))
        .await;
    assert_eq!(reply.status, 204);
    let mail = create_product(&app, &root, "EMAIL").await;

    // Products, at both addresses, with no credentials and no tenant (only one sells here).
    let mut product_etag = String::new();
    for path in ["/api/public/products", "/api/products/public"] {
        let reply = anon(&app).get(path).await;
        product_etag = assert_public(&reply);
        let items = reply.body["items"].as_array().expect("items");
        let mut listed = slugs(items);
        listed.sort();
        let mut want = vec![hosting_slug.as_str(), str_of(&mail, "slug")];
        want.sort();
        assert_eq!(listed, want, "{path}: {}", reply.body);
        let h = items
            .iter()
            .find(|p| p["slug"] == hosting_slug.as_str())
            .unwrap();
        assert_eq!(h["type"], "SHARED_HOSTING");
        assert_eq!(h["name"], hosting["name"]);
        assert_eq!(
            slugs(h["plans"].as_array().expect("plans")),
            ["starter", "pro"]
        );
        let s = &h["plans"][0];
        assert_eq!(s["priceMonthlyCents"], 149);
        assert_eq!(s["priceYearlyCents"], 1490);
        assert_eq!(s["currency"], "usd");
        assert_eq!(h["plans"][1]["isPopular"], true);
        let m = items.iter().find(|p| p["slug"] == mail["slug"]).unwrap();
        assert_eq!(m["plans"], json!([]), "{m}");
    }

    // Plans, at both addresses, optionally of one product and with an explicit tenant.
    let mut plans_etag = String::new();
    for path in ["/api/public/plans", "/api/plans/public"] {
        let reply = anon(&app).get(path).await;
        plans_etag = assert_public(&reply);
        assert_eq!(
            slugs(reply.body["items"].as_array().expect("items")),
            ["starter", "pro"],
            "{path}: {}",
            reply.body
        );
        let filtered = anon(&app)
            .get(&format!("{path}?tenant=home&product={hosting_slug}"))
            .await;
        assert_public(&filtered);
        assert_eq!(filtered.body["items"], reply.body["items"]);
        let none = anon(&app)
            .get(&format!("{path}?product={}", str_of(&vps, "slug")))
            .await;
        assert_public(&none);
        assert_eq!(none.body["items"], json!([]), "inactive product's plans");
    }

    // Cache validation: the same ETag answers 304 without a body.
    for (path, etag) in [
        ("/api/public/products", &product_etag),
        ("/api/public/plans", &plans_etag),
    ] {
        let res = get_with_etag(&app, path, etag).await;
        assert_eq!(res.status().as_u16(), 304, "{path}");
        assert_eq!(
            res.headers().get("etag").map(|v| v.to_str().unwrap()),
            Some(etag.as_str())
        );
        assert!(res.bytes().await.unwrap().is_empty(), "304 has no body");
        let res = get_with_etag(&app, path, "\"something-else\"").await;
        assert_eq!(res.status().as_u16(), 200, "{path}");
    }

    // A price change changes the ETag; the old one no longer matches.
    authed(&app, &root)
        .patch(
            &format!("/api/plans/{}", str_of(&starter, "id")),
            &json!({"priceMonthlyCents": 199}),
        )
        .await
        .expect(200);
    for (path, old_etag) in [
        ("/api/public/products", &product_etag),
        ("/api/public/plans", &plans_etag),
    ] {
        let reply = anon(&app).get(path).await;
        let etag = assert_public(&reply);
        assert_ne!(&etag, old_etag, "{path}: ETag after a price change");
        assert!(reply.body.to_string().contains("199"), "{}", reply.body);
        let res = get_with_etag(&app, path, old_etag).await;
        assert_eq!(res.status().as_u16(), 200, "{path} with a stale ETag");
    }

    // With a second tenant the marketing site must say which one.
    let other = api::org_with_roles(&app, "other", &["SUPER_ADMIN"]).await;
    let theirs = create_product(&app, other.super_admin().token(), "DNS").await;
    anon(&app)
        .get("/api/public/products")
        .await
        .assert_invalid_field("tenant");
    anon(&app)
        .get("/api/public/plans")
        .await
        .assert_invalid_field("tenant");
    let reply = anon(&app).get("/api/public/products?tenant=other").await;
    assert_public(&reply);
    assert_eq!(
        slugs(reply.body["items"].as_array().unwrap()),
        [str_of(&theirs, "slug")]
    );
    let reply = anon(&app).get("/api/public/plans?tenant=home").await;
    assert_public(&reply);
    assert_eq!(
        slugs(reply.body["items"].as_array().unwrap()),
        ["starter", "pro"]
    );
    anon(&app)
        .get("/api/public/products?tenant=nobody")
        .await
        .assert_error(404, "not_found");

    app.cleanup().await;
}

#[tokio::test]
async fn two_tenants_each_have_a_product_with_the_same_slug() {
    let app = TestApp::spawn().await;
    let acme = api::org_with_roles(&app, "acme", &["SUPER_ADMIN"]).await;
    let globex = api::org_with_roles(&app, "globex", &["SUPER_ADMIN"]).await;
    let body = |name: &str| {
        let mut b = product_body("SHARED_HOSTING");
        b["slug"] = json!("shared");
        b["name"] = json!(name);
        b
    };
    for org in [&acme, &globex] {
        let made = authed(&app, org.super_admin().token())
            .post("/api/products", &body("Shared"))
            .await
            .expect(201);
        assert_eq!(made["slug"], "shared");
        assert_eq!(made["tenantId"], org.tenant_id.as_str());
    }
    // Within one tenant the slug is still taken.
    authed(&app, acme.super_admin().token())
        .post("/api/products", &body("Shared again"))
        .await
        .assert_error(409, "conflict");

    app.cleanup().await;
}
