//! An ACME (RFC 8555) client for the web role's certificates: the agent's account, and one
//! order answered with HTTP-01 from a webroot that every site's vhost serves at
//! `/.well-known/acme-challenge/`.
//!
//! This module knows nothing about nginx or sites: it takes names and a webroot and gives
//! back a chain and its freshly made key. It owns two secrets and must never log or send
//! either: the account's credentials (`acme_account_file`, written 0600, made on first use
//! and reused for every order to the same directory) and each certificate's ECDSA P-256 key
//! (made here, returned to the caller only).
//!
//! Requests go through reqwest (timeouts on every request, the system's roots plus
//! `acme_ca_file`), not instant-acme's own client.
//!
//! **Errors.** `acme_unavailable` (retryable: the directory cannot be reached or answers with
//! an error), `acme_challenge_failed` (not retryable as such: the CA could not fetch the
//! challenge — usually DNS that does not point here; the message names the name and the
//! CA's reason), `acme_order_failed` (retryable), `acme_account_failed`, `web_io_failed`.

use std::{
    fs,
    future::Future,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    pin::Pin,
    time::Duration,
};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType,
    HttpClient, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::host::{Failure, stage, sync_dir};

const IO: &str = "web_io_failed";
const UNAVAILABLE: &str = "acme_unavailable";
const CHALLENGE_FAILED: &str = "acme_challenge_failed";
const ORDER_FAILED: &str = "acme_order_failed";

/// One request to the ACME server.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The CA validating the challenges, then issuing: Let's Encrypt takes seconds.
const VALIDATION_TIMEOUT: Duration = Duration::from_secs(120);
/// The most an ACME answer may hold (a chain is a few KiB).
const MAX_RESPONSE: usize = 1 << 20;

/// Where and as whom certificates are ordered.
pub struct Settings<'a> {
    pub directory: &'a Url,
    pub ca_file: Option<&'a Path>,
    pub contact: Option<&'a str>,
    pub account_file: &'a Path,
    /// Challenge responses go to `webroot/.well-known/acme-challenge/<token>`.
    pub webroot: &'a Path,
}

/// A certificate just issued.
pub struct Issued {
    /// The chain as the CA sent it: the leaf first, then the intermediates (PEM).
    pub chain_pem: String,
    /// The leaf's private key (PKCS#8 PEM). Secret: only ever written 0600.
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("chain_pem", &self.chain_pem.len())
            .field("key_pem", &"<secret>")
            .finish()
    }
}

/// Orders a certificate for `names` with a new key and answers its HTTP-01 challenges from
/// the webroot.
pub async fn order(settings: &Settings<'_>, names: &[String]) -> Result<Issued, Failure> {
    let account = account(settings).await?;
    let identifiers: Vec<Identifier> = names.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(|e| acme_error(ORDER_FAILED, "create an order", e))?;
    let mut tokens = Tokens {
        dir: challenge_path(settings.webroot),
        written: Vec::new(),
    };
    let result = async {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz =
                authz.map_err(|e| acme_error(ORDER_FAILED, "fetch an authorization", e))?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(Failure::new(
                        ORDER_FAILED,
                        format!(
                            "the CA's authorization for {} is {other:?}",
                            authz.identifier()
                        ),
                        true,
                    ));
                }
            }
            let name = authz.identifier().to_string();
            let mut challenge = authz.challenge(ChallengeType::Http01).ok_or_else(|| {
                Failure::new(
                    ORDER_FAILED,
                    format!("the CA offers no HTTP-01 challenge for {name}"),
                    false,
                )
            })?;
            tokens.put(&challenge.token, challenge.key_authorization().as_str())?;
            challenge
                .set_ready()
                .await
                .map_err(|e| acme_error(ORDER_FAILED, "answer a challenge", e))?;
        }
        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(VALIDATION_TIMEOUT);
        let status = order.poll_ready(&retry).await;
        if !matches!(status, Ok(OrderStatus::Ready)) {
            return Err(challenge_failure(&mut order, status).await);
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| Failure::new(ORDER_FAILED, format!("make a key: {e}"), false))?;
        let mut params = rcgen::CertificateParams::new(names.to_vec())
            .map_err(|e| Failure::new(ORDER_FAILED, format!("the names: {e}"), false))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .map_err(|e| Failure::new(ORDER_FAILED, format!("make the CSR: {e}"), false))?;
        order
            .finalize_csr(csr.der())
            .await
            .map_err(|e| acme_error(ORDER_FAILED, "finalize the order", e))?;
        let chain_pem = order
            .poll_certificate(&retry)
            .await
            .map_err(|e| acme_error(ORDER_FAILED, "fetch the certificate", e))?;
        Ok(Issued {
            chain_pem,
            key_pem: key.serialize_pem(),
        })
    }
    .await;
    drop(tokens);
    result
}

/// Why an order did not become ready: the challenges' own errors when the CA gave them
/// (`acme_challenge_failed`), else what polling said.
async fn challenge_failure(
    order: &mut instant_acme::Order,
    status: Result<OrderStatus, instant_acme::Error>,
) -> Failure {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        let Ok(state) = authz.refresh().await else {
            continue;
        };
        let name = state.identifier().to_string();
        for challenge in &state.challenges {
            if challenge.r#type == ChallengeType::Http01
                && let Some(problem) = &challenge.error
            {
                let detail = problem.detail.as_deref().unwrap_or("no detail");
                let kind = problem.r#type.as_deref().unwrap_or("unknown error");
                reasons.push(format!("{name}: {detail} ({kind})"));
            }
        }
    }
    if !reasons.is_empty() {
        return Failure::new(
            CHALLENGE_FAILED,
            format!(
                "the HTTP-01 challenge failed (is the name's DNS pointing at this server's \
                 port 80?): {}",
                reasons.join("; ")
            ),
            false,
        );
    }
    match status {
        Ok(other) => Failure::new(
            CHALLENGE_FAILED,
            format!("the HTTP-01 challenge did not succeed: the order is {other:?}"),
            false,
        ),
        Err(instant_acme::Error::Timeout(_)) => Failure::new(
            CHALLENGE_FAILED,
            format!("the CA did not validate the HTTP-01 challenge within {VALIDATION_TIMEOUT:?}"),
            true,
        ),
        Err(e) => acme_error(CHALLENGE_FAILED, "validate the HTTP-01 challenge", e),
    }
}

fn acme_error(code: &'static str, what: &str, e: instant_acme::Error) -> Failure {
    let retryable = !matches!(e, instant_acme::Error::Api(_)) || code == ORDER_FAILED;
    // `Other` wraps our HTTP client's errors: the server could not be reached.
    let code = match e {
        instant_acme::Error::Other(_) | instant_acme::Error::Timeout(_) => UNAVAILABLE,
        _ => code,
    };
    // reqwest's errors say what failed in their sources ("connection refused").
    let mut message = format!("ACME: {what}: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    Failure::new(code, message, retryable)
}

// ---------------------------------------------------------------------------------------
// The account
// ---------------------------------------------------------------------------------------

/// `acme_account_file`: the credentials (they hold the account's private key) with the
/// directory they belong to.
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// The account for the configured directory: the stored one, or a new one (stored 0600
/// before it is used) when there is none or it belongs to another directory.
async fn account(settings: &Settings<'_>) -> Result<Account, Failure> {
    let path = settings.account_file;
    let stored = match fs::read_to_string(path) {
        Ok(text) => Some(serde_json::from_str::<StoredAccount>(&text).map_err(|e| {
            Failure::new(
                "acme_account_failed",
                format!("{} is not an ACME account file: {e}", path.display()),
                false,
            )
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Failure::io(IO, "read", path, e)),
    };
    let http = || -> Result<Box<dyn HttpClient>, Failure> { Ok(Box::new(Client::new(settings)?)) };
    if let Some(stored) = stored
        && stored.directory == settings.directory.as_str()
    {
        return Account::builder_with_http(http()?)
            .from_credentials(stored.credentials)
            .await
            .map_err(|e| acme_error(UNAVAILABLE, "load the account", e));
    }
    let contact: Vec<&str> = settings.contact.into_iter().collect();
    let (account, credentials) = Account::builder_with_http(http()?)
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            settings.directory.to_string(),
            None,
        )
        .await
        .map_err(|e| acme_error("acme_account_failed", "create the account", e))?;
    let json = serde_json::to_string(&StoredAccount {
        directory: settings.directory.to_string(),
        credentials,
    })
    .map_err(|e| Failure::new("internal", format!("encode the account: {e}"), false))?;
    write_secret(path, &json)?;
    tracing::info!(
        directory = %settings.directory,
        account = account.id(),
        "created an ACME account"
    );
    Ok(account)
}

/// Writes `contents` atomically with mode 0600 (whatever mode an older file had), creating
/// the parent 0700 when missing.
pub fn write_secret(path: &Path, contents: &str) -> Result<(), Failure> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    if !parent.is_dir() {
        fs::create_dir_all(parent)
            .and_then(|()| fs::set_permissions(parent, fs::Permissions::from_mode(0o700)))
            .map_err(|e| Failure::io(IO, "create", parent, e))?;
    }
    if let Ok(m) = fs::metadata(path)
        && m.permissions().mode() & 0o077 != 0
    {
        // `stage` keeps an existing file's mode: never a key readable by others.
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(|e| Failure::io(IO, "chmod", path, e))?;
    }
    let tmp = stage(IO, path, contents, 0o600)?;
    fs::rename(&tmp, path)
        .and_then(|()| sync_dir(path))
        .map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Failure::io(IO, "replace", path, e)
        })
}

// ---------------------------------------------------------------------------------------
// Challenge responses
// ---------------------------------------------------------------------------------------

fn challenge_path(webroot: &Path) -> PathBuf {
    webroot.join(".well-known/acme-challenge")
}

/// The challenge responses this order wrote, removed when it is dropped: however the order
/// ends, even when its future is.
struct Tokens {
    dir: PathBuf,
    written: Vec<PathBuf>,
}

impl Tokens {
    fn put(&mut self, token: &str, key_authorization: &str) -> Result<(), Failure> {
        // The token comes from the CA and becomes a file name: base64url only (RFC 8555 §8.3).
        if token.is_empty()
            || token.len() > 256
            || !token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(Failure::new(
                ORDER_FAILED,
                "the CA sent a challenge token that is not base64url",
                false,
            ));
        }
        // nginx's workers read these files: the directories are 0755, the files 0644.
        let mut dir = PathBuf::new();
        for part in self.dir.components() {
            dir.push(part);
            if !dir.exists() {
                fs::create_dir(&dir)
                    .and_then(|()| fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)))
                    .map_err(|e| Failure::io(IO, "create", &dir, e))?;
            }
        }
        let path = self.dir.join(token);
        let tmp = stage(IO, &path, key_authorization, 0o644)?;
        fs::rename(&tmp, &path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Failure::io(IO, "write", &path, e)
        })?;
        self.written.push(path);
        Ok(())
    }
}

impl Drop for Tokens {
    fn drop(&mut self) {
        for path in self.written.drain(..) {
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a challenge response");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------

/// instant-acme's requests, sent with reqwest.
struct Client(reqwest::Client);

impl Client {
    fn new(settings: &Settings<'_>) -> Result<Client, Failure> {
        // reqwest is built without a default crypto provider: use ring, like the rest of mPanel.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("mpanel-agent/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(REQUEST_TIMEOUT)
            .https_only(true)
            // ACME answers with Location headers that the client reads; it never follows them.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = settings.ca_file {
            let pem = fs::read(ca).map_err(|e| Failure::io(IO, "read", ca, e))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                Failure::new(
                    "acme_account_failed",
                    format!("{} is not a PEM certificate: {e}", ca.display()),
                    false,
                )
            })?;
            builder = builder.add_root_certificate(cert);
        }
        builder
            .build()
            .map(Client)
            .map_err(|e| Failure::new("internal", format!("HTTP client: {e}"), false))
    }
}

impl HttpClient for Client {
    fn request(
        &self,
        req: http::Request<BodyWrapper<bytes::Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let client = self.0.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = http_body_util::BodyExt::collect(body)
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_else(|never| match never {});
            let response = client
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
            let mut head = http::Response::builder().status(response.status());
            for (name, value) in response.headers() {
                head = head.header(name, value);
            }
            let (parts, ()) = head.body(())?.into_parts();
            let body = read_limited(response).await?;
            Ok(BytesResponse {
                parts,
                body: Box::new(body),
            })
        })
    }
}

async fn read_limited(
    mut response: reqwest::Response,
) -> Result<bytes::Bytes, instant_acme::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| instant_acme::Error::Other(Box::new(e)))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE {
            return Err(instant_acme::Error::Str(
                "the ACME server's answer is too large",
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.into())
}
