//! `mpanel-agent run`: the daemon. Dials the hub over mTLS, says Hello, and then serves one
//! `select!` loop per connection (rathole's client): the panel's frames, results of running
//! commands, our heartbeat and metrics ticks, the panel's silence deadline and shutdown.
//!
//! - **Trust**: the hub is verified against `ca.crt` only (the CA the enrollment token
//!   pinned), by the host name of the hub URL; the agent proves itself with `agent.crt`.
//! - **Reconnect**: capped exponential backoff with jitter (a random delay between half and
//!   all of `min(reconnect_max, reconnect_min × 2^n)`), reset once a connection stayed up
//!   for [`STABLE_AFTER`]; after a panel restart agents come back spread out, not at once.
//! - **Half-dead links**: a panel silent for two heartbeat intervals is dropped and dialled
//!   again.
//! - **Commands** run in tracked tasks, at most once per id: the [`Journal`] answers ids it
//!   knows, an id already running is only acknowledged again.
//! - **Shutdown** (SIGTERM/SIGINT): no new commands; running ones finish (bounded by
//!   `shutdown_timeout`) and their results are sent while the connection lasts.
//! - **Renewal**: when less than `renew_before` (default a third of its life) is left on the
//!   certificate, a new key and CSR go to the hub; the answer is checked like an enrollment
//!   (our CA, our key, our agent id) and replaces `agent.key`/`agent.crt` for the next
//!   connection.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, bail};
use chrono::Utc;
use futures_util::{SinkExt, StreamExt};
use mpanel_protocol::{
    messages::{
        AgentMessage, CommandEnvelope, Hello, Hostname, Label, Outcome, PROTOCOL_VERSION,
        PanelMessage, Text, Welcome,
    },
    ws::ws_config,
};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName},
};
use tokio::{
    net::TcpStream,
    sync::mpsc,
    time::{Instant, timeout},
};
use tokio_rustls::{TlsConnector, client::TlsStream};
use tokio_tungstenite::{WebSocketStream, tungstenite::Message};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use url::Url;
use uuid::Uuid;

use crate::{
    VERSION,
    config::AgentConfig,
    enroll, executors,
    journal::{self, Journal},
    metrics::Collector,
    state::{EnrollmentRecord, StateDir, write_atomic},
};

/// A connection that lasted this long resets the backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Results waiting for a connection; beyond it they are dropped (the panel re-sends the
/// command and the journal answers).
const OUTBOX_CAPACITY: usize = 256;

type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// The delay before reconnect attempt `attempt` (0-based).
pub fn backoff(min: Duration, max: Duration, attempt: u32) -> Duration {
    let base = min
        .saturating_mul(2u32.saturating_pow(attempt.min(20)))
        .min(max);
    let half = base / 2;
    let jitter = rand::random_range(0..=half.as_millis().max(1) as u64);
    half + Duration::from_millis(jitter)
}

struct Agent {
    config: AgentConfig,
    state: StateDir,
    hub_url: Url,
    hostname: Hostname,
    journal: Mutex<Journal>,
    running: Mutex<HashSet<Uuid>>,
    collector: Arc<Mutex<Collector>>,
    tracker: TaskTracker,
    outbox: mpsc::Sender<AgentMessage>,
}

pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let state = StateDir::new(&config.state_dir);
    let record = state.enrollment()?.with_context(|| {
        format!(
            "{} holds no enrollment; run `mpanel-agent enroll` first",
            state.root().display()
        )
    })?;
    let hub_url = match &config.hub_url {
        Some(u) => u.clone(),
        None => Url::parse(&record.hub_url).context("the hub URL in enrollment.json")?,
    };
    let journal = Journal::open(&config.journal_file)?;
    if config.roles.contains(&mpanel_protocol::messages::Role::Dns) {
        let dns = config.dns.clone();
        tokio::spawn(async move { crate::roles::dns::check_at_start(dns.as_ref()).await });
    }
    if config
        .roles
        .contains(&mpanel_protocol::messages::Role::Mail)
    {
        crate::roles::mail::check_at_start(config.mail.as_ref());
    }
    crate::roles::warn_missing_tools(&config);
    let hostname = match &config.hostname {
        Some(h) => h.clone(),
        None => enroll::system_hostname()
            .unwrap_or_else(|_| Hostname::parse("localhost").expect("valid")),
    };
    let (outbox, mut outbox_rx) = mpsc::channel(OUTBOX_CAPACITY);
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());
    tracing::info!(
        agent_id = %record.agent_id,
        server_id = %record.server_id,
        hub = %hub_url,
        roles = ?config.roles,
        journal_entries = journal.len(),
        version = VERSION,
        "agent starting"
    );
    let agent = Arc::new(Agent {
        collector: Arc::new(Mutex::new(Collector::new(&config.roles))),
        config,
        state,
        hub_url,
        hostname,
        journal: Mutex::new(journal),
        running: Mutex::new(HashSet::new()),
        tracker: TaskTracker::new(),
        outbox,
    });

    let mut attempt = 0u32;
    loop {
        let started = Instant::now();
        match session(&agent, &mut outbox_rx, &shutdown).await {
            Ok(()) => tracing::info!("connection to the hub closed"),
            Err(e) => tracing::warn!(error = format!("{e:#}"), "connection to the hub failed"),
        }
        if shutdown.is_cancelled() {
            break;
        }
        if started.elapsed() >= STABLE_AFTER {
            attempt = 0;
        }
        let delay = backoff(
            agent.config.reconnect_min,
            agent.config.reconnect_max,
            attempt,
        );
        attempt = attempt.saturating_add(1);
        tracing::info!(delay_ms = delay.as_millis() as u64, attempt, "reconnecting");
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    agent.tracker.close();
    if timeout(agent.config.shutdown_timeout, agent.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("commands still running at the shutdown timeout; exiting anyway");
    }
    tracing::info!("agent stopped");
    Ok(())
}

fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot listen for SIGTERM/SIGINT");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; finishing running commands"),
            _ = int.recv() => tracing::info!("SIGINT received; finishing running commands"),
        }
        token.cancel();
    });
}

fn read(path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
}

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

async fn send(ws: &mut Ws, msg: &AgentMessage, limit: Duration) -> anyhow::Result<()> {
    let text = msg.encode()?;
    timeout(limit, ws.send(Message::text(text)))
        .await
        .context("the hub stopped reading")?
        .context("write to the hub")
}

async fn connect(agent: &Agent) -> anyhow::Result<Ws> {
    let url = &agent.hub_url;
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

async fn session(
    agent: &Arc<Agent>,
    outbox: &mut mpsc::Receiver<AgentMessage>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut ws = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        ws = connect(agent) => ws?,
    };
    let hello = AgentMessage::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: Label::parse(VERSION).map_err(|e| anyhow::anyhow!("version: {e}"))?,
        hostname: agent.hostname.clone(),
        roles: agent.config.roles.clone(),
    });
    send(&mut ws, &hello, CONNECT_TIMEOUT).await?;
    let welcome: Welcome = timeout(CONNECT_TIMEOUT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => match PanelMessage::decode(&t)? {
                    PanelMessage::Welcome(w) => return Ok(w),
                    PanelMessage::Goodbye { reason } => bail!("the hub refused us: {reason}"),
                    other => bail!("expected welcome, got {other:?}"),
                },
                Some(Ok(Message::Close(_))) | None => bail!("the hub closed before welcome"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e).context("read welcome"),
            }
        }
    })
    .await
    .context("no welcome from the hub")??;
    tracing::info!(
        agent_id = %welcome.agent_id,
        server_id = %welcome.server_id,
        heartbeat_secs = welcome.heartbeat_secs,
        "connected to the hub"
    );

    let panel_heartbeat = Duration::from_secs(u64::from(welcome.heartbeat_secs.max(1)));
    let heartbeat = agent.config.heartbeat_interval.unwrap_or(panel_heartbeat);
    let silence = panel_heartbeat.max(heartbeat) * 2;
    let metrics_every = agent
        .config
        .metrics_interval
        .unwrap_or(Duration::from_secs(u64::from(welcome.metrics_secs.max(1))));
    let write_limit = silence;

    let mut pending_key = match renewal_due(agent) {
        Ok(Some(reason)) => {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
                .context("generate a key for renewal")?;
            let csr = enroll::csr_pem(&key, &agent.hostname)?;
            let csr_pem = Text::parse(csr).map_err(|e| anyhow::anyhow!("CSR: {e}"))?;
            tracing::info!(reason, "asking the hub to renew our certificate");
            send(
                &mut ws,
                &AgentMessage::RenewCertificate { csr_pem },
                write_limit,
            )
            .await?;
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

    let mut hb_tick = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
    hb_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first sample right away, so a fresh connection shows health at once.
    let mut metrics_tick = tokio::time::interval(metrics_every);
    metrics_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();

    loop {
        tokio::select! {
            // Frames first: after a stall (SIGSTOP, a slow disk) what the panel already sent
            // is handled before our timers decide anything.
            biased;
            frame = ws.next() => {
                let text = match frame {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(e).context("read from the hub"),
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) => return Ok(()),
                    Some(Ok(_)) => { last_heard = Instant::now(); continue; }
                };
                last_heard = Instant::now();
                match PanelMessage::decode(&text) {
                    Ok(PanelMessage::Command(envelope)) => {
                        for reply in on_command(agent, envelope, shutdown.is_cancelled()) {
                            send(&mut ws, &reply, write_limit).await?;
                        }
                    }
                    Ok(PanelMessage::Heartbeat { .. }) | Ok(PanelMessage::Welcome(_)) => {}
                    Ok(PanelMessage::CertificateRenewed { certificate_pem }) => {
                        match pending_key.take() {
                            Some(key) => match install_certificate(agent, &key, certificate_pem.as_str()) {
                                Ok(serial) => tracing::info!(serial = %serial, "certificate renewed; used from the next connection"),
                                Err(e) => tracing::warn!(error = format!("{e:#}"), "refused the renewed certificate"),
                            },
                            None => tracing::warn!("ignored a certificate we did not ask for"),
                        }
                    }
                    Ok(PanelMessage::Goodbye { reason }) => {
                        tracing::warn!(reason = %reason, "the hub said goodbye");
                        return Ok(());
                    }
                    Err(e) => bail!("malformed message from the hub: {e}"),
                }
            }
            Some(msg) = outbox.recv() => send(&mut ws, &msg, write_limit).await?,
            _ = shutdown.cancelled() => {
                drain(agent, &mut ws, outbox, write_limit).await;
                return Ok(());
            }
            _ = tokio::time::sleep_until(last_heard + silence) => {
                bail!("the hub was silent for two heartbeat intervals");
            }
            _ = hb_tick.tick() => {
                send(&mut ws, &AgentMessage::Heartbeat { sent_at: Utc::now() }, write_limit).await?;
            }
            _ = metrics_tick.tick() => {
                let collector = agent.collector.clone();
                let report = tokio::task::spawn_blocking(move || {
                    collector.lock().unwrap_or_else(|e| e.into_inner()).collect()
                })
                .await
                .context("metrics collection")?;
                send(&mut ws, &AgentMessage::Metrics(report), write_limit).await?;
            }
        }
    }
}

/// Shutdown with a live connection: wait for running commands and send their results.
async fn drain(
    agent: &Agent,
    ws: &mut Ws,
    outbox: &mut mpsc::Receiver<AgentMessage>,
    limit: Duration,
) {
    agent.tracker.close();
    let deadline = Instant::now() + agent.config.shutdown_timeout;
    loop {
        tokio::select! {
            _ = agent.tracker.wait() => break,
            Some(msg) = outbox.recv() => {
                if send(ws, &msg, limit).await.is_err() { return; }
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    while let Ok(msg) = outbox.try_recv() {
        if send(ws, &msg, limit).await.is_err() {
            return;
        }
    }
    let _ = timeout(Duration::from_secs(2), ws.close(None)).await;
}

/// What to answer at once to a command; runs it in a tracked task when it is new.
fn on_command(agent: &Arc<Agent>, envelope: CommandEnvelope, draining: bool) -> Vec<AgentMessage> {
    let command_id = envelope.command_id;
    let accepted = AgentMessage::Accepted { command_id };
    if let Some(entry) = agent
        .journal
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&command_id)
    {
        tracing::info!(%command_id, kind = %entry.kind, "command answered from the journal");
        return vec![
            accepted,
            AgentMessage::Result {
                command_id,
                outcome: entry.outcome.clone(),
            },
        ];
    }
    {
        let mut running = agent.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.contains(&command_id) {
            tracing::info!(%command_id, "command already running; acknowledged again");
            return vec![accepted];
        }
        if draining {
            return vec![AgentMessage::Result {
                command_id,
                outcome: Outcome::error("shutting_down", "the agent is shutting down", true),
            }];
        }
        running.insert(command_id);
    }
    let agent2 = agent.clone();
    agent.tracker.spawn(async move {
        let kind = envelope.command.kind();
        tracing::info!(%command_id, kind, "executing command");
        let outcome = executors::execute(&envelope.command, &agent2.config).await;
        let recorded = agent2
            .journal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(journal::Entry {
                command_id,
                kind: kind.to_owned(),
                outcome: outcome.clone(),
                finished_at: Utc::now(),
            });
        if let Err(e) = recorded {
            tracing::error!(error = format!("{e:#}"), %command_id, "could not journal the outcome");
        }
        agent2
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&command_id);
        let ok = matches!(outcome, Outcome::Ok { .. });
        tracing::info!(%command_id, kind, ok, "command finished");
        // No connection right now: the panel re-sends and the journal answers.
        let _ = agent2.outbox.try_send(AgentMessage::Result {
            command_id,
            outcome,
        });
    });
    vec![accepted]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(60));
        for attempt in 0..30 {
            let d = backoff(min, max, attempt);
            let base = (min * 2u32.pow(attempt.min(10))).min(max);
            assert!(
                d >= base / 2 && d <= base + Duration::from_millis(1),
                "{attempt}: {d:?}"
            );
        }
        let samples: HashSet<u128> = (0..20).map(|_| backoff(min, max, 5).as_millis()).collect();
        assert!(samples.len() > 1, "jittered");
    }
}
