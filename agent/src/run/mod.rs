//! `mpanel-agent run`: the daemon. Dials the hub over mTLS, says Hello, and then serves one
//! `select!` loop per connection (rathole's client): the panel's frames, results of running
//! commands, our heartbeat and metrics ticks, the panel's silence deadline and shutdown.
//!
//! This module owns the process: start-up checks, the `Agent` every connection shares,
//! the reconnect loop, signals and the final wait for running commands. The rest is split
//! along its jobs:
//! - `transport`: TLS client configuration, TCP + TLS + WebSocket connect, writing a frame.
//! - `session`: one connection, from Hello to close: the `select!` loop, commands, drain.
//! - `renewal`: when to renew the certificate, the CSR, checking and installing the answer.
//!
//! - **Reconnect**: capped exponential backoff with jitter (a random delay between half and
//!   all of `min(reconnect_max, reconnect_min × 2^n)`), reset once a connection stayed up
//!   for [`STABLE_AFTER`]; after a panel restart agents come back spread out, not at once.
//! - **Failover**: with several hubs (`hub_url = [..]` in `agent.toml`) each failed or lost
//!   connection moves to the next one, round robin, after the same back-off — never sooner,
//!   so a herd fleeing a dead replica stays spread out in time. Each agent starts at the hub
//!   its id picks ([`hub_order`]), so agents sharing a list spread over the replicas and an
//!   agent always comes back to the same one first.
//! - **Shutdown** (SIGTERM/SIGINT): no new commands; running ones finish (bounded by
//!   `shutdown_timeout`) and their results are sent while the connection lasts.

mod renewal;
mod session;
mod transport;

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use mpanel_protocol::messages::{AgentMessage, Hostname};
use tokio::{
    sync::mpsc,
    time::{Instant, timeout},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use url::Url;
use uuid::Uuid;

use crate::{
    VERSION, config::AgentConfig, enroll, journal::Journal, memory::Trimmer, metrics::Collector,
    state::StateDir,
};

/// A connection that lasted this long resets the backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);
/// Results waiting for a connection; beyond it they are dropped (the panel re-sends the
/// command and the journal answers).
const OUTBOX_CAPACITY: usize = 256;

/// The hubs in the order this agent dials them, without end: first the one at
/// `agent_id mod n` (the same for every start of this agent, spread evenly over agents
/// whose ids are random), then round robin. Empty only when `urls` is.
pub fn hub_order<T>(urls: &[T], agent_id: Uuid) -> impl Iterator<Item = &T> {
    let start = match urls.len() {
        0 => 0,
        n => (agent_id.as_u128() % n as u128) as usize,
    };
    urls.iter().cycle().skip(start)
}

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
    hostname: Hostname,
    journal: Mutex<Journal>,
    running: Mutex<HashSet<Uuid>>,
    collector: Mutex<Collector>,
    tracker: TaskTracker,
    outbox: mpsc::Sender<AgentMessage>,
    trimmer: Trimmer,
    /// Code ran since the last [`Agent::release_idle_pages`]: a connection was made or a
    /// command finished.
    trim_due: AtomicBool,
}

impl Agent {
    /// A metrics sample, then, when the agent has become idle since the last one (a new
    /// connection, finished commands, none running), the code pages that start-up or the
    /// work mapped are given back (`crate::memory`). Blocking: call from `spawn_blocking`.
    fn sample_metrics(&self) -> mpanel_protocol::messages::MetricsReport {
        let report = self
            .collector
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .collect();
        self.release_idle_pages();
        report
    }

    fn release_idle_pages(&self) {
        if !self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
            || !self.trim_due.swap(false, Ordering::Relaxed)
        {
            return;
        }
        match self.trimmer.release() {
            Ok(bytes) => tracing::debug!(released_kib = bytes / 1024, "released idle code pages"),
            Err(e) => tracing::debug!(error = %e, "cannot release idle code pages"),
        }
    }
}

pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    // First: the files mapped now are the ones that stay mapped (see `crate::memory`).
    let trimmer = Trimmer::at_start();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let state = StateDir::new(&config.state_dir);
    let record = state.enrollment()?.with_context(|| {
        format!(
            "{} holds no enrollment; run `mpanel-agent enroll` first",
            state.root().display()
        )
    })?;
    // Never empty: agent.toml's list, or the one URL the panel gave at enrollment.
    let hub_urls = if config.hub_urls.is_empty() {
        vec![Url::parse(&record.hub_url).context("the hub URL in enrollment.json")?]
    } else {
        config.hub_urls.clone()
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
        hubs = ?hub_urls.iter().map(Url::as_str).collect::<Vec<_>>(),
        roles = ?config.roles,
        journal_entries = journal.len(),
        version = VERSION,
        "agent starting"
    );
    let agent = Arc::new(Agent {
        collector: Mutex::new(Collector::new(&config.roles)),
        config,
        state,
        hostname,
        journal: Mutex::new(journal),
        running: Mutex::new(HashSet::new()),
        tracker: TaskTracker::new(),
        outbox,
        trimmer,
        trim_due: AtomicBool::new(false),
    });

    if agent
        .config
        .roles
        .contains(&mpanel_protocol::messages::Role::Web)
    {
        // Renewal needs no panel: it runs whether or not a hub is reachable.
        let renewal = crate::roles::web::renew_certificates(
            agent.config.web.clone(),
            agent.config.state_dir.clone(),
            agent.outbox.clone(),
            shutdown.clone(),
        );
        agent.tracker.spawn(tracing::Instrument::instrument(
            renewal,
            tracing::info_span!("certificate_renewal"),
        ));
    }

    let mut attempt = 0u32;
    // `None` before the first dial; then the back-off before dialling the next hub.
    let mut pause: Option<Duration> = None;
    for hub in hub_order(&hub_urls, record.agent_id) {
        if let Some(delay) = pause {
            tracing::info!(
                hub = %hub,
                delay_ms = delay.as_millis() as u64,
                attempt,
                "reconnecting"
            );
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        let started = Instant::now();
        match session::serve(&agent, hub, &mut outbox_rx, &shutdown).await {
            Ok(()) => tracing::info!(hub = %hub, "connection to the hub closed"),
            Err(e) => tracing::warn!(
                hub = %hub,
                error = format!("{e:#}"),
                "connection to the hub failed"
            ),
        }
        if shutdown.is_cancelled() {
            break;
        }
        if started.elapsed() >= STABLE_AFTER {
            attempt = 0;
        }
        pause = Some(backoff(
            agent.config.reconnect_min,
            agent.config.reconnect_max,
            attempt,
        ));
        attempt = attempt.saturating_add(1);
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

    #[test]
    fn hub_order_starts_where_the_agent_id_says_and_goes_round_robin() {
        let hubs = ["a", "b", "c"];
        let walk = |id: u128| -> Vec<&str> {
            hub_order(&hubs, Uuid::from_u128(id))
                .take(7)
                .copied()
                .collect()
        };
        assert_eq!(walk(0), ["a", "b", "c", "a", "b", "c", "a"]);
        assert_eq!(walk(4), ["b", "c", "a", "b", "c", "a", "b"]);
        assert_eq!(walk(u128::MAX), ["a", "b", "c", "a", "b", "c", "a"]); // 2^128-1 ≡ 0 (mod 3)
        // Deterministic: a restart dials the same hub first.
        let id = Uuid::new_v4();
        assert!(
            hub_order(&hubs, id)
                .take(9)
                .eq(hub_order(&hubs, id).take(9))
        );
        // One hub: always that one; none: nothing to dial.
        assert!(hub_order(&["only"], id).take(5).all(|h| *h == "only"));
        assert_eq!(hub_order::<&str>(&[], id).count(), 0);
    }

    #[test]
    fn hub_order_spreads_agents_over_the_hubs() {
        for n in 1..=crate::config::MAX_HUBS {
            let hubs: Vec<usize> = (0..n).collect();
            // Consecutive ids: exactly even.
            let mut first = vec![0usize; n];
            for id in 0..(n as u128 * 10) {
                first[*hub_order(&hubs, Uuid::from_u128(id)).next().unwrap()] += 1;
            }
            assert!(first.iter().all(|&c| c == 10), "{n}: {first:?}");
            // Random (v4) ids, as the panel issues them: about even.
            let agents = 400 * n;
            let mut first = vec![0usize; n];
            for _ in 0..agents {
                first[*hub_order(&hubs, Uuid::new_v4()).next().unwrap()] += 1;
            }
            assert!(first.iter().all(|&c| c > 250 && c < 550), "{n}: {first:?}");
        }
    }
}
