//! Certificate renewal over the live connection: when less than `renew_before` (default a
//! third of its life) is left on the certificate, a new key and CSR go to the hub; the
//! answer is checked like an enrollment (our CA, our key, our agent id) and replaces
//! `agent.key`/`agent.crt` for the next connection.

use std::time::Duration;

use anyhow::{Context, bail};
use chrono::Utc;
use mpanel_protocol::messages::{AgentMessage, Text};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};

use super::{
    Agent, read,
    transport::{Ws, send},
};
use crate::{
    enroll,
    state::{EnrollmentRecord, write_atomic},
};

/// At the start of a connection: when renewal is due, sends a CSR for a new key and returns
/// that key, to be installed with the certificate the hub answers.
pub(super) async fn request_if_due(
    agent: &Agent,
    ws: &mut Ws,
    write_limit: Duration,
) -> anyhow::Result<Option<KeyPair>> {
    let key = match renewal_due(agent) {
        Ok(Some(reason)) => {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
                .context("generate a key for renewal")?;
            let csr = enroll::csr_pem(&key, &agent.hostname)?;
            let csr_pem = Text::parse(csr).map_err(|e| anyhow::anyhow!("CSR: {e}"))?;
            tracing::info!(reason, "asking the hub to renew our certificate");
            send(ws, &AgentMessage::RenewCertificate { csr_pem }, write_limit).await?;
            Some(key)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(
                error = format!("{e:#}"),
                "cannot tell when our certificate expires"
            );
            None
        }
    };
    Ok(key)
}

/// The hub's answer to our CSR: installed when we asked for it, otherwise ignored.
pub(super) fn on_renewed(agent: &Agent, pending_key: Option<KeyPair>, certificate_pem: &str) {
    match pending_key {
        Some(key) => match install_certificate(agent, &key, certificate_pem) {
            Ok(serial) => tracing::info!(
                serial = %serial,
                "certificate renewed; used from the next connection"
            ),
            Err(e) => tracing::warn!(error = format!("{e:#}"), "refused the renewed certificate"),
        },
        None => tracing::warn!("ignored a certificate we did not ask for"),
    }
}

/// `Some(reason)` when the certificate should be renewed now.
fn renewal_due(agent: &Agent) -> anyhow::Result<Option<&'static str>> {
    let der = enroll::single_certificate(&read(&agent.config.cert_file)?)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow::anyhow!("our certificate does not parse: {e}"))?;
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    let before = match agent.config.renew_before {
        Some(d) => d.as_secs() as i64,
        None => (not_after - not_before) / 3,
    };
    Ok((Utc::now().timestamp() + before >= not_after).then_some("expiry near"))
}

/// Checks a renewed certificate like an enrollment answer and stores it with its key.
fn install_certificate(agent: &Agent, key: &KeyPair, pem_text: &str) -> anyhow::Result<String> {
    let cert_der = enroll::single_certificate(pem_text)?;
    let ca_der = enroll::single_certificate(&read(&agent.config.ca_file)?)?;
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der)
        .map_err(|e| anyhow::anyhow!("ca.crt does not parse: {e}"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&cert_der)
        .map_err(|e| anyhow::anyhow!("the renewed certificate does not parse: {e}"))?;
    cert.verify_signature(Some(ca.public_key()))
        .map_err(|_| anyhow::anyhow!("the renewed certificate is not signed by our CA"))?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        bail!("the renewed certificate is not for our new key");
    }
    let mut record: EnrollmentRecord = agent
        .state
        .enrollment()?
        .context("enrollment.json disappeared")?;
    if enroll::certificate_agent_id(&cert) != Some(record.agent_id) {
        bail!("the renewed certificate names another agent");
    }
    record.serial = hex::encode(cert.raw_serial());
    record.not_after = chrono::DateTime::from_timestamp(cert.validity().not_after.timestamp(), 0)
        .context("certificate expiry")?;
    // Key first, then certificate: a crash between the two leaves a pair that does not
    // match, which the next start reports plainly (re-enroll); the window is two renames.
    write_atomic(
        &agent.config.key_file,
        key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_atomic(
        &agent.config.cert_file,
        enroll::certificate_pem(cert_der).as_bytes(),
        0o644,
    )?;
    let mut json = serde_json::to_vec_pretty(&record)?;
    json.push(b'\n');
    write_atomic(
        &agent.state.path(crate::state::ENROLLMENT_FILE),
        &json,
        0o644,
    )?;
    Ok(record.serial)
}
