//! `/api/auth`: login, refresh, me, logout (spec §6.1).

use axum::{Json, extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use mpanel_protocol::EmailAddress;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::http::openapi::Errors;
use crate::{
    app::AppState,
    audit::{self, Entry},
    auth::{
        current::CurrentUser,
        password,
        session::{self, Logout, Rotation, SessionUser},
        throttle::login_throttle,
        tokens::hash_token,
    },
    http::{
        client::ClientMeta,
        error::{ApiError, ApiResult},
        extract::ApiJson,
    },
    model::UserRole,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(me))
        .routes(routes!(logout))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    #[schema(format = Email)]
    email: String,
    /// 1 to 1024 bytes.
    #[schema(min_length = 1)]
    password: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RefreshRequest {
    refresh_token: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct TokenResponse {
    /// The access token (a JWT) for `Authorization: Bearer`.
    token: String,
    /// One-time: trade it on `/api/auth/refresh` for a new pair.
    refresh_token: String,
    /// Seconds until `token` expires.
    expires_in: u64,
    #[schema(value_type = SessionUserView)]
    user: SessionUser,
}

/// The user a session belongs to (documents `auth::session::SessionUser`, which is what is
/// serialized).
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "camelCase")]
struct SessionUserView {
    id: Uuid,
    email: String,
    display_name: String,
    role: UserRole,
    tenant_id: Uuid,
}

fn invalid_credentials() -> ApiError {
    ApiError::Unauthorized("invalid e-mail or password".to_owned())
}

fn invalid_refresh() -> ApiError {
    ApiError::Unauthorized("invalid, expired or revoked refresh token".to_owned())
}

#[derive(sqlx::FromRow)]
struct LoginRow {
    password_hash: String,
    is_active: bool,
    tenant_active: bool,
    #[sqlx(flatten)]
    user: SessionUser,
}

/// Trades an e-mail and password for an access token and a refresh token.
#[utoipa::path(post, path = "/login", tag = "auth", operation_id = "login",
    request_body = LoginRequest,
    responses((status = 200, description = "Signed in", body = TokenResponse), Errors))]
async fn login(
    State(state): State<AppState>,
    client: ClientMeta,
    ApiJson(body): ApiJson<LoginRequest>,
) -> ApiResult<Json<TokenResponse>> {
    let email =
        EmailAddress::parse(&body.email).map_err(|e| ApiError::field("email", e.to_string()))?;
    if body.password.is_empty() || body.password.len() > password::MAX_PASSWORD_LEN {
        return Err(ApiError::field("password", "must be 1 to 1024 bytes"));
    }
    let throttle = login_throttle(&state.redis, email.as_str(), client.ip);
    if let Some(retry_after_secs) = throttle.retry_after().await {
        tracing::warn!(ip = ?client.ip, "login throttled");
        return Err(ApiError::TooManyRequests { retry_after_secs });
    }

    let row: Option<LoginRow> = sqlx::query_as(
        "SELECT u.password_hash, u.is_active, t.is_active AS tenant_active,
                u.id, u.email, u.display_name, u.role, u.tenant_id
           FROM users u JOIN tenants t ON t.id = u.tenant_id
          WHERE u.email = $1",
    )
    .bind(email.as_str())
    .fetch_optional(&state.db)
    .await?;

    // argon2 costs tens of milliseconds of CPU: keep it off the async workers. An unknown
    // e-mail is checked against a dummy hash so both cases take the same time.
    let hash = row
        .as_ref()
        .map(|r| r.password_hash.clone())
        .unwrap_or_else(|| password::DUMMY_HASH.clone());
    let candidate = body.password;
    let password_ok = tokio::task::spawn_blocking(move || password::verify(&candidate, &hash))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;

    let Some(row) = row else {
        throttle.record_failure().await;
        tracing::info!(ip = ?client.ip, "login failed: unknown e-mail");
        return Err(invalid_credentials());
    };
    let refusal = if !password_ok {
        Some("bad password")
    } else if !row.is_active {
        Some("user inactive")
    } else if !row.tenant_active {
        Some("tenant inactive")
    } else {
        None
    };
    let mut tx = state.db.begin().await?;
    if let Some(reason) = refusal {
        audit::record(
            &mut tx,
            Entry {
                tenant_id: row.user.tenant_id,
                user_id: Some(row.user.id),
                action: "auth.login.failed",
                client: Some(&client),
                details: json!({ "reason": reason }),
            },
        )
        .await?;
        tx.commit().await?;
        throttle.record_failure().await;
        return Err(invalid_credentials());
    }

    sqlx::query("UPDATE users SET last_login_at = now() WHERE id = $1")
        .bind(row.user.id)
        .execute(&mut *tx)
        .await?;
    let (session_id, refresh_token) =
        session::create(&mut tx, &row.user, state.tokens.refresh_ttl, &client).await?;
    audit::record(
        &mut tx,
        Entry {
            tenant_id: row.user.tenant_id,
            user_id: Some(row.user.id),
            action: "auth.login",
            client: Some(&client),
            // Other roles read the audit log: a reference, not the id every token carries.
            details: json!({ "sessionRef": &hash_token(&session_id.to_string())[..16] }),
        },
    )
    .await?;
    tx.commit().await?;
    // A success clears this e-mail's counter from this IP.
    throttle.clear(0).await;
    token_response(&state, row.user, session_id, refresh_token).map(Json)
}

fn token_response(
    state: &AppState,
    user: SessionUser,
    session_id: Uuid,
    refresh_token: String,
) -> ApiResult<TokenResponse> {
    let token = state
        .tokens
        .issue_access(user.id, user.tenant_id, session_id, user.role)?;
    Ok(TokenResponse {
        token,
        refresh_token,
        expires_in: state.tokens.access_ttl.as_secs(),
        user,
    })
}

/// Trades a refresh token for a new access token and a new refresh token (rotation; a reused
/// refresh token ends its session).
#[utoipa::path(post, path = "/refresh", tag = "auth", operation_id = "refreshToken",
    request_body = RefreshRequest,
    responses((status = 200, description = "A new token pair", body = TokenResponse), Errors))]
async fn refresh(
    State(state): State<AppState>,
    client: ClientMeta,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> ApiResult<Json<TokenResponse>> {
    let mut tx = state.db.begin().await?;
    let outcome = session::rotate(
        &mut tx,
        &body.refresh_token,
        state.tokens.refresh_ttl,
        &client,
    )
    .await?;
    match outcome {
        Rotation::Rotated {
            user,
            session_id,
            token,
        } => {
            tx.commit().await?;
            token_response(&state, user, session_id, token).map(Json)
        }
        Rotation::Reused { user_id, tenant_id } => {
            audit_reuse(&mut tx, tenant_id, user_id, &client).await?;
            tx.commit().await?;
            Err(ApiError::Unauthorized(
                "this refresh token was already used; the session has been ended".to_owned(),
            ))
        }
        Rotation::Refused => {
            tx.commit().await?;
            Err(invalid_refresh())
        }
    }
}

async fn audit_reuse(
    conn: &mut sqlx::PgConnection,
    tenant_id: Uuid,
    user_id: Uuid,
    client: &ClientMeta,
) -> sqlx::Result<()> {
    tracing::warn!(%user_id, ip = ?client.ip, "refresh token reuse: session revoked");
    audit::record(
        conn,
        Entry {
            tenant_id,
            user_id: Some(user_id),
            action: "auth.refresh.reuse",
            client: Some(client),
            details: json!({ "effect": "session revoked" }),
        },
    )
    .await
}

/// Ends the session of a refresh token (idempotent: an unknown or ended one is fine too).
#[utoipa::path(post, path = "/logout", tag = "auth", operation_id = "logout", security(("bearer" = [])),
    request_body = RefreshRequest,
    responses((status = 204, description = "The session is ended"), Errors))]
async fn logout(
    State(state): State<AppState>,
    client: ClientMeta,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> ApiResult<StatusCode> {
    let mut tx = state.db.begin().await?;
    match session::logout(&mut tx, &body.refresh_token).await? {
        Logout::Ended { user_id, tenant_id } => {
            audit::record(
                &mut tx,
                Entry {
                    tenant_id,
                    user_id: Some(user_id),
                    action: "auth.logout",
                    client: Some(&client),
                    details: json!({}),
                },
            )
            .await?;
            tx.commit().await?;
            Ok(StatusCode::NO_CONTENT)
        }
        Logout::Reused { user_id, tenant_id } => {
            audit_reuse(&mut tx, tenant_id, user_id, &client).await?;
            tx.commit().await?;
            Err(invalid_refresh())
        }
        Logout::Gone => Ok(StatusCode::NO_CONTENT),
        Logout::Refused => Err(invalid_refresh()),
    }
}

#[derive(Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Me {
    id: Uuid,
    email: String,
    display_name: String,
    role: UserRole,
    tenant_id: Uuid,
    is_active: bool,
    last_login_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    #[sqlx(json)]
    tenant: MeTenant,
}

/// The caller's tenant, in short.
#[derive(Serialize, Deserialize, ToSchema)]
struct MeTenant {
    id: Uuid,
    name: String,
    slug: String,
}

/// The signed-in operator, with their tenant.
#[utoipa::path(get, path = "/me", tag = "auth", operation_id = "getMe", security(("bearer" = [])),
    responses((status = 200, description = "The caller", body = Me), Errors))]
async fn me(State(state): State<AppState>, user: CurrentUser) -> ApiResult<Json<Me>> {
    let me: Me = sqlx::query_as(
        "SELECT u.id, u.email, u.display_name, u.role, u.tenant_id, u.is_active,
                u.last_login_at, u.created_at,
                json_build_object('id', t.id, 'name', t.name, 'slug', t.slug) AS tenant
           FROM users u JOIN tenants t ON t.id = u.tenant_id
          WHERE u.id = $1",
    )
    .bind(user.id)
    .fetch_one(&state.db)
    .await?;
    Ok(Json(me))
}
