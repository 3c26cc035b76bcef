//! Helpers for the selling tests (catalog, orders, Stripe, job queue): catalog rows made
//! through the admin API, paid-order bodies, Stripe signatures computed here exactly as
//! Stripe computes them (never with the panel's code), a private `redis-server` a test may
//! stop and start, and SQL row counters for "nothing was written" checks.

use std::{collections::BTreeMap, process::Stdio, time::Duration};

use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use sqlx::PgPool;
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::{
    TestApp,
    api::{Reply, USER_AGENT, authed, unique},
    panel::{INTERNAL_KEY, STRIPE_SECRET},
    wait_for,
};

// ---------------------------------------------------------------------------------------------
// Catalog
// ---------------------------------------------------------------------------------------------

/// A product body of `kind` with a fresh slug.
pub fn product_body(kind: &str) -> Value {
    json!({
        "name": format!("{kind} product"),
        "slug": unique("product"),
        "type": kind,
        "description": "Sold on the marketing site",
    })
}

/// Creates a product through `POST /api/products`; panics unless 201.
pub async fn create_product(app: &TestApp, token: &str, kind: &str) -> Value {
    authed(app, token)
        .post("/api/products", &product_body(kind))
        .await
        .expect(201)
}

/// A monthly plan body: 149 usd a month, 1490 a year, with `limits`.
pub fn plan_body(product_id: &str, slug: &str, limits: Value) -> Value {
    json!({
        "productId": product_id,
        "name": format!("Plan {slug}"),
        "slug": slug,
        "priceMonthlyCents": 149,
        "priceYearlyCents": 1490,
        "limitsJson": limits,
    })
}

/// Creates a plan through `POST /api/plans`; panics unless 201.
pub async fn create_plan(app: &TestApp, token: &str, body: &Value) -> Value {
    authed(app, token)
        .post("/api/plans", body)
        .await
        .expect(201)
}

/// A product and one of its plans.
#[derive(Debug, Clone)]
pub struct Offer {
    pub product: Value,
    pub plan: Value,
}

impl Offer {
    pub fn plan_slug(&self) -> &str {
        self.plan["slug"].as_str().expect("plan slug")
    }

    pub fn plan_id(&self) -> &str {
        self.plan["id"].as_str().expect("plan id")
    }

    pub fn product_id(&self) -> &str {
        self.product["id"].as_str().expect("product id")
    }
}

/// A SHARED_HOSTING product with a MONTHLY plan (149 usd) including `emails` mailboxes,
/// made as `token` (a SUPER_ADMIN or ADMIN). Its `ssl` is left to the panel's default
/// (HTTPS for every shared-hosting plan): a fleet that runs its jobs for real needs an ACME
/// directory (`pebble`), or use [`hosting_offer_ssl`].
pub async fn hosting_offer(app: &TestApp, token: &str, emails: u32) -> Offer {
    let limits = json!({ "diskGb": 10, "bandwidthGb": 100, "sites": 1, "emails": emails,
                         "phpVersion": "8.2" });
    hosting_offer_with(app, token, limits).await
}

/// [`hosting_offer`] whose plan says whether its sites get HTTPS.
pub async fn hosting_offer_ssl(app: &TestApp, token: &str, emails: u32, ssl: bool) -> Offer {
    let limits = json!({ "diskGb": 10, "bandwidthGb": 100, "sites": 1, "emails": emails,
                         "phpVersion": "8.2", "ssl": ssl });
    hosting_offer_with(app, token, limits).await
}

async fn hosting_offer_with(app: &TestApp, token: &str, limits: Value) -> Offer {
    let product = create_product(app, token, "SHARED_HOSTING").await;
    let body = plan_body(product["id"].as_str().unwrap(), &unique("starter"), limits);
    let plan = create_plan(app, token, &body).await;
    Offer { product, plan }
}

// ---------------------------------------------------------------------------------------------
// Paid orders (spec §6.3)
// ---------------------------------------------------------------------------------------------

/// A fresh domain name under example.com.
pub fn fresh_domain() -> String {
    format!("{}.example.com", unique("site"))
}

/// A fresh customer e-mail.
pub fn fresh_email() -> String {
    format!("{}@buyer.example.com", unique("client"))
}

/// A fresh Stripe-like payment intent id.
pub fn fresh_intent() -> String {
    format!("pi_{}", Uuid::new_v4().simple())
}

/// The body of `POST /api/orders` exactly as spec §6.3 shows it, for a new customer, domain
/// and payment intent (149 usd).
pub fn order_body(tenant_slug: &str, plan_slug: &str) -> Value {
    json!({
        "tenantSlug": tenant_slug,
        "customer": { "email": fresh_email(), "fullName": "Client Name", "phone": "+1 555 0100" },
        "planSlug": plan_slug,
        "totalAmountCents": 149,
        "currency": "usd",
        "stripePaymentIntentId": fresh_intent(),
        "metadata": { "domain": fresh_domain(), "notes": "Marketing site order" },
    })
}

/// [`order_body`] for `domain`, bought by `owner`.
pub fn order_body_for(tenant_slug: &str, plan_slug: &str, domain: &str, owner: &str) -> Value {
    let mut body = order_body(tenant_slug, plan_slug);
    body["customer"]["email"] = json!(owner);
    body["metadata"]["domain"] = json!(domain);
    body
}

/// How the internal key is presented.
#[derive(Debug, Clone, Copy)]
pub enum Key<'a> {
    /// `x-internal-key: <key>` (spec §9.2).
    Header(&'a str),
    /// `Authorization: Bearer <key>` (spec §7.1).
    Bearer(&'a str),
    None,
}

/// The panel's configured internal key as `x-internal-key`.
pub const INTERNAL: Key<'static> = Key::Header(INTERNAL_KEY);

/// `POST /api/orders` with the internal key presented as `key`.
pub async fn post_order_with(app: &TestApp, key: Key<'_>, body: &Value) -> Reply {
    let mut req = app
        .http
        .post(app.url("/api/orders"))
        .header("user-agent", USER_AGENT)
        .json(body);
    req = match key {
        Key::Header(k) => req.header("x-internal-key", k),
        Key::Bearer(k) => req.header("authorization", format!("Bearer {k}")),
        Key::None => req,
    };
    send(req).await
}

/// `POST /api/orders` as the marketing backend.
pub async fn post_order(app: &TestApp, body: &Value) -> Reply {
    post_order_with(app, INTERNAL, body).await
}

/// Places an order; panics unless 201. Returns `{orderId, subscriptionId, jobs}`.
pub async fn place_order(app: &TestApp, body: &Value) -> Value {
    post_order(app, body).await.expect(201)
}

/// Sends a request and reads the answer into a `Reply`.
pub async fn send(req: reqwest::RequestBuilder) -> Reply {
    let res = req.send().await.expect("request reaches the panel");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let bytes = res.bytes().await.expect("response body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        body,
        headers,
    }
}

/// The string at `key` of `v`, panicking with the value when it is not one.
pub fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string {key} in {v}"))
}

/// The ids of the `jobs` array of a placed order.
pub fn job_ids(placed: &Value) -> Vec<String> {
    placed["jobs"]
        .as_array()
        .unwrap_or_else(|| panic!("no jobs array in {placed}"))
        .iter()
        .map(|j| str_of(j, "id").to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Stripe
// ---------------------------------------------------------------------------------------------

/// The hex HMAC-SHA256 Stripe puts in a `v1=` value: keyed with the whole secret string,
/// over `"{t}." + raw body`.
pub fn stripe_v1(secret: &str, t: i64, raw_body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{t}.").as_bytes());
    mac.update(raw_body);
    hex::encode(mac.finalize().into_bytes())
}

/// A `Stripe-Signature` header value `t=<t>,v1=<hex>` for `raw_body`.
pub fn stripe_header(secret: &str, t: i64, raw_body: &[u8]) -> String {
    format!("t={t},v1={}", stripe_v1(secret, t, raw_body))
}

/// A header signed now with the panel's configured secret.
pub fn stripe_header_now(raw_body: &[u8]) -> String {
    stripe_header(STRIPE_SECRET, chrono::Utc::now().timestamp(), raw_body)
}

/// A `payment_intent.succeeded` event as Stripe sends it, with the marketing site's metadata.
pub fn intent_succeeded(event_id: &str, intent_id: &str, amount: i64, metadata: Value) -> Value {
    json!({
        "id": event_id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": chrono::Utc::now().timestamp(),
        "livemode": false,
        "type": "payment_intent.succeeded",
        "data": {
            "object": {
                "id": intent_id,
                "object": "payment_intent",
                "amount": amount,
                "amount_received": amount,
                "currency": "usd",
                "status": "succeeded",
                "receipt_email": Value::Null,
                "metadata": metadata,
            }
        }
    })
}

/// A fresh Stripe-like event id.
pub fn fresh_event_id() -> String {
    format!("evt_{}", Uuid::new_v4().simple())
}

/// `POST /api/webhooks/stripe` with exactly `raw_body` and, when given, `Stripe-Signature`.
pub async fn post_stripe(app: &TestApp, raw_body: &[u8], signature: Option<&str>) -> Reply {
    let mut req = app
        .http
        .post(app.url("/api/webhooks/stripe"))
        .header(
            "user-agent",
            "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        )
        .header("content-type", "application/json; charset=utf-8")
        .body(raw_body.to_vec());
    if let Some(sig) = signature {
        req = req.header("stripe-signature", sig);
    }
    send(req).await
}

/// Posts `event` signed now with the panel's secret.
pub async fn deliver_event(app: &TestApp, event: &Value) -> Reply {
    let raw = serde_json::to_vec(event).unwrap();
    let sig = stripe_header_now(&raw);
    post_stripe(app, &raw, Some(&sig)).await
}

// ---------------------------------------------------------------------------------------------
// SQL
// ---------------------------------------------------------------------------------------------

/// The tables an order writes to.
pub const ORDER_TABLES: [&str; 8] = [
    "customers",
    "orders",
    "subscriptions",
    "domains",
    "jobs",
    "job_logs",
    "audit_logs",
    "webhook_events",
];

/// Row counts of every table in `ORDER_TABLES`.
pub async fn row_counts(pool: &PgPool) -> BTreeMap<&'static str, i64> {
    let mut counts = BTreeMap::new();
    for table in ORDER_TABLES {
        counts.insert(
            table,
            count(pool, &format!("SELECT count(*) FROM {table}")).await,
        );
    }
    counts
}

/// `counts` plus the differences in `delta`, for "this created exactly …" checks.
pub fn plus(
    counts: &BTreeMap<&'static str, i64>,
    delta: &[(&'static str, i64)],
) -> BTreeMap<&'static str, i64> {
    let mut out = counts.clone();
    for (table, n) in delta {
        *out.get_mut(table)
            .unwrap_or_else(|| panic!("{table} is not counted")) += n;
    }
    out
}

/// A `SELECT count(*) …` with no parameters.
pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// A `SELECT count(*) …` with one text parameter `$1`.
pub async fn count_with(pool: &PgPool, sql: &str, arg: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(arg)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql} [{arg}]: {e}"))
}

/// Audit rows of `action` (optionally only those whose `details->>key = value`).
pub async fn audit_count(pool: &PgPool, action: &str, detail: Option<(&str, &str)>) -> i64 {
    let (key, value) = detail.unwrap_or(("", ""));
    sqlx::query_scalar(
        "SELECT count(*) FROM audit_logs WHERE action = $1 AND ($2 = '' OR details->>$2 = $3)",
    )
    .bind(action)
    .bind(key)
    .bind(value)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// One job row as the tests look at it.
#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: Uuid,
    pub kind: String,
    pub status: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub last_error: Option<String>,
    pub locked_by: Option<String>,
    pub enqueued: bool,
}

/// The jobs of an order, in creation order.
pub async fn jobs_of_order(pool: &PgPool, order_id: &str) -> Vec<JobRow> {
    type Row = (
        Uuid,
        String,
        String,
        i32,
        i32,
        Option<String>,
        Option<String>,
        bool,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, type::text, status::text, attempts, max_attempts, last_error, locked_by,
                enqueued_at IS NOT NULL
           FROM jobs WHERE order_id = $1::uuid ORDER BY created_at, id",
    )
    .bind(order_id)
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(
            |(id, kind, status, attempts, max_attempts, last_error, locked_by, enqueued)| JobRow {
                id,
                kind,
                status,
                attempts,
                max_attempts,
                last_error,
                locked_by,
                enqueued,
            },
        )
        .collect()
}

/// One JobLog row: (from, to, message).
pub type LogLine = (Option<String>, String, String);

/// A job's log, oldest first.
pub async fn job_log(pool: &PgPool, job_id: Uuid) -> Vec<LogLine> {
    sqlx::query_as(
        "SELECT from_status::text, to_status::text, message FROM job_logs
          WHERE job_id = $1 ORDER BY created_at, id",
    )
    .bind(job_id)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Waits until every job of the order has `status` (and there is at least one job).
pub async fn wait_jobs(
    pool: &PgPool,
    order_id: &str,
    status: &str,
    deadline: Duration,
) -> Vec<JobRow> {
    wait_for(
        &format!("every job of order {order_id} to be {status}"),
        deadline,
        || async {
            let jobs = jobs_of_order(pool, order_id).await;
            (!jobs.is_empty() && jobs.iter().all(|j| j.status == status)).then_some(jobs)
        },
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// A private redis-server
// ---------------------------------------------------------------------------------------------

/// A `redis-server` of the test's own on a free loopback port, without persistence; it can be
/// stopped (SIGKILL) and started again on the same port. Killed when dropped.
pub struct OwnRedis {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl OwnRedis {
    pub async fn start() -> OwnRedis {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            l.local_addr().unwrap().port()
        };
        let mut redis = OwnRedis {
            port,
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        redis.resume().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts the server (again) on its port and waits until it answers PING.
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "redis-server already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn redis-server (is it installed?)");
        self.child = Some(child);
        let url = self.url();
        wait_for(
            &format!("redis-server on port {}", self.port),
            Duration::from_secs(15),
            || ping(url.clone()),
        )
        .await;
    }

    /// Kills the server (SIGKILL, as a crash would) and waits until the port refuses.
    pub async fn kill(&mut self) {
        let mut child = self.child.take().expect("redis-server is running");
        child.kill().await.expect("kill redis-server");
        let url = self.url();
        wait_for(
            &format!("redis-server on port {} to be gone", self.port),
            Duration::from_secs(15),
            || {
                let url = url.clone();
                async move { ping(url).await.is_none().then_some(()) }
            },
        )
        .await;
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

async fn ping(url: String) -> Option<()> {
    let client = redis::Client::open(url).ok()?;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(1),
        client.get_multiplexed_async_connection(),
    )
    .await
    .ok()?
    .ok()?;
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.ok()?;
    (pong == "PONG").then_some(())
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// Sends SIGTERM to `child` and waits (up to 20 s) for it to exit.
pub async fn sigterm(child: &mut Child) -> std::process::ExitStatus {
    let pid = child.id().expect("running child has a pid") as i32;
    // SAFETY: kill(2) on our own child's pid with a valid signal number.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exited within 20s of SIGTERM")
        .expect("wait for child")
}

/// Waits until subscription `id` has `status`; panics with the last status at the deadline.
pub async fn wait_subscription(pool: &PgPool, id: &str, status: &str, within: Duration) {
    wait_for(
        &format!("subscription {id} to be {status}"),
        within,
        || async {
            let now: String =
                sqlx::query_scalar("SELECT status::text FROM subscriptions WHERE id = $1::uuid")
                    .bind(id)
                    .fetch_one(pool)
                    .await
                    .expect("read the subscription");
            (now == status).then_some(())
        },
    )
    .await;
}
