//! `mpanel-agent enroll`: generate a key here, send a CSR with the one-time token, check the
//! answer, store it.
//!
//! Trust comes from the token, not from the network: the token ends with the SHA-256 of the
//! panel CA's certificate, and the answer is accepted only if its CA matches that pin (in
//! constant time), its certificate is signed by that CA, is for the key generated here, and
//! names the agent id it came with. Anything else stores nothing and fails. The private key
//! never leaves this process except into `agent.key` (0600).

use std::time::Duration;

use anyhow::{Context, bail};
use mpanel_protocol::{
    identity,
    messages::{EnrollRequest, EnrollResponse, EnrollmentToken, Hostname, Label, Text},
};
use rcgen::{CertificateParams, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use url::Url;
use uuid::Uuid;
use x509_parser::certificate::X509Certificate;

use crate::{
    VERSION,
    cli::EnrollArgs,
    state::{Credentials, EnrollmentRecord, StateDir},
};

/// The most of the panel's answer we read: a real one is a few kilobytes.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

pub async fn run(args: EnrollArgs) -> anyhow::Result<()> {
    let state = StateDir::new(&args.state_dir);
    // Checked before contacting the panel, so a mistaken re-run does not burn the token.
    if state.has_credentials() && !args.force {
        let who = match state.enrollment() {
            Ok(Some(r)) => format!(" (agent {}, server {})", r.agent_id, r.server_id),
            _ => String::new(),
        };
        bail!(
            "{} already holds an enrollment{who}; pass --force to replace it",
            state.root().display()
        );
    }
    let hostname = match args.hostname {
        Some(h) => h,
        None => system_hostname()?,
    };

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("generate the agent key")?;
    let request = EnrollRequest {
        token: args.token.expose().to_owned(),
        csr_pem: Text::parse(csr_pem(&key, &hostname)?)
            .map_err(|e| anyhow::anyhow!("certificate request: {e}"))?,
        hostname: hostname.clone(),
        version: Label::parse(VERSION).map_err(|e| anyhow::anyhow!("agent version: {e}"))?,
    };
    tracing::info!(panel = %args.panel, hostname = %hostname, "enrolling with the panel");
    let response = post_enrollment(&args.panel, &request).await?;
    let verified = verify(&args.token, &key, &response)?;

    let record = EnrollmentRecord {
        agent_id: response.agent_id,
        server_id: response.server_id,
        hub_url: response.hub_url.clone(),
        serial: response.serial.clone(),
        not_after: response.not_after,
    };
    state.store(&Credentials {
        key_pem: &key.serialize_pem(),
        cert_pem: &verified.cert_pem,
        ca_pem: &verified.ca_pem,
        record: &record,
    })?;
    tracing::info!(
        agent_id = %record.agent_id,
        server_id = %record.server_id,
        serial = %record.serial,
        not_after = %record.not_after,
        state_dir = %state.root().display(),
        "enrolled"
    );
    Ok(())
}

/// The kernel's host name.
pub(crate) fn system_hostname() -> anyhow::Result<Hostname> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("read the host name (pass --hostname)")?;
    Hostname::parse(raw.trim()).map_err(|e| anyhow::anyhow!("host name: {e}; pass --hostname"))
}

/// A PKCS#10 request for `key`. The panel ignores the subject (it names the agent itself);
/// the host name is there for whoever inspects the request.
pub fn csr_pem(key: &KeyPair, hostname: &Hostname) -> anyhow::Result<String> {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, hostname.as_str());
    params
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .context("build the certificate request")
}

/// `<panel>/api/agents/enroll`, also for a panel under a path (`https://host/mpanel`).
pub fn enroll_url(panel: &Url) -> anyhow::Result<Url> {
    let mut base = panel.clone();
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    base.set_query(None);
    base.set_fragment(None);
    Ok(base.join("api/agents/enroll")?)
}

async fn post_enrollment(panel: &Url, request: &EnrollRequest) -> anyhow::Result<EnrollResponse> {
    // reqwest is built without a default crypto provider: use ring, like the rest of mPanel.
    // An error only means a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .user_agent(format!("mpanel-agent/{VERSION}"))
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        // A redirect would re-send the token to wherever it points.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("build the HTTP client")?;
    let url = enroll_url(panel)?;
    let response = client
        .post(url.clone())
        .json(request)
        .send()
        .await
        .with_context(|| format!("cannot reach the panel at {url}"))?;
    let status = response.status();
    let body = read_limited(response).await?;
    if status != reqwest::StatusCode::CREATED {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "no error message".to_owned());
        bail!(
            "the panel refused the enrollment ({status}): {}",
            message.chars().take(300).collect::<String>()
        );
    }
    serde_json::from_slice(&body).context("the panel's answer is not an enrollment response")
}

async fn read_limited(mut response: reqwest::Response) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.context("read the panel's answer")? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            bail!("the panel's answer is larger than {MAX_RESPONSE_BYTES} bytes");
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The CA and certificate of an answer that passed every check, as single, re-encoded PEM
/// blocks (so nothing the answer appended can ride along into `ca.crt`).
#[derive(Debug)]
pub struct Verified {
    pub ca_pem: String,
    pub cert_pem: String,
}

/// Checks an enrollment answer against the token's pin and the key generated here.
pub fn verify(
    token: &EnrollmentToken,
    key: &KeyPair,
    response: &EnrollResponse,
) -> anyhow::Result<Verified> {
    let ca_der = single_certificate(&response.ca_pem).context("the CA in the panel's answer")?;
    let fingerprint = hex::encode(Sha256::digest(&ca_der));
    let pinned = token.ca_fingerprint();
    if !bool::from(fingerprint.as_bytes().ct_eq(pinned.as_bytes())) {
        bail!(
            "the panel answered with a CA whose SHA-256 fingerprint is {fingerprint}, but the \
             token pins {pinned}: this is not the panel that issued the token (or the token was \
             altered). Nothing was stored."
        );
    }
    let cert_der = single_certificate(&response.certificate_pem)
        .context("the certificate in the panel's answer")?;
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der)
        .map_err(|e| anyhow::anyhow!("the pinned CA certificate does not parse: {e}"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&cert_der)
        .map_err(|e| anyhow::anyhow!("the issued certificate does not parse: {e}"))?;
    if !ca.is_ca() {
        bail!("the pinned certificate is not a CA");
    }
    cert.verify_signature(Some(ca.public_key()))
        .map_err(|_| anyhow::anyhow!("the issued certificate is not signed by the pinned CA"))?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        bail!("the issued certificate is not for the key generated here");
    }
    let named = certificate_agent_id(&cert);
    if named != Some(response.agent_id) {
        bail!(
            "the issued certificate does not name agent {} (it names {named:?})",
            response.agent_id
        );
    }
    let hub = Url::parse(&response.hub_url).context("the hub URL in the panel's answer")?;
    if !matches!(hub.scheme(), "wss" | "https") {
        bail!("the hub URL {hub} is not a wss:// URL");
    }
    Ok(Verified {
        ca_pem: certificate_pem(ca_der),
        cert_pem: certificate_pem(cert_der),
    })
}

/// One `CERTIFICATE` block with Unix line endings, as the panel writes it.
pub(crate) fn certificate_pem(der: Vec<u8>) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der), config)
}

/// The DER of the one `CERTIFICATE` block in `text`; more blocks, or another kind, is an error.
pub(crate) fn single_certificate(text: &str) -> anyhow::Result<Vec<u8>> {
    let blocks = pem::parse_many(text).context("not PEM")?;
    match blocks.as_slice() {
        [one] if one.tag() == "CERTIFICATE" => Ok(one.contents().to_vec()),
        [one] => bail!("a PEM '{}' block is not a certificate", one.tag()),
        [] => bail!("no certificate"),
        more => bail!(
            "{} PEM blocks where one certificate was expected",
            more.len()
        ),
    }
}

/// The agent id a certificate names: its CN and its `urn:mpanel:agent:` URI SAN, which must
/// agree ([`identity::agent_id_from_names`], the rule the panel's hub applies too).
pub fn certificate_agent_id(cert: &X509Certificate<'_>) -> Option<Uuid> {
    identity::agent_id_of(cert)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyUsagePurpose, SanType,
    };

    struct Ca {
        key: KeyPair,
        params: CertificateParams,
        pem: String,
        fingerprint: String,
    }

    fn ca() -> Ca {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let cert = params.self_signed(&key).unwrap();
        Ca {
            fingerprint: hex::encode(Sha256::digest(cert.der())),
            pem: cert.pem(),
            key,
            params,
        }
    }

    fn issue(ca: &Ca, subject_key: &KeyPair, agent: Uuid, san_agent: Uuid) -> String {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, agent.to_string());
        params.subject_alt_names = vec![SanType::URI(
            identity::agent_uri(san_agent).try_into().unwrap(),
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let issuer = Issuer::from_params(&ca.params, &ca.key);
        params.signed_by(subject_key, &issuer).unwrap().pem()
    }

    fn token_for(fingerprint: &str) -> EnrollmentToken {
        EnrollmentToken::new(&"ab".repeat(32), fingerprint).unwrap()
    }

    fn response(ca_pem: &str, cert_pem: &str, agent: Uuid) -> EnrollResponse {
        EnrollResponse {
            agent_id: agent,
            server_id: Uuid::new_v4(),
            certificate_pem: cert_pem.to_owned(),
            ca_pem: ca_pem.to_owned(),
            ca_fingerprint: String::new(),
            serial: "00".into(),
            not_after: chrono::Utc::now(),
            hub_url: "wss://127.0.0.1:2272".into(),
        }
    }

    #[test]
    fn accepts_an_answer_that_matches_the_pin_the_key_and_the_id() {
        let ca = ca();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let agent = Uuid::new_v4();
        let cert = issue(&ca, &key, agent, agent);
        let verified = verify(
            &token_for(&ca.fingerprint),
            &key,
            &response(&ca.pem, &cert, agent),
        )
        .unwrap();
        assert_eq!(
            single_certificate(&verified.ca_pem).unwrap(),
            single_certificate(&ca.pem).unwrap()
        );
    }

    #[test]
    fn refuses_another_ca_another_key_another_id_and_extra_blocks() {
        let ca = ca();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let agent = Uuid::new_v4();
        let good_cert = issue(&ca, &key, agent, agent);
        let token = token_for(&ca.fingerprint);

        // A CA that is not the pinned one, even one that signed a valid-looking certificate.
        let other = self::ca();
        let other_cert = issue(&other, &key, agent, agent);
        let err = verify(&token, &key, &response(&other.pem, &other_cert, agent)).unwrap_err();
        assert!(err.to_string().contains("not the panel"), "{err}");

        // The pinned CA, but a certificate signed by another.
        let err = verify(&token, &key, &response(&ca.pem, &other_cert, agent)).unwrap_err();
        assert!(err.to_string().contains("not signed"), "{err}");

        // A certificate for someone else's key.
        let stranger = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let err = verify(
            &token,
            &key,
            &response(&ca.pem, &issue(&ca, &stranger, agent, agent), agent),
        )
        .unwrap_err();
        assert!(err.to_string().contains("not for the key"), "{err}");

        // CN and SAN that disagree, or another agent id than the answer's.
        let err = verify(
            &token,
            &key,
            &response(&ca.pem, &issue(&ca, &key, agent, Uuid::new_v4()), agent),
        )
        .unwrap_err();
        assert!(err.to_string().contains("does not name"), "{err}");
        let err = verify(&token, &key, &response(&ca.pem, &good_cert, Uuid::new_v4())).unwrap_err();
        assert!(err.to_string().contains("does not name"), "{err}");

        // A second CA appended after the pinned one.
        let two = format!("{}{}", ca.pem, other.pem);
        assert!(verify(&token, &key, &response(&two, &good_cert, agent)).is_err());
    }

    #[test]
    fn enroll_url_keeps_a_base_path() {
        let u = |s: &str| enroll_url(&Url::parse(s).unwrap()).unwrap().to_string();
        assert_eq!(
            u("https://panel.example.com"),
            "https://panel.example.com/api/agents/enroll"
        );
        assert_eq!(
            u("https://example.com/mpanel"),
            "https://example.com/mpanel/api/agents/enroll"
        );
        assert_eq!(
            u("http://127.0.0.1:8080/?x=1"),
            "http://127.0.0.1:8080/api/agents/enroll"
        );
    }
}
