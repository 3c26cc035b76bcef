//! The agent's transport to the hub: the rustls client configuration, TCP + TLS + WebSocket
//! connect, and writing one frame with a time limit. Knows nothing of what the frames say.
//!
//! - **Trust**: the hub is verified against `ca.crt` only (the CA the enrollment token
//!   pinned), by the host name of the URL being dialled (with several hubs, each URL's own);
//!   the agent proves itself with `agent.crt`.
//! - **Limits**: the WebSocket uses the protocol's buffers and message limit
//!   ([`mpanel_protocol::ws::ws_config`], the same as the hub's).
//! - Nothing is written without a time limit, so a hub that stops reading cannot pin us.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use futures_util::SinkExt;
use mpanel_protocol::{messages::AgentMessage, ws::ws_config};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName},
};
use tokio::{net::TcpStream, time::timeout};
use tokio_rustls::{TlsConnector, client::TlsStream};
use tokio_tungstenite::{WebSocketStream, tungstenite::Message};
use url::Url;

use super::{Agent, read};
use crate::{config::AgentConfig, enroll};

/// TCP connect, TLS handshake and WebSocket upgrade together; also how long the hub has to
/// answer Hello.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// The client TLS configuration: our certificate and key; the pinned CA as the only root.
fn client_config(config: &AgentConfig) -> anyhow::Result<Arc<ClientConfig>> {
    let ca_der = enroll::single_certificate(&read(&config.ca_file)?)
        .with_context(|| format!("{}", config.ca_file.display()))?;
    let cert_der = enroll::single_certificate(&read(&config.cert_file)?)
        .with_context(|| format!("{}", config.cert_file.display()))?;
    let key_pem = read(&config.key_file)?;
    let key = pem::parse(&key_pem)
        .ok()
        .filter(|p| p.tag() == "PRIVATE KEY")
        .with_context(|| format!("{} is not a PKCS#8 PEM key", config.key_file.display()))?;
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_der))
        .context("use ca.crt as the trust anchor")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from(cert_der)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.contents().to_vec())),
        )
        .context("the agent certificate and key")?;
    Ok(Arc::new(cfg))
}

pub(super) async fn send(ws: &mut Ws, msg: &AgentMessage, limit: Duration) -> anyhow::Result<()> {
    let text = msg.encode()?;
    timeout(limit, ws.send(Message::text(text)))
        .await
        .context("the hub stopped reading")?
        .context("write to the hub")
}

/// Dials `url`, one of the agent's hubs; its host is the TLS server name checked.
pub(super) async fn connect(agent: &Agent, url: &Url) -> anyhow::Result<Ws> {
    let host = url.host_str().context("the hub URL has no host")?;
    let port = url.port_or_known_default().unwrap_or(443);
    let name = ServerName::try_from(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    )
    .context("the hub host is not a valid TLS name")?;
    let tls = TlsConnector::from(client_config(&agent.config)?);
    let ws = timeout(CONNECT_TIMEOUT, async {
        let tcp = TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port))
            .await
            .with_context(|| format!("connect to {host}:{port}"))?;
        let _ = tcp.set_nodelay(true);
        let tls = tls
            .connect(name, tcp)
            .await
            .context("TLS handshake with the hub")?;
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(url.as_str(), tls, Some(ws_config()))
                .await
                .context("WebSocket upgrade")?;
        Ok::<_, anyhow::Error>(ws)
    })
    .await
    .context("connecting to the hub timed out")??;
    Ok(ws)
}
