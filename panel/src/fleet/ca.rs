//! The panel's certificate authority: an ECDSA P-256 key and a self-signed CA certificate,
//! created on first use, that signs the agents' client certificates.
//!
//! Invariants:
//! - The key file is created with mode 0600 (never wider, not even for an instant) in a
//!   directory created 0700, and a key file readable by others is refused at load.
//! - Key and certificate appear together: both are written to temporary files first and
//!   published with `link` (which fails if another process got there first) and `rename`,
//!   so a crash or a concurrent start never leaves a half-written key in place.
//! - An agent certificate says only what the panel decided: the CSR contributes its public
//!   key and nothing else (its subject and extensions are ignored), so an agent's identity
//!   (CN and the `urn:mpanel:agent:<uuid>` SAN) comes from the CA alone.
//! - The key never leaves this module: no accessor returns it, `Debug` omits it.

use std::{
    fs::{self, DirBuilder, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
pub use mpanel_protocol::identity::{agent_uri, server_uri};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The CA certificate's subject.
pub const CA_COMMON_NAME: &str = "mPanel fleet CA";
/// How long a new CA certificate is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// How long an agent certificate is valid; agents renew well before the end.
pub const AGENT_CERT_VALIDITY: Duration = Duration::from_secs(30 * 86_400);
/// Certificates start this long in the past, so an agent whose clock is a little behind
/// can use its certificate at once.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// Lowercase hex SHA-256 of a certificate's DER, the fingerprint used everywhere in mPanel.
pub fn fingerprint_sha256(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    fingerprint: String,
    not_after: DateTime<Utc>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("fingerprint", &self.fingerprint)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A certificate the CA signed for an agent.
#[derive(Debug, Clone)]
pub struct SignedCert {
    pub pem: String,
    /// The serial number in lowercase hex (32 digits).
    pub serial_hex: String,
    pub fingerprint_sha256: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

/// Why a CSR was refused; the text is fit for a 400 answer.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("not a PEM-encoded PKCS#10 certificate signing request")]
    Unparseable,
    #[error("the request's signature does not verify")]
    BadSignature,
    #[error("the key must be ECDSA P-256")]
    UnsupportedKey,
    #[error("the request carries an extension the panel does not accept")]
    UnsupportedExtension,
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// A CSR whose signature verified and whose key is P-256: proof that the requester holds the
/// private key of `public_key`.
pub struct AgentCsr {
    public_key: rcgen::PublicKey,
}

impl AgentCsr {
    pub fn parse(csr_pem: &str) -> Result<AgentCsr, CsrError> {
        // from_pem verifies the signature with the key the request carries.
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| match e {
            rcgen::Error::InvalidCertificationRequestSignature => CsrError::BadSignature,
            rcgen::Error::UnsupportedSignatureAlgorithm => CsrError::UnsupportedKey,
            rcgen::Error::UnsupportedExtension | rcgen::Error::UnsupportedInCsr => {
                CsrError::UnsupportedExtension
            }
            _ => CsrError::Unparseable,
        })?;
        let key = csr.public_key;
        // The algorithm is read from the signature; an uncompressed P-256 point is 65 bytes
        // starting with 4, which rules out other curves signed "with SHA-256".
        let raw = key.der_bytes();
        if key.algorithm() != &PKCS_ECDSA_P256_SHA256 || raw.len() != 65 || raw[0] != 4 {
            return Err(CsrError::UnsupportedKey);
        }
        Ok(AgentCsr { public_key: key })
    }
}

/// Serialises creation within this process; across processes the `link` publication does.
static CREATE_LOCK: Mutex<()> = Mutex::new(());

impl CertificateAuthority {
    /// Loads the CA from its two files, or creates both when neither exists. Blocking (file
    /// I/O, key generation): call it from `spawn_blocking` inside async code.
    pub fn load_or_create(cert_path: &Path, key_path: &Path) -> anyhow::Result<Self> {
        let _guard = CREATE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        if !key_path.exists() && !cert_path.exists() {
            match create(cert_path, key_path) {
                Ok(()) => tracing::info!(
                    cert = %cert_path.display(),
                    key = %key_path.display(),
                    "created the fleet certificate authority"
                ),
                Err(e) => return Err(e),
            }
        }
        // Another process may have published the key and not yet the certificate.
        for _ in 0..20 {
            if !key_path.exists() || cert_path.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        load(cert_path, key_path)
    }

    /// The CA certificate in PEM, as agents store it to verify the hub.
    pub fn ca_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Lowercase hex SHA-256 of the CA certificate's DER; enrollment tokens pin it.
    pub fn fingerprint_sha256(&self) -> &str {
        &self.fingerprint
    }

    pub fn not_after(&self) -> DateTime<Utc> {
        self.not_after
    }

    /// Signs a client certificate for `agent_id` with the key of `csr_pem`.
    pub fn sign_agent_csr(
        &self,
        csr_pem: &str,
        agent_id: Uuid,
        server_id: Uuid,
        validity: Duration,
    ) -> Result<SignedCert, SignError> {
        let csr = AgentCsr::parse(csr_pem)?;
        Ok(self.sign_agent(&csr, agent_id, server_id, validity)?)
    }

    /// Signs a client certificate for `agent_id` with an already checked CSR's key.
    pub fn sign_agent(
        &self,
        csr: &AgentCsr,
        agent_id: Uuid,
        server_id: Uuid,
        validity: Duration,
    ) -> anyhow::Result<SignedCert> {
        let now = Utc::now();
        let not_before = now - BACKDATE;
        let not_after = (now + validity).min(self.not_after);
        let serial = random_serial();

        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, agent_id.to_string());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![
            SanType::URI(agent_uri(agent_id).try_into()?),
            SanType::URI(server_uri(server_id).try_into()?),
        ];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.not_before = to_time(not_before)?;
        params.not_after = to_time(not_after)?;

        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .context("sign the agent certificate")?;
        Ok(SignedCert {
            pem: cert.pem(),
            serial_hex: hex::encode(serial),
            fingerprint_sha256: fingerprint_sha256(cert.der()),
            not_before: trunc_secs(not_before),
            not_after: trunc_secs(not_after),
        })
    }
}

/// The hub's TLS identity: a certificate signed by the CA and its key, both DER. The key
/// lives in memory only; every start of the panel makes a new one.
pub struct HubIdentity {
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

impl std::fmt::Debug for HubIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubIdentity").finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Signs a server certificate for the fleet hub, valid for `names` (DNS names or IP
    /// addresses: what agents dial). Agents trust only this CA, so this is the certificate
    /// they check the hub against.
    pub fn sign_hub_identity(
        &self,
        names: &[String],
        validity: Duration,
    ) -> anyhow::Result<HubIdentity> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("generate the hub key")?;
        let now = Utc::now();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "mPanel fleet hub");
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()
            .context("hub certificate names")?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
        params.not_before = to_time(now - BACKDATE)?;
        params.not_after = to_time((now + validity).min(self.not_after))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("sign the hub certificate")?;
        Ok(HubIdentity {
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        })
    }
}

/// 16 random bytes, top bit clear (a positive DER INTEGER) and the next one set (no leading
/// zero byte to strip), so the hex form is always the 32 digits the certificate holds.
fn random_serial() -> [u8; 16] {
    let mut serial = [0u8; 16];
    rand::fill(&mut serial[..]);
    serial[0] = (serial[0] & 0x7f) | 0x40;
    serial
}

fn to_time(t: DateTime<Utc>) -> anyhow::Result<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(t.timestamp()).context("certificate time")
}

/// Certificates hold whole seconds.
fn trunc_secs(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

fn create(cert_path: &Path, key_path: &Path) -> anyhow::Result<()> {
    for path in [cert_path, key_path] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("create the CA directory {}", dir.display()))?;
        }
    }

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("generate the CA key")?;
    let now = Utc::now();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, "mPanel");
    params.distinguished_name = dn;
    // Path length 0: this CA signs agents only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    params.not_before = to_time(now - BACKDATE)?;
    params.not_after = to_time(now + CA_VALIDITY)?;
    let cert = params
        .self_signed(&key)
        .context("self-sign the CA certificate")?;

    let key_tmp = temp_path(key_path);
    let cert_tmp = temp_path(cert_path);
    let result = (|| {
        write_new(&key_tmp, key.serialize_pem().as_bytes(), 0o600)?;
        write_new(&cert_tmp, cert.pem().as_bytes(), 0o644)?;
        // `link` refuses to replace an existing file: if another process published its key
        // first, ours is dropped and theirs is loaded.
        match fs::hard_link(&key_tmp, key_path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("publish the CA key at {}", key_path.display())));
            }
        }
        fs::rename(&cert_tmp, cert_path)
            .with_context(|| format!("publish the CA certificate at {}", cert_path.display()))?;
        for path in [cert_path, key_path] {
            sync_parent(path)?;
        }
        Ok(())
    })();
    let _ = fs::remove_file(&key_tmp);
    let _ = fs::remove_file(&cert_tmp);
    result
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        crate::util::random_token(4)
    ));
    path.with_file_name(name)
}

/// Creates `path` (which must not exist) with `mode` from the first instant, writes and syncs.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    // The umask may have narrowed the mode; set exactly what was asked.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .with_context(|| format!("set the mode of {}", path.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("write {}", path.display()))
}

fn sync_parent(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("sync {}", dir.display()))?;
    }
    Ok(())
}

fn load(cert_path: &Path, key_path: &Path) -> anyhow::Result<CertificateAuthority> {
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {}
        (false, true) => bail!(
            "the CA key {} exists but its certificate {} does not; restore the certificate, \
             or remove the key to create a new CA (every enrolled agent must then re-enroll)",
            key_path.display(),
            cert_path.display()
        ),
        (true, false) => bail!(
            "the CA certificate {} exists but its key {} does not; restore the key, or remove \
             the certificate to create a new CA (every enrolled agent must then re-enroll)",
            cert_path.display(),
            key_path.display()
        ),
        (false, false) => bail!(
            "the CA files {} and {} do not exist",
            cert_path.display(),
            key_path.display()
        ),
    }

    let mode = fs::metadata(key_path)
        .with_context(|| format!("inspect the CA key {}", key_path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "the CA key {} is readable by other users (mode {:o}); run chmod 600 on it",
            key_path.display(),
            mode & 0o777
        );
    }
    let key_pem = fs::read_to_string(key_path)
        .with_context(|| format!("read the CA key {}", key_path.display()))?;
    // Not `?` on the parse error text: keep key material out of messages entirely.
    let key = KeyPair::from_pem(&key_pem).map_err(|_| {
        anyhow::anyhow!("the CA key {} is not a PEM private key", key_path.display())
    })?;
    if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
        bail!(
            "the CA key {} is not an ECDSA P-256 key",
            key_path.display()
        );
    }

    let cert_pem = fs::read_to_string(cert_path)
        .with_context(|| format!("read the CA certificate {}", cert_path.display()))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|_| anyhow::anyhow!("{} is not a PEM certificate", cert_path.display()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents)
        .map_err(|e| anyhow::anyhow!("{} is not a valid certificate: {e}", cert_path.display()))?;
    if !cert.is_ca() {
        bail!("{} is not a CA certificate", cert_path.display());
    }
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        bail!(
            "the CA key {} does not belong to the certificate {}",
            key_path.display(),
            cert_path.display()
        );
    }
    let not_after = DateTime::from_timestamp(cert.validity().not_after.timestamp(), 0)
        .context("CA certificate expiry")?;
    if not_after <= Utc::now() {
        bail!(
            "the CA certificate {} expired on {not_after}; agents cannot connect",
            cert_path.display()
        );
    }
    if not_after - Utc::now() < chrono::Duration::days(365) {
        tracing::warn!(%not_after, "the fleet CA certificate expires within a year");
    }
    let fingerprint = fingerprint_sha256(&pem.contents);
    let issuer = Issuer::from_ca_cert_der(&pem.contents.clone().into(), key)
        .context("use the CA certificate as issuer")?;
    Ok(CertificateAuthority {
        issuer,
        cert_pem,
        fingerprint,
        not_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use x509_parser::extensions::GeneralName;

    struct Dir(tempfile::TempDir);

    impl Dir {
        fn path(&self, rel: &str) -> std::path::PathBuf {
            self.0.path().join(rel)
        }
    }

    fn temp_ca() -> (Dir, CertificateAuthority) {
        let dir = Dir(tempfile::tempdir().unwrap());
        let ca =
            CertificateAuthority::load_or_create(&dir.path("ca/ca.crt"), &dir.path("ca/ca.key"))
                .unwrap();
        (dir, ca)
    }

    fn csr_for(key: &KeyPair, cn: &str) -> String {
        let mut params = CertificateParams::new(vec!["evil.example.com".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serialize_request(key).unwrap().pem().unwrap()
    }

    #[test]
    fn creates_with_private_modes_and_loads_the_same_ca_again() {
        let (dir, ca) = temp_ca();
        let key_meta = fs::metadata(dir.path("ca/ca.key")).unwrap();
        assert_eq!(key_meta.mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(dir.path("ca/ca.crt")).unwrap().mode() & 0o777,
            0o644
        );
        assert_eq!(fs::metadata(dir.path("ca")).unwrap().mode() & 0o777, 0o700);
        assert_eq!(ca.fingerprint_sha256().len(), 64);

        let again =
            CertificateAuthority::load_or_create(&dir.path("ca/ca.crt"), &dir.path("ca/ca.key"))
                .unwrap();
        assert_eq!(again.fingerprint_sha256(), ca.fingerprint_sha256());
        assert!(!format!("{again:?}").contains("PRIVATE"));
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(dir.path("ca")).unwrap().count(), 2);
    }

    #[test]
    fn refuses_a_key_readable_by_others_and_a_half_present_ca() {
        let (dir, _) = temp_ca();
        let key = dir.path("ca/ca.key");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let err = CertificateAuthority::load_or_create(&dir.path("ca/ca.crt"), &key).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");

        fs::remove_file(&key).unwrap();
        let err = CertificateAuthority::load_or_create(&dir.path("ca/ca.crt"), &key).unwrap_err();
        assert!(err.to_string().contains("does not"), "{err}");
    }

    #[test]
    fn signs_with_the_identity_it_decides_not_the_one_asked_for() {
        let (_dir, ca) = temp_ca();
        let agent_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let (agent, server) = (Uuid::new_v4(), Uuid::new_v4());
        let signed = ca
            .sign_agent_csr(
                &csr_for(&agent_key, "root"),
                agent,
                server,
                AGENT_CERT_VALIDITY,
            )
            .unwrap();
        assert_eq!(signed.serial_hex.len(), 32);
        assert_eq!(signed.fingerprint_sha256.len(), 64);
        let lifetime = signed.not_after - signed.not_before;
        assert!(lifetime > chrono::Duration::days(29) && lifetime < chrono::Duration::days(31));

        let (_, pem) = x509_parser::pem::parse_x509_pem(signed.pem.as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents).unwrap();
        let cn: Vec<_> = cert
            .subject()
            .iter_common_name()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(cn, [agent.to_string()]);
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::URI(u) => u.to_string(),
                other => panic!("unexpected SAN {other:?}"),
            })
            .collect();
        assert_eq!(sans, [agent_uri(agent), server_uri(server)]);
        assert!(!cert.is_ca());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert_eq!(hex::encode(cert.raw_serial()), signed.serial_hex);
        assert_eq!(fingerprint_sha256(&pem.contents), signed.fingerprint_sha256);
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            agent_key.public_key_raw()
        );

        // The chain verifies against the CA certificate.
        let (_, ca_pem) = x509_parser::pem::parse_x509_pem(ca.ca_pem().as_bytes()).unwrap();
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_pem.contents).unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
        assert_eq!(cert.issuer(), ca_cert.subject());
    }

    #[test]
    fn refuses_bad_csrs() {
        let (_dir, ca) = temp_ca();
        let sign =
            |pem: &str| ca.sign_agent_csr(pem, Uuid::new_v4(), Uuid::new_v4(), AGENT_CERT_VALIDITY);

        assert!(matches!(
            sign("hello"),
            Err(SignError::Csr(CsrError::Unparseable))
        ));
        assert!(matches!(
            sign("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"),
            Err(SignError::Csr(CsrError::Unparseable))
        ));

        // Flip one bit of the signature: the request no longer proves possession of the key.
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let params = CertificateParams::default();
        let mut der = params.serialize_request(&key).unwrap().der().to_vec();
        let last = der.len() - 3;
        der[last] ^= 0x01;
        let tampered = pem_encode("CERTIFICATE REQUEST", &der);
        assert!(matches!(
            sign(&tampered),
            Err(SignError::Csr(CsrError::BadSignature))
        ));

        // Another curve.
        let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        assert!(matches!(
            sign(&csr_for(&p384, "x")),
            Err(SignError::Csr(CsrError::UnsupportedKey))
        ));
    }

    fn pem_encode(label: &str, der: &[u8]) -> String {
        pem::encode(&pem::Pem::new(label, der))
    }
}
