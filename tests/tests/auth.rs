//! Sign-in against the real `mpanel` process: login, me, refresh rotation and reuse detection,
//! logout, forged access tokens, login throttling, deactivated users and tenants, input
//! validation, and the audit rows these write.

use jsonwebtoken::Algorithm;
use mpanel_tests::{
    TestApp,
    api::{
        self, PASSWORD, Reply, USER_AGENT, access_claims, anon, authed, claims_of, header_of,
        login, me, mint_hs256, mint_raw, now_secs, refresh, session_of, try_login, with_payload,
    },
    panel::JWT_SECRET,
};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;

fn is_uuid(v: &Value) -> bool {
    v.as_str().is_some_and(|s| uuid::Uuid::parse_str(s).is_ok())
}

/// Asserts the login/refresh answer shape for `email`, returning the user object.
#[track_caller]
fn assert_token_answer(reply: &Reply, email: &str, role: &str, tenant_id: &str) {
    assert_eq!(reply.status, 200, "{reply:?}");
    let body = &reply.body;
    for key in ["token", "refreshToken"] {
        assert!(
            body[key].as_str().is_some_and(|t| t.len() > 20),
            "{key}: {body}"
        );
    }
    let expires_in = body["expiresIn"].as_i64().expect("expiresIn is an integer");
    assert!(expires_in > 0, "{body}");
    let user = &body["user"];
    assert!(is_uuid(&user["id"]), "{body}");
    assert_eq!(user["email"], email, "{body}");
    assert!(user["displayName"].as_str().is_some(), "{body}");
    assert_eq!(user["role"], role, "{body}");
    assert_eq!(user["tenantId"], tenant_id, "{body}");
    assert!(user.get("passwordHash").is_none(), "{body}");

    let token = body["token"].as_str().unwrap();
    assert_eq!(header_of(token)["alg"], "HS256", "{token}");
    let claims = claims_of(token);
    assert_eq!(claims["sub"], user["id"], "{claims}");
    assert_eq!(claims["tid"], tenant_id, "{claims}");
    assert!(is_uuid(&claims["sid"]), "{claims}");
    assert_eq!(claims["role"], role, "{claims}");
    assert_eq!(claims["typ"], "access", "{claims}");
    assert_eq!(claims["iss"], "mpanel", "{claims}");
    assert_eq!(claims["aud"], "mpanel-api", "{claims}");
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert!(exp > now_secs(), "{claims}");
    assert!(
        (exp - iat - expires_in).abs() <= 5,
        "expiresIn ({expires_in}) is the access token's lifetime: {claims}"
    );
}

/// Audit rows of `action` as SQL sees them: (user_id, ip_address, user_agent).
async fn audit_rows(
    pool: &PgPool,
    action: &str,
) -> Vec<(Option<uuid::Uuid>, Option<String>, Option<String>)> {
    sqlx::query_as(
        "SELECT user_id, ip_address, user_agent FROM audit_logs WHERE action = $1 ORDER BY created_at",
    )
    .bind(action)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn login_answers_tokens_and_user_and_me_shows_the_profile() {
    let app = TestApp::spawn().await;
    let created = app
        .create_admin("home", "Boss@Home.example.com", "SUPER_ADMIN", PASSWORD)
        .await;
    let tenant_id = created["tenantId"].as_str().unwrap();

    // The e-mail is matched case-insensitively (stored lower-case).
    let reply = try_login(&app, "boss@home.example.com", PASSWORD).await;
    assert_token_answer(&reply, "boss@home.example.com", "SUPER_ADMIN", tenant_id);
    let session = session_of(&reply);

    let profile = me(&app, &session.token).await.expect(200);
    assert_eq!(profile["id"], session.user["id"]);
    assert_eq!(profile["email"], "boss@home.example.com");
    assert_eq!(profile["displayName"], session.user["displayName"]);
    assert_eq!(profile["role"], "SUPER_ADMIN");
    assert_eq!(profile["tenantId"], tenant_id);
    assert_eq!(profile["isActive"], true);
    assert!(
        profile["lastLoginAt"].as_str().is_some(),
        "login sets lastLoginAt: {profile}"
    );
    assert!(profile["createdAt"].as_str().is_some(), "{profile}");
    assert_eq!(profile["tenant"]["id"], tenant_id);
    assert_eq!(profile["tenant"]["slug"], "home");
    assert!(profile["tenant"]["name"].as_str().is_some(), "{profile}");
    assert!(profile.get("passwordHash").is_none(), "{profile}");

    app.cleanup().await;
}

#[tokio::test]
async fn full_cycle_login_me_refresh_rotates_then_logout_ends_the_session() {
    let app = TestApp::spawn().await;
    let created = app
        .create_admin("home", "ops@home.example.com", "ADMIN", PASSWORD)
        .await;
    let tenant_id = created["tenantId"].as_str().unwrap();

    let first = login(&app, "ops@home.example.com", PASSWORD).await;
    me(&app, &first.token).await.expect(200);

    // Refresh: same shape as login, a new refresh token, same user and session.
    let reply = refresh(&app, &first.refresh_token).await;
    assert_token_answer(&reply, "ops@home.example.com", "ADMIN", tenant_id);
    let second = session_of(&reply);
    assert_ne!(second.refresh_token, first.refresh_token, "refresh rotates");
    assert_eq!(second.user["id"], first.user["id"]);
    assert_eq!(
        second.claims()["sid"],
        first.claims()["sid"],
        "rotation keeps the session"
    );
    me(&app, &second.token).await.expect(200);

    // The rotated token refreshes again.
    let third = session_of(&refresh(&app, &second.refresh_token).await);
    assert_ne!(third.refresh_token, second.refresh_token);
    me(&app, &third.token).await.expect(200);

    // Logout: 204, then neither the refresh token nor the access token works.
    let reply = api::logout(&app, &third).await;
    assert_eq!(reply.status, 204, "{reply:?}");
    refresh(&app, &third.refresh_token)
        .await
        .assert_error(401, "unauthorized");
    me(&app, &third.token)
        .await
        .assert_error(401, "unauthorized");
    me(&app, &first.token)
        .await
        .assert_error(401, "unauthorized");

    // Logging in again starts a fresh session.
    let again = login(&app, "ops@home.example.com", PASSWORD).await;
    assert_ne!(again.claims()["sid"], first.claims()["sid"]);
    me(&app, &again.token).await.expect(200);

    app.cleanup().await;
}

#[tokio::test]
async fn refresh_token_reuse_revokes_the_whole_session() {
    let app = TestApp::spawn().await;
    app.create_admin("home", "ops@home.example.com", "ADMIN", PASSWORD)
        .await;

    let old = login(&app, "ops@home.example.com", PASSWORD).await;
    let new = session_of(&refresh(&app, &old.refresh_token).await);
    me(&app, &new.token).await.expect(200);

    // The old refresh token again: refused, and the session is gone.
    refresh(&app, &old.refresh_token)
        .await
        .assert_error(401, "unauthorized");
    refresh(&app, &new.refresh_token)
        .await
        .assert_error(401, "unauthorized");
    me(&app, &new.token).await.assert_error(401, "unauthorized");
    me(&app, &old.token).await.assert_error(401, "unauthorized");

    let pool = app.db.pool().await;
    let reuse = audit_rows(&pool, "auth.refresh.reuse").await;
    assert_eq!(reuse.len(), 1, "one reuse row: {reuse:?}");
    assert_eq!(
        reuse[0].0.map(|u| u.to_string()).as_deref(),
        old.user["id"].as_str()
    );
    pool.close().await;
    app.cleanup().await;
}

/// Session ids are in every access token (`sid`): one with a made-up secret is no refresh
/// token of that session. It is refused and the session goes on; the audit log shows no id.
#[tokio::test]
async fn a_forged_refresh_token_ends_no_session() {
    let app = TestApp::spawn().await;
    app.create_admin("home", "ops@home.example.com", "ADMIN", PASSWORD)
        .await;
    let real = login(&app, "ops@home.example.com", PASSWORD).await;
    let sid = real.claims()["sid"].as_str().unwrap().to_owned();
    let forged = format!("{sid}.{}", "ab".repeat(32));

    refresh(&app, &forged)
        .await
        .assert_error(401, "unauthorized");
    anon(&app)
        .post("/api/auth/logout", &json!({"refreshToken": forged}))
        .await
        .assert_error(401, "unauthorized");
    me(&app, &real.token).await.expect(200);
    let next = session_of(&refresh(&app, &real.refresh_token).await);
    me(&app, &next.token).await.expect(200);

    let pool = app.db.pool().await;
    assert!(audit_rows(&pool, "auth.refresh.reuse").await.is_empty());
    let details: Vec<serde_json::Value> =
        sqlx::query_scalar("SELECT details FROM audit_logs WHERE details IS NOT NULL")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(
        details.iter().all(|d| !d.to_string().contains(&sid)),
        "a session id is in the audit log: {details:?}"
    );
    pool.close().await;
    app.cleanup().await;
}

#[tokio::test]
async fn logout_ends_only_that_session() {
    let app = TestApp::spawn().await;
    app.create_admin("home", "ops@home.example.com", "ADMIN", PASSWORD)
        .await;

    let laptop = login(&app, "ops@home.example.com", PASSWORD).await;
    let phone = login(&app, "ops@home.example.com", PASSWORD).await;
    assert_ne!(laptop.claims()["sid"], phone.claims()["sid"]);

    assert_eq!(api::logout(&app, &laptop).await.status, 204);
    me(&app, &laptop.token)
        .await
        .assert_error(401, "unauthorized");
    refresh(&app, &laptop.refresh_token)
        .await
        .assert_error(401, "unauthorized");

    me(&app, &phone.token).await.expect(200);
    let rotated = session_of(&refresh(&app, &phone.refresh_token).await);
    me(&app, &rotated.token).await.expect(200);

    app.cleanup().await;
}

#[tokio::test]
async fn login_failures_are_401_with_one_message() {
    let app = TestApp::spawn().await;
    let org = api::org_with_roles(&app, "home", &["SUPER_ADMIN", "SUPPORT"]).await;
    let root = org.super_admin().token().to_owned();
    let support = org.by_role("SUPPORT").clone();

    // A second tenant, with its own admin, to deactivate.
    let acme = authed(&app, &root)
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
    login(&app, "admin@acme.example.com", PASSWORD).await;

    let wrong_password = try_login(&app, &support.email, "not the password at all").await;
    wrong_password.assert_error(401, "unauthorized");
    let unknown = try_login(&app, "nobody@home.example.com", PASSWORD).await;
    unknown.assert_error(401, "unauthorized");

    let reply = authed(&app, &root)
        .delete(&format!("/api/users/{}", support.id))
        .await;
    assert_eq!(reply.status, 204, "{reply:?}");
    let inactive_user = try_login(&app, &support.email, PASSWORD).await;
    inactive_user.assert_error(401, "unauthorized");

    let reply = authed(&app, &root)
        .delete(&format!("/api/tenants/{}", acme["id"].as_str().unwrap()))
        .await;
    assert_eq!(reply.status, 204, "{reply:?}");
    let inactive_tenant = try_login(&app, "admin@acme.example.com", PASSWORD).await;
    inactive_tenant.assert_error(401, "unauthorized");

    let message = &wrong_password.body["error"]["message"];
    for (case, reply) in [
        ("unknown e-mail", &unknown),
        ("inactive user", &inactive_user),
        ("inactive tenant", &inactive_tenant),
    ] {
        assert_eq!(
            &reply.body["error"]["message"], message,
            "{case} answers like a wrong password"
        );
    }

    app.cleanup().await;
}

#[tokio::test]
async fn forged_and_malformed_access_tokens_are_rejected() {
    let app = TestApp::spawn().await;
    let org = api::org_with_roles(&app, "home", &["SUPER_ADMIN", "READ_ONLY"]).await;
    let root = org.super_admin();
    let reader = org.by_role("READ_ONLY");
    let real = reader.token().to_owned();
    let claims = claims_of(&real);
    let (sub, tid, sid) = (
        claims["sub"].as_str().unwrap(),
        claims["tid"].as_str().unwrap(),
        claims["sid"].as_str().unwrap(),
    );
    let secret = JWT_SECRET.as_bytes();
    let valid = access_claims(sub, tid, sid, "READ_ONLY");
    let with = |key: &str, value: Value| {
        let mut c = valid.clone();
        c[key] = value;
        c
    };
    let without = |key: &str| {
        let mut c = valid.clone();
        c.as_object_mut().unwrap().remove(key);
        c
    };

    // Control: a token minted here with the contract's claims and the test secret is accepted,
    // so every refusal below is about the one thing each case changes.
    let minted = mint_hs256(&valid, secret);
    let body = me(&app, &minted).await.expect(200);
    assert_eq!(body["id"], sub);

    let now = now_secs();
    let mut expired = valid.clone();
    expired["iat"] = json!(now - 1500);
    expired["exp"] = json!(now - 600);

    let cases: Vec<(&str, String)> = vec![
        ("expired 10 minutes ago", mint_hs256(&expired, secret)),
        (
            "wrong secret",
            mint_hs256(&valid, b"another-secret-0123456789-abcdefghijklmnop"),
        ),
        (
            "alg none, empty signature",
            mint_raw(&json!({"alg": "none", "typ": "JWT"}), &valid, None),
        ),
        (
            "header HS384, HMAC-SHA384 with the secret",
            mint_raw(
                &json!({"alg": "HS384", "typ": "JWT"}),
                &valid,
                Some((Algorithm::HS384, secret)),
            ),
        ),
        (
            "header HS384, HMAC-SHA256 with the secret",
            mint_raw(
                &json!({"alg": "HS384", "typ": "JWT"}),
                &valid,
                Some((Algorithm::HS256, secret)),
            ),
        ),
        (
            "header HS512, HMAC-SHA512 with the secret",
            mint_raw(
                &json!({"alg": "HS512", "typ": "JWT"}),
                &valid,
                Some((Algorithm::HS512, secret)),
            ),
        ),
        (
            "header RS256, HMAC-SHA256 with the secret",
            mint_raw(
                &json!({"alg": "RS256", "typ": "JWT"}),
                &valid,
                Some((Algorithm::HS256, secret)),
            ),
        ),
        (
            "tampered role, original signature",
            with_payload(&real, &with("role", json!("SUPER_ADMIN"))),
        ),
        (
            "tampered sub, original signature",
            with_payload(&real, &with("sub", json!(root.id))),
        ),
        (
            "tampered exp, original signature",
            with_payload(&real, &with("exp", json!(now + 86_400))),
        ),
        (
            "typ refresh",
            mint_hs256(&with("typ", json!("refresh")), secret),
        ),
        ("typ empty", mint_hs256(&with("typ", json!("")), secret)),
        ("no typ", mint_hs256(&without("typ"), secret)),
        (
            "wrong aud",
            mint_hs256(&with("aud", json!("someone-else")), secret),
        ),
        ("no aud", mint_hs256(&without("aud"), secret)),
        (
            "wrong iss",
            mint_hs256(&with("iss", json!("not-mpanel")), secret),
        ),
        (
            "sid of no session",
            mint_hs256(
                &with("sid", json!(uuid::Uuid::new_v4().to_string())),
                secret,
            ),
        ),
        ("no sid", mint_hs256(&without("sid"), secret)),
        ("garbage", "not-a-jwt".to_owned()),
        ("three garbage parts", "aaa.bbb.ccc".to_owned()),
        ("empty", String::new()),
    ];

    let mut failures = Vec::new();
    for (case, token) in &cases {
        let reply = me(&app, token).await;
        if reply.status != 401 || reply.code() != "unauthorized" {
            failures.push(format!("{case}: got {} {}", reply.status, reply.body));
        }
    }
    // Not a bearer token at all.
    for (case, api) in [
        ("no Authorization header", anon(&app)),
        (
            "Basic scheme",
            anon(&app).authorization("Basic cmVhZGVyOmNvcnJlY3QgaG9yc2U="),
        ),
        (
            "the real token without a scheme",
            anon(&app).authorization(&real),
        ),
        (
            "the real token under the Token scheme",
            anon(&app).authorization(&format!("Token {real}")),
        ),
    ] {
        let reply = api.get("/api/auth/me").await;
        if reply.status != 401 || reply.code() != "unauthorized" {
            failures.push(format!("{case}: got {} {}", reply.status, reply.body));
        }
    }
    assert!(
        failures.is_empty(),
        "accepted or mis-answered tokens:\n{}",
        failures.join("\n")
    );

    // The real token still works: the refusals were not caused by a revoked session.
    me(&app, &real).await.expect(200);
    app.cleanup().await;
}

#[tokio::test]
async fn login_throttle_blocks_the_sixth_attempt_per_email_and_ip() {
    let app = TestApp::spawn().await;
    let org = api::org_with_roles(&app, "home", &["SUPER_ADMIN", "SUPPORT"]).await;
    let victim = org.by_role("SUPPORT").email.clone();
    let other = org.super_admin().email.clone();

    for attempt in 1..=5 {
        let reply = try_login(&app, &victim, "a wrong password, again").await;
        assert_eq!(reply.status, 401, "failed attempt {attempt}: {reply:?}");
    }
    // The sixth attempt is refused even with the right password.
    let reply = try_login(&app, &victim, PASSWORD).await;
    reply.assert_error(429, "rate_limited");
    let retry_after: u64 = reply
        .headers
        .get("retry-after")
        .expect("Retry-After header")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After is whole seconds");
    assert!(
        (1..=15 * 60).contains(&retry_after),
        "Retry-After {retry_after}"
    );
    // Still blocked on the next attempt.
    try_login(&app, &victim, PASSWORD)
        .await
        .assert_error(429, "rate_limited");

    // Another e-mail from the same IP is not blocked.
    login(&app, &other, PASSWORD).await;

    app.cleanup().await;
}

#[tokio::test]
async fn deactivated_user_loses_access_token_refresh_and_login() {
    let app = TestApp::spawn().await;
    let org = api::org_with_roles(&app, "home", &["SUPER_ADMIN", "ADMIN", "SUPPORT"]).await;
    let admin = org.admin().token().to_owned();
    let victim = org.by_role("SUPPORT").clone();
    me(&app, victim.token()).await.expect(200);

    let reply = authed(&app, &admin)
        .delete(&format!("/api/users/{}", victim.id))
        .await;
    assert_eq!(reply.status, 204, "{reply:?}");

    let user = authed(&app, &admin)
        .get(&format!("/api/users/{}", victim.id))
        .await
        .expect(200);
    assert_eq!(user["isActive"], false, "{user}");

    // The unexpired access token is refused on the very next request, on every route.
    me(&app, victim.token())
        .await
        .assert_error(401, "unauthorized");
    authed(&app, victim.token())
        .get("/api/servers")
        .await
        .assert_error(401, "unauthorized");
    refresh(&app, &victim.session.refresh_token)
        .await
        .assert_error(401, "unauthorized");
    try_login(&app, &victim.email, PASSWORD)
        .await
        .assert_error(401, "unauthorized");

    // The admin who did it is unaffected.
    me(&app, &admin).await.expect(200);
    app.cleanup().await;
}

#[tokio::test]
async fn deactivated_tenant_locks_out_its_users() {
    let app = TestApp::spawn().await;
    let org = api::org_with_roles(&app, "home", &["SUPER_ADMIN"]).await;
    let root = org.super_admin().token().to_owned();

    let acme = authed(&app, &root)
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
    let acme_id = acme["id"].as_str().unwrap();
    let acme_admin = login(&app, "admin@acme.example.com", PASSWORD).await;
    assert_eq!(acme_admin.user["tenantId"], acme_id);
    me(&app, &acme_admin.token).await.expect(200);

    let reply = authed(&app, &root)
        .delete(&format!("/api/tenants/{acme_id}"))
        .await;
    assert_eq!(reply.status, 204, "{reply:?}");

    me(&app, &acme_admin.token)
        .await
        .assert_error(401, "unauthorized");
    refresh(&app, &acme_admin.refresh_token)
        .await
        .assert_error(401, "unauthorized");
    try_login(&app, "admin@acme.example.com", PASSWORD)
        .await
        .assert_error(401, "unauthorized");

    // The deactivating SUPER_ADMIN's own tenant keeps working.
    me(&app, &root).await.expect(200);
    app.cleanup().await;
}

#[tokio::test]
async fn login_rejects_bad_input_naming_the_field() {
    let app = TestApp::spawn().await;
    app.create_admin("home", "ops@home.example.com", "ADMIN", PASSWORD)
        .await;
    let client = anon(&app);

    let reply = client
        .send_raw(Method::POST, "/api/auth/login", r#"{"email": "ops@home"#)
        .await;
    reply.assert_error(400, "validation_failed");
    let reply = client.send_raw(Method::POST, "/api/auth/login", "[]").await;
    reply.assert_error(400, "validation_failed");

    for (body, field) in [
        (json!({"password": PASSWORD}), "email"),
        (json!({"email": "ops@home.example.com"}), "password"),
        (
            json!({"email": "ops@home.example.com", "password": PASSWORD, "remember": true}),
            "remember",
        ),
        (
            json!({"email": "not-an-email", "password": PASSWORD}),
            "email",
        ),
        (json!({"email": 42, "password": PASSWORD}), "email"),
        (
            json!({"email": "ops@home.example.com", "password": 12345678901234_i64}),
            "password",
        ),
    ] {
        let reply = client.post("/api/auth/login", &body).await;
        assert_eq!(reply.status, 400, "{body}: {reply:?}");
        reply.assert_invalid_field(field);
    }

    // Over 1 MiB.
    let huge = json!({"email": "ops@home.example.com", "password": "x".repeat(1_100_000)});
    let reply = client.post("/api/auth/login", &huge).await;
    reply.assert_error(413, "payload_too_large");

    // The account is still usable with the right password.
    login(&app, "ops@home.example.com", PASSWORD).await;
    app.cleanup().await;
}

#[tokio::test]
async fn refresh_and_logout_reject_bad_input() {
    let app = TestApp::spawn().await;
    app.create_admin("home", "ops@home.example.com", "ADMIN", PASSWORD)
        .await;
    let session = login(&app, "ops@home.example.com", PASSWORD).await;
    let client = anon(&app);

    client
        .post("/api/auth/refresh", &json!({}))
        .await
        .assert_invalid_field("refreshToken");
    client
        .post("/api/auth/refresh", &json!({"refreshToken": 7}))
        .await
        .assert_invalid_field("refreshToken");
    client
        .post(
            "/api/auth/refresh",
            &json!({"refreshToken": session.refresh_token, "extra": 1}),
        )
        .await
        .assert_invalid_field("extra");
    client
        .send_raw(Method::POST, "/api/auth/refresh", "{")
        .await
        .assert_error(400, "validation_failed");
    refresh(&app, "definitely-not-a-refresh-token")
        .await
        .assert_error(401, "unauthorized");
    // An access token is not a refresh token.
    refresh(&app, &session.token)
        .await
        .assert_error(401, "unauthorized");

    authed(&app, &session.token)
        .post("/api/auth/logout", &json!({}))
        .await
        .assert_invalid_field("refreshToken");

    // None of it hurt the session.
    let rotated = session_of(&refresh(&app, &session.refresh_token).await);
    me(&app, &rotated.token).await.expect(200);
    app.cleanup().await;
}

#[tokio::test]
async fn audit_records_auth_events_with_ip_and_user_agent() {
    let app = TestApp::spawn().await;
    let org = api::org_with_roles(&app, "home", &["SUPER_ADMIN", "SUPPORT"]).await;
    let root = org.super_admin().token().to_owned();
    let support = org.by_role("SUPPORT").clone();
    let pool = app.db.pool().await;
    // Only this test's own events count below: the setup logins are already audited.
    let logins_before = audit_rows(&pool, "auth.login").await.len();

    let ua = |what: &str| format!("audit-probe/{what}");
    let login_as = |who: &str, password: &str, agent: &str| {
        let body = json!({"email": who, "password": password});
        let client = anon(&app).user_agent(agent);
        async move { client.post("/api/auth/login", &body).await }
    };

    let session = session_of(&login_as(&support.email, PASSWORD, &ua("login")).await);
    login_as(&support.email, "not the password at all", &ua("failed"))
        .await
        .assert_error(401, "unauthorized");
    login_as("ghost@home.example.com", PASSWORD, &ua("ghost"))
        .await
        .assert_error(401, "unauthorized");
    anon(&app)
        .user_agent(&ua("refresh"))
        .post(
            "/api/auth/refresh",
            &json!({"refreshToken": session.refresh_token}),
        )
        .await
        .expect(200);
    anon(&app)
        .user_agent(&ua("reuse"))
        .post(
            "/api/auth/refresh",
            &json!({"refreshToken": session.refresh_token}),
        )
        .await
        .assert_error(401, "unauthorized");
    let second = login(&app, &support.email, PASSWORD).await;
    let reply = authed(&app, &second.token)
        .user_agent(&ua("logout"))
        .post(
            "/api/auth/logout",
            &json!({"refreshToken": second.refresh_token}),
        )
        .await;
    assert_eq!(reply.status, 204, "{reply:?}");

    // Via SQL.
    let support_id = uuid::Uuid::parse_str(&support.id).unwrap();
    let expect_row =
        |rows: &[(Option<uuid::Uuid>, Option<String>, Option<String>)], agent: &str, what: &str| {
            let row = rows
                .iter()
                .find(|r| r.2.as_deref() == Some(agent))
                .unwrap_or_else(|| panic!("{what}: no row with User-Agent {agent}: {rows:?}"));
            assert_eq!(row.0, Some(support_id), "{what}: user_id");
            assert_eq!(row.1.as_deref(), Some("127.0.0.1"), "{what}: ip_address");
        };
    let logins = audit_rows(&pool, "auth.login").await;
    assert_eq!(logins.len(), logins_before + 2, "{logins:?}");
    expect_row(&logins, &ua("login"), "auth.login");
    let failed = audit_rows(&pool, "auth.login.failed").await;
    assert_eq!(
        failed.len(),
        1,
        "only the existing account's failure: {failed:?}"
    );
    expect_row(&failed, &ua("failed"), "auth.login.failed");
    let reuse = audit_rows(&pool, "auth.refresh.reuse").await;
    assert_eq!(reuse.len(), 1, "{reuse:?}");
    expect_row(&reuse, &ua("reuse"), "auth.refresh.reuse");
    let logouts = audit_rows(&pool, "auth.logout").await;
    assert_eq!(logouts.len(), 1, "{logouts:?}");
    expect_row(&logouts, &ua("logout"), "auth.logout");
    let ghost: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_logs WHERE user_agent = 'audit-probe/ghost'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(ghost, 0, "an unknown e-mail writes no audit row");

    // Via the API.
    for (action, agent) in [
        ("auth.login", ua("login")),
        ("auth.login.failed", ua("failed")),
        ("auth.refresh.reuse", ua("reuse")),
        ("auth.logout", ua("logout")),
    ] {
        let page = authed(&app, &root)
            .get(&format!(
                "/api/audit?action={}&userId={}",
                api::enc(action),
                support.id
            ))
            .await
            .expect(200);
        let items = page["items"].as_array().expect("items");
        assert!(
            items
                .iter()
                .all(|i| i["action"] == action && i["userId"] == support.id.as_str()),
            "{action}: filters hold: {page}"
        );
        let item = items
            .iter()
            .find(|i| i["userAgent"] == agent.as_str())
            .unwrap_or_else(|| panic!("{action}: no item with User-Agent {agent}: {page}"));
        assert!(is_uuid(&item["id"]), "{item}");
        assert_eq!(item["tenantId"], org.tenant_id.as_str(), "{item}");
        assert_eq!(item["ipAddress"], "127.0.0.1", "{item}");
        assert!(item.get("details").is_some(), "{item}");
        assert!(item["createdAt"].as_str().is_some(), "{item}");
    }

    // Newest first.
    let page = authed(&app, &root)
        .get("/api/audit?pageSize=100")
        .await
        .expect(200);
    let stamps: Vec<chrono::DateTime<chrono::Utc>> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["createdAt"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(stamps.len() >= 6, "{page}");
    assert!(
        stamps.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {stamps:?}"
    );
    assert_eq!(page["items"][0]["action"], "auth.logout", "{page}");
    assert_eq!(page["items"][1]["userAgent"], USER_AGENT, "{page}");

    pool.close().await;
    app.cleanup().await;
}
