//! Typed helpers for the admin API on top of `TestApp`: sessions, authenticated requests,
//! operators of every role, and hand-made JWTs for the forgery tests.

use std::sync::atomic::{AtomicU64, Ordering};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey};
use reqwest::{Method, header::HeaderMap};
use serde_json::{Value, json};

use crate::TestApp;

/// The password every operator made by these helpers gets (≥ 12 characters).
pub const PASSWORD: &str = "correct horse battery staple";
/// The User-Agent every helper request sends, so audit rows can be checked against it.
pub const USER_AGENT: &str = "mpanel-tests/1.0 (api helpers)";
/// Every operator role, most powerful first.
pub const ROLES: [&str; 5] = ["SUPER_ADMIN", "ADMIN", "SUPPORT", "BILLING", "READ_ONLY"];

/// A process-wide unique suffix for names, e-mails and slugs.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// One HTTP answer: status, parsed JSON body (`Null` when empty or not JSON) and headers.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: HeaderMap,
}

impl Reply {
    /// The `error.code` of an error envelope (empty when there is none).
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// Asserts `status` and the error envelope `{"error":{"code","message","details"}}`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.status, status,
            "expected {status} {code}, got {self:?}"
        );
        assert_eq!(self.code(), code, "{self:?}");
        assert!(
            self.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "error message: {self:?}"
        );
        assert!(
            self.body["error"].get("details").is_some(),
            "details: {self:?}"
        );
    }

    /// Asserts a 400 `validation_failed` whose `details.field` is `field`.
    #[track_caller]
    pub fn assert_invalid_field(&self, field: &str) {
        self.assert_error(400, "validation_failed");
        assert_eq!(
            self.body["error"]["details"]["field"], field,
            "details.field: {self:?}"
        );
    }

    /// Asserts `status` and returns the body.
    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(self.status, status, "{self:?}");
        self.body
    }
}

/// A request builder: no credentials, a bearer token, or any raw `Authorization` value.
pub struct Api<'a> {
    app: &'a TestApp,
    authorization: Option<String>,
    user_agent: String,
}

/// Requests without credentials.
pub fn anon(app: &TestApp) -> Api<'_> {
    Api {
        app,
        authorization: None,
        user_agent: USER_AGENT.to_owned(),
    }
}

/// Requests with `Authorization: Bearer <token>`.
pub fn authed<'a>(app: &'a TestApp, token: &str) -> Api<'a> {
    anon(app).authorization(&format!("Bearer {token}"))
}

impl<'a> Api<'a> {
    /// Sends exactly this `Authorization` header value.
    pub fn authorization(mut self, value: &str) -> Api<'a> {
        self.authorization = Some(value.to_owned());
        self
    }

    pub fn user_agent(mut self, value: &str) -> Api<'a> {
        self.user_agent = value.to_owned();
        self
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.send(Method::PUT, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Reply {
        self.send(Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(Method::DELETE, path, None).await
    }

    pub async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Reply {
        let mut req = self.request(method, path);
        if let Some(body) = body {
            req = req.json(body);
        }
        reply(req).await
    }

    /// Sends `raw` as the body with `Content-Type: application/json` (for malformed JSON).
    pub async fn send_raw(&self, method: Method, path: &str, raw: impl Into<Vec<u8>>) -> Reply {
        let req = self
            .request(method, path)
            .header("content-type", "application/json")
            .body(raw.into());
        reply(req).await
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut req = self
            .app
            .http
            .request(method, self.app.url(path))
            .header("user-agent", &self.user_agent);
        if let Some(auth) = &self.authorization {
            req = req.header("authorization", auth);
        }
        req
    }
}

async fn reply(req: reqwest::RequestBuilder) -> Reply {
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

/// Percent-encodes a query-string value.
pub fn enc(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A logged-in operator's tokens and the `user` object of the login answer.
#[derive(Debug, Clone)]
pub struct Session {
    pub token: String,
    pub refresh_token: String,
    pub user: Value,
}

impl Session {
    fn from_body(body: &Value) -> Session {
        Session {
            token: body["token"].as_str().expect("token").to_owned(),
            refresh_token: body["refreshToken"]
                .as_str()
                .expect("refreshToken")
                .to_owned(),
            user: body["user"].clone(),
        }
    }

    /// The (unverified) claims of the access token.
    pub fn claims(&self) -> Value {
        claims_of(&self.token)
    }
}

/// `POST /api/auth/login`, whatever the answer.
pub async fn try_login(app: &TestApp, email: &str, password: &str) -> Reply {
    anon(app)
        .post(
            "/api/auth/login",
            &json!({"email": email, "password": password}),
        )
        .await
}

/// Logs in; panics unless the answer is 200.
pub async fn login(app: &TestApp, email: &str, password: &str) -> Session {
    let reply = try_login(app, email, password).await;
    assert_eq!(reply.status, 200, "login as {email}: {reply:?}");
    Session::from_body(&reply.body)
}

/// `POST /api/auth/refresh`, whatever the answer.
pub async fn refresh(app: &TestApp, refresh_token: &str) -> Reply {
    anon(app)
        .post("/api/auth/refresh", &json!({"refreshToken": refresh_token}))
        .await
}

/// The session carried by a 200 login/refresh answer.
pub fn session_of(reply: &Reply) -> Session {
    assert_eq!(reply.status, 200, "{reply:?}");
    Session::from_body(&reply.body)
}

/// `POST /api/auth/logout` with the session's bearer token and refresh token.
pub async fn logout(app: &TestApp, session: &Session) -> Reply {
    authed(app, &session.token)
        .post(
            "/api/auth/logout",
            &json!({"refreshToken": session.refresh_token}),
        )
        .await
}

/// `GET /api/auth/me` with `token`.
pub async fn me(app: &TestApp, token: &str) -> Reply {
    authed(app, token).get("/api/auth/me").await
}

/// The body of a user made through `POST /api/users`.
pub fn user_body(email: &str, role: &str) -> Value {
    json!({
        "email": email,
        "displayName": format!("{role} {email}"),
        "role": role,
        "password": PASSWORD,
    })
}

/// Creates a user through `POST /api/users` as `token`'s owner; panics unless 201.
pub async fn create_user(app: &TestApp, token: &str, email: &str, role: &str) -> Value {
    authed(app, token)
        .post("/api/users", &user_body(email, role))
        .await
        .expect(201)
}

/// The body of a server made through `POST /api/servers`.
pub fn server_body(name: &str) -> Value {
    json!({
        "name": name,
        "role": "WEB",
        "ipAddress": "203.0.113.10",
        "internalIp": "10.0.0.10",
        "location": "home-lab",
    })
}

/// Creates a server through `POST /api/servers`; panics unless 201.
pub async fn create_server(app: &TestApp, token: &str, name: &str) -> Value {
    authed(app, token)
        .post("/api/servers", &server_body(name))
        .await
        .expect(201)
}

/// The body of a tenant made through `POST /api/tenants` (without a first admin).
pub fn tenant_body(slug: &str) -> Value {
    json!({"name": format!("Tenant {slug}"), "slug": slug})
}

/// Creates a tenant through `POST /api/tenants`; panics unless 201.
pub async fn create_tenant(app: &TestApp, token: &str, slug: &str) -> Value {
    authed(app, token)
        .post("/api/tenants", &tenant_body(slug))
        .await
        .expect(201)
}

/// An operator with a live session.
#[derive(Debug, Clone)]
pub struct Operator {
    pub id: String,
    pub email: String,
    pub role: String,
    pub session: Session,
}

impl Operator {
    pub fn token(&self) -> &str {
        &self.session.token
    }
}

/// A tenant with one logged-in operator per role.
#[derive(Debug)]
pub struct Org {
    pub tenant_id: String,
    pub slug: String,
    pub members: Vec<Operator>,
}

impl Org {
    pub fn by_role(&self, role: &str) -> &Operator {
        self.members
            .iter()
            .find(|m| m.role == role)
            .unwrap_or_else(|| panic!("no {role} in {}", self.slug))
    }

    pub fn super_admin(&self) -> &Operator {
        self.by_role("SUPER_ADMIN")
    }

    pub fn admin(&self) -> &Operator {
        self.by_role("ADMIN")
    }
}

/// The e-mail `org_with_roles` gives the operator of `role` in tenant `slug`.
pub fn email_for(slug: &str, role: &str) -> String {
    format!(
        "{}@{slug}.example.com",
        role.to_lowercase().replace('_', "-")
    )
}

/// Bootstraps tenant `slug` through the real CLI with a SUPER_ADMIN, who then creates one user
/// of each other role in `roles` through `POST /api/users`; everyone is logged in.
pub async fn org_with_roles(app: &TestApp, slug: &str, roles: &[&str]) -> Org {
    let super_email = email_for(slug, "SUPER_ADMIN");
    let created = app
        .create_admin(slug, &super_email, "SUPER_ADMIN", PASSWORD)
        .await;
    let tenant_id = created["tenantId"]
        .as_str()
        .expect("create-admin prints tenantId")
        .to_owned();
    let session = login(app, &super_email, PASSWORD).await;
    let mut members = vec![Operator {
        id: session.user["id"].as_str().expect("user.id").to_owned(),
        email: super_email,
        role: "SUPER_ADMIN".to_owned(),
        session,
    }];
    for role in roles.iter().filter(|r| **r != "SUPER_ADMIN") {
        let email = email_for(slug, role);
        let user = create_user(app, &members[0].session.token, &email, role).await;
        let session = login(app, &email, PASSWORD).await;
        members.push(Operator {
            id: user["id"].as_str().expect("user id").to_owned(),
            email,
            role: role.to_string(),
            session,
        });
    }
    Org {
        tenant_id,
        slug: slug.to_owned(),
        members,
    }
}

/// A tenant with one logged-in operator of every role.
pub async fn org_with_all_roles(app: &TestApp, slug: &str) -> Org {
    org_with_roles(app, slug, &ROLES).await
}

// ---------------------------------------------------------------------------------------------
// JWTs made by hand
// ---------------------------------------------------------------------------------------------

pub fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The claims of a JWT, read without checking anything.
pub fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .expect("payload is base64url");
    serde_json::from_slice(&bytes).expect("payload is JSON")
}

/// The header of a JWT, read without checking anything.
pub fn header_of(token: &str) -> Value {
    let header = token.split('.').next().expect("a JWT has a header");
    let bytes = URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .expect("header is base64url");
    serde_json::from_slice(&bytes).expect("header is JSON")
}

/// Valid access-token claims as the contract describes them, living 15 minutes from now.
pub fn access_claims(sub: &str, tid: &str, sid: &str, role: &str) -> Value {
    let now = now_secs();
    json!({
        "sub": sub,
        "tid": tid,
        "sid": sid,
        "role": role,
        "typ": "access",
        "iss": "mpanel",
        "aud": "mpanel-api",
        "iat": now,
        "exp": now + 900,
    })
}

/// `header.payload.signature` where the header and payload are exactly the given JSON and the
/// signature is computed with `sign_with` over the first two parts (`None`: empty signature).
pub fn mint_raw(header: &Value, claims: &Value, sign_with: Option<(Algorithm, &[u8])>) -> String {
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let signature = match sign_with {
        Some((alg, secret)) => jsonwebtoken::crypto::sign(
            signing_input.as_bytes(),
            &EncodingKey::from_secret(secret),
            alg,
        )
        .expect("HMAC signing"),
        None => String::new(),
    };
    format!("{signing_input}.{signature}")
}

/// An HS256 JWT over `claims` signed with `secret`.
pub fn mint_hs256(claims: &Value, secret: &[u8]) -> String {
    mint_raw(
        &json!({"alg": "HS256", "typ": "JWT"}),
        claims,
        Some((Algorithm::HS256, secret)),
    )
}

/// Keeps the header and signature of `token` but replaces its payload with `claims`.
pub fn with_payload(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT has three parts");
    format!(
        "{}.{}.{}",
        parts[0],
        b64url(claims.to_string().as_bytes()),
        parts[2]
    )
}
