//! The fleet hub: the agents' mTLS WebSocket endpoint, on its own listener
//! (`AGENT_LISTEN_ADDR`).
//!
//! One task per connection (mini-redis' `Listener` + `Handler`): TLS handshake (client
//! certificate required, see [`super::tls`]), WebSocket upgrade, `Hello` → checks →
//! `Welcome`, then one `select!` loop over the agent's frames, what the rest of the panel
//! asks ([`Outbound`]), our heartbeat tick, the peer's silence deadline and shutdown.
//!
//! Invariants:
//! - The agent's identity is its certificate's, nothing else: `Hello` carries none. After
//!   the handshake the certificate serial and the agent are checked again in PostgreSQL
//!   (not revoked, server not deleted), so a revocation made by another replica is honoured
//!   even before this replica's cache of revoked serials catches up.
//! - The database and Redis work of a connection (that check, the presence writes, the
//!   commands waiting for it, its metrics) goes through [`super::batch`]: one statement per
//!   batch of connections, at most three pool connections for the whole hub, so a reconnect
//!   storm neither times out on the shared pool nor starves the API and the worker of it.
//! - One connection per server: a newer one replaces the older, which gets a Goodbye.
//! - A peer silent for two heartbeat intervals is dropped and its server marked offline
//!   (unless a newer connection already took its place).
//! - Nothing is ever written to the socket without a time limit, so a peer that stops
//!   reading cannot pin a task forever.
//!
//! **Memory per connection** (the target is 10,000 agents on a 2-core panel). An idle
//! connection holds: the rustls `ServerConnection` (~1 KiB of state; its incoming deframer
//! buffer grows to one TLS record, at most ~16.6 KiB, while a record is being read, and its
//! outgoing buffer holds only unsent records); tungstenite's read buffer, which it allocates
//! eagerly at `read_buffer_size` — 128 KiB by default, hence [`ws_config`] sets 4 KiB, which
//! alone saves ~1.2 GiB at 10,000 agents; no write buffer (`write_buffer_size` 0: frames go
//! straight to TLS); a bounded `mpsc` (blocks of 32 slots, allocated on first use); the
//! task's future (a few KiB); and a `ConnHandle` in the registry. `mpanel-bench hub`
//! measures ~30 KiB of panel RSS per idle agent (300 MiB for 10,000), plus the kernel's
//! socket buffers.
//! A message is at most 256 KiB (`MAX_MESSAGE_BYTES`), so the worst transient is bounded
//! too. TLS session resumption is off, so no session cache grows with the fleet.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use mpanel_protocol::messages::{
    AgentMessage, Hello, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, PanelMessage, Text, Welcome,
};
/// Small buffers and the protocol's message limit, the same as the agent's; see the module
/// docs for the arithmetic.
pub use mpanel_protocol::ws::ws_config;
use serde_json::json;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc},
    time::{Instant, timeout},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_tungstenite::{WebSocketStream, tungstenite::Message};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;
use uuid::Uuid;

use super::gate::{HandshakeGate, Pass};
use super::{
    batch::{HubStore, Online},
    ca::AGENT_CERT_VALIDITY,
    commands,
    dispatch::{ConnHandle, Outbound, Taken},
    presence,
    route::open_envelope,
    router,
    tls::{self, PeerIdentity},
};
use crate::{
    app::AppState,
    audit::{self, Entry},
};

/// Descriptors kept for everything but agents: the API's connections, the database pool,
/// Redis, log and CA files.
const RESERVED_DESCRIPTORS: u64 = 1_024;

/// Connections held at once, from the open-files limit (raised at start, see `rlimit`):
/// one descriptor per agent and [`RESERVED_DESCRIPTORS`] for the rest, so a fleet grows by
/// raising `LimitNOFILE`. Above it new connections wait in the kernel's backlog.
fn max_connections() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(20_000);
    soft.saturating_sub(RESERVED_DESCRIPTORS)
        .clamp(64, 4_000_000) as usize
}
/// TLS handshake, WebSocket upgrade and `Hello` together.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Capacity of a connection's outbound queue (commands, close requests).
const OUTBOUND_CAPACITY: usize = 32;
/// The fewest seconds between two stored metrics reports of one server.
const MIN_METRICS_GAP: Duration = Duration::from_secs(1);
/// Renewals one connection may ask for (a sane agent needs one).
const MAX_RENEWALS_PER_CONNECTION: u32 = 2;
/// A web server reports each of its sites' certificates at most once per renewal attempt
/// and once at connect; far more than its sites is a broken or hostile agent.
const MAX_CERTIFICATE_STATUSES_PER_CONNECTION: u32 = 100_000;
/// A status is written inline (the connection reads nothing meanwhile), so not for long.
const STATUS_WRITE_WITHIN: Duration = Duration::from_secs(5);

/// The bound listener, ready to [`Hub::run`].
pub struct Hub {
    listener: TcpListener,
    acceptor: TlsAcceptor,
}

/// The names the hub's certificate is valid for: the host of `AGENT_PUBLIC_URL` and
/// loopback (tests and a local nginx).
fn hub_names(state: &AppState) -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    match state.config.fleet.public_url.host() {
        Some(url::Host::Domain(d)) => names.push(d.to_owned()),
        Some(url::Host::Ipv4(ip)) => names.push(ip.to_string()),
        Some(url::Host::Ipv6(ip)) => names.push(ip.to_string()),
        None => {}
    }
    let ip = state.config.fleet.listen_addr.ip();
    if !ip.is_unspecified() {
        names.push(ip.to_string());
    }
    names.sort();
    names.dedup();
    names
}

impl Hub {
    pub async fn bind(state: &AppState) -> anyhow::Result<Hub> {
        let revoked = state.fleet.revoked.reload(&state.db).await?;
        tracing::debug!(revoked, "loaded revoked agent certificates");
        let config = tls::server_config(&state.ca, &hub_names(state), state.fleet.revoked.clone())?;
        let addr = state.config.fleet.listen_addr;
        let listener =
            listen(addr).with_context(|| format!("cannot listen on {addr} (AGENT_LISTEN_ADDR)"))?;
        Ok(Hub {
            listener,
            acceptor: TlsAcceptor::from(config),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Accepts agents until `shutdown`, then says Goodbye to every one of them and waits (up
    /// to `SHUTDOWN_TIMEOUT`) for their tasks.
    pub async fn run(self, state: AppState, shutdown: CancellationToken) {
        let addr = self.local_addr();
        tracing::info!(addr = %addr, "fleet hub listening");
        let tracker = TaskTracker::new();
        tracker.spawn(presence::maintenance(state.clone(), shutdown.clone()));
        let (store, writers) = HubStore::start(&state);
        let max_connections = max_connections();
        tracing::info!(max_connections, "agents held at most");
        let permits = Arc::new(Semaphore::new(max_connections));
        let fleet = &state.config.fleet;
        let gate = HandshakeGate::new(fleet.max_handshakes, fleet.handshakes_per_ip);
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            // Beyond the handshakes in flight, connections wait in the accept queue (see `gate`).
            let slot = tokio::select! {
                _ = shutdown.cancelled() => break,
                s = gate.slot() => s,
            };
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "fleet hub accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Some(pass) = gate.enter(peer.ip(), slot) else {
                state.metrics.handshake("gated");
                // Closed before it costs more than the accept: see `gate`.
                tracing::debug!(peer = %peer, "too many agent handshakes from one address; closed");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = self.acceptor.clone();
            let state = state.clone();
            let store = store.clone();
            let shutdown = shutdown.clone();
            let span = tracing::info_span!("agent_conn", peer = %peer, agent_id = tracing::field::Empty, server_id = tracing::field::Empty);
            tracker.spawn(
                async move {
                    if let Err(e) = handle(tcp, acceptor, state, store, shutdown, pass).await {
                        tracing::info!(error = format!("{e:#}"), "agent connection ended");
                    }
                    drop(permit);
                }
                .instrument(span),
            );
        }
        drop(self.listener);
        tracker.close();
        let grace = state.config.shutdown_timeout;
        if timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!("agent connections did not close in time");
        }
        // The writers end once the last connection has dropped its handle and they have
        // written what it queued (the offline marks of the Goodbyes above).
        drop(store);
        let _ = timeout(grace, futures_util::future::join_all(writers)).await;
        tracing::info!("fleet hub stopped");
    }
}

/// Connections the kernel queues before we accept them (tokio's default is 1,024, which a
/// reconnect storm overflows; the kernel caps it at `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 8192;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

type Ws = WebSocketStream<TlsStream<TcpStream>>;

async fn handle(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    state: AppState,
    store: Arc<HubStore>,
    shutdown: CancellationToken,
    pass: Pass,
) -> anyhow::Result<()> {
    let (mut ws, peer, hello) = timeout(HANDSHAKE_TIMEOUT, async {
        let tls = acceptor.accept(tcp).await.context("TLS handshake")?;
        let cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .context("no client certificate")?;
        let peer = tls::peer_identity(cert).context("the certificate names no agent")?;
        let mut ws = tokio_tungstenite::accept_async_with_config(tls, Some(ws_config()))
            .await
            .context("WebSocket upgrade")?;
        let hello = loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => match AgentMessage::decode(&t) {
                    Ok(AgentMessage::Hello(h)) => break h,
                    Ok(_) => anyhow::bail!("the first message was not hello"),
                    Err(e) => anyhow::bail!("bad hello: {e}"),
                },
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(_)) => anyhow::bail!("the first message was not hello"),
                Some(Err(e)) => return Err(e).context("read hello"),
                None => anyhow::bail!("closed before hello"),
            }
        };
        Ok::<_, anyhow::Error>((ws, peer, hello))
    })
    .await
    .context("handshake timed out")
    .and_then(|r| r)
    .inspect_err(|_| state.metrics.handshake("failed"))?;
    // It proved who it is: its handshake slot goes to the next connection.
    drop(pass);
    let span = tracing::Span::current();
    span.record("agent_id", tracing::field::display(peer.agent_id));

    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&hello.protocol_version) {
        let reason = format!(
            "protocol version {} is not supported; this panel speaks {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}",
            hello.protocol_version
        );
        state.metrics.handshake("refused");
        goodbye(&mut ws, &reason).await;
        anyhow::bail!(reason);
    }
    // Batched with the other connections' lookups (see `batch`).
    let row = store.agent(peer.agent_id, &peer.serial_hex).await?;
    let refusal = match &row {
        None => Some("unknown agent"),
        Some(r) if r.agent_revoked || r.cert_revoked => Some("revoked"),
        Some(r) if !r.cert_known => Some("unknown certificate"),
        Some(r) if r.server_deleted => Some("server deleted"),
        Some(_) => None,
    };
    if let Some(reason) = refusal {
        tracing::warn!(reason, serial = %peer.serial_hex, "agent refused after the handshake");
        if reason == "revoked" {
            state.fleet.revoked.insert_all([peer.serial_hex.clone()]);
        }
        state.metrics.handshake("refused");
        goodbye(&mut ws, reason).await;
        anyhow::bail!("refused: {reason}");
    }
    let row = row.expect("checked above");
    span.record("server_id", tracing::field::display(row.server_id));

    state.metrics.handshake("accepted");
    let conn_id = state.fleet.next_conn_id();
    let (tx, rx) = mpsc::channel(OUTBOUND_CAPACITY);
    let (old, resend) = state.fleet.register(
        row.server_id,
        ConnHandle {
            conn_id,
            agent_id: peer.agent_id,
            serial_hex: peer.serial_hex.clone(),
            tx,
        },
    );
    if let Some(old) = old {
        let _ = old
            .tx
            .try_send(Outbound::Close("replaced by a newer connection".into()));
    }
    let conn = Conn {
        state: state.clone(),
        store: store.clone(),
        peer,
        tenant_id: row.tenant_id,
        server_id: row.server_id,
        conn_id,
        version: hello.agent_version.as_str().to_owned(),
        renewals: 0,
        certificate_statuses: 0,
        last_metrics: None,
    };
    let result = conn.serve(&mut ws, hello, resend, rx, &shutdown).await;
    if state.fleet.unregister(row.server_id, conn_id) {
        if let Err(e) = store.offline(row.server_id).await {
            tracing::warn!(
                error = format!("{e:#}"),
                "could not mark the server offline"
            );
        }
        tracing::info!("agent disconnected; server offline");
    }
    // Close, then read what the peer already sent (bounded): closing a socket with unread
    // data makes the kernel answer RST, which would destroy frames still queued towards the
    // agent (a command it has yet to read after a stall).
    let _ = timeout(Duration::from_secs(1), async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    result
}

/// Best effort: the peer may already be gone.
async fn goodbye(ws: &mut Ws, reason: &str) {
    let reason = Text::parse(reason.chars().take(1024).collect::<String>())
        .unwrap_or_else(|_| Text::parse("closing").expect("short"));
    if let Ok(text) = (PanelMessage::Goodbye { reason }).encode() {
        let _ = timeout(Duration::from_secs(2), ws.send(Message::text(text))).await;
    }
    let _ = timeout(Duration::from_secs(2), ws.close(None)).await;
}

struct Conn {
    state: AppState,
    store: Arc<HubStore>,
    peer: PeerIdentity,
    tenant_id: Uuid,
    server_id: Uuid,
    conn_id: u64,
    version: String,
    renewals: u32,
    certificate_statuses: u32,
    last_metrics: Option<Instant>,
}

impl Conn {
    async fn send(&self, ws: &mut Ws, msg: &PanelMessage) -> anyhow::Result<()> {
        let text = msg.encode()?;
        let limit = self.state.config.fleet.heartbeat_interval * 2;
        timeout(limit, ws.send(Message::text(text)))
            .await
            .context("the agent stopped reading")?
            .context("write to the agent")
    }

    async fn serve(
        mut self,
        ws: &mut Ws,
        hello: Hello,
        resend: Vec<mpanel_protocol::messages::CommandEnvelope>,
        mut rx: mpsc::Receiver<Outbound>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let heartbeat = self.state.config.fleet.heartbeat_interval;
        let fleet_cfg = &self.state.config.fleet;
        let waiting = self
            .store
            .online(Online::new(
                self.server_id,
                self.peer.agent_id,
                self.conn_id,
                &hello,
            ))
            .await?;
        let welcome = PanelMessage::Welcome(Welcome {
            // The agent's own: it is the one this connection speaks.
            protocol_version: hello.protocol_version,
            agent_id: self.peer.agent_id,
            server_id: self.server_id,
            heartbeat_secs: u32::try_from(heartbeat.as_secs().max(1)).unwrap_or(u32::MAX),
            metrics_secs: u32::try_from(fleet_cfg.metrics_interval.as_secs().max(1))
                .unwrap_or(u32::MAX),
        });
        self.send(ws, &welcome).await?;
        tracing::info!(
            version = %hello.agent_version,
            hostname = %hello.hostname,
            resent = resend.len(),
            "agent connected"
        );
        let resend = self.with_waiting_rows(resend, waiting).await;
        let ids: Vec<uuid::Uuid> = resend.iter().map(|e| e.command_id).collect();
        for envelope in resend {
            self.send(ws, &PanelMessage::Command(envelope)).await?;
        }
        if !ids.is_empty() {
            let _ = commands::mark_delivered(&self.state.db, &ids).await;
        }

        let mut tick = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let silence = heartbeat * 2;
        let mut last_heard = Instant::now();
        let mut last_db_touch = Instant::now();
        let mut last_redis_touch = Instant::now();
        loop {
            tokio::select! {
                // Frames before timers: after a stall (ours or the database's), what the
                // agent already sent proves it alive before the silence deadline is judged.
                biased;
                _ = shutdown.cancelled() => {
                    goodbye(ws, "panel shutting down").await;
                    return Ok(());
                }
                frame = ws.next() => {
                    let text = match frame {
                        None => return Ok(()),
                        Some(Err(e)) => return Err(e).context("read from the agent"),
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                            last_heard = Instant::now();
                            continue;
                        }
                        Some(Ok(Message::Close(_))) => return Ok(()),
                        Some(Ok(_)) => {
                            goodbye(ws, "binary frames are not part of the protocol").await;
                            anyhow::bail!("binary frame");
                        }
                    };
                    last_heard = Instant::now();
                    // Presence is refreshed off this loop (a Redis or database stall must not
                    // make agents look silent), the TTL key once per heartbeat interval.
                    if last_redis_touch.elapsed() >= heartbeat {
                        last_redis_touch = Instant::now();
                        self.store.refresh(self.server_id, self.peer.agent_id, self.conn_id, &self.version);
                    }
                    if last_db_touch.elapsed() >= presence::DB_TOUCH_EVERY {
                        last_db_touch = Instant::now();
                        self.store.touch(self.server_id, self.peer.agent_id);
                    }
                    match AgentMessage::decode(&text) {
                        Ok(msg) => self.on_message(ws, msg).await?,
                        Err(e) => {
                            // A peer that speaks garbage is not worth keeping.
                            goodbye(ws, "malformed message").await;
                            anyhow::bail!("malformed message: {e}");
                        }
                    }
                }
                out = rx.recv() => match out {
                    Some(Outbound::Send(msg)) => self.send(ws, &msg).await?,
                    Some(Outbound::Close(reason)) => {
                        tracing::info!(reason = %reason, "closing the agent's connection");
                        goodbye(ws, &reason).await;
                        return Ok(());
                    }
                    None => return Ok(()),
                },
                _ = tick.tick() => {
                    self.send(ws, &PanelMessage::Heartbeat { sent_at: chrono::Utc::now() }).await?;
                }
                _ = tokio::time::sleep_until(last_heard + silence) => {
                    tracing::warn!(silent_secs = silence.as_secs_f64(), "agent silent for two heartbeat intervals; dropping it");
                    anyhow::bail!("agent silent");
                }
            }
        }
    }

    async fn on_message(&mut self, ws: &mut Ws, msg: AgentMessage) -> anyhow::Result<()> {
        match msg {
            AgentMessage::Hello(_) => tracing::debug!("ignored a second hello"),
            AgentMessage::Heartbeat { .. } => {}
            AgentMessage::Accepted { command_id } => {
                if !self.state.fleet.accepted(self.server_id, command_id) {
                    // Its sender is another process: the row says so.
                    let (db, server) = (self.state.db.clone(), self.server_id);
                    tokio::spawn(async move {
                        let _ = commands::mark_accepted(&db, server, command_id).await;
                    });
                }
            }
            AgentMessage::Progress {
                command_id,
                message,
                percent,
            } => {
                tracing::debug!(%command_id, percent = percent.map(|p| p.get()), message = %message, "command progress");
            }
            AgentMessage::Result {
                command_id,
                outcome,
            } => {
                self.on_result(command_id, outcome);
            }
            AgentMessage::Metrics(report) => {
                if self
                    .last_metrics
                    .is_some_and(|t| t.elapsed() < MIN_METRICS_GAP)
                {
                    return Ok(());
                }
                self.last_metrics = Some(Instant::now());
                if !self.store.metrics(self.tenant_id, self.server_id, report) {
                    tracing::debug!("metrics queue full; sample dropped");
                }
            }
            AgentMessage::CertificateStatus(status) => {
                if self.certificate_statuses >= MAX_CERTIFICATE_STATUSES_PER_CONNECTION {
                    tracing::warn!(domain = %status.domain, "certificate status dropped: too many on this connection");
                    return Ok(());
                }
                self.certificate_statuses += 1;
                let recorded = timeout(
                    STATUS_WRITE_WITHIN,
                    crate::hosting::tls::report::record(&self.state.db, self.server_id, &status),
                )
                .await;
                match recorded {
                    Ok(Ok(outcome)) => tracing::info!(
                        domain = %status.domain,
                        serial = status.serial.as_str(),
                        failures = status.failures,
                        ?outcome,
                        "certificate status"
                    ),
                    Ok(Err(e)) => {
                        tracing::warn!(domain = %status.domain, error = %e, "could not record a certificate status")
                    }
                    Err(_) => {
                        tracing::warn!(domain = %status.domain, "recording a certificate status timed out")
                    }
                }
            }
            AgentMessage::RenewCertificate { csr_pem } => {
                if self.renewals >= MAX_RENEWALS_PER_CONNECTION {
                    tracing::warn!("refused a renewal: too many on this connection");
                    return Ok(());
                }
                self.renewals += 1;
                match self.renew(csr_pem.as_str()).await {
                    Ok(pem) => {
                        let certificate_pem = Text::parse(pem)
                            .map_err(|e| anyhow::anyhow!("renewed certificate: {e}"))?;
                        self.send(ws, &PanelMessage::CertificateRenewed { certificate_pem })
                            .await?;
                    }
                    Err(e) => {
                        tracing::warn!(error = format!("{e:#}"), "certificate renewal refused");
                    }
                }
            }
        }
        Ok(())
    }

    /// The re-send at connect: the in-memory commands waiting for this server plus every
    /// row waiting for it (sent by any process, read with the connect's presence write
    /// after this connection was registered), oldest first, each at most once.
    async fn with_waiting_rows(
        &self,
        mut resend: Vec<mpanel_protocol::messages::CommandEnvelope>,
        rows: Vec<commands::Waiting>,
    ) -> Vec<mpanel_protocol::messages::CommandEnvelope> {
        for row in rows {
            match open_envelope(&self.state, &row.envelope) {
                Ok(envelope) => resend.push(envelope),
                Err(reason) => {
                    router::fail_unreadable(&self.state, self.server_id, row.id, &reason).await
                }
            }
        }
        resend.sort_by_key(|e| e.issued_at);
        self.state
            .fleet
            .claim_for_resend(self.server_id, self.conn_id, resend)
    }

    /// A result: to its sender here at once, and into its row (which wakes a sender
    /// elsewhere, and lets a later run of its job find it).
    fn on_result(&self, command_id: uuid::Uuid, outcome: mpanel_protocol::messages::Outcome) {
        let ok = matches!(outcome, mpanel_protocol::messages::Outcome::Ok { .. });
        let sealed = serde_json::to_vec(&outcome).map(|b| self.state.sealer.seal(&b));
        if self
            .state
            .fleet
            .complete(self.server_id, command_id, outcome)
            == Taken::Ephemeral
        {
            return;
        }
        let Ok(sealed) = sealed else { return };
        let (db, server) = (self.state.db.clone(), self.server_id);
        tokio::spawn(async move {
            match commands::complete(&db, server, command_id, sealed, ok).await {
                Ok(true) => {}
                Ok(false) => tracing::debug!(%command_id, "result for a command nobody waits for"),
                Err(e) => {
                    tracing::warn!(%command_id, error = %e, "could not store a command's outcome")
                }
            }
        });
    }

    /// Signs a new certificate with the same identity for the CSR's key and records it.
    async fn renew(&self, csr_pem: &str) -> anyhow::Result<String> {
        let signed = self
            .state
            .ca
            .sign_agent_csr(
                csr_pem,
                self.peer.agent_id,
                self.server_id,
                AGENT_CERT_VALIDITY,
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut tx = self.state.db.begin().await?;
        sqlx::query(
            "INSERT INTO agent_certificates (agent_id, serial, fingerprint_sha256, not_before, not_after)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(self.peer.agent_id)
        .bind(&signed.serial_hex)
        .bind(&signed.fingerprint_sha256)
        .bind(signed.not_before)
        .bind(signed.not_after)
        .execute(&mut *tx)
        .await?;
        audit::record(
            &mut tx,
            Entry::system(
                self.tenant_id,
                "agent.certificate.renew",
                json!({
                    "agentId": self.peer.agent_id,
                    "serverId": self.server_id,
                    "previousSerial": self.peer.serial_hex,
                    "serial": signed.serial_hex,
                    "fingerprint": signed.fingerprint_sha256,
                    "notAfter": signed.not_after,
                }),
            ),
        )
        .await?;
        tx.commit().await?;
        tracing::info!(serial = %signed.serial_hex, not_after = %signed.not_after, "agent certificate renewed");
        Ok(signed.pem)
    }
}
