//! `CurrentUser`: the operator behind a request's bearer token.
//!
//! The token proves who signed in; the database decides whether that still counts. Every
//! request re-reads the user, tenant and session (one indexed join), so deactivating a user
//! or tenant, or logging out, stops its access tokens at once, and role changes apply to the
//! next request.

use axum::{
    extract::FromRequestParts,
    http::{header, request::Parts},
};
use uuid::Uuid;

use crate::{app::AppState, http::error::ApiError, model::UserRole};

#[derive(Debug, Clone)]
pub struct CurrentUser {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub session_id: Uuid,
    pub role: UserRole,
    pub email: String,
}

fn unauthorized() -> ApiError {
    ApiError::Unauthorized("missing, invalid or expired access token".to_owned())
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(user) = parts.extensions.get::<CurrentUser>() {
            return Ok(user.clone());
        }
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(unauthorized)?;
        let claims = state.tokens.verify_access(token).ok_or_else(unauthorized)?;

        let row: Option<(UserRole, String)> = sqlx::query_as(
            "SELECT u.role, u.email
               FROM users u
               JOIN tenants t ON t.id = u.tenant_id
               JOIN refresh_sessions s ON s.id = $3 AND s.user_id = u.id
              WHERE u.id = $1 AND u.tenant_id = $2
                AND u.is_active AND t.is_active
                AND s.revoked_at IS NULL AND s.expires_at > now()",
        )
        .bind(claims.sub)
        .bind(claims.tid)
        .bind(claims.sid)
        .fetch_optional(&state.db)
        .await?;
        let (role, email) = row.ok_or_else(unauthorized)?;
        let user = CurrentUser {
            id: claims.sub,
            tenant_id: claims.tid,
            session_id: claims.sid,
            role,
            email,
        };
        tracing::Span::current().record("user_id", tracing::field::display(user.id));
        parts.extensions.insert(user.clone());
        Ok(user)
    }
}
