//! Backups (spec §8.6) against the real `mpanel` process: the BackupJob routes (list, detail,
//! create, rerun) with their validation and tenant isolation, the internal report callback
//! of backup scripts, and one run end to end: a RUN_BACKUP job goes through the fleet
//! dispatcher to a real agent serving the backup role, which archives a site directory with
//! the real tar and zstd; the BackupJob records the archive's size, SHA-256 and path.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use mpanel_tests::{
    TestApp,
    api::{Org, anon, authed, create_server, org_with_roles, unique},
    fleet::{AgentProc, enrollment_token, hub_addr, wait_job_status},
    panel::{BACKUP_REPORT_KEY, INTERNAL_KEY},
    wait_for,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

/// A domain of `tenant` (and, when `server` is given, its live hosting account there for
/// system user `user`), written directly: the hosting flow is not under test here.
async fn domain_with_account(pool: &PgPool, tenant: &str, server: Option<(&str, &str)>) -> String {
    let name = format!("{}.example.com", unique("site"));
    let domain: Uuid = sqlx::query_scalar(
        "INSERT INTO domains (tenant_id, name) VALUES ($1::uuid, $2) RETURNING id",
    )
    .bind(tenant)
    .bind(&name)
    .fetch_one(pool)
    .await
    .unwrap();
    if let Some((server, user)) = server {
        sqlx::query(
            "INSERT INTO hosting_accounts (tenant_id, domain_id, server_id, system_user, home_dir)
             VALUES ($1::uuid, $2, $3::uuid, $4, '/home/' || $4)",
        )
        .bind(tenant)
        .bind(domain)
        .bind(server)
        .bind(user)
        .execute(pool)
        .await
        .unwrap();
    }
    domain.to_string()
}

async fn count(pool: &PgPool, sql: &str, id: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn audits(pool: &PgPool, action: &str, backup: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM audit_logs WHERE action = $1 AND details->>'backupJobId' = $2",
    )
    .bind(action)
    .bind(backup)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The backup scripts, with their own key (`BACKUP_REPORT_SECRET`).
fn internal(app: &TestApp) -> mpanel_tests::api::Api<'_> {
    anon(app).authorization(&format!("Bearer {BACKUP_REPORT_KEY}"))
}

async fn backup(app: &TestApp, token: &str, id: &str) -> Value {
    authed(app, token)
        .get(&format!("/api/backups/jobs/{id}"))
        .await
        .expect(200)
}

#[tokio::test]
async fn backup_jobs_are_defined_listed_rerun_and_scoped_to_their_tenant() {
    // No worker: queued runs stay PENDING for inspection.
    let app = TestApp::spawn_with(&[("RUN_WORKER", "false")]).await;
    let acme = org_with_roles(&app, "acme", &["SUPER_ADMIN", "READ_ONLY"]).await;
    let rival = org_with_roles(&app, "rival", &["SUPER_ADMIN"]).await;
    let admin = acme.super_admin().token().to_owned();
    let pool = app.db.pool().await;
    let domain = domain_with_account(&pool, &acme.tenant_id, None).await;
    let rival_domain = domain_with_account(&pool, &rival.tenant_id, None).await;
    let server = create_server(&app, &admin, &unique("srv")).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let api = authed(&app, &admin);

    // Create: 201, and the same definition again answers the existing row.
    let site = api
        .post(
            "/api/backups/jobs",
            &json!({ "type": "CLIENT_SITE", "targetId": domain }),
        )
        .await
        .expect(201);
    let site_id = site["id"].as_str().unwrap().to_owned();
    assert_eq!(site["status"], "PENDING");
    assert_eq!(site["targetId"], domain.as_str());
    assert_eq!(site["tenantId"], acme.tenant_id.as_str());
    assert_eq!(site["database"], Value::Null);
    let again = api
        .post(
            "/api/backups/jobs",
            &json!({ "type": "CLIENT_SITE", "targetId": domain }),
        )
        .await
        .expect(200);
    assert_eq!(again["id"], site_id.as_str());
    assert_eq!(audits(&pool, "backup.create", &site_id).await, 1);

    let db = api
        .post(
            "/api/backups/jobs",
            &json!({ "type": "DATABASE", "targetId": domain, "database": "shop_db" }),
        )
        .await
        .expect(201);
    assert_eq!(db["database"], "shop_db");
    let system = api
        .post(
            "/api/backups/jobs",
            &json!({ "type": "SYSTEM", "targetId": server }),
        )
        .await
        .expect(201);
    let system_id = system["id"].as_str().unwrap().to_owned();

    // Bad input: a clear 400 naming the field, nothing created.
    for (body, field) in [
        (
            json!({ "type": "DATABASE", "targetId": domain }),
            "database",
        ),
        (
            json!({ "type": "DATABASE", "targetId": domain, "database": "a.com;rm -rf /" }),
            "database",
        ),
        (
            json!({ "type": "DATABASE", "targetId": domain, "database": "../etc" }),
            "database",
        ),
        (
            json!({ "type": "DATABASE", "targetId": domain, "database": "shop\ndb" }),
            "database",
        ),
        (
            json!({ "type": "DATABASE", "targetId": domain, "database": "shоp" }),
            "database",
        ),
        (
            json!({ "type": "DATABASE", "targetId": domain, "database": "Shop" }),
            "database",
        ),
        (
            json!({ "type": "CLIENT_SITE", "targetId": domain, "database": "shop" }),
            "database",
        ),
        (json!({ "type": "NOPE", "targetId": domain }), "type"),
        (
            json!({ "type": "CLIENT_SITE", "targetId": "../etc" }),
            "targetId",
        ),
        (json!({ "type": "CLIENT_SITE" }), "targetId"),
        (
            json!({ "type": "CLIENT_SITE", "targetId": domain, "path": "/etc" }),
            "path",
        ),
    ] {
        api.post("/api/backups/jobs", &body)
            .await
            .assert_invalid_field(field);
    }
    // A target that is not the tenant's: 422 on targetId.
    for body in [
        json!({ "type": "CLIENT_SITE", "targetId": rival_domain }),
        json!({ "type": "CLIENT_SITE", "targetId": Uuid::new_v4().to_string() }),
        json!({ "type": "SYSTEM", "targetId": domain }),
        json!({ "type": "DATABASE", "targetId": server, "database": "x" }),
    ] {
        let reply = api.post("/api/backups/jobs", &body).await;
        reply.assert_error(422, "unprocessable_entity");
        assert_eq!(reply.body["error"]["details"]["field"], "targetId");
    }
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM backup_jobs WHERE tenant_id = $1::uuid",
            &acme.tenant_id
        )
        .await,
        3
    );

    // List: filters, sorting, total; the tenant's rows only.
    let all = api.get("/api/backups/jobs").await.expect(200);
    assert_eq!(all["total"], 3, "{all}");
    let dbs = api.get("/api/backups/jobs?type=DATABASE").await.expect(200);
    assert_eq!(dbs["total"], 1);
    assert_eq!(dbs["items"][0]["database"], "shop_db");
    let by_target = api
        .get(&format!(
            "/api/backups/jobs?targetId={domain}&sort=type&order=asc"
        ))
        .await
        .expect(200);
    assert_eq!(by_target["total"], 2);
    assert_eq!(by_target["items"][0]["type"], "CLIENT_SITE");
    let pending = api
        .get("/api/backups/jobs?status=PENDING&pageSize=1&sort=lastRunAt")
        .await
        .expect(200);
    assert_eq!(pending["total"], 3);
    assert_eq!(pending["items"].as_array().unwrap().len(), 1);
    let none = api
        .get(&format!("/api/backups/jobs?serverId={server}"))
        .await
        .expect(200);
    assert_eq!(none["total"], 0);
    for (query, field) in [
        ("status=DONE", "status"),
        ("type=x", "type"),
        ("targetId=1", "targetId"),
        ("sort=path", "sort"),
        ("bogus=1", "bogus"),
    ] {
        api.get(&format!("/api/backups/jobs?{query}"))
            .await
            .assert_invalid_field(field);
    }
    let theirs = authed(&app, rival.super_admin().token())
        .get("/api/backups/jobs")
        .await
        .expect(200);
    assert_eq!(theirs["total"], 0);

    // Detail; another tenant's id (or no id at all) is 404.
    let detail = backup(&app, &admin, &site_id).await;
    assert_eq!(detail["runs"], json!([]));
    // READ_ONLY reads, cannot run.
    let reader = acme.by_role("READ_ONLY").token().to_owned();
    authed(&app, &reader)
        .get(&format!("/api/backups/jobs/{site_id}"))
        .await
        .expect(200);
    authed(&app, &reader)
        .post(&format!("/api/backups/jobs/{site_id}/rerun"), &json!({}))
        .await
        .assert_error(403, "forbidden");
    let other = authed(&app, rival.super_admin().token());
    other
        .get(&format!("/api/backups/jobs/{site_id}"))
        .await
        .assert_error(404, "not_found");
    other
        .post(&format!("/api/backups/jobs/{site_id}/rerun"), &json!({}))
        .await
        .assert_error(404, "not_found");
    api.get("/api/backups/jobs/not-a-uuid")
        .await
        .assert_error(404, "not_found");
    api.get(&format!("/api/backups/jobs/{}", Uuid::new_v4()))
        .await
        .assert_error(404, "not_found");
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM jobs WHERE backup_job_id::text = $1",
            &site_id
        )
        .await,
        0,
        "the other tenant's rerun queued nothing"
    );

    // Rerun: 202 with a RUN_BACKUP job; again while it is queued: the same job.
    let queued = api
        .post(&format!("/api/backups/jobs/{site_id}/rerun"), &json!({}))
        .await
        .expect(202);
    let job_id = queued["jobId"].as_str().unwrap().to_owned();
    assert_eq!(queued["alreadyQueued"], false);
    let twice = api
        .post(&format!("/api/backups/jobs/{site_id}/rerun"), &json!({}))
        .await
        .expect(202);
    assert_eq!(twice["jobId"], job_id.as_str());
    assert_eq!(twice["alreadyQueued"], true);
    let job = api.get(&format!("/api/jobs/{job_id}")).await.expect(200);
    assert_eq!(job["type"], "RUN_BACKUP");
    assert_eq!(job["payload"]["backupJobId"], site_id.as_str());
    assert_eq!(job["status"], "PENDING");
    assert_eq!(audits(&pool, "backup.rerun", &site_id).await, 1);
    // SYSTEM backups are the scripts' business.
    api.post(&format!("/api/backups/jobs/{system_id}/rerun"), &json!({}))
        .await
        .assert_error(409, "conflict");

    pool.close().await;
    app.cleanup().await;
}

#[tokio::test]
async fn scripts_report_runs_with_the_internal_key_and_twice_changes_nothing() {
    let app = TestApp::spawn_with(&[("RUN_WORKER", "false")]).await;
    let acme = org_with_roles(&app, "acme", &["SUPER_ADMIN"]).await;
    let admin = acme.super_admin().token().to_owned();
    let pool = app.db.pool().await;
    let server = create_server(&app, &admin, &unique("srv")).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let created = authed(&app, &admin)
        .post(
            "/api/backups/jobs",
            &json!({ "type": "SYSTEM", "targetId": server }),
        )
        .await
        .expect(201);
    let id = created["id"].as_str().unwrap().to_owned();
    let sha = "AB".repeat(32);
    let success = json!({
        "jobId": id,
        "status": "SUCCESS",
        "details": {
            "sizeBytes": 123_456,
            "sha256": sha,
            "path": "/srv/backups/system/2026-11-24.tar.zst",
            "durationSecs": 42,
        },
    });

    // Without the key, or with a wrong one: 401, nothing changed.
    let before = backup(&app, &admin, &id).await;
    anon(&app)
        .post("/api/backups/report", &success)
        .await
        .assert_error(401, "unauthorized");
    anon(&app)
        .authorization("Bearer wrong-key")
        .post("/api/backups/report", &success)
        .await
        .assert_error(401, "unauthorized");
    authed(&app, &admin)
        .post("/api/backups/report", &success)
        .await
        .assert_error(401, "unauthorized");
    // The marketing backend's key opens orders, not backup reports (and the other way round).
    anon(&app)
        .authorization(&format!("Bearer {INTERNAL_KEY}"))
        .post("/api/backups/report", &success)
        .await
        .assert_error(401, "unauthorized");
    internal(&app)
        .post("/api/orders", &json!({}))
        .await
        .assert_error(401, "unauthorized");
    assert_eq!(backup(&app, &admin, &id).await, before);
    assert_eq!(audits(&pool, "backup.report", &id).await, 0);

    // Bad reports: 400 naming the field, 404 for an unknown job.
    let bad = |patch: Value| {
        let mut body = success.clone();
        for (k, v) in patch.as_object().unwrap() {
            if k == "details" {
                for (dk, dv) in v.as_object().unwrap() {
                    body["details"][dk] = dv.clone();
                }
            } else {
                body[k] = v.clone();
            }
        }
        body
    };
    for (body, field) in [
        (bad(json!({ "status": "DONE" })), "status"),
        (bad(json!({ "status": "PENDING" })), "status"),
        (bad(json!({ "jobId": "../etc" })), "jobId"),
        (
            bad(json!({ "details": { "sha256": "zz" } })),
            "details.sha256",
        ),
        (
            bad(json!({ "details": { "sizeBytes": -1 } })),
            "details.sizeBytes",
        ),
        (
            bad(json!({ "details": { "sizeBytes": "big" } })),
            "details.sizeBytes",
        ),
        (
            bad(json!({ "details": { "path": "/a\n/b" } })),
            "details.path",
        ),
        (bad(json!({ "details": { "path": 7 } })), "details.path"),
        (bad(json!({ "extra": true })), "extra"),
        (json!({ "jobId": id }), "status"),
    ] {
        internal(&app)
            .post("/api/backups/report", &body)
            .await
            .assert_invalid_field(field);
    }
    internal(&app)
        .post(
            "/api/backups/report",
            &bad(json!({ "jobId": Uuid::new_v4().to_string() })),
        )
        .await
        .assert_error(404, "not_found");
    assert_eq!(backup(&app, &admin, &id).await, before);

    // A success report, sent with `x-internal-key`.
    let res = app
        .http
        .post(app.url("/api/backups/report"))
        .header("x-internal-key", BACKUP_REPORT_KEY)
        .json(&success)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let reported: Value = res.json().await.unwrap();
    assert_eq!(reported["status"], "SUCCESS");
    assert_eq!(reported["lastSizeBytes"], 123_456);
    assert_eq!(reported["lastSha256"], sha.to_lowercase());
    assert_eq!(
        reported["lastPath"],
        "/srv/backups/system/2026-11-24.tar.zst"
    );
    assert_eq!(reported["details"]["durationSecs"], 42);
    assert!(reported["lastRunAt"].is_string());
    assert_eq!(audits(&pool, "backup.report", &id).await, 1);

    // The same report again: 200, nothing more recorded.
    let again = internal(&app)
        .post("/api/backups/report", &success)
        .await
        .expect(200);
    assert_eq!(again["updatedAt"], reported["updatedAt"]);
    assert_eq!(again["lastRunAt"], reported["lastRunAt"]);
    assert_eq!(audits(&pool, "backup.report", &id).await, 1);
    let detail = backup(&app, &admin, &id).await;
    assert_eq!(detail["runs"].as_array().unwrap().len(), 1, "{detail}");
    assert_eq!(detail["runs"][0]["source"], "REPORT");
    assert_eq!(detail["runs"][0]["sizeBytes"], 123_456);

    // RUNNING, then FAILED: the error is kept, the last good archive too.
    let running = internal(&app)
        .post(
            "/api/backups/report",
            &json!({ "jobId": id, "status": "RUNNING" }),
        )
        .await
        .expect(200);
    assert_eq!(running["status"], "RUNNING");
    let failed = internal(&app)
        .post(
            "/api/backups/report",
            &json!({ "jobId": id, "status": "FAILED", "details": { "error": "disk full\nat /srv" } }),
        )
        .await
        .expect(200);
    assert_eq!(failed["status"], "FAILED");
    assert_eq!(failed["lastError"], "disk full\nat /srv");
    assert_eq!(failed["lastSha256"], sha.to_lowercase());
    assert_eq!(audits(&pool, "backup.report", &id).await, 3);
    let runs = backup(&app, &admin, &id).await["runs"].clone();
    assert_eq!(runs.as_array().unwrap().len(), 2, "{runs}");
    assert_eq!(runs[0]["status"], "FAILED");

    pool.close().await;
    app.cleanup().await;
}

/// Every regular file below `dir`, sorted.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

async fn rerun(app: &TestApp, token: &str, backup: &str) -> String {
    authed(app, token)
        .post(&format!("/api/backups/jobs/{backup}/rerun"), &json!({}))
        .await
        .expect(202)["jobId"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn start_backup_agent(app: &TestApp, org: &Org, server: &str, sandbox: &Path) -> AgentProc {
    let admin = org.super_admin().token();
    let hub = hub_addr(app).await;
    let mut agent =
        AgentProc::enroll(app, "srv1-web", &enrollment_token(app, admin, server).await).await;
    agent.configure(
        hub,
        &format!(
            "roles = [\"web\", \"backup\"]\n[backup]\narchive_dir = \"{}\"\nsites_root = \"{}\"\nkeep = 2\n",
            sandbox.join("archives").display(),
            sandbox.join("sites").display(),
        ),
    );
    agent.start();
    wait_for("the agent to be online", WAIT, || async {
        let s = authed(app, admin)
            .get(&format!("/api/servers/{server}"))
            .await
            .expect(200);
        (s["agentOnline"] == true).then_some(())
    })
    .await;
    agent
}

#[tokio::test]
async fn a_rerun_archives_the_site_on_its_agent_and_records_the_archive() {
    let app = TestApp::spawn_with(&[
        ("AGENT_HEARTBEAT_INTERVAL", "1s"),
        ("JOB_SWEEP_INTERVAL", "200ms"),
        ("JOB_RETRY_BASE", "200ms"),
    ])
    .await;
    let acme = org_with_roles(&app, "acme", &["SUPER_ADMIN"]).await;
    let admin = acme.super_admin().token().to_owned();
    let pool = app.db.pool().await;
    let server = create_server(&app, &admin, "srv1-web").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let sandbox = tempfile::tempdir().unwrap();
    let site = sandbox.path().join("sites/shop_example");
    std::fs::create_dir_all(site.join("public_html")).unwrap();
    std::fs::write(site.join("public_html/index.php"), "<?php echo 'shop';").unwrap();
    std::fs::write(site.join("orders.csv"), "1,2,3\n".repeat(1000)).unwrap();
    let mut agent = start_backup_agent(&app, &acme, &server, sandbox.path()).await;

    let domain = domain_with_account(&pool, &acme.tenant_id, Some((&server, "shop_example"))).await;
    let created = authed(&app, &admin)
        .post(
            "/api/backups/jobs",
            &json!({ "type": "CLIENT_SITE", "targetId": domain }),
        )
        .await
        .expect(201);
    let id = created["id"].as_str().unwrap().to_owned();

    // One run: the job succeeds, the BackupJob describes the archive on disk.
    let job_id = rerun(&app, &admin, &id).await;
    let job = wait_job_status(&app, &admin, &job_id, "SUCCESS").await;
    assert_eq!(job["serverId"], server.as_str(), "{job}");
    let done = backup(&app, &admin, &id).await;
    assert_eq!(done["status"], "SUCCESS", "{done}");
    assert_eq!(done["serverId"], server.as_str());
    assert_eq!(done["lastError"], Value::Null);
    assert!(done["lastRunAt"].is_string());
    let path = PathBuf::from(done["lastPath"].as_str().unwrap());
    assert_eq!(
        path.parent().unwrap(),
        sandbox.path().join(format!("archives/site/{domain}"))
    );
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(done["lastSizeBytes"].as_u64(), Some(bytes.len() as u64));
    assert_eq!(
        done["lastSha256"].as_str().unwrap(),
        hex::encode(Sha256::digest(&bytes))
    );
    assert_eq!(job["result"]["sha256"], done["lastSha256"]);
    assert_eq!(done["runs"].as_array().unwrap().len(), 1);
    assert_eq!(done["runs"][0]["source"], "AGENT");
    assert_eq!(done["runs"][0]["jobId"], job_id.as_str());
    // The archive is a zstd-compressed tar (magic 28 b5 2f fd).
    assert_eq!(&bytes[..4], &[0x28, 0xb5, 0x2f, 0xfd]);

    // Two more runs: the agent keeps the newest two archives.
    for _ in 0..2 {
        let j = rerun(&app, &admin, &id).await;
        wait_job_status(&app, &admin, &j, "SUCCESS").await;
    }
    let archives = files_below(&sandbox.path().join("archives"));
    assert_eq!(archives.len(), 2, "{archives:?}");
    assert!(!path.exists(), "the first archive was pruned");
    let latest = backup(&app, &admin, &id).await;
    assert_eq!(
        PathBuf::from(latest["lastPath"].as_str().unwrap()),
        archives[1]
    );
    assert_eq!(latest["runs"].as_array().unwrap().len(), 3);

    // A site whose directory is missing: a permanent failure, recorded, nothing on disk.
    let ghost = domain_with_account(&pool, &acme.tenant_id, Some((&server, "ghost_example"))).await;
    let ghost_id = authed(&app, &admin)
        .post(
            "/api/backups/jobs",
            &json!({ "type": "CLIENT_SITE", "targetId": ghost }),
        )
        .await
        .expect(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let j = rerun(&app, &admin, &ghost_id).await;
    let failed_job = wait_job_status(&app, &admin, &j, "FAILED").await;
    assert_eq!(failed_job["attempts"], 1, "not retried: {failed_job}");
    let failed = backup(&app, &admin, &ghost_id).await;
    assert_eq!(failed["status"], "FAILED");
    assert!(
        failed["lastError"]
            .as_str()
            .unwrap()
            .contains("backup_target_missing"),
        "{failed}"
    );
    assert_eq!(failed["lastPath"], Value::Null);
    assert_eq!(files_below(&sandbox.path().join("archives")).len(), 2);

    pool.close().await;
    assert!(agent.terminate().await.success());
    app.cleanup().await;
}
