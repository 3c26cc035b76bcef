//! Internal callers (the marketing backend, cron and backup scripts) authenticate with the
//! shared `MARKETING_WEBHOOK_SECRET`, sent as `x-internal-key` (spec §9.2) or as
//! `Authorization: Bearer` (spec §7.1). Compared in constant time.

use axum::{
    extract::FromRequestParts,
    http::{header, request::Parts},
};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::app::AppState;

pub struct InternalCaller;

impl FromRequestParts<AppState> for InternalCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented = parts
            .headers
            .get("x-internal-key")
            .or_else(|| parts.headers.get(header::AUTHORIZATION))
            .and_then(|v| v.to_str().ok())
            .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim());
        let expected = state
            .config
            .marketing_webhook_secret
            .expose_secret()
            .as_bytes();
        match presented {
            Some(key) if bool::from(key.as_bytes().ct_eq(expected)) => Ok(InternalCaller),
            _ => Err(ApiError::Unauthorized(
                "missing or wrong internal key".to_owned(),
            )),
        }
    }
}
