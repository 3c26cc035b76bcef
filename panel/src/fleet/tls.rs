//! The hub's TLS: a rustls server configuration (ring) that requires a client certificate
//! chaining to the fleet CA and refuses revoked ones at the handshake, and the agent identity
//! read from a verified certificate.
//!
//! Invariants:
//! - Only the fleet CA is a trust anchor; a client without a certificate, or with one from
//!   any other CA, never completes the handshake.
//! - A serial in [`RevokedSerials`] is refused by the verifier. The set is a cache of
//!   `agent_certificates.revoked_at`: filled at start, refreshed periodically and at once
//!   when this panel revokes. The hub checks the database again after the handshake, so a
//!   stale cache (another replica revoked) costs one handshake, never an accepted agent.
//! - No TLS session resumption: a resumed session would skip the certificate check.
//! - An identity exists only when CN and the `urn:mpanel:agent:` SAN agree (the rule of
//!   [`mpanel_protocol::identity`], which the agent applies too).

use std::{
    collections::HashSet,
    sync::{Arc, RwLock},
};

use anyhow::Context;
use mpanel_protocol::identity;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime},
    server::{
        NoServerSessionStorage, WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use sqlx::PgPool;
use uuid::Uuid;

use super::ca::{CertificateAuthority, HubIdentity};

/// Hex serials of revoked, not yet expired agent certificates.
#[derive(Debug, Default)]
pub struct RevokedSerials(RwLock<HashSet<String>>);

impl RevokedSerials {
    pub fn contains(&self, serial_hex: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(serial_hex)
    }

    pub fn insert_all(&self, serials: impl IntoIterator<Item = String>) {
        let mut set = self.0.write().unwrap_or_else(|e| e.into_inner());
        set.extend(serials);
    }

    pub fn len(&self) -> usize {
        self.0.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces the set with the database's view (expired certificates drop out: the
    /// verifier refuses them anyway).
    pub async fn reload(&self, db: &PgPool) -> anyhow::Result<usize> {
        let serials: Vec<String> = sqlx::query_scalar(
            "SELECT serial FROM agent_certificates
              WHERE revoked_at IS NOT NULL AND not_after > now()",
        )
        .fetch_all(db)
        .await
        .context("load revoked agent certificates")?;
        let n = serials.len();
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = serials.into_iter().collect();
        Ok(n)
    }
}

/// [`WebPkiClientVerifier`] against the fleet CA, plus the revocation check.
#[derive(Debug)]
struct RevocationAwareVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Arc<RevokedSerials>,
}

impl ClientCertVerifier for RevocationAwareVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let serial = serial_hex(end_entity).ok_or(rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadEncoding,
        ))?;
        if self.revoked.contains(&serial) {
            tracing::warn!(serial = %serial, "refused a revoked agent certificate");
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The hub's server configuration: its own certificate signed by the CA for `names`,
/// client certificates required and checked against the CA and `revoked`.
pub fn server_config(
    ca: &CertificateAuthority,
    names: &[String],
    revoked: Arc<RevokedSerials>,
) -> anyhow::Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    let (_, ca_pem) = x509_parser::pem::parse_x509_pem(ca.ca_pem().as_bytes())
        .map_err(|_| anyhow::anyhow!("the CA certificate is not PEM"))?;
    roots
        .add(CertificateDer::from(ca_pem.contents))
        .context("use the fleet CA as trust anchor")?;
    let inner = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        CryptoProvider::clone(&provider).into(),
    )
    .build()
    .context("build the client certificate verifier")?;
    let verifier = Arc::new(RevocationAwareVerifier { inner, revoked });

    // A year; a restart signs a new one (the key never touches the disk).
    let HubIdentity { cert_der, key_der } =
        ca.sign_hub_identity(names, std::time::Duration::from_secs(365 * 86_400))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(cert_der)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der)),
        )
        .context("the hub certificate")?;
    // No resumption: every connection shows (and has checked) its certificate, and no
    // session cache grows with the fleet.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Who is on the other end of a verified connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub agent_id: Uuid,
    pub serial_hex: String,
    pub not_after: chrono::DateTime<chrono::Utc>,
}

/// Lowercase hex of the certificate's serial, as `agent_certificates.serial` holds it.
pub fn serial_hex(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(hex::encode(cert.raw_serial()))
}

/// The agent a (verified) certificate names: CN and URI SAN must agree
/// ([`identity::agent_id_from_names`]).
pub fn peer_identity(der: &CertificateDer<'_>) -> Option<PeerIdentity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let agent_id = identity::agent_id_of(&cert)?;
    Some(PeerIdentity {
        agent_id,
        serial_hex: hex::encode(cert.raw_serial()),
        not_after: chrono::DateTime::from_timestamp(cert.validity().not_after.timestamp(), 0)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_identity_the_ca_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(
            &dir.path().join("ca.crt"),
            &dir.path().join("ca.key"),
        )
        .unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let agent = Uuid::new_v4();
        let signed = ca
            .sign_agent_csr(
                &csr,
                agent,
                Uuid::new_v4(),
                super::super::ca::AGENT_CERT_VALIDITY,
            )
            .unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(signed.pem.as_bytes()).unwrap();
        let der = CertificateDer::from(pem.contents);
        let id = peer_identity(&der).unwrap();
        assert_eq!(id.agent_id, agent);
        assert_eq!(id.serial_hex, signed.serial_hex);

        let revoked = Arc::new(RevokedSerials::default());
        server_config(
            &ca,
            &["127.0.0.1".into(), "localhost".into()],
            revoked.clone(),
        )
        .unwrap();
        revoked.insert_all([signed.serial_hex.clone()]);
        assert!(revoked.contains(&signed.serial_hex));
    }
}
