//! Who may do what, against the real `mpanel` process: the role × endpoint matrix (spec §11,
//! encoded here independently of the panel), tenant isolation, and the CRUD rules of users,
//! tenants and servers (soft delete, conflicts, no escalation to SUPER_ADMIN), with the audit
//! rows they write.

use std::collections::BTreeSet;

use mpanel_tests::{
    TestApp,
    api::{
        self, Org, PASSWORD, USER_AGENT, anon, authed, create_server, create_tenant, create_user,
        enc, login, server_body, tenant_body, try_login, unique, user_body,
    },
};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;

// ---------------------------------------------------------------------------------------------
// The permission table (spec §11)
// ---------------------------------------------------------------------------------------------

const SUPER_ADMIN_ONLY: &[&str] = &["SUPER_ADMIN"];
const READERS: &[&str] = &["SUPER_ADMIN", "ADMIN", "SUPPORT", "READ_ONLY"];
const WRITERS: &[&str] = &["SUPER_ADMIN", "ADMIN"];
const EVERY_ROLE: &[&str] = &["SUPER_ADMIN", "ADMIN", "SUPPORT", "BILLING", "READ_ONLY"];
/// Orders, subscriptions and customers: BILLING's business, readable by every operator.
const BILLING_READERS: &[&str] = EVERY_ROLE;
const BILLING_WRITERS: &[&str] = &["SUPER_ADMIN", "ADMIN", "BILLING"];
/// Limited operational writes SUPPORT may make (never a delete or a termination).
const SUPPORT_WRITERS: &[&str] = &["SUPER_ADMIN", "ADMIN", "SUPPORT"];

/// What a request sends; fresh names every time so allowed calls really succeed.
#[derive(Clone, Copy, Debug)]
enum Body {
    None,
    NewUser,
    UserPatch,
    NewServer,
    ServerPatch,
    NewTenant,
    TenantPatch,
    NewProduct,
    ProductPatch,
    NewPlan,
    PlanPatch,
    CancelOrder,
    CancelNow,
    NewBackup,
    NewHosting,
    NewZone,
    NewRecord,
    RecordPatch,
    NewMailbox,
    NewVps,
    Policy,
}

/// One route of the matrix. `{user}`, `{server}` and `{tenant}` in the path are replaced by a
/// fresh row the SUPER_ADMIN creates for each call.
struct Route {
    method: &'static str,
    path: &'static str,
    body: Body,
    /// The status an allowed role gets.
    ok: u16,
    allowed: &'static [&'static str],
}

const fn route(
    method: &'static str,
    path: &'static str,
    body: Body,
    ok: u16,
    allowed: &'static [&'static str],
) -> Route {
    Route {
        method,
        path,
        body,
        ok,
        allowed,
    }
}

/// Adding a route to the API is one line here.
const MATRIX: &[Route] = &[
    route("GET", "/api/auth/me", Body::None, 200, EVERY_ROLE),
    route("GET", "/api/tenants", Body::None, 200, SUPER_ADMIN_ONLY),
    route(
        "POST",
        "/api/tenants",
        Body::NewTenant,
        201,
        SUPER_ADMIN_ONLY,
    ),
    route(
        "GET",
        "/api/tenants/{tenant}",
        Body::None,
        200,
        SUPER_ADMIN_ONLY,
    ),
    route(
        "PATCH",
        "/api/tenants/{tenant}",
        Body::TenantPatch,
        200,
        SUPER_ADMIN_ONLY,
    ),
    route(
        "DELETE",
        "/api/tenants/{tenant}",
        Body::None,
        204,
        SUPER_ADMIN_ONLY,
    ),
    route("GET", "/api/users", Body::None, 200, READERS),
    route("GET", "/api/users/{user}", Body::None, 200, READERS),
    route("POST", "/api/users", Body::NewUser, 201, WRITERS),
    route("PATCH", "/api/users/{user}", Body::UserPatch, 200, WRITERS),
    route("DELETE", "/api/users/{user}", Body::None, 204, WRITERS),
    route("GET", "/api/servers", Body::None, 200, READERS),
    route("GET", "/api/servers/{server}", Body::None, 200, READERS),
    route("POST", "/api/servers", Body::NewServer, 201, WRITERS),
    route(
        "PATCH",
        "/api/servers/{server}",
        Body::ServerPatch,
        200,
        WRITERS,
    ),
    route("DELETE", "/api/servers/{server}", Body::None, 204, WRITERS),
    route("GET", "/api/audit", Body::None, 200, READERS),
    route(
        "POST",
        "/api/servers/{server}/enrollment-token",
        Body::None,
        201,
        WRITERS,
    ),
    route("GET", "/api/products", Body::None, 200, EVERY_ROLE),
    route("POST", "/api/products", Body::NewProduct, 201, WRITERS),
    route(
        "GET",
        "/api/products/{product}",
        Body::None,
        200,
        EVERY_ROLE,
    ),
    route(
        "PATCH",
        "/api/products/{product}",
        Body::ProductPatch,
        200,
        WRITERS,
    ),
    route(
        "DELETE",
        "/api/products/{product}",
        Body::None,
        204,
        WRITERS,
    ),
    route("GET", "/api/plans", Body::None, 200, EVERY_ROLE),
    route("POST", "/api/plans", Body::NewPlan, 201, WRITERS),
    route("GET", "/api/plans/{plan}", Body::None, 200, EVERY_ROLE),
    route("PATCH", "/api/plans/{plan}", Body::PlanPatch, 200, WRITERS),
    route("DELETE", "/api/plans/{plan}", Body::None, 204, WRITERS),
    route("GET", "/api/orders", Body::None, 200, BILLING_READERS),
    route(
        "GET",
        "/api/orders/{order}",
        Body::None,
        200,
        BILLING_READERS,
    ),
    route(
        "PATCH",
        "/api/orders/{order}",
        Body::CancelOrder,
        200,
        BILLING_WRITERS,
    ),
    route(
        "GET",
        "/api/subscriptions",
        Body::None,
        200,
        BILLING_READERS,
    ),
    route(
        "GET",
        "/api/subscriptions/{subscription}",
        Body::None,
        200,
        BILLING_READERS,
    ),
    route(
        "POST",
        "/api/subscriptions/{subscription}/cancel",
        Body::CancelNow,
        200,
        BILLING_WRITERS,
    ),
    route(
        "POST",
        "/api/subscriptions/{subscription}/terminate",
        Body::None,
        200,
        WRITERS,
    ),
    route(
        "POST",
        "/api/subscriptions/{subscription}/reactivate",
        Body::None,
        200,
        WRITERS,
    ),
    route(
        "GET",
        "/api/subscriptions/policy",
        Body::None,
        200,
        BILLING_READERS,
    ),
    route(
        "PUT",
        "/api/subscriptions/policy",
        Body::Policy,
        200,
        WRITERS,
    ),
    route(
        "POST",
        "/api/hosting/accounts/{hosting}/certificate",
        Body::None,
        202,
        SUPPORT_WRITERS,
    ),
    route("GET", "/api/domains", Body::None, 200, BILLING_READERS),
    route(
        "GET",
        "/api/domains/{domain}",
        Body::None,
        200,
        BILLING_READERS,
    ),
    route("GET", "/api/customers", Body::None, 200, BILLING_READERS),
    route(
        "GET",
        "/api/customers/{customer}",
        Body::None,
        200,
        BILLING_READERS,
    ),
    route("GET", "/api/jobs", Body::None, 200, READERS),
    route("GET", "/api/jobs/{job}", Body::None, 200, READERS),
    route(
        "POST",
        "/api/jobs/{job}/retry",
        Body::None,
        202,
        SUPPORT_WRITERS,
    ),
    route(
        "GET",
        "/api/servers/{server}/health",
        Body::None,
        200,
        READERS,
    ),
    // No agent is connected, so an allowed caller gets a clear 409 after the 1 s deadline.
    route(
        "POST",
        "/api/servers/{server}/ping?timeoutSecs=1",
        Body::None,
        409,
        WRITERS,
    ),
    route(
        "POST",
        "/api/agents/{agent}/revoke",
        Body::None,
        200,
        SUPER_ADMIN_ONLY,
    ),
    route("GET", "/api/backups/jobs", Body::None, 200, READERS),
    route(
        "GET",
        "/api/backups/jobs/{backup}",
        Body::None,
        200,
        READERS,
    ),
    route(
        "POST",
        "/api/backups/jobs",
        Body::NewBackup,
        201,
        SUPPORT_WRITERS,
    ),
    route(
        "POST",
        "/api/backups/jobs/{backup}/rerun",
        Body::None,
        202,
        SUPPORT_WRITERS,
    ),
    route("GET", "/api/hosting/accounts", Body::None, 200, READERS),
    route(
        "POST",
        "/api/hosting/accounts",
        Body::NewHosting,
        202,
        WRITERS,
    ),
    route(
        "GET",
        "/api/hosting/accounts/{hosting}",
        Body::None,
        200,
        READERS,
    ),
    route(
        "POST",
        "/api/hosting/accounts/{hosting}/suspend",
        Body::None,
        202,
        SUPPORT_WRITERS,
    ),
    route(
        "POST",
        "/api/hosting/accounts/{hosting}/unsuspend",
        Body::None,
        202,
        SUPPORT_WRITERS,
    ),
    route(
        "POST",
        "/api/hosting/accounts/{hosting}/terminate",
        Body::None,
        202,
        WRITERS,
    ),
    route("GET", "/api/dns/zones", Body::None, 200, READERS),
    route("POST", "/api/dns/zones", Body::NewZone, 202, WRITERS),
    route("GET", "/api/dns/zones/{zone}", Body::None, 200, READERS),
    route(
        "POST",
        "/api/dns/zones/{zone}/sync",
        Body::None,
        202,
        SUPPORT_WRITERS,
    ),
    route(
        "GET",
        "/api/dns/zones/{zone}/records",
        Body::None,
        200,
        READERS,
    ),
    route(
        "POST",
        "/api/dns/zones/{zone}/records",
        Body::NewRecord,
        202,
        WRITERS,
    ),
    route(
        "PATCH",
        "/api/dns/zones/{zone}/records/{record}",
        Body::RecordPatch,
        202,
        WRITERS,
    ),
    route(
        "DELETE",
        "/api/dns/zones/{zone}/records/{record}",
        Body::None,
        202,
        WRITERS,
    ),
    route("GET", "/api/mail/accounts", Body::None, 200, READERS),
    route("POST", "/api/mail/accounts", Body::NewMailbox, 202, WRITERS),
    route(
        "GET",
        "/api/mail/accounts/{mailbox}",
        Body::None,
        200,
        READERS,
    ),
    route(
        "POST",
        "/api/mail/accounts/{mailbox}/disable",
        Body::None,
        202,
        SUPPORT_WRITERS,
    ),
    route(
        "POST",
        "/api/mail/accounts/{mailbox}/enable",
        Body::None,
        202,
        SUPPORT_WRITERS,
    ),
    route(
        "POST",
        "/api/mail/accounts/{mailbox}/reset-password",
        Body::None,
        202,
        SUPPORT_WRITERS,
    ),
    route("GET", "/api/vps", Body::None, 200, READERS),
    route("POST", "/api/vps", Body::NewVps, 202, WRITERS),
    route("GET", "/api/vps/{vps}", Body::None, 200, READERS),
    route(
        "POST",
        "/api/vps/{vps}/start",
        Body::None,
        202,
        SUPPORT_WRITERS,
    ),
    route(
        "POST",
        "/api/vps/{vps}/stop",
        Body::None,
        202,
        SUPPORT_WRITERS,
    ),
    route(
        "POST",
        "/api/vps/{vps}/reboot",
        Body::None,
        202,
        SUPPORT_WRITERS,
    ),
    route("POST", "/api/vps/{vps}/destroy", Body::None, 202, WRITERS),
];

fn method(name: &str) -> Method {
    Method::from_bytes(name.as_bytes()).unwrap()
}

/// The row a path needs, made by the SUPER_ADMIN: (path, GET path of the row).
async fn prepare(app: &TestApp, root: &str, path: &str) -> (String, Option<String>) {
    if path.contains("{agent}") {
        // Agents have no GET route: revocation is checked through SQL by the fleet tests.
        let server = id_of(&create_server(app, root, &unique("agent-host")).await);
        let pool = app.db.pool().await;
        let agent: uuid::Uuid = sqlx::query_scalar(
            "INSERT INTO agents (tenant_id, server_id)
             SELECT tenant_id, id FROM servers WHERE id = $1::uuid RETURNING id",
        )
        .bind(&server)
        .fetch_one(&pool)
        .await
        .unwrap();
        pool.close().await;
        return (path.replace("{agent}", &agent.to_string()), None);
    }
    if path.contains("{record}") {
        let zone = fixture(app, root, "{zone}").await;
        let record = sql_row(
            app,
            "INSERT INTO dns_records (tenant_id, zone_id, name, type, content, data)
             SELECT tenant_id, id, 'www', 'A', '192.0.2.1', '{\"type\":\"A\",\"address\":\"192.0.2.1\"}'
               FROM dns_zones WHERE id = $1::uuid RETURNING id",
            &zone,
        )
        .await;
        let path = path.replace("{zone}", &zone).replace("{record}", &record);
        return (path, Some(format!("/api/dns/zones/{zone}")));
    }
    const PLACEHOLDERS: [(&str, &str); 15] = [
        ("{user}", "/api/users"),
        ("{server}", "/api/servers"),
        ("{tenant}", "/api/tenants"),
        ("{product}", "/api/products"),
        ("{plan}", "/api/plans"),
        ("{order}", "/api/orders"),
        ("{subscription}", "/api/subscriptions"),
        ("{customer}", "/api/customers"),
        ("{job}", "/api/jobs"),
        ("{backup}", "/api/backups/jobs"),
        ("{hosting}", "/api/hosting/accounts"),
        ("{zone}", "/api/dns/zones"),
        ("{mailbox}", "/api/mail/accounts"),
        ("{vps}", "/api/vps"),
        ("{domain}", "/api/domains"),
    ];
    let Some((placeholder, collection)) = PLACEHOLDERS.into_iter().find(|(p, _)| path.contains(p))
    else {
        return (path.to_owned(), None);
    };
    let id = match placeholder {
        "{user}" => {
            let email = format!("{}@home.example.com", unique("target"));
            id_of(&create_user(app, root, &email, "SUPPORT").await)
        }
        "{server}" => id_of(&create_server(app, root, &unique("target")).await),
        "{tenant}" => id_of(&create_tenant(app, root, &unique("target")).await),
        "{product}" => id_of(&create_product(app, root).await),
        "{plan}" => id_of(&create_plan(app, root).await),
        "{order}" => id_of_key(&place_order(app, root).await, "orderId"),
        "{subscription}" => id_of_key(&place_order(app, root).await, "subscriptionId"),
        "{domain}" => {
            let domain = uuid::Uuid::new_v4().to_string();
            create_domain(app, &domain).await;
            domain
        }
        "{backup}" => {
            let domain = uuid::Uuid::new_v4().to_string();
            create_domain(app, &domain).await;
            let body = json!({ "type": "CLIENT_SITE", "targetId": domain });
            id_of(
                &authed(app, root)
                    .post("/api/backups/jobs", &body)
                    .await
                    .expect(201),
            )
        }
        "{hosting}" | "{zone}" | "{mailbox}" | "{vps}" => fixture(app, root, placeholder).await,
        "{customer}" => {
            let order = id_of_key(&place_order(app, root).await, "orderId");
            let detail = authed(app, root)
                .get(&format!("/api/orders/{order}"))
                .await
                .expect(200);
            id_of_key(&detail, "customerId")
        }
        _ => {
            // A job that has failed, so that a retry is possible.
            let placed = place_order(app, root).await;
            let job = placed["jobs"][0]["id"]
                .as_str()
                .expect("the order has jobs")
                .to_owned();
            let pool = app.db.pool().await;
            sqlx::query(
                "UPDATE jobs SET status = 'FAILED', last_error = 'test' WHERE id = $1::uuid",
            )
            .bind(&job)
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
            job
        }
    };
    (
        path.replace(placeholder, &id),
        Some(format!("{collection}/{id}")),
    )
}

/// One row of the tenant `home` for a placeholder, made in SQL (the API would queue jobs):
/// an ACTIVE hosting account, a zone, an ACTIVE mailbox or a VPS. Its id.
async fn fixture(app: &TestApp, root: &str, placeholder: &str) -> String {
    let domain = uuid::Uuid::new_v4().to_string();
    create_domain(app, &domain).await;
    let server = id_of(&create_server(app, root, &unique("fixture")).await);
    let sql = match placeholder {
        "{hosting}" => {
            "INSERT INTO hosting_accounts (tenant_id, domain_id, server_id, system_user, home_dir,
                                           php_version, status)
             SELECT d.tenant_id, d.id, $2::uuid, 'u_' || substr(md5(d.name), 1, 8),
                    '/home/x', '8.2', 'ACTIVE' FROM domains d WHERE d.id = $1::uuid RETURNING id"
        }
        "{zone}" => {
            "INSERT INTO dns_zones (tenant_id, domain_id)
             SELECT tenant_id, id FROM domains WHERE id = $1::uuid AND $2::uuid IS NOT NULL
             RETURNING id"
        }
        "{mailbox}" => {
            "INSERT INTO mail_accounts (tenant_id, domain_id, email, status)
             SELECT tenant_id, id, 'info@' || name, 'ACTIVE' FROM domains
              WHERE id = $1::uuid AND $2::uuid IS NOT NULL RETURNING id"
        }
        _ => {
            "INSERT INTO vps_instances (tenant_id, domain_id, server_id, name)
             SELECT tenant_id, id, $2::uuid, 'vps-' || substr(md5(name), 1, 8) FROM domains
              WHERE id = $1::uuid RETURNING id"
        }
    };
    let pool = app.db.pool().await;
    let id: uuid::Uuid = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(&domain)
        .bind(&server)
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    id.to_string()
}

/// The id of the row `sql` (with `$1` = `arg`) inserts.
async fn sql_row(app: &TestApp, sql: &'static str, arg: &str) -> String {
    let pool = app.db.pool().await;
    let id: uuid::Uuid = sqlx::query_scalar(sql)
        .bind(arg)
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    id.to_string()
}

/// A domain of the tenant `home` with the given id (backups target domains).
async fn create_domain(app: &TestApp, id: &str) {
    let pool = app.db.pool().await;
    sqlx::query(
        "INSERT INTO domains (id, tenant_id, name)
         SELECT $1::uuid, id, $2 FROM tenants WHERE slug = 'home'",
    )
    .bind(id)
    .bind(format!("{}.example.com", unique("backup")))
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
}

/// A domain of the tenant `home` named `name`.
async fn create_named_domain(app: &TestApp, name: &str) {
    let pool = app.db.pool().await;
    sqlx::query(
        "INSERT INTO domains (tenant_id, name) SELECT id, $1 FROM tenants WHERE slug = 'home'",
    )
    .bind(name)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
}

fn id_of(row: &Value) -> String {
    id_of_key(row, "id")
}

fn id_of_key(row: &Value, key: &str) -> String {
    row[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {row}"))
        .to_owned()
}

async fn create_product(app: &TestApp, root: &str) -> Value {
    let body = json!({ "name": "Hosting", "slug": unique("product"), "type": "SHARED_HOSTING" });
    authed(app, root)
        .post("/api/products", &body)
        .await
        .expect(201)
}

async fn create_plan(app: &TestApp, root: &str) -> Value {
    let product = create_product(app, root).await;
    let body = plan_body(&id_of(&product), &unique("plan"));
    authed(app, root)
        .post("/api/plans", &body)
        .await
        .expect(201)
}

fn plan_body(product_id: &str, slug: &str) -> Value {
    json!({
        "productId": product_id, "name": "Starter", "slug": slug,
        "priceMonthlyCents": 149, "priceYearlyCents": 1490, "limitsJson": { "emails": 1 },
    })
}

/// A paid order from the marketing backend, on a fresh plan and domain.
async fn place_order(app: &TestApp, root: &str) -> Value {
    place_order_in(app, root, "home").await
}

async fn place_order_in(app: &TestApp, root: &str, tenant: &str) -> Value {
    let plan = create_plan(app, root).await;
    let body = json!({
        "tenantSlug": tenant,
        "customer": { "email": format!("{}@buyer.example.com", unique("c")) },
        "planSlug": plan["slug"],
        "totalAmountCents": 149,
        "currency": "usd",
        "stripePaymentIntentId": unique("pi"),
        "metadata": { "domain": format!("{}.example.com", unique("d")) },
    });
    anon(app)
        .authorization(&format!("Bearer {}", mpanel_tests::panel::INTERNAL_KEY))
        .post("/api/orders", &body)
        .await
        .expect(201)
}

/// The body to send, and the SQL that counts the row it would create (for refused POSTs).
fn body_for(body: Body) -> (Option<Value>, Option<(String, String)>) {
    match body {
        Body::None => (None, None),
        Body::NewUser => {
            let email = format!("{}@home.example.com", unique("new"));
            (
                Some(user_body(&email, "SUPPORT")),
                Some(("SELECT count(*) FROM users WHERE email = $1".into(), email)),
            )
        }
        Body::NewServer => {
            let name = unique("new-server");
            (
                Some(server_body(&name)),
                Some(("SELECT count(*) FROM servers WHERE name = $1".into(), name)),
            )
        }
        Body::NewTenant => {
            let slug = unique("new-tenant");
            (
                Some(tenant_body(&slug)),
                Some(("SELECT count(*) FROM tenants WHERE slug = $1".into(), slug)),
            )
        }
        Body::NewProduct => {
            let slug = unique("new-product");
            (
                Some(json!({ "name": "New", "slug": slug, "type": "DNS" })),
                Some(("SELECT count(*) FROM products WHERE slug = $1".into(), slug)),
            )
        }
        // The product id is filled in by the matrix (it needs a row made first).
        Body::NewPlan => {
            let slug = unique("new-plan");
            (
                Some(plan_body("{product}", &slug)),
                Some(("SELECT count(*) FROM plans WHERE slug = $1".into(), slug)),
            )
        }
        Body::ProductPatch => (Some(json!({"name": unique("Renamed")})), None),
        Body::PlanPatch => (Some(json!({"priceMonthlyCents": 199})), None),
        Body::CancelOrder => (Some(json!({"status": "CANCELLED", "reason": "test"})), None),
        Body::CancelNow => (None, None),
        Body::Policy => (
            Some(json!({"gracePeriodSecs": 86_400, "warningSecs": 3_600,
                        "retentionSecs": 604_800, "keepZoneOnTermination": true})),
            None,
        ),
        Body::UserPatch => (Some(json!({"displayName": unique("Renamed")})), None),
        Body::ServerPatch => (Some(json!({"location": unique("rack")})), None),
        Body::TenantPatch => (Some(json!({"name": unique("Renamed")})), None),
        // The domain with this id is made by the matrix right before the call.
        Body::NewBackup => {
            let domain = uuid::Uuid::new_v4().to_string();
            (
                Some(json!({ "type": "CLIENT_SITE", "targetId": domain })),
                Some((
                    "SELECT count(*) FROM backup_jobs WHERE target_id = $1::uuid".into(),
                    domain,
                )),
            )
        }
        Body::NewHosting | Body::NewZone => {
            let domain = format!("{}.example.org", unique("site"));
            (
                Some(json!({ "domain": domain })),
                Some((
                    "SELECT count(*) FROM domains WHERE name = $1".into(),
                    domain,
                )),
            )
        }
        Body::NewRecord => {
            let name = unique("rec");
            (
                Some(json!({ "name": name, "data": { "type": "A", "address": "192.0.2.7" } })),
                Some((
                    "SELECT count(*) FROM dns_records WHERE name = $1".into(),
                    name,
                )),
            )
        }
        Body::RecordPatch => (Some(json!({ "ttl": 600 })), None),
        // The domain is made by the matrix right before the call.
        Body::NewMailbox => {
            let email = format!("{}@{}.example.org", unique("box"), unique("mailhost"));
            (
                Some(json!({ "email": email })),
                Some((
                    "SELECT count(*) FROM mail_accounts WHERE email = $1".into(),
                    email,
                )),
            )
        }
        // The server is made by the matrix right before the call.
        Body::NewVps => {
            let name = unique("vps");
            (
                Some(json!({ "name": name, "serverId": "{server}" })),
                Some((
                    "SELECT count(*) FROM vps_instances WHERE name = $1".into(),
                    name,
                )),
            )
        }
    }
}

#[tokio::test]
async fn role_matrix_matches_the_permission_table() {
    // No worker: jobs made for the matrix stay as the test leaves them.
    let app = TestApp::spawn_with(&[("RUN_WORKER", "false")]).await;
    let org = api::org_with_all_roles(&app, "home").await;
    let root = org.super_admin().token().to_owned();
    let pool = app.db.pool().await;

    let mut mismatches = Vec::new();
    for route in MATRIX {
        // Every route needs a token.
        let (path, _) = prepare(&app, &root, route.path).await;
        let (body, _) = body_for(route.body);
        let reply = anon(&app)
            .send(method(route.method), &path, body.as_ref())
            .await;
        if reply.status != 401 || reply.code() != "unauthorized" {
            mismatches.push(format!(
                "{} {} as anonymous: expected 401 unauthorized, got {} {}",
                route.method, route.path, reply.status, reply.body
            ));
        }

        for role in api::ROLES {
            let caller = org.by_role(role);
            let (path, row) = prepare(&app, &root, route.path).await;
            let before = match &row {
                Some(row) => Some(authed(&app, &root).get(row).await.expect(200)),
                None => None,
            };
            let (mut body, created) = body_for(route.body);
            if let Some(b) = body.as_mut().filter(|b| b["productId"] == "{product}") {
                b["productId"] = json!(id_of(&create_product(&app, &root).await));
            }
            if let Some(b) = body
                .as_ref()
                .filter(|_| matches!(route.body, Body::NewBackup))
            {
                create_domain(&app, b["targetId"].as_str().unwrap()).await;
            }
            if let Some(b) = body
                .as_ref()
                .filter(|_| matches!(route.body, Body::NewMailbox))
            {
                let domain = b["email"]
                    .as_str()
                    .unwrap()
                    .split('@')
                    .nth(1)
                    .unwrap()
                    .to_owned();
                create_named_domain(&app, &domain).await;
            }
            if let Some(b) = body.as_mut().filter(|b| b["serverId"] == "{server}") {
                b["serverId"] = json!(id_of(&create_server(&app, &root, &unique("vm-host")).await));
            }
            let reply = authed(&app, caller.token())
                .send(method(route.method), &path, body.as_ref())
                .await;

            let allowed = route.allowed.contains(&role);
            let (want_status, want) = if allowed {
                (route.ok, format!("{}", route.ok))
            } else {
                (403, "403 forbidden".to_owned())
            };
            let right = reply.status == want_status && (allowed || reply.code() == "forbidden");
            if !right {
                mismatches.push(format!(
                    "{} {} as {role}: expected {want}, got {} {}",
                    route.method, route.path, reply.status, reply.body
                ));
                continue;
            }
            if allowed {
                let named = reply.body["id"].as_str().or(reply.body["token"].as_str());
                if route.ok == 201 && named.is_none() {
                    mismatches.push(format!(
                        "{} {} as {role}: 201 without an id: {}",
                        route.method, route.path, reply.body
                    ));
                }
                continue;
            }
            // A refused call changed nothing.
            if let (Some(row), Some(before)) = (&row, &before) {
                let after = authed(&app, &root).get(row).await.expect(200);
                if &after != before {
                    mismatches.push(format!(
                        "{} {} as {role}: refused but changed the row: {before} -> {after}",
                        route.method, route.path
                    ));
                }
            }
            if let Some((sql, key)) = created {
                let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .bind(&key)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                if count != 0 {
                    mismatches.push(format!(
                        "{} {} as {role}: refused but created {key}",
                        route.method, route.path
                    ));
                }
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches with the permission table:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );

    pool.close().await;
    app.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Tenant isolation
// ---------------------------------------------------------------------------------------------

fn ids(page: &Value) -> BTreeSet<String> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("a paged list: {page}"))
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

struct Fleet {
    org: Org,
    user_ids: Vec<String>,
    server_ids: Vec<String>,
}

/// A tenant made through the CLI with a SUPER_ADMIN, an ADMIN and a SUPPORT, two live servers
/// and a deleted one (named like the other tenant's, which is allowed).
async fn fleet(app: &TestApp, slug: &str) -> Fleet {
    let org = api::org_with_roles(app, slug, &["SUPER_ADMIN", "ADMIN", "SUPPORT"]).await;
    let root = org.super_admin().token().to_owned();
    let mut server_ids = Vec::new();
    for name in ["web-1", "mail-1", "old-1"] {
        let server = create_server(app, &root, name).await;
        server_ids.push(server["id"].as_str().unwrap().to_owned());
    }
    let reply = authed(app, &root)
        .delete(&format!("/api/servers/{}", server_ids[2]))
        .await;
    assert_eq!(reply.status, 204, "{reply:?}");
    let user_ids = org.members.iter().map(|m| m.id.clone()).collect();
    Fleet {
        org,
        user_ids,
        server_ids,
    }
}

#[tokio::test]
async fn tenants_never_see_each_others_rows() {
    let app = TestApp::spawn().await;
    let alpha = fleet(&app, "alpha").await;
    let beta = fleet(&app, "beta").await;
    let pool = app.db.pool().await;
    let snapshot = |pool: PgPool| async move {
        let users: Vec<(uuid::Uuid, String, String, bool)> =
            sqlx::query_as("SELECT id, display_name, role::text, is_active FROM users ORDER BY id")
                .fetch_all(&pool)
                .await
                .unwrap();
        let servers: Vec<(uuid::Uuid, String, Option<String>, bool, bool)> = sqlx::query_as(
            "SELECT id, name, location, is_active, deleted_at IS NULL FROM servers ORDER BY id",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        format!("{users:?}\n{servers:?}")
    };
    let before = snapshot(pool.clone()).await;

    let mut leaks = Vec::new();
    for (mine, theirs) in [(&alpha, &beta), (&beta, &alpha)] {
        for caller in [mine.org.super_admin(), mine.org.admin()] {
            let who = format!("{} of {}", caller.role, mine.org.slug);
            let client = authed(&app, caller.token());
            let mut id_routes = Vec::new();
            for id in &theirs.user_ids {
                id_routes.push((Method::GET, format!("/api/users/{id}"), None));
                id_routes.push((
                    Method::PATCH,
                    format!("/api/users/{id}"),
                    Some(json!({"displayName": "Hijacked"})),
                ));
                id_routes.push((Method::DELETE, format!("/api/users/{id}"), None));
            }
            for id in &theirs.server_ids {
                id_routes.push((Method::GET, format!("/api/servers/{id}"), None));
                id_routes.push((
                    Method::PATCH,
                    format!("/api/servers/{id}"),
                    Some(json!({"location": "hijacked"})),
                ));
                id_routes.push((Method::DELETE, format!("/api/servers/{id}"), None));
            }
            for (path, patch) in [
                ("/api/users/not-a-uuid", json!({"displayName": "x"})),
                ("/api/servers/12345", json!({"location": "x"})),
            ] {
                id_routes.push((Method::GET, path.to_owned(), None));
                id_routes.push((Method::PATCH, path.to_owned(), Some(patch)));
                id_routes.push((Method::DELETE, path.to_owned(), None));
            }
            for (m, path, body) in id_routes {
                let reply = client.send(m.clone(), &path, body.as_ref()).await;
                if reply.status != 404 || reply.code() != "not_found" {
                    leaks.push(format!(
                        "{who}: {m} {path}: expected 404 not_found, got {} {}",
                        reply.status, reply.body
                    ));
                }
            }

            // Lists hold only the caller's own rows, whatever the filters.
            let theirs_ids: BTreeSet<String> = theirs
                .user_ids
                .iter()
                .chain(&theirs.server_ids)
                .cloned()
                .collect();
            for path in [
                "/api/users".to_owned(),
                format!("/api/users?q={}", theirs.org.slug),
                "/api/users?isActive=true".to_owned(),
                "/api/servers".to_owned(),
                "/api/servers?includeDeleted=true".to_owned(),
                "/api/servers?q=web".to_owned(),
                "/api/servers?role=WEB".to_owned(),
            ] {
                let page = client.get(&path).await.expect(200);
                let listed = ids(&page);
                if !listed.is_disjoint(&theirs_ids) {
                    leaks.push(format!("{who}: GET {path} lists the other tenant's rows"));
                }
                for item in page["items"].as_array().unwrap() {
                    if item["tenantId"] != mine.org.tenant_id.as_str() {
                        leaks.push(format!("{who}: GET {path} lists {item}"));
                    }
                }
            }
            let own_servers = ids(&client
                .get("/api/servers?includeDeleted=true")
                .await
                .expect(200));
            let want: BTreeSet<String> = mine.server_ids.iter().cloned().collect();
            if own_servers != want {
                leaks.push(format!(
                    "{who}: own servers (includeDeleted) {own_servers:?}, want {want:?}"
                ));
            }

            // The audit trail too.
            let page = client.get("/api/audit").await.expect(200);
            for item in page["items"].as_array().unwrap() {
                if item["tenantId"] != mine.org.tenant_id.as_str() {
                    leaks.push(format!("{who}: GET /api/audit lists {item}"));
                }
            }
            let page = client
                .get(&format!("/api/audit?userId={}", theirs.user_ids[0]))
                .await
                .expect(200);
            if !page["items"].as_array().unwrap().is_empty() {
                leaks.push(format!(
                    "{who}: GET /api/audit?userId=<other tenant's user> lists {page}"
                ));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "{} tenant isolation failures:\n{}",
        leaks.len(),
        leaks.join("\n")
    );
    assert_eq!(
        snapshot(pool.clone()).await,
        before,
        "cross-tenant calls changed rows"
    );

    pool.close().await;
    app.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Users
// ---------------------------------------------------------------------------------------------

const USER_FIELDS: &[&str] = &[
    "id",
    "tenantId",
    "email",
    "displayName",
    "role",
    "isActive",
    "lastLoginAt",
    "createdAt",
    "updatedAt",
];

#[track_caller]
fn assert_user_json(user: &Value) {
    for field in USER_FIELDS {
        assert!(
            user.get(*field).is_some(),
            "user JSON lacks {field}: {user}"
        );
    }
    let text = user.to_string().to_lowercase();
    assert!(
        !text.contains("password") && !text.contains("argon2"),
        "user JSON exposes a password: {user}"
    );
}

/// Audit rows of `action` by `actor`, from 127.0.0.1 with the helpers' User-Agent.
async fn audit_count(pool: &PgPool, action: &str, actor: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM audit_logs
          WHERE action = $1 AND user_id = $2 AND ip_address = '127.0.0.1' AND user_agent = $3",
    )
    .bind(action)
    .bind(uuid::Uuid::parse_str(actor).unwrap())
    .bind(USER_AGENT)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Like `audit_count` for `tenant.*` rows, which the panel files under the tenant acted on:
/// the actor (a user of another tenant) is named either in `user_id` or in `details.by`.
async fn tenant_audit_count(pool: &PgPool, action: &str, actor: &str, tenant: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM audit_logs
          WHERE action = $1 AND (user_id = $2 OR details->>'by' = $2::text)
            AND tenant_id = $3 AND ip_address = '127.0.0.1' AND user_agent = $4",
    )
    .bind(action)
    .bind(uuid::Uuid::parse_str(actor).unwrap())
    .bind(uuid::Uuid::parse_str(tenant).unwrap())
    .bind(USER_AGENT)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn users_crud_filters_and_audit() {
    let app = TestApp::spawn().await;
    let org = api::org_with_roles(&app, "home", &["SUPER_ADMIN", "ADMIN"]).await;
    let admin = org.admin();
    let client = authed(&app, admin.token());

    let created = client
        .post(
            "/api/users",
            &json!({
                "email": "jane@home.example.com",
                "displayName": "Jane",
                "role": "SUPPORT",
                "password": PASSWORD,
            }),
        )
        .await
        .expect(201);
    assert_user_json(&created);
    assert_eq!(created["email"], "jane@home.example.com");
    assert_eq!(created["displayName"], "Jane");
    assert_eq!(created["role"], "SUPPORT");
    assert_eq!(created["tenantId"], org.tenant_id.as_str());
    assert_eq!(created["isActive"], true);
    assert_eq!(created["lastLoginAt"], Value::Null);
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("/api/users/{id}");

    let fetched = client.get(&path).await.expect(200);
    assert_user_json(&fetched);
    assert_eq!(fetched["id"], created["id"]);
    assert_eq!(fetched["email"], created["email"]);

    // The same e-mail again.
    client
        .post(
            "/api/users",
            &user_body("jane@home.example.com", "READ_ONLY"),
        )
        .await
        .assert_error(409, "conflict");

    // PATCH several fields, then the password.
    let updated = client
        .patch(
            &path,
            &json!({"displayName": "Jane Doe", "role": "READ_ONLY"}),
        )
        .await
        .expect(200);
    assert_user_json(&updated);
    assert_eq!(updated["displayName"], "Jane Doe");
    assert_eq!(updated["role"], "READ_ONLY");
    assert_eq!(updated["email"], "jane@home.example.com");
    login(&app, "jane@home.example.com", PASSWORD).await;
    client
        .patch(&path, &json!({"password": "a brand new passphrase"}))
        .await
        .expect(200);
    login(&app, "jane@home.example.com", "a brand new passphrase").await;
    try_login(&app, "jane@home.example.com", PASSWORD)
        .await
        .assert_error(401, "unauthorized");

    // Filters and paging.
    create_user(&app, admin.token(), "bob@home.example.com", "BILLING").await;
    let page = client.get("/api/users?role=READ_ONLY").await.expect(200);
    assert_eq!(ids(&page), BTreeSet::from([id.clone()]), "{page}");
    assert_eq!(page["total"], 1);
    let page = client.get("/api/users?q=bob").await.expect(200);
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["items"][0]["email"], "bob@home.example.com");
    let page = client.get("/api/users?page=1&pageSize=2").await.expect(200);
    assert_eq!(page["items"].as_array().unwrap().len(), 2, "{page}");
    assert_eq!(page["total"], 4, "super admin, admin, jane, bob: {page}");
    assert_eq!(page["page"], 1);
    assert_eq!(page["pageSize"], 2);
    let second = client.get("/api/users?page=2&pageSize=2").await.expect(200);
    assert_eq!(second["items"].as_array().unwrap().len(), 2, "{second}");
    assert!(ids(&page).is_disjoint(&ids(&second)), "pages overlap");
    for item in page["items"].as_array().unwrap() {
        assert_user_json(item);
    }

    // DELETE deactivates.
    let reply = client.delete(&path).await;
    assert_eq!(reply.status, 204, "{reply:?}");
    let gone = client.get(&path).await.expect(200);
    assert_eq!(gone["isActive"], false, "{gone}");
    let page = client.get("/api/users?isActive=false").await.expect(200);
    assert_eq!(ids(&page), BTreeSet::from([id.clone()]), "{page}");
    let page = client.get("/api/users?isActive=true").await.expect(200);
    assert!(!ids(&page).contains(&id), "{page}");
    try_login(&app, "jane@home.example.com", "a brand new passphrase")
        .await
        .assert_error(401, "unauthorized");

    let pool = app.db.pool().await;
    assert_eq!(audit_count(&pool, "user.create", &admin.id).await, 2);
    assert_eq!(audit_count(&pool, "user.update", &admin.id).await, 2);
    assert_eq!(audit_count(&pool, "user.deactivate", &admin.id).await, 1);
    pool.close().await;
    app.cleanup().await;
}

#[tokio::test]
async fn user_input_is_validated_naming_the_field() {
    let app = TestApp::spawn().await;
    let org = api::org_with_roles(&app, "home", &["SUPER_ADMIN", "ADMIN"]).await;
    let client = authed(&app, org.admin().token());
    let good = user_body("new@home.example.com", "SUPPORT");
    let with = |key: &str, value: Value| {
        let mut b = good.clone();
        b[key] = value;
        b
    };
    let without = |key: &str| {
        let mut b = good.clone();
        b.as_object_mut().unwrap().remove(key);
        b
    };

    for (body, field) in [
        (with("password", json!("eleven char")), "password"),
        (without("password"), "password"),
        (with("email", json!("not-an-email")), "email"),
        (without("email"), "email"),
        (with("role", json!("ROOT")), "role"),
        (without("displayName"), "displayName"),
        (with("isAdmin", json!(true)), "isAdmin"),
    ] {
        client
            .post("/api/users", &body)
            .await
            .assert_invalid_field(field);
    }
    let user = client.post("/api/users", &good).await.expect(201);
    let path = format!("/api/users/{}", user["id"].as_str().unwrap());
    for (body, field) in [
        (json!({"password": "too short"}), "password"),
        (json!({"role": "ROOT"}), "role"),
        (json!({"isActive": "yes"}), "isActive"),
        (json!({"email": "x@home.example.com"}), "email"),
    ] {
        client.patch(&path, &body).await.assert_invalid_field(field);
    }
    for query in ["pageSize=0", "pageSize=abc"] {
        client
            .get(&format!("/api/users?{query}"))
            .await
            .assert_invalid_field("pageSize");
    }
    client
        .get("/api/users?role=ROOT")
        .await
        .assert_invalid_field("role");

    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.db.pool().await)
        .await
        .unwrap();
    assert_eq!(count, 3, "only the valid POST created a user");
    app.cleanup().await;
}

#[tokio::test]
async fn admin_cannot_create_change_or_grant_super_admin() {
    let app = TestApp::spawn().await;
    let org = api::org_with_roles(&app, "home", &["SUPER_ADMIN", "ADMIN", "SUPPORT"]).await;
    let root = org.super_admin();
    let admin = authed(&app, org.admin().token());
    let support_path = format!("/api/users/{}", org.by_role("SUPPORT").id);
    let root_path = format!("/api/users/{}", root.id);
    let root_before = authed(&app, root.token()).get(&root_path).await.expect(200);

    admin
        .post(
            "/api/users",
            &user_body("sneaky@home.example.com", "SUPER_ADMIN"),
        )
        .await
        .assert_error(403, "forbidden");
    admin
        .patch(&support_path, &json!({"role": "SUPER_ADMIN"}))
        .await
        .assert_error(403, "forbidden");
    for body in [
        json!({"displayName": "Demoted"}),
        json!({"role": "READ_ONLY"}),
        json!({"isActive": false}),
        json!({"password": "taken over by the admin"}),
    ] {
        admin
            .patch(&root_path, &body)
            .await
            .assert_error(403, "forbidden");
    }
    admin
        .delete(&root_path)
        .await
        .assert_error(403, "forbidden");

    // Nothing changed.
    let root_after = authed(&app, root.token()).get(&root_path).await.expect(200);
    assert_eq!(root_after, root_before);
    let support = authed(&app, root.token())
        .get(&support_path)
        .await
        .expect(200);
    assert_eq!(support["role"], "SUPPORT");
    login(&app, &root.email, PASSWORD).await;
    let sneaky: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users WHERE email = 'sneaky@home.example.com'")
            .fetch_one(&app.db.pool().await)
            .await
            .unwrap();
    assert_eq!(sneaky, 0);

    // An ADMIN may manage non-super roles, including other ADMINs.
    let peer = admin
        .post("/api/users", &user_body("peer@home.example.com", "ADMIN"))
        .await
        .expect(201);
    let peer_path = format!("/api/users/{}", peer["id"].as_str().unwrap());
    admin
        .patch(&peer_path, &json!({"role": "SUPPORT"}))
        .await
        .expect(200);

    // A SUPER_ADMIN may create and grant SUPER_ADMIN.
    let root_client = authed(&app, root.token());
    root_client
        .post(
            "/api/users",
            &user_body("second-root@home.example.com", "SUPER_ADMIN"),
        )
        .await
        .expect(201);
    let granted = root_client
        .patch(&support_path, &json!({"role": "SUPER_ADMIN"}))
        .await
        .expect(200);
    assert_eq!(granted["role"], "SUPER_ADMIN");
    app.cleanup().await;
}

#[tokio::test]
async fn nobody_deactivates_or_changes_the_role_of_themselves() {
    let app = TestApp::spawn().await;
    let org = api::org_with_roles(&app, "home", &["SUPER_ADMIN", "ADMIN"]).await;

    for me in [org.super_admin(), org.admin()] {
        let client = authed(&app, me.token());
        let path = format!("/api/users/{}", me.id);
        let who = &me.role;
        client.delete(&path).await.assert_error(409, "conflict");
        client
            .patch(&path, &json!({"isActive": false}))
            .await
            .assert_error(409, "conflict");
        client
            .patch(&path, &json!({"role": "READ_ONLY"}))
            .await
            .assert_error(409, "conflict");

        // Other changes to oneself are fine.
        let renamed = client
            .patch(&path, &json!({"displayName": format!("{who} renamed")}))
            .await
            .expect(200);
        assert_eq!(renamed["role"], me.role.as_str());
        assert_eq!(renamed["isActive"], true);
        api::me(&app, me.token()).await.expect(200);
    }
    app.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Tenants
// ---------------------------------------------------------------------------------------------

#[track_caller]
fn assert_tenant_json(tenant: &Value) {
    for field in ["id", "name", "slug", "isActive", "createdAt", "updatedAt"] {
        assert!(
            tenant.get(field).is_some(),
            "tenant JSON lacks {field}: {tenant}"
        );
    }
}

#[tokio::test]
async fn tenants_crud_conflicts_and_first_admin() {
    let app = TestApp::spawn().await;
    let org = api::org_with_roles(&app, "home", &["SUPER_ADMIN"]).await;
    let root = org.super_admin();
    let client = authed(&app, root.token());

    let page = client.get("/api/tenants").await.expect(200);
    assert!(ids(&page).contains(&org.tenant_id), "{page}");
    assert_eq!(page["total"], 1, "{page}");
    assert_eq!(page["page"], 1, "{page}");
    assert!(page["pageSize"].as_i64().is_some_and(|n| n > 0), "{page}");

    // Without a first admin.
    let bare = client
        .post("/api/tenants", &json!({"name": "Bare", "slug": "bare"}))
        .await
        .expect(201);
    assert_tenant_json(&bare);
    assert_eq!(bare["name"], "Bare");
    assert_eq!(bare["slug"], "bare");
    assert_eq!(bare["isActive"], true);
    assert_eq!(bare["admin"], Value::Null, "{bare}");

    // With one, who can log in to the new tenant.
    let acme = client
        .post(
            "/api/tenants",
            &json!({
                "name": "Acme",
                "slug": "acme",
                "admin": {
                    "email": "admin@acme.example.com",
                    "displayName": "Acme Admin",
                    "password": PASSWORD,
                    "role": "ADMIN",
                },
            }),
        )
        .await
        .expect(201);
    assert_tenant_json(&acme);
    let acme_id = acme["id"].as_str().unwrap().to_owned();
    let first = &acme["admin"];
    assert_user_json(first);
    assert_eq!(first["email"], "admin@acme.example.com");
    assert_eq!(first["role"], "ADMIN");
    assert_eq!(first["tenantId"], acme_id.as_str());
    let acme_admin = login(&app, "admin@acme.example.com", PASSWORD).await;
    assert_eq!(acme_admin.user["tenantId"], acme_id.as_str());

    // Conflicts and validation.
    client
        .post("/api/tenants", &json!({"name": "Again", "slug": "acme"}))
        .await
        .assert_error(409, "conflict");
    client
        .post("/api/tenants", &json!({"name": "Bad", "slug": "Bad Slug"}))
        .await
        .assert_invalid_field("slug");
    client
        .post("/api/tenants", &json!({"slug": "nameless"}))
        .await
        .assert_invalid_field("name");
    client
        .post(
            "/api/tenants",
            &json!({
                "name": "Weak",
                "slug": "weak",
                "admin": {
                    "email": "admin@weak.example.com",
                    "displayName": "Weak",
                    "password": "short",
                    "role": "ADMIN",
                },
            }),
        )
        .await
        .assert_invalid_field("admin.password");
    client
        .post(
            "/api/tenants",
            &json!({
                "name": "Taken",
                "slug": "taken",
                "admin": {
                    "email": "admin@acme.example.com",
                    "displayName": "Dup",
                    "password": PASSWORD,
                    "role": "ADMIN",
                },
            }),
        )
        .await
        .assert_error(409, "conflict");
    let slugs: Vec<String> = sqlx::query_scalar("SELECT slug FROM tenants ORDER BY slug")
        .fetch_all(&app.db.pool().await)
        .await
        .unwrap();
    assert_eq!(
        slugs,
        ["acme", "bare", "home"],
        "failed creates left nothing"
    );

    // Read, update, list.
    let path = format!("/api/tenants/{acme_id}");
    let fetched = client.get(&path).await.expect(200);
    assert_tenant_json(&fetched);
    assert_eq!(fetched["slug"], "acme");
    let renamed = client
        .patch(&path, &json!({"name": "Acme Corp"}))
        .await
        .expect(200);
    assert_eq!(renamed["name"], "Acme Corp");
    assert_eq!(renamed["slug"], "acme");
    let page = client.get("/api/tenants").await.expect(200);
    assert_eq!(page["total"], 3, "{page}");
    client
        .patch(&path, &json!({"slug": "renamed"}))
        .await
        .assert_invalid_field("slug");

    // PATCH can deactivate and reactivate another tenant.
    let bare_path = format!("/api/tenants/{}", bare["id"].as_str().unwrap());
    let off = client
        .patch(&bare_path, &json!({"isActive": false}))
        .await
        .expect(200);
    assert_eq!(off["isActive"], false, "{off}");
    let on = client
        .patch(&bare_path, &json!({"isActive": true}))
        .await
        .expect(200);
    assert_eq!(on["isActive"], true, "{on}");

    // Unknown ids.
    for missing in [
        format!("/api/tenants/{}", uuid::Uuid::new_v4()),
        "/api/tenants/not-a-uuid".to_owned(),
    ] {
        client.get(&missing).await.assert_error(404, "not_found");
    }

    // One's own tenant cannot be deactivated.
    let own = format!("/api/tenants/{}", org.tenant_id);
    client.delete(&own).await.assert_error(409, "conflict");
    client
        .patch(&own, &json!({"isActive": false}))
        .await
        .assert_error(409, "conflict");

    // DELETE deactivates.
    let reply = client.delete(&path).await;
    assert_eq!(reply.status, 204, "{reply:?}");
    let gone = client.get(&path).await.expect(200);
    assert_eq!(gone["isActive"], false, "{gone}");
    try_login(&app, "admin@acme.example.com", PASSWORD)
        .await
        .assert_error(401, "unauthorized");

    let pool = app.db.pool().await;
    let bare_id = bare["id"].as_str().unwrap();
    for (action, tenant, want) in [
        ("tenant.create", bare_id, 1),
        ("tenant.create", acme_id.as_str(), 1),
        ("tenant.update", acme_id.as_str(), 1),
        ("tenant.deactivate", acme_id.as_str(), 1),
    ] {
        assert_eq!(
            tenant_audit_count(&pool, action, &root.id, tenant).await,
            want,
            "{action} of {tenant}"
        );
    }
    let rejected: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_logs WHERE details->>'slug' IN ('taken', 'weak', 'nameless')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(rejected, 0, "refused creates are not audited");
    pool.close().await;
    app.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------------

const SERVER_FIELDS: &[&str] = &[
    "id",
    "tenantId",
    "name",
    "role",
    "ipAddress",
    "internalIp",
    "location",
    "isActive",
    "agentOnline",
    "agentVersion",
    "lastSeenAt",
    "deletedAt",
    "createdAt",
    "updatedAt",
];

#[track_caller]
fn assert_server_json(server: &Value) {
    for field in SERVER_FIELDS {
        assert!(
            server.get(*field).is_some(),
            "server JSON lacks {field}: {server}"
        );
    }
}

#[tokio::test]
async fn servers_crud_soft_delete_and_audit() {
    let app = TestApp::spawn().await;
    let org = api::org_with_roles(&app, "home", &["SUPER_ADMIN", "ADMIN"]).await;
    let admin = org.admin();
    let client = authed(&app, admin.token());

    let web = client
        .post(
            "/api/servers",
            &json!({
                "name": "srv1",
                "role": "WEB",
                "ipAddress": "203.0.113.10",
                "internalIp": "10.0.0.10",
                "location": "home-lab",
            }),
        )
        .await
        .expect(201);
    assert_server_json(&web);
    assert_eq!(web["tenantId"], org.tenant_id.as_str());
    assert_eq!(web["name"], "srv1");
    assert_eq!(web["role"], "WEB");
    assert_eq!(web["ipAddress"], "203.0.113.10");
    assert_eq!(web["internalIp"], "10.0.0.10");
    assert_eq!(web["location"], "home-lab");
    assert_eq!(web["isActive"], true);
    assert_eq!(web["agentOnline"], false);
    assert_eq!(web["agentVersion"], Value::Null);
    assert_eq!(web["lastSeenAt"], Value::Null);
    assert_eq!(web["deletedAt"], Value::Null);

    // Optional fields may be left out; IPv6 is an IP address too.
    let dns = client
        .post(
            "/api/servers",
            &json!({"name": "dns-core", "role": "DNS", "ipAddress": "2001:db8::53"}),
        )
        .await
        .expect(201);
    assert_eq!(dns["internalIp"], Value::Null);
    assert_eq!(dns["location"], Value::Null);

    let id = web["id"].as_str().unwrap().to_owned();
    let path = format!("/api/servers/{id}");
    assert_eq!(client.get(&path).await.expect(200), web);

    // Conflicts and validation.
    client
        .post("/api/servers", &server_body("srv1"))
        .await
        .assert_error(409, "conflict");
    let mut bad = server_body("srv2");
    for (key, value, field) in [
        ("ipAddress", json!("999.1.1.1"), "ipAddress"),
        ("ipAddress", json!("not-an-ip"), "ipAddress"),
        ("internalIp", json!("10.0.0"), "internalIp"),
        ("role", json!("TOASTER"), "role"),
        ("name", json!(""), "name"),
    ] {
        let saved = bad[key].clone();
        bad[key] = value;
        client
            .post("/api/servers", &bad)
            .await
            .assert_invalid_field(field);
        bad[key] = saved;
    }
    client
        .patch(&path, &json!({"ipAddress": "1.2.3"}))
        .await
        .assert_invalid_field("ipAddress");
    client
        .patch(&path, &json!({"name": "dns-core"}))
        .await
        .assert_error(409, "conflict");

    // PATCH.
    let moved = client
        .patch(&path, &json!({"location": "vps", "role": "MAIL"}))
        .await
        .expect(200);
    assert_server_json(&moved);
    assert_eq!(moved["location"], "vps");
    assert_eq!(moved["role"], "MAIL");
    assert_eq!(moved["name"], "srv1");
    assert_eq!(moved["ipAddress"], "203.0.113.10");

    // Filters.
    let page = client.get("/api/servers?role=MAIL").await.expect(200);
    assert_eq!(ids(&page), BTreeSet::from([id.clone()]), "{page}");
    assert_eq!(page["total"], 1, "{page}");
    let page = client.get("/api/servers?q=dns").await.expect(200);
    assert_eq!(page["items"][0]["name"], "dns-core", "{page}");
    assert_eq!(page["total"], 1, "{page}");
    let dns_path = format!("/api/servers/{}", dns["id"].as_str().unwrap());
    let parked = client
        .patch(&dns_path, &json!({"isActive": false}))
        .await
        .expect(200);
    assert_eq!(parked["isActive"], false, "{parked}");
    assert_eq!(
        parked["deletedAt"],
        Value::Null,
        "inactive is not deleted: {parked}"
    );
    let page = client.get("/api/servers?isActive=false").await.expect(200);
    assert_eq!(
        ids(&page),
        BTreeSet::from([dns["id"].as_str().unwrap().to_owned()])
    );
    let page = client.get("/api/servers?isActive=true").await.expect(200);
    assert_eq!(ids(&page), BTreeSet::from([id.clone()]), "{page}");
    let page = client
        .get("/api/servers?page=1&pageSize=1")
        .await
        .expect(200);
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["total"], 2);
    assert_eq!(page["pageSize"], 1);

    // DELETE is a soft delete.
    let reply = client.delete(&path).await;
    assert_eq!(reply.status, 204, "{reply:?}");
    let gone = client.get(&path).await.expect(200);
    assert!(gone["deletedAt"].as_str().is_some(), "{gone}");
    assert_eq!(gone["isActive"], false, "{gone}");
    let page = client.get("/api/servers").await.expect(200);
    assert!(
        !ids(&page).contains(&id),
        "the default list hides it: {page}"
    );
    assert_eq!(page["total"], 1, "{page}");
    let page = client
        .get("/api/servers?includeDeleted=true")
        .await
        .expect(200);
    assert!(ids(&page).contains(&id), "{page}");
    assert_eq!(page["total"], 2, "{page}");
    let still_there: bool =
        sqlx::query_scalar("SELECT deleted_at IS NOT NULL FROM servers WHERE id = $1")
            .bind(uuid::Uuid::parse_str(&id).unwrap())
            .fetch_one(&app.db.pool().await)
            .await
            .unwrap();
    assert!(still_there, "the row is kept, marked deleted");

    // A deleted server's name is free again.
    let reborn = create_server(&app, admin.token(), "srv1").await;
    assert_ne!(reborn["id"], web["id"]);

    let pool = app.db.pool().await;
    assert_eq!(audit_count(&pool, "server.create", &admin.id).await, 3);
    assert_eq!(audit_count(&pool, "server.update", &admin.id).await, 2);
    assert_eq!(audit_count(&pool, "server.delete", &admin.id).await, 1);
    pool.close().await;
    app.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Audit listing
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn audit_list_filters_pages_and_validates() {
    let app = TestApp::spawn().await;
    let org = api::org_with_roles(&app, "home", &["SUPER_ADMIN", "ADMIN"]).await;
    let root = org.super_admin();
    let admin = org.admin();
    let started = chrono::Utc::now() - chrono::Duration::seconds(5);
    for name in ["a-1", "a-2", "a-3"] {
        create_server(&app, admin.token(), name).await;
    }
    let client = authed(&app, root.token());
    let stamp = |t: chrono::DateTime<chrono::Utc>| {
        enc(&t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    };

    let page = client
        .get("/api/audit?action=server.create")
        .await
        .expect(200);
    assert_eq!(page["total"], 3, "{page}");
    let items = page["items"].as_array().unwrap();
    assert!(
        items.iter().all(|i| i["action"] == "server.create"),
        "{page}"
    );
    assert!(
        items.iter().all(|i| i["userId"] == admin.id.as_str()),
        "{page}"
    );
    assert!(
        items
            .iter()
            .all(|i| i["tenantId"] == org.tenant_id.as_str()),
        "{page}"
    );

    let page = client
        .get(&format!("/api/audit?userId={}", admin.id))
        .await
        .expect(200);
    let actions: BTreeSet<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        BTreeSet::from(["auth.login", "server.create"]),
        "{page}"
    );

    let page = client
        .get("/api/audit?action=server.create&page=2&pageSize=2")
        .await
        .expect(200);
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["page"], 2);
    assert_eq!(page["pageSize"], 2);
    assert_eq!(page["total"], 3);

    // Time window.
    let later = chrono::Utc::now() + chrono::Duration::minutes(5);
    let page = client
        .get(&format!(
            "/api/audit?action=server.create&from={}&to={}",
            stamp(started),
            stamp(later)
        ))
        .await
        .expect(200);
    assert_eq!(page["total"], 3, "{page}");
    let page = client
        .get(&format!("/api/audit?from={}", stamp(later)))
        .await
        .expect(200);
    assert_eq!(page["total"], 0, "{page}");
    let page = client
        .get(&format!(
            "/api/audit?to={}",
            stamp(started - chrono::Duration::hours(1))
        ))
        .await
        .expect(200);
    assert_eq!(page["total"], 0, "{page}");

    for (query, field) in [
        ("from=yesterday", "from"),
        ("to=2026-13-01T00:00:00Z", "to"),
        ("userId=not-a-uuid", "userId"),
        ("pageSize=0", "pageSize"),
        ("page=0", "page"),
    ] {
        client
            .get(&format!("/api/audit?{query}"))
            .await
            .assert_invalid_field(field);
    }
    app.cleanup().await;
}

#[tokio::test]
async fn selling_rows_of_another_tenant_answer_404_everywhere() {
    let app = TestApp::spawn_with(&[("RUN_WORKER", "false")]).await;
    let alpha = api::org_with_roles(&app, "alpha", &["SUPER_ADMIN"]).await;
    let beta = api::org_with_roles(&app, "beta", &["SUPER_ADMIN"]).await;
    let a_root = alpha.super_admin().token().to_owned();
    let b_root = beta.super_admin().token().to_owned();

    // Alpha sells something: product, plan, order, subscription, customer, jobs.
    let placed = place_order_in(&app, &a_root, "alpha").await;
    let order = id_of_key(&placed, "orderId");
    let subscription = id_of_key(&placed, "subscriptionId");
    let job = placed["jobs"][0]["id"].as_str().unwrap().to_owned();
    let detail = authed(&app, &a_root)
        .get(&format!("/api/orders/{order}"))
        .await
        .expect(200);
    let customer = id_of_key(&detail, "customerId");
    let plan = id_of_key(&detail, "planId");
    let plan_row = authed(&app, &a_root)
        .get(&format!("/api/plans/{plan}"))
        .await
        .expect(200);
    let product = id_of_key(&plan_row, "productId");
    let server = id_of(&create_server(&app, &a_root, "alpha-web").await);

    let pool = app.db.pool().await;
    let before: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM audit_logs) + (SELECT count(*) FROM job_logs)
              + (SELECT count(*) FROM enrollment_tokens)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();

    let probes: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", format!("/api/products/{product}"), None),
        (
            "PATCH",
            format!("/api/products/{product}"),
            Some(json!({"name": "x"})),
        ),
        ("DELETE", format!("/api/products/{product}"), None),
        ("GET", format!("/api/plans/{plan}"), None),
        (
            "PATCH",
            format!("/api/plans/{plan}"),
            Some(json!({"priceMonthlyCents": 1})),
        ),
        ("DELETE", format!("/api/plans/{plan}"), None),
        ("GET", format!("/api/orders/{order}"), None),
        (
            "PATCH",
            format!("/api/orders/{order}"),
            Some(json!({"status": "REFUNDED"})),
        ),
        ("GET", format!("/api/subscriptions/{subscription}"), None),
        (
            "POST",
            format!("/api/subscriptions/{subscription}/cancel"),
            None,
        ),
        ("GET", format!("/api/customers/{customer}"), None),
        ("GET", format!("/api/jobs/{job}"), None),
        ("POST", format!("/api/jobs/{job}/retry"), None),
        (
            "POST",
            format!("/api/servers/{server}/enrollment-token"),
            None,
        ),
    ];
    let mut leaks = Vec::new();
    for (verb, path, body) in &probes {
        let reply = authed(&app, &b_root)
            .send(method(verb), path, body.as_ref())
            .await;
        if reply.status != 404 || reply.code() != "not_found" {
            leaks.push(format!("{verb} {path}: {} {}", reply.status, reply.body));
        }
    }
    // A plan of another tenant cannot be used for a new plan either.
    let reply = authed(&app, &b_root)
        .post("/api/plans", &plan_body(&product, "stolen"))
        .await;
    if reply.status != 422 {
        leaks.push(format!(
            "POST /api/plans with alpha's product: {} {}",
            reply.status, reply.body
        ));
    }
    for list in [
        "/api/products",
        "/api/plans",
        "/api/orders",
        "/api/subscriptions",
        "/api/customers",
        "/api/jobs",
    ] {
        let page = authed(&app, &b_root).get(list).await.expect(200);
        if page["total"] != 0 {
            leaks.push(format!("GET {list} shows alpha's rows: {page}"));
        }
    }
    assert!(
        leaks.is_empty(),
        "cross-tenant leaks:\n{}",
        leaks.join("\n")
    );

    let after: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM audit_logs) + (SELECT count(*) FROM job_logs)
              + (SELECT count(*) FROM enrollment_tokens)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(before, after, "the refused calls wrote nothing");
    let (status, sub_status): (String, String) = sqlx::query_as(
        "SELECT o.status::text, s.status::text FROM orders o JOIN subscriptions s ON s.order_id = o.id WHERE o.id = $1::uuid",
    )
    .bind(&order)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), sub_status.as_str()), ("PAID", "ACTIVE"));

    pool.close().await;
    app.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// The matrix covers the OpenAPI document
// ---------------------------------------------------------------------------------------------

/// Routes that no operator role gates: public, authenticated by a credential of their own
/// (the internal key, a Stripe signature, an enrollment token, a refresh token), or open to
/// any signed-in operator about themselves. Each is tested in its own suite.
const NOT_ROLE_GATED: &[(&str, &str)] = &[
    ("POST", "/api/auth/login"),
    ("POST", "/api/auth/refresh"),
    ("POST", "/api/auth/logout"),
    ("GET", "/api/public/health"),
    ("GET", "/api/public/products"),
    ("GET", "/api/public/plans"),
    ("GET", "/api/products/public"),
    ("GET", "/api/plans/public"),
    ("POST", "/api/orders"),
    ("POST", "/api/webhooks/stripe"),
    ("POST", "/api/webhooks/billing"),
    ("POST", "/api/agents/enroll"),
    ("POST", "/api/backups/report"),
];

/// `/api/users/{user}?x=1` → `/api/users/{}`.
fn shape(path: &str) -> String {
    let path = path.split('?').next().unwrap_or(path);
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

#[tokio::test]
async fn every_route_of_the_openapi_document_is_in_the_matrix() {
    let app = TestApp::spawn().await;
    let doc = anon(&app).get("/api/openapi.json").await.expect(200);
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|m| ["get", "post", "put", "patch", "delete"].contains(&m.as_str()))
                .map(|m| (m.to_uppercase(), shape(path)))
                .collect::<Vec<_>>()
        })
        .collect();
    let matrix: BTreeSet<(String, String)> = MATRIX
        .iter()
        .map(|r| (r.method.to_owned(), shape(r.path)))
        .collect();
    let open: BTreeSet<(String, String)> = NOT_ROLE_GATED
        .iter()
        .map(|(m, p)| ((*m).to_owned(), shape(p)))
        .collect();
    let untested: Vec<_> = documented
        .iter()
        .filter(|r| !matrix.contains(*r) && !open.contains(*r))
        .collect();
    assert!(
        untested.is_empty(),
        "documented routes missing from the role matrix: {untested:?}"
    );
    let undocumented: Vec<_> = matrix.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "matrix routes missing from the OpenAPI document: {undocumented:?}"
    );
    // Role-gated operations say so in the document; the open ones do not claim a bearer.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let key = (method.to_uppercase(), shape(path));
            let bearer = op["security"]
                .as_array()
                .is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
            if matrix.contains(&key) {
                assert!(
                    bearer,
                    "{method} {path} is role-gated but documents no bearer"
                );
            }
        }
    }
    app.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Retrying a job needs what creating it needs
// ---------------------------------------------------------------------------------------------

/// A FAILED job of `kind` stored as the panel stores it, with `payload`.
async fn failed_job(pool: &PgPool, tenant: &str, kind: &str, payload: Value) -> String {
    let id: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO jobs (tenant_id, type, payload, status, attempts, last_error)
         VALUES ($1::uuid, $2::job_type, $3, 'FAILED', 5, 'the agent is offline') RETURNING id",
    )
    .bind(tenant)
    .bind(kind)
    .bind(payload)
    .fetch_one(pool)
    .await
    .unwrap();
    id.to_string()
}

async fn job_status(pool: &PgPool, id: &str) -> String {
    sqlx::query_scalar("SELECT status::text FROM jobs WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn support_cannot_retry_a_termination_but_can_retry_a_suspension() {
    let app = TestApp::spawn().await;
    let pool = app.db.pool().await;
    let org = api::org_with_roles(&app, "acme", &["SUPER_ADMIN", "ADMIN", "SUPPORT"]).await;
    let admin = org.by_role("ADMIN");
    let site = json!({
        "hostingAccountId": uuid::Uuid::new_v4(), "domain": "example.com",
        "domainId": uuid::Uuid::new_v4(), "requestedBy": admin.id,
    });
    let mut terminate = site.clone();
    terminate["kind"] = json!("terminateSite");
    let mut suspend = site;
    suspend["kind"] = json!("suspendSite");
    let terminate = failed_job(&pool, &org.tenant_id, "TERMINATE_ACCOUNT", terminate).await;
    let suspend = failed_job(&pool, &org.tenant_id, "SUSPEND_ACCOUNT", suspend).await;

    let support = authed(&app, org.by_role("SUPPORT").token());
    let refused = support
        .post(&format!("/api/jobs/{terminate}/retry"), &json!({}))
        .await;
    refused.assert_error(403, "forbidden");
    assert!(
        refused.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("terminate hosting accounts")),
        "{}",
        refused.body
    );
    assert_eq!(
        job_status(&pool, &terminate).await,
        "FAILED",
        "nothing changed"
    );
    let logs: i64 = sqlx::query_scalar("SELECT count(*) FROM job_logs WHERE job_id = $1::uuid")
        .bind(&terminate)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(logs, 0, "no retry was logged");

    support
        .post(&format!("/api/jobs/{suspend}/retry"), &json!({}))
        .await
        .expect(202);
    authed(&app, admin.token())
        .post(&format!("/api/jobs/{terminate}/retry"), &json!({}))
        .await
        .expect(202);
    assert_ne!(
        job_status(&pool, &terminate).await,
        "FAILED",
        "the ADMIN's retry took"
    );

    pool.close().await;
    app.cleanup().await;
}
