//! HTTPS for the web role's sites: `IssueCertificate`'s executor, the renewal task, and
//! what the vhosts need to serve a certificate.
//!
//! **Files.** `cert_dir/<domain>/` (0700): `fullchain.pem` (the leaf, then the
//! intermediates), `privkey.pem` (0600, made on this host by [`acme`], never sent or
//! logged) and `renewal.json` (0600: the site, the served serial, `renew_at`, the last
//! error). A site "has a certificate" when both PEM files exist; its vhost then has an
//! HTTPS server and a port-80 server that redirects everything but the ACME challenge
//! (suspended: one server with the suspended page on both ports).
//!
//! **Issue.** Without `force`, a certificate for the apex and `www` with more than a third
//! of its lifetime left is kept (`changed: false`, no order): the vhost is brought up to
//! date and the served certificate checked. Otherwise: the vhost is made to answer the
//! challenge (and checked to answer it locally), the order is placed, then chain, key and
//! vhost are written together; `nginx -t` and the reload failing put all three back as they
//! were, exactly like the rest of the web role. A failed order changes nothing the site
//! serves: it stays on HTTP (or on its current certificate).
//!
//! **Verification.** After every install, a TLS handshake with SNI to the HTTPS address
//! (`listen`'s first address on `https_port`, loopback for a wildcard) must be answered
//! with exactly the installed chain, five times in a row within [`VERIFY_WITHIN`] (nginx
//! reloads in the background, and its old worker answers for a moment); else
//! `certificate_not_served` (retryable; the certificate stays installed, so a retry checks
//! again without ordering again). The chain is not validated: comparing the served
//! certificates byte for byte with the installed ones is stronger.
//!
//! **Renewal.** [`renew_certificates`] renews each certificate at `renew_at`: two thirds of
//! its lifetime, ±5% of it at random so a fleet spreads its orders; a failure is logged,
//! kept in `renewal.json` and retried with capped exponential back-off (5 min to 6 h). It
//! shares the web role's lock, so it never runs beside a site command. What became of each
//! attempt goes to the panel (`AgentMessage::CertificateStatus`, protocol 2); a state the
//! panel was not sent (no connection, a restart) is marked so in `renewal.json` and sent
//! at the next connection ([`unreported`], [`mark_reported`]).
//!
//! Errors (besides [`acme`]'s and the web role's): `site_not_found`,
//! `certificate_invalid` (the CA's answer cannot be installed), `challenge_not_served`
//! (nginx here does not answer the challenge path), `certificate_not_served`.

use std::{
    fs,
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, TimeDelta, Utc};
use mpanel_protocol::{
    DomainName, PhpVersion, SystemUser,
    messages::{AgentMessage, Label, Text},
    web::{CertificateStatus, IssueCertificateOutput},
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Changes, IO, LOCK, Site, TLS_SNIPPET, find_user};
use crate::{
    config::WebConfig,
    host::{Failure, run},
    roles::acme,
};

/// How long nginx may take to serve what it was just told to reload.
pub const VERIFY_WITHIN: Duration = Duration::from_secs(15);
/// The renewal task looks at the certificates at least this often (new ones, edits).
const RESCAN: Duration = Duration::from_secs(3600);
/// Consecutive local answers that must be right: the challenge probe before the CA is
/// asked to validate, the new certificate before the install counts as served.
const PROBES_IN_A_ROW: u32 = 5;
/// The least time between two renewals of one certificate (a third of its lifetime when
/// that is shorter: a test CA's 30-second certificates are renewed before they expire).
const MIN_INTERVAL: TimeDelta = TimeDelta::seconds(60);
/// The first retry of a failed renewal; doubled per failure up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_secs(300);
const RETRY_MAX: Duration = Duration::from_secs(6 * 3600);

/// Wakes the renewal task when a command installed a certificate (or its state).
static INSTALLED: tokio::sync::Notify = tokio::sync::Notify::const_new();

const CHAIN_FILE: &str = "fullchain.pem";
const KEY_FILE: &str = "privkey.pem";
const STATE_FILE: &str = "renewal.json";

/// Why [`issue`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// The panel's `IssueCertificate`.
    Command { force: bool },
    /// The renewal task: `renew_at` has come.
    Renewal,
}

/// What a site's HTTPS server needs.
pub(super) struct Tls {
    pub(super) chain: PathBuf,
    pub(super) key: PathBuf,
    /// nginx ≥ 1.25.1 says `http2 on;`; older ones `listen … ssl http2`.
    pub(super) http2_directive: bool,
}

impl Tls {
    /// `{{listen}}` of the HTTPS server: `listen`'s addresses on `https_port`.
    pub(super) fn listen(&self, cfg: &WebConfig) -> Vec<String> {
        let http2 = if self.http2_directive { "" } else { " http2" };
        cfg.listen
            .iter()
            .map(|l| {
                format!(
                    "    listen {} ssl{http2};",
                    https_address(l, cfg.https_port)
                )
            })
            .collect()
    }

    /// `{{tls}}`: the certificate and the TLS settings.
    pub(super) fn block(&self) -> String {
        let mut block = TLS_SNIPPET
            .replace("{{certificate}}", &self.chain.display().to_string())
            .replace("{{certificate_key}}", &self.key.display().to_string());
        if self.http2_directive {
            block.push_str("    http2 on;\n");
        }
        block
    }
}

/// `listen` value `entry` moved to `port`: `80` → `443`, `[::]:80` → `[::]:443`,
/// `127.0.0.1:8080` → `127.0.0.1:8443`, an address alone gets the port.
fn https_address(entry: &str, port: u16) -> String {
    if entry.chars().all(|c| c.is_ascii_digit()) {
        return port.to_string();
    }
    if let Some((addr, _)) = entry.rsplit_once("]:") {
        return format!("{addr}]:{port}");
    }
    if entry.ends_with(']') {
        return format!("{entry}:{port}");
    }
    match entry.rsplit_once(':') {
        Some((addr, _)) => format!("{addr}:{port}"),
        None => format!("{entry}:{port}"),
    }
}

/// Where to reach `listen`'s first address on `port` from this host: loopback for a
/// wildcard.
fn local_address(cfg: &WebConfig, port: u16) -> String {
    let first = cfg.listen.first().map(String::as_str).unwrap_or("80");
    let host = if first.chars().all(|c| c.is_ascii_digit()) {
        ""
    } else if let Some((addr, _)) = first.rsplit_once("]:") {
        &first[..addr.len() + 1]
    } else if first.ends_with(']') {
        first
    } else {
        first.rsplit_once(':').map_or(first, |(a, _)| a)
    };
    match host {
        "" | "*" | "0.0.0.0" => format!("127.0.0.1:{port}"),
        "[::]" => format!("[::1]:{port}"),
        h => format!("{h}:{port}"),
    }
}

/// The port of `listen`'s first entry.
fn http_port(cfg: &WebConfig) -> u16 {
    let first = cfg.listen.first().map(String::as_str).unwrap_or("80");
    let port = first.rsplit_once(':').map_or(first, |(_, p)| p);
    port.parse().unwrap_or(80)
}

struct Files {
    dir: PathBuf,
    chain: PathBuf,
    key: PathBuf,
    state: PathBuf,
}

impl Files {
    fn of(cfg: &WebConfig, domain: &DomainName) -> Files {
        let dir = cfg.cert_dir.join(domain.as_str());
        Files {
            chain: dir.join(CHAIN_FILE),
            key: dir.join(KEY_FILE),
            state: dir.join(STATE_FILE),
            dir,
        }
    }
}

/// The site's certificate as its vhost uses it, when it has one.
pub(super) async fn installed(site: &Site<'_>) -> Result<Option<Tls>, Failure> {
    let files = Files::of(site.cfg, site.domain);
    let present = |p: &Path| match fs::symlink_metadata(p) {
        Ok(m) => Ok(m.is_file()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Failure::io(IO, "inspect", p, e)),
    };
    if !(present(&files.chain)? && present(&files.key)?) {
        return Ok(None);
    }
    Ok(Some(Tls {
        chain: files.chain,
        key: files.key,
        http2_directive: http2_directive(site.cfg).await,
    }))
}

/// Whether this nginx takes `http2 on;` (1.25.1 and later), asked once per process.
async fn http2_directive(cfg: &WebConfig) -> bool {
    static ANSWER: tokio::sync::OnceCell<bool> = tokio::sync::OnceCell::const_new();
    *ANSWER
        .get_or_init(|| async {
            let Some(program) = cfg.nginx_test.first() else {
                return false;
            };
            let Ok(out) = tokio::process::Command::new(program)
                .arg("-v")
                .stdin(std::process::Stdio::null())
                .output()
                .await
            else {
                return false;
            };
            // "nginx version: nginx/1.22.1" on stderr; anything else: the older syntax,
            // which every nginx with HTTP/2 still accepts.
            let text = String::from_utf8_lossy(&out.stderr);
            let version: Vec<u32> = text
                .split("nginx/")
                .nth(1)
                .and_then(|v| v.split_whitespace().next())
                .map(|v| v.split('.').filter_map(|n| n.parse().ok()).collect())
                .unwrap_or_default();
            version >= vec![1, 25, 1]
        })
        .await
}

/// Removes the site's certificate, key and renewal state; `Ok(true)` if there were any.
pub(super) fn remove(site: &Site<'_>) -> Result<bool, Failure> {
    let dir = Files::of(site.cfg, site.domain).dir;
    match fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() => {
            fs::remove_dir_all(&dir).map_err(|e| Failure::io(IO, "remove", &dir, e))?;
            Ok(true)
        }
        Ok(_) => Err(super::unsafe_path(&dir)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Failure::io(IO, "inspect", &dir, e)),
    }
}

// ---------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------

/// A chain as installed or served: its certificates (DER) and the leaf's facts.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Chain {
    ders: Vec<Vec<u8>>,
    issuer: String,
    serial: String,
    names: Vec<String>,
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
}

impl Chain {
    fn from_pem(text: &str) -> Result<Chain, String> {
        let ders: Vec<Vec<u8>> = pem::parse_many(text)
            .map_err(|e| format!("not PEM: {e}"))?
            .into_iter()
            .filter(|p| p.tag() == "CERTIFICATE")
            .map(|p| p.into_contents())
            .collect();
        Chain::from_der(ders)
    }

    fn from_der(ders: Vec<Vec<u8>>) -> Result<Chain, String> {
        let leaf = ders.first().ok_or("no certificate")?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let time = |t: x509_parser::time::ASN1Time| {
            DateTime::from_timestamp(t.timestamp(), 0).ok_or("a date out of range")
        };
        let names = cert
            .subject_alternative_name()
            .map_err(|e| format!("its subjectAltName: {e}"))?
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let chain = Chain {
            issuer: cert.issuer().to_string(),
            serial: cert.serial.to_str_radix(16),
            names,
            not_before: time(cert.validity().not_before)?,
            not_after: time(cert.validity().not_after)?,
            ders: Vec::new(),
        };
        Ok(Chain { ders, ..chain })
    }

    fn lifetime(&self) -> TimeDelta {
        self.not_after - self.not_before
    }

    /// Two thirds of the lifetime: from here on the certificate is due.
    fn due_at(&self) -> DateTime<Utc> {
        self.not_before + self.lifetime() * 2 / 3
    }

    /// [`Chain::due_at`] ±5% of the lifetime, at random.
    fn renew_at(&self) -> DateTime<Utc> {
        let spread = (self.lifetime() / 20).num_milliseconds().max(0);
        let jitter = rand::random_range(-spread..=spread);
        self.due_at() + TimeDelta::milliseconds(jitter)
    }

    fn covers(&self, names: &[String]) -> bool {
        names.iter().all(|n| self.names.contains(n))
    }

    fn output(&self, renew_at: DateTime<Utc>, changed: bool) -> IssueCertificateOutput {
        IssueCertificateOutput {
            issuer: self.issuer.clone(),
            serial: self.serial.clone(),
            names: self.names.clone(),
            not_before: self.not_before,
            not_after: self.not_after,
            renew_at,
            changed,
        }
    }
}

/// `renewal.json`: what the renewal task needs to renew a site's certificate on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RenewalState {
    pub domain: DomainName,
    pub system_user: SystemUser,
    pub php_version: PhpVersion,
    /// The serial of the certificate installed (lowercase hex).
    pub serial: String,
    pub not_after: DateTime<Utc>,
    pub renew_at: DateTime<Utc>,
    /// Renewals that failed in a row, the last one's error and when to try again.
    #[serde(default)]
    pub failures: u32,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub retry_at: Option<DateTime<Utc>>,
    /// The served certificate's issuer and start of validity, for the panel.
    #[serde(default)]
    pub issuer: String,
    #[serde(default)]
    pub not_before: Option<DateTime<Utc>>,
    /// When this state was written, and whether the panel was sent it since.
    #[serde(default = "Utc::now")]
    pub recorded_at: DateTime<Utc>,
    #[serde(default)]
    pub reported: bool,
}

impl RenewalState {
    /// What the panel is told of this certificate (`None`: a value it cannot be sent as,
    /// which a state this agent wrote never has).
    pub fn status(&self) -> Option<CertificateStatus> {
        let clip = |s: &str, max: usize| s.chars().take(max).collect::<String>();
        Some(CertificateStatus {
            domain: self.domain.clone(),
            issuer: Text::parse(clip(&self.issuer, 1024)).ok()?,
            serial: Label::parse(self.serial.clone()).ok()?,
            not_before: self.not_before.unwrap_or(self.not_after),
            not_after: self.not_after,
            renew_at: self.renew_at,
            failures: self.failures,
            last_error: match &self.last_error {
                Some(e) if self.failures > 0 => Some(Text::parse(clip(e, 2048)).ok()?),
                _ => None,
            },
            next_attempt_at: self.next_attempt(),
            recorded_at: self.recorded_at,
        })
    }

    /// When the renewal task should next try: `renew_at`, or the back-off after failures
    /// (a failed forced re-issue of a certificate not yet due does not make it due).
    fn next_attempt(&self) -> DateTime<Utc> {
        match self.retry_at {
            Some(retry) if self.failures > 0 => retry.max(self.renew_at),
            _ => self.renew_at,
        }
    }
}

fn read_state(path: &Path) -> Result<Option<RenewalState>, Failure> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(serde_json::from_str(&text).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Failure::io(IO, "read", path, e)),
    }
}

fn write_state(path: &Path, state: &RenewalState) -> Result<(), Failure> {
    let json = serde_json::to_string_pretty(state)
        .map_err(|e| Failure::new("internal", format!("encode {}: {e}", path.display()), false))?;
    acme::write_secret(path, &json)
}

// ---------------------------------------------------------------------------------------
// Issue, install, verify
// ---------------------------------------------------------------------------------------

/// `IssueCertificate` for `site` (see the module's documentation); the renewal task
/// calls it too. The caller holds the web role's lock.
pub(super) async fn issue(
    site: &Site<'_>,
    state_dir: &Path,
    mode: Mode,
) -> Result<IssueCertificateOutput, Failure> {
    let cfg = site.cfg;
    let not_found = || {
        Failure::new(
            "site_not_found",
            format!("{} is not a site on this server", site.domain),
            false,
        )
    };
    let user = find_user(cfg, site.user)?.ok_or_else(not_found)?;
    if !site.vhost_path().is_file() {
        return Err(not_found());
    }
    let suspended = user.shell == cfg.nologin_shell;
    let files = Files::of(cfg, site.domain);
    let names = vec![site.domain.to_string(), format!("www.{}", site.domain)];
    let current = match (installed(site).await?, fs::read_to_string(&files.chain)) {
        (Some(_), Ok(text)) => Chain::from_pem(&text).ok(),
        _ => None,
    };
    let keep = match (&current, mode) {
        (Some(chain), Mode::Command { force: false }) => {
            chain.covers(&names) && Utc::now() < chain.due_at()
        }
        _ => false,
    };
    if let (true, Some(chain)) = (keep, current) {
        ensure_vhost(site, suspended).await?;
        verify_served(cfg, site.domain, &chain).await?;
        let renew_at = match read_state(&files.state)? {
            Some(s) if s.serial == chain.serial => s.renew_at,
            _ => {
                let state = new_state(site, &chain);
                write_state(&files.state, &state)?;
                INSTALLED.notify_one();
                state.renew_at
            }
        };
        return Ok(chain.output(renew_at, false));
    }

    let chain = order_and_install(site, state_dir, suspended, &files, &names).await?;
    let state = new_state(site, &chain);
    write_state(&files.state, &state)?;
    if mode != Mode::Renewal {
        INSTALLED.notify_one();
    }
    Ok(chain.output(state.renew_at, true))
}

/// Notes a failed issue or renewal in the certificate's `renewal.json`, if it has one (a
/// site without a certificate has nothing to renew), and sets when to try again.
pub(super) fn record_failure(
    cfg: &WebConfig,
    domain: &DomainName,
    failure: &Failure,
) -> Option<RenewalState> {
    let path = Files::of(cfg, domain).state;
    let mut state = read_state(&path).ok().flatten()?;
    state.failures = state.failures.saturating_add(1);
    state.last_error = Some(format!("{}: {}", failure.code, failure.message));
    state.retry_at = Some(Utc::now() + retry_delay(state.failures));
    state.recorded_at = Utc::now();
    state.reported = false;
    if let Err(f) = write_state(&path, &state) {
        tracing::warn!(domain = %domain, "cannot record a certificate failure: {}", f.message);
    }
    Some(state)
}

fn new_state(site: &Site<'_>, chain: &Chain) -> RenewalState {
    RenewalState {
        domain: site.domain.clone(),
        system_user: site.user.clone(),
        php_version: site.php.clone(),
        serial: chain.serial.clone(),
        not_after: chain.not_after,
        renew_at: chain.renew_at(),
        failures: 0,
        last_error: None,
        retry_at: None,
        issuer: chain.issuer.clone(),
        not_before: Some(chain.not_before),
        recorded_at: Utc::now(),
        reported: false,
    }
}

/// The back-off after `failures` failed renewals in a row: 5 min doubling to 6 h, the
/// last half of it at random.
fn retry_delay(failures: u32) -> TimeDelta {
    let base = RETRY_MIN
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(16)))
        .min(RETRY_MAX);
    let half = base.as_millis() as i64 / 2;
    TimeDelta::milliseconds(half + rand::random_range(0..=half.max(1)))
}

/// Writes the vhost as it should be now (it answers the challenge in every form), with
/// `nginx -t` and a reload, rolled back on failure; `Ok(true)` if it changed.
async fn ensure_vhost(site: &Site<'_>, suspended: bool) -> Result<bool, Failure> {
    let cfg = site.cfg;
    let tls = installed(site).await?;
    let mut changes = Changes::default();
    let result = async {
        let vhost = site.vhost(suspended, tls.as_ref())?;
        let changed = changes.write(&site.vhost_path(), &vhost, 0o644)?;
        if changed {
            run("nginx_config_invalid", &cfg.nginx_test, false).await?;
            if let Some(reload) = &cfg.nginx_reload {
                run("reload_failed", reload, true).await?;
            }
        }
        Ok(changed)
    }
    .await;
    if result.is_err() {
        changes.undo(site).await;
    }
    result
}

async fn order_and_install(
    site: &Site<'_>,
    state_dir: &Path,
    suspended: bool,
    files: &Files,
    names: &[String],
) -> Result<Chain, Failure> {
    let cfg = site.cfg;
    let reloaded = ensure_vhost(site, suspended).await?;
    check_challenge_served(site, reloaded).await?;
    let account_file = cfg
        .acme_account_file
        .clone()
        .unwrap_or_else(|| state_dir.join("acme-account.json"));
    let settings = acme::Settings {
        directory: &cfg.acme_directory,
        ca_file: cfg.acme_ca_file.as_deref(),
        contact: cfg.acme_contact.as_deref(),
        account_file: &account_file,
        webroot: &cfg.challenge_dir,
    };
    let issued = acme::order(&settings, names).await?;
    let chain = Chain::from_pem(&issued.chain_pem).map_err(|e| {
        Failure::new(
            "certificate_invalid",
            format!("the CA's certificate for {}: {e}", site.domain),
            true,
        )
    })?;
    if !chain.covers(names) {
        return Err(Failure::new(
            "certificate_invalid",
            format!(
                "the CA's certificate covers {:?}, not {names:?}",
                chain.names
            ),
            false,
        ));
    }

    // Chain, key and vhost change together: nginx -t sees the three, a failure puts the
    // three back.
    let mut changes = Changes::default();
    let result = async {
        ensure_cert_dir(&files.dir, &mut changes)?;
        changes.write(&files.key, &issued.key_pem, 0o600)?;
        // The key never had another mode, even for the instant before this.
        fs::set_permissions(&files.key, fs::Permissions::from_mode(0o600))
            .map_err(|e| Failure::io(IO, "chmod", &files.key, e))?;
        changes.write(&files.chain, &issued.chain_pem, 0o644)?;
        let tls = installed(site).await?;
        let vhost = site.vhost(suspended, tls.as_ref())?;
        changes.write(&site.vhost_path(), &vhost, 0o644)?;
        run("nginx_config_invalid", &cfg.nginx_test, false).await?;
        if let Some(reload) = &cfg.nginx_reload {
            run("reload_failed", reload, true).await?;
        }
        Ok(())
    }
    .await;
    if let Err(failure) = result {
        changes.undo(site).await;
        return Err(failure);
    }
    tracing::info!(
        domain = %site.domain,
        serial = %chain.serial,
        not_after = %chain.not_after,
        "certificate installed"
    );
    // A certificate nginx does not serve is a failure; it stays installed (it is valid and
    // nginx accepted it), so a retry checks again without ordering again.
    verify_served(cfg, site.domain, &chain).await?;
    Ok(chain)
}

fn ensure_cert_dir(dir: &Path, changes: &mut Changes) -> Result<(), Failure> {
    if let Some(parent) = dir.parent()
        && !parent.is_dir()
    {
        fs::create_dir_all(parent)
            .and_then(|()| fs::set_permissions(parent, fs::Permissions::from_mode(0o700)))
            .map_err(|e| Failure::io(IO, "create", parent, e))?;
    }
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(super::unsafe_path(dir)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir(dir)
                .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(0o700)))
                .map_err(|e| Failure::io(IO, "create", dir, e))?;
            changes.created_paths.push(dir.to_path_buf());
            Ok(())
        }
        Err(e) => Err(Failure::io(IO, "inspect", dir, e)),
    }
}

/// Serves a probe file from the challenge directory and fetches it the way the CA will
/// (plain HTTP, `Host:` the domain), so a vhost that cannot answer is named here rather
/// than by the CA minutes later. `reloaded`: nginx may still be loading the vhost.
async fn check_challenge_served(site: &Site<'_>, reloaded: bool) -> Result<(), Failure> {
    let cfg = site.cfg;
    let dir = cfg.challenge_dir.join(".well-known/acme-challenge");
    let token = format!("mpanel-probe-{:016x}", rand::random::<u64>());
    let probe = dir.join(&token);
    fs::create_dir_all(&dir)
        .and_then(|()| {
            for d in [
                cfg.challenge_dir.as_path(),
                &cfg.challenge_dir.join(".well-known"),
                &dir,
            ] {
                fs::set_permissions(d, fs::Permissions::from_mode(0o755))?;
            }
            Ok(())
        })
        .map_err(|e| Failure::io(IO, "create", &dir, e))?;
    fs::write(&probe, &token).map_err(|e| Failure::io(IO, "write", &probe, e))?;
    let address = local_address(cfg, http_port(cfg));
    let path = format!("/.well-known/acme-challenge/{token}");
    let deadline = tokio::time::Instant::now()
        + if reloaded {
            VERIFY_WITHIN
        } else {
            Duration::from_secs(2)
        };
    // Several answers in a row: for a moment after a reload nginx's old workers still
    // take connections with the old configuration, and the CA must not meet one of them.
    let (mut last, mut streak) = (Err(String::new()), 0);
    while streak < PROBES_IN_A_ROW {
        last = http_get(&address, site.domain.as_str(), &path).await;
        streak = match &last {
            Ok((200, body)) if body.trim() == token => streak + 1,
            _ if tokio::time::Instant::now() >= deadline => break,
            _ => 0,
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = fs::remove_file(&probe);
    match last {
        Ok((200, body)) if body.trim() == token && streak >= PROBES_IN_A_ROW => Ok(()),
        Ok((200, body)) if body.trim() == token => Err(Failure::new(
            "challenge_not_served",
            format!(
                "nginx at {address} serves http://{}{path} only some of the time",
                site.domain
            ),
            true,
        )),
        Ok((status, _)) => Err(Failure::new(
            "challenge_not_served",
            format!(
                "nginx at {address} answers {status} for {}{path}, not the challenge file \
                 (is the vhost's challenge location in place?)",
                site.domain
            ),
            true,
        )),
        Err(e) => Err(Failure::new(
            "challenge_not_served",
            format!(
                "nginx at {address} does not answer http://{}{path}: {e}",
                site.domain
            ),
            true,
        )),
    }
}

/// `GET path` over HTTP/1.0 with `Host: host`: the status and body.
async fn http_get(address: &str, host: &str, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| e.to_string())?;
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: mpanel-agent\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        stream
            .take(64 * 1024)
            .read_to_end(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&answer);
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("not an HTTP answer")?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| Err("no answer within 5s".into()))
}

/// Waits until the HTTPS address serves exactly `chain` for the domain.
async fn verify_served(cfg: &WebConfig, domain: &DomainName, chain: &Chain) -> Result<(), Failure> {
    let address = local_address(cfg, cfg.https_port);
    let deadline = tokio::time::Instant::now() + VERIFY_WITHIN;
    // Several handshakes in a row: an old worker may still answer with the old certificate
    // for a moment after the reload.
    let mut streak = 0;
    loop {
        let served = served_chain(&address, domain).await;
        if let Ok(ders) = &served
            && ders == &chain.ders
        {
            streak += 1;
            if streak >= PROBES_IN_A_ROW {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        streak = 0;
        if tokio::time::Instant::now() >= deadline {
            let what = match served {
                Ok(ders) => match Chain::from_der(ders) {
                    Ok(c) => format!("serial {} for {:?}", c.serial, c.names),
                    Err(e) => format!("a certificate that cannot be read ({e})"),
                },
                Err(e) => format!("no certificate ({e})"),
            };
            return Err(Failure::new(
                "certificate_not_served",
                format!(
                    "{address} with SNI {domain} serves {what}, not the certificate just \
                     installed (serial {})",
                    chain.serial
                ),
                true,
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The chain a TLS server at `address` presents for SNI `domain` (DER, leaf first).
async fn served_chain(address: &str, domain: &DomainName) -> Result<Vec<Vec<u8>>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyChain(provider)))
        .with_no_client_auth();
    let name =
        rustls::pki_types::ServerName::try_from(domain.to_string()).map_err(|e| e.to_string())?;
    let handshake = async {
        let address: SocketAddr = match address.parse() {
            Ok(a) => a,
            Err(_) => tokio::net::lookup_host(address)
                .await
                .map_err(|e| e.to_string())?
                .next()
                .ok_or("no address")?,
        };
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (_, conn) = tls.get_ref();
        Ok::<_, String>(
            conn.peer_certificates()
                .unwrap_or_default()
                .iter()
                .map(|c| c.as_ref().to_vec())
                .collect(),
        )
    };
    tokio::time::timeout(Duration::from_secs(5), handshake)
        .await
        .unwrap_or_else(|_| Err("no handshake within 5s".into()))
}

/// Accepts any chain: the caller compares it with the installed one byte for byte. The
/// handshake's signatures are still checked, so the server holds the key of what it sent.
#[derive(Debug)]
struct AnyChain(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyChain {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

// ---------------------------------------------------------------------------------------
// Renewal
// ---------------------------------------------------------------------------------------

/// The renewal task: renews every certificate under `cert_dir` when it is due, until
/// `shutdown`. A renewal under way when shutdown comes is finished first.
pub async fn renew_certificates(
    cfg: WebConfig,
    state_dir: PathBuf,
    reports: mpsc::Sender<AgentMessage>,
    shutdown: CancellationToken,
) {
    loop {
        let next = renew_due(&cfg, &state_dir, &reports).await;
        let wait = next
            .and_then(|at| (at - Utc::now()).to_std().ok())
            .unwrap_or(Duration::ZERO)
            .min(RESCAN);
        let wait = if next.is_none() { RESCAN } else { wait };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait.max(Duration::from_secs(1))) => {}
            // A certificate was installed: it may be due before the time slept for.
            _ = INSTALLED.notified() => {}
        }
    }
}

/// One pass: renews each certificate whose time has come, and queues what became of it in
/// `reports` (sent with the next connection when there is none now; see
/// [`unreported`]). Returns when the next one is due (`None`: there are none).
pub async fn renew_due(
    cfg: &WebConfig,
    state_dir: &Path,
    reports: &mpsc::Sender<AgentMessage>,
) -> Option<DateTime<Utc>> {
    let entries = match fs::read_dir(&cfg.cert_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(dir = %cfg.cert_dir.display(), error = %e, "cannot list the certificates");
            return None;
        }
    };
    let mut next: Option<DateTime<Utc>> = None;
    for entry in entries.flatten() {
        let path = entry.path().join(STATE_FILE);
        let state = match read_state(&path) {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(f) => {
                tracing::warn!(path = %path.display(), "cannot read renewal state: {}", f.message);
                continue;
            }
        };
        let mut at = state.next_attempt();
        if at <= Utc::now() {
            at = renew_one(cfg, state_dir, &state).await.unwrap_or(at);
            let after = read_state(&path).ok().flatten().unwrap_or(state);
            if let Some(status) = after.status() {
                // Full or closed: it stays unreported, and the next connection sends it.
                let _ = reports.try_send(AgentMessage::CertificateStatus(status));
            }
            // Whatever the CA's dates say, one certificate is never ordered in a loop.
            let lifetime = after.not_after - after.not_before.unwrap_or(after.not_after);
            at = at.max(Utc::now() + MIN_INTERVAL.min(lifetime / 3).max(TimeDelta::seconds(1)));
        }
        next = Some(next.map_or(at, |n| n.min(at)));
    }
    next
}

/// Renews one certificate; the time of the next attempt.
async fn renew_one(
    cfg: &WebConfig,
    state_dir: &Path,
    state: &RenewalState,
) -> Option<DateTime<Utc>> {
    let _guard = LOCK.lock().await;
    let site = Site::new(cfg, &state.domain, &state.system_user, &state.php_version);
    let span = tracing::info_span!("renew_certificate", domain = %state.domain);
    match issue(&site, state_dir, Mode::Renewal)
        .instrument(span)
        .await
    {
        Ok(out) => {
            tracing::info!(
                domain = %state.domain,
                serial = %out.serial,
                not_after = %out.not_after,
                renew_at = %out.renew_at,
                "certificate renewed"
            );
            Some(out.renew_at)
        }
        Err(failure) => {
            let after = record_failure(cfg, &state.domain, &failure);
            tracing::warn!(
                domain = %state.domain,
                code = failure.code,
                failures = after.as_ref().map_or(0, |s| s.failures),
                retry_at = ?after.as_ref().and_then(|s| s.retry_at),
                "certificate renewal failed: {}",
                failure.message
            );
            // No state left (the site went meanwhile): the next scan decides.
            after.map(|s| s.next_attempt())
        }
    }
}

// ---------------------------------------------------------------------------------------
// What the panel has not been told
// ---------------------------------------------------------------------------------------

/// The certificates whose latest state the panel has not been sent (a renewal while no hub
/// was reachable, a state written before a restart), for the next connection.
pub fn unreported(cfg: &WebConfig) -> Vec<CertificateStatus> {
    let Ok(entries) = fs::read_dir(&cfg.cert_dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| read_state(&e.path().join(STATE_FILE)).ok().flatten())
        .filter(|s| !s.reported)
        .filter_map(|s| s.status())
        .collect()
}

/// Notes that the panel was sent `status`, unless the state has changed since. Takes the
/// web role's lock (a renewal may be writing the same file), so call it from its own task.
pub async fn mark_reported(cfg: &WebConfig, status: &CertificateStatus) {
    let _guard = LOCK.lock().await;
    let path = Files::of(cfg, &status.domain).state;
    let Ok(Some(mut state)) = read_state(&path) else {
        return;
    };
    if state.reported || state.recorded_at != status.recorded_at {
        return;
    }
    state.reported = true;
    if let Err(f) = write_state(&path, &state) {
        tracing::warn!(domain = %status.domain, "cannot note a reported certificate: {}", f.message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listen: &[&str]) -> WebConfig {
        let mut cfg = crate::config::AgentConfig::parse("").unwrap().web;
        cfg.listen = listen.iter().map(|s| (*s).to_owned()).collect();
        cfg
    }

    #[test]
    fn https_addresses_follow_listen() {
        assert_eq!(https_address("80", 443), "443");
        assert_eq!(https_address("[::]:80", 443), "[::]:443");
        assert_eq!(https_address("127.0.0.1:8080", 8443), "127.0.0.1:8443");
        assert_eq!(https_address("[::1]", 443), "[::1]:443");
        assert_eq!(https_address("10.0.0.5", 443), "10.0.0.5:443");
        assert_eq!(
            local_address(&config(&["80", "[::]:80"]), 443),
            "127.0.0.1:443"
        );
        assert_eq!(local_address(&config(&["[::]:80"]), 443), "[::1]:443");
        assert_eq!(
            local_address(&config(&["127.0.0.2:81"]), 8443),
            "127.0.0.2:8443"
        );
        assert_eq!(http_port(&config(&["127.0.0.2:81"])), 81);
        assert_eq!(http_port(&config(&["80"])), 80);
    }

    #[test]
    fn renewal_is_at_two_thirds_with_five_percent_jitter() {
        let start = Utc::now();
        let chain = Chain {
            ders: Vec::new(),
            issuer: String::new(),
            serial: "1".into(),
            names: vec!["example.com".into(), "www.example.com".into()],
            not_before: start,
            not_after: start + TimeDelta::days(90),
        };
        assert_eq!(chain.due_at(), start + TimeDelta::days(60));
        let spread = TimeDelta::days(90) / 20;
        let samples: Vec<_> = (0..50).map(|_| chain.renew_at()).collect();
        assert!(
            samples
                .iter()
                .all(|t| (*t - chain.due_at()).abs() <= spread)
        );
        assert!(samples.iter().any(|t| *t != samples[0]), "jittered");
        assert!(chain.covers(&["www.example.com".into()]));
        assert!(!chain.covers(&["shop.example.com".into()]));
    }

    #[test]
    fn retries_back_off_and_are_capped() {
        assert!(
            retry_delay(1) >= TimeDelta::seconds(150) && retry_delay(1) <= TimeDelta::seconds(300)
        );
        assert!(retry_delay(3) >= TimeDelta::seconds(600));
        assert!(retry_delay(40) <= TimeDelta::hours(6));
    }
}
