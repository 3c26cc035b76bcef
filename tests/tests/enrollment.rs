//! Enrollment against the real `mpanel` process and the real `mpanel-agent` binary:
//! issuing tokens (RBAC, tenant scoping, the answer's command and the ports it names behind
//! PORT=0), redeeming them (files, modes, certificate
//! identity, rows), every way a token is refused, an agent that refuses a panel with another
//! CA, re-enrollment, and the CA's own files across a restart.
//!
//! Certificates are inspected with the `openssl` command-line tool, so the checks do not
//! reuse the code under test.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Output, Stdio},
};

use mpanel_tests::{TestApp, fleet, panel};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use uuid::Uuid;

const PASSWORD: &str = "a long enough password";

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

async fn login(app: &TestApp, email: &str) -> String {
    let res = app
        .post_json(
            "/api/auth/login",
            &json!({ "email": email, "password": PASSWORD }),
        )
        .await;
    assert_eq!(res.status(), 200, "login {email}");
    let body: Value = res.json().await.unwrap();
    body["token"].as_str().expect("access token").to_owned()
}

/// Creates an operator (and its tenant) and signs in.
async fn operator(app: &TestApp, tenant: &str, email: &str, role: &str) -> String {
    app.create_admin(tenant, email, role, PASSWORD).await;
    login(app, email).await
}

async fn post(
    app: &TestApp,
    bearer: Option<&str>,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app.http.post(app.url(path));
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await.expect("POST");
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn create_server(app: &TestApp, bearer: &str, name: &str) -> Uuid {
    let (status, body) = post(
        app,
        Some(bearer),
        "/api/servers",
        Some(json!({ "name": name, "role": "WEB", "ipAddress": "10.0.0.7" })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().parse().unwrap()
}

/// `POST /api/servers/{id}/enrollment-token`; asserts 201 and returns the body.
async fn issue_token(app: &TestApp, bearer: &str, server: Uuid) -> Value {
    let (status, body) = post(
        app,
        Some(bearer),
        &format!("/api/servers/{server}/enrollment-token"),
        None,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body
}

fn token_of(issued: &Value) -> String {
    issued["token"].as_str().unwrap().to_owned()
}

fn panel_url(app: &TestApp) -> String {
    format!("http://{}", app.addr)
}

/// Runs `mpanel-agent enroll` against `panel`.
async fn enroll(dir: &Path, panel: &str, token: &str, state: &Path, extra: &[&str]) -> Output {
    let mut cmd = panel::command("mpanel-agent", dir);
    cmd.args([
        "enroll",
        "--panel",
        panel,
        "--token",
        token,
        "--hostname",
        "srv1-web",
    ])
    .arg("--state-dir")
    .arg(state)
    .args(extra)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output())
        .await
        .expect("mpanel-agent finished within 60s")
        .expect("run mpanel-agent");
    eprintln!("[agent] {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Runs `openssl` (the independent judge of what the CA produced); returns stdout.
async fn openssl(args: &[&str]) -> String {
    let out = tokio::process::Command::new("openssl")
        .args(args)
        .output()
        .await
        .expect("the openssl command-line tool is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `openssl x509 -fingerprint -sha256` in mPanel's form: lowercase hex without colons.
async fn fingerprint(cert: &Path) -> String {
    let out = openssl(&[
        "x509",
        "-in",
        cert.to_str().unwrap(),
        "-noout",
        "-fingerprint",
        "-sha256",
    ])
    .await;
    out.trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_lowercase()
}

/// A fresh P-256 key and CSR made by openssl; returns the CSR PEM.
async fn openssl_csr(dir: &Path) -> String {
    let key = dir.join("csr.key");
    let csr = dir.join("csr.pem");
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=whoever-i-claim-to-be",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        csr.to_str().unwrap(),
    ])
    .await;
    std::fs::read_to_string(csr).unwrap()
}

fn enroll_body(token: &str, csr: &str) -> Value {
    json!({ "token": token, "csrPem": csr, "hostname": "srv1-web", "version": "0.1.0" })
}

fn agent_files(state: &Path) -> [PathBuf; 4] {
    ["agent.key", "agent.crt", "ca.crt", "enrollment.json"].map(|f| state.join(f))
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn tokens_are_issued_to_admins_for_their_own_live_servers() {
    let app = TestApp::spawn().await;
    let db = app.db.pool().await;
    let admin = operator(&app, "acme", "admin@acme.com", "SUPER_ADMIN").await;
    let reader = operator(&app, "acme", "reader@acme.com", "READ_ONLY").await;
    let plain_admin = operator(&app, "acme", "ops@acme.com", "ADMIN").await;
    let stranger = operator(&app, "globex", "admin@globex.com", "SUPER_ADMIN").await;
    let server = create_server(&app, &admin, "srv1-web").await;
    let path = format!("/api/servers/{server}/enrollment-token");

    // RBAC and tenant scoping.
    let (status, body) = post(&app, None, &path, None).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = post(&app, Some(&reader), &path, None).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    let (status, body) = post(&app, Some(&stranger), &path, None).await;
    assert_eq!(status, 404, "other tenant's server: {body}");
    let (status, _) = post(
        &app,
        Some(&admin),
        &format!("/api/servers/{}/enrollment-token", Uuid::new_v4()),
        None,
    )
    .await;
    assert_eq!(status, 404);
    for ttl in [json!(0), json!(1441), json!("60")] {
        let (status, body) = post(
            &app,
            Some(&admin),
            &path,
            Some(json!({ "ttlMinutes": ttl })),
        )
        .await;
        assert_eq!(status, 400, "{ttl}: {body}");
        assert_eq!(body["error"]["details"]["field"], "ttlMinutes", "{body}");
    }
    let (status, body) = post(&app, Some(&admin), &path, Some(json!({ "ttl": 5 }))).await;
    assert_eq!(status, 400, "{body}");

    // The token: shape, pin, command, expiry.
    let first = issue_token(&app, &plain_admin, server).await;
    let token = token_of(&first);
    let fingerprint_hex = first["caFingerprint"].as_str().unwrap();
    assert_eq!(fingerprint_hex.len(), 64);
    let parts: Vec<&str> = token.split('_').collect();
    assert_eq!(parts.len(), 3, "{token}");
    assert_eq!(parts[0], "mpe1");
    assert_eq!(parts[1].len(), 64);
    assert_eq!(parts[2], fingerprint_hex, "the token pins the CA");
    assert_eq!(first["serverId"], server.to_string());
    let command = first["command"].as_str().unwrap();
    assert!(
        command.starts_with(&format!(
            "MPANEL_ENROLL_TOKEN={token} mpanel-agent enroll --panel "
        )) && !command.contains("--token"),
        "the token goes in the environment, not the arguments: {command}"
    );
    assert_eq!(
        fingerprint_hex,
        fingerprint(&app.dir.path().join("ca/ca.crt")).await,
        "caFingerprint is the SHA-256 of the CA certificate"
    );
    let expires: chrono::DateTime<chrono::Utc> =
        first["expiresAt"].as_str().unwrap().parse().unwrap();
    let minutes = (expires - chrono::Utc::now()).num_minutes();
    assert!(
        (58..=60).contains(&minutes),
        "default TTL is an hour: {minutes}"
    );

    let (status, short) = post(&app, Some(&admin), &path, Some(json!({ "ttlMinutes": 5 }))).await;
    assert_eq!(status, 201, "{short}");
    let expires: chrono::DateTime<chrono::Utc> =
        short["expiresAt"].as_str().unwrap().parse().unwrap();
    assert!((expires - chrono::Utc::now()).num_minutes() <= 5);

    // Only hashes are stored; the token is in no row and no audit entry.
    let rows: Vec<(String, Option<Uuid>)> =
        sqlx::query_as("SELECT token_hash, created_by FROM enrollment_tokens WHERE server_id = $1")
            .bind(server)
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(rows.len(), 2);
    let all_rows: String =
        sqlx::query_scalar("SELECT string_agg(t::text, ' ') FROM enrollment_tokens t")
            .fetch_one(&db)
            .await
            .unwrap();
    assert!(!all_rows.contains(parts[1]), "secret stored in clear");
    let audits: Vec<String> = sqlx::query_scalar(
        "SELECT details::text FROM audit_logs WHERE action = 'agent.enrollment_token.create'",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(audits.len(), 2);
    for details in &audits {
        assert!(
            !details.contains(parts[1]),
            "token in the audit log: {details}"
        );
        assert!(details.contains(&server.to_string()), "{details}");
    }

    // Issuing a new token expired the older one: it no longer enrolls.
    let scratch = tempfile::tempdir().unwrap();
    let csr = openssl_csr(scratch.path()).await;
    let (status, body) = post(
        &app,
        None,
        "/api/agents/enroll",
        Some(enroll_body(&token, &csr)),
    )
    .await;
    assert_eq!(status, 401, "replaced token: {body}");

    // A deleted server gets no token.
    let res = app
        .http
        .delete(app.url(&format!("/api/servers/{server}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let (status, _) = post(&app, Some(&admin), &path, None).await;
    assert_eq!(status, 404, "deleted server");

    app.cleanup().await;
}

/// The tests' panel runs with PORT=0 and AGENT_LISTEN_ADDR=127.0.0.1:0: the enrollment answer
/// names the ports the OS picked, and its command, run by a shell exactly as given, enrolls.
#[tokio::test]
async fn the_answer_names_the_bound_ports_and_its_command_enrolls_as_given() {
    let app = TestApp::spawn().await;
    let admin = operator(&app, "acme", "admin@acme.com", "SUPER_ADMIN").await;
    let server = create_server(&app, &admin, "srv1-web").await;
    let issued = issue_token(&app, &admin, server).await;
    let token = token_of(&issued);
    let hub = fleet::hub_addr(&app).await;
    assert_ne!(app.addr.port(), 0);
    assert_ne!(hub.port(), 0);
    let command = issued["command"].as_str().unwrap().to_owned();
    assert_eq!(
        command,
        format!(
            "MPANEL_ENROLL_TOKEN={token} mpanel-agent enroll --panel http://{}",
            app.addr
        )
    );

    // The command as an operator pastes it, with the agent found on PATH (and a state
    // directory of the test's own).
    let scratch = tempfile::tempdir().unwrap();
    let state = scratch.path().join("state");
    let agent = panel::bin_path("mpanel-agent");
    let path = format!(
        "{}:{}",
        agent.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{command} --state-dir \"$STATE\" --hostname srv1-web"
        ))
        .env("PATH", path)
        .env("STATE", &state)
        .env_remove("MPANEL_ENROLL_TOKEN")
        .current_dir(scratch.path())
        .output()
        .await
        .expect("sh runs");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("enrollment.json")).unwrap())
            .unwrap();
    assert_eq!(record["serverId"], server.to_string());
    assert_eq!(record["hubUrl"], format!("wss://{hub}/"), "{record}");
    app.cleanup().await;

    // Configured addresses win over the bound ports.
    let app = TestApp::spawn_with(&[
        ("APP_URL", "https://panel.example.test"),
        ("AGENT_PUBLIC_URL", "wss://agents.example.test:2272"),
    ])
    .await;
    let admin = operator(&app, "acme", "admin@acme.com", "SUPER_ADMIN").await;
    let server = create_server(&app, &admin, "srv1-web").await;
    let issued = issue_token(&app, &admin, server).await;
    let token = token_of(&issued);
    assert_eq!(
        issued["command"],
        format!(
            "MPANEL_ENROLL_TOKEN={token} mpanel-agent enroll --panel https://panel.example.test"
        )
    );
    let csr = openssl_csr(scratch.path()).await;
    let (status, enrolled) = post(
        &app,
        None,
        "/api/agents/enroll",
        Some(enroll_body(&token, &csr)),
    )
    .await;
    assert_eq!(status, 201, "{enrolled}");
    assert_eq!(enrolled["hubUrl"], "wss://agents.example.test:2272/");
    app.cleanup().await;
}

#[tokio::test]
async fn the_agent_enrolls_stores_private_files_and_a_token_works_once() {
    let scratch = tempfile::tempdir().unwrap();
    let log_file = scratch.path().join("panel.log");
    let app = TestApp::spawn_with(&[("LOG_FILE", log_file.to_str().unwrap())]).await;
    let db = app.db.pool().await;
    let admin = operator(&app, "acme", "admin@acme.com", "SUPER_ADMIN").await;
    let server = create_server(&app, &admin, "srv1-web").await;
    let issued = issue_token(&app, &admin, server).await;
    let token = token_of(&issued);

    // Enroll with the real binary into a state directory that does not exist yet.
    let state = scratch.path().join("var/lib/mpanel-agent");
    let out = enroll(scratch.path(), &panel_url(&app), &token, &state, &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains(&token), "the agent logged its token");

    assert_eq!(mode(&state), 0o700);
    let [key, cert, ca, record] = agent_files(&state);
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&cert), 0o644);
    assert_eq!(mode(&ca), 0o644);
    assert_eq!(mode(&record), 0o644);
    let record: Value = serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    let agent_id: Uuid = record["agentId"].as_str().unwrap().parse().unwrap();
    assert_eq!(record["serverId"], server.to_string());
    assert!(
        record["hubUrl"].as_str().unwrap().starts_with("wss://"),
        "{record}"
    );
    let serial = record["serial"].as_str().unwrap().to_owned();
    assert!(record["notAfter"].is_string());

    // The stored CA is the panel's, and the certificate chains to it and names the agent.
    assert_eq!(
        std::fs::read_to_string(&ca).unwrap(),
        std::fs::read_to_string(app.dir.path().join("ca/ca.crt")).unwrap()
    );
    assert_eq!(fingerprint(&ca).await, issued["caFingerprint"]);
    let verify = openssl(&[
        "verify",
        "-CAfile",
        ca.to_str().unwrap(),
        "-purpose",
        "sslclient",
        cert.to_str().unwrap(),
    ])
    .await;
    assert!(verify.trim().ends_with(": OK"), "{verify}");
    let subject = openssl(&[
        "x509",
        "-in",
        cert.to_str().unwrap(),
        "-noout",
        "-subject",
        "-nameopt",
        "RFC2253",
    ])
    .await;
    assert_eq!(subject.trim(), format!("subject=CN={agent_id}"));
    let san = openssl(&[
        "x509",
        "-in",
        cert.to_str().unwrap(),
        "-noout",
        "-ext",
        "subjectAltName",
    ])
    .await;
    assert!(
        san.contains(&format!("URI:urn:mpanel:agent:{agent_id}")),
        "{san}"
    );
    let serial_out = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-serial"]).await;
    assert_eq!(
        serial_out
            .trim()
            .trim_start_matches("serial=")
            .to_lowercase(),
        serial
    );
    // The key on disk is the certificate's.
    let cert_pub = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-pubkey"]).await;
    let key_pub = openssl(&["pkey", "-in", key.to_str().unwrap(), "-pubout"]).await;
    assert_eq!(cert_pub, key_pub);

    // Rows: the agent, its certificate, the used token, the audit entry.
    let (db_server, hostname, version): (Uuid, String, String) =
        sqlx::query_as("SELECT server_id, hostname, version FROM agents WHERE id = $1")
            .bind(agent_id)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(db_server, server);
    assert_eq!(hostname, "srv1-web");
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    let certs = certificates(&db, agent_id).await;
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0].0, serial);
    assert_eq!(certs[0].1, fingerprint(&cert).await);
    assert!(certs[0].2.is_none(), "not revoked");
    let (used_at, token_agent): (Option<chrono::DateTime<chrono::Utc>>, Option<Uuid>) =
        sqlx::query_as("SELECT used_at, agent_id FROM enrollment_tokens WHERE server_id = $1")
            .bind(server)
            .fetch_one(&db)
            .await
            .unwrap();
    assert!(used_at.is_some());
    assert_eq!(token_agent, Some(agent_id));
    let audit: Value = sqlx::query_scalar(
        "SELECT details FROM audit_logs WHERE action = 'agent.enroll' AND details->>'agentId' = $1",
    )
    .bind(agent_id.to_string())
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(audit["hostname"], "srv1-web");
    assert_eq!(audit["serial"], serial.as_str());
    assert_eq!(audit["fingerprint"], certs[0].1.as_str());

    // The same token again: refused, and nothing is written.
    let second_state = scratch.path().join("second");
    let out = enroll(scratch.path(), &panel_url(&app), &token, &second_state, &[]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));
    assert!(!second_state.exists(), "a refused enrollment wrote files");

    // The existing enrollment is kept unless --force, and the token is not spent on it.
    let fresh = token_of(&issue_token(&app, &admin, server).await);
    let out = enroll(scratch.path(), &panel_url(&app), &fresh, &state, &[]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));

    // Re-enrollment: same agent, a new certificate, the old one revoked.
    let out = enroll(
        scratch.path(),
        &panel_url(&app),
        &fresh,
        &state,
        &["--force"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("enrollment.json")).unwrap())
            .unwrap();
    assert_eq!(
        record["agentId"],
        agent_id.to_string(),
        "one agent per server"
    );
    let new_serial = record["serial"].as_str().unwrap();
    assert_ne!(new_serial, serial);
    let certs = certificates(&db, agent_id).await;
    assert_eq!(certs.len(), 2);
    let old = certs.iter().find(|c| c.0 == serial).unwrap();
    assert!(old.2.is_some(), "the old certificate is revoked");
    assert_eq!(old.3.as_deref(), Some("re-enrolled"));
    let new = certs.iter().find(|c| c.0 == new_serial).unwrap();
    assert!(new.2.is_none());
    let agents: i64 = sqlx::query_scalar("SELECT count(*) FROM agents WHERE server_id = $1")
        .bind(server)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(agents, 1);

    // Neither token reached the panel's log.
    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(log.contains("agent enrolled"), "log file is written");
    for t in [&token, &fresh] {
        let secret = t.split('_').nth(1).unwrap();
        assert!(!log.contains(secret), "token in the panel log");
    }

    app.cleanup().await;
}

/// (serial, fingerprint, revoked_at, revoke_reason) of an agent's certificates.
async fn certificates(
    db: &PgPool,
    agent: Uuid,
) -> Vec<(
    String,
    String,
    Option<chrono::DateTime<chrono::Utc>>,
    Option<String>,
)> {
    sqlx::query_as(
        "SELECT serial, fingerprint_sha256, revoked_at, revoke_reason
           FROM agent_certificates WHERE agent_id = $1 ORDER BY created_at",
    )
    .bind(agent)
    .fetch_all(db)
    .await
    .unwrap()
}

#[tokio::test]
async fn expired_altered_and_malformed_redemptions_are_refused() {
    let scratch = tempfile::tempdir().unwrap();
    let mut app = TestApp::spawn().await;
    let db = app.db.pool().await;
    let admin = operator(&app, "acme", "admin@acme.com", "SUPER_ADMIN").await;
    let server = create_server(&app, &admin, "srv1-web").await;
    let csr = openssl_csr(scratch.path()).await;
    let generic = |body: &Value| {
        assert_eq!(body["error"]["code"], "unauthorized", "{body}");
        assert_eq!(
            body["error"]["message"], "invalid, used or expired enrollment token",
            "one message for every refusal: {body}"
        );
    };

    // Unknown and malformed tokens.
    for token in [
        format!("mpe1_{}_{}", "0".repeat(64), "1".repeat(64)),
        "mpe1_short".to_owned(),
        String::new(),
    ] {
        let (status, body) = post(
            &app,
            None,
            "/api/agents/enroll",
            Some(enroll_body(&token, &csr)),
        )
        .await;
        assert_eq!(status, 401, "{token}: {body}");
        generic(&body);
    }

    let token = token_of(&issue_token(&app, &admin, server).await);

    // A token whose CA fingerprint suffix was altered.
    let mut altered = token.clone();
    let last = altered.pop().unwrap();
    altered.push(if last == '0' { '1' } else { '0' });
    let (status, body) = post(
        &app,
        None,
        "/api/agents/enroll",
        Some(enroll_body(&altered, &csr)),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    generic(&body);

    // Bad input names its field and leaves the token usable.
    let (status, body) = post(
        &app,
        None,
        "/api/agents/enroll",
        Some(enroll_body(
            &token,
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        )),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["details"]["field"], "csrPem");
    let tampered = tampered_csr(scratch.path()).await;
    let (status, body) = post(
        &app,
        None,
        "/api/agents/enroll",
        Some(enroll_body(&token, &tampered)),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["details"]["field"], "csrPem");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("signature"),
        "{body}"
    );
    for (field, value) in [
        ("hostname", json!("srv1 web;reboot")),
        ("hostname", json!("")),
        ("version", json!("v".repeat(65))),
    ] {
        let mut req = enroll_body(&token, &csr);
        req[field] = value;
        let (status, body) = post(&app, None, "/api/agents/enroll", Some(req)).await;
        assert_eq!(status, 400, "{field}: {body}");
        assert_eq!(body["error"]["details"]["field"], field, "{body}");
    }
    let unused: bool = sqlx::query_scalar(
        "SELECT used_at IS NULL AND agent_id IS NULL FROM enrollment_tokens WHERE server_id = $1",
    )
    .bind(server)
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(unused, "a refused request spent the token");
    let agents: i64 = sqlx::query_scalar("SELECT count(*) FROM agents")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(agents, 0);

    // Expired.
    sqlx::query("UPDATE enrollment_tokens SET expires_at = now() - interval '1 minute'")
        .execute(&db)
        .await
        .unwrap();
    let (status, body) = post(
        &app,
        None,
        "/api/agents/enroll",
        Some(enroll_body(&token, &csr)),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    generic(&body);
    let state = scratch.path().join("state");
    let out = enroll(scratch.path(), &panel_url(&app), &token, &state, &[]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(!state.exists());

    // A token issued under a CA that has since been replaced cannot be honoured.
    let token = token_of(&issue_token(&app, &admin, server).await);
    app.terminate().await;
    std::fs::remove_dir_all(app.dir.path().join("ca")).unwrap();
    app.start().await;
    let (status, body) = post(
        &app,
        None,
        "/api/agents/enroll",
        Some(enroll_body(&token, &csr)),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    generic(&body);

    app.cleanup().await;
}

/// A CSR whose signature no longer matches its content (one bit flipped in the signature).
async fn tampered_csr(dir: &Path) -> String {
    openssl_csr(dir).await;
    let der = dir.join("csr.der");
    openssl(&[
        "req",
        "-in",
        dir.join("csr.pem").to_str().unwrap(),
        "-outform",
        "DER",
        "-out",
        der.to_str().unwrap(),
    ])
    .await;
    let mut bytes = std::fs::read(&der).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 0x01;
    std::fs::write(&der, bytes).unwrap();
    let pem = dir.join("tampered.pem");
    openssl(&[
        "req",
        "-inform",
        "DER",
        "-in",
        der.to_str().unwrap(),
        "-out",
        pem.to_str().unwrap(),
    ])
    .await;
    std::fs::read_to_string(pem).unwrap()
}

/// Serves one HTTP request on `listener` with a 201 and `body`, then closes.
async fn answer_once(listener: TcpListener, body: String) {
    let (mut stream, _) = listener.accept().await.unwrap();
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    // Read the headers, then as much body as Content-Length says.
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&request);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if request.len() >= end + 4 + length {
                break;
            }
        }
    }
    let response = format!(
        "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_agent_refuses_a_panel_that_does_not_hold_the_pinned_ca() {
    let scratch = tempfile::tempdir().unwrap();
    let app = TestApp::spawn().await;
    let db = app.db.pool().await;
    let admin = operator(&app, "acme", "admin@acme.com", "SUPER_ADMIN").await;
    let server = create_server(&app, &admin, "srv1-web").await;
    let token = token_of(&issue_token(&app, &admin, server).await);

    // An impostor CA (even with the real one's name) and a certificate it signed.
    let evil_key = scratch.path().join("evil.key");
    let evil_ca = scratch.path().join("evil.crt");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=mPanel fleet CA",
        "-days",
        "2",
        "-keyout",
        evil_key.to_str().unwrap(),
        "-out",
        evil_ca.to_str().unwrap(),
    ])
    .await;
    openssl_csr(scratch.path()).await;
    let evil_cert = scratch.path().join("evil-agent.crt");
    openssl(&[
        "x509",
        "-req",
        "-in",
        scratch.path().join("csr.pem").to_str().unwrap(),
        "-CA",
        evil_ca.to_str().unwrap(),
        "-CAkey",
        evil_key.to_str().unwrap(),
        "-set_serial",
        "7",
        "-days",
        "1",
        "-out",
        evil_cert.to_str().unwrap(),
    ])
    .await;
    let evil_ca_pem = std::fs::read_to_string(&evil_ca).unwrap();
    let evil_cert_pem = std::fs::read_to_string(&evil_cert).unwrap();
    let real_ca_pem = std::fs::read_to_string(app.dir.path().join("ca/ca.crt")).unwrap();

    let answer = |ca_pem: &str| {
        json!({
            "agentId": Uuid::new_v4().to_string(),
            "serverId": server.to_string(),
            "certificatePem": evil_cert_pem,
            "caPem": ca_pem,
            "caFingerprint": "whatever the impostor claims",
            "serial": "07",
            "notAfter": "2030-01-01T00:00:00Z",
            "hubUrl": "wss://127.0.0.1:1",
        })
        .to_string()
    };
    for (i, (case, ca_pem, expect)) in [
        ("another CA", evil_ca_pem.as_str(), "not the panel"),
        (
            "the real CA but a foreign certificate",
            real_ca_pem.as_str(),
            "not signed",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = format!("http://{}", listener.local_addr().unwrap());
        let responder = tokio::spawn(answer_once(listener, answer(ca_pem)));
        let state = scratch.path().join(format!("state-{i}"));
        let out = enroll(scratch.path(), &fake, &token, &state, &[]).await;
        responder.await.unwrap();
        assert_eq!(out.status.code(), Some(1), "{case}");
        assert!(stderr(&out).contains(expect), "{case}: {}", stderr(&out));
        assert!(!state.exists(), "{case}: files were stored");
    }

    // The token never reached the real panel, which still honours it.
    let state = scratch.path().join("real");
    let out = enroll(scratch.path(), &panel_url(&app), &token, &state, &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let used: bool = sqlx::query_scalar("SELECT used_at IS NOT NULL FROM enrollment_tokens")
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(used);

    app.cleanup().await;
}

#[tokio::test]
async fn the_ca_key_is_private_and_the_ca_survives_a_restart() {
    let mut app = TestApp::spawn().await;
    let admin = operator(&app, "acme", "admin@acme.com", "SUPER_ADMIN").await;
    let server = create_server(&app, &admin, "srv1-web").await;
    let before = issue_token(&app, &admin, server).await["caFingerprint"].clone();

    let ca_dir = app.dir.path().join("ca");
    assert_eq!(mode(&ca_dir), 0o700);
    assert_eq!(mode(&ca_dir.join("ca.key")), 0o600);
    assert_eq!(mode(&ca_dir.join("ca.crt")), 0o644);
    let names: Vec<String> = std::fs::read_dir(&ca_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "no temporary files left: {names:?}");
    let subject = openssl(&[
        "x509",
        "-in",
        ca_dir.join("ca.crt").to_str().unwrap(),
        "-noout",
        "-subject",
        "-nameopt",
        "RFC2253",
    ])
    .await;
    assert!(subject.contains("CN=mPanel fleet CA"), "{subject}");
    let ca_text = openssl(&[
        "x509",
        "-in",
        ca_dir.join("ca.crt").to_str().unwrap(),
        "-noout",
        "-text",
    ])
    .await;
    assert!(ca_text.contains("CA:TRUE"), "{ca_text}");
    assert!(ca_text.contains("Certificate Sign"), "{ca_text}");
    assert!(
        ca_text.contains("prime256v1") || ca_text.contains("P-256"),
        "{ca_text}"
    );

    app.terminate().await;
    app.start().await;
    let admin = login(&app, "admin@acme.com").await;
    let after = issue_token(&app, &admin, server).await["caFingerprint"].clone();
    assert_eq!(before, after, "the CA was replaced by a restart");

    app.cleanup().await;
}

#[tokio::test]
async fn failed_redemptions_are_throttled_per_ip() {
    let app = TestApp::spawn().await;
    let scratch = tempfile::tempdir().unwrap();
    let csr = openssl_csr(scratch.path()).await;
    // Well-formed tokens that were never issued (64 hex chars and a fingerprint).
    let fake = |i: usize| format!("mpe1_{:064x}_{}", i, "ab".repeat(32));
    for i in 0..20 {
        let (status, body) = post(
            &app,
            None,
            "/api/agents/enroll",
            Some(enroll_body(&fake(i), &csr)),
        )
        .await;
        assert_eq!(status, 401, "attempt {i}: {body}");
    }
    let res = app
        .http
        .post(app.url("/api/agents/enroll"))
        .json(&enroll_body(&fake(99), &csr))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0 && retry <= 900, "{retry}");
    app.cleanup().await;
}
