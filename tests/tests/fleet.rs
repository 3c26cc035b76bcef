//! The fleet end to end: the real panel, real `mpanel-agent` processes enrolled through the
//! real binary, mTLS WebSockets on loopback. Heartbeats are 1 s so that silence is noticed
//! within seconds; every wait is a `wait_for` with a deadline.

use std::{sync::Arc, time::Duration};

use mpanel_tests::{
    TestApp,
    api::{authed, create_server, org_with_roles},
    fleet::{AgentProc, enrollment_token, hub_addr},
    wait_for,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256,
    SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

const FAST: &[(&str, &str)] = &[
    ("AGENT_HEARTBEAT_INTERVAL", "1s"),
    ("AGENT_METRICS_INTERVAL", "1s"),
];
const WAIT: Duration = Duration::from_secs(30);

async fn server_row(app: &TestApp, token: &str, id: &str) -> Value {
    authed(app, token)
        .get(&format!("/api/servers/{id}"))
        .await
        .expect(200)
}

async fn wait_online(app: &TestApp, token: &str, id: &str, online: bool) {
    wait_for(
        &format!("server {id} agentOnline={online}"),
        WAIT,
        || async { (server_row(app, token, id).await["agentOnline"] == online).then_some(()) },
    )
    .await;
}

/// Connects to the hub with `client` (or no certificate), trusting the panel's CA, and
/// asks for a WebSocket upgrade: `Ok` only when the hub answers `101`.
async fn probe(
    hub: std::net::SocketAddr,
    ca_pem: &str,
    client: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<(), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let ca = pem::parse(ca_pem).unwrap();
    roots
        .add(CertificateDer::from(ca.contents().to_vec()))
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(cert)],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(hub)
        .await
        .map_err(|e| e.to_string())?;
    let attempt = async {
        let mut tls = connector
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tls.write_all(
            format!(
                "GET / HTTP/1.1\r\nHost: {hub}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .map_err(|e| format!("write: {e}"))?;
        let mut buf = vec![0u8; 512];
        let n = tls.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.starts_with("HTTP/1.1 101") {
            Ok(())
        } else {
            Err(format!("no upgrade: {text:?}"))
        }
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .map_err(|_| "timed out".to_owned())?
}

fn der_of(pem_text: &str) -> Vec<u8> {
    pem::parse(pem_text).unwrap().contents().to_vec()
}

/// A CA that is not the panel's, and an agent-shaped client certificate from it.
fn foreign_client(agent_id: Uuid) -> (Vec<u8>, Vec<u8>) {
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "mPanel fleet CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let issuer = Issuer::from_params(&ca, &ca_key);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, agent_id.to_string());
    params.subject_alt_names = vec![SanType::URI(
        format!("urn:mpanel:agent:{agent_id}").try_into().unwrap(),
    )];
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.der().to_vec(), key.serialize_der())
}

async fn count(db: &PgPool, sql: &str, id: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(id.parse::<Uuid>().unwrap())
        .fetch_one(db)
        .await
        .unwrap()
}

#[tokio::test]
async fn agents_connect_report_health_answer_pings_and_revoked_ones_are_cut_off() {
    let app = TestApp::spawn_with(FAST).await;
    let db = app.db.pool().await;
    let acme = org_with_roles(&app, "acme", &["SUPER_ADMIN", "ADMIN", "READ_ONLY"]).await;
    let globex = org_with_roles(&app, "globex", &["SUPER_ADMIN"]).await;
    let admin = acme.super_admin().token().to_owned();
    let reader = acme.by_role("READ_ONLY").token().to_owned();
    let plain_admin = acme.admin().token().to_owned();
    let stranger = globex.super_admin().token().to_owned();
    let web = create_server(&app, &admin, "srv1-web").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let dns = create_server(&app, &admin, "dns-core").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let hub = hub_addr(&app).await;

    // Two real agents enroll and connect.
    let mut a_web = AgentProc::enroll(
        &app,
        "srv1-web",
        &enrollment_token(&app, &admin, &web).await,
    )
    .await;
    let mut a_dns = AgentProc::enroll(
        &app,
        "dns-core",
        &enrollment_token(&app, &admin, &dns).await,
    )
    .await;
    a_web.configure(hub, "roles = [\"web\"]\nmetrics_interval = \"1s\"");
    a_dns.configure(hub, "roles = [\"dns\"]\nmetrics_interval = \"1s\"");
    a_web.start();
    a_dns.start();
    for id in [&web, &dns] {
        wait_online(&app, &admin, id, true).await;
    }
    let list = authed(&app, &admin).get("/api/servers").await.expect(200);
    for item in list["items"].as_array().unwrap() {
        assert_eq!(item["agentOnline"], true, "{item}");
        assert_eq!(item["agentVersion"], env!("CARGO_PKG_VERSION"), "{item}");
        assert!(item["lastSeenAt"].is_string(), "{item}");
    }

    // Their metrics show in the health endpoint.
    for (id, service) in [(&web, "nginx"), (&dns, "pdns")] {
        let health = wait_for("metrics in /health", WAIT, || async {
            let h = authed(&app, &reader)
                .get(&format!("/api/servers/{id}/health?minutes=5"))
                .await
                .expect(200);
            (h["history"].as_array().is_some_and(|a| a.len() >= 2)).then_some(h)
        })
        .await;
        assert_eq!(health["online"], true, "{health}");
        let latest = &health["latest"];
        assert!(latest["memoryTotalBytes"].as_i64().unwrap() > 0, "{health}");
        assert!(latest["uptimeSecs"].as_i64().unwrap() > 0, "{health}");
        assert!(latest["cpuPercent"].is_number(), "{health}");
        assert!(latest["disks"].is_array(), "{health}");
        assert!(latest["services"][service].is_string(), "{health}");
        assert_eq!(
            health["agent"]["hostname"],
            if id == &web { "srv1-web" } else { "dns-core" }
        );
        assert!(
            health["agent"]["roles"].as_array().unwrap().len() == 1,
            "{health}"
        );
    }
    let r = authed(&app, &admin)
        .get(&format!("/api/servers/{web}/health?minutes=1441"))
        .await;
    r.assert_invalid_field("minutes");
    authed(&app, &stranger)
        .get(&format!("/api/servers/{web}/health"))
        .await
        .assert_error(404, "not_found");

    // A ping round-trips through the agent; it needs ServersWrite and the tenant's server.
    let pong = authed(&app, &plain_admin)
        .post(&format!("/api/servers/{web}/ping"), &json!({}))
        .await
        .expect(200);
    assert!(
        pong["echo"].as_str().unwrap().starts_with("ping-"),
        "{pong}"
    );
    assert!(pong["roundTripMs"].as_f64().unwrap() < 5_000.0, "{pong}");
    wait_for("the ping to be journaled", WAIT, || async {
        (a_web.journal().len() == 1).then_some(())
    })
    .await;
    assert_eq!(a_web.wait_count(&["executing command"], 1).await, 1);
    authed(&app, &reader)
        .post(&format!("/api/servers/{web}/ping"), &json!({}))
        .await
        .assert_error(403, "forbidden");
    authed(&app, &stranger)
        .post(&format!("/api/servers/{web}/ping"), &json!({}))
        .await
        .assert_error(404, "not_found");

    // The handshake refuses a client without a certificate and one from another CA; the
    // probe itself works with a real agent's certificate.
    let ca_pem = std::fs::read_to_string(a_web.state_dir().join("ca.crt")).unwrap();
    let real = (
        der_of(&std::fs::read_to_string(a_web.state_dir().join("agent.crt")).unwrap()),
        der_of(&std::fs::read_to_string(a_web.state_dir().join("agent.key")).unwrap()),
    );
    let agent_dns: String = a_dns.enrollment()["agentId"].as_str().unwrap().to_owned();
    assert!(probe(hub, &ca_pem, None).await.is_err());
    let foreign = probe(
        hub,
        &ca_pem,
        Some(foreign_client(agent_dns.parse().unwrap())),
    )
    .await;
    assert!(foreign.is_err(), "{foreign:?}");
    // (The probe never says Hello, so it never replaces the agent's own connection.)
    probe(hub, &ca_pem, Some(real.clone())).await.unwrap();
    wait_online(&app, &admin, &web, true).await;

    // Revocation: super admins of the tenant only; the live connection is cut at once and
    // the agent cannot come back.
    let revoke = format!("/api/agents/{agent_dns}/revoke");
    authed(&app, &plain_admin)
        .post(&revoke, &json!({}))
        .await
        .assert_error(403, "forbidden");
    authed(&app, &stranger)
        .post(&revoke, &json!({}))
        .await
        .assert_error(404, "not_found");
    let revoked = authed(&app, &admin)
        .post(&revoke, &json!({}))
        .await
        .expect(200);
    assert_eq!(revoked["revokedCertificates"], 1, "{revoked}");
    assert_eq!(revoked["disconnected"], true, "{revoked}");
    wait_online(&app, &admin, &dns, false).await;
    wait_for(
        "the revoked agent to fail reconnecting twice",
        WAIT,
        || async { (a_dns.count(&["connection to the hub failed"]) >= 2).then_some(()) },
    )
    .await;
    assert!(
        a_dns
            .wait_count(&["the hub said goodbye", "revoked"], 1)
            .await
            >= 1
    );
    assert_eq!(server_row(&app, &admin, &dns).await["agentOnline"], false);
    let dns_cert = (
        der_of(&std::fs::read_to_string(a_dns.state_dir().join("agent.crt")).unwrap()),
        der_of(&std::fs::read_to_string(a_dns.state_dir().join("agent.key")).unwrap()),
    );
    assert!(probe(hub, &ca_pem, Some(dns_cert)).await.is_err());
    authed(&app, &admin)
        .post(
            &format!("/api/servers/{dns}/ping?timeoutSecs=1"),
            &json!({}),
        )
        .await
        .assert_error(409, "conflict");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM audit_logs WHERE action = 'agent.revoke' AND (details->>'agentId')::uuid = $1",
            &agent_dns
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM agent_certificates WHERE agent_id = $1 AND revoked_at IS NULL",
            &agent_dns
        )
        .await,
        0
    );

    // The other agent is untouched, and stops cleanly on SIGTERM.
    authed(&app, &admin)
        .post(&format!("/api/servers/{web}/ping"), &json!({}))
        .await
        .expect(200);
    let status = a_web.terminate().await;
    assert!(status.success(), "{status:?}");
    // The log reader may still be draining the pipe after the exit.
    wait_for("the agent's clean-stop log line", WAIT, || async {
        (a_web.count(&["agent stopped"]) == 1).then_some(())
    })
    .await;
    wait_online(&app, &admin, &web, false).await;
    a_dns.kill().await;
    app.cleanup().await;
}

#[tokio::test]
async fn pending_commands_survive_a_killed_agent_and_silent_agents_go_offline() {
    let app = TestApp::spawn_with(FAST).await;
    let db = app.db.pool().await;
    let acme = org_with_roles(&app, "acme", &["SUPER_ADMIN"]).await;
    let admin = acme.super_admin().token().to_owned();
    let server = create_server(&app, &admin, "srv2-web").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let hub = hub_addr(&app).await;
    let mut agent = AgentProc::enroll(
        &app,
        "srv2-web",
        &enrollment_token(&app, &admin, &server).await,
    )
    .await;
    let agent_id = agent.enrollment()["agentId"].as_str().unwrap().to_owned();
    let first_serial = agent.enrollment()["serial"].as_str().unwrap().to_owned();
    // Renew at once (any remaining validity is "too little"), to exercise renewal.
    agent.configure(hub, "roles = [\"web\"]\nrenew_before = \"3650d\"");
    agent.start();
    wait_online(&app, &admin, &server, true).await;

    // Renewal over the live connection: a new certificate, recorded, stored by the agent.
    wait_for("the renewed certificate", WAIT, || async {
        (agent.enrollment()["serial"] != first_serial.as_str()).then_some(())
    })
    .await;
    assert!(
        count(
            &db,
            "SELECT count(*) FROM agent_certificates WHERE agent_id = $1",
            &agent_id
        )
        .await
            >= 2
    );

    // Killed: the panel sees the connection go; a ping waits for the agent to come back
    // (with its renewed certificate) and is executed exactly once.
    agent.kill().await;
    wait_online(&app, &admin, &server, false).await;
    let ping = {
        let http = app.http.clone();
        let url = app.url(&format!("/api/servers/{server}/ping?timeoutSecs=30"));
        let token = admin.clone();
        tokio::spawn(async move { http.post(url).bearer_auth(token).send().await.unwrap() })
    };
    wait_for("the ping to wait for the agent", WAIT, || async {
        app.log_lines()
            .iter()
            .any(|l| l.contains("command waiting for the agent to connect"))
            .then_some(())
    })
    .await;
    agent.start();
    let res = ping.await.unwrap();
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
    wait_for("the journal entry", WAIT, || async {
        (agent.journal().len() == 1).then_some(())
    })
    .await;
    assert_eq!(agent.wait_count(&["executing command"], 1).await, 1);

    // Silent (SIGSTOP): the panel drops it within about two heartbeat intervals and marks
    // the server offline. A ping sent just before is in the agent's socket: on SIGCONT the
    // agent either runs it before it notices the dead connection (its result is lost, the
    // panel re-sends the same id after the reconnect and the journal answers it) or drops
    // the connection first (the re-sent copy is the one it runs): one execution either way.
    agent.signal(libc::SIGSTOP);
    let stopped_at = std::time::Instant::now();
    let ping = {
        let http = app.http.clone();
        let url = app.url(&format!("/api/servers/{server}/ping?timeoutSecs=30"));
        let token = admin.clone();
        tokio::spawn(async move { http.post(url).bearer_auth(token).send().await.unwrap() })
    };
    wait_online(&app, &admin, &server, false).await;
    let silent_for = stopped_at.elapsed();
    assert!(silent_for < Duration::from_secs(6), "{silent_for:?}");
    agent.signal(libc::SIGCONT);
    let res = ping.await.unwrap();
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
    wait_online(&app, &admin, &server, true).await;
    assert_eq!(agent.journal().len(), 2);
    assert_eq!(agent.wait_count(&["executing command"], 2).await, 2);
    assert!(agent.count(&["command answered from the journal"]) <= 1);

    let status = agent.terminate().await;
    assert!(status.success(), "{status:?}");
    app.cleanup().await;
}

/// A free loopback port, so that a restarted panel's hub listens where agents dial.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `delay_ms` values of the agent's "reconnecting" log lines.
fn reconnect_delays(agent: &AgentProc) -> Vec<u64> {
    agent
        .log_lines()
        .iter()
        .filter(|l| l.contains("reconnecting"))
        .filter_map(|l| {
            let rest = l.split("delay_ms=").nth(1)?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[tokio::test]
async fn agents_drop_a_silent_panel_and_come_back_after_a_restart() {
    let hub_port = free_port();
    let listen = format!("127.0.0.1:{hub_port}");
    let mut env = FAST.to_vec();
    env.push(("AGENT_LISTEN_ADDR", listen.as_str()));
    let mut app = TestApp::spawn_with(&env).await;
    let acme = org_with_roles(&app, "acme", &["SUPER_ADMIN"]).await;
    let admin = acme.super_admin().token().to_owned();
    let server = create_server(&app, &admin, "srv3-web").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let hub = hub_addr(&app).await;
    assert_eq!(hub.port(), hub_port);
    let mut agent = AgentProc::enroll(
        &app,
        "srv3-web",
        &enrollment_token(&app, &admin, &server).await,
    )
    .await;
    agent.configure(hub, "roles = [\"web\"]"); // back-off 200ms..2s
    agent.start();
    wait_online(&app, &admin, &server, true).await;

    // Half-dead link, agent side: the panel stops answering (SIGSTOP keeps its sockets open,
    // the classic "looks connected, never answers"). The agent gives up on it within about
    // two heartbeat intervals and starts dialling again.
    app.signal(libc::SIGSTOP);
    let stopped = std::time::Instant::now();
    wait_for("the agent to notice the silent panel", WAIT, || async {
        (agent.count(&["silent for two heartbeat intervals"]) >= 1).then_some(())
    })
    .await;
    let noticed = stopped.elapsed();
    assert!(
        noticed < Duration::from_secs(6),
        "a silent panel must be noticed within about two 1s heartbeats, took {noticed:?}"
    );
    app.signal(libc::SIGCONT);
    wait_for(
        "the agent to reconnect after the panel resumed",
        WAIT,
        || async { (agent.count(&["connected to the hub"]) >= 2).then_some(()) },
    )
    .await;
    wait_online(&app, &admin, &server, true).await;

    // A panel restart: the agent dials with back-off (jittered, growing) until the new
    // process listens on the same address, then is online again without any help.
    app.terminate().await;
    let before = reconnect_delays(&agent).len();
    wait_for(
        "a few reconnect attempts against the stopped panel",
        WAIT,
        || async { (reconnect_delays(&agent).len() >= before + 3).then_some(()) },
    )
    .await;
    app.start().await;
    wait_online(&app, &admin, &server, true).await;
    let delays = reconnect_delays(&agent)[before..].to_vec();
    assert!(
        delays.iter().all(|d| *d <= 2_000),
        "capped at reconnect_max: {delays:?}"
    );
    assert!(
        delays.windows(2).any(|w| w[0] != w[1]),
        "jittered delays differ: {delays:?}"
    );

    assert!(agent.terminate().await.success());
    app.cleanup().await;
}

/// Sets both open-files limits of process `pid` (and returns the old ones).
fn set_open_files(pid: u32, limit: u64) {
    let new = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: plain syscall on another process with valid pointers.
    let done = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &new,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(done, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// Opens `n` connections from 127.0.0.2 to `hub` that never start TLS, a new wave every
/// 3 s (the hub times a silent handshake out after 10 s), each held for three waves — what an
/// attacker does to keep a panel's descriptors taken — until `stop`.
fn flood(
    hub: std::net::SocketAddr,
    n: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
    landed: Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    tokio::spawn(async move {
        let mut waves = std::collections::VecDeque::new();
        while !stop.load(Ordering::Relaxed) {
            let mut wave = Vec::with_capacity(n);
            for _ in 0..n {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
                // A full accept queue refusing one is the kernel's doing.
                if let Ok(Ok(stream)) =
                    tokio::time::timeout(Duration::from_secs(1), socket.connect(hub)).await
                {
                    wave.push(stream);
                }
            }
            waves.push_back(wave);
            landed.store(true, Ordering::Relaxed);
            if waves.len() > 3 {
                waves.pop_front();
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    });
}

/// More half-open connections than the panel has descriptors — TCP connections to the hub
/// that never start TLS, renewed all the time — leave the API answering new clients and a
/// real agent connecting as usual: the hub closes what its handshake limits do not admit.
#[tokio::test]
async fn a_flood_of_half_open_connections_starves_neither_the_api_nor_the_agents() {
    const LIMIT: u64 = 256;
    let app = TestApp::spawn_with(FAST).await;
    let acme = org_with_roles(&app, "acme", &["SUPER_ADMIN"]).await;
    let admin = acme.super_admin().token().to_owned();
    let web = create_server(&app, &admin, "srv1-web").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let hub = hub_addr(&app).await;
    let mut agent = AgentProc::enroll(
        &app,
        "srv1-web",
        &enrollment_token(&app, &admin, &web).await,
    )
    .await;
    agent.configure(hub, "roles = [\"web\"]");
    set_open_files(app.pid(), LIMIT);

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let landed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    flood(hub, 2 * LIMIT as usize, stop.clone(), landed.clone());
    wait_for("the first wave of the flood", WAIT, || async {
        landed
            .load(std::sync::atomic::Ordering::Relaxed)
            .then_some(())
    })
    .await;

    // A new client each time: a pooled connection would hide a panel that accepts nothing.
    for _ in 0..5 {
        let fresh = reqwest::Client::new();
        let health = tokio::time::timeout(
            Duration::from_secs(5),
            fresh.get(app.url("/api/public/health")).send(),
        )
        .await
        .expect("health answers within 5 s during the flood")
        .expect("health request reaches the panel");
        assert!(health.status().is_success(), "{health:?}");
    }
    agent.start();
    wait_for(
        "the agent online during the flood",
        Duration::from_secs(10),
        || async { (server_row(&app, &admin, &web).await["agentOnline"] == true).then_some(()) },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    agent.terminate().await;
    app.cleanup().await;
}
