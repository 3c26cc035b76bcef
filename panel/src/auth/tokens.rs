//! Access tokens (short-lived HS256 JWTs) and refresh tokens (opaque, rotated, stored hashed).
//!
//! Access tokens are verified with exactly one algorithm, issuer and audience, so `alg: none`
//! and algorithm-confusion tokens fail. Refresh tokens are `<session id>.<secret>`: the
//! session id finds the row, and a secret that is not the session's current one is a reused
//! (stolen) token.

use std::time::Duration;

use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::{config::JwtConfig, model::UserRole};

const ISSUER: &str = "mpanel";
const AUDIENCE: &str = "mpanel-api";
const ACCESS: &str = "access";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The user.
    pub sub: Uuid,
    /// The user's tenant.
    pub tid: Uuid,
    /// The refresh session this token was issued under; logging out ends it.
    pub sid: Uuid,
    /// Informational: authorization always uses the role stored in the database.
    pub role: UserRole,
    pub typ: String,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
}

pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
}

impl TokenKeys {
    pub fn new(cfg: &JwtConfig) -> TokenKeys {
        let secret = cfg.secret.expose_secret().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            access_ttl: cfg.access_ttl,
            refresh_ttl: cfg.refresh_ttl,
        }
    }

    pub fn issue_access(
        &self,
        user: Uuid,
        tenant: Uuid,
        session: Uuid,
        role: UserRole,
    ) -> anyhow::Result<String> {
        let now = Utc::now().timestamp();
        let claims = AccessClaims {
            sub: user,
            tid: tenant,
            sid: session,
            role,
            typ: ACCESS.to_owned(),
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            iat: now,
            exp: now + self.access_ttl.as_secs() as i64,
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// `None` for anything but a valid, unexpired access token of ours.
    pub fn verify_access(&self, token: &str) -> Option<AccessClaims> {
        let data =
            jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation).ok()?;
        (data.claims.typ == ACCESS).then_some(data.claims)
    }
}

/// A new refresh token for `session` and the hash to store for it.
pub fn new_refresh_token(session: Uuid) -> (String, String) {
    let token = format!("{}.{}", session.simple(), crate::util::random_token(32));
    let hash = hash_token(&token);
    (token, hash)
}

/// The session a refresh token claims to belong to (not yet proof of anything).
pub fn refresh_session_id(token: &str) -> Option<Uuid> {
    let (id, secret) = token.split_once('.')?;
    if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Uuid::parse_str(id).ok()
}

/// SHA-256 is enough here: the secret has 256 random bits, so no stretching is needed.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub fn hashes_match(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn keys(secret: &str) -> TokenKeys {
        TokenKeys::new(&JwtConfig {
            secret: SecretString::from(secret.to_owned()),
            access_ttl: Duration::from_secs(900),
            refresh_ttl: Duration::from_secs(86_400),
        })
    }

    #[test]
    fn access_tokens_verify_only_with_the_same_secret() {
        let k = keys("0123456789abcdef0123456789abcdef");
        let (u, t, s) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let token = k.issue_access(u, t, s, UserRole::Admin).unwrap();
        let claims = k.verify_access(&token).expect("valid");
        assert_eq!((claims.sub, claims.tid, claims.sid), (u, t, s));
        assert!(
            keys("another-secret-another-secret-xx")
                .verify_access(&token)
                .is_none()
        );
        assert!(k.verify_access(&format!("{token}x")).is_none());
    }

    #[test]
    fn refresh_tokens_carry_their_session_and_hash_stably() {
        let s = Uuid::new_v4();
        let (token, hash) = new_refresh_token(s);
        assert_eq!(refresh_session_id(&token), Some(s));
        assert!(hashes_match(&hash, &hash_token(&token)));
        assert!(!hashes_match(&hash, &hash_token(&format!("{token}0"))));
        assert_eq!(refresh_session_id("garbage"), None);
        assert_eq!(refresh_session_id(&format!("{}.short", s.simple())), None);
    }
}
