//! Small helpers with no better home.

/// A random secret of `bytes` bytes from the thread-local CSPRNG, hex-encoded.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::fill(&mut buf[..]);
    hex::encode(buf)
}

/// A connection URL with any password removed, fit for an error message or a log line.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "(unparseable URL)".to_owned(),
    }
}

/// Sleeps unless shut down first; true when shutting down.
pub async fn pause(shutdown: &tokio_util::sync::CancellationToken, d: std::time::Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.cancelled() => true,
    }
}

/// `base × 2^(attempt-1)`, capped, with up to 10% jitter so retries of many jobs (or
/// e-mails) spread out.
pub fn backoff(
    base: std::time::Duration,
    max: std::time::Duration,
    attempt: i32,
) -> std::time::Duration {
    let exp = u32::try_from(attempt.saturating_sub(1))
        .unwrap_or(0)
        .min(20);
    let delay = base.saturating_mul(1u32 << exp).min(max);
    let jitter = rand::random_range(0.0..0.1);
    delay.mul_f64(1.0 + jitter).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_sized() {
        let a = random_token(32);
        assert_eq!(a.len(), 64);
        assert_ne!(a, random_token(32));
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:hunter2@db:5432/x"),
            "postgres://u:***@db:5432/x"
        );
        assert_eq!(redact_url("redis://127.0.0.1/0"), "redis://127.0.0.1/0");
    }
}
