//! The admin modules of spec §8.2–8.5 against the real panel and real agents: DNS zones and
//! records pushed by a `dns` agent into a real PowerDNS (checked with `dig`), mailboxes
//! written by a `mail` agent into the Postfix maps and Dovecot passwd-file (hashes checked
//! with `doveadm pw`), the VPS skeleton whose jobs fail as "unsupported", and hosting
//! accounts made by hand on a `web` agent serving them through a real nginx. Each test has
//! its own panel and database; the order → live site flow is `live_site.rs`.

use std::{process::Command, time::Duration};

use mpanel_tests::{
    TestApp,
    api::{Reply, authed, org_with_roles},
    fleet::{AgentProc, add_server, enrollment_token, hub_addr, wait_job_status},
    pdns::{API_KEY, Pdns},
    wait_for,
    web::WebSandbox,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
/// Not a row of any tenant.
const NO_SUCH_ID: &str = "00000000-0000-4000-8000-000000000001";

async fn spawn(extra: &[(&str, &str)]) -> TestApp {
    let mut env = vec![
        ("AGENT_HEARTBEAT_INTERVAL", "1s"),
        ("JOB_SWEEP_INTERVAL", "200ms"),
        ("JOB_RETRY_BASE", "200ms"),
        ("JOB_RETRY_MAX", "2s"),
        ("JOB_MAX_ATTEMPTS", "20"),
        ("DNS_HOSTMASTER", "hostmaster@example.test"),
    ];
    env.extend_from_slice(extra);
    TestApp::spawn_with(&env).await
}

/// Enrolls and starts a real agent for `server_id` with `config` (roles and role sections).
async fn start_agent(
    app: &TestApp,
    token: &str,
    server_id: &str,
    name: &str,
    config: &str,
) -> AgentProc {
    let enroll = enrollment_token(app, token, server_id).await;
    let mut agent = AgentProc::enroll(app, name, &enroll).await;
    agent.configure(hub_addr(app).await, config);
    agent.start();
    wait_for(&format!("{name} to be online"), WAIT, || async {
        let s = authed(app, token)
            .get(&format!("/api/servers/{server_id}"))
            .await
            .expect(200);
        (s["agentOnline"] == true).then_some(())
    })
    .await;
    agent
}

async fn wait_job(app: &TestApp, token: &str, id: &str) -> Value {
    wait_job_status(app, token, id, "SUCCESS").await
}

fn job_id(reply: &Value) -> String {
    reply["jobId"]
        .as_str()
        .unwrap_or_else(|| panic!("no jobId in {reply}"))
        .to_owned()
}

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn audit_count(pool: &sqlx::PgPool, action: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_logs WHERE action = $1")
        .bind(action)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// How many times `needle` appears in the text of the jobs, job logs and audit rows.
async fn stored_anywhere(pool: &sqlx::PgPool, needle: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM jobs WHERE payload::text LIKE '%' || $1 || '%'
                                            OR coalesce(result::text, '') LIKE '%' || $1 || '%'
                                            OR coalesce(last_error, '') LIKE '%' || $1 || '%')
              + (SELECT count(*) FROM job_logs WHERE coalesce(details::text, '') LIKE '%' || $1 || '%'
                                                  OR message LIKE '%' || $1 || '%')
              + (SELECT count(*) FROM audit_logs WHERE details::text LIKE '%' || $1 || '%')",
    )
    .bind(needle)
    .fetch_one(pool)
    .await
    .unwrap()
}

fn items(list: &Value) -> &Vec<Value> {
    list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {list}"))
}

fn field<'a>(list: &'a Value, key: &str) -> Vec<&'a str> {
    items(list)
        .iter()
        .map(|i| i[key].as_str().unwrap())
        .collect()
}

/// Asserts a 400 whose `details.field` starts with `prefix` (a field or its sub-path).
#[track_caller]
fn assert_invalid_under(reply: &Reply, prefix: &str) {
    reply.assert_error(400, "validation_failed");
    let field = reply.body["error"]["details"]["field"]
        .as_str()
        .unwrap_or_default();
    assert!(field.starts_with(prefix), "details.field: {reply:?}");
}

// ---------------------------------------------------------------------------------------
// DNS
// ---------------------------------------------------------------------------------------

/// `name type content ttl` of each record of a records list, sorted.
fn record_lines(list: &Value) -> Vec<String> {
    let mut lines: Vec<String> = items(list)
        .iter()
        .map(|r| {
            let text = |k: &str| r[k].as_str().unwrap().replace('"', "");
            format!(
                "{} {} {} {}",
                text("name"),
                text("type"),
                text("content"),
                r["ttl"]
            )
        })
        .collect();
    lines.sort();
    lines
}

fn record_id(list: &Value, name: &str) -> String {
    items(list)
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no record {name} in {list}"))["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn dns_zones_and_records_are_served_by_powerdns() {
    let pdns = Pdns::start().await;
    // One worker: while a sync waits for the stopped agent, later edits share one queued job.
    let app = spawn(&[("WORKER_CONCURRENCY", "1")]).await;
    let acme = org_with_roles(&app, "acme", &["SUPER_ADMIN", "SUPPORT", "READ_ONLY"]).await;
    let other = org_with_roles(&app, "other", &["SUPER_ADMIN"]).await;
    let admin = acme.super_admin().token().to_owned();
    let support = acme.by_role("SUPPORT").token().to_owned();
    let reader = acme.by_role("READ_ONLY").token().to_owned();
    let stranger = other.super_admin().token().to_owned();
    let pool = app.db.pool().await;

    let dns_id = add_server(&app, &admin, "dns-core", "DNS", "192.0.2.53").await;
    // A MAIL server (no agent needed): new zones get the mail part of the default records.
    add_server(&app, &admin, "mail-core", "MAIL", "192.0.2.25").await;
    let key_file = pdns.dir.path().join("api-key");
    std::fs::write(&key_file, API_KEY).unwrap();
    let dns_toml = format!(
        "roles = [\"dns\"]\n[dns]\napi_url = \"{}\"\napi_key_file = \"{}\"\n",
        pdns.api_url(),
        key_file.display()
    );
    let mut agent = start_agent(&app, &admin, &dns_id, "dns-core", &dns_toml).await;

    // Who may create zones: admins only.
    let new_zone = json!({ "domain": "zone-test.example" });
    authed(&app, &reader)
        .post("/api/dns/zones", &new_zone)
        .await
        .assert_error(403, "forbidden");
    authed(&app, &support)
        .post("/api/dns/zones", &new_zone)
        .await
        .assert_error(403, "forbidden");
    for bad in ["a.com;rm -rf /", "../etc", "ex\u{0430}mple.com", ""] {
        authed(&app, &admin)
            .post("/api/dns/zones", &json!({ "domain": bad }))
            .await
            .assert_invalid_field("domain");
    }
    assert_eq!(count(&pool, "SELECT count(*) FROM domains").await, 0);
    assert_eq!(count(&pool, "SELECT count(*) FROM jobs").await, 0);

    // A zone by domain name: the job puts it on PowerDNS with the default mail records.
    let created = authed(&app, &admin)
        .post("/api/dns/zones", &new_zone)
        .await
        .expect(202);
    let zone_id = created["zone"]["id"].as_str().unwrap().to_owned();
    let zone_path = format!("/api/dns/zones/{zone_id}");
    let records_path = format!("{zone_path}/records");
    assert_eq!(created["zone"]["domain"], "zone-test.example");
    assert_eq!(created["zone"]["isSynced"], false, "{created}");
    let done = wait_job(&app, &admin, &job_id(&created)).await;
    assert_eq!(done["serverId"], dns_id.as_str());
    assert_eq!(done["result"]["created"], true, "{done}");
    let zone = authed(&app, &admin).get(&zone_path).await.expect(200);
    assert_eq!(zone["isSynced"], true, "{zone}");
    assert!(zone["lastSyncAt"].is_string(), "{zone}");
    assert_eq!(
        zone["nameservers"],
        json!(["ns1.example.test", "ns2.example.test"])
    );
    assert_eq!(
        record_lines(&json!({ "items": zone["records"] })),
        [
            "@ MX 10 mail.zone-test.example. 3600",
            "@ TXT v=spf1 mx -all 3600",
            "_dmarc TXT v=DMARC1; p=quarantine 3600",
            "mail A 192.0.2.25 3600",
        ],
        "{zone}"
    );
    assert_eq!(
        pdns.dig("zone-test.example", "NS"),
        ["ns1.example.test.", "ns2.example.test."]
    );
    let soa = pdns.dig("zone-test.example", "SOA");
    assert_eq!(soa.len(), 1, "{soa:?}");
    assert!(
        soa[0].starts_with("ns1.example.test. hostmaster.example.test. "),
        "{soa:?}"
    );
    assert_eq!(
        pdns.dig("zone-test.example", "MX"),
        ["10 mail.zone-test.example."]
    );

    // One zone per domain; a domain of another tenant is not anyone else's to serve.
    authed(&app, &admin)
        .post("/api/dns/zones", &new_zone)
        .await
        .assert_error(409, "conflict");
    authed(&app, &stranger)
        .post("/api/dns/zones", &new_zone)
        .await
        .assert_error(409, "conflict");
    let by_id = json!({ "domainId": created["zone"]["domainId"] });
    let reply = authed(&app, &stranger).post("/api/dns/zones", &by_id).await;
    reply.assert_error(422, "unprocessable_entity");
    assert_eq!(reply.body["error"]["details"]["field"], "domainId");
    authed(&app, &admin)
        .post(
            "/api/dns/zones",
            &json!({ "domainId": created["zone"]["domainId"], "domain": "zone-test.example" }),
        )
        .await
        .assert_invalid_field("domainId");

    // The list and its filters.
    let list = authed(&app, &reader)
        .get("/api/dns/zones")
        .await
        .expect(200);
    assert_eq!(list["total"], 1, "{list}");
    for (query, total) in [
        ("domain=zone-test", 1),
        ("domain=nothing-like-it", 0),
        ("isSynced=true", 1),
        ("isSynced=false", 0),
        ("sort=domain&order=asc", 1),
    ] {
        let list = authed(&app, &reader)
            .get(&format!("/api/dns/zones?{query}"))
            .await
            .expect(200);
        assert_eq!(list["total"], total, "{query}: {list}");
    }
    authed(&app, &reader)
        .get("/api/dns/zones?colour=blue")
        .await
        .assert_invalid_field("colour");
    let theirs = authed(&app, &stranger)
        .get("/api/dns/zones")
        .await
        .expect(200);
    assert_eq!(theirs["total"], 0, "{theirs}");

    // Add an A record: served once its sync has run.
    authed(&app, &reader)
        .post(
            &records_path,
            &json!({ "name": "blog", "data": { "type": "A", "address": "192.0.2.10" } }),
        )
        .await
        .assert_error(403, "forbidden");
    let added = authed(&app, &admin)
        .post(
            &records_path,
            &json!({ "name": "blog", "data": { "type": "A", "address": "192.0.2.10" } }),
        )
        .await
        .expect(202);
    let blog_id = record_id(&json!({ "items": added["records"] }), "blog");
    wait_job(&app, &admin, &job_id(&added)).await;
    assert_eq!(pdns.dig("blog.zone-test.example", "A"), ["192.0.2.10"]);
    let zone = authed(&app, &admin).get(&zone_path).await.expect(200);
    assert_eq!(zone["isSynced"], true, "{zone}");

    // With the agent stopped, edits are stored (not yet served) and the zone is not synced;
    // edits made while a sync is still queued share that job.
    assert!(agent.terminate().await.success());
    let shop = authed(&app, &admin)
        .post(
            &records_path,
            &json!({ "name": "shop", "ttl": 600, "data": { "type": "A", "address": "192.0.2.11" } }),
        )
        .await
        .expect(202);
    let first_sync = job_id(&shop);
    wait_job_status(&app, &admin, &first_sync, "RUNNING").await;
    let zone = authed(&app, &admin).get(&zone_path).await.expect(200);
    assert_eq!(zone["isSynced"], false, "{zone}");
    assert!(pdns.dig("shop.zone-test.example", "A").is_empty());
    // The record's id outlives edits of other records.
    let patched = authed(&app, &admin)
        .patch(
            &format!("{records_path}/{blog_id}"),
            &json!({ "data": { "type": "A", "address": "192.0.2.20" } }),
        )
        .await
        .expect(202);
    let second_sync = job_id(&patched);
    assert_ne!(second_sync, first_sync, "the first sync is already running");
    let patched = authed(&app, &admin)
        .patch(&format!("{records_path}/{blog_id}"), &json!({ "ttl": 300 }))
        .await
        .expect(202);
    assert_eq!(job_id(&patched), second_sync, "a queued sync is shared");
    let records = authed(&app, &reader).get(&records_path).await.expect(200);
    assert_eq!(record_id(&records, "blog"), blog_id, "{records}");
    assert!(
        record_lines(&records).contains(&"blog A 192.0.2.20 300".to_owned()),
        "{records}"
    );
    assert!(
        record_lines(&records).contains(&"shop A 192.0.2.11 600".to_owned()),
        "{records}"
    );
    // The first sync succeeds with the records it read; the queued one then fails (a
    // stored row it cannot use): the zone is not synced, its last edit is not served.
    sqlx::query(
        "INSERT INTO dns_records (tenant_id, zone_id, name, type, content, data)
         SELECT tenant_id, id, 'bogus', 'A', 'bogus', '{\"type\":\"A\",\"address\":\"bogus\"}'
           FROM dns_zones WHERE id = $1::uuid",
    )
    .bind(&zone_id)
    .execute(&pool)
    .await
    .unwrap();
    agent.start();
    wait_job(&app, &admin, &first_sync).await;
    let failed = wait_job_status(&app, &admin, &second_sync, "FAILED").await;
    assert!(
        failed["lastError"].as_str().unwrap().contains("invalid"),
        "{failed}"
    );
    assert_eq!(pdns.dig("shop.zone-test.example", "A"), ["192.0.2.11"]);
    assert_eq!(pdns.dig("blog.zone-test.example", "A"), ["192.0.2.10"]);
    let zone = authed(&app, &admin).get(&zone_path).await.expect(200);
    assert_eq!(zone["isSynced"], false, "{zone}");
    // Without the row, a sync (SUPPORT may ask for one) pushes the zone as stored.
    sqlx::query("DELETE FROM dns_records WHERE name = 'bogus'")
        .execute(&pool)
        .await
        .unwrap();
    let synced = authed(&app, &support)
        .post(&format!("{zone_path}/sync"), &json!({}))
        .await
        .expect(202);
    wait_job(&app, &admin, &job_id(&synced)).await;
    let zone = authed(&app, &admin).get(&zone_path).await.expect(200);
    assert_eq!(zone["isSynced"], true, "{zone}");
    assert_eq!(pdns.dig("blog.zone-test.example", "A"), ["192.0.2.20"]);
    assert_eq!(pdns.dig("shop.zone-test.example", "A"), ["192.0.2.11"]);

    // Invalid records: refused, naming the problem, and the stored records unchanged.
    let before = authed(&app, &admin).get(&records_path).await.expect(200);
    let jobs_before = count(&pool, "SELECT count(*) FROM jobs").await;
    let cname = authed(&app, &admin)
        .post(
            &records_path,
            &json!({ "name": "blog", "data": { "type": "CNAME", "target": "example.org" } }),
        )
        .await;
    cname.assert_error(422, "unprocessable_entity");
    assert!(
        cname.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("CNAME"),
        "{cname:?}"
    );
    authed(&app, &admin)
        .post(
            &records_path,
            &json!({ "name": "../x", "data": { "type": "A", "address": "192.0.2.1" } }),
        )
        .await
        .assert_invalid_field("name");
    let bad_ip = authed(&app, &admin)
        .post(
            &records_path,
            &json!({ "name": "x", "data": { "type": "A", "address": "999.1.1.1" } }),
        )
        .await;
    assert_invalid_under(&bad_ip, "data");
    authed(&app, &admin)
        .post(
            &records_path,
            &json!({ "name": "x", "colour": "red", "data": { "type": "A", "address": "192.0.2.1" } }),
        )
        .await
        .assert_invalid_field("colour");
    authed(&app, &admin)
        .patch(&format!("{records_path}/{blog_id}"), &json!({ "ttl": 5 }))
        .await
        .assert_invalid_field("ttl");
    authed(&app, &admin)
        .post(
            &records_path,
            &json!({ "name": "blog", "ttl": 300, "data": { "type": "A", "address": "192.0.2.20" } }),
        )
        .await
        .assert_error(409, "conflict");
    let after = authed(&app, &admin).get(&records_path).await.expect(200);
    assert_eq!(before["items"], after["items"]);
    assert_eq!(count(&pool, "SELECT count(*) FROM jobs").await, jobs_before);
    let zone = authed(&app, &admin).get(&zone_path).await.expect(200);
    assert_eq!(
        zone["isSynced"], true,
        "refused edits leave the zone synced"
    );

    // Another tenant's zone does not exist for this one, nor the other way round.
    for path in [zone_path.clone(), records_path.clone()] {
        authed(&app, &stranger)
            .get(&path)
            .await
            .assert_error(404, "not_found");
    }
    authed(&app, &stranger)
        .post(&format!("{zone_path}/sync"), &json!({}))
        .await
        .assert_error(404, "not_found");
    authed(&app, &stranger)
        .post(
            &records_path,
            &json!({ "name": "evil", "data": { "type": "A", "address": "192.0.2.66" } }),
        )
        .await
        .assert_error(404, "not_found");
    authed(&app, &stranger)
        .patch(
            &format!("{records_path}/{blog_id}"),
            &json!({ "data": { "type": "A", "address": "192.0.2.66" } }),
        )
        .await
        .assert_error(404, "not_found");
    authed(&app, &stranger)
        .delete(&format!("{records_path}/{blog_id}"))
        .await
        .assert_error(404, "not_found");
    authed(&app, &admin)
        .get(&format!("/api/dns/zones/{NO_SUCH_ID}"))
        .await
        .assert_error(404, "not_found");
    authed(&app, &admin)
        .delete(&format!("{records_path}/{NO_SUCH_ID}"))
        .await
        .assert_error(404, "not_found");
    assert_eq!(
        authed(&app, &admin).get(&records_path).await.expect(200)["items"],
        after["items"]
    );

    // SUPPORT may push the zone again, which changes nothing on the server.
    let synced = authed(&app, &support)
        .post(&format!("{zone_path}/sync"), &json!({}))
        .await
        .expect(202);
    let done = wait_job(&app, &admin, &job_id(&synced)).await;
    assert_eq!(done["result"]["changed"], false, "{done}");

    // Delete: no longer served.
    let deleted = authed(&app, &admin)
        .delete(&format!("{records_path}/{blog_id}"))
        .await
        .expect(202);
    wait_job(&app, &admin, &job_id(&deleted)).await;
    assert!(pdns.dig("blog.zone-test.example", "A").is_empty());
    let records = authed(&app, &admin).get(&records_path).await.expect(200);
    assert!(!field(&records, "name").contains(&"blog"), "{records}");
    authed(&app, &admin)
        .delete(&format!("{records_path}/{blog_id}"))
        .await
        .assert_error(404, "not_found");

    // Deleting every record leaves an empty zone: the defaults do not come back.
    let mut last = String::new();
    for id in items(&records).iter().map(|r| r["id"].as_str().unwrap()) {
        let reply = authed(&app, &admin)
            .delete(&format!("{records_path}/{id}"))
            .await
            .expect(202);
        last = job_id(&reply);
    }
    wait_job(&app, &admin, &last).await;
    let zone = authed(&app, &admin).get(&zone_path).await.expect(200);
    assert_eq!(zone["records"], json!([]), "{zone}");
    assert_eq!(zone["isSynced"], true, "{zone}");
    assert!(pdns.dig("zone-test.example", "MX").is_empty());
    assert!(pdns.dig("shop.zone-test.example", "A").is_empty());
    assert_eq!(pdns.dig("zone-test.example", "NS").len(), 2);

    for (action, n) in [
        ("dns.zone.create", 1),
        ("dns.zone.sync", 2),
        ("dns.record.create", 2),
        ("dns.record.update", 2),
        ("dns.record.delete", 6),
    ] {
        assert_eq!(audit_count(&pool, action).await, n, "{action}");
    }

    pool.close().await;
    assert!(agent.terminate().await.success());
    app.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// Mail
// ---------------------------------------------------------------------------------------

/// The hash and the extra fields of `email`'s passwd-file entry.
fn passwd_entry(dir: &std::path::Path, email: &str) -> Option<(String, String)> {
    let users = std::fs::read_to_string(dir.join("users")).unwrap_or_default();
    let line = users
        .lines()
        .find(|l| l.starts_with(&format!("{email}:")))?
        .to_owned();
    // The extra fields come last and may hold colons (`userdb_quota_rule=*:storage=…`).
    let fields: Vec<&str> = line.splitn(8, ':').collect();
    assert_eq!(fields.len(), 8, "{line}");
    let hash = fields[1]
        .strip_prefix("{ARGON2ID}")
        .unwrap_or_else(|| panic!("not an {{ARGON2ID}} entry: {line}"));
    assert!(
        hash.starts_with("$argon2id$v=19$m=65536,t=3,p=1$"),
        "{line}"
    );
    Some((hash.to_owned(), fields[7].to_owned()))
}

/// `doveadm pw -t`: does `hash` verify `password`?
fn dovecot_verifies(hash: &str, password: &str) -> bool {
    Command::new("doveadm")
        .args(["pw", "-t", &format!("{{ARGON2ID}}{hash}"), "-p", password])
        .output()
        .expect("doveadm runs")
        .status
        .success()
}

async fn add_domain(pool: &sqlx::PgPool, tenant: &str, name: &str) {
    sqlx::query("INSERT INTO domains (tenant_id, name, status) VALUES ($1::uuid, $2, 'ACTIVE')")
        .bind(tenant)
        .bind(name)
        .execute(pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn mailboxes_are_created_disabled_and_rekeyed_on_the_mail_server() {
    let mail_dir = tempfile::tempdir().unwrap();
    let app = spawn(&[]).await;
    let acme = org_with_roles(&app, "acme", &["SUPER_ADMIN", "SUPPORT", "READ_ONLY"]).await;
    let other = org_with_roles(&app, "other", &["SUPER_ADMIN"]).await;
    let admin = acme.super_admin().token().to_owned();
    let support = acme.by_role("SUPPORT").token().to_owned();
    let reader = acme.by_role("READ_ONLY").token().to_owned();
    let stranger = other.super_admin().token().to_owned();
    let pool = app.db.pool().await;
    add_domain(&pool, &acme.tenant_id, "mailbox.example").await;
    add_domain(&pool, &other.tenant_id, "elsewhere.example").await;

    let mail_id = add_server(&app, &admin, "mail-core", "MAIL", "192.0.2.25").await;
    let md = mail_dir.path().display();
    let mail_toml = format!(
        "roles = [\"mail\"]\n[mail]\nvmail_uid = 5000\nvmail_gid = 5000\nreload = false\n\
         virtual_mailbox_domains = \"{md}/virtual_mailbox_domains\"\n\
         virtual_mailbox_maps = \"{md}/virtual_mailbox_maps\"\n\
         passwd_file = \"{md}/users\"\nvmail_root = \"{md}/vmail\"\n"
    );
    let mut agent = start_agent(&app, &admin, &mail_id, "mail-core", &mail_toml).await;

    let alice = json!({ "email": "alice@mailbox.example" });
    authed(&app, &reader)
        .post("/api/mail/accounts", &alice)
        .await
        .assert_error(403, "forbidden");
    authed(&app, &support)
        .post("/api/mail/accounts", &alice)
        .await
        .assert_error(403, "forbidden");
    authed(&app, &admin)
        .post(
            "/api/mail/accounts",
            &json!({ "email": "alice@mailbox.example", "password": "short" }),
        )
        .await
        .assert_invalid_field("password");
    authed(&app, &admin)
        .post("/api/mail/accounts", &json!({ "email": "alice@@mailbox" }))
        .await
        .assert_invalid_field("email");
    // Only the tenant's own domains take mailboxes.
    for email in ["bob@elsewhere.example", "bob@unknown.example"] {
        let reply = authed(&app, &admin)
            .post("/api/mail/accounts", &json!({ "email": email }))
            .await;
        reply.assert_error(422, "unprocessable_entity");
        assert_eq!(reply.body["error"]["details"]["field"], "email");
    }
    assert_eq!(count(&pool, "SELECT count(*) FROM mail_accounts").await, 0);
    assert_eq!(count(&pool, "SELECT count(*) FROM jobs").await, 0);

    // A mailbox with a password made by the panel, shown once.
    let created = authed(&app, &admin)
        .post("/api/mail/accounts", &alice)
        .await
        .expect(202);
    let password = created["password"].as_str().unwrap().to_owned();
    assert_eq!(password.len(), 20, "{created}");
    let account_id = created["mailAccountId"].as_str().unwrap().to_owned();
    let account_path = format!("/api/mail/accounts/{account_id}");
    let create_job = job_id(&created);
    let done = wait_job(&app, &admin, &create_job).await;
    assert_eq!(done["serverId"], mail_id.as_str());
    assert_eq!(done["payload"]["passwordHash"], "***", "{done}");
    let listed = authed(&app, &admin)
        .get("/api/jobs?type=PROVISION_MAIL")
        .await
        .expect(200);
    assert_eq!(listed["items"][0]["payload"]["passwordHash"], "***");
    let account = authed(&app, &reader).get(&account_path).await.expect(200);
    assert_eq!(account["status"], "ACTIVE", "{account}");
    assert_eq!(account["email"], "alice@mailbox.example");
    assert!(
        account["mailbox"]
            .as_str()
            .unwrap()
            .ends_with("/vmail/mailbox.example/alice"),
        "{account}"
    );
    let (hash, extra) = passwd_entry(mail_dir.path(), "alice@mailbox.example").unwrap();
    assert_eq!(extra, "");
    assert!(dovecot_verifies(&hash, &password));
    assert!(!dovecot_verifies(&hash, "not the password"));
    let maps = std::fs::read_to_string(mail_dir.path().join("virtual_mailbox_maps")).unwrap();
    assert!(
        maps.contains("alice@mailbox.example mailbox.example/alice/"),
        "{maps}"
    );
    // The password is nowhere but in that answer; the hash stays out of the logs.
    assert_eq!(stored_anywhere(&pool, &password).await, 0);
    let leaks = |l: &String| l.contains(&password) || l.contains(&hash);
    assert!(!app.log_lines().iter().any(leaks));
    assert!(!agent.log_lines().iter().any(leaks));

    // One mailbox per address.
    authed(&app, &admin)
        .post("/api/mail/accounts", &alice)
        .await
        .assert_error(409, "conflict");
    authed(&app, &admin)
        .post(
            "/api/mail/accounts",
            &json!({ "email": "ALICE@mailbox.example" }),
        )
        .await
        .assert_error(409, "conflict");

    // Disable (SUPPORT may): Dovecot's nologin field, mail still delivered.
    let disabled = authed(&app, &support)
        .post(&format!("{account_path}/disable"), &json!({}))
        .await
        .expect(202);
    wait_job(&app, &admin, &job_id(&disabled)).await;
    let account = authed(&app, &admin).get(&account_path).await.expect(200);
    assert_eq!(account["status"], "DISABLED");
    let (same_hash, extra) = passwd_entry(mail_dir.path(), "alice@mailbox.example").unwrap();
    assert_eq!(same_hash, hash);
    assert_eq!(extra, "nologin");
    let list = authed(&app, &admin)
        .get("/api/mail/accounts?status=DISABLED")
        .await
        .expect(200);
    assert_eq!(field(&list, "email"), ["alice@mailbox.example"]);

    // Reset the password: too short is refused and queues nothing.
    let jobs_before = count(&pool, "SELECT count(*) FROM jobs").await;
    authed(&app, &support)
        .post(
            &format!("{account_path}/reset-password"),
            &json!({ "password": "short" }),
        )
        .await
        .assert_invalid_field("password");
    assert_eq!(count(&pool, "SELECT count(*) FROM jobs").await, jobs_before);
    // An operator's password, while disabled: not echoed, the file holds its hash, and the
    // mailbox stays disabled.
    let chosen = "a brand new passphrase 42";
    let reset = authed(&app, &support)
        .post(
            &format!("{account_path}/reset-password"),
            &json!({ "password": chosen }),
        )
        .await
        .expect(202);
    assert!(reset.get("password").is_none(), "{reset}");
    wait_job(&app, &admin, &job_id(&reset)).await;
    let (new_hash, extra) = passwd_entry(mail_dir.path(), "alice@mailbox.example").unwrap();
    assert_ne!(new_hash, hash);
    assert_eq!(extra, "nologin");
    assert!(dovecot_verifies(&new_hash, chosen));
    assert!(!dovecot_verifies(&new_hash, &password));
    assert_eq!(
        authed(&app, &admin).get(&account_path).await.expect(200)["status"],
        "DISABLED"
    );

    // Enable: the same hash, logins allowed again.
    let enabled = authed(&app, &admin)
        .post(&format!("{account_path}/enable"), &json!({}))
        .await
        .expect(202);
    wait_job(&app, &admin, &job_id(&enabled)).await;
    assert_eq!(
        authed(&app, &admin).get(&account_path).await.expect(200)["status"],
        "ACTIVE"
    );
    let (same_hash, extra) = passwd_entry(mail_dir.path(), "alice@mailbox.example").unwrap();
    assert_eq!(
        (same_hash.as_str(), extra.as_str()),
        (new_hash.as_str(), "")
    );

    // No body: the panel makes one and shows it once.
    let reset = authed(&app, &admin)
        .post(&format!("{account_path}/reset-password"), &json!({}))
        .await
        .expect(202);
    let made = reset["password"].as_str().unwrap().to_owned();
    wait_job(&app, &admin, &job_id(&reset)).await;
    let (newest_hash, _) = passwd_entry(mail_dir.path(), "alice@mailbox.example").unwrap();
    assert!(dovecot_verifies(&newest_hash, &made));
    for secret in [password.as_str(), chosen, made.as_str()] {
        assert_eq!(
            stored_anywhere(&pool, secret).await,
            0,
            "a password is stored"
        );
    }
    assert_eq!(
        authed(&app, &admin).get(&account_path).await.expect(200)["status"],
        "ACTIVE"
    );

    // Another tenant sees none of it.
    authed(&app, &stranger)
        .get(&account_path)
        .await
        .assert_error(404, "not_found");
    for action in ["disable", "enable", "reset-password"] {
        authed(&app, &stranger)
            .post(&format!("{account_path}/{action}"), &json!({}))
            .await
            .assert_error(404, "not_found");
    }
    let theirs = authed(&app, &stranger)
        .get("/api/mail/accounts")
        .await
        .expect(200);
    assert_eq!(theirs["total"], 0);
    // A mailbox still being created takes no actions (the agent is away meanwhile).
    assert!(agent.terminate().await.success());
    let second = authed(&app, &admin)
        .post(
            "/api/mail/accounts",
            &json!({ "email": "first_last@mailbox.example", "quotaMb": 512 }),
        )
        .await
        .expect(202);
    let second_path = format!(
        "/api/mail/accounts/{}",
        second["mailAccountId"].as_str().unwrap()
    );
    assert_eq!(
        authed(&app, &admin).get(&second_path).await.expect(200)["status"],
        "PENDING"
    );
    for action in ["disable", "enable", "reset-password"] {
        authed(&app, &admin)
            .post(&format!("{second_path}/{action}"), &json!({}))
            .await
            .assert_error(409, "conflict");
    }
    agent.start();
    wait_job(&app, &admin, &job_id(&second)).await;
    // The address filter takes the characters addresses have, `_` and `%` included.
    let (_, extra) = passwd_entry(mail_dir.path(), "first_last@mailbox.example").unwrap();
    assert_eq!(extra, "userdb_quota_rule=*:storage=512M");
    for (query, emails) in [
        (
            "sort=email&order=asc",
            vec!["alice@mailbox.example", "first_last@mailbox.example"],
        ),
        (
            "sort=email&order=desc",
            vec!["first_last@mailbox.example", "alice@mailbox.example"],
        ),
        ("email=ALICE", vec!["alice@mailbox.example"]),
        ("email=first_last", vec!["first_last@mailbox.example"]),
        ("email=t_l", vec!["first_last@mailbox.example"]),
        ("email=e_m", vec![]),
        ("email=%25", vec![]),
        (
            "status=ACTIVE&email=mailbox.example&sort=email&order=asc",
            vec!["alice@mailbox.example", "first_last@mailbox.example"],
        ),
        ("status=DISABLED", vec![]),
    ] {
        let list = authed(&app, &reader)
            .get(&format!("/api/mail/accounts?{query}"))
            .await
            .expect(200);
        assert_eq!(field(&list, "email"), emails, "{query}: {list}");
    }

    for (action, n) in [
        ("mail.create", 2),
        ("mail.disable", 1),
        ("mail.enable", 1),
        ("mail.reset_password", 2),
    ] {
        assert_eq!(audit_count(&pool, action).await, n, "{action}");
    }

    pool.close().await;
    assert!(agent.terminate().await.success());
    app.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// VPS
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn vps_actions_are_queued_and_fail_as_unsupported() {
    let app = spawn(&[]).await;
    let acme = org_with_roles(&app, "acme", &["SUPER_ADMIN", "SUPPORT", "READ_ONLY"]).await;
    let other = org_with_roles(&app, "other", &["SUPER_ADMIN"]).await;
    let admin = acme.super_admin().token().to_owned();
    let support = acme.by_role("SUPPORT").token().to_owned();
    let reader = acme.by_role("READ_ONLY").token().to_owned();
    let stranger = other.super_admin().token().to_owned();
    let pool = app.db.pool().await;
    let hv1 = add_server(&app, &admin, "hv1", "WEB", "192.0.2.101").await;
    let hv2 = add_server(&app, &admin, "hv2", "WEB", "192.0.2.102").await;
    let theirs = add_server(&app, &stranger, "their-hv", "WEB", "192.0.2.201").await;

    let vps = |name: &str, server: &str| json!({ "name": name, "serverId": server, "cpuCores": 2, "memoryMb": 2048, "diskGb": 40 });
    authed(&app, &reader)
        .post("/api/vps", &vps("vm-1", &hv1))
        .await
        .assert_error(403, "forbidden");
    for bad in [
        "",
        "-vm",
        "vm 1",
        "vm;rm",
        "v\u{0430}m",
        "v".repeat(64).as_str(),
    ] {
        authed(&app, &admin)
            .post("/api/vps", &vps(bad, &hv1))
            .await
            .assert_invalid_field("name");
    }
    for (key, value) in [
        ("cpuCores", json!(0)),
        ("cpuCores", json!(1000)),
        ("memoryMb", json!(-1)),
        ("diskGb", json!(10_000_000)),
        ("diskGb", json!("big")),
    ] {
        let mut body = vps("vm-1", &hv1);
        body[key] = value;
        authed(&app, &admin)
            .post("/api/vps", &body)
            .await
            .assert_invalid_field(key);
    }
    for server in [NO_SUCH_ID, theirs.as_str()] {
        let reply = authed(&app, &admin)
            .post("/api/vps", &vps("vm-1", server))
            .await;
        reply.assert_error(422, "unprocessable_entity");
        assert_eq!(reply.body["error"]["details"]["field"], "serverId");
    }
    add_domain(&pool, &other.tenant_id, "their-vm.example").await;
    let their_domain: String =
        sqlx::query_scalar("SELECT id::text FROM domains WHERE name = 'their-vm.example'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let mut body = vps("vm-1", &hv1);
    body["domainId"] = json!(their_domain);
    let reply = authed(&app, &admin).post("/api/vps", &body).await;
    reply.assert_error(422, "unprocessable_entity");
    assert_eq!(reply.body["error"]["details"]["field"], "domainId");
    assert_eq!(count(&pool, "SELECT count(*) FROM vps_instances").await, 0);
    assert_eq!(count(&pool, "SELECT count(*) FROM jobs").await, 0);

    // Create, then every action: 202 and a job that fails, saying why.
    let created = authed(&app, &admin)
        .post("/api/vps", &vps("vm-1", &hv1))
        .await
        .expect(202);
    let id = created["vpsId"].as_str().unwrap().to_owned();
    let mut jobs = vec![job_id(&created)];
    for action in ["start", "stop", "reboot"] {
        let reply = authed(&app, &support)
            .post(&format!("/api/vps/{id}/{action}"), &json!({}))
            .await
            .expect(202);
        jobs.push(job_id(&reply));
    }
    authed(&app, &support)
        .post(&format!("/api/vps/{id}/destroy"), &json!({}))
        .await
        .assert_error(403, "forbidden");
    authed(&app, &reader)
        .post(&format!("/api/vps/{id}/start"), &json!({}))
        .await
        .assert_error(403, "forbidden");
    let reply = authed(&app, &admin)
        .post(&format!("/api/vps/{id}/destroy"), &json!({}))
        .await
        .expect(202);
    jobs.push(job_id(&reply));
    for (job, action) in jobs
        .iter()
        .zip(["create", "start", "stop", "reboot", "destroy"])
    {
        let failed = wait_job_status(&app, &admin, job, "FAILED").await;
        assert_eq!(failed["type"], "PROVISION_VPS");
        assert_eq!(failed["payload"]["action"], action);
        assert_eq!(failed["attempts"], 1, "a permanent failure: {failed}");
        let error = failed["lastError"].as_str().unwrap();
        assert!(error.contains("unsupported"), "{failed}");
    }
    let detail = authed(&app, &reader)
        .get(&format!("/api/vps/{id}"))
        .await
        .expect(200);
    assert_eq!(detail["status"], "PENDING", "{detail}");
    assert_eq!(detail["name"], "vm-1");
    assert_eq!(detail["serverId"], hv1.as_str());
    assert_eq!(detail["cpuCores"], 2);

    // The list and its filters.
    authed(&app, &admin)
        .post("/api/vps", &vps("vm-2", &hv2))
        .await
        .expect(202);
    for (query, names) in [
        ("sort=name&order=asc", vec!["vm-1", "vm-2"]),
        ("sort=name&order=desc", vec!["vm-2", "vm-1"]),
        (&format!("serverId={hv1}") as &str, vec!["vm-1"]),
        (&format!("serverId={hv2}"), vec!["vm-2"]),
        ("status=PENDING&sort=name&order=asc", vec!["vm-1", "vm-2"]),
        ("status=RUNNING", vec![]),
    ] {
        let list = authed(&app, &reader)
            .get(&format!("/api/vps?{query}"))
            .await
            .expect(200);
        assert_eq!(field(&list, "name"), names, "{query}: {list}");
    }
    authed(&app, &reader)
        .get("/api/vps?status=ON_FIRE")
        .await
        .assert_invalid_field("status");
    authed(&app, &reader)
        .get("/api/vps?sort=cpu")
        .await
        .assert_invalid_field("sort");

    // Another tenant's instance does not exist for this one.
    authed(&app, &stranger)
        .get(&format!("/api/vps/{id}"))
        .await
        .assert_error(404, "not_found");
    for action in ["start", "stop", "reboot", "destroy"] {
        authed(&app, &stranger)
            .post(&format!("/api/vps/{id}/{action}"), &json!({}))
            .await
            .assert_error(404, "not_found");
    }
    assert_eq!(
        authed(&app, &stranger).get("/api/vps").await.expect(200)["total"],
        0
    );

    for (action, n) in [
        ("vps.create", 2),
        ("vps.start", 1),
        ("vps.stop", 1),
        ("vps.reboot", 1),
        ("vps.destroy", 1),
    ] {
        assert_eq!(audit_count(&pool, action).await, n, "{action}");
    }

    pool.close().await;
    app.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// Hosting
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn hosting_accounts_made_by_hand_go_live_on_the_web_server() {
    let web = WebSandbox::start();
    let app = spawn(&[]).await;
    let acme = org_with_roles(&app, "acme", &["SUPER_ADMIN", "SUPPORT", "READ_ONLY"]).await;
    let other = org_with_roles(&app, "other", &["SUPER_ADMIN"]).await;
    let admin = acme.super_admin().token().to_owned();
    let support = acme.by_role("SUPPORT").token().to_owned();
    let reader = acme.by_role("READ_ONLY").token().to_owned();
    let stranger = other.super_admin().token().to_owned();
    let pool = app.db.pool().await;
    let web_id = add_server(&app, &admin, "srv1-web", "WEB", "192.0.2.80").await;
    let web_toml = format!("roles = [\"web\"]\n{}", web.agent_toml());
    let mut agent = start_agent(&app, &admin, &web_id, "srv1-web", &web_toml).await;

    // Bad domains: 400 naming `domain`, and nothing written anywhere.
    for bad in [
        "a.com;rm -rf /",
        "../etc",
        "ex\u{0430}mple.com",
        "",
        "-dash.example",
    ] {
        authed(&app, &admin)
            .post("/api/hosting/accounts", &json!({ "domain": bad }))
            .await
            .assert_invalid_field("domain");
    }
    authed(&app, &admin)
        .post(
            "/api/hosting/accounts",
            &json!({ "domain": "fine.example", "phpVersion": "8.2; rm -rf /" }),
        )
        .await
        .assert_invalid_field("phpVersion");
    let reply = authed(&app, &admin)
        .post(
            "/api/hosting/accounts",
            &json!({ "domain": "fine.example", "customerId": NO_SUCH_ID }),
        )
        .await;
    reply.assert_error(422, "unprocessable_entity");
    assert_eq!(reply.body["error"]["details"]["field"], "customerId");
    let site = json!({ "domain": "manual-site.example", "phpVersion": "8.2" });
    authed(&app, &reader)
        .post("/api/hosting/accounts", &site)
        .await
        .assert_error(403, "forbidden");
    authed(&app, &support)
        .post("/api/hosting/accounts", &site)
        .await
        .assert_error(403, "forbidden");
    for table in [
        "domains",
        "jobs",
        "hosting_accounts",
        "audit_logs WHERE action LIKE 'hosting.%'",
    ] {
        assert_eq!(
            count(&pool, &format!("SELECT count(*) FROM {table}")).await,
            0,
            "{table}"
        );
    }
    assert!(web.read("root/etc/passwd").is_empty());
    assert!(
        std::fs::read_dir(web.path("sites"))
            .unwrap()
            .next()
            .is_none()
    );

    // A manual account: the job places it on the web server, which serves it.
    let created = authed(&app, &admin)
        .post("/api/hosting/accounts", &site)
        .await
        .expect(202);
    // A second one for the same domain, even while the first is still queued, is refused.
    authed(&app, &admin)
        .post("/api/hosting/accounts", &site)
        .await
        .assert_error(409, "conflict");
    let done = wait_job(&app, &admin, &job_id(&created)).await;
    assert_eq!(done["serverId"], web_id.as_str());
    assert_eq!(done["result"]["systemUser"], "manual-site_example");
    let account_id = done["result"]["hostingAccountId"]
        .as_str()
        .unwrap()
        .to_owned();
    let account_path = format!("/api/hosting/accounts/{account_id}");
    let account = authed(&app, &reader).get(&account_path).await.expect(200);
    assert_eq!(account["status"], "ACTIVE", "{account}");
    assert_eq!(account["domain"], "manual-site.example");
    assert_eq!(account["domainId"], created["domainId"]);
    assert_eq!(account["serverId"], web_id.as_str());
    assert_eq!(account["phpVersion"], "8.2");
    assert_eq!(account["homeDir"], "/home/manual-site_example");
    assert!(web.passwd_line("manual-site_example").is_some());
    assert!(web.nginx_config_ok());
    let body = web.wait_for("manual-site.example", Some(200));
    assert!(body.contains("manual-site.example"), "{body}");
    let domain_status: String =
        sqlx::query_scalar("SELECT status::text FROM domains WHERE name = 'manual-site.example'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(domain_status, "ACTIVE", "the domain is live with its site");

    authed(&app, &admin)
        .post("/api/hosting/accounts", &site)
        .await
        .assert_error(409, "conflict");
    authed(&app, &stranger)
        .post("/api/hosting/accounts", &site)
        .await
        .assert_error(409, "conflict");
    assert_eq!(
        count(&pool, "SELECT count(*) FROM hosting_accounts").await,
        1
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM jobs WHERE type = 'PROVISION_HOSTING'"
        )
        .await,
        1
    );

    // A second account, then the list's filters and sorting.
    let second = authed(&app, &admin)
        .post(
            "/api/hosting/accounts",
            &json!({ "domain": "second-site.example" }),
        )
        .await
        .expect(202);
    let second_id = wait_job(&app, &admin, &job_id(&second)).await["result"]["hostingAccountId"]
        .as_str()
        .unwrap()
        .to_owned();
    web.wait_for("second-site.example", Some(200));

    // A second action while one is queued is refused: the agent is away, the suspend waits.
    assert!(agent.terminate().await.success());
    let suspend = authed(&app, &support)
        .post(
            &format!("/api/hosting/accounts/{second_id}/suspend"),
            &json!({}),
        )
        .await
        .expect(202);
    for action in ["unsuspend", "suspend", "terminate"] {
        authed(&app, &admin)
            .post(
                &format!("/api/hosting/accounts/{second_id}/{action}"),
                &json!({}),
            )
            .await
            .assert_error(409, "conflict");
    }
    agent.start();
    wait_job(&app, &admin, &job_id(&suspend)).await;
    web.wait_for("second-site.example", Some(503));
    web.wait_for("manual-site.example", Some(200));

    for (query, domains) in [
        (
            "sort=domain&order=asc",
            vec!["manual-site.example", "second-site.example"],
        ),
        (
            "sort=domain&order=desc",
            vec!["second-site.example", "manual-site.example"],
        ),
        ("status=ACTIVE", vec!["manual-site.example"]),
        ("status=SUSPENDED", vec!["second-site.example"]),
        ("status=TERMINATED", vec![]),
        (
            &format!("serverId={web_id}&sort=systemUser&order=asc") as &str,
            vec!["manual-site.example", "second-site.example"],
        ),
        (&format!("serverId={NO_SUCH_ID}"), vec![]),
        ("domain=manual", vec!["manual-site.example"]),
        ("domain=SECOND-site", vec!["second-site.example"]),
        ("domain=%25", vec![]),
    ] {
        let list = authed(&app, &reader)
            .get(&format!("/api/hosting/accounts?{query}"))
            .await
            .expect(200);
        assert_eq!(field(&list, "domain"), domains, "{query}: {list}");
        assert_eq!(list["total"], domains.len(), "{query}: {list}");
    }
    authed(&app, &reader)
        .get("/api/hosting/accounts?status=GONE")
        .await
        .assert_invalid_field("status");
    authed(&app, &reader)
        .get("/api/hosting/accounts?sort=password")
        .await
        .assert_invalid_field("sort");

    // Another tenant's accounts do not exist for this one.
    authed(&app, &stranger)
        .get(&account_path)
        .await
        .assert_error(404, "not_found");
    for action in ["suspend", "unsuspend", "terminate"] {
        authed(&app, &stranger)
            .post(&format!("{account_path}/{action}"), &json!({}))
            .await
            .assert_error(404, "not_found");
    }
    assert_eq!(
        authed(&app, &stranger)
            .get("/api/hosting/accounts")
            .await
            .expect(200)["total"],
        0
    );
    assert_eq!(
        authed(&app, &admin).get(&account_path).await.expect(200)["status"],
        "ACTIVE"
    );

    assert_eq!(audit_count(&pool, "hosting.create").await, 2);
    assert_eq!(audit_count(&pool, "hosting.suspend").await, 1);
    assert_eq!(audit_count(&pool, "hosting.unsuspend").await, 0);

    pool.close().await;
    assert!(agent.terminate().await.success());
    app.cleanup().await;
}

/// Placement (the provisioning issue): a new site goes to the tenant's active WEB server whose
/// agent is online and that holds the fewest live accounts; inactive and offline servers are
/// passed over, and terminated accounts do not count.
#[tokio::test]
async fn sites_are_placed_on_the_least_loaded_active_online_web_server() {
    let app = spawn(&[]).await;
    let org = org_with_roles(&app, "acme", &["SUPER_ADMIN"]).await;
    let root = org.super_admin().token().to_owned();
    let web_a = WebSandbox::start();
    let web_b = WebSandbox::start();
    let a = add_server(&app, &root, "web-a", "WEB", "192.0.2.10").await;
    let b = add_server(&app, &root, "web-b", "WEB", "192.0.2.11").await;
    let mut agent_a = start_agent(
        &app,
        &root,
        &a,
        "web-a",
        &format!("roles = [\"web\"]\n{}", web_a.agent_toml()),
    )
    .await;
    let mut agent_b = start_agent(
        &app,
        &root,
        &b,
        "web-b",
        &format!("roles = [\"web\"]\n{}", web_b.agent_toml()),
    )
    .await;

    // Creates a site by hand and answers the server it was placed on, once it is live.
    let place = |domain: &'static str| {
        let app = &app;
        let root = root.clone();
        async move {
            let reply = authed(app, &root)
                .post("/api/hosting/accounts", &json!({ "domain": domain }))
                .await
                .expect(202);
            let done = wait_job(app, &root, &job_id(&reply)).await;
            done["serverId"].as_str().unwrap().to_owned()
        }
    };
    // Both empty: the older server first, then the one with fewer accounts.
    assert_eq!(place("one.example.net").await, a);
    assert_eq!(place("two.example.net").await, b);
    assert_eq!(place("three.example.net").await, a);
    // B has fewer accounts but is inactive: passed over.
    authed(&app, &root)
        .patch(&format!("/api/servers/{b}"), &json!({ "isActive": false }))
        .await
        .expect(200);
    assert_eq!(place("four.example.net").await, a);
    // Active again, but its agent is offline: passed over too.
    authed(&app, &root)
        .patch(&format!("/api/servers/{b}"), &json!({ "isActive": true }))
        .await
        .expect(200);
    assert!(agent_b.terminate().await.success());
    wait_for("web-b to be offline", WAIT, || async {
        let s = authed(&app, &root)
            .get(&format!("/api/servers/{b}"))
            .await
            .expect(200);
        (s["agentOnline"] == false).then_some(())
    })
    .await;
    assert_eq!(place("five.example.net").await, a);
    // A holds 4 live accounts, B 1. Terminated accounts do not count: with three of A's
    // terminated, both hold one.
    agent_b.start();
    wait_for("web-b to be online", WAIT, || async {
        let s = authed(&app, &root)
            .get(&format!("/api/servers/{b}"))
            .await
            .expect(200);
        (s["agentOnline"] == true).then_some(())
    })
    .await;
    let on_a = authed(&app, &root)
        .get(&format!("/api/hosting/accounts?serverId={a}&status=ACTIVE"))
        .await
        .expect(200);
    assert_eq!(on_a["total"], 4, "{on_a}");
    for account in items(&on_a).iter().take(3) {
        let id = account["id"].as_str().unwrap();
        let reply = authed(&app, &root)
            .post(&format!("/api/hosting/accounts/{id}/terminate"), &json!({}))
            .await
            .expect(202);
        wait_job(&app, &root, &job_id(&reply)).await;
    }
    // A: 1 live account, B: 1 — a tie goes to the older server; then B.
    assert_eq!(place("six.example.net").await, a);
    assert_eq!(place("seven.example.net").await, b);
    assert!(web_b.passwd_line("seven_example_net").is_some());
    assert!(web_a.passwd_line("seven_example_net").is_none());

    assert!(agent_a.terminate().await.success());
    assert!(agent_b.terminate().await.success());
    app.cleanup().await;
}
