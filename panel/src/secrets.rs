//! Sealing secrets the panel must keep for a while but never in clear: credentials waiting
//! for an order's welcome e-mail, and queued e-mail bodies that carry them.
//!
//! A sealed value is `nonce (24 bytes) || XChaCha20-Poly1305 ciphertext and tag` under the
//! 32-byte `CREDENTIALS_KEY`. The random 192-bit nonce makes a nonce collision negligible
//! without any counter to keep. Opening fails when the value was altered or sealed under
//! another key. This module never logs or prints a key or a plaintext.

use std::fmt;

use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};
use zeroize::Zeroizing;

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
/// Poly1305's tag: even an empty plaintext seals to nonce + tag.
const TAG_LEN: usize = 16;
/// Binds sealed values to this use, so a value sealed by another tool under the same key
/// does not open here.
const AAD: &[u8] = b"mpanel sealed v1";

/// `CREDENTIALS_KEY`: 32 bytes, wiped from memory when dropped; `Debug` prints a mask.
#[derive(Clone)]
pub struct CredentialsKey(Zeroizing<[u8; KEY_LEN]>);

impl CredentialsKey {
    /// 64 hex characters. The error names the rule, never the value.
    pub fn parse_hex(raw: &str) -> Result<CredentialsKey, String> {
        let raw = raw.trim();
        if raw.len() != KEY_LEN * 2 {
            return Err(format!(
                "must be {} hex characters (32 bytes; e.g. openssl rand -hex 32), got {}",
                KEY_LEN * 2,
                raw.len()
            ));
        }
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        hex::decode_to_slice(raw, &mut key[..])
            .map_err(|_| "must be hex (0-9, a-f); e.g. openssl rand -hex 32".to_owned())?;
        Ok(CredentialsKey(key))
    }

    /// A fresh random key (development without `CREDENTIALS_KEY`, tests).
    pub fn random() -> CredentialsKey {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        rand::fill(&mut key[..]);
        CredentialsKey(key)
    }

    /// A key nobody generated at random: few distinct bytes (`00…`, `deadbeef…`) or a short
    /// repeated pattern. A random key has about 30 distinct bytes; this refuses fewer than 16
    /// and any period up to 16 bytes.
    pub fn is_weak(&self) -> bool {
        let key = &self.0[..];
        let mut seen = [false; 256];
        for &b in key {
            seen[usize::from(b)] = true;
        }
        let distinct = seen.iter().filter(|s| **s).count();
        let periodic = (1..=KEY_LEN / 2).any(|p| key.iter().zip(&key[p..]).all(|(a, b)| a == b));
        distinct < 16 || periodic
    }
}

impl fmt::Debug for CredentialsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CredentialsKey(***)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("sealed value is too short to be one")]
    TooShort,
    /// Altered, or sealed under another key (CREDENTIALS_KEY changed).
    #[error("sealed value does not open with this key (altered, or CREDENTIALS_KEY changed)")]
    Rejected,
}

/// Seals and opens values under one key. Shared through `AppState`.
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl Sealer {
    pub fn new(key: &CredentialsKey) -> Sealer {
        Sealer {
            cipher: XChaCha20Poly1305::new_from_slice(&key.0[..])
                .expect("a 32-byte key is the cipher's key size"),
        }
    }

    /// The configured key; without one (development only: production refuses to start),
    /// a random key for this process, with a warning that pending credentials and queued
    /// e-mails sealed by this process do not survive its restart.
    pub fn from_config(key: Option<&CredentialsKey>) -> Sealer {
        match key {
            Some(key) => Sealer::new(key),
            None => {
                tracing::warn!(
                    "CREDENTIALS_KEY is not set: using a random key for this process only; \
                     pending credentials and queued e-mails will not open after a restart \
                     or in another process"
                );
                Sealer::new(&CredentialsKey::random())
            }
        }
    }

    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce[..]);
        let nonce = XNonce::from(nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: AAD,
                },
            )
            .expect("XChaCha20-Poly1305 seals any message that fits in memory");
        let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    pub fn open(&self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(OpenError::TooShort);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| OpenError::TooShort)?;
        self.cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad: AAD,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| OpenError::Rejected)
    }
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealer { key: *** }")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_HEX: &str = "3f1c9a7be2d45068a1f4c3b2e9d8076f5a4b3c2d1e0f98a7b6c5d4e3f2a1b0c9";

    fn sealer() -> Sealer {
        Sealer::new(&CredentialsKey::parse_hex(KEY_HEX).unwrap())
    }

    #[test]
    fn round_trip_with_a_fresh_nonce_each_time() {
        let s = sealer();
        let a = s.seal(b"correct horse battery staple");
        let b = s.seal(b"correct horse battery staple");
        assert_ne!(
            a, b,
            "same plaintext, different nonce, different sealed value"
        );
        assert_eq!(a.len(), NONCE_LEN + 28 + TAG_LEN);
        assert!(
            !a.windows(5).any(|w| w == b"horse"),
            "the plaintext is not in the sealed value"
        );
        assert_eq!(&s.open(&a).unwrap()[..], b"correct horse battery staple");
        assert_eq!(&s.open(&s.seal(b"")).unwrap()[..], b"");
    }

    #[test]
    fn any_altered_byte_is_refused() {
        let s = sealer();
        let sealed = s.seal(b"mailbox password");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert_eq!(s.open(&bad), Err(OpenError::Rejected), "byte {i}");
        }
        assert_eq!(
            s.open(&sealed[..sealed.len() - 1]),
            Err(OpenError::Rejected)
        );
        assert_eq!(s.open(&sealed[..NONCE_LEN + 3]), Err(OpenError::TooShort));
        assert_eq!(s.open(b""), Err(OpenError::TooShort));
    }

    #[test]
    fn another_key_cannot_open() {
        let sealed = sealer().seal(b"mailbox password");
        let other = Sealer::new(&CredentialsKey::random());
        assert_eq!(other.open(&sealed), Err(OpenError::Rejected));
    }

    #[test]
    fn key_parsing_and_weak_keys() {
        assert!(CredentialsKey::parse_hex(KEY_HEX).is_ok());
        assert!(CredentialsKey::parse_hex(&KEY_HEX.to_uppercase()).is_ok());
        let short = CredentialsKey::parse_hex(&KEY_HEX[..62]).unwrap_err();
        assert!(short.contains("64 hex characters"), "{short}");
        let not_hex = CredentialsKey::parse_hex(&format!("{}zz", &KEY_HEX[..62])).unwrap_err();
        assert!(not_hex.contains("hex"), "{not_hex}");
        assert!(!not_hex.contains(&KEY_HEX[..62]), "the value is not echoed");

        assert!(!CredentialsKey::parse_hex(KEY_HEX).unwrap().is_weak());
        for weak in [
            "0".repeat(64),
            "ab".repeat(32),
            "deadbeef".repeat(8),
            "000102030405060708090a0b0c0d0e0f".repeat(2),
        ] {
            assert!(
                CredentialsKey::parse_hex(&weak).unwrap().is_weak(),
                "{weak} is weak"
            );
        }
        // Random keys are (all but certainly) not weak.
        for _ in 0..100 {
            assert!(!CredentialsKey::random().is_weak());
        }
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = CredentialsKey::parse_hex(KEY_HEX).unwrap();
        let shown = format!("{key:?} {:?}", Sealer::new(&key));
        assert!(!shown.contains("3f1c"), "{shown}");
        assert!(!shown.to_lowercase().contains("63"), "{shown}");
    }
}
