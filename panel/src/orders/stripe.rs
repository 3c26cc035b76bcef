//! Stripe webhook signatures: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]`, each v1 an
//! HMAC-SHA256 of `"{t}." + raw body` keyed with the whole `whsec_…` secret. Verified on the
//! raw bytes before any parsing, in constant time, within a tolerance against replays.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Stripe's own libraries use five minutes.
pub const TOLERANCE_SECS: i64 = 300;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the header has no timestamp")]
    NoTimestamp,
    #[error("the header has no v1 signature")]
    NoSignature,
    #[error("the timestamp is outside the {TOLERANCE_SECS}s tolerance")]
    Stale,
    #[error("no signature matches")]
    Mismatch,
}

pub fn verify(header: &str, payload: &[u8], secret: &str, now: i64) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => timestamp = v.parse::<i64>().ok(),
            Some(("v1", v)) => {
                if let Ok(bytes) = hex::decode(v) {
                    signatures.push(bytes);
                }
            }
            _ => {}
        }
    }
    let t = timestamp.ok_or(SignatureError::NoTimestamp)?;
    if signatures.is_empty() {
        return Err(SignatureError::NoSignature);
    }
    if (now - t).abs() > TOLERANCE_SECS {
        return Err(SignatureError::Stale);
    }
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    // Any of several v1 values may match (Stripe sends one per active secret while rolling).
    let matched = signatures
        .iter()
        .fold(false, |ok, sig| mac.clone().verify_slice(sig).is_ok() | ok);
    if matched {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Signs like Stripe does (for tests and tools).
pub fn sign(payload: &[u8], secret: &str, t: i64) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("{t}.").as_bytes());
    mac.update(payload);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_secret";

    #[test]
    fn accepts_a_fresh_signature_among_several() {
        let body = br#"{"id":"evt_1"}"#;
        let good = sign(body, SECRET, 1_000);
        let other = sign(body, "whsec_old", 1_000);
        let v1 = good.split_once(",v1=").unwrap().1;
        let header = format!("{other},v1={v1}");
        assert_eq!(verify(&header, body, SECRET, 1_100), Ok(()));
    }

    #[test]
    fn refuses_tampered_stale_and_malformed() {
        let body = br#"{"id":"evt_1"}"#;
        let header = sign(body, SECRET, 1_000);
        assert_eq!(
            verify(&header, br#"{"id":"evt_2"}"#, SECRET, 1_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&header, body, "whsec_other", 1_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&header, body, SECRET, 1_301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(&header, body, SECRET, 699),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify("v1=00", body, SECRET, 1_000),
            Err(SignatureError::NoTimestamp)
        );
        assert_eq!(
            verify("t=1000", body, SECRET, 1_000),
            Err(SignatureError::NoSignature)
        );
    }
}
