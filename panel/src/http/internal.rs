//! Internal callers authenticate with a shared key, sent as `x-internal-key` (spec §9.2) or
//! as `Authorization: Bearer` (spec §7.1), compared in constant time. Each kind of caller has
//! its own key: the marketing backend `MARKETING_WEBHOOK_SECRET` ([`Marketing`]), the backup
//! scripts `BACKUP_REPORT_SECRET` ([`BackupScripts`]), so one leaked key opens one door.

use axum::{
    extract::FromRequestParts,
    http::{header, request::Parts},
};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::app::AppState;

use std::marker::PhantomData;

use secrecy::SecretString;

use crate::config::Config;

/// Which internal caller a route admits, by the key it must present.
pub trait InternalKey {
    fn key(config: &Config) -> &SecretString;
}

/// The marketing backend (orders).
pub struct Marketing;

impl InternalKey for Marketing {
    fn key(config: &Config) -> &SecretString {
        &config.marketing_webhook_secret
    }
}

/// Scripts reporting backups they ran.
pub struct BackupScripts;

impl InternalKey for BackupScripts {
    fn key(config: &Config) -> &SecretString {
        &config.backup_report_secret
    }
}

pub struct InternalCaller<K: InternalKey = Marketing>(PhantomData<K>);

impl<K: InternalKey + Send + Sync> FromRequestParts<AppState> for InternalCaller<K> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented = parts
            .headers
            .get("x-internal-key")
            .or_else(|| parts.headers.get(header::AUTHORIZATION))
            .and_then(|v| v.to_str().ok())
            .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim());
        let expected = K::key(&state.config).expose_secret().as_bytes();
        match presented {
            Some(key) if bool::from(key.as_bytes().ct_eq(expected)) => {
                Ok(InternalCaller(PhantomData))
            }
            _ => Err(ApiError::Unauthorized(
                "missing or wrong internal key".to_owned(),
            )),
        }
    }
}
