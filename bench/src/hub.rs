//! Hub capacity: N simulated agents against the real `mpanel serve`, each enrolled the real
//! way (a server made through the admin API, a one-time token, a CSR for a key generated
//! here, a certificate signed by the panel's CA) and speaking the real protocol over mTLS
//! WebSocket (Hello → Welcome, heartbeats, metrics, answering commands). Measured, each
//! beside its comparison from the same run:
//!
//! - handshakes per second while ramping to N (and how many attempts failed);
//! - the panel's RSS and CPU per held agent (N held against the pinger alone);
//! - the storm: `kill -9` with N held, a restart on the same ports, the time until all N
//!   are back per the panel's own count (`/metrics`), and how many never came back;
//! - `POST /api/servers/{id}/ping` p99 to one simulated agent with N held against none.
//!
//! The simulator shares the machine's cores with the panel and PostgreSQL: it runs on one
//! small tokio runtime, keeps each agent's key in memory (no files) and uses the protocol's
//! small WebSocket buffers; its own CPU is reported beside the panel's.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use mpanel_protocol::{
    messages::{
        AgentMessage, EnrollResponse, Hello, Hostname, Label, MetricsReport, Outcome,
        PROTOCOL_VERSION, PanelMessage, Pong,
    },
    ws::ws_config,
};
use rcgen::{CertificateParams, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::{
    ClientConfig, RootCertStore,
    client::Resumption,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName},
};
use serde_json::json;
use tokio::{
    net::TcpSocket,
    sync::{Semaphore, watch},
    task::JoinSet,
    time::timeout,
};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::{
    report::{Against, Figure, Goal, Report, Row, Spread},
    setup::{self, Panel},
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Simulated agents to hold (plus one more, the ping target).
    #[arg(long, default_value_t = 2000)]
    agents: usize,
    /// Handshakes in flight at once while ramping.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Enrollments (three API calls each) in flight at once.
    #[arg(long, default_value_t = 32)]
    enroll_concurrency: usize,
    /// Loopback source addresses the agents spread over (127.0.0.2 …).
    #[arg(long, default_value_t = 200)]
    sources: u8,
    /// Seconds of CPU and RSS sampling, with the pinger alone and with N held.
    #[arg(long, default_value_t = 15)]
    window_secs: u64,
    /// Pings to time, with no agents held and with N held (after 10 untimed ones).
    #[arg(long, default_value_t = 200)]
    pings: usize,
    /// How long the storm may take before the missing agents are counted as lost.
    #[arg(long, default_value_t = 120)]
    storm_deadline_secs: u64,
    /// Skip the kill -9 / restart storm.
    #[arg(long)]
    no_storm: bool,
    /// `AGENT_HANDSHAKES_MAX` for the panel (its default when absent).
    #[arg(long)]
    handshakes_max: Option<usize>,
}

/// The agent's defaults (`reconnect_min`, `reconnect_max`): the storm uses the real back-off.
const RECONNECT_MIN: Duration = Duration::from_secs(1);
const RECONNECT_MAX: Duration = Duration::from_secs(60);
/// The agent's `CONNECT_TIMEOUT`: TCP + TLS + WebSocket, and again for the Welcome.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const METRICS_TOKEN: &str = "bench-metrics-token-0123456789abcdef";

pub async fn run(args: Args) -> anyhow::Result<Report> {
    ensure!(args.agents > 0, "--agents must be at least 1");
    ensure!(args.sources > 0, "--sources must be at least 1");
    let mut report = Report::new(
        "hub",
        json!({
            "agents": args.agents, "concurrency": args.concurrency,
            "enrollConcurrency": args.enroll_concurrency, "sources": args.sources,
            "windowSecs": args.window_secs, "pings": args.pings, "storm": !args.no_storm,
            "handshakesMax": args.handshakes_max,
        }),
    );
    setup::note_binaries(&mut report);
    // One descriptor per agent here and one in the panel (which inherits the limit and
    // holds agents up to it less 1,024), plus the rest of each process.
    let wanted = args.agents as u64 + 4_096;
    let nofile = raise_nofile(wanted);
    ensure!(
        nofile >= wanted,
        "--agents {} needs RLIMIT_NOFILE {wanted}; the hard limit allows {nofile} \
         (raise it, e.g. with `ulimit -Hn`, or run as root)",
        args.agents
    );
    report.note(format!(
        "RLIMIT_NOFILE raised to {nofile} (the panel inherits it)"
    ));

    // Fixed ports, so the restarted panel is where the agents dial.
    let http_port = free_port()?;
    let hub_port = free_port()?;
    let hub_listen = format!("127.0.0.1:{hub_port}");
    let http_port_s = http_port.to_string();
    let per_ip = (args.agents + 1).to_string();
    let max = args.handshakes_max.map(|m| m.to_string());
    let mut env: Vec<(&str, &str)> = vec![
        ("PORT", &http_port_s),
        ("AGENT_LISTEN_ADDR", &hub_listen),
        ("METRICS_TOKEN", METRICS_TOKEN),
        // The benchmark must outlive one access token.
        ("JWT_ACCESS_EXPIRES_IN", "24h"),
        // A real fleet dials from as many addresses as it has agents; the simulator has a
        // few hundred, so the per-address limit must not be what is measured.
        ("AGENT_HANDSHAKES_PER_IP", &per_ip),
        // The connection logs go to the harness's memory and stderr; warn keeps the bench's
        // own cost out of the panel's figures (the hub logs every connect at info).
        ("RUST_LOG", "info,mpanel::fleet=warn"),
    ];
    if let Some(m) = &max {
        env.push(("AGENT_HANDSHAKES_MAX", m));
    }
    let mut panel = Panel::start(&env).await;
    let measured = measure(&mut panel, &args, hub_port, &mut report).await;
    panel.cleanup().await;
    measured?;
    Ok(report)
}

async fn measure(
    panel: &mut Panel,
    args: &Args,
    hub_port: u16,
    report: &mut Report,
) -> anyhow::Result<()> {
    let hub = SocketAddr::from((Ipv4Addr::LOCALHOST, hub_port));
    let n = args.agents;

    // Enrollment: the pinger is identity 0.
    let started = Instant::now();
    let ids = enroll_all(panel, n + 1, args.enroll_concurrency).await?;
    let enroll_secs = started.elapsed().as_secs_f64();
    tracing_note(&format!("enrolled {} agents in {enroll_secs:.1} s", n + 1));

    let sim = Sim::new(hub, args.sources, args.concurrency);
    let mut agents = JoinSet::new();
    let pinger = ids[0].clone();
    sim.spawn(&mut agents, pinger.clone(), 0);
    sim.wait_connected(1, Duration::from_secs(30)).await?;
    let pid = panel.app.pid();

    // With the pinger alone.
    let idle_ping = ping_spread(panel, &pinger.server_id, args.pings).await?;
    let idle = sample(pid, Duration::from_secs(args.window_secs)).await;

    // The ramp.
    let before = scrape(panel).await.unwrap_or_default();
    let ramp_started = Instant::now();
    for (i, id) in ids.iter().enumerate().skip(1) {
        sim.spawn(&mut agents, id.clone(), i);
    }
    let ramp_deadline = Duration::from_secs(60 + n as u64 / 20);
    let ramp_ok = sim.wait_connected(n + 1, ramp_deadline).await;
    let ramp_secs = ramp_started.elapsed().as_secs_f64();
    let ramped = sim.connected().saturating_sub(1);
    let ramp_failures = sim.failures.load(Ordering::Relaxed);
    let after = scrape(panel).await.unwrap_or_default();
    let panel_failed = after.handshakes_not_accepted() - before.handshakes_not_accepted();
    if let Err(e) = &ramp_ok {
        report.note(format!("the ramp did not complete: {e:#}"));
    }
    // Let the first metrics reports and presence writes settle before the window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = sample(pid, Duration::from_secs(args.window_secs)).await;
    let held_ping = ping_spread(panel, &pinger.server_id, args.pings).await?;

    // The storm.
    let storm = if args.no_storm {
        None
    } else {
        sim.unpace();
        Some(storm(panel, &sim, n + 1, args.storm_deadline_secs).await?)
    };

    sim.stop();
    while agents.join_next().await.is_some() {}

    // --- the report ---
    let rate = ramped as f64 / ramp_secs;
    report.push(
        Row::new(
            format!("handshakes/s at the hub, ramp to {n} agents"),
            Some(Figure::per_sec(rate, "handshakes/s")),
        )
        .against(Against::constant(
            "before issue 16 (its table)",
            Figure::per_sec(442.0, "handshakes/s"),
        ))
        .goal(Goal::at_least(2000.0))
        .note(format!(
            "{ramped} connected in {ramp_secs:.1} s, {} in flight at once; {ramp_failures} failed attempts (retried), \
             {panel_failed:.0} handshakes not accepted per the panel",
            args.concurrency
        )),
    );
    let rss_per = (held.rss_kib - idle.rss_kib) / n as f64;
    report.push(
        Row::new(
            format!("panel RSS per held agent ({n} held)"),
            Some(Figure::of(rss_per, "KiB")),
        )
        .against(Against::measured(
            "panel RSS with the pinger alone",
            Figure::of(idle.rss_kib / 1024.0, "MiB"),
        ))
        .against(Against::measured(
            format!("panel RSS with {n} held"),
            Figure::of(held.rss_kib / 1024.0, "MiB"),
        ))
        .goal(Goal::at_most(40.0)),
    );
    let cpu_per_10k = (held.panel_cpu - idle.panel_cpu) / n as f64 * 10_000.0;
    report.push(
        Row::new(
            "panel CPU per 10,000 held agents (% of one core)",
            Some(Figure::of(cpu_per_10k, "%")),
        )
        .against(Against::measured(
            format!("panel CPU with {n} held"),
            Figure::of(held.panel_cpu, "%"),
        ))
        .against(Against::measured(
            "panel CPU with the pinger alone",
            Figure::of(idle.panel_cpu, "%"),
        ))
        .against(Against::measured(
            format!("PostgreSQL, every backend on the machine, with {n} held"),
            Figure::of(held.postgres_cpu, "%"),
        ))
        .against(Against::measured(
            "PostgreSQL with the pinger alone",
            Figure::of(idle.postgres_cpu, "%"),
        ))
        .against(Against::measured(
            format!("the simulator itself with {n} held"),
            Figure::of(held.self_cpu, "%"),
        ))
        .goal(Goal::at_most(20.0).when("(50,000 agents within one core)")),
    );
    for (label, get) in [
        ("p50", (|s: &Spread| s.p50) as fn(&Spread) -> f64),
        ("p99", |s: &Spread| s.p99),
    ] {
        let mut row = Row::new(
            format!("API ping to a simulated agent with {n} held, {label}"),
            Some(Figure::ms(get(&held_ping))),
        )
        .against(Against::measured(
            "the same with no other agent held",
            Figure::ms(get(&idle_ping)),
        ));
        if label == "p99" {
            row = row.goal(Goal::at_most(2.0).when("with 10,000 agents held"));
        }
        report.push(row);
    }
    if let Some(s) = storm {
        report.push(
            Row::new(
                format!("storm: {} agents back after kill -9 and restart", n + 1),
                s.back_after_restart.map(Figure::secs),
            )
            .against(Against::measured(
                "the first ramp of the same agents (paced)",
                Figure::secs(ramp_secs),
            ))
            .against(Against::measured(
                "kill -9 → restarted panel listening",
                Figure::secs(s.restart_secs),
            ))
            .goal(Goal::at_most(30.0))
            .note(format!(
                "{} lost (not back within {} s); {} failed attempts; the restarted panel's handshakes: {}",
                s.lost, args.storm_deadline_secs, s.failures, s.outcomes
            )),
        );
    }
    report.note(format!(
        "enrollment: {} servers created through POST /api/servers, {} one-time tokens, {} CSRs → certificates \
         from the panel's CA, {} at a time: {enroll_secs:.1} s ({:.0} enrollments/s); keys held in memory",
        n + 1,
        n + 1,
        n + 1,
        args.enroll_concurrency,
        (n + 1) as f64 / enroll_secs
    ));
    report.note(format!(
        "simulated agents: the real protocol (Hello, Welcome, heartbeats at the panel's interval, a metrics report \
         at connect and at the panel's interval, ping answered), from {} loopback addresses (127.0.0.2…), \
         AGENT_HANDSHAKES_PER_IP raised to {} so the per-address limit is not what is measured",
        args.sources,
        n + 1
    ));
    report.note(
        "caveat: the simulator, the panel and PostgreSQL share the machine's cores; the simulator's own CPU \
         (one tokio runtime, the client half of every TLS handshake) is in the CPU row"
            .to_owned(),
    );
    report.note(format!(
        "CPU and RSS: /proc/<pid>/stat utime+stime and /proc/<pid>/status VmRSS over {} s windows, \
         first with the pinger alone, then 3 s after the ramp with {n} held",
        args.window_secs
    ));
    Ok(())
}

fn tracing_note(s: &str) {
    eprintln!("[bench] {s}");
}

// ------------------------------------------------------------------------------------------
// Enrollment
// ------------------------------------------------------------------------------------------

/// One simulated agent's identity: its key lives only in `tls`.
#[derive(Clone)]
struct Identity {
    server_id: String,
    tls: Arc<ClientConfig>,
}

async fn enroll_all(panel: &Panel, n: usize, concurrency: usize) -> anyhow::Result<Vec<Identity>> {
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = JoinSet::new();
    let http = panel.app.http.clone();
    let base = panel.app.url("");
    for i in 0..n {
        let (gate, http, base, admin) = (
            gate.clone(),
            http.clone(),
            base.clone(),
            panel.admin.clone(),
        );
        set.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let id = enroll_one(&http, &base, &admin, i).await;
            id.map(|id| (i, id))
        });
    }
    let mut out: Vec<Option<Identity>> = vec![None; n];
    while let Some(done) = set.join_next().await {
        let (i, id) = done.context("enrollment task")??;
        out[i] = Some(id);
        let got = out.iter().filter(|o| o.is_some()).count();
        if got % 1000 == 0 {
            tracing_note(&format!("enrolled {got}/{n}"));
        }
    }
    Ok(out
        .into_iter()
        .map(|o| o.expect("every one joined"))
        .collect())
}

async fn enroll_one(
    http: &reqwest::Client,
    base: &str,
    admin: &str,
    i: usize,
) -> anyhow::Result<Identity> {
    let name = format!("sim-{i}");
    let ip = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
    let server: serde_json::Value = checked(
        http.post(format!("{base}/api/servers"))
            .bearer_auth(admin)
            .json(&json!({ "name": name, "role": "WEB", "ipAddress": ip })),
        201,
    )
    .await
    .context("create a server")?;
    let server_id = server["id"].as_str().context("server id")?.to_owned();
    let token: serde_json::Value = checked(
        http.post(format!("{base}/api/servers/{server_id}/enrollment-token"))
            .bearer_auth(admin)
            .json(&json!({})),
        201,
    )
    .await
    .context("an enrollment token")?;
    let token = token["token"].as_str().context("token")?.to_owned();

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, &name);
    let csr = params.serialize_request(&key)?.pem()?;
    let enrolled: EnrollResponse = serde_json::from_value(
        checked(
            http.post(format!("{base}/api/agents/enroll")).json(&json!({
                "token": token, "csrPem": csr, "hostname": name, "version": "bench-sim",
            })),
            201,
        )
        .await
        .context("enroll")?,
    )?;
    ensure!(
        enrolled.server_id.to_string() == server_id,
        "enrolled for another server"
    );

    let der = |pem_text: &str| -> anyhow::Result<CertificateDer<'static>> {
        let p = pem::parse(pem_text).context("a PEM certificate")?;
        Ok(CertificateDer::from(p.into_contents()))
    };
    let mut roots = RootCertStore::empty();
    roots.add(der(&enrolled.ca_pem)?)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![der(&enrolled.certificate_pem)?],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )?;
    // The hub offers no resumption; a client cache would only cost memory.
    cfg.resumption = Resumption::disabled();
    Ok(Identity {
        server_id,
        tls: Arc::new(cfg),
    })
}

async fn checked(req: reqwest::RequestBuilder, want: u16) -> anyhow::Result<serde_json::Value> {
    let res = req.send().await?;
    let status = res.status();
    let body: serde_json::Value = res.json().await.unwrap_or_default();
    ensure!(status.as_u16() == want, "answered {status}: {body}");
    Ok(body)
}

// ------------------------------------------------------------------------------------------
// The simulator
// ------------------------------------------------------------------------------------------

struct Sim {
    hub: SocketAddr,
    sources: u8,
    /// Handshakes in flight at once; opened wide for the storm (real agents do not queue).
    pace: Arc<Semaphore>,
    connected: Arc<AtomicUsize>,
    failures: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
}

impl Sim {
    fn new(hub: SocketAddr, sources: u8, concurrency: usize) -> Sim {
        Sim {
            hub,
            sources,
            pace: Arc::new(Semaphore::new(concurrency.max(1))),
            connected: Arc::default(),
            failures: Arc::default(),
            stop: watch::channel(false).0,
        }
    }

    fn connected(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    fn unpace(&self) {
        self.pace.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    fn stop(&self) {
        let _ = self.stop.send(true);
    }

    fn spawn(&self, set: &mut JoinSet<()>, id: Identity, i: usize) {
        let source = Ipv4Addr::new(127, 0, 0, 2 + (i % usize::from(self.sources)) as u8);
        let agent = SimAgent {
            id,
            hub: self.hub,
            source,
            pace: self.pace.clone(),
            connected: self.connected.clone(),
            failures: self.failures.clone(),
            hostname: Hostname::parse(&format!("sim-{i}")).expect("a valid host name"),
        };
        let mut stop = self.stop.subscribe();
        set.spawn(async move {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {}
                _ = agent.run() => {}
            }
        });
    }

    async fn wait_connected(&self, n: usize, within: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        while self.connected() < n {
            if started.elapsed() > within {
                bail!("{} of {n} connected after {within:?}", self.connected());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

struct SimAgent {
    id: Identity,
    hub: SocketAddr,
    source: Ipv4Addr,
    pace: Arc<Semaphore>,
    connected: Arc<AtomicUsize>,
    failures: Arc<AtomicU64>,
    hostname: Hostname,
}

/// Decrements the connected count however the session ends.
struct Held<'a>(&'a AtomicUsize);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl SimAgent {
    /// The real agent's reconnect loop: capped exponential back-off with jitter, reset when
    /// a connection was held.
    async fn run(self) {
        let mut attempt = 0u32;
        loop {
            let held = self.session().await;
            match held {
                Ok(true) => attempt = 0,
                Ok(false) | Err(_) => {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            tokio::time::sleep(backoff(attempt)).await;
            attempt = attempt.saturating_add(1);
        }
    }

    /// One connection; `Ok(true)` once it was welcomed and later closed.
    async fn session(&self) -> anyhow::Result<bool> {
        let permit = self.pace.acquire().await?;
        let mut ws = timeout(CONNECT_TIMEOUT, async {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::V4(SocketAddrV4::new(self.source, 0)))?;
            let tcp = socket.connect(self.hub).await.context("connect")?;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
            let tls = TlsConnector::from(self.id.tls.clone())
                .connect(name, tcp)
                .await
                .context("TLS")?;
            let url = format!("wss://127.0.0.1:{}/", self.hub.port());
            let (ws, _) = tokio_tungstenite::client_async_with_config(url, tls, Some(ws_config()))
                .await
                .context("WebSocket")?;
            anyhow::Ok(ws)
        })
        .await
        .context("connect timed out")??;
        let hello = AgentMessage::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            agent_version: Label::parse("bench-sim").expect("a valid label"),
            hostname: self.hostname.clone(),
            roles: Vec::new(),
        });
        ws.send(Message::text(hello.encode()?)).await?;
        let welcome = timeout(CONNECT_TIMEOUT, async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => match PanelMessage::decode(&t)? {
                        PanelMessage::Welcome(w) => return Ok(w),
                        other => bail!("expected welcome, got {other:?}"),
                    },
                    Some(Ok(Message::Close(_))) | None => bail!("closed before welcome"),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.into()),
                }
            }
        })
        .await
        .context("no welcome")??;
        drop(permit);
        self.connected.fetch_add(1, Ordering::Relaxed);
        let _held = Held(&self.connected);

        let heartbeat = Duration::from_secs(u64::from(welcome.heartbeat_secs.max(1)));
        let silence = heartbeat * 2;
        let mut hb = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        hb.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut metrics =
            tokio::time::interval(Duration::from_secs(u64::from(welcome.metrics_secs.max(1))));
        metrics.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = tokio::time::Instant::now();
        loop {
            tokio::select! {
                biased;
                frame = ws.next() => {
                    let text = match frame {
                        None | Some(Ok(Message::Close(_))) => return Ok(true),
                        Some(Err(_)) => return Ok(true),
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(_)) => { last_heard = tokio::time::Instant::now(); continue; }
                    };
                    last_heard = tokio::time::Instant::now();
                    match PanelMessage::decode(&text)? {
                        PanelMessage::Command(env) => {
                            let command_id = env.command_id;
                            let outcome = match &env.command {
                                mpanel_protocol::messages::Command::Ping(p) => {
                                    Outcome::ok(&Pong { echo: p.echo.clone() })?
                                }
                                other => Outcome::error(
                                    "unsupported",
                                    &format!("the simulator does not run {}", other.kind()),
                                    false,
                                ),
                            };
                            for msg in [
                                AgentMessage::Accepted { command_id },
                                AgentMessage::Result { command_id, outcome },
                            ] {
                                ws.send(Message::text(msg.encode()?)).await?;
                            }
                        }
                        PanelMessage::Goodbye { .. } => return Ok(true),
                        _ => {}
                    }
                }
                _ = tokio::time::sleep_until(last_heard + silence) => return Ok(true),
                _ = hb.tick() => {
                    let msg = AgentMessage::Heartbeat { sent_at: chrono::Utc::now() };
                    ws.send(Message::text(msg.encode()?)).await?;
                }
                _ = metrics.tick() => {
                    ws.send(Message::text(AgentMessage::Metrics(sample_report()).encode()?)).await?;
                }
            }
        }
    }
}

/// The real agent's `backoff` with its default `reconnect_min`/`reconnect_max`.
fn backoff(attempt: u32) -> Duration {
    let base = RECONNECT_MIN
        .saturating_mul(2u32.saturating_pow(attempt.min(20)))
        .min(RECONNECT_MAX);
    let half = base / 2;
    let jitter = pseudo_random(half.as_millis().max(1) as u64);
    half + Duration::from_millis(jitter)
}

/// A uniform-enough number in `0..=max` without a `rand` dependency: the low bits of a
/// fresh v4 UUID.
fn pseudo_random(max: u64) -> u64 {
    (Uuid::new_v4().as_u128() as u64) % (max + 1)
}

fn sample_report() -> MetricsReport {
    MetricsReport {
        collected_at: chrono::Utc::now(),
        cpu_percent: 3.5,
        memory_used_bytes: 512 << 20,
        memory_total_bytes: 2 << 30,
        load1: 0.1,
        load5: 0.1,
        load15: 0.05,
        uptime_secs: 86_400,
        disks: Vec::new(),
        services: BTreeMap::new(),
    }
}

// ------------------------------------------------------------------------------------------
// Measurements
// ------------------------------------------------------------------------------------------

async fn ping_spread(panel: &Panel, server_id: &str, n: usize) -> anyhow::Result<Spread> {
    let url = panel
        .app
        .url(&format!("/api/servers/{server_id}/ping?timeoutSecs=10"));
    let mut ms = Vec::with_capacity(n);
    for i in 0..n + 10 {
        let started = Instant::now();
        let res = panel
            .app
            .http
            .post(&url)
            .bearer_auth(&panel.admin)
            .json(&json!({}))
            .send()
            .await?;
        let status = res.status();
        let body = res.bytes().await?;
        ensure!(
            status == 200,
            "ping answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
        if i >= 10 {
            ms.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Spread::of(&ms).context("no pings timed")
}

/// What the panel's `/metrics` says.
#[derive(Default)]
struct Scrape {
    connected: i64,
    handshakes: BTreeMap<String, f64>,
}

impl Scrape {
    /// `accepted 10001, failed 12, gated 300`.
    fn outcomes(&self) -> String {
        let parts: Vec<String> = self
            .handshakes
            .iter()
            .map(|(k, v)| format!("{k} {v:.0}"))
            .collect();
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts.join(", ")
        }
    }

    fn handshakes_not_accepted(&self) -> f64 {
        self.handshakes
            .iter()
            .filter(|(k, _)| k.as_str() != "accepted")
            .map(|(_, v)| v)
            .sum()
    }
}

async fn scrape(panel: &Panel) -> anyhow::Result<Scrape> {
    let text = panel
        .app
        .http
        .get(panel.app.url("/metrics"))
        .bearer_auth(METRICS_TOKEN)
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let mut out = Scrape::default();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("mpanel_agents_connected ") {
            out.connected = v.trim().parse().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("mpanel_agent_handshakes_total{outcome=\"")
            && let Some((outcome, v)) = rest.split_once("\"} ")
        {
            out.handshakes
                .insert(outcome.to_owned(), v.trim().parse().unwrap_or(0.0));
        }
    }
    Ok(out)
}

struct StormResult {
    restart_secs: f64,
    back_after_restart: Option<f64>,
    lost: usize,
    failures: u64,
    outcomes: String,
}

async fn storm(
    panel: &mut Panel,
    sim: &Sim,
    n: usize,
    deadline_secs: u64,
) -> anyhow::Result<StormResult> {
    let failures_before = sim.failures.load(Ordering::Relaxed);
    let killed = Instant::now();
    panel.app.kill().await;
    panel.app.start().await;
    let restart_secs = killed.elapsed().as_secs_f64();
    let deadline = Duration::from_secs(deadline_secs);
    let mut back = None;
    let mut last = Scrape::default();
    while killed.elapsed() < deadline {
        if let Ok(s) = scrape(panel).await {
            let done = s.connected as usize >= n && sim.connected() >= n;
            last = s;
            if done {
                back = Some(killed.elapsed().as_secs_f64());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(StormResult {
        restart_secs,
        back_after_restart: back,
        lost: n.saturating_sub(last.connected.max(0) as usize),
        failures: sim.failures.load(Ordering::Relaxed) - failures_before,
        outcomes: last.outcomes(),
    })
}

/// CPU (% of one core) and RSS over a window.
struct Window {
    rss_kib: f64,
    panel_cpu: f64,
    self_cpu: f64,
    postgres_cpu: f64,
}

async fn sample(pid: u32, window: Duration) -> Window {
    let ticks = |p: &str| cpu_ticks(p).unwrap_or(0);
    let (p0, s0, g0) = (ticks(&pid.to_string()), ticks("self"), postgres_ticks());
    let started = Instant::now();
    let mut rss = Vec::new();
    while started.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(r) = rss_kib(pid) {
            rss.push(r);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let hz = clock_ticks();
    let pct = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / hz / secs * 100.0;
    Window {
        rss_kib: rss.iter().sum::<f64>() / rss.len().max(1) as f64,
        panel_cpu: pct(p0, ticks(&pid.to_string())),
        self_cpu: pct(s0, ticks("self")),
        postgres_cpu: pct(g0, postgres_ticks()),
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// utime + stime of `/proc/<pid>/stat` (fields 14 and 15; the command name may hold spaces,
/// so count from its closing parenthesis).
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Every `postgres` process on the machine (the server runs one per connection).
fn postgres_ticks() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "postgres")
        })
        .filter_map(|p| cpu_ticks(&p))
        .sum()
}

fn rss_kib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Raises the soft descriptor limit to the hard one and, when the hard one is below
/// `wanted` and we may (root), the hard one too, up to the kernel's `nr_open`; returns the
/// new soft limit.
fn raise_nofile(wanted: u64) -> u64 {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid resource and a pointer to a local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            let hard = lim.rlim_max;
            if hard < wanted && nr_open > hard {
                lim.rlim_max = wanted.min(nr_open);
                lim.rlim_cur = lim.rlim_max;
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    lim.rlim_max = hard;
                }
            }
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("a free port")?;
    Ok(l.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_follows_the_agents() {
        for attempt in 0..10 {
            let base = (RECONNECT_MIN * 2u32.pow(attempt)).min(RECONNECT_MAX);
            let d = backoff(attempt);
            assert!(
                d >= base / 2 && d <= base + Duration::from_millis(1),
                "{d:?}"
            );
        }
    }

    #[test]
    fn reads_this_process_from_proc() {
        assert!(cpu_ticks("self").is_some());
        assert!(rss_kib(std::process::id()).is_some_and(|r| r > 0.0));
    }
}
