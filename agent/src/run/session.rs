//! One connection to the hub, from Hello to close (rathole's client loop): the panel's
//! frames, results of running commands, our heartbeat and metrics ticks, the panel's silence
//! deadline and shutdown, in one `select!`.
//!
//! - **Half-dead links**: a panel silent for two heartbeat intervals is dropped and dialled
//!   again.
//! - **Commands** run in tracked tasks, at most once per id: the [`Journal`] answers ids it
//!   knows, an id already running is only acknowledged again.
//! - **Shutdown** with a live connection: no new commands; running ones finish (bounded by
//!   `shutdown_timeout`) and their results are sent before the connection is closed.
//! - **Certificates** (web role, panel of protocol 2): the renewal task's statuses go out as
//!   they come; at connect, those the panel was not sent yet.
//! - **Idle**: the metrics sample after connecting, and the first one after commands ran
//!   (none running), also gives back the code pages that work mapped ([`memory`]).
//!
//! [`Journal`]: crate::journal::Journal
//! [`memory`]: crate::memory

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::{Context, bail};
use chrono::Utc;
use futures_util::StreamExt;
use mpanel_protocol::messages::{
    AgentMessage, CommandEnvelope, Hello, Label, Outcome, PROTOCOL_VERSION, PanelMessage, Role,
    Welcome,
};
use tokio::{
    sync::mpsc,
    time::{Instant, timeout},
};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::{
    Agent, renewal,
    transport::{CONNECT_TIMEOUT, Ws, connect, send},
};
use crate::{VERSION, executors, journal};

/// One connection to `hub`: connect, Hello → Welcome, then the `select!` loop until the hub
/// closes, fails, goes silent, or we shut down.
pub(super) async fn serve(
    agent: &Arc<Agent>,
    hub: &Url,
    outbox: &mut mpsc::Receiver<AgentMessage>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut ws = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        ws = connect(agent, hub) => ws?,
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
        hub = %hub,
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

    let mut pending_key = renewal::request_if_due(agent, &mut ws, write_limit).await?;
    // What the panel was not told of our certificates while we were away.
    let statuses = welcome.protocol_version >= CERTIFICATE_STATUS_SINCE
        && agent.config.roles.contains(&Role::Web);
    if statuses {
        let web = agent.config.web.clone();
        let unreported = tokio::task::spawn_blocking(move || crate::roles::web::unreported(&web))
            .await
            .context("reading the certificates' states")?;
        for status in unreported {
            send_status(agent, &mut ws, status, write_limit).await?;
        }
    }
    // Connecting mapped code the idle loop does not use: give it back at the first sample.
    agent.trim_due.store(true, Ordering::Relaxed);

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
                        renewal::on_renewed(agent, pending_key.take(), certificate_pem.as_str());
                    }
                    Ok(PanelMessage::Goodbye { reason }) => {
                        tracing::warn!(reason = %reason, "the hub said goodbye");
                        return Ok(());
                    }
                    Err(e) => bail!("malformed message from the hub: {e}"),
                }
            }
            Some(msg) = outbox.recv() => match msg {
                // A panel of protocol 1 cannot read it; it stays unreported until one can.
                AgentMessage::CertificateStatus(_) if !statuses => {}
                AgentMessage::CertificateStatus(status) => {
                    send_status(agent, &mut ws, status, write_limit).await?;
                }
                msg => send(&mut ws, &msg, write_limit).await?,
            },
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
                let agent = agent.clone();
                let report = tokio::task::spawn_blocking(move || agent.sample_metrics())
                    .await
                    .context("metrics collection")?;
                send(&mut ws, &AgentMessage::Metrics(report), write_limit).await?;
            }
        }
    }
}

/// The protocol version from which the panel reads [`AgentMessage::CertificateStatus`].
const CERTIFICATE_STATUS_SINCE: u16 = 2;

/// Sends a certificate's status and, once written, notes it as reported.
async fn send_status(
    agent: &Arc<Agent>,
    ws: &mut Ws,
    status: mpanel_protocol::web::CertificateStatus,
    limit: Duration,
) -> anyhow::Result<()> {
    send(ws, &AgentMessage::CertificateStatus(status.clone()), limit).await?;
    let web = agent.config.web.clone();
    tokio::spawn(async move { crate::roles::web::mark_reported(&web, &status).await });
    Ok(())
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
    let journaled = agent
        .journal
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&command_id);
    match journaled {
        Ok(Some(entry)) => {
            tracing::info!(%command_id, kind = %entry.kind, "command answered from the journal");
            return vec![
                accepted,
                AgentMessage::Result {
                    command_id,
                    outcome: entry.outcome,
                },
            ];
        }
        Ok(None) => {}
        // Run it again rather than never answer: executors are idempotent.
        Err(e) => tracing::error!(
            error = format!("{e:#}"),
            %command_id,
            "cannot read the journal entry; executing the command again"
        ),
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
        agent2.trim_due.store(true, Ordering::Relaxed);
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
