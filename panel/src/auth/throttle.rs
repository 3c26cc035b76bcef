//! Login throttling: failed logins are counted in Redis per (e-mail, IP), per e-mail and per
//! IP over a fixed window. Past a limit, logins answer 429 with `Retry-After` until the
//! window ends: nobody is locked out for good, and a real user on their own IP is only
//! blocked once someone else has failed many times against their e-mail from many places.
//!
//! Redis down means no throttling (logged), not no logins: argon2 still rate-limits guesses.

use std::{net::IpAddr, time::Duration};

use redis::AsyncCommands;
use sha2::{Digest, Sha256};

use crate::redis::Redis;

pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Failures of one e-mail from one IP.
pub const MAX_PER_EMAIL_AND_IP: u64 = 5;
/// Failures of one e-mail from anywhere.
pub const MAX_PER_EMAIL: u64 = 20;
/// Failures from one IP against any e-mail.
pub const MAX_PER_IP: u64 = 50;

/// Failed attempts counted in Redis under a few keys, each with its own limit, over a fixed
/// window. Redis down means no throttling (logged), never a refusal.
pub struct FailureCounters<'a> {
    redis: &'a Redis,
    keys: Vec<(String, u64)>,
}

impl<'a> FailureCounters<'a> {
    /// `keys` are suffixes under the Redis prefix, with their limits.
    pub fn new(redis: &'a Redis, keys: Vec<(String, u64)>) -> FailureCounters<'a> {
        let keys = keys
            .into_iter()
            .map(|(k, limit)| (redis.key(&k), limit))
            .collect();
        FailureCounters { redis, keys }
    }

    /// `Some(seconds)` to wait when any counter is at its limit.
    pub async fn retry_after(&self) -> Option<u64> {
        let mut conn = self.redis.conn();
        let names: Vec<&str> = self.keys.iter().map(|(k, _)| k.as_str()).collect();
        let counts: Vec<Option<u64>> = match conn.mget(&names).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "throttle unavailable (Redis)");
                return None;
            }
        };
        let mut wait = None;
        for ((key, limit), count) in self.keys.iter().zip(counts) {
            if count.unwrap_or(0) >= *limit {
                let ttl: i64 = conn.ttl(key).await.unwrap_or(WINDOW.as_secs() as i64);
                let secs = ttl.max(1) as u64;
                wait = Some(wait.map_or(secs, |w: u64| w.max(secs)));
            }
        }
        wait
    }

    pub async fn record_failure(&self) {
        let mut pipe = redis::pipe();
        for (key, _) in &self.keys {
            pipe.incr(key, 1u64)
                .ignore()
                .cmd("EXPIRE")
                .arg(key)
                .arg(WINDOW.as_secs())
                .arg("NX")
                .ignore();
        }
        let mut conn = self.redis.conn();
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            tracing::warn!(error = %e, "cannot record a failed attempt (Redis)");
        }
    }

    /// Forgets the counter at `index` (a success clears its own key).
    pub async fn clear(&self, index: usize) {
        let mut conn = self.redis.conn();
        let _: Result<(), _> = conn.del(&self.keys[index].0).await;
    }
}

/// Login failures per (e-mail, IP), per e-mail and per IP; a success clears the first.
pub fn login_throttle<'a>(
    redis: &'a Redis,
    email: &str,
    ip: Option<IpAddr>,
) -> FailureCounters<'a> {
    // E-mails are hashed so the keyspace lists no addresses.
    let email = hex::encode(&Sha256::digest(email.as_bytes())[..16]);
    let ip = ip_label(ip);
    FailureCounters::new(
        redis,
        vec![
            (
                format!("throttle:login:email-ip:{email}:{ip}"),
                MAX_PER_EMAIL_AND_IP,
            ),
            (format!("throttle:login:email:{email}"), MAX_PER_EMAIL),
            (format!("throttle:login:ip:{ip}"), MAX_PER_IP),
        ],
    )
}

/// Failed enrollment redemptions per IP: tokens cannot be guessed, but each attempt costs a
/// CSR signature check.
pub const MAX_ENROLL_FAILURES_PER_IP: u64 = 20;

pub fn enrollment_throttle(redis: &Redis, ip: Option<IpAddr>) -> FailureCounters<'_> {
    FailureCounters::new(
        redis,
        vec![(
            format!("throttle:enroll:ip:{}", ip_label(ip)),
            MAX_ENROLL_FAILURES_PER_IP,
        )],
    )
}

fn ip_label(ip: Option<IpAddr>) -> String {
    ip.map(|i| i.to_string())
        .unwrap_or_else(|| "unknown".into())
}
